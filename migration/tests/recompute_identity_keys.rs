//! The identity-key migration recomputes keys stored by the older, cruder normalisation
//! (trimmed and lower-cased), keeps colliding accounts apart, and loses nothing.

use migration::{Migrator, MigratorTrait};
use sea_orm_migration::sea_orm::{ConnectionTrait, Database, DbBackend, Statement, prelude::Uuid};

async fn insert(db: &impl ConnectionTrait, id: &str, email: &str, username: &str, when: &str) {
    // The keys as the first release computed them.
    let (email_key, username_key) = (email.trim().to_lowercase(), username.trim().to_lowercase());
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "INSERT INTO users (id, email, email_normalized, username, username_normalized, password_hash, created_at) VALUES (?, ?, ?, ?, ?, 'x', ?)",
        [Uuid::parse_str(id).unwrap().into(), email.into(), email_key.into(), username.into(), username_key.into(), when.into()],
    ))
    .await
    .unwrap();
}

async fn keys(db: &impl ConnectionTrait) -> Vec<(String, String, String)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT email, email_normalized, username_normalized FROM users ORDER BY created_at",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            (
                row.try_get("", "email").unwrap(),
                row.try_get("", "email_normalized").unwrap(),
                row.try_get("", "username_normalized").unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn keys_are_recomputed_and_colliding_accounts_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let db = Database::connect(&url).await.unwrap();
    Migrator::up(&db, Some(3)).await.unwrap();

    // Two spellings of josé that the old keys kept apart, a domain in Unicode, a full-width
    // username, and a username the new rules refuse.
    insert(
        &db,
        "00000000-0000-0000-0000-000000000001",
        "jose\u{301}@example.com",
        "jose\u{301}@example.com",
        "2026-01-01T00:00:00Z",
    )
    .await;
    insert(
        &db,
        "00000000-0000-0000-0000-000000000002",
        "jos\u{e9}@example.com",
        "jos\u{e9}",
        "2026-01-02T00:00:00Z",
    )
    .await;
    insert(
        &db,
        "00000000-0000-0000-0000-000000000003",
        "ada@B\u{fc}cher.example",
        "ＡＤＡ",
        "2026-01-03T00:00:00Z",
    )
    .await;
    insert(
        &db,
        "00000000-0000-0000-0000-000000000004",
        "bob@example.com",
        "bob\u{200b}",
        "2026-01-04T00:00:00Z",
    )
    .await;

    Migrator::up(&db, None).await.unwrap();
    let keys = keys(&db).await;
    assert_eq!(keys.len(), 4, "nothing is lost");
    // The NFC josé already had the new key and keeps it; the NFD one, whose new key is taken,
    // keeps its old key (its email and its email-username alike).
    assert_eq!(keys[1].1, "jos\u{e9}@example.com");
    assert_eq!(keys[1].2, "jos\u{e9}");
    assert_eq!(keys[0].1, "jose\u{301}@example.com");
    assert_eq!(keys[0].2, "jose\u{301}@example.com");
    assert_eq!(keys[2].1, "ada@xn--bcher-kva.example");
    assert_eq!(keys[2].2, "ada");
    // A username the new rules refuse keeps its old key: the account stays reachable by email.
    assert_eq!(keys[3].2, "bob\u{200b}");
    // Display forms are untouched.
    assert_eq!(keys[0].0, "jose\u{301}@example.com");
}
