//! JWTs: HS256-signed access and refresh tokens that name their session (`sid`) and carry a `jti`
//! that the session row must still hold for the token to be accepted.
//!
//! The two kinds cannot pass for each other: each has its own `typ` header and its own `aud`,
//! and each is verified against a `Validation` that accepts only its own.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{AppError, UnauthenticatedReason};

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
}

/// Keys and validation rules, built once at start-up from the secret.
pub struct TokenKeys {
    leeway_seconds: i64,
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    access: Validation,
    refresh: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8], issuer: &str, leeway_seconds: u64) -> Result<Self, AppError> {
        let validation = |kind: TokenKind| {
            // Only HS256 is accepted, whatever the header says.
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.leeway = leeway_seconds;
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[kind.audience()]);
            validation
        };
        Ok(Self {
            leeway_seconds: i64::try_from(leeway_seconds).unwrap_or(i64::MAX),
            encoding: EncodingKey::from_secret(secret).map_err(AppError::internal)?,
            decoding: DecodingKey::from_secret(secret).map_err(AppError::internal)?,
            issuer: issuer.to_owned(),
            access: validation(TokenKind::Access),
            refresh: validation(TokenKind::Refresh),
        })
    }

    pub fn issue(
        &self,
        kind: TokenKind,
        user_id: Uuid,
        session_id: Uuid,
        jti: Uuid,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<String, AppError> {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(kind.typ().to_owned());
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: kind.audience().to_owned(),
            sub: user_id,
            sid: session_id,
            jti,
            iat: issued_at.timestamp(),
            nbf: issued_at.timestamp(),
            exp: expires_at.timestamp(),
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(AppError::internal)
    }

    /// Checks signature, claims and kind. Says nothing yet about revocation: that is the
    /// session row's job.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Result<Claims, UnauthenticatedReason> {
        let validation = match kind {
            TokenKind::Access => &self.access,
            TokenKind::Refresh => &self.refresh,
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, validation).map_err(|err| {
                match err.kind() {
                    ErrorKind::ExpiredSignature => UnauthenticatedReason::Expired,
                    // The signature was good (it is checked first): a genuine token of the other kind.
                    ErrorKind::InvalidAudience => UnauthenticatedReason::WrongTokenType,
                    _ => UnauthenticatedReason::Malformed,
                }
            })?;
        if data.header.typ.as_deref() != Some(kind.typ()) {
            return Err(UnauthenticatedReason::WrongTokenType);
        }
        // RFC 7519 §4.1.4: not accepted *on* or after `exp`. jsonwebtoken still accepts during
        // the second of `exp` itself, when the session row has already expired.
        if data.claims.exp <= Utc::now().timestamp() - self.leeway_seconds {
            return Err(UnauthenticatedReason::Expired);
        }
        Ok(data.claims)
    }

    /// A genuine, unexpired token of either kind.
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
        TokenKeys::new(&[7; 32], "authql", 0).unwrap()
    }

    fn issue(keys: &TokenKeys, kind: TokenKind, lifetime: Duration) -> (String, Uuid) {
        let now = Utc::now();
        let jti = Uuid::new_v4();
        let token = keys
            .issue(
                kind,
                Uuid::new_v4(),
                Uuid::new_v4(),
                jti,
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

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let keys = keys();
        let (expired, _) = issue(&keys, TokenKind::Access, Duration::seconds(-10));
        assert_eq!(
            keys.verify(TokenKind::Access, &expired),
            Err(UnauthenticatedReason::Expired)
        );
        let other = TokenKeys::new(&[8; 32], "authql", 0).unwrap();
        let (foreign, _) = issue(&other, TokenKind::Access, Duration::minutes(5));
        assert_eq!(
            keys.verify(TokenKind::Access, &foreign),
            Err(UnauthenticatedReason::Malformed)
        );
        for garbage in ["", "a.b", "a.b.c", "a.b.c.d", "....."] {
            assert_eq!(
                keys.verify(TokenKind::Access, garbage),
                Err(UnauthenticatedReason::Malformed)
            );
        }
    }
}
