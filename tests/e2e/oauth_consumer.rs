//! BitbucketOAuthConsumer against the real control plane and `bitbucket-sim`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;

use crate::support::{Env, SIM_CONFIG, eventually};

const READY: Duration = Duration::from_secs(60);

fn consumer(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-creds}}\nstringData: {{key: ck-main, secret: cs-main-secret-0123456789}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n  consumerSecretRef: {{name: {name}-creds}}\n{spec}"
    )
}

fn text(s: &Secret, key: &str) -> String {
    s.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).to_string()).unwrap_or_default()
}

async fn token_requests(env: &Env) -> u64 {
    env.sim.requests().await["byEndpoint"]["token"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_token_lands_in_the_secret_in_every_format_and_never_the_consumer_secret() {
    let env = Env::new("oauth-formats").await;
    env.workspace().await;
    env.apply(&consumer("ci", "  secret:\n    formats: [token, basic-auth, git-credentials, argocd]\n    argocdProject: team-a\n")).await;
    let o = env.wait_ready("bitbucketoauthconsumers", "ci", READY).await;
    let s = env.secret("ci").await.unwrap();
    let token = text(&s, "token");
    assert!(!token.is_empty());
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert_eq!(text(&s, "username"), "x-token-auth");
    assert_eq!(text(&s, "password"), token);
    let host = env.sim.url.trim_start_matches("http://").to_string();
    assert_eq!(text(&s, ".git-credentials"), format!("http://x-token-auth:{token}@{host}\n"));
    // Argo CD's HTTPS credential template for the whole workspace, scoped to one AppProject.
    assert_eq!(s.metadata.labels.as_ref().unwrap()["argocd.argoproj.io/secret-type"], "repo-creds");
    assert_eq!((text(&s, "url"), text(&s, "type"), text(&s, "project")), (format!("http://{host}/acme/"), "git".into(), "team-a".into()));
    for v in s.data.as_ref().unwrap().values() {
        let v = String::from_utf8_lossy(&v.0);
        assert!(!v.contains("cs-main-secret"), "the consumer secret never reaches the output Secret");
    }
    assert!(o.data["status"]["expiresAt"].as_str().is_some());
    assert!(o.data["status"]["renewalTime"].as_str().is_some());
    assert_eq!(o.data["status"]["scopes"], serde_json::json!(["repository:admin", "project:admin"]));
    env.assert_no_secret_leaked(&[token]).await;
}

#[tokio::test]
async fn a_new_consumer_mints_one_token() {
    let env = Env::new("oauth-once").await;
    env.workspace().await;
    let names: Vec<String> = (0..10).map(|i| format!("ci-{i}")).collect();
    for n in &names {
        env.apply(&consumer(n, "")).await;
    }
    for n in &names {
        env.wait_ready("bitbucketoauthconsumers", n, READY).await;
    }
    // The wake-ups of its own writes (the consumer Secret's label, the output Secret, the
    // status) come while the operator's cache may still show the object without status.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(token_requests(&env).await, 10, "one token per object");
}

#[tokio::test]
async fn a_restart_with_a_valid_token_mints_nothing_and_a_deleted_secret_is_restored() {
    let mut env = Env::new("oauth-restart").await;
    env.workspace().await;
    env.apply(&consumer("ci", "")).await;
    env.wait_ready("bitbucketoauthconsumers", "ci", READY).await;
    let minted = token_requests(&env).await;
    env.operator.kill();
    env.operator.restart();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(token_requests(&env).await, minted, "a restart mints nothing while the token is valid");
    Api::<Secret>::namespaced(env.client.clone(), &env.ns).delete("ci", &DeleteParams::default()).await.unwrap();
    let s = eventually("the Secret is restored", READY, || async { env.secret("ci").await }).await;
    assert!(!text(&s, "token").is_empty());
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let config = SIM_CONFIG.replace("expiresIn: 7200", "expiresIn: 12");
    let env = Env::with("oauth-renew", &config, &[]).await;
    env.workspace().await;
    // refreshBefore (at least 1m) is longer than these 12 s tokens live: renewed at half-life.
    env.apply(&consumer("ci", "  refreshBefore: 1m\n")).await;
    env.wait_ready("bitbucketoauthconsumers", "ci", READY).await;
    let first = text(&env.secret("ci").await.unwrap(), "token");
    let renewed = eventually("a new token", Duration::from_secs(20), || async {
        let t = text(&env.secret("ci").await?, "token");
        (t != first && !t.is_empty()).then_some(t)
    })
    .await;
    assert_ne!(renewed, first);
}

#[tokio::test]
async fn a_rotated_consumer_secret_takes_effect_at_once_and_a_bad_one_is_reported() {
    let env = Env::new("oauth-rotated").await;
    env.workspace().await;
    env.apply(&consumer("ci", "")).await;
    env.wait_ready("bitbucketoauthconsumers", "ci", READY).await;
    // The admin rotates the consumer's secret in Bitbucket but the Secret still has the old one.
    let r = env
        .sim
        .http
        .put(format!("{}/_sim/oauth-consumers", env.sim.url))
        .json(&serde_json::json!([{"key": "ck-main", "secret": "cs-rotated-secret-987654321", "scopes": ["repository:admin"], "expiresIn": 7200}]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    env.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: ci-creds}\nstringData: {key: ck-main, secret: wrong-secret-111}\n").await;
    let m = env.wait_reason("bitbucketoauthconsumers", "ci", "InvalidClient", READY).await;
    assert!(m.contains("invalid_client"), "{m}");
    assert!(!text(&env.secret("ci").await.unwrap(), "token").is_empty(), "the last good token stays");
    env.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: ci-creds}\nstringData: {key: ck-main, secret: cs-rotated-secret-987654321}\n",
    )
    .await;
    env.wait_reason("bitbucketoauthconsumers", "ci", "TokenIssued", READY).await;
    let o = env.get("bitbucketoauthconsumers", "ci").await.unwrap();
    assert_eq!(o.data["status"]["scopes"], serde_json::json!(["repository:admin"]));
    env.assert_no_secret_leaked(&["cs-rotated-secret-987654321".into(), "wrong-secret-111".into()]).await;
}

#[tokio::test]
async fn a_missing_consumer_secret_is_reported_and_not_retried_in_a_loop() {
    let env = Env::new("oauth-missing").await;
    env.workspace().await;
    env.apply("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {name: ci}\nspec:\n  workspaceRef: {name: acme}\n  consumerSecretRef: {name: nope}\n").await;
    let m = env.wait_reason("bitbucketoauthconsumers", "ci", "SecretNotFound", READY).await;
    assert!(m.contains("nope") && m.contains("`key` and `secret`"), "{m}");
    assert_eq!(token_requests(&env).await, 0);
}

#[tokio::test]
async fn a_hundred_consumers_do_not_all_renew_in_the_same_second() {
    let env = Env::new("oauth-spread").await;
    env.workspace().await;
    // 100 first mints at once on one consumer: a budget whose burst covers them.
    env.api("bitbucketworkspaces")
        .patch("acme", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(serde_json::json!({"spec": {"requestsPerHour": 3600}})))
        .await
        .unwrap();
    let mut yaml = String::new();
    for i in 0..100 {
        yaml.push_str(&consumer(&format!("c{i}"), ""));
        yaml.push_str("\n---\n");
    }
    env.apply(&yaml).await;
    let times = eventually("100 consumers Ready", Duration::from_secs(120), || async {
        let list = env.api("bitbucketoauthconsumers").list(&Default::default()).await.ok()?;
        let times: Vec<String> = list.iter().filter_map(|o| o.data["status"]["renewalTime"].as_str().map(String::from)).collect();
        (times.len() == 100).then_some(times)
    })
    .await;
    let mut per_second = std::collections::BTreeMap::<String, usize>::new();
    for t in &times {
        *per_second.entry(t.clone()).or_default() += 1;
    }
    let busiest = per_second.values().max().copied().unwrap_or(0);
    eprintln!("100 renewals over {} distinct seconds, at most {busiest} in one", per_second.len());
    assert!(per_second.len() >= 50, "renewals spread over only {} seconds", per_second.len());
}

#[tokio::test]
async fn real_git_sends_the_token_as_x_token_auth_from_the_git_credentials_file() {
    let env = Env::new("oauth-git").await;
    env.workspace().await;
    env.apply(&consumer("ci", "  secret:\n    formats: [git-credentials]\n")).await;
    env.wait_ready("bitbucketoauthconsumers", "ci", READY).await;
    let s = env.secret("ci").await.unwrap();
    // Mounted as a pod would, and handed to git's own `store` credential helper.
    let file = env.dir.join("git-credentials");
    std::fs::write(&file, text(&s, ".git-credentials")).unwrap();
    let out = std::process::Command::new("git")
        .args(["-c", &format!("credential.helper=store --file={}", file.display())])
        .args(["clone", "-q", &format!("{}/acme/api.git", env.sim.url)])
        .arg(env.dir.join("https-clone"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", &env.dir)
        .output()
        .unwrap();
    // The simulator serves no git content (404 once authenticated); what matters is what
    // git sent: first an anonymous request answered with a Basic challenge, then the
    // token as the password of x-token-auth, accepted as consumer ck-main's token.
    assert!(!out.status.success());
    let log = env.sim.requests().await;
    let git: Vec<&serde_json::Value> = log["recent"].as_array().unwrap().iter().filter(|r| r["endpoint"] == "git_info_refs").collect();
    assert!(git.iter().any(|r| r["status"] == 401 && r["credential"].is_null()), "{git:?}");
    assert!(
        git.iter().any(|r| r["status"] == 404 && r["credential"] == "ck-main"),
        "git did not authenticate with the token as x-token-auth: {git:?}"
    );
}
