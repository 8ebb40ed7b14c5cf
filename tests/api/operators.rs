//! What operators and leaving users do (issue 12): `authql admin` against a running server, on
//! every backend (on SQLite the CLI hands the command to the server holding the file), and
//! `deleteAccount`.

use serde_json::{Value, json};

use crate::helpers::*;

/// What one run of `authql admin` did.
#[derive(Debug)]
pub(crate) struct AdminRun {
    pub(crate) code: i32,
    stdout: String,
}

/// Runs `authql admin <args>` against `database_url`, as an operator would, beside the server.
async fn admin_on(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> AdminRun {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_authql"));
    command
        .env_clear()
        .env("DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .arg("admin")
        .args(args);
    // The server may be in this process, on this runtime: wait for the CLI off it.
    let output = tokio::task::spawn_blocking(move || command.output().expect("the CLI runs"))
        .await
        .unwrap();
    AdminRun {
        code: output.status.code().expect("the CLI exits"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

pub(crate) async fn admin(app: &TestApp, args: &[&str]) -> AdminRun {
    admin_on(&app.database_url, args, &[]).await
}

fn json_of(run: &AdminRun) -> Value {
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("JSON on stdout: {run:?}"))
}

#[tokio::test]
async fn admin_sessions_lists_the_live_sessions_as_a_table_and_as_json() {
    let app = spawn_app().await;
    let first = app.register("Listed@X.com").await;
    let second = app.login("listed@x.com").await;
    let other = app.register("other@x.com").await;

    let table = admin(&app, &["sessions", "listed@x.com"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains(&first.session_id), "{table:?}");
    assert!(table.stdout.contains(&second.session_id), "{table:?}");
    assert!(!table.stdout.contains(&other.session_id), "{table:?}");

    // By username too (it defaults to the email), and as JSON.
    let listed = json_of(&admin(&app, &["sessions", "--json", "LISTED@x.com"]).await);
    assert_eq!(listed["answer"], "sessions");
    assert_eq!(listed["user"]["email"], "Listed@X.com");
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|session| session["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.session_id.as_str(), first.session_id.as_str()]);
    for session in listed["sessions"].as_array().unwrap() {
        for field in ["created_at", "expires_at", "ip_address"] {
            assert!(session[field].is_string(), "{field}: {session}");
        }
    }
}

#[tokio::test]
async fn a_session_revoked_from_the_cli_is_refused_on_the_next_request() {
    let app = spawn_app().await;
    let first = app.register("revoked@x.com").await;
    let second = app.login("revoked@x.com").await;
    // Cached by a request first (on SQLite the server caches sessions).
    assert_no_errors(&app.me(&first.access_token).await);

    let one = json_of(&admin(&app, &["--json", "revoke-session", &first.session_id]).await);
    assert_eq!(one["ended_sessions"], 1);
    assert_unauthenticated(&app.me(&first.access_token).await, "REVOKED");
    assert_unauthenticated(&app.refresh_raw(&first.refresh_token).await, "REVOKED");
    assert_no_errors(&app.me(&second.access_token).await);

    let all = json_of(&admin(&app, &["revoke-sessions", "revoked@x.com", "--json"]).await);
    assert_eq!(all["ended_sessions"], 1);
    assert_unauthenticated(&app.me(&second.access_token).await, "REVOKED");
    assert!(app.session_rows().await.is_empty());
    // The account itself is untouched: its owner logs in again.
    app.login("revoked@x.com").await;
}

#[tokio::test]
async fn a_revoke_from_the_cli_reaches_live_subscribers_and_closes_their_connection() {
    use crate::session_events::{Ended, SESSION_EVENTS, WsClient};
    let app = spawn_app().await;
    let account = app.register("watched@x.com").await;
    let mut subscriber = WsClient::signed_in(&app.address, &account.access_token).await;
    subscriber.subscribe("1", SESSION_EVENTS).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    assert_eq!(
        admin(&app, &["revoke-sessions", "watched@x.com"])
            .await
            .code,
        0
    );
    let event = subscriber
        .next_event(std::time::Duration::from_secs(2))
        .await
        .expect("the revocation is an event");
    assert_eq!(event["type"], "REVOKED");
    assert_eq!(event["sessionId"], account.session_id.as_str());
    assert_eq!(
        subscriber.ended(std::time::Duration::from_secs(2)).await,
        Ended::Closed(4403)
    );
}

#[tokio::test]
async fn a_disabled_user_cannot_log_in_or_refresh_and_an_enabled_one_can() {
    let app = spawn_app().await;
    let account = app.register("disabled@x.com").await;
    assert_no_errors(&app.me(&account.access_token).await);

    let disabled = json_of(&admin(&app, &["--json", "disable-user", "disabled@x.com"]).await);
    assert_eq!(disabled["ended_sessions"], 1);
    // The answer shows the user as it is now; disabling again keeps the first time.
    let disabled_at = disabled["user"]["disabled_at"].clone();
    assert!(disabled_at.is_string(), "{disabled}");
    let again = json_of(&admin(&app, &["--json", "disable-user", "disabled@x.com"]).await);
    assert_eq!(again["user"]["disabled_at"], disabled_at);
    assert!(app.user_rows().await[0].disabled_at.is_some());
    assert!(app.session_rows().await.is_empty());
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    // Only the right password (or a genuine refresh token) learns that it is disabled.
    assert_eq!(
        error_code(&app.login_raw("disabled@x.com", PASSWORD).await),
        "ACCOUNT_DISABLED"
    );
    assert_eq!(
        error_code(&app.login_raw("disabled@x.com", "a wrong password").await),
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        error_code(&app.refresh_raw(&account.refresh_token).await),
        "ACCOUNT_DISABLED"
    );
    assert!(app.session_rows().await.is_empty(), "no session was made");

    let enabled = json_of(&admin(&app, &["--json", "enable-user", "disabled@x.com"]).await);
    assert!(enabled["user"]["disabled_at"].is_null(), "{enabled}");
    assert!(app.user_rows().await[0].disabled_at.is_none());
    let back = app.login("disabled@x.com").await;
    assert_no_errors(&app.me(&back.access_token).await);
    // Its ended sessions stay ended.
    assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
}

#[tokio::test]
async fn admin_delete_user_removes_the_user_and_every_session() {
    let app = spawn_app().await;
    let account = app.register("deleted@x.com").await;
    app.login("deleted@x.com").await;
    let kept = app.register("kept@x.com").await;

    let deleted = json_of(&admin(&app, &["--json", "delete-user", "deleted@x.com"]).await);
    assert_eq!(deleted["ended_sessions"], 2);
    let users = app.user_rows().await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].email, "kept@x.com");
    assert_eq!(app.session_rows().await.len(), 1);
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_no_errors(&app.me(&kept.access_token).await);
    // The email is free again.
    app.register("deleted@x.com").await;
}

#[tokio::test]
async fn admin_exit_codes_tell_unknown_bad_and_unreachable_apart() {
    let app = spawn_app().await;
    let account = app.register("codes@x.com").await;
    for args in [
        &["sessions", "nobody@x.com"][..],
        &["revoke-sessions", "nobody"],
        &["disable-user", "nobody"],
        &["enable-user", "nobody"],
        &["delete-user", "nobody"],
        &["revoke-session", "6f1c1c4e-0000-4000-8000-000000000001"],
    ] {
        assert_eq!(admin(&app, args).await.code, 1, "{args:?}");
    }
    for args in [
        &["revoke-session", "not-a-uuid"][..],
        &["sessions"],
        &["no-such-command", "x"],
        &["sessions", "a", "b"],
    ] {
        assert_eq!(admin(&app, args).await.code, 2, "{args:?}");
    }
    // Nothing was changed by any of them.
    assert_no_errors(&app.me(&account.access_token).await);
    assert_eq!(app.user_rows().await.len(), 1);

    let unreachable = admin_on(
        "postgres://authql@127.0.0.1:1/authql",
        &["sessions", "codes@x.com"],
        &[
            ("DATABASE_CONNECT_TIMEOUT_SECONDS", "1"),
            ("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    assert_eq!(unreachable.code, 3, "{unreachable:?}");
    // With --json, a failure is a JSON object on stdout too.
    let unknown = admin(&app, &["--json", "sessions", "nobody@x.com"]).await;
    assert_eq!(unknown.code, 1);
    let failure: Value = serde_json::from_str(&unknown.stdout).expect("JSON on stdout");
    assert_eq!(failure["failure"], "unknown-user");
    // Every command has its own help.
    for command in [
        "sessions",
        "revoke-sessions",
        "revoke-session",
        "disable-user",
        "enable-user",
        "delete-user",
        "send-password-reset",
        "verify-email",
    ] {
        let help = admin(&app, &[command, "--help"]).await;
        assert_eq!(help.code, 0, "{command}");
        assert!(help.stdout.contains("Usage: authql admin"), "{help:?}");
    }
}

#[tokio::test]
async fn admin_send_password_reset_queues_a_link_the_server_delivers_and_that_works() {
    let app = spawn_app_with(|config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    let account = app.register("forgetful@x.com").await;
    let sent = json_of(&admin(&app, &["--json", "send-password-reset", "forgetful@x.com"]).await);
    assert_eq!(sent["user"]["email"], "forgetful@x.com");
    // Queued in the outbox of the database; the running server sends it.
    let token = eml_link_token(&app.mail_dir, "password_reset", 1).await;
    let reset = app
        .graphql(
            "mutation($i: ResetPasswordInput!) { resetPassword(input: $i) }",
            json!({ "i": { "token": token, "newPassword": "an operator's fresh start" } }),
            None,
        )
        .await;
    assert_no_errors(&reset);
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_no_errors(
        &app.login_raw("forgetful@x.com", "an operator's fresh start")
            .await,
    );

    // A disabled account gets no link: exit code 4, nothing queued.
    assert_eq!(
        admin(&app, &["disable-user", "forgetful@x.com"]).await.code,
        0
    );
    let refused = admin(&app, &["send-password-reset", "forgetful@x.com"]).await;
    assert_eq!(refused.code, 4, "{refused:?}");
    assert_eq!(
        token_rows_in(&app.database_url)
            .await
            .iter()
            .filter(|row| row.purpose == "password_reset")
            .count(),
        1
    );
    assert_eq!(
        admin(&app, &["send-password-reset", "nobody@x.com"])
            .await
            .code,
        1
    );
}

#[tokio::test]
async fn admin_verify_email_marks_the_address_verified_at_once() {
    let app = spawn_app().await;
    let account = app.register("unverified@x.com").await;
    let me = "{ me { emailVerified } }";
    let before = app
        .graphql(me, json!({}), Some(&account.access_token))
        .await;
    assert_eq!(before["data"]["me"]["emailVerified"], false);
    let verified = json_of(&admin(&app, &["--json", "verify-email", "unverified@x.com"]).await);
    assert!(
        verified["user"]["email_verified_at"].is_string(),
        "{verified}"
    );
    // Seen on the next request (through the session cache on SQLite).
    let after = app
        .graphql(me, json!({}), Some(&account.access_token))
        .await;
    assert_eq!(after["data"]["me"]["emailVerified"], true);
    assert_eq!(admin(&app, &["verify-email", "nobody@x.com"]).await.code, 1);
}

#[tokio::test]
async fn on_sqlite_with_no_server_running_the_cli_works_on_the_file_itself() {
    if shared_database_url().is_some() {
        return; // PostgreSQL and MongoDB: the CLI always works on the database itself.
    }
    let app = spawn_app().await;
    let account = app.register("alone@x.com").await;
    let database_url = app.database_url.clone();
    let dir = app.stop().await;
    let run = admin_on(
        &database_url,
        &["--json", "disable-user", "alone@x.com"],
        &[],
    )
    .await;
    assert_eq!(json_of(&run)["ended_sessions"], 1);
    // The next server on the file sees it.
    let app = spawn_app_in_existing(dir, &database_url).await;
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_eq!(
        error_code(&app.login_raw("alone@x.com", PASSWORD).await),
        "ACCOUNT_DISABLED"
    );
}

#[tokio::test]
async fn on_sqlite_a_server_that_does_not_answer_or_no_file_is_exit_code_3_not_a_hang() {
    if shared_database_url().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authql.db");
    let database_url = sqlite_url(&file);
    let quick = [
        ("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "1"),
        ("DATABASE_BUSY_TIMEOUT_SECONDS", "1"),
    ];
    let missing = admin_on(&database_url, &["sessions", "x@x.com"], &quick).await;
    assert_eq!(missing.code, 3, "{missing:?}");
    assert!(!file.exists(), "the CLI creates no database");

    // A "server" that holds the file's lock and accepts on the admin socket but never answers,
    // as a stopped (SIGSTOP) one does.
    std::fs::write(&file, b"").unwrap();
    let _lock = authql::store::DatabaseLock::acquire(file.clone()).unwrap();
    let socket = authql::admin::socket_path(&file);
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let frozen = admin_on(&database_url, &["sessions", "x@x.com"], &quick).await;
    assert_eq!(frozen.code, 3, "{frozen:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

const DELETE_ACCOUNT: &str = "mutation($i: DeleteAccountInput!) { deleteAccount(input: $i) }";

#[tokio::test]
async fn delete_account_needs_the_password_and_removes_everything_of_the_account() {
    let app = spawn_app().await;
    let account = app.register("leaving@x.com").await;
    let other_session = app.login("leaving@x.com").await;
    let staying = app.register("staying@x.com").await;

    let wrong = app
        .graphql(
            DELETE_ACCOUNT,
            json!({ "i": { "password": "not the password" } }),
            Some(&account.access_token),
        )
        .await;
    assert_eq!(error_code(&wrong), "INVALID_CREDENTIALS");
    assert_eq!(app.user_rows().await.len(), 2, "nothing changed");
    assert_eq!(app.session_rows().await.len(), 3);

    let unauthenticated = app
        .graphql(
            DELETE_ACCOUNT,
            json!({ "i": { "password": PASSWORD } }),
            None,
        )
        .await;
    assert_unauthenticated(&unauthenticated, "MISSING");

    let deleted = app
        .graphql(
            DELETE_ACCOUNT,
            json!({ "i": { "password": PASSWORD } }),
            Some(&account.access_token),
        )
        .await;
    assert_no_errors(&deleted);
    assert_eq!(deleted["data"]["deleteAccount"], true);
    let users = app.user_rows().await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].email, "staying@x.com");
    assert_eq!(app.session_rows().await.len(), 1);
    // Every token of the account is refused at once.
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_unauthenticated(&app.me(&other_session.access_token).await, "REVOKED");
    assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
    assert_no_errors(&app.me(&staying.access_token).await);
    // The email can register again: a new account.
    let again = app.register("leaving@x.com").await;
    assert_no_errors(&app.me(&again.access_token).await);
}

#[tokio::test]
async fn delete_account_is_rate_limited_like_change_password() {
    let app = spawn_app_with(|config| config.rate_limit_account_per_minute = 2).await;
    let account = app.register("guessed@x.com").await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let body = app
            .graphql(
                DELETE_ACCOUNT,
                json!({ "i": { "password": "a guess at the password" } }),
                Some(&account.access_token),
            )
            .await;
        codes.push(error_code(&body));
    }
    assert_eq!(
        codes,
        ["INVALID_CREDENTIALS", "INVALID_CREDENTIALS", "RATE_LIMITED"]
    );
    assert_eq!(app.user_rows().await.len(), 1);
}
