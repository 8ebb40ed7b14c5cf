//! The `authql` binary itself, as the README runs it.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::start_binary;

fn wait_for_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "authql did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn with_no_configuration_it_serves_on_a_new_sqlite_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut binary = start_binary(dir.path(), &[]).await;
    let port = binary.port;
    assert!(
        dir.path().join("authql.db").exists(),
        "the default database file was created"
    );

    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .json(&serde_json::json!({
            "query": "mutation { register(input: {email: \"bin@x.com\", password: \"12345678abc\"}) { accessToken } }"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        body["data"]["register"]["accessToken"].is_string(),
        "{body}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &binary.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for_exit(&mut binary.child, Duration::from_secs(10));
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn print_schema_prints_the_committed_schema() {
    let output = Command::new(env!("CARGO_BIN_EXE_authql"))
        .arg("print-schema")
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
}

#[test]
fn a_short_secret_stops_the_binary_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_authql"))
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", "0")
        .env("JWT_SECRET_KEY", "too-short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JWT_SECRET_KEY") && stderr.contains("32 bytes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("too-short"),
        "the secret itself is never printed"
    );
}

#[test]
fn a_dotenv_with_a_broken_line_stops_the_start_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "GRAPHIQL=false\nNOTE=two words\nRATE_LIMIT_IP_PER_MINUTE=1\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authql"))
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut child, Duration::from_secs(10));
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains(".env line 2"), "{stderr}");
    assert!(stderr.contains("NOTE"), "{stderr}");
    assert!(
        !stderr.contains("two words"),
        "the value is not echoed: {stderr}"
    );
    assert!(
        !dir.path().join("authql.db").exists(),
        "the server never started"
    );
}

#[tokio::test]
async fn a_valid_dotenv_is_applied_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# settings\nGRAPHIQL=false\nNOTE=\"two words\"\nPERSISTED_QUERIES_CACHE_SIZE=0\n",
    )
    .unwrap();
    let binary = crate::helpers::start_binary(dir.path(), &[]).await;
    let page = reqwest::get(binary.url("/")).await.unwrap();
    assert_eq!(
        page.status(),
        reqwest::StatusCode::NOT_FOUND,
        "GRAPHIQL=false applied"
    );
    let body: serde_json::Value = reqwest::Client::new()
        .post(binary.url("/graphql"))
        .json(&serde_json::json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "0".repeat(64) } } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_SUPPORTED",
        "the last line applied too: {body}"
    );
}
