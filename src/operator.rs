//! The `run` command: the controllers, their watches, the metrics and health endpoints,
//! leader election and graceful shutdown, wired together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::{
    BitbucketAccessKey, BitbucketOAuthConsumer, BitbucketWorkspace, ClusterBitbucketWorkspace, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    WorkspaceKind,
};
use crate::bitbucket::{AllowedUrls, Bitbucket, ClientOptions, DriftPace};
use crate::controller::{Context, Settings, access_key, oauth_consumer, workspace};
use crate::metrics::METRICS;
use crate::telemetry::LogFormat;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Name of this cluster, written into the comment of every key the operator registers.
    #[arg(long, env = "BCO_CLUSTER_NAME", default_value = "kubernetes")]
    pub cluster_name: String,
    /// Namespace whose Secrets ClusterBitbucketWorkspaces may reference. Default: the
    /// operator's own namespace (POD_NAMESPACE).
    #[arg(long, env = "BCO_CLUSTER_RESOURCE_NAMESPACE")]
    pub cluster_resource_namespace: Option<String>,
    /// Comma-separated namespaces to serve. Default: all.
    #[arg(long, env = "BCO_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    #[arg(long, env = "BCO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    #[arg(long, env = "BCO_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// Run only while holding the `bitbucket-credentials-operator` Lease.
    #[arg(long, env = "BCO_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    #[arg(long, env = "BCO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The longest time between two comparisons of a Ready access key with Bitbucket
    /// (drift repair). Keys are compared as often as --drift-budget-share of their
    /// credential's requestsPerHour allows, between --drift-check-min-interval and this;
    /// when the share cannot cover every target this often, the share wins.
    #[arg(long, env = "BCO_DRIFT_CHECK_INTERVAL", default_value = "6h", value_parser = parse_go_duration)]
    pub drift_check_interval: Duration,
    /// The shortest time between two comparisons of an access key with Bitbucket.
    #[arg(long, env = "BCO_DRIFT_CHECK_MIN_INTERVAL", default_value = "2m", value_parser = parse_go_duration)]
    pub drift_check_min_interval: Duration,
    /// Percent of each credential's requestsPerHour that drift checks may spend on listings.
    #[arg(long, env = "BCO_DRIFT_BUDGET_SHARE", default_value_t = 20, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub drift_budget_share: u8,
    /// Reconciles in flight at once, per controller.
    #[arg(long, env = "BCO_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// The longest one reconcile may take before it is stopped and retried.
    #[arg(long, env = "BCO_RECONCILE_TIMEOUT", default_value = "5m", value_parser = parse_go_duration)]
    pub reconcile_timeout: Duration,
    /// Reconciles in flight at once for the objects of one workspace object, per
    /// controller (default: three quarters of --concurrency), so that one tenant's slow
    /// or rate-limited workspace leaves workers for the others.
    #[arg(long, env = "BCO_PER_WORKSPACE_CONCURRENCY")]
    pub per_workspace_concurrency: Option<u16>,
    /// Timeout of one Bitbucket request.
    #[arg(long, env = "BCO_BITBUCKET_TIMEOUT", default_value = "30s", value_parser = parse_go_duration)]
    pub bitbucket_timeout: Duration,
    /// The window a workspace's requestsPerHour applies to. Bitbucket counts per hour;
    /// a shorter window exists for tests and benchmarks that scale the hour down.
    #[arg(long, env = "BCO_RATE_WINDOW", default_value = "1h", value_parser = parse_go_duration, hide = true)]
    pub rate_window: Duration,
    /// The first cool-down after Bitbucket's 429 (doubling while 429s continue, up to 15
    /// times it); shorter only in tests.
    #[arg(long, env = "BCO_RATE_LIMIT_COOLDOWN", default_value = "1m", value_parser = parse_go_duration, hide = true)]
    pub rate_limit_cooldown: Duration,
    #[command(flatten)]
    pub network: BitbucketNetwork,
}

/// Where Bitbucket requests may go and which CAs they trust: the operator's flags, also
/// those of `kubectl bitbucket check`, which sends the same credentials.
#[derive(clap::Args, Clone, Debug)]
pub struct BitbucketNetwork {
    /// Comma-separated Bitbucket URLs (API and site) that workspaces may use; a
    /// workspace's apiURL and siteURL must each lie under one of them (same scheme, host,
    /// port, and path prefix). http only where an http URL is listed.
    #[arg(
        long,
        env = "BCO_ALLOWED_BITBUCKET_URLS",
        value_delimiter = ',',
        default_value = "https://api.bitbucket.org/2.0,https://bitbucket.org"
    )]
    pub allowed_bitbucket_urls: Vec<String>,
    /// PEM file of CA certificates trusted for Bitbucket besides the built-in roots: the
    /// CA of a TLS-inspecting proxy, say. HTTPS_PROXY, HTTP_PROXY and NO_PROXY are
    /// honoured for Bitbucket requests.
    #[arg(long, env = "BCO_CA_BUNDLE")]
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl BitbucketNetwork {
    /// The allowed URLs and the extra CA certificates, or which flag is wrong and why.
    pub fn resolve(&self) -> Result<(AllowedUrls, Vec<reqwest::Certificate>), String> {
        let allowed = AllowedUrls::parse(self.allowed_bitbucket_urls.iter().map(String::as_str))
            .map_err(|e| format!("--allowed-bitbucket-urls: {e}"))?;
        let roots = match &self.ca_bundle {
            Some(path) => crate::bitbucket::read_ca_bundle(path).map_err(|e| format!("--ca-bundle {}: {e}", path.display()))?,
            None => Vec::new(),
        };
        Ok((allowed, roots))
    }
}

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    crate::controller::parse_duration(s).ok_or_else(|| format!("not a duration: {s} (examples: 30s, 10m, 6h)"))
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serve {0}: {1}")]
    Serve(SocketAddr, std::io::Error),
    #[error("Bitbucket client: {0}")]
    Bitbucket(#[from] crate::bitbucket::Error),
    #[error("{0}")]
    Config(String),
}

/// What `/readyz` answers. A standby replica is Ready: it serves health and metrics and
/// is ready to take over, so that `replicas: 2` and rolling updates trip no alert.
#[derive(Default)]
struct Health {
    /// One per cache, set when it has its initial list; known once the controllers are
    /// wired (after the lease, with leader election).
    caches: std::sync::OnceLock<Vec<Arc<AtomicBool>>>,
    /// Reached the API server and reads the leader Lease, waiting for it.
    standby: AtomicBool,
}

impl Health {
    fn readyz(&self) -> (StatusCode, &'static str) {
        let caches = self.caches.get();
        if caches.is_some_and(|c| c.iter().all(|synced| synced.load(Ordering::Relaxed))) {
            (StatusCode::OK, "ready")
        } else if self.standby.load(Ordering::Relaxed) {
            (StatusCode::OK, "ready: standby, waiting for the leader lease")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "watches not synced")
        }
    }
}

/// How long a port still held by someone else is waited for: with `hostNetwork` the Pod
/// being replaced holds the node's port until it has shut down.
const BIND_PATIENCE: Duration = Duration::from_secs(30);

async fn serve(addr: SocketAddr, router: Router) -> Result<(), RunError> {
    let listener = bind(addr).await.map_err(|e| RunError::Serve(addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(())
}

async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(%addr, "address in use (by the replica being replaced?), retrying for 30s");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

/// The namespaces served, each as a scope of its own; `None` is all of them.
fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() }
}

pub async fn run(config: Config) -> Result<(), RunError> {
    let client = Client::try_default().await?;
    let ctx = Arc::new(context(&config, &client)?);
    let health = Arc::new(Health::default());
    serve_endpoints(&config, &health).await?;
    let leadership = if config.leader_elect {
        let h = health.clone();
        Some(crate::leader::wait_for_leadership(&client, move || h.standby.store(true, Ordering::Relaxed)).await?)
    } else {
        None
    };
    tracing::info!(cluster = %config.cluster_name, namespaces = ?config.watch_namespaces, "starting controllers");
    let mut wiring = Wiring {
        client: client.clone(),
        ctx,
        config: ControllerConfig::default().concurrency(config.concurrency),
        shutdown: shutdown_signal(),
        secret_selector: format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"),
        tasks: Vec::new(),
        caches: Vec::new(),
    };
    wiring.controllers(&config.watch_namespaces);
    // Ready once every cache has its initial list (which needs our permissions).
    let _ = health.caches.set(std::mem::take(&mut wiring.caches));
    futures::future::join_all(wiring.tasks).await;
    tracing::info!("controllers stopped");
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    Ok(())
}

/// What every reconcile shares: the settings from the command line and the Bitbucket client.
fn context(config: &Config, client: &Client) -> Result<Context, RunError> {
    let cluster_resource_namespace = config
        .cluster_resource_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let settings = Settings {
        cluster_name: config.cluster_name.clone(),
        cluster_resource_namespace,
        drift: DriftPace {
            share_percent: config.drift_budget_share,
            floor: config.drift_check_min_interval.min(config.drift_check_interval),
            ceiling: config.drift_check_interval,
        },
        reconcile_timeout: config.reconcile_timeout,
        watch_namespaces: config.watch_namespaces.clone(),
        per_workspace_concurrency: usize::from(config.per_workspace_concurrency.unwrap_or(config.concurrency.saturating_mul(3) / 4).max(1)),
    };
    let (allowed_urls, extra_roots) = config.network.resolve().map_err(RunError::Config)?;
    tracing::info!(allowed = ?config.network.allowed_bitbucket_urls, "Bitbucket URLs workspaces may use");
    if let Some(path) = &config.network.ca_bundle {
        tracing::info!(path = %path.display(), certificates = extra_roots.len(), "trusting extra CA certificates for Bitbucket");
    }
    let bitbucket = Arc::new(Bitbucket::new(ClientOptions {
        extra_roots,
        timeout: config.bitbucket_timeout,
        budget_window: config.rate_window,
        cooldown: config.rate_limit_cooldown,
        cooldown_max: config.rate_limit_cooldown.saturating_mul(15),
        allowed_urls,
        ..Default::default()
    })?);
    Ok(Context::new(client.clone(), bitbucket, settings))
}

async fn serve_endpoints(config: &Config, health: &Arc<Health>) -> Result<(), RunError> {
    serve(config.metrics_addr, Router::new().route("/metrics", get(|| async { METRICS.encode() }))).await?;
    let h = health.clone();
    let readyz = get(move || {
        let answer = h.readyz();
        async move { answer }
    });
    serve(config.health_addr, Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", readyz)).await
}

type Task = futures::future::BoxFuture<'static, ()>;
type Shutdown = futures::future::Shared<Task>;

/// SIGTERM or Ctrl-C.
fn shutdown_signal() -> Shutdown {
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => futures::future::pending::<()>().await } } => {},
        }
        tracing::info!("shutting down");
    };
    futures::future::FutureExt::shared(shutdown.boxed())
}

/// Objects a shared watch may have broadcast that not every controller has taken yet.
const SHARED_BUFFER: usize = 1024;

/// The controllers and their watches as they are wired together: one watch per kind and
/// scope, whose cache and events every controller that needs them shares.
struct Wiring {
    client: Client,
    ctx: Arc<Context>,
    config: ControllerConfig,
    shutdown: Shutdown,
    secret_selector: String,
    tasks: Vec<Task>,
    /// One per cache: set when it has its initial list.
    caches: Vec<Arc<AtomicBool>>,
}

impl Wiring {
    fn controllers(&mut self, namespaces: &[String]) {
        let auth_secrets = self.auth_secret_watches(namespaces);
        let handle_for = |ns: &str| auth_secrets.iter().find(|(s, _)| s.as_deref().is_none_or(|s| s == ns)).map(|(_, h)| h.clone());
        let (cws_store, cws) = self.shared_watch(Api::<ClusterBitbucketWorkspace>::all(self.client.clone()), &None);
        self.ctx.caches.set_cluster_workspace_store(cws_store.clone());
        let cr_namespace = self.ctx.settings.cluster_resource_namespace.clone();
        let controller = Controller::for_shared_stream(cws.clone(), cws_store).with_config(self.config.clone());
        let auth = handle_for(&cr_namespace);
        let controller = woken_by_auth_secret(controller, auth, move |w: &ClusterBitbucketWorkspace| {
            (Some(cr_namespace.clone()), workspace::auth_secret_name(&w.spec.settings()))
        });
        self.run(controller, workspace::reconcile_cluster);
        for ns in scopes(namespaces) {
            let (ws_store, ws) = self.shared_watch(scoped::<BitbucketWorkspace>(&self.client, &ns), &ns);
            self.ctx.caches.add_workspace_store(ns.clone(), ws_store.clone());
            let controller = Controller::for_shared_stream(ws.clone(), ws_store).with_config(self.config.clone());
            let auth = auth_secrets.iter().find(|(s, _)| *s == ns).map(|(_, h)| h.clone());
            let controller = woken_by_auth_secret(controller, auth, |w: &BitbucketWorkspace| {
                (w.namespace(), workspace::auth_secret_name(&w.spec.settings()))
            });
            self.run(controller, workspace::reconcile_namespaced);
            self.access_keys(&ns, ws, cws.clone());
            self.oauth_consumers(&ns);
        }
    }

    /// Metadata watches of the Secrets labelled as workspace auth Secrets: one per scope,
    /// and one in the cluster-resource namespace unless a scope covers it. Reconciles find
    /// there whether the credential they parsed before is still current; they read the
    /// Secret when it is not there, so these caches are not waited for.
    fn auth_secret_watches(&mut self, namespaces: &[String]) -> Vec<(Option<String>, reflector::ReflectHandle<PartialObjectMeta<Secret>>)> {
        let mut all = scopes(namespaces);
        let cr_namespace = &self.ctx.settings.cluster_resource_namespace;
        if !all.iter().any(|s| s.as_ref().is_none_or(|s| s == cr_namespace)) {
            all.push(Some(cr_namespace.clone()));
        }
        all.into_iter()
            .map(|ns| {
                let (store, writer) = reflector::store_shared(SHARED_BUFFER);
                let handle = writer.subscribe().expect("a shared store can be subscribed to");
                self.ctx.caches.add_auth_secret_store(ns.clone(), store);
                let config = watcher::Config::default().labels(workspace::AUTH_SECRET_LABEL);
                let watch = watcher(scoped::<PartialObjectMeta<Secret>>(&self.client, &ns), config)
                    .default_backoff()
                    .modify(|s| s.managed_fields_mut().clear())
                    .reflect_shared(writer);
                self.tasks.push(watch.take_until(self.shutdown.clone()).for_each(|_| futures::future::ready(())).boxed());
                (ns, handle)
            })
            .collect()
    }

    /// One watch of `K` whose cache and events controllers share; driving it is a task.
    fn shared_watch<K>(&mut self, api: Api<K>, scope: &Option<String>) -> (reflector::Store<K>, reflector::ReflectHandle<K>)
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    {
        let (store, writer) = reflector::store_shared(SHARED_BUFFER);
        let handle = writer.subscribe().expect("a shared store can be subscribed to");
        let synced = self.synced_flag(scope);
        let watch = watcher(api, watcher::Config::default()).default_backoff().modify(slim).inspect(synced).reflect_shared(writer);
        self.tasks.push(watch.take_until(self.shutdown.clone()).for_each(|_| futures::future::ready(())).boxed());
        (store, handle)
    }

    /// A flag that the watch sets on its first complete list. Not `Store::wait_until_ready`:
    /// its readiness is a oneshot channel that keeps one waker, and the controller reading
    /// the store waits on it already; a second waiter would take the controller's wake-up.
    fn synced_flag<K: kube::Resource<DynamicType = ()>>(
        &mut self,
        scope: &Option<String>,
    ) -> impl FnMut(&watcher::Result<watcher::Event<K>>) + use<K> {
        let flag = Arc::new(AtomicBool::new(false));
        self.caches.push(flag.clone());
        let scope = scope.clone().unwrap_or_else(|| "all namespaces".into());
        move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) && !flag.swap(true, Ordering::Relaxed) {
                tracing::debug!(kind = %K::kind(&()), %scope, "cache synced");
            }
        }
    }

    fn run<K, F, Fut>(&mut self, controller: Controller<K>, reconcile: F)
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        F: FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<kube::runtime::controller::Action, crate::controller::Error>> + Send + 'static,
    {
        let run = controller.graceful_shutdown_on(self.shutdown.clone()).run(reconcile, workspace::error_policy, self.ctx.clone());
        self.tasks.push(run.for_each(|_| futures::future::ready(())).boxed());
    }

    /// Access keys, woken by their Secrets and by the workspace they reference.
    fn access_keys(
        &mut self,
        ns: &Option<String>,
        workspaces: reflector::ReflectHandle<BitbucketWorkspace>,
        cluster_workspaces: reflector::ReflectHandle<ClusterBitbucketWorkspace>,
    ) {
        let controller = self.controller_for::<BitbucketAccessKey>(ns);
        let by_ws = controller.store();
        let controller = controller.watches_shared_stream(workspaces, move |ws: Arc<BitbucketWorkspace>| {
            let (name, ns) = (ws.name_any(), ws.namespace());
            let refers = |k: &BitbucketAccessKey| {
                k.spec.workspace_ref.kind == WorkspaceKind::BitbucketWorkspace && k.spec.workspace_ref.name == name && k.namespace() == ns
            };
            by_ws.state().into_iter().filter(|k| refers(k)).map(|k| ObjectRef::from_obj(&*k)).collect::<Vec<_>>()
        });
        let by_cws = controller.store();
        let controller = controller.watches_shared_stream(cluster_workspaces, move |ws: Arc<ClusterBitbucketWorkspace>| {
            let name = ws.name_any();
            let refers = |k: &BitbucketAccessKey| {
                k.spec.workspace_ref.kind == WorkspaceKind::ClusterBitbucketWorkspace && k.spec.workspace_ref.name == name
            };
            by_cws.state().into_iter().filter(|k| refers(k)).map(|k| ObjectRef::from_obj(&*k)).collect::<Vec<_>>()
        });
        self.run(controller, access_key::reconcile);
    }

    /// OAuth consumers, woken by their Secrets and by their consumer Secret: one rotated
    /// by an admin takes effect at once.
    fn oauth_consumers(&mut self, ns: &Option<String>) {
        let controller = self.controller_for::<BitbucketOAuthConsumer>(ns);
        let consumer_events = watcher(
            scoped::<PartialObjectMeta<Secret>>(&self.client, ns),
            watcher::Config::default().labels(oauth_consumer::CONSUMER_LABEL),
        )
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .touched_objects();
        let by_secret = controller.store();
        let controller = controller.watches_stream(consumer_events, move |secret: PartialObjectMeta<Secret>| {
            let (name, ns) = (secret.name_any(), secret.namespace());
            let refers = |c: &BitbucketOAuthConsumer| c.spec.consumer_secret_ref.name == name && c.namespace() == ns;
            by_secret.state().into_iter().filter(|c| refers(c)).map(|c| ObjectRef::from_obj(&*c)).collect::<Vec<_>>()
        });
        self.run(controller, oauth_consumer::reconcile);
    }

    /// A controller for `K` in `ns` that owns the Secrets the operator labels.
    fn controller_for<K>(&mut self, ns: &Option<String>) -> Controller<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        // Secrets are watched as metadata only, and only those the operator labels: a
        // cluster full of other Secrets costs nothing. The echo of the operator's own
        // write wakes nobody (the reconcile that wrote it knows what it wrote).
        let caches = self.ctx.clone();
        let secret_events =
            watcher(scoped::<PartialObjectMeta<Secret>>(&self.client, ns), watcher::Config::default().labels(&self.secret_selector))
                .default_backoff()
                .modify(|s| s.managed_fields_mut().clear())
                .touched_objects()
                .filter(move |s| {
                    let own = matches!(s, Ok(s) if caches.caches.is_own_write(s));
                    if let Ok(s) = s
                        && !own
                    {
                        tracing::debug!(secret = %s.name_any(), resource_version = ?s.resource_version(), "Secret changed");
                    }
                    futures::future::ready(!own)
                });
        // Status writes must not wake the object up again (a failing object would loop),
        // nor does the finalizer the reconcile adds itself: only spec (generation, which
        // deletion bumps too) and annotations (manual rotation) do.
        let (reader, writer) = reflector::store();
        let synced = self.synced_flag(ns);
        let objects = watcher(scoped::<K>(&self.client, ns), watcher::Config::default())
            .default_backoff()
            .modify(slim)
            .inspect(synced)
            .reflect(writer)
            .applied_objects()
            .predicate_filter(predicates::generation.combine(predicates::annotations), Default::default());
        Controller::for_stream(objects, reader).with_config(self.config.clone()).owns_stream(secret_events)
    }
}

use futures::FutureExt as _;

/// A workspace controller that an edit of its objects' auth Secret wakes (the admin who
/// rotates it sees the workspace checked again at once). `auth_of` says which Secret
/// (namespace, name) a workspace's auth is in.
fn woken_by_auth_secret<K>(
    controller: Controller<K>,
    secrets: Option<reflector::ReflectHandle<PartialObjectMeta<Secret>>>,
    auth_of: impl Fn(&K) -> (Option<String>, String) + Send + Sync + 'static,
) -> Controller<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let Some(secrets) = secrets else { return controller };
    let workspaces = controller.store();
    controller.watches_shared_stream(secrets, move |secret: Arc<PartialObjectMeta<Secret>>| {
        let this = (secret.namespace(), secret.name_any());
        let refers = |w: &K| auth_of(w) == this;
        workspaces.state().into_iter().filter(|w| refers(w)).map(|w| ObjectRef::from_obj(&*w)).collect::<Vec<_>>()
    })
}

/// What the caches keep of an object: not its managed fields, nor the copy of the whole
/// object `kubectl apply` leaves in an annotation (as large as the object itself).
fn slim<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
    if let Some(a) = o.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// An `Api` for one namespace, or for all of them.
fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
