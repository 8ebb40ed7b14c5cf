//! The migrations apply, roll back and re-apply cleanly on a fresh SQLite database.

use migration::{Migrator, MigratorTrait};
use sea_orm_migration::{SchemaManager, sea_orm::Database};

#[tokio::test]
async fn migrations_go_up_down_and_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let db = Database::connect(&url).await.unwrap();
    let manager = SchemaManager::new(&db);

    assert_eq!(
        Migrator::get_pending_migrations(&db).await.unwrap().len(),
        Migrator::migrations().len()
    );
    Migrator::up(&db, None).await.unwrap();
    assert!(
        Migrator::get_pending_migrations(&db)
            .await
            .unwrap()
            .is_empty()
    );
    for table in ["users", "sessions", "settings", "rate_limit_buckets"] {
        assert!(
            manager.has_table(table).await.unwrap(),
            "{table} exists after up"
        );
    }
    assert!(
        manager
            .has_index("sessions", "idx_sessions_user_id_created_at")
            .await
            .unwrap()
    );
    assert!(manager.has_column("users", "disabled_at").await.unwrap());

    Migrator::down(&db, None).await.unwrap();
    for table in ["users", "sessions", "settings", "rate_limit_buckets"] {
        assert!(
            !manager.has_table(table).await.unwrap(),
            "{table} is gone after down"
        );
    }

    Migrator::fresh(&db).await.unwrap();
    assert!(manager.has_table("sessions").await.unwrap());
    assert_eq!(
        Migrator::get_applied_migrations(&db).await.unwrap().len(),
        Migrator::migrations().len()
    );
}
