//! One place to start a real authql on port 0 against a fresh SQLite file and talk to it over
//! HTTP, as a client would.

use std::path::PathBuf;

use authql::{
    app::Application,
    config::Config,
    store::entity::{session, user},
};
use sea_orm::{Database, DatabaseConnection, EntityTrait};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub database_url: String,
    /// Holds the database file; removed when the test ends.
    dir: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A fresh database in its own temporary folder, then `spawn_app_in`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary folder");
    spawn_app_in(dir, configure).await
}

/// Starts authql on port 0 with the database `authql.db` in `dir`.
pub async fn spawn_app_in(dir: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    let database_url = fresh_database_url(dir.path()).await;
    start(dir, database_url, configure).await
}

async fn start(dir: TempDir, database_url: String, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(&database_url);
    configure(&mut config);
    let app = Application::build(config).await.expect("authql starts");
    let address = format!("http://{}", app.local_addr().expect("a bound address"));
    let (shutdown, stopped) = oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::new(),
        database_url,
        dir: Some(dir),
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    /// Stops this server, waits until it has let go of the database (a SQLite file is served
    /// by one process at a time), and starts another on the same database with `configure`:
    /// a restart, or a new release rolled out.
    pub async fn restart(mut self, configure: impl FnOnce(&mut Config)) -> TestApp {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let dir = self.dir.take().expect("the database folder");
        start(dir, self.database_url.clone(), configure).await
    }
}

/// The PostgreSQL server the suite runs on, when `TEST_DATABASE_URL` names one.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// A new, migrated, empty database: on PostgreSQL when `TEST_DATABASE_URL` is set (a clone of
/// a migrated template, as crates.io's test helpers do: far faster than migrating each), else a
/// SQLite file in `dir`.
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    match postgres_admin_url() {
        Some(admin_url) => fresh_postgres_database(&admin_url).await,
        None => sqlite_url(&dir.join("authql.db")),
    }
}

static POSTGRES_TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn fresh_postgres_database(admin_url: &str) -> String {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;

    let template = POSTGRES_TEMPLATE
        .get_or_init(|| async {
            let name = format!("authql_template_{}", std::process::id());
            let admin = Database::connect(admin_url)
                .await
                .expect("the PostgreSQL server answers");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await.unwrap();
            // Migrate it, then let go: a template must have no connections when cloned.
            let template = Database::connect(with_database(admin_url, &name))
                .await
                .unwrap();
            Migrator::up(&template, None)
                .await
                .expect("the template migrates");
            template.close().await.unwrap();
            name
        })
        .await;
    let name = format!("authql_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(admin_url)
        .await
        .expect("the PostgreSQL server answers");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .await
        .expect("the test database is created");
    admin.close().await.unwrap();
    with_database(admin_url, &name)
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let (server, _) = base.rsplit_once('/').expect("a URL with a database name");
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::defaults();
    config.database_url = database_url.to_owned();
    config.port = 0;
    // The lowest cost bcrypt allows: tests check behaviour, not hashing strength.
    config.bcrypt_cost = 4;
    config.jwt_leeway_seconds = 0;
    config.jwt_secret_key = Some(SecretString::from(
        "a test secret that is long enough to sign",
    ));
    // Every test comes from 127.0.0.1: rate limits are tested on their own (security::brute_force).
    config.rate_limit_ip_per_minute = 10_000;
    config.rate_limit_account_per_minute = 10_000;
    config
}

pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", PathBuf::from(path).display())
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A registered account with the pair from its first session.
pub struct Account {
    pub access_token: String,
    pub refresh_token: String,
    pub session_id: String,
}

impl Account {
    fn from_payload(payload: &Value) -> Self {
        Self {
            access_token: string_at(payload, "/accessToken"),
            refresh_token: string_at(payload, "/refreshToken"),
            session_id: string_at(payload, "/session/id"),
        }
    }
}

pub const AUTH_FIELDS: &str = "accessToken refreshToken tokenType accessTokenExpiresAt \
    refreshTokenExpiresAt user { id email username createdAt } \
    session { id createdAt lastRefreshedAt expiresAt userAgent ipAddress current }";

impl TestApp {
    /// POSTs a GraphQL request; returns the whole response body.
    pub async fn graphql(&self, query: &str, variables: Value, token: Option<&str>) -> Value {
        self.graphql_from(None, query, variables, token).await
    }

    /// As `graphql`, claiming to come from `client_ip` through a proxy (the test app must trust
    /// 127.0.0.1 as a proxy for the claim to count).
    pub async fn graphql_from(
        &self,
        client_ip: Option<&str>,
        query: &str,
        variables: Value,
        token: Option<&str>,
    ) -> Value {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.address))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(client_ip) = client_ip {
            request = request.header("x-forwarded-for", client_ip);
        }
        let response = request.send().await.expect("the server answers");
        response.json().await.expect("a JSON body")
    }

    pub async fn register_raw(&self, email: &str, password: &str, username: Option<&str>) -> Value {
        self.graphql(
            &format!(
                "mutation($input: RegisterInput!) {{ register(input: $input) {{ {AUTH_FIELDS} }} }}"
            ),
            json!({ "input": { "email": email, "password": password, "username": username } }),
            None,
        )
        .await
    }

    pub async fn register(&self, email: &str) -> Account {
        let body = self.register_raw(email, PASSWORD, None).await;
        assert_no_errors(&body);
        Account::from_payload(&body["data"]["register"])
    }

    pub async fn login_raw(&self, email_or_username: &str, password: &str) -> Value {
        self.graphql(
            &format!(
                "mutation($input: LoginInput!) {{ login(input: $input) {{ {AUTH_FIELDS} }} }}"
            ),
            json!({ "input": { "emailOrUsername": email_or_username, "password": password } }),
            None,
        )
        .await
    }

    pub async fn login(&self, email: &str) -> Account {
        let body = self.login_raw(email, PASSWORD).await;
        assert_no_errors(&body);
        Account::from_payload(&body["data"]["login"])
    }

    pub async fn refresh_raw(&self, refresh_token: &str) -> Value {
        self.graphql(
            &format!(
                "mutation($token: String!) {{ refresh(refreshToken: $token) {{ {AUTH_FIELDS} }} }}"
            ),
            json!({ "token": refresh_token }),
            None,
        )
        .await
    }

    pub async fn me(&self, access_token: &str) -> Value {
        self.graphql(
            "{ me { id email username createdAt } }",
            json!({}),
            Some(access_token),
        )
        .await
    }

    pub async fn my_sessions(&self, access_token: &str) -> Value {
        self.graphql(
            "{ mySessions { id createdAt lastRefreshedAt expiresAt userAgent ipAddress current } }",
            json!({}),
            Some(access_token),
        )
        .await
    }

    pub async fn revoke(&self, access_token: &str, session_ids: Value, tokens: Value) -> Value {
        self.graphql(
            "mutation($input: RevokeTokensInput!) { revokeTokens(input: $input) { revokedSessionIds revokedCount } }",
            json!({ "input": { "sessionIds": session_ids, "tokens": tokens } }),
            Some(access_token),
        )
        .await
    }

    /// A plain GET of `path` on the server.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the server answers")
    }

    /// A direct connection to the test's database, to check what was stored.
    pub async fn db(&self) -> DatabaseConnection {
        Database::connect(&self.database_url)
            .await
            .expect("the test database opens")
    }

    pub async fn session_rows(&self) -> Vec<session::Model> {
        session::Entity::find()
            .all(&self.db().await)
            .await
            .expect("sessions are readable")
    }

    pub async fn user_rows(&self) -> Vec<user::Model> {
        user::Entity::find()
            .all(&self.db().await)
            .await
            .expect("users are readable")
    }
}

pub fn string_at(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
        .to_owned()
}

pub fn assert_no_errors(body: &Value) {
    assert!(body.get("errors").is_none(), "unexpected errors: {body}");
}

/// The `extensions.code` of the first error.
pub fn error_code(body: &Value) -> String {
    string_at(body, "/errors/0/extensions/code")
}

/// Asserts UNAUTHENTICATED with the given reason.
pub fn assert_unauthenticated(body: &Value, reason: &str) {
    assert_eq!(error_code(body), "UNAUTHENTICATED", "{body}");
    assert_eq!(
        string_at(body, "/errors/0/extensions/reason"),
        reason,
        "{body}"
    );
}

/// The `jti` claim of a token, read without verification (tests compare it with stored rows).
pub fn jti_of(token: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    string_at(&claims, "/jti")
}

/// The `authql` binary running in a folder of its own; killed when dropped, so that a failing
/// test leaves no process behind.
pub struct RunningBinary {
    pub child: std::process::Child,
    pub port: u16,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl RunningBinary {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Starts the binary in `dir` with nothing in its environment but `PORT` and `env`, and waits
/// until it serves `/healthz`.
pub async fn start_binary(dir: &std::path::Path, env: &[(&str, &str)]) -> RunningBinary {
    use std::{
        process::{Command, Stdio},
        time::{Duration, Instant},
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let log_path = dir.join("authql.log");
    let log = std::fs::File::create(&log_path).expect("a log file");
    let child = Command::new(env!("CARGO_BIN_EXE_authql"))
        .current_dir(dir)
        .env_clear()
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::from(log.try_clone().expect("a second handle")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("the binary starts");
    let binary = RunningBinary {
        child,
        port,
        log_path,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(binary.url("/healthz")).await
            && response.status().is_success()
        {
            return binary;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "authql did not serve /healthz within 20 s:\n{}",
        binary.log()
    );
}

/// Another instance on the database of `first`, as a second server behind a load balancer
/// would be; `configure` adjusts its settings (its keys, say).
pub async fn spawn_instance_on(first: &TestApp, configure: impl FnOnce(&mut Config)) -> TestApp {
    // The database belongs to `first`; this folder only holds nothing.
    let dir = tempfile::tempdir().expect("a temporary folder");
    start(dir, first.database_url.clone(), configure).await
}

/// Asserts an error answered before GraphQL ran: the HTTP status, a JSON body, and its code.
pub async fn assert_http_error(
    response: reqwest::Response,
    status: reqwest::StatusCode,
    code: &str,
) {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), code, "{body}");
}

/// A TCP proxy on 127.0.0.1 in front of a server (PostgreSQL, in the fault tests), that a test
/// can switch off — every forwarded connection is cut and new ones are closed as soon as they
/// are accepted, as when the database goes away — and on again. Stops when dropped.
pub struct SwitchableProxy {
    pub address: std::net::SocketAddr,
    on: tokio::sync::watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl SwitchableProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port for the proxy");
        let address = listener.local_addr().unwrap();
        let (on, watch_on) = tokio::sync::watch::channel(true);
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*watch_on.borrow() {
                    // Off: the connection is closed before a byte is exchanged.
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut switched = watch_on.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // Switched off: both sockets are dropped here, mid-conversation.
                        _ = switched.wait_for(|on| !*on) => {}
                    }
                });
            }
        });
        Self {
            address,
            on,
            accepting,
        }
    }

    pub fn switch_off(&self) {
        self.on.send_replace(false);
    }

    pub fn switch_on(&self) {
        self.on.send_replace(true);
    }

    /// `database_url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, database_url: &str) -> String {
        let (scheme, rest) = database_url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = authority
            .rsplit_once('@')
            .map_or(String::new(), |(user, _)| format!("{user}@"));
        format!("{scheme}://{user}{}/{path}", self.address)
    }
}

impl Drop for SwitchableProxy {
    fn drop(&mut self) {
        self.switch_off();
        self.accepting.abort();
    }
}

/// The `host:port` of a database URL.
pub fn host_and_port(database_url: &str) -> String {
    let (_, rest) = database_url.split_once("://").expect("a URL with a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    }
}
