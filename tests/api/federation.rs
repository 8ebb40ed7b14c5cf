//! authql as an Apollo Federation 2 subgraph (`FEDERATION=true`): `_service { sdl }`, and
//! `_entities` resolving a `User` for its own signed-in caller only. Without the setting, the
//! schema has none of it. The gateway end of the story (composition, a second subgraph, the
//! `Authorization` header forwarded to both) is `clients/test/federation-gateway.test.mjs`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

const ENTITIES: &str = "query($representations: [_Any!]!) { _entities(representations: $representations) { __typename ... on User { id email } } }";

async fn spawn_subgraph() -> TestApp {
    spawn_app_with(|config| config.federation = true).await
}

fn user(id: &str) -> Value {
    json!({ "__typename": "User", "id": id })
}

async fn entities(app: &TestApp, representations: Value, token: Option<&str>) -> Value {
    app.graphql(
        ENTITIES,
        json!({ "representations": representations }),
        token,
    )
    .await
}

async fn user_id(app: &TestApp, account: &Account) -> String {
    string_at(&app.me(&account.access_token).await, "/data/me/id")
}

/// The error is the only thing in the answer: no `_entities` data, so no user's fields.
fn assert_refused(body: &Value, code: &str) {
    assert_eq!(error_code(body), code, "{body}");
    assert!(
        body["data"].is_null() || body["data"]["_entities"].is_null(),
        "no entity data with an error: {body}"
    );
    assert!(!body.to_string().contains("@x.com\""), "no email: {body}");
}

#[tokio::test]
async fn the_subgraph_sdl_links_federation_2_and_keys_user_by_id() {
    let app = spawn_subgraph().await;
    let body = app.graphql("{ _service { sdl } }", json!({}), None).await;
    assert_no_errors(&body);
    let sdl = string_at(&body, "/data/_service/sdl");
    async_graphql::parser::parse_schema(&sdl).expect("the subgraph SDL parses");
    assert!(sdl.contains("type User @key(fields: \"id\") {"), "{sdl}");
    assert!(
        sdl.contains("extend schema @link(\n\turl: \"https://specs.apollo.dev/federation/v2."),
        "{sdl}"
    );
    assert!(sdl.contains("\"@key\""), "{sdl}");
    // A router does not route subscriptions to a subgraph; `_service` and `_entities` are the
    // subgraph's own business, never part of its SDL.
    assert!(!sdl.contains("type Subscription"), "{sdl}");
    assert!(
        !sdl.contains("_entities") && !sdl.contains("_service"),
        "{sdl}"
    );
    // `authql print-schema --federation` prints the very same.
    assert_eq!(sdl, authql::graphql::subgraph_sdl());
}

#[test]
fn print_schema_federation_prints_what_service_sdl_answers() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_authql"))
        .args(["print-schema", "--federation"])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        authql::graphql::subgraph_sdl()
    );
}

#[tokio::test]
async fn without_federation_the_schema_has_no_federation_fields_types_or_directives() {
    let app = spawn_app().await;
    let account = app.register("plain@x.com").await;
    let id = user_id(&app, &account).await;
    for query in [
        "{ _service { sdl } }".to_owned(),
        format!(
            "{{ _entities(representations: [{{__typename: \"User\", id: \"{id}\"}}]) {{ __typename }} }}"
        ),
    ] {
        let body = app
            .graphql(&query, json!({}), Some(&account.access_token))
            .await;
        assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    }
    let body = app
        .graphql(
            "{ __schema { queryType { fields { name } } } a: __type(name: \"_Any\") { name } \
               b: __type(name: \"_Entity\") { name } c: __type(name: \"_Service\") { name } }",
            json!({}),
            None,
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(
        body["data"]["__schema"]["queryType"]["fields"],
        json!([{ "name": "me" }, { "name": "oidcProviders" }, { "name": "mySessions" }])
    );
    assert_eq!(body["data"]["a"], Value::Null);
    assert_eq!(body["data"]["b"], Value::Null);
    assert_eq!(body["data"]["c"], Value::Null);
    let sdl = authql::graphql::schema_sdl();
    for federated in ["@key", "@link", "_service", "_entities", "_Any", "_Entity"] {
        assert!(!sdl.contains(federated), "schema.graphql has {federated}");
    }
}

#[tokio::test]
async fn the_sdl_is_served_with_introspection_off_as_a_router_composes_from_it() {
    let app = spawn_app_with(|config| {
        config.federation = true;
        config.graphql_introspection = false;
    })
    .await;
    let sdl = app.graphql("{ _service { sdl } }", json!({}), None).await;
    assert_no_errors(&sdl);
    let introspection = app
        .graphql("{ __schema { types { name } } }", json!({}), None)
        .await;
    assert!(
        introspection["data"]["__schema"].is_null(),
        "{introspection}"
    );
}

#[tokio::test]
async fn the_signed_in_caller_resolves_their_own_user() {
    let app = spawn_subgraph().await;
    let account = app.register("own@x.com").await;
    let id = user_id(&app, &account).await;

    let body = entities(&app, json!([user(&id)]), Some(&account.access_token)).await;
    assert_no_errors(&body);
    assert_eq!(
        body["data"]["_entities"],
        json!([{ "__typename": "User", "id": id, "email": "own@x.com" }])
    );
    // The plain operations are the same as without federation.
    assert_no_errors(&app.me(&account.access_token).await);
}

#[tokio::test]
async fn another_users_id_is_forbidden_whether_or_not_it_exists() {
    let app = spawn_subgraph().await;
    let mallory = app.register("mallory@x.com").await;
    let victim = app.register("victim@x.com").await;
    let victim_id = user_id(&app, &victim).await;
    let mallory_id = user_id(&app, &mallory).await;

    let body = entities(&app, json!([user(&victim_id)]), Some(&mallory.access_token)).await;
    assert_refused(&body, "FORBIDDEN");
    assert_eq!(
        string_at(&body, "/errors/0/extensions/reason"),
        "NOT_THE_CALLER"
    );
    assert_eq!(body["errors"][0]["path"], json!(["_entities"]));

    // The same answer for an id no account has: `_entities` is no way to learn which exist.
    let unknown = entities(
        &app,
        json!([user("00000000-0000-4000-8000-000000000000")]),
        Some(&mallory.access_token),
    )
    .await;
    assert_eq!(
        unknown["errors"][0]["message"],
        body["errors"][0]["message"]
    );
    assert_refused(&unknown, "FORBIDDEN");

    // Her own id next to the victim's: the whole list fails, nothing of either is answered.
    let mixed = entities(
        &app,
        json!([user(&mallory_id), user(&victim_id)]),
        Some(&mallory.access_token),
    )
    .await;
    assert_refused(&mixed, "FORBIDDEN");
}

#[tokio::test]
async fn without_a_live_token_entities_are_unauthenticated() {
    let app = spawn_subgraph().await;
    let account = app.register("gone@x.com").await;
    let id = user_id(&app, &account).await;

    let missing = entities(&app, json!([user(&id)]), None).await;
    assert_refused(&missing, "UNAUTHENTICATED");
    assert_unauthenticated(&missing, "MISSING");
    let malformed = entities(&app, json!([user(&id)]), Some("not.a.token")).await;
    assert_unauthenticated(&malformed, "MALFORMED");
    // Before the id is looked at: a caller without a token learns nothing from it either.
    let garbage_id = entities(&app, json!([user("not-a-uuid")]), None).await;
    assert_unauthenticated(&garbage_id, "MISSING");

    let revoked = app
        .revoke(
            &account.access_token,
            json!([account.session_id]),
            json!(null),
        )
        .await;
    assert_no_errors(&revoked);
    let body = entities(&app, json!([user(&id)]), Some(&account.access_token)).await;
    assert_refused(&body, "UNAUTHENTICATED");
    assert_unauthenticated(&body, "REVOKED");
}

#[tokio::test]
async fn hostile_representations_get_clear_errors() {
    let app = spawn_subgraph().await;
    let account = app.register("hostile@x.com").await;
    let token = Some(account.access_token.as_str());
    let id = user_id(&app, &account).await;

    for (representations, why) in [
        (
            json!([{ "__typename": "Garbage", "id": id }]),
            "an unknown type",
        ),
        (
            json!([{ "__typename": "Session", "id": id }]),
            "a type that is no entity",
        ),
        (
            json!([{ "__typename": 7, "id": id }]),
            "a __typename that is no string",
        ),
        (json!([{ "id": id }]), "no __typename"),
        (json!([{ "__typename": "User" }]), "no id"),
        (
            json!([{ "__typename": "User", "id": ["x"] }]),
            "an id that is no ID",
        ),
        (json!(["User"]), "a string, not an object"),
        (json!([user("not-a-uuid")]), "an id that is no UUID"),
        (json!([{ "__typename": "User", "id": 5 }]), "a number id"),
        (json!([user(&format!("{id}x"))]), "a UUID with a tail"),
    ] {
        let body = entities(&app, representations, token).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{why}: {body}");
        assert_refused(&body, "BAD_USER_INPUT");
    }
    let body = entities(&app, json!([user("not-a-uuid")]), token).await;
    assert_eq!(string_at(&body, "/errors/0/extensions/field"), "id");
    let body = entities(&app, json!(null), token).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    let body = entities(&app, json!([null]), token).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
}

#[tokio::test]
async fn representations_are_bounded_by_graphql_max_aliases_before_anything_runs() {
    let app = spawn_subgraph().await;
    let account = app.register("many@x.com").await;
    let token = Some(account.access_token.as_str());
    let id = user_id(&app, &account).await;

    // At the limit (GRAPHQL_MAX_ALIASES, 15 by default), the caller's own id 15 times.
    let fifteen = entities(&app, json!(vec![user(&id); 15]), token).await;
    assert_no_errors(&fifteen);
    assert_eq!(fifteen["data"]["_entities"].as_array().unwrap().len(), 15);

    let sixteen = entities(&app, json!(vec![user(&id); 16]), token).await;
    assert_eq!(error_code(&sixteen), "BAD_USER_INPUT", "{sixteen}");
    assert!(sixteen.get("data").is_none(), "a request error: {sixteen}");

    // Ten thousand (small, to fit the body limit) are refused at once, unread, without a
    // token as with one.
    let started = Instant::now();
    let flood = entities(&app, json!(vec![json!({}); 10_000]), token).await;
    assert_eq!(error_code(&flood), "BAD_USER_INPUT", "{flood}");
    assert!(
        string_at(&flood, "/errors/0/message").contains("10000 representations"),
        "{flood}"
    );
    let flood = entities(&app, json!(vec![json!(1); 10_000]), None).await;
    assert_eq!(error_code(&flood), "BAD_USER_INPUT", "{flood}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Counted across aliases, fragments and literals: 8 + 8 > 15.
    let literal = format!("{{__typename: \"User\", id: \"{id}\"}}");
    let eight = [literal.as_str(); 8].join(", ");
    for query in [
        format!(
            "{{ a: _entities(representations: [{eight}]) {{ __typename }} b: _entities(representations: [{eight}]) {{ __typename }} }}"
        ),
        format!(
            "{{ ...F ... on Query {{ b: _entities(representations: [{eight}]) {{ __typename }} }} }} fragment F on Query {{ _entities(representations: [{eight}]) {{ __typename }} }}"
        ),
    ] {
        let body = app.graphql(&query, json!({}), token).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    }
    // A variable's default counts too.
    let body = app
        .graphql(
            &format!(
                "query($r: [_Any!]! = [{}]) {{ _entities(representations: $r) {{ __typename }} }}",
                [literal.as_str(); 16].join(", ")
            ),
            json!({}),
            token,
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");

    // Nested where it is no field: a validation error, as for any unknown field.
    let nested = app
        .graphql(
            &format!("{{ me {{ _entities(representations: [{literal}]) {{ __typename }} }} }}"),
            json!({}),
            token,
        )
        .await;
    assert_eq!(error_code(&nested), "GRAPHQL_VALIDATION_FAILED", "{nested}");

    // The server is none the worse for it.
    assert_no_errors(&app.me(&account.access_token).await);
}
