// kube-derive's repeated `printcolumn(...)` arguments look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{SecretMetadata, SecretRef, WorkspaceRef};

fn default_refresh_before() -> String {
    "15m".into()
}

/// A Bitbucket OAuth consumer whose short-lived access tokens the operator keeps fresh in
/// a Secret, so CI pods never see the consumer's secret.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "bitbucket.credentials.dev",
    version = "v1alpha1",
    kind = "BitbucketOAuthConsumer",
    doc = "A short-lived Bitbucket access token minted with an OAuth consumer's client_credentials and kept fresh in a Secret for CI pods (git over HTTPS, API calls).",
    namespaced,
    shortname = "bboc",
    category = "bitbucket",
    status = "OAuthConsumerStatus",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(name = "Renewal", type_ = "string", json_path = ".status.renewalTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BitbucketOAuthConsumerSpec {
    /// The workspace object that gives the URLs and the policy.
    pub workspace_ref: WorkspaceRef,
    /// Secret in the same namespace holding the consumer's `key` and `secret`.
    pub consumer_secret_ref: SecretRef,
    /// Renew this long before the token expires: between `1m` and `12h`. Bitbucket's tokens
    /// live 2 hours; a value at or above that renews at half the token's life.
    #[serde(default = "default_refresh_before")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new(super::common::duration_within("1m", "12h")).message("refreshBefore must be between 1m and 12h"))]
    pub refresh_before: String,
    /// The Secret that receives the access token.
    #[serde(default)]
    pub secret: OAuthSecret,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthSecret {
    /// Name of the Secret. Default: the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Layouts written into the one Secret.
    #[serde(default = "default_token_formats")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g == f))").message("secret.formats must not repeat"))]
    pub formats: Vec<TokenFormat>,
    /// Argo CD project of the `argocd` layout (its `project` key), for credentials that
    /// only a project-scoped Argo CD repository may use. Default: none (global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub argocd_project: Option<String>,
    #[serde(flatten)]
    pub metadata: SecretMetadata,
}

impl Default for OAuthSecret {
    fn default() -> Self {
        Self { name: None, formats: default_token_formats(), argocd_project: None, metadata: SecretMetadata::default() }
    }
}

fn default_token_formats() -> Vec<TokenFormat> {
    vec![TokenFormat::Token]
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenFormat {
    Token,
    BasicAuth,
    GitCredentials,
    /// Argo CD repository credentials over HTTPS (`repo-creds`: url, username, password).
    Argocd,
}

/// What the operator did: the token in the Secret, when it expires, and the condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthConsumerStatus {
    /// `Ready` with a reason (docs/troubleshooting.md lists every reason and what to do),
    /// and `Degraded` while a failure leaves the Secret usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the token in the Secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the token is renewed (`refreshBefore` ahead of its expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// The scopes Bitbucket granted the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The Secret that holds the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Hash of the consumer Secret's content the token was minted with (no secret material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_revision: Option<String>,
}
