//! The session cache on SQLite (a decorator over the store): every write method leaves it
//! exact, and a second process cannot serve the same file.

use std::{num::NonZeroUsize, time::Duration};

use authql::store::{CachedStore, NewUser, PoolSettings, Rotation, SeaStore, Session, Store};
use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use crate::helpers::{shared_database_url, spawn_app, sqlite_url, test_config};

async fn cached_store(dir: &tempfile::TempDir) -> CachedStore<SeaStore> {
    let url = sqlite_url(&dir.path().join("cache.db"));
    let pool = PoolSettings {
        max_connections: Some(2),
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
        busy_timeout: Duration::from_secs(5),
    };
    let store = SeaStore::connect(&url, pool).await.unwrap();
    store.migrate().await.unwrap();
    CachedStore::new(store, NonZeroUsize::new(100).unwrap())
}

fn session(user_id: Uuid, lifetime: TimeDelta) -> Session {
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
    }
}

/// Looks `session` up by its access jti, as every authenticated request does.
async fn accepted(store: &CachedStore<SeaStore>, session: &Session) -> bool {
    store
        .find_session_by_access_jti(session.id, session.access_jti, Utc::now())
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn every_write_method_leaves_the_cache_exact() {
    if shared_database_url().is_some() {
        return; // the cache exists on SQLite only
    }
    let dir = tempfile::tempdir().unwrap();
    let store = cached_store(&dir).await;
    let user_id = Uuid::new_v4();
    let user = NewUser {
        id: user_id,
        email: "ada@example.com".into(),
        email_normalized: "ada@example.com".into(),
        username: "ada".into(),
        username_normalized: "ada".into(),
        password_hash: "x".into(),
        created_at: Utc::now(),
    };
    let first = session(user_id, TimeDelta::hours(1));
    store
        .create_user_with_session(user, first.clone())
        .await
        .unwrap();
    assert!(accepted(&store, &first).await);
    assert!(store.is_cached(first.id), "a lookup fills the cache");
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

    // delete_user_sessions (logout, revokeTokens, reuse detection).
    let second = store
        .create_session(session(user_id, TimeDelta::hours(1)))
        .await
        .unwrap();
    assert!(accepted(&store, &second).await);
    store
        .delete_user_sessions(user_id, &[second.id])
        .await
        .unwrap();
    assert!(!accepted(&store, &second).await);

    // delete_other_sessions (revokeOtherSessions) keeps the kept one.
    let third = store
        .create_session(session(user_id, TimeDelta::hours(1)))
        .await
        .unwrap();
    assert!(accepted(&store, &third).await);
    store
        .delete_other_sessions(user_id, Some(rotated.id))
        .await
        .unwrap();
    assert!(!accepted(&store, &third).await);
    assert!(accepted(&store, &rotated).await);

    // change_password ends the others too.
    let fourth = store
        .create_session(session(user_id, TimeDelta::hours(1)))
        .await
        .unwrap();
    assert!(accepted(&store, &fourth).await);
    store
        .change_password(user_id, "y".into(), rotated.id)
        .await
        .unwrap();
    assert!(!accepted(&store, &fourth).await);
    assert!(accepted(&store, &rotated).await);

    // prune_sessions: a session that ended is gone from the cache with its row, and a session
    // that ends while cached is refused by the clock even before pruning.
    let short = store
        .create_session(session(user_id, TimeDelta::milliseconds(300)))
        .await
        .unwrap();
    assert!(accepted(&store, &short).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!accepted(&store, &short).await, "expired while cached");
    store.prune_sessions(Utc::now(), 100).await.unwrap();
    assert!(!store.is_cached(short.id));
    assert!(accepted(&store, &rotated).await);
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
