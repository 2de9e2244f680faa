use crate::support::{cluster, kubectl, root, server_version};

#[tokio::test]
async fn the_control_plane_is_a_real_kube_apiserver() {
    let server = server_version();
    eprintln!("tests run against kube-apiserver {server}");
    assert!(server.starts_with("v1.35."), "unexpected server version {server}");
}

#[tokio::test]
async fn crds_are_established_and_short_names_work() {
    let c = cluster();
    let out = kubectl(&c.kubeconfig, &["get", "bbak,bboc,bbws,cbbws", "-A"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for crd in ["bitbucketaccesskeys", "bitbucketoauthconsumers", "bitbucketworkspaces", "clusterbitbucketworkspaces"] {
        let out = kubectl(
            &c.kubeconfig,
            &[
                "get",
                "crd",
                &format!("{crd}.bitbucket.credentials.dev"),
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            ],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "True", "{crd}");
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let c = cluster();
    let ns = kubectl(&c.kubeconfig, &["create", "namespace", "ci"]);
    let _ = ns; // may exist from an earlier run against a reused cluster
    let out = kubectl(&c.kubeconfig, &["apply", "--dry-run=server", "-f", root().join("examples").to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for kind in ["bitbucketworkspace", "clusterbitbucketworkspace", "bitbucketaccesskey", "bitbucketoauthconsumer"] {
        assert!(text.contains(&format!("{kind}.bitbucket.credentials.dev/")), "{kind} missing from: {text}");
    }
}
