//! `kubectl bitbucket`: the plugin run through the real kubectl against the real API
//! server and the simulator, as an operator of the cluster runs it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::access_key::{access_key, status_str};
use crate::support::{Env, PrivateCluster, SECRET_VALUES, SIM_CONFIG, cluster};

const READY: Duration = Duration::from_secs(60);

/// `kubectl bitbucket ARGS` with the plugin on PATH: success and stdout + stderr.
fn plugin(envs: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    plugin_on(&cluster().kubeconfig, envs, args)
}

fn plugin_on(kubeconfig: &Path, envs: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_kubectl-bitbucket"));
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("kubectl")
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("BCO_ALLOWED_BITBUCKET_URLS")
        .envs(envs.iter().copied())
        .arg("bitbucket")
        .args(args)
        .output()
        .expect("run kubectl bitbucket");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("$ kubectl bitbucket {}\n{text}", args.join(" "));
    for secret in SECRET_VALUES {
        assert!(!text.contains(secret), "the plugin printed a secret");
    }
    assert!(!text.contains("PRIVATE KEY"), "the plugin printed a private key");
    (out.status.success(), text)
}

#[tokio::test]
async fn status_and_rotate_show_and_drive_an_access_key_and_a_consumer() {
    let env = Env::new("cli-status").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api]\n  projects: [CORE]\n  rotation: {period: 720h, gracePeriod: 1h}\n")).await;
    let first = status_str(&env.wait_ready("bitbucketaccesskeys", "ci", READY).await, "fingerprint");
    let ns = env.ns.as_str();

    let (ok, out) = plugin(&[], &["status", "ci", "-n", ns]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("BitbucketAccessKey {ns}/ci")), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("Ready") && l.contains("True")), "{out}");
    assert!(out.contains(&first) && out.contains("repository api") && out.contains("project CORE"), "{out}");
    assert!(out.contains("Next rotation:") && out.contains("(in 29d 23h)"), "{out}");
    assert!(out.lines().any(|l| l.contains("Normal") && l.contains("Registered")), "the last events: {out}");

    let (ok, out) = plugin(&[], &["rotate", "ci", "-n", ns, "--wait"]);
    assert!(ok, "{out}");
    let second = status_str(&env.get("bitbucketaccesskeys", "ci").await.unwrap(), "fingerprint");
    assert_ne!(second, first, "rotated");
    assert!(out.contains(&format!("new key {second} registered on 2 targets")), "{out}");
    assert!(out.contains(&format!("previous key {first} stays registered until")), "{out}");
    let (ok, out) = plugin(&[], &["status", "ci", "-n", ns]);
    assert!(ok && out.contains(&format!("Retiring key:    {first} on project CORE, repository api")), "{out}");

    // A consumer: the token's expiry and scopes; it has no key to rotate.
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: tok-creds}}\nstringData: {{key: ck-main, secret: cs-main-secret-0123456789}}\n---\n{}",
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {name: tok}\nspec:\n  workspaceRef: {name: acme}\n  consumerSecretRef: {name: tok-creds}\n"
    ))
    .await;
    env.wait_ready("bitbucketoauthconsumers", "tok", READY).await;
    let (ok, out) = plugin(&[], &["status", "tok", "-n", ns]);
    assert!(ok && out.contains("Token expires:") && out.contains("Scopes:          repository:admin project:admin"), "{out}");
    let (ok, out) = plugin(&[], &["rotate", "tok", "-n", ns]);
    assert!(!ok && out.contains("is a BitbucketOAuthConsumer"), "{out}");

    let (ok, out) = plugin(&[], &["status", "nothing", "-n", ns]);
    assert!(!ok && out.contains(&format!("no BitbucketAccessKey or BitbucketOAuthConsumer nothing in namespace {ns}")), "{out}");
}

#[tokio::test]
async fn check_tries_the_credentials_and_names_the_scopes_they_lack_changing_nothing() {
    let env = Env::new("cli-check").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api]\n  projects: [CORE]\n")).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let ns = env.ns.as_str();
    let allow = [("BCO_ALLOWED_BITBUCKET_URLS", env.sim.url.as_str())];

    // Not told that the simulator may have the credentials: nothing is sent.
    let before = env.sim.total_requests().await;
    let (ok, out) = plugin(&[], &["check", "acme", "-n", ns]);
    assert!(!ok && out.contains("--allowed-bitbucket-urls"), "{out}");
    assert!(!out.contains("Credentials:"), "the Secret is not read for a URL that is not allowed: {out}");
    assert_eq!(env.sim.total_requests().await, before, "no request to a URL that is not allowed");

    // The admin token: every operation on the targets the access keys name.
    let keys = env.sim.keys().await;
    let (ok, out) = plugin(&allow, &["check", "acme", "-n", ns]);
    assert!(ok, "{out}");
    for target in ["repository api", "project CORE"] {
        for what in ["list keys", "add keys", "remove keys"] {
            assert!(out.lines().any(|l| l.contains("ok") && l.contains(target) && l.contains(what)), "{target} {what}: {out}");
        }
    }
    assert!(out.contains("API token in Secret") && out.contains("All checks passed."), "{out}");
    assert_eq!(env.sim.keys().await, keys, "the probes changed no key");

    // A token with the read scope only: what it lacks, named, and exit status 1.
    env.apply(
        &crate::support::workspace_yaml(&env.sim.url, "")
            .replace("bb-admin", "bb-reader")
            .replace("name: acme}", "name: reader}")
            .replace("email: admin@acme.test, token: tok-admin-0123456789", "email: reader@acme.test, token: tok-reader-0123456789"),
    )
    .await;
    let (ok, out) = plugin(&allow, &["check", "reader", "-n", ns, "--repository", "api", "--project", "CORE", "--repository", "infra"]);
    assert!(!ok, "{out}");
    assert!(out.lines().any(|l| l.contains("ok") && l.contains("repository infra") && l.contains("list keys")), "{out}");
    assert!(out.lines().any(|l| l.contains("MISSING") && l.contains("repository api") && l.contains("write:ssh-key:bitbucket")), "{out}");
    assert!(out.lines().any(|l| l.contains("MISSING") && l.contains("project CORE") && l.contains("admin:project:bitbucket")), "{out}");
    assert!(out.contains("Missing scopes: admin:project:bitbucket, delete:ssh-key:bitbucket, write:ssh-key:bitbucket"), "{out}");

    // An OAuth consumer workspace: the token's scopes are shown.
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: ws-consumer}}\nstringData: {{key: ck-main, secret: cs-main-secret-0123456789}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {{name: consumer}}\nspec:\n  workspace: acme\n  apiURL: {url}/2.0\n  siteURL: {url}\n  auth: {{oauthConsumer: {{secretRef: {{name: ws-consumer}}}}}}\n",
        url = env.sim.url
    ))
    .await;
    let (ok, out) = plugin(&allow, &["check", "consumer", "-n", ns, "--project", "OPS"]);
    assert!(ok && out.contains("OAuth consumer in Secret") && out.contains("Token scopes:    repository:admin project:admin"), "{out}");

    // A workspace whose Secret is gone, and one that does not exist.
    env.api("bitbucketworkspaces")
        .patch(
            "reader",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"auth": {"apiToken": {"secretRef": {"name": "ghost"}}}}})),
        )
        .await
        .unwrap();
    let (ok, out) = plugin(&allow, &["check", "reader", "-n", ns]);
    assert!(!ok && out.lines().any(|l| l.contains("FAIL") && l.contains("credentials") && l.contains("ghost")), "{out}");
    let (ok, out) = plugin(&allow, &["check", "nowhere", "-n", ns]);
    assert!(!ok && out.contains("no BitbucketWorkspace nowhere") && out.contains("no ClusterBitbucketWorkspace nowhere"), "{out}");
}

#[tokio::test]
async fn check_finds_a_cluster_workspace_with_its_secret_in_the_cluster_resource_namespace() {
    // A control plane of its own: every operator of the shared one serves cluster-scoped
    // workspaces and would fight over this one's status.
    let pc = PrivateCluster::start("cli-cluster");
    let ns = "platform";
    let args = [format!("--watch-namespaces={ns}"), format!("--cluster-resource-namespace={ns}"), "--cluster-name=cli".into()];
    let env = Env::on_private(&pc, "cli-cluster", ns, SIM_CONFIG, &args).await;
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bb-admin}}\nstringData: {{email: admin@acme.test, token: tok-admin-0123456789}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: ClusterBitbucketWorkspace\nmetadata: {{name: shared}}\nspec:\n  workspace: acme\n  apiURL: {url}/2.0\n  siteURL: {url}\n  auth: {{apiToken: {{secretRef: {{name: bb-admin}}}}}}\n  allowedNamespaces: {{names: [{ns}]}}\n  allowedRepositories: [api]\n",
        url = env.sim.url
    ))
    .await;
    env.wait_ready("clusterbitbucketworkspaces", "shared", READY).await;
    env.apply("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: ci}\nspec:\n  workspaceRef: {kind: ClusterBitbucketWorkspace, name: shared}\n  repositories: [api]\n").await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let allow = [("BCO_ALLOWED_BITBUCKET_URLS", env.sim.url.as_str())];

    // No BitbucketWorkspace of that name in the namespace: the cluster one, its Secret in
    // the cluster-resource namespace, the targets of the access keys that use it.
    let (ok, out) = plugin_on(&pc.kubeconfig, &allow, &["check", "shared", "-n", ns, "--cluster-resource-namespace", ns]);
    assert!(ok && out.starts_with("ClusterBitbucketWorkspace shared:"), "{out}");
    assert!(out.contains(&format!("API token in Secret {ns}/bb-admin")), "{out}");
    assert!(out.lines().any(|l| l.contains("ok") && l.contains("repository api") && l.contains("remove keys")), "{out}");

    // Its Secret is looked for where the operator keeps it, not in the caller's namespace.
    let (ok, out) =
        plugin_on(&pc.kubeconfig, &allow, &["check", "shared", "-n", ns, "--cluster", "--cluster-resource-namespace", "default"]);
    assert!(!ok && out.contains("Secret default/bb-admin not found"), "{out}");

    // A repository outside allowedRepositories: refused without a request.
    let before = env.sim.total_requests().await;
    let (ok, out) =
        plugin_on(&pc.kubeconfig, &allow, &["check", "shared", "-n", ns, "--cluster-resource-namespace", ns, "--repository", "web"]);
    assert!(!ok && out.lines().any(|l| l.contains("FAIL") && l.contains("repository web") && l.contains("allowedRepositories")), "{out}");
    assert_eq!(env.sim.total_requests().await - before, 1, "only the credentials' own check: {out}");
}
