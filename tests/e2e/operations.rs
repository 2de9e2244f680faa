//! Day-2 operations of the binary: metrics, health, leader election.

use std::time::Duration;

use crate::network::{ConnectProxy, TlsFront};
use crate::support::{Env, Operator, allowing, eventually, series, workspace_yaml};

#[tokio::test]
async fn metrics_and_readiness_are_served() {
    let env = Env::new("ops-metrics").await;
    env.workspace().await;
    env.apply("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: ci}\nspec:\n  workspaceRef: {name: acme}\n  repositories: [api]\n  rotation: {period: 24h}\n").await;
    env.wait_ready("bitbucketaccesskeys", "ci", Duration::from_secs(60)).await;
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", env.operator.health_port)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let healthy = reqwest::get(format!("http://127.0.0.1:{}/healthz", env.operator.health_port)).await.unwrap();
    assert_eq!(healthy.status(), 200);
    let m = env.operator.metrics().await;
    for name in [
        "bitbucket_credentials_operator_reconciles_total",
        "bitbucket_credentials_operator_reconcile_duration_seconds_bucket",
        "bitbucket_credentials_operator_bitbucket_requests_total{operation=\"repository_key_create\",status=\"200\"}",
        // A short digest, never the account's email or a consumer key.
        "bitbucket_credentials_operator_rate_budget_remaining{credential=\"api-token:",
        "bitbucket_credentials_operator_seconds_until_deadline{kind=\"BitbucketAccessKey\"",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
    assert!(!m.contains("admin@acme.test"), "an account's email in the metrics:\n{m}");
    env.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn a_second_replica_takes_over_when_the_leader_dies() {
    let env = Env::new("ops-leader").await;
    env.workspace().await;
    let mut leader = env.operator;
    leader.kill();
    let leader_args = ["--leader-elect"];
    let mut a = Operator::start(&env.dir.join("a"), &env.ns, &leader_args, allowing(&[&env.sim.url]));
    std::fs::create_dir_all(env.dir.join("b")).unwrap();
    let mut b = Operator::start(&env.dir.join("b"), &env.ns, &leader_args, allowing(&[&env.sim.url]));
    let _ = &mut leader;
    let a_leads = eventually("one replica leads", Duration::from_secs(40), || {
        let (la, lb) = (a.logs(), b.logs());
        async move {
            match (la.contains("acquired leadership"), lb.contains("acquired leadership")) {
                (true, false) => Some(true),
                (false, true) => Some(false),
                _ => None,
            }
        }
    })
    .await;
    let (first, second) = if a_leads { (&mut a, &mut b) } else { (&mut b, &mut a) };
    // Only one replica writes: the follower never starts its controllers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!second.logs().contains("starting controllers"), "the follower must not reconcile");
    first.kill();
    eventually("the follower takes over", Duration::from_secs(60), || {
        let l = second.logs();
        async move { l.contains("acquired leadership").then_some(()) }
    })
    .await;
}

/// A standby replica is Ready (so that `replicas: 2` and rolling updates trip no alert),
/// and a leader that is stopped the way the kubelet stops a pod gives the lease up: the
/// standby leads within seconds, not after the 15 s lease expires.
#[tokio::test]
async fn a_standby_is_ready_and_a_stopped_leader_hands_over_at_once() {
    let mut env = Env::new("ops-handover").await;
    env.workspace().await;
    env.operator.kill();
    let args = ["--leader-elect"];
    let mut a = Operator::start(&env.dir.join("a"), &env.ns, &args, allowing(&[&env.sim.url]));
    let mut b = Operator::start(&env.dir.join("b"), &env.ns, &args, allowing(&[&env.sim.url]));
    let a_leads =
        eventually("one replica leads", Duration::from_secs(40), || {
            let (la, lb) = (a.logs(), b.logs());
            async move {
                (la.contains("acquired leadership") != lb.contains("acquired leadership")).then_some(la.contains("acquired leadership"))
            }
        })
        .await;
    let (leader, standby) = if a_leads { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let readyz = |port: u16| async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.ok()?;
        Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
    };
    let (status, body) = eventually("the standby answers /readyz", Duration::from_secs(20), || readyz(standby.health_port)).await;
    assert_eq!(status, 200, "a standby replica must be Ready: {body}");
    assert!(body.contains("standby"), "{body}");
    eventually("the leader is Ready", Duration::from_secs(30), || async {
        readyz(leader.health_port).await.filter(|(s, _)| *s == 200).map(|_| ())
    })
    .await;
    let stopped = std::time::Instant::now();
    assert!(leader.terminate(Duration::from_secs(30)), "the leader must exit on SIGTERM");
    assert!(leader.logs().contains("released leadership"), "{}", crate::support::tail(&leader.logs(), 20));
    eventually("the standby takes over", Duration::from_secs(30), || {
        let l = standby.logs();
        async move { l.contains("acquired leadership").then_some(()) }
    })
    .await;
    let handover = stopped.elapsed();
    eprintln!("handover after SIGTERM: {handover:?}");
    assert!(handover < Duration::from_secs(10), "the lease was not released: the standby waited {handover:?}");
    // And the new leader reconciles.
    env.apply("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: after}\nspec:\n  workspaceRef: {name: acme}\n  repositories: [api]\n").await;
    env.wait_ready("bitbucketaccesskeys", "after", Duration::from_secs(60)).await;
}

/// Per-object series that stay true while nothing is reconciled: absolute times and a
/// ready gauge; they go with the object.
#[tokio::test]
async fn each_object_has_a_ready_gauge_and_absolute_timestamps() {
    let env = Env::new("ops-object-metrics").await;
    env.workspace().await;
    env.apply("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: ci}\nspec:\n  workspaceRef: {name: acme}\n  repositories: [api]\n  rotation: {period: 24h}\n").await;
    env.apply("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: broken}\nspec:\n  workspaceRef: {name: acme}\n  repositories: [does-not-exist]\n").await;
    env.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: tok-creds}\nstringData: {key: ck-main, secret: cs-main-secret-0123456789}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {name: tok}\nspec:\n  workspaceRef: {name: acme}\n  consumerSecretRef: {name: tok-creds}\n").await;
    env.wait_ready("bitbucketaccesskeys", "ci", Duration::from_secs(60)).await;
    env.wait_ready("bitbucketoauthconsumers", "tok", Duration::from_secs(60)).await;
    env.wait_reason("bitbucketaccesskeys", "broken", "RepositoryNotFound", Duration::from_secs(60)).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let m = env.operator.metrics().await;
    let ns = &env.ns;
    let p = "bitbucket_credentials_operator_";
    let key = format!("{{kind=\"BitbucketAccessKey\",namespace=\"{ns}\",name=\"ci\"}}");
    let broken = format!("{{kind=\"BitbucketAccessKey\",namespace=\"{ns}\",name=\"broken\"}}");
    let tok = format!("{{kind=\"BitbucketOAuthConsumer\",namespace=\"{ns}\",name=\"tok\"}}");
    assert_eq!(series(&m, &format!("{p}ready_status{key}")), Some(1.0), "{m}");
    assert_eq!(series(&m, &format!("{p}ready_status{broken}")), Some(0.0), "{m}");
    assert_eq!(series(&m, &format!("{p}ready_status{tok}")), Some(1.0), "{m}");
    let success = series(&m, &format!("{p}last_success_timestamp_seconds{key}")).expect("last success");
    assert!((now - success).abs() < 120.0, "{success} vs {now}");
    let rotation = series(&m, &format!("{p}next_rotation_timestamp_seconds{key}")).expect("next rotation");
    assert!((rotation - (now + 86400.0)).abs() < 120.0, "in 24 h: {rotation} vs {now}");
    let expiry = series(&m, &format!("{p}expiration_timestamp_seconds{tok}")).expect("token expiry");
    assert!(expiry > now + 3000.0 && expiry < now + 7300.0, "the simulator's tokens live 2 h: {expiry} vs {now}");
    assert!(series(&m, &format!("{p}last_success_timestamp_seconds{broken}")).is_none(), "never succeeded");
    assert!(m.contains(&format!("{p}build_info{{version=\"")), "{m}");
    // Gone with the object.
    env.api("bitbucketaccesskeys").delete("ci", &Default::default()).await.unwrap();
    eventually("the object's series are gone", Duration::from_secs(60), || async {
        let m = env.operator.metrics().await;
        (!m.contains(&format!("{p}ready_status{key}")) && !m.contains(&format!("{p}next_rotation_timestamp_seconds{key}"))).then_some(())
    })
    .await;
}

/// Behind a TLS-inspecting proxy Bitbucket's certificate is signed by the proxy's CA: the
/// operator refuses it until --ca-bundle names that CA, and its requests go through
/// HTTPS_PROXY when that is set.
#[tokio::test]
async fn a_ca_bundle_and_https_proxy_reach_bitbucket_behind_a_tls_inspecting_proxy() {
    let mut env = Env::new("ops-tls").await;
    env.operator.kill();
    let front = TlsFront::start(&env.dir, &env.sim.url).await;
    let proxy = ConnectProxy::start().await;
    env.apply(&workspace_yaml(&front.url, "")).await;

    let mut refusing = Operator::start(&env.dir.join("no-bundle"), &env.ns, &[], allowing(&[&front.url]));
    let (_, reason, message) = eventually("the workspace fails on the unknown CA", Duration::from_secs(60), || async {
        env.ready("bitbucketworkspaces", "acme").await.filter(|(s, _, _)| s == "False")
    })
    .await;
    assert_eq!(reason, "BitbucketUnreachable", "{message}");
    assert!(message.to_lowercase().contains("certificate"), "the message must name the certificate problem: {message}");
    refusing.terminate(Duration::from_secs(10));

    let mut envs = allowing(&[&front.url]);
    envs.push(("BCO_CA_BUNDLE".into(), front.ca.display().to_string()));
    envs.push(("HTTPS_PROXY".into(), proxy.url.clone()));
    // The API server is reached directly, as NO_PROXY says.
    envs.push(("NO_PROXY".into(), "127.0.0.1".into()));
    let trusting = Operator::start(&env.dir.join("bundle"), &env.ns, &[], envs);
    env.wait_ready("bitbucketworkspaces", "acme", Duration::from_secs(60)).await;
    assert!(trusting.logs().contains("trusting extra CA certificates"), "{}", trusting.logs());
    let tunnels = proxy.tunnels.lock().unwrap().clone();
    let port = front.url.rsplit(':').next().unwrap();
    assert!(tunnels.iter().any(|t| t == &format!("localhost:{port}")), "requests to Bitbucket must use HTTPS_PROXY: {tunnels:?}");
    assert!(tunnels.iter().all(|t| t.starts_with("localhost:")), "the API server must be reached directly: {tunnels:?}");
}

/// `/readyz` waits for the first list of every cache: an operator that may not list one of
/// its kinds is not Ready while the others work, and is Ready once it may.
#[tokio::test]
async fn not_ready_until_every_cache_has_its_first_list() {
    use crate::support::{cluster, kubectl, kubectl_stdin};
    let mut env = Env::new("ops-ready").await;
    let kc = &cluster().kubeconfig;
    let mut role = format!("bco-{}", env.ns);
    role.truncate(63);
    let role = role.trim_end_matches('-').to_string();
    let out = kubectl(kc, &["get", "clusterrole", &role, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut original: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    original["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let mut without = original.clone();
    for rule in without["rules"].as_array_mut().unwrap() {
        rule["resources"].as_array_mut().unwrap().retain(|r| r != "bitbucketoauthconsumers");
    }
    without["rules"].as_array_mut().unwrap().retain(|r| !r["resources"].as_array().unwrap().is_empty());
    let (ok, err) = kubectl_stdin(kc, &["replace", "-f", "-"], &without.to_string());
    assert!(ok, "{err}");
    env.operator.kill();
    env.operator.restart();
    env.workspace().await;
    env.apply("apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {name: ci}\nspec:\n  workspaceRef: {name: acme}\n  repositories: [api]\n").await;
    env.wait_ready("bitbucketaccesskeys", "ci", Duration::from_secs(60)).await;
    let readyz = |port: u16| async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    };
    let port = env.operator.health_port;
    assert_eq!(readyz(port).await, Some((503, "watches not synced".to_string())), "Ready without a cache of OAuth consumers");
    let (ok, err) = kubectl_stdin(kc, &["replace", "-f", "-"], &original.to_string());
    assert!(ok, "{err}");
    eventually("Ready once the consumers can be listed", Duration::from_secs(90), || async {
        readyz(port).await.filter(|(s, _)| *s == 200).map(|_| ())
    })
    .await;
}
