//! The GraphQL schema: roots, types, and the extension that gives every error a code.

mod error_codes;
mod mutation;
mod query;
pub mod types;

use async_graphql::{EmptySubscription, Schema};

pub use mutation::MutationRoot;
pub use query::QueryRoot;

use crate::service::AuthService;

pub type AuthSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

pub fn build_schema(service: AuthService) -> AuthSchema {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .extension(error_codes::ErrorCodes)
        .data(service)
        .finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn schema_sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .finish()
        .sdl()
}
