//! The controllers and what they share: the context, the error type with its condition
//! reasons, conditions, events and backoff.

pub mod access_key;
pub mod cache;
pub mod oauth_consumer;
pub mod workspace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use thiserror::Error;

use crate::bitbucket::{self, Bitbucket};
use crate::keys::KeyError;

pub const FIELD_MANAGER: &str = "bitbucket-credentials-operator";

/// Settings of the controllers that come from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cluster_name: String,
    pub cluster_resource_namespace: String,
    /// How often a Ready access key is compared with Bitbucket.
    pub drift_check_interval: Duration,
}

/// Events waiting to be published, at most this many; a reconcile that would add one
/// more waits (memory stays bounded when the API server falls behind).
const EVENT_QUEUE: usize = 1024;
/// Events published at once.
const EVENT_PUBLISHERS: usize = 8;

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub bitbucket: Arc<Bitbucket>,
    pub settings: Settings,
    pub caches: cache::Caches,
    events: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Needs a Tokio runtime: it starts the task that publishes events.
    pub fn new(client: Client, bitbucket: Arc<Bitbucket>, settings: Settings) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: None };
        let (events, queue) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        tokio::spawn(publish_events(queue, client.clone(), reporter));
        Self { client, bitbucket, settings, caches: Default::default(), events, failures: Mutex::new(HashMap::new()) }
    }

    /// Queues an Event: neither its round trip nor its failure holds up or fails a
    /// reconcile.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let reference: ObjectReference = obj.object_ref(&());
        if self.events.send((ev, reference)).await.is_err() {
            tracing::debug!("event publisher stopped");
        }
    }

    /// The delay before retrying after `error`, growing with consecutive failures of the
    /// same object, with jitter so that many failing objects do not retry in step.
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K, error: &Error) -> Duration {
        let key = ObjectRef::from_obj(obj).to_string();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        let (base, max) = if error.is_transient() {
            (Duration::from_secs(2), Duration::from_secs(300))
        } else {
            // Someone has to change something: look again now and then, not in a loop.
            (Duration::from_secs(30), Duration::from_secs(900))
        };
        let base = if matches!(error, Error::Bitbucket { source: bitbucket::Error::RateLimited, .. }) {
            Duration::from_secs(60)
        } else {
            base
        };
        let delay = base.saturating_mul(1 << (*n - 1).min(10)).min(max);
        jitter(delay)
    }

    /// Clears the object's failure count (after a success, or when it goes away).
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let key = ObjectRef::from_obj(obj).to_string();
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}

/// Publishes queued events, a few at a time. A recorder per event: a shared one keeps
/// every event it published for minutes (and scans them all on each publish), which at
/// thousands of objects costs more memory than the objects themselves; repeats are few
/// anyway, as failures publish only when their reason changes.
async fn publish_events(queue: tokio::sync::mpsc::Receiver<(Event, ObjectReference)>, client: Client, reporter: Reporter) {
    use futures::StreamExt;
    let queued = futures::stream::unfold(queue, |mut q| async move { q.recv().await.map(|e| (e, q)) });
    queued
        .for_each_concurrent(EVENT_PUBLISHERS, |(ev, reference)| {
            let recorder = Recorder::new(client.clone(), reporter.clone());
            async move {
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::debug!(error = %e, "cannot publish event");
                }
            }
        })
        .await;
}

/// ±20 % so that work scheduled together spreads out.
pub fn jitter(d: Duration) -> Duration {
    let f = rand::thread_rng().gen_range(0.8..1.2);
    d.mul_f64(f)
}

/// Everything a reconcile can fail with. Each variant names its condition reason and
/// knows whether it is worth retrying soon.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("{target}: {source}")]
    Bitbucket { target: String, source: bitbucket::Error },
    #[error("{kind} {name} not found{hint}")]
    WorkspaceNotFound { kind: &'static str, name: String, hint: String },
    #[error("workspace {0} is not Ready: {1}")]
    WorkspaceNotReady(String, String),
    #[error("ClusterBitbucketWorkspace {0} does not admit namespace {1}: add it to spec.allowedNamespaces")]
    WorkspaceNotAllowed(String, String),
    #[error("{0} is not allowed by the workspace's allowedRepositories {1:?}")]
    RepositoryNotAllowed(String, Vec<String>),
    #[error("Secret {namespace}/{name} not found: create it with keys {keys}")]
    AuthSecretNotFound { namespace: String, name: String, keys: &'static str },
    #[error("Secret {namespace}/{name} lacks key {key} (it needs {keys})")]
    AuthSecretInvalid { namespace: String, name: String, key: String, keys: &'static str },
    #[error("Secret {0} exists and is not owned by this object: delete or rename it, or choose another spec.secret.name")]
    SecretConflict(String),
    #[error("key material: {0}")]
    Key(#[from] KeyError),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn bitbucket(target: impl ToString, source: bitbucket::Error) -> Self {
        Error::Bitbucket { target: target.to_string(), source }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesError",
            Error::Bitbucket { source, .. } => source.reason(),
            Error::WorkspaceNotFound { .. } => "WorkspaceNotFound",
            Error::WorkspaceNotReady(..) => "WorkspaceNotReady",
            Error::WorkspaceNotAllowed(..) => "WorkspaceNotAllowed",
            Error::RepositoryNotAllowed(..) => "RepositoryNotAllowed",
            Error::AuthSecretNotFound { .. } => "SecretNotFound",
            Error::AuthSecretInvalid { .. } => "SecretInvalid",
            Error::SecretConflict(_) => "SecretConflict",
            Error::Key(_) => "KeyGenerationFailed",
            Error::Finalizer(_) => "FinalizerError",
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(_) | Error::Finalizer(_) | Error::Key(_) => true,
            Error::Bitbucket { source, .. } => source.is_transient(),
            // The workspace may become Ready on its own (its check is retried).
            Error::WorkspaceNotReady(..) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A `metav1.Condition`, keeping `lastTransitionTime` when the status does not change.
pub fn condition(previous: &[Condition], type_: &str, status: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// Replaces the condition of the same type in `conditions`.
pub fn set_condition(conditions: &mut Vec<Condition>, c: Condition) {
    conditions.retain(|x| x.type_ != c.type_);
    conditions.push(c);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

pub fn time_after(d: Duration) -> Time {
    Time(Timestamp::now() + jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
}

/// Parses a Go duration (`2160h`, `10m`, `1h30m`), as the schema's pattern admits.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(value * unit).ok()?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// Seconds from now until `t` (negative if past).
pub fn seconds_until(t: &Time) -> i64 {
    t.0.as_second() - Timestamp::now().as_second()
}

/// Whether an object is owned (as controller) by the object with `uid`.
pub fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references().iter().any(|o| o.uid == uid)
}

/// The name of an object for messages: namespace/name.
pub fn display_name<K: Resource + ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("2160h"), Some(Duration::from_secs(2160 * 3600)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("h"), None);
    }
}
