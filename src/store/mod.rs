//! Every read and write goes through a capability trait: [`UserStore`], [`SessionStore`],
//! [`SettingStore`], [`RateLimitStore`], [`EventStore`], [`HealthStore`],
//! [`SecondFactorStore`]; a backend implements
//! each once and is a [`Store`]. The service never sees a database driver: [`SeaStore`] is the
//! backend on SQLite and PostgreSQL, [`MongoStore`] the one on MongoDB, chosen by the scheme of
//! `DATABASE_URL`; it works with a [`Storage`], where the session cache wraps users and sessions
//! on SQLite and nothing else, and the webhook queue ([`WebhookQueue`], when `WEBHOOK_URLS` is
//! set) wraps what creates and ends users and sessions, on every backend.

mod cached;
pub mod entity;
mod lookups;
pub mod mongo;
mod sea;
mod webhooks;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use cached::{CachedInner, CachedStore, DatabaseLock, SESSION_CACHE_CAPACITY, beside};
pub use webhooks::{EVENT_TYPES, WebhookEvent, WebhookQueue, WebhookTargets, event_label};

#[cfg(test)]
mod least_recently_used_tests {
    use super::*;

    #[test]
    fn the_sessions_used_longest_ago_go_first() {
        let at = |seconds| DateTime::from_timestamp(seconds, 0).unwrap();
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let sessions = vec![
            (ids[0], at(100), None),         // created at 100
            (ids[1], at(10), Some(at(200))), // old, refreshed at 200
            (ids[2], at(50), None),          // created at 50
            (ids[3], at(300), None),         // the newest
        ];
        assert_eq!(
            least_recently_used(sessions.clone(), 2),
            vec![ids[0], ids[2]]
        );
        assert_eq!(least_recently_used(sessions.clone(), 4), Vec::<Uuid>::new());
        assert_eq!(least_recently_used(sessions, 0).len(), 4);
    }
}
pub use mongo::MongoStore;
pub use sea::{LOOKUP_PLAN_SETTINGS, SeaStore};

/// How the pool of database connections behaves.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// By default one per core on SQLite, 10 on PostgreSQL and MongoDB.
    pub max_connections: Option<u32>,
    /// How long opening a new connection may take.
    pub connect_timeout: Duration,
    /// How long a request waits for a free connection (MongoDB: for a usable server) before it
    /// is answered SERVICE_UNAVAILABLE: this bounds how fast clients learn that the database
    /// is gone.
    pub acquire_timeout: Duration,
    /// SQLite: how long a write waits for another writer (another process holding the file's
    /// write lock) before it is answered SERVICE_UNAVAILABLE.
    pub busy_timeout: Duration,
}

/// The store `database_url` names, by its scheme (`mongodb://` or `mongodb+srv://`: MongoDB;
/// else SQLite or PostgreSQL), without migrating it or caching anything: what a second
/// process (the admin CLI, a test) needs beside the server.
pub async fn connect(database_url: &str, pool: PoolSettings) -> StoreResult<Storage> {
    if MongoStore::handles(database_url) {
        return Ok(Storage::of(Arc::new(
            MongoStore::connect(database_url, pool).await?,
        )));
    }
    Ok(Storage::of(Arc::new(
        SeaStore::connect(database_url, pool).await?,
    )))
}

/// A user as the rest of authql sees one: no password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub created_at: DateTime<Utc>,
    /// When an operator disabled the account; `None` while it is enabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Moves on (by one) whenever what proves the account changes: its password is changed,
    /// it is disabled. A session records the version it was made under and is accepted only
    /// while the two are equal (see [`Session::credential_version`]), so that a login or
    /// refresh that straddles a password change cannot outlive it (kanidm's credential ids).
    pub credential_version: i64,
    /// When the address was proven (a link in a mail to it was followed, or an operator said
    /// so); `None` until then.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// The account's roles (`authql admin grant-role`), sorted, each once: the access token's
    /// `roles` claim, `/auth/verify`'s `X-Auth-Roles`, introspection's `roles`.
    pub roles: Vec<String>,
}

/// Roles as the SQL backends store them: sorted, joined by commas (a role holds none).
pub(crate) fn joined_roles(roles: &[String]) -> String {
    roles.join(",")
}

/// Roles as stored by [`joined_roles`]; the empty text is no roles.
pub(crate) fn split_roles(stored: &str) -> Vec<String> {
    if stored.is_empty() {
        Vec::new()
    } else {
        stored.split(',').map(str::to_owned).collect()
    }
}

/// Most roles one account holds.
pub const MAX_ROLES: usize = 32;

/// What a role grant or revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleChange {
    /// No such user.
    UnknownUser,
    /// The user would hold more than [`MAX_ROLES`] roles: nothing changed.
    TooManyRoles,
    /// The user's roles now (unchanged when the role was already granted or not held).
    Roles(Vec<String>),
}

/// `roles` with `role` added (`grant`) or removed, sorted, each once; `None` when that would
/// be more than [`MAX_ROLES`].
pub(crate) fn change_roles(roles: &[String], role: &str, grant: bool) -> Option<Vec<String>> {
    let mut roles: Vec<String> = roles.iter().filter(|held| *held != role).cloned().collect();
    if grant {
        roles.push(role.to_owned());
    }
    roles.sort();
    (roles.len() <= MAX_ROLES).then_some(roles)
}

/// Broadcast event payloads as they arrive ([`Store::listen_events`]).
pub type EventStream = futures_util::stream::BoxStream<'static, String>;

/// The connection pool right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections handed out to queries.
    pub in_use: u64,
    /// Open connections waiting for a query.
    pub idle: u64,
}

/// A user together with the hash to check a password against; only login and
/// password changes ask for it.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: String,
}

/// One login: its row holds the jtis of the only access and refresh token it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub access_jti: Uuid,
    pub refresh_jti: Uuid,
    /// The refresh jti the last rotation replaced.
    pub previous_refresh_jti: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// Absolute end, fixed at login.
    pub expires_at: DateTime<Utc>,
    /// End if not refreshed before; moves forward with every refresh.
    pub idle_expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    /// The user's credential version when the session was made: a session whose version is
    /// not its user's current one is dead, wherever it is looked up.
    pub credential_version: i64,
    /// When the user last proved who they are in this session: at login, and at each
    /// `reauthenticate`; a refresh never moves it (OIDC Core § 2 `auth_time`).
    pub authenticated_at: DateTime<Utc>,
    /// How: RFC 8176 `amr` values, comma-separated, e.g. `pwd,otp,mfa` ([`AuthMethods`]).
    pub authentication_methods: AuthMethods,
}

/// A set of RFC 8176 § 2 authentication method reference values (`pwd`, `otp`, `hwk`, `swk`,
/// `user`, `mfa`, `fed`): what a session stores (as comma-separated text, [`AuthMethods::to_text`])
/// and what the `amr` claim lists, in a fixed order. A bit set: reading a session row costs no
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthMethods(u8);

impl AuthMethods {
    /// The order values are kept and shown in; each one's bit is its position.
    const ORDER: [&'static str; 7] = ["pwd", "otp", "hwk", "swk", "user", "mfa", "fed"];
    /// Something known, or proven elsewhere (`fed`: an OpenID Provider's sign-in).
    const FIRST: u8 = 1 | 1 << 6;
    const HELD: u8 = 0b1110; // otp, hwk, swk
    const KEYS: u8 = 0b1100; // hwk, swk
    const USER: u8 = 1 << 4;
    const MFA: u8 = 1 << 5;

    /// The set stored as `text` (unknown values are dropped).
    pub fn parse(text: &str) -> Self {
        Self::of(text.split(','))
    }

    /// The set of `values`; `mfa` is added when they hold more than one kind of factor
    /// (something known: `pwd`; something held: `otp`, `hwk`, `swk`) or a key proven with user
    /// verification (`hwk`/`swk` with `user`: WebAuthn's multi-factor passkey).
    pub fn of<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let bits = values.into_iter().fold(0u8, |bits, value| {
            match Self::ORDER.iter().position(|known| *known == value.trim()) {
                Some(at) => bits | 1 << at,
                None => bits,
            }
        });
        Self::with_mfa(bits)
    }

    fn with_mfa(bits: u8) -> Self {
        let knows_and_holds = bits & Self::FIRST != 0 && bits & Self::HELD != 0;
        let verified_key = bits & Self::KEYS != 0 && bits & Self::USER != 0;
        if knows_and_holds || verified_key {
            Self(bits | Self::MFA)
        } else {
            Self(bits)
        }
    }

    /// These and `other`'s together.
    pub fn union(&self, other: &Self) -> Self {
        Self::with_mfa(self.0 | other.0)
    }

    /// The values, in their fixed order.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::ORDER
            .iter()
            .enumerate()
            .filter(|(at, _)| self.0 & 1 << at != 0)
            .map(|(_, value)| *value)
    }

    /// The values comma-separated, as stored: `pwd,otp,mfa`.
    pub fn to_text(&self) -> String {
        self.iter().collect::<Vec<_>>().join(",")
    }
}

/// A new user's credential version.
pub const FIRST_CREDENTIAL_VERSION: i64 = 0;

/// Most sessions one bulk statement deletes: bulk revocations (a user with hundreds of
/// thousands of sessions) go in batches of this many, so that no statement, no `$in` list and
/// no lock grows with the number of sessions.
pub const DELETE_BATCH: usize = 1000;

/// Where a page of a user's sessions begins: after the session with this creation time and id
/// (the list is ordered newest first, then by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A bounded slice of a user's sessions: at most `first`, after `after` when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPage {
    pub first: u64,
    pub after: Option<SessionCursor>,
}

/// A session that was created, and the sessions of its user it pushed out (beyond
/// `MAX_SESSIONS_PER_USER`, least recently used first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSession {
    pub session: Session,
    pub evicted: Vec<Uuid>,
}

/// Of a user's sessions `(id, created_at, last_refreshed_at)`, the ids of those beyond the
/// `keep` most recently used (refreshed, or else created), least recently used last: the ones a
/// new login pushes out.
pub fn least_recently_used(
    mut sessions: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)>,
    keep: usize,
) -> Vec<Uuid> {
    sessions.sort_by(|a, b| {
        let used = |(id, created, refreshed): &(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)| {
            (refreshed.unwrap_or(*created), *id)
        };
        used(b).cmp(&used(a))
    });
    sessions.into_iter().skip(keep).map(|(id, ..)| id).collect()
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub email: String,
    pub email_normalized: String,
    pub username: String,
    pub username_normalized: String,
    /// [`NO_PASSWORD`] for an account made by an OpenID Connect sign-in.
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    /// Set when the address is proven already (an OpenID Provider said `email_verified`).
    pub email_verified_at: Option<DateTime<Utc>>,
    /// The OpenID Connect identity the account is made for, stored with it.
    pub identity: Option<Identity>,
}

/// The stored password hash of an account that has no password (one an OpenID Connect sign-in
/// made, until its user sets one through the password-reset flow). No password matches it: the
/// hasher checks a dummy hash instead, at the same cost (`auth::password`).
pub const NO_PASSWORD: &str = "";

impl UserCredentials {
    /// Whether the account has a password at all.
    pub fn has_password(&self) -> bool {
        self.password_hash != NO_PASSWORD
    }
}

/// An OpenID Connect identity linked to an account: the provider's `iss` and `sub` (OIDC Core
/// § 2: together, a stable identifier of the End-User, unique across all accounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The `OIDC_PROVIDERS` name it was linked through; an account has one identity per name.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    /// The address the provider gave when it was linked; shown, never used to log in.
    pub email: Option<String>,
    pub linked_at: DateTime<Utc>,
}

/// What linking an identity to an account did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linking {
    /// Stored.
    Linked(Identity),
    /// The identity belongs to an account already (this one or another).
    IdentityTaken,
    /// The account has an identity of this provider already.
    ProviderTaken,
    /// There is no such account.
    UnknownUser,
}

/// What unlinking an identity did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlinking {
    /// As removing a passkey: `NotFound` (no identity of this provider), `SessionEnded`, or
    /// `Removed` with the other sessions that ended.
    Unlinked(FactorRemoval),
    /// It is the account's only way in (no password and no other identity): kept.
    LastLoginMethod,
}

/// A session's row before it is stored; `last_refreshed_at` starts empty.
pub type NewSession = Session;

/// What a one-time token is for. A token of one purpose is nothing to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// `resetPassword`.
    PasswordReset,
    /// `verifyEmail` of the account's current address.
    EmailVerification,
    /// `verifyEmail` of a new address (`requestEmailChange`).
    EmailChange,
}

impl TokenPurpose {
    /// The name stored with the token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::EmailVerification => "email_verification",
            Self::EmailChange => "email_change",
        }
    }

    /// The purpose of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::PasswordReset,
            Self::EmailVerification,
            Self::EmailChange,
        ]
        .into_iter()
        .find(|purpose| purpose.as_str() == name)
    }
}

/// A one-time token to store: its SHA-256 digest (64 lower-case hex digits), never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub id: Uuid,
    pub user_id: Uuid,
    pub purpose: TokenPurpose,
    pub digest: String,
    /// The address the token is sent to, as shown and as its key (`authql_identity`).
    pub email: String,
    pub email_normalized: String,
    /// The user's [`User::credential_version`] when the token was issued: the token is applied
    /// only while the two are equal ([`token_holds`]).
    pub credential_version: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A mail for the outbox: the whole RFC 5322 message, and its SMTP envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    pub id: Uuid,
    /// What it is (`password_reset`, `email_verification`, ...): the metrics' label.
    pub kind: String,
    pub envelope_from: String,
    pub envelope_to: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
    /// Tried until then (its link's token expires then too), then given up.
    pub expires_at: DateTime<Utc>,
}

/// A token and the mails that carry it, stored together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: NewToken,
    pub mails: Vec<NewMail>,
}

/// Whether a token can be taken, from what is stored of it: `None` when there is no token of
/// the purposes asked for (`Unknown`), else whether it was used and whether it expired.
pub(crate) fn token_state(found: Option<(bool, bool)>) -> Result<(), TokenRefusal> {
    match found {
        None => Err(TokenRefusal::Unknown),
        Some((true, _)) => Err(TokenRefusal::Used),
        Some((false, true)) => Err(TokenRefusal::Expired),
        Some((false, false)) => Ok(()),
    }
}

/// Whether a token that was taken may still act for its user: it was issued under the user's
/// current credential version (a password change, a reset or a disable since ends every
/// outstanding link: OWASP Forgot Password Cheat Sheet, "invalidate ... tokens"), and, unless it
/// carries a new address (`EmailChange`), it was sent to the address the account has now (an
/// address change ends the links sent to the old one). The one rule both backends apply.
pub(crate) fn token_holds(purpose: TokenPurpose, token: (i64, &str), user: (i64, &str)) -> bool {
    let ((token_version, token_email), (user_version, user_email)) = (token, user);
    token_version == user_version
        && (purpose == TokenPurpose::EmailChange || token_email == user_email)
}

/// How an outbox row is delivered (its `channel`): mail and webhooks share one outbox, its
/// claims, leases, retries and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxChannel {
    /// Through SMTP (or `MAIL_DIR`); every row stored before webhooks existed.
    Mail,
    /// An HTTP POST to one webhook endpoint.
    Webhook,
}

impl OutboxChannel {
    /// The name stored in the row.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mail => "mail",
            Self::Webhook => "webhook",
        }
    }
}

/// One webhook event for one endpoint, to queue (Standard Webhooks). Each endpoint gets a row of
/// its own, so that the outbox's lease delivers it there once across instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// The row's id, one per endpoint.
    pub id: Uuid,
    /// The event's id, the `webhook-id` header: the same for every endpoint and every attempt,
    /// so that a receiver can drop a redelivery.
    pub event_id: String,
    /// `user.created`, ...: the metrics' label.
    pub event_type: String,
    /// An absolute http(s) URL (`WEBHOOK_URLS`).
    pub endpoint: String,
    /// The JSON body, exactly as it is signed and sent.
    pub payload: String,
    pub created_at: DateTime<Utc>,
    /// Tried until then, then given up.
    pub expires_at: DateTime<Utc>,
}

impl NewWebhook {
    /// The row as the outbox stores it: the mail columns, read as the migration
    /// `m20261202_000011` says (kind: type, envelope_from: event id, envelope_to: endpoint,
    /// message: payload).
    pub(crate) fn into_row(self) -> NewMail {
        NewMail {
            id: self.id,
            kind: self.event_type,
            envelope_from: self.event_id,
            envelope_to: self.endpoint,
            message: self.payload,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// A webhook delivery the sender claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxWebhook {
    pub id: Uuid,
    pub event_id: String,
    pub event_type: String,
    pub endpoint: String,
    pub payload: String,
    /// Attempts before this one.
    pub attempts: u32,
    pub expires_at: DateTime<Utc>,
}

/// A claimed outbox row, by its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxMessage {
    Mail(OutboxMail),
    Webhook(OutboxWebhook),
}

impl OutboxMessage {
    /// The message a stored row is: a `webhook` row as [`NewWebhook::into_row`] wrote it,
    /// anything else (`mail`, rows from before the channel existed) a mail.
    pub(crate) fn from_row(channel: &str, mail: OutboxMail) -> Self {
        if channel == OutboxChannel::Webhook.as_str() {
            Self::Webhook(OutboxWebhook {
                id: mail.id,
                event_id: mail.envelope_from,
                event_type: mail.kind,
                endpoint: mail.envelope_to,
                payload: mail.message,
                attempts: mail.attempts,
                expires_at: mail.expires_at,
            })
        } else {
            Self::Mail(mail)
        }
    }

    /// The row's id.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Mail(mail) => mail.id,
            Self::Webhook(webhook) => webhook.id,
        }
    }
}

/// What `verify_email` did: the user as it is now, and the address it had before when the token
/// changed it (an email change; `None` for a verification of the current address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEmail {
    pub user: User,
    pub previous_email: Option<String>,
}

/// A mail the sender claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMail {
    pub id: Uuid,
    pub kind: String,
    pub envelope_from: String,
    pub envelope_to: String,
    pub message: String,
    /// Attempts before this one.
    pub attempts: u32,
    pub expires_at: DateTime<Utc>,
}

/// Why a one-time token was not taken (`INVALID_TOKEN`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Past its time.
    Expired,
    /// Taken already, or made useless (a newer token of its purpose, a password change or
    /// reset, the account disabled, an address that is no longer the account's).
    Used,
    /// Not a token authql issued for this purpose.
    Unknown,
}

impl TokenRefusal {
    /// `INVALID_TOKEN`'s `extensions.reason`.
    pub fn as_code(self) -> &'static str {
        match self {
            Self::Expired => "EXPIRED",
            Self::Used => "USED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl Session {
    /// Neither past its absolute expiry nor idle for too long.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at > now && self.idle_expires_at > now
    }

    /// Whether the session was made under its user's current credentials.
    pub fn is_current_for(&self, user: &User) -> bool {
        self.user_id == user.id && self.credential_version == user.credential_version
    }
}

/// Replace the session's token pair, but only if it is live and still holds
/// `presented_refresh_jti`.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub session_id: Uuid,
    pub presented_refresh_jti: Uuid,
    pub new_access_jti: Uuid,
    pub new_refresh_jti: Uuid,
    pub at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the email is already registered")]
    EmailTaken,
    #[error("the username is already taken")]
    UsernameTaken,
    /// A new account's OpenID Connect identity belongs to another account already.
    #[error("the identity is linked to another account")]
    IdentityTaken,
    /// The database cannot be reached (down, restarting, pool exhausted): worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(DriverError),
    #[error("database error: {0}")]
    Database(DriverError),
}

/// The driver's own error (SeaORM's, MongoDB's), kept for the server's log only.
pub type DriverError = Box<dyn std::error::Error + Send + Sync>;

impl From<sea_orm::DbErr> for StoreError {
    /// Connection failures and the SQLSTATEs / SQLite codes of [`database_is_away`] are
    /// `Unavailable`; the rest is `Database`.
    fn from(error: sea_orm::DbErr) -> Self {
        use sea_orm::{DbErr, RuntimeErr, sqlx};
        let unreachable = match &error {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
            DbErr::Exec(RuntimeErr::SqlxError(cause))
            | DbErr::Query(RuntimeErr::SqlxError(cause)) => {
                matches!(
                    cause.as_ref(),
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Tls(_)
                ) || matches!(cause.as_ref(), sqlx::Error::Database(error)
                        if error.code().is_some_and(|code| database_is_away(&code)))
            }
            _ => false,
        };
        if unreachable {
            Self::Unavailable(error.into())
        } else {
            Self::Database(error.into())
        }
    }
}

/// What every store method returns: the value, or a [`StoreError`] sorted for the client.
pub type StoreResult<T> = Result<T, StoreError>;

/// Whether a PostgreSQL SQLSTATE says the server cannot serve right now, rather than that the
/// statement was wrong: worth a retry, so SERVICE_UNAVAILABLE, not INTERNAL_SERVER_ERROR.
/// A restart, failover or `pg_terminate_backend` ends every open connection with 57P01, which
/// sqlx reports as a database error, not an I/O one (tests/api/faults.rs shows it).
/// Class 08: connection exceptions; 57P01-57P03: shutting down, crashed, starting up;
/// class 53: out of resources (disk full, too many connections); 25006: a read-only server (a
/// standby after a failover); 40001 and 40P01: a serialization failure or deadlock, which
/// PostgreSQL asks the client to retry (§ 13.4); 57014: a statement cancelled (its
/// `statement_timeout`, an operator's `pg_cancel_backend`).
///
/// SQLite reports its (extended) result code instead, as a number; its primary code is the low
/// byte (sqlite.org/rescode.html): 5 BUSY and 6 LOCKED (another process holds the write lock
/// past the busy timeout), 8 READONLY, 10 IOERR, 13 FULL, 14 CANTOPEN, 15 PROTOCOL.
fn database_is_away(code: &str) -> bool {
    // A SQLSTATE has exactly five characters; SQLite's codes have at most four digits.
    if code.len() < 5
        && let Ok(sqlite_code) = code.parse::<u32>()
    {
        return matches!(sqlite_code & 0xff, 5 | 6 | 8 | 10 | 13 | 14 | 15);
    }
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "25006" | "40001" | "40P01" | "57014"
        )
}

/// One step of the GCRA (ITU-T I.371) in the integer microseconds the buckets store: a token
/// may be taken while `max(tat, now) + interval <= now + capacity`.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    now: i64,
    interval: i64,
    capacity: i64,
}

impl Gcra {
    fn new(now: DateTime<Utc>, emission_interval: Duration, burst: u32) -> Self {
        let interval = i64::try_from(emission_interval.as_micros()).unwrap_or(i64::MAX);
        Self {
            now: now.timestamp_micros(),
            interval,
            capacity: interval.saturating_mul(i64::from(burst)),
        }
    }

    /// How long until a refused bucket whose theoretical arrival time is `tat` has a token
    /// again: at least one microsecond.
    fn wait(&self, tat: i64) -> Duration {
        let wait = tat
            .saturating_add(self.interval)
            .saturating_sub(self.now)
            .saturating_sub(self.capacity)
            .max(1);
        Duration::from_micros(wait.unsigned_abs())
    }
}

/// Accounts: registration, the credentials a login checks, and what changes how an account is
/// proven (password, disable, deletion), each with what it does to the account's sessions.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Creates the user, its first session when given, and the token and mails of its address's
    /// verification when given, in one transaction: all or nothing.
    async fn register_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        verification: Option<IssuedToken>,
    ) -> StoreResult<(User, Option<Session>)>;

    /// Creates the user and its first session in one transaction: both or neither.
    async fn create_user_with_session(
        &self,
        user: NewUser,
        session: NewSession,
    ) -> StoreResult<(User, Session)> {
        match self.register_user(user, Some(session), None).await? {
            (user, Some(session)) => Ok((user, session)),
            (_, None) => Err(StoreError::Database(
                "registration stored no session".into(),
            )),
        }
    }

    /// Takes the password-reset token whose digest is `digest` (unused, unexpired at `now`)
    /// and, if it still holds ([`token_holds`]; else it stays taken and the answer is `Used`),
    /// in the same transaction: stores `password_hash`, moves the credential version on (which
    /// ends every other link of the user), ends every session of the user and marks the address
    /// verified. Of concurrent callers with one token, exactly one gets `Ok(Ok(..))`: the user
    /// and the ids of the sessions ended.
    async fn reset_password(
        &self,
        digest: &str,
        now: DateTime<Utc>,
        password_hash: String,
    ) -> StoreResult<Result<(User, Vec<Uuid>), TokenRefusal>>;

    /// Takes the email-verification or email-change token whose digest is `digest`, and if it
    /// still holds ([`token_holds`]; else it stays taken and the answer is `Used`), in one
    /// transaction: a verification marks the address verified; a change makes the token's
    /// address the account's email, verified (its username too, when the username was the
    /// email), which ends the links sent to the old one. Errors: `EmailTaken` (the new address
    /// was taken meanwhile; the token is given back).
    async fn verify_email(
        &self,
        digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<VerifiedEmail, TokenRefusal>>;

    /// Marks the user's address verified as of `at` (an operator's `verify-email`); `None`
    /// when there is no such user.
    async fn mark_email_verified(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<User>>;

    /// Looks up by a login key (`authql_identity::login_key`): an email's when it holds an
    /// `@`, matched against emails only; else a username's, matched against usernames only.
    async fn find_credentials(
        &self,
        login_normalized: &str,
    ) -> StoreResult<Option<UserCredentials>>;

    async fn find_credentials_by_id(&self, user_id: Uuid) -> StoreResult<Option<UserCredentials>>;

    /// Disables the user as of `disabled_at`, moves its credential version on and ends all its
    /// sessions, in one transaction, or enables it again (`None`). Returns the ids of the
    /// sessions ended; `None` when there is no such user.
    async fn set_user_disabled(
        &self,
        user_id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Vec<Uuid>>>;

    /// Deletes the user and every session of it, in one transaction, if its credential version
    /// is still `proven_version` when that is given (the version under which the caller proved
    /// the password: a reset, password change or disable since wins). Returns the ids of the
    /// sessions ended; `None` when there is no such user or its version moved.
    async fn delete_user(
        &self,
        user_id: Uuid,
        proven_version: Option<i64>,
    ) -> StoreResult<Option<Vec<Uuid>>>;

    /// Sets the password hash and moves the credential version on (`keep_session` moves with
    /// it, every link of the user ends), if the version is still `proven_version` (the one
    /// under which the caller proved the current password: a reset, another change or a disable
    /// that landed meanwhile wins, never overwritten); ends every other session of the user.
    /// Returns the ids of the sessions ended; `None` when there is no such user or its version
    /// moved.
    /// Grants (`grant`) or revokes `role` (a name [`crate::service::input::role`] accepted):
    /// one atomic change of the user's roles, so that concurrent grants all stay. Sessions are
    /// untouched: tokens issued from now on carry the new roles, and every lookup of a session
    /// (`/auth/verify`, introspection, `me`) reads them at once.
    async fn change_user_role(
        &self,
        user_id: Uuid,
        role: &str,
        grant: bool,
    ) -> StoreResult<RoleChange>;

    async fn change_password(
        &self,
        user_id: Uuid,
        proven_version: i64,
        password_hash: String,
        keep_session: Uuid,
    ) -> StoreResult<Option<Vec<Uuid>>>;

    /// Replaces the user's password hash with another of the same password (a newer form or
    /// cost), if it is still `current`: the credential version does not move. `false` when
    /// the hash changed meanwhile.
    async fn replace_password_hash(
        &self,
        user_id: Uuid,
        current: &str,
        new: String,
    ) -> StoreResult<bool>;
}

/// Sessions: created by logins, looked up by every authenticated request, rotated by refresh,
/// listed, ended and pruned.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a login's session, in one statement with the check that its user still exists,
    /// is enabled and is at `session.credential_version` (a password changed or the account
    /// disabled while the login checked its password: `None`, nothing stored). Then, in the
    /// same transaction, ends the user's sessions beyond the `max_sessions` most recently used.
    async fn create_session(
        &self,
        session: NewSession,
        max_sessions: usize,
    ) -> StoreResult<Option<CreatedSession>>;

    /// The session and its user, if the session is live, still holds this access jti and was
    /// made under the user's current credentials: the check behind every authenticated
    /// request, one indexed query.
    async fn find_session_by_access_jti(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Session)>>;

    /// The session and its user, live or not.
    async fn find_session(&self, session_id: Uuid) -> StoreResult<Option<(User, Session)>>;

    /// Applies the rotation atomically (a conditional update that also requires the session's
    /// credential version to be its enabled user's): of several concurrent rotations presenting
    /// the same refresh jti exactly one gets `Some`.
    async fn rotate_session(&self, rotation: Rotation) -> StoreResult<Option<(User, Session)>>;

    /// Records a new proof in the session: `authenticated_at` becomes `at` and its methods
    /// `methods`, if it is live at `at`, still holds `access_jti` and was made under its user's
    /// current credentials. Returns the session as stored now; `None` when it is not.
    async fn reauthenticate_session(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        at: DateTime<Utc>,
        methods: AuthMethods,
    ) -> StoreResult<Option<Session>>;

    /// A page of the user's live sessions made under `credential_version`, newest first (by
    /// creation, then id).
    async fn list_live_sessions(
        &self,
        user_id: Uuid,
        credential_version: i64,
        now: DateTime<Utc>,
        page: SessionPage,
    ) -> StoreResult<Vec<Session>>;

    /// Deletes those of `session_ids` that belong to `user_id`; returns the ids deleted.
    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        session_ids: &[Uuid],
    ) -> StoreResult<Vec<Uuid>>;

    /// Deletes every session of the user but `keep` (all of them without), in batches of
    /// [`DELETE_BATCH`]; returns the ids deleted.
    async fn delete_other_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>>;

    /// How many sessions are live at `now`, for the live-sessions gauge.
    async fn count_live_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Deletes, in batches of at most `batch`, sessions that ended (expired or idle) before
    /// `ended_before`; returns how many. Safe to run on every instance at once.
    async fn prune_sessions(&self, ended_before: DateTime<Utc>, batch: u64) -> StoreResult<u64>;
}

/// One-time tokens (their digests) and the mails that carry them.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores the token, makes the user's earlier unused tokens of the same purpose useless, and
    /// queues its mails, in one transaction: a mail is never without its token, nor a token
    /// without its mail.
    async fn issue_token(&self, issued: IssuedToken) -> StoreResult<()>;

    /// Whether the token whose digest is `digest` could be taken now for one of `purposes`,
    /// without taking it: a cheap look before costly work (hashing a new password).
    async fn check_token(
        &self,
        digest: &str,
        purposes: &[TokenPurpose],
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), TokenRefusal>>;

    /// Deletes tokens that expired before `before`; returns how many.
    async fn prune_tokens(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}

/// Mails and webhook deliveries waiting to be sent, shared by every instance on the database
/// (one outbox: [`OutboxChannel`]).
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Queues mails that carry no token (notices).
    async fn queue_mails(&self, mails: Vec<NewMail>) -> StoreResult<()>;

    /// Queues webhook deliveries (one row per event and endpoint), due at once, in one write.
    async fn queue_webhooks(&self, webhooks: Vec<NewWebhook>) -> StoreResult<()>;

    /// Claims at most `limit` messages due at `now` (their next attempt has come and no live
    /// lease holds them), each leased until `now + lease`: of several instances claiming at
    /// once, one gets each. Returns the claimed ones, expired ones included (the sender gives
    /// those up).
    async fn claim_messages(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u64,
    ) -> StoreResult<Vec<OutboxMessage>>;

    /// Delivered, or given up: gone from the outbox (a mail holds a link until then).
    async fn remove_message(&self, id: Uuid) -> StoreResult<()>;

    /// Not delivered this time: tried again at `retry_at`, one attempt more.
    async fn retry_message(&self, id: Uuid, retry_at: DateTime<Utc>) -> StoreResult<()>;

    /// How many messages (mails and webhook deliveries) wait.
    async fn outbox_depth(&self) -> StoreResult<u64>;
}

/// Server-wide settings every instance on the database shares (the generated signing secret).
#[async_trait]
pub trait SettingStore: Send + Sync + 'static {
    /// The stored value of a server-wide setting; stores `candidate` first if there is none.
    /// Safe against concurrent callers: all of them get the value that won.
    async fn setting_or_insert(&self, name: &str, candidate: String) -> StoreResult<String>;
}

/// Rate-limit buckets shared by every instance on the database.
#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Takes one token from the rate-limit bucket `key`, shared by every process on the
    /// database, in one atomic statement: the GCRA (generic cell rate algorithm, ITU-T I.371) with
    /// one token every `emission_interval` and room for `burst` at once. `now` is the caller's
    /// clock. Returns `None` when the token was taken, else how long until one will be.
    async fn take_rate_limit_token(
        &self,
        key: &str,
        now: DateTime<Utc>,
        emission_interval: std::time::Duration,
        burst: u32,
    ) -> StoreResult<Option<std::time::Duration>>;

    /// Deletes the rate-limit buckets that have filled up again by `now`; returns how many.
    async fn prune_rate_limit_buckets(&self, now: DateTime<Utc>) -> StoreResult<u64>;
}

/// Session events carried to every instance on the database.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Sends `payload` to every process listening on this database ([`Store::listen_events`]),
    /// this one included. `false` when the database has no way to (SQLite, one process): the
    /// caller then hands it to the listeners in this process itself.
    async fn broadcast_events(&self, payload: &str) -> StoreResult<bool>;

    /// Every payload broadcast on this database from now on, as it comes, reconnecting by
    /// itself when the database comes back (what was sent meanwhile is lost); `None` when the
    /// database has no such channel.
    async fn listen_events(&self) -> StoreResult<Option<EventStream>>;
}

/// Whether the database takes writes, and its connection pool.
#[async_trait]
pub trait HealthStore: Send + Sync + 'static {
    /// The connection pool's state, where the driver tells it.
    fn pool_status(&self) -> Option<PoolStatus>;

    /// Whether the database answers.
    async fn ping(&self) -> StoreResult<()>;
}

/// A user's TOTP credential (RFC 6238).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpCredential {
    pub user_id: Uuid,
    /// Base32 (RFC 4648, no padding).
    pub secret: String,
    /// `None` while the enrollment waits for its first code (`confirmTotp`).
    pub confirmed_at: Option<DateTime<Utc>>,
    /// The time step of the last code accepted (-1 before any): a code of this step or an
    /// earlier one is refused (RFC 6238 § 5.2).
    pub last_step: i64,
    pub created_at: DateTime<Utc>,
}

/// A WebAuthn credential of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The credential id, base64url without padding.
    pub credential_id: String,
    pub name: String,
    /// webauthn-rs's `Passkey`, as JSON.
    pub credential: String,
    /// The signature counter last accepted (WebAuthn Level 3 § 6.1.1).
    pub counter: i64,
    /// A credential that may be synced between devices (the BE flag, § 6.1): `swk` rather
    /// than `hwk` in `amr`.
    pub backup_eligible: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What storing a passkey did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasskeyAddition {
    /// Stored; these other sessions of the user ended.
    Added(Vec<Uuid>),
    /// The session that registered it was ended meanwhile: nothing stored.
    SessionEnded,
    /// A passkey with this credential id is stored already (a concurrent registration of the
    /// same credential won): nothing stored.
    CredentialTaken,
}

/// What removing a second factor did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactorRemoval {
    /// The user had no such factor: nothing changed.
    NotFound,
    /// The session that asked was ended meanwhile: nothing changed (SQL), or the factor is gone
    /// with every session (MongoDB, no transaction).
    SessionEnded,
    /// Removed; these other sessions of the user ended.
    Removed(Vec<Uuid>),
}

/// What proves a user besides the password, in short: what a login must ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SecondFactors {
    pub totp: bool,
    pub recovery_codes_left: u64,
    pub passkeys: u64,
}

/// What an unfinished ceremony is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A password login waiting for its second factor (`mfaToken`).
    Mfa,
    /// `beginPasskeyRegistration` of a session.
    PasskeyRegistration,
    /// `beginPasskeyLogin`.
    PasskeyLogin,
    /// `beginOidcLogin`: found by its `state`; holds the PKCE verifier and the `nonce`.
    OidcAuthorization,
    /// An OpenID Connect sign-in the callback verified: found by the one-time `code` the app
    /// gets, for `completeOidcLogin`.
    OidcCompletion,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mfa => "mfa",
            Self::PasskeyRegistration => "passkey_registration",
            Self::PasskeyLogin => "passkey_login",
            Self::OidcAuthorization => "oidc_authorization",
            Self::OidcCompletion => "oidc_completion",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Mfa,
            Self::PasskeyRegistration,
            Self::PasskeyLogin,
            Self::OidcAuthorization,
            Self::OidcCompletion,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// The server-side half of an unfinished ceremony, found by the digest of what the client
/// holds, single use, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub id: Uuid,
    /// SHA-256 (hex) of the `mfaToken` or challenge id the client holds.
    pub digest: String,
    pub kind: ChallengeKind,
    /// The user it is for, when known.
    pub user_id: Option<Uuid>,
    /// The session it is for (registration, step-up).
    pub session_id: Option<Uuid>,
    /// The user's credential version when the first factor was proven (`Mfa`): the session
    /// it leads to is made under it, so a password change since wins.
    pub credential_version: Option<i64>,
    /// What was proven so far.
    pub methods: AuthMethods,
    /// webauthn-rs's ceremony state, as JSON; for a passkey login that completes an `Mfa`
    /// challenge, that challenge's digest is kept here too (see the service).
    pub state: Option<String>,
    /// Wrong codes so far.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Second factors (TOTP, recovery codes, passkeys) and the ceremonies that use them. Every
/// write that decides a proof is one conditional statement, so that of concurrent callers
/// exactly one wins: a TOTP step is taken once, a recovery code once, a passkey's counter moves
/// forward only, a challenge is taken once.
#[async_trait]
pub trait SecondFactorStore: Send + Sync + 'static {
    /// The user's TOTP credential, confirmed or pending.
    async fn totp(&self, user_id: Uuid) -> StoreResult<Option<TotpCredential>>;

    /// Stores a pending enrollment, replacing a pending one; `false` (nothing stored) when
    /// the user has TOTP on already.
    async fn begin_totp(&self, credential: TotpCredential) -> StoreResult<bool>;

    /// Turns the pending secret `secret` on with its first code's `step` and replaces the
    /// recovery codes by `recovery_digests`; then, in the same transaction, moves the user's
    /// credential version on (`keep_session` with it) and ends their other sessions, as a
    /// password change does. `None` when there is no such pending secret (replaced, or
    /// confirmed meanwhile); else the ids of the sessions ended.
    async fn confirm_totp(
        &self,
        user_id: Uuid,
        secret: &str,
        step: i64,
        recovery_digests: Vec<String>,
        keep_session: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<Uuid>>>;

    /// Removes TOTP and the recovery codes; then, in the same transaction, moves the user's
    /// credential version on (`keep_session` with it) and ends their other sessions: a login
    /// that proved a code before the removal and has not stored its session yet stores none.
    async fn disable_totp(&self, user_id: Uuid, keep_session: Uuid) -> StoreResult<FactorRemoval>;

    /// Takes the time step `step` for the user's confirmed TOTP: `true` only if it is later
    /// than every step taken before (RFC 6238 § 5.2).
    async fn take_totp_step(&self, user_id: Uuid, step: i64) -> StoreResult<bool>;

    /// Replaces every recovery code of a user who has TOTP on; `false` when TOTP is off.
    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        digests: Vec<String>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Whether the user has an unused recovery code with this digest (a look, nothing taken).
    async fn recovery_code_unused(&self, user_id: Uuid, digest: &str) -> StoreResult<bool>;

    /// Uses the unused recovery code with this digest: `true` once.
    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        digest: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// What the user has besides the password.
    async fn second_factors(&self, user_id: Uuid) -> StoreResult<SecondFactors>;

    /// Stores a passkey; then, in the same transaction, moves the user's credential version on
    /// (`keep_session` with it) and ends their other sessions.
    async fn add_passkey(
        &self,
        passkey: StoredPasskey,
        keep_session: Uuid,
    ) -> StoreResult<PasskeyAddition>;

    /// The user's passkeys, oldest first.
    async fn passkeys(&self, user_id: Uuid) -> StoreResult<Vec<StoredPasskey>>;

    /// The passkey with this credential id (base64url).
    async fn passkey_by_credential_id(
        &self,
        credential_id: &str,
    ) -> StoreResult<Option<StoredPasskey>>;

    /// Renames the user's passkey; `None` when they have no such passkey.
    async fn rename_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> StoreResult<Option<StoredPasskey>>;

    /// Deletes the user's passkey and, as `disable_totp` does, moves their credential version on
    /// and ends their other sessions (those made with the passkey among them).
    async fn delete_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        keep_session: Uuid,
    ) -> StoreResult<FactorRemoval>;

    /// Records a use of the passkey: its counter goes from `seen_counter` (what the caller
    /// verified against) to `counter` and its credential to `credential`, if the stored counter
    /// is still `seen_counter` (a concurrent use with the same counter, a clone, loses) and the
    /// passkey still exists. `true` when recorded.
    async fn use_passkey(
        &self,
        id: Uuid,
        seen_counter: i64,
        counter: i64,
        credential: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Removes every second factor of the user and their unfinished ceremonies, moves their
    /// credential version on and ends every session of theirs, in one transaction (an
    /// operator's `reset-mfa`). `None` when there is no such user; else the ids of the
    /// sessions ended.
    async fn reset_second_factors(&self, user_id: Uuid) -> StoreResult<Option<Vec<Uuid>>>;

    /// Stores a ceremony's state.
    async fn put_challenge(&self, challenge: Challenge) -> StoreResult<()>;

    /// Takes (deletes and returns) the challenge with this digest, of this kind, if it has not
    /// expired at `now`: of concurrent callers, one gets it.
    async fn take_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>>;

    /// Counts one attempt at the challenge, if it has not expired and has had fewer than
    /// `max_attempts`; returns it as it is now. `None` when it is gone, expired or used up.
    async fn attempt_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>>;

    /// Whether a challenge with this digest exists but has expired (for the refusal's reason).
    async fn challenge_expired(&self, digest: &str, now: DateTime<Utc>) -> StoreResult<bool>;

    /// Deletes challenges that expired before `before`; returns how many.
    async fn prune_challenges(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}

/// OpenID Connect identities: which account an identity (`iss` + `sub`) signs in to, and the
/// links an account has. An identity made with a new account is stored by
/// [`UserStore::register_user`] ([`NewUser::identity`]), in the same transaction.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// The identity with this issuer and subject, and its account with the account's password
    /// hash, as they were at one moment: the identity is read again after the account, so that
    /// an unlink that lands between the two reads is seen (a sign-in then finds no identity, or
    /// reads the credential version from before the unlink, which its session will not be
    /// accepted under).
    async fn find_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<(Identity, UserCredentials)>>;

    /// The account's identities, oldest link first.
    async fn identities(&self, user_id: Uuid) -> StoreResult<Vec<Identity>>;

    /// Links `identity` to its `user_id`'s account, unless the identity belongs to an account
    /// already or the account has one of the same provider. One statement decides, so that of
    /// concurrent links of one identity exactly one is stored.
    async fn link_identity(&self, identity: Identity) -> StoreResult<Linking>;

    /// Unlinks the account's identity of `provider` as of `at`, unless it is the account's last
    /// way in (no password, no other identity): decided under the account's lock, so that two
    /// concurrent unlinks cannot both leave the account with none. Records that the account's
    /// address unlinked the identity ([`IdentityStore::unlinked_before`]). Then, as removing a
    /// passkey does, moves the credential version on (`keep_session` with it) and ends the other
    /// sessions: a sign-in through the identity that is still in flight stores no session.
    async fn unlink_identity(
        &self,
        user_id: Uuid,
        provider: &str,
        keep_session: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Unlinking>;

    /// Whether an account with the address `email_normalized` ever unlinked the identity
    /// (`issuer`, `subject`): then the identity is never linked, or given an account, by that
    /// address again, whatever became of that account or of the identity's other links since.
    async fn unlinked_before(
        &self,
        email_normalized: &str,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<bool>;
}

/// A whole backend: every capability, each implemented once per backend (lldap's
/// `BackendHandler`, composed of its narrow handlers). Code that needs one capability takes that
/// trait; [`Storage`] hands each capability to the service separately, so that a decorator (the
/// session cache) wraps only what it changes.
pub trait Store:
    UserStore
    + SessionStore
    + TokenStore
    + OutboxStore
    + SettingStore
    + RateLimitStore
    + EventStore
    + HealthStore
    + SecondFactorStore
    + IdentityStore
{
}

impl<T> Store for T where
    T: UserStore
        + SessionStore
        + TokenStore
        + OutboxStore
        + SettingStore
        + RateLimitStore
        + EventStore
        + HealthStore
        + SecondFactorStore
        + IdentityStore
{
}

/// The capabilities the service works with, each from the backend or from what wraps it.
#[derive(Clone)]
pub struct Storage {
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub tokens: Arc<dyn TokenStore>,
    pub outbox: Arc<dyn OutboxStore>,
    pub settings: Arc<dyn SettingStore>,
    pub rate_limits: Arc<dyn RateLimitStore>,
    pub events: Arc<dyn EventStore>,
    pub health: Arc<dyn HealthStore>,
    pub second_factors: Arc<dyn SecondFactorStore>,
    pub identities: Arc<dyn IdentityStore>,
}

impl Storage {
    /// Every capability from one backend.
    pub fn of<B: Store>(backend: Arc<B>) -> Self {
        Self {
            users: backend.clone(),
            sessions: backend.clone(),
            tokens: backend.clone(),
            outbox: backend.clone(),
            settings: backend.clone(),
            rate_limits: backend.clone(),
            events: backend.clone(),
            second_factors: backend.clone(),
            identities: backend.clone(),
            health: backend,
        }
    }

    /// Every capability from `backend`, users and sessions through the session cache over it.
    pub fn cached<B: Store + Clone>(backend: B, capacity: std::num::NonZeroUsize) -> Self {
        let cache = Arc::new(CachedStore::new(backend.clone(), capacity));
        Self {
            users: cache.clone(),
            sessions: cache.clone(),
            second_factors: cache.clone(),
            identities: cache,
            ..Self::of(Arc::new(backend))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::database_is_away;

    #[test]
    fn sqlstates_that_mean_the_database_is_away() {
        // Admin shutdown, connection failure, too many connections.
        assert!(database_is_away("57P01"));
        assert!(database_is_away("08006"));
        assert!(database_is_away("53300"));
        // A unique violation or a syntax error is our problem, not the database's.
        assert!(!database_is_away("23505"));
        assert!(!database_is_away("42601"));
        // A read-only standby; a serialization failure, a deadlock, a cancelled statement.
        for code in ["25006", "40001", "40P01", "57014"] {
            assert!(database_is_away(code), "{code}");
        }
        // SQLite: busy, locked, read-only (and its extended 1032), I/O error on write, full.
        for code in ["5", "517", "6", "8", "1032", "778", "13"] {
            assert!(database_is_away(code), "{code}");
        }
        // SQLite: a constraint (unique) violation, a generic error, a misuse.
        for code in ["19", "2067", "1", "21"] {
            assert!(!database_is_away(code), "{code}");
        }
    }
}
