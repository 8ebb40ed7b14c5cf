use std::collections::HashSet;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_twenty_parallel_refreshes_with_one_token_exactly_one_succeeds() {
    let app = spawn_app().await;
    let account = app.register("race@example.com").await;

    let attempts = join_all((0..20).map(|_| app.refresh_raw(&account.refresh_token))).await;
    let winners: Vec<_> = attempts
        .iter()
        .filter(|body| body.get("errors").is_none())
        .collect();
    assert_eq!(winners.len(), 1, "{attempts:?}");
    for loser in attempts.iter().filter(|body| body.get("errors").is_some()) {
        assert_unauthenticated(loser, "REVOKED");
    }

    // The one stored pair is the winner's, and it works.
    let rows = app.session_rows().await;
    assert_eq!(rows.len(), 1);
    let winner_access = string_at(winners[0], "/data/refresh/accessToken");
    assert_no_errors(&app.me(&winner_access).await);
    assert!(rows[0].last_refreshed_at.is_some());
}

#[tokio::test]
async fn refresh_keeps_the_session_expiry_fixed_at_login() {
    let app = spawn_app().await;
    let registered = app.register_raw("fixed@example.com", PASSWORD, None).await;
    assert_no_errors(&registered);
    let before = app.session_rows().await[0].expires_at;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let refreshed = app
        .refresh_raw(&string_at(&registered, "/data/register/refreshToken"))
        .await;
    assert_no_errors(&refreshed);
    assert_eq!(
        app.session_rows().await[0].expires_at,
        before,
        "refresh must not slide the expiry"
    );
    assert_eq!(
        string_at(&refreshed, "/data/refresh/refreshTokenExpiresAt"),
        string_at(&registered, "/data/register/refreshTokenExpiresAt"),
    );
    assert_ne!(
        string_at(&refreshed, "/data/refresh/accessTokenExpiresAt"),
        string_at(&registered, "/data/register/accessTokenExpiresAt"),
        "the access token is new"
    );
}

#[tokio::test]
async fn revoke_other_sessions_keeps_only_the_current_one() {
    let app = spawn_app().await;
    let first = app.register("many@example.com").await;
    let second = app.login("many@example.com").await;
    let third = app.login("many@example.com").await;

    let body = app
        .graphql(
            "mutation { revokeOtherSessions }",
            json!({}),
            Some(&second.access_token),
        )
        .await;
    assert_eq!(body["data"]["revokeOtherSessions"], json!(2), "{body}");
    let rows = app.session_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id.to_string(), second.session_id);
    assert_unauthenticated(&app.me(&first.access_token).await, "REVOKED");
    assert_unauthenticated(&app.me(&third.access_token).await, "REVOKED");
    assert_no_errors(&app.me(&second.access_token).await);
}

#[tokio::test]
async fn every_login_opens_a_session_with_its_own_client_details() {
    let app = spawn_app().await;
    app.register("ua@example.com").await;
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("User-Agent", "authql-test/1.0")
        .json(&json!({
            "query": format!("mutation {{ login(input: {{emailOrUsername: \"UA@example.com\", password: \"{PASSWORD}\"}}) {{ {AUTH_FIELDS} }} }}"),
        }))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_no_errors(&body);
    let session = &body["data"]["login"]["session"];
    assert_eq!(session["userAgent"], json!("authql-test/1.0"));
    assert_eq!(session["ipAddress"], json!("127.0.0.1"));
    assert_eq!(session["current"], json!(true));
    assert_eq!(body["data"]["login"]["tokenType"], json!("Bearer"));

    let rows = app.session_rows().await;
    assert_eq!(rows.len(), 2);
    let ids: HashSet<_> = rows.iter().map(|row| row.id).collect();
    assert_eq!(ids.len(), 2);
    // Each session row has its own creation time, not one shared default.
    assert_ne!(rows[0].created_at, rows[1].created_at);
}

#[tokio::test]
async fn expired_access_tokens_are_refused_as_expired_and_sessions_past_expiry_are_not_listed() {
    let app = spawn_app_with(|config| {
        config.jwt_access_token_expires = 1;
        config.jwt_refresh_token_expires = 2;
    })
    .await;
    let account = app.register("short@example.com").await;
    let other = app.login("short@example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_unauthenticated(&app.me(&account.access_token).await, "EXPIRED");
    assert_unauthenticated(&app.refresh_raw(&other.refresh_token).await, "EXPIRED");
}

#[tokio::test]
async fn my_sessions_does_not_list_expired_sessions() {
    let app = spawn_app_with(|config| config.jwt_refresh_token_expires = 2).await;
    app.register("old@example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let fresh = app.login("old@example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // The first session is now past its expiry; the second is not.
    let body = app.my_sessions(&fresh.access_token).await;
    assert_no_errors(&body);
    let listed = body["data"]["mySessions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(string_at(&listed[0], "/id"), fresh.session_id);
}
