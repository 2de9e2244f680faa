//! BitbucketAccessKey against the real control plane and `bitbucket-sim`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::{Env, condition_of, eventually, set_faults};

const READY: Duration = Duration::from_secs(60);

pub(crate) fn access_key(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n{spec}"
    )
}

pub(crate) fn target_name(k: &Value) -> String {
    let t = &k["target"];
    t["repository"].as_str().or(t["project"].as_str()).unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string()
}

/// The simulator's keys with this fingerprint, as the set of their target names.
async fn targets_of(env: &Env, fingerprint: &str) -> BTreeSet<String> {
    env.sim.keys().await.iter().filter(|k| k["fingerprint"] == fingerprint).map(target_name).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn data(secret: &Secret, key: &str) -> Vec<u8> {
    secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone()).unwrap_or_default()
}

/// What the real `ssh-keygen` says of a private key: (public key body, fingerprint).
fn ssh_keygen(env: &Env, private: &[u8]) -> (String, String) {
    let path = env.dir.join(format!("id-{}", rand_name()));
    std::fs::write(&path, private).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&path, perms).unwrap();
    let public = Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path).output().unwrap();
    assert!(public.status.success(), "ssh-keygen -y failed: {}", String::from_utf8_lossy(&public.stderr));
    let fp = Command::new("ssh-keygen").arg("-l").arg("-E").arg("sha256").arg("-f").arg(&path).output().unwrap();
    std::fs::remove_file(&path).unwrap();
    let body: Vec<&str> = std::str::from_utf8(&public.stdout).unwrap().split_whitespace().take(2).collect();
    let fp = String::from_utf8_lossy(&fp.stdout).split_whitespace().nth(1).unwrap_or_default().to_string();
    (body.join(" "), fp)
}

fn rand_name() -> String {
    format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

pub(crate) fn status_str(o: &kube::api::DynamicObject, field: &str) -> String {
    o.data["status"][field].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_key_is_registered_on_every_target_and_its_private_half_lands_in_the_secret() {
    let env = Env::new("register").await;
    env.workspace().await;
    env.apply(&access_key(
        "ci",
        "  repositories: [api, web]\n  projects: [CORE]\n  secret:\n    formats: [ssh-auth, flux, tekton, jenkins, argocd]\n    labels: {team: platform}\n    annotations: {note: hello}\n",
    ))
    .await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let fp = status_str(&o, "fingerprint");
    assert!(fp.starts_with("SHA256:"), "{fp}");
    assert_eq!(targets_of(&env, &fp).await, set(&["api", "web", "CORE"]));
    assert_eq!(o.data["status"]["registrations"].as_array().unwrap().len(), 3);
    assert_eq!(env.sim.keys().await.len(), 3, "exactly one key per target");

    let secret = env.secret("ci").await.expect("Secret ci");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/ssh-auth"));
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "BitbucketAccessKey");
    assert_eq!(Some(owner.uid.clone()), o.metadata.uid);
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels["team"], "platform");
    assert_eq!(labels["jenkins.io/credentials-type"], "basicSSHUserPrivateKey");
    assert_eq!(labels["argocd.argoproj.io/secret-type"], "repo-creds");
    let annotations = secret.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["tekton.dev/git-0"], "git.acme.test");
    assert_eq!(annotations["note"], "hello");
    for key in ["ssh-privatekey", "ssh-publickey", "known_hosts", "identity", "identity.pub", "privateKey", "sshPrivateKey"] {
        assert!(!data(&secret, key).is_empty(), "Secret lacks {key}");
    }
    assert_eq!(data(&secret, "username"), b"git");
    assert_eq!(data(&secret, "url"), b"git@git.acme.test:acme/");
    assert_eq!(data(&secret, "type"), b"git");
    assert!(String::from_utf8(data(&secret, "known_hosts")).unwrap().starts_with("git.acme.test ssh-ed25519 "));
    assert!(!secret.data.as_ref().unwrap().contains_key("rotation-pending-privatekey"));

    // The real OpenSSH tools agree with the status and with what Bitbucket holds.
    let (public, ssh_fp) = ssh_keygen(&env, &data(&secret, "ssh-privatekey"));
    assert_eq!(ssh_fp, fp, "ssh-keygen -l fingerprint equals status.fingerprint");
    let registered: Vec<String> = env.sim.keys().await.iter().map(|k| k["key"].as_str().unwrap().to_string()).collect();
    assert!(registered.iter().all(|k| *k == public), "ssh-keygen -y prints exactly the registered key");
    assert!(status_str(&o, "publicKey").starts_with(&public));
    // One word names cluster, namespace/name and UID, in the comment and as the label.
    let mark = format!("bitbucket-credentials-operator:{}:test:{}/ci", o.metadata.uid.clone().unwrap(), env.ns);
    for k in env.sim.keys().await {
        assert_eq!(k["comment"].as_str().unwrap(), mark);
        assert_eq!(k["label"].as_str().unwrap(), mark);
    }
    env.assert_no_secret_leaked(&[String::from_utf8(data(&secret, "ssh-privatekey")).unwrap()]).await;
}

#[tokio::test]
async fn rsa_and_ecdsa_keys_match_ssh_keygen() {
    let env = Env::new("keytypes").await;
    env.workspace().await;
    env.apply(&access_key("rsa", "  repositories: [api]\n  keyType: rsa\n  rsaBits: 3072\n")).await;
    env.apply(&access_key("ec", "  repositories: [api]\n  keyType: ecdsa\n  ecdsaCurve: p384\n")).await;
    for name in ["rsa", "ec"] {
        let o = env.wait_ready("bitbucketaccesskeys", name, Duration::from_secs(120)).await;
        let secret = env.secret(name).await.unwrap();
        let (public, fp) = ssh_keygen(&env, &data(&secret, "ssh-privatekey"));
        assert_eq!(fp, status_str(&o, "fingerprint"));
        let expected = if name == "rsa" { "ssh-rsa " } else { "ecdsa-sha2-nistp384 " };
        assert!(public.starts_with(expected), "{public}");
    }
}

async fn rotate(env: &Env, name: &str, value: &str) {
    env.api("bitbucketaccesskeys")
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"bitbucket.credentials.dev/rotate": value}}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn rotation_keeps_the_old_key_until_the_grace_period_ends() {
    let env = Env::new("rotation").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api]\n  projects: [CORE]\n  rotation: {period: 1h, gracePeriod: 8s}\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let old = status_str(&o, "fingerprint");
    rotate(&env, "ci", "1").await;
    let new = eventually("a new fingerprint", READY, || async {
        let o = env.get("bitbucketaccesskeys", "ci").await?;
        let fp = status_str(&o, "fingerprint");
        (fp != old && !fp.is_empty()).then_some(fp)
    })
    .await;
    // Switched: the Secret holds the new key, both keys are registered.
    let secret = env.secret("ci").await.unwrap();
    assert_eq!(ssh_keygen(&env, &data(&secret, "ssh-privatekey")).1, new);
    assert_eq!(targets_of(&env, &new).await, set(&["api", "CORE"]));
    assert_eq!(targets_of(&env, &old).await, set(&["api", "CORE"]), "old key stays during the grace period");
    let o = env.get("bitbucketaccesskeys", "ci").await.unwrap();
    assert_eq!(o.data["status"]["retiringKeys"][0]["fingerprint"], old.as_str());
    // After the grace period only the new key remains.
    eventually("the old key is removed", Duration::from_secs(40), || async { targets_of(&env, &old).await.is_empty().then_some(()) }).await;
    assert_eq!(targets_of(&env, &new).await, set(&["api", "CORE"]));
    assert_eq!(env.sim.keys().await.len(), 2);
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    assert!(o.data["status"]["retiringKeys"].as_array().is_none_or(|a| a.is_empty()));
}

#[tokio::test]
async fn deleting_the_secret_restores_a_working_key() {
    let env = Env::new("secret-deleted").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api]\n  rotation: {gracePeriod: 2s}\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let old = status_str(&o, "fingerprint");
    Api::<Secret>::namespaced(env.client.clone(), &env.ns).delete("ci", &DeleteParams::default()).await.unwrap();
    let secret = eventually("the Secret is back", READY, || async { env.secret("ci").await }).await;
    let (_, fp) = ssh_keygen(&env, &data(&secret, "ssh-privatekey"));
    eventually("the restored key is registered", READY, || async { (targets_of(&env, &fp).await == set(&["api"])).then_some(()) }).await;
    eventually("the lost key is removed", Duration::from_secs(30), || async { targets_of(&env, &old).await.is_empty().then_some(()) })
        .await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    assert_eq!(status_str(&o, "fingerprint"), fp);
}

#[tokio::test]
async fn a_secret_edited_by_hand_is_restored() {
    let env = Env::new("secret-edited").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let fp = status_str(&o, "fingerprint");
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    secrets.patch("ci", &PatchParams::default(), &Patch::Merge(json!({"data": {"known_hosts": "ZXZpbAo="}}))).await.unwrap();
    eventually("known_hosts restored", READY, || async {
        let s = env.secret("ci").await?;
        String::from_utf8(data(&s, "known_hosts")).ok()?.starts_with("git.acme.test").then_some(())
    })
    .await;
    let s = env.secret("ci").await.unwrap();
    assert_eq!(ssh_keygen(&env, &data(&s, "ssh-privatekey")).1, fp, "the same key, not a new one");
}

#[tokio::test]
async fn removing_a_repository_from_the_spec_removes_its_key_and_adding_one_registers_it() {
    let env = Env::new("targets").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api, web]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let fp = status_str(&o, "fingerprint");
    env.apply(&access_key("ci", "  repositories: [api, tools]\n  projects: [OPS]\n")).await;
    eventually("targets follow the spec", READY, || async { (targets_of(&env, &fp).await == set(&["api", "tools", "OPS"])).then_some(()) })
        .await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    assert_eq!(env.sim.keys().await.len(), 3);
}

#[tokio::test]
async fn deleting_the_object_leaves_no_key_in_bitbucket_unless_retained() {
    let env = Env::new("deletion").await;
    env.workspace().await;
    env.apply(&access_key("gone", "  repositories: [api, web]\n  projects: [CORE]\n")).await;
    env.apply(&access_key("kept", "  repositories: [api]\n  deletionPolicy: Retain\n")).await;
    env.wait_ready("bitbucketaccesskeys", "gone", READY).await;
    let kept = env.wait_ready("bitbucketaccesskeys", "kept", READY).await;
    let kept_fp = status_str(&kept, "fingerprint");
    assert_eq!(env.sim.keys().await.len(), 4);
    for name in ["gone", "kept"] {
        env.api("bitbucketaccesskeys").delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("both objects are gone", READY, || async {
        (env.get("bitbucketaccesskeys", "gone").await.is_none() && env.get("bitbucketaccesskeys", "kept").await.is_none()).then_some(())
    })
    .await;
    let keys = env.sim.keys().await;
    assert_eq!(keys.len(), 1, "only the retained key is left: {keys:?}");
    assert_eq!(keys[0]["fingerprint"], kept_fp.as_str());
}

#[tokio::test]
async fn a_foreign_secret_with_the_same_name_is_never_touched() {
    let env = Env::new("conflict").await;
    env.workspace().await;
    env.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: taken}\nstringData: {mine: precious}\n").await;
    let before = env.secret("taken").await.unwrap();
    env.apply(&access_key("ci", "  repositories: [api]\n  secret: {name: taken}\n")).await;
    let message = env.wait_reason("bitbucketaccesskeys", "ci", "SecretConflict", READY).await;
    assert!(message.contains("not owned by this object"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env.secret("taken").await.unwrap();
    assert_eq!(before.data, after.data);
    assert_eq!(before.metadata.resource_version, after.metadata.resource_version, "never written");
    assert!(env.sim.keys().await.is_empty(), "nothing registered for a key that has nowhere to go");
}

#[tokio::test]
async fn a_key_deleted_in_bitbucket_is_registered_again() {
    let env = Env::new("drift").await;
    env.workspace_checked_often().await;
    env.apply(&access_key("ci", "  repositories: [api, web]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let fp = status_str(&o, "fingerprint");
    let victim = env.sim.keys().await.into_iter().find(|k| target_name(k) == "web").unwrap();
    env.sim.delete_key(victim["id"].as_i64().unwrap()).await;
    eventually("the key is back on web", READY, || async { (targets_of(&env, &fp).await == set(&["api", "web"])).then_some(()) }).await;
}

#[tokio::test]
async fn refusals_name_their_cause_and_back_off() {
    let env = Env::new("refusals").await;
    env.workspace().await;
    env.apply(&access_key("missing-repo", "  repositories: [does-not-exist]\n")).await;
    env.apply(&access_key("missing-project", "  projects: [NOPE]\n")).await;
    env.apply(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: no-ws}\nspec:\n  workspaceRef: {name: nowhere}\n  repositories: [api]\n",
    )
    .await;
    let m = env.wait_reason("bitbucketaccesskeys", "missing-repo", "RepositoryNotFound", READY).await;
    assert!(m.contains("acme/does-not-exist"), "{m}");
    let m = env.wait_reason("bitbucketaccesskeys", "missing-project", "ProjectNotFound", READY).await;
    assert!(m.contains("NOPE"), "{m}");
    let m = env.wait_reason("bitbucketaccesskeys", "no-ws", "WorkspaceNotFound", READY).await;
    assert!(m.contains("nowhere"), "{m}");
    // A permanent error is retried slowly, not in a loop.
    let before = env.sim.total_requests().await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let made = env.sim.total_requests().await - before;
    assert!(made <= 6, "{made} Bitbucket requests in 20 s for two permanently failing objects");
    // The orphaned key of the missing repository never stays behind.
    assert!(env.sim.keys().await.is_empty());
}

#[tokio::test]
async fn a_repository_outside_allowed_repositories_is_refused() {
    let env = Env::new("not-allowed").await;
    env.workspace().await;
    env.api("bitbucketworkspaces")
        .patch("acme", &PatchParams::default(), &Patch::Merge(json!({"spec": {"allowedRepositories": ["api", "CORE"]}})))
        .await
        .unwrap();
    env.apply(&access_key("ci", "  repositories: [api, web]\n")).await;
    let m = env.wait_reason("bitbucketaccesskeys", "ci", "RepositoryNotAllowed", READY).await;
    assert!(m.contains("web"), "{m}");
    assert!(env.sim.keys().await.is_empty());
}

#[tokio::test]
async fn credentials_without_write_scope_are_reported_as_forbidden() {
    let env = Env::new("forbidden").await;
    env.workspace().await;
    env.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bb-admin}\nstringData: {email: reader@acme.test, token: tok-reader-0123456789}\n",
    )
    .await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    let m = env.wait_reason("bitbucketaccesskeys", "ci", "Forbidden", READY).await;
    assert!(m.contains("api"), "{m}");
    env.assert_no_secret_leaked(&[]).await;
}

/// An edit of the auth Secret reaches its workspace at once (the Secret's watch wakes it;
/// a Ready workspace would otherwise check again only after ten minutes), and access keys
/// reconciled afterwards use the new credential, not the one parsed before.
#[tokio::test]
async fn an_edited_auth_secret_is_checked_at_once_and_used_from_then_on() {
    let env = Env::new("auth-edited").await;
    env.workspace().await;
    let label = "bitbucket.credentials.dev/workspace-auth-secret";
    eventually("the auth Secret labelled", READY, || async {
        env.secret("bb-admin").await?.metadata.labels?.contains_key(label).then_some(())
    })
    .await;
    env.apply(&access_key("first", "  repositories: [api]\n")).await;
    env.wait_ready("bitbucketaccesskeys", "first", READY).await;
    let auth = |email: &str, token: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: bb-admin}}\nstringData: {{email: {email}, token: {token}}}\n")
    };
    env.apply(&auth("admin@acme.test", "tok-revoked-0123456789")).await;
    let soon = Duration::from_secs(20);
    let m = env.wait_reason("bitbucketworkspaces", "acme", "Unauthorized", soon).await;
    assert!(!m.contains("tok-revoked"), "{m}");
    env.apply(&auth("reader@acme.test", "tok-reader-0123456789")).await;
    env.wait_ready("bitbucketworkspaces", "acme", soon).await;
    env.apply(&access_key("second", "  repositories: [web]\n")).await;
    let m = env.wait_reason("bitbucketaccesskeys", "second", "Forbidden", READY).await;
    assert!(m.contains("web"), "{m}");
    env.assert_no_secret_leaked(&["tok-revoked-0123456789".into()]).await;
}

/// Stops the operator at each crash point between two steps, restarts it, and checks
/// that it converges with exactly one key per target, no orphan and a usable Secret.
#[tokio::test]
async fn a_crash_between_any_two_steps_loses_nothing_and_orphans_nothing() {
    let points = [
        ("first-key-persisted", false),
        ("current-key-registered", false),
        ("status-recorded", false),
        ("next-key-persisted", true),
        ("next-key-registered", true),
        ("secret-switched", true),
    ];
    for (point, rotation) in points {
        let mut env = Env::new(&format!("crash-{point}")).await;
        env.workspace().await;
        let spec = access_key("ci", "  repositories: [api, web]\n  projects: [CORE]\n  rotation: {gracePeriod: 3s}\n");
        if rotation {
            env.apply(&spec).await;
            env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
        }
        // Restart with the crash point armed: the process aborts there.
        env.operator.kill();
        env.operator.restart_with(&[("BCO_FAILPOINT", point)]);
        if rotation {
            rotate(&env, "ci", point).await;
        } else {
            env.apply(&spec).await;
        }
        assert!(env.operator.wait_exit(READY), "operator never reached {point}");
        env.operator.restart();
        let o = eventually("Ready after the crash", Duration::from_secs(60), || async {
            let o = env.get("bitbucketaccesskeys", "ci").await?;
            let ready = o.data["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
            let retiring = o.data["status"]["retiringKeys"].as_array().is_some_and(|a| !a.is_empty());
            (ready && !retiring && env.sim.keys().await.len() == 3).then_some(o)
        })
        .await;
        let fp = status_str(&o, "fingerprint");
        let secret = env.secret("ci").await.unwrap();
        assert_eq!(ssh_keygen(&env, &data(&secret, "ssh-privatekey")).1, fp, "{point}: Secret holds the registered key");
        assert_eq!(targets_of(&env, &fp).await, set(&["api", "web", "CORE"]), "{point}");
        assert_eq!(env.sim.keys().await.len(), 3, "{point}: no orphan, no duplicate");
        eprintln!("crash at {point}: converged");
    }
}

/// At the operator's defaults (drift checks from 20 % of a 900 requests/hour budget, at
/// most every 2 min), a small install gets a key deleted in Bitbucket back within minutes,
/// and its drift checks stay within their share.
#[tokio::test]
async fn a_key_deleted_in_bitbucket_is_restored_within_five_minutes_at_default_settings() {
    let env = Env::with("drift-default", crate::support::SIM_CONFIG, &[]).await;
    env.workspace().await;
    let repos = ["api", "web", "tools", "infra"];
    let names: Vec<String> = (0..20).map(|i| format!("ci-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        env.apply(&access_key(n, &format!("  repositories: [{}]\n", repos[i % repos.len()]))).await;
    }
    let mut victim = None;
    for n in &names {
        let o = env.wait_ready("bitbucketaccesskeys", n, READY).await;
        if n == "ci-6" {
            victim = Some((status_str(&o, "fingerprint"), o.data["status"]["registrations"][0]["id"].as_i64().unwrap()));
        }
    }
    let (fp, id) = victim.unwrap();
    let lists = |v: &Value| v["byEndpoint"]["repo_keys_list"].as_u64().unwrap_or(0);
    let before = lists(&env.sim.requests().await);
    env.sim.delete_key(id).await;
    let started = std::time::Instant::now();
    eventually("the deleted key is registered again", Duration::from_secs(300), || async {
        (targets_of(&env, &fp).await == set(&["tools"])).then_some(())
    })
    .await;
    let restored = started.elapsed();
    let listed = lists(&env.sim.requests().await) - before;
    // 20 % of 900 an hour is 3 listings a minute.
    let allowed = (restored.as_secs_f64() / 60.0 * 3.0).ceil() as u64 + 2;
    assert!(listed <= allowed, "{listed} listings in {restored:?}: more than the drift share ({allowed})");
    assert_eq!(env.sim.keys().await.len(), 20, "every key there, once");
    eprintln!("restored after {restored:?} with {listed} listings of the 4 repositories");
}

/// Drift checks of objects on the same repository read its keys once between them, not
/// once each, and still find every key.
#[tokio::test]
async fn drift_checks_on_one_repository_share_its_listing() {
    let env = Env::with("shared-listing", crate::support::SIM_CONFIG, &["--drift-check-interval=20s"]).await;
    env.workspace().await;
    let names: Vec<String> = (0..12).map(|i| format!("ci-{i}")).collect();
    for n in &names {
        env.apply(&access_key(n, "  repositories: [api]\n")).await;
    }
    let mut verified_at = std::collections::BTreeMap::new();
    for n in &names {
        let o = env.wait_ready("bitbucketaccesskeys", n, READY).await;
        verified_at.insert(n.clone(), status_str(&o, "lastVerifiedTime"));
    }
    let lists = |v: &Value| v["byEndpoint"]["repo_keys_list"].as_u64().unwrap_or(0);
    let before = lists(&env.sim.requests().await);
    // Each object's first drift check comes on its repository's slot 10-30 s after it was
    // verified (plus a spread of 1 s).
    tokio::time::sleep(Duration::from_secs(50)).await;
    let listed = lists(&env.sim.requests().await) - before;
    let mut checked = 0;
    for n in &names {
        let o = env.get("bitbucketaccesskeys", n).await.unwrap();
        if status_str(&o, "lastVerifiedTime") != verified_at[n] {
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} of 12 objects had a drift check");
    assert!(listed < checked as u64, "{checked} drift checks listed the repository {listed} times");
    assert_eq!(env.sim.keys().await.len(), 12, "every key is still there, once");
    eprintln!("{checked} drift checks, {listed} listings of the repository");
}

/// A label or annotation removed from `spec.secret` goes from the Secret too; one that
/// somebody else put on the Secret stays.
#[tokio::test]
async fn a_label_removed_from_the_spec_goes_from_the_secret() {
    let env = Env::new("label-removed").await;
    env.workspace().await;
    env.apply(&access_key(
        "ci",
        "  repositories: [api]\n  secret:\n    labels: {team: platform, tier: ci}\n    annotations: {note: hello}\n",
    ))
    .await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    secrets.patch("ci", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"theirs": "kept"}}}))).await.unwrap();
    env.apply(&access_key("ci", "  repositories: [api]\n  secret:\n    labels: {team: platform}\n")).await;
    let labels = eventually("tier and note are gone from the Secret", READY, || async {
        let s = env.secret("ci").await?;
        let labels = s.metadata.labels.clone().unwrap_or_default();
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        (!labels.contains_key("tier") && !annotations.contains_key("note")).then_some(labels)
    })
    .await;
    assert_eq!(labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(labels.get("theirs").map(String::as_str), Some("kept"), "a label the operator did not set stays");
}

/// Bitbucket failing while the Secret's key works: Ready stays True (consumers can rely on
/// the Secret) and `Degraded` says why; the next success removes it. A spec change that
/// cannot be carried out meanwhile is Ready=False.
#[tokio::test]
async fn bitbucket_failing_leaves_a_working_key_ready_and_says_degraded() {
    let env = Env::new("ak-degraded").await;
    env.workspace().await;
    let key = |repos: &str| {
        format!(
            "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: ci}}\nspec:\n  workspaceRef: {{name: acme}}\n  repositories: [{repos}]\n"
        )
    };
    let condition = |type_: &'static str| {
        let env = &env;
        async move {
            let o = env.get("bitbucketaccesskeys", "ci").await?;
            condition_of(&o, type_).cloned()
        }
    };
    env.apply(&key("api")).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;

    // Every request fails with a 5xx: the next drift check (every 3 s here) cannot list.
    set_faults(&env.sim, json!({"errorRate": 1.0})).await;
    let degraded = eventually("Degraded=True", READY, || async { condition("Degraded").await.filter(|c| c["status"] == "True") }).await;
    assert_eq!(degraded["reason"], "BitbucketUnavailable", "{degraded}");
    let ready = condition("Ready").await.unwrap();
    assert_eq!(ready["status"], "True", "a working key stays Ready while Bitbucket fails: {ready}");

    // A new repository cannot be registered: the Secret does not do what the spec says.
    env.apply(&key("api, web")).await;
    let ready =
        eventually("Ready=False for the new generation", READY, || async { condition("Ready").await.filter(|c| c["status"] == "False") })
            .await;
    assert_eq!(ready["reason"], "BitbucketUnavailable", "{ready}");
    assert!(condition("Degraded").await.is_none(), "Ready=False says it all: no Degraded beside it");

    set_faults(&env.sim, json!({})).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    assert!(condition("Degraded").await.is_none(), "a success removes Degraded");
}

/// The workspace's own re-check meets a Bitbucket that fails (5xx): credentials that were
/// verified are still good, so the workspace and the keys that use it stay Ready and say
/// Degraded, instead of every key of the workspace turning Ready=False.
#[tokio::test]
async fn bitbucket_failing_at_the_workspace_re_check_leaves_it_and_its_keys_ready() {
    let mut env = Env::new("ws-degraded").await;
    env.workspace_checked_often().await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    // A restart re-checks the workspace's credentials at once, while every request fails.
    set_faults(&env.sim, json!({"errorRate": 1.0})).await;
    env.operator.kill();
    env.operator.restart();
    let condition = |plural: &'static str, name: &'static str, type_: &'static str| {
        let env = &env;
        async move { condition_of(&env.get(plural, name).await?, type_).cloned() }
    };
    let degraded = eventually("the workspace says Degraded", READY, || async {
        condition("bitbucketworkspaces", "acme", "Degraded").await.filter(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(degraded["reason"], "BitbucketUnavailable", "{degraded}");
    let ready = condition("bitbucketworkspaces", "acme", "Ready").await.unwrap();
    assert_eq!(ready["status"], "True", "verified credentials stay Ready while Bitbucket fails: {ready}");
    eventually("the key says Degraded", READY, || async {
        condition("bitbucketaccesskeys", "ci", "Degraded").await.filter(|c| c["status"] == "True")
    })
    .await;
    let ready = condition("bitbucketaccesskeys", "ci", "Ready").await.unwrap();
    assert_eq!(ready["status"], "True", "the key in the Secret still works: {ready}");

    set_faults(&env.sim, json!({})).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    // The workspace retries with the backoff of a transient failure (2 s doubling): after
    // the few failures above the next try is at most about a minute away.
    eventually("the workspace's Degraded goes", 2 * READY, || async {
        condition("bitbucketworkspaces", "acme", "Degraded").await.is_none().then_some(())
    })
    .await;
}

/// The field managers that own `metadata.finalizers` of an object, with their operation.
fn finalizer_owners(o: &kube::api::DynamicObject) -> Vec<String> {
    let entries = o.metadata.managed_fields.iter().flatten();
    entries
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0["f:metadata"].get("f:finalizers").is_some()))
        .map(|m| format!("{}/{}", m.manager.clone().unwrap_or_default(), m.operation.clone().unwrap_or_default()))
        .collect()
}

fn finalizers(o: &kube::api::DynamicObject) -> Vec<String> {
    o.metadata.finalizers.clone().unwrap_or_default()
}

/// What the API server makes of a new access key, without keeping it (a dry run passes
/// through admission).
async fn admitted(env: &Env, name: &str) -> kube::api::DynamicObject {
    let yaml = access_key(name, "  repositories: [api]\n");
    let value: Value = serde_saphyr::from_str(&yaml).unwrap();
    let params = PatchParams::apply("e2e-test").force().dry_run();
    env.api("bitbucketaccesskeys").patch(name, &params, &Patch::Apply(value)).await.unwrap()
}

#[tokio::test]
async fn the_api_server_puts_the_cleanup_finalizer_on_new_keys_and_the_operator_adds_none() {
    let env = Env::new("finalizer-policy").await;
    env.workspace().await;
    // The chart's policy is bound to this namespace (support::apply_finalizer_policy); the
    // API server loads it within moments.
    eventually("the finalizer policy applies", READY, || async {
        finalizers(&admitted(&env, "probe").await).contains(&"bitbucket.credentials.dev/cleanup".to_string()).then_some(())
    })
    .await;
    env.apply(&access_key("ci", "  repositories: [api, web]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    assert_eq!(finalizers(&o), ["bitbucket.credentials.dev/cleanup"]);
    // Set at creation by admission, never by the operator's own patch.
    assert!(!finalizer_owners(&o).iter().any(|m| m.starts_with("bitbucket-credentials-operator")), "{:?}", finalizer_owners(&o));
    // Applying the same manifest again (an UPDATE without finalizers) keeps it.
    env.apply(&access_key("ci", "  repositories: [api, web]\n")).await;
    let again = env.get("bitbucketaccesskeys", "ci").await.unwrap();
    assert_eq!(finalizers(&again), ["bitbucket.credentials.dev/cleanup"], "a re-apply by the same manager kept the finalizer");
    assert_eq!(env.sim.keys().await.len(), 2);
    // And the finalizer does its work: deletion removes the keys, then the object goes.
    env.api("bitbucketaccesskeys").delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the object is gone", READY, || async { env.get("bitbucketaccesskeys", "ci").await.is_none().then_some(()) }).await;
    assert!(env.sim.keys().await.is_empty(), "no key is left behind");
}

#[tokio::test]
async fn without_the_finalizer_policy_the_operator_adds_the_finalizer_itself() {
    let env = Env::new("finalizer-no-policy").await;
    let binding = crate::support::finalizer_policy_binding(&env.ns);
    let out = crate::support::kubectl(&crate::support::cluster().kubeconfig, &["delete", "mutatingadmissionpolicybinding", &binding]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.workspace().await;
    eventually("the finalizer policy no longer applies", READY, || async {
        finalizers(&admitted(&env, "probe").await).is_empty().then_some(())
    })
    .await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    assert_eq!(finalizers(&o), ["bitbucket.credentials.dev/cleanup"]);
    // Added by the operator's patch (an Update), not by the apply that created it.
    let owners = finalizer_owners(&o);
    assert!(owners.iter().all(|m| !m.starts_with("e2e-test")) && owners.iter().any(|m| m.ends_with("/Update")), "{owners:?}");
    env.api("bitbucketaccesskeys").delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the object is gone", READY, || async { env.get("bitbucketaccesskeys", "ci").await.is_none().then_some(()) }).await;
    assert!(env.sim.keys().await.is_empty(), "no key is left behind");
}
