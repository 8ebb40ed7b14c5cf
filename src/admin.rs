//! `authql admin ...`: the operator's commands (`service::admin`), from the command line.
//!
//! On PostgreSQL and MongoDB the CLI runs a command against `DATABASE_URL` itself: no instance
//! caches sessions there, so every instance refuses an ended session on its next request. A
//! SQLite file is served by one process, which caches sessions; when a server holds the file,
//! the CLI hands the command to it over a Unix socket beside the file (`<database>.admin.sock`,
//! owner-only), so that its cache stays exact. With no server running, the CLI takes the
//! file's lock and runs the command itself.
//!
//! The socket speaks one JSON line each way: an [`AdminCommand`], then the
//! `Result<AdminAnswer, AdminFailure>`.
//!
//! Exit codes: 0 done; 1 no such user or session; 2 a bad argument (clap's usage errors);
//! 3 the database (or the server holding the SQLite file) cannot be reached; 4 any other
//! failure.

use std::{path::PathBuf, time::Duration};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{
    config::Config,
    mail::Templates,
    service::{
        accounts::Accounts,
        admin::{Admin, AdminAnswer, AdminCommand, AdminFailure, SessionSummary},
        events::SessionEvents,
    },
    store::{self, DatabaseLock, PoolSettings, SeaStore},
};

/// Longest command or answer line the socket reads, in bytes.
const MAX_LINE_BYTES: u64 = 1024 * 1024;

/// `authql admin <command>`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Exit codes: 0 done; 1 no such user or session; 2 a bad argument; \
    3 the database (or the server holding a SQLite file) cannot be reached; 4 another failure."
)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    /// Print the answer as one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Runs the command and prints its answer (stdout) or failure (stderr); returns the exit code.
pub async fn run(config: &Config, args: &AdminArgs) -> u8 {
    match execute(config, &args.command).await {
        Ok(answer) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            } else {
                print!("{}", render(&args.command, &answer));
            }
            0
        }
        Err(failure) => {
            eprintln!("authql admin: {failure}");
            if args.json {
                let mut answer = serde_json::to_value(&failure).unwrap_or_default();
                answer["message"] = failure.to_string().into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            }
            match failure {
                AdminFailure::UnknownUser { .. } | AdminFailure::UnknownSession { .. } => 1,
                AdminFailure::InvalidRole { .. } => 2,
                AdminFailure::DatabaseUnavailable => 3,
                AdminFailure::NoMail { .. }
                | AdminFailure::TooManyRoles { .. }
                | AdminFailure::Failed => 4,
            }
        }
    }
}

async fn execute(config: &Config, command: &AdminCommand) -> Result<AdminAnswer, AdminFailure> {
    let _lock = match SeaStore::sqlite_path(&config.database_url) {
        Some(path) => {
            if !path.exists() {
                eprintln!(
                    "authql admin: there is no SQLite database at {}",
                    path.display()
                );
                return Err(AdminFailure::DatabaseUnavailable);
            }
            match DatabaseLock::try_acquire(path.clone()) {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => {
                    // A server that does not answer (stopped, overloaded) must not hang the
                    // operator: as long as a request would wait for the database, and then some.
                    let patience = Duration::from_secs(
                        config.database_acquire_timeout_seconds
                            + config.database_busy_timeout_seconds
                            + 5,
                    );
                    return tokio::time::timeout(patience, ask_server(&socket_path(&path), command))
                        .await
                        .unwrap_or_else(|_| {
                            eprintln!(
                                "authql admin: the server holding the SQLite file did not answer within {} s",
                                patience.as_secs()
                            );
                            Err(AdminFailure::DatabaseUnavailable)
                        });
                }
                Err(why) => {
                    eprintln!("authql admin: {why}");
                    return Err(AdminFailure::Failed);
                }
            }
        }
        None => None,
    };
    let pool = PoolSettings {
        max_connections: Some(2),
        connect_timeout: Duration::from_secs(config.database_connect_timeout_seconds),
        acquire_timeout: Duration::from_secs(config.database_acquire_timeout_seconds),
        busy_timeout: Duration::from_secs(config.database_busy_timeout_seconds),
    };
    let store = store::connect(&config.database_url, pool).await?;
    let events = SessionEvents::new(store.events.clone());
    Admin::new(store, events, accounts(config)?)
        .run(command)
        .await
}

/// The mail composer a command uses, from the same settings as the server's (`PUBLIC_URL`,
/// `MAIL_FROM`, the templates, ...; without `PUBLIC_URL`, `http://HOST:PORT`).
fn accounts(config: &Config) -> Result<std::sync::Arc<Accounts>, AdminFailure> {
    let built = Templates::load(config.mail_templates_dir.as_deref())
        .map_err(|why| anyhow::anyhow!(why))
        .and_then(|templates| {
            crate::app::accounts(
                config,
                std::net::SocketAddr::new(config.host, config.port),
                templates,
            )
        });
    built.map(std::sync::Arc::new).map_err(|why| {
        eprintln!("authql admin: {why:#}");
        AdminFailure::Failed
    })
}

/// Where the server serving the SQLite file at `database_path` listens for admin commands.
pub fn socket_path(database_path: &std::path::Path) -> PathBuf {
    store::beside(database_path, ".admin.sock")
}

/// Sends `command` to the server listening on `socket` and returns its answer.
async fn ask_server(
    socket: &std::path::Path,
    command: &AdminCommand,
) -> Result<AdminAnswer, AdminFailure> {
    let unreachable = |why: String| {
        eprintln!(
            "authql admin: a server holds the SQLite file but its admin socket {} does not answer: {why}",
            socket.display()
        );
        AdminFailure::DatabaseUnavailable
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    let (reader, mut writer) = stream.into_split();
    let mut line = serde_json::to_vec(command).map_err(|_| AdminFailure::Failed)?;
    line.push(b'\n');
    writer
        .write_all(&line)
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    let mut answer = String::new();
    BufReader::new(reader.take(MAX_LINE_BYTES))
        .read_line(&mut answer)
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    serde_json::from_str::<Result<AdminAnswer, AdminFailure>>(&answer)
        .map_err(|_| unreachable("an answer that does not parse".into()))?
}

/// The server's side of the socket: removed when dropped.
pub struct AdminSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl AdminSocket {
    /// Listens on `path` (replacing a file left there: the caller holds the database's lock,
    /// so no other server uses it), readable and writable by this user only, and runs each
    /// command with `admin`. Errors: the socket cannot be created.
    pub fn bind(path: PathBuf, admin: Admin) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        let task = tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        pause = Duration::from_millis(100);
                        stream
                    }
                    // Out of file descriptors, say: the socket stays, and is tried again.
                    Err(error) => {
                        tracing::warn!(event = "background_task_failed", task = "admin_socket", %error, "the admin socket could not accept a connection; trying again");
                        crate::metrics::background_task_restart("admin_socket");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                let admin = admin.clone();
                tokio::spawn(async move {
                    let (reader, mut writer) = stream.into_split();
                    let mut line = String::new();
                    // A client that connects and sends nothing is not waited for.
                    let read = tokio::time::timeout(
                        Duration::from_secs(10),
                        BufReader::new(reader.take(MAX_LINE_BYTES)).read_line(&mut line),
                    )
                    .await;
                    if !matches!(read, Ok(Ok(_))) {
                        return;
                    }
                    let answer = match serde_json::from_str::<AdminCommand>(&line) {
                        Ok(command) => admin.run(&command).await,
                        Err(_) => Err(AdminFailure::Failed),
                    };
                    let mut reply = serde_json::to_vec(&answer).unwrap_or_default();
                    reply.push(b'\n');
                    let _ = writer.write_all(&reply).await;
                });
            }
        });
        Ok(Self { path, task })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The answer as text for a terminal.
fn render(command: &AdminCommand, answer: &AdminAnswer) -> String {
    match answer {
        AdminAnswer::Sessions { user, sessions } => {
            let mut out = format!(
                "{} ({}, id {}){}: {} live session{}\n",
                user.email,
                user.username,
                user.id,
                user.disabled_at
                    .map(|at| format!(", disabled {}", time(at)))
                    .unwrap_or_default(),
                sessions.len(),
                if sessions.len() == 1 { "" } else { "s" }
            );
            if !sessions.is_empty() {
                out.push_str(&table(sessions));
            }
            out
        }
        AdminAnswer::Done {
            user,
            ended_sessions,
        } => {
            let who = user
                .as_ref()
                .map(|user| format!("{} (id {})", user.email, user.id))
                .unwrap_or_default();
            let ended = format!(
                "{ended_sessions} session{} ended",
                if *ended_sessions == 1 { "" } else { "s" }
            );
            match command {
                AdminCommand::Sessions { .. } => String::new(),
                AdminCommand::RevokeSessions { .. } => format!("{who}: {ended}\n"),
                AdminCommand::RevokeSession { id } => format!("session {id} of {who} ended\n"),
                AdminCommand::DisableUser { .. } => format!("{who} disabled; {ended}\n"),
                AdminCommand::EnableUser { .. } => format!("{who} enabled\n"),
                AdminCommand::DeleteUser { .. } => format!("{who} deleted; {ended}\n"),
                AdminCommand::SendPasswordReset { .. } => {
                    format!("{who}: password-reset link queued (a running server sends it)\n")
                }
                AdminCommand::VerifyEmail { .. } => format!("{who}: address verified\n"),
                AdminCommand::ResetMfa { .. } => {
                    format!("{who}: second factors removed; {ended}\n")
                }
                AdminCommand::GrantRole { .. } | AdminCommand::RevokeRole { .. } => {
                    let roles = user.as_ref().map(|user| user.roles.join(", "));
                    let roles = roles.filter(|roles| !roles.is_empty());
                    format!("{who}: roles {}\n", roles.as_deref().unwrap_or("(none)"))
                }
            }
        }
    }
}

fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn table(sessions: &[SessionSummary]) -> String {
    let header = [
        "id",
        "created",
        "last refreshed",
        "expires",
        "idle until",
        "ip",
        "user agent",
    ];
    let rows: Vec<[String; 7]> = sessions
        .iter()
        .map(|session| {
            [
                session.id.to_string(),
                time(session.created_at),
                session.last_refreshed_at.map(time).unwrap_or("-".into()),
                time(session.expires_at),
                time(session.idle_expires_at),
                session.ip_address.clone().unwrap_or("-".into()),
                session.user_agent.clone().unwrap_or("-".into()),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
