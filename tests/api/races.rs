//! Races of every credential change (changePassword, an operator's disable-user, deleteAccount)
//! against logins and refreshes in flight (issue 17, cases 9 and 11). Whatever interleaving
//! the scheduler picks, once the change has answered no token of a login or refresh that used
//! the old credentials is accepted, and nothing answers INTERNAL_SERVER_ERROR.
//!
//! The logins check their password with bcrypt at a real-ish cost, so they are in flight for
//! milliseconds while the change lands: the window the reports used.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const NEW_PASSWORD: &str = "a brand new passphrase";
/// Logins racing each change, as many as the report's 45.
const RACERS: usize = 45;

async fn racing_app() -> TestApp {
    spawn_app_with(|config| {
        config.bcrypt_cost = 7;
        config.bcrypt_max_concurrency = Some(2);
        config.bcrypt_max_queue = Some(1000);
    })
    .await
}

/// Starts `RACERS` logins with `password`, a millisecond apart, each on a connection of its
/// own; returns their answers.
fn logins_in_flight(
    app: &TestApp,
    login: &str,
    password: &str,
) -> Vec<tokio::task::JoinHandle<Value>> {
    (0..RACERS)
        .map(|racer| {
            let (url, login, password) = (
                format!("{}/graphql", app.address),
                login.to_owned(),
                password.to_owned(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(racer as u64)).await;
                let body = json!({
                    "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
                    "variables": { "i": { "emailOrUsername": login, "password": password } },
                });
                reqwest::Client::new()
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            })
        })
        .collect()
}

/// One round of a race: a fresh server, an account, `RACERS` logins with its password in
/// flight, and a pause (longer each round) for the credential change to land among them.
async fn logins_racing(
    round: u64,
    prefix: &str,
) -> (
    TestApp,
    String,
    Account,
    Vec<tokio::task::JoinHandle<Value>>,
) {
    let app = racing_app().await;
    let email = format!("{prefix}{round}@x.com");
    let owner = app.register(&email).await;
    let racers = logins_in_flight(&app, &email, PASSWORD);
    tokio::time::sleep(Duration::from_millis(10 + 10 * round)).await;
    (app, email, owner, racers)
}

/// Every token pair the racers got, after asserting that no answer was anything but a pair
/// or one of `allowed` codes.
async fn settle(
    racers: Vec<tokio::task::JoinHandle<Value>>,
    allowed: &[&str],
) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for racer in racers {
        let body = racer.await.unwrap();
        match body
            .pointer("/errors/0/extensions/code")
            .and_then(Value::as_str)
        {
            None => pairs.push((
                string_at(&body, "/data/login/accessToken"),
                string_at(&body, "/data/login/refreshToken"),
            )),
            Some(code) => assert!(allowed.contains(&code), "unexpected {code}: {body}"),
        }
    }
    pairs
}

/// No pair is accepted any more: neither its access token nor its refresh token.
async fn all_dead(app: &TestApp, pairs: &[(String, String)]) {
    for (access, refresh) in pairs {
        assert_eq!(error_code(&app.me(access).await), "UNAUTHENTICATED");
        let refreshed = app.refresh_raw(refresh).await;
        assert!(
            matches!(
                error_code(&refreshed).as_str(),
                "UNAUTHENTICATED" | "ACCOUNT_DISABLED"
            ),
            "{refreshed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_with_the_old_password_outlives_a_password_change() {
    for round in 0..3 {
        let (app, email, owner, racers) = logins_racing(round, "race").await;
        let changed = app
            .graphql(
                "mutation($i: ChangePasswordInput!) { changePassword(input: $i) }",
                json!({ "i": { "currentPassword": PASSWORD, "newPassword": NEW_PASSWORD } }),
                Some(&owner.access_token),
            )
            .await;
        assert_no_errors(&changed);
        let pairs = settle(racers, &["INVALID_CREDENTIALS"]).await;
        all_dead(&app, &pairs).await;
        // The owner's session lives, alone.
        let sessions = app.my_sessions(&owner.access_token).await;
        assert_no_errors(&sessions);
        assert_eq!(sessions["data"]["mySessions"].as_array().unwrap().len(), 1);
        // The old password is refused from now on; the new one works.
        assert_eq!(
            error_code(&app.login_raw(&email, PASSWORD).await),
            "INVALID_CREDENTIALS"
        );
        assert_no_errors(&app.login_raw(&email, NEW_PASSWORD).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_refresh_in_flight_outlives_a_password_change() {
    let app = racing_app().await;
    let owner = app.register("refreshing@x.com").await;
    let mut others = Vec::new();
    for _ in 0..10 {
        others.push(app.login("refreshing@x.com").await);
    }
    // Each other session refreshes again and again while the password changes.
    let refreshers: Vec<_> = others
        .into_iter()
        .map(|account| {
            let url = format!("{}/graphql", app.address);
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut pair = (account.access_token, account.refresh_token);
                for _ in 0..20 {
                    let body: Value = client
                        .post(&url)
                        .json(&json!({
                            "query": "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken } }",
                            "variables": { "t": pair.1 },
                        }))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    match body.pointer("/errors/0/extensions/code").and_then(Value::as_str) {
                        None => {
                            pair = (
                                string_at(&body, "/data/refresh/accessToken"),
                                string_at(&body, "/data/refresh/refreshToken"),
                            )
                        }
                        Some("UNAUTHENTICATED") => break,
                        Some(code) => panic!("unexpected {code}: {body}"),
                    }
                }
                pair
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let changed = app
        .graphql(
            "mutation($i: ChangePasswordInput!) { changePassword(input: $i) }",
            json!({ "i": { "currentPassword": PASSWORD, "newPassword": NEW_PASSWORD } }),
            Some(&owner.access_token),
        )
        .await;
    assert_no_errors(&changed);
    let mut last_pairs = Vec::new();
    for refresher in refreshers {
        last_pairs.push(refresher.await.unwrap());
    }
    all_dead(&app, &last_pairs).await;
    assert_no_errors(&app.me(&owner.access_token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_or_refresh_in_flight_outlives_an_operators_disable() {
    let app = racing_app().await;
    let email = "disabled-race@x.com";
    let owner = app.register(email).await;
    let racers = logins_in_flight(&app, email, PASSWORD);
    tokio::time::sleep(Duration::from_millis(15)).await;
    let disabled = crate::operators::admin(&app, &["disable-user", email]).await;
    assert_eq!(disabled.code, 0, "{disabled:?}");
    let pairs = settle(racers, &["INVALID_CREDENTIALS", "ACCOUNT_DISABLED"]).await;
    all_dead(&app, &pairs).await;
    all_dead(&app, &[(owner.access_token, owner.refresh_token)]).await;
    assert_eq!(
        error_code(&app.login_raw(email, PASSWORD).await),
        "ACCOUNT_DISABLED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_racing_delete_account_never_fail_internally_and_leave_nothing_behind() {
    for round in 0..3 {
        let (app, email, owner, racers) = logins_racing(round, "deleted").await;
        let deleted = app
            .graphql(
                "mutation($i: DeleteAccountInput!) { deleteAccount(input: $i) }",
                json!({ "i": { "password": PASSWORD } }),
                Some(&owner.access_token),
            )
            .await;
        assert_no_errors(&deleted);
        let pairs = settle(racers, &["INVALID_CREDENTIALS"]).await;
        all_dead(&app, &pairs).await;
        let user_id = app
            .user_rows()
            .await
            .into_iter()
            .find(|user| user.email == email)
            .map(|user| user.id);
        assert_eq!(user_id, None, "the account is gone");
        assert!(
            app.session_rows().await.is_empty(),
            "no session of the deleted account is left"
        );
    }
}
