//! Token edges from real-world reports: the reason tells a session that timed out from one that
//! was ended, and a client whose access token expired can still log out.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    TestApp, assert_no_errors, assert_unauthenticated, spawn_app, spawn_app_with, string_at,
};

async fn logout_with(
    app: &TestApp,
    refresh_token: &str,
    access_token: Option<&str>,
) -> serde_json::Value {
    app.graphql(
        "mutation($t: String) { logout(refreshToken: $t) }",
        json!({ "t": refresh_token }),
        access_token,
    )
    .await
}

#[tokio::test]
async fn an_access_token_whose_session_timed_out_is_expired_not_revoked() {
    // Idle timeout: the access token itself lives 15 minutes, its session 1 s without a refresh.
    let app = spawn_app_with(|config| config.session_idle_timeout = 1).await;
    let idle = app.register("idle@example.com").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_unauthenticated(&app.me(&idle.access_token).await, "EXPIRED");
    assert_unauthenticated(&app.my_sessions(&idle.access_token).await, "EXPIRED");

    // Absolute expiry: the session ends 2 s after login whatever the access token says.
    let app = spawn_app_with(|config| config.jwt_refresh_token_expires = 2).await;
    let account = app.register("absolute@example.com").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_unauthenticated(&app.me(&account.access_token).await, "EXPIRED");
    assert_unauthenticated(
        &app.graphql(
            "mutation { logout }",
            json!({}),
            Some(&account.access_token),
        )
        .await,
        "EXPIRED",
    );
}

#[tokio::test]
async fn an_access_token_whose_session_was_ended_is_still_revoked() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let other = app.login("ada@example.com").await;
    // Ended by logout, by revocation from another session, and by rotation.
    assert_no_errors(
        &app.graphql(
            "mutation { logout }",
            json!({}),
            Some(&account.access_token),
        )
        .await,
    );
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    let rotated = app.refresh_raw(&other.refresh_token).await;
    assert_no_errors(&rotated);
    assert_unauthenticated(&app.me(&other.access_token).await, "REVOKED");
}

#[tokio::test]
async fn logout_with_the_refresh_token_works_after_the_access_token_expired() {
    let app = spawn_app_with(|config| config.jwt_access_token_expires = 1).await;
    let account = app.register("ada@example.com").await;
    let kept = app.login("ada@example.com").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_unauthenticated(&app.me(&account.access_token).await, "EXPIRED");
    // The expired access token alone cannot log out...
    assert_unauthenticated(
        &app.graphql(
            "mutation { logout }",
            json!({}),
            Some(&account.access_token),
        )
        .await,
        "EXPIRED",
    );
    // ...its refresh token can, with or without the expired access token beside it.
    let body = logout_with(&app, &account.refresh_token, Some(&account.access_token)).await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    let sessions = app.session_rows().await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].id.to_string(), kept.session_id);
    // Once ended, the same refresh token ends nothing more.
    assert_unauthenticated(
        &logout_with(&app, &account.refresh_token, None).await,
        "REVOKED",
    );
}

#[tokio::test]
async fn logout_refuses_a_rotated_away_or_foreign_refresh_token() {
    let app = spawn_app_with(|config| config.refresh_reuse_grace_seconds = 0).await;
    let ada = app.register("ada@example.com").await;
    let rotated = app.refresh_raw(&ada.refresh_token).await;
    assert_no_errors(&rotated);
    // The replaced refresh token no longer speaks for the session.
    assert_unauthenticated(
        &logout_with(&app, &ada.refresh_token, None).await,
        "REVOKED",
    );
    // Nor does another user's current one, for a signed-in caller.
    let bob = app.register("bob@example.com").await;
    let ada_access = string_at(&rotated, "/data/refresh/accessToken");
    assert_unauthenticated(
        &logout_with(&app, &bob.refresh_token, Some(&ada_access)).await,
        "REVOKED",
    );
    assert_eq!(app.session_rows().await.len(), 2, "nothing was ended");
    // An access token where the refresh token belongs is the wrong kind.
    assert_unauthenticated(
        &logout_with(&app, &ada_access, None).await,
        "WRONG_TOKEN_TYPE",
    );
    // And the current one works.
    let current = string_at(&rotated, "/data/refresh/refreshToken");
    assert_eq!(
        logout_with(&app, &current, None).await["data"]["logout"],
        true
    );
    assert_eq!(app.session_rows().await.len(), 1);
}
