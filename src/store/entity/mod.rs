//! SeaORM entities: the rows as the database holds them. They never leave `store`:
//! the rest of authql sees the domain types in `store::model`.

pub mod one_time_token;
pub mod outbox_mail;
pub mod session;
pub mod setting;
pub mod user;
