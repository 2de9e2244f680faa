//! The access-key lifecycle against answers the real Bitbucket gives that differ from the
//! documented ones (`deployKeyVariants` of the simulator): the operator decides from what
//! the listings show, never from the text of a message.

use std::time::Duration;

use kube::api::DeleteParams;
use serde_json::{Value, json};

use crate::support::{Env, SIM_CONFIG, eventually, set_faults, set_variants};

const READY: Duration = Duration::from_secs(60);

fn access_key(name: &str, spec: &str) -> String {
    format!("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n{spec}")
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
