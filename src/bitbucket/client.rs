use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::allowed::{AllowedUrls, Location};
use super::credential::{Auth, Credential, CredentialKey, Limits, MAX_TOKEN_LIFETIME, Token};
use super::types::{DeployKey, ErrorBody, OAuthErrorBody, Page, Target, TokenBody};
use super::{Error, Result};
use crate::metrics::METRICS;
use crate::sensitive::SecretString;
use crate::sync::Locked;

/// Timeouts and retry policy for every Bitbucket call.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub timeout: Duration,
    /// Attempts per call, the first included, for transient failures.
    pub max_attempts: u32,
    /// First backoff after a transient failure; doubles each attempt, with full jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The window `requestsPerHour` applies to (an hour; scaled down only for tests).
    pub budget_window: Duration,
    /// The cool-down after Bitbucket's 429 (shared by everything using the credential),
    /// doubling while 429s continue, up to `cooldown_max`.
    pub cooldown: Duration,
    pub cooldown_max: Duration,
    /// The Bitbucket URLs workspaces may use (`--allowed-bitbucket-urls`).
    pub allowed_urls: AllowedUrls,
    /// CA certificates trusted besides the built-in roots (`--ca-bundle`).
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            budget_window: super::credential::HOUR,
            cooldown: super::credential::COOLDOWN,
            cooldown_max: super::credential::COOLDOWN_MAX,
            allowed_urls: AllowedUrls::default(),
            extra_roots: Vec::new(),
        }
    }
}

/// Process-wide: one HTTP connection pool and one `Credential` (budget, token cache) per
/// proven secret and URLs (`CredentialKey`), shared by every workspace object that
/// proved the same secret for the same URLs.
///
/// The map is bounded by use: an entry nobody holds and nobody used for a whole budget
/// window is dropped (its budget would be full again anyway; a dropped token is minted
/// again once). A rotated secret's old entry so goes within a window.
pub struct Bitbucket {
    http: reqwest::Client,
    options: ClientOptions,
    credentials: Mutex<Credentials>,
}

struct Credentials {
    map: HashMap<CredentialKey, Arc<Credential>>,
    swept: Instant,
}

impl Bitbucket {
    pub fn new(options: ClientOptions) -> Result<Self> {
        let builder = options.extra_roots.iter().cloned().fold(reqwest::Client::builder(), |b, root| b.add_root_certificate(root));
        let http = builder
            .user_agent(concat!("bitbucket-credentials-operator/", env!("CARGO_PKG_VERSION")))
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            // A redirect may not take a request (or what it carries) to another origin.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
                if !same_origin || attempt.previous().len() > 5 { attempt.stop() } else { attempt.follow() }
            }))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Self { http, options, credentials: Mutex::new(Credentials { map: HashMap::new(), swept: Instant::now() }) })
    }

    /// Refuses a URL outside `--allowed-bitbucket-urls`, before anything is sent to it.
    pub fn check_allowed(&self, url: &str) -> Result<()> {
        self.options.allowed_urls.check(url).map(|_| ())
    }

    /// The shared credential for `auth` at these URLs, created on first use: the same
    /// account or consumer with the same secret at the same URLs shares one (and one
    /// budget); any other secret or URL gets its own. URLs the operator does not allow
    /// are refused here, before any request.
    pub fn credential(&self, api_url: &str, site_url: &str, auth: &Auth, requests_per_hour: u32) -> Result<Arc<Credential>> {
        let api = self.options.allowed_urls.check(api_url)?;
        let site = self.options.allowed_urls.check(site_url)?;
        let key = CredentialKey::new(api, site, auth);
        let mut credentials = self.credentials.locked();
        self.sweep(&mut credentials);
        let cred = credentials
            .map
            .entry(key)
            .or_insert_with_key(|key| {
                let limits = Limits {
                    window: self.options.budget_window,
                    cooldown: self.options.cooldown,
                    cooldown_max: self.options.cooldown_max.max(self.options.cooldown),
                };
                Arc::new(Credential::new(key, (api_url, site_url), auth.clone(), requests_per_hour, limits))
            })
            .clone();
        cred.touch();
        cred.set_budget(requests_per_hour);
        Ok(cred)
    }

    /// Drops credentials nobody holds that went unused for a whole budget window.
    fn sweep(&self, credentials: &mut Credentials) {
        let idle = self.options.budget_window.max(Duration::from_secs(60));
        if credentials.swept.elapsed() < idle / 10 {
            return;
        }
        credentials.swept = Instant::now();
        credentials.map.retain(|_, c| {
            let keep = Arc::strong_count(c) > 1 || !c.idle_for(idle);
            if !keep {
                c.forget_metrics();
            }
            keep
        });
    }

    /// How many credentials are cached (for tests of the bound).
    #[doc(hidden)]
    pub fn cached_credentials(&self) -> usize {
        self.credentials.locked().map.len()
    }

    /// A client for `workspace` at the credential's own URLs: a secret only ever goes to
    /// the URLs of the workspace whose Secret holds it.
    pub fn workspace(self: &Arc<Self>, workspace: &str, credential: Arc<Credential>) -> WorkspaceClient {
        WorkspaceClient { bb: self.clone(), api_url: credential.api_url().to_string(), workspace: workspace.to_string(), credential }
    }

    /// Mints an access token with client_credentials at the credential's own site.
    /// Counts against the consumer's budget.
    pub async fn mint_token(&self, credential: &Credential) -> Result<Token> {
        let Auth::OAuthConsumer { key, secret } = credential.auth() else {
            return Err(Error::BadRequest("an API token cannot mint OAuth tokens".into()));
        };
        let url = format!("{}/site/oauth2/access_token", credential.site_url());
        if !Location::of_request(&url).is_ok_and(|l| l.is_under(&credential.site)) {
            return Err(Error::Decode(format!("token URL {url} leaves the workspace's siteURL")));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            // No waiting for budget here: the caller learns when to come back.
            credential.acquire()?;
            let sent =
                self.http.post(&url).basic_auth(key, Some(secret.expose())).form(&[("grant_type", "client_credentials")]).send().await;
            let result = match sent {
                Err(e) => Err(transport_error(&e, self.options.timeout)),
                Ok(resp) => {
                    let status = resp.status();
                    METRICS.request("token", status.as_str());
                    let body = resp.bytes().await.map_err(|e| transport_error(&e, self.options.timeout))?;
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        Err(Error::RateLimited { retry_after: credential.rate_limited() })
                    } else {
                        credential.answered();
                        decode_token(status, &body)
                    }
                }
            };
            if let Err(e) = &result {
                if matches!(e, Error::Transport(_) | Error::Timeout(_)) {
                    METRICS.request("token", "error");
                }
                // A 429 is not retried here: the credential's cool-down decides when.
                if e.is_transient() && !e.is_rate_limit() && attempt < self.options.max_attempts {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
            }
            return result;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.options.backoff_base.saturating_mul(1u32 << attempt.min(16)).min(self.options.backoff_max);
        // Full jitter: Bitbucket sends no Retry-After, and many clients retrying in step
        // would hit the limit together again.
        let millis = cap.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(millis / 4..=millis.max(1)))
    }
}

fn decode_token(status: StatusCode, body: &[u8]) -> Result<Token> {
    if status.is_success() {
        let t: TokenBody = serde_json::from_slice(body).map_err(|e| Error::Decode(format!("token response: {e}")))?;
        let scopes = t.scope.or(t.scopes).unwrap_or_default();
        return Ok(Token {
            access_token: SecretString::new(t.access_token),
            scopes: scopes.split([' ', ',']).filter(|s| !s.is_empty()).map(String::from).collect(),
            expires_in: lifetime(t.expires_in.as_ref()),
            obtained: Instant::now(),
        });
    }
    if status.is_server_error() {
        return Err(Error::Server { status: status.as_u16() });
    }
    match serde_json::from_slice::<OAuthErrorBody>(body) {
        Ok(e) => Err(oauth_error(e.error, e.error_description)),
        Err(_) if status == StatusCode::UNAUTHORIZED => Err(Error::Unauthorized(error_message(body))),
        Err(_) => Err(Error::Decode(format!("token endpoint answered {status}"))),
    }
}

/// An RFC 6749 error of the token endpoint, by its code. The one text looked at is the
/// "marked as public" description (FACTS.md gives it verbatim; it comes with the same code
/// as bad credentials, so nothing else tells the two apart).
fn oauth_error(error: String, description: String) -> Error {
    if description.to_lowercase().contains("marked as \"public\"") {
        return Error::ConsumerNotPrivate { error, description };
    }
    match error.as_str() {
        "invalid_client" | "unauthorized_client" => Error::InvalidClient { error, description },
        _ => Error::OAuth { error, description },
    }
}

/// A token's `expires_in` as any server may send it: absent (an hour), a number of any
/// sign, size or precision, or a numeric string; clamped to [0, MAX_TOKEN_LIFETIME].
fn lifetime(v: Option<&serde_json::Value>) -> Duration {
    let secs = match v {
        None | Some(serde_json::Value::Null) => Some(3600.0),
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if s.is_finite() && s > 0.0 => {
            Duration::try_from_secs_f64(s.min(MAX_TOKEN_LIFETIME.as_secs_f64())).unwrap_or(MAX_TOKEN_LIFETIME)
        }
        Some(s) if s.is_finite() => Duration::ZERO,
        // NaN cannot come from JSON; anything unreadable counts as the default hour.
        _ => Duration::from_secs(3600),
    }
}

fn transport_error(e: &reqwest::Error, timeout: Duration) -> Error {
    if e.is_timeout() {
        return Error::Timeout(timeout);
    }
    // Walk the source chain for the root cause ("connection refused"); no part of it
    // holds credentials.
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    Error::Transport(cause.to_string())
}

fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => {
            let mut m = b.error.message;
            if let Some(d) = b.error.detail.as_ref().and_then(|d| describe(d, &m)) {
                m = if m.is_empty() { d } else { format!("{m} ({d})") };
            }
            if let Some(f) = b.error.fields.filter(|f| !f.is_null()) {
                m = format!("{m} {f}");
            }
            m
        }
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string(),
    }
}

/// `detail` as a short text, whatever JSON it is: a string as it is, an object as
/// `key: value` pairs; nothing that only repeats `message`. At most 300 characters.
fn describe(detail: &serde_json::Value, message: &str) -> Option<String> {
    use serde_json::Value;
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
            other => other.to_string(),
        }
    }
    let text = match detail {
        Value::Null => return None,
        Value::Object(o) => o
            .iter()
            .filter(|(_, v)| !v.is_null() && scalar(v) != message)
            .map(|(k, v)| format!("{k}: {}", scalar(v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => scalar(other),
    };
    let text = text.trim();
    (!text.is_empty() && text != message).then(|| text.chars().take(300).collect())
}

/// The scopes a structured 403 `detail` names: `{"required": [...], "granted": [...]}`.
fn scope_detail(body: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    let b = serde_json::from_slice::<ErrorBody>(body).ok()?;
    let detail = b.error.detail?;
    let strings = |v: Option<&serde_json::Value>| -> Option<Vec<String>> {
        Some(v?.as_array()?.iter().filter_map(|s| s.as_str().map(String::from)).collect())
    };
    let required = strings(detail.get("required"))?;
    let granted = strings(detail.get("granted")).unwrap_or_default();
    Some((required, granted))
}

/// Missing = required but not granted; all of `required` when Bitbucket counts a granted
/// scope differently (it knows implications the operator does not).
fn missing_scopes(required: Vec<String>, granted: Vec<String>) -> Error {
    let mut missing: Vec<String> = required.iter().filter(|r| !granted.contains(r)).cloned().collect();
    if missing.is_empty() {
        missing = required.clone();
    }
    Error::MissingScopes { missing, required, granted }
}

/// One URL path segment: anything but unreserved characters is percent-encoded, so a name
/// can never add a segment (`/`). A name that is all dots would still climb (URLs treat
/// `%2e%2e` as `..`): it becomes a single encoded space, which names nothing (the
/// CRD's patterns and the read-back checks refuse such names before they get here).
fn segment(s: &str) -> String {
    if s.is_empty() || s.bytes().all(|b| b == b'.') {
        return "%20".into();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A client for one workspace with one credential.
#[derive(Clone)]
pub struct WorkspaceClient {
    bb: Arc<Bitbucket>,
    api_url: String,
    workspace: String,
    credential: Arc<Credential>,
}

/// What a 404 on a call means: which thing was missing.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Target(&'a Target),
    Key(&'a Target, i64),
    Workspace,
}

impl WorkspaceClient {
    pub fn credential(&self) -> &Arc<Credential> {
        &self.credential
    }

    /// Names the listing of a target's keys as this credential sees it.
    pub fn listing_key(&self, target: &Target) -> String {
        format!("{} {}", self.credential.identity(), self.keys_url(target))
    }

    fn keys_url(&self, target: &Target) -> String {
        let ws = segment(&self.workspace);
        match target {
            Target::Repository(r) => format!("{}/repositories/{ws}/{}/deploy-keys", self.api_url, segment(r)),
            Target::Project(p) => format!("{}/workspaces/{ws}/projects/{}/deploy-keys", self.api_url, segment(p)),
        }
    }

    fn op(target: &Target, verb: &str) -> String {
        match target {
            Target::Repository(_) => format!("repository_key_{verb}"),
            Target::Project(_) => format!("project_key_{verb}"),
        }
    }

    /// Verifies the credentials with one cheap authenticated call (`GET /workspaces/{w}`).
    /// A 403 for a missing `read:workspace:bitbucket` scope still proves the credentials
    /// authenticate, and access keys need no such scope: it counts as verified.
    pub async fn verify(&self) -> Result<()> {
        let url = format!("{}/workspaces/{}", self.api_url, self.workspace);
        match self.call("workspace_get", Method::GET, &url, None, Subject::Workspace).await {
            Ok(_) | Err(Error::Forbidden(_) | Error::MissingScopes { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every deploy key of a repository or project, following `next` page by page.
    pub async fn list_keys(&self, target: &Target) -> Result<Vec<DeployKey>> {
        let mut url = format!("{}?pagelen=100", self.keys_url(target));
        let mut keys = Vec::new();
        let op = Self::op(target, "list");
        for pages in 1..=1000 {
            let body = self.call(&op, Method::GET, &url, None, Subject::Target(target)).await?;
            let page: Page<DeployKey> = serde_json::from_slice(&body).map_err(|e| Error::Decode(format!("deploy key page: {e}")))?;
            keys.extend(page.values);
            match page.next {
                Some(next) if !next.is_empty() => {
                    // Followed only below the workspace's API URL: a `next` link elsewhere
                    // would take the credential with it.
                    if !self.within_api(&next) {
                        return Err(Error::Decode(format!(
                            "a next page link leaves the workspace's apiURL {}; not followed",
                            self.api_url
                        )));
                    }
                    url = next
                }
                _ => {
                    self.credential.listed(&self.listing_key(target), pages);
                    return Ok(keys);
                }
            }
        }
        Err(Error::Decode("more than 1000 pages of deploy keys".into()))
    }

    pub async fn get_key(&self, target: &Target, id: i64) -> Result<DeployKey> {
        let url = format!("{}/{id}", self.keys_url(target));
        let body = self.call(&Self::op(target, "get"), Method::GET, &url, None, Subject::Key(target, id)).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode(format!("deploy key: {e}")))
    }

    /// Adds `public_key` (an authorized_keys line; its comment becomes the key's comment).
    pub async fn create_key(&self, target: &Target, public_key: &str, label: &str) -> Result<DeployKey> {
        let body = json!({ "key": public_key, "label": label });
        let body =
            self.call(&Self::op(target, "create"), Method::POST, &self.keys_url(target), Some(body), Subject::Target(target)).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode(format!("created deploy key: {e}")))
    }

    /// Whether the credential may add keys to `target`, without adding one: a POST of an
    /// empty key passes Bitbucket's scope check (then 400), or fails it (403).
    pub async fn probe_create(&self, target: &Target) -> Result<()> {
        let body = json!({ "key": "", "label": "" });
        match self.call(&Self::op(target, "create"), Method::POST, &self.keys_url(target), Some(body), Subject::Target(target)).await {
            Err(Error::InvalidKey(_) | Error::BadRequest(_)) => Ok(()),
            Ok(_) => Err(Error::Decode("Bitbucket accepted an empty access key".into())),
            Err(e) => Err(e),
        }
    }

    /// Whether the credential may remove keys from `target`, without removing one: a
    /// DELETE of key id 0 (Bitbucket's ids start at 1) passes the scope check (then 404),
    /// or fails it (403).
    pub async fn probe_delete(&self, target: &Target) -> Result<()> {
        let url = format!("{}/0", self.keys_url(target));
        match self.call(&Self::op(target, "delete"), Method::DELETE, &url, None, Subject::Key(target, 0)).await {
            Err(Error::KeyNotFound(_)) => Ok(()),
            Ok(_) => Err(Error::Decode("Bitbucket answered a DELETE of access key 0 with success".into())),
            Err(e) => Err(e),
        }
    }

    /// Changes the label of a repository key (projects have no PUT).
    pub async fn update_label(&self, target: &Target, id: i64, label: &str) -> Result<DeployKey> {
        let url = format!("{}/{id}", self.keys_url(target));
        let body = json!({ "label": label });
        let body = self.call(&Self::op(target, "update"), Method::PUT, &url, Some(body), Subject::Key(target, id)).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode(format!("updated deploy key: {e}")))
    }

    /// Removes a key. A key that is already gone counts as removed, once the target's
    /// listing proves it (see `confirm_gone`).
    pub async fn delete_key(&self, target: &Target, id: i64) -> Result<()> {
        let url = format!("{}/{id}", self.keys_url(target));
        match self.call(&Self::op(target, "delete"), Method::DELETE, &url, None, Subject::Key(target, id)).await {
            Ok(_) => Ok(()),
            Err(Error::KeyNotFound(_) | Error::RepositoryNotFound(_) | Error::ProjectNotFound(_)) => self.confirm_gone(target, id).await,
            Err(e) => Err(e),
        }
    }

    /// After a 404 for key `id`: Ok if the target answers and does not list the key. A 404
    /// alone proves nothing, whatever its text: Bitbucket answers the same for a target
    /// these credentials can no longer see (`TargetNotVisible`).
    pub async fn confirm_gone(&self, target: &Target, id: i64) -> Result<()> {
        match self.list_keys(target).await {
            Ok(keys) if keys.iter().any(|k| k.id == id) => {
                Err(Error::Decode(format!("Bitbucket answered 404 for access key {id} but still lists it")))
            }
            Ok(_) => Ok(()),
            Err(Error::RepositoryNotFound(_) | Error::ProjectNotFound(_)) => Err(self.not_visible(target)),
            Err(e) => Err(e),
        }
    }

    /// `TargetNotVisible` for `target` of this workspace.
    pub fn not_visible(&self, target: &Target) -> Error {
        let kind = match target {
            Target::Repository(_) => "repository",
            Target::Project(_) => "project",
        };
        Error::TargetNotVisible(format!("{kind} {}/{}", self.workspace, target.name()))
    }

    /// Whether `url` lies below this workspace's API URL (and is allowed).
    fn within_api(&self, url: &str) -> bool {
        Location::of_request(url).is_ok_and(|l| l.is_under(&self.credential.api))
    }

    async fn bearer(&self, force_new: bool) -> Result<Option<SecretString>> {
        if let Auth::ApiToken { .. } = self.credential.auth() {
            return Ok(None);
        }
        // One token per consumer, shared: the lock makes concurrent reconciles wait for
        // the one mint instead of each minting their own.
        let mut cached = self.credential.token.lock().await;
        if !force_new && let Some(t) = cached.as_ref().filter(|t| t.is_fresh()) {
            return Ok(Some(t.access_token.clone()));
        }
        let token = self.bb.mint_token(&self.credential).await?;
        let access = token.access_token.clone();
        *cached = Some(token);
        Ok(Some(access))
    }

    async fn call(
        &self,
        op: &str,
        method: Method,
        url: &str,
        body: Option<serde_json::Value>,
        subject: Subject<'_>,
    ) -> Result<bytes::Bytes> {
        // Every request stays below the workspace's API URL, whatever a slug or a page
        // link made of it.
        if !self.within_api(url) {
            return Err(Error::Decode(format!("request URL leaves the workspace's apiURL {}; not sent", self.api_url)));
        }
        let mut attempt = 0;
        let mut renewed_token = false;
        loop {
            attempt += 1;
            let bearer = self.bearer(false).await?;
            // No waiting for budget here: the caller learns when to come back.
            self.credential.acquire()?;
            let mut req = self.bb.http.request(method.clone(), url);
            req = match (&bearer, self.credential.auth()) {
                (Some(token), _) => req.bearer_auth(token.expose()),
                (None, Auth::ApiToken { email, token }) => req.basic_auth(email, Some(token.expose())),
                (None, Auth::OAuthConsumer { .. }) => req,
            };
            if let Some(b) = &body {
                req = req.json(b);
            }
            let result: Result<()> = match req.send().await {
                Err(e) => {
                    METRICS.request(op, "error");
                    Err(transport_error(&e, self.bb.options.timeout))
                }
                Ok(resp) => {
                    let status = resp.status();
                    METRICS.request(op, status.as_str());
                    match resp.bytes().await {
                        Err(e) => Err(transport_error(&e, self.bb.options.timeout)),
                        Ok(_) if status == StatusCode::TOO_MANY_REQUESTS => {
                            Err(Error::RateLimited { retry_after: self.credential.rate_limited() })
                        }
                        Ok(bytes) if status.is_success() => {
                            self.credential.answered();
                            return Ok(bytes);
                        }
                        Ok(bytes) => {
                            self.credential.answered();
                            // What the OAuth token was granted tells a scope problem from
                            // a consumer that cannot reach this workspace.
                            let granted = match (&bearer, status) {
                                (Some(_), StatusCode::FORBIDDEN) => self.credential.token.lock().await.as_ref().map(|t| t.scopes.clone()),
                                _ => None,
                            };
                            Err(self.classify(status, &bytes, subject, granted.as_deref()))
                        }
                    }
                }
            };
            let Err(e) = result else { unreachable!() };
            // An OAuth token can be revoked or expire early: mint a new one once.
            if matches!(e, Error::Unauthorized(_)) && bearer.is_some() && !renewed_token {
                renewed_token = true;
                self.bearer(true).await?;
                continue;
            }
            // A 429 is not retried here: the credential's cool-down decides when.
            if e.is_transient() && !e.is_rate_limit() && attempt < self.bb.options.max_attempts {
                tokio::time::sleep(self.bb.backoff(attempt)).await;
                continue;
            }
            return Err(e);
        }
    }

    /// `granted`: the scopes of the OAuth token the request carried (None for API tokens).
    fn classify(&self, status: StatusCode, body: &[u8], subject: Subject<'_>, granted: Option<&[String]>) -> Error {
        let message = error_message(body);
        let lower = message.to_lowercase();
        match status.as_u16() {
            401 => Error::Unauthorized(message),
            403 if lower.contains("not accessible by this authentication mechanism") => Error::AuthMechanismRefused(message),
            403 => self.forbidden(message, body, subject, granted),
            404 => match subject {
                Subject::Workspace => Error::WorkspaceNotFound(self.workspace.clone()),
                Subject::Key(target, id) if !(lower.contains("repository") || lower.contains("project")) || lower.contains("key") => {
                    let _ = target;
                    Error::KeyNotFound(id)
                }
                Subject::Key(target, _) | Subject::Target(target) => match target {
                    Target::Repository(r) => Error::RepositoryNotFound(format!("{}/{r}", self.workspace)),
                    Target::Project(p) => Error::ProjectNotFound(format!("{}/{p}", self.workspace)),
                },
            },
            400 if lower.contains("already added") => Error::DuplicateKey(message),
            400 if lower.contains("key") => Error::InvalidKey(message),
            400 => Error::BadRequest(message),
            // `call` starts the cool-down before it gets here.
            429 => Error::RateLimited { retry_after: self.credential.cooling_down().unwrap_or(self.bb.options.cooldown) },
            s if s >= 500 => Error::Server { status: s },
            s => Error::Decode(format!("HTTP {s}: {message}")),
        }
    }
}

impl WorkspaceClient {
    /// A 403, decided from structure, never from its text: the scopes a structured
    /// `detail` names; else, for an OAuth token, the scope this endpoint needs against
    /// the scopes the token was granted; a token that has them and is still refused
    /// belongs to a consumer that cannot reach this workspace.
    fn forbidden(&self, message: String, body: &[u8], subject: Subject<'_>, granted: Option<&[String]>) -> Error {
        if let Some((required, granted)) = scope_detail(body) {
            return missing_scopes(required, granted);
        }
        let Some(granted) = granted else { return Error::Forbidden(message) };
        let needed = match subject {
            Subject::Target(Target::Repository(_)) | Subject::Key(Target::Repository(_), _) => Some("repository:admin"),
            Subject::Target(Target::Project(_)) | Subject::Key(Target::Project(_), _) => Some("project:admin"),
            Subject::Workspace => None,
        };
        match needed {
            Some(scope) if !granted.iter().any(|g| g == scope) => missing_scopes(vec![scope.to_string()], granted.to_vec()),
            _ => Error::ConsumerNotInWorkspace { workspace: self.workspace.clone(), message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetime_of(expires_in: &str) -> Duration {
        let body = format!(r#"{{"access_token":"t","expires_in":{expires_in}}}"#);
        decode_token(StatusCode::OK, body.as_bytes()).expect("decodes").expires_in
    }

    #[test]
    fn any_expires_in_decodes_within_a_year() {
        assert_eq!(lifetime_of("7200"), Duration::from_secs(7200));
        assert_eq!(lifetime_of("0"), Duration::ZERO);
        assert_eq!(lifetime_of("-5"), Duration::ZERO);
        assert_eq!(lifetime_of("1.5"), Duration::from_millis(1500));
        assert_eq!(lifetime_of("1000000000000000"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime_of("1e300"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime_of("-1e300"), Duration::ZERO);
        assert_eq!(lifetime_of("18446744073709551615"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime_of("\"3600\""), Duration::from_secs(3600));
        assert_eq!(lifetime_of("null"), Duration::from_secs(3600));
        assert_eq!(lifetime_of("{}"), Duration::from_secs(3600));
        let absent = decode_token(StatusCode::OK, br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(absent.expires_in, Duration::from_secs(3600));
        assert!(absent.is_fresh());
        assert!(!decode_token(StatusCode::OK, br#"{"access_token":"t","expires_in":0}"#).unwrap().is_fresh());
    }

    #[test]
    fn detail_of_any_shape_reads_as_text() {
        let m = error_message(br#"{"type":"error","error":{"message":"Bad","detail":{"status":401,"why":["a","b"]}}}"#);
        assert_eq!(m, "Bad (status: 401; why: a, b)");
        assert_eq!(error_message(br#"{"error":{"message":"Bad","detail":"more"}}"#), "Bad (more)");
        assert_eq!(error_message(br#"{"error":{"message":"Bad","detail":{"message":"Bad"}}}"#), "Bad");
        assert_eq!(error_message(br#"{"error":{"message":"Bad","detail":null}}"#), "Bad");
        assert_eq!(error_message(br#"{"error":{"message":7,"detail":[1,2]}}"#), "7 (1, 2)");
    }

    #[test]
    fn a_structured_scope_error_names_what_is_missing() {
        let body = br#"{"type":"error","error":{"message":"Your credentials lack one or more required privilege scopes.","detail":{"required":["repository:admin"],"granted":["project","team"]}}}"#;
        let (required, granted) = scope_detail(body).expect("scopes");
        let e = missing_scopes(required, granted);
        assert_eq!(e.reason(), "MissingScopes");
        assert!(e.to_string().contains("lack the Bitbucket scopes repository:admin"), "{e}");
        assert!(e.to_string().contains("granted: project, team"), "{e}");
        assert!(scope_detail(br#"{"error":{"message":"x","detail":"Required: a"}}"#).is_none());
    }

    #[test]
    fn both_bad_client_codes_are_invalid_client_and_a_public_consumer_is_its_own() {
        for code in ["invalid_client", "unauthorized_client"] {
            let body = format!(r#"{{"error":"{code}","error_description":"Invalid OAuth client credentials"}}"#);
            let e = decode_token(StatusCode::BAD_REQUEST, body.as_bytes()).unwrap_err();
            assert_eq!(e.reason(), "InvalidClient", "{code}");
            assert!(e.to_string().contains("check the `key` and `secret`"), "{e}");
        }
        let public = r#"{"error":"unauthorized_client","error_description":"Cannot use client_credentials with a consumer marked as \"public\". Calls for auto generated consumers should use urn:bitbucket:oauth2:jwt instead."}"#;
        let e = decode_token(StatusCode::BAD_REQUEST, public.as_bytes()).unwrap_err();
        assert_eq!(e.reason(), "ConsumerNotPrivate");
        assert!(e.to_string().contains("private consumer"), "{e}");
        let grant = decode_token(StatusCode::BAD_REQUEST, br#"{"error":"invalid_grant","error_description":"x"}"#).unwrap_err();
        assert_eq!(grant.reason(), "InvalidGrant");
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z]{0,8}", inner, 0..6).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_json_error_body_reads_without_panic(message in any_json(), detail in any_json(), other in any_json(), status in 400u16..600) {
            let body = serde_json::json!({"type": "error", "error": {"message": message, "detail": detail}}).to_string();
            let m = error_message(body.as_bytes());
            proptest::prop_assert!(m.chars().count() <= 700);
            let _ = scope_detail(body.as_bytes());
            let _ = error_message(other.to_string().as_bytes());
            let token = serde_json::json!({"error": message, "error_description": detail}).to_string();
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let _ = decode_token(status, token.as_bytes());
        }

        #[test]
        fn decoding_any_token_body_never_panics(status in 100u16..600, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            if let Ok(t) = decode_token(status, &body) {
                proptest::prop_assert!(t.expires_in <= MAX_TOKEN_LIFETIME);
                let _ = (t.expires_at(), t.is_fresh());
            }
        }

        #[test]
        fn any_numeric_expires_in_is_clamped(n in proptest::prelude::any::<i64>(), f in proptest::prelude::any::<f64>()) {
            for v in [n.to_string(), serde_json::Number::from_f64(f).map(|x| x.to_string()).unwrap_or_else(|| "1".into())] {
                let body = format!(r#"{{"access_token":"t","expires_in":{v}}}"#);
                if let Ok(t) = decode_token(StatusCode::OK, body.as_bytes()) {
                    proptest::prop_assert!(t.expires_in <= MAX_TOKEN_LIFETIME);
                    let _ = (t.expires_at(), t.is_fresh());
                }
            }
        }
    }
}
