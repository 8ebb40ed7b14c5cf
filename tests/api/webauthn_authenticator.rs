//! A software WebAuthn authenticator: what a platform passkey provider and the browser around
//! it do, reduced to the bytes a relying party sees — the equivalent of
//! `webauthn-authenticator-rs`'s `SoftPasskey`, built on `p256` and `ciborium`.
//!
//! [`Authenticator::create`] takes the `PublicKeyCredentialCreationOptionsJSON` a server hands
//! out (the form `PublicKeyCredential.parseCreationOptionsFromJSON` takes) and answers the
//! `RegistrationResponseJSON` a browser's `credential.toJSON()` gives; [`Authenticator::get`]
//! does the same for `PublicKeyCredentialRequestOptionsJSON` and `AuthenticationResponseJSON`.
//! Every binary field is base64url without padding, as `toJSON()` writes it.
//!
//! Its credentials are resident (discoverable): each remembers its relying party, the user
//! handle it was created for, its private key and its signature counter. An `Authenticator`
//! is `Clone`: a clone is a copied authenticator whose counters go their own way, which is how
//! a test shows a relying party noticing a cloned key (WebAuthn Level 3 § 6.1.1).
//!
//! Byte layouts (WebAuthn Level 3 § 6.1 "Authenticator Data", § 6.5.1 "Attested Credential
//! Data", § 6.5.4 "Generating an Attestation Object", RFC 9052 § 7 / RFC 9053 § 7.1.1 for the
//! COSE key):
//!
//! ```text
//! authenticatorData = rpIdHash (32: SHA-256 of the RP ID)
//!                   ‖ flags (1: UP 0x01, UV 0x04, BE 0x08, BS 0x10, AT 0x40, ED 0x80)
//!                   ‖ signCount (4, big-endian)
//!                   ‖ attestedCredentialData (registration only, flag AT)
//! attestedCredentialData = AAGUID (16) ‖ credentialIdLength (2, big-endian)
//!                        ‖ credentialId ‖ credentialPublicKey (a COSE_Key in CBOR)
//! COSE_Key (EC2, P-256, ES256) = { 1 (kty): 2 (EC2), 3 (alg): -7 (ES256), -1 (crv): 1 (P-256),
//!                                  -2 (x): bstr 32, -3 (y): bstr 32 }     — integer keys
//! attestationObject = { "fmt": "none", "attStmt": {}, "authData": bstr }  — CBOR, text keys
//! signature (assertion) = ECDSA P-256 over authenticatorData ‖ SHA-256(clientDataJSON),
//!                         SHA-256 digest, ASN.1 DER (WebAuthn § 6.3.3 step 11, § 6.5.5)
//! ```

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ciborium::value::{Integer, Value as Cbor};
use p256::{
    ecdsa::{Signature, SigningKey, signature::Signer},
    elliptic_curve::rand_core::OsRng,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// User Present (WebAuthn L3 § 6.1, bit 0).
pub const FLAG_UP: u8 = 0x01;
/// User Verified (bit 2): a PIN, a fingerprint, a face — what "passkey" requires.
pub const FLAG_UV: u8 = 0x04;
/// Backup Eligible (bit 3): the credential may be synced to other devices.
pub const FLAG_BE: u8 = 0x08;
/// Backup State (bit 4): the credential is synced now.
pub const FLAG_BS: u8 = 0x10;
/// Attested credential data included (bit 6): registration only.
pub const FLAG_AT: u8 = 0x40;

/// COSE algorithm identifier of ES256 (RFC 9053 § 2.1).
const COSE_ALG_ES256: i64 = -7;

/// One resident credential: a key pair bound to a relying party and a user handle.
#[derive(Clone)]
pub struct Credential {
    pub id: Vec<u8>,
    pub rp_id: String,
    /// `user.id` of the creation options, returned as `userHandle` in every assertion.
    pub user_handle: Vec<u8>,
    pub sign_count: u32,
    key: SigningKey,
}

/// A platform authenticator holding passkeys: user-verifying, resident keys, ES256,
/// "none" attestation.
#[derive(Clone)]
pub struct Authenticator {
    credentials: Vec<Credential>,
    /// Sets UV in what it signs; off, it answers as if the user only touched it (a negative test).
    pub user_verification: bool,
    /// Sets BE and BS: a synced passkey (an iCloud Keychain or Google Password Manager one).
    pub backup_eligible: bool,
    /// Added to the counter at each assertion (1, as most counters; 0 for one that has none).
    pub counter_step: u32,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl Authenticator {
    /// A device-bound authenticator (not backup eligible: the server sees `hwk`).
    pub fn new() -> Self {
        Self {
            credentials: Vec::new(),
            user_verification: true,
            backup_eligible: false,
            counter_step: 1,
        }
    }

    /// A synced passkey provider (BE and BS set: the server sees `swk`).
    pub fn synced() -> Self {
        Self {
            backup_eligible: true,
            ..Self::new()
        }
    }

    /// The credentials it holds, oldest first.
    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }

    /// The base64url id of its newest credential, as `id` in its answers.
    pub fn credential_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.newest().id)
    }

    fn newest(&self) -> &Credential {
        self.credentials
            .last()
            .expect("the authenticator holds a credential")
    }

    fn flags(&self) -> u8 {
        let mut flags = FLAG_UP;
        if self.user_verification {
            flags |= FLAG_UV;
        }
        if self.backup_eligible {
            flags |= FLAG_BE | FLAG_BS;
        }
        flags
    }

    /// `navigator.credentials.create({ publicKey })` then `credential.toJSON()`: creates a
    /// resident ES256 credential for `options.rp.id` and `options.user.id`, as the page at
    /// `origin` asked. Panics, as the browser would reject, when the options are not creation
    /// options this authenticator can serve (no ES256 offered, one of its credentials excluded).
    pub fn create(&mut self, options: &Value, origin: &str) -> Value {
        let rp_id = text(options, "/rp/id");
        let user_handle = decode(&text(options, "/user/id"));
        let challenge = text(options, "/challenge");
        let offers_es256 = options["pubKeyCredParams"]
            .as_array()
            .expect("pubKeyCredParams in the creation options")
            .iter()
            .any(|param| param["type"] == "public-key" && param["alg"] == COSE_ALG_ES256);
        assert!(offers_es256, "NotSupportedError: no ES256 in {options}");
        assert!(
            !self.excluded(options),
            "InvalidStateError: this authenticator holds an excluded credential: {options}"
        );

        let key = SigningKey::random(&mut OsRng);
        let id: Vec<u8> =
            Sha256::digest(key.verifying_key().to_encoded_point(true).as_bytes()).to_vec();
        let credential = Credential {
            id: id.clone(),
            rp_id: rp_id.clone(),
            user_handle,
            sign_count: 0,
            key,
        };

        // § 6.1 authenticator data with § 6.5.1 attested credential data.
        let mut auth_data = authenticator_data(&rp_id, self.flags() | FLAG_AT, 0);
        auth_data.extend_from_slice(&[0; 16]); // AAGUID: none (a "none" attestation)
        auth_data.extend_from_slice(
            &u16::try_from(id.len())
                .expect("a short credential id")
                .to_be_bytes(),
        );
        auth_data.extend_from_slice(&id);
        auth_data.extend_from_slice(&cose_key(&credential.key));

        // § 6.5.4: fmt, attStmt, authData, in CTAP2 canonical order (shorter keys first).
        let attestation_object = cbor(&Cbor::Map(vec![
            (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
            (Cbor::Text("attStmt".into()), Cbor::Map(Vec::new())),
            (Cbor::Text("authData".into()), Cbor::Bytes(auth_data)),
        ]));
        let client_data = client_data_json("webauthn.create", &challenge, origin);
        self.credentials.push(credential);

        json!({
            "id": URL_SAFE_NO_PAD.encode(&id),
            "rawId": URL_SAFE_NO_PAD.encode(&id),
            "type": "public-key",
            "response": {
                "clientDataJSON": URL_SAFE_NO_PAD.encode(&client_data),
                "attestationObject": URL_SAFE_NO_PAD.encode(attestation_object),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        })
    }

    /// Whether one of its credentials is in `options.excludeCredentials` (creation options):
    /// a browser would refuse to create another for the same account.
    pub fn excluded(&self, options: &Value) -> bool {
        let excluded: Vec<Vec<u8>> = options["excludeCredentials"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|entry| decode(&text(entry, "/id")))
                    .collect()
            })
            .unwrap_or_default();
        self.credentials
            .iter()
            .any(|credential| excluded.contains(&credential.id))
    }

    /// `navigator.credentials.get({ publicKey })` then `assertion.toJSON()`: signs the challenge
    /// of `options` (request options) with its newest credential for `options.rpId` (among
    /// `allowCredentials` when that list is not empty; discoverable otherwise), as the page at
    /// `origin` asked. The credential's counter goes up by `counter_step`.
    pub fn get(&mut self, options: &Value, origin: &str) -> Value {
        let rp_id = text(options, "/rpId");
        let challenge = text(options, "/challenge");
        let allowed: Vec<Vec<u8>> = options["allowCredentials"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|entry| decode(&text(entry, "/id")))
                    .collect()
            })
            .unwrap_or_default();
        let flags = self.flags();
        let step = self.counter_step;
        let credential = self
            .credentials
            .iter_mut()
            .rev()
            .find(|credential| {
                credential.rp_id == rp_id
                    && (allowed.is_empty() || allowed.contains(&credential.id))
            })
            .unwrap_or_else(|| panic!("NotAllowedError: no credential for {rp_id}: {options}"));
        credential.sign_count = credential.sign_count.wrapping_add(step);

        let auth_data = authenticator_data(&rp_id, flags, credential.sign_count);
        let client_data = client_data_json("webauthn.get", &challenge, origin);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let signature: Signature = credential.key.sign(&signed);

        json!({
            "id": URL_SAFE_NO_PAD.encode(&credential.id),
            "rawId": URL_SAFE_NO_PAD.encode(&credential.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": URL_SAFE_NO_PAD.encode(&client_data),
                "authenticatorData": URL_SAFE_NO_PAD.encode(auth_data),
                "signature": URL_SAFE_NO_PAD.encode(signature.to_der().as_bytes()),
                "userHandle": URL_SAFE_NO_PAD.encode(&credential.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        })
    }
}

/// § 6.1: SHA-256(rpId) ‖ flags ‖ signCount (big-endian), without attested credential data.
fn authenticator_data(rp_id: &str, flags: u8, sign_count: u32) -> Vec<u8> {
    let mut data = Sha256::digest(rp_id.as_bytes()).to_vec();
    data.push(flags);
    data.extend_from_slice(&sign_count.to_be_bytes());
    data
}

/// RFC 9052 § 7 / RFC 9053 § 7.1.1: the EC2 public key of `key`, integer labels, in CTAP2
/// canonical order (1, 3, -1, -2, -3).
fn cose_key(key: &SigningKey) -> Vec<u8> {
    let point = key.verifying_key().to_encoded_point(false);
    let int = |n: i64| Cbor::Integer(Integer::from(n));
    cbor(&Cbor::Map(vec![
        (int(1), int(2)),
        (int(3), int(COSE_ALG_ES256)),
        (int(-1), int(1)),
        (int(-2), Cbor::Bytes(point.x().expect("x").to_vec())),
        (int(-3), Cbor::Bytes(point.y().expect("y").to_vec())),
    ]))
}

/// § 5.8.1 CollectedClientData, serialised as browsers do (§ 5.8.1.1: type, challenge, origin,
/// crossOrigin, in that order).
fn client_data_json(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": kind,
        "challenge": challenge,
        "origin": origin,
        "crossOrigin": false,
    }))
    .expect("client data serialises")
}

fn cbor(value: &Cbor) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).expect("CBOR serialises");
    bytes
}

fn text(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("TypeError: no string at {pointer} in {value}"))
        .to_owned()
}

/// base64url, with or without padding (what `parse*OptionsFromJSON` accepts).
fn decode(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap_or_else(|_| panic!("EncodingError: not base64url: {text}"))
}

/// The authenticator's own byte layouts, checked by reading them back as a relying party would.
#[cfg(test)]
mod tests {
    use p256::ecdsa::{VerifyingKey, signature::Verifier};

    use super::*;

    fn creation_options() -> Value {
        json!({
            "rp": { "id": "localhost", "name": "authql" },
            "user": { "id": URL_SAFE_NO_PAD.encode([7u8; 16]), "name": "a@x.com", "displayName": "a@x.com" },
            "challenge": URL_SAFE_NO_PAD.encode([1u8; 32]),
            "pubKeyCredParams": [{ "type": "public-key", "alg": -7 }, { "type": "public-key", "alg": -257 }],
            "excludeCredentials": [],
        })
    }

    fn request_options() -> Value {
        json!({ "rpId": "localhost", "challenge": URL_SAFE_NO_PAD.encode([2u8; 32]), "allowCredentials": [] })
    }

    fn field(value: &Value, pointer: &str) -> Vec<u8> {
        decode(&text(value, pointer))
    }

    fn map_get<'a>(map: &'a Cbor, key: &Cbor) -> &'a Cbor {
        map.as_map()
            .expect("a CBOR map")
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {key:?} in {map:?}"))
    }

    #[test]
    fn registration_and_assertion_bytes_read_back_as_a_relying_party_reads_them() {
        let mut authenticator = Authenticator::new();
        let registration = authenticator.create(&creation_options(), "http://localhost");
        assert_eq!(registration["id"], registration["rawId"]);
        let client_data: Value =
            serde_json::from_slice(&field(&registration, "/response/clientDataJSON")).unwrap();
        assert_eq!(client_data["type"], "webauthn.create");
        assert_eq!(client_data["challenge"], creation_options()["challenge"]);
        assert_eq!(client_data["origin"], "http://localhost");

        let attestation: Cbor =
            ciborium::from_reader(&field(&registration, "/response/attestationObject")[..])
                .unwrap();
        assert_eq!(
            map_get(&attestation, &Cbor::Text("fmt".into())),
            &Cbor::Text("none".into())
        );
        let auth_data = map_get(&attestation, &Cbor::Text("authData".into()))
            .as_bytes()
            .unwrap()
            .clone();
        assert_eq!(auth_data[..32], Sha256::digest(b"localhost")[..]);
        assert_eq!(auth_data[32], FLAG_UP | FLAG_UV | FLAG_AT);
        assert_eq!(auth_data[33..37], [0, 0, 0, 0]);
        assert_eq!(auth_data[37..53], [0; 16]);
        let id_length = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
        let id = &auth_data[55..55 + id_length];
        assert_eq!(id, field(&registration, "/rawId"));
        let cose: Cbor = ciborium::from_reader(&auth_data[55 + id_length..]).unwrap();
        let int = |n: i64| Cbor::Integer(Integer::from(n));
        assert_eq!(map_get(&cose, &int(1)), &int(2));
        assert_eq!(map_get(&cose, &int(3)), &int(-7));
        assert_eq!(map_get(&cose, &int(-1)), &int(1));
        let mut sec1 = vec![0x04];
        sec1.extend_from_slice(map_get(&cose, &int(-2)).as_bytes().unwrap());
        sec1.extend_from_slice(map_get(&cose, &int(-3)).as_bytes().unwrap());
        let public_key = VerifyingKey::from_sec1_bytes(&sec1).unwrap();

        // Two assertions: counters 1 and 2, each signature verifying with the registered key.
        for expected_count in 1..=2u32 {
            let assertion = authenticator.get(&request_options(), "http://localhost");
            let data = field(&assertion, "/response/authenticatorData");
            assert_eq!(data.len(), 37);
            assert_eq!(data[32], FLAG_UP | FLAG_UV);
            assert_eq!(data[33..37], expected_count.to_be_bytes());
            assert_eq!(field(&assertion, "/response/userHandle"), [7u8; 16]);
            let client_data_bytes = field(&assertion, "/response/clientDataJSON");
            let mut signed = data.clone();
            signed.extend_from_slice(&Sha256::digest(&client_data_bytes));
            let signature = Signature::from_der(&field(&assertion, "/response/signature")).unwrap();
            public_key.verify(&signed, &signature).unwrap();
        }
    }

    #[test]
    fn a_clone_keeps_its_own_counter_and_switches_change_the_flags() {
        let mut original = Authenticator::synced();
        original.create(&creation_options(), "http://localhost");
        let mut clone = original.clone();
        original.get(&request_options(), "http://localhost");
        original.get(&request_options(), "http://localhost");
        clone.user_verification = false;
        let assertion = clone.get(&request_options(), "http://localhost");
        let data = field(&assertion, "/response/authenticatorData");
        assert_eq!(data[33..37], 1u32.to_be_bytes());
        assert_eq!(data[32], FLAG_UP | FLAG_BE | FLAG_BS);
        assert_eq!(original.credentials()[0].sign_count, 2);
        assert!(original.excluded(&json!({ "excludeCredentials": [{ "type": "public-key", "id": original.credential_id() }] })));
    }
}
