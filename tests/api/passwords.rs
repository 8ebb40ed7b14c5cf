use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn every_byte_of_a_100_byte_password_counts() {
    let app = spawn_app().await;
    let password = format!("{}A", "p".repeat(99));
    assert_eq!(password.len(), 100);
    assert_no_errors(&app.register_raw("long@x.com", &password, None).await);

    assert_no_errors(&app.login_raw("long@x.com", &password).await);
    let last_byte_changed = format!("{}B", "p".repeat(99));
    let body = app.login_raw("long@x.com", &last_byte_changed).await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    // bcrypt alone would see only the first 72 bytes, which are the same.
    let first_72 = &password[..72];
    assert_eq!(
        error_code(&app.login_raw("long@x.com", first_72).await),
        "INVALID_CREDENTIALS"
    );
}

#[tokio::test]
async fn change_password_replaces_it_and_ends_every_other_session() {
    let app = spawn_app().await;
    let other = app.register("change@x.com").await;
    let current = app.login("change@x.com").await;
    let new_password = "a brand new passphrase";

    let body = app
        .graphql(
            "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
            json!({ "input": { "currentPassword": PASSWORD, "newPassword": new_password } }),
            Some(&current.access_token),
        )
        .await;
    assert_eq!(body["data"]["changePassword"], json!(true), "{body}");

    assert_no_errors(&app.me(&current.access_token).await);
    assert_unauthenticated(&app.me(&other.access_token).await, "REVOKED");
    assert_eq!(app.session_rows().await.len(), 1);
    assert_eq!(
        error_code(&app.login_raw("change@x.com", PASSWORD).await),
        "INVALID_CREDENTIALS"
    );
    assert_no_errors(&app.login_raw("change@x.com", new_password).await);
}

#[tokio::test]
async fn change_password_refuses_a_wrong_current_password_or_a_weak_new_one() {
    let app = spawn_app().await;
    let account = app.register("keep@x.com").await;
    let other = app.login("keep@x.com").await;
    let change = |current: &'static str, new: &'static str| {
        app.graphql(
            "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
            json!({ "input": { "currentPassword": current, "newPassword": new } }),
            Some(&account.access_token),
        )
    };
    let wrong = change("not my password", "a perfectly fine one").await;
    assert_eq!(error_code(&wrong), "INVALID_CREDENTIALS");
    let weak = change(PASSWORD, "short").await;
    assert_eq!(error_code(&weak), "BAD_USER_INPUT");
    assert_eq!(
        string_at(&weak, "/errors/0/extensions/field"),
        "newPassword"
    );

    // Nothing changed: the old password works, and the other session lives.
    assert_no_errors(&app.login_raw("keep@x.com", PASSWORD).await);
    assert_no_errors(&app.me(&other.access_token).await);
}
