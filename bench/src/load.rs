//! The load generator: HTTP/1.1 keep-alive connections on loopback, each a task that sends one
//! request at a time (closed loop) or on a fixed schedule (open loop), bounded by time and by a
//! request count.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The GraphQL endpoint.
pub const GRAPHQL_PATH: &str = "/graphql";

/// One kind of request, sent again and again.
#[derive(Clone)]
pub struct Target {
    pub address: SocketAddr,
    /// Where it is sent: a POST with `body` to [`GRAPHQL_PATH`], or a GET without one to any
    /// other path (`/auth/verify`).
    pub path: &'static str,
    pub body: Bytes,
    pub bearer: Option<String>,
    /// A byte string whose presence in the answer means the request failed (e.g. `"errors"`).
    pub failure_marker: &'static [u8],
}

/// How a run is bounded and paced.
#[derive(Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub duration: Duration,
    /// The whole run stops after this many requests, whatever the time.
    pub max_requests: u64,
    /// `None`: each connection sends its next request as soon as the last is answered.
    /// `Some(rate)`: requests per second over all connections, on a fixed schedule; latency is
    /// measured from the scheduled time, so a stalled server is not hidden by a stalled client.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Latencies of successful requests, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of latency, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }

    pub fn p50_ms(&self) -> f64 {
        self.quantile_ms(0.50)
    }

    pub fn p99_ms(&self) -> f64 {
        self.quantile_ms(0.99)
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies_us.extend(other.latencies_us);
    }
}

pub async fn connect(address: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    if !address.ip().is_loopback() {
        bail!("the benchmark only loads loopback addresses, not {address}");
    }
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request on `sender` and reads the whole answer.
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
) -> anyhow::Result<(bool, Bytes)> {
    let mut request = if target.path == GRAPHQL_PATH {
        Request::post(GRAPHQL_PATH).header(header::CONTENT_TYPE, "application/json")
    } else {
        Request::get(target.path)
    }
    .header(header::HOST, "127.0.0.1");
    if let Some(bearer) = &target.bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let request = request.body(Full::new(target.body.clone()))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let ok = response.status().is_success();
    let body = response.into_body().collect().await?.to_bytes();
    let failed = !ok
        || body
            .windows(target.failure_marker.len())
            .any(|window| window == target.failure_marker);
    Ok((!failed, body))
}

/// One request, on a fresh connection: for setting up (register) and checking answers.
pub async fn once(target: &Target) -> anyhow::Result<serde_json::Value> {
    let mut sender = connect(target.address).await?;
    let (_, body) = send(&mut sender, target).await?;
    serde_json::from_slice(&body).context("the answer is not JSON")
}

/// Runs `shape` against `target` and gathers every connection's results.
pub async fn run(target: &Target, shape: Shape) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let deadline = started + shape.duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(shape.connections);
    for index in 0..shape.connections {
        let sender = connect(target.address).await?;
        let target = target.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(connection_loop(
            sender, target, shape, index, started, deadline, sent,
        )));
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.merge(task.await??);
    }
    // Requests in flight at the deadline are finished (so the next phase starts on a quiet
    // server); the window is the planned duration unless the count bound ended it first.
    outcome.elapsed = started.elapsed().min(shape.duration);
    outcome.latencies_us.sort_unstable();
    Ok(outcome)
}

async fn connection_loop(
    mut sender: SendRequest<Full<Bytes>>,
    target: Target,
    shape: Shape,
    index: usize,
    started: Instant,
    deadline: Instant,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    // Open loop: this connection's share of the schedule, offset so connections interleave.
    let period = shape
        .rate
        .map(|rate| Duration::from_secs_f64(shape.connections as f64 / rate));
    let mut next =
        period.map(|period| started + period.mul_f64(index as f64 / shape.connections as f64));
    // When the last answer on this connection came.
    let mut answered = started;
    loop {
        let (scheduled, start) = match (next, period) {
            (Some(at), Some(period)) => {
                tokio::time::sleep_until(at.into()).await;
                next = Some(at + period);
                // tokio's timer wakes up to a millisecond after `at`. When the connection was
                // free at `at`, that lateness is the client's, not the server's: latency counts
                // from the wake-up. When the last answer came after `at`, the server held the
                // request back and latency counts from `at` (no coordinated omission).
                (at, if answered <= at { Instant::now() } else { at })
            }
            _ => {
                let now = Instant::now();
                (now, now)
            }
        };
        if scheduled >= deadline || sent.fetch_add(1, Ordering::Relaxed) >= shape.max_requests {
            break;
        }
        let (ok, _) = send(&mut sender, &target).await?;
        answered = Instant::now();
        if period.is_none() && answered > deadline {
            // Closed loop: throughput counts the answers that came within the window.
            break;
        }
        if ok {
            let micros = answered.duration_since(start).as_micros();
            outcome.ok += 1;
            outcome
                .latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        } else {
            outcome.failed += 1;
        }
    }
    Ok(outcome)
}
