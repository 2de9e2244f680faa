//! `BitbucketOAuthConsumer`: short-lived access tokens minted with client_credentials and
//! kept fresh in a Secret, so CI pods never see the consumer's key and secret.
//!
//! The token in the output Secret is the state: a restart finds it there and mints nothing
//! until the renewal time; a failed renewal leaves the last good token in place.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use ssh_key::HashAlg;

use super::workspace::resolve;
use super::{Context, Error, FIELD_MANAGER, Result, condition, set_condition};
use crate::api::{BitbucketOAuthConsumer, OAuthConsumerStatus};
use crate::bitbucket::Auth;
use crate::metrics::METRICS;
use crate::secret::{HttpsTarget, Placement, TOKEN_USERNAME, has_stale_fields, token_secret, up_to_date};
use crate::sensitive::SecretString;

const CONTROLLER: &str = "oauthconsumer";
/// Label the operator puts on a consumer Secret so that a change to it (an admin rotating
/// the consumer's secret) reaches the operator at once.
pub(crate) const CONSUMER_LABEL: &str = "bitbucket.credentials.dev/oauth-consumer-secret";
const KEYS: &str = "`key` and `secret`";

pub(crate) async fn reconcile(obj: Arc<BitbucketOAuthConsumer>, ctx: Arc<Context>) -> Result<Action> {
    super::reconcile(obj, ctx, |obj, ctx| async move {
        if obj.meta().deletion_timestamp.is_some() {
            METRICS.forget_object(&super::object_labels(&*obj));
            return Ok(Action::await_change());
        }
        apply(&obj, &ctx).await
    })
    .await
}

impl super::Reconciled for BitbucketOAuthConsumer {
    const CONTROLLER: &'static str = CONTROLLER;

    fn slot(&self) -> Option<String> {
        let deleted = self.meta().deletion_timestamp.is_some();
        (!deleted).then(|| super::workspace_key(CONTROLLER, &self.namespace().unwrap_or_default(), &self.spec.workspace_ref))
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    /// Ready=False, or Degraded while the last token is still valid and the failure is
    /// Bitbucket's own: that token stays in place until it expires.
    async fn record_failure(&self, ctx: &Context, error: &Error, delay: Duration) -> Result<bool> {
        let mut status = self.status.clone().unwrap_or_default();
        let valid = status.expires_at.as_ref().is_some_and(|t| super::seconds_until(t) > 0);
        let kept = if valid { "; the last token stays in place until it expires" } else { "" };
        let message = super::failure_message(error, delay, kept);
        let changed = super::record_failure(&mut status.conditions, error, message, self.metadata.generation, valid);
        super::patch_status(self, ctx, &status).await?;
        Ok(changed)
    }
}

/// A short digest of the consumer credentials, to notice a rotated secret. Not reversible.
fn revision(key: &str, secret: &SecretString) -> String {
    let digest = HashAlg::Sha256.digest(format!("{key}\n{}", secret.expose()).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The bounds of `refreshBefore`, enforced here too (objects stored before the CRD had them).
pub(crate) const MAX_REFRESH_BEFORE: Duration = Duration::from_secs(24 * 3600);
/// The soonest a token is renewed (or half its life, if shorter): a token endpoint
/// answering `expires_in: 0` must not make the operator mint in a loop.
pub(crate) const MIN_RENEWAL: Duration = Duration::from_secs(30);

/// When to renew a token that lives `lifetime`: `refresh_before` ahead of its expiry, a
/// little earlier by a random amount so that many consumers spread out; at half-life if
/// `refresh_before` is longer than the token lives; never sooner than `MIN_RENEWAL` or
/// half its life, whichever is shorter.
pub(crate) fn renewal_delay(lifetime: Duration, refresh_before: Duration) -> Duration {
    let base = lifetime.checked_sub(refresh_before).filter(|d| !d.is_zero()).unwrap_or(lifetime / 2);
    let spread = (base / 10).min(Duration::from_secs(300));
    let spread = Duration::try_from_secs_f64(spread.as_secs_f64() * rand::thread_rng().gen_range(0.0..1.0)).unwrap_or_default();
    // A token that lives at least a couple of seconds is renewed within its life; one
    // that is dead on arrival (0 or 1 s) is not worth minting again and again.
    let floor = if lifetime < Duration::from_secs(2) { MIN_RENEWAL } else { MIN_RENEWAL.min(lifetime / 2) };
    base.saturating_sub(spread).max(floor)
}

pub(crate) fn refresh_before(spec: &crate::api::BitbucketOAuthConsumerSpec) -> Duration {
    super::bounded_duration(&spec.refresh_before, Duration::ZERO, MAX_REFRESH_BEFORE).unwrap_or(Duration::from_secs(900))
}

/// `scheme://host[:port]` of the site, where git clones over HTTPS (`https://bitbucket.org`).
fn git_origin(site_url: &str) -> String {
    url::Url::parse(site_url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            })
        })
        .unwrap_or_else(|| "https://bitbucket.org".into())
}

fn read_token(secret: &Secret) -> Option<SecretString> {
    let data = secret.data.as_ref()?;
    let raw = data.get("token").or_else(|| data.get("password")).map(|b| b.0.clone()).or_else(|| {
        let line = String::from_utf8(data.get(".git-credentials")?.0.clone()).ok()?;
        let rest = line.trim().split_once(&format!("{TOKEN_USERNAME}:"))?.1.to_string();
        Some(rest.rsplit_once('@')?.0.as_bytes().to_vec())
    })?;
    SecretString::from_bytes(&raw).filter(|t| !t.expose().is_empty())
}

/// What a reconcile observed: status as stored, the consumer's credentials and the token
/// the output Secret holds.
struct Observed {
    status: OAuthConsumerStatus,
    /// A digest of the consumer's key and secret (see `revision`).
    revision: String,
    /// Whether the consumer Secret carries `CONSUMER_LABEL` (its changes wake the object).
    labelled: bool,
    token: Option<SecretString>,
}

/// One thing a reconcile does.
#[derive(Debug, PartialEq)]
enum Step {
    LabelConsumerSecret,
    /// A new token from the token endpoint, recorded in status.
    Mint,
    /// The output Secret as it should be (written only if it is not so).
    SyncSecret,
    /// Ready with the token's expiry, stored if status changed.
    SaveStatus,
}

/// Whether status says the token is due for renewal at `now`, or was minted with other
/// consumer credentials than `revision`.
fn renewal_due(st: &OAuthConsumerStatus, revision: &str, now: jiff::Timestamp) -> bool {
    let due = st.renewal_time.as_ref().is_none_or(|t| t.0.as_second() <= now.as_second());
    due || st.consumer_revision.as_deref() != Some(revision)
}

/// What to do, from what was observed at `now`: a token is minted only when the Secret
/// has none or status says it is due (the token in the Secret is the state).
fn plan(obs: &Observed, now: jiff::Timestamp) -> Vec<Step> {
    let mut steps = Vec::new();
    if !obs.labelled {
        steps.push(Step::LabelConsumerSecret);
    }
    if obs.token.is_none() || renewal_due(&obs.status, &obs.revision, now) {
        steps.push(Step::Mint);
    }
    steps.extend([Step::SyncSecret, Step::SaveStatus]);
    steps
}

/// The consumer's key and secret, from a Secret in the object's own namespace only.
struct Consumer {
    key: String,
    secret: SecretString,
    labelled: bool,
}

async fn read_consumer(obj: &BitbucketOAuthConsumer, secrets: &Api<Secret>) -> Result<Consumer> {
    let ns = obj.namespace().unwrap_or_default();
    let name = &obj.spec.consumer_secret_ref.name;
    let consumer =
        secrets.get_opt(name).await?.ok_or_else(|| Error::AuthSecretNotFound { namespace: ns.clone(), name: name.clone(), keys: KEYS })?;
    let field = |k: &str| {
        consumer
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| SecretString::from_bytes(&v.0))
            .map(|s| SecretString::new(s.expose().trim()))
            .filter(|s| !s.expose().is_empty())
            .ok_or_else(|| Error::AuthSecretInvalid { namespace: ns.clone(), name: name.clone(), key: k.into(), keys: KEYS })
    };
    let (key, secret) = (field("key")?.expose().to_string(), field("secret")?);
    Ok(Consumer { key, secret, labelled: consumer.labels().contains_key(CONSUMER_LABEL) })
}

/// One reconcile: observed, planned, then done step by step.
async fn apply(obj: &BitbucketOAuthConsumer, ctx: &Context) -> Result<Action> {
    let ns = obj.namespace().unwrap_or_default();
    let ws = resolve(ctx, &ns, &obj.spec.workspace_ref).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let consumer = read_consumer(obj, &secrets).await?;
    let out_name = obj.spec.secret.name.clone().unwrap_or_else(|| obj.name_any());
    let existing = secrets.get_opt(&out_name).await?;
    if let Some(s) = &existing
        && !super::owned_by(s, &obj.uid().unwrap_or_default())
    {
        return Err(Error::SecretConflict(format!("{ns}/{out_name}")));
    }
    let revision = revision(&consumer.key, &consumer.secret);
    let mut observed = Observed {
        status: obj.status.clone().unwrap_or_default(),
        labelled: consumer.labelled,
        token: existing.as_ref().and_then(read_token),
        revision,
    };
    let now = jiff::Timestamp::now();
    // The object in the cache may predate the status written with the token now in the
    // Secret (that reconcile's own writes wake the object again): before minting another,
    // the status as stored.
    if plan(&observed, now).contains(&Step::Mint) && observed.token.is_some() {
        let stored = Api::<BitbucketOAuthConsumer>::namespaced(ctx.client.clone(), &ns).get(&obj.name_any()).await?;
        observed.status = stored.status.unwrap_or(observed.status);
    }
    let steps = plan(&observed, now);
    let mut run =
        Run { obj, ctx, ws: &ws, secrets, consumer, out_name, existing, st: observed.status.clone(), token: observed.token.clone() };
    for step in steps {
        run.act(step, &observed).await?;
    }
    let st = run.st;
    if let Some(t) = &st.expires_at {
        METRICS.seconds_until_deadline.get_or_create(&super::object_labels(obj)).set(super::seconds_until(t));
        METRICS.expiration_timestamp.get_or_create(&super::object_labels(obj)).set(crate::metrics::unix(t) as i64);
    }
    let next = st.renewal_time.as_ref().map(|t: &Time| super::seconds_until(t).max(1).unsigned_abs()).unwrap_or(60);
    Ok(super::requeue(Duration::from_secs(next)))
}

/// The executor of a consumer's plan: what the steps so far did.
struct Run<'a> {
    obj: &'a BitbucketOAuthConsumer,
    ctx: &'a Context,
    ws: &'a super::workspace::Resolved,
    secrets: Api<Secret>,
    consumer: Consumer,
    out_name: String,
    existing: Option<Secret>,
    st: OAuthConsumerStatus,
    token: Option<SecretString>,
}

impl Run<'_> {
    async fn act(&mut self, step: Step, observed: &Observed) -> Result<()> {
        match step {
            Step::LabelConsumerSecret => {
                let patch = json!({"metadata": {"labels": {CONSUMER_LABEL: "true"}}});
                self.secrets.patch(&self.obj.spec.consumer_secret_ref.name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            Step::Mint => self.mint(&observed.revision).await?,
            Step::SyncSecret => self.sync_secret().await?,
            Step::SaveStatus => self.save_status(&observed.status).await?,
        }
        Ok(())
    }

    /// The consumer's own credential, keyed like any other by its secret and the
    /// workspace's URLs: its token is never another consumer object's, and its secret
    /// goes only to the workspace's (allowed) site.
    async fn mint(&mut self, revision: &str) -> Result<()> {
        let key = self.consumer.key.clone();
        let wrap = |e| Error::bitbucket(format!("OAuth consumer {key}"), e);
        let workspace_credential = self.ws.client.credential();
        let auth = Auth::OAuthConsumer { key: key.clone(), secret: self.consumer.secret.clone() };
        let credential = self
            .ctx
            .bitbucket
            .credential(workspace_credential.api_url(), workspace_credential.site_url(), &auth, workspace_credential.limiter_budget())
            .map_err(wrap)?;
        let minted = self.ctx.bitbucket.mint_token(&credential).await.map_err(wrap)?;
        let lifetime = minted.expires_in;
        self.st.expires_at = Some(super::time_after(lifetime));
        self.st.renewal_time = Some(super::time_after(renewal_delay(lifetime, refresh_before(&self.obj.spec))));
        self.st.scopes = minted.scopes.clone();
        self.st.consumer_revision = Some(revision.to_string());
        self.ctx.event(self.obj, false, "TokenIssued", format!("new access token, valid for {}s", lifetime.as_secs())).await;
        self.token = Some(minted.access_token);
        Ok(())
    }

    async fn sync_secret(&mut self) -> Result<()> {
        let (obj, ns) = (self.obj, self.obj.namespace().unwrap_or_default());
        let Some(token) = &self.token else { return Err(Error::Internal("no token to write".into())) };
        let owner = obj.controller_owner_ref(&()).expect("a stored object has a name and uid");
        let origin = git_origin(&self.ws.site_url);
        let at = Placement { name: &self.out_name, namespace: &ns, owner, user: &obj.spec.secret.metadata };
        let target =
            HttpsTarget { origin: &origin, workspace: &self.ws.workspace, argocd_project: obj.spec.secret.argocd_project.as_deref() };
        let desired = token_secret(at, &obj.spec.secret.formats, token.expose(), &target);
        let existing = self.existing.as_ref();
        if existing.is_some_and(|s| up_to_date(s, &desired) && !has_stale_fields(s, &desired, FIELD_MANAGER)) {
            return Ok(());
        }
        if existing.is_some_and(|s| s.type_ != desired.type_) {
            // A Secret's type cannot change: replace it.
            self.secrets.delete(&self.out_name, &Default::default()).await?;
        }
        super::apply_secret(self.ctx, &self.secrets, &desired).await?;
        self.existing = Some(desired);
        Ok(())
    }

    async fn save_status(&mut self, observed: &OAuthConsumerStatus) -> Result<()> {
        let generation = self.obj.metadata.generation;
        let st = &mut self.st;
        st.secret_name = Some(self.out_name.clone());
        st.observed_generation = generation;
        let expires = st.expires_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let ready = condition(&st.conditions, "Ready", true, "TokenIssued", format!("access token valid until {expires}"), generation);
        set_condition(&mut st.conditions, ready);
        super::clear_degraded(&mut st.conditions);
        if *st != *observed {
            super::patch_status(self.obj, self.ctx, st).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TokenFormat;

    #[test]
    fn a_token_is_minted_only_when_the_secret_has_none_or_status_says_it_is_due() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        let status =
            OAuthConsumerStatus { renewal_time: Some(at(1_800_000_600)), consumer_revision: Some("r1".into()), ..Default::default() };
        let obs = |token: bool, status: &OAuthConsumerStatus, revision: &str, labelled: bool| Observed {
            status: status.clone(),
            revision: revision.into(),
            labelled,
            token: token.then(|| SecretString::new("tok")),
        };
        let fresh = [Step::SyncSecret, Step::SaveStatus];
        assert_eq!(plan(&obs(true, &status, "r1", true), now), fresh, "a valid token is kept (a restart mints nothing)");
        let mint = [Step::Mint, Step::SyncSecret, Step::SaveStatus];
        assert_eq!(plan(&obs(false, &status, "r1", true), now), mint, "the Secret lost its token");
        assert_eq!(plan(&obs(true, &status, "r2", true), now), mint, "the consumer's secret was rotated");
        let due = OAuthConsumerStatus { renewal_time: Some(at(1_800_000_000)), ..status.clone() };
        assert_eq!(plan(&obs(true, &due, "r1", true), now), mint, "renewal time reached");
        assert_eq!(plan(&obs(true, &OAuthConsumerStatus::default(), "r1", true), now), mint, "no status: nothing says the token is good");
        assert_eq!(plan(&obs(true, &status, "r1", false), now)[0], Step::LabelConsumerSecret, "the consumer Secret is labelled first");
    }

    #[test]
    fn renewal_comes_before_refresh_before_with_spread() {
        for _ in 0..100 {
            let d = renewal_delay(Duration::from_secs(7200), Duration::from_secs(900));
            assert!(d <= Duration::from_secs(6300) && d >= Duration::from_secs(6000), "{d:?}");
        }
        let d = renewal_delay(Duration::from_secs(120), Duration::from_secs(900));
        assert!(d <= Duration::from_secs(60) && d >= MIN_RENEWAL, "{d:?}");
        // A 12 s token with refreshBefore 6 s is renewed within its life.
        let d = renewal_delay(Duration::from_secs(12), Duration::from_secs(6));
        assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(6), "{d:?}");
        for lifetime in [Duration::ZERO, Duration::from_secs(1)] {
            for before in [Duration::ZERO, Duration::from_secs(900), Duration::MAX] {
                assert!(renewal_delay(lifetime, before) >= MIN_RENEWAL);
            }
        }
        assert!(renewal_delay(Duration::MAX, Duration::ZERO) >= MIN_RENEWAL);
    }

    #[test]
    fn the_token_reads_back_from_any_format() {
        let user = Default::default();
        let at = || Placement { name: "n", namespace: "ns", owner: Default::default(), user: &user };
        let target = HttpsTarget { origin: "https://bitbucket.org", workspace: "acme", argocd_project: None };
        let s = token_secret(at(), &[TokenFormat::GitCredentials], "tok123", &target);
        assert_eq!(read_token(&s).unwrap().expose(), "tok123");
        let s = token_secret(at(), &[TokenFormat::BasicAuth], "tok456", &target);
        assert_eq!(read_token(&s).unwrap().expose(), "tok456");
        let s = token_secret(at(), &[TokenFormat::Argocd], "tok789", &target);
        assert_eq!(read_token(&s).unwrap().expose(), "tok789");
    }

    #[test]
    fn the_argocd_layout_is_https_repo_creds_with_an_optional_project() {
        let user = Default::default();
        let at = Placement { name: "n", namespace: "ns", owner: Default::default(), user: &user };
        let target = HttpsTarget { origin: "https://bitbucket.org", workspace: "acme", argocd_project: Some("team-a") };
        let s = token_secret(at, &[TokenFormat::Argocd], "tok", &target);
        let data = s.data.unwrap();
        let field = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(s.metadata.labels.unwrap()["argocd.argoproj.io/secret-type"], "repo-creds");
        assert_eq!(
            (field("url"), field("username"), field("password"), field("type"), field("project")),
            ("https://bitbucket.org/acme/".into(), "x-token-auth".into(), "tok".into(), "git".into(), "team-a".into())
        );
    }

    proptest::proptest! {
        #[test]
        fn reading_a_token_back_from_any_secret_never_panics(
            token in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
            creds in proptest::option::of(".*"),
        ) {
            let mut data = std::collections::BTreeMap::new();
            if let Some(t) = token {
                data.insert("token".to_string(), k8s_openapi::ByteString(t));
            }
            if let Some(c) = creds {
                data.insert(".git-credentials".to_string(), k8s_openapi::ByteString(c.into_bytes()));
            }
            let _ = read_token(&Secret { data: Some(data), ..Default::default() });
        }
    }
}
