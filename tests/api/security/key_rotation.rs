//! Key rotation in two phases (issue 17, case 18): a new key is first given to every instance as
//! verify-only, then promoted to signing, so that during a rolling deploy no instance refuses a
//! token another has issued; a refresh cookie that an instance merely cannot verify yet is not
//! cleared; the algorithm can change the same way.

use std::path::PathBuf;

use authql::config::JwtAlgorithm;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::header;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::*;

const OLD_SECRET: &str = "the old secret, long enough to sign with it";
const NEW_SECRET: &str = "the new secret, also long enough to sign with";

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    string_at(&header, "/kid")
}

fn keys(config: &mut authql::config::Config, signing: &str, verify_only: &[&str]) {
    config.jwt_secret_key = Some(SecretString::from(signing));
    config.jwt_retired_secret_keys = verify_only
        .iter()
        .map(|secret| SecretString::from(*secret))
        .collect();
}

#[tokio::test]
async fn an_hs256_secret_rotated_in_two_phases_never_refuses_a_token_any_instance_issued() {
    // Phase 1, everywhere: the old secret signs, the new one only verifies.
    let phase_one = spawn_app_with(|config| keys(config, OLD_SECRET, &[NEW_SECRET])).await;
    let before = phase_one.register("rotate@x.com").await;
    // Phase 2 on an instance (a restart here; on PostgreSQL, one instance of several): the new
    // secret signs, the old one verifies.
    let phase_two = phase_one
        .restart(|config| keys(config, NEW_SECRET, &[OLD_SECRET]))
        .await;
    assert_no_errors(&phase_two.me(&before.access_token).await);
    let after = phase_two.login("rotate@x.com").await;
    assert_ne!(kid_of(&after.access_token), kid_of(&before.access_token));
    // An instance still in phase 1 takes the new tokens too.
    let lagging = phase_two
        .restart(|config| keys(config, OLD_SECRET, &[NEW_SECRET]))
        .await;
    assert_no_errors(&lagging.me(&after.access_token).await);
    assert_no_errors(&lagging.me(&before.access_token).await);
    let refreshed = lagging.refresh_raw(&after.refresh_token).await;
    assert_no_errors(&refreshed);
    // Once the old secret's tokens have expired, it is dropped; what it signed means nothing.
    let done = lagging
        .restart(|config| keys(config, NEW_SECRET, &[]))
        .await;
    assert_unauthenticated(&done.me(&before.access_token).await, "MALFORMED");
    let current = string_at(&refreshed, "/data/refresh/accessToken");
    assert_unauthenticated(&done.me(&current).await, "MALFORMED");
    assert_no_errors(
        &done
            .me(&done.login("rotate@x.com").await.access_token)
            .await,
    );
}

#[tokio::test]
async fn a_refresh_cookie_an_instance_cannot_verify_yet_is_kept() {
    const ORIGIN: &str = "http://app.example";
    let cookie_mode = |config: &mut authql::config::Config, signing: &str| {
        keys(config, signing, &[]);
        config.refresh_token_cookie = true;
        config.cors_allowed_origins = vec![ORIGIN.into()];
    };
    let updated = spawn_app_with(|config| cookie_mode(config, NEW_SECRET)).await;
    let answer = updated
        .client
        .post(format!("{}/graphql", updated.address))
        .header(header::ORIGIN, ORIGIN)
        .json(&json!({ "query": format!("mutation {{ register(input: {{email: \"cookie@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}") }))
        .send()
        .await
        .unwrap();
    let cookie = answer.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // An instance that was not given the new key (a rotation done in one step).
    let not_yet = updated
        .restart(|config| cookie_mode(config, OLD_SECRET))
        .await;
    let refresh = || {
        not_yet
            .client
            .post(format!("{}/graphql", not_yet.address))
            .header(header::ORIGIN, ORIGIN)
            .header(header::COOKIE, &cookie)
            .json(&json!({ "query": "mutation { refresh { accessToken } }" }))
            .send()
    };
    let refused = refresh().await.unwrap();
    let cleared = refused.headers().get(header::SET_COOKIE).cloned();
    let body: Value = refused.json().await.unwrap();
    assert_unauthenticated(&body, "MALFORMED");
    assert_eq!(
        cleared, None,
        "the cookie is kept: another instance may take it"
    );
    // Back on an instance that has the key, the same cookie still works.
    let back = not_yet
        .restart(|config| cookie_mode(config, NEW_SECRET))
        .await;
    let answer = back
        .client
        .post(format!("{}/graphql", back.address))
        .header(header::ORIGIN, ORIGIN)
        .header(header::COOKIE, &cookie)
        .json(&json!({ "query": "mutation { refresh { accessToken } }" }))
        .send()
        .await
        .unwrap();
    assert_no_errors(&answer.json::<Value>().await.unwrap());
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

#[tokio::test]
async fn the_algorithm_changes_the_same_way_without_logging_anyone_out() {
    // Ed25519 signs; the HS256 secret that will sign next is given as verify-only.
    let eddsa = spawn_app_with(|config| {
        config.jwt_algorithm = JwtAlgorithm::EdDsa;
        config.jwt_private_key_file = Some(fixture("ed25519-a.pem"));
        config.jwt_secret_key = None;
        config.jwt_retired_secret_keys = vec![SecretString::from(NEW_SECRET)];
    })
    .await;
    let signed_by_ed25519 = eddsa.register("switch@x.com").await;
    // HS256 signs, the Ed25519 key only verifies.
    let hs256 = eddsa
        .restart(|config| {
            keys(config, NEW_SECRET, &[]);
            config.jwt_retired_key_files = vec![fixture("ed25519-a.pem").display().to_string()];
        })
        .await;
    assert_no_errors(&hs256.me(&signed_by_ed25519.access_token).await);
    let refreshed = hs256.refresh_raw(&signed_by_ed25519.refresh_token).await;
    assert_no_errors(&refreshed);
    // The verify-only public key is still published for other services; no secret ever is.
    let jwks = hs256.get("/.well-known/jwks.json").await;
    let jwks: Value = jwks.json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");
    assert!(jwks.to_string().find(NEW_SECRET).is_none());
}
