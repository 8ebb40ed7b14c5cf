//! The migration CLI: `cargo run -p migration -- up | down | status | fresh`.
//! It reads `DATABASE_URL` from the environment (or `.env`).

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(migration::Migrator).await;
}
