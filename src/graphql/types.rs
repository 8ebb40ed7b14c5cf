//! The GraphQL types. They are built from the store's domain types, never from entities, so
//! that nothing (a password hash, a jti) reaches a client by accident.

use async_graphql::{
    ComplexObject, Context, ID, InputObject, InputValueError, InputValueResult, Json, Result,
    Scalar, ScalarType, SimpleObject, Value,
};
use chrono::{SecondsFormat, Utc};
use uuid::Uuid;

use crate::{service::IssuedTokens, store};

/// A point in time, as an RFC 3339 date-time in UTC with exactly three fractional digits
/// (milliseconds), e.g. `2026-11-29T12:47:10.123Z`: what `new Date(value)` reads in every browser.
/// Input accepts any RFC 3339 date-time with an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime(pub chrono::DateTime<Utc>);

/// A point in time: an RFC 3339 date-time (the andimarek date-time specification), always in
/// UTC (`Z`) and with millisecond precision, e.g. `2026-11-29T12:47:10.123Z`.
#[Scalar(
    name = "DateTime",
    specified_by_url = "https://scalars.graphql.org/andimarek/date-time"
)]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|time| Self(time.with_timezone(&Utc)))
                .map_err(|_| InputValueError::custom("expected an RFC 3339 date-time")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl From<chrono::DateTime<Utc>> for DateTime {
    fn from(time: chrono::DateTime<Utc>) -> Self {
        Self(time)
    }
}

/// An account.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct User {
    #[graphql(skip)]
    pub user_id: Uuid,
    /// Stable identifier of the user.
    pub id: ID,
    /// The email as it was registered (trimmed); it is compared case-insensitively.
    pub email: String,
    /// The name the user can log in with besides the email; defaults to the email.
    pub username: String,
    /// When the account was created.
    pub created_at: DateTime,
    /// Whether the account's address was proven: a link mailed to it was followed
    /// (`verifyEmail`, `resetPassword`), or an operator said so. Accounts made before authql
    /// verified addresses start unverified.
    pub email_verified: bool,
    /// The account's roles, sorted (granted by an operator: `authql admin grant-role`); also
    /// in every access token's `roles` claim and in `/auth/verify`'s `X-Auth-Roles`.
    pub roles: Vec<String>,
}

impl From<store::User> for User {
    fn from(user: store::User) -> Self {
        Self {
            user_id: user.id,
            id: user.id.into(),
            email: user.email,
            username: user.username,
            created_at: user.created_at.into(),
            email_verified: user.email_verified_at.is_some(),
            roles: user.roles,
        }
    }
}

/// What proves the account besides its password, read when asked for.
#[ComplexObject]
impl User {
    /// Whether an authenticator app (TOTP, RFC 6238) is set up: a login then asks for one of
    /// its codes (MFA_REQUIRED).
    async fn totp_enabled(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(service(ctx)?.second_factors_of(self.user_id).await?.totp)
    }

    /// How many unused recovery codes are left (0 without TOTP).
    async fn recovery_codes_left(&self, ctx: &Context<'_>) -> Result<i32> {
        let left = service(ctx)?
            .second_factors_of(self.user_id)
            .await?
            .recovery_codes_left;
        Ok(i32::try_from(left).unwrap_or(i32::MAX))
    }

    /// The account's passkeys, oldest first.
    async fn passkeys(&self, ctx: &Context<'_>) -> Result<Vec<Passkey>> {
        Ok(service(ctx)?
            .passkeys_of(self.user_id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The OpenID Connect identities linked to the account ("Sign in with ..."), oldest first.
    async fn identities(&self, ctx: &Context<'_>) -> Result<Vec<Identity>> {
        Ok(service(ctx)?
            .identities_of(self.user_id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

/// An account at an OpenID Provider that signs in to this account.
#[derive(SimpleObject)]
pub struct Identity {
    /// The provider's name (`oidcProviders { name }`): what `unlinkIdentity` takes.
    pub provider: String,
    /// The address the provider gave when the identity was linked.
    pub email: Option<String>,
    /// When it was linked.
    pub linked_at: DateTime,
}

impl From<store::Identity> for Identity {
    fn from(identity: store::Identity) -> Self {
        Self {
            provider: identity.provider,
            email: identity.email,
            linked_at: identity.linked_at.into(),
        }
    }
}

/// An OpenID Provider people may sign in with (`OIDC_PROVIDERS`).
#[derive(SimpleObject)]
pub struct OidcProvider {
    /// What `beginOidcLogin` and `unlinkIdentity` take, e.g. `google`.
    pub name: String,
    /// What a "Sign in with ..." button shows, e.g. `Google`.
    pub display_name: String,
}

/// Where to send the browser to sign in at a provider.
#[derive(SimpleObject)]
pub struct OidcAuthorization {
    /// The provider's authorization endpoint with this sign-in's request; navigate to it.
    pub authorization_url: String,
    /// The request's `state`: the callback sends it back to `redirectUri` beside `code`.
    /// Keep it (e.g. in `sessionStorage`) and call `completeOidcLogin` only when the two match,
    /// so that a page cannot be made to complete someone else's sign-in (login CSRF).
    pub state: String,
}

/// A sign-in at an OpenID Provider.
#[derive(InputObject)]
pub struct BeginOidcLoginInput {
    /// A provider's `name` from `oidcProviders`.
    pub provider: String,
    /// The app's page the browser comes back to, with `code` and `state` (or `error` and
    /// `state`) in its query: one of OIDC_REDIRECT_URIS, exactly.
    pub redirect_uri: String,
    /// Link the identity to the signed-in caller's account instead of signing in (needs the
    /// access token, a recent proof and a verified address).
    pub link: Option<bool>,
}

fn service<'ctx>(ctx: &Context<'ctx>) -> Result<&'ctx crate::service::AuthService> {
    ctx.data::<crate::service::AuthService>()
}

/// A passkey (a WebAuthn credential) of the account.
#[derive(SimpleObject)]
pub struct Passkey {
    /// Pass it to `renamePasskey` and `deletePasskey`.
    pub id: ID,
    /// What the user called it (by default "Passkey").
    pub name: String,
    /// When it was registered.
    pub created_at: DateTime,
    /// When it last signed a login or a step-up, if ever.
    pub last_used_at: Option<DateTime>,
}

impl From<store::StoredPasskey> for Passkey {
    fn from(passkey: store::StoredPasskey) -> Self {
        Self {
            id: passkey.id.into(),
            name: passkey.name,
            created_at: passkey.created_at.into(),
            last_used_at: passkey.last_used_at.map(Into::into),
        }
    }
}

/// A new TOTP secret for an authenticator app; nothing is on until `confirmTotp`.
#[derive(SimpleObject)]
pub struct TotpEnrollment {
    /// The secret, base32 (RFC 4648, no padding), for typing into the app.
    pub secret: String,
    /// The same as an `otpauth://totp/...` URI (the Key Uri Format every app reads).
    pub otpauth_uri: String,
    /// `otpauthUri` as a QR code: an SVG document, to show as it is.
    pub qr_code_svg: String,
}

impl From<crate::service::second_factors::TotpEnrollment> for TotpEnrollment {
    fn from(enrollment: crate::service::second_factors::TotpEnrollment) -> Self {
        Self {
            secret: enrollment.secret,
            otpauth_uri: enrollment.otpauth_uri,
            qr_code_svg: enrollment.qr_code_svg,
        }
    }
}

/// A passkey login's challenge.
#[derive(SimpleObject)]
pub struct PasskeyChallenge {
    /// Give it back to `finishPasskeyLogin`; single use, 5 minutes.
    pub challenge_id: ID,
    /// PublicKeyCredentialRequestOptions in the JSON form
    /// `PublicKeyCredential.parseRequestOptionsFromJSON` takes, for
    /// `navigator.credentials.get({ publicKey })`.
    pub options: Json<serde_json::Value>,
}

/// One login of a user: it lives until it expires or is revoked, and its tokens with it.
#[derive(SimpleObject)]
pub struct Session {
    /// Stable identifier of the session; pass it to `revokeTokens` to end the session.
    pub id: ID,
    /// When the user logged in.
    pub created_at: DateTime,
    /// When the session's tokens were last rotated by `refresh`, if ever.
    pub last_refreshed_at: Option<DateTime>,
    /// When the session and its refresh token expire; refreshing does not move this.
    pub expires_at: DateTime,
    /// The User-Agent header of the login request.
    pub user_agent: Option<String>,
    /// The client address of the login request.
    pub ip_address: Option<String>,
    /// Whether this is the session making the request.
    pub current: bool,
    /// When its user last proved who they are in it: the login, or the last `reauthenticate`.
    /// A refresh does not move it. The `auth_time` of its access tokens.
    pub authenticated_at: DateTime,
    /// How: RFC 8176 values (`pwd` password, `otp` a TOTP or recovery code, `hwk`/`swk` a
    /// passkey bound to a device or synced, `user` user verification, `mfa` more than one
    /// factor). The `amr` of its access tokens.
    pub authentication_methods: Vec<String>,
    /// Where a page of `mySessions` that ends with this session stops: pass it as `after` for
    /// the next page. Opaque.
    pub cursor: String,
}

impl Session {
    pub fn new(session: store::Session, current_session: Uuid) -> Self {
        Self {
            cursor: crate::service::session_cursor(&session),
            id: session.id.into(),
            current: session.id == current_session,
            authenticated_at: session.authenticated_at.into(),
            authentication_methods: session
                .authentication_methods
                .iter()
                .map(str::to_owned)
                .collect(),
            created_at: session.created_at.into(),
            last_refreshed_at: session.last_refreshed_at.map(Into::into),
            expires_at: session.expires_at.into(),
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
    /// Exchange for a new pair with `refresh`; usable once. Null when the server keeps it in an
    /// HttpOnly cookie instead (`REFRESH_TOKEN_COOKIE=true`), so that page scripts never see it.
    pub refresh_token: Option<String>,
    /// Always "Bearer".
    pub token_type: String,
    /// When the access token expires.
    pub access_token_expires_at: DateTime,
    /// When the refresh token, and with it the session, expires.
    pub refresh_token_expires_at: DateTime,
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
            refresh_token: Some(issued.refresh_token),
            token_type: "Bearer".to_owned(),
            access_token_expires_at: issued.access_token_expires_at.into(),
            refresh_token_expires_at: issued.refresh_token_expires_at.into(),
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
    /// A TOTP or recovery code: needed on an account with TOTP unless the session's last
    /// proof is recent (else REAUTHENTICATION_REQUIRED).
    pub code: Option<String>,
}

/// The proof that the account's owner, not only a holder of its token, deletes it.
#[derive(InputObject)]
pub struct DeleteAccountInput {
    /// The password in use now.
    pub password: String,
    /// A TOTP or recovery code, as for `changePassword`.
    pub code: Option<String>,
}

/// The second step of a login that answered MFA_REQUIRED.
#[derive(InputObject)]
pub struct VerifyMfaInput {
    /// `extensions.mfaToken` of the MFA_REQUIRED error.
    pub mfa_token: String,
    /// A 6-digit code of the authenticator app, or a recovery code.
    pub code: String,
}

/// One proof of who the caller is, to make the session's last proof recent again.
#[derive(InputObject)]
pub struct ReauthenticateInput {
    /// The account's password.
    pub password: Option<String>,
    /// Or a TOTP or recovery code.
    pub code: Option<String>,
}

/// The new credential of a passkey registration.
#[derive(InputObject)]
pub struct FinishPasskeyRegistrationInput {
    /// `credential.toJSON()` of what `navigator.credentials.create()` returned.
    pub credential: Json<serde_json::Value>,
    /// What to call it (1 to 64 characters); "Passkey" by default.
    pub name: Option<String>,
}

/// What a passkey login is for; all optional.
#[derive(InputObject, Default)]
pub struct BeginPasskeyLoginInput {
    /// Only this account may sign in with it (the passkey is still chosen by the browser).
    pub email_or_username: Option<String>,
    /// The second step of a password login that answered MFA_REQUIRED.
    pub mfa_token: Option<String>,
    /// A step-up of the caller's own session (needs the access token): see `reauthenticate`.
    pub reauthenticate: Option<bool>,
}

/// The assertion of a passkey login.
#[derive(InputObject)]
pub struct FinishPasskeyLoginInput {
    /// `challengeId` from `beginPasskeyLogin`.
    pub challenge_id: ID,
    /// `credential.toJSON()` of what `navigator.credentials.get()` returned.
    pub credential: Json<serde_json::Value>,
}

/// A new password, proven by a link from a password-reset mail.
#[derive(InputObject)]
pub struct ResetPasswordInput {
    /// The `token` of the link (43 characters).
    pub token: String,
    /// 8 characters to 256 bytes; every byte counts.
    pub new_password: String,
}

/// A new address for the account, proven by the password.
#[derive(InputObject)]
pub struct RequestEmailChangeInput {
    /// The address to change to; it becomes the account's when the link mailed to it is
    /// followed.
    pub new_email: String,
    /// The password in use now.
    pub password: String,
    /// A TOTP or recovery code, as for `changePassword`.
    pub code: Option<String>,
}

/// What happened to a session (`sessionEvents`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEventType {
    /// A session began: register or login.
    Created,
    /// Its token pair was rotated by `refresh`.
    Refreshed,
    /// It was ended: logout, revokeTokens, revokeOtherSessions, changePassword, resetPassword,
    /// refresh-token reuse, deleteAccount, or an operator (`authql admin`).
    Revoked,
    /// A refresh found it past its idle timeout or absolute expiry.
    Expired,
}

/// One event of one of the subscriber's sessions.
#[derive(SimpleObject, Debug, Clone)]
pub struct SessionEvent {
    /// What happened.
    #[graphql(name = "type")]
    pub kind: SessionEventType,
    /// The session it happened to (as `mySessions` and `session { id }` show it).
    pub session_id: ID,
    /// When it happened, on the instance that did it.
    pub at: DateTime,
    /// Whether it is the session of the access token this subscription was opened with.
    pub current: bool,
}

impl SessionEvent {
    pub fn new(event: crate::service::events::SessionEvent, current_session: Uuid) -> Self {
        use crate::service::events::SessionEventKind as Kind;
        Self {
            kind: match event.kind {
                Kind::Created => SessionEventType::Created,
                Kind::Refreshed => SessionEventType::Refreshed,
                Kind::Revoked => SessionEventType::Revoked,
                Kind::Expired => SessionEventType::Expired,
            },
            session_id: event.session_id.into(),
            at: event.at.into(),
            current: event.session_id == current_session,
        }
    }
}
