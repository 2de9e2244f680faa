//! `BitbucketAccessKey`: a key pair whose public half is registered as an access key on
//! repositories and projects, and whose private half is in a Secret.
//!
//! Crash safety comes from the order of the steps: a new private key is persisted in the
//! Secret before it is registered anywhere (as the current key on first use, or under
//! `rotation-pending-privatekey` during a rotation), the Secret switches to a new key
//! only once it is registered everywhere, and every key carries the object's mark (see
//! `marker`), so whatever a crash leaves half-done is found and adopted or removed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

mod plan;

use plan::{Drift, Effects, Observed};

use super::marker::{self, Marker};
use super::workspace::{Resolved, resolve, resolve_for_removal};
use super::{Context, Error, FIELD_MANAGER, Result, bounded_duration, jitter};
use crate::api::{
    AccessKeyStatus, BitbucketAccessKey, BitbucketAccessKeySpec, DeletionPolicy, FINALIZER, ROTATE_ANNOTATION, Registration,
    TARGETS_ANNOTATION,
};
use crate::bitbucket::{self, DeployKey, Target};
use crate::keys::{KeyPair, KeySpec, fingerprint_of_public};
use crate::metrics::{METRICS, unix, unix_now};
use crate::secret::{PENDING_KEY, Placement, SshTarget, access_key_secret, has_stale_fields, up_to_date};
use crate::sync::Locked;

const CONTROLLER: &str = "accesskey";
pub(crate) const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(600);
/// Bitbucket calls in flight at once for one object.
const TARGET_CONCURRENCY: usize = 4;

pub(crate) async fn reconcile(obj: Arc<BitbucketAccessKey>, ctx: Arc<Context>) -> Result<Action> {
    super::reconcile(obj, ctx, |obj, ctx| async move { with_finalizer(&obj, &ctx).await }).await
}

impl super::Reconciled for BitbucketAccessKey {
    const CONTROLLER: &'static str = CONTROLLER;

    fn slot(&self) -> Option<String> {
        Some(super::workspace_key(CONTROLLER, &self.namespace().unwrap_or_default(), &self.spec.workspace_ref))
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    /// Ready=False with the error's reason and when the next attempt comes; a registered
    /// key keeps working through Bitbucket's own failures (Degraded).
    async fn record_failure(&self, ctx: &Context, error: &Error, delay: Duration) -> Result<bool> {
        // The status as stored now: the cached copy this reconcile started from may
        // predate a status write of this reconcile (a Register stopped part-way saves
        // what it registered), and applying the condition onto it would erase that.
        // Read as the object (the chart grants `get` on it, not on its /status); if it
        // cannot be read, nothing is written rather than an older status.
        let latest = self.api(ctx.client.clone()).get(&self.name_any()).await?;
        if latest.metadata.uid != self.metadata.uid {
            return Ok(false);
        }
        let mut status = latest.status.unwrap_or_default();
        let message = super::failure_message(error, delay, "");
        let changed = super::record_failure(&mut status.conditions, error, message, self.metadata.generation, true);
        super::patch_status(self, ctx, &status).await?;
        Ok(changed)
    }
}

/// The finalizer around the work: cleanup and release when the object is being deleted;
/// otherwise the finalizer is added (before anything is registered) and the work done in
/// the same reconcile.
async fn with_finalizer(obj: &BitbucketAccessKey, ctx: &Context) -> Result<Action> {
    let api: Api<BitbucketAccessKey> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let finalizers = obj.finalizers();
    let ours = finalizers.iter().position(|f| f == FINALIZER);
    if obj.meta().deletion_timestamp.is_some() {
        let Some(i) = ours else { return Ok(Action::await_change()) };
        let action = cleanup(obj, ctx).await?;
        // The test op makes a stale copy fail instead of removing someone else's entry.
        let patch = super::finalizer_removed(i, FINALIZER);
        patch_finalizers(&api, obj, patch).await?;
        return Ok(action);
    }
    if ours.is_none() {
        let patch = super::finalizer_added(finalizers, FINALIZER);
        // The finalizer must be there before anything is registered, not before the
        // reads: both go at once.
        let (added, inputs) = tokio::join!(patch_finalizers(&api, obj, patch), read_inputs(obj, ctx));
        added?;
        return apply(obj, ctx, withdrawn(obj, ctx, inputs).await?).await;
    }
    apply(obj, ctx, withdrawn(obj, ctx, read_inputs(obj, ctx).await).await?).await
}

/// An access that the workspace's policy withdrew is revoked before it is reported.
async fn withdrawn(obj: &BitbucketAccessKey, ctx: &Context, inputs: Result<Inputs>) -> Result<Inputs> {
    match inputs {
        Err(e @ (Error::WorkspaceNotAllowed(..) | Error::RepositoryNotAllowed(..))) => Err(revoke(obj, ctx, e).await),
        other => other,
    }
}

async fn patch_finalizers(api: &Api<BitbucketAccessKey>, obj: &BitbucketAccessKey, patch: serde_json::Value) -> Result<()> {
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Internal(e.to_string()))?;
    api.patch::<BitbucketAccessKey>(&obj.name_any(), &PatchParams::default(), &Patch::Json(patch)).await.map_err(Error::Finalizer)?;
    Ok(())
}

/// The repositories and projects the spec asks for.
pub(crate) fn targets(obj: &BitbucketAccessKey) -> Vec<Target> {
    let repos = obj.spec.repositories.iter().cloned().map(Target::Repository);
    repos.chain(obj.spec.projects.iter().cloned().map(Target::Project)).collect()
}

/// Where a registration is.
pub(crate) fn target_of(r: &Registration) -> Target {
    match (&r.repository, &r.project) {
        (Some(repo), _) => Target::Repository(repo.clone()),
        (None, Some(p)) => Target::Project(p.clone()),
        (None, None) => Target::Repository(String::new()),
    }
}

fn registration(target: &Target, id: i64) -> Registration {
    match target {
        Target::Repository(r) => Registration { repository: Some(r.clone()), project: None, id },
        Target::Project(p) => Registration { repository: None, project: Some(p.clone()), id },
    }
}

/// The mark every key of this object carries: its comment, and its label unless the
/// spec sets one (see `marker`).
fn mark(obj: &BitbucketAccessKey, cluster_name: &str) -> String {
    Marker::new(&obj.uid().unwrap_or_default(), cluster_name, &obj.namespace().unwrap_or_default(), &obj.name_any()).token()
}

/// Whether a key in Bitbucket is this object's: by the mark in its comment (whole, or cut
/// to its first word, or an earlier version's), by the mark as its label, or by a
/// fingerprint this object recorded (Bitbucket may drop the comment, and a label set in
/// the spec carries no mark). Keys it did not create carry none of these.
fn is_ours(key: &DeployKey, uid: &str, fingerprints: &BTreeSet<String>) -> bool {
    key.comment.as_deref().is_some_and(|c| marker::marks(c, uid))
        || key.label.as_deref().is_some_and(|l| marker::marks(l, uid))
        || fingerprint_of_public(key.key_body()).is_some_and(|fp| fingerprints.contains(&fp))
}

/// The fingerprints this object knows as its own: status (current and retiring) and the
/// keys its Secret holds.
fn known_fingerprints<'a>(st: &AccessKeyStatus, secret_keys: impl IntoIterator<Item = &'a KeyPair>) -> BTreeSet<String> {
    let recorded = st.fingerprint.iter().cloned().chain(st.retiring_keys.iter().map(|k| k.fingerprint.clone()));
    recorded.chain(secret_keys.into_iter().map(|k| k.fingerprint().to_string())).collect()
}

fn label(obj: &BitbucketAccessKey, cluster_name: &str) -> String {
    let l = obj.spec.label.clone().filter(|l| !l.is_empty()).unwrap_or_else(|| mark(obj, cluster_name));
    l.chars().take(255).collect()
}

/// The bounds the CRD gives `rotation.period` and `rotation.gracePeriod`, enforced here
/// too: an object stored before they existed gets the nearest value inside them.
pub(crate) const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(3600);
pub(crate) const MAX_ROTATION_PERIOD: Duration = Duration::from_secs(87_600 * 3600);
pub(crate) const MAX_GRACE_PERIOD: Duration = Duration::from_secs(720 * 3600);

pub(crate) fn grace_period(spec: &BitbucketAccessKeySpec) -> Duration {
    let grace = spec
        .rotation
        .as_ref()
        .and_then(|r| r.grace_period.as_deref())
        .and_then(|s| bounded_duration(s, Duration::ZERO, MAX_GRACE_PERIOD))
        .unwrap_or(DEFAULT_GRACE_PERIOD);
    // Shorter than the period, or two keys would always be registered.
    match rotation_period(spec) {
        Some(p) if grace >= p => p / 2,
        _ => grace,
    }
}

pub(crate) fn rotation_period(spec: &BitbucketAccessKeySpec) -> Option<Duration> {
    let period = spec.rotation.as_ref().and_then(|r| r.period.as_deref())?;
    bounded_duration(period, MIN_ROTATION_PERIOD, MAX_ROTATION_PERIOD)
}

/// How `register` finds out whether a key is already on a target.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Lookup {
    /// Create it; a 400 is followed by a listing, which says whether it is there.
    Create,
    /// List the target's keys now.
    Fresh,
    /// A drift check: a listing of the target made a moment ago for another object's
    /// drift check will do (N objects on one repository share it).
    Shared,
}

/// How old a shared listing may be: longer than the spread of the objects that come due
/// on one slot (`slot_spread`), so that one listing serves them all.
fn shared_listing_age(interval: Duration) -> Duration {
    (interval / 4).min(Duration::from_secs(60))
}

/// How far apart the objects due on one slot arrive.
fn slot_spread(interval: Duration) -> Duration {
    (interval / 20).min(Duration::from_secs(10))
}

/// When an object verified at `last` (Unix seconds) is next compared with Bitbucket: on
/// the first slot of its first target's schedule at least half an interval later. Slots
/// repeat every `interval` from a phase that `target` decides; every object whose first
/// target is the same comes due together (one listing serves them all), while the
/// targets themselves are spread over the interval. A restart keeps the schedule: it
/// depends on the recorded time and the target alone.
fn drift_due_at(last: f64, interval: Duration, target: &str) -> f64 {
    let period = interval.as_secs_f64().max(1.0);
    // FNV-1a: the same phase in every process.
    let hash = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let phase = (hash % 1_000_000) as f64 / 1_000_000.0 * period;
    let earliest = last + period / 2.0;
    let slots = ((earliest - phase) / period).ceil();
    phase + slots * period
}

/// Everything one reconcile needs to act, resolved once.
struct Run<'a> {
    obj: &'a BitbucketAccessKey,
    ctx: &'a Context,
    ws: Resolved,
    uid: String,
    /// Fingerprints of this object's keys (see `is_ours`).
    fingerprints: BTreeSet<String>,
    secret_name: String,
    secrets: Api<Secret>,
    /// Keys created in Bitbucket by this reconcile (fingerprint, target), announced in
    /// one event once status records them.
    created: std::sync::Mutex<Vec<(String, String)>>,
    /// How old a listing shared with other objects' drift checks may be.
    listing_age: Duration,
    /// The Secret as stored now: as read, then as last written.
    secret: Option<Secret>,
}

impl<'a> Run<'a> {
    fn new(
        obj: &'a BitbucketAccessKey,
        ctx: &'a Context,
        ws: Resolved,
        observed: &Observed,
        secret: Option<Secret>,
        listing_age: Duration,
    ) -> Self {
        let held = observed.current.iter().chain(observed.pending.iter());
        Run {
            obj,
            ctx,
            ws,
            uid: obj.uid().unwrap_or_default(),
            fingerprints: known_fingerprints(&observed.status, held),
            secret_name: observed.secret_name.clone(),
            secrets: Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default()),
            created: Default::default(),
            listing_age,
            secret,
        }
    }

    /// The Secret with `current` (and `pending`), recording `targets` as where a key of
    /// this object may be registered.
    fn desired_secret(&self, current: &KeyPair, pending: Option<&KeyPair>, targets: &BTreeSet<Target>) -> Secret {
        let owner = self.obj.controller_owner_ref(&()).expect("a stored object has a name and uid");
        let namespace = self.obj.namespace().unwrap_or_default();
        let mut secret = access_key_secret(
            Placement { name: &self.secret_name, namespace: &namespace, owner, user: &self.obj.spec.secret.metadata },
            &self.obj.spec.secret.formats,
            current,
            pending,
            &SshTarget {
                ssh_host: &self.ws.ssh_host,
                known_hosts: &self.ws.known_hosts,
                workspace: &self.ws.workspace,
                argocd_project: self.obj.spec.secret.argocd_project.as_deref(),
            },
        );
        secret.metadata.annotations.get_or_insert_default().insert(TARGETS_ANNOTATION.into(), encode_targets(targets));
        secret
    }

    /// Makes sure `key` is registered on every target and returns the registrations.
    /// With a listing, each target's keys are read first: the key is adopted if it is
    /// there, and keys of this object that are not in `keep` (fingerprints) are removed.
    /// Without, the key is created directly; after a 400 (of any text) the target is
    /// listed and the key adopted if it is there. Every target is tried, a failure on one
    /// stops none of the others: the registrations made come back with the first error.
    async fn register_on(&self, key: &KeyPair, targets: &[Target], lookup: Lookup, keep: &BTreeSet<String>) -> plan::Registered {
        let label = label(self.obj, &self.ctx.settings.cluster_name);
        let results: Vec<Result<Registration>> = futures::stream::iter(targets.iter().cloned())
            .map(|target| {
                let label = label.clone();
                async move {
                    let client = &self.ws.client;
                    let wrap = |e| Error::bitbucket(&target, e);
                    let existing = match lookup {
                        Lookup::Create => None,
                        Lookup::Fresh => Some(Arc::new(client.list_keys(&target).await.map_err(wrap)?)),
                        Lookup::Shared => {
                            let shared =
                                self.ctx.caches.listing(client.listing_key(&target), self.listing_age, || client.list_keys(&target)).await;
                            let shared = shared.map_err(wrap)?;
                            // A key missing from a shared listing may be newer than it: look again.
                            if shared.iter().any(|k| k.key_body() == key.public_key_body()) {
                                Some(shared)
                            } else {
                                Some(Arc::new(client.list_keys(&target).await.map_err(wrap)?))
                            }
                        }
                    };
                    if let Some(keys) = &existing {
                        for k in keys.iter().filter(|k| is_ours(k, &self.uid, &self.fingerprints)) {
                            let fp = fingerprint_of_public(k.key_body()).unwrap_or_default();
                            if k.key_body() != key.public_key_body() && !keep.contains(&fp) {
                                client.delete_key(&target, k.id).await.map_err(wrap)?;
                                tracing::info!(object = %super::display_name(self.obj), %target, id = k.id, "removed orphaned key");
                            }
                        }
                    }
                    let found = |keys: &[DeployKey]| keys.iter().find(|k| k.key_body() == key.public_key_body()).map(|k| k.id);
                    if let Some(id) = existing.as_deref().map(|v| v.as_slice()).and_then(found) {
                        return Ok(registration(&target, id));
                    }
                    match client.create_key(&target, key.public_key(), &label).await {
                        Ok(k) => {
                            self.created.locked().push((key.fingerprint().to_string(), target.to_string()));
                            Ok(registration(&target, k.id))
                        }
                        // Any 400 may mean "already there" (an earlier attempt whose answer
                        // was lost went through), whatever its words: the listing decides.
                        Err(
                            e @ (bitbucket::Error::DuplicateKey(_) | bitbucket::Error::InvalidKey(_) | bitbucket::Error::BadRequest(_)),
                        ) => {
                            let keys = client.list_keys(&target).await.map_err(wrap)?;
                            found(&keys).map(|id| registration(&target, id)).ok_or_else(|| wrap(e))
                        }
                        Err(e) => Err(wrap(e)),
                    }
                }
            })
            .buffer_unordered(TARGET_CONCURRENCY)
            .collect()
            .await;
        let mut found = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok(r) => found.push(r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        found.sort();
        match first_error {
            None => Ok(found),
            Some(error) => Err(plan::Stopped { found, error }),
        }
    }

    /// Removes registrations. One with id 0 is a target where the key may be (a crash
    /// left it unrecorded): its keys of this object with `fingerprint` (any, if None)
    /// are found by listing. A 404 counts as removed only where no key id is on record
    /// (`on_record`) or the target's listing shows the key gone (see `not_found`).
    async fn delete_registrations(&self, regs: &[Registration], fingerprint: Option<&str>, on_record: &BTreeSet<Target>) -> Result<()> {
        let client = &self.ws.client;
        futures::stream::iter(regs.to_vec())
            .map(|r| async move {
                let target = target_of(&r);
                let wrap = |e| Error::bitbucket(&target, e);
                if r.id != 0 {
                    // An id comes from status, which may be stale (or not ours to begin
                    // with): the key at that id is removed only if it is this object's.
                    let key = match client.get_key(&target, r.id).await {
                        Ok(k) => k,
                        Err(e) if not_found(&e) => return client.confirm_gone(&target, r.id).await.map_err(wrap),
                        Err(e) => return Err(wrap(e)),
                    };
                    let fp = fingerprint_of_public(key.key_body()).unwrap_or_default();
                    if !is_ours(&key, &self.uid, &self.fingerprints) || fingerprint.is_some_and(|f| f != fp) {
                        tracing::warn!(object = %super::display_name(self.obj), %target, id = r.id, "the key at this id is not this object's: left alone");
                        return Ok(());
                    }
                    return client.delete_key(&target, r.id).await.map_err(wrap);
                }
                let keys = match client.list_keys(&target).await {
                    Ok(k) => k,
                    Err(e) if not_found(&e) && on_record.contains(&target) => return Err(wrap(client.not_visible(&target))),
                    Err(e) if not_found(&e) => return Ok(()),
                    Err(e) => return Err(wrap(e)),
                };
                for k in keys.iter().filter(|k| is_ours(k, &self.uid, &self.fingerprints)) {
                    let fp = fingerprint_of_public(k.key_body()).unwrap_or_default();
                    if fingerprint.is_none_or(|f| f == fp) {
                        client.delete_key(&target, k.id).await.map_err(|e| Error::bitbucket(&target, e))?;
                    }
                }
                Ok(())
            })
            .buffer_unordered(TARGET_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

impl Effects for Run<'_> {
    async fn write_secret(&mut self, current: &KeyPair, pending: Option<&KeyPair>, targets: &BTreeSet<Target>) -> Result<()> {
        let desired = self.desired_secret(current, pending, targets);
        super::apply_secret(self.ctx, &self.secrets, &desired).await?;
        self.secret = Some(desired);
        Ok(())
    }

    async fn register(&mut self, key: &KeyPair, targets: &[Target], lookup: Lookup, keep: &BTreeSet<String>) -> plan::Registered {
        self.register_on(key, targets, lookup, keep).await
    }

    async fn unregister(&mut self, registrations: &[Registration], fingerprint: Option<&str>, on_record: &BTreeSet<Target>) -> Result<()> {
        self.delete_registrations(registrations, fingerprint, on_record).await
    }

    async fn sync_secret(&mut self, current: &KeyPair, targets: &BTreeSet<Target>) -> Result<()> {
        let desired = self.desired_secret(current, None, targets);
        let stored = self.secret.as_ref();
        if stored.is_some_and(|s| up_to_date(s, &desired) && !has_stale_fields(s, &desired, FIELD_MANAGER)) {
            return Ok(());
        }
        super::apply_secret(self.ctx, &self.secrets, &desired).await?;
        let mut edited = desired.clone();
        edited.metadata.annotations.get_or_insert_default().remove(TARGETS_ANNOTATION);
        if self.secret.as_ref().is_some_and(|s| !up_to_date(s, &edited)) {
            let message = format!("Secret {} was changed outside the operator and has been restored", self.secret_name);
            self.ctx.event(self.obj, false, "SecretRestored", message).await;
        }
        self.secret = Some(desired);
        Ok(())
    }

    async fn save_status(&mut self, status: &AccessKeyStatus) -> Result<()> {
        super::patch_status(self.obj, self.ctx, status).await
    }

    async fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.ctx.event(self.obj, warning, reason, message).await;
    }

    async fn announce_created(&mut self) {
        let created = std::mem::take(&mut *self.created.locked());
        let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (fingerprint, target) in created {
            by_key.entry(fingerprint).or_default().push(target);
        }
        for (fingerprint, on) in by_key {
            self.ctx.event(self.obj, false, "Registered", format!("access key {fingerprint} registered on {}", on.join(", "))).await;
        }
    }

    fn passed(&mut self, point: &'static str) -> Result<()> {
        crate::failpoint::hit(point);
        Ok(())
    }
}

/// A 404, which alone proves nothing: Bitbucket answers the same for a missing key, a
/// deleted target and a target these credentials can no longer see.
fn not_found(e: &bitbucket::Error) -> bool {
    matches!(e, bitbucket::Error::KeyNotFound(_) | bitbucket::Error::RepositoryNotFound(_) | bitbucket::Error::ProjectNotFound(_))
}

/// The targets where status records a key of this object by id: a 404 there is not
/// taken for "nothing left to remove".
fn on_record(st: &AccessKeyStatus) -> BTreeSet<Target> {
    let recorded = st.registrations.iter().chain(st.retiring_keys.iter().flat_map(|k| k.registrations.iter()));
    recorded.filter(|r| r.id != 0).map(target_of).collect()
}

/// Where a key of this object may be registered: the spec's targets and every target
/// status records, for the current key or a retiring one.
fn may_hold_keys(st: &AccessKeyStatus, targets: &[Target]) -> BTreeSet<Target> {
    let recorded = st.registrations.iter().chain(st.retiring_keys.iter().flat_map(|k| k.registrations.iter()));
    targets.iter().cloned().chain(recorded.map(target_of)).collect()
}

fn encode_targets(targets: &BTreeSet<Target>) -> String {
    let one = |t: &Target| match t {
        Target::Repository(r) => format!("repository/{r}"),
        Target::Project(p) => format!("project/{p}"),
    };
    targets.iter().map(one).collect::<Vec<_>>().join(",")
}

/// At most this many targets are read back from a Secret: the spec allows 100
/// repositories and 100 projects, and a Secret is something a tenant can edit.
pub(crate) const MAX_RECORDED_TARGETS: usize = 256;

/// A repository slug or project key as the CRD admits them (the same patterns): what a
/// Secret's annotation says is read back only if the spec could have said it.
pub(crate) fn valid_target(t: &Target) -> bool {
    match t {
        Target::Repository(r) => {
            let mut c = r.chars();
            r.len() <= 62
                && c.next().is_some_and(|f| f.is_ascii_lowercase() || f.is_ascii_digit())
                && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || "._-".contains(x))
        }
        Target::Project(p) => {
            let mut c = p.chars();
            p.len() <= 128
                && c.next().is_some_and(|f| f.is_ascii_uppercase())
                && c.all(|x| x.is_ascii_uppercase() || x.is_ascii_digit() || x == '_')
        }
    }
}

/// The targets a Secret records (see `TARGETS_ANNOTATION`); anything unreadable or that
/// the spec could not hold is skipped, and at most `MAX_RECORDED_TARGETS` are read.
fn recorded_targets(secret: Option<&Secret>) -> BTreeSet<Target> {
    let value = secret.and_then(|s| s.metadata.annotations.as_ref()).and_then(|a| a.get(TARGETS_ANNOTATION));
    value
        .map(|v| v.as_str())
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| match t.trim().split_once('/') {
            Some(("repository", r)) if !r.is_empty() => Some(Target::Repository(r.into())),
            Some(("project", p)) if !p.is_empty() => Some(Target::Project(p.into())),
            _ => None,
        })
        .filter(valid_target)
        .take(MAX_RECORDED_TARGETS)
        .collect()
}

fn read_key(secret: Option<&Secret>, field: &str) -> Option<KeyPair> {
    let bytes = secret?.data.as_ref()?.get(field)?;
    KeyPair::from_openssh(&bytes.0).ok()
}

/// What a reconcile reads before it acts: the workspace and the object's Secret.
struct Inputs {
    ws: Resolved,
    existing: Option<Secret>,
}

async fn read_inputs(obj: &BitbucketAccessKey, ctx: &Context) -> Result<Inputs> {
    let ns = obj.namespace().unwrap_or_default();
    let secret_name = obj.spec.secret.name.clone().unwrap_or_else(|| obj.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let (ws, existing) =
        tokio::try_join!(resolve(ctx, &ns, &obj.spec.workspace_ref), async { secrets.get_opt(&secret_name).await.map_err(Error::from) })?;
    for t in &targets(obj) {
        ws.check_allowed(t.name())?;
    }
    if let Some(s) = &existing
        && !super::owned_by(s, &obj.uid().unwrap_or_default())
    {
        return Err(Error::SecretConflict(format!("{ns}/{secret_name}")));
    }
    Ok(Inputs { ws, existing })
}

/// One reconcile: what was observed, planned (`plan`), then done step by step.
async fn apply(obj: &BitbucketAccessKey, ctx: &Context, inputs: Inputs) -> Result<Action> {
    let Inputs { ws, existing } = inputs;
    // Before anything is registered through them, the workspace and its Secret are kept
    // from going away until this object's cleanup is done.
    super::workspace::protect(ctx, &ws.protection).await?;
    let current = read_key(existing.as_ref(), "ssh-privatekey");
    let fresh = latest(obj, ctx, current.as_ref()).await?;
    let obj = fresh.as_ref().unwrap_or(obj);
    let status = obj.status.clone().unwrap_or_default();
    let (drift, schedule) = drift_check(obj, &status, &ws, ctx);
    let mut observed = observe(obj, &ws, existing.as_ref(), current, drift);
    let now = jiff::Timestamp::now();
    if plan::plan(&observed, now).is_err() {
        let mark = mark(obj, &ctx.settings.cluster_name);
        observed.new_key = Some(KeyPair::generate_in_background(observed.key_spec, mark).await?);
    }
    let steps = plan::plan(&observed, now).map_err(|_| Error::Internal("a reconcile planned two new keys".into()))?;
    let mut run = Run::new(obj, ctx, ws, &observed, existing, schedule.listing_age);
    let st = plan::execute(steps, &observed.status, &mut run).await?;
    Ok(super::requeue(wake_after(obj, &st, drift, &schedule)))
}

/// The object as stored, if the Secret holds a key that the cached copy's status does not
/// record: the watch cache may not have seen the status this operator wrote a moment ago
/// (its own Secret write re-triggers the object).
async fn latest(obj: &BitbucketAccessKey, ctx: &Context, current: Option<&KeyPair>) -> Result<Option<BitbucketAccessKey>> {
    let recorded = obj.status.as_ref().and_then(|s| s.fingerprint.as_deref());
    if current.is_none_or(|k| recorded == Some(k.fingerprint())) {
        return Ok(None);
    }
    let api: Api<BitbucketAccessKey> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    Ok(api.get_opt(&obj.name_any()).await?.filter(|f| f.uid() == obj.uid()))
}

/// What `plan` decides from: the spec, status, and the Secret's keys and targets.
fn observe(obj: &BitbucketAccessKey, ws: &Resolved, existing: Option<&Secret>, current: Option<KeyPair>, drift: Drift) -> Observed {
    let recorded = recorded_targets(existing);
    let not_allowed = recorded.iter().filter(|t| ws.check_allowed(t.name()).is_err()).cloned().collect();
    Observed {
        targets: targets(obj),
        generation: obj.metadata.generation,
        status: obj.status.clone().unwrap_or_default(),
        current,
        pending: read_key(existing, PENDING_KEY),
        recorded,
        not_allowed,
        key_spec: KeySpec::new(obj.spec.key_type, obj.spec.rsa_bits, obj.spec.ecdsa_curve),
        key_type: obj.spec.key_type,
        rotation_period: rotation_period(&obj.spec),
        grace: grace_period(&obj.spec),
        rotate_request: obj.annotations().get(ROTATE_ANNOTATION).cloned(),
        drift,
        secret_name: secret_name(obj),
        new_key: None,
    }
}

fn secret_name(obj: &BitbucketAccessKey) -> String {
    obj.spec.secret.name.clone().unwrap_or_else(|| obj.name_any())
}

/// When this object's targets are compared with Bitbucket.
struct Schedule {
    interval: Duration,
    /// The listing whose slot the object's checks fall on (its first target's).
    phase_key: String,
    /// How old a listing shared with other objects' drift checks may be.
    listing_age: Duration,
}

/// Whether a drift check is due: paced by a share of the credential's budget, on the
/// slot of the object's first target. However the interval's estimate errs (just after a
/// start few targets are known), drift checks spend no more than their share: past it,
/// the check waits and the object stays as it is.
fn drift_check(obj: &BitbucketAccessKey, st: &AccessKeyStatus, ws: &Resolved, ctx: &Context) -> (Drift, Schedule) {
    let pace = ctx.settings.drift;
    let credential = ws.client.credential();
    let listing_keys: Vec<String> = targets(obj).iter().map(|t| ws.client.listing_key(t)).collect();
    credential.note_drift_targets(listing_keys.iter().map(String::as_str), &pace);
    let interval = credential.drift_interval(&pace);
    let phase_key = listing_keys.iter().min().cloned().unwrap_or_default();
    let schedule = Schedule { interval, listing_age: shared_listing_age(interval), phase_key };
    let due = st.last_verified_time.as_ref().is_some_and(|t| drift_due_at(unix(t), interval, &schedule.phase_key) <= unix_now());
    if !due || plan::spec_changed(st, obj.metadata.generation) {
        return (if due { Drift::Due } else { Drift::NotDue }, schedule);
    }
    let fetches = listing_keys.iter().filter(|k| !ctx.caches.has_listing(k, schedule.listing_age)).count();
    match credential.drift_permit(u32::try_from(fetches).unwrap_or(u32::MAX), &pace) {
        Ok(()) => (Drift::Due, schedule),
        Err(wait) => {
            tracing::debug!(object = %super::display_name(obj), wait_s = wait.as_secs(), "drift check waits for its share of the budget");
            (Drift::Deferred(wait), schedule)
        }
    }
}

/// When to wake up for the next thing that is due: the drift check's slot, the
/// rotation, or a retiring key's removal.
fn wake_after(obj: &BitbucketAccessKey, st: &AccessKeyStatus, drift: Drift, schedule: &Schedule) -> Duration {
    let interval = schedule.interval;
    let mut next = match (drift, &st.last_verified_time) {
        (Drift::Deferred(wait), _) => wait + random_up_to(interval / 2),
        (_, Some(t)) => {
            Duration::try_from_secs_f64((drift_due_at(unix(t), interval, &schedule.phase_key) - unix_now()).max(0.0)).unwrap_or(interval)
                + random_up_to(slot_spread(interval))
        }
        (_, None) => jitter(interval),
    };
    if let Some(t) = &st.next_rotation_time {
        let labels = super::object_labels(obj);
        METRICS.seconds_until_deadline.get_or_create(&labels).set(super::seconds_until(t));
        METRICS.next_rotation_timestamp.get_or_create(&labels).set(unix(t) as i64);
        next = next.min(Duration::from_secs(super::seconds_until(t).max(1).unsigned_abs()));
    }
    for k in &st.retiring_keys {
        next = next.min(Duration::from_secs(super::seconds_until(&k.remove_after).max(1).unsigned_abs()));
    }
    next
}

fn random_up_to(d: Duration) -> Duration {
    use rand::Rng;
    Duration::from_millis(rand::thread_rng().gen_range(0..=u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// Deletion: with `Delete`, every key carrying this object's mark goes from every target it
/// may be on; with `Retain`, the keys stay.
async fn cleanup(obj: &BitbucketAccessKey, ctx: &Context) -> Result<Action> {
    METRICS.forget_object(&super::object_labels(obj));
    // The failure count stays: a cleanup that keeps failing backs off like anything else
    // (the reconcile clears it once cleanup succeeds).
    if obj.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    // A workspace that no longer admits this namespace still removes what was registered
    // through it; then only the operator's own record (status) says where.
    let (ws, admitted) = resolve_for_removal(ctx, &ns, &obj.spec.workspace_ref).await?;
    let status = obj.status.clone().unwrap_or_default();
    let mut all = may_hold_keys(&status, &[]);
    let mut fingerprints = known_fingerprints(&status, []);
    if admitted {
        let secret_name = obj.spec.secret.name.clone().unwrap_or_else(|| obj.name_any());
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(&secret_name).await?;
        let secret = secret.as_ref().filter(|s| super::owned_by(*s, &uid));
        let held: Vec<KeyPair> = ["ssh-privatekey", PENDING_KEY].iter().filter_map(|f| read_key(secret, f)).collect();
        fingerprints.extend(held.iter().map(|k| k.fingerprint().to_string()));
        let recorded = secret.map(|s| recorded_targets(Some(s))).unwrap_or_default();
        all.extend(targets(obj).into_iter().chain(recorded).filter(|t| ws.check_allowed(t.name()).is_ok()));
    }
    let mut removed = 0;
    let recorded = on_record(&status);
    for target in all {
        removed += remove_keys(&ws, &target, &uid, &fingerprints, recorded.contains(&target)).await?;
    }
    tracing::info!(object = %super::display_name(obj), removed, "keys removed from Bitbucket");
    Ok(Action::await_change())
}

/// Removes every key of the object with `uid` from `target`. A target that answers 404
/// has none, unless status records a key there (`on_record`): then it may only have
/// become invisible to these credentials, and the key is not counted as removed.
/// Returns how many were removed.
async fn remove_keys(ws: &Resolved, target: &Target, uid: &str, fingerprints: &BTreeSet<String>, on_record: bool) -> Result<usize> {
    let keys = match ws.client.list_keys(target).await {
        Ok(k) => k,
        Err(e) if not_found(&e) && on_record => return Err(Error::bitbucket(target, ws.client.not_visible(target))),
        Err(e) if not_found(&e) => return Ok(0),
        Err(e) => return Err(Error::bitbucket(target, e)),
    };
    let mut removed = 0;
    for k in keys.iter().filter(|k| is_ours(k, uid, fingerprints)) {
        ws.client.delete_key(target, k.id).await.map_err(|e| Error::bitbucket(target, e))?;
        crate::failpoint::hit("cleanup-key-deleted");
        removed += 1;
    }
    Ok(removed)
}

/// Revocation: the workspace no longer admits this namespace (`WorkspaceNotAllowed`), or
/// its `allowedRepositories` no longer allow some targets (`RepositoryNotAllowed`). The
/// keys registered where the object may no longer be are removed from Bitbucket (an
/// access that was withdrawn must end, not linger until someone deletes the object), and
/// `why` is still what the object reports.
async fn revoke(obj: &BitbucketAccessKey, ctx: &Context, why: Error) -> Error {
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let mut status = obj.status.clone().unwrap_or_default();
    let held = may_hold_keys(&status, &[]);
    if held.is_empty() {
        return why;
    }
    let (ws, admitted) = match resolve_for_removal(ctx, &ns, &obj.spec.workspace_ref).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(object = %super::display_name(obj), error = %e, "cannot revoke the keys of a withdrawn access");
            return why;
        }
    };
    let revoked: Vec<Target> = held.into_iter().filter(|t| !admitted || ws.check_allowed(t.name()).is_err()).collect();
    if revoked.is_empty() {
        return why;
    }
    let recorded = on_record(&status);
    for target in &revoked {
        if let Err(e) = remove_keys(&ws, target, &uid, &known_fingerprints(&status, []), recorded.contains(target)).await {
            return e;
        }
    }
    let gone = |r: &Registration| revoked.contains(&target_of(r));
    status.registrations.retain(|r| !gone(r));
    for k in &mut status.retiring_keys {
        k.registrations.retain(|r| !gone(r));
    }
    status.retiring_keys.retain(|k| !k.registrations.is_empty());
    if let Err(e) = super::patch_status(obj, ctx, &status).await {
        return e;
    }
    let on = revoked.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    ctx.event(obj, true, "Revoked", format!("access key removed from {on}: {why}")).await;
    why
}

#[cfg(test)]
mod tests {
    use super::super::{now, time_after};
    use super::*;

    #[test]
    fn keys_are_ours_by_mark_label_or_recorded_fingerprint() {
        let body = test_key().public_key_body().to_string();
        let k = |c: &str, l: &str| DeployKey { id: 1, key: body.clone(), comment: Some(c.into()), label: Some(l.into()) };
        let none = BTreeSet::new();
        let m = Marker::new("123", "a", "ns", "n").token();
        assert!(is_ours(&k(&m, "custom"), "123", &none));
        assert!(is_ours(&k("bitbucket-credentials-operator cluster=a uid=123", ""), "123", &none), "an earlier version's mark");
        assert!(is_ours(&k("", &m), "123", &none), "comment dropped, mark in the label");
        assert!(!is_ours(&k("bitbucket-credentials-operator cluster=a uid=1234", ""), "123", &none));
        assert!(!is_ours(&k("someone's laptop", "custom"), "123", &none));
        assert!(!is_ours(&k("", "custom"), "123", &none));
        let recorded: BTreeSet<String> = [test_key().fingerprint().to_string()].into();
        assert!(is_ours(&k("", "custom"), "123", &recorded), "comment dropped, label set in the spec: the fingerprint");
    }

    #[test]
    fn the_default_label_is_the_mark() {
        let spec: BitbucketAccessKeySpec = serde_json::from_value(serde_json::json!({"workspaceRef": {"name": "w"}})).unwrap();
        let mut obj = BitbucketAccessKey::new("ci", spec);
        obj.metadata.namespace = Some("ns".into());
        obj.metadata.uid = Some("0b0e7a6c-0000-4000-8000-000000000000".into());
        let l = label(&obj, "prod");
        assert_eq!(l, "bitbucket-credentials-operator:0b0e7a6c-0000-4000-8000-000000000000:prod:ns/ci");
        assert!(marker::marks(&l, "0b0e7a6c-0000-4000-8000-000000000000"));
        obj.spec.label = Some("team ci".into());
        assert_eq!(label(&obj, "prod"), "team ci");
    }

    #[test]
    fn the_secret_records_targets_and_reads_them_back() {
        let targets: BTreeSet<Target> =
            [Target::Repository("api".into()), Target::Repository("web.site".into()), Target::Project("CORE_2".into())].into();
        let mut secret = Secret::default();
        secret.metadata.annotations = Some([(TARGETS_ANNOTATION.to_string(), encode_targets(&targets))].into());
        assert_eq!(recorded_targets(Some(&secret)), targets);
        secret.metadata.annotations = Some([(TARGETS_ANNOTATION.to_string(), "repository/api,,nonsense,team/x,project/".into())].into());
        assert_eq!(recorded_targets(Some(&secret)), [Target::Repository("api".into())].into());
        // What a tenant editing the Secret could write: other paths, other workspaces, a flood.
        let tampered = [
            "repository/../../workspaces/other",
            "repository/a/b",
            "repository/API",
            "project/core",
            "repository/x%2F..",
            "project/CORE/../X",
        ]
        .join(",");
        secret.metadata.annotations = Some([(TARGETS_ANNOTATION.to_string(), tampered)].into());
        assert!(recorded_targets(Some(&secret)).is_empty());
        let flood = (0..10_000).map(|i| format!("repository/r{i}")).collect::<Vec<_>>().join(",");
        secret.metadata.annotations = Some([(TARGETS_ANNOTATION.to_string(), flood)].into());
        assert_eq!(recorded_targets(Some(&secret)).len(), MAX_RECORDED_TARGETS);
        assert!(recorded_targets(None).is_empty());
    }

    #[test]
    fn durations_past_the_crd_bounds_are_brought_within_them() {
        let spec = |period: &str, grace: &str| -> BitbucketAccessKeySpec {
            serde_json::from_value(serde_json::json!({
                "workspaceRef": {"name": "w"}, "repositories": ["api"],
                "rotation": {"period": period, "gracePeriod": grace},
            }))
            .unwrap()
        };
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(rotation_period(&spec("100000000h", "10m")), Some(MAX_ROTATION_PERIOD));
        assert_eq!(rotation_period(&spec("99999999999999999999999h", "10m")), Some(MAX_ROTATION_PERIOD));
        assert_eq!(rotation_period(&spec("1s", "10m")), Some(MIN_ROTATION_PERIOD));
        assert_eq!(rotation_period(&spec("2160h", "10m")), Some(h(2160)));
        assert_eq!(grace_period(&spec("87600h", "100000000h")), MAX_GRACE_PERIOD);
        // A grace period not shorter than the period: half the period.
        assert_eq!(grace_period(&spec("2h", "100000000h")), h(1));
        assert_eq!(grace_period(&spec("2h", "10m")), Duration::from_secs(600));
        let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        assert_eq!(super::super::add(&t, Duration::MAX).0, jiff::Timestamp::MAX);
    }

    #[test]
    fn rsa_sizes_outside_the_three_become_the_next_one_up() {
        use crate::api::KeyType;
        let bits = |b: Option<u32>| KeySpec::new(KeyType::Rsa, b, None).rsa_bits;
        assert_eq!(bits(Some(2048)), 2048);
        assert_eq!(bits(Some(2049)), 3072);
        assert_eq!(bits(Some(3072)), 3072);
        assert_eq!(bits(Some(8192)), 4096);
        assert_eq!(bits(Some(0)), 2048);
        assert_eq!(bits(None), 4096);
    }

    fn go_duration() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let part = (0u64..=u64::MAX, proptest::option::of(0u32..1000), prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h"]))
            .prop_map(|(n, frac, unit)| match frac {
                Some(f) => format!("{n}.{f}{unit}"),
                None => format!("{n}{unit}"),
            });
        prop_oneof![
            prop::collection::vec(part, 1..4).prop_map(|p| p.concat()),
            prop::sample::select(vec!["1h".to_string(), "87600h".into(), "720h".into(), "0s".into(), "0h".into(), "1ns".into()]),
        ]
    }

    #[test]
    fn objects_on_one_target_come_due_together_and_targets_spread_out() {
        let interval = Duration::from_secs(120);
        let t0 = 1_800_000_000.0;
        // Verified at different moments, the objects of one target meet on one slot.
        let a = drift_due_at(t0, interval, "repo-a");
        let b = drift_due_at(t0 + 37.0, interval, "repo-a");
        assert!(a == b || (a - b).abs() == 120.0, "{a} {b}");
        for last in [t0, t0 + 1.0, t0 + 59.0, t0 + 119.0] {
            let due = drift_due_at(last, interval, "repo-a");
            assert!(due - last >= 60.0 && due - last <= 180.0, "due {}s after the check", due - last);
            // Checked on the slot, the next one is one interval later.
            assert!((drift_due_at(due, interval, "repo-a") - due - 120.0).abs() < 1e-6);
        }
        // Different targets are spread over the interval.
        let phases: BTreeSet<i64> = (0..50).map(|i| (drift_due_at(t0, interval, &format!("repo-{i}")) % 120.0) as i64).collect();
        assert!(phases.len() > 25, "{phases:?}");
    }

    #[test]
    fn the_budget_share_decides_the_interval_within_its_bounds() {
        use crate::bitbucket::{DriftPace, paced_interval};
        let pace = DriftPace { share_percent: 20, floor: Duration::from_secs(120), ceiling: Duration::from_secs(6 * 3600) };
        let hour = Duration::from_secs(3600);
        // 20 % of 900 is 180 listings an hour.
        assert_eq!(paced_interval(4, 900, &pace, hour), Duration::from_secs(120), "the floor");
        assert_eq!(paced_interval(30, 900, &pace, hour), Duration::from_secs(600));
        assert_eq!(paced_interval(0, 900, &pace, hour), Duration::from_secs(120));
        // 10,000 targets cannot all be checked every 6 h on 180 an hour: the share wins.
        let many = paced_interval(10_000, 900, &pace, hour);
        assert!((many.as_secs_f64() - 10_000.0 / 180.0 * 3600.0).abs() < 1.0, "{many:?}");
        assert!(paced_interval(1000, 900, &pace, hour) < pace.ceiling);
        // Extremes never panic.
        let _ = paced_interval(u64::MAX, 0, &DriftPace { share_percent: 0, ..pace }, Duration::MAX);
        let _ = paced_interval(u64::MAX, u32::MAX, &DriftPace { share_percent: 255, ..pace }, Duration::ZERO);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Specs of every shape the CRD's schema admits (and durations past its bounds),
        /// through every pure part of a reconcile: nothing panics, and what comes out is
        /// within the bounds.
        #[test]
        fn the_pure_parts_of_reconcile_never_panic_on_admissible_specs(
            period in proptest::option::of(go_duration()),
            grace in proptest::option::of(go_duration()),
            rsa_bits in proptest::option::of(proptest::prelude::any::<u32>()),
            key_type in proptest::sample::select(vec!["ed25519", "rsa", "ecdsa"]),
            repos in proptest::collection::vec("[a-z0-9][a-z0-9._-]{0,61}", 0..100),
            projects in proptest::collection::vec("[A-Z][A-Z0-9_]{0,127}", 0..100),
            user_label in proptest::option::of("\\PC{0,255}"),
            secret_name in proptest::option::of("[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"),
            user_labels in proptest::collection::btree_map("[a-z]{1,20}", "\\PC{0,63}", 0..8),
        ) {
            let mut rotation = serde_json::Map::new();
            if let Some(p) = &period { rotation.insert("period".into(), p.clone().into()); }
            if let Some(g) = &grace { rotation.insert("gracePeriod".into(), g.clone().into()); }
            let spec: BitbucketAccessKeySpec = serde_json::from_value(serde_json::json!({
                "workspaceRef": {"name": "w"},
                "repositories": repos, "projects": projects,
                "keyType": key_type, "rsaBits": rsa_bits, "label": user_label,
                "rotation": rotation,
                "secret": {"name": secret_name, "formats": ["ssh-auth", "flux", "tekton", "jenkins", "argocd"], "labels": user_labels},
            })).unwrap();
            let mut obj = BitbucketAccessKey::new("k", spec);
            obj.metadata.namespace = Some("ns".into());
            obj.metadata.uid = Some("0b0e7a6c-0000-4000-8000-000000000000".into());
            let p = rotation_period(&obj.spec);
            let g = grace_period(&obj.spec);
            if let Some(p) = p {
                proptest::prop_assert!((MIN_ROTATION_PERIOD..=MAX_ROTATION_PERIOD).contains(&p));
                proptest::prop_assert!(g < p);
            }
            proptest::prop_assert!(g <= MAX_GRACE_PERIOD);
            let ks = KeySpec::new(obj.spec.key_type, obj.spec.rsa_bits, obj.spec.ecdsa_curve);
            proptest::prop_assert!(crate::keys::RSA_SIZES.contains(&ks.rsa_bits));
            let t = now();
            let _ = super::super::add(&t, p.unwrap_or(Duration::MAX));
            let _ = super::super::add(&t, g);
            let _ = time_after(g);
            proptest::prop_assert!(label(&obj, "cluster").chars().count() <= 255);
            let all: BTreeSet<Target> = targets(&obj).into_iter().collect();
            let mut secret = Secret::default();
            secret.metadata.annotations = Some([(TARGETS_ANNOTATION.to_string(), encode_targets(&all))].into());
            let back = recorded_targets(Some(&secret));
            proptest::prop_assert_eq!(back.len(), all.len().min(MAX_RECORDED_TARGETS));
            let key = test_key();
            let owner = obj.controller_owner_ref(&()).unwrap();
            let rendered = crate::secret::access_key_secret(
                Placement { name: "k", namespace: "ns", owner, user: &obj.spec.secret.metadata },
                &obj.spec.secret.formats,
                key,
                None,
                &SshTarget { ssh_host: "bitbucket.org", known_hosts: crate::api::DEFAULT_KNOWN_HOSTS, workspace: "acme", argocd_project: None },
            );
            proptest::prop_assert!(rendered.data.is_some());
        }
    }

    fn test_key() -> &'static KeyPair {
        static KEY: std::sync::OnceLock<KeyPair> = std::sync::OnceLock::new();
        KEY.get_or_init(|| KeyPair::generate(KeySpec::new(crate::api::KeyType::Ed25519, None, None), "test").unwrap())
    }

    #[test]
    fn retiring_moves_the_current_key_with_its_registrations() {
        let mut st = AccessKeyStatus {
            fingerprint: Some("SHA256:old".into()),
            registrations: vec![registration(&Target::Repository("api".into()), 7)],
            ..Default::default()
        };
        plan::retire_current(&mut st, Duration::from_secs(60), jiff::Timestamp::now());
        assert_eq!(st.fingerprint, None);
        assert!(st.registrations.is_empty());
        assert_eq!(st.retiring_keys.len(), 1);
        assert_eq!(st.retiring_keys[0].registrations[0].id, 7);
        assert!(super::super::seconds_until(&st.retiring_keys[0].remove_after) > 50);
    }
}
