//! The `authql` binary: configuration and logging, then the library does the work.
//!
//! Main and the library are apart so that the integration tests can build and run the very same
//! `Application` on port 0 against their own database.

use anyhow::Context;
use authql::{
    app::Application,
    config::{self, Cli, Command},
    graphql,
    telemetry::{self, LogTarget},
};
use clap::Parser;

/// mimalloc instead of glibc's malloc: per-request allocations (parsing, GraphQL values, JSON)
/// were a fifth of the CPU profile; see the README's benchmark section for what it changed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is normal. A broken one stops the start: applying the lines before the
    // broken one and dropping the rest would leave security settings silently at defaults.
    if let Err(problem) = config::load_dotenv(std::path::Path::new(".env")) {
        eprintln!("authql: {problem}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::PrintSchema { federation } => {
            if federation {
                print!("{}", graphql::subgraph_sdl());
            } else {
                print!("{}", graphql::schema_sdl());
            }
            Ok(())
        }
        Command::Admin(args) => {
            telemetry::init(cli.config.log_format, LogTarget::Stderr);
            let code = authql::admin::run(&cli.config, &args).await;
            std::process::exit(i32::from(code));
        }
        Command::Serve => {
            telemetry::init(cli.config.log_format, LogTarget::Stdout);
            let mut config = cli.config;
            if let Err(problem) =
                config.read_oidc_provider_settings(|name| std::env::var(name).ok())
            {
                eprintln!("authql: {problem}");
                std::process::exit(2);
            }
            let app = Application::build(config)
                .await
                .context("authql could not start")?;
            app.run_until_stopped()
                .await
                .context("authql stopped with an error")
        }
    }
}
