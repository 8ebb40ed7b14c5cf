//! The GraphQL-over-HTTP protocol (graphql.github.io/graphql-over-http, the 2024 working draft):
//! which media type to answer in, how the request parameters are read from a POST body or a GET
//! query string, and how a GraphQL response becomes an HTTP response.
//!
//! The rules, by clause of the spec:
//! - *Accept* (§ Accept): `application/graphql-response+json` and `application/json` are offered;
//!   q-values are honoured and `q=0` means "not this one". No `Accept` header means
//!   `application/json`; `*/*` and `application/*` pick `application/json` too. Nothing acceptable
//!   is `406 NOT_ACCEPTABLE`.
//! - *Request parameters* (§ Request Parameters): `query` is a required string, `operationName` an
//!   optional string, `variables` and `extensions` optional maps (in a GET, JSON-encoded). A
//!   request that breaks these is not a well-formed GraphQL-over-HTTP request: `400` in both media
//!   types.
//! - *Response* (§ Response): a request error (the request never started executing: bad
//!   parameters, a document that does not parse or validate, variables that do not coerce) has no
//!   `data` entry. Under `application/graphql-response+json` it is `400`; under `application/json`
//!   it is `200`, as the spec recommends for legacy clients. A response with `data` (even `null`,
//!   after a non-null field failed) is `200` in both.

use async_graphql::Variables;
use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The media type of GraphQL responses defined by the GraphQL-over-HTTP spec.
pub const GRAPHQL_RESPONSE_MEDIA_TYPE: &str = "application/graphql-response+json";
const JSON_MEDIA_TYPE: &str = "application/json";

/// The media type an answer is sent in, chosen from the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/graphql-response+json`: request errors are `400`.
    GraphQLResponseJson,
    /// `application/json`: every well-formed request is answered `200`.
    Json,
}

impl MediaType {
    /// Negotiates the answer's media type (spec § Accept). `None` when the client accepts
    /// neither, which the caller answers with `406`.
    pub fn negotiate(headers: &HeaderMap) -> Option<Self> {
        let values: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        if values.is_empty() {
            return Some(Self::Json);
        }
        // The best q for each offer; an exact media type beats a wildcard for the same offer.
        let (mut graphql, mut json): (Option<f32>, Option<f32>) = (None, None);
        let (mut graphql_exact, mut json_exact) = (false, false);
        for range in values.iter().flat_map(|value| value.split(',')) {
            let mut parts = range.split(';');
            let media_range = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|parameter| parameter.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, value)| value.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media_range.as_str() {
                GRAPHQL_RESPONSE_MEDIA_TYPE => {
                    graphql = Some(q);
                    graphql_exact = true;
                }
                JSON_MEDIA_TYPE => {
                    json = Some(q);
                    json_exact = true;
                }
                "*/*" | "application/*" => {
                    if !json_exact {
                        json = Some(json.map_or(q, |best| best.max(q)));
                    }
                    if !graphql_exact {
                        graphql = Some(graphql.map_or(q, |best| best.max(q)));
                    }
                }
                _ => {}
            }
        }
        let graphql = graphql.filter(|q| *q > 0.0);
        let json = json.filter(|q| *q > 0.0);
        match (graphql, json) {
            // A wildcard alone means application/json: the spec keeps legacy clients on it.
            (Some(g), Some(j)) if graphql_exact && g >= j => Some(Self::GraphQLResponseJson),
            (Some(_), None) => Some(Self::GraphQLResponseJson),
            (_, Some(_)) => Some(Self::Json),
            (None, None) => None,
        }
    }

    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::GraphQLResponseJson => "application/graphql-response+json; charset=utf-8",
            Self::Json => "application/json; charset=utf-8",
        })
    }

    /// The status of a request error in this media type (spec § Response).
    fn request_error_status(self) -> StatusCode {
        match self {
            Self::GraphQLResponseJson => StatusCode::BAD_REQUEST,
            Self::Json => StatusCode::OK,
        }
    }
}

/// The parameters of a GraphQL-over-HTTP request (spec § Request Parameters).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphQLParams {
    /// The document; may be absent when `extensions.persistedQuery` names a stored one.
    pub query: Option<String>,
    pub operation_name: Option<String>,
    pub variables: Option<Variables>,
    pub extensions: Option<Map<String, Value>>,
}

/// A GET request's parameters as they arrive: `variables` and `extensions` are JSON text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryStringParams {
    query: Option<String>,
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

impl GraphQLParams {
    /// Reads a POST body. Errors: `BAD_REQUEST` (400) for text that is not JSON or JSON that is
    /// not one request object (a batch array, a `query` that is not a string, ...).
    pub fn from_json_body(body: &[u8], media: MediaType) -> Result<Self, HttpError> {
        // One pass, straight into the parameters; serde_json refuses nesting beyond 128
        // levels. An array (a batch) is refused as a shape error: one operation per request,
        // so that no limit can be multiplied by batching.
        serde_json::from_slice(body).map_err(|error| match error.classify() {
            serde_json::error::Category::Data => HttpError::bad_parameters(
                media,
                "the body must be one JSON object: `query` and `operationName` strings, `variables` and `extensions` objects",
            ),
            _ => HttpError::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the body is not valid JSON",
            )
            .in_media(media),
        })
    }

    /// Reads a GET query string (`application/x-www-form-urlencoded`); errors as for a body.
    pub fn from_query_string(query_string: &str, media: MediaType) -> Result<Self, HttpError> {
        let invalid = || {
            HttpError::bad_parameters(
                media,
                "a GET request takes `query`, `operationName`, and `variables` and `extensions` as JSON objects",
            )
        };
        let raw: QueryStringParams =
            serde_urlencoded::from_str(query_string).map_err(|_| invalid())?;
        // JSON text that must be an object (or null).
        fn object<T: serde::de::DeserializeOwned>(text: Option<String>) -> Result<Option<T>, ()> {
            match text {
                None => Ok(None),
                Some(text) => serde_json::from_str::<Option<T>>(&text).map_err(drop),
            }
        }
        Ok(Self {
            query: raw.query,
            operation_name: raw.operation_name,
            variables: object(raw.variables).map_err(|()| invalid())?,
            extensions: object(raw.extensions).map_err(|()| invalid())?,
        })
    }
}

/// Turns the executor's response into HTTP (spec § Response). A response whose `data` is null
/// and whose errors all lack a `path` never started executing: a request error, sent without
/// `data`. `Retry-After` (RFC 9110 § 10.2.3) repeats the longest `retryAfterSeconds` of a
/// `RATE_LIMITED` or `SERVICE_UNAVAILABLE` error.
pub fn into_http_response(response: async_graphql::Response, media: MediaType) -> Response {
    let request_error = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty());
    let retry_after = response
        .errors
        .iter()
        .filter_map(|error| error.extensions.as_ref())
        .filter(|extensions| {
            matches!(extensions.get("code"), Some(async_graphql::Value::String(code))
                if code == "RATE_LIMITED" || code == "SERVICE_UNAVAILABLE")
        })
        .filter_map(|extensions| match extensions.get("retryAfterSeconds") {
            Some(async_graphql::Value::Number(seconds)) => seconds.as_u64(),
            _ => None,
        })
        .max();

    // Serialized straight from async-graphql's values, which keep the selection set's order
    // (the GraphQL spec's "ordered map"); a serde_json map would sort the keys.
    let body = ResponseBody {
        data: (!request_error).then_some(&response.data),
        errors: &response.errors,
        extensions: &response.extensions,
    };
    let status = if request_error {
        media.request_error_status()
    } else {
        StatusCode::OK
    };

    let mut http = json_response(status, media, &body);
    for (name, value) in response.http_headers.iter() {
        http.headers_mut().append(name, value.clone());
    }
    if let Some(seconds) = retry_after {
        http.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    http
}

/// A GraphQL response body (GraphQL spec § 7.1 "Response Format").
#[derive(Serialize)]
struct ResponseBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a async_graphql::Value>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [async_graphql::ServerError],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extensions: &'a std::collections::BTreeMap<String, async_graphql::Value>,
}

fn json_response(status: StatusCode, media: MediaType, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, Body::from(bytes)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    response
}

/// An error answered before GraphQL runs, in the same JSON shape as a GraphQL response:
/// `{"errors": [{"message", "extensions": {"code"}}]}`, without `data`.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    media: MediaType,
    code: &'static str,
    message: String,
}

impl HttpError {
    /// An error with a fixed HTTP status, sent as `application/json`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            media: MediaType::Json,
            code,
            message: message.into(),
        }
    }

    /// A GraphQL request error: `400` under `application/graphql-response+json`, `200` under
    /// `application/json` (spec § Response).
    pub fn request(media: MediaType, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: media.request_error_status(),
            media,
            code,
            message: message.into(),
        }
    }

    /// Request parameters that do not make a well-formed GraphQL-over-HTTP request:
    /// `BAD_REQUEST`, 400 in both media types.
    pub fn bad_parameters(media: MediaType, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message).in_media(media)
    }

    /// The same error, sent in the negotiated media type.
    pub fn in_media(mut self, media: MediaType) -> Self {
        self.media = media;
        self
    }

    /// The same error with another HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{ "message": self.message, "extensions": { "code": self.code } }]
        });
        json_response(self.status, self.media, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Option<MediaType> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        MediaType::negotiate(&headers)
    }

    #[test]
    fn accept_is_negotiated_with_q_values() {
        assert_eq!(
            MediaType::negotiate(&HeaderMap::new()),
            Some(MediaType::Json)
        );
        assert_eq!(accept("application/json"), Some(MediaType::Json));
        assert_eq!(
            accept("application/graphql-response+json, application/json;q=0.9"),
            Some(MediaType::GraphQLResponseJson)
        );
        assert_eq!(
            accept("application/graphql-response+json;q=0.5, application/json"),
            Some(MediaType::Json)
        );
        assert_eq!(accept("*/*"), Some(MediaType::Json));
        assert_eq!(
            accept("application/graphql-response+json, */*;q=0.1"),
            Some(MediaType::GraphQLResponseJson)
        );
        assert_eq!(
            accept("application/json;q=0, application/graphql-response+json"),
            Some(MediaType::GraphQLResponseJson)
        );
        assert_eq!(accept("application/json;q=0"), None);
        assert_eq!(accept("text/html"), None);
        assert_eq!(
            accept("application/json;q=0, */*"),
            Some(MediaType::GraphQLResponseJson)
        );
    }

    #[test]
    fn get_parameters_are_read_in_camel_case() {
        let params = GraphQLParams::from_query_string(
            "query=query%20A%7Ba%7D&operationName=A&variables=%7B%22x%22%3A1%7D",
            MediaType::Json,
        )
        .unwrap();
        assert_eq!(params.operation_name.as_deref(), Some("A"));
        assert_eq!(
            params.variables.unwrap().get("x"),
            Some(&async_graphql::Value::from(1))
        );
        assert!(
            GraphQLParams::from_query_string("query=x&variables=%5B1%5D", MediaType::Json).is_err()
        );
    }
}
