use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};
use crate::outbox::OutboxMessage;

/// A message taken for publishing.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: i64,
    pub message: OutboxMessage,
}

/// Messages taken from the outbox by a transaction still open: commit it
/// once the broker confirmed them all. Dropped unsettled (an error, a
/// cancelled relay), its connection is closed rather than pooled, which
/// rolls the transaction back.
pub struct OutboxBatch {
    client: Option<deadpool_postgres::Client>,
    messages: Vec<ClaimedMessage>,
}

impl OutboxBatch {
    pub fn messages(&self) -> &[ClaimedMessage] {
        &self.messages
    }

    fn client(&self) -> &deadpool_postgres::Client {
        self.client
            .as_ref()
            .expect("a batch holds its connection until it is settled or dropped")
    }

    /// Ends the batch: deleted for good when every message was published
    /// (`failed` empty); otherwise all come back, and then the published
    /// ones are deleted, so only the failed ones are published again.
    pub async fn settle(mut self, failed: &[i64]) -> Result<(), StoreError> {
        let client = self.client();
        if failed.is_empty() {
            client.batch_execute("COMMIT").await?;
        } else {
            client.batch_execute("ROLLBACK").await?;
            let published: Vec<i64> = self
                .messages
                .iter()
                .map(|m| m.id)
                .filter(|id| !failed.contains(id))
                .collect();
            let delete = client
                .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
                .await?;
            client.execute(&delete, &[&published]).await?;
        }
        // Settled: back to the pool with no transaction open.
        self.client = None;
        Ok(())
    }
}

impl Drop for OutboxBatch {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Any constant shared by every instance: whoever holds this advisory lock
/// is the one relay, so events are published in a single order.
const RELAY_LOCK: i64 = 0x6c66_5f72_656c_6179; // "lf_relay"

/// This instance's turn as the outbox relay, held by a dedicated connection:
/// if it dies, PostgreSQL releases the lock and another instance takes over.
pub struct OutboxLeader {
    _client: tokio_postgres::Client,
    written: Arc<Notify>,
    lost: CancellationToken,
}

impl OutboxLeader {
    /// Completes when a transaction that wrote to the outbox commits.
    pub async fn written(&self) {
        self.written.notified().await;
    }

    /// Completes when the dedicated connection, and so the lock, is gone.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }
}

impl Store {
    /// Waits until this instance becomes the outbox relay: one connection
    /// asks for the lock every `retry` while another instance holds it.
    /// `Ok(None)` when `stop` fires first.
    pub async fn lead_outbox(
        &self,
        retry: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<OutboxLeader>, StoreError> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let written = Arc::new(Notify::new());
        let lost = CancellationToken::new();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn({
            let written = written.clone();
            let lost = lost.clone();
            async move {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => written.notify_one(),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "outbox relay connection failed");
                            break;
                        }
                    }
                }
                lost.cancel();
            }
        });
        loop {
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&RELAY_LOCK])
                .await?
                .get(0);
            if locked {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = stop.cancelled() => return Ok(None),
            }
        }
        client.batch_execute("LISTEN livefeed_outbox").await?;
        Ok(Some(OutboxLeader {
            _client: client,
            written,
            lost,
        }))
    }

    /// Takes up to `limit` of the oldest messages: deletes them in a
    /// transaction left open until [`OutboxBatch::settle`], so they come
    /// back if the broker does not confirm them or this relay dies (its
    /// connection closes, and the transaction with it). One write per
    /// message, where a claim, then a delete, took two. Rows another
    /// relay's open batch holds are skipped.
    pub async fn take_outbox(&self, limit: i64) -> Result<OutboxBatch, StoreError> {
        let mut batch = OutboxBatch {
            client: Some(self.client().await?),
            messages: Vec::new(),
        };
        let client = batch.client();
        // Losing the deletes to a crash of PostgreSQL only publishes the
        // batch again: the commit need not wait for the disk.
        client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit TO off")
            .await?;
        let take = client
            .prepare_cached(
                "DELETE FROM outbox WHERE id IN ( \
                     SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED \
                 ) RETURNING id, topic, routing_key, body",
            )
            .await?;
        let rows = client.query(&take, &[&limit]).await?;
        let mut messages: Vec<ClaimedMessage> = rows
            .iter()
            .filter_map(|row| {
                let message = OutboxMessage::from_stored(
                    row.get(1),
                    row.get(2),
                    Bytes::from(row.get::<_, Vec<u8>>(3)),
                )?;
                Some(ClaimedMessage {
                    id: row.get(0),
                    message,
                })
            })
            .collect();
        // RETURNING does not keep the subquery's order; publish oldest first.
        messages.sort_unstable_by_key(|m| m.id);
        batch.messages = messages;
        Ok(batch)
    }

    /// Messages written but not yet published, read from the two ends of
    /// the primary key: two index probes whatever the backlog, where a
    /// `count(*)` per scrape would read every waiting row. Exact while the
    /// relay publishes in id order; an upper bound when rows in the middle
    /// were published before older ones (a batch half confirmed).
    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let span = client
            .prepare_cached("SELECT coalesce(max(id) - min(id) + 1, 0) FROM outbox")
            .await?;
        Ok(client.query_one(&span, &[]).await?.get(0))
    }
}
