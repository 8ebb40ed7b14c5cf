use sea_orm_migration::{prelude::*, schema::*};

/// Verified addresses, one-time tokens and the mail outbox (account recovery: password reset,
/// email verification, email change).
///
/// - `users.email_verified_at`: when the account's address was proven; empty for every account
///   that existed before (they start unverified).
/// - `one_time_tokens`: only the SHA-256 digest of a token is kept (hex, unique), with what it is
///   for, the address it was sent to, the user's credential version when it was issued (a token
///   acts only while the two are equal), when it expires and when it was used.
/// - `mail_outbox`: mails waiting to be sent, written in the same transaction as their token; a
///   sender claims them (`claimed_until`), sends and deletes them, retrying (`next_attempt_at`)
///   until `expires_at`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(timestamp_with_time_zone_null(Users::EmailVerifiedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OneTimeTokens::Table)
                    .col(pk_uuid(OneTimeTokens::Id))
                    .col(uuid(OneTimeTokens::UserId))
                    .col(string(OneTimeTokens::Purpose))
                    .col(string_uniq(OneTimeTokens::Digest))
                    .col(string(OneTimeTokens::Email))
                    .col(string(OneTimeTokens::EmailNormalized))
                    .col(big_integer(OneTimeTokens::CredentialVersion))
                    .col(timestamp_with_time_zone(OneTimeTokens::CreatedAt))
                    .col(timestamp_with_time_zone(OneTimeTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(OneTimeTokens::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_one_time_tokens_user_id")
                            .from(OneTimeTokens::Table, OneTimeTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_one_time_tokens_user_id_purpose")
                    .table(OneTimeTokens::Table)
                    .col(OneTimeTokens::UserId)
                    .col(OneTimeTokens::Purpose)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_one_time_tokens_expires_at")
                    .table(OneTimeTokens::Table)
                    .col(OneTimeTokens::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MailOutbox::Table)
                    .col(pk_uuid(MailOutbox::Id))
                    .col(string(MailOutbox::Kind))
                    .col(string(MailOutbox::EnvelopeFrom))
                    .col(string(MailOutbox::EnvelopeTo))
                    .col(text(MailOutbox::Message))
                    .col(timestamp_with_time_zone(MailOutbox::CreatedAt))
                    .col(timestamp_with_time_zone(MailOutbox::NextAttemptAt))
                    .col(timestamp_with_time_zone(MailOutbox::ExpiresAt))
                    .col(integer(MailOutbox::Attempts).default(0))
                    .col(timestamp_with_time_zone_null(MailOutbox::ClaimedUntil))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_mail_outbox_next_attempt_at")
                    .table(MailOutbox::Table)
                    .col(MailOutbox::NextAttemptAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(MailOutbox::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(OneTimeTokens::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::EmailVerifiedAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    EmailVerifiedAt,
}

#[derive(DeriveIden)]
enum OneTimeTokens {
    Table,
    Id,
    UserId,
    Purpose,
    Digest,
    Email,
    EmailNormalized,
    CredentialVersion,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    Id,
    Kind,
    EnvelopeFrom,
    EnvelopeTo,
    Message,
    CreatedAt,
    NextAttemptAt,
    ExpiresAt,
    Attempts,
    ClaimedUntil,
}
