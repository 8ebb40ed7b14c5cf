//! A real SMTP server for a test: aiosmtpd, started from `tests/smtp_server.py` with the Python
//! that `AUTHQL_TEST_SMTP_PYTHON` names (scripts/test installs it; `python3` when unset), on a
//! free port, keeping what it accepts in a folder of its own. Tests read the delivered messages
//! (parsed by mail-parser, not by authql), follow their links and assert on state.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp");

/// How a test's SMTP server behaves.
#[derive(Debug, Clone, Default)]
pub struct SmtpOptions {
    /// Offer STARTTLS with the fixture's self-signed certificate, and require it.
    pub starttls: bool,
    /// Require AUTH with this `user:password`.
    pub auth: Option<String>,
    /// Answer 550 to recipients starting with this.
    pub reject_prefix: Option<String>,
    /// Listen on this port (a restart on the port of a stopped server).
    pub port: Option<u16>,
}

/// A running aiosmtpd and the folder it keeps messages in.
pub struct SmtpServer {
    child: Option<Child>,
    pub port: u16,
    maildir: PathBuf,
    _dir: Option<TempDir>,
    options: SmtpOptions,
}

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The bytes as the client sent them.
    pub raw: Vec<u8>,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// Whether it came over TLS, and after AUTH.
    pub tls: bool,
    pub authenticated: bool,
    pub subject: String,
    pub to_header: String,
    pub text: String,
    pub html: String,
}

impl Delivered {
    /// The value of `token=` in the first link of the plain-text part that starts with
    /// `link_prefix`.
    pub fn token(&self, link_prefix: &str) -> String {
        let link = self.link(link_prefix);
        let (_, rest) = link
            .split_once("token=")
            .unwrap_or_else(|| panic!("no token in {link}"));
        rest.split(['&', '#']).next().unwrap().to_owned()
    }

    /// The first link in the plain-text part that starts with `prefix`.
    pub fn link(&self, prefix: &str) -> String {
        self.text
            .split_whitespace()
            .find(|word| word.starts_with(prefix))
            .unwrap_or_else(|| panic!("no link starting with {prefix} in:\n{}", self.text))
            .to_owned()
    }
}

/// The Python that has aiosmtpd, or `None` (and a note) when this machine has none and the
/// run does not require one.
fn python() -> Option<String> {
    if let Ok(python) = std::env::var("AUTHQL_TEST_SMTP_PYTHON")
        && !python.is_empty()
    {
        return Some(python);
    }
    let has_aiosmtpd = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if has_aiosmtpd {
        return Some("python3".into());
    }
    assert!(
        std::env::var_os("AUTHQL_TEST_REQUIRE_SERVERS").is_none(),
        "AUTHQL_TEST_REQUIRE_SERVERS is set but no Python with aiosmtpd was found (AUTHQL_TEST_SMTP_PYTHON)"
    );
    eprintln!("SKIPPED: no Python with aiosmtpd (scripts/test installs one)");
    None
}

impl SmtpServer {
    /// A plain server (no TLS, no AUTH); `None` when this machine cannot run one (the test
    /// then returns early: see [`python`]).
    pub async fn start() -> Option<Self> {
        Self::start_with(SmtpOptions::default()).await
    }

    pub async fn start_with(options: SmtpOptions) -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let maildir = dir.path().join("delivered");
        let mut server = Self {
            child: None,
            port: 0,
            maildir,
            _dir: Some(dir),
            options,
        };
        server.launch().await?;
        Some(server)
    }

    async fn launch(&mut self) -> Option<()> {
        let python = python()?;
        let mut command = Command::new(python);
        command
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py"))
            .arg("--maildir")
            .arg(&self.maildir)
            .arg("--port")
            .arg(self.options.port.unwrap_or(self.port).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if self.options.starttls {
            command
                .arg("--tls-cert")
                .arg(format!("{FIXTURES}/server-cert.pem"))
                .arg("--tls-key")
                .arg(format!("{FIXTURES}/server-key.pem"));
        }
        if let Some(auth) = &self.options.auth {
            command.arg("--auth").arg(auth);
        }
        if let Some(prefix) = &self.options.reject_prefix {
            command.arg("--reject-prefix").arg(prefix);
        }
        let mut child = command.spawn().expect("the SMTP server starts");
        let stdout = child.stdout.take().expect("its stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the SMTP server says where it listens within 20 s")
            .expect("its stdout is readable")
            .expect("a line");
        self.port = line
            .strip_prefix("LISTENING ")
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.child = Some(child);
        Some(())
    }

    /// The `SMTP_URL` for this server (STARTTLS required when it offers it).
    pub fn url(&self) -> String {
        let credentials = self
            .options
            .auth
            .as_ref()
            .map(|auth| format!("{auth}@"))
            .unwrap_or_default();
        let tls = if self.options.starttls {
            "?tls=required"
        } else {
            ""
        };
        format!("smtp://{credentials}127.0.0.1:{}{tls}", self.port)
    }

    /// The fixture certificate, for `SMTP_TLS_CA_FILE`.
    pub fn ca_file() -> PathBuf {
        PathBuf::from(format!("{FIXTURES}/server-cert.pem"))
    }

    /// Stops the server: connections are refused until [`Self::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Starts the server again on the same port, keeping what it received.
    pub async fn restart(&mut self) {
        self.options.port = Some(self.port);
        self.launch().await.expect("the SMTP server starts again");
    }

    /// Every message received so far, in order.
    pub fn delivered(&self) -> Vec<Delivered> {
        read_maildir(&self.maildir)
    }

    /// The messages received for `recipient` (by envelope).
    pub fn delivered_to(&self, recipient: &str) -> Vec<Delivered> {
        self.delivered()
            .into_iter()
            .filter(|mail| {
                mail.rcpt_tos
                    .iter()
                    .any(|to| to.eq_ignore_ascii_case(recipient))
            })
            .collect()
    }

    /// Waits up to `patience` until `count` messages for `recipient` have arrived; returns
    /// them. Panics (with what did arrive) when they do not.
    pub async fn wait_for(
        &self,
        recipient: &str,
        count: usize,
        patience: Duration,
    ) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let found = self.delivered_to(recipient);
            if found.len() >= count {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} message(s) for {recipient} within {patience:?}, expected {count}; all: {:?}",
                    found.len(),
                    self.delivered()
                        .iter()
                        .map(|mail| (&mail.rcpt_tos, &mail.subject))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The one message for `recipient`, waiting up to 20 s for it.
    pub async fn one_for(&self, recipient: &str) -> Delivered {
        let mut found = self.wait_for(recipient, 1, Duration::from_secs(20)).await;
        assert_eq!(found.len(), 1, "exactly one message for {recipient}");
        found.remove(0)
    }

    /// How many recipients it refused (`reject_prefix`).
    pub fn rejected(&self) -> u64 {
        std::fs::read_to_string(self.maildir.join("rejected.count"))
            .ok()
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Every `NNNNNN.json` with its `.eml`, in order.
fn read_maildir(maildir: &Path) -> Vec<Delivered> {
    let Ok(entries) = std::fs::read_dir(maildir) else {
        return Vec::new();
    };
    let mut envelopes: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    envelopes.sort();
    envelopes
        .into_iter()
        .map(|path| {
            let envelope: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let raw = std::fs::read(path.with_extension("eml")).unwrap();
            parse(raw, &envelope)
        })
        .collect()
}

fn parse(raw: Vec<u8>, envelope: &Value) -> Delivered {
    let message = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("a message mail-parser reads");
    let to_header = message
        .header_raw("To")
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    Delivered {
        mail_from: envelope["mail_from"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        rcpt_tos: envelope["rcpt_tos"]
            .as_array()
            .map(|tos| {
                tos.iter()
                    .filter_map(|to| to.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        tls: envelope["tls"].as_bool().unwrap_or(false),
        authenticated: envelope["authenticated"].as_bool().unwrap_or(false),
        subject: message.subject().unwrap_or_default().to_owned(),
        to_header,
        text: message
            .body_text(0)
            .map(|text| text.into_owned())
            .unwrap_or_default(),
        html: message
            .body_html(0)
            .map(|html| html.into_owned())
            .unwrap_or_default(),
        raw,
    }
}
