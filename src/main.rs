use bitbucket_credentials_operator::{api, operator, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bitbucket-credentials-operator", version, about = "Bitbucket Cloud access keys and OAuth tokens for CI in Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run(operator::Config),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            for (_, crd) in api::crds() {
                print!("{}", api::crd_yaml(&crd));
            }
            std::process::ExitCode::SUCCESS
        }
        Command::Run(config) => {
            telemetry::init(config.log_format);
            match operator::run(config).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
