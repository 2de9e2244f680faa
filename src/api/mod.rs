//! The custom resources of group `bitbucket.credentials.dev`, version `v1alpha1`.

mod access_key;
mod common;
mod oauth_consumer;
mod workspace;

pub use access_key::*;
pub use common::*;
pub use oauth_consumer::*;
pub use workspace::*;

use kube::CustomResourceExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

pub const GROUP: &str = "bitbucket.credentials.dev";
/// Annotation whose change requests a manual rotation of a `BitbucketAccessKey`.
pub const ROTATE_ANNOTATION: &str = "bitbucket.credentials.dev/rotate";
/// Label the operator puts on every Secret it writes; the Secret watch filters on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "bitbucket-credentials-operator";
/// Finalizer that removes keys from Bitbucket before the object goes.
pub const FINALIZER: &str = "bitbucket.credentials.dev/cleanup";
/// On a workspace object and its auth Secret while access keys registered through them
/// exist (as Kubernetes protects a PVC in use): deleting a namespace, or the workspace
/// first, cannot take away what their cleanup needs.
pub const IN_USE_FINALIZER: &str = "bitbucket.credentials.dev/in-use";
/// On an access key's Secret: the repositories and projects where a key of its object may
/// be registered (written before each registration, so that a crash cannot hide one).
pub const TARGETS_ANNOTATION: &str = "bitbucket.credentials.dev/targets";

/// Every CRD with the file name it is checked in under in `crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("bitbucketworkspaces.yaml", BitbucketWorkspace::crd()),
        ("clusterbitbucketworkspaces.yaml", ClusterBitbucketWorkspace::crd()),
        ("bitbucketaccesskeys.yaml", BitbucketAccessKey::crd()),
        ("bitbucketoauthconsumers.yaml", BitbucketOAuthConsumer::crd()),
    ]
}

/// The YAML document of one CRD, as `crd` prints and `crds/` holds it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml::to_string(crd).expect("a CRD always serializes");
    format!("---\n{yaml}")
}
