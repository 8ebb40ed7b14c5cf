//! Second factors and step-up (README, "Second factors and passkeys"): TOTP (RFC 6238) with
//! single-use recovery codes, passkeys (WebAuthn Level 3, through webauthn-rs), the
//! `MFA_REQUIRED` → `verifyMfa` login, and `reauthenticate` for what changes how an account is
//! proven.
//!
//! Every proof is taken once, by one conditional write of the store: a TOTP time step (RFC 6238
//! § 5.2: a code is accepted once), a recovery code, a passkey's signature counter (WebAuthn
//! § 6.1.1: one going back is a cloned authenticator), a ceremony's challenge. Of concurrent
//! requests with the same proof, one wins.
//!
//! A session records when and how its user last proved who they are (`authenticated_at`, RFC
//! 8176 `amr`); a login sets them, `reauthenticate` moves them, a refresh never does.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Webauthn, WebauthnError,
};

use super::{AuthService, ClientInfo, IssuedTokens, input, now, rate_limit::Operation};
use crate::{
    auth::Authenticated,
    error::{AppError, UnauthenticatedReason},
    service::events::SessionEventKind,
    store::{
        AuthMethods, Challenge, ChallengeKind, FactorRemoval, PasskeyAddition, Rotation,
        SecondFactors, Session, StoredPasskey, TokenRefusal, TotpCredential, User,
    },
};

/// How long an `mfaToken` lives.
pub const MFA_TOKEN_LIFETIME: TimeDelta = TimeDelta::minutes(5);
/// Wrong codes an `mfaToken` survives; the next attempt finds it dead.
pub const MAX_MFA_ATTEMPTS: i32 = 5;
/// How long a passkey ceremony (registration or login) may take: webauthn-rs's own timeout.
pub const CEREMONY_LIFETIME: TimeDelta = TimeDelta::minutes(5);
/// How many recovery codes `confirmTotp` and `regenerateRecoveryCodes` give.
pub const RECOVERY_CODES: usize = 10;
/// RFC 6238 as authenticator apps expect it: 30-second steps, 6 digits, HMAC-SHA-1, and one
/// step either side accepted for clock drift (§ 5.2).
const TOTP_STEP_SECONDS: i64 = 30;
const TOTP_DIGITS: usize = 6;
const TOTP_WINDOW: i64 = 1;
/// A TOTP secret's bytes: 160 bits, RFC 4226 § 4's recommendation.
const TOTP_SECRET_BYTES: usize = 20;
/// Most passkeys one account may have: a person's devices and security keys, with room to
/// spare; the registration options list them all (`excludeCredentials`).
pub const MAX_PASSKEYS_PER_USER: usize = 20;
/// Longest passkey name.
pub const PASSKEY_NAME_MAX_CHARS: usize = 64;
/// Longest code looked at (a recovery code with spaces and dashes is far shorter).
const CODE_MAX_BYTES: usize = 64;

/// How second factors behave here.
#[derive(Clone)]
pub struct SecondFactorSettings {
    /// `APP_NAME`: the issuer an authenticator app shows.
    pub issuer: String,
    /// The relying party, when one could be set up (see `PASSKEYS_NOT_CONFIGURED`).
    pub webauthn: Option<Arc<Webauthn>>,
    /// `REAUTHENTICATION_MAX_AGE`.
    pub reauthentication_max_age: TimeDelta,
}

/// What `MFA_REQUIRED` offers (`extensions.methods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaMethod {
    Totp,
    RecoveryCode,
    Passkey,
}

impl MfaMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "TOTP",
            Self::RecoveryCode => "RECOVERY_CODE",
            Self::Passkey => "PASSKEY",
        }
    }
}

/// A pending TOTP enrollment, for the user to put into an authenticator app.
#[derive(Debug, Clone)]
pub struct TotpEnrollment {
    /// Base32 (RFC 4648, no padding), 32 characters.
    pub secret: String,
    /// The Key Uri Format authenticator apps read: `otpauth://totp/Issuer:account?...`.
    pub otpauth_uri: String,
    /// `otpauth_uri` as a QR code, an SVG document.
    pub qr_code_svg: String,
}

/// What `beginPasskeyLogin` is asked for.
#[derive(Debug, Clone, Default)]
pub struct PasskeyLoginRequest {
    /// Only this account may finish it (its key, as `login` takes it).
    pub email_or_username: Option<String>,
    /// The second step of a password login (`MFA_REQUIRED`'s `mfaToken`).
    pub mfa_token: Option<String>,
    /// A step-up of the caller's session.
    pub reauthenticate: bool,
}

/// A TOTP or recovery code that checked out and is not taken yet.
enum CodeProof {
    /// The RFC 6238 time step of a TOTP code.
    TotpStep(i64),
    /// The digest of an unused recovery code.
    RecoveryCode(String),
}

fn registered_already() -> AppError {
    AppError::bad_input("credential", "this passkey is registered already")
}

fn code_refused(user_id: Uuid) -> AppError {
    tracing::info!(event = "second_factor_failed", user_id = %user_id, "a TOTP or recovery code was refused");
    AppError::InvalidCredentials
}

/// What a passkey login keeps between its two calls (the challenge row's `state`).
#[derive(Serialize, Deserialize)]
struct PasskeyLoginState {
    ceremony: DiscoverableAuthentication,
    /// Only this user may finish it (`emailOrUsername`; a name nobody has gives a user nobody
    /// is, so that the answer does not tell).
    user: Option<Uuid>,
    /// The `mfaToken` challenge it completes, by digest.
    mfa: Option<String>,
    /// The session it steps up.
    reauthenticate: Option<Uuid>,
}

/// How a registration ceremony is found: by its session and its WebAuthn challenge (from the
/// credential's clientDataJSON), so that another session cannot even use it up.
fn registration_digest(session_id: Uuid, challenge: &str) -> String {
    digest(&format!("{session_id}:{challenge}"))
}

/// SHA-256 of `text`, lower-case hex: how challenges and recovery codes are stored.
pub(super) fn digest(text: &str) -> String {
    let hash = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in hash {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

pub(super) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The RFC 6238 time step of `at`.
fn totp_step(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(TOTP_STEP_SECONDS)
}

/// The TOTP code of `secret` (base32) at time step `step`; `None` when the secret does not
/// decode.
fn totp_code(secret: &str, step: i64) -> Option<String> {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .ok()?;
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        TOTP_DIGITS,
        0,
        TOTP_STEP_SECONDS as u64,
        bytes,
    );
    Some(totp.generate(u64::try_from(step * TOTP_STEP_SECONDS).ok()?))
}

/// The time step within the window around `now` whose code is `code`, compared in constant
/// time; the latest such step, should two match.
fn matching_step(secret: &str, code: &str, now: DateTime<Utc>) -> Option<i64> {
    let current = totp_step(now);
    let mut found = None;
    for step in (current - TOTP_WINDOW)..=(current + TOTP_WINDOW) {
        let expected = totp_code(secret, step)?;
        let same = expected.len() == code.len()
            && expected
                .bytes()
                .zip(code.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            found = Some(step);
        }
    }
    found
}

/// Whether `code` looks like a TOTP code (six ASCII digits) rather than a recovery code.
fn is_totp_code(code: &str) -> bool {
    code.len() == TOTP_DIGITS && code.bytes().all(|byte| byte.is_ascii_digit())
}

/// A recovery code as compared: lower case, without spaces and dashes.
fn normalize_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Ten new recovery codes (`xxxxx-xxxxx`, 50 random bits each, from the RFC 4648 base32
/// alphabet in lower case) and their digests.
fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..RECOVERY_CODES)
        .map(|_| {
            let bits = u64::from_le_bytes(random_bytes::<8>());
            let chars: String = (0..10)
                .map(|i| ALPHABET[((bits >> (5 * i)) & 31) as usize] as char)
                .collect();
            let code = format!("{}-{}", &chars[..5], &chars[5..]);
            let digest = digest(&normalize_recovery_code(&code));
            (code, digest)
        })
        .unzip()
}

/// The Key Uri Format of Google Authenticator's wiki, which every authenticator app reads:
/// `otpauth://totp/{issuer}:{account}?secret=...&issuer=...&algorithm=SHA1&digits=6&period=30`.
fn otpauth_uri(issuer: &str, account: &str, secret: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let issuer = utf8_percent_encode(issuer, NON_ALPHANUMERIC).to_string();
    let account = utf8_percent_encode(account, NON_ALPHANUMERIC);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECONDS}"
    )
}

fn qr_code_svg(text: &str) -> Result<String, AppError> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(AppError::internal)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

/// A credential's JSON (`credential.toJSON()`) as webauthn-rs reads it. Errors: BAD_USER_INPUT
/// `credential`.
fn parse_credential<T: serde::de::DeserializeOwned>(credential: Value) -> Result<T, AppError> {
    serde_json::from_value(credential).map_err(|_| {
        AppError::bad_input(
            "credential",
            "credential is not a WebAuthn credential's JSON (credential.toJSON())",
        )
    })
}

/// The `challenge` of a credential's clientDataJSON: how a registration finds its ceremony.
fn client_data_challenge(client_data_json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ClientData {
        challenge: String,
    }
    serde_json::from_slice::<ClientData>(client_data_json)
        .ok()
        .map(|data| data.challenge)
}

/// `key` of a serialized webauthn-rs `Passkey` (its credential: `counter`, `backup_eligible`).
fn passkey_field<'a>(passkey: &'a Value, key: &str) -> Option<&'a Value> {
    passkey.get("cred")?.get(key)
}

/// What a passkey proves: possession of a key, hardware-bound (`hwk`) or syncable (`swk`, the
/// backup-eligible flag), with user verification (`user`; webauthn-rs's passkey ceremonies
/// require it), which makes it multi-factor (`mfa`): RFC 8176 § 2.
fn passkey_methods(backup_eligible: bool) -> AuthMethods {
    AuthMethods::of([if backup_eligible { "swk" } else { "hwk" }, "user"])
}

/// A second step of a login, counted in `authql_logins_total` as `login` counts its first.
pub(super) fn counted(result: Result<IssuedTokens, AppError>) -> Result<IssuedTokens, AppError> {
    crate::metrics::login(match &result {
        Ok(_) => "success",
        Err(error) => super::outcome_of(error),
    });
    result
}

impl AuthService {
    fn second_factor_settings(&self) -> &SecondFactorSettings {
        &self.inner.second_factors
    }

    fn webauthn(&self) -> Result<&Webauthn, AppError> {
        self.second_factor_settings()
            .webauthn
            .as_deref()
            .ok_or(AppError::PasskeysNotConfigured)
    }

    /// Refuses, with REAUTHENTICATION_REQUIRED, a caller whose session's last proof is older
    /// than `REAUTHENTICATION_MAX_AGE` (OWASP Authentication Cheat Sheet, "Reauthentication").
    pub fn require_recent_proof(&self, caller: &Authenticated) -> Result<(), AppError> {
        if self.proof_is_recent(&caller.session, now()) {
            Ok(())
        } else {
            Err(AppError::ReauthenticationRequired)
        }
    }

    fn proof_is_recent(&self, session: &Session, now: DateTime<Utc>) -> bool {
        now - session.authenticated_at <= self.second_factor_settings().reauthentication_max_age
    }

    /// Deletes the `mfaToken`s and passkey ceremonies that expired; returns how many.
    pub async fn prune_expired_challenges(&self) -> Result<u64, AppError> {
        Ok(self.store().second_factors.prune_challenges(now()).await?)
    }

    /// What the user has besides the password.
    pub async fn second_factors_of(&self, user_id: Uuid) -> Result<SecondFactors, AppError> {
        Ok(self.store().second_factors.second_factors(user_id).await?)
    }

    /// The user's passkeys, oldest first.
    pub async fn passkeys_of(&self, user_id: Uuid) -> Result<Vec<StoredPasskey>, AppError> {
        Ok(self.store().second_factors.passkeys(user_id).await?)
    }

    /// After a right first factor (`proven`: a password, or an OpenID Provider's sign-in):
    /// MFA_REQUIRED with a new `mfaToken` when the account has a second factor, else nothing to
    /// ask.
    pub(super) async fn ask_for_second_factor(
        &self,
        user: &User,
        proven: AuthMethods,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let factors = self.second_factors_of(user.id).await?;
        if !factors.totp && factors.passkeys == 0 {
            return Ok(());
        }
        let mut methods = Vec::new();
        if factors.totp {
            methods.extend([MfaMethod::Totp.as_str(), MfaMethod::RecoveryCode.as_str()]);
        }
        if factors.passkeys > 0 && self.second_factor_settings().webauthn.is_some() {
            methods.push(MfaMethod::Passkey.as_str());
        }
        let mfa_token = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        self.store()
            .second_factors
            .put_challenge(Challenge {
                id: Uuid::new_v4(),
                digest: digest(&mfa_token),
                kind: ChallengeKind::Mfa,
                user_id: Some(user.id),
                session_id: None,
                credential_version: Some(user.credential_version),
                methods: proven,
                state: None,
                attempts: 0,
                created_at: now,
                expires_at: now + MFA_TOKEN_LIFETIME,
            })
            .await?;
        tracing::info!(event = "mfa_required", user_id = %user.id, "first factor accepted; a second factor is asked for");
        Err(AppError::MfaRequired { mfa_token, methods })
    }

    /// Checks a TOTP code (six digits) or a recovery code of the user, without taking it: a
    /// code of a time step later than the last one taken, or an unused recovery code. Each
    /// check takes a token from the account's second-factor bucket (every address together).
    /// Errors: INVALID_CREDENTIALS (wrong, replayed, or no TOTP), RATE_LIMITED,
    /// SERVICE_UNAVAILABLE.
    async fn check_code(
        &self,
        user_id: Uuid,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<CodeProof, AppError> {
        self.inner
            .rate_limits
            .check_second_factor(&user_id.to_string())
            .await?;
        let store = &self.store().second_factors;
        let code = code.trim();
        if code.len() > CODE_MAX_BYTES {
            return Err(code_refused(user_id));
        }
        let Some(totp) = store
            .totp(user_id)
            .await?
            .filter(|totp| totp.confirmed_at.is_some())
        else {
            return Err(code_refused(user_id));
        };
        if is_totp_code(code) {
            return matching_step(&totp.secret, code, now)
                .filter(|step| *step > totp.last_step)
                .map(CodeProof::TotpStep)
                .ok_or_else(|| code_refused(user_id));
        }
        let digest = digest(&normalize_recovery_code(code));
        if store.recovery_code_unused(user_id, &digest).await? {
            Ok(CodeProof::RecoveryCode(digest))
        } else {
            Err(code_refused(user_id))
        }
    }

    /// Takes a code that `check_code` accepted: its time step, or the recovery code, once.
    /// Returns what it proves (`otp`). Errors: INVALID_CREDENTIALS (taken meanwhile).
    async fn take_code(
        &self,
        user_id: Uuid,
        proof: CodeProof,
        now: DateTime<Utc>,
    ) -> Result<AuthMethods, AppError> {
        let store = &self.store().second_factors;
        let taken = match proof {
            CodeProof::TotpStep(step) => store.take_totp_step(user_id, step).await?,
            CodeProof::RecoveryCode(digest) => {
                store.use_recovery_code(user_id, &digest, now).await?
            }
        };
        if taken {
            Ok(AuthMethods::of(["otp"]))
        } else {
            Err(code_refused(user_id))
        }
    }

    /// `check_code`, then `take_code`.
    async fn prove_code(
        &self,
        user_id: Uuid,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<AuthMethods, AppError> {
        let proof = self.check_code(user_id, code, now).await?;
        self.take_code(user_id, proof, now).await
    }

    /// For an operation that carries the password (`changePassword`, `deleteAccount`,
    /// `requestEmailChange`) on an account with TOTP: its `code`, or else a recent proof in the
    /// session. Errors: INVALID_CREDENTIALS (a wrong code), REAUTHENTICATION_REQUIRED (no code
    /// and no recent proof).
    pub(super) async fn prove_second_factor_if_on(
        &self,
        caller: &Authenticated,
        code: Option<&str>,
    ) -> Result<(), AppError> {
        let now = now();
        let factors = self.second_factors_of(caller.user.id).await?;
        if !factors.totp {
            return Ok(());
        }
        match code {
            Some(code) => self.prove_code(caller.user.id, code, now).await.map(drop),
            None if self.proof_is_recent(&caller.session, now) => Ok(()),
            None => Err(AppError::ReauthenticationRequired),
        }
    }

    /// `enrollTotp`: a new secret, pending until `confirmTotp` (a pending one is replaced).
    /// Needs a recent proof. Errors: REAUTHENTICATION_REQUIRED, TOTP_ALREADY_ENABLED.
    pub async fn enroll_totp(&self, caller: &Authenticated) -> Result<TotpEnrollment, AppError> {
        self.require_recent_proof(caller)?;
        let secret = totp_rs::Secret::Raw(random_bytes::<TOTP_SECRET_BYTES>().to_vec())
            .to_encoded()
            .to_string();
        let stored = self
            .store()
            .second_factors
            .begin_totp(TotpCredential {
                user_id: caller.user.id,
                secret: secret.clone(),
                confirmed_at: None,
                last_step: -1,
                created_at: now(),
            })
            .await?;
        if !stored {
            return Err(AppError::TotpAlreadyEnabled);
        }
        let otpauth_uri = otpauth_uri(
            &self.second_factor_settings().issuer,
            &caller.user.email,
            &secret,
        );
        let qr_code_svg = qr_code_svg(&otpauth_uri)?;
        tracing::info!(event = "totp_enrollment_started", user_id = %caller.user.id, "TOTP enrollment started");
        Ok(TotpEnrollment {
            secret,
            otpauth_uri,
            qr_code_svg,
        })
    }

    /// `confirmTotp`: turns the pending secret on with a code of it, and returns ten recovery
    /// codes (only their digests are kept). Ends the caller's other sessions, which were made
    /// with less than the account now asks for. Rate-limited as `login`. Errors:
    /// INVALID_CREDENTIALS (no pending secret, or a wrong code), RATE_LIMITED.
    pub async fn confirm_totp(
        &self,
        caller: &Authenticated,
        code: &str,
        client: ClientInfo,
    ) -> Result<Vec<String>, AppError> {
        self.check_second_factor_limits(caller.user.id, &client)
            .await?;
        let now = now();
        let store = &self.store().second_factors;
        let Some(pending) = store
            .totp(caller.user.id)
            .await?
            .filter(|totp| totp.confirmed_at.is_none())
        else {
            return Err(AppError::InvalidCredentials);
        };
        let code = code.trim();
        let step = is_totp_code(code)
            .then(|| matching_step(&pending.secret, code, now))
            .flatten()
            .ok_or(AppError::InvalidCredentials)?;
        let (codes, digests) = new_recovery_codes();
        let ended = store
            .confirm_totp(
                caller.user.id,
                &pending.secret,
                step,
                digests,
                caller.session.id,
                now,
            )
            .await?
            .ok_or(AppError::InvalidCredentials)?;
        tracing::info!(event = "totp_enabled", user_id = %caller.user.id, ended_sessions = ended.len(), "TOTP turned on");
        self.publish(SessionEventKind::Revoked, caller.user.id, &ended)
            .await;
        Ok(codes)
    }

    /// `disableTotp`: removes TOTP and its recovery codes, and ends the caller's other
    /// sessions (a login that proved a code a moment before gets none); `false` when it was
    /// off. Needs a recent proof. Errors: REAUTHENTICATION_REQUIRED, UNAUTHENTICATED
    /// `REVOKED` (this session ended meanwhile).
    pub async fn disable_totp(&self, caller: &Authenticated) -> Result<bool, AppError> {
        self.require_recent_proof(caller)?;
        let removal = self
            .store()
            .second_factors
            .disable_totp(caller.user.id, caller.session.id)
            .await?;
        self.removed(caller, removal, "totp_disabled").await
    }

    /// The answer to a factor's removal, its log line and its session events.
    pub(super) async fn removed(
        &self,
        caller: &Authenticated,
        removal: FactorRemoval,
        event: &'static str,
    ) -> Result<bool, AppError> {
        match removal {
            FactorRemoval::NotFound => Ok(false),
            FactorRemoval::SessionEnded => {
                Err(AppError::Unauthenticated(UnauthenticatedReason::Revoked))
            }
            FactorRemoval::Removed(ended) => {
                tracing::info!(event, user_id = %caller.user.id, ended_sessions = ended.len(), "a way to prove the account was removed");
                self.publish(SessionEventKind::Revoked, caller.user.id, &ended)
                    .await;
                Ok(true)
            }
        }
    }

    /// `regenerateRecoveryCodes`: ten new codes; the old ones stop working. Needs a recent
    /// proof. Errors: REAUTHENTICATION_REQUIRED, TOTP_NOT_ENABLED.
    pub async fn regenerate_recovery_codes(
        &self,
        caller: &Authenticated,
    ) -> Result<Vec<String>, AppError> {
        self.require_recent_proof(caller)?;
        let (codes, digests) = new_recovery_codes();
        let replaced = self
            .store()
            .second_factors
            .replace_recovery_codes(caller.user.id, digests, now())
            .await?;
        if !replaced {
            return Err(AppError::TotpNotEnabled);
        }
        tracing::info!(event = "recovery_codes_regenerated", user_id = %caller.user.id, "recovery codes replaced");
        Ok(codes)
    }

    /// The limits of `login`, for a proof of this user: per client and per account.
    async fn check_second_factor_limits(
        &self,
        user_id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), AppError> {
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Login, client.ip).await?;
        limits
            .check_account(Operation::Login, &user_id.to_string(), client.ip)
            .await
    }

    /// Why an `mfaToken` or challenge that could not be taken was refused: INVALID_TOKEN
    /// `EXPIRED` when it is there but past its time, else `UNKNOWN` (used, used up, never
    /// issued).
    pub(super) async fn challenge_refusal(&self, digest: &str, now: DateTime<Utc>) -> AppError {
        match self
            .store()
            .second_factors
            .challenge_expired(digest, now)
            .await
        {
            Ok(true) => AppError::InvalidToken(TokenRefusal::Expired),
            Ok(false) => AppError::InvalidToken(TokenRefusal::Unknown),
            Err(error) => error.into(),
        }
    }

    /// `verifyMfa`: completes a login that answered MFA_REQUIRED with a TOTP or recovery code.
    /// The session is made under the credentials the password proved: a password change,
    /// reset or `reset-mfa` since wins. Errors: INVALID_TOKEN (`mfaToken` unknown, used, used
    /// up by 5 wrong codes: `UNKNOWN`; past its 5 minutes: `EXPIRED`), INVALID_CREDENTIALS (a
    /// wrong or replayed code), RATE_LIMITED, ACCOUNT_DISABLED.
    pub async fn verify_mfa(
        &self,
        mfa_token: &str,
        code: &str,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        counted(self.complete_with_code(mfa_token, code, client).await)
    }

    async fn complete_with_code(
        &self,
        mfa_token: &str,
        code: &str,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Login, client.ip).await?;
        let now = now();
        let token_digest = digest(mfa_token.trim());
        let store = &self.store().second_factors;
        let Some(challenge) = store
            .attempt_challenge(&token_digest, ChallengeKind::Mfa, MAX_MFA_ATTEMPTS, now)
            .await?
        else {
            return Err(self.challenge_refusal(&token_digest, now).await);
        };
        let (Some(user_id), Some(credential_version)) =
            (challenge.user_id, challenge.credential_version)
        else {
            return Err(AppError::InvalidToken(TokenRefusal::Unknown));
        };
        limits
            .check_account(Operation::Login, &user_id.to_string(), client.ip)
            .await?;
        // Nothing is taken until the code is right and this request holds the token: a code
        // sent with a token that a credential change made useless, for a disabled account, or
        // by a request that loses the token to a concurrent one, stays usable.
        let user = self.user_to_admit(user_id, &client).await?;
        if user.credential_version != credential_version {
            return Err(AppError::InvalidToken(TokenRefusal::Used));
        }
        let proof = self.check_code(user_id, code, now).await?;
        if store
            .take_challenge(&token_digest, ChallengeKind::Mfa, now)
            .await?
            .is_none()
        {
            return Err(AppError::InvalidToken(TokenRefusal::Unknown));
        }
        let proven = self.take_code(user_id, proof, now).await?;
        self.open_session(
            user,
            credential_version,
            challenge.methods.union(&proven),
            client,
        )
        .await
    }

    /// The user a proof was made for, if they may have a session: enabled, and verified where
    /// `EMAIL_VERIFICATION=required`. Errors: INVALID_CREDENTIALS (gone), ACCOUNT_DISABLED,
    /// EMAIL_NOT_VERIFIED.
    pub(super) async fn user_to_admit(
        &self,
        user_id: Uuid,
        client: &ClientInfo,
    ) -> Result<User, AppError> {
        let user = self
            .store()
            .users
            .find_credentials_by_id(user_id)
            .await?
            .ok_or(AppError::InvalidCredentials)?
            .user;
        self.admit(&user, client).await?;
        Ok(user)
    }

    /// `beginPasskeyRegistration`: the options for `navigator.credentials.create()`, in the JSON
    /// form `PublicKeyCredential.parseCreationOptionsFromJSON` takes (a discoverable credential,
    /// user verification required, the user's passkeys excluded). Needs a recent proof; rate-
    /// limited per account. Errors: REAUTHENTICATION_REQUIRED, PASSKEY_LIMIT_REACHED (20
    /// passkeys), RATE_LIMITED, PASSKEYS_NOT_CONFIGURED.
    pub async fn begin_passkey_registration(
        &self,
        caller: &Authenticated,
    ) -> Result<Value, AppError> {
        self.require_recent_proof(caller)?;
        let webauthn = self.webauthn()?;
        self.inner
            .rate_limits
            .check_account(Operation::Login, &caller.user.id.to_string(), None)
            .await?;
        let existing = self.passkeys_of(caller.user.id).await?;
        if existing.len() >= MAX_PASSKEYS_PER_USER {
            return Err(AppError::PasskeyLimitReached);
        }
        let exclude: Vec<_> = existing
            .iter()
            .filter_map(|stored| serde_json::from_str::<Passkey>(&stored.credential).ok())
            .map(|passkey| passkey.cred_id().clone())
            .collect();
        let (options, state) = webauthn
            .start_passkey_registration(
                caller.user.id,
                &caller.user.email,
                &caller.user.username,
                Some(exclude),
            )
            .map_err(AppError::internal)?;
        let mut options = serde_json::to_value(options).map_err(AppError::internal)?;
        let mut options = options
            .get_mut("publicKey")
            .map(Value::take)
            .ok_or_else(|| {
                AppError::internal("webauthn-rs gave creation options without publicKey")
            })?;
        // A passkey must be discoverable, so that a login needs no name (WebAuthn § 5.4.6).
        if let Some(selection) = options
            .get_mut("authenticatorSelection")
            .and_then(Value::as_object_mut)
        {
            selection.insert("residentKey".into(), "required".into());
            selection.insert("requireResidentKey".into(), true.into());
        }
        let challenge = options
            .get("challenge")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                AppError::internal("webauthn-rs gave creation options without a challenge")
            })?
            .to_owned();
        let now = now();
        self.store()
            .second_factors
            .put_challenge(Challenge {
                id: Uuid::new_v4(),
                digest: registration_digest(caller.session.id, &challenge),
                kind: ChallengeKind::PasskeyRegistration,
                user_id: Some(caller.user.id),
                session_id: Some(caller.session.id),
                credential_version: None,
                methods: AuthMethods::default(),
                state: Some(serde_json::to_string(&state).map_err(AppError::internal)?),
                attempts: 0,
                created_at: now,
                expires_at: now + CEREMONY_LIFETIME,
            })
            .await?;
        Ok(options)
    }

    /// `finishPasskeyRegistration`: checks the new credential against the ceremony this
    /// session began (found by its challenge; single use) and stores it. Ends the caller's
    /// other sessions, as `confirmTotp` does. Needs a recent proof. Errors:
    /// REAUTHENTICATION_REQUIRED, BAD_USER_INPUT (`credential` not a credential's JSON, or
    /// registered already; `name` longer than 64 characters), INVALID_CREDENTIALS (no such
    /// ceremony of this session, or the credential does not verify), PASSKEYS_NOT_CONFIGURED.
    pub async fn finish_passkey_registration(
        &self,
        caller: &Authenticated,
        credential: Value,
        name: Option<String>,
    ) -> Result<StoredPasskey, AppError> {
        self.require_recent_proof(caller)?;
        let webauthn = self.webauthn()?;
        let name = match name.as_deref().map(str::trim) {
            Some(name) if name.chars().count() > PASSKEY_NAME_MAX_CHARS => {
                return Err(AppError::bad_input(
                    "name",
                    format!("a passkey's name has at most {PASSKEY_NAME_MAX_CHARS} characters"),
                ));
            }
            Some(name) if !name.is_empty() => input::single_line(name),
            _ => "Passkey".to_owned(),
        };
        let credential: RegisterPublicKeyCredential = parse_credential(credential)?;
        let now = now();
        let store = &self.store().second_factors;
        let refused = |why: &dyn std::fmt::Display| {
            tracing::info!(event = "passkey_registration_refused", user_id = %caller.user.id, reason = %why, "a passkey registration was refused");
            AppError::InvalidCredentials
        };
        let challenge = client_data_challenge(credential.response.client_data_json.as_ref())
            .ok_or_else(|| refused(&"no challenge in clientDataJSON"))?;
        let ceremony = store
            .take_challenge(
                &registration_digest(caller.session.id, &challenge),
                ChallengeKind::PasskeyRegistration,
                now,
            )
            .await?
            .ok_or_else(|| refused(&"no such ceremony of this session"))?;
        let state: PasskeyRegistration = ceremony
            .state
            .as_deref()
            .and_then(|state| serde_json::from_str(state).ok())
            .ok_or_else(|| AppError::internal("a stored registration ceremony does not read"))?;
        let passkey = webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|error| refused(&error))?;
        let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id().as_slice());
        if store
            .passkey_by_credential_id(&credential_id)
            .await?
            .is_some()
        {
            return Err(registered_already());
        }
        let json = serde_json::to_value(&passkey).map_err(AppError::internal)?;
        let stored = StoredPasskey {
            id: Uuid::new_v4(),
            user_id: caller.user.id,
            credential_id,
            name,
            counter: passkey_field(&json, "counter")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            backup_eligible: passkey_field(&json, "backup_eligible")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            credential: json.to_string(),
            created_at: now,
            last_used_at: None,
        };
        let ended = store.add_passkey(stored.clone(), caller.session.id).await?;
        let ended = match ended {
            PasskeyAddition::Added(ended) => ended,
            PasskeyAddition::SessionEnded => {
                return Err(AppError::Unauthenticated(UnauthenticatedReason::Revoked));
            }
            PasskeyAddition::CredentialTaken => return Err(registered_already()),
        };
        tracing::info!(event = "passkey_registered", user_id = %caller.user.id, passkey_id = %stored.id, ended_sessions = ended.len(), "passkey registered");
        self.publish(SessionEventKind::Revoked, caller.user.id, &ended)
            .await;
        Ok(stored)
    }

    /// `renamePasskey`. Errors: BAD_USER_INPUT (`id` not one of the caller's passkeys, `name`
    /// empty or longer than 64 characters).
    pub async fn rename_passkey(
        &self,
        caller: &Authenticated,
        id: &str,
        name: &str,
    ) -> Result<StoredPasskey, AppError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > PASSKEY_NAME_MAX_CHARS {
            return Err(AppError::bad_input(
                "name",
                format!("a passkey's name has 1 to {PASSKEY_NAME_MAX_CHARS} characters"),
            ));
        }
        let id =
            Uuid::parse_str(id.trim()).map_err(|_| AppError::bad_input("id", "no such passkey"))?;
        self.store()
            .second_factors
            .rename_passkey(caller.user.id, id, &input::single_line(name))
            .await?
            .ok_or_else(|| AppError::bad_input("id", "no such passkey"))
    }

    /// `deletePasskey`: deletes it and ends the caller's other sessions (those it signed among
    /// them: a lost device's); `false` when the caller has no such passkey. Needs a recent
    /// proof. Errors: REAUTHENTICATION_REQUIRED, UNAUTHENTICATED `REVOKED`.
    pub async fn delete_passkey(&self, caller: &Authenticated, id: &str) -> Result<bool, AppError> {
        self.require_recent_proof(caller)?;
        let Ok(id) = Uuid::parse_str(id.trim()) else {
            return Ok(false);
        };
        let removal = self
            .store()
            .second_factors
            .delete_passkey(caller.user.id, id, caller.session.id)
            .await?;
        self.removed(caller, removal, "passkey_deleted").await
    }

    /// `beginPasskeyLogin`: a challenge for a discoverable credential (no name asked for), and
    /// its id. Rate-limited as `login`. Errors: UNAUTHENTICATED (`reauthenticate` without a
    /// usable access token), INVALID_TOKEN (`mfaToken` unknown or expired),
    /// PASSKEYS_NOT_CONFIGURED, RATE_LIMITED.
    pub async fn begin_passkey_login(
        &self,
        request: PasskeyLoginRequest,
        caller: Result<&Authenticated, AppError>,
        client: ClientInfo,
    ) -> Result<(Uuid, Value), AppError> {
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Login, client.ip).await?;
        let webauthn = self.webauthn()?;
        let now = now();
        let store = self.store();
        let mut state_user = None;
        let mut user_id = None;
        let mut session_id = None;
        let mut mfa = None;
        if request.reauthenticate {
            let caller = caller?;
            user_id = Some(caller.user.id);
            state_user = Some(caller.user.id);
            session_id = Some(caller.session.id);
        } else if let Some(token) = request.mfa_token.as_deref() {
            let token_digest = digest(token.trim());
            let Some(challenge) = store
                .second_factors
                .attempt_challenge(&token_digest, ChallengeKind::Mfa, MAX_MFA_ATTEMPTS, now)
                .await?
            else {
                return Err(self.challenge_refusal(&token_digest, now).await);
            };
            user_id = challenge.user_id;
            state_user = challenge.user_id;
            mfa = Some(token_digest);
        } else if let Some(name) = request.email_or_username.as_deref() {
            let login = input::login_key("emailOrUsername", name)?;
            let found = store.users.find_credentials(&login).await?;
            user_id = found.as_ref().map(|found| found.user.id);
            // A name nobody has: a user nobody is, so that the answer looks the same.
            state_user = Some(user_id.unwrap_or_else(Uuid::new_v4));
        }
        let (options, ceremony) = webauthn
            .start_discoverable_authentication()
            .map_err(AppError::internal)?;
        let mut options = serde_json::to_value(options).map_err(AppError::internal)?;
        let options = options
            .get_mut("publicKey")
            .map(Value::take)
            .ok_or_else(|| {
                AppError::internal("webauthn-rs gave request options without publicKey")
            })?;
        let state = PasskeyLoginState {
            ceremony,
            user: state_user,
            mfa,
            reauthenticate: session_id,
        };
        let challenge_id = Uuid::new_v4();
        store
            .second_factors
            .put_challenge(Challenge {
                id: challenge_id,
                digest: digest(&challenge_id.to_string()),
                kind: ChallengeKind::PasskeyLogin,
                user_id,
                session_id,
                credential_version: None,
                methods: AuthMethods::default(),
                state: Some(serde_json::to_string(&state).map_err(AppError::internal)?),
                attempts: 0,
                created_at: now,
                expires_at: now + CEREMONY_LIFETIME,
            })
            .await?;
        Ok((challenge_id, options))
    }

    /// `finishPasskeyLogin`: checks the assertion against the challenge (single use) and the
    /// passkey it names (by credential id, which must belong to the user handle it carries);
    /// the passkey's counter must move forward (else a cloned authenticator: refused and
    /// logged). Then: a new session (a usernameless login, or the second step after a
    /// password), or, for `reauthenticate`, the caller's session with a fresh proof and a fresh
    /// pair. Errors: INVALID_TOKEN (challenge unknown, used or expired), INVALID_CREDENTIALS,
    /// BAD_USER_INPUT (`credential`), UNAUTHENTICATED (`REVOKED`: the session stepped up was
    /// ended), ACCOUNT_DISABLED, RATE_LIMITED, PASSKEYS_NOT_CONFIGURED.
    pub async fn finish_passkey_login(
        &self,
        challenge_id: &str,
        credential: Value,
        caller: Result<&Authenticated, AppError>,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        counted(
            self.complete_with_passkey(challenge_id, credential, caller, client)
                .await,
        )
    }

    async fn complete_with_passkey(
        &self,
        challenge_id: &str,
        credential: Value,
        caller: Result<&Authenticated, AppError>,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Login, client.ip).await?;
        let webauthn = self.webauthn()?;
        let credential: PublicKeyCredential = parse_credential(credential)?;
        let now = now();
        let store = self.store();
        let challenge_digest = digest(challenge_id.trim());
        let Some(challenge) = store
            .second_factors
            .take_challenge(&challenge_digest, ChallengeKind::PasskeyLogin, now)
            .await?
        else {
            return Err(self.challenge_refusal(&challenge_digest, now).await);
        };
        let state: PasskeyLoginState = challenge
            .state
            .as_deref()
            .and_then(|state| serde_json::from_str(state).ok())
            .ok_or_else(|| AppError::internal("a stored login ceremony does not read"))?;
        // A step-up is of the session that began it, whose access token comes with it.
        let step_up = match state.reauthenticate {
            Some(session_id) => {
                let caller = caller?;
                if caller.session.id != session_id {
                    tracing::info!(
                        event = "passkey_login_refused",
                        reason = "a step-up of another session",
                        "a passkey login was refused"
                    );
                    return Err(AppError::InvalidCredentials);
                }
                Some(caller)
            }
            None => None,
        };
        let refused = |why: &dyn std::fmt::Display| {
            tracing::info!(event = "passkey_login_refused", reason = %why, "a passkey login was refused");
            AppError::InvalidCredentials
        };
        let (user_handle, credential_id) = webauthn
            .identify_discoverable_authentication(&credential)
            .map_err(|error| refused(&error))?;
        let credential_id = URL_SAFE_NO_PAD.encode(credential_id);
        let stored = store
            .second_factors
            .passkey_by_credential_id(&credential_id)
            .await?
            .filter(|stored| stored.user_id == user_handle)
            .ok_or_else(|| refused(&"no such passkey of that user"))?;
        if state.user.is_some_and(|user| user != stored.user_id) {
            return Err(refused(&"a passkey of another account than asked for"));
        }
        limits
            .check_account(Operation::Login, &stored.user_id.to_string(), client.ip)
            .await?;
        // Read before the passkey is used: the session is made under this credential version,
        // so that a removal of the passkey (or any other credential change) that lands after
        // the use below leaves no session (`delete_passkey` moves the version on).
        let user = self
            .store()
            .users
            .find_credentials_by_id(stored.user_id)
            .await?
            .ok_or_else(|| refused(&"the passkey's user is gone"))?
            .user;
        let mut passkey: Passkey = serde_json::from_str(&stored.credential)
            .map_err(|_| AppError::internal("a stored passkey does not read"))?;
        let result = match webauthn.finish_discoverable_authentication(
            &credential,
            state.ceremony,
            &[DiscoverableKey::from(&passkey)],
        ) {
            Ok(result) => result,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                tracing::warn!(event = "passkey_clone_suspected", user_id = %stored.user_id, passkey_id = %stored.id, "a passkey's signature counter went back: a cloned authenticator? refused");
                return Err(AppError::InvalidCredentials);
            }
            Err(error) => return Err(refused(&error)),
        };
        passkey.update_credential(&result);
        let counter = i64::from(result.counter());
        let json = serde_json::to_string(&passkey).map_err(AppError::internal)?;
        if !store
            .second_factors
            .use_passkey(
                stored.id,
                stored.counter,
                counter.max(stored.counter),
                json,
                now,
            )
            .await?
        {
            tracing::warn!(event = "passkey_clone_suspected", user_id = %stored.user_id, passkey_id = %stored.id, "a passkey was used twice with one counter, or deleted meanwhile: refused");
            return Err(AppError::InvalidCredentials);
        }
        let proven = passkey_methods(stored.backup_eligible);
        if let Some(caller) = step_up {
            return self.step_up(caller, proven, now).await;
        }
        self.admit(&user, &client).await?;
        if let Some(mfa) = state.mfa.as_deref() {
            let first = store
                .second_factors
                .take_challenge(mfa, ChallengeKind::Mfa, now)
                .await?
                .filter(|first| first.user_id == Some(stored.user_id))
                .ok_or(AppError::InvalidToken(TokenRefusal::Unknown))?;
            let credential_version = first
                .credential_version
                .ok_or(AppError::InvalidToken(TokenRefusal::Unknown))?;
            return self
                .open_session(
                    user,
                    credential_version,
                    first.methods.union(&proven),
                    client,
                )
                .await;
        }
        let version = user.credential_version;
        self.open_session(user, version, proven, client).await
    }

    /// A passkey step-up: the session records the proof, then its pair is rotated so that the
    /// new access token carries the new `auth_time` and `amr`.
    pub(super) async fn step_up(
        &self,
        caller: &Authenticated,
        proven: AuthMethods,
        now: DateTime<Utc>,
    ) -> Result<IssuedTokens, AppError> {
        let revoked = AppError::Unauthenticated(UnauthenticatedReason::Revoked);
        let session = self.record_proof(caller, proven, now).await?;
        let rotation = Rotation {
            session_id: session.id,
            presented_refresh_jti: session.refresh_jti,
            new_access_jti: Uuid::new_v4(),
            new_refresh_jti: Uuid::new_v4(),
            at: now,
            idle_expires_at: now + self.inner.lifetimes.session_idle,
        };
        let (user, session) = self
            .store()
            .sessions
            .rotate_session(rotation)
            .await?
            .ok_or(revoked)?;
        self.publish(SessionEventKind::Refreshed, user.id, &[session.id])
            .await;
        self.issue(user, session, now)
    }

    /// Records a proof in the caller's session: `authenticated_at` now, its methods with
    /// `proven` added. Errors: UNAUTHENTICATED `REVOKED` (the session ended meanwhile).
    async fn record_proof(
        &self,
        caller: &Authenticated,
        proven: AuthMethods,
        now: DateTime<Utc>,
    ) -> Result<Session, AppError> {
        let methods = caller.session.authentication_methods.union(&proven);
        let session = self
            .store()
            .sessions
            .reauthenticate_session(caller.session.id, caller.session.access_jti, now, methods)
            .await?
            .ok_or(AppError::Unauthenticated(UnauthenticatedReason::Revoked))?;
        tracing::info!(event = "reauthenticated", user_id = %caller.user.id, session_id = %session.id, "the session's user proved who they are again");
        Ok(session)
    }

    /// `reauthenticate`: proves the caller again and records it in the session (its
    /// `authenticatedAt`): by the password on an account without a second factor; by a TOTP or
    /// recovery code (and the password too, when given) on one with TOTP; an account with only
    /// passkeys steps up with a passkey (`beginPasskeyLogin`). Rate-limited as `login`. Errors:
    /// BAD_USER_INPUT (`password`: neither given; `code`: a second factor is needed),
    /// INVALID_CREDENTIALS, RATE_LIMITED, UNAUTHENTICATED `REVOKED` (the session ended).
    pub async fn reauthenticate(
        &self,
        caller: &Authenticated,
        password: Option<String>,
        code: Option<String>,
        client: ClientInfo,
    ) -> Result<Session, AppError> {
        self.check_second_factor_limits(caller.user.id, &client)
            .await?;
        let now = now();
        // An account with a second factor proves itself again with it: the password alone
        // would let a stolen session and a phished password turn the factor off.
        if password.is_none() && code.is_none() {
            return Err(AppError::bad_input(
                "password",
                "give the password or a code from the authenticator app",
            ));
        }
        let factors = self.second_factors_of(caller.user.id).await?;
        if (factors.totp || factors.passkeys > 0) && !(factors.totp && code.is_some()) {
            return Err(AppError::bad_input(
                "code",
                "this account has a second factor: give a code from the authenticator app, or use a passkey (beginPasskeyLogin with reauthenticate: true)",
            ));
        }
        let mut proven = AuthMethods::default();
        if let Some(password) = password {
            self.prove_password(caller, password).await?;
            proven = proven.union(&AuthMethods::of(["pwd"]));
        }
        if let Some(code) = code {
            proven = proven.union(&self.prove_code(caller.user.id, &code, now).await?);
        }
        self.record_proof(caller, proven, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_appendix_b_sha1_vectors() {
        // The RFC's seed "12345678901234567890", base32; its 8-digit codes end in these 6.
        let secret = totp_rs::Secret::Raw(b"12345678901234567890".to_vec())
            .to_encoded()
            .to_string();
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(totp_code(&secret, time / 30).unwrap(), code, "T={time}");
        }
    }

    #[test]
    fn a_code_matches_its_step_and_its_neighbours_only() {
        let secret = totp_rs::Secret::Raw(vec![7; 20]).to_encoded().to_string();
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let step = totp_step(now);
        for offset in -1..=1 {
            let code = totp_code(&secret, step + offset).unwrap();
            assert_eq!(matching_step(&secret, &code, now), Some(step + offset));
        }
        for offset in [-3, -2, 2, 3] {
            let code = totp_code(&secret, step + offset).unwrap();
            assert_ne!(matching_step(&secret, &code, now), Some(step + offset));
        }
    }

    #[test]
    fn recovery_codes_are_distinct_and_compare_loosely() {
        let (codes, digests) = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let unique: std::collections::BTreeSet<_> = digests.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
        let typed = format!(" {} ", codes[0].to_uppercase().replace('-', " "));
        assert_eq!(digest(&normalize_recovery_code(&typed)), digests[0]);
    }

    #[test]
    fn the_key_uri_escapes_the_label() {
        let uri = otpauth_uri("My App", "a:b@example.com", "ABC");
        assert!(uri.starts_with("otpauth://totp/My%20App:a%3Ab%40example%2Ecom?secret=ABC"));
    }

    #[test]
    fn amr_adds_mfa_for_two_kinds_or_a_verified_key() {
        assert_eq!(AuthMethods::of(["pwd"]).to_text(), "pwd");
        assert_eq!(AuthMethods::of(["otp", "pwd"]).to_text(), "pwd,otp,mfa");
        assert_eq!(passkey_methods(false).to_text(), "hwk,user,mfa");
        assert_eq!(passkey_methods(true).to_text(), "swk,user,mfa");
        assert_eq!(
            AuthMethods::parse("pwd")
                .union(&passkey_methods(false))
                .to_text(),
            "pwd,hwk,user,mfa"
        );
        assert_eq!(AuthMethods::parse("bogus,,pwd").to_text(), "pwd");
    }
}
