//! Accounts people can get back into: verified addresses, password reset and email change
//! (README, "Accounts").
//!
//! A link's token is 32 random bytes, base64url (43 characters); only its SHA-256 digest is
//! stored. A token is bound to its purpose and to the address it was sent to, works once, and a
//! newer token of the same purpose makes the older ones useless. The mail that carries it is
//! stored in the outbox in the same transaction as the token, and sent by the outbox sender
//! (`crate::mail::sender`): a mutation never waits for SMTP.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AuthService, ClientInfo, events::SessionEventKind, input, now, rate_limit::Operation};
use crate::{
    auth::Authenticated,
    config::EmailVerification,
    error::AppError,
    mail::{ComposeError, Letter, LinkTemplate, MailKind, Mailer, sender::Doorbell},
    store::{IssuedToken, NewMail, NewToken, TokenPurpose, User},
};

/// `requestPasswordReset` answers no sooner than this after it began, whether or not an
/// account has the address: the work for a known one (a token and a mail stored) hides in it.
pub const RESET_REQUEST_FLOOR: Duration = Duration::from_millis(250);

/// How the account flows behave (`EMAIL_VERIFICATION`, the tokens' lifetimes, the links).
#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub verification: EmailVerification,
    /// `PASSWORD_RESET_TOKEN_EXPIRES`.
    pub password_reset_expires: TimeDelta,
    /// `EMAIL_VERIFICATION_TOKEN_EXPIRES` (email changes too).
    pub verification_expires: TimeDelta,
    /// Where a reset link points (`PASSWORD_RESET_URL`, or authql's `/reset-password`).
    pub password_reset_link: LinkTemplate,
    /// Where a verification link points (`EMAIL_VERIFICATION_URL`, or `/verify-email`).
    pub verification_link: LinkTemplate,
}

/// The account flows' settings, the mail composer, and the sender's doorbell.
pub struct Accounts {
    pub settings: AccountSettings,
    pub mailer: Mailer,
    pub doorbell: Doorbell,
}

impl Accounts {
    /// The token and mail of a link of `purpose` for `user`, sent to `email` (the display
    /// form; its key is stored with the token). `None` when the address cannot receive mail.
    /// Errors: INTERNAL_SERVER_ERROR (a template failed; logged).
    pub fn link_mail(
        &self,
        user: &User,
        purpose: TokenPurpose,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IssuedToken>, AppError> {
        let settings = &self.settings;
        let (kind, lifetime, link) = match purpose {
            TokenPurpose::PasswordReset => (
                MailKind::PasswordReset,
                settings.password_reset_expires,
                &settings.password_reset_link,
            ),
            TokenPurpose::EmailVerification => (
                MailKind::EmailVerification,
                settings.verification_expires,
                &settings.verification_link,
            ),
            TokenPurpose::EmailChange => (
                MailKind::EmailChange,
                settings.verification_expires,
                &settings.verification_link,
            ),
        };
        let expires_at = now + lifetime;
        let token = OneTimeToken::new();
        let letter = Letter {
            kind,
            to: email,
            username: &user.username,
            link: Some(link.link(&token.token)),
            new_email: None,
            expires_at,
        };
        let Some(mail) = self.compose(letter, user.id, now)? else {
            return Ok(None);
        };
        let issued = IssuedToken {
            token: NewToken {
                id: Uuid::new_v4(),
                user_id: user.id,
                purpose,
                digest: token.digest.clone(),
                email: email.to_owned(),
                email_normalized: address_key(email),
                credential_version: user.credential_version,
                created_at: now,
                expires_at,
            },
            mails: vec![mail],
        };
        Ok(Some(issued))
    }

    /// A composed mail; `None` (logged) when its address cannot be written in an envelope.
    /// Errors: INTERNAL_SERVER_ERROR (a template failed; logged).
    pub fn compose(
        &self,
        letter: Letter<'_>,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<NewMail>, AppError> {
        let kind = letter.kind.as_str();
        match self.mailer.compose(letter, now) {
            Ok(mail) => Ok(Some(mail)),
            Err(ComposeError::Undeliverable) => {
                tracing::warn!(event = "mail_undeliverable", %user_id, kind, "the account's address cannot be used in SMTP; no mail");
                Ok(None)
            }
            Err(ComposeError::Template(why)) => Err(AppError::internal(format!(
                "the mail template {kind} failed: {why}"
            ))),
        }
    }
}

/// A new one-time token: what goes in the link, and the digest that is stored.
struct OneTimeToken {
    token: String,
    digest: String,
}

impl OneTimeToken {
    fn new() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let digest = digest_of(&token);
        Self { token, digest }
    }
}

fn digest_of(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The stored digest of a token as a client sent it (surrounding blanks ignored: a pasted
/// link), or `None` when it cannot be one of authql's tokens (43 base64url characters).
fn presented_digest(token: &str) -> Option<String> {
    let token = token.trim();
    let well_formed = token.len() == 43
        && URL_SAFE_NO_PAD
            .decode(token)
            .is_ok_and(|bytes| bytes.len() == 32);
    well_formed.then(|| digest_of(token))
}

/// The key of a stored address (the same as `register`'s).
fn address_key(email: &str) -> String {
    authql_identity::email_key(email).unwrap_or_else(|_| email.trim().to_lowercase())
}

impl AuthService {
    fn accounts(&self) -> &Accounts {
        &self.inner.accounts
    }

    /// Whether `EMAIL_VERIFICATION` is `required`.
    pub fn verification_required(&self) -> bool {
        self.accounts().settings.verification == EmailVerification::Required
    }

    /// Stores a token with its mail and wakes the sender.
    async fn send_link(&self, issued: IssuedToken) -> Result<(), AppError> {
        self.store().tokens.issue_token(issued).await?;
        self.accounts().doorbell.ring();
        Ok(())
    }

    /// Queues mails without a token (notices) and wakes the sender.
    async fn send_notices(&self, mails: Vec<NewMail>) -> Result<(), AppError> {
        if mails.is_empty() {
            return Ok(());
        }
        self.store().outbox.queue_mails(mails).await?;
        self.accounts().doorbell.ring();
        Ok(())
    }

    /// Whether the mail buckets allow one more mail to `recipient`, for a flow whose answer
    /// must not tell (a refusal only means no mail).
    async fn may_mail_quietly(
        &self,
        operation: Operation,
        recipient: &str,
        client: &ClientInfo,
    ) -> bool {
        self.inner
            .rate_limits
            .check_mail(operation, recipient, client.ip)
            .await
            .is_ok()
    }

    /// `requestPasswordReset`: mails a reset link to the account with this address, if there is
    /// one and it is enabled. Answers the same, and no sooner than [`RESET_REQUEST_FLOOR`], either
    /// way. Errors: RATE_LIMITED (the client, or this address: counted whether or not an account
    /// has it), BAD_USER_INPUT (`email` malformed), SERVICE_UNAVAILABLE.
    pub async fn request_password_reset(
        &self,
        email: &str,
        client: ClientInfo,
    ) -> Result<(), AppError> {
        let started = tokio::time::Instant::now();
        let limits = &self.inner.rate_limits;
        let operation = Operation::RequestPasswordReset;
        limits.check_client(operation, client.ip).await?;
        let email = input::email("email", email)?;
        limits
            .check_mail(operation, &email.normalized, client.ip)
            .await?;
        let mailed = self.mail_password_reset(&email.normalized).await;
        tokio::time::sleep_until(started + RESET_REQUEST_FLOOR).await;
        mailed.map(|_| ())
    }

    /// Mails a reset link to the enabled account whose address has the key `email_normalized`;
    /// `Some(user)` when one was queued.
    async fn mail_password_reset(&self, email_normalized: &str) -> Result<Option<User>, AppError> {
        let Some(found) = self
            .store()
            .users
            .find_credentials(email_normalized)
            .await?
        else {
            return Ok(None);
        };
        let user = found.user;
        if user.disabled_at.is_some() {
            tracing::info!(event = "password_reset_refused_disabled", user_id = %user.id, "no reset mail: the account is disabled");
            return Ok(None);
        }
        let now = now();
        let Some(issued) =
            self.accounts()
                .link_mail(&user, TokenPurpose::PasswordReset, &user.email, now)?
        else {
            return Ok(None);
        };
        self.send_link(issued).await?;
        tracing::info!(event = "password_reset_requested", user_id = %user.id, "password-reset link queued");
        Ok(Some(user))
    }

    /// `authql admin send-password-reset`: a reset link to the user, whatever the buckets say.
    /// `false` when the account is disabled or its address cannot receive mail.
    pub async fn admin_password_reset(&self, user: &User) -> Result<bool, AppError> {
        Ok(self
            .mail_password_reset(&address_key(&user.email))
            .await?
            .is_some())
    }

    /// `resetPassword`: sets the password of the token's account, ends every session of it
    /// (REVOKED events), verifies the address the link was sent to, and makes every other reset
    /// token of the account useless. The account stays disabled if it is. Errors:
    /// RATE_LIMITED, BAD_USER_INPUT (`newPassword`), INVALID_TOKEN (`EXPIRED`, `USED`,
    /// `UNKNOWN`), SERVICE_UNAVAILABLE; nothing changed on any of them.
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: String,
        client: ClientInfo,
    ) -> Result<User, AppError> {
        const PURPOSES: [TokenPurpose; 1] = [TokenPurpose::PasswordReset];
        let limits = &self.inner.rate_limits;
        limits
            .check_client(Operation::ResetPassword, client.ip)
            .await?;
        input::password("newPassword", &new_password)?;
        let digest = presented_digest(token)
            .ok_or(AppError::InvalidToken(crate::store::TokenRefusal::Unknown))?;
        let store = self.store();
        // A look before the costly hash: a guessed token costs one indexed read.
        store
            .tokens
            .check_token(&digest, &PURPOSES, now())
            .await?
            .map_err(AppError::InvalidToken)?;
        let password_hash = self.inner.passwords.hash(new_password).await?;
        let (user, ended) = store
            .users
            .reset_password(&digest, now(), password_hash)
            .await?
            .map_err(AppError::InvalidToken)?;
        tracing::info!(event = "password_reset", user_id = %user.id, ended_sessions = ended.len(), "password reset by mail");
        self.publish(SessionEventKind::Revoked, user.id, &ended)
            .await;
        Ok(user)
    }

    /// `sendVerificationEmail`: mails a fresh link to the caller's address; `false` (nothing
    /// mailed) when it is verified already. Errors: RATE_LIMITED, BAD_USER_INPUT `email` (an
    /// address from before authql mailed that mail cannot reach exactly: a quoted local part;
    /// `requestEmailChange` replaces it), SERVICE_UNAVAILABLE.
    pub async fn send_verification_email(
        &self,
        caller: &Authenticated,
        client: ClientInfo,
    ) -> Result<bool, AppError> {
        let limits = &self.inner.rate_limits;
        let operation = Operation::SendVerificationEmail;
        limits.check_client(operation, client.ip).await?;
        // The stored account, not the cached session's view of it.
        let user = self
            .store()
            .users
            .find_credentials_by_id(caller.user.id)
            .await?
            .ok_or(AppError::Unauthenticated(
                crate::error::UnauthenticatedReason::Revoked,
            ))?
            .user;
        if user.email_verified_at.is_some() {
            return Ok(false);
        }
        limits
            .check_mail(operation, &address_key(&user.email), client.ip)
            .await?;
        let Some(issued) = self.accounts().link_mail(
            &user,
            TokenPurpose::EmailVerification,
            &user.email,
            now(),
        )?
        else {
            return Err(AppError::bad_input(
                "email",
                "the account's address cannot receive mail: change it with requestEmailChange",
            ));
        };
        self.send_link(issued).await?;
        tracing::info!(event = "verification_requested", user_id = %user.id, "verification link queued");
        Ok(true)
    }

    /// Mails a verification link to a new or unverified account, when the mail buckets allow
    /// (a refusal is silent: the answer must not differ).
    async fn mail_verification_quietly(
        &self,
        user: &User,
        operation: Operation,
        client: &ClientInfo,
    ) -> Result<(), AppError> {
        if !self
            .may_mail_quietly(operation, &address_key(&user.email), client)
            .await
        {
            return Ok(());
        }
        if let Some(issued) =
            self.accounts()
                .link_mail(user, TokenPurpose::EmailVerification, &user.email, now())?
        {
            self.send_link(issued).await?;
        }
        Ok(())
    }

    /// Whether a registration may mail (`EMAIL_VERIFICATION` is not `off` and the mail buckets
    /// allow one more to `email_normalized`); a refusal is silent.
    pub(super) async fn registration_may_mail(
        &self,
        email_normalized: &str,
        client: &ClientInfo,
    ) -> bool {
        self.accounts().settings.verification != EmailVerification::Off
            && self
                .may_mail_quietly(Operation::Register, email_normalized, client)
                .await
    }

    /// The token and mail of a new account's verification.
    pub(super) fn registration_link(
        &self,
        user: &User,
        now: DateTime<Utc>,
    ) -> Result<Option<IssuedToken>, AppError> {
        self.accounts()
            .link_mail(user, TokenPurpose::EmailVerification, &user.email, now)
    }

    /// Wakes the sender after a registration stored its verification mail.
    pub(super) fn mail_queued(&self) {
        self.accounts().doorbell.ring();
    }

    /// Someone tried to register with the address of an existing account
    /// (`EMAIL_VERIFICATION=required`): its owner gets a notice, without a link.
    pub(super) async fn notify_registration_attempt(
        &self,
        email_normalized: &str,
    ) -> Result<(), AppError> {
        let Some(found) = self
            .store()
            .users
            .find_credentials(email_normalized)
            .await?
        else {
            return Ok(());
        };
        let user = found.user;
        let now = now();
        let letter = Letter {
            kind: MailKind::RegistrationAttempt,
            to: &user.email,
            username: &user.username,
            link: None,
            new_email: None,
            expires_at: now + self.accounts().settings.verification_expires,
        };
        if let Some(mail) = self.accounts().compose(letter, user.id, now)? {
            self.send_notices(vec![mail]).await?;
        }
        tracing::info!(event = "registration_attempt_notified", user_id = %user.id, "someone tried to register with an existing address; its owner was told");
        Ok(())
    }

    /// A login of an unverified account where verification is required: a fresh link (when
    /// the buckets allow), and EMAIL_NOT_VERIFIED.
    pub(super) async fn refuse_unverified(&self, user: &User, client: &ClientInfo) -> AppError {
        if let Err(error) = self
            .mail_verification_quietly(user, Operation::Login, client)
            .await
        {
            return error;
        }
        tracing::info!(event = "login_refused_unverified", user_id = %user.id, "login refused: the address is not verified");
        AppError::EmailNotVerified
    }

    /// `verifyEmail`: verifies the address the token was sent to; for an email change, makes
    /// it the account's email. Errors: RATE_LIMITED, INVALID_TOKEN (`EXPIRED`, `USED` also for
    /// a link to an address the account no longer has, `UNKNOWN`), EMAIL_TAKEN (the new address
    /// was taken meanwhile; the link still works once it is free), SERVICE_UNAVAILABLE.
    pub async fn verify_email(&self, token: &str, client: ClientInfo) -> Result<User, AppError> {
        self.inner
            .rate_limits
            .check_client(Operation::VerifyEmail, client.ip)
            .await?;
        let digest = presented_digest(token)
            .ok_or(AppError::InvalidToken(crate::store::TokenRefusal::Unknown))?;
        let user = self
            .store()
            .users
            .verify_email(&digest, now())
            .await?
            .map_err(AppError::InvalidToken)?
            .user;
        tracing::info!(event = "email_verified", user_id = %user.id, "address verified");
        Ok(user)
    }

    /// `requestEmailChange`: proven by the password, mails a link to the new address (which
    /// becomes the account's when it is followed) and a notice to the current one. Errors:
    /// RATE_LIMITED, BAD_USER_INPUT (`newEmail`: malformed, or the current address),
    /// INVALID_CREDENTIALS (wrong password or code), REAUTHENTICATION_REQUIRED (an account with
    /// TOTP, no `code`, no recent proof), EMAIL_TAKEN (another account has it),
    /// SERVICE_UNAVAILABLE.
    pub async fn request_email_change(
        &self,
        caller: &Authenticated,
        new_email: &str,
        password: String,
        code: Option<&str>,
        client: ClientInfo,
    ) -> Result<(), AppError> {
        let limits = &self.inner.rate_limits;
        let operation = Operation::RequestEmailChange;
        limits.check_client(operation, client.ip).await?;
        limits
            .check_account(operation, &caller.user.id.to_string(), client.ip)
            .await?;
        let new_email = input::email("newEmail", new_email)?;
        let store = self.store();
        let user = self.prove_password(caller, password).await?.user;
        self.prove_second_factor_if_on(caller, code).await?;
        if new_email.normalized == address_key(&user.email) {
            return Err(AppError::bad_input(
                "newEmail",
                "this is already the account's address",
            ));
        }
        if store
            .users
            .find_credentials(&new_email.normalized)
            .await?
            .is_some()
        {
            return Err(AppError::EmailTaken);
        }
        limits
            .check_mail(operation, &new_email.normalized, client.ip)
            .await?;
        let now = now();
        let Some(mut issued) =
            self.accounts()
                .link_mail(&user, TokenPurpose::EmailChange, &new_email.display, now)?
        else {
            return Err(AppError::bad_input(
                "newEmail",
                "mail cannot be sent to this address",
            ));
        };
        // The notice to the current address goes with the link, when its bucket allows.
        if self
            .may_mail_quietly(operation, &address_key(&user.email), &client)
            .await
        {
            let notice = Letter {
                kind: MailKind::EmailChangeNotice,
                to: &user.email,
                username: &user.username,
                link: None,
                new_email: Some(&new_email.display),
                expires_at: issued.token.expires_at,
            };
            if let Some(mail) = self.accounts().compose(notice, user.id, now)? {
                issued.mails.push(mail);
            }
        }
        self.send_link(issued).await?;
        tracing::info!(event = "email_change_requested", user_id = %user.id, "email-change link queued");
        Ok(())
    }

    /// How many mails wait in the outbox (for `authql_mail_outbox_depth`).
    pub async fn outbox_depth(&self) -> Result<u64, AppError> {
        Ok(self.store().outbox.outbox_depth().await?)
    }

    /// Deletes one-time tokens that expired more than `retention` ago; returns how many.
    pub async fn prune_expired_tokens(&self, retention: TimeDelta) -> Result<u64, AppError> {
        Ok(self.store().tokens.prune_tokens(now() - retention).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_43_base64url_characters_and_only_its_digest_is_kept() {
        let token = OneTimeToken::new();
        assert_eq!(token.token.len(), 43);
        assert!(
            token
                .token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(token.digest.len(), 64);
        assert!(!token.digest.contains(&token.token));
        assert_eq!(presented_digest(&token.token), Some(token.digest.clone()));
        assert_eq!(
            presented_digest(&format!("  {}\n", token.token)),
            Some(token.digest)
        );
        assert_ne!(OneTimeToken::new().token, OneTimeToken::new().token);
    }

    #[test]
    fn what_cannot_be_a_token_is_refused_before_any_lookup() {
        for bad in [
            "",
            "short",
            &"A".repeat(44),
            &"A".repeat(10_000),
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            "ééééééééééééééééééééééééééééééééééééééééééé",
        ] {
            assert_eq!(presented_digest(bad), None, "{bad:?}");
        }
    }
}
