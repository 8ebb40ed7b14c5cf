use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    #[sea_orm(unique)]
    pub access_jti: Uuid,
    #[sea_orm(unique)]
    pub refresh_jti: Uuid,
    pub previous_refresh_jti: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub last_refreshed_at: Option<DateTimeUtc>,
    pub expires_at: DateTimeUtc,
    pub idle_expires_at: DateTimeUtc,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    /// See `store::User::credential_version` and `store::Session::credential_version`.
    pub credential_version: i64,
    /// When the user last proved who they are in this session (login, `reauthenticate`);
    /// empty only in rows written before second factors (then: `created_at`).
    pub authenticated_at: Option<DateTimeUtc>,
    /// RFC 8176 `amr` values, comma-separated.
    pub authentication_methods: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::user::Entity",
        from = "Column::UserId",
        to = "super::user::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl Related<super::user::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
