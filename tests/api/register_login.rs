use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn register_creates_the_user_and_its_first_session_atomically() {
    let app = spawn_app().await;
    let body = app
        .register_raw("  Grace@Example.COM ", PASSWORD, None)
        .await;
    assert_no_errors(&body);
    let payload = &body["data"]["register"];
    assert_eq!(payload["user"]["email"], json!("Grace@Example.COM"));
    assert_eq!(
        payload["user"]["username"],
        json!("Grace@Example.COM"),
        "defaults to the email"
    );
    assert_eq!(payload["session"]["current"], json!(true));

    let users = app.user_rows().await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].email_normalized, "grace@example.com");
    assert!(
        users[0].password_hash.starts_with("precis$$2b$04$"),
        "bcrypt at the configured cost, of the OpaqueString form"
    );
    assert!(!users[0].password_hash.contains(PASSWORD));
    let sessions = app.session_rows().await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].user_id, users[0].id);
    assert_eq!(
        sessions[0].id.to_string(),
        string_at(payload, "/session/id")
    );

    let me = app.me(&string_at(payload, "/accessToken")).await;
    assert_eq!(string_at(&me, "/data/me/id"), users[0].id.to_string());
}

#[tokio::test]
async fn a_case_variant_of_a_registered_email_is_taken() {
    let app = spawn_app().await;
    app.register("bob@x.com").await;
    let body = app
        .register_raw("Bob@X.com", PASSWORD, Some("otherbob"))
        .await;
    assert_eq!(error_code(&body), "EMAIL_TAKEN", "{body}");
    assert_eq!(app.user_rows().await.len(), 1);
    assert_eq!(
        app.session_rows().await.len(),
        1,
        "no session for the refused registration"
    );
}

#[tokio::test]
async fn a_taken_username_is_reported_as_such_and_nothing_is_stored() {
    let app = spawn_app().await;
    let first = app
        .register_raw("one@x.com", PASSWORD, Some("Lovelace"))
        .await;
    assert_no_errors(&first);
    let body = app
        .register_raw("two@x.com", PASSWORD, Some("lovelace"))
        .await;
    assert_eq!(error_code(&body), "USERNAME_TAKEN", "{body}");
    assert_eq!(app.user_rows().await.len(), 1);
    assert_eq!(app.session_rows().await.len(), 1);
}

#[tokio::test]
async fn bad_registration_input_names_the_field_and_stores_nothing() {
    let app = spawn_app().await;
    for (email, password, username, field) in [
        ("not-an-email", PASSWORD, None, "email"),
        ("a@x.com", "short", None, "password"),
        ("a@x.com", &*"x".repeat(257), None, "password"),
        ("a@x.com", PASSWORD, Some("someone@else.com"), "username"),
        ("a@x.com", PASSWORD, Some("ab"), "username"),
    ] {
        let body = app.register_raw(email, password, username).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(
            string_at(&body, "/errors/0/extensions/field"),
            field,
            "{body}"
        );
    }
    assert!(app.user_rows().await.is_empty());
    assert!(app.session_rows().await.is_empty());
}

#[tokio::test]
async fn login_works_by_email_or_username_in_any_case() {
    let app = spawn_app().await;
    let body = app
        .register_raw("turing@x.com", PASSWORD, Some("Alan"))
        .await;
    assert_no_errors(&body);
    for login in ["turing@x.com", " TURING@X.COM ", "alan", "ALAN"] {
        let body = app.login_raw(login, PASSWORD).await;
        assert_no_errors(&body);
        assert_eq!(body["data"]["login"]["user"]["username"], json!("Alan"));
    }
    assert_eq!(app.session_rows().await.len(), 5);
}

#[tokio::test]
async fn unknown_account_and_wrong_password_get_the_same_error() {
    let app = spawn_app().await;
    app.register("known@x.com").await;
    let wrong_password = app.login_raw("known@x.com", "not the password").await;
    let unknown = app.login_raw("nobody@x.com", PASSWORD).await;
    assert_eq!(error_code(&wrong_password), "INVALID_CREDENTIALS");
    assert_eq!(error_code(&unknown), "INVALID_CREDENTIALS");
    assert_eq!(
        wrong_password["errors"][0]["message"],
        unknown["errors"][0]["message"]
    );
    assert_eq!(
        app.session_rows().await.len(),
        1,
        "no session for failed logins"
    );
}
