use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub email: String,
    #[sea_orm(unique)]
    pub email_normalized: String,
    pub username: String,
    #[sea_orm(unique)]
    pub username_normalized: String,
    pub password_hash: String,
    pub created_at: DateTimeUtc,
    /// When an operator disabled the account; `None` while it is enabled.
    pub disabled_at: Option<DateTimeUtc>,
    /// See `store::User::credential_version` and `store::Session::credential_version`.
    pub credential_version: i64,
    /// When the address was proven (a link of a mail to it followed); `None` until then.
    pub email_verified_at: Option<DateTimeUtc>,
    /// The role names, sorted and joined by commas (`store::joined_roles`); empty: none.
    pub roles: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::session::Entity")]
    Session,
}

impl Related<super::session::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Session.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
