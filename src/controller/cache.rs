//! What reconciles would otherwise read every time: workspace objects (from the watches
//! the controllers run anyway), the credentials in workspaces' auth Secrets (parsed once
//! per version of the Secret, the version known from a metadata watch), which Secret versions this operator wrote itself (so that
//! its own writes do not wake their owners up again), and Bitbucket's key listings shared
//! by the drift checks of objects on the same repository or project.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::{BitbucketWorkspace, ClusterBitbucketWorkspace};
use crate::bitbucket::{self, Auth, DeployKey};
use crate::sync::Locked;

type Listing = Arc<tokio::sync::OnceCell<(Instant, Arc<Vec<DeployKey>>)>>;

/// How long the echo of a Secret write is waited for. A watch delivers it within moments;
/// one that comes later wakes the Secret's owner once, and that reconcile finds nothing to
/// do. So the record of writes holds those of the last minute, not one per Secret ever
/// written.
const ECHO_WINDOW: Duration = Duration::from_secs(60);

/// The mark of a write whose answer has not come yet.
const IN_FLIGHT: &str = "";

#[derive(Default)]
pub(crate) struct Caches {
    /// Stores of namespaced workspaces: one per watched namespace, or one for all (None).
    workspaces: Mutex<Vec<(Option<String>, Store<BitbucketWorkspace>)>>,
    cluster_workspaces: Mutex<Option<Store<ClusterBitbucketWorkspace>>>,
    own_writes: Mutex<OwnWrites>,
    listings: Mutex<HashMap<String, Listing>>,
    /// Metadata of the Secrets labelled as workspace auth Secrets: one store per watched
    /// namespace (or one for all), and the cluster-resource namespace's.
    auth_secret_stores: Mutex<Vec<(Option<String>, SecretStore)>>,
    /// Credentials read from those Secrets, each valid while the store shows the version
    /// it was read at. Only Secrets in a store are kept, so this is bounded by them.
    auth_secrets: Mutex<HashMap<AuthKey, AuthSecret>>,
}

/// The last write of each Secret this operator wrote within `ECHO_WINDOW`: its version
/// (`IN_FLIGHT` until the answer comes) and when. Pruned as it grows: the size it may reach
/// before the next pruning doubles what the last one left.
#[derive(Default)]
struct OwnWrites {
    by_secret: HashMap<(String, String), (String, Instant)>,
    prune_at: usize,
}

impl OwnWrites {
    fn insert(&mut self, key: (String, String), version: String, window: Duration) {
        if self.by_secret.len() >= self.prune_at {
            self.by_secret.retain(|_, (_, at)| at.elapsed() < window);
            self.by_secret.shrink_to(self.by_secret.len() * 2);
            self.prune_at = (self.by_secret.len() * 2).max(1024);
        }
        self.by_secret.insert(key, (version, Instant::now()));
    }
}

/// A store of Secrets' metadata.
type SecretStore = Store<PartialObjectMeta<Secret>>;

/// An auth Secret's namespace, name and which credential it holds (`true`: an API token):
/// a workspace that switches from one to the other does not get the other's parse.
type AuthKey = (String, String, bool);

/// What a reconcile needs of a workspace's auth Secret.
#[derive(Clone, Debug)]
pub(crate) struct AuthSecret {
    pub auth: Auth,
    pub finalizers: Vec<String>,
    /// Whether it carries the label of workspace auth Secrets (so its watch sees it).
    pub labelled: bool,
    pub resource_version: String,
}

impl Caches {
    pub(crate) fn add_workspace_store(&self, namespace: Option<String>, store: Store<BitbucketWorkspace>) {
        self.workspaces.locked().push((namespace, store));
    }

    pub(crate) fn set_cluster_workspace_store(&self, store: Store<ClusterBitbucketWorkspace>) {
        self.cluster_workspaces.locked().get_or_insert(store);
    }

    /// The workspace as last seen by the watch; None when unknown (not synced yet, or
    /// just created), and the caller asks the API server.
    pub(crate) fn workspace(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<BitbucketWorkspace>> {
        let key = ObjectRef::new(name).within(namespace);
        self.workspaces.locked().iter().filter(|(ns, _)| ns.as_deref().is_none_or(|n| n == namespace)).find_map(|(_, s)| s.get(&key))
    }

    pub(crate) fn cluster_workspace(&self, name: &str) -> Option<std::sync::Arc<ClusterBitbucketWorkspace>> {
        self.cluster_workspaces.locked().as_ref().and_then(|s| s.get(&ObjectRef::new(name)))
    }

    pub(crate) fn add_auth_secret_store(&self, namespace: Option<String>, store: Store<PartialObjectMeta<Secret>>) {
        self.auth_secret_stores.locked().push((namespace, store));
    }

    fn auth_secret_meta(&self, namespace: &str, name: &str) -> Option<Arc<PartialObjectMeta<Secret>>> {
        let key = ObjectRef::new(name).within(namespace);
        self.auth_secret_stores
            .locked()
            .iter()
            .filter(|(ns, _)| ns.as_deref().is_none_or(|n| n == namespace))
            .find_map(|(_, s)| s.get(&key))
    }

    /// The credential of an auth Secret as read before, if the watch shows the Secret
    /// unchanged since; None and the caller reads it (and hands it to `remember_auth_secret`).
    pub(crate) fn auth_secret(&self, namespace: &str, name: &str, api_token: bool) -> Option<AuthSecret> {
        let meta = self.auth_secret_meta(namespace, name)?;
        let version = meta.resource_version()?;
        let key = (namespace.to_string(), name.to_string(), api_token);
        self.auth_secrets.locked().get(&key).filter(|a| a.resource_version == version).cloned()
    }

    /// Keeps a credential just read, if its Secret is one the watch follows; drops those
    /// of Secrets the watch no longer has.
    pub(crate) fn remember_auth_secret(&self, namespace: &str, name: &str, api_token: bool, read: &AuthSecret) {
        if !read.labelled {
            return;
        }
        let mut map = self.auth_secrets.locked();
        map.retain(|(ns, n, _), _| self.auth_secret_meta(ns, n).is_some());
        map.insert((namespace.to_string(), name.to_string(), api_token), read.clone());
    }

    /// A target's keys, listed at most `max_age` ago: concurrent callers share one
    /// listing, later ones reuse it until it is too old. A failed listing is not kept.
    pub(crate) async fn listing<F, Fut>(&self, key: String, max_age: Duration, fetch: F) -> Result<Arc<Vec<DeployKey>>, bitbucket::Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<DeployKey>, bitbucket::Error>>,
    {
        let cell = {
            let mut map = self.listings.locked();
            map.retain(|_, c| c.get().is_none_or(|(at, _)| at.elapsed() < max_age));
            map.entry(key).or_default().clone()
        };
        let (_, keys) = cell.get_or_try_init(|| async { Ok::<_, bitbucket::Error>((Instant::now(), Arc::new(fetch().await?))) }).await?;
        Ok(keys.clone())
    }

    /// Whether a listing under `key` younger than `max_age` is there to share.
    pub(crate) fn has_listing(&self, key: &str, max_age: Duration) -> bool {
        self.listings.locked().get(key).and_then(|c| c.get()).is_some_and(|(at, _)| at.elapsed() < max_age)
    }

    /// Marks a Secret as being written: its watch event may arrive before the write's
    /// answer does, and is that write's echo.
    pub(crate) fn writing(&self, namespace: &str, name: &str) {
        self.remember_write(namespace.to_string(), name.to_string(), IN_FLIGHT.into());
    }

    /// A write that failed leaves no echo to wait for.
    pub(crate) fn write_failed(&self, namespace: &str, name: &str) {
        self.own_writes.locked().by_secret.remove(&(namespace.to_string(), name.to_string()));
    }

    /// Records the version of a Secret this operator just wrote.
    pub(crate) fn wrote(&self, secret: &Secret) {
        let (Some(ns), Some(rv)) = (secret.namespace(), secret.resource_version()) else { return };
        self.remember_write(ns, secret.name_any(), rv);
    }

    fn remember_write(&self, namespace: String, name: String, version: String) {
        self.own_writes.locked().insert((namespace, name), version, ECHO_WINDOW);
    }

    /// Whether a watch event is the echo of this operator's own write.
    pub(crate) fn is_own_write(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        let map = self.own_writes.locked();
        if secret.meta().deletion_timestamp.is_some() {
            return false;
        }
        // Entries stay: every controller's Secret watch sees the same event.
        map.by_secret
            .get(&key)
            .is_some_and(|(rv, at)| at.elapsed() < ECHO_WINDOW && (rv == IN_FLIGHT || Some(rv) == secret.resource_version().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn listings_are_shared_until_they_are_too_old_and_failures_are_not_kept() {
        let c = Caches::default();
        let calls = AtomicU32::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(vec![])
        };
        let age = Duration::from_millis(300);
        let (a, b) = tokio::join!(c.listing("t".into(), age, fetch), c.listing("t".into(), age, fetch));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "concurrent callers share one listing");
        c.listing("t".into(), age, fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a fresh listing is reused");
        c.listing("u".into(), age, fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "another target has its own");
        tokio::time::sleep(age).await;
        c.listing("t".into(), age, fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "an old listing is not used");
        let failed = c.listing("v".into(), age, || async { Err(bitbucket::Error::Timeout(Duration::from_secs(1))) }).await;
        assert!(failed.is_err());
        c.listing("v".into(), age, fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "a failure is not kept");
    }

    fn meta(name: &str, rv: &str) -> ObjectMeta {
        ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), resource_version: Some(rv.into()), ..Default::default() }
    }

    #[test]
    fn only_the_echo_of_our_own_write_is_skipped() {
        let c = Caches::default();
        c.wrote(&Secret { metadata: meta("a", "10"), ..Default::default() });
        let event = |rv: &str| PartialObjectMeta::<Secret> { metadata: meta("a", rv), ..Default::default() };
        assert!(!c.is_own_write(&event("9")), "an older version is someone else's");
        assert!(c.is_own_write(&event("10")));
        assert!(c.is_own_write(&event("10")), "every watch sees the echo");
        assert!(!c.is_own_write(&event("11")), "a later edit is not ours");
        c.writing("ns", "a");
        assert!(c.is_own_write(&event("12")), "an event during our write is its echo");
        c.wrote(&Secret { metadata: meta("a", "12"), ..Default::default() });
        assert!(!c.is_own_write(&event("13")), "a later edit is not ours");
    }

    #[test]
    fn the_record_of_own_writes_keeps_only_recent_ones() {
        let mut w = OwnWrites::default();
        let key = |i: usize| ("ns".to_string(), format!("s{i}"));
        for i in 0..5000 {
            w.insert(key(i), "1".into(), Duration::from_secs(60));
        }
        assert_eq!(w.by_secret.len(), 5000, "writes within the window are all kept");
        // Once the window has passed them, the next pruning drops them.
        for i in 5000..10_000 {
            w.insert(key(i), "1".into(), Duration::ZERO);
        }
        assert!(w.by_secret.len() < 5000, "{} writes kept of 10,000 whose window had passed", w.by_secret.len());
        assert!(w.by_secret.contains_key(&key(9999)), "the latest write is kept");
    }

    fn auth(rv: &str, labelled: bool) -> AuthSecret {
        let auth = Auth::ApiToken { email: "ci@example.com".into(), token: crate::sensitive::SecretString::new(format!("token-{rv}")) };
        AuthSecret { auth, finalizers: vec![], labelled, resource_version: rv.into() }
    }

    #[test]
    fn an_auth_secret_is_read_again_when_its_version_its_namespace_or_its_kind_differs() {
        let c = Caches::default();
        let (store, mut writer) = kube::runtime::reflector::store::<PartialObjectMeta<Secret>>();
        c.add_auth_secret_store(None, store);
        let seen = |ns: &str, rv: &str| PartialObjectMeta::<Secret> {
            metadata: ObjectMeta { namespace: Some(ns.into()), ..meta("auth", rv) },
            ..Default::default()
        };
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(seen("ns", "5")));
        assert!(c.auth_secret("ns", "auth", true).is_none(), "nothing read yet");
        c.remember_auth_secret("ns", "auth", true, &auth("5", true));
        assert_eq!(c.auth_secret("ns", "auth", true).map(|a| a.resource_version), Some("5".into()));
        assert!(c.auth_secret("ns", "auth", false).is_none(), "read as an API token, not as an OAuth consumer");
        // A tenant's Secret of the same name, labelled alike, in another namespace.
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(seen("tenant", "6")));
        assert!(c.auth_secret("tenant", "auth", true).is_none(), "another namespace's Secret is never this one");
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(seen("ns", "7")));
        assert!(c.auth_secret("ns", "auth", true).is_none(), "an edited Secret is read again");
        c.remember_auth_secret("ns", "auth", true, &auth("7", true));
        assert!(c.auth_secret("ns", "auth", true).is_some());
        c.remember_auth_secret("ns", "other", true, &auth("8", false));
        assert!(c.auth_secrets.locked().len() == 1, "an unlabelled Secret (no watch sees its changes) is not kept");
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Delete(seen("ns", "7")));
        assert!(c.auth_secret("ns", "auth", true).is_none(), "a deleted Secret is gone");
        c.remember_auth_secret("tenant", "auth", true, &auth("6", true));
        let kept: Vec<_> = c.auth_secrets.locked().keys().map(|(ns, _, _)| ns.clone()).collect();
        assert_eq!(kept, vec!["tenant".to_string()], "only Secrets the watch still has are kept");
    }
}
