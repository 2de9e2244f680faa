//! `status NAME` and `rotate NAME`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::{CliError, ObjectKind, Report, relative, when, write_conditions};
use crate::api::{BitbucketAccessKey, BitbucketOAuthConsumer, ROTATE_ANNOTATION, WorkspaceRef, ready_condition};
use crate::controller::access_key::target_of;

pub(super) async fn status(client: &Client, ns: &str, name: &str, kind: Option<ObjectKind>, events: usize) -> Result<Report, CliError> {
    let keys: Api<BitbucketAccessKey> = Api::namespaced(client.clone(), ns);
    let consumers: Api<BitbucketOAuthConsumer> = Api::namespaced(client.clone(), ns);
    let key = if kind != Some(ObjectKind::OAuthConsumer) { keys.get_opt(name).await? } else { None };
    let mut out = String::new();
    let (uid, ok) = if let Some(k) = key {
        (k.uid(), access_key_status(&mut out, &k))
    } else if kind != Some(ObjectKind::AccessKey)
        && let Some(c) = consumers.get_opt(name).await?
    {
        (c.uid(), oauth_consumer_status(&mut out, &c))
    } else {
        let what = match kind {
            Some(ObjectKind::AccessKey) => "no BitbucketAccessKey",
            Some(ObjectKind::OAuthConsumer) => "no BitbucketOAuthConsumer",
            None => "no BitbucketAccessKey or BitbucketOAuthConsumer",
        };
        return Err(CliError::Failed(format!("{what} {name} in namespace {ns}")));
    };
    write_events(&mut out, client, ns, uid.as_deref(), events).await?;
    Ok(Report { text: out, ok })
}

/// `Kind namespace/name`, its workspace and its conditions.
fn header<K: Resource<DynamicType = ()>>(out: &mut String, obj: &K, ws: &WorkspaceRef, conditions: &[Condition]) {
    let _ = writeln!(out, "{} {}/{}", K::kind(&()), obj.namespace().unwrap_or_default(), obj.name_any());
    let _ = writeln!(out, "Workspace:       {:?} {}", ws.kind, ws.name);
    write_conditions(out, conditions);
}

/// `Label:          value`, `-` when there is none.
fn line(label: &str, value: Option<String>) -> String {
    format!("{label:<17}{}\n", value.unwrap_or_else(|| "-".into()))
}

fn access_key_status(out: &mut String, k: &BitbucketAccessKey) -> bool {
    let st = k.status.clone().unwrap_or_default();
    header(out, k, &k.spec.workspace_ref, &st.conditions);
    out.push_str(&line("Secret:", st.secret_name.clone()));
    let key = st.fingerprint.as_ref().map(|f| format!("{} {f}", st.key_type.map(|t| format!("{t:?}").to_lowercase()).unwrap_or_default()));
    out.push_str(&line("Key:", key));
    out.push_str(&line("Last rotation:", st.last_rotation_time.as_ref().map(when)));
    out.push_str(&line(
        "Next rotation:",
        Some(st.next_rotation_time.as_ref().map(when).unwrap_or_else(|| "none scheduled (no rotation.period)".into())),
    ));
    out.push_str(&line("Last verified:", st.last_verified_time.as_ref().map(when)));
    let _ = writeln!(out, "{}", if st.registrations.is_empty() { "Registrations:   none" } else { "Registrations:" });
    for r in &st.registrations {
        let _ = writeln!(out, "  {:<40} id {}", target_of(r).to_string(), r.id);
    }
    for retiring in &st.retiring_keys {
        let on: Vec<String> = retiring.registrations.iter().map(|r| target_of(r).to_string()).collect();
        let _ = writeln!(out, "Retiring key:    {} on {}, removed {}", retiring.fingerprint, on.join(", "), when(&retiring.remove_after));
    }
    ready_condition(&st.conditions).is_some_and(|c| c.status == "True")
}

fn oauth_consumer_status(out: &mut String, c: &BitbucketOAuthConsumer) -> bool {
    let st = c.status.clone().unwrap_or_default();
    header(out, c, &c.spec.workspace_ref, &st.conditions);
    out.push_str(&line("Secret:", st.secret_name.clone()));
    out.push_str(&line("Token expires:", st.expires_at.as_ref().map(when)));
    out.push_str(&line("Renewal:", st.renewal_time.as_ref().map(when)));
    out.push_str(&line("Scopes:", (!st.scopes.is_empty()).then(|| st.scopes.join(" "))));
    ready_condition(&st.conditions).is_some_and(|c| c.status == "True")
}

/// The object's latest events, oldest first, as `kubectl describe` shows them.
async fn write_events(out: &mut String, client: &Client, ns: &str, uid: Option<&str>, n: usize) -> Result<(), CliError> {
    if n == 0 {
        return Ok(());
    }
    let Some(uid) = uid else { return Ok(()) };
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list = events.list(&ListParams::default().fields(&format!("involvedObject.uid={uid}"))).await?.items;
    let at = |e: &Event| {
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or_default()
    };
    list.sort_by_key(at);
    let _ = writeln!(out, "{}", if list.is_empty() { "Events:          none" } else { "Events:" });
    for e in list.iter().skip(list.len().saturating_sub(n)) {
        let count = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1);
        let times = if count > 1 { format!(" (x{count})") } else { String::new() };
        let _ = writeln!(
            out,
            "  {:<10} {:<8} {:<24} {}{times}",
            relative(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(e))),
            e.type_.as_deref().unwrap_or("Normal"),
            e.reason.as_deref().unwrap_or_default(),
            e.message.as_deref().unwrap_or_default(),
        );
    }
    Ok(())
}

/// Sets the rotate annotation to a new value; with `wait`, waits until the operator has
/// acted on it: the new key in the Secret, registered everywhere, Ready.
pub(super) async fn rotate(client: &Client, ns: &str, name: &str, wait: Option<Duration>) -> Result<Report, CliError> {
    let keys: Api<BitbucketAccessKey> = Api::namespaced(client.clone(), ns);
    let Some(before) = keys.get_opt(name).await? else {
        let consumers: Api<BitbucketOAuthConsumer> = Api::namespaced(client.clone(), ns);
        if consumers.get_opt(name).await?.is_some() {
            return Err(CliError::Failed(format!(
                "{name} is a BitbucketOAuthConsumer: its tokens are renewed before they expire, and at once when its consumer Secret changes; rotate the consumer's secret in Bitbucket and update that Secret"
            )));
        }
        return Err(CliError::Failed(format!("no BitbucketAccessKey {name} in namespace {ns}")));
    };
    let request = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: request}}});
    keys.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    let mut out = format!("BitbucketAccessKey {ns}/{name}: rotation requested ({ROTATE_ANNOTATION}={request})\n");
    let Some(timeout) = wait else { return Ok(Report { text: out, ok: true }) };
    let old = before.status.and_then(|s| s.fingerprint);
    let deadline = Instant::now() + timeout;
    loop {
        let now = keys.get(name).await?;
        let st = now.status.unwrap_or_default();
        let ready = ready_condition(&st.conditions);
        let acted = st.rotate_request.as_deref() == Some(request.as_str()) && st.fingerprint.is_some() && st.fingerprint != old;
        if acted && let Some(c) = ready.filter(|c| c.status == "True") {
            let fingerprint = st.fingerprint.as_deref().unwrap_or_default();
            let _ = writeln!(out, "new key {fingerprint} registered on {} targets ({})", st.registrations.len(), c.reason);
            for k in &st.retiring_keys {
                let _ = writeln!(out, "previous key {} stays registered until {}", k.fingerprint, when(&k.remove_after));
            }
            return Ok(Report { text: out, ok: true });
        }
        if Instant::now() >= deadline {
            let why =
                ready.map(|c| format!("Ready={} {}: {}", c.status, c.reason, c.message)).unwrap_or_else(|| "no Ready condition".into());
            return Err(CliError::Failed(format!("{out}the rotation did not finish within {}s: {why}", timeout.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
