//! Sign in with OpenID Connect against a real, certified OpenID Provider: node-oidc-provider 9
//! (`clients/lib/openid-provider.mjs`), driven over HTTP the way a browser would (its login form,
//! its redirects, a cookie jar), with its own faults injected at its token endpoint where a
//! test needs a bad ID token (the provider's real keys sign it).
//!
//! Asserts on codes and state: the redirects' parameters, `extensions.code`, the account's
//! identities and sessions, the tokens' claims.

use std::{collections::HashMap, process::Stdio, time::Duration};

use authql::config::{Config, OidcProviderSettings};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::accounts::claims_of;
use crate::helpers::{
    PASSWORD, TestApp, assert_no_errors, eml_link_token, error_code, spawn_app_with, string_at,
};

const CLIENT_ID: &str = "authql";
const CLIENT_SECRET: &str = "a client secret of the test provider, long enough";
/// The app's page a sign-in returns to (never fetched: the tests read the redirect).
const APP_PAGE: &str = "http://app.test/signed-in";
const PROVIDER: &str = "testop";

const BEGIN: &str = "mutation($input: BeginOidcLoginInput!) { beginOidcLogin(input: $input) { authorizationUrl state } }";
const COMPLETE: &str = "mutation($code: String!) { completeOidcLogin(code: $code) { accessToken refreshToken user { id email emailVerified } session { id } } }";
const IDENTITIES: &str = "{ me { id email emailVerified identities { provider email linkedAt } } }";

/// A node-oidc-provider process (killed when dropped).
pub struct OpenIdProvider {
    pub issuer: String,
    http: reqwest::Client,
    _process: tokio::process::Child,
}

impl OpenIdProvider {
    /// Starts the provider on `port` (0: any) with these accounts (`{sub, email,
    /// email_verified, name}`).
    pub async fn start(port: u16, accounts: Value) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("clients/lib/openid-provider.mjs");
        let mut process = tokio::process::Command::new("node")
            .arg(&script)
            .env("OP_PORT", port.to_string())
            .env("OP_ACCOUNTS", accounts.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the test OpenID Provider (clients/: npm ci)");
        let stdout = process.stdout.take().expect("its stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the provider starts within 30 s")
            .expect("its stdout is readable")
            .expect("it prints where it listens");
        let ready: Value = serde_json::from_str(&ready).expect("a JSON line");
        Self {
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client"),
            _process: process,
        }
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/test/{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .expect("the provider answers");
        assert!(
            response.status().is_success(),
            "/test/{path}: {}",
            response.status()
        );
        response.json().await.expect("JSON")
    }

    /// Registers authql (`app`) as a client whose redirect URI is its callback.
    pub async fn register_client(&self, client_id: &str, app: &TestApp) {
        self.control(
            "clients",
            json!({
                "client_id": client_id,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("{}/auth/oidc/callback", app.address)],
            }),
        )
        .await;
    }

    pub async fn add_account(&self, sub: &str, email: &str, email_verified: bool) {
        self.control(
            "accounts",
            json!({ "sub": sub, "email": email, "email_verified": email_verified, "name": sub }),
        )
        .await;
    }

    /// The next ID token the token endpoint gives is changed so (`{"claims": {...}}`,
    /// `{"sign": "none" | "foreign-key"}`).
    pub async fn tamper(&self, fault: Value) {
        self.control("tamper", fault).await;
    }

    /// A new signing key; returns its `kid`.
    pub async fn rotate_keys(&self) -> String {
        string_at(&self.control("rotate-keys", json!({})).await, "/kid")
    }

    pub async fn token_requests(&self) -> Value {
        self.http
            .get(format!("{}/test/token-requests", self.issuer))
            .send()
            .await
            .expect("the provider answers")
            .json()
            .await
            .expect("JSON")
    }

    /// Plays the browser at the provider: opens `authorization_url`, signs in as `login` on
    /// its form, and follows the provider's redirects until one leaves it. Returns that
    /// address (authql's callback, with `code` and `state`, or `error`).
    pub async fn sign_in(&self, authorization_url: &str, login: &str) -> String {
        let mut jar: HashMap<String, String> = HashMap::new();
        let mut url = authorization_url.to_owned();
        let mut form_sent = false;
        for _ in 0..10 {
            if !url.starts_with(&self.issuer) {
                return url;
            }
            let cookies = jar
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ");
            let interaction = url.contains("/interaction/") && !form_sent;
            let request = if interaction {
                form_sent = true;
                self.http
                    .post(format!("{url}/login"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("login={}", urlencode(login)))
            } else {
                self.http.get(&url)
            };
            let response = request
                .header("cookie", cookies)
                .send()
                .await
                .expect("the provider answers");
            for cookie in response.headers().get_all("set-cookie") {
                let cookie = cookie.to_str().unwrap_or_default();
                if let Some((name, rest)) = cookie.split_once('=') {
                    let value = rest.split(';').next().unwrap_or_default();
                    jar.insert(name.to_owned(), value.to_owned());
                }
            }
            let status = response.status();
            let location = response
                .headers()
                .get("location")
                .map(|value| value.to_str().unwrap_or_default().to_owned());
            let Some(location) = location else {
                panic!(
                    "the provider answered {status} without a redirect: {}",
                    response.text().await.unwrap_or_default()
                );
            };
            url = reqwest::Url::parse(&url)
                .and_then(|base| base.join(&location))
                .expect("a location")
                .to_string();
        }
        panic!("the provider redirected more than 10 times");
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// One query parameter of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn provider_settings(name: &str, op: &OpenIdProvider, client_id: &str) -> OidcProviderSettings {
    OidcProviderSettings {
        name: name.to_owned(),
        display_name: format!("Test OP ({name})"),
        issuer: op.issuer.clone(),
        client_id: client_id.to_owned(),
        client_secret: SecretString::from(CLIENT_SECRET),
        scopes: vec!["openid".into(), "email".into(), "profile".into()],
    }
}

/// authql with the provider as `testop`, registered there as a client.
async fn app_with(op: &OpenIdProvider, configure: impl FnOnce(&mut Config)) -> TestApp {
    let settings = provider_settings(PROVIDER, op, CLIENT_ID);
    let app = spawn_app_with(|config| {
        config.oidc_provider_settings = vec![settings];
        config.oidc_redirect_uris = vec![APP_PAGE.to_owned()];
        configure(config);
    })
    .await;
    op.register_client(CLIENT_ID, &app).await;
    app
}

async fn begin(app: &TestApp, provider: &str, redirect_uri: &str, token: Option<&str>) -> Value {
    let link = token.map(|_| true);
    app.graphql(
        BEGIN,
        json!({ "input": { "provider": provider, "redirectUri": redirect_uri, "link": link } }),
        token,
    )
    .await
}

/// authql's answer to the browser coming back at its callback: where it sends it.
async fn callback(app: &TestApp, callback_url: &str) -> reqwest::Response {
    assert!(
        callback_url.starts_with(&format!("{}/auth/oidc/callback?", app.address)),
        "{callback_url}"
    );
    no_redirects()
        .get(callback_url)
        .send()
        .await
        .expect("authql answers")
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// Begins a sign-in, signs in at the provider as `login` and returns authql's redirect to the
/// app page (with `code` and `state`, or `error` and `state`), and the state `begin` gave.
async fn through_provider(app: &TestApp, op: &OpenIdProvider, login: &str) -> (String, String) {
    through_provider_with(app, op, login, None, |url| url.to_owned()).await
}

async fn through_provider_with(
    app: &TestApp,
    op: &OpenIdProvider,
    login: &str,
    token: Option<&str>,
    change_url: impl FnOnce(&str) -> String,
) -> (String, String) {
    let begun = begin(app, PROVIDER, APP_PAGE, token).await;
    assert_no_errors(&begun);
    let url = string_at(&begun, "/data/beginOidcLogin/authorizationUrl");
    let state = string_at(&begun, "/data/beginOidcLogin/state");
    let at_callback = op.sign_in(&change_url(&url), login).await;
    let response = callback(app, &at_callback).await;
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(APP_PAGE), "{location}");
    assert_eq!(param(&location, "state").as_deref(), Some(state.as_str()));
    (location, state)
}

/// A whole sign-in: the app page's `code` redeemed. Returns `completeOidcLogin`'s answer.
async fn sign_in(app: &TestApp, op: &OpenIdProvider, login: &str) -> Value {
    let (location, _) = through_provider(app, op, login).await;
    let code = param(&location, "code").unwrap_or_else(|| panic!("a code: {location}"));
    complete(app, &code, None).await
}

async fn complete(app: &TestApp, code: &str, token: Option<&str>) -> Value {
    app.graphql(COMPLETE, json!({ "code": code }), token).await
}

fn reason(answer: &Value) -> String {
    answer["errors"][0]["extensions"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Registers `email` with a password and verifies its address (the mailed link).
async fn verified_account(app: &TestApp, email: &str, nth_mail: usize) -> crate::helpers::Account {
    let account = app.register(email).await;
    let token = eml_link_token(&app.mail_dir, "email_verification", nth_mail).await;
    assert_no_errors(&crate::accounts::verify_email(app, &token).await);
    account
}

/// `unlinkIdentity(provider)` as the caller of `token`: the whole answer.
async fn unlink(app: &TestApp, token: &str, provider: &str) -> Value {
    app.graphql(
        "mutation($p: String!) { unlinkIdentity(provider: $p) }",
        json!({ "p": provider }),
        Some(token),
    )
    .await
}

async fn identities(app: &TestApp, token: &str) -> Value {
    let answer = app.graphql(IDENTITIES, json!({}), Some(token)).await;
    assert_no_errors(&answer);
    answer["data"]["me"]["identities"].clone()
}

#[tokio::test]
async fn a_first_sign_in_makes_a_verified_account_without_a_password_and_the_next_one_finds_it() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("ada", "ada@example.com", true).await;
    let app = app_with(&op, |_| {}).await;

    let providers = app
        .graphql("{ oidcProviders { name displayName } }", json!({}), None)
        .await;
    assert_eq!(
        providers["data"]["oidcProviders"],
        json!([{ "name": PROVIDER, "displayName": "Test OP (testop)" }])
    );

    let first = sign_in(&app, &op, "ada").await;
    assert_no_errors(&first);
    let payload = &first["data"]["completeOidcLogin"];
    assert_eq!(payload["user"]["email"], "ada@example.com");
    assert_eq!(payload["user"]["emailVerified"], true);
    let access = string_at(payload, "/accessToken");
    let claims = claims_of(&access);
    assert_eq!(claims["amr"], json!(["fed"]));
    assert_eq!(claims["email_verified"], true);
    let linked = identities(&app, &access).await;
    assert_eq!(linked.as_array().map(Vec::len), Some(1), "{linked}");
    assert_eq!(linked[0]["provider"], PROVIDER);
    assert_eq!(linked[0]["email"], "ada@example.com");

    // authql exchanged the code with PKCE and its client credentials.
    let requests = op.token_requests().await;
    assert_eq!(requests[0]["grant_type"], "authorization_code");
    assert_eq!(requests[0]["had_code_verifier"], true);
    assert_eq!(requests[0]["client_auth"], "basic");

    // The account has no password: none logs in to it.
    let login = app.login_raw("ada@example.com", PASSWORD).await;
    assert_eq!(error_code(&login), "INVALID_CREDENTIALS");
    let login = app.login_raw("ada@example.com", "").await;
    assert_eq!(error_code(&login), "INVALID_CREDENTIALS");

    // The same identity signs in to the same account, in a session of its own.
    let second = sign_in(&app, &op, "ada").await;
    assert_no_errors(&second);
    let again = &second["data"]["completeOidcLogin"];
    assert_eq!(again["user"]["id"], payload["user"]["id"]);
    assert_ne!(again["session"]["id"], payload["session"]["id"]);
    let sessions = app.my_sessions(&access).await;
    assert_eq!(
        sessions["data"]["mySessions"].as_array().map(Vec::len),
        Some(2),
        "{sessions}"
    );
}

#[tokio::test]
async fn the_code_for_the_app_works_once() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("bo", "bo@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let (location, _) = through_provider(&app, &op, "bo").await;
    let code = param(&location, "code").expect("a code");
    assert_no_errors(&complete(&app, &code, None).await);
    let again = complete(&app, &code, None).await;
    assert_eq!(error_code(&again), "INVALID_TOKEN");
    assert_eq!(reason(&again), "UNKNOWN");
    let forged = complete(&app, "not-a-code-authql-gave", None).await;
    assert_eq!(error_code(&forged), "INVALID_TOKEN");
    let huge = complete(&app, &"x".repeat(10_000), None).await;
    assert_eq!(error_code(&huge), "INVALID_TOKEN");
}

#[tokio::test]
async fn a_state_that_is_not_a_sign_in_in_progress_redirects_nowhere() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("cy", "cy@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let begun = begin(&app, PROVIDER, APP_PAGE, None).await;
    let url = string_at(&begun, "/data/beginOidcLogin/authorizationUrl");
    let at_callback = op.sign_in(&url, "cy").await;

    // Another state (a forged one, or one of another sign-in): a page of authql's, no redirect.
    let code = param(&at_callback, "code").expect("a code");
    let forged = format!(
        "{}/auth/oidc/callback?code={code}&state=someone-elses-state",
        app.address
    );
    let response = callback(&app, &forged).await;
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("location").is_none());

    // The real one works, once: replaying the callback finds no sign-in.
    let response = callback(&app, &at_callback).await;
    assert_eq!(response.status(), 303);
    let replayed = callback(&app, &at_callback).await;
    assert_eq!(replayed.status(), 400);
    assert!(replayed.headers().get("location").is_none());

    // No state, a state given twice, a huge state: the same page.
    for query in [
        format!("code={code}"),
        format!("code={code}&state=a&state=b"),
        format!("code={code}&state={}", "s".repeat(4000)),
        String::new(),
    ] {
        let response = callback(&app, &format!("{}/auth/oidc/callback?{query}", app.address)).await;
        assert_eq!(response.status(), 400, "{query}");
        assert!(response.headers().get("location").is_none(), "{query}");
    }
}

#[tokio::test]
async fn an_unlisted_redirect_uri_is_refused_before_anything_is_kept() {
    let op = OpenIdProvider::start(0, json!([])).await;
    let app = app_with(&op, |_| {}).await;
    for uri in [
        "https://evil.example/signed-in",
        "http://app.test/signed-in/",
        "http://app.test/signed-in?next=https://evil.example",
        "http://app.test/signed-in#x",
        "http://APP.test/signed-in",
        "http://app.test/signed-in/../evil",
        "",
    ] {
        let answer = begin(&app, PROVIDER, uri, None).await;
        assert_eq!(error_code(&answer), "BAD_USER_INPUT", "{uri}: {answer}");
        assert_eq!(answer["errors"][0]["extensions"]["field"], "redirectUri");
    }
    let answer = begin(&app, "nosuchprovider", APP_PAGE, None).await;
    assert_eq!(error_code(&answer), "BAD_USER_INPUT");
    assert_eq!(answer["errors"][0]["extensions"]["field"], "provider");
}

/// The provider's error for the sign-in, and no code, at the app page.
fn refused_with(location: &str, error: &str) {
    assert_eq!(
        param(location, "error").as_deref(),
        Some(error),
        "{location}"
    );
    assert!(param(location, "code").is_none(), "{location}");
}

#[tokio::test]
async fn an_id_token_whose_nonce_is_not_the_sign_ins_is_refused() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("di", "di@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    // The browser's request carries another nonce than authql kept (the provider then puts
    // that one in its ID token, as it should).
    let (location, _) = through_provider_with(&app, &op, "di", None, |url| {
        let mut url = reqwest::Url::parse(url).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "nonce" {
                    "an-attackers-nonce".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url.to_string()
    })
    .await;
    refused_with(&location, "access_denied");
}

#[tokio::test]
async fn id_tokens_for_another_audience_expired_unsigned_or_signed_by_another_key_are_refused() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("ed", "ed@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let now = chrono::Utc::now().timestamp();
    for fault in [
        json!({ "claims": { "aud": "someone-else" } }),
        json!({ "claims": { "aud": [CLIENT_ID, "someone-else"] } }),
        json!({ "claims": { "azp": "someone-else" } }),
        json!({ "claims": { "iss": "https://another-issuer.example" } }),
        json!({ "claims": { "exp": now - 60, "iat": now - 3600 } }),
        json!({ "claims": { "iat": now + 3600, "exp": now + 7200 } }),
        json!({ "sign": "none" }),
        json!({ "sign": "foreign-key" }),
        json!({ "claims": { "sub": "" } }),
        json!({ "claims": { "sub": "s".repeat(256) } }),
        json!({ "claims": { "sub": "ed\nadmin" } }),
        json!({ "claims": { "sub": "ed\u{202e}" } }),
    ] {
        op.tamper(fault.clone()).await;
        let (location, _) = through_provider(&app, &op, "ed").await;
        assert_eq!(
            param(&location, "error").as_deref(),
            Some("access_denied"),
            "{fault}: {location}"
        );
        assert!(param(&location, "code").is_none(), "{fault}: {location}");
    }
    // No account was made by any of them; an untampered sign-in makes one.
    let fine = sign_in(&app, &op, "ed").await;
    assert_no_errors(&fine);
}

#[tokio::test]
async fn a_provider_key_rotation_is_followed_by_fetching_its_keys_again() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("flo", "flo@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    assert_no_errors(&sign_in(&app, &op, "flo").await);
    // authql has the old keys cached; the next ID token is signed with a key it never saw.
    op.rotate_keys().await;
    let answer = sign_in(&app, &op, "flo").await;
    assert_no_errors(&answer);
}

#[tokio::test]
async fn a_provider_that_is_away_at_start_answers_service_unavailable_until_it_is_back() {
    // A port nothing listens on yet.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let settings = OidcProviderSettings {
        name: PROVIDER.into(),
        display_name: "Away".into(),
        issuer: format!("http://127.0.0.1:{port}"),
        client_id: CLIENT_ID.into(),
        client_secret: SecretString::from(CLIENT_SECRET),
        scopes: vec!["openid".into(), "email".into()],
    };
    let app = spawn_app_with(|config| {
        config.oidc_provider_settings = vec![settings];
        config.oidc_redirect_uris = vec![APP_PAGE.to_owned()];
    })
    .await;
    let answer = begin(&app, PROVIDER, APP_PAGE, None).await;
    assert_eq!(error_code(&answer), "SERVICE_UNAVAILABLE", "{answer}");
    // The rest of authql works meanwhile.
    app.register("gil@example.com").await;

    let op = OpenIdProvider::start(port, json!([])).await;
    op.add_account("gil2", "gil2@example.com", true).await;
    op.register_client(CLIENT_ID, &app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = begin(&app, PROVIDER, APP_PAGE, None).await;
        if answer.get("errors").is_none() {
            break;
        }
        assert_eq!(error_code(&answer), "SERVICE_UNAVAILABLE");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the provider was not discovered within 30 s of coming back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_no_errors(&sign_in(&app, &op, "gil2").await);
}

#[tokio::test]
async fn an_address_the_provider_did_not_verify_never_makes_or_links_an_account() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("mallory", "hal@example.com", false).await;
    op.add_account("nobody", "new@example.com", false).await;
    let app = app_with(&op, |_| {}).await;
    let hal = verified_account(&app, "hal@example.com", 1).await;

    // The provider let someone claim hal's address without proving it: no way into hal's
    // account, and no account made for an unknown address either.
    for login in ["mallory", "nobody"] {
        let answer = sign_in(&app, &op, login).await;
        assert_eq!(error_code(&answer), "EMAIL_NOT_VERIFIED", "{answer}");
        assert_eq!(reason(&answer), "PROVIDER");
    }
    assert_eq!(identities(&app, &hal.access_token).await, json!([]));
    assert_eq!(
        error_code(&app.login_raw("new@example.com", PASSWORD).await),
        "INVALID_CREDENTIALS"
    );
}

#[tokio::test]
async fn a_pre_hijacked_account_is_not_linked_to_the_real_owners_identity() {
    // Sudhodanan & Paverd's classic-federated merge: the attacker registers the victim's
    // address with a password of their own and never verifies it; the victim then signs in
    // with their provider, which verified the address.
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("victim", "ivy@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let attacker = app.register("ivy@example.com").await;

    let answer = sign_in(&app, &op, "victim").await;
    assert_eq!(error_code(&answer), "ACCOUNT_EXISTS", "{answer}");
    // Nothing was linked to the attacker's account, no session was made, and the attacker's
    // password still opens only the account it opened before (which the victim never used).
    assert_eq!(identities(&app, &attacker.access_token).await, json!([]));
    let sessions = app.my_sessions(&attacker.access_token).await;
    assert_eq!(
        sessions["data"]["mySessions"].as_array().map(Vec::len),
        Some(1)
    );

    // Once the address is proven on authql's side too, the identity is linked.
    let token = eml_link_token(&app.mail_dir, "email_verification", 1).await;
    assert_no_errors(&crate::accounts::verify_email(&app, &token).await);
    let answer = sign_in(&app, &op, "victim").await;
    assert_no_errors(&answer);
    let linked = identities(&app, &attacker.access_token).await;
    assert_eq!(linked[0]["provider"], PROVIDER);
}

#[tokio::test]
async fn a_signed_in_user_links_a_provider_then_unlinks_it() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("jo-at-op", "jo.elsewhere@example.com", false)
        .await;
    let app = app_with(&op, |_| {}).await;
    let jo = verified_account(&app, "jo@example.com", 1).await;
    let other = app.login("jo@example.com").await;

    // Linking needs the session that began it.
    let (location, _) = through_provider_with(&app, &op, "jo-at-op", Some(&jo.access_token), |u| {
        u.to_owned()
    })
    .await;
    let code = param(&location, "code").expect("a code");
    let without = complete(&app, &code, None).await;
    assert_eq!(error_code(&without), "UNAUTHENTICATED");

    let (location, _) = through_provider_with(&app, &op, "jo-at-op", Some(&jo.access_token), |u| {
        u.to_owned()
    })
    .await;
    let code = param(&location, "code").expect("a code");
    let by_another = complete(&app, &code, Some(&other.access_token)).await;
    assert_eq!(error_code(&by_another), "INVALID_TOKEN");
    assert_eq!(identities(&app, &jo.access_token).await, json!([]));

    let (location, _) = through_provider_with(&app, &op, "jo-at-op", Some(&jo.access_token), |u| {
        u.to_owned()
    })
    .await;
    let code = param(&location, "code").expect("a code");
    let linked = complete(&app, &code, Some(&jo.access_token)).await;
    assert_no_errors(&linked);
    let payload = &linked["data"]["completeOidcLogin"];
    // The same session, its pair rotated, its proofs now with `fed`.
    assert_eq!(payload["session"]["id"], jo.session_id.as_str());
    let access = string_at(payload, "/accessToken");
    let amr = claims_of(&access)["amr"].clone();
    assert!(amr.as_array().unwrap().contains(&json!("fed")), "{amr}");
    let listed = identities(&app, &access).await;
    assert_eq!(listed[0]["provider"], PROVIDER);
    // (An address the provider did not verify is fine for a link: the user proved the
    // account, the provider proved the identity.)
    assert_eq!(listed[0]["email"], "jo.elsewhere@example.com");

    // The identity now signs in to jo's account.
    let signed_in = sign_in(&app, &op, "jo-at-op").await;
    assert_no_errors(&signed_in);
    assert_eq!(
        signed_in["data"]["completeOidcLogin"]["user"]["email"],
        "jo@example.com"
    );

    // Unlinking ends the other sessions and the identity's next sign-in finds no account.
    let unlinked = unlink(&app, &access, PROVIDER).await;
    assert_no_errors(&unlinked);
    assert_eq!(unlinked["data"]["unlinkIdentity"], true);
    assert_eq!(identities(&app, &access).await, json!([]));
    let others = app.me(&other.access_token).await;
    assert_eq!(error_code(&others), "UNAUTHENTICATED");
    // The unlinked identity no longer signs in to jo's account (its own address is not
    // verified, so it gets no account of its own either).
    let again = sign_in(&app, &op, "jo-at-op").await;
    assert_eq!(error_code(&again), "EMAIL_NOT_VERIFIED", "{again}");

    // Linked again on purpose, it signs in again.
    let (location, _) =
        through_provider_with(&app, &op, "jo-at-op", Some(&access), |u| u.to_owned()).await;
    let relinked = complete(&app, &param(&location, "code").unwrap(), Some(&access)).await;
    assert_no_errors(&relinked);
    let access = string_at(&relinked, "/data/completeOidcLogin/accessToken");
    assert_eq!(identities(&app, &access).await[0]["provider"], PROVIDER);
    assert_no_errors(&sign_in(&app, &op, "jo-at-op").await);
}

/// The owner unlinks a provider account that someone else took over: its next sign-in must not
/// link it again by its (verified) address.
#[tokio::test]
async fn an_unlinked_identity_is_not_linked_again_by_its_address() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("taken-over", "tess@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let tess = verified_account(&app, "tess@example.com", 1).await;
    // Linked by address at the first sign-in (both sides verified).
    let first = sign_in(&app, &op, "taken-over").await;
    assert_no_errors(&first);
    assert_eq!(
        string_at(&first, "/data/completeOidcLogin/user/email"),
        "tess@example.com"
    );
    let intruder = string_at(&first, "/data/completeOidcLogin/accessToken");

    let unlinked = unlink(&app, &tess.access_token, PROVIDER).await;
    assert_eq!(unlinked["data"]["unlinkIdentity"], true, "{unlinked}");
    assert_eq!(error_code(&app.me(&intruder).await), "UNAUTHENTICATED");
    for _ in 0..2 {
        let again = sign_in(&app, &op, "taken-over").await;
        assert_eq!(error_code(&again), "ACCOUNT_EXISTS", "{again}");
    }
    assert_eq!(identities(&app, &tess.access_token).await, json!([]));
    let sessions = app.my_sessions(&tess.access_token).await;
    assert_eq!(
        sessions["data"]["mySessions"].as_array().map(Vec::len),
        Some(1),
        "{sessions}"
    );

    // The owner links and unlinks another account of the same provider: the first stays out.
    op.add_account("tess-second", "tess.second@example.com", true)
        .await;
    let (location, _) =
        through_provider_with(&app, &op, "tess-second", Some(&tess.access_token), |u| {
            u.to_owned()
        })
        .await;
    let linked = complete(
        &app,
        &param(&location, "code").unwrap(),
        Some(&tess.access_token),
    )
    .await;
    assert_no_errors(&linked);
    let tess_access = string_at(&linked, "/data/completeOidcLogin/accessToken");
    let unlinked = unlink(&app, &tess_access, PROVIDER).await;
    assert_eq!(unlinked["data"]["unlinkIdentity"], true, "{unlinked}");
    let again = sign_in(&app, &op, "taken-over").await;
    assert_eq!(error_code(&again), "ACCOUNT_EXISTS", "{again}");

    // The intruder links the identity to an account of their own, then deletes that account:
    // it still does not come back to tess.
    let intruders = verified_account(&app, "ivan@example.com", 2).await;
    let (location, _) = through_provider_with(
        &app,
        &op,
        "taken-over",
        Some(&intruders.access_token),
        |u| u.to_owned(),
    )
    .await;
    let linked = complete(
        &app,
        &param(&location, "code").unwrap(),
        Some(&intruders.access_token),
    )
    .await;
    assert_no_errors(&linked);
    let ivan_access = string_at(&linked, "/data/completeOidcLogin/accessToken");
    let deleted = app
        .graphql(
            "mutation($input: DeleteAccountInput!) { deleteAccount(input: $input) }",
            json!({ "input": { "password": PASSWORD } }),
            Some(&ivan_access),
        )
        .await;
    assert_no_errors(&deleted);
    let again = sign_in(&app, &op, "taken-over").await;
    assert_eq!(error_code(&again), "ACCOUNT_EXISTS", "{again}");

    // Nor when tess deletes her account and registers the address again.
    let deleted = app
        .graphql(
            "mutation($input: DeleteAccountInput!) { deleteAccount(input: $input) }",
            json!({ "input": { "password": PASSWORD } }),
            Some(&tess_access),
        )
        .await;
    assert_no_errors(&deleted);
    verified_account(&app, "tess@example.com", 3).await;
    let again = sign_in(&app, &op, "taken-over").await;
    assert_eq!(error_code(&again), "ACCOUNT_EXISTS", "{again}");
}

/// Sign-ins of a linked identity, each past its callback, completed while the account unlinks
/// it: none of them leaves a session that outlives the unlink.
#[tokio::test]
async fn no_sign_in_in_flight_outlives_the_unlink_of_its_identity() {
    let op = OpenIdProvider::start(0, json!([])).await;
    let app = app_with(&op, |_| {}).await;
    verified_account(&app, "uma@example.com", 1).await;
    for round in 0..3 {
        // Another address than the account's: the identity is linked on purpose, not by
        // address. One per round: a racer that lost may have given it an account of its own.
        let sub = format!("uma-elsewhere-{round}");
        let elsewhere = format!("uma{round}@elsewhere.example");
        op.add_account(&sub, &elsewhere, true).await;
        let owner = app.login("uma@example.com").await;
        let (location, _) =
            through_provider_with(&app, &op, &sub, Some(&owner.access_token), |u| u.to_owned())
                .await;
        let linked = complete(
            &app,
            &param(&location, "code").unwrap(),
            Some(&owner.access_token),
        )
        .await;
        assert_no_errors(&linked);
        let owner_access = string_at(&linked, "/data/completeOidcLogin/accessToken");
        let mut codes = Vec::new();
        for _ in 0..6 {
            let (location, _) = through_provider(&app, &op, &sub).await;
            codes.push(param(&location, "code").unwrap());
        }
        let unlink = async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            unlink(&app, &owner_access, PROVIDER).await
        };
        let (unlinked, answers) = tokio::join!(
            unlink,
            futures::future::join_all(codes.iter().map(|code| complete(&app, code, None)))
        );
        assert_eq!(unlinked["data"]["unlinkIdentity"], true, "{unlinked}");
        for answer in answers {
            if answer.get("errors").is_none() {
                let token = string_at(&answer, "/data/completeOidcLogin/accessToken");
                let me = app.me(&token).await;
                // Completed after the unlink, the identity gets an account of its own (its
                // own address is verified), never a session of uma's.
                if me.get("errors").is_none() {
                    assert_eq!(
                        me["data"]["me"]["email"],
                        elsewhere.as_str(),
                        "round {round}: a session of the unlinked identity is alive: {me}"
                    );
                } else {
                    assert_eq!(error_code(&me), "UNAUTHENTICATED", "round {round}: {me}");
                }
            }
        }
        assert_eq!(identities(&app, &owner_access).await, json!([]));
    }
}

#[tokio::test]
async fn an_account_with_a_second_factor_is_never_linked_by_its_address() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("vic-at-op", "vic@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let vic = verified_account(&app, "vic@example.com", 1).await;
    crate::second_factors::enable_totp(&app, &vic.access_token).await;
    let answer = sign_in(&app, &op, "vic-at-op").await;
    assert_eq!(error_code(&answer), "ACCOUNT_EXISTS", "{answer}");
    let fresh = app.login_raw("vic@example.com", PASSWORD).await;
    assert_eq!(error_code(&fresh), "MFA_REQUIRED");
}

#[tokio::test]
async fn a_head_request_does_not_use_the_sign_in_up() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("wes", "wes@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let begun = begin(&app, PROVIDER, APP_PAGE, None).await;
    let url = string_at(&begun, "/data/beginOidcLogin/authorizationUrl");
    let at_callback = op.sign_in(&url, "wes").await;
    let head = no_redirects().head(&at_callback).send().await.unwrap();
    assert_eq!(head.status(), 405);
    let response = callback(&app, &at_callback).await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_no_errors(&complete(&app, &param(&location, "code").unwrap(), None).await);
}

#[tokio::test]
async fn a_redirect_uri_holding_what_the_callback_adds_stops_the_start() {
    for uri in [
        "https://app.example/cb?code=fixed",
        "https://app.example/cb?state=x",
        "https://app.example/cb#fragment",
        "javascript:alert(1)",
        "/relative",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            crate::helpers::test_config(&crate::helpers::sqlite_url(&dir.path().join("a.db")));
        config.oidc_provider_settings = vec![OidcProviderSettings {
            name: "p".into(),
            display_name: "p".into(),
            issuer: "http://127.0.0.1:9".into(),
            client_id: "c".into(),
            client_secret: SecretString::from("s"),
            scopes: vec!["openid".into()],
        }];
        config.oidc_redirect_uris = vec![uri.to_owned()];
        let error = authql::app::Application::build(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{uri} was accepted"));
        assert!(
            format!("{error:#}").contains("OIDC_REDIRECT_URIS"),
            "{error:#}"
        );
    }
}

#[tokio::test]
async fn the_last_way_into_an_account_cannot_be_unlinked() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("kim", "kim@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let first = sign_in(&app, &op, "kim").await;
    let access = string_at(&first, "/data/completeOidcLogin/accessToken");
    let answer = unlink(&app, &access, PROVIDER).await;
    assert_eq!(error_code(&answer), "LAST_LOGIN_METHOD", "{answer}");
    assert_eq!(identities(&app, &access).await[0]["provider"], PROVIDER);
    // Not linked at all: `false`.
    let answer = app
        .graphql(
            "mutation { unlinkIdentity(provider: \"nosuch\") }",
            json!({}),
            Some(&access),
        )
        .await;
    assert_eq!(answer["data"]["unlinkIdentity"], false, "{answer}");
}

#[tokio::test]
async fn concurrent_first_sign_ins_of_one_identity_make_one_account() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("lu", "lu@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (location, _) = through_provider(&app, &op, "lu").await;
        codes.push(param(&location, "code").expect("a code"));
    }
    let answers =
        futures::future::join_all(codes.iter().map(|code| complete(&app, code, None))).await;
    let users: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|answer| {
            assert_no_errors(answer);
            string_at(answer, "/data/completeOidcLogin/user/id")
        })
        .collect();
    assert_eq!(users.len(), 1, "{answers:?}");
    let access = string_at(&answers[0], "/data/completeOidcLogin/accessToken");
    assert_eq!(
        identities(&app, &access).await.as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn a_disabled_account_cannot_sign_in_with_its_provider() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("mo", "mo@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    assert_no_errors(&sign_in(&app, &op, "mo").await);
    let run = crate::operators::admin(&app, &["disable-user", "mo@example.com"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let answer = sign_in(&app, &op, "mo").await;
    assert_eq!(error_code(&answer), "ACCOUNT_DISABLED");
}

/// The README's provider settings ("Sign in with OpenID Connect"), each block as authql reads
/// it: the names it sets, each provider's settings, and the checks made at start.
#[test]
fn the_readmes_provider_settings_are_what_authql_accepts() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("## Sign in with OpenID Connect")
        .expect("the section");
    let section = &readme[start..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let mut blocks = 0;
    let mut rest = section;
    while let Some(open) = rest.find("```dotenv\n") {
        rest = &rest[open + 10..];
        let close = rest.find("```").expect("a closed block");
        let block = &rest[..close];
        rest = &rest[close..];
        blocks += 1;
        let settings: HashMap<String, String> = block
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (name, value) = line.split_once('=').expect("NAME=value");
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let mut config = Config::defaults();
        config.oidc_providers = settings["OIDC_PROVIDERS"]
            .split(',')
            .map(str::to_owned)
            .collect();
        config
            .read_oidc_provider_settings(|name| settings.get(name).cloned())
            .unwrap_or_else(|why| panic!("{why}\n{block}"));
        assert_eq!(config.oidc_provider_settings.len(), 1, "{block}");
        let provider = &config.oidc_provider_settings[0];
        assert!(!provider.display_name.is_empty());
        assert!(provider.scopes.contains(&"email".to_owned()), "{block}");
        authql::oidc::OidcProviders::new(
            config.oidc_provider_settings.clone(),
            "https://auth.example.com/auth/oidc/callback",
        )
        .unwrap_or_else(|why| panic!("{why}\n{block}"));
        let redirect = reqwest::Url::parse(&settings["OIDC_REDIRECT_URIS"]).expect("a URL");
        assert_eq!(redirect.scheme(), "https");
    }
    assert_eq!(blocks, 3, "Google, Microsoft Entra, GitLab");
    // What the start refuses: a plain-http issuer off loopback, a provider without its settings.
    let mut config = Config::defaults();
    config.oidc_providers = vec!["corp".into()];
    let insecure = HashMap::from([
        (
            "OIDC_CORP_ISSUER".to_owned(),
            "http://sso.example.com".to_owned(),
        ),
        ("OIDC_CORP_CLIENT_ID".to_owned(), "x".to_owned()),
        ("OIDC_CORP_CLIENT_SECRET".to_owned(), "y".to_owned()),
    ]);
    config
        .read_oidc_provider_settings(|name| insecure.get(name).cloned())
        .unwrap();
    assert!(
        authql::oidc::OidcProviders::new(config.oidc_provider_settings.clone(), "https://a/cb")
            .is_err()
    );
    assert!(
        config
            .read_oidc_provider_settings(|name| (name != "OIDC_CORP_CLIENT_SECRET")
                .then(|| insecure.get(name).cloned())
                .flatten())
            .is_err()
    );
    config.oidc_providers = vec!["bad-name".into()];
    assert!(config.read_oidc_provider_settings(|_| None).is_err());
}

#[tokio::test]
async fn a_second_factor_is_still_asked_for_after_the_provider() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("ola", "ola@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let first = sign_in(&app, &op, "ola").await;
    let access = string_at(&first, "/data/completeOidcLogin/accessToken");
    let (_, recovery_codes) = crate::second_factors::enable_totp(&app, &access).await;

    let answer = sign_in(&app, &op, "ola").await;
    let (mfa_token, methods) = crate::second_factors::mfa_required(&answer);
    assert!(methods.contains(&"RECOVERY_CODE".to_owned()), "{methods:?}");
    let verified = crate::second_factors::verify_mfa(&app, &mfa_token, &recovery_codes[0]).await;
    assert_no_errors(&verified);
    let token = string_at(&verified, "/data/verifyMfa/accessToken");
    assert_eq!(claims_of(&token)["amr"], json!(["otp", "mfa", "fed"]));
}

/// Two identities of two providers (one provider's issuer with two clients, so that each
/// identity has a `sub` of its own): unlinking both at once leaves one.
#[tokio::test]
async fn concurrent_unlinks_cannot_leave_an_account_without_a_way_in() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("pia", "pia@example.com", true).await;
    op.add_account("pia-work", "pia@work.example", true).await;
    let second = provider_settings("second", &op, "authql-second");
    let app = app_with(&op, |config| config.oidc_provider_settings.push(second)).await;
    op.register_client("authql-second", &app).await;

    let first = sign_in(&app, &op, "pia").await;
    let access = string_at(&first, "/data/completeOidcLogin/accessToken");
    let begun = begin_as(&app, "second", &access).await;
    let at_callback = op.sign_in(&begun, "pia-work").await;
    let location = callback(&app, &at_callback).await.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let linked = complete(&app, &param(&location, "code").unwrap(), Some(&access)).await;
    assert_no_errors(&linked);
    let access = string_at(&linked, "/data/completeOidcLogin/accessToken");
    assert_eq!(
        identities(&app, &access).await.as_array().map(Vec::len),
        Some(2)
    );

    let unlink = |provider: &'static str| {
        let (app, access) = (&app, access.clone());
        async move { unlink(app, &access, provider).await }
    };
    let (a, b) = tokio::join!(unlink(PROVIDER), unlink("second"));
    let outcomes = [&a, &b].map(|answer| {
        if answer["data"]["unlinkIdentity"] == true {
            "UNLINKED".to_owned()
        } else {
            error_code(answer)
        }
    });
    let mut sorted = outcomes.clone();
    sorted.sort();
    assert_eq!(sorted, ["LAST_LOGIN_METHOD", "UNLINKED"], "{a} {b}");
    assert_eq!(
        identities(&app, &access).await.as_array().map(Vec::len),
        Some(1)
    );
}

/// `beginOidcLogin` with `link: true` at `provider`: the authorization URL.
async fn begin_as(app: &TestApp, provider: &str, token: &str) -> String {
    let begun = begin(app, provider, APP_PAGE, Some(token)).await;
    assert_no_errors(&begun);
    string_at(&begun, "/data/beginOidcLogin/authorizationUrl")
}

#[tokio::test]
async fn linking_needs_a_recent_proof_and_a_verified_address() {
    let op = OpenIdProvider::start(0, json!([])).await;
    let app = app_with(&op, |config| config.reauthentication_max_age = 1).await;
    let unverified = app.register("quinn@example.com").await;
    let answer = begin(&app, PROVIDER, APP_PAGE, Some(&unverified.access_token)).await;
    assert_eq!(error_code(&answer), "EMAIL_NOT_VERIFIED", "{answer}");
    assert_eq!(reason(&answer), "ACCOUNT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = begin(&app, PROVIDER, APP_PAGE, Some(&unverified.access_token)).await;
    assert_eq!(error_code(&answer), "REAUTHENTICATION_REQUIRED", "{answer}");
    let answer = begin(&app, PROVIDER, APP_PAGE, Some("not-a-token")).await;
    assert_eq!(error_code(&answer), "UNAUTHENTICATED", "{answer}");
}

#[tokio::test]
async fn a_callback_naming_another_issuer_is_a_mix_up_and_refused() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("rae", "rae@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let begun = begin(&app, PROVIDER, APP_PAGE, None).await;
    let url = string_at(&begun, "/data/beginOidcLogin/authorizationUrl");
    let at_callback = op.sign_in(&url, "rae").await;
    // node-oidc-provider says who it is (RFC 9207); an attacker's provider would say otherwise.
    assert_eq!(
        param(&at_callback, "iss").as_deref(),
        Some(op.issuer.as_str())
    );
    let mut mixed = reqwest::Url::parse(&at_callback).unwrap();
    let pairs: Vec<(String, String)> = mixed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "iss" {
                "https://attacker.example".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    mixed.query_pairs_mut().clear().extend_pairs(pairs);
    let response = callback(&app, mixed.as_str()).await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    refused_with(&location, "access_denied");
}

/// A provider that answers with `body` (after `delay`) to every request, whatever it asks.
async fn misbehaving_provider(body: &'static [u8], delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                tokio::time::sleep(delay).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body).await;
            });
        }
    });
    format!("http://{address}")
}

#[tokio::test]
async fn a_provider_that_answers_too_much_or_never_neither_stops_nor_holds_authql() {
    static HUGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut body = b"{\"issuer\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'a', 4 << 20));
        body.extend(b"\"}");
        body
    });
    for (name, issuer) in [
        (
            "huge",
            misbehaving_provider(HUGE.as_slice(), Duration::ZERO).await,
        ),
        (
            "silent",
            misbehaving_provider(b"", Duration::from_secs(3600)).await,
        ),
    ] {
        let settings = OidcProviderSettings {
            name: name.into(),
            display_name: name.into(),
            issuer,
            client_id: CLIENT_ID.into(),
            client_secret: SecretString::from(CLIENT_SECRET),
            scopes: vec!["openid".into()],
        };
        let started = tokio::time::Instant::now();
        let app = spawn_app_with(|config| {
            config.oidc_provider_settings = vec![settings];
            config.oidc_redirect_uris = vec![APP_PAGE.to_owned()];
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{name}: the start waited {:?}",
            started.elapsed()
        );
        let answer = begin(&app, name, APP_PAGE, None).await;
        assert_eq!(
            error_code(&answer),
            "SERVICE_UNAVAILABLE",
            "{name}: {answer}"
        );
        app.register(&format!("{name}@example.com")).await;
    }
}

/// `completeOidcLogin` dropped by its client after 0 to 60 ms, at whatever await the server
/// then is: the identity's next sign-in still works, always to one and the same account (no
/// identity left without its account, no second account).
#[tokio::test]
async fn a_first_sign_in_cut_off_at_any_point_leaves_the_identity_usable() {
    let op = OpenIdProvider::start(0, json!([])).await;
    op.add_account("sam", "sam@example.com", true).await;
    let app = app_with(&op, |_| {}).await;
    let mut users = std::collections::BTreeSet::new();
    for delay in [0u64, 1, 2, 3, 5, 8, 12, 20, 35, 60] {
        let (location, _) = through_provider(&app, &op, "sam").await;
        let code = param(&location, "code").expect("a code");
        let request = app
            .client
            .post(format!("{}/graphql", app.address))
            .json(&json!({ "query": COMPLETE, "variables": { "code": code } }))
            .send();
        let _ = tokio::time::timeout(Duration::from_millis(delay), request).await;
        let answer = sign_in(&app, &op, "sam").await;
        assert_no_errors(&answer);
        users.insert(string_at(&answer, "/data/completeOidcLogin/user/id"));
    }
    assert_eq!(users.len(), 1, "{users:?}");
}

/// Generated callback queries (the parameters authql reads, repeated, empty, huge, escaped
/// or not, with a real state among them or not) and generated `completeOidcLogin` codes and
/// `beginOidcLogin` inputs: whatever comes, an answer within a bound, never a 5xx, a redirect
/// only to the app's page, and authql still serves afterwards.
#[test]
fn generated_callbacks_codes_and_inputs_never_crash_or_redirect_elsewhere() {
    use proptest::{
        prelude::*,
        test_runner::{Config as RunnerConfig, TestCaseError, TestRunner},
    };
    let cases = std::env::var("AUTHQL_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64);
    let runner = || {
        TestRunner::new(RunnerConfig {
            cases,
            failure_persistence: None,
            ..RunnerConfig::default()
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let op = runtime.block_on(OpenIdProvider::start(0, json!([])));
    runtime.block_on(op.add_account("fuzz", "fuzz@example.com", true));
    let app = runtime.block_on(app_with(&op, |_| {}));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let value = prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9_-]{1,64}",
        "[ -~]{0,40}",
        "\\PC{0,20}",
        (1usize..6000).prop_map(|n| "z".repeat(n)),
        Just("%00%0d%0a".to_owned()),
        Just("%".to_owned()),
        Just("https://evil.example/".to_owned()),
    ];
    let pair = (
        prop_oneof![
            Just("state"),
            Just("code"),
            Just("error"),
            Just("iss"),
            Just("error_description"),
            Just("x")
        ],
        value.clone(),
    );
    let callback_url = format!("{}/auth/oidc/callback", app.address);
    runner()
        .run(
            &(proptest::collection::vec(pair, 0..6), any::<bool>()),
            |(pairs, with_real_state)| {
                runtime.block_on(async {
                    let mut query: Vec<String> = pairs
                        .iter()
                        .map(|(name, value)| format!("{name}={value}"))
                        .collect();
                    if with_real_state {
                        let begun = begin(&app, PROVIDER, APP_PAGE, None).await;
                        let state = string_at(&begun, "/data/beginOidcLogin/state");
                        query.push(format!("state={state}"));
                    }
                    let answer = client
                        .get(format!("{callback_url}?{}", query.join("&")))
                        .send()
                        .await
                        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
                    let status = answer.status();
                    prop_assert!(
                        matches!(status.as_u16(), 303 | 400 | 414 | 431),
                        "{status} for {query:?}"
                    );
                    if let Some(location) = answer.headers().get("location") {
                        let location = location.to_str().unwrap_or_default();
                        prop_assert!(location.starts_with(APP_PAGE), "{location}");
                        prop_assert!(param(location, "code").is_none(), "{location}");
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    runner()
        .run(&(value.clone(), value), |(code, provider)| {
            runtime.block_on(async {
                let completed = complete(&app, &code, None).await;
                prop_assert!(
                    matches!(
                        error_code(&completed).as_str(),
                        "INVALID_TOKEN" | "PAYLOAD_TOO_LARGE"
                    ),
                    "{completed}"
                );
                let begun = begin(&app, &provider, &code, None).await;
                prop_assert_eq!(error_code(&begun), "BAD_USER_INPUT", "{}", begun);
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(async {
        assert_eq!(app.get("/healthz").await.status(), reqwest::StatusCode::OK);
        assert_no_errors(&sign_in(&app, &op, "fuzz").await);
    });
}
