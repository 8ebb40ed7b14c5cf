//! What only the MongoDB backend has to prove (issue 11): its indexes, and that registration
//! never leaves a user without a session with or without transactions. Everything else about it
//! is proven by the whole suite, which the MongoDB pass of `scripts/test` runs against it.

use std::process::{Child, Command, Stdio};

use bson::{Document, doc};
use serde_json::json;

use authql::store::{MongoStore, PoolSettings};

use crate::helpers::*;

/// The plan MongoDB chose for `command`, as text.
async fn winning_plan(database: &mongodb::Database, command: Document) -> String {
    let explained = database
        .run_command(doc! { "explain": command, "verbosity": "queryPlanner" })
        .await
        .expect("explain runs");
    let plan = explained
        .get_document("queryPlanner")
        .and_then(|planner| planner.get_document("winningPlan"))
        .expect("a winning plan");
    plan.to_string()
}

#[tokio::test]
#[ignore = "needs MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn every_per_request_lookup_uses_an_index() {
    if mongodb_url().is_none() {
        return; // The PostgreSQL pass: tests/api/instances.rs checks its plans.
    }
    let app = spawn_app().await;
    let account = app.register("plans@x.com").await;
    let database = mongodb_database(&app.database_url).await;
    let id = bson::Uuid::from(account.session_id.parse::<uuid::Uuid>().unwrap());
    let now = bson::DateTime::now();
    let live = doc! { "expires_at": { "$gt": now }, "idle_expires_at": { "$gt": now } };
    let mut guard = doc! { "_id": id, "access_jti": id };
    guard.extend(live.clone());
    // As the store sends them (src/store/mongo.rs), hints included.
    let by_id = doc! { "_id": 1 };
    let by_user = doc! { "user_id": 1, "created_at": -1 };
    let lookups = [
        // The guard: a session by id and access jti; then its user by id.
        doc! { "find": "sessions", "filter": guard, "hint": by_id.clone() },
        doc! { "find": "users", "filter": { "_id": id } },
        // Refresh: the conditional rotation.
        doc! { "findAndModify": "sessions",
        "query": { "_id": id, "refresh_jti": id, "expires_at": { "$gt": now } },
        "update": { "$set": { "refresh_jti": id } }, "hint": by_id.clone() },
        // mySessions; revokeOtherSessions and changePassword (ids by user, then by id);
        // revokeTokens (one findAndModify per id).
        doc! { "find": "sessions", "filter": { "user_id": id, "expires_at": { "$gt": now } },
        "sort": { "created_at": -1, "_id": -1 }, "hint": by_user },
        doc! { "find": "sessions", "filter": { "user_id": id } },
        doc! { "find": "sessions", "filter": { "_id": { "$in": [id] } } },
        doc! { "findAndModify": "sessions", "query": { "_id": id, "user_id": id },
        "remove": true, "hint": by_id.clone() },
        // Login: by email, then by username.
        doc! { "find": "users", "filter": { "email_normalized": "a@x.com" } },
        doc! { "find": "users", "filter": { "username_normalized": "a@x.com" } },
        // Pruning, by each rule.
        doc! { "find": "sessions", "filter": { "expires_at": { "$lte": now } } },
        doc! { "find": "sessions", "filter": { "idle_expires_at": { "$lte": now } } },
        // The rate-limit buckets: one by key (with its condition), and their pruning.
        doc! { "findAndModify": "rate_limit_buckets",
        "query": { "_id": "ip:203.0.113.9", "$expr": { "$lte": ["$tat", 0_i64] } },
        "update": [{ "$set": { "tat": 1_i64 } }], "upsert": true, "hint": by_id },
        doc! { "find": "rate_limit_buckets", "filter": { "tat": { "$lt": 0_i64 } } },
        // One-time tokens (issue 18): taken by digest, looked at by digest, a user's ended by
        // purpose, pruned by expiry.
        doc! { "findAndModify": "one_time_tokens",
        "query": { "digest": "d", "purpose": { "$in": ["password_reset"] }, "used_at": null,
        "expires_at": { "$gt": now } },
        "update": { "$set": { "used_at": now } }, "hint": { "digest": 1 } },
        doc! { "find": "one_time_tokens", "filter": { "digest": "d" } },
        // (Updates and deletes as the finds of their filters: SecantusDB plans only those.)
        doc! { "find": "one_time_tokens",
        "filter": { "user_id": id, "purpose": "password_reset", "used_at": null },
        "hint": { "user_id": 1, "purpose": 1 } },
        doc! { "find": "one_time_tokens", "filter": { "expires_at": { "$lt": now } } },
        // The outbox: due mails by `next_attempt_at`, each leased by id, sent ones deleted.
        doc! { "find": "mail_outbox", "filter": { "next_attempt_at": { "$lte": now },
        "$or": [{ "claimed_until": null }, { "claimed_until": { "$lt": now } }] },
        "sort": { "next_attempt_at": 1 }, "hint": { "next_attempt_at": 1 } },
        doc! { "findAndModify": "mail_outbox",
        "query": { "_id": id, "$or": [{ "claimed_until": null }, { "claimed_until": { "$lt": now } }] },
        "update": { "$set": { "claimed_until": now } }, "hint": { "_id": 1 } },
        doc! { "find": "mail_outbox", "filter": { "_id": id } },
    ];
    for lookup in lookups {
        let plan = winning_plan(&database, lookup.clone()).await;
        assert!(
            !plan.contains("COLLSCAN"),
            "a collection scan for {lookup}: {plan}"
        );
        assert!(
            ["IXSCAN", "IDHACK", "EXPRESS"]
                .iter()
                .any(|stage| plan.contains(stage)),
            "no index for {lookup}: {plan}"
        );
    }
}

/// The indexes on `collection`: name → (keys, unique, TTL seconds).
async fn indexes(
    database_url: &str,
    collection: &str,
) -> Vec<(String, Document, bool, Option<i64>)> {
    let listed = mongodb_database(database_url)
        .await
        .run_command(doc! { "listIndexes": collection })
        .await
        .unwrap();
    let batch = listed
        .get_document("cursor")
        .and_then(|cursor| cursor.get_array("firstBatch"))
        .unwrap();
    batch
        .iter()
        .filter_map(|index| index.as_document())
        .map(|index| {
            (
                index.get_str("name").unwrap_or_default().to_owned(),
                index.get_document("key").unwrap().clone(),
                index.get_bool("unique").unwrap_or(false),
                index
                    .get("expireAfterSeconds")
                    .and_then(|ttl| ttl.as_i64().or(ttl.as_i32().map(i64::from))),
            )
        })
        .collect()
}

fn ttl_of(indexes: &[(String, Document, bool, Option<i64>)]) -> Option<i64> {
    indexes
        .iter()
        .find(|(name, ..)| name == "expires_at_1")
        .expect("an index on expires_at")
        .3
}

#[tokio::test]
#[ignore = "needs MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn indexes_are_made_at_start_up_and_the_expiry_ttl_follows_the_pruning_settings() {
    if mongodb_url().is_none() {
        return;
    }
    let first = spawn_app_with(|config| config.prune_retention_seconds = 3600).await;
    let users = indexes(&first.database_url, "users").await;
    for field in ["email_normalized", "username_normalized"] {
        assert!(
            users
                .iter()
                .any(|(_, keys, unique, _)| *unique && keys == &doc! { field: 1 }),
            "a unique index on users.{field}: {users:?}"
        );
    }
    let sessions = indexes(&first.database_url, "sessions").await;
    for field in ["access_jti", "refresh_jti"] {
        assert!(
            sessions
                .iter()
                .any(|(_, keys, unique, _)| *unique && keys == &doc! { field: 1 }),
            "a unique index on sessions.{field}: {sessions:?}"
        );
    }
    assert_eq!(ttl_of(&sessions), Some(3600));
    let account = first.register("ttl@x.com").await;

    // Another instance with another retention: the TTL follows; creating the rest again is a
    // no-op, and nothing stored is lost.
    let second = spawn_instance_on(&first, |config| config.prune_retention_seconds = 60).await;
    assert_eq!(
        ttl_of(&indexes(&first.database_url, "sessions").await),
        Some(60)
    );
    // Pruning off: MongoDB must not delete sessions by itself either.
    let third = spawn_instance_on(&first, |config| config.prune_interval_seconds = 0).await;
    assert_eq!(
        ttl_of(&indexes(&first.database_url, "sessions").await),
        None
    );
    for app in [&first, &second, &third] {
        assert_no_errors(&app.me(&account.access_token).await);
    }
}

/// A SecantusDB server of this test's own, in memory, with fail points allowed: a replica set
/// (transactions) or a standalone server (none). Killed when dropped.
struct OwnServer {
    child: Child,
    port: u16,
}

impl OwnServer {
    async fn start(replica_set: bool) -> Self {
        let launcher = std::env::var("TEST_SECANTUSD")
            .expect("TEST_SECANTUSD names SecantusDB's launcher (scripts/test sets it)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let mut command = Command::new(launcher);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--storage-path", ":memory:", "--enable-test-commands"])
            .args(["--log-level", "WARNING"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !replica_set {
            command.arg("--standalone");
        }
        let server = Self {
            child: command.spawn().expect("SecantusDB starts"),
            port,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "SecantusDB did not listen within 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/authql", self.port)
    }

    /// Arms MongoDB's `failCommand` fail point: the first `insert` passes, every later one has
    /// its connection closed, as when the server goes away between two writes.
    async fn fail_inserts_after_the_first(&self) {
        self.fail_point(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "skip": 1 },
            "data": { "failCommands": ["insert"], "closeConnection": true },
        })
        .await;
    }

    async fn disarm(&self) {
        self.fail_point(doc! { "configureFailPoint": "failCommand", "mode": "off" })
            .await;
    }

    async fn fail_point(&self, command: Document) {
        mongodb::Client::with_uri_str(format!("{}?directConnection=true", self.url()))
            .await
            .unwrap()
            .database("admin")
            .run_command(command)
            .await
            .expect("the fail point is set");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "needs MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn a_failure_between_the_writes_of_register_leaves_no_user_without_a_session() {
    if mongodb_url().is_none() {
        return;
    }
    for replica_set in [true, false] {
        let server = OwnServer::start(replica_set).await;
        let pool = PoolSettings {
            max_connections: None,
            connect_timeout: std::time::Duration::from_secs(5),
            acquire_timeout: std::time::Duration::from_secs(5),
            busy_timeout: std::time::Duration::from_secs(5),
        };
        let store = MongoStore::connect(&server.url(), pool).await.unwrap();
        assert_eq!(
            store.has_transactions(),
            replica_set,
            "both ways of writing are tried"
        );
        let url = server.url();
        let app = spawn_app_with(move |config| config.database_url = url).await;
        let kept = app.register("kept@x.com").await;

        server.fail_inserts_after_the_first().await;
        let failed = app
            .register_raw("between@x.com", PASSWORD, Some("between"))
            .await;
        server.disarm().await;
        assert_eq!(error_code(&failed), "SERVICE_UNAVAILABLE", "{failed}");

        let users = app.user_rows().await;
        assert_eq!(users.len(), 1, "transactions: {replica_set}");
        let sessions = app.session_rows().await;
        assert!(
            sessions
                .iter()
                .all(|session| session.user_id == users[0].id),
            "no session of a user that is not there (transactions: {replica_set})"
        );
        assert!(
            users
                .iter()
                .all(|user| sessions.iter().any(|session| session.user_id == user.id)),
            "no user without a session (transactions: {replica_set})"
        );
        // Nothing was lost: the first account works, the second can register now.
        assert_no_errors(&app.me(&kept.access_token).await);
        let again = app
            .register_raw("between@x.com", PASSWORD, Some("between"))
            .await;
        assert_no_errors(&again);
        let me = app
            .me(&string_at(&again, "/data/register/accessToken"))
            .await;
        assert_eq!(me["data"]["me"]["email"], json!("between@x.com"));
    }
}
