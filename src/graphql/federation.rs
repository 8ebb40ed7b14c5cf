//! authql as an Apollo Federation 2 subgraph (`FEDERATION=true`).
//!
//! async-graphql turns federation on for any schema whose query root has an entity resolver,
//! adding `_service`, `_entities` and the `_Any`/`_Entity`/`_Service` types. The plain schema
//! must stay exactly what `authql print-schema` prints, so the entity resolver lives in a query
//! root of its own, [`FederatedQueryRoot`] (the fields of `Query` merged with [`UserEntity`]), and
//! the engine is built from one or the other at start (`super::build_engine`).
//!
//! What the subgraph serves (Apollo Federation subgraph specification, "Subgraph schema
//! additions"):
//! - `_service { sdl }`: the subgraph SDL, with `extend schema @link(url:
//!   "https://specs.apollo.dev/federation/v2.5", import: [...])` and `type User @key(fields:
//!   "id")`; `Subscription` is left out of it (a router does not route subscriptions here).
//! - `_entities(representations: [_Any!]!): [_Entity]!`, where `_Entity = User`: a
//!   representation `{ "__typename": "User", "id": "<uuid>" }` resolves **only to the signed-in
//!   caller** (the same authentication as `me`), so that `_entities` never reads another
//!   user's account by id.
//!
//! Errors of `_entities`, in the order they are checked:
//! - more representations than `GRAPHQL_MAX_ALIASES`: `BAD_USER_INPUT`, a request error
//!   (nothing runs; `request_checks`);
//! - a representation that is not an object with a string `__typename`, names a type other
//!   than `User`, or has no `id`: `BAD_USER_INPUT`;
//! - no usable access token: `UNAUTHENTICATED` (with its `reason`, as for `me`);
//! - an `id` that is not a user id (a UUID): `BAD_USER_INPUT` (`field`: `id`);
//! - another user's id: `FORBIDDEN` (`reason`: `NOT_THE_CALLER`), answered without looking the
//!   id up, so it tells nothing about whether that account exists.
//!
//! One failing representation fails the whole `_entities` field (its list is non-null), so an
//! answer never mixes the caller's account with errors about others.

use async_graphql::{Context, ID, MergedObject, Object, Result};
use uuid::Uuid;

use super::{query::QueryFields, types::User};
use crate::{auth::signed_in, error::AppError};

// The query root with `FEDERATION=true`: the fields of `Query`, and the `User` entity
// resolver. (A plain comment, as for `QueryRoot`: `Query` has no description in either schema.)
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct FederatedQueryRoot(QueryFields, UserEntity);

/// The entity resolver of `User @key(fields: "id")`; it adds no field of its own to `Query`.
#[derive(Default)]
pub struct UserEntity;

#[Object]
impl UserEntity {
    /// `_entities` for a `User` representation: the caller's own account, or an error (see the
    /// module's documentation).
    #[graphql(entity)]
    async fn caller_by_id(&self, ctx: &Context<'_>, id: ID) -> Result<User> {
        let caller = signed_in(ctx).await?;
        let wanted = Uuid::parse_str(id.as_str())
            .map_err(|_| AppError::bad_input("id", "a User representation's id is a user's id"))?;
        if wanted != caller.user.id {
            return Err(AppError::NotTheCaller.into());
        }
        Ok(caller.user.clone().into())
    }
}

/// How `_service { sdl }` prints the subgraph schema (async-graphql's own choice, repeated here
/// so that `super::subgraph_sdl` prints the same; a test compares the two).
pub(super) fn subgraph_sdl_options() -> async_graphql::SDLExportOptions {
    async_graphql::SDLExportOptions::new()
        .federation()
        .compose_directive()
}
