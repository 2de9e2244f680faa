//! Leader election with a `coordination.k8s.io` Lease: only the holder reconciles.
//! Losing the lease ends the process (as controller-runtime does): a restarted replica
//! starts clean as a follower, and two replicas never both write.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

pub const LEASE_NAME: &str = "bitbucket-credentials-operator";

/// Blocks until this process holds the lease, then watches it in the background.
pub async fn wait_for_leadership(client: &Client) -> Result<(), kube::Error> {
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_string());
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| kube::Error::Service(e.to_string().into()))?;
    let (mut leader, _task) = manager.watch().await;
    tracing::info!(%identity, lease = LEASE_NAME, %namespace, "waiting for leadership");
    while !*leader.borrow_and_update() {
        if leader.changed().await.is_err() {
            return Err(kube::Error::Service("lease manager stopped".into()));
        }
    }
    tracing::info!(%identity, "acquired leadership");
    tokio::spawn(async move {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                tracing::error!("lost leadership; exiting so that only the leader writes");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "operator".into())
}
