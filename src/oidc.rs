//! The OpenID Connect providers people sign in with (`OIDC_PROVIDERS`): each provider's
//! discovery document and keys, the authorization request, the code exchange and the ID token's
//! validation (OpenID Connect Core 1.0 § 3.1.3.7), through the `openidconnect` crate.
//!
//! Discovery (`/.well-known/openid-configuration`, OpenID Connect Discovery 1.0 § 4) and the
//! provider's JWKS are fetched at start, then again every [`REFRESH_INTERVAL`]; a provider that
//! cannot be reached is retried in the background with growing pauses, and its sign-ins answer
//! SERVICE_UNAVAILABLE meanwhile. An ID token signed with a key the cached JWKS lacks makes
//! authql fetch the JWKS once more before it refuses the token (the provider rotated its keys).
//!
//! What the rest of authql sees is a [`VerifiedIdentity`]: the provider's `iss` and `sub`, and
//! the address with whether the provider verified it. Accounts are decided elsewhere
//! (`service::oidc`).

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use openidconnect::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, JsonWebKeySetUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenUrl,
    core::{
        CoreAuthenticationFlow, CoreClient, CoreIdTokenVerifier, CoreJsonWebKeySet,
        CoreJwsSigningAlgorithm, CoreProviderMetadata,
    },
};
use secrecy::ExposeSecret;
use url::Url;

use crate::config::OidcProviderSettings;

/// How often a provider's discovery document and keys are fetched again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest pause between two attempts to reach a provider that did not answer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(60);
/// How long one request to a provider may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer authql reads from a provider (a discovery document, a JWKS, a token
/// response): a provider that sends more is treated as unreachable.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Longest `sub` (OIDC Core § 2).
const MAX_SUBJECT_BYTES: usize = 255;
/// How far an ID token's `iat` may lie in the future (clock skew) or the past: the token comes
/// straight from the token endpoint, so it was issued moments ago (OIDC Core § 3.1.3.7, 10).
const IAT_SKEW: TimeDelta = TimeDelta::minutes(5);

/// An identity a provider vouched for in a valid ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The `OIDC_PROVIDERS` name.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The provider's `email_verified`; absent counts as `false`.
    pub email_verified: bool,
}

/// Why a sign-in at a provider did not give a [`VerifiedIdentity`].
#[derive(Debug)]
pub enum ProviderError {
    /// The provider could not be reached, or is not discovered yet: worth retrying.
    Unavailable(String),
    /// The provider refused the code, or its answer did not pass validation. The text is for
    /// the server's log.
    Rejected(String),
}

/// What an authorization request needs kept until its callback (server-side, single use).
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    /// The URL to send the browser to.
    pub url: Url,
    pub state: String,
    pub nonce: String,
    /// The PKCE `code_verifier` (RFC 7636 § 4.1); its S256 challenge is in the URL.
    pub pkce_verifier: String,
}

/// The configured providers.
pub struct OidcProviders {
    providers: Vec<Arc<Provider>>,
    http: reqwest::Client,
    /// `PUBLIC_URL/auth/oidc/callback`.
    callback: RedirectUrl,
}

struct Provider {
    settings: OidcProviderSettings,
    issuer: IssuerUrl,
    /// `None` until the first discovery succeeded.
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// Held while the JWKS is fetched again for an unknown key, so that concurrent sign-ins
    /// share one fetch.
    refetching: tokio::sync::Mutex<()>,
}

/// What discovery found.
struct Discovered {
    authorization: AuthUrl,
    token: TokenUrl,
    jwks_uri: JsonWebKeySetUrl,
    jwks: CoreJsonWebKeySet,
    /// `id_token_signing_alg_values_supported`, without `none`.
    algorithms: Vec<CoreJwsSigningAlgorithm>,
}

/// Whether `url` may be used to reach a provider: `https`, or `http` on a loopback address
/// (development and tests).
pub fn acceptable_provider_url(url: &Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host() {
            Some(url::Host::Ipv4(address)) => address.is_loopback(),
            Some(url::Host::Ipv6(address)) => address.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

impl OidcProviders {
    /// The providers of `settings`, with `callback` as authql's redirect URI at each. Errors
    /// (for the start to stop with) name the setting: an issuer that is not `https` (or
    /// loopback `http`), an empty client id.
    pub fn new(settings: Vec<OidcProviderSettings>, callback: &str) -> anyhow::Result<Self> {
        let callback = RedirectUrl::new(callback.to_owned())
            .map_err(|why| anyhow::anyhow!("the OIDC callback URL {callback:?}: {why}"))?;
        let mut providers = Vec::new();
        for settings in settings {
            let prefix = format!("OIDC_{}_", settings.name.to_ascii_uppercase());
            let issuer = IssuerUrl::new(settings.issuer.clone())
                .ok()
                .filter(|issuer| acceptable_provider_url(issuer.url()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{prefix}ISSUER is not an https:// URL (http:// only on a loopback address): {:?}",
                        settings.issuer
                    )
                })?;
            if settings.client_id.is_empty() {
                anyhow::bail!("{prefix}CLIENT_ID is empty");
            }
            providers.push(Arc::new(Provider {
                settings,
                issuer,
                discovered: RwLock::new(None),
                refetching: tokio::sync::Mutex::new(()),
            }));
        }
        let http = reqwest::Client::builder()
            // A provider's endpoints answer directly; following a redirect would let a
            // compromised document send authql's requests anywhere (the crate's advice too).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            providers,
            http,
            callback,
        })
    }

    /// `(name, display name)` of every provider, in the order of OIDC_PROVIDERS.
    pub fn list(&self) -> impl Iterator<Item = (&str, &str)> {
        self.providers.iter().map(|provider| {
            (
                provider.settings.name.as_str(),
                provider.settings.display_name.as_str(),
            )
        })
    }

    /// The configured issuer of `name` (what its callbacks' `iss` must be, RFC 9207).
    pub fn issuer_of(&self, name: &str) -> Option<&str> {
        self.provider(name).map(|provider| provider.issuer.as_str())
    }

    /// Whether `name` is a configured provider.
    pub fn knows(&self, name: &str) -> bool {
        self.provider(name).is_some()
    }

    fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers
            .iter()
            .find(|provider| provider.settings.name == name)
    }

    /// Discovers every provider once, waiting at most `patience`; then keeps each one fresh on
    /// a task of its own: retried with growing pauses while it cannot be reached, refreshed
    /// every [`REFRESH_INTERVAL`] after. Never fails: a provider that is away is only logged.
    pub async fn start(self: &Arc<Self>, patience: Duration) {
        let mut first = tokio::task::JoinSet::new();
        for provider in &self.providers {
            let (providers, provider) = (self.clone(), provider.clone());
            first.spawn(async move { providers.discover(&provider).await });
        }
        let _ = tokio::time::timeout(patience, async {
            while first.join_next().await.is_some() {}
        })
        .await;
        // Those not done are carried on by their keepers (a second attempt at most).
        drop(first);
        for provider in &self.providers {
            let (providers, provider) = (self.clone(), provider.clone());
            tokio::spawn(async move { providers.keep_fresh(provider).await });
        }
    }

    async fn keep_fresh(self: Arc<Self>, provider: Arc<Provider>) {
        let mut pause = Duration::from_secs(1);
        loop {
            let known = provider.current().is_some();
            tokio::time::sleep(if known { REFRESH_INTERVAL } else { pause }).await;
            if self.discover(&provider).await {
                pause = Duration::from_secs(1);
            } else {
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }

    /// Fetches the provider's discovery document and JWKS; `true` when they are now current.
    async fn discover(&self, provider: &Provider) -> bool {
        let name = &provider.settings.name;
        match self.fetch_discovery(provider).await {
            Ok(discovered) => {
                let first = provider.current().is_none();
                *provider
                    .discovered
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Arc::new(discovered));
                if first {
                    tracing::info!(event = "oidc_provider_discovered", provider = %name, "OpenID Provider discovered");
                }
                true
            }
            Err(why) => {
                tracing::warn!(event = "oidc_discovery_failed", provider = %name, error = %why, "could not fetch the OpenID Provider's configuration; its sign-ins answer SERVICE_UNAVAILABLE until it can");
                false
            }
        }
    }

    async fn fetch_discovery(&self, provider: &Provider) -> Result<Discovered, String> {
        // Discovery checks that the document's `issuer` is the one configured (OpenID Connect
        // Discovery 1.0 § 4.3) and fetches the JWKS.
        let http = |request| fetch(self.http.clone(), request);
        let metadata = CoreProviderMetadata::discover_async(provider.issuer.clone(), &http)
            .await
            .map_err(|why| error_chain(&why))?;
        let token = metadata
            .token_endpoint()
            .cloned()
            .ok_or("the provider has no token endpoint")?;
        let authorization = metadata.authorization_endpoint().clone();
        let jwks_uri = metadata.jwks_uri().clone();
        for (what, url) in [
            ("authorization_endpoint", authorization.url()),
            ("token_endpoint", token.url()),
            ("jwks_uri", jwks_uri.url()),
        ] {
            if !acceptable_provider_url(url) {
                return Err(format!(
                    "its {what} is not https (http only on a loopback address): {url}"
                ));
            }
        }
        let algorithms: Vec<_> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|algorithm| **algorithm != CoreJwsSigningAlgorithm::None)
            .cloned()
            .collect();
        if algorithms.is_empty() {
            return Err("it advertises no ID token signing algorithm but none".into());
        }
        Ok(Discovered {
            authorization,
            token,
            jwks_uri,
            jwks: metadata.jwks().clone(),
            algorithms,
        })
    }

    /// A new authorization request (OIDC Core § 3.1.2.1) to `provider`: `response_type=code`,
    /// the configured scopes, a fresh `state` and `nonce` (32 random bytes each) and a PKCE S256
    /// challenge (RFC 7636). `None` for an unknown provider. Errors: `Unavailable` (not
    /// discovered yet).
    pub fn authorization_request(
        &self,
        provider: &str,
    ) -> Option<Result<AuthorizationRequest, ProviderError>> {
        let provider = self.provider(provider)?;
        let Some(discovered) = provider.current() else {
            return Some(Err(ProviderError::Unavailable(
                "the provider is not discovered yet".into(),
            )));
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .client(provider, &discovered)
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(
                provider
                    .settings
                    .scopes
                    .iter()
                    // The crate asks for `openid` itself.
                    .filter(|scope| *scope != "openid")
                    .map(|scope| Scope::new(scope.clone())),
            )
            .set_pkce_challenge(challenge)
            .url();
        Some(Ok(AuthorizationRequest {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        }))
    }

    /// Exchanges `code` at the provider's token endpoint (with the PKCE verifier and the
    /// client's credentials, HTTP Basic), then validates the ID token it answers with: its
    /// signature with the provider's keys (one refetch of the JWKS for an unknown key), an
    /// `alg` the provider advertises (never `none`), `iss`, `aud` (this client, and no audience
    /// besides), `azp` (this client when present), `exp`, `iat` (within 5 minutes of now) and
    /// `nonce`. Errors: `Unavailable` (the provider could not be reached or answered 5xx),
    /// `Rejected` (anything else).
    pub async fn exchange(
        &self,
        provider: &str,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, ProviderError> {
        let provider = self.provider(provider).ok_or_else(|| {
            ProviderError::Rejected("the provider is no longer configured".into())
        })?;
        let discovered = provider.current().ok_or_else(|| {
            ProviderError::Unavailable("the provider is not discovered yet".into())
        })?;
        let http = |request| fetch(self.http.clone(), request);
        let response = self
            .client(provider, &discovered)
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&http)
            .await
            .map_err(|error| match error {
                RequestTokenError::Request(why) => ProviderError::Unavailable(error_chain(&why)),
                RequestTokenError::ServerResponse(refusal) => ProviderError::Rejected(format!(
                    "the token endpoint refused the code: {}",
                    refusal.error()
                )),
                other => ProviderError::Rejected(error_chain(&other)),
            })?;
        let id_token = openidconnect::TokenResponse::id_token(&response)
            .ok_or_else(|| ProviderError::Rejected("the token response has no id_token".into()))?
            .clone();
        let nonce = Nonce::new(nonce.to_owned());
        let mut keys = discovered;
        let mut refetched = false;
        loop {
            let checked = {
                let verifier = self.verifier(provider, &keys);
                id_token
                    .claims(&verifier, &nonce)
                    .map(|claims| self.identity_of(provider, claims))
            };
            match checked {
                Ok(identity) => return identity,
                Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoMatchingKey,
                )) if !refetched => {
                    refetched = true;
                    keys = self.refetch_keys(provider, &keys).await?;
                }
                Err(why) => {
                    return Err(ProviderError::Rejected(format!(
                        "the ID token is not valid: {why}"
                    )));
                }
            }
        }
    }

    /// The identity of claims the verifier accepted, after the check it leaves to its users:
    /// `azp`, when present, is this client (OIDC Core § 3.1.3.7, 5).
    fn identity_of(
        &self,
        provider: &Provider,
        claims: &openidconnect::core::CoreIdTokenClaims,
    ) -> Result<VerifiedIdentity, ProviderError> {
        if let Some(party) = claims.authorized_party()
            && party.as_str() != provider.settings.client_id
        {
            return Err(ProviderError::Rejected(format!(
                "azp is {:?}, not this client",
                party.as_str()
            )));
        }
        let subject = claims.subject().as_str();
        // OIDC Core § 2: "a locally unique ... identifier ... It MUST NOT exceed 255 ASCII
        // characters in length"; empty, longer, or holding anything but printable ASCII, it is
        // not one.
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT_BYTES
            || !subject.bytes().all(|byte| byte.is_ascii_graphic())
        {
            return Err(ProviderError::Rejected(
                "sub is empty, longer than 255 characters, or not printable ASCII".into(),
            ));
        }
        Ok(VerifiedIdentity {
            provider: provider.settings.name.clone(),
            issuer: claims.issuer().as_str().to_owned(),
            subject: subject.to_owned(),
            email: claims.email().map(|email| email.as_str().to_owned()),
            email_verified: claims.email_verified() == Some(true),
        })
    }

    /// The provider's JWKS fetched again, unless a concurrent sign-in did so meanwhile (then
    /// its result). Errors: `Unavailable`.
    async fn refetch_keys(
        &self,
        provider: &Provider,
        seen: &Arc<Discovered>,
    ) -> Result<Arc<Discovered>, ProviderError> {
        let _one_at_a_time = provider.refetching.lock().await;
        if let Some(current) = provider.current()
            && !Arc::ptr_eq(&current, seen)
        {
            return Ok(current);
        }
        let http = |request| fetch(self.http.clone(), request);
        let jwks = CoreJsonWebKeySet::fetch_async(&seen.jwks_uri, &http)
            .await
            .map_err(|why| ProviderError::Unavailable(error_chain(&why)))?;
        let refreshed = Arc::new(Discovered {
            authorization: seen.authorization.clone(),
            token: seen.token.clone(),
            jwks_uri: seen.jwks_uri.clone(),
            jwks,
            algorithms: seen.algorithms.clone(),
        });
        *provider
            .discovered
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(refreshed.clone());
        tracing::info!(event = "oidc_keys_refetched", provider = %provider.settings.name, "an ID token named a key the cached JWKS lacked: fetched it again");
        Ok(refreshed)
    }

    fn client(
        &self,
        provider: &Provider,
        discovered: &Discovered,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
    > {
        // The ID token is checked by `verifier`, not by the client: it gets no keys.
        CoreClient::new(
            ClientId::new(provider.settings.client_id.clone()),
            provider.issuer.clone(),
            CoreJsonWebKeySet::new(Vec::new()),
        )
        .set_client_secret(ClientSecret::new(
            provider.settings.client_secret.expose_secret().to_owned(),
        ))
        .set_auth_uri(discovered.authorization.clone())
        .set_token_uri(discovered.token.clone())
        .set_redirect_uri(self.callback.clone())
    }

    fn verifier<'a>(
        &self,
        provider: &'a Provider,
        discovered: &'a Discovered,
    ) -> CoreIdTokenVerifier<'a> {
        CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(provider.settings.client_id.clone()),
            ClientSecret::new(provider.settings.client_secret.expose_secret().to_owned()),
            provider.issuer.clone(),
            discovered.jwks.clone(),
        )
        .set_allowed_algs(discovered.algorithms.iter().cloned())
        .set_issue_time_verifier_fn(|issued_at: DateTime<Utc>| {
            let now = Utc::now();
            if issued_at > now + IAT_SKEW || issued_at < now - IAT_SKEW {
                Err(format!("iat {issued_at} is not within 5 minutes of now"))
            } else {
                Ok(())
            }
        })
    }
}

impl Provider {
    fn current(&self) -> Option<Arc<Discovered>> {
        self.discovered
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Why a request to a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("the answer could not be read: {0}")]
    Http(#[from] openidconnect::http::Error),
}

/// One request to a provider, as the `openidconnect` crate asks for it, with the answer read
/// up to [`MAX_RESPONSE_BYTES`] (the crate's own reqwest client reads any length).
async fn fetch(
    client: reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, FetchError> {
    let mut response = client.execute(request.try_into()?).await?;
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(FetchError::TooLarge);
    }
    let mut builder = openidconnect::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(builder.body(body)?)
}

/// An error and its sources, for the log.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::acceptable_provider_url;

    #[test]
    fn plain_http_is_accepted_on_loopback_addresses_only() {
        let accepted = |url: &str| acceptable_provider_url(&url::Url::parse(url).unwrap());
        assert!(accepted("https://accounts.google.com"));
        assert!(accepted("http://127.0.0.1:8080"));
        assert!(accepted("http://127.3.4.5"));
        assert!(accepted("http://[::1]:9000/realms/x"));
        assert!(accepted("http://localhost:3000"));
        assert!(!accepted("http://accounts.example.com"));
        assert!(!accepted("http://10.0.0.1"));
        assert!(!accepted("http://localhost.example.com"));
        assert!(!accepted("ftp://127.0.0.1"));
    }
}
