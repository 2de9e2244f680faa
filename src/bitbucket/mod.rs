//! The operator's only window on Bitbucket Cloud: deploy keys of repositories and
//! projects, and the OAuth client-credentials token endpoint.

mod allowed;
mod client;
mod credential;
mod error;
mod types;

pub use allowed::{AllowedUrls, BITBUCKET_CLOUD};
pub use client::{Bitbucket, ClientOptions, WorkspaceClient};
pub use credential::{Auth, Credential, DriftPace, MAX_TOKEN_LIFETIME, Token, paced_interval};
pub use error::Error;
pub use types::{DeployKey, Target, key_body};

pub type Result<T, E = Error> = std::result::Result<T, E>;
