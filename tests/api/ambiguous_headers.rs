//! Headers that security rests on, sent twice: refused whichever value comes first, so that a
//! proxy reading one and authql reading the other can never disagree about who is signed in.

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{assert_unauthenticated, error_code, spawn_app};

#[tokio::test]
async fn two_authorization_headers_are_malformed_in_either_order() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let valid = format!("Bearer {}", account.access_token);
    for pair in [
        [valid.as_str(), "Bearer garbage"],
        ["Bearer garbage", valid.as_str()],
        [valid.as_str(), valid.as_str()],
    ] {
        let body: Value = app
            .client
            .post(format!("{}/graphql", app.address))
            .header(header::AUTHORIZATION, pair[0])
            .header(header::AUTHORIZATION, pair[1])
            .json(&json!({ "query": "{ me { id } }" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_unauthenticated(&body, "MALFORMED");
    }
    // One header still works.
    assert!(app.me(&account.access_token).await.get("errors").is_none());
}

#[tokio::test]
async fn two_content_types_are_refused() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(json!({ "query": "{ __typename }" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "UNSUPPORTED_MEDIA_TYPE");
}

#[tokio::test]
async fn two_host_headers_are_a_bad_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let body = json!({ "query": "{ __typename }" }).to_string();
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: {address}\r\nHost: evil.example\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("BAD_REQUEST"), "{answer}");
}
