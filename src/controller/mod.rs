//! The controllers and what they share: the context, the error type with its condition
//! reasons, conditions, events and backoff.

pub(crate) mod access_key;
pub(crate) mod cache;
pub(crate) mod marker;
pub(crate) mod oauth_consumer;
/// The table of reasons, checked against the errors and rendered as docs/troubleshooting.md.
#[cfg(test)]
mod reasons;
pub(crate) mod workspace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use thiserror::Error;
use tracing::Instrument;

use crate::bitbucket::{self, Bitbucket};
use crate::keys::KeyError;
use crate::metrics::{ControllerLabels, ErrorLabels, METRICS};
use crate::sync::Locked;

pub(crate) const FIELD_MANAGER: &str = "bitbucket-credentials-operator";

/// Settings of the controllers that come from the command line.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub cluster_name: String,
    pub cluster_resource_namespace: String,
    /// How often a Ready access key is compared with Bitbucket: from a share of its
    /// credential's budget, within bounds.
    pub drift: crate::bitbucket::DriftPace,
    /// The longest one reconcile may take; past it, it is stopped and retried later.
    pub reconcile_timeout: Duration,
    /// Reconciles in flight at once that use one workspace object (the others go on).
    pub per_workspace_concurrency: usize,
    /// The namespaces served; empty: all.
    pub watch_namespaces: Vec<String>,
}

/// Events waiting to be published, at most this many; a reconcile that would add one
/// more waits (memory stays bounded when the API server falls behind).
const EVENT_QUEUE: usize = 1024;
/// Events published at once.
const EVENT_PUBLISHERS: usize = 8;

/// How long a reconcile waits for its workspace's share of the workers before it goes
/// back to the queue, and how soon it comes back.
const SLOT_WAIT: Duration = Duration::from_millis(500);
pub(crate) const SLOT_RETRY: Duration = Duration::from_secs(3);

/// Names the workspace object a reference in `namespace` points at, per controller.
pub(crate) fn workspace_key(controller: &str, namespace: &str, r: &crate::api::WorkspaceRef) -> String {
    match r.kind {
        crate::api::WorkspaceKind::BitbucketWorkspace => format!("{controller} BitbucketWorkspace {namespace}/{}", r.name),
        crate::api::WorkspaceKind::ClusterBitbucketWorkspace => format!("{controller} ClusterBitbucketWorkspace {}", r.name),
    }
}

/// What every reconcile gets.
pub(crate) struct Context {
    pub client: Client,
    pub bitbucket: Arc<Bitbucket>,
    pub settings: Settings,
    pub caches: cache::Caches,
    events: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    failures: Mutex<HashMap<String, u32>>,
    /// Per workspace object: how many of its users' reconciles may run at once.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Per workspace object (uid): the credential and generation last verified, and when.
    verified: Mutex<HashMap<String, (VerifiedStamp, std::time::Instant)>>,
}

/// The credential (its address) and the workspace generation a verification was for.
type VerifiedStamp = (usize, Option<i64>);

impl Context {
    /// Needs a Tokio runtime: it starts the task that publishes events.
    pub(crate) fn new(client: Client, bitbucket: Arc<Bitbucket>, settings: Settings) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: None };
        let (events, queue) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        tokio::spawn(publish_events(queue, client.clone(), reporter));
        Self {
            client,
            bitbucket,
            settings,
            caches: Default::default(),
            events,
            failures: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Whether workspace `uid` was verified with the same credential and generation
    /// within `max_age`.
    pub(crate) fn recently_verified(&self, uid: &str, stamp: VerifiedStamp, max_age: Duration) -> bool {
        let v = self.verified.locked();
        v.get(uid).is_some_and(|(s, at)| *s == stamp && at.elapsed() < max_age)
    }

    pub(crate) fn verified(&self, uid: &str, stamp: VerifiedStamp) {
        let mut v = self.verified.locked();
        // Entries older than any use are dropped (bounded by the workspaces that exist).
        v.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(3600));
        v.insert(uid.to_string(), (stamp, std::time::Instant::now()));
    }

    /// A slot among the reconciles that use workspace `key`, or None when that workspace
    /// already has its share of the workers in flight for a moment: a slow or
    /// rate-limited tenant cannot occupy every worker; its objects wait in the queue, not
    /// in a worker.
    pub(crate) async fn workspace_slot(&self, key: String) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = {
            let mut slots = self.slots.locked();
            // Forget the slots of workspaces nobody is using (bounded by what is in flight).
            slots.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < self.settings.per_workspace_concurrency.max(1));
            let limit = self.settings.per_workspace_concurrency.max(1);
            slots.entry(key).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit))).clone()
        };
        if let Ok(p) = slot.clone().try_acquire_owned() {
            return Some(p);
        }
        tokio::time::timeout(SLOT_WAIT, slot.acquire_owned()).await.ok().and_then(|r| r.ok())
    }

    /// Queues an Event: neither its round trip nor its failure holds up or fails a
    /// reconcile.
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
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
    pub(crate) fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K, error: &Error) -> Duration {
        METRICS.object_outcome(&object_labels(obj), false, obj.meta().deletion_timestamp.is_some());
        let key = ObjectRef::from_obj(obj).to_string();
        let mut failures = self.failures.locked();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        let (base, max) = if error.is_transient() {
            (Duration::from_secs(2), Duration::from_secs(300))
        } else {
            // Someone has to change something: look again now and then, not in a loop.
            (Duration::from_secs(30), Duration::from_secs(900))
        };
        let delay = base.saturating_mul(1 << (*n - 1).min(10)).min(max);
        // The operator's own budget, or the credential's cool-down after a 429, says
        // exactly when the next request may go.
        match error.retry_after() {
            Some(at) => jitter(at.max(Duration::from_secs(1))).max(at).min(MAX_REQUEUE),
            None => jitter(delay),
        }
    }

    /// Clears the object's failure count (after a success, or when it goes away).
    pub(crate) fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let key = ObjectRef::from_obj(obj).to_string();
        self.failures.locked().remove(&key);
        METRICS.object_outcome(&object_labels(obj), true, obj.meta().deletion_timestamp.is_some());
    }
}

/// The labels of an object's own series.
pub(crate) fn object_labels<K: Resource<DynamicType = ()>>(obj: &K) -> crate::metrics::ObjectLabels {
    crate::metrics::ObjectLabels {
        kind: K::kind(&()).to_string(),
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
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

/// What a kind brings to the reconcile that every controller shares (`reconcile`).
pub(crate) trait Reconciled: Resource<DynamicType = ()> + Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The controller's name in metrics.
    const CONTROLLER: &'static str;

    /// The workspace object whose share of the workers this object's reconciles take.
    fn slot(&self) -> Option<String>;

    /// The API of this kind where the object is.
    fn api(&self, client: Client) -> Api<Self>;

    /// Records a failure in status: Ready=False (or Degraded) with the error's reason and
    /// when the next attempt comes. Returns whether the condition changed (worth an event).
    fn record_failure(&self, ctx: &Context, error: &Error, delay: Duration) -> impl std::future::Future<Output = Result<bool>> + Send;
}

/// One reconcile of any kind: the object's share of the workers, metrics, a tracing span,
/// a deadline and a panic guard; on failure the condition with its event (when it
/// changed) and a backoff that grows until a success, cleanup included, resets it.
pub(crate) async fn reconcile<K, F, Fut>(obj: Arc<K>, ctx: Arc<Context>, work: F) -> Result<Action>
where
    K: Reconciled,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Action>> + Send + 'static,
{
    let _slot = match obj.slot() {
        Some(key) => match ctx.workspace_slot(key).await {
            Some(permit) => Some(permit),
            None => return Ok(requeue(jitter(SLOT_RETRY))),
        },
        None => None,
    };
    let labels = ControllerLabels { controller: K::CONTROLLER.into() };
    METRICS.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let span = tracing::debug_span!("reconcile", controller = K::CONTROLLER, object = %display_name(&*obj));
    let result = guarded(ctx.settings.reconcile_timeout, work(obj.clone(), ctx.clone()).instrument(span)).await;
    METRICS.reconcile_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let error = match result {
        Ok(action) => {
            ctx.succeeded(&*obj);
            return Ok(action);
        }
        Err(e) => e,
    };
    METRICS.reconcile_errors.get_or_create(&ErrorLabels { controller: K::CONTROLLER.into(), reason: error.reason().into() }).inc();
    let delay = ctx.backoff(&*obj, &error);
    tracing::warn!(object = %display_name(&*obj), reason = error.reason(), error = %error, "reconcile failed");
    let changed = obj.record_failure(&ctx, &error, delay).await.unwrap_or_else(|e| {
        tracing::warn!(object = %display_name(&*obj), error = %e, "cannot record failure in status");
        true
    });
    if changed {
        ctx.event(&*obj, true, error.reason(), error.to_string()).await;
    }
    Ok(requeue(delay))
}

/// The message of a failure condition: the error and when the next attempt comes.
pub(crate) fn failure_message(error: &Error, delay: Duration, kept: &str) -> String {
    let when = if error.is_transient() { "retrying" } else { "checking again" };
    format!("{error}{kept}; {when} in {}s", requeue_delay(delay).as_secs())
}

/// Applies `status` as the operator's field manager.
pub(crate) async fn patch_status<K>(obj: &K, ctx: &Context, status: &impl serde::Serialize) -> Result<()>
where
    K: Reconciled + serde::de::DeserializeOwned,
{
    let api = obj.api(ctx.client.clone());
    let patch = serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(&obj.name_any(), &kube::api::PatchParams::apply(FIELD_MANAGER).force(), &kube::api::Patch::Apply(patch)).await?;
    Ok(())
}

/// Writes an output Secret (server-side apply as the operator, taking over its fields),
/// telling the cache that the echo of this write is the operator's own.
pub(crate) async fn apply_secret(
    ctx: &Context,
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    desired: &k8s_openapi::api::core::v1::Secret,
) -> Result<()> {
    let (ns, name) = (desired.metadata.namespace.clone().unwrap_or_default(), desired.name_any());
    let mut body = serde_json::to_value(desired).map_err(|e| Error::Internal(e.to_string()))?;
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    ctx.caches.writing(&ns, &name);
    let params = kube::api::PatchParams::apply(FIELD_MANAGER).force();
    let written =
        secrets.patch(&name, &params, &kube::api::Patch::Apply(body)).await.inspect_err(|_| ctx.caches.write_failed(&ns, &name))?;
    tracing::debug!(secret = %name, resource_version = ?written.resource_version(), "Secret written");
    ctx.caches.wrote(&written);
    Ok(())
}

/// ±20 % so that work scheduled together spreads out.
pub(crate) fn jitter(d: Duration) -> Duration {
    let f = rand::thread_rng().gen_range(0.8..1.2);
    Duration::try_from_secs_f64(d.as_secs_f64() * f).unwrap_or(d)
}

/// The longest a requeue waits: the controller's queue cannot schedule years ahead (and a
/// reconcile a week later finds nothing it would not have found then).
pub(crate) const MAX_REQUEUE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A requeue after `d`, at least a second and at most `MAX_REQUEUE` away.
pub(crate) fn requeue(d: Duration) -> Action {
    Action::requeue(requeue_delay(d))
}

/// The delay a requeue of `d` waits: at least a second, at most `MAX_REQUEUE`.
fn requeue_delay(d: Duration) -> Duration {
    d.clamp(Duration::from_secs(1), MAX_REQUEUE)
}

/// Runs one reconcile as a task of its own with a deadline: a panic in it (a bug meeting
/// an input nobody foresaw) becomes that object's `InternalError`, and a reconcile stuck
/// on a slow server is stopped, instead of ending the process or holding a worker.
/// Stopping a reconcile anywhere is safe: the order of its steps is crash-safe.
pub(crate) async fn guarded<T, F>(timeout: Duration, work: F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let mut task = tokio::spawn(work);
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) if e.is_panic() => {
            let payload = e.into_panic();
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            METRICS.reconcile_panics.inc();
            Err(Error::Internal(what.chars().take(300).collect()))
        }
        Ok(Err(_)) => Err(Error::Internal("the reconcile was cancelled".into())),
        Err(_) => {
            task.abort();
            Err(Error::Deadline(timeout))
        }
    }
}

/// Everything a reconcile can fail with. Each variant names its condition reason and
/// knows whether it is worth retrying soon.
#[derive(Debug, Error)]
pub(crate) enum Error {
    #[error("Kubernetes API error: {}", kube_message(.0))]
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
    #[error("finalizer: {}", kube_message(.0))]
    Finalizer(#[source] kube::Error),
    #[error("internal error (a bug; please report it): {0}")]
    Internal(String),
    #[error("the reconcile took longer than {0:?} and was stopped")]
    Deadline(Duration),
}

/// The API server's own message for an API error (not the debug dump of its Status), and
/// for a 403 what to do about it.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if forbidden(e) => format!(
            "{}: the operator's ServiceAccount lacks this permission; install the RBAC of the chart that matches the operator's version (docs/install.md#permissions)",
            s.message
        ),
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        e => e.to_string(),
    }
}

fn forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

impl Error {
    pub(crate) fn bitbucket(target: impl ToString, source: bitbucket::Error) -> Self {
        Error::Bitbucket { target: target.to_string(), source }
    }

    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Error::Kube(e) if forbidden(e) => "OperatorForbidden",
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
            Error::Internal(_) => "InternalError",
            Error::Deadline(_) => "ReconcileTimeout",
        }
    }

    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Kube(_) | Error::Finalizer(_) | Error::Key(_) | Error::Deadline(_) => true,
            Error::Bitbucket { source, .. } => source.is_transient(),
            // The workspace may become Ready on its own (its check is retried).
            Error::WorkspaceNotReady(..) => true,
            _ => false,
        }
    }
}

impl Error {
    /// A failure of Bitbucket itself (5xx, timeout, 429, the operator's own budget) or a
    /// reconcile cut short: it says nothing about the credentials already handed out.
    pub(crate) fn keeps_secret_usable(&self) -> bool {
        match self {
            Error::Bitbucket { source, .. } => source.is_transient(),
            Error::Deadline(_) => true,
            _ => false,
        }
    }

    /// When the operator's own rate budget allows the next request, if that is why this failed.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Bitbucket { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// The condition of a failure that leaves the Secret usable.
pub(crate) const DEGRADED: &str = "Degraded";

/// Records a failed reconcile in `conditions`; returns whether the condition changed
/// (worth an event). A failure that says nothing about the credential in the Secret
/// (`Error::keeps_secret_usable`), while `Ready=True` for this generation and
/// `still_valid` (an unexpired token, say), leaves Ready alone and sets `Degraded=True`:
/// Ready means a consumer can rely on the Secret. Anything else sets `Ready=False`.
pub(crate) fn record_failure(
    conditions: &mut Vec<Condition>,
    error: &Error,
    message: String,
    generation: Option<i64>,
    still_valid: bool,
) -> bool {
    let ready_now = crate::api::ready_condition(conditions).is_some_and(|c| c.status == "True" && c.observed_generation == generation);
    let usable = still_valid && ready_now && error.keeps_secret_usable();
    let (type_, status) = if usable { (DEGRADED, "True") } else { ("Ready", "False") };
    let unchanged = conditions.iter().any(|c| c.type_ == type_ && c.status == status && c.reason == error.reason());
    let c = condition(conditions, type_, usable, error.reason(), message, generation);
    set_condition(conditions, c);
    if !usable {
        clear_degraded(conditions);
    }
    !unchanged
}

/// After a success (or when Ready=False says it all): no `Degraded` condition.
pub(crate) fn clear_degraded(conditions: &mut Vec<Condition>) {
    conditions.retain(|c| c.type_ != DEGRADED);
}

/// A `metav1.Condition`, keeping `lastTransitionTime` when the status does not change.
pub(crate) fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous.iter().find(|c| c.type_ == type_ && c.status == status).map(|c| c.last_transition_time.clone()).unwrap_or_else(now);
    Condition { type_: type_.into(), status, reason: reason.into(), message, observed_generation: generation, last_transition_time: last }
}

/// Replaces the condition of the same type in `conditions`.
pub(crate) fn set_condition(conditions: &mut Vec<Condition>, c: Condition) {
    conditions.retain(|x| x.type_ != c.type_);
    conditions.push(c);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

pub(crate) fn time_after(d: Duration) -> Time {
    add(&now(), d)
}

/// `t + d`, saturating at the largest time a timestamp holds instead of panicking.
pub(crate) fn add(t: &Time, d: Duration) -> Time {
    let d = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    Time(t.0.checked_add(d).unwrap_or(Timestamp::MAX))
}

/// A duration from the spec, parsed and brought within `[min, max]`: objects stored before
/// the CRD's bounds existed (or past them by any other path) get the nearest sane value.
pub(crate) fn bounded_duration(s: &str, min: Duration, max: Duration) -> Option<Duration> {
    parse_duration_saturating(s).map(|d| d.clamp(min, max))
}

/// Parses a Go duration (`2160h`, `10m`, `1h30m`), as the schema's pattern admits.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
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
        total = total.checked_add(Duration::try_from_secs_f64(value * unit).ok()?)?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// Like `parse_duration`, but a value too large for a `Duration` is `Duration::MAX`.
fn parse_duration_saturating(s: &str) -> Option<Duration> {
    parse_duration(s).or_else(|| {
        let ok = !s.trim().is_empty() && s.trim().chars().all(|c| c.is_ascii_digit() || c == '.' || "nsuµmh".contains(c));
        ok.then_some(Duration::MAX)
    })
}

/// Seconds from now until `t` (negative if past).
pub(crate) fn seconds_until(t: &Time) -> i64 {
    t.0.as_second() - Timestamp::now().as_second()
}

/// A JSON patch that adds `finalizer` to an object whose finalizers are `current`; its
/// test makes a stale view fail instead of dropping someone else's finalizer.
pub(crate) fn finalizer_added(current: &[String], finalizer: &str) -> serde_json::Value {
    if current.is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ])
    }
}

/// A JSON patch that removes the finalizer at index `i`, if it still is `finalizer` there.
pub(crate) fn finalizer_removed(i: usize, finalizer: &str) -> serde_json::Value {
    serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ])
}

/// Whether an object is owned (as controller) by the object with `uid`.
pub(crate) fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references().iter().any(|o| o.uid == uid)
}

/// The name of an object for messages: namespace/name.
pub(crate) fn display_name<K: Resource + ResourceExt>(obj: &K) -> String {
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

    #[test]
    fn a_forbidden_call_names_the_permission_and_the_fix_not_a_debug_dump() {
        let status = kube::core::Status {
            code: 403,
            reason: "Forbidden".into(),
            message: "bitbucketoauthconsumers.bitbucket.credentials.dev \"ci\" is forbidden: User \"system:serviceaccount:bco:bco\" cannot get resource".into(),
            ..Default::default()
        };
        let e = Error::Kube(kube::Error::Api(Box::new(status)));
        assert_eq!(e.reason(), "OperatorForbidden");
        let text = e.to_string();
        assert!(text.contains("cannot get resource") && text.contains("docs/install.md#permissions"), "{text}");
        assert!(!text.contains("Status {"), "{text}");
        let gone = kube::core::Status { code: 410, reason: "Expired".into(), message: "too old".into(), ..Default::default() };
        let e = Error::Kube(kube::Error::Api(Box::new(gone)));
        assert_eq!((e.reason(), e.to_string().as_str()), ("KubernetesError", "Kubernetes API error: too old (410 Expired)"));
    }
}
