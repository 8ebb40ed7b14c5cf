//! Accounts people can get back into (issue 18): password reset, email verification and email
//! change, each mailed through a real SMTP server (aiosmtpd), its link followed as a user
//! would, and the outcome checked on the stored state and the tokens.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    helpers::*,
    session_events::{Ended, SESSION_EVENTS, WsClient},
    smtp::SmtpServer,
};

const NEW_PASSWORD: &str = "a brand new passphrase";
const PATIENCE: Duration = Duration::from_secs(20);

/// An app that mails through `smtp`.
pub async fn app_mailing_to(
    smtp: &SmtpServer,
    configure: impl FnOnce(&mut authql::config::Config),
) -> TestApp {
    let url = smtp.url();
    spawn_app_with(move |config| {
        config.smtp_url = Some(url.into());
        configure(config);
    })
    .await
}

pub async fn request_reset(app: &TestApp, email: &str) -> Value {
    app.graphql(
        "mutation($email: String!) { requestPasswordReset(email: $email) }",
        json!({ "email": email }),
        None,
    )
    .await
}

pub async fn reset_password(app: &TestApp, token: &str, new_password: &str) -> Value {
    app.graphql(
        "mutation($input: ResetPasswordInput!) { resetPassword(input: $input) }",
        json!({ "input": { "token": token, "newPassword": new_password } }),
        None,
    )
    .await
}

pub async fn verify_email(app: &TestApp, token: &str) -> Value {
    app.graphql(
        "mutation($token: String!) { verifyEmail(token: $token) { id email username emailVerified } }",
        json!({ "token": token }),
        None,
    )
    .await
}

pub async fn request_email_change(
    app: &TestApp,
    access_token: &str,
    new_email: &str,
    password: &str,
) -> Value {
    app.graphql(
        "mutation($input: RequestEmailChangeInput!) { requestEmailChange(input: $input) }",
        json!({ "input": { "newEmail": new_email, "password": password } }),
        Some(access_token),
    )
    .await
}

async fn me(app: &TestApp, access_token: &str) -> Value {
    app.graphql(
        "{ me { email username emailVerified } }",
        json!({}),
        Some(access_token),
    )
    .await
}

/// The claims of a JWT, read without verifying it.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Asserts INVALID_TOKEN with `reason`.
pub fn assert_invalid_token(body: &Value, reason: &str) {
    assert_eq!(error_code(body), "INVALID_TOKEN", "{body}");
    assert_eq!(
        string_at(body, "/errors/0/extensions/reason"),
        reason,
        "{body}"
    );
}

#[tokio::test]
async fn a_forgotten_password_comes_back_through_a_real_smtp_server() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |_| {}).await;
    let first = app.register("alice@example.com").await;
    let second = app.login("alice@example.com").await;
    // Registration mailed a verification link; the reset link comes second.
    let answer = request_reset(&app, "ALICE@example.com ").await;
    assert_no_errors(&answer);
    assert_eq!(answer["data"]["requestPasswordReset"], true);
    let mails = smtp.wait_for("alice@example.com", 2, PATIENCE).await;
    let reset = mails
        .iter()
        .find(|mail| mail.text.contains("/reset-password"))
        .expect("a reset mail");
    assert!(
        reset.subject.contains("Reset your authql password"),
        "{}",
        reset.subject
    );
    assert!(reset.to_header.contains("alice@example.com"));
    assert!(!reset.html.is_empty(), "an HTML part too");
    let token = reset.token(&format!("{}/reset-password#token=", app.address));
    assert_eq!(token.len(), 43);

    // Only the token's digest is stored.
    let tokens = token_rows_in(&app.database_url).await;
    assert!(tokens.iter().all(|row| row.digest != token));
    assert!(tokens.iter().any(|row| row.digest == sha256_hex(&token)
        && row.purpose == "password_reset"
        && row.used_at.is_none()));

    let answer = reset_password(&app, &token, NEW_PASSWORD).await;
    assert_no_errors(&answer);
    assert_eq!(answer["data"]["resetPassword"], true);

    // Every session ended: both access tokens and both refresh tokens.
    for account in [&first, &second] {
        assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
        assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
    }
    assert!(app.session_rows().await.is_empty());
    // The old password is refused, the new one works, and the mail proved the address.
    assert_eq!(
        error_code(&app.login_raw("alice@example.com", PASSWORD).await),
        "INVALID_CREDENTIALS"
    );
    let fresh = app.login_raw("alice@example.com", NEW_PASSWORD).await;
    assert_no_errors(&fresh);
    let access = string_at(&fresh, "/data/login/accessToken");
    assert_eq!(me(&app, &access).await["data"]["me"]["emailVerified"], true);
    assert_eq!(claims_of(&access)["email_verified"], true);
    // The link works once.
    assert_invalid_token(
        &reset_password(&app, &token, "yet another passphrase").await,
        "USED",
    );
    let tokens = token_rows_in(&app.database_url).await;
    assert!(
        tokens
            .iter()
            .filter(|row| row.purpose == "password_reset")
            .all(|row| row.used_at.is_some())
    );
}

#[tokio::test]
async fn ten_concurrent_resets_with_one_token_leave_exactly_one_winner() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    app.register("bob@example.com").await;
    assert_no_errors(&request_reset(&app, "bob@example.com").await);
    let token = smtp
        .one_for("bob@example.com")
        .await
        .token(&format!("{}/reset-password#token=", app.address));
    let attempts = (0..10).map(|n| {
        let (app, token) = (&app, token.clone());
        async move { reset_password(app, &token, &format!("winner number {n} passphrase")).await }
    });
    let answers = futures::future::join_all(attempts).await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, answer)| answer["data"]["resetPassword"] == true)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    for (n, answer) in answers.iter().enumerate() {
        if n != winners[0] {
            assert_invalid_token(answer, "USED");
        }
    }
    // The winner's password is the one that was set.
    let password = format!("winner number {} passphrase", winners[0]);
    assert_no_errors(&app.login_raw("bob@example.com", &password).await);
}

#[tokio::test]
async fn a_newer_link_supersedes_the_older_and_a_password_change_ends_them() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    let carol = app.register("carol@example.com").await;
    let prefix = format!("{}/reset-password#token=", app.address);
    assert_no_errors(&request_reset(&app, "carol@example.com").await);
    assert_no_errors(&request_reset(&app, "carol@example.com").await);
    let mails = smtp.wait_for("carol@example.com", 2, PATIENCE).await;
    let (older, newer) = (mails[0].token(&prefix), mails[1].token(&prefix));
    assert_ne!(older, newer);
    assert_invalid_token(&reset_password(&app, &older, NEW_PASSWORD).await, "USED");

    // A password changed by its owner ends the outstanding link too.
    let answer = app
        .graphql(
            "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
            json!({ "input": { "currentPassword": PASSWORD, "newPassword": "changed by carol herself" } }),
            Some(&carol.access_token),
        )
        .await;
    assert_no_errors(&answer);
    assert_invalid_token(&reset_password(&app, &newer, NEW_PASSWORD).await, "USED");
    assert_no_errors(
        &app.login_raw("carol@example.com", "changed by carol herself")
            .await,
    );
}

#[tokio::test]
async fn tokens_that_are_not_authqls_or_of_another_purpose_are_unknown_and_expired_ones_say_so() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |_| {}).await;
    app.register("dave@example.com").await;
    let verification = smtp
        .one_for("dave@example.com")
        .await
        .token(&format!("{}/verify-email#token=", app.address));
    // A verification token is nothing to resetPassword, and the other way round.
    assert_invalid_token(
        &reset_password(&app, &verification, NEW_PASSWORD).await,
        "UNKNOWN",
    );
    for garbage in ["", "not a token", &"A".repeat(43), &"x".repeat(10_000)] {
        assert_invalid_token(
            &reset_password(&app, garbage, NEW_PASSWORD).await,
            "UNKNOWN",
        );
        assert_invalid_token(&verify_email(&app, garbage).await, "UNKNOWN");
    }
    assert_no_errors(&request_reset(&app, "dave@example.com").await);
    let mails = smtp.wait_for("dave@example.com", 2, PATIENCE).await;
    let reset = mails[1].token(&format!("{}/reset-password#token=", app.address));
    assert_invalid_token(&verify_email(&app, &reset).await, "UNKNOWN");
    // A password the policy refuses is refused before the token is looked at: the token
    // still works afterwards.
    let answer = reset_password(&app, &reset, "short").await;
    assert_eq!(error_code(&answer), "BAD_USER_INPUT");
    assert_eq!(
        string_at(&answer, "/errors/0/extensions/field"),
        "newPassword"
    );
    // Past its lifetime the link is EXPIRED, and changes nothing.
    expire_tokens_in(&app.database_url).await;
    assert_invalid_token(&reset_password(&app, &reset, NEW_PASSWORD).await, "EXPIRED");
    assert_no_errors(&app.login_raw("dave@example.com", PASSWORD).await);
}

#[tokio::test]
async fn a_reset_request_tells_nobody_whether_an_account_exists() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    app.register("erin@example.com").await;
    app.register("frank@example.com").await;
    let store = open_store(&app.database_url, pool()).await;
    let frank = user_rows_in(&app.database_url)
        .await
        .into_iter()
        .find(|user| user.email == "frank@example.com")
        .unwrap();
    store
        .set_user_disabled(frank.id, Some(chrono::Utc::now()))
        .await
        .unwrap();

    let mut timings: Vec<(&str, Vec<Duration>)> = Vec::new();
    for email in [
        "erin@example.com",
        "nobody@example.com",
        "frank@example.com",
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let answer = request_reset(&app, email).await;
            times.push(started.elapsed());
            // The very same answer for each.
            assert_eq!(answer, json!({ "data": { "requestPasswordReset": true } }));
        }
        timings.push((email, times));
    }
    // Known and unknown take the same time: the floor hides the work of the known one.
    let median = |times: &Vec<Duration>| {
        let mut sorted = times.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    for (email, times) in &timings {
        assert!(
            times.iter().all(|time| *time >= Duration::from_millis(250)),
            "{email}: {times:?}"
        );
    }
    let known = median(&timings[0].1);
    let unknown = median(&timings[1].1);
    let gap = known.abs_diff(unknown);
    assert!(
        gap < Duration::from_millis(150),
        "known {known:?}, unknown {unknown:?}"
    );

    // Only the enabled account got mail; the disabled one got none.
    smtp.wait_for("erin@example.com", 5, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(smtp.delivered_to("frank@example.com").is_empty());
    assert!(smtp.delivered_to("nobody@example.com").is_empty());

    // A malformed address is the one thing that is told.
    let answer = request_reset(&app, "not an address").await;
    assert_eq!(error_code(&answer), "BAD_USER_INPUT");
    assert_eq!(string_at(&answer, "/errors/0/extensions/field"), "email");
}

fn pool() -> authql::store::PoolSettings {
    authql::store::PoolSettings {
        max_connections: Some(2),
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
        busy_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn nobody_can_flood_an_inbox_known_or_not() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
        config.rate_limit_mails_per_address_per_hour = 2;
        config.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    app.register("gina@example.com").await;
    for email in ["gina@example.com", "nobody@example.com"] {
        // From three client addresses: the limit is the recipient's.
        for (n, client) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
            let answer = app
                .graphql_from(
                    Some(client),
                    "mutation($email: String!) { requestPasswordReset(email: $email) }",
                    json!({ "email": email }),
                    None,
                )
                .await;
            if n < 2 {
                assert_no_errors(&answer);
            } else {
                assert_eq!(error_code(&answer), "RATE_LIMITED", "{email}: {answer}");
                let retry: u64 = answer["errors"][0]["extensions"]["retryAfterSeconds"]
                    .as_u64()
                    .unwrap();
                assert!((1..=1800).contains(&retry), "{retry}");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.wait_for("gina@example.com", 2, PATIENCE).await.len(),
        2
    );
}

#[tokio::test]
async fn an_address_is_verified_by_its_link_and_access_tokens_say_so() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |_| {}).await;
    let hana = app.register("hana@example.com").await;
    assert_eq!(claims_of(&hana.access_token)["email_verified"], false);
    assert_eq!(claims_of(&hana.access_token)["email"], "hana@example.com");
    assert_eq!(
        me(&app, &hana.access_token).await["data"]["me"]["emailVerified"],
        false
    );
    let prefix = format!("{}/verify-email#token=", app.address);
    let first = smtp.one_for("hana@example.com").await;
    assert!(
        first.subject.contains("Confirm your address"),
        "{}",
        first.subject
    );

    // A fresh link replaces the first one.
    let answer = app
        .graphql(
            "mutation { sendVerificationEmail }",
            json!({}),
            Some(&hana.access_token),
        )
        .await;
    assert_eq!(answer["data"]["sendVerificationEmail"], true, "{answer}");
    let mails = smtp.wait_for("hana@example.com", 2, PATIENCE).await;
    assert_invalid_token(&verify_email(&app, &mails[0].token(&prefix)).await, "USED");

    let answer = verify_email(&app, &mails[1].token(&prefix)).await;
    assert_no_errors(&answer);
    assert_eq!(answer["data"]["verifyEmail"]["email"], "hana@example.com");
    assert_eq!(answer["data"]["verifyEmail"]["emailVerified"], true);
    assert_eq!(
        me(&app, &hana.access_token).await["data"]["me"]["emailVerified"],
        true
    );
    // The next access token carries it.
    let refreshed = app.refresh_raw(&hana.refresh_token).await;
    assert_no_errors(&refreshed);
    let access = string_at(&refreshed, "/data/refresh/accessToken");
    assert_eq!(claims_of(&access)["email_verified"], true);
    // Nothing more to send.
    let answer = app
        .graphql(
            "mutation { sendVerificationEmail }",
            json!({}),
            Some(&access),
        )
        .await;
    assert_eq!(answer["data"]["sendVerificationEmail"], false, "{answer}");
    // Signed in only.
    let answer = app
        .graphql("mutation { sendVerificationEmail }", json!({}), None)
        .await;
    assert_unauthenticated(&answer, "MISSING");
    let stored = user_rows_in(&app.database_url).await;
    assert!(stored[0].email_verified_at.is_some());
}

#[tokio::test]
async fn where_verification_is_required_nobody_signs_in_unverified_and_registration_tells_nothing()
{
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Required;
    })
    .await;
    let prefix = format!("{}/verify-email#token=", app.address);
    let registered = app.register_raw("ivan@example.com", PASSWORD, None).await;
    assert_eq!(
        error_code(&registered),
        "EMAIL_NOT_VERIFIED",
        "{registered}"
    );
    assert!(registered["data"].is_null(), "{registered}");
    assert!(app.session_rows().await.is_empty(), "no session");
    assert_eq!(user_rows_in(&app.database_url).await.len(), 1);
    smtp.one_for("ivan@example.com").await;

    // The right password: EMAIL_NOT_VERIFIED and a fresh link; a wrong one: no mail.
    let refused = app.login_raw("ivan@example.com", PASSWORD).await;
    assert_eq!(error_code(&refused), "EMAIL_NOT_VERIFIED");
    assert_eq!(
        error_code(&app.login_raw("ivan@example.com", "not the password").await),
        "INVALID_CREDENTIALS"
    );
    let mails = smtp.wait_for("ivan@example.com", 2, PATIENCE).await;

    // Registering the taken address answers exactly as a new one does, creates nothing, and
    // tells its owner (without a link).
    let again = app
        .register_raw("Ivan@Example.com", "someone else's password", Some("ivan2"))
        .await;
    let fresh = app
        .register_raw(
            "new.person@example.com",
            "someone else's password",
            Some("newperson"),
        )
        .await;
    assert_eq!(
        again, fresh,
        "the same answer for a taken and a new address"
    );
    assert_eq!(user_rows_in(&app.database_url).await.len(), 2);
    // With a username someone has (here: the new person's), both answer USERNAME_TAKEN: the
    // username decides, never the address.
    for address in ["ivan@example.com", "third.person@example.com"] {
        let taken = app
            .register_raw(address, "someone else's password", Some("NewPerson"))
            .await;
        assert_eq!(error_code(&taken), "USERNAME_TAKEN", "{address}: {taken}");
    }
    assert_eq!(user_rows_in(&app.database_url).await.len(), 2);
    let notices = smtp.wait_for("ivan@example.com", 3, PATIENCE).await;
    let notice = &notices[2];
    assert!(
        notice.subject.contains("tried to register"),
        "{}",
        notice.subject
    );
    assert!(!notice.text.contains("token="));

    // The first link was replaced by the login's; the login's works, and login with it.
    assert_invalid_token(&verify_email(&app, &mails[0].token(&prefix)).await, "USED");
    assert_no_errors(&verify_email(&app, &mails[1].token(&prefix)).await);
    let login = app.login_raw("ivan@example.com", PASSWORD).await;
    assert_no_errors(&login);
    let access = string_at(&login, "/data/login/accessToken");
    assert_eq!(claims_of(&access)["email_verified"], true);
}

#[tokio::test]
async fn an_email_change_happens_when_the_new_address_follows_its_link() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |_| {}).await;
    let jane = app.register("jane@example.com").await;
    app.register("taken@example.com").await;
    let old_link = smtp.one_for("jane@example.com").await;

    let answer = request_email_change(&app, &jane.access_token, "jane@new.example", "wrong").await;
    assert_eq!(error_code(&answer), "INVALID_CREDENTIALS");
    let answer =
        request_email_change(&app, &jane.access_token, "TAKEN@example.com", PASSWORD).await;
    assert_eq!(error_code(&answer), "EMAIL_TAKEN");
    let answer =
        request_email_change(&app, &jane.access_token, " Jane@Example.com", PASSWORD).await;
    assert_eq!(error_code(&answer), "BAD_USER_INPUT");
    assert_eq!(string_at(&answer, "/errors/0/extensions/field"), "newEmail");
    let answer = request_email_change(&app, &jane.access_token, "jane@new.example", PASSWORD).await;
    assert_no_errors(&answer);
    assert_eq!(answer["data"]["requestEmailChange"], true);

    let link = smtp.one_for("jane@new.example").await;
    let notices = smtp.wait_for("jane@example.com", 2, PATIENCE).await;
    let notice = &notices[1];
    assert!(notice.text.contains("jane@new.example"));
    assert!(
        !notice.text.contains("token="),
        "the notice carries no link"
    );
    // Nothing changes until the link is followed.
    assert_eq!(
        me(&app, &jane.access_token).await["data"]["me"]["email"],
        "jane@example.com"
    );

    let answer = verify_email(
        &app,
        &link.token(&format!("{}/verify-email#token=", app.address)),
    )
    .await;
    assert_no_errors(&answer);
    assert_eq!(answer["data"]["verifyEmail"]["email"], "jane@new.example");
    assert_eq!(answer["data"]["verifyEmail"]["emailVerified"], true);
    // The username was the email, and follows it.
    assert_eq!(
        answer["data"]["verifyEmail"]["username"],
        "jane@new.example"
    );
    let now = me(&app, &jane.access_token).await;
    assert_eq!(now["data"]["me"]["email"], "jane@new.example");
    // Logins go by the new address; a refresh issues tokens that carry it.
    assert_eq!(
        error_code(&app.login_raw("jane@example.com", PASSWORD).await),
        "INVALID_CREDENTIALS"
    );
    assert_no_errors(&app.login_raw("jane@new.example", PASSWORD).await);
    let refreshed = app.refresh_raw(&jane.refresh_token).await;
    let access = string_at(&refreshed, "/data/refresh/accessToken");
    assert_eq!(claims_of(&access)["email"], "jane@new.example");
    assert_eq!(claims_of(&access)["email_verified"], true);
    // The verification link sent to the old address is of no use any more.
    assert_invalid_token(
        &verify_email(
            &app,
            &old_link.token(&format!("{}/verify-email#token=", app.address)),
        )
        .await,
        "USED",
    );
}

#[tokio::test]
async fn a_new_address_taken_before_its_link_is_followed_is_refused_and_the_link_kept() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    let kim = app.register("kim@example.com").await;
    assert_no_errors(
        &request_email_change(&app, &kim.access_token, "wanted@example.com", PASSWORD).await,
    );
    let token = smtp
        .one_for("wanted@example.com")
        .await
        .token(&format!("{}/verify-email#token=", app.address));
    // Someone registers the address meanwhile.
    let other = app.register("wanted@example.com").await;
    assert_eq!(error_code(&verify_email(&app, &token).await), "EMAIL_TAKEN");
    assert_eq!(
        me(&app, &kim.access_token).await["data"]["me"]["email"],
        "kim@example.com"
    );
    // Once it is free again, the link still works.
    let deleted = app
        .graphql(
            "mutation($input: DeleteAccountInput!) { deleteAccount(input: $input) }",
            json!({ "input": { "password": PASSWORD } }),
            Some(&other.access_token),
        )
        .await;
    assert_no_errors(&deleted);
    assert_no_errors(&verify_email(&app, &token).await);
    assert_eq!(
        me(&app, &kim.access_token).await["data"]["me"]["email"],
        "wanted@example.com"
    );
}

#[tokio::test]
async fn a_reset_publishes_revoked_for_every_session_it_ends() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    let watcher = app.register("lee@example.com").await;
    let other = app.login("lee@example.com").await;
    let mut events = WsClient::signed_in(&app.address, &watcher.access_token).await;
    events.subscribe("1", SESSION_EVENTS).await;
    assert_no_errors(&request_reset(&app, "lee@example.com").await);
    let token = smtp
        .one_for("lee@example.com")
        .await
        .token(&format!("{}/reset-password#token=", app.address));
    assert_no_errors(&reset_password(&app, &token, NEW_PASSWORD).await);
    let mut revoked = Vec::new();
    while let Some(event) = events.next_event(Duration::from_secs(5)).await {
        if event["type"] == "REVOKED" {
            revoked.push(string_at(&event, "/sessionId"));
        }
        if revoked.len() == 2 {
            break;
        }
    }
    revoked.sort();
    let mut expected = vec![watcher.session_id.clone(), other.session_id.clone()];
    expected.sort();
    assert_eq!(revoked, expected);
    // The connection's own session ended: it is closed.
    assert_eq!(
        events.ended(Duration::from_secs(5)).await,
        Ended::Closed(4403)
    );
}

/// An address stored before authql sent mail, of a shape mail cannot reach exactly (a quoted
/// local part): asking for a verification link says so (BAD_USER_INPUT `email`), never an
/// internal error and never `false`; a reset for it is refused as input, as for any address
/// of that shape, whether or not an account has it; and the address can be replaced.
#[tokio::test]
async fn an_address_mail_cannot_reach_is_refused_as_input_not_an_internal_error() {
    let app = spawn_app().await;
    let account = app.register("legacy@example.com").await;
    let legacy = "\"a>b\"@example.com";
    if mongodb_url().is_some() {
        mongodb_database(&app.database_url)
            .await
            .collection::<bson::Document>("users")
            .update_many(
                bson::doc! { "email": "legacy@example.com" },
                bson::doc! { "$set": { "email": legacy, "email_normalized": legacy } },
            )
            .await
            .unwrap();
    } else {
        use sea_orm::ConnectionTrait;
        app.db()
            .await
            .execute_unprepared(&format!(
                "UPDATE users SET email = '{legacy}', email_normalized = '{legacy}' WHERE email = 'legacy@example.com'"
            ))
            .await
            .unwrap();
    }
    let answer = app
        .graphql(
            "mutation { sendVerificationEmail }",
            json!({}),
            Some(&account.access_token),
        )
        .await;
    assert_eq!(error_code(&answer), "BAD_USER_INPUT", "{answer}");
    assert_eq!(string_at(&answer, "/errors/0/extensions/field"), "email");
    for address in [legacy, "\"c>d\"@example.com"] {
        let answer = request_reset(&app, address).await;
        assert_eq!(error_code(&answer), "BAD_USER_INPUT", "{answer}");
    }
    // Spellings whose key names another mailbox than the one mail would go to: full-width
    // letters, a full-width `＠` or dots that fold into a second `@` or a `..`.
    for address in [
        "ｌegacy@example.com",
        "victim＠gmail.com@attacker.example",
        "a．．b@example.com",
    ] {
        let answer = app.register_raw(address, PASSWORD, Some("folded")).await;
        assert_eq!(error_code(&answer), "BAD_USER_INPUT", "{address}: {answer}");
        assert_eq!(string_at(&answer, "/errors/0/extensions/field"), "email");
    }
    let answer = request_email_change(
        &app,
        &account.access_token,
        "legacy-new@example.com",
        PASSWORD,
    )
    .await;
    assert_no_errors(&answer);
    assert_eq!(token_rows_in(&app.database_url).await.len(), 2);
}
