//! Null propagation, as the GraphQL spec requires it (§ 6.4.4 "Handling Execution Errors"):
//! when a field raises an error its value is `null`; when that field is non-null, the `null`
//! moves to its parent, and on up to the nearest nullable position, or to `data` itself.
//!
//! async-graphql 7 instead leaves an erroring field out of its parent object, so that
//! `{ __typename me { id } }` without a token answered `{"data": {"__typename": "Query"}}`
//! although `me` is `User!`. This extension records every failing field with its return type
//! (and the return types of the fields above it) while the operation runs, then rewrites `data`
//! the way the spec says. Only operations with an error pay for more than a counter read.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_graphql::{
    Response, ServerResult, Value,
    context::QueryPathSegment,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextResolve, ResolveInfo,
    },
};

/// The extension factory; one recorder per request.
pub struct NullPropagation;

impl ExtensionFactory for NullPropagation {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Recorder::default())
    }
}

/// A step of a response path: a field's response key, or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PathSegment {
    Field(String),
    Index(usize),
}

type Path = Vec<PathSegment>;

/// What one request's execution recorded.
#[derive(Default)]
struct Recorder {
    failures: AtomicUsize,
    /// Fields that raised an error, with whether their type is non-null.
    failed: Mutex<Vec<(Path, bool)>>,
    /// The return type (e.g. `[Session!]!`) of each field that had a failure below it.
    types: Mutex<HashMap<Path, String>>,
}

#[async_trait::async_trait]
impl Extension for Recorder {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        if self.failures.load(Ordering::Acquire) > 0 {
            let failed = std::mem::take(&mut *lock(&self.failed));
            let types = std::mem::take(&mut *lock(&self.types));
            propagate(&mut response.data, failed, &types);
        }
        response
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let failures_before = self.failures.load(Ordering::Acquire);
        let (path_node, return_type) = (info.path_node, info.return_type);
        let result = next.run(ctx, info).await;
        if result.is_err() {
            let path = path_of(path_node);
            lock(&self.types).insert(path.clone(), return_type.to_owned());
            lock(&self.failed).push((path, return_type.ends_with('!')));
            self.failures.fetch_add(1, Ordering::AcqRel);
        } else if self.failures.load(Ordering::Acquire) != failures_before {
            // Something failed while this field ran: most likely below it (a sibling running
            // concurrently adds an entry that is simply never asked for).
            lock(&self.types).insert(path_of(path_node), return_type.to_owned());
        }
        result
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn path_of(node: &async_graphql::context::QueryPathNode<'_>) -> Path {
    let mut path: Path = std::iter::once(node)
        .chain(node.parents())
        .map(|node| match node.segment {
            QueryPathSegment::Name(name) => PathSegment::Field(name.to_owned()),
            QueryPathSegment::Index(index) => PathSegment::Index(index),
        })
        .collect();
    path.reverse();
    path
}

/// Rewrites `data` for the recorded failures: non-null ones first (they may null whole
/// subtrees), then nullable ones, which appear as `null` where their parent still stands.
fn propagate(data: &mut Value, failed: Vec<(Path, bool)>, types: &HashMap<Path, String>) {
    let (non_null, nullable): (Vec<_>, Vec<_>) = failed.into_iter().partition(|(_, nn)| *nn);
    for (path, _) in non_null {
        let mut position = path;
        loop {
            position.pop();
            if position.is_empty() {
                *data = Value::Null;
                return;
            }
            if is_nullable(&position, types) {
                set(data, &position, Value::Null);
                break;
            }
        }
    }
    for (path, _) in nullable {
        // async-graphql answers `data: null` when every root field failed; nullable root
        // fields that failed belong in an object of their own.
        if path.len() == 1 && *data == Value::Null {
            *data = Value::Object(Default::default());
        }
        set(data, &path, Value::Null);
    }
}

/// Whether the value at `position` may be null: a field by its own type, a list item by its
/// list's item type (`[Session!]!` holds non-null items).
fn is_nullable(position: &[PathSegment], types: &HashMap<Path, String>) -> bool {
    let indexes = position
        .iter()
        .rev()
        .take_while(|segment| matches!(segment, PathSegment::Index(_)))
        .count();
    let Some(field_type) = types.get(&position[..position.len() - indexes]) else {
        // Unknown: treat as non-null, so that the null moves up rather than leaving a value
        // the schema forbids.
        return false;
    };
    let mut item_type = field_type.as_str();
    for _ in 0..indexes {
        item_type = item_type
            .trim_end_matches('!')
            .trim_start_matches('[')
            .strip_suffix(']')
            .unwrap_or(item_type);
    }
    !item_type.ends_with('!')
}

/// Sets the value at `path`, if its parent is still there (not already nulled).
fn set(data: &mut Value, path: &[PathSegment], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = data;
    for segment in parents {
        let next = match (current, segment) {
            (Value::Object(map), PathSegment::Field(name)) => map.get_mut(name.as_str()),
            (Value::List(items), PathSegment::Index(index)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return,
        }
    }
    match (current, last) {
        (Value::Object(map), PathSegment::Field(name)) => {
            map.insert(async_graphql::Name::new(name), value);
        }
        (Value::List(items), PathSegment::Index(index)) => {
            if let Some(item) = items.get_mut(*index) {
                *item = value;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::value;

    fn field(name: &str) -> PathSegment {
        PathSegment::Field(name.to_owned())
    }

    #[test]
    fn a_failed_non_null_root_field_nulls_data() {
        let mut data = value!({"__typename": "Query"});
        let types = HashMap::from([(vec![field("me")], "User!".to_owned())]);
        propagate(&mut data, vec![(vec![field("me")], true)], &types);
        assert_eq!(data, Value::Null);
    }

    #[test]
    fn a_failed_non_null_field_nulls_its_nearest_nullable_parent() {
        let mut data = value!({"a": {"b": {"x": 1}}, "other": 2});
        let types = HashMap::from([
            (vec![field("a")], "A".to_owned()),
            (vec![field("a"), field("b")], "B!".to_owned()),
            (
                vec![field("a"), field("b"), field("c")],
                "String!".to_owned(),
            ),
        ]);
        propagate(
            &mut data,
            vec![(vec![field("a"), field("b"), field("c")], true)],
            &types,
        );
        assert_eq!(data, value!({"a": null, "other": 2}));
    }

    #[test]
    fn list_items_follow_the_item_type() {
        let types = HashMap::from([
            (vec![field("l")], "[S!]".to_owned()),
            (vec![field("m")], "[S]!".to_owned()),
        ]);
        let item = |name: &str| vec![field(name), PathSegment::Index(0), field("id")];
        let mut data = value!({"l": [{"x": 1}], "m": [{"x": 1}]});
        propagate(
            &mut data,
            vec![(item("l"), true), (item("m"), true)],
            &types,
        );
        assert_eq!(data, value!({"l": null, "m": [null]}));
    }

    #[test]
    fn a_failed_nullable_field_is_present_as_null() {
        let mut data = value!({"s": {"id": "1"}});
        propagate(
            &mut data,
            vec![(vec![field("s"), field("lastRefreshedAt")], false)],
            &HashMap::new(),
        );
        assert_eq!(data, value!({"s": {"id": "1", "lastRefreshedAt": null}}));
    }
}
