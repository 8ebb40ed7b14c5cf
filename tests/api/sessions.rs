use std::collections::HashSet;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_refreshes_with_one_token_rotate_the_session_exactly_once() {
    let app = spawn_app().await;
    let account = app.register("race@example.com").await;

    let attempts = join_all((0..20).map(|_| app.refresh_raw(&account.refresh_token))).await;
    // One request rotates; the others arrive within the grace window and are answered with
    // the very same pair, so the client ends up with one valid pair, never two.
    let pairs: HashSet<(String, String)> = attempts
        .iter()
        .map(|body| {
            assert_no_errors(body);
            (
                string_at(body, "/data/refresh/accessToken"),
                string_at(body, "/data/refresh/refreshToken"),
            )
        })
        .collect();
    assert_eq!(pairs.len(), 1, "exactly one new pair");
    let (access, _) = pairs.into_iter().next().unwrap();

    let rows = app.session_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].previous_refresh_jti.map(|jti| jti.to_string()),
        Some(jti_of(&account.refresh_token))
    );
    assert_no_errors(&app.me(&access).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_grace_window_of_twenty_parallel_refreshes_exactly_one_succeeds() {
    let app = spawn_app_with(|config| config.refresh_reuse_grace_seconds = 0).await;
    let account = app.register("strict@example.com").await;

    let attempts = join_all((0..20).map(|_| app.refresh_raw(&account.refresh_token))).await;
    let winners = attempts
        .iter()
        .filter(|body| body.get("errors").is_none())
        .count();
    assert_eq!(winners, 1, "{attempts:?}");
    // The first repeat to arrive revokes the session; repeats after it find none.
    let reasons: Vec<String> = attempts
        .iter()
        .filter(|body| body.get("errors").is_some())
        .map(|body| {
            assert_eq!(error_code(body), "UNAUTHENTICATED");
            string_at(body, "/errors/0/extensions/reason")
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|reason| reason == "REFRESH_TOKEN_REUSED"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .all(|reason| reason == "REFRESH_TOKEN_REUSED" || reason == "REVOKED")
    );
    // The repeats were reuse with no grace, so the session is gone, winner's pair included.
    assert!(app.session_rows().await.is_empty());
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
    // Sessions live 3 s, in whole seconds: the first ends 2 to 3 s after it began, the second
    // at least 2 s after it began, which leaves a slow request a second of margin.
    let app = spawn_app_with(|config| config.jwt_refresh_token_expires = 3).await;
    app.register("old@example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let fresh = app.login("old@example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // The first session is now past its expiry; the second is not.
    let body = app.my_sessions(&fresh.access_token).await;
    assert_no_errors(&body);
    let listed = body["data"]["mySessions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(string_at(&listed[0], "/id"), fresh.session_id);
}

/// Issue 17, case 15: a user has at most `MAX_SESSIONS_PER_USER` sessions; a login beyond it
/// ends the least recently used one (the one refreshed or created longest ago).
#[tokio::test]
async fn a_login_beyond_the_cap_ends_the_least_recently_used_session() {
    let app = spawn_app_with(|config| config.max_sessions_per_user = 3).await;
    let first = app.register("capped@x.com").await;
    let second = app.login("capped@x.com").await;
    let third = app.login("capped@x.com").await;
    // The first is used again: now the second is the one used longest ago.
    let refreshed = app.refresh_raw(&first.refresh_token).await;
    assert_no_errors(&refreshed);
    let first_access = string_at(&refreshed, "/data/refresh/accessToken");
    let fourth = app.login("capped@x.com").await;
    assert_unauthenticated(&app.me(&second.access_token).await, "REVOKED");
    for token in [&first_access, &third.access_token, &fourth.access_token] {
        assert_no_errors(&app.me(token).await);
    }
    let listed = app.my_sessions(&fourth.access_token).await;
    assert_eq!(listed["data"]["mySessions"].as_array().unwrap().len(), 3);
    assert_eq!(app.session_rows().await.len(), 3);
}

/// `mySessions(first, after)`: bounded pages, newest first, with an opaque cursor.
#[tokio::test]
async fn my_sessions_comes_in_bounded_pages() {
    let app = spawn_app().await;
    let account = app.register("pages@x.com").await;
    let mut ids = vec![account.session_id.clone()];
    for _ in 0..4 {
        ids.push(app.login("pages@x.com").await.session_id);
    }
    ids.reverse(); // newest first
    let page = |first: i64, after: Option<String>| {
        let app = &app;
        let token = account.access_token.clone();
        async move {
            app.graphql(
                "query($first: Int, $after: String) { mySessions(first: $first, after: $after) { id cursor } }",
                json!({ "first": first, "after": after }),
                Some(&token),
            )
            .await
        }
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let body = page(2, after.clone()).await;
        assert_no_errors(&body);
        let sessions = body["data"]["mySessions"].as_array().unwrap().clone();
        assert!(sessions.len() <= 2);
        if sessions.is_empty() {
            break;
        }
        seen.extend(sessions.iter().map(|session| string_at(session, "/id")));
        after = Some(string_at(sessions.last().unwrap(), "/cursor"));
    }
    assert_eq!(seen, ids);
    for (first, after, field) in [
        (0, None, "first"),
        (101, None, "first"),
        (2, Some("not a cursor".to_owned()), "after"),
    ] {
        let body = page(first, after).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field);
    }
}

/// Ending thousands of sessions at once (revokeOtherSessions, deleteAccount) goes in bounded
/// batches on every backend (a MongoDB command is at most 16 MiB) and ends them all.
#[tokio::test]
async fn thousands_of_sessions_end_at_once_in_batches() {
    const MANY: usize = 2_500;
    let app = spawn_app().await;
    let account = app.register("many@x.com").await;
    let user_id = app.user_rows().await[0].id;
    let now = chrono::Utc::now();
    let rows = (0..MANY)
        .map(|_| authql::store::entity::session::Model {
            id: uuid::Uuid::new_v4(),
            user_id,
            access_jti: uuid::Uuid::new_v4(),
            refresh_jti: uuid::Uuid::new_v4(),
            previous_refresh_jti: None,
            created_at: now - chrono::TimeDelta::minutes(5),
            last_refreshed_at: None,
            expires_at: now + chrono::TimeDelta::hours(1),
            idle_expires_at: now + chrono::TimeDelta::hours(1),
            user_agent: None,
            ip_address: None,
            credential_version: 0,
            authenticated_at: Some(now - chrono::TimeDelta::minutes(5)),
            authentication_methods: "pwd".into(),
        })
        .collect();
    insert_session_rows(&app.database_url, rows).await;
    assert_eq!(app.session_rows().await.len(), MANY + 1);
    let ended = app
        .graphql(
            "mutation { revokeOtherSessions }",
            json!({}),
            Some(&account.access_token),
        )
        .await;
    assert_no_errors(&ended);
    assert_eq!(ended["data"]["revokeOtherSessions"], MANY);
    assert_eq!(app.session_rows().await.len(), 1);
    assert_no_errors(&app.me(&account.access_token).await);
}
