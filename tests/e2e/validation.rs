//! Invalid objects are refused at `kubectl apply`, with the message of the schema or CEL
//! rule that refuses them.

use crate::support::{cluster, kubectl, kubectl_apply, kubectl_stdin};

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
        (
            "access key with empty target lists",
            key("  workspaceRef: {name: w}\n  repositories: []\n  projects: []\n"),
            "at least one of repositories or projects must be listed",
        ),
        ("access key without workspaceRef", key("  repositories: [api]\n"), "spec.workspaceRef: Required value"),
        ("unknown key type", key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: dsa\n"), "Unsupported value: \"dsa\""),
        (
            "rsaBits below 2048",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: rsa\n  rsaBits: 1024\n"),
            "rsaBits must be one of 2048, 3072, 4096",
        ),
        (
            "rsaBits with ed25519",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rsaBits: 4096\n"),
            "rsaBits may be set only when keyType is rsa",
        ),
        (
            "ecdsaCurve with rsa",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: rsa\n  ecdsaCurve: p256\n"),
            "ecdsaCurve may be set only when keyType is ecdsa",
        ),
        (
            "unknown ecdsa curve",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: ecdsa\n  ecdsaCurve: p192\n"),
            "Unsupported value: \"p192\"",
        ),
        (
            "repository slug with uppercase and spaces",
            key("  workspaceRef: {name: w}\n  repositories: [\"My Repo\"]\n"),
            "should match '^[a-z0-9][a-z0-9._-]{0,61}$'",
        ),
        ("project key in lowercase", key("  workspaceRef: {name: w}\n  projects: [core]\n"), "should match '^[A-Z][A-Z0-9_]{0,127}$'"),
        ("repeated repository", key("  workspaceRef: {name: w}\n  repositories: [api, api]\n"), "Duplicate value: \"api\""),
        (
            "repeated secret format",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  secret: {formats: [flux, flux]}\n"),
            "secret.formats must not repeat",
        ),
        (
            "unknown secret format",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  secret: {formats: [gitlab]}\n"),
            "Unsupported value: \"gitlab\"",
        ),
        (
            "grace period not shorter than period",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: 1h, gracePeriod: 2h}\n"),
            "rotation.gracePeriod must be shorter than rotation.period",
        ),
        (
            "period that is not a duration",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: \"90 days\"}\n"),
            "should match",
        ),
        (
            "unknown deletion policy",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  deletionPolicy: Orphan\n"),
            "Unsupported value: \"Orphan\"",
        ),
        (
            "unknown workspace kind",
            key("  workspaceRef: {name: w, kind: Workspace}\n  repositories: [api]\n"),
            "Unsupported value: \"Workspace\"",
        ),
        (
            "workspace with two auth methods",
            ws("  workspace: acme\n  auth: {apiToken: {secretRef: {name: a}}, oauthConsumer: {secretRef: {name: b}}}\n"),
            "exactly one of auth.apiToken or auth.oauthConsumer must be set",
        ),
        (
            "workspace with no auth method",
            ws("  workspace: acme\n  auth: {}\n"),
            "exactly one of auth.apiToken or auth.oauthConsumer must be set",
        ),
        ("workspace slug with uppercase", ws(&format!("  workspace: Acme\n{auth}")), "should match '^[a-z0-9][a-z0-9_-]{0,61}$'"),
        ("workspace without slug", ws(auth), "spec.workspace: Required value"),
        (
            "requestsPerHour of zero",
            ws(&format!("  workspace: acme\n  requestsPerHour: 0\n{auth}")),
            "should be greater than or equal to 1",
        ),
        ("apiURL that is not a URL", ws(&format!("  workspace: acme\n  apiURL: api.bitbucket.org\n{auth}")), "should match"),
        ("oauth consumer without consumerSecretRef", oc("  workspaceRef: {name: w}\n"), "spec.consumerSecretRef: Required value"),
        (
            "oauth consumer with unknown format",
            oc("  workspaceRef: {name: w}\n  consumerSecretRef: {name: c}\n  secret: {formats: [jwt]}\n"),
            "Unsupported value: \"jwt\"",
        ),
        (
            "oauth consumer with repeated format",
            oc("  workspaceRef: {name: w}\n  consumerSecretRef: {name: c}\n  secret: {formats: [token, token]}\n"),
            "secret.formats must not repeat",
        ),
        (
            "cluster workspace with two auth methods",
            format!(
                "{CWS}spec:\n  workspace: acme\n  auth: {{apiToken: {{secretRef: {{name: a}}}}, oauthConsumer: {{secretRef: {{name: b}}}}}}\n"
            ),
            "exactly one of auth.apiToken or auth.oauthConsumer must be set",
        ),
        // Limits: each absurd value is refused with a message that states the limit.
        (
            "rotation period of 100000000h",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: 100000000h}\n"),
            "rotation.period must be between 1h and 87600h",
        ),
        (
            "rotation period of 100000000h with a grace period",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: 100000000h, gracePeriod: 99999999999m}\n"),
            "rotation.period must be between 1h and 87600h",
        ),
        (
            "rotation period of 87601h",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: 87601h}\n"),
            "rotation.period must be between 1h and 87600h",
        ),
        (
            "rotation period of 30m",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: 30m}\n"),
            "rotation.period must be between 1h and 87600h",
        ),
        (
            "over-long rotation period",
            key(&format!("  workspaceRef: {{name: w}}\n  repositories: [api]\n  rotation: {{period: {}h}}\n", "1".repeat(40))),
            "may not be more than 32",
        ),
        (
            "grace period of 721h",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  rotation: {period: 87600h, gracePeriod: 721h}\n"),
            "rotation.gracePeriod must be at most 720h",
        ),
        (
            "refreshBefore of 30s",
            oc("  workspaceRef: {name: w}\n  consumerSecretRef: {name: c}\n  refreshBefore: 30s\n"),
            "refreshBefore must be between 1m and 12h",
        ),
        (
            "refreshBefore of 13h",
            oc("  workspaceRef: {name: w}\n  consumerSecretRef: {name: c}\n  refreshBefore: 13h\n"),
            "refreshBefore must be between 1m and 12h",
        ),
        (
            "rsaBits of 2049",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: rsa\n  rsaBits: 2049\n"),
            "rsaBits must be one of 2048, 3072, 4096",
        ),
        (
            "rsaBits of 8192",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  keyType: rsa\n  rsaBits: 8192\n"),
            "rsaBits must be one of 2048, 3072, 4096",
        ),
        (
            "101 repositories",
            key(&format!("  workspaceRef: {{name: w}}\n  repositories: [{}]\n", numbered("r", 101))),
            "must have at most 100 items",
        ),
        (
            "101 projects",
            key(&format!("  workspaceRef: {{name: w}}\n  projects: [{}]\n", numbered("P", 101))),
            "must have at most 100 items",
        ),
        (
            "label with a newline",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  label: \"ci\\nkey\"\n"),
            "label must not contain line breaks or other control characters",
        ),
        (
            "label with a tab",
            key("  workspaceRef: {name: w}\n  repositories: [api]\n  label: \"ci\\tkey\"\n"),
            "label must not contain line breaks or other control characters",
        ),
        (
            "label of 256 characters",
            key(&format!("  workspaceRef: {{name: w}}\n  repositories: [api]\n  label: {}\n", "l".repeat(256))),
            "may not be more than 255",
        ),
        (
            "secret with 65 labels",
            key(&format!("  workspaceRef: {{name: w}}\n  repositories: [api]\n  secret: {{labels: {{{}}}}}\n", entries(65))),
            "must have at most 64 items",
        ),
        (
            "secret label value of 64 characters",
            key(&format!("  workspaceRef: {{name: w}}\n  repositories: [api]\n  secret: {{labels: {{team: {}}}}}\n", "v".repeat(64))),
            "may not be more than 63",
        ),
        (
            "oauth secret with 65 annotations",
            oc(&format!("  workspaceRef: {{name: w}}\n  consumerSecretRef: {{name: c}}\n  secret: {{annotations: {{{}}}}}\n", entries(65))),
            "must have at most 64 items",
        ),
        (
            "sshHost with a newline",
            ws(&format!("  workspace: acme\n  sshHost: \"bitbucket.org\\nevil.example\"\n{auth}")),
            "sshHost must be a host name or host:port without spaces or control characters",
        ),
        (
            "sshHost with a space",
            ws(&format!("  workspace: acme\n  sshHost: \"bitbucket.org evil.example\"\n{auth}")),
            "sshHost must be a host name or host:port without spaces or control characters",
        ),
        (
            "over-long knownHosts",
            ws(&format!("  workspace: acme\n  knownHosts: {}\n{auth}", "k".repeat(16385))),
            "may not be more than 16384",
        ),
        (
            "over-long apiURL",
            ws(&format!("  workspace: acme\n  apiURL: https://{}\n{auth}", "a".repeat(2048))),
            "may not be more than 2048",
        ),
        (
            "over-long siteURL",
            ws(&format!("  workspace: acme\n  siteURL: https://{}\n{auth}", "a".repeat(2048))),
            "may not be more than 2048",
        ),
        (
            "101 allowedRepositories",
            ws(&format!("  workspace: acme\n  allowedRepositories: [{}]\n{auth}", numbered("r", 101))),
            "must have at most 100 items",
        ),
        (
            "over-long allowedRepositories pattern",
            ws(&format!("  workspace: acme\n  allowedRepositories: [\"{}*\"]\n{auth}", "r".repeat(128))),
            "may not be more than 128",
        ),
        (
            "101 allowedNamespaces names",
            format!("{CWS}spec:\n  workspace: acme\n{auth}  allowedNamespaces: {{names: [{}]}}\n", numbered("ns", 101)),
            "must have at most 100 items",
        ),
        (
            "allowedNamespaces name that is no namespace name",
            format!("{CWS}spec:\n  workspace: acme\n{auth}  allowedNamespaces: {{names: [\"Team A\"]}}\n"),
            "should match",
        ),
        (
            "allowedNamespaces selector with 65 labels",
            format!("{CWS}spec:\n  workspace: acme\n{auth}  allowedNamespaces: {{selector: {{matchLabels: {{{}}}}}}}\n", entries(65)),
            "must have at most 64 items",
        ),
        (
            "allowedNamespaces selector with an unknown operator",
            format!(
                "{CWS}spec:\n  workspace: acme\n{auth}  allowedNamespaces: {{selector: {{matchExpressions: [{{key: team, operator: Like, values: [a]}}]}}}}\n"
            ),
            "Unsupported value: \"Like\"",
        ),
    ]
}

/// Objects at the limits: the rules must not refuse what they are meant to allow.
fn accepted() -> Vec<(&'static str, String)> {
    let key = |name: &str, spec: &str| {
        format!(
            "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: w}}\n{spec}"
        )
    };
    let ws = |name: &str, spec: &str| {
        format!(
            "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {{name: {name}}}\nspec:\n  workspace: acme\n  auth: {{apiToken: {{secretRef: {{name: s}}}}}}\n{spec}"
        )
    };
    let oc = |name: &str, spec: &str| {
        format!(
            "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: w}}\n  consumerSecretRef: {{name: c}}\n{spec}"
        )
    };
    vec![
        ("rotation period of 1h", key("p1h", "  repositories: [api]\n  rotation: {period: 1h}\n")),
        (
            "rotation period of 87600h with a grace period of 720h",
            key("p87600h", "  repositories: [api]\n  rotation: {period: 87600h, gracePeriod: 720h}\n"),
        ),
        (
            "rotation period of 1h30m with a grace period of 0s",
            key("p1h30m", "  repositories: [api]\n  rotation: {period: 1h30m, gracePeriod: 0s}\n"),
        ),
        ("rsaBits of 2048", key("rsa2048", "  repositories: [api]\n  keyType: rsa\n  rsaBits: 2048\n")),
        ("rsaBits of 3072", key("rsa3072", "  repositories: [api]\n  keyType: rsa\n  rsaBits: 3072\n")),
        ("rsaBits of 4096", key("rsa4096", "  repositories: [api]\n  keyType: rsa\n  rsaBits: 4096\n")),
        ("ecdsa key with a curve", key("ecdsa", "  repositories: [api]\n  keyType: ecdsa\n  ecdsaCurve: p521\n")),
        (
            "100 repositories and 100 projects",
            key("many", &format!("  repositories: [{}]\n  projects: [{}]\n", numbered("r", 100), numbered("P", 100))),
        ),
        ("label of 255 characters with spaces", key("label", &format!("  repositories: [api]\n  label: \"{} ci key\"\n", "l".repeat(248)))),
        (
            "secret with 64 labels and 64 annotations",
            key("meta", &format!("  repositories: [api]\n  secret: {{labels: {{{}}}, annotations: {{{}}}}}\n", entries(64), entries(64))),
        ),
        ("refreshBefore of 1m", oc("rb1m", "  refreshBefore: 1m\n")),
        ("refreshBefore of 12h", oc("rb12h", "  refreshBefore: 12h\n")),
        ("refreshBefore by default", oc("rbdefault", "")),
        ("sshHost with a port", ws("sshport", "  sshHost: \"127.0.0.1:2222\"\n")),
        ("sshHost in brackets with a port", ws("sshbrackets", "  sshHost: \"[git.acme.test]:2222\"\n")),
        ("knownHosts of 16384 characters", ws("knownhosts", &format!("  knownHosts: {}\n", "k".repeat(16384)))),
        (
            "apiURL and siteURL of 2048 characters",
            ws("urls", &format!("  apiURL: https://{0}\n  siteURL: https://{0}\n", "a".repeat(2040))),
        ),
        (
            "100 allowedRepositories of 128 characters",
            ws(
                "allowed",
                &format!(
                    "  allowedRepositories: [{}]\n",
                    (0..100).map(|i| format!("\"{i:03}{}\"", "*".repeat(125))).collect::<Vec<_>>().join(", ")
                ),
            ),
        ),
        (
            "cluster workspace admitting 100 namespaces and a selector",
            format!(
                "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: ClusterBitbucketWorkspace\nmetadata: {{name: cw-limits}}\nspec:\n  workspace: acme\n  auth: {{apiToken: {{secretRef: {{name: s}}}}}}\n  allowedNamespaces:\n    names: [{}]\n    selector: {{matchLabels: {{{}}}, matchExpressions: [{{key: team, operator: In, values: [a, b]}}, {{key: tier, operator: Exists}}]}}\n",
                numbered("ns", 100),
                entries(64)
            ),
        ),
    ]
}

/// `prefix0, prefix1, ...` as the inside of a YAML flow sequence.
fn numbered(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join(", ")
}

/// `k0: v, k1: v, ...` as the inside of a YAML flow mapping.
fn entries(n: usize) -> String {
    (0..n).map(|i| format!("k{i}: v")).collect::<Vec<_>>().join(", ")
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
        } else if output.contains("evaluating rule") {
            failures.push(format!("{name}: a rule failed to evaluate instead of refusing cleanly: {output}"));
        } else if !output.contains(expected) {
            failures.push(format!("{name}: expected {expected:?} in: {output}"));
        } else {
            eprintln!("rejected as expected: {name}");
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[tokio::test]
async fn objects_at_the_limits_are_accepted() {
    let c = cluster();
    let ns = "validation-accepted";
    let _ = kubectl(&c.kubeconfig, &["create", "namespace", ns]);
    let cases = accepted();
    let mut failures = Vec::new();
    for (name, yaml) in &cases {
        // Server-side dry run: validated and admitted like a real apply, stored nowhere.
        let (ok, output) = kubectl_stdin(&c.kubeconfig, &["apply", "--dry-run=server", "--validate=strict", "-n", ns, "-f", "-"], yaml);
        if !ok {
            failures.push(format!("{name}: refused: {output}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A `kind: List` with one object of each kind goes through kubectl's client-side
/// validation (which refuses schemas with `null` among enum values) and the server's.
#[tokio::test]
async fn a_list_of_every_kind_is_accepted_by_kubectl() {
    let c = cluster();
    let ns = "validation-list";
    let _ = kubectl(&c.kubeconfig, &["create", "namespace", ns]);
    let list = "apiVersion: v1
kind: List
items:
- apiVersion: bitbucket.credentials.dev/v1alpha1
  kind: BitbucketWorkspace
  metadata: {name: acme}
  spec:
    workspace: acme
    auth: {apiToken: {secretRef: {name: bb-admin}}}
- apiVersion: bitbucket.credentials.dev/v1alpha1
  kind: ClusterBitbucketWorkspace
  metadata: {name: validation-list}
  spec:
    workspace: acme
    auth: {oauthConsumer: {secretRef: {name: bb-consumer}}}
    allowedNamespaces: {names: [validation-list]}
- apiVersion: bitbucket.credentials.dev/v1alpha1
  kind: BitbucketAccessKey
  metadata: {name: ci}
  spec:
    workspaceRef: {name: acme}
    repositories: [api]
    keyType: ecdsa
    ecdsaCurve: p384
    rotation: {period: 2160h, gracePeriod: 1h}
- apiVersion: bitbucket.credentials.dev/v1alpha1
  kind: BitbucketOAuthConsumer
  metadata: {name: ci}
  spec:
    workspaceRef: {name: acme}
    consumerSecretRef: {name: teamcity-oauth}
    refreshBefore: 15m
";
    for validate in ["--validate=true", "--validate=strict"] {
        for dry_run in ["--dry-run=client", "--dry-run=server"] {
            let out = kubectl_stdin(&c.kubeconfig, &["apply", validate, dry_run, "-n", ns, "-f", "-"], list);
            assert!(out.0, "kubectl apply {validate} {dry_run} of a List refused it: {}", out.1);
        }
    }
}
