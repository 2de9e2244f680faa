//! The request pipeline: faults, authentication, rate limit, scopes, then the endpoint.
//! Independent of the HTTP server, so it can be driven directly by tests.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::header::{HOST, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::SimError;
use super::auth::{AuthFailure, Credentials, authenticate_client, missing_scopes, parse_authorization, required_scopes};
use super::catalog::Catalog;
use super::config::{ErrorVariants, OAuthClientError, ScopeErrors, SimConfig};
use super::deploy_keys::{self, Context};
use super::faults::{FaultPlan, Faults};
use super::inspect;
use super::model;
use super::oauth;
use super::ratelimit::RateLimiter;
use super::recorder::{RecordedRequest, RequestLog};
use super::response::SimResponse;
use super::routes::{Operation, Resolved, Route, parse_route, resolve};
use super::state::State;
use super::variants::DeployKeyVariants;

/// One HTTP request as the simulator sees it.
#[derive(Debug, Clone)]
pub struct SimRequest {
    pub method: Method,
    /// Raw (percent-encoded) path.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Simulator {
    pub(super) catalog: Catalog,
    pub(super) credentials: Credentials,
    pub(super) default_pagelen: u32,
    pub(super) state: Mutex<State>,
    pub(super) limiter: Mutex<RateLimiter>,
    pub(super) faults: Mutex<Faults>,
    pub(super) log: Mutex<RequestLog>,
    pub(super) variants: Mutex<DeployKeyVariants>,
    pub(super) error_variants: Mutex<ErrorVariants>,
    /// Used for absolute URLs when a request has no usable Host header.
    fallback_base: String,
}

/// Locks ignoring poisoning: every critical section leaves the data consistent, so a
/// panic elsewhere must not take the simulator down with it.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Simulator {
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        config.validate()?;
        let seed = config.seed.unwrap_or_else(rand::random);
        tracing::info!(seed, "fault injection seed (set `seed` in the config to replay)");
        let state = State::load_or_new(config.oauth_consumers.clone(), config.state_path.clone(), jiff::Timestamp::now().as_millisecond())?;
        Ok(Self {
            catalog: Catalog::from_config(&config),
            credentials: Credentials { api_tokens: config.api_tokens.clone(), access_tokens: config.access_tokens.clone() },
            default_pagelen: config.pagelen(),
            state: Mutex::new(state),
            limiter: Mutex::new(RateLimiter::new(config.rate_limit)),
            faults: Mutex::new(Faults::new(config.faults, seed)),
            log: Mutex::new(RequestLog::new(config.request_log_size())),
            variants: Mutex::new(config.deploy_key_variants.clone()),
            error_variants: Mutex::new(config.error_variants),
            fallback_base: "http://localhost".into(),
        })
    }

    /// Sets the base URL used when a request carries no Host header.
    pub fn with_fallback_base(mut self, base: impl Into<String>) -> Self {
        self.fallback_base = base.into();
        self
    }

    pub async fn handle(&self, request: SimRequest) -> SimResponse {
        if inspect::is_inspection(&request.path) {
            // Test plumbing: no faults, no auth, not counted.
            return inspect::handle(self, &request);
        }
        if is_git_info_refs(&request.path) {
            let (response, credential) = self.git_http(&request);
            self.record(&request, "git_info_refs", response.status, credential);
            return response;
        }
        let route = parse_route(&request.path);
        let resolved = resolve(&route, &request.method);
        let plan = if is_api_path(&request.path) { lock(&self.faults).plan() } else { FaultPlan::default() };
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        let (response, credential) = if let Some(status) = plan.server_error {
            let message = status.canonical_reason().unwrap_or("Something went wrong");
            (SimResponse::bitbucket_error(status, message), self.identify(&request, &resolved))
        } else if plan.rate_limit_burst {
            (SimResponse::rate_limited(), self.identify(&request, &resolved))
        } else {
            self.process(&request, &route, &resolved)
        };
        let response = if request.path.starts_with("/2.0/") && lock(&self.error_variants).detail_as_object {
            detail_as_object(response)
        } else {
            response
        };
        self.record(&request, resolved.kind(), response.status, credential);
        if let Some(hold) = plan.hold_answer {
            // The request already took effect; only the answer is late.
            tokio::time::sleep(hold).await;
        }
        response
    }

    /// Git over HTTPS (`/{workspace}/{repo}.git/info/refs`): Bitbucket asks for Basic
    /// credentials and takes an OAuth access token as the password of `x-token-auth`.
    /// The simulator serves no repository content: an accepted token gets 404, so tests
    /// learn from the request log that git sent it.
    fn git_http(&self, request: &SimRequest) -> (SimResponse, Option<String>) {
        let challenge = || {
            SimResponse::bitbucket_error(StatusCode::UNAUTHORIZED, "Authentication required")
                .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Bitbucket.org HTTP\""))
        };
        let token = match parse_authorization(&request.headers) {
            crate::auth::Authorization::Basic { user, secret } if user == "x-token-auth" => secret,
            _ => return (challenge(), None),
        };
        let bearer = crate::auth::Authorization::Bearer(token);
        let now = jiff::Timestamp::now();
        match self.credentials.authenticate(&bearer, false, &lock(&self.state), now.as_millisecond()) {
            Ok(principal) => (
                SimResponse::bitbucket_error(StatusCode::NOT_FOUND, "the simulator serves no git content"),
                Some(principal.credential.id().to_owned()),
            ),
            Err(_) => (challenge(), None),
        }
    }

    fn process(&self, request: &SimRequest, route: &Route, resolved: &Resolved) -> (SimResponse, Option<String>) {
        let op = match resolved {
            Resolved::NotFound => {
                return (SimResponse::bitbucket_error(StatusCode::NOT_FOUND, "Resource not found"), None);
            }
            Resolved::MethodNotAllowed { allow } => {
                let response =
                    SimResponse::bitbucket_error(StatusCode::METHOD_NOT_ALLOWED, &format!("Method {} not allowed", request.method))
                        .with_header(axum::http::header::ALLOW, HeaderValue::from_static(allow));
                return (response, None);
            }
            Resolved::Op(op) => *op,
        };
        if op == Operation::Token {
            return self.issue_token(request);
        }

        let authorization = parse_authorization(&request.headers);
        let now = jiff::Timestamp::now();
        let authenticated = self.credentials.authenticate(
            &authorization,
            token_in_query(request.query.as_deref()),
            &lock(&self.state),
            now.as_millisecond(),
        );
        let principal = match authenticated {
            Ok(principal) => principal,
            Err(AuthFailure::Unauthorized(message)) => {
                let response = SimResponse::bitbucket_error(StatusCode::UNAUTHORIZED, &message)
                    .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Bitbucket.org HTTP\""));
                return (response, None);
            }
            Err(AuthFailure::Forbidden(message)) => {
                return (SimResponse::bitbucket_error(StatusCode::FORBIDDEN, &message), self.credentials.access_token_name(&authorization));
            }
        };
        let credential = principal.credential.id().to_owned();
        if !lock(&self.limiter).admit(&credential, Instant::now()) {
            return (SimResponse::rate_limited(), Some(credential));
        }
        if let Some(response) = self.scope_error(op, &principal) {
            return (response, Some(credential));
        }
        if let Some(home) = self.consumer_home(&principal.credential)
            && route_workspace(route).is_some_and(|ws| ws != home)
        {
            // The consumer's app user is a member of its own workspace only.
            return (
                SimResponse::bitbucket_error(StatusCode::FORBIDDEN, "Access denied. You do not have access to this workspace."),
                Some(credential),
            );
        }
        let base = self.base_url(&request.headers);
        let next_base = lock(&self.faults).config().foreign_next_port.map(|p| format!("http://127.0.0.1:{p}"));
        let variants = lock(&self.variants).clone();
        let mut state = lock(&self.state);
        let response = deploy_keys::handle(
            op,
            route,
            request.query.as_deref(),
            &request.body,
            Context {
                catalog: &self.catalog,
                state: &mut state,
                principal: &principal,
                base: &base,
                default_pagelen: self.default_pagelen,
                now,
                next_base,
                variants: &variants,
            },
        );
        (response, Some(credential))
    }

    /// The 403 of a credential that lacks a scope `op` needs, in the shape the errors
    /// variant chooses (FACTS.md: Bitbucket's is a generic message, the scopes in a
    /// structured `detail`).
    fn scope_error(&self, op: Operation, principal: &crate::auth::Principal) -> Option<SimResponse> {
        let required = required_scopes(op, &principal.credential);
        let missing = missing_scopes(required, &principal.scopes);
        if missing.is_empty() {
            return None;
        }
        if lock(&self.error_variants).scope_errors == ScopeErrors::Real {
            let body = serde_json::json!({"type": "error", "error": {
                "message": "Your credentials lack one or more required privilege scopes.",
                "detail": {"required": required, "granted": principal.scopes},
            }});
            return Some(SimResponse::json(StatusCode::FORBIDDEN, &body));
        }
        let message = format!("Your credentials lack one or more required privilege scopes: {}.", missing.join(", "));
        let detail = format!("Required: {}. Granted: {}.", required.join(", "), principal.scopes.join(", "));
        Some(SimResponse::json(StatusCode::FORBIDDEN, &model::error_body(&message, Some(&detail), None)))
    }

    fn issue_token(&self, request: &SimRequest) -> (SimResponse, Option<String>) {
        let authorization = parse_authorization(&request.headers);
        let code = lock(&self.error_variants).oauth_client_error;
        let consumer = match authenticate_client(&authorization, lock(&self.state).consumers()) {
            Ok(consumer) => consumer.clone(),
            Err(description) => {
                let response = match code {
                    OAuthClientError::InvalidClient => oauth::oauth_error("invalid_client", &description),
                    // bitbucket.org's words (FACTS.md).
                    OAuthClientError::UnauthorizedClient if matches!(authorization, crate::auth::Authorization::Basic { .. }) => {
                        oauth::oauth_error("unauthorized_client", "Invalid OAuth client credentials")
                    }
                    OAuthClientError::UnauthorizedClient => {
                        oauth::oauth_error("unauthorized_client", "Requests must be authenticated using OAuth client credentials")
                    }
                };
                return (response, None);
            }
        };
        let credential = Some(consumer.key.clone());
        if consumer.public {
            let code = match code {
                OAuthClientError::InvalidClient => "invalid_client",
                OAuthClientError::UnauthorizedClient => "unauthorized_client",
            };
            return (oauth::oauth_error(code, oauth::PUBLIC_CONSUMER), credential);
        }
        // Token requests spend the consumer's budget like any other call.
        if !lock(&self.limiter).admit(&consumer.key, Instant::now()) {
            return (SimResponse::rate_limited(), credential);
        }
        if let Err(response) = oauth::check_grant(&request.body) {
            return (response, credential);
        }
        let now = jiff::Timestamp::now();
        let (token, record) = oauth::mint(&consumer, now.as_millisecond());
        let inserted = lock(&self.state).insert_token(record, now.as_millisecond());
        match deploy_keys::persist(inserted) {
            Ok(()) => (oauth::token_response(&consumer, &token), credential),
            Err(response) => (response, credential),
        }
    }

    /// The workspace an OAuth consumer's tokens are confined to, if any.
    fn consumer_home(&self, credential: &crate::auth::Credential) -> Option<String> {
        let crate::auth::Credential::OAuthConsumer { key } = credential else { return None };
        lock(&self.state).consumers().iter().find(|c| &c.key == key).and_then(|c| c.workspace.clone())
    }

    /// Who a request claims to be, without counting it anywhere (for requests answered
    /// by an injected fault).
    fn identify(&self, request: &SimRequest, resolved: &Resolved) -> Option<String> {
        let authorization = parse_authorization(&request.headers);
        let state = lock(&self.state);
        if *resolved == Resolved::Op(Operation::Token) {
            return authenticate_client(&authorization, state.consumers()).ok().map(|c| c.key.clone());
        }
        match self.credentials.authenticate(&authorization, false, &state, jiff::Timestamp::now().as_millisecond()) {
            Ok(principal) => Some(principal.credential.id().to_owned()),
            Err(_) => self.credentials.access_token_name(&authorization),
        }
    }

    fn record(&self, request: &SimRequest, endpoint: &'static str, status: StatusCode, credential: Option<String>) {
        let entry = RecordedRequest {
            method: request.method.to_string(),
            path: request.path.clone(),
            endpoint,
            status: status.as_u16(),
            credential,
            timestamp: jiff::Timestamp::now().to_string(),
        };
        tracing::debug!(
            method = %entry.method,
            path = %entry.path,
            status = entry.status,
            credential = entry.credential.as_deref().unwrap_or("-"),
            "request"
        );
        lock(&self.log).record(entry);
    }

    /// `http://<Host>` as the client addressed us, so absolute URLs in answers work
    /// whatever name or port the client used.
    fn base_url(&self, headers: &HeaderMap) -> String {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok()).filter(|h| is_plausible_host(h));
        let scheme = match headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) {
            Some("https") => "https",
            _ => "http",
        };
        match host {
            Some(host) => format!("{scheme}://{host}"),
            None => self.fallback_base.clone(),
        }
    }
}

/// The workspace a deploy-key or workspace path names.
fn route_workspace(route: &Route) -> Option<&str> {
    match route {
        Route::RepoKeys { workspace, .. }
        | Route::RepoKey { workspace, .. }
        | Route::ProjectKeys { workspace, .. }
        | Route::ProjectKey { workspace, .. }
        | Route::Workspace { workspace } => Some(workspace),
        _ => None,
    }
}

/// A Bitbucket error body with `error.detail` as an object: a string detail becomes
/// `{"message": ...}`, a missing one `{"status": <code>}`; an object stays.
fn detail_as_object(mut response: SimResponse) -> SimResponse {
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&response.body) else { return response };
    let Some(error) = body.get_mut("error").and_then(|e| e.as_object_mut()) else { return response };
    let detail = match error.get("detail") {
        Some(serde_json::Value::Object(_)) => return response,
        Some(serde_json::Value::String(d)) => serde_json::json!({ "message": d }),
        _ => serde_json::json!({ "status": response.status.as_u16() }),
    };
    error.insert("detail".into(), detail);
    response.body = serde_json::to_vec(&body).unwrap_or_default();
    response
}

/// Faults hit only the Bitbucket API surface, never the test plumbing.
fn is_api_path(path: &str) -> bool {
    path.starts_with("/2.0/") || path.starts_with("/site/")
}

fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(name, _)| name == "access_token"))
}

/// A Host header we are willing to echo into URLs (no injection of paths or spaces).
fn is_plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
}

/// `/{workspace}/{repo}[.git]/info/refs`, the first request of a git clone over HTTP.
fn is_git_info_refs(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(parts.as_slice(), [ws, repo, "info", "refs"] if !ws.is_empty() && !repo.is_empty() && *ws != "2.0" && *ws != "_sim")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::AUTHORIZATION;
    use base64::Engine as _;
    use proptest::prelude::*;

    const CONFIG: &str = r#"
workspaces:
  - slug: acme
    repositories: [{slug: api, project: CORE}]
    projects: [{key: CORE}]
apiTokens:
  - {email: admin@acme.test, token: tok-admin, scopes: [admin:repository:bitbucket, write:ssh-key:bitbucket, delete:ssh-key:bitbucket, admin:project:bitbucket]}
oauthConsumers:
  - {key: ck, secret: cs, scopes: [repository:admin, project:admin]}
accessTokens: [{token: repo-access-token}]
seed: 1
"#;

    fn sim() -> Simulator {
        let config = SimConfig::from_yaml(CONFIG).expect("config");
        Simulator::new(config).expect("simulator")
    }

    fn request(method: Method, path: &str, auth: Option<&str>, body: &[u8]) -> SimRequest {
        let mut headers = HeaderMap::new();
        if let Some(auth) = auth.and_then(|a| HeaderValue::from_str(a).ok()) {
            headers.insert(AUTHORIZATION, auth);
        }
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path.to_owned(), None),
        };
        SimRequest { method, path, query, headers, body: Bytes::copy_from_slice(body) }
    }

    fn admin() -> String {
        let basic = base64::engine::general_purpose::STANDARD.encode("admin@acme.test:tok-admin");
        format!("Basic {basic}")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime")
    }

    #[test]
    fn create_list_delete_round_trip() {
        let sim = sim();
        let rt = runtime();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO me@host";
        let body = serde_json::to_vec(&serde_json::json!({"key": key, "label": "ci"})).unwrap_or_default();
        let created = rt.block_on(sim.handle(request(Method::POST, "/2.0/repositories/acme/api/deploy-keys", Some(&admin()), &body)));
        assert_eq!(created.status, StatusCode::OK);
        let value: serde_json::Value = serde_json::from_slice(&created.body).expect("json");
        assert_eq!(value["comment"], "me@host");
        let id = value["id"].as_u64().expect("id");
        let deleted =
            rt.block_on(sim.handle(request(Method::DELETE, &format!("/2.0/repositories/acme/api/deploy-keys/{id}"), Some(&admin()), b"")));
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        assert!(deleted.body.is_empty());
    }

    #[test]
    fn deploy_key_variants_change_the_answers_they_name() {
        let sim = sim();
        let rt = runtime();
        let put = |v: serde_json::Value| {
            let body = serde_json::to_vec(&v).unwrap_or_default();
            let r = rt.block_on(sim.handle(request(Method::PUT, "/_sim/deploy-key-variants", None, &body)));
            assert_eq!(r.status, StatusCode::OK);
        };
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO two words";
        let body = serde_json::to_vec(&serde_json::json!({"key": key})).unwrap_or_default();
        let create = || rt.block_on(sim.handle(request(Method::POST, "/2.0/repositories/acme/api/deploy-keys", Some(&admin()), &body)));
        put(serde_json::json!({"comments": "firstWord", "duplicateMessage": "generic"}));
        let created = create();
        let value: serde_json::Value = serde_json::from_slice(&created.body).expect("json");
        assert_eq!(value["comment"], "two");
        let again = create();
        assert_eq!(again.status, StatusCode::BAD_REQUEST);
        assert!(!String::from_utf8_lossy(&again.body).contains("already added"));
        put(serde_json::json!({"bareNotFound": true, "hidden": [{"repository": "acme/api", "credential": "admin@acme.test"}]}));
        let id = value["id"].as_u64().expect("id");
        let path = format!("/2.0/repositories/acme/api/deploy-keys/{id}");
        let hidden = rt.block_on(sim.handle(request(Method::DELETE, &path, Some(&admin()), b"")));
        assert_eq!(hidden.status, StatusCode::NOT_FOUND);
        assert!(hidden.body.is_empty());
        assert_eq!(lock(&sim.state).keys().count(), 1, "a hidden key stays");
        put(serde_json::json!({}));
        let deleted = rt.block_on(sim.handle(request(Method::DELETE, &path, Some(&admin()), b"")));
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    }

    #[test]
    fn access_token_in_query_is_refused() {
        let sim = sim();
        let response = runtime().block_on(sim.handle(request(
            Method::GET,
            "/2.0/repositories/acme/api/deploy-keys?access_token=whatever",
            Some(&admin()),
            b"",
        )));
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The whole pipeline, from raw method/path/query/headers/body to an answer,
        /// never panics and never answers a 2xx to garbage it cannot have accepted.
        #[test]
        fn arbitrary_requests_never_panic(
            method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "X"]),
            path in prop::sample::select(vec![
                "/2.0/repositories/acme/api/deploy-keys",
                "/2.0/repositories/acme/api/deploy-keys/1",
                "/2.0/repositories/acme/nope/deploy-keys",
                "/2.0/workspaces/acme/projects/CORE/deploy-keys",
                "/2.0/workspaces/acme/projects/CORE/deploy-keys/1",
                "/site/oauth2/access_token",
                "/_sim/keys",
                "/_sim/faults",
                "/_sim/rate-limit",
                "/_sim/oauth-consumers",
                "/_sim/authorized",
                "/_sim/authorized-keys",
                "/_sim/keys/1",
                "/_sim/deploy-key-variants",
            ]).prop_map(str::to_owned).boxed().prop_union("(/[%-~]{0,10}){0,8}".boxed()),
            query in prop::option::of(".{0,40}"),
            auth in prop::option::of(prop::sample::select(vec![
                "admin", "Basic Y2s6Y3M=", "Bearer repo-access-token", "Bearer tok-admin", "Basic !!!", "garbage",
            ])),
            body in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let sim = sim();
            let auth = auth.map(|a| if a == "admin" { admin() } else { a.to_owned() });
            let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Ok(()) };
            let mut req = request(method, &path, auth.as_deref(), &body);
            req.query = query;
            let response = runtime().block_on(sim.handle(req));
            prop_assert!(response.status.as_u16() >= 200);
        }
    }
}
