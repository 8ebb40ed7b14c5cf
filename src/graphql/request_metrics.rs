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
//! Recorded by the request checks' extension (`request_checks`), after it coded the errors:
//! one extension rather than two, since every extension is a link in the chain every field
//! of every request resolves through.

use std::{collections::BTreeSet, time::Instant};

use async_graphql::{
    Response, Value,
    parser::types::{ExecutableDocument, OperationType, Selection},
    registry::Registry,
};

/// Records one request's metrics once its response is final (errors coded): `operation` as
/// [`operation_label`] gave it, `None` when no operation was chosen.
pub(super) fn record(response: &Response, operation: Option<&str>, started: Instant) {
    let outcome = match response.errors.first() {
        None => "OK",
        Some(error) => match error.extensions.as_ref().and_then(|e| e.get("code")) {
            Some(Value::String(code)) if is_code(code) => code.as_str(),
            _ => "OTHER",
        },
    };
    // A request that failed validation ran nothing, whatever it named.
    let operation = match operation {
        Some(operation) if outcome != "GRAPHQL_VALIDATION_FAILED" => operation,
        _ => "none",
    };
    crate::metrics::graphql_request(operation, outcome, started.elapsed().as_secs_f64());
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
pub(super) fn operation_label(
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
