//! The account flows attacked (issue 18): a reset racing logins and refreshes in flight, every
//! account write cancelled at every await (on every backend, and through the session cache),
//! and generated inputs to every new mutation.

use std::time::Duration;

use authql::store::{
    IssuedToken, NewMail, NewToken, SessionPage, SessionStore, TokenPurpose, TokenStore, UserStore,
};
use chrono::{TimeDelta, Utc};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    accounts::{
        app_mailing_to, assert_invalid_token, request_email_change, request_reset, reset_password,
        verify_email,
    },
    helpers::*,
    session_cache::{
        accepted, agree, cancel_after, new_user, pool, session, settled, stores,
        user_with_sessions, wait_for_user,
    },
    smtp::{Delivered, SmtpServer},
};

const NEW_PASSWORD: &str = "a brand new passphrase";
const PATIENCE: Duration = Duration::from_secs(20);

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A token of `purpose` for `user_id` sent to `email`, and one mail carrying it.
fn issued(user_id: Uuid, purpose: TokenPurpose, email: &str, token: &str) -> IssuedToken {
    let now = Utc::now();
    IssuedToken {
        token: NewToken {
            id: Uuid::new_v4(),
            user_id,
            purpose,
            digest: digest(token),
            email: email.to_owned(),
            email_normalized: email.to_lowercase(),
            credential_version: authql::store::FIRST_CREDENTIAL_VERSION,
            created_at: now,
            expires_at: now + TimeDelta::hours(1),
        },
        mails: vec![NewMail {
            id: Uuid::new_v4(),
            kind: purpose.as_str().to_owned(),
            envelope_from: "noreply@example.com".into(),
            envelope_to: email.to_owned(),
            message: format!("Subject: link\r\n\r\ntoken={token}\r\n"),
            created_at: now,
            expires_at: now + TimeDelta::hours(1),
        }],
    }
}

/// Logins with the old password in flight, and a refresh, while the reset lands: none of the
/// pairs they got is accepted afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_or_refresh_in_flight_outlives_a_password_reset() {
    for round in 0..3u64 {
        let app = spawn_app_with(|config| {
            config.bcrypt_cost = 7;
            config.bcrypt_max_concurrency = Some(2);
            config.bcrypt_max_queue = Some(1000);
            config.email_verification = authql::config::EmailVerification::Off;
        })
        .await;
        let email = format!("racing{round}@x.com");
        let owner = app.register(&email).await;
        assert_no_errors(&request_reset(&app, &email).await);
        let token = eml_link_token(&app.mail_dir, "password_reset", 1).await;
        let racers: Vec<_> = (0..30)
            .map(|racer| {
                let (url, email) = (format!("{}/graphql", app.address), email.clone());
                let refresh = owner.refresh_token.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(racer)).await;
                    let body = if racer % 10 == 0 {
                        json!({
                            "query": "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken } }",
                            "variables": { "t": refresh },
                        })
                    } else {
                        json!({
                            "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
                            "variables": { "i": { "emailOrUsername": email, "password": PASSWORD } },
                        })
                    };
                    reqwest::Client::new()
                        .post(url)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .json::<Value>()
                        .await
                        .unwrap()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10 + 10 * round)).await;
        assert_no_errors(&reset_password(&app, &token, NEW_PASSWORD).await);
        let mut pairs = Vec::new();
        for racer in racers {
            let body = racer.await.unwrap();
            let data = body["data"]
                .as_object()
                .and_then(|data| data.values().next().cloned());
            match body
                .pointer("/errors/0/extensions/code")
                .and_then(Value::as_str)
            {
                None => {
                    let data = data.expect("a payload");
                    pairs.push((
                        string_at(&data, "/accessToken"),
                        string_at(&data, "/refreshToken"),
                    ));
                }
                Some(code) => assert!(
                    matches!(code, "INVALID_CREDENTIALS" | "UNAUTHENTICATED"),
                    "unexpected {code}: {body}"
                ),
            }
        }
        for (access, refresh) in &pairs {
            assert_eq!(error_code(&app.me(access).await), "UNAUTHENTICATED");
            assert_eq!(
                error_code(&app.refresh_raw(refresh).await),
                "UNAUTHENTICATED"
            );
        }
        assert!(app.session_rows().await.is_empty(), "round {round}");
        assert_no_errors(&app.login_raw(&email, NEW_PASSWORD).await);
    }
}

/// What must happen together does, wherever the caller gives up: a reset (the password, the
/// credential version, every session, the token), an email change (the address, the token), a
/// token with its mail, a registration with its verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_account_write_is_applied_whole_or_not_at_all_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    // The server migrates (or indexes) the database, and stops: its mail sender would empty
    // the outbox this test counts.
    let _dir = spawn_app_in_existing(dir, &url).await.stop().await;
    let store = open_store(&url, pool()).await;
    let every = SessionPage {
        first: 1000,
        after: None,
    };
    for polls in (0..30).chain([45, 70, 120, 250]) {
        let user_id = Uuid::new_v4();
        let email = format!("{user_id}@example.com");
        store
            .create_user_with_session(new_user(user_id), session(user_id, TimeDelta::hours(1)))
            .await
            .unwrap();
        for _ in 0..2 {
            store
                .create_session(session(user_id, TimeDelta::hours(1)), 100)
                .await
                .unwrap()
                .unwrap();
        }
        let token = Uuid::new_v4().simple().to_string();
        match polls % 4 {
            0 => {
                store
                    .issue_token(issued(user_id, TokenPurpose::PasswordReset, &email, &token))
                    .await
                    .unwrap();
                cancel_after(
                    store.reset_password(&digest(&token), Utc::now(), "reset".into()),
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
                let usable = store
                    .check_token(&digest(&token), &[TokenPurpose::PasswordReset], Utc::now())
                    .await
                    .unwrap()
                    .is_ok();
                let live = store
                    .list_live_sessions(user_id, user.credential_version, Utc::now(), every)
                    .await
                    .unwrap()
                    .len();
                if hash == "reset" {
                    assert_eq!(user.credential_version, 1);
                    assert!(!usable, "the token is used");
                    assert_eq!(live, 0, "every session ended");
                } else {
                    assert_eq!(user.credential_version, 0);
                    assert!(usable, "nothing changed, the token included");
                    assert_eq!(live, 3, "nothing changed");
                }
            }
            1 => {
                let new_email = format!("new-{user_id}@example.com");
                store
                    .issue_token(issued(
                        user_id,
                        TokenPurpose::EmailChange,
                        &new_email,
                        &token,
                    ))
                    .await
                    .unwrap();
                cancel_after(store.verify_email(&digest(&token), Utc::now()), polls).await;
                let user = wait_for_user(&*store, user_id).await.unwrap();
                let usable = store
                    .check_token(&digest(&token), &[TokenPurpose::EmailChange], Utc::now())
                    .await
                    .unwrap()
                    .is_ok();
                if user.email == new_email {
                    assert!(user.email_verified_at.is_some());
                    assert!(!usable);
                } else {
                    assert_eq!(user.email, email);
                    assert!(usable, "nothing changed, the token included");
                }
            }
            2 => {
                let before = outbox_rows_in(&url).await.len();
                cancel_after(
                    store.issue_token(issued(
                        user_id,
                        TokenPurpose::EmailVerification,
                        &email,
                        &token,
                    )),
                    polls,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let stored = token_rows_in(&url)
                    .await
                    .iter()
                    .any(|row| row.digest == digest(&token));
                let mails = outbox_rows_in(&url).await.len() - before;
                assert!(
                    (stored && mails == 1) || (!stored && mails == 0),
                    "token stored: {stored}, mails queued: {mails}"
                );
            }
            _ => {
                let newcomer = Uuid::new_v4();
                let newcomer_email = format!("{newcomer}@example.com");
                let before = outbox_rows_in(&url).await.len();
                cancel_after(
                    store.register_user(
                        new_user(newcomer),
                        Some(session(newcomer, TimeDelta::hours(1))),
                        Some(issued(
                            newcomer,
                            TokenPurpose::EmailVerification,
                            &newcomer_email,
                            &token,
                        )),
                    ),
                    polls,
                )
                .await;
                let exists = wait_for_user(&*store, newcomer).await.is_some();
                let stored = token_rows_in(&url)
                    .await
                    .iter()
                    .any(|row| row.digest == digest(&token));
                let mails = outbox_rows_in(&url).await.len() - before;
                assert!(
                    (exists && stored && mails == 1) || (!exists && !stored && mails == 0),
                    "user: {exists}, token: {stored}, mails: {mails}"
                );
            }
        }
    }
}

/// Through the session cache (SQLite): a reset or an email change cancelled at any await
/// leaves the cache agreeing with the database on every session of the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_reset_or_change_leaves_the_session_cache_exact() {
    if shared_database_url().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, plain) = stores(&dir).await;
    for method in ["reset_password", "verify_email"] {
        let mut polls = 0;
        let mut finished_in_a_row = 0;
        let mut runs = 0;
        while finished_in_a_row < 2 {
            assert!(polls < 1_000_000, "{method} never finished");
            let (user_id, sessions) = user_with_sessions(&store, 3).await;
            let token = Uuid::new_v4().simple().to_string();
            let finished = if method == "reset_password" {
                plain
                    .issue_token(issued(
                        user_id,
                        TokenPurpose::PasswordReset,
                        &format!("{user_id}@example.com"),
                        &token,
                    ))
                    .await
                    .unwrap();
                cancel_after(
                    store.reset_password(&digest(&token), Utc::now(), "reset".into()),
                    polls,
                )
                .await
            } else {
                plain
                    .issue_token(issued(
                        user_id,
                        TokenPurpose::EmailChange,
                        &format!("moved-{user_id}@example.com"),
                        &token,
                    ))
                    .await
                    .unwrap();
                cancel_after(store.verify_email(&digest(&token), Utc::now()), polls).await
            };
            for session in &sessions {
                let _ = accepted(&store, session).await;
            }
            settled(&store).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            agree(&store, &plain, &sessions).await;
            // The user the cache hands out with a session is the stored one (its address).
            let stored = plain
                .find_credentials_by_id(user_id)
                .await
                .unwrap()
                .unwrap()
                .user;
            if let Some((cached_user, _)) = store
                .find_session_by_access_jti(sessions[0].id, sessions[0].access_jti, Utc::now())
                .await
                .unwrap()
            {
                assert_eq!(cached_user, stored, "{method}");
            }
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

/// Every account's address, as stored.
async fn addresses_in(app: &TestApp) -> Vec<String> {
    user_rows_in(&app.database_url)
        .await
        .into_iter()
        .map(|user| user.email)
        .collect()
}

/// The links of `mails` that start with `prefix`, oldest first.
fn tokens_in(mails: &[Delivered], prefix: &str) -> Vec<String> {
    mails
        .iter()
        .filter(|mail| mail.text.contains(prefix))
        .map(|mail| mail.token(prefix))
        .collect()
}

/// The attack of the outside review: a session and password phished, a change of address to
/// the attacker's requested; the owner recovers (a reset, a password change, or an operator
/// disables the account), and the attacker then follows the change link, takes the address and
/// with it the account. Every link a user holds, whatever it is for, dies with any change of
/// what proves the account: each is `USED` afterwards, and the address stays the owner's.
#[tokio::test]
async fn no_link_outlives_a_change_of_what_proves_the_account() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |_| {}).await;
    let verify = format!("{}/verify-email#token=", app.address);
    let reset = format!("{}/reset-password#token=", app.address);
    for change in ["change-password", "reset-password", "disable-user"] {
        let email = format!("{change}@example.com");
        let attacker = format!("{change}@attacker.example");
        let owner = app.register(&email).await;
        let answer = request_email_change(&app, &owner.access_token, &attacker, PASSWORD).await;
        assert_no_errors(&answer);
        assert_no_errors(&request_reset(&app, &email).await);
        // To the owner: the verification link, the change notice, the reset link.
        let mails = smtp.wait_for(&email, 3, PATIENCE).await;
        let verification = tokens_in(&mails, &verify).remove(0);
        let outstanding_reset = tokens_in(&mails, &reset).remove(0);
        let change_link = smtp.one_for(&attacker).await.token(&verify);

        match change {
            "change-password" => {
                let answer = app
                    .graphql(
                        "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
                        json!({ "input": { "currentPassword": PASSWORD, "newPassword": NEW_PASSWORD } }),
                        Some(&owner.access_token),
                    )
                    .await;
                assert_no_errors(&answer);
            }
            "reset-password" => {
                // The owner's newest link; the outstanding one is superseded by it.
                assert_no_errors(&request_reset(&app, &email).await);
                let mails = smtp.wait_for(&email, 4, PATIENCE).await;
                let newest = tokens_in(&mails, &reset).pop().unwrap();
                assert_no_errors(&reset_password(&app, &newest, NEW_PASSWORD).await);
            }
            _ => {
                let disabled = crate::operators::admin(&app, &["disable-user", &email]).await;
                assert_eq!(disabled.code, 0, "{disabled:?}");
                let enabled = crate::operators::admin(&app, &["enable-user", &email]).await;
                assert_eq!(enabled.code, 0, "{enabled:?}");
            }
        }

        assert_invalid_token(&verify_email(&app, &change_link).await, "USED");
        assert_invalid_token(&verify_email(&app, &verification).await, "USED");
        assert_invalid_token(
            &reset_password(&app, &outstanding_reset, "the attacker's password").await,
            "USED",
        );
        let addresses = addresses_in(&app).await;
        assert!(
            addresses.contains(&email) && !addresses.contains(&attacker),
            "{change}: the address stays the owner's"
        );
        assert_eq!(
            error_code(&app.login_raw(&attacker, PASSWORD).await),
            "INVALID_CREDENTIALS",
            "{change}"
        );
    }
}

/// Links sent to an address are ended when the account's address changes, and stay ended
/// when it changes back (the second outside review revived a reset link that way).
#[tokio::test]
async fn links_to_an_old_address_stay_dead_when_the_address_comes_back() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |_| {}).await;
    let verify = format!("{}/verify-email#token=", app.address);
    let reset = format!("{}/reset-password#token=", app.address);
    let (first, second) = ("comes-back@example.com", "away@example.com");
    let owner = app.register(first).await;
    assert_no_errors(&request_reset(&app, first).await);
    let mails = smtp.wait_for(first, 2, PATIENCE).await;
    let verification = tokens_in(&mails, &verify).remove(0);
    let reset_link = tokens_in(&mails, &reset).remove(0);
    for (to, mailed) in [(second, 1), (first, 4)] {
        let answer = request_email_change(&app, &owner.access_token, to, PASSWORD).await;
        assert_no_errors(&answer);
        let mails = smtp.wait_for(to, mailed, PATIENCE).await;
        let link = tokens_in(&mails, &verify).pop().unwrap();
        assert_no_errors(&verify_email(&app, &link).await);
    }
    assert!(addresses_in(&app).await.contains(&first.to_owned()));
    assert_invalid_token(
        &reset_password(&app, &reset_link, NEW_PASSWORD).await,
        "USED",
    );
    assert_invalid_token(&verify_email(&app, &verification).await, "USED");
    assert_no_errors(&app.login_raw(first, PASSWORD).await);
}

/// The owner's reset and the attacker's change link, followed at the same moment, many times:
/// exactly one of the two wins each time (a reset ends the change link; a change of address
/// ends the reset link sent to the old one), on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_and_a_change_link_racing_never_both_win() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    let verify = format!("{}/verify-email#token=", app.address);
    let reset = format!("{}/reset-password#token=", app.address);
    let mut winners = (0, 0);
    for round in 0..12 {
        let email = format!("race-{round}@example.com");
        let attacker = format!("race-{round}@attacker.example");
        let owner = app.register(&email).await;
        let answer = request_email_change(&app, &owner.access_token, &attacker, PASSWORD).await;
        assert_no_errors(&answer);
        assert_no_errors(&request_reset(&app, &email).await);
        let mails = smtp.wait_for(&email, 2, PATIENCE).await;
        let reset_link = tokens_in(&mails, &reset).remove(0);
        let change_link = smtp.one_for(&attacker).await.token(&verify);
        // The reset hashes the new password before it takes its token: the link follows it
        // by 0 to 3 ms, so that each side wins some rounds.
        let (reset_answer, change_answer) =
            tokio::join!(reset_password(&app, &reset_link, NEW_PASSWORD), async {
                tokio::time::sleep(Duration::from_millis(round % 4)).await;
                verify_email(&app, &change_link).await
            },);
        let reset_won = reset_answer.get("errors").is_none();
        let change_won = change_answer.get("errors").is_none();
        assert!(
            reset_won != change_won,
            "round {round}: exactly one wins: {reset_answer} {change_answer}"
        );
        let loser = if reset_won {
            &change_answer
        } else {
            &reset_answer
        };
        assert_invalid_token(loser, "USED");
        let addresses = addresses_in(&app).await;
        let (kept, gone) = if reset_won {
            (&email, &attacker)
        } else {
            (&attacker, &email)
        };
        assert!(
            addresses.contains(kept) && !addresses.contains(gone),
            "round {round}"
        );
        if reset_won {
            winners.0 += 1;
        } else {
            winners.1 += 1;
        }
    }
    eprintln!(
        "reset won {} rounds, the change link {}",
        winners.0, winners.1
    );
}

fn runner() -> TestRunner {
    let cases = std::env::var("AUTHQL_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Text of any shape: printable, control characters, invisible ones, long runs, token-like.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,60}",
        "[ -~]{0,300}",
        "\\PC{0,80}@\\PC{0,80}",
        Just("\u{0}".repeat(43)),
        Just("A".repeat(43)),
        (1usize..20_000).prop_map(|n| "é".repeat(n)),
    ]
}

/// The outside review's lost update: an attacker's `changePassword` (with the phished password)
/// in flight while the owner resets. Whichever writes first wins and the other is refused
/// (the change: UNAUTHENTICATED or INVALID_CREDENTIALS, its session or its password ended by
/// the reset; the reset: USED, its link ended by the change); never both, and the password in force is the winner's. Two changes
/// by one account at once: one wins, the other is refused, on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_in_flight_never_overwrites_a_reset() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    let reset = format!("{}/reset-password#token=", app.address);
    let change = |access: String, new_password: &'static str| {
        let app = &app;
        async move {
            app.graphql(
                "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
                json!({ "input": { "currentPassword": PASSWORD, "newPassword": new_password } }),
                Some(&access),
            )
            .await
        }
    };
    let mut winners = (0, 0);
    for round in 0..12 {
        let email = format!("lost-update-{round}@example.com");
        let attacker = app.register(&email).await;
        assert_no_errors(&request_reset(&app, &email).await);
        let link = smtp.one_for(&email).await.token(&reset);
        let (changed, reset_answer) = tokio::join!(
            change(attacker.access_token.clone(), "the attacker's password"),
            async {
                tokio::time::sleep(Duration::from_millis(round % 4)).await;
                reset_password(&app, &link, NEW_PASSWORD).await
            },
        );
        let change_won = changed.get("errors").is_none();
        let reset_won = reset_answer.get("errors").is_none();
        assert!(
            change_won != reset_won,
            "round {round}: exactly one wins: {changed} {reset_answer}"
        );
        let (in_force, refused) = if reset_won {
            // Its session ended by the reset, or (the reset first) its password no longer
            // the account's.
            assert!(
                ["UNAUTHENTICATED", "INVALID_CREDENTIALS"].contains(&error_code(&changed).as_str()),
                "{changed}"
            );
            winners.0 += 1;
            (NEW_PASSWORD, "the attacker's password")
        } else {
            assert_invalid_token(&reset_answer, "USED");
            winners.1 += 1;
            ("the attacker's password", NEW_PASSWORD)
        };
        assert_no_errors(&app.login_raw(&email, in_force).await);
        assert_eq!(
            error_code(&app.login_raw(&email, refused).await),
            "INVALID_CREDENTIALS",
            "round {round}"
        );
    }
    eprintln!("reset won {} rounds, the change {}", winners.0, winners.1);

    // Two changes from two sessions of one account at once.
    for round in 0..4 {
        let email = format!("two-changes-{round}@example.com");
        let first = app.register(&email).await;
        let second = app.login(&email).await;
        let (a, b) = tokio::join!(
            change(first.access_token.clone(), "the first new password"),
            change(second.access_token.clone(), "the second new password"),
        );
        let won = [&a, &b]
            .iter()
            .filter(|answer| answer.get("errors").is_none())
            .count();
        assert_eq!(won, 1, "round {round}: {a} {b}");
        let in_force = if a.get("errors").is_none() {
            "the first new password"
        } else {
            "the second new password"
        };
        assert_no_errors(&app.login_raw(&email, in_force).await);
    }
}

/// Address-shaped text: printable ASCII before the `@` (quotes, angle brackets, commas, a second
/// `@`), quoted local parts, RFC 2047 encoded-words, Unicode.
fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{1,30}@example\\.com",
        "\"[ -~]{0,20}\"@example\\.com",
        "=\\?[a-zA-Z0-9-]{1,10}\\?[qQbB]\\?[!-~]{0,20}\\?=@example\\.com",
        "[a-z]{1,8}[<>,;:()\\[\\]\"@ ][a-z]{1,8}@[a-z]{1,8}\\.example",
        "\\PC{1,40}@\\PC{1,40}",
        "[a-zａ-ｚ．＠.]{1,12}@example\\.com",
    ]
}

/// Every account mutation, with generated arguments, signed in or not: always answered in
/// time, never a 500 or INTERNAL_SERVER_ERROR, every error with one of the documented codes.
#[test]
fn generated_inputs_to_the_account_mutations_get_documented_answers() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app_with(|config| {
        config.rate_limit_mails_per_address_per_hour = 1_000_000;
    }));
    let account = runtime.block_on(app.register("fuzzer@x.com"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("{}/graphql", app.address);
    let allowed = [
        "INVALID_TOKEN",
        "BAD_USER_INPUT",
        "RATE_LIMITED",
        "UNAUTHENTICATED",
        "EMAIL_TAKEN",
        "INVALID_CREDENTIALS",
        "PAYLOAD_TOO_LARGE",
        "SERVICE_UNAVAILABLE",
    ];
    let operations = [
        "mutation($a: String!) { requestPasswordReset(email: $a) }",
        "mutation($a: String!, $b: String!) { resetPassword(input: { token: $a, newPassword: $b }) }",
        "mutation($a: String!) { verifyEmail(token: $a) { id } }",
        "mutation { sendVerificationEmail }",
        "mutation($a: String!, $b: String!) { requestEmailChange(input: { newEmail: $a, password: $b }) }",
    ];
    runner()
        .run(
            &(0..operations.len(), text(), text(), any::<bool>()),
            |(operation, a, b, signed_in)| {
                runtime.block_on(async {
                    let mut request = client.post(&url).json(&json!({
                        "query": operations[operation],
                        "variables": { "a": a, "b": b },
                    }));
                    if signed_in {
                        request = request.bearer_auth(&account.access_token);
                    }
                    let answer = request
                        .send()
                        .await
                        .map_err(|e| TestCaseError::fail(format!("no answer in time: {e}")))?;
                    prop_assert!(answer.status() != reqwest::StatusCode::INTERNAL_SERVER_ERROR);
                    let body: Value = answer
                        .json()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if let Some(errors) = body.get("errors").and_then(Value::as_array) {
                        for error in errors {
                            let code = error
                                .pointer("/extensions/code")
                                .and_then(Value::as_str)
                                .unwrap_or("(none)");
                            prop_assert!(allowed.contains(&code), "{}", body);
                        }
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    runtime.block_on(async {
        // Still serving, the account untouched.
        assert_no_errors(&app.me(&account.access_token).await);
        assert_no_errors(&app.login_raw("fuzzer@x.com", PASSWORD).await);
    });
}

/// Generated addresses where they are mailed at once (registration's verification link, an
/// address change proven by the right password, a reset): each is refused as BAD_USER_INPUT or
/// accepted, never an INTERNAL_SERVER_ERROR; and an address accepted is one that mail reaches
/// as written.
#[test]
fn generated_addresses_are_refused_or_mailed_as_written() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let account = runtime.block_on(app.register("addresses@x.com"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("{}/graphql", app.address);
    let operations = [
        "mutation($a: String!, $b: String!) { register(input: { email: $a, password: $b }) { accessToken } }",
        "mutation($a: String!, $b: String!) { requestEmailChange(input: { newEmail: $a, password: $b }) }",
        "mutation($a: String!) { requestPasswordReset(email: $a) }",
    ];
    let cases = runner().config().cases * 4;
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
    .run(&(0..operations.len(), address()), |(operation, address)| {
        runtime.block_on(async {
            let answer = client
                .post(&url)
                .bearer_auth(&account.access_token)
                .json(&json!({
                    "query": operations[operation],
                    "variables": { "a": address, "b": PASSWORD },
                }))
                .send()
                .await
                .map_err(|e| TestCaseError::fail(format!("no answer in time: {e}")))?;
            let body: Value = answer
                .json()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if body.get("errors").is_some() {
                let code = error_code(&body);
                prop_assert!(
                    ["BAD_USER_INPUT", "EMAIL_TAKEN", "USERNAME_TAKEN"].contains(&code.as_str()),
                    "{address:?}: {body}"
                );
            } else if operation < 2 {
                prop_assert!(
                    authql_identity::email_spelling(&address)
                        .is_some_and(|spelling| authql::mail::smtp_address(&spelling).is_some()),
                    "{address:?} accepted, but mail cannot reach it as written"
                );
            }
            Ok(())
        })
    })
    .unwrap();
}
