//! A coherent cache of the lookup behind every authenticated request (`session id → (user,
//! session)`), as a decorator over a backend's [`UserStore`] and [`SessionStore`] (and nothing
//! else: settings, buckets and events go to the backend directly, see `Storage::cached`), for a
//! database that this process alone writes: SQLite, whose file authql locks (see
//! [`DatabaseLock`]).
//!
//! It stays exact rather than eventually right:
//! - every write method makes the cache forget what it may change, before the write and again
//!   after it, so a revoked, rotated or logged-out token is refused on the very next request;
//! - the write itself runs to its end on a task of its own, and the forgetting after it runs
//!   when that task ends, however it ends: a request that times out or is dropped half-way
//!   (its future cancelled while the database still applies the statement) cannot leave the
//!   cache holding what the database no longer has;
//! - a miss that races a write cannot put back a stale row: every forgetting bumps a
//!   generation, and a miss fills the cache only if the generation it started with is still
//!   current;
//! - forgetting is O(1): one session by its id, or every session of a user by moving the
//!   user's epoch on (a cached row counts only while it carries its user's current epoch);
//! - a hit still checks the presented access jti, the session's idle and absolute expiry
//!   against the clock and its credential version against its user's, as the database query
//!   would.
//!
//! There is no such cache on PostgreSQL or MongoDB, where other instances write the same rows.

use std::{
    future::Future,
    num::NonZeroUsize,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lru::LruCache;
use uuid::Uuid;

use super::{
    AuthMethods, Challenge, ChallengeKind, CreatedSession, FactorRemoval, Identity, IdentityStore,
    IssuedToken, Linking, NewSession, NewUser, PasskeyAddition, RoleChange, Rotation,
    SecondFactorStore, SecondFactors, Session, SessionPage, SessionStore, StoreError, StoreResult,
    StoredPasskey, TokenRefusal, TotpCredential, Unlinking, User, UserCredentials, UserStore,
    VerifiedEmail,
};

/// How many sessions the cache holds at most (least recently used dropped first): about 300
/// bytes each. As many users' epochs are kept.
pub const SESSION_CACHE_CAPACITY: usize = 50_000;

/// `inner` with the session lookup cached (see the module).
pub struct CachedStore<S> {
    inner: S,
    state: Arc<Mutex<CacheState>>,
    /// Writes whose task has not ended yet.
    in_flight: Arc<AtomicUsize>,
}

/// A cached lookup, with the epoch its user had when it was filled.
struct Cached {
    user: User,
    session: Session,
    epoch: u64,
}

struct CacheState {
    generation: u64,
    sessions: LruCache<Uuid, Cached>,
    /// Each user's current epoch; a user without one has no valid cached rows.
    epochs: LruCache<Uuid, u64>,
    next_epoch: u64,
}

impl CacheState {
    fn forget(&mut self, forget: &Forget) {
        self.generation += 1;
        match forget {
            Forget::Nothing => {}
            Forget::Sessions(ids) => {
                for id in ids {
                    self.sessions.pop(id);
                }
            }
            Forget::User(user_id) => {
                self.next_epoch += 1;
                self.epochs.put(*user_id, self.next_epoch);
            }
            Forget::Everything => {
                self.sessions.clear();
                self.epochs.clear();
            }
        }
    }

    /// The cached row of `session_id`, if it is still valid.
    fn get(&mut self, session_id: &Uuid) -> Option<(&User, &Session)> {
        let valid = self
            .sessions
            .peek(session_id)
            .map(|cached| self.epochs.get(&cached.user.id) == Some(&cached.epoch))?;
        if !valid {
            self.sessions.pop(session_id);
            return None;
        }
        self.sessions
            .get(session_id)
            .map(|cached| (&cached.user, &cached.session))
    }

    fn fill(&mut self, user: User, session: Session) {
        let epoch = match self.epochs.get(&user.id) {
            Some(epoch) => *epoch,
            None => {
                self.next_epoch += 1;
                self.epochs.put(user.id, self.next_epoch);
                self.next_epoch
            }
        };
        self.sessions.put(
            session.id,
            Cached {
                user,
                session,
                epoch,
            },
        );
    }
}

/// What a write may change, and so what the cache forgets around it.
#[derive(Clone)]
enum Forget {
    Nothing,
    Sessions(Vec<Uuid>),
    /// Every session of the user (and the user's own row in them).
    User(Uuid),
    /// All of it: a write whose effect is known only from its result, when its task ended
    /// before it had one (a panic).
    Everything,
}

/// Forgets once more when dropped: after the write, however its task ends.
struct ForgetAfter {
    state: Arc<Mutex<CacheState>>,
    forget: Forget,
    in_flight: Arc<AtomicUsize>,
}

impl ForgetAfter {
    /// What to forget, now that the write's result tells.
    fn learn(&mut self, forget: Forget) {
        self.forget = forget;
    }
}

impl Drop for ForgetAfter {
    fn drop(&mut self) {
        lock(&self.state).forget(&self.forget);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock(state: &Mutex<CacheState>) -> std::sync::MutexGuard<'_, CacheState> {
    // The cache holds no invariant a panic could break half-way; at worst it is cleared.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the cache can wrap: a backend's users and sessions, and its second factors (turning one
/// on ends the user's other sessions), cheap to clone (a pool handle), so that a write can run
/// on a task of its own.
pub trait CachedInner:
    UserStore + SessionStore + SecondFactorStore + IdentityStore + Clone
{
}

impl<T: UserStore + SessionStore + SecondFactorStore + IdentityStore + Clone> CachedInner for T {}

impl<S: CachedInner> CachedStore<S> {
    /// `inner` with a cache of at most `capacity` sessions (and as many users' epochs).
    pub fn new(inner: S, capacity: NonZeroUsize) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new(CacheState {
                generation: 0,
                sessions: LruCache::new(capacity),
                epochs: LruCache::new(capacity),
                next_epoch: 0,
            })),
            in_flight: Arc::default(),
        }
    }

    /// How many writes are still running, cancelled callers' included (for tests: the state
    /// is settled when it is 0).
    pub fn writes_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether `session_id` is cached now, and valid (for tests).
    pub fn is_cached(&self, session_id: Uuid) -> bool {
        lock(&self.state).get(&session_id).is_some()
    }

    /// Runs `write` on the inner store as the module says: forgets before, runs it on a task
    /// that no cancellation of the caller stops, forgets again when that task ends.
    async fn write<T, F>(
        &self,
        forget: Forget,
        write: impl FnOnce(S) -> F + Send + 'static,
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Future<Output = StoreResult<T>> + Send + 'static,
    {
        lock(&self.state).forget(&forget);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let after = ForgetAfter {
            state: self.state.clone(),
            forget,
            in_flight: self.in_flight.clone(),
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _after = after;
            write(inner).await
        })
        .await
        .map_err(|_| StoreError::Database("a database write ended abnormally".into()))?
    }

    /// `write` for a write that tells only by its result what it changed (`affected`): nothing
    /// is forgotten before it, and everything if its task ends without a result.
    async fn write_then_forget<T, F>(
        &self,
        write: impl FnOnce(S) -> F + Send + 'static,
        affected: impl FnOnce(&StoreResult<T>) -> Forget + Send + 'static,
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Future<Output = StoreResult<T>> + Send + 'static,
    {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut after = ForgetAfter {
            state: self.state.clone(),
            forget: Forget::Everything,
            in_flight: self.in_flight.clone(),
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let result = write(inner).await;
            after.learn(affected(&result));
            drop(after);
            result
        })
        .await
        .map_err(|_| StoreError::Database("a database write ended abnormally".into()))?
    }
}

#[async_trait]
impl<S: CachedInner> UserStore for CachedStore<S> {
    // A new user's session is not cached until looked up.
    async fn register_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        verification: Option<IssuedToken>,
    ) -> StoreResult<(User, Option<Session>)> {
        self.inner.register_user(user, session, verification).await
    }

    async fn reset_password(
        &self,
        digest: &str,
        now: DateTime<Utc>,
        password_hash: String,
    ) -> StoreResult<Result<(User, Vec<Uuid>), TokenRefusal>> {
        let digest = digest.to_owned();
        self.write_then_forget(
            move |inner| async move { inner.reset_password(&digest, now, password_hash).await },
            |result| match result {
                Ok(Ok((user, _))) => Forget::User(user.id),
                Ok(Err(_)) => Forget::Nothing,
                // Whether it landed is not known.
                Err(_) => Forget::Everything,
            },
        )
        .await
    }

    async fn verify_email(
        &self,
        digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<VerifiedEmail, TokenRefusal>> {
        // The cached rows carry the user, its address included.
        let digest = digest.to_owned();
        self.write_then_forget(
            move |inner| async move { inner.verify_email(&digest, now).await },
            |result| match result {
                Ok(Ok(verified)) => Forget::User(verified.user.id),
                Ok(Err(_)) => Forget::Nothing,
                Err(_) => Forget::Everything,
            },
        )
        .await
    }

    async fn mark_email_verified(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        self.write(Forget::User(user_id), move |inner| async move {
            inner.mark_email_verified(user_id, at).await
        })
        .await
    }

    async fn set_user_disabled(
        &self,
        user_id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        // The cached rows carry the user, `disabled_at` included.
        self.write(Forget::User(user_id), move |inner| async move {
            inner.set_user_disabled(user_id, disabled_at).await
        })
        .await
    }

    async fn change_user_role(
        &self,
        user_id: Uuid,
        role: &str,
        grant: bool,
    ) -> StoreResult<RoleChange> {
        // The cached rows carry the user, its roles included.
        let role = role.to_owned();
        self.write(Forget::User(user_id), move |inner| async move {
            inner.change_user_role(user_id, &role, grant).await
        })
        .await
    }

    async fn delete_user(
        &self,
        user_id: Uuid,
        proven_version: Option<i64>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        self.write(Forget::User(user_id), move |inner| async move {
            inner.delete_user(user_id, proven_version).await
        })
        .await
    }

    async fn change_password(
        &self,
        user_id: Uuid,
        proven_version: i64,
        password_hash: String,
        keep_session: Uuid,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        self.write(Forget::User(user_id), move |inner| async move {
            inner
                .change_password(user_id, proven_version, password_hash, keep_session)
                .await
        })
        .await
    }

    async fn replace_password_hash(
        &self,
        user_id: Uuid,
        current: &str,
        new: String,
    ) -> StoreResult<bool> {
        // The hash is not cached; the write still runs to its end whatever happens to the
        // caller.
        let current = current.to_owned();
        self.write(Forget::Nothing, move |inner| async move {
            inner.replace_password_hash(user_id, &current, new).await
        })
        .await
    }

    // Writes that change no cached row: a new user's session is not cached until looked up.
    async fn find_credentials(
        &self,
        login_normalized: &str,
    ) -> StoreResult<Option<UserCredentials>> {
        self.inner.find_credentials(login_normalized).await
    }

    async fn find_credentials_by_id(&self, user_id: Uuid) -> StoreResult<Option<UserCredentials>> {
        self.inner.find_credentials_by_id(user_id).await
    }
}

#[async_trait]
impl<S: CachedInner> SessionStore for CachedStore<S> {
    async fn find_session_by_access_jti(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Session)>> {
        let accepts = |user: &User, session: &Session| {
            session.access_jti == access_jti && session.is_live(now) && session.is_current_for(user)
        };
        let generation = {
            let mut state = lock(&self.state);
            if let Some((user, session)) = state.get(&session_id) {
                return Ok(accepts(user, session).then(|| (user.clone(), session.clone())));
            }
            state.generation
        };
        // A miss: read the row whatever its jti and liveness, and keep it if nothing was written
        // meanwhile.
        let found = self.inner.find_session(session_id).await?;
        if let Some((user, session)) = &found {
            let mut state = lock(&self.state);
            if state.generation == generation {
                state.fill(user.clone(), session.clone());
            }
        }
        Ok(found.filter(|(user, session)| accepts(user, session)))
    }

    async fn find_session(&self, session_id: Uuid) -> StoreResult<Option<(User, Session)>> {
        self.inner.find_session(session_id).await
    }

    async fn rotate_session(&self, rotation: Rotation) -> StoreResult<Option<(User, Session)>> {
        self.write(
            Forget::Sessions(vec![rotation.session_id]),
            move |inner| async move { inner.rotate_session(rotation).await },
        )
        .await
    }

    async fn reauthenticate_session(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        at: DateTime<Utc>,
        methods: AuthMethods,
    ) -> StoreResult<Option<Session>> {
        self.write(
            Forget::Sessions(vec![session_id]),
            move |inner| async move {
                inner
                    .reauthenticate_session(session_id, access_jti, at, methods)
                    .await
            },
        )
        .await
    }

    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        session_ids: &[Uuid],
    ) -> StoreResult<Vec<Uuid>> {
        let ids = session_ids.to_vec();
        self.write(Forget::Sessions(ids.clone()), move |inner| async move {
            inner.delete_user_sessions(user_id, &ids).await
        })
        .await
    }

    async fn delete_other_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>> {
        self.write(Forget::User(user_id), move |inner| async move {
            inner.delete_other_sessions(user_id, keep).await
        })
        .await
    }

    async fn create_session(
        &self,
        session: NewSession,
        max_sessions: usize,
    ) -> StoreResult<Option<CreatedSession>> {
        // It may end the user's least recently used sessions.
        let user_id = session.user_id;
        self.write(Forget::User(user_id), move |inner| async move {
            inner.create_session(session, max_sessions).await
        })
        .await
    }

    async fn prune_sessions(&self, ended_before: DateTime<Utc>, batch: u64) -> StoreResult<u64> {
        // Only ended sessions go, which a hit refuses anyway (it checks the expiry).
        self.inner.prune_sessions(ended_before, batch).await
    }

    async fn list_live_sessions(
        &self,
        user_id: Uuid,
        credential_version: i64,
        now: DateTime<Utc>,
        page: SessionPage,
    ) -> StoreResult<Vec<Session>> {
        self.inner
            .list_live_sessions(user_id, credential_version, now, page)
            .await
    }

    async fn count_live_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.count_live_sessions(now).await
    }
}

/// Second factors go to the backend; the writes that move a user's credential version on and
/// end their sessions make the cache forget the user, as a password change does.
/// Identities: an unlink moves the user's credential version on and ends sessions.
#[async_trait]
impl<S: CachedInner> IdentityStore for CachedStore<S> {
    async fn find_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<(Identity, UserCredentials)>> {
        self.inner.find_identity(issuer, subject).await
    }

    async fn identities(&self, user_id: Uuid) -> StoreResult<Vec<Identity>> {
        self.inner.identities(user_id).await
    }

    async fn link_identity(&self, identity: Identity) -> StoreResult<Linking> {
        self.inner.link_identity(identity).await
    }

    async fn unlinked_before(
        &self,
        email_normalized: &str,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<bool> {
        self.inner
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
        let provider = provider.to_owned();
        self.write(Forget::User(user_id), move |inner| async move {
            inner
                .unlink_identity(user_id, &provider, keep_session, at)
                .await
        })
        .await
    }
}

#[async_trait]
impl<S: CachedInner> SecondFactorStore for CachedStore<S> {
    async fn totp(&self, user_id: Uuid) -> StoreResult<Option<TotpCredential>> {
        self.inner.totp(user_id).await
    }

    async fn begin_totp(&self, credential: TotpCredential) -> StoreResult<bool> {
        self.inner.begin_totp(credential).await
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
        self.write(Forget::User(user_id), move |inner| async move {
            inner
                .confirm_totp(user_id, &secret, step, recovery_digests, keep_session, at)
                .await
        })
        .await
    }

    async fn disable_totp(&self, user_id: Uuid, keep_session: Uuid) -> StoreResult<FactorRemoval> {
        self.write(Forget::User(user_id), move |inner| async move {
            inner.disable_totp(user_id, keep_session).await
        })
        .await
    }

    async fn take_totp_step(&self, user_id: Uuid, step: i64) -> StoreResult<bool> {
        self.inner.take_totp_step(user_id, step).await
    }

    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        digests: Vec<String>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.inner
            .replace_recovery_codes(user_id, digests, at)
            .await
    }

    async fn recovery_code_unused(&self, user_id: Uuid, digest: &str) -> StoreResult<bool> {
        self.inner.recovery_code_unused(user_id, digest).await
    }

    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        digest: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.inner.use_recovery_code(user_id, digest, at).await
    }

    async fn second_factors(&self, user_id: Uuid) -> StoreResult<SecondFactors> {
        self.inner.second_factors(user_id).await
    }

    async fn add_passkey(
        &self,
        passkey: StoredPasskey,
        keep_session: Uuid,
    ) -> StoreResult<PasskeyAddition> {
        self.write(Forget::User(passkey.user_id), move |inner| async move {
            inner.add_passkey(passkey, keep_session).await
        })
        .await
    }

    async fn passkeys(&self, user_id: Uuid) -> StoreResult<Vec<StoredPasskey>> {
        self.inner.passkeys(user_id).await
    }

    async fn passkey_by_credential_id(
        &self,
        credential_id: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        self.inner.passkey_by_credential_id(credential_id).await
    }

    async fn rename_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> StoreResult<Option<StoredPasskey>> {
        self.inner.rename_passkey(user_id, id, name).await
    }

    async fn delete_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        keep_session: Uuid,
    ) -> StoreResult<FactorRemoval> {
        self.write(Forget::User(user_id), move |inner| async move {
            inner.delete_passkey(user_id, id, keep_session).await
        })
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
        self.inner
            .use_passkey(id, seen_counter, counter, credential, at)
            .await
    }

    async fn reset_second_factors(&self, user_id: Uuid) -> StoreResult<Option<Vec<Uuid>>> {
        self.write(Forget::User(user_id), move |inner| async move {
            inner.reset_second_factors(user_id).await
        })
        .await
    }

    async fn put_challenge(&self, challenge: Challenge) -> StoreResult<()> {
        self.inner.put_challenge(challenge).await
    }

    async fn take_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        self.inner.take_challenge(digest, kind, now).await
    }

    async fn attempt_challenge(
        &self,
        digest: &str,
        kind: ChallengeKind,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Challenge>> {
        self.inner
            .attempt_challenge(digest, kind, max_attempts, now)
            .await
    }

    async fn challenge_expired(&self, digest: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        self.inner.challenge_expired(digest, now).await
    }

    async fn prune_challenges(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.prune_challenges(before).await
    }
}

/// An exclusive lock on `<database file>.lock`, held for as long as this value lives, so that
/// no second authql serves the same SQLite file (its session cache would go stale).
pub struct DatabaseLock {
    _file: std::fs::File,
}

impl DatabaseLock {
    /// Takes the lock beside the SQLite file of `database_url`. Errors: another process holds
    /// it, or the lock file cannot be created; the message says what to do.
    pub fn acquire(database_path: PathBuf) -> Result<Self, String> {
        let lock_path = beside(&database_path, ".lock");
        Self::try_acquire(database_path)?.ok_or_else(|| {
            format!(
                "another authql is already serving this SQLite database ({} is locked). One \
                 process serves a SQLite file; to run several instances, use PostgreSQL \
                 (DATABASE_URL=postgres://...)",
                lock_path.display()
            )
        })
    }

    /// As `acquire`, but `Ok(None)` when another process holds the lock.
    pub fn try_acquire(database_path: PathBuf) -> Result<Option<Self>, String> {
        let lock_path = beside(&database_path, ".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| format!("cannot create {}: {error}", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(format!("cannot lock {}: {error}", lock_path.display()))
            }
        }
    }
}

/// The path of a file beside `database_path`: its name with `suffix` added.
pub fn beside(database_path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut path = database_path.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}
