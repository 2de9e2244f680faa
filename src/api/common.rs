use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to a Secret. Which namespace it is read from depends on who refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

/// Which workspace object the operator uses to reach Bitbucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct WorkspaceRef {
    /// `BitbucketWorkspace` (same namespace) or `ClusterBitbucketWorkspace`.
    #[serde(default)]
    pub kind: WorkspaceKind,
    /// Name of the workspace object.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WorkspaceKind {
    #[default]
    BitbucketWorkspace,
    ClusterBitbucketWorkspace,
}

/// Metadata for the Secret the operator writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretMetadata {
    /// Labels added to the Secret (at most 64; values of at most 63 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret (at most 64; values of at most 4096 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub annotations: BTreeMap<String, String>,
}

/// A CEL rule: the Go duration `self` lies within `min..=max` (`min` may be `0s`).
///
/// CEL runs even when the field's pattern already refused the value, and its `duration()`
/// fails on what is no duration or overflows Go's 290 years (the API server then puts
/// "type conversion error" before the message). So what is no duration is left to the
/// pattern's message, and a component far beyond any bound (6+ digits of hours, 8+ of
/// minutes, 10+ of seconds, ...) is refused without parsing; within 32 characters, what
/// remains cannot overflow.
pub(crate) fn duration_within(min: &str, max: &str) -> String {
    format!(
        "!self.matches('{GO_DURATION}') || (!self.matches('{FAR_TOO_LONG}') && duration(self) >= duration('{min}') && duration(self) <= duration('{max}'))"
    )
}

/// The duration pattern of our schemas, in CEL's string syntax.
pub(crate) const GO_DURATION: &str = "^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$";

/// A Go duration with a component beyond any bound a field of ours allows (see `duration_within`).
pub(crate) const FAR_TOO_LONG: &str = "(^|[a-z])([0-9]{6,}([.][0-9]*)?h|[0-9]{8,}([.][0-9]*)?m([0-9]|$)|[0-9]{10,}([.][0-9]*)?s|[0-9]{13,}([.][0-9]*)?ms|[0-9]{16,}([.][0-9]*)?us|[0-9]{19,}([.][0-9]*)?ns)";

/// Status shared by every kind: conditions in the `metav1.Condition` shape.
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];
}

/// The `Ready` condition of a status, if any.
pub fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}
