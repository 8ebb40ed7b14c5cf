//! The GraphQL schema: roots, types, and its extensions: `request_metrics` (counts and times
//! every request), `request_checks` (error codes, variable coercion, the validation cache) and
//! `null_propagation`. The [`Engine`] runs it, and takes only a [`CheckedRequest`]: a document
//! that passed the edge's checks (`checked`).

mod checked;
mod coercion;
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
    parser::types::{ExecutableDocument, OperationDefinition},
};
use futures_util::Stream;

pub use checked::{CheckedRequest, DocumentChecks, DocumentLimits, Refusal};
pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use refresh_cookie::{RefreshCookie, RequestRefreshCookie};
pub use subscription::{SlowSubscriber, SubscriptionRoot};

use crate::{config::Config, service::AuthService};

/// authql's executable schema: queries, mutations, and `sessionEvents` over WebSocket.
type AuthSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema, executable only with a [`CheckedRequest`]: the one way into it.
#[derive(Clone)]
pub struct Engine {
    schema: AuthSchema,
}

impl Engine {
    /// Runs a query or mutation (a subscription's first event).
    pub async fn execute(&self, request: CheckedRequest) -> async_graphql::Response {
        self.schema.execute(request.request).await
    }

    /// Runs a subscription: one response per event, until the stream ends.
    pub fn execute_stream(
        &self,
        request: CheckedRequest,
    ) -> impl Stream<Item = async_graphql::Response> + Send + Unpin + 'static {
        self.schema.execute_stream(request.request)
    }
}

/// What `register`, `login`, `refresh` and `changePassword` cost against `GRAPHQL_MAX_COMPLEXITY`
/// (ordinary fields cost 1): with the default limit of 1000 no operation holds two of them.
pub const EXPENSIVE_FIELD_COST: usize = 500;

/// The executable schema. `refresh_cookie` is `Some` when the refresh token travels in a cookie.
/// Directives and aliases are limited by the edge's checks (`checked`), in every place.
pub fn build_engine(
    service: AuthService,
    config: &Config,
    refresh_cookie: Option<RefreshCookie>,
) -> Engine {
    let mut schema = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .extension(request_metrics::RequestMetrics)
        .extension(request_checks::RequestChecks::new())
        .extension(null_propagation::NullPropagation)
        .limit_depth(config.graphql_max_depth)
        .limit_complexity(config.graphql_max_complexity)
        .data(service);
    if let Some(cookie) = refresh_cookie {
        schema = schema.data(cookie);
    }
    if !config.graphql_introspection {
        schema = schema.disable_introspection().disable_suggestions();
    }
    Engine {
        schema: schema.finish(),
    }
}

/// The limits of the edge's checks (`checked`), from the configuration.
pub fn document_limits(config: &Config) -> DocumentLimits {
    DocumentLimits {
        max_bytes: config.graphql_max_query_bytes,
        max_nesting: config.graphql_max_nesting,
        max_selections: config.graphql_max_complexity,
        max_directives: config.graphql_max_directives,
        max_aliases: config.graphql_max_aliases,
    }
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
