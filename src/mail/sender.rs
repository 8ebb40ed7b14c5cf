//! The outbox sender: claims due messages from the outbox (shared by every instance on the
//! database: a claim is a lease, so one instance sends each message), delivers them by their
//! channel, and removes them, or tries again later with a backoff that doubles from 1 s to 5
//! minutes, until the message expires.
//!
//! - A mail goes through the mail transport; when the server is away or answers 4xx, it is
//!   tried again until its link expires. A 5xx answer is final. Each outcome is counted in
//!   `authql_mails_total{kind,outcome}` (`sent`, `deferred`, `rejected`, `expired`) and logged
//!   by the mail's id and kind: never its address, never its contents (it holds a link as good
//!   as a password).
//! - A webhook delivery (one event to one endpoint) is signed and posted by the
//!   [`WebhookClient`]; anything but a 2xx answer is tried again until the event's retry period
//!   ends (`crate::webhooks::RETRY_PERIOD`). Each outcome is counted in
//!   `authql_webhooks_total{type,outcome}` (`delivered`, `deferred`, `expired`) and logged by
//!   the event's id and type, never its body.

use std::{sync::Arc, time::Duration};

use chrono::{TimeDelta, Utc};
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{
    MailKind,
    transport::{DELIVERY_TIMEOUT, Delivered, SendFailure, Transport},
};
use crate::{
    store::{OutboxMail, OutboxMessage, OutboxStore, OutboxWebhook, event_label},
    webhooks::WebhookClient,
};

/// Most mails claimed at once.
const BATCH: u64 = 32;
/// Most deliveries in flight at once.
const CONCURRENCY: usize = 8;
/// How long a claim holds a mail: past it, another instance may take the mail (its claimer
/// crashed). Longer than any delivery may take.
const LEASE: Duration = Duration::from_secs(5 * 60);
/// How often the outbox is looked at when nothing wakes the sender: mails queued by another
/// instance, and retries that have come due.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The first retry's delay; each later one doubles it, up to [`LONGEST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5 * 60);

const _: () = assert!(LEASE.as_secs() > 2 * DELIVERY_TIMEOUT.as_secs());
const _: () = assert!(LEASE.as_secs() > 2 * crate::webhooks::DELIVERY_TIMEOUT.as_secs());

/// Wakes the sender of this instance: a mail or a webhook event was queued.
#[derive(Clone, Default)]
pub struct Doorbell(Arc<Notify>);

impl Doorbell {
    /// A mail is waiting.
    pub fn ring(&self) {
        self.0.notify_one();
    }

    async fn rung(&self) {
        self.0.notified().await;
    }
}

/// Delivers the outbox's mails through a transport, and its webhook deliveries through a
/// webhook client.
#[derive(Clone)]
pub struct OutboxSender {
    outbox: Arc<dyn OutboxStore>,
    transport: Arc<Transport>,
    /// `None` without `WEBHOOK_URLS`: a webhook row left from a run with them waits (deferred)
    /// until they are set again, or expires.
    webhooks: Option<Arc<WebhookClient>>,
    doorbell: Doorbell,
}

impl OutboxSender {
    pub fn new(
        outbox: Arc<dyn OutboxStore>,
        transport: Arc<Transport>,
        webhooks: Option<Arc<WebhookClient>>,
        doorbell: Doorbell,
    ) -> Self {
        Self {
            outbox,
            transport,
            webhooks,
            doorbell,
        }
    }

    /// Runs until the outbox cannot be read (the database away): then returns why, for the
    /// supervisor to start it again.
    pub async fn run(&self) -> Result<(), String> {
        loop {
            let claimed = self
                .outbox
                .claim_messages(Utc::now(), LEASE, BATCH)
                .await
                .map_err(|error| format!("the outbox cannot be read: {error}"))?;
            let full = claimed.len() as u64 == BATCH;
            futures_util::stream::iter(claimed)
                .for_each_concurrent(CONCURRENCY, |message| async move {
                    match message {
                        OutboxMessage::Mail(mail) => self.deliver(mail).await,
                        OutboxMessage::Webhook(webhook) => self.post(webhook).await,
                    }
                })
                .await;
            if !full {
                tokio::select! {
                    () = self.doorbell.rung() => {}
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
        }
    }

    /// Sends one claimed mail and records what became of it.
    async fn deliver(&self, mail: OutboxMail) {
        let kind = MailKind::label(&mail.kind);
        let now = Utc::now();
        if mail.expires_at <= now {
            self.give_up(
                &mail,
                kind,
                "expired",
                "its link expired before it could be sent",
            )
            .await;
            return;
        }
        match self.transport.send(&mail).await {
            Ok(delivered) => {
                crate::metrics::mail(kind, "sent");
                match delivered {
                    Delivered::Smtp => {
                        tracing::info!(event = "mail_sent", mail_id = %mail.id, kind, attempts = mail.attempts + 1, "mail handed to the SMTP server");
                    }
                    Delivered::File(path) => {
                        tracing::info!(event = "mail_written", mail_id = %mail.id, kind, file = %path.display(), "mail written to MAIL_DIR (no SMTP_URL: development only)");
                    }
                }
                self.remove(&mail).await;
            }
            Err(SendFailure::Permanent(why)) => {
                self.give_up(&mail, kind, "rejected", &why).await;
            }
            Err(SendFailure::Transient(why)) => {
                let retry_at = now + backoff(mail.attempts);
                if retry_at >= mail.expires_at {
                    self.give_up(&mail, kind, "expired", &why).await;
                    return;
                }
                crate::metrics::mail(kind, "deferred");
                tracing::warn!(event = "mail_deferred", mail_id = %mail.id, kind, attempts = mail.attempts + 1, why = %why, retry_at = %retry_at, "mail not sent; will try again");
                if let Err(error) = self.outbox.retry_message(mail.id, retry_at).await {
                    // Its lease runs out and it is claimed again.
                    tracing::warn!(event = "mail_retry_not_recorded", mail_id = %mail.id, %error, "could not record the retry");
                }
            }
        }
    }

    async fn give_up(
        &self,
        mail: &OutboxMail,
        kind: &'static str,
        outcome: &'static str,
        why: &str,
    ) {
        crate::metrics::mail(kind, outcome);
        tracing::warn!(event = "mail_given_up", mail_id = %mail.id, kind, outcome, attempts = mail.attempts + 1, why = %why, "mail not sent, and not tried again");
        self.remove(mail).await;
    }

    /// Deletes a mail that is done with; should that fail, its lease runs out and it is sent
    /// again (at least once, never never).
    async fn remove(&self, mail: &OutboxMail) {
        if let Err(error) = self.outbox.remove_message(mail.id).await {
            tracing::warn!(event = "mail_not_removed", mail_id = %mail.id, %error, "a mail that is done with could not be removed from the outbox");
        }
    }

    /// Posts one claimed webhook delivery and records what became of it. Every failure is
    /// worth another attempt until the event expires (an endpoint that answers 4xx may be
    /// fixed: the spec, "Retry schedule", retries on any non-2xx answer).
    async fn post(&self, webhook: OutboxWebhook) {
        let event_type = event_label(&webhook.event_type);
        let now = Utc::now();
        let attempts = webhook.attempts + 1;
        let outcome = if webhook.expires_at <= now {
            Err("its retry period ended before it could be delivered".to_owned())
        } else {
            match &self.webhooks {
                Some(client) => client.deliver(&webhook).await,
                None => Err("WEBHOOK_URLS and WEBHOOK_SECRET are not set".to_owned()),
            }
        };
        let retry_at = match outcome {
            Ok(status) => {
                crate::metrics::webhook(event_type, "delivered");
                tracing::info!(event = "webhook_delivered", webhook_id = %webhook.event_id, r#type = event_type, attempts, status, "webhook delivered");
                self.remove_webhook(&webhook).await;
                return;
            }
            Err(why) => {
                let retry_at = now + backoff(webhook.attempts);
                if retry_at >= webhook.expires_at {
                    crate::metrics::webhook(event_type, "expired");
                    tracing::warn!(event = "webhook_given_up", webhook_id = %webhook.event_id, r#type = event_type, attempts, why = %why, "webhook not delivered within its retry period, and not tried again");
                    self.remove_webhook(&webhook).await;
                    return;
                }
                crate::metrics::webhook(event_type, "deferred");
                tracing::warn!(event = "webhook_deferred", webhook_id = %webhook.event_id, r#type = event_type, attempts, why = %why, retry_at = %retry_at, "webhook not delivered; will try again");
                retry_at
            }
        };
        if let Err(error) = self.outbox.retry_message(webhook.id, retry_at).await {
            // Its lease runs out and it is claimed again.
            tracing::warn!(event = "webhook_retry_not_recorded", webhook_id = %webhook.event_id, %error, "could not record the retry");
        }
    }

    /// Deletes a delivery that is done with; should that fail, its lease runs out and it is
    /// delivered again (at least once).
    async fn remove_webhook(&self, webhook: &OutboxWebhook) {
        if let Err(error) = self.outbox.remove_message(webhook.id).await {
            tracing::warn!(event = "webhook_not_removed", webhook_id = %webhook.event_id, %error, "a webhook delivery that is done with could not be removed from the outbox");
        }
    }
}

/// How long to wait after the `attempts + 1`-th failure: 1 s, 2 s, 4 s, ... at most 5 minutes,
/// less up to a fifth at random so that instances do not retry in step.
fn backoff(attempts: u32) -> TimeDelta {
    let doubled = FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(attempts.min(20)));
    let delay = doubled.min(LONGEST_BACKOFF);
    let jitter = delay.mul_f64(rand::random::<f64>() / 5.0);
    TimeDelta::from_std(delay - jitter).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        let seconds = |attempts| backoff(attempts).num_milliseconds() as f64 / 1000.0;
        for (attempts, full) in [
            (0, 1.0),
            (1, 2.0),
            (3, 8.0),
            (8, 256.0),
            (9, 300.0),
            (40, 300.0),
        ] {
            let delay = seconds(attempts);
            assert!(
                delay <= full && delay >= full * 0.8 - 0.001,
                "{attempts}: {delay}"
            );
        }
    }
}
