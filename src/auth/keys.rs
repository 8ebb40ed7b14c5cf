//! The keys that sign and verify tokens, loaded once at start-up.
//!
//! One key signs: an HS256 secret, or an Ed25519 / P-256 private key. Retired private keys
//! still verify the tokens they signed until those expire, but never sign again. Every key has
//! a `kid`, and a token is verified only by the key its `kid` names, with that key's one
//! algorithm: nothing in a token can choose another key, another algorithm, or a key from
//! elsewhere (RFC 8725 §3.1, §3.10).

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey,
    jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::config::{Config, JwtAlgorithm};

/// Bytes of SHA-256(secret) that make an HS256 kid: enough to tell secrets apart, far too few
/// to say anything about the secret.
const HMAC_KID_BYTES: usize = 8;
/// Longest `kid` accepted in settings; tokens repeat it on every request.
const MAX_KID_CHARS: usize = 128;
/// Largest key file read; PKCS#8 PEMs of Ed25519 and P-256 keys are under 300 bytes.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;
const PKCS8_PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PKCS8_PEM_END: &str = "-----END PRIVATE KEY-----";
/// Shortest HS256 secret accepted: 256 bits, the size of an HS256 key (RFC 7518 § 3.2).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// The key that signs new tokens.
pub(crate) struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
}

/// A key that verifies tokens carrying its `kid`, with its own algorithm only.
pub(crate) struct VerifyingKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
    /// The public JWK, for asymmetric keys only: a symmetric key is never published.
    public_jwk: Option<Jwk>,
}

/// The signing key and every key that verifies (the signing key first).
pub struct KeySet {
    pub(crate) signing: SigningKey,
    pub(crate) verifying: Vec<VerifyingKey>,
}

impl KeySet {
    /// The keys the configuration names: the one that signs (`JWT_SECRET_KEY` for HS256, else
    /// `JWT_PRIVATE_KEY_FILE`), then the verify-only ones (`JWT_RETIRED_KEY_FILES`,
    /// `JWT_RETIRED_SECRET_KEYS`), which any algorithm may have beside it: that is what lets a
    /// key be rotated in two phases, and the algorithm changed, without refusing a token that
    /// any instance has issued. `hs256_secret` is called only when HS256 signs, so that no
    /// secret is generated for asymmetric keys.
    pub async fn load(
        config: &Config,
        hs256_secret: impl AsyncFnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        let mut keys = match config.jwt_algorithm {
            JwtAlgorithm::Hs256 => {
                refuse_unused_asymmetric_settings(config)?;
                Self::hmac(&hs256_secret().await?)?
            }
            JwtAlgorithm::EdDsa | JwtAlgorithm::Es256 => {
                let algorithm = if config.jwt_algorithm == JwtAlgorithm::EdDsa {
                    Algorithm::EdDSA
                } else {
                    Algorithm::ES256
                };
                if config.jwt_secret_key.is_some() {
                    tracing::warn!(
                        "JWT_SECRET_KEY is set but not used: JWT_ALGORITHM is {algorithm:?}, which \
                         signs with JWT_PRIVATE_KEY_FILE"
                    );
                }
                let Some(active_file) = &config.jwt_private_key_file else {
                    bail!(
                        "JWT_ALGORITHM={algorithm:?} needs JWT_PRIVATE_KEY_FILE, a PKCS#8 PEM private key \
                         (for example: openssl genpkey -algorithm ed25519)"
                    );
                };
                let active_pem = read_key_file(active_file, "JWT_PRIVATE_KEY_FILE")?;
                Self::asymmetric(algorithm, &active_pem, config.jwt_key_id.clone(), &[])?
            }
        };
        let mut retired = Vec::new();
        for entry in config
            .jwt_retired_key_files
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
        {
            let (kid, file) = match entry.split_once('=') {
                Some((kid, file)) => (Some(kid.trim().to_owned()), file.trim()),
                None => (None, entry),
            };
            let pem = read_key_file(Path::new(file), "JWT_RETIRED_KEY_FILES")?;
            retired.push(RetiredKey { kid, pem });
        }
        keys.add_retired_keys(&retired)?;
        for (position, secret) in config.jwt_retired_secret_keys.iter().enumerate() {
            let secret = secret.expose_secret().trim().as_bytes();
            let setting = format!("JWT_RETIRED_SECRET_KEYS (entry {})", position + 1);
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                bail!("{setting} is shorter than {MIN_HMAC_SECRET_BYTES} bytes");
            }
            let verifying = Self::hmac(secret)?.verifying.remove(0);
            keys.add_verifying(verifying, &setting)?;
        }
        Ok(keys)
    }

    /// Adds a key that verifies only. Errors: its kid is another key's.
    fn add_verifying(&mut self, key: VerifyingKey, setting: &str) -> anyhow::Result<()> {
        if self.verifying.iter().any(|known| known.kid == key.kid) {
            bail!(
                "{setting}: kid {} is already taken by another key (is the signing key also \
                 listed as verify-only?)",
                key.kid
            );
        }
        self.verifying.push(key);
        Ok(())
    }

    /// One HS256 secret that signs and verifies. Its kid is derived from the secret, so every
    /// instance and every restart with the same secret agrees on it.
    pub fn hmac(secret: &[u8]) -> anyhow::Result<Self> {
        let digest = Sha256::digest(secret);
        let kid = URL_SAFE_NO_PAD.encode(&digest[..HMAC_KID_BYTES]);
        let encoding = EncodingKey::from_secret(secret).context("the HS256 secret is empty")?;
        let decoding = DecodingKey::from_secret(secret).context("the HS256 secret is empty")?;
        Ok(Self {
            signing: SigningKey {
                kid: kid.clone(),
                algorithm: Algorithm::HS256,
                encoding,
            },
            verifying: vec![VerifyingKey {
                kid,
                algorithm: Algorithm::HS256,
                decoding,
                public_jwk: None,
            }],
        })
    }

    /// An Ed25519 or P-256 private key that signs (its type must match `algorithm`), and
    /// retired keys of either type that only verify. Errors name the setting at fault.
    pub fn asymmetric(
        algorithm: Algorithm,
        active_pem: &[u8],
        key_id: Option<String>,
        retired: &[RetiredKey],
    ) -> anyhow::Result<Self> {
        let active = PrivateKey::from_pem(active_pem).context("JWT_PRIVATE_KEY_FILE")?;
        if active.algorithm != algorithm {
            bail!(
                "JWT_PRIVATE_KEY_FILE holds a key for {:?}, but JWT_ALGORITHM is {algorithm:?}",
                active.algorithm
            );
        }
        let active_kid = match key_id {
            Some(kid) => checked_kid(kid).context("JWT_KEY_ID")?,
            None => active.thumbprint().context("JWT_PRIVATE_KEY_FILE")?,
        };
        let signing = SigningKey {
            kid: active_kid.clone(),
            algorithm,
            encoding: active.encoding.clone(),
        };
        let verifying = vec![
            active
                .into_verifying(active_kid)
                .context("JWT_PRIVATE_KEY_FILE")?,
        ];
        let mut keys = Self { signing, verifying };
        keys.add_retired_keys(retired)?;
        Ok(keys)
    }

    /// Adds retired (verify-only) private keys of either type, each by its kid.
    fn add_retired_keys(&mut self, retired: &[RetiredKey]) -> anyhow::Result<()> {
        for (position, retired) in retired.iter().enumerate() {
            let setting = || format!("JWT_RETIRED_KEY_FILES (entry {})", position + 1);
            let key = PrivateKey::from_pem(&retired.pem).with_context(setting)?;
            let kid = match &retired.kid {
                Some(kid) => checked_kid(kid.clone()).with_context(setting)?,
                None => key.thumbprint().with_context(setting)?,
            };
            let verifying = key.into_verifying(kid).with_context(setting)?;
            self.add_verifying(verifying, &setting())?;
        }
        Ok(())
    }

    /// The public keys as a JWK Set (RFC 7517), or `None` for HS256: a symmetric key must
    /// never be published.
    pub fn jwks(&self) -> Option<JwkSet> {
        let keys: Vec<Jwk> = self
            .verifying
            .iter()
            .filter_map(|key| key.public_jwk.clone())
            .collect();
        (!keys.is_empty()).then_some(JwkSet { keys })
    }
}

/// A retired private key and, when it signed under a `JWT_KEY_ID`, that kid.
pub struct RetiredKey {
    pub kid: Option<String>,
    pub pem: Vec<u8>,
}

/// A parsed private key with the public JWK derived from it.
struct PrivateKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    public_jwk: Jwk,
}

impl PrivateKey {
    /// Reads a PKCS#8 PEM (`BEGIN PRIVATE KEY`) holding an Ed25519 or a P-256 key. Errors say
    /// what is wrong with the file, never what is in it.
    fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let text = std::str::from_utf8(pem).map_err(|_| anyhow!("the file is not a PEM file"))?;
        let Some(body) = text
            .split_once(PKCS8_PEM_BEGIN)
            .and_then(|(_, rest)| rest.split_once(PKCS8_PEM_END))
            .map(|(body, _)| body)
        else {
            if text.contains("-----BEGIN EC PRIVATE KEY-----") {
                bail!(
                    "the key is in SEC1 form (BEGIN EC PRIVATE KEY); convert it to PKCS#8 with: \
                     openssl pkcs8 -topk8 -nocrypt -in FILE"
                );
            }
            if text.contains("PUBLIC KEY-----") {
                bail!("the file holds a public key; a private key (BEGIN PRIVATE KEY) is needed");
            }
            bail!("the file is not an unencrypted PKCS#8 PEM private key (BEGIN PRIVATE KEY)");
        };
        let base64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = STANDARD
            .decode(base64)
            .map_err(|_| anyhow!("the PEM body is not valid base64"))?;

        // The key type is read from the key itself, so that a retired key may be of another
        // type than the active one (rotating from ES256 to EdDSA, say).
        let candidates = [
            (Algorithm::EdDSA, EncodingKey::from_ed_der(&der)),
            (Algorithm::ES256, EncodingKey::from_ec_der(&der)),
        ];
        for (algorithm, encoding) in candidates {
            if let Ok(mut public_jwk) = Jwk::from_encoding_key(&encoding, algorithm) {
                public_jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                return Ok(Self {
                    algorithm,
                    encoding,
                    public_jwk,
                });
            }
        }
        bail!("the file holds neither an Ed25519 nor a P-256 private key")
    }

    /// RFC 7638 thumbprint of the public key: the same key gives the same kid everywhere.
    fn thumbprint(&self) -> anyhow::Result<String> {
        self.public_jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| anyhow!("could not compute the key's thumbprint"))
    }

    /// The verifying half, built from the public JWK so that what verifies here is exactly
    /// what is published. A probe token proves the two halves belong together.
    fn into_verifying(self, kid: String) -> anyhow::Result<VerifyingKey> {
        let mut public_jwk = self.public_jwk;
        public_jwk.common.key_id = Some(kid.clone());
        let decoding = DecodingKey::from_jwk(&public_jwk)
            .map_err(|_| anyhow!("could not derive the public key"))?;
        let header = jsonwebtoken::Header::new(self.algorithm);
        let probe = jsonwebtoken::encode(&header, &serde_json::json!({}), &self.encoding)
            .map_err(|_| anyhow!("the key cannot sign with {:?}", self.algorithm))?;
        let mut validation = jsonwebtoken::Validation::new(self.algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&probe, &decoding, &validation)
            .map_err(|_| anyhow!("the key's public half does not verify its own signature"))?;
        Ok(VerifyingKey {
            kid,
            algorithm: self.algorithm,
            decoding,
            public_jwk: Some(public_jwk),
        })
    }
}

/// Reads at most `MAX_KEY_FILE_BYTES`: a key PEM is a few hundred bytes, and a setting pointed
/// at the wrong file (a device, a log) must not stall the start.
fn read_key_file(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut contents = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut contents))
        .with_context(|| format!("{setting}: could not read {}", path.display()))?;
    if contents.len() as u64 > MAX_KEY_FILE_BYTES {
        bail!(
            "{setting}: {} is too large to be a key file",
            path.display()
        );
    }
    Ok(contents)
}

/// A kid from the settings: short, printable, no spaces.
fn checked_kid(kid: String) -> anyhow::Result<String> {
    if kid.is_empty() || kid.len() > MAX_KID_CHARS || !kid.chars().all(|c| c.is_ascii_graphic()) {
        bail!("a kid is 1 to {MAX_KID_CHARS} printable ASCII characters without spaces");
    }
    Ok(kid)
}

/// Settings that only make sense when a private key signs are refused with HS256 rather than
/// silently ignored: whoever set them believes they are in force. (Verify-only keys of any
/// kind are allowed with any algorithm.)
fn refuse_unused_asymmetric_settings(config: &Config) -> anyhow::Result<()> {
    let set = [
        (
            "JWT_PRIVATE_KEY_FILE",
            config.jwt_private_key_file.is_some(),
        ),
        ("JWT_KEY_ID", config.jwt_key_id.is_some()),
    ];
    for (setting, is_set) in set {
        if is_set {
            bail!("{setting} is set, but JWT_ALGORITHM is HS256; set JWT_ALGORITHM=EdDSA or ES256");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_A: &[u8] = include_bytes!("../../tests/fixtures/keys/ed25519-a.pem");
    const ED25519_B: &[u8] = include_bytes!("../../tests/fixtures/keys/ed25519-b.pem");
    const P256_A: &[u8] = include_bytes!("../../tests/fixtures/keys/p256-a.pem");

    #[test]
    fn the_hmac_kid_depends_on_the_secret_only() {
        let first = KeySet::hmac(&[7; 32]).unwrap();
        let again = KeySet::hmac(&[7; 32]).unwrap();
        let other = KeySet::hmac(&[8; 32]).unwrap();
        assert_eq!(first.signing.kid, again.signing.kid);
        assert_ne!(first.signing.kid, other.signing.kid);
        assert!(first.jwks().is_none(), "a symmetric key is never published");
    }

    #[test]
    fn each_key_type_is_recognised_and_must_match_the_algorithm() {
        let ed = KeySet::asymmetric(Algorithm::EdDSA, ED25519_A, None, &[]).unwrap();
        assert_eq!(ed.signing.algorithm, Algorithm::EdDSA);
        let ec = KeySet::asymmetric(Algorithm::ES256, P256_A, None, &[]).unwrap();
        assert_eq!(ec.signing.algorithm, Algorithm::ES256);
        let mismatch = KeySet::asymmetric(Algorithm::ES256, ED25519_A, None, &[])
            .err()
            .unwrap();
        assert!(
            format!("{mismatch:#}").contains("JWT_ALGORITHM"),
            "{mismatch:#}"
        );
    }

    #[test]
    fn retired_keys_verify_but_do_not_sign_and_kids_must_differ() {
        let retired = [RetiredKey {
            kid: None,
            pem: P256_A.to_vec(),
        }];
        let keys = KeySet::asymmetric(Algorithm::EdDSA, ED25519_A, None, &retired).unwrap();
        assert_eq!(keys.verifying.len(), 2);
        assert_eq!(keys.signing.kid, keys.verifying[0].kid);
        assert_eq!(keys.verifying[1].algorithm, Algorithm::ES256);
        assert_eq!(keys.jwks().unwrap().keys.len(), 2);

        let twice = [RetiredKey {
            kid: None,
            pem: ED25519_A.to_vec(),
        }];
        let error = KeySet::asymmetric(Algorithm::EdDSA, ED25519_A, None, &twice)
            .err()
            .unwrap();
        assert!(
            format!("{error:#}").contains("JWT_RETIRED_KEY_FILES"),
            "{error:#}"
        );
        let named = [RetiredKey {
            kid: Some("2024-key".into()),
            pem: ED25519_B.to_vec(),
        }];
        let keys = KeySet::asymmetric(Algorithm::EdDSA, ED25519_A, None, &named).unwrap();
        assert_eq!(keys.verifying[1].kid, "2024-key");
    }

    #[test]
    fn files_that_are_not_pkcs8_private_keys_are_refused() {
        for (pem, expected) in [
            (&b"\xff\xfe"[..], "not a PEM"),
            (
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "public key",
            ),
            (
                b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
                "base64",
            ),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "neither",
            ),
        ] {
            let error = PrivateKey::from_pem(pem).err().unwrap();
            assert!(format!("{error:#}").contains(expected), "{error:#}");
        }
    }
}
