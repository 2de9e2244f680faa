//! `check WORKSPACE`: the workspace's credentials tried against Bitbucket, one finding per
//! thing the operator needs, and the scopes they lack.
//!
//! Nothing is changed in Bitbucket. Whether keys may be added or removed is asked without
//! adding or removing one: Bitbucket checks scopes before it reads a request, so a POST of
//! an empty key answers 400 when the scopes are there and 403 when they are not, and a
//! DELETE of key 0 answers 404 or 403.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::{CliError, Report, write_conditions};
use crate::api::{BitbucketAccessKey, BitbucketWorkspace, ClusterBitbucketWorkspace, WorkspaceKind, WorkspaceSettings, WorkspaceStatus};
use crate::bitbucket::{Auth, Bitbucket, ClientOptions, Error, Target, WorkspaceClient};
use crate::controller::access_key;
use crate::controller::workspace::{auth_secret_name, read_auth_secret};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The BitbucketWorkspace in the namespace, else the ClusterBitbucketWorkspace, of this name.
    pub name: String,
    /// Only a ClusterBitbucketWorkspace of this name.
    #[arg(long)]
    pub cluster: bool,
    /// A repository to try (repeatable). Default: those the workspace's access keys name.
    #[arg(long = "repository", value_name = "SLUG")]
    pub repositories: Vec<String>,
    /// A project to try (repeatable). Default: those the workspace's access keys name.
    #[arg(long = "project", value_name = "KEY")]
    pub projects: Vec<String>,
    /// Where the auth Secrets of ClusterBitbucketWorkspaces are (the operator's namespace).
    #[arg(long, env = "BCO_CLUSTER_RESOURCE_NAMESPACE", default_value = "bitbucket-credentials-operator")]
    pub cluster_resource_namespace: String,
    /// `--allowed-bitbucket-urls` and `--ca-bundle`, as the operator's: a workspace naming
    /// any other URL is refused before its Secret is read.
    #[command(flatten)]
    pub network: crate::operator::BitbucketNetwork,
}

/// The workspace object as `check` needs it.
struct Found {
    display: String,
    spec: Spec,
    status: Option<WorkspaceStatus>,
    /// Where its auth Secret is.
    secret_namespace: String,
    /// Access keys that name it, as far as the caller may list them.
    users: Vec<BitbucketAccessKey>,
}

enum Spec {
    Namespaced(crate::api::BitbucketWorkspaceSpec),
    Cluster(crate::api::ClusterBitbucketWorkspaceSpec),
}

impl Spec {
    fn settings(&self) -> WorkspaceSettings<'_> {
        match self {
            Spec::Namespaced(s) => s.settings(),
            Spec::Cluster(s) => s.settings(),
        }
    }
}

pub(super) async fn check(client: &Client, ns: &str, args: CheckArgs) -> Result<Report, CliError> {
    let found = find(client, ns, &args).await?;
    let settings = found.spec.settings();
    let mut out = String::new();
    let _ = writeln!(out, "{}: Bitbucket workspace {} at {}", found.display, settings.workspace, settings.api_url);
    write_conditions(&mut out, found.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default());
    let mut findings = Findings::default();
    let Some(ws) = connect(client, &found, &args, &mut out, &mut findings).await? else {
        return Ok(findings.finish(out));
    };
    let targets = targets(&found, &args);
    if targets.is_empty() {
        let _ = writeln!(out, "No repository or project tried: no access key names this workspace; pass --repository or --project.");
    }
    let auth = ws.credential().auth();
    for target in targets {
        let what = target.to_string();
        if !settings.allows(target.name()) {
            findings.fail(
                &mut out,
                &what,
                "allowed",
                format!("not in allowedRepositories {:?}: the operator refuses it", settings.allowed_repositories),
            );
            continue;
        }
        let listed = ws.list_keys(&target).await;
        let listed_ok = listed.is_ok();
        findings.record(&mut out, &what, "list keys", listed.map(|_| ()), needed(auth, &target, Op::List));
        if !listed_ok {
            continue;
        }
        findings.record(&mut out, &what, "add keys", ws.probe_create(&target).await, needed(auth, &target, Op::Create));
        findings.record(&mut out, &what, "remove keys", ws.probe_delete(&target).await, needed(auth, &target, Op::Delete));
    }
    Ok(findings.finish(out))
}

/// The credential read and proven with one call; None when that already failed.
async fn connect(
    client: &Client,
    found: &Found,
    args: &CheckArgs,
    out: &mut String,
    findings: &mut Findings,
) -> Result<Option<WorkspaceClient>, CliError> {
    let settings = found.spec.settings();
    let (allowed_urls, extra_roots) = args.network.resolve().map_err(CliError::Failed)?;
    let bb = Arc::new(
        Bitbucket::new(ClientOptions { allowed_urls, extra_roots, ..Default::default() }).map_err(|e| CliError::Failed(e.to_string()))?,
    );
    // As the operator does: URLs it may not send credentials to, before the Secret is read.
    for url in [settings.api_url, settings.site_url] {
        if let Err(e) = bb.check_allowed(url) {
            findings.fail(out, "credentials", "send", e.to_string());
            return Ok(None);
        }
    }
    let secret = format!("Secret {}/{}", found.secret_namespace, auth_secret_name(&settings));
    let auth = match read_auth_secret(client, &found.secret_namespace, &settings).await {
        Ok((auth, _)) => auth,
        Err(e) => {
            findings.fail(out, "credentials", "read", format!("{} ({})", e, e.reason()));
            return Ok(None);
        }
    };
    let kind = match auth {
        Auth::ApiToken { .. } => "API token",
        Auth::OAuthConsumer { .. } => "OAuth consumer",
    };
    let _ = writeln!(out, "Credentials:     {kind} in {secret}");
    let credential = match bb.credential(settings.api_url, settings.site_url, &auth, settings.requests_per_hour) {
        Ok(c) => c,
        Err(e) => {
            findings.fail(out, "credentials", "send", e.to_string());
            return Ok(None);
        }
    };
    let ws = bb.workspace(settings.workspace, credential);
    let verified = ws.verify().await;
    let proven = verified.is_ok();
    findings.record(out, "credentials", "authenticate", verified, Vec::new());
    if proven && let Some(token) = ws.credential().token.lock().await.as_ref() {
        let _ = writeln!(out, "Token scopes:    {}", if token.scopes.is_empty() { "none".into() } else { token.scopes.join(" ") });
    }
    Ok(proven.then_some(ws))
}

async fn find(client: &Client, ns: &str, args: &CheckArgs) -> Result<Found, CliError> {
    let keys: Api<BitbucketAccessKey> = Api::namespaced(client.clone(), ns);
    if !args.cluster
        && let Some(ws) = Api::<BitbucketWorkspace>::namespaced(client.clone(), ns).get_opt(&args.name).await?
    {
        let users = users(keys, WorkspaceKind::BitbucketWorkspace, &args.name).await.unwrap_or_default();
        return Ok(Found {
            display: format!("BitbucketWorkspace {ns}/{}", ws.name_any()),
            spec: Spec::Namespaced(ws.spec),
            status: ws.status,
            secret_namespace: ns.to_string(),
            users,
        });
    }
    let Some(ws) = Api::<ClusterBitbucketWorkspace>::all(client.clone()).get_opt(&args.name).await? else {
        let where_ = if args.cluster { String::new() } else { format!("no BitbucketWorkspace {} in namespace {ns} and ", args.name) };
        return Err(CliError::Failed(format!("{where_}no ClusterBitbucketWorkspace {}", args.name)));
    };
    // Across namespaces if the caller may list them, else the caller's namespace.
    let kind = WorkspaceKind::ClusterBitbucketWorkspace;
    let users = match users(Api::all(client.clone()), kind, &args.name).await {
        Some(all) => all,
        None => users(keys, kind, &args.name).await.unwrap_or_default(),
    };
    Ok(Found {
        display: format!("ClusterBitbucketWorkspace {}", ws.name_any()),
        spec: Spec::Cluster(ws.spec),
        status: ws.status,
        secret_namespace: args.cluster_resource_namespace.clone(),
        users,
    })
}

/// The access keys that name the workspace; None when the caller may not list them.
async fn users(api: Api<BitbucketAccessKey>, kind: WorkspaceKind, name: &str) -> Option<Vec<BitbucketAccessKey>> {
    let all = api.list(&ListParams::default()).await.ok()?.items;
    Some(all.into_iter().filter(|k| k.spec.workspace_ref.kind == kind && k.spec.workspace_ref.name == name).collect())
}

/// The targets given, else every one the workspace's access keys name; repositories
/// first, each kind sorted.
fn targets(found: &Found, args: &CheckArgs) -> BTreeSet<Target> {
    if args.repositories.is_empty() && args.projects.is_empty() {
        return found.users.iter().flat_map(access_key::targets).collect();
    }
    let repos = args.repositories.iter().cloned().map(Target::Repository);
    repos.chain(args.projects.iter().cloned().map(Target::Project)).collect()
}

#[derive(Clone, Copy)]
enum Op {
    List,
    Create,
    Delete,
}

/// The scopes an operation on `target` needs with this kind of credential (FACTS of the
/// Bitbucket API: API tokens have granular scopes, OAuth consumers one per kind of target).
fn needed(auth: &Auth, target: &Target, op: Op) -> Vec<&'static str> {
    match (auth, target) {
        (Auth::OAuthConsumer { .. }, Target::Repository(_)) => vec!["repository:admin"],
        (Auth::OAuthConsumer { .. }, Target::Project(_)) => vec!["project:admin"],
        (Auth::ApiToken { .. }, target) => {
            let read = if matches!(target, Target::Repository(_)) { "admin:repository:bitbucket" } else { "admin:project:bitbucket" };
            match op {
                Op::List => vec![read],
                Op::Create => vec![read, "write:ssh-key:bitbucket"],
                Op::Delete => vec![read, "delete:ssh-key:bitbucket"],
            }
        }
    }
}

/// One finding: `  ok       repository api                   list keys`.
fn line(out: &mut String, verdict: &str, subject: &str, what: &str, detail: &str) {
    let line = format!("  {verdict:<8} {subject:<32} {what:<13} {detail}");
    let _ = writeln!(out, "{}", line.trim_end());
}

/// One line per finding; the scopes found missing, collected.
#[derive(Default)]
struct Findings {
    failed: usize,
    missing: BTreeSet<String>,
    /// Scopes a call that needed them proved granted.
    proven: BTreeSet<String>,
}

impl Findings {
    fn fail(&mut self, out: &mut String, subject: &str, what: &str, detail: String) {
        self.failed += 1;
        line(out, "FAIL", subject, what, &detail);
    }

    /// `needed`: the scopes the call needs, named when Bitbucket's 403 does not say which
    /// (less those an earlier call proved granted).
    fn record(&mut self, out: &mut String, subject: &str, what: &str, result: Result<(), Error>, needed: Vec<&'static str>) {
        match result {
            Ok(()) => {
                self.proven.extend(needed.iter().map(|s| s.to_string()));
                line(out, "ok", subject, what, "")
            }
            Err(Error::MissingScopes { missing, .. }) => {
                self.missing.extend(missing.iter().cloned());
                self.failed += 1;
                line(out, "MISSING", subject, what, &format!("needs {}", missing.join(", ")));
            }
            Err(Error::Forbidden(_)) if needed.iter().any(|s| !self.proven.contains(*s)) => {
                let unproven: Vec<String> = needed.iter().map(|s| s.to_string()).filter(|s| !self.proven.contains(s)).collect();
                self.missing.extend(unproven.iter().cloned());
                self.failed += 1;
                line(out, "MISSING", subject, what, &format!("needs {} (refused with 403)", unproven.join(", ")));
            }
            Err(e) => self.fail(out, subject, what, format!("{e} ({})", e.reason())),
        }
    }

    fn finish(self, mut out: String) -> Report {
        if !self.missing.is_empty() {
            let _ = writeln!(out, "Missing scopes: {}", self.missing.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        if self.failed == 0 {
            let _ = writeln!(out, "All checks passed.");
        } else {
            let _ = writeln!(out, "{} check(s) failed.", self.failed);
        }
        Report { text: out, ok: self.failed == 0 }
    }
}
