//! The HTTP edge: routes, and everything checked before GraphQL runs. Every answer, errors
//! included, is JSON shaped like a GraphQL response so that clients read them one way.
//!
//! Order of checks for `POST /graphql`, cheapest first: the `Accept` header (406 when nothing
//! offered is acceptable), content type (CSRF: a form or `text/plain` post from another site is
//! refused), body size (enforced while streaming, before anything is buffered), JSON shape, the
//! persisted query, then the document's checks (`graphql::DocumentChecks`: size, bracket
//! nesting, parsing, fragment fan-out, directives, aliases), then GraphQL with its own depth,
//! complexity and validation. `GET /graphql` runs the same checks on its query string and
//! refuses mutations; the WebSocket runs the same document checks on every `subscribe`.
//!
//! Browsers: CORS (`CORS_ALLOWED_ORIGINS`, tower-http's `CorsLayer`) wraps every route, so that
//! error answers are readable by the page too; preflights are answered `204`. Every answer of
//! `/graphql` is `Cache-Control: no-store` and `Pragma: no-cache`: answers carry tokens and a
//! user's own data (RFC 6749 § 5.1 requires it of token responses).

mod account_pages;
mod client_address;
mod graphiql;
mod graphql_over_http;
mod oidc_callback;
mod persisted_queries;
mod resource_servers;
pub mod server;
pub mod websocket;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use async_graphql::parser::types::OperationType;
use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, FromRequestParts, Request, State, ws::WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use ipnet::IpNet;
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    trace::TraceLayer,
};

pub use client_address::client_ip;
pub use graphql_over_http::{GRAPHQL_RESPONSE_MEDIA_TYPE, HttpError, MediaType};
pub use resource_servers::IntrospectionClients;

use self::{
    graphql_over_http::{GraphQLParams, into_http_response},
    persisted_queries::{Lookup, PersistedQueries},
};
use crate::{
    auth::{BearerToken, RequestAuth},
    graphql::{CheckedRequest, DocumentChecks, Engine, RefreshCookie, Refusal},
    service::{AuthService, ClientInfo},
};

/// Longest User-Agent kept on a session.
const MAX_USER_AGENT_CHARS: usize = 512;
/// The request headers a browser may send cross-origin: what Apollo Client and GraphiQL send.
const CORS_ALLOWED_HEADERS: [&str; 4] = [
    "content-type",
    "authorization",
    "apollo-require-preflight",
    "x-apollo-operation-name",
];

/// What the edge accepts, from the configuration.
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    /// The WebSocket connections' limits (`websocket`).
    pub websocket: websocket::WebSocketSettings,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Who may call `/oauth/introspect` (`INTROSPECTION_CLIENTS`).
    pub introspection_clients: resource_servers::IntrospectionClients,
}

/// What the edge offers browsers, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct FrontendSettings {
    /// Origins allowed by CORS, each `scheme://host[:port]`, lower case; empty: no CORS.
    pub allowed_origins: Vec<HeaderValue>,
    /// How long a preflight answer may be reused.
    pub cors_max_age: Duration,
    /// Serve GraphiQL at `/`.
    pub graphiql: bool,
    /// The refresh-token cookie, when `REFRESH_TOKEN_COOKIE` is on.
    pub refresh_cookie: Option<RefreshCookie>,
    /// Most persisted queries kept; 0 switches them off.
    pub persisted_queries: usize,
}

/// What every route reads, behind one `Arc`: axum clones a route's state for every request, and
/// one reference count is cheaper than one per field (measured: the clone and drop of ten
/// `Arc`s were 7 % of the CPU of `/auth/verify`).
#[derive(Clone)]
struct EdgeState(Arc<Edge>);

impl std::ops::Deref for EdgeState {
    type Target = Edge;

    fn deref(&self) -> &Edge {
        &self.0
    }
}

struct Edge {
    engine: Engine,
    /// The one way to the engine: every transport's query text goes through these.
    documents: Arc<DocumentChecks>,
    /// For readiness: the same service the schema holds.
    service: AuthService,
    /// The public signing keys, when they are asymmetric; `None` with HS256.
    jwks: Option<Arc<JwkSet>>,
    limits: Arc<EdgeLimits>,
    frontend: Arc<FrontendSettings>,
    persisted_queries: Arc<PersistedQueries>,
    /// Open WebSocket connections per user.
    websocket_connections: Arc<websocket::Connections>,
    /// Connection slots and the shutdown signal, shared with the server (`server`).
    lifecycle: server::Lifecycle,
}

/// The whole public HTTP surface: `/` and `/graphiql/*` (when `GRAPHIQL`), `/graphql` (GET,
/// POST and the WebSocket upgrade), the account pages (`/reset-password`, `/verify-email`,
/// `/account/*`), `/healthz`, `/readyz`, `/.well-known/jwks.json`, with JSON
/// 404/405, the request time limit, panic catching, CORS (when origins are listed) and a span
/// per request. `/metrics` is never here: it is served on `METRICS_ADDR` only
/// ([`metrics_router`]), as operational data is not for the public.
pub fn router(
    engine: Engine,
    documents: DocumentChecks,
    service: AuthService,
    jwks: Option<Arc<JwkSet>>,
    limits: EdgeLimits,
    frontend: FrontendSettings,
    lifecycle: server::Lifecycle,
) -> Router {
    let timeout = limits.request_timeout;
    let cors = cors_layer(&frontend);
    let mut router = Router::new();
    if frontend.graphiql {
        router = router
            .route("/", get(graphiql::page))
            .route("/graphiql/{file}", get(graphiql::asset));
    }
    let router = router
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/reset-password", get(account_pages::reset_password))
        .route("/verify-email", get(account_pages::verify_email))
        .route("/account/{file}", get(account_pages::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks_document))
        .route("/auth/verify", any(resource_servers::verify))
        .route("/oauth/introspect", post(resource_servers::introspect))
        .route("/auth/oidc/callback", get(oidc_callback::callback))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(EdgeState(Arc::new(Edge {
            engine,
            documents: Arc::new(documents),
            service,
            jwks,
            limits: Arc::new(limits),
            persisted_queries: Arc::new(PersistedQueries::new(frontend.persisted_queries)),
            frontend: Arc::new(frontend),
            websocket_connections: Arc::default(),
            lifecycle,
        })))
        .layer(json_panic_layer())
        // One middleware for the rules of every request: each layer of its own would cost a
        // boxed future and a service clone per request.
        .layer(middleware::from_fn_with_state(timeout, edge_rules));
    let router = match cors {
        Some(cors) => router.layer(cors).layer(middleware::from_fn(tidy_cors)),
        None => router,
    };
    // One span per request with method and path only: a query string may hold variables.
    router.layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
    }))
}

/// CORS for the listed origins only (the Fetch standard's CORS protocol): credentials allowed,
/// the methods and headers Apollo Client and GraphiQL send, `Retry-After` readable by the page.
/// tower-http adds `Vary: Origin` and the request-method/-headers `Vary` entries.
fn cors_layer(frontend: &FrontendSettings) -> Option<CorsLayer> {
    if frontend.allowed_origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(frontend.allowed_origins.clone()))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(CORS_ALLOWED_HEADERS.map(header::HeaderName::from_static))
            .expose_headers([header::RETRY_AFTER])
            .allow_credentials(true)
            .max_age(frontend.cors_max_age),
    )
}

/// Two touches on tower-http's answers: a preflight is `204 No Content` (tower-http says `200`),
/// and an origin that is not allowed gets no `Access-Control-*` header at all (tower-http sends
/// `Access-Control-Allow-Credentials` and the allowed methods and headers to anyone).
async fn tidy_cors(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        let cors_headers: Vec<_> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in cors_headers {
            headers.remove(name);
        }
    }
    response
}

/// A request with more than one `Host` header is refused (RFC 9112 § 3.2: "a server MUST respond
/// with a 400 (Bad Request) status code to any HTTP/1.1 request message that ... contains more
/// than one Host header field"): a proxy and authql could each read a different one.
fn more_than_one_host(request: &Request) -> Option<Response> {
    single_header(request.headers(), header::HOST)
        .is_err()
        .then(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "a request has at most one Host header",
            )
            .into_response()
        })
}

/// The rules of every request, in one middleware: at most one `Host` ([`more_than_one_host`]),
/// at most `limit` to answer ([`time_limit`]), and `no-store` on `/graphql` ([`no_store`]).
async fn edge_rules(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let graphql = request.uri().path() == "/graphql";
    let mut response = match more_than_one_host(&request) {
        Some(refused) => refused,
        None => time_limit(limit, next.run(request)).await,
    };
    if graphql {
        no_store(&mut response);
    }
    response
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

/// A request that takes longer than `limit` is stopped: `503 REQUEST_TIMEOUT`.
async fn time_limit(limit: Duration, answer: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, answer).await {
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
    let result = async {
        let media = negotiate(&headers)?;
        let params = read_json_body(&headers, body, &state.limits, media).await?;
        run(&state, peer, &headers, params, media, Method::POST).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Every answer of `/graphql`, refusals and timeouts included, carries tokens or a user's own
/// data, or may: never stored by a cache (RFC 6749 § 5.1 requires `Cache-Control: no-store` of
/// token responses; `Pragma` for HTTP/1.0 caches).
fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// GET carries queries only (GraphQL over HTTP § GET): a mutation must not run from a link or
/// an `<img>` tag. A GET that asks to become a WebSocket gets `websocket` (subscriptions).
async fn graphql_get(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    if websocket::is_upgrade(&parts.headers) {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(upgrade) => websocket::upgrade(state, peer, &parts.headers, upgrade),
            // A malformed upgrade (no Sec-WebSocket-Key, a wrong version): in the JSON shape of
            // every other refusal.
            Err(rejection) => {
                let status = rejection.status();
                let code = match status {
                    StatusCode::UPGRADE_REQUIRED => "UPGRADE_REQUIRED",
                    StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
                    _ => "BAD_REQUEST",
                };
                HttpError::new(status, code, rejection.body_text()).into_response()
            }
        };
    }
    let (headers, uri) = (parts.headers, parts.uri);
    let result = async {
        let media = negotiate(&headers)?;
        let params = GraphQLParams::from_query_string(uri.query().unwrap_or_default(), media)?;
        run(&state, peer, &headers, params, media, Method::GET).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

fn negotiate(headers: &HeaderMap) -> Result<MediaType, HttpError> {
    MediaType::negotiate(headers).ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_ACCEPTABLE,
            "NOT_ACCEPTABLE",
            format!("accept {GRAPHQL_RESPONSE_MEDIA_TYPE} or application/json"),
        )
    })
}

async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limits: &EdgeLimits,
    media: MediaType,
) -> Result<GraphQLParams, HttpError> {
    if !is_json(headers) {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the request as Content-Type: application/json",
        )
        .in_media(media));
    }
    let bytes = axum::body::to_bytes(body, limits.max_body_bytes)
        .await
        .map_err(|error| {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            if !too_large {
                // Not a size: a malformed chunked encoding, a body cut short.
                return HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "the request body could not be read",
                )
                .in_media(media);
            }
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "the request body is larger than {} bytes",
                    limits.max_body_bytes
                ),
            )
            .in_media(media)
        })?;
    GraphQLParams::from_json_body(&bytes, media)
}

fn is_json(headers: &HeaderMap) -> bool {
    single_header(headers, header::CONTENT_TYPE)
        .ok()
        .flatten()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// From parameters to an answer: the persisted query, the document's checks, the
/// GET-is-for-queries rule, then the engine.
async fn run(
    state: &EdgeState,
    peer: SocketAddr,
    headers: &HeaderMap,
    params: GraphQLParams,
    media: MediaType,
    method: Method,
) -> Result<Response, HttpError> {
    let lookup = state.persisted_queries.lookup(
        params.extensions.as_ref(),
        params.query.as_deref(),
        media,
    )?;
    let query = match &lookup {
        Lookup::Stored(query) => query.clone(),
        Lookup::NotPersisted | Lookup::Register(_) => params
            .query
            .filter(|query| !query.is_empty())
            .ok_or_else(|| {
                HttpError::bad_parameters(media, "the request needs a `query` string")
            })?,
    };
    // Kept only to be stored, once it passed the checks.
    let to_persist = match lookup {
        Lookup::Register(hash) => Some((hash, query.clone())),
        _ => None,
    };
    let request = match state.documents.check(
        query,
        params.operation_name,
        params.variables.unwrap_or_default(),
    ) {
        Ok(request) => request,
        Err(refusal) => return refused(refusal, media),
    };
    if method == Method::GET && request.operation_type() == Some(OperationType::Mutation) {
        let mut refused = HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "mutations must be sent with POST",
        )
        .in_media(media)
        .into_response();
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(refused);
    }
    if let Some((hash, query)) = to_persist {
        state.persisted_queries.store(hash, &query);
    }
    Ok(execute(state, peer, headers, request, media).await)
}

/// A document the checks refused: size and nesting are a malformed request (`400` in both
/// media types, the document refused unread); the others are GraphQL request errors, counted
/// in the request metrics as operation `none`.
fn refused(refusal: Refusal, media: MediaType) -> Result<Response, HttpError> {
    if let Refusal::Unread { code, message } = refusal {
        return Err(HttpError::new(StatusCode::BAD_REQUEST, code, message).in_media(media));
    }
    crate::metrics::graphql_request("none", refusal.code(), 0.0);
    let response = async_graphql::Response::from_errors(vec![refusal.into_server_error()]);
    Ok(into_http_response(response, media))
}

async fn execute(
    state: &EdgeState,
    peer: SocketAddr,
    headers: &HeaderMap,
    request: CheckedRequest,
    media: MediaType,
) -> Response {
    // Two `Authorization` headers are ambiguous, whichever comes first: MALFORMED.
    let bearer = match single_header(headers, header::AUTHORIZATION) {
        Ok(value) => BearerToken::from_header(value.map(HeaderValue::as_bytes)),
        Err(Ambiguous) => BearerToken::Unreadable,
    };
    let client = client_info(peer, headers, &state.limits.trusted_proxies);
    let mut request = request.data(RequestAuth::new(bearer)).data(client);
    if let Some(cookie) = &state.frontend.refresh_cookie {
        let origin_allowed = origin_allowed(headers, &state.frontend.allowed_origins);
        request = request.data(cookie.read(headers, origin_allowed));
    }
    into_http_response(state.engine.execute(request).await, media)
}

/// Where a request comes from: its user agent (shortened) and its client address.
fn client_info(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> ClientInfo {
    ClientInfo {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(MAX_USER_AGENT_CHARS).collect()),
        ip: Some(client_ip(peer.ip(), headers, trusted_proxies)),
    }
}

/// A header sent more than once where authql needs exactly one.
struct Ambiguous;

/// The one value of a header that security decisions rest on (`Authorization`, `Origin`,
/// `Host`, `Content-Type`): several values are ambiguous (RFC 9110 § 5.3 allows repeating only
/// list-valued fields), and a proxy and authql could each read a different one.
fn single_header(
    headers: &HeaderMap,
    name: header::HeaderName,
) -> Result<Option<&HeaderValue>, Ambiguous> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    match values.next() {
        None => Ok(first),
        Some(_) => Err(Ambiguous),
    }
}

/// CSRF for the cookie-held refresh token (OWASP CSRF Prevention Cheat Sheet, "Verifying Origin
/// With Standard Headers"): exactly one `Origin` header, naming a listed origin or authql's own
/// (its host and port equal to the `Host` header's). No `Origin` at all is refused: browsers
/// send it with every POST, and other clients pass the token as an argument.
fn origin_allowed(headers: &HeaderMap, allowed: &[HeaderValue]) -> bool {
    let Ok(Some(origin)) = single_header(headers, header::ORIGIN) else {
        return false;
    };
    if allowed.iter().any(|allowed| allowed == origin) {
        return true;
    }
    let own_host = single_header(headers, header::HOST)
        .ok()
        .flatten()
        .and_then(|host| host.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host);
    matches!((own_host, origin_host), (Some(own), Some(origin)) if own.eq_ignore_ascii_case(origin))
}

/// `GET /metrics` alone: for `METRICS_ADDR`, or merged into the main router.
pub fn metrics_router<S>(service: AuthService) -> Router<S> {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(service)
}

/// The Prometheus text format (exposition format 0.0.4), every metric of `crate::metrics`.
/// `authql_live_sessions` and `authql_mail_outbox_depth` are counted here, once per scrape (a
/// count query each), and by one scrape at a time: a scrape that finds a count running reports the last one.
async fn metrics(State(service): State<AuthService>) -> Response {
    use std::sync::atomic::{AtomicBool, Ordering};
    static COUNTING: AtomicBool = AtomicBool::new(false);
    /// Lets the next scrape count, even when this one is dropped half-way.
    struct Counting;
    impl Drop for Counting {
        fn drop(&mut self) {
            COUNTING.store(false, Ordering::Release);
        }
    }
    if !COUNTING.swap(true, Ordering::AcqRel) {
        let _counting = Counting;
        if let Ok(count) = service.count_live_sessions().await {
            crate::metrics::live_sessions(count);
        }
        if let Ok(depth) = service.outbox_depth().await {
            crate::metrics::outbox_depth(depth);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(service.pool_status()),
    )
        .into_response()
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
    match &state.jwks {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

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
