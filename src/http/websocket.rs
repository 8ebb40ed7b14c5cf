//! GraphQL over WebSocket for `subscription { sessionEvents }`: the `graphql-transport-ws`
//! protocol (the `graphql-ws` library's, github.com/enisdenjo/graphql-ws PROTOCOL.md), by
//! upgrading `GET /graphql`, as Apollo Client's `GraphQLWsLink` expects.
//!
//! The protocol is small (`connection_init`/`connection_ack`, `ping`/`pong`, `subscribe`,
//! `next`, `error`, `complete`) and is spoken here rather than by async-graphql's engine, for
//! two reasons: every `subscribe` goes through the same document checks as an HTTP request
//! (`graphql::DocumentChecks`, the one way into the engine), and the connection is one loop
//! that never waits for the client: every answer is queued for a writer task of its own, and
//! while the writer is behind the loop stops taking messages (backpressure) instead of waiting
//! on a write, so a client that pipelines pings, or stops reading, cannot wedge the loop or its
//! timers.
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
//!   one user; 1013 (try again later) a client too slow to take what is sent to it; 3008
//!   nothing received (not even a pong) for three ping intervals; 1001 (going away) the server
//!   is shutting down. graphql-ws retries after 4403, 4408, 1013, 1001 and 3008, and gives up
//!   after the others.
//! - **Subscriptions only**: queries and mutations go over HTTP, where every limit of the edge
//!   applies; over the socket they get an `error` message. At most `WEBSOCKET_MAX_SUBSCRIPTIONS`
//!   at once per connection (more get an `error` message too).
//! - **Bounded**: messages of at most 64 KiB; at most `OUTBOX_MESSAGES` answers waiting for the
//!   client (more: closed with 1013), each write done within one ping interval or the
//!   connection is cut; pings every `WEBSOCKET_PING_INTERVAL_SECONDS`. A client that goes away
//!   ends its connection at once, whatever it left unread.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_graphql::{Variables, parser::types::OperationType};
use axum::{
    extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{
    FutureExt, SinkExt, StreamExt,
    future::BoxFuture,
    stream::{AbortHandle, BoxStream, SelectAll},
};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};
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
/// Most bytes waiting in the socket's own buffer before a write waits.
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Most messages waiting for the writer: a client that lets more pile up is too slow (1013).
const OUTBOX_MESSAGES: usize = 64;

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
    let lifecycle = state.lifecycle.clone();
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
            // Tracked, so that a shutdown waits for the close frames.
            lifecycle.track(serve(socket, state, client, speaks_protocol))
        })
}

/// Why a connection ends, and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Close(u16, &'static str);

const TOO_SLOW: Close = Close(1013, "Too slow to take the messages");

/// The answers of a connection, written by a task of their own.
struct Outbox {
    queue: mpsc::Sender<Message>,
    writer: tokio::task::JoinHandle<()>,
    write_timeout: Duration,
}

impl Outbox {
    /// Starts the writer: it writes what is queued, in order, each write within
    /// `write_timeout`; a write that fails or times out ends it (the client is gone or does not
    /// read), and with it the connection.
    fn start<S>(mut sink: S, write_timeout: Duration) -> Self
    where
        S: futures_util::Sink<Message> + Unpin + Send + 'static,
    {
        let (queue, mut queued) = mpsc::channel::<Message>(OUTBOX_MESSAGES);
        let writer = tokio::spawn(async move {
            while let Some(message) = queued.recv().await {
                let last = matches!(message, Message::Close(_));
                match tokio::time::timeout(write_timeout, sink.send(message)).await {
                    Ok(Ok(())) if !last => {}
                    _ => return,
                }
            }
        });
        Self {
            queue,
            writer,
            write_timeout,
        }
    }

    /// Queues `message` without waiting. Errors: the client does not take what it is sent
    /// (`TOO_SLOW`), or the writer has ended.
    fn send(&self, message: Message) -> Result<(), Close> {
        self.queue.try_send(message).map_err(|_| TOO_SLOW)
    }

    /// Whether one more message can be queued now.
    fn has_room(&self) -> bool {
        self.queue.capacity() > 0
    }

    /// Until one more message can be queued. Errors: the writer has ended (the client is gone
    /// or did not take a write in time).
    async fn room(&self) -> Result<(), Close> {
        self.queue.reserve().await.map(drop).map_err(|_| TOO_SLOW)
    }

    fn text(&self, message: &Value) -> Result<(), Close> {
        self.send(Message::Text(message.to_string().into()))
    }

    /// Ends the connection: the close frame after what is queued, when there is room for it,
    /// written within one write timeout; else the connection is dropped at once.
    async fn close(self, why: Close) {
        let Self {
            queue,
            mut writer,
            write_timeout,
        } = self;
        let queued = why != TOO_SLOW && queue.try_send(close_frame(why)).is_ok();
        drop(queue);
        if !queued
            || tokio::time::timeout(write_timeout, &mut writer)
                .await
                .is_err()
        {
            writer.abort();
        }
    }
}

fn close_frame(why: Close) -> Message {
    Message::Close(Some(CloseFrame {
        code: why.0,
        reason: Utf8Bytes::from_static(why.1),
    }))
}

/// Where a connection stands.
enum Phase {
    /// Waiting for `connection_init`.
    New,
    /// `connection_init` arrived; its token is being checked.
    Authenticating(BoxFuture<'static, Result<(Authenticated, Counted), Close>>),
    /// Acknowledged.
    Ready {
        authenticated: Box<Authenticated>,
        _counted: Counted,
    },
}

/// One event of a subscription: its id and serial, and the response, or `None` when it ended.
type Emitted = (String, u64, Option<async_graphql::Response>);

/// The subscriptions of one connection.
#[derive(Default)]
struct Subscriptions {
    running: SelectAll<BoxStream<'static, Emitted>>,
    /// Each open id with the serial of its stream (an id may be reused after `complete`) and
    /// the handle that stops it.
    open: HashMap<String, (u64, AbortHandle)>,
    serial: u64,
}

impl Subscriptions {
    fn start(
        &mut self,
        id: String,
        stream: impl futures_util::Stream<Item = async_graphql::Response> + Send + 'static,
    ) {
        self.serial += 1;
        let serial = self.serial;
        let (stream, handle) = futures_util::stream::abortable(stream);
        self.open.insert(id.clone(), (serial, handle));
        let tag = id.clone();
        let emitted = stream
            .map(move |response| (tag.clone(), serial, Some(response)))
            .chain(futures_util::stream::once(
                async move { (id, serial, None) },
            ));
        self.running.push(emitted.boxed());
    }

    /// Stops `id`, if it is open.
    fn stop(&mut self, id: &str) {
        if let Some((_, handle)) = self.open.remove(id) {
            handle.abort();
        }
    }

    /// Whether `(id, serial)` is the open subscription of that id.
    fn is_open(&self, id: &str, serial: u64) -> bool {
        self.open.get(id).is_some_and(|(open, _)| *open == serial)
    }
}

async fn serve(socket: WebSocket, state: EdgeState, client: ClientInfo, speaks_protocol: bool) {
    let (sink, mut incoming) = socket.split();
    let outbox = Outbox::start(sink, state.limits.websocket.ping_interval);
    if !speaks_protocol {
        outbox
            .close(Close(4406, "Subprotocol not acceptable"))
            .await;
        return;
    }
    // The HTTP connection gave its slot back at the upgrade; the WebSocket takes one of its own.
    let Some(_slot) = state.lifecycle.websocket_slot() else {
        outbox.close(TOO_SLOW).await;
        return;
    };
    let ending = Connection::new(state, client)
        .run(&outbox, &mut incoming)
        .await;
    if let Some(why) = ending {
        outbox.close(why).await;
    } else {
        outbox.writer.abort();
    }
}

/// One connection's state, read and changed by its loop only.
struct Connection {
    state: EdgeState,
    client: ClientInfo,
    settings: WebSocketSettings,
    phase: Phase,
    subscriptions: Subscriptions,
    /// Raised when a subscription fell too far behind its user's events.
    slow: SlowSubscriber,
    /// The connection's user's events, to notice its own session ending.
    session_events: Option<crate::service::events::Subscription>,
    token_expires: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connection {
    fn new(state: EdgeState, client: ClientInfo) -> Self {
        Self {
            settings: state.limits.websocket,
            state,
            client,
            phase: Phase::New,
            subscriptions: Subscriptions::default(),
            slow: SlowSubscriber::default(),
            session_events: None,
            token_expires: None,
        }
    }

    /// The connection's loop: every branch handles what it got and queues its answers without
    /// waiting for the client. Returns how to close, or `None` when the client went away.
    async fn run(
        &mut self,
        outbox: &Outbox,
        incoming: &mut futures_util::stream::SplitStream<WebSocket>,
    ) -> Option<Close> {
        let settings = self.settings;
        let init_deadline = tokio::time::sleep(settings.init_timeout);
        tokio::pin!(init_deadline);
        let silence_limit = settings.ping_interval * 3;
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        let mut pings = tokio::time::interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = self.state.lifecycle.stopping();
        let stopping = async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        tokio::pin!(stopping);

        let why = loop {
            let ready = matches!(self.phase, Phase::Ready { .. });
            // Backpressure: while the writer is behind, neither the client's messages (each
            // answered by at most one) nor the subscriptions' are taken, and nothing waits on
            // a write. Timers keep running.
            let room = outbox.has_room();
            let step = tokio::select! {
                room_again = outbox.room(), if !room => room_again,
                received = incoming.next(), if room => {
                    silence.as_mut().reset(Instant::now() + silence_limit);
                    match received {
                        Some(Ok(Message::Text(text))) => self.received(&text, outbox),
                        Some(Ok(Message::Binary(_))) => {
                            Err(Close(4400, "Binary messages are not supported"))
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                    }
                }
                authenticated = authenticating(&mut self.phase) => {
                    self.acknowledge(authenticated, outbox)
                }
                Some((id, serial, response)) = self.subscriptions.running.next(), if room => {
                    self.emitted(id, serial, response, outbox)
                }
                () = &mut init_deadline, if !ready => {
                    Err(Close(4408, "Connection initialisation timeout"))
                }
                () = &mut silence, if ready => {
                    Err(Close(3008, "No message within the keep-alive time"))
                }
                // A ping with no room to send it is skipped: the writer is busy anyway.
                _ = pings.tick(), if ready => {
                    if outbox.has_room() {
                        outbox.text(&json!({ "type": "ping" }))
                    } else {
                        Ok(())
                    }
                }
                event = next_event(&mut self.session_events) => self.session_event(event),
                () = expiry(&mut self.token_expires) => {
                    Err(Close(4403, "The access token expired"))
                }
                () = self.slow.raised() => Err(TOO_SLOW),
                () = &mut stopping => Err(Close(1001, "The server is shutting down")),
            };
            if let Err(why) = step {
                break why;
            }
        };
        if why == Close(4403, SESSION_ENDED) {
            // The event that ended the session is on its way through the subscriptions too:
            // let it reach the client before the close does.
            let until = Instant::now() + DRAIN_BEFORE_CLOSE;
            while let Ok(Some((id, serial, response))) =
                tokio::time::timeout_at(until, self.subscriptions.running.next()).await
            {
                if self.emitted(id, serial, response, outbox).is_err() {
                    break;
                }
            }
        }
        Some(why)
    }

    /// A text message from the client.
    fn received(&mut self, text: &str, outbox: &Outbox) -> Result<(), Close> {
        const INVALID: Close = Close(4400, "Invalid message");
        let message: Value = serde_json::from_str(text).map_err(|_| INVALID)?;
        let id = message.get("id").and_then(Value::as_str);
        match (message.get("type").and_then(Value::as_str), id) {
            (Some("connection_init"), _) => {
                if !matches!(self.phase, Phase::New) {
                    return Err(Close(4429, "Too many initialisation requests"));
                }
                let token = message
                    .pointer("/payload/Authorization")
                    .or_else(|| message.pointer("/payload/authorization"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let state = self.state.clone();
                self.phase = Phase::Authenticating(
                    async move { connection_init(token, state).await }.boxed(),
                );
                Ok(())
            }
            (Some("ping"), _) => outbox.text(&json!({ "type": "pong" })),
            (Some("pong"), _) => Ok(()),
            (Some("subscribe"), Some(id)) => {
                let Phase::Ready { authenticated, .. } = &self.phase else {
                    return Err(Close(4401, "Unauthorized"));
                };
                if self.subscriptions.open.contains_key(id) {
                    return Err(Close(4409, "Subscriber for this id already exists"));
                }
                let payload = message.get("payload").ok_or(INVALID)?;
                let query = payload
                    .get("query")
                    .and_then(Value::as_str)
                    .ok_or(INVALID)?;
                let operation_name = match payload.get("operationName") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(name)) => Some(name.clone()),
                    Some(_) => return Err(INVALID),
                };
                let variables = match payload.get("variables") {
                    None | Some(Value::Null) => Variables::default(),
                    Some(variables @ Value::Object(_)) => Variables::from_json(variables.clone()),
                    Some(_) => return Err(INVALID),
                };
                let checked =
                    match self
                        .state
                        .documents
                        .check(query.to_owned(), operation_name, variables)
                    {
                        Ok(checked) => checked,
                        Err(refusal) => {
                            return outbox
                                .text(&error_message(id, json!([refusal.into_server_error()])));
                        }
                    };
                let refuse = |code: &str, text: &str| {
                    outbox.text(&error_message(
                        id,
                        json!([{ "message": text, "extensions": { "code": code } }]),
                    ))
                };
                if checked
                    .operation_type()
                    .is_some_and(|operation| operation != OperationType::Subscription)
                {
                    return refuse(
                        "SUBSCRIPTIONS_ONLY",
                        "only subscriptions run over WebSocket; send queries and mutations over HTTP",
                    );
                }
                if self.subscriptions.open.len() >= self.settings.max_subscriptions {
                    return refuse(
                        "TOO_MANY_SUBSCRIPTIONS",
                        "too many subscriptions on this connection",
                    );
                }
                let request = checked
                    .data(RequestAuth::resolved(Authenticated::clone(authenticated)))
                    .data(self.client.clone())
                    .data(self.slow.clone());
                let stream = self.state.engine.execute_stream(request);
                self.subscriptions.start(id.to_owned(), stream);
                Ok(())
            }
            (Some("complete"), Some(id)) => {
                self.subscriptions.stop(id);
                Ok(())
            }
            _ => Err(INVALID),
        }
    }

    /// `connection_init` was answered: acknowledge, and watch the session and the token.
    fn acknowledge(
        &mut self,
        authenticated: Result<(Authenticated, Counted), Close>,
        outbox: &Outbox,
    ) -> Result<(), Close> {
        let (authenticated, counted) = authenticated?;
        self.session_events = Some(self.state.service.events().subscribe(authenticated.user.id));
        let leeway = chrono::TimeDelta::from_std(self.settings.token_leeway).unwrap_or_default();
        let left = (authenticated.expires_at + leeway - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        self.token_expires = Some(Box::pin(tokio::time::sleep(left)));
        self.phase = Phase::Ready {
            authenticated: Box::new(authenticated),
            _counted: counted,
        };
        outbox.text(&json!({ "type": "connection_ack" }))
    }

    /// A subscription's response, or its end.
    fn emitted(
        &mut self,
        id: String,
        serial: u64,
        response: Option<async_graphql::Response>,
        outbox: &Outbox,
    ) -> Result<(), Close> {
        if !self.subscriptions.is_open(&id, serial) {
            return Ok(());
        }
        let Some(response) = response else {
            self.subscriptions.open.remove(&id);
            return outbox.text(&json!({ "id": id, "type": "complete" }));
        };
        // A request error (validation, operation resolution, variables: no data, no error with
        // a path) is the protocol's one `error` message, which ends the subscription.
        let request_error = response.data == async_graphql::Value::Null
            && !response.errors.is_empty()
            && response.errors.iter().all(|error| error.path.is_empty());
        if request_error {
            self.subscriptions.stop(&id);
            return outbox.text(&error_message(&id, json!(response.errors)));
        }
        outbox.text(&json!({ "id": id, "type": "next", "payload": response }))
    }

    /// An event of the connection's user: its own session ending closes it.
    fn session_event(
        &self,
        event: Option<crate::service::events::SessionEvent>,
    ) -> Result<(), Close> {
        let Phase::Ready { authenticated, .. } = &self.phase else {
            return Ok(());
        };
        match event {
            Some(event)
                if event.session_id == authenticated.session.id
                    && matches!(
                        event.kind,
                        SessionEventKind::Revoked | SessionEventKind::Expired
                    ) =>
            {
                Err(Close(4403, SESSION_ENDED))
            }
            Some(_) => Ok(()),
            None => Err(TOO_SLOW),
        }
    }
}

/// The access token of `connection_init`, checked like any request's; and the user's
/// connection count.
async fn connection_init(
    token: Option<String>,
    state: EdgeState,
) -> Result<(Authenticated, Counted), Close> {
    let header = token.as_deref().map(str::as_bytes);
    let bearer = BearerToken::from_header(header);
    let authenticated = state
        .service
        .authenticate(&bearer)
        .await
        .map_err(|_| Close(4403, "Forbidden"))?;
    let counted = state
        .websocket_connections
        .admit(
            authenticated.user.id,
            state.limits.websocket.max_connections_per_user,
        )
        .ok_or(Close(4429, "Too many connections for this user"))?;
    Ok((authenticated, counted))
}

/// The answer to `connection_init` once it is there; pending forever in every other phase.
async fn authenticating(phase: &mut Phase) -> Result<(Authenticated, Counted), Close> {
    match phase {
        Phase::Authenticating(checking) => checking.await,
        _ => std::future::pending().await,
    }
}

/// The protocol's `error` message for subscription `id`.
fn error_message(id: &str, errors: Value) -> Value {
    json!({ "id": id, "type": "error", "payload": errors })
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
async fn expiry(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll};

    use super::*;

    /// A client that never takes a byte: every write waits for ever.
    struct NeverReads;

    impl futures_util::Sink<Message> for NeverReads {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), ()> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_can_neither_hold_the_loop_nor_the_connection() {
        let outbox = Outbox::start(NeverReads, Duration::from_secs(5));
        let pong = || Message::Text("{\"type\":\"pong\"}".into());
        // The writer holds one message (stuck writing it), the queue the next ones; queueing
        // never waits, and one too many is refused as too slow.
        let mut queued = 0;
        while outbox.send(pong()).is_ok() {
            queued += 1;
            tokio::task::yield_now().await;
            assert!(queued <= OUTBOX_MESSAGES + 1, "the outbox is bounded");
        }
        assert!(queued >= OUTBOX_MESSAGES);
        assert_eq!(outbox.send(pong()), Err(TOO_SLOW));
        // Closing a connection whose client never reads ends within one write timeout.
        let started = Instant::now();
        outbox.close(Close(4403, "Forbidden")).await;
        assert!(started.elapsed() <= Duration::from_secs(5));
    }
}
