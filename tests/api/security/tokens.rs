//! Forged, confused and malformed tokens (RFC 8725, ASVS 9.1-9.2).
//!
//! Each test attacks the running server over HTTP with tokens built here by hand, checks that
//! none was accepted, and that the server still serves its genuine users afterwards.

use std::{path::PathBuf, time::Duration};

use authql::{app::Application, config::JwtAlgorithm};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation, jwk::JwkSet};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

/// The HS256 secret of `test_config`.
const TEST_SECRET: &[u8] = b"a test secret that is long enough to sign";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn encode_part(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a JWT segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

fn header_of(token: &str) -> Value {
    decode_part(token, 0)
}

fn claims_of(token: &str) -> Value {
    decode_part(token, 1)
}

/// A token with exactly this header and these claims, signed with `secret` by `algorithm`
/// (an HMAC), whatever the header claims.
fn forge(header: &Value, claims: &Value, algorithm: Algorithm, secret: &[u8]) -> String {
    let message = format!("{}.{}", encode_part(header), encode_part(claims));
    let key = EncodingKey::from_secret(secret).expect("an HMAC key");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, algorithm).expect("signs");
    format!("{message}.{signature}")
}

/// Signed correctly with the test secret: only what the test changes is wrong.
fn hs256(header: &Value, claims: &Value) -> String {
    forge(header, claims, Algorithm::HS256, TEST_SECRET)
}

fn with(value: &Value, member: &str, replacement: Value) -> Value {
    let mut value = value.clone();
    value[member] = replacement;
    value
}

fn without(value: &Value, member: &str) -> Value {
    let mut value = value.clone();
    value.as_object_mut().expect("an object").remove(member);
    value
}

/// A genuine user keeps working: nothing the attack did cost them their session.
async fn assert_still_serving(app: &TestApp, account: &Account) {
    assert_no_errors(&app.me(&account.access_token).await);
    let fresh = app
        .register(&format!("after-{}@x.com", uuid::Uuid::new_v4()))
        .await;
    assert_no_errors(&app.me(&fresh.access_token).await);
}

#[tokio::test]
async fn forged_algorithms_and_key_pointers_are_refused_without_fetching_anything() {
    let app = spawn_app().await;
    let account = app.register("forger@x.com").await;
    let genuine = header_of(&account.access_token);
    assert_eq!(genuine["alg"], "HS256");
    let claims = claims_of(&account.access_token);
    // A listener that would see any attempt of the server to fetch a key from a URL in a header.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}/keys.json", trap.local_addr().unwrap());
    let attacker_jwk =
        json!({ "kty": "oct", "k": URL_SAFE_NO_PAD.encode(b"attacker secret"), "alg": "HS256" });

    let unsigned = format!(
        "{}.{}.",
        encode_part(&with(&genuine, "alg", json!("none"))),
        encode_part(&claims)
    );
    let unsigned_capitalised = format!(
        "{}.{}.",
        encode_part(&with(&genuine, "alg", json!("None"))),
        encode_part(&claims)
    );
    let rs256 = format!(
        "{}.{}.{}",
        encode_part(&with(&genuine, "alg", json!("RS256"))),
        encode_part(&claims),
        URL_SAFE_NO_PAD.encode([7u8; 256])
    );
    let forgeries = [
        ("alg none", unsigned),
        ("alg None", unsigned_capitalised),
        (
            "HS384 with our secret",
            forge(
                &with(&genuine, "alg", json!("HS384")),
                &claims,
                Algorithm::HS384,
                TEST_SECRET,
            ),
        ),
        (
            "HS512 with our secret",
            forge(
                &with(&genuine, "alg", json!("HS512")),
                &claims,
                Algorithm::HS512,
                TEST_SECRET,
            ),
        ),
        ("RS256", rs256),
        (
            "jku",
            hs256(&with(&genuine, "jku", json!(trap_url)), &claims),
        ),
        (
            "x5u",
            hs256(&with(&genuine, "x5u", json!(trap_url)), &claims),
        ),
        (
            "x5c",
            hs256(
                &with(&genuine, "x5c", json!(["MIIBszCCAVmgAwIBAgIU"])),
                &claims,
            ),
        ),
        (
            "jwk signed with our secret",
            hs256(&with(&genuine, "jwk", attacker_jwk.clone()), &claims),
        ),
        (
            "jwk signed with the embedded key",
            forge(
                &with(&genuine, "jwk", attacker_jwk),
                &claims,
                Algorithm::HS256,
                b"attacker secret",
            ),
        ),
        (
            "crit",
            hs256(&with(&genuine, "crit", json!(["exp"])), &claims),
        ),
        (
            "unknown kid",
            hs256(&with(&genuine, "kid", json!("someone-elses-key")), &claims),
        ),
        (
            "kid of another type",
            hs256(&with(&genuine, "kid", json!(42)), &claims),
        ),
        ("no kid", hs256(&without(&genuine, "kid"), &claims)),
        ("no typ", hs256(&without(&genuine, "typ"), &claims)),
    ];
    for (attack, token) in &forgeries {
        let body = app.me(token).await;
        assert!(
            body["data"]["me"].is_null(),
            "{attack} was accepted: {body}"
        );
        assert_unauthenticated(&body, "MALFORMED");
    }
    // The same header tricks on a refresh token are refused as well, and rotate nothing.
    let refresh_header = header_of(&account.refresh_token);
    let refresh_claims = claims_of(&account.refresh_token);
    for header in [
        with(&refresh_header, "alg", json!("HS512")),
        with(&refresh_header, "jku", json!(trap_url)),
        with(&refresh_header, "kid", json!("someone-elses-key")),
    ] {
        let algorithm = if header["alg"] == "HS512" {
            Algorithm::HS512
        } else {
            Algorithm::HS256
        };
        let token = forge(&header, &refresh_claims, algorithm, TEST_SECRET);
        assert_unauthenticated(&app.refresh_raw(&token).await, "MALFORMED");
    }
    let fetched = tokio::time::timeout(Duration::from_millis(200), trap.accept()).await;
    assert!(
        fetched.is_err(),
        "the server fetched a key from a URL in a token header"
    );
    assert_still_serving(&app, &account).await;
    assert_no_errors(&app.refresh_raw(&account.refresh_token).await);
}

#[tokio::test]
async fn every_claim_is_required_and_of_its_type() {
    let app = spawn_app().await;
    let account = app.register("claims@x.com").await;
    let header = header_of(&account.access_token);
    let claims = claims_of(&account.access_token);
    // The forging itself is sound: the untouched claims, re-signed, are accepted.
    assert_no_errors(&app.me(&hs256(&header, &claims)).await);

    let mut broken = Vec::new();
    for claim in ["exp", "nbf", "iat", "iss", "aud", "sub", "sid", "jti"] {
        broken.push((format!("without {claim}"), without(&claims, claim)));
    }
    let exp = claims["exp"].as_i64().unwrap();
    for (claim, value) in [
        ("exp", json!(exp.to_string())),
        ("exp", json!(exp as f64 + 0.5)),
        ("nbf", json!(null)),
        ("iat", json!("yesterday")),
        ("iss", json!(["authql"])),
        ("iss", json!("someone-else")),
        ("aud", json!(["authql:access"])),
        ("sub", json!("not-a-uuid")),
        ("sid", json!(42)),
        ("jti", json!({ "id": claims["jti"] })),
    ] {
        broken.push((format!("{claim} = {value}"), with(&claims, claim, value)));
    }
    for (case, claims) in &broken {
        let body = app.me(&hs256(&header, claims)).await;
        assert!(body["data"]["me"].is_null(), "{case} was accepted: {body}");
        assert_unauthenticated(&body, "MALFORMED");
    }
    assert_still_serving(&app, &account).await;
}

#[tokio::test]
async fn a_refresh_token_in_access_clothing_is_refused_both_ways() {
    let app = spawn_app().await;
    let account = app.register("clothing@x.com").await;
    let access_header = header_of(&account.access_token);
    let refresh_header = header_of(&account.refresh_token);
    assert_eq!(access_header["typ"], "at+jwt");
    assert_eq!(refresh_header["typ"], "refresh+jwt");
    let access_claims = claims_of(&account.access_token);
    let refresh_claims = claims_of(&account.refresh_token);
    assert_eq!(access_claims["aud"], "authql:access");
    assert_eq!(refresh_claims["aud"], "authql:refresh");

    // The refresh token's claims under the access typ: the audience gives it away.
    let refresh_as_access = hs256(&access_header, &refresh_claims);
    assert_unauthenticated(&app.me(&refresh_as_access).await, "WRONG_TOKEN_TYPE");
    assert_unauthenticated(
        &app.refresh_raw(&refresh_as_access).await,
        "WRONG_TOKEN_TYPE",
    );
    // The access token's claims under the refresh typ: the audience gives it away too.
    let access_as_refresh = hs256(&refresh_header, &access_claims);
    assert_unauthenticated(
        &app.refresh_raw(&access_as_refresh).await,
        "WRONG_TOKEN_TYPE",
    );
    assert_unauthenticated(&app.me(&access_as_refresh).await, "WRONG_TOKEN_TYPE");
    // And the genuine ones only where they belong.
    assert_unauthenticated(&app.me(&account.refresh_token).await, "WRONG_TOKEN_TYPE");
    assert_unauthenticated(
        &app.refresh_raw(&account.access_token).await,
        "WRONG_TOKEN_TYPE",
    );

    assert_still_serving(&app, &account).await;
    assert_no_errors(&app.refresh_raw(&account.refresh_token).await);
}

#[tokio::test]
async fn garbage_of_any_shape_is_malformed_and_never_a_server_error() {
    let app = spawn_app().await;
    let account = app.register("garbage@x.com").await;
    let genuine = &account.access_token;
    let (header, rest) = genuine.split_once('.').unwrap();
    let huge_header = format!("{}.{rest}", "A".repeat(100 * 1024));
    let non_utf8_header = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x7b, 0x80])
    );
    let padded = format!("{header}==.{rest}");
    let garbage = [
        "x".to_owned(),
        "a.b".to_owned(),
        format!("{header}.{}", rest.split('.').next().unwrap()),
        "a.b.c.d".to_owned(),
        format!("{genuine}.{rest}"),
        format!("{genuine}."),
        "...".to_owned(),
        "!!!.@@@.###".to_owned(),
        format!("{header}.%%%.{}", rest.rsplit('.').next().unwrap()),
        padded,
        huge_header,
        non_utf8_header,
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode("[]")),
        format!(
            "{}.{rest}",
            URL_SAFE_NO_PAD.encode("{\"alg\":\"HS256\",\"alg\":\"none\"}")
        ),
    ];
    for token in &garbage {
        assert_unauthenticated(&app.me(token).await, "MALFORMED");
        let refreshed = app.refresh_raw(token).await;
        if token.len() > 64 * 1024 {
            // Inside a body, a 100 KB token meets the body limit first.
            assert_eq!(error_code(&refreshed), "PAYLOAD_TOO_LARGE");
        } else {
            assert_unauthenticated(&refreshed, "MALFORMED");
        }
    }
    // Bytes that are not UTF-8 in the header itself, and a 100 KB one.
    for value in [
        reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe.\x80.\x81").unwrap(),
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", "A".repeat(100 * 1024)))
            .unwrap(),
    ] {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .header(reqwest::header::AUTHORIZATION, value)
            .json(&json!({ "query": "{ me { id } }" }))
            .send()
            .await
            .unwrap();
        assert!(
            !response.status().is_server_error(),
            "{}",
            response.status()
        );
        assert_unauthenticated(&response.json().await.unwrap(), "MALFORMED");
    }
    assert_still_serving(&app, &account).await;
}

#[tokio::test]
async fn every_token_carries_a_kid_derived_from_the_secret_and_stable_across_instances() {
    let first = spawn_app().await;
    let account = first.register("kid@x.com").await;
    let expected = URL_SAFE_NO_PAD.encode(&Sha256::digest(TEST_SECRET)[..8]);
    assert_eq!(header_of(&account.access_token)["kid"], expected);
    assert_eq!(header_of(&account.refresh_token)["kid"], expected);
    // Another server with the same secret (on its own database) names the same key.
    let other = spawn_app().await;
    let theirs = other.register("kid@x.com").await;
    assert_eq!(header_of(&theirs.access_token)["kid"], expected);
    // A server with another secret names another key, and refuses ours by its kid.
    let foreign = spawn_app_with(|config| {
        config.jwt_secret_key = Some("a different secret that is also long enough".into());
    })
    .await;
    let foreign_account = foreign.register("kid@x.com").await;
    assert_ne!(header_of(&foreign_account.access_token)["kid"], expected);
    assert_unauthenticated(&foreign.me(&account.access_token).await, "MALFORMED");
    assert_still_serving(&first, &account).await;
}

fn use_key(config: &mut authql::config::Config, algorithm: JwtAlgorithm, file: &str) {
    config.jwt_algorithm = algorithm;
    config.jwt_private_key_file = Some(fixture(file));
    config.jwt_secret_key = None;
}

async fn fetch_jwks(app: &TestApp) -> (reqwest::StatusCode, Value) {
    let response = app.get("/.well-known/jwks.json").await;
    (response.status(), response.json().await.unwrap())
}

/// Whether any object in `value`, however deep, has a member named `name`.
fn has_member(value: &Value, name: &str) -> bool {
    match value {
        Value::Object(members) => members
            .iter()
            .any(|(key, inner)| key == name || has_member(inner, name)),
        Value::Array(items) => items.iter().any(|item| has_member(item, name)),
        _ => false,
    }
}

#[tokio::test]
async fn asymmetric_tokens_verify_against_the_published_jwks_which_holds_no_private_part() {
    for (algorithm, file, alg, retired) in [
        (JwtAlgorithm::EdDsa, "ed25519-a.pem", "EdDSA", "p256-a.pem"),
        (JwtAlgorithm::Es256, "p256-b.pem", "ES256", "ed25519-b.pem"),
    ] {
        let app = spawn_app_with(|config| {
            use_key(config, algorithm, file);
            config.jwt_retired_key_files = vec![fixture(retired).display().to_string()];
        })
        .await;
        let account = app.register("jwks@x.com").await;
        let header = header_of(&account.access_token);
        assert_eq!(header["alg"], alg);

        let (status, body) = fetch_jwks(&app).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        assert!(
            !has_member(&body, "d"),
            "a private part is published: {body}"
        );
        let keys = body["keys"].as_array().expect("a keys array");
        assert_eq!(keys.len(), 2, "the active and the retired key: {body}");
        for key in keys {
            assert!(key["kid"].is_string(), "{key}");
            assert!(key["alg"].is_string(), "{key}");
            assert_eq!(key["use"], "sig", "{key}");
        }
        assert_eq!(keys[0]["kid"], header["kid"], "the active key comes first");
        assert_eq!(keys[0]["alg"], alg);

        let jwks: JwkSet = serde_json::from_value(body).expect("a JWK Set");
        let kid = header["kid"].as_str().unwrap();
        let jwk = jwks.find(kid).expect("the token's key is published");
        let key = DecodingKey::from_jwk(jwk).expect("a usable public key");
        let mut validation = Validation::new(alg.parse().unwrap());
        validation.set_audience(&["authql:access"]);
        validation.set_issuer(&["authql"]);
        let verified = jsonwebtoken::decode::<Value>(&account.access_token, &key, &validation)
            .expect("the token verifies against the published key");
        assert_eq!(verified.claims["sid"].as_str().unwrap(), account.session_id);
        assert_still_serving(&app, &account).await;
    }
}

#[tokio::test]
async fn with_hs256_no_key_is_published() {
    let app = spawn_app().await;
    let (status, body) = fetch_jwks(&app).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
    assert!(!body.to_string().contains("\"k\""), "{body}");
}

#[tokio::test]
async fn with_an_asymmetric_key_hs256_tokens_are_refused_even_keyed_with_the_public_key() {
    let app = spawn_app_with(|config| use_key(config, JwtAlgorithm::EdDsa, "ed25519-a.pem")).await;
    let account = app.register("confusion@x.com").await;
    let header = header_of(&account.access_token);
    let claims = claims_of(&account.access_token);
    let (_, jwks) = fetch_jwks(&app).await;
    let public_key = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    // The classic key confusion: HMAC keyed with the published public key, under its kid.
    let hs256_header = with(&header, "alg", json!("HS256"));
    for secret in [
        public_key.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&public_key).unwrap(),
    ] {
        let token = forge(&hs256_header, &claims, Algorithm::HS256, &secret);
        assert_unauthenticated(&app.me(&token).await, "MALFORMED");
    }
    // An HS256 token with the test secret means nothing here.
    let token = hs256(&hs256_header, &claims);
    assert_unauthenticated(&app.me(&token).await, "MALFORMED");
    assert_still_serving(&app, &account).await;
    // No secret was generated and kept for a key set that has no use for one.
    let settings = settings_in(&app.database_url).await;
    assert!(settings.is_empty(), "{settings:?}");
}

#[tokio::test]
async fn a_retired_key_verifies_its_tokens_on_another_instance_but_never_signs() {
    let old = spawn_app_with(|config| use_key(config, JwtAlgorithm::EdDsa, "ed25519-a.pem")).await;
    let account = old.register("rotation@x.com").await;
    let other = old.login("rotation@x.com").await;
    let old_kid = header_of(&account.access_token)["kid"].clone();

    // The new release on the same database (a restart on SQLite, which one process serves; on
    // PostgreSQL the same holds for every instance): P-256 signs, the old Ed25519 key only
    // verifies.
    let rotated = old
        .restart(|config| {
            use_key(config, JwtAlgorithm::Es256, "p256-a.pem");
            config.jwt_retired_key_files = vec![fixture("ed25519-a.pem").display().to_string()];
        })
        .await;
    let me = rotated.me(&account.access_token).await;
    assert_eq!(me["data"]["me"]["email"], "rotation@x.com", "{me}");
    let fresh = rotated.login("rotation@x.com").await;
    let new_header = header_of(&fresh.access_token);
    assert_eq!(new_header["alg"], "ES256");
    assert_ne!(new_header["kid"], old_kid);
    assert_eq!(header_of(&fresh.refresh_token)["kid"], new_header["kid"]);
    let (_, jwks) = fetch_jwks(&rotated).await;
    assert_eq!(
        jwks["keys"][0]["kid"], new_header["kid"],
        "the active key is published first"
    );
    assert_eq!(
        jwks["keys"][1]["kid"], old_kid,
        "the retired key is still published"
    );
    // The old refresh token still rotates its session, and the new pair is signed by the new key.
    let refreshed = rotated.refresh_raw(&account.refresh_token).await;
    assert_no_errors(&refreshed);
    let refreshed_access = string_at(&refreshed, "/data/refresh/accessToken");
    assert_eq!(header_of(&refreshed_access)["kid"], new_header["kid"]);

    // Once the old key is dropped, a token it signed means nothing.
    let without_old = rotated
        .restart(|config| use_key(config, JwtAlgorithm::Es256, "p256-a.pem"))
        .await;
    assert_unauthenticated(&without_old.me(&other.access_token).await, "MALFORMED");
    assert_no_errors(&without_old.me(&fresh.access_token).await);
}

/// One way to get the key settings wrong.
type Configure<'a> = Box<dyn FnOnce(&mut authql::config::Config) + 'a>;

#[tokio::test]
async fn bad_key_settings_stop_the_start_and_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello").unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let cases: Vec<(&str, Configure<'_>)> = vec![
        (
            "JWT_PRIVATE_KEY_FILE",
            Box::new(|config| {
                config.jwt_algorithm = JwtAlgorithm::EdDsa;
                config.jwt_private_key_file = None;
            }),
        ),
        (
            "JWT_PRIVATE_KEY_FILE",
            Box::new(|config| {
                config.jwt_algorithm = JwtAlgorithm::Es256;
                config.jwt_private_key_file = Some(dir.path().join("missing.pem"));
            }),
        ),
        (
            "JWT_PRIVATE_KEY_FILE",
            Box::new(|config| use_key(config, JwtAlgorithm::EdDsa, "p256-a.pem")),
        ),
        (
            "JWT_PRIVATE_KEY_FILE",
            Box::new(|config| {
                config.jwt_algorithm = JwtAlgorithm::EdDsa;
                config.jwt_private_key_file = Some(not_a_key.clone());
            }),
        ),
        (
            "JWT_PRIVATE_KEY_FILE",
            Box::new(|config| config.jwt_private_key_file = Some(fixture("ed25519-a.pem"))),
        ),
        (
            "JWT_RETIRED_KEY_FILES",
            Box::new(move |config| {
                use_key(config, JwtAlgorithm::EdDsa, "ed25519-a.pem");
                config.jwt_retired_key_files = vec![missing];
            }),
        ),
        (
            "JWT_RETIRED_KEY_FILES",
            Box::new(|config| {
                use_key(config, JwtAlgorithm::EdDsa, "ed25519-a.pem");
                config.jwt_retired_key_files = vec![not_a_key.display().to_string()];
            }),
        ),
        (
            "JWT_KEY_ID",
            Box::new(|config| {
                use_key(config, JwtAlgorithm::EdDsa, "ed25519-a.pem");
                config.jwt_key_id = Some("has spaces".into());
            }),
        ),
    ];
    for (setting, configure) in cases {
        let mut config = test_config(&sqlite_url(&dir.path().join("authql.db")));
        configure(&mut config);
        let error = Application::build(config)
            .await
            .err()
            .expect("start-up fails");
        let message = format!("{error:#}");
        assert!(message.contains(setting), "{setting}: {message}");
        assert!(
            !message.contains("hello"),
            "file contents leaked: {message}"
        );
    }
}
