//! Prometheus metrics: the `metrics` facade, recorded by `metrics-exporter-prometheus` and
//! rendered in the Prometheus text format (exposition format 0.0.4) at `GET /metrics`.
//!
//! Every metric and its labels (README, "Operating authql"). Label values are bounded: operation
//! names are root fields of the schema, outcomes and codes come from authql's own lists, never
//! from user input.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `authql_graphql_requests_total` | counter | `operation`, `outcome` |
//! | `authql_graphql_request_duration_seconds` | histogram | `operation`, `outcome` |
//! | `authql_logins_total` | counter | `outcome` |
//! | `authql_refreshes_total` | counter | `outcome` |
//! | `authql_rate_limited_total` | counter | `operation`, `scope` |
//! | `authql_live_sessions` | gauge | |
//! | `authql_database_connections` | gauge | `state` (`in_use`, `idle`) |
//! | `authql_password_hash_queue_depth` | gauge | |
//! | `authql_password_hash_duration_seconds` | histogram | `operation` (`hash`, `verify`) |
//! | `authql_background_task_restarts_total` | counter | `task` (`session_events`, `admin_socket`, `mail_outbox`) |
//! | `authql_mails_total` | counter | `kind`, `outcome` (`sent`, `deferred`, `rejected`, `expired`) |
//! | `authql_mail_outbox_depth` | gauge | |
//! | `authql_webhooks_total` | counter | `type` (the event type), `outcome` (`delivered`, `deferred`, `expired`) |

use std::{
    collections::HashMap,
    sync::{OnceLock, PoisonError},
};

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::PoolStatus;

/// Histogram buckets, in seconds: from a cached `me` (a fraction of a millisecond) to a bcrypt
/// hash at a high cost (a second or more).
const BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use. One per process: the tests start many
/// servers in one process, and those share it.
pub fn handle() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS_SECONDS)
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (a library user's own) keeps recording; this
        // handle then renders nothing but the descriptions.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// How often recorded histogram samples are folded into their buckets when nobody scrapes:
/// until then they are kept one by one (about 8 bytes each, so a busy instance would grow by
/// megabytes a second).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets, every `UPKEEP_INTERVAL`, for good.
pub async fn upkeep_periodically() {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticks.tick().await;
        handle().run_upkeep();
    }
}

/// The metrics in the Prometheus text format, with the gauges read at scrape time refreshed.
pub fn render(pool: Option<PoolStatus>) -> String {
    let handle = handle();
    if let Some(pool) = pool {
        gauge!("authql_database_connections", "state" => "in_use").set(pool.in_use as f64);
        gauge!("authql_database_connections", "state" => "idle").set(pool.idle as f64);
    }
    // Drains the histograms' recent samples into their buckets; without a listener of the
    // exporter's own, nothing else does.
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_counter!(
        "authql_graphql_requests_total",
        "GraphQL requests answered, by root field (operation) and outcome (OK or the first error's code)"
    );
    describe_histogram!(
        "authql_graphql_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a GraphQL request's start to its response, by operation and outcome"
    );
    describe_counter!("authql_logins_total", "Logins, by outcome");
    describe_counter!(
        "authql_resource_requests_total",
        "/auth/verify and /oauth/introspect answers, by endpoint and outcome (OK or the error code)"
    );
    describe_histogram!(
        "authql_resource_request_duration_seconds",
        "Time to answer /auth/verify and /oauth/introspect, by endpoint and outcome"
    );
    describe_counter!(
        "authql_refreshes_total",
        "Refresh-token exchanges, by outcome (rotated, grace_replay, reuse_detected, expired, ...)"
    );
    describe_counter!(
        "authql_rate_limited_total",
        "Requests refused by a rate limit, by operation and bucket scope (ip, account)"
    );
    describe_gauge!(
        "authql_live_sessions",
        "Sessions neither expired nor idle, counted at each scrape"
    );
    describe_gauge!(
        "authql_database_connections",
        "Database connections of this instance, by state (in_use, idle)"
    );
    describe_gauge!(
        "authql_password_hash_queue_depth",
        "Password hashes and verifications waiting for a hashing thread"
    );
    describe_histogram!(
        "authql_password_hash_duration_seconds",
        metrics::Unit::Seconds,
        "Time one bcrypt hash or verification takes on its thread"
    );
    describe_counter!(
        "authql_background_task_restarts_total",
        "Background tasks that failed and were started again, by task (session_events, admin_socket, mail_outbox)"
    );
    describe_counter!(
        "authql_mails_total",
        "Mails the outbox sender finished an attempt at, by kind and outcome (sent; deferred: tried again later; rejected: refused for good by the server; expired: its link expired first)"
    );
    describe_gauge!(
        "authql_mail_outbox_depth",
        "Mails and webhook deliveries waiting in the outbox (shared by every instance on the database), counted at each scrape"
    );
    describe_counter!(
        "authql_webhooks_total",
        "Webhook deliveries (one event to one endpoint) the outbox sender finished an attempt at, by event type and outcome (delivered: a 2xx answer; deferred: tried again later; expired: given up at the end of the retry period)"
    );
}

/// The outbox sender finished an attempt at a webhook delivery of `event_type`.
pub fn webhook(event_type: &'static str, outcome: &'static str) {
    counter!("authql_webhooks_total", "type" => event_type, "outcome" => outcome).increment(1);
}

/// The outbox sender finished an attempt at a mail of `kind`.
pub fn mail(kind: &'static str, outcome: &'static str) {
    counter!("authql_mails_total", "kind" => kind, "outcome" => outcome).increment(1);
}

/// A background task failed and is started again after a pause.
pub fn background_task_restart(task: &'static str) {
    counter!("authql_background_task_restarts_total", "task" => task).increment(1);
}

/// One GraphQL request: the root field it ran (`operation`), its outcome (`OK` or the first
/// error's code) and how long it took, in seconds.
pub fn graphql_request(operation: &str, outcome: &str, seconds: f64) {
    static HANDLES: RequestHandles = RequestHandles::new(
        "authql_graphql_requests_total",
        "authql_graphql_request_duration_seconds",
        "operation",
    );
    HANDLES.record(operation, outcome, seconds);
}

/// One `/auth/verify` or `/oauth/introspect` answer: its endpoint, its outcome (`OK` or the
/// error's code) and how long it took.
pub fn resource_request(endpoint: &'static str, outcome: &'static str, seconds: f64) {
    static HANDLES: RequestHandles = RequestHandles::new(
        "authql_resource_requests_total",
        "authql_resource_request_duration_seconds",
        "endpoint",
    );
    HANDLES.record(endpoint, outcome, seconds);
}

/// The handles of each label pair: what ran, then its outcome.
type ByLabels = HashMap<Box<str>, HashMap<Box<str>, (Counter, Histogram)>>;

/// A request counter and a duration histogram labelled by what ran and its `outcome`, with the
/// handle of each label pair made once: recording a request then allocates nothing and skips
/// the registry, which builds and hashes a key on every `counter!` (its labels are bounded, so
/// the handles are too).
struct RequestHandles {
    counter: &'static str,
    histogram: &'static str,
    what: &'static str,
    made: std::sync::RwLock<Option<ByLabels>>,
}

impl RequestHandles {
    const fn new(counter: &'static str, histogram: &'static str, what: &'static str) -> Self {
        Self {
            counter,
            histogram,
            what,
            made: std::sync::RwLock::new(None),
        }
    }

    fn record(&self, what: &str, outcome: &str, seconds: f64) {
        let record = |(counter, histogram): &(Counter, Histogram)| {
            counter.increment(1);
            histogram.record(seconds);
        };
        if let Some(handles) = read(&self.made)
            .as_ref()
            .and_then(|made| made.get(what))
            .and_then(|outcomes| outcomes.get(outcome))
        {
            return record(handles);
        }
        let labels = [
            (self.what, what.to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        let handles = (
            counter!(self.counter, &labels),
            histogram!(self.histogram, &labels),
        );
        record(&handles);
        let mut made = self.made.write().unwrap_or_else(PoisonError::into_inner);
        made.get_or_insert_default()
            .entry(what.into())
            .or_default()
            .insert(outcome.into(), handles);
    }
}

fn read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn login(outcome: &'static str) {
    counter!("authql_logins_total", "outcome" => outcome).increment(1);
}

pub fn refresh(outcome: &'static str) {
    counter!("authql_refreshes_total", "outcome" => outcome).increment(1);
}

pub fn rate_limited(operation: &'static str, scope: &'static str) {
    counter!("authql_rate_limited_total", "operation" => operation, "scope" => scope).increment(1);
}

pub fn outbox_depth(depth: u64) {
    gauge!("authql_mail_outbox_depth").set(depth as f64);
}

pub fn live_sessions(count: u64) {
    gauge!("authql_live_sessions").set(count as f64);
}

/// A hash or verification joined (+1) or left (-1) the queue.
pub fn hash_queue(change: f64) {
    gauge!("authql_password_hash_queue_depth").increment(change);
}

pub fn hash_duration(operation: &'static str, seconds: f64) {
    histogram!("authql_password_hash_duration_seconds", "operation" => operation).record(seconds);
}
