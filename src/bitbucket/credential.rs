use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ssh_key::HashAlg;

use super::Error;
use super::allowed::Location;
use crate::metrics::{CredentialLabels, METRICS};
use crate::sensitive::SecretString;

/// How requests authenticate.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    /// Atlassian API token, HTTP Basic `email:token`.
    ApiToken { email: String, token: SecretString },
    /// OAuth consumer, client_credentials; requests carry a Bearer access token.
    OAuthConsumer { key: String, secret: SecretString },
}

impl Auth {
    fn kind(&self) -> &'static str {
        match self {
            Auth::ApiToken { .. } => "api-token",
            Auth::OAuthConsumer { .. } => "oauth-consumer",
        }
    }

    /// Everything that tells two credentials apart: kind, account or consumer key, and
    /// the secret. Hashed before use; never printed.
    fn material(&self) -> Vec<u8> {
        let (name, secret) = match self {
            Auth::ApiToken { email, token } => (email, token),
            Auth::OAuthConsumer { key, secret } => (key, secret),
        };
        let mut m = Vec::with_capacity(name.len() + secret.expose().len() + 20);
        m.extend_from_slice(self.kind().as_bytes());
        m.push(0);
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        m.extend_from_slice(secret.expose().as_bytes());
        m
    }
}

/// What one shared `Credential` is for: the same account or consumer, proven with the
/// same secret, against the same API and site. A workspace that names someone else's
/// account with another secret gets a credential of its own (and its own budget), never
/// the other's secret, token or budget.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CredentialKey {
    api: Location,
    site: Location,
    /// SHA-256 of kind, account or consumer key, and secret.
    auth: Vec<u8>,
}

impl CredentialKey {
    pub(crate) fn new(api: Location, site: Location, auth: &Auth) -> Self {
        CredentialKey { api, site, auth: HashAlg::Sha256.digest(&auth.material()) }
    }

    /// A short label for metrics and logs: the kind and 12 hex digits of a digest salted
    /// per process, so that it cannot be checked against a guessed account or secret.
    fn label(&self, kind: &str) -> String {
        static SALT: std::sync::LazyLock<[u8; 16]> = std::sync::LazyLock::new(rand::random);
        let mut m = SALT.to_vec();
        m.extend_from_slice(self.api.to_string().as_bytes());
        m.push(0);
        m.extend_from_slice(self.site.to_string().as_bytes());
        m.push(0);
        m.extend_from_slice(&self.auth);
        let d = HashAlg::Sha256.digest(&m);
        format!("{kind}:{}", d.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>())
    }
}

/// A minted OAuth access token.
#[derive(Clone, Debug)]
pub struct Token {
    pub access_token: SecretString,
    pub scopes: Vec<String>,
    /// Clamped to [0, MAX_TOKEN_LIFETIME] when decoded.
    pub expires_in: Duration,
    pub obtained: Instant,
}

/// The longest token life the operator believes: a server may say anything.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

impl Token {
    /// When the token runs out; never overflows, whatever `expires_in` says.
    pub fn expires_at(&self) -> Option<Instant> {
        self.obtained.checked_add(self.expires_in.min(MAX_TOKEN_LIFETIME))
    }

    /// Still good for a while: renew ahead of expiry by a tenth of its life, at most 5 min.
    pub fn is_fresh(&self) -> bool {
        let margin = (self.expires_in / 10).min(Duration::from_secs(300));
        match (Instant::now().checked_add(margin), self.expires_at()) {
            (Some(soon), Some(end)) => soon < end,
            _ => false,
        }
    }
}

/// One credential as the operator uses it: its auth (fixed for its life), the URLs that
/// may see it, its own request budget, and its cached OAuth token. Shared by every
/// reconcile of every workspace that proved the same secret for the same URLs.
pub struct Credential {
    auth: Auth,
    pub(crate) api: Location,
    pub(crate) site: Location,
    pub(crate) api_url: String,
    pub(crate) site_url: String,
    pub(crate) limiter: Mutex<(u32, Arc<DefaultDirectRateLimiter>)>,
    pub(crate) token: tokio::sync::Mutex<Option<Token>>,
    recent: Mutex<VecDeque<Instant>>,
    pub(crate) last_used: Mutex<Instant>,
    label: String,
    /// The window the budget applies to: an hour, as Bitbucket counts (shorter only in
    /// tests and benchmarks, which scale the hour down).
    window: Duration,
}

/// Bitbucket's budget window: requests per hour.
pub const HOUR: Duration = Duration::from_secs(3600);

fn limiter_for(per_window: u32, window: Duration) -> Arc<DefaultDirectRateLimiter> {
    let per_window = NonZeroU32::new(per_window.max(1)).unwrap_or(NonZeroU32::MIN);
    // A burst of a tenth of the window keeps budget + burst under Bitbucket's cap while
    // letting a small batch of work go through at once.
    let burst = NonZeroU32::new((per_window.get() / 10).max(1)).unwrap_or(NonZeroU32::MIN);
    let period = window / per_window.get();
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_hour(per_window)).allow_burst(burst);
    Arc::new(RateLimiter::direct(quota))
}

impl Credential {
    pub(crate) fn new(key: &CredentialKey, urls: (&str, &str), auth: Auth, requests_per_hour: u32, window: Duration) -> Self {
        Self {
            window,
            label: key.label(auth.kind()),
            auth,
            api: key.api.clone(),
            site: key.site.clone(),
            api_url: urls.0.trim_end_matches('/').to_string(),
            site_url: urls.1.trim_end_matches('/').to_string(),
            limiter: Mutex::new((requests_per_hour, limiter_for(requests_per_hour, window))),
            token: tokio::sync::Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// A name for logs and metrics that carries no account, key or secret.
    pub fn identity(&self) -> &str {
        &self.label
    }

    /// The hourly budget this credential was configured with.
    pub fn limiter_budget(&self) -> u32 {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The API URL (no trailing slash) this credential may be sent to.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The site URL (no trailing slash) this credential may be sent to.
    pub fn site_url(&self) -> &str {
        &self.site_url
    }

    /// Takes a changed budget into account (workspaces sharing the credential share it).
    pub(crate) fn set_budget(&self, requests_per_hour: u32) {
        let mut l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if l.0 != requests_per_hour {
            *l = (requests_per_hour, limiter_for(requests_per_hour, self.window));
        }
    }

    pub(crate) fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Unused for longer than `idle`.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        self.last_used.lock().unwrap_or_else(|e| e.into_inner()).elapsed() > idle
    }

    /// Takes one request from the operator's own budget, or says when the next may go:
    /// nobody waits here (a reconcile holding a worker for an hour would starve others).
    pub(crate) fn acquire(&self) -> Result<(), Error> {
        self.touch();
        let (budget, limiter) = {
            let l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
            (l.0, l.1.clone())
        };
        if let Err(not_until) = limiter.check() {
            let retry_after = not_until.wait_time_from(limiter.clock().now());
            return Err(Error::BudgetExhausted { retry_after });
        }
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back(now);
        while recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            recent.pop_front();
        }
        METRICS
            .rate_budget_remaining
            .get_or_create(&CredentialLabels { credential: self.label.clone() })
            .set(i64::from(budget) - recent.len() as i64);
        Ok(())
    }

    /// Forgets the credential's metrics (when it is dropped from the cache).
    pub(crate) fn forget_metrics(&self) {
        METRICS.rate_budget_remaining.remove(&CredentialLabels { credential: self.label.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_in: Duration, obtained: Instant) -> Token {
        Token { access_token: SecretString::new("t"), scopes: vec![], expires_in, obtained }
    }

    fn key(api: &str, site: &str, auth: &Auth) -> CredentialKey {
        CredentialKey::new(Location::parse(api).unwrap(), Location::parse(site).unwrap(), auth)
    }

    fn api_token(email: &str, token: &str) -> Auth {
        Auth::ApiToken { email: email.into(), token: SecretString::new(token) }
    }

    #[test]
    fn a_different_secret_or_url_is_a_different_credential() {
        let (api, site) = ("https://api.bitbucket.org/2.0", "https://bitbucket.org");
        let a = key(api, site, &api_token("a@x", "real"));
        assert_eq!(a, key("https://API.bitbucket.org:443/2.0/", "https://bitbucket.org/", &api_token("a@x", "real")));
        assert_ne!(a, key(api, site, &api_token("a@x", "junk")));
        assert_ne!(a, key(api, site, &api_token("b@x", "real")));
        assert_ne!(a, key(api, "https://evil.test", &api_token("a@x", "real")));
        assert_ne!(a, key("https://evil.test/2.0", site, &api_token("a@x", "real")));
        let consumer = Auth::OAuthConsumer { key: "a@x".into(), secret: SecretString::new("real") };
        assert_ne!(a, key(api, site, &consumer));
    }

    #[test]
    fn the_label_names_no_account_and_no_secret() {
        let auth = api_token("admin@acme.test", "tok-secret");
        let k = key("https://api.bitbucket.org/2.0", "https://bitbucket.org", &auth);
        let label = k.label("api-token");
        assert!(label.starts_with("api-token:") && label.len() == "api-token:".len() + 12, "{label}");
        assert!(!label.contains("admin") && !label.contains("acme") && !label.contains("tok-secret"));
    }

    #[test]
    fn an_exhausted_budget_says_when_without_waiting() {
        let auth = api_token("a@x", "s");
        let k = key("https://api.bitbucket.org/2.0", "https://bitbucket.org", &auth);
        let c = Credential::new(&k, ("https://api.bitbucket.org/2.0", "https://bitbucket.org"), auth, 1, HOUR);
        assert!(c.acquire().is_ok());
        let started = Instant::now();
        let e = c.acquire().unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(e.reason(), "RateLimited");
        assert!(e.is_transient());
        let after = e.retry_after().unwrap();
        assert!(after > Duration::from_secs(3000) && after <= HOUR, "{after:?}");
        c.forget_metrics();
    }

    #[test]
    fn extreme_token_lifetimes_never_panic() {
        let now = Instant::now();
        for secs in [0, 1, 299, 3600, 7200, u64::MAX / 2, u64::MAX] {
            let t = token(Duration::from_secs(secs), now);
            let _ = t.expires_at();
            let _ = t.is_fresh();
        }
        assert!(!token(Duration::ZERO, now).is_fresh());
        assert!(token(Duration::from_secs(7200), now).is_fresh());
        assert!(token(Duration::MAX, now).is_fresh());
    }

    proptest::proptest! {
        #[test]
        fn is_fresh_never_panics(secs in proptest::prelude::any::<u64>(), nanos in 0u32..1_000_000_000, ago in 0u64..100_000) {
            let obtained = Instant::now().checked_sub(Duration::from_secs(ago)).unwrap_or_else(Instant::now);
            let t = token(Duration::new(secs, nanos), obtained);
            let _ = t.expires_at();
            let _ = t.is_fresh();
        }
    }
}
