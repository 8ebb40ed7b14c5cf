use async_graphql::{Context, ID, Object, Result};

use super::EXPENSIVE_FIELD_COST;
use super::types::{
    AuthPayload, ChangePasswordInput, LoginInput, RegisterInput, RevokeTokensInput,
    RevokeTokensPayload,
};
use crate::{
    auth::{SignedIn, signed_in},
    service::{AuthService, ClientInfo, Registration},
};

/// Changes. `register`, `login` and `refresh` are public; the others need
/// `Authorization: Bearer <accessToken>`.
pub struct MutationRoot;

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Creates an account and its first session.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> Result<AuthPayload> {
        let registration = Registration {
            email: input.email,
            password: input.password,
            username: input.username,
        };
        let issued = service(ctx)?.register(registration, client(ctx)).await?;
        Ok(issued.into())
    }

    /// Opens a new session; every login gets its own.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<AuthPayload> {
        let issued = service(ctx)?
            .login(&input.email_or_username, input.password, client(ctx))
            .await?;
        Ok(issued.into())
    }

    /// Exchanges a refresh token for a new pair of the same session; the old pair dies at once.
    #[graphql(complexity = "EXPENSIVE_FIELD_COST + child_complexity")]
    async fn refresh(&self, ctx: &Context<'_>, refresh_token: String) -> Result<AuthPayload> {
        Ok(service(ctx)?
            .refresh(&refresh_token, client(ctx))
            .await?
            .into())
    }

    /// Ends the session of this request's access token.
    #[graphql(guard = "SignedIn")]
    async fn logout(&self, ctx: &Context<'_>) -> Result<bool> {
        service(ctx)?.logout(signed_in(ctx).await?).await?;
        Ok(true)
    }

    /// Ends the caller's sessions named by id or token. Unknown, malformed, expired or foreign
    /// entries are skipped silently. At most 100 entries in all.
    #[graphql(guard = "SignedIn")]
    async fn revoke_tokens(
        &self,
        ctx: &Context<'_>,
        input: RevokeTokensInput,
    ) -> Result<RevokeTokensPayload> {
        let session_ids: Vec<String> = input
            .session_ids
            .unwrap_or_default()
            .into_iter()
            .map(ID::into)
            .collect();
        let tokens = input.tokens.unwrap_or_default();
        let revoked = service(ctx)?
            .revoke(signed_in(ctx).await?, &session_ids, &tokens)
            .await?;
        Ok(revoked.into())
    }

    /// Ends all the caller's sessions but the current one; returns how many.
    #[graphql(guard = "SignedIn")]
    async fn revoke_other_sessions(&self, ctx: &Context<'_>) -> Result<i32> {
        let ended = service(ctx)?
            .revoke_other_sessions(signed_in(ctx).await?)
            .await?;
        Ok(i32::try_from(ended).unwrap_or(i32::MAX))
    }

    /// Changes the caller's password and ends every other session of the caller.
    #[graphql(
        guard = "SignedIn",
        complexity = "EXPENSIVE_FIELD_COST + child_complexity"
    )]
    async fn change_password(&self, ctx: &Context<'_>, input: ChangePasswordInput) -> Result<bool> {
        service(ctx)?
            .change_password(
                signed_in(ctx).await?,
                input.current_password,
                input.new_password,
                client(ctx),
            )
            .await?;
        Ok(true)
    }
}

fn service<'ctx>(ctx: &Context<'ctx>) -> Result<&'ctx AuthService> {
    ctx.data::<AuthService>()
}

fn client(ctx: &Context<'_>) -> ClientInfo {
    ctx.data_opt::<ClientInfo>().cloned().unwrap_or_default()
}
