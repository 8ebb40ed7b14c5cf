use sea_orm::entity::prelude::*;

/// An identity (`iss` + `sub`) an account with this address unlinked: never linked or given an
/// account by that address again.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "unlinked_identities")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub email_normalized: String,
    pub issuer: String,
    pub subject: String,
    pub unlinked_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
