//! Injected failures: slowness, server errors, held-back answers and rate-limit bursts.

use std::time::Duration;

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::FaultConfig;

/// What goes wrong with one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Sleep before handling.
    pub latency: Duration,
    /// Answer this 5xx instead of handling the request.
    pub server_error: Option<StatusCode>,
    /// Answer 429 although the credential is under budget.
    pub rate_limit_burst: bool,
    /// Handle the request, then hold the answer back this long (the client likely times
    /// out without knowing whether its request took effect).
    pub hold_answer: Option<Duration>,
}

#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    rng: StdRng,
}

impl Faults {
    pub fn new(config: FaultConfig, seed: u64) -> Self {
        Self { config, rng: StdRng::seed_from_u64(seed) }
    }

    pub fn config(&self) -> FaultConfig {
        self.config
    }

    pub fn set_config(&mut self, config: FaultConfig) {
        self.config = config;
    }

    /// Draws the faults of one request. Every draw happens whatever the outcome, so a
    /// seed replays the same sequence for the same request order.
    pub fn plan(&mut self) -> FaultPlan {
        let c = self.config;
        let error = self.chance(c.error_rate);
        let status = match self.rng.gen_range(0..3u8) {
            0 => StatusCode::INTERNAL_SERVER_ERROR,
            1 => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let burst = self.chance(c.rate_limit_burst_rate);
        let hold = self.chance(c.timeout_rate);
        FaultPlan {
            latency: Duration::from_millis(c.latency_ms),
            server_error: error.then_some(status),
            rate_limit_burst: burst,
            hold_answer: hold.then(|| Duration::from_millis(c.timeout_ms)),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        // Config validation keeps p in [0, 1]; clamp anyway since gen_bool panics outside.
        let p = if p.is_finite() { p.clamp(0.0, 1.0) } else { 0.0 };
        self.rng.gen_bool(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults() {
        let config = FaultConfig { error_rate: 0.5, rate_limit_burst_rate: 0.3, timeout_rate: 0.2, ..FaultConfig::default() };
        let mut a = Faults::new(config, 7);
        let mut b = Faults::new(config, 7);
        for _ in 0..100 {
            assert_eq!(a.plan(), b.plan());
        }
    }

    #[test]
    fn no_faults_by_default() {
        let mut f = Faults::new(FaultConfig::default(), 1);
        for _ in 0..100 {
            let plan = f.plan();
            assert!(plan.server_error.is_none() && !plan.rate_limit_burst && plan.hold_answer.is_none());
        }
    }

    #[test]
    fn error_rate_one_always_fails() {
        let mut f = Faults::new(FaultConfig { error_rate: 1.0, ..FaultConfig::default() }, 1);
        for _ in 0..50 {
            assert!(f.plan().server_error.is_some_and(|s| s.is_server_error()));
        }
    }
}
