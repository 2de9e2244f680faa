//! `bitbucket-sim`: a Bitbucket Cloud API simulator for tests, benchmarks and the demo.
//!
//! It implements the slice of Bitbucket Cloud the operator uses (repository and project
//! deploy keys, the OAuth client_credentials token endpoint) with the real service's
//! quirks from `shared/bitbucket-cloud/FACTS.md`: answer codes and bodies, the three
//! credential kinds and their scopes, pagination, per-credential rolling rate limits
//! with Bitbucket's bare 429. On top it injects faults and exposes `/_sim/` endpoints
//! for tests to look inside. See `docs/simulator.md`.
//!
//! One module per concept: `config` (the YAML file), `catalog` (workspaces, repositories,
//! projects), `state` (keys and tokens, persisted), `keys` (which public keys are
//! accepted), `auth` (credentials and scopes), `oauth` (token endpoint), `routes`
//! (path to operation), `deploy_keys` (the endpoints), `pagination`, `ratelimit`,
//! `faults`, `variants` (answers as the real service may give them), `recorder`
//! (request counters), `inspect` (`/_sim/`), `simulator` (the pipeline) and `http` (the
//! server).

mod auth;
mod catalog;
mod config;
mod deploy_keys;
mod faults;
mod http;
mod inspect;
mod keys;
mod model;
mod oauth;
mod pagination;
mod ratelimit;
mod recorder;
mod response;
mod routes;
mod simulator;
mod state;
mod variants;

use std::path::PathBuf;

pub use config::{
    AccessTokenConfig, ApiTokenConfig, FaultConfig, OAuthConsumerConfig, ProjectConfig, RateLimitConfig, RepositoryConfig, SimConfig,
    WorkspaceConfig,
};
pub use http::{router, serve, serve_with_shutdown};
pub use keys::{AcceptedKey, KeyRejection, accept_public_key};
pub use response::SimResponse;
pub use simulator::{SimRequest, Simulator};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read config file {path}: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("invalid simulator config: {0}")]
    Config(String),
    #[error("cannot load state file {path}: {message}")]
    LoadState { path: PathBuf, message: String },
    #[error("cannot save state file {path}: {source}")]
    SaveState { path: PathBuf, source: std::io::Error },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}
