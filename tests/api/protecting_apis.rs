//! The README's "Protecting your other APIs", as written: its nginx block in front of a real
//! upstream with Debian's nginx, its Traefik and Envoy blocks against what `/auth/verify`
//! really sends, its role commands through the CLI, and its claims template in a real token.

use std::time::Duration;

use axum::{Json, Router, http::HeaderMap, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::{helpers::*, operators::admin};

const SECTION: &str = "## Protecting your other APIs";

/// The code blocks of `language` in the README's "Protecting your other APIs", in order.
fn blocks(language: &str) -> Vec<String> {
    let readme = include_str!("../../README.md");
    let start = readme.find(SECTION).expect("the section exists");
    let section = &readme[start + SECTION.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{language}\n");
    let mut found = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find(&fence) {
        rest = &rest[open + fence.len()..];
        let close = rest.find("```").expect("a closed code block");
        found.push(rest[..close].to_owned());
        rest = &rest[close + 3..];
    }
    found
}

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
}

/// An upstream that answers with the identity headers it was given.
async fn spawn_upstream() -> std::net::SocketAddr {
    async fn echo(headers: HeaderMap) -> Json<Value> {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap_or_default().to_owned())
        };
        Json(json!({
            "user": header("x-auth-user-id"),
            "session": header("x-auth-session-id"),
            "email": header("x-auth-email"),
            "roles": header("x-auth-roles"),
            "amr": header("x-auth-amr"),
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/{*path}", get(echo)))
            .await
            .unwrap();
    });
    address
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx with the README's `server` block, its addresses made this test's, in a directory of
/// its own; stopped when dropped.
async fn spawn_nginx(
    binary: &str,
    dir: &std::path::Path,
    authql: &str,
    upstream: std::net::SocketAddr,
) -> (tokio::process::Child, String) {
    let server = blocks("nginx").pop().expect("the README's nginx block");
    let port = free_port();
    let authql = authql.trim_start_matches("http://");
    for placeholder in ["listen 8000;", "127.0.0.1:8080", "127.0.0.1:4000"] {
        assert!(server.contains(placeholder), "{placeholder} in {server}");
    }
    let server = server
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:8080", &upstream.to_string())
        .replace("127.0.0.1:4000", authql);
    let dir_text = dir.display();
    let config = format!(
        "daemon off;\nmaster_process off;\npid {dir_text}/nginx.pid;\nerror_log {dir_text}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir_text}/body;\n  proxy_temp_path {dir_text}/proxy;\n\
         fastcgi_temp_path {dir_text}/fastcgi;\n  uwsgi_temp_path {dir_text}/uwsgi;\n  scgi_temp_path {dir_text}/scgi;\n\
         {server}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let child = tokio::process::Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .kill_on_drop(true)
        .spawn()
        .expect("nginx starts");
    let address = format!("127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&address).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx did not listen: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, format!("http://{address}"))
}

/// Through the README's nginx block: a live token reaches the upstream with its user's id (the
/// client's own `X-Auth-*` headers all replaced), no token and a revoked one are 401 on the very next
/// request, and a role granted shows at once.
#[tokio::test]
async fn the_readme_nginx_block_lets_live_tokens_through_and_refuses_revoked_ones_at_once() {
    let Some(binary) = nginx_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is not installed (.ci/run installs it)"
        );
        eprintln!("SKIPPED: nginx is not installed");
        return;
    };
    let app = spawn_app().await;
    let upstream = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, nginx) = spawn_nginx(binary, dir.path(), &app.address, upstream).await;
    let client = reqwest::Client::new();
    let through = |token: Option<&str>| {
        let mut request = client
            .get(format!("{nginx}/notes/1"))
            .header("x-auth-user-id", "forged-by-the-client")
            .header("x-auth-session-id", "forged-by-the-client")
            .header("x-auth-email", "boss@example.com")
            .header("x-auth-roles", "admin")
            .header("x-auth-amr", "mfa");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let account = app.register("ada@example.com").await;
    let user_id = string_at(&app.me(&account.access_token).await, "/data/me/id");
    let answer = through(Some(&account.access_token)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["user"], user_id.as_str(), "{body}");
    assert_eq!(body["session"], account.session_id.as_str(), "{body}");
    assert_eq!(body["email"], "ada@example.com", "{body}");
    assert_eq!(body["amr"], "pwd", "{body}");
    // No roles: nginx sends no header with an empty value, and the client's own is gone.
    assert_eq!(body["roles"], Value::Null, "{body}");

    let run = admin(&app, &["grant-role", "ada@example.com", "editor"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let body: Value = through(Some(&account.access_token))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["roles"], "editor");

    let refused = through(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .headers()
            .get("www-authenticate")
            .is_some_and(|value| value.to_str().unwrap().starts_with("Bearer")),
        "{:?}",
        refused.headers()
    );
    assert_eq!(through(Some("not.a.token")).await.unwrap().status(), 401);

    let revoked = app
        .revoke(
            &account.access_token,
            json!([]),
            json!([account.access_token.clone()]),
        )
        .await;
    assert_eq!(
        revoked["data"]["revokeTokens"]["revokedCount"], 1,
        "{revoked}"
    );
    assert_eq!(
        through(Some(&account.access_token)).await.unwrap().status(),
        401
    );
}

/// The Traefik and Envoy blocks cannot run here; they are held to what `/auth/verify` really
/// answers: they call it, and pass on exactly the headers it sends.
#[tokio::test]
async fn the_readme_traefik_and_envoy_blocks_name_the_endpoint_and_every_header_it_sends() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let answer = app
        .client
        .get(format!("{}/auth/verify", app.address))
        .bearer_auth(&account.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut sent: Vec<String> = answer
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("x-auth-"))
        .collect();
    sent.sort();
    assert_eq!(sent.len(), 5, "{sent:?}");
    let yaml = blocks("yaml");
    assert_eq!(yaml.len(), 2, "a Traefik and an Envoy block");
    for block in yaml {
        assert!(block.contains("/auth/verify"), "{block}");
        let mut named: Vec<String> = block
            .split(|c: char| c.is_whitespace() || c == '"')
            .filter(|word| word.to_ascii_lowercase().starts_with("x-auth-"))
            .map(str::to_ascii_lowercase)
            .collect();
        named.sort();
        named.dedup();
        assert_eq!(named, sent, "{block}");
    }
}

/// The README's role commands, run as written through the CLI (against the server holding the
/// SQLite file, as an operator would): the role is there after the first and gone after the
/// second, in `me` and in `/auth/verify`.
#[tokio::test]
async fn the_readme_role_commands_grant_and_revoke_at_once() {
    let app = spawn_app().await;
    let account = app.register("ada@example.com").await;
    let commands: Vec<Vec<String>> = blocks("bash")
        .concat()
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim().to_owned())
        .filter(|line| !line.is_empty())
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let roles_now = async || {
        let me = app
            .graphql("{ me { roles } }", json!({}), Some(&account.access_token))
            .await;
        let verified = app
            .client
            .get(format!("{}/auth/verify", app.address))
            .bearer_auth(&account.access_token)
            .send()
            .await
            .unwrap();
        let header = verified.headers()["x-auth-roles"]
            .to_str()
            .unwrap()
            .to_owned();
        (me["data"]["me"]["roles"].clone(), header)
    };
    for (command, expected) in commands.iter().zip([json!(["editor"]), json!([])]) {
        assert_eq!(&command[..2], ["authql", "admin"], "{command:?}");
        let arguments: Vec<&str> = command[2..].iter().map(String::as_str).collect();
        let run = admin(&app, &arguments).await;
        assert_eq!(run.code, 0, "{run:?}");
        let (me, header) = roles_now().await;
        assert_eq!(me, expected);
        let joined: Vec<&str> = header.split(',').filter(|role| !role.is_empty()).collect();
        assert_eq!(json!(joined), expected);
    }
}

/// The README's claims template, set as `ACCESS_TOKEN_CLAIMS_TEMPLATE`: Hasura's namespace and
/// PostGraphile's `role` in the access token, following the user's roles.
#[tokio::test]
async fn the_readme_claims_template_gives_hasura_its_namespace_and_postgraphile_its_role() {
    let template = blocks("jinja").pop().expect("the README's template");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims.json.j2");
    std::fs::write(&path, template).unwrap();
    let app = spawn_app_with(|config| config.access_token_claims_template = Some(path)).await;
    let payload = |token: &str| -> Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };

    let account = app.register("ada@example.com").await;
    let claims = payload(&account.access_token);
    let user_id = claims["sub"].as_str().unwrap().to_owned();
    let hasura = &claims["https://hasura.io/jwt/claims"];
    assert_eq!(hasura["x-hasura-user-id"], user_id.as_str(), "{claims}");
    assert_eq!(hasura["x-hasura-default-role"], "user");
    assert_eq!(hasura["x-hasura-allowed-roles"], json!(["user"]));
    assert_eq!(claims["role"], "app_user");
    assert_eq!(claims["roles"], json!([]));

    let run = admin(&app, &["grant-role", "ada@example.com", "admin"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let refreshed = app.refresh_raw(&account.refresh_token).await;
    let token = string_at(&refreshed, "/data/refresh/accessToken");
    let claims = payload(&token);
    let hasura = &claims["https://hasura.io/jwt/claims"];
    assert_eq!(hasura["x-hasura-default-role"], "admin", "{claims}");
    assert_eq!(hasura["x-hasura-allowed-roles"], json!(["admin", "user"]));
    assert_eq!(claims["role"], "app_admin");
    assert_eq!(claims["roles"], json!(["admin"]));
    // The registered claims are authql's own.
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["iss"], "authql");
}
