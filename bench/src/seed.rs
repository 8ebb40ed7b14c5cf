//! Scenario 5's databases: sessions in bulk, written straight into the database in a few
//! statements (not through the API, which would spend a bcrypt hash per user), copying the
//! timestamps and password hash of the one account the benchmark registered, so that every row
//! is one authql could have written.

use anyhow::Context;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

/// Adds `users` users with `sessions_per_user` live sessions each to the database at `url`,
/// which must already hold one registered account.
pub async fn seed(url: &str, users: u64, sessions_per_user: u64) -> anyhow::Result<()> {
    let db = Database::connect(url)
        .await
        .context("the seeding connection")?;
    let backend = db.get_database_backend();
    let statements: Vec<String> = match backend {
        DbBackend::Postgres => vec![
            format!(
                "INSERT INTO users (id, email, email_normalized, username, username_normalized, password_hash, created_at) \
                 SELECT gen_random_uuid(), 'seed' || i || '@example.com', 'seed' || i || '@example.com', 'seed' || i, 'seed' || i, t.password_hash, t.created_at \
                 FROM generate_series(1, {users}) AS i, (SELECT password_hash, created_at FROM users LIMIT 1) AS t"
            ),
            format!(
                "INSERT INTO sessions (id, user_id, access_jti, refresh_jti, created_at, expires_at, idle_expires_at) \
                 SELECT gen_random_uuid(), u.id, gen_random_uuid(), gen_random_uuid(), s.created_at, s.expires_at, s.idle_expires_at \
                 FROM users u CROSS JOIN generate_series(1, {sessions_per_user}) AS k, (SELECT created_at, expires_at, idle_expires_at FROM sessions LIMIT 1) AS s \
                 WHERE u.email LIKE 'seed%'"
            ),
            "ANALYZE users".into(),
            "ANALYZE sessions".into(),
        ],
        _ => vec![
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {users}) \
                 INSERT INTO users (id, email, email_normalized, username, username_normalized, password_hash, created_at) \
                 SELECT randomblob(16), 'seed' || i || '@example.com', 'seed' || i || '@example.com', 'seed' || i, 'seed' || i, \
                 (SELECT password_hash FROM users LIMIT 1), (SELECT created_at FROM users LIMIT 1) FROM n"
            ),
            format!(
                "WITH RECURSIVE k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < {sessions_per_user}) \
                 INSERT INTO sessions (id, user_id, access_jti, refresh_jti, created_at, expires_at, idle_expires_at) \
                 SELECT randomblob(16), u.id, randomblob(16), randomblob(16), s.created_at, s.expires_at, s.idle_expires_at \
                 FROM users u CROSS JOIN k CROSS JOIN (SELECT created_at, expires_at, idle_expires_at FROM sessions LIMIT 1) AS s \
                 WHERE u.email LIKE 'seed%'"
            ),
            "ANALYZE".into(),
        ],
    };
    for statement in statements {
        db.execute_raw(Statement::from_string(backend, statement))
            .await
            .context("seeding")?;
    }
    db.close().await?;
    Ok(())
}

/// How many session rows the database at `url` holds.
pub async fn session_rows(url: &str) -> anyhow::Result<i64> {
    let db = Database::connect(url).await?;
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n FROM sessions",
        ))
        .await?
        .context("a count")?;
    let count: i64 = row.try_get("", "n")?;
    db.close().await?;
    Ok(count)
}
