//! What reconciles would otherwise read from the API server every time: workspace
//! objects (from the watches the controllers run anyway), and which Secret versions this
//! operator wrote itself, so that its own writes do not wake their owners up again.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::{BitbucketWorkspace, ClusterBitbucketWorkspace};

/// Secret versions remembered (the last write per namespace/name), at most this many.
const OWN_WRITES_MAX: usize = 100_000;

/// The mark of a write whose answer has not come yet.
const IN_FLIGHT: &str = "";

#[derive(Default)]
pub struct Caches {
    /// Stores of namespaced workspaces: one per watched namespace, or one for all (None).
    workspaces: Mutex<Vec<(Option<String>, Store<BitbucketWorkspace>)>>,
    cluster_workspaces: Mutex<Option<Store<ClusterBitbucketWorkspace>>>,
    own_writes: Mutex<HashMap<(String, String), String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Caches {
    pub fn add_workspace_store(&self, namespace: Option<String>, store: Store<BitbucketWorkspace>) {
        lock(&self.workspaces).push((namespace, store));
    }

    pub fn set_cluster_workspace_store(&self, store: Store<ClusterBitbucketWorkspace>) {
        lock(&self.cluster_workspaces).get_or_insert(store);
    }

    /// The workspace as last seen by the watch; None when unknown (not synced yet, or
    /// just created), and the caller asks the API server.
    pub fn workspace(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<BitbucketWorkspace>> {
        let key = ObjectRef::new(name).within(namespace);
        lock(&self.workspaces)
            .iter()
            .filter(|(ns, _)| ns.as_deref().is_none_or(|n| n == namespace))
            .find_map(|(_, s)| s.get(&key))
    }

    pub fn cluster_workspace(&self, name: &str) -> Option<std::sync::Arc<ClusterBitbucketWorkspace>> {
        lock(&self.cluster_workspaces).as_ref().and_then(|s| s.get(&ObjectRef::new(name)))
    }

    /// Marks a Secret as being written: its watch event may arrive before the write's
    /// answer does, and is that write's echo.
    pub fn writing(&self, namespace: &str, name: &str) {
        let mut map = lock(&self.own_writes);
        if map.len() >= OWN_WRITES_MAX {
            map.clear();
        }
        map.insert((namespace.to_string(), name.to_string()), IN_FLIGHT.into());
    }

    /// A write that failed leaves no echo to wait for.
    pub fn write_failed(&self, namespace: &str, name: &str) {
        lock(&self.own_writes).remove(&(namespace.to_string(), name.to_string()));
    }

    /// Records the version of a Secret this operator just wrote.
    pub fn wrote(&self, secret: &Secret) {
        let (Some(ns), Some(rv)) = (secret.namespace(), secret.resource_version()) else { return };
        let mut map = lock(&self.own_writes);
        if map.len() >= OWN_WRITES_MAX {
            map.clear();
        }
        map.insert((ns, secret.name_any()), rv);
    }

    /// Whether a watch event is the echo of this operator's own write.
    pub fn is_own_write(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        let map = lock(&self.own_writes);
        if secret.meta().deletion_timestamp.is_some() {
            return false;
        }
        // Entries stay: every controller's Secret watch sees the same event.
        map.get(&key).is_some_and(|rv| rv == IN_FLIGHT || Some(rv) == secret.resource_version().as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

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
}
