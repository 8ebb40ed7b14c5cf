//! A PostgreSQL server for the run: `BENCH_DATABASE_URL` when given, else a throwaway one started
//! from the machine's PostgreSQL binaries with `scripts/throwaway-postgres.sh` (as `scripts/test`
//! does) and removed afterwards. Each measurement gets a database of its own on it.

use std::process::Command;

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

pub(crate) const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/throwaway-postgres.sh"
);

pub struct Postgres {
    /// A URL of the server with a role that may create databases.
    admin_url: String,
    /// The throwaway server's folder, removed on drop.
    throwaway_dir: Option<String>,
}

impl Postgres {
    /// `Ok(None)` when there is neither `BENCH_DATABASE_URL` nor PostgreSQL on the machine.
    pub fn start() -> anyhow::Result<Option<Self>> {
        if let Ok(url) = std::env::var("BENCH_DATABASE_URL")
            && !url.is_empty()
        {
            return Ok(Some(Self {
                admin_url: url,
                throwaway_dir: None,
            }));
        }
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{SCRIPT}' && postgres_bin_dir >/dev/null || exit 3; start_throwaway_postgres >&2 && echo \"$TEST_DATABASE_URL\" && echo \"$THROWAWAY_POSTGRES_DIR\""
            ))
            .output()
            .context("could not run bash")?;
        if output.status.code() == Some(3) {
            return Ok(None);
        }
        if !output.status.success() {
            bail!(
                "the throwaway PostgreSQL did not start: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8(output.stdout)?;
        let mut lines = stdout.lines();
        let (Some(url), Some(dir)) = (lines.next(), lines.next()) else {
            bail!("the throwaway PostgreSQL script said nothing useful: {stdout}");
        };
        Ok(Some(Self {
            admin_url: url.to_owned(),
            throwaway_dir: Some(dir.to_owned()),
        }))
    }

    /// A new, empty database on the server; authql migrates it when it starts.
    pub async fn fresh_database(&self, name: &str) -> anyhow::Result<String> {
        let admin = Database::connect(&self.admin_url).await?;
        admin
            .execute_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("DROP DATABASE IF EXISTS {name}"),
            ))
            .await?;
        admin
            .execute_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("CREATE DATABASE {name}"),
            ))
            .await?;
        admin.close().await?;
        let (base, _) = self
            .admin_url
            .rsplit_once('/')
            .context("a database URL ends in /database")?;
        Ok(format!("{base}/{name}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.throwaway_dir {
            let _ = Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source '{SCRIPT}' && THROWAWAY_POSTGRES_DIR='{dir}' stop_throwaway_postgres"
                ))
                .status();
        }
    }
}
