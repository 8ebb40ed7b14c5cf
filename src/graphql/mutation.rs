use async_graphql::{Context, ID, Object, Result};
use axum::http::header::SET_COOKIE;

use super::EXPENSIVE_FIELD_COST;
use super::refresh_cookie::{RefreshCookie, RequestRefreshCookie};
use super::types::{
    AuthPayload, BeginOidcLoginInput, BeginPasskeyLoginInput, ChangePasswordInput,
    DeleteAccountInput, FinishPasskeyLoginInput, FinishPasskeyRegistrationInput, LoginInput,
    OidcAuthorization, Passkey, PasskeyChallenge, ReauthenticateInput, RegisterInput,
    RequestEmailChangeInput, ResetPasswordInput, RevokeTokensInput, RevokeTokensPayload, Session,
    TotpEnrollment, User, VerifyMfaInput,
};
use crate::{
    auth::{SignedIn, signed_in},
    error::{AppError, UnauthenticatedReason},
    service::{
        AuthService, ClientInfo, IssuedTokens, Registration, second_factors::PasskeyLoginRequest,
    },
};

/// Changes. `register`, `login` and `refresh` are public; the others need
/// `Authorization: Bearer <accessToken>`.
pub struct MutationRoot;

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Creates an account and its first session, and mails a link to verify its address
    /// (unless `EMAIL_VERIFICATION=off`). With `EMAIL_VERIFICATION=required` no session is made:
    /// the answer is EMAIL_NOT_VERIFIED, for a taken address too (its owner is told by mail).
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> Result<AuthPayload> {
        let registration = Registration {
            email: input.email,
            password: input.password,
            username: input.username,
        };
        let issued = service(ctx)?.register(registration, client(ctx)).await?;
        Ok(deliver(ctx, issued))
    }

    /// Opens a new session; every login gets its own. With `EMAIL_VERIFICATION=required`, an
    /// unverified account gets EMAIL_NOT_VERIFIED (after the right password) and a fresh link.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<AuthPayload> {
        let issued = service(ctx)?
            .login(&input.email_or_username, input.password, client(ctx))
            .await?;
        Ok(deliver(ctx, issued))
    }

    /// Begins a sign-in at an OpenID Provider: send the browser to `authorizationUrl`. The
    /// provider returns it to authql, which sends it on to `redirectUri` with a one-time `code`
    /// (60 s) for `completeOidcLogin` and the `state` (or with `error`, RFC 6749 § 4.1.2.1).
    /// With `link: true` (and the access token), the identity is linked to the caller's account
    /// instead. Errors: BAD_USER_INPUT (`provider`, `redirectUri`), REAUTHENTICATION_REQUIRED
    /// and EMAIL_NOT_VERIFIED (`link`), SERVICE_UNAVAILABLE (the provider cannot be reached),
    /// RATE_LIMITED.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn begin_oidc_login(
        &self,
        ctx: &Context<'_>,
        input: BeginOidcLoginInput,
    ) -> Result<OidcAuthorization> {
        let linking = match input.link {
            Some(true) => Some(signed_in(ctx).await?),
            _ => None,
        };
        let (authorization_url, state) = service(ctx)?
            .begin_oidc_login(&input.provider, &input.redirect_uri, linking, &client(ctx))
            .await?;
        Ok(OidcAuthorization {
            authorization_url,
            state,
        })
    }

    /// Completes an OpenID Connect sign-in with the `code` the callback gave `redirectUri`:
    /// a session, as `login` gives it (`amr` holds `fed`). A first sign-in makes an account
    /// when the provider verified the address and no account has it; an account that has it is
    /// linked only when its own address is verified too. A link (`link: true`) needs the
    /// access token of the session that began it, and answers that session's new pair.
    /// Errors: INVALID_TOKEN (`code` unknown, used or expired), ACCOUNT_EXISTS,
    /// EMAIL_NOT_VERIFIED (`reason: PROVIDER`, or the account's own with
    /// `EMAIL_VERIFICATION=required`), ACCOUNT_DISABLED, MFA_REQUIRED, INVALID_CREDENTIALS (the
    /// account's credentials changed, or the identity was unlinked, while it ran), RATE_LIMITED.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn complete_oidc_login(&self, ctx: &Context<'_>, code: String) -> Result<AuthPayload> {
        let caller = signed_in(ctx).await;
        let issued = service(ctx)?
            .complete_oidc_login(&code, caller, client(ctx))
            .await?;
        Ok(deliver(ctx, issued))
    }

    /// Unlinks the caller's identity of `provider` and, as deleting a passkey does, ends the
    /// caller's other sessions; `false` when none is linked. Needs a recent proof. Errors:
    /// LAST_LOGIN_METHOD (it is the account's only way in: set a password with
    /// `requestPasswordReset`, or link another provider, first), REAUTHENTICATION_REQUIRED.
    #[graphql(guard = "SignedIn")]
    async fn unlink_identity(&self, ctx: &Context<'_>, provider: String) -> Result<bool> {
        Ok(service(ctx)?
            .unlink_identity(signed_in(ctx).await?, &provider)
            .await?)
    }

    /// Exchanges a refresh token for a new pair of the same session; the old pair dies at once.
    /// Without `refreshToken`, the refresh-token cookie is used (when the server keeps the token
    /// in one), and then only from an allowed `Origin`.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn refresh(
        &self,
        ctx: &Context<'_>,
        refresh_token: Option<String>,
    ) -> Result<AuthPayload> {
        let (token, from_cookie) = match refresh_token {
            Some(token) => (token, false),
            None => (cookie_refresh_token(ctx)?, true),
        };
        match service(ctx)?.refresh(&token, client(ctx)).await {
            Ok(issued) => Ok(deliver(ctx, issued)),
            Err(error) => {
                // A cookie that can never work again is deleted, so the browser stops sending it.
                // One signed by a key this instance does not know yet (a rolling deploy of a new
                // key) may work on another instance, or here after the deploy: it is kept.
                if from_cookie
                    && matches!(error, AppError::Unauthenticated(reason) if reason != UnauthenticatedReason::UnknownKey)
                {
                    clear_cookie(ctx);
                }
                Err(error.into())
            }
        }
    }

    /// Ends a session and deletes the refresh-token cookie. With `refreshToken` (the session's
    /// current refresh token), the session it belongs to, which works when the access token has
    /// already expired; without it, the session of this request's access token, or, when there
    /// is no usable access token, the session of the refresh-token cookie.
    async fn logout(&self, ctx: &Context<'_>, refresh_token: Option<String>) -> Result<bool> {
        let service = service(ctx)?;
        let caller = signed_in(ctx).await;
        match (refresh_token, caller) {
            (Some(token), caller) => {
                service
                    .logout_with_refresh_token(&token, caller.ok())
                    .await?
            }
            (None, Ok(caller)) => service.logout(caller).await?,
            (None, Err(refused)) => {
                let has_cookie = ctx
                    .data_opt::<RequestRefreshCookie>()
                    .is_some_and(|cookie| cookie.token.is_some() || cookie.ambiguous);
                if !has_cookie {
                    return Err(refused.into());
                }
                let token = cookie_refresh_token(ctx)?;
                service.logout_with_refresh_token(&token, None).await?
            }
        }
        clear_cookie(ctx);
        Ok(true)
    }

    /// Ends the caller's sessions named by id or token. Unknown, malformed, expired or foreign
    /// entries are skipped silently. At most 100 entries in all.
    #[graphql(guard = "SignedIn")]
    async fn revoke_tokens(
        &self,
        ctx: &Context<'_>,
        input: RevokeTokensInput,
    ) -> Result<RevokeTokensPayload> {
        let session_ids: Vec<String> = input
            .session_ids
            .unwrap_or_default()
            .into_iter()
            .map(ID::into)
            .collect();
        let tokens = input.tokens.unwrap_or_default();
        let caller = signed_in(ctx).await?;
        let revoked = service(ctx)?.revoke(caller, &session_ids, &tokens).await?;
        if revoked.contains(&caller.session.id) {
            clear_cookie(ctx);
        }
        Ok(revoked.into())
    }

    /// Ends all the caller's sessions but the current one; returns how many.
    #[graphql(guard = "SignedIn")]
    async fn revoke_other_sessions(&self, ctx: &Context<'_>) -> Result<i32> {
        let ended = service(ctx)?
            .revoke_other_sessions(signed_in(ctx).await?)
            .await?;
        Ok(i32::try_from(ended).unwrap_or(i32::MAX))
    }

    /// Changes the caller's password and ends every other session of the caller, unless a
    /// reset, another change or a disable landed while it ran (that one wins). Errors:
    /// INVALID_CREDENTIALS (wrong current password), BAD_USER_INPUT (`newPassword`),
    /// UNAUTHENTICATED `REVOKED` (this session was ended meanwhile; nothing changed),
    /// RATE_LIMITED.
    #[graphql(
        guard = "SignedIn",
        complexity = "EXPENSIVE_FIELD_COST + child_complexity"
    )]
    async fn change_password(&self, ctx: &Context<'_>, input: ChangePasswordInput) -> Result<bool> {
        service(ctx)?
            .change_password(
                signed_in(ctx).await?,
                input.current_password,
                input.new_password,
                input.code.as_deref(),
                client(ctx),
            )
            .await?;
        Ok(true)
    }

    /// Deletes the caller's account and every session of it, proven by the current password;
    /// every token of it is refused from the next request on, and the email can register
    /// again. Rate-limited as `changePassword` is. Errors: INVALID_CREDENTIALS (wrong password;
    /// nothing changed), UNAUTHENTICATED `REVOKED` (a reset, password change or disable landed
    /// meanwhile: the account stays), RATE_LIMITED.
    #[graphql(
        guard = "SignedIn",
        complexity = "EXPENSIVE_FIELD_COST + child_complexity"
    )]
    async fn delete_account(&self, ctx: &Context<'_>, input: DeleteAccountInput) -> Result<bool> {
        service(ctx)?
            .delete_account(
                signed_in(ctx).await?,
                input.password,
                input.code.as_deref(),
                client(ctx),
            )
            .await?;
        clear_cookie(ctx);
        Ok(true)
    }

    /// Mails a link to set a new password to the account with this address, if there is one
    /// and it is enabled. Always `true` for a well-formed address, whether or not an account
    /// has it, and in the same time. Errors: BAD_USER_INPUT (`email`), RATE_LIMITED (this
    /// client, or this address: at most RATE_LIMIT_MAILS_PER_ADDRESS_PER_HOUR mails an hour).
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn request_password_reset(&self, ctx: &Context<'_>, email: String) -> Result<bool> {
        service(ctx)?
            .request_password_reset(&email, client(ctx))
            .await?;
        Ok(true)
    }

    /// Sets a new password with the token of a reset link: every session of the account ends
    /// (REVOKED events; the refresh cookie is cleared), the address is marked verified, and
    /// every other reset link of the account stops working. Errors: INVALID_TOKEN (`reason`
    /// EXPIRED, USED or UNKNOWN), BAD_USER_INPUT (`newPassword`), RATE_LIMITED.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn reset_password(&self, ctx: &Context<'_>, input: ResetPasswordInput) -> Result<bool> {
        service(ctx)?
            .reset_password(&input.token, input.new_password, client(ctx))
            .await?;
        clear_cookie(ctx);
        Ok(true)
    }

    /// Mails a fresh verification link to the caller's address; `false` (nothing mailed) when
    /// it is verified already. Errors: RATE_LIMITED, BAD_USER_INPUT `email` (an address from
    /// before authql sent mail that mail cannot reach: change it with `requestEmailChange`).
    #[graphql(
        guard = "SignedIn",
        complexity = "EXPENSIVE_FIELD_COST + child_complexity"
    )]
    async fn send_verification_email(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(service(ctx)?
            .send_verification_email(signed_in(ctx).await?, client(ctx))
            .await?)
    }

    /// Verifies the address a verification link was sent to, with its token; for a link from
    /// `requestEmailChange`, this is when the account's email becomes the new one. Needs no
    /// access token (the link may be opened on another device). Errors: INVALID_TOKEN (`reason`
    /// EXPIRED, USED (also: the account's address changed since), UNKNOWN), EMAIL_TAKEN (the new
    /// address was taken meanwhile), RATE_LIMITED.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn verify_email(&self, ctx: &Context<'_>, token: String) -> Result<User> {
        Ok(service(ctx)?
            .verify_email(&token, client(ctx))
            .await?
            .into())
    }

    /// Asks to change the caller's address, proven by the password: a link goes to the new
    /// address (the change happens when it is followed, `verifyEmail`) and a notice to the
    /// current one. Errors: EMAIL_TAKEN (another account has the new address),
    /// INVALID_CREDENTIALS, BAD_USER_INPUT (`newEmail`), RATE_LIMITED.
    #[graphql(
        guard = "SignedIn",
        complexity = "EXPENSIVE_FIELD_COST + child_complexity"
    )]
    async fn request_email_change(
        &self,
        ctx: &Context<'_>,
        input: RequestEmailChangeInput,
    ) -> Result<bool> {
        service(ctx)?
            .request_email_change(
                signed_in(ctx).await?,
                &input.new_email,
                input.password,
                input.code.as_deref(),
                client(ctx),
            )
            .await?;
        Ok(true)
    }

    /// Starts setting up an authenticator app: a new secret (also as an `otpauth://` URI and a
    /// QR code) that stays off until `confirmTotp`. Needs a recent proof. Errors:
    /// REAUTHENTICATION_REQUIRED, TOTP_ALREADY_ENABLED.
    #[graphql(guard = "SignedIn")]
    async fn enroll_totp(&self, ctx: &Context<'_>) -> Result<TotpEnrollment> {
        Ok(service(ctx)?
            .enroll_totp(signed_in(ctx).await?)
            .await?
            .into())
    }

    /// Turns the authenticator app on with a code it shows, and returns 10 recovery codes,
    /// each usable once instead of a code (shown this once). Ends the caller's other sessions.
    /// Errors: INVALID_CREDENTIALS (a wrong code, or no enrollment), RATE_LIMITED.
    #[graphql(
        guard = "SignedIn",
        complexity = "EXPENSIVE_FIELD_COST + child_complexity"
    )]
    async fn confirm_totp(&self, ctx: &Context<'_>, code: String) -> Result<Vec<String>> {
        Ok(service(ctx)?
            .confirm_totp(signed_in(ctx).await?, &code, client(ctx))
            .await?)
    }

    /// Turns the authenticator app off, deletes the recovery codes and ends the caller's other
    /// sessions; `false` when it was off. Needs a recent proof. Errors:
    /// REAUTHENTICATION_REQUIRED.
    #[graphql(guard = "SignedIn")]
    async fn disable_totp(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(service(ctx)?.disable_totp(signed_in(ctx).await?).await?)
    }

    /// 10 new recovery codes; the old ones stop working. Needs a recent proof. Errors:
    /// REAUTHENTICATION_REQUIRED, TOTP_NOT_ENABLED.
    #[graphql(guard = "SignedIn")]
    async fn regenerate_recovery_codes(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        Ok(service(ctx)?
            .regenerate_recovery_codes(signed_in(ctx).await?)
            .await?)
    }

    /// Completes a login that answered MFA_REQUIRED, with a code of the authenticator app or a
    /// recovery code: the session, as `login` gives it. Errors: INVALID_CREDENTIALS (a wrong
    /// or reused code), INVALID_TOKEN (`mfaToken` used, used up by 5 wrong codes, or older than
    /// 5 minutes: log in again), RATE_LIMITED.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn verify_mfa(&self, ctx: &Context<'_>, input: VerifyMfaInput) -> Result<AuthPayload> {
        let issued = service(ctx)?
            .verify_mfa(&input.mfa_token, &input.code, client(ctx))
            .await?;
        Ok(deliver(ctx, issued))
    }

    /// Proves the caller again so that the operations that need a recent proof go through:
    /// the password on an account without a second factor, a TOTP or recovery code (`code`) on
    /// one with TOTP; a passkey does the same through `beginPasskeyLogin(input:
    /// { reauthenticate: true })`. Returns the session with its new `authenticatedAt`. Errors:
    /// INVALID_CREDENTIALS, BAD_USER_INPUT (`password`: neither given; `code`: the account has a
    /// second factor, the password alone is not enough), RATE_LIMITED.
    #[graphql(
        guard = "SignedIn",
        complexity = "EXPENSIVE_FIELD_COST + child_complexity"
    )]
    async fn reauthenticate(
        &self,
        ctx: &Context<'_>,
        input: ReauthenticateInput,
    ) -> Result<Session> {
        let caller = signed_in(ctx).await?;
        let session = service(ctx)?
            .reauthenticate(caller, input.password, input.code, client(ctx))
            .await?;
        Ok(Session::new(session, caller.session.id))
    }

    /// The options for `navigator.credentials.create()`, as JSON for
    /// `PublicKeyCredential.parseCreationOptionsFromJSON`. Needs a recent proof. Errors:
    /// REAUTHENTICATION_REQUIRED, PASSKEYS_NOT_CONFIGURED.
    #[graphql(guard = "SignedIn")]
    async fn begin_passkey_registration(
        &self,
        ctx: &Context<'_>,
    ) -> Result<async_graphql::Json<serde_json::Value>> {
        Ok(async_graphql::Json(
            service(ctx)?
                .begin_passkey_registration(signed_in(ctx).await?)
                .await?,
        ))
    }

    /// Stores the passkey `navigator.credentials.create()` made. Ends the caller's other
    /// sessions. Needs a recent proof. Errors: INVALID_CREDENTIALS (it does not verify, or
    /// its ceremony is unknown, used or expired), BAD_USER_INPUT (`credential`, `name`),
    /// REAUTHENTICATION_REQUIRED, PASSKEYS_NOT_CONFIGURED.
    #[graphql(guard = "SignedIn")]
    async fn finish_passkey_registration(
        &self,
        ctx: &Context<'_>,
        input: FinishPasskeyRegistrationInput,
    ) -> Result<Passkey> {
        Ok(service(ctx)?
            .finish_passkey_registration(signed_in(ctx).await?, input.credential.0, input.name)
            .await?
            .into())
    }

    /// Renames one of the caller's passkeys. Errors: BAD_USER_INPUT (`id`, `name`).
    #[graphql(guard = "SignedIn")]
    async fn rename_passkey(&self, ctx: &Context<'_>, id: ID, name: String) -> Result<Passkey> {
        Ok(service(ctx)?
            .rename_passkey(signed_in(ctx).await?, &id, &name)
            .await?
            .into())
    }

    /// Deletes one of the caller's passkeys and ends the caller's other sessions (those it
    /// signed among them); `false` when there is no such passkey. Needs a recent proof.
    /// Errors: REAUTHENTICATION_REQUIRED.
    #[graphql(guard = "SignedIn")]
    async fn delete_passkey(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        Ok(service(ctx)?
            .delete_passkey(signed_in(ctx).await?, &id)
            .await?)
    }

    /// A challenge for `navigator.credentials.get()`: no name needed, the browser offers the
    /// passkeys it has for this site. With `mfaToken`, the second step of a password login;
    /// with `reauthenticate: true` (and the access token), a step-up of the caller's session.
    /// Errors: INVALID_TOKEN (`mfaToken`), UNAUTHENTICATED (`reauthenticate` without a token),
    /// PASSKEYS_NOT_CONFIGURED, RATE_LIMITED.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn begin_passkey_login(
        &self,
        ctx: &Context<'_>,
        input: Option<BeginPasskeyLoginInput>,
    ) -> Result<PasskeyChallenge> {
        let input = input.unwrap_or_default();
        let request = PasskeyLoginRequest {
            email_or_username: input.email_or_username,
            mfa_token: input.mfa_token,
            reauthenticate: input.reauthenticate.unwrap_or(false),
        };
        let caller = if request.reauthenticate {
            signed_in(ctx).await
        } else {
            Err(AppError::Unauthenticated(UnauthenticatedReason::Missing))
        };
        let (challenge_id, options) = service(ctx)?
            .begin_passkey_login(request, caller, client(ctx))
            .await?;
        Ok(PasskeyChallenge {
            challenge_id: challenge_id.into(),
            options: async_graphql::Json(options),
        })
    }

    /// Signs in with the passkey `navigator.credentials.get()` used: a session as `login`
    /// gives it (for a step-up, the caller's session with a new pair). Errors:
    /// INVALID_CREDENTIALS, INVALID_TOKEN (the challenge is unknown, used or expired),
    /// BAD_USER_INPUT (`credential`), ACCOUNT_DISABLED, RATE_LIMITED, PASSKEYS_NOT_CONFIGURED.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn finish_passkey_login(
        &self,
        ctx: &Context<'_>,
        input: FinishPasskeyLoginInput,
    ) -> Result<AuthPayload> {
        let issued = service(ctx)?
            .finish_passkey_login(
                &input.challenge_id,
                input.credential.0,
                signed_in(ctx).await,
                client(ctx),
            )
            .await?;
        Ok(deliver(ctx, issued))
    }
}

fn service<'ctx>(ctx: &Context<'ctx>) -> Result<&'ctx AuthService> {
    ctx.data::<AuthService>()
}

fn client(ctx: &Context<'_>) -> ClientInfo {
    ctx.data_opt::<ClientInfo>().cloned().unwrap_or_default()
}

/// The payload for a fresh pair. With the refresh-token cookie on, the refresh token goes into
/// `Set-Cookie` and not into the body.
fn deliver(ctx: &Context<'_>, issued: IssuedTokens) -> AuthPayload {
    let Some(cookie) = ctx.data_opt::<RefreshCookie>() else {
        return issued.into();
    };
    ctx.append_http_header(
        SET_COOKIE,
        cookie.set(&issued.refresh_token, issued.refresh_token_expires_at),
    );
    AuthPayload {
        refresh_token: None,
        ..issued.into()
    }
}

fn clear_cookie(ctx: &Context<'_>) {
    if let Some(cookie) = ctx.data_opt::<RefreshCookie>() {
        ctx.append_http_header(SET_COOKIE, cookie.clear());
    }
}

/// The refresh token from the cookie. Errors: UNAUTHENTICATED `MISSING` (no cookie, or the
/// cookie mode is off), `MALFORMED` (the cookie sent twice), FORBIDDEN `ORIGIN_NOT_ALLOWED`
/// (the request's `Origin` may not use the cookie: CSRF).
fn cookie_refresh_token(ctx: &Context<'_>) -> Result<String, AppError> {
    let cookie = ctx
        .data_opt::<RequestRefreshCookie>()
        .cloned()
        .unwrap_or_default();
    if cookie.ambiguous {
        return Err(AppError::Unauthenticated(UnauthenticatedReason::Malformed));
    }
    let token = cookie
        .token
        .ok_or(AppError::Unauthenticated(UnauthenticatedReason::Missing))?;
    if !cookie.origin_allowed {
        return Err(AppError::OriginNotAllowed);
    }
    Ok(token)
}
