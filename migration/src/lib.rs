//! The database schema of authql, one file per migration.
//!
//! A migration that has shipped is never edited: add a new one instead.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_create_users_and_sessions;
mod m20261129_000002_create_settings;
mod m20261129_000003_create_rate_limit_buckets;
mod m20261129_000004_recompute_identity_keys;
mod m20261129_000005_add_user_disabled_at;
mod m20261201_000006_add_credential_versions;
mod m20261201_000007_usernames_without_at_sign;
mod m20261201_000008_add_account_recovery;
mod m20261201_000009_add_second_factors;
mod m20261202_000010_add_user_roles;
mod m20261202_000011_add_outbox_channel;
mod m20261202_000012_add_user_identities;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_users_and_sessions::Migration),
            Box::new(m20261129_000002_create_settings::Migration),
            Box::new(m20261129_000003_create_rate_limit_buckets::Migration),
            Box::new(m20261129_000004_recompute_identity_keys::Migration),
            Box::new(m20261129_000005_add_user_disabled_at::Migration),
            Box::new(m20261201_000006_add_credential_versions::Migration),
            Box::new(m20261201_000007_usernames_without_at_sign::Migration),
            Box::new(m20261201_000008_add_account_recovery::Migration),
            Box::new(m20261201_000009_add_second_factors::Migration),
            Box::new(m20261202_000010_add_user_roles::Migration),
            Box::new(m20261202_000011_add_outbox_channel::Migration),
            Box::new(m20261202_000012_add_user_identities::Migration),
        ]
    }
}
