use serde_json::json;

use crate::helpers::*;

/// register -> login twice -> mySessions -> revoke one by id and one by token -> their tokens
/// are refused -> refresh rotates -> logout -> the token is refused.
/// (A replayed refresh token after the grace window is `security::refresh_reuse`.)
#[tokio::test]
async fn a_user_manages_their_sessions_from_register_to_logout() {
    let app = spawn_app().await;
    let registered = app.register("ada@example.com").await;
    let laptop = app.login("ada@example.com").await;
    let phone = app.login("ada@example.com").await;

    // Three sessions now: register opened one, each login another.
    let sessions = app.my_sessions(&laptop.access_token).await;
    assert_no_errors(&sessions);
    let listed = sessions["data"]["mySessions"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        string_at(&listed[0], "/id"),
        phone.session_id,
        "newest first"
    );
    let current: Vec<_> = listed
        .iter()
        .filter(|s| s["current"] == json!(true))
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(string_at(current[0], "/id"), laptop.session_id);

    // The laptop ends the first session by id and the phone's by its refresh token.
    let revoked = app
        .revoke(
            &laptop.access_token,
            json!([registered.session_id]),
            json!([phone.refresh_token]),
        )
        .await;
    assert_no_errors(&revoked);
    assert_eq!(revoked["data"]["revokeTokens"]["revokedCount"], json!(2));
    let mut ids: Vec<String> = revoked["data"]["revokeTokens"]["revokedSessionIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![registered.session_id.clone(), phone.session_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);

    for account in [&registered, &phone] {
        assert_unauthenticated(&app.me(&account.access_token).await, "REVOKED");
        assert_unauthenticated(&app.refresh_raw(&account.refresh_token).await, "REVOKED");
    }
    let remaining = app.session_rows().await;
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].id.to_string(), laptop.session_id);

    // mySessions now shows the laptop alone.
    let sessions = app.my_sessions(&laptop.access_token).await;
    assert_eq!(sessions["data"]["mySessions"].as_array().unwrap().len(), 1);

    // Refresh rotates: the new pair works, the old pair is dead.
    let refreshed = app.refresh_raw(&laptop.refresh_token).await;
    assert_no_errors(&refreshed);
    let new_access = string_at(&refreshed, "/data/refresh/accessToken");
    let new_refresh = string_at(&refreshed, "/data/refresh/refreshToken");
    assert_eq!(
        string_at(&refreshed, "/data/refresh/session/id"),
        laptop.session_id
    );
    assert_unauthenticated(&app.me(&laptop.access_token).await, "REVOKED");
    // The old refresh token mints nothing new: within the grace window a retry gets the pair
    // just issued (a lost response), never a second valid pair.
    let retried = app.refresh_raw(&laptop.refresh_token).await;
    assert_eq!(
        string_at(&retried, "/data/refresh/refreshToken"),
        new_refresh
    );
    assert_eq!(string_at(&retried, "/data/refresh/accessToken"), new_access);
    let me = app.me(&new_access).await;
    assert_no_errors(&me);
    assert_eq!(string_at(&me, "/data/me/email"), "ada@example.com");

    // Logout ends the session: both of its tokens are refused and its row is gone.
    let logout = app
        .graphql("mutation { logout }", json!({}), Some(&new_access))
        .await;
    assert_eq!(logout["data"]["logout"], json!(true));
    assert_unauthenticated(&app.me(&new_access).await, "REVOKED");
    assert_unauthenticated(&app.refresh_raw(&new_refresh).await, "REVOKED");
    assert!(app.session_rows().await.is_empty());
}
