//! Webhook events, queued by a decorator over the writes that cause them: [`WebhookQueue`]
//! wraps the [`UserStore`], [`SessionStore`] and [`SecondFactorStore`] that a [`Storage`] hands
//! out (the backend's, or the session cache's over it), once for every backend.
//!
//! Each write that creates or ends a user or a session runs, with the queueing of its events
//! after it, on a task of its own: a request cancelled after the database committed (its
//! client gone) still queues them. What is left: a crash of the process between the commit
//! and the queueing, or the outbox refusing the rows three times in a row (the database gone
//! right after the write), loses those events; the second is logged (`webhook_events_lost`).
//! A write whose outcome the database did not report (the connection lost during its commit)
//! is an error, and queues nothing, though it may have landed.
//!
//! The events and their `data` (README, "Webhooks"):
//!
//! | type | when | data |
//! |---|---|---|
//! | `user.created` | `register` | `{user_id, email, username}` |
//! | `user.deleted` | `deleteAccount`, `admin delete-user` | `{user_id}` |
//! | `user.email_changed` | an email-change link followed | `{user_id, email, previous_email}` |
//! | `session.created` | every new session (register, login, second factor, passkey) | `{session_id, user_id}` |
//! | `session.revoked` | every session ended (logout, revokeTokens, revokeSession, revokeOtherSessions, a password change or reset, disable, delete, refresh-token reuse, second-factor changes, eviction beyond MAX_SESSIONS_PER_USER) | `{session_id, user_id}` |
//!
//! Sessions that simply expire (idle or absolute) are pruned, not revoked: no event.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    AuthMethods, Challenge, ChallengeKind, CreatedSession, FactorRemoval, Identity, IdentityStore,
    IssuedToken, Linking, NewSession, NewUser, NewWebhook, OutboxStore, PasskeyAddition,
    RoleChange, Rotation, SecondFactorStore, SecondFactors, Session, SessionPage, SessionStore,
    Storage, StoreError, StoreResult, StoredPasskey, TokenRefusal, TotpCredential, Unlinking, User,
    UserCredentials, UserStore, VerifiedEmail,
};

/// Where events go and for how long they are tried (`WEBHOOK_URLS`; `crate::webhooks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTargets {
    /// Absolute http(s) URLs, each getting every event.
    pub endpoints: Vec<String>,
    /// From an event's creation until it is given up.
    pub retry_period: TimeDelta,
}

/// The event types, as sent in `type` and counted in `authql_webhooks_total{type}`.
pub const EVENT_TYPES: [&str; 5] = [
    "user.created",
    "user.deleted",
    "user.email_changed",
    "session.created",
    "session.revoked",
];

/// The label of a stored event type; unknown ones (a newer release's) count as `other`.
pub fn event_label(event_type: &str) -> &'static str {
    EVENT_TYPES
        .into_iter()
        .find(|known| *known == event_type)
        .unwrap_or("other")
}

/// Something that happened, as a webhook tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    UserCreated(User),
    UserDeleted { user_id: Uuid },
    UserEmailChanged { user: User, previous_email: String },
    SessionCreated { session_id: Uuid, user_id: Uuid },
    SessionRevoked { session_id: Uuid, user_id: Uuid },
}

/// The `data` of each event (never a password, a hash or a token).
#[derive(Serialize)]
#[serde(untagged)]
enum EventData<'a> {
    User {
        user_id: Uuid,
        email: &'a str,
        username: &'a str,
    },
    UserId {
        user_id: Uuid,
    },
    EmailChanged {
        user_id: Uuid,
        email: &'a str,
        previous_email: &'a str,
    },
    Session {
        session_id: Uuid,
        user_id: Uuid,
    },
}

/// The body: `{"type", "timestamp" (RFC 3339, when it happened), "data"}` (spec, "Payload
/// structure").
#[derive(Serialize)]
struct Payload<'a> {
    r#type: &'static str,
    timestamp: String,
    data: EventData<'a>,
}

impl WebhookEvent {
    /// Its type (one of [`EVENT_TYPES`]).
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::UserCreated(_) => "user.created",
            Self::UserDeleted { .. } => "user.deleted",
            Self::UserEmailChanged { .. } => "user.email_changed",
            Self::SessionCreated { .. } => "session.created",
            Self::SessionRevoked { .. } => "session.revoked",
        }
    }

    /// The JSON body, as it is signed and sent.
    pub fn payload(&self, at: DateTime<Utc>) -> String {
        let data = match self {
            Self::UserCreated(user) => EventData::User {
                user_id: user.id,
                email: &user.email,
                username: &user.username,
            },
            Self::UserDeleted { user_id } => EventData::UserId { user_id: *user_id },
            Self::UserEmailChanged {
                user,
                previous_email,
            } => EventData::EmailChanged {
                user_id: user.id,
                email: &user.email,
                previous_email,
            },
            Self::SessionCreated {
                session_id,
                user_id,
            }
            | Self::SessionRevoked {
                session_id,
                user_id,
            } => EventData::Session {
                session_id: *session_id,
                user_id: *user_id,
            },
        };
        serde_json::to_string(&Payload {
            r#type: self.event_type(),
            timestamp: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            data,
        })
        .expect("the payload serializes")
    }

    fn revoked(user_id: Uuid, sessions: &[Uuid]) -> impl Iterator<Item = Self> + '_ {
        sessions.iter().map(move |session_id| Self::SessionRevoked {
            session_id: *session_id,
            user_id,
        })
    }
}

/// Puts events in the outbox, one row per event and endpoint.
struct Queue {
    outbox: Arc<dyn OutboxStore>,
    targets: WebhookTargets,
    /// Wakes this instance's sender.
    queued: Arc<dyn Fn() + Send + Sync>,
}

impl Queue {
    /// The rows of `events`: each event gets one id (its `webhook-id`, `msg_` + a UUID) shared
    /// by its rows.
    fn rows(&self, events: &[WebhookEvent], at: DateTime<Utc>) -> Vec<NewWebhook> {
        let mut rows = Vec::with_capacity(events.len() * self.targets.endpoints.len());
        for event in events {
            let event_id = format!("msg_{}", Uuid::new_v4().simple());
            let payload = event.payload(at);
            for endpoint in &self.targets.endpoints {
                rows.push(NewWebhook {
                    id: Uuid::new_v4(),
                    event_id: event_id.clone(),
                    event_type: event.event_type().to_owned(),
                    endpoint: endpoint.clone(),
                    payload: payload.clone(),
                    created_at: at,
                    expires_at: at + self.targets.retry_period,
                });
            }
        }
        rows
    }

    /// Queues the events; the outbox's refusal is tried twice more (the write before went
    /// through a moment ago), then the events are logged as lost, by type.
    async fn queue(&self, events: Vec<WebhookEvent>) {
        if events.is_empty() {
            return;
        }
        let rows = self.rows(&events, Utc::now());
        let mut pause = Duration::from_millis(100);
        for attempt in 1..=3 {
            match self.outbox.queue_webhooks(rows.clone()).await {
                Ok(()) => {
                    for row in rows.iter().step_by(self.targets.endpoints.len().max(1)) {
                        tracing::info!(event = "webhook_queued", webhook_id = %row.event_id, r#type = %row.event_type, "webhook event queued");
                    }
                    (self.queued)();
                    return;
                }
                Err(error) if attempt < 3 => {
                    tracing::warn!(event = "webhook_queue_retry", %error, attempt, "could not queue webhook events; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 5;
                }
                Err(error) => {
                    let types: Vec<&str> = events.iter().map(WebhookEvent::event_type).collect();
                    tracing::error!(event = "webhook_events_lost", %error, types = ?types, "webhook events could not be queued and are lost");
                }
            }
        }
    }
}

/// The user, session and second-factor stores of a [`Storage`], with the webhook events of
/// their writes queued (see the module).
pub struct WebhookQueue {
    users: Arc<dyn UserStore>,
    sessions: Arc<dyn SessionStore>,
    second_factors: Arc<dyn SecondFactorStore>,
    identities: Arc<dyn IdentityStore>,
    queue: Arc<Queue>,
}

impl Storage {
    /// This storage with webhook events queued for `targets` (see [`WebhookQueue`]); `queued`
    /// is called after events were queued (it wakes the sender).
    pub fn with_webhooks(
        self,
        targets: WebhookTargets,
        queued: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let decorator = Arc::new(WebhookQueue {
            users: self.users.clone(),
            sessions: self.sessions.clone(),
            second_factors: self.second_factors.clone(),
            identities: self.identities.clone(),
            queue: Arc::new(Queue {
                outbox: self.outbox.clone(),
                targets,
                queued,
            }),
        });
        Self {
            users: decorator.clone(),
            sessions: decorator.clone(),
            second_factors: decorator.clone(),
            identities: decorator,
            ..self
        }
    }
}

impl WebhookQueue {
    /// Runs `write`, then queues the events its result tells of, on a task that no
    /// cancellation of the caller stops.
    async fn write<T, F>(
        &self,
        write: F,
        events: impl FnOnce(&T) -> Vec<WebhookEvent> + Send + 'static,
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Future<Output = StoreResult<T>> + Send + 'static,
    {
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let result = write.await;
            if let Ok(value) = &result {
                queue.queue(events(value)).await;
            }
            result
        })
        .await
        .map_err(|_| StoreError::Database("a database write ended abnormally".into()))?
    }
}

#[async_trait]
impl UserStore for WebhookQueue {
    async fn register_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        verification: Option<IssuedToken>,
    ) -> StoreResult<(User, Option<Session>)> {
        let users = self.users.clone();
        self.write(
            async move { users.register_user(user, session, verification).await },
            |(user, session)| {
                let mut events = vec![WebhookEvent::UserCreated(user.clone())];
                if let Some(session) = session {
                    events.push(WebhookEvent::SessionCreated {
                        session_id: session.id,
                        user_id: user.id,
                    });
                }
                events
            },
        )
        .await
    }

    async fn reset_password(
        &self,
        digest: &str,
        now: DateTime<Utc>,
        password_hash: String,
    ) -> StoreResult<Result<(User, Vec<Uuid>), TokenRefusal>> {
        let (users, digest) = (self.users.clone(), digest.to_owned());
        self.write(
            async move { users.reset_password(&digest, now, password_hash).await },
            |result| match result {
                Ok((user, ended)) => WebhookEvent::revoked(user.id, ended).collect(),
                Err(_) => Vec::new(),
            },
        )
        .await
    }

    async fn verify_email(
        &self,
        digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<VerifiedEmail, TokenRefusal>> {
        let (users, digest) = (self.users.clone(), digest.to_owned());
        self.write(
            async move { users.verify_email(&digest, now).await },
            |result| match result {
                Ok(VerifiedEmail {
                    user,
                    previous_email: Some(previous_email),
                }) if *previous_email != user.email => vec![WebhookEvent::UserEmailChanged {
                    user: user.clone(),
                    previous_email: previous_email.clone(),
                }],
                _ => Vec::new(),
            },
        )
        .await
    }

    async fn mark_email_verified(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        self.users.mark_email_verified(user_id, at).await
    }

    async fn find_credentials(
        &self,
        login_normalized: &str,
    ) -> StoreResult<Option<UserCredentials>> {
        self.users.find_credentials(login_normalized).await
    }

    async fn find_credentials_by_id(&self, user_id: Uuid) -> StoreResult<Option<UserCredentials>> {
        self.users.find_credentials_by_id(user_id).await
    }

    /// No event: roles are not among the ones webhooks carry.
    async fn change_user_role(
        &self,
        user_id: Uuid,
        role: &str,
        grant: bool,
    ) -> StoreResult<RoleChange> {
        self.users.change_user_role(user_id, role, grant).await
    }

    async fn set_user_disabled(
        &self,
        user_id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let users = self.users.clone();
        self.write(
            async move { users.set_user_disabled(user_id, disabled_at).await },
            move |ended| ended_sessions(user_id, ended.as_deref()),
        )
        .await
    }

    async fn delete_user(
        &self,
        user_id: Uuid,
        proven_version: Option<i64>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let users = self.users.clone();
        self.write(
            async move { users.delete_user(user_id, proven_version).await },
            move |ended| {
                let Some(ended) = ended else {
                    return Vec::new();
                };
                let mut events: Vec<_> = WebhookEvent::revoked(user_id, ended).collect();
                events.push(WebhookEvent::UserDeleted { user_id });
                events
            },
        )
        .await
    }

    async fn change_password(
        &self,
        user_id: Uuid,
        proven_version: i64,
        password_hash: String,
        keep_session: Uuid,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let users = self.users.clone();
        self.write(
            async move {
                users
                    .change_password(user_id, proven_version, password_hash, keep_session)
                    .await
            },
            move |ended| ended_sessions(user_id, ended.as_deref()),
        )
        .await
    }

    async fn replace_password_hash(
        &self,
        user_id: Uuid,
        current: &str,
        new: String,
    ) -> StoreResult<bool> {
        self.users
            .replace_password_hash(user_id, current, new)
            .await
    }
}

/// `session.revoked` for each of `ended`, when the write happened.
fn ended_sessions(user_id: Uuid, ended: Option<&[Uuid]>) -> Vec<WebhookEvent> {
    ended.map_or_else(Vec::new, |ended| {
        WebhookEvent::revoked(user_id, ended).collect()
    })
}

/// `session.revoked` for the sessions a second-factor change ended.
fn removal_events(user_id: Uuid, removal: &FactorRemoval) -> Vec<WebhookEvent> {
    match removal {
        FactorRemoval::Removed(ended) => WebhookEvent::revoked(user_id, ended).collect(),
        // MongoDB, no transaction: the factor went with every session, whose ids are not known
        // (the session was ended already, and its own event with it).
        FactorRemoval::NotFound | FactorRemoval::SessionEnded => Vec::new(),
    }
}

#[async_trait]
impl SessionStore for WebhookQueue {
    async fn create_session(
        &self,
        session: NewSession,
        max_sessions: usize,
    ) -> StoreResult<Option<CreatedSession>> {
        let sessions = self.sessions.clone();
        self.write(
            async move { sessions.create_session(session, max_sessions).await },
            |created| {
                let Some(CreatedSession { session, evicted }) = created else {
                    return Vec::new();
                };
                let mut events = vec![WebhookEvent::SessionCreated {
                    session_id: session.id,
                    user_id: session.user_id,
                }];
                events.extend(WebhookEvent::revoked(session.user_id, evicted));
                events
            },
        )
        .await
    }

    async fn find_session_by_access_jti(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Session)>> {
        self.sessions
            .find_session_by_access_jti(session_id, access_jti, now)
            .await
    }

    async fn find_session(&self, session_id: Uuid) -> StoreResult<Option<(User, Session)>> {
        self.sessions.find_session(session_id).await
    }

    async fn rotate_session(&self, rotation: Rotation) -> StoreResult<Option<(User, Session)>> {
        self.sessions.rotate_session(rotation).await
    }

    async fn reauthenticate_session(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        at: DateTime<Utc>,
        methods: AuthMethods,
    ) -> StoreResult<Option<Session>> {
        self.sessions
            .reauthenticate_session(session_id, access_jti, at, methods)
            .await
    }

    async fn list_live_sessions(
        &self,
        user_id: Uuid,
        credential_version: i64,
        now: DateTime<Utc>,
        page: SessionPage,
    ) -> StoreResult<Vec<Session>> {
        self.sessions
            .list_live_sessions(user_id, credential_version, now, page)
            .await
    }

    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        session_ids: &[Uuid],
    ) -> StoreResult<Vec<Uuid>> {
        let (sessions, session_ids) = (self.sessions.clone(), session_ids.to_vec());
        self.write(
            async move { sessions.delete_user_sessions(user_id, &session_ids).await },
            move |ended| WebhookEvent::revoked(user_id, ended).collect(),
        )
        .await
    }

    async fn delete_other_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>> {
        let sessions = self.sessions.clone();
        self.write(
            async move { sessions.delete_other_sessions(user_id, keep).await },
            move |ended| WebhookEvent::revoked(user_id, ended).collect(),
        )
        .await
    }

    async fn count_live_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.sessions.count_live_sessions(now).await
    }

    async fn prune_sessions(&self, ended_before: DateTime<Utc>, batch: u64) -> StoreResult<u64> {
        self.sessions.prune_sessions(ended_before, batch).await
    }
}

/// Identities: an unlink ends the account's other sessions (`session.revoked`).
#[async_trait]
impl IdentityStore for WebhookQueue {
    async fn find_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<(Identity, UserCredentials)>> {
        self.identities.find_identity(issuer, subject).await
    }

    async fn identities(&self, user_id: Uuid) -> StoreResult<Vec<Identity>> {
        self.identities.identities(user_id).await
    }

    async fn link_identity(&self, identity: Identity) -> StoreResult<Linking> {
        self.identities.link_identity(identity).await
    }

    async fn unlinked_before(
        &self,
        email_normalized: &str,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<bool> {
        self.identities
            .unlinked_before(email_normalized, issuer, subject)
            .await
    }

    async fn unlink_identity(
        &self,
        user_id: Uuid,
        provider: &str,
        keep_session: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Unlinking> {
        let (identities, provider) = (self.identities.clone(), provider.to_owned());
        self.write(
            async move {
                identities
                    .unlink_identity(user_id, &provider, keep_session, at)
                    .await
            },
            move |unlinking| match unlinking {
                Unlinking::Unlinked(removal) => removal_events(user_id, removal),
                Unlinking::LastLoginMethod => Vec::new(),
            },
        )
        .await
    }
}

#[async_trait]
impl SecondFactorStore for WebhookQueue {
    async fn totp(&self, user_id: Uuid) -> StoreResult<Option<TotpCredential>> {
        self.second_factors.totp(user_id).await
    }

    async fn begin_totp(&self, credential: TotpCredential) -> StoreResult<bool> {
        self.second_factors.begin_totp(credential).await
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
        let (factors, secret) = (self.second_factors.clone(), secret.to_owned());
        self.write(
            async move {
                factors
                    .confirm_totp(user_id, &secret, step, recovery_digests, keep_session, at)
                    .await
            },
            move |ended| ended_sessions(user_id, ended.as_deref()),
        )
        .await
    }

    async fn disable_totp(&self, user_id: Uuid, keep_session: Uuid) -> StoreResult<FactorRemoval> {
        let factors = self.second_factors.clone();
        self.write(
            async move { factors.disable_totp(user_id, keep_session).await },
            move |removal| removal_events(user_id, removal),
        )
        .await
    }

    async fn take_totp_step(&self, user_id: Uuid, step: i64) -> StoreResult<bool> {
        self.second_factors.take_totp_step(user_id, step).await
    }

    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        digests: Vec<String>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.second_factors
            .replace_recovery_codes(user_id, digests, at)
            .await
    }

    async fn recovery_code_unused(&self, user_id: Uuid, digest: &str) -> StoreResult<bool> {
        self.second_factors
            .recovery_code_unused(user_id, digest)
            .await
    }

    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        digest: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.second_factors
            .use_recovery_code(user_id, digest, at)
            .await
    }

    async fn second_factors(&self, user_id: Uuid) -> StoreResult<SecondFactors> {
        self.second_factors.second_factors(user_id).await
    }

    async fn add_passkey(
        &self,
        passkey: StoredPasskey,
        keep_session: Uuid,
    ) -> StoreResult<PasskeyAddition> {
        let (factors, user_id) = (self.second_factors.clone(), passkey.user_id);
        self.write(
            async move { factors.add_passkey(passkey, keep_session).await },
            move |addition| match addition {
                PasskeyAddition::Added(ended) => WebhookEvent::revoked(user_id, ended).collect(),
                PasskeyAddition::SessionEnded | PasskeyAddition::CredentialTaken => Vec::new(),
            },
        )
        .await
    }

    async fn passkeys(&self, user_id: Uuid) -> StoreResult<Vec<StoredPasskey>> {
        self.second_factors.passkeys(user_id).await
    }

    async fn passkey_by_credential_id(
        &self,
        credential_id: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        self.second_factors
            .passkey_by_credential_id(credential_id)
            .await
    }

    async fn rename_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        self.second_factors.rename_passkey(user_id, id, name).await
    }

    async fn delete_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        keep_session: Uuid,
    ) -> StoreResult<FactorRemoval> {
        let factors = self.second_factors.clone();
        self.write(
            async move { factors.delete_passkey(user_id, id, keep_session).await },
            move |removal| removal_events(user_id, removal),
        )
        .await
    }

    async fn use_passkey(
        &self,
        id: Uuid,
        seen_counter: i64,
        counter: i64,
        credential: String,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.second_factors
            .use_passkey(id, seen_counter, counter, credential, at)
            .await
    }

    async fn reset_second_factors(&self, user_id: Uuid) -> StoreResult<Option<Vec<Uuid>>> {
        let factors = self.second_factors.clone();
        self.write(
            async move { factors.reset_second_factors(user_id).await },
            move |ended| ended_sessions(user_id, ended.as_deref()),
        )
        .await
    }

    async fn put_challenge(&self, challenge: Challenge) -> StoreResult<()> {
        self.second_factors.put_challenge(challenge).await
    }

    async fn take_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        self.second_factors.take_challenge(digest, kind, now).await
    }

    async fn attempt_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        self.second_factors
            .attempt_challenge(digest, kind, max_attempts, now)
            .await
    }

    async fn challenge_expired(&self, digest: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        self.second_factors.challenge_expired(digest, now).await
    }

    async fn prune_challenges(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.second_factors.prune_challenges(before).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_type_time_and_small_data() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let user_id = Uuid::nil();
        let payload = WebhookEvent::SessionRevoked {
            session_id: user_id,
            user_id,
        }
        .payload(at);
        let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(value["type"], "session.revoked");
        assert_eq!(value["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["data"]["session_id"], user_id.to_string());
        assert_eq!(value["data"]["user_id"], user_id.to_string());
        let deleted = WebhookEvent::UserDeleted { user_id }.payload(at);
        let value: serde_json::Value = serde_json::from_str(&deleted).unwrap();
        assert_eq!(value["data"], serde_json::json!({ "user_id": user_id }));
    }
}
