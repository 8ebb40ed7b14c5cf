use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn every_byte_of_a_100_byte_password_counts() {
    let app = spawn_app().await;
    let password = format!("{}A", "p".repeat(99));
    assert_eq!(password.len(), 100);
    assert_no_errors(&app.register_raw("long@x.com", &password, None).await);

    assert_no_errors(&app.login_raw("long@x.com", &password).await);
    let last_byte_changed = format!("{}B", "p".repeat(99));
    let body = app.login_raw("long@x.com", &last_byte_changed).await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    // bcrypt alone would see only the first 72 bytes, which are the same.
    let first_72 = &password[..72];
    assert_eq!(
        error_code(&app.login_raw("long@x.com", first_72).await),
        "INVALID_CREDENTIALS"
    );
}

#[tokio::test]
async fn change_password_replaces_it_and_ends_every_other_session() {
    let app = spawn_app().await;
    let other = app.register("change@x.com").await;
    let current = app.login("change@x.com").await;
    let new_password = "a brand new passphrase";

    let body = app
        .graphql(
            "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
            json!({ "input": { "currentPassword": PASSWORD, "newPassword": new_password } }),
            Some(&current.access_token),
        )
        .await;
    assert_eq!(body["data"]["changePassword"], json!(true), "{body}");

    assert_no_errors(&app.me(&current.access_token).await);
    assert_unauthenticated(&app.me(&other.access_token).await, "REVOKED");
    assert_eq!(app.session_rows().await.len(), 1);
    assert_eq!(
        error_code(&app.login_raw("change@x.com", PASSWORD).await),
        "INVALID_CREDENTIALS"
    );
    assert_no_errors(&app.login_raw("change@x.com", new_password).await);
}

#[tokio::test]
async fn change_password_refuses_a_wrong_current_password_or_a_weak_new_one() {
    let app = spawn_app().await;
    let account = app.register("keep@x.com").await;
    let other = app.login("keep@x.com").await;
    let change = |current: &'static str, new: &'static str| {
        app.graphql(
            "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }",
            json!({ "input": { "currentPassword": current, "newPassword": new } }),
            Some(&account.access_token),
        )
    };
    let wrong = change("not my password", "a perfectly fine one").await;
    assert_eq!(error_code(&wrong), "INVALID_CREDENTIALS");
    let weak = change(PASSWORD, "short").await;
    assert_eq!(error_code(&weak), "BAD_USER_INPUT");
    assert_eq!(
        string_at(&weak, "/errors/0/extensions/field"),
        "newPassword"
    );

    // Nothing changed: the old password works, and the other session lives.
    assert_no_errors(&app.login_raw("keep@x.com", PASSWORD).await);
    assert_no_errors(&app.me(&other.access_token).await);
}

/// Issue 17, case 14: a password is one password in whatever Unicode form it is typed
/// (RFC 8265 OpaqueString: NFC, non-ASCII spaces as spaces); hashes stored before that rule, or
/// at another bcrypt cost, keep working and are replaced at the next successful login.
#[tokio::test]
async fn a_password_typed_in_another_unicode_form_is_the_same_password() {
    let app = spawn_app().await;
    let nfc = "caf\u{e9} au lait\u{a0}tous les matins";
    let nfd = "cafe\u{301} au lait tous les matins";
    assert_no_errors(&app.register_raw("form@x.com", nfc, None).await);
    assert_no_errors(&app.login_raw("form@x.com", nfd).await);
    assert_no_errors(&app.login_raw("form@x.com", nfc).await);
    assert_eq!(
        error_code(
            &app.login_raw("form@x.com", "cafe au lait tous les matins")
                .await
        ),
        "INVALID_CREDENTIALS"
    );
    // Control characters are no part of a password.
    let body = app
        .register_raw("control@x.com", "good password\u{7}bell", None)
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
}

#[tokio::test]
async fn an_older_hash_works_once_more_and_is_replaced_by_the_current_form() {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use sha2::Digest;
    let app = spawn_app().await;
    app.register("legacy@x.com").await;
    // What authql stored before OpaqueString: bcrypt of base64(SHA-256(the password as typed)).
    let nfc = "caf\u{e9} cr\u{e8}me au lait";
    let legacy = bcrypt::hash(STANDARD.encode(sha2::Sha256::digest(nfc.as_bytes())), 4).unwrap();
    set_password_hash(&app.database_url, "legacy@x.com", &legacy).await;
    // Typed in NFD on another device: still the password, and the hash moves on.
    assert_no_errors(
        &app.login_raw("legacy@x.com", "cafe\u{301} cre\u{300}me au lait")
            .await,
    );
    let stored = password_hash_of(&app.database_url, "legacy@x.com").await;
    assert!(stored.starts_with("precis$$2b$04$"), "{stored}");
    assert_no_errors(&app.login_raw("legacy@x.com", nfc).await);
    // A new BCRYPT_COST: the next login rehashes at it.
    let app = app.restart(|config| config.bcrypt_cost = 5).await;
    assert_no_errors(&app.login_raw("legacy@x.com", nfc).await);
    let stored = password_hash_of(&app.database_url, "legacy@x.com").await;
    assert!(stored.starts_with("precis$$2b$05$"), "{stored}");
    assert_eq!(
        error_code(&app.login_raw("legacy@x.com", "creme au lait").await),
        "INVALID_CREDENTIALS"
    );
}

async fn password_hash_of(database_url: &str, email: &str) -> String {
    user_rows_in(database_url)
        .await
        .into_iter()
        .find(|user| user.email == email)
        .expect("the user")
        .password_hash
}

/// Stores `hash` as the user's password hash, on any backend.
async fn set_password_hash(database_url: &str, email: &str, hash: &str) {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    if authql::store::MongoStore::handles(database_url) {
        mongodb_database(database_url)
            .await
            .collection::<bson::Document>("users")
            .update_one(
                bson::doc! { "email": email },
                bson::doc! { "$set": { "password_hash": hash } },
            )
            .await
            .unwrap();
        return;
    }
    let db = sea_orm::Database::connect(database_url).await.unwrap();
    authql::store::entity::user::Entity::update_many()
        .col_expr(
            authql::store::entity::user::Column::PasswordHash,
            Expr::value(hash),
        )
        .filter(authql::store::entity::user::Column::Email.eq(email))
        .exec(&db)
        .await
        .unwrap();
}
