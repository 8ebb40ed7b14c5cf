//! The store on MongoDB, through the official driver: `DATABASE_URL=mongodb://...` (or
//! `mongodb+srv://`). The same contract as the SQL backends, written for MongoDB 4.4 and later
//! (pipeline updates with `$expr` filters, `findAndModify`, TTL indexes; multi-document
//! transactions on a replica set or sharded cluster, which 4.0 and later have). CI runs it
//! against SecantusDB, a MongoDB-wire server on WiredTiger, both as a single-node replica set
//! (transactions) and as a standalone server (none).
//!
//! Collections (in the URL's database, `authql` when the URL names none):
//! - `users`: `_id` (UUID), `email`, `email_normalized` (unique), `username`,
//!   `username_normalized` (unique), `password_hash`, `created_at`, `disabled_at`,
//!   `credential_version`, `email_verified_at`.
//! - `sessions`: `_id` (UUID), `user_id`, `access_jti` (unique), `refresh_jti` (unique),
//!   `previous_refresh_jti`, `created_at`, `last_refreshed_at`, `expires_at` (a TTL index when
//!   pruning is on), `idle_expires_at`, `user_agent`, `ip_address`, `credential_version`;
//!   indexed by `(user_id, created_at)`.
//! - `settings`: `_id` (the name), `value`.
//! - `rate_limit_buckets`: `_id` (the key), `tat` (microseconds since the Unix epoch).
//! - `one_time_tokens`: `_id`, `user_id`, `purpose`, `digest` (unique: the SHA-256 of the token,
//!   hex), `email`, `email_normalized`, `created_at`, `expires_at`, `used_at`; indexed by
//!   `(user_id, purpose)` and `expires_at`.
//! - `mail_outbox`: `_id`, `kind`, `envelope_from`, `envelope_to`, `message`, `created_at`,
//!   `next_attempt_at` (indexed), `expires_at`, `attempts`, `claimed_until`, `channel` (`mail`,
//!   or absent in documents written before webhooks; `webhook`: the columns read as the SQL
//!   migration `m20261202_000011` says).
//! - `totp_credentials`: `_id` (the user's id), `secret`, `confirmed_at`, `last_step`,
//!   `created_at`.
//! - `recovery_codes`: `_id`, `user_id`, `digest`, `created_at`, `used_at`; unique by
//!   `(user_id, digest)`.
//! - `passkeys`: `_id`, `user_id` (indexed), `credential_id` (unique), `name`, `credential`,
//!   `counter`, `backup_eligible`, `created_at`, `last_used_at`.
//! - `auth_challenges`: `_id`, `digest` (unique), `kind`, `user_id`, `session_id`,
//!   `credential_version`, `methods`, `state`, `attempts`, `created_at`, `expires_at` (indexed).
//! - `user_identities`: `_id`, `user_id`, `provider` (unique with `user_id`), `issuer`,
//!   `subject` (unique with `issuer`), `email`, `linked_at`. The user document counts its
//!   identities in `identity_count`, which is what makes an unlink's check of the last way in
//!   one atomic update on any deployment.
//! - `unlinked_identities`: `_id` (the address's key, the issuer and the subject, joined by
//!   newlines), `unlinked_at`.
//!
//! Every query is shaped so that it is served by an index on any server: a read or
//! `findAndModify` that filters on more than its index's fields names the index (`hint`), and
//! writes of several documents select by `_id` or by one indexed field. (MongoDB's planner would
//! find the index anyway; simpler planners, SecantusDB's among them, scan the collection when a
//! filter has fields the index does not have. tests/api/mongodb.rs checks the plans.)
//!
//! Dates are BSON dates, so they keep milliseconds (the SQL backends keep microseconds); every
//! date authql shows is in milliseconds anyway.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::{
    Client, ClientSession, Collection, Database, IndexModel,
    error::{ErrorKind, WriteFailure},
    event::{EventHandler, cmap::CmapEvent},
    options::{ClientOptions, Hint, IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    AuthMethods, Challenge, ChallengeKind, CreatedSession, DELETE_BATCH, EventStream,
    FIRST_CREDENTIAL_VERSION, FactorRemoval, Identity, IssuedToken, Linking, NewMail, NewSession,
    NewUser, NewWebhook, OutboxChannel, OutboxMail, OutboxMessage, PasskeyAddition, PoolSettings,
    PoolStatus, RoleChange, Rotation, SecondFactors, Session, SessionPage, StoreError, StoreResult,
    StoredPasskey, TokenPurpose, TokenRefusal, TotpCredential, Unlinking, User, UserCredentials,
    VerifiedEmail, least_recently_used,
    lookups::{SessionBatches, SessionLookups},
    token_holds, token_state,
};
use super::{
    EventStore, HealthStore, IdentityStore, OutboxStore, RateLimitStore, SecondFactorStore,
    SessionStore, SettingStore, TokenStore, UserStore,
};

/// How old an identity without its user must be to be taken for the remains of a registration
/// that stopped half-way (`find_identity`).
const ORPHAN_AGE: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// The database used when the URL names none.
const DEFAULT_DATABASE: &str = "authql";
/// MongoDB's error codes (error_codes.yml) that authql answers on its own.
const DUPLICATE_KEY: i32 = 11000;
const INDEX_NOT_FOUND: i32 = 27;
const WRITE_CONFLICT: i32 = 112;
/// How long a broadcast session event stays in `session_events`: long enough for a change
/// stream to resume after a short outage.
const EVENT_RETENTION_SECONDS: u64 = 300;
/// How often a transaction that lost a write conflict to another is run again.
const TRANSACTION_ATTEMPTS: usize = 10;

/// A user document in `users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub email: String,
    pub email_normalized: String,
    pub username: String,
    pub username_normalized: String,
    pub password_hash: String,
    pub created_at: bson::DateTime,
    /// When an operator disabled the account; absent or null while it is enabled.
    #[serde(default)]
    pub disabled_at: Option<bson::DateTime>,
    /// See [`User::credential_version`]; documents written before it are given 0 at start-up.
    #[serde(default)]
    pub credential_version: i64,
    /// See [`User::email_verified_at`]; absent (unverified) in documents written before it.
    #[serde(default)]
    pub email_verified_at: Option<bson::DateTime>,
    /// See [`User::roles`]; absent (none) in documents written before it. Kept as a set
    /// (`$addToSet`), sorted when read.
    #[serde(default)]
    pub roles: Vec<String>,
    /// How many `user_identities` the account has, never more: a link stores its identity
    /// before counting it, an unlink uncounts it before deleting it.
    #[serde(default)]
    pub identity_count: i64,
}

/// An OpenID Connect identity in `user_identities`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub user_id: bson::Uuid,
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub linked_at: bson::DateTime,
}

fn identity_document(identity: Identity) -> IdentityDocument {
    IdentityDocument {
        id: id(identity.id),
        user_id: id(identity.user_id),
        provider: identity.provider,
        issuer: identity.issuer,
        subject: identity.subject,
        email: identity.email,
        linked_at: date(identity.linked_at),
    }
}

fn identity_of(document: IdentityDocument) -> Identity {
    Identity {
        id: document.id.into(),
        user_id: document.user_id.into(),
        provider: document.provider,
        issuer: document.issuer,
        subject: document.subject,
        email: document.email,
        linked_at: document.linked_at.to_chrono(),
    }
}

/// A one-time token in `one_time_tokens`: the fields of [`super::NewToken`], and when it was
/// used (or made useless).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub user_id: bson::Uuid,
    pub purpose: String,
    pub digest: String,
    pub email: String,
    pub email_normalized: String,
    pub credential_version: i64,
    pub created_at: bson::DateTime,
    pub expires_at: bson::DateTime,
    pub used_at: Option<bson::DateTime>,
}

/// A mail in `mail_outbox`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub kind: String,
    pub envelope_from: String,
    pub envelope_to: String,
    pub message: String,
    pub created_at: bson::DateTime,
    pub next_attempt_at: bson::DateTime,
    pub expires_at: bson::DateTime,
    pub attempts: i64,
    pub claimed_until: Option<bson::DateTime>,
    /// `mail` or `webhook`; absent (mail) in documents written before webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A session document in `sessions`: the fields of [`Session`], under the SQL column names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub user_id: bson::Uuid,
    pub access_jti: bson::Uuid,
    pub refresh_jti: bson::Uuid,
    pub previous_refresh_jti: Option<bson::Uuid>,
    pub created_at: bson::DateTime,
    pub last_refreshed_at: Option<bson::DateTime>,
    pub expires_at: bson::DateTime,
    pub idle_expires_at: bson::DateTime,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    /// See [`Session::credential_version`].
    #[serde(default)]
    pub credential_version: i64,
    /// See [`Session::authenticated_at`]; absent in documents from before it (then:
    /// `created_at`).
    #[serde(default)]
    pub authenticated_at: Option<bson::DateTime>,
    /// See [`Session::authentication_methods`]; absent (a password) in documents from before.
    #[serde(default = "password_only")]
    pub authentication_methods: String,
}

fn password_only() -> String {
    "pwd".to_owned()
}

/// A TOTP credential in `totp_credentials`, under its user's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpDocument {
    #[serde(rename = "_id")]
    pub user_id: bson::Uuid,
    pub secret: String,
    pub confirmed_at: Option<bson::DateTime>,
    pub last_step: i64,
    pub created_at: bson::DateTime,
}

/// A recovery code's digest in `recovery_codes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryCodeDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub user_id: bson::Uuid,
    pub digest: String,
    pub created_at: bson::DateTime,
    pub used_at: Option<bson::DateTime>,
}

/// A passkey in `passkeys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasskeyDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub user_id: bson::Uuid,
    pub credential_id: String,
    pub name: String,
    pub credential: String,
    pub counter: i64,
    pub backup_eligible: bool,
    pub created_at: bson::DateTime,
    pub last_used_at: Option<bson::DateTime>,
}

/// An unfinished ceremony in `auth_challenges`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeDocument {
    #[serde(rename = "_id")]
    pub id: bson::Uuid,
    pub digest: String,
    pub kind: String,
    pub user_id: Option<bson::Uuid>,
    pub session_id: Option<bson::Uuid>,
    pub credential_version: Option<i64>,
    pub methods: String,
    pub state: Option<String>,
    pub attempts: i32,
    pub created_at: bson::DateTime,
    pub expires_at: bson::DateTime,
}

/// A server-wide setting in `settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingDocument {
    #[serde(rename = "_id")]
    pub name: String,
    pub value: String,
}

/// Runs `$writes` (an expression that may use `$transaction`, a `ClientSession` in a
/// transaction) until `settle` keeps its outcome: committed when it succeeds, aborted when it
/// fails, run again after a write conflict. Evaluates to the outcome. A macro rather than a
/// function taking a closure: the closure would borrow the session for every lifetime, which
/// async closures cannot yet promise to do `Send`ably.
macro_rules! in_transaction {
    ($store:expr, $transaction:ident, $writes:expr) => {{
        let mut $transaction = $store.transaction().await?;
        let mut attempt = 0;
        loop {
            $transaction.start_transaction().await.map_err(classify)?;
            let writes = async { $writes }.await;
            if let Some(settled) = settle(&mut $transaction, writes, &mut attempt).await {
                break settled;
            }
        }
    }};
}

/// The store on MongoDB: one driver client (which holds the connection pool) and the
/// collections.
#[derive(Clone)]
pub struct MongoStore {
    client: Client,
    database: Database,
    users: Collection<UserDocument>,
    sessions: Collection<SessionDocument>,
    settings: Collection<SettingDocument>,
    buckets: Collection<Document>,
    tokens: Collection<TokenDocument>,
    outbox: Collection<MailDocument>,
    /// Session events on their way to every instance's change stream.
    events: Collection<Document>,
    totp: Collection<TotpDocument>,
    recovery_codes: Collection<RecoveryCodeDocument>,
    passkeys: Collection<PasskeyDocument>,
    challenges: Collection<ChallengeDocument>,
    identities: Collection<IdentityDocument>,
    unlinked_identities: Collection<Document>,
    /// Whether the deployment runs multi-document transactions (a replica set or a sharded
    /// cluster does, a standalone server does not).
    transactions: bool,
    /// Connections open and in use, counted from the driver's connection pool events.
    pool: Arc<PoolCounts>,
    /// Session lookups, coalesced into one `$in` per batch ([`SessionLookups`]).
    lookups: Arc<SessionLookups>,
}

/// MongoDB's session lookups: one `find` of the sessions by `_id: {$in: ids}` and one of their
/// users, for the whole batch.
struct MongoLookups {
    users: Collection<UserDocument>,
    sessions: Collection<SessionDocument>,
}

#[async_trait]
impl SessionBatches for MongoLookups {
    async fn sessions_by_ids(&mut self, ids: &[Uuid]) -> StoreResult<Vec<(User, Session)>> {
        let ids: Vec<bson::Uuid> = ids.iter().copied().map(id).collect();
        let sessions: Vec<SessionDocument> = self
            .sessions
            .find(doc! { "_id": { "$in": &ids } })
            .hint(by_id())
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let mut user_ids: Vec<bson::Uuid> =
            sessions.iter().map(|session| session.user_id).collect();
        user_ids.sort_unstable_by_key(|user| user.bytes());
        user_ids.dedup();
        let users: Vec<UserDocument> = self
            .users
            .find(doc! { "_id": { "$in": &user_ids } })
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let users: Vec<User> = users.into_iter().map(user_of).collect();
        Ok(sessions
            .into_iter()
            .filter_map(|session| {
                let user_id = Uuid::from(session.user_id);
                let user = users.iter().find(|user| user.id == user_id)?.clone();
                Some((user, session_of(session)))
            })
            .collect())
    }
}

#[derive(Debug, Default)]
struct PoolCounts {
    open: AtomicI64,
    in_use: AtomicI64,
}

impl PoolCounts {
    fn count(&self, event: CmapEvent) {
        let (counter, step) = match event {
            CmapEvent::ConnectionCreated(_) => (&self.open, 1),
            CmapEvent::ConnectionClosed(_) => (&self.open, -1),
            CmapEvent::ConnectionCheckedOut(_) => (&self.in_use, 1),
            CmapEvent::ConnectionCheckedIn(_) => (&self.in_use, -1),
            _ => return,
        };
        counter.fetch_add(step, Ordering::Relaxed);
    }
}

impl MongoStore {
    /// Whether `database_url` names a MongoDB deployment.
    pub fn handles(database_url: &str) -> bool {
        database_url.starts_with("mongodb://") || database_url.starts_with("mongodb+srv://")
    }

    /// Connects and asks the deployment what it is. Settings the URL sets itself
    /// (`maxPoolSize`, `connectTimeoutMS`, `serverSelectionTimeoutMS`) win over `pool`'s;
    /// `pool.acquire_timeout` bounds how long a request waits for a usable server (the driver's
    /// server selection) before it is answered SERVICE_UNAVAILABLE.
    /// Errors: a malformed URL (`Database`), no server within the timeouts (`Unavailable`).
    pub async fn connect(database_url: &str, pool: PoolSettings) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(database_url).await.map_err(classify)?;
        let lookup_wait = pool.connect_timeout.max(pool.acquire_timeout);
        options.max_pool_size = options
            .max_pool_size
            .or(Some(pool.max_connections.unwrap_or(10)));
        options.connect_timeout = options.connect_timeout.or(Some(pool.connect_timeout));
        options.server_selection_timeout = options
            .server_selection_timeout
            .or(Some(pool.acquire_timeout));
        options.app_name = options.app_name.or(Some("authql".into()));
        let pool = Arc::new(PoolCounts::default());
        let counts = pool.clone();
        options.cmap_event_handler = Some(EventHandler::callback(move |event| counts.count(event)));
        let database_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.into());
        let client = Client::with_options(options).map_err(classify)?;
        let database = client.database(&database_name);
        let hello = database
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(classify)?;
        // A replica set member names its set; a mongos says it is one.
        let transactions = hello.get_str("setName").is_ok()
            || hello.get_str("msg").is_ok_and(|msg| msg == "isdbgrid");
        Ok(Self {
            lookups: Arc::new(SessionLookups::new(
                MongoLookups {
                    users: database.collection("users"),
                    sessions: database.collection("sessions"),
                },
                lookup_wait,
            )),
            users: database.collection("users"),
            sessions: database.collection("sessions"),
            settings: database.collection("settings"),
            buckets: database.collection("rate_limit_buckets"),
            tokens: database.collection("one_time_tokens"),
            outbox: database.collection("mail_outbox"),
            events: database.collection("session_events"),
            totp: database.collection("totp_credentials"),
            recovery_codes: database.collection("recovery_codes"),
            passkeys: database.collection("passkeys"),
            challenges: database.collection("auth_challenges"),
            identities: database.collection("user_identities"),
            unlinked_identities: database.collection("unlinked_identities"),
            client,
            database,
            transactions,
            pool,
        })
    }

    /// Whether writes that belong together run in one transaction here (see
    /// [`Store::create_user_with_session`] for what happens without).
    pub fn has_transactions(&self) -> bool {
        self.transactions
    }

    /// Creates the indexes every lookup uses: idempotent, so every instance runs it at start-up
    /// (the MongoDB counterpart of the SQL migrations, and under the same `MIGRATE_ON_START`).
    /// With `session_ttl`, `expires_at` carries a TTL index that lets MongoDB delete a session
    /// that long after its absolute expiry; without, a plain one. An existing index with the
    /// other TTL is replaced.
    pub async fn create_indexes(&self, session_ttl: Option<Duration>) -> StoreResult<()> {
        let unique = |field: &str| {
            IndexModel::builder()
                .keys(doc! { field: 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build()
        };
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        self.users
            .create_indexes([unique("email_normalized"), unique("username_normalized")])
            .await
            .map_err(classify)?;
        self.sessions
            .create_indexes([
                unique("access_jti"),
                unique("refresh_jti"),
                plain(doc! { "user_id": 1, "created_at": -1 }),
                plain(doc! { "idle_expires_at": 1 }),
            ])
            .await
            .map_err(classify)?;
        self.buckets
            .create_index(plain(doc! { "tat": 1 }))
            .await
            .map_err(classify)?;
        self.tokens
            .create_indexes([
                unique("digest"),
                plain(doc! { "user_id": 1, "purpose": 1 }),
                plain(doc! { "expires_at": 1 }),
            ])
            .await
            .map_err(classify)?;
        self.outbox
            .create_index(plain(doc! { "next_attempt_at": 1 }))
            .await
            .map_err(classify)?;
        self.recovery_codes
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "user_id": 1, "digest": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .map_err(classify)?;
        self.passkeys
            .create_indexes([unique("credential_id"), plain(doc! { "user_id": 1 })])
            .await
            .map_err(classify)?;
        self.challenges
            .create_indexes([
                unique("digest"),
                plain(doc! { "user_id": 1 }),
                plain(doc! { "expires_at": 1 }),
            ])
            .await
            .map_err(classify)?;
        self.identities
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "issuer": 1, "subject": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "user_id": 1, "provider": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            ])
            .await
            .map_err(classify)?;
        self.events
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "at": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(Duration::from_secs(EVENT_RETENTION_SECONDS))
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(classify)?;
        self.ensure_expiry_index(session_ttl).await?;
        self.upgrade_documents().await
    }

    /// Brings documents written by earlier versions of authql up to date, idempotently (the
    /// MongoDB counterpart of the SQL migrations 6 and 7): a credential version of 0 where there
    /// is none, and a username whose key holds `@` without being its account's own email key
    /// (a full-width `＠` let one through) replaced by the account's email.
    async fn upgrade_documents(&self) -> StoreResult<()> {
        let unversioned = doc! { "credential_version": { "$exists": false } };
        let first = doc! { "$set": { "credential_version": FIRST_CREDENTIAL_VERSION } };
        self.users
            .update_many(unversioned.clone(), first.clone())
            .await
            .map_err(classify)?;
        self.sessions
            .update_many(unversioned, first)
            .await
            .map_err(classify)?;
        let with_at_sign: Vec<UserDocument> = self
            .users
            .find(doc! { "username_normalized": { "$regex": "@" } })
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let squatting = with_at_sign
            .into_iter()
            .filter(|user| user.username_normalized != user.email_normalized);
        // Through a value no key can have, so that no two documents meet on the unique index.
        let mut parked = Vec::new();
        for user in squatting {
            let placeholder = format!("\u{fffd}{}", Uuid::from(user.id));
            self.users
                .update_one(
                    doc! { "_id": user.id },
                    doc! { "$set": { "username_normalized": placeholder, "username": &user.email } },
                )
                .await
                .map_err(classify)?;
            parked.push(user);
        }
        for user in parked {
            self.users
                .update_one(
                    doc! { "_id": user.id },
                    doc! { "$set": { "username_normalized": &user.email_normalized } },
                )
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    async fn ensure_expiry_index(&self, ttl: Option<Duration>) -> StoreResult<()> {
        const NAME: &str = "expires_at_1";
        let wanted = ttl.map(|ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let existing: Vec<IndexModel> = self
            .sessions
            .list_indexes()
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let current = existing
            .iter()
            .find(|index| index.options.as_ref().and_then(|o| o.name.as_deref()) == Some(NAME));
        if let Some(index) = current {
            let current_ttl = index
                .options
                .as_ref()
                .and_then(|options| options.expire_after)
                .map(|ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
            if current_ttl == wanted {
                return Ok(());
            }
            match self.sessions.drop_index(NAME).await {
                // Another instance starting beside this one dropped it first.
                Err(error) if code_of(&error) == Some(INDEX_NOT_FOUND) => {}
                dropped => dropped.map_err(classify)?,
            }
        }
        let options = IndexOptions::builder()
            .name(NAME.to_owned())
            .expire_after(ttl)
            .build();
        self.sessions
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "expires_at": 1 })
                    .options(options)
                    .build(),
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Whether the deployment takes writes now: it answers, and the server the driver talks to
    /// is a writable primary (a secondary left after a failover is not). Errors are
    /// `Unavailable`.
    pub async fn check_writable(&self) -> StoreResult<()> {
        let hello = self
            .database
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(classify)?;
        let writable = hello.get_bool("isWritablePrimary").unwrap_or(false)
            || hello.get_bool("ismaster").unwrap_or(false);
        if writable {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "the server is not a writable primary".into(),
            ))
        }
    }

    /// The user of a session document, if it still exists.
    async fn with_user(&self, session: SessionDocument) -> StoreResult<Option<(User, Session)>> {
        let user = self
            .users
            .find_one(doc! { "_id": session.user_id })
            .await
            .map_err(classify)?;
        Ok(user.map(|user| (user_of(user), session_of(session))))
    }

    /// Ends the user's sessions beyond the `keep` most recently used; returns their ids. One
    /// count when the user is within the limit, as they almost always are.
    async fn evict_beyond(&self, user_id: Uuid, keep: usize) -> StoreResult<Vec<Uuid>> {
        let count = self
            .sessions
            .count_documents(doc! { "user_id": id(user_id) })
            .hint(by_user())
            .await
            .map_err(classify)?;
        if count <= keep as u64 {
            return Ok(Vec::new());
        }
        let sessions: Vec<SessionDocument> = self
            .sessions
            .find(doc! { "user_id": id(user_id) })
            .hint(by_user())
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let used = sessions
            .into_iter()
            .map(|session| {
                (
                    Uuid::from(session.id),
                    session.created_at.to_chrono(),
                    session.last_refreshed_at.map(bson::DateTime::to_chrono),
                )
            })
            .collect();
        let evicted = least_recently_used(used, keep);
        for batch in evicted.chunks(DELETE_BATCH) {
            let ids: Vec<bson::Uuid> = batch.iter().map(|&session_id| id(session_id)).collect();
            self.sessions
                .delete_many(doc! { "_id": { "$in": ids } })
                .await
                .map_err(classify)?;
        }
        Ok(evicted)
    }

    /// Makes the user's unused tokens of `purpose` useless as of `now`, in `transaction` when
    /// given.
    async fn end_tokens(
        &self,
        user_id: Uuid,
        purpose: TokenPurpose,
        now: DateTime<Utc>,
        transaction: Option<&mut ClientSession>,
    ) -> Result<(), mongodb::error::Error> {
        let end = self
            .tokens
            .update_many(
                doc! { "user_id": id(user_id), "purpose": purpose.as_str(), "used_at": Bson::Null },
                doc! { "$set": { "used_at": date(now) } },
            )
            .hint(by_user_and_purpose());
        match transaction {
            Some(transaction) => end.session(transaction).await?,
            None => end.await?,
        };
        Ok(())
    }

    /// Stores a token and its mails, after making the user's unused tokens of its purpose
    /// useless, in `transaction` when given; else in that order, so that a failure half-way
    /// leaves at worst a token no mail carries (the user asks again), never a mail whose token
    /// is not stored.
    async fn write_token(
        &self,
        token: &TokenDocument,
        mails: &[MailDocument],
        mut transaction: Option<&mut ClientSession>,
    ) -> Result<(), mongodb::error::Error> {
        let purpose = TokenPurpose::parse(&token.purpose).unwrap_or(TokenPurpose::PasswordReset);
        self.end_tokens(
            token.user_id.into(),
            purpose,
            token.created_at.to_chrono(),
            transaction.as_deref_mut(),
        )
        .await?;
        let insert = self.tokens.insert_one(token);
        match transaction.as_deref_mut() {
            Some(transaction) => insert.session(transaction).await?,
            None => insert.await?,
        };
        if !mails.is_empty() {
            let insert = self.outbox.insert_many(mails);
            match transaction {
                Some(transaction) => insert.session(transaction).await?,
                None => insert.await?,
            };
        }
        Ok(())
    }

    /// Takes the token of `digest` if it is of one of `purposes`, unused and unexpired at `now`:
    /// one `findAndModify`, so that of concurrent takers exactly one gets it.
    async fn take_token(
        &self,
        digest: &str,
        purposes: &[TokenPurpose],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<TokenDocument>> {
        let purposes: Vec<&str> = purposes.iter().map(|purpose| purpose.as_str()).collect();
        self.tokens
            .find_one_and_update(
                doc! {
                    "digest": digest,
                    "purpose": { "$in": purposes },
                    "used_at": Bson::Null,
                    "expires_at": { "$gt": date(now) },
                },
                doc! { "$set": { "used_at": date(now) } },
            )
            .hint(Hint::Keys(doc! { "digest": 1 }))
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)
    }

    /// The user a taken token acts for, if the token still holds for it ([`token_holds`]):
    /// else `Unknown` (no such user) or `Used`.
    async fn token_user(
        &self,
        token: &TokenDocument,
    ) -> StoreResult<Result<UserDocument, TokenRefusal>> {
        let Some(purpose) = TokenPurpose::parse(&token.purpose) else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let user = self
            .users
            .find_one(doc! { "_id": token.user_id })
            .await
            .map_err(classify)?;
        Ok(match user {
            None => Err(TokenRefusal::Unknown),
            Some(user)
                if token_holds(
                    purpose,
                    (token.credential_version, &token.email_normalized),
                    (user.credential_version, &user.email_normalized),
                ) =>
            {
                Ok(user)
            }
            Some(_) => Err(TokenRefusal::Used),
        })
    }

    /// Whether the token of `digest` could be taken now for one of `purposes`.
    async fn token_status(
        &self,
        digest: &str,
        purposes: &[TokenPurpose],
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), TokenRefusal>> {
        let found = self
            .tokens
            .find_one(doc! { "digest": digest })
            .await
            .map_err(classify)?;
        Ok(token_state(found.and_then(|token| {
            TokenPurpose::parse(&token.purpose)
                .filter(|purpose| purposes.contains(purpose))
                .map(|_| (token.used_at.is_some(), token.expires_at.to_chrono() <= now))
        })))
    }

    /// Why the token of `digest` could not be taken for one of `purposes` (`Used` when it looks
    /// takeable: a concurrent caller took it between the two looks).
    async fn refusal(
        &self,
        digest: &str,
        purposes: &[TokenPurpose],
        now: DateTime<Utc>,
    ) -> StoreResult<TokenRefusal> {
        Ok(self
            .token_status(digest, purposes, now)
            .await?
            .err()
            .unwrap_or(TokenRefusal::Used))
    }

    /// Marks the user's address verified as of `at` unless it is already, and only while the
    /// user's address and credential version are still those of `unchanged` when that is given;
    /// the user as stored afterwards.
    async fn verified(
        &self,
        user_id: Uuid,
        unchanged: Option<&UserDocument>,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<UserDocument>> {
        let mut filter = doc! { "_id": id(user_id), "email_verified_at": Bson::Null };
        if let Some(user) = unchanged {
            filter.extend(unchanged_since(user));
        }
        self.users
            .update_one(filter, doc! { "$set": { "email_verified_at": date(at) } })
            .hint(by_id())
            .await
            .map_err(classify)?;
        self.users
            .find_one(doc! { "_id": id(user_id) })
            .await
            .map_err(classify)
    }

    /// Deletes every second factor of the user and their unfinished ceremonies.
    async fn delete_second_factors(&self, user_id: Uuid) -> Result<(), mongodb::error::Error> {
        self.totp.delete_one(doc! { "_id": id(user_id) }).await?;
        self.recovery_codes
            .delete_many(doc! { "user_id": id(user_id) })
            .await?;
        self.passkeys
            .delete_many(doc! { "user_id": id(user_id) })
            .await?;
        self.challenges
            .delete_many(doc! { "user_id": id(user_id) })
            .await?;
        Ok(())
    }

    /// Replaces the user's recovery codes by `digests`.
    async fn store_recovery_codes(
        &self,
        user_id: Uuid,
        digests: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<(), mongodb::error::Error> {
        self.recovery_codes
            .delete_many(doc! { "user_id": id(user_id) })
            .await?;
        if digests.is_empty() {
            return Ok(());
        }
        self.recovery_codes
            .insert_many(digests.into_iter().map(|digest| RecoveryCodeDocument {
                id: id(Uuid::new_v4()),
                user_id: id(user_id),
                digest,
                created_at: date(at),
                used_at: None,
            }))
            .await?;
        Ok(())
    }

    /// Moves the user's credential version on (one atomic update: from then on every other
    /// session of theirs is refused on every lookup), the session `keep` with it, then deletes
    /// the user's other sessions. `None` when there is no such user, or `keep` is no longer
    /// theirs under their version.
    async fn move_credentials_on(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let moved = self
            .users
            .find_one_and_update(
                doc! { "_id": id(user_id) },
                doc! { "$inc": { "credential_version": 1 } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)?;
        let Some(moved) = moved else {
            return Ok(None);
        };
        if let Some(keep) = keep {
            let kept = self
                .sessions
                .update_one(
                    doc! {
                        "_id": id(keep),
                        "user_id": id(user_id),
                        "credential_version": moved.credential_version - 1,
                    },
                    doc! { "$set": { "credential_version": moved.credential_version } },
                )
                .hint(by_id())
                .await
                .map_err(classify)?;
            if kept.matched_count == 0 {
                self.end_sessions(user_id, None).await.map_err(classify)?;
                return Ok(None);
            }
        }
        Ok(Some(
            self.end_sessions(user_id, keep).await.map_err(classify)?,
        ))
    }

    /// After a factor is gone: the credential version moves on and the other sessions end (the
    /// factor first, so that a login proving it after this point finds it gone, and one that
    /// proved it before made its session under the old version, which this ends).
    async fn finish_removal(
        &self,
        user_id: Uuid,
        keep_session: Uuid,
    ) -> StoreResult<FactorRemoval> {
        Ok(
            match self
                .move_credentials_on(user_id, Some(keep_session))
                .await?
            {
                Some(ended) => FactorRemoval::Removed(ended),
                None => FactorRemoval::SessionEnded,
            },
        )
    }

    /// A new driver session to run transactions in.
    async fn transaction(&self) -> StoreResult<ClientSession> {
        self.client.start_session().await.map_err(classify)
    }

    /// Deletes the user's sessions other than `keep` (all without), [`DELETE_BATCH`] at a time:
    /// their ids by the user index, then one delete by `_id` (a multi-field delete would need a
    /// planner that finds the index), so that no `$in` list grows with the number of sessions
    /// (a command is at most 16 MiB). Returns their ids, which are all gone afterwards (another
    /// request may have deleted some between a read and its delete).
    async fn end_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, mongodb::error::Error> {
        let ids_collection = self.sessions.clone_with_type::<Document>();
        let mut ended = Vec::new();
        loop {
            let documents: Vec<Document> = ids_collection
                .find(doc! { "user_id": id(user_id) })
                .projection(doc! { "_id": 1 })
                .hint(by_user())
                .limit(DELETE_BATCH as i64)
                .await?
                .try_collect()
                .await?;
            let fetched = documents.len();
            let ids: Vec<bson::Uuid> = documents
                .iter()
                .filter_map(|document| match document.get("_id") {
                    Some(Bson::Binary(binary)) => binary.to_uuid().ok(),
                    _ => None,
                })
                .filter(|session_id| Some(*session_id) != keep.map(id))
                .collect();
            if !ids.is_empty() {
                ended.extend(ids.iter().map(|&session_id| Uuid::from(session_id)));
                self.sessions
                    .delete_many(doc! { "_id": { "$in": ids } })
                    .await?;
            }
            if fetched < DELETE_BATCH {
                return Ok(ended);
            }
        }
    }

    /// [`UserStore::register_user`]'s writes.
    async fn insert_registration(
        &self,
        new_user: NewUser,
        new_session: Option<NewSession>,
        verification: Option<IssuedToken>,
    ) -> StoreResult<(User, Option<Session>)> {
        let user = UserDocument {
            id: id(new_user.id),
            email: new_user.email,
            email_normalized: new_user.email_normalized,
            username: new_user.username,
            username_normalized: new_user.username_normalized,
            password_hash: new_user.password_hash,
            created_at: date(new_user.created_at),
            disabled_at: None,
            credential_version: FIRST_CREDENTIAL_VERSION,
            email_verified_at: new_user.email_verified_at.map(date),
            roles: Vec::new(),
            identity_count: i64::from(new_user.identity.is_some()),
        };
        let identity = new_user.identity.map(identity_document);
        let session = new_session.map(session_document);
        let (token, mails) = match verification {
            Some(issued) => (
                Some(token_document(issued.token)),
                issued.mails.into_iter().map(mail_document).collect(),
            ),
            None => (None, Vec::new()),
        };
        let written = if self.transactions {
            in_transaction!(self, transaction, {
                self.users
                    .insert_one(&user)
                    .session(&mut transaction)
                    .await?;
                if let Some(identity) = &identity {
                    self.identities
                        .insert_one(identity)
                        .session(&mut transaction)
                        .await?;
                }
                if let Some(session) = &session {
                    self.sessions
                        .insert_one(session)
                        .session(&mut transaction)
                        .await?;
                }
                if let Some(token) = &token {
                    self.write_token(token, &mails, Some(&mut transaction))
                        .await?;
                }
                Ok(())
            })
        } else {
            // The identity first: a taken one stops the registration before anything is
            // written, and one whose user is missing is ignored by `find_identity`.
            if let Some(identity) = &identity {
                match self.identities.insert_one(identity).await {
                    Err(error) if is_duplicate_key(&error) => {
                        return Err(StoreError::IdentityTaken);
                    }
                    inserted => inserted.map_err(classify)?,
                };
            }
            if let Some(session) = &session {
                self.sessions.insert_one(session).await.map_err(classify)?;
            }
            let inserted = self.users.insert_one(&user).await.map(|_| ());
            if inserted.is_err() {
                // Best effort: if this fails too, the session is one that nothing accepts,
                // and the identity one whose user does not exist.
                if let Some(session) = &session {
                    let _ = self.sessions.delete_one(doc! { "_id": session.id }).await;
                }
                if let Some(identity) = &identity {
                    let _ = self
                        .identities
                        .delete_one(doc! { "_id": identity.id })
                        .await;
                }
            }
            match (inserted, &token) {
                (Ok(()), Some(token)) => self.write_token(token, &mails, None).await,
                (inserted, _) => inserted,
            }
        };
        match written {
            Ok(()) => Ok((user_of(user), session.map(session_of))),
            Err(error) if is_duplicate_key(&error) => {
                if let Some(identity) = &identity
                    && self
                        .identities
                        .find_one(doc! { "issuer": &identity.issuer, "subject": &identity.subject })
                        .await
                        .map_err(classify)?
                        .is_some()
                {
                    return Err(StoreError::IdentityTaken);
                }
                Err(self.taken(&user.email_normalized).await?)
            }
            Err(error) => Err(classify(error)),
        }
    }

    /// Runs `write` on a task of its own, to its end, whatever happens to the caller.
    async fn detached<T, F>(
        &self,
        write: impl FnOnce(MongoStore) -> F + Send + 'static,
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = StoreResult<T>> + Send + 'static,
    {
        tokio::spawn(write(self.clone()))
            .await
            .map_err(|_| StoreError::Database("a database write ended abnormally".into()))?
    }

    /// The error for a duplicate key on registration: which of the two unique values is taken
    /// (email first, as the username defaults to it), asked of the data rather than read from
    /// the error, whose shape differs between servers.
    async fn taken(&self, email_normalized: &str) -> StoreResult<StoreError> {
        let email_taken = self
            .users
            .find_one(doc! { "email_normalized": email_normalized })
            .await
            .map_err(classify)?
            .is_some();
        Ok(if email_taken {
            StoreError::EmailTaken
        } else {
            StoreError::UsernameTaken
        })
    }
}

/// Sorts the driver's errors as the SQL backends' are sorted: the deployment away or in
/// transition (no server to select, I/O, a cleared pool, a primary stepping down or shutting
/// down, a full disk, errors the driver labels retryable) is `Unavailable`; the rest is
/// `Database`.
fn classify(error: mongodb::error::Error) -> StoreError {
    /// Server codes that mean "not now" (the driver's retryable-read and state-change codes,
    /// MongoDB's error_codes.yml): HostUnreachable 6, HostNotFound 7, NetworkTimeout 89,
    /// ShutdownInProgress 91, PrimarySteppedDown 189, ExceededTimeLimit 262,
    /// SocketException 9001, ReadConcernMajorityNotAvailableYet 134, InterruptedAtShutdown
    /// 11600, InterruptedDueToReplStateChange 11602, NotPrimaryOrSecondary 13436,
    /// NotWritablePrimary 10107, NotPrimaryNoSecondaryOk 13435, NotPrimaryOrSecondary 10058,
    /// OutOfDiskSpace 14031.
    const AWAY: [i32; 15] = [
        6, 7, 89, 91, 189, 262, 9001, 134, 11600, 11602, 13436, 10107, 13435, 10058, 14031,
    ];
    let code = code_of(&error);
    let away = matches!(
        error.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    ) || code.is_some_and(|code| AWAY.contains(&code))
        || error.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || error.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR);
    if away {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Database(Box::new(error))
    }
}

/// The server's error code, if the server answered with one.
/// Ends one attempt at a transaction: commits it if its writes succeeded, else aborts it.
/// `None` when it should run again: it lost a write conflict to a concurrent transaction (two
/// registrations of one email: the second sees a conflict, not the duplicate key), which
/// MongoDB's transaction API prescribes to retry (`TransientTransactionError`); the next run
/// then sees what the winner wrote. At most `TRANSACTION_ATTEMPTS` runs. A network error is not
/// retried: the deployment is away, which the caller reports at once.
async fn settle<T>(
    transaction: &mut ClientSession,
    writes: Result<T, mongodb::error::Error>,
    attempt: &mut usize,
) -> Option<Result<T, mongodb::error::Error>> {
    let outcome = match writes {
        Ok(value) => transaction.commit_transaction().await.map(|()| value),
        Err(error) => {
            let _ = transaction.abort_transaction().await;
            Err(error)
        }
    };
    *attempt += 1;
    match outcome {
        Err(error)
            if code_of(&error) == Some(WRITE_CONFLICT) && *attempt < TRANSACTION_ATTEMPTS =>
        {
            None
        }
        outcome => Some(outcome),
    }
}

fn code_of(error: &mongodb::error::Error) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        _ => None,
    }
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    code_of(error) == Some(DUPLICATE_KEY)
}

/// The `_id` index, for filters with more fields than `_id`.
fn by_id() -> Hint {
    Hint::Keys(doc! { "_id": 1 })
}

/// The `(user_id, purpose)` index of `one_time_tokens`.
fn by_user_and_purpose() -> Hint {
    Hint::Keys(doc! { "user_id": 1, "purpose": 1 })
}

/// The part of a filter that matches `user` only while what a token's [`token_holds`] looked
/// at is unchanged: its credential version and its address.
fn unchanged_since(user: &UserDocument) -> Document {
    doc! {
        "credential_version": user.credential_version,
        "email_normalized": &user.email_normalized,
    }
}

fn token_document(token: super::NewToken) -> TokenDocument {
    TokenDocument {
        id: id(token.id),
        user_id: id(token.user_id),
        purpose: token.purpose.as_str().to_owned(),
        digest: token.digest,
        email: token.email,
        email_normalized: token.email_normalized,
        credential_version: token.credential_version,
        created_at: date(token.created_at),
        expires_at: date(token.expires_at),
        used_at: None,
    }
}

fn mail_document(mail: NewMail) -> MailDocument {
    outbox_document(OutboxChannel::Mail, mail)
}

fn outbox_document(channel: OutboxChannel, mail: NewMail) -> MailDocument {
    MailDocument {
        channel: Some(channel.as_str().to_owned()),
        id: id(mail.id),
        kind: mail.kind,
        envelope_from: mail.envelope_from,
        envelope_to: mail.envelope_to,
        message: mail.message,
        created_at: date(mail.created_at),
        next_attempt_at: date(mail.created_at),
        expires_at: date(mail.expires_at),
        attempts: 0,
        claimed_until: None,
    }
}

/// The `(user_id, created_at)` index.
fn by_user() -> Hint {
    Hint::Keys(doc! { "user_id": 1, "created_at": -1 })
}

fn id(uuid: Uuid) -> bson::Uuid {
    bson::Uuid::from(uuid)
}

fn date(at: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(at)
}

fn user_of(document: UserDocument) -> User {
    User {
        id: document.id.into(),
        email: document.email,
        username: document.username,
        created_at: document.created_at.to_chrono(),
        disabled_at: document.disabled_at.map(bson::DateTime::to_chrono),
        credential_version: document.credential_version,
        email_verified_at: document.email_verified_at.map(bson::DateTime::to_chrono),
        roles: sorted_roles(document.roles),
    }
}

fn sorted_roles(mut roles: Vec<String>) -> Vec<String> {
    roles.sort();
    roles.dedup();
    roles
}

fn credentials_of(document: UserDocument) -> UserCredentials {
    let password_hash = document.password_hash.clone();
    UserCredentials {
        user: user_of(document),
        password_hash,
    }
}

fn session_of(document: SessionDocument) -> Session {
    Session {
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
        authenticated_at: document
            .authenticated_at
            .unwrap_or(document.created_at)
            .to_chrono(),
        authentication_methods: AuthMethods::parse(&document.authentication_methods),
    }
}

fn session_document(session: NewSession) -> SessionDocument {
    SessionDocument {
        id: id(session.id),
        user_id: id(session.user_id),
        access_jti: id(session.access_jti),
        refresh_jti: id(session.refresh_jti),
        previous_refresh_jti: session.previous_refresh_jti.map(id),
        created_at: date(session.created_at),
        last_refreshed_at: session.last_refreshed_at.map(date),
        expires_at: date(session.expires_at),
        idle_expires_at: date(session.idle_expires_at),
        user_agent: session.user_agent,
        ip_address: session.ip_address,
        credential_version: session.credential_version,
        authenticated_at: Some(date(session.authenticated_at)),
        authentication_methods: session.authentication_methods.to_text(),
    }
}

/// The filter twin of `Session::is_live`.
fn live_at(now: DateTime<Utc>) -> Document {
    doc! { "expires_at": { "$gt": date(now) }, "idle_expires_at": { "$gt": date(now) } }
}

/// `filter` with the liveness conditions added.
fn and_live(mut filter: Document, now: DateTime<Utc>) -> Document {
    filter.extend(live_at(now));
    filter
}

#[async_trait]
impl UserStore for MongoStore {
    /// In a transaction where the deployment has them. Without (a standalone server) the
    /// session is written first and the user second, so no failure or crash between the two
    /// writes can leave a user without a session: what it can leave is a session whose user
    /// does not exist, which every lookup refuses (they all need the user) and which is deleted
    /// at once when the second write is refused, else pruned when it expires. The verification
    /// token and its mails come last: a failure there leaves an account without a link, which
    /// `sendVerificationEmail` (or a login, where verification is required) mails again.
    /// On a task of its own (`detached`): without transactions its writes are several, and a
    /// caller that goes away between them must not leave an identity without its account.
    async fn register_user(
        &self,
        new_user: NewUser,
        new_session: Option<NewSession>,
        verification: Option<IssuedToken>,
    ) -> StoreResult<(User, Option<Session>)> {
        self.detached(move |store| async move {
            store
                .insert_registration(new_user, new_session, verification)
                .await
        })
        .await
    }

    /// The token is taken first (one `findAndModify`: of concurrent callers one wins); if it
    /// still holds for its user ([`token_holds`]), the password and the credential version move
    /// in one update of the user document conditional on the user being as checked (from then
    /// on every session and every other link of the user is refused), then the sessions go, on
    /// a task of its own (see `change_password` for why no transaction). A crash between the
    /// first two writes leaves the token used and the password as it was: the user asks for
    /// another link.
    async fn reset_password(
        &self,
        digest: &str,
        now: DateTime<Utc>,
        password_hash: String,
    ) -> StoreResult<Result<(User, Vec<Uuid>), TokenRefusal>> {
        const PURPOSES: [TokenPurpose; 1] = [TokenPurpose::PasswordReset];
        let digest = digest.to_owned();
        self.detached(move |store| async move {
            let Some(token) = store.take_token(&digest, &PURPOSES, now).await? else {
                return Ok(Err(store.refusal(&digest, &PURPOSES, now).await?));
            };
            let user = match store.token_user(&token).await? {
                Ok(user) => user,
                Err(refused) => return Ok(Err(refused)),
            };
            let mut guard = unchanged_since(&user);
            guard.insert("_id", token.user_id);
            let changed = store
                .users
                .find_one_and_update(
                    guard,
                    doc! {
                        "$set": { "password_hash": password_hash },
                        "$inc": { "credential_version": 1 },
                    },
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(classify)?;
            // Changed between the look and the update: the token no longer holds.
            let Some(mut user) = changed else {
                return Ok(Err(TokenRefusal::Used));
            };
            let user_id = Uuid::from(user.id);
            // The mail proved the address (the token holds: it is still the account's).
            if user.email_verified_at.is_none() {
                user = store
                    .verified(user_id, Some(&user), now)
                    .await?
                    .unwrap_or(user);
            }
            let ended = store.delete_other_sessions(user_id, None).await?;
            Ok(Ok((user_of(user), ended)))
        })
        .await
    }

    /// The token is taken first; if it still holds for its user ([`token_holds`]), a change
    /// then sets the address in one update of the user document conditional on the user being
    /// as checked (a duplicate key gives the token back: `EmailTaken`), a verification marks
    /// the address verified on the same condition. On a task of its own, so that a caller that
    /// gives up cannot leave a taken token unapplied.
    async fn verify_email(
        &self,
        digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<VerifiedEmail, TokenRefusal>> {
        const PURPOSES: [TokenPurpose; 2] =
            [TokenPurpose::EmailVerification, TokenPurpose::EmailChange];
        let digest = digest.to_owned();
        self.detached(move |store| async move {
            let Some(token) = store.take_token(&digest, &PURPOSES, now).await? else {
                return Ok(Err(store.refusal(&digest, &PURPOSES, now).await?));
            };
            let user_id = Uuid::from(token.user_id);
            let user = match store.token_user(&token).await? {
                Ok(user) => user,
                Err(refused) => return Ok(Err(refused)),
            };
            if TokenPurpose::parse(&token.purpose) == Some(TokenPurpose::EmailChange) {
                let mut set = doc! {
                    "email": &token.email,
                    "email_normalized": &token.email_normalized,
                    "email_verified_at": date(now),
                };
                // A username that was the email follows it: a username holds `@` only as its
                // account's own address.
                if user.username_normalized == user.email_normalized {
                    set.insert("username", &token.email);
                    set.insert("username_normalized", &token.email_normalized);
                }
                let mut guard = unchanged_since(&user);
                guard.insert("_id", token.user_id);
                let changed = store
                    .users
                    .find_one_and_update(guard, doc! { "$set": set })
                    .return_document(ReturnDocument::After)
                    .await;
                return match changed {
                    Ok(Some(changed)) => {
                        // Links sent to the old address no longer hold from here on; they are
                        // ended too, so that they stay dead should the address come back (a
                        // crash before this leaves them refused while the address differs).
                        for purpose in
                            [TokenPurpose::PasswordReset, TokenPurpose::EmailVerification]
                        {
                            store
                                .end_tokens(user_id, purpose, now, None)
                                .await
                                .map_err(classify)?;
                        }
                        Ok(Ok(VerifiedEmail {
                            user: user_of(changed),
                            previous_email: Some(user.email.clone()),
                        }))
                    }
                    // Changed between the look and the update: the token no longer holds.
                    Ok(None) => Ok(Err(TokenRefusal::Used)),
                    Err(error) if is_duplicate_key(&error) => {
                        store
                            .tokens
                            .update_one(
                                doc! { "_id": token.id },
                                doc! { "$set": { "used_at": Bson::Null } },
                            )
                            .await
                            .map_err(classify)?;
                        Err(StoreError::EmailTaken)
                    }
                    Err(error) => Err(classify(error)),
                };
            }
            let verified = store.verified(user_id, Some(&user), now).await?;
            match verified {
                Some(user)
                    if user.email_normalized == token.email_normalized
                        && user.email_verified_at.is_some() =>
                {
                    Ok(Ok(VerifiedEmail {
                        user: user_of(user),
                        previous_email: None,
                    }))
                }
                Some(_) => Ok(Err(TokenRefusal::Used)),
                None => Ok(Err(TokenRefusal::Unknown)),
            }
        })
        .await
    }

    async fn mark_email_verified(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        Ok(self.verified(user_id, None, at).await?.map(user_of))
    }

    async fn find_credentials(
        &self,
        login_normalized: &str,
    ) -> StoreResult<Option<UserCredentials>> {
        // A key with `@` is an email's, and only an email's (a username holds `@` only when it
        // is its account's own email).
        let field = if login_normalized.contains('@') {
            "email_normalized"
        } else {
            "username_normalized"
        };
        Ok(self
            .users
            .find_one(doc! { field: login_normalized })
            .await
            .map_err(classify)?
            .map(credentials_of))
    }

    async fn find_credentials_by_id(&self, user_id: Uuid) -> StoreResult<Option<UserCredentials>> {
        Ok(self
            .users
            .find_one(doc! { "_id": id(user_id) })
            .await
            .map_err(classify)?
            .map(credentials_of))
    }

    /// The credential version moves on with the new hash in one atomic update of the user
    /// document: from then on every other session is refused on every lookup. Then the kept
    /// session follows the version, and the others are deleted in batches. No transaction: the
    /// sessions being refreshed meanwhile (another device, or an attacker holding a stolen
    /// refresh token) would make one conflict again and again, and block the change. The whole
    /// runs on a task of its own, so that a caller that gives up half-way (a request timeout)
    /// cannot leave the sweep undone.
    async fn change_password(
        &self,
        user_id: Uuid,
        proven_version: i64,
        password_hash: String,
        keep_session: Uuid,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        self.detached(move |store| async move {
            let changed = store
                .users
                .find_one_and_update(
                    doc! { "_id": id(user_id), "credential_version": proven_version },
                    doc! {
                        "$set": { "password_hash": password_hash },
                        "$inc": { "credential_version": 1 },
                    },
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(classify)?;
            let Some(changed) = changed else {
                return Ok(None);
            };
            store
                .sessions
                .update_one(
                    doc! { "_id": id(keep_session), "user_id": id(user_id) },
                    doc! { "$set": { "credential_version": changed.credential_version } },
                )
                .await
                .map_err(classify)?;
            store
                .delete_other_sessions(user_id, Some(keep_session))
                .await
                .map(Some)
        })
        .await
    }

    async fn replace_password_hash(
        &self,
        user_id: Uuid,
        current: &str,
        new: String,
    ) -> StoreResult<bool> {
        let replaced = self
            .users
            .update_one(
                doc! { "_id": id(user_id), "password_hash": current },
                doc! { "$set": { "password_hash": new } },
            )
            .await
            .map_err(classify)?;
        Ok(replaced.modified_count == 1)
    }

    /// Marked (and, when disabling, the credential version moved on) in one atomic update of
    /// the user document, so that from then on every session of it is refused on every lookup;
    /// then its sessions are deleted in batches, on a task of its own (see `change_password`
    /// for why no transaction).
    async fn set_user_disabled(
        &self,
        user_id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        self.detached(move |store| async move {
            let mark = match disabled_at {
                Some(at) => doc! {
                    "$set": { "disabled_at": date(at) },
                    "$inc": { "credential_version": 1 },
                },
                None => doc! { "$set": { "disabled_at": Bson::Null } },
            };
            let marked = store
                .users
                .update_one(doc! { "_id": id(user_id) }, mark)
                .await
                .map_err(classify)?;
            if marked.matched_count == 0 {
                return Ok(None);
            }
            if disabled_at.is_none() {
                return Ok(Some(Vec::new()));
            }
            Ok(Some(store.delete_other_sessions(user_id, None).await?))
        })
        .await
    }

    /// One update of the user document (`$addToSet` / `$pull`: atomic on the server), guarded
    /// so that a grant never takes the document past [`super::MAX_ROLES`].
    async fn change_user_role(
        &self,
        user_id: Uuid,
        role: &str,
        grant: bool,
    ) -> StoreResult<RoleChange> {
        let role = role.to_owned();
        self.detached(move |store| async move {
            let (filter, change) = if grant {
                let full = format!("roles.{}", super::MAX_ROLES - 1);
                (
                    doc! { "_id": id(user_id), full: { "$exists": false } },
                    doc! { "$addToSet": { "roles": &role } },
                )
            } else {
                (
                    doc! { "_id": id(user_id) },
                    doc! { "$pull": { "roles": &role } },
                )
            };
            store
                .users
                .update_one(filter, change)
                .await
                .map_err(classify)?;
            let found = store
                .users
                .find_one(doc! { "_id": id(user_id) })
                .await
                .map_err(classify)?;
            Ok(match found {
                None => RoleChange::UnknownUser,
                Some(user) => {
                    let roles = sorted_roles(user.roles);
                    if grant && !roles.contains(&role) {
                        RoleChange::TooManyRoles
                    } else {
                        RoleChange::Roles(roles)
                    }
                }
            })
        })
        .await
    }

    /// The user document goes first (from then on every session of it is refused: every lookup
    /// needs the user), then its sessions in batches, on a task of its own (see
    /// `change_password`).
    async fn delete_user(
        &self,
        user_id: Uuid,
        proven_version: Option<i64>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        self.detached(move |store| async move {
            let mut filter = doc! { "_id": id(user_id) };
            if let Some(version) = proven_version {
                filter.insert("credential_version", version);
            }
            let deleted = store.users.delete_one(filter).await.map_err(classify)?;
            if deleted.deleted_count == 0 {
                return Ok(None);
            }
            // The sessions first: they are what a client could still present.
            let ended = store.delete_other_sessions(user_id, None).await?;
            store
                .tokens
                .delete_many(doc! { "user_id": id(user_id) })
                .await
                .map_err(classify)?;
            store
                .delete_second_factors(user_id)
                .await
                .map_err(classify)?;
            store
                .identities
                .delete_many(doc! { "user_id": id(user_id) })
                .await
                .map_err(classify)?;
            Ok(Some(ended))
        })
        .await
    }
}

#[async_trait]
impl SessionStore for MongoStore {
    /// The session first, then the check of its user: a password change or a disable that
    /// lands before the check is seen by it (the session is deleted again, `None`); one that
    /// lands after it ends the session with the others (its sweep comes after its atomic
    /// update of the user, and so after this insert).
    async fn create_session(
        &self,
        new_session: NewSession,
        max_sessions: usize,
    ) -> StoreResult<Option<CreatedSession>> {
        let session = session_document(new_session);
        self.sessions.insert_one(&session).await.map_err(classify)?;
        let user = self
            .users
            .find_one(doc! { "_id": session.user_id })
            .await
            .map_err(classify)?;
        let current = user.is_some_and(|user| {
            user.credential_version == session.credential_version && user.disabled_at.is_none()
        });
        if !current {
            self.sessions
                .delete_one(doc! { "_id": session.id })
                .await
                .map_err(classify)?;
            return Ok(None);
        }
        let evicted = self
            .evict_beyond(session.user_id.into(), max_sessions)
            .await?;
        Ok(Some(CreatedSession {
            session: session_of(session),
            evicted,
        }))
    }

    async fn find_session_by_access_jti(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Session)>> {
        self.lookups.find(session_id, access_jti, now).await
    }

    async fn find_session(&self, session_id: Uuid) -> StoreResult<Option<(User, Session)>> {
        match self
            .sessions
            .find_one(doc! { "_id": id(session_id) })
            .await
            .map_err(classify)?
        {
            Some(session) => self.with_user(session).await,
            None => Ok(None),
        }
    }

    /// One `findAndModify` conditional on the presented refresh jti: the server applies it to
    /// one document atomically, so of concurrent rotations exactly one matches.
    async fn rotate_session(&self, rotation: Rotation) -> StoreResult<Option<(User, Session)>> {
        let filter = and_live(
            doc! {
                "_id": id(rotation.session_id),
                "refresh_jti": id(rotation.presented_refresh_jti),
            },
            rotation.at,
        );
        let update = doc! { "$set": {
            "access_jti": id(rotation.new_access_jti),
            "refresh_jti": id(rotation.new_refresh_jti),
            "previous_refresh_jti": id(rotation.presented_refresh_jti),
            "last_refreshed_at": date(rotation.at),
            "idle_expires_at": date(rotation.idle_expires_at),
        } };
        let rotated = self
            .sessions
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .hint(by_id())
            .await
            .map_err(classify)?;
        // A session of an old credential version, or of a disabled user, rotated all the same
        // is dead on every lookup; it is refused here too.
        match rotated {
            Some(session) => Ok(self.with_user(session).await?.filter(|(user, session)| {
                session.is_current_for(user) && user.disabled_at.is_none()
            })),
            None => Ok(None),
        }
    }

    /// One `findAndModify` conditional on the access jti and liveness; a session whose user
    /// moved on is refused as every lookup refuses it.
    async fn reauthenticate_session(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        at: DateTime<Utc>,
        methods: AuthMethods,
    ) -> StoreResult<Option<Session>> {
        let updated = self
            .sessions
            .find_one_and_update(
                and_live(
                    doc! { "_id": id(session_id), "access_jti": id(access_jti) },
                    at,
                ),
                doc! { "$set": {
                    "authenticated_at": date(at),
                    "authentication_methods": methods.to_text(),
                } },
            )
            .return_document(ReturnDocument::After)
            .hint(by_id())
            .await
            .map_err(classify)?;
        match updated {
            Some(session) => Ok(self
                .with_user(session)
                .await?
                .filter(|(user, session)| {
                    session.is_current_for(user) && user.disabled_at.is_none()
                })
                .map(|(_, session)| session)),
            None => Ok(None),
        }
    }

    async fn list_live_sessions(
        &self,
        user_id: Uuid,
        credential_version: i64,
        now: DateTime<Utc>,
        page: SessionPage,
    ) -> StoreResult<Vec<Session>> {
        let mut filter = and_live(
            doc! { "user_id": id(user_id), "credential_version": credential_version },
            now,
        );
        if let Some(after) = page.after {
            filter.insert(
                "$or",
                vec![
                    doc! { "created_at": { "$lt": date(after.created_at) } },
                    doc! { "created_at": date(after.created_at), "_id": { "$lt": id(after.id) } },
                ],
            );
        }
        let sessions: Vec<SessionDocument> = self
            .sessions
            .find(filter)
            .sort(doc! { "created_at": -1, "_id": -1 })
            .limit(i64::try_from(page.first).unwrap_or(i64::MAX))
            .hint(by_user())
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        Ok(sessions.into_iter().map(session_of).collect())
    }

    /// One `findOneAndDelete` per id, so the ids returned are exactly those this call deleted.
    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        session_ids: &[Uuid],
    ) -> StoreResult<Vec<Uuid>> {
        let mut deleted = Vec::new();
        for &session_id in session_ids {
            let found = self
                .sessions
                .find_one_and_delete(doc! { "_id": id(session_id), "user_id": id(user_id) })
                .hint(by_id())
                .await
                .map_err(classify)?;
            if found.is_some() {
                deleted.push(session_id);
            }
        }
        Ok(deleted)
    }

    /// The ids by user, then one delete by id: a session created between the two is not
    /// ended (as on SQL, where it would be created after the delete).
    async fn delete_other_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>> {
        self.end_sessions(user_id, keep).await.map_err(classify)
    }

    async fn count_live_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.sessions
            .count_documents(live_at(now))
            .await
            .map_err(classify)
    }

    /// In batches, for each way a session ends (its absolute expiry, its idle timeout): the ids
    /// of up to `batch` sessions that ended by that rule (one index each), then one delete by
    /// id. A session that ended before `ended_before` cannot come back to life (a refresh needs
    /// a live session), so deleting by id alone is safe; instances pruning at once each count
    /// only what they deleted.
    async fn prune_sessions(&self, ended_before: DateTime<Utc>, batch: u64) -> StoreResult<u64> {
        let ids_collection = self.sessions.clone_with_type::<Document>();
        let mut pruned = 0;
        for field in ["expires_at", "idle_expires_at"] {
            loop {
                let ids: Vec<Bson> = ids_collection
                    .find(doc! { field: { "$lte": date(ended_before) } })
                    .projection(doc! { "_id": 1 })
                    .limit(i64::try_from(batch).unwrap_or(i64::MAX))
                    .await
                    .map_err(classify)?
                    .try_collect::<Vec<Document>>()
                    .await
                    .map_err(classify)?
                    .into_iter()
                    .filter_map(|mut document| document.remove("_id"))
                    .collect();
                let found = ids.len() as u64;
                if found > 0 {
                    pruned += self
                        .sessions
                        .delete_many(doc! { "_id": { "$in": ids } })
                        .await
                        .map_err(classify)?
                        .deleted_count;
                }
                if found < batch {
                    break;
                }
            }
        }
        Ok(pruned)
    }
}

#[async_trait]
impl TokenStore for MongoStore {
    /// In a transaction where the deployment has them; else the older tokens are ended, the
    /// token stored and its mails queued in that order, on a task of its own.
    async fn issue_token(&self, issued: IssuedToken) -> StoreResult<()> {
        let token = token_document(issued.token);
        let mails: Vec<MailDocument> = issued.mails.into_iter().map(mail_document).collect();
        if self.transactions {
            let written = in_transaction!(self, transaction, {
                self.write_token(&token, &mails, Some(&mut transaction))
                    .await
            });
            return written.map_err(classify);
        }
        self.detached(move |store| async move {
            store
                .write_token(&token, &mails, None)
                .await
                .map_err(classify)
        })
        .await
    }

    async fn check_token(
        &self,
        digest: &str,
        purposes: &[TokenPurpose],
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), TokenRefusal>> {
        self.token_status(digest, purposes, now).await
    }

    async fn prune_tokens(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        Ok(self
            .tokens
            .delete_many(doc! { "expires_at": { "$lt": date(before) } })
            .await
            .map_err(classify)?
            .deleted_count)
    }
}

#[async_trait]
impl OutboxStore for MongoStore {
    async fn queue_mails(&self, mails: Vec<NewMail>) -> StoreResult<()> {
        if mails.is_empty() {
            return Ok(());
        }
        let mails: Vec<MailDocument> = mails.into_iter().map(mail_document).collect();
        self.outbox.insert_many(mails).await.map_err(classify)?;
        Ok(())
    }

    async fn queue_webhooks(&self, webhooks: Vec<NewWebhook>) -> StoreResult<()> {
        if webhooks.is_empty() {
            return Ok(());
        }
        let rows = webhooks
            .into_iter()
            .map(|webhook| outbox_document(OutboxChannel::Webhook, webhook.into_row()));
        self.outbox.insert_many(rows).await.map_err(classify)?;
        Ok(())
    }

    /// The due mails by the `next_attempt_at` index, then one `findAndModify` each that leases
    /// it only if no other instance did meanwhile: of instances claiming at once, one gets each.
    async fn claim_messages(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let free = || {
            vec![
                doc! { "claimed_until": Bson::Null },
                doc! { "claimed_until": { "$lt": date(now) } },
            ]
        };
        let due: Vec<MailDocument> = self
            .outbox
            .find(doc! { "next_attempt_at": { "$lte": date(now) }, "$or": free() })
            .sort(doc! { "next_attempt_at": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .hint(Hint::Keys(doc! { "next_attempt_at": 1 }))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let lease_end = now + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX);
        let mut claimed = Vec::new();
        for mail in due {
            let leased = self
                .outbox
                .find_one_and_update(
                    doc! { "_id": mail.id, "$or": free() },
                    doc! { "$set": { "claimed_until": date(lease_end) } },
                )
                .hint(by_id())
                .await
                .map_err(classify)?;
            if let Some(mail) = leased {
                let channel = mail.channel.unwrap_or_default();
                let row = OutboxMail {
                    id: mail.id.into(),
                    kind: mail.kind,
                    envelope_from: mail.envelope_from,
                    envelope_to: mail.envelope_to,
                    message: mail.message,
                    attempts: u32::try_from(mail.attempts).unwrap_or(0),
                    expires_at: mail.expires_at.to_chrono(),
                };
                claimed.push(OutboxMessage::from_row(&channel, row));
            }
        }
        Ok(claimed)
    }

    async fn remove_message(&self, mail_id: Uuid) -> StoreResult<()> {
        self.outbox
            .delete_one(doc! { "_id": id(mail_id) })
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn retry_message(&self, mail_id: Uuid, retry_at: DateTime<Utc>) -> StoreResult<()> {
        self.outbox
            .update_one(
                doc! { "_id": id(mail_id) },
                doc! {
                    "$set": { "next_attempt_at": date(retry_at), "claimed_until": Bson::Null },
                    "$inc": { "attempts": 1 },
                },
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn outbox_depth(&self) -> StoreResult<u64> {
        self.outbox.count_documents(doc! {}).await.map_err(classify)
    }
}

#[async_trait]
impl SettingStore for MongoStore {
    /// An upsert that only sets the value on insert: the first writer's value stays. Two
    /// upserts racing on a new name can both try the insert; the loser's duplicate key error
    /// means the winner's value is there to read.
    async fn setting_or_insert(&self, name: &str, candidate: String) -> StoreResult<String> {
        let upserted = self
            .settings
            .update_one(
                doc! { "_id": name },
                doc! { "$setOnInsert": { "value": candidate } },
            )
            .upsert(true)
            .await;
        match upserted {
            Ok(_) => {}
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => return Err(classify(error)),
        }
        self.settings
            .find_one(doc! { "_id": name })
            .await
            .map_err(classify)?
            .map(|setting| setting.value)
            .ok_or_else(|| StoreError::Database(format!("setting {name} vanished").into()))
    }
}

#[async_trait]
impl RateLimitStore for MongoStore {
    /// The GCRA step as one `findAndModify` with upsert: the filter matches the bucket only if
    /// a token is free (`max(tat, now) + interval <= now + capacity`), and the pipeline update
    /// moves `tat` on. When the bucket exists but is empty the filter matches nothing, the
    /// upsert tries to insert a second document with the same `_id`, and the duplicate key
    /// error is the refusal.
    async fn take_rate_limit_token(
        &self,
        key: &str,
        now: DateTime<Utc>,
        emission_interval: Duration,
        burst: u32,
    ) -> StoreResult<Option<Duration>> {
        let gcra = super::Gcra::new(now, emission_interval, burst);
        let (now_us, interval_us, capacity_us) = (gcra.now, gcra.interval, gcra.capacity);
        let filter = doc! {
            "_id": key,
            "$expr": { "$lte": [
                { "$add": [{ "$max": ["$tat", now_us] }, interval_us] },
                now_us.saturating_add(capacity_us),
            ] },
        };
        let update = vec![doc! { "$set": { "tat": { "$add": [
            { "$max": [{ "$ifNull": ["$tat", now_us] }, now_us] },
            interval_us,
        ] } } }];
        let taken = self
            .buckets
            .find_one_and_update(filter, update)
            .upsert(true)
            .hint(by_id())
            .await;
        match taken {
            Ok(_) => return Ok(None),
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => return Err(classify(error)),
        }
        let tat = self
            .buckets
            .find_one(doc! { "_id": key })
            .await
            .map_err(classify)?
            .and_then(|bucket| bucket.get_i64("tat").ok())
            .unwrap_or(now_us);
        Ok(Some(gcra.wait(tat)))
    }

    async fn prune_rate_limit_buckets(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        Ok(self
            .buckets
            .delete_many(doc! { "tat": { "$lt": now.timestamp_micros() } })
            .await
            .map_err(classify)?
            .deleted_count)
    }
}

#[async_trait]
impl EventStore for MongoStore {
    /// An insert into `session_events` (a TTL index removes them after
    /// `EVENT_RETENTION_SECONDS`), which every listener's change stream sees. A standalone
    /// server has no change streams: `false`.
    async fn broadcast_events(&self, payload: &str) -> StoreResult<bool> {
        if !self.transactions {
            return Ok(false);
        }
        self.events
            .insert_one(doc! { "payload": payload, "at": bson::DateTime::now() })
            .await
            .map_err(classify)?;
        Ok(true)
    }

    /// A change stream of the inserts into `session_events`, opened again (after the last
    /// event seen, while the server still has it) whenever it fails. A standalone server has
    /// none: `None`.
    async fn listen_events(&self) -> StoreResult<Option<EventStream>> {
        if !self.transactions {
            return Ok(None);
        }
        let events = self.events.clone();
        let watch = move |resume: Option<mongodb::change_stream::event::ResumeToken>| {
            let events = events.clone();
            async move {
                let watch = events
                    .watch()
                    .pipeline([doc! { "$match": { "operationType": "insert" } }]);
                match resume {
                    Some(resume) => watch.start_after(resume).await,
                    None => watch.await,
                }
            }
        };
        // Opened before this returns, so that nothing published after it is missed.
        let first = watch(None).await.map_err(classify)?;
        let state = (Some(first), None, watch);
        Ok(Some(Box::pin(futures_util::stream::unfold(
            state,
            |(mut stream, mut resume, watch)| async move {
                loop {
                    let Some(current) = stream.as_mut() else {
                        match watch(resume.clone()).await {
                            Ok(opened) => stream = Some(opened),
                            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                        }
                        continue;
                    };
                    match current.next().await {
                        Some(Ok(change)) => {
                            resume = current.resume_token().or(resume);
                            let payload = change.full_document.and_then(|document| {
                                document.get_str("payload").ok().map(str::to_owned)
                            });
                            if let Some(payload) = payload {
                                return Some((payload, (stream, resume, watch)));
                            }
                        }
                        _ => {
                            stream = None;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            },
        ))))
    }
}

#[async_trait]
impl HealthStore for MongoStore {
    fn pool_status(&self) -> Option<PoolStatus> {
        let open = self.pool.open.load(Ordering::Relaxed).max(0);
        let in_use = self.pool.in_use.load(Ordering::Relaxed).clamp(0, open);
        Some(PoolStatus {
            in_use: in_use.unsigned_abs(),
            idle: (open - in_use).unsigned_abs(),
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.check_writable().await
    }
}

fn totp_of(document: TotpDocument) -> TotpCredential {
    TotpCredential {
        user_id: document.user_id.into(),
        secret: document.secret,
        confirmed_at: document.confirmed_at.map(bson::DateTime::to_chrono),
        last_step: document.last_step,
        created_at: document.created_at.to_chrono(),
    }
}

fn passkey_of(document: PasskeyDocument) -> StoredPasskey {
    StoredPasskey {
        id: document.id.into(),
        user_id: document.user_id.into(),
        credential_id: document.credential_id,
        name: document.name,
        credential: document.credential,
        counter: document.counter,
        backup_eligible: document.backup_eligible,
        created_at: document.created_at.to_chrono(),
        last_used_at: document.last_used_at.map(bson::DateTime::to_chrono),
    }
}

fn challenge_of(document: ChallengeDocument) -> StoreResult<Challenge> {
    Ok(Challenge {
        kind: ChallengeKind::parse(&document.kind).ok_or_else(|| {
            StoreError::Database(format!("unknown challenge kind {}", document.kind).into())
        })?,
        id: document.id.into(),
        digest: document.digest,
        user_id: document.user_id.map(Into::into),
        session_id: document.session_id.map(Into::into),
        credential_version: document.credential_version,
        methods: AuthMethods::parse(&document.methods),
        state: document.state,
        attempts: document.attempts,
        created_at: document.created_at.to_chrono(),
        expires_at: document.expires_at.to_chrono(),
    })
}

/// The `digest` index of `auth_challenges`.
fn by_digest() -> Hint {
    Hint::Keys(doc! { "digest": 1 })
}

/// Second factors: each deciding write is one atomic single-document update (a TOTP step, a
/// recovery code, a passkey's counter, a challenge taken). Turning a factor on writes it first
/// and then moves the credential version on, on a task of its own (see `change_password` for
/// why no transaction): a login racing it sees the factor, or made its session before the
/// version moved and loses it with the others.
#[async_trait]
impl IdentityStore for MongoStore {
    async fn find_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<(Identity, UserCredentials)>> {
        let Some(identity) = self
            .identities
            .find_one(doc! { "issuer": issuer, "subject": subject })
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        let user = self
            .users
            .find_one(doc! { "_id": identity.user_id })
            .await
            .map_err(classify)?;
        let Some(user) = user else {
            if identity.linked_at.to_chrono() < Utc::now() - ORPHAN_AGE {
                // Without transactions a registration stores its identity before its user; one
                // whose user never came (the process stopped in between) would keep its
                // identity from ever signing in. A registration in flight is younger than this.
                self.identities
                    .delete_one(doc! { "_id": identity.id })
                    .await
                    .map_err(classify)?;
            }
            return Ok(None);
        };
        // Read again after the account: an unlink that landed in between is seen here.
        let again = self
            .identities
            .find_one(doc! { "_id": identity.id })
            .await
            .map_err(classify)?
            .filter(|again| again.user_id == user.id);
        Ok(again.map(|identity| (identity_of(identity), credentials_of(user))))
    }

    async fn identities(&self, user_id: Uuid) -> StoreResult<Vec<Identity>> {
        let mut found: Vec<Identity> = self
            .identities
            .find(doc! { "user_id": id(user_id) })
            .await
            .map_err(classify)?
            .map_ok(identity_of)
            .try_collect()
            .await
            .map_err(classify)?;
        found.sort_by_key(|identity| (identity.linked_at, identity.id));
        Ok(found)
    }

    /// The identity is stored, then counted in its user's document; a user deleted in between
    /// takes it with them (`delete_user` deletes by `user_id` after the user document).
    async fn link_identity(&self, identity: Identity) -> StoreResult<Linking> {
        self.detached(move |store| async move {
            let user_id = id(identity.user_id);
            let exists = store
                .users
                .find_one(doc! { "_id": user_id })
                .await
                .map_err(classify)?
                .is_some();
            if !exists {
                return Ok(Linking::UnknownUser);
            }
            let document = identity_document(identity.clone());
            match store.identities.insert_one(&document).await {
                Ok(_) => {}
                Err(error) if is_duplicate_key(&error) => {
                    let taken = store
                        .identities
                        .find_one(doc! { "issuer": &document.issuer, "subject": &document.subject })
                        .await
                        .map_err(classify)?
                        .is_some();
                    return Ok(if taken {
                        Linking::IdentityTaken
                    } else {
                        Linking::ProviderTaken
                    });
                }
                Err(error) => return Err(classify(error)),
            }
            let counted = store
                .users
                .update_one(
                    doc! { "_id": user_id },
                    doc! { "$inc": { "identity_count": 1 } },
                )
                .await
                .map_err(classify)?;
            if counted.matched_count == 0 {
                let _ = store
                    .identities
                    .delete_one(doc! { "_id": document.id })
                    .await;
                return Ok(Linking::UnknownUser);
            }
            Ok(Linking::Linked(identity))
        })
        .await
    }

    /// The identity is uncounted first, by one atomic update that requires a password or
    /// another identity; then deleted, and recorded as unlinked by the account's address; then
    /// the credentials move on as a passkey's removal moves them.
    async fn unlink_identity(
        &self,
        user_id: Uuid,
        provider: &str,
        keep_session: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Unlinking> {
        let provider = provider.to_owned();
        self.detached(move |store| async move {
            let not_linked = Unlinking::Unlinked(FactorRemoval::NotFound);
            let user = id(user_id);
            let Some(identity) = store
                .identities
                .find_one(doc! { "user_id": user, "provider": &provider })
                .await
                .map_err(classify)?
            else {
                return Ok(not_linked);
            };
            let uncounted = store
                .users
                .update_one(
                    doc! {
                        "_id": user,
                        "$or": [
                            { "password_hash": { "$ne": super::NO_PASSWORD } },
                            { "identity_count": { "$gt": 1 } },
                        ],
                    },
                    doc! { "$inc": { "identity_count": -1 } },
                )
                .hint(by_id())
                .await
                .map_err(classify)?;
            if uncounted.matched_count == 0 {
                return Ok(Unlinking::LastLoginMethod);
            }
            // Recorded first: a stop between the two writes leaves the identity linked and
            // recorded, never unlinked and unrecorded.
            if let Some(account) = store
                .users
                .find_one(doc! { "_id": user })
                .await
                .map_err(classify)?
            {
                let key = unlinked_key(
                    &account.email_normalized,
                    &identity.issuer,
                    &identity.subject,
                );
                store
                    .unlinked_identities
                    .update_one(
                        doc! { "_id": key },
                        doc! { "$set": { "unlinked_at": date(at) } },
                    )
                    .upsert(true)
                    .await
                    .map_err(classify)?;
            }
            let deleted = store
                .identities
                .delete_one(doc! { "_id": identity.id })
                .await
                .map_err(classify)?;
            if deleted.deleted_count == 0 {
                // A concurrent unlink of the same identity deleted it: count it back.
                store
                    .users
                    .update_one(
                        doc! { "_id": user },
                        doc! { "$inc": { "identity_count": 1 } },
                    )
                    .await
                    .map_err(classify)?;
                return Ok(not_linked);
            }
            Ok(Unlinking::Unlinked(
                store.finish_removal(user_id, keep_session).await?,
            ))
        })
        .await
    }

    async fn unlinked_before(
        &self,
        email_normalized: &str,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<bool> {
        Ok(self
            .unlinked_identities
            .find_one(doc! { "_id": unlinked_key(email_normalized, issuer, subject) })
            .await
            .map_err(classify)?
            .is_some())
    }
}

/// The `_id` of an `unlinked_identities` document (none of the three holds a newline: an
/// address key, a URL, a `sub` of printable ASCII).
fn unlinked_key(email_normalized: &str, issuer: &str, subject: &str) -> String {
    format!("{email_normalized}\n{issuer}\n{subject}")
}

#[async_trait]
impl SecondFactorStore for MongoStore {
    async fn totp(&self, user_id: Uuid) -> StoreResult<Option<TotpCredential>> {
        Ok(self
            .totp
            .find_one(doc! { "_id": id(user_id) })
            .await
            .map_err(classify)?
            .map(totp_of))
    }

    async fn begin_totp(&self, credential: TotpCredential) -> StoreResult<bool> {
        // Replace a pending one, or insert. A duplicate key says only that some document is
        // there: a confirmed one (TOTP is on), or a pending one that landed meanwhile (a
        // concurrent enrollment, or this insert's own first try when the driver retried it
        // after a lost answer), which the next replace takes. Only a confirmed one is `false`.
        for _ in 0..3 {
            let replaced = self
                .totp
                .update_one(
                    doc! { "_id": id(credential.user_id), "confirmed_at": Bson::Null },
                    doc! { "$set": {
                        "secret": &credential.secret,
                        "last_step": -1_i64,
                        "created_at": date(credential.created_at),
                    } },
                )
                .hint(by_id())
                .await
                .map_err(classify)?;
            if replaced.matched_count == 1 {
                return Ok(true);
            }
            match self
                .totp
                .insert_one(TotpDocument {
                    user_id: id(credential.user_id),
                    secret: credential.secret.clone(),
                    confirmed_at: None,
                    last_step: -1,
                    created_at: date(credential.created_at),
                })
                .await
            {
                Ok(_) => return Ok(true),
                Err(error) if is_duplicate_key(&error) => {
                    let confirmed = self
                        .totp
                        .find_one(doc! {
                            "_id": id(credential.user_id),
                            "confirmed_at": { "$ne": Bson::Null },
                        })
                        .hint(by_id())
                        .await
                        .map_err(classify)?
                        .is_some();
                    if confirmed {
                        return Ok(false);
                    }
                }
                Err(error) => return Err(classify(error)),
            }
        }
        // Pending documents kept appearing and vanishing under each try: enrollments of
        // the same user racing each other; the newest is theirs.
        Err(StoreError::Unavailable(
            "concurrent TOTP enrollments of one user".into(),
        ))
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
        let secret = secret.to_owned();
        self.detached(move |store| async move {
            let confirmed = store
                .totp
                .update_one(
                    doc! { "_id": id(user_id), "secret": &secret, "confirmed_at": Bson::Null },
                    doc! { "$set": { "confirmed_at": date(at), "last_step": step } },
                )
                .hint(by_id())
                .await
                .map_err(classify)?;
            if confirmed.matched_count == 0 {
                return Ok(None);
            }
            store
                .store_recovery_codes(user_id, recovery_digests, at)
                .await
                .map_err(classify)?;
            store.move_credentials_on(user_id, Some(keep_session)).await
        })
        .await
    }

    async fn disable_totp(&self, user_id: Uuid, keep_session: Uuid) -> StoreResult<FactorRemoval> {
        self.detached(move |store| async move {
            let removed = store
                .totp
                .delete_one(doc! { "_id": id(user_id), "confirmed_at": { "$ne": Bson::Null } })
                .hint(by_id())
                .await
                .map_err(classify)?;
            if removed.deleted_count == 0 {
                return Ok(FactorRemoval::NotFound);
            }
            store
                .recovery_codes
                .delete_many(doc! { "user_id": id(user_id) })
                .await
                .map_err(classify)?;
            store.finish_removal(user_id, keep_session).await
        })
        .await
    }

    async fn take_totp_step(&self, user_id: Uuid, step: i64) -> StoreResult<bool> {
        let taken = self
            .totp
            .update_one(
                doc! {
                    "_id": id(user_id),
                    "confirmed_at": { "$ne": Bson::Null },
                    "last_step": { "$lt": step },
                },
                doc! { "$set": { "last_step": step } },
            )
            .hint(by_id())
            .await
            .map_err(classify)?;
        Ok(taken.modified_count == 1)
    }

    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        digests: Vec<String>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.detached(move |store| async move {
            let on = store
                .totp
                .find_one(doc! { "_id": id(user_id), "confirmed_at": { "$ne": Bson::Null } })
                .hint(by_id())
                .await
                .map_err(classify)?
                .is_some();
            if !on {
                return Ok(false);
            }
            store
                .store_recovery_codes(user_id, digests, at)
                .await
                .map_err(classify)?;
            Ok(true)
        })
        .await
    }

    async fn recovery_code_unused(&self, user_id: Uuid, digest: &str) -> StoreResult<bool> {
        Ok(self
            .recovery_codes
            .find_one(doc! { "user_id": id(user_id), "digest": digest, "used_at": Bson::Null })
            .hint(Hint::Keys(doc! { "user_id": 1, "digest": 1 }))
            .await
            .map_err(classify)?
            .is_some())
    }

    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        digest: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let used = self
            .recovery_codes
            .update_one(
                doc! { "user_id": id(user_id), "digest": digest, "used_at": Bson::Null },
                doc! { "$set": { "used_at": date(at) } },
            )
            .hint(Hint::Keys(doc! { "user_id": 1, "digest": 1 }))
            .await
            .map_err(classify)?;
        Ok(used.modified_count == 1)
    }

    async fn second_factors(&self, user_id: Uuid) -> StoreResult<SecondFactors> {
        let totp = self
            .totp
            .find_one(doc! { "_id": id(user_id) })
            .await
            .map_err(classify)?
            .is_some_and(|totp| totp.confirmed_at.is_some());
        let recovery_codes_left = if totp {
            let codes: Vec<RecoveryCodeDocument> = self
                .recovery_codes
                .find(doc! { "user_id": id(user_id) })
                .hint(Hint::Keys(doc! { "user_id": 1, "digest": 1 }))
                .await
                .map_err(classify)?
                .try_collect()
                .await
                .map_err(classify)?;
            codes.iter().filter(|code| code.used_at.is_none()).count() as u64
        } else {
            0
        };
        let passkeys = self
            .passkeys
            .count_documents(doc! { "user_id": id(user_id) })
            .await
            .map_err(classify)?;
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
        self.detached(move |store| async move {
            let user_id = passkey.user_id;
            let inserted = store
                .passkeys
                .insert_one(PasskeyDocument {
                    id: id(passkey.id),
                    user_id: id(passkey.user_id),
                    credential_id: passkey.credential_id,
                    name: passkey.name,
                    credential: passkey.credential,
                    counter: passkey.counter,
                    backup_eligible: passkey.backup_eligible,
                    created_at: date(passkey.created_at),
                    last_used_at: passkey.last_used_at.map(date),
                })
                .await;
            match inserted {
                Ok(_) => {}
                Err(error) if is_duplicate_key(&error) => {
                    return Ok(PasskeyAddition::CredentialTaken);
                }
                Err(error) => return Err(classify(error)),
            }
            let Some(ended) = store
                .move_credentials_on(user_id, Some(keep_session))
                .await?
            else {
                // The session that registered it ended meanwhile: the passkey goes with it.
                store
                    .passkeys
                    .delete_one(doc! { "_id": id(passkey.id) })
                    .await
                    .map_err(classify)?;
                return Ok(PasskeyAddition::SessionEnded);
            };
            Ok(PasskeyAddition::Added(ended))
        })
        .await
    }

    async fn passkeys(&self, user_id: Uuid) -> StoreResult<Vec<StoredPasskey>> {
        let mut passkeys: Vec<StoredPasskey> = self
            .passkeys
            .find(doc! { "user_id": id(user_id) })
            .await
            .map_err(classify)?
            .map_ok(passkey_of)
            .try_collect()
            .await
            .map_err(classify)?;
        passkeys.sort_by_key(|passkey| (passkey.created_at, passkey.id));
        Ok(passkeys)
    }

    async fn passkey_by_credential_id(
        &self,
        credential_id: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        Ok(self
            .passkeys
            .find_one(doc! { "credential_id": credential_id })
            .await
            .map_err(classify)?
            .map(passkey_of))
    }

    async fn rename_passkey(
        &self,
        user_id: Uuid,
        passkey_id: Uuid,
        name: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        Ok(self
            .passkeys
            .find_one_and_update(
                doc! { "_id": id(passkey_id), "user_id": id(user_id) },
                doc! { "$set": { "name": name } },
            )
            .return_document(ReturnDocument::After)
            .hint(by_id())
            .await
            .map_err(classify)?
            .map(passkey_of))
    }

    async fn delete_passkey(
        &self,
        user_id: Uuid,
        passkey_id: Uuid,
        keep_session: Uuid,
    ) -> StoreResult<FactorRemoval> {
        self.detached(move |store| async move {
            let deleted = store
                .passkeys
                .delete_one(doc! { "_id": id(passkey_id), "user_id": id(user_id) })
                .hint(by_id())
                .await
                .map_err(classify)?;
            if deleted.deleted_count == 0 {
                return Ok(FactorRemoval::NotFound);
            }
            store.finish_removal(user_id, keep_session).await
        })
        .await
    }

    async fn use_passkey(
        &self,
        passkey_id: Uuid,
        seen_counter: i64,
        counter: i64,
        credential: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let used = self
            .passkeys
            .update_one(
                doc! { "_id": id(passkey_id), "counter": seen_counter },
                doc! { "$set": {
                    "counter": counter,
                    "credential": credential,
                    "last_used_at": date(at),
                } },
            )
            .hint(by_id())
            .await
            .map_err(classify)?;
        Ok(used.matched_count == 1)
    }

    async fn reset_second_factors(&self, user_id: Uuid) -> StoreResult<Option<Vec<Uuid>>> {
        self.detached(move |store| async move {
            // The factors go first: a login that proves one after this point finds it gone;
            // one that proved it before made its session under the old version, which the
            // move below ends.
            store
                .delete_second_factors(user_id)
                .await
                .map_err(classify)?;
            store.move_credentials_on(user_id, None).await
        })
        .await
    }

    async fn put_challenge(&self, challenge: Challenge) -> StoreResult<()> {
        self.challenges
            .insert_one(ChallengeDocument {
                id: id(challenge.id),
                digest: challenge.digest,
                kind: challenge.kind.as_str().to_owned(),
                user_id: challenge.user_id.map(id),
                session_id: challenge.session_id.map(id),
                credential_version: challenge.credential_version,
                methods: challenge.methods.to_text(),
                state: challenge.state,
                attempts: challenge.attempts,
                created_at: date(challenge.created_at),
                expires_at: date(challenge.expires_at),
            })
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn take_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        self.challenges
            .find_one_and_delete(doc! {
                "digest": digest,
                "kind": kind.as_str(),
                "expires_at": { "$gt": date(now) },
            })
            .hint(by_digest())
            .await
            .map_err(classify)?
            .map(challenge_of)
            .transpose()
    }

    async fn attempt_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        self.challenges
            .find_one_and_update(
                doc! {
                    "digest": digest,
                    "kind": kind.as_str(),
                    "expires_at": { "$gt": date(now) },
                    "attempts": { "$lt": max_attempts },
                },
                doc! { "$inc": { "attempts": 1 } },
            )
            .return_document(ReturnDocument::After)
            .hint(by_digest())
            .await
            .map_err(classify)?
            .map(challenge_of)
            .transpose()
    }

    async fn challenge_expired(&self, digest: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        Ok(self
            .challenges
            .find_one(doc! { "digest": digest })
            .await
            .map_err(classify)?
            .is_some_and(|challenge| challenge.expires_at <= date(now)))
    }

    async fn prune_challenges(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        Ok(self
            .challenges
            .delete_many(doc! { "expires_at": { "$lt": date(before) } })
            .await
            .map_err(classify)?
            .deleted_count)
    }
}
