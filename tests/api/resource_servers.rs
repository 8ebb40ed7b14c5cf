//! What the app's other APIs ask of authql, tried as an attacker would: forward auth
//! (`/auth/verify`), token introspection (`POST /oauth/introspect`, RFC 7662), roles
//! (`authql admin grant-role` / `revoke-role`) and `ACCESS_TOKEN_CLAIMS_TEMPLATE`, on every
//! backend (on SQLite the role changes go through the server's session cache).

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::StreamExt;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::{helpers::*, operators::admin};

/// The resource server `INTROSPECTION_CLIENTS` lists in these tests.
const CLIENT_ID: &str = "notes-api";
const CLIENT_SECRET: &str = "0123456789abcdef-notes-secret";

fn with_client(config: &mut authql::config::Config) {
    config.introspection_clients = vec![authql::config::IntrospectionClient {
        id: CLIENT_ID.into(),
        secret: secrecy::SecretString::from(CLIENT_SECRET),
    }];
}

/// `/auth/verify` with `method`, a body, and each of `authorizations` as an `Authorization`
/// header of its own.
async fn verify_with(app: &TestApp, method: Method, authorizations: &[&str]) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, format!("{}/auth/verify", app.address))
        .body(r#"{"ignored": true}"#);
    for authorization in authorizations {
        request = request.header(header::AUTHORIZATION, *authorization);
    }
    request.send().await.expect("the server answers")
}

/// `GET /auth/verify` with `Authorization: Bearer <token>`, or none.
async fn verify(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    match token {
        Some(token) => verify_with(app, Method::GET, &[&format!("Bearer {token}")]).await,
        None => verify_with(app, Method::GET, &[]).await,
    }
}

fn header_of(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Asserts a 401 from `/auth/verify`: the RFC 6750 challenge (with `error="invalid_token"`
/// unless no token was sent) and the API's JSON error body.
async fn assert_refused(response: reqwest::Response, token_sent: bool) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = header_of(&response, "www-authenticate").expect("a WWW-Authenticate header");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(r#"realm="authql""#), "{challenge}");
    assert_eq!(
        challenge.contains(r#"error="invalid_token""#),
        token_sent,
        "{challenge}"
    );
    assert_eq!(
        header_of(&response, "cache-control").as_deref(),
        Some("no-store")
    );
    assert!(header_of(&response, "x-auth-user-id").is_none());
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
}

/// `POST /oauth/introspect` with a form body `form`, as `client` (HTTP Basic).
async fn introspect_raw(
    app: &TestApp,
    client: Option<(&str, &str)>,
    content_type: &str,
    form: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/oauth/introspect", app.address))
        .header(header::CONTENT_TYPE, content_type)
        .body(form);
    if let Some((id, secret)) = client {
        request = request.basic_auth(id, Some(secret));
    }
    request.send().await.expect("the server answers")
}

/// What the listed client is told about `token` (with `hint`, if any): the JSON answer, after
/// asserting a 200 that no cache keeps.
async fn introspect(app: &TestApp, token: &str, hint: Option<&str>) -> Value {
    let mut form = format!("token={}", urlencode(token));
    if let Some(hint) = hint {
        form.push_str(&format!("&token_type_hint={hint}"));
    }
    let response = introspect_raw(
        app,
        Some((CLIENT_ID, CLIENT_SECRET)),
        "application/x-www-form-urlencoded",
        form,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_of(&response, "cache-control").as_deref(),
        Some("no-store")
    );
    response.json().await.expect("a JSON body")
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The payload of a JWT, read without verification.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `me { id email username roles }`.
async fn me_with_roles(app: &TestApp, token: &str) -> Value {
    let body = app
        .graphql("{ me { id email username roles } }", json!({}), Some(token))
        .await;
    assert_no_errors(&body);
    body["data"]["me"].clone()
}

/// The stored roles of the account `email`, comma-joined and sorted, on any backend.
async fn stored_roles(app: &TestApp, email: &str) -> String {
    app.user_rows()
        .await
        .into_iter()
        .find(|user| user.email == email)
        .expect("the user is stored")
        .roles
}

async fn grant(app: &TestApp, login: &str, role: &str) {
    let run = admin(app, &["grant-role", login, role]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

async fn revoke_role(app: &TestApp, login: &str, role: &str) {
    let run = admin(app, &["revoke-role", login, role]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

/// A refresh that must succeed: the new pair.
async fn refreshed(app: &TestApp, refresh_token: &str) -> (String, String) {
    let body = app.refresh_raw(refresh_token).await;
    assert_no_errors(&body);
    (
        string_at(&body, "/data/refresh/accessToken"),
        string_at(&body, "/data/refresh/refreshToken"),
    )
}

/// A genuine token with its signature replaced: a forgery.
fn forged(token: &str) -> String {
    let (signed, _) = token.rsplit_once('.').unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode([7u8; 32]))
}

// ---------------------------------------------------------------------------------------------
// /auth/verify
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn verify_answers_a_live_token_with_the_headers_me_agrees_with_whatever_the_method() {
    let app = spawn_app().await;
    let body = app
        .register_raw("Ada@Example.com", PASSWORD, Some("ada"))
        .await;
    assert_no_errors(&body);
    let token = string_at(&body, "/data/register/accessToken");
    let session_id = string_at(&body, "/data/register/session/id");
    let me = me_with_roles(&app, &token).await;

    let response = verify(&app, Some(&token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_of(&response, "x-auth-user-id").as_deref(),
        me["id"].as_str()
    );
    assert_eq!(
        header_of(&response, "x-auth-session-id").as_deref(),
        Some(session_id.as_str())
    );
    assert_eq!(
        header_of(&response, "x-auth-email").as_deref(),
        me["email"].as_str()
    );
    assert_eq!(header_of(&response, "x-auth-roles").as_deref(), Some(""));
    assert_eq!(me["roles"], json!([]));
    assert_eq!(header_of(&response, "x-auth-amr").as_deref(), Some("pwd"));
    assert_eq!(
        header_of(&response, "cache-control").as_deref(),
        Some("no-store")
    );

    // A proxy may forward the original method and body: the answer is the same.
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = verify_with(&app, method.clone(), &[&format!("Bearer {token}")]).await;
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(
            header_of(&response, "x-auth-user-id").as_deref(),
            me["id"].as_str(),
            "{method}"
        );
    }
    // The scheme is case-insensitive (RFC 9110 § 11.1).
    let response = verify_with(&app, Method::GET, &[&format!("bearer {token}")]).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn verify_refuses_a_token_on_the_very_next_request_after_its_session_ends() {
    let app = spawn_app().await;

    // logout
    let account = app.register("logout@x.com").await;
    assert_eq!(
        verify(&app, Some(&account.access_token)).await.status(),
        200
    );
    let body = app
        .graphql(
            "mutation($t: String) { logout(refreshToken: $t) }",
            json!({ "t": account.refresh_token }),
            Some(&account.access_token),
        )
        .await;
    assert_no_errors(&body);
    assert_refused(verify(&app, Some(&account.access_token)).await, true).await;

    // revokeTokens, from another session of the same user
    let victim = app.register("revoked@x.com").await;
    let other = app.login("revoked@x.com").await;
    assert_eq!(verify(&app, Some(&victim.access_token)).await.status(), 200);
    assert_no_errors(
        &app.revoke(&other.access_token, json!([victim.session_id]), json!([]))
            .await,
    );
    assert_refused(verify(&app, Some(&victim.access_token)).await, true).await;
    assert_eq!(verify(&app, Some(&other.access_token)).await.status(), 200);

    // changePassword ends every other session
    let stolen = app.register("changed@x.com").await;
    let owner = app.login("changed@x.com").await;
    assert_eq!(verify(&app, Some(&stolen.access_token)).await.status(), 200);
    let body = app
        .graphql(
            "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
            json!({ "input": { "currentPassword": PASSWORD, "newPassword": "a brand new passphrase" } }),
            Some(&owner.access_token),
        )
        .await;
    assert_no_errors(&body);
    assert_refused(verify(&app, Some(&stolen.access_token)).await, true).await;

    // an operator disables the account
    let disabled = app.register("disabled@x.com").await;
    assert_eq!(
        verify(&app, Some(&disabled.access_token)).await.status(),
        200
    );
    assert_eq!(
        admin(&app, &["disable-user", "disabled@x.com"]).await.code,
        0
    );
    assert_refused(verify(&app, Some(&disabled.access_token)).await, true).await;

    // an operator deletes the account
    let deleted = app.register("deleted@x.com").await;
    assert_eq!(
        verify(&app, Some(&deleted.access_token)).await.status(),
        200
    );
    assert_eq!(admin(&app, &["delete-user", "deleted@x.com"]).await.code, 0);
    assert_refused(verify(&app, Some(&deleted.access_token)).await, true).await;
}

#[tokio::test]
async fn verify_refuses_expired_foreign_garbage_refresh_doubled_and_missing_tokens() {
    let app = spawn_app_with(|config| config.jwt_access_token_expires = 1).await;
    let account = app.register("edges@x.com").await;
    let live = app.login("edges@x.com").await;

    // A token issued by another authql, with a key of its own.
    let elsewhere = spawn_app_with(|config| {
        config.jwt_secret_key = Some(secrecy::SecretString::from(
            "another deployment's secret, just as long",
        ));
    })
    .await;
    let foreign = elsewhere.register("edges@x.com").await;

    for token in [
        account.refresh_token.clone(),
        foreign.access_token.clone(),
        forged(&live.access_token),
        "garbage".to_owned(),
        "a.b.c".to_owned(),
        format!("{}x", live.access_token),
    ] {
        assert_refused(verify(&app, Some(&token)).await, true).await;
    }
    // Two Authorization headers, even when both are the same live token.
    let bearer = format!("Bearer {}", live.access_token);
    assert_refused(
        verify_with(&app, Method::GET, &[&bearer, &bearer]).await,
        true,
    )
    .await;
    // Another scheme is no bearer token.
    assert_refused(
        verify_with(&app, Method::GET, &["Basic dXNlcjpwYXNz"]).await,
        true,
    )
    .await;
    // No token at all: RFC 6750 § 3.1, no error code.
    assert_refused(verify(&app, None).await, false).await;
    assert_refused(verify_with(&app, Method::POST, &[]).await, false).await;

    // Expired.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_refused(verify(&app, Some(&account.access_token)).await, true).await;
}

#[tokio::test]
async fn verify_rate_limits_an_address_sending_forged_tokens_but_never_expired_or_revoked_ones() {
    let app = spawn_app_with(|config| {
        config.rate_limit_ip_per_minute = 5;
        config.jwt_access_token_expires = 3;
    })
    .await;
    let expired = app.register("limited@x.com").await;
    let revoked = app.login("limited@x.com").await;
    // Revoked with its own token, which is fresh, however slowly the register went (a loaded
    // CI machine once took more than the token's lifetime between the two).
    assert_no_errors(
        &app.revoke(
            &revoked.access_token,
            json!([revoked.session_id]),
            json!([]),
        )
        .await,
    );
    tokio::time::sleep(Duration::from_millis(4100)).await;
    // Clients send expired and revoked tokens in the normal course: never counted.
    for _ in 0..15 {
        assert_refused(verify(&app, Some(&expired.access_token)).await, true).await;
        assert_refused(verify(&app, Some(&revoked.access_token)).await, true).await;
    }
    let live = app.login("limited@x.com").await;
    let forgery = forged(&live.access_token);
    for _ in 0..5 {
        assert_refused(verify(&app, Some(&forgery)).await, true).await;
    }
    let limited = verify(&app, Some(&forgery)).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header_of(&limited, "retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    // Garbage of another shape is counted in the same bucket.
    assert_eq!(
        verify(&app, Some("garbage")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The address's users are still let through.
    assert_eq!(verify(&app, Some(&live.access_token)).await.status(), 200);
}

#[tokio::test]
async fn verify_and_introspection_show_a_granted_role_at_once_and_forget_a_revoked_one_at_once() {
    let app = spawn_app_with(with_client).await;
    let account = app.register("roles@x.com").await;
    let old_token = account.access_token.clone();
    // Warm whatever caches the session.
    let response = verify(&app, Some(&old_token)).await;
    assert_eq!(header_of(&response, "x-auth-roles").as_deref(), Some(""));
    assert_eq!(introspect(&app, &old_token, None).await["roles"], json!([]));

    grant(&app, "roles@x.com", "editor").await;
    let response = verify(&app, Some(&old_token)).await;
    assert_eq!(
        header_of(&response, "x-auth-roles").as_deref(),
        Some("editor")
    );
    grant(&app, "roles@x.com", "admin").await;
    let response = verify(&app, Some(&old_token)).await;
    assert_eq!(
        header_of(&response, "x-auth-roles").as_deref(),
        Some("admin,editor")
    );
    assert_eq!(
        introspect(&app, &old_token, None).await["roles"],
        json!(["admin", "editor"])
    );
    assert_eq!(
        introspect(&app, &account.refresh_token, None).await["roles"],
        json!(["admin", "editor"])
    );
    assert_eq!(
        me_with_roles(&app, &old_token).await["roles"],
        json!(["admin", "editor"])
    );
    // The token issued before the grant still says what was true then.
    assert_eq!(claims_of(&old_token)["roles"], json!([]));
    // Tokens issued after carry the roles: at login and at refresh.
    let login = app.login("roles@x.com").await;
    assert_eq!(
        claims_of(&login.access_token)["roles"],
        json!(["admin", "editor"])
    );
    let (refreshed_token, _) = refreshed(&app, &account.refresh_token).await;
    assert_eq!(
        claims_of(&refreshed_token)["roles"],
        json!(["admin", "editor"])
    );

    // The refresh replaced the session's access token.
    assert_refused(verify(&app, Some(&old_token)).await, true).await;

    revoke_role(&app, "roles@x.com", "admin").await;
    for token in [&login.access_token, &refreshed_token] {
        let response = verify(&app, Some(token)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header_of(&response, "x-auth-roles").as_deref(),
            Some("editor")
        );
        assert_eq!(
            introspect(&app, token, None).await["roles"],
            json!(["editor"])
        );
    }
    assert_eq!(
        me_with_roles(&app, &login.access_token).await["roles"],
        json!(["editor"])
    );
}

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn granting_twice_is_granting_once_and_revoking_a_role_not_held_changes_nothing() {
    let app = spawn_app().await;
    let account = app.register("twice@x.com").await;
    grant(&app, "twice@x.com", "editor").await;
    grant(&app, "twice@x.com", "editor").await;
    assert_eq!(stored_roles(&app, "twice@x.com").await, "editor");
    let answer = admin(&app, &["--json", "grant-role", "twice@x.com", "editor"]).await;
    assert_eq!(answer.code, 0);
    revoke_role(&app, "twice@x.com", "admin").await;
    assert_eq!(stored_roles(&app, "twice@x.com").await, "editor");
    assert_eq!(
        me_with_roles(&app, &account.access_token).await["roles"],
        json!(["editor"])
    );
    // Case matters: `Editor` is another role.
    grant(&app, "twice@x.com", "Editor").await;
    assert_eq!(stored_roles(&app, "twice@x.com").await, "Editor,editor");
    // By username too, and an unknown login is exit code 1.
    assert_eq!(
        admin(&app, &["grant-role", "nobody@x.com", "editor"])
            .await
            .code,
        1
    );
}

#[tokio::test]
async fn invalid_role_names_are_refused_with_exit_code_2_and_change_nothing() {
    let app = spawn_app().await;
    let account = app.register("names@x.com").await;
    grant(&app, "names@x.com", "user").await;
    let too_long = "r".repeat(65);
    for role in [
        "",
        ",",
        "a,b",
        "a b",
        " admin",
        "admin\n",
        "-admin",
        "rôle",
        "адмін",
        "admin\"",
        too_long.as_str(),
    ] {
        let run = admin(&app, &["grant-role", "names@x.com", role]).await;
        assert_eq!(run.code, 2, "grant {role:?}: {run:?}");
        let run = admin(&app, &["revoke-role", "names@x.com", role]).await;
        assert_eq!(run.code, 2, "revoke {role:?}: {run:?}");
    }
    assert_eq!(stored_roles(&app, "names@x.com").await, "user");
    // 64 characters is a role.
    grant(&app, "names@x.com", &"r".repeat(64)).await;
    let response = verify(&app, Some(&account.access_token)).await;
    assert_eq!(
        header_of(&response, "x-auth-roles"),
        Some(format!("{},user", "r".repeat(64)))
    );
}

#[tokio::test]
async fn a_33rd_role_is_refused_with_exit_code_4_and_changes_nothing() {
    let app = spawn_app().await;
    app.register("many@x.com").await;
    let roles: Vec<String> = (0..32).map(|n| format!("role-{n:02}")).collect();
    for role in &roles {
        grant(&app, "many@x.com", role).await;
    }
    assert_eq!(stored_roles(&app, "many@x.com").await, roles.join(","));
    let run = admin(&app, &["grant-role", "many@x.com", "one-too-many"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(stored_roles(&app, "many@x.com").await, roles.join(","));
    // Granting one already held is no 33rd.
    grant(&app, "many@x.com", "role-07").await;
    // Tokens with 32 roles are still issued and still verify.
    let full = app.login("many@x.com").await;
    assert_eq!(claims_of(&full.access_token)["roles"], json!(roles));
    assert_eq!(verify(&app, Some(&full.access_token)).await.status(), 200);
    // With one revoked there is room again.
    revoke_role(&app, "many@x.com", "role-00").await;
    grant(&app, "many@x.com", "one-too-many").await;
    assert_eq!(
        stored_roles(&app, "many@x.com")
            .await
            .split(',')
            .collect::<Vec<_>>()
            .len(),
        32
    );
}

#[tokio::test]
async fn concurrent_grants_and_revocations_of_different_roles_all_stay() {
    let app = spawn_app().await;
    let account = app.register("busy@x.com").await;
    let first: Vec<String> = (0..10).map(|n| format!("first-{n}")).collect();
    let runs = futures::future::join_all(
        first
            .iter()
            .map(|role| async { admin(&app, &["grant-role", "busy@x.com", role.as_str()]).await }),
    )
    .await;
    for run in &runs {
        assert_eq!(run.code, 0, "{run:?}");
    }
    assert_eq!(stored_roles(&app, "busy@x.com").await, first.join(","));

    // Half taken away while ten others are granted, all at once.
    let second: Vec<String> = (0..10).map(|n| format!("second-{n}")).collect();
    let grants = second
        .iter()
        .map(|role| ("grant-role", role.as_str()))
        .collect::<Vec<_>>();
    let revocations = first[..5]
        .iter()
        .map(|role| ("revoke-role", role.as_str()))
        .collect::<Vec<_>>();
    let app = &app;
    let runs =
        futures::future::join_all(grants.iter().chain(&revocations).map(
            |&(command, role)| async move { admin(app, &[command, "busy@x.com", role]).await },
        ))
        .await;
    for run in &runs {
        assert_eq!(run.code, 0, "{run:?}");
    }
    let mut expected: Vec<String> = first[5..].iter().chain(&second).cloned().collect();
    expected.sort();
    assert_eq!(stored_roles(app, "busy@x.com").await, expected.join(","));
    assert_eq!(
        me_with_roles(app, &account.access_token).await["roles"],
        json!(expected)
    );
    let response = verify(app, Some(&account.access_token)).await;
    assert_eq!(
        header_of(&response, "x-auth-roles"),
        Some(expected.join(","))
    );
}

// ---------------------------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn introspection_describes_live_access_and_refresh_tokens_whatever_the_hint() {
    let app = spawn_app_with(with_client).await;
    let body = app
        .register_raw("Intro@x.com", PASSWORD, Some("intro"))
        .await;
    assert_no_errors(&body);
    let access = string_at(&body, "/data/register/accessToken");
    let refresh = string_at(&body, "/data/register/refreshToken");
    let session_id = string_at(&body, "/data/register/session/id");
    grant(&app, "intro", "reader").await;
    let me = me_with_roles(&app, &access).await;
    let claims = claims_of(&access);

    for hint in [
        None,
        Some("access_token"),
        Some("refresh_token"),
        Some("something_else"),
    ] {
        let answer = introspect(&app, &access, hint).await;
        assert_eq!(answer["active"], true, "{hint:?}: {answer}");
        assert_eq!(answer["token_type"], "Bearer", "{hint:?}");
        assert_eq!(answer["iss"], claims["iss"]);
        assert_eq!(answer["sub"], me["id"]);
        assert_eq!(answer["sid"], session_id.as_str());
        assert_eq!(answer["exp"], claims["exp"]);
        assert_eq!(answer["iat"], claims["iat"]);
        assert_eq!(answer["auth_time"], claims["auth_time"]);
        assert_eq!(answer["username"], "intro");
        assert_eq!(answer["email"], me["email"]);
        assert_eq!(answer["email_verified"], false);
        assert_eq!(answer["roles"], json!(["reader"]));
        assert_eq!(answer["amr"], json!(["pwd"]));

        let answer = introspect(&app, &refresh, hint).await;
        assert_eq!(answer["active"], true, "{hint:?}: {answer}");
        assert_eq!(answer["token_type"], "refresh_token", "{hint:?}");
        assert_eq!(answer["sub"], me["id"]);
        assert_eq!(answer["sid"], session_id.as_str());
        assert_eq!(answer["exp"], claims_of(&refresh)["exp"]);
        assert_eq!(answer["roles"], json!(["reader"]));
        assert_eq!(answer["amr"], json!(["pwd"]));
    }
    // Verified by an operator: at once.
    assert_eq!(admin(&app, &["verify-email", "intro"]).await.code, 0);
    assert_eq!(
        introspect(&app, &access, None).await["email_verified"],
        true
    );

    // Introspecting a refresh token does not use it up: refresh still takes it, and the one
    // it replaced stays active only within the reuse grace.
    let (new_access, new_refresh) = refreshed(&app, &refresh).await;
    assert_eq!(introspect(&app, &new_refresh, None).await["active"], true);
    assert_eq!(introspect(&app, &new_access, None).await["active"], true);
    assert_eq!(introspect(&app, &refresh, None).await["active"], true);
}

#[tokio::test]
async fn introspection_says_inactive_for_every_token_that_is_not_live() {
    let app = spawn_app_with(|config| {
        with_client(config);
        config.refresh_reuse_grace_seconds = 0;
        config.jwt_access_token_expires = 1;
    })
    .await;
    let elsewhere = spawn_app_with(|config| {
        config.jwt_secret_key = Some(secrecy::SecretString::from(
            "another deployment's secret, just as long",
        ));
    })
    .await;
    let foreign = elsewhere.register("dead@x.com").await;

    let rotated = app.register("dead@x.com").await;
    let (_, current_refresh) = refreshed(&app, &rotated.refresh_token).await;
    let logged_out = app.login("dead@x.com").await;
    let body = app
        .graphql(
            "mutation($t: String) { logout(refreshToken: $t) }",
            json!({ "t": logged_out.refresh_token }),
            Some(&logged_out.access_token),
        )
        .await;
    assert_no_errors(&body);
    let disabled = app.register("disabled@x.com").await;
    assert_eq!(
        admin(&app, &["disable-user", "disabled@x.com"]).await.code,
        0
    );
    let deleted = app.register("deleted@x.com").await;
    let deleted_refresh = deleted.refresh_token.clone();
    assert_eq!(admin(&app, &["delete-user", "deleted@x.com"]).await.code, 0);
    let expiring = app.register("expiring@x.com").await;
    let forgery = forged(&expiring.refresh_token);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    for (what, token) in [
        (
            "rotated away, past the grace",
            rotated.refresh_token.as_str(),
        ),
        ("logged out access", logged_out.access_token.as_str()),
        ("logged out refresh", logged_out.refresh_token.as_str()),
        ("disabled access", disabled.access_token.as_str()),
        ("disabled refresh", disabled.refresh_token.as_str()),
        ("deleted user's access", deleted.access_token.as_str()),
        ("deleted user's refresh", deleted_refresh.as_str()),
        ("expired access", expiring.access_token.as_str()),
        ("another key's access", foreign.access_token.as_str()),
        ("another key's refresh", foreign.refresh_token.as_str()),
        ("forged", forgery.as_str()),
        ("garbage", "garbage"),
        ("empty", ""),
        ("dots", "a.b.c"),
    ] {
        for hint in [None, Some("refresh_token"), Some("access_token")] {
            let answer = introspect(&app, token, hint).await;
            assert_eq!(answer, json!({ "active": false }), "{what}, hint {hint:?}");
        }
    }
    // The rotated session itself was not revoked by being looked at: introspection is no
    // refresh, and reuse detection is refresh's.
    assert_eq!(
        introspect(&app, &current_refresh, None).await["active"],
        true
    );
    assert_eq!(
        introspect(&app, &expiring.refresh_token, None).await["active"],
        true
    );
    refreshed(&app, &current_refresh).await;
}

#[tokio::test]
async fn introspection_answers_401_invalid_client_to_anyone_not_listed() {
    let app = spawn_app_with(with_client).await;
    let account = app.register("clients@x.com").await;
    let form = format!("token={}", account.access_token);
    let form_type = "application/x-www-form-urlencoded";
    let assert_invalid_client = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = header_of(&response, "www-authenticate").expect("a challenge");
        assert!(challenge.starts_with("Basic "), "{challenge}");
        assert_eq!(
            header_of(&response, "cache-control").as_deref(),
            Some("no-store")
        );
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(body, json!({ "error": "invalid_client" }));
    };
    for client in [
        Some(("someone-else", CLIENT_SECRET)),
        Some((CLIENT_ID, "0123456789abcdef-wrong-secret")),
        Some((CLIENT_ID, "")),
        Some(("", "")),
        Some((CLIENT_ID, &CLIENT_SECRET[..CLIENT_SECRET.len() - 1])),
        None,
    ] {
        assert_invalid_client(introspect_raw(&app, client, form_type, form.clone()).await).await;
    }
    // Other schemes, and Basic that is not base64 of id:secret.
    let basic = basic(CLIENT_ID, CLIENT_SECRET);
    for authorization in [
        format!("Bearer {}", account.access_token),
        format!("Digest {basic}"),
        "Basic".to_owned(),
        "Basic !!!not-base64!!!".to_owned(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(CLIENT_ID)
        ),
    ] {
        let response = app
            .client
            .post(format!("{}/oauth/introspect", app.address))
            .header(header::CONTENT_TYPE, form_type)
            .header(header::AUTHORIZATION, authorization.as_str())
            .body(form.clone())
            .send()
            .await
            .unwrap();
        assert_invalid_client(response).await;
    }
    // The right client twice over is no client.
    let response = app
        .client
        .post(format!("{}/oauth/introspect", app.address))
        .header(header::CONTENT_TYPE, form_type)
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(form.clone())
        .send()
        .await
        .unwrap();
    assert_invalid_client(response).await;

    // Without INTROSPECTION_CLIENTS nobody is a client.
    let closed = spawn_app().await;
    let account = closed.register("closed@x.com").await;
    for client in [Some((CLIENT_ID, CLIENT_SECRET)), Some(("", "")), None] {
        let response = introspect_raw(
            &closed,
            client,
            form_type,
            format!("token={}", account.access_token),
        )
        .await;
        assert_invalid_client(response).await;
    }
}

fn basic(id: &str, secret: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
}

#[tokio::test]
async fn introspection_rate_limits_an_address_whose_client_credentials_keep_failing() {
    let app = spawn_app_with(|config| {
        with_client(config);
        config.rate_limit_ip_per_minute = 5;
    })
    .await;
    let account = app.register("guess@x.com").await;
    let form = format!("token={}", account.access_token);
    let form_type = "application/x-www-form-urlencoded";
    for n in 0..5 {
        let secret = format!("0123456789abcdef-guess-{n}");
        let response =
            introspect_raw(&app, Some((CLIENT_ID, &secret)), form_type, form.clone()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "guess {n}");
    }
    // No more wrong guesses are even compared.
    let limited = introspect_raw(
        &app,
        Some((CLIENT_ID, "0123456789abcdef-guess-5")),
        form_type,
        form.clone(),
    )
    .await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header_of(&limited, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    // The listed resource server is not locked out by a neighbour's guesses.
    let answer = introspect(&app, &account.access_token, None).await;
    assert_eq!(answer["active"], true);
}

#[tokio::test]
async fn a_client_secret_with_plus_slash_and_equals_works_as_curl_u_and_form_encoded_send_it() {
    // What `openssl rand -base64 24` gives.
    let secret = "q+Zk/9x=Rw+0pL3mT7vA%41bC";
    let app = spawn_app_with(|config| {
        config.introspection_clients = vec![authql::config::IntrospectionClient {
            id: "orders".into(),
            secret: secrecy::SecretString::from(secret),
        }];
    })
    .await;
    let account = app.register("plus@x.com").await;
    let form = format!("token={}", account.access_token);
    let form_type = "application/x-www-form-urlencoded";
    // As `curl -u orders:<secret>` (the README's walkthrough) and most HTTP clients send it.
    let response = introspect_raw(&app, Some(("orders", secret)), form_type, form.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["active"], true);
    // Form-encoded first, as RFC 6749 § 2.3.1 says OAuth clients send it.
    let encoded = urlencode(secret);
    let response = introspect_raw(&app, Some(("orders", &encoded)), form_type, form.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Neither is a near miss.
    let spaced = secret.replace('+', " ");
    let response = introspect_raw(&app, Some(("orders", &spaced)), form_type, form.clone()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn introspection_refuses_requests_it_cannot_read_with_400_invalid_request() {
    let app = spawn_app_with(with_client).await;
    let account = app.register("bad@x.com").await;
    let client = Some((CLIENT_ID, CLIENT_SECRET));
    let form_type = "application/x-www-form-urlencoded";
    let token = &account.access_token;
    for (content_type, form) in [
        (form_type, String::new()),
        (form_type, "token_type_hint=access_token".to_owned()),
        (form_type, format!("tok={token}")),
        (form_type, format!("token={token}&token={token}")),
        (form_type, format!("token=garbage&token={token}")),
        (
            form_type,
            format!("token={token}&token_type_hint=access_token&token_type_hint=refresh_token"),
        ),
        ("application/json", json!({ "token": token }).to_string()),
        ("text/plain", format!("token={token}")),
        ("multipart/form-data; boundary=x", format!("token={token}")),
    ] {
        let response = introspect_raw(&app, client, content_type, form.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{content_type} {form}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "error": "invalid_request" }), "{form}");
    }
    // No content type at all.
    let response = app
        .client
        .post(format!("{}/oauth/introspect", app.address))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A charset parameter is fine, and so are parameters it does not know.
    let response = introspect_raw(
        &app,
        client,
        "application/x-www-form-urlencoded; charset=UTF-8",
        format!("token={token}&client_id=whatever"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["active"], true);
    // GET is not introspection.
    let response = app
        .client
        .get(format!("{}/oauth/introspect?token={token}", app.address))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

// ---------------------------------------------------------------------------------------------
// Hostile callers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn introspection_bounds_its_body_and_keeps_answering() {
    let app = spawn_app_with(with_client).await;
    let account = app.register("big@x.com").await;
    let client = Some((CLIENT_ID, CLIENT_SECRET));
    let form_type = "application/x-www-form-urlencoded";

    // Just over 16 KiB.
    let padded = format!(
        "token={}&pad={}",
        account.access_token,
        "x".repeat(16 * 1024)
    );
    let response = introspect_raw(&app, client, form_type, padded).await;
    assert!(
        matches!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST
        ),
        "{}",
        response.status()
    );
    // `token` 10,000 times.
    let repeated = format!("token={}&", account.access_token).repeat(10_000);
    let response = introspect_raw(&app, client, form_type, repeated).await;
    assert!(
        matches!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST
        ),
        "{}",
        response.status()
    );
    // 10,000 short repeats that fit: still one answer, 400.
    let repeated = "token=a&".repeat(2_000);
    assert!(repeated.len() <= 16 * 1024);
    let response = introspect_raw(&app, client, form_type, repeated).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // 10 MB, from a caller that is a client and from one that is not. The server may answer
    // before it has read it all and close the connection: either an answer that refuses it, or
    // a closed connection, never a 200 or a 5xx.
    let huge = format!(
        "token={}&pad={}",
        account.access_token,
        "x".repeat(10 << 20)
    );
    for client in [client, None] {
        let started = Instant::now();
        match app
            .client
            .post(format!("{}/oauth/introspect", app.address))
            .header(header::CONTENT_TYPE, form_type)
            .basic_auth(
                client.map_or("nobody", |(id, _)| id),
                client.map(|(_, secret)| secret),
            )
            .body(huge.clone())
            .send()
            .await
        {
            Ok(response) => assert!(
                matches!(
                    response.status(),
                    StatusCode::PAYLOAD_TOO_LARGE
                        | StatusCode::BAD_REQUEST
                        | StatusCode::UNAUTHORIZED
                ),
                "{}",
                response.status()
            ),
            Err(error) => assert!(!error.is_timeout(), "{error}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    // Still answering.
    assert_eq!(
        introspect(&app, &account.access_token, None).await["active"],
        true
    );
    assert_no_errors(&app.me(&account.access_token).await);
}

#[tokio::test]
async fn verify_survives_a_100_kb_authorization_header_and_a_flood_of_requests() {
    let app = spawn_app().await;
    let account = app.register("flood@x.com").await;

    let huge = format!("Bearer {}", "A".repeat(100 * 1024));
    let response = verify_with(&app, Method::GET, &[&huge]).await;
    assert!(
        matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        "{}",
        response.status()
    );
    let huge_jwt = format!(
        "Bearer {}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"at+jwt","kid":"x"}"#),
        "A".repeat(50 * 1024),
        "B".repeat(50 * 1024)
    );
    let response = verify_with(&app, Method::GET, &[&huge_jwt]).await;
    assert!(
        matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        "{}",
        response.status()
    );

    // 10,000 requests, 50 at a time: live tokens, garbage and none.
    let live = format!("Bearer {}", account.access_token);
    let statuses: Vec<u16> = futures::stream::iter(0..10_000)
        .map(|n| {
            let client = app.client.clone();
            let url = format!("{}/auth/verify", app.address);
            let authorization = match n % 3 {
                0 => Some(live.clone()),
                1 => Some(format!("Bearer garbage-{n}")),
                _ => None,
            };
            async move {
                let mut request = client.get(url);
                if let Some(authorization) = authorization {
                    request = request.header(header::AUTHORIZATION, authorization);
                }
                request
                    .send()
                    .await
                    .map_or(0, |response| response.status().as_u16())
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let ok = statuses.iter().filter(|status| **status == 200).count();
    let refused = statuses.iter().filter(|status| **status == 401).count();
    assert_eq!(ok, 3334, "{:?}", tally(&statuses));
    assert_eq!(refused, 6666, "{:?}", tally(&statuses));
    // Still answering.
    assert_no_errors(&app.me(&account.access_token).await);
    assert_eq!(
        verify(&app, Some(&account.access_token)).await.status(),
        200
    );
}

fn tally(statuses: &[u16]) -> std::collections::BTreeMap<u16, usize> {
    let mut tally = std::collections::BTreeMap::new();
    for status in statuses {
        *tally.entry(*status).or_default() += 1;
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// ACCESS_TOKEN_CLAIMS_TEMPLATE
// ---------------------------------------------------------------------------------------------

const HASURA: &str = r#"{
  "https://hasura.io/jwt/claims": {
    "x-hasura-user-id": {{ user.id }},
    "x-hasura-default-role": {{ "admin" if "admin" in user.roles else "user" }},
    "x-hasura-allowed-roles": {{ user.roles + ["user"] }}
  },
  "app": {
    "name": {{ user.username }},
    "email": {{ user.email }},
    "verified": {{ user.emailVerified }},
    "session": {{ session.id }},
    "amr": {{ amr }}
  }
}"#;

/// An app whose access tokens carry what `template` renders.
async fn spawn_app_with_template(template: &str) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims.j2");
    std::fs::write(&path, template).unwrap();
    let app = spawn_app_with(|config| {
        with_client(config);
        config.access_token_claims_template = Some(path);
    })
    .await;
    (app, dir)
}

#[tokio::test]
async fn a_hasura_claims_template_puts_its_namespace_in_every_access_token() {
    let (app, _template) = spawn_app_with_template(HASURA).await;
    let body = app
        .register_raw("hasura@x.com", PASSWORD, Some("hasura"))
        .await;
    assert_no_errors(&body);
    let user_id = string_at(&body, "/data/register/user/id");
    let registered = string_at(&body, "/data/register/accessToken");
    let claims = claims_of(&registered);
    let hasura = &claims["https://hasura.io/jwt/claims"];
    assert_eq!(hasura["x-hasura-user-id"], user_id.as_str());
    assert_eq!(hasura["x-hasura-default-role"], "user");
    assert_eq!(hasura["x-hasura-allowed-roles"], json!(["user"]));
    assert_eq!(claims["app"]["name"], "hasura");
    assert_eq!(claims["app"]["email"], "hasura@x.com");
    assert_eq!(claims["app"]["verified"], false);
    assert_eq!(
        claims["app"]["session"],
        string_at(&body, "/data/register/session/id").as_str()
    );
    assert_eq!(claims["app"]["amr"], json!(["pwd"]));
    // authql's own claims are untouched.
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(verify(&app, Some(&registered)).await.status(), 200);

    grant(&app, "hasura", "admin").await;
    let login = app.login("hasura@x.com").await;
    let claims = claims_of(&login.access_token);
    let hasura = &claims["https://hasura.io/jwt/claims"];
    assert_eq!(hasura["x-hasura-default-role"], "admin");
    assert_eq!(hasura["x-hasura-allowed-roles"], json!(["admin", "user"]));
    assert_eq!(claims["roles"], json!(["admin"]));

    // After a refresh, what is true then.
    revoke_role(&app, "hasura", "admin").await;
    grant(&app, "hasura", "editor").await;
    let (access, _) = refreshed(&app, &login.refresh_token).await;
    let claims = claims_of(&access);
    let hasura = &claims["https://hasura.io/jwt/claims"];
    assert_eq!(hasura["x-hasura-default-role"], "user");
    assert_eq!(hasura["x-hasura-allowed-roles"], json!(["editor", "user"]));
    assert_eq!(claims["app"]["session"], login.session_id.as_str());
    assert_eq!(verify(&app, Some(&access)).await.status(), 200);
    assert_eq!(introspect(&app, &access, None).await["active"], true);
    // Refresh tokens carry none of it.
    assert!(claims_of(&login.refresh_token).get("app").is_none());
}

#[tokio::test]
async fn no_username_or_email_can_break_out_of_its_string_into_claims_of_its_own() {
    let template =
        r#"{"role": "user", "app": {"name": {{ user.username }}, "email": {{ user.email }}}}"#;
    let (app, _template) = spawn_app_with_template(template).await;
    for (email, username) in [
        ("one@x.com", r#"x","role":"admin"#),
        ("two@x.com", r#"x"},"role":"admin","y":{"z":"#),
        ("three@x.com", r#"back\"slash\\"#),
        ("four@x.com", "{{7*7}}"),
        ("o'brien+{tag}@x.com", "obrien"),
        ("a\"b@x.com", "quoted"),
    ] {
        let body = app.register_raw(email, PASSWORD, Some(username)).await;
        if body.get("errors").is_some() {
            // Refused at the door is as safe.
            assert_eq!(
                error_code(&body),
                "BAD_USER_INPUT",
                "{email} {username}: {body}"
            );
            continue;
        }
        let token = string_at(&body, "/data/register/accessToken");
        let claims = claims_of(&token);
        assert_eq!(claims["role"], "user", "{email} {username}");
        let app_claims = claims["app"].as_object().unwrap();
        assert_eq!(app_claims.len(), 2, "{claims}");
        assert_eq!(
            claims["app"]["name"],
            string_at(&body, "/data/register/user/username").as_str()
        );
        assert_eq!(
            claims["app"]["email"],
            string_at(&body, "/data/register/user/email").as_str()
        );
        assert_eq!(
            claims["sub"],
            string_at(&body, "/data/register/user/id").as_str()
        );
        assert_eq!(verify(&app, Some(&token)).await.status(), 200);
    }
    // The username that looks most like an injection was accepted, and is inert.
    let answer = app.login_raw(r#"x","role":"admin"#, PASSWORD).await;
    assert_no_errors(&answer);
}

#[tokio::test]
async fn a_template_cannot_set_a_claim_authql_writes_itself() {
    // Each would be a second member of the same name in the token (RFC 7519 § 4: claim names
    // are unique), and `email` one authql itself reads back.
    for claim in ["email", "email_verified", "roles", "amr", "auth_time"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claims.j2");
        std::fs::write(&path, format!(r#"{{"{claim}": {{{{ user.email }}}}}}"#)).unwrap();
        let mut config = test_config(&sqlite_url(&dir.path().join("authql.db")));
        config.access_token_claims_template = Some(path);
        assert!(
            authql::app::Application::build(config).await.is_err(),
            "a template setting {claim:?} was accepted"
        );
    }
}

#[tokio::test]
async fn a_bad_claims_template_stops_the_start() {
    use std::process::{Command, Stdio};

    for (name, template) in [
        ("not JSON", "{\"a\": 1,}"),
        ("not an object", "[{{ user.id }}]"),
        ("unquoted text", "{\"a\": {{ user.id }} {{ user.email }}}"),
        ("reserved sub", r#"{"sub": "someone-else"}"#),
        ("reserved exp", r#"{"exp": 99999999999}"#),
        ("reserved typ", r#"{"typ": "at+jwt"}"#),
        ("reserved sid", r#"{"x": 1, "sid": {{ user.id }}}"#),
        ("undefined variable", r#"{"a": {{ user.nickname }}}"#),
        ("broken syntax", r#"{"a": {% if %}}"#),
        ("quoted by hand", r#"{"a": "{{ user.email }}"}"#),
        ("first role of none", r#"{"a": {{ user.roles[0] }}}"#),
        ("endless", "{% for i in range(100000) %}{% endfor %}{}"),
        ("too big", r#"{"a": {{ user.email * 1000 }}}"#),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claims.j2");
        std::fs::write(&path, template).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_authql"))
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", "0")
            .env("ACCESS_TOKEN_CLAIMS_TEMPLATE", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let status = status.unwrap_or_else(|| panic!("{name}: it started anyway"));
        assert!(!status.success(), "{name}: {status}");
    }
    // A missing file stops it too.
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_authql"))
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", "0")
        .env(
            "ACCESS_TOKEN_CLAIMS_TEMPLATE",
            dir.path().join("missing.j2"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    // A good one starts (so the refusals above were the template's doing).
    let good = dir.path().join("good.j2");
    std::fs::write(&good, HASURA).unwrap();
    let binary = start_binary(
        dir.path(),
        &[("ACCESS_TOKEN_CLAIMS_TEMPLATE", good.to_str().unwrap())],
    )
    .await;
    drop(binary);
}

/// Slowloris on introspection: a caller that is no client, announcing a body it never sends,
/// is answered 401 at once (its credentials are checked before any body is read), and a client
/// that sends its body too slowly is cut off after 5 s, not the request timeout.
#[tokio::test]
async fn introspection_reads_no_body_before_the_client_is_known_and_bounds_its_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(with_client).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    for (authorization, within, status) in [
        (String::new(), Duration::from_secs(2), "401"),
        (
            format!("authorization: Basic {basic}\r\n"),
            Duration::from_secs(8),
            "408",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /oauth/introspect HTTP/1.1\r\nhost: {address}\r\n{authorization}\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\ntoken="
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = vec![0; 1024];
        let read = tokio::time::timeout(within, stream.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("no answer within {within:?}"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer} after {:?}",
            started.elapsed()
        );
    }
    // Still answering.
    let account = app.register("after@x.com").await;
    assert_eq!(
        app.me(&account.access_token).await["data"]["me"]["email"],
        "after@x.com"
    );
}
