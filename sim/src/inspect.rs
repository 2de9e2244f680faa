//! `/_sim/`: what tests use to look inside the simulator and to turn its knobs.
//! No authentication, no faults, not counted in the request log.

use std::time::Instant;

use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::config::{FaultConfig, OAuthConsumerConfig, RateLimitConfig, validate_consumers, validate_faults, validate_rate_limit};
use super::deploy_keys::persist;
use super::response::SimResponse;
use super::routes::{parse_key_id, segments};
use super::simulator::{SimRequest, Simulator, lock};
use super::variants::DeployKeyVariants;

pub fn is_inspection(path: &str) -> bool {
    path == "/_sim" || path.starts_with("/_sim/")
}

pub fn handle(sim: &Simulator, request: &SimRequest) -> SimResponse {
    let Some(segments) = segments(&request.path) else {
        return not_found();
    };
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = &request.method;
    match (s.as_slice(), method) {
        (["_sim", "healthz"], &Method::GET) => SimResponse::text(StatusCode::OK, "ok"),
        (["_sim", "keys"], &Method::GET) => list_keys(sim),
        (["_sim", "keys", id], &Method::DELETE) => delete_key(sim, id),
        (["_sim", "requests"], &Method::GET) => {
            let log = lock(&sim.log).clone();
            json_ok(&log)
        }
        (["_sim", "requests", "reset"], &Method::POST) => {
            lock(&sim.log).reset();
            SimResponse::empty(StatusCode::NO_CONTENT)
        }
        (["_sim", "faults"], &Method::GET) => json_ok(&lock(&sim.faults).config()),
        (["_sim", "faults"], &Method::PUT) => put_faults(sim, &request.body),
        (["_sim", "error-variants"], &Method::GET) => json_ok(&*lock(&sim.error_variants)),
        (["_sim", "error-variants"], &Method::PUT) => put_error_variants(sim, &request.body),
        (["_sim", "rate-limit"], &Method::GET) => rate_limit_status(sim),
        (["_sim", "rate-limit"], &Method::PUT) => put_rate_limit(sim, &request.body),
        (["_sim", "rate-limit", "reset"], &Method::POST) => {
            lock(&sim.limiter).reset();
            SimResponse::empty(StatusCode::NO_CONTENT)
        }
        (["_sim", "oauth-consumers"], &Method::GET) => json_ok(&public_consumers(lock(&sim.state).consumers())),
        (["_sim", "oauth-consumers"], &Method::PUT) => put_consumers(sim, &request.body),
        (["_sim", "deploy-key-variants"], &Method::GET) => json_ok(&*lock(&sim.variants)),
        (["_sim", "deploy-key-variants"], &Method::PUT) => put_variants(sim, &request.body),
        (["_sim", "authorized"], &Method::GET) => authorized(sim, request.query.as_deref()),
        (["_sim", "authorized-keys"], &Method::GET) => authorized_keys(sim, request.query.as_deref()),
        (
            [
                "_sim",
                "healthz"
                | "keys"
                | "requests"
                | "faults"
                | "error-variants"
                | "rate-limit"
                | "oauth-consumers"
                | "authorized"
                | "authorized-keys"
                | "deploy-key-variants",
            ]
            | ["_sim", "keys", _]
            | ["_sim", "requests" | "rate-limit", "reset"],
            _,
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
        _ => not_found(),
    }
}

fn list_keys(sim: &Simulator) -> SimResponse {
    let state = lock(&sim.state);
    let keys: Vec<Value> = state
        .keys()
        .map(|k| {
            json!({
                "id": k.id,
                "key": k.key,
                "comment": k.comment,
                "label": k.label,
                "target": k.target.inspection_json(),
                "fingerprint": k.fingerprint,
                "createdOn": k.created_on,
            })
        })
        .collect();
    json_ok(&keys)
}

/// A key disappearing in Bitbucket (its adder lost access, an admin clicked delete).
fn delete_key(sim: &Simulator, id: &str) -> SimResponse {
    let Some(id) = parse_key_id(id) else {
        return error(StatusCode::NOT_FOUND, &format!("no key with id {id}"));
    };
    let removed = lock(&sim.state).remove_key(id, jiff::Timestamp::now().as_millisecond());
    match persist(removed) {
        Ok(Some(_)) => SimResponse::empty(StatusCode::NO_CONTENT),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no key with id {id}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot persist state"),
    }
}

fn put_error_variants(sim: &Simulator, body: &[u8]) -> SimResponse {
    match serde_json::from_slice::<super::config::ErrorVariants>(body) {
        Ok(variants) => {
            *lock(&sim.error_variants) = variants;
            json_ok(&variants)
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &format!("invalid error variants: {e}")),
    }
}

fn put_faults(sim: &Simulator, body: &[u8]) -> SimResponse {
    let faults: FaultConfig = match serde_json::from_slice(body) {
        Ok(faults) => faults,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid faults: {e}")),
    };
    if let Err(e) = validate_faults(&faults) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    lock(&sim.faults).set_config(faults);
    json_ok(&faults)
}

/// Replaces the deploy-key variants (omitted fields: as documented, nothing hidden).
fn put_variants(sim: &Simulator, body: &[u8]) -> SimResponse {
    let variants: DeployKeyVariants = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid deploy-key variants: {e}")),
    };
    if let Err(e) = variants.validate() {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    *lock(&sim.variants) = variants.clone();
    json_ok(&variants)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RateLimitStatus {
    requests_per_window: u64,
    window_seconds: u64,
    usage: Vec<super::ratelimit::Usage>,
}

fn rate_limit_status(sim: &Simulator) -> SimResponse {
    let mut limiter = lock(&sim.limiter);
    let config = limiter.config();
    json_ok(&RateLimitStatus {
        requests_per_window: config.requests_per_window,
        window_seconds: config.window_seconds,
        usage: limiter.usage(Instant::now()),
    })
}

fn put_rate_limit(sim: &Simulator, body: &[u8]) -> SimResponse {
    let limit: RateLimitConfig = match serde_json::from_slice(body) {
        Ok(limit) => limit,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid rate limit: {e}")),
    };
    if let Err(e) = validate_rate_limit(&limit) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    lock(&sim.limiter).set_config(limit);
    rate_limit_status(sim)
}

/// Consumers without their secrets.
fn public_consumers(consumers: &[OAuthConsumerConfig]) -> Value {
    consumers
        .iter()
        .map(|c| {
            json!({
                "key": c.key,
                "scopes": c.scopes,
                "expiresIn": c.expires_in,
                "legacyScopesField": c.legacy_scopes_field,
                "public": c.public,
                "workspace": c.workspace,
            })
        })
        .collect()
}

/// Replaces the consumer list, as an admin editing consumers in Bitbucket's UI would
/// (e.g. resetting a secret). Tokens already minted stay valid until they expire unless
/// their consumer is gone.
fn put_consumers(sim: &Simulator, body: &[u8]) -> SimResponse {
    let consumers: Vec<OAuthConsumerConfig> = match serde_json::from_slice(body) {
        Ok(consumers) => consumers,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid consumers: {e}")),
    };
    if let Err(e) = validate_consumers(&consumers) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let public = public_consumers(&consumers);
    let replaced = lock(&sim.state).replace_consumers(consumers, jiff::Timestamp::now().as_millisecond());
    match persist(replaced) {
        Ok(()) => json_ok(&public),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot persist state"),
    }
}

/// Would Bitbucket let this key read this repository over SSH? Yes if the key is on the
/// repository itself or on the repository's project.
fn authorized(sim: &Simulator, query: Option<&str>) -> SimResponse {
    let params = QueryParams::parse(query);
    let (Some(fingerprint), Some(repository)) = (params.fingerprint, params.repository) else {
        return error(StatusCode::BAD_REQUEST, "query parameters `fingerprint` and `repository` are required");
    };
    let allowed = sim.catalog.repository_by_full_name(&repository).is_some_and(|repo| {
        let project = repo.project.as_ref().and_then(|key| sim.catalog.project(&repo.workspace, key));
        let targets = [Some(repo.target()), project.map(|p| p.target())];
        let state = lock(&sim.state);
        state.keys().any(|k| k.fingerprint == fingerprint && targets.iter().flatten().any(|t| *t == k.target))
    });
    let status = if allowed { StatusCode::OK } else { StatusCode::FORBIDDEN };
    SimResponse::json(status, &json!({ "allowed": allowed }))
}

/// authorized_keys lines for a fingerprint, for an sshd `AuthorizedKeysCommand`.
fn authorized_keys(sim: &Simulator, query: Option<&str>) -> SimResponse {
    let Some(fingerprint) = QueryParams::parse(query).fingerprint else {
        return SimResponse::text(StatusCode::BAD_REQUEST, "query parameter `fingerprint` is required\n");
    };
    let state = lock(&sim.state);
    let mut lines: Vec<String> = Vec::new();
    for k in state.keys().filter(|k| k.fingerprint == fingerprint) {
        // The same key may sit on many targets; sshd wants it once.
        if lines.iter().any(|l| l.split(' ').take(2).eq(k.key.split(' ').take(2))) {
            continue;
        }
        let line = if k.comment.is_empty() { k.key.clone() } else { format!("{} {}", k.key, k.comment) };
        lines.push(line);
    }
    let mut body = lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    SimResponse::text(StatusCode::OK, body)
}

struct QueryParams {
    fingerprint: Option<String>,
    repository: Option<String>,
}

impl QueryParams {
    fn parse(query: Option<&str>) -> Self {
        let mut out = Self { fingerprint: None, repository: None };
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                // An unencoded `+` in `SHA256:ab+c` arrives as a space; base64 has no
                // spaces, so put the plus back rather than fail confusingly.
                "fingerprint" if out.fingerprint.is_none() => {
                    out.fingerprint = Some(value.replace(' ', "+"));
                }
                "repository" if out.repository.is_none() => out.repository = Some(value.into_owned()),
                _ => {}
            }
        }
        out
    }
}

fn json_ok<T: Serialize>(value: &T) -> SimResponse {
    match serde_json::to_value(value) {
        Ok(value) => SimResponse::json(StatusCode::OK, &value),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialise"),
    }
}

fn error(status: StatusCode, message: &str) -> SimResponse {
    SimResponse::json(status, &json!({ "error": message }))
}

fn not_found() -> SimResponse {
    error(StatusCode::NOT_FOUND, "no such inspection endpoint")
}
