//! `GET /auth/oidc/callback`: where OpenID Providers send the browser back (authql's redirect
//! URI at each provider, `PUBLIC_URL/auth/oidc/callback`). It hands the query's `state`, `code`
//! and `error` to the service, which answers where the browser goes next: the app's page (a
//! 303 with `code` and `state`, or `error` and `state`), or, when the `state` names no sign-in
//! in progress, a page of authql's own saying to start again (never a redirect to an address
//! the request chose).

use axum::{
    extract::{RawQuery, State},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::EdgeState;
use crate::{
    error::AppError,
    service::oidc::{CallbackOutcome, CallbackParams},
};

/// The callback (GET only: HEAD is 405). A parameter given twice (RFC 6749 § 3.1: none may be) makes the request
/// invalid, as does an unknown, used or expired `state`.
pub async fn callback(
    State(edge): State<EdgeState>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    // A HEAD (a link checker, a prefetch) must not use the sign-in up.
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("GET"))],
        )
            .into_response();
    }
    let Some(params) = params_of(query.as_deref().unwrap_or("")) else {
        return page(StatusCode::BAD_REQUEST, INVALID);
    };
    match edge.service.finish_oidc_authorization(params).await {
        Ok(CallbackOutcome::Redirect(location)) => match HeaderValue::from_str(&location) {
            Ok(location) => (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, location),
                    // The app's page gets the code; no page gets this URL as a referrer.
                    (
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    ),
                ],
            )
                .into_response(),
            Err(_) => page(StatusCode::INTERNAL_SERVER_ERROR, FAILED),
        },
        Ok(CallbackOutcome::InvalidState) => page(StatusCode::BAD_REQUEST, INVALID),
        Err(AppError::ServiceUnavailable | AppError::Overloaded { .. }) => {
            page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
        Err(_) => page(StatusCode::INTERNAL_SERVER_ERROR, FAILED),
    }
}

const INVALID: &str = "This sign-in link is not valid: it was used already, or it expired. \
     Go back to the app and sign in again.";
const UNAVAILABLE: &str = "Signing in is unavailable for a moment. Go back to the app and try \
     again.";
const FAILED: &str = "Signing in failed. Go back to the app and try again.";

/// `state`, `code`, `error` and `iss` of the query, each at most once; `None` when one is repeated.
fn params_of(query: &str) -> Option<CallbackParams> {
    let mut params = CallbackParams::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "state" => &mut params.state,
            "code" => &mut params.code,
            "error" => &mut params.error,
            "iss" => &mut params.iss,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return None;
        }
    }
    Some(params)
}

fn page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in</title></head><body><p>{text}</p></body></html>"
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::params_of;

    #[test]
    fn a_repeated_parameter_makes_the_query_invalid() {
        let params = params_of("code=a&state=b&iss=x&session_state=y").unwrap();
        assert_eq!(params.code.as_deref(), Some("a"));
        assert_eq!(params.iss.as_deref(), Some("x"));
        assert_eq!(params.state.as_deref(), Some("b"));
        assert!(params.error.is_none());
        assert!(params_of("state=a&state=b").is_none());
        assert!(params_of("code=a&code=a").is_none());
        assert_eq!(params_of("").unwrap().state, None);
    }
}
