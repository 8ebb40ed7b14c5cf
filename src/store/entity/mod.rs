//! SeaORM entities: the rows as the database holds them. They never leave `store`:
//! the rest of authql sees the domain types in `store::model`.

pub mod session;
pub mod setting;
pub mod user;
