//! The manifests in `docs/` are there to be copied and applied, so they are checked like
//! code: every ```yaml block that directly follows a `<!-- apply -->` line is sent through
//! `kubectl apply --dry-run=server` to the harness's real API server, which runs schema
//! validation, CEL rules and strict field validation on it. A typo, a field the API does not
//! have, or a kind that does not exist fails here instead of for a user. And every object of
//! ours in docs/ and examples/ is applied for real and must become Ready against the simulator
//! (`every_documented_object_becomes_ready_against_the_simulator`).
//!
//! Tekton, Flux and Argo CD are not installed in the test cluster: the stand-in CRDs of
//! `tests/fixtures/ci-crds/` declare their kinds (names and scope only, any content), so
//! those manifests are checked for kind and shape, not for their fields.
//!
//! Conventions the test enforces on the Markdown:
//! - `<!-- apply -->` must be the line right before a ```yaml fence;
//! - in `docs/ci/`, a ```yaml block holding a full manifest (`apiVersion`, `kind`,
//!   `metadata`) must be marked `<!-- apply -->`, or `<!-- output -->` when it only shows
//!   what the operator writes (elsewhere such a block is only reported);
//! - `metadata` is written in block style, so the test can move objects into its namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{cluster, root};

const APPLY: &str = "<!-- apply -->";
const OUTPUT: &str = "<!-- output -->";
const MIN_BLOCKS: usize = 12;

/// A ```yaml block of a Markdown file marked `<!-- apply -->`.
struct Block {
    file: String,
    /// 1-based, among the file's `<!-- apply -->` blocks.
    index: usize,
    line: usize,
    yaml: String,
}

impl Block {
    fn name(&self) -> String {
        format!("{} apply block #{} (line {})", self.file, self.index, self.line)
    }
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The documents of a YAML stream, skipping empty ones; None if it does not parse.
fn documents(yaml: &str) -> Option<Vec<serde_json::Value>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple::<serde_json::Value, Vec<_>>(yaml).ok()?;
    Some(docs.into_iter().filter(|v| !v.is_null()).collect())
}

fn is_full_manifest(yaml: &str) -> bool {
    documents(yaml).is_some_and(|docs| docs.iter().any(|d| ["apiVersion", "kind", "metadata"].iter().all(|k| d.get(k).is_some())))
}

/// The `<!-- apply -->` blocks of one Markdown file, the convention breaches found, and the
/// full manifests left unmarked.
fn apply_blocks(file: &str, text: &str) -> (Vec<Block>, Vec<String>, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut problems = Vec::new();
    let mut unmarked = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line == APPLY && lines.get(i + 1).map(|l| l.trim()) != Some("```yaml") {
            problems.push(format!("{file} line {}: {APPLY} is not directly followed by a ```yaml fence", i + 1));
        }
        let Some(lang) = line.strip_prefix("```") else {
            i += 1;
            continue;
        };
        // A fenced block: find its end, dedent it by the fence's indentation.
        let indent = lines[i].len() - lines[i].trim_start().len();
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && lines[end].trim() != "```" {
            end += 1;
        }
        let dedent = |l: &str| -> String {
            match l.get(..indent) {
                Some(prefix) if prefix.trim().is_empty() => l[indent..].to_string(),
                _ => l.trim_start().to_string(),
            }
        };
        let body: String = lines[start..end.min(lines.len())].iter().map(|l| dedent(l) + "\n").collect();
        let marker = if i > 0 { lines[i - 1].trim() } else { "" };
        if lang.trim() == "yaml" {
            if marker == APPLY {
                let index = blocks.len() + 1;
                blocks.push(Block { file: file.to_string(), index, line: i + 1, yaml: body });
            } else if marker != OUTPUT && is_full_manifest(&body) {
                unmarked.push(format!("{file} line {}: a full manifest not marked {APPLY} (or {OUTPUT} if it only shows a result)", i + 1));
            }
        }
        i = end + 1;
    }
    (blocks, problems, unmarked)
}

/// Removes `metadata.namespace` from every document, so that `kubectl -n` puts namespaced
/// objects in the test's namespace. Works on the text, which reaches kubectl otherwise
/// untouched (re-serialising would change how YAML 1.1 scalars such as `0400` are read).
fn strip_namespaces(yaml: &str) -> String {
    let mut out = String::new();
    let mut in_metadata = false;
    let mut child_indent: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let content = line.trim();
        if !content.is_empty() && !content.starts_with('#') && indent == 0 {
            in_metadata = content == "metadata:";
            child_indent = None;
        } else if in_metadata && !content.is_empty() && !content.starts_with('#') {
            let ci = *child_indent.get_or_insert(indent);
            if indent == ci && content.starts_with("namespace:") {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn kubectl_with_input(cache_dir: &Path, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", &cluster().kubeconfig)
        .arg(format!("--cache-dir={}", cache_dir.display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn kubectl_ok(cache_dir: &Path, args: &[&str]) -> String {
    let (ok, out) = kubectl_with_input(cache_dir, args, "");
    assert!(ok, "kubectl {}: {out}", args.join(" "));
    out
}

/// Applies the stand-in CRDs of the CI systems the docs use (for real: dry-run objects of a
/// kind need the kind to exist) and waits until they are served.
fn install_ci_crds(cache_dir: &Path) {
    let dir = root().join("tests/fixtures/ci-crds");
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        for doc in documents(&std::fs::read_to_string(f).unwrap()).unwrap_or_else(|| panic!("{} does not parse", f.display())) {
            assert_eq!(doc["kind"].as_str(), Some("CustomResourceDefinition"), "{}", f.display());
            names.push(format!("crd/{}", doc["metadata"]["name"].as_str().unwrap()));
        }
    }
    assert!(!names.is_empty(), "no stand-in CRDs in {}", dir.display());
    kubectl_ok(cache_dir, &["apply", "-f", dir.to_str().unwrap()]);
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    args.extend(names.iter().map(String::as_str));
    kubectl_ok(cache_dir, &args);
}

#[test]
fn every_documented_manifest_is_accepted_by_the_api_server() {
    let docs_dir = root().join("docs");
    let mut files = Vec::new();
    markdown_files(&docs_dir, &mut files);
    let mut blocks = Vec::new();
    let mut problems = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(root()).unwrap().display().to_string();
        let (b, p, unmarked) = apply_blocks(&rel, &std::fs::read_to_string(path).unwrap());
        let ci_page = rel.starts_with("docs/ci/");
        if ci_page && !rel.ends_with("README.md") && b.is_empty() {
            problems.push(format!("{rel}: a CI page without any {APPLY} manifest"));
        }
        if ci_page {
            problems.extend(unmarked);
        } else {
            for u in unmarked {
                eprintln!("note (not validated): {u}");
            }
        }
        blocks.extend(b);
        problems.extend(p);
    }
    assert!(problems.is_empty(), "docs break the manifest conventions:\n{}", problems.join("\n"));
    assert!(blocks.len() >= MIN_BLOCKS, "only {} {APPLY} blocks found under docs/, expected at least {MIN_BLOCKS}", blocks.len());

    let cache = tempfile::Builder::new().prefix("bco-docs-kubectl-cache-").tempdir().unwrap();
    let cache_dir = cache.path();
    cluster();
    install_ci_crds(cache_dir);
    let ns = format!("docs-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000);
    kubectl_ok(cache_dir, &["create", "namespace", &ns]);

    let mut failures = Vec::new();
    let mut objects = 0;
    for block in &blocks {
        let yaml = strip_namespaces(&block.yaml);
        let Some(docs) = documents(&yaml) else {
            failures.push(format!("{}: not valid YAML", block.name()));
            continue;
        };
        if docs.iter().any(|d| d.get("metadata").and_then(|m| m.get("namespace")).is_some()) {
            failures.push(format!("{}: write `metadata` in block style, the test cannot move it to its namespace", block.name()));
            continue;
        }
        let (ok, out) = kubectl_with_input(cache_dir, &["apply", "--dry-run=server", "-n", &ns, "-f", "-"], &yaml);
        let applied = out.lines().filter(|l| l.ends_with("(server dry run)")).count();
        if !ok || applied != docs.len() {
            failures.push(format!("{}: {applied} of {} objects accepted:\n{}", block.name(), docs.len(), out.trim_end()));
        } else if let Some(w) = out.lines().find(|l| l.starts_with("Warning:")) {
            failures.push(format!("{}: the API server warns: {w}", block.name()));
        } else {
            objects += applied;
        }
    }
    let _ = kubectl_with_input(cache_dir, &["delete", "namespace", &ns, "--wait=false"], "");
    assert!(failures.is_empty(), "documented manifests rejected:\n\n{}", failures.join("\n\n"));
    eprintln!("validated {} documented manifest blocks ({objects} objects) from {} Markdown files", blocks.len(), files.len());
}

#[test]
fn apply_blocks_are_found_and_namespaces_stripped() {
    let md = "text\n<!-- apply -->\n```yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: ci\n  labels:\n    namespace: keep\ndata:\n  namespace: keep\n```\n\n```yaml\nspec: {}\n```\n  <!-- apply -->\n  ```yaml\n  apiVersion: v1\n  kind: Secret\n  metadata:\n    name: b\n  ```\n";
    let (blocks, problems, unmarked) = apply_blocks("x.md", md);
    assert!(unmarked.is_empty(), "{unmarked:?}");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[0].index, blocks[0].line), (1, 3));
    assert_eq!(blocks[1].yaml, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: b\n");
    let stripped = strip_namespaces(&blocks[0].yaml);
    assert!(!stripped.contains("namespace: ci"), "{stripped}");
    assert_eq!(stripped.matches("namespace: keep").count(), 2, "{stripped}");

    let (_, problems, unmarked) =
        apply_blocks("y.md", "```yaml\napiVersion: v1\nkind: Secret\nmetadata: {name: c}\n```\n<!-- apply -->\n\n```yaml\n```\n");
    assert_eq!((problems.len(), unmarked.len()), (1, 1), "{problems:?} {unmarked:?}");
}

/// A simulator holding everything docs/ and examples/ name: the repositories and projects,
/// the credentials of examples/ and those the placeholders are replaced with.
const DOCS_SIM: &str = r#"
workspaces:
  - slug: acme
    repositories: [{slug: api, project: CORE}, {slug: web, project: CORE}, {slug: tools}, {slug: deploy-config}, {slug: infra, project: PLAT}]
    projects: [{key: CORE}, {key: PLAT}]
apiTokens:
  - {email: admin@acme.test, token: tok-admin, scopes: [admin:repository:bitbucket, write:ssh-key:bitbucket, delete:ssh-key:bitbucket, admin:project:bitbucket]}
oauthConsumers:
  - {key: ck, secret: cs, scopes: [repository:admin, project:admin], expiresIn: 7200}
rateLimit: {requestsPerWindow: 100000, windowSeconds: 3600}
"#;

const OUR_KINDS: &[(&str, &str)] = &[
    ("BitbucketWorkspace", "bitbucketworkspaces"),
    ("BitbucketAccessKey", "bitbucketaccesskeys"),
    ("BitbucketOAuthConsumer", "bitbucketoauthconsumers"),
];

/// A documented object made to run here: in the test's namespace, workspaces pointed at the
/// simulator, placeholders replaced by the simulator's consumer, the cluster workspace
/// renamed to `cluster_ws`.
fn localise(mut doc: serde_json::Value, sim: &str, cluster_ws: &str) -> serde_json::Value {
    if let Some(m) = doc["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if let Some(data) = doc.get_mut("stringData").and_then(|d| d.as_object_mut()) {
        for v in data.values_mut() {
            match v.as_str() {
                Some("REPLACE_WITH_CONSUMER_KEY") => *v = "ck".into(),
                Some("REPLACE_WITH_CONSUMER_SECRET") => *v = "cs".into(),
                _ => {}
            }
        }
    }
    // (Indexing a missing key of a mutable Value would add it as null.)
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let Some(spec) = doc.get_mut("spec").and_then(|s| s.as_object_mut()) else { return doc };
    if kind.ends_with("BitbucketWorkspace") {
        spec.insert("apiURL".into(), format!("{sim}/2.0").into());
        spec.insert("siteURL".into(), sim.into());
    }
    if let Some(r) = spec.get_mut("workspaceRef").and_then(|r| r.as_object_mut())
        && r.get("kind").is_some_and(|k| k == "ClusterBitbucketWorkspace")
    {
        r.insert("name".into(), cluster_ws.into());
    }
    doc
}

/// Every BitbucketWorkspace, BitbucketAccessKey and BitbucketOAuthConsumer of docs/ and
/// examples/ applied for real (not a dry run) and Ready against the simulator, one file at
/// a time, with the cluster workspace of examples/02 that the CI pages use.
#[tokio::test]
async fn every_documented_object_becomes_ready_against_the_simulator() {
    use crate::support::{Env, PrivateCluster};
    // A control plane of its own: every operator of the shared one serves cluster-scoped
    // workspaces, and another test's operator would fight over this one's status.
    let pc = PrivateCluster::start("docs-ready");
    let ns = "docs";
    let args = [format!("--watch-namespaces={ns}"), format!("--cluster-resource-namespace={ns}"), "--cluster-name=docs".into()];
    let env = Env::on_private(&pc, "docs-ready", ns, DOCS_SIM, &args).await;
    let sim = env.sim.url.clone();
    let to_yaml = |docs: &[serde_json::Value]| docs.iter().map(|d| serde_saphyr::to_string(d).unwrap()).collect::<Vec<_>>().join("---\n");

    // examples/02's cluster workspace, renamed so that no other test meets it, admitting
    // the test's namespace, its consumer Secret in the cluster-resource namespace.
    let cluster_ws = format!("acme-{}", env.ns);
    let text = std::fs::read_to_string(root().join("examples/02-cluster-workspace.yaml")).unwrap();
    let mut cws = documents(&text).unwrap().remove(0);
    cws["metadata"]["name"] = cluster_ws.clone().into();
    cws["spec"]["allowedNamespaces"]["names"] = serde_json::json!([env.ns]);
    let cws = localise(cws, &sim, &cluster_ws);
    let consumer = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bb-consumer"}, "stringData": {"key": "ck", "secret": "cs"}});
    env.apply(&to_yaml(&[consumer, cws])).await;
    env.wait_ready("clusterbitbucketworkspaces", &cluster_ws, Duration::from_secs(60)).await;

    // examples/01's workspace `acme` first: the pages build on it.
    let mut sources: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    let examples = |name: &str| {
        let docs = documents(&std::fs::read_to_string(root().join("examples").join(name)).unwrap()).unwrap();
        (format!("examples/{name}"), docs)
    };
    sources.push(examples("01-workspace.yaml"));
    let mut files = Vec::new();
    markdown_files(&root().join("docs"), &mut files);
    for path in files {
        let rel = path.strip_prefix(root()).unwrap().display().to_string();
        let (blocks, _, _) = apply_blocks(&rel, &std::fs::read_to_string(&path).unwrap());
        let docs = blocks.iter().flat_map(|b| documents(&b.yaml).unwrap()).collect();
        sources.push((rel, docs));
    }
    sources.push(examples("03-access-key.yaml"));
    sources.push(examples("04-oauth-consumer.yaml"));

    let mut ready = Vec::new();
    for (source, docs) in sources {
        let ours = |d: &serde_json::Value| OUR_KINDS.iter().find(|(k, _)| d["kind"] == *k).map(|(_, p)| *p);
        let objects: Vec<serde_json::Value> =
            docs.into_iter().filter(|d| d["kind"] == "Secret" || ours(d).is_some()).map(|d| localise(d, &sim, &cluster_ws)).collect();
        let mut checked: Vec<(&str, String)> =
            objects.iter().filter_map(|d| Some((ours(d)?, d["metadata"]["name"].as_str()?.to_string()))).collect();
        if checked.is_empty() {
            continue;
        }
        env.apply(&to_yaml(&objects)).await;
        for (plural, name) in &checked {
            env.wait_ready(plural, name, Duration::from_secs(60)).await;
            ready.push(format!("{source}: {plural}/{name}"));
        }
        // Gone before the next file, which may use the same names (workspaces stay: the
        // next file's objects may need them, and it applies its own over them).
        checked.retain(|(plural, _)| *plural != "bitbucketworkspaces");
        for (plural, name) in checked.iter().rev() {
            let _ = env.api(plural).delete(name, &Default::default()).await;
        }
        for (plural, name) in &checked {
            crate::support::eventually(&format!("{plural}/{name} deleted"), Duration::from_secs(60), || async {
                env.get(plural, name).await.is_none().then_some(())
            })
            .await;
        }
    }
    eprintln!("documented objects Ready against the simulator:\n  {}", ready.join("\n  "));
    let pages = ready.iter().map(|r| r.split(':').next().unwrap()).collect::<std::collections::BTreeSet<_>>();
    assert!(pages.len() >= 8, "too few pages with objects of ours: {pages:?}");
}
