use async_graphql::{Context, Object, Result};

use super::types::{Session, User};
use crate::{
    auth::{SignedIn, signed_in},
    service::AuthService,
};

/// Reads; both need `Authorization: Bearer <accessToken>`.
pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// The signed-in user.
    #[graphql(guard = "SignedIn")]
    async fn me(&self, ctx: &Context<'_>) -> Result<User> {
        Ok(signed_in(ctx).await?.user.clone().into())
    }

    /// The caller's live sessions, newest first.
    #[graphql(guard = "SignedIn")]
    async fn my_sessions(&self, ctx: &Context<'_>) -> Result<Vec<Session>> {
        let caller = signed_in(ctx).await?;
        let sessions = ctx
            .data::<AuthService>()?
            .live_sessions(caller.user.id)
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| Session::new(session, caller.session.id))
            .collect())
    }
}
