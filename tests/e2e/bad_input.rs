//! Bad input that only the operator can refuse (what the schema cannot know: what exists
//! in Bitbucket and in the cluster, what credentials are worth): each case must end in a
//! Ready=False condition whose reason names the cause and whose message says what is
//! wrong, and must not hammer Bitbucket while it stays wrong. The schema-level refusals
//! are in `validation.rs`.
//!
//! Every case has a `bitbucket-sim` of its own, so the requests it causes are counted in
//! isolation; one operator serves them all at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::{Env, SIM_CONFIG, Sim, tail};

/// Bitbucket requests one refused object may cause in its first minute (backoff, no loop).
const MAX_REQUESTS_PER_OBJECT_PER_MINUTE: u64 = 10;

struct Case {
    /// Short id; also the simulator's directory.
    id: &'static str,
    /// Objects of the case; `{url}` is its simulator.
    yaml: String,
    plural: &'static str,
    object: &'static str,
    reason: &'static str,
    fragments: Vec<String>,
    /// Operator-managed objects in the case (the request bound scales with it).
    objects: u64,
    /// The case's simulator config.
    sim_config: String,
}

fn ws(name: &str, slug: &str, secret: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {{name: {name}}}\nspec:\n  workspace: {slug}\n  apiURL: \"{{url}}/2.0\"\n  siteURL: \"{{url}}\"\n  auth: {{apiToken: {{secretRef: {{name: {secret}}}}}}}\n{extra}"
    )
}

fn key(name: &str, ws: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: {ws}}}\n{spec}"
    )
}

fn consumer(name: &str, ws: &str, creds: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: {ws}}}\n  consumerSecretRef: {{name: {creds}}}\n{spec}"
    )
}

fn secret(name: &str, data: &str) -> String {
    format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {data}\n")
}

fn cases(ns: &str) -> Vec<Case> {
    let good = |n: &str| ws(n, "acme", "bb-admin", "");
    let case = |id, yaml: String, plural, object, reason, fragments: &[&str], objects| Case {
        id,
        yaml,
        plural,
        object,
        reason,
        fragments: fragments.iter().map(|s| s.to_string()).collect(),
        objects,
        sim_config: SIM_CONFIG.to_string(),
    };
    vec![
        case(
            "repository-not-found",
            good("ws-repo") + &key("repo-missing", "ws-repo", "  repositories: [does-not-exist]\n"),
            "bitbucketaccesskeys",
            "repo-missing",
            "RepositoryNotFound",
            &["repository acme/does-not-exist not found"],
            2,
        ),
        case(
            "project-not-found",
            good("ws-proj") + &key("project-missing", "ws-proj", "  projects: [NOPE]\n"),
            "bitbucketaccesskeys",
            "project-missing",
            "ProjectNotFound",
            &["project acme/NOPE not found"],
            2,
        ),
        case(
            "workspace-object-not-found",
            key("no-ws", "nowhere", "  repositories: [api]\n"),
            "bitbucketaccesskeys",
            "no-ws",
            "WorkspaceNotFound",
            &["BitbucketWorkspace", "/nowhere not found"],
            1,
        ),
        // A mistyped workspace slug is only noticed by a token that may read workspaces:
        // without `read:workspace:bitbucket` the check gets a 403 and counts as verified.
        Case {
            sim_config: SIM_CONFIG.replacen("admin:project:bitbucket]", "admin:project:bitbucket, read:workspace:bitbucket]", 1),
            ..case(
                "workspace-not-in-bitbucket",
                ws("ws-ghost", "ghost", "bb-admin", ""),
                "bitbucketworkspaces",
                "ws-ghost",
                "WorkspaceNotFound",
                &["workspace ghost not found"],
                1,
            )
        },
        case(
            "auth-secret-missing",
            ws("ws-nosecret", "acme", "bb-missing", ""),
            "bitbucketworkspaces",
            "ws-nosecret",
            "SecretNotFound",
            &["bb-missing not found", "`email` and `token`"],
            1,
        ),
        case(
            "auth-secret-without-token",
            secret("bb-notoken", "{email: admin@acme.test}") + &ws("ws-notoken", "acme", "bb-notoken", ""),
            "bitbucketworkspaces",
            "ws-notoken",
            "SecretInvalid",
            &["bb-notoken lacks key token"],
            1,
        ),
        case(
            "wrong-api-token",
            secret("bb-wrong", "{email: admin@acme.test, token: tok-wrong-9876543210}") + &ws("ws-wrong", "acme", "bb-wrong", ""),
            "bitbucketworkspaces",
            "ws-wrong",
            "Unauthorized",
            &["rejected the credentials (401)"],
            1,
        ),
        case(
            "workspace-not-ready",
            secret("bb-wrong2", "{email: admin@acme.test, token: tok-wrong-9876543210}")
                + &ws("ws-wrong2", "acme", "bb-wrong2", "")
                + &key("on-unready", "ws-wrong2", "  repositories: [api]\n"),
            "bitbucketaccesskeys",
            "on-unready",
            "WorkspaceNotReady",
            &["ws-wrong2 is not Ready", "Unauthorized"],
            2,
        ),
        case(
            "repository-not-allowed",
            ws("ws-narrow", "acme", "bb-admin", "  allowedRepositories: [\"web*\"]\n")
                + &key("not-allowed", "ws-narrow", "  repositories: [web, api]\n"),
            "bitbucketaccesskeys",
            "not-allowed",
            "RepositoryNotAllowed",
            &["api is not allowed", "web*"],
            2,
        ),
        case(
            "token-lacks-write-scope",
            ws("ws-reader", "acme", "bb-reader", "") + &key("no-write", "ws-reader", "  repositories: [api]\n"),
            "bitbucketaccesskeys",
            "no-write",
            "Forbidden",
            &["(403)", "write:ssh-key:bitbucket"],
            2,
        ),
        case(
            "consumer-bad-secret",
            good("ws-oc1")
                + &secret("oc-bad-creds", "{key: ck-main, secret: cs-wrong-secret-5555}")
                + &consumer("bad-client", "ws-oc1", "oc-bad-creds", ""),
            "bitbucketoauthconsumers",
            "bad-client",
            "InvalidClient",
            &["invalid_client"],
            2,
        ),
        case(
            "consumer-secret-missing",
            good("ws-oc2") + &consumer("no-creds", "ws-oc2", "oc-missing", ""),
            "bitbucketoauthconsumers",
            "no-creds",
            "SecretNotFound",
            &[&format!("{ns}/oc-missing not found"), "`key` and `secret`"],
            2,
        ),
        case(
            "consumer-secret-incomplete",
            good("ws-oc3") + &secret("oc-half", "{key: ck-main}") + &consumer("half-creds", "ws-oc3", "oc-half", ""),
            "bitbucketoauthconsumers",
            "half-creds",
            "SecretInvalid",
            &["oc-half lacks key secret"],
            2,
        ),
        case(
            "access-key-secret-taken",
            good("ws-taken")
                + &secret("taken", "{mine: precious}")
                + &key("thief", "ws-taken", "  repositories: [api]\n  secret: {name: taken}\n"),
            "bitbucketaccesskeys",
            "thief",
            "SecretConflict",
            &[&format!("{ns}/taken exists and is not owned by this object")],
            2,
        ),
        case(
            "token-secret-taken",
            good("ws-taken2")
                + &secret("oc-creds", "{key: ck-main, secret: cs-main-secret-0123456789}")
                + &secret("taken-token", "{mine: precious}")
                + &consumer("token-thief", "ws-taken2", "oc-creds", "  secret: {name: taken-token}\n"),
            "bitbucketoauthconsumers",
            "token-thief",
            "SecretConflict",
            &[&format!("{ns}/taken-token exists and is not owned by this object")],
            2,
        ),
        case(
            "workspace-consumer-bad-secret",
            secret("ws-oc-bad", "{key: ck-main, secret: cs-wrong-secret-5555}")
                + "---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {name: ws-oauth-bad}\nspec:\n  workspace: acme\n  apiURL: \"{url}/2.0\"\n  siteURL: \"{url}\"\n  auth: {oauthConsumer: {secretRef: {name: ws-oc-bad}}}\n",
            "bitbucketworkspaces",
            "ws-oauth-bad",
            "InvalidClient",
            &["invalid_client"],
            1,
        ),
    ]
}

#[tokio::test]
async fn run_time_refusals_name_their_cause_and_back_off() {
    let mut env = Env::with("bad-input", SIM_CONFIG, &[]).await;
    env.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bb-admin}\nstringData: {email: admin@acme.test, token: tok-admin-0123456789}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: bb-reader}\nstringData: {email: reader@acme.test, token: tok-reader-0123456789}\n",
    )
    .await;
    let cases = cases(&env.ns);
    assert!(cases.len() >= 8);
    let mut sims: BTreeMap<&str, Sim> = BTreeMap::new();
    for c in &cases {
        let dir = env.dir.join(c.id);
        std::fs::create_dir_all(&dir).unwrap();
        sims.insert(c.id, Sim::start(&dir, &c.sim_config));
    }
    let urls: Vec<&str> = sims.values().map(|s| s.url.as_str()).collect();
    env.operator.restart_allowing(&urls);
    let foreign_before = (env.secret("taken").await, env.secret("taken-token").await);
    assert!(foreign_before.0.is_none() && foreign_before.1.is_none());
    let created = Instant::now();
    for c in &cases {
        env.apply(&c.yaml.replace("{url}", &sims[c.id].url)).await;
    }
    let foreign = [env.secret("taken").await.unwrap(), env.secret("taken-token").await.unwrap()];
    // Each case's requests in the first minute after its objects were created.
    let counters: Vec<(&'static str, String)> = cases.iter().map(|c| (c.id, sims[c.id].url.clone())).collect();
    let first_minute = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60).saturating_sub(created.elapsed())).await;
        let http = reqwest::Client::new();
        let mut made = BTreeMap::new();
        for (id, url) in counters {
            let v: serde_json::Value = http.get(format!("{url}/_sim/requests")).send().await.unwrap().json().await.unwrap();
            made.insert(id, v["total"].as_u64().unwrap_or(0));
        }
        (made, created.elapsed())
    });

    let mut failures = Vec::new();
    for c in &cases {
        let deadline = Instant::now() + Duration::from_secs(90);
        let got = loop {
            let got = env.ready(c.plural, c.object).await;
            if got.as_ref().is_some_and(|(_, r, _)| r == c.reason) || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        match got {
            Some((status, reason, message)) if reason == c.reason => {
                if status != "False" {
                    failures.push(format!("{}: Ready is {status}, expected False", c.id));
                }
                for f in &c.fragments {
                    if !message.contains(f.as_str()) {
                        failures.push(format!("{}: message lacks {f:?}: {message}", c.id));
                    }
                }
                eprintln!("refused as expected: {:<30} {:<20} {message}", c.id, reason);
            }
            other => failures.push(format!("{}: {} {} never had reason {}: {other:?}", c.id, c.plural, c.object, c.reason)),
        }
    }

    // The first minute of each case: Bitbucket requests stay few (backoff, no hot loop).
    let (first_minute, window) = first_minute.await.unwrap();
    let mut table = Vec::new();
    for c in &cases {
        let sim = &sims[c.id];
        let made = first_minute[c.id];
        let bound = MAX_REQUESTS_PER_OBJECT_PER_MINUTE * c.objects;
        table.push(format!("  {:<30} {:<20} {made:>3} requests (bound {bound})", c.id, c.reason));
        if made > bound {
            failures.push(format!(
                "{}: {made} Bitbucket requests in {window:?} (bound {bound}): {}",
                c.id,
                sim.requests().await["byEndpoint"]
            ));
        }
        let keys = sim.keys().await;
        if !keys.is_empty() {
            failures.push(format!("{}: a refused object left keys in Bitbucket: {keys:?}", c.id));
        }
    }
    eprintln!("Bitbucket requests per case in the first {window:?}:\n{}", table.join("\n"));

    // A Secret that belongs to someone else is never written.
    for s in &foreign {
        let name = s.metadata.name.clone().unwrap();
        let now = env.secret(&name).await.unwrap();
        if now.metadata.resource_version != s.metadata.resource_version || now.data != s.data {
            failures.push(format!("the foreign Secret {name} was written"));
        }
    }
    // What was refused stays refused: the conditions are still there after the minute.
    for c in &cases {
        if env.ready(c.plural, c.object).await.map(|(_, r, _)| r).as_deref() != Some(c.reason) {
            failures.push(format!("{}: reason changed: {:?}", c.id, env.ready(c.plural, c.object).await));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n--- operator log tail ---\n{}",
        failures.len(),
        failures.join("\n"),
        tail(&env.operator.logs(), 40)
    );
    env.assert_no_secret_leaked(&["tok-wrong-9876543210".into(), "cs-wrong-secret-5555".into()]).await;
}
