//! The checked-in CRDs are exactly what `bitbucket-credentials-operator crd` generates.

use bitbucket_credentials_operator::api;

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, crd) in api::crds() {
        let generated = api::crd_yaml(&crd);
        let path = dir.join(file);
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} differs from the generated CRD: run `cargo run -- crd` and split it into crds/ (make crds)",
            path.display()
        );
    }
}

#[test]
fn chart_crds_match_the_top_level_ones() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart = root.join("charts/bitbucket-credentials-operator/crds");
    for (file, _) in api::crds() {
        let top = std::fs::read_to_string(root.join("crds").join(file)).expect("top-level CRD");
        let ours = std::fs::read_to_string(chart.join(file)).expect("chart CRD present");
        assert_eq!(top, ours, "charts/bitbucket-credentials-operator/crds/{file} differs from crds/{file}: run make crds");
    }
}

/// Walks every schema of a CRD's `spec` and `status` with its path.
fn walk(path: &str, schema: &serde_json::Value, f: &mut impl FnMut(&str, &serde_json::Map<String, serde_json::Value>)) {
    let Some(obj) = schema.as_object() else { return };
    f(path, obj);
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            walk(&format!("{path}.{name}"), child, f);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = obj.get(key) {
            walk(&format!("{path}[]"), child, f);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for child in obj.get(key).and_then(|l| l.as_array()).into_iter().flatten() {
            walk(path, child, f);
        }
    }
}

fn schemas() -> Vec<(String, serde_json::Value)> {
    api::crds()
        .into_iter()
        .flat_map(|(file, crd)| {
            crd.spec.versions.into_iter().map(move |v| {
                let schema = v.schema.and_then(|s| s.open_api_v3_schema).expect("every version has a schema");
                (file.to_string(), serde_json::to_value(schema).unwrap())
            })
        })
        .collect()
}

#[test]
fn no_enum_lists_null_among_its_values() {
    let mut found = Vec::new();
    for (file, schema) in schemas() {
        walk("", &schema, &mut |path, obj| {
            if obj.get("enum").and_then(|e| e.as_array()).is_some_and(|values| values.iter().any(|v| v.is_null())) {
                found.push(format!("{file}: {path}"));
            }
        });
    }
    assert!(
        found.is_empty(),
        "enums with null among their values (kubectl and OpenAPI v2 clients take it for a value):\n{}",
        found.join("\n")
    );
}

/// What a user writes is bounded: the API server estimates the cost of CEL rules from these
/// bounds, and no object can be made arbitrarily large field by field.
#[test]
fn every_list_map_and_string_of_a_spec_is_bounded() {
    let (mut unbounded, mut checked) = (Vec::new(), 0);
    for (file, schema) in schemas() {
        walk("", &schema["properties"]["spec"], &mut |path, obj| {
            checked += 1;
            let bounded = match obj.get("type").and_then(|t| t.as_str()) {
                Some("string") => obj.contains_key("maxLength") || obj.contains_key("enum"),
                Some("array") => obj.contains_key("maxItems"),
                Some("object") => obj.contains_key("properties") || obj.contains_key("maxProperties"),
                _ => true,
            };
            if !bounded {
                unbounded.push(format!("{file}: spec{path}"));
            }
        });
    }
    assert!(checked > 50, "the walk saw only {checked} schemas");
    assert!(unbounded.is_empty(), "unbounded fields:\n{}", unbounded.join("\n"));
}

/// `kubectl explain` says something for every kind and every field (list items and map
/// values excepted: their list says it).
#[test]
fn every_kind_and_field_is_described() {
    let mut missing = Vec::new();
    for (file, schema) in schemas() {
        let top = schema["description"].as_str().unwrap_or_default();
        if top.is_empty() || top.starts_with("Auto-generated") {
            missing.push(format!("{file}: the kind ({top:?})"));
        }
        for part in ["spec", "status"] {
            walk(part, &schema["properties"][part], &mut |path, obj| {
                let described = obj.get("description").and_then(|d| d.as_str()).is_some_and(|d| !d.trim().is_empty());
                if !described && !path.ends_with("[]") && !path.contains("[].") {
                    missing.push(format!("{file}: {path}"));
                }
            });
        }
    }
    assert!(missing.is_empty(), "no description: {missing:#?}");
}
