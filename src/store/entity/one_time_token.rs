use sea_orm::entity::prelude::*;

/// A one-time token: only the SHA-256 digest (hex) of the token is kept.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "one_time_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    /// `password_reset`, `email_verification` or `email_change`.
    pub purpose: String,
    #[sea_orm(unique)]
    pub digest: String,
    /// The address the token was sent to, as typed and as its key.
    pub email: String,
    pub email_normalized: String,
    /// The user's credential version when the token was issued.
    pub credential_version: i64,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub used_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
