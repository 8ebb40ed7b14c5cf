//! The HTTP surface: routes, methods and bodies that are not GraphQL still get JSON errors.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let app = spawn_app().await;
    let response = app.get("/v1/auth/login").await;
    assert_http_error(response, StatusCode::NOT_FOUND, "NOT_FOUND").await;
}

#[tokio::test]
async fn wrong_methods_are_405_json() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::DELETE, "/graphql"),
        (Method::PUT, "/graphql"),
        (Method::POST, "/healthz"),
        (Method::POST, "/"),
    ] {
        let response = app
            .client
            .request(method, format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_http_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        )
        .await;
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_json_and_the_server_lives_on() {
    let app = spawn_app().await;
    for body in [
        "{not json",
        "42",
        "{\"query\": 5}",
        "{\"query\": \"{ me { id } }\", \"variables\": [1]}",
        "",
        // A batch: one operation per request, so that no limit can be dodged by batching.
        "[{\"query\": \"{ me { id } }\"}, {\"query\": \"{ me { id } }\"}]",
    ] {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_http_error(response, StatusCode::BAD_REQUEST, "BAD_REQUEST").await;
    }
    app.register("still@x.com").await;
}

#[tokio::test]
async fn get_runs_queries_but_never_mutations() {
    let app = spawn_app().await;
    let account = app.register("get@x.com").await;
    let response = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", "{ me { email } }")])
        .bearer_auth(&account.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["me"]["email"], json!("get@x.com"));

    let response = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", "mutation { logout }")])
        .bearer_auth(&account.access_token)
        .send()
        .await
        .unwrap();
    assert_http_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    )
    .await;
    assert_eq!(
        app.session_rows().await.len(),
        1,
        "the mutation did not run"
    );
}

#[tokio::test]
async fn graphiql_and_health_are_served() {
    let app = spawn_app().await;
    let page = app.client.get(&app.address).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("graphiql")
    );
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], json!("ok"));
}
