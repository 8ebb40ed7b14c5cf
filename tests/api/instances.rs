//! One PostgreSQL or MongoDB database behind several stateless authql processes (issues 4 and
//! 11). These need a server: they run in the PostgreSQL and MongoDB passes of `scripts/test`
//! (`--include-ignored`).

use std::collections::HashSet;

use futures::future::join_all;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};
use serde_json::{Value, json};

use crate::helpers::*;

const NEEDS_SHARED: &str = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)";

/// `count` authql processes on one fresh PostgreSQL or MongoDB database, started at the same
/// time.
async fn instances(
    dir: &tempfile::TempDir,
    count: usize,
    extra_env: &[(&str, &str)],
) -> (String, Vec<RunningBinary>) {
    assert!(shared_database_url().is_some(), "{NEEDS_SHARED}");
    let database_url = fresh_database_url(dir.path()).await;
    let folders: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut env = vec![
        ("DATABASE_URL", database_url.as_str()),
        ("BCRYPT_COST", "4"),
        ("RATE_LIMIT_IP_PER_MINUTE", "0"),
        ("RATE_LIMIT_ACCOUNT_PER_MINUTE", "0"),
        ("RUST_LOG", "warn"),
    ];
    env.extend_from_slice(extra_env);
    let started = join_all(
        folders
            .iter()
            .map(|folder| start_binary(folder.path(), &env)),
    )
    .await;
    // The folders only hold logs; keep them alive as long as the processes.
    std::mem::forget(folders);
    (database_url, started)
}

async fn gql(
    instance: &RunningBinary,
    query: &str,
    variables: Value,
    token: Option<&str>,
) -> Value {
    let client = reqwest::Client::new();
    let mut request = client
        .post(instance.url("/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

const REGISTER: &str = "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken session { id } } }";
const REFRESH: &str =
    "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken } }";

#[tokio::test]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn a_token_from_one_instance_works_on_another_and_revocation_is_seen_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, nodes) = instances(
        &dir,
        2,
        &[("JWT_SECRET_KEY", "one secret shared by every instance here")],
    )
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let registered = gql(
        a,
        REGISTER,
        json!({ "i": { "email": "multi@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    let access = string_at(&registered, "/data/register/accessToken");
    let me = gql(b, "{ me { email } }", json!({}), Some(&access)).await;
    assert_eq!(me["data"]["me"]["email"], json!("multi@x.com"), "{me}");

    let session_id = string_at(&registered, "/data/register/session/id");
    let revoked = gql(
        b,
        "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }",
        json!({ "i": { "sessionIds": [session_id] } }),
        Some(&access),
    )
    .await;
    assert_eq!(
        revoked["data"]["revokeTokens"]["revokedCount"],
        json!(1),
        "{revoked}"
    );
    // The very next request on A is refused: there is no cache to go stale.
    assert_unauthenticated(
        &gql(a, "{ me { id } }", json!({}), Some(&access)).await,
        "REVOKED",
    );
}

/// Session lookups are coalesced on PostgreSQL and MongoDB (issue 23): a request's lookup may
/// go out in one statement with many others. Each is still sent after its request arrived, so
/// a revocation committed before the request is seen: while 32 clients keep instance A's
/// lookups batched, 40 sessions are each revoked through B and then used on A at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn a_batched_lookup_refuses_a_session_revoked_an_instant_before_its_request() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, nodes) = instances(
        &dir,
        2,
        &[("JWT_SECRET_KEY", "one secret shared by every instance here")],
    )
    .await;
    let nodes = Arc::new(nodes);
    let registered = gql(
        &nodes[0],
        REGISTER,
        json!({ "i": { "email": "batched@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    let keep = string_at(&registered, "/data/register/accessToken");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..32)
        .map(|_| {
            let (nodes, keep, stop, answered) =
                (nodes.clone(), keep.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let me = gql(&nodes[0], "{ me { id } }", json!({}), Some(&keep)).await;
                    assert!(me["data"]["me"]["id"].is_string(), "{me}");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let (a, b) = (&nodes[0], &nodes[1]);
    for _ in 0..40 {
        let login = gql(
            b,
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "emailOrUsername": "batched@x.com", "password": PASSWORD } }),
            None,
        )
        .await;
        let access = string_at(&login, "/data/login/accessToken");
        let me = gql(a, "{ me { id } }", json!({}), Some(&access)).await;
        assert!(me["data"]["me"]["id"].is_string(), "{me}");
        let revoked = gql(
            b,
            "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }",
            json!({ "i": { "tokens": [access] } }),
            Some(&access),
        )
        .await;
        assert_eq!(
            revoked["data"]["revokeTokens"]["revokedCount"],
            json!(1),
            "{revoked}"
        );
        assert_unauthenticated(
            &gql(a, "{ me { id } }", json!({}), Some(&access)).await,
            "REVOKED",
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        answered.load(Ordering::Relaxed) > 100,
        "the load ran beside"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn fifty_parallel_refreshes_across_instances_give_exactly_one_new_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, nodes) = instances(
        &dir,
        3,
        &[("JWT_SECRET_KEY", "one secret shared by every instance here")],
    )
    .await;
    let registered = gql(
        &nodes[0],
        REGISTER,
        json!({ "i": { "email": "race@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    let refresh = string_at(&registered, "/data/register/refreshToken");

    let answers = join_all((0..50).map(|i| {
        gql(
            &nodes[i % nodes.len()],
            REFRESH,
            json!({ "t": refresh }),
            None,
        )
    }))
    .await;
    let pairs: HashSet<(String, String)> = answers
        .iter()
        .map(|body| {
            assert_no_errors(body);
            (
                string_at(body, "/data/refresh/accessToken"),
                string_at(body, "/data/refresh/refreshToken"),
            )
        })
        .collect();
    assert_eq!(
        pairs.len(),
        1,
        "one rotation; the repeats within the grace window get its pair"
    );
    let (access, new_refresh) = pairs.into_iter().next().unwrap();

    let rows = session_rows_in(&database_url).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].refresh_jti.to_string(), jti_of(&new_refresh));
    assert_eq!(
        rows[0].previous_refresh_jti.map(|jti| jti.to_string()),
        Some(jti_of(&refresh))
    );
    for node in &nodes {
        assert_no_errors(&gql(node, "{ me { id } }", json!({}), Some(&access)).await);
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn fifty_parallel_registrations_of_one_email_across_instances_make_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, nodes) = instances(
        &dir,
        3,
        &[("JWT_SECRET_KEY", "one secret shared by every instance here")],
    )
    .await;
    let answers = join_all((0..50).map(|i| {
        // Case and spaces vary: it is still one email.
        let email = if i % 2 == 0 { "Same@X.com".to_owned() } else { format!(" same@x.COM{}", " ".repeat(i % 3)) };
        gql(&nodes[i % nodes.len()], REGISTER, json!({ "i": { "email": email, "password": PASSWORD, "username": format!("same{i}") } }), None)
    }))
    .await;
    let created = answers
        .iter()
        .filter(|body| body.get("errors").is_none())
        .count();
    assert_eq!(created, 1, "{answers:?}");
    for refused in answers.iter().filter(|body| body.get("errors").is_some()) {
        assert_eq!(error_code(refused), "EMAIL_TAKEN", "{refused}");
    }
    assert_eq!(user_rows_in(&database_url).await.len(), 1);
    assert_eq!(
        session_rows_in(&database_url).await.len(),
        1,
        "no session without its user"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn instances_started_together_without_a_secret_agree_on_the_generated_one() {
    let dir = tempfile::tempdir().unwrap();
    // A fresh database: the three race to migrate it and to store the first secret.
    let (database_url, nodes) = instances(&dir, 3, &[]).await;
    let registered = gql(
        &nodes[0],
        REGISTER,
        json!({ "i": { "email": "secret@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    let access = string_at(&registered, "/data/register/accessToken");
    for node in &nodes {
        assert_no_errors(&gql(node, "{ me { id } }", json!({}), Some(&access)).await);
    }
    assert_eq!(settings_in(&database_url).await.len(), 1);
}

/// Each per-request lookup can use an index. Sequential scans are switched off for the
/// session so that the planner shows whether an index exists for it at all: on a near-empty
/// table it would rightly prefer a scan.
#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL (scripts/test does)"]
async fn every_per_request_lookup_is_an_index_scan_on_postgres() {
    if postgres_admin_url().is_none() {
        // MongoDB's counterpart: tests/api/mongodb.rs.
        assert!(mongodb_url().is_some(), "{NEEDS_SHARED}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(fresh_database_url(dir.path()).await)
        .await
        .unwrap();
    let id = "'6f1c1c4e-0000-4000-8000-000000000001'";
    let lookups = [
        // The guard: a session by id and access jti, with its user.
        format!(
            "SELECT * FROM sessions JOIN users ON users.id = sessions.user_id \
             WHERE sessions.id = {id} AND sessions.access_jti = {id} AND sessions.expires_at > now()"
        ),
        format!("SELECT * FROM sessions WHERE access_jti = {id}"),
        // The same, coalesced: a batch of sessions by id, with their users.
        format!(
            "SELECT * FROM sessions LEFT JOIN users ON users.id = sessions.user_id \
             WHERE sessions.id = ANY(ARRAY[{id}, {id}]::uuid[])"
        ),
        // Refresh: the conditional rotation.
        format!("UPDATE sessions SET refresh_jti = {id} WHERE id = {id} AND refresh_jti = {id}"),
        format!("SELECT * FROM sessions WHERE refresh_jti = {id}"),
        // mySessions, revokeOtherSessions: by user.
        format!("SELECT * FROM sessions WHERE user_id = {id} ORDER BY created_at DESC"),
        format!("DELETE FROM sessions WHERE user_id = {id} AND id <> {id}"),
        // Login: by email or username.
        "SELECT * FROM users WHERE email_normalized = 'a@x.com' OR username_normalized = 'a@x.com'"
            .to_owned(),
        // One-time tokens (issue 18): taken and looked at by digest, a user's superseded by
        // purpose, pruned by expiry; the user of a taken token, locked.
        "UPDATE one_time_tokens SET used_at = now() WHERE digest = 'd' \
         AND purpose IN ('password_reset') AND used_at IS NULL AND expires_at > now()"
            .to_owned(),
        "SELECT * FROM one_time_tokens WHERE digest = 'd'".to_owned(),
        format!(
            "UPDATE one_time_tokens SET used_at = now() WHERE user_id = {id} \
             AND purpose = 'password_reset' AND used_at IS NULL"
        ),
        "DELETE FROM one_time_tokens WHERE expires_at < now()".to_owned(),
        format!("SELECT * FROM users WHERE id = {id} FOR UPDATE"),
        // The outbox: due mails claimed by `next_attempt_at`, a sent one deleted by id.
        "SELECT id FROM mail_outbox WHERE next_attempt_at <= now() \
         AND (claimed_until IS NULL OR claimed_until < now()) \
         ORDER BY next_attempt_at LIMIT 32 FOR UPDATE SKIP LOCKED"
            .to_owned(),
        format!("DELETE FROM mail_outbox WHERE id = {id}"),
    ];
    let transaction = db.begin().await.unwrap();
    transaction
        .execute_unprepared("SET LOCAL enable_seqscan = off")
        .await
        .unwrap();
    for lookup in lookups {
        let plan = explain(&transaction, &lookup).await;
        assert!(plan.contains("Index"), "no index for {lookup}:\n{plan}");
        assert!(
            !plan.contains("Seq Scan"),
            "a sequential scan for {lookup}:\n{plan}"
        );
    }
    transaction.rollback().await.unwrap();
    // The coalesced lookup as its connection runs it, with that connection's settings:
    // prepared once, planned once, with the same index scans whatever the batch's length, on
    // these near-empty tables too (where a plan made from the statistics scans them, and would
    // be kept after they grow).
    let transaction = db.begin().await.unwrap();
    transaction
        .execute_unprepared(authql::store::LOOKUP_PLAN_SETTINGS)
        .await
        .unwrap();
    transaction
        .execute_unprepared(
            "PREPARE batch(uuid[]) AS SELECT * FROM sessions LEFT JOIN users \
             ON users.id = sessions.user_id WHERE sessions.id = ANY($1)",
        )
        .await
        .unwrap();
    for length in [1, 512] {
        let ids = vec![id; length].join(", ");
        let plan = explain(
            &transaction,
            &format!("EXECUTE batch(ARRAY[{ids}]::uuid[])"),
        )
        .await;
        assert!(plan.contains("$1"), "not the generic plan:\n{plan}");
        assert!(
            plan.contains("Nested Loop")
                && plan.contains("Index Scan using sessions_pkey")
                && plan.contains("Index Scan using users_pkey")
                && !plan.contains("Seq Scan")
                && !plan.contains("Bitmap"),
            "the generic plan of a batch of {length}:\n{plan}"
        );
    }
    transaction.rollback().await.unwrap();
}

/// PostgreSQL's plan for `statement` on `connection`, its lines joined.
async fn explain(connection: &impl ConnectionTrait, statement: &str) -> String {
    connection
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("EXPLAIN {statement}"),
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn rate_limit_buckets_are_shared_by_every_instance() {
    assert!(shared_database_url().is_some(), "{NEEDS_SHARED}");
    let configure = |config: &mut authql::config::Config| {
        config.rate_limit_ip_per_minute = 3;
        config.trusted_proxies = vec!["127.0.0.1".into()];
    };
    let first = spawn_app_with(configure).await;
    let second = spawn_instance_on(&first, configure).await;
    let login = "mutation { login(input: {emailOrUsername: \"nobody@example.com\", password: \"wrong password\"}) { accessToken } }";
    let mut codes = Vec::new();
    for app in [&first, &second, &first, &second] {
        let body = app
            .graphql_from(Some("203.0.113.9"), login, json!({}), None)
            .await;
        codes.push(error_code(&body));
    }
    assert_eq!(
        codes,
        [
            "INVALID_CREDENTIALS",
            "INVALID_CREDENTIALS",
            "INVALID_CREDENTIALS",
            "RATE_LIMITED"
        ],
        "two instances allow the limit once, not twice"
    );
    // Another address has its own bucket, on either instance.
    let body = second
        .graphql_from(Some("203.0.113.10"), login, json!({}), None)
        .await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
}

#[tokio::test]
#[ignore = "needs PostgreSQL or MongoDB: set TEST_DATABASE_URL (scripts/test does)"]
async fn a_revoke_on_one_instance_reaches_a_subscriber_on_another_within_a_second() {
    use crate::session_events::{Ended, SESSION_EVENTS, WsClient};
    let dir = tempfile::tempdir().unwrap();
    let (_, nodes) = instances(
        &dir,
        2,
        &[("JWT_SECRET_KEY", "one secret shared by every instance here")],
    )
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let registered = gql(
        a,
        REGISTER,
        json!({ "i": { "email": "across@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    let access = string_at(&registered, "/data/register/accessToken");
    let session_id = string_at(&registered, "/data/register/session/id");
    let mut subscriber = WsClient::signed_in(&a.url(""), &access).await;
    subscriber.subscribe("1", SESSION_EVENTS).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // A login on B arrives on A.
    let login = gql(
        b,
        "mutation($i: LoginInput!) { login(input: $i) { session { id } } }",
        json!({ "i": { "emailOrUsername": "across@x.com", "password": PASSWORD } }),
        None,
    )
    .await;
    let created = subscriber
        .next_event(std::time::Duration::from_secs(1))
        .await
        .expect("B's login reaches A within a second");
    assert_eq!(created["type"], "CREATED");
    assert_eq!(
        created["sessionId"],
        string_at(&login, "/data/login/session/id").as_str()
    );

    // Revoking the subscriber's own session on B: the event, then the close, on A.
    let started = std::time::Instant::now();
    let revoked = gql(
        b,
        "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }",
        json!({ "i": { "sessionIds": [session_id] } }),
        Some(&access),
    )
    .await;
    assert_no_errors(&revoked);
    let event = subscriber
        .next_event(std::time::Duration::from_secs(1))
        .await
        .expect("B's revoke reaches A within a second");
    assert_eq!(event["type"], "REVOKED");
    assert_eq!(event["sessionId"], session_id.as_str());
    assert_eq!(
        subscriber.ended(std::time::Duration::from_secs(1)).await,
        Ended::Closed(4403)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
