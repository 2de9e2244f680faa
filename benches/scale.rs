//! `make bench`: the operator at scale against the real local control plane and
//! `bitbucket-sim`. Every figure is a ratio against a baseline measured in the same run
//! (the machine is shared and noisy), printed as a table and written to
//! target/bench/results.json. Sizes: BENCH_OBJECTS (default 1000), BENCH_UNRELATED_SECRETS
//! (default 20000), BENCH_LATENCY_SAMPLES (default 50).

#[path = "../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bitbucket_credentials_operator::api::KeyType;
use bitbucket_credentials_operator::keys::{KeyPair, KeySpec};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::{Env, SIM_CONFIG};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Row {
    name: String,
    value: f64,
    baseline: f64,
    unit: &'static str,
    target: String,
    met: bool,
}

fn key_yaml(name: &str, repo: &str) -> Value {
    json!({
        "apiVersion": "bitbucket.credentials.dev/v1alpha1",
        "kind": "BitbucketAccessKey",
        "metadata": {"name": name},
        "spec": {"workspaceRef": {"name": "acme"}, "repositories": [repo]},
    })
}

async fn create_keys(client: &Client, ns: &str, names: &[String], repos: &[&str], concurrency: usize) {
    let api = access_keys(client, ns);
    futures::stream::iter(names.iter().enumerate())
        .map(|(i, n)| {
            let api = api.clone();
            let body = key_yaml(n, repos[i % repos.len()]);
            async move {
                api.patch(n, &PatchParams::apply("bench").force(), &Patch::Apply(body)).await.expect("create");
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
}

fn access_keys(client: &Client, ns: &str) -> Api<kube::api::DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &support::resource("bitbucketaccesskeys"))
}

async fn count_ready(client: &Client, ns: &str) -> usize {
    let list = access_keys(client, ns).list(&Default::default()).await.expect("list");
    list.items
        .iter()
        .filter(|o| {
            o.data["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count()
}

async fn wait_all_ready(client: &Client, ns: &str, n: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if count_ready(client, ns).await >= n {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "not all {n} objects Ready within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The minimal API writes one Ready access key needs, done by a plain client: the Secret
/// and a status patch (on a throwaway Secret standing in for the status subresource).
async fn baseline_writes(client: &Client, ns: &str, n: usize, concurrency: usize, tag: &str) -> Duration {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let key = KeyPair::generate(KeySpec::new(KeyType::Ed25519, None, None), "bench").unwrap();
    let pem = key.private_openssh().expose().to_string();
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let secrets = secrets.clone();
            let pem = pem.clone();
            async move {
                let name = format!("baseline-{tag}-{i}");
                let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/ssh-auth",
                    "stringData": {"ssh-privatekey": pem, "known_hosts": "x"}});
                secrets.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(body)).await.unwrap();
                let status = json!({"metadata": {"annotations": {"status": "Ready"}}});
                secrets.patch(&name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    start.elapsed()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let objects = env_usize("BENCH_OBJECTS", 1000);
    let unrelated = env_usize("BENCH_UNRELATED_SECRETS", 20000);
    let samples = env_usize("BENCH_LATENCY_SAMPLES", 50);
    let concurrency = 16;
    let mut rows: Vec<Row> = Vec::new();
    let mut raw: BTreeMap<String, Value> = BTreeMap::new();

    // 6. RSA key generation: the operator's code against ssh-keygen, same machine.
    let n_rsa = 3;
    let t = Instant::now();
    for _ in 0..n_rsa {
        KeyPair::generate(KeySpec::new(KeyType::Rsa, Some(4096), None), "bench").unwrap();
    }
    let ours = n_rsa as f64 / t.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    for i in 0..n_rsa {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "4096", "-N", "", "-f"])
            .arg(dir.path().join(format!("k{i}")))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let theirs = n_rsa as f64 / t.elapsed().as_secs_f64();
    rows.push(Row { name: "RSA-4096 keys/s, operator vs ssh-keygen".into(), value: ours, baseline: theirs, unit: "keys/s", target: "report".into(), met: true });

    // 1. Throughput.
    let env = Env::with("bench-throughput", &SIM_CONFIG.replace("requestsPerWindow: 100000", "requestsPerWindow: 100000000"), &["--drift-check-interval=6h", "--concurrency=16"]).await;
    env.workspace().await;
    env.api("bitbucketworkspaces")
        .patch("acme", &PatchParams::default(), &Patch::Merge(json!({"spec": {"requestsPerHour": 100000}})))
        .await
        .unwrap();
    let names: Vec<String> = (0..objects).map(|i| format!("k{i}")).collect();
    let repos = ["api", "web", "tools", "infra"];
    let t = Instant::now();
    create_keys(&env.client, &env.ns, &names, &repos, concurrency).await;
    let ready = wait_all_ready(&env.client, &env.ns, objects, Duration::from_secs(1800)).await.max(t.elapsed());
    let base = baseline_writes(&env.client, &env.ns, objects, concurrency, "tp").await;
    let ratio = ready.as_secs_f64() / base.as_secs_f64();
    rows.push(Row {
        name: format!("throughput: {objects} objects to Ready (s)"),
        value: ready.as_secs_f64(),
        baseline: base.as_secs_f64(),
        unit: "s",
        target: "ratio <= 1.5".into(),
        met: ratio <= 1.5,
    });

    // 3. Memory: RSS with the Ready objects, then with unrelated Secrets added.
    let pid = env.operator.proc.as_ref().unwrap().child.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_kib(pid, "VmRSS:");
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let filler = "x".repeat(1024);
    futures::stream::iter(0..unrelated)
        .map(|i| {
            let secrets = secrets.clone();
            let filler = filler.clone();
            async move {
                let s: Secret = serde_json::from_value(json!({"metadata": {"name": format!("unrelated-{i}")}, "stringData": {"data": filler}})).unwrap();
                secrets.create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_kib(pid, "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    rows.push(Row {
        name: format!("memory: RSS with {objects} Ready objects, + {unrelated} unrelated Secrets (MiB)"),
        value: rss_after as f64 / 1024.0,
        baseline: rss_before as f64 / 1024.0,
        unit: "MiB",
        target: "< 64 MiB and flat (ratio <= 1.1)".into(),
        met: rss_after < 64 * 1024 && (rss_after as f64) <= rss_before as f64 * 1.1,
    });
    raw.insert("memory_peak_kib".into(), json!(peak));

    // 4. Restart: no Bitbucket writes, reads spread, time to /readyz.
    let before = env.sim.requests().await;
    let mut env = env;
    env.operator.kill();
    let t = Instant::now();
    env.operator.restart();
    loop {
        let ok = reqwest::get(format!("http://127.0.0.1:{}/readyz", env.operator.health_port)).await.map(|r| r.status() == 200).unwrap_or(false);
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to_ready = t.elapsed();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = env.sim.requests().await;
    let by = |v: &Value, k: &str| v["byMethod"][k].as_u64().unwrap_or(0);
    let writes = (by(&after, "POST") + by(&after, "PUT") + by(&after, "DELETE")) - (by(&before, "POST") + by(&before, "PUT") + by(&before, "DELETE"));
    let reads = by(&after, "GET") - by(&before, "GET");
    rows.push(Row {
        name: format!("restart with {objects} Ready objects: Bitbucket writes / reads in the first minute"),
        value: writes as f64,
        baseline: reads as f64,
        unit: "requests",
        target: "0 writes".into(),
        met: writes == 0,
    });
    raw.insert("restart_time_to_readyz_ms".into(), json!(to_ready.as_millis()));

    // 2. Latency: one object to Ready, against the same round trips done directly.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..samples {
        let name = format!("lat-{i}");
        let t = Instant::now();
        create_keys(&env.client, &env.ns, std::slice::from_ref(&name), &["api"], 1).await;
        loop {
            let o = access_keys(&env.client, &env.ns).get(&name).await.unwrap();
            if o.data["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        // Baseline: apply the object, write the Secret, patch status, read back.
        let t = Instant::now();
        create_keys(&env.client, &env.ns, &[format!("latb-{i}")], &["api"], 1).await;
        baseline_writes(&env.client, &env.ns, 1, 1, &format!("lat{i}")).await;
        let _ = access_keys(&env.client, &env.ns).get(&format!("latb-{i}")).await.unwrap();
        theirs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    for (label, p) in [("median", 0.5), ("p99", 0.99)] {
        let (a, b) = (percentile(&ours, p), percentile(&theirs, p));
        rows.push(Row { name: format!("latency {label}: one object to Ready (ms)"), value: a, baseline: b, unit: "ms", target: "ratio <= 2".into(), met: a / b <= 2.0 });
    }

    // The table and the JSON.
    println!("\n{:<82} {:>10} {:>10} {:>8}  {:<28} met", "figure", "value", "baseline", "ratio", "target");
    let mut json_rows = Vec::new();
    for r in &rows {
        let ratio = if r.baseline > 0.0 { r.value / r.baseline } else { f64::NAN };
        println!("{:<82} {:>10.2} {:>10.2} {:>8.2}  {:<28} {}", r.name, r.value, r.baseline, ratio, r.target, if r.met { "yes" } else { "NO" });
        json_rows.push(json!({"figure": r.name, "value": r.value, "baseline": r.baseline, "ratio": ratio, "unit": r.unit, "target": r.target, "met": r.met}));
    }
    let out = support::root().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let doc = json!({"objects": objects, "unrelatedSecrets": unrelated, "latencySamples": samples, "rows": json_rows, "raw": raw});
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nwritten to {}", out.join("results.json").display());
}
