//! The GraphQL-over-HTTP spec and the GraphQL spec's response rules, as a client sees them:
//! status codes and media types by `Accept`, request errors without `data`, GET read like POST,
//! null propagation for non-null fields, coercion failures as `BAD_USER_INPUT`, `Retry-After`,
//! and the `DateTime` scalar.

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_no_errors, error_code, spawn_app, spawn_app_with};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

async fn post_accepting(app: &TestApp, accept: &str, body: Value) -> (StatusCode, String, Value) {
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header(header::ACCEPT, accept)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.json().await.unwrap())
}

/// Request errors of each kind: (what, body, code).
fn request_errors() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "parse",
            json!({ "query": "{ me { id " }),
            "GRAPHQL_PARSE_FAILED",
        ),
        (
            "validation",
            json!({ "query": "{ me { nope } }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "variable coercion",
            json!({ "query": "mutation($t: String!) { refresh(refreshToken: $t) { accessToken } }", "variables": { "t": 123 } }),
            "BAD_USER_INPUT",
        ),
        (
            "unknown operation",
            json!({ "query": "query A { me { id } }", "operationName": "B" }),
            "OPERATION_RESOLUTION_FAILURE",
        ),
    ]
}

#[tokio::test]
async fn request_errors_are_400_without_data_under_graphql_response_json() {
    let app = spawn_app().await;
    for (what, body, code) in request_errors() {
        let (status, content_type, answer) = post_accepting(&app, GRAPHQL_RESPONSE, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert!(content_type.starts_with(GRAPHQL_RESPONSE), "{what}");
        assert!(answer.get("data").is_none(), "{what}: {answer}");
        assert_eq!(error_code(&answer), code, "{what}: {answer}");
    }
}

#[tokio::test]
async fn request_errors_are_200_without_data_under_application_json() {
    let app = spawn_app().await;
    for (what, body, code) in request_errors() {
        let (status, content_type, answer) = post_accepting(&app, "application/json", body).await;
        assert_eq!(status, StatusCode::OK, "{what}: {answer}");
        assert!(content_type.starts_with("application/json"), "{what}");
        assert!(answer.get("data").is_none(), "{what}: {answer}");
        assert_eq!(error_code(&answer), code, "{what}: {answer}");
    }
}

#[tokio::test]
async fn malformed_parameters_are_400_in_both_media_types() {
    let app = spawn_app().await;
    for accept in [GRAPHQL_RESPONSE, "application/json"] {
        for body in [
            json!({}),
            json!({ "query": 1 }),
            json!({ "query": "{ __typename }", "variables": "[]" }),
            json!([{ "query": "{ __typename }" }]),
        ] {
            let (status, _, answer) = post_accepting(&app, accept, body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{accept} {body}: {answer}");
            assert_eq!(error_code(&answer), "BAD_REQUEST");
            assert!(answer.get("data").is_none());
        }
    }
}

#[tokio::test]
async fn accept_q_values_are_honoured() {
    let app = spawn_app().await;
    let query = json!({ "query": "{ __typename }" });
    for (accept, expected) in [
        (
            "application/json;q=0, application/graphql-response+json",
            GRAPHQL_RESPONSE,
        ),
        (
            "application/graphql-response+json;q=0, application/json",
            "application/json",
        ),
        (
            "application/graphql-response+json, application/json;q=0.9",
            GRAPHQL_RESPONSE,
        ),
        ("*/*", "application/json"),
    ] {
        let (status, content_type, body) = post_accepting(&app, accept, query.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with(expected),
            "{accept}: {content_type}"
        );
        assert_eq!(body["data"]["__typename"], "Query");
    }
    let (status, _, body) = post_accepting(&app, "application/json;q=0", query.clone()).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(error_code(&body), "NOT_ACCEPTABLE");
}

async fn get_query(app: &TestApp, params: &[(&str, &str)], token: Option<&str>) -> Value {
    let mut request = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(params);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn get_reads_operation_name_exactly_as_post_does() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let document = "query A { me { email } } query B { mySessions { current } }";
    let body = get_query(
        &app,
        &[("query", document), ("operationName", "B")],
        Some(&account.access_token),
    )
    .await;
    assert_eq!(body["data"]["mySessions"][0]["current"], true, "{body}");
    assert!(body["data"].get("me").is_none());

    let post = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&account.access_token)
        .json(&json!({ "query": "query A { me { email } }", "operationName": "Nope" }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let get = get_query(
        &app,
        &[
            ("query", "query A { me { email } }"),
            ("operationName", "Nope"),
        ],
        Some(&account.access_token),
    )
    .await;
    assert!(get.get("data").is_none(), "{get}");
    assert_eq!(error_code(&get), error_code(&post));
    assert_eq!(get, post);
}

#[tokio::test]
async fn an_error_in_a_non_null_field_nulls_its_parent_instead_of_vanishing() {
    let app = spawn_app().await;
    // `me: User!` fails: data itself becomes null, and the error names the field.
    let body = app
        .graphql("{ __typename me { id } }", json!({}), None)
        .await;
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(body["errors"][0]["path"], json!(["me"]));
    assert_eq!(error_code(&body), "UNAUTHENTICATED");

    // The same for every non-null root field, mutations included.
    for operation in [
        "{ __typename mySessions { id } }",
        "mutation { __typename logout }",
        "mutation { __typename revokeOtherSessions }",
    ] {
        let body = app.graphql(operation, json!({}), None).await;
        assert_eq!(body["data"], Value::Null, "{operation}: {body}");
        assert!(body["errors"][0]["path"].is_array(), "{operation}");
    }

    // A signed-in request is untouched.
    let account = app.register("ada@example.com").await;
    let body = app
        .graphql(
            "{ __typename me { id } }",
            json!({}),
            Some(&account.access_token),
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["__typename"], "Query");
}

#[tokio::test]
async fn input_of_the_wrong_type_is_bad_user_input() {
    let app = spawn_app().await;
    let refresh = "mutation($t: String!) { refresh(refreshToken: $t) { accessToken } }";
    let register = "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }";
    for (query, variables) in [
        (refresh, json!({ "t": 123 })),
        (refresh, json!({ "t": null })),
        (refresh, json!({})),
        (
            register,
            json!({ "i": { "email": "a@example.com", "password": "long enough pw", "bogus": 1 } }),
        ),
        (register, json!({ "i": { "email": "a@example.com" } })),
        (register, json!({ "i": "not an object" })),
    ] {
        let body = app.graphql(query, variables.clone(), None).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{variables}: {body}");
        assert!(body.get("data").is_none(), "{body}");
    }
    assert!(app.user_rows().await.is_empty());

    // A literal of the wrong type is the document's fault.
    let body = app
        .graphql(
            "mutation { refresh(refreshToken: 123) { accessToken } }",
            json!({}),
            None,
        )
        .await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn rate_limited_answers_carry_retry_after() {
    let app = spawn_app_with(|config| config.rate_limit_ip_per_minute = 1).await;
    let login = "mutation { login(input: {emailOrUsername: \"x@example.com\", password: \"wrong password\"}) { accessToken } }";
    let first = app.graphql(login, json!({}), None).await;
    assert_eq!(error_code(&first), "INVALID_CREDENTIALS");
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .json(&json!({ "query": login }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let retry_after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "RATE_LIMITED");
    assert_eq!(
        body["errors"][0]["extensions"]["retryAfterSeconds"],
        retry_after
    );
    assert!(retry_after >= 1);
}

fn is_millisecond_utc(text: &str) -> bool {
    // 2026-11-29T12:47:10.123Z
    let bytes = text.as_bytes();
    bytes.len() == 24
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
        && bytes[19] == b'.'
        && bytes[20..23].iter().all(u8::is_ascii_digit)
        && bytes[23] == b'Z'
}

#[tokio::test]
async fn every_timestamp_is_rfc3339_utc_with_milliseconds() {
    let app = spawn_app().await;
    let body = app
        .register_raw("ada@example.com", crate::helpers::PASSWORD, None)
        .await;
    let payload = &body["data"]["register"];
    let refreshed = app
        .refresh_raw(&string(&body, "/data/register/refreshToken"))
        .await;
    let sessions = app
        .my_sessions(&string(&refreshed, "/data/refresh/accessToken"))
        .await;
    let stamps = [
        &payload["accessTokenExpiresAt"],
        &payload["refreshTokenExpiresAt"],
        &payload["user"]["createdAt"],
        &payload["session"]["createdAt"],
        &payload["session"]["expiresAt"],
        &refreshed["data"]["refresh"]["session"]["lastRefreshedAt"],
        &sessions["data"]["mySessions"][0]["createdAt"],
        &sessions["data"]["mySessions"][0]["lastRefreshedAt"],
    ];
    for stamp in stamps {
        let text = stamp.as_str().unwrap_or_default();
        assert!(is_millisecond_utc(text), "{stamp}");
    }

    let sdl = authql::graphql::schema_sdl();
    assert!(
        sdl.contains(
            "scalar DateTime @specifiedBy(url: \"https://scalars.graphql.org/andimarek/date-time\")"
        ),
        "{sdl}"
    );
}

fn string(body: &Value, pointer: &str) -> String {
    crate::helpers::string_at(body, pointer)
}

#[tokio::test]
async fn response_fields_keep_the_order_of_the_selection_set() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .json(&json!({ "query": "{ zz: __typename aa: __typename mm: __typename }" }))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let (zz, aa, mm) = (
        text.find("\"zz\"").unwrap(),
        text.find("\"aa\"").unwrap(),
        text.find("\"mm\"").unwrap(),
    );
    assert!(zz < aa && aa < mm, "{text}");
}

#[tokio::test]
async fn a_document_seen_before_still_has_its_variables_and_limits_checked() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let refresh = "mutation($t: String!) { refresh(refreshToken: $t) { accessToken } }";
    // The first request parses, validates and keeps the document...
    let body = app
        .graphql(refresh, json!({ "t": account.refresh_token }), None)
        .await;
    assert_no_errors(&body);
    let access_token = crate::helpers::string_at(&body, "/data/refresh/accessToken");
    // ...the same text with bad variables is still refused, every time.
    for _ in 0..2 {
        for variables in [json!({ "t": 123 }), json!({ "t": null }), json!({})] {
            let body = app.graphql(refresh, variables.clone(), None).await;
            assert_eq!(error_code(&body), "BAD_USER_INPUT", "{variables}: {body}");
        }
    }
    // A document over a limit is never kept, so it is refused every time.
    let aliases: String = (0..20).map(|i| format!("a{i}: __typename ")).collect();
    for _ in 0..2 {
        let body = app
            .graphql(&format!("{{ {aliases} }}"), json!({}), None)
            .await;
        assert_eq!(error_code(&body), "TOO_MANY_ALIASES", "{body}");
    }
    // And another operation name of one document is its own entry.
    let document = "query A { me { email } } query B { mySessions { id } }";
    for (name, field) in [("A", "me"), ("B", "mySessions"), ("A", "me")] {
        let body = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&access_token)
            .json(&json!({ "query": document, "operationName": name }))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert!(
            body["data"][field].is_object() || body["data"][field].is_array(),
            "{body}"
        );
    }
}
