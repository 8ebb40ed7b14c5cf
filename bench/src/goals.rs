//! The goals of the third performance round (issue 23), printed as one table at the end of a
//! run, with what each row measured and whether it is met; and the two measurements only they
//! need:
//!
//! - **pgbench's own limit.** `pgbench -S -M prepared` (one primary-key `SELECT` per
//!   transaction, prepared once per connection) at the same client count, on the same
//!   throwaway PostgreSQL server, alternated with rounds of `me` on PostgreSQL: what PostgreSQL
//!   serves when every request costs one statement. authql can do better than that limit only
//!   by sending fewer statements than requests (coalesced session lookups).
//! - **Revocations seen at once.** Two authql instances on one PostgreSQL database; while `me`
//!   load keeps the first one's session lookups batched, `REVOCATIONS` times a session is
//!   revoked through the second instance and, as soon as that answers, its access token is sent
//!   to the first: every one of those requests must be refused.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    FAILURE_MARKER, PASSWORD,
    load::{self, GRAPHQL_PATH, Outcome, Shape, Target},
    median,
};

/// Revocations checked by [`revocations_seen`].
pub const REVOCATIONS: usize = 100;

/// One row of the goal table.
pub struct Goal {
    pub row: &'static str,
    /// What was measured, as printed.
    pub measured: String,
    pub goal: &'static str,
    /// `None`: not measured in this run (say why in `measured`).
    pub met: Option<bool>,
}

/// Prints the goal table (markdown).
pub fn print(goals: &[Goal]) {
    println!();
    println!("Goals of the third performance round:");
    println!();
    println!("| row | measured | goal | met |");
    println!("|---|---|---|---|");
    for goal in goals {
        let met = match goal.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        println!(
            "| {} | {} | {} | {met} |",
            goal.row, goal.measured, goal.goal
        );
    }
}

/// The `pgbench` of the machine's PostgreSQL (the folder `scripts/throwaway-postgres.sh`
/// finds), else the one on `PATH`.
fn pgbench_binary(script: &str) -> String {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{script}' && echo \"$(postgres_bin_dir)/pgbench\""
        ))
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|path| path.trim().to_owned())
        .filter(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| "pgbench".to_owned())
}

/// pgbench's tables (scale 1: 100,000 accounts) in the database at `url`.
pub fn pgbench_init(script: &str, url: &str) -> anyhow::Result<()> {
    let output = Command::new(pgbench_binary(script))
        .args(["-i", "-q", "-s", "1", url])
        .output()
        .context("could not run pgbench")?;
    if !output.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Transactions per second of `pgbench -n -S -M prepared` with `clients` clients (2 threads)
/// for `seconds`, against the database at `url` (after [`pgbench_init`]).
pub fn pgbench_tps(script: &str, url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let output = Command::new(pgbench_binary(script))
        .args(["-n", "-S", "-M", "prepared", "-j", "2"])
        .args([
            "-c",
            &clients.to_string(),
            "-T",
            &seconds.max(1).to_string(),
        ])
        .arg(url)
        .output()
        .context("could not run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // "tps = 23456.789012 (without initial connection time)"
    stdout
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("tps = ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|tps| tps.parse().ok())
        })
        .with_context(|| format!("pgbench printed no tps: {stdout}"))
}

/// Rounds of pgbench and of `me` alternated; returns `me`'s rounds, pgbench's tps per round and
/// the median of the per-round ratios `me / pgbench`.
pub async fn against_pgbench(
    me: &Target,
    shape: Shape,
    rounds: usize,
    script: &str,
    pgbench_url: &str,
) -> anyhow::Result<(Outcome, Vec<f64>, f64)> {
    let seconds = shape.duration.as_secs_f64().ceil() as u64;
    let (mut total, mut tps_rounds, mut ratios) = (Outcome::default(), Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let (script, url, clients) = (script.to_owned(), pgbench_url.to_owned(), shape.connections);
        let tps = tokio::task::spawn_blocking(move || pgbench_tps(&script, &url, clients, seconds))
            .await??;
        let me_round = load::run(me, shape).await?;
        crate::check_no_failures("me (against pgbench)", &me_round)?;
        eprintln!(
            "pgbench round {round}: pgbench -S -M prepared {tps:.0} tps, me on PostgreSQL {:.0}/s",
            me_round.per_second()
        );
        ratios.push(me_round.per_second() / tps);
        tps_rounds.push(tps);
        total.ok += me_round.ok;
        total.failed += me_round.failed;
        total.elapsed += me_round.elapsed;
        total.latencies_us.extend(me_round.latencies_us);
    }
    total.latencies_us.sort_unstable();
    Ok((total, tps_rounds, median(ratios)))
}

/// Two instances `a` and `b` on one database: `REVOCATIONS` sessions, each revoked through `b`
/// and then, at once, used on `a` while `load` keeps `a`'s lookups batched. Returns how many of
/// those requests `a` still answered as signed in (0 is the goal).
pub async fn revocations_seen(a: SocketAddr, b: SocketAddr, load: Shape) -> anyhow::Result<usize> {
    let email = "revocations@example.com";
    let keep = register(b, email).await?;
    let background = {
        let target = me_target(a, &keep);
        tokio::spawn(async move { load::run(&target, load).await })
    };
    let mut stale = 0;
    for _ in 0..REVOCATIONS {
        let token = login(b, email).await?;
        // Signed in on `a` first, so that a stale answer could come from a warm path.
        if !signed_in(a, &token).await? {
            bail!("a fresh session was refused before its revocation");
        }
        let revoked = call(
            b,
            Some(&token),
            json!({
                "query": "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }",
                "variables": { "i": { "tokens": [token] } },
            }),
        )
        .await?;
        if revoked.pointer("/data/revokeTokens/revokedCount") != Some(&json!(1)) {
            bail!("revokeTokens failed: {revoked}");
        }
        if signed_in(a, &token).await? {
            stale += 1;
        }
    }
    // The load only had to run meanwhile; what it measured does not matter here.
    background.abort();
    Ok(stale)
}

fn me_target(address: SocketAddr, token: &str) -> Target {
    Target {
        path: GRAPHQL_PATH,
        address,
        body: Bytes::from(json!({ "query": "{ me { id } }" }).to_string()),
        bearer: Some(token.to_owned()),
        failure_marker: FAILURE_MARKER,
    }
}

/// Whether `me` with `token` answers a user; an error coded `UNAUTHENTICATED` is `false`, any
/// other answer fails the run.
async fn signed_in(address: SocketAddr, token: &str) -> anyhow::Result<bool> {
    let answer = load::once(&me_target(address, token)).await?;
    if answer.pointer("/data/me/id").is_some_and(Value::is_string) {
        return Ok(true);
    }
    match answer.pointer("/errors/0/extensions/code") {
        Some(code) if code == "UNAUTHENTICATED" => Ok(false),
        _ => bail!("me answered neither a user nor UNAUTHENTICATED: {answer}"),
    }
}

async fn call(address: SocketAddr, bearer: Option<&str>, body: Value) -> anyhow::Result<Value> {
    load::once(&Target {
        path: GRAPHQL_PATH,
        address,
        body: Bytes::from(body.to_string()),
        bearer: bearer.map(str::to_owned),
        failure_marker: FAILURE_MARKER,
    })
    .await
}

async fn register(address: SocketAddr, email: &str) -> anyhow::Result<String> {
    let answer = call(
        address,
        None,
        json!({
            "query": "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }",
            "variables": { "i": { "email": email, "password": PASSWORD } },
        }),
    )
    .await?;
    token_of(&answer, "register")
}

async fn login(address: SocketAddr, email: &str) -> anyhow::Result<String> {
    let answer = call(
        address,
        None,
        json!({
            "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            "variables": { "i": { "emailOrUsername": email, "password": PASSWORD } },
        }),
    )
    .await?;
    token_of(&answer, "login")
}

fn token_of(answer: &Value, field: &str) -> anyhow::Result<String> {
    answer
        .pointer(&format!("/data/{field}/accessToken"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{field} failed: {answer}"))
}

/// The longest the load beside the revocations runs; it is stopped once they are done.
pub const REVOCATION_LOAD: Duration = Duration::from_secs(60);
