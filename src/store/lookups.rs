//! Coalesced session lookups: the check behind every authenticated request, sent to a database
//! server as one statement for all the requests that arrived while the previous one ran.
//!
//! A lookup joins a queue. When no batch is running, the lookup starts one: a task takes
//! everything queued, sends it as one statement (`WHERE id = ANY($1)` on PostgreSQL, one `$in`
//! on MongoDB), answers each waiting lookup, and goes on while the queue is not empty. There is
//! no timer: a lookup that finds the queue idle goes out at once, and under load a batch holds
//! every lookup that arrived during the round trip before it. pgbench's ceiling (one statement
//! per transaction) is per statement, so batching is how authql serves more requests per second
//! than the database serves statements.
//!
//! **Nothing can be stale.** Each lookup is sent in a batch that is taken from the queue after
//! the lookup joined it, so the statement starts after the request arrived: a revocation
//! committed before the request is seen by it (PostgreSQL's read committed takes each
//! statement's snapshot when it starts; MongoDB reads the primary). Each lookup is then judged
//! on the rows with its own access jti and its own clock ([`accepts`]), exactly as the single
//! lookup's `WHERE` clause would.
//!
//! **Nothing can hang or leak.** The batch runs on a task of its own, so a request that goes
//! away does not cancel the others' statement; its answer is dropped. The source is handed back
//! by a guard even if the batch panics, and the lookups of that batch then get
//! `SERVICE_UNAVAILABLE`. A batch holds at most [`MAX_BATCH`] lookups; the rest wait for the
//! next.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Session, StoreError, StoreResult, User};

/// The most lookups one statement carries.
pub const MAX_BATCH: usize = 512;

/// Where batches are read: one statement per call.
#[async_trait]
pub trait SessionBatches: Send + 'static {
    /// The sessions with these ids (each at most once, at most [`MAX_BATCH`]), live or not,
    /// each with its user; sessions without one are left out. Errors: `Unavailable` when the
    /// database cannot answer.
    async fn sessions_by_ids(&mut self, ids: &[Uuid]) -> StoreResult<Vec<(User, Session)>>;
}

/// One queue of lookups and the source its batches are read from.
pub struct SessionLookups {
    state: Arc<Mutex<State>>,
    /// The longest a lookup waits for its answer, from when it joined the queue.
    wait: Duration,
}

struct State {
    waiting: Vec<Waiting>,
    /// `None` while a batch task holds it.
    source: Option<Box<dyn SessionBatches>>,
}

struct Waiting {
    session_id: Uuid,
    access_jti: Uuid,
    now: DateTime<Utc>,
    answer: oneshot::Sender<StoreResult<Option<(User, Session)>>>,
}

impl SessionLookups {
    /// Lookups read from `source`, each answered within `wait` of its arrival (else
    /// `Unavailable`): a statement that stalls holds the queue behind it, and without a bound
    /// per lookup one that joined just after a batch went out would wait for that batch's
    /// timeout and then for its own.
    pub fn new(source: impl SessionBatches, wait: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                waiting: Vec::new(),
                source: Some(Box::new(source)),
            })),
            wait,
        }
    }

    /// The session and its user, if the session is live at `now`, still holds `access_jti`
    /// and was made under its user's current credentials: `find_session_by_access_jti`'s
    /// contract, answered from the next batch. Errors: the batch's (`Unavailable` when the
    /// database is away), or `Unavailable` when no answer came within the queue's `wait` or
    /// the batch task ended without one.
    pub async fn find(
        &self,
        session_id: Uuid,
        access_jti: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Session)>> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = lock(&self.state);
            state.waiting.push(Waiting {
                session_id,
                access_jti,
                now,
                answer,
            });
            state.source.take()
        };
        if let Some(source) = start {
            tokio::spawn(run_batches(self.state.clone(), source));
        }
        match tokio::time::timeout(self.wait, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "the session lookup ended without an answer".into(),
            )),
            // The batch goes on; its answer to this lookup is dropped.
            Err(_) => Err(StoreError::Unavailable(
                "the session lookup timed out".into(),
            )),
        }
    }
}

/// Whether `found` answers a lookup of `access_jti` at `now` (the single lookup's `WHERE`).
pub fn accepts(found: &(User, Session), access_jti: Uuid, now: DateTime<Utc>) -> bool {
    let (user, session) = found;
    session.access_jti == access_jti && session.is_live(now) && session.is_current_for(user)
}

/// Hands the source back to the queue when dropped, after a panic too.
struct Lent {
    state: Arc<Mutex<State>>,
    source: Option<Box<dyn SessionBatches>>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Still lent: the batch ended early (a panic). Lookups that joined meanwhile must not
        // wait for the next one to arrive: a new batch task starts for them.
        if let Some(source) = self.source.take() {
            let mut state = lock(&self.state);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) if !state.waiting.is_empty() => {
                    drop(state);
                    runtime.spawn(run_batches(self.state.clone(), source));
                }
                _ => state.source = Some(source),
            }
        }
    }
}

async fn run_batches(state: Arc<Mutex<State>>, source: Box<dyn SessionBatches>) {
    let mut lent = Lent {
        state: state.clone(),
        source: Some(source),
    };
    loop {
        let batch: Vec<Waiting> = {
            let mut queue = lock(&state);
            if queue.waiting.is_empty() {
                // Handed back under the same lock that saw the queue empty: a lookup that
                // joins after this finds the source and starts the next batch itself.
                queue.source = lent.source.take();
                return;
            }
            let take = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..take).collect()
        };
        // Requests that went away meanwhile need no answer.
        let batch: Vec<Waiting> = batch
            .into_iter()
            .filter(|waiting| !waiting.answer.is_closed())
            .collect();
        if batch.is_empty() {
            continue;
        }
        let mut ids: Vec<Uuid> = batch.iter().map(|waiting| waiting.session_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let Some(source) = lent.source.as_mut() else {
            return;
        };
        let found = source.sessions_by_ids(&ids).await;
        for waiting in batch {
            let answer = match &found {
                Ok(rows) => Ok(rows
                    .iter()
                    .find(|(_, session)| session.id == waiting.session_id)
                    .filter(|row| accepts(row, waiting.access_jti, waiting.now))
                    .cloned()),
                Err(error) => Err(copy_of(error)),
            };
            let _ = waiting.answer.send(answer);
        }
    }
}

/// The batch's error for one of its lookups: the same kind, with the driver's text.
fn copy_of(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(cause) => StoreError::Unavailable(cause.to_string().into()),
        other => StoreError::Database(other.to_string().into()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The queue holds no invariant a panic could break half-way.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::AuthMethods;

    /// A source over a fixed set of rows that counts its statements and can be held up.
    struct Rows {
        rows: Vec<(User, Session)>,
        statements: Arc<AtomicUsize>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
        fail: bool,
        panic: bool,
    }

    #[async_trait]
    impl SessionBatches for Rows {
        async fn sessions_by_ids(&mut self, ids: &[Uuid]) -> StoreResult<Vec<(User, Session)>> {
            assert!(!ids.is_empty() && ids.len() <= MAX_BATCH);
            self.statements.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if self.panic {
                panic!("a source that panics");
            }
            if self.fail {
                return Err(StoreError::Unavailable("away".into()));
            }
            Ok(self
                .rows
                .iter()
                .filter(|(_, session)| ids.contains(&session.id))
                .cloned()
                .collect())
        }
    }

    fn row(credential_version: i64) -> (User, Session) {
        let now = Utc::now();
        let user = User {
            id: Uuid::new_v4(),
            email: "a@example.com".into(),
            username: "a".into(),
            created_at: now,
            disabled_at: None,
            credential_version: 1,
            email_verified_at: None,
            roles: Vec::new(),
        };
        let session = Session {
            id: Uuid::new_v4(),
            user_id: user.id,
            access_jti: Uuid::new_v4(),
            refresh_jti: Uuid::new_v4(),
            previous_refresh_jti: None,
            created_at: now,
            last_refreshed_at: None,
            expires_at: now + chrono::Duration::hours(1),
            idle_expires_at: now + chrono::Duration::minutes(30),
            user_agent: None,
            ip_address: None,
            credential_version,
            authenticated_at: now,
            authentication_methods: AuthMethods::default(),
        };
        (user, session)
    }

    fn rows(rows: Vec<(User, Session)>) -> (Rows, Arc<AtomicUsize>) {
        let statements = Arc::new(AtomicUsize::new(0));
        (
            Rows {
                rows,
                statements: statements.clone(),
                gate: None,
                fail: false,
                panic: false,
            },
            statements,
        )
    }

    #[tokio::test]
    async fn each_lookup_is_judged_by_its_own_jti_clock_and_credentials() {
        let live = row(1);
        let stale_credentials = row(0);
        let (source, _) = rows(vec![live.clone(), stale_credentials.clone()]);
        let lookups = SessionLookups::new(source, Duration::from_secs(10));
        let now = Utc::now();
        let found = lookups
            .find(live.1.id, live.1.access_jti, now)
            .await
            .unwrap();
        assert_eq!(found.map(|(_, session)| session.id), Some(live.1.id));
        // Another jti of the same session, a later clock, older credentials, an unknown id.
        for (id, jti, at) in [
            (live.1.id, Uuid::new_v4(), now),
            (
                live.1.id,
                live.1.access_jti,
                now + chrono::Duration::hours(2),
            ),
            (stale_credentials.1.id, stale_credentials.1.access_jti, now),
            (Uuid::new_v4(), live.1.access_jti, now),
        ] {
            assert!(lookups.find(id, jti, at).await.unwrap().is_none());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_that_arrive_during_a_statement_share_the_next_one() {
        let found = row(1);
        let (mut source, statements) = rows(vec![found.clone()]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        source.gate = Some(gate.clone());
        let lookups = Arc::new(SessionLookups::new(source, Duration::from_secs(10)));
        let first = {
            let lookups = lookups.clone();
            let (id, jti) = (found.1.id, found.1.access_jti);
            tokio::spawn(async move { lookups.find(id, jti, Utc::now()).await })
        };
        while statements.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // 100 lookups join while the first statement is held up.
        let later: Vec<_> = (0..100)
            .map(|_| {
                let lookups = lookups.clone();
                let (id, jti) = (found.1.id, found.1.access_jti);
                tokio::spawn(async move { lookups.find(id, jti, Utc::now()).await })
            })
            .collect();
        while lock(&lookups.state).waiting.len() < 100 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        assert!(first.await.unwrap().unwrap().is_some());
        for lookup in later {
            assert!(lookup.await.unwrap().unwrap().is_some());
        }
        assert_eq!(
            statements.load(Ordering::SeqCst),
            2,
            "one statement for 100"
        );
        // Idle again: the next lookup goes out at once, alone.
        gate.add_permits(1);
        assert!(
            lookups
                .find(found.1.id, found.1.access_jti, Utc::now())
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(statements.load(Ordering::SeqCst), 3);
    }

    /// Each lookup waits at most `wait` from its own arrival, also when it joined behind a
    /// statement that stalls (the outside attack: it waited for that statement's timeout, then
    /// for its own).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_behind_a_stalled_statement_waits_at_most_its_own_bound() {
        let found = row(1);
        let (mut source, statements) = rows(vec![found.clone()]);
        source.gate = Some(Arc::new(tokio::sync::Semaphore::new(0)));
        let wait = Duration::from_millis(300);
        let lookups = Arc::new(SessionLookups::new(source, wait));
        let (id, jti) = (found.1.id, found.1.access_jti);
        let timed = |lookups: Arc<SessionLookups>| {
            tokio::spawn(async move {
                let asked = std::time::Instant::now();
                let answer = lookups.find(id, jti, Utc::now()).await;
                (answer, asked.elapsed())
            })
        };
        let first = timed(lookups.clone());
        while statements.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let behind = timed(lookups.clone());
        for lookup in [first, behind] {
            let (answer, waited) = lookup.await.unwrap();
            assert!(matches!(answer, Err(StoreError::Unavailable(_))));
            assert!(
                waited < wait + Duration::from_millis(150),
                "waited {waited:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_error_reaches_every_lookup_of_the_batch_and_the_next_batch_runs() {
        let found = row(1);
        let (mut source, statements) = rows(vec![found.clone()]);
        source.fail = true;
        let lookups = SessionLookups::new(source, Duration::from_secs(10));
        for _ in 0..2 {
            let error = lookups
                .find(found.1.id, found.1.access_jti, Utc::now())
                .await
                .unwrap_err();
            assert!(matches!(error, StoreError::Unavailable(_)));
        }
        assert_eq!(statements.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_unavailable_and_hands_the_source_back() {
        let found = row(1);
        let (mut source, statements) = rows(vec![found.clone()]);
        source.panic = true;
        let lookups = SessionLookups::new(source, Duration::from_secs(10));
        for _ in 0..3 {
            let error = lookups
                .find(found.1.id, found.1.access_jti, Utc::now())
                .await
                .unwrap_err();
            assert!(matches!(error, StoreError::Unavailable(_)));
        }
        assert_eq!(
            statements.load(Ordering::SeqCst),
            3,
            "each lookup ran again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_that_join_during_a_panicking_batch_are_answered_without_another_arriving() {
        let found = row(1);
        let (mut source, statements) = rows(vec![found.clone()]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        source.gate = Some(gate.clone());
        source.panic = true;
        let lookups = Arc::new(SessionLookups::new(source, Duration::from_secs(10)));
        let (id, jti) = (found.1.id, found.1.access_jti);
        let spawn = |lookups: Arc<SessionLookups>| {
            tokio::spawn(async move { lookups.find(id, jti, Utc::now()).await })
        };
        let first = spawn(lookups.clone());
        while statements.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let joined = spawn(lookups.clone());
        while lock(&lookups.state).waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        for lookup in [first, joined] {
            let answer = tokio::time::timeout(Duration::from_secs(5), lookup).await;
            let error = answer.expect("answered").unwrap().unwrap_err();
            assert!(matches!(error, StoreError::Unavailable(_)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_dropped_while_it_waits_leaves_the_others_answered() {
        let found = row(1);
        let (mut source, _) = rows(vec![found.clone()]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        source.gate = Some(gate.clone());
        let lookups = Arc::new(SessionLookups::new(source, Duration::from_secs(10)));
        let (id, jti) = (found.1.id, found.1.access_jti);
        let spawn = |lookups: Arc<SessionLookups>| {
            tokio::spawn(async move { lookups.find(id, jti, Utc::now()).await })
        };
        let first = spawn(lookups.clone());
        let dropped = spawn(lookups.clone());
        let kept = spawn(lookups.clone());
        while lock(&lookups.state).waiting.len() < 2 {
            tokio::task::yield_now().await;
        }
        dropped.abort();
        first.abort();
        gate.add_permits(2);
        assert!(kept.await.unwrap().unwrap().is_some());
    }
}
