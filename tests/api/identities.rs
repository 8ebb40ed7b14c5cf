//! Identities that look alike are one identity: Unicode normalisation forms, case, width and
//! IDNA spellings of one email or username make one account, and invisible or direction-control
//! characters are refused (RFC 8265, UTS #46).

use crate::helpers::{PASSWORD, TestApp, error_code, spawn_app, string_at};

async fn register(app: &TestApp, email: &str, username: Option<&str>) -> serde_json::Value {
    app.register_raw(email, PASSWORD, username).await
}

#[tokio::test]
async fn one_email_in_two_normalisation_forms_is_one_account() {
    let app = spawn_app().await;
    let nfc = register(&app, "jos\u{e9}@example.com", None).await;
    assert!(nfc["data"]["register"].is_object(), "{nfc}");
    for spelling in ["jose\u{301}@example.com", "JOSE\u{301}@EXAMPLE.COM"] {
        let body = register(&app, spelling, Some("other")).await;
        assert_eq!(error_code(&body), "EMAIL_TAKEN", "{spelling:?}: {body}");
    }
    // A full-width spelling folds to the same key but is another mailbox: it is refused, taken
    // or not (issue 18), so it can neither be a second account nor squat the first.
    for spelling in ["ｊｏｓé@example.com", "ｊｏｓｅ@example.com"] {
        let body = register(&app, spelling, Some("other")).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{spelling:?}: {body}");
    }
    assert_eq!(app.user_rows().await.len(), 1);
    // Either spelling logs in to the one account; the display form stays as typed.
    let login = app.login_raw("jose\u{301}@example.com", PASSWORD).await;
    assert_eq!(
        string_at(&login, "/data/login/user/email"),
        "jos\u{e9}@example.com"
    );
}

#[tokio::test]
async fn one_domain_in_unicode_and_ascii_is_one_domain() {
    let app = spawn_app().await;
    let first = register(&app, "ada@B\u{fc}cher.example", None).await;
    assert_eq!(
        string_at(&first, "/data/register/user/email"),
        "ada@B\u{fc}cher.example",
        "shown as typed"
    );
    let body = register(&app, "ada@xn--bcher-kva.example", Some("ada2")).await;
    assert_eq!(error_code(&body), "EMAIL_TAKEN", "{body}");
    let login = app.login_raw("ADA@xn--bcher-kva.EXAMPLE", PASSWORD).await;
    assert!(login["data"]["login"].is_object(), "{login}");
}

#[tokio::test]
async fn one_username_in_two_forms_or_widths_is_one_username() {
    let app = spawn_app().await;
    assert!(
        register(&app, "a@example.com", Some("Jos\u{e9}")).await["data"]["register"].is_object()
    );
    for spelling in ["jose\u{301}", "JOSÉ", "ＪＯＳＥ\u{301}"] {
        let body = register(&app, "b@example.com", Some(spelling)).await;
        assert_eq!(error_code(&body), "USERNAME_TAKEN", "{spelling:?}: {body}");
    }
    let login = app.login_raw("jose\u{301}", PASSWORD).await;
    assert_eq!(string_at(&login, "/data/login/user/username"), "Jos\u{e9}");
}

#[tokio::test]
async fn invisible_and_direction_control_characters_are_refused() {
    let app = spawn_app().await;
    for username in [
        "admin\u{200b}",
        "\u{200b}\u{200b}\u{200b}",
        "ad\u{2060}min",
        "\u{feff}admin",
        "evil\u{202e}gnp.exe",
        "ad\u{200d}min",
    ] {
        let body = register(&app, "x@example.com", Some(username)).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{username:?}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "username");
    }
    // Anywhere in an email: IDNA would drop them from a domain and leave them unseen in the
    // shown address (issue 18's third outside review: U+034F and the variation selectors).
    for email in [
        "ad\u{200b}min@example.com",
        "admin@exa\u{34f}mple.com",
        "admin@example.com\u{34f}",
        "admin@exa\u{fe0f}mple.com",
        "admin@exa\u{180b}mple.com",
        "admin@exa\u{3164}mple.com",
        "admin@exa\u{17b4}mple.com",
        "admin@exa\u{e0100}mple.com",
    ] {
        let body = register(&app, email, None).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{email:?}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "email");
    }
    assert!(app.user_rows().await.is_empty(), "nothing was stored");

    // And "admin" itself is fine, found by its plain spelling only.
    assert!(register(&app, "x@example.com", Some("admin")).await["data"]["register"].is_object());
    let body = app.login_raw("admin\u{200b}", PASSWORD).await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
}

/// Issue 17, case 12: `bob＠example.com` (a full-width `＠`, or any character whose
/// compatibility form is `@`) is not a username, and logging in by it is logging in by the
/// address it spells.
#[tokio::test]
async fn a_compatibility_at_sign_cannot_squat_someone_elses_address() {
    let app = spawn_app().await;
    for squatted in [
        "bob\u{ff20}example.com",
        "bob\u{fe6b}example.com",
        "\u{ff42}ob\u{ff20}example.com",
    ] {
        let body = register(&app, "squatter@x.com", Some(squatted)).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{squatted:?}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "username");
    }
    assert!(app.user_rows().await.is_empty());
    // The owner registers with the default username (the email) and logs in by either form.
    let owner = register(&app, "bob@example.com", None).await;
    assert!(owner["data"]["register"].is_object(), "{owner}");
    let login = app.login_raw("bob\u{ff20}example.com", PASSWORD).await;
    assert_eq!(
        string_at(&login, "/data/login/user/email"),
        "bob@example.com"
    );
}

/// Accounts stored before the rule (a username whose key holds `@` and is another address)
/// are given their own email as username by the migration.
#[tokio::test]
async fn the_migration_gives_a_squatting_username_back_to_its_account_email() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Database};
    if crate::helpers::shared_database_url().is_some() {
        return; // the database is built here step by step: SQLite
    }
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::sqlite_url(&dir.path().join("authql.db"));
    let db = Database::connect(format!("{url}?mode=rwc")).await.unwrap();
    Migrator::up(&db, Some(6)).await.unwrap();
    let insert = |id: &str, email: &str, username: &str, username_key: &str| {
        format!(
            "INSERT INTO users (id, email, email_normalized, username, username_normalized, \
             password_hash, created_at) VALUES (X'{id}', '{email}', '{email}', '{username}', \
             '{username_key}', 'x', '2026-01-01T00:00:00+00:00')"
        )
    };
    for statement in [
        insert(
            "00000000000000000000000000000001",
            "squatter@x.com",
            "bob\u{ff20}example.com",
            "bob@example.com",
        ),
        insert(
            "00000000000000000000000000000002",
            "alice@x.com",
            "alice@x.com",
            "alice@x.com",
        ),
        insert(
            "00000000000000000000000000000003",
            "carol@x.com",
            "carol",
            "carol",
        ),
    ] {
        db.execute_unprepared(&statement).await.unwrap();
    }
    db.close().await.unwrap();
    let app = crate::helpers::spawn_app_in_existing(dir, &url).await;
    let mut users = app.user_rows().await;
    users.sort_by(|a, b| a.email.cmp(&b.email));
    let names: Vec<(&str, &str, &str)> = users
        .iter()
        .map(|user| {
            (
                user.email.as_str(),
                user.username.as_str(),
                user.username_normalized.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("alice@x.com", "alice@x.com", "alice@x.com"),
            ("carol@x.com", "carol", "carol"),
            ("squatter@x.com", "squatter@x.com", "squatter@x.com"),
        ]
    );
    // The real owner of the address can register it now.
    let owner = register(&app, "bob@example.com", None).await;
    assert!(owner["data"]["register"].is_object(), "{owner}");
}
