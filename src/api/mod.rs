//! The custom resources of group `bitbucket.credentials.dev`, version `v1alpha1`.

mod access_key;
mod common;
mod oauth_consumer;
mod workspace;

pub use access_key::*;
pub use common::*;
pub use oauth_consumer::*;
pub use workspace::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

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
    let mut crds = vec![
        ("bitbucketworkspaces.yaml", BitbucketWorkspace::crd()),
        ("clusterbitbucketworkspaces.yaml", ClusterBitbucketWorkspace::crd()),
        ("bitbucketaccesskeys.yaml", BitbucketAccessKey::crd()),
        ("bitbucketoauthconsumers.yaml", BitbucketOAuthConsumer::crd()),
    ];
    for (_, crd) in &mut crds {
        for version in &mut crd.spec.versions {
            let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
            for_each_schema(root, &mut drop_null_from_enum);
            if crd.spec.names.kind == "ClusterBitbucketWorkspace" {
                let selector = ["spec", "allowedNamespaces", "selector"]
                    .into_iter()
                    .try_fold(&mut *root, |s, name| s.properties.as_mut()?.get_mut(name));
                if let Some(selector) = selector {
                    bound_label_selector(selector);
                }
            }
        }
    }
    crds
}

/// Applies `f` to a schema and every schema nested in it.
fn for_each_schema(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        for_each_schema(child, f);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => for_each_schema(item, f),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(|i| for_each_schema(i, f)),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(value)) = &mut schema.additional_properties {
        for_each_schema(value, f);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of].into_iter().flatten() {
        list.iter_mut().for_each(|s| for_each_schema(s, f));
    }
    if let Some(not) = &mut schema.not {
        for_each_schema(not, f);
    }
}

/// schemars lists `null` among the values of an `Option<Enum>`; `nullable: true` already says
/// that, and clients that validate against the published OpenAPI (kubectl explain, v2
/// validators) take the `null` for a value of the enum.
fn drop_null_from_enum(schema: &mut JSONSchemaProps) {
    if let Some(values) = &mut schema.enum_ {
        let before = values.len();
        values.retain(|v| !v.0.is_null());
        if values.len() != before {
            schema.nullable = Some(true);
        }
    }
}

/// Bounds on the `metav1.LabelSelector` (whose schema comes from k8s-openapi): sizes of
/// its lists, maps and strings, and the operators Kubernetes knows.
fn bound_label_selector(selector: &mut JSONSchemaProps) {
    const MAX_LABELS: i64 = 64;
    const MAX_EXPRESSIONS: i64 = 16;
    // A qualified label key: a DNS subdomain prefix (253), a slash and a name (63).
    const MAX_KEY: i64 = 317;
    const MAX_VALUE: i64 = 63;
    let Some(props) = selector.properties.as_mut() else { return };
    if let Some(labels) = props.get_mut("matchLabels") {
        labels.max_properties = Some(MAX_LABELS);
        if let Some(JSONSchemaPropsOrBool::Schema(value)) = &mut labels.additional_properties {
            value.max_length = Some(MAX_VALUE);
        }
    }
    let Some(expressions) = props.get_mut("matchExpressions") else { return };
    expressions.max_items = Some(MAX_EXPRESSIONS);
    let Some(JSONSchemaPropsOrArray::Schema(requirement)) = &mut expressions.items else { return };
    let Some(fields) = requirement.properties.as_mut() else { return };
    if let Some(key) = fields.get_mut("key") {
        key.max_length = Some(MAX_KEY);
    }
    if let Some(operator) = fields.get_mut("operator") {
        operator.enum_ = Some(
            ["In", "NotIn", "Exists", "DoesNotExist"]
                .map(|o| k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(o.into()))
                .into(),
        );
    }
    if let Some(values) = fields.get_mut("values") {
        values.max_items = Some(MAX_LABELS);
        if let Some(JSONSchemaPropsOrArray::Schema(value)) = &mut values.items {
            value.max_length = Some(MAX_VALUE);
        }
    }
}

/// The YAML document of one CRD, as `crd` prints and `crds/` holds it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_saphyr::to_string(crd).expect("a CRD always serializes");
    format!("---\n{yaml}")
}
