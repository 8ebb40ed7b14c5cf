//! `GET /metrics` (issue 12): the Prometheus text format, parsed after a scripted run of
//! operations against the binary (a process of its own, so that the counts are this run's
//! alone); every count must match what was done.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::*;

/// One sample of the text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a Prometheus text-format page (exposition format 0.0.4).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// The value of the sample `name` with exactly `labels`; 0 when there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map_or(0.0, |(_, _, value)| *value)
}

#[tokio::test]
async fn metrics_count_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let binary = start_binary(
        dir.path(),
        &[
            ("BCRYPT_COST", "4"),
            ("RATE_LIMIT_IP_PER_MINUTE", "0"),
            ("RATE_LIMIT_ACCOUNT_PER_MINUTE", "5"),
            ("METRICS_ADDR", &metrics_addr),
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
    let register =
        "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken } }";
    let login = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }";
    let refresh = "mutation($t: String!) { refresh(refreshToken: $t) { refreshToken } }";

    // Two registrations (two hashes).
    let a = gql(
        register,
        json!({ "i": { "email": "a@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    gql(
        register,
        json!({ "i": { "email": "b@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    let access = string_at(&a, "/data/register/accessToken");
    let t0 = string_at(&a, "/data/register/refreshToken");
    // Logins: 2 right (a), 5 wrong (b), then b's bucket is empty.
    for _ in 0..2 {
        assert_no_errors(
            &gql(
                login,
                json!({ "i": { "emailOrUsername": "a@x.com", "password": PASSWORD } }),
                None,
            )
            .await,
        );
    }
    for _ in 0..5 {
        let body = gql(
            login,
            json!({ "i": { "emailOrUsername": "b@x.com", "password": "wrong password" } }),
            None,
        )
        .await;
        assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    }
    let limited = gql(
        login,
        json!({ "i": { "emailOrUsername": "b@x.com", "password": "wrong password" } }),
        None,
    )
    .await;
    assert_eq!(error_code(&limited), "RATE_LIMITED");
    // me: 3 answered, 1 refused, 1 invalid document.
    for _ in 0..3 {
        assert_no_errors(&gql("{ me { id } }", json!({}), Some(&access)).await);
    }
    gql("{ me { id } }", json!({}), None).await;
    gql("{ noSuchField }", json!({}), None).await;
    // Refreshes: rotated, replayed within the grace window, rotated, reuse of a token two
    // rotations old (the session is revoked), then its newest token is refused.
    let t1 = string_at(
        &gql(refresh, json!({ "t": t0 }), None).await,
        "/data/refresh/refreshToken",
    );
    assert_no_errors(&gql(refresh, json!({ "t": t0 }), None).await);
    let t2 = string_at(
        &gql(refresh, json!({ "t": t1 }), None).await,
        "/data/refresh/refreshToken",
    );
    assert_unauthenticated(
        &gql(refresh, json!({ "t": t0 }), None).await,
        "REFRESH_TOKEN_REUSED",
    );
    assert_unauthenticated(&gql(refresh, json!({ "t": t2 }), None).await, "REVOKED");

    // Not on the public port.
    assert_eq!(
        client
            .get(binary.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        reqwest::StatusCode::NOT_FOUND
    );
    let response = client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    let samples = samples(&text);
    let requests = |operation: &str, outcome: &str| {
        value(
            &samples,
            "authql_graphql_requests_total",
            &[("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("register", "OK"), 2.0, "{text}");
    assert_eq!(requests("login", "OK"), 2.0);
    assert_eq!(requests("login", "INVALID_CREDENTIALS"), 5.0);
    assert_eq!(requests("login", "RATE_LIMITED"), 1.0);
    assert_eq!(requests("me", "OK"), 3.0);
    assert_eq!(requests("me", "UNAUTHENTICATED"), 1.0);
    assert_eq!(requests("none", "GRAPHQL_VALIDATION_FAILED"), 1.0);
    assert_eq!(requests("refresh", "OK"), 3.0);
    assert_eq!(requests("refresh", "UNAUTHENTICATED"), 2.0);
    assert_eq!(
        value(
            &samples,
            "authql_graphql_request_duration_seconds_count",
            &[("operation", "me"), ("outcome", "OK")]
        ),
        3.0
    );
    let logins = |outcome| value(&samples, "authql_logins_total", &[("outcome", outcome)]);
    assert_eq!(logins("success"), 2.0);
    assert_eq!(logins("invalid_credentials"), 5.0);
    assert_eq!(logins("rate_limited"), 1.0);
    let refreshes = |outcome| value(&samples, "authql_refreshes_total", &[("outcome", outcome)]);
    assert_eq!(refreshes("rotated"), 2.0);
    assert_eq!(refreshes("grace_replay"), 1.0);
    assert_eq!(refreshes("reuse_detected"), 1.0);
    assert_eq!(refreshes("revoked"), 1.0);
    assert_eq!(
        value(
            &samples,
            "authql_rate_limited_total",
            &[("operation", "login"), ("scope", "account")]
        ),
        1.0
    );
    // b's registration and a's two logins are live; a's first session was revoked by the
    // reuse.
    assert_eq!(value(&samples, "authql_live_sessions", &[]), 3.0);
    let hashes = |operation| {
        value(
            &samples,
            "authql_password_hash_duration_seconds_count",
            &[("operation", operation)],
        )
    };
    assert_eq!(hashes("hash"), 2.0);
    assert_eq!(
        hashes("verify"),
        7.0,
        "the rate-limited login verifies nothing"
    );
    assert_eq!(
        value(&samples, "authql_password_hash_queue_depth", &[]),
        0.0
    );
    let idle = value(
        &samples,
        "authql_database_connections",
        &[("state", "idle")],
    );
    let in_use = value(
        &samples,
        "authql_database_connections",
        &[("state", "in_use")],
    );
    assert!(idle + in_use >= 1.0, "{text}");
    // Every label value is one of authql's own: nothing the client sent.
    for (name, labels, _) in &samples {
        for value in labels.values() {
            assert!(
                !value.contains("noSuchField") && !value.contains("x.com"),
                "{name} {labels:?}"
            );
        }
    }
}

#[tokio::test]
async fn metrics_are_never_on_the_public_port_only_on_metrics_addr() {
    let app = spawn_app().await;
    app.register("scraped@x.com").await;
    let public = app.get("/metrics").await;
    assert_eq!(public.status(), reqwest::StatusCode::NOT_FOUND);

    let private = spawn_app_with(|config| {
        config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    private.register("scraped@x.com").await;
    assert_eq!(
        private.get("/metrics").await.status(),
        reqwest::StatusCode::NOT_FOUND
    );
    let metrics_addr = private.metrics_addr.expect("a metrics listener");
    let response = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let samples = samples(&response.text().await.unwrap());
    // This process runs many servers: only that the series are there is this run's to check.
    assert!(
        samples
            .iter()
            .any(|(name, labels, _)| name == "authql_graphql_requests_total"
                && labels.get("operation").map(String::as_str) == Some("register")),
        "{samples:?}"
    );
}
