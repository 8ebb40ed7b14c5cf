//! authql under test: the release binary, run as a child process so that its memory can be read
//! apart from the benchmark's (`/proc/<pid>/status`), on a fresh SQLite file in a temporary folder.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A secret for the run only; set so that start-up does not generate and store one.
const JWT_SECRET: &str = "authql-bench: a throwaway secret for one benchmark run";

/// The settings every authql under test gets, printed with the results.
pub fn settings(bcrypt_cost: u32) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        // Rate limits would refuse the login storm after a few attempts: off.
        ("RATE_LIMIT_IP_PER_MINUTE", "0".into()),
        ("RATE_LIMIT_ACCOUNT_PER_MINUTE", "0".into()),
        ("RUST_LOG", "warn".into()),
        ("BCRYPT_COST", bcrypt_cost.to_string()),
        ("JWT_SECRET_KEY", JWT_SECRET.into()),
    ];
    // Knobs worth trying, passed on from the benchmark's environment.
    for knob in ["DATABASE_MAX_CONNECTIONS", "BCRYPT_MAX_CONCURRENCY"] {
        if let Ok(value) = std::env::var(knob) {
            settings.push((knob, value));
        }
    }
    settings
}

pub struct Authql {
    child: Child,
    pub address: SocketAddr,
    database_url: String,
    /// From spawn to the first answered request.
    pub startup: Duration,
    _dir: tempfile::TempDir,
}

impl Authql {
    /// The database this server runs on.
    pub fn database_url(&self) -> String {
        self.database_url.clone()
    }

    /// Starts `binary` on a free loopback port against `database_url` (a fresh SQLite file in a
    /// temporary folder when `None`) and waits until it answers `/healthz`.
    pub async fn start(
        binary: &Path,
        database_url: Option<&str>,
        settings: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let database_url = database_url.map_or_else(
            || format!("sqlite://{}", dir.path().join("authql.db").display()),
            str::to_owned,
        );
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(dir.path().join("authql.log"))?;
        let spawned = Instant::now();
        let child = Command::new(binary)
            .current_dir(dir.path())
            .env_clear()
            .env("DATABASE_URL", &database_url)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .envs(settings.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let mut authql = Self {
            child,
            address,
            database_url: database_url.clone(),
            startup: Duration::ZERO,
            _dir: dir,
        };
        let deadline = spawned + Duration::from_secs(30);
        loop {
            if healthy(address).await {
                authql.startup = spawned.elapsed();
                return Ok(authql);
            }
            if let Some(status) = authql.child.try_wait()? {
                bail!("authql exited at start-up ({status}):\n{}", authql.log());
            }
            if Instant::now() > deadline {
                bail!("authql did not answer within 30 s:\n{}", authql.log());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("authql.log")).unwrap_or_default()
    }

    /// (VmRSS, VmHWM) in bytes: resident memory now, and its peak since start.
    /// The server's process id (for a profiler).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .context("a number of kB")?
                .parse()?;
            Ok(kib * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Authql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `GET /healthz` answers 200, on a fresh connection.
async fn healthy(address: SocketAddr) -> bool {
    let Ok(mut sender) = crate::load::connect(address).await else {
        return false;
    };
    let request = hyper::Request::get("/healthz")
        .header(hyper::header::HOST, "127.0.0.1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("a valid request");
    match sender.send_request(request).await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

/// The authql release binary: `BENCH_AUTHQL_BIN`, else the `authql` next to this benchmark's own
/// executable (both are built into the same `target/release`), built first with cargo so that
/// one command measures the code as it is.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_AUTHQL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let here = std::env::current_exe()?;
    let folder = here.parent().context("the benchmark has a folder")?;
    if folder.file_name().is_some_and(|name| name == "release") {
        // `cargo run` sets CARGO; run outside cargo, the binary must already be there.
        if let Some(cargo) = std::env::var_os("CARGO") {
            // Without the variables `cargo run` sets for this package: build scripts that
            // watch them (ring watches CARGO_MANIFEST_DIR) would rebuild half the tree, and
            // again at the next plain `cargo build`.
            let package_vars = std::env::vars_os().filter_map(|(key, _)| {
                let name = key.to_string_lossy();
                (name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        &*name,
                        "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
                    ))
                .then_some(key)
            });
            let mut command = Command::new(cargo);
            for key in package_vars {
                command.env_remove(key);
            }
            let status = command
                .args(["build", "--release", "-p", "authql", "--bin", "authql"])
                .stdout(Stdio::null())
                .status()
                .context("could not run cargo build for authql")?;
            if !status.success() {
                bail!("cargo build --release -p authql failed");
            }
        }
    } else {
        eprintln!(
            "warning: the benchmark is not a release build; use `cargo run --release -p authql-bench`"
        );
    }
    let binary = folder.join("authql");
    if !binary.exists() {
        bail!(
            "no authql binary at {}: run `cargo build --release` first or set BENCH_AUTHQL_BIN",
            binary.display()
        );
    }
    Ok(binary)
}
