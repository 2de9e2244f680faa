// kube-derive's repeated `printcolumn(...)` arguments look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{SecretMetadata, WorkspaceRef};

/// Go-style duration such as `2160h`, `10m` or `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// An SSH key pair whose public half is a read-only access key on repositories and
/// projects and whose private half lands in a Secret for CI pods.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "bitbucket.credentials.dev",
    version = "v1alpha1",
    kind = "BitbucketAccessKey",
    doc = "A read-only SSH access key (deploy key) that the operator generates, registers on Bitbucket repositories and projects, writes to a Secret for CI pods, rotates and removes again.",
    namespaced,
    shortname = "bbak",
    category = "bitbucket",
    status = "AccessKeyStatus",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(name = "Fingerprint", type_ = "string", json_path = ".status.fingerprint"),
    printcolumn(name = "Next Rotation", type_ = "string", json_path = ".status.nextRotationTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.repositories) ? size(self.repositories) : 0) + (has(self.projects) ? size(self.projects) : 0) > 0").message("at least one of repositories or projects must be listed"))]
#[x_kube(validation = Rule::new("!has(self.rsaBits) || self.keyType == 'rsa'").message("rsaBits may be set only when keyType is rsa"))]
#[x_kube(validation = Rule::new("!has(self.ecdsaCurve) || self.keyType == 'ecdsa'").message("ecdsaCurve may be set only when keyType is ecdsa"))]
pub struct BitbucketAccessKeySpec {
    /// The workspace object that says how to reach Bitbucket.
    pub workspace_ref: WorkspaceRef,
    /// Repository slugs; the key is added to each as an access key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 62), regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,61}$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub repositories: Vec<String>,
    /// Project keys; the key is added to each as a project access key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 128), regex(pattern = r"^[A-Z][A-Z0-9_]{0,127}$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub projects: Vec<String>,
    /// Key algorithm.
    #[serde(default)]
    pub key_type: KeyType,
    /// RSA modulus size (rsa only): 2048, 3072 or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [2048, 3072, 4096]").message("rsaBits must be one of 2048, 3072, 4096"))]
    pub rsa_bits: Option<u32>,
    /// ECDSA curve (ecdsa only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecdsa_curve: Option<EcdsaCurve>,
    /// Bitbucket label of the key. Default: derived from the cluster, namespace and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    // Bitbucket shows the label on one line; a line break would also forge extra lines in logs.
    #[x_kube(validation = Rule::new("!self.matches('[[:cntrl:]]')").message("label must not contain line breaks or other control characters"))]
    pub label: Option<String>,
    /// Scheduled rotation. Unset: never rotate on a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// The Secret that receives the private key.
    #[serde(default)]
    pub secret: AccessKeySecret,
    /// What happens to the keys in Bitbucket when the object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    #[default]
    Ed25519,
    Rsa,
    Ecdsa,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EcdsaCurve {
    P256,
    P384,
    P521,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
// What is no duration or far too long is refused by the field's own rules; here it must not
// fail to parse (see `duration_within`).
#[x_kube(validation = Rule::new(format!(
    "!has(self.period) || !has(self.gracePeriod) || [self.period, self.gracePeriod].exists(d, !d.matches('{GO}') || d.matches('{FAR}')) || duration(self.gracePeriod) < duration(self.period)",
    GO = super::common::GO_DURATION, FAR = super::common::FAR_TOO_LONG,
)).message("rotation.gracePeriod must be shorter than rotation.period"))]
pub struct Rotation {
    /// Rotate this often, e.g. `2160h`: between `1h` and `87600h` (10 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new(super::common::duration_within("1h", "87600h")).message("rotation.period must be between 1h and 87600h (10 years)"))]
    pub period: Option<String>,
    /// How long the old key stays registered after the Secret holds the new one. Default
    /// `10m`, at most `720h` (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new(super::common::duration_within("0s", "720h")).message("rotation.gracePeriod must be at most 720h (30 days)"))]
    pub grace_period: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeySecret {
    /// Name of the Secret. Default: the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Layouts written into the one Secret.
    #[serde(default = "default_access_key_formats")]
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g == f))").message("secret.formats must not repeat"))]
    pub formats: Vec<AccessKeyFormat>,
    /// Argo CD project of the `argocd` layout (its `project` key), for credentials that
    /// only a project-scoped Argo CD repository may use. Default: none (global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub argocd_project: Option<String>,
    #[serde(flatten)]
    pub metadata: SecretMetadata,
}

impl Default for AccessKeySecret {
    fn default() -> Self {
        Self { name: None, formats: default_access_key_formats(), argocd_project: None, metadata: SecretMetadata::default() }
    }
}

fn default_access_key_formats() -> Vec<AccessKeyFormat> {
    vec![AccessKeyFormat::SshAuth]
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AccessKeyFormat {
    SshAuth,
    Flux,
    Tekton,
    Jenkins,
    Argocd,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// Where a key is registered: a repository or a project, with Bitbucket's key id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// The repository slug the key is registered on (or `project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The project key the key is registered on (or `repository`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Bitbucket's id of the access key there.
    pub id: i64,
}

/// A previous key that stays registered until `removeAfter`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiringKey {
    /// SHA256 fingerprint of the previous key.
    pub fingerprint: String,
    /// Where the previous key is still registered.
    #[serde(default)]
    pub registrations: Vec<Registration>,
    /// When the previous key is removed from Bitbucket (end of the grace period).
    pub remove_after: Time,
}

/// What the operator did: the current key, where it is registered, and the condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyStatus {
    /// `Ready` with a reason (docs/troubleshooting.md lists every reason and what to do),
    /// and `Degraded` while a failure leaves the Secret usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The type of the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<KeyType>,
    /// SHA256 fingerprint of the current key (as `ssh-keygen -lf` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The current public key, in authorized_keys format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Where the current key is registered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registrations: Vec<Registration>,
    /// Previous keys still registered during their grace period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring_keys: Vec<RetiringKey>,
    /// The Secret that holds the private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the current key was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// When the key is rotated next (with `rotation.period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    /// The value of the rotate annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_request: Option<String>,
    /// When Bitbucket was last compared with this status (drift check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_time: Option<Time>,
}
