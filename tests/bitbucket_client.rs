//! The Bitbucket client against the running simulator: success and every error class.

use std::sync::Arc;
use std::time::Duration;

use bitbucket_credentials_operator::bitbucket::{AllowedUrls, Auth, Bitbucket, ClientOptions, Error, Target, WorkspaceClient};
use bitbucket_credentials_operator::keys::{KeyPair, KeySpec};
use bitbucket_credentials_operator::sensitive::SecretString;
use bitbucket_sim::{SimConfig, serve};

const CONFIG: &str = r#"
workspaces:
  - slug: acme
    repositories: [{slug: api, project: CORE}, {slug: web}]
    projects: [{key: CORE}]
apiTokens:
  - {email: admin@acme.test, token: tok-admin, scopes: [admin:repository:bitbucket, write:ssh-key:bitbucket, delete:ssh-key:bitbucket, admin:project:bitbucket, read:workspace:bitbucket]}
  - {email: reader@acme.test, token: tok-reader, scopes: [admin:repository:bitbucket]}
oauthConsumers:
  - {key: ck, secret: cs, scopes: [repository:admin, project:admin], expiresIn: 7200}
  - {key: old, secret: os, scopes: [repository:admin], expiresIn: 7200, legacyScopesField: true}
rateLimit: {requestsPerWindow: 100000, windowSeconds: 3600}
pagelen: 10
"#;

async fn sim(config: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = SimConfig::from_yaml(config).expect("config");
    tokio::spawn(async move { serve(config, listener).await });
    url
}

fn client(url: &str, auth: Auth, options: ClientOptions) -> WorkspaceClient {
    let bb = Arc::new(Bitbucket::new(allowing(url, options)).unwrap());
    let cred = bb.credential(&format!("{url}/2.0"), url, &auth, 100_000).unwrap();
    bb.workspace("acme", cred)
}

/// `options` allowing the simulator at `url` (plain http on loopback).
fn allowing(url: &str, options: ClientOptions) -> ClientOptions {
    ClientOptions { allowed_urls: AllowedUrls::parse([url]).unwrap(), ..options }
}

fn admin() -> Auth {
    Auth::ApiToken { email: "admin@acme.test".into(), token: SecretString::new("tok-admin") }
}

fn fast() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(500),
        max_attempts: 2,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        ..Default::default()
    }
}

fn key() -> KeyPair {
    KeyPair::generate(KeySpec::new(Default::default(), None, None), "client test").unwrap()
}

#[tokio::test]
async fn keys_are_created_listed_across_pages_relabelled_and_deleted() {
    let url = sim(CONFIG).await;
    let c = client(&url, admin(), ClientOptions::default());
    c.verify().await.expect("verify");
    let repo = Target::Repository("api".into());
    let mut ids = Vec::new();
    for i in 0..23 {
        let k = key();
        let created = c.create_key(&repo, k.public_key(), &format!("label {i}")).await.expect("create");
        assert_eq!(created.key, k.public_key_body(), "Bitbucket strips the comment from key");
        assert_eq!(created.comment.as_deref(), Some("client test"));
        ids.push(created.id);
    }
    let listed = c.list_keys(&repo).await.expect("list");
    assert_eq!(listed.len(), 23, "every page followed");
    let relabelled = c.update_label(&repo, ids[0], "renamed").await.expect("update");
    assert_eq!(relabelled.label.as_deref(), Some("renamed"));
    assert_eq!(c.get_key(&repo, ids[0]).await.unwrap().label.as_deref(), Some("renamed"));
    c.delete_key(&repo, ids[0]).await.expect("delete");
    c.delete_key(&repo, ids[0]).await.expect("deleting a key that is gone is fine");
    assert_eq!(c.get_key(&repo, ids[0]).await.unwrap_err(), Error::KeyNotFound(ids[0]));
    let project = Target::Project("CORE".into());
    let k = key();
    let created = c.create_key(&project, k.public_key(), "p").await.expect("project key");
    assert_eq!(c.list_keys(&project).await.unwrap()[0].id, created.id);
}

#[tokio::test]
async fn each_refusal_is_told_apart() {
    let url = sim(CONFIG).await;
    let c = client(&url, admin(), ClientOptions::default());
    let k = key();
    let api = Target::Repository("api".into());
    c.create_key(&api, k.public_key(), "x").await.unwrap();
    let dup = c.create_key(&api, k.public_key(), "x").await.unwrap_err();
    assert!(matches!(dup, Error::DuplicateKey(_)), "{dup:?}");
    assert!(!dup.is_transient());
    let bad = c.create_key(&api, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 short", "x").await.unwrap_err();
    assert!(matches!(bad, Error::InvalidKey(_)), "{bad:?}");
    let missing = c.list_keys(&Target::Repository("nope".into())).await.unwrap_err();
    assert_eq!(missing, Error::RepositoryNotFound("acme/nope".into()));
    let missing = c.list_keys(&Target::Project("NOPE".into())).await.unwrap_err();
    assert_eq!(missing, Error::ProjectNotFound("acme/NOPE".into()));

    let wrong =
        client(&url, Auth::ApiToken { email: "admin@acme.test".into(), token: SecretString::new("wrong") }, ClientOptions::default());
    assert!(matches!(wrong.list_keys(&api).await.unwrap_err(), Error::Unauthorized(_)));
    let reader =
        client(&url, Auth::ApiToken { email: "reader@acme.test".into(), token: SecretString::new("tok-reader") }, ClientOptions::default());
    let denied = reader.create_key(&api, key().public_key(), "x").await.unwrap_err();
    assert!(matches!(denied, Error::Forbidden(_)), "{denied:?}");
    assert_eq!(denied.reason(), "Forbidden");
    let other_ws = {
        let bb = Arc::new(Bitbucket::new(allowing(&url, ClientOptions::default())).unwrap());
        let cred = bb.credential(&format!("{url}/2.0"), &url, &admin(), 1000).unwrap();
        bb.workspace("nowhere", cred)
    };
    assert_eq!(other_ws.verify().await.unwrap_err(), Error::WorkspaceNotFound("nowhere".into()));
}

#[tokio::test]
async fn an_access_token_is_reported_as_the_wrong_mechanism() {
    // Access tokens cannot be configured on a workspace; the classification is checked on
    // the simulator's real answer.
    let url = sim(&format!("{CONFIG}accessTokens: [{{token: repo-token}}]\n")).await;
    let resp =
        reqwest::Client::new().get(format!("{url}/2.0/repositories/acme/api/deploy-keys")).bearer_auth("repo-token").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.text().await.unwrap();
    assert!(body.contains("not accessible by this authentication mechanism"), "{body}");
    let e = Error::AuthMechanismRefused(body);
    assert_eq!(e.reason(), "AuthMechanismRefused");
    assert!(e.to_string().contains("access tokens cannot manage access keys"));
}

#[tokio::test]
async fn oauth_consumers_get_tokens_with_scope_or_the_older_scopes() {
    let url = sim(CONFIG).await;
    let c = client(&url, Auth::OAuthConsumer { key: "ck".into(), secret: SecretString::new("cs") }, ClientOptions::default());
    c.list_keys(&Target::Repository("api".into())).await.expect("a bearer token is minted and used");
    let bb = Bitbucket::new(allowing(&url, ClientOptions::default())).unwrap();
    let api = format!("{url}/2.0");
    let cred = bb.credential(&api, &url, &Auth::OAuthConsumer { key: "old".into(), secret: SecretString::new("os") }, 1000).unwrap();
    let token = bb.mint_token(&cred).await.expect("token");
    assert_eq!(token.scopes, vec!["repository:admin".to_string()], "the older `scopes` field is read");
    assert!(token.expires_in >= Duration::from_secs(7000));
    let bad = bb.credential(&api, &url, &Auth::OAuthConsumer { key: "ck".into(), secret: SecretString::new("nope") }, 1000).unwrap();
    let e = bb.mint_token(&bad).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidClient { error, .. } if error == "invalid_client"), "{e:?}");
    assert_eq!(e.reason(), "InvalidClient");
}

#[tokio::test]
async fn rate_limits_server_errors_and_timeouts_are_transient() {
    let url = sim(&CONFIG.replace("requestsPerWindow: 100000", "requestsPerWindow: 2")).await;
    let c = client(&url, admin(), fast());
    let api = Target::Repository("api".into());
    let _ = c.list_keys(&api).await;
    let _ = c.list_keys(&api).await;
    let limited = c.list_keys(&api).await.unwrap_err();
    assert!(matches!(limited, Error::RateLimited { .. }), "{limited:?}");
    assert!(limited.is_transient());

    let url = sim(&format!("{CONFIG}faults: {{errorRate: 1.0}}\n")).await;
    let e = client(&url, admin(), fast()).list_keys(&api).await.unwrap_err();
    assert!(matches!(e, Error::Server { .. }) && e.is_transient(), "{e:?}");

    let url = sim(&format!("{CONFIG}faults: {{timeoutRate: 1.0, timeoutMs: 2000}}\n")).await;
    let e = client(&url, admin(), fast()).list_keys(&api).await.unwrap_err();
    assert!(matches!(e, Error::Timeout(_)) && e.is_transient(), "{e:?}");

    let e = client("http://127.0.0.1:9", admin(), fast()).list_keys(&api).await.unwrap_err();
    assert!(matches!(e, Error::Transport(_)) && e.is_transient(), "{e:?}");
}

/// How many requests the simulator has seen.
async fn requests_seen(url: &str) -> u64 {
    let log: serde_json::Value = reqwest::get(format!("{url}/_sim/requests")).await.unwrap().json().await.unwrap();
    log["total"].as_u64().unwrap()
}

#[tokio::test]
async fn a_429_pauses_the_whole_credential_without_quick_retries() {
    let url = sim(&format!("{CONFIG}faults: {{rateLimitBurstRate: 1.0}}\n")).await;
    let options = ClientOptions { cooldown: Duration::from_millis(400), cooldown_max: Duration::from_secs(2), ..fast() };
    let bb = Arc::new(Bitbucket::new(allowing(&url, options)).unwrap());
    let one = bb.workspace("acme", bb.credential(&format!("{url}/2.0"), &url, &admin(), 100_000).unwrap());
    let other = bb.workspace("acme", bb.credential(&format!("{url}/2.0"), &url, &admin(), 100_000).unwrap());
    let api = Target::Repository("api".into());

    let e = one.list_keys(&api).await.unwrap_err();
    let Error::RateLimited { retry_after } = e else { panic!("{e:?}") };
    assert!(retry_after >= Duration::from_millis(300), "{retry_after:?}");
    assert_eq!(requests_seen(&url).await, 1, "a 429 is not retried within the call");
    // Every user of the credential waits, without sending anything.
    let e = other.create_key(&api, key().public_key(), "x").await.unwrap_err();
    assert!(matches!(e, Error::RateLimited { .. }), "{e:?}");
    assert_eq!(requests_seen(&url).await, 1, "nothing is sent during the cool-down");
    // Another credential is not held up.
    let reader = Auth::ApiToken { email: "reader@acme.test".into(), token: SecretString::new("tok-reader") };
    let _ = bb.workspace("acme", bb.credential(&format!("{url}/2.0"), &url, &reader, 100_000).unwrap()).list_keys(&api).await;
    assert_eq!(requests_seen(&url).await, 2);

    // The next 429 after the cool-down doubles it; a normal answer ends the episode.
    tokio::time::sleep(retry_after).await;
    let Error::RateLimited { retry_after: second } = one.list_keys(&api).await.unwrap_err() else { panic!() };
    assert!(second >= Duration::from_millis(600), "doubled: {second:?}");
    reqwest::Client::new().put(format!("{url}/_sim/faults")).body("{}").send().await.unwrap().error_for_status().unwrap();
    tokio::time::sleep(second).await;
    one.list_keys(&api).await.expect("Bitbucket answers again");
}

#[tokio::test]
async fn credentials_are_shared_only_by_the_same_secret_at_the_same_urls() {
    let url = sim(CONFIG).await;
    let bb = Bitbucket::new(allowing(&url, ClientOptions::default())).unwrap();
    let api = format!("{url}/2.0");
    let real = bb.credential(&api, &url, &admin(), 1000).unwrap();
    let again = bb.credential(&format!("{api}/"), &format!("{url}/"), &admin(), 1000).unwrap();
    assert!(Arc::ptr_eq(&real, &again), "same account, same secret, same URLs: one credential and one budget");
    let junk = Auth::ApiToken { email: "admin@acme.test".into(), token: SecretString::new("junk") };
    let other = bb.credential(&api, &url, &junk, 1).unwrap();
    assert!(!Arc::ptr_eq(&real, &other), "another secret is another credential");
    assert_eq!(real.auth(), &admin(), "naming the account with another secret changes nothing of the real one");
    assert_eq!(real.limiter_budget(), 1000, "nor its budget");
    assert!(!real.identity().contains("admin@acme.test") && !real.identity().contains("tok-admin"));
}

#[tokio::test]
async fn urls_outside_the_allowed_list_are_refused_before_any_request() {
    let bb = Bitbucket::new(ClientOptions::default()).unwrap();
    for (api, site) in [
        ("http://127.0.0.1:9/2.0", "https://bitbucket.org"),
        ("https://api.bitbucket.org/2.0", "https://bitbucket.org.evil.test"),
        ("https://api.bitbucket.org@evil.test/2.0", "https://bitbucket.org"),
    ] {
        let e = bb.credential(api, site, &admin(), 1000).err().expect("refused");
        assert_eq!(e.reason(), "URLNotAllowed", "{api} {site}: {e}");
    }
    assert!(bb.credential("https://API.bitbucket.org:443/2.0/", "https://bitbucket.org/", &admin(), 1000).is_ok());
}

#[tokio::test]
async fn a_spent_budget_fails_at_once_and_says_when() {
    let url = sim(CONFIG).await;
    let bb = Arc::new(Bitbucket::new(allowing(&url, ClientOptions::default())).unwrap());
    let cred = bb.credential(&format!("{url}/2.0"), &url, &admin(), 1).unwrap();
    let c = bb.workspace("acme", cred);
    c.verify().await.expect("the one request of the hour");
    let started = std::time::Instant::now();
    let e = c.verify().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "no waiting for budget");
    assert!(matches!(e, Error::BudgetExhausted { .. }), "{e:?}");
    assert_eq!(e.reason(), "RateLimited");
    assert!(e.retry_after().is_some_and(|d| d > Duration::from_secs(60)));
}

#[tokio::test]
async fn a_next_link_to_another_origin_is_not_followed() {
    let url = sim(&format!("{CONFIG}faults: {{foreignNextPort: 9}}\n")).await;
    let c = client(&url, admin(), ClientOptions::default());
    let e = c.list_keys(&Target::Repository("api".into())).await.unwrap_err();
    assert!(matches!(&e, Error::Decode(m) if m.contains("next")), "{e:?}");
}

#[tokio::test]
async fn a_404_on_delete_counts_as_removed_only_when_the_target_still_answers() {
    let url = sim(CONFIG).await;
    let c = client(&url, admin(), fast());
    let api = Target::Repository("api".into());
    let created = c.create_key(&api, key().public_key(), "x").await.unwrap();
    let http = reqwest::Client::new();
    let variants = |v: serde_json::Value| http.put(format!("{url}/_sim/deploy-key-variants")).json(&v).send();
    let hidden = serde_json::json!({"bareNotFound": true, "hidden": [{"repository": "acme/api", "credential": "admin@acme.test"}]});
    assert!(variants(hidden).await.unwrap().status().is_success());
    let e = c.delete_key(&api, created.id).await.unwrap_err();
    assert_eq!(e, Error::TargetNotVisible("repository acme/api".into()));
    assert_eq!(e.reason(), "TargetNotVisible");
    assert!(e.is_transient(), "access may come back");
    assert!(variants(serde_json::json!({"bareNotFound": true})).await.unwrap().status().is_success());
    // Gone for real (deleted in Bitbucket's UI); the bare 404 alone says nothing, the listing does.
    assert!(http.delete(format!("{url}/_sim/keys/{}", created.id)).send().await.unwrap().status().is_success());
    c.delete_key(&api, created.id).await.expect("the repository answers and lists no such key");
}
