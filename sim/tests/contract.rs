//! Contract tests of `bitbucket-sim`: the real binary, spoken to over HTTP, checked
//! against Atlassian's published schemas (tests/fixtures/bitbucket-deploy-keys-spec.json)
//! and against the behaviour in shared/bitbucket-cloud/FACTS.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const SIM: &str = env!("CARGO_BIN_EXE_bitbucket-sim");
const SPEC: &str = include_str!("fixtures/bitbucket-deploy-keys-spec.json");

const ADMIN: (&str, &str) = ("admin@acme.test", "tok-admin");
const READER: (&str, &str) = ("reader@acme.test", "tok-reader");
const CONSUMER: (&str, &str) = ("ck", "cs");
const REPO_ONLY_CONSUMER: (&str, &str) = ("ck-repo", "cs-repo");
const ACCESS_TOKEN: &str = "repo-access-token";

const REPO_KEYS: &str = "/2.0/repositories/acme/api/deploy-keys";
const WEB_KEYS: &str = "/2.0/repositories/acme/web/deploy-keys";
const TOOLS_KEYS: &str = "/2.0/repositories/acme/tools/deploy-keys";
const PROJECT_KEYS: &str = "/2.0/workspaces/acme/projects/CORE/deploy-keys";
const TOKEN: &str = "/site/oauth2/access_token";

fn config() -> Value {
    json!({
        "workspaces": [{
            "slug": "acme",
            "repositories": [
                {"slug": "api", "project": "CORE"},
                {"slug": "web", "project": "CORE"},
                {"slug": "tools"}
            ],
            "projects": [{"key": "CORE", "name": "Core"}]
        }],
        "apiTokens": [
            {"email": ADMIN.0, "token": ADMIN.1, "scopes": [
                "admin:repository:bitbucket", "write:ssh-key:bitbucket",
                "delete:ssh-key:bitbucket", "admin:project:bitbucket"]},
            {"email": READER.0, "token": READER.1, "scopes": ["admin:repository:bitbucket"]}
        ],
        "oauthConsumers": [
            {"key": CONSUMER.0, "secret": CONSUMER.1, "scopes": ["repository:admin", "project:admin"], "expiresIn": 7200},
            {"key": REPO_ONLY_CONSUMER.0, "secret": REPO_ONLY_CONSUMER.1, "scopes": ["repository:admin"], "expiresIn": 7200}
        ],
        "accessTokens": [{"token": ACCESS_TOKEN}],
        "rateLimit": {"requestsPerWindow": 1000, "windowSeconds": 3600},
        "pagelen": 10,
        "seed": 42
    })
}

// ---------------------------------------------------------------------------------
// Running the binary

struct Sim {
    child: Child,
    base: String,
    client: Client,
}

impl Sim {
    /// Starts the binary with `config` written into `dir`; `state` enables persistence.
    fn start_in(dir: &Path, config: &Value, state: Option<&Path>) -> Self {
        let config_path = dir.join("sim.yaml");
        // JSON is YAML, so the config can be written with serde_json.
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let mut command = Command::new(SIM);
        command.arg("--config").arg(&config_path).env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit());
        if let Some(state) = state {
            command.arg("--state").arg(state);
        }
        let mut child = command.spawn().expect("spawn bitbucket-sim");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read stdout");
        let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_owned();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let client = Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().expect("client");
        Self { child, base, client }
    }

    fn start(dir: &Path, config: &Value) -> Self {
        Self::start_in(dir, config, None)
    }

    async fn call(&self, method: Method, path: &str, auth: Auth<'_>, body: Option<&Value>) -> Resp {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        request = match auth {
            Auth::None => request,
            Auth::Basic((user, secret)) => request.basic_auth(user, Some(secret)),
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        Resp::read(request.send().await.expect("request")).await
    }

    async fn get(&self, path: &str, auth: Auth<'_>) -> Resp {
        self.call(Method::GET, path, auth, None).await
    }

    async fn post(&self, path: &str, auth: Auth<'_>, body: &Value) -> Resp {
        self.call(Method::POST, path, auth, Some(body)).await
    }

    async fn add_key(&self, path: &str, key: &str, label: &str) -> Value {
        let resp = self.post(path, Auth::Basic(ADMIN), &json!({"key": key, "label": label})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        resp.json()
    }

    async fn token(&self, client: (&str, &str), form: &str) -> Resp {
        let resp = self
            .client
            .post(format!("{}{TOKEN}", self.base))
            .basic_auth(client.0, Some(client.1))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .expect("token request");
        Resp::read(resp).await
    }

    async fn access_token(&self, client: (&str, &str)) -> String {
        let resp = self.token(client, "grant_type=client_credentials").await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        resp.json()["access_token"].as_str().expect("access_token").to_owned()
    }

    async fn inspect(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        self.call(method, path, Auth::None, body).await
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Only the child this test spawned.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Basic((&'a str, &'a str)),
    Bearer(&'a str),
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    async fn read(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        Self { status, headers, text }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn error_message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or_default().to_owned()
    }

    fn content_type(&self) -> &str {
        self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

// ---------------------------------------------------------------------------------
// Keys

fn ed25519(comment: &str) -> String {
    let private = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).expect("generate ed25519");
    let mut public = private.public_key().clone();
    public.set_comment(comment);
    public.to_openssh().expect("encode")
}

/// A key pair from the real OpenSSH, so the simulator is tested against its format.
fn ssh_keygen(dir: &Path, name: &str, kind: &str, bits: Option<u32>, comment: &str) -> Option<String> {
    let path = dir.join(name);
    let mut command = Command::new("ssh-keygen");
    command.args(["-q", "-N", "", "-t", kind, "-C", comment, "-f"]).arg(&path);
    if let Some(bits) = bits {
        command.args(["-b", &bits.to_string()]);
    }
    let status = command.stdin(Stdio::null()).stderr(Stdio::null()).status().ok()?;
    if !status.success() {
        return None;
    }
    std::fs::read_to_string(path.with_extension("pub")).ok().map(|s| s.trim().to_owned())
}

/// `ssh-keygen -l`'s fingerprint of a public key file.
fn ssh_keygen_fingerprint(dir: &Path, public_key: &str) -> String {
    let path = dir.join("fp.pub");
    std::fs::write(&path, format!("{public_key}\n")).expect("write");
    let out = Command::new("ssh-keygen").arg("-lf").arg(&path).output().expect("ssh-keygen -l");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(1).expect("fingerprint field").to_owned()
}

/// A DSA key: from ssh-keygen when it still supports DSA, else built by hand (the
/// simulator must refuse it by type, whatever its numbers).
fn dsa_key(dir: &Path) -> String {
    if let Some(key) = ssh_keygen(dir, "dsa", "dsa", None, "old@box") {
        return key;
    }
    fn mpint(out: &mut Vec<u8>, fill: u8, len: usize) {
        out.extend_from_slice(&((len + 1) as u32).to_be_bytes());
        out.push(0);
        out.extend(std::iter::repeat_n(fill, len));
    }
    let mut blob = Vec::new();
    blob.extend_from_slice(&7u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-dss");
    mpint(&mut blob, 0xc3, 128);
    mpint(&mut blob, 0xa5, 20);
    mpint(&mut blob, 0x97, 128);
    mpint(&mut blob, 0x8b, 128);
    format!("ssh-dss {} old@box", base64::engine::general_purpose::STANDARD.encode(blob))
}

fn without_links(mut key: Value) -> Value {
    if let Some(object) = key.as_object_mut() {
        object.remove("links");
    }
    key
}

fn key_material(line: &str) -> String {
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------
// A validator for the JSON-Schema subset Swagger 2.0 uses here: type, properties,
// required, allOf, $ref, items, enum, additionalProperties, minimum, format.

struct Spec {
    root: Value,
}

impl Spec {
    fn load() -> Self {
        Self { root: serde_json::from_str(SPEC).expect("spec fixture is JSON") }
    }

    fn errors(&self, definition: &str, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        let reference = format!("#/definitions/{definition}");
        self.check(&json!({ "$ref": reference }), "#", value, "$", &mut errors);
        errors
    }

    fn assert_valid(&self, definition: &str, value: &Value) {
        let errors = self.errors(definition, value);
        assert!(errors.is_empty(), "answer does not match `{definition}`:\n  {}\nanswer: {value:#}", errors.join("\n  "));
    }

    fn resolve(&self, reference: &str) -> &Value {
        let name = reference.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("unsupported $ref {reference}"));
        self.root["definitions"].get(name).unwrap_or_else(|| panic!("fixture lacks definition {name}"))
    }

    fn check(&self, schema: &Value, schema_path: &str, value: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(schema) = schema.as_object() else {
            return;
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            // Swagger 2.0: siblings of $ref are ignored.
            self.check(self.resolve(reference), reference, value, at, errors);
            return;
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for (i, sub) in all.iter().enumerate() {
                self.check(sub, &format!("{schema_path}/allOf/{i}"), value, at, errors);
            }
        }
        if let Some(kind) = schema.get("type").and_then(Value::as_str) {
            let matches = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "null" => value.is_null(),
                other => panic!("unsupported type {other}"),
            };
            if !matches {
                if !(value.is_null() && known_defect_allows_null(schema_path)) {
                    errors.push(format!("{at}: expected {kind}, got {value}"));
                }
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let (Some(minimum), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64())
            && n < minimum
        {
            errors.push(format!("{at}: {n} is below the minimum {minimum}"));
        }
        if let (Some(format), Some(s)) = (schema.get("format").and_then(Value::as_str), value.as_str()) {
            let ok = match format {
                "date-time" => s.parse::<jiff::Timestamp>().is_ok(),
                "uri" => url::Url::parse(s).is_ok(),
                _ => true,
            };
            if !ok {
                errors.push(format!("{at}: {s:?} is not a valid {format}"));
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if let Some(name) = required.as_str()
                    && !object.contains_key(name)
                {
                    errors.push(format!("{at}: missing required property `{name}`"));
                }
            }
            if let Some(properties) = properties {
                for (name, sub) in properties {
                    if let Some(v) = object.get(name) {
                        let sub_path = format!("{schema_path}/properties/{name}");
                        self.check(sub, &sub_path, v, &format!("{at}.{name}"), errors);
                    }
                }
            }
            if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                for name in object.keys() {
                    let declared = properties.is_some_and(|p| p.contains_key(name));
                    if !declared && !known_defect_allows_property(schema_path, name) {
                        errors.push(format!("{at}: property `{name}` is not allowed"));
                    }
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.check(items, &format!("{schema_path}/items"), item, &format!("{at}[{i}]"), errors);
            }
        }
    }
}

/// Known defect: `last_used` is null until a key is used; Swagger 2.0 cannot say so.
fn known_defect_allows_null(schema_path: &str) -> bool {
    (schema_path.starts_with("#/definitions/deploy_key/") || schema_path.starts_with("#/definitions/project_deploy_key/"))
        && schema_path.ends_with("/properties/last_used")
}

/// Known defect: real 400s carry `error.fields`, which the `error` schema forbids.
fn known_defect_allows_property(schema_path: &str, name: &str) -> bool {
    schema_path == "#/definitions/error/properties/error" && name == "fields"
}

/// What FACTS.md says every key object carries (the spec requires only `type`).
fn assert_facts_key_object(key: &Value, kind: &str) {
    for field in ["id", "key", "comment", "label", "type", "added_on", "created_on", "last_used", "links"] {
        assert!(key.get(field).is_some(), "key object lacks `{field}`: {key:#}");
    }
    assert!(key["id"].is_u64(), "integer id: {key:#}");
    assert!(key["last_used"].is_null());
    assert_eq!(key["type"], kind);
    assert_eq!(key["key"].as_str().map(|k| k.split(' ').count()), Some(2), "comment stripped from `key`");
    let href = key["links"]["self"]["href"].as_str().expect("links.self.href");
    assert!(href.starts_with("http://127.0.0.1:"), "absolute self link: {href}");
    assert!(href.ends_with(&format!("/deploy-keys/{}", key["id"])), "{href}");
    if kind == "deploy_key" {
        for field in ["full_name", "name", "type", "uuid"] {
            assert!(key["repository"].get(field).is_some(), "repository.{field}: {key:#}");
        }
        assert_eq!(key["repository"]["type"], "repository");
        assert!(key["owner"].is_object());
    } else {
        for field in ["key", "name", "type", "uuid"] {
            assert!(key["project"].get(field).is_some(), "project.{field}: {key:#}");
        }
        assert_eq!(key["project"]["type"], "project");
        assert!(key["created_by"].is_object());
    }
}

fn assert_facts_page(page: &Value) {
    for field in ["pagelen", "values", "page", "size"] {
        assert!(page.get(field).is_some(), "page lacks `{field}`: {page:#}");
    }
}

// ---------------------------------------------------------------------------------
// The contract

#[test]
fn the_validator_catches_a_missing_required_field_and_a_wrong_type() {
    let spec = Spec::load();
    let mut key = json!({"type": "deploy_key", "id": 1, "key": "ssh-ed25519 AAAA", "last_used": null});
    assert!(spec.errors("deploy_key", &key).is_empty());
    if let Some(object) = key.as_object_mut() {
        object.remove("type");
    }
    assert!(!spec.errors("deploy_key", &key).is_empty(), "losing `type` must fail");
    let wrong = json!({"type": "deploy_key", "key": 5});
    assert!(!spec.errors("deploy_key", &wrong).is_empty());
    assert!(!spec.errors("error", &json!({"type": "error", "error": {}})).is_empty(), "message is required");
    assert!(!spec.errors("paginated_deploy_keys", &json!({"values": [], "bogus": 1})).is_empty());
    assert!(spec.errors("error", &json!({"type": "error", "error": {"message": "m", "fields": {"key": ["x"]}}})).is_empty());
}

#[tokio::test]
async fn answers_match_the_published_bitbucket_schemas() {
    let spec = Spec::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let key = ed25519("ci@runner");

    let created = sim.add_key(REPO_KEYS, &key, "ci").await;
    spec.assert_valid("deploy_key", &created);
    assert_facts_key_object(&created, "deploy_key");

    let got = sim.get(&format!("{REPO_KEYS}/{}", created["id"]), Auth::Basic(ADMIN)).await;
    assert_eq!(got.status, StatusCode::OK);
    spec.assert_valid("deploy_key", &got.json());
    assert_facts_key_object(&got.json(), "deploy_key");

    let list = sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await;
    assert_eq!(list.status, StatusCode::OK);
    spec.assert_valid("paginated_deploy_keys", &list.json());
    assert_facts_page(&list.json());

    let project_key = sim.add_key(PROJECT_KEYS, &key, "ci").await;
    spec.assert_valid("project_deploy_key", &project_key);
    assert_facts_key_object(&project_key, "project_deploy_key");
    let got = sim.get(&format!("{PROJECT_KEYS}/{}", project_key["id"]), Auth::Basic(ADMIN)).await;
    spec.assert_valid("project_deploy_key", &got.json());
    let list = sim.get(PROJECT_KEYS, Auth::Basic(ADMIN)).await;
    spec.assert_valid("paginated_project_deploy_keys", &list.json());
    assert_facts_page(&list.json());

    // Every error answer, whatever the cause, is a Bitbucket `error` object.
    let token_repo_only = sim.access_token(REPO_ONLY_CONSUMER).await;
    let errors = [
        sim.get("/2.0/repositories/acme/nope/deploy-keys", Auth::Basic(ADMIN)).await,
        sim.get(&format!("{REPO_KEYS}/999999"), Auth::Basic(ADMIN)).await,
        sim.post(REPO_KEYS, Auth::Basic(ADMIN), &json!({"key": key, "label": "again"})).await,
        sim.post(REPO_KEYS, Auth::Basic(ADMIN), &json!({"key": "ssh-ed25519 nonsense"})).await,
        sim.get(REPO_KEYS, Auth::Bearer(ADMIN.1)).await,
        sim.get(REPO_KEYS, Auth::Bearer(ACCESS_TOKEN)).await,
        sim.get(REPO_KEYS, Auth::None).await,
        sim.post(REPO_KEYS, Auth::Basic(READER), &json!({"key": ed25519("x")})).await,
        sim.get(PROJECT_KEYS, Auth::Bearer(&token_repo_only)).await,
        sim.call(Method::PUT, &format!("{PROJECT_KEYS}/{}", project_key["id"]), Auth::Basic(ADMIN), Some(&json!({}))).await,
    ];
    let statuses: Vec<u16> = errors.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [404, 404, 400, 400, 401, 403, 401, 403, 403, 405]);
    for resp in &errors {
        assert!(resp.content_type().starts_with("application/json"), "{}", resp.content_type());
        spec.assert_valid("error", &resp.json());
        assert!(!resp.error_message().is_empty());
    }
}

#[tokio::test]
async fn create_answers_200_and_moves_the_comment_out_of_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let key = ed25519("ci@runner-7");
    let created = sim.add_key(REPO_KEYS, &key, "ci").await;
    assert_eq!(created["key"], key_material(&key));
    assert_eq!(created["comment"], "ci@runner-7");
    assert_eq!(created["label"], "ci");
    assert_eq!(created["repository"]["full_name"], "acme/api");
    assert_eq!(created["added_on"], created["created_on"]);
    let uuid = created["repository"]["uuid"].as_str().expect("uuid");
    assert!(uuid.starts_with('{') && uuid.ends_with('}'));

    let second = sim.add_key(WEB_KEYS, &ed25519(""), "").await;
    assert!(second["id"].as_u64() > created["id"].as_u64(), "ids increase");
    assert_eq!(second["comment"], "");
}

#[tokio::test]
async fn the_same_key_twice_on_a_repository_is_refused_but_allowed_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let key = ed25519("first");
    sim.add_key(REPO_KEYS, &key, "a").await;
    // Same material, different comment: still the same key.
    let again =
        sim.post(REPO_KEYS, Auth::Basic(ADMIN), &json!({"key": format!("{} other-comment", key_material(&key)), "label": "b"})).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.error_message(), "Someone has already added that access key to this repository.");
    assert!(again.json()["error"]["fields"]["key"].is_array());

    sim.add_key(WEB_KEYS, &key, "a").await;
    sim.add_key(PROJECT_KEYS, &key, "a").await;
    let twice_on_project = sim.post(PROJECT_KEYS, Auth::Basic(ADMIN), &json!({"key": key})).await;
    assert_eq!(twice_on_project.status, StatusCode::BAD_REQUEST);
    assert!(twice_on_project.error_message().contains("already added that access key"));
}

#[tokio::test]
async fn only_ed25519_ecdsa_and_rsa_of_2048_bits_or_more_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let rsa1024 = ssh_keygen(dir.path(), "rsa1024", "rsa", Some(1024), "small").expect("ssh-keygen rsa 1024");
    let refused = sim.post(REPO_KEYS, Auth::Basic(ADMIN), &json!({"key": rsa1024})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.error_message().contains("2048"), "{}", refused.text);
    assert!(refused.json()["error"]["fields"]["key"][0].is_string());

    let dsa = dsa_key(dir.path());
    let refused = sim.post(REPO_KEYS, Auth::Basic(ADMIN), &json!({"key": dsa})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.error_message().contains("ssh-dss"), "{}", refused.text);

    for garbage in [
        "",
        "hello",
        "ssh-ed25519",
        "ssh-ed25519 AAAA",
        "ssh-rsa %%%%",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UU=",
    ] {
        let refused = sim.post(REPO_KEYS, Auth::Basic(ADMIN), &json!({"key": garbage})).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{garbage:?}: {}", refused.text);
    }
    let missing = sim.post(REPO_KEYS, Auth::Basic(ADMIN), &json!({"label": "no key"})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let not_json = sim.call(Method::POST, REPO_KEYS, Auth::Basic(ADMIN), None).await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);

    let rsa2048 = ssh_keygen(dir.path(), "rsa2048", "rsa", Some(2048), "big").expect("ssh-keygen rsa");
    sim.add_key(REPO_KEYS, &rsa2048, "rsa").await;
    for (name, bits) in [("p256", 256), ("p384", 384), ("p521", 521)] {
        let ecdsa = ssh_keygen(dir.path(), name, "ecdsa", Some(bits), name).expect("ssh-keygen ecdsa");
        let created = sim.add_key(REPO_KEYS, &ecdsa, name).await;
        assert_eq!(created["comment"], name);
    }
    let ed = ssh_keygen(dir.path(), "ed", "ed25519", None, "ed").expect("ssh-keygen ed25519");
    sim.add_key(REPO_KEYS, &ed, "ed").await;
}

#[tokio::test]
async fn pagination_follows_next_over_25_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let mut added = Vec::new();
    for i in 0..25 {
        added.push(sim.add_key(REPO_KEYS, &ed25519(&format!("k{i}")), &format!("k{i}")).await["id"].clone());
    }
    let mut url = format!("{}{REPO_KEYS}", sim.base);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let resp = sim.get(url.strip_prefix(&sim.base).expect("same host"), Auth::Basic(ADMIN)).await;
        assert_eq!(resp.status, StatusCode::OK);
        let page = resp.json();
        pages += 1;
        assert_eq!(page["size"], 25);
        assert_eq!(page["page"], pages);
        assert_eq!(page["pagelen"], 10);
        seen.extend(page["values"].as_array().expect("values").iter().map(|k| k["id"].clone()));
        match page.get("next").and_then(Value::as_str) {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, added, "every key once, in creation order");

    let big = sim.get(&format!("{REPO_KEYS}?pagelen=1000000"), Auth::Basic(ADMIN)).await.json();
    assert_eq!(big["pagelen"], 100);
    assert_eq!(big["values"].as_array().map(Vec::len), Some(25));
    assert!(big.get("next").is_none());
    let small = sim.get(&format!("{REPO_KEYS}?pagelen=5&page=5"), Auth::Basic(ADMIN)).await.json();
    assert_eq!(small["values"].as_array().map(Vec::len), Some(5));
    assert!(small.get("next").is_none());
    let bad = sim.get(&format!("{REPO_KEYS}?page=abc"), Auth::Basic(ADMIN)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn past_the_budget_bitbucket_answers_a_bare_429() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config();
    cfg["rateLimit"] = json!({"requestsPerWindow": 3, "windowSeconds": 3600});
    let sim = Sim::start(dir.path(), &cfg);
    for _ in 0..3 {
        assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::OK);
    }
    let limited = sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.content_type().starts_with("text/plain"), "{}", limited.content_type());
    assert_eq!(limited.text, "Rate limit for this resource has been exceeded");
    assert!(limited.headers.get(RETRY_AFTER).is_none(), "Bitbucket sends no Retry-After");

    // Per credential: another user is unaffected.
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(READER)).await.status, StatusCode::OK);

    // Token requests spend the consumer's budget, and so do its tokens.
    let token = sim.access_token(CONSUMER).await;
    assert_eq!(sim.get(REPO_KEYS, Auth::Bearer(&token)).await.status, StatusCode::OK);
    assert_eq!(sim.token(CONSUMER, "grant_type=client_credentials").await.status, StatusCode::OK);
    assert_eq!(sim.get(REPO_KEYS, Auth::Bearer(&token)).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sim.token(CONSUMER, "grant_type=client_credentials").await.status, StatusCode::TOO_MANY_REQUESTS);

    let usage = sim.inspect(Method::GET, "/_sim/rate-limit", None).await.json();
    assert_eq!(usage["requestsPerWindow"], 3);
    let admin = usage["usage"].as_array().expect("usage").iter().find(|u| u["credential"] == ADMIN.0).cloned();
    assert_eq!(admin.map(|u| u["remaining"].clone()), Some(json!(0)));

    // A bigger budget at runtime, or a reset, lets the credential in again.
    let put = sim.inspect(Method::PUT, "/_sim/rate-limit", Some(&json!({"requestsPerWindow": 4, "windowSeconds": 3600}))).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::OK);
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sim.inspect(Method::POST, "/_sim/rate-limit/reset", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_window_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config();
    cfg["rateLimit"] = json!({"requestsPerWindow": 2, "windowSeconds": 2});
    let sim = Sim::start(dir.path(), &cfg);
    let started = std::time::Instant::now();
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::OK);
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::OK);
    let third = sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status;
    if started.elapsed() < Duration::from_millis(1900) {
        assert_eq!(third, StatusCode::TOO_MANY_REQUESTS);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn access_tokens_are_refused_by_deploy_key_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    for path in [REPO_KEYS, PROJECT_KEYS] {
        let resp = sim.get(path, Auth::Bearer(ACCESS_TOKEN)).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);
        assert_eq!(resp.error_message(), "This API is not accessible by this authentication mechanism");
    }
}

#[tokio::test]
async fn an_api_token_sent_as_bearer_is_401() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let resp = sim.get(REPO_KEYS, Auth::Bearer(ADMIN.1)).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.json(),
        json!({"type": "error", "error": {"message": "Token is invalid, expired, or not supported for this endpoint."}})
    );
    // Missing and wrong credentials are 401 too.
    assert_eq!(sim.get(REPO_KEYS, Auth::None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic((ADMIN.0, "wrong"))).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(CONSUMER)).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_in_the_query_string_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let token = sim.access_token(CONSUMER).await;
    let resp = sim.get(&format!("{REPO_KEYS}?access_token={token}"), Auth::None).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    // And the token does not end up in the request log.
    let log = sim.inspect(Method::GET, "/_sim/requests", None).await.text;
    assert!(!log.contains(&token));
}

#[tokio::test]
async fn insufficient_scopes_are_403_naming_the_missing_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(READER)).await.status, StatusCode::OK);
    let create = sim.post(REPO_KEYS, Auth::Basic(READER), &json!({"key": ed25519("x")})).await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    assert!(create.error_message().contains("write:ssh-key:bitbucket"), "{}", create.text);
    let list_project = sim.get(PROJECT_KEYS, Auth::Basic(READER)).await;
    assert_eq!(list_project.status, StatusCode::FORBIDDEN);
    assert!(list_project.error_message().contains("admin:project:bitbucket"));

    let key = sim.add_key(REPO_KEYS, &ed25519("x"), "x").await;
    let delete = sim.call(Method::DELETE, &format!("{REPO_KEYS}/{}", key["id"]), Auth::Basic(READER), None).await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN);
    assert!(delete.error_message().contains("delete:ssh-key:bitbucket"));

    let token = sim.access_token(REPO_ONLY_CONSUMER).await;
    assert_eq!(sim.get(REPO_KEYS, Auth::Bearer(&token)).await.status, StatusCode::OK);
    let project = sim.get(PROJECT_KEYS, Auth::Bearer(&token)).await;
    assert_eq!(project.status, StatusCode::FORBIDDEN);
    assert!(project.error_message().contains("project:admin"));
}

#[tokio::test]
async fn oauth_client_credentials_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let resp = sim.token(CONSUMER, "grant_type=client_credentials").await;
    assert_eq!(resp.status, StatusCode::OK);
    let body = resp.json();
    assert_eq!(body["scope"], "repository:admin project:admin");
    assert_eq!(body["expires_in"], 7200);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["state"], "client_credentials");
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("scopes").is_none());
    let token = body["access_token"].as_str().expect("token");

    let key = ed25519("oauth");
    let created = sim.post(REPO_KEYS, Auth::Bearer(token), &json!({"key": key, "label": "oauth"})).await;
    assert_eq!(created.status, StatusCode::OK);
    let project = sim.post(PROJECT_KEYS, Auth::Bearer(token), &json!({"key": key, "label": "oauth"})).await;
    assert_eq!(project.status, StatusCode::OK);
    assert!(project.json()["created_by"]["display_name"].as_str().is_some_and(|n| n.contains("ck")));

    let bad_secret = sim.token((CONSUMER.0, "wrong"), "grant_type=client_credentials").await;
    assert_eq!(bad_secret.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_secret.json()["error"], "invalid_client");
    assert!(bad_secret.json()["error_description"].is_string());
    let unknown = sim.token(("nobody", "x"), "grant_type=client_credentials").await;
    assert_eq!(unknown.json()["error"], "invalid_client");

    let password = sim.token(CONSUMER, "grant_type=password&username=a&password=b").await;
    assert_eq!(password.status, StatusCode::BAD_REQUEST);
    assert_eq!(password.json(), json!({"error": "invalid_grant", "error_description": "Unsupported grant type: password"}));
    let get = sim.get(TOKEN, Auth::Basic(CONSUMER)).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn legacy_consumers_answer_scopes_instead_of_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config();
    cfg["oauthConsumers"][0]["legacyScopesField"] = json!(true);
    let sim = Sim::start(dir.path(), &cfg);
    let body = sim.token(CONSUMER, "grant_type=client_credentials").await.json();
    assert_eq!(body["scopes"], "repository:admin project:admin");
    assert!(body.get("scope").is_none());
}

#[tokio::test]
async fn an_expired_oauth_token_is_401() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config();
    cfg["oauthConsumers"][0]["expiresIn"] = json!(1);
    let sim = Sim::start(dir.path(), &cfg);
    let resp = sim.token(CONSUMER, "grant_type=client_credentials").await.json();
    assert_eq!(resp["expires_in"], 1);
    let token = resp["access_token"].as_str().expect("token").to_owned();
    assert_eq!(sim.get(REPO_KEYS, Auth::Bearer(&token)).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = sim.get(REPO_KEYS, Auth::Bearer(&token)).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(expired.error_message().contains("expired"), "{}", expired.text);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let sim = Sim::start_in(dir.path(), &config(), Some(&state));
    let repo_key = sim.add_key(REPO_KEYS, &ed25519("a"), "a").await;
    let project_key = sim.add_key(PROJECT_KEYS, &ed25519("b"), "b").await;
    let deleted = sim.add_key(REPO_KEYS, &ed25519("c"), "c").await;
    let resp = sim.call(Method::DELETE, &format!("{REPO_KEYS}/{}", deleted["id"]), Auth::Basic(ADMIN), None).await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert!(resp.text.is_empty());
    let token = sim.access_token(CONSUMER).await;
    let rotated = json!([{"key": CONSUMER.0, "secret": "rotated", "scopes": ["repository:admin", "project:admin"]}]);
    assert_eq!(sim.inspect(Method::PUT, "/_sim/oauth-consumers", Some(&rotated)).await.status, StatusCode::OK);
    let before = sim.inspect(Method::GET, "/_sim/keys", None).await.json();
    // SIGKILL: the state must already be on disk, not flushed at shutdown.
    sim.stop();

    let sim = Sim::start_in(dir.path(), &config(), Some(&state));
    assert_eq!(sim.inspect(Method::GET, "/_sim/keys", None).await.json(), before);
    // The port changed, so compare everything but the absolute links.
    let got = sim.get(&format!("{REPO_KEYS}/{}", repo_key["id"]), Auth::Basic(ADMIN)).await.json();
    assert_eq!(without_links(got), without_links(repo_key));
    let got = sim.get(&format!("{PROJECT_KEYS}/{}", project_key["id"]), Auth::Basic(ADMIN)).await.json();
    assert_eq!(without_links(got), without_links(project_key));
    assert_eq!(sim.get(REPO_KEYS, Auth::Bearer(&token)).await.status, StatusCode::OK, "minted token survives");
    assert_eq!(sim.token(CONSUMER, "grant_type=client_credentials").await.status, StatusCode::BAD_REQUEST, "rotated secret survives");
    assert_eq!(sim.token((CONSUMER.0, "rotated"), "grant_type=client_credentials").await.status, StatusCode::OK);
    let next = sim.add_key(REPO_KEYS, &ed25519("d"), "d").await;
    assert!(next["id"].as_u64() > deleted["id"].as_u64(), "ids are never reused");
}

#[tokio::test]
async fn injected_faults_hit_the_api_but_never_the_inspection_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config();
    cfg["faults"] = json!({"errorRate": 1.0});
    let sim = Sim::start(dir.path(), &cfg);
    for _ in 0..10 {
        let resp = sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await;
        assert!([500, 502, 503].contains(&resp.status.as_u16()), "{}", resp.status);
        assert_eq!(resp.json()["type"], "error");
        let token = sim.token(CONSUMER, "grant_type=client_credentials").await;
        assert!(token.status.is_server_error());
    }
    assert_eq!(sim.inspect(Method::GET, "/_sim/keys", None).await.status, StatusCode::OK);
    let log = sim.inspect(Method::GET, "/_sim/requests", None).await.json();
    assert_eq!(log["total"], 20);

    // Bursts: 429 under budget.
    let burst = json!({"rateLimitBurstRate": 1.0});
    assert_eq!(sim.inspect(Method::PUT, "/_sim/faults", Some(&burst)).await.status, StatusCode::OK);
    let limited = sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.text, "Rate limit for this resource has been exceeded");

    // A held-back answer: the client times out, but the key was added.
    let hold = json!({"timeoutRate": 1.0, "timeoutMs": 2000});
    assert_eq!(sim.inspect(Method::PUT, "/_sim/faults", Some(&hold)).await.status, StatusCode::OK);
    let quick = Client::builder().no_proxy().timeout(Duration::from_millis(300)).build().expect("client");
    let key = ed25519("late");
    let result = quick
        .post(format!("{}{REPO_KEYS}", sim.base))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({"key": key, "label": "late"}))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    let keys = sim.inspect(Method::GET, "/_sim/keys", None).await.json();
    assert_eq!(keys.as_array().map(Vec::len), Some(1));

    let bad = sim.inspect(Method::PUT, "/_sim/faults", Some(&json!({"errorRate": 2.0}))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.inspect(Method::PUT, "/_sim/faults", Some(&json!({}))).await.status, StatusCode::OK);
    assert_eq!(sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn put_changes_label_and_comment_but_never_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let key = ed25519("old-comment");
    let created = sim.add_key(REPO_KEYS, &key, "old").await;
    let path = format!("{REPO_KEYS}/{}", created["id"]);
    let body = json!({"key": format!("{} new-comment", key_material(&key)), "label": "new"});
    let updated = sim.call(Method::PUT, &path, Auth::Basic(ADMIN), Some(&body)).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.json()["label"], "new");
    assert_eq!(updated.json()["comment"], "new-comment");
    assert_eq!(updated.json()["id"], created["id"]);

    let other = json!({"key": ed25519("x"), "label": "new"});
    let refused = sim.call(Method::PUT, &path, Auth::Basic(ADMIN), Some(&other)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.get(&path, Auth::Basic(ADMIN)).await.json()["key"], key_material(&key));

    let project = sim.add_key(PROJECT_KEYS, &key, "p").await;
    let put = sim.call(Method::PUT, &format!("{PROJECT_KEYS}/{}", project["id"]), Auth::Basic(ADMIN), Some(&json!({"label": "x"}))).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn unknown_repositories_projects_and_keys_have_distinct_404s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let repo = sim.get("/2.0/repositories/acme/x/deploy-keys", Auth::Basic(ADMIN)).await;
    assert_eq!(repo.status, StatusCode::NOT_FOUND);
    assert_eq!(repo.error_message(), "Repository acme/x not found");
    let workspace = sim.get("/2.0/repositories/nope/api/deploy-keys", Auth::Basic(ADMIN)).await;
    assert_eq!(workspace.status, StatusCode::NOT_FOUND);
    let project = sim.get("/2.0/workspaces/acme/projects/NOPE/deploy-keys", Auth::Basic(ADMIN)).await;
    assert_eq!(project.status, StatusCode::NOT_FOUND);
    let key = sim.get(&format!("{REPO_KEYS}/424242"), Auth::Basic(ADMIN)).await;
    assert_eq!(key.status, StatusCode::NOT_FOUND);
    assert_ne!(key.error_message(), repo.error_message());
    let not_a_number = sim.get(&format!("{REPO_KEYS}/abc"), Auth::Basic(ADMIN)).await;
    assert_eq!(not_a_number.status, StatusCode::NOT_FOUND);

    // A key id from another repository is not found here.
    let on_api = sim.add_key(REPO_KEYS, &ed25519("x"), "x").await;
    let elsewhere = sim.get(&format!("{WEB_KEYS}/{}", on_api["id"]), Auth::Basic(ADMIN)).await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    let delete_elsewhere = sim.call(Method::DELETE, &format!("{TOOLS_KEYS}/{}", on_api["id"]), Auth::Basic(ADMIN), None).await;
    assert_eq!(delete_elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(sim.get("/2.0/unknown", Auth::Basic(ADMIN)).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn inspection_endpoints_show_keys_requests_and_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &config());
    let on_repo = ssh_keygen(dir.path(), "repo", "ed25519", None, "on-repo").expect("ssh-keygen");
    let on_project = ed25519("on-project");
    let repo_key = sim.add_key(REPO_KEYS, &on_repo, "r").await;
    let project_key = sim.add_key(PROJECT_KEYS, &on_project, "p").await;

    let keys = sim.inspect(Method::GET, "/_sim/keys", None).await.json();
    let keys = keys.as_array().expect("list");
    assert_eq!(keys.len(), 2);
    let repo_entry = keys.iter().find(|k| k["id"] == repo_key["id"]).expect("repo key listed");
    assert_eq!(repo_entry["target"], json!({"repository": "acme/api"}));
    assert_eq!(repo_entry["key"], key_material(&on_repo));
    assert_eq!(repo_entry["comment"], "on-repo");
    assert_eq!(repo_entry["label"], "r");
    let fingerprint = ssh_keygen_fingerprint(dir.path(), &on_repo);
    assert_eq!(repo_entry["fingerprint"], fingerprint, "same as ssh-keygen -l");
    let project_entry = keys.iter().find(|k| k["id"] == project_key["id"]).expect("project key listed");
    assert_eq!(project_entry["target"], json!({"project": "acme/CORE"}));
    let project_fingerprint = project_entry["fingerprint"].as_str().expect("fp").to_owned();
    assert_eq!(project_fingerprint, ssh_keygen_fingerprint(dir.path(), &on_project));

    // authorized: directly on the repository, or through its project.
    let authorized = |fp: &str, repo: &str| {
        let fp = url::form_urlencoded::byte_serialize(fp.as_bytes()).collect::<String>();
        format!("/_sim/authorized?fingerprint={fp}&repository={repo}")
    };
    let yes = sim.inspect(Method::GET, &authorized(&fingerprint, "acme/api"), None).await;
    assert_eq!((yes.status, yes.json()), (StatusCode::OK, json!({"allowed": true})));
    let no = sim.inspect(Method::GET, &authorized(&fingerprint, "acme/web"), None).await;
    assert_eq!((no.status, no.json()), (StatusCode::FORBIDDEN, json!({"allowed": false})));
    for repo in ["acme/api", "acme/web"] {
        let via_project = sim.inspect(Method::GET, &authorized(&project_fingerprint, repo), None).await;
        assert_eq!(via_project.json(), json!({"allowed": true}), "{repo} is in project CORE");
    }
    let not_in_project = sim.inspect(Method::GET, &authorized(&project_fingerprint, "acme/tools"), None).await;
    assert_eq!(not_in_project.status, StatusCode::FORBIDDEN);

    let lines = sim
        .inspect(
            Method::GET,
            &format!(
                "/_sim/authorized-keys?fingerprint={}",
                url::form_urlencoded::byte_serialize(fingerprint.as_bytes()).collect::<String>()
            ),
            None,
        )
        .await;
    assert!(lines.content_type().starts_with("text/plain"));
    assert_eq!(lines.text, format!("{on_repo}\n"));
    let none = sim.inspect(Method::GET, "/_sim/authorized-keys?fingerprint=SHA256:nothing", None).await;
    assert_eq!((none.status, none.text.as_str()), (StatusCode::OK, ""));

    // A key vanishing in Bitbucket.
    let gone = sim.inspect(Method::DELETE, &format!("/_sim/keys/{}", repo_key["id"]), None).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_eq!(sim.get(&format!("{REPO_KEYS}/{}", repo_key["id"]), Auth::Basic(ADMIN)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(sim.inspect(Method::DELETE, &format!("/_sim/keys/{}", repo_key["id"]), None).await.status, StatusCode::NOT_FOUND);
    let denied = sim.inspect(Method::GET, &authorized(&fingerprint, "acme/api"), None).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    // Request counters, without secrets.
    assert_eq!(sim.inspect(Method::POST, "/_sim/requests/reset", None).await.status, StatusCode::NO_CONTENT);
    let token = sim.access_token(CONSUMER).await;
    sim.get(REPO_KEYS, Auth::Basic(ADMIN)).await;
    sim.add_key(WEB_KEYS, &ed25519("w"), "w").await;
    sim.call(Method::DELETE, &format!("{PROJECT_KEYS}/{}", project_key["id"]), Auth::Bearer(&token), None).await;
    sim.get(REPO_KEYS, Auth::Basic((ADMIN.0, "wrong"))).await;
    let resp = sim.inspect(Method::GET, "/_sim/requests", None).await;
    for secret in [ADMIN.1, CONSUMER.1, token.as_str()] {
        assert!(!resp.text.contains(secret), "the request log must not hold secrets");
    }
    let log = resp.json();
    assert_eq!(log["total"], 5);
    assert_eq!(log["byCredential"], json!({"admin@acme.test": 2, "ck": 2, "anonymous": 1}));
    assert_eq!(log["byMethod"], json!({"GET": 2, "POST": 2, "DELETE": 1}));
    assert_eq!(log["byEndpoint"], json!({"token": 1, "repo_keys_list": 2, "repo_key_create": 1, "project_key_delete": 1}));
    assert_eq!(log["byStatus"], json!({"200": 3, "204": 1, "401": 1}));
    let recent = log["recent"].as_array().expect("recent");
    assert_eq!(recent.len(), 5);
    let last = &recent[4];
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], REPO_KEYS);
    assert_eq!(last["status"], 401);
    assert!(last["credential"].is_null());
    assert!(last["timestamp"].as_str().is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()));
    assert_eq!(recent[0]["credential"], "ck");

    // Secret rotation: the old secret stops working, the new one works.
    let consumers = sim.inspect(Method::GET, "/_sim/oauth-consumers", None).await;
    assert!(!consumers.text.contains(CONSUMER.1));
    let rotated = json!([{"key": CONSUMER.0, "secret": "new-secret", "scopes": ["repository:admin"]}]);
    let put = sim.inspect(Method::PUT, "/_sim/oauth-consumers", Some(&rotated)).await;
    assert_eq!(put.status, StatusCode::OK);
    assert!(!put.text.contains("new-secret"));
    assert_eq!(sim.token(CONSUMER, "grant_type=client_credentials").await.json()["error"], "invalid_client");
    let fresh = sim.token((CONSUMER.0, "new-secret"), "grant_type=client_credentials").await.json();
    assert_eq!(fresh["scope"], "repository:admin");
    let removed = sim.inspect(Method::PUT, "/_sim/oauth-consumers", Some(&json!([]))).await;
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(sim.get(REPO_KEYS, Auth::Bearer(&token)).await.status, StatusCode::UNAUTHORIZED, "a deleted consumer's tokens die with it");

    assert_eq!(sim.inspect(Method::GET, "/_sim/nope", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(sim.inspect(Method::GET, "/_sim/healthz", None).await.status, StatusCode::OK);
}

#[test]
fn a_bad_config_fails_fast_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("bad.yaml");
    std::fs::write(&path, "workspaces: [{slug: acme, repositories: [{slug: api, project: NOPE}]}]").expect("write");
    let out = Command::new(SIM).arg("--config").arg(&path).output().expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOPE"));
}
