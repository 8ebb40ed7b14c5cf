//! Tokens outliving what they stand for: a token is only as alive as its session row and user.

use sea_orm::EntityTrait;

use authql::store::entity::{session, user};

use crate::helpers::*;

#[tokio::test]
async fn tokens_of_a_deleted_user_are_refused_at_once() {
    let app = spawn_app().await;
    let account = app.register("gone@x.com").await;
    let db = app.db().await;
    // Deleting the user takes its sessions with it (ON DELETE CASCADE).
    user::Entity::delete_many().exec(&db).await.unwrap();
    assert!(session::Entity::find().all(&db).await.unwrap().is_empty());

    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
}

#[tokio::test]
async fn tokens_of_a_deleted_session_are_refused_at_once() {
    let app = spawn_app().await;
    let account = app.register("cut@x.com").await;
    let other = app.login("cut@x.com").await;
    session::Entity::delete_by_id(account.session_id.parse::<uuid::Uuid>().unwrap())
        .exec(&app.db().await)
        .await
        .unwrap();
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
    assert_no_errors(&app.me(&other.access_token).await);
}
