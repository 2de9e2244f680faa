//! Bitbucket's per-credential rolling-window request budget.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::RateLimitConfig;

#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    /// Admission times inside the window, oldest first, per credential id.
    admitted: HashMap<String, VecDeque<Instant>>,
}

/// One credential's standing, for `GET /_sim/rate-limit`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub credential: String,
    pub used: u64,
    pub remaining: u64,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self { config, admitted: HashMap::new() }
    }

    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// A new budget applies at once; requests already in the window still count.
    pub fn set_config(&mut self, config: RateLimitConfig) {
        self.config = config;
    }

    /// Forgets all usage, as if an hour had passed for everyone.
    pub fn reset(&mut self) {
        self.admitted.clear();
    }

    /// Counts a request against `credential`, or refuses it when the budget is spent.
    /// Refused requests do not count, so a client that backs off recovers once the
    /// oldest admitted requests leave the window.
    pub fn admit(&mut self, credential: &str, now: Instant) -> bool {
        let window = self.window();
        let budget = self.config.requests_per_window;
        let times = self.admitted.entry(credential.to_owned()).or_default();
        prune(times, now, window);
        if times.len() as u64 >= budget {
            return false;
        }
        times.push_back(now);
        true
    }

    pub fn usage(&mut self, now: Instant) -> Vec<Usage> {
        let window = self.window();
        let budget = self.config.requests_per_window;
        let mut out: Vec<Usage> = self
            .admitted
            .iter_mut()
            .map(|(credential, times)| {
                prune(times, now, window);
                let used = times.len() as u64;
                Usage { credential: credential.clone(), used, remaining: budget.saturating_sub(used) }
            })
            .collect();
        out.sort_by(|a, b| a.credential.cmp(&b.credential));
        out
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_seconds)
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while let Some(oldest) = times.front() {
        if now.saturating_duration_since(*oldest) >= window {
            times.pop_front();
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_per_credential_and_rolls() {
        let mut limiter = RateLimiter::new(RateLimitConfig { requests_per_window: 2, window_seconds: 10 });
        let t0 = Instant::now();
        assert!(limiter.admit("a", t0));
        assert!(limiter.admit("a", t0 + Duration::from_secs(5)));
        assert!(!limiter.admit("a", t0 + Duration::from_secs(6)));
        assert!(limiter.admit("b", t0 + Duration::from_secs(6)), "other credential unaffected");
        // The first request leaves the window at t0+10: one slot frees up.
        assert!(limiter.admit("a", t0 + Duration::from_secs(10)));
        assert!(!limiter.admit("a", t0 + Duration::from_secs(11)));
    }
}
