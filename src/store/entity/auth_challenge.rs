use sea_orm::entity::prelude::*;

/// An unfinished ceremony (`mfa`, `passkey_registration`, `passkey_login`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "auth_challenges")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// SHA-256 (hex) of what the client holds: the `mfaToken`, or the challenge id.
    #[sea_orm(unique)]
    pub digest: String,
    pub kind: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub credential_version: Option<i64>,
    /// The `amr` values proven so far, comma-separated.
    pub methods: String,
    /// webauthn-rs's ceremony state, as JSON.
    pub state: Option<String>,
    pub attempts: i32,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
