//! Invalid objects are refused at `kubectl apply`, with the message of the schema or CEL
//! rule that refuses them.

use crate::support::{cluster, kubectl, kubectl_apply};

const KEY: &str = "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: k}\n";
const WS: &str = "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {name: w}\n";
const OC: &str = "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {name: o}\n";
const CWS: &str = "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: ClusterBitbucketWorkspace\nmetadata: {name: cw-invalid}\n";

fn cases() -> Vec<(&'static str, String, &'static str)> {
    let key = |spec: &str| format!("{KEY}spec:\n{spec}");
    let ws = |spec: &str| format!("{WS}spec:\n{spec}");
    let oc = |spec: &str| format!("{OC}spec:\n{spec}");
    let auth = "  auth: {apiToken: {secretRef: {name: s}}}\n";
    vec![
        ("access key without targets", key("  workspaceRef: {name: w}\n"), "at least one of repositories or projects must be listed"),
        ("access key with empty target lists", key("  workspaceRef: {name: w}\n  repositories: []\n  projects: []\n"), "at least one of repositories or projects must be listed"),
        ("access key without workspaceRef", key("  repositories: [api]\n"), "spec.workspaceRef: Required value"),
        ("unknown key type", key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: dsa\n"), "Unsupported value: \"dsa\""),
        ("rsaBits below 2048", key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: rsa\n  rsaBits: 1024\n"), "should be greater than or equal to 2048"),
        ("rsaBits with ed25519", key("  workspaceRef: {name: w}\n  repositories: [api]\n  rsaBits: 4096\n"), "rsaBits may be set only when keyType is rsa"),
        ("ecdsaCurve with rsa", key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: rsa\n  ecdsaCurve: p256\n"), "ecdsaCurve may be set only when keyType is ecdsa"),
        ("unknown ecdsa curve", key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: ecdsa\n  ecdsaCurve: p192\n"), "Unsupported value: \"p192\""),
        ("repository slug with uppercase and spaces", key("  workspaceRef: {name: w}\n  repositories: [\"My Repo\"]\n"), "should match '^[a-z0-9][a-z0-9._-]{0,61}$'"),
        ("project key in lowercase", key("  workspaceRef: {name: w}\n  projects: [core]\n"), "should match '^[A-Z][A-Z0-9_]{0,127}$'"),
        ("repeated repository", key("  workspaceRef: {name: w}\n  repositories: [api, api]\n"), "Duplicate value: \"api\""),
        ("repeated secret format", key("  workspaceRef: {name: w}\n  repositories: [api]\n  secret: {formats: [flux, flux]}\n"), "secret.formats must not repeat"),
        ("unknown secret format", key("  workspaceRef: {name: w}\n  repositories: [api]\n  secret: {formats: [gitlab]}\n"), "Unsupported value: \"gitlab\""),
        ("grace period not shorter than period", key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: 1h, gracePeriod: 2h}\n"), "rotation.gracePeriod must be shorter than rotation.period"),
        ("period that is not a duration", key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: \"90 days\"}\n"), "should match"),
        ("unknown deletion policy", key("  workspaceRef: {name: w}\n  repositories: [api]\n  deletionPolicy: Orphan\n"), "Unsupported value: \"Orphan\""),
        ("unknown workspace kind", key("  workspaceRef: {name: w, kind: Workspace}\n  repositories: [api]\n"), "Unsupported value: \"Workspace\""),
        ("workspace with two auth methods", ws("  workspace: acme\n  auth: {apiToken: {secretRef: {name: a}}, oauthConsumer: {secretRef: {name: b}}}\n"), "exactly one of auth.apiToken or auth.oauthConsumer must be set"),
        ("workspace with no auth method", ws("  workspace: acme\n  auth: {}\n"), "exactly one of auth.apiToken or auth.oauthConsumer must be set"),
        ("workspace slug with uppercase", ws(&format!("  workspace: Acme\n{auth}")), "should match '^[a-z0-9][a-z0-9_-]{0,61}$'"),
        ("workspace without slug", ws(auth), "spec.workspace: Required value"),
        ("requestsPerHour of zero", ws(&format!("  workspace: acme\n  requestsPerHour: 0\n{auth}")), "should be greater than or equal to 1"),
        ("apiURL that is not a URL", ws(&format!("  workspace: acme\n  apiURL: api.bitbucket.org\n{auth}")), "should match"),
        ("oauth consumer without consumerSecretRef", oc("  workspaceRef: {name: w}\n"), "spec.consumerSecretRef: Required value"),
        ("oauth consumer with unknown format", oc("  workspaceRef: {name: w}\n  consumerSecretRef: {name: c}\n  secret: {formats: [jwt]}\n"), "Unsupported value: \"jwt\""),
        ("oauth consumer with repeated format", oc("  workspaceRef: {name: w}\n  consumerSecretRef: {name: c}\n  secret: {formats: [token, token]}\n"), "secret.formats must not repeat"),
        ("cluster workspace with two auth methods", format!("{CWS}spec:\n  workspace: acme\n  auth: {{apiToken: {{secretRef: {{name: a}}}}, oauthConsumer: {{secretRef: {{name: b}}}}}}\n"), "exactly one of auth.apiToken or auth.oauthConsumer must be set"),
    ]
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_the_rule_s_message() {
    let c = cluster();
    let ns = "validation";
    let _ = kubectl(&c.kubeconfig, &["create", "namespace", ns]);
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (name, yaml, expected) in &cases {
        let (ok, output) = kubectl_apply(&c.kubeconfig, ns, yaml);
        if ok {
            failures.push(format!("{name}: accepted"));
        } else if !output.contains(expected) {
            failures.push(format!("{name}: expected {expected:?} in: {output}"));
        } else {
            eprintln!("rejected as expected: {name}");
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
