//! The access-key lifecycle against answers the real Bitbucket gives that differ from the
//! documented ones (`deployKeyVariants` of the simulator): the operator decides from what
//! the listings show, never from the text of a message.

use std::time::Duration;

use kube::api::DeleteParams;
use serde_json::{Value, json};

use crate::support::{Env, SIM_CONFIG, eventually, set_faults, set_variants};

const READY: Duration = Duration::from_secs(60);

fn access_key(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n{spec}"
    )
}

fn creates(requests: &Value) -> u64 {
    requests["byEndpoint"]["repo_key_create"].as_u64().unwrap_or(0)
}

/// The key was stored but the answer never came; the retry is told "duplicate" in
/// `variant`'s words. The object converges with exactly the one key.
async fn a_timed_out_create_converges_whatever_the_duplicate_answer_says(variant: &str) {
    let env = Env::with(&format!("dup-{variant}"), SIM_CONFIG, &["--drift-check-interval=1h", "--bitbucket-timeout=1s"]).await;
    env.workspace().await;
    set_variants(&env.sim, json!({"duplicateMessage": variant})).await;
    // Every answer is held past the operator's timeout, after the request took effect.
    set_faults(&env.sim, json!({"timeoutRate": 1.0, "timeoutMs": 3000})).await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    eventually("the key is stored", READY, || async { (!env.sim.keys().await.is_empty()).then_some(()) }).await;
    set_faults(&env.sim, json!({})).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let keys = env.sim.keys().await;
    assert_eq!(keys.len(), 1, "exactly one key: {keys:?}");
    assert_eq!(o.data["status"]["fingerprint"], keys[0]["fingerprint"]);
    assert_eq!(o.data["status"]["registrations"][0]["id"], keys[0]["id"], "the stored key is adopted");
    assert!(creates(&env.sim.requests().await) >= 2, "the create was retried and told the key exists");
}

#[tokio::test]
async fn a_timed_out_create_converges_when_the_retry_gets_a_generic_400() {
    a_timed_out_create_converges_whatever_the_duplicate_answer_says("generic").await;
}

#[tokio::test]
async fn a_timed_out_create_converges_when_the_duplicate_400_has_another_text() {
    a_timed_out_create_converges_whatever_the_duplicate_answer_says("different").await;
}

fn hidden(repository: &str) -> Value {
    json!({"bareNotFound": true, "hidden": [{"repository": repository, "credential": "admin@acme.test"}]})
}

fn registered_on(o: &kube::api::DynamicObject, repository: &str) -> Option<i64> {
    let regs = o.data["status"]["registrations"].as_array()?;
    regs.iter().find(|r| r["repository"] == repository).and_then(|r| r["id"].as_i64())
}

/// Deleting the object while a repository answers 404 to the credential (access lost)
/// does not count its key as removed: the object reports it, keeps it on record, and
/// finishes once the repository is visible again, leaving no key behind.
#[tokio::test]
async fn deleting_an_object_whose_repository_is_not_visible_keeps_its_key_on_record() {
    let env = Env::new("not-visible-delete").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api, web]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let api_id = registered_on(&o, "api").expect("registered on api");
    set_variants(&env.sim, hidden("acme/api")).await;
    env.api("bitbucketaccesskeys").delete("ci", &DeleteParams::default()).await.unwrap();
    let m = env.wait_reason("bitbucketaccesskeys", "ci", "TargetNotVisible", READY).await;
    assert!(m.contains("acme/api"), "{m}");
    let o = env.get("bitbucketaccesskeys", "ci").await.expect("the finalizer keeps the object");
    assert_eq!(registered_on(&o, "api"), Some(api_id), "the key stays on record");
    assert!(env.sim.keys().await.iter().any(|k| k["id"] == api_id), "and in Bitbucket");
    set_variants(&env.sim, json!({})).await;
    eventually("the object is gone", Duration::from_secs(400), || async {
        env.get("bitbucketaccesskeys", "ci").await.is_none().then_some(())
    })
    .await;
    assert!(env.sim.keys().await.is_empty(), "no key left behind");
}

/// A retiring key whose repository answers a bare 404 when its grace period ends is not
/// recorded as removed; once the repository answers again it is removed.
#[tokio::test]
async fn a_retired_key_on_a_repository_that_is_not_visible_stays_until_it_can_be_removed() {
    let env = Env::with("not-visible-retire", SIM_CONFIG, &["--drift-check-interval=1h"]).await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api, web]\n  rotation: {gracePeriod: 20s}\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let old = o.data["status"]["fingerprint"].as_str().unwrap().to_string();
    env.api("bitbucketaccesskeys")
        .patch(
            "ci",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"bitbucket.credentials.dev/rotate": "1"}}})),
        )
        .await
        .unwrap();
    eventually("rotated", READY, || async {
        let o = env.get("bitbucketaccesskeys", "ci").await?;
        (o.data["status"]["fingerprint"] != old.as_str() && o.data["status"]["retiringKeys"].as_array().is_some_and(|a| !a.is_empty()))
            .then_some(())
    })
    .await;
    set_variants(&env.sim, hidden("acme/api")).await;
    let m = env.wait_reason("bitbucketaccesskeys", "ci", "TargetNotVisible", READY).await;
    assert!(m.contains("acme/api"), "{m}");
    let o = env.get("bitbucketaccesskeys", "ci").await.unwrap();
    assert_eq!(o.data["status"]["retiringKeys"][0]["fingerprint"], old.as_str(), "the old key stays on record");
    assert!(env.sim.keys().await.iter().any(|k| k["fingerprint"] == old.as_str() && k["target"]["repository"] == "acme/api"));
    set_variants(&env.sim, json!({})).await;
    eventually("the old key is removed", Duration::from_secs(400), || async {
        let keys = env.sim.keys().await;
        (!keys.iter().any(|k| k["fingerprint"] == old.as_str())).then_some(())
    })
    .await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    assert!(o.data["status"]["retiringKeys"].as_array().is_none_or(|a| a.is_empty()));
    assert_eq!(env.sim.keys().await.len(), 2, "the new key on api and web, nothing else");
}

async fn rotate(env: &Env, value: &str) {
    env.api("bitbucketaccesskeys")
        .patch(
            "ci",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"bitbucket.credentials.dev/rotate": value}}})),
        )
        .await
        .unwrap();
}

async fn fingerprints(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = env.sim.keys().await.iter().map(|k| k["fingerprint"].as_str().unwrap_or_default().to_string()).collect();
    v.sort();
    v
}

/// Bitbucket drops the comment and the spec sets its own label: nothing in Bitbucket
/// names the object, yet its keys are found by their recorded fingerprints: restored,
/// rotated and removed without a duplicate or an orphan.
#[tokio::test]
async fn keys_whose_comment_was_dropped_are_still_recognised_rotated_and_removed() {
    let env = Env::new("comments-dropped").await;
    env.workspace_checked_often().await;
    set_variants(&env.sim, json!({"comments": "dropped"})).await;
    env.apply(&access_key("ci", "  repositories: [api, web]\n  label: team-ci\n  rotation: {gracePeriod: 3s}\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let old = o.data["status"]["fingerprint"].as_str().unwrap().to_string();
    let keys = env.sim.keys().await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k["comment"] == "" && k["label"] == "team-ci"), "{keys:?}");
    // Drift: a key deleted in Bitbucket comes back, once.
    env.sim.delete_key(keys[1]["id"].as_i64().unwrap()).await;
    eventually("the deleted key is restored", READY, || async {
        (fingerprints(&env).await == vec![old.clone(), old.clone()]).then_some(())
    })
    .await;
    rotate(&env, "1").await;
    let new = eventually("rotated, and the old key removed after its grace period", READY, || async {
        let o = env.get("bitbucketaccesskeys", "ci").await?;
        let new = o.data["status"]["fingerprint"].as_str()?.to_string();
        let retiring = o.data["status"]["retiringKeys"].as_array().is_some_and(|a| !a.is_empty());
        (new != old && !retiring && fingerprints(&env).await == vec![new.clone(), new.clone()]).then_some(new)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fingerprints(&env).await, vec![new.clone(), new], "no duplicate after drift checks");
    env.api("bitbucketaccesskeys").delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the object is gone", READY, || async { env.get("bitbucketaccesskeys", "ci").await.is_none().then_some(()) }).await;
    assert!(env.sim.keys().await.is_empty(), "no orphan: {:?}", env.sim.keys().await);
}

/// Bitbucket keeps only the first word of the comment: the one-word mark survives whole,
/// and the object's keys are removed with it.
#[tokio::test]
async fn a_comment_cut_to_its_first_word_keeps_the_whole_mark() {
    let env = Env::new("comments-first-word").await;
    env.workspace().await;
    set_variants(&env.sim, json!({"comments": "firstWord"})).await;
    env.apply(&access_key("ci", "  repositories: [api]\n  projects: [CORE]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let uid = o.metadata.uid.clone().unwrap();
    let keys = env.sim.keys().await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        assert_eq!(crate::support::marked_uid(k["comment"].as_str().unwrap_or_default()), Some(uid.clone()), "{k}");
    }
    env.api("bitbucketaccesskeys").delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the object is gone", READY, || async { env.get("bitbucketaccesskeys", "ci").await.is_none().then_some(()) }).await;
    assert!(env.sim.keys().await.is_empty(), "no orphan: {:?}", env.sim.keys().await);
}

/// Keys registered by earlier versions carry the comment `... cluster=<c> uid=<uid>`: an
/// upgraded operator still knows them as its object's (an orphan of one is removed by the
/// drift check), and a key without any mark is never touched.
#[tokio::test]
async fn a_key_marked_by_an_earlier_version_is_still_recognised() {
    use bitbucket_credentials_operator::keys::{KeyPair, KeySpec};
    let env = Env::new("legacy-mark").await;
    env.workspace().await;
    env.apply(&access_key("ci", "  repositories: [api]\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let uid = o.metadata.uid.clone().unwrap();
    let current = o.data["status"]["fingerprint"].as_str().unwrap().to_string();
    let add = |comment: String, label: String| {
        let k = KeyPair::generate(KeySpec::new(Default::default(), None, None), &comment).unwrap();
        let http = env.sim.http.clone();
        let url = format!("{}/2.0/repositories/acme/api/deploy-keys", env.sim.url);
        let body = json!({"key": k.public_key(), "label": label});
        async move {
            let r = http.post(url).basic_auth("admin@acme.test", Some("tok-admin-0123456789")).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            k.fingerprint().to_string()
        }
    };
    let orphan = add(format!("bitbucket-credentials-operator cluster=test uid={uid}"), format!("test/{}/ci", env.ns)).await;
    let foreign = add("someone@laptop".into(), "deploy".into()).await;
    eventually("the earlier version's orphan is removed", READY, || async { (!fingerprints(&env).await.contains(&orphan)).then_some(()) })
        .await;
    let mut expected = vec![current, foreign];
    expected.sort();
    assert_eq!(fingerprints(&env).await, expected, "the object's key and the foreign key stay");
}

fn rate_limited(requests: &Value) -> u64 {
    requests["byStatus"]["429"].as_u64().unwrap_or(0)
}

/// Bitbucket's 429 pauses the whole credential: no reconcile retries it at once, none of
/// the others sends anything until the cool-down is over, and each says why it waits.
#[tokio::test]
async fn a_429_pauses_every_reconcile_that_uses_the_credential() {
    let env = Env::with("rw-429", SIM_CONFIG, &["--drift-check-interval=1h"]).await;
    env.workspace().await;
    let names: Vec<String> = (0..6).map(|i| format!("burst-{i}")).collect();
    for name in &names {
        env.apply(&access_key(name, "  repositories: [api]\n")).await;
    }
    for name in &names {
        env.wait_ready("bitbucketaccesskeys", name, READY).await;
    }
    set_faults(&env.sim, json!({"rateLimitBurstRate": 1.0})).await;
    let before = rate_limited(&env.sim.requests().await);
    for name in &names {
        env.apply(&format!(
            "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}, annotations: {{bitbucket.credentials.dev/rotate: now}}}}\nspec:\n  workspaceRef: {{name: acme}}\n  repositories: [api]\n"
        ))
        .await;
    }
    let message = env.wait_reason("bitbucketaccesskeys", "burst-3", "RateLimited", READY).await;
    assert!(message.contains("429") && message.contains("pauses"), "{message}");
    // Long enough for three quick retries of every reconcile, well within the cool-down.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let answered = rate_limited(&env.sim.requests().await) - before;
    assert!((1..=names.len() as u64).contains(&answered), "{answered} 429s: at most one per reconcile that was already on its way");
    let metrics = env.operator.metrics().await;
    let until = crate::support::series(&metrics, "bitbucket_credentials_operator_rate_limit_cooldown_until_timestamp_seconds{")
        .unwrap_or_else(|| panic!("no cool-down metric:\n{metrics}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(until > now, "the cool-down is still on: {until} <= {now}");
    assert!(metrics.contains("bitbucket_credentials_operator_bitbucket_rate_limited_total{"), "{metrics}");
    // Once Bitbucket answers again, everything converges after the cool-down.
    set_faults(&env.sim, json!({})).await;
    for name in &names {
        // Ready all along (the old key works); done once the rotation went through.
        eventually(&format!("{name} rotated"), Duration::from_secs(150), || async {
            let o = env.wait_ready("bitbucketaccesskeys", name, Duration::from_secs(150)).await;
            (o.data["status"]["rotateRequest"] == "now").then_some(())
        })
        .await;
    }
}
