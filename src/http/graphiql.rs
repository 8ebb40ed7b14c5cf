//! GraphiQL, served by authql itself: the page at `/` and its assets at `/graphiql/<file>`, all
//! embedded in the binary from `assets/graphiql/` (GraphiQL's and React's built browser files
//! from npm, with their licences; `assets/graphiql/README.md` says which versions and how to
//! refresh them). Nothing on the page comes from another host, so it works offline, and the
//! `Content-Security-Policy` tells the browser to keep it that way.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use rust_embed::RustEmbed;

use super::HttpError;

#[derive(RustEmbed)]
#[folder = "assets/graphiql/"]
struct Assets;

/// Only this host's own files: GraphiQL's inline styles are its only exception.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

/// `GET /`: the GraphiQL page.
pub async fn page() -> Response {
    serve("index.html")
}

/// `GET /graphiql/{file}`: one of the page's scripts, stylesheets or licences.
pub async fn asset(Path(file): Path<String>) -> Response {
    if file == "index.html" {
        return not_found();
    }
    serve(&file)
}

fn serve(file: &str) -> Response {
    let Some(asset) = Assets::get(file) else {
        return not_found();
    };
    let mime = asset.metadata.mimetype().to_owned();
    let mut response = asset.data.into_owned().into_response();
    let headers = response.headers_mut();
    if let Ok(mime) = HeaderValue::from_str(&mime) {
        headers.insert(header::CONTENT_TYPE, mime);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn not_found() -> Response {
    HttpError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such GraphiQL file").into_response()
}
