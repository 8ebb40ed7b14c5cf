//! A MongoDB deployment for the run: `BENCH_MONGODB_URL` when given, else a throwaway SecantusDB
//! (a MongoDB-wire server from PyPI, in a virtual environment) started with
//! `scripts/throwaway-mongodb.sh`, as `scripts/test` does, and stopped afterwards. Each
//! measurement gets a database of its own on it; authql makes its indexes when it starts.

use std::process::Command;

use anyhow::{Context, bail};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/throwaway-mongodb.sh"
);

pub struct MongoDb {
    /// The deployment's URL, ending in `/<database>`.
    url: String,
    /// The throwaway server's process and folder, stopped and removed on drop.
    throwaway: Option<(String, String)>,
}

impl MongoDb {
    /// `Ok(None)` when there is no `BENCH_MONGODB_URL` and SecantusDB cannot be installed.
    pub fn start() -> anyhow::Result<Option<Self>> {
        if let Ok(url) = std::env::var("BENCH_MONGODB_URL")
            && !url.is_empty()
        {
            return Ok(Some(Self {
                url,
                throwaway: None,
            }));
        }
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{SCRIPT}' && start_throwaway_mongodb >&2 || exit 3; echo \"$TEST_DATABASE_URL\"; echo \"$THROWAWAY_MONGODB_PID\"; echo \"$THROWAWAY_MONGODB_DIR\""
            ))
            .output()
            .context("could not run bash")?;
        if output.status.code() == Some(3) {
            return Ok(None);
        }
        if !output.status.success() {
            bail!(
                "the throwaway SecantusDB did not start: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8(output.stdout)?;
        let mut lines = stdout.lines();
        let (Some(url), Some(pid), Some(dir)) = (lines.next(), lines.next(), lines.next()) else {
            bail!("the throwaway SecantusDB script said nothing useful: {stdout}");
        };
        Ok(Some(Self {
            url: url.to_owned(),
            throwaway: Some((pid.to_owned(), dir.to_owned())),
        }))
    }

    /// The URL of a database named `name` on the deployment.
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        let (base, rest) = self
            .url
            .rsplit_once('/')
            .context("a MongoDB URL ends in /database")?;
        let query = rest.split_once('?').map(|(_, query)| query);
        Ok(match query {
            Some(query) => format!("{base}/{name}?{query}"),
            None => format!("{base}/{name}"),
        })
    }
}

impl Drop for MongoDb {
    fn drop(&mut self) {
        if let Some((pid, dir)) = &self.throwaway {
            let _ = Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source '{SCRIPT}' && THROWAWAY_MONGODB_PID='{pid}' THROWAWAY_MONGODB_DIR='{dir}' stop_throwaway_mongodb"
                ))
                .status();
        }
    }
}
