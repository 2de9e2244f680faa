//! Hostile tenants: whatever a namespace user writes into the objects and Secrets they
//! control, the operator process keeps running, other tenants keep being served, nothing
//! reaches a repository the tenant may not use, withdrawn access is revoked, and deleting
//! a namespace ends with no key left in Bitbucket.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;

use crate::support::{Env, PrivateCluster, SIM_CONFIG, create_namespace, eventually, kubectl, kubectl_apply, root, tail, workspace_yaml};

const READY: Duration = Duration::from_secs(90);

fn access_key(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n{spec}"
    )
}

fn uid(o: &DynamicObject) -> String {
    o.metadata.uid.clone().unwrap_or_default()
}

fn fingerprint(o: &DynamicObject) -> String {
    o.data["status"]["fingerprint"].as_str().unwrap_or_default().to_string()
}

/// Keys in the simulator carrying the mark of the object with `uid`.
async fn keys_of(env: &Env, uid: &str) -> usize {
    env.sim
        .keys()
        .await
        .iter()
        .filter(|k| crate::support::marked_uid(k["comment"].as_str().unwrap_or_default()).as_deref() == Some(uid))
        .count()
}

fn alive(env: &mut Env) -> bool {
    env.operator.proc.as_mut().is_some_and(|p| p.child.try_wait().ok().flatten().is_none())
}

/// The CRDs as they were before admission had bounds: no CEL rules, no length, count or
/// range limits (patterns and enums of names stay, as the types need them to be read).
/// Objects stored under such a schema are what an upgraded operator meets.
fn crds_without_bounds() -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(root().join("crds")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut crd: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        strip_bounds(&mut crd);
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).unwrap());
    }
    out
}

fn strip_bounds(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for k in ["x-kubernetes-validations", "maxLength", "maxItems", "maxProperties", "maximum", "minimum"] {
                m.remove(k);
            }
            if m.get("type").and_then(|t| t.as_str()) == Some("integer") {
                m.remove("enum");
            }
            m.values_mut().for_each(strip_bounds);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_bounds),
        _ => {}
    }
}

#[tokio::test]
async fn values_stored_before_the_limits_existed_neither_stop_the_operator_nor_make_it_loop() {
    let pc = PrivateCluster::start("hostile-bounds");
    let mut child = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &pc.kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), crds_without_bounds().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "loosened CRDs: {}", String::from_utf8_lossy(&out.stderr));
    let ns = "hostile-bounds";
    let args: Vec<String> = vec![
        format!("--watch-namespaces={ns}"),
        format!("--cluster-resource-namespace={ns}"),
        "--cluster-name=hostile".into(),
        "--drift-check-interval=3s".into(),
    ];
    let mut env = Env::on_private(&pc, "hostile-bounds", ns, SIM_CONFIG, &args).await;
    let apply = |yaml: String| {
        let (ok, out) = kubectl_apply(&pc.kubeconfig, ns, &yaml);
        assert!(ok, "apply: {out}");
    };
    apply(workspace_yaml(&env.sim.url, ""));
    env.wait_ready("bitbucketworkspaces", "acme", READY).await;
    apply(access_key("huge-period", "  repositories: [api]\n  rotation: {period: 100000000h}\n"));
    apply(access_key("huge-grace", "  repositories: [api]\n  rotation: {period: 2h, gracePeriod: 100000000h}\n"));
    apply(access_key("tiny-period", "  repositories: [web]\n  rotation: {period: 1s, gracePeriod: 1s}\n"));
    apply(access_key("odd-rsa", "  repositories: [tools]\n  keyType: rsa\n  rsaBits: 2049\n"));
    apply(access_key("healthy", "  repositories: [infra]\n"));
    apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: oc-creds}\nstringData: {key: ck-main, secret: cs-main-secret-0123456789}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {name: huge-refresh}\nspec:\n  workspaceRef: {name: acme}\n  consumerSecretRef: {name: oc-creds}\n  refreshBefore: 100000000h\n".into(),
    );
    let mut seen = Vec::new();
    for name in ["healthy", "huge-period", "huge-grace", "tiny-period", "odd-rsa"] {
        seen.push(env.wait_ready("bitbucketaccesskeys", name, Duration::from_secs(180)).await);
        assert!(alive(&mut env), "the operator exited:\n{}", tail(&env.operator.logs(), 30));
    }
    env.wait_ready("bitbucketoauthconsumers", "huge-refresh", READY).await;
    // The period is brought within the CRD's bound (87600 h), not left to overflow.
    let next = seen[1].data["status"]["nextRotationTime"].as_str().expect("nextRotationTime").to_string();
    let next: jiff::Timestamp = next.parse().unwrap();
    let bound = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(87_601);
    assert!(next < bound, "next rotation {next} is past the 87600 h bound");
    // Neither the 1 s period (at least 1 h) nor rsaBits 2049 (made as 3072, and read back as
    // such) rotates on every reconcile: several drift checks later, the keys are the same.
    tokio::time::sleep(Duration::from_secs(12)).await;
    for (name, before) in [("tiny-period", &seen[3]), ("odd-rsa", &seen[4])] {
        let now = env.get("bitbucketaccesskeys", name).await.unwrap();
        assert_eq!(fingerprint(&now), fingerprint(before), "{name} rotated again");
    }
    assert!(alive(&mut env), "the operator exited:\n{}", tail(&env.operator.logs(), 30));
    assert!(!env.operator.logs().contains("panicked"), "a reconcile panicked:\n{}", tail(&env.operator.logs(), 30));
}

#[tokio::test]
async fn token_lifetimes_of_zero_and_of_ages_neither_stop_the_operator_nor_make_it_mint_in_a_loop() {
    let config = SIM_CONFIG.replace(
        "oauthConsumers:\n",
        "oauthConsumers:\n  - {key: ck-zero, secret: cs-zero-secret-0123456789, scopes: [repository:admin], expiresIn: 0}\n  - {key: ck-ages, secret: cs-ages-secret-0123456789, scopes: [repository:admin], expiresIn: 1000000000000000}\n",
    );
    let mut env = Env::with("hostile-expiry", &config, &["--drift-check-interval=3s"]).await;
    env.workspace().await;
    for (name, key) in [("zero", "ck-zero"), ("ages", "ck-ages")] {
        env.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-creds}}\nstringData: {{key: {key}, secret: cs-{name}-secret-0123456789}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n  consumerSecretRef: {{name: {name}-creds}}\n"
        ))
        .await;
    }
    env.wait_ready("bitbucketoauthconsumers", "zero", READY).await;
    env.wait_ready("bitbucketoauthconsumers", "ages", READY).await;
    assert!(alive(&mut env), "the operator exited:\n{}", tail(&env.operator.logs(), 30));
    let tokens = |v: &serde_json::Value| v["byEndpoint"]["token"].as_u64().unwrap_or(0);
    let before = tokens(&env.sim.requests().await);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let minted = tokens(&env.sim.requests().await) - before;
    // A token that expires at once is renewed no sooner than every 30 s.
    assert!(minted <= 1, "{minted} tokens minted in 10 s");
    assert!(alive(&mut env), "the operator exited:\n{}", tail(&env.operator.logs(), 30));
}

#[tokio::test]
async fn a_tampered_targets_annotation_reaches_no_repository_the_spec_could_not_name() {
    let config = format!("{SIM_CONFIG}requestLogSize: 20000\n");
    let env = Env::with("hostile-targets", &config, &["--drift-check-interval=3s"]).await;
    env.apply(&workspace_yaml(&env.sim.url, "  allowedRepositories: [api, web]\n")).await;
    env.wait_ready("bitbucketworkspaces", "acme", READY).await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let before = env.sim.requests().await["total"].as_u64().unwrap();
    let mut targets: Vec<String> = [
        "repository/api",
        "repository/web",
        "repository/infra",
        "repository/../../workspaces/other",
        "repository/x%2F..%2F..",
        "project/OPS",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    targets.extend((0..1000).map(|i| format!("repository/r{i}")));
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let patch = json!({"metadata": {"annotations": {"bitbucket.credentials.dev/targets": targets.join(",")}}});
    secrets.patch("ci", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = env.sim.requests().await;
    let recent = log["recent"].as_array().cloned().unwrap_or_default();
    let paths: BTreeSet<String> = recent.iter().skip(before as usize).filter_map(|r| r["path"].as_str().map(String::from)).collect();
    let strays: Vec<&String> =
        paths.iter().filter(|p| !(p.contains("/repositories/acme/api/") || p.contains("/repositories/acme/web/"))).collect();
    assert!(strays.is_empty(), "requests outside api and web: {strays:?}");
    let spent = log["total"].as_u64().unwrap() - before;
    assert!(spent < 40, "{spent} requests after the annotation was tampered with");
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
}

/// Tenants limited to one request an hour: the one request verifies each workspace, and
/// the wake-ups that follow (its own status write, the label put on its auth Secret) spend
/// nothing, whatever the cache shows of that status yet (a second check would find the
/// budget spent and leave the workspace RateLimited for the hour; it lost that race about
/// one time in six with one workspace, so there are a dozen). Their access keys wait, and
/// say so, without holding up another tenant's.
#[tokio::test]
async fn a_tenant_limited_to_one_request_an_hour_does_not_hold_up_another() {
    const SLOW: usize = 12;
    let tokens: String = (0..SLOW)
        .map(|i| format!("  - {{email: slow{i}@acme.test, token: tok-slow{i}-0123456789, scopes: [admin:repository:bitbucket, write:ssh-key:bitbucket, delete:ssh-key:bitbucket, admin:project:bitbucket]}}\n"))
        .collect();
    let config = SIM_CONFIG.replace("apiTokens:\n", &format!("apiTokens:\n{tokens}"));
    let env = Env::with("hostile-budget", &config, &["--drift-check-interval=1h"]).await;
    for i in 0..SLOW {
        env.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: slow{i}-admin}}\nstringData: {{email: slow{i}@acme.test, token: tok-slow{i}-0123456789}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {{name: slow{i}}}\nspec:\n  workspace: acme\n  apiURL: {url}/2.0\n  siteURL: {url}\n  requestsPerHour: 1\n  auth: {{apiToken: {{secretRef: {{name: slow{i}-admin}}}}}}\n",
            url = env.sim.url
        ))
        .await;
    }
    for i in 0..SLOW {
        env.wait_ready("bitbucketworkspaces", &format!("slow{i}"), READY).await;
    }
    for i in 0..30 {
        env.apply(&format!(
            "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: slow-{i}}}\nspec:\n  workspaceRef: {{name: slow0}}\n  repositories: [api]\n"
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.workspace().await;
    env.apply(&access_key("healthy", "  repositories: [web]\n")).await;
    env.wait_ready("bitbucketaccesskeys", "healthy", Duration::from_secs(60)).await;
    // The slow tenant's objects say why they wait, and when they try again.
    let message = env.wait_reason("bitbucketaccesskeys", "slow-7", "RateLimited", READY).await;
    assert!(message.contains("retrying in"), "{message}");
    // Its workspaces are still Ready: their keys' waiting is no failure of the credentials.
    for i in 0..SLOW {
        env.wait_ready("bitbucketworkspaces", &format!("slow{i}"), Duration::from_secs(5)).await;
    }
}

/// A budget that lets two requests go at a time (20 per scaled hour of 10 s) and an
/// object with twelve repositories: each attempt keeps what it registered, so the object
/// gets Ready with one create per repository. (Attempts that forgot it paid again for
/// the repositories already done, a create and its 400 and a listing each, and under a
/// spent budget never got past them: a thousand such objects stalled on one credential.)
#[tokio::test]
async fn more_targets_than_the_budget_admits_at_once_are_registered_attempt_by_attempt() {
    let repos: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    let listed = repos.iter().map(|r| format!("{{slug: {r}}}")).collect::<Vec<_>>().join(", ");
    let config = SIM_CONFIG.replace("{slug: tools}, {slug: infra}]", &format!("{{slug: tools}}, {{slug: infra}}, {listed}]"));
    let env = Env::with("hostile-burst", &config, &["--drift-check-interval=1h", "--rate-window=10s"]).await;
    env.apply(&workspace_yaml(&env.sim.url, "  requestsPerHour: 20\n")).await;
    env.wait_ready("bitbucketworkspaces", "acme", READY).await;
    let before = env.sim.requests().await;
    env.apply(&access_key("many", &format!("  repositories: [{}]\n", repos.join(", ")))).await;
    env.wait_ready("bitbucketaccesskeys", "many", Duration::from_secs(120)).await;
    let after = env.sim.requests().await;
    let delta = |endpoint: &str| after["byEndpoint"][endpoint].as_u64().unwrap_or(0) - before["byEndpoint"][endpoint].as_u64().unwrap_or(0);
    let (creates, lists) = (delta("repo_key_create"), delta("repo_keys_list"));
    assert_eq!((creates, lists), (12, 0), "creates and listings for twelve repositories");
    let message = env.operator.logs();
    assert!(message.contains("RateLimited"), "the budget never stopped an attempt: the test proves nothing");
}

#[tokio::test]
async fn narrowing_a_workspace_s_policy_removes_the_keys_it_no_longer_allows() {
    let pc = PrivateCluster::start("hostile-revoke");
    let (team, system) = ("team-r", "bco-system-r");
    let args: Vec<String> = vec![
        format!("--watch-namespaces={team}"),
        format!("--cluster-resource-namespace={system}"),
        "--cluster-name=revoke".into(),
        "--drift-check-interval=3s".into(),
    ];
    let env = Env::on_private(&pc, "hostile-revoke", team, SIM_CONFIG, &args).await;
    create_namespace(&env.client, system, &[]).await;
    let url = env.sim.url.clone();
    let apply = |ns: &str, yaml: &str| {
        let (ok, out) = kubectl_apply(&pc.kubeconfig, ns, yaml);
        assert!(ok, "apply -n {ns}: {out}");
    };
    apply(
        system,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bb-cluster}\nstringData: {email: admin@acme.test, token: tok-admin-0123456789}\n",
    );
    let cluster_ws = |names: &str| {
        format!(
            "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: ClusterBitbucketWorkspace\nmetadata: {{name: shared}}\nspec:\n  workspace: acme\n  apiURL: {url}/2.0\n  siteURL: {url}\n  auth: {{apiToken: {{secretRef: {{name: bb-cluster}}}}}}\n  allowedNamespaces: {{names: [{names}]}}\n"
        )
    };
    apply(team, &cluster_ws(team));
    apply(
        team,
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: via-cluster}\nspec:\n  workspaceRef: {kind: ClusterBitbucketWorkspace, name: shared}\n  repositories: [web]\n",
    );
    apply(team, &workspace_yaml(&url, "  allowedRepositories: [api, infra]\n"));
    apply(team, &access_key("two-repos", "  repositories: [api, infra]\n"));
    let via_cluster = env.wait_ready("bitbucketaccesskeys", "via-cluster", READY).await;
    let two_repos = env.wait_ready("bitbucketaccesskeys", "two-repos", READY).await;
    assert_eq!(keys_of(&env, &uid(&via_cluster)).await, 1);
    assert_eq!(keys_of(&env, &uid(&two_repos)).await, 2);

    // The cluster workspace stops admitting the namespace: its key goes from Bitbucket.
    apply(team, &cluster_ws(""));
    env.wait_reason("bitbucketaccesskeys", "via-cluster", "WorkspaceNotAllowed", READY).await;
    let u = uid(&via_cluster);
    eventually("the key of a namespace no longer admitted is removed", READY, || async { (keys_of(&env, &u).await == 0).then_some(()) })
        .await;
    // The namespaced workspace stops allowing one repository: only that key goes.
    apply(team, &workspace_yaml(&url, "  allowedRepositories: [api]\n"));
    env.wait_reason("bitbucketaccesskeys", "two-repos", "RepositoryNotAllowed", READY).await;
    let u2 = uid(&two_repos);
    let left = eventually("the key on the repository no longer allowed is removed", READY, || async {
        let keys = env.sim.keys().await;
        let ours: Vec<_> = keys
            .iter()
            .filter(|k| crate::support::marked_uid(k["comment"].as_str().unwrap_or_default()) == Some(u2.clone()))
            .cloned()
            .collect();
        (ours.len() == 1).then_some(ours)
    })
    .await;
    let on = left[0]["target"]["repository"].as_str().unwrap_or_default().to_string();
    assert!(on.ends_with("/api"), "the key left is on {on}, not api: {left:?}");
    let events = eventually("a Revoked event", READY, || async {
        let out = kubectl(&pc.kubeconfig, &["get", "events.events.k8s.io", "-n", team, "-o", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("\"Revoked\"").then_some(text)
    })
    .await;
    assert!(events.contains("web"), "the Revoked event does not name the repository: {events}");
    // An object whose access was withdrawn can still be deleted.
    env.api("bitbucketaccesskeys").delete("via-cluster", &DeleteParams::default()).await.unwrap();
    eventually("a key object whose namespace is no longer admitted can be deleted", READY, || async {
        env.get("bitbucketaccesskeys", "via-cluster").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_namespace_deleted_while_the_operator_is_stopped_goes_and_leaves_no_key() {
    let mut env = Env::new("hostile-nsdel").await;
    env.workspace().await;
    let mut uids = Vec::new();
    for i in 0..20 {
        let repo = ["api", "web", "tools", "infra"][i % 4];
        env.apply(&access_key(&format!("ci-{i}"), &format!("  repositories: [{repo}]\n"))).await;
    }
    for i in 0..20 {
        uids.push(uid(&env.wait_ready("bitbucketaccesskeys", &format!("ci-{i}"), Duration::from_secs(120)).await));
    }
    let mut registered = 0;
    for u in &uids {
        registered += keys_of(&env, u).await;
    }
    assert_eq!(registered, 20);
    env.operator.kill();
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&env.ns, &DeleteParams::default()).await.unwrap();
    // Let the namespace controller delete what it can while nobody looks after the keys.
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.operator.restart();
    let ns = env.ns.clone();
    eventually("the namespace is gone", Duration::from_secs(120), || async {
        namespaces.get_opt(&ns).await.unwrap().is_none().then_some(())
    })
    .await;
    let mut left = 0;
    for u in &uids {
        left += keys_of(&env, u).await;
    }
    assert_eq!(left, 0, "keys left in Bitbucket after the namespace went");
}

/// A workspace whose `secretRef` moved on leaves its former Secret protected by nothing:
/// deleting the namespace must not wait for a finalizer that no one will remove.
#[tokio::test]
async fn a_workspace_that_changed_its_secret_does_not_hold_up_its_namespace() {
    let env = Env::new("hostile-secretswap").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    let u = uid(&env.wait_ready("bitbucketaccesskeys", "ci", Duration::from_secs(60)).await);
    assert_eq!(keys_of(&env, &u).await, 1);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let in_use = |s: &Secret| s.metadata.finalizers.iter().flatten().any(|f| f == "bitbucket.credentials.dev/in-use");
    assert!(in_use(&secrets.get("bb-admin").await.unwrap()), "the auth Secret in use is protected");
    env.apply(&workspace_yaml(&env.sim.url, "").replace("bb-admin", "bb-admin-2")).await;
    eventually("the workspace reads its new Secret", Duration::from_secs(60), || async {
        let w = env.get("bitbucketworkspaces", "acme").await?;
        (w.data["spec"]["auth"]["apiToken"]["secretRef"]["name"] == "bb-admin-2"
            && env.ready("bitbucketworkspaces", "acme").await?.0 == "True")
            .then_some(())
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&env.ns, &DeleteParams::default()).await.unwrap();
    let ns = env.ns.clone();
    eventually("the namespace is gone", Duration::from_secs(120), || async {
        namespaces.get_opt(&ns).await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(keys_of(&env, &u).await, 0, "the key is removed from Bitbucket");
}
