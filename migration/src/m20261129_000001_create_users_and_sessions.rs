use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(pk_uuid(Users::Id))
                    // As the user typed it (trimmed), for display.
                    .col(string(Users::Email))
                    // Trimmed and lower-cased: the form that is unique and looked up.
                    .col(string_uniq(Users::EmailNormalized))
                    .col(string(Users::Username))
                    .col(string_uniq(Users::UsernameNormalized))
                    .col(string(Users::PasswordHash))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .col(pk_uuid(Sessions::Id))
                    .col(uuid(Sessions::UserId))
                    // The allow-list: a token is valid only while its session row holds its jti.
                    .col(uuid_uniq(Sessions::AccessJti))
                    .col(uuid_uniq(Sessions::RefreshJti))
                    // The refresh jti that the last rotation replaced: presenting it again is
                    // either a retry within the grace window or reuse of a stolen token.
                    .col(uuid_null(Sessions::PreviousRefreshJti))
                    .col(timestamp_with_time_zone(Sessions::CreatedAt))
                    .col(timestamp_with_time_zone_null(Sessions::LastRefreshedAt))
                    .col(timestamp_with_time_zone(Sessions::ExpiresAt))
                    // Moves forward with every refresh; the session ends when either passes.
                    .col(timestamp_with_time_zone(Sessions::IdleExpiresAt))
                    .col(string_null(Sessions::UserAgent))
                    .col(string_null(Sessions::IpAddress))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_sessions_user_id")
                            .from(Sessions::Table, Sessions::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // Listing and revoking a user's sessions filter by user; expiry is the pruning order.
        manager
            .create_index(
                Index::create()
                    .name("idx_sessions_user_id_created_at")
                    .table(Sessions::Table)
                    .col(Sessions::UserId)
                    .col(Sessions::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_sessions_expires_at")
                    .table(Sessions::Table)
                    .col(Sessions::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Sessions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    EmailNormalized,
    Username,
    UsernameNormalized,
    PasswordHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    AccessJti,
    RefreshJti,
    PreviousRefreshJti,
    CreatedAt,
    LastRefreshedAt,
    ExpiresAt,
    IdleExpiresAt,
    UserAgent,
    IpAddress,
}
