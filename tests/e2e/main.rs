//! Integration tests against a real kube-apiserver, the real `bitbucket-sim` and the
//! operator binary, as a user runs them.

mod network;
mod support;

mod access_key;
mod bad_input;
mod chaos;
mod cli;
mod control_plane;
mod docs;
mod git_ssh;
mod hostile;
mod hostile_credentials;
mod oauth_consumer;
mod operations;
mod profiles;
mod real_errors;
mod real_world;
mod tenancy;
mod validation;
