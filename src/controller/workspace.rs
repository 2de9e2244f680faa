//! `BitbucketWorkspace` and `ClusterBitbucketWorkspace`: how to reach Bitbucket, checked
//! with one authenticated call, and the policy of who may use it for what.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::cache::AuthSecret;
use super::{Context, Error, Result, condition, set_condition};
use crate::api::{
    BitbucketAccessKey, BitbucketWorkspace, ClusterBitbucketWorkspace, FINALIZER, IN_USE_FINALIZER, WorkspaceKind, WorkspaceRef,
    WorkspaceSettings, WorkspaceStatus, ready_condition,
};
use crate::bitbucket::{Auth, WorkspaceClient};
use crate::sensitive::SecretString;

/// How often a Ready workspace checks its credentials again.
const RECHECK: Duration = Duration::from_secs(600);

/// A workspace object resolved for use: a client with its credential, and the settings.
pub(crate) struct Resolved {
    pub client: WorkspaceClient,
    pub workspace: String,
    pub ssh_host: String,
    pub known_hosts: String,
    pub site_url: String,
    pub allowed: Vec<String>,
    /// What carries the in-use finalizer while keys registered through it exist.
    pub protection: Protection,
}

/// The workspace object and its auth Secret, and whether each already carries
/// `IN_USE_FINALIZER`.
#[derive(Clone, Debug)]
pub(crate) struct Protection {
    pub kind: WorkspaceKind,
    /// The workspace's namespace (None for a ClusterBitbucketWorkspace).
    pub namespace: Option<String>,
    pub name: String,
    pub finalizers: Vec<String>,
    pub secret_namespace: String,
    pub secret_name: String,
    pub secret_finalizers: Vec<String>,
}

impl Protection {
    /// Whether nothing is left to protect. A Secret the operator may only read (namespaced
    /// mode, the cluster-resource namespace) is not asked for again on every reconcile.
    fn protected(&self, settings: &super::Settings) -> bool {
        let writable = settings.watch_namespaces.is_empty() || settings.watch_namespaces.contains(&self.secret_namespace);
        self.finalizers.iter().any(|f| f == IN_USE_FINALIZER) && (!writable || self.secret_finalizers.iter().any(|f| f == IN_USE_FINALIZER))
    }
}

/// Puts the in-use finalizer on the workspace and its auth Secret if either lacks it.
/// Called before anything is registered through the workspace.
pub(crate) async fn protect(ctx: &Context, p: &Protection) -> Result<()> {
    if p.protected(&ctx.settings) {
        return Ok(());
    }
    if !p.secret_finalizers.iter().any(|f| f == IN_USE_FINALIZER) {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &p.secret_namespace);
        add_finalizer(&secrets, &p.secret_name, &p.secret_finalizers).await?;
    }
    if !p.finalizers.iter().any(|f| f == IN_USE_FINALIZER) {
        match (&p.kind, &p.namespace) {
            (WorkspaceKind::BitbucketWorkspace, Some(ns)) => {
                add_finalizer(&Api::<BitbucketWorkspace>::namespaced(ctx.client.clone(), ns), &p.name, &p.finalizers).await?
            }
            _ => add_finalizer(&Api::<ClusterBitbucketWorkspace>::all(ctx.client.clone()), &p.name, &p.finalizers).await?,
        }
    }
    Ok(())
}

/// Adds `IN_USE_FINALIZER` to an object whose finalizers were `current`; a stale view
/// fails the patch's test instead of dropping someone else's finalizer, and is read again
/// (many reconciles protect the same workspace at once: one of them wins).
async fn add_finalizer<K>(api: &Api<K>, name: &str, current: &[String]) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if try_add_finalizer(api, name, current).await.is_ok() {
        return Ok(());
    }
    let Some(fresh) = api.get_opt(name).await? else { return Ok(()) };
    if fresh.meta().finalizers.iter().flatten().any(|f| f == IN_USE_FINALIZER) {
        return Ok(());
    }
    try_add_finalizer(api, name, fresh.meta().finalizers.as_deref().unwrap_or_default()).await
}

async fn try_add_finalizer<K>(api: &Api<K>, name: &str, current: &[String]) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = super::finalizer_added(current, IN_USE_FINALIZER);
    json_patch_finalizers(api, name, patch).await
}

/// Removes `IN_USE_FINALIZER` from an object whose finalizers are `current`.
async fn remove_finalizer<K>(api: &Api<K>, name: &str, current: &[String]) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(i) = current.iter().position(|f| f == IN_USE_FINALIZER) else { return Ok(()) };
    let patch = super::finalizer_removed(i, IN_USE_FINALIZER);
    json_patch_finalizers(api, name, patch).await
}

async fn json_patch_finalizers<K>(api: &Api<K>, name: &str, patch: serde_json::Value) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Internal(e.to_string()))?;
    match api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(()),
        // Gone already: nothing to protect or release.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        // Not ours to change (namespaced mode gives only read access to the Secrets of the
        // cluster-resource namespace): those stay unprotected, as their admins decide.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::debug!(object = name, "no permission to change finalizers; left as it is");
            Ok(())
        }
        Err(e) => Err(Error::Finalizer(e)),
    }
}

impl Resolved {
    /// Refuses a repository slug or project key the workspace's policy does not allow.
    pub(crate) fn check_allowed(&self, target: &str) -> Result<()> {
        let allowed = self.allowed.iter().any(|p| crate::api::glob_match(p, target));
        if allowed { Ok(()) } else { Err(Error::RepositoryNotAllowed(target.into(), self.allowed.clone())) }
    }
}

const API_TOKEN_KEYS: &str = "`email` and `token`";
const OAUTH_KEYS: &str = "`key` and `secret`";

/// The label the workspace controller puts on the auth Secrets it reads: a metadata watch
/// of the Secrets that carry it wakes their workspaces when an admin edits one, and tells
/// reconciles whether the credential parsed before is still the Secret's.
pub(crate) const AUTH_SECRET_LABEL: &str = "bitbucket.credentials.dev/workspace-auth-secret";

/// The credential in a workspace's auth Secret and the Secret's finalizers: parsed again
/// only when the watch shows a new version of the Secret (or does not know it).
async fn auth_secret(ctx: &Context, namespace: &str, settings: &WorkspaceSettings<'_>) -> Result<AuthSecret> {
    let name = auth_secret_name(settings);
    let api_token = settings.auth.api_token.is_some();
    if let Some(known) = ctx.caches.auth_secret(namespace, &name, api_token) {
        return Ok(known);
    }
    let read = fetch_auth_secret(&ctx.client, namespace, settings).await?;
    ctx.caches.remember_auth_secret(namespace, &name, api_token, &read);
    Ok(read)
}

/// The credential and the finalizers of the Secret that holds it (in `namespace`: the
/// workspace's own, or the cluster-resource namespace for a ClusterBitbucketWorkspace),
/// read from the API server.
pub(crate) async fn read_auth_secret(
    client: &kube::Client,
    namespace: &str,
    settings: &WorkspaceSettings<'_>,
) -> Result<(Auth, Vec<String>)> {
    fetch_auth_secret(client, namespace, settings).await.map(|a| (a.auth, a.finalizers))
}

async fn fetch_auth_secret(client: &kube::Client, namespace: &str, settings: &WorkspaceSettings<'_>) -> Result<AuthSecret> {
    let (source, keys) = match (&settings.auth.api_token, &settings.auth.oauth_consumer) {
        (Some(s), _) => (s, API_TOKEN_KEYS),
        (None, Some(s)) => (s, OAUTH_KEYS),
        (None, None) => {
            return Err(Error::AuthSecretInvalid {
                namespace: namespace.into(),
                name: String::new(),
                key: "auth".into(),
                keys: "one of auth.apiToken or auth.oauthConsumer",
            });
        }
    };
    let name = &source.secret_ref.name;
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await?.ok_or_else(|| Error::AuthSecretNotFound {
        namespace: namespace.into(),
        name: name.clone(),
        keys,
    })?;
    let field = |key: &str| -> Result<SecretString> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| SecretString::from_bytes(&v.0))
            .map(|s| SecretString::new(s.expose().trim()))
            .filter(|s| !s.expose().is_empty())
            .ok_or_else(|| Error::AuthSecretInvalid { namespace: namespace.into(), name: name.clone(), key: key.into(), keys })
    };
    let auth = if settings.auth.api_token.is_some() {
        Auth::ApiToken { email: field("email")?.expose().to_string(), token: field("token")? }
    } else {
        Auth::OAuthConsumer { key: field("key")?.expose().to_string(), secret: field("secret")? }
    };
    Ok(AuthSecret {
        auth,
        finalizers: secret.finalizers().to_vec(),
        labelled: secret.labels().contains_key(AUTH_SECRET_LABEL),
        resource_version: secret.resource_version().unwrap_or_default(),
    })
}

/// The name of the Secret a workspace's auth refers to.
pub(crate) fn auth_secret_name(settings: &WorkspaceSettings<'_>) -> String {
    settings.auth.api_token.as_ref().or(settings.auth.oauth_consumer.as_ref()).map(|s| s.secret_ref.name.clone()).unwrap_or_default()
}

fn client_for(ctx: &Context, settings: &WorkspaceSettings<'_>, auth: &Auth) -> Result<WorkspaceClient> {
    let credential = ctx
        .bitbucket
        .credential(settings.api_url, settings.site_url, auth, settings.requests_per_hour)
        .map_err(|e| Error::bitbucket(format!("workspace {}", settings.workspace), e))?;
    Ok(ctx.bitbucket.workspace(settings.workspace, credential))
}

/// Refuses a workspace whose URLs the operator does not allow, before its Secret is read
/// or anything is sent.
fn check_urls(ctx: &Context, settings: &WorkspaceSettings<'_>) -> Result<()> {
    for url in [settings.api_url, settings.site_url] {
        ctx.bitbucket.check_allowed(url).map_err(|e| Error::bitbucket(format!("workspace {}", settings.workspace), e))?;
    }
    Ok(())
}

fn resolved(settings: &WorkspaceSettings<'_>, client: WorkspaceClient, protection: Protection) -> Resolved {
    Resolved {
        protection,
        client,
        workspace: settings.workspace.into(),
        ssh_host: settings.ssh_host.into(),
        known_hosts: settings.known_hosts.into(),
        site_url: settings.site_url.into(),
        allowed: settings.allowed_repositories.to_vec(),
    }
}

fn require_ready(status: Option<&WorkspaceStatus>, display: &str) -> Result<()> {
    match status.and_then(|s| ready_condition(&s.conditions)) {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(Error::WorkspaceNotReady(display.into(), format!("{}: {}", c.reason, c.message))),
        None => Err(Error::WorkspaceNotReady(display.into(), "its credentials have not been checked yet".into())),
    }
}

/// Resolves the workspace an object in `namespace` refers to, enforcing who may use it.
pub(crate) async fn resolve(ctx: &Context, namespace: &str, r: &WorkspaceRef) -> Result<Resolved> {
    let (resolved, admitted) = resolve_with(ctx, namespace, r, true).await?;
    if !admitted {
        return Err(Error::WorkspaceNotAllowed(r.name.clone(), namespace.into()));
    }
    Ok(resolved)
}

/// The workspace for removing keys an object registered through it earlier, whether or
/// not it still admits the object's namespace or is Ready now (revocation, deletion);
/// says whether the namespace is still admitted. Callers restrict what they do with it
/// when it is not: only the operator's own record of registrations is acted on.
pub(crate) async fn resolve_for_removal(ctx: &Context, namespace: &str, r: &WorkspaceRef) -> Result<(Resolved, bool)> {
    resolve_with(ctx, namespace, r, false).await
}

async fn resolve_with(ctx: &Context, namespace: &str, r: &WorkspaceRef, need_ready: bool) -> Result<(Resolved, bool)> {
    match r.kind {
        WorkspaceKind::BitbucketWorkspace => {
            let cached = ctx.caches.workspace(namespace, &r.name);
            let ws = match cached {
                Some(ws) => Some(ws),
                None => Api::<BitbucketWorkspace>::namespaced(ctx.client.clone(), namespace).get_opt(&r.name).await?.map(Arc::new),
            };
            let ws = ws.ok_or_else(|| Error::WorkspaceNotFound {
                kind: "BitbucketWorkspace",
                name: format!("{namespace}/{}", r.name),
                hint: " (a BitbucketWorkspace is usable only from its own namespace; use a ClusterBitbucketWorkspace to share one)".into(),
            })?;
            let display = format!("BitbucketWorkspace {namespace}/{}", r.name);
            let settings = ws.spec.settings();
            check_urls(ctx, &settings)?;
            if need_ready {
                require_ready(ws.status.as_ref(), &display)?;
            }
            let AuthSecret { auth, finalizers: secret_finalizers, .. } = auth_secret(ctx, namespace, &settings).await?;
            let protection = Protection {
                kind: WorkspaceKind::BitbucketWorkspace,
                namespace: Some(namespace.into()),
                name: r.name.clone(),
                finalizers: ws.finalizers().to_vec(),
                secret_namespace: namespace.into(),
                secret_name: auth_secret_name(&settings),
                secret_finalizers,
            };
            Ok((resolved(&settings, client_for(ctx, &settings, &auth)?, protection), true))
        }
        WorkspaceKind::ClusterBitbucketWorkspace => {
            let cached = ctx.caches.cluster_workspace(&r.name);
            let ws = match cached {
                Some(ws) => Some(ws),
                None => Api::<ClusterBitbucketWorkspace>::all(ctx.client.clone()).get_opt(&r.name).await?.map(Arc::new),
            };
            let ws = ws.ok_or_else(|| Error::WorkspaceNotFound {
                kind: "ClusterBitbucketWorkspace",
                name: r.name.clone(),
                hint: String::new(),
            })?;
            let admitted = admits(ctx, &ws, namespace).await?;
            if need_ready && !admitted {
                return Err(Error::WorkspaceNotAllowed(r.name.clone(), namespace.into()));
            }
            let display = format!("ClusterBitbucketWorkspace {}", r.name);
            let settings = ws.spec.settings();
            check_urls(ctx, &settings)?;
            if need_ready {
                require_ready(ws.status.as_ref(), &display)?;
            }
            // The cert-manager rule: a cluster resource's Secrets come only from the
            // operator's own namespace, never from a tenant's.
            let secret_namespace = ctx.settings.cluster_resource_namespace.clone();
            let AuthSecret { auth, finalizers: secret_finalizers, .. } = auth_secret(ctx, &secret_namespace, &settings).await?;
            let protection = Protection {
                kind: WorkspaceKind::ClusterBitbucketWorkspace,
                namespace: None,
                name: r.name.clone(),
                finalizers: ws.finalizers().to_vec(),
                secret_name: auth_secret_name(&settings),
                secret_namespace,
                secret_finalizers,
            };
            Ok((resolved(&settings, client_for(ctx, &settings, &auth)?, protection), admitted))
        }
    }
}

async fn admits(ctx: &Context, ws: &ClusterBitbucketWorkspace, namespace: &str) -> Result<bool> {
    let allowed = &ws.spec.allowed_namespaces;
    if allowed.names.iter().any(|n| n == namespace) {
        return Ok(true);
    }
    let Some(selector) = &allowed.selector else { return Ok(false) };
    let Some(ns) = Api::<Namespace>::all(ctx.client.clone()).get_opt(namespace).await? else { return Ok(false) };
    Ok(selector_matches(selector, ns.labels()))
}

/// `metav1.LabelSelector` semantics. An empty selector matches everything.
pub(crate) fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let by_label = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_label && by_expr
}

/// Labels an auth Secret so that its watch follows it. A Secret the operator may only read
/// (namespaced mode, the cluster-resource namespace) stays as it is and is read afresh
/// every time.
async fn label_auth_secret(ctx: &Context, namespace: &str, name: &str) -> Result<()> {
    let patch = json!({"metadata": {"labels": {AUTH_SECRET_LABEL: "true"}}});
    match Api::<Secret>::namespaced(ctx.client.clone(), namespace).patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
            tracing::debug!(secret = name, code = e.code, "auth Secret not labelled; it is read on every use");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Checks the credentials of a workspace object and publishes the outcome as `Ready`.
async fn check<K>(obj: Arc<K>, ctx: Arc<Context>, settings: WorkspaceSettings<'_>, secret_namespace: &str, api: Api<K>) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
    K: HasWorkspaceStatus,
{
    let generation = obj.meta().generation;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let outcome = async {
        check_urls(&ctx, &settings)?;
        let AuthSecret { auth, labelled, .. } = auth_secret(&ctx, secret_namespace, &settings).await?;
        if !labelled {
            label_auth_secret(&ctx, secret_namespace, &auth_secret_name(&settings)).await?;
        }
        let client = client_for(&ctx, &settings, &auth)?;
        // The same secret (one credential per proven secret) verified a moment ago, for
        // the same spec: the wake-up of our own status write, or of the label put on the
        // auth Secret, costs no request. The object at hand may predate the status that
        // verification wrote (the cache lags the write), so whether it shows Ready does
        // not matter: a second verification could find a small budget spent and report
        // the credential RateLimited for the rest of the hour.
        let stamp = (Arc::as_ptr(client.credential()) as usize, generation);
        if ctx.recently_verified(&uid, stamp, RECHECK / 2) {
            return Ok(false);
        }
        client.verify().await.map_err(|e| Error::bitbucket(format!("workspace {}", settings.workspace), e))?;
        ctx.verified(&uid, stamp);
        Ok::<bool, Error>(true)
    }
    .await;
    // A failure is recorded by the reconcile around this (`Reconciled::record_failure`).
    let fresh = outcome?;
    let previous = obj.status().map(|s| s.conditions.clone()).unwrap_or_default();
    let mut conditions = previous.clone();
    set_condition(
        &mut conditions,
        condition(&previous, "Ready", true, "Verified", "credentials verified with Bitbucket".into(), generation),
    );
    super::clear_degraded(&mut conditions);
    let status = WorkspaceStatus { conditions, observed_generation: generation };
    if obj.status() != Some(&status) {
        let was_ready = obj.status().and_then(|s| ready_condition(&s.conditions)).map(|c| c.status == "True");
        api.patch_status(&obj.name_any(), &PatchParams::apply(super::FIELD_MANAGER), &Patch::Merge(json!({ "status": status }))).await?;
        if was_ready != Some(true) && fresh {
            ctx.event(&*obj, false, "Verified", "credentials verified with Bitbucket".into()).await;
        }
    }
    Ok(super::requeue(super::jitter(RECHECK)))
}

/// Credentials verified for this spec stay good while Bitbucket itself fails: Ready
/// stays, Degraded says why (and the keys that use the workspace go on). Anything else
/// (the credentials refused, a panic, the API server) is Ready=False. The message is the
/// error alone (the access keys that use the workspace quote it), and status is written
/// only when it changes: the workspace controller wakes on every change of its objects,
/// so a write per failure would retry at once instead of after the backoff.
async fn record_workspace_failure<K>(obj: &K, api: Api<K>, error: &Error) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + HasWorkspaceStatus,
{
    let generation = obj.meta().generation;
    let mut conditions = obj.status().map(|s| s.conditions.clone()).unwrap_or_default();
    let changed = super::record_failure(&mut conditions, error, error.to_string(), generation, true);
    let status = WorkspaceStatus { conditions, observed_generation: generation };
    if obj.status() != Some(&status) {
        api.patch_status(&obj.name_any(), &PatchParams::apply(super::FIELD_MANAGER), &Patch::Merge(json!({ "status": status }))).await?;
    }
    Ok(changed)
}

impl super::Reconciled for BitbucketWorkspace {
    const CONTROLLER: &'static str = "workspace";

    fn slot(&self) -> Option<String> {
        None
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    async fn record_failure(&self, ctx: &Context, error: &Error, _: Duration) -> Result<bool> {
        record_workspace_failure(self, self.api(ctx.client.clone()), error).await
    }
}

impl super::Reconciled for ClusterBitbucketWorkspace {
    const CONTROLLER: &'static str = "clusterworkspace";

    fn slot(&self) -> Option<String> {
        None
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    async fn record_failure(&self, ctx: &Context, error: &Error, _: Duration) -> Result<bool> {
        record_workspace_failure(self, self.api(ctx.client.clone()), error).await
    }
}

pub(crate) trait HasWorkspaceStatus {
    fn status(&self) -> Option<&WorkspaceStatus>;
}
impl HasWorkspaceStatus for BitbucketWorkspace {
    fn status(&self) -> Option<&WorkspaceStatus> {
        self.status.as_ref()
    }
}
impl HasWorkspaceStatus for ClusterBitbucketWorkspace {
    fn status(&self) -> Option<&WorkspaceStatus> {
        self.status.as_ref()
    }
}

pub(crate) async fn reconcile_namespaced(obj: Arc<BitbucketWorkspace>, ctx: Arc<Context>) -> Result<Action> {
    super::reconcile(obj, ctx, |obj, ctx| async move {
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<BitbucketWorkspace> = Api::namespaced(ctx.client.clone(), &ns);
        let spec = obj.spec.clone();
        if obj.meta().deletion_timestamp.is_some() {
            let secret = auth_secret_name(&spec.settings());
            return release_when_unused(&*obj, &ctx, &api, WorkspaceKind::BitbucketWorkspace, &ns, &secret).await;
        }
        check(obj, ctx, spec.settings(), &ns, api).await
    })
    .await
}

pub(crate) async fn reconcile_cluster(obj: Arc<ClusterBitbucketWorkspace>, ctx: Arc<Context>) -> Result<Action> {
    super::reconcile(obj, ctx, |obj, ctx| async move {
        let api: Api<ClusterBitbucketWorkspace> = Api::all(ctx.client.clone());
        let ns = ctx.settings.cluster_resource_namespace.clone();
        let spec = obj.spec.clone();
        if obj.meta().deletion_timestamp.is_some() {
            let secret = auth_secret_name(&spec.settings());
            return release_when_unused(&*obj, &ctx, &api, WorkspaceKind::ClusterBitbucketWorkspace, &ns, &secret).await;
        }
        check(obj, ctx, spec.settings(), &ns, api).await
    })
    .await
}

/// How often a workspace being deleted looks again whether its users are gone.
const IN_USE_RECHECK: Duration = Duration::from_secs(3);

/// A workspace being deleted keeps its in-use finalizer while access keys that registered
/// through it still exist (their cleanup needs it and its Secret); then the Secret (unless
/// another protected workspace names it) and the workspace are released.
async fn release_when_unused<K>(
    obj: &K,
    ctx: &Context,
    api: &Api<K>,
    kind: WorkspaceKind,
    secret_namespace: &str,
    secret_name: &str,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !obj.finalizers().iter().any(|f| f == IN_USE_FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = obj.name_any();
    let users = users_of(ctx, kind, obj.namespace().as_deref(), &name).await?;
    if users > 0 {
        tracing::debug!(workspace = %name, users, "deletion waits for the access keys registered through it");
        return Ok(super::requeue(IN_USE_RECHECK));
    }
    release_secrets(ctx, kind, &name, secret_namespace, secret_name).await?;
    remove_finalizer(api, &name, obj.finalizers()).await?;
    tracing::info!(workspace = %name, "no access key needs it any more; released");
    Ok(Action::await_change())
}

/// Access keys that reference the workspace and still hold their cleanup finalizer.
async fn users_of(ctx: &Context, kind: WorkspaceKind, namespace: Option<&str>, name: &str) -> Result<usize> {
    let apis: Vec<Api<BitbucketAccessKey>> = match (kind, namespace) {
        (WorkspaceKind::BitbucketWorkspace, Some(ns)) => vec![Api::namespaced(ctx.client.clone(), ns)],
        _ if ctx.settings.watch_namespaces.is_empty() => vec![Api::all(ctx.client.clone())],
        _ => ctx.settings.watch_namespaces.iter().map(|ns| Api::namespaced(ctx.client.clone(), ns)).collect(),
    };
    let mut n = 0;
    for api in apis {
        let list = api.list(&Default::default()).await?;
        n += list
            .items
            .iter()
            .filter(|k| k.spec.workspace_ref.kind == kind && k.spec.workspace_ref.name == name)
            .filter(|k| k.finalizers().iter().any(|f| f == FINALIZER))
            .count();
    }
    Ok(n)
}

/// Releases the Secrets of `namespace` that carry the in-use finalizer and that no
/// protected workspace other than `except` names: the workspace's own Secret, and any
/// Secret it used before its `secretRef` moved on (nothing else would ever release those,
/// and a namespace being deleted would wait for them forever).
async fn release_secrets(ctx: &Context, kind: WorkspaceKind, except: &str, namespace: &str, current: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let held: Vec<(String, Vec<String>)> = match secrets.list_metadata(&Default::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|s| s.finalizers().iter().any(|f| f == IN_USE_FINALIZER))
            .map(|s| (s.name_any(), s.finalizers().to_vec()))
            .collect(),
        // Namespaced mode without list access there: only the workspace's own Secret.
        Err(kube::Error::Api(e)) if e.code == 403 => match secrets.get_opt(current).await? {
            Some(s) => vec![(current.to_string(), s.finalizers().to_vec())],
            None => Vec::new(),
        },
        Err(e) => return Err(e.into()),
    };
    if held.is_empty() {
        return Ok(());
    }
    let still = secrets_still_protected(ctx, kind, except, namespace).await?;
    for (name, finalizers) in held.iter().filter(|(n, _)| !still.contains(n)) {
        remove_finalizer(&secrets, name, finalizers).await?;
    }
    Ok(())
}

/// The auth Secrets in `namespace` named by workspaces other than `except` that are
/// themselves protected.
async fn secrets_still_protected(ctx: &Context, kind: WorkspaceKind, except: &str, namespace: &str) -> Result<BTreeSet<String>> {
    let protected = |f: &[String]| f.iter().any(|x| x == IN_USE_FINALIZER);
    let namespaced = match Api::<BitbucketWorkspace>::namespaced(ctx.client.clone(), namespace).list(&Default::default()).await {
        Ok(l) => l.items,
        // Namespaced mode without access to that namespace's workspaces: none we serve.
        Err(kube::Error::Api(e)) if e.code == 403 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut names: BTreeSet<String> = namespaced
        .iter()
        .filter(|w| !(kind == WorkspaceKind::BitbucketWorkspace && w.name_any() == except) && protected(w.finalizers()))
        .map(|w| auth_secret_name(&w.spec.settings()))
        .collect();
    if namespace == ctx.settings.cluster_resource_namespace {
        let cluster = Api::<ClusterBitbucketWorkspace>::all(ctx.client.clone()).list(&Default::default()).await?;
        names.extend(
            cluster
                .items
                .iter()
                .filter(|w| !(kind == WorkspaceKind::ClusterBitbucketWorkspace && w.name_any() == except) && protected(w.finalizers()))
                .map(|w| auth_secret_name(&w.spec.settings())),
        );
    }
    Ok(names)
}

pub(crate) fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    super::requeue(ctx.backoff(&*obj, error))
}
