//! What the app's other APIs call to check a token, so that a revoked one stops working for
//! them on the very next request, as it does for `me` (README, "Protecting your other APIs"):
//!
//! - `/auth/verify`, forward auth for a proxy (nginx `auth_request`, Traefik `forwardAuth`,
//!   Envoy `ext_authz`): any method, body ignored, `Authorization: Bearer <access token>`. 200
//!   with `X-Auth-User-Id`, `X-Auth-Session-Id`, `X-Auth-Email`, `X-Auth-Roles` (comma-
//!   separated), `X-Auth-Amr` (comma-separated); 401 with `WWW-Authenticate: Bearer` (RFC 6750
//!   § 3) otherwise. The check is `me`'s own ([`AuthService::authenticate`]).
//! - `POST /oauth/introspect`, token introspection (RFC 7662) for resource servers that speak
//!   OAuth: form `token` (+ `token_type_hint`), the caller authenticated by HTTP Basic against
//!   `INTROSPECTION_CLIENTS`.
//!
//! Both answer `Cache-Control: no-store`: an answer is true only now. Both are counted in
//! `authql_resource_requests_total{endpoint,outcome}` and timed in
//! `authql_resource_request_duration_seconds`.

use std::{net::SocketAddr, time::Instant};

use axum::{
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Ambiguous, EdgeState, HttpError, client_info, single_header};
use crate::{
    auth::{Authenticated, BearerToken, TokenKind},
    config::IntrospectionClient,
    error::{AppError, UnauthenticatedReason},
    service::{introspection::LiveToken, rate_limit::Operation},
};

/// Longest introspection request body, in bytes: a token (at most 8000) and a hint, form
/// encoded.
pub const MAX_INTROSPECTION_BODY_BYTES: usize = 16 * 1024;

/// Longest an introspection request body may take to arrive, once its client is known.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const USER_ID: HeaderName = HeaderName::from_static("x-auth-user-id");
const SESSION_ID: HeaderName = HeaderName::from_static("x-auth-session-id");
const EMAIL: HeaderName = HeaderName::from_static("x-auth-email");
const ROLES: HeaderName = HeaderName::from_static("x-auth-roles");
const AMR: HeaderName = HeaderName::from_static("x-auth-amr");

/// `/auth/verify`: 200 with the caller's headers, 401 with `WWW-Authenticate`, 429 for an
/// address that keeps sending tokens that are not authql's, 503 with the database away.
pub(super) async fn verify(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let bearer = match single_header(&headers, header::AUTHORIZATION) {
        Ok(value) => BearerToken::from_header(value.map(HeaderValue::as_bytes)),
        Err(Ambiguous) => BearerToken::Unreadable,
    };
    let outcome = state.service.authenticate(&bearer).await;
    let outcome = match outcome {
        Err(AppError::Unauthenticated(reason))
            if matches!(
                reason,
                UnauthenticatedReason::Malformed | UnauthenticatedReason::UnknownKey
            ) =>
        {
            let ip = client_info(peer, &headers, &state.limits.trusted_proxies).ip;
            match state
                .service
                .rate_limits()
                .check_client(Operation::ForwardAuth, ip)
                .await
            {
                Ok(()) => Err(AppError::Unauthenticated(reason)),
                Err(error) => Err(error),
            }
        }
        other => other,
    };
    let (response, code) = match outcome {
        Ok(authenticated) => (verified(&authenticated), "OK"),
        Err(error) => {
            let code = error.code();
            (refused(error), code)
        }
    };
    crate::metrics::resource_request("verify", code, started.elapsed().as_secs_f64());
    no_store(response)
}

/// The caller's headers.
fn verified(authenticated: &Authenticated) -> Response {
    let Authenticated { user, session, .. } = authenticated;
    let amr: Vec<&str> = session.authentication_methods.iter().collect();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (USER_ID, user.id.to_string()),
        (SESSION_ID, session.id.to_string()),
        (ROLES, user.roles.join(",")),
        (AMR, amr.join(",")),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    // An internationalized address is sent as its UTF-8 bytes (RFC 9110 § 5.5 obs-text); one
    // that no header can hold (a control character) is left out rather than mangled.
    if let Ok(email) = HeaderValue::from_bytes(user.email.as_bytes()) {
        headers.insert(EMAIL, email);
    }
    (StatusCode::OK, headers).into_response()
}

/// Why not: 401 for every token that is not live (RFC 6750 § 3.1: `invalid_token`, or no error
/// code at all when the request had no token), with the same JSON error body as the API's.
fn refused(error: AppError) -> Response {
    match error {
        AppError::Unauthenticated(reason) => {
            let challenge = match reason {
                UnauthenticatedReason::Missing => r#"Bearer realm="authql""#,
                _ => r#"Bearer realm="authql", error="invalid_token""#,
            };
            let mut response = HttpError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "a live access token is needed: Authorization: Bearer <token>",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
        other => error_response(other),
    }
}

/// RATE_LIMITED (429, `Retry-After`), SERVICE_UNAVAILABLE (503), or anything else as 500
/// INTERNAL_SERVER_ERROR (its cause was logged where it arose, and is never sent).
fn error_response(error: AppError) -> Response {
    let (status, retry_after) = match &error {
        AppError::RateLimited {
            retry_after_seconds,
        }
        | AppError::Overloaded {
            retry_after_seconds,
        } => (StatusCode::TOO_MANY_REQUESTS, Some(*retry_after_seconds)),
        AppError::ServiceUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(crate::error::DATABASE_RETRY_AFTER_SECONDS),
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let mut response = HttpError::new(status, error.code(), error.message()).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `INTROSPECTION_CLIENTS`, kept as digests so that every comparison takes the same time.
#[derive(Debug, Clone, Default)]
pub struct IntrospectionClients {
    /// SHA-256 of each client's id and of its secret.
    clients: Vec<([u8; 32], [u8; 32])>,
}

impl IntrospectionClients {
    pub fn new(clients: &[IntrospectionClient]) -> Self {
        Self {
            clients: clients
                .iter()
                .map(|client| {
                    (
                        Sha256::digest(client.id.as_bytes()).into(),
                        Sha256::digest(client.secret.expose_secret().as_bytes()).into(),
                    )
                })
                .collect(),
        }
    }

    /// Whether `id` and `secret` are one listed client's. Every client is compared, each by
    /// the SHA-256 of its id and secret in constant time (`subtle`), so the time taken says
    /// neither how much of a secret was right nor which ids exist.
    pub fn authenticate(&self, id: &str, secret: &str) -> bool {
        let id: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let secret: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for (client_id, client_secret) in &self.clients {
            found |= client_id.ct_eq(&id) & client_secret.ct_eq(&secret);
        }
        found.into()
    }
}

/// HTTP Basic credentials (RFC 7617), as sent.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = single_header(headers, header::AUTHORIZATION).ok()??;
    let (scheme, encoded) = value.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Credentials with each half form-urlencoded, as RFC 6749 § 2.3.1 says OAuth clients send them.
fn form_decoded(id: &str, secret: &str) -> Option<(String, String)> {
    let decode = |part: &str| {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// Whether `client` is a listed one, sent as it is (`curl -u`, most HTTP clients: a secret from
/// `openssl rand -base64` holds `+`, which form decoding would turn into a space) or form
/// encoded (RFC 6749 § 2.3.1). Both are always compared.
fn is_listed(clients: &IntrospectionClients, (id, secret): &(String, String)) -> bool {
    let as_sent = clients.authenticate(id, secret);
    let decoded =
        form_decoded(id, secret).is_some_and(|(id, secret)| clients.authenticate(&id, &secret));
    as_sent | decoded
}

/// `POST /oauth/introspect` (RFC 7662 § 2): 401 `invalid_client` with `WWW-Authenticate: Basic`
/// unless the caller is a listed client (429 for an address that keeps failing); 400
/// `invalid_request` without a `token`; else 200 with `{"active": false}` for anything not live,
/// or the token's claims.
pub(super) async fn introspect(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let started = Instant::now();
    let (response, outcome) = introspection(&state, peer, &headers, body).await;
    crate::metrics::resource_request("introspect", outcome, started.elapsed().as_secs_f64());
    no_store(response)
}

async fn introspection(
    state: &EdgeState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> (Response, &'static str) {
    let client = basic_credentials(headers);
    let authenticated = client
        .as_ref()
        .is_some_and(|client| is_listed(&state.limits.introspection_clients, client));
    if !authenticated {
        let ip = client_info(peer, headers, &state.limits.trusted_proxies).ip;
        if client.is_some()
            && let Err(error) = state
                .service
                .rate_limits()
                .check_client(Operation::Introspection, ip)
                .await
        {
            let code = error.code();
            return (error_response(error), code);
        }
        let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="authql", charset="UTF-8""#),
        );
        return (response, "UNAUTHENTICATED");
    }
    let form_type = single_header(headers, header::CONTENT_TYPE)
        .ok()
        .flatten()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    // The body is read only now, once the caller is a listed client, within a bound of size
    // and of time: nobody else can hold a connection by sending one slowly.
    let body = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_INTROSPECTION_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return (
                oauth_error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
                "PAYLOAD_TOO_LARGE",
            );
        }
        Err(_) => {
            return (
                oauth_error(StatusCode::REQUEST_TIMEOUT, "invalid_request"),
                "REQUEST_TIMEOUT",
            );
        }
    };
    let mut token = None;
    let mut hint = None;
    let mut repeated = false;
    for (name, value) in url::form_urlencoded::parse(&body) {
        let slot = match name.as_ref() {
            "token" => &mut token,
            "token_type_hint" => &mut hint,
            _ => continue,
        };
        // RFC 6749 § 3.1: parameters must not be included more than once.
        repeated |= slot.replace(value.into_owned()).is_some();
    }
    let (Some(token), true, false) = (token, form_type, repeated) else {
        return (
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            "BAD_REQUEST",
        );
    };
    // RFC 7662 § 2.1: an unknown hint is no reason to refuse; the token is looked at anyway.
    let hint = match hint.as_deref() {
        Some("refresh_token") => Some(TokenKind::Refresh),
        Some("access_token") => Some(TokenKind::Access),
        _ => None,
    };
    match state.service.introspect(&token, hint).await {
        Ok(Some(live)) => (
            axum::Json(active(&live, state.service.issuer())).into_response(),
            "OK",
        ),
        Ok(None) => (axum::Json(json!({ "active": false })).into_response(), "OK"),
        Err(error) => {
            let code = error.code();
            (error_response(error), code)
        }
    }
}

/// RFC 7662 § 2.2's members for a live token, and authql's own (`sid`, `email`, `roles`,
/// `amr`, `auth_time`).
fn active(live: &LiveToken, issuer: &str) -> Value {
    let LiveToken {
        kind,
        user,
        session,
        issued_at,
        expires_at,
    } = live;
    let mut answer = Map::new();
    answer.insert("active".into(), true.into());
    answer.insert("iss".into(), issuer.into());
    answer.insert("sub".into(), user.id.to_string().into());
    answer.insert("sid".into(), session.id.to_string().into());
    answer.insert("exp".into(), expires_at.timestamp().into());
    answer.insert("iat".into(), issued_at.timestamp().into());
    answer.insert(
        "auth_time".into(),
        session.authenticated_at.timestamp().into(),
    );
    // RFC 7662 § 2.2 `token_type` is an OAuth token type (RFC 6749 § 5.1): `Bearer` for access
    // tokens; a refresh token has none there, so it is named as RFC 7009's hint names it.
    let token_type = match kind {
        TokenKind::Access => "Bearer",
        TokenKind::Refresh => "refresh_token",
    };
    answer.insert("token_type".into(), token_type.into());
    answer.insert("username".into(), user.username.clone().into());
    answer.insert("email".into(), user.email.clone().into());
    answer.insert(
        "email_verified".into(),
        user.email_verified_at.is_some().into(),
    );
    answer.insert("roles".into(), json!(user.roles));
    let amr: Vec<&str> = session.authentication_methods.iter().collect();
    answer.insert("amr".into(), json!(amr));
    Value::Object(answer)
}

/// An OAuth error answer (RFC 6749 § 5.2): `{"error": "<code>"}`.
fn oauth_error(status: StatusCode, error: &'static str) -> Response {
    (status, axum::Json(json!({ "error": error }))).into_response()
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn clients() -> IntrospectionClients {
        IntrospectionClients::new(&[
            IntrospectionClient {
                id: "notes".into(),
                secret: SecretString::from("0123456789abcdef-notes"),
            },
            IntrospectionClient {
                id: "orders".into(),
                secret: SecretString::from("0123456789abcdef-orders"),
            },
        ])
    }

    #[test]
    fn only_a_listed_pair_authenticates() {
        let clients = clients();
        assert!(clients.authenticate("notes", "0123456789abcdef-notes"));
        assert!(clients.authenticate("orders", "0123456789abcdef-orders"));
        for (id, secret) in [
            ("notes", "0123456789abcdef-orders"),
            ("orders", "0123456789abcdef-notes"),
            ("notes", "0123456789abcdef-note"),
            ("notes", ""),
            ("", ""),
            ("nobody", "0123456789abcdef-notes"),
        ] {
            assert!(!clients.authenticate(id, secret), "{id}:{secret}");
        }
        assert!(!IntrospectionClients::default().authenticate("", ""));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("my%3Aclient:s%2Bcret+x");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let sent = basic_credentials(&headers).unwrap();
        assert_eq!(sent, ("my%3Aclient".into(), "s%2Bcret+x".into()));
        assert_eq!(
            form_decoded(&sent.0, &sent.1),
            Some(("my:client".into(), "s+cret x".into()))
        );
        let clients = IntrospectionClients::new(&[IntrospectionClient {
            id: "notes".into(),
            secret: SecretString::from("q+Zk/9x=Rw+0pL3mT7vA"),
        }]);
        for sent in ["q+Zk/9x=Rw+0pL3mT7vA", "q%2BZk%2F9x%3DRw%2B0pL3mT7vA"] {
            assert!(
                is_listed(&clients, &("notes".into(), sent.into())),
                "{sent}"
            );
        }
        assert!(!is_listed(
            &clients,
            &("notes".into(), "q Zk/9x=Rw 0pL3mT7vA".into())
        ));
        for garbage in ["Bearer abc", "Basic ???", "Basic", "Basic Zm9v"] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(garbage));
            assert_eq!(basic_credentials(&headers), None, "{garbage}");
        }
    }
}
