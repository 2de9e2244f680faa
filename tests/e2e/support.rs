//! The test harness: a real control plane (etcd + kube-apiserver + kube-controller-manager
//! built from the published Go modules) shared by the whole test binary, and per test a
//! namespace, a `bitbucket-sim` and an operator process confined to that namespace.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiResource, Discovery};
use kube::{Api, Client, Config};
use serde_json::json;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Cluster {
    pub kubeconfig: PathBuf,
    _lifeline: Option<Mutex<(ChildStdin, Child)>>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The shared control plane, started on first use. `BCO_TEST_KUBECONFIG` reuses one that
/// is already running (`make cluster-up`).
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        if let Ok(kc) = std::env::var("BCO_TEST_KUBECONFIG") {
            let c = Cluster { kubeconfig: kc.into(), _lifeline: None };
            install_crds(&c.kubeconfig);
            return c;
        }
        let dir = tempfile::Builder::new().prefix("bco-cluster-").tempdir().expect("tempdir").keep();
        let mut child = Command::new("bash")
            .arg(root().join("hack/cluster.sh"))
            .args(["run", dir.to_str().unwrap(), "--stdin-lifeline"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hack/cluster.sh");
        // The script stops the control plane when our end of its stdin closes, which the
        // kernel does when this test process exits, however it exits.
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            assert!(Instant::now() < deadline, "control plane did not start");
            match lines.next() {
                Some(Ok(line)) => {
                    eprintln!("{line}");
                    if line.starts_with("control plane ready") {
                        break;
                    }
                }
                _ => panic!("hack/cluster.sh exited before the control plane was ready"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let c = Cluster { kubeconfig: dir.join("kubeconfig"), _lifeline: Some(Mutex::new((stdin, child))) };
        install_crds(&c.kubeconfig);
        c
    })
}

fn install_crds(kubeconfig: &Path) {
    let out = kubectl(kubeconfig, &["apply", "--server-side", "--force-conflicts", "-f", root().join("crds").to_str().unwrap()]);
    assert!(out.status.success(), "installing CRDs failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(kubeconfig, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
    assert!(out.status.success(), "CRDs not Established: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl").env("KUBECONFIG", kubeconfig).args(args).output().expect("run kubectl")
}

/// `kubectl apply -f -` of a YAML document; the output (stdout + stderr) and success.
pub fn kubectl_apply(kubeconfig: &Path, namespace: &str, yaml: &str) -> (bool, String) {
    kubectl_stdin(kubeconfig, &["apply", "-n", namespace, "-f", "-"], yaml)
}

/// `kubectl ARGS` with `yaml` on stdin: success and the output (stdout + stderr).
pub fn kubectl_stdin(kubeconfig: &Path, args: &[&str], yaml: &str) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub async fn client() -> Client {
    let kc = Kubeconfig::read_from(&cluster().kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

/// A port for a process to listen on, below the ephemeral range (where outgoing
/// connections would take a port handed out a moment before), from a counter that starts
/// at a place of its own for each test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 20000 + (std::process::id() % 600) as u16 * 20, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32000 {
            NEXT.store(20000, Ordering::SeqCst);
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `bitbucket-sim` binary: built beside the operator's by `cargo build --bins` (the
/// simulator is the workspace member `sim/`, a package of its own).
pub fn sim_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_bitbucket-credentials-operator")).with_file_name("bitbucket-sim");
    assert!(bin.exists(), "{} is missing: build it with `cargo build --bins` (add --release for the benchmarks)", bin.display());
    bin
}

/// A running `bitbucket-sim`.
pub struct Sim {
    pub url: String,
    pub _proc: Proc,
    pub http: reqwest::Client,
}

impl Sim {
    pub fn start(dir: &Path, config: &str) -> Sim {
        let cfg = dir.join("sim.yaml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new(sim_bin())
            .args(["--config", cfg.to_str().unwrap(), "--state", dir.join("sim-state.json").to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("sim.log")).unwrap())
            .spawn()
            .expect("start bitbucket-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").expect("sim prints its address").to_string();
        Sim { url, _proc: Proc { child }, http: reqwest::Client::new() }
    }

    /// Every key the simulator holds, from its inspection API.
    pub async fn keys(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self.http.get(format!("{}/_sim/keys", self.url)).send().await.unwrap().json().await.unwrap();
        match v {
            serde_json::Value::Array(a) => a,
            other => other.get("keys").and_then(|k| k.as_array()).cloned().unwrap_or_default(),
        }
    }

    pub async fn requests(&self) -> serde_json::Value {
        self.http.get(format!("{}/_sim/requests", self.url)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn total_requests(&self) -> u64 {
        self.requests().await["total"].as_u64().unwrap_or(0)
    }

    pub async fn delete_key(&self, id: i64) {
        let r = self.http.delete(format!("{}/_sim/keys/{id}", self.url)).send().await.unwrap();
        assert!(r.status().is_success(), "delete key {id}: {}", r.status());
    }
}

pub const SIM_CONFIG: &str = r#"
workspaces:
  - slug: acme
    repositories: [{slug: api, project: CORE}, {slug: web, project: CORE}, {slug: tools}, {slug: infra}]
    projects: [{key: CORE}, {key: OPS}]
apiTokens:
  - {email: admin@acme.test, token: tok-admin-0123456789, scopes: [admin:repository:bitbucket, write:ssh-key:bitbucket, delete:ssh-key:bitbucket, admin:project:bitbucket]}
  - {email: reader@acme.test, token: tok-reader-0123456789, scopes: [admin:repository:bitbucket]}
oauthConsumers:
  - {key: ck-main, secret: cs-main-secret-0123456789, scopes: [repository:admin, project:admin], expiresIn: 7200}
accessTokens: [ {token: repo-access-token-0123456789} ]
rateLimit: {requestsPerWindow: 100000, windowSeconds: 3600}
"#;

/// Strings that must never appear in anything the tests capture.
pub const SECRET_VALUES: &[&str] =
    &["tok-admin-0123456789", "tok-reader-0123456789", "cs-main-secret-0123456789", "repo-access-token-0123456789"];

/// A running operator confined to one namespace.
pub struct Operator {
    pub proc: Option<Proc>,
    pub log: PathBuf,
    pub metrics_port: u16,
    pub health_port: u16,
    args: Vec<String>,
    /// Environment of every run: the Bitbucket URLs the operator allows, for one.
    envs: Vec<(String, String)>,
    runs: u32,
    /// What the process authenticates with: on the shared control plane, the chart's own
    /// ServiceAccount and RBAC (see [`as_chart_service_account`]).
    kubeconfig: PathBuf,
}

/// The environment that lets an operator talk to the Bitbucket at `urls` (the simulator:
/// plain http on loopback, which only an explicit allowance admits).
pub fn allowing(urls: &[&str]) -> Vec<(String, String)> {
    vec![("BCO_ALLOWED_BITBUCKET_URLS".to_string(), urls.join(","))]
}

impl Operator {
    pub fn start(dir: &Path, namespace: &str, extra: &[&str], envs: Vec<(String, String)>) -> Operator {
        std::fs::create_dir_all(dir).unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            format!("--watch-namespaces={namespace}"),
            format!("--cluster-resource-namespace={namespace}"),
            "--cluster-name=test".into(),
        ]);
        let kubeconfig = as_chart_service_account(dir, &args);
        Operator::start_on(dir, &kubeconfig, &args, envs)
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Restarts the operator allowing exactly the Bitbucket URLs `urls`.
    pub fn restart_allowing(&mut self, urls: &[&str]) {
        self.envs.retain(|(k, _)| k != "BCO_ALLOWED_BITBUCKET_URLS");
        self.envs.extend(allowing(urls));
        self.restart();
    }

    /// Waits for the process to exit by itself (a crash point), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(p) = &mut self.proc
                && p.child.try_wait().ok().flatten().is_some()
            {
                self.proc = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn restart_with(&mut self, envs: &[(&str, &str)]) {
        self.proc = None;
        self.runs += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // BCO_OPERATOR_WRAPPER runs the operator under a profiler (e.g. `heaptrack -o
        // /tmp/op`); figures read from the process are then the wrapper's.
        let wrapper: Vec<String> = std::env::var("BCO_OPERATOR_WRAPPER").unwrap_or_default().split_whitespace().map(String::from).collect();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_bitbucket-credentials-operator"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_bitbucket-credentials-operator")),
        };
        let child = command
            .arg("run")
            .args(&self.args)
            .args([format!("--metrics-addr=127.0.0.1:{}", self.metrics_port), format!("--health-addr=127.0.0.1:{}", self.health_port)])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", namespace_of(&self.args))
            .env("RUST_LOG", std::env::var("BCO_OPERATOR_LOG").unwrap_or_else(|_| "info,bitbucket_credentials_operator=debug".into()))
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(envs.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start operator");
        self.proc = Some(Proc { child });
    }

    /// SIGKILL, as a node failure or OOM kill would.
    pub fn kill(&mut self) {
        if let Some(p) = &mut self.proc {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.proc = None;
    }

    /// SIGTERM, as the kubelet stops a pod; waits for the exit (up to `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if let Some(p) = &self.proc {
            let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
        }
        self.wait_exit(timeout)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await.unwrap().text().await.unwrap()
    }
}

/// Everything one test uses.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub dir: PathBuf,
    pub sim: Sim,
    pub operator: Operator,
}

impl Env {
    pub async fn new(name: &str) -> Env {
        Self::with(name, SIM_CONFIG, &["--drift-check-interval=3s"]).await
    }

    pub async fn with(name: &str, sim_config: &str, operator_args: &[&str]) -> Env {
        Self::with_allowed(name, sim_config, operator_args, &[]).await
    }

    /// Like `with`, the operator allowing `extra_urls` besides the simulator.
    pub async fn with_allowed(name: &str, sim_config: &str, operator_args: &[&str], extra_urls: &[&str]) -> Env {
        cluster();
        let client = client().await;
        let ns = format!("{}-{}", name.replace('_', "-").chars().take(40).collect::<String>(), rand_suffix());
        let ns = ns.trim_matches('-').to_string();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await
            .expect("create namespace");
        let dir = tempfile::Builder::new().prefix(&format!("bco-{name}-")).tempdir().unwrap().keep();
        let sim = Sim::start(&dir, sim_config);
        let urls: Vec<&str> = std::iter::once(sim.url.as_str()).chain(extra_urls.iter().copied()).collect();
        let operator = Operator::start(&dir, &ns, operator_args, allowing(&urls));
        Env { client, ns, dir, sim, operator }
    }

    /// Applies YAML (one or more documents) into the test's namespace via the API.
    pub async fn apply(&self, yaml: &str) {
        let discovery = discovery(&self.client).await;
        for value in serde_saphyr::from_str_multiple::<serde_json::Value, Vec<_>>(yaml).unwrap() {
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value.clone()).unwrap();
            let gvk = kube::core::GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
            let (ar, caps) = discovery.resolve_gvk(&gvk).expect("known kind");
            let name = obj.metadata.name.clone().unwrap();
            let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
                Api::namespaced_with(self.client.clone(), &self.ns, &ar)
            } else {
                Api::all_with(self.client.clone(), &ar)
            };
            api.patch(&name, &PatchParams::apply("e2e-test").force(), &Patch::Apply(value))
                .await
                .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        }
    }

    /// A namespaced workspace `acme` pointing at this test's simulator, with an API token.
    pub async fn workspace(&self) {
        self.workspace_with("").await;
    }

    /// The workspace with a budget whose drift share covers its targets at
    /// `--drift-check-interval`: at the default 900 an hour, the share paces two
    /// targets to one check in 40 s, due up to a minute after the last one.
    pub async fn workspace_checked_often(&self) {
        self.workspace_with("  requestsPerHour: 36000\n").await;
    }

    async fn workspace_with(&self, extra_spec: &str) {
        self.apply(&workspace_yaml(&self.sim.url, extra_spec)).await;
        self.wait_ready("bitbucketworkspaces", "acme", Duration::from_secs(60)).await;
    }

    pub fn api(&self, plural: &str) -> Api<DynamicObject> {
        let ar = resource(plural);
        if plural.starts_with("cluster") {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), &self.ns, &ar)
        }
    }

    pub async fn get(&self, plural: &str, name: &str) -> Option<DynamicObject> {
        self.api(plural).get_opt(name).await.unwrap()
    }

    /// The Ready condition: (status, reason, message).
    pub async fn ready(&self, plural: &str, name: &str) -> Option<(String, String, String)> {
        let o = self.get(plural, name).await?;
        let c = condition_of(&o, "Ready")?;
        Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string(), c["message"].as_str().unwrap_or_default().to_string()))
    }

    /// Waits until Ready=True for the current generation with no Degraded condition: the
    /// object has converged, the last reconcile succeeded.
    pub async fn wait_ready(&self, plural: &str, name: &str, timeout: Duration) -> DynamicObject {
        let gen_ok = |o: &DynamicObject| o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((s, _, _)) = self.ready(plural, name).await
                && s == "True"
            {
                let o = self.get(plural, name).await.unwrap();
                if (gen_ok(&o) || plural.contains("workspaces")) && condition_of(&o, "Degraded").is_none() {
                    return o;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{plural}/{name} not Ready after {timeout:?}: {:?}\n--- operator log tail ---\n{}",
                    self.ready(plural, name).await,
                    tail(&self.operator.logs(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the Ready (or Degraded) condition has `reason`; returns the message.
    pub async fn wait_reason(&self, plural: &str, name: &str, reason: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, r, m)) = self.ready(plural, name).await
                && r == reason
            {
                return m;
            }
            // A failure that leaves the Secret usable is told by Degraded, Ready staying True.
            if let Some(o) = self.get(plural, name).await
                && let Some(c) = condition_of(&o, "Degraded")
                && c["reason"] == reason
            {
                return c["message"].as_str().unwrap_or_default().to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "{plural}/{name} never had reason {reason}: {:?}\n--- operator log tail ---\n{}",
                    self.ready(plural, name).await,
                    tail(&self.operator.logs(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &self.ns).get_opt(name).await.unwrap()
    }

    /// Events of the namespace, as text.
    pub async fn events(&self) -> String {
        let out = kubectl(&cluster().kubeconfig, &["get", "events", "-n", &self.ns, "-o", "json"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Fails if any captured output (operator log, events, object status) holds a secret.
    pub async fn assert_no_secret_leaked(&self, extra_secrets: &[String]) {
        let mut captured = self.operator.logs();
        captured.push_str(&self.events().await);
        for plural in ["bitbucketaccesskeys", "bitbucketworkspaces", "bitbucketoauthconsumers"] {
            let list = self.api(plural).list(&Default::default()).await.unwrap();
            for o in list {
                captured.push_str(&o.data["status"].to_string());
            }
        }
        captured.push_str(&self.operator.metrics().await);
        for s in SECRET_VALUES.iter().map(|s| s.to_string()).chain(extra_secrets.iter().cloned()) {
            assert!(!s.is_empty());
            assert!(!captured.contains(&s), "secret material leaked into logs/events/status/metrics");
        }
        for marker in ["PRIVATE KEY", "b3BlbnNzaC1rZXktdjE"] {
            assert!(!captured.contains(marker), "private key material leaked: {marker}");
        }
    }
}

async fn discovery(client: &Client) -> Discovery {
    Discovery::new(client.clone()).run().await.expect("discovery")
}

/// The API resource of one of the operator's kinds, by plural.
pub fn resource(plural: &str) -> ApiResource {
    let kind = match plural {
        "bitbucketworkspaces" => "BitbucketWorkspace",
        "bitbucketaccesskeys" => "BitbucketAccessKey",
        "bitbucketoauthconsumers" => "BitbucketOAuthConsumer",
        "clusterbitbucketworkspaces" => "ClusterBitbucketWorkspace",
        other => panic!("unknown {other}"),
    };
    ApiResource {
        group: "bitbucket.credentials.dev".into(),
        version: "v1alpha1".into(),
        api_version: "bitbucket.credentials.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The condition `type_` of an object's status.
pub fn condition_of<'a>(o: &'a DynamicObject, type_: &str) -> Option<&'a serde_json::Value> {
    o.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// The auth Secret and the namespaced workspace `acme` for a simulator at `url`;
/// `extra_spec` lines (two-space indented) are added to the spec.
pub fn workspace_yaml(url: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: bb-admin}}
stringData: {{email: admin@acme.test, token: tok-admin-0123456789}}
---
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketWorkspace
metadata: {{name: acme}}
spec:
  workspace: acme
  apiURL: {url}/2.0
  siteURL: {url}
  sshHost: git.acme.test
  knownHosts: "git.acme.test ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO"
  auth: {{apiToken: {{secretRef: {{name: bb-admin}}}}}}
{extra_spec}"#
    )
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn rand_suffix() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..5).map(|_| (b'a' + r.gen_range(0..26)) as char).collect()
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator's own namespace (its Lease's, its ServiceAccount's): the cluster-resource
/// namespace, else the first one it watches.
fn namespace_of(args: &[String]) -> String {
    let crn = args.iter().find_map(|a| a.strip_prefix("--cluster-resource-namespace="));
    crn.map(str::to_string).or_else(|| watched(args).into_iter().next()).unwrap_or_else(|| "default".into())
}

/// The namespaces of every `--watch-namespaces` (the flag may be given more than once).
fn watched(args: &[String]) -> Vec<String> {
    let lists = args.iter().filter_map(|a| a.strip_prefix("--watch-namespaces="));
    lists.flat_map(|l| l.split(',')).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The directory of the control plane's binaries, Helm among them.
fn tools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("hack/build-control-plane.sh"))
            .arg("all")
            .output()
            .expect("run hack/build-control-plane.sh");
        assert!(out.status.success(), "hack/build-control-plane.sh: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().expect("bin dir").trim())
    })
}

/// The shared control plane's version (`helm template` checks the chart's kubeVersion).
pub fn server_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let out = kubectl(&cluster().kubeconfig, &["version", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kubectl version -o json");
        v["serverVersion"]["gitVersion"].as_str().expect("serverVersion.gitVersion").to_string()
    })
}

/// A kubeconfig in `dir` that acts as the ServiceAccount the chart installs for an operator
/// run with `args`, after applying the chart's RBAC for those settings (`helm template`).
/// The operator of every test on the shared control plane therefore has the permissions an
/// installed one has, and a call the chart does not grant fails here as it would in a
/// cluster. The RBAC is the chart's cluster-wide mode (tests create some of the namespaces
/// they watch after the operator starts); `BCO_E2E_RBAC=namespaced` renders the chart's
/// namespaced mode for the watched namespaces instead.
fn as_chart_service_account(dir: &Path, args: &[String]) -> PathBuf {
    let ns = namespace_of(args);
    let release = release_name(&ns);
    let namespaced = std::env::var("BCO_E2E_RBAC").is_ok_and(|v| v == "namespaced");
    let mut helm = Command::new(tools().join("helm"));
    helm.args(["template", "e2e", root().join("charts/bitbucket-credentials-operator").to_str().unwrap(), "--namespace", &ns])
        .args(["--kube-version", server_version()])
        .args(["--set", &format!("fullnameOverride={release}"), "--set", &format!("clusterResourceNamespace={ns}")])
        .args(["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]);
    if namespaced {
        helm.args(["--set-json", &format!("watchNamespaces={}", json!(watched(args)))]);
    }
    if args.iter().any(|a| a == "--leader-elect") {
        helm.args(["--set", "leaderElection.enabled=true"]);
    }
    let out = helm.output().expect("run helm");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let (ok, err) = kubectl_stdin(&cluster().kubeconfig, &["apply", "-f", "-"], &String::from_utf8_lossy(&out.stdout));
    assert!(ok, "applying the chart's RBAC: {err}");
    apply_finalizer_policy(&release, &ns, &watched(args));
    let mut kc = Kubeconfig::read_from(&cluster().kubeconfig).expect("kubeconfig");
    for user in &mut kc.auth_infos {
        if let Some(auth) = &mut user.auth_info {
            auth.impersonate = Some(format!("system:serviceaccount:{ns}:{release}"));
        }
    }
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&kc).unwrap()).unwrap();
    path
}

/// The chart's finalizer policy (templates/finalizer-policy.yaml) as `helm install` renders
/// it on a cluster that serves MutatingAdmissionPolicy (the test control plane enables it),
/// bound to the namespaces the operator watches: new access keys there get the cleanup
/// finalizer from the API server. Tests of the operator adding it itself remove the binding
/// (`finalizer_policy_binding`).
fn apply_finalizer_policy(release: &str, ns: &str, watched: &[String]) {
    assert!(!watched.is_empty(), "an operator of the tests watches named namespaces");
    let out = Command::new(tools().join("helm"))
        .args(["template", "e2e", root().join("charts/bitbucket-credentials-operator").to_str().unwrap(), "--namespace", ns])
        .args(["--kube-version", server_version(), "--api-versions", "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"])
        .args(["--set", &format!("fullnameOverride={release}"), "--set-json", &format!("watchNamespaces={}", json!(watched))])
        .args(["--show-only", "templates/finalizer-policy.yaml"])
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let (ok, err) = kubectl_stdin(&cluster().kubeconfig, &["apply", "-f", "-"], &String::from_utf8_lossy(&out.stdout));
    assert!(ok, "applying the chart's finalizer policy: {err}");
    // Until the API server has loaded the policy, and has the access key's schema (its
    // OpenAPI is read every few seconds after the CRDs appear), a create in `ns` either
    // lacks the finalizer or is refused with 503: tests start once a dry run carries it.
    let probe = format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: policy-probe, namespace: {ns}}}\nspec: {{workspaceRef: {{name: acme}}, repositories: [api]}}\n"
    );
    let args = ["create", "--dry-run=server", "-o", "jsonpath={.metadata.finalizers}", "-f", "-"];
    let started = Instant::now();
    loop {
        let (ok, out) = kubectl_stdin(&cluster().kubeconfig, &args, &probe);
        if ok && out.contains("bitbucket.credentials.dev/cleanup") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the finalizer policy never applied to {ns}: {out}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The chart's full name for the operator of namespace `ns`: one set of cluster-scoped RBAC
/// objects per operator namespace (a test's own); the chart cuts full names at 63
/// characters.
fn release_name(ns: &str) -> String {
    let mut release = format!("bco-{ns}");
    release.truncate(63);
    release.trim_end_matches('-').to_string()
}

/// The name of the binding of the finalizer policy for the operator of namespace `ns`.
pub fn finalizer_policy_binding(ns: &str) -> String {
    format!("{}-cleanup-finalizer", release_name(ns))
}

/// The local "Bitbucket git endpoint": real OpenSSH sshd serving bare repositories to the
/// access keys the simulator holds (hack/git-endpoint/).
pub struct GitEndpoint {
    pub port: u16,
    pub dir: PathBuf,
    pub _proc: Proc,
}

impl GitEndpoint {
    pub fn start(dir: &Path, sim: &Sim, repos: &[&str]) -> GitEndpoint {
        let dir = dir.join("git-endpoint");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = Command::new(root().join("hack/git-endpoint/run"))
            .arg(&dir)
            .arg(&sim.url)
            .arg(port.to_string())
            .args(repos)
            .stdout(std::fs::File::create(dir.with_extension("log")).unwrap())
            .stderr(std::fs::File::create(dir.with_extension("err.log")).unwrap())
            .spawn()
            .expect("start the git endpoint");
        let proc = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(dir.with_extension("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        GitEndpoint { port, dir, _proc: proc }
    }

    /// The host key line as a workspace's `knownHosts` gives it.
    pub fn known_hosts(&self) -> String {
        std::fs::read_to_string(self.dir.join("known_hosts")).unwrap().trim().to_string()
    }

    pub fn ssh_host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers for tests that need a control plane of their own (chaos: an apiserver restart;
// tenancy: cluster-scoped objects that every other test's operator would also reconcile).

/// A control plane started by one test (`hack/cluster.sh run DIR`), stopped when dropped
/// (or when the test process dies: the script's stdin is its lifeline).
pub struct PrivateCluster {
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    child: Child,
    lifeline: Option<ChildStdin>,
    restarts: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl PrivateCluster {
    pub fn start(name: &str) -> PrivateCluster {
        let dir = tempfile::Builder::new().prefix(&format!("bco-{name}-cluster-")).tempdir().expect("tempdir").keep();
        let mut child = Command::new("bash")
            .arg(root().join("hack/cluster.sh"))
            .args(["run", dir.to_str().unwrap(), "--stdin-lifeline"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hack/cluster.sh");
        let lifeline = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let restarts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = restarts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("kube-apiserver restarted") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("[{name}] {line}");
                    if line.starts_with("control plane ready") {
                        break;
                    }
                }
                Err(_) => panic!("hack/cluster.sh ({name}) exited or timed out before the control plane was ready"),
            }
        }
        let pc = PrivateCluster { kubeconfig: dir.join("kubeconfig"), dir, child, lifeline, restarts };
        install_crds(&pc.kubeconfig);
        pc
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("config");
        Client::try_from(config).expect("client")
    }

    /// Kills the kube-apiserver and starts it again with the same arguments (SIGUSR1 to
    /// `cluster.sh run`); returns once the new one answers `/readyz`.
    pub async fn restart_apiserver(&self) -> Duration {
        use std::sync::atomic::Ordering;
        let started = Instant::now();
        let before = self.restarts.load(Ordering::SeqCst);
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGUSR1) };
        assert_eq!(rc, 0, "cannot signal hack/cluster.sh");
        while self.restarts.load(Ordering::SeqCst) == before {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the kube-apiserver did not come back within 180 s (see {}/logs)",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        started.elapsed()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Closing the lifeline stops the control plane; wait (bounded) for it to go.
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    /// An operator run with exactly `args` (plus its metrics and health addresses)
    /// against the control plane of `kubeconfig`.
    pub fn start_on(dir: &Path, kubeconfig: &Path, args: &[String], envs: Vec<(String, String)>) -> Operator {
        std::fs::create_dir_all(dir).unwrap();
        let mut op = Operator {
            proc: None,
            log: dir.join("operator.log"),
            metrics_port: free_port(),
            health_port: free_port(),
            args: args.to_vec(),
            envs,
            runs: 0,
            kubeconfig: kubeconfig.to_path_buf(),
        };
        op.restart();
        op
    }

    /// Starts the process again (killing the running one first) against `kubeconfig`.
    pub fn respawn(&mut self, kubeconfig: &Path) {
        self.kubeconfig = kubeconfig.to_path_buf();
        self.restart();
    }

    /// How many times the process was started.
    pub fn runs(&self) -> u32 {
        self.runs
    }
}

impl Env {
    /// A test environment on a private control plane: a namespace, a simulator and an
    /// operator run with exactly `operator_args` (give it `--watch-namespaces` etc.).
    pub async fn on_private(pc: &PrivateCluster, name: &str, ns: &str, sim_config: &str, operator_args: &[String]) -> Env {
        let client = pc.client().await;
        create_namespace(&client, ns, &[]).await;
        let dir = tempfile::Builder::new().prefix(&format!("bco-{name}-")).tempdir().unwrap().keep();
        let sim = Sim::start(&dir, sim_config);
        let operator = Operator::start_on(&dir, &pc.kubeconfig, operator_args, allowing(&[&sim.url]));
        Env { client, ns: ns.to_string(), dir, sim, operator }
    }
}

/// Creates a namespace with labels (it may already exist).
pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let labels: serde_json::Map<String, serde_json::Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// Sets the simulator's faults (`PUT /_sim/faults`).
pub async fn set_faults(sim: &Sim, faults: serde_json::Value) {
    let r = sim.http.put(format!("{}/_sim/faults", sim.url)).json(&faults).send().await.unwrap();
    assert!(r.status().is_success(), "PUT /_sim/faults {faults}: {}", r.status());
}

/// The SHA256 fingerprint `ssh-keygen -l -E sha256` prints for a private key.
pub fn ssh_keygen_fingerprint(dir: &Path, private: &[u8]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("key-{}-{}", std::process::id(), rand_suffix()));
    std::fs::write(&path, private).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("ssh-keygen").arg("-l").arg("-E").arg("sha256").arg("-f").arg(&path).output().expect("ssh-keygen");
    let _ = std::fs::remove_file(&path);
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// Sets how the simulator's deploy-key endpoints deviate from the documented answers
/// (`PUT /_sim/deploy-key-variants`).
pub async fn set_variants(sim: &Sim, variants: serde_json::Value) {
    let r = sim.http.put(format!("{}/_sim/deploy-key-variants", sim.url)).json(&variants).send().await.unwrap();
    assert!(r.status().is_success(), "PUT /_sim/deploy-key-variants {variants}: {}", r.status());
}

/// The UID a key's comment or label marks it with (`bitbucket-credentials-operator:<uid>:...`,
/// or the `uid=<uid>` word of earlier versions).
pub fn marked_uid(text: &str) -> Option<String> {
    text.split_whitespace().find_map(|w| {
        w.strip_prefix("bitbucket-credentials-operator:")
            .and_then(|rest| rest.split(':').next())
            .or_else(|| w.strip_prefix("uid="))
            .filter(|u| !u.is_empty())
            .map(String::from)
    })
}

/// The value of the first series of Prometheus text `metrics` that starts with `prefix`.
pub fn series(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
