use std::collections::HashSet;

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, QueryResult, TryGetable, prelude::Uuid},
};

/// Recomputes `users.email_normalized` and `users.username_normalized` with authql's one
/// normalisation (`authql_identity`: RFC 8265 `UsernameCaseMapped`, IDNA ASCII domains). Before
/// it the keys were only trimmed and lower-cased, so `josé` typed in NFC and in NFD could be two
/// accounts.
///
/// Accounts whose new keys would collide keep their old keys: an account whose key is already
/// in the new form keeps it, the others take the new form oldest first. Nothing is lost; the
/// account that keeps an old key is still there, and the operator is told which to merge. Keys are moved through temporary values so that
/// swapping keys between rows never trips the unique indexes half-way.
#[derive(DeriveMigrationName)]
pub struct Migration;

struct Row {
    id: Uuid,
    email: String,
    username: String,
    email_key: String,
    username_key: String,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let select = Query::select()
            .columns([
                Users::Id,
                Users::Email,
                Users::Username,
                Users::EmailNormalized,
                Users::UsernameNormalized,
            ])
            .from(Users::Table)
            .order_by(Users::CreatedAt, Order::Asc)
            .order_by(Users::Id, Order::Asc)
            .to_owned();
        let rows = db.query_all_raw(backend.build(&select)).await?;
        fn get<T: TryGetable>(row: &QueryResult, column: &str) -> Result<T, DbErr> {
            T::try_get(row, "", column).map_err(|error| DbErr::Custom(format!("{error:?}")))
        }
        let rows = rows
            .iter()
            .map(|row| {
                Ok(Row {
                    id: get(row, "id")?,
                    email: get(row, "email")?,
                    username: get(row, "username")?,
                    email_key: get(row, "email_normalized")?,
                    username_key: get(row, "username_normalized")?,
                })
            })
            .collect::<Result<Vec<_>, DbErr>>()?;

        // The keys every account ends with. Keys already in the new form stay where they are;
        // the others take their new form, oldest account first, unless it is taken, in which
        // case they keep the old key. An old key that is not in the new form can never equal a
        // new one, so no two accounts end with one key. A username that is the account's own
        // email follows the email's key.
        let new_emails: Vec<Option<String>> = rows
            .iter()
            .map(|row| authql_identity::email_key(&row.email).ok())
            .collect();
        let new_usernames: Vec<Option<String>> = rows
            .iter()
            .map(|row| authql_identity::username_key(&row.username).ok())
            .collect();
        let email_keys = settle_column(&rows, &new_emails, |row| &row.email_key, "email");
        let is_email = |row: &Row| row.username_key == row.email_key;
        let username_rows: Vec<&Row> = rows.iter().filter(|row| !is_email(row)).collect();
        let username_news: Vec<Option<String>> = rows
            .iter()
            .zip(new_usernames)
            .filter(|(row, _)| !is_email(row))
            .map(|(_, key)| key)
            .collect();
        let mut username_keys =
            settle_column_refs(&username_rows, &username_news, "username").into_iter();
        let mut changes = Vec::new();
        for (row, email_key) in rows.iter().zip(email_keys) {
            let username_key = if is_email(row) {
                email_key.clone()
            } else {
                username_keys
                    .next()
                    .unwrap_or_else(|| row.username_key.clone())
            };
            if email_key != row.email_key || username_key != row.username_key {
                changes.push((row.id, email_key, username_key));
            }
        }

        // Two passes, the first through values no key can take (U+FFFD never survives
        // normalisation).
        for temporary in [true, false] {
            for (id, email_key, username_key) in &changes {
                let (email_value, username_value) = if temporary {
                    (
                        format!("\u{fffd}email:{id}"),
                        format!("\u{fffd}username:{id}"),
                    )
                } else {
                    (email_key.clone(), username_key.clone())
                };
                let update = Query::update()
                    .table(Users::Table)
                    .values([
                        (Users::EmailNormalized, email_value.into()),
                        (Users::UsernameNormalized, username_value.into()),
                    ])
                    .and_where(Expr::col(Users::Id).eq(*id))
                    .to_owned();
                db.execute_raw(backend.build(&update)).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // The old keys are a coarser form of the new ones; nothing to undo.
        Ok(())
    }
}

/// The final keys of one unique column, in `rows` order (see `up`).
fn settle_column(
    rows: &[Row],
    new: &[Option<String>],
    old: impl Fn(&Row) -> &String,
    what: &str,
) -> Vec<String> {
    let refs: Vec<&Row> = rows.iter().collect();
    let olds: Vec<&String> = refs.iter().map(|row| old(row)).collect();
    settle(&refs, new, &olds, what)
}

fn settle_column_refs(rows: &[&Row], new: &[Option<String>], what: &str) -> Vec<String> {
    let olds: Vec<&String> = rows.iter().map(|row| &row.username_key).collect();
    settle(rows, new, &olds, what)
}

fn settle(rows: &[&Row], new: &[Option<String>], old: &[&String], what: &str) -> Vec<String> {
    let unchanged = |index: usize| new[index].as_ref() == Some(old[index]);
    let mut taken: HashSet<String> = (0..rows.len())
        .filter(|&index| unchanged(index))
        .map(|index| old[index].clone())
        .collect();
    (0..rows.len())
        .map(|index| {
            if unchanged(index) {
                return old[index].clone();
            }
            let key = match &new[index] {
                Some(key) if !taken.contains(key) => key.clone(),
                Some(_) => {
                    eprintln!(
                        "authql migration: user {} keeps its old {what} key: another account has its normalised form; merge them",
                        rows[index].id
                    );
                    old[index].clone()
                }
                None => old[index].clone(),
            };
            taken.insert(key.clone());
            key
        })
        .collect()
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    EmailNormalized,
    Username,
    UsernameNormalized,
    CreatedAt,
}
