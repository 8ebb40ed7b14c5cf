//! Databases that refuse writes: a SQLite file whose write lock another process holds, and one
//! that is read-only. A write that cannot happen now is SERVICE_UNAVAILABLE (worth a retry),
//! `/readyz` says not ready while writes fail, and a start on a database that cannot be
//! written stops with a plain message.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::sqlx::{self, Connection, SqliteConnection};
use serde_json::json;

use crate::helpers::{
    PASSWORD, error_code, shared_database_url, spawn_app_with, sqlite_url, test_config,
};

#[tokio::test]
async fn a_write_lock_held_by_another_process_is_service_unavailable_and_not_ready() {
    if shared_database_url().is_some() {
        return; // SQLite's file lock; PostgreSQL has its own fault tests (faults.rs).
    }
    let app = spawn_app_with(|config| config.database_busy_timeout_seconds = 1).await;
    app.register("ada@example.com").await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);

    // Another process's connection takes the write lock and keeps it, as `BEGIN IMMEDIATE` in
    // the sqlite3 shell would.
    let mut other = SqliteConnection::connect(&app.database_url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    let login = format!(
        "mutation {{ login(input: {{emailOrUsername: \"ada@example.com\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}"
    );
    let body = app.graphql(&login, json!({}), None).await;
    assert_eq!(error_code(&body), "SERVICE_UNAVAILABLE", "{body}");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.session_rows().await.len(),
        1,
        "the failed login left nothing"
    );

    // Released: writes and readiness come back without a restart.
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    let body = app.graphql(&login, json!({}), None).await;
    assert!(body["data"]["login"]["accessToken"].is_string(), "{body}");
    // Readiness is probed at most once a second: the answer may be a second old.
    let mut ready = app.get("/readyz").await.status();
    for _ in 0..30 {
        if ready == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ready = app.get("/readyz").await.status();
    }
    assert_eq!(ready, StatusCode::OK);
}

#[tokio::test]
async fn a_start_on_a_read_only_database_says_so_and_stops() {
    if shared_database_url().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authql.db");
    // A migrated database first, then the same file opened read-only.
    drop(spawn_app_with_file(&file).await);
    let mut config = test_config(&format!("{}?mode=ro", sqlite_url(&file)));
    config.migrate_on_start = false;
    config.database_connect_timeout_seconds = 1;
    let started = tokio::time::timeout(
        Duration::from_secs(10),
        authql::app::Application::build(config),
    )
    .await
    .expect("the start gives up in time");
    let error = format!("{:#}", started.err().expect("the start is refused"));
    assert!(error.contains("cannot be written"), "{error}");
    assert!(error.contains("DATABASE_URL"), "{error}");
}

async fn spawn_app_with_file(file: &std::path::Path) -> authql::app::Application {
    let config = test_config(&sqlite_url(file));
    authql::app::Application::build(config).await.unwrap()
}
