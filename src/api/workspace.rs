use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SecretRef;

pub const DEFAULT_API_URL: &str = "https://api.bitbucket.org/2.0";
pub const DEFAULT_SITE_URL: &str = "https://bitbucket.org";
pub const DEFAULT_SSH_HOST: &str = "bitbucket.org";
pub const DEFAULT_REQUESTS_PER_HOUR: u32 = 900;
/// bitbucket.org's published SSH host keys (after the June 2023 RSA rotation).
pub const DEFAULT_KNOWN_HOSTS: &str = "bitbucket.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO
bitbucket.org ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPIQmuzMBuKdWeF4+a2sjSSpBK0iqitSQ+5BM9KhpexuGt20JpTVM7u5BDZngncgrqDMbWdxMWWOGtZ9UgbqgZE=
bitbucket.org ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQDQeJzhupRu0u0cdegZIa8e86EG2qOCsIsD1Xw0xSeiPDlCr7kq97NLmMbpKTX6Esc30NuoqEEHCuc7yWtwp8dI76EEEB1VqY9QJq6vk+aySyboD5QF61I/1WeTwu+deCbgKMGbUijeXhtfbxSxm6JwGrXrhBdofTsbKRUsrN1WoNgUa8uqN1Vx6WAJw1JHPhglEGGHea6QICwJOAr/6mrui/oB7pkaWKHj3z7d1IC4KWLtY47elvjbaTlkN04Kc/5LFEirorGYVbt15kAUlqGM65pk6ZBxtaO3+30LVlORZkxOh+LKL/BvbZ/iRNhItLqNyieoQj/uh/7Iv4uyH/cV/0b4WDSd3DptigWq84lJubb9t/DnZlrJazxyDCulTmKdOR7vs9gMTo+uoIrPSb8ScTtvw65+odKAlBj59dhnVp9zd7QUojOpXlL62Aw56U4oO+FALuevvMjiWeavKhJqlR7i5n9srYcrNV7ttmDw7kf/97P5zauIhxcjX+xHv4M=
";

fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}
fn default_site_url() -> String {
    DEFAULT_SITE_URL.into()
}
fn default_ssh_host() -> String {
    DEFAULT_SSH_HOST.into()
}
fn default_allowed_repositories() -> Vec<String> {
    vec!["*".into()]
}
fn default_requests_per_hour() -> u32 {
    DEFAULT_REQUESTS_PER_HOUR
}

/// How the operator authenticates to Bitbucket. Exactly one method is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.apiToken) ? 1 : 0) + (has(self.oauthConsumer) ? 1 : 0) == 1").message("exactly one of auth.apiToken or auth.oauthConsumer must be set"))]
pub struct WorkspaceAuth {
    /// An Atlassian API token: the Secret holds keys `email` and `token` (HTTP Basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<SecretSource>,
    /// A Bitbucket OAuth consumer: the Secret holds keys `key` and `secret` (client_credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_consumer: Option<SecretSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSource {
    pub secret_ref: SecretRef,
}

/// Which namespaces may use a `ClusterBitbucketWorkspace`. Empty admits nobody.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespaces admitted by name (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub names: Vec<String>,
    /// Namespaces admitted by their labels (at most 64 labels and 16 expressions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

macro_rules! workspace_spec {
    ($(#[$attr:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$attr])*
        #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The workspace slug, as in bitbucket.org/<workspace>/.
            #[schemars(length(min = 1, max = 62), regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,61}$"))]
            pub workspace: String,
            /// Base URL of the REST API.
            #[serde(rename = "apiURL", default = "default_api_url")]
            #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
            pub api_url: String,
            /// Base URL of the site; the OAuth token endpoint is {siteURL}/site/oauth2/access_token.
            #[serde(rename = "siteURL", default = "default_site_url")]
            #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
            pub site_url: String,
            /// Host name (optionally [host]:port) used in known_hosts and clone URLs.
            #[serde(default = "default_ssh_host")]
            #[schemars(length(min = 1, max = 253))]
            // It lands in known_hosts and clone URLs, where a line break or space adds a line or an argument.
            #[x_kube(validation = Rule::new("!self.matches('[[:cntrl:] ]')").message("sshHost must be a host name or host:port without spaces or control characters"))]
            pub ssh_host: String,
            /// known_hosts lines for sshHost (at most 16384 characters). Default: bitbucket.org's
            /// published host keys.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 16384))]
            pub known_hosts: Option<String>,
            pub auth: WorkspaceAuth,
            /// Glob patterns of repository slugs and project keys this workspace may be used for
            /// (at most 100, each at most 128 characters).
            #[serde(default = "default_allowed_repositories")]
            #[schemars(length(max = 100), inner(length(min = 1, max = 128)))]
            pub allowed_repositories: Vec<String>,
            /// The operator's own request budget for this credential (Bitbucket allows 1,000/h).
            #[serde(default = "default_requests_per_hour")]
            #[schemars(range(min = 1, max = 100000))]
            pub requests_per_hour: u32,
            $($extra)*
        }
    };
}

workspace_spec!(
    /// How the operator talks to one Bitbucket workspace, from one namespace.
    #[derive(CustomResource)]
    #[kube(
        group = "bitbucket.credentials.dev",
        version = "v1alpha1",
        kind = "BitbucketWorkspace",
        doc = "How the operator reaches one Bitbucket workspace (URLs, SSH host, credentials) for the objects of its own namespace.",
        namespaced,
        shortname = "bbws",
        category = "bitbucket",
        status = "WorkspaceStatus",
        printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
        printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
        printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    BitbucketWorkspaceSpec {}
);

workspace_spec!(
    /// How the operator talks to one Bitbucket workspace, for the namespaces it admits.
    #[derive(CustomResource)]
    #[kube(
        group = "bitbucket.credentials.dev",
        version = "v1alpha1",
        kind = "ClusterBitbucketWorkspace",
        doc = "How the operator reaches one Bitbucket workspace (URLs, SSH host, credentials) for the namespaces it admits; its Secret lives in the operator's namespace.",
        shortname = "cbbws",
        category = "bitbucket",
        status = "WorkspaceStatus",
        printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
        printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
        printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    ClusterBitbucketWorkspaceSpec {
        /// Namespaces whose objects may reference this workspace. Default: none.
        #[serde(default)]
        pub allowed_namespaces: AllowedNamespaces,
    }
);

/// The settings both workspace kinds share, borrowed from either.
#[derive(Clone, Debug)]
pub struct WorkspaceSettings<'a> {
    pub workspace: &'a str,
    pub api_url: &'a str,
    pub site_url: &'a str,
    pub ssh_host: &'a str,
    pub known_hosts: &'a str,
    pub auth: &'a WorkspaceAuth,
    pub allowed_repositories: &'a [String],
    pub requests_per_hour: u32,
}

macro_rules! settings_of {
    ($spec:ident) => {
        impl $spec {
            pub fn settings(&self) -> WorkspaceSettings<'_> {
                WorkspaceSettings {
                    workspace: &self.workspace,
                    api_url: &self.api_url,
                    site_url: &self.site_url,
                    ssh_host: &self.ssh_host,
                    known_hosts: self.known_hosts.as_deref().unwrap_or(DEFAULT_KNOWN_HOSTS),
                    auth: &self.auth,
                    allowed_repositories: &self.allowed_repositories,
                    requests_per_hour: self.requests_per_hour,
                }
            }
        }
    };
}
settings_of!(BitbucketWorkspaceSpec);
settings_of!(ClusterBitbucketWorkspaceSpec);

impl WorkspaceSettings<'_> {
    /// Whether a repository slug or project key may be used with this workspace.
    pub fn allows(&self, target: &str) -> bool {
        self.allowed_repositories.iter().any(|p| glob_match(p, target))
    }
}

/// Shell-style glob with `*` and `?`, the subset `allowedRepositories` documents.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether the workspace's credentials work.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// `Ready` once the credentials are verified, else its reason (docs/troubleshooting.md),
    /// and `Degraded` while Bitbucket fails a re-check of credentials verified before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match("*", "api"));
        assert!(glob_match("api-*", "api-gateway"));
        assert!(!glob_match("api-*", "web"));
        assert!(glob_match("a?i", "api"));
        assert!(glob_match("CORE", "CORE"));
        assert!(!glob_match("CORE", "CORE2"));
        assert!(glob_match("*-svc-*", "team-svc-a"));
    }
}
