//! authql's own account pages, where the links in its mails lead unless the app has pages of its
//! own (`PASSWORD_RESET_URL`, `EMAIL_VERIFICATION_URL`): `/reset-password` and `/verify-email`,
//! plain HTML forms whose one script (`/account/account.js`, embedded from `assets/account/`)
//! reads the token from the link and calls the mutation on `/graphql`. Nothing comes from
//! another host, and the `Content-Security-Policy` keeps it so; the token never leaves in a
//! `Referer` (`no-referrer`) and no answer is cached.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use rust_embed::RustEmbed;

use super::HttpError;

#[derive(RustEmbed)]
#[folder = "assets/account/"]
struct Assets;

/// This host's own files only, the form posting nowhere else, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// `GET /reset-password`: the form that sets a new password with a reset link's token.
pub async fn reset_password() -> Response {
    serve("reset-password.html")
}

/// `GET /verify-email`: the button that confirms an address with a verification link's token.
pub async fn verify_email() -> Response {
    serve("verify-email.html")
}

/// `GET /account/{file}`: the pages' script and stylesheet.
pub async fn asset(Path(file): Path<String>) -> Response {
    if !(file.ends_with(".js") || file.ends_with(".css")) {
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
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn not_found() -> Response {
    HttpError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such page").into_response()
}
