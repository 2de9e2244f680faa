//! The simulator's configuration file (YAML, camelCase keys).
//!
//! Everything a test needs to describe "a Bitbucket Cloud account" lives here: the
//! workspaces with their repositories and projects, the credentials that may call the
//! API, the rate limit and the faults to inject.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SimError;

/// Bitbucket's documented default page size.
pub const DEFAULT_PAGELEN: u32 = 10;
/// Bitbucket's documented maximum page size.
pub const MAX_PAGELEN: u32 = 100;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default)]
    pub workspaces: Vec<WorkspaceConfig>,
    /// Atlassian API tokens, used with HTTP Basic `email:token`.
    #[serde(default)]
    pub api_tokens: Vec<ApiTokenConfig>,
    /// OAuth consumers allowed to use the client_credentials grant.
    #[serde(default)]
    pub oauth_consumers: Vec<OAuthConsumerConfig>,
    /// Repository/project/workspace access tokens (Bearer). Deploy-key endpoints refuse them.
    #[serde(default)]
    pub access_tokens: Vec<AccessTokenConfig>,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Default page size of list endpoints; `None` means Bitbucket's 10.
    #[serde(default)]
    pub pagelen: Option<u32>,
    #[serde(default)]
    pub faults: FaultConfig,
    /// Answers as the real service may give them (off by default).
    #[serde(default)]
    pub deploy_key_variants: super::variants::DeployKeyVariants,
    /// How errors are worded and shaped: as documented, or as the real service answers.
    #[serde(default)]
    pub error_variants: ErrorVariants,
    /// Seed of the fault-injection RNG, so that a run can be replayed. Random when unset.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Where state is persisted; the `--state` flag overrides it.
    #[serde(default)]
    pub state_path: Option<PathBuf>,
    /// How many recent requests `GET /_sim/requests` keeps; default 1000.
    #[serde(default)]
    pub request_log_size: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceConfig {
    pub slug: String,
    /// `{...}` form; derived from the slug when unset.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub repositories: Vec<RepositoryConfig>,
    #[serde(default)]
    pub projects: Vec<ProjectConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryConfig {
    pub slug: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Key of the project the repository belongs to (must be listed under `projects`).
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectConfig {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiTokenConfig {
    pub email: String,
    pub token: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Shown as the `display_name` of the account that added a key.
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuthConsumerConfig {
    pub key: String,
    pub secret: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime of minted tokens in seconds (Bitbucket: 7200).
    #[serde(default = "default_expires_in")]
    pub expires_in: u64,
    /// Answer with the pre-2026-05-04 field name `scopes` instead of `scope`, to test
    /// clients that must accept both.
    #[serde(default)]
    pub legacy_scopes_field: bool,
    /// Not marked private in Bitbucket: client_credentials is refused with Bitbucket's
    /// "marked as \"public\"" description.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// The workspace that owns the consumer (e.g. someone's personal workspace). Since
    /// 2026-05-04 its tokens act as that workspace's app user: every other workspace
    /// answers 403. Unset: the consumer reaches every workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// Switches between the documented answers and the real service's variants
/// (shared/bitbucket-cloud/FACTS.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorVariants {
    /// Every `/2.0/` error body carries `error.detail` as a JSON object.
    #[serde(default)]
    pub detail_as_object: bool,
    #[serde(default)]
    pub scope_errors: ScopeErrors,
    /// The code of the token endpoint's answer to bad or missing client credentials.
    #[serde(default)]
    pub oauth_client_error: OAuthClientError,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScopeErrors {
    /// The message names the missing scopes; `detail` is a string (as the spec's schema).
    #[default]
    Documented,
    /// Bitbucket's answer: a generic message and `detail: {"required": [...], "granted": [...]}`.
    Real,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OAuthClientError {
    /// RFC 6749's code.
    #[default]
    #[serde(rename = "invalid_client")]
    InvalidClient,
    /// What bitbucket.org answers.
    #[serde(rename = "unauthorized_client")]
    UnauthorizedClient,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessTokenConfig {
    pub token: String,
    /// How the request log names this token; default `access-token-N` (N from 1).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_requests_per_window")]
    pub requests_per_window: u64,
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultConfig {
    /// Added to every API answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability of a 500/502/503 instead of the real answer.
    #[serde(default)]
    pub error_rate: f64,
    /// Probability that the answer is held back `timeoutMs` (after the request took effect).
    #[serde(default)]
    pub timeout_rate: f64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Probability of a 429 although the credential is under its budget (Bitbucket's bursts).
    #[serde(default)]
    pub rate_limit_burst_rate: f64,
    /// When set, `next` links of deploy-key pages point at `http://127.0.0.1:{port}`
    /// instead of the simulator: a hostile or broken server steering the client elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_next_port: Option<u16>,
}

fn default_expires_in() -> u64 {
    7200
}
fn default_requests_per_window() -> u64 {
    1000
}
fn default_window_seconds() -> u64 {
    3600
}
fn default_timeout_ms() -> u64 {
    30_000
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { requests_per_window: default_requests_per_window(), window_seconds: default_window_seconds() }
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            timeout_rate: 0.0,
            timeout_ms: default_timeout_ms(),
            rate_limit_burst_rate: 0.0,
            foreign_next_port: None,
        }
    }
}

// Hand-written Debug impls: a config dumped into a log line must not leak a secret.
impl fmt::Debug for ApiTokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiTokenConfig")
            .field("email", &self.email)
            .field("token", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("display_name", &self.display_name)
            .finish()
    }
}

impl fmt::Debug for OAuthConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConsumerConfig")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("expires_in", &self.expires_in)
            .field("legacy_scopes_field", &self.legacy_scopes_field)
            .field("public", &self.public)
            .field("workspace", &self.workspace)
            .finish()
    }
}

impl fmt::Debug for AccessTokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenConfig").field("name", &self.name).field("token", &"<redacted>").finish()
    }
}

impl SimConfig {
    pub fn from_yaml(text: &str) -> Result<Self, SimError> {
        let config: Self = serde_saphyr::from_str(text).map_err(|e| SimError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ReadConfig { path: path.to_path_buf(), source })?;
        Self::from_yaml(&text)
    }

    pub fn pagelen(&self) -> u32 {
        self.pagelen.unwrap_or(DEFAULT_PAGELEN)
    }

    pub fn request_log_size(&self) -> usize {
        self.request_log_size.unwrap_or(1000)
    }

    /// Rejects configurations that would make the simulator ambiguous (two repositories
    /// with the same slug) or that reference something undefined.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |msg: String| Err(SimError::Config(msg));
        let pagelen = self.pagelen();
        if !(1..=MAX_PAGELEN).contains(&pagelen) {
            return bad(format!("pagelen must be between 1 and {MAX_PAGELEN}, got {pagelen}"));
        }
        let mut workspace_slugs = std::collections::HashSet::new();
        for ws in &self.workspaces {
            if !is_path_segment(&ws.slug) {
                return bad(format!("workspace slug {:?} is not a valid URL segment", ws.slug));
            }
            if !workspace_slugs.insert(ws.slug.as_str()) {
                return bad(format!("workspace {:?} is listed twice", ws.slug));
            }
            let mut project_keys = std::collections::HashSet::new();
            for project in &ws.projects {
                if !is_path_segment(&project.key) {
                    return bad(format!("project key {:?} is not a valid URL segment", project.key));
                }
                if !project_keys.insert(project.key.as_str()) {
                    return bad(format!("project {}/{} is listed twice", ws.slug, project.key));
                }
            }
            let mut repo_slugs = std::collections::HashSet::new();
            for repo in &ws.repositories {
                if !is_path_segment(&repo.slug) {
                    return bad(format!("repository slug {:?} is not a valid URL segment", repo.slug));
                }
                if !repo_slugs.insert(repo.slug.as_str()) {
                    return bad(format!("repository {}/{} is listed twice", ws.slug, repo.slug));
                }
                if let Some(project) = &repo.project
                    && !project_keys.contains(project.as_str())
                {
                    return bad(format!(
                        "repository {}/{} names project {project:?}, which is not listed under the workspace's projects",
                        ws.slug, repo.slug
                    ));
                }
            }
        }
        let mut emails = std::collections::HashSet::new();
        for token in &self.api_tokens {
            if token.email.is_empty() || token.token.is_empty() {
                return bad("apiTokens entries need a non-empty email and token".into());
            }
            if !emails.insert(token.email.as_str()) {
                return bad(format!("api token email {:?} is listed twice", token.email));
            }
        }
        validate_consumers(&self.oauth_consumers)?;
        if self.access_tokens.iter().any(|t| t.token.is_empty()) {
            return bad("accessTokens entries need a non-empty token".into());
        }
        validate_rate_limit(&self.rate_limit)?;
        validate_faults(&self.faults)?;
        self.deploy_key_variants.validate().map_err(SimError::Config)?;
        Ok(())
    }
}

pub fn validate_consumers(consumers: &[OAuthConsumerConfig]) -> Result<(), SimError> {
    let mut keys = std::collections::HashSet::new();
    for consumer in consumers {
        if consumer.key.is_empty() || consumer.secret.is_empty() {
            return Err(SimError::Config("oauthConsumers entries need a non-empty key and secret".into()));
        }
        if !keys.insert(consumer.key.as_str()) {
            return Err(SimError::Config(format!("oauth consumer {:?} is listed twice", consumer.key)));
        }
    }
    Ok(())
}

pub fn validate_rate_limit(limit: &RateLimitConfig) -> Result<(), SimError> {
    if limit.window_seconds == 0 {
        return Err(SimError::Config("rateLimit.windowSeconds must be at least 1".into()));
    }
    Ok(())
}

pub fn validate_faults(faults: &FaultConfig) -> Result<(), SimError> {
    for (name, rate) in
        [("errorRate", faults.error_rate), ("timeoutRate", faults.timeout_rate), ("rateLimitBurstRate", faults.rate_limit_burst_rate)]
    {
        // `contains` is false for NaN, so NaN is rejected too.
        if !(0.0..=1.0).contains(&rate) {
            return Err(SimError::Config(format!("faults.{name} must be between 0.0 and 1.0, got {rate}")));
        }
    }
    Ok(())
}

/// Slugs and keys become URL path segments; refusing `/` and friends keeps routing
/// unambiguous.
fn is_path_segment(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let config = SimConfig::from_yaml(
            r#"
workspaces:
  - slug: acme
    repositories: [{slug: api, project: CORE}, {slug: web, project: CORE}, {slug: tools}]
    projects: [{key: CORE}]
apiTokens:
  - {email: admin@acme.test, token: tok-admin, scopes: [admin:repository:bitbucket]}
oauthConsumers:
  - {key: ck, secret: cs, scopes: [repository:admin, project:admin], expiresIn: 7200}
accessTokens: [ {token: repo-access-token} ]
rateLimit: {requestsPerWindow: 1000, windowSeconds: 3600}
pagelen: 10
faults: {latencyMs: 0, errorRate: 0.0, timeoutRate: 0.0, timeoutMs: 30000, rateLimitBurstRate: 0.0}
"#,
        )
        .expect("example parses");
        assert_eq!(config.workspaces[0].repositories.len(), 3);
        assert_eq!(config.oauth_consumers[0].expires_in, 7200);
    }

    #[test]
    fn unknown_project_is_rejected() {
        let err = SimConfig::from_yaml("workspaces: [{slug: acme, repositories: [{slug: api, project: NOPE}]}]").expect_err("must fail");
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[test]
    fn typo_in_a_field_is_rejected() {
        assert!(SimConfig::from_yaml("pagelenn: 3").is_err());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let config = SimConfig::from_yaml(
            "apiTokens: [{email: a@b, token: s3cret}]\noauthConsumers: [{key: k, secret: s3cret}]\naccessTokens: [{token: s3cret}]",
        )
        .expect("parses");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    proptest::proptest! {
        #[test]
        fn any_config_text_never_panics(text in ".*") {
            let _ = SimConfig::from_yaml(&text);
        }

        #[test]
        fn any_yaml_shaped_config_never_panics(
            slug in "[a-z]{0,5}",
            repo in "[a-zA-Z/]{0,5}",
            project in proptest::option::of("[A-Z]{0,3}"),
            n in proptest::prelude::any::<i64>(),
        ) {
            let text = format!(
                "workspaces:\n  - slug: {slug}\n    repositories: [{{slug: {repo:?}, project: {project:?}}}]\npagelen: {n}\nrateLimit: {{requestsPerWindow: {n}, windowSeconds: {n}}}\n"
            );
            let _ = SimConfig::from_yaml(&text);
        }
    }
}
