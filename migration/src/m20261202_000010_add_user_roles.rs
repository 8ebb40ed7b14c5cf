use sea_orm_migration::prelude::*;

/// `users.roles`: the account's roles (`authql admin grant-role`), carried in every access
/// token's `roles` claim and in `/auth/verify` and token introspection answers. Stored as one
/// text column, the role names sorted and joined by commas (a role name holds no comma), so
/// that the session lookup behind every request reads them with the user row, no join more.
/// Existing accounts have none.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(ColumnDef::new(Users::Roles).text().not_null().default(""))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::Roles)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Roles,
}
