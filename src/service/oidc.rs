//! Sign in with OpenID Connect providers: `beginOidcLogin` → the provider → authql's callback
//! (`/auth/oidc/callback`) → the app's page → `completeOidcLogin`. The flow is the
//! authorization code flow with PKCE (OIDC Core § 3.1, RFC 7636, as RFC 9700 § 2.1.1 asks):
//! - `beginOidcLogin` keeps `state`, the PKCE verifier and the `nonce` server-side (a challenge
//!   row found by the state's digest: single use, 10 minutes) and answers the provider's URL.
//! - The callback takes that row (a replayed or forged state finds none), exchanges the code,
//!   validates the ID token (`crate::oidc`), and sends the browser to the app's `redirectUri`
//!   with a one-time `code` of authql's own (60 s) and the `state` back: never a token in a
//!   URL.
//! - `completeOidcLogin(code)` decides the account and opens the session, as `login` does:
//!   the same admission (disabled, unverified), the same second factor (MFA_REQUIRED), `amr`
//!   `fed` (RFC 8176 § 2).
//!
//! Accounts (the pre-hijacking attacks of Sudhodanan & Paverd, USENIX Security 2022, are what
//! these rules stop):
//! - an identity (`iss` + `sub`) belongs to one account, and signs in to it;
//! - an unknown identity makes a new account only when the provider says `email_verified` and no
//!   account has the address; an account that has it is linked only when both sides proved the
//!   address (the provider's `email_verified`, authql's own verification), else ACCOUNT_EXISTS;
//! - a signed-in user links more with `link: true` (a recent proof, a verified address);
//! - `unlinkIdentity` keeps the last way in (LAST_LOGIN_METHOD).

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    AuthService, ClientInfo, IssuedTokens,
    events::SessionEventKind,
    input, now,
    rate_limit::Operation,
    second_factors::{digest, random_bytes},
};
use crate::{
    auth::Authenticated,
    error::{AppError, UnauthenticatedReason},
    oidc::{OidcProviders, ProviderError, VerifiedIdentity},
    store::{
        AuthMethods, Challenge, ChallengeKind, FIRST_CREDENTIAL_VERSION, Identity, Linking,
        NO_PASSWORD, NewUser, StoreError, Unlinking, User,
    },
};

/// How long a `beginOidcLogin` may wait for its callback.
pub const AUTHORIZATION_LIFETIME: TimeDelta = TimeDelta::minutes(10);
/// How long the app has to redeem the callback's `code` with `completeOidcLogin`.
pub const COMPLETION_LIFETIME: TimeDelta = TimeDelta::seconds(60);
/// The longest `code` or `state` a client can hand in that could be authql's (43 characters:
/// 32 bytes base64url); anything longer is refused before it is hashed.
const MAX_HANDLE_BYTES: usize = 128;

/// OpenID Connect sign-in: the providers and the app pages a sign-in may return to.
pub struct OidcSignIn {
    providers: Arc<OidcProviders>,
    /// `OIDC_REDIRECT_URIS`, matched exactly.
    redirect_uris: Vec<String>,
}

impl OidcSignIn {
    pub fn new(providers: Arc<OidcProviders>, redirect_uris: Vec<String>) -> Self {
        Self {
            providers,
            redirect_uris,
        }
    }
}

/// A configured provider, as `oidcProviders` lists it.
#[derive(Debug, Clone)]
pub struct ProviderInfo {
    pub name: String,
    pub display_name: String,
}

/// What the callback keeps of `beginOidcLogin` (the authorization challenge's `state`).
#[derive(Serialize, Deserialize)]
struct Authorization {
    provider: String,
    redirect_uri: String,
    nonce: String,
    pkce_verifier: String,
}

/// What `completeOidcLogin` gets from the callback (the completion challenge's `state`).
#[derive(Serialize, Deserialize)]
struct Completion {
    provider: String,
    issuer: String,
    subject: String,
    email: Option<String>,
    email_verified: bool,
}

/// What `/auth/oidc/callback` received (RFC 6749 § 4.1.2, § 4.1.2.1).
#[derive(Debug, Default, Clone)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    /// The provider's issuer, when it says (RFC 9207 § 2).
    pub iss: Option<String>,
}

/// Where the callback sends the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// To the app's `redirectUri`, with `code` and `state`, or `error` and `state`.
    Redirect(String),
    /// Nowhere: the `state` is unknown, used or expired, so there is no page it is known to
    /// come from (redirecting anywhere else would be an open redirect).
    InvalidState,
}

/// RFC 6749 § 4.1.2.1's error codes: what a provider's `error` is passed on as (another value
/// becomes `access_denied`).
const AUTHORIZATION_ERRORS: [&str; 7] = [
    "invalid_request",
    "unauthorized_client",
    "access_denied",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
];

impl AuthService {
    fn oidc(&self) -> Option<&OidcSignIn> {
        self.inner.oidc.as_ref()
    }

    /// `oidcProviders`: the configured providers, in the order of OIDC_PROVIDERS.
    pub fn oidc_providers(&self) -> Vec<ProviderInfo> {
        self.oidc()
            .map(|oidc| {
                oidc.providers
                    .list()
                    .map(|(name, display_name)| ProviderInfo {
                        name: name.to_owned(),
                        display_name: display_name.to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `beginOidcLogin`: the provider's authorization URL for a new sign-in that returns to
    /// `redirect_uri`, and its `state`. With `linking` (the signed-in caller, `link: true`),
    /// the sign-in links the identity to the caller's account instead; that needs a recent
    /// proof and a verified address. Rate-limited as `login`. Errors: BAD_USER_INPUT
    /// (`provider`: not configured; `redirectUri`: not in OIDC_REDIRECT_URIS),
    /// REAUTHENTICATION_REQUIRED, EMAIL_NOT_VERIFIED (`ACCOUNT`), SERVICE_UNAVAILABLE (the
    /// provider is not reachable yet), RATE_LIMITED.
    pub async fn begin_oidc_login(
        &self,
        provider: &str,
        redirect_uri: &str,
        linking: Option<&Authenticated>,
        client: &ClientInfo,
    ) -> Result<(String, String), AppError> {
        self.inner
            .rate_limits
            .check_client(Operation::Login, client.ip)
            .await?;
        let unknown = || AppError::bad_input("provider", "no such sign-in provider");
        let oidc = self.oidc().ok_or_else(unknown)?;
        if !oidc.providers.knows(provider) {
            return Err(unknown());
        }
        if !oidc.redirect_uris.iter().any(|known| known == redirect_uri) {
            return Err(AppError::bad_input(
                "redirectUri",
                "this page is not one a sign-in may return to (OIDC_REDIRECT_URIS)",
            ));
        }
        if let Some(caller) = linking {
            self.require_recent_proof(caller)?;
            if caller.user.email_verified_at.is_none() {
                return Err(AppError::AddressNotProven { by_provider: false });
            }
        }
        let request = match oidc.providers.authorization_request(provider) {
            None => return Err(unknown()),
            Some(Err(why)) => return Err(provider_unavailable(provider, why)),
            Some(Ok(request)) => request,
        };
        let kept = Authorization {
            provider: provider.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            nonce: request.nonce,
            pkce_verifier: request.pkce_verifier,
        };
        let now = now();
        self.store()
            .second_factors
            .put_challenge(Challenge {
                id: Uuid::new_v4(),
                digest: digest(&request.state),
                kind: ChallengeKind::OidcAuthorization,
                user_id: linking.map(|caller| caller.user.id),
                session_id: linking.map(|caller| caller.session.id),
                credential_version: linking.map(|caller| caller.user.credential_version),
                methods: AuthMethods::default(),
                state: Some(serde_json::to_string(&kept).map_err(AppError::internal)?),
                attempts: 0,
                created_at: now,
                expires_at: now + AUTHORIZATION_LIFETIME,
            })
            .await?;
        Ok((request.url.to_string(), request.state))
    }

    /// `GET /auth/oidc/callback`: takes the sign-in its `state` names (once), exchanges the
    /// code and validates the ID token, then sends the browser back to the app's page with a
    /// one-time `code` for `completeOidcLogin`, or with `error` (RFC 6749 § 4.1.2.1:
    /// `access_denied` when the provider's answer was refused, `temporarily_unavailable` when
    /// the provider could not be reached, the provider's own error when it sent one).
    /// Errors: SERVICE_UNAVAILABLE (the database is away: nothing is known of the sign-in).
    pub async fn finish_oidc_authorization(
        &self,
        params: CallbackParams,
    ) -> Result<CallbackOutcome, AppError> {
        let Some(oidc) = self.oidc() else {
            return Ok(CallbackOutcome::InvalidState);
        };
        let Some(state) = params.state.filter(|state| state.len() <= MAX_HANDLE_BYTES) else {
            return Ok(CallbackOutcome::InvalidState);
        };
        let now = now();
        let Some(challenge) = self
            .store()
            .second_factors
            .take_challenge(&digest(&state), ChallengeKind::OidcAuthorization, now)
            .await?
        else {
            tracing::info!(
                event = "oidc_callback_refused",
                reason = "unknown_state",
                "an OpenID Connect callback named no sign-in in progress"
            );
            return Ok(CallbackOutcome::InvalidState);
        };
        let Some(kept) = challenge
            .state
            .as_deref()
            .and_then(|text| serde_json::from_str::<Authorization>(text).ok())
        else {
            return Ok(CallbackOutcome::InvalidState);
        };
        let back = |pairs: &[(&str, &str)]| {
            CallbackOutcome::Redirect(with_query(&kept.redirect_uri, pairs, &state))
        };
        // A response that names another issuer than the one the sign-in began at is a mix-up
        // (RFC 9207 § 2.4): its code is for no provider of this sign-in.
        if let Some(iss) = params.iss.as_deref()
            && oidc.providers.issuer_of(&kept.provider) != Some(iss)
        {
            tracing::warn!(event = "oidc_callback_refused", reason = "issuer_mismatch", provider = %kept.provider, "the callback named another issuer than the sign-in's provider");
            return Ok(back(&[("error", "access_denied")]));
        }
        if let Some(error) = params.error {
            let error = AUTHORIZATION_ERRORS
                .into_iter()
                .find(|known| *known == error)
                .unwrap_or("access_denied");
            tracing::info!(event = "oidc_callback_refused", reason = "provider_error", provider = %kept.provider, error, "the OpenID Provider answered the sign-in with an error");
            return Ok(back(&[("error", error)]));
        }
        let Some(code) = params.code.filter(|code| !code.is_empty()) else {
            return Ok(back(&[("error", "invalid_request")]));
        };
        let verified = oidc
            .providers
            .exchange(&kept.provider, &code, &kept.pkce_verifier, &kept.nonce)
            .await;
        let verified = match verified {
            Ok(verified) => verified,
            Err(ProviderError::Unavailable(why)) => {
                tracing::warn!(event = "oidc_provider_unavailable", provider = %kept.provider, error = %why, "the OpenID Provider could not be reached for the code exchange");
                return Ok(back(&[("error", "temporarily_unavailable")]));
            }
            Err(ProviderError::Rejected(why)) => {
                tracing::warn!(event = "oidc_callback_refused", reason = "rejected", provider = %kept.provider, error = %why, "the OpenID Provider's answer was refused");
                return Ok(back(&[("error", "access_denied")]));
            }
        };
        let completion = Completion {
            provider: verified.provider,
            issuer: verified.issuer,
            subject: verified.subject,
            email: verified.email,
            email_verified: verified.email_verified,
        };
        let code = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        self.store()
            .second_factors
            .put_challenge(Challenge {
                id: Uuid::new_v4(),
                digest: digest(&code),
                kind: ChallengeKind::OidcCompletion,
                user_id: challenge.user_id,
                session_id: challenge.session_id,
                credential_version: challenge.credential_version,
                methods: AuthMethods::of(["fed"]),
                state: Some(serde_json::to_string(&completion).map_err(AppError::internal)?),
                attempts: 0,
                created_at: now,
                expires_at: now + COMPLETION_LIFETIME,
            })
            .await?;
        Ok(back(&[("code", &code)]))
    }

    /// `completeOidcLogin`: redeems the callback's one-time `code`. A sign-in opens a session
    /// of the identity's account (made or linked as the module says) and answers as `login`
    /// does (the request's own token, `caller`, is not looked at); a link (`link: true`) needs
    /// the very session that began it (`caller`), links the
    /// identity to its account and rotates that session's pair, which then records `fed`.
    /// Rate-limited as `login`; counted in `authql_logins_total` as a login. Errors:
    /// INVALID_TOKEN (`UNKNOWN`: no such code, or used;
    /// `EXPIRED`), ACCOUNT_EXISTS, EMAIL_NOT_VERIFIED (`PROVIDER`, or authql's own with
    /// `EMAIL_VERIFICATION=required`), ACCOUNT_DISABLED, MFA_REQUIRED, UNAUTHENTICATED (a link
    /// completed without its session), RATE_LIMITED, SERVICE_UNAVAILABLE.
    pub async fn complete_oidc_login(
        &self,
        code: &str,
        caller: Result<&Authenticated, AppError>,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        super::second_factors::counted(self.redeem_oidc_code(code, caller, client).await)
    }

    async fn redeem_oidc_code(
        &self,
        code: &str,
        caller: Result<&Authenticated, AppError>,
        client: ClientInfo,
    ) -> Result<IssuedTokens, AppError> {
        let limits = &self.inner.rate_limits;
        limits.check_client(Operation::Login, client.ip).await?;
        let code = code.trim();
        if code.len() > MAX_HANDLE_BYTES {
            return Err(AppError::InvalidToken(crate::store::TokenRefusal::Unknown));
        }
        let now = now();
        let code_digest = digest(code);
        let Some(challenge) = self
            .store()
            .second_factors
            .take_challenge(&code_digest, ChallengeKind::OidcCompletion, now)
            .await?
        else {
            return Err(self.challenge_refusal(&code_digest, now).await);
        };
        let Some(completion) = challenge
            .state
            .as_deref()
            .and_then(|text| serde_json::from_str::<Completion>(text).ok())
        else {
            return Err(AppError::InvalidToken(crate::store::TokenRefusal::Unknown));
        };
        let identity = VerifiedIdentity {
            provider: completion.provider,
            issuer: completion.issuer,
            subject: completion.subject,
            email: completion.email,
            email_verified: completion.email_verified,
        };
        if let Some(session_id) = challenge.session_id {
            let caller = caller?;
            if caller.session.id != session_id {
                tracing::info!(event = "oidc_link_refused", user_id = %caller.user.id, "a link was completed by another session than the one that began it");
                return Err(AppError::InvalidToken(crate::store::TokenRefusal::Unknown));
            }
            return self.link_to_caller(caller, identity, now).await;
        }
        let user = self.account_of(&identity, &client, now).await?;
        let user = match user {
            SignedIn::Existing(user) => user,
            SignedIn::Created(tokens) => return Ok(*tokens),
        };
        self.admit(&user, &client).await?;
        let fed = AuthMethods::of(["fed"]);
        self.ask_for_second_factor(&user, fed, now).await?;
        let version = user.credential_version;
        self.open_session(user, version, fed, client).await
    }

    /// The account `identity` signs in to: its own, one that has its address and may be linked
    /// to it, or a new one (made with its first session, which is then all there is to do).
    async fn account_of(
        &self,
        identity: &VerifiedIdentity,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<SignedIn, AppError> {
        let store = self.store();
        // A concurrent first sign-in of the same identity or address wins the race once; the
        // second attempt then finds what it stored.
        for _ in 0..2 {
            if let Some((_, credentials)) = store
                .identities
                .find_identity(&identity.issuer, &identity.subject)
                .await?
            {
                return Ok(SignedIn::Existing(credentials.user));
            }
            let email = match identity.email.as_deref() {
                Some(email) if identity.email_verified => input::email("email", email)
                    .map_err(|_| AppError::AddressNotProven { by_provider: true })?,
                _ => {
                    tracing::info!(event = "oidc_sign_in_refused", reason = "email_not_verified", provider = %identity.provider, "an unknown identity without a verified address");
                    return Err(AppError::AddressNotProven { by_provider: true });
                }
            };
            // An account with this address unlinked the identity (a provider account someone
            // else took over, say): never linked, nor given an account, by the address again.
            if store
                .identities
                .unlinked_before(&email.normalized, &identity.issuer, &identity.subject)
                .await?
            {
                tracing::info!(event = "oidc_sign_in_refused", reason = "unlinked", provider = %identity.provider, "a sign-in with an identity an account with its address unlinked");
                return Err(AppError::AccountExists);
            }
            if let Some(account) = store.users.find_credentials(&email.normalized).await? {
                // Both sides proved the address, or nothing is linked: an account made with
                // someone else's address and never verified, or a provider that does not verify
                // addresses, must not open the other's account (pre-hijacking).
                if account.user.email_verified_at.is_none() {
                    tracing::info!(event = "oidc_sign_in_refused", reason = "account_exists", provider = %identity.provider, user_id = %account.user.id, "an identity whose address belongs to an account that never verified it");
                    return Err(AppError::AccountExists);
                }
                // An account with a second factor is linked only from a session of its own
                // (`link: true`): linking before the factor is proven would change the account
                // for someone who may never prove it.
                let factors = self.second_factors_of(account.user.id).await?;
                if factors.totp || factors.passkeys > 0 {
                    tracing::info!(event = "oidc_sign_in_refused", reason = "second_factor", provider = %identity.provider, user_id = %account.user.id, "an identity whose address belongs to an account with a second factor");
                    return Err(AppError::AccountExists);
                }
                match store
                    .identities
                    .link_identity(new_identity(account.user.id, identity, now))
                    .await?
                {
                    Linking::Linked(_) => {
                        tracing::info!(event = "oidc_identity_linked", provider = %identity.provider, user_id = %account.user.id, "an identity was linked to the account that has its verified address");
                        return Ok(SignedIn::Existing(account.user));
                    }
                    Linking::ProviderTaken => return Err(AppError::AccountExists),
                    Linking::IdentityTaken | Linking::UnknownUser => continue,
                }
            }
            match self.create_account(identity, email, client, now).await {
                Ok(tokens) => return Ok(SignedIn::Created(Box::new(tokens))),
                Err(AppError::EmailTaken | AppError::UsernameTaken | AppError::AccountExists) => {
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
        Err(AppError::AccountExists)
    }

    /// A new account for `identity`, its address verified, no password, with its first
    /// session.
    async fn create_account(
        &self,
        identity: &VerifiedIdentity,
        email: input::Email,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<IssuedTokens, AppError> {
        let (username, username_normalized) = input::username("email", &email.display, &email)
            .map_err(|_| AppError::AddressNotProven { by_provider: true })?;
        let user_id = Uuid::new_v4();
        let user = NewUser {
            id: user_id,
            email: email.display,
            email_normalized: email.normalized,
            username,
            username_normalized,
            password_hash: NO_PASSWORD.to_owned(),
            created_at: now,
            email_verified_at: Some(now),
            identity: Some(new_identity(user_id, identity, now)),
        };
        let session = self.new_session(
            user_id,
            FIRST_CREDENTIAL_VERSION,
            AuthMethods::of(["fed"]),
            client.clone(),
            now,
        );
        let (user, session) = match self
            .store()
            .users
            .register_user(user, Some(session), None)
            .await
        {
            Ok((user, Some(session))) => (user, session),
            Ok((_, None)) => return Err(AppError::internal("registration stored no session")),
            Err(StoreError::IdentityTaken) => return Err(AppError::AccountExists),
            Err(error) => return Err(error.into()),
        };
        tracing::info!(event = "oidc_account_created", provider = %identity.provider, user_id = %user.id, session_id = %session.id, "an account was made for a new OpenID Connect identity");
        self.publish(SessionEventKind::Created, user.id, &[session.id])
            .await;
        self.issue(user, session, now)
    }

    /// A link (`link: true`): the identity becomes the caller's (unless it is another
    /// account's), then the caller's session records the provider's proof.
    async fn link_to_caller(
        &self,
        caller: &Authenticated,
        identity: VerifiedIdentity,
        now: DateTime<Utc>,
    ) -> Result<IssuedTokens, AppError> {
        let store = self.store();
        match store
            .identities
            .link_identity(new_identity(caller.user.id, &identity, now))
            .await?
        {
            Linking::Linked(_) => {
                tracing::info!(event = "oidc_identity_linked", provider = %identity.provider, user_id = %caller.user.id, "the signed-in user linked an identity");
            }
            Linking::IdentityTaken => {
                let own = store
                    .identities
                    .find_identity(&identity.issuer, &identity.subject)
                    .await?
                    .is_some_and(|(found, _)| found.user_id == caller.user.id);
                if !own {
                    return Err(AppError::AccountExists);
                }
            }
            Linking::ProviderTaken => {
                return Err(AppError::bad_input(
                    "provider",
                    "this account has an identity of this provider already: unlink it first",
                ));
            }
            Linking::UnknownUser => {
                return Err(AppError::Unauthenticated(UnauthenticatedReason::Revoked));
            }
        }
        self.step_up(caller, AuthMethods::of(["fed"]), now).await
    }

    /// `me { identities }`: the account's identities, oldest first.
    pub async fn identities_of(&self, user_id: Uuid) -> Result<Vec<Identity>, AppError> {
        Ok(self.store().identities.identities(user_id).await?)
    }

    /// `unlinkIdentity`: removes the caller's identity of `provider`; as removing a passkey
    /// does, the caller's other sessions end. The identity is then never linked, nor given an
    /// account, by the caller's address again (ACCOUNT_EXISTS); only `link: true` links it.
    /// `false` when there is none. Needs a recent
    /// proof. Errors: LAST_LOGIN_METHOD (no password and no other identity: set a password
    /// through `requestPasswordReset` first), REAUTHENTICATION_REQUIRED, UNAUTHENTICATED
    /// `REVOKED` (the session ended meanwhile).
    pub async fn unlink_identity(
        &self,
        caller: &Authenticated,
        provider: &str,
    ) -> Result<bool, AppError> {
        self.require_recent_proof(caller)?;
        match self
            .store()
            .identities
            .unlink_identity(caller.user.id, provider, caller.session.id, now())
            .await?
        {
            Unlinking::LastLoginMethod => Err(AppError::LastLoginMethod),
            Unlinking::Unlinked(removal) => {
                self.removed(caller, removal, "identity_unlinked").await
            }
        }
    }
}

/// Who a sign-in is for.
enum SignedIn {
    Existing(User),
    /// A new account, whose first session is open already.
    Created(Box<IssuedTokens>),
}

fn new_identity(user_id: Uuid, identity: &VerifiedIdentity, now: DateTime<Utc>) -> Identity {
    Identity {
        id: Uuid::new_v4(),
        user_id,
        provider: identity.provider.clone(),
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        linked_at: now,
    }
}

fn provider_unavailable(provider: &str, why: ProviderError) -> AppError {
    let why = match why {
        ProviderError::Unavailable(why) | ProviderError::Rejected(why) => why,
    };
    tracing::warn!(event = "oidc_provider_unavailable", provider, error = %why, "an OpenID Connect sign-in could not begin");
    AppError::ServiceUnavailable
}

/// `redirect_uri` with `pairs` and `state` added to its query (RFC 6749 § 4.1.2: the
/// redirection URI's own query is kept).
fn with_query(redirect_uri: &str, pairs: &[(&str, &str)], state: &str) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (name, value) in pairs {
                    query.append_pair(name, value);
                }
                query.append_pair("state", state);
            }
            url.to_string()
        }
        // OIDC_REDIRECT_URIS are checked at start; this is never reached.
        Err(_) => redirect_uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_query;

    #[test]
    fn the_redirect_keeps_the_pages_own_query_and_escapes_what_it_adds() {
        assert_eq!(
            with_query("https://app.example/cb?tab=1", &[("code", "a+b/c")], "s"),
            "https://app.example/cb?tab=1&code=a%2Bb%2Fc&state=s"
        );
        assert_eq!(
            with_query(
                "http://127.0.0.1:3000/",
                &[("error", "access_denied")],
                "x y"
            ),
            "http://127.0.0.1:3000/?error=access_denied&state=x+y"
        );
    }
}
