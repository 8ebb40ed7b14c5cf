//! The one way into the GraphQL engine. Every transport (HTTP POST, GET, a persisted query, a
//! WebSocket `subscribe`) hands its query text to [`DocumentChecks::check`], and only the
//! [`CheckedRequest`] that comes out can be executed ([`super::Engine`]): its fields are
//! private to this module, so no transport can build one around text that skipped the checks.
//!
//! The checks, cheapest first, each bounded by the size of the text:
//! 1. **Size**: at most `GRAPHQL_MAX_QUERY_BYTES` (`QUERY_TOO_LARGE`).
//! 2. **Nesting** of `()`, `[]` and `{}` outside strings and comments: at most
//!    `GRAPHQL_MAX_NESTING` (`QUERY_TOO_DEEP`). The parser recurses on nested values and would
//!    overflow its stack on a few thousand levels, so this runs before it.
//! 3. **Parsing** (`GRAPHQL_PARSE_FAILED`).
//! 4. **Fragment fan-out**: the number of selections once every fragment spread is expanded,
//!    counted with one memo entry per fragment so that the count itself costs one pass over
//!    the text. Ten spreads of a fragment that holds ten spreads of the next, eight levels deep,
//!    is 640 bytes of text and 10^8 selections for every later walk (validation, depth,
//!    complexity); at most `GRAPHQL_MAX_COMPLEXITY` selections are accepted, the same bound the
//!    cost limit sets (every field costs at least 1), and a fragment that spreads itself is
//!    refused (GraphQL spec § 5.5.2.2 "Fragment spreads must not form cycles"); both
//!    `GRAPHQL_VALIDATION_FAILED`.
//! 5. **Directives** in every place the grammar allows them (operations, variable definitions,
//!    fields, fragment definitions, spreads and inline fragments): at most
//!    `GRAPHQL_MAX_DIRECTIVES` in any one place (`GRAPHQL_VALIDATION_FAILED`).
//! 6. **Aliases**: at most `GRAPHQL_MAX_ALIASES` in the document (`TOO_MANY_ALIASES`).
//!
//! A document that passes is kept (bounded LRU, by its text), so that a repeated operation
//! (`me`, on every page view) is neither parsed nor walked again; what can differ between two
//! requests with the same text, their variables, is checked on every request by the engine
//! (`request_checks`).

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Pos, ServerError, Variables,
    parser::types::{
        Directive, ExecutableDocument, OperationType, Selection, SelectionSet, VariableDefinition,
    },
};
use async_graphql_value::Name;
use lru::LruCache;

use super::get_operation;

/// How many checked documents are kept: a frontend sends a few dozen distinct operations.
const DOCUMENT_CACHE_CAPACITY: usize = 256;

/// What a document may hold, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// `GRAPHQL_MAX_QUERY_BYTES`.
    pub max_bytes: usize,
    /// `GRAPHQL_MAX_NESTING`: deepest nesting of `()`, `[]` and `{}` in the text.
    pub max_nesting: usize,
    /// `GRAPHQL_MAX_COMPLEXITY`: most selections once fragments are expanded.
    pub max_selections: usize,
    /// `GRAPHQL_MAX_DIRECTIVES`: most directives in any one place.
    pub max_directives: usize,
    /// `GRAPHQL_MAX_ALIASES`: most aliases in the document.
    pub max_aliases: usize,
}

/// Why a query text was refused.
#[derive(Debug)]
pub enum Refusal {
    /// Refused unread (`QUERY_TOO_LARGE`, `QUERY_TOO_DEEP`): the transport answers it as a
    /// malformed request (HTTP 400 in both media types).
    Unread { code: &'static str, message: String },
    /// A GraphQL request error (`GRAPHQL_PARSE_FAILED`, `GRAPHQL_VALIDATION_FAILED`,
    /// `TOO_MANY_ALIASES`), coded in its extensions.
    Invalid(ServerError),
}

impl Refusal {
    /// The `extensions.code` the client gets.
    pub fn code(&self) -> &str {
        match self {
            Self::Unread { code, .. } => code,
            Self::Invalid(error) => match error.extensions.as_ref().and_then(|e| e.get("code")) {
                Some(async_graphql::Value::String(code)) => code,
                _ => "GRAPHQL_VALIDATION_FAILED",
            },
        }
    }

    /// As the GraphQL errors of a response (`{"message", "locations"?, "extensions": {"code"}}`).
    pub fn into_server_error(self) -> ServerError {
        match self {
            Self::Unread { code, message } => coded(ServerError::new(message, None), code),
            Self::Invalid(error) => error,
        }
    }
}

/// A request whose document passed every check: the only thing the engine executes.
pub struct CheckedRequest {
    pub(super) request: async_graphql::Request,
    operation: Option<OperationType>,
}

impl CheckedRequest {
    /// The type of the operation that will run (GraphQL spec § 6.1 "GetOperation"); `None` when
    /// `operationName` names none of the document's operations, or the document has several and
    /// no name picks one (the engine answers `OPERATION_RESOLUTION_FAILURE`).
    pub fn operation_type(&self) -> Option<OperationType> {
        self.operation
    }

    /// Adds request data (the bearer token, the client's address, the refresh cookie).
    pub fn data<D: std::any::Any + Send + Sync>(mut self, data: D) -> Self {
        self.request = self.request.data(data);
        self
    }
}

/// The checks with their limits, and the documents that passed them.
pub struct DocumentChecks {
    limits: DocumentLimits,
    passed: Mutex<LruCache<String, Arc<ExecutableDocument>>>,
}

impl DocumentChecks {
    /// The checks with `limits`, and an empty cache of documents that passed them (at most
    /// `DOCUMENT_CACHE_CAPACITY`, least recently used dropped first).
    pub fn new(limits: DocumentLimits) -> Self {
        let capacity = NonZeroUsize::new(DOCUMENT_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self {
            limits,
            passed: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The limits the checks apply.
    pub fn limits(&self) -> DocumentLimits {
        self.limits
    }

    /// Runs the checks of the module on `query` and builds the request the engine may execute.
    /// Errors: [`Refusal`], with the code of the first check that failed.
    pub fn check(
        &self,
        query: String,
        operation_name: Option<String>,
        variables: Variables,
    ) -> Result<CheckedRequest, Refusal> {
        let document = self.document(&query)?;
        let operation =
            get_operation(&document, operation_name.as_deref()).map(|operation| operation.node.ty);
        let mut request = async_graphql::Request::new(query).variables(variables);
        request.operation_name = operation_name;
        request.set_parsed_query(ExecutableDocument::clone(&document));
        Ok(CheckedRequest { request, operation })
    }

    /// The checked document of `query`, from the cache or checked now.
    fn document(&self, query: &str) -> Result<Arc<ExecutableDocument>, Refusal> {
        if let Some(document) = lock(&self.passed).get(query) {
            return Ok(document.clone());
        }
        let document = Arc::new(check_text(query, &self.limits)?);
        lock(&self.passed).put(query.to_owned(), document.clone());
        Ok(document)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The cache holds no invariant a panic could break half-way.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every check of the module, in order, on text not seen before.
fn check_text(query: &str, limits: &DocumentLimits) -> Result<ExecutableDocument, Refusal> {
    if query.len() > limits.max_bytes {
        return Err(Refusal::Unread {
            code: "QUERY_TOO_LARGE",
            message: format!("the query is longer than {} bytes", limits.max_bytes),
        });
    }
    if nesting_exceeds(query, limits.max_nesting) {
        return Err(Refusal::Unread {
            code: "QUERY_TOO_DEEP",
            message: format!("the query nests more than {} levels", limits.max_nesting),
        });
    }
    let document = async_graphql::parser::parse_query(query).map_err(|error| {
        Refusal::Invalid(coded(ServerError::from(error), "GRAPHQL_PARSE_FAILED"))
    })?;
    let selections = expanded_selections(&document).ok_or_else(|| {
        invalid(
            "a fragment spreads itself, directly or through other fragments".into(),
            None,
            "GRAPHQL_VALIDATION_FAILED",
        )
    })?;
    if selections > limits.max_selections {
        return Err(invalid(
            format!(
                "the query selects more than {} fields once its fragments are expanded",
                limits.max_selections
            ),
            None,
            "GRAPHQL_VALIDATION_FAILED",
        ));
    }
    if let Some(position) = too_many_directives(&document, limits.max_directives) {
        return Err(invalid(
            format!(
                "more than {} directives in one place",
                limits.max_directives
            ),
            Some(position),
            "GRAPHQL_VALIDATION_FAILED",
        ));
    }
    let aliases = count_aliases(&document);
    if aliases > limits.max_aliases {
        return Err(invalid(
            format!(
                "the request uses {aliases} aliases; at most {} are allowed",
                limits.max_aliases
            ),
            None,
            "TOO_MANY_ALIASES",
        ));
    }
    Ok(document)
}

fn invalid(message: String, position: Option<Pos>, code: &'static str) -> Refusal {
    Refusal::Invalid(coded(ServerError::new(message, position), code))
}

fn coded(mut error: ServerError, code: &str) -> ServerError {
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
    error
}

/// Whether `()`, `[]` or `{}` nest deeper than `limit` outside strings and comments. Unbalanced
/// text is left to the parser, which reports it.
pub(super) fn nesting_exceeds(query: &str, limit: usize) -> bool {
    let bytes = query.as_bytes();
    let (mut depth, mut at) = (0usize, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            b'"' if bytes[at..].starts_with(b"\"\"\"") => {
                at += 3;
                while at < bytes.len() && !bytes[at..].starts_with(b"\"\"\"") {
                    at += if bytes[at..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                at += 2;
            }
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' && bytes[at] != b'\n' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    false
}

/// The selections (fields, spreads, inline fragments) of every operation and every fragment
/// definition with each spread replaced by what it spreads: what a walk over the document
/// visits. `None` when fragments spread each other in a cycle. Saturates instead of
/// overflowing; a spread of a fragment the document lacks counts 1 (validation reports it).
fn expanded_selections(document: &ExecutableDocument) -> Option<usize> {
    /// The expanded size of each fragment; `None` while it is being counted (a cycle).
    struct Sizes<'a> {
        document: &'a ExecutableDocument,
        memo: HashMap<&'a Name, Option<usize>>,
    }
    impl<'a> Sizes<'a> {
        fn selection_set(&mut self, set: &'a SelectionSet) -> Option<usize> {
            let mut total = 0usize;
            for selection in &set.items {
                let size = match &selection.node {
                    Selection::Field(field) => {
                        self.selection_set(&field.node.selection_set.node)?
                    }
                    Selection::InlineFragment(fragment) => {
                        self.selection_set(&fragment.node.selection_set.node)?
                    }
                    Selection::FragmentSpread(spread) => {
                        self.fragment(&spread.node.fragment_name.node)?
                    }
                };
                total = total.saturating_add(1).saturating_add(size);
            }
            Some(total)
        }

        fn fragment(&mut self, name: &'a Name) -> Option<usize> {
            match self.memo.get(name) {
                Some(Some(size)) => return Some(*size),
                Some(None) => return None,
                None => {}
            }
            let Some(fragment) = self.document.fragments.get(name) else {
                return Some(0);
            };
            self.memo.insert(name, None);
            let size = self.selection_set(&fragment.node.selection_set.node)?;
            self.memo.insert(name, Some(size));
            Some(size)
        }
    }
    let mut sizes = Sizes {
        document,
        memo: HashMap::new(),
    };
    let mut total = 0usize;
    for (_, operation) in document.operations.iter() {
        total = total.saturating_add(sizes.selection_set(&operation.node.selection_set.node)?);
    }
    for name in document.fragments.keys() {
        total = total.saturating_add(sizes.fragment(name)?);
    }
    Some(total)
}

/// Where some place holds more than `max` directives, if one does.
fn too_many_directives(document: &ExecutableDocument, max: usize) -> Option<Pos> {
    fn over(directives: &[async_graphql::Positioned<Directive>], max: usize) -> Option<Pos> {
        (directives.len() > max).then(|| directives[max].pos)
    }
    fn in_set(set: &SelectionSet, max: usize) -> Option<Pos> {
        set.items.iter().find_map(|selection| {
            over(selection.node.directives(), max).or_else(|| match &selection.node {
                Selection::Field(field) => in_set(&field.node.selection_set.node, max),
                Selection::InlineFragment(fragment) => {
                    in_set(&fragment.node.selection_set.node, max)
                }
                Selection::FragmentSpread(_) => None,
            })
        })
    }
    let in_variables = |definitions: &[async_graphql::Positioned<VariableDefinition>]| {
        definitions
            .iter()
            .find_map(|definition| over(&definition.node.directives, max))
    };
    let operations = document.operations.iter().find_map(|(_, operation)| {
        over(&operation.node.directives, max)
            .or_else(|| in_variables(&operation.node.variable_definitions))
            .or_else(|| in_set(&operation.node.selection_set.node, max))
    });
    operations.or_else(|| {
        document.fragments.values().find_map(|fragment| {
            over(&fragment.node.directives, max)
                .or_else(|| in_set(&fragment.node.selection_set.node, max))
        })
    })
}

/// Aliased fields in the document (operations and fragments counted once each): without a
/// limit one request could ask for the same field hundreds of times under different names.
fn count_aliases(document: &ExecutableDocument) -> usize {
    fn in_set(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|selection| match &selection.node {
                Selection::Field(field) => {
                    usize::from(field.node.alias.is_some()) + in_set(&field.node.selection_set.node)
                }
                Selection::InlineFragment(fragment) => in_set(&fragment.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let operations = document
        .operations
        .iter()
        .map(|(_, operation)| in_set(&operation.node.selection_set.node));
    let fragments = document
        .fragments
        .values()
        .map(|fragment| in_set(&fragment.node.selection_set.node));
    operations.chain(fragments).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DocumentLimits = DocumentLimits {
        max_bytes: 16 * 1024,
        max_nesting: 32,
        max_selections: 1000,
        max_directives: 5,
        max_aliases: 15,
    };

    fn check(query: &str) -> Result<CheckedRequest, Refusal> {
        DocumentChecks::new(LIMITS).check(query.to_owned(), None, Variables::default())
    }

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert!(!nesting_exceeds("{ me { id } }", 2));
        assert!(nesting_exceeds("{ me { id } }", 1));
        let deep = format!("{{me(x:{}{})}}", "[".repeat(5000), "]".repeat(5000));
        assert!(nesting_exceeds(&deep, 64));
        assert!(!nesting_exceeds("{ a(s: \"[[[[[[\") # {{{{{{\n }", 3));
        assert!(!nesting_exceeds(
            "{ a(s: \"\"\"[[[[ \\\"\"\" ((((\"\"\") }",
            3
        ));
        assert!(!nesting_exceeds("\"unterminated [[[[", 1));
    }

    #[test]
    fn fragment_fan_out_is_counted_once_per_fragment() {
        // The reported 640-byte query: 10 spreads per level, 8 levels.
        let mut query = String::from("{ ...F0 }");
        for level in 0..7 {
            let spreads = format!("...F{} ", level + 1).repeat(10);
            query.push_str(&format!(" fragment F{level} on Query {{ {spreads}}}"));
        }
        query.push_str(" fragment F7 on Query { __typename }");
        let started = std::time::Instant::now();
        let refused = check(&query).err().expect("refused");
        assert_eq!(refused.code(), "GRAPHQL_VALIDATION_FAILED");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));

        let fine =
            "{ ...A ...A } fragment A on Query { me { ...B } } fragment B on User { id email }";
        assert!(check(fine).is_ok());
        assert_eq!(
            expanded_selections(&async_graphql::parser::parse_query(fine).unwrap()),
            // { ...A ...A }: 2 × (1 + 4); A: me (1) + ...B (1 + 2) = 4; B: 2.
            Some(16)
        );
    }

    #[test]
    fn fragment_cycles_are_refused() {
        for query in [
            "{ ...A } fragment A on Query { ...A }",
            "{ ...A } fragment A on Query { me { ...B } } fragment B on User { ... on User { ...C } } fragment C on User { ...B }",
        ] {
            assert_eq!(
                check(query).err().unwrap().code(),
                "GRAPHQL_VALIDATION_FAILED"
            );
        }
    }

    #[test]
    fn directives_are_limited_everywhere() {
        let six = "@aa ".repeat(6);
        for query in [
            format!("query {six} {{ __typename }}"),
            format!("query($v: Int {six}) {{ __typename }}"),
            format!("{{ __typename {six} }}"),
            format!("{{ ...F {six} }} fragment F on Query {{ __typename }}"),
            format!("{{ ... {six} {{ __typename }} }}"),
            format!("{{ ...F }} fragment F on Query {six} {{ __typename }}"),
        ] {
            assert_eq!(
                check(&query).err().unwrap().code(),
                "GRAPHQL_VALIDATION_FAILED",
                "{query}"
            );
        }
        let five = "@aa ".repeat(5);
        assert!(check(&format!("query {five} {{ __typename {five} }}")).is_ok());
    }

    #[test]
    fn the_cheap_checks_come_first() {
        let long = format!("{{ __typename }} # {}", "x".repeat(20 * 1024));
        assert_eq!(check(&long).err().unwrap().code(), "QUERY_TOO_LARGE");
        let deep = format!("{{me(x:{}1{})}}", "[".repeat(3000), "]".repeat(3000));
        assert_eq!(check(&deep).err().unwrap().code(), "QUERY_TOO_DEEP");
        assert_eq!(
            check("{ me {").err().unwrap().code(),
            "GRAPHQL_PARSE_FAILED"
        );
        let aliases: String = (0..16).map(|i| format!("a{i}: __typename ")).collect();
        assert_eq!(
            check(&format!("{{ {aliases} }}")).err().unwrap().code(),
            "TOO_MANY_ALIASES"
        );
    }

    #[test]
    fn the_operation_type_is_read_from_the_checked_document() {
        let checks = DocumentChecks::new(LIMITS);
        let both = "query A { __typename } mutation B { logout }";
        let pick = |name: Option<&str>| {
            checks
                .check(both.into(), name.map(Into::into), Variables::default())
                .unwrap()
                .operation_type()
        };
        assert_eq!(pick(Some("B")), Some(OperationType::Mutation));
        assert_eq!(pick(Some("A")), Some(OperationType::Query));
        assert_eq!(pick(None), None);
        assert_eq!(pick(Some("C")), None);
    }

    /// Fragment `i` of `n` selects `fields[i]` fields and spreads each later fragment `j`
    /// `spreads[i][j]` times; the operation spreads fragment 0.
    fn dag_document(n: usize, fields: &[usize], spreads: &[Vec<usize>]) -> String {
        let mut text = String::from("{ ...F0 }");
        for i in 0..n {
            let mut body = "__typename ".repeat(fields[i]);
            for (j, count) in spreads[i].iter().enumerate().take(n).skip(i + 1) {
                body.push_str(&format!("...F{j} ").repeat(*count));
            }
            if body.is_empty() {
                body.push_str("__typename");
            }
            text.push_str(&format!(" fragment F{i} on Query {{ {body}}}"));
        }
        text
    }

    /// The same count by expanding every spread, one by one (exponential; small inputs only).
    fn naive(n: usize, fields: &[usize], spreads: &[Vec<usize>]) -> usize {
        fn fragment(i: usize, n: usize, fields: &[usize], spreads: &[Vec<usize>]) -> usize {
            let own = fields[i].max(usize::from(
                fields[i] == 0 && (i + 1..n).all(|j| spreads[i][j] == 0),
            ));
            own + (i + 1..n)
                .map(|j| spreads[i][j] * (1 + fragment(j, n, fields, spreads)))
                .sum::<usize>()
        }
        let operation = 1 + fragment(0, n, fields, spreads);
        operation
            + (0..n)
                .map(|i| fragment(i, n, fields, spreads))
                .sum::<usize>()
    }

    proptest::proptest! {
        #[test]
        fn the_memoised_count_is_what_expanding_every_spread_counts(
            n in 1usize..6,
            fields in proptest::collection::vec(0usize..4, 6),
            spreads in proptest::collection::vec(proptest::collection::vec(0usize..4, 6), 6),
        ) {
            let text = dag_document(n, &fields, &spreads);
            let document = async_graphql::parser::parse_query(&text).unwrap();
            proptest::prop_assert_eq!(
                expanded_selections(&document),
                Some(naive(n, &fields, &spreads))
            );
        }

        #[test]
        fn any_text_is_checked_without_panicking(text in "\\PC{0,400}") {
            let _ = check(&text);
        }
    }
}
