//! The HTTP edge: builds state and router, binds (port 0 allowed), serves until a shutdown signal.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::{Context, bail};
use async_graphql::{http::GraphiQLSource, http::parse_query_string, parser::types::OperationType};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    Json, Router,
    extract::{ConnectInfo, State},
    http::{HeaderMap, Request, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use crate::{
    auth::{BearerToken, KeySet, PasswordHasher, RequestAuth, TokenKeys},
    config::Config,
    graphql::{AuthSchema, build_schema},
    service::{AuthService, ClientInfo},
    store::{SeaStore, Store},
};

/// Shortest JWT secret accepted: 256 bits, the size of an HS256 key (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;
/// The setting under which a generated secret is kept, shared by every instance.
const GENERATED_SECRET_SETTING: &str = "jwt_secret_key";
/// Longest User-Agent kept on a session.
const MAX_USER_AGENT_CHARS: usize = 512;

#[derive(Clone)]
struct AppState {
    schema: AuthSchema,
    /// The public signing keys, when they are asymmetric; `None` with HS256.
    jwks: Option<Arc<jsonwebtoken::jwk::JwkSet>>,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Connects to the database, applies migrations, loads the signing keys and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = SeaStore::connect(&config.database_url)
            .await
            .context("could not open the database (DATABASE_URL)")?;
        if config.migrate_on_start {
            store
                .migrate()
                .await
                .context("could not apply database migrations")?;
        }
        let store: Arc<dyn Store> = Arc::new(store);
        let keys =
            KeySet::load(&config, async || jwt_secret(&config, store.as_ref()).await).await?;
        let jwks = keys.jwks().map(Arc::new);
        let tokens = TokenKeys::new(keys, &config.jwt_issuer, config.jwt_leeway_seconds);
        let hash_slots = config
            .bcrypt_max_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let passwords = PasswordHasher::new(config.bcrypt_cost, hash_slots)
            .map_err(|_| anyhow::anyhow!("could not set up password hashing"))?;
        let service = AuthService::new(
            store,
            tokens,
            passwords,
            config.access_token_lifetime(),
            config.refresh_token_lifetime(),
        )
        .map_err(|_| anyhow::anyhow!("token lifetimes are out of range"))?;

        let router = router(AppState {
            schema: build_schema(service),
            jwks,
        });
        let address = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("could not listen on {address}"))?;
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.local_addr()?, "authql listening");
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}

/// The configured secret, or the one generated and kept in the database.
async fn jwt_secret(config: &Config, store: &dyn Store) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret_key {
        let secret = secret.expose_secret().as_bytes();
        if secret.len() < MIN_SECRET_BYTES {
            bail!(
                "JWT_SECRET_KEY is {} bytes long; it must be at least {MIN_SECRET_BYTES} bytes \
                 (for example: openssl rand -base64 48)",
                secret.len()
            );
        }
        return Ok(secret.to_vec());
    }
    let mut candidate = [0u8; 48];
    rand::rng().fill_bytes(&mut candidate);
    let secret = store
        .setting_or_insert(GENERATED_SECRET_SETTING, URL_SAFE_NO_PAD.encode(candidate))
        .await
        .context("could not read or store the generated JWT secret")?;
    tracing::warn!(
        "JWT_SECRET_KEY is not set: using a secret generated on first start and kept in the \
         database. Set JWT_SECRET_KEY to manage it yourself."
    );
    Ok(secret.into_bytes())
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(graphiql))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(healthz))
        .route("/.well-known/jwks.json", get(jwks))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR", "internal server error").into_response()
        }))
        // One span per request with method and path only: a query string may hold variables.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        }))
}

async fn graphql_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: GraphQLRequest<HttpError>,
) -> GraphQLResponse {
    execute(&state, peer, &headers, request.into_inner()).await
}

/// GET carries queries only: a mutation must not run from a link or an `<img>` tag.
async fn graphql_get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let request = match parse_query_string(uri.query().unwrap_or_default()) {
        Ok(request) => request,
        Err(_) => {
            return HttpError::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "a GET request needs a `query` parameter (and optionally `variables` as JSON)",
            )
            .into_response();
        }
    };
    if is_mutation(&request.query, request.operation_name.as_deref()) {
        return HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "mutations must be sent with POST",
        )
        .into_response();
    }
    execute(&state, peer, &headers, request)
        .await
        .into_response()
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
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    request: async_graphql::Request,
) -> GraphQLResponse {
    let bearer = BearerToken::from_header(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()));
    let client = ClientInfo {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(MAX_USER_AGENT_CHARS).collect()),
        ip_address: Some(peer.ip().to_string()),
    };
    let request = request.data(RequestAuth::new(bearer)).data(client);
    state.schema.execute(request).await.into()
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The public keys that verify our tokens (RFC 7517), for other services. Only asymmetric keys
/// are published: an HS256 secret must never leave the server.
async fn jwks(State(state): State<AppState>) -> Response {
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

/// An error answered before GraphQL runs, shaped like a GraphQL response so that clients read
/// every error the same way.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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

impl From<async_graphql::ParseRequestError> for HttpError {
    fn from(error: async_graphql::ParseRequestError) -> Self {
        use async_graphql::ParseRequestError::*;
        match error {
            PayloadTooLarge => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is too large",
            ),
            UnsupportedBatch => Self::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "batched requests are not supported; send one operation per request",
            ),
            _ => Self::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the body must be JSON like {\"query\": \"...\", \"variables\": {...}}",
            ),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
