//! bitbucket-credentials-operator: Bitbucket Cloud access keys and OAuth tokens for CI
//! runners in Kubernetes, owned by no person.

pub mod api;
pub mod bitbucket;
pub mod metrics;
pub mod sensitive;
pub mod sim;
