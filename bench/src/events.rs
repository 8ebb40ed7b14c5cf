//! Scenario 6, live session events: what a subscriber costs the server, and how long a revoke
//! takes to reach one.
//!
//! - Memory: authql's VmRSS with no WebSocket open, then with `SUBSCRIBERS` subscribers
//!   (`PER_USER` connections for each of `SUBSCRIBERS / PER_USER` users, each with one
//!   `sessionEvents` subscription), and the difference per subscriber.
//! - Latency: one subscriber; `REVOKES` times, a login opens a session and `revokeTokens` ends
//!   it, timed from sending the revoke to receiving its `REVOKED` event on the socket (so it
//!   includes the revoke's own HTTP round trip). On PostgreSQL the revoke goes to a second
//!   instance and the event travels through `NOTIFY`.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};

use crate::{
    FAILURE_MARKER, PASSWORD,
    authql::Authql,
    load::{self, GRAPHQL_PATH, Target},
};

pub const SUBSCRIBERS: usize = 1000;
const PER_USER: usize = 20;
pub const REVOKES: usize = 200;

const SESSION_EVENTS: &str = "subscription { sessionEvents { type sessionId } }";

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// (VmRSS without subscribers, VmRSS with `SUBSCRIBERS`), in bytes.
pub async fn memory(authql: &Authql) -> anyhow::Result<(u64, u64)> {
    let mut tokens = Vec::new();
    for user in 0..SUBSCRIBERS / PER_USER {
        let (token, _) = register(authql.address, &format!("subscriber{user}@example.com")).await?;
        tokens.push(token);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = authql.memory()?;
    let mut sockets = Vec::new();
    for token in &tokens {
        for _ in 0..PER_USER {
            let mut socket = subscribe(authql.address, token).await?;
            // Each answers: the subscription is live.
            expect_quiet(&mut socket).await?;
            sockets.push(socket);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, _) = authql.memory()?;
    drop(sockets);
    Ok((before, after))
}

/// The time from sending each revoke (to `revoker`) to its event on a subscriber of
/// `subscribed`, `REVOKES` times.
pub async fn revoke_latency(
    subscribed: SocketAddr,
    revoker: SocketAddr,
    email: &str,
) -> anyhow::Result<Vec<Duration>> {
    let (token, _) = register(subscribed, email).await?;
    let mut socket = subscribe(subscribed, &token).await?;
    expect_quiet(&mut socket).await?;
    let mut latencies = Vec::with_capacity(REVOKES);
    for _ in 0..REVOKES {
        let session = login(revoker, email).await?;
        // Its CREATED event first.
        wait_for(&mut socket, "CREATED", &session).await?;
        let revoke = Target {
            path: GRAPHQL_PATH,
            address: revoker,
            body: Bytes::from(
                json!({
                    "query": "mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }",
                    "variables": { "i": { "sessionIds": [session] } },
                })
                .to_string(),
            ),
            bearer: Some(token.clone()),
            failure_marker: FAILURE_MARKER,
        };
        let started = std::time::Instant::now();
        let (answer, event) = tokio::join!(
            load::once(&revoke),
            wait_for(&mut socket, "REVOKED", &session)
        );
        event?;
        latencies.push(started.elapsed());
        let answer = answer?;
        if answer.pointer("/data/revokeTokens/revokedCount") != Some(&json!(1)) {
            bail!("the revoke failed: {answer}");
        }
    }
    Ok(latencies)
}

async fn register(address: SocketAddr, email: &str) -> anyhow::Result<(String, String)> {
    let answer = load::once(&Target {
        path: GRAPHQL_PATH,
        address,
        body: Bytes::from(
            json!({
                "query": "mutation($i: RegisterInput!) { register(input: $i) { accessToken session { id } } }",
                "variables": { "i": { "email": email, "password": PASSWORD } },
            })
            .to_string(),
        ),
        bearer: None,
        failure_marker: FAILURE_MARKER,
    })
    .await?;
    let field = |pointer: &str| {
        answer
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("register failed: {answer}"))
    };
    Ok((
        field("/data/register/accessToken")?,
        field("/data/register/session/id")?,
    ))
}

/// Logs in; returns the new session's id.
async fn login(address: SocketAddr, email: &str) -> anyhow::Result<String> {
    let answer = load::once(&Target {
        path: GRAPHQL_PATH,
        address,
        body: Bytes::from(
            json!({
                "query": "mutation($i: LoginInput!) { login(input: $i) { session { id } } }",
                "variables": { "i": { "emailOrUsername": email, "password": PASSWORD } },
            })
            .to_string(),
        ),
        bearer: None,
        failure_marker: FAILURE_MARKER,
    })
    .await?;
    answer
        .pointer("/data/login/session/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("login failed: {answer}"))
}

/// A graphql-transport-ws connection to `address`, acknowledged, with one `sessionEvents`
/// subscription.
async fn subscribe(address: SocketAddr, token: &str) -> anyhow::Result<Socket> {
    let mut request = format!("ws://{address}/graphql").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    socket.send(Message::Text(init.to_string().into())).await?;
    let ack = next_json(&mut socket, Duration::from_secs(5)).await?;
    if ack["type"] != "connection_ack" {
        bail!("connection_init was refused: {ack}");
    }
    let subscribe =
        json!({ "id": "1", "type": "subscribe", "payload": { "query": SESSION_EVENTS } });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    Ok(socket)
}

/// Nothing arrives for a moment: the subscription was taken without an error.
async fn expect_quiet(socket: &mut Socket) -> anyhow::Result<()> {
    match next_json(socket, Duration::from_millis(20)).await {
        Err(_) => Ok(()),
        Ok(message) => bail!("unexpected message after subscribing: {message}"),
    }
}

async fn wait_for(socket: &mut Socket, kind: &str, session: &str) -> anyhow::Result<()> {
    loop {
        let message = next_json(socket, Duration::from_secs(10)).await?;
        let event = &message["payload"]["data"]["sessionEvents"];
        if event["type"] == kind && event["sessionId"] == session {
            return Ok(());
        }
    }
}

async fn next_json(socket: &mut Socket, wait: Duration) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .context("no message in time")?
            .context("the socket closed")??;
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text)?;
                if value["type"] == "ping" {
                    socket
                        .send(Message::Text(json!({ "type": "pong" }).to_string().into()))
                        .await?;
                    continue;
                }
                return Ok(value);
            }
            Message::Close(frame) => bail!("the server closed the socket: {frame:?}"),
            _ => continue,
        }
    }
}
