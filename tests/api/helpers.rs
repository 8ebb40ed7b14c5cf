//! One place to start a real authql on port 0 against a fresh database (a SQLite file, or a
//! database on the PostgreSQL or MongoDB server `TEST_DATABASE_URL` names) and talk to it over
//! HTTP, as a client would.

use std::path::PathBuf;

use authql::{
    app::Application,
    config::Config,
    store::{
        MongoStore,
        entity::{one_time_token, outbox_mail, session, setting, user},
        mongo::{MailDocument, SessionDocument, SettingDocument, TokenDocument, UserDocument},
    },
};
use futures::TryStreamExt;
use sea_orm::{Database, DatabaseConnection, EntityTrait};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    pub address: String,
    /// Where `/metrics` is served, when `METRICS_ADDR` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub client: reqwest::Client,
    pub database_url: String,
    /// Where its mails are written as `.eml` files when it has no SMTP_URL (`MAIL_DIR`).
    pub mail_dir: PathBuf,
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

/// Sends the in-process server's warnings and errors to the running test's own output, which
/// the harness shows when the test fails: why a request was answered SERVICE_UNAVAILABLE, say.
/// `AUTHQL_TEST_LOG` sets another filter (`authql=debug`).
fn capture_server_logs() {
    let filter = std::env::var("AUTHQL_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Starts authql on port 0 with the database `authql.db` in `dir`.
pub async fn spawn_app_in(dir: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    let database_url = fresh_database_url(dir.path()).await;
    start(dir, database_url, configure).await
}

/// Starts authql on the existing database `database_url`, kept in `dir` (from `TestApp::stop`).
pub async fn spawn_app_in_existing(dir: TempDir, database_url: &str) -> TestApp {
    start(dir, database_url.to_owned(), |_| {}).await
}

async fn start(dir: TempDir, database_url: String, configure: impl FnOnce(&mut Config)) -> TestApp {
    capture_server_logs();
    let mut config = test_config(&database_url);
    // Mails (no SMTP_URL) are written beside the database, never into the working directory.
    config.mail_dir = dir.path().join("mail");
    configure(&mut config);
    // What the server really uses, if `configure` changed it.
    let database_url = config.database_url.clone();
    let mail_dir = config.mail_dir.clone();
    let app = Application::build(config).await.expect("authql starts");
    let address = format!("http://{}", app.local_addr().expect("a bound address"));
    let metrics_addr = app.metrics_addr();
    let (shutdown, stopped) = oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        metrics_addr,
        client: reqwest::Client::new(),
        database_url,
        mail_dir,
        dir: Some(dir),
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    /// Stops this server and waits until it has let go of the database; returns the folder
    /// that holds a SQLite file, which lives as long as the returned value.
    pub async fn stop(mut self) -> TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.dir.take().expect("the database folder")
    }

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

/// The database server the suite runs on, when `TEST_DATABASE_URL` names one (PostgreSQL or
/// MongoDB); without, every test has a SQLite file of its own.
pub fn shared_database_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// The PostgreSQL server the suite runs on, when `TEST_DATABASE_URL` names one.
pub fn postgres_admin_url() -> Option<String> {
    shared_database_url().filter(|url| url.starts_with("postgres"))
}

/// The MongoDB deployment the suite runs on, when `TEST_DATABASE_URL` names one.
pub fn mongodb_url() -> Option<String> {
    shared_database_url().filter(|url| MongoStore::handles(url))
}

/// A new, empty database: on PostgreSQL (a clone of a migrated template, as crates.io's test
/// helpers do: far faster than migrating each) or MongoDB (a database of its own name, which
/// authql gives its indexes at start-up) when `TEST_DATABASE_URL` names one, else a SQLite file
/// in `dir`.
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    if let Some(admin_url) = postgres_admin_url() {
        return fresh_postgres_database(&admin_url).await;
    }
    if let Some(url) = mongodb_url() {
        return with_database(
            &url,
            &format!("authql_test_{}", uuid::Uuid::new_v4().simple()),
        );
    }
    sqlite_url(&dir.join("authql.db"))
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
    config.rate_limit_mails_per_address_per_hour = 10_000;
    config.rate_limit_mails_per_ip_per_hour = 10_000;
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

    /// A direct connection to the test's SQL database, to check what was stored.
    pub async fn db(&self) -> DatabaseConnection {
        Database::connect(&self.database_url)
            .await
            .expect("the test database opens")
    }

    pub async fn session_rows(&self) -> Vec<session::Model> {
        session_rows_in(&self.database_url).await
    }

    pub async fn user_rows(&self) -> Vec<user::Model> {
        user_rows_in(&self.database_url).await
    }
}

/// The database of a MongoDB `database_url`, to check what was stored.
pub async fn mongodb_database(database_url: &str) -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(database_url)
        .await
        .expect("the MongoDB URL parses");
    client
        .default_database()
        .expect("the test URL names a database")
}

/// Every stored session, on any backend, in the SQL row's shape.
pub async fn session_rows_in(database_url: &str) -> Vec<session::Model> {
    if !MongoStore::handles(database_url) {
        let db = Database::connect(database_url)
            .await
            .expect("the database opens");
        return session::Entity::find()
            .all(&db)
            .await
            .expect("sessions are readable");
    }
    let documents: Vec<SessionDocument> = mongodb_database(database_url)
        .await
        .collection("sessions")
        .find(bson::doc! {})
        .await
        .expect("sessions are readable")
        .try_collect()
        .await
        .expect("session documents decode");
    documents
        .into_iter()
        .map(|document| session::Model {
            id: document.id.into(),
            user_id: document.user_id.into(),
            access_jti: document.access_jti.into(),
            refresh_jti: document.refresh_jti.into(),
            previous_refresh_jti: document.previous_refresh_jti.map(Into::into),
            created_at: document.created_at.to_chrono(),
            last_refreshed_at: document.last_refreshed_at.map(bson::DateTime::to_chrono),
            expires_at: document.expires_at.to_chrono(),
            idle_expires_at: document.idle_expires_at.to_chrono(),
            user_agent: document.user_agent,
            ip_address: document.ip_address,
            credential_version: document.credential_version,
            authenticated_at: document.authenticated_at.map(bson::DateTime::to_chrono),
            authentication_methods: document.authentication_methods,
        })
        .collect()
}

/// Every stored user, on any backend, in the SQL row's shape.
pub async fn user_rows_in(database_url: &str) -> Vec<user::Model> {
    if !MongoStore::handles(database_url) {
        let db = Database::connect(database_url)
            .await
            .expect("the database opens");
        return user::Entity::find()
            .all(&db)
            .await
            .expect("users are readable");
    }
    let documents: Vec<UserDocument> = mongodb_database(database_url)
        .await
        .collection("users")
        .find(bson::doc! {})
        .await
        .expect("users are readable")
        .try_collect()
        .await
        .expect("user documents decode");
    documents
        .into_iter()
        .map(|document| user::Model {
            id: document.id.into(),
            email: document.email,
            email_normalized: document.email_normalized,
            username: document.username,
            username_normalized: document.username_normalized,
            password_hash: document.password_hash,
            created_at: document.created_at.to_chrono(),
            disabled_at: document.disabled_at.map(bson::DateTime::to_chrono),
            credential_version: document.credential_version,
            email_verified_at: document.email_verified_at.map(bson::DateTime::to_chrono),
            roles: {
                let mut roles = document.roles;
                roles.sort();
                roles.join(",")
            },
        })
        .collect()
}

/// The token of the link in the `nth` (from 1, oldest first) `.eml` file of `kind`
/// (`password_reset`, `email_verification`, `email_change`) in `mail_dir`, waiting up to 20 s
/// for it to be written.
pub async fn eml_link_token(mail_dir: &std::path::Path, kind: &str, nth: usize) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(mail_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| {
                        path.extension().is_some_and(|ext| ext == "eml")
                            && path.file_name().is_some_and(|name| {
                                name.to_string_lossy().contains(&format!("-{kind}-"))
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        if let Some(file) = files.get(nth - 1) {
            let raw = std::fs::read(file).expect("the mail file is readable");
            let message = mail_parser::MessageParser::default()
                .parse(&raw)
                .expect("a message mail-parser reads");
            let text = message.body_text(0).expect("a text part").into_owned();
            let (_, rest) = text.split_once("token=").expect("a link with a token");
            return rest
                .split(|c: char| c.is_whitespace() || c == '&')
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} mail #{nth} in {}",
            mail_dir.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every stored one-time token, on any backend, in the SQL row's shape.
pub async fn token_rows_in(database_url: &str) -> Vec<one_time_token::Model> {
    if !MongoStore::handles(database_url) {
        let db = Database::connect(database_url)
            .await
            .expect("the database opens");
        return one_time_token::Entity::find()
            .all(&db)
            .await
            .expect("tokens are readable");
    }
    let documents: Vec<TokenDocument> = mongodb_database(database_url)
        .await
        .collection("one_time_tokens")
        .find(bson::doc! {})
        .await
        .expect("tokens are readable")
        .try_collect()
        .await
        .expect("token documents decode");
    documents
        .into_iter()
        .map(|document| one_time_token::Model {
            id: document.id.into(),
            user_id: document.user_id.into(),
            purpose: document.purpose,
            digest: document.digest,
            email: document.email,
            email_normalized: document.email_normalized,
            credential_version: document.credential_version,
            created_at: document.created_at.to_chrono(),
            expires_at: document.expires_at.to_chrono(),
            used_at: document.used_at.map(bson::DateTime::to_chrono),
        })
        .collect()
}

/// Moves the expiry of every stored one-time token to a second ago: links that have run out,
/// without waiting for them to.
pub async fn expire_tokens_in(database_url: &str) {
    let past = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    if !MongoStore::handles(database_url) {
        use sea_orm::{QueryFilter, sea_query::Expr};
        let db = Database::connect(database_url)
            .await
            .expect("the database opens");
        one_time_token::Entity::update_many()
            .col_expr(one_time_token::Column::ExpiresAt, Expr::value(past))
            .filter(sea_orm::Condition::all())
            .exec(&db)
            .await
            .expect("tokens are writable");
        return;
    }
    mongodb_database(database_url)
        .await
        .collection::<bson::Document>("one_time_tokens")
        .update_many(
            bson::doc! {},
            bson::doc! { "$set": { "expires_at": bson::DateTime::from_chrono(past) } },
        )
        .await
        .expect("tokens are writable");
}

/// Every mail waiting in the outbox, on any backend, in the SQL row's shape.
pub async fn outbox_rows_in(database_url: &str) -> Vec<outbox_mail::Model> {
    if !MongoStore::handles(database_url) {
        let db = Database::connect(database_url)
            .await
            .expect("the database opens");
        return outbox_mail::Entity::find()
            .all(&db)
            .await
            .expect("the outbox is readable");
    }
    let documents: Vec<MailDocument> = mongodb_database(database_url)
        .await
        .collection("mail_outbox")
        .find(bson::doc! {})
        .await
        .expect("the outbox is readable")
        .try_collect()
        .await
        .expect("mail documents decode");
    documents
        .into_iter()
        .map(|document| outbox_mail::Model {
            id: document.id.into(),
            kind: document.kind,
            envelope_from: document.envelope_from,
            envelope_to: document.envelope_to,
            message: document.message,
            created_at: document.created_at.to_chrono(),
            next_attempt_at: document.next_attempt_at.to_chrono(),
            expires_at: document.expires_at.to_chrono(),
            attempts: i32::try_from(document.attempts).unwrap_or(i32::MAX),
            claimed_until: document.claimed_until.map(bson::DateTime::to_chrono),
            channel: document.channel.unwrap_or_else(|| "mail".into()),
        })
        .collect()
}

/// Every stored server-wide setting as (name, value), on any backend.
pub async fn settings_in(database_url: &str) -> Vec<(String, String)> {
    if !MongoStore::handles(database_url) {
        let db = Database::connect(database_url)
            .await
            .expect("the database opens");
        return setting::Entity::find()
            .all(&db)
            .await
            .expect("settings are readable")
            .into_iter()
            .map(|row| (row.name, row.value))
            .collect();
    }
    let documents: Vec<SettingDocument> = mongodb_database(database_url)
        .await
        .collection("settings")
        .find(bson::doc! {})
        .await
        .expect("settings are readable")
        .try_collect()
        .await
        .expect("setting documents decode");
    documents
        .into_iter()
        .map(|document| (document.name, document.value))
        .collect()
}

/// Deletes users (all of them, or the one with `id`) and sessions (all, or `id`) behind the
/// server's back, as an operator with a database shell would; on SQL a user's sessions go with
/// it (ON DELETE CASCADE), on MongoDB they stay, orphaned.
pub async fn delete_rows(database_url: &str, collection: Collection, id: Option<uuid::Uuid>) {
    if MongoStore::handles(database_url) {
        let filter = match id {
            Some(id) => bson::doc! { "_id": bson::Uuid::from(id) },
            None => bson::doc! {},
        };
        mongodb_database(database_url)
            .await
            .collection::<bson::Document>(collection.name())
            .delete_many(filter)
            .await
            .expect("the delete runs");
        return;
    }
    let db = Database::connect(database_url)
        .await
        .expect("the database opens");
    match (collection, id) {
        (Collection::Users, None) => user::Entity::delete_many().exec(&db).await,
        (Collection::Users, Some(id)) => user::Entity::delete_by_id(id).exec(&db).await,
        (Collection::Sessions, None) => session::Entity::delete_many().exec(&db).await,
        (Collection::Sessions, Some(id)) => session::Entity::delete_by_id(id).exec(&db).await,
    }
    .expect("the delete runs");
}

/// Stores `rows` as sessions behind the server's back, on any backend.
pub async fn insert_session_rows(database_url: &str, rows: Vec<session::Model>) {
    if !MongoStore::handles(database_url) {
        use sea_orm::IntoActiveModel;
        let db = Database::connect(database_url)
            .await
            .expect("the database opens");
        // In chunks: SQLite takes at most 32,766 bound values in one statement.
        for chunk in rows.chunks(1000) {
            session::Entity::insert_many(
                chunk
                    .iter()
                    .cloned()
                    .map(IntoActiveModel::into_active_model),
            )
            .exec(&db)
            .await
            .expect("the sessions are stored");
        }
        return;
    }
    let documents = rows.into_iter().map(|row| SessionDocument {
        id: row.id.into(),
        user_id: row.user_id.into(),
        access_jti: row.access_jti.into(),
        refresh_jti: row.refresh_jti.into(),
        previous_refresh_jti: row.previous_refresh_jti.map(Into::into),
        created_at: bson::DateTime::from_chrono(row.created_at),
        last_refreshed_at: row.last_refreshed_at.map(bson::DateTime::from_chrono),
        expires_at: bson::DateTime::from_chrono(row.expires_at),
        idle_expires_at: bson::DateTime::from_chrono(row.idle_expires_at),
        user_agent: row.user_agent,
        ip_address: row.ip_address,
        credential_version: row.credential_version,
        authenticated_at: row.authenticated_at.map(bson::DateTime::from_chrono),
        authentication_methods: row.authentication_methods,
    });
    mongodb_database(database_url)
        .await
        .collection::<SessionDocument>("sessions")
        .insert_many(documents)
        .await
        .expect("the sessions are stored");
}

/// A store of its own on `database_url`, as another instance would open it.
pub async fn open_store(
    database_url: &str,
    pool: authql::store::PoolSettings,
) -> Box<dyn authql::store::Store> {
    if MongoStore::handles(database_url) {
        Box::new(
            MongoStore::connect(database_url, pool)
                .await
                .expect("MongoDB answers"),
        )
    } else {
        Box::new(
            authql::store::SeaStore::connect(database_url, pool)
                .await
                .expect("the database opens"),
        )
    }
}

/// What `delete_rows` deletes from.
#[derive(Debug, Clone, Copy)]
pub enum Collection {
    Users,
    Sessions,
}

impl Collection {
    fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Sessions => "sessions",
        }
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

    /// `database_url` with its host and port replaced by the proxy's. A MongoDB URL also gets
    /// `directConnection=true`: else the driver learns the server's own address from its
    /// `hello` answer and goes around the proxy.
    pub fn url_for(&self, database_url: &str) -> String {
        let (scheme, rest) = database_url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = authority
            .rsplit_once('@')
            .map_or(String::new(), |(user, _)| format!("{user}@"));
        let url = format!("{scheme}://{user}{}/{path}", self.address);
        if !MongoStore::handles(&url) {
            return url;
        }
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}directConnection=true")
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
    let default_port = if MongoStore::handles(database_url) {
        27017
    } else {
        5432
    };
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}
