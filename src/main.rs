use bitbucket_credentials_operator::{api, operator, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bitbucket-credentials-operator", version, about = "Bitbucket Cloud access keys and OAuth tokens for CI in Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
            limit_malloc_arenas();
            tokio::spawn(return_free_memory());
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

/// glibc gives each thread that allocates its own arena (up to 8 per core), and freed
/// memory stays in them: with the runtime's and the blocking pool's threads, resident
/// memory grows well past what is in use. Two arenas are plenty for this workload.
/// `MALLOC_ARENA_MAX`, when set, wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters, and glibc serialises it.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Hands memory that is free inside the heap back to the system now and then. Creating
/// thousands of objects leaves the heap full of holes between long-lived cached objects,
/// which glibc only returns from the top of the heap on its own.
async fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        // SAFETY: malloc_trim only releases free pages; glibc locks the arenas it walks.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
