//! bitbucket-credentials-operator: Bitbucket Cloud access keys and OAuth tokens for CI
//! runners in Kubernetes, owned by no person.

pub mod api;
pub mod bitbucket;
pub mod cli;
pub mod controller;
pub mod failpoint;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod secret;
pub mod sensitive;
pub mod telemetry;
