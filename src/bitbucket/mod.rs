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

/// The certificates of a PEM bundle (`--ca-bundle`); a file without any is refused (a
/// wrong path or format would otherwise show only later, as every TLS connection failing).
pub fn read_ca_bundle(path: &std::path::Path) -> std::result::Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())?;
    if certificates.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certificates)
}
