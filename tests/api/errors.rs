//! Every error code a client can get, and the reasons of UNAUTHENTICATED.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn protected_operations_without_a_token_are_unauthenticated_missing() {
    let app = spawn_app().await;
    for operation in [
        "{ me { id } }",
        "{ mySessions { id } }",
        "mutation { logout }",
        "mutation { revokeOtherSessions }",
        "mutation { revokeTokens(input: {sessionIds: [\"x\"]}) { revokedCount } }",
        "mutation { changePassword(input: {currentPassword: \"a\", newPassword: \"b\"}) }",
    ] {
        let body = app.graphql(operation, json!({}), None).await;
        assert_unauthenticated(&body, "MISSING");
    }
}

#[tokio::test]
async fn a_token_that_is_not_ours_is_malformed() {
    let app = spawn_app().await;
    let account = app.register("shape@x.com").await;
    let mut tampered = account.access_token.clone();
    tampered.pop();
    tampered.push(if account.access_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    for token in ["garbage", "a.b.c", "a.b", tampered.as_str()] {
        assert_unauthenticated(&app.me(token).await, "MALFORMED");
    }
    // A header that is not Bearer.
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    assert_unauthenticated(&response.json().await.unwrap(), "MALFORMED");
}

#[tokio::test]
async fn each_token_kind_is_refused_where_the_other_belongs() {
    let app = spawn_app().await;
    let account = app.register("kinds@x.com").await;
    assert_unauthenticated(&app.me(&account.refresh_token).await, "WRONG_TOKEN_TYPE");
    assert_unauthenticated(
        &app.refresh_raw(&account.access_token).await,
        "WRONG_TOKEN_TYPE",
    );
    // Neither attempt cost the session anything.
    assert_no_errors(&app.me(&account.access_token).await);
}

#[tokio::test]
async fn a_token_signed_by_another_server_is_malformed() {
    let ours = spawn_app().await;
    let theirs = spawn_app_with(|config| {
        config.jwt_secret_key = Some("a different secret that is also long enough".into());
    })
    .await;
    let foreign = theirs.register("foreign@x.com").await;
    assert_unauthenticated(&ours.me(&foreign.access_token).await, "MALFORMED");
    assert_unauthenticated(&ours.refresh_raw(&foreign.refresh_token).await, "MALFORMED");
}

#[tokio::test]
async fn wrongly_typed_input_is_a_coded_error_not_a_crash() {
    let app = spawn_app().await;
    // A number where the email String belongs, as a literal and as a variable.
    let literal = app
        .graphql(
            "mutation { register(input: {email: 5, password: \"12345678\"}) { accessToken } }",
            json!({}),
            None,
        )
        .await;
    assert!(
        literal["errors"][0]["extensions"]["code"].is_string(),
        "{literal}"
    );
    let variable = app
        .graphql(
            "mutation($input: RegisterInput!) { register(input: $input) { accessToken } }",
            json!({ "input": { "email": 5, "password": ["x"] } }),
            None,
        )
        .await;
    assert!(
        variable["errors"][0]["extensions"]["code"].is_string(),
        "{variable}"
    );
    let syntax = app.graphql("{ me { id ", json!({}), None).await;
    assert_eq!(error_code(&syntax), "GRAPHQL_PARSE_FAILED");
    let unknown_field = app.graphql("{ password }", json!({}), None).await;
    assert_eq!(error_code(&unknown_field), "GRAPHQL_VALIDATION_FAILED");
    assert!(app.user_rows().await.is_empty());
    // And the server still serves.
    app.register("alive@x.com").await;
}

#[tokio::test]
async fn internal_failures_are_generic_and_carry_no_details() {
    let app = spawn_app().await;
    let account = app.register("internal@x.com").await;
    // Take the users table away under the running server; MongoDB has no tables to lose, so
    // there a date the store cannot read stands in.
    if mongodb_url().is_some() {
        mongodb_database(&app.database_url)
            .await
            .collection::<bson::Document>("users")
            .update_many(
                bson::doc! {},
                bson::doc! { "$set": { "created_at": "not a date" } },
            )
            .await
            .unwrap();
    } else {
        use sea_orm::ConnectionTrait;
        app.db()
            .await
            .execute_unprepared(
                "DROP TABLE auth_challenges; DROP TABLE passkeys; DROP TABLE recovery_codes; \
                 DROP TABLE totp_credentials; DROP TABLE sessions; DROP TABLE one_time_tokens; \
                 DROP TABLE user_identities; \
                 DROP TABLE users;",
            )
            .await
            .unwrap();
    }
    let body = app.me(&account.access_token).await;
    assert_eq!(error_code(&body), "INTERNAL_SERVER_ERROR");
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        !message.contains("sql") && !message.contains("table"),
        "{message}"
    );
    assert_eq!(
        body["errors"][0]["extensions"].as_object().unwrap().len(),
        1,
        "{body}"
    );
}
