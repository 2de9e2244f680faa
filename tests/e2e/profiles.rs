//! The access-key lifecycle (create, drift, rotate, crash recovery, delete) and the OAuth
//! lifecycle, once per simulator profile: "as documented" (the simulator's defaults: what
//! swagger.json and Atlassian's docs say) and "real-world variants" (every answer
//! FACTS.md records the real service giving instead, all at once).

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::access_key::{access_key, target_name};
use crate::support::{Env, SIM_CONFIG, eventually, ssh_keygen_fingerprint};

const READY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Profile {
    Documented,
    RealWorld,
}

impl Profile {
    fn sim_config(self) -> String {
        match self {
            Profile::Documented => SIM_CONFIG.to_string(),
            Profile::RealWorld => format!(
                "{SIM_CONFIG}deployKeyVariants: {{duplicateMessage: generic, comments: dropped, bareNotFound: true}}\nerrorVariants: {{detailAsObject: true, scopeErrors: real, oauthClientError: unauthorized_client}}\n"
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Documented => "documented",
            Profile::RealWorld => "real-world",
        }
    }
}

/// The simulator's keys as (target, fingerprint).
async fn keys(env: &Env) -> BTreeSet<(String, String)> {
    env.sim.keys().await.iter().map(|k| (target_name(k), k["fingerprint"].as_str().unwrap_or_default().to_string())).collect()
}

fn both(fp: &str) -> BTreeSet<(String, String)> {
    ["api", "web"].iter().map(|t| (t.to_string(), fp.to_string())).collect()
}

async fn rotate(env: &Env, name: &str, request: &str) {
    env.api("bitbucketaccesskeys")
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"bitbucket.credentials.dev/rotate": request}}})),
        )
        .await
        .unwrap();
}

/// Ready with `request` handled, no retiring key left: its fingerprint.
async fn rotated(env: &Env, name: &str, request: &str) -> String {
    eventually(&format!("rotation {request} done"), READY, || async {
        let o = env.get("bitbucketaccesskeys", name).await?;
        let st = &o.data["status"];
        let ready = st["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        let retiring = st["retiringKeys"].as_array().is_some_and(|a| !a.is_empty());
        (ready && !retiring && st["rotateRequest"] == request).then(|| st["fingerprint"].as_str().unwrap_or_default().to_string())
    })
    .await
}

async fn access_key_lifecycle(profile: Profile) {
    let mut env = Env::with(&format!("life-key-{}", profile.name()), &profile.sim_config(), &["--drift-check-interval=3s"]).await;
    env.workspace_checked_often().await;
    // Create.
    env.apply(&access_key("ci", "  repositories: [api, web]\n  rotation: {gracePeriod: 3s}\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let first = o.data["status"]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(keys(&env).await, both(&first), "{profile:?}: one key on each repository");
    let private = env.secret("ci").await.unwrap().data.unwrap()["ssh-privatekey"].0.clone();
    assert_eq!(ssh_keygen_fingerprint(&env.dir, &private), first, "{profile:?}: the Secret holds the registered key");

    // Drift: a key deleted in Bitbucket comes back.
    let victim = env.sim.keys().await.into_iter().find(|k| target_name(k) == "web").unwrap();
    env.sim.delete_key(victim["id"].as_i64().unwrap()).await;
    eventually("the deleted key is back", READY, || async { (keys(&env).await == both(&first)).then_some(()) }).await;

    // Rotate: the new key everywhere, the old one gone after its grace period.
    rotate(&env, "ci", "1").await;
    let second = rotated(&env, "ci", "1").await;
    assert_ne!(second, first);
    eventually("only the new key", READY, || async { (keys(&env).await == both(&second)).then_some(()) }).await;

    // Crash recovery: killed once the next key is registered, before the Secret switched.
    env.operator.kill();
    env.operator.restart_with(&[("BCO_FAILPOINT", "next-key-registered")]);
    rotate(&env, "ci", "2").await;
    assert!(env.operator.wait_exit(READY), "{profile:?}: the operator never reached next-key-registered");
    env.operator.restart();
    let third = rotated(&env, "ci", "2").await;
    assert_ne!(third, second);
    eventually("only the final key after the crash", READY, || async { (keys(&env).await == both(&third)).then_some(()) }).await;
    let private = env.secret("ci").await.unwrap().data.unwrap()["ssh-privatekey"].0.clone();
    assert_eq!(ssh_keygen_fingerprint(&env.dir, &private), third);

    // Delete: nothing of the object stays in Bitbucket.
    env.api("bitbucketaccesskeys").delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the object is gone", READY, || async { env.get("bitbucketaccesskeys", "ci").await.is_none().then_some(()) }).await;
    assert!(keys(&env).await.is_empty(), "{profile:?}: keys left behind: {:?}", keys(&env).await);
}

fn consumer(name: &str, secret: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-creds}}\nstringData: {{key: ck-main, secret: {secret}}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n  consumerSecretRef: {{name: {name}-creds}}\n"
    )
}

async fn oauth_lifecycle(profile: Profile) {
    let env = Env::with(&format!("life-oauth-{}", profile.name()), &profile.sim_config(), &[]).await;
    env.workspace().await;
    // A token, in the Secret, that Bitbucket takes.
    env.apply(&consumer("ci", "cs-main-secret-0123456789")).await;
    let o = env.wait_ready("bitbucketoauthconsumers", "ci", READY).await;
    assert!(o.data["status"]["expiresAt"].as_str().is_some());
    let token = String::from_utf8(env.secret("ci").await.unwrap().data.unwrap()["token"].0.clone()).unwrap();
    let answer = reqwest::Client::new()
        .get(format!("{}/2.0/repositories/acme/api/deploy-keys", env.sim.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{profile:?}: the token is refused: {}", answer.status());
    // The Secret deleted: restored, with a token Bitbucket takes.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(env.client.clone(), &env.ns);
    secrets.delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the Secret is restored", READY, || async {
        let s = env.secret("ci").await?;
        let t = String::from_utf8(s.data?.get("token")?.0.clone()).ok()?;
        (!t.is_empty()).then_some(())
    })
    .await;
    // A wrong consumer secret, whichever code the token endpoint answers it with.
    env.apply(&consumer("bad", "wrong-secret-333")).await;
    let m = env.wait_reason("bitbucketoauthconsumers", "bad", "InvalidClient", READY).await;
    assert!(m.contains("check the `key` and `secret`"), "{m}");
    // Delete.
    env.api("bitbucketoauthconsumers").delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the object is gone", READY, || async { env.get("bitbucketoauthconsumers", "ci").await.is_none().then_some(()) }).await;
    env.assert_no_secret_leaked(&[token, "wrong-secret-333".into()]).await;
}

#[tokio::test]
async fn the_access_key_lifecycle_as_documented() {
    access_key_lifecycle(Profile::Documented).await;
}

#[tokio::test]
async fn the_access_key_lifecycle_with_real_world_variants() {
    access_key_lifecycle(Profile::RealWorld).await;
}

#[tokio::test]
async fn the_oauth_lifecycle_as_documented() {
    oauth_lifecycle(Profile::Documented).await;
}

#[tokio::test]
async fn the_oauth_lifecycle_with_real_world_variants() {
    oauth_lifecycle(Profile::RealWorld).await;
}
