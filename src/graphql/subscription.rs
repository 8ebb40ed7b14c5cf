use std::sync::Arc;

use async_graphql::{Context, Result, Subscription};
use futures_util::Stream;
use tokio::sync::{Notify, broadcast::error::RecvError};

use super::types::SessionEvent;
use crate::{
    auth::{SignedIn, signed_in},
    service::AuthService,
};

/// Live events, over the `graphql-transport-ws` WebSocket protocol on `/graphql` (README, "Live
/// session events"); the access token goes in `connection_init`'s payload.
pub struct SubscriptionRoot;

/// Raised by a subscription whose subscriber fell too far behind (more than
/// `SUBSCRIBER_BUFFER` events); the transport then closes the connection.
#[derive(Clone, Default)]
pub struct SlowSubscriber(Arc<Notify>);

impl SlowSubscriber {
    pub fn raise(&self) {
        self.0.notify_one();
    }

    pub async fn raised(&self) {
        self.0.notified().await;
    }
}

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// The subscriber's own user's session events, from now on, as they happen on any instance:
    /// sessions created, refreshed, revoked or found expired. A subscriber too slow to take
    /// them is disconnected rather than buffered without limit.
    #[graphql(guard = "SignedIn")]
    async fn session_events(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = SessionEvent> + use<>> {
        let caller = signed_in(ctx).await?;
        let current = caller.session.id;
        let events = ctx
            .data::<AuthService>()?
            .events()
            .subscribe(caller.user.id);
        let slow = ctx.data_opt::<SlowSubscriber>().cloned();
        Ok(futures_util::stream::unfold(events, move |mut events| {
            let slow = slow.clone();
            async move {
                match events.recv().await {
                    Ok(event) => Some((SessionEvent::new(event, current), events)),
                    Err(RecvError::Lagged(_)) => {
                        if let Some(slow) = slow {
                            slow.raise();
                        }
                        None
                    }
                    Err(RecvError::Closed) => None,
                }
            }
        }))
    }
}
