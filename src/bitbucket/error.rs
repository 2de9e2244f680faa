use std::time::Duration;

use thiserror::Error;

/// Every way a Bitbucket call can fail, told apart so the user learns what to do.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    #[error("Bitbucket rejected the credentials (401): {0}")]
    Unauthorized(String),
    #[error(
        "Bitbucket refused this authentication mechanism (403): {0}. Repository, project and workspace access tokens cannot manage access keys; use an API token or an OAuth consumer"
    )]
    AuthMechanismRefused(String),
    #[error("Bitbucket denied the request (403): {0}")]
    Forbidden(String),
    /// A 403 naming the scopes the credential lacks (from the error's structured
    /// `detail`, or from the scopes an OAuth token was granted).
    #[error(
        "the credentials lack the Bitbucket scopes {} (403; required: {}; granted: {}): grant them to the API token or OAuth consumer, or use one that has them",
        missing.join(", "), list(required), list(granted)
    )]
    MissingScopes { missing: Vec<String>, required: Vec<String>, granted: Vec<String> },
    /// An OAuth consumer whose token has the scopes this call needs is refused (403): since
    /// 2026-05-04 a client_credentials token acts as the consumer's app user, which reaches
    /// only the workspace that owns the consumer.
    #[error(
        "Bitbucket refused the OAuth consumer's token in workspace {workspace} (403: {message}) although the token has the needed scopes. Since 2026-05-04 a client_credentials token acts as the consumer's app user, so a consumer owned by another workspace (e.g. a personal one) cannot reach {workspace}: create the OAuth consumer under workspace {workspace}'s settings"
    )]
    ConsumerNotInWorkspace { workspace: String, message: String },
    #[error("repository {0} not found in Bitbucket (or not visible to these credentials)")]
    RepositoryNotFound(String),
    #[error("project {0} not found in Bitbucket (or not visible to these credentials)")]
    ProjectNotFound(String),
    #[error("workspace {0} not found in Bitbucket (or not visible to these credentials)")]
    WorkspaceNotFound(String),
    #[error("access key {0} not found")]
    KeyNotFound(i64),
    /// A 404 where a key of this object is on record: the target was deleted or these
    /// credentials lost access to it; Bitbucket's answer is the same for both.
    #[error(
        "{0} answers 404 to these credentials although an access key is recorded there: it was deleted, or the credentials can no longer see it. The key stays on record and its removal is retried; give the credentials access to it again"
    )]
    TargetNotVisible(String),
    #[error("Bitbucket says this key is already added: {0}")]
    DuplicateKey(String),
    #[error("Bitbucket rejected the key: {0}")]
    InvalidKey(String),
    #[error("Bitbucket rejected the request (400): {0}")]
    BadRequest(String),
    /// Bitbucket answered 429 to this credential (now or a moment ago): no request with it
    /// goes out for `retry_after`.
    #[error(
        "Bitbucket answered 429 (rate limit) to this credential: every request with it pauses for {}s (a cool-down of 1 min, doubling up to 15 min while 429s continue). Lower requestsPerHour if this repeats",
        retry_after.as_secs().max(1)
    )]
    RateLimited { retry_after: Duration },
    /// The operator's own budget for the credential (`requestsPerHour`) is spent: nothing
    /// was sent. Retry no sooner than `retry_after`.
    #[error("the operator's own request budget for this credential (requestsPerHour) is spent; the next request may go in {}s", retry_after.as_secs().max(1))]
    BudgetExhausted { retry_after: Duration },
    /// A URL outside `--allowed-bitbucket-urls`: nothing was sent.
    #[error(
        "Bitbucket URL {url} is not allowed: {why}. The operator allows {allowed:?}; its administrator can add a URL with --allowed-bitbucket-urls"
    )]
    UrlNotAllowed { url: String, why: String, allowed: Vec<String> },
    #[error("Bitbucket server error ({status})")]
    Server { status: u16 },
    #[error("Bitbucket did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach Bitbucket: {0}")]
    Transport(String),
    #[error("OAuth token endpoint refused the consumer ({error}): {description}")]
    OAuth { error: String, description: String },
    /// `invalid_client` (RFC 6749) or `unauthorized_client` (what Bitbucket answers): the
    /// same failure, a wrong or unknown consumer key or secret.
    #[error(
        "OAuth token endpoint refused the consumer key and secret ({error}: {description}): check the `key` and `secret` of the consumer Secret against the OAuth consumer in Bitbucket's workspace settings"
    )]
    InvalidClient { error: String, description: String },
    #[error(
        "OAuth token endpoint refused the consumer ({error}: {description}): the consumer is marked public; edit it in Bitbucket's workspace settings, tick \"This is a private consumer\", and save"
    )]
    ConsumerNotPrivate { error: String, description: String },
    #[error("unexpected answer from Bitbucket: {0}")]
    Decode(String),
}

impl Error {
    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::BudgetExhausted { .. }
                | Error::Server { .. }
                | Error::Timeout(_)
                | Error::Transport(_)
                | Error::TargetNotVisible(_)
        )
    }

    /// How long to wait before the same call can be made, when that is known (the
    /// operator's own budget knows; after Bitbucket's 429, which carries no Retry-After,
    /// the credential's cool-down).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::BudgetExhausted { retry_after } | Error::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// A 429, or the operator's own budget: waiting, not retrying, is the answer.
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, Error::RateLimited { .. } | Error::BudgetExhausted { .. })
    }

    /// The condition reason and metric label for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Unauthorized(_) => "Unauthorized",
            Error::AuthMechanismRefused(_) => "AuthMechanismRefused",
            Error::Forbidden(_) => "Forbidden",
            Error::MissingScopes { .. } => "MissingScopes",
            Error::ConsumerNotInWorkspace { .. } => "ConsumerNotInWorkspace",
            Error::RepositoryNotFound(_) => "RepositoryNotFound",
            Error::ProjectNotFound(_) => "ProjectNotFound",
            Error::WorkspaceNotFound(_) => "WorkspaceNotFound",
            Error::KeyNotFound(_) => "KeyNotFound",
            Error::TargetNotVisible(_) => "TargetNotVisible",
            Error::DuplicateKey(_) => "DuplicateKey",
            Error::InvalidKey(_) => "InvalidKey",
            Error::BadRequest(_) => "BadRequest",
            Error::RateLimited { .. } | Error::BudgetExhausted { .. } => "RateLimited",
            Error::UrlNotAllowed { .. } => "URLNotAllowed",
            Error::Server { .. } => "BitbucketUnavailable",
            Error::Timeout(_) => "BitbucketTimeout",
            Error::Transport(_) => "BitbucketUnreachable",
            Error::InvalidClient { .. } => "InvalidClient",
            Error::ConsumerNotPrivate { .. } => "ConsumerNotPrivate",
            Error::OAuth { error, .. } if error == "invalid_grant" => "InvalidGrant",
            Error::OAuth { .. } => "OAuthError",
            Error::Decode(_) => "UnexpectedResponse",
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}
