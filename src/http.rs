//! The HTTP edge: routes, and everything checked before GraphQL runs. Every answer, errors
//! included, is JSON shaped like a GraphQL response so that clients read them one way.
//!
//! Order of checks for `POST /graphql`, cheapest first: content type (CSRF: a form or
//! `text/plain` post from another site is refused), body size (enforced while streaming, before
//! anything is buffered), JSON shape, query size, bracket nesting (the GraphQL parser recurses
//! and would overflow its stack on a few thousand levels), then GraphQL with its own depth,
//! complexity, alias and directive limits.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use async_graphql::{http::GraphiQLSource, http::parse_query_string, parser::types::OperationType};
use async_graphql_axum::GraphQLResponse;
use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use ipnet::IpNet;
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use crate::{
    auth::{BearerToken, RequestAuth},
    graphql::AuthSchema,
    service::{AuthService, ClientInfo},
};

/// Longest User-Agent kept on a session.
const MAX_USER_AGENT_CHARS: usize = 512;
const GRAPHQL_RESPONSE_MEDIA_TYPE: &str = "application/graphql-response+json";

/// What the edge accepts, from the configuration.
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    pub max_body_bytes: usize,
    pub max_query_bytes: usize,
    /// Deepest nesting of `()`, `[]` and `{}` in a query's text.
    pub max_query_nesting: usize,
    pub request_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Clone)]
struct EdgeState {
    schema: AuthSchema,
    /// For readiness: the same service the schema holds.
    service: AuthService,
    /// The public signing keys, when they are asymmetric; `None` with HS256.
    jwks: Option<Arc<JwkSet>>,
    limits: EdgeLimits,
}

pub fn router(
    schema: AuthSchema,
    service: AuthService,
    jwks: Option<Arc<JwkSet>>,
    limits: EdgeLimits,
) -> Router {
    let timeout = limits.request_timeout;
    Router::new()
        .route("/", get(graphiql))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks_document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(EdgeState {
            schema,
            service,
            jwks,
            limits,
        })
        .layer(middleware::from_fn_with_state(timeout, time_limit))
        .layer(json_panic_layer())
        // One span per request with method and path only: a query string may hold variables.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        }))
}

/// A panic anywhere below becomes a JSON 500; the server keeps serving.
fn json_panic_layer() -> CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    CatchPanicLayer::custom(|_| {
        tracing::error!(event = "panic", "a request handler panicked");
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            "internal server error",
        )
        .into_response()
    })
}

async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(event = "request_timeout", "a request ran out of time");
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "REQUEST_TIMEOUT",
                "the request took too long and was stopped",
            )
            .into_response()
        }
    }
}

async fn graphql_post(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match read_json_request(&headers, body, &state.limits).await {
        Ok(request) => execute(&state, peer, &headers, request).await,
        Err(error) => error.into_response(),
    }
}

async fn read_json_request(
    headers: &HeaderMap,
    body: Body,
    limits: &EdgeLimits,
) -> Result<async_graphql::Request, HttpError> {
    if !is_json(headers) {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the request as Content-Type: application/json",
        ));
    }
    let bytes = axum::body::to_bytes(body, limits.max_body_bytes)
        .await
        .map_err(|_| {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "the request body is larger than {} bytes",
                    limits.max_body_bytes
                ),
            )
        })?;
    // An array (a batch) does not parse as one request: one operation per request, so that no
    // limit can be multiplied by batching. serde_json refuses nesting beyond 128 levels.
    let request: async_graphql::Request = serde_json::from_slice(&bytes).map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the body must be one JSON object like {\"query\": \"...\", \"variables\": {...}}",
        )
    })?;
    check_query_text(&request.query, limits)?;
    Ok(request)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// GET carries queries only: a mutation must not run from a link or an `<img>` tag.
async fn graphql_get(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let Ok(request) = parse_query_string(uri.query().unwrap_or_default()) else {
        return HttpError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "a GET request needs a `query` parameter (and optionally `variables` as JSON)",
        )
        .into_response();
    };
    if let Err(error) = check_query_text(&request.query, &state.limits) {
        return error.into_response();
    }
    if is_mutation(&request.query, request.operation_name.as_deref()) {
        return HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "mutations must be sent with POST",
        )
        .into_response();
    }
    execute(&state, peer, &headers, request).await
}

/// Size and nesting of the query text, checked before the parser sees it.
fn check_query_text(query: &str, limits: &EdgeLimits) -> Result<(), HttpError> {
    if query.len() > limits.max_query_bytes {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "QUERY_TOO_LARGE",
            format!("the query is longer than {} bytes", limits.max_query_bytes),
        ));
    }
    if nesting_exceeds(query, limits.max_query_nesting) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "QUERY_TOO_DEEP",
            format!(
                "the query nests more than {} levels",
                limits.max_query_nesting
            ),
        ));
    }
    Ok(())
}

/// Whether `()`, `[]` or `{}` nest deeper than `limit` outside strings and comments. Unbalanced
/// text is left to the parser, which reports it.
fn nesting_exceeds(query: &str, limit: usize) -> bool {
    let bytes = query.as_bytes();
    let (mut depth, mut at) = (0usize, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            b'"' if bytes[at..].starts_with(b"\"\"\"") => {
                at += 3;
                while at < bytes.len() && !bytes[at..].starts_with(b"\"\"\"") {
                    at += if bytes[at..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                at += 2;
            }
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' && bytes[at] != b'\n' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    false
}

/// Whether the operation that would run is a mutation. A query that does not parse is left to
/// the executor, which reports the parse error.
fn is_mutation(query: &str, operation_name: Option<&str>) -> bool {
    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    document.operations.iter().any(|(name, operation)| {
        let selected = match (operation_name, name) {
            (Some(wanted), Some(name)) => wanted == name.as_str(),
            (Some(_), None) => false,
            (None, _) => true,
        };
        selected && operation.node.ty == OperationType::Mutation
    })
}

async fn execute(
    state: &EdgeState,
    peer: SocketAddr,
    headers: &HeaderMap,
    request: async_graphql::Request,
) -> Response {
    let bearer = BearerToken::from_header(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()));
    let client = ClientInfo {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(MAX_USER_AGENT_CHARS).collect()),
        ip: Some(client_ip(peer.ip(), headers, &state.limits.trusted_proxies)),
    };
    let request = request.data(RequestAuth::new(bearer)).data(client);
    let mut response = GraphQLResponse::from(state.schema.execute(request).await).into_response();
    // GraphQL over HTTP: clients that do not ask for the new media type get plain JSON.
    if !accepts_graphql_response(headers) {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

fn accepts_graphql_response(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains(GRAPHQL_RESPONSE_MEDIA_TYPE))
}

/// The client's address. `X-Forwarded-For` is believed only when the connection comes from a
/// trusted proxy, and then read from the right, skipping further trusted proxies: everything
/// left of the first untrusted hop could have been written by the client.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map_while(|hop| hop.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|hop| !trusted(hop))
        .or(forwarded.first())
        .copied()
        .unwrap_or(peer)
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

/// Liveness: the process serves. It stays 200 while the database is away, so that an
/// orchestrator does not restart an instance that would recover by itself.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers, so requests can be served. A load balancer should send
/// traffic only to ready instances.
async fn readyz(State(state): State<EdgeState>) -> Response {
    match state.service.check_ready().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": "the database does not answer" })),
        )
            .into_response(),
    }
}

/// The public keys that verify authql's tokens. A symmetric key is never published.
async fn jwks_document(State(state): State<EdgeState>) -> Response {
    match state.jwks {
        Some(jwks) => Json(jwks.as_ref()).into_response(),
        None => HttpError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no public keys: tokens are signed with HS256 (set JWT_ALGORITHM=EdDSA or ES256)",
        )
        .into_response(),
    }
}

async fn not_found() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such route; the API is at /graphql",
    )
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not accept that method",
    )
}

/// An error answered before GraphQL runs.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{ "message": self.message, "extensions": { "code": self.code } }]
        });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert!(!nesting_exceeds("{ me { id } }", 2));
        assert!(nesting_exceeds("{ me { id } }", 1));
        let deep = format!("{{me(x:{}{})}}", "[".repeat(5000), "]".repeat(5000));
        assert!(nesting_exceeds(&deep, 64));
        assert!(!nesting_exceeds("{ a(s: \"[[[[[[\") # {{{{{{\n }", 3));
        assert!(!nesting_exceeds(
            "{ a(s: \"\"\"[[[[ \\\"\"\" ((((\"\"\") }",
            3
        ));
        assert!(!nesting_exceeds("\"unterminated [[[[", 1));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpNet = "10.0.0.0/8".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.7"),
        );
        let from_proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(
            client_ip(from_proxy, &headers, &[proxy]),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(direct, &headers, &[proxy]), direct);
        assert_eq!(client_ip(from_proxy, &headers, &[]), from_proxy);
    }

    async fn explode() -> &'static str {
        panic!("a bug in a handler")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_json_500() {
        let router: Router = Router::new()
            .route("/boom", get(explode))
            .layer(json_panic_layer());
        let response = router
            .oneshot(Request::builder().uri("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"],
            "INTERNAL_SERVER_ERROR"
        );
    }
}
