//! The GraphQL schema: roots, types, and its extensions: `request_checks` (error codes,
//! variable coercion, the validation cache, and the request metrics of `request_metrics`) and
//! `null_propagation`. The [`Engine`] runs it, and takes only a [`CheckedRequest`]: a document
//! that passed the edge's checks (`checked`). With `FEDERATION=true` the query root is
//! [`FederatedQueryRoot`] instead (`federation`): the same schema as an Apollo Federation 2
//! subgraph.

mod checked;
mod coercion;
mod federation;
mod mutation;
mod null_propagation;
mod query;
mod refresh_cookie;
mod request_checks;
mod request_metrics;
mod subscription;
pub mod types;

use async_graphql::{
    ObjectType, Positioned, SDLExportOptions, Schema,
    parser::types::{ExecutableDocument, OperationDefinition},
};
use futures_util::{Stream, future::Either};

pub use checked::{CheckedRequest, DocumentChecks, DocumentLimits, Refusal};
pub use federation::FederatedQueryRoot;
pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use refresh_cookie::{RefreshCookie, RequestRefreshCookie};
pub use subscription::{SlowSubscriber, SubscriptionRoot};

use crate::{config::Config, service::AuthService};

/// authql's executable schema: queries, mutations, and `sessionEvents` over WebSocket.
type AuthSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The same as an Apollo Federation 2 subgraph (`FEDERATION=true`): `_service`, `_entities`.
type SubgraphSchema = Schema<FederatedQueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema, executable only with a [`CheckedRequest`]: the one way into it.
#[derive(Clone)]
pub struct Engine {
    schema: EngineSchema,
}

/// Which schema the engine runs, chosen once at start from `FEDERATION`.
#[derive(Clone)]
enum EngineSchema {
    Plain(AuthSchema),
    Subgraph(SubgraphSchema),
}

impl Engine {
    /// Runs a query or mutation (a subscription's first event).
    pub async fn execute(&self, request: CheckedRequest) -> async_graphql::Response {
        match &self.schema {
            EngineSchema::Plain(schema) => schema.execute(request.request).await,
            EngineSchema::Subgraph(schema) => schema.execute(request.request).await,
        }
    }

    /// Runs a subscription: one response per event, until the stream ends.
    pub fn execute_stream(
        &self,
        request: CheckedRequest,
    ) -> impl Stream<Item = async_graphql::Response> + Send + Unpin + 'static {
        match &self.schema {
            EngineSchema::Plain(schema) => Either::Left(schema.execute_stream(request.request)),
            EngineSchema::Subgraph(schema) => Either::Right(schema.execute_stream(request.request)),
        }
    }
}

/// What `register`, `login`, `refresh` and `changePassword` cost against `GRAPHQL_MAX_COMPLEXITY`
/// (ordinary fields cost 1): with the default limit of 1000 no operation holds two of them.
pub const EXPENSIVE_FIELD_COST: usize = 500;

/// The executable schema. `refresh_cookie` is `Some` when the refresh token travels in a cookie.
/// Directives and aliases are limited by the edge's checks (`checked`), in every place. With
/// `FEDERATION=true` it is the Apollo Federation 2 subgraph schema (`federation`), otherwise
/// exactly the schema `schema_sdl` prints.
pub fn build_engine(
    service: AuthService,
    config: &Config,
    refresh_cookie: Option<RefreshCookie>,
) -> Engine {
    let schema = if config.federation {
        EngineSchema::Subgraph(build_schema(
            FederatedQueryRoot::default(),
            service,
            config,
            refresh_cookie,
        ))
    } else {
        EngineSchema::Plain(build_schema(
            QueryRoot::default(),
            service,
            config,
            refresh_cookie,
        ))
    };
    Engine { schema }
}

/// The schema around `query`, with the extensions, limits and data of every request.
fn build_schema<Query: ObjectType + 'static>(
    query: Query,
    service: AuthService,
    config: &Config,
    refresh_cookie: Option<RefreshCookie>,
) -> Schema<Query, MutationRoot, SubscriptionRoot> {
    // Two extensions, each a link in the chain every field of every request resolves through.
    let mut schema = Schema::build(query, MutationRoot, SubscriptionRoot)
        // One representation at least, however few aliases: a `me` without an alias is one
        // `User` too.
        .extension(request_checks::RequestChecks::new(
            config.graphql_max_aliases.max(1),
        ))
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
    schema.finish()
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

/// The schema in SDL, as committed in `schema.graphql` (`authql print-schema`).
pub fn schema_sdl() -> String {
    Schema::build(QueryRoot::default(), MutationRoot, SubscriptionRoot)
        .finish()
        .sdl_with_options(SDLExportOptions::new().include_specified_by())
}

/// The Apollo Federation 2 subgraph SDL (`authql print-schema --federation`): what
/// `_service { sdl }` answers with `FEDERATION=true`, for composing a supergraph offline
/// (`rover supergraph compose`). It links the federation spec (`extend schema @link(url:
/// "https://specs.apollo.dev/federation/v2.5", import: [...])`), marks `type User @key(fields:
/// "id")`, and leaves out `Subscription` and the federation fields themselves.
pub fn subgraph_sdl() -> String {
    Schema::build(
        FederatedQueryRoot::default(),
        MutationRoot,
        SubscriptionRoot,
    )
    .finish()
    .sdl_with_options(federation::subgraph_sdl_options())
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
