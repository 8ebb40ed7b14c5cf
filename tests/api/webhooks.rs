//! Webhooks (issue "Webhooks"), received by a real receiver that verifies every delivery with
//! the `standardwebhooks` library from PyPI (`tests/webhook_receiver.py`, run with the Python
//! that `AUTHQL_TEST_WEBHOOK_PYTHON` names; scripts/test installs it), on SQLite and, unchanged,
//! on PostgreSQL and MongoDB. Tests assert on what the receiver kept and on the outbox's rows.

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};

use authql::{app::Application, config::Config};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::helpers::*;

/// A Standard Webhooks secret (24 random bytes, base64), the one the receiver verifies with.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another valid secret: deliveries signed with it fail the receiver's verification.
const OTHER_SECRET: &str = "whsec_c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1yZWNlaXZlcnM=";

/// The Python that has `standardwebhooks`, or `None` (and a note) when this machine has none and
/// the run does not require one.
fn python() -> Option<String> {
    if let Ok(python) = std::env::var("AUTHQL_TEST_WEBHOOK_PYTHON")
        && !python.is_empty()
    {
        return Some(python);
    }
    let has_library = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if has_library {
        return Some("python3".into());
    }
    assert!(
        std::env::var_os("AUTHQL_TEST_REQUIRE_SERVERS").is_none(),
        "AUTHQL_TEST_REQUIRE_SERVERS is set but no Python with standardwebhooks was found (AUTHQL_TEST_WEBHOOK_PYTHON)"
    );
    eprintln!("SKIPPED: no Python with standardwebhooks (scripts/test installs one)");
    None
}

/// One delivery the receiver verified and kept.
#[derive(Debug, Clone)]
struct Delivery {
    /// The endpoint's path (`/a`, `/b`).
    path: String,
    webhook_id: String,
    payload: Value,
}

impl Delivery {
    fn event_type(&self) -> &str {
        self.payload["type"].as_str().unwrap_or_default()
    }
}

/// A running receiver and the folder it keeps deliveries in.
struct Receiver {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Receiver {
    async fn start() -> Option<Self> {
        let mut receiver = Self {
            child: None,
            port: 0,
            dir: tempfile::tempdir().expect("a temporary folder"),
        };
        receiver.launch().await?;
        Some(receiver)
    }

    async fn launch(&mut self) -> Option<()> {
        let python = python()?;
        let mut child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/webhook_receiver.py"
            ))
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--secret")
            .arg(SECRET)
            .arg("--port")
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the receiver starts");
        let stdout = child.stdout.take().expect("its stdout");
        let line = tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("the receiver says where it listens within 20 s")
        .expect("its stdout is readable")
        .expect("a line");
        self.port = line
            .strip_prefix("LISTENING ")
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.child = Some(child);
        Some(())
    }

    /// The URL of the endpoint `path` on this receiver.
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Connections are refused until [`Self::restart`].
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// On the same port, keeping what it received.
    async fn restart(&mut self) {
        self.launch().await.expect("the receiver starts again");
    }

    /// Every verified delivery so far, in the order received.
    fn deliveries(&self) -> Vec<Delivery> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("the receiver's folder")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|path| {
                let record: Value =
                    serde_json::from_slice(&std::fs::read(&path).expect("a delivery file"))
                        .expect("a JSON record");
                Delivery {
                    path: record["path"].as_str().unwrap_or_default().to_owned(),
                    webhook_id: record["webhook_id"].as_str().unwrap_or_default().to_owned(),
                    payload: record["payload"].clone(),
                }
            })
            .collect()
    }

    /// Deliveries the library refused.
    fn rejected(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("rejected.count"))
            .ok()
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits up to `patience` for a delivery of `event_type` to `path` whose `data.field` is
    /// `value`; returns it. Panics with what did arrive.
    async fn wait_for(
        &self,
        path: &str,
        event_type: &str,
        (field, value): (&str, &str),
        patience: Duration,
    ) -> Delivery {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let found = self.deliveries().into_iter().find(|delivery| {
                delivery.path == path
                    && delivery.event_type() == event_type
                    && delivery.payload["data"][field] == json!(value)
            });
            if let Some(found) = found {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {event_type} with {field}={value} at {path} within {patience:?}; received: {:?}",
                self.deliveries()
                    .iter()
                    .map(|delivery| (&delivery.path, &delivery.payload))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// authql sending webhooks to `endpoints`, signed with `secret`.
fn webhooks_to(config: &mut Config, endpoints: &[String], secret: &str) {
    config.webhook_urls = endpoints.to_vec();
    config.webhook_secret = Some(SecretString::from(secret));
}

/// The webhook rows waiting in the outbox.
async fn webhook_rows(database_url: &str) -> usize {
    outbox_rows_in(database_url)
        .await
        .iter()
        .filter(|row| row.channel == "webhook")
        .count()
}

/// Waits up to 10 s for the outbox to hold no webhook row.
async fn assert_outbox_drains(database_url: &str) {
    for _ in 0..200 {
        if webhook_rows(database_url).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("webhook rows still wait in the outbox after 10 s");
}

async fn user_id(app: &TestApp, account: &Account) -> String {
    string_at(&app.me(&account.access_token).await, "/data/me/id")
}

#[tokio::test]
async fn register_sends_user_created_and_revoke_tokens_sends_session_revoked() {
    let Some(receiver) = Receiver::start().await else {
        return;
    };
    let app = spawn_app_with(|config| webhooks_to(config, &[receiver.url("/hooks")], SECRET)).await;
    let account = app.register("hooked@x.com").await;
    let id = user_id(&app, &account).await;
    let patience = Duration::from_secs(20);

    let created = receiver
        .wait_for("/hooks", "user.created", ("user_id", &id), patience)
        .await;
    assert_eq!(created.payload["data"]["email"], json!("hooked@x.com"));
    assert!(created.webhook_id.starts_with("msg_"));
    let timestamp = created.payload["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok());
    receiver
        .wait_for(
            "/hooks",
            "session.created",
            ("session_id", &account.session_id),
            patience,
        )
        .await;

    let body = app
        .revoke(
            &account.access_token,
            json!([account.session_id]),
            json!([]),
        )
        .await;
    assert_no_errors(&body);
    let revoked = receiver
        .wait_for(
            "/hooks",
            "session.revoked",
            ("session_id", &account.session_id),
            patience,
        )
        .await;
    assert_eq!(revoked.payload["data"]["user_id"], json!(id));
    assert_outbox_drains(&app.database_url).await;
    assert_eq!(receiver.rejected(), 0);
    // Nothing it holds is a secret: no password, no token.
    for delivery in receiver.deliveries() {
        let text = delivery.payload.to_string();
        assert!(!text.contains(PASSWORD) && !text.contains(&account.access_token));
    }
}

#[tokio::test]
async fn two_endpoints_each_get_every_event_under_one_id() {
    let Some(receiver) = Receiver::start().await else {
        return;
    };
    let endpoints = [receiver.url("/a"), receiver.url("/b")];
    let app = spawn_app_with(|config| webhooks_to(config, &endpoints, SECRET)).await;
    let account = app.register("twice@x.com").await;
    let id = user_id(&app, &account).await;
    let patience = Duration::from_secs(20);
    let at_a = receiver
        .wait_for("/a", "user.created", ("user_id", &id), patience)
        .await;
    let at_b = receiver
        .wait_for("/b", "user.created", ("user_id", &id), patience)
        .await;
    assert_eq!(at_a.webhook_id, at_b.webhook_id);
    assert_eq!(at_a.payload, at_b.payload);
    assert_outbox_drains(&app.database_url).await;
    // Once per endpoint.
    let created: Vec<_> = receiver
        .deliveries()
        .into_iter()
        .filter(|delivery| delivery.event_type() == "user.created")
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
}

/// The issue's case: a receiver stopped for a minute gets what happened meanwhile once it is
/// back (the outbox's backoff, 1 s doubling, tries again about a minute later at most).
#[tokio::test]
async fn a_receiver_stopped_for_a_minute_gets_every_event_when_it_returns() {
    let Some(mut receiver) = Receiver::start().await else {
        return;
    };
    let app = spawn_app_with(|config| webhooks_to(config, &[receiver.url("/hooks")], SECRET)).await;
    receiver.stop().await;
    let account = app.register("patient@x.com").await;
    let id = user_id(&app, &account).await;
    assert_no_errors(
        &app.revoke(
            &account.access_token,
            json!([account.session_id]),
            json!([]),
        )
        .await,
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Nothing was lost meanwhile: user.created, session.created and session.revoked wait.
    assert_eq!(webhook_rows(&app.database_url).await, 3);
    let tried = outbox_rows_in(&app.database_url)
        .await
        .into_iter()
        .filter(|row| row.channel == "webhook")
        .all(|row| row.attempts >= 3);
    assert!(
        tried,
        "each delivery was tried, and deferred, several times"
    );

    receiver.restart().await;
    // The next attempt comes at most about 64 s after the last failed one.
    let patience = Duration::from_secs(150);
    receiver
        .wait_for("/hooks", "user.created", ("user_id", &id), patience)
        .await;
    receiver
        .wait_for(
            "/hooks",
            "session.revoked",
            ("session_id", &account.session_id),
            patience,
        )
        .await;
    // Each row keeps its own backoff: the third may come up to a minute after the other two.
    receiver
        .wait_for(
            "/hooks",
            "session.created",
            ("session_id", &account.session_id),
            patience,
        )
        .await;
    assert_outbox_drains(&app.database_url).await;
    assert_eq!(receiver.deliveries().len(), 3);
}

/// Deliveries the receiver cannot verify (another secret) are refused by the library, kept in
/// the outbox and tried again, never recorded as received.
#[tokio::test]
async fn a_delivery_signed_with_another_secret_is_refused_and_tried_again() {
    let Some(receiver) = Receiver::start().await else {
        return;
    };
    let app = spawn_app_with(|config| {
        webhooks_to(config, &[receiver.url("/hooks")], OTHER_SECRET);
    })
    .await;
    app.register("forged@x.com").await;
    for _ in 0..200 {
        if receiver.rejected() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        receiver.rejected() >= 2,
        "the library refused the deliveries"
    );
    assert!(receiver.deliveries().is_empty());
    assert_eq!(webhook_rows(&app.database_url).await, 2);
}

/// A client that drops `register` after sending it: whenever the user exists, its
/// `user.created` arrives (the write and the queueing run on a task of their own).
#[tokio::test]
async fn a_dropped_register_still_yields_user_created_once_the_user_exists() {
    let Some(receiver) = Receiver::start().await else {
        return;
    };
    let app = spawn_app_with(|config| webhooks_to(config, &[receiver.url("/hooks")], SECRET)).await;
    let query = format!(
        "mutation($input: RegisterInput!) {{ register(input: $input) {{ {AUTH_FIELDS} }} }}"
    );
    // Dropped after 1 to 40 ms: before, during and after the write.
    for delay in 1..=40u64 {
        let request = app
            .client
            .post(format!("{}/graphql", app.address))
            .timeout(Duration::from_millis(delay))
            .json(&json!({ "query": query, "variables": { "input": {
                "email": format!("dropped{delay}@x.com"), "password": PASSWORD } } }));
        let _ = request.send().await;
    }
    // Every write that began has ended well within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let users = user_rows_in(&app.database_url).await;
    for user in &users {
        receiver
            .wait_for(
                "/hooks",
                "user.created",
                ("user_id", &user.id.to_string()),
                Duration::from_secs(20),
            )
            .await;
    }
    let created = receiver
        .deliveries()
        .into_iter()
        .filter(|delivery| delivery.event_type() == "user.created")
        .count();
    assert_eq!(created, users.len(), "one user.created per user, no more");
}

#[tokio::test]
async fn without_webhook_urls_nothing_is_queued() {
    let app = spawn_app().await;
    let account = app.register("quiet@x.com").await;
    app.revoke(
        &account.access_token,
        json!([account.session_id]),
        json!([]),
    )
    .await;
    assert_eq!(webhook_rows(&app.database_url).await, 0);
}

#[tokio::test]
async fn bad_webhook_settings_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = sqlite_url(&dir.path().join("authql.db"));
    let cases: [(&[&str], Option<&str>); 6] = [
        (&["https://app.example/hooks"], None),
        (&["/hooks"], Some(SECRET)),
        (&["ftp://app.example/hooks"], Some(SECRET)),
        (
            &["https://app.example/hooks"],
            Some("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ),
        (&["https://app.example/hooks"], Some("whsec_dG9vIHNob3J0")),
        (&["https://app.example/hooks"], Some("whsec_not*base64")),
    ];
    for (urls, secret) in cases {
        let mut config = test_config(&database_url);
        config.mail_dir = dir.path().join("mail");
        config.webhook_urls = urls.iter().map(|url| url.to_string()).collect();
        config.webhook_secret = secret.map(SecretString::from);
        assert!(
            Application::build(config).await.is_err(),
            "{urls:?} with {secret:?} started"
        );
    }
    // The database was not created by any of them: settings are checked first.
    assert!(!dir.path().join("authql.db").exists());
}

/// Two instances on one PostgreSQL or MongoDB database: each event reaches each endpoint once.
#[tokio::test]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn two_instances_deliver_each_event_once_per_endpoint() {
    let Some(receiver) = Receiver::start().await else {
        return;
    };
    assert!(shared_database_url().is_some(), "needs TEST_DATABASE_URL");
    let endpoints = [receiver.url("/a"), receiver.url("/b")];
    let first = spawn_app_with(|config| webhooks_to(config, &endpoints, SECRET)).await;
    let second = spawn_instance_on(&first, |config| webhooks_to(config, &endpoints, SECRET)).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        let app = if n % 2 == 0 { &first } else { &second };
        let account = app.register(&format!("instance{n}@x.com")).await;
        ids.push(user_id(app, &account).await);
    }
    for id in &ids {
        for path in ["/a", "/b"] {
            receiver
                .wait_for(
                    path,
                    "user.created",
                    ("user_id", id),
                    Duration::from_secs(30),
                )
                .await;
        }
    }
    assert_outbox_drains(&first.database_url).await;
    // Each (event, endpoint) once: the outbox's lease gave each row to one instance.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for delivery in receiver.deliveries() {
        *seen
            .entry((delivery.webhook_id, delivery.path))
            .or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        2 * 2 * ids.len(),
        "user.created and session.created, twice each"
    );
    assert!(seen.values().all(|count| *count == 1), "{seen:?}");
}

/// "Webhooks" in the README: its one code block, the receiver, runs as written with
/// `standardwebhooks` and prints what authql sent it, verified.
#[tokio::test]
async fn the_readme_webhook_receiver_verifies_what_authql_sends() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme
        .find("\n### Webhooks\n")
        .expect("the Webhooks section")..];
    let section = &section[..section[1..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 1)];
    let blocks: Vec<&str> = section.split("```").skip(1).step_by(2).collect();
    assert_eq!(blocks.len(), 1, "every block of the section runs here");
    let code = blocks[0]
        .strip_prefix("python file=receiver.py\n")
        .expect("a ```python file=receiver.py block");
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("receiver.py"), code).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(python)
        .arg("receiver.py")
        .current_dir(dir.path())
        .env("WEBHOOK_SECRET", SECRET)
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the README's receiver starts");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/hooks");
    let app = spawn_app_with(|config| webhooks_to(config, &[url], SECRET)).await;
    let account = app.register("readme@x.com").await;
    let id = user_id(&app, &account).await;
    app.revoke(
        &account.access_token,
        json!([account.session_id]),
        json!([]),
    )
    .await;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while printed.len() < 3 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the receiver printed only {printed:?} in 20 s"))
            .expect("its stdout")
            .expect("a line");
        let (event_type, data) = line.split_once(' ').expect("type and data");
        let data: Value = serde_json::from_str(data).expect("the data as JSON");
        printed.push((event_type.to_owned(), data));
    }
    printed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(printed[0].0, "session.created");
    assert_eq!(printed[1].0, "session.revoked");
    assert_eq!(printed[1].1["session_id"], json!(account.session_id));
    assert_eq!(printed[2].0, "user.created");
    assert_eq!(printed[2].1["user_id"], json!(id));
    assert_eq!(printed[2].1["email"], json!("readme@x.com"));
}

/// The other events: a login's `session.created`, `user.email_changed` when the new address's
/// link is followed (not before), `user.deleted` with its sessions' `session.revoked`.
#[tokio::test]
async fn a_login_an_email_change_and_a_deletion_are_told() {
    let Some(receiver) = Receiver::start().await else {
        return;
    };
    let app = spawn_app_with(|config| webhooks_to(config, &[receiver.url("/hooks")], SECRET)).await;
    let first = app.register("olga@example.com").await;
    let id = user_id(&app, &first).await;
    let patience = Duration::from_secs(20);
    let second = app.login("olga@example.com").await;
    receiver
        .wait_for(
            "/hooks",
            "session.created",
            ("session_id", &second.session_id),
            patience,
        )
        .await;

    let asked = app
        .graphql(
            "mutation($input: RequestEmailChangeInput!) { requestEmailChange(input: $input) }",
            json!({ "input": { "newEmail": "olga@new.example", "password": PASSWORD } }),
            Some(&first.access_token),
        )
        .await;
    assert_no_errors(&asked);
    let token = eml_link_token(&app.mail_dir, "email_change", 1).await;
    assert_outbox_drains(&app.database_url).await;
    let told = |event_type: &str| {
        receiver
            .deliveries()
            .into_iter()
            .filter(|delivery| delivery.event_type() == event_type)
            .count()
    };
    assert_eq!(told("user.email_changed"), 0, "nothing changed yet");
    let verified = app
        .graphql(
            "mutation($token: String!) { verifyEmail(token: $token) { email } }",
            json!({ "token": token }),
            None,
        )
        .await;
    assert_no_errors(&verified);
    let changed = receiver
        .wait_for("/hooks", "user.email_changed", ("user_id", &id), patience)
        .await;
    assert_eq!(changed.payload["data"]["email"], json!("olga@new.example"));
    assert_eq!(
        changed.payload["data"]["previous_email"],
        json!("olga@example.com")
    );

    let deleted = app
        .graphql(
            "mutation($input: DeleteAccountInput!) { deleteAccount(input: $input) }",
            json!({ "input": { "password": PASSWORD } }),
            Some(&first.access_token),
        )
        .await;
    assert_no_errors(&deleted);
    receiver
        .wait_for("/hooks", "user.deleted", ("user_id", &id), patience)
        .await;
    for session in [&first.session_id, &second.session_id] {
        receiver
            .wait_for(
                "/hooks",
                "session.revoked",
                ("session_id", session),
                patience,
            )
            .await;
    }
    assert_outbox_drains(&app.database_url).await;
    assert_eq!(told("user.email_changed"), 1);
    assert_eq!(told("user.deleted"), 1);
}
