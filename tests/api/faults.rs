//! The fault scenarios of issue 4: the database going away and coming back, `kill -9` in the
//! middle of writes, SIGTERM with requests in flight, and the background pruning of ended
//! sessions (on several instances at once).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::*;

/// What one client saw of one request.
#[derive(Debug, Clone)]
struct Answer {
    operation: &'static str,
    started: Instant,
    took: Duration,
    /// `None` for success, else the error code.
    code: Option<String>,
}

fn outcome(body: &Value) -> Option<String> {
    body.get("errors").map(|_| {
        body.pointer("/errors/0/extensions/code")
            .and_then(Value::as_str)
            .unwrap_or("(no code)")
            .to_owned()
    })
}

async fn status_of(client: &reqwest::Client, url: String) -> u16 {
    client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

// ---------------------------------------------------------------------------------------------
// 1. The database goes away mid-traffic, and comes back.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL"]
async fn when_the_database_goes_away_requests_get_service_unavailable_quickly_and_recover() {
    let server_url = shared_database_url().expect("TEST_DATABASE_URL names a server");
    let proxy = Arc::new(SwitchableProxy::start(host_and_port(&server_url)).await);
    const ACQUIRE_TIMEOUT: u64 = 1;
    // The longest answer accepted while the database is away: a request may wait for a
    // connection (ACQUIRE_TIMEOUT) at most once per statement; login runs two.
    let answer_within = Duration::from_secs(2 * ACQUIRE_TIMEOUT + 2);
    let proxy_for_config = proxy.clone();
    let app = Arc::new(
        spawn_app_with(move |config| {
            config.database_url = proxy_for_config.url_for(&config.database_url);
            config.database_acquire_timeout_seconds = ACQUIRE_TIMEOUT;
            config.database_connect_timeout_seconds = 1;
            config.rate_limit_ip_per_minute = 0;
            config.rate_limit_account_per_minute = 0;
            config.prune_interval_seconds = 0;
        })
        .await,
    );

    const CLIENTS: usize = 4;
    let mut accounts = Vec::new();
    for client in 0..CLIENTS {
        let email = format!("traffic{client}@x.com");
        accounts.push((email.clone(), app.register(&email).await));
    }

    // Traffic: each client calls `me` and logs in, over and over, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (email, account) in accounts {
        let (app, stop) = (app.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut access_token = account.access_token;
            let test_deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < test_deadline {
                let started = Instant::now();
                let body = app.me(&access_token).await;
                answers.push(Answer {
                    operation: "me",
                    started,
                    took: started.elapsed(),
                    code: outcome(&body),
                });
                let started = Instant::now();
                let body = app.login_raw(&email, PASSWORD).await;
                let code = outcome(&body);
                if code.is_none() {
                    access_token = string_at(&body, "/data/login/accessToken");
                }
                answers.push(Answer {
                    operation: "login",
                    started,
                    took: started.elapsed(),
                    code,
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        }));
    }
    let http = reqwest::Client::new();
    let readyz = format!("{}/readyz", app.address);
    let healthz = format!("{}/healthz", app.address);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(status_of(&http, readyz.clone()).await, 200);

    let went_away = Instant::now();
    proxy.switch_off();
    // The database stays away for a while; the server must stay up and say it is not ready.
    let mut saw_not_ready = false;
    while went_away.elapsed() < Duration::from_secs(4) {
        let asked = Instant::now();
        let ready = status_of(&http, readyz.clone()).await;
        assert!(
            asked.elapsed() < answer_within,
            "/readyz took {:?}",
            asked.elapsed()
        );
        // A readiness answer is reused for up to a second (one probe a second, whatever the
        // number of callers), and a probe that started before the cut may still report ready.
        if asked > went_away + Duration::from_millis(1100) {
            assert_eq!(ready, 503, "/readyz while the database is away");
            saw_not_ready = true;
        }
        assert_eq!(status_of(&http, healthz.clone()).await, 200, "/healthz");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_not_ready);

    let came_back = Instant::now();
    proxy.switch_on();
    let recovery_deadline = came_back + Duration::from_secs(10);
    loop {
        if status_of(&http, readyz.clone()).await == 200 {
            break;
        }
        assert!(
            Instant::now() < recovery_deadline,
            "/readyz did not recover within 10 s of the database coming back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = Instant::now();
    // Let every client get a few rounds in after the recovery, then stop them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all_answers = Vec::new();
    for client in clients {
        all_answers.push(client.await.expect("a client finished"));
    }

    for answers in &all_answers {
        for answer in answers {
            assert!(
                matches!(answer.code.as_deref(), None | Some("SERVICE_UNAVAILABLE")),
                "only success or SERVICE_UNAVAILABLE, never anything else: {answer:?}"
            );
            assert!(
                answer.took < answer_within,
                "every answer comes quickly, database or not: {answer:?}"
            );
            let started_while_away = answer.started > went_away + Duration::from_millis(100)
                && answer.started + answer.took < came_back;
            if started_while_away {
                assert!(
                    answer.code.is_some(),
                    "no success without the database: {answer:?}"
                );
            }
        }
        assert!(
            answers
                .iter()
                .any(|answer| answer.code.as_deref() == Some("SERVICE_UNAVAILABLE")),
            "each client noticed the database was away"
        );
        // Back to normal without a restart: once ready again, every request succeeds.
        let after_recovery: Vec<_> = answers
            .iter()
            .filter(|answer| answer.started > recovered)
            .collect();
        assert!(!after_recovery.is_empty());
        assert!(
            after_recovery.iter().all(|answer| answer.code.is_none()),
            "requests succeed again after the database came back: {after_recovery:?}"
        );
        assert!(
            after_recovery.iter().any(|answer| answer.operation == "me")
                && after_recovery
                    .iter()
                    .any(|answer| answer.operation == "login")
        );
    }
    assert_eq!(status_of(&http, healthz).await, 200);
}

// SQLite has no twin of this test. Tests run as root, which ignores file permissions, and the
// alternatives are not sound faults: with `chattr +i` on the database and its WAL, writes
// through connections already open still succeed (a login did, when tried) while connections
// opened later fail as read-only, and on the memory-mapped `-shm` file it kills the process
// with SIGBUS; replacing the folder leaves the open files (now unlinked)
// in use. None gives "the database went away" for every connection at once.

// ---------------------------------------------------------------------------------------------
// 2. `kill -9` during a write-heavy load, then a restart on the same SQLite file.
// ---------------------------------------------------------------------------------------------

/// A token pair authql issued together, as the client read it.
#[derive(Debug, Clone)]
struct Pair {
    access_token: String,
    refresh_token: String,
    access_jti: String,
    refresh_jti: String,
}

impl Pair {
    fn from_payload(payload: &Value) -> Self {
        let access_token = string_at(payload, "/accessToken");
        let refresh_token = string_at(payload, "/refreshToken");
        Self {
            access_jti: jti_of(&access_token),
            refresh_jti: jti_of(&refresh_token),
            access_token,
            refresh_token,
        }
    }
}

/// Everything one client was told (acknowledged) before the process died.
#[derive(Debug, Default)]
struct Acknowledged {
    /// Session id -> the last pair acknowledged for it (from its login or latest refresh).
    last_pair: HashMap<String, Pair>,
    /// Every pair ever acknowledged, by refresh jti -> access jti.
    issued: HashMap<String, String>,
    revoked: HashSet<String>,
    /// The sessions with a refresh sent whose answer never came.
    refresh_in_flight: Option<String>,
    /// Whether a login was sent whose answer never came (its session may exist).
    login_in_flight: bool,
    /// A session whose revoke was sent but never answered: it may or may not exist.
    revoke_in_flight: Option<String>,
    /// Whether the client stopped because an answer was lost (rather than at its deadline).
    cut_off: bool,
    /// Any error answer at all: none is expected.
    errors: Vec<Value>,
    operations: usize,
}

/// POSTs a GraphQL request to the binary; `None` when the answer is lost (the process died).
async fn post(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    variables: Value,
    token: Option<&str>,
) -> Option<Value> {
    let mut request = client
        .post(url)
        .timeout(Duration::from_secs(10))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.ok()?;
    response.json().await.ok()
}

const LOGIN: &str = "mutation($input: LoginInput!) { login(input: $input) { accessToken refreshToken session { id } } }";
const REFRESH: &str = "mutation($token: String!) { refresh(refreshToken: $token) { accessToken refreshToken session { id } } }";
const REVOKE: &str = "mutation($ids: [String!]!) { revokeTokens(input: { sessionIds: $ids }) { revokedSessionIds } }";

/// One client's write-heavy loop: log in, refresh one of its sessions, revoke its oldest; until
/// the server stops answering or `deadline`.
async fn write_heavy_client(url: String, email: String, deadline: Instant) -> Acknowledged {
    let client = reqwest::Client::new();
    let mut seen = Acknowledged::default();
    // Live sessions, oldest first.
    let mut live: Vec<String> = Vec::new();
    let mut round = 0usize;
    // Set back to false when the loop ends at its deadline.
    seen.cut_off = true;
    while Instant::now() < deadline {
        round += 1;
        let variables = json!({ "input": { "emailOrUsername": email, "password": PASSWORD } });
        let Some(body) = post(&client, &url, LOGIN, variables, None).await else {
            seen.login_in_flight = true;
            return seen;
        };
        if body.get("errors").is_some() {
            seen.errors.push(body);
            return seen;
        }
        let payload = &body["data"]["login"];
        let session_id = string_at(payload, "/session/id");
        let pair = Pair::from_payload(payload);
        seen.issued
            .insert(pair.refresh_jti.clone(), pair.access_jti.clone());
        seen.last_pair.insert(session_id.clone(), pair);
        live.push(session_id);
        seen.operations += 1;

        // Refresh one of the live sessions with its current refresh token.
        let session_id = live[round % live.len()].clone();
        let refresh_token = seen.last_pair[&session_id].refresh_token.clone();
        let Some(body) = post(
            &client,
            &url,
            REFRESH,
            json!({ "token": refresh_token }),
            None,
        )
        .await
        else {
            seen.refresh_in_flight = Some(session_id);
            return seen;
        };
        if body.get("errors").is_some() {
            seen.errors.push(body);
            return seen;
        }
        let pair = Pair::from_payload(&body["data"]["refresh"]);
        seen.issued
            .insert(pair.refresh_jti.clone(), pair.access_jti.clone());
        seen.last_pair.insert(session_id, pair);
        seen.operations += 1;

        // Keep three sessions: revoke the oldest by its id, signed in with the newest.
        if live.len() > 3 {
            let oldest = live.remove(0);
            let newest = live.last().unwrap();
            let token = seen.last_pair[newest].access_token.clone();
            let Some(body) = post(
                &client,
                &url,
                REVOKE,
                json!({ "ids": [oldest] }),
                Some(&token),
            )
            .await
            else {
                // Whether it happened is unknown; nothing is asserted about this session.
                seen.last_pair.remove(&oldest);
                seen.revoke_in_flight = Some(oldest);
                return seen;
            };
            if body.get("errors").is_some() {
                seen.errors.push(body);
                return seen;
            }
            assert_eq!(
                body["data"]["revokeTokens"]["revokedSessionIds"],
                json!([oldest]),
                "{body}"
            );
            seen.revoked.insert(oldest);
            seen.operations += 1;
        }
    }
    seen.cut_off = false;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_mid_writes_every_acknowledged_write_is_there_and_no_session_is_half_rotated()
{
    let dir = tempfile::tempdir().unwrap();
    let database_url = sqlite_url(&dir.path().join("authql.db"));
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("BCRYPT_COST", "4"),
        ("RATE_LIMIT_IP_PER_MINUTE", "0"),
        ("RATE_LIMIT_ACCOUNT_PER_MINUTE", "0"),
        // Long enough that a refresh whose answer was lost can be retried after the restart.
        ("REFRESH_REUSE_GRACE_SECONDS", "120"),
        (
            "JWT_SECRET_KEY",
            "a test secret that is long enough to sign",
        ),
        ("PRUNE_INTERVAL_SECONDS", "0"),
    ];
    let mut binary = start_binary(dir.path(), &env).await;
    let url = binary.url("/graphql");

    const CLIENTS: usize = 6;
    let client = reqwest::Client::new();
    let mut emails = Vec::new();
    let mut known = HashSet::new();
    for n in 0..CLIENTS {
        let email = format!("writer{n}@x.com");
        let variables =
            json!({ "input": { "email": email, "password": PASSWORD, "username": null } });
        let body = post(
            &client,
            &url,
            "mutation($input: RegisterInput!) { register(input: $input) { session { id } } }",
            variables,
            None,
        )
        .await
        .expect("register answers");
        assert_no_errors(&body);
        // Registration's own session is left alone by the load.
        known.insert(string_at(&body, "/data/register/session/id"));
        emails.push(email);
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    let clients: Vec<_> = emails
        .iter()
        .map(|email| tokio::spawn(write_heavy_client(url.clone(), email.clone(), deadline)))
        .collect();
    // Let the load build up, then kill the process without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    binary.child.kill().expect("SIGKILL");
    binary.child.wait().unwrap();
    let mut seen = Vec::new();
    for client in clients {
        seen.push(client.await.expect("a client finished"));
    }
    for client in &seen {
        assert!(
            client.errors.is_empty(),
            "no error answers: {:?}",
            client.errors
        );
    }
    let operations: usize = seen.iter().map(|client| client.operations).sum();
    assert!(operations >= 30, "a real load ran: {operations} operations");
    assert!(
        seen.iter().all(|client| client.cut_off),
        "the kill came in the middle of the load"
    );
    eprintln!(
        "kill -9 after {operations} acknowledged operations; lost answers: {} logins, {} refreshes, {} revokes",
        seen.iter().filter(|client| client.login_in_flight).count(),
        seen.iter()
            .filter(|client| client.refresh_in_flight.is_some())
            .count(),
        seen.iter()
            .filter(|client| client.revoke_in_flight.is_some())
            .count(),
    );

    // Restart on the same file; it must come up and serve.
    let binary = start_binary(dir.path(), &env).await;
    let url = binary.url("/graphql");
    let http = reqwest::Client::new();
    let db = sea_orm::Database::connect(&database_url).await.unwrap();
    use authql::store::entity::session;
    use sea_orm::EntityTrait;
    let stored: HashMap<String, session::Model> = session::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.id.to_string(), row))
        .collect();

    let mut lost_rotations = 0;
    for client in &seen {
        known.extend(client.revoke_in_flight.clone());
        for revoked in &client.revoked {
            known.insert(revoked.clone());
            assert!(
                !stored.contains_key(revoked),
                "an acknowledged revoke stuck: {revoked}"
            );
        }
        for (session_id, last) in &client.last_pair {
            known.insert(session_id.clone());
            if client.revoked.contains(session_id) {
                continue;
            }
            let row = stored
                .get(session_id)
                .unwrap_or_else(|| panic!("an acknowledged login's session is lost: {session_id}"));
            let (access_jti, refresh_jti) =
                (row.access_jti.to_string(), row.refresh_jti.to_string());
            if refresh_jti == last.refresh_jti {
                assert_eq!(
                    access_jti, last.access_jti,
                    "half-rotated session {session_id}"
                );
                // The last acknowledged tokens work after the restart.
                let body = post(
                    &http,
                    &url,
                    "{ me { id } }",
                    json!({}),
                    Some(&last.access_token),
                )
                .await
                .unwrap();
                assert_no_errors(&body);
            } else {
                // Only a refresh whose answer was lost may have moved it on, from the last
                // acknowledged pair to one the client never saw, issued together.
                assert_eq!(
                    client.refresh_in_flight.as_deref(),
                    Some(session_id.as_str()),
                    "session {session_id} holds a pair nobody was told about"
                );
                assert_eq!(
                    row.previous_refresh_jti.map(|jti| jti.to_string()),
                    Some(last.refresh_jti.clone()),
                    "the lost rotation replaced the last acknowledged refresh token"
                );
                assert!(
                    !client.issued.contains_key(&refresh_jti)
                        && !client.issued.values().any(|jti| *jti == access_jti),
                    "a fresh pair, not an old one"
                );
                // The client retries the lost refresh and is given that very pair.
                let body = post(
                    &http,
                    &url,
                    REFRESH,
                    json!({ "token": last.refresh_token }),
                    None,
                )
                .await
                .unwrap();
                assert_no_errors(&body);
                lost_rotations += 1;
                let retried = Pair::from_payload(&body["data"]["refresh"]);
                assert_eq!(
                    (retried.access_jti, retried.refresh_jti),
                    (access_jti, refresh_jti)
                );
            }
        }
    }
    // Any other stored session comes from a login whose answer was lost: one per client at most.
    let unknown = stored.keys().filter(|id| !known.contains(*id)).count();
    let logins_lost = seen.iter().filter(|client| client.login_in_flight).count();
    eprintln!(
        "after the restart: {} sessions stored, {lost_rotations} rotated by a refresh whose answer was lost, {unknown} from a lost login",
        stored.len()
    );
    assert!(
        unknown <= logins_lost,
        "{unknown} sessions nobody acknowledged, {logins_lost} logins lost"
    );
    drop(binary);
}

// ---------------------------------------------------------------------------------------------
// 3. SIGTERM with requests in flight.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_requests_in_flight_finish_new_connections_are_refused_and_it_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        // A real cost, one hash at a time: eight logins take seconds, so they are in flight
        // when the signal comes.
        ("BCRYPT_COST", "12"),
        ("BCRYPT_MAX_CONCURRENCY", "1"),
        ("RATE_LIMIT_IP_PER_MINUTE", "0"),
        ("RATE_LIMIT_ACCOUNT_PER_MINUTE", "0"),
        (
            "JWT_SECRET_KEY",
            "a test secret that is long enough to sign",
        ),
    ];
    let mut binary = start_binary(dir.path(), &env).await;
    let url = binary.url("/graphql");
    let client = reqwest::Client::new();
    let variables =
        json!({ "input": { "email": "term@x.com", "password": PASSWORD, "username": null } });
    let body = post(
        &client,
        &url,
        "mutation($input: RegisterInput!) { register(input: $input) { accessToken } }",
        variables,
        None,
    )
    .await
    .expect("register answers");
    assert_no_errors(&body);

    const LOGINS: usize = 8;
    let done = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let logins: Vec<_> = (0..LOGINS)
        .map(|_| {
            let (url, done) = (url.clone(), done.clone());
            tokio::spawn(async move {
                // A connection of its own each, as separate clients would have.
                let variables =
                    json!({ "input": { "emailOrUsername": "term@x.com", "password": PASSWORD } });
                let body = post(&reqwest::Client::new(), &url, LOGIN, variables, None).await;
                done.lock().unwrap().push(Instant::now());
                body
            })
        })
        .collect();
    // Long enough for every request to be read by the server, far shorter than eight hashes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &binary.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // The listener closes at once: a new connection is refused while the logins still run.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], binary.port));
    let refusal_deadline = signalled + Duration::from_secs(2);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
            Err(_) => break,
            Ok(_) => assert!(
                Instant::now() < refusal_deadline,
                "new connections are still accepted 2 s after SIGTERM"
            ),
        }
    }
    let finished_before_refusal = done.lock().unwrap().len();
    assert!(
        finished_before_refusal < LOGINS,
        "the refusal was checked while logins were still in flight"
    );

    for login in logins {
        let body = login
            .await
            .unwrap()
            .expect("an in-flight request is answered, not cut off");
        assert_no_errors(&body);
        assert!(body["data"]["login"]["accessToken"].is_string(), "{body}");
    }
    assert!(
        done.lock().unwrap().iter().any(|at| *at > signalled),
        "some logins were still running when the signal came"
    );

    let exit_deadline = signalled + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < exit_deadline,
            "authql did not exit within 15 s of SIGTERM:\n{}",
            binary.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

// ---------------------------------------------------------------------------------------------
// 4. Background pruning of ended sessions, on two instances at once.
// ---------------------------------------------------------------------------------------------

fn pruning_every_second(config: &mut authql::config::Config) {
    config.prune_interval_seconds = 1;
    config.prune_retention_seconds = 0;
    config.prune_batch_size = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_are_pruned_in_the_background_by_every_instance_while_live_ones_stay() {
    // Sessions made here end two seconds after they start...
    let short = spawn_app_with(|config| {
        pruning_every_second(config);
        config.session_idle_timeout = 2;
    })
    .await;
    short.register("prune@x.com").await;
    for _ in 0..6 {
        short.login("prune@x.com").await;
    }
    let ending: HashSet<_> = short
        .session_rows()
        .await
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(ending.len(), 7, "seven sessions, more than a few batches");
    // ...those made here live on. On PostgreSQL and MongoDB both instances prune the same
    // database every second; a SQLite file is served by one process, so there it is the next
    // release.
    let (short, long) = if shared_database_url().is_some() {
        let long = spawn_instance_on(&short, pruning_every_second).await;
        (Some(short), long)
    } else {
        (None, short.restart(pruning_every_second).await)
    };
    let short = short.as_ref().unwrap_or(&long);
    // A session that is still live: logged in through the other instance, after the others.
    let live = long.login("prune@x.com").await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let remaining = loop {
        let rows = short.session_rows().await;
        if rows.iter().all(|row| !ending.contains(&row.id)) {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "ended sessions were not pruned within 10 s: {} left",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(remaining.len(), 1, "only the live session is left");
    assert_eq!(remaining[0].id.to_string(), live.session_id);
    // A few more rounds of pruning on both instances leave it alone, and it still works.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(short.session_rows().await.len(), 1);
    assert_no_errors(&long.me(&live.access_token).await);
    assert_no_errors(&short.me(&live.access_token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruners_running_at_once_delete_each_ended_session_exactly_once_without_errors() {
    use authql::store::{PoolSettings, entity::session};

    let app = spawn_app_with(|config| config.prune_interval_seconds = 0).await;
    let account = app.register("many@x.com").await;
    let user_id = app.user_rows().await[0].id;
    let now = chrono::Utc::now();
    const ENDED: usize = 60;
    let ended = (0..ENDED).map(|n| {
        let started = now - chrono::TimeDelta::hours(2);
        session::Model {
            id: uuid::Uuid::new_v4(),
            user_id,
            access_jti: uuid::Uuid::new_v4(),
            refresh_jti: uuid::Uuid::new_v4(),
            previous_refresh_jti: None,
            created_at: started,
            last_refreshed_at: None,
            // Half past their absolute end, half idle for too long.
            expires_at: if n % 2 == 0 {
                now - chrono::TimeDelta::hours(1)
            } else {
                now + chrono::TimeDelta::hours(1)
            },
            idle_expires_at: if n % 2 == 0 {
                now + chrono::TimeDelta::hours(1)
            } else {
                now - chrono::TimeDelta::hours(1)
            },
            user_agent: None,
            ip_address: None,
            credential_version: 0,
            authenticated_at: Some(started),
            authentication_methods: "pwd".into(),
        }
    });
    insert_session_rows(&app.database_url, ended.collect()).await;
    assert_eq!(app.session_rows().await.len(), ENDED + 1);

    // Four instances' stores pruning at the same moment, in batches of two.
    let pool = PoolSettings {
        max_connections: Some(2),
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(10),
        busy_timeout: Duration::from_secs(10),
    };
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(open_store(&app.database_url, pool).await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(stores.len()));
    let pruners: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                store.prune_sessions(chrono::Utc::now(), 2).await
            })
        })
        .collect();
    let mut pruned = 0;
    for pruner in pruners {
        pruned += tokio::time::timeout(Duration::from_secs(15), pruner)
            .await
            .expect("pruning finishes")
            .unwrap()
            .expect("pruning at once with others never fails");
    }
    assert_eq!(
        pruned, ENDED as u64,
        "each ended session is counted by exactly one pruner"
    );
    let left = app.session_rows().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id.to_string(), account.session_id);
}

/// What a restart or failover does to open connections: PostgreSQL ends them with 57P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL"]
async fn when_postgres_ends_connections_requests_get_service_unavailable_never_internal() {
    use sea_orm::ConnectionTrait;
    let Some(admin_url) = postgres_admin_url() else {
        // MongoDB's counterpart: tests/api/mongodb.rs.
        assert!(mongodb_url().is_some(), "TEST_DATABASE_URL names no server");
        return;
    };
    let app = Arc::new(spawn_app_with(|config| config.prune_interval_seconds = 0).await);
    let account = app.register("terminated@x.com").await;
    let database = app.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sea_orm::Database::connect(admin_url).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let terminator = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                admin
                    .execute_unprepared(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{database}'"
                    ))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut unavailable = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (app, token) = (app.clone(), account.access_token.clone());
                tokio::spawn(async move { outcome(&app.me(&token).await) })
            })
            .collect();
        for call in calls {
            let code = call.await.unwrap();
            assert!(
                matches!(code.as_deref(), None | Some("SERVICE_UNAVAILABLE")),
                "an ended connection is SERVICE_UNAVAILABLE, got {code:?}"
            );
            unavailable += usize::from(code.is_some());
        }
    }
    stop.store(true, Ordering::Relaxed);
    terminator.await.unwrap();
    assert!(unavailable > 0, "some requests met an ended connection");
    // Left alone, the pool reconnects by itself.
    assert_no_errors(&app.me(&account.access_token).await);
}

/// A standby, or a primary Patroni has just demoted, refuses writes with 25006 (a read-only
/// transaction): worth a retry on the new primary, so SERVICE_UNAVAILABLE with `Retry-After`,
/// never INTERNAL_SERVER_ERROR; reads go on, and writes resume once the database takes them.
#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL"]
async fn writes_to_a_read_only_postgresql_are_service_unavailable_and_resume_after() {
    use sea_orm::ConnectionTrait;
    let Some(admin_url) = postgres_admin_url() else {
        assert!(mongodb_url().is_some(), "TEST_DATABASE_URL names no server");
        return;
    };
    let app = spawn_app_with(|config| config.prune_interval_seconds = 0).await;
    let account = app.register("readonly@x.com").await;
    let database = app.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sea_orm::Database::connect(admin_url).await.unwrap();
    // New connections start read-only; the open ones are ended, so that the pool opens new ones.
    let read_only = |on: bool| {
        let (admin, database) = (&admin, &database);
        async move {
            admin
                .execute_unprepared(&format!(
                    "ALTER DATABASE {database} SET default_transaction_read_only = {on}"
                ))
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{database}'"
                ))
                .await
                .unwrap();
        }
    };
    read_only(true).await;
    let login = |app: &TestApp| {
        app.client
            .post(format!("{}/graphql", app.address))
            .json(&json!({
                "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                "variables": { "i": { "emailOrUsername": "readonly@x.com", "password": PASSWORD } },
            }))
            .send()
    };
    // The first request after the cut may meet an ended connection: also SERVICE_UNAVAILABLE.
    for _ in 0..5 {
        let response = login(&app).await.unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "SERVICE_UNAVAILABLE", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["retryAfterSeconds"], 1);
        assert_eq!(
            retry_after.as_ref().map(|value| value.as_bytes()),
            Some(&b"1"[..])
        );
    }
    assert_eq!(app.session_rows().await.len(), 1, "no session was written");
    // Reads go on.
    let mut me = app.me(&account.access_token).await;
    if outcome(&me).is_some() {
        me = app.me(&account.access_token).await;
    }
    assert_no_errors(&me);

    read_only(false).await;
    let mut answered = None;
    for _ in 0..3 {
        let body: Value = login(&app).await.unwrap().json().await.unwrap();
        if outcome(&body).is_none() {
            answered = Some(body);
            break;
        }
        assert_eq!(error_code(&body), "SERVICE_UNAVAILABLE", "{body}");
    }
    assert!(
        answered.is_some(),
        "writes resume once the database takes them"
    );
    assert_eq!(app.session_rows().await.len(), 2);
}

/// The shared rate-limit statement, run directly against whichever database the suite is on.
#[tokio::test]
async fn the_database_rate_limit_bucket_takes_a_burst_then_says_when() {
    use authql::store::PoolSettings;
    let app = spawn_app().await;
    let pool = PoolSettings {
        max_connections: Some(1),
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
        busy_timeout: Duration::from_secs(5),
    };
    let store = open_store(&app.database_url, pool).await;
    let now = chrono::Utc::now();
    let interval = Duration::from_secs(20); // 3 per minute
    for _ in 0..3 {
        assert_eq!(
            store
                .take_rate_limit_token("k", now, interval, 3)
                .await
                .unwrap(),
            None
        );
    }
    let wait = store
        .take_rate_limit_token("k", now, interval, 3)
        .await
        .unwrap()
        .expect("the fourth is refused");
    assert!(
        wait > Duration::from_secs(19) && wait <= interval,
        "{wait:?}"
    );
    // Another key is untouched; a minute later the bucket is full again and can be pruned.
    assert_eq!(
        store
            .take_rate_limit_token("other", now, interval, 3)
            .await
            .unwrap(),
        None
    );
    let later = now + chrono::TimeDelta::seconds(61);
    assert_eq!(store.prune_rate_limit_buckets(later).await.unwrap(), 2);
    assert_eq!(
        store
            .take_rate_limit_token("k", later, interval, 3)
            .await
            .unwrap(),
        None
    );
}

/// The instances' `LISTEN` connections die with the rest when PostgreSQL ends every connection;
/// each listener reconnects by itself, and events flow again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL"]
async fn session_events_flow_again_after_postgres_ends_every_connection() {
    use crate::session_events::{SESSION_EVENTS, WsClient};
    use sea_orm::ConnectionTrait;
    let Some(admin_url) = postgres_admin_url() else {
        return; // MongoDB: its change streams resume on their own; SQLite has no listener.
    };
    let a = spawn_app().await;
    let b = spawn_instance_on(&a, |_| {}).await;
    let account = a.register("listening@x.com").await;
    let mut subscriber = WsClient::signed_in(&a.address, &account.access_token).await;
    subscriber.subscribe("1", SESSION_EVENTS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let database = a.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sea_orm::Database::connect(admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ))
        .await
        .unwrap();

    // A login on B after the cut reaches A's subscriber once A's listener is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "no event crossed instances within 10 s of the cut"
        );
        let body = b.login_raw("listening@x.com", PASSWORD).await;
        let Some(session_id) = body
            .pointer("/data/login/session/id")
            .and_then(Value::as_str)
        else {
            continue; // the login met a connection that had just been ended
        };
        if let Some(event) = subscriber.next_event(Duration::from_secs(1)).await {
            assert_eq!(event["type"], "CREATED");
            if event["sessionId"] == session_id {
                break;
            }
        }
    }
}

/// Issue 17: a statement PostgreSQL cancels (its `statement_timeout`, here while it waits for a
/// row another transaction holds) is SERVICE_UNAVAILABLE, never INTERNAL_SERVER_ERROR, and
/// nothing of the request is applied.
#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL"]
async fn a_statement_postgres_cancels_is_service_unavailable() {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    if postgres_admin_url().is_none() {
        return; // the MongoDB pass
    }
    let app = spawn_app().await;
    let account = app.register("cancelled@x.com").await;
    let db = Database::connect(&app.database_url).await.unwrap();
    let name: String = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT current_database() AS name",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "name")
        .unwrap();
    // Every new connection to this database gets a statement timeout; the server's are made
    // new by ending them.
    db.execute_unprepared(&format!(
        "ALTER DATABASE \"{name}\" SET statement_timeout = '300ms'"
    ))
    .await
    .unwrap();
    db.execute_unprepared(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await
    .unwrap();
    // Another transaction holds the user's row.
    let holder = db.begin().await.unwrap();
    holder
        .execute_unprepared("SELECT * FROM users FOR UPDATE")
        .await
        .unwrap();
    let change = |new: &str| {
        app.graphql(
            "mutation($i: ChangePasswordInput!) { changePassword(input: $i) }",
            json!({ "i": { "currentPassword": PASSWORD, "newPassword": new } }),
            Some(&account.access_token),
        )
    };
    let mut body = change("a brand new passphrase").await;
    // The first request after the connections ended may meet one that is already gone.
    for _ in 0..3 {
        if error_code(&body) == "SERVICE_UNAVAILABLE" && body.to_string().contains("changePassword")
        {
            break;
        }
        body = change("a brand new passphrase").await;
    }
    assert_eq!(error_code(&body), "SERVICE_UNAVAILABLE", "{body}");
    holder.rollback().await.unwrap();
    // Nothing was applied: the old password still logs in.
    assert_no_errors(&app.login_raw("cancelled@x.com", PASSWORD).await);
}
