use sea_orm_migration::prelude::*;

/// `users.credential_version` moves on whenever what proves the account changes (a password
/// change, a disable); `sessions.credential_version` is the user's version when the session was
/// made. A session is accepted only while the two are equal, so that a login or a refresh that
/// straddles a password change cannot outlive it. Existing rows start at 0 on both sides.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One table per statement: SQLite adds one column per ALTER TABLE.
        for table in [Versioned::Users, Versioned::Sessions] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(
                            ColumnDef::new(Versioned::CredentialVersion)
                                .big_integer()
                                .not_null()
                                .default(0),
                        )
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Versioned::Sessions, Versioned::Users] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(Versioned::CredentialVersion)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Versioned {
    Users,
    Sessions,
    CredentialVersion,
}
