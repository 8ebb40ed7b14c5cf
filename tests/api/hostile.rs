//! The hostile-client suite (issue 17): every request that once stopped, stalled or pinned
//! authql, and its neighbours — other nesting shapes, other transports (POST, GET, persisted
//! queries, WebSocket), other timings. Each test attacks a running server as a client would and
//! then checks that the server still serves.

use std::{
    io::{Read, Write},
    net::TcpStream as StdTcpStream,
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    helpers::*,
    session_events::{Ended, SESSION_EVENTS, WsClient},
};

const SECOND: Duration = Duration::from_secs(1);

/// The server still answers, and still writes: `/healthz` and a registration.
async fn still_serves(app: &TestApp) {
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    app.register(&format!("alive-{}@x.com", uuid::Uuid::new_v4().simple()))
        .await;
}

async fn post_json(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}/graphql", app.address))
        .json(&body)
        .timeout(5 * SECOND)
        .send()
        .await
        .expect("an answer")
}

async fn get_query(app: &TestApp, query: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", query)])
        .timeout(5 * SECOND)
        .send()
        .await
        .expect("an answer")
}

/// The code of a refused document: from the JSON body whatever the status.
async fn code_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON body");
    error_code(&body)
}

/// The first answer to a `subscribe` on a signed-in WebSocket: its type and code.
async fn subscribe_answer(client: &mut WsClient, id: &str, query: &str) -> (String, String) {
    client.subscribe(id, query).await;
    let answer = client.next_json(5 * SECOND).await.expect("an answer");
    (
        answer["type"].as_str().unwrap_or_default().to_owned(),
        answer
            .pointer("/payload/0/extensions/code")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The 640-byte query of the report (10 spreads a level, 8 levels) and its 725-byte sibling.
fn fan_out(levels: usize, spreads: usize) -> String {
    let mut query = String::from("{ ...F0 }");
    for level in 0..levels - 1 {
        let next = format!("...F{} ", level + 1).repeat(spreads);
        query.push_str(&format!(" fragment F{level} on Query {{ {next}}}"));
    }
    query.push_str(&format!(
        " fragment F{} on Query {{ __typename }}",
        levels - 1
    ));
    query
}

// 1 and its neighbours: nesting, on every transport, before and after connection_init.
#[tokio::test]
async fn deep_nesting_of_every_shape_is_refused_on_every_transport_and_the_server_lives() {
    let app = spawn_app().await;
    let account = app.register("deep@x.com").await;
    let depth = 2000;
    let shapes = [
        format!(
            "subscription {{ sessionEvents(x: {}1{}) {{ type }} }}",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        format!(
            "{{ me(x: {}1{}) {{ id }} }}",
            "{a:".repeat(depth),
            "}".repeat(depth)
        ),
        format!("{{ me {} }}", "{ id ".repeat(depth) + &"}".repeat(depth)),
        format!(
            "query($v: {}Int{}) {{ __typename }}",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    ];
    for query in &shapes {
        assert!(query.len() < 16 * 1024);
        // POST, GET, and the persisted-query registration.
        let post = post_json(&app, json!({ "query": query })).await;
        assert_eq!(post.status(), StatusCode::BAD_REQUEST);
        assert_eq!(code_of(post).await, "QUERY_TOO_DEEP");
        assert_eq!(
            code_of(get_query(&app, query).await).await,
            "QUERY_TOO_DEEP"
        );
        let hash = format!("{:x}", sha2::Sha256::digest(query.as_bytes()));
        let persisted = post_json(
            &app,
            json!({ "query": query, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } }),
        )
        .await;
        assert_eq!(code_of(persisted).await, "QUERY_TOO_DEEP");
        // A WebSocket subscribe before connection_init: closed unread (4401).
        let mut early = WsClient::connect_to(&app.address, None).await.unwrap();
        early.subscribe("1", query).await;
        assert_eq!(early.ended(2 * SECOND).await, Ended::Closed(4401));
        // After it: the protocol's error message, the connection still open.
        let mut signed_in = WsClient::signed_in(&app.address, &account.access_token).await;
        assert_eq!(
            subscribe_answer(&mut signed_in, "1", query).await,
            ("error".into(), "QUERY_TOO_DEEP".into())
        );
        assert_eq!(
            subscribe_answer(
                &mut signed_in,
                "2",
                "subscription { sessionEvents { nope } }"
            )
            .await
            .1,
            "GRAPHQL_VALIDATION_FAILED",
            "the connection still serves"
        );
    }
    // JSON nesting in a WebSocket frame or a body is refused by the JSON reader.
    let mut signed_in = WsClient::signed_in(&app.address, &account.access_token).await;
    let deep_json = format!(
        r#"{{"id":"1","type":"subscribe","payload":{{"query":"{SESSION_EVENTS}","variables":{{"x":{}1{}}}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    signed_in
        .socket
        .send(Message::Text(deep_json.into()))
        .await
        .unwrap();
    assert_eq!(signed_in.ended(2 * SECOND).await, Ended::Closed(4400));
    still_serves(&app).await;
}

// 2: fragment fan-out, on every transport, never reaches the walks that multiply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_fan_out_is_refused_at_once_on_every_transport_and_health_stays_prompt() {
    let app = spawn_app().await;
    let account = app.register("fan@x.com").await;
    let reported = fan_out(8, 10);
    let aborting = fan_out(9, 10);
    assert!(reported.len() <= 640 + 20, "{}", reported.len());
    for query in [&reported, &aborting, &fan_out(30, 2)] {
        let answer = post_json(&app, json!({ "query": query })).await;
        assert_eq!(code_of(answer).await, "GRAPHQL_VALIDATION_FAILED");
        assert_eq!(
            code_of(get_query(&app, query).await).await,
            "GRAPHQL_VALIDATION_FAILED"
        );
        let mut client = WsClient::signed_in(&app.address, &account.access_token).await;
        let subscription = query.replacen("{ ...F0 }", "subscription { ...F0 }", 1);
        assert_eq!(
            subscribe_answer(&mut client, "1", &subscription).await,
            ("error".into(), "GRAPHQL_VALIDATION_FAILED".into())
        );
    }
    // Many at once: the process stays responsive meanwhile (the bound is liveness, not speed).
    let attackers: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, query) = (
                app.client.clone(),
                format!("{}/graphql", app.address),
                aborting.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..20 {
                    let _ = client
                        .post(&url)
                        .json(&json!({ "query": query }))
                        .send()
                        .await;
                }
            })
        })
        .collect();
    for _ in 0..10 {
        let asked = Instant::now();
        assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
        assert!(
            asked.elapsed() < 2 * SECOND,
            "/healthz took {:?}",
            asked.elapsed()
        );
    }
    for attacker in attackers {
        attacker.await.unwrap();
    }
    // A cycle through fragments is refused too.
    let cycle = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }";
    assert_eq!(
        code_of(post_json(&app, json!({ "query": cycle })).await).await,
        "GRAPHQL_VALIDATION_FAILED"
    );
    still_serves(&app).await;
}

// 3: directives outside fields are limited like directives on fields, with one error.
#[tokio::test]
async fn directives_in_every_place_are_limited_and_answered_with_one_short_error() {
    let app = spawn_app().await;
    let many = "@aa ".repeat(3900);
    let reported = format!("query {many}{{ __typename }}");
    assert!(reported.len() < 16 * 1024);
    let answer = post_json(&app, json!({ "query": reported })).await;
    let body: Value = answer.json().await.unwrap();
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "one error");
    assert!(body.to_string().len() < 1024, "a short answer");
    let six = "@include(if: true) ".repeat(6);
    for query in [
        format!("query($v: Int {six}) {{ __typename }}"),
        format!("{{ ...F {six} }} fragment F on Query {{ __typename }}"),
        format!("{{ ... {six} {{ __typename }} }}"),
        format!("{{ ...F }} fragment F on Query {six} {{ __typename }}"),
    ] {
        assert_eq!(
            code_of(post_json(&app, json!({ "query": query })).await).await,
            "GRAPHQL_VALIDATION_FAILED",
            "{query}"
        );
    }
    still_serves(&app).await;
}

/// Opens `count` connections that send half a request head and then nothing.
async fn half_heads(address: &str, count: usize) -> Vec<tokio::net::TcpStream> {
    let address = address.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(stream);
    }
    held
}

/// Whether the server closed `stream` (EOF, or a reset) within `wait`.
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or 400 the server wrote before closing.
            Ok(Ok(_)) => continue,
        }
    }
}

// 4: slowloris: half-sent heads and silent kept-alive connections are closed, real clients
// are served meanwhile, within the connection cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_that_never_finish_are_closed_and_real_clients_are_served() {
    let app = spawn_app_with(|config| {
        config.header_read_timeout_seconds = 1;
        config.max_connections = Some(20);
    })
    .await;
    // Twice the cap of slow connections: the first 20 take every slot.
    let mut slow = half_heads(&app.address, 40).await;
    let asked = Instant::now();
    let answer = app
        .client
        .get(format!("{}/healthz", app.address))
        .timeout(10 * SECOND)
        .send()
        .await
        .expect("a real client is served once the slow heads time out");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(asked.elapsed() < 6 * SECOND, "{:?}", asked.elapsed());
    for stream in slow.iter_mut().take(20) {
        assert!(
            closed_within(stream, 5 * SECOND).await,
            "a slow head is closed"
        );
    }
    // A connection that never sends a byte, and a kept-alive one that goes silent after its
    // answer, are closed too.
    let address = app.address.trim_start_matches("http://");
    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    assert!(closed_within(&mut silent, 3 * SECOND).await);
    let mut kept = tokio::net::TcpStream::connect(address).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut kept, 3 * SECOND).await);
    still_serves(&app).await;
}

// 4 as reported: 300 slow connections against a process allowed 256 open files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_256_open_files_300_slow_connections_do_not_starve_real_clients() {
    if shared_database_url().is_some() {
        return; // the binary runs on SQLite
    }
    let dir = tempfile::tempdir().unwrap();
    let binary =
        start_binary_with_open_files(dir.path(), 256, &[("HEADER_READ_TIMEOUT_SECONDS", "2")])
            .await;
    let address = format!("http://127.0.0.1:{}", binary.port);
    let slow = half_heads(&address, 300).await;
    let client = reqwest::Client::new();
    let asked = Instant::now();
    let answer = client
        .get(binary.url("/healthz"))
        .timeout(15 * SECOND)
        .send()
        .await
        .expect("a real client is served");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(asked.elapsed() < 10 * SECOND, "{:?}", asked.elapsed());
    drop(slow);
    let register = client
        .post(binary.url("/graphql"))
        .json(&json!({ "query": format!("mutation {{ register(input: {{email: \"fd@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}") }))
        .send()
        .await
        .unwrap();
    let body: Value = register.json().await.unwrap();
    assert_no_errors(&body);
}

/// `start_binary`, with the process's open-file limit set to `open_files`.
async fn start_binary_with_open_files(
    dir: &std::path::Path,
    open_files: u64,
    env: &[(&str, &str)],
) -> RunningBinary {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let log_path = dir.join("authql.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_authql"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PORT", port.to_string())
        .env("BCRYPT_COST", "4")
        .envs(env.iter().copied())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: setrlimit is async-signal-safe and touches only the struct it is given.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: open_files,
                rlim_max: open_files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let binary = RunningBinary {
        child: command.spawn().unwrap(),
        port,
        log_path,
    };
    for _ in 0..400 {
        if let Ok(answer) = reqwest::get(binary.url("/healthz")).await
            && answer.status().is_success()
        {
            return binary;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("authql did not start: {}", binary.log());
}

// 5: SIGTERM while a client holds a half-sent head, with a WebSocket open: it ends at once,
// the WebSocket gets a close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_promptly_despite_a_half_sent_head_and_closes_websockets_with_1001() {
    if shared_database_url().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut binary = start_binary(
        dir.path(),
        &[
            ("BCRYPT_COST", "4"),
            (
                "JWT_SECRET_KEY",
                "a test secret that is long enough to sign",
            ),
        ],
    )
    .await;
    let address = format!("http://127.0.0.1:{}", binary.port);
    let register = reqwest::Client::new()
        .post(binary.url("/graphql"))
        .json(&json!({ "query": format!("mutation {{ register(input: {{email: \"term@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}") }))
        .send()
        .await
        .unwrap();
    let body: Value = register.json().await.unwrap();
    let token = string_at(&body, "/data/register/accessToken");
    let mut subscriber = WsClient::signed_in(&address, &token).await;
    subscriber.subscribe("1", SESSION_EVENTS).await;
    let _half = half_heads(&address, 1).await;
    // An idle kept-alive connection too.
    let mut idle = StdTcpStream::connect(("127.0.0.1", binary.port)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 256];
    let _ = idle.read(&mut answer).unwrap();

    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &binary.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(subscriber.ended(5 * SECOND).await, Ended::Closed(1001));
    let status = loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < 5 * SECOND,
            "still running 5 s after SIGTERM (SHUTDOWN_TIMEOUT_SECONDS is 10): {}",
            binary.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}

// 6: 300 pipelined pings get 300 pongs, the init timeout still fires, and a client that left
// gives its slot back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_pings_are_all_answered_and_the_connection_keeps_its_timers() {
    let app = spawn_app_with(|config| {
        config.websocket_init_timeout_seconds = 2;
        config.max_connections = Some(4);
    })
    .await;
    let mut client = WsClient::connect_to(&app.address, None).await.unwrap();
    for _ in 0..300 {
        client
            .socket
            .feed(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
    }
    client.socket.flush().await.unwrap();
    let mut pongs = 0;
    let closed = loop {
        match tokio::time::timeout(5 * SECOND, client.socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "pong");
                pongs += 1;
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|frame| u16::from(frame.code)),
            other => panic!("expected pongs then a close, got {other:?}"),
        }
    };
    assert_eq!(pongs, 300);
    assert_eq!(
        closed,
        Some(4408),
        "no connection_init: the init timeout fired"
    );

    // Clients that pipeline pings and leave without reading free their slots: with four slots,
    // eight such clients one after another, then a real request.
    for _ in 0..8 {
        let mut gone = WsClient::connect_to(&app.address, None).await.unwrap();
        for _ in 0..300 {
            gone.socket
                .feed(Message::Text(r#"{"type":"ping"}"#.into()))
                .await
                .unwrap();
        }
        gone.socket.flush().await.unwrap();
        drop(gone);
    }
    let asked = Instant::now();
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert!(asked.elapsed() < 3 * SECOND, "{:?}", asked.elapsed());
}

// 7: a flood of logins is refused early (SERVICE_UNAVAILABLE, Retry-After) and leaves no
// backlog of hashes behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_refused_early_and_leaves_no_backlog() {
    let app = spawn_app_with(|config| {
        config.bcrypt_cost = 10;
        config.bcrypt_max_concurrency = Some(1);
        config.bcrypt_max_queue = Some(2);
        config.request_timeout_seconds = 2;
    })
    .await;
    app.register("flood@x.com").await;
    let login = json!({ "query": format!("mutation {{ login(input: {{emailOrUsername: \"flood@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}") });
    let flood: Vec<_> = (0..60)
        .map(|_| {
            let (client, url, login) = (
                reqwest::Client::new(),
                format!("{}/graphql", app.address),
                login.clone(),
            );
            tokio::spawn(async move {
                let answer = client.post(&url).json(&login).send().await.unwrap();
                let retry_after = answer.headers().get("retry-after").cloned();
                let body: Value = answer.json().await.unwrap();
                (body, retry_after)
            })
        })
        .collect();
    let mut refused = 0;
    for attempt in flood {
        let (body, retry_after) = attempt.await.unwrap();
        match body
            .pointer("/errors/0/extensions/code")
            .and_then(Value::as_str)
        {
            None => {}
            Some("SERVICE_UNAVAILABLE") => {
                refused += 1;
                assert!(retry_after.is_some(), "Retry-After with {body}");
                assert!(body["errors"][0]["extensions"]["retryAfterSeconds"].is_u64());
            }
            Some("REQUEST_TIMEOUT") => {}
            Some(other) => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "the queue refused some at once");
    // No backlog: the next login is hashed at once, well within the request timeout.
    let body = app.login_raw("flood@x.com", PASSWORD).await;
    assert_no_errors(&body);
}

// 8: readiness probes share one probe a second, on a connection kept for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_readiness_probes_at_once_cost_one_probe_and_no_threads() {
    if shared_database_url().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = start_binary(dir.path(), &[("BCRYPT_COST", "4")]).await;
    let threads = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", binary.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(binary.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let before = threads();
    // The threads are counted while the probes run: a connection opened per probe is a
    // thread (SQLite's worker) for as long as it is open.
    let url = binary.url("/readyz");
    let probing = tokio::spawn(async move {
        for _ in 0..5 {
            let probes: Vec<_> = (0..100).map(|_| client.get(&url).send()).collect();
            for probe in futures::future::join_all(probes).await {
                assert_eq!(probe.unwrap().status(), StatusCode::OK);
            }
        }
    });
    let mut most = before;
    while !probing.is_finished() {
        most = most.max(threads());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    probing.await.unwrap();
    assert!(
        most <= before + 2,
        "threads grew from {before} to {most} under readiness probes"
    );
}

// 17: answers that carry tokens (and every other answer of /graphql) are never cached.
#[tokio::test]
async fn graphql_answers_are_never_stored_by_caches() {
    let app = spawn_app().await;
    let register = post_json(
        &app,
        json!({ "query": format!("mutation {{ register(input: {{email: \"cache@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken refreshToken }} }}") }),
    )
    .await;
    let refused = get_query(&app, "{ me { id } }").await;
    let malformed = post_json(&app, json!({ "query": "{" })).await;
    for answer in [register, refused, malformed] {
        assert_eq!(answer.headers()["cache-control"], "no-store");
        assert_eq!(answer.headers()["pragma"], "no-cache");
    }
}

// A login name longer than any address is refused before it is normalised or rate-limited.
#[tokio::test]
async fn an_overlong_login_name_is_bad_user_input_before_anything_else() {
    let app = spawn_app().await;
    let body = app.login_raw(&"a".repeat(10_000), PASSWORD).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "emailOrUsername");
}

// 10 as reported: a logout whose request times out while another process holds SQLite's write
// lock. The write still lands when the lock is released, and the session cache follows it: the
// token is refused, as its row is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_that_times_out_behind_a_lock_still_ends_the_session_everywhere() {
    use sea_orm::sqlx::{self, Connection, SqliteConnection};
    if shared_database_url().is_some() {
        return; // SQLite's file lock and session cache
    }
    let app = spawn_app_with(|config| config.request_timeout_seconds = 1).await;
    let account = app.register("timeout@x.com").await;
    // Looked up once, so that the session cache holds it.
    assert_no_errors(&app.me(&account.access_token).await);
    let mut other = SqliteConnection::connect(&app.database_url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let logout = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&account.access_token)
        .json(&json!({ "query": "mutation { logout }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code_of(logout).await, "REQUEST_TIMEOUT");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    // The cancelled request's write lands once the lock is free; from then on cache and
    // database agree that the session is gone.
    let mut refused = false;
    for _ in 0..50 {
        if app.session_rows().await.is_empty() {
            refused = error_code(&app.me(&account.access_token).await) == "UNAUTHENTICATED";
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the row is gone and the token refused");
}

// A client that sends requests and never reads the answers: each write must make progress
// within HEADER_READ_TIMEOUT_SECONDS, so the connection (here the only slot) is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_cannot_hold_its_connection() {
    let app = spawn_app_with(|config| {
        config.header_read_timeout_seconds = 1;
        config.max_connections = Some(1);
    })
    .await;
    let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    // An introspection answer of 20 KB each: 600 of them fill every buffer on the way.
    let query = "{__schema{types{name kind description fields{name description args{name \
        description type{name kind ofType{name kind}}} type{name kind ofType{name kind \
        ofType{name}}}}}}}";
    let request = format!(
        "GET /graphql?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        serde_urlencoded::to_string([("query", query)]).unwrap()
    );
    for _ in 0..600 {
        if stalled.write_all(request.as_bytes()).await.is_err() {
            break; // the server already gave up on it
        }
    }
    // The only slot is taken by the reader that never reads; a real client is served once the
    // stalled write has timed out.
    let asked = Instant::now();
    let answer = app
        .client
        .get(format!("{}/healthz", app.address))
        .timeout(15 * SECOND)
        .send()
        .await
        .expect("served once the stalled connection is closed");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(asked.elapsed() < 10 * SECOND, "{:?}", asked.elapsed());
    drop(stalled);
}

// The edges of the HTTP edge: every refusal in the JSON shape with a code, and with no-store
// on /graphql; no answer bigger than its question by much.
#[tokio::test]
async fn refusals_at_the_edge_are_coded_json_and_never_cached() {
    let app = spawn_app_with(|config| {
        config.request_timeout_seconds = 1;
        config.bcrypt_cost = 16;
    })
    .await;
    let put = app
        .client
        .put(format!("{}/graphql", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(put.headers()["cache-control"], "no-store");
    assert_eq!(code_of(put).await, "METHOD_NOT_ALLOWED");
    let timed_out = post_json(
        &app,
        json!({ "query": format!("mutation {{ register(input: {{email: \"slow@x.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}") }),
    )
    .await;
    assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(timed_out.headers()["cache-control"], "no-store");
    assert_eq!(code_of(timed_out).await, "REQUEST_TIMEOUT");
    // An upgrade without its key.
    let upgrade = app
        .client
        .get(format!("{}/graphql", app.address))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code_of(upgrade).await, "BAD_REQUEST");
    // A chunked body that is not chunked: a bad request, not a large one.
    let address = app.address.trim_start_matches("http://");
    let mut raw = tokio::net::TcpStream::connect(address).await.unwrap();
    raw.write_all(
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(2 * SECOND, raw.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"BAD_REQUEST\""), "{answer}");
    // Two thousand repetitions of one argument: one short answer of at most twenty errors.
    let repeated = format!("{{ mySessions({}) {{ id }} }}", "first: 1, ".repeat(1500));
    let body: Value = post_json(&app, json!({ "query": repeated }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED");
    assert!(body["errors"].as_array().unwrap().len() <= 20, "{body}");
    assert!(body.to_string().len() < 8 * 1024);
}

// A DATABASE_URL authql does not speak stops the start naming the scheme, never the password.
#[tokio::test]
async fn an_unsupported_database_url_is_refused_without_repeating_it() {
    let mut config = test_config("mysql://admin:Sup3rS3cret@db.internal/authql");
    config.port = 0;
    let error = authql::app::Application::build(config)
        .await
        .err()
        .expect("the start is refused");
    let message = format!("{error:#}");
    assert!(message.contains("DATABASE_URL"), "{message}");
    assert!(message.contains("mysql"), "{message}");
    assert!(!message.contains("Sup3rS3cret"), "{message}");
}

// The SQLite file holds the signing secret and the sessions: owner only.
#[tokio::test]
async fn a_new_sqlite_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    if shared_database_url().is_some() {
        return;
    }
    let app = spawn_app().await;
    app.register("mode@x.com").await;
    let path = app.database_url.trim_start_matches("sqlite://").to_owned();
    for file in [path.clone(), format!("{path}-wal")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}: {mode:o}");
    }
}
