//! `kubectl bitbucket`: a kubectl plugin (kubectl finds `kubectl-bitbucket` on PATH).

use bitbucket_credentials_operator::cli::{Cli, run};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(report) => {
            print!("{}", report.text);
            if report.ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
