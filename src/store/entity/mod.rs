//! SeaORM entities: the rows as the database holds them. They never leave `store`:
//! the rest of authql sees the domain types in `store::model`.

pub mod auth_challenge;
pub mod one_time_token;
pub mod outbox_mail;
pub mod passkey;
pub mod recovery_code;
pub mod session;
pub mod setting;
pub mod totp_credential;
pub mod unlinked_identity;
pub mod user;
pub mod user_identity;
