//! The GraphQL schema: roots, types, and its extensions: `request_metrics` (counts and times
//! every request), `request_checks` (error codes, limits, variable coercion, the document
//! cache) and `null_propagation`.

mod coercion;
mod limits;
mod mutation;
mod null_propagation;
mod query;
mod refresh_cookie;
mod request_checks;
mod request_metrics;
mod subscription;
pub mod types;

use async_graphql::{
    Positioned, SDLExportOptions, Schema,
    parser::types::{ExecutableDocument, OperationDefinition, OperationType},
};

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use refresh_cookie::{RefreshCookie, RequestRefreshCookie};
pub use subscription::{SlowSubscriber, SubscriptionRoot};

use crate::{config::Config, service::AuthService};

/// authql's executable schema: queries, mutations, and `sessionEvents` over WebSocket.
pub type AuthSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What `register`, `login`, `refresh` and `changePassword` cost against `GRAPHQL_MAX_COMPLEXITY`
/// (ordinary fields cost 1): with the default limit of 1000 no operation holds two of them.
pub const EXPENSIVE_FIELD_COST: usize = 500;

/// The executable schema. `refresh_cookie` is `Some` when the refresh token travels in a cookie.
pub fn build_schema(
    service: AuthService,
    config: &Config,
    refresh_cookie: Option<RefreshCookie>,
) -> AuthSchema {
    let mut schema = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .extension(request_metrics::RequestMetrics)
        .extension(request_checks::RequestChecks::new(
            config.graphql_max_aliases,
        ))
        .extension(null_propagation::NullPropagation)
        .limit_depth(config.graphql_max_depth)
        .limit_complexity(config.graphql_max_complexity)
        .limit_directives(config.graphql_max_directives)
        .data(service);
    if let Some(cookie) = refresh_cookie {
        schema = schema.data(cookie);
    }
    if !config.graphql_introspection {
        schema = schema.disable_introspection().disable_suggestions();
    }
    schema.finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn schema_sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl_with_options(SDLExportOptions::new().include_specified_by())
}

/// The operation `name` picks from `document` (GraphQL spec § 6.1 "GetOperation"): the one so
/// named, or without a name the only one. `None` when there is no such operation.
pub fn get_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    let mut operations = document.operations.iter();
    match name {
        Some(wanted) => operations
            .find(|(found, _)| found.is_some_and(|found| found.as_str() == wanted))
            .map(|(_, operation)| operation),
        None => match (operations.next(), operations.next()) {
            (Some((_, only)), None) => Some(only),
            _ => None,
        },
    }
}

/// The type of the operation `name` picks from the query text; `None` when the text does not
/// parse or names no single operation (the executor then reports why).
pub fn operation_type(query: &str, name: Option<&str>) -> Option<OperationType> {
    let document = async_graphql::parser::parse_query(query).ok()?;
    get_operation(&document, name).map(|operation| operation.node.ty)
}
