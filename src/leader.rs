//! Leader election with a `coordination.k8s.io` Lease: only the holder reconciles.
//! Losing the lease ends the process (as controller-runtime does): a restarted replica
//! starts clean as a follower, and two replicas never both write. A leader that shuts down
//! gives the lease up, so that a standby takes over at once instead of after it expires.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::oneshot;

pub(crate) const LEASE_NAME: &str = "bitbucket-credentials-operator";
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// The lease, held. [`Leadership::release`] gives it up.
pub(crate) struct Leadership {
    stop: oneshot::Sender<()>,
    released: oneshot::Receiver<()>,
}

/// Blocks until this process holds the lease, then watches it in the background.
/// `standby` runs once the lease could be read, before waiting: the replica is then a
/// working standby.
pub(crate) async fn wait_for_leadership(client: &Client, standby: impl Fn()) -> Result<Leadership, kube::Error> {
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_string());
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let (leader, manager_task) = 'elect: loop {
        let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .map_err(|e| kube::Error::Service(e.to_string().into()))?;
        let (mut leader, manager_task) = manager.watch().await;
        standby();
        tracing::info!(%identity, lease = LEASE_NAME, %namespace, "waiting for leadership");
        loop {
            if *leader.borrow_and_update() {
                break 'elect (leader, manager_task);
            }
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        return Err(kube::Error::Service("lease manager stopped".into()));
                    }
                }
                // The lease manager sleeps until the holder's lease expires; a leader that
                // shut down gave the lease up long before. Look every 2 s (client-go's
                // retry period) and start over when it is free, which takes it at once.
                () = tokio::time::sleep(RETRY_PERIOD) => {
                    if is_free(&leases).await {
                        drop(leader);
                        let _ = manager_task.await;
                        continue 'elect;
                    }
                }
            }
        }
    };
    let mut leader = leader;
    tracing::info!(%identity, "acquired leadership");
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (done, released) = oneshot::channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                changed = leader.changed() => {
                    if changed.is_err() || !*leader.borrow_and_update() {
                        tracing::error!("lost leadership; exiting so that only the leader writes");
                        std::process::exit(1);
                    }
                }
            }
        }
        // Closing the channel makes the lease manager release the lease and return.
        drop(leader);
        match manager_task.await {
            Ok(Ok(_)) => tracing::info!(%identity, "released leadership"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease; a standby takes over when it expires"),
            Err(e) => tracing::warn!(error = %e, "lease manager task failed"),
        }
        let _ = done.send(());
    });
    Ok(Leadership { stop, released })
}

impl Leadership {
    /// Gives the lease up (waits a few seconds at most).
    pub(crate) async fn release(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.released).await;
    }
}

/// The lease exists and nobody holds it (its holder released it).
async fn is_free(leases: &Api<Lease>) -> bool {
    match leases.get_opt(LEASE_NAME).await {
        Ok(Some(lease)) => lease.spec.and_then(|s| s.holder_identity).is_none_or(|h| h.is_empty()),
        _ => false,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "operator".into())
}
