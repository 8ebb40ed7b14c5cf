//! GraphQL over WebSocket for `subscription { sessionEvents }`: the `graphql-transport-ws`
//! protocol (the `graphql-ws` library's, github.com/enisdenjo/graphql-ws PROTOCOL.md), by
//! upgrading `GET /graphql`, as Apollo Client's `GraphQLWsLink` expects.
//!
//! async-graphql runs the protocol's messages (`http::WebSocket`); this module is the
//! connection around it, and adds what the protocol and authql need:
//!
//! - **Origin** (cross-site WebSocket hijacking): an upgrade whose `Origin` is neither listed in
//!   `CORS_ALLOWED_ORIGINS` nor authql's own is refused with 403 before it is accepted. A client
//!   that sends no `Origin` is not a browser, and has no ambient credentials to abuse.
//! - **Authentication** in `connection_init`: `{"Authorization": "Bearer <accessToken>"}`,
//!   checked against the session store like any request. Missing or refused: close 4403.
//! - **Close codes** (PROTOCOL.md's, and authql's own in the 4000s):
//!   4400 a message that is not the protocol's; 4401 `subscribe` before `connection_ack`;
//!   4403 a missing or refused token, the connection's own session ended (revoked or expired)
//!   or its access token expired: the client connects again with a fresh token;
//!   4406 no `graphql-transport-ws` subprotocol; 4408 no `connection_init` within
//!   `WEBSOCKET_INIT_TIMEOUT_SECONDS`; 4409 a `subscribe` with an id already in use; 4429 a
//!   second `connection_init`, or more than `WEBSOCKET_MAX_CONNECTIONS_PER_USER` connections of
//!   one user; 1013 (try again later) a subscriber too slow to take its events; 3008 nothing
//!   received (not even a pong) for three ping intervals. graphql-ws retries after 4403, 4408,
//!   1013 and 3008, and gives up after the others.
//! - **Subscriptions only**: queries and mutations go over HTTP, where every limit of the edge
//!   applies; over the socket they get an `error` message. At most `WEBSOCKET_MAX_SUBSCRIPTIONS`
//!   at once per connection (more get an `error` message too).
//! - **Pings** every `WEBSOCKET_PING_INTERVAL_SECONDS`, and bounded buffers: a subscriber that
//!   falls behind is disconnected, never buffered without limit.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use async_graphql::{
    Data,
    http::{WebSocket as ProtocolEngine, WebSocketProtocols, WsMessage},
    parser::types::OperationType,
};
use axum::{
    extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{EdgeState, HttpError, client_info, origin_allowed, single_header};
use crate::{
    auth::{Authenticated, BearerToken, RequestAuth},
    graphql::SlowSubscriber,
    service::{ClientInfo, events::SessionEventKind},
};

/// The subprotocol of `graphql-transport-ws`.
const SUBPROTOCOL: &str = "graphql-transport-ws";
/// Largest message the socket takes or sends, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// What the socket reads at once, in bytes.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Most bytes waiting to be written to a slow client before the connection is given up.
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The close reason when the connection's own session was revoked or expired.
const SESSION_ENDED: &str = "The session ended";
/// How long the events already on their way may take to reach a connection that is closing
/// because its session ended.
const DRAIN_BEFORE_CLOSE: Duration = Duration::from_millis(200);

/// The connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct WebSocketSettings {
    /// `JWT_LEEWAY_SECONDS`: a connection's access token is good until its `exp` plus this, as
    /// it is on HTTP.
    pub token_leeway: Duration,
    pub init_timeout: Duration,
    pub ping_interval: Duration,
    pub max_subscriptions: usize,
    pub max_connections_per_user: usize,
}

/// Open connections per user on this instance.
#[derive(Default)]
pub(super) struct Connections(Mutex<HashMap<Uuid, usize>>);

/// One connection of a user, counted while it lives.
struct Counted {
    connections: Arc<Connections>,
    user_id: Uuid,
}

impl Connections {
    /// Counts one more connection of `user_id`, unless it has `max` already.
    fn admit(self: &Arc<Self>, user_id: Uuid, max: usize) -> Option<Counted> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(user_id).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Counted {
            connections: self.clone(),
            user_id,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

/// Whether the request asks to become a WebSocket.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// The upgrade of `GET /graphql`: refused (403 JSON) for a foreign `Origin`, else accepted.
pub(super) fn upgrade(
    state: EdgeState,
    peer: SocketAddr,
    headers: &HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let foreign_origin = match single_header(headers, header::ORIGIN) {
        Ok(None) => false,
        Ok(Some(_)) => !origin_allowed(headers, &state.frontend.allowed_origins),
        Err(_) => true,
    };
    if foreign_origin {
        tracing::warn!(
            event = "websocket_origin_refused",
            "a WebSocket upgrade from an origin that is not allowed was refused"
        );
        return HttpError::new(
            StatusCode::FORBIDDEN,
            "ORIGIN_NOT_ALLOWED",
            "WebSocket connections are accepted from the allowed origins only",
        )
        .into_response();
    }
    let client = client_info(peer, headers, &state.limits.trusted_proxies);
    upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        // tungstenite's defaults (128 KiB each way) made a subscriber cost 145 KiB (benchmark
        // scenario 6); events are a few hundred bytes, written as they come.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let speaks_protocol = socket
                .protocol()
                .is_some_and(|protocol| protocol.as_bytes() == SUBPROTOCOL.as_bytes());
            serve(socket, state, client, speaks_protocol)
        })
}

/// Why a connection ends, and what the client is told.
struct Close(u16, &'static str);

/// What the `connection_init` callback leaves for the connection.
#[derive(Default)]
struct Init {
    authenticated: OnceLock<(Authenticated, Counted)>,
    refused: OnceLock<Close>,
}

async fn serve(socket: WebSocket, state: EdgeState, client: ClientInfo, speaks_protocol: bool) {
    let (mut sink, mut incoming) = socket.split();
    if !speaks_protocol {
        let _ = sink
            .send(close(Close(4406, "Subprotocol not acceptable")))
            .await;
        return;
    }
    let settings = state.limits.websocket;
    let init = Arc::new(Init::default());
    let slow = SlowSubscriber::default();
    let (to_engine, from_client) = mpsc::channel::<String>(8);
    let mut connection_data = Data::default();
    connection_data.insert(client);
    connection_data.insert(slow.clone());
    let engine = ProtocolEngine::new(
        state.schema.clone(),
        tokio_stream_of(from_client),
        WebSocketProtocols::GraphQLWS,
    )
    .connection_data(connection_data)
    .keepalive_timeout(settings.ping_interval * 3)
    .on_connection_init({
        let init = init.clone();
        let state = state.clone();
        move |payload| connection_init(payload, init, state)
    });
    let mut engine = Box::pin(engine);

    let mut acknowledged = false;
    let mut subscriptions: HashSet<String> = HashSet::new();
    // Operations answered with an `error` message, whose `complete` is not passed on.
    let mut refused: HashSet<String> = HashSet::new();
    let mut session_events = None;
    let mut token_expires = None;
    let init_deadline = tokio::time::sleep(settings.init_timeout);
    tokio::pin!(init_deadline);
    let mut pings = tokio::time::interval(settings.ping_interval);
    pings.tick().await;

    let ending: Close = loop {
        tokio::select! {
            received = incoming.next() => {
                let text = match received {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Binary(_))) => break Close(4400, "Binary messages are not supported"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                };
                match screen(&text, &mut subscriptions, settings, &state) {
                    Screened::Forward => {
                        if to_engine.send(text).await.is_err() {
                            return;
                        }
                    }
                    Screened::Answer(answer) => {
                        if sink.send(Message::Text(answer.into())).await.is_err() {
                            return;
                        }
                    }
                    Screened::Close(why) => break why,
                }
            }
            out = engine.next() => {
                match out {
                    Some(WsMessage::Text(text)) => {
                        match outgoing(&text) {
                            Outgoing::Ack if !acknowledged => {
                            acknowledged = true;
                            if let Some((authenticated, _)) = init.authenticated.get() {
                                session_events = Some(
                                    state.service.events().subscribe(authenticated.user.id),
                                );
                                let leeway = chrono::TimeDelta::from_std(settings.token_leeway)
                                    .unwrap_or_default();
                                let left = (authenticated.expires_at + leeway - chrono::Utc::now())
                                    .to_std()
                                    .unwrap_or_default();
                                token_expires = Some(Box::pin(tokio::time::sleep(left)));
                            }
                            }
                            // The engine's `complete` for it follows; the protocol has none.
                            Outgoing::RequestError { id, error } => {
                                subscriptions.remove(&id);
                                refused.insert(id);
                                if sink.send(Message::Text(error.into())).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            Outgoing::Ended(id) => {
                                subscriptions.remove(&id);
                                if refused.remove(&id) {
                                    continue;
                                }
                            }
                            _ => {}
                        }
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    Some(WsMessage::Close(code, _)) => {
                        break match (code, init.refused.get()) {
                            (_, Some(refused)) => Close(refused.0, refused.1),
                            (1011, None) => Close(4401, "Unauthorized"),
                            (3008, None) => Close(3008, "No message within the keep-alive time"),
                            (4429, None) => Close(4429, "Too many initialisation requests"),
                            _ => Close(4400, "Invalid message"),
                        };
                    }
                    None => return,
                }
            }
            () = &mut init_deadline, if !acknowledged => {
                break Close(4408, "Connection initialisation timeout");
            }
            _ = pings.tick(), if acknowledged => {
                let ping = json!({ "type": "ping" }).to_string();
                if sink.send(Message::Text(ping.into())).await.is_err() {
                    return;
                }
            }
            event = next_event(&mut session_events) => {
                let own_session = init.authenticated.get().map(|(auth, _)| auth.session.id);
                match event {
                    Some(event) if Some(event.session_id) == own_session
                        && matches!(event.kind, SessionEventKind::Revoked | SessionEventKind::Expired) =>
                    {
                        break Close(4403, SESSION_ENDED);
                    }
                    Some(_) => {}
                    None => break Close(1013, "Too slow to take the events"),
                }
            }
            () = expiry(&mut token_expires) => {
                break Close(4403, "The access token expired");
            }
            () = slow.raised() => {
                break Close(1013, "Too slow to take the events");
            }
        }
    };
    if ending.0 == 4403 && ending.1 == SESSION_ENDED {
        // The event that ended the session is on its way through the subscription too: let
        // it reach the client before the close does.
        let until = tokio::time::Instant::now() + DRAIN_BEFORE_CLOSE;
        while let Ok(Some(WsMessage::Text(text))) =
            tokio::time::timeout_at(until, engine.next()).await
        {
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
    let _ = sink.send(close(ending)).await;
}

/// `connection_init`: the access token in the payload's `Authorization`, checked like any
/// request's; and the user's connection count.
async fn connection_init(
    payload: Value,
    init: Arc<Init>,
    state: EdgeState,
) -> async_graphql::Result<Data> {
    let refuse = |why: Close| {
        let message = why.1;
        let _ = init.refused.set(why);
        Err(async_graphql::Error::new(message))
    };
    let header = payload
        .get("Authorization")
        .or_else(|| payload.get("authorization"))
        .and_then(Value::as_str);
    let bearer = BearerToken::from_header(header.map(str::as_bytes));
    let authenticated = match state.service.authenticate(&bearer).await {
        Ok(authenticated) => authenticated,
        Err(_) => return refuse(Close(4403, "Forbidden")),
    };
    let Some(counted) = state.websocket_connections.admit(
        authenticated.user.id,
        state.limits.websocket.max_connections_per_user,
    ) else {
        return refuse(Close(4429, "Too many connections for this user"));
    };
    let mut data = Data::default();
    data.insert(RequestAuth::resolved(authenticated.clone()));
    let _ = init.authenticated.set((authenticated, counted));
    Ok(data)
}

/// What to do with a client message before the protocol engine sees it.
enum Screened {
    Forward,
    /// Answer the client directly; the engine never sees the message.
    Answer(String),
    Close(Close),
}

/// Checks a client message: `subscribe` must carry a subscription, not reuse an id in use, and
/// stay within the connection's limit; `complete` frees its id.
fn screen(
    text: &str,
    subscriptions: &mut HashSet<String>,
    settings: WebSocketSettings,
    state: &EdgeState,
) -> Screened {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return Screened::Close(Close(4400, "Invalid message"));
    };
    let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
    match (message.get("type").and_then(Value::as_str), id) {
        (Some("subscribe"), Some(id)) => {
            if subscriptions.contains(&id) {
                return Screened::Close(Close(4409, "Subscriber for this id already exists"));
            }
            let query = message
                .pointer("/payload/query")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if query.len() > state.limits.max_query_bytes {
                return Screened::Answer(error_message(
                    &id,
                    "QUERY_TOO_LARGE",
                    "the query is too long",
                ));
            }
            let operation_name = message
                .pointer("/payload/operationName")
                .and_then(Value::as_str);
            // A query that does not parse or names no single operation passes: the engine
            // answers it with its error.
            let operation = crate::graphql::operation_type(query, operation_name);
            if operation.is_some_and(|operation| operation != OperationType::Subscription) {
                return Screened::Answer(error_message(
                    &id,
                    "SUBSCRIPTIONS_ONLY",
                    "only subscriptions run over WebSocket; send queries and mutations over HTTP",
                ));
            }
            if subscriptions.len() >= settings.max_subscriptions {
                return Screened::Answer(error_message(
                    &id,
                    "TOO_MANY_SUBSCRIPTIONS",
                    "too many subscriptions on this connection",
                ));
            }
            subscriptions.insert(id);
            Screened::Forward
        }
        (Some("complete"), Some(id)) => {
            subscriptions.remove(&id);
            Screened::Forward
        }
        _ => Screened::Forward,
    }
}

/// The protocol's `error` message for subscription `id`, coded as every authql error is.
fn error_message(id: &str, code: &str, message: &str) -> String {
    json!({
        "id": id,
        "type": "error",
        "payload": [{ "message": message, "extensions": { "code": code } }],
    })
    .to_string()
}

/// What a message from the protocol engine means to the connection (read once per message).
enum Outgoing {
    /// `connection_ack`.
    Ack,
    /// A `next` that carries request errors only (parse, validation, operation resolution,
    /// variables: no `data`, no error with a `path`), as the protocol's `error` message, which
    /// PROTOCOL.md prescribes for errors before execution.
    RequestError {
        id: String,
        error: String,
    },
    /// `complete` or `error`: that subscription is over.
    Ended(String),
    Other,
}

fn outgoing(text: &str) -> Outgoing {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return Outgoing::Other;
    };
    let id = || message.get("id").and_then(Value::as_str).map(str::to_owned);
    match message.get("type").and_then(Value::as_str) {
        Some("connection_ack") => Outgoing::Ack,
        Some("complete" | "error") => id().map_or(Outgoing::Other, Outgoing::Ended),
        Some("next") => {
            let payload = &message["payload"];
            let Some(errors) = payload.get("errors").and_then(Value::as_array) else {
                return Outgoing::Other;
            };
            let request_error = payload.get("data").is_none_or(Value::is_null)
                && !errors.is_empty()
                && errors.iter().all(|error| error.get("path").is_none());
            match id() {
                Some(id) if request_error => Outgoing::RequestError {
                    error: json!({ "id": id, "type": "error", "payload": errors }).to_string(),
                    id,
                },
                _ => Outgoing::Other,
            }
        }
        _ => Outgoing::Other,
    }
}

fn close(why: Close) -> Message {
    Message::Close(Some(CloseFrame {
        code: why.0,
        reason: Utf8Bytes::from_static(why.1),
    }))
}

/// The next event of the connection's user; `None` when the connection fell behind. Pending
/// forever before `connection_ack`.
async fn next_event(
    events: &mut Option<crate::service::events::Subscription>,
) -> Option<crate::service::events::SessionEvent> {
    match events {
        Some(events) => loop {
            match events.recv().await {
                Ok(event) => return Some(event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return None,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
            }
        },
        None => std::future::pending().await,
    }
}

/// When the access token expires; pending forever before `connection_ack`.
async fn expiry(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The client's messages, as the protocol engine reads them.
fn tokio_stream_of(
    receiver: mpsc::Receiver<String>,
) -> impl futures_util::Stream<Item = String> + Send + Unpin + 'static {
    Box::pin(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|message| (message, receiver)) },
    ))
}
