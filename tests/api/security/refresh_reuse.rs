//! Stolen refresh tokens (ASVS 10.4.5): a rotated-away refresh token revokes its session, except
//! as an exact retry within the grace window; idle and absolute session limits.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_refresh_token_reused_after_the_grace_window_revokes_the_whole_session() {
    let app = spawn_app_with(|config| config.refresh_reuse_grace_seconds = 1).await;
    let stolen = app.register("victim@x.com").await;
    let owner = app.refresh_raw(&stolen.refresh_token).await;
    assert_no_errors(&owner);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The thief replays the old refresh token.
    let replay = app.refresh_raw(&stolen.refresh_token).await;
    assert_unauthenticated(&replay, "REFRESH_TOKEN_REUSED");
    assert!(
        replay
            .pointer("/data/refresh")
            .is_none_or(|data| data.is_null())
    );
    assert!(
        app.session_rows().await.is_empty(),
        "the session is revoked"
    );

    // The owner's current pair dies with it, and so does every later replay.
    assert_unauthenticated(
        &app.me(&string_at(&owner, "/data/refresh/accessToken"))
            .await,
        "REVOKED",
    );
    assert_unauthenticated(
        &app.refresh_raw(&string_at(&owner, "/data/refresh/refreshToken"))
            .await,
        "REVOKED",
    );
    assert_unauthenticated(&app.refresh_raw(&stolen.refresh_token).await, "REVOKED");
}

#[tokio::test]
async fn a_retry_within_the_grace_window_gets_the_same_pair_byte_for_byte() {
    let app = spawn_app().await;
    let account = app.register("tabs@x.com").await;
    let first_tab = app.refresh_raw(&account.refresh_token).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second_tab = app.refresh_raw(&account.refresh_token).await;
    assert_no_errors(&second_tab);
    for token in ["accessToken", "refreshToken"] {
        let pointer = format!("/data/refresh/{token}");
        assert_eq!(
            string_at(&first_tab, &pointer),
            string_at(&second_tab, &pointer),
            "{token}"
        );
    }
    // One rotation only: the row holds the pair both tabs got.
    let rows = app.session_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].refresh_jti.to_string(),
        jti_of(&string_at(&second_tab, "/data/refresh/refreshToken"))
    );
    assert_no_errors(
        &app.me(&string_at(&second_tab, "/data/refresh/accessToken"))
            .await,
    );
}

#[tokio::test]
async fn a_token_two_rotations_old_is_reuse_even_within_the_grace_window() {
    let app = spawn_app().await;
    let account = app.register("old@x.com").await;
    let second = app.refresh_raw(&account.refresh_token).await;
    let third = app
        .refresh_raw(&string_at(&second, "/data/refresh/refreshToken"))
        .await;
    assert_no_errors(&third);
    let replay = app.refresh_raw(&account.refresh_token).await;
    assert_unauthenticated(&replay, "REFRESH_TOKEN_REUSED");
    assert!(app.session_rows().await.is_empty());
}

#[tokio::test]
async fn an_idle_session_can_no_longer_refresh_and_is_not_listed() {
    let app = spawn_app_with(|config| config.session_idle_timeout = 2).await;
    let idle = app.register("idle@x.com").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let active = app.login("idle@x.com").await;

    assert_unauthenticated(&app.refresh_raw(&idle.refresh_token).await, "EXPIRED");
    assert_unauthenticated(&app.me(&idle.access_token).await, "EXPIRED");
    let listed = app.my_sessions(&active.access_token).await;
    assert_eq!(
        listed["data"]["mySessions"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    assert_eq!(
        listed["data"]["mySessions"][0]["id"],
        json!(active.session_id)
    );

    // Refreshing in time keeps a session alive past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refreshed = app.refresh_raw(&active.refresh_token).await;
    assert_no_errors(&refreshed);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_no_errors(
        &app.me(&string_at(&refreshed, "/data/refresh/accessToken"))
            .await,
    );
}

#[tokio::test]
async fn refreshing_never_extends_the_absolute_lifetime() {
    let app = spawn_app_with(|config| config.jwt_refresh_token_expires = 2).await;
    let account = app.register("absolute@x.com").await;
    let mut refresh_token = account.refresh_token.clone();
    // Keep refreshing for longer than the session may live.
    let mut last = serde_json::Value::Null;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        last = app.refresh_raw(&refresh_token).await;
        if last.get("errors").is_some() {
            break;
        }
        refresh_token = string_at(&last, "/data/refresh/refreshToken");
    }
    assert_unauthenticated(&last, "EXPIRED");
}
