//! The refresh token in an HttpOnly cookie (`REFRESH_TOKEN_COOKIE=true`), so that page
//! JavaScript never holds it: `register`, `login` and `refresh` set it and leave
//! `AuthPayload.refreshToken` null; `refresh` without an argument reads it; `logout` and revoking
//! the current session clear it.
//!
//! The cookie is `HttpOnly; Secure; SameSite=Strict; Path=/graphql` by default, named
//! `__Secure-authql_refresh` (the `__Secure-` prefix, RFC 6265bis § 4.1.3.1, makes browsers
//! refuse it unless it is Secure and set from a secure origin). `__Host-` would need `Path=/`,
//! which would send the token with every request to the host. For plain-http development
//! `REFRESH_TOKEN_COOKIE_SECURE=false` drops `Secure` and the prefix (`authql_refresh`).
//!
//! CSRF (OWASP CSRF Prevention Cheat Sheet, "Verifying Origin With Standard Headers"): a refresh
//! authenticated by the cookie alone is accepted only when the request's `Origin` is one of
//! `CORS_ALLOWED_ORIGINS` or authql's own origin; a request with no `Origin` (not a browser) must
//! pass the token as the argument.

use axum::http::{HeaderMap, HeaderValue, header};
use chrono::{DateTime, Utc};
use cookie::{Cookie, SameSite as CookieSameSite, time::Duration as CookieDuration};

use crate::config::SameSite;

/// Where the cookie is sent: the GraphQL endpoint only.
const COOKIE_PATH: &str = "/graphql";

/// How the refresh-token cookie is written; built once from the configuration.
#[derive(Debug, Clone)]
pub struct RefreshCookie {
    name: &'static str,
    secure: bool,
    same_site: SameSite,
}

/// The refresh-token cookie as one request carries it, read by the HTTP edge.
#[derive(Debug, Clone, Default)]
pub struct RequestRefreshCookie {
    /// The cookie's value, if the request sent exactly one such cookie.
    pub token: Option<String>,
    /// The request sent the cookie more than once (cookie tossing): none of them is used.
    pub ambiguous: bool,
    /// The request's `Origin` may use the cookie (see the module's CSRF rule).
    pub origin_allowed: bool,
}

impl RefreshCookie {
    /// The cookie settings. `secure = false` is for plain-http development only.
    pub fn new(secure: bool, same_site: SameSite) -> Self {
        Self {
            name: if secure {
                "__Secure-authql_refresh"
            } else {
                "authql_refresh"
            },
            secure,
            same_site,
        }
    }

    /// A `Set-Cookie` value holding `token` until `expires_at` (as `Max-Age`, in seconds).
    pub fn set(&self, token: &str, expires_at: DateTime<Utc>) -> HeaderValue {
        let seconds = (expires_at - Utc::now()).num_seconds().max(0);
        self.header(token, CookieDuration::seconds(seconds))
    }

    /// A `Set-Cookie` value that deletes the cookie.
    pub fn clear(&self) -> HeaderValue {
        self.header("", CookieDuration::ZERO)
    }

    fn header(&self, value: &str, max_age: CookieDuration) -> HeaderValue {
        let cookie = Cookie::build((self.name, value))
            .http_only(true)
            .secure(self.secure)
            .same_site(match self.same_site {
                SameSite::Strict => CookieSameSite::Strict,
                SameSite::Lax => CookieSameSite::Lax,
                SameSite::None => CookieSameSite::None,
            })
            .path(COOKIE_PATH)
            .max_age(max_age)
            .build();
        // A token is base64url and dots: always a valid header value.
        HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
    }

    /// Reads the cookie from the request's `Cookie` headers (RFC 6265 § 5.4).
    pub fn read(&self, headers: &HeaderMap, origin_allowed: bool) -> RequestRefreshCookie {
        let mut values = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .filter(|cookie| cookie.name() == self.name)
            .map(|cookie| cookie.value().to_owned());
        let first = values.next();
        let ambiguous = values.next().is_some();
        RequestRefreshCookie {
            token: first.filter(|value| !ambiguous && !value.is_empty()),
            ambiguous,
            origin_allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_http_only_secure_and_scoped_to_graphql() {
        let cookie = RefreshCookie::new(true, SameSite::Strict);
        let set = cookie.set("a.b.c", Utc::now() + chrono::TimeDelta::seconds(60));
        let set = set.to_str().unwrap();
        assert!(set.starts_with("__Secure-authql_refresh=a.b.c"), "{set}");
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/graphql"] {
            assert!(set.contains(attribute), "{set} lacks {attribute}");
        }
        let cleared = cookie.clear();
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
        let plain = RefreshCookie::new(false, SameSite::Lax).set("t", Utc::now());
        assert!(plain.to_str().unwrap().starts_with("authql_refresh=t"));
        assert!(!plain.to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn a_cookie_sent_twice_is_not_used() {
        let cookie = RefreshCookie::new(true, SameSite::Strict);
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("x=1; __Secure-authql_refresh=one"),
        );
        assert_eq!(cookie.read(&headers, true).token.as_deref(), Some("one"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("__Secure-authql_refresh=two"),
        );
        let read = cookie.read(&headers, true);
        assert!(read.ambiguous && read.token.is_none());
    }
}
