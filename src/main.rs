//! The `authql` binary: configuration and logging, then the library does the work.
//!
//! Main and the library are apart so that the integration tests can build and run the very same
//! `Application` on port 0 against their own database.

use anyhow::Context;
use authql::{
    app::Application,
    config::{Cli, Command},
    graphql,
};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is normal; a broken one is worth saying but not fatal.
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("authql: ignoring .env: {err}");
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::PrintSchema => {
            print!("{}", graphql::schema_sdl());
            Ok(())
        }
        Command::Serve => {
            authql::telemetry::init();
            let app = Application::build(cli.config)
                .await
                .context("authql could not start")?;
            app.run_until_stopped()
                .await
                .context("authql stopped with an error")
        }
    }
}
