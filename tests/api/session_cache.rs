//! The session cache on SQLite (a decorator over the store): every write method leaves it
//! exact, also when the caller is cancelled at any point of the write, and a second process
//! cannot serve the same file.

use std::{future::Future, num::NonZeroUsize, time::Duration};

use authql::store::{
    AuthMethods, CachedStore, FIRST_CREDENTIAL_VERSION, NewUser, PoolSettings, Rotation, SeaStore,
    SecondFactorStore, Session, SessionPage, SessionStore, StoredPasskey, TotpCredential,
    UserStore,
};
use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use crate::helpers::{shared_database_url, spawn_app, sqlite_url, test_config};

pub(crate) fn pool() -> PoolSettings {
    PoolSettings {
        max_connections: Some(2),
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
        busy_timeout: Duration::from_secs(5),
    }
}

/// A cached store on a fresh SQLite file, and a plain store on the same file that tells what
/// the database holds.
pub(crate) async fn stores(dir: &tempfile::TempDir) -> (CachedStore<SeaStore>, SeaStore) {
    let url = sqlite_url(&dir.path().join("cache.db"));
    let store = SeaStore::connect(&url, pool()).await.unwrap();
    store.migrate().await.unwrap();
    let plain = SeaStore::connect(&url, pool()).await.unwrap();
    (
        CachedStore::new(store, NonZeroUsize::new(100).unwrap()),
        plain,
    )
}

fn pending_totp(user_id: Uuid) -> TotpCredential {
    TotpCredential {
        user_id,
        secret: "JBSWY3DPEHPK3PXP".into(),
        confirmed_at: None,
        last_step: -1,
        created_at: Utc::now(),
    }
}

fn passkey(user_id: Uuid) -> StoredPasskey {
    StoredPasskey {
        id: Uuid::new_v4(),
        user_id,
        credential_id: Uuid::new_v4().simple().to_string(),
        name: "key".into(),
        credential: "{}".into(),
        counter: 0,
        backup_eligible: false,
        created_at: Utc::now(),
        last_used_at: None,
    }
}

pub(crate) fn session(user_id: Uuid, lifetime: TimeDelta) -> Session {
    let now = Utc::now();
    Session {
        id: Uuid::new_v4(),
        user_id,
        access_jti: Uuid::new_v4(),
        refresh_jti: Uuid::new_v4(),
        previous_refresh_jti: None,
        created_at: now,
        last_refreshed_at: None,
        expires_at: now + lifetime,
        idle_expires_at: now + lifetime,
        user_agent: None,
        ip_address: None,
        credential_version: 0,
        authenticated_at: now,
        authentication_methods: authql::store::AuthMethods::of(["pwd"]),
    }
}

pub(crate) fn new_user(user_id: Uuid) -> NewUser {
    NewUser {
        id: user_id,
        email: format!("{user_id}@example.com"),
        email_normalized: format!("{user_id}@example.com"),
        username: user_id.simple().to_string(),
        username_normalized: user_id.simple().to_string(),
        password_hash: "x".into(),
        created_at: Utc::now(),
        email_verified_at: None,
        identity: None,
    }
}

/// Looks `session` up by its access jti, as every authenticated request does.
pub(crate) async fn accepted(store: &impl SessionStore, session: &Session) -> bool {
    store
        .find_session_by_access_jti(session.id, session.access_jti, Utc::now())
        .await
        .unwrap()
        .is_some()
}

/// A user with `count` sessions, each looked up once so that the cache holds them.
pub(crate) async fn user_with_sessions(
    store: &CachedStore<SeaStore>,
    count: usize,
) -> (Uuid, Vec<Session>) {
    let user_id = Uuid::new_v4();
    let first = session(user_id, TimeDelta::hours(1));
    store
        .create_user_with_session(new_user(user_id), first.clone())
        .await
        .unwrap();
    let mut sessions = vec![first];
    for _ in 1..count {
        let created = store
            .create_session(session(user_id, TimeDelta::hours(1)), 100)
            .await
            .unwrap()
            .expect("the user is current");
        sessions.push(created.session);
    }
    for session in &sessions {
        assert!(accepted(store, session).await);
        assert!(store.is_cached(session.id));
    }
    (user_id, sessions)
}

#[tokio::test]
async fn every_write_method_leaves_the_cache_exact() {
    if shared_database_url().is_some() {
        return; // the cache exists on SQLite only
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = stores(&dir).await;
    let (user_id, sessions) = user_with_sessions(&store, 1).await;
    let first = sessions[0].clone();
    assert!(accepted(&store, &first).await, "and a hit accepts");

    // rotate_session: the old access jti is refused at once, the new one accepted.
    let rotation = Rotation {
        session_id: first.id,
        presented_refresh_jti: first.refresh_jti,
        new_access_jti: Uuid::new_v4(),
        new_refresh_jti: Uuid::new_v4(),
        at: Utc::now(),
        idle_expires_at: Utc::now() + TimeDelta::hours(1),
    };
    store.rotate_session(rotation).await.unwrap().unwrap();
    assert!(!accepted(&store, &first).await);
    let rotated = Session {
        access_jti: rotation.new_access_jti,
        ..first.clone()
    };
    assert!(accepted(&store, &rotated).await);

    let create = || async {
        let created = store
            .create_session(session(user_id, TimeDelta::hours(1)), 100)
            .await
            .unwrap()
            .unwrap()
            .session;
        assert!(accepted(&store, &created).await);
        created
    };

    // delete_user_sessions (logout, revokeTokens, reuse detection).
    let second = create().await;
    store
        .delete_user_sessions(user_id, &[second.id])
        .await
        .unwrap();
    assert!(!accepted(&store, &second).await);

    // delete_other_sessions (revokeOtherSessions) keeps the kept one.
    let third = create().await;
    store
        .delete_other_sessions(user_id, Some(rotated.id))
        .await
        .unwrap();
    assert!(!accepted(&store, &third).await);
    assert!(accepted(&store, &rotated).await);

    // change_password ends the others, and the kept one follows the new credential version.
    let fourth = create().await;
    store
        .change_password(user_id, FIRST_CREDENTIAL_VERSION, "y".into(), rotated.id)
        .await
        .unwrap();
    assert!(!accepted(&store, &fourth).await);
    let kept = Session {
        credential_version: 1,
        ..rotated.clone()
    };
    assert!(accepted(&store, &kept).await);

    // A session of the old credential version cannot be created any more.
    assert_eq!(
        store
            .create_session(session(user_id, TimeDelta::hours(1)), 100)
            .await
            .unwrap(),
        None
    );

    // A session that ends while cached is refused by the clock; pruning removes its row.
    let short = store
        .create_session(
            Session {
                credential_version: 1,
                ..session(user_id, TimeDelta::milliseconds(300))
            },
            100,
        )
        .await
        .unwrap()
        .unwrap()
        .session;
    assert!(accepted(&store, &short).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!accepted(&store, &short).await, "expired while cached");
    store.prune_sessions(Utc::now(), 100).await.unwrap();
    assert!(!accepted(&store, &short).await);
    assert!(accepted(&store, &kept).await);

    // set_user_disabled, then delete_user.
    store
        .set_user_disabled(user_id, Some(Utc::now()))
        .await
        .unwrap()
        .unwrap();
    assert!(!accepted(&store, &kept).await);
    store.set_user_disabled(user_id, None).await.unwrap();
    let (other_user, others) = user_with_sessions(&store, 2).await;
    store.delete_user(other_user, None).await.unwrap().unwrap();
    for session in &others {
        assert!(!accepted(&store, session).await);
    }
}

/// Polls `write` `polls` times (yielding to the runtime between polls, so that the database
/// work it started goes on) and then drops it, unless it finished first. Returns whether it
/// finished.
pub(crate) async fn cancel_after<T>(write: impl Future<Output = T>, polls: usize) -> bool {
    let mut write = std::pin::pin!(write);
    for _ in 0..polls {
        if futures::poll!(write.as_mut()).is_ready() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

/// Waits until every write the cache started, cancelled ones included, has ended.
pub(crate) async fn settled(store: &CachedStore<SeaStore>) {
    for _ in 0..500 {
        if store.writes_in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("writes still in flight after 5 s");
}

/// Whether the cache answers every lookup of `sessions` (by each access jti they had or have
/// now) as the database does.
pub(crate) async fn agree(store: &CachedStore<SeaStore>, plain: &SeaStore, sessions: &[Session]) {
    let now = Utc::now();
    for session in sessions {
        let mut jtis = vec![session.access_jti];
        if let Some((_, stored)) = plain.find_session(session.id).await.unwrap() {
            jtis.push(stored.access_jti);
        }
        for jti in jtis {
            let cached = store
                .find_session_by_access_jti(session.id, jti, now)
                .await
                .unwrap()
                .map(|(_, session)| session);
            let stored = plain
                .find_session_by_access_jti(session.id, jti, now)
                .await
                .unwrap()
                .map(|(_, session)| session);
            assert_eq!(
                cached, stored,
                "cache and database disagree on {}",
                session.id
            );
        }
    }
}

/// Every write method of the cached store, cancelled after 0, 1, 2, … polls until a run
/// finishes without being cancelled: afterwards, cache and database agree on every session the
/// write could have touched (a cancelled logout must not leave its token accepted by the cache
/// while its row is gone, nor the other way round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cancelled_at_any_await_leaves_cache_and_database_agreeing() {
    if shared_database_url().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, plain) = stores(&dir).await;
    let methods = [
        "rotate_session",
        "delete_user_sessions",
        "delete_other_sessions",
        "change_password",
        "set_user_disabled",
        "delete_user",
        "create_session",
        "replace_password_hash",
        // Second factors: turning one on or off ends the other sessions.
        "confirm_totp",
        "disable_totp",
        "add_passkey",
        "delete_passkey",
        "reset_second_factors",
        "reauthenticate_session",
    ];
    for method in methods {
        // Every count of polls up to 8, then half as many again each time: the early awaits one
        // by one, the later ones sampled, until two runs in a row finish uncancelled.
        let mut polls = 0;
        let mut finished_in_a_row = 0;
        let mut runs = 0;
        while finished_in_a_row < 2 {
            assert!(polls < 1_000_000, "{method} never finished");
            let (user_id, sessions) = user_with_sessions(&store, 3).await;
            let (first, second) = (&sessions[0], &sessions[1]);
            let finished = match method {
                "rotate_session" => {
                    let rotation = Rotation {
                        session_id: first.id,
                        presented_refresh_jti: first.refresh_jti,
                        new_access_jti: Uuid::new_v4(),
                        new_refresh_jti: Uuid::new_v4(),
                        at: Utc::now(),
                        idle_expires_at: Utc::now() + TimeDelta::hours(1),
                    };
                    cancel_after(store.rotate_session(rotation), polls).await
                }
                "delete_user_sessions" => {
                    let ids = [first.id, second.id];
                    cancel_after(store.delete_user_sessions(user_id, &ids), polls).await
                }
                "delete_other_sessions" => {
                    cancel_after(store.delete_other_sessions(user_id, Some(first.id)), polls).await
                }
                "change_password" => {
                    cancel_after(
                        store.change_password(
                            user_id,
                            FIRST_CREDENTIAL_VERSION,
                            "new".into(),
                            first.id,
                        ),
                        polls,
                    )
                    .await
                }
                "set_user_disabled" => {
                    cancel_after(store.set_user_disabled(user_id, Some(Utc::now())), polls).await
                }
                "delete_user" => {
                    cancel_after(
                        store.delete_user(user_id, Some(FIRST_CREDENTIAL_VERSION)),
                        polls,
                    )
                    .await
                }
                // With room for two: the login pushes the least recently used out.
                "create_session" => {
                    cancel_after(
                        store.create_session(session(user_id, TimeDelta::hours(1)), 2),
                        polls,
                    )
                    .await
                }
                "replace_password_hash" => {
                    cancel_after(
                        store.replace_password_hash(user_id, "x", "rehashed".into()),
                        polls,
                    )
                    .await
                }
                "confirm_totp" => {
                    store.begin_totp(pending_totp(user_id)).await.unwrap();
                    cancel_after(
                        store.confirm_totp(
                            user_id,
                            "JBSWY3DPEHPK3PXP",
                            1,
                            vec!["digest".into()],
                            first.id,
                            Utc::now(),
                        ),
                        polls,
                    )
                    .await
                }
                "disable_totp" => {
                    // Set up through the cache, as the server would: these end sessions too.
                    store.begin_totp(pending_totp(user_id)).await.unwrap();
                    let confirmed = store
                        .confirm_totp(user_id, "JBSWY3DPEHPK3PXP", 1, vec![], first.id, Utc::now())
                        .await
                        .unwrap();
                    assert!(confirmed.is_some());
                    cancel_after(store.disable_totp(user_id, first.id), polls).await
                }
                "add_passkey" => {
                    cancel_after(store.add_passkey(passkey(user_id), first.id), polls).await
                }
                "delete_passkey" => {
                    let stored = passkey(user_id);
                    store.add_passkey(stored.clone(), first.id).await.unwrap();
                    cancel_after(store.delete_passkey(user_id, stored.id, first.id), polls).await
                }
                "reset_second_factors" => {
                    cancel_after(store.reset_second_factors(user_id), polls).await
                }
                "reauthenticate_session" => {
                    cancel_after(
                        store.reauthenticate_session(
                            first.id,
                            first.access_jti,
                            Utc::now(),
                            AuthMethods::of(["pwd", "otp"]),
                        ),
                        polls,
                    )
                    .await
                }
                _ => unreachable!(),
            };
            // Lookups while the write may still be on its way (a request right after the
            // cancelled one) may fill the cache; then, once everything has landed, cache and
            // database must agree.
            for session in &sessions {
                let _ = accepted(&store, session).await;
            }
            settled(&store).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            agree(&store, &plain, &sessions).await;
            finished_in_a_row = if finished { finished_in_a_row + 1 } else { 0 };
            runs += 1;
            polls = if polls < 8 { polls + 1 } else { polls * 3 / 2 };
        }
        assert!(
            runs > 2,
            "{method}: at least one run was cancelled half-way"
        );
    }
}

/// The same for the store under any backend the suite runs on: what must happen together
/// (a password and its credential version and the other sessions; a disable and the sessions;
/// a user and its sessions; a login and the sessions it pushes out) happens together or not at
/// all, wherever the caller is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_is_applied_whole_or_not_at_all_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::fresh_database_url(dir.path()).await;
    // The server migrates (or indexes) the database; the store under test is plain.
    let app = crate::helpers::spawn_app_in_existing(dir, &url).await;
    let store = crate::helpers::open_store(&url, pool()).await;
    let far = SessionPage {
        first: 1000,
        after: None,
    };
    for polls in (0..40).chain([60, 100, 200, 400]) {
        let user_id = Uuid::new_v4();
        let first = session(user_id, TimeDelta::hours(1));
        store
            .create_user_with_session(new_user(user_id), first.clone())
            .await
            .unwrap();
        for _ in 0..2 {
            store
                .create_session(session(user_id, TimeDelta::hours(1)), 100)
                .await
                .unwrap()
                .unwrap();
        }
        let live = |version| {
            let store = &store;
            async move {
                store
                    .list_live_sessions(user_id, version, Utc::now(), far)
                    .await
                    .unwrap()
            }
        };
        match polls % 3 {
            0 => {
                cancel_after(
                    store.change_password(
                        user_id,
                        FIRST_CREDENTIAL_VERSION,
                        "new".into(),
                        first.id,
                    ),
                    polls,
                )
                .await;
                let user = wait_for_user(&*store, user_id).await.unwrap();
                let hash = store
                    .find_credentials_by_id(user_id)
                    .await
                    .unwrap()
                    .unwrap()
                    .password_hash;
                if hash == "new" {
                    assert_eq!(user.credential_version, 1);
                    assert_eq!(live(1).await.len(), 1, "only the kept session lives");
                    assert!(live(0).await.is_empty());
                } else {
                    assert_eq!(user.credential_version, 0);
                    assert_eq!(live(0).await.len(), 3, "nothing changed");
                }
            }
            1 => {
                cancel_after(store.set_user_disabled(user_id, Some(Utc::now())), polls).await;
                let user = wait_for_user(&*store, user_id).await.unwrap();
                if user.disabled_at.is_some() {
                    assert_eq!(user.credential_version, 1);
                    assert!(live(0).await.is_empty());
                } else {
                    assert_eq!(live(0).await.len(), 3, "nothing changed");
                }
            }
            _ => {
                cancel_after(
                    store.delete_user(user_id, Some(FIRST_CREDENTIAL_VERSION)),
                    polls,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let gone = store
                    .find_credentials_by_id(user_id)
                    .await
                    .unwrap()
                    .is_none();
                let sessions = live(0).await.len();
                assert!(
                    (gone && sessions == 0) || (!gone && sessions == 3),
                    "user gone: {gone}, sessions left: {sessions}"
                );
            }
        }
    }
    drop(app);
}

/// A write cancelled at any await, the `BEGIN` of its transaction included, gives the pool back
/// no connection still inside its transaction: a revocation acknowledged on that pool right
/// after is committed, seen at once from another pool. (sqlx 0.9 queues no ROLLBACK for a
/// `BEGIN` cancelled before its answer; the statements of later requests on the connection
/// joined a transaction that nobody committed, and a revoked session lived on elsewhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_revocation_after_a_cancelled_write_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::fresh_database_url(dir.path()).await;
    let app = crate::helpers::spawn_app_in_existing(dir, &url).await;
    // One connection: whatever the cancelled write leaves on it, the revocation gets.
    let store = crate::helpers::open_store(
        &url,
        PoolSettings {
            max_connections: Some(1),
            ..pool()
        },
    )
    .await;
    let observer = crate::helpers::open_store(&url, pool()).await;
    // Where the `BEGIN` is in flight moves by a poll or two from run to run: the sweep is run
    // five times.
    for polls in (0..50).cycle().take(250) {
        let user_id = Uuid::new_v4();
        let revoked = session(user_id, TimeDelta::hours(1));
        observer
            .create_user_with_session(new_user(user_id), revoked.clone())
            .await
            .unwrap();
        let other = Uuid::new_v4();
        cancel_after(
            store.create_user_with_session(new_user(other), session(other, TimeDelta::hours(1))),
            polls,
        )
        .await;
        let answered = store
            .delete_user_sessions(user_id, &[revoked.id])
            .await
            .unwrap();
        assert_eq!(answered, [revoked.id], "cancelled after {polls} polls");
        assert!(
            observer.find_session(revoked.id).await.unwrap().is_none(),
            "cancelled after {polls} polls: the acknowledged revocation is not committed"
        );
    }
    drop(app);
}

/// The user once the write in flight has landed (a write cancelled by its caller may still be
/// applied by the database a moment later).
pub(crate) async fn wait_for_user(
    store: &dyn UserStore,
    user_id: Uuid,
) -> Option<authql::store::User> {
    // The write runs on to its end on a task of its own; 100 ms was not always enough for
    // SecantusDB under the whole suite's load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    store
        .find_credentials_by_id(user_id)
        .await
        .unwrap()
        .map(|found| found.user)
}

#[tokio::test]
async fn a_second_process_cannot_serve_the_same_sqlite_file() {
    if shared_database_url().is_some() {
        return;
    }
    let app = spawn_app().await;
    let started = authql::app::Application::build(test_config(&app.database_url)).await;
    let error = format!("{:#}", started.err().expect("the second start is refused"));
    assert!(error.contains("PostgreSQL"), "{error}");
    assert!(error.contains(".lock"), "{error}");
}
