use sea_orm::entity::prelude::*;

/// A user's TOTP secret (RFC 6238): pending until `confirmed_at`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "totp_credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// Base32 (RFC 4648, no padding).
    pub secret: String,
    pub confirmed_at: Option<DateTimeUtc>,
    /// The time step of the last code accepted; -1 before the first.
    pub last_step: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
