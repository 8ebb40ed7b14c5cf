//! The cost of HTTP alone: a bare axum server, not part of authql, that reads the `POST /graphql`
//! body and answers a constant JSON body of the same shape (and bytes) as authql's `me` answer.
//!
//! It runs on a runtime of its own with as many workers as authql has (one per core), on a thread
//! of its own, so that it shares the machine with the load generator as authql does.

use std::net::{Ipv4Addr, SocketAddr};

use axum::{Router, body::Bytes, http::header, response::IntoResponse, routing::post};

pub struct Baseline {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Baseline {
    pub fn start(answer: Bytes) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("baseline")
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let router = Router::new().route(
                    "/graphql",
                    post(move |_body: Bytes| {
                        let answer = answer.clone();
                        async move {
                            ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not joined: connections still open would hold the graceful shutdown; the process ends
        // soon after anyway.
        drop(self.thread.take());
    }
}
