//! bitbucket-credentials-operator: Bitbucket Cloud access keys and OAuth tokens for CI
//! runners in Kubernetes, owned by no person.
//!
//! Public are the modules the binaries, tests and benchmarks use; the controllers and what
//! only they need are the crate's own.

pub mod api;
pub mod bitbucket;
pub mod cli;
pub(crate) mod controller;
pub(crate) mod failpoint;
pub mod keys;
pub(crate) mod leader;
pub(crate) mod metrics;
pub mod operator;
pub(crate) mod secret;
pub mod sensitive;
pub(crate) mod sync;
pub mod telemetry;
