//! `cargo run --release -p authql-bench`: how much authql costs per request, next to the cost of
//! HTTP itself, and whether its expensive path (bcrypt) hurts the cheap one.
//!
//! authql runs as its release binary in a child process (built first by this command), on a
//! fresh SQLite file, with rate limits off (they would refuse the login storm) and logging at
//! `warn`. The load comes from this process: HTTP/1.1 keep-alive connections on loopback. The
//! machine is shared, so absolute numbers are noisy; every ratio compares two measurements taken
//! in the same run, back to back.
//!
//! Scenarios:
//! 1. **`me` against bare HTTP.** Throughput and p50/p99 latency of `{ me { ... } }` with a valid
//!    token at 64 connections (closed loop: each connection sends again when answered), against
//!    a bare axum server built here that answers the same bytes (`baseline`). Alternated over
//!    several rounds so that drifting background load hits both. `me / baseline` is the share of
//!    HTTP's throughput left once authql verifies the JWT, looks up the session and runs GraphQL.
//! 2. **`me` latency under a login storm.** `me` sent on a fixed schedule (open loop: latency
//!    counted from the scheduled time when the server still held the connection then, else
//!    from when the client's timer woke, up to 1 ms later) alone, then while 32 clients log in
//!    as fast as they are answered. `storm / idle` of p99 shows whether bcrypt, bounded and
//!    off the async workers, leaves the cheap path alone. A fixed rate rather than a closed loop: a saturating closed
//!    loop measures the queue it builds itself, not the server's responsiveness.
//! 3. **Logins against the machine's bcrypt limit.** Logins per second from 32 clients, against
//!    cores / (time of one hash at the configured cost), measured here with the same pre-hash
//!    authql uses (bcrypt of base64(SHA-256(password)), `src/auth/password.rs`).
//! 4. **Memory and start-up.** VmRSS of authql idle and its VmHWM (peak) after scenario 1, read
//!    from `/proc/<pid>/status`; start-up from spawn to the first answered request on a fresh
//!    SQLite file (median of several starts; it includes creating the file and migrating).
//!
//! 5. **Cost as sessions grow.** `me` throughput with 1,000,000 session rows (100,000 users)
//!    against the same with 1,000 rows, rounds alternated between the two servers, on SQLite and
//!    on PostgreSQL; the rows are written in bulk (`seed.rs`), not through the API. The peak RSS
//!    of the SQLite server with the large database is reported too.
//!
//! 6. **Live session events** (`events.rs`). Memory per `sessionEvents` subscriber (1,000
//!    WebSockets), and the latency from a revoke to its event: on SQLite within one instance, on
//!    PostgreSQL from instance B to a subscriber of instance A through `NOTIFY`.
//!
//! 7. **Mail through the outbox** (`mail.rs`). Mails per second from a full outbox to an SMTP
//!    server that discards them, against lettre feeding the same server directly at the same
//!    concurrency, on SQLite and on PostgreSQL.
//!
//! Scenario 1 and 5 also run on PostgreSQL: `BENCH_DATABASE_URL=postgres://...` names a server
//! (a role that may create databases), else a throwaway one is started from the machine's
//! PostgreSQL binaries as `scripts/test` does; the table says when there are none. Scenario 1
//! also runs on MongoDB: `BENCH_MONGODB_URL=mongodb://host/db` names a deployment, else a
//! throwaway SecantusDB is installed and started as `scripts/test` does. SecantusDB is a
//! MongoDB-wire server written in Python, so that row measures mostly SecantusDB, not what
//! authql would do on a mongod.
//! Durations, connection counts and the bcrypt cost are overridable (see [`Settings`]).
//!
//! The run ends with the table of the third performance round's goals (`goals.rs`): `me` on
//! PostgreSQL against `pgbench -S -M prepared` on the same server, and against bare axum; `me`
//! and `/auth/verify` on SQLite against bare axum; the login storm; revocations seen by the next
//! request on another instance. `BENCH_GOALS_ONLY=1` measures only those rows.

mod authql;
mod baseline;
mod events;
mod goals;
mod load;
mod mail;
mod mongodb;
mod postgres;
mod seed;

use std::{
    net::SocketAddr,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    authql::Authql,
    baseline::Baseline,
    load::{GRAPHQL_PATH, Outcome, Shape, Target},
};

pub(crate) const PASSWORD: &str = "authql-bench correct horse battery staple";
const ME_QUERY: &str = "{ me { id email username createdAt } }";
pub(crate) const FAILURE_MARKER: &[u8] = b"\"errors\"";

/// What a run does; every field has an environment variable.
#[derive(Debug)]
struct Settings {
    /// `BENCH_SECONDS`: length of each measured phase.
    seconds: f64,
    /// `BENCH_MAX_REQUESTS`: a phase also stops after this many requests.
    max_requests: u64,
    /// `BENCH_CONNECTIONS`: connections for scenario 1.
    connections: usize,
    /// `BENCH_ROUNDS`: alternations of baseline and `me` in scenario 1.
    rounds: usize,
    /// `BENCH_LOGIN_CLIENTS`: clients logging in, scenarios 2 and 3.
    login_clients: usize,
    /// `BENCH_PROBE_RATE`: `me` requests per second in scenario 2.
    probe_rate: f64,
    /// `BENCH_PROBE_CONNECTIONS`: connections the scenario 2 probe spreads over.
    probe_connections: usize,
    /// `BENCH_BCRYPT_COST`: authql's `BCRYPT_COST` and the cost of the reference hash.
    bcrypt_cost: u32,
    /// `BENCH_STARTS`: starts of authql for the start-up median.
    starts: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            seconds: env_or("BENCH_SECONDS", 4.0)?,
            max_requests: env_or("BENCH_MAX_REQUESTS", 5_000_000)?,
            connections: env_or("BENCH_CONNECTIONS", 64)?,
            rounds: env_or("BENCH_ROUNDS", 3)?,
            login_clients: env_or("BENCH_LOGIN_CLIENTS", 32)?,
            probe_rate: env_or("BENCH_PROBE_RATE", 200.0)?,
            probe_connections: env_or("BENCH_PROBE_CONNECTIONS", 8)?,
            bcrypt_cost: env_or("BENCH_BCRYPT_COST", 12)?,
            starts: env_or("BENCH_STARTS", 3)?,
        })
    }

    fn phase(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    fn closed(&self, connections: usize) -> Shape {
        Shape {
            connections,
            duration: self.phase(),
            max_requests: self.max_requests,
            rate: None,
        }
    }
}

fn env_or<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|err| anyhow::anyhow!("{name}={value:?}: {err}")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let goals_only = std::env::var_os("BENCH_GOALS_ONLY").is_some();
    let mut goals = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let binary = authql::binary()?;
    let authql_settings = authql::settings(settings.bcrypt_cost);
    println!("authql-bench: {} on {cores} cores", binary.display());
    println!(
        "authql settings: {}",
        authql_settings
            .iter()
            .filter(|(key, _)| *key != "JWT_SECRET_KEY")
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  (rate limits are off so that the login storm is not refused; logging at warn)");
    println!("{settings:?}\n");

    // Scenario 4, start-up: throwaway starts, then the one measured below.
    let mut startups = Vec::new();
    for _ in 1..settings.starts.max(1) {
        let authql = Authql::start(&binary, None, &authql_settings).await?;
        startups.push(authql.startup);
    }
    let authql = Authql::start(&binary, None, &authql_settings).await?;
    startups.push(authql.startup);
    startups.sort();
    let startup = startups[startups.len() / 2];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle_rss, _) = authql.memory()?;
    eprintln!("started in {startups:?}; idle RSS {}", mib(idle_rss));

    let token = register(authql.address, "bench@example.com").await?;
    let me = me_target(authql.address, &token);
    let answer = me_answer(&me).await?;
    let baseline = Baseline::start(answer)?;
    let bare = Target {
        address: baseline.address,
        ..me.clone()
    };

    // The login storm alone, `BENCH_ROUNDS` times (its p99 ratio moves from run to run).
    if std::env::var_os("BENCH_STORM_ONLY").is_some() {
        for round in 0..settings.rounds {
            // A probe on an account of its own: the storm's logins would push its session out.
            let token = register(authql.address, &format!("probe{round}@example.com")).await?;
            let probe = me_target(authql.address, &token);
            let (idle, storm, _) = login_storm(&settings, &probe, authql.address).await?;
            println!(
                "storm round {round}: p99 {:.2} ms ÷ idle {:.2} ms = {:.2}",
                storm.p99_ms(),
                idle.p99_ms(),
                storm.p99_ms() / idle.p99_ms()
            );
        }
        return Ok(());
    }
    // For a profiler (`perf record -a -g` beside it): one phase of `/auth/verify`
    // (`BENCH_VERIFY_ONLY`) or of `me` (`BENCH_ME_ONLY`; on PostgreSQL when it names a URL),
    // then stop.
    if std::env::var_os("BENCH_VERIFY_ONLY").is_some() {
        let outcome = load::run(&verify_target(&me), settings.closed(settings.connections)).await?;
        println!("/auth/verify alone, SQLite: {}", throughput(&outcome));
        return Ok(());
    }
    if let Some(only) = std::env::var_os("BENCH_ME_ONLY") {
        let only = only.to_string_lossy().into_owned();
        let on_postgres = if only.starts_with("postgres") {
            let server = Authql::start(&binary, Some(&only), &authql_settings).await?;
            let token = register(server.address, "bench@example.com").await?;
            Some((me_target(server.address, &token), server))
        } else {
            None
        };
        let target = on_postgres.as_ref().map_or(&me, |(target, _)| target);
        eprintln!(
            "authql pid {}",
            on_postgres
                .as_ref()
                .map_or(authql.pid(), |(_, server)| server.pid())
        );
        let outcome = load::run(target, settings.closed(settings.connections)).await?;
        println!("me alone: {}", throughput(&outcome));
        return Ok(());
    }

    // Scenario 1.
    let (me_sqlite, bare_sqlite, me_ratio_sqlite) =
        compare_with_http(&settings, &me, &bare).await?;
    // Scenario 8: forward auth, the same check as `me` without GraphQL.
    let verify_sqlite = compare_with_http(&settings, &verify_target(&me), &bare).await?;
    let (_, peak_rss) = authql.memory()?;

    // Scenario 2.
    let (idle, storm, storm_logins) = login_storm(&settings, &me, authql.address).await?;
    let login = login_target(authql.address, "bench@example.com");

    goals.push(goals::Goal {
        row: "`me` p99 during a login storm ÷ idle",
        measured: format!(
            "{:.2} ({:.2} ms ÷ {:.2} ms)",
            storm.p99_ms() / idle.p99_ms(),
            storm.p99_ms(),
            idle.p99_ms()
        ),
        goal: "≤ 2",
        met: Some(storm.p99_ms() / idle.p99_ms() <= 2.0),
    });
    goals.push(goals::Goal {
        row: "`me` on SQLite ÷ bare axum",
        measured: format!("{me_ratio_sqlite:.2}"),
        goal: "≥ 0.5",
        met: Some(me_ratio_sqlite >= 0.5),
    });
    goals.push(goals::Goal {
        row: "`/auth/verify` ÷ bare axum, SQLite",
        measured: format!("{:.2}", verify_sqlite.2),
        goal: "≥ 0.6",
        met: Some(verify_sqlite.2 >= 0.6),
    });

    // Scenario 3.
    // Twice the usual phase: logins complete in batches of `cores` every hash time, and a short
    // window would count a fraction of a batch too many or too few.
    let logins = load::run(
        &login,
        Shape {
            duration: settings.phase() * 2,
            ..settings.closed(settings.login_clients)
        },
    )
    .await?;
    check_no_failures("logins", &logins)?;
    let hash_time = bcrypt_hash_time(settings.bcrypt_cost)?;
    let capacity = bcrypt_capacity(settings.bcrypt_cost, cores, settings.phase());
    let limit = cores as f64 / hash_time.as_secs_f64();
    eprintln!(
        "logins {:.2}/s; one hash at cost {} takes {:.0} ms; {cores} threads hash {capacity:.2}/s",
        logins.per_second(),
        settings.bcrypt_cost,
        hash_time.as_secs_f64() * 1000.0
    );

    // Scenario 1 on PostgreSQL, and pgbench on the same server.
    let server = postgres::Postgres::start()?;
    let postgres = match &server {
        Some(server) => {
            let url = server.fresh_database("authql_bench_me").await?;
            let on_postgres = Authql::start(&binary, Some(&url), &authql_settings).await?;
            let token = register(on_postgres.address, "bench@example.com").await?;
            let me = me_target(on_postgres.address, &token);
            let me_result = compare_with_http(&settings, &me, &bare).await?;
            let verify_result = compare_with_http(&settings, &verify_target(&me), &bare).await?;
            let pgbench_url = server.fresh_database("authql_bench_pgbench").await?;
            goals::pgbench_init(postgres::SCRIPT, &pgbench_url)?;
            let (me_pgbench, tps, ratio) = goals::against_pgbench(
                &me,
                settings.closed(settings.connections),
                settings.rounds,
                postgres::SCRIPT,
                &pgbench_url,
            )
            .await?;
            goals.push(goals::Goal {
                row: "`me` on PostgreSQL ÷ `pgbench -S -M prepared` (same clients, same server)",
                measured: format!(
                    "{ratio:.2} ({:.0} ÷ {:.0} tps, median of {} rounds)",
                    me_pgbench.per_second(),
                    median(tps.clone()),
                    tps.len()
                ),
                goal: "≥ 1.0",
                met: Some(ratio >= 1.0),
            });
            goals.push(goals::Goal {
                row: "`me` on PostgreSQL ÷ bare axum",
                measured: format!("{:.2}", me_result.2),
                goal: "≥ 0.25",
                met: Some(me_result.2 >= 0.25),
            });
            drop(on_postgres);
            // Revocations across two instances, with BCRYPT_COST 4: the logins are set-up.
            let url = server.fresh_database("authql_bench_revocations").await?;
            let cheap: Vec<(&str, String)> = authql_settings
                .iter()
                .map(|(key, value)| match *key {
                    "BCRYPT_COST" => (*key, "4".to_owned()),
                    _ => (*key, value.clone()),
                })
                .collect();
            let a = Authql::start(&binary, Some(&url), &cheap).await?;
            let b = Authql::start(&binary, Some(&url), &cheap).await?;
            let stale = goals::revocations_seen(
                a.address,
                b.address,
                Shape {
                    duration: goals::REVOCATION_LOAD,
                    ..settings.closed(settings.connections)
                },
            )
            .await?;
            goals.push(goals::Goal {
                row: "revocation visible to the next request, every instance (PostgreSQL, two instances, `me` load on the one asked)",
                measured: format!(
                    "{} of {} revoked tokens refused at once",
                    goals::REVOCATIONS - stale,
                    goals::REVOCATIONS
                ),
                goal: "all",
                met: Some(stale == 0),
            });
            Some((me_result, verify_result))
        }
        None => {
            goals.push(goals::Goal {
                row: "`me` on PostgreSQL",
                measured: "no BENCH_DATABASE_URL and no PostgreSQL binaries".into(),
                goal: "",
                met: None,
            });
            None
        }
    };
    if goals_only {
        goals::print(&goals);
        return Ok(());
    }

    // Scenario 1 on MongoDB.
    let mongodb_server = mongodb::MongoDb::start()?;
    let on_mongodb = match &mongodb_server {
        Some(server) => {
            let url = server.database("authql_bench_me")?;
            let on_mongodb = Authql::start(&binary, Some(&url), &authql_settings).await?;
            let token = register(on_mongodb.address, "bench@example.com").await?;
            let me = me_target(on_mongodb.address, &token);
            Some(compare_with_http(&settings, &me, &bare).await?)
        }
        None => None,
    };
    drop(mongodb_server);

    // Scenario 6: session events, on SQLite (one instance) and on PostgreSQL (two).
    let events_settings: Vec<(&str, String)> = authql_settings
        .iter()
        .map(|(key, value)| match *key {
            // Registrations and logins are the set-up here, not what is measured.
            "BCRYPT_COST" => (*key, "4".to_owned()),
            _ => (*key, value.clone()),
        })
        .collect();
    let on_sqlite = Authql::start(&binary, None, &events_settings).await?;
    let (rss_idle, rss_subscribed) = events::memory(&on_sqlite).await?;
    let sqlite_latency =
        events::revoke_latency(on_sqlite.address, on_sqlite.address, "latency@example.com").await?;
    drop(on_sqlite);
    let postgres_latency = match &server {
        Some(server) => {
            let url = server.fresh_database("authql_bench_events").await?;
            let a = Authql::start(&binary, Some(&url), &events_settings).await?;
            let b = Authql::start(&binary, Some(&url), &events_settings).await?;
            Some(events::revoke_latency(a.address, b.address, "latency@example.com").await?)
        }
        None => None,
    };

    // Scenario 5, on SQLite and on PostgreSQL.
    let growth_sqlite = growth(&settings, &binary, &authql_settings, async |_| Ok(None)).await?;
    let growth_postgres = match &server {
        Some(server) => Some(
            growth(&settings, &binary, &authql_settings, async |name| {
                server.fresh_database(name).await.map(Some)
            })
            .await?,
        ),
        None => None,
    };

    // Scenario 7: mails through the outbox, on SQLite and on PostgreSQL.
    let sink = mail::Sink::start()?;
    let mails = match &sink {
        Some(sink) => {
            let direct = sink.direct().await?;
            let dir = tempfile::tempdir()?;
            let sqlite_url = format!("sqlite://{}", dir.path().join("mail.db").display());
            mail::migrated(&binary, &sqlite_url, &events_settings).await?;
            let sqlite = sink
                .through_authql(&binary, &sqlite_url, &events_settings)
                .await?;
            let postgres = match &server {
                Some(server) => {
                    let url = server.fresh_database("authql_bench_mail").await?;
                    mail::migrated(&binary, &url, &events_settings).await?;
                    Some(sink.through_authql(&binary, &url, &events_settings).await?)
                }
                None => None,
            };
            eprintln!(
                "mails/s: direct {direct:.0}, through authql on SQLite {sqlite:.0}, on PostgreSQL {postgres:?}"
            );
            Some((direct, sqlite, postgres))
        }
        None => None,
    };
    drop(sink);

    println!();
    println!("| scenario | authql | reference | ratio | bar | met |");
    println!("|---|---|---|---|---|---|");
    let ratio = me_ratio_sqlite;
    println!(
        "| 1. `me`, {} connections, SQLite: req/s (p50 / p99); ratio = median of {} rounds | {} | bare axum {} | {ratio:.2} | ≥ 0.35 | {} |",
        settings.connections,
        settings.rounds,
        throughput(&me_sqlite),
        throughput(&bare_sqlite),
        met(ratio >= 0.35)
    );
    match &postgres {
        Some(((me_pg, bare_pg, ratio), _)) => {
            println!(
                "| 1. `me`, {} connections, PostgreSQL: req/s (p50 / p99) | {} | bare axum {} | {ratio:.2} | ≥ 0.2 | {} |",
                settings.connections,
                throughput(me_pg),
                throughput(bare_pg),
                met(*ratio >= 0.2)
            );
        }
        None => println!(
            "| 1. `me` on PostgreSQL | skipped: no BENCH_DATABASE_URL and no PostgreSQL binaries | | | | |"
        ),
    }
    match &on_mongodb {
        Some((me_mongodb, bare_mongodb, ratio)) => {
            println!(
                "| 1. `me`, {} connections, MongoDB wire protocol (SecantusDB unless BENCH_MONGODB_URL): req/s (p50 / p99) | {} | bare axum {} | {ratio:.2} | | |",
                settings.connections,
                throughput(me_mongodb),
                throughput(bare_mongodb),
            );
        }
        None => println!(
            "| 1. `me` on MongoDB | skipped: no BENCH_MONGODB_URL and SecantusDB could not be installed | | | | |"
        ),
    }
    let (verify, verify_bare, ratio) = &verify_sqlite;
    println!(
        "| 8. `/auth/verify`, {} connections, SQLite: req/s (p50 / p99); ratio = median of {} rounds | {} | bare axum {} | {ratio:.2} | ≥ 0.6 | {} |",
        settings.connections,
        settings.rounds,
        throughput(verify),
        throughput(verify_bare),
        met(*ratio >= 0.6)
    );
    println!(
        "| 8. `/auth/verify` vs `me`, SQLite: req/s | {:.0} | `me` {:.0} | {:.2} | | |",
        verify.per_second(),
        me_sqlite.per_second(),
        verify.per_second() / me_sqlite.per_second()
    );
    match &postgres {
        Some(((me_pg, _, _), (verify_pg, bare_pg, ratio))) => {
            println!(
                "| 8. `/auth/verify`, {} connections, PostgreSQL: req/s (p50 / p99) | {} | bare axum {} | {ratio:.2} | | |",
                settings.connections,
                throughput(verify_pg),
                throughput(bare_pg),
            );
            println!(
                "| 8. `/auth/verify` vs `me`, PostgreSQL: req/s | {:.0} | `me` {:.0} | {:.2} | | |",
                verify_pg.per_second(),
                me_pg.per_second(),
                verify_pg.per_second() / me_pg.per_second()
            );
        }
        None => println!(
            "| 8. `/auth/verify` on PostgreSQL | skipped: no BENCH_DATABASE_URL and no PostgreSQL binaries | | | | |"
        ),
    }
    let ratio = storm.p99_ms() / idle.p99_ms();
    println!(
        "| 2. `me` p99 at {:.0} req/s, during {} clients' login storm ({:.1} logins/s) vs idle | {:.2} ms (p50 {:.2}) | idle {:.2} ms (p50 {:.2}) | {ratio:.2} | ≤ 3 | {} |",
        settings.probe_rate,
        settings.login_clients,
        storm_logins.per_second(),
        storm.p99_ms(),
        storm.p50_ms(),
        idle.p99_ms(),
        idle.p50_ms(),
        met(ratio <= 3.0)
    );
    let ratio = logins.per_second() / limit;
    println!(
        "| 3. logins/s, {} clients, vs bcrypt limit ({cores} cores / {:.0} ms per hash at cost {}) | {:.2} | {:.2} | {ratio:.2} | ≥ 0.9 | {} |",
        settings.login_clients,
        hash_time.as_secs_f64() * 1000.0,
        settings.bcrypt_cost,
        logins.per_second(),
        limit,
        met(ratio >= 0.9)
    );
    println!(
        "| 3'. the same logins/s vs {cores} threads hashing side by side now (shared machine) | {:.2} | {capacity:.2} | {:.2} | | |",
        logins.per_second(),
        logins.per_second() / capacity,
    );
    println!(
        "| 4. peak RSS during scenario 1 (VmHWM) | {} | idle VmRSS {} | | < 64 MiB | {} |",
        mib(peak_rss),
        mib(idle_rss),
        met(peak_rss < 64 * 1024 * 1024)
    );
    println!(
        "| 4. start-up, spawn to first answer, fresh SQLite (median of {}) | {:.0} ms | | | < 200 ms | {} |",
        startups.len(),
        startup.as_secs_f64() * 1000.0,
        met(startup < Duration::from_millis(200))
    );
    let per_subscriber = rss_subscribed.saturating_sub(rss_idle) / events::SUBSCRIBERS as u64;
    println!(
        "| 6. memory per `sessionEvents` subscriber ({} WebSockets, one subscription each), SQLite: VmRSS difference / {} | {:.1} KiB | VmRSS {} without, {} with | | | |",
        events::SUBSCRIBERS,
        events::SUBSCRIBERS,
        per_subscriber as f64 / 1024.0,
        mib(rss_idle),
        mib(rss_subscribed),
    );
    let quantiles = |latencies: &[Duration]| {
        let mut sorted = latencies.to_vec();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99))
    };
    let (p50, p99) = quantiles(&sqlite_latency);
    println!(
        "| 6. revoke → its `REVOKED` event on a subscriber, SQLite, one instance ({} revokes): p50 / p99 | {:.2} / {:.2} ms | | | | |",
        events::REVOKES,
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
    );
    match &postgres_latency {
        Some(latencies) => {
            let (p50, p99) = quantiles(latencies);
            println!(
                "| 6. revoke on instance B → the event on a subscriber of instance A, PostgreSQL NOTIFY ({} revokes): p50 / p99 | {:.2} / {:.2} ms | | | p99 < 1 s | {} |",
                events::REVOKES,
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0,
                met(p99 < Duration::from_secs(1))
            );
        }
        None => println!(
            "| 6. revoke across instances on PostgreSQL | skipped: no BENCH_DATABASE_URL and no PostgreSQL binaries | | | | |"
        ),
    }
    for (backend, result) in [
        ("SQLite", Some(&growth_sqlite)),
        ("PostgreSQL", growth_postgres.as_ref()),
    ] {
        match result {
            Some((small, large, ratio, peak)) => {
                println!(
                    "| 5. `me` with 1,000,000 session rows vs 1,000, {backend}: req/s (p50 / p99) | {} | {} | {ratio:.2} | ≥ 0.9 | {} |",
                    throughput(large),
                    throughput(small),
                    met(*ratio >= 0.9)
                );
                if backend == "SQLite" {
                    println!(
                        "| 5. peak RSS with 1,000,000 session rows, SQLite (VmHWM) | {} | | | < 64 MiB | {} |",
                        mib(*peak),
                        met(*peak < 64 * 1024 * 1024)
                    );
                }
            }
            None => println!(
                "| 5. `me` with 1,000,000 session rows, {backend} | skipped: no BENCH_DATABASE_URL and no PostgreSQL binaries | | | | |"
            ),
        }
    }
    match mails {
        Some((direct, sqlite, postgres)) => {
            for (backend, through) in [("SQLite", Some(sqlite)), ("PostgreSQL", postgres)] {
                match through {
                    Some(through) => println!(
                        "| 7. mails/s through the outbox ({} mails, {backend}) vs the same SMTP server fed by lettre directly | {through:.0} | {direct:.0} | {:.2} | | |",
                        mail::MAILS,
                        through / direct
                    ),
                    None => println!(
                        "| 7. mails/s through the outbox, {backend} | skipped: no BENCH_DATABASE_URL and no PostgreSQL binaries | | | | |"
                    ),
                }
            }
        }
        None => println!(
            "| 7. mails/s through the outbox | skipped: no Python with aiosmtpd (AUTHQL_TEST_SMTP_PYTHON) and none could be installed | | | | |"
        ),
    }
    goals::print(&goals);
    Ok(())
}

/// Scenario 2: `me` probed at a fixed rate idle, then during a storm of logins from
/// `login_clients` clients; returns the two probes and the storm's logins.
async fn login_storm(
    settings: &Settings,
    me: &Target,
    address: SocketAddr,
) -> anyhow::Result<(Outcome, Outcome, Outcome)> {
    let probe = Shape {
        connections: settings.probe_connections,
        duration: settings.phase(),
        max_requests: settings.max_requests,
        rate: Some(settings.probe_rate),
    };
    let idle = load::run(me, probe).await?;
    eprintln!(
        "probe idle: p50 {:.2} ms p99 {:.2} ms",
        idle.p50_ms(),
        idle.p99_ms()
    );
    let login = login_target(address, "bench@example.com");
    let storm_shape = Shape {
        duration: settings.phase() + Duration::from_millis(1500),
        ..settings.closed(settings.login_clients)
    };
    let storm_logins = tokio::spawn(async move { load::run(&login, storm_shape).await });
    // Let the storm fill the bcrypt permits and their queue before probing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let storm = load::run(me, probe).await?;
    let storm_logins = storm_logins.await??;
    eprintln!(
        "probe in storm: p50 {:.2} ms p99 {:.2} ms; {:.1} logins/s",
        storm.p50_ms(),
        storm.p99_ms(),
        storm_logins.per_second()
    );
    check_no_failures("login storm", &storm_logins)?;
    Ok((idle, storm, storm_logins))
}

/// Scenario 1: alternates rounds of the bare server and authql, after a warm-up of each, and
/// sums the rounds of each side.
async fn compare_with_http(
    settings: &Settings,
    me: &Target,
    bare: &Target,
) -> anyhow::Result<(Outcome, Outcome, f64)> {
    let warm_up = Shape {
        duration: Duration::from_millis(1000),
        ..settings.closed(settings.connections)
    };
    load::run(bare, warm_up).await?;
    load::run(me, warm_up).await?;
    let (mut me_total, mut bare_total) = (Outcome::default(), Outcome::default());
    let mut ratios = Vec::new();
    for round in 0..settings.rounds.max(1) {
        let bare_round = load::run(bare, settings.closed(settings.connections)).await?;
        let me_round = load::run(me, settings.closed(settings.connections)).await?;
        check_no_failures("me", &me_round)?;
        eprintln!(
            "round {round}: bare {:.0}/s, me {:.0}/s",
            bare_round.per_second(),
            me_round.per_second()
        );
        ratios.push(me_round.per_second() / bare_round.per_second());
        add(&mut bare_total, bare_round);
        add(&mut me_total, me_round);
    }
    me_total.latencies_us.sort_unstable();
    bare_total.latencies_us.sort_unstable();
    Ok((me_total, bare_total, median(ratios)))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Scenario 5 on one backend: `me` on a small and a large database, rounds alternated.
/// `fresh(name)` gives the URL of a new, empty database. Returns (small, large, ratio of the
/// medians, peak RSS of the large server).
async fn growth(
    settings: &Settings,
    binary: &std::path::Path,
    authql_settings: &[(&str, String)],
    fresh: impl AsyncFn(&str) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<(Outcome, Outcome, f64, u64)> {
    let mut servers = Vec::new();
    for (name, users) in [
        ("authql_bench_small", 100u64),
        ("authql_bench_large", 100_000),
    ] {
        let url = fresh(name).await?;
        let server = Authql::start(binary, url.as_deref(), authql_settings).await?;
        let url = url.unwrap_or_else(|| server.database_url());
        let token = register(server.address, "bench@example.com").await?;
        let started = Instant::now();
        seed::seed(&url, users, 10).await?;
        eprintln!(
            "seeded {} session rows in {:.1} s",
            seed::session_rows(&url).await?,
            started.elapsed().as_secs_f64()
        );
        let me = me_target(server.address, &token);
        let warm_up = Shape {
            duration: Duration::from_millis(1000),
            ..settings.closed(settings.connections)
        };
        load::run(&me, warm_up).await?;
        servers.push((server, me));
    }
    let (mut small, mut large) = (Outcome::default(), Outcome::default());
    let (mut small_rates, mut large_rates) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds.max(1) {
        let small_round = load::run(&servers[0].1, settings.closed(settings.connections)).await?;
        let large_round = load::run(&servers[1].1, settings.closed(settings.connections)).await?;
        check_no_failures("me (growth)", &small_round)?;
        check_no_failures("me (growth)", &large_round)?;
        eprintln!(
            "growth round {round}: 1k rows {:.0}/s, 1M rows {:.0}/s",
            small_round.per_second(),
            large_round.per_second()
        );
        small_rates.push(small_round.per_second());
        large_rates.push(large_round.per_second());
        add(&mut small, small_round);
        add(&mut large, large_round);
    }
    small.latencies_us.sort_unstable();
    large.latencies_us.sort_unstable();
    let (_, peak) = servers[1].0.memory()?;
    Ok((
        small,
        large,
        median(large_rates) / median(small_rates),
        peak,
    ))
}

fn add(total: &mut Outcome, round: Outcome) {
    total.ok += round.ok;
    total.failed += round.failed;
    total.elapsed += round.elapsed;
    total.latencies_us.extend(round.latencies_us);
}

fn check_no_failures(what: &str, outcome: &Outcome) -> anyhow::Result<()> {
    if outcome.failed > 0 {
        bail!("{what}: {} requests failed", outcome.failed);
    }
    Ok(())
}

fn me_target(address: SocketAddr, token: &str) -> Target {
    Target {
        path: GRAPHQL_PATH,
        address,
        body: Bytes::from(json!({ "query": ME_QUERY }).to_string()),
        bearer: Some(token.to_owned()),
        failure_marker: FAILURE_MARKER,
    }
}

/// `/auth/verify` with `me`'s token: a GET without a body.
fn verify_target(me: &Target) -> Target {
    Target {
        path: "/auth/verify",
        body: Bytes::new(),
        ..me.clone()
    }
}

fn login_target(address: SocketAddr, email: &str) -> Target {
    let body = json!({
        "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        "variables": { "i": { "emailOrUsername": email, "password": PASSWORD } },
    });
    Target {
        path: GRAPHQL_PATH,
        address,
        body: Bytes::from(body.to_string()),
        bearer: None,
        failure_marker: FAILURE_MARKER,
    }
}

/// Registers an account and returns its access token.
async fn register(address: SocketAddr, email: &str) -> anyhow::Result<String> {
    let body = json!({
        "query": "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }",
        "variables": { "i": { "email": email, "password": PASSWORD } },
    });
    let answer = load::once(&Target {
        path: GRAPHQL_PATH,
        address,
        body: Bytes::from(body.to_string()),
        bearer: None,
        failure_marker: FAILURE_MARKER,
    })
    .await?;
    answer
        .pointer("/data/register/accessToken")
        .and_then(|token| token.as_str())
        .map(str::to_owned)
        .with_context(|| format!("register failed: {answer}"))
}

/// authql's answer to `me`, byte for byte: the baseline answers the same.
async fn me_answer(me: &Target) -> anyhow::Result<Bytes> {
    let mut sender = load::connect(me.address).await?;
    let (ok, body) = load::send(&mut sender, me).await?;
    if !ok {
        bail!("me failed: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

/// Median time of one bcrypt hash at `cost` of the pre-hash authql uses, on one thread.
fn bcrypt_hash_time(cost: u32) -> anyhow::Result<Duration> {
    let prehash = STANDARD.encode(Sha256::digest(PASSWORD.as_bytes()));
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        bcrypt::hash(&prehash, cost)?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[1])
}

/// Hashes per second that `threads` threads achieve side by side for `duration`: the limit as
/// the machine grants it now, with whatever else it runs.
fn bcrypt_capacity(cost: u32, threads: usize, duration: Duration) -> f64 {
    let prehash = STANDARD.encode(Sha256::digest(PASSWORD.as_bytes()));
    let started = Instant::now();
    let hashed: u32 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut hashed = 0;
                    while started.elapsed() < duration {
                        if bcrypt::hash(&prehash, cost).is_ok() {
                            hashed += 1;
                        }
                    }
                    hashed
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or(0))
            .sum()
    });
    f64::from(hashed) / started.elapsed().as_secs_f64()
}

fn throughput(outcome: &Outcome) -> String {
    format!(
        "{:.0} ({:.2} / {:.2} ms)",
        outcome.per_second(),
        outcome.p50_ms(),
        outcome.p99_ms()
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}
