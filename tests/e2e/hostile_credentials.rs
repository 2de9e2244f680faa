//! A hostile tenant against the credentials of another: tenant B names tenant A's account
//! or OAuth consumer with a junk secret and Bitbucket URLs of its own (a TCP listener the
//! test runs, which records everything it receives). A's secret must never arrive there,
//! B must not become Ready on A's credential, and A keeps working. Bitbucket URLs the
//! operator does not allow are refused before any request, and a `next` link to another
//! origin is not followed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Env, SIM_CONFIG, cluster, create_namespace, eventually, free_port, kubectl, kubectl_apply, set_faults};

const READY: Duration = Duration::from_secs(60);
const A_CONSUMER: &str = "ck-main:cs-main-secret-0123456789";
const A_TOKEN: &str = "admin@acme.test:tok-admin-0123456789";

/// A pretend Bitbucket that records every request: first line, headers (Basic credentials
/// decoded) and body. Token requests get a token when `grant_tokens`, the first one only
/// once the test releases it; everything else gets 401.
struct Listener {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Listener {
    async fn start(grant_tokens: bool, hold_first: bool) -> Listener {
        let port = free_port();
        let socket = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let release = Arc::new(tokio::sync::Semaphore::new(if hold_first { 0 } else { 1000 }));
        let (s, r) = (seen.clone(), release.clone());
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Ok((mut conn, _)) = socket.accept().await else { return };
                let request = read_request(&mut conn).await;
                s.lock().unwrap().push(request.clone());
                let is_token = request.contains("/site/oauth2/access_token");
                let hold = is_token && first;
                first &= !is_token;
                let r = r.clone();
                tokio::spawn(async move {
                    if hold {
                        let _ = r.acquire().await.map(|p| p.forget());
                    }
                    let (status, body) = if is_token && grant_tokens && hold {
                        (
                            "200 OK",
                            r#"{"access_token":"token-from-b","scope":"repository:admin project:admin","expires_in":7200,"token_type":"bearer"}"#,
                        )
                    } else if is_token {
                        ("400 Bad Request", r#"{"error":"invalid_client","error_description":"Invalid OAuth client credentials"}"#)
                    } else {
                        ("401 Unauthorized", r#"{"type":"error","error":{"message":"Invalid credentials"}}"#)
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Listener { url: format!("http://127.0.0.1:{port}"), seen, release }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn assert_never_received(&self, secrets: &[&str]) {
        for r in self.seen() {
            for s in secrets {
                let first_line = r.lines().next().unwrap_or_default();
                assert!(!r.contains(s), "the tenant's listener received another tenant's secret in: {first_line}");
            }
        }
    }
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                break;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&buf).to_string();
    // Decode Basic credentials, so that a secret sent in one is visible as itself.
    let decoded: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .filter_map(|(_, v)| v.trim().strip_prefix("Basic ").map(str::to_string))
        .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .collect();
    for d in decoded {
        text.push_str(&format!("\n[basic credentials] {d}"));
    }
    text
}

fn apply_in(ns: &str, yaml: &str) {
    let (ok, out) = kubectl_apply(&cluster().kubeconfig, ns, yaml);
    assert!(ok, "kubectl apply in {ns}: {out}");
}

/// A namespace of its own for tenant B, served by the same operator as A's.
fn tenant_b(name: &str) -> String {
    use rand::Rng;
    let suffix: String = (0..5).map(|_| (b'a' + rand::thread_rng().gen_range(0..26)) as char).collect();
    format!("{name}-b-{suffix}")
}

fn workspace(name: &str, api: &str, site: &str, auth: &str, secret: &str) -> String {
    format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {{name: {name}}}\nspec:\n  workspace: acme\n  apiURL: \"{api}\"\n  siteURL: \"{site}\"\n  sshHost: git.acme.test\n  knownHosts: \"git.acme.test ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO\"\n  auth: {{{auth}: {{secretRef: {{name: {secret}}}}}}}\n"
    )
}

fn secret(name: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {data}\n---\n")
}

fn access_key(name: &str, ws: &str, repo: &str) -> String {
    format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: {ws}}}\n  repositories: [{repo}]\n"
    )
}

/// The Ready condition of a workspace in another namespace: (status, reason).
fn ready_in(ns: &str, name: &str) -> Option<(String, String)> {
    let out = kubectl(&cluster().kubeconfig, &["get", "bitbucketworkspaces", "-n", ns, name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let c = v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
    Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
}

/// B's workspace gets an answer, and for `settle` afterwards it is never Ready.
async fn assert_never_ready(ns: &str, name: &str, settle: Duration) -> String {
    let reason = eventually("tenant B's workspace gets an answer", READY, || async {
        ready_in(ns, name).map(|(s, r)| {
            assert_ne!(s, "True", "tenant B's workspace became Ready on another tenant's credential ({r})");
            r
        })
    })
    .await;
    let until = tokio::time::Instant::now() + settle;
    while tokio::time::Instant::now() < until {
        if let Some((s, r)) = ready_in(ns, name) {
            assert_ne!(s, "True", "tenant B's workspace became Ready on another tenant's credential ({r})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reason
}

/// Tenant A keeps working: a new access key of A's becomes Ready.
async fn a_still_works(env: &Env, name: &str) {
    env.apply(&access_key(name, "acme", "web")).await;
    env.wait_ready("bitbucketaccesskeys", name, READY).await;
}

#[tokio::test]
async fn a_workspace_naming_another_tenants_oauth_consumer_never_receives_its_secret() {
    let listener = Listener::start(true, true).await;
    let b = tenant_b("hostile-oauth");
    let watch_b = format!("--watch-namespaces={b}");
    let env = Env::with_allowed("hostile-oauth", SIM_CONFIG, &[&watch_b], &[&listener.url]).await;
    create_namespace(&env.client, &b, &[]).await;
    let sim = env.sim.url.clone();
    // Tenant A: the consumer ck-main, Ready.
    env.apply(&format!(
        "{}{}",
        secret("bb-consumer", "{key: ck-main, secret: cs-main-secret-0123456789}"),
        workspace("acme", &format!("{sim}/2.0"), &sim, "oauthConsumer", "bb-consumer")
    ))
    .await;
    env.wait_ready("bitbucketworkspaces", "acme", READY).await;

    // Tenant B: the same consumer key with a junk secret, A's API URL, its own site.
    apply_in(
        &b,
        &format!(
            "{}{}",
            secret("junk", "{key: ck-main, secret: junk-secret-of-tenant-b}"),
            workspace("acme", &format!("{sim}/2.0"), &listener.url, "oauthConsumer", "junk")
        ),
    );
    // While B's first token request is in flight, A's workspace is checked again.
    eventually("tenant B's token request arrives", READY, || async { (!listener.seen().is_empty()).then_some(()) }).await;
    kubectl(&cluster().kubeconfig, &["annotate", "-n", &env.ns, "bitbucketworkspaces", "acme", "poke=1", "--overwrite"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    listener.release.add_permits(1000);

    let reason = assert_never_ready(&b, "acme", Duration::from_secs(10)).await;
    eprintln!("tenant B's workspace: {reason}; the listener received {} requests", listener.seen().len());
    listener.assert_never_received(&[A_CONSUMER, "cs-main-secret-0123456789"]);
    assert!(listener.seen().iter().any(|r| r.contains("ck-main:junk-secret-of-tenant-b")), "B's own secret went to B's site");
    a_still_works(&env, "a-key").await;
    env.wait_ready("bitbucketworkspaces", "acme", READY).await;
    listener.assert_never_received(&[A_CONSUMER, "cs-main-secret-0123456789"]);
    env.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn a_workspace_naming_another_tenants_api_token_account_never_receives_its_token() {
    let listener = Listener::start(false, false).await;
    let b = tenant_b("hostile-token");
    let watch_b = format!("--watch-namespaces={b}");
    let env = Env::with_allowed("hostile-token", SIM_CONFIG, &[&watch_b], &[&listener.url]).await;
    create_namespace(&env.client, &b, &[]).await;
    env.workspace().await;
    env.apply(&access_key("a-first", "acme", "api")).await;
    env.wait_ready("bitbucketaccesskeys", "a-first", READY).await;

    // Tenant B: A's account with a junk token, and Bitbucket URLs of its own.
    let api = format!("{}/2.0", listener.url);
    apply_in(
        &b,
        &format!(
            "{}{}",
            secret("junk", "{email: admin@acme.test, token: junk-token-of-tenant-b}"),
            workspace("acme", &api, &listener.url, "apiToken", "junk")
        ),
    );
    // A works at the same time: every resolve of A's key reads A's real token.
    a_still_works(&env, "a-second").await;
    let reason = assert_never_ready(&b, "acme", Duration::from_secs(5)).await;
    assert_eq!(reason, "Unauthorized");
    listener.assert_never_received(&[A_TOKEN, "tok-admin-0123456789"]);
    assert!(listener.seen().iter().any(|r| r.contains("admin@acme.test:junk-token-of-tenant-b")), "B's own token went to B's URL");
    env.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn a_workspace_naming_another_tenants_account_does_not_become_ready_on_its_token() {
    // Same API URL as A's, junk token: while A's real token is in use, B's retried
    // request must still carry B's own junk.
    let b = tenant_b("hostile-shared");
    let watch_b = format!("--watch-namespaces={b}");
    let env = Env::with_allowed("hostile-shared", SIM_CONFIG, &[&watch_b], &[]).await;
    create_namespace(&env.client, &b, &[]).await;
    env.workspace().await;
    let sim = env.sim.url.clone();
    let before = env.sim.total_requests().await;
    set_faults(&env.sim, serde_json::json!({"errorRate": 1.0})).await;
    apply_in(
        &b,
        &format!(
            "{}{}",
            secret("junk", "{email: admin@acme.test, token: junk-token-of-tenant-b}"),
            workspace("acme", &format!("{sim}/2.0"), &sim, "apiToken", "junk")
        ),
    );
    // B's first attempt fails (a 500); while it backs off, A reads its real token again.
    eventually("tenant B's first request", READY, || async { (env.sim.total_requests().await > before).then_some(()) }).await;
    kubectl(&cluster().kubeconfig, &["annotate", "-n", &env.ns, "bitbucketworkspaces", "acme", "poke=1", "--overwrite"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    set_faults(&env.sim, serde_json::json!({})).await;
    let reason = assert_never_ready(&b, "acme", Duration::from_secs(10)).await;
    eprintln!("tenant B's workspace: {reason}");
    a_still_works(&env, "a-key").await;
    env.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn a_workspace_at_a_url_the_operator_does_not_allow_is_refused_before_any_request() {
    let listener = Listener::start(true, false).await;
    let env = Env::new("hostile-url").await;
    env.workspace().await;
    let api = format!("{}/2.0", listener.url);
    env.apply(&format!(
        "{}---\n{}---\n{}---\n{}",
        workspace("elsewhere", &api, &listener.url, "apiToken", "bb-admin"),
        secret("bb-consumer", "{key: ck-main, secret: cs-main-secret-0123456789}"),
        workspace("elsewhere-oauth", &format!("{}/2.0", env.sim.url), &listener.url, "oauthConsumer", "bb-consumer"),
        access_key("uses-elsewhere", "elsewhere", "api"),
    ))
    .await;
    let message = env.wait_reason("bitbucketworkspaces", "elsewhere", "URLNotAllowed", READY).await;
    assert!(message.contains(&listener.url) && message.contains("--allowed-bitbucket-urls"), "{message}");
    env.wait_reason("bitbucketworkspaces", "elsewhere-oauth", "URLNotAllowed", READY).await;
    env.wait_reason("bitbucketaccesskeys", "uses-elsewhere", "URLNotAllowed", READY).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(listener.seen().is_empty(), "a URL that is not allowed was contacted: {:?}", listener.seen());
    env.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn a_next_link_to_another_origin_is_not_followed() {
    let listener = Listener::start(false, false).await;
    let env = Env::new("hostile-next").await;
    env.workspace().await;
    let port: u16 = listener.url.rsplit(':').next().unwrap().parse().unwrap();
    set_faults(&env.sim, serde_json::json!({"foreignNextPort": port})).await;
    env.apply(&access_key("paged", "acme", "api")).await;
    let message = env.wait_reason("bitbucketaccesskeys", "paged", "UnexpectedResponse", READY).await;
    assert!(message.contains("next"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(listener.seen().is_empty(), "a next link to another origin was followed: {:?}", listener.seen());
    env.assert_no_secret_leaked(&[]).await;
}
