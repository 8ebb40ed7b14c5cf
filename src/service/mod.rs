//! What authql does, independent of GraphQL and HTTP: register, log in, refresh, authenticate,
//! list and revoke sessions, change passwords.

pub mod accounts;
pub mod admin;
pub mod events;
pub mod input;
pub mod introspection;
pub mod oidc;
pub mod rate_limit;
pub mod second_factors;

use std::{collections::BTreeSet, sync::Arc};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use uuid::Uuid;

use crate::{
    auth::{
        Authenticated, BearerToken, ClaimsTemplate, PasswordHasher, Profile, Subject, TokenKeys,
        TokenKind, Verification,
        claims_template::{ClaimsContext, TemplateSession, TemplateUser},
    },
    error::{AppError, UnauthenticatedReason},
    metrics,
    service::{
        events::{SessionEventKind, SessionEvents},
        rate_limit::{Operation, RateLimits},
    },
    store::{
        AuthMethods, FIRST_CREDENTIAL_VERSION, NewUser, Rotation, Session, SessionCursor,
        SessionPage, Storage, StoreError, User, UserCredentials,
    },
};

/// At most this many session ids and tokens in one `revokeTokens`.
pub const MAX_REVOCATIONS: usize = 100;

/// Where a login came from, recorded on its session.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub ip: Option<std::net::IpAddr>,
}

/// What `register` takes, as the client sent it (checked by `input` before anything else).
pub struct Registration {
    pub email: String,
    pub password: String,
    pub username: Option<String>,
}

/// A session with a freshly issued token pair.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_token_expires_at: DateTime<Utc>,
    pub user: User,
    pub session: Session,
}

#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Storage,
    tokens: TokenKeys,
    passwords: PasswordHasher,
    lifetimes: Lifetimes,
    rate_limits: RateLimits,
    events: SessionEvents,
    readiness: Readiness,
    accounts: Arc<accounts::Accounts>,
    second_factors: second_factors::SecondFactorSettings,
    /// `ACCESS_TOKEN_CLAIMS_TEMPLATE`, checked at start.
    claims_template: Option<ClaimsTemplate>,
    /// OpenID Connect sign-in (`OIDC_PROVIDERS`); `None` when no provider is configured.
    oidc: Option<oidc::OidcSignIn>,
}

/// The last readiness probe: its answer is reused for `READINESS_MAX_AGE`, and one probe runs
/// at a time (the others wait for its answer), so that any number of `/readyz` calls cost at
/// most one probe a second.
#[derive(Default)]
struct Readiness {
    last: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
    probing: tokio::sync::Mutex<()>,
}

/// How long a readiness answer is reused.
const READINESS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

impl Readiness {
    fn fresh(&self) -> Option<bool> {
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.filter(|(at, _)| at.elapsed() < READINESS_MAX_AGE)
            .map(|(_, ready)| ready)
    }
}

/// How many sessions `mySessions` lists at most at once, and by default.
pub const MAX_SESSIONS_PAGE: u64 = 100;

/// How long tokens and sessions live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub access_token: TimeDelta,
    /// A session's absolute lifetime, fixed at login, and so its refresh token's.
    pub session: TimeDelta,
    /// A session not refreshed for this long ends.
    pub session_idle: TimeDelta,
    /// How long after a rotation the replaced refresh token still gets the same new pair.
    pub refresh_reuse_grace: TimeDelta,
    /// `MAX_SESSIONS_PER_USER`: a login beyond it ends the user's least recently used session.
    pub max_sessions_per_user: usize,
}

impl AuthService {
    /// The service over `store`, with its keys, hashing pool, lifetimes, limits, event bus,
    /// account flows (mail) and second factors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Storage,
        tokens: TokenKeys,
        passwords: PasswordHasher,
        lifetimes: Lifetimes,
        rate_limits: RateLimits,
        events: SessionEvents,
        accounts: Arc<accounts::Accounts>,
        second_factors: second_factors::SecondFactorSettings,
        claims_template: Option<ClaimsTemplate>,
        oidc: Option<oidc::OidcSignIn>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                oidc,
                claims_template,
                second_factors,
                store,
                tokens,
                passwords,
                lifetimes,
                rate_limits,
                events,
                readiness: Readiness::default(),
                accounts,
            }),
        }
    }

    /// Where session events are published and subscribed to.
    pub fn events(&self) -> &SessionEvents {
        &self.inner.events
    }

    async fn publish(&self, kind: SessionEventKind, user_id: Uuid, session_ids: &[Uuid]) {
        self.inner
            .events
            .publish_all(kind, user_id, session_ids)
            .await;
    }

    /// Creates the user and its first session in one transaction, with a link to verify its
    /// address when `EMAIL_VERIFICATION` is not `off`. With `required`, no session: the account
    /// is created and EMAIL_NOT_VERIFIED answered; a taken address gets the very same answer
    /// (its owner a notice), so that registration tells nobody who has an account. A
    /// registration repeated as it was sent (see [`Self::repeated_registration`]) is answered
    /// as the first was, with a session of its own. Errors: RATE_LIMITED, BAD_USER_INPUT
    /// (`email`, `username`, `password`), EMAIL_TAKEN (not with `required`), USERNAME_TAKEN,
    /// EMAIL_NOT_VERIFIED, SERVICE_UNAVAILABLE (the database away, or the hashing queue full).
    pub async fn register(
        &self,
        registration: Registration,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Register, client.ip).await?;
        let email = input::email("email", &registration.email)?;
        let username_raw = registration.username.as_deref().unwrap_or(&email.display);
        let (username, username_normalized) = input::username("username", username_raw, &email)?;
        input::password("password", &registration.password)?;

        let password_hash = self
            .inner
            .passwords
            .hash(registration.password.clone())
            .await?;
        let now = now();
        let user = NewUser {
            id: Uuid::new_v4(),
            email: email.display,
            email_normalized: email.normalized.clone(),
            username,
            username_normalized,
            password_hash,
            created_at: now,
            email_verified_at: None,
            identity: None,
        };
        // A username of its own (one that is not the address): it decides USERNAME_TAKEN.
        let own_username =
            (!user.username_normalized.contains('@')).then(|| user.username_normalized.clone());
        let required = self.verification_required();
        let may_mail = self.registration_may_mail(&email.normalized, &client).await;
        let verification = if may_mail {
            self.registration_link(&pending_user(&user), now)?
        } else {
            None
        };
        let mailed = verification.is_some();
        let repeat_client = client.clone();
        let session = (!required).then(|| {
            self.new_session(
                user.id,
                FIRST_CREDENTIAL_VERSION,
                AuthMethods::of(["pwd"]),
                client,
                now,
            )
        });
        let username = user.username.clone();
        let registered = self
            .store()
            .users
            .register_user(user, session, verification)
            .await;
        let (user, session) = match registered {
            Ok(registered) => registered,
            Err(StoreError::EmailTaken) if !required => {
                let repeated = self
                    .repeated_registration(
                        &registration.email,
                        &username,
                        registration.password,
                        repeat_client,
                    )
                    .await?;
                return repeated.ok_or(AppError::EmailTaken);
            }
            Err(StoreError::EmailTaken) if required => {
                // Answered as for a new address: USERNAME_TAKEN exactly when the username is
                // someone's, whoever has the address (else the answer would tell).
                if let Some(username) = own_username
                    && self
                        .store()
                        .users
                        .find_credentials(&username)
                        .await?
                        .is_some()
                {
                    return Err(AppError::UsernameTaken);
                }
                if may_mail {
                    self.notify_registration_attempt(&email.normalized).await?;
                }
                return Err(AppError::EmailNotVerified);
            }
            Err(error) => return Err(error.into()),
        };
        if mailed {
            self.mail_queued();
        }
        let Some(session) = session else {
            tracing::info!(user_id = %user.id, "user registered; the address must be verified before a login");
            return Err(AppError::EmailNotVerified);
        };
        tracing::info!(user_id = %user.id, session_id = %session.id, "user registered");
        self.publish(SessionEventKind::Created, user.id, &[session.id])
            .await;
        self.issue(user, session, now)
    }

    /// A registration sent again as it was (the same address, username and password) within
    /// `REFRESH_REUSE_GRACE_SECONDS` of the account's creation: a client retrying one whose
    /// answer was lost (a database failover between the commit and the reply, a dropped
    /// connection, a double submit). It is answered with a new session, as a login with the
    /// same password would be, through the login's own checks (its rate limits per client and
    /// per account, a second factor, a disabled account); else `None`, and the caller answers
    /// EMAIL_TAKEN. Proving the password proves nothing a login would not, and an address
    /// registered longer ago, or with another username or password, stays EMAIL_TAKEN.
    /// Errors: as for [`Self::login`], but for INVALID_CREDENTIALS (`None`).
    async fn repeated_registration(
        &self,
        email: &str,
        username: &str,
        password: String,
        client: ClientInfo,
    ) -> Result<Option<IssuedTokens>, AppError> {
        let grace = self.inner.lifetimes.refresh_reuse_grace;
        if grace.is_zero() {
            return Ok(None);
        }
        let login = input::login_key("email", email)?;
        let Some(found) = self.store().users.find_credentials(&login).await? else {
            return Ok(None);
        };
        if found.user.username != username || now() >= found.user.created_at + grace {
            return Ok(None);
        }
        match self.log_in(email, password, client).await {
            Ok(tokens) => {
                tracing::info!(user_id = %found.user.id, "registration repeated: answered with a new session");
                Ok(Some(tokens))
            }
            Err(AppError::InvalidCredentials) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Opens a new session. Counted in `authql_logins_total` by outcome.
    pub async fn login(
        &self,
        email_or_username: &str,
        password: String,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let logged_in = self.log_in(email_or_username, password, client).await;
        metrics::login(match &logged_in {
            Ok(_) => "success",
            Err(error) => outcome_of(error),
        });
        logged_in
    }

    async fn log_in(
        &self,
        email_or_username: &str,
        password: String,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let login = input::login_key("emailOrUsername", email_or_username)?;
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Login, client.ip).await?;
        let store = self.store();
        let credentials = store.users.find_credentials(&login).await?;
        // One bucket per account, whichever of its names is typed; a name no account has is a
        // bucket of its own.
        let account = credentials
            .as_ref()
            .map_or_else(|| login.clone(), |found| found.user.id.to_string());
        limits
            .check_account(Operation::Login, &account, client.ip)
            .await?;
        // Only the limits that protect the server; the password policy is for new passwords.
        if password.len() > input::PASSWORD_MAX_BYTES {
            return Err(AppError::InvalidCredentials);
        }
        let hash = credentials
            .as_ref()
            .map(|found| found.password_hash.clone());
        let verification = self.inner.passwords.verify(password, hash).await?;
        let found = match credentials {
            Some(found) if verification.matches() => found,
            _ => {
                let ip = client.ip.map(|ip| ip.to_string()).unwrap_or_default();
                tracing::info!(event = "login_failed", %ip, "login failed");
                return Err(AppError::InvalidCredentials);
            }
        };
        let user = found.user;
        self.admit(&user, &client).await?;
        if let Verification::Outdated { new_hash } = verification {
            // The same password in the current form and cost; failing to store it only means
            // trying again at the next login.
            if store
                .users
                .replace_password_hash(user.id, &found.password_hash, new_hash)
                .await
                .is_err()
            {
                tracing::warn!(event = "password_rehash_failed", user_id = %user.id, "could not store the upgraded password hash");
            }
        }
        self.ask_for_second_factor(&user, AuthMethods::of(["pwd"]), now())
            .await?;
        let version = user.credential_version;
        self.open_session(user, version, AuthMethods::of(["pwd"]), client)
            .await
    }

    /// Whether `user`, whose proof was just accepted, may have a session. Said only after the
    /// proof: a wrong password gets INVALID_CREDENTIALS whether or not the account is disabled,
    /// so that this answer reveals nothing to someone without it. Errors: ACCOUNT_DISABLED,
    /// EMAIL_NOT_VERIFIED (with `EMAIL_VERIFICATION=required`; a fresh link is mailed).
    async fn admit(&self, user: &User, client: &ClientInfo) -> Result<(), AppError> {
        if user.disabled_at.is_some() {
            tracing::info!(event = "login_refused_disabled", user_id = %user.id, "login refused: account disabled");
            return Err(AppError::AccountDisabled);
        }
        if self.verification_required() && user.email_verified_at.is_none() {
            return Err(self.refuse_unverified(user, client).await);
        }
        Ok(())
    }

    /// Stores a new session of `user`, proven by `methods` under `credential_version` (what
    /// the proof was checked against: a password change, reset, disable or `reset-mfa` since
    /// wins, and nothing is stored), and issues its pair. Errors: INVALID_CREDENTIALS or
    /// ACCOUNT_DISABLED (outraced so), SERVICE_UNAVAILABLE.
    async fn open_session(
        &self,
        user: User,
        credential_version: i64,
        methods: AuthMethods,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let store = self.store();
        let now = now();
        let session = self.new_session(user.id, credential_version, methods, client, now);
        let created = store
            .sessions
            .create_session(session, self.inner.lifetimes.max_sessions_per_user)
            .await?;
        let Some(created) = created else {
            // The password changed, or the account was disabled or deleted, while this login
            // checked the proof: the credentials it proved are no longer the account's.
            let disabled = store
                .users
                .find_credentials_by_id(user.id)
                .await?
                .is_some_and(|found| found.user.disabled_at.is_some());
            tracing::info!(event = "login_outraced", user_id = %user.id, "login refused: the credentials changed meanwhile");
            return Err(if disabled {
                AppError::AccountDisabled
            } else {
                AppError::InvalidCredentials
            });
        };
        let session = created.session;
        tracing::info!(user_id = %user.id, session_id = %session.id, methods = %session.authentication_methods.to_text(), "logged in");
        self.publish(SessionEventKind::Created, user.id, &[session.id])
            .await;
        if !created.evicted.is_empty() {
            tracing::info!(event = "sessions_evicted", user_id = %user.id, evicted = created.evicted.len(), "least recently used sessions ended (MAX_SESSIONS_PER_USER)");
            self.publish(SessionEventKind::Revoked, user.id, &created.evicted)
                .await;
        }
        self.issue(user, session, now)
    }

    /// Rotates the session's token pair: the presented refresh token dies with its access token,
    /// and of concurrent refreshes with one token exactly one rotates.
    ///
    /// Presenting the replaced refresh token again is either a retry (a second tab, a lost
    /// response) or a thief racing the owner. Within the grace window it is taken as a retry and
    /// answered with the very pair the rotation issued; after it, the session is revoked.
    /// Counted in `authql_refreshes_total` by outcome: `rotated`, `grace_replay`,
    /// `reuse_detected`, `expired`, `revoked`, `account_disabled`, `invalid_token`,
    /// `rate_limited`, `unavailable`, `error`.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let refreshed = self.rotate(refresh_token, client).await;
        metrics::refresh(match &refreshed {
            Ok((_, outcome)) => outcome,
            Err(AppError::Unauthenticated(UnauthenticatedReason::RefreshTokenReused)) => {
                "reuse_detected"
            }
            Err(AppError::Unauthenticated(UnauthenticatedReason::Expired)) => "expired",
            Err(AppError::Unauthenticated(UnauthenticatedReason::Revoked)) => "revoked",
            Err(AppError::Unauthenticated(_)) => "invalid_token",
            Err(error) => outcome_of(error),
        });
        refreshed.map(|(issued, _)| issued)
    }

    /// `refresh`, and whether it rotated or replayed the pair of a rotation within the grace
    /// window.
    async fn rotate(
        &self,
        refresh_token: &str,
        client: ClientInfo,
    ) -> Result<(IssuedTokens, &'static str), AppError> {
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Refresh, client.ip).await?;
        let claims = self
            .inner
            .tokens
            .verify(TokenKind::Refresh, refresh_token)
            .map_err(AppError::Unauthenticated)?;
        limits
            .check_account(Operation::Refresh, &claims.sid.to_string(), client.ip)
            .await?;
        let now = now();
        let rotation = Rotation {
            session_id: claims.sid,
            presented_refresh_jti: claims.jti,
            new_access_jti: Uuid::new_v4(),
            new_refresh_jti: Uuid::new_v4(),
            at: now,
            idle_expires_at: now + self.inner.lifetimes.session_idle,
        };
        let store = self.store();
        if let Some((user, session)) = store.sessions.rotate_session(rotation).await? {
            if user.disabled_at.is_some() {
                return Err(AppError::AccountDisabled);
            }
            self.publish(SessionEventKind::Refreshed, user.id, &[session.id])
                .await;
            return Ok((self.issue(user, session, now)?, "rotated"));
        }

        // Not rotated: the session is gone, has ended, or holds another refresh jti.
        let Some((user, session)) = store
            .sessions
            .find_session(claims.sid)
            .await?
            .filter(|(user, _)| user.id == claims.sub)
        else {
            // Disabling an account ends its sessions; a genuine token of it says why.
            let disabled = store
                .users
                .find_credentials_by_id(claims.sub)
                .await?
                .is_some_and(|found| found.user.disabled_at.is_some());
            return Err(if disabled {
                AppError::AccountDisabled
            } else {
                AppError::Unauthenticated(UnauthenticatedReason::Revoked)
            });
        };
        if user.disabled_at.is_some() {
            return Err(AppError::AccountDisabled);
        }
        // Made under credentials that have changed since (a password change it straddled).
        if !session.is_current_for(&user) {
            return Err(AppError::Unauthenticated(UnauthenticatedReason::Revoked));
        }
        if !session.is_live(now) {
            self.publish(SessionEventKind::Expired, user.id, &[session.id])
                .await;
            return Err(AppError::Unauthenticated(UnauthenticatedReason::Expired));
        }
        if let Some(rotated_at) = self.replaced_within_grace(&session, claims.jti, now) {
            // Signing is deterministic: the same claims give the same bytes.
            return Ok((self.issue(user, session, rotated_at)?, "grace_replay"));
        }
        let revoked = store
            .sessions
            .delete_user_sessions(user.id, &[session.id])
            .await?;
        self.publish(SessionEventKind::Revoked, user.id, &revoked)
            .await;
        tracing::warn!(
            event = "refresh_token_reused",
            user_id = %user.id,
            session_id = %session.id,
            "a rotated-away refresh token was presented; the session is revoked"
        );
        Err(AppError::Unauthenticated(
            UnauthenticatedReason::RefreshTokenReused,
        ))
    }

    /// Resolves a bearer token to its user and session: the token must be a genuine, unexpired
    /// access token, and its session must still hold its jti.
    pub async fn authenticate(&self, bearer: &BearerToken) -> Result<Authenticated, AppError> {
        let token = match bearer {
            BearerToken::Missing => {
                return Err(AppError::Unauthenticated(UnauthenticatedReason::Missing));
            }
            BearerToken::Unreadable => {
                return Err(AppError::Unauthenticated(UnauthenticatedReason::Malformed));
            }
            BearerToken::Present(token) => token,
        };
        let claims = self
            .inner
            .tokens
            .verify(TokenKind::Access, token)
            .map_err(AppError::Unauthenticated)?;
        let now = now();
        let store = self.store();
        if let Some((user, session)) = store
            .sessions
            .find_session_by_access_jti(claims.sid, claims.jti, now)
            .await?
        {
            // A disabled account's sessions are ended with it; should one outlive that (a
            // MongoDB deployment without transactions failing half-way), it is refused here.
            if user.disabled_at.is_some() {
                return Err(AppError::Unauthenticated(UnauthenticatedReason::Revoked));
            }
            let expires_at = DateTime::from_timestamp(claims.exp, 0).unwrap_or(now);
            return Ok(Authenticated {
                user,
                session,
                expires_at,
            });
        }
        // Refused: say whether the session timed out (idle or absolute expiry) or was ended.
        // This second lookup runs only for refused tokens.
        let timed_out =
            store
                .sessions
                .find_session(claims.sid)
                .await?
                .is_some_and(|(user, session)| {
                    user.id == claims.sub
                        && session.access_jti == claims.jti
                        && session.is_current_for(&user)
                        && !session.is_live(now)
                });
        Err(AppError::Unauthenticated(if timed_out {
            UnauthenticatedReason::Expired
        } else {
            UnauthenticatedReason::Revoked
        }))
    }

    /// A page of the caller's live sessions, newest first: at most `first` (1 to
    /// [`MAX_SESSIONS_PAGE`]), after the session `after` names (a cursor from
    /// [`session_cursor`]). Errors: BAD_USER_INPUT (`first` out of range, `after` not a cursor).
    pub async fn live_sessions(
        &self,
        caller: &Authenticated,
        first: Option<i64>,
        after: Option<&str>,
    ) -> Result<Vec<Session>, AppError> {
        let first = first.map_or(Ok(MAX_SESSIONS_PAGE), |first| {
            u64::try_from(first)
                .ok()
                .filter(|first| (1..=MAX_SESSIONS_PAGE).contains(first))
                .ok_or_else(|| {
                    AppError::bad_input("first", format!("first is 1 to {MAX_SESSIONS_PAGE}"))
                })
        })?;
        let after = after
            .map(|cursor| {
                parse_session_cursor(cursor)
                    .ok_or_else(|| AppError::bad_input("after", "after is not a session cursor"))
            })
            .transpose()?;
        Ok(self
            .store()
            .sessions
            .list_live_sessions(
                caller.user.id,
                caller.session.credential_version,
                now(),
                SessionPage { first, after },
            )
            .await?)
    }

    /// Ends the session that `refresh_token` belongs to, for a client whose access token has
    /// expired (a shared computer must be able to sign out without refreshing first). The token
    /// must be the session's current refresh token, or the one it replaced within
    /// `REFRESH_REUSE_GRACE_SECONDS`; when `caller` is signed in too, the session must be theirs.
    /// Errors: UNAUTHENTICATED (`MALFORMED`, `EXPIRED`, `WRONG_TOKEN_TYPE`, `REVOKED` for a token
    /// that no longer speaks for its session), nothing changed.
    pub async fn logout_with_refresh_token(
        &self,
        refresh_token: &str,
        caller: Option<&Authenticated>,
    ) -> Result<(), AppError> {
        let claims = self
            .inner
            .tokens
            .verify(TokenKind::Refresh, refresh_token)
            .map_err(AppError::Unauthenticated)?;
        let now = now();
        let revoked = AppError::Unauthenticated(UnauthenticatedReason::Revoked);
        let (user, session) = self
            .store()
            .sessions
            .find_session(claims.sid)
            .await?
            .filter(|(user, _)| user.id == claims.sub)
            .ok_or(revoked.clone())?;
        if caller.is_some_and(|caller| caller.user.id != user.id) {
            return Err(revoked);
        }
        let current = session.refresh_jti == claims.jti
            || self
                .replaced_within_grace(&session, claims.jti, now)
                .is_some();
        if !current {
            return Err(revoked);
        }
        self.revoke_sessions(user.id, &[session.id]).await?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "logged out by refresh token");
        Ok(())
    }

    /// When `refresh_jti` is the one the session's last rotation replaced, and that rotation is
    /// less than `REFRESH_REUSE_GRACE_SECONDS` old: the rotation's time. `now` was taken when the
    /// request began, so a repeat racing the rotation can see it as "before" the rotation: the
    /// window is checked by its end only. No window at all (grace 0) means never.
    fn replaced_within_grace(
        &self,
        session: &Session,
        refresh_jti: Uuid,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let grace = self.inner.lifetimes.refresh_reuse_grace;
        let rotated_at = session.last_refreshed_at?;
        (session.previous_refresh_jti == Some(refresh_jti)
            && !grace.is_zero()
            && now < rotated_at + grace)
            .then_some(rotated_at)
    }

    /// Ends the caller's own session (its tokens are refused from the next request on).
    pub async fn logout(&self, caller: &Authenticated) -> Result<(), AppError> {
        self.revoke_sessions(caller.user.id, &[caller.session.id])
            .await?;
        tracing::info!(user_id = %caller.user.id, session_id = %caller.session.id, "logged out");
        Ok(())
    }

    /// Ends the caller's sessions named by id or by one of their tokens. Anything unknown,
    /// malformed, expired or someone else's is skipped without a word, so that the answer
    /// reveals nothing about other users' sessions.
    pub async fn revoke(
        &self,
        caller: &Authenticated,
        session_ids: &[String],
        tokens: &[String],
    ) -> Result<Vec<Uuid>, AppError> {
        if session_ids.is_empty() && tokens.is_empty() {
            return Err(AppError::bad_input(
                "sessionIds",
                "name at least one session id or token to revoke",
            ));
        }
        if session_ids.len() + tokens.len() > MAX_REVOCATIONS {
            return Err(AppError::bad_input(
                "sessionIds",
                format!("revoke at most {MAX_REVOCATIONS} sessions and tokens at once"),
            ));
        }
        let by_id = session_ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id.trim()).ok());
        let by_token = tokens
            .iter()
            .filter_map(|token| self.inner.tokens.verify_any(token.trim()))
            .filter(|claims| claims.sub == caller.user.id)
            .map(|claims| claims.sid);
        let wanted: BTreeSet<Uuid> = by_id.chain(by_token).collect();
        let wanted: Vec<Uuid> = wanted.into_iter().collect();
        let revoked = self.revoke_sessions(caller.user.id, &wanted).await?;
        tracing::info!(user_id = %caller.user.id, revoked = revoked.len(), "sessions revoked");
        Ok(revoked)
    }

    /// Ends every session of the caller but the current one, in batches; returns how many.
    pub async fn revoke_other_sessions(&self, caller: &Authenticated) -> Result<u64, AppError> {
        let revoked = self
            .store()
            .sessions
            .delete_other_sessions(caller.user.id, Some(caller.session.id))
            .await?;
        self.publish(SessionEventKind::Revoked, caller.user.id, &revoked)
            .await;
        Ok(revoked.len() as u64)
    }

    /// Sets a new password and ends every other session of the caller. On an account with
    /// TOTP, `code` (a TOTP or recovery code) is needed too unless the session's last proof is
    /// recent. Errors: INVALID_CREDENTIALS, REAUTHENTICATION_REQUIRED, BAD_USER_INPUT
    /// (`newPassword`), UNAUTHENTICATED `REVOKED`, RATE_LIMITED.
    pub async fn change_password(
        &self,
        caller: &Authenticated,
        current_password: String,
        new_password: String,
        code: Option<&str>,
        client: ClientInfo,
    ) -> Result<(), AppError> {
        let limits = &self.inner.rate_limits;
        limits
            .check_client(Operation::ChangePassword, client.ip)
            .await?;
        limits
            .check_account(
                Operation::ChangePassword,
                &caller.user.id.to_string(),
                client.ip,
            )
            .await?;
        input::password("newPassword", &new_password)?;
        let proven = self.prove_password(caller, current_password).await?;
        self.prove_second_factor_if_on(caller, code).await?;
        let password_hash = self.inner.passwords.hash(new_password).await?;
        // A reset, another change or a disable that landed while this one hashed wins: this
        // session was ended by it.
        let ended = self
            .store()
            .users
            .change_password(
                caller.user.id,
                proven.user.credential_version,
                password_hash,
                caller.session.id,
            )
            .await?
            .ok_or(AppError::Unauthenticated(UnauthenticatedReason::Revoked))?;
        tracing::info!(user_id = %caller.user.id, ended_sessions = ended.len(), "password changed");
        self.publish(SessionEventKind::Revoked, caller.user.id, &ended)
            .await;
        Ok(())
    }

    /// The caller's account as stored, once `password` is proven to be its password (a
    /// re-authentication before a sensitive change, OWASP Authentication Cheat Sheet). Only the
    /// limit that protects the server applies to `password` (256 bytes); the policy is for new
    /// passwords. Errors: INVALID_CREDENTIALS, UNAUTHENTICATED `REVOKED` (the account is gone),
    /// SERVICE_UNAVAILABLE.
    async fn prove_password(
        &self,
        caller: &Authenticated,
        password: String,
    ) -> Result<UserCredentials, AppError> {
        let credentials = self
            .store()
            .users
            .find_credentials_by_id(caller.user.id)
            .await?
            .ok_or(AppError::Unauthenticated(UnauthenticatedReason::Revoked))?;
        if password.len() > input::PASSWORD_MAX_BYTES
            || !self
                .inner
                .passwords
                .verify(password, Some(credentials.password_hash.clone()))
                .await?
                .matches()
        {
            return Err(AppError::InvalidCredentials);
        }
        Ok(credentials)
    }

    /// Deletes the caller's account and every session of it, in one transaction, proven by the
    /// current password; the email and username are free again. Rate-limited as
    /// `changePassword` is. Errors: RATE_LIMITED, INVALID_CREDENTIALS (wrong password; nothing
    /// changed), UNAUTHENTICATED `REVOKED` (the account is already gone).
    pub async fn delete_account(
        &self,
        caller: &Authenticated,
        password: String,
        code: Option<&str>,
        client: ClientInfo,
    ) -> Result<(), AppError> {
        let limits = &self.inner.rate_limits;
        limits
            .check_client(Operation::DeleteAccount, client.ip)
            .await?;
        limits
            .check_account(
                Operation::DeleteAccount,
                &caller.user.id.to_string(),
                client.ip,
            )
            .await?;
        let proven = self.prove_password(caller, password).await?;
        self.prove_second_factor_if_on(caller, code).await?;
        // A reset, password change or disable that landed meanwhile wins (this session was
        // ended by it): the account stays.
        let ended = self
            .store()
            .users
            .delete_user(caller.user.id, Some(proven.user.credential_version))
            .await?
            .ok_or(AppError::Unauthenticated(UnauthenticatedReason::Revoked))?;
        tracing::info!(event = "account_deleted", user_id = %caller.user.id, ended_sessions = ended.len(), "account deleted by its user");
        self.publish(SessionEventKind::Revoked, caller.user.id, &ended)
            .await;
        Ok(())
    }

    /// The database connection pool's state, where the driver tells it.
    pub fn pool_status(&self) -> Option<crate::store::PoolStatus> {
        self.store().health.pool_status()
    }

    /// How many sessions are live now (for `authql_live_sessions`).
    pub async fn count_live_sessions(&self) -> Result<u64, AppError> {
        Ok(self.store().sessions.count_live_sessions(now()).await?)
    }

    /// Whether the database takes writes: the readiness of this instance, from a probe at most
    /// a second old (see [`Readiness`]). Errors: SERVICE_UNAVAILABLE.
    pub async fn check_ready(&self) -> Result<(), AppError> {
        let readiness = &self.inner.readiness;
        let ready = match readiness.fresh() {
            Some(ready) => ready,
            None => {
                let _turn = readiness.probing.lock().await;
                match readiness.fresh() {
                    Some(ready) => ready,
                    None => {
                        let ready = self.store().health.ping().await.is_ok();
                        *readiness
                            .last
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some((std::time::Instant::now(), ready));
                        ready
                    }
                }
            }
        };
        if ready {
            Ok(())
        } else {
            Err(AppError::ServiceUnavailable)
        }
    }

    /// Forgets rate-limit buckets that have filled up again.
    pub async fn prune_rate_limits(&self) -> Result<(), AppError> {
        self.inner.rate_limits.prune().await
    }

    /// Deletes sessions that ended more than `retention` ago; returns how many.
    pub async fn prune_ended_sessions(
        &self,
        retention: TimeDelta,
        batch: u64,
    ) -> Result<u64, AppError> {
        Ok(self
            .store()
            .sessions
            .prune_sessions(now() - retention, batch)
            .await?)
    }

    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        session_ids: &[Uuid],
    ) -> Result<Vec<Uuid>, AppError> {
        let revoked = self
            .store()
            .sessions
            .delete_user_sessions(user_id, session_ids)
            .await?;
        self.publish(SessionEventKind::Revoked, user_id, &revoked)
            .await;
        Ok(revoked)
    }

    fn store(&self) -> &Storage {
        &self.inner.store
    }

    /// The rate limits every operation takes from (the edge's resource-server endpoints too).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.inner.rate_limits
    }

    /// The `iss` of authql's tokens (`JWT_ISSUER`).
    pub fn issuer(&self) -> &str {
        self.inner.tokens.issuer()
    }

    fn new_session(
        &self,
        user_id: Uuid,
        credential_version: i64,
        methods: AuthMethods,
        client: ClientInfo,
        now: DateTime<Utc>,
    ) -> Session {
        Session {
            credential_version,
            authenticated_at: now,
            authentication_methods: methods,
            id: Uuid::new_v4(),
            user_id,
            access_jti: Uuid::new_v4(),
            refresh_jti: Uuid::new_v4(),
            previous_refresh_jti: None,
            created_at: now,
            last_refreshed_at: None,
            // Fixed here: refreshing rotates the tokens but never extends the session. Whole
            // seconds, as the refresh token's `exp` is, so that both end at the same instant.
            expires_at: whole_seconds(now + self.inner.lifetimes.session),
            idle_expires_at: now + self.inner.lifetimes.session_idle,
            user_agent: client.user_agent,
            ip_address: client.ip.map(|ip| ip.to_string()),
        }
    }

    fn issue(
        &self,
        user: User,
        session: Session,
        now: DateTime<Utc>,
    ) -> Result<IssuedTokens, AppError> {
        // An access token never outlives its session. JWTs count whole seconds, and so do the
        // expiry times reported with them.
        let access_expires_at =
            whole_seconds((now + self.inner.lifetimes.access_token).min(session.expires_at));
        let tokens = &self.inner.tokens;
        let custom = match &self.inner.claims_template {
            Some(template) => Some(template.render(&claims_context(&user, &session)).map_err(
                |why| AppError::internal(format!("ACCESS_TOKEN_CLAIMS_TEMPLATE: {why}")),
            )?),
            None => None,
        };
        let profile = Profile {
            email: user.email.clone(),
            email_verified: user.email_verified_at.is_some(),
            auth_time: session.authenticated_at,
            amr: session.authentication_methods,
            roles: user.roles.clone(),
            custom,
        };
        Ok(IssuedTokens {
            access_token: tokens.issue(
                TokenKind::Access,
                Subject {
                    user_id: user.id,
                    session_id: session.id,
                    jti: session.access_jti,
                    profile: Some(&profile),
                },
                now,
                access_expires_at,
            )?,
            access_token_expires_at: access_expires_at,
            refresh_token: tokens.issue(
                TokenKind::Refresh,
                Subject {
                    user_id: user.id,
                    session_id: session.id,
                    jti: session.refresh_jti,
                    profile: None,
                },
                now,
                session.expires_at,
            )?,
            refresh_token_expires_at: session.expires_at,
            user,
            session,
        })
    }
}

/// What `ACCESS_TOKEN_CLAIMS_TEMPLATE` is rendered with for a token of `session`.
fn claims_context<'a>(user: &'a User, session: &Session) -> ClaimsContext<'a> {
    ClaimsContext {
        user: TemplateUser {
            id: user.id,
            email: &user.email,
            username: &user.username,
            roles: &user.roles,
            email_verified: user.email_verified_at.is_some(),
        },
        session: TemplateSession {
            id: session.id,
            created_at: session.created_at,
            authenticated_at: session.authenticated_at,
            expires_at: session.expires_at,
        },
        amr: session.authentication_methods.iter().collect(),
    }
}

/// The user a registration is about to store, as the rest of authql sees one.
fn pending_user(user: &NewUser) -> User {
    User {
        id: user.id,
        email: user.email.clone(),
        username: user.username.clone(),
        created_at: user.created_at,
        disabled_at: None,
        credential_version: FIRST_CREDENTIAL_VERSION,
        email_verified_at: None,
        roles: Vec::new(),
    }
}

/// The metrics outcome of a failed login or refresh that has no more precise one.
fn outcome_of(error: &AppError) -> &'static str {
    match error {
        AppError::InvalidCredentials => "invalid_credentials",
        AppError::AccountDisabled => "account_disabled",
        AppError::EmailNotVerified => "email_not_verified",
        AppError::MfaRequired { .. } => "mfa_required",
        AppError::RateLimited { .. } => "rate_limited",
        AppError::ServiceUnavailable | AppError::Overloaded { .. } => "unavailable",
        AppError::Unauthenticated(_) | AppError::InvalidToken(_) => "invalid_token",
        _ => "error",
    }
}

/// Now, to the microsecond: what both SQLite and PostgreSQL store exactly, so a time written
/// and read back compares equal.
fn now() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or(now)
}

fn whole_seconds(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(TimeDelta::seconds(1)).unwrap_or(time)
}

/// The opaque cursor of a session in `mySessions` (`Session.cursor`, and `after`): its creation
/// time in microseconds and its id, base64url.
pub fn session_cursor(session: &Session) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        session.created_at.timestamp_micros(),
        session.id
    ))
}

fn parse_session_cursor(cursor: &str) -> Option<SessionCursor> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    if cursor.len() > 128 {
        return None;
    }
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once(':')?;
    Some(SessionCursor {
        created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: Uuid::parse_str(id).ok()?,
    })
}
