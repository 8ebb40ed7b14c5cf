//! From the `Authorization` header to a signed-in user and session.
//!
//! The HTTP edge parses the header once into a [`BearerToken`] and puts a [`RequestAuth`] in the
//! request's data. Nothing is looked up until an operation needs it: the [`SignedIn`] guard (and
//! any resolver, through [`signed_in`]) resolves the token through the store once, and the result
//! is kept for the rest of the request.

use async_graphql::{Context, Guard};
use tokio::sync::OnceCell;

use crate::{
    error::{AppError, UnauthenticatedReason},
    service::AuthService,
    store::{Session, User},
};

/// What the request's `Authorization` header holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerToken {
    Missing,
    /// A header that is not `Bearer <token>`.
    Unreadable,
    Present(String),
}

impl BearerToken {
    pub fn from_header(value: Option<&[u8]>) -> Self {
        let Some(value) = value else {
            return Self::Missing;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return Self::Unreadable;
        };
        match value.trim().split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Self::Present(token.trim().to_owned())
            }
            _ => Self::Unreadable,
        }
    }
}

/// The signed-in user and the session of the access token that proved it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: User,
    pub session: Session,
    /// When the access token expires (its `exp`).
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Per-request authentication state: the token as received, resolved at most once.
pub struct RequestAuth {
    bearer: BearerToken,
    resolved: OnceCell<Result<Authenticated, AppError>>,
}

impl RequestAuth {
    pub fn new(bearer: BearerToken) -> Self {
        Self {
            bearer,
            resolved: OnceCell::new(),
        }
    }

    /// Already resolved: a WebSocket connection authenticates once, at `connection_init`.
    pub fn resolved(authenticated: Authenticated) -> Self {
        Self {
            bearer: BearerToken::Missing,
            resolved: OnceCell::new_with(Some(Ok(authenticated))),
        }
    }

    pub async fn resolve(&self, service: &AuthService) -> Result<&Authenticated, AppError> {
        self.resolved
            .get_or_init(|| service.authenticate(&self.bearer))
            .await
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The signed-in caller of this request, resolved once and then cached.
pub async fn signed_in<'ctx>(ctx: &Context<'ctx>) -> Result<&'ctx Authenticated, AppError> {
    let service = ctx
        .data::<AuthService>()
        .map_err(|err| AppError::internal(err.message))?;
    match ctx.data_opt::<RequestAuth>() {
        Some(auth) => auth.resolve(service).await,
        None => Err(AppError::Unauthenticated(UnauthenticatedReason::Missing)),
    }
}

/// Guard for operations that need a live access token.
pub struct SignedIn;

impl Guard for SignedIn {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        signed_in(ctx).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bearer_scheme_only() {
        assert_eq!(BearerToken::from_header(None), BearerToken::Missing);
        assert_eq!(
            BearerToken::from_header(Some(b"Bearer abc.def.ghi")),
            BearerToken::Present("abc.def.ghi".into())
        );
        assert_eq!(
            BearerToken::from_header(Some(b"bearer  abc ")),
            BearerToken::Present("abc".into())
        );
        for unreadable in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"\xff\xfe",
        ] {
            assert_eq!(
                BearerToken::from_header(Some(unreadable)),
                BearerToken::Unreadable
            );
        }
    }
}
