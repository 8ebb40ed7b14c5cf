//! authql through primary failovers of a Patroni-managed PostgreSQL cluster (issue 24): two
//! authql instances on HAProxy's port, a bounded load of registrations, logins, refreshes and
//! revocations, the primary killed (`kill -9` of its Patroni and its PostgreSQL), a replica
//! promoted, the old primary back as a replica (pg_rewind); then the same again twice: with the
//! replicas a second behind when the primary dies, and with answers of commits the new primary
//! has lost in the kill.
//!
//! It needs the cluster `scripts/throwaway-patroni.sh` starts (`scripts/test` does, in a pass of
//! its own, when patroni, etcd and haproxy are installed; `.ci/run` installs them), so it is
//! ignored in the other passes. `AUTHQL_PATRONI_REPLICATION=asynchronous` runs it on a cluster
//! without synchronous replication: it then reports what was lost instead of failing on it
//! (README, "High availability").

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::helpers::*;

const NEEDS_CLUSTER: &str = "needs the Patroni cluster of scripts/throwaway-patroni.sh: \
     scripts/test starts one when patroni, etcd and haproxy are installed";

/// How long a request may take at most, through a failover included: the acquire and connect
/// timeouts the instances run with, twice over, and some slack.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// The most authql's recovery may take once the new primary takes commits through HAProxy.
const RECOVERY_WITHIN: Duration = Duration::from_secs(5);

/// The cluster the scripts started: its nodes are crashed and restarted through the script's own
/// functions, so that the test and `scripts/test` speak of the same processes.
struct Cluster {
    synchronous: bool,
}

impl Cluster {
    fn from_env() -> Self {
        for variable in [
            "THROWAWAY_PATRONI_DIR",
            "PATRONI_NODE_NAMES",
            "PATRONI_REST_PORTS",
        ] {
            assert!(std::env::var_os(variable).is_some(), "{NEEDS_CLUSTER}");
        }
        assert!(postgres_admin_url().is_some(), "{NEEDS_CLUSTER}");
        Self {
            synchronous: std::env::var("AUTHQL_PATRONI_REPLICATION").as_deref()
                != Ok("asynchronous"),
        }
    }

    /// Runs one of the script's functions: what it printed, on stdout when it succeeded, on
    /// both when it failed.
    async fn run(&self, function: &str, arguments: &[&str]) -> Result<String, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/throwaway-patroni.sh");
        let output = tokio::process::Command::new("bash")
            .arg("-c")
            .arg("source \"$0\" && \"$@\"")
            .arg(script)
            .arg(function)
            .args(arguments)
            .output()
            .await
            .expect("bash runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
        }
    }

    async fn leader(&self) -> Option<String> {
        self.run("patroni_leader", &[])
            .await
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
    }

    /// One line a member: name role state timeline lag.
    async fn members(&self) -> Vec<Vec<String>> {
        self.run("patroni_cluster", &[])
            .await
            .unwrap_or_default()
            .lines()
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    async fn kill(&self, node: &str) {
        self.run("kill_patroni_node", &[node])
            .await
            .unwrap_or_else(|output| panic!("kill -9 of {node}: {output}"));
    }

    /// Starts `node` again and waits (60 s at most) until it follows the leader on the leader's
    /// timeline (rewound) and the cluster can fail over again: a synchronous standby runs, or
    /// when asynchronous every replica does.
    async fn rejoin(&self, node: &str) -> Duration {
        let started = Instant::now();
        self.run("restart_patroni_node", &[node])
            .await
            .unwrap_or_else(|output| panic!("restart of {node}: {output}"));
        let deadline = started + Duration::from_secs(60);
        loop {
            let members = self.members().await;
            let leader_timeline = members
                .iter()
                .find(|member| member[1] == "leader")
                .map(|member| member[3].clone());
            let rejoined = members.iter().any(|member| {
                member[0] == node
                    && member[1] != "leader"
                    && matches!(member[2].as_str(), "running" | "streaming")
                    && Some(&member[3]) == leader_timeline.as_ref()
            });
            if rejoined && self.run("patroni_failover_ready", &[]).await.is_ok() {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{node} did not rejoin as a replica within 60 s: {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// When a new connection through HAProxy first reaches a primary again, after `since`.
async fn primary_reachable_after(url: &str, since: Instant, deadline: Duration) -> Instant {
    use sea_orm::sqlx::{Connection, PgConnection};
    loop {
        let attempt = async {
            let mut connection = PgConnection::connect(url).await.ok()?;
            let (in_recovery,): (bool,) = sea_orm::sqlx::query_as("select pg_is_in_recovery()")
                .fetch_one(&mut connection)
                .await
                .ok()?;
            let _ = connection.close().await;
            Some(!in_recovery)
        };
        let asked = Instant::now();
        if tokio::time::timeout(Duration::from_secs(2), attempt).await == Ok(Some(true)) {
            return asked;
        }
        assert!(
            since.elapsed() < deadline,
            "no primary behind HAProxy within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When a commit through HAProxy is first acknowledged again, after `since`: the new primary
/// takes writes once a synchronous standby follows it (`synchronous_mode_strict`), which can be
/// seconds after it is reachable.
async fn primary_writable_after(url: &str, since: Instant, deadline: Duration) -> Instant {
    use sea_orm::sqlx::{Connection, PgConnection};
    loop {
        let attempt = async {
            let mut connection = PgConnection::connect(url).await.ok()?;
            sea_orm::sqlx::query("CREATE TABLE IF NOT EXISTS failover_probe (at timestamptz)")
                .execute(&mut connection)
                .await
                .ok()?;
            sea_orm::sqlx::query("INSERT INTO failover_probe VALUES (now())")
                .execute(&mut connection)
                .await
                .ok()?;
            let _ = connection.close().await;
            Some(())
        };
        if tokio::time::timeout(Duration::from_secs(5), attempt).await == Ok(Some(())) {
            return Instant::now();
        }
        assert!(
            since.elapsed() < deadline,
            "no commit through HAProxy within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP answer a client got.
#[derive(Debug, Clone)]
struct Answer {
    instance: usize,
    operation: &'static str,
    started: Instant,
    took: Duration,
    /// `None` for success; the error code, or `TRANSPORT` when no answer came.
    code: Option<String>,
    retry_after: Option<u64>,
}

/// A token pair, as the client read it.
#[derive(Debug, Clone)]
struct Pair {
    session_id: String,
    access_token: String,
    refresh_token: String,
}

impl Pair {
    fn from_payload(payload: &Value) -> Self {
        Self {
            session_id: string_at(payload, "/session/id"),
            access_token: string_at(payload, "/accessToken"),
            refresh_token: string_at(payload, "/refreshToken"),
        }
    }
}

/// What authql acknowledged to one client: each must be in the database after the failovers.
#[derive(Debug, Default)]
struct Acknowledged {
    accounts: Vec<String>,
    /// Sessions whose revocation was acknowledged, with their last tokens.
    revoked: Vec<Pair>,
    /// (the refresh token presented, the pair it was rotated into).
    rotations: Vec<(String, Pair)>,
    /// Error answers other than SERVICE_UNAVAILABLE (none expected).
    unexpected: Vec<String>,
    /// Operations that succeeded on a retry, by name.
    retried: HashMap<&'static str, usize>,
    answers: Vec<Answer>,
}

const REGISTER: &str = "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken session { id } } }";
const LOGIN: &str =
    "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken session { id } } }";
const REFRESH: &str = "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken session { id } } }";
const REVOKE: &str =
    "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedSessionIds } }";
const ME: &str = "{ me { id } }";

/// A client of both instances (as behind a load balancer: each attempt goes to the next one),
/// which retries what answered SERVICE_UNAVAILABLE (or nothing) after `Retry-After`, as an app
/// would.
struct Client {
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
    next: usize,
    seen: Acknowledged,
}

impl Client {
    /// The operation's `data`, or the error code it ended with. Retries for as long as
    /// `ANSWER_WITHIN` twice over, plus the failover: 60 s.
    async fn call(
        &mut self,
        operation: &'static str,
        query: &str,
        variables: Value,
        token: Option<&str>,
    ) -> Result<Value, String> {
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut retried = false;
        loop {
            let instance = self.next % self.urls.len();
            self.next += 1;
            let started = Instant::now();
            let mut request = self
                .http
                .post(&self.urls[instance])
                .timeout(ANSWER_WITHIN)
                .json(&json!({ "query": query, "variables": variables }));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let (code, retry_after, body) = match request.send().await {
                Err(_) => (Some("TRANSPORT".to_owned()), None, Value::Null),
                Ok(response) => {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok()?.parse().ok());
                    match response.json::<Value>().await {
                        Err(_) => (Some("TRANSPORT".to_owned()), retry_after, Value::Null),
                        Ok(body) => (code_of(&body), retry_after, body),
                    }
                }
            };
            self.seen.answers.push(Answer {
                instance,
                operation,
                started,
                took: started.elapsed(),
                code: code.clone(),
                retry_after,
            });
            match code.as_deref() {
                None => {
                    if retried {
                        *self.seen.retried.entry(operation).or_default() += 1;
                    }
                    return Ok(body["data"].clone());
                }
                Some("SERVICE_UNAVAILABLE" | "TRANSPORT") if Instant::now() < give_up => {
                    retried = true;
                    let wait = retry_after.unwrap_or(1).min(2);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                Some(code) => return Err(code.to_owned()),
            }
        }
    }

    fn unexpected(&mut self, operation: &str, code: String) {
        self.seen.unexpected.push(format!("{operation}: {code}"));
    }
}

/// One client's loop until `stop`: register an account (its first session R), log in (session
/// L), refresh L, revoke R signed in with L's new access token.
async fn run_client(index: usize, urls: Arc<Vec<String>>, stop: Arc<AtomicBool>) -> Acknowledged {
    let mut client = Client {
        http: reqwest::Client::new(),
        urls,
        next: index,
        seen: Acknowledged::default(),
    };
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let email = format!("c{index}r{round}@failover.test");
        let registered = match client
            .call(
                "register",
                REGISTER,
                json!({ "i": { "email": email, "password": PASSWORD } }),
                None,
            )
            .await
        {
            Ok(data) => {
                client.seen.accounts.push(email.clone());
                Pair::from_payload(&data["register"])
            }
            Err(error) => {
                client.unexpected("register", error);
                continue;
            }
        };
        let login = match client
            .call(
                "login",
                LOGIN,
                json!({ "i": { "emailOrUsername": email, "password": PASSWORD } }),
                None,
            )
            .await
        {
            Ok(data) => Pair::from_payload(&data["login"]),
            Err(error) => {
                client.unexpected("login", error);
                continue;
            }
        };
        let rotated = match client
            .call(
                "refresh",
                REFRESH,
                json!({ "t": login.refresh_token }),
                None,
            )
            .await
        {
            Ok(data) => {
                let rotated = Pair::from_payload(&data["refresh"]);
                client
                    .seen
                    .rotations
                    .push((login.refresh_token.clone(), rotated.clone()));
                rotated
            }
            Err(error) => {
                client.unexpected("refresh", error);
                continue;
            }
        };
        match client
            .call(
                "revokeTokens",
                REVOKE,
                json!({ "i": { "sessionIds": [registered.session_id] } }),
                Some(&rotated.access_token),
            )
            .await
        {
            Ok(_) => client.seen.revoked.push(registered),
            Err(error) => client.unexpected("revokeTokens", error),
        }
    }
    client.seen
}

/// `/readyz` of each instance every 200 ms: (instance, when asked, status).
async fn watch_readiness(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(usize, Instant, u16)>>>,
) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        for (instance, url) in urls.iter().enumerate() {
            let asked = Instant::now();
            let status = http
                .get(url)
                .timeout(ANSWER_WITHIN)
                .send()
                .await
                .map_or(0, |response| response.status().as_u16());
            seen.lock().unwrap().push((instance, asked, status));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What one failover looked like from the clients.
#[derive(Debug)]
struct Failover {
    killed: String,
    kill: Instant,
    promoted: Instant,
    /// When a commit through HAProxy was acknowledged again.
    writable: Instant,
    /// Each instance's first success of a request that started after the promotion.
    recovered: Vec<Instant>,
    ready_again: Vec<Instant>,
}

/// The first success on `instance` of a request that started after `after`.
fn first_success(
    answers: &[Answer],
    instance: usize,
    after: Instant,
    operation: Option<&str>,
) -> Option<Instant> {
    answers
        .iter()
        .filter(|answer| {
            answer.instance == instance
                && answer.started > after
                && answer.code.is_none()
                && operation.is_none_or(|operation| answer.operation == operation)
        })
        .map(|answer| answer.started + answer.took)
        .min()
}

/// The first error's code; `None` for a success.
fn code_of(body: &Value) -> Option<String> {
    body.get("errors").map(|_| error_code(body))
}

async fn status(http: &reqwest::Client, url: &str) -> u16 {
    http.get(url)
        .timeout(ANSWER_WITHIN)
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    variables: Value,
    token: Option<&str>,
) -> Value {
    let mut request = http
        .post(url)
        .timeout(ANSWER_WITHIN)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON")
}

/// A login of the watcher on instance 0 (`url`) reaches `subscriber` (on instance 1) within 5 s.
async fn events_cross(
    http: &reqwest::Client,
    url: &str,
    subscriber: &mut crate::session_events::WsClient,
) {
    let login = post(
        http,
        url,
        LOGIN,
        json!({ "i": { "emailOrUsername": "watcher@failover.test", "password": PASSWORD } }),
        None,
    )
    .await;
    assert_no_errors(&login);
    let session_id = string_at(&login, "/data/login/session/id");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(event) = subscriber.next_event(Duration::from_secs(1)).await else {
            continue;
        };
        if event["type"] == "CREATED" && event["sessionId"] == session_id.as_str() {
            return;
        }
    }
    panic!("a login on instance 0 did not reach the subscriber on instance 1 within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Patroni cluster of scripts/throwaway-patroni.sh (scripts/test starts one)"]
async fn through_three_primary_failovers_every_acknowledged_write_survives_and_authql_recovers_alone()
 {
    use crate::session_events::{SESSION_EVENTS, WsClient};

    let cluster = Cluster::from_env();
    let admin_url = postgres_admin_url().expect(NEEDS_CLUSTER);
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let folders = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("BCRYPT_COST", "4"),
        ("RATE_LIMIT_IP_PER_MINUTE", "0"),
        ("RATE_LIMIT_ACCOUNT_PER_MINUTE", "0"),
        ("JWT_SECRET_KEY", "one secret shared by both instances here"),
        // README, "High availability": longer than a failover, so that a refresh whose answer
        // was lost in one is retried into the pair it made.
        ("REFRESH_REUSE_GRACE_SECONDS", "60"),
        ("RUST_LOG", "warn"),
    ];
    let instances = [
        start_binary(folders[0].path(), &env).await,
        start_binary(folders[1].path(), &env).await,
    ];
    let graphql: Arc<Vec<String>> = Arc::new(instances.iter().map(|i| i.url("/graphql")).collect());
    let readyz: Vec<String> = instances.iter().map(|i| i.url("/readyz")).collect();
    let http = reqwest::Client::new();

    // A subscriber on instance 1 to the events of a watcher account whose logins go to
    // instance 0: the events cross instances only through the database (LISTEN/NOTIFY).
    let watcher = post(
        &http,
        &graphql[0],
        REGISTER,
        json!({ "i": { "email": "watcher@failover.test", "password": PASSWORD } }),
        None,
    )
    .await;
    assert_no_errors(&watcher);
    let watcher_token = string_at(&watcher, "/data/register/accessToken");
    let mut subscriber = WsClient::signed_in(&instances[1].url(""), &watcher_token).await;
    subscriber.subscribe("1", SESSION_EVENTS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    events_cross(&http, &graphql[0], &mut subscriber).await;

    const CLIENTS: usize = 6;
    let stop = Arc::new(AtomicBool::new(false));
    let readiness = Arc::new(Mutex::new(Vec::new()));
    let watcher_task = tokio::spawn(watch_readiness(
        readyz.clone(),
        stop.clone(),
        readiness.clone(),
    ));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| tokio::spawn(run_client(index, graphql.clone(), stop.clone())))
        .collect();
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failovers = Vec::new();
    for (round, before_the_kill) in [
        // The primary dies.
        None,
        // The replicas had fallen a second behind when the primary died (its WAL senders
        // stopped, as a congested network would hold the stream back): asynchronous replication
        // acknowledges what they never get; synchronous makes those commits wait for the
        // standby, and the kill cuts them off unanswered.
        Some("stall_patroni_replication"),
        // The primary dies between commits and their answers: commits waiting for the standby,
        // their backends frozen, replication resumed; the new primary has commits whose answers
        // were lost, and the clients retry them.
        Some("lose_patroni_answers"),
    ]
    .into_iter()
    .enumerate()
    {
        let leader = cluster.leader().await.expect("the cluster has a leader");
        let stalled = before_the_kill == Some("stall_patroni_replication");
        if let Some(function) = before_the_kill {
            cluster
                .run(function, &[])
                .await
                .unwrap_or_else(|output| panic!("{function}: {output}"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cluster.kill(&leader).await;
        // From when every process of the node is gone (the script waits for that).
        let kill = Instant::now();
        if stalled {
            cluster
                .run("resume_patroni_replication", &[])
                .await
                .unwrap_or_else(|output| panic!("resuming replication: {output}"));
        }
        let promoted = primary_reachable_after(&admin_url, kill, Duration::from_secs(60)).await;
        let writable = primary_writable_after(&admin_url, kill, Duration::from_secs(60)).await;
        let new_leader = cluster.leader().await.expect("a replica was promoted");
        assert_ne!(new_leader, leader);
        eprintln!(
            "failover {}: {leader} killed, {new_leader} reachable as primary through HAProxy after {:.1} s, taking commits after {:.1} s",
            round + 1,
            (promoted - kill).as_secs_f64(),
            (writable - kill).as_secs_f64()
        );
        // Both instances answer ready again, without a restart.
        let mut ready_again = Vec::new();
        for url in &readyz {
            loop {
                if status(&http, url).await == 200 {
                    ready_again.push(Instant::now());
                    break;
                }
                assert!(
                    writable.elapsed() < RECOVERY_WITHIN,
                    "{url} not ready {:?} after the database took commits again",
                    writable.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        events_cross(&http, &graphql[0], &mut subscriber).await;
        failovers.push(Failover {
            killed: leader.clone(),
            kill,
            promoted,
            writable,
            recovered: Vec::new(),
            ready_again,
        });
        // The old primary comes back as a replica (pg_rewind), ready for the next failover.
        let rejoined = cluster.rejoin(&leader).await;
        eprintln!(
            "failover {}: {leader} rejoined as a replica in {:.1} s",
            round + 1,
            rejoined.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for client in clients {
        seen.push(client.await.expect("a client finished"));
    }
    watcher_task.await.unwrap();
    let load_took = began.elapsed();
    let answers: Vec<Answer> = seen
        .iter()
        .flat_map(|client| client.answers.iter().cloned())
        .collect();
    let readiness = readiness.lock().unwrap().clone();

    // Every answer: success, or SERVICE_UNAVAILABLE with Retry-After; never an internal error,
    // nor a request held longer than the timeouts allow.
    // Asynchronous replication loses acknowledged writes: a lost account's login is then
    // INVALID_CREDENTIALS, and so on; those are reported, not failed on.
    let unexpected: Vec<&String> = seen.iter().flat_map(|client| &client.unexpected).collect();
    assert!(
        unexpected.is_empty() || !cluster.synchronous,
        "only success or SERVICE_UNAVAILABLE: {unexpected:?}"
    );
    for answer in &answers {
        assert!(
            !matches!(
                answer.code.as_deref(),
                Some("INTERNAL_SERVER_ERROR" | "TRANSPORT")
            ),
            "{answer:?}"
        );
        assert!(
            matches!(answer.code.as_deref(), None | Some("SERVICE_UNAVAILABLE"))
                || !cluster.synchronous,
            "{answer:?}"
        );
        if answer.code.as_deref() == Some("SERVICE_UNAVAILABLE") {
            assert!(answer.retry_after.is_some(), "Retry-After: {answer:?}");
        }
        assert!(answer.took < ANSWER_WITHIN, "held too long: {answer:?}");
    }

    for (round, failover) in failovers.iter_mut().enumerate() {
        for instance in 0..instances.len() {
            let recovered = first_success(&answers, instance, failover.promoted, None)
                .unwrap_or_else(|| {
                    panic!(
                        "instance {instance} served nothing after failover {}",
                        round + 1
                    )
                });
            failover.recovered.push(recovered);
            // Between the kill (and HAProxy's marking the node down) and the promotion, the
            // instance said it was not ready.
            let not_ready = readiness.iter().any(|(i, asked, status)| {
                *i == instance
                    && *asked > failover.kill + Duration::from_millis(3_500)
                    && *asked < failover.promoted
                    && *status == 503
            });
            assert!(
                not_ready || failover.promoted - failover.kill < Duration::from_secs(5),
                "instance {instance}: /readyz 503 in the gap of failover {}",
                round + 1
            );
            assert!(
                recovered.saturating_duration_since(failover.writable) < RECOVERY_WITHIN,
                "instance {instance} recovered {:?} after the database took commits again ({})",
                recovered.saturating_duration_since(failover.writable),
                round + 1
            );
        }
    }

    // The longest time without a single success, and what came in the gaps.
    let mut successes: Vec<Instant> = answers
        .iter()
        .filter(|answer| answer.code.is_none())
        .map(|answer| answer.started + answer.took)
        .collect();
    successes.sort();
    let longest_gap = successes
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    for (round, failover) in failovers.iter().enumerate() {
        let recovered = failover.recovered.iter().max().copied().unwrap();
        let in_gap: Vec<&Answer> = answers
            .iter()
            .filter(|answer| answer.started >= failover.kill && answer.started < recovered)
            .collect();
        let unavailable = in_gap.iter().filter(|a| a.code.is_some()).count();
        let waited_longest = in_gap.iter().map(|a| a.took).max().unwrap_or_default();
        eprintln!(
            "failover {}: {} killed; primary reachable after {:.1} s, taking commits after {:.1} s; authql serving again {:.2} s / {:.2} s after that (instances 0 / 1), /readyz 200 again {:.2} s / {:.2} s after the promotion; {} requests in the gap, {} SERVICE_UNAVAILABLE (with Retry-After), the longest answer {:.1} s",
            round + 1,
            failover.killed,
            (failover.promoted - failover.kill).as_secs_f64(),
            (failover.writable - failover.kill).as_secs_f64(),
            failover.recovered[0]
                .saturating_duration_since(failover.writable)
                .as_secs_f64(),
            failover.recovered[1]
                .saturating_duration_since(failover.writable)
                .as_secs_f64(),
            failover.ready_again[0]
                .saturating_duration_since(failover.promoted)
                .as_secs_f64(),
            failover.ready_again[1]
                .saturating_duration_since(failover.promoted)
                .as_secs_f64(),
            in_gap.len(),
            unavailable,
            waited_longest.as_secs_f64(),
        );
    }

    // Everything acknowledged is in the database now (three failovers later), and behaves so.
    let users_by_email: HashMap<String, uuid::Uuid> = user_rows_in(&database_url)
        .await
        .into_iter()
        .map(|user| (user.email, user.id))
        .collect();
    let sessions: HashMap<String, authql::store::entity::session::Model> =
        session_rows_in(&database_url)
            .await
            .into_iter()
            .map(|row| (row.id.to_string(), row))
            .collect();
    let accounts: Vec<&String> = seen.iter().flat_map(|client| &client.accounts).collect();
    let revoked: Vec<&Pair> = seen.iter().flat_map(|client| &client.revoked).collect();
    let rotations: Vec<&(String, Pair)> =
        seen.iter().flat_map(|client| &client.rotations).collect();
    let mut retried: HashMap<&str, usize> = HashMap::new();
    for client in &seen {
        for (operation, count) in &client.retried {
            *retried.entry(operation).or_default() += count;
        }
    }

    // Sessions nobody was told of: a login or registration that committed, whose answer was
    // lost, and that the client repeated. They are live until they expire, as any unused one.
    let told: HashSet<&str> = rotations
        .iter()
        .map(|(_, pair)| pair.session_id.as_str())
        .collect();
    let watcher_id = users_by_email
        .get("watcher@failover.test")
        .expect("the watcher's account");
    let untold = sessions
        .values()
        .filter(|row| !told.contains(row.id.to_string().as_str()) && row.user_id != *watcher_id)
        .count();
    let accounts_found = accounts
        .iter()
        .filter(|email| users_by_email.contains_key(**email))
        .count();
    let revocations_held = revoked
        .iter()
        .filter(|pair| !sessions.contains_key(&pair.session_id))
        .count();
    let rotations_held = rotations
        .iter()
        .filter(|(_, pair)| {
            sessions.get(&pair.session_id).is_some_and(|row| {
                row.refresh_jti.to_string() == jti_of(&pair.refresh_token)
                    && row.access_jti.to_string() == jti_of(&pair.access_token)
            })
        })
        .count();

    // And through authql: each account logs in, each revoked session's tokens are refused,
    // each rotated session answers to its new access token only, and its old refresh token
    // gives back the same pair (within the grace) or is refused, never a new pair.
    let logins = stream::iter(accounts.iter().enumerate())
        .map(|(n, email)| {
            let (http, url) = (http.clone(), graphql[n % 2].clone());
            async move {
                let body = post(
                    &http,
                    &url,
                    LOGIN,
                    json!({ "i": { "emailOrUsername": email, "password": PASSWORD } }),
                    None,
                )
                .await;
                body.get("errors").is_none()
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let refused = stream::iter(revoked.iter().enumerate())
        .map(|(n, pair)| {
            let (http, url) = (http.clone(), graphql[n % 2].clone());
            async move {
                let me = post(&http, &url, ME, json!({}), Some(&pair.access_token)).await;
                let refresh = post(
                    &http,
                    &url,
                    REFRESH,
                    json!({ "t": pair.refresh_token }),
                    None,
                )
                .await;
                code_of(&me).as_deref() == Some("UNAUTHENTICATED")
                    && code_of(&refresh).as_deref() == Some("UNAUTHENTICATED")
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let predecessors_dead = stream::iter(rotations.iter().enumerate())
        .map(|(n, (predecessor, pair))| {
            let (http, url) = (http.clone(), graphql[n % 2].clone());
            async move {
                let me = post(&http, &url, ME, json!({}), Some(&pair.access_token)).await;
                let again = post(&http, &url, REFRESH, json!({ "t": predecessor }), None).await;
                let same_pair = again.get("errors").is_none()
                    && jti_of(&string_at(&again, "/data/refresh/refreshToken"))
                        == jti_of(&pair.refresh_token);
                me.get("errors").is_none()
                    && (same_pair || code_of(&again).as_deref() == Some("UNAUTHENTICATED"))
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;

    let requests = answers.len();
    let unavailable = answers.iter().filter(|a| a.code.is_some()).count();
    eprintln!(
        "{} replication; {requests} requests from {CLIENTS} clients over {:.0} s, {unavailable} SERVICE_UNAVAILABLE, {} other errors, none INTERNAL_SERVER_ERROR; the longest time without a success {:.1} s",
        if cluster.synchronous {
            "synchronous"
        } else {
            "asynchronous"
        },
        load_took.as_secs_f64(),
        unexpected.len(),
        longest_gap.as_secs_f64(),
    );
    if !unexpected.is_empty() {
        eprintln!(
            "what the lost writes did to the clients: {} answers that a client could not expect ({})",
            unexpected.len(),
            {
                let mut kinds: Vec<&str> = unexpected.iter().map(|line| line.as_str()).collect();
                kinds.sort();
                kinds.dedup();
                kinds.join(", ")
            }
        );
    }
    eprintln!(
        "acknowledged and found: registrations {accounts_found} of {} (logging in: {logins}), revocations {revocations_held} of {} (refused: {refused}), rotations {rotations_held} of {} (old refresh token dead: {predecessors_dead}); succeeded on a retry: {retried:?}; {untold} sessions nobody was told of (answers lost, retried)",
        accounts.len(),
        revoked.len(),
        rotations.len(),
    );
    assert!(
        accounts.len() >= 100 && revoked.len() >= 100 && rotations.len() >= 100,
        "a real load ran"
    );
    if cluster.synchronous {
        assert_eq!(
            accounts_found,
            accounts.len(),
            "acknowledged registrations lost"
        );
        assert_eq!(
            logins,
            accounts.len(),
            "acknowledged accounts that cannot log in"
        );
        assert_eq!(
            revocations_held,
            revoked.len(),
            "acknowledged revocations lost"
        );
        assert_eq!(refused, revoked.len(), "revoked sessions that work again");
        assert_eq!(
            rotations_held,
            rotations.len(),
            "acknowledged rotations lost"
        );
        assert_eq!(
            predecessors_dead,
            rotations.len(),
            "rotated refresh tokens alive again"
        );
    }
}
