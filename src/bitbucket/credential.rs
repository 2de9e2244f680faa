use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

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
    /// A name for logs and metrics that carries no secret.
    pub fn identity(&self) -> String {
        match self {
            Auth::ApiToken { email, .. } => format!("api-token:{email}"),
            Auth::OAuthConsumer { key, .. } => format!("oauth-consumer:{key}"),
        }
    }
}

/// A minted OAuth access token.
#[derive(Clone, Debug)]
pub struct Token {
    pub access_token: SecretString,
    pub scopes: Vec<String>,
    pub expires_in: Duration,
    pub obtained: Instant,
}

impl Token {
    pub fn expires_at(&self) -> Instant {
        self.obtained + self.expires_in
    }

    /// Still good for a while: renew ahead of expiry by a tenth of its life, at most 5 min.
    pub fn is_fresh(&self) -> bool {
        let margin = (self.expires_in / 10).min(Duration::from_secs(300));
        Instant::now() + margin < self.expires_at()
    }
}

/// One credential as the operator uses it: its auth, its own request budget, and its
/// cached OAuth token. Shared by every reconcile that uses the credential.
pub struct Credential {
    pub(crate) auth: Mutex<Auth>,
    pub(crate) limiter: Mutex<(u32, std::sync::Arc<DefaultDirectRateLimiter>)>,
    pub(crate) token: tokio::sync::Mutex<Option<Token>>,
    recent: Mutex<VecDeque<Instant>>,
    identity: String,
    /// The window the budget applies to: an hour, as Bitbucket counts (shorter only in
    /// tests and benchmarks, which scale the hour down).
    window: Duration,
}

/// Bitbucket's budget window: requests per hour.
pub const HOUR: Duration = Duration::from_secs(3600);

fn limiter_for(per_window: u32, window: Duration) -> std::sync::Arc<DefaultDirectRateLimiter> {
    let per_window = NonZeroU32::new(per_window.max(1)).unwrap_or(NonZeroU32::MIN);
    // A burst of a tenth of the window keeps budget + burst under Bitbucket's cap while
    // letting a small batch of work go through at once.
    let burst = NonZeroU32::new((per_window.get() / 10).max(1)).unwrap_or(NonZeroU32::MIN);
    let period = window / per_window.get();
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_hour(per_window)).allow_burst(burst);
    std::sync::Arc::new(RateLimiter::direct(quota))
}

impl Credential {
    pub fn new(auth: Auth, requests_per_hour: u32, window: Duration) -> Self {
        Self {
            window,
            identity: auth.identity(),
            auth: Mutex::new(auth),
            limiter: Mutex::new((requests_per_hour, limiter_for(requests_per_hour, window))),
            token: tokio::sync::Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The hourly budget this credential was configured with.
    pub fn limiter_budget(&self) -> u32 {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    pub fn auth(&self) -> Auth {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes a new secret or budget into account; a changed secret drops the cached token.
    pub(crate) fn update(&self, auth: &Auth, requests_per_hour: u32) -> bool {
        let mut changed = false;
        {
            let mut current = self.auth.lock().unwrap_or_else(|e| e.into_inner());
            if *current != *auth {
                *current = auth.clone();
                changed = true;
            }
        }
        let mut l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if l.0 != requests_per_hour {
            *l = (requests_per_hour, limiter_for(requests_per_hour, self.window));
        }
        changed
    }

    /// Waits until the operator's own budget allows one more request.
    pub(crate) async fn acquire(&self) {
        let limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner()).1.clone();
        limiter.until_ready().await;
        let budget = self.limiter.lock().unwrap_or_else(|e| e.into_inner()).0;
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back(now);
        while recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            recent.pop_front();
        }
        METRICS
            .rate_budget_remaining
            .get_or_create(&CredentialLabels { credential: self.identity.clone() })
            .set(i64::from(budget) - recent.len() as i64);
    }
}
