//! Scenario 7: mails per second through authql's outbox, against what a plain SMTP client reaches
//! with the same SMTP server in the same run.
//!
//! The server is aiosmtpd (`tests/smtp_server.py --discard`: it accepts and keeps nothing), from
//! the Python `AUTHQL_TEST_SMTP_PYTHON` names or the virtual environment `scripts/test-smtp.sh`
//! installs. The reference sends [`MAILS`] messages straight to it with lettre, [`CONCURRENCY`]
//! at a time over pooled connections (what authql's sender does). authql's side: the same number
//! of due mails written into a migrated database's outbox in one statement, then authql started
//! with `SMTP_URL` at the server, timed from its first answer until the outbox is empty (its
//! sender claims, sends and deletes each).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, address::Envelope};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use crate::authql::Authql;

/// Mails sent by each side.
pub const MAILS: u64 = 3000;
/// Deliveries in flight at once: authql's sender's.
const CONCURRENCY: usize = 8;
const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-smtp.sh");
const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/smtp_server.py");

/// A mail as authql writes one: a few kilobytes of text.
fn message(n: u64) -> String {
    let mut body = String::new();
    for line in 0..40 {
        body.push_str(&format!(
            "Line {line} of a mail about a password reset, long enough to be a real one.\r\n"
        ));
    }
    format!(
        "From: authql <noreply@example.com>\r\nTo: user{n}@example.com\r\nSubject: Reset your \
         password\r\nMessage-ID: <{n}@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: \
         text/plain; charset=utf-8\r\n\r\n{body}"
    )
}

/// The SMTP server of the run.
pub struct Sink {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    /// `Ok(None)` when no Python with aiosmtpd can be found or installed.
    pub fn start() -> anyhow::Result<Option<Self>> {
        let python = match std::env::var("AUTHQL_TEST_SMTP_PYTHON") {
            Ok(python) if !python.is_empty() => python,
            _ => {
                let output = Command::new("bash")
                    .arg("-c")
                    .arg(format!(
                        "source '{INSTALL}' && install_aiosmtpd >&2 || exit 3; echo \"$AUTHQL_TEST_SMTP_PYTHON\""
                    ))
                    .output()
                    .context("could not run bash")?;
                if !output.status.success() {
                    return Ok(None);
                }
                String::from_utf8(output.stdout)?.trim().to_owned()
            }
        };
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(python)
            .arg(SERVER)
            .arg("--maildir")
            .arg(dir.path())
            .arg("--discard")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("could not start the SMTP server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut line)?;
        let Some(port) = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|port| port.parse().ok())
        else {
            let _ = child.kill();
            bail!("the SMTP server said {line:?}");
        };
        Ok(Some(Self {
            child,
            port,
            _dir: dir,
        }))
    }

    /// The reference: [`MAILS`] messages sent straight to the server; mails per second.
    pub async fn direct(&self) -> anyhow::Result<f64> {
        let smtp: AsyncSmtpTransport<Tokio1Executor> =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(self.port)
                .build();
        let started = Instant::now();
        let sent: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..MAILS)
            .map(|n| {
                let smtp = smtp.clone();
                async move {
                    let envelope = Envelope::new(
                        Some("noreply@example.com".parse()?),
                        vec![format!("user{n}@example.com").parse()?],
                    )?;
                    smtp.send_raw(&envelope, message(n).as_bytes()).await?;
                    Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let elapsed = started.elapsed();
        sent.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok(MAILS as f64 / elapsed.as_secs_f64())
    }

    /// authql's side on the database `url` (SQLite or PostgreSQL, migrated): the outbox filled
    /// with [`MAILS`] due mails, then authql started; mails per second until it is empty.
    pub async fn through_authql(
        &self,
        binary: &Path,
        url: &str,
        settings: &[(&str, String)],
    ) -> anyhow::Result<f64> {
        fill_outbox(url).await?;
        let mut settings = settings.to_vec();
        settings.push((
            "SMTP_URL",
            format!("smtp://127.0.0.1:{}?tls=none", self.port),
        ));
        let authql = Authql::start(binary, Some(url), &settings).await?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(300);
        let db = Database::connect(url).await?;
        loop {
            if outbox_depth(&db).await? == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the outbox was not empty after 300 s:\n{}", authql.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed();
        db.close().await?;
        drop(authql);
        Ok(MAILS as f64 / elapsed.as_secs_f64())
    }
}

/// [`MAILS`] due mails in the outbox, in one statement; the times are bound as authql binds
/// them, so that they compare as its own do.
async fn fill_outbox(url: &str) -> anyhow::Result<()> {
    let db = Database::connect(url).await?;
    let backend = db.get_database_backend();
    let now = chrono::Utc::now();
    let values = [
        sea_orm::Value::from(message(0)),
        now.into(),
        (now - chrono::TimeDelta::seconds(1)).into(),
        (now + chrono::TimeDelta::hours(1)).into(),
    ];
    let sql = match backend {
        DbBackend::Postgres => format!(
            "INSERT INTO mail_outbox (id, kind, envelope_from, envelope_to, message, created_at, \
             next_attempt_at, expires_at, attempts) \
             SELECT gen_random_uuid(), 'password_reset', 'noreply@example.com', \
             'user' || i || '@example.com', $1, $2, $3, $4, 0 \
             FROM generate_series(1, {MAILS}) AS i"
        ),
        _ => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MAILS}) \
             INSERT INTO mail_outbox (id, kind, envelope_from, envelope_to, message, created_at, \
             next_attempt_at, expires_at, attempts) \
             SELECT randomblob(16), 'password_reset', 'noreply@example.com', \
             'user' || i || '@example.com', ?, ?, ?, ?, 0 FROM n"
        ),
    };
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
        .context("filling the outbox")?;
    let depth = outbox_depth(&db).await?;
    if depth != MAILS as i64 {
        bail!("the outbox holds {depth} mails, not {MAILS}");
    }
    db.close().await?;
    Ok(())
}

async fn outbox_depth(db: &sea_orm::DatabaseConnection) -> anyhow::Result<i64> {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n FROM mail_outbox",
        ))
        .await?
        .context("a count")?;
    Ok(row.try_get("", "n")?)
}

/// A migrated database: authql started on `url` once, and stopped.
pub async fn migrated(binary: &Path, url: &str, settings: &[(&str, String)]) -> anyhow::Result<()> {
    drop(Authql::start(binary, Some(url), settings).await?);
    // The process is gone when the lock on a SQLite file is.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
