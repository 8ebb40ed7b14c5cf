use sea_orm_migration::{prelude::*, schema::*};

/// Webhooks share the mail outbox (issue "Webhooks"): `mail_outbox.channel` says how a row is
/// delivered, `mail` (every row from before, and the default) or `webhook`. A webhook row is
/// one event for one endpoint, its columns read as: `kind` the event type (`user.created`),
/// `envelope_from` the event id (the `webhook-id`, the same for every endpoint and attempt),
/// `envelope_to` the endpoint URL, `message` the JSON payload; claiming, leases, retries and
/// expiry are the mails' own.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(MailOutbox::Table)
                    .add_column(string(MailOutbox::Channel).default("mail"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(MailOutbox::Table)
                    .drop_column(MailOutbox::Channel)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    Channel,
}
