//! `kubectl bitbucket`: the operator's objects from a terminal (the cmctl of this
//! product). `status` shows what an object's status and events say, `rotate` asks for a
//! new key, `check` tries a workspace's credentials against Bitbucket and names the
//! scopes they lack.
//!
//! The plugin acts with the caller's own Kubernetes permissions: it reads what `kubectl
//! get` would, and `check` reads the workspace's auth Secret, as only someone who may read
//! that Secret can.

mod check;
mod status;

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use check::CheckArgs;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-bitbucket",
    bin_name = "kubectl bitbucket",
    version,
    about = "Status, rotation and credential checks of bitbucket-credentials-operator objects"
)]
pub struct Cli {
    /// The namespace of the object (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Path of the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Conditions, registrations, next rotation and last events of a BitbucketAccessKey or
    /// a BitbucketOAuthConsumer.
    Status {
        /// The object's name (an access key if both kinds have it, unless --kind says).
        name: String,
        /// Which kind NAME is.
        #[arg(long, value_enum)]
        kind: Option<ObjectKind>,
        /// How many of the object's latest events to show.
        #[arg(long, default_value_t = 5)]
        events: usize,
    },
    /// Rotates a BitbucketAccessKey now (sets its rotate annotation).
    Rotate {
        name: String,
        /// Waits until the new key is in the Secret and registered everywhere.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Verifies a workspace's credentials with Bitbucket and names the scopes they lack.
    Check(CheckArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    #[value(name = "BitbucketAccessKey", alias = "accesskey", alias = "bbak")]
    AccessKey,
    #[value(name = "BitbucketOAuthConsumer", alias = "oauthconsumer", alias = "bboc")]
    OAuthConsumer,
}

/// What a command found that makes it fail: printed on stderr, exit code 1. A report
/// whose findings fail (`check` with a missing scope) is printed first.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
}

/// What a command prints, and whether it found everything in order.
pub struct Report {
    pub text: String,
    pub ok: bool,
}

/// Runs one command; the report is for stdout.
pub async fn run(cli: Cli) -> Result<Report, CliError> {
    let (client, default_namespace) = connect(&cli).await?;
    let namespace = cli.namespace.clone().unwrap_or(default_namespace);
    match cli.command {
        Command::Status { name, kind, events } => status::status(&client, &namespace, &name, kind, events).await,
        Command::Rotate { name, wait, timeout } => {
            status::rotate(&client, &namespace, &name, wait.then(|| std::time::Duration::from_secs(timeout))).await
        }
        Command::Check(args) => check::check(&client, &namespace, args).await,
    }
}

async fn connect(cli: &Cli) -> Result<(kube::Client, String), CliError> {
    let options = KubeConfigOptions { context: cli.context.clone(), cluster: None, user: None };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| CliError::Config(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| CliError::Config(e.to_string()))?
        }
        None if cli.context.is_some() => kube::Config::from_kubeconfig(&options).await.map_err(|e| CliError::Config(e.to_string()))?,
        None => kube::Config::infer().await.map_err(|e| CliError::Config(e.to_string()))?,
    };
    let namespace = config.default_namespace.clone();
    Ok((kube::Client::try_from(config)?, namespace))
}

/// `3m ago`, `in 29d 23h`: the distance from now of `t`, two units at most.
pub fn relative(t: &Time) -> String {
    let secs = crate::metrics::unix(t) - crate::metrics::unix_now();
    let span = human_span(secs.abs() as u64);
    if secs >= 0.0 { format!("in {span}") } else { format!("{span} ago") }
}

fn human_span(secs: u64) -> String {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (name, size) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 || (!parts.is_empty() && rest == 0) {
            break;
        }
    }
    parts.join(" ")
}

/// `2026-12-03T10:00:00Z (in 29d 23h)`.
pub fn when(t: &Time) -> String {
    format!("{} ({})", t.0.strftime("%Y-%m-%dT%H:%M:%SZ"), relative(t))
}

/// The conditions as a table: type, status, reason, since, message.
fn write_conditions(out: &mut String, conditions: &[Condition]) {
    if conditions.is_empty() {
        let _ = writeln!(out, "Conditions:      none yet (the operator has not reconciled the object)");
        return;
    }
    let _ = writeln!(out, "Conditions:");
    for c in conditions {
        let _ = writeln!(out, "  {:<9} {:<6} {:<24} {:<10} {}", c.type_, c.status, c.reason, relative(&c.last_transition_time), c.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_kubectl_ages() {
        assert_eq!(human_span(0), "0s");
        assert_eq!(human_span(59), "59s");
        assert_eq!(human_span(60), "1m");
        assert_eq!(human_span(3_661), "1h 1m");
        assert_eq!(human_span(30 * 86_400 - 3_600), "29d 23h");
        assert_eq!(human_span(86_400 + 5), "1d 5s");
    }

    #[test]
    fn the_plugin_parses_kubectl_style_arguments() {
        let cli = Cli::try_parse_from(["kubectl-bitbucket", "status", "ci", "-n", "team-a", "--kind", "bboc"]).unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("team-a"));
        assert!(matches!(cli.command, Command::Status { ref name, kind: Some(ObjectKind::OAuthConsumer), events: 5 } if name == "ci"));
        let cli =
            Cli::try_parse_from(["kubectl-bitbucket", "-n", "x", "check", "acme", "--repository", "api", "--project", "CORE"]).unwrap();
        let Command::Check(args) = cli.command else { panic!("check") };
        assert_eq!((args.repositories, args.projects), (vec!["api".to_string()], vec!["CORE".to_string()]));
        assert!(Cli::try_parse_from(["kubectl-bitbucket", "rotate"]).is_err(), "rotate needs a name");
    }
}
