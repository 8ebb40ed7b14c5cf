//! Secrets in logs (ASVS 16.2): every operation runs with a canary password and canary-shaped
//! tokens against the real binary at the most verbose log level, in both log formats; neither
//! may appear in its output, while the security events do. In JSON, every line is an object.

use serde_json::{Value, json};

use crate::helpers::*;

const CANARY_PASSWORD: &str = "CANARY-password-7f3a9c";
const NEW_CANARY_PASSWORD: &str = "CANARY-new-password-51d2e8";
/// Shaped like a JWT, so that anything that logs tokens would log it.
const CANARY_TOKEN: &str =
    "eyJDQU5BUlkiOiJ0b2tlbiJ9.eyJDQU5BUlkiOiJjbGFpbXMifQ.Q0FOQVJZLXNpZ25hdHVyZQ";

#[tokio::test]
async fn no_password_or_token_reaches_the_logs_at_trace_level() {
    exercise_every_operation_and_read_the_log("text").await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_carry_no_password_or_token() {
    let log = exercise_every_operation_and_read_the_log("json").await;
    let mut events = 0;
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("a log line that is not JSON ({error}): {line}"));
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["level"].is_string(), "{line}");
        if object["fields"]["event"].is_string() {
            events += 1;
        }
    }
    assert!(events >= 3, "events are fields of the JSON objects:\n{log}");
}

/// Runs every operation with canaries against the binary logging in `format`; checks that no
/// canary and no issued token is in the log and that the security events are; returns the log.
async fn exercise_every_operation_and_read_the_log(format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let binary = start_binary(
        dir.path(),
        &[
            ("LOG_FORMAT", format),
            ("RUST_LOG", "trace"),
            ("BCRYPT_COST", "4"),
            ("RATE_LIMIT_ACCOUNT_PER_MINUTE", "4"),
            ("REFRESH_REUSE_GRACE_SECONDS", "0"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let gql = |query: &str, variables: Value, token: Option<&str>| {
        let mut request = client
            .post(binary.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let auth_fields = "{ accessToken refreshToken session { id } }";

    let registered = gql(
        &format!("mutation($i: RegisterInput!) {{ register(input: $i) {auth_fields} }}"),
        json!({ "i": { "email": "canary@x.com", "password": CANARY_PASSWORD } }),
        None,
    )
    .await;
    let mut issued = vec![
        string_at(&registered, "/data/register/accessToken"),
        string_at(&registered, "/data/register/refreshToken"),
    ];
    let login = |password: &'static str| {
        gql(
            &format!("mutation($i: LoginInput!) {{ login(input: $i) {auth_fields} }}"),
            json!({ "i": { "emailOrUsername": "canary@x.com", "password": password } }),
            None,
        )
    };
    let logged_in = login(CANARY_PASSWORD).await;
    let access = string_at(&logged_in, "/data/login/accessToken");
    let refresh = string_at(&logged_in, "/data/login/refreshToken");
    issued.extend([access.clone(), refresh.clone()]);

    // Failed logins until the rate limit answers.
    for _ in 0..4 {
        login("CANARY-wrong-password-0b7e").await;
    }

    let refreshed = gql(
        &format!("mutation($t: String!) {{ refresh(refreshToken: $t) {auth_fields} }}"),
        json!({ "t": refresh }),
        None,
    )
    .await;
    let access = string_at(&refreshed, "/data/refresh/accessToken");
    issued.push(access.clone());
    issued.push(string_at(&refreshed, "/data/refresh/refreshToken"));
    // Reuse of the rotated-away refresh token: revokes that session.
    gql(
        &format!("mutation($t: String!) {{ refresh(refreshToken: $t) {auth_fields} }}"),
        json!({ "t": refresh }),
        None,
    )
    .await;

    let first_access = issued[0].clone();
    gql(
        "{ me { id } mySessions { id } }",
        json!({}),
        Some(&first_access),
    )
    .await;
    gql("{ me { id } }", json!({}), Some(CANARY_TOKEN)).await;
    gql(
        "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }",
        json!({ "i": { "tokens": [CANARY_TOKEN, issued[1]] } }),
        Some(&first_access),
    )
    .await;
    gql(
        "mutation($t: String!) { refresh(refreshToken: $t) { accessToken } }",
        json!({ "t": CANARY_TOKEN }),
        None,
    )
    .await;
    let second = login(CANARY_PASSWORD).await;
    // The account bucket may be empty by now; the password change then uses the first session.
    let second_access = second
        .pointer("/data/login/accessToken")
        .and_then(Value::as_str)
        .map_or_else(|| first_access.clone(), str::to_owned);
    gql(
        "mutation($i: ChangePasswordInput!) { changePassword(input: $i) }",
        json!({ "i": { "currentPassword": CANARY_PASSWORD, "newPassword": NEW_CANARY_PASSWORD } }),
        Some(&second_access),
    )
    .await;
    gql(
        "mutation { revokeOtherSessions }",
        json!({}),
        Some(&second_access),
    )
    .await;
    gql("mutation { logout }", json!({}), Some(&second_access)).await;
    // Deleting an account (another one: this one's login bucket is empty by now), first with
    // a wrong password, then with the right one.
    let leaving = gql(
        &format!("mutation($i: RegisterInput!) {{ register(input: $i) {auth_fields} }}"),
        json!({ "i": { "email": "leaving@x.com", "password": CANARY_PASSWORD } }),
        None,
    )
    .await;
    let leaving_access = string_at(&leaving, "/data/register/accessToken");
    issued.push(leaving_access.clone());
    issued.push(string_at(&leaving, "/data/register/refreshToken"));
    for (password, deleted) in [
        ("CANARY-wrong-password-9d1c", false),
        (CANARY_PASSWORD, true),
    ] {
        let answer = gql(
            "mutation($i: DeleteAccountInput!) { deleteAccount(input: $i) }",
            json!({ "i": { "password": password } }),
            Some(&leaving_access),
        )
        .await;
        assert_eq!(answer["data"].is_object(), deleted, "{answer}");
    }

    // The account flows (issue 18): their links' tokens and their mails' words stay out of the
    // log too. No SMTP_URL: each mail is an .eml file in the binary's mail/ folder.
    let mail_dir = dir.path().join("mail");
    let recovering = gql(
        &format!("mutation($i: RegisterInput!) {{ register(input: $i) {auth_fields} }}"),
        json!({ "i": { "email": "recovering@x.com", "password": CANARY_PASSWORD } }),
        None,
    )
    .await;
    let recovering_access = string_at(&recovering, "/data/register/accessToken");
    issued.push(recovering_access.clone());
    let mut links = Vec::new();
    let verification = eml_link_token(&mail_dir, "email_verification", 1).await;
    links.push(verification.clone());
    gql(
        "mutation { sendVerificationEmail }",
        json!({}),
        Some(&recovering_access),
    )
    .await;
    let fresh_verification = eml_link_token(&mail_dir, "email_verification", 2).await;
    links.push(fresh_verification.clone());
    for token in [&verification, &fresh_verification, &CANARY_TOKEN.to_owned()] {
        gql(
            "mutation($t: String!) { verifyEmail(token: $t) { id } }",
            json!({ "t": token }),
            None,
        )
        .await;
    }
    gql(
        "mutation($e: String!) { requestPasswordReset(email: $e) }",
        json!({ "e": "recovering@x.com" }),
        None,
    )
    .await;
    let reset = eml_link_token(&mail_dir, "password_reset", 1).await;
    links.push(reset.clone());
    for token in [CANARY_TOKEN, reset.as_str(), reset.as_str()] {
        gql(
            "mutation($i: ResetPasswordInput!) { resetPassword(input: $i) }",
            json!({ "i": { "token": token, "newPassword": NEW_CANARY_PASSWORD } }),
            None,
        )
        .await;
    }
    let back = login_as("recovering@x.com", NEW_CANARY_PASSWORD, &gql, auth_fields).await;
    gql(
        "mutation($i: RequestEmailChangeInput!) { requestEmailChange(input: $i) }",
        json!({ "i": { "newEmail": "recovered@x.com", "password": NEW_CANARY_PASSWORD } }),
        Some(&back),
    )
    .await;
    let change = eml_link_token(&mail_dir, "email_change", 1).await;
    links.push(change.clone());
    let changed = gql(
        "mutation($t: String!) { verifyEmail(token: $t) { email } }",
        json!({ "t": change }),
        None,
    )
    .await;
    assert_eq!(
        changed["data"]["verifyEmail"]["email"], "recovered@x.com",
        "{changed}"
    );

    let log = binary.log();
    assert!(log.len() > 1000, "trace logging produced output:\n{log}");
    for link in &links {
        assert!(
            !log.contains(link.as_str()),
            "a link's token appears in the log"
        );
    }
    // Words only a mail holds.
    for words in [
        "The link works once",
        "Setting a new password signs you out",
    ] {
        assert!(!log.contains(words), "a mail's contents appear in the log");
    }
    for secret in [
        CANARY_PASSWORD,
        NEW_CANARY_PASSWORD,
        "CANARY-wrong-password",
        CANARY_TOKEN,
        "CANARY",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log");
    }
    for token in &issued {
        // Any telling part of a token: its signature, or its payload.
        let mut parts = token.split('.');
        let (_, payload, signature) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        assert!(
            !log.contains(signature) && !log.contains(payload),
            "a token appears in the log"
        );
    }
    for event in [
        "login_failed",
        "rate_limited",
        "refresh_token_reused",
        "password_reset",
        "email_verified",
        "mail_written",
    ] {
        assert!(log.contains(event), "the {event} event is logged:\n{log}");
    }
    log
}

/// Logs in; the access token.
async fn login_as<F, Fut>(login: &str, password: &str, gql: &F, fields: &str) -> String
where
    F: Fn(&str, Value, Option<&str>) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let answer = gql(
        &format!("mutation($i: LoginInput!) {{ login(input: $i) {fields} }}"),
        json!({ "i": { "emailOrUsername": login, "password": password } }),
        None,
    )
    .await;
    string_at(&answer, "/data/login/accessToken")
}
