use sea_orm_migration::{prelude::*, schema::*};

/// Rate-limit buckets shared by every instance on one PostgreSQL database: one row per bucket,
/// holding its GCRA theoretical arrival time (`tat`, microseconds since the Unix epoch). A row
/// whose `tat` has passed is a full bucket and may be deleted. SQLite keeps its buckets in the
/// one process that serves it, so the table stays empty there.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RateLimitBuckets::Table)
                    .col(string(RateLimitBuckets::Key).primary_key())
                    .col(big_integer(RateLimitBuckets::Tat))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RateLimitBuckets::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum RateLimitBuckets {
    Table,
    Key,
    Tat,
}
