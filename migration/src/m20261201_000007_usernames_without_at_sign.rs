use sea_orm_migration::{prelude::*, sea_orm::ConnectionTrait};

/// A username may hold `@` only when it is the account's own email. Before this, the rule was
/// checked on the text as typed, so a full-width `＠` (`bob＠example.com`) passed and was
/// normalised to `bob@example.com`: another person's address, as a username. Every username
/// whose key holds `@` and is not its account's own email key becomes that account's email
/// (display and key), as if it had been registered without a username.
///
/// In two steps, so that no row meets the unique index half-way: the keys first move to a value
/// no key can have (U+FFFD and the account id), then to the emails' keys, which are unique
/// among emails and, once every such username is gone, among usernames too.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let squatting = || {
            Cond::all()
                .add(Expr::col(Users::UsernameNormalized).like("%@%"))
                .add(Expr::col(Users::UsernameNormalized).ne(Expr::col(Users::EmailNormalized)))
        };
        let concat = match backend {
            sea_orm_migration::sea_orm::DbBackend::Postgres => {
                Expr::cust("'\u{fffd}' || CAST(id AS TEXT)")
            }
            _ => Expr::cust("'\u{fffd}' || hex(id)"),
        };
        let park = Query::update()
            .table(Users::Table)
            .value(Users::UsernameNormalized, concat)
            .value(Users::Username, Expr::col(Users::Email))
            .cond_where(squatting())
            .to_owned();
        db.execute_raw(backend.build(&park)).await?;
        let settle = Query::update()
            .table(Users::Table)
            .value(Users::UsernameNormalized, Expr::col(Users::EmailNormalized))
            .and_where(Expr::col(Users::UsernameNormalized).like("\u{fffd}%"))
            .to_owned();
        db.execute_raw(backend.build(&settle)).await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // The squatted usernames are not brought back.
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Email,
    EmailNormalized,
    Username,
    UsernameNormalized,
}
