//! Serving connections: HTTP/1.1 on hyper, with bounds that `axum::serve` does not set
//! (axum#2741, axum#3003).
//!
//! - **A request head within `HEADER_READ_TIMEOUT_SECONDS`** (10 by default), from the moment a
//!   connection is accepted or has answered its last request: a client that never finishes its
//!   head (slowloris), or a kept-alive connection that stays silent, is closed then.
//! - **Answers taken within as long**: a write to the client that makes no progress for
//!   `HEADER_READ_TIMEOUT_SECONDS` fails, and the connection is closed. A client that sends
//!   requests (pipelined, say) and never reads the answers cannot hold its connection.
//! - **At most `MAX_CONNECTIONS` open connections**, WebSockets included; more wait in the
//!   kernel's backlog until one closes, so that the process never runs out of file
//!   descriptors. An `accept` that fails (out of descriptors all the same) is logged and tried
//!   again after a pause, never a busy loop.
//! - **Shutdown**: the listener closes at once; connections with no request in flight (idle,
//!   or still sending their head) are closed at once; WebSockets are sent a close frame (1001);
//!   requests in flight get up to `SHUTDOWN_TIMEOUT_SECONDS` to finish, after which whatever is
//!   left is dropped.
//!
//! HTTP/1.1 only: HTTP/2 without TLS (h2c) is not served. Put HTTP/2 and TLS at the proxy.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Pause after a failed `accept` before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How connections are served, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// `HEADER_READ_TIMEOUT_SECONDS`.
    pub header_read_timeout: Duration,
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `SHUTDOWN_TIMEOUT_SECONDS`.
    pub shutdown_timeout: Duration,
}

/// What connections share with the server that serves them: their slots, the shutdown signal
/// and the WebSockets that outlive their HTTP connection.
#[derive(Clone)]
pub struct Lifecycle {
    slots: Arc<Semaphore>,
    stopping: watch::Sender<bool>,
    upgraded: TaskTracker,
}

impl Lifecycle {
    /// `max_connections` slots (at least one), not stopping, no WebSocket yet.
    pub fn new(max_connections: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            stopping: watch::channel(false).0,
            upgraded: TaskTracker::new(),
        }
    }

    /// Becomes `true` when the server starts shutting down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// A connection slot for a WebSocket, whose HTTP connection gave its own back at the
    /// upgrade; `None` when every slot is taken.
    pub fn websocket_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Runs `task` (a WebSocket connection) so that a shutdown waits for it.
    pub fn track<F: Future>(&self, task: F) -> tokio_util::task::task_tracker::TrackedFuture<F> {
        self.upgraded.track_future(task)
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then shuts down as the module
/// says. The router sees each request's peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
    lifecycle: Lifecycle,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    let mut failures_logged = 0u64;
    loop {
        // Finished connections are reaped as they go, so the set stays as small as the load.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = lifecycle.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Logged once, then every 100th time: a descriptor shortage repeats fast.
                    if failures_logged.is_multiple_of(100) {
                        tracing::warn!(event = "accept_failed", %error, "could not accept a connection; retrying");
                    }
                    failures_logged += 1;
                    drop(slot);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            peer,
            router.clone(),
            settings,
            lifecycle.stopping(),
            slot,
        ));
    }
    drop(listener);
    lifecycle.stopping.send_replace(true);
    lifecycle.upgraded.close();
    let finished = async {
        while connections.join_next().await.is_some() {}
        lifecycle.upgraded.wait().await;
    };
    if tokio::time::timeout(settings.shutdown_timeout, finished)
        .await
        .is_err()
    {
        tracing::warn!(
            event = "shutdown_timeout",
            "requests still running after the shutdown timeout were dropped"
        );
    }
    connections.abort_all();
    Ok(())
}

/// Counts a request in flight on its connection while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One HTTP/1.1 connection, holding its slot until it closes (or hands itself to a
/// WebSocket).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    settings: ServerSettings,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service = {
        let in_flight = in_flight.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let running = InFlight::enter(&in_flight);
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await;
                drop(running);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let io = WriteTimeout::new(TokioIo::new(stream), settings.header_read_timeout);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stopping.wait_for(|stopping| *stopping) => {}
    }
    // Shutting down. Nothing in flight (idle, or a head still arriving): close now.
    if in_flight.load(Ordering::Acquire) == 0 {
        return;
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// A connection's socket whose writes (and flushes) must make progress within `timeout`: one
/// that stays pending longer fails with `TimedOut`, and hyper closes the connection.
struct WriteTimeout<T> {
    io: T,
    timeout: Duration,
    /// Since when the current write has been pending.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteTimeout<T> {
    fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
        }
    }

    /// After a write that did not complete: pending until the deadline, then `TimedOut`.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not take the answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Progress made: the next stall starts its own deadline.
    fn progressed<R>(&mut self, outcome: std::io::Result<R>) -> Poll<std::io::Result<R>> {
        self.stalled = None;
        Poll::Ready(outcome)
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for WriteTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for WriteTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(outcome) => this.progressed(outcome),
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(outcome) => this.progressed(outcome),
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Ready(outcome) => this.progressed(outcome),
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(outcome) => this.progressed(outcome),
            Poll::Pending => this.pending(cx),
        }
    }
}
