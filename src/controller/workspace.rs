//! `BitbucketWorkspace` and `ClusterBitbucketWorkspace`: how to reach Bitbucket, checked
//! with one authenticated call, and the policy of who may use it for what.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, Result, condition, set_condition};
use crate::api::{
    BitbucketWorkspace, ClusterBitbucketWorkspace, WorkspaceKind, WorkspaceRef, WorkspaceSettings, WorkspaceStatus,
    ready_condition,
};
use crate::bitbucket::{Auth, WorkspaceClient};
use crate::sensitive::SecretString;

/// How often a Ready workspace checks its credentials again.
const RECHECK: Duration = Duration::from_secs(600);

/// A workspace object resolved for use: a client with its credential, and the settings.
pub struct Resolved {
    pub client: WorkspaceClient,
    pub workspace: String,
    pub ssh_host: String,
    pub known_hosts: String,
    pub site_url: String,
    pub allowed: Vec<String>,
    pub display: String,
}

impl Resolved {
    /// Refuses a repository slug or project key the workspace's policy does not allow.
    pub fn check_allowed(&self, target: &str) -> Result<()> {
        let allowed = self.allowed.iter().any(|p| crate::api::glob_match(p, target));
        if allowed { Ok(()) } else { Err(Error::RepositoryNotAllowed(target.into(), self.allowed.clone())) }
    }
}

const API_TOKEN_KEYS: &str = "`email` and `token`";
const OAUTH_KEYS: &str = "`key` and `secret`";

/// The credential in a workspace's auth Secret, read afresh (nothing tells the operator
/// when an admin rotates it, so it is not cached).
async fn read_auth(ctx: &Context, namespace: &str, settings: &WorkspaceSettings<'_>) -> Result<Auth> {
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
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::AuthSecretNotFound { namespace: namespace.into(), name: name.clone(), keys })?;
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
    Ok(if settings.auth.api_token.is_some() {
        Auth::ApiToken { email: field("email")?.expose().to_string(), token: field("token")? }
    } else {
        Auth::OAuthConsumer { key: field("key")?.expose().to_string(), secret: field("secret")? }
    })
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

fn resolved(settings: &WorkspaceSettings<'_>, client: WorkspaceClient, display: String) -> Resolved {
    Resolved {
        client,
        workspace: settings.workspace.into(),
        ssh_host: settings.ssh_host.into(),
        known_hosts: settings.known_hosts.into(),
        site_url: settings.site_url.into(),
        allowed: settings.allowed_repositories.to_vec(),
        display,
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
pub async fn resolve(ctx: &Context, namespace: &str, r: &WorkspaceRef) -> Result<Resolved> {
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
            require_ready(ws.status.as_ref(), &display)?;
            let auth = read_auth(ctx, namespace, &settings).await?;
            Ok(resolved(&settings, client_for(ctx, &settings, &auth)?, display))
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
            if !admits(ctx, &ws, namespace).await? {
                return Err(Error::WorkspaceNotAllowed(r.name.clone(), namespace.into()));
            }
            let display = format!("ClusterBitbucketWorkspace {}", r.name);
            let settings = ws.spec.settings();
            check_urls(ctx, &settings)?;
            require_ready(ws.status.as_ref(), &display)?;
            // The cert-manager rule: a cluster resource's Secrets come only from the
            // operator's own namespace, never from a tenant's.
            let auth = read_auth(ctx, &ctx.settings.cluster_resource_namespace, &settings).await?;
            Ok(resolved(&settings, client_for(ctx, &settings, &auth)?, display))
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
pub fn selector_matches(
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

/// Checks the credentials of a workspace object and publishes the outcome as `Ready`.
async fn check<K>(obj: Arc<K>, ctx: Arc<Context>, settings: WorkspaceSettings<'_>, secret_namespace: &str, api: Api<K>) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
    K: HasWorkspaceStatus,
{
    let generation = obj.meta().generation;
    let outcome = async {
        check_urls(&ctx, &settings)?;
        let auth = read_auth(&ctx, secret_namespace, &settings).await?;
        client_for(&ctx, &settings, &auth)?
            .verify()
            .await
            .map_err(|e| Error::bitbucket(format!("workspace {}", settings.workspace), e))
    }
    .await;
    let previous = obj.status().map(|s| s.conditions.clone()).unwrap_or_default();
    let mut conditions = previous.clone();
    let ready = match &outcome {
        Ok(()) => condition(&previous, "Ready", true, "Verified", "credentials verified with Bitbucket".into(), generation),
        Err(e) => condition(&previous, "Ready", false, e.reason(), e.to_string(), generation),
    };
    set_condition(&mut conditions, ready);
    let status = WorkspaceStatus { conditions, observed_generation: generation };
    if obj.status() != Some(&status) {
        let was_ready = obj.status().and_then(|s| ready_condition(&s.conditions)).map(|c| c.status == "True");
        api.patch_status(&obj.name_any(), &PatchParams::apply(super::FIELD_MANAGER), &Patch::Merge(json!({ "status": status })))
            .await?;
        match &outcome {
            Ok(()) if was_ready != Some(true) => ctx.event(&*obj, false, "Verified", "credentials verified with Bitbucket".into()).await,
            Err(e) => ctx.event(&*obj, true, e.reason(), e.to_string()).await,
            _ => {}
        }
    }
    match outcome {
        Ok(()) => {
            ctx.succeeded(&*obj);
            Ok(Action::requeue(super::jitter(RECHECK)))
        }
        Err(e) => Ok(Action::requeue(ctx.backoff(&*obj, &e))),
    }
}

pub trait HasWorkspaceStatus {
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

pub async fn reconcile_namespaced(obj: Arc<BitbucketWorkspace>, ctx: Arc<Context>) -> Result<Action> {
    let ns = obj.namespace().unwrap_or_default();
    let api = Api::namespaced(ctx.client.clone(), &ns);
    let spec = obj.spec.clone();
    check(obj, ctx, spec.settings(), &ns, api).await
}

pub async fn reconcile_cluster(obj: Arc<ClusterBitbucketWorkspace>, ctx: Arc<Context>) -> Result<Action> {
    let api = Api::all(ctx.client.clone());
    let ns = ctx.settings.cluster_resource_namespace.clone();
    let spec = obj.spec.clone();
    check(obj, ctx, spec.settings(), &ns, api).await
}

pub fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(&*obj, error))
}
