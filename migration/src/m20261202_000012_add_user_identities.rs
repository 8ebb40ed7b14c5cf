use sea_orm_migration::{prelude::*, schema::*};

/// `user_identities`: the OpenID Connect identities linked to an account ("Sign in with ...").
/// An identity is its provider's `iss` and `sub` (OIDC Core § 2: the pair is the stable,
/// unique identifier of an End-User), so `(issuer, subject)` is unique across all accounts; an
/// account has at most one identity per configured provider name (`(user_id, provider)`
/// unique), which is what `unlinkIdentity(provider)` names. `email` is what the provider said
/// when the identity was linked (shown in `me { identities }`, never used to log in).
///
/// `unlinked_identities`: which identity an account with which address unlinked, keyed by the
/// address (`email_normalized`) and the identity, with no tie to the account: such an identity
/// is never linked or given an account by that address again (a provider account someone else
/// took over stays out), whatever becomes of the account or of the identity's other links.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UserIdentities::Table)
                    .col(pk_uuid(UserIdentities::Id))
                    .col(uuid(UserIdentities::UserId))
                    .col(string(UserIdentities::Provider))
                    .col(text(UserIdentities::Issuer))
                    .col(text(UserIdentities::Subject))
                    .col(text_null(UserIdentities::Email))
                    .col(timestamp_with_time_zone(UserIdentities::LinkedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_identities_user_id")
                            .from(UserIdentities::Table, UserIdentities::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_user_identities_issuer_subject")
                    .table(UserIdentities::Table)
                    .col(UserIdentities::Issuer)
                    .col(UserIdentities::Subject)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_user_identities_user_id_provider")
                    .table(UserIdentities::Table)
                    .col(UserIdentities::UserId)
                    .col(UserIdentities::Provider)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UnlinkedIdentities::Table)
                    .col(pk_uuid(UnlinkedIdentities::Id))
                    .col(text(UnlinkedIdentities::EmailNormalized))
                    .col(text(UnlinkedIdentities::Issuer))
                    .col(text(UnlinkedIdentities::Subject))
                    .col(timestamp_with_time_zone(UnlinkedIdentities::UnlinkedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_unlinked_identities_email_issuer_subject")
                    .table(UnlinkedIdentities::Table)
                    .col(UnlinkedIdentities::EmailNormalized)
                    .col(UnlinkedIdentities::Issuer)
                    .col(UnlinkedIdentities::Subject)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UnlinkedIdentities::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UserIdentities::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum UserIdentities {
    Table,
    Id,
    UserId,
    Provider,
    Issuer,
    Subject,
    Email,
    LinkedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum UnlinkedIdentities {
    Table,
    Id,
    EmailNormalized,
    Issuer,
    Subject,
    UnlinkedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
}
