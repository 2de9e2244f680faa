//! Every reason a `Ready` condition can carry, what it means and what to do about it:
//! the source of docs/troubleshooting.md (a test keeps the page and this table in step,
//! and fails when an error gains a reason the table does not explain).

/// One condition reason.
pub struct Reason {
    pub name: &'static str,
    /// `True` or `False`: the status `Ready` has with this reason.
    pub ready: bool,
    /// The kinds that report it.
    pub kinds: &'static str,
    pub meaning: &'static str,
    pub fix: &'static str,
}

const KEY: &str = "BitbucketAccessKey";
const ALL: &str = "all four";
const USERS: &str = "BitbucketAccessKey, BitbucketOAuthConsumer";
const BB: &str = "all four (from Bitbucket)";

pub const REASONS: &[Reason] = &[
    Reason {
        name: "Registered",
        ready: true,
        kinds: KEY,
        meaning: "The key in the Secret is registered on every repository and project of the spec.",
        fix: "Nothing to do.",
    },
    Reason {
        name: "TokenIssued",
        ready: true,
        kinds: "BitbucketOAuthConsumer",
        meaning: "The Secret holds an access token; it is renewed before it expires.",
        fix: "Nothing to do.",
    },
    Reason {
        name: "Verified",
        ready: true,
        kinds: "BitbucketWorkspace, ClusterBitbucketWorkspace",
        meaning: "The credentials in the auth Secret authenticate against the workspace.",
        fix: "Nothing to do.",
    },
    Reason {
        name: "Unauthorized",
        ready: false,
        kinds: BB,
        meaning: "Bitbucket rejected the credentials (401).",
        fix: "Check the email and API token (or consumer key and secret) in the auth Secret; the token may have expired or been revoked.",
    },
    Reason {
        name: "AuthMechanismRefused",
        ready: false,
        kinds: BB,
        meaning: "A repository, project or workspace access token was used; those cannot manage access keys.",
        fix: "Use an Atlassian API token or an OAuth consumer (docs/choosing-credentials.md).",
    },
    Reason {
        name: "Forbidden",
        ready: false,
        kinds: BB,
        meaning: "Bitbucket denied the request (403) without naming missing scopes.",
        fix: "Give the account admin rights on the repository or project, or use credentials that have them.",
    },
    Reason {
        name: "MissingScopes",
        ready: false,
        kinds: BB,
        meaning: "The credentials lack Bitbucket scopes; the message names the missing, required and granted scopes.",
        fix: "Grant the missing scopes to the API token or OAuth consumer (or create one that has them) and update the auth Secret.",
    },
    Reason {
        name: "ConsumerNotInWorkspace",
        ready: false,
        kinds: BB,
        meaning: "The OAuth consumer's token has the scopes but is refused: since 2026-05-04 tokens act as the consumer's app user, which reaches only the workspace that owns the consumer.",
        fix: "Create the OAuth consumer under the target workspace's settings (not a personal workspace).",
    },
    Reason {
        name: "RepositoryNotFound",
        ready: false,
        kinds: USERS,
        meaning: "A repository of the spec does not exist, or the credentials cannot see it.",
        fix: "Check the repository slug (lower case, as in its URL) and the account's access to it.",
    },
    Reason {
        name: "ProjectNotFound",
        ready: false,
        kinds: USERS,
        meaning: "A project of the spec does not exist, or the credentials cannot see it.",
        fix: "Check the project key (as in Bitbucket, usually upper case) and the account's access to it.",
    },
    Reason {
        name: "WorkspaceNotFound",
        ready: false,
        kinds: ALL,
        meaning: "The workspace object named by workspaceRef does not exist, or Bitbucket does not know the workspace slug.",
        fix: "Create the BitbucketWorkspace or ClusterBitbucketWorkspace, or correct workspaceRef or spec.workspace.",
    },
    Reason {
        name: "KeyNotFound",
        ready: false,
        kinds: KEY,
        meaning: "An access key the operator had on record is not in Bitbucket when it was read back.",
        fix: "Usually repaired by the next reconcile (the key is registered again); if it repeats, check who deletes keys.",
    },
    Reason {
        name: "TargetNotVisible",
        ready: false,
        kinds: KEY,
        meaning: "A repository or project that holds a key of this object answers 404: it was deleted, or the credentials lost access. The key stays on record and its removal is retried.",
        fix: "Give the credentials access again; if the repository is really gone, set deletionPolicy: Retain or remove the finalizer.",
    },
    Reason {
        name: "DuplicateKey",
        ready: false,
        kinds: KEY,
        meaning: "Bitbucket says the key is already added, and the target's listing does not show it (it may be on another repository of the workspace).",
        fix: "Rotate the key (annotate bitbucket.credentials.dev/rotate) or remove the other copy in Bitbucket.",
    },
    Reason {
        name: "InvalidKey",
        ready: false,
        kinds: KEY,
        meaning: "Bitbucket rejected the public key.",
        fix: "Use another keyType (ed25519 is accepted everywhere) and rotate.",
    },
    Reason {
        name: "BadRequest",
        ready: false,
        kinds: BB,
        meaning: "Bitbucket rejected the request (400); the message carries its text.",
        fix: "Read the message; a label or key Bitbucket refuses can be changed in the spec.",
    },
    Reason {
        name: "RateLimited",
        ready: false,
        kinds: BB,
        meaning: "Either the operator's own budget for the credential (requestsPerHour) is spent, or Bitbucket answered 429 and every request with the credential pauses (1 min, doubling to 15 min). The message says when it retries.",
        fix: "Wait; if it repeats, lower the number of objects per credential, spread them over more credentials, or lower requestsPerHour below Bitbucket's limit.",
    },
    Reason {
        name: "URLNotAllowed",
        ready: false,
        kinds: "BitbucketWorkspace, ClusterBitbucketWorkspace",
        meaning: "apiURL or siteURL lies outside the operator's --allowed-bitbucket-urls; nothing was sent there.",
        fix: "Use Bitbucket Cloud's URLs, or ask the operator's administrator to allow the URL.",
    },
    Reason {
        name: "BitbucketUnavailable",
        ready: false,
        kinds: BB,
        meaning: "Bitbucket answered 5xx.",
        fix: "Retried with backoff; check status.atlassian.com if it lasts.",
    },
    Reason {
        name: "BitbucketTimeout",
        ready: false,
        kinds: BB,
        meaning: "Bitbucket did not answer within --bitbucket-timeout.",
        fix: "Retried with backoff; check the network path (proxy, firewall) if it lasts.",
    },
    Reason {
        name: "BitbucketUnreachable",
        ready: false,
        kinds: BB,
        meaning: "The connection to Bitbucket failed (DNS, TCP or TLS).",
        fix: "Check egress from the operator's namespace to api.bitbucket.org and bitbucket.org (NetworkPolicy, proxy, DNS).",
    },
    Reason {
        name: "InvalidClient",
        ready: false,
        kinds: BB,
        meaning: "The token endpoint rejected the OAuth consumer's key or secret (invalid_client or unauthorized_client).",
        fix: "Check the key and secret in the consumer Secret; a secret reset in Bitbucket needs the Secret updated.",
    },
    Reason {
        name: "ConsumerNotPrivate",
        ready: false,
        kinds: BB,
        meaning: "The OAuth consumer is marked public; client_credentials needs a private consumer.",
        fix: "In Bitbucket, edit the consumer and mark it private (untick \"This is a public consumer\").",
    },
    Reason {
        name: "InvalidGrant",
        ready: false,
        kinds: BB,
        meaning: "The token endpoint refused the grant (invalid_grant).",
        fix: "Check that the consumer has a callback URL and the needed permissions in Bitbucket.",
    },
    Reason {
        name: "OAuthError",
        ready: false,
        kinds: BB,
        meaning: "Another OAuth error from the token endpoint; the message carries its code and description.",
        fix: "Read the message; check the consumer's settings in Bitbucket.",
    },
    Reason {
        name: "UnexpectedResponse",
        ready: false,
        kinds: BB,
        meaning: "Bitbucket answered something the operator cannot read, or a link that would leave the workspace's URLs.",
        fix: "Retried later; report it with the message if it lasts.",
    },
    Reason {
        name: "OperatorForbidden",
        ready: false,
        kinds: ALL,
        meaning: "The Kubernetes API refused the operator a call (403): its ServiceAccount lacks a permission it needs; the message names the verb and resource.",
        fix: "Install the CRDs and RBAC of the chart version that matches the operator's image (`helm upgrade`); docs/install.md lists every permission. Retried with backoff.",
    },
    Reason {
        name: "KubernetesError",
        ready: false,
        kinds: ALL,
        meaning: "A call to the Kubernetes API failed.",
        fix: "Retried with backoff; check the operator's RBAC (docs/install.md) and the API server's health.",
    },
    Reason {
        name: "WorkspaceNotReady",
        ready: false,
        kinds: USERS,
        meaning: "The workspace object this refers to is not Ready; the message carries its reason.",
        fix: "Fix the workspace first (kubectl describe it); this object follows.",
    },
    Reason {
        name: "WorkspaceNotAllowed",
        ready: false,
        kinds: USERS,
        meaning: "The ClusterBitbucketWorkspace does not admit this namespace.",
        fix: "Ask its owner to add the namespace (or a matching selector) to spec.allowedNamespaces.",
    },
    Reason {
        name: "RepositoryNotAllowed",
        ready: false,
        kinds: KEY,
        meaning: "A repository or project of the spec is outside the workspace's allowedRepositories.",
        fix: "Use an allowed one, or ask the workspace's owner to allow it.",
    },
    Reason {
        name: "SecretNotFound",
        ready: false,
        kinds: ALL,
        meaning: "The auth or consumer Secret the object names does not exist.",
        fix: "Create it with the keys the message lists.",
    },
    Reason {
        name: "SecretInvalid",
        ready: false,
        kinds: ALL,
        meaning: "The auth or consumer Secret lacks a key.",
        fix: "Add the key the message names.",
    },
    Reason {
        name: "SecretConflict",
        ready: false,
        kinds: USERS,
        meaning: "A Secret of the output name exists and belongs to something else; it is left alone.",
        fix: "Delete or rename that Secret, or choose another spec.secret.name.",
    },
    Reason {
        name: "KeyGenerationFailed",
        ready: false,
        kinds: KEY,
        meaning: "A key could not be generated, or the Secret holds a private key that cannot be read.",
        fix: "Retried; a hand-edited Secret is restored with a new key.",
    },
    Reason {
        name: "FinalizerError",
        ready: false,
        kinds: ALL,
        meaning: "Adding or removing the operator's finalizer failed.",
        fix: "Retried with backoff; check the operator's RBAC on the kind.",
    },
    Reason {
        name: "InternalError",
        ready: false,
        kinds: ALL,
        meaning: "A bug in the operator (a reconcile panicked); the operator kept running.",
        fix: "Retried with backoff; please report it with the message and the operator's log.",
    },
    Reason {
        name: "ReconcileTimeout",
        ready: false,
        kinds: ALL,
        meaning: "One reconcile took longer than --reconcile-timeout and was stopped.",
        fix: "Retried; a slow Bitbucket or API server is the usual cause.",
    },
];

/// docs/troubleshooting.md.
pub fn render() -> String {
    let mut out = String::from(
        "# Troubleshooting: condition reasons\n\n\
         Every object reports a `Ready` condition. `kubectl get bitbucketaccesskeys` (or any of the four\n\
         kinds) shows its reason; `kubectl describe` shows the message, which names the repository,\n\
         Secret or scope concerned. Failures are retried with backoff (reasons that need someone to\n\
         change something are retried slowly), and every change of reason is also an Event.\n\
         `kubectl bitbucket status NAME` shows conditions, registrations and the latest Events on\n\
         one screen, and `kubectl bitbucket check WORKSPACE` names the scopes credentials lack\n\
         ([cli.md](cli.md)).\n\n\
         `Ready=True` means a consumer can rely on the Secret. A failure of Bitbucket itself\n\
         (5xx, timeouts, `RateLimited`) or a reconcile cut short (`ReconcileTimeout`) while the\n\
         Secret holds a working key or an unexpired token (for a workspace: while credentials\n\
         verified before are re-checked) leaves `Ready=True` and sets\n\
         `Degraded=True` with the reason below instead; `Degraded` goes away with the next\n\
         success. A change of the spec is not Ready until it is done.\n\n\
         This page is generated from the operator's error types (`src/controller/reasons.rs`);\n\
         a test fails when a reason is missing from it.\n\n\
         | Reason | Ready | Reported by | Meaning | What to do |\n\
         |---|---|---|---|---|\n",
    );
    for r in REASONS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            r.name,
            if r.ready { "True" } else { "False" },
            r.kinds,
            r.meaning.replace('|', "\\|"),
            r.fix.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::Error;
    use super::*;
    use crate::bitbucket::Error as Bb;
    use crate::keys::KeyError;

    /// One error of each kind. The matches have no wildcard: a new variant does not
    /// compile until it is listed here, and so in the table.
    fn every_bitbucket_error() -> Vec<Bb> {
        let s = || String::from("x");
        let bitbucket = vec![
            Bb::Unauthorized(s()),
            Bb::AuthMechanismRefused(s()),
            Bb::Forbidden(s()),
            Bb::MissingScopes { missing: vec![], required: vec![], granted: vec![] },
            Bb::ConsumerNotInWorkspace { workspace: s(), message: s() },
            Bb::RepositoryNotFound(s()),
            Bb::ProjectNotFound(s()),
            Bb::WorkspaceNotFound(s()),
            Bb::KeyNotFound(1),
            Bb::TargetNotVisible(s()),
            Bb::DuplicateKey(s()),
            Bb::InvalidKey(s()),
            Bb::BadRequest(s()),
            Bb::RateLimited { retry_after: Duration::ZERO },
            Bb::BudgetExhausted { retry_after: Duration::ZERO },
            Bb::UrlNotAllowed { url: s(), why: s(), allowed: vec![] },
            Bb::Server { status: 500 },
            Bb::Timeout(Duration::ZERO),
            Bb::Transport(s()),
            Bb::InvalidClient { error: s(), description: s() },
            Bb::ConsumerNotPrivate { error: s(), description: s() },
            Bb::OAuth { error: "invalid_grant".into(), description: s() },
            Bb::OAuth { error: s(), description: s() },
            Bb::Decode(s()),
        ];
        for e in &bitbucket {
            match e {
                Bb::Unauthorized(_)
                | Bb::AuthMechanismRefused(_)
                | Bb::Forbidden(_)
                | Bb::MissingScopes { .. }
                | Bb::ConsumerNotInWorkspace { .. }
                | Bb::RepositoryNotFound(_)
                | Bb::ProjectNotFound(_)
                | Bb::WorkspaceNotFound(_)
                | Bb::KeyNotFound(_)
                | Bb::TargetNotVisible(_)
                | Bb::DuplicateKey(_)
                | Bb::InvalidKey(_)
                | Bb::BadRequest(_)
                | Bb::RateLimited { .. }
                | Bb::BudgetExhausted { .. }
                | Bb::UrlNotAllowed { .. }
                | Bb::Server { .. }
                | Bb::Timeout(_)
                | Bb::Transport(_)
                | Bb::InvalidClient { .. }
                | Bb::ConsumerNotPrivate { .. }
                | Bb::OAuth { .. }
                | Bb::Decode(_) => {}
            }
        }
        bitbucket
    }

    /// One error of each kind, a Bitbucket error of each kind among them.
    fn every_error() -> Vec<Error> {
        let s = || String::from("x");
        let mut all: Vec<Error> = every_bitbucket_error().into_iter().map(|e| Error::bitbucket("t", e)).collect();
        all.extend([
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status { code: 403, ..Default::default() }))),
            Error::WorkspaceNotFound { kind: "BitbucketWorkspace", name: s(), hint: s() },
            Error::WorkspaceNotReady(s(), s()),
            Error::WorkspaceNotAllowed(s(), s()),
            Error::RepositoryNotAllowed(s(), vec![]),
            Error::AuthSecretNotFound { namespace: s(), name: s(), keys: "k" },
            Error::AuthSecretInvalid { namespace: s(), name: s(), key: s(), keys: "k" },
            Error::SecretConflict(s()),
            Error::Key(KeyError::Unreadable),
            Error::Finalizer(kube::Error::Api(Box::default())),
            Error::Internal(s()),
            Error::Deadline(Duration::ZERO),
        ]);
        for e in &all {
            match e {
                Error::Kube(_)
                | Error::Bitbucket { .. }
                | Error::WorkspaceNotFound { .. }
                | Error::WorkspaceNotReady(..)
                | Error::WorkspaceNotAllowed(..)
                | Error::RepositoryNotAllowed(..)
                | Error::AuthSecretNotFound { .. }
                | Error::AuthSecretInvalid { .. }
                | Error::SecretConflict(_)
                | Error::Key(_)
                | Error::Finalizer(_)
                | Error::Internal(_)
                | Error::Deadline(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_reason_an_error_can_give_is_explained() {
        let missing: Vec<&str> =
            every_error().iter().map(|e| e.reason()).filter(|r| !REASONS.iter().any(|known| known.name == *r)).collect();
        assert!(missing.is_empty(), "reasons missing from REASONS (and docs/troubleshooting.md): {missing:?}");
        let mut names: Vec<&str> = REASONS.iter().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REASONS.len(), "a reason is listed twice");
    }

    /// `BCO_WRITE_DOCS=1 cargo test --lib reasons` writes the page.
    #[test]
    fn the_troubleshooting_page_is_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/troubleshooting.md");
        if std::env::var_os("BCO_WRITE_DOCS").is_some() {
            std::fs::write(&path, render()).unwrap();
        }
        let page = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            page == render(),
            "docs/troubleshooting.md is not the table of src/controller/reasons.rs: run BCO_WRITE_DOCS=1 cargo test --lib reasons"
        );
    }
}
