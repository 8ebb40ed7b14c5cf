//! `subscription { sessionEvents }` over a real WebSocket with the graphql-transport-ws protocol
//! (issue 13): events for login, refresh and revoke; nobody else's; the close codes.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

use crate::helpers::*;

pub const SESSION_EVENTS: &str = "subscription { sessionEvents { type sessionId at current } }";

/// A graphql-transport-ws client, as the graphql-ws library speaks it.
pub struct WsClient {
    pub socket: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    /// Still open after the wait.
    Open,
}

impl WsClient {
    /// Opens `/graphql` of `address` (`http://host:port`) as a WebSocket, with `origin`.
    pub async fn connect_to(
        address: &str,
        origin: Option<&str>,
    ) -> Result<Self, tungstenite::Error> {
        let url = format!("{}/graphql", address.replacen("http", "ws", 1));
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { socket })
    }

    /// Connects to `app` and acknowledges `connection_init` with `access_token`.
    pub async fn signed_in(address: &str, access_token: &str) -> Self {
        let mut client = Self::connect_to(address, None)
            .await
            .expect("the upgrade is accepted");
        client
            .send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {access_token}") } }))
            .await;
        let ack = client
            .next_json(Duration::from_secs(5))
            .await
            .expect("an answer to connection_init");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("the message is sent");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str) {
        self.send(json!({ "id": id, "type": "subscribe", "payload": { "query": query } }))
            .await;
    }

    /// The next protocol message within `wait` (answering the server's pings); `None` when
    /// nothing came or the connection closed.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match message.ok()? {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON messages");
                    if value["type"] == "ping" {
                        self.send(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Some(value);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next `next` payload's `sessionEvents`, within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Value> {
        let message = self.next_json(wait).await?;
        assert_eq!(message["type"], "next", "{message}");
        Some(message["payload"]["data"]["sessionEvents"].clone())
    }

    /// Reads until the server closes (skipping other messages) or `wait` passes.
    pub async fn ended(&mut self, wait: Duration) -> Ended {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Ended::Open,
                Ok(None) | Ok(Some(Err(_))) => return Ended::Closed(1006),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Ended::Closed(frame.map_or(1005, |frame| u16::from(frame.code)));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);
const REVOKE: &str =
    "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }";

#[tokio::test]
async fn login_refresh_and_revoke_arrive_as_events_of_the_users_own_sessions() {
    let app = spawn_app().await;
    let first = app.register("events@x.com").await;
    let mut client = WsClient::signed_in(&app.address, &first.access_token).await;
    client.subscribe("1", SESSION_EVENTS).await;
    // The subscription is registered once the engine has seen it; a query on the same
    // connection would be refused, so give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let second = app.login("events@x.com").await;
    let created = client.next_event(SECOND).await.expect("CREATED");
    assert_eq!(created["type"], "CREATED");
    assert_eq!(created["sessionId"], second.session_id.as_str());
    assert_eq!(created["current"], false);
    assert!(created["at"].as_str().unwrap().ends_with('Z'));

    assert_no_errors(&app.refresh_raw(&second.refresh_token).await);
    let refreshed = client.next_event(SECOND).await.expect("REFRESHED");
    assert_eq!(refreshed["type"], "REFRESHED");
    assert_eq!(refreshed["sessionId"], second.session_id.as_str());

    let revoked = app
        .graphql(
            REVOKE,
            json!({ "i": { "sessionIds": [second.session_id] } }),
            Some(&first.access_token),
        )
        .await;
    assert_no_errors(&revoked);
    let event = client.next_event(SECOND).await.expect("REVOKED");
    assert_eq!(event["type"], "REVOKED");
    assert_eq!(event["sessionId"], second.session_id.as_str());
    // The connection's own session is alive: the socket stays open.
    assert_eq!(client.ended(Duration::from_millis(300)).await, Ended::Open);
}

/// One pooled connection is enough to serve: the `LISTEN` connection (PostgreSQL) and the
/// session lookups are beside the pool, not in it. (An outside tester's instance with
/// `DATABASE_MAX_CONNECTIONS=1` on PostgreSQL was never ready: `LISTEN` held the only one.)
#[tokio::test]
async fn one_pooled_connection_serves_requests_and_events() {
    let app = spawn_app_with(|config| config.database_max_connections = Some(1)).await;
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let first = app.register("one@x.com").await;
    let mut client = WsClient::signed_in(&app.address, &first.access_token).await;
    client.subscribe("1", SESSION_EVENTS).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = app.login("one@x.com").await;
    let created = client.next_event(SECOND).await.expect("CREATED");
    assert_eq!(created["type"], "CREATED");
    assert_eq!(created["sessionId"], second.session_id.as_str());
    assert_no_errors(&app.refresh_raw(&second.refresh_token).await);
}

#[tokio::test]
async fn another_users_events_never_arrive() {
    let app = spawn_app().await;
    let watcher = app.register("watcher@x.com").await;
    let other = app.register("other@x.com").await;
    let mut client = WsClient::signed_in(&app.address, &watcher.access_token).await;
    client.subscribe("1", SESSION_EVENTS).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let logged_in = app.login("other@x.com").await;
    assert_no_errors(&app.refresh_raw(&logged_in.refresh_token).await);
    app.graphql("mutation { logout }", json!({}), Some(&other.access_token))
        .await;
    assert_eq!(
        client.next_json(Duration::from_millis(500)).await,
        None,
        "nothing of other@x.com"
    );
    // The subscription works: the watcher's own login arrives.
    let own = app.login("watcher@x.com").await;
    let event = client
        .next_event(SECOND)
        .await
        .expect("the watcher's own event");
    assert_eq!(event["sessionId"], own.session_id.as_str());
}

#[tokio::test]
async fn revoking_the_connections_own_session_closes_it_with_4403() {
    let app = spawn_app().await;
    let account = app.register("closed@x.com").await;
    let mut client = WsClient::signed_in(&app.address, &account.access_token).await;
    client.subscribe("1", SESSION_EVENTS).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_no_errors(
        &app.graphql(
            "mutation { logout }",
            json!({}),
            Some(&account.access_token),
        )
        .await,
    );
    assert_eq!(client.ended(2 * SECOND).await, Ended::Closed(4403));
}

#[tokio::test]
async fn an_expired_access_token_closes_the_connection_with_4403() {
    let app = spawn_app_with(|config| config.jwt_access_token_expires = 2).await;
    let account = app.register("expiring@x.com").await;
    let mut client = WsClient::signed_in(&app.address, &account.access_token).await;
    client.subscribe("1", SESSION_EVENTS).await;
    assert_eq!(client.ended(4 * SECOND).await, Ended::Closed(4403));
}

#[tokio::test]
async fn a_missing_or_bad_token_in_connection_init_is_refused_with_4403() {
    let app = spawn_app().await;
    let account = app.register("refused@x.com").await;
    for payload in [
        json!({}),
        json!({ "Authorization": "Bearer not-a-token" }),
        json!({ "Authorization": account.access_token }),
        // A refresh token is not an access token.
        json!({ "Authorization": format!("Bearer {}", account.refresh_token) }),
    ] {
        let mut client = WsClient::connect_to(&app.address, None).await.unwrap();
        client
            .send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        assert_eq!(
            client.ended(2 * SECOND).await,
            Ended::Closed(4403),
            "{payload}"
        );
    }
}

#[tokio::test]
async fn the_protocol_is_enforced_with_its_close_codes() {
    let app = spawn_app_with(|config| config.websocket_init_timeout_seconds = 1).await;
    let account = app.register("protocol@x.com").await;

    // No connection_init in time.
    let mut silent = WsClient::connect_to(&app.address, None).await.unwrap();
    assert_eq!(silent.ended(3 * SECOND).await, Ended::Closed(4408));
    // Subscribe before connection_init.
    let mut early = WsClient::connect_to(&app.address, None).await.unwrap();
    early.subscribe("1", SESSION_EVENTS).await;
    assert_eq!(early.ended(2 * SECOND).await, Ended::Closed(4401));
    // Not JSON.
    let mut garbled = WsClient::connect_to(&app.address, None).await.unwrap();
    garbled
        .socket
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    assert_eq!(garbled.ended(2 * SECOND).await, Ended::Closed(4400));
    // A second connection_init.
    let mut twice = WsClient::signed_in(&app.address, &account.access_token).await;
    twice
        .send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", account.access_token) } }))
        .await;
    assert_eq!(twice.ended(2 * SECOND).await, Ended::Closed(4429));
    // One id twice.
    let mut duplicate = WsClient::signed_in(&app.address, &account.access_token).await;
    duplicate.subscribe("same", SESSION_EVENTS).await;
    duplicate.subscribe("same", SESSION_EVENTS).await;
    assert_eq!(duplicate.ended(2 * SECOND).await, Ended::Closed(4409));
    // No graphql-transport-ws subprotocol.
    let url = format!("{}/graphql", app.address.replacen("http", "ws", 1));
    let (mut plain, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let closed = tokio::time::timeout(2 * SECOND, plain.next())
        .await
        .unwrap();
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::from(4406)),
        other => panic!("expected a 4406 close, got {other:?}"),
    }
}

#[tokio::test]
async fn queries_mutations_and_too_many_subscriptions_get_errors_not_results() {
    let app = spawn_app_with(|config| config.websocket_max_subscriptions = 2).await;
    let account = app.register("limits@x.com").await;
    let mut client = WsClient::signed_in(&app.address, &account.access_token).await;
    client.subscribe("q", "{ me { id } }").await;
    let answer = client.next_json(SECOND).await.unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["id"].as_str()),
        (Some("error"), Some("q"))
    );
    assert_eq!(
        answer["payload"][0]["extensions"]["code"],
        "SUBSCRIPTIONS_ONLY"
    );
    client.subscribe("m", "mutation { logout }").await;
    let answer = client.next_json(SECOND).await.unwrap();
    assert_eq!(
        answer["payload"][0]["extensions"]["code"],
        "SUBSCRIPTIONS_ONLY"
    );
    assert_eq!(app.session_rows().await.len(), 1, "the logout did not run");

    // A request error (here validation) is one `error` message, as the protocol says: no
    // `next`, no `complete`.
    client.subscribe("v", "subscription { noSuchField }").await;
    let answer = client.next_json(SECOND).await.unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["id"].as_str()),
        (Some("error"), Some("v"))
    );
    assert_eq!(
        answer["payload"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert_eq!(client.next_json(Duration::from_millis(200)).await, None);

    for id in ["1", "2"] {
        client.subscribe(id, SESSION_EVENTS).await;
    }
    client.subscribe("3", SESSION_EVENTS).await;
    let answer = client.next_json(SECOND).await.unwrap();
    assert_eq!(answer["id"], "3");
    assert_eq!(
        answer["payload"][0]["extensions"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );
    // Completing one frees a place.
    client.send(json!({ "id": "1", "type": "complete" })).await;
    client.subscribe("4", SESSION_EVENTS).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let login = app.login("limits@x.com").await;
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let message = client
            .next_json(SECOND)
            .await
            .expect("an event per subscription");
        if message["type"] == "complete" {
            assert_eq!(message["id"], "1", "the completed subscription says so");
            continue;
        }
        assert_eq!(
            message["payload"]["data"]["sessionEvents"]["sessionId"],
            login.session_id.as_str()
        );
        ids.push(message["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, ["2", "4"]);
}

#[tokio::test]
async fn the_upgrade_checks_the_origin() {
    let app = spawn_app_with(|config| {
        config.cors_allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let account = app.register("origin@x.com").await;
    let refused = WsClient::connect_to(&app.address, Some("https://evil.example.net")).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected 403, got {other:?}"),
        Ok(_) => panic!("a foreign origin was upgraded"),
    }
    for origin in [Some("https://app.example.com"), None] {
        let mut client = WsClient::connect_to(&app.address, origin)
            .await
            .expect("allowed");
        client
            .send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", account.access_token) } }))
            .await;
        assert_eq!(
            client.next_json(SECOND).await.unwrap()["type"],
            "connection_ack"
        );
    }
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let app = spawn_app_with(|config| config.websocket_max_connections_per_user = 2).await;
    let account = app.register("many@x.com").await;
    let _first = WsClient::signed_in(&app.address, &account.access_token).await;
    let second = WsClient::signed_in(&app.address, &account.access_token).await;
    let mut third = WsClient::connect_to(&app.address, None).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", account.access_token) } });
    third.send(init.clone()).await;
    assert_eq!(third.ended(2 * SECOND).await, Ended::Closed(4429));
    // A closed connection frees its place.
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = WsClient::connect_to(&app.address, None).await.unwrap();
    fourth.send(init).await;
    assert_eq!(
        fourth.next_json(SECOND).await.unwrap()["type"],
        "connection_ack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_receive_their_own_users_events() {
    const USERS: usize = 50;
    const PER_USER: usize = 20;
    let app = spawn_app().await;
    let mut accounts = Vec::new();
    for user in 0..USERS {
        accounts.push(app.register(&format!("crowd{user}@x.com")).await);
    }
    let mut clients = Vec::new();
    for account in &accounts {
        for _ in 0..PER_USER {
            let mut client = WsClient::signed_in(&app.address, &account.access_token).await;
            client.subscribe("1", SESSION_EVENTS).await;
            clients.push(client);
        }
    }
    assert_eq!(clients.len(), 1000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut logins = Vec::new();
    for user in 0..USERS {
        logins.push(app.login(&format!("crowd{user}@x.com")).await.session_id);
    }
    let received = futures::future::join_all(
        clients
            .iter_mut()
            .map(|client| client.next_event(5 * SECOND)),
    )
    .await;
    for (index, event) in received.into_iter().enumerate() {
        let event = event.unwrap_or_else(|| panic!("subscriber {index} got nothing"));
        assert_eq!(event["type"], "CREATED");
        assert_eq!(
            event["sessionId"],
            logins[index / PER_USER].as_str(),
            "subscriber {index}"
        );
    }
    // Nothing else arrives: no one got another user's login.
    let extra = futures::future::join_all(
        clients
            .iter_mut()
            .take(50)
            .map(|client| client.next_json(Duration::from_millis(100))),
    )
    .await;
    assert!(extra.iter().all(Option::is_none));
}
