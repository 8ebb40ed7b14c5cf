//! GraphQL over HTTP abuse (OWASP GraphQL Cheat Sheet, ASVS 4.3): cross-site posts, oversized
//! and deeply nested requests, costly operations, introspection, slow requests.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

const REGISTER: &str = r#"mutation { register(input: {email: "csrf@x.com", password: "12345678abc"}) { accessToken } }"#;

async fn post_raw(
    app: &TestApp,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(format!("{}/graphql", app.address))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cross_site_form_and_text_posts_are_refused_and_run_nothing() {
    let app = spawn_app().await;
    let json_body = json!({ "query": REGISTER }).to_string();
    for content_type in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "text/plain",
        "text/plain; charset=utf-8",
    ] {
        let response = post_raw(&app, content_type, json_body.clone()).await;
        assert_http_error(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        )
        .await;
    }
    let no_content_type = app
        .client
        .post(format!("{}/graphql", app.address))
        .body(json_body.clone())
        .send()
        .await
        .unwrap();
    assert_http_error(
        no_content_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    assert!(app.user_rows().await.is_empty(), "no mutation ran");

    // The same body as JSON works, with charset or not.
    let response = post_raw(&app, "application/json; charset=utf-8", json_body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.user_rows().await.len(), 1);
}

#[tokio::test]
async fn oversized_bodies_are_413_whether_declared_or_streamed() {
    let app = spawn_app().await;
    let padding = "x".repeat(70 * 1024);
    let declared =
        json!({ "query": "{ me { id } }", "variables": { "padding": padding } }).to_string();
    let response = post_raw(&app, "application/json", declared.clone()).await;
    assert_http_error(response, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;

    // Chunked, with no Content-Length: the limit holds while reading.
    let chunks: Vec<Result<String, std::io::Error>> = declared
        .as_bytes()
        .chunks(4096)
        .map(|chunk| Ok(String::from_utf8_lossy(chunk).into_owned()))
        .collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = post_raw(&app, "application/json", stream).await;
    assert_http_error(response, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    app.register("after@x.com").await;
}

#[tokio::test]
async fn an_overlong_query_text_is_refused() {
    let app = spawn_app().await;
    let query = format!("{{ me {{ id }} }} # {}", "x".repeat(20 * 1024));
    let response = post_raw(
        &app,
        "application/json",
        json!({ "query": query }).to_string(),
    )
    .await;
    assert_http_error(response, StatusCode::BAD_REQUEST, "QUERY_TOO_LARGE").await;
}

#[tokio::test]
async fn deeply_nested_literals_are_refused_before_parsing_and_the_server_lives() {
    let app = spawn_app().await;
    // A few thousand levels: deep enough to overflow the parser's stack, short enough to pass
    // the query size limit.
    let depth = 3000;
    let literal = format!("{{me(x:{}1{})}}", "[".repeat(depth), "]".repeat(depth));
    let response = post_raw(
        &app,
        "application/json",
        json!({ "query": literal }).to_string(),
    )
    .await;
    assert_http_error(response, StatusCode::BAD_REQUEST, "QUERY_TOO_DEEP").await;
    let objects = format!("{{me(x:{}{})}}", "{a:".repeat(depth), "}".repeat(depth));
    let response = post_raw(
        &app,
        "application/json",
        json!({ "query": objects }).to_string(),
    )
    .await;
    assert_http_error(response, StatusCode::BAD_REQUEST, "QUERY_TOO_DEEP").await;
    // The same over GET.
    let response = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", literal.as_str())])
        .send()
        .await
        .unwrap();
    assert_http_error(response, StatusCode::BAD_REQUEST, "QUERY_TOO_DEEP").await;

    // And in the variables JSON.
    let variables = format!(
        r#"{{"query": "query($x: [String]) {{ me {{ id }} }}", "variables": {{"x": {}1{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let response = post_raw(&app, "application/json", variables).await;
    assert_http_error(response, StatusCode::BAD_REQUEST, "BAD_REQUEST").await;

    app.register("alive@x.com").await;
}

#[tokio::test]
async fn two_expensive_operations_cannot_share_one_request() {
    let app = spawn_app().await;
    app.register("cost@x.com").await;
    let body = app
        .graphql(
            &format!(
                "mutation {{ a: login(input: {{emailOrUsername: \"cost@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} \
                 b: login(input: {{emailOrUsername: \"cost@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}"
            ),
            json!({}),
            None,
        )
        .await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body["data"].is_null());
    assert_eq!(app.session_rows().await.len(), 1, "no login ran");
    // One is fine.
    assert_no_errors(&app.login_raw("cost@x.com", PASSWORD).await);
}

#[tokio::test]
async fn too_many_aliases_are_refused() {
    let app = spawn_app().await;
    let account = app.register("alias@x.com").await;
    let aliased: String = (0..16).map(|i| format!("a{i}: me {{ id }} ")).collect();
    let body = app
        .graphql(
            &format!("{{ {aliased} }}"),
            json!({}),
            Some(&account.access_token),
        )
        .await;
    assert_eq!(error_code(&body), "TOO_MANY_ALIASES", "{body}");
    let fine: String = (0..3).map(|i| format!("a{i}: me {{ id }} ")).collect();
    assert_no_errors(
        &app.graphql(
            &format!("{{ {fine} }}"),
            json!({}),
            Some(&account.access_token),
        )
        .await,
    );
}

#[tokio::test]
async fn too_deep_selections_and_too_many_directives_are_refused() {
    let app = spawn_app().await;
    let nested = format!(
        "{{ __schema {{ types {{ fields {{ type {} name {} }} }} }} }}",
        "{ ofType ".repeat(12),
        "}".repeat(12)
    );
    let body = app.graphql(&nested, json!({}), None).await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");

    // Directives are counted in every place, before validation.
    let directives = "@include(if: true) ".repeat(6);
    let body = app
        .graphql(&format!("{{ me {directives} {{ id }} }}"), json!({}), None)
        .await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body["data"].is_null());
}

#[tokio::test]
async fn graphiql_introspection_works_by_default_and_can_be_switched_off() {
    let open = spawn_app().await;
    let body = open.graphql(INTROSPECTION_QUERY, json!({}), None).await;
    assert_no_errors(&body);
    assert!(body["data"]["__schema"]["types"].as_array().unwrap().len() > 5);

    let closed = spawn_app_with(|config| config.graphql_introspection = false).await;
    let body = closed.graphql(INTROSPECTION_QUERY, json!({}), None).await;
    assert!(body["data"]["__schema"].is_null(), "{body}");
    let body = closed
        .graphql(
            "{ __type(name: \"User\") { fields { name } } }",
            json!({}),
            None,
        )
        .await;
    assert!(body["data"]["__type"].is_null(), "{body}");
    // No "did you mean" hints either.
    let typo = closed.graphql("{ mee { id } }", json!({}), None).await;
    let message = typo["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(!message.contains("did you mean"), "{message}");
}

#[tokio::test]
async fn a_request_that_runs_too_long_is_stopped_with_a_json_error() {
    // bcrypt at cost 15 takes seconds: far longer than the one-second budget.
    let app = spawn_app_with(|config| {
        config.bcrypt_cost = 15;
        config.request_timeout_seconds = 1;
    })
    .await;
    let started = std::time::Instant::now();
    let response = post_raw(
        &app,
        "application/json",
        json!({ "query": REGISTER }).to_string(),
    )
    .await;
    assert_http_error(response, StatusCode::SERVICE_UNAVAILABLE, "REQUEST_TIMEOUT").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
}

/// What GraphiQL asks on load (abridged to its shape and depth).
const INTROSPECTION_QUERY: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name }
    types { ...FullType }
    directives { name locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) { name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } }
}
"#;
