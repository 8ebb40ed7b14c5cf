use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_foreign_session_id_or_token_leaves_the_other_users_session_alive() {
    let app = spawn_app().await;
    let mallory = app.register("mallory@x.com").await;
    let victim = app.register("victim@x.com").await;

    let body = app
        .revoke(
            &mallory.access_token,
            json!([victim.session_id]),
            json!([victim.access_token, victim.refresh_token]),
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["revokeTokens"]["revokedCount"], json!(0));
    assert_eq!(body["data"]["revokeTokens"]["revokedSessionIds"], json!([]));

    assert_no_errors(&app.me(&victim.access_token).await);
    assert_eq!(app.session_rows().await.len(), 2);
}

#[tokio::test]
async fn unknown_malformed_and_expired_entries_are_skipped_without_error() {
    // Tokens live 2 s (at least 1 s after issue, as `exp` counts whole seconds): the expired one
    // is certainly dead after the sleep, the fresh one certainly alive for the next request.
    let app = spawn_app_with(|config| config.jwt_access_token_expires = 2).await;
    let account = app.register("skip@x.com").await;
    let other = app.login("skip@x.com").await;
    let expired_token = other.access_token.clone();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let fresh = app.refresh_raw(&account.refresh_token).await;
    let access = string_at(&fresh, "/data/refresh/accessToken");

    let body = app
        .revoke(
            &access,
            json!(["not-a-uuid", "00000000-0000-0000-0000-000000000000"]),
            json!(["garbage", "a.b.c", expired_token]),
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["revokeTokens"]["revokedCount"], json!(0));
    assert_eq!(app.session_rows().await.len(), 2);
}

#[tokio::test]
async fn revoke_needs_at_least_one_entry_and_at_most_one_hundred() {
    let app = spawn_app().await;
    let account = app.register("limits@x.com").await;

    let empty = app
        .revoke(&account.access_token, json!([]), json!(null))
        .await;
    assert_eq!(error_code(&empty), "BAD_USER_INPUT");
    let neither = app
        .revoke(&account.access_token, json!(null), json!(null))
        .await;
    assert_eq!(error_code(&neither), "BAD_USER_INPUT");

    let ids: Vec<String> = (0..60).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let tokens: Vec<String> = (0..41).map(|i| format!("token-{i}")).collect();
    let too_many = app
        .revoke(&account.access_token, json!(ids), json!(tokens))
        .await;
    assert_eq!(error_code(&too_many), "BAD_USER_INPUT");
    assert!(too_many["errors"][0]["extensions"]["field"].is_string());

    // Exactly 100 is fine, and the caller's own session among them ends.
    let mut ids: Vec<String> = (0..99).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    ids.push(account.session_id.clone());
    let at_limit = app
        .revoke(&account.access_token, json!(ids), json!(null))
        .await;
    assert_no_errors(&at_limit);
    assert_eq!(at_limit["data"]["revokeTokens"]["revokedCount"], json!(1));
    assert!(app.session_rows().await.is_empty());
}
