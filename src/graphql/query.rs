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
