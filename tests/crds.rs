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
