//! The GraphQL types. They are built from the store's domain types, never from entities, so
//! that nothing (a password hash, a jti) reaches a client by accident.

use async_graphql::{ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{service::IssuedTokens, store};

/// An account.
#[derive(SimpleObject)]
pub struct User {
    /// Stable identifier of the user.
    pub id: ID,
    /// The email as it was registered (trimmed); it is compared case-insensitively.
    pub email: String,
    /// The name the user can log in with besides the email; defaults to the email.
    pub username: String,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
}

impl From<store::User> for User {
    fn from(user: store::User) -> Self {
        Self {
            id: user.id.into(),
            email: user.email,
            username: user.username,
            created_at: user.created_at,
        }
    }
}

/// One login of a user: it lives until it expires or is revoked, and its tokens with it.
#[derive(SimpleObject)]
pub struct Session {
    /// Stable identifier of the session; pass it to `revokeTokens` to end the session.
    pub id: ID,
    /// When the user logged in.
    pub created_at: DateTime<Utc>,
    /// When the session's tokens were last rotated by `refresh`, if ever.
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// When the session and its refresh token expire; refreshing does not move this.
    pub expires_at: DateTime<Utc>,
    /// The User-Agent header of the login request.
    pub user_agent: Option<String>,
    /// The client address of the login request.
    pub ip_address: Option<String>,
    /// Whether this is the session making the request.
    pub current: bool,
}

impl Session {
    pub fn new(session: store::Session, current_session: Uuid) -> Self {
        Self {
            id: session.id.into(),
            current: session.id == current_session,
            created_at: session.created_at,
            last_refreshed_at: session.last_refreshed_at,
            expires_at: session.expires_at,
            user_agent: session.user_agent,
            ip_address: session.ip_address,
        }
    }
}

/// A session's fresh token pair.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <accessToken>`; short-lived.
    pub access_token: String,
    /// Exchange for a new pair with `refresh`; usable once.
    pub refresh_token: String,
    /// Always "Bearer".
    pub token_type: String,
    /// When the access token expires.
    pub access_token_expires_at: DateTime<Utc>,
    /// When the refresh token, and with it the session, expires.
    pub refresh_token_expires_at: DateTime<Utc>,
    /// The signed-in user.
    pub user: User,
    /// The session these tokens belong to.
    pub session: Session,
}

impl From<IssuedTokens> for AuthPayload {
    fn from(issued: IssuedTokens) -> Self {
        let session_id = issued.session.id;
        Self {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            token_type: "Bearer".to_owned(),
            access_token_expires_at: issued.access_token_expires_at,
            refresh_token_expires_at: issued.refresh_token_expires_at,
            user: issued.user.into(),
            session: Session::new(issued.session, session_id),
        }
    }
}

/// The sessions that `revokeTokens` ended.
#[derive(SimpleObject)]
pub struct RevokeTokensPayload {
    /// The ids of the sessions ended by this call.
    pub revoked_session_ids: Vec<ID>,
    /// How many sessions were ended.
    pub revoked_count: i32,
}

impl From<Vec<Uuid>> for RevokeTokensPayload {
    fn from(ids: Vec<Uuid>) -> Self {
        Self {
            revoked_count: i32::try_from(ids.len()).unwrap_or(i32::MAX),
            revoked_session_ids: ids.into_iter().map(Into::into).collect(),
        }
    }
}

/// A new account.
#[derive(InputObject)]
pub struct RegisterInput {
    /// An email address; trimmed, and unique regardless of case.
    pub email: String,
    /// 8 characters to 256 bytes; every byte counts.
    pub password: String,
    /// 3 to 64 characters, no spaces or @; defaults to the email.
    pub username: Option<String>,
}

/// Credentials for a new session.
#[derive(InputObject)]
pub struct LoginInput {
    /// The account's email or username, in any case.
    pub email_or_username: String,
    /// The account's password.
    pub password: String,
}

/// Sessions to end, named by id, by one of their tokens, or both.
#[derive(InputObject)]
pub struct RevokeTokensInput {
    /// Ids of the caller's sessions.
    pub session_ids: Option<Vec<ID>>,
    /// Access or refresh tokens of the caller's sessions.
    pub tokens: Option<Vec<String>>,
}

/// A new password, proven by the current one.
#[derive(InputObject)]
pub struct ChangePasswordInput {
    /// The password in use now.
    pub current_password: String,
    /// 8 characters to 256 bytes; every byte counts.
    pub new_password: String,
}
