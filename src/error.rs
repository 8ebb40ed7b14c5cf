//! The one error type a client can see. Each variant has exactly one `extensions.code`; internal
//! causes are logged where they happen and never reach the client.
//!
//! `AppError` deliberately does not implement `Display`: async-graphql converts anything that
//! does into a bare error without extensions, and `?` would pick that conversion silently. The
//! only way out is `From<AppError> for async_graphql::Error`, which sets the code.

use async_graphql::ErrorExtensions as _;

/// Why a request was not accepted as signed in (`extensions.reason` of UNAUTHENTICATED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnauthenticatedReason {
    /// No `Authorization: Bearer` header on an operation that needs one.
    Missing,
    /// Not a token authql issued: bad shape, bad signature, wrong issuer, missing claims.
    Malformed,
    /// A token whose `kid` names no key this instance has: a forgery, or a token of a key that
    /// another instance signs with and this one has not been given yet (a rotation done in one
    /// step). Told to the client as `MALFORMED`; a refresh cookie holding it is kept, as
    /// another instance may still take it.
    UnknownKey,
    /// A genuine token past its `exp`.
    Expired,
    /// A genuine token whose session was revoked, rotated away or has ended.
    Revoked,
    /// A refresh token where an access token belongs, or the other way round.
    WrongTokenType,
    /// A refresh token that was already rotated away: it may have been stolen, so its whole
    /// session has been revoked.
    RefreshTokenReused,
}

impl UnauthenticatedReason {
    pub fn as_code(self) -> &'static str {
        match self {
            Self::Missing => "MISSING",
            Self::Malformed | Self::UnknownKey => "MALFORMED",
            Self::Expired => "EXPIRED",
            Self::Revoked => "REVOKED",
            Self::WrongTokenType => "WRONG_TOKEN_TYPE",
            Self::RefreshTokenReused => "REFRESH_TOKEN_REUSED",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "this operation needs a token: an access token (Authorization: Bearer ...), or for refresh a refresh token"
            }
            Self::Malformed | Self::UnknownKey => "the token is not valid",
            Self::Expired => "the token has expired",
            Self::Revoked => "the token's session has ended",
            Self::WrongTokenType => "this is the wrong kind of token for this operation",
            Self::RefreshTokenReused => {
                "this refresh token was already used; its session has been ended for safety"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    /// BAD_USER_INPUT: the input broke a rule; `field` names the input field. Nothing was changed.
    BadUserInput {
        field: &'static str,
        message: String,
    },
    /// EMAIL_TAKEN: another account has this email (compared trimmed and case-insensitively).
    EmailTaken,
    /// USERNAME_TAKEN: another account has this username (compared case-insensitively).
    UsernameTaken,
    /// INVALID_CREDENTIALS: unknown account or wrong password; deliberately the same answer.
    InvalidCredentials,
    /// ACCOUNT_DISABLED: an operator disabled the account (`authql admin disable-user`). Only
    /// said after the right password (login) or a genuine refresh token (refresh), so it tells
    /// nobody else whether the account exists.
    AccountDisabled,
    /// UNAUTHENTICATED: no usable token; `reason` says why.
    Unauthenticated(UnauthenticatedReason),
    /// RATE_LIMITED: too many attempts from this client or at this account; `retryAfterSeconds`
    /// says when the next one will be taken.
    RateLimited { retry_after_seconds: u64 },
    /// INVALID_TOKEN: a password-reset or email-verification token that cannot be used;
    /// `reason` says why (`EXPIRED`, `USED`, `UNKNOWN`: a token of another purpose is
    /// `UNKNOWN`). Nothing was changed.
    InvalidToken(crate::store::TokenRefusal),
    /// EMAIL_NOT_VERIFIED: the account's address must be verified first
    /// (`EMAIL_VERIFICATION=required`); a link to verify it has been mailed.
    EmailNotVerified,
    /// FORBIDDEN (`reason: ORIGIN_NOT_ALLOWED`): a cookie-authenticated request from an `Origin`
    /// that may not use the cookie (CSRF); nothing was changed.
    OriginNotAllowed,
    /// FORBIDDEN (`reason: NOT_THE_CALLER`): an Apollo Federation `_entities` representation
    /// of a `User` other than the signed-in caller (`FEDERATION=true`); a subgraph resolves
    /// only the caller's own account, and says nothing about whether the other exists.
    NotTheCaller,
    /// SERVICE_UNAVAILABLE with `retryAfterSeconds` ([`DATABASE_RETRY_AFTER_SECONDS`]): the
    /// database cannot be reached right now (down, failing over, read-only, locked); retry
    /// later. Over HTTP also `Retry-After` (RFC 9110 § 10.2.3).
    ServiceUnavailable,
    /// SERVICE_UNAVAILABLE with `retryAfterSeconds`: too much work is waiting (the password
    /// hashing queue is full); refused at once, nothing changed.
    Overloaded { retry_after_seconds: u64 },
    /// MFA_REQUIRED: the password was right, and the account has a second factor: no session
    /// yet. `mfaToken` (opaque, single use, 5 minutes) goes to `verifyMfa` or
    /// `beginPasskeyLogin`; `methods` lists what the account has (`TOTP`, `RECOVERY_CODE`,
    /// `PASSKEY`).
    MfaRequired {
        mfa_token: String,
        methods: Vec<&'static str>,
    },
    /// REAUTHENTICATION_REQUIRED: the operation changes how the account is proven and the
    /// session's last proof is older than `REAUTHENTICATION_MAX_AGE`: call `reauthenticate`
    /// (or pass `code`, where the input has one), then the same operation again.
    ReauthenticationRequired,
    /// TOTP_ALREADY_ENABLED: `enrollTotp` while TOTP is on; `disableTotp` first.
    TotpAlreadyEnabled,
    /// TOTP_NOT_ENABLED: `regenerateRecoveryCodes` while TOTP is off.
    TotpNotEnabled,
    /// PASSKEY_LIMIT_REACHED: the account has the most passkeys it may have (20); delete one
    /// first.
    PasskeyLimitReached,
    /// PASSKEYS_NOT_CONFIGURED: this server has no usable WebAuthn relying party (its
    /// `WEBAUTHN_RP_ID` could not be derived: `PUBLIC_URL` names an IP address).
    PasskeysNotConfigured,
    /// ACCOUNT_EXISTS: an OpenID Connect sign-in whose identity cannot be linked to the account
    /// that has its address (one side has not proven the address: the provider's
    /// `email_verified`, or authql's own verification), or whose identity is another account's
    /// (`link: true`). Sign in to that account another way, then link (README, "Sign in with
    /// OpenID Connect").
    AccountExists,
    /// EMAIL_NOT_VERIFIED with `reason`: an OpenID Connect sign-in that needs a proven address
    /// and lacks one. `PROVIDER`: the provider did not say `email_verified: true` (or gave no
    /// address) for an identity no account has, so no account is made or linked; `ACCOUNT`:
    /// `beginOidcLogin` with `link: true` on an account whose own address is not verified.
    AddressNotProven { by_provider: bool },
    /// LAST_LOGIN_METHOD: `unlinkIdentity` of the account's only way in (no password, no other
    /// identity); nothing was changed.
    LastLoginMethod,
    /// INTERNAL_SERVER_ERROR: something failed on our side; the cause is in the server log only.
    Internal,
}

impl AppError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadUserInput { .. } => "BAD_USER_INPUT",
            Self::EmailTaken => "EMAIL_TAKEN",
            Self::UsernameTaken => "USERNAME_TAKEN",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::AccountDisabled => "ACCOUNT_DISABLED",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::InvalidToken(_) => "INVALID_TOKEN",
            Self::EmailNotVerified | Self::AddressNotProven { .. } => "EMAIL_NOT_VERIFIED",
            Self::OriginNotAllowed | Self::NotTheCaller => "FORBIDDEN",
            Self::ServiceUnavailable | Self::Overloaded { .. } => "SERVICE_UNAVAILABLE",
            Self::MfaRequired { .. } => "MFA_REQUIRED",
            Self::ReauthenticationRequired => "REAUTHENTICATION_REQUIRED",
            Self::TotpAlreadyEnabled => "TOTP_ALREADY_ENABLED",
            Self::TotpNotEnabled => "TOTP_NOT_ENABLED",
            Self::PasskeysNotConfigured => "PASSKEYS_NOT_CONFIGURED",
            Self::PasskeyLimitReached => "PASSKEY_LIMIT_REACHED",
            Self::AccountExists => "ACCOUNT_EXISTS",
            Self::LastLoginMethod => "LAST_LOGIN_METHOD",
            Self::Internal => "INTERNAL_SERVER_ERROR",
        }
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            Self::BadUserInput { message, .. } => message.clone(),
            Self::EmailTaken => "an account with this email already exists".into(),
            Self::UsernameTaken => "this username is already taken".into(),
            Self::InvalidCredentials => "the email, username or password is not right".into(),
            Self::AccountDisabled => "this account is disabled".into(),
            Self::Unauthenticated(reason) => reason.message().into(),
            Self::RateLimited {
                retry_after_seconds,
            } => {
                format!("too many attempts; try again in {retry_after_seconds} s")
            }
            Self::InvalidToken(crate::store::TokenRefusal::Expired) => {
                "this link has expired; ask for a new one".into()
            }
            Self::InvalidToken(crate::store::TokenRefusal::Used) => {
                "this link was already used, or a newer one replaced it".into()
            }
            Self::InvalidToken(crate::store::TokenRefusal::Unknown) => {
                "this link is not valid".into()
            }
            Self::EmailNotVerified => {
                "confirm your email address first: a link to do so has been sent to it".into()
            }
            Self::OriginNotAllowed => {
                "the refresh-token cookie may only be used from an allowed origin".into()
            }
            Self::NotTheCaller => "only the signed-in user's own account can be read".into(),
            Self::ServiceUnavailable => "the service is unavailable for a moment; try again".into(),
            Self::Overloaded {
                retry_after_seconds,
            } => format!("the service is busy; try again in {retry_after_seconds} s"),
            Self::MfaRequired { .. } => {
                "a second factor is needed: complete the login with verifyMfa or a passkey".into()
            }
            Self::ReauthenticationRequired => {
                "confirm it is you first: call reauthenticate, then try again".into()
            }
            Self::TotpAlreadyEnabled => "an authenticator app is set up already".into(),
            Self::TotpNotEnabled => "no authenticator app is set up".into(),
            Self::PasskeysNotConfigured => "passkeys are not available on this server".into(),
            Self::PasskeyLimitReached => {
                "this account has as many passkeys as it may have; delete one first".into()
            }
            Self::AddressNotProven { by_provider: true } => {
                "the provider has not verified this account's email address, so it cannot be used to sign in here".into()
            }
            Self::AddressNotProven { by_provider: false } => {
                "verify this account's email address before linking a provider to it".into()
            }
            Self::AccountExists => {
                "an account with this address exists: sign in to it another way, then link this provider".into()
            }
            Self::LastLoginMethod => {
                "this is the only way into the account: set a password or link another provider first".into()
            }
            Self::Internal => "internal server error".into(),
        }
    }

    pub fn bad_input(field: &'static str, message: impl Into<String>) -> Self {
        Self::BadUserInput {
            field,
            message: message.into(),
        }
    }

    /// Logs the cause, which stays on the server, and returns the generic error the client sees.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::Internal
    }
}

/// `retryAfterSeconds` of a database-away SERVICE_UNAVAILABLE, in seconds: a restart or a
/// primary failover takes seconds, and a client that waits a second between tries neither
/// hammers the database meanwhile nor waits long once it is back.
pub const DATABASE_RETRY_AFTER_SECONDS: u64 = 1;

impl From<crate::store::StoreError> for AppError {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match error {
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::UsernameTaken => Self::UsernameTaken,
            StoreError::IdentityTaken => Self::AccountExists,
            StoreError::Unavailable(cause) => {
                tracing::warn!(event = "database_unavailable", error = %cause, "database unavailable");
                Self::ServiceUnavailable
            }
            StoreError::Database(cause) => Self::internal(cause),
        }
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(error: AppError) -> Self {
        async_graphql::Error::new(error.message()).extend_with(|_, extensions| {
            extensions.set("code", error.code());
            match &error {
                AppError::BadUserInput { field, .. } => extensions.set("field", *field),
                AppError::Unauthenticated(reason) => extensions.set("reason", reason.as_code()),
                AppError::ServiceUnavailable => {
                    extensions.set("retryAfterSeconds", DATABASE_RETRY_AFTER_SECONDS)
                }
                AppError::RateLimited {
                    retry_after_seconds,
                }
                | AppError::Overloaded {
                    retry_after_seconds,
                } => extensions.set("retryAfterSeconds", *retry_after_seconds),
                AppError::OriginNotAllowed => extensions.set("reason", "ORIGIN_NOT_ALLOWED"),
                AppError::NotTheCaller => extensions.set("reason", "NOT_THE_CALLER"),
                AppError::AddressNotProven { by_provider } => {
                    extensions.set("reason", if *by_provider { "PROVIDER" } else { "ACCOUNT" })
                }
                AppError::InvalidToken(refusal) => extensions.set("reason", refusal.as_code()),
                AppError::MfaRequired { mfa_token, methods } => {
                    extensions.set("mfaToken", mfa_token.as_str());
                    extensions.set("methods", methods.clone());
                }
                _ => {}
            }
        })
    }
}
