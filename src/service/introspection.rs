//! What the app's other APIs ask of a token: token introspection (RFC 7662) for access and
//! refresh tokens. Forward auth (`/auth/verify`) needs no more than [`AuthService::authenticate`],
//! the very check `me` makes.
//!
//! Both read the store, never only the signature: a revoked session, a changed password, a
//! disabled account or a revoked role shows in the very next answer.

use chrono::{DateTime, Utc};

use super::{AuthService, now};
use crate::{
    auth::{BearerToken, Claims, TokenKind},
    error::AppError,
    store::{Session, User},
};

/// A live token, as introspection describes it (RFC 7662 § 2.2).
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub kind: TokenKind,
    pub user: User,
    pub session: Session,
    /// Its `iat`.
    pub issued_at: DateTime<Utc>,
    /// Its `exp`.
    pub expires_at: DateTime<Utc>,
}

impl AuthService {
    /// The token if it is live right now: an access token that `me` would accept, or a refresh
    /// token that `refresh` would take (the session's current one, or the one its last rotation
    /// replaced, within `REFRESH_REUSE_GRACE_SECONDS`). `hint` (RFC 7662 § 2.1
    /// `token_type_hint`) only says which kind is tried first. `None` for anything else:
    /// malformed, foreign, expired, revoked, of a disabled account. Errors: SERVICE_UNAVAILABLE
    /// (the database away).
    pub async fn introspect(
        &self,
        token: &str,
        hint: Option<TokenKind>,
    ) -> Result<Option<LiveToken>, AppError> {
        let order = match hint {
            Some(TokenKind::Refresh) => [TokenKind::Refresh, TokenKind::Access],
            _ => [TokenKind::Access, TokenKind::Refresh],
        };
        // A token verifies as one kind at most (each has its own `typ` and `aud`).
        let Some((kind, claims)) = order.into_iter().find_map(|kind| {
            self.inner
                .tokens
                .verify(kind, token)
                .ok()
                .map(|claims| (kind, claims))
        }) else {
            return Ok(None);
        };
        let live = match kind {
            TokenKind::Access => self.live_access(token).await?,
            TokenKind::Refresh => self.live_refresh(&claims).await?,
        };
        Ok(live.map(|(user, session)| LiveToken {
            kind,
            user,
            session,
            issued_at: timestamp(claims.iat),
            expires_at: timestamp(claims.exp),
        }))
    }

    /// `me`'s own check.
    async fn live_access(&self, token: &str) -> Result<Option<(User, Session)>, AppError> {
        match self
            .authenticate(&BearerToken::Present(token.to_owned()))
            .await
        {
            Ok(authenticated) => Ok(Some((authenticated.user, authenticated.session))),
            Err(AppError::Unauthenticated(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// What `refresh` checks before it rotates, without rotating.
    async fn live_refresh(&self, claims: &Claims) -> Result<Option<(User, Session)>, AppError> {
        let now = now();
        let Some((user, session)) = self.store().sessions.find_session(claims.sid).await? else {
            return Ok(None);
        };
        let usable = user.id == claims.sub
            && user.disabled_at.is_none()
            && session.is_current_for(&user)
            && session.is_live(now)
            && (session.refresh_jti == claims.jti
                || self
                    .replaced_within_grace(&session, claims.jti, now)
                    .is_some());
        Ok(usable.then_some((user, session)))
    }
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}
