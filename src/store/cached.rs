//! A coherent cache of the lookup behind every authenticated request (`session id → (user,
//! session)`), as a decorator over any [`Store`], for a database that this process alone
//! writes: SQLite, whose file authql locks (see [`DatabaseLock`]).
//!
//! It stays exact rather than eventually right:
//! - every write method invalidates what it may have changed *before it returns*, so a revoked,
//!   rotated or logged-out token is refused on the very next request;
//! - a miss that races a write cannot put back a stale row: every invalidation bumps a
//!   generation, and a miss fills the cache only if the generation it started with is still
//!   current;
//! - a hit still checks the presented access jti and the session's idle and absolute expiry
//!   against the clock, as the database query would.
//!
//! There is no such cache on PostgreSQL, where other instances write the same rows.

use std::{num::NonZeroUsize, path::PathBuf, sync::Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lru::LruCache;
use uuid::Uuid;

use super::{NewSession, NewUser, Rotation, Session, Store, StoreResult, User, UserCredentials};

/// How many sessions the cache holds at most (least recently used dropped first): about 300
/// bytes each.
pub const SESSION_CACHE_CAPACITY: usize = 50_000;

/// `inner` with the session lookup cached (see the module).
pub struct CachedStore<S> {
    inner: S,
    state: Mutex<CacheState>,
}

struct CacheState {
    generation: u64,
    sessions: LruCache<Uuid, (User, Session)>,
}

impl<S: Store> CachedStore<S> {
    pub fn new(inner: S, capacity: NonZeroUsize) -> Self {
        Self {
            inner,
            state: Mutex::new(CacheState {
                generation: 0,
                sessions: LruCache::new(capacity),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // The cache holds no invariant a panic could break half-way; at worst it is cleared.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the sessions `forget` picks, and makes misses in flight not fill.
    fn invalidate(&self, forget: impl Fn(&User, &Session) -> bool) {
        let mut state = self.state();
        state.generation += 1;
        let stale: Vec<Uuid> = state
            .sessions
            .iter()
            .filter(|(_, (user, session))| forget(user, session))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            state.sessions.pop(&id);
        }
    }

    fn invalidate_session(&self, session_id: Uuid) {
        let mut state = self.state();
        state.generation += 1;
        state.sessions.pop(&session_id);
    }

    /// Whether `session_id` is cached now (for tests).
    pub fn is_cached(&self, session_id: Uuid) -> bool {
        self.state().sessions.contains(&session_id)
    }
}

#[async_trait]
impl<S: Store> Store for CachedStore<S> {
    async fn find_session_by_access_jti(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Session)>> {
        let generation = {
            let mut state = self.state();
            if let Some((user, session)) = state.sessions.get(&session_id) {
                let accepted = session.access_jti == access_jti && session.is_live(now);
                return Ok(accepted.then(|| (user.clone(), session.clone())));
            }
            state.generation
        };
        // A miss: read the row whatever its jti and liveness, and keep it if nothing was written
        // meanwhile.
        let found = self.inner.find_session(session_id).await?;
        if let Some(found) = &found {
            let mut state = self.state();
            if state.generation == generation {
                state.sessions.put(session_id, found.clone());
            }
        }
        Ok(found.filter(|(_, session)| session.access_jti == access_jti && session.is_live(now)))
    }

    async fn find_session(&self, session_id: Uuid) -> StoreResult<Option<(User, Session)>> {
        self.inner.find_session(session_id).await
    }

    async fn rotate_session(&self, rotation: Rotation) -> StoreResult<Option<(User, Session)>> {
        let rotated = self.inner.rotate_session(rotation).await;
        self.invalidate_session(rotation.session_id);
        rotated
    }

    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        session_ids: &[Uuid],
    ) -> StoreResult<Vec<Uuid>> {
        let deleted = self.inner.delete_user_sessions(user_id, session_ids).await;
        self.invalidate(|user, session| user.id == user_id && session_ids.contains(&session.id));
        deleted
    }

    async fn delete_other_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>> {
        let deleted = self.inner.delete_other_sessions(user_id, keep).await;
        self.invalidate(|user, session| user.id == user_id && Some(session.id) != keep);
        deleted
    }

    async fn set_user_disabled(
        &self,
        user_id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Vec<Uuid>>> {
        let ended = self.inner.set_user_disabled(user_id, disabled_at).await;
        // The cached rows carry the user, `disabled_at` included.
        self.invalidate(|user, _| user.id == user_id);
        ended
    }

    async fn delete_user(&self, user_id: Uuid) -> StoreResult<Option<Vec<Uuid>>> {
        let ended = self.inner.delete_user(user_id).await;
        self.invalidate(|user, _| user.id == user_id);
        ended
    }

    async fn change_password(
        &self,
        user_id: Uuid,
        password_hash: String,
        keep_session: Uuid,
    ) -> StoreResult<Vec<Uuid>> {
        let ended = self
            .inner
            .change_password(user_id, password_hash, keep_session)
            .await;
        self.invalidate(|user, session| user.id == user_id && session.id != keep_session);
        ended
    }

    async fn prune_sessions(&self, ended_before: DateTime<Utc>, batch: u64) -> StoreResult<u64> {
        let pruned = self.inner.prune_sessions(ended_before, batch).await;
        self.invalidate(|_, session| !session.is_live(ended_before));
        pruned
    }

    // Writes that change no cached row: a new user or session is not cached until looked up.
    async fn create_user_with_session(
        &self,
        user: NewUser,
        session: NewSession,
    ) -> StoreResult<(User, Session)> {
        self.inner.create_user_with_session(user, session).await
    }

    async fn create_session(&self, session: NewSession) -> StoreResult<Session> {
        self.inner.create_session(session).await
    }

    async fn find_credentials(
        &self,
        login_normalized: &str,
    ) -> StoreResult<Option<UserCredentials>> {
        self.inner.find_credentials(login_normalized).await
    }

    async fn find_credentials_by_id(&self, user_id: Uuid) -> StoreResult<Option<UserCredentials>> {
        self.inner.find_credentials_by_id(user_id).await
    }

    async fn list_live_sessions(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Session>> {
        self.inner.list_live_sessions(user_id, now).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn count_live_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.count_live_sessions(now).await
    }

    async fn broadcast_events(&self, payload: &str) -> StoreResult<bool> {
        self.inner.broadcast_events(payload).await
    }

    async fn listen_events(&self) -> StoreResult<Option<super::EventStream>> {
        self.inner.listen_events().await
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        self.inner.pool_status()
    }

    async fn setting_or_insert(&self, name: &str, candidate: String) -> StoreResult<String> {
        self.inner.setting_or_insert(name, candidate).await
    }

    async fn take_rate_limit_token(
        &self,
        key: &str,
        now: DateTime<Utc>,
        emission_interval: std::time::Duration,
        burst: u32,
    ) -> StoreResult<Option<std::time::Duration>> {
        self.inner
            .take_rate_limit_token(key, now, emission_interval, burst)
            .await
    }

    async fn prune_rate_limit_buckets(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.prune_rate_limit_buckets(now).await
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
