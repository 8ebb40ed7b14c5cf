//! Tokens outliving what they stand for: a token is only as alive as its session row and user.

use crate::helpers::*;

#[tokio::test]
async fn tokens_of_a_deleted_user_are_refused_at_once() {
    let app = spawn_app().await;
    let account = app.register("gone@x.com").await;
    // On SQL the user's sessions go with it (ON DELETE CASCADE); on MongoDB they stay behind,
    // and must be refused all the same.
    delete_rows(&app.database_url, Collection::Users, None).await;
    if mongodb_url().is_none() {
        assert!(app.session_rows().await.is_empty());
    }

    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
}

#[tokio::test]
async fn tokens_of_a_deleted_session_are_refused_at_once() {
    let app = spawn_app().await;
    let account = app.register("cut@x.com").await;
    let other = app.login("cut@x.com").await;
    let session_id = account.session_id.parse().unwrap();
    delete_rows(&app.database_url, Collection::Sessions, Some(session_id)).await;
    assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
    assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
    assert_no_errors(&app.me(&other.access_token).await);
}
