//! Counts and times every GraphQL request (`authql_graphql_requests_total`,
//! `authql_graphql_request_duration_seconds`), labelled by what it ran and how it ended.
//!
//! - `operation`: the root field the executed operation selects (`me`, `login`, ...), checked
//!   against the schema; `multiple` for several, `introspection` for `__schema` / `__type`,
//!   `none` when no operation ran (a parse or validation error, an unknown field). Never the
//!   client's `operationName` or any other text of the request.
//! - `outcome`: `OK`, or the `extensions.code` of the first error (authql's codes are upper
//!   snake case; anything else would be counted as `OTHER`).
//!
//! It is registered first, so it sees the response after every other extension coded it.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Instant,
};

use async_graphql::{
    Request, Response, ServerResult, Value, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
        NextRequest,
    },
    parser::types::{ExecutableDocument, OperationType, Selection},
    registry::Registry,
};

pub struct RequestMetrics;

impl ExtensionFactory for RequestMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestMetricsExtension::default())
    }
}

#[derive(Default)]
struct RequestMetricsExtension {
    operation_name: Mutex<Option<String>>,
    operation: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Extension for RequestMetricsExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let outcome = match response.errors.first() {
            None => "OK",
            Some(error) => match error.extensions.as_ref().and_then(|e| e.get("code")) {
                Some(Value::String(code)) if is_code(code) => code.as_str(),
                _ => "OTHER",
            },
        };
        let operation = lock(&self.operation).take();
        // A request that failed validation ran nothing, whatever it named.
        let operation = match operation.as_deref() {
            Some(operation) if outcome != "GRAPHQL_VALIDATION_FAILED" => operation,
            _ => "none",
        };
        crate::metrics::graphql_request(operation, outcome, started.elapsed().as_secs_f64());
        response
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        lock(&self.operation_name).clone_from(&request.operation_name);
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let name = lock(&self.operation_name).clone();
        *lock(&self.operation) =
            operation_label(&ctx.schema_env.registry, &document, name.as_deref());
        Ok(document)
    }
}

/// authql's error codes: upper snake case, short.
fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|byte| byte.is_ascii_uppercase() || byte == b'_')
}

/// The label of the operation `name` picks from `document` (see the module).
fn operation_label(
    registry: &Registry,
    document: &ExecutableDocument,
    name: Option<&str>,
) -> Option<String> {
    let operation = super::get_operation(document, name)?;
    let root = match operation.node.ty {
        OperationType::Query => &registry.query_type,
        OperationType::Mutation => registry.mutation_type.as_ref()?,
        OperationType::Subscription => registry.subscription_type.as_ref()?,
    };
    let root_fields = &registry.types.get(root)?.fields()?;
    let mut names = BTreeSet::new();
    for selection in &operation.node.selection_set.node.items {
        match &selection.node {
            Selection::Field(field) => {
                let name = field.node.name.node.as_str();
                if name == "__typename" {
                    continue;
                }
                if name.starts_with("__") {
                    names.insert("introspection");
                } else if let Some((known, _)) = root_fields.get_key_value(name) {
                    names.insert(known.as_str());
                } else {
                    return None;
                }
            }
            // Fragments at the root: several fields, most likely.
            _ => return Some("multiple".to_owned()),
        }
    }
    match names.len() {
        0 => None,
        1 => names.pop_first().map(str::to_owned),
        _ => Some("multiple".to_owned()),
    }
}
