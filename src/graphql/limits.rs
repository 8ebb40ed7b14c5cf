//! A limit async-graphql does not have: aliases per request. Without it one request could ask
//! for the same field hundreds of times under different names. Checked by `request_checks`.

use async_graphql::{
    ServerError, ServerResult,
    parser::types::{ExecutableDocument, Selection, SelectionSet},
};

/// Refuses a document with more than `max` aliased fields (operations and fragments counted
/// once each): `TOO_MANY_ALIASES`.
pub fn check_aliases(document: &ExecutableDocument, max: usize) -> ServerResult<()> {
    let operations = document
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set.node);
    let fragments = document
        .fragments
        .values()
        .map(|fragment| &fragment.node.selection_set.node);
    let aliases: usize = operations.chain(fragments).map(count_aliases).sum();
    if aliases > max {
        let mut error = ServerError::new(
            format!("the request uses {aliases} aliases; at most {max} are allowed"),
            None,
        );
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", "TOO_MANY_ALIASES");
        return Err(error);
    }
    Ok(())
}

fn count_aliases(selection_set: &SelectionSet) -> usize {
    selection_set
        .items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(field) => {
                usize::from(field.node.alias.is_some())
                    + count_aliases(&field.node.selection_set.node)
            }
            Selection::InlineFragment(fragment) => count_aliases(&fragment.node.selection_set.node),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}
