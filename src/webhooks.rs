//! Webhooks to the app's own endpoints, signed and shaped as the Standard Webhooks
//! specification (standardwebhooks.com, `spec/standard-webhooks.md`) says.
//!
//! - What happens is queued as events by a store decorator ([`crate::store::WebhookQueue`]):
//!   one outbox row per event and endpoint, in the outbox the mails use, so that the lease that
//!   sends each mail once sends each event once per endpoint across instances.
//! - The outbox sender ([`crate::mail::sender`]) delivers a row with [`WebhookClient::deliver`]:
//!   a `POST` of the stored JSON body with the headers `webhook-id` (the event's id, the same on
//!   every attempt and every endpoint), `webhook-timestamp` (the attempt's time, in integer Unix
//!   seconds: receivers refuse one more than 5 minutes off, so it is never the queueing time)
//!   and `webhook-signature: v1,<base64 HMAC-SHA256>` (spec, "Signature scheme").
//! - A 2xx answer delivers it; any other answer, a timeout or a network error is tried again
//!   with the outbox's backoff (1 s doubling up to 5 minutes) for [`RETRY_PERIOD`].
//!
//! Settings (`WEBHOOK_URLS`, `WEBHOOK_SECRET`) are checked here, at start: [`WebhookSettings`].

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

use crate::store::{OutboxWebhook, WebhookTargets};

/// How long one delivery may take, connection included; past it, the attempt failed and is
/// tried again (the spec recommends a short timeout, "Delivery behavior").
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long opening a connection to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an event is tried for before it is given up: 3 days, so that an endpoint down over
/// a weekend's night loses nothing (Svix, the spec's authors, retry for about 1.5 days).
pub const RETRY_PERIOD: Duration = Duration::from_secs(3 * 24 * 60 * 60);
/// The prefix of a secret (spec, "Signature scheme": `whsec_` + base64).
const SECRET_PREFIX: &str = "whsec_";
/// Shortest and longest key, in bytes (the spec asks for 24 to 64 random bytes).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The HMAC key: the bytes after `whsec_`, base64-decoded (never printed).
pub struct WebhookSecret(SecretSlice<u8>);

impl WebhookSecret {
    /// `whsec_` followed by standard, padded base64 of 24 to 64 bytes; errors say what is
    /// wrong, never the value.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let encoded = secret.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            format!("WEBHOOK_SECRET must start with {SECRET_PREFIX} (Standard Webhooks)")
        })?;
        let key = STANDARD.decode(encoded).map_err(|_| {
            format!("WEBHOOK_SECRET must be {SECRET_PREFIX} followed by standard base64")
        })?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "WEBHOOK_SECRET must hold {} to {} bytes (base64 after {SECRET_PREFIX}), not {}",
                KEY_BYTES.start(),
                KEY_BYTES.end(),
                key.len()
            ));
        }
        Ok(Self(key.into()))
    }

    /// The `webhook-signature` value for the message `id` sent at `timestamp` (Unix seconds)
    /// with `body`: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The checked webhook settings: where events go, and the client that signs and sends them.
pub struct WebhookSettings {
    pub targets: WebhookTargets,
    pub client: WebhookClient,
}

impl WebhookSettings {
    /// From `WEBHOOK_URLS` and `WEBHOOK_SECRET`: `None` when no URL is set (no webhooks: nothing
    /// is queued). Errors, which stop the start: a URL that is not an absolute `http(s)` URL,
    /// URLs without a secret, a malformed secret.
    pub fn from_settings(
        urls: &[String],
        secret: Option<&SecretString>,
    ) -> Result<Option<Self>, String> {
        let urls: Vec<&str> = urls
            .iter()
            .map(|url| url.trim())
            .filter(|url| !url.is_empty())
            .collect();
        if urls.is_empty() {
            return Ok(None);
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let parsed = url::Url::parse(url)
                .map_err(|_| format!("WEBHOOK_URLS: {url:?} is not an absolute URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!(
                    "WEBHOOK_URLS: {url:?} must be an http or https URL with a host"
                ));
            }
            if !endpoints.contains(&parsed.to_string()) {
                endpoints.push(parsed.to_string());
            }
        }
        let secret = secret.ok_or(
            "WEBHOOK_SECRET must be set when WEBHOOK_URLS is (whsec_ + base64 of 24 to 64 random bytes)",
        )?;
        let secret = WebhookSecret::parse(secret.expose_secret())?;
        Ok(Some(Self {
            targets: WebhookTargets {
                endpoints,
                retry_period: chrono::TimeDelta::from_std(RETRY_PERIOD)
                    .unwrap_or(chrono::TimeDelta::MAX),
            },
            client: WebhookClient::new(secret)?,
        }))
    }
}

/// Signs and sends webhook deliveries: rustls, [`DELIVERY_TIMEOUT`], no redirect followed (a
/// 3xx is a failed attempt), the answer's body never read.
pub struct WebhookClient {
    http: reqwest::Client,
    secret: WebhookSecret,
}

impl WebhookClient {
    pub fn new(secret: WebhookSecret) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(DELIVERY_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("authql/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("could not set up the webhook HTTP client: {error}"))?;
        Ok(Self { http, secret })
    }

    /// One attempt: `Ok(status)` for a 2xx answer; else why not (the status, or the error's
    /// kind), for the log. Signed now, with now's timestamp.
    pub async fn deliver(&self, webhook: &OutboxWebhook) -> Result<u16, String> {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self
            .secret
            .sign(&webhook.event_id, timestamp, &webhook.payload);
        let response = self
            .http
            .post(&webhook.endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", &webhook.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(webhook.payload.clone())
            .send()
            .await
            .map_err(|error| {
                if error.is_timeout() {
                    format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())
                } else if error.is_connect() {
                    "could not connect".to_owned()
                } else {
                    "the request failed".to_owned()
                }
            })?;
        // The body is dropped unread: nothing in it matters, and an endpoint could send a lot.
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(format!("answered {}", status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks test vector (the spec's reference libraries' tests).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn a_byte_changed_anywhere_changes_the_signature() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_ne!(
            secret.sign(ID, TIMESTAMP, r#"{"test": 2432232315}"#),
            SIGNATURE
        );
        assert_ne!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJeK", TIMESTAMP, BODY),
            SIGNATURE
        );
        assert_ne!(secret.sign(ID, TIMESTAMP + 1, BODY), SIGNATURE);
        let other = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSX").unwrap();
        assert_ne!(other.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn secrets_are_whsec_and_base64_of_24_to_64_bytes() {
        let of = |bytes: usize| format!("whsec_{}", STANDARD.encode(vec![7u8; bytes]));
        assert!(WebhookSecret::parse(&of(24)).is_ok());
        assert!(WebhookSecret::parse(&of(64)).is_ok());
        assert!(WebhookSecret::parse(&of(23)).is_err());
        assert!(WebhookSecret::parse(&of(65)).is_err());
        assert!(WebhookSecret::parse(&STANDARD.encode([7u8; 32])).is_err());
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
    }

    #[test]
    fn settings_need_absolute_http_urls_and_a_secret() {
        let secret = SecretString::from(SECRET);
        let urls = |list: &[&str]| list.iter().map(|url| url.to_string()).collect::<Vec<_>>();
        assert!(WebhookSettings::from_settings(&[], None).unwrap().is_none());
        let settings = WebhookSettings::from_settings(
            &urls(&["https://a.example/hook", " http://b:8080/x "]),
            Some(&secret),
        )
        .unwrap()
        .unwrap();
        assert_eq!(settings.targets.endpoints.len(), 2);
        for bad in ["/hook", "ftp://a.example/", "a.example/hook", "http://"] {
            assert!(
                WebhookSettings::from_settings(&urls(&[bad]), Some(&secret)).is_err(),
                "{bad}"
            );
        }
        assert!(WebhookSettings::from_settings(&urls(&["https://a.example/"]), None).is_err());
    }
}
