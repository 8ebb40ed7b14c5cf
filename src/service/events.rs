//! Session events (`subscription { sessionEvents }`): what happened to a user's sessions, as it
//! happens, to every subscriber of that user on every instance.
//!
//! The service publishes; the store carries events to every process on the database where it can
//! ([`Store::broadcast_events`]: PostgreSQL's `NOTIFY`, MongoDB's change streams), and each
//! process hands what it hears ([`Store::listen_events`]) to its own subscribers. A SQLite file
//! has one process, so its events go straight to the subscribers here.
//!
//! Delivery is at most once and best effort: an event published while the database is away, or
//! while an instance's listener reconnects, is lost (a client learns the state at its next
//! request). A subscriber that falls `SUBSCRIBER_BUFFER` events behind is dropped (its
//! connection is closed) rather than buffered without limit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::store::EventStore;

/// Events one subscriber may be behind before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 64;
/// Events in one broadcast payload: about 150 bytes of JSON each, well under `NOTIFY`'s 8000.
const EVENTS_PER_BROADCAST: usize = 40;

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionEventKind {
    /// A session began: register, login.
    Created,
    /// Its token pair was rotated by `refresh`.
    Refreshed,
    /// It was ended: logout, revokeTokens, revokeOtherSessions, changePassword, refresh-token
    /// reuse, deleteAccount, an operator.
    Revoked,
    /// A refresh found it past its idle timeout or absolute expiry.
    Expired,
}

/// One event of one session of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub kind: SessionEventKind,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub at: DateTime<Utc>,
}

/// The events of one user, as a subscriber receives them.
pub type Subscription = broadcast::Receiver<SessionEvent>;

/// Publishes events and hands them to this process's subscribers.
#[derive(Clone)]
pub struct SessionEvents {
    store: Arc<dyn EventStore>,
    subscribers: Arc<Mutex<HashMap<Uuid, broadcast::Sender<SessionEvent>>>>,
}

impl SessionEvents {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            subscribers: Arc::default(),
        }
    }

    /// Listens to the events every process on the database broadcasts, and hands them to the
    /// subscribers here. `Ok` at once when the database has no such channel (SQLite: nothing to
    /// do). Errors, for the caller to start it again after a pause: the listener could not be
    /// opened, or its stream ended.
    pub async fn listen(&self) -> Result<(), String> {
        let mut heard = match self.store.listen_events().await {
            Ok(Some(heard)) => heard,
            Ok(None) => return Ok(()),
            Err(error) => return Err(format!("could not listen: {error}")),
        };
        while let Some(payload) = heard.next().await {
            match serde_json::from_str::<Vec<SessionEvent>>(&payload) {
                Ok(events) => self.deliver(&events),
                Err(_) => tracing::warn!(
                    event = "session_event_unreadable",
                    "an unreadable session event was ignored"
                ),
            }
        }
        Err("the listener's stream ended".into())
    }

    /// Publishes `events` to every subscriber of their users, on every instance, in batches of
    /// `EVENTS_PER_BROADCAST` (PostgreSQL's `NOTIFY` takes at most 8000 bytes). Failing to (the
    /// database away) loses them, and is logged: the change itself has happened.
    pub async fn publish(&self, events: &[SessionEvent]) {
        for batch in events.chunks(EVENTS_PER_BROADCAST) {
            let Ok(payload) = serde_json::to_string(batch) else {
                return;
            };
            match self.store.broadcast_events(&payload).await {
                Ok(true) => {}
                Ok(false) => self.deliver(batch),
                Err(_) => tracing::warn!(
                    event = "session_events_lost",
                    count = batch.len(),
                    "session events could not be broadcast"
                ),
            }
        }
    }

    /// `kind` for each of `session_ids` of `user_id`, now.
    pub async fn publish_all(&self, kind: SessionEventKind, user_id: Uuid, session_ids: &[Uuid]) {
        let at = Utc::now();
        let events: Vec<SessionEvent> = session_ids
            .iter()
            .map(|&session_id| SessionEvent {
                kind,
                user_id,
                session_id,
                at,
            })
            .collect();
        self.publish(&events).await;
    }

    /// The events of `user_id` from now on.
    pub fn subscribe(&self, user_id: Uuid) -> Subscription {
        let mut subscribers = lock(&self.subscribers);
        // Users whose subscribers have all gone, now and then (not on every call: it walks the
        // whole map).
        if subscribers.len().is_power_of_two() {
            subscribers.retain(|_, sender| sender.receiver_count() > 0);
        }
        subscribers
            .entry(user_id)
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
            .subscribe()
    }

    /// Hands `events` to this process's subscribers of their users.
    fn deliver(&self, events: &[SessionEvent]) {
        let mut subscribers = lock(&self.subscribers);
        for event in events {
            if let Some(sender) = subscribers.get(&event.user_id)
                && sender.send(*event).is_err()
            {
                // Nobody listens any more.
                subscribers.remove(&event.user_id);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;
    use crate::store::{PoolSettings, SeaStore};

    async fn events() -> SessionEvents {
        let pool = PoolSettings {
            max_connections: Some(1),
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        };
        let store = SeaStore::connect("sqlite::memory:", pool).await.unwrap();
        SessionEvents::new(Arc::new(store))
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_so_and_holds_up_nobody() {
        let events = events().await;
        let user = Uuid::new_v4();
        let other_user = Uuid::new_v4();
        let mut slow = events.subscribe(user);
        let mut prompt = events.subscribe(user);
        let mut other = events.subscribe(other_user);
        for _ in 0..SUBSCRIBER_BUFFER * 3 {
            // Publishing never waits for the slow one.
            events
                .publish_all(SessionEventKind::Refreshed, user, &[Uuid::new_v4()])
                .await;
            assert_eq!(prompt.try_recv().unwrap().user_id, user);
        }
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Lagged(_))));
        // Nothing of this user reached the other one.
        assert!(matches!(other.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn many_events_are_published_in_batches_that_all_arrive() {
        let events = events().await;
        let user = Uuid::new_v4();
        let mut subscriber = events.subscribe(user);
        let ids: Vec<Uuid> = (0..EVENTS_PER_BROADCAST + 5)
            .map(|_| Uuid::new_v4())
            .collect();
        events
            .publish_all(SessionEventKind::Revoked, user, &ids)
            .await;
        for id in ids {
            assert_eq!(subscriber.try_recv().unwrap().session_id, id);
        }
    }
}
