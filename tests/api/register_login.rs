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

/// A client retrying a registration whose answer was lost (a database failover between the
/// commit and the reply: tests/api/failover.rs makes one) must not be told EMAIL_TAKEN.
#[tokio::test]
async fn a_registration_repeated_as_sent_gets_a_session_and_anything_else_stays_email_taken() {
    let app = spawn_app().await;
    let first = app
        .register_raw("retry@x.com", PASSWORD, Some("retrier"))
        .await;
    assert_no_errors(&first);
    let again = app
        .register_raw("retry@x.com", PASSWORD, Some("retrier"))
        .await;
    assert_no_errors(&again);
    assert_eq!(
        string_at(&again, "/data/register/user/id"),
        string_at(&first, "/data/register/user/id")
    );
    assert_ne!(
        string_at(&again, "/data/register/session/id"),
        string_at(&first, "/data/register/session/id"),
        "a session of its own"
    );
    let me = app
        .me(&string_at(&again, "/data/register/accessToken"))
        .await;
    assert_no_errors(&me);
    assert_eq!(app.user_rows().await.len(), 1);
    assert_eq!(app.session_rows().await.len(), 2);

    // Not the same registration: another password, another username, no username.
    for (password, username) in [
        ("another password entirely", Some("retrier")),
        (PASSWORD, Some("someone")),
        (PASSWORD, None),
    ] {
        let body = app.register_raw("retry@x.com", password, username).await;
        assert_eq!(error_code(&body), "EMAIL_TAKEN", "{body}");
    }
    assert_eq!(app.user_rows().await.len(), 1);
    assert_eq!(app.session_rows().await.len(), 2, "nothing stored");
}

#[tokio::test]
async fn a_registration_repeated_after_refresh_reuse_grace_seconds_is_email_taken() {
    let app = spawn_app_with(|config| config.refresh_reuse_grace_seconds = 1).await;
    assert_no_errors(&app.register_raw("late@x.com", PASSWORD, None).await);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let body = app.register_raw("late@x.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "EMAIL_TAKEN", "{body}");

    let never = spawn_app_with(|config| config.refresh_reuse_grace_seconds = 0).await;
    assert_no_errors(&never.register_raw("never@x.com", PASSWORD, None).await);
    let body = never.register_raw("never@x.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "EMAIL_TAKEN", "{body}");
    assert_eq!(never.session_rows().await.len(), 1);
}

/// Repeating a fresh account's registration is a login, so it cannot guess its password any
/// faster than a login could: the account's login limit holds.
#[tokio::test]
async fn guessing_a_fresh_accounts_password_by_repeating_its_registration_meets_the_login_limit() {
    let app = spawn_app_with(|config| config.rate_limit_account_per_minute = 3).await;
    assert_no_errors(&app.register_raw("guess@x.com", PASSWORD, None).await);
    let mut codes = Vec::new();
    for guess in 0..6 {
        let body = app
            .register_raw("guess@x.com", &format!("wrong guess number {guess}"), None)
            .await;
        codes.push(error_code(&body));
    }
    assert!(
        codes
            .iter()
            .all(|code| code == "EMAIL_TAKEN" || code == "RATE_LIMITED"),
        "{codes:?}"
    );
    assert!(codes.iter().any(|code| code == "RATE_LIMITED"), "{codes:?}");
    // Now even the right password waits, as a login would.
    let body = app.register_raw("guess@x.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    assert_eq!(app.session_rows().await.len(), 1);
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
