use async_graphql::{Context, MergedObject, Object, Result};

use super::types::{OidcProvider, Session, User};
use crate::{
    auth::{SignedIn, signed_in},
    service::AuthService,
};

// The query root: reads; `me` and `mySessions` need `Authorization: Bearer <accessToken>`. (A plain comment:
// async-graphql would print a doc comment into the schema as the type's description, and
// `schema.graphql` has none for `Query`.)
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(QueryFields);

/// The fields of `Query`, in both query roots: [`QueryRoot`] and, with `FEDERATION=true`,
/// `super::FederatedQueryRoot`. async-graphql names each root type once, so the fields live in
/// an object of their own whose name (`QueryFields`) never reaches the schema.
#[derive(Default)]
pub struct QueryFields;

#[Object]
impl QueryFields {
    /// The signed-in user.
    #[graphql(guard = "SignedIn")]
    async fn me(&self, ctx: &Context<'_>) -> Result<User> {
        Ok(signed_in(ctx).await?.user.clone().into())
    }

    /// The OpenID Connect providers this server signs in with, for "Sign in with ..." buttons
    /// (empty when none is configured). Needs no token.
    async fn oidc_providers(&self, ctx: &Context<'_>) -> Result<Vec<OidcProvider>> {
        Ok(ctx
            .data::<AuthService>()?
            .oidc_providers()
            .into_iter()
            .map(|provider| OidcProvider {
                name: provider.name,
                display_name: provider.display_name,
            })
            .collect())
    }

    /// The caller's live sessions, newest first: at most `first` (1 to 100, 100 by default),
    /// after the session whose `cursor` is `after` (the next page; an empty list is the end).
    /// A user has at most `MAX_SESSIONS_PER_USER` sessions (100 by default), so one page
    /// usually holds them all. Errors: BAD_USER_INPUT (`first` out of range, `after` not a
    /// cursor).
    #[graphql(guard = "SignedIn")]
    async fn my_sessions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Vec<Session>> {
        let caller = signed_in(ctx).await?;
        let sessions = ctx
            .data::<AuthService>()?
            .live_sessions(caller, first.map(i64::from), after.as_deref())
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| Session::new(session, caller.session.id))
            .collect())
    }
}
