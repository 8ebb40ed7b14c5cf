use authql::app::Application;

use crate::helpers::*;

#[tokio::test]
async fn a_short_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&sqlite_url(&dir.path().join("authql.db")));
    config.jwt_secret_key = Some("only-31-bytes-long-secret-12345".into());
    let error = Application::build(config)
        .await
        .err()
        .expect("start-up fails");
    assert!(format!("{error:#}").contains("JWT_SECRET_KEY"), "{error:#}");
}

#[tokio::test]
async fn without_a_secret_every_instance_on_the_database_agrees_on_a_generated_one() {
    let first = spawn_app_with(|config| config.jwt_secret_key = None).await;
    let account = first.register("shared@x.com").await;
    // The next start on the same database (a restart on SQLite; on PostgreSQL, see
    // postgres::instances_started_together_without_a_secret_agree_on_the_generated_one).
    let first = first.restart(|config| config.jwt_secret_key = None).await;
    let response = first
        .client
        .post(format!("{}/graphql", first.address))
        .bearer_auth(&account.access_token)
        .json(&serde_json::json!({ "query": "{ me { email } }" }))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"]["me"]["email"], "shared@x.com", "{body}");

    let settings = crate::helpers::settings_in(&first.database_url).await;
    assert_eq!(settings.len(), 1);
    assert!(settings[0].1.len() >= 32);
}

#[tokio::test]
async fn out_of_range_durations_refuse_to_start_instead_of_overflowing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&sqlite_url(&dir.path().join("authql.db")));
    config.jwt_refresh_token_expires = u64::MAX / 2;
    let error = Application::build(config)
        .await
        .err()
        .expect("start-up fails");
    assert!(
        format!("{error:#}").contains("JWT_REFRESH_TOKEN_EXPIRES"),
        "{error:#}"
    );
}
