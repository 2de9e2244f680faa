//! Prometheus metrics of the process. One registry, created once; every label value is
//! an operation, a status, a reason or an object name: never secret material.

use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sync::Locked;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub operation: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CredentialLabels {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ObjectLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

pub(crate) struct Metrics {
    pub bitbucket_requests: Family<RequestLabels, Counter>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub reconcile_panics: Counter,
    pub rate_budget_remaining: Family<CredentialLabels, Gauge>,
    pub rate_limited: Family<CredentialLabels, Counter>,
    pub rate_limit_cooldown_until: Family<CredentialLabels, Gauge>,
    pub drift_check_interval: Family<CredentialLabels, Gauge>,
    pub seconds_until_deadline: Family<ObjectLabels, Gauge>,
    pub ready_status: Family<ObjectLabels, Gauge>,
    pub last_success_timestamp: Family<ObjectLabels, Gauge>,
    pub next_rotation_timestamp: Family<ObjectLabels, Gauge>,
    pub expiration_timestamp: Family<ObjectLabels, Gauge>,
    registry: Mutex<Registry>,
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        bitbucket_requests: Family::default(),
        reconciles: Family::default(),
        reconcile_errors: Family::default(),
        reconcile_panics: Counter::default(),
        reconcile_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14))),
        rate_budget_remaining: Family::default(),
        rate_limited: Family::default(),
        rate_limit_cooldown_until: Family::default(),
        drift_check_interval: Family::default(),
        seconds_until_deadline: Family::default(),
        ready_status: Family::default(),
        last_success_timestamp: Family::default(),
        next_rotation_timestamp: Family::default(),
        expiration_timestamp: Family::default(),
        registry: Mutex::new(Registry::with_prefix("bitbucket_credentials_operator")),
    };
    {
        let mut r = m.registry.locked();
        r.register("bitbucket_requests", "Bitbucket API requests by operation and HTTP status", m.bitbucket_requests.clone());
        r.register("reconciles", "Reconciles by controller", m.reconciles.clone());
        r.register("reconcile_errors", "Failed reconciles by controller and reason", m.reconcile_errors.clone());
        r.register(
            "reconcile_panics",
            "Reconciles that panicked (a bug); the object reports InternalError and the process goes on",
            m.reconcile_panics.clone(),
        );
        r.register("reconcile_duration_seconds", "Duration of reconciles", m.reconcile_duration.clone());
        r.register(
            "rate_budget_remaining",
            "Requests left in the operator's own hourly budget, per credential (label: kind and a short salted digest, never an account or key)",
            m.rate_budget_remaining.clone(),
        );
        r.register("bitbucket_rate_limited", "Bitbucket's 429 answers, per credential", m.rate_limited.clone());
        r.register(
            "rate_limit_cooldown_until_timestamp_seconds",
            "Unix time until which a credential's requests pause after Bitbucket's 429 (in the past: no cool-down)",
            m.rate_limit_cooldown_until.clone(),
        );
        r.register(
            "drift_check_interval_seconds",
            "How often the access keys of a credential are compared with Bitbucket, as its budget share allows",
            m.drift_check_interval.clone(),
        );
        r.register(
            "seconds_until_deadline",
            "Seconds until the next key rotation (BitbucketAccessKey) or token expiry (BitbucketOAuthConsumer)",
            m.seconds_until_deadline.clone(),
        );
        // Absolute times stay true while the operator is stuck (a countdown only moves
        // when the object is reconciled): alert on `x - time()`.
        r.register("ready_status", "1 while the object's Ready condition is True, 0 while it is False", m.ready_status.clone());
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the object's last successful reconcile",
            m.last_success_timestamp.clone(),
        );
        r.register(
            "next_rotation_timestamp_seconds",
            "Unix time of a BitbucketAccessKey's next scheduled rotation",
            m.next_rotation_timestamp.clone(),
        );
        r.register(
            "expiration_timestamp_seconds",
            "Unix time at which the token in a BitbucketOAuthConsumer's Secret expires",
            m.expiration_timestamp.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("build_info", "The operator's version (always 1)", build);
    }
    m
});

impl Metrics {
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.locked();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }

    pub(crate) fn request(&self, operation: &str, status: &str) {
        self.bitbucket_requests.get_or_create(&RequestLabels { operation: operation.into(), status: status.into() }).inc();
    }
}

impl Metrics {
    /// The object reconciled (`ok`) or failed; an object being deleted loses its series.
    pub(crate) fn object_outcome(&self, labels: &ObjectLabels, ok: bool, deleting: bool) {
        if deleting {
            self.forget_object(labels);
            return;
        }
        self.ready_status.get_or_create(labels).set(i64::from(ok));
        if ok {
            self.last_success_timestamp.get_or_create(labels).set(unix_now() as i64);
        }
    }

    /// Every per-object series of an object that is gone.
    pub(crate) fn forget_object(&self, labels: &ObjectLabels) {
        for f in [
            &self.ready_status,
            &self.last_success_timestamp,
            &self.next_rotation_timestamp,
            &self.expiration_timestamp,
            &self.seconds_until_deadline,
        ] {
            f.remove(labels);
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A timestamp as Unix seconds.
pub(crate) fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}
