//! The `authql` binary itself, as the README runs it.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The running binary; killed when dropped, so that a failing test leaves no process behind.
struct RunningBinary(Child);

impl Drop for RunningBinary {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the binary in `dir` with no configuration but the port, and waits until it serves.
async fn start_binary(dir: &std::path::Path, port: u16) -> RunningBinary {
    let child = Command::new(env!("CARGO_BIN_EXE_authql"))
        .current_dir(dir)
        .env_clear()
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let child = RunningBinary(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{port}/healthz");
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(&url).await
            && response.status().is_success()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("authql did not serve /healthz within 20 s");
}

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
    let port = free_port();
    let mut binary = start_binary(dir.path(), port).await;
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
        .args(["-TERM", &binary.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for_exit(&mut binary.0, Duration::from_secs(10));
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
