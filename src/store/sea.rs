use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, RuntimeErr, SqlErr, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, OnConflict, Query},
    sqlx::{
        ConnectOptions as _, Connection as _,
        postgres::{PgConnectOptions, PgConnection},
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
    },
};
use uuid::Uuid;

use super::{
    AuthMethods, Challenge, ChallengeKind, CreatedSession, DELETE_BATCH, EventStream,
    FIRST_CREDENTIAL_VERSION, FactorRemoval, Identity, IssuedToken, Linking, NewMail, NewSession,
    NewUser, NewWebhook, OutboxChannel, OutboxMail, OutboxMessage, PasskeyAddition, PoolSettings,
    PoolStatus, RoleChange, Rotation, SecondFactors, Session, SessionPage, StoreError, StoreResult,
    StoredPasskey, TokenPurpose, TokenRefusal, TotpCredential, Unlinking, User, UserCredentials,
    VerifiedEmail,
    entity::{
        auth_challenge, one_time_token, outbox_mail, passkey, recovery_code, session, setting,
        totp_credential, unlinked_identity, user, user_identity,
    },
    least_recently_used,
    lookups::{SessionBatches, SessionLookups},
    token_holds, token_state,
};
use super::{
    EventStore, HealthStore, IdentityStore, OutboxStore, RateLimitStore, SecondFactorStore,
    SessionStore, SettingStore, TokenStore, UserStore,
};

/// The store on SeaORM: SQLite (the embedded default) or PostgreSQL, chosen by the URL.
#[derive(Clone)]
pub struct SeaStore {
    db: DatabaseConnection,
    /// PostgreSQL: session lookups, coalesced (`lookups`) on a connection of their own.
    lookups: Option<Arc<SessionLookups>>,
    /// SQLite: how the readiness probe opens its connection, and that connection once open.
    write_probe: Option<WriteProbe>,
    /// PostgreSQL: how `listen_events` opens its `LISTEN` connection, beside the pool (held for
    /// as long as the instance runs, taken from the pool it would leave requests one
    /// connection fewer, and none with `DATABASE_MAX_CONNECTIONS=1`), and its connect timeout.
    listen: Option<(PgConnectOptions, Duration)>,
}

/// SQLite's readiness probe: a connection of its own (its busy timeout is short, the pool's is
/// not), opened once and kept; opened again after a failure.
#[derive(Clone)]
struct WriteProbe {
    options: SqliteConnectOptions,
    connection: std::sync::Arc<tokio::sync::Mutex<Option<sea_orm::sqlx::SqliteConnection>>>,
}

/// How long the readiness probe waits for SQLite's write lock: a probe must answer quickly.
const WRITE_PROBE_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Any constant serves, as long as every authql instance uses the same one.
const MIGRATION_LOCK_KEY: i64 = 0x6175_7468_716c; // "authql"

impl SeaStore {
    /// Opens the pool.
    pub async fn connect(database_url: &str, pool: PoolSettings) -> Result<Self, DbErr> {
        let sqlite = database_url.starts_with("sqlite:");
        // SeaORM's own default on SQLite is a single connection, which queues every request's
        // session lookup behind the one before; WAL lets one reader per core run beside the
        // one writer. PostgreSQL gets sqlx's usual 10.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let max_connections = pool
            .max_connections
            .unwrap_or(if sqlite { cores } else { 10 });
        let mut options = ConnectOptions::new(database_url);
        options
            .max_connections(max_connections)
            .min_connections(1)
            .connect_timeout(pool.connect_timeout)
            .acquire_timeout(pool.acquire_timeout)
            // A server restart or failover kills PostgreSQL connections; checking one before
            // handing it out replaces it instead of failing a request. (Without the ping `me`
            // on PostgreSQL was 9 % faster, but after pg_terminate_backend a request could meet
            // two dead connections in a row: tests/api/faults.rs caught it.) SQLite connections
            // are a file handle that does not die, so they skip the extra round trip.
            .test_before_acquire(!sqlite)
            // Statements carry token ids; authql logs its own events instead.
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |options| configure_sqlite(options, pool.busy_timeout));
        if let Some(path) = Self::sqlite_path(database_url) {
            owner_only(&path);
        }
        let write_probe = if sqlite {
            let options: SqliteConnectOptions = database_url
                .parse()
                .map_err(|_| DbErr::Custom("DATABASE_URL is not a SQLite URL".into()))?;
            Some(WriteProbe {
                options: configure_sqlite(options, WRITE_PROBE_BUSY_TIMEOUT),
                connection: Default::default(),
            })
        } else {
            None
        };
        let (lookups, listen) = if sqlite {
            (None, None)
        } else {
            let options: PgConnectOptions = database_url
                .parse()
                .map_err(|_| DbErr::Custom("DATABASE_URL is not a PostgreSQL URL".into()))?;
            let options = options.disable_statement_logging();
            let timeout = pool.connect_timeout.max(pool.acquire_timeout);
            let lookups = SessionLookups::new(
                PostgresLookups {
                    options: options.clone(),
                    connection: None,
                    timeout,
                    sql: PostgresLookups::statement(),
                },
                timeout,
            );
            (Some(Arc::new(lookups)), Some((options, timeout)))
        };
        Ok(Self {
            db: Database::connect(options).await?,
            lookups,
            write_probe,
            listen,
        })
    }

    /// The file of a SQLite `database_url`; `None` for PostgreSQL and in-memory SQLite.
    pub fn sqlite_path(database_url: &str) -> Option<std::path::PathBuf> {
        if !database_url.starts_with("sqlite:") {
            return None;
        }
        let options: SqliteConnectOptions = database_url.parse().ok()?;
        let path = options.get_filename();
        // sqlx names an in-memory database `file:sqlx-in-memory-<n>`; `mode=memory` keeps
        // any name in memory too. Neither is a file to create or lock.
        let in_memory = path.as_os_str() == ":memory:"
            || path
                .to_str()
                .is_some_and(|name| name.starts_with("file:sqlx-in-memory-"))
            || database_url.contains("mode=memory");
        (!path.as_os_str().is_empty() && !in_memory).then(|| path.to_path_buf())
    }

    /// Whether the database takes a write right now. SQLite: a write in a transaction that is
    /// rolled back, on the probe's own connection (kept open between probes, one probe at a
    /// time), which waits at most 500 ms for the write lock (a file locked by another process,
    /// read-only, on a full disk or gone fails it). PostgreSQL: the server is not read-only (a
    /// standby after a failover is). Errors are `Unavailable`.
    pub async fn check_writable(&self) -> StoreResult<()> {
        use sea_orm::sqlx::{self, Connection};
        let refused = |why: String| StoreError::Unavailable(format!("writes fail: {why}").into());
        match &self.write_probe {
            Some(probe) => {
                let mut kept = probe.connection.lock().await;
                let connection = match kept.as_mut() {
                    Some(connection) => connection,
                    None => kept.insert(
                        sqlx::SqliteConnection::connect_with(&probe.options)
                            .await
                            .map_err(|error| refused(error.to_string()))?,
                    ),
                };
                let write = async {
                    sqlx::query("BEGIN IMMEDIATE")
                        .execute(&mut *connection)
                        .await?;
                    let inserted = sqlx::query(
                        "INSERT INTO settings (name, value) VALUES ('authql.write_probe', '')",
                    )
                    .execute(&mut *connection)
                    .await;
                    sqlx::query("ROLLBACK").execute(&mut *connection).await?;
                    inserted
                };
                match write.await {
                    Ok(_) => Ok(()),
                    Err(error) => {
                        // Opened afresh next time: the file may have been replaced or moved.
                        if let Some(connection) = kept.take() {
                            let _ = connection.close().await;
                        }
                        Err(refused(error.to_string()))
                    }
                }
            }
            None => {
                let read_only = self
                    .db
                    .query_one_raw(Statement::from_string(
                        DbBackend::Postgres,
                        "SELECT current_setting('transaction_read_only') = 'on' AS read_only",
                    ))
                    .await?
                    .and_then(|row| row.try_get::<bool>("", "read_only").ok())
                    .unwrap_or(false);
                if read_only {
                    return Err(refused("the server is read-only".into()));
                }
                Ok(())
            }
        }
    }

    /// Applies pending migrations. On PostgreSQL an advisory lock, held for the migration's
    /// transaction, makes instances that start together take turns instead of racing.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Migrator::up(&self.db, None).await;
        }
        let transaction = begin(&self.db).await?;
        transaction
            .execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .await?;
        Migrator::up(&transaction, None).await?;
        transaction.commit().await
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// Begins a transaction on a task of its own, which a caller cancelled meanwhile cannot stop
/// half-way. sqlx 0.9 queues the ROLLBACK of a dropped transaction only once its `BEGIN` was
/// answered: a request cut off between the two handed the pool a connection inside a
/// transaction that nobody would commit, and the statements of later requests on it joined
/// it: acknowledged, never committed, their locks held until the connection closed. Begun to
/// the end, a transaction dropped unused rolls back as it should. Errors: as `begin`'s, or
/// `Custom` if the task ended abnormally.
async fn begin(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let db = db.clone();
    tokio::spawn(async move { db.begin().await })
        .await
        .map_err(|_| DbErr::Custom("beginning a transaction ended abnormally".into()))?
}

/// A new SQLite file is created readable and writable by its owner only (SQLite gives its WAL
/// and shared-memory files the same mode): it holds the generated signing secret, the sessions'
/// token ids and the password hashes. An existing file that others may read is left as it is,
/// with a warning.
fn owner_only(path: &std::path::Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(metadata) = std::fs::metadata(path)
                && metadata.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    event = "database_file_readable",
                    path = %path.display(),
                    "the SQLite file may be read by other users of this machine (it holds the signing secret and the sessions); chmod 600 it"
                );
            }
        }
        // The driver reports what is wrong with the path when it opens it.
        Err(_) => {}
    }
}

/// WAL lets readers run beside the one writer, and the busy timeout makes concurrent writers
/// queue instead of failing with "database is locked".
fn configure_sqlite(options: SqliteConnectOptions, busy_timeout: Duration) -> SqliteConnectOptions {
    options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(busy_timeout)
        .foreign_keys(true)
}

impl From<user::Model> for User {
    fn from(row: user::Model) -> Self {
        User {
            id: row.id,
            email: row.email,
            username: row.username,
            created_at: row.created_at,
            disabled_at: row.disabled_at,
            credential_version: row.credential_version,
            email_verified_at: row.email_verified_at,
            roles: super::split_roles(&row.roles),
        }
    }
}

impl From<user::Model> for UserCredentials {
    fn from(row: user::Model) -> Self {
        let password_hash = row.password_hash.clone();
        UserCredentials {
            user: row.into(),
            password_hash,
        }
    }
}

impl From<user_identity::Model> for Identity {
    fn from(row: user_identity::Model) -> Self {
        Identity {
            id: row.id,
            user_id: row.user_id,
            provider: row.provider,
            issuer: row.issuer,
            subject: row.subject,
            email: row.email,
            linked_at: row.linked_at,
        }
    }
}

fn identity_row(identity: Identity) -> user_identity::ActiveModel {
    user_identity::ActiveModel {
        id: Set(identity.id),
        user_id: Set(identity.user_id),
        provider: Set(identity.provider),
        issuer: Set(identity.issuer),
        subject: Set(identity.subject),
        email: Set(identity.email),
        linked_at: Set(identity.linked_at),
    }
}

/// Whether the identity `(issuer, subject)` is stored (after a unique violation: which value
/// was taken).
async fn identity_exists(
    connection: &impl ConnectionTrait,
    issuer: &str,
    subject: &str,
) -> Result<bool, DbErr> {
    Ok(user_identity::Entity::find()
        .filter(user_identity::Column::Issuer.eq(issuer))
        .filter(user_identity::Column::Subject.eq(subject))
        .one(connection)
        .await?
        .is_some())
}

impl From<session::Model> for Session {
    fn from(row: session::Model) -> Self {
        Session {
            id: row.id,
            user_id: row.user_id,
            access_jti: row.access_jti,
            refresh_jti: row.refresh_jti,
            previous_refresh_jti: row.previous_refresh_jti,
            created_at: row.created_at,
            last_refreshed_at: row.last_refreshed_at,
            expires_at: row.expires_at,
            idle_expires_at: row.idle_expires_at,
            user_agent: row.user_agent,
            ip_address: row.ip_address,
            credential_version: row.credential_version,
            authenticated_at: row.authenticated_at.unwrap_or(row.created_at),
            authentication_methods: AuthMethods::parse(&row.authentication_methods),
        }
    }
}

/// The SQL twin of `Session::is_live`.
fn live_at(now: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(session::Column::ExpiresAt.gt(now))
        .add(session::Column::IdleExpiresAt.gt(now))
}

/// The PostgreSQL channel session events travel on.
const EVENT_CHANNEL: &str = "authql_session_events";

/// Deletes the user's sessions but `keep` (all of them without) on `connection` (the pool or a
/// transaction), [`DELETE_BATCH`] at a time: one `DELETE ... WHERE id IN (SELECT id ... LIMIT
/// n) RETURNING id` per batch. Returns the ids deleted.
async fn end_sessions(
    connection: &impl ConnectionTrait,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> Result<Vec<Uuid>, DbErr> {
    let mut ended = Vec::new();
    loop {
        let mut batch = Query::select();
        batch
            .column(session::Column::Id)
            .from(session::Entity)
            .and_where(session::Column::UserId.eq(user_id))
            .limit(DELETE_BATCH as u64);
        if let Some(keep) = keep {
            batch.and_where(session::Column::Id.ne(keep));
        }
        let deleted = session::Entity::delete_many()
            .filter(session::Column::Id.in_subquery(batch))
            .exec_with_returning(connection)
            .await?;
        let count = deleted.len();
        ended.extend(deleted.into_iter().map(|row| row.id));
        if count < DELETE_BATCH {
            return Ok(ended);
        }
    }
}

/// `sessions.credential_version IN (the credential version of the session's user, if enabled)`.
fn made_under_current_credentials() -> sea_orm::sea_query::SimpleExpr {
    let mut current = Query::select();
    current
        .column((user::Entity, user::Column::CredentialVersion))
        .from(user::Entity)
        .and_where(
            Expr::col((user::Entity, user::Column::Id))
                .equals((session::Entity, session::Column::UserId)),
        )
        .and_where(Expr::col((user::Entity, user::Column::DisabledAt)).is_null());
    session::Column::CredentialVersion.in_subquery(current)
}

/// Stores `session` if its user exists, is enabled and is at the session's credential
/// version: one `INSERT ... SELECT ... FROM users WHERE ...` (on PostgreSQL the user row is
/// locked `FOR SHARE` by it, so a concurrent password change waits for this insert, then ends
/// the session with the others, or this insert waits for the change and finds the new version).
/// `false` when nothing was stored.
async fn insert_if_current(
    connection: &impl ConnectionTrait,
    session: &NewSession,
) -> Result<bool, DbErr> {
    let backend = connection.get_database_backend();
    let mut current_user = Query::select();
    current_user
        .exprs([
            Expr::val(session.id),
            Expr::val(session.user_id),
            Expr::val(session.access_jti),
            Expr::val(session.refresh_jti),
            Expr::val(session.previous_refresh_jti),
            Expr::val(session.created_at),
            Expr::val(session.last_refreshed_at),
            Expr::val(session.expires_at),
            Expr::val(session.idle_expires_at),
            Expr::val(session.user_agent.clone()),
            Expr::val(session.ip_address.clone()),
            Expr::val(session.credential_version),
            Expr::val(session.authenticated_at),
            Expr::val(session.authentication_methods.to_text()),
        ])
        .from(user::Entity)
        .and_where(user::Column::Id.eq(session.user_id))
        .and_where(user::Column::CredentialVersion.eq(session.credential_version))
        .and_where(user::Column::DisabledAt.is_null());
    if backend == DbBackend::Postgres {
        current_user.lock(LockType::Share);
    }
    let insert = Query::insert()
        .into_table(session::Entity)
        .columns([
            session::Column::Id,
            session::Column::UserId,
            session::Column::AccessJti,
            session::Column::RefreshJti,
            session::Column::PreviousRefreshJti,
            session::Column::CreatedAt,
            session::Column::LastRefreshedAt,
            session::Column::ExpiresAt,
            session::Column::IdleExpiresAt,
            session::Column::UserAgent,
            session::Column::IpAddress,
            session::Column::CredentialVersion,
            session::Column::AuthenticatedAt,
            session::Column::AuthenticationMethods,
        ])
        .select_from(current_user)
        .map_err(|error| DbErr::Custom(error.to_string()))?
        .to_owned();
    let inserted = connection.execute_raw(backend.build(&insert)).await?;
    Ok(inserted.rows_affected() == 1)
}

/// Ends the user's sessions beyond the `keep` most recently used; returns their ids. One count
/// when the user is within the limit, as they almost always are.
async fn evict_beyond(
    connection: &impl ConnectionTrait,
    user_id: Uuid,
    keep: usize,
) -> Result<Vec<Uuid>, DbErr> {
    use sea_orm::{PaginatorTrait, QuerySelect};
    let count = session::Entity::find()
        .filter(session::Column::UserId.eq(user_id))
        .count(connection)
        .await?;
    if count <= keep as u64 {
        return Ok(Vec::new());
    }
    let sessions: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = session::Entity::find()
        .select_only()
        .columns([
            session::Column::Id,
            session::Column::CreatedAt,
            session::Column::LastRefreshedAt,
        ])
        .filter(session::Column::UserId.eq(user_id))
        .into_tuple()
        .all(connection)
        .await?;
    let evicted = least_recently_used(sessions, keep);
    for batch in evicted.chunks(DELETE_BATCH) {
        session::Entity::delete_many()
            .filter(session::Column::Id.is_in(batch.iter().copied()))
            .exec(connection)
            .await?;
    }
    Ok(evicted)
}

fn with_user(found: Option<(session::Model, Option<user::Model>)>) -> Option<(User, Session)> {
    match found {
        Some((session, Some(user))) => Some((user.into(), session.into())),
        _ => None,
    }
}

/// PostgreSQL's session lookups ([`SessionLookups`]): one connection of their own, outside
/// the pool, so that a batch costs one round trip (sqlx's pool pings a connection when it is
/// handed back, and before it is handed out when asked to), with the statement prepared once
/// on it (sqlx keeps it per connection). A connection that turns out dead (a restart, a
/// failover, `pg_terminate_backend`) is replaced and the read, which changes nothing, runs
/// again once on the new one.
struct PostgresLookups {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
    /// The bound on connecting, and on each statement: the pool's connect or acquire timeout,
    /// whichever is longer. Every lookup waits on the batch, so none may hang.
    timeout: Duration,
    /// Shared, not copied, by each statement.
    sql: Arc<str>,
}

/// Sent once on each lookup connection, which runs one statement only: its plan is made once
/// and has one shape whatever the tables hold.
///
/// PostgreSQL plans a prepared statement anew for each execution while the custom plans look
/// cheaper than its generic one (PostgreSQL 15 manual, PREPARE, "Notes"), and for
/// `id = ANY($1)` they always do: a generic plan assumes an array of ten, a custom plan sees the
/// batch's own length. Planning the join then cost more than running it (`create_index_paths`,
/// `btcostestimate` … in a profile of the backend during `me`), so the generic plan is forced.
/// A generic plan is kept until the tables' statistics change (`ANALYZE`), and one made while
/// the tables were near empty scans both: after a bulk import that autovacuum had not yet
/// analyzed, an outside tester saw `me` fall thirtyfold until `ANALYZE`. So the plan's shape is
/// fixed as well, by turning off what it must not use (sequential and bitmap scans, hash and
/// merge joins): an index scan of `sessions`' primary key and a nested loop into `users`'
/// primary key, right for every batch (at most 512 ids) and every table size. A setting the
/// server does not know (`plan_cache_mode` before PostgreSQL 12) is left out. Public for the
/// test that reads the plan these settings give.
pub const LOOKUP_PLAN_SETTINGS: &str = "SELECT set_config(name, value, false) FROM (VALUES \
     ('plan_cache_mode', 'force_generic_plan'), ('enable_seqscan', 'off'), \
     ('enable_bitmapscan', 'off'), ('enable_hashjoin', 'off'), ('enable_mergejoin', 'off')) \
     AS wanted(name, value) JOIN pg_settings USING (name)";

impl PostgresLookups {
    /// `SELECT <session> AS A_*, <user> AS B_* FROM sessions LEFT JOIN users ... WHERE
    /// sessions.id = ANY($1)`: SeaORM's own select of a session and its user, for a `uuid[]`
    /// of any length, so that one prepared statement serves every batch size.
    fn statement() -> Arc<str> {
        session::Entity::find()
            .find_also_related(user::Entity)
            .filter(Expr::cust(r#""sessions"."id" = ANY($1)"#))
            .build(DbBackend::Postgres)
            .sql
            .into()
    }

    async fn read(&mut self, ids: &[Uuid]) -> Result<Vec<(User, Session)>, DbErr> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let connection_error = |error| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(error)));
                let mut connection = PgConnection::connect_with(&self.options)
                    .await
                    .map_err(connection_error)?;
                sea_orm::sqlx::raw_sql(LOOKUP_PLAN_SETTINGS)
                    .execute(&mut connection)
                    .await
                    .map_err(connection_error)?;
                self.connection.insert(connection)
            }
        };
        let rows = sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(self.sql.clone()))
            .bind(ids)
            .fetch_all(connection)
            .await
            .map_err(|error| DbErr::Query(RuntimeErr::SqlxError(Arc::new(error))))?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let row = sea_orm::QueryResult::from(row);
            let session = session::Model::from_query_result(&row, "A_")?;
            let user = user::Model::from_query_result_optional(&row, "B_")?;
            found.extend(with_user(Some((session, user))));
        }
        Ok(found)
    }
}

#[async_trait]
impl SessionBatches for PostgresLookups {
    async fn sessions_by_ids(&mut self, ids: &[Uuid]) -> StoreResult<Vec<(User, Session)>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match tokio::time::timeout(self.timeout, self.read(ids)).await {
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(error)) => StoreError::from(error),
                Err(_) => StoreError::Unavailable("the session lookup timed out".into()),
            };
            // Whatever failed, the connection may be in the middle of an exchange or dead:
            // the next statement starts on a new one.
            self.connection = None;
            if attempt >= 2 || !matches!(error, StoreError::Unavailable(_)) {
                return Err(error);
            }
        }
    }
}

fn new_session_row(session: NewSession) -> session::ActiveModel {
    session::ActiveModel {
        id: Set(session.id),
        user_id: Set(session.user_id),
        access_jti: Set(session.access_jti),
        refresh_jti: Set(session.refresh_jti),
        previous_refresh_jti: Set(session.previous_refresh_jti),
        created_at: Set(session.created_at),
        last_refreshed_at: Set(session.last_refreshed_at),
        expires_at: Set(session.expires_at),
        idle_expires_at: Set(session.idle_expires_at),
        user_agent: Set(session.user_agent),
        ip_address: Set(session.ip_address),
        credential_version: Set(session.credential_version),
        authenticated_at: Set(Some(session.authenticated_at)),
        authentication_methods: Set(session.authentication_methods.to_text()),
    }
}

/// Moves the user's credential version on, the session `keep` with it, and ends every other
/// session of the user, on `transaction`: what a change to how the account is proven does.
/// `None` when there is no such user (or, with `keep`, that session is not the user's, under
/// their current version, any more).
async fn move_credentials_on(
    transaction: &DatabaseTransaction,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> Result<Option<Vec<Uuid>>, DbErr> {
    let updated = user::Entity::update_many()
        .col_expr(
            user::Column::CredentialVersion,
            Expr::col(user::Column::CredentialVersion).add(1),
        )
        .filter(user::Column::Id.eq(user_id))
        .exec_with_returning(transaction)
        .await?;
    let Some(version) = updated.first().map(|user| user.credential_version) else {
        return Ok(None);
    };
    if let Some(keep) = keep {
        let kept = session::Entity::update_many()
            .col_expr(session::Column::CredentialVersion, Expr::value(version))
            .filter(session::Column::Id.eq(keep))
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::CredentialVersion.eq(version - 1))
            .exec(transaction)
            .await?
            .rows_affected;
        if kept == 0 {
            return Ok(None);
        }
    }
    Ok(Some(end_sessions(transaction, user_id, keep).await?))
}

/// Deletes every second factor of the user and their unfinished ceremonies (nothing relies on
/// ON DELETE CASCADE, which SQLite needs a pragma for).
async fn delete_second_factors(
    connection: &impl ConnectionTrait,
    user_id: Uuid,
) -> Result<(), DbErr> {
    totp_credential::Entity::delete_many()
        .filter(totp_credential::Column::UserId.eq(user_id))
        .exec(connection)
        .await?;
    recovery_code::Entity::delete_many()
        .filter(recovery_code::Column::UserId.eq(user_id))
        .exec(connection)
        .await?;
    passkey::Entity::delete_many()
        .filter(passkey::Column::UserId.eq(user_id))
        .exec(connection)
        .await?;
    auth_challenge::Entity::delete_many()
        .filter(auth_challenge::Column::UserId.eq(user_id))
        .exec(connection)
        .await?;
    Ok(())
}

/// Ends a factor's removal begun on `transaction`: the credential version moves on, the other
/// sessions end, and it commits; or, when `keep_session` is no longer the user's, nothing.
async fn finish_removal(
    transaction: DatabaseTransaction,
    user_id: Uuid,
    keep_session: Uuid,
) -> StoreResult<FactorRemoval> {
    match move_credentials_on(&transaction, user_id, Some(keep_session)).await? {
        Some(ended) => {
            transaction.commit().await?;
            Ok(FactorRemoval::Removed(ended))
        }
        None => {
            transaction.rollback().await?;
            Ok(FactorRemoval::SessionEnded)
        }
    }
}

/// Replaces the user's recovery codes by `digests`.
async fn store_recovery_codes(
    connection: &impl ConnectionTrait,
    user_id: Uuid,
    digests: Vec<String>,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    recovery_code::Entity::delete_many()
        .filter(recovery_code::Column::UserId.eq(user_id))
        .exec(connection)
        .await?;
    if digests.is_empty() {
        return Ok(());
    }
    recovery_code::Entity::insert_many(digests.into_iter().map(|digest| {
        recovery_code::ActiveModel {
            id: Set(Uuid::new_v4()),
            user_id: Set(user_id),
            digest: Set(digest),
            created_at: Set(at),
            used_at: Set(None),
        }
    }))
    .exec(connection)
    .await?;
    Ok(())
}

impl From<totp_credential::Model> for TotpCredential {
    fn from(row: totp_credential::Model) -> Self {
        Self {
            user_id: row.user_id,
            secret: row.secret,
            confirmed_at: row.confirmed_at,
            last_step: row.last_step,
            created_at: row.created_at,
        }
    }
}

impl From<passkey::Model> for StoredPasskey {
    fn from(row: passkey::Model) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            credential_id: row.credential_id,
            name: row.name,
            credential: row.credential,
            counter: row.counter,
            backup_eligible: row.backup_eligible,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        }
    }
}

impl TryFrom<auth_challenge::Model> for Challenge {
    type Error = DbErr;

    fn try_from(row: auth_challenge::Model) -> Result<Self, DbErr> {
        Ok(Self {
            kind: ChallengeKind::parse(&row.kind)
                .ok_or_else(|| DbErr::Custom(format!("unknown challenge kind {}", row.kind)))?,
            id: row.id,
            digest: row.digest,
            user_id: row.user_id,
            session_id: row.session_id,
            credential_version: row.credential_version,
            methods: AuthMethods::parse(&row.methods),
            state: row.state,
            attempts: row.attempts,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}

/// Stores a token and its mails, after making the user's unused tokens of its purpose useless.
async fn issue(connection: &impl ConnectionTrait, issued: IssuedToken) -> Result<(), DbErr> {
    let token = issued.token;
    end_tokens(connection, token.user_id, token.purpose, token.created_at).await?;
    one_time_token::Entity::insert(one_time_token::ActiveModel {
        id: Set(token.id),
        user_id: Set(token.user_id),
        purpose: Set(token.purpose.as_str().to_owned()),
        digest: Set(token.digest),
        email: Set(token.email),
        email_normalized: Set(token.email_normalized),
        credential_version: Set(token.credential_version),
        created_at: Set(token.created_at),
        expires_at: Set(token.expires_at),
        used_at: Set(None),
    })
    .exec_without_returning(connection)
    .await?;
    queue(connection, OutboxChannel::Mail, issued.mails).await
}

/// Puts rows of `channel` in the outbox, due at once.
async fn queue(
    connection: &impl ConnectionTrait,
    channel: OutboxChannel,
    mails: Vec<NewMail>,
) -> Result<(), DbErr> {
    if mails.is_empty() {
        return Ok(());
    }
    let rows = mails.into_iter().map(|mail| outbox_mail::ActiveModel {
        id: Set(mail.id),
        kind: Set(mail.kind),
        envelope_from: Set(mail.envelope_from),
        envelope_to: Set(mail.envelope_to),
        message: Set(mail.message),
        created_at: Set(mail.created_at),
        next_attempt_at: Set(mail.created_at),
        expires_at: Set(mail.expires_at),
        attempts: Set(0),
        claimed_until: Set(None),
        channel: Set(channel.as_str().to_owned()),
    });
    outbox_mail::Entity::insert_many(rows)
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

/// Makes the user's unused tokens of `purpose` useless, as of `now`.
async fn end_tokens(
    connection: &impl ConnectionTrait,
    user_id: Uuid,
    purpose: TokenPurpose,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    one_time_token::Entity::update_many()
        .col_expr(one_time_token::Column::UsedAt, Expr::value(Some(now)))
        .filter(one_time_token::Column::UserId.eq(user_id))
        .filter(one_time_token::Column::Purpose.eq(purpose.as_str()))
        .filter(one_time_token::Column::UsedAt.is_null())
        .exec(connection)
        .await?;
    Ok(())
}

/// Takes the token of `digest` if it is of one of `purposes`, unused and unexpired at `now`:
/// one conditional update, so that of concurrent takers exactly one gets it.
async fn take_token(
    connection: &impl ConnectionTrait,
    digest: &str,
    purposes: &[TokenPurpose],
    now: DateTime<Utc>,
) -> Result<Option<one_time_token::Model>, DbErr> {
    Ok(one_time_token::Entity::update_many()
        .col_expr(one_time_token::Column::UsedAt, Expr::value(Some(now)))
        .filter(one_time_token::Column::Digest.eq(digest))
        .filter(one_time_token::Column::Purpose.is_in(purposes.iter().map(|p| p.as_str())))
        .filter(one_time_token::Column::UsedAt.is_null())
        .filter(one_time_token::Column::ExpiresAt.gt(now))
        .exec_with_returning(connection)
        .await?
        .into_iter()
        .next())
}

/// On PostgreSQL, locks the row of the user the token of `digest` belongs to (if any) before
/// the token is taken: every transaction that writes a user's row and its tokens then takes the
/// user's lock first (a reset and a change link of one user followed at once would otherwise
/// each hold what the other waits for, and deadlock). SQLite's one writer needs no order, and a
/// read before the first write would only risk a snapshot that cannot be upgraded.
async fn lock_user_of_token(transaction: &DatabaseTransaction, digest: &str) -> Result<(), DbErr> {
    if transaction.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let Some(token) = one_time_token::Entity::find()
        .filter(one_time_token::Column::Digest.eq(digest))
        .one(transaction)
        .await?
    else {
        return Ok(());
    };
    user::Entity::find_by_id(token.user_id)
        .lock_exclusive()
        .one(transaction)
        .await?;
    Ok(())
}

/// The user a taken token acts for, its row locked until the transaction ends (PostgreSQL's
/// `FOR UPDATE`; SQLite's transaction holds the database's write lock already, from the token's
/// update), and whether the token still holds for it ([`token_holds`]). `None`: no such user.
async fn token_user(
    connection: &impl ConnectionTrait,
    token: &one_time_token::Model,
) -> Result<Option<(user::Model, bool)>, DbErr> {
    let Some(purpose) = TokenPurpose::parse(&token.purpose) else {
        return Ok(None);
    };
    Ok(user::Entity::find_by_id(token.user_id)
        .lock_exclusive()
        .one(connection)
        .await?
        .map(|user| {
            let holds = token_holds(
                purpose,
                (token.credential_version, &token.email_normalized),
                (user.credential_version, &user.email_normalized),
            );
            (user, holds)
        }))
}

/// Whether the token of `digest` could be taken now for one of `purposes`.
async fn token_status(
    connection: &impl ConnectionTrait,
    digest: &str,
    purposes: &[TokenPurpose],
    now: DateTime<Utc>,
) -> Result<Result<(), TokenRefusal>, DbErr> {
    let found = one_time_token::Entity::find()
        .filter(one_time_token::Column::Digest.eq(digest))
        .one(connection)
        .await?;
    Ok(token_state(found.as_ref().and_then(|token| {
        TokenPurpose::parse(&token.purpose)
            .filter(|purpose| purposes.contains(purpose))
            .map(|_| (token.used_at.is_some(), token.expires_at <= now))
    })))
}

/// Why the token of `digest` could not be taken for one of `purposes` (`Used` when it looks
/// takeable: a concurrent caller took it between the two looks).
async fn refusal(
    connection: &impl ConnectionTrait,
    digest: &str,
    purposes: &[TokenPurpose],
    now: DateTime<Utc>,
) -> Result<TokenRefusal, DbErr> {
    Ok(token_status(connection, digest, purposes, now)
        .await?
        .err()
        .unwrap_or(TokenRefusal::Used))
}

/// Marks the user's address verified as of `at`, unless it is already; the user as stored.
async fn verified(
    connection: &impl ConnectionTrait,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<user::Model>, DbErr> {
    user::Entity::update_many()
        .col_expr(
            user::Column::EmailVerifiedAt,
            sea_orm::sea_query::Func::coalesce([
                Expr::col(user::Column::EmailVerifiedAt),
                Expr::value(at),
            ])
            .into(),
        )
        .filter(user::Column::Id.eq(user_id))
        .exec_with_returning(connection)
        .await
        .map(|rows| rows.into_iter().next())
}

#[async_trait]
impl UserStore for SeaStore {
    async fn register_user(
        &self,
        new_user: NewUser,
        new_session: Option<NewSession>,
        verification: Option<IssuedToken>,
    ) -> StoreResult<(User, Option<Session>)> {
        let email_normalized = new_user.email_normalized.clone();
        let identity = new_user.identity;
        let row = user::ActiveModel {
            id: Set(new_user.id),
            email: Set(new_user.email),
            email_normalized: Set(new_user.email_normalized),
            username: Set(new_user.username),
            username_normalized: Set(new_user.username_normalized),
            password_hash: Set(new_user.password_hash),
            created_at: Set(new_user.created_at),
            disabled_at: Set(None),
            credential_version: Set(FIRST_CREDENTIAL_VERSION),
            email_verified_at: Set(new_user.email_verified_at),
            roles: Set(String::new()),
        };
        let identity_key = identity
            .as_ref()
            .map(|identity| (identity.issuer.clone(), identity.subject.clone()));
        let transaction = begin(&self.db).await?;
        let inserted = async {
            let user = user::Entity::insert(row)
                .exec_with_returning(&transaction)
                .await?;
            if let Some(identity) = identity {
                user_identity::Entity::insert(identity_row(identity))
                    .exec_without_returning(&transaction)
                    .await?;
            }
            let session = match new_session {
                Some(session) => Some(
                    session::Entity::insert(new_session_row(session))
                        .exec_with_returning(&transaction)
                        .await?,
                ),
                None => None,
            };
            if let Some(issued) = verification {
                issue(&transaction, issued).await?;
            }
            Ok::<_, DbErr>((user, session))
        }
        .await;
        match inserted {
            Ok((user, session)) => {
                transaction.commit().await?;
                Ok((user.into(), session.map(Into::into)))
            }
            Err(err) => {
                transaction.rollback().await?;
                if let Some(SqlErr::UniqueConstraintViolation(_)) = err.sql_err() {
                    // Constraint names differ between backends; asking which value is taken
                    // does not. Email wins when both are, as the username defaults to it.
                    if let Some((issuer, subject)) = identity_key
                        && identity_exists(&self.db, &issuer, &subject).await?
                    {
                        return Err(StoreError::IdentityTaken);
                    }
                    let email_taken = user::Entity::find()
                        .filter(user::Column::EmailNormalized.eq(email_normalized))
                        .one(&self.db)
                        .await?
                        .is_some();
                    return Err(if email_taken {
                        StoreError::EmailTaken
                    } else {
                        StoreError::UsernameTaken
                    });
                }
                Err(err.into())
            }
        }
    }

    async fn reset_password(
        &self,
        digest: &str,
        now: DateTime<Utc>,
        password_hash: String,
    ) -> StoreResult<Result<(User, Vec<Uuid>), TokenRefusal>> {
        const PURPOSES: [TokenPurpose; 1] = [TokenPurpose::PasswordReset];
        let transaction = begin(&self.db).await?;
        // `Err(None)`: not taken; `Err(Some(..))`: taken, but it no longer holds.
        let outcome = async {
            lock_user_of_token(&transaction, digest).await?;
            let Some(token) = take_token(&transaction, digest, &PURPOSES, now).await? else {
                return Ok(Err(None));
            };
            let user = match token_user(&transaction, &token).await? {
                None => return Ok(Err(Some(TokenRefusal::Unknown))),
                Some((_, false)) => return Ok(Err(Some(TokenRefusal::Used))),
                Some((user, true)) => user,
            };
            let updated = user::Entity::update_many()
                .col_expr(user::Column::PasswordHash, Expr::value(password_hash))
                .col_expr(
                    user::Column::CredentialVersion,
                    Expr::col(user::Column::CredentialVersion).add(1),
                )
                .filter(user::Column::Id.eq(user.id))
                .exec_with_returning(&transaction)
                .await?;
            let Some(mut user) = updated.into_iter().next() else {
                return Ok(Err(Some(TokenRefusal::Unknown)));
            };
            // The mail proved the address (the token holds: it is still the account's).
            if user.email_verified_at.is_none() {
                user = verified(&transaction, user.id, now).await?.unwrap_or(user);
            }
            let ended = end_sessions(&transaction, user.id, None).await?;
            Ok::<_, DbErr>(Ok((User::from(user), ended)))
        }
        .await;
        match outcome {
            Ok(Ok(done)) => {
                transaction.commit().await?;
                Ok(Ok(done))
            }
            // Taken, but useless: the token stays used.
            Ok(Err(Some(refused))) => {
                transaction.commit().await?;
                Ok(Err(refused))
            }
            Ok(Err(None)) => {
                transaction.rollback().await?;
                Ok(Err(refusal(&self.db, digest, &PURPOSES, now).await?))
            }
            Err(error) => {
                let _ = transaction.rollback().await;
                Err(error.into())
            }
        }
    }

    async fn verify_email(
        &self,
        digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<VerifiedEmail, TokenRefusal>> {
        const PURPOSES: [TokenPurpose; 2] =
            [TokenPurpose::EmailVerification, TokenPurpose::EmailChange];
        let transaction = begin(&self.db).await?;
        let outcome = async {
            lock_user_of_token(&transaction, digest).await?;
            let Some(token) = take_token(&transaction, digest, &PURPOSES, now).await? else {
                return Ok::<_, DbErr>(Err(None));
            };
            let user = match token_user(&transaction, &token).await? {
                None => return Ok(Err(Some(TokenRefusal::Unknown))),
                Some((_, false)) => return Ok(Err(Some(TokenRefusal::Used))),
                Some((user, true)) => user,
            };
            if TokenPurpose::parse(&token.purpose) == Some(TokenPurpose::EmailChange) {
                let mut change = user::Entity::update_many()
                    .col_expr(user::Column::Email, Expr::value(token.email.clone()))
                    .col_expr(
                        user::Column::EmailNormalized,
                        Expr::value(token.email_normalized.clone()),
                    )
                    .col_expr(user::Column::EmailVerifiedAt, Expr::value(Some(now)))
                    .filter(user::Column::Id.eq(user.id));
                // A username that was the email follows it: a username holds `@` only as its
                // account's own address.
                if user.username_normalized == user.email_normalized {
                    change = change
                        .col_expr(user::Column::Username, Expr::value(token.email.clone()))
                        .col_expr(
                            user::Column::UsernameNormalized,
                            Expr::value(token.email_normalized.clone()),
                        );
                }
                let changed = change.exec_with_returning(&transaction).await?;
                // Links sent to the old address no longer hold from here on; they are ended
                // too, so that they stay dead should the address come back.
                for purpose in [TokenPurpose::PasswordReset, TokenPurpose::EmailVerification] {
                    end_tokens(&transaction, user.id, purpose, now).await?;
                }
                let previous_email = Some(user.email.clone());
                return Ok(Ok((
                    changed.into_iter().next().unwrap_or(user),
                    previous_email,
                )));
            }
            Ok(Ok((
                verified(&transaction, user.id, now).await?.unwrap_or(user),
                None,
            )))
        }
        .await;
        match outcome {
            Ok(Ok((user, previous_email))) => {
                transaction.commit().await?;
                Ok(Ok(VerifiedEmail {
                    user: user.into(),
                    previous_email,
                }))
            }
            // Taken, but useless: the token stays used.
            Ok(Err(Some(refused))) => {
                transaction.commit().await?;
                Ok(Err(refused))
            }
            Ok(Err(None)) => {
                transaction.rollback().await?;
                Ok(Err(refusal(&self.db, digest, &PURPOSES, now).await?))
            }
            Err(error) => {
                let _ = transaction.rollback().await;
                if let Some(SqlErr::UniqueConstraintViolation(_)) = error.sql_err() {
                    return Err(StoreError::EmailTaken);
                }
                Err(error.into())
            }
        }
    }

    async fn mark_email_verified(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        Ok(verified(&self.db, user_id, at).await?.map(Into::into))
    }

    async fn find_credentials(
        &self,
        login_normalized: &str,
    ) -> StoreResult<Option<UserCredentials>> {
        let column = if login_normalized.contains('@') {
            user::Column::EmailNormalized
        } else {
            user::Column::UsernameNormalized
        };
        Ok(user::Entity::find()
            .filter(column.eq(login_normalized))
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn find_credentials_by_id(&self, user_id: Uuid) -> StoreResult<Option<UserCredentials>> {
        Ok(user::Entity::find_by_id(user_id)
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn set_user_disabled(
        &self,
        user_id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let transaction = begin(&self.db).await?;
        let mut update = user::Entity::update_many()
            .col_expr(user::Column::DisabledAt, Expr::value(disabled_at))
            .filter(user::Column::Id.eq(user_id));
        if disabled_at.is_some() {
            update = update.col_expr(
                user::Column::CredentialVersion,
                Expr::col(user::Column::CredentialVersion).add(1),
            );
        }
        let updated = update.exec(&transaction).await?.rows_affected;
        let ended = if updated > 0 && disabled_at.is_some() {
            end_sessions(&transaction, user_id, None).await?
        } else {
            Vec::new()
        };
        transaction.commit().await?;
        Ok((updated > 0).then_some(ended))
    }

    async fn change_user_role(
        &self,
        user_id: Uuid,
        role: &str,
        grant: bool,
    ) -> StoreResult<RoleChange> {
        let transaction = begin(&self.db).await?;
        // The row is this transaction's before it is read: concurrent changes queue and each
        // sees the one before it.
        if lock_user(&transaction, user_id).await? == 0 {
            return Ok(RoleChange::UnknownUser);
        }
        let Some(row) = user::Entity::find_by_id(user_id).one(&transaction).await? else {
            return Ok(RoleChange::UnknownUser);
        };
        let held = super::split_roles(&row.roles);
        let Some(roles) = super::change_roles(&held, role, grant) else {
            return Ok(RoleChange::TooManyRoles);
        };
        if roles != held {
            user::Entity::update_many()
                .col_expr(
                    user::Column::Roles,
                    Expr::value(super::joined_roles(&roles)),
                )
                .filter(user::Column::Id.eq(user_id))
                .exec(&transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(RoleChange::Roles(roles))
    }

    async fn delete_user(
        &self,
        user_id: Uuid,
        proven_version: Option<i64>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let transaction = begin(&self.db).await?;
        // The guard is a write that changes nothing, so that it takes the user's row lock
        // (PostgreSQL) and the write lock (SQLite, where a read first could leave a snapshot
        // that cannot become a write) before anything else.
        let mut guard = user::Entity::update_many()
            .col_expr(
                user::Column::CredentialVersion,
                Expr::col(user::Column::CredentialVersion),
            )
            .filter(user::Column::Id.eq(user_id));
        if let Some(version) = proven_version {
            guard = guard.filter(user::Column::CredentialVersion.eq(version));
        }
        if guard.exec(&transaction).await?.rows_affected == 0 {
            transaction.rollback().await?;
            return Ok(None);
        }
        // The sessions go first and explicitly: their ids are reported, and nothing relies on
        // ON DELETE CASCADE being switched on (SQLite needs a pragma for it).
        let ended = end_sessions(&transaction, user_id, None).await?;
        one_time_token::Entity::delete_many()
            .filter(one_time_token::Column::UserId.eq(user_id))
            .exec(&transaction)
            .await?;
        delete_second_factors(&transaction, user_id).await?;
        user_identity::Entity::delete_many()
            .filter(user_identity::Column::UserId.eq(user_id))
            .exec(&transaction)
            .await?;
        let deleted = user::Entity::delete_by_id(user_id)
            .exec(&transaction)
            .await?
            .rows_affected;
        transaction.commit().await?;
        Ok((deleted > 0).then_some(ended))
    }

    async fn change_password(
        &self,
        user_id: Uuid,
        proven_version: i64,
        password_hash: String,
        keep_session: Uuid,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let transaction = begin(&self.db).await?;
        let updated = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(password_hash))
            .col_expr(
                user::Column::CredentialVersion,
                Expr::col(user::Column::CredentialVersion).add(1),
            )
            .filter(user::Column::Id.eq(user_id))
            .filter(user::Column::CredentialVersion.eq(proven_version))
            .exec_with_returning(&transaction)
            .await?;
        let Some(version) = updated.first().map(|user| user.credential_version) else {
            transaction.rollback().await?;
            return Ok(None);
        };
        session::Entity::update_many()
            .col_expr(session::Column::CredentialVersion, Expr::value(version))
            .filter(session::Column::Id.eq(keep_session))
            .filter(session::Column::UserId.eq(user_id))
            .exec(&transaction)
            .await?;
        let ended = end_sessions(&transaction, user_id, Some(keep_session)).await?;
        transaction.commit().await?;
        Ok(Some(ended))
    }

    async fn replace_password_hash(
        &self,
        user_id: Uuid,
        current: &str,
        new: String,
    ) -> StoreResult<bool> {
        let replaced = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(new))
            .filter(user::Column::Id.eq(user_id))
            .filter(user::Column::PasswordHash.eq(current))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(replaced == 1)
    }
}

#[async_trait]
impl SessionStore for SeaStore {
    async fn create_session(
        &self,
        new_session: NewSession,
        max_sessions: usize,
    ) -> StoreResult<Option<CreatedSession>> {
        // The insert comes first, so that SQLite's transaction takes the write lock at once.
        let transaction = begin(&self.db).await?;
        let created = async {
            if !insert_if_current(&transaction, &new_session).await? {
                return Ok(None);
            }
            evict_beyond(&transaction, new_session.user_id, max_sessions)
                .await
                .map(Some)
        }
        .await;
        match created {
            Ok(Some(evicted)) => {
                transaction.commit().await?;
                Ok(Some(CreatedSession {
                    session: new_session,
                    evicted,
                }))
            }
            Ok(None) => {
                transaction.rollback().await?;
                Ok(None)
            }
            Err(error) => {
                let _ = transaction.rollback().await;
                // The user went away between the check and the insert (no lock on SQLite is
                // needed for that, but a foreign key says the same).
                if let Some(SqlErr::ForeignKeyConstraintViolation(_)) = error.sql_err() {
                    return Ok(None);
                }
                Err(error.into())
            }
        }
    }

    async fn find_session_by_access_jti(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Session)>> {
        if let Some(lookups) = &self.lookups {
            return lookups.find(session_id, access_jti, now).await;
        }
        // `.all()`, not `.one()`: `.one()` adds `LIMIT ?`, and SQLite re-prepares a statement
        // whose LIMIT is a bound parameter on every run (it plans with the bound value), which
        // on this, the hottest query, cost more than the lookup itself. The primary key matches
        // one row at most anyway.
        let found = session::Entity::find_by_id(session_id)
            .filter(session::Column::AccessJti.eq(access_jti))
            .filter(live_at(now))
            .filter(
                Expr::col((session::Entity, session::Column::CredentialVersion))
                    .equals((user::Entity, user::Column::CredentialVersion)),
            )
            .find_also_related(user::Entity)
            .all(&self.db)
            .await?
            .into_iter()
            .next();
        Ok(with_user(found))
    }

    async fn find_session(&self, session_id: Uuid) -> StoreResult<Option<(User, Session)>> {
        let found = session::Entity::find_by_id(session_id)
            .find_also_related(user::Entity)
            .one(&self.db)
            .await?;
        Ok(with_user(found))
    }

    async fn rotate_session(&self, rotation: Rotation) -> StoreResult<Option<(User, Session)>> {
        let updated = session::Entity::update_many()
            .col_expr(
                session::Column::AccessJti,
                Expr::value(rotation.new_access_jti),
            )
            .col_expr(
                session::Column::RefreshJti,
                Expr::value(rotation.new_refresh_jti),
            )
            .col_expr(
                session::Column::PreviousRefreshJti,
                Expr::value(rotation.presented_refresh_jti),
            )
            .col_expr(session::Column::LastRefreshedAt, Expr::value(rotation.at))
            .col_expr(
                session::Column::IdleExpiresAt,
                Expr::value(rotation.idle_expires_at),
            )
            .filter(session::Column::Id.eq(rotation.session_id))
            .filter(session::Column::RefreshJti.eq(rotation.presented_refresh_jti))
            .filter(live_at(rotation.at))
            .filter(made_under_current_credentials())
            .exec_with_returning(&self.db)
            .await?;
        let Some(session) = updated.into_iter().next() else {
            return Ok(None);
        };
        let user = user::Entity::find_by_id(session.user_id)
            .one(&self.db)
            .await?;
        Ok(user.map(|user| (user.into(), session.into())))
    }

    async fn reauthenticate_session(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        at: DateTime<Utc>,
        methods: AuthMethods,
    ) -> StoreResult<Option<Session>> {
        let updated = session::Entity::update_many()
            .col_expr(session::Column::AuthenticatedAt, Expr::value(at))
            .col_expr(
                session::Column::AuthenticationMethods,
                Expr::value(methods.to_text()),
            )
            .filter(session::Column::Id.eq(session_id))
            .filter(session::Column::AccessJti.eq(access_jti))
            .filter(live_at(at))
            .filter(made_under_current_credentials())
            .exec_with_returning(&self.db)
            .await?;
        Ok(updated.into_iter().next().map(Into::into))
    }

    async fn list_live_sessions(
        &self,
        user_id: Uuid,
        credential_version: i64,
        now: DateTime<Utc>,
        page: SessionPage,
    ) -> StoreResult<Vec<Session>> {
        use sea_orm::QuerySelect;
        let mut find = session::Entity::find()
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::CredentialVersion.eq(credential_version))
            .filter(live_at(now));
        if let Some(after) = page.after {
            find = find.filter(
                Condition::any()
                    .add(session::Column::CreatedAt.lt(after.created_at))
                    .add(
                        Condition::all()
                            .add(session::Column::CreatedAt.eq(after.created_at))
                            .add(session::Column::Id.lt(after.id)),
                    ),
            );
        }
        Ok(find
            .order_by_desc(session::Column::CreatedAt)
            .order_by_desc(session::Column::Id)
            .limit(page.first)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        session_ids: &[Uuid],
    ) -> StoreResult<Vec<Uuid>> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(session::Entity::delete_many()
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::Id.is_in(session_ids.iter().copied()))
            .exec_with_returning(&self.db)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect())
    }

    async fn delete_other_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>> {
        Ok(end_sessions(&self.db, user_id, keep).await?)
    }

    async fn count_live_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        use sea_orm::PaginatorTrait;
        Ok(session::Entity::find()
            .filter(live_at(now))
            .count(&self.db)
            .await?)
    }

    async fn prune_sessions(&self, ended_before: DateTime<Utc>, batch: u64) -> StoreResult<u64> {
        let mut pruned = 0;
        loop {
            // One statement per batch: DELETE ... WHERE id IN (SELECT ... LIMIT batch). Bounded
            // batches keep each statement short, so pruning never holds SQLite's write lock or
            // many PostgreSQL row locks for long.
            let mut ended = Query::select();
            ended
                .column(session::Column::Id)
                .from(session::Entity)
                .cond_where(
                    Condition::any()
                        .add(session::Column::ExpiresAt.lte(ended_before))
                        .add(session::Column::IdleExpiresAt.lte(ended_before)),
                )
                .limit(batch);
            if self.db.get_database_backend() == DbBackend::Postgres {
                // Instances pruning at once skip each other's rows instead of waiting on them
                // (or deadlocking over overlapping batches).
                ended.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
            }
            let deleted = session::Entity::delete_many()
                .filter(session::Column::Id.in_subquery(ended))
                .exec(&self.db)
                .await?
                .rows_affected;
            pruned += deleted;
            if deleted < batch {
                return Ok(pruned);
            }
        }
    }
}

#[async_trait]
impl TokenStore for SeaStore {
    async fn issue_token(&self, issued: IssuedToken) -> StoreResult<()> {
        let transaction = begin(&self.db).await?;
        match issue(&transaction, issued).await {
            Ok(()) => Ok(transaction.commit().await?),
            Err(error) => {
                let _ = transaction.rollback().await;
                Err(error.into())
            }
        }
    }

    async fn check_token(
        &self,
        digest: &str,
        purposes: &[TokenPurpose],
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), TokenRefusal>> {
        Ok(token_status(&self.db, digest, purposes, now).await?)
    }

    async fn prune_tokens(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        Ok(one_time_token::Entity::delete_many()
            .filter(one_time_token::Column::ExpiresAt.lt(before))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

#[async_trait]
impl OutboxStore for SeaStore {
    async fn queue_mails(&self, mails: Vec<NewMail>) -> StoreResult<()> {
        Ok(queue(&self.db, OutboxChannel::Mail, mails).await?)
    }

    async fn queue_webhooks(&self, webhooks: Vec<NewWebhook>) -> StoreResult<()> {
        let rows = webhooks.into_iter().map(NewWebhook::into_row).collect();
        Ok(queue(&self.db, OutboxChannel::Webhook, rows).await?)
    }

    /// One statement: `UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED) AND
    /// <still free> RETURNING ...` on PostgreSQL, so that instances claiming at once skip each
    /// other's rows; SQLite has one writer.
    async fn claim_messages(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let free = || {
            Condition::any()
                .add(outbox_mail::Column::ClaimedUntil.is_null())
                .add(outbox_mail::Column::ClaimedUntil.lt(now))
        };
        // A read first: an idle outbox costs no write (on SQLite, no write lock).
        let any_due = outbox_mail::Entity::find()
            .filter(outbox_mail::Column::NextAttemptAt.lte(now))
            .filter(free())
            .one(&self.db)
            .await?
            .is_some();
        if !any_due {
            return Ok(Vec::new());
        }
        let lease = chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX);
        let mut due = Query::select();
        due.column(outbox_mail::Column::Id)
            .from(outbox_mail::Entity)
            .and_where(outbox_mail::Column::NextAttemptAt.lte(now))
            .cond_where(free())
            .order_by(outbox_mail::Column::NextAttemptAt, sea_orm::Order::Asc)
            .limit(limit);
        if self.db.get_database_backend() == DbBackend::Postgres {
            due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let claimed = outbox_mail::Entity::update_many()
            .col_expr(
                outbox_mail::Column::ClaimedUntil,
                Expr::value(Some(now + lease)),
            )
            .filter(outbox_mail::Column::Id.in_subquery(due))
            .filter(free())
            .exec_with_returning(&self.db)
            .await?;
        Ok(claimed
            .into_iter()
            .map(|row| {
                let mail = OutboxMail {
                    id: row.id,
                    kind: row.kind,
                    envelope_from: row.envelope_from,
                    envelope_to: row.envelope_to,
                    message: row.message,
                    attempts: u32::try_from(row.attempts).unwrap_or(0),
                    expires_at: row.expires_at,
                };
                OutboxMessage::from_row(&row.channel, mail)
            })
            .collect())
    }

    async fn remove_message(&self, id: Uuid) -> StoreResult<()> {
        outbox_mail::Entity::delete_by_id(id).exec(&self.db).await?;
        Ok(())
    }

    async fn retry_message(&self, id: Uuid, retry_at: DateTime<Utc>) -> StoreResult<()> {
        outbox_mail::Entity::update_many()
            .col_expr(outbox_mail::Column::NextAttemptAt, Expr::value(retry_at))
            .col_expr(
                outbox_mail::Column::Attempts,
                Expr::col(outbox_mail::Column::Attempts).add(1),
            )
            .col_expr(
                outbox_mail::Column::ClaimedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(outbox_mail::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    async fn outbox_depth(&self) -> StoreResult<u64> {
        use sea_orm::PaginatorTrait;
        Ok(outbox_mail::Entity::find().count(&self.db).await?)
    }
}

#[async_trait]
impl SettingStore for SeaStore {
    async fn setting_or_insert(&self, name: &str, candidate: String) -> StoreResult<String> {
        let row = setting::ActiveModel {
            name: Set(name.to_owned()),
            value: Set(candidate),
        };
        // Whoever inserts first wins; everyone then reads the winner's value.
        setting::Entity::insert(row)
            .on_conflict(
                OnConflict::column(setting::Column::Name)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        let stored = setting::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("setting {name}")))?;
        Ok(stored.value)
    }
}

#[async_trait]
impl RateLimitStore for SeaStore {
    async fn take_rate_limit_token(
        &self,
        key: &str,
        now: DateTime<Utc>,
        emission_interval: Duration,
        burst: u32,
    ) -> StoreResult<Option<Duration>> {
        // tat: the theoretical arrival time of the next token, in microseconds. A token may be
        // taken while max(tat, now) + interval stays within burst * interval of now.
        let backend = self.db.get_database_backend();
        let gcra = super::Gcra::new(now, emission_interval, burst);
        let (now_us, interval_us, capacity_us) = (gcra.now, gcra.interval, gcra.capacity);
        let (greatest, p) = match backend {
            DbBackend::Postgres => ("GREATEST", ["$1", "$2", "$3", "$4"]),
            _ => ("MAX", ["?1", "?2", "?3", "?4"]),
        };
        let take = format!(
            "INSERT INTO rate_limit_buckets AS bucket (key, tat) VALUES ({key}, {now} + {interval}) \
             ON CONFLICT (key) DO UPDATE SET tat = {greatest}(bucket.tat, {now}) + {interval} \
             WHERE {greatest}(bucket.tat, {now}) + {interval} <= {now} + {capacity} \
             RETURNING tat",
            key = p[0],
            now = p[1],
            interval = p[2],
            capacity = p[3],
        );
        let values = [
            key.into(),
            now_us.into(),
            interval_us.into(),
            capacity_us.into(),
        ];
        let taken = self
            .db
            .query_one_raw(Statement::from_sql_and_values(backend, take, values))
            .await?;
        if taken.is_some() {
            return Ok(None);
        }
        let tat: i64 = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                format!("SELECT tat FROM rate_limit_buckets WHERE key = {}", p[0]),
                [key.into()],
            ))
            .await?
            .and_then(|row| row.try_get::<i64>("", "tat").ok())
            .unwrap_or(now_us);
        Ok(Some(gcra.wait(tat)))
    }

    async fn prune_rate_limit_buckets(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let backend = self.db.get_database_backend();
        let placeholder = if backend == DbBackend::Postgres {
            "$1"
        } else {
            "?1"
        };
        let deleted = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                backend,
                format!("DELETE FROM rate_limit_buckets WHERE tat < {placeholder}"),
                [now.timestamp_micros().into()],
            ))
            .await?;
        Ok(deleted.rows_affected())
    }
}

#[async_trait]
impl EventStore for SeaStore {
    /// PostgreSQL: `NOTIFY` on the `authql_session_events` channel (at most 8000 bytes a
    /// payload; the caller keeps them small). SQLite: `false`.
    async fn broadcast_events(&self, payload: &str) -> StoreResult<bool> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(false);
        }
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [EVENT_CHANNEL.into(), payload.into()],
            ))
            .await?;
        Ok(true)
    }

    /// PostgreSQL: `LISTEN authql_session_events` on a connection of its own, outside the pool
    /// (sqlx's `PgListener` on a pool of one, which reconnects by itself). SQLite: `None`.
    async fn listen_events(&self) -> StoreResult<Option<EventStream>> {
        use sea_orm::sqlx::postgres::{PgListener, PgPoolOptions};
        let Some((options, timeout)) = self.listen.clone() else {
            return Ok(None);
        };
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        let listener = async move {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(EVENT_CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(listener)
        };
        let listener = listener.await.map_err(|error| {
            StoreError::from(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(error.into())))
        })?;
        Ok(Some(Box::pin(futures_util::stream::unfold(
            listener,
            |mut listener| async move {
                loop {
                    match listener.recv().await {
                        Ok(notification) => {
                            return Some((notification.payload().to_owned(), listener));
                        }
                        // The connection was lost: the next `recv` reconnects; until the
                        // database is back, try once a second.
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
            },
        ))))
    }
}

#[async_trait]
impl HealthStore for SeaStore {
    fn pool_status(&self) -> Option<PoolStatus> {
        let (size, idle) = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => {
                let pool = self.db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
        };
        let idle = idle as u64;
        Some(PoolStatus {
            in_use: u64::from(size).saturating_sub(idle),
            idle,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await?;
        self.check_writable().await
    }
}

#[async_trait]
impl IdentityStore for SeaStore {
    async fn find_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<(Identity, UserCredentials)>> {
        let Some(identity) = user_identity::Entity::find()
            .filter(user_identity::Column::Issuer.eq(issuer))
            .filter(user_identity::Column::Subject.eq(subject))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let Some(user) = user::Entity::find_by_id(identity.user_id)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        // Read again after the account: an unlink that committed in between is seen here.
        let again = user_identity::Entity::find_by_id(identity.id)
            .one(&self.db)
            .await?
            .filter(|again| again.user_id == user.id);
        Ok(again.map(|identity| (identity.into(), user.into())))
    }

    async fn identities(&self, user_id: Uuid) -> StoreResult<Vec<Identity>> {
        Ok(user_identity::Entity::find()
            .filter(user_identity::Column::UserId.eq(user_id))
            .order_by_asc(user_identity::Column::LinkedAt)
            .order_by_asc(user_identity::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn link_identity(&self, identity: Identity) -> StoreResult<Linking> {
        let user_id = identity.user_id;
        let (issuer, subject) = (identity.issuer.clone(), identity.subject.clone());
        let transaction = begin(&self.db).await?;
        // The account's lock first (see `change_user_role`): a link and an unlink of one
        // account queue, and a deleted account takes no link.
        if lock_user(&transaction, user_id).await? == 0 {
            transaction.rollback().await?;
            return Ok(Linking::UnknownUser);
        }
        let inserted = user_identity::Entity::insert(identity_row(identity))
            .exec_with_returning(&transaction)
            .await;
        match inserted {
            Ok(row) => {
                transaction.commit().await?;
                Ok(Linking::Linked(row.into()))
            }
            Err(error) => {
                transaction.rollback().await?;
                if let Some(SqlErr::UniqueConstraintViolation(_)) = error.sql_err() {
                    return Ok(if identity_exists(&self.db, &issuer, &subject).await? {
                        Linking::IdentityTaken
                    } else {
                        Linking::ProviderTaken
                    });
                }
                Err(error.into())
            }
        }
    }

    async fn unlink_identity(
        &self,
        user_id: Uuid,
        provider: &str,
        keep_session: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Unlinking> {
        let not_linked = Unlinking::Unlinked(FactorRemoval::NotFound);
        let transaction = begin(&self.db).await?;
        if lock_user(&transaction, user_id).await? == 0 {
            transaction.rollback().await?;
            return Ok(not_linked);
        }
        let identities = user_identity::Entity::find()
            .filter(user_identity::Column::UserId.eq(user_id))
            .all(&transaction)
            .await?;
        let Some(unlinked) = identities.iter().find(|found| found.provider == provider) else {
            transaction.rollback().await?;
            return Ok(not_linked);
        };
        let Some(user) = user::Entity::find_by_id(user_id).one(&transaction).await? else {
            transaction.rollback().await?;
            return Ok(not_linked);
        };
        if user.password_hash == super::NO_PASSWORD && identities.len() < 2 {
            transaction.rollback().await?;
            return Ok(Unlinking::LastLoginMethod);
        }
        user_identity::Entity::delete_by_id(unlinked.id)
            .exec(&transaction)
            .await?;
        unlinked_identity::Entity::insert(unlinked_identity::ActiveModel {
            id: Set(Uuid::new_v4()),
            email_normalized: Set(user.email_normalized),
            issuer: Set(unlinked.issuer.clone()),
            subject: Set(unlinked.subject.clone()),
            unlinked_at: Set(at),
        })
        .on_conflict(
            OnConflict::columns([
                unlinked_identity::Column::EmailNormalized,
                unlinked_identity::Column::Issuer,
                unlinked_identity::Column::Subject,
            ])
            .update_column(unlinked_identity::Column::UnlinkedAt)
            .to_owned(),
        )
        .exec_without_returning(&transaction)
        .await?;
        Ok(Unlinking::Unlinked(
            finish_removal(transaction, user_id, keep_session).await?,
        ))
    }

    async fn unlinked_before(
        &self,
        email_normalized: &str,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<bool> {
        Ok(unlinked_identity::Entity::find()
            .filter(unlinked_identity::Column::EmailNormalized.eq(email_normalized))
            .filter(unlinked_identity::Column::Issuer.eq(issuer))
            .filter(unlinked_identity::Column::Subject.eq(subject))
            .one(&self.db)
            .await?
            .is_some())
    }
}

/// A write to the user's row that changes nothing, so that the transaction holds the row's lock
/// (PostgreSQL) or the write lock (SQLite) before it reads: concurrent changes of one account
/// queue. Returns how many rows it touched (0: no such user).
async fn lock_user(transaction: &DatabaseTransaction, user_id: Uuid) -> Result<u64, DbErr> {
    Ok(user::Entity::update_many()
        .col_expr(
            user::Column::CredentialVersion,
            Expr::col(user::Column::CredentialVersion),
        )
        .filter(user::Column::Id.eq(user_id))
        .exec(transaction)
        .await?
        .rows_affected)
}

#[async_trait]
impl SecondFactorStore for SeaStore {
    async fn totp(&self, user_id: Uuid) -> StoreResult<Option<TotpCredential>> {
        Ok(totp_credential::Entity::find_by_id(user_id)
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn begin_totp(&self, credential: TotpCredential) -> StoreResult<bool> {
        // One statement: insert, or replace a pending secret; a confirmed one stays.
        let insert = Query::insert()
            .into_table(totp_credential::Entity)
            .columns([
                totp_credential::Column::UserId,
                totp_credential::Column::Secret,
                totp_credential::Column::ConfirmedAt,
                totp_credential::Column::LastStep,
                totp_credential::Column::CreatedAt,
            ])
            .values_panic([
                credential.user_id.into(),
                credential.secret.into(),
                Option::<DateTime<Utc>>::None.into(),
                (-1_i64).into(),
                credential.created_at.into(),
            ])
            .on_conflict(
                OnConflict::column(totp_credential::Column::UserId)
                    .update_columns([
                        totp_credential::Column::Secret,
                        totp_credential::Column::LastStep,
                        totp_credential::Column::CreatedAt,
                    ])
                    .action_and_where(
                        Expr::col((
                            totp_credential::Entity,
                            totp_credential::Column::ConfirmedAt,
                        ))
                        .is_null(),
                    )
                    .to_owned(),
            )
            .to_owned();
        let backend = self.db.get_database_backend();
        let stored = self.db.execute_raw(backend.build(&insert)).await?;
        Ok(stored.rows_affected() == 1)
    }

    async fn confirm_totp(
        &self,
        user_id: Uuid,
        secret: &str,
        step: i64,
        recovery_digests: Vec<String>,
        keep_session: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let transaction = begin(&self.db).await?;
        let confirmed = totp_credential::Entity::update_many()
            .col_expr(totp_credential::Column::ConfirmedAt, Expr::value(at))
            .col_expr(totp_credential::Column::LastStep, Expr::value(step))
            .filter(totp_credential::Column::UserId.eq(user_id))
            .filter(totp_credential::Column::Secret.eq(secret))
            .filter(totp_credential::Column::ConfirmedAt.is_null())
            .exec(&transaction)
            .await?
            .rows_affected;
        if confirmed == 0 {
            transaction.rollback().await?;
            return Ok(None);
        }
        store_recovery_codes(&transaction, user_id, recovery_digests, at).await?;
        let Some(ended) = move_credentials_on(&transaction, user_id, Some(keep_session)).await?
        else {
            transaction.rollback().await?;
            return Ok(None);
        };
        transaction.commit().await?;
        Ok(Some(ended))
    }

    async fn disable_totp(&self, user_id: Uuid, keep_session: Uuid) -> StoreResult<FactorRemoval> {
        let transaction = begin(&self.db).await?;
        let removed = totp_credential::Entity::delete_many()
            .filter(totp_credential::Column::UserId.eq(user_id))
            .filter(totp_credential::Column::ConfirmedAt.is_not_null())
            .exec(&transaction)
            .await?
            .rows_affected;
        if removed == 0 {
            transaction.rollback().await?;
            return Ok(FactorRemoval::NotFound);
        }
        recovery_code::Entity::delete_many()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .exec(&transaction)
            .await?;
        finish_removal(transaction, user_id, keep_session).await
    }

    async fn take_totp_step(&self, user_id: Uuid, step: i64) -> StoreResult<bool> {
        let taken = totp_credential::Entity::update_many()
            .col_expr(totp_credential::Column::LastStep, Expr::value(step))
            .filter(totp_credential::Column::UserId.eq(user_id))
            .filter(totp_credential::Column::ConfirmedAt.is_not_null())
            .filter(totp_credential::Column::LastStep.lt(step))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(taken == 1)
    }

    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        digests: Vec<String>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let transaction = begin(&self.db).await?;
        // A write first, so that the transaction holds the row (and SQLite's write lock) while
        // it checks that TOTP is on: a concurrent disable waits or has won.
        let on = totp_credential::Entity::update_many()
            .col_expr(
                totp_credential::Column::LastStep,
                Expr::col(totp_credential::Column::LastStep),
            )
            .filter(totp_credential::Column::UserId.eq(user_id))
            .filter(totp_credential::Column::ConfirmedAt.is_not_null())
            .exec(&transaction)
            .await?
            .rows_affected;
        if on == 0 {
            transaction.rollback().await?;
            return Ok(false);
        }
        store_recovery_codes(&transaction, user_id, digests, at).await?;
        transaction.commit().await?;
        Ok(true)
    }

    async fn recovery_code_unused(&self, user_id: Uuid, digest: &str) -> StoreResult<bool> {
        use sea_orm::PaginatorTrait;
        Ok(recovery_code::Entity::find()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .filter(recovery_code::Column::Digest.eq(digest))
            .filter(recovery_code::Column::UsedAt.is_null())
            .count(&self.db)
            .await?
            > 0)
    }

    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        digest: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let used = recovery_code::Entity::update_many()
            .col_expr(recovery_code::Column::UsedAt, Expr::value(at))
            .filter(recovery_code::Column::UserId.eq(user_id))
            .filter(recovery_code::Column::Digest.eq(digest))
            .filter(recovery_code::Column::UsedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(used == 1)
    }

    async fn second_factors(&self, user_id: Uuid) -> StoreResult<SecondFactors> {
        use sea_orm::PaginatorTrait;
        let totp = totp_credential::Entity::find()
            .filter(totp_credential::Column::UserId.eq(user_id))
            .filter(totp_credential::Column::ConfirmedAt.is_not_null())
            .count(&self.db)
            .await?
            > 0;
        let recovery_codes_left = if totp {
            recovery_code::Entity::find()
                .filter(recovery_code::Column::UserId.eq(user_id))
                .filter(recovery_code::Column::UsedAt.is_null())
                .count(&self.db)
                .await?
        } else {
            0
        };
        let passkeys = passkey::Entity::find()
            .filter(passkey::Column::UserId.eq(user_id))
            .count(&self.db)
            .await?;
        Ok(SecondFactors {
            totp,
            recovery_codes_left,
            passkeys,
        })
    }

    async fn add_passkey(
        &self,
        passkey: StoredPasskey,
        keep_session: Uuid,
    ) -> StoreResult<PasskeyAddition> {
        let user_id = passkey.user_id;
        let transaction = begin(&self.db).await?;
        let inserted = passkey::Entity::insert(passkey::ActiveModel {
            id: Set(passkey.id),
            user_id: Set(passkey.user_id),
            credential_id: Set(passkey.credential_id),
            name: Set(passkey.name),
            credential: Set(passkey.credential),
            counter: Set(passkey.counter),
            backup_eligible: Set(passkey.backup_eligible),
            created_at: Set(passkey.created_at),
            last_used_at: Set(passkey.last_used_at),
        })
        .exec(&transaction)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                transaction.rollback().await?;
                return Ok(PasskeyAddition::CredentialTaken);
            }
            Err(error) => return Err(error.into()),
        }
        let Some(ended) = move_credentials_on(&transaction, user_id, Some(keep_session)).await?
        else {
            transaction.rollback().await?;
            return Ok(PasskeyAddition::SessionEnded);
        };
        transaction.commit().await?;
        Ok(PasskeyAddition::Added(ended))
    }

    async fn passkeys(&self, user_id: Uuid) -> StoreResult<Vec<StoredPasskey>> {
        Ok(passkey::Entity::find()
            .filter(passkey::Column::UserId.eq(user_id))
            .order_by_asc(passkey::Column::CreatedAt)
            .order_by_asc(passkey::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn passkey_by_credential_id(
        &self,
        credential_id: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        Ok(passkey::Entity::find()
            .filter(passkey::Column::CredentialId.eq(credential_id))
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn rename_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        let renamed = passkey::Entity::update_many()
            .col_expr(passkey::Column::Name, Expr::value(name))
            .filter(passkey::Column::Id.eq(id))
            .filter(passkey::Column::UserId.eq(user_id))
            .exec_with_returning(&self.db)
            .await?;
        Ok(renamed.into_iter().next().map(Into::into))
    }

    async fn delete_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        keep_session: Uuid,
    ) -> StoreResult<FactorRemoval> {
        let transaction = begin(&self.db).await?;
        let deleted = passkey::Entity::delete_many()
            .filter(passkey::Column::Id.eq(id))
            .filter(passkey::Column::UserId.eq(user_id))
            .exec(&transaction)
            .await?
            .rows_affected;
        if deleted == 0 {
            transaction.rollback().await?;
            return Ok(FactorRemoval::NotFound);
        }
        finish_removal(transaction, user_id, keep_session).await
    }

    async fn use_passkey(
        &self,
        id: Uuid,
        seen_counter: i64,
        counter: i64,
        credential: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let used = passkey::Entity::update_many()
            .col_expr(passkey::Column::Counter, Expr::value(counter))
            .col_expr(passkey::Column::Credential, Expr::value(credential))
            .col_expr(passkey::Column::LastUsedAt, Expr::value(at))
            .filter(passkey::Column::Id.eq(id))
            .filter(passkey::Column::Counter.eq(seen_counter))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(used == 1)
    }

    async fn reset_second_factors(&self, user_id: Uuid) -> StoreResult<Option<Vec<Uuid>>> {
        let transaction = begin(&self.db).await?;
        let Some(ended) = move_credentials_on(&transaction, user_id, None).await? else {
            transaction.rollback().await?;
            return Ok(None);
        };
        delete_second_factors(&transaction, user_id).await?;
        transaction.commit().await?;
        Ok(Some(ended))
    }

    async fn put_challenge(&self, challenge: Challenge) -> StoreResult<()> {
        auth_challenge::Entity::insert(auth_challenge::ActiveModel {
            id: Set(challenge.id),
            digest: Set(challenge.digest),
            kind: Set(challenge.kind.as_str().to_owned()),
            user_id: Set(challenge.user_id),
            session_id: Set(challenge.session_id),
            credential_version: Set(challenge.credential_version),
            methods: Set(challenge.methods.to_text()),
            state: Set(challenge.state),
            attempts: Set(challenge.attempts),
            created_at: Set(challenge.created_at),
            expires_at: Set(challenge.expires_at),
        })
        .exec(&self.db)
        .await?;
        Ok(())
    }

    async fn take_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        let taken = auth_challenge::Entity::delete_many()
            .filter(auth_challenge::Column::Digest.eq(digest))
            .filter(auth_challenge::Column::Kind.eq(kind.as_str()))
            .filter(auth_challenge::Column::ExpiresAt.gt(now))
            .exec_with_returning(&self.db)
            .await?;
        Ok(taken
            .into_iter()
            .next()
            .map(Challenge::try_from)
            .transpose()?)
    }

    async fn attempt_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        let attempted = auth_challenge::Entity::update_many()
            .col_expr(
                auth_challenge::Column::Attempts,
                Expr::col(auth_challenge::Column::Attempts).add(1),
            )
            .filter(auth_challenge::Column::Digest.eq(digest))
            .filter(auth_challenge::Column::Kind.eq(kind.as_str()))
            .filter(auth_challenge::Column::ExpiresAt.gt(now))
            .filter(auth_challenge::Column::Attempts.lt(max_attempts))
            .exec_with_returning(&self.db)
            .await?;
        Ok(attempted
            .into_iter()
            .next()
            .map(Challenge::try_from)
            .transpose()?)
    }

    async fn challenge_expired(&self, digest: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        use sea_orm::PaginatorTrait;
        Ok(auth_challenge::Entity::find()
            .filter(auth_challenge::Column::Digest.eq(digest))
            .filter(auth_challenge::Column::ExpiresAt.lte(now))
            .count(&self.db)
            .await?
            > 0)
    }

    async fn prune_challenges(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        Ok(auth_challenge::Entity::delete_many()
            .filter(auth_challenge::Column::ExpiresAt.lt(before))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

#[cfg(test)]
mod tests {
    use super::SeaStore;

    #[test]
    fn in_memory_sqlite_has_no_file_and_postgresql_none_either() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://kept.db?mode=memory",
            "postgres://authql@localhost/authql",
        ] {
            assert_eq!(SeaStore::sqlite_path(url), None, "{url}");
        }
        assert_eq!(
            SeaStore::sqlite_path("sqlite://data/authql.db?mode=rwc"),
            Some("data/authql.db".into())
        );
    }
}
