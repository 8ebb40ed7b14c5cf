//! The GraphQL schema: roots, types, the limits an operation must stay within, and the
//! extension that gives every error a code.

mod error_codes;
mod limits;
mod mutation;
mod query;
pub mod types;

use async_graphql::{EmptySubscription, Schema};

pub use mutation::MutationRoot;
pub use query::QueryRoot;

use crate::{config::Config, service::AuthService};

pub type AuthSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// What `register`, `login`, `refresh` and `changePassword` cost against `GRAPHQL_MAX_COMPLEXITY`
/// (ordinary fields cost 1): with the default limit of 1000 no operation holds two of them.
pub const EXPENSIVE_FIELD_COST: usize = 500;

pub fn build_schema(service: AuthService, config: &Config) -> AuthSchema {
    let mut schema = Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .extension(error_codes::ErrorCodes)
        .extension(limits::AliasLimit(config.graphql_max_aliases))
        .limit_depth(config.graphql_max_depth)
        .limit_complexity(config.graphql_max_complexity)
        .limit_directives(config.graphql_max_directives)
        .data(service);
    if !config.graphql_introspection {
        schema = schema.disable_introspection().disable_suggestions();
    }
    schema.finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn schema_sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .finish()
        .sdl()
}
