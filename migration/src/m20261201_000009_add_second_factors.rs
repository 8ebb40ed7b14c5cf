use sea_orm_migration::{prelude::*, schema::*};

/// Second factors, passkeys and step-up (issue 20).
///
/// - `sessions.authenticated_at` / `authentication_methods`: when the session's user last proved
///   who they are, and with what (RFC 8176 `amr` values, comma-separated). Sessions from before
///   were made by a password at their creation.
/// - `totp_credentials`: one per user; `confirmed_at` is empty while an enrollment waits for its
///   first code; `last_step` is the RFC 6238 time step of the last code accepted (§ 5.2: a code
///   is accepted once).
/// - `recovery_codes`: SHA-256 digests of single-use codes.
/// - `passkeys`: WebAuthn credentials (webauthn-rs's `Passkey` as JSON), their signature counter
///   and whether they may be synced (backup eligible).
/// - `auth_challenges`: the state of unfinished ceremonies (an `mfaToken`, a passkey
///   registration or login), by the SHA-256 digest of what the client holds; single use.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(timestamp_with_time_zone_null(Sessions::AuthenticatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(string(Sessions::AuthenticationMethods).default("pwd"))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(Sessions::Table)
                    .value(Sessions::AuthenticatedAt, Expr::col(Sessions::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TotpCredentials::Table)
                    .col(pk_uuid(TotpCredentials::UserId))
                    .col(string(TotpCredentials::Secret))
                    .col(timestamp_with_time_zone_null(TotpCredentials::ConfirmedAt))
                    .col(big_integer(TotpCredentials::LastStep).default(-1))
                    .col(timestamp_with_time_zone(TotpCredentials::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_totp_credentials_user_id")
                            .from(TotpCredentials::Table, TotpCredentials::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RecoveryCodes::Table)
                    .col(pk_uuid(RecoveryCodes::Id))
                    .col(uuid(RecoveryCodes::UserId))
                    .col(string(RecoveryCodes::Digest))
                    .col(timestamp_with_time_zone(RecoveryCodes::CreatedAt))
                    .col(timestamp_with_time_zone_null(RecoveryCodes::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_recovery_codes_user_id")
                            .from(RecoveryCodes::Table, RecoveryCodes::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_recovery_codes_user_id_digest")
                    .table(RecoveryCodes::Table)
                    .col(RecoveryCodes::UserId)
                    .col(RecoveryCodes::Digest)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Passkeys::Table)
                    .col(pk_uuid(Passkeys::Id))
                    .col(uuid(Passkeys::UserId))
                    .col(string_uniq(Passkeys::CredentialId))
                    .col(string(Passkeys::Name))
                    .col(text(Passkeys::Credential))
                    .col(big_integer(Passkeys::Counter))
                    .col(boolean(Passkeys::BackupEligible))
                    .col(timestamp_with_time_zone(Passkeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(Passkeys::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_passkeys_user_id")
                            .from(Passkeys::Table, Passkeys::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_passkeys_user_id")
                    .table(Passkeys::Table)
                    .col(Passkeys::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuthChallenges::Table)
                    .col(pk_uuid(AuthChallenges::Id))
                    .col(string_uniq(AuthChallenges::Digest))
                    .col(string(AuthChallenges::Kind))
                    .col(uuid_null(AuthChallenges::UserId))
                    .col(uuid_null(AuthChallenges::SessionId))
                    .col(big_integer_null(AuthChallenges::CredentialVersion))
                    .col(string(AuthChallenges::Methods))
                    .col(text_null(AuthChallenges::State))
                    .col(integer(AuthChallenges::Attempts).default(0))
                    .col(timestamp_with_time_zone(AuthChallenges::CreatedAt))
                    .col(timestamp_with_time_zone(AuthChallenges::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_auth_challenges_user_id")
                            .from(AuthChallenges::Table, AuthChallenges::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_auth_challenges_expires_at")
                    .table(AuthChallenges::Table)
                    .col(AuthChallenges::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuthChallenges::Table.into_iden(),
            Passkeys::Table.into_iden(),
            RecoveryCodes::Table.into_iden(),
            TotpCredentials::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        for column in [
            Sessions::AuthenticationMethods.into_iden(),
            Sessions::AuthenticatedAt.into_iden(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sessions::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    CreatedAt,
    AuthenticatedAt,
    AuthenticationMethods,
}

#[derive(DeriveIden)]
enum TotpCredentials {
    Table,
    UserId,
    Secret,
    ConfirmedAt,
    LastStep,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RecoveryCodes {
    Table,
    Id,
    UserId,
    Digest,
    CreatedAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum Passkeys {
    Table,
    Id,
    UserId,
    CredentialId,
    Name,
    Credential,
    Counter,
    BackupEligible,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum AuthChallenges {
    Table,
    Id,
    Digest,
    Kind,
    UserId,
    SessionId,
    CredentialVersion,
    Methods,
    State,
    Attempts,
    CreatedAt,
    ExpiresAt,
}
