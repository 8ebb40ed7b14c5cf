//! What is checked about a request once its document passed the edge's checks (`checked`), in
//! one async-graphql extension:
//!
//! - **Error codes.** Every error a client sees carries `extensions.code`. authql's own errors
//!   set theirs; this codes the ones async-graphql raises before and around our resolvers.
//! - **At most `MAX_ERRORS` errors** in an answer.
//! - **Metrics.** Every request is counted and timed once its errors are coded
//!   (`request_metrics`).
//! - **Validate once.** A document's validation result is kept (bounded LRU, keyed by query
//!   text and operation name), so that a repeated operation (`me`, on every page view) pays for
//!   it once. What can differ between two requests with the same text is their variables, and
//!   those are checked on every request against the schema (`coercion`), hits included.
//!
//! async-graphql checks variable values during validation, so a variable of the wrong type
//! (`{"t": 123}` for `String!`, an unknown input field, `null` for a non-null variable) would
//! come out as a document error. The GraphQL spec calls it a coercion failure of the request's
//! input (§ 6.1.2 "Coercing Variable Values"): `BAD_USER_INPUT`. A validation error located
//! only at arguments whose value uses a variable is coded so; anything else in the document
//! is `GRAPHQL_VALIDATION_FAILED`.
//!
//! **Entity representations.** With `FEDERATION=true`, `_entities(representations: [...])`
//! resolves each representation in parallel, and the query's cost does not grow with the list
//! (async-graphql counts the field once). The list is the request's input, so it is counted
//! here, on every request, from the document and the variables: more than
//! `GRAPHQL_MAX_ALIASES` (at least 1) representations in the operation (each costs what an
//! alias of `me` would) is `BAD_USER_INPUT`, and nothing runs.
//!
//! Two request errors are checked here after validation because async-graphql gets them wrong:
//! a variable whose value does not coerce to its type (§ 6.1.2, see `coercion`; async-graphql
//! lets `null` for `String!` through to the resolver) is `BAD_USER_INPUT`, and an `operationName`
//! that names no operation of the document, or its absence from a document of several (§ 6.1
//! "GetOperation"), is `OPERATION_RESOLUTION_FAILURE`, the code Apollo Server uses.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Pos, Positioned, Request, Response, ServerError, ServerResult, ValidationResult, Value,
    Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
        NextRequest, NextValidation,
    },
    parser::types::{ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet},
};
use async_graphql_value::{ConstValue, Name, Value as InputValue};
use lru::LruCache;

use super::coercion::coercion_error;
use async_graphql::registry::Registry;

/// Validation results of documents that validated, by (query text, operation name).
type Validated = Mutex<LruCache<CacheKey, ValidationResult>>;

/// How many validation results are kept: a frontend sends a few dozen distinct operations.
const VALIDATION_CACHE_CAPACITY: usize = 256;

/// Most errors one answer carries: a document of 16 KiB can hold thousands of mistakes (one
/// argument repeated, one variable defined again and again), and the first ones say what is
/// wrong; without a cap the answer would be many times the request.
pub const MAX_ERRORS: usize = 20;

/// The extension factory: the validation cache shared by every request.
pub struct RequestChecks {
    validated: Arc<Validated>,
    max_representations: usize,
}

impl RequestChecks {
    /// The checks, with at most `max_representations` `_entities` representations in an
    /// operation (`GRAPHQL_MAX_ALIASES`).
    pub fn new(max_representations: usize) -> Self {
        let capacity = NonZeroUsize::new(VALIDATION_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self {
            validated: Arc::new(Mutex::new(LruCache::new(capacity))),
            max_representations,
        }
    }
}

impl ExtensionFactory for RequestChecks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestChecksExtension {
            validated: self.validated.clone(),
            max_representations: self.max_representations,
            state: Mutex::default(),
            variable_arguments: Mutex::default(),
            operation_name: Mutex::default(),
            selected: Mutex::default(),
            operation: Mutex::default(),
        })
    }
}

/// One request's state, gathered as it is prepared and parsed.
struct RequestChecksExtension {
    validated: Arc<Validated>,
    /// Most `_entities` representations in one operation.
    max_representations: usize,
    /// The cache key, and the cached validation result when there is one.
    state: Mutex<Option<(CacheKey, Option<ValidationResult>)>>,
    /// Positions of the arguments whose value refers to a variable.
    variable_arguments: Mutex<HashSet<Pos>>,
    /// The request's `operationName`.
    operation_name: Mutex<Option<String>>,
    /// The variables of the operation to run that do not coerce to their types; `Err` when no
    /// operation can be chosen.
    selected: Mutex<Option<Result<Vec<InvalidVariable>, ServerError>>>,
    /// The operation's label in the request metrics, once the document is parsed.
    operation: Mutex<Option<String>>,
}

/// A variable value that does not coerce: the message and the variable's position.
type InvalidVariable = (String, Pos);

type CacheKey = (String, Option<String>);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Extension for RequestChecksExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        lock(&self.operation_name).clone_from(&request.operation_name);
        next.run(ctx, request).await
    }

    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = std::time::Instant::now();
        let mut response = next.run(ctx).await;
        response.errors.truncate(MAX_ERRORS);
        // What is left uncoded comes from coercing input values (a number where a String
        // belongs, an unknown enum value): the client's input.
        for error in &mut response.errors {
            set_code_if_missing(error, "BAD_USER_INPUT");
        }
        let operation = lock(&self.operation).take();
        super::request_metrics::record(&response, operation.as_deref(), started);
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // The edge parsed and checked the document (`checked`); this hands it over.
        let document = next.run(ctx, query, variables).await.map_err(|mut error| {
            set_code_if_missing(&mut error, "GRAPHQL_PARSE_FAILED");
            error
        })?;
        let key = (query.to_owned(), lock(&self.operation_name).clone());
        let cached = lock(&self.validated).get(&key).copied();
        // Only a document that goes through async-graphql's validation needs to know where its
        // variables are used, to code that validation's errors.
        if cached.is_none() && (!variables.is_empty() || has_variable_definitions(&document)) {
            *lock(&self.variable_arguments) = variable_arguments(&document);
        }
        *lock(&self.selected) = Some(select_operation(
            &ctx.schema_env.registry,
            &document,
            key.1.as_deref(),
            variables,
            self.max_representations,
        ));
        *lock(&self.operation) = super::request_metrics::operation_label(
            &ctx.schema_env.registry,
            &document,
            key.1.as_deref(),
        );
        *lock(&self.state) = Some((key, cached));
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let state = lock(&self.state).take();
        let validated = match &state {
            Some((_, Some(result))) => Ok(*result),
            _ => next.run(ctx).await,
        };
        let validated = validated.map_err(|mut errors| {
            let variable_arguments = lock(&self.variable_arguments);
            for error in &mut errors {
                let from_variables = !error.locations.is_empty()
                    && error
                        .locations
                        .iter()
                        .all(|location| variable_arguments.contains(location));
                let code = if from_variables {
                    "BAD_USER_INPUT"
                } else {
                    "GRAPHQL_VALIDATION_FAILED"
                };
                set_code_if_missing(error, code);
            }
            errors
        })?;
        match lock(&self.selected).take() {
            Some(Err(error)) => Err(vec![error]),
            Some(Ok(invalid)) if !invalid.is_empty() => Err(invalid
                .into_iter()
                .map(|(message, position)| {
                    let mut error = ServerError::new(message, Some(position));
                    set_code_if_missing(&mut error, "BAD_USER_INPUT");
                    error
                })
                .collect()),
            _ => {
                if let Some((key, None)) = state {
                    lock(&self.validated).put(key, validated);
                }
                Ok(validated)
            }
        }
    }
}

/// The operation that runs (GraphQL spec § 6.1 "GetOperation"), and the variables it declares
/// whose values do not coerce to their types (§ 6.1.2), or its `_entities` representations
/// when they are more than `max_representations`.
fn select_operation(
    registry: &Registry,
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
    max_representations: usize,
) -> Result<Vec<InvalidVariable>, ServerError> {
    let operation = super::get_operation(document, operation_name).ok_or_else(|| {
        let message = match operation_name {
            Some(wanted) => format!("the document has no operation named {wanted:?}"),
            None => "the document has several operations: name one in operationName".into(),
        };
        let mut error = ServerError::new(message, None);
        set_code_if_missing(&mut error, "OPERATION_RESOLUTION_FAILURE");
        error
    })?;
    let mut invalid: Vec<InvalidVariable> = operation
        .node
        .variable_definitions
        .iter()
        .filter_map(|definition| {
            let name = &definition.node.name.node;
            coercion_error(
                registry,
                &definition.node.var_type.node,
                variables.get(name),
                definition.node.default_value.is_some(),
                &format!("${name}"),
            )
            .map(|message| (message, definition.pos))
        })
        .collect();
    if let Some((count, position)) = entity_representations(document, &operation.node, variables)
        && count > max_representations
    {
        invalid.push((
            format!(
                "_entities got {count} representations; at most {max_representations} \
                 (GRAPHQL_MAX_ALIASES) are allowed in one request"
            ),
            position,
        ));
    }
    Ok(invalid)
}

/// How many representations the `_entities` fields of `operation` hold in all (each
/// occurrence counted, fragments expanded), and where the first such field is; `None` without
/// one. A list literal counts its items, a variable the items of its value (or of its
/// default); a single value counts 1, as list input coercion makes it a list of one (GraphQL
/// spec § 3.11 "List"). `_entities` is a field of `Query` only, so only the root selection set
/// and the fragments spread into it are walked; a fragment cycle (refused before, by the edge's
/// checks) counts 0.
fn entity_representations(
    document: &ExecutableDocument,
    operation: &OperationDefinition,
    variables: &Variables,
) -> Option<(usize, Pos)> {
    struct Walk<'a> {
        document: &'a ExecutableDocument,
        operation: &'a OperationDefinition,
        variables: &'a Variables,
        /// Each fragment's count; `None` while it is being counted.
        fragments: HashMap<&'a Name, Option<usize>>,
        first: Option<Pos>,
    }
    impl<'a> Walk<'a> {
        fn selection_set(&mut self, set: &'a SelectionSet) -> usize {
            let mut total = 0usize;
            for selection in &set.items {
                let count = match &selection.node {
                    Selection::Field(field) if field.node.name.node == "_entities" => {
                        self.first.get_or_insert(field.pos);
                        field
                            .node
                            .get_argument("representations")
                            .map_or(0, |value| self.length(&value.node))
                    }
                    Selection::Field(_) => 0,
                    Selection::InlineFragment(fragment) => {
                        self.selection_set(&fragment.node.selection_set.node)
                    }
                    Selection::FragmentSpread(spread) => {
                        self.fragment(&spread.node.fragment_name.node)
                    }
                };
                total = total.saturating_add(count);
            }
            total
        }

        fn fragment(&mut self, name: &'a Name) -> usize {
            if let Some(count) = self.fragments.get(name) {
                return count.unwrap_or(0);
            }
            let Some(fragment) = self.document.fragments.get(name) else {
                return 0;
            };
            self.fragments.insert(name, None);
            let count = self.selection_set(&fragment.node.selection_set.node);
            self.fragments.insert(name, Some(count));
            count
        }

        fn length(&self, value: &InputValue) -> usize {
            match value {
                InputValue::List(items) => items.len(),
                InputValue::Null => 0,
                InputValue::Variable(name) => {
                    let default = self
                        .operation
                        .variable_definitions
                        .iter()
                        .find(|definition| definition.node.name.node == *name)
                        .and_then(|definition| definition.node.default_value.as_ref())
                        .map(|value| &value.node);
                    match self.variables.get(name).or(default) {
                        Some(ConstValue::List(items)) => items.len(),
                        Some(ConstValue::Null) | None => 0,
                        Some(_) => 1,
                    }
                }
                _ => 1,
            }
        }
    }
    let mut walk = Walk {
        document,
        operation,
        variables,
        fragments: HashMap::new(),
        first: None,
    };
    let count = walk.selection_set(&operation.selection_set.node);
    walk.first.map(|position| (count, position))
}

fn has_variable_definitions(document: &ExecutableDocument) -> bool {
    document
        .operations
        .iter()
        .any(|(_, operation)| !operation.node.variable_definitions.is_empty())
}

/// Where the document's arguments refer to variables (see `collect_variable_arguments`).
fn variable_arguments(document: &ExecutableDocument) -> HashSet<Pos> {
    let mut positions = HashSet::new();
    let operations = document
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set);
    let fragments = document.fragments.values().map(|f| &f.node.selection_set);
    for selection_set in operations.chain(fragments) {
        collect_variable_arguments(&selection_set.node, &mut positions);
    }
    positions
}

/// The positions of every argument (of fields and of their directives) whose value refers to a
/// variable: where async-graphql reports a variable that does not coerce.
fn collect_variable_arguments(selection_set: &SelectionSet, positions: &mut HashSet<Pos>) {
    for selection in &selection_set.items {
        match &selection.node {
            Selection::Field(field) => {
                collect_field(&field.node, positions);
                collect_variable_arguments(&field.node.selection_set.node, positions);
            }
            Selection::InlineFragment(fragment) => {
                collect_variable_arguments(&fragment.node.selection_set.node, positions);
            }
            Selection::FragmentSpread(_) => {}
        }
    }
}

fn collect_field(field: &Field, positions: &mut HashSet<Pos>) {
    let directive_arguments = field
        .directives
        .iter()
        .flat_map(|directive| directive.node.arguments.iter());
    for (name, value) in field.arguments.iter().chain(directive_arguments) {
        if uses_variable(value) {
            positions.insert(name.pos);
            positions.insert(value.pos);
        }
    }
}

fn uses_variable(value: &Positioned<InputValue>) -> bool {
    fn contains_variable(value: &InputValue) -> bool {
        match value {
            InputValue::Variable(_) => true,
            InputValue::List(items) => items.iter().any(contains_variable),
            InputValue::Object(fields) => fields.values().any(contains_variable),
            _ => false,
        }
    }
    contains_variable(&value.node)
}

fn set_code_if_missing(error: &mut ServerError, code: &str) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", Value::from(code));
    }
}
