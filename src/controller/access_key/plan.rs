//! What one reconcile of a `BitbucketAccessKey` does, decided as data from what it
//! observed (`plan`, pure), and the executor that performs those steps in order with a
//! failpoint between any two (`execute`).
//!
//! The crash-safe order is a property of `plan`: a new private key is in the Secret
//! before it is registered anywhere, the Secret lists a target before a key is added
//! there, and the Secret switches to a new key only once it is registered everywhere.
//! The tests below check it by stopping the executor between every pair of steps on a
//! model of Bitbucket and the Secret, then reconciling again from what was left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Lookup, may_hold_keys, on_record, registration, target_of};
use crate::api::{AccessKeyStatus, KeyType, Registration, RetiringKey};
use crate::bitbucket::Target;
use crate::controller::{Result, add, clear_degraded, condition, set_condition};
use crate::keys::{KeyPair, KeySpec};

/// The id a planned registration has until its `Register` step returns Bitbucket's.
pub(super) const REGISTERING: i64 = -1;

/// Whether this reconcile compares every target with Bitbucket (a drift check).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Drift {
    NotDue,
    Due,
    /// Due, but its share of the credential's budget is spent: it waits this long.
    Deferred(Duration),
}

/// What a reconcile observed: the spec's decisions, status as stored, and the Secret.
pub(super) struct Observed {
    pub targets: Vec<Target>,
    pub generation: Option<i64>,
    pub status: AccessKeyStatus,
    /// The Secret's current key and the key of a rotation in progress.
    pub current: Option<KeyPair>,
    pub pending: Option<KeyPair>,
    /// The targets the Secret lists as where a key of this object may be.
    pub recorded: BTreeSet<Target>,
    /// Those of `recorded` that the workspace no longer allows.
    pub not_allowed: BTreeSet<Target>,
    pub key_spec: KeySpec,
    pub key_type: KeyType,
    pub rotation_period: Option<Duration>,
    pub grace: Duration,
    /// The rotate annotation's value.
    pub rotate_request: Option<String>,
    pub drift: Drift,
    pub secret_name: String,
    /// A key made for this reconcile, after `plan` answered `NeedsKey`.
    pub new_key: Option<KeyPair>,
}

/// `plan` needs a new key pair: make one into `Observed::new_key` and plan again.
#[derive(Debug)]
pub(super) struct NeedsKey;

/// One thing a reconcile does. `point` names the failpoint after the step.
#[derive(Debug)]
pub(super) enum Step<'a> {
    /// The Secret holding `current` (and `pending`), listing `targets`.
    WriteSecret {
        current: &'a KeyPair,
        pending: Option<&'a KeyPair>,
        targets: BTreeSet<Target>,
        point: &'static str,
    },
    /// `key` on every target; the registrations found fill in the planned status.
    /// `partial` is status as the steps before leave it: what is stored, with the
    /// registrations made so far, if the step stops part-way. None where status has no
    /// place for them (the next key of a rotation).
    Register {
        key: &'a KeyPair,
        targets: Vec<Target>,
        lookup: Lookup,
        keep: BTreeSet<String>,
        partial: Option<Box<AccessKeyStatus>>,
        point: &'static str,
    },
    /// Registrations removed (see `Run::delete_registrations`).
    Unregister {
        registrations: Vec<Registration>,
        fingerprint: Option<String>,
        on_record: BTreeSet<Target>,
    },
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// The Secret as it should end up, written only if it is not so (a hand edit restored).
    SyncSecret {
        current: &'a KeyPair,
        targets: BTreeSet<Target>,
    },
    /// The planned status, stored if it differs from what was observed.
    SaveStatus,
    /// One event per new key for the registrations this reconcile created.
    AnnounceCreated,
}

impl Step<'_> {
    pub(super) fn point(&self) -> &'static str {
        match self {
            Step::WriteSecret { point, .. } | Step::Register { point, .. } => point,
            Step::Unregister { .. } => "keys-unregistered",
            Step::Event { .. } => "event-queued",
            Step::SyncSecret { .. } => "secret-synced",
            Step::SaveStatus => "status-recorded",
            Step::AnnounceCreated => "created-announced",
        }
    }
}

/// The steps, and the status they lead to (ids of new registrations are `REGISTERING`).
pub(super) struct Plan<'a> {
    pub steps: Vec<Step<'a>>,
    pub status: AccessKeyStatus,
}

/// Whether the spec changed since status was last written for it.
pub(super) fn spec_changed(status: &AccessKeyStatus, generation: Option<i64>) -> bool {
    status.observed_generation.is_some() && status.observed_generation != generation
}

/// Moves the current key of `status` into `retiringKeys`, to be removed `grace` after `now`.
pub(super) fn retire_current(status: &mut AccessKeyStatus, grace: Duration, now: Timestamp) {
    if let Some(fp) = status.fingerprint.take() {
        status.retiring_keys.push(RetiringKey {
            fingerprint: fp,
            registrations: std::mem::take(&mut status.registrations),
            remove_after: add(&Time(now), grace),
        });
    }
    status.public_key = None;
}

fn adopt_key(status: &mut AccessKeyStatus, key: &KeyPair, key_type: KeyType, now: Timestamp) {
    status.fingerprint = Some(key.fingerprint().into());
    status.public_key = Some(key.public_key().into());
    status.key_type = Some(key_type);
    status.registrations.clear();
    status.last_rotation_time = Some(Time(now));
}

/// A plan under way: the status and Secret as the steps so far leave them.
struct Planner<'a> {
    obs: &'a Observed,
    now: Timestamp,
    st: AccessKeyStatus,
    steps: Vec<Step<'a>>,
    recorded: BTreeSet<Target>,
    pending: Option<&'a KeyPair>,
    /// Whether every target's keys are listed (a drift check, or the spec changed).
    list: bool,
}

/// What to do, from what was observed at `now`.
pub(super) fn plan(obs: &Observed, now: Timestamp) -> std::result::Result<Plan<'_>, NeedsKey> {
    let mut p = Planner {
        obs,
        now,
        st: obs.status.clone(),
        steps: Vec::new(),
        recorded: obs.recorded.clone(),
        pending: obs.pending.as_ref(),
        list: obs.drift == Drift::Due || spec_changed(&obs.status, obs.generation),
    };
    p.believe_the_secret();
    let current = match obs.current.as_ref() {
        Some(k) => k,
        None => p.first_key()?,
    };
    let current = p.rotate(current)?;
    p.drop_targets();
    p.register_current(current);
    p.remove_retired();
    p.finish(current);
    Ok(Plan { steps: p.steps, status: p.st })
}

impl<'a> Planner<'a> {
    fn wanted(&self) -> BTreeSet<Target> {
        self.obs.targets.iter().cloned().collect()
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.steps.push(Step::Event { warning, reason, message });
    }

    /// The Secret is the truth about which key is current (a crash may have switched it
    /// without status knowing) and about where a key of this object may be.
    fn believe_the_secret(&mut self) {
        let obs = self.obs;
        if let Some(k) = &obs.current
            && self.st.fingerprint.as_deref() != Some(k.fingerprint())
        {
            retire_current(&mut self.st, obs.grace, self.now);
            adopt_key(&mut self.st, k, obs.key_type, self.now);
            self.st.registrations = obs.targets.iter().map(|t| registration(t, 0)).collect();
        }
        if self.pending.zip(obs.current.as_ref()).is_some_and(|(p, c)| p.fingerprint() == c.fingerprint()) {
            self.pending = None;
        }
        let known = may_hold_keys(&self.st, &[]);
        let unknown: Vec<Target> = obs.recorded.iter().filter(|t| !known.contains(*t) && !obs.not_allowed.contains(*t)).cloned().collect();
        if !unknown.is_empty() {
            self.st.registrations.extend(unknown.iter().map(|t| registration(t, 0)));
            self.st.registrations.sort();
        }
    }

    /// No key yet, or the Secret lost it: the pending key or a new one, persisted first.
    fn first_key(&mut self) -> std::result::Result<&'a KeyPair, NeedsKey> {
        let obs = self.obs;
        let k = self.pending.take().or(obs.new_key.as_ref()).ok_or(NeedsKey)?;
        if self.st.fingerprint.is_some() {
            let message = format!("Secret {} lost its private key; a new key replaces it", obs.secret_name);
            self.event(true, "SecretRestored", message);
        }
        retire_current(&mut self.st, obs.grace, self.now);
        adopt_key(&mut self.st, k, obs.key_type, self.now);
        self.st.rotate_request = obs.rotate_request.clone();
        let targets = may_hold_keys(&self.st, &obs.targets);
        self.recorded = targets.clone();
        self.steps.push(Step::WriteSecret { current: k, pending: None, targets, point: "first-key-persisted" });
        self.st.secret_name = Some(obs.secret_name.clone());
        Ok(k)
    }

    /// Write-ahead: the Secret lists `adding` before a key is added there.
    fn record_intent(&mut self, adding: &[Target], current: &'a KeyPair, pending: Option<&'a KeyPair>) {
        if adding.iter().all(|t| self.recorded.contains(t)) {
            return;
        }
        self.recorded.extend(may_hold_keys(&self.st, &self.obs.targets));
        self.recorded.extend(adding.iter().cloned());
        let targets = self.recorded.clone();
        self.steps.push(Step::WriteSecret { current, pending, targets, point: "intent-recorded" });
    }

    /// Rotation (requested, scheduled, a new key type, or one under way): the next key is
    /// persisted, registered everywhere, and only then the Secret switches to it.
    fn rotate(&mut self, current: &'a KeyPair) -> std::result::Result<&'a KeyPair, NeedsKey> {
        let obs = self.obs;
        let manual = obs.rotate_request.is_some() && obs.rotate_request != self.st.rotate_request;
        let scheduled = obs.rotation_period.zip(self.st.last_rotation_time.as_ref()).is_some_and(|(p, last)| add(last, p).0 <= self.now);
        let kind_changed = !obs.key_spec.matches(current);
        if !(manual || scheduled || kind_changed || self.pending.is_some()) {
            return Ok(current);
        }
        let next = match self.pending.take() {
            Some(p) => p,
            None => {
                let k = obs.new_key.as_ref().ok_or(NeedsKey)?;
                self.recorded.extend(may_hold_keys(&self.st, &obs.targets));
                let targets = self.recorded.clone();
                self.steps.push(Step::WriteSecret { current, pending: Some(k), targets, point: "next-key-persisted" });
                k
            }
        };
        let mut keep: BTreeSet<String> = self.st.retiring_keys.iter().map(|r| r.fingerprint.clone()).collect();
        keep.insert(current.fingerprint().into());
        self.record_intent(&obs.targets, current, Some(next));
        let targets = obs.targets.clone();
        self.steps.push(Step::Register { key: next, targets, lookup: Lookup::Fresh, keep, partial: None, point: "next-key-registered" });
        let targets = self.recorded.clone();
        self.steps.push(Step::WriteSecret { current: next, pending: None, targets, point: "secret-switched" });
        retire_current(&mut self.st, obs.grace, self.now);
        adopt_key(&mut self.st, next, obs.key_type, self.now);
        self.st.registrations = obs.targets.iter().map(|t| registration(t, REGISTERING)).collect();
        self.st.rotate_request = obs.rotate_request.clone();
        self.st.last_verified_time = Some(Time(self.now));
        let why = if manual {
            "requested by annotation"
        } else if kind_changed {
            "key type changed"
        } else {
            "scheduled"
        };
        self.event(false, "Rotated", format!("key rotated ({why}); new fingerprint {}", next.fingerprint()));
        self.list = false;
        Ok(next)
    }

    /// Targets gone from the spec lose every key of this object (current, retiring, or
    /// left there unrecorded by a crash).
    fn drop_targets(&mut self) {
        let wanted = self.wanted();
        let st = &self.st;
        let held = st.registrations.iter().chain(st.retiring_keys.iter().flat_map(|k| k.registrations.iter()));
        let dropped: BTreeSet<Target> = held.map(target_of).filter(|t| !wanted.contains(t)).collect();
        if dropped.is_empty() {
            return;
        }
        let registrations = dropped.iter().map(|t| registration(t, 0)).collect();
        self.steps.push(Step::Unregister { registrations, fingerprint: None, on_record: on_record(&self.st) });
        for t in &dropped {
            self.event(false, "Unregistered", format!("access key removed from {t}"));
        }
        self.st.registrations.retain(|r| wanted.contains(&target_of(r)));
        for k in &mut self.st.retiring_keys {
            k.registrations.retain(|r| wanted.contains(&target_of(r)));
        }
    }

    /// Every target holds the current key: created where status has no id (a new object
    /// creates directly, and a 400 is followed by a listing), or every target listed on a
    /// drift check or a changed spec.
    fn register_current(&mut self, current: &'a KeyPair) {
        let wanted = self.wanted();
        let registered: BTreeSet<Target> = self.st.registrations.iter().filter(|r| r.id != 0).map(target_of).collect();
        if !self.list && registered == wanted {
            return;
        }
        let keep: BTreeSet<String> = self.st.retiring_keys.iter().map(|r| r.fingerprint.clone()).collect();
        let to_check: Vec<Target> = if self.list { self.obs.targets.clone() } else { wanted.difference(&registered).cloned().collect() };
        let kept = |r: &&Registration| r.id != 0 && wanted.contains(&target_of(r)) && !to_check.contains(&target_of(r));
        let mut regs: Vec<Registration> = self.st.registrations.iter().filter(kept).cloned().collect();
        self.record_intent(&to_check, current, None);
        let partial = Some(Box::new(self.st.clone()));
        let lookup = match (self.list, spec_changed(&self.obs.status, self.obs.generation)) {
            (false, _) => Lookup::Create,
            (true, true) => Lookup::Fresh,
            (true, false) => Lookup::Shared,
        };
        regs.extend(to_check.iter().map(|t| registration(t, REGISTERING)));
        regs.sort();
        self.st.registrations = regs;
        let point = "current-key-registered";
        self.steps.push(Step::Register { key: current, targets: to_check, lookup, keep, partial, point });
        if self.list || self.st.last_verified_time.is_none() {
            self.st.last_verified_time = Some(Time(self.now));
        }
    }

    /// Old keys whose grace period is over.
    fn remove_retired(&mut self) {
        let recorded = on_record(&self.st);
        let now = self.now.as_second();
        let (due, keep): (Vec<RetiringKey>, Vec<RetiringKey>) =
            self.st.retiring_keys.drain(..).partition(|k| k.remove_after.0.as_second() <= now);
        self.st.retiring_keys = keep;
        for k in due {
            let fingerprint = k.fingerprint;
            let on_record = recorded.clone();
            self.steps.push(Step::Unregister { registrations: k.registrations, fingerprint: Some(fingerprint.clone()), on_record });
            self.event(false, "RetiredKeyRemoved", format!("old key {fingerprint} removed after its grace period"));
        }
    }

    /// The Secret as it should be, and status: Ready with the key and its targets.
    fn finish(&mut self, current: &'a KeyPair) {
        let obs = self.obs;
        self.steps.push(Step::SyncSecret { current, targets: may_hold_keys(&self.st, &obs.targets) });
        let st = &mut self.st;
        st.secret_name = Some(obs.secret_name.clone());
        st.observed_generation = obs.generation;
        st.next_rotation_time = obs.rotation_period.and_then(|p| st.last_rotation_time.as_ref().map(|t| add(t, p)));
        let n = obs.targets.len();
        let message = format!("access key {} registered on {n} target{}", current.fingerprint(), if n == 1 { "" } else { "s" });
        let ready = condition(&st.conditions, "Ready", true, "Registered", message, obs.generation);
        set_condition(&mut st.conditions, ready);
        clear_degraded(&mut st.conditions);
        self.steps.push(Step::SaveStatus);
        self.steps.push(Step::AnnounceCreated);
    }
}

/// What the executor does a step with: Kubernetes and Bitbucket in the operator, a model
/// of them in the tests.
#[allow(async_fn_in_trait)]
pub(super) trait Effects {
    async fn write_secret(&mut self, current: &KeyPair, pending: Option<&KeyPair>, targets: &BTreeSet<Target>) -> Result<()>;
    async fn register(&mut self, key: &KeyPair, targets: &[Target], lookup: Lookup, keep: &BTreeSet<String>) -> Registered;
    async fn unregister(&mut self, registrations: &[Registration], fingerprint: Option<&str>, on_record: &BTreeSet<Target>) -> Result<()>;
    async fn sync_secret(&mut self, current: &KeyPair, targets: &BTreeSet<Target>) -> Result<()>;
    async fn save_status(&mut self, status: &AccessKeyStatus) -> Result<()>;
    async fn event(&mut self, warning: bool, reason: &'static str, message: String);
    async fn announce_created(&mut self);
    /// Between two steps: where a crash test stops the executor.
    fn passed(&mut self, point: &'static str) -> Result<()>;
}

/// Performs the steps in order, stopping at the first failure; returns the status they
/// led to (stored by `SaveStatus` if it changed from `observed`).
pub(super) async fn execute<E: Effects>(plan: Plan<'_>, observed: &AccessKeyStatus, fx: &mut E) -> Result<AccessKeyStatus> {
    let Plan { steps, mut status } = plan;
    for step in steps {
        let point = step.point();
        match step {
            Step::WriteSecret { current, pending, targets, .. } => fx.write_secret(current, pending, &targets).await?,
            Step::Register { key, targets, lookup, keep, partial, .. } => match fx.register(key, &targets, lookup, &keep).await {
                Ok(found) => fill_in(&mut status, key, &found),
                Err(Stopped { found, error }) => {
                    // What it did register is recorded: the next attempt goes on from
                    // there instead of paying again for those targets (with the budget
                    // spent, every attempt would stop before it got past them).
                    if let Some(mut partial) = partial
                        && record_found(&mut partial, key, &found)
                        && *partial != *observed
                    {
                        fx.save_status(&partial).await?;
                    }
                    return Err(error);
                }
            },
            Step::Unregister { registrations, fingerprint, on_record } => {
                fx.unregister(&registrations, fingerprint.as_deref(), &on_record).await?
            }
            Step::Event { warning, reason, message } => fx.event(warning, reason, message).await,
            Step::SyncSecret { current, targets } => fx.sync_secret(current, &targets).await?,
            Step::SaveStatus if status != *observed => fx.save_status(&status).await?,
            Step::SaveStatus => {}
            Step::AnnounceCreated => fx.announce_created().await,
        }
        fx.passed(point)?;
    }
    Ok(status)
}

/// What a `Register` step comes back with: every registration, or those it made before it stopped.
pub(super) type Registered = std::result::Result<Vec<Registration>, Stopped>;

/// A `Register` that stopped at `error`, with the registrations it made or found before.
#[derive(Debug)]
pub(super) struct Stopped {
    pub found: Vec<Registration>,
    pub error: crate::controller::Error,
}

/// The ids a stopped `Register` found for `key`, into `status` if it records that key;
/// whether anything changed.
fn record_found(status: &mut AccessKeyStatus, key: &KeyPair, found: &[Registration]) -> bool {
    if status.fingerprint.as_deref() != Some(key.fingerprint()) {
        return false;
    }
    let mut changed = false;
    for f in found.iter().filter(|f| f.id > 0) {
        match status.registrations.iter_mut().find(|r| target_of(r) == target_of(f)) {
            Some(r) if r.id == f.id => {}
            Some(r) => {
                r.id = f.id;
                changed = true;
            }
            None => {
                status.registrations.push(f.clone());
                changed = true;
            }
        }
    }
    status.registrations.sort();
    changed
}

/// The ids `Register` found for `key`, in place of the planned `REGISTERING`.
fn fill_in(status: &mut AccessKeyStatus, key: &KeyPair, found: &[Registration]) {
    if status.fingerprint.as_deref() != Some(key.fingerprint()) {
        return;
    }
    let ids: BTreeMap<Target, i64> = found.iter().map(|r| (target_of(r), r.id)).collect();
    for r in status.registrations.iter_mut().filter(|r| r.id == REGISTERING) {
        // Not found is "may be there" (id 0), never the placeholder.
        r.id = ids.get(&target_of(r)).copied().unwrap_or(0);
    }
    status.registrations.sort();
}

#[cfg(test)]
mod tests {
    //! The crash tests of the plan, on a model of Bitbucket and the Secret: every scenario
    //! is stopped after each step (and after each target inside a `Register`), then
    //! reconciled again from what the crash left; it must converge with the Secret's key
    //! on every target, nothing orphaned, nothing duplicated, nobody else's key touched.

    use super::*;
    use crate::controller::Error;

    const STRANGER: &str = "SHA256:someone-elses-key";

    #[derive(Clone)]
    struct StoredSecret {
        current: String,
        pending: Option<String>,
        targets: BTreeSet<Target>,
    }

    /// Bitbucket (keys per target: id and fingerprint), the Secret, status, the spec.
    #[derive(Clone)]
    struct World {
        now: Timestamp,
        keys: BTreeMap<Target, Vec<(i64, String)>>,
        next_id: i64,
        secret: Option<StoredSecret>,
        status: AccessKeyStatus,
        targets: Vec<Target>,
        generation: i64,
        rotate_request: Option<String>,
        events: Vec<&'static str>,
        /// Bitbucket requests sent by `Register` steps.
        requests: usize,
    }

    fn repo(r: &str) -> Target {
        Target::Repository(r.into())
    }

    impl World {
        fn new(targets: &[Target]) -> Self {
            let mut keys = BTreeMap::new();
            keys.insert(repo("api"), vec![(1, STRANGER.to_string())]);
            World {
                now: Timestamp::from_second(1_800_000_000).unwrap(),
                keys,
                next_id: 100,
                secret: None,
                status: AccessKeyStatus::default(),
                targets: targets.to_vec(),
                generation: 1,
                rotate_request: None,
                events: Vec::new(),
                requests: 0,
            }
        }

        fn observe(&self) -> Observed {
            let parse = |s: &String| KeyPair::from_openssh(s.as_bytes()).ok();
            let spec = KeySpec::new(KeyType::Ed25519, None, None);
            Observed {
                targets: self.targets.clone(),
                generation: Some(self.generation),
                status: self.status.clone(),
                current: self.secret.as_ref().and_then(|s| parse(&s.current)),
                pending: self.secret.as_ref().and_then(|s| s.pending.as_ref()).and_then(parse),
                recorded: self.secret.as_ref().map(|s| s.targets.clone()).unwrap_or_default(),
                not_allowed: BTreeSet::new(),
                key_spec: spec,
                key_type: KeyType::Ed25519,
                rotation_period: None,
                grace: Duration::from_secs(60),
                rotate_request: self.rotate_request.clone(),
                drift: Drift::NotDue,
                secret_name: "ci".into(),
                new_key: None,
            }
        }

        fn ours(&self) -> Vec<(Target, i64, String)> {
            let all = self.keys.iter().flat_map(|(t, ks)| ks.iter().map(move |(id, fp)| (t.clone(), *id, fp.clone())));
            all.filter(|(_, _, fp)| fp != STRANGER).collect()
        }
    }

    /// The effects on the world; `budget` failpoints pass before the crash, and
    /// `requests` Bitbucket requests before the operator's budget is spent.
    struct Model<'w> {
        w: &'w mut World,
        budget: Option<usize>,
        requests: Option<usize>,
    }

    impl Model<'_> {
        fn tick(&mut self) -> Result<()> {
            match &mut self.budget {
                Some(0) => Err(Error::Internal("crash".into())),
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    impl Effects for Model<'_> {
        async fn write_secret(&mut self, current: &KeyPair, pending: Option<&KeyPair>, targets: &BTreeSet<Target>) -> Result<()> {
            let pem = |k: &KeyPair| k.private_openssh().expose().to_string();
            self.w.secret = Some(StoredSecret { current: pem(current), pending: pending.map(pem), targets: targets.clone() });
            Ok(())
        }

        async fn register(&mut self, key: &KeyPair, targets: &[Target], lookup: Lookup, keep: &BTreeSet<String>) -> Registered {
            let mut found = Vec::new();
            for t in targets {
                let fp = key.fingerprint().to_string();
                let there = self.w.keys.get(t).is_some_and(|keys| keys.iter().any(|(_, k)| *k == fp));
                // A listing and a create, or a create whose 400 sends for the listing.
                let cost = if lookup != Lookup::Create || there { 2 } else { 1 };
                match &mut self.requests {
                    Some(left) if *left < cost => {
                        let error = Error::bitbucket(t, crate::bitbucket::Error::BudgetExhausted { retry_after: Duration::from_secs(1) });
                        return Err(Stopped { found, error });
                    }
                    Some(left) => *left -= cost,
                    None => {}
                }
                self.w.requests += cost;
                let keys = self.w.keys.entry(t.clone()).or_default();
                if lookup != Lookup::Create {
                    keys.retain(|(_, k)| k == STRANGER || *k == fp || keep.contains(k));
                }
                // Already there: adopted (after a listing, or the 400 of a create).
                let id = match keys.iter().find(|(_, k)| *k == fp) {
                    Some((id, _)) => *id,
                    None => {
                        self.w.next_id += 1;
                        keys.push((self.w.next_id, fp));
                        self.w.next_id
                    }
                };
                found.push(registration(t, id));
                if let Err(error) = self.tick() {
                    return Err(Stopped { found, error });
                }
            }
            Ok(found)
        }

        async fn unregister(&mut self, registrations: &[Registration], fingerprint: Option<&str>, _: &BTreeSet<Target>) -> Result<()> {
            for r in registrations {
                let keys = self.w.keys.entry(target_of(r)).or_default();
                let matches = |k: &str| k != STRANGER && fingerprint.is_none_or(|f| f == k);
                keys.retain(|(id, k)| !(matches(k) && (r.id == 0 || r.id == *id)));
                self.tick()?;
            }
            Ok(())
        }

        async fn sync_secret(&mut self, current: &KeyPair, targets: &BTreeSet<Target>) -> Result<()> {
            self.write_secret(current, None, targets).await
        }

        async fn save_status(&mut self, status: &AccessKeyStatus) -> Result<()> {
            assert!(status.registrations.iter().all(|r| r.id != REGISTERING), "a placeholder id reached status");
            self.w.status = status.clone();
            Ok(())
        }

        async fn event(&mut self, _: bool, reason: &'static str, _: String) {
            self.w.events.push(reason);
        }

        async fn announce_created(&mut self) {}

        fn passed(&mut self, _: &'static str) -> Result<()> {
            self.tick()
        }
    }

    /// One reconcile; with a budget, it stops after that many failpoints. Whether it ran to the end.
    async fn reconcile(w: &mut World, budget: Option<usize>) -> bool {
        reconcile_with(w, budget, None).await
    }

    /// One reconcile that may also send only `requests` Bitbucket requests.
    async fn reconcile_with(w: &mut World, budget: Option<usize>, requests: Option<usize>) -> bool {
        let mut observed = w.observe();
        if plan(&observed, w.now).is_err() {
            observed.new_key = Some(KeyPair::generate(observed.key_spec, "test").unwrap());
        }
        let steps = plan(&observed, w.now).expect("one new key is enough");
        let now = w.now;
        let done = execute(steps, &observed.status, &mut Model { w, budget, requests }).await.is_ok();
        w.now = now + jiff::SignedDuration::from_secs(1);
        done
    }

    /// The Secret's key on every wanted target and recorded in status; every other key of
    /// the object a retiring one that status records where it is; nobody else's touched.
    fn assert_converged(w: &World, what: &str) {
        let secret = w.secret.as_ref().unwrap_or_else(|| panic!("{what}: no Secret"));
        let current = KeyPair::from_openssh(secret.current.as_bytes()).unwrap();
        let fp = current.fingerprint().to_string();
        assert_eq!(w.status.fingerprint.as_deref(), Some(fp.as_str()), "{what}: status records the Secret's key");
        assert!(secret.pending.is_none(), "{what}: no rotation left half-done");
        for t in &w.targets {
            let on: Vec<i64> = w.keys.get(t).into_iter().flatten().filter(|(_, k)| *k == fp).map(|(id, _)| *id).collect();
            assert_eq!(on.len(), 1, "{what}: one current key on {t}");
            assert!(w.status.registrations.contains(&registration(t, on[0])), "{what}: status has {t}'s id");
        }
        for (t, id, k) in w.ours() {
            let current_here = k == fp && w.targets.contains(&t);
            let retiring = w.status.retiring_keys.iter().any(|r| r.fingerprint == k && r.registrations.iter().any(|x| target_of(x) == t));
            assert!(current_here || retiring, "{what}: key {id} ({k}) on {t} is an orphan");
            assert!(secret.targets.contains(&t), "{what}: the Secret lists {t}, where a key is");
        }
        assert!(w.keys[&repo("api")].iter().any(|(_, k)| k == STRANGER), "{what}: someone else's key was removed");
    }

    async fn converge(w: &mut World, what: &str) {
        for _ in 0..3 {
            assert!(reconcile(w, None).await, "{what}: a reconcile without a crash fails");
        }
        assert_converged(w, what);
        // After the grace period, one key per target is left.
        w.now += jiff::SignedDuration::from_secs(3600);
        assert!(reconcile(w, None).await);
        assert_converged(w, what);
        assert!(w.status.retiring_keys.is_empty(), "{what}: retired keys removed");
        assert_eq!(w.ours().len(), w.targets.len(), "{what}: exactly one key per target");
    }

    /// What must hold wherever a crash stops a reconcile: every key of the object is
    /// somewhere the Secret or status says a key may be (so that cleanup finds it), and
    /// the Secret's key is registered wherever the key it replaced was (pods keep cloning).
    fn assert_safe_to_stop(w: &World, start: &World, what: &str) {
        let recorded = w.secret.as_ref().map(|s| s.targets.clone()).unwrap_or_default();
        let known = may_hold_keys(&w.status, &[]);
        for (t, id, _) in w.ours() {
            assert!(recorded.contains(&t) || known.contains(&t), "{what}: key {id} on {t} is where nobody will look");
        }
        let fp = |w: &World| {
            w.secret.as_ref().and_then(|s| KeyPair::from_openssh(s.current.as_bytes()).ok()).map(|k| k.fingerprint().to_string())
        };
        let (Some(before), Some(now)) = (fp(start), fp(w)) else { return };
        for (t, _, k) in start.ours() {
            if k == before && w.targets.contains(&t) {
                assert!(w.ours().iter().any(|(x, _, k)| *x == t && *k == now), "{what}: the Secret's key is not on {t} yet");
            }
        }
    }

    /// Crashes `start` after each failpoint in turn, then converges (with `then` applied to
    /// the world first: a spec changed again, say); returns how many crash points there were.
    async fn crash_everywhere_then(start: World, what: &str, then: impl Fn(&mut World)) -> usize {
        for k in 0.. {
            let mut w = start.clone();
            let finished = reconcile(&mut w, Some(k)).await;
            let what = format!("{what}, crash after {k} points");
            assert_safe_to_stop(&w, &start, &what);
            then(&mut w);
            converge(&mut w, &what).await;
            if finished {
                return k;
            }
        }
        unreachable!()
    }

    async fn crash_everywhere(start: World, what: &str) -> usize {
        crash_everywhere_then(start, what, |_| {}).await
    }

    fn three() -> Vec<Target> {
        vec![repo("api"), repo("web"), Target::Project("CORE".into())]
    }

    async fn converged(targets: &[Target]) -> World {
        let mut w = World::new(targets);
        converge(&mut w, "setup").await;
        w
    }

    #[tokio::test]
    async fn under_a_spent_budget_each_attempt_keeps_what_it_registered() {
        let targets: Vec<Target> = (0..12).map(|i| repo(&format!("r{i}"))).collect();
        let mut w = World::new(&targets);
        let mut attempts = 1;
        while !reconcile_with(&mut w, None, Some(3)).await {
            attempts += 1;
            assert!(attempts <= 8, "not Ready after {attempts} attempts of 3 requests: {} requests sent", w.requests);
        }
        assert_converged(&w, "three requests an attempt");
        assert_eq!((attempts, w.requests), (4, 12), "each target paid for once");
    }

    #[tokio::test]
    async fn a_crash_anywhere_in_the_first_registration_converges() {
        let points = crash_everywhere(World::new(&three()), "first registration").await;
        assert!(points >= 6, "{points}");
    }

    #[tokio::test]
    async fn a_crash_anywhere_in_a_rotation_converges_without_a_second_rotation() {
        let mut w = converged(&three()).await;
        w.rotate_request = Some("now".into());
        let points = crash_everywhere(w.clone(), "rotation").await;
        assert!(points >= 8, "{points}");
        let before = w.status.fingerprint.clone();
        converge(&mut w, "rotation").await;
        assert_ne!(w.status.fingerprint, before);
        assert_eq!(w.events.iter().filter(|e| **e == "Rotated").count(), 1, "{:?}", w.events);
    }

    #[tokio::test]
    async fn a_crash_anywhere_while_targets_change_converges() {
        let mut w = converged(&three()).await;
        w.targets = vec![repo("web"), Target::Project("CORE".into()), repo("tools")];
        w.generation += 1;
        crash_everywhere(w.clone(), "targets changed").await;
        // A target added and dropped again before the crash was recovered from.
        let original = three();
        let back = |w: &mut World| {
            w.targets = original.clone();
            w.generation += 1;
        };
        crash_everywhere_then(w.clone(), "a target added, then dropped", back).await;
        w.rotate_request = Some("now".into());
        crash_everywhere(w, "targets changed during a rotation").await;
    }

    #[tokio::test]
    async fn a_crash_anywhere_after_the_secret_was_deleted_converges() {
        let mut w = converged(&three()).await;
        w.secret = None;
        crash_everywhere(w, "Secret deleted").await;
    }

    #[test]
    fn a_key_is_in_the_secret_before_it_is_registered_and_the_secret_lists_targets_first() {
        for rotate in [false, true] {
            let mut w = World::new(&three());
            if rotate {
                futures::executor::block_on(converge(&mut w, "setup"));
                w.rotate_request = Some("now".into());
            }
            let mut observed = w.observe();
            observed.new_key = Some(KeyPair::generate(observed.key_spec, "test").unwrap());
            let p = plan(&observed, w.now).unwrap();
            let (mut in_secret, mut listed) = (BTreeSet::new(), BTreeSet::new());
            for step in &p.steps {
                match step {
                    Step::WriteSecret { current, pending, targets, .. } => {
                        in_secret.insert(current.fingerprint().to_string());
                        in_secret.extend(pending.map(|k| k.fingerprint().to_string()));
                        listed.extend(targets.iter().cloned());
                    }
                    Step::Register { key, targets, .. } => {
                        assert!(in_secret.contains(key.fingerprint()), "registered before it is persisted");
                        assert!(targets.iter().all(|t| listed.contains(t)), "a target the Secret does not list yet");
                    }
                    _ => {}
                }
            }
            assert!(p.steps.iter().any(|s| matches!(s, Step::Register { .. })));
        }
    }
}
