//! JWTs: access and refresh tokens that name their session (`sid`) and carry a `jti` that the
//! session row must still hold for the token to be accepted. Signed with the one key of
//! [`KeySet`] that signs; verified only by the key the token's `kid` names.
//!
//! The two kinds cannot pass for each other: each has its own `typ` header and its own `aud`,
//! and each is verified against a `Validation` that accepts only its own.
//!
//! Verification trusts nothing in a token before its signature is checked (RFC 8725): the
//! header must be exactly `alg`, `typ` and `kid`; `alg` must be the algorithm of the key `kid`
//! names; anything that would point elsewhere for a key (`jku`, `jwk`, `x5u`, `x5c`, ...) is
//! refused, and no key is ever fetched or looked up outside the [`KeySet`].

use std::str::FromStr;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::{KeySet, SigningKey, VerifyingKey};
use crate::error::{AppError, UnauthenticatedReason};

/// Longest token looked at, or issued. Ours are about 700 bytes, or up to about 7 KB with 32
/// roles and the most `ACCESS_TOKEN_CLAIMS_TEMPLATE` may add; anything longer is not ours, and
/// is refused before it costs any decoding.
const MAX_TOKEN_BYTES: usize = 8000;

/// How many verified access tokens [`TokenKeys`] keeps (least recently used dropped first), and
/// the longest it keeps: at most 1,024 × 2 KiB of token text.
const VERIFIED_CAPACITY: usize = 1024;
const MAX_VERIFIED_TOKEN_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    /// The `typ` header; `at+jwt` is RFC 9068's type for access tokens.
    fn typ(self) -> &'static str {
        match self {
            Self::Access => "at+jwt",
            Self::Refresh => "refresh+jwt",
        }
    }

    fn audience(self) -> &'static str {
        match self {
            Self::Access => "authql:access",
            Self::Refresh => "authql:refresh",
        }
    }
}

/// Every claim but the profile ones is required and typed: a token missing one, or with one of
/// the wrong type, does not deserialize and is refused as malformed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user.
    pub sub: Uuid,
    /// The session.
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Access tokens: the account's address when the token was issued (OpenID Connect Core
    /// § 5.1 `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Access tokens: whether that address was verified (OpenID Connect Core § 5.1
    /// `email_verified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// Access tokens: when the user last proved who they are in this session (OpenID Connect
    /// Core § 2 `auth_time`, seconds since the Unix epoch). Written, never read back: the
    /// session row is what authql trusts.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// Access tokens: how (RFC 8176 § 2 `amr` values: `pwd`, `otp`, `hwk`, `swk`, `user`,
    /// `mfa`), so that other APIs can demand a second factor. Written, never read back.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
    /// Access tokens: the account's roles when the token was issued (RFC 9068 § 2.2.3.1
    /// `roles`). Written, never read back: `/auth/verify` and introspection read the store.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// What is signed: the claims, and for access tokens the ones `ACCESS_TOKEN_CLAIMS_TEMPLATE`
/// adds (none of them a reserved claim: `ClaimsTemplate` refuses those).
#[derive(Serialize)]
struct SignedClaims<'a> {
    #[serde(flatten)]
    claims: &'a Claims,
    #[serde(flatten)]
    custom: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// Whom a token speaks for: the user, the session, the token's own id (the session holds the
/// jti it accepts), and for access tokens the profile claims.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub jti: Uuid,
    pub profile: Option<&'a Profile>,
}

/// What an access token says about its user besides who it is: the `email` and
/// `email_verified` claims (OpenID Connect Core § 5.1), and how the session was proven
/// (`auth_time`, `amr`), so that an app's other APIs need not ask authql.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub email: String,
    pub email_verified: bool,
    /// The session's `authenticated_at`, as `auth_time`.
    pub auth_time: DateTime<Utc>,
    /// The session's authentication methods, as `amr`.
    pub amr: crate::store::AuthMethods,
    /// The account's roles, as `roles`.
    pub roles: Vec<String>,
    /// What `ACCESS_TOKEN_CLAIMS_TEMPLATE` rendered for this token, if it is set.
    pub custom: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The only header authql accepts: the three members it writes, each once. Unknown members are
/// refused rather than ignored, so a `jku`, `jwk`, `x5u`, `x5c` or `crit` never gets a say.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenHeader {
    alg: String,
    typ: String,
    kid: String,
}

/// A verifying key with the rules for each kind, built once.
struct Verifier {
    key: VerifyingKey,
    access: Validation,
    refresh: Validation,
}

/// Keys and validation rules, built once at start-up.
pub struct TokenKeys {
    signing: SigningKey,
    verifiers: Vec<Verifier>,
    leeway_seconds: i64,
    issuer: String,
    /// Access tokens that passed every check of [`Self::verify`], with their claims: a client
    /// sends the same token with each request until it expires, and checking its header,
    /// signature and claims again (two JSON parses each, in jsonwebtoken) was an eighth of a
    /// `me`'s CPU. What a token says cannot change, and what passed once passes again except
    /// for `exp`, checked on every use (`nbf` and `iat` only become truer with time). Only the
    /// token's own validity is kept here, never its session's: revocation is still looked up
    /// on every request.
    verified: std::sync::Mutex<lru::LruCache<Box<str>, Claims>>,
}

impl TokenKeys {
    pub fn new(keys: KeySet, issuer: &str, leeway_seconds: u64) -> Self {
        let validation = |algorithm: Algorithm, kind: TokenKind| {
            // One algorithm: the key's own, whatever the header says.
            let mut validation = Validation::new(algorithm);
            validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.leeway = leeway_seconds;
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[kind.audience()]);
            validation
        };
        let KeySet { signing, verifying } = keys;
        let verifiers = verifying
            .into_iter()
            .map(|key| Verifier {
                access: validation(key.algorithm, TokenKind::Access),
                refresh: validation(key.algorithm, TokenKind::Refresh),
                key,
            })
            .collect();
        Self {
            signing,
            verifiers,
            leeway_seconds: i64::try_from(leeway_seconds).unwrap_or(i64::MAX),
            issuer: issuer.to_owned(),
            verified: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(VERIFIED_CAPACITY)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }

    /// Signs deterministically: the same key and inputs give the same token (HMAC and Ed25519
    /// are deterministic; ES256 uses RFC 6979 nonces).
    pub fn issue(
        &self,
        kind: TokenKind,
        subject: Subject<'_>,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<String, AppError> {
        let Subject {
            user_id,
            session_id,
            jti,
            profile,
        } = subject;
        let signing = &self.signing;
        let mut header = Header::new(signing.algorithm);
        header.typ = Some(kind.typ().to_owned());
        header.kid = Some(signing.kid.clone());
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: kind.audience().to_owned(),
            sub: user_id,
            sid: session_id,
            jti,
            iat: issued_at.timestamp(),
            nbf: issued_at.timestamp(),
            exp: expires_at.timestamp(),
            email: profile.map(|profile| profile.email.clone()),
            email_verified: profile.map(|profile| profile.email_verified),
            auth_time: profile.map(|profile| profile.auth_time.timestamp()),
            amr: profile.map(|profile| profile.amr.iter().map(str::to_owned).collect()),
            roles: profile.map(|profile| profile.roles.clone()),
        };
        let signed = SignedClaims {
            claims: &claims,
            custom: profile.and_then(|profile| profile.custom.as_ref()),
        };
        let token = jsonwebtoken::encode(&header, &signed, &signing.encoding)
            .map_err(AppError::internal)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AppError::internal(format!(
                "an access token of {} bytes would be refused (at most {MAX_TOKEN_BYTES})",
                token.len()
            )));
        }
        Ok(token)
    }

    /// Checks shape, header, signature, claims and kind. Says nothing yet about revocation:
    /// that is the session row's job. An access token that passed before is found among the
    /// verified ones and only its `exp` checked again. Errors: `Malformed`, `UnknownKey`,
    /// `WrongTokenType`, `Expired`.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Result<Claims, UnauthenticatedReason> {
        if kind != TokenKind::Access || token.len() > MAX_VERIFIED_TOKEN_BYTES {
            return self.check(kind, token);
        }
        let verified = self.verified_lock().get(token).cloned();
        match verified {
            Some(claims) if claims.exp <= Utc::now().timestamp() - self.leeway_seconds => {
                Err(UnauthenticatedReason::Expired)
            }
            Some(claims) => Ok(claims),
            None => {
                let claims = self.check(kind, token)?;
                self.verified_lock().put(token.into(), claims.clone());
                Ok(claims)
            }
        }
    }

    fn verified_lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<Box<str>, Claims>> {
        // The cache holds no invariant a panic could break half-way.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every check of [`Self::verify`], from the token's text.
    fn check(&self, kind: TokenKind, token: &str) -> Result<Claims, UnauthenticatedReason> {
        use UnauthenticatedReason::{Expired, Malformed, UnknownKey, WrongTokenType};
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Malformed);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(_payload), Some(_signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(Malformed);
        };
        let header: TokenHeader = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(Malformed)?;
        let verifier = self
            .verifiers
            .iter()
            .find(|verifier| verifier.key.kid == header.kid)
            .ok_or(UnknownKey)?;
        if Algorithm::from_str(&header.alg).ok() != Some(verifier.key.algorithm) {
            return Err(Malformed);
        }
        let validation = match kind {
            TokenKind::Access => &verifier.access,
            TokenKind::Refresh => &verifier.refresh,
        };
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key.decoding, validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => Expired,
                // The signature was good (it is checked first): a genuine token of the other kind.
                ErrorKind::InvalidAudience => WrongTokenType,
                _ => Malformed,
            })?;
        if header.typ != kind.typ() {
            return Err(WrongTokenType);
        }
        let now = Utc::now().timestamp();
        // RFC 7519 §4.1.4: not accepted *on* or after `exp`. jsonwebtoken still accepts during
        // the second of `exp` itself, when the session row has already expired.
        if data.claims.exp <= now - self.leeway_seconds {
            return Err(Expired);
        }
        // We never issue a token dated in the future; one that is was not issued by us.
        if data.claims.iat > now + self.leeway_seconds {
            return Err(Malformed);
        }
        Ok(data.claims)
    }

    /// A genuine, unexpired token of either kind.
    /// The `iss` of every token (`JWT_ISSUER`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn verify_any(&self, token: &str) -> Option<Claims> {
        self.verify(TokenKind::Access, token)
            .or_else(|_| self.verify(TokenKind::Refresh, token))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn keys() -> TokenKeys {
        TokenKeys::new(KeySet::hmac(&[7; 32]).unwrap(), "authql", 0)
    }

    fn issue(keys: &TokenKeys, kind: TokenKind, lifetime: Duration) -> (String, Uuid) {
        let now = Utc::now();
        let jti = Uuid::new_v4();
        let token = keys
            .issue(
                kind,
                Subject {
                    user_id: Uuid::new_v4(),
                    session_id: Uuid::new_v4(),
                    jti,
                    profile: None,
                },
                now,
                now + lifetime,
            )
            .unwrap();
        (token, jti)
    }

    #[test]
    fn each_kind_verifies_as_itself_only() {
        let keys = keys();
        let (access, jti) = issue(&keys, TokenKind::Access, Duration::minutes(5));
        let (refresh, _) = issue(&keys, TokenKind::Refresh, Duration::minutes(5));
        assert_eq!(keys.verify(TokenKind::Access, &access).unwrap().jti, jti);
        assert_eq!(
            keys.verify(TokenKind::Refresh, &access),
            Err(UnauthenticatedReason::WrongTokenType)
        );
        assert_eq!(
            keys.verify(TokenKind::Access, &refresh),
            Err(UnauthenticatedReason::WrongTokenType)
        );
    }

    /// Verified access tokens are kept (a client repeats its token): a kept one still expires
    /// on time, and a token one character away from a kept one is checked in full.
    #[test]
    fn a_kept_token_still_expires_and_a_near_copy_is_checked_in_full() {
        let keys = keys();
        let (access, jti) = issue(&keys, TokenKind::Access, Duration::seconds(1));
        assert_eq!(keys.verify(TokenKind::Access, &access).unwrap().jti, jti);
        assert_eq!(keys.verify(TokenKind::Access, &access).unwrap().jti, jti);
        assert_eq!(keys.verified_lock().len(), 1);
        let mut forged = access.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(keys.verify(TokenKind::Access, &forged).is_err());
        assert_eq!(
            keys.verify(TokenKind::Refresh, &access),
            Err(UnauthenticatedReason::WrongTokenType)
        );
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(
            keys.verify(TokenKind::Access, &access),
            Err(UnauthenticatedReason::Expired)
        );
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let keys = keys();
        let (expired, _) = issue(&keys, TokenKind::Access, Duration::seconds(-10));
        assert_eq!(
            keys.verify(TokenKind::Access, &expired),
            Err(UnauthenticatedReason::Expired)
        );
        let other = TokenKeys::new(KeySet::hmac(&[8; 32]).unwrap(), "authql", 0);
        let (foreign, _) = issue(&other, TokenKind::Access, Duration::minutes(5));
        // Another key's kid: told to the client as MALFORMED too.
        assert_eq!(
            keys.verify(TokenKind::Access, &foreign),
            Err(UnauthenticatedReason::UnknownKey)
        );
        assert_eq!(UnauthenticatedReason::UnknownKey.as_code(), "MALFORMED");
        for garbage in ["", "a.b", "a.b.c", "a.b.c.d", "....."] {
            assert_eq!(
                keys.verify(TokenKind::Access, garbage),
                Err(UnauthenticatedReason::Malformed)
            );
        }
    }

    const ED25519_A: &[u8] = include_bytes!("../../tests/fixtures/keys/ed25519-a.pem");
    const ED25519_B: &[u8] = include_bytes!("../../tests/fixtures/keys/ed25519-b.pem");
    const P256_A: &[u8] = include_bytes!("../../tests/fixtures/keys/p256-a.pem");

    fn asymmetric(algorithm: Algorithm, pem: &[u8]) -> TokenKeys {
        TokenKeys::new(
            KeySet::asymmetric(algorithm, pem, None, &[]).unwrap(),
            "authql",
            0,
        )
    }

    #[test]
    fn issuing_twice_gives_the_same_token_with_every_algorithm() {
        let now = Utc::now();
        let (user, session, jti) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for keys in [
            keys(),
            asymmetric(Algorithm::EdDSA, ED25519_A),
            asymmetric(Algorithm::ES256, P256_A),
        ] {
            let issue = || {
                keys.issue(
                    TokenKind::Access,
                    Subject {
                        user_id: user,
                        session_id: session,
                        jti,
                        profile: None,
                    },
                    now,
                    now + Duration::minutes(5),
                )
                .unwrap()
            };
            let first = issue();
            assert_eq!(first, issue(), "{:?}", keys.signing.algorithm);
            assert_eq!(keys.verify(TokenKind::Access, &first).unwrap().jti, jti);
        }
    }

    #[test]
    fn a_retired_key_verifies_only_where_it_is_listed() {
        let old = asymmetric(Algorithm::EdDSA, ED25519_A);
        let (token, jti) = issue(&old, TokenKind::Access, Duration::minutes(5));
        let retired = [super::super::keys::RetiredKey {
            kid: None,
            pem: ED25519_A.to_vec(),
        }];
        let rotated = TokenKeys::new(
            KeySet::asymmetric(Algorithm::ES256, P256_A, None, &retired).unwrap(),
            "authql",
            0,
        );
        assert_eq!(rotated.verify(TokenKind::Access, &token).unwrap().jti, jti);
        let (new, _) = issue(&rotated, TokenKind::Access, Duration::minutes(5));
        assert_eq!(decode_header(&new)["alg"], "ES256");
        let without = asymmetric(Algorithm::EdDSA, ED25519_B);
        assert_eq!(
            without.verify(TokenKind::Access, &token),
            Err(UnauthenticatedReason::UnknownKey)
        );
    }

    fn decode_header(token: &str) -> serde_json::Value {
        let header = token.split('.').next().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
    }

    /// Signs any claims with the real key and kid: only the claims are wrong.
    fn signed_with(keys: &TokenKeys, claims: serde_json::Value) -> String {
        let mut header = Header::new(keys.signing.algorithm);
        header.typ = Some(TokenKind::Access.typ().into());
        header.kid = Some(keys.signing.kid.clone());
        jsonwebtoken::encode(&header, &claims, &keys.signing.encoding).unwrap()
    }

    #[test]
    fn every_claim_is_required_with_its_type() {
        let keys = keys();
        let now = Utc::now().timestamp();
        let good = serde_json::json!({
            "iss": "authql", "aud": "authql:access", "sub": Uuid::new_v4(),
            "sid": Uuid::new_v4(), "jti": Uuid::new_v4(),
            "iat": now, "nbf": now, "exp": now + 300,
        });
        assert!(
            keys.verify(TokenKind::Access, &signed_with(&keys, good.clone()))
                .is_ok()
        );
        for claim in ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp"] {
            let mut missing = good.clone();
            missing.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                keys.verify(TokenKind::Access, &signed_with(&keys, missing)),
                Err(UnauthenticatedReason::Malformed),
                "without {claim}"
            );
        }
        for (claim, value) in [
            ("exp", serde_json::json!((now + 300).to_string())),
            ("iat", serde_json::json!(now as f64 + 0.5)),
            ("nbf", serde_json::json!(null)),
            ("sub", serde_json::json!("not-a-uuid")),
            ("sid", serde_json::json!(42)),
            ("aud", serde_json::json!(["authql:access"])),
            ("iss", serde_json::json!("someone-else")),
            ("iat", serde_json::json!(now + 3600)),
        ] {
            let mut wrong = good.clone();
            wrong[claim] = value;
            assert_eq!(
                keys.verify(TokenKind::Access, &signed_with(&keys, wrong)),
                Err(UnauthenticatedReason::Malformed),
                "{claim} mistyped"
            );
        }
    }
}
