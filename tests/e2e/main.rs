//! Integration tests against a real kube-apiserver, the real `bitbucket-sim` and the
//! operator binary, as a user runs them.

mod support;

mod access_key;
mod oauth_consumer;
mod control_plane;
mod git_ssh;
mod operations;
mod validation;
mod chaos;
mod bad_input;
mod tenancy;
mod docs;
mod hostile;
mod hostile_credentials;
mod real_world;
mod real_errors;
