use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use ssh_key::HashAlg;

use super::Error;
use super::allowed::Location;
use crate::metrics::{CredentialLabels, METRICS};
use crate::sensitive::SecretString;
use crate::sync::Locked;

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
    limits: Limits,
    cooldown: Mutex<Cooldown>,
    drift: Mutex<Drift>,
}

/// How drift checks are paced: the share of a credential's budget they may spend on
/// listings, and the bounds of the interval that share allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DriftPace {
    /// Percent of `requestsPerHour` (1..=100).
    pub share_percent: u8,
    /// Never more often than this.
    pub floor: Duration,
    /// At least this often, when the share allows it (else the share wins).
    pub ceiling: Duration,
}

/// What the drift checks of a credential's objects cost: the targets they are on (each
/// listed once per interval, its pages counted), and the limiter of their share.
struct Drift {
    /// Listing key -> (last time an object named it, pages of its last listing).
    targets: HashMap<String, (Instant, u32)>,
    /// The sum of the pages in `targets`.
    cost: u64,
    /// When targets nobody names any more were last dropped.
    pruned: Instant,
    limiter: Option<(u32, Arc<DefaultDirectRateLimiter>)>,
}

impl Default for Drift {
    fn default() -> Self {
        Drift { targets: HashMap::new(), cost: 0, pruned: Instant::now(), limiter: None }
    }
}

/// Listings per window that `pace`'s share of `budget` allows (at least one).
fn share_per_window(budget: u32, pace: &DriftPace) -> u64 {
    (u64::from(budget) * u64::from(pace.share_percent.clamp(1, 100)) / 100).max(1)
}

/// The interval at which `cost` listings (pages) fit into `share_percent` of `budget`
/// requests per `window`, within `[floor, ceiling]`, except that the share wins over the
/// ceiling: a credential with too many targets for its budget is checked more seldom
/// rather than spending more.
pub fn paced_interval(cost: u64, budget: u32, pace: &DriftPace, window: Duration) -> Duration {
    let secs = window.as_secs_f64() * cost.max(1) as f64 / share_per_window(budget, pace) as f64;
    let budgeted = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
    if budgeted > pace.ceiling { budgeted } else { budgeted.max(pace.floor) }
}

/// How a credential paces itself: its budget window and the cool-down after a 429.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The window the budget applies to: an hour, as Bitbucket counts (shorter only in
    /// tests and benchmarks, which scale the hour down).
    pub window: Duration,
    /// The first cool-down after a 429; each 429 right after one doubles it.
    pub cooldown: Duration,
    pub cooldown_max: Duration,
}

impl Limits {
    #[cfg(test)]
    pub(crate) const DEFAULT: Limits = Limits { window: HOUR, cooldown: COOLDOWN, cooldown_max: COOLDOWN_MAX };
}

/// Bitbucket's 429 carries no Retry-After: the first cool-down, and the longest.
pub(super) const COOLDOWN: Duration = Duration::from_secs(60);
pub(super) const COOLDOWN_MAX: Duration = Duration::from_secs(15 * 60);

/// After Bitbucket's own 429, no request with the credential goes out until `until`.
#[derive(Default)]
struct Cooldown {
    until: Option<Instant>,
    /// 429s in a row: each one that ends a cool-down doubles the next.
    level: u32,
}

/// Bitbucket's budget window: requests per hour.
pub(super) const HOUR: Duration = Duration::from_secs(3600);

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
    pub(crate) fn new(key: &CredentialKey, urls: (&str, &str), auth: Auth, requests_per_hour: u32, limits: Limits) -> Self {
        Self {
            limits,
            cooldown: Mutex::new(Cooldown::default()),
            drift: Mutex::new(Drift::default()),
            label: key.label(auth.kind()),
            auth,
            api: key.api.clone(),
            site: key.site.clone(),
            api_url: urls.0.trim_end_matches('/').to_string(),
            site_url: urls.1.trim_end_matches('/').to_string(),
            limiter: Mutex::new((requests_per_hour, limiter_for(requests_per_hour, limits.window))),
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
        self.limiter.locked().0
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
        let mut l = self.limiter.locked();
        if l.0 != requests_per_hour {
            *l = (requests_per_hour, limiter_for(requests_per_hour, self.limits.window));
        }
    }

    pub(crate) fn touch(&self) {
        *self.last_used.locked() = Instant::now();
    }

    /// Unused for longer than `idle`.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        self.last_used.locked().elapsed() > idle
    }

    /// Takes one request from the operator's own budget, or says when the next may go:
    /// nobody waits here (a reconcile holding a worker for an hour would starve others).
    pub(crate) fn acquire(&self) -> Result<(), Error> {
        self.touch();
        if let Some(retry_after) = self.cooling_down() {
            return Err(Error::RateLimited { retry_after });
        }
        let (budget, limiter) = {
            let l = self.limiter.locked();
            (l.0, l.1.clone())
        };
        if let Err(not_until) = limiter.check() {
            let retry_after = not_until.wait_time_from(limiter.clock().now());
            return Err(Error::BudgetExhausted { retry_after });
        }
        let now = Instant::now();
        let mut recent = self.recent.locked();
        recent.push_back(now);
        while recent.front().is_some_and(|t| now.duration_since(*t) > self.limits.window) {
            recent.pop_front();
        }
        METRICS
            .rate_budget_remaining
            .get_or_create(&CredentialLabels { credential: self.label.clone() })
            .set(i64::from(budget) - recent.len() as i64);
        Ok(())
    }

    /// What is left of a cool-down, if one is on.
    pub fn cooling_down(&self) -> Option<Duration> {
        let c = self.cooldown.locked();
        c.until.and_then(|u| u.checked_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// Bitbucket answered 429: every request with this credential, from any reconcile,
    /// waits out a cool-down. A 429 during one (requests already in flight) is the same
    /// episode; the first 429 after one doubles it, up to the longest. Returns the wait.
    pub(crate) fn rate_limited(&self) -> Duration {
        let labels = CredentialLabels { credential: self.label.clone() };
        METRICS.rate_limited.get_or_create(&labels).inc();
        let mut c = self.cooldown.locked();
        let now = Instant::now();
        if let Some(left) = c.until.and_then(|u| u.checked_duration_since(now)).filter(|d| !d.is_zero()) {
            return left;
        }
        let nominal = self.limits.cooldown.saturating_mul(1u32 << c.level.min(16)).min(self.limits.cooldown_max);
        c.level = c.level.saturating_add(1);
        // Many operators (and this one's reconciles) waking at the same second would hit
        // the limit together again.
        let wait = Duration::try_from_secs_f64(nominal.as_secs_f64() * rand::thread_rng().gen_range(0.8..1.2))
            .unwrap_or(nominal)
            .min(self.limits.cooldown_max)
            .max(Duration::from_millis(1));
        c.until = now.checked_add(wait);
        METRICS.rate_limit_cooldown_until.get_or_create(&labels).set((crate::metrics::unix_now() + wait.as_secs_f64()) as i64);
        tracing::warn!(credential = %self.label, seconds = wait.as_secs(), "Bitbucket answered 429: this credential's requests pause");
        wait
    }

    /// Bitbucket answered something else than 429: the next 429 starts from the first
    /// cool-down again. An answer to a request sent before the cool-down began changes
    /// nothing.
    pub(crate) fn answered(&self) {
        let mut c = self.cooldown.locked();
        if c.level > 0 && c.until.is_none_or(|u| u <= Instant::now()) {
            c.level = 0;
        }
    }

    /// Objects are on these targets (listing keys): their drift checks count against the
    /// share. A target nobody named for twice the longest interval is forgotten.
    pub fn note_drift_targets<'a>(&self, keys: impl IntoIterator<Item = &'a str>, pace: &DriftPace) {
        let now = Instant::now();
        let mut d = self.drift.locked();
        for k in keys {
            match d.targets.get_mut(k) {
                Some(entry) => entry.0 = now,
                None => {
                    d.targets.insert(k.to_string(), (now, 1));
                    d.cost += 1;
                }
            }
        }
        // A pass over every target now and then, not on every reconcile.
        let forget = pace.ceiling.max(self.drift_interval_locked(&d, pace)).saturating_mul(2);
        if now.duration_since(d.pruned) > forget / 20 {
            d.pruned = now;
            d.targets.retain(|_, (seen, _)| now.duration_since(*seen) <= forget);
            d.cost = d.targets.values().map(|(_, pages)| u64::from(*pages)).sum();
        }
    }

    /// A target was listed in `pages` pages.
    pub(crate) fn listed(&self, key: &str, pages: u32) {
        let mut d = self.drift.locked();
        let Some(entry) = d.targets.get_mut(key) else { return };
        let before = std::mem::replace(&mut entry.1, pages.max(1));
        d.cost = d.cost.saturating_sub(u64::from(before)) + u64::from(pages.max(1));
    }

    /// How often each object of this credential is compared with Bitbucket.
    pub fn drift_interval(&self, pace: &DriftPace) -> Duration {
        let d = self.drift.locked();
        let interval = self.drift_interval_locked(&d, pace);
        METRICS
            .drift_check_interval
            .get_or_create(&CredentialLabels { credential: self.label.clone() })
            .set(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX));
        interval
    }

    fn drift_interval_locked(&self, d: &Drift, pace: &DriftPace) -> Duration {
        paced_interval(d.cost, self.limiter_budget(), pace, self.limits.window)
    }

    /// Takes `listings` from the drift checks' share, or says when there is room again.
    /// However the estimate of the interval errs (just after a start, when few targets
    /// are known yet), drift checks never spend more than their share.
    pub fn drift_permit(&self, listings: u32, pace: &DriftPace) -> Result<(), Duration> {
        if listings == 0 {
            return Ok(());
        }
        let per_window = u32::try_from(share_per_window(self.limiter_budget(), pace)).unwrap_or(u32::MAX);
        let limiter = {
            let mut d = self.drift.locked();
            match &d.limiter {
                Some((n, l)) if *n == per_window => l.clone(),
                _ => {
                    let l = limiter_for(per_window, self.limits.window);
                    d.limiter = Some((per_window, l.clone()));
                    l
                }
            }
        };
        // An object on more targets than the burst holds takes the whole burst.
        let n = NonZeroU32::new(listings.min((per_window / 10).max(1))).unwrap_or(NonZeroU32::MIN);
        match limiter.check_n(n) {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(limiter.clock().now())),
        }
    }

    /// Forgets the credential's metrics (when it is dropped from the cache).
    pub(crate) fn forget_metrics(&self) {
        let labels = CredentialLabels { credential: self.label.clone() };
        METRICS.rate_budget_remaining.remove(&labels);
        METRICS.rate_limited.remove(&labels);
        METRICS.rate_limit_cooldown_until.remove(&labels);
        METRICS.drift_check_interval.remove(&labels);
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
        let c = Credential::new(&k, ("https://api.bitbucket.org/2.0", "https://bitbucket.org"), auth, 1, Limits::DEFAULT);
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

    fn credential(limits: Limits) -> Credential {
        let auth = api_token("a@x", "s");
        let k = key("https://api.bitbucket.org/2.0", "https://bitbucket.org", &auth);
        Credential::new(&k, ("https://api.bitbucket.org/2.0", "https://bitbucket.org"), auth, 1000, limits)
    }

    #[test]
    fn a_429_pauses_every_request_and_doubles_while_429s_continue() {
        let c = credential(Limits::DEFAULT);
        assert!(c.acquire().is_ok());
        let first = c.rate_limited();
        assert!((Duration::from_secs(48)..=Duration::from_secs(72)).contains(&first), "60 s with jitter: {first:?}");
        let e = c.acquire().unwrap_err();
        assert!(matches!(e, Error::RateLimited { .. }) && e.is_rate_limit() && e.is_transient(), "{e:?}");
        assert!(e.retry_after().is_some_and(|d| d <= first && d > first - Duration::from_secs(1)));
        assert!(e.to_string().contains("429") && e.to_string().contains("pauses"), "{e}");
        // Answers to requests in flight when the 429 came are the same episode.
        assert!(c.rate_limited() <= first);
        c.answered();
        assert!(c.cooling_down().is_some(), "an answer sent before the cool-down does not end it");
        c.forget_metrics();

        // Each 429 after a cool-down doubles the next one, up to the longest.
        let c = credential(Limits { window: HOUR, cooldown: Duration::from_millis(10), cooldown_max: Duration::from_millis(100) });
        let mut waits = Vec::new();
        for _ in 0..6 {
            let w = c.rate_limited();
            waits.push(w);
            std::thread::sleep(w + Duration::from_millis(2));
            assert!(c.acquire().is_ok(), "the cool-down is over");
        }
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert!((8..=12).contains(&ms[0]) && (16..=24).contains(&ms[1]) && (32..=48).contains(&ms[2]), "{ms:?}");
        assert!(ms[4] <= 100 && ms[5] <= 100 && ms[5] >= 80, "capped at the longest: {ms:?}");
        // A normal answer after the cool-down starts over from the first.
        c.answered();
        assert!(c.rate_limited() <= Duration::from_millis(12));
        c.forget_metrics();
    }

    #[test]
    fn drift_checks_spend_no_more_than_their_share() {
        let auth = api_token("a@x", "s");
        let k = key("https://api.bitbucket.org/2.0", "https://bitbucket.org", &auth);
        let c = Credential::new(&k, ("https://api.bitbucket.org/2.0", "https://bitbucket.org"), auth, 100, Limits::DEFAULT);
        let pace = DriftPace { share_percent: 20, floor: Duration::from_secs(120), ceiling: HOUR };
        // 20 of 100 an hour, a burst of 2.
        assert!(c.drift_permit(1, &pace).is_ok() && c.drift_permit(1, &pace).is_ok());
        let wait = c.drift_permit(1, &pace).unwrap_err();
        assert!(wait > Duration::from_secs(60) && wait <= Duration::from_secs(180), "{wait:?}");
        assert!(c.drift_permit(0, &pace).is_ok(), "a check that lists nothing costs nothing");
        assert!(c.acquire().is_ok(), "the rest of the budget is untouched");
        // The interval follows the targets named, and their pages.
        let keys: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        c.note_drift_targets(keys.iter().map(String::as_str), &pace);
        assert_eq!(c.drift_interval(&pace), Duration::from_secs(7200), "40 listings on 20 an hour: the share wins");
        c.listed("t0", 41);
        assert_eq!(c.drift_interval(&pace), Duration::from_secs(14400));
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
