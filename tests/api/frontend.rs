//! What browsers and frontend tooling need: CORS, GraphiQL served offline, automatic persisted
//! queries, and the refresh token in an HttpOnly cookie.

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{
    AUTH_FIELDS, PASSWORD, TestApp, assert_no_errors, assert_unauthenticated, error_code, jti_of,
    spawn_app, spawn_app_with, start_binary, string_at,
};

const APP_ORIGIN: &str = "http://localhost:5173";

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, format!("{}/graphql", app.address))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type,authorization,apollo-require-preflight,x-apollo-operation-name",
        )
        .send()
        .await
        .unwrap()
}

fn header_text(response: &reqwest::Response, name: header::HeaderName) -> String {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn cors_preflight_lets_listed_origins_in_with_credentials() {
    let app = spawn_app_with(|config| {
        config.cors_allowed_origins = vec![APP_ORIGIN.into(), "https://app.example.com".into()];
    })
    .await;
    let response = preflight(&app, APP_ORIGIN).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header_text(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        APP_ORIGIN
    );
    assert_eq!(
        header_text(&response, header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
        "true"
    );
    let allowed_headers = header_text(&response, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for needed in [
        "content-type",
        "authorization",
        "apollo-require-preflight",
        "x-apollo-operation-name",
    ] {
        assert!(allowed_headers.contains(needed), "{allowed_headers}");
    }
    assert!(header_text(&response, header::ACCESS_CONTROL_ALLOW_METHODS).contains("post"));
    assert!(!header_text(&response, header::ACCESS_CONTROL_MAX_AGE).is_empty());
    assert!(header_text(&response, header::VARY).contains("origin"));

    // The real request carries the CORS headers too, error answers included.
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header(header::ORIGIN, APP_ORIGIN)
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_text(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        APP_ORIGIN
    );
    assert!(header_text(&response, header::ACCESS_CONTROL_EXPOSE_HEADERS).contains("retry-after"));
}

#[tokio::test]
async fn cors_gives_nothing_to_origins_not_listed() {
    let app = spawn_app_with(|config| config.cors_allowed_origins = vec![APP_ORIGIN.into()]).await;
    for origin in ["http://evil.example", "http://localhost:5174", "null"] {
        let response = preflight(&app, origin).await;
        assert!(
            response
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{origin}"
        );
        assert!(
            response
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
                .is_none()
        );
    }

    // Without the setting no CORS header is ever sent, and OPTIONS is just another method.
    let app = spawn_app().await;
    let response = preflight(&app, APP_ORIGIN).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[tokio::test]
async fn a_wildcard_or_malformed_origin_stops_the_start() {
    for bad in [
        "*",
        "localhost:5173",
        "http://app.example.com/path",
        "ftp://x",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            crate::helpers::test_config(&crate::helpers::sqlite_url(&dir.path().join("authql.db")));
        config.cors_allowed_origins = vec![bad.into()];
        let started = authql::app::Application::build(config).await;
        let error = format!("{:#}", started.err().expect("the start is refused"));
        assert!(error.contains("CORS_ALLOWED_ORIGINS"), "{bad}: {error}");
    }
}

/// Every `src="..."` and `href="..."` of an HTML page.
fn linked_urls(html: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            if let Some(end) = rest.find('"') {
                urls.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    urls
}

#[tokio::test]
async fn graphiql_is_served_whole_from_authql_itself() {
    let app = spawn_app().await;
    let page = app.get("/").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(header_text(&page, header::CONTENT_TYPE).starts_with("text/html"));
    let policy = header_text(&page, header::CONTENT_SECURITY_POLICY);
    assert!(policy.contains("default-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    let urls = linked_urls(&html);
    assert!(!urls.is_empty(), "the page links its scripts and styles");
    // `data:` URLs (an empty favicon) load nothing from anywhere.
    for url in urls.into_iter().filter(|url| !url.starts_with("data:")) {
        assert!(!url.contains("//"), "{url} would leave authql");
        let path = if url.starts_with('/') {
            url.clone()
        } else {
            format!("/{url}")
        };
        let asset = app.get(&path).await;
        assert_eq!(asset.status(), StatusCode::OK, "{path}");
        assert!(!asset.bytes().await.unwrap().is_empty(), "{path}");
    }
    assert_eq!(
        app.get("/graphiql/no-such-file.js").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn graphiql_can_be_switched_off() {
    let app = spawn_app_with(|config| config.graphiql = false).await;
    assert_eq!(app.get("/").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/graphiql/index.html").await.status(),
        StatusCode::NOT_FOUND
    );
    // The API itself is unaffected.
    let account = app.register("ada@example.com").await;
    assert_no_errors(&app.me(&account.access_token).await);
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn persisted(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

async fn post(app: &TestApp, body: Value, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(format!("{}/graphql", app.address))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn persisted_queries_follow_apollos_protocol() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let query = "query Me { me { email } }";
    let hash = sha256_hex(query);

    // 1. The hash alone is unknown.
    let (status, body) = post(&app, json!({ "extensions": persisted(&hash) }), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(error_code(&body), "PERSISTED_QUERY_NOT_FOUND");
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
    assert!(body.get("data").is_none());

    // 2. Hash and query: runs and is kept.
    let (_, body) = post(
        &app,
        json!({ "query": query, "extensions": persisted(&hash) }),
        Some(&account.access_token),
    )
    .await;
    assert_eq!(body["data"]["me"]["email"], "ada@example.com", "{body}");

    // 3. The hash alone now runs it, by POST and by GET.
    let (_, body) = post(
        &app,
        json!({ "extensions": persisted(&hash) }),
        Some(&account.access_token),
    )
    .await;
    assert_eq!(body["data"]["me"]["email"], "ada@example.com", "{body}");
    let extensions = persisted(&hash).to_string();
    let response = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("extensions", extensions.as_str()), ("operationName", "Me")])
        .bearer_auth(&account.access_token)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["me"]["email"], "ada@example.com", "{body}");

    // A hash that is not the query's is refused, and nothing is kept under it.
    let other = "{ mySessions { id } }";
    let (status, body) = post(
        &app,
        json!({ "query": other, "extensions": persisted(&sha256_hex("{ x }")) }),
        Some(&account.access_token),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "PERSISTED_QUERY_HASH_MISMATCH");
    let (_, body) = post(
        &app,
        json!({ "extensions": persisted(&sha256_hex("{ x }")) }),
        None,
    )
    .await;
    assert_eq!(error_code(&body), "PERSISTED_QUERY_NOT_FOUND");
}

#[tokio::test]
async fn a_persisted_mutation_never_runs_over_get() {
    let app = spawn_app().await;
    let mutation = format!(
        "mutation {{ register(input: {{email: \"eve@example.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}"
    );
    let hash = sha256_hex(&mutation);
    // Registering the text runs it once, by POST (that is the client's first send).
    let (_, body) = post(
        &app,
        json!({ "query": mutation, "extensions": persisted(&hash) }),
        None,
    )
    .await;
    assert_no_errors(&body);
    assert_eq!(app.user_rows().await.len(), 1);
    let extensions = persisted(&hash).to_string();
    let response = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("extensions", extensions.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header_text(&response, header::ALLOW), "post");
    assert_eq!(app.user_rows().await.len(), 1, "the GET ran nothing");
    assert_eq!(app.session_rows().await.len(), 1);
}

#[tokio::test]
async fn the_persisted_query_store_is_bounded() {
    let app = spawn_app_with(|config| config.persisted_queries_cache_size = 2).await;
    let queries = [
        "{ a: __typename }",
        "{ b: __typename }",
        "{ c: __typename }",
    ];
    for query in queries {
        let (_, body) = post(
            &app,
            json!({ "query": query, "extensions": persisted(&sha256_hex(query)) }),
            None,
        )
        .await;
        assert_no_errors(&body);
    }
    let (_, oldest) = post(
        &app,
        json!({ "extensions": persisted(&sha256_hex(queries[0])) }),
        None,
    )
    .await;
    assert_eq!(error_code(&oldest), "PERSISTED_QUERY_NOT_FOUND");
    let (_, newest) = post(
        &app,
        json!({ "extensions": persisted(&sha256_hex(queries[2])) }),
        None,
    )
    .await;
    assert_eq!(newest["data"]["c"], "Query", "{newest}");

    let off = spawn_app_with(|config| config.persisted_queries_cache_size = 0).await;
    let (_, body) = post(
        &off,
        json!({ "extensions": persisted(&sha256_hex(queries[0])) }),
        None,
    )
    .await;
    assert_eq!(error_code(&body), "PERSISTED_QUERY_NOT_SUPPORTED");
}

/// A server in cookie mode, with the app's origin allowed.
async fn spawn_cookie_app() -> TestApp {
    spawn_app_with(|config| {
        config.refresh_token_cookie = true;
        config.cors_allowed_origins = vec![APP_ORIGIN.into()];
    })
    .await
}

const COOKIE: &str = "__Secure-authql_refresh";

/// The `Set-Cookie` values of a response for the refresh cookie.
fn refresh_cookies(headers: &header::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .filter(|value| value.starts_with(&format!("{COOKIE}=")))
        .collect()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_owned())
        .unwrap()
}

async fn cookie_request(
    app: &TestApp,
    query: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    token: Option<&str>,
) -> (header::HeaderMap, Value) {
    let mut request = app
        .client
        .post(format!("{}/graphql", app.address))
        .json(&json!({ "query": query }));
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    (headers, response.json().await.unwrap())
}

const REFRESH_FROM_COOKIE: &str =
    "mutation { refresh { accessToken refreshToken session { id } } }";

/// `refresh` with no argument, sending `cookie` from `origin`.
async fn refresh_with_cookie(
    app: &TestApp,
    cookie: &str,
    origin: Option<&str>,
) -> (header::HeaderMap, Value) {
    cookie_request(app, REFRESH_FROM_COOKIE, Some(cookie), origin, None).await
}

#[tokio::test]
async fn in_cookie_mode_the_refresh_token_lives_in_an_http_only_cookie() {
    let app = spawn_cookie_app().await;
    let register = format!(
        "mutation {{ register(input: {{email: \"ada@example.com\", password: \"{PASSWORD}\"}}) {{ {AUTH_FIELDS} }} }}"
    );
    let (headers, body) = cookie_request(&app, &register, None, Some(APP_ORIGIN), None).await;
    assert_no_errors(&body);
    assert!(body["data"]["register"]["refreshToken"].is_null(), "{body}");
    let set = refresh_cookies(&headers);
    assert_eq!(set.len(), 1, "{set:?}");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/graphql",
        "Max-Age=",
    ] {
        assert!(set[0].contains(attribute), "{} lacks {attribute}", set[0]);
    }
    let refresh_token = cookie_value(&set[0]);
    let session = app.session_rows().await.remove(0);
    assert_eq!(jti_of(&refresh_token), session.refresh_jti.to_string());

    // refresh with no argument reads the cookie and sets the next one.
    let cookie = format!("{COOKIE}={refresh_token}");
    let (headers, body) = refresh_with_cookie(&app, &cookie, Some(APP_ORIGIN)).await;
    assert_no_errors(&body);
    assert!(body["data"]["refresh"]["refreshToken"].is_null());
    let next = cookie_value(&refresh_cookies(&headers)[0]);
    assert_ne!(next, refresh_token);
    let session = app.session_rows().await.remove(0);
    assert_eq!(jti_of(&next), session.refresh_jti.to_string());
    let access_token = string_at(&body, "/data/refresh/accessToken");
    assert_no_errors(&app.me(&access_token).await);

    // logout deletes the cookie and the session.
    let (headers, body) = cookie_request(
        &app,
        "mutation { logout }",
        None,
        Some(APP_ORIGIN),
        Some(&access_token),
    )
    .await;
    assert_no_errors(&body);
    let cleared = refresh_cookies(&headers);
    assert!(cleared[0].contains("Max-Age=0"), "{cleared:?}");
    assert!(app.session_rows().await.is_empty());
}

#[tokio::test]
async fn a_cookie_refresh_is_refused_from_an_origin_not_allowed() {
    let app = spawn_cookie_app().await;
    let (_, cookie) = register_with_cookie(&app).await;
    let stored = app.session_rows().await.remove(0).refresh_jti;

    for origin in [
        None,
        Some("http://evil.example"),
        Some("http://localhost:5174"),
    ] {
        let (_, body) = refresh_with_cookie(&app, &cookie, origin).await;
        assert_eq!(error_code(&body), "FORBIDDEN", "{origin:?}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["reason"],
            "ORIGIN_NOT_ALLOWED"
        );
        assert_eq!(
            app.session_rows().await[0].refresh_jti,
            stored,
            "nothing rotated"
        );
    }

    // Two Origin headers, one of them allowed: ambiguous, refused.
    let (_, body) = {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .header(header::COOKIE, &cookie)
            .header(header::ORIGIN, APP_ORIGIN)
            .header(header::ORIGIN, "http://evil.example")
            .json(&json!({ "query": REFRESH_FROM_COOKIE }))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");

    // The cookie sent twice (cookie tossing from a sibling domain) is used by no one.
    let twice = format!("{cookie}; {COOKIE}=other");
    let (_, body) = refresh_with_cookie(&app, &twice, Some(APP_ORIGIN)).await;
    assert_unauthenticated(&body, "MALFORMED");

    // authql's own origin (GraphiQL on the same host) may use it.
    let own_origin = app.address.clone();
    let (_, body) = refresh_with_cookie(&app, &cookie, Some(&own_origin)).await;
    assert_no_errors(&body);
}

/// Registers ada in cookie mode; returns the access token and the `Cookie` header value.
async fn register_with_cookie(app: &TestApp) -> (String, String) {
    let register = format!(
        "mutation {{ register(input: {{email: \"ada@example.com\", password: \"{PASSWORD}\"}}) {{ accessToken session {{ id }} }} }}"
    );
    let (headers, body) = cookie_request(app, &register, None, Some(APP_ORIGIN), None).await;
    assert_no_errors(&body);
    let cookie = format!("{COOKIE}={}", cookie_value(&refresh_cookies(&headers)[0]));
    (string_at(&body, "/data/register/accessToken"), cookie)
}

#[tokio::test]
async fn revoking_the_current_session_clears_the_cookie_and_a_dead_cookie_is_deleted() {
    let app = spawn_cookie_app().await;
    let (access_token, cookie) = register_with_cookie(&app).await;
    let session_id = app.session_rows().await[0].id;
    let (headers, body) = cookie_request(
        &app,
        &format!("mutation {{ revokeTokens(input: {{sessionIds: [\"{session_id}\"]}}) {{ revokedCount }} }}"),
        None,
        Some(APP_ORIGIN),
        Some(&access_token),
    )
    .await;
    assert_eq!(body["data"]["revokeTokens"]["revokedCount"], 1, "{body}");
    assert!(refresh_cookies(&headers)[0].contains("Max-Age=0"));

    // The revoked session's token, still in some browser's cookie: refused, and deleted.
    let (headers, body) = refresh_with_cookie(&app, &cookie, Some(APP_ORIGIN)).await;
    assert_unauthenticated(&body, "REVOKED");
    assert!(refresh_cookies(&headers)[0].contains("Max-Age=0"));
}

#[tokio::test]
async fn without_cookie_mode_refresh_needs_its_argument() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let cookie = format!("{COOKIE}={}", account.refresh_token);
    let (headers, body) = refresh_with_cookie(&app, &cookie, Some(APP_ORIGIN)).await;
    assert_unauthenticated(&body, "MISSING");
    assert!(headers.get(header::SET_COOKIE).is_none());
    // And the body still carries the refresh token.
    let body = app.refresh_raw(&account.refresh_token).await;
    assert!(body["data"]["refresh"]["refreshToken"].is_string());
}

/// The `fields` of the `refresh_cookie_cross_site` warnings that the binary, started with `env`
/// and JSON logs, writes before it serves.
async fn cross_site_warnings(env: &[(&str, &str)]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut env = env.to_vec();
    env.push(("LOG_FORMAT", "json"));
    let binary = start_binary(dir.path(), &env).await;
    let log = binary.log();
    let objects: Vec<Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(!objects.is_empty(), "the binary logs its start");
    objects
        .into_iter()
        .filter(|object| object["fields"]["event"] == "refresh_cookie_cross_site")
        .map(|object| {
            assert_eq!(object["level"], "WARN", "{object}");
            object["fields"].clone()
        })
        .collect()
}

/// The setup a user hit: the app's dev server on `localhost`, authql on `127.0.0.1`.
const CROSS_SITE_SETUP: [(&str, &str); 3] = [
    ("REFRESH_TOKEN_COOKIE", "true"),
    (
        "CORS_ALLOWED_ORIGINS",
        "http://localhost:5173,http://127.0.0.1:5173",
    ),
    ("PUBLIC_URL", "http://127.0.0.1:8000"),
];

#[tokio::test]
async fn cookie_mode_logs_refresh_cookie_cross_site_for_each_origin_on_another_site() {
    let warnings = cross_site_warnings(&CROSS_SITE_SETUP).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert_eq!(warning["origin"], "http://localhost:5173");
    assert_eq!(warning["origin_site"], "http://localhost");
    assert_eq!(warning["authql_site"], "http://127.0.0.1");
    assert_eq!(warning["same_site"], "Strict");

    // Without PUBLIC_URL, authql's site is that of the default public URL (HOST 127.0.0.1).
    let default_public_url: Vec<_> = CROSS_SITE_SETUP
        .into_iter()
        .filter(|(name, _)| *name != "PUBLIC_URL")
        .chain([("REFRESH_TOKEN_COOKIE_SAME_SITE", "Lax")])
        .collect();
    let warnings = cross_site_warnings(&default_public_url).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["origin"], "http://localhost:5173");
    assert_eq!(warnings[0]["authql_site"], "http://127.0.0.1");
    assert_eq!(warnings[0]["same_site"], "Lax");
}

#[tokio::test]
async fn cookie_mode_logs_no_refresh_cookie_cross_site_with_same_site_none_or_without_cookies() {
    let mut same_site_none = CROSS_SITE_SETUP.to_vec();
    // Secure stays at its default, true: None needs it.
    same_site_none.push(("REFRESH_TOKEN_COOKIE_SAME_SITE", "None"));
    let warnings = cross_site_warnings(&same_site_none).await;
    assert_eq!(warnings, Vec::<Value>::new());

    let mut no_cookie = CROSS_SITE_SETUP.to_vec();
    no_cookie[0] = ("REFRESH_TOKEN_COOKIE", "false");
    let warnings = cross_site_warnings(&no_cookie).await;
    assert_eq!(warnings, Vec::<Value>::new());
}
