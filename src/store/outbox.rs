use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Transaction;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};
use crate::outbox::OutboxMessage;

/// A message claimed for publishing; delete it by `id` once published.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: i64,
    pub message: OutboxMessage,
}

/// Writes `messages`, in order, inside the caller's transaction, with one
/// statement: one round trip, and one wake-up of the relay (the trigger
/// fires per statement).
pub(super) async fn enqueue(
    tx: &Transaction<'_>,
    messages: &[OutboxMessage],
) -> Result<(), StoreError> {
    static INSERT: LazyLock<String> = LazyLock::new(|| insert_rows(1));
    if messages.is_empty() {
        return Ok(());
    }
    let rows = OutboxRows::of(messages.iter());
    let insert = tx.prepare_cached(&INSERT).await?;
    tx.execute(&insert, &[&rows.topics, &rows.keys, &rows.bodies])
        .await?;
    Ok(())
}

/// The statement (or the tail of one) that writes [`OutboxRows`] bound as
/// parameters `$first`, `$first + 1` and `$first + 2`, keeping their order.
pub(super) fn insert_rows(first: usize) -> String {
    format!(
        "INSERT INTO outbox (topic, routing_key, body) \
         SELECT topic, routing_key, body \
         FROM unnest(${}::smallint[], ${}::text[], ${}::bytea[]) WITH ORDINALITY \
             AS m(topic, routing_key, body, n) ORDER BY n",
        first,
        first + 1,
        first + 2
    )
}

/// Outbox messages as the three arrays [`insert_rows`] binds.
pub(super) struct OutboxRows<'a> {
    pub topics: Vec<i16>,
    pub keys: Vec<&'a str>,
    pub bodies: Vec<&'a [u8]>,
}

impl<'a> OutboxRows<'a> {
    pub fn of(messages: impl Iterator<Item = &'a OutboxMessage>) -> Self {
        let mut rows = Self {
            topics: Vec::new(),
            keys: Vec::new(),
            bodies: Vec::new(),
        };
        for message in messages {
            rows.topics.push(message.topic_code());
            rows.keys.push(message.routing_key());
            rows.bodies.push(message.body().as_ref());
        }
        rows
    }
}

/// Any constant shared by every instance: whoever holds this advisory lock
/// is the one relay, so events are published in a single order. Public so
/// that an operator (or a test) can see or hold it.
pub const RELAY_LOCK: i64 = 0x6c66_5f72_656c_6179; // "lf_relay"

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
        let (client, mut connection) = self.config.connect(self.tls.clone()).await?;
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

    /// Claims up to `limit` of the oldest unclaimed messages for `lease`. A
    /// relay that lost its lock mid-batch cannot publish rows the new relay
    /// claimed, and rows it claimed are retried once the lease lapses. The
    /// ids come as an array (an init plan) so the update finds its rows by
    /// the primary key: as `IN (subquery)` PostgreSQL joined them to a
    /// sequential scan of the whole table, dead rows and all.
    pub async fn claim_outbox(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let rows = self
            .fetch_all(
                "UPDATE outbox SET claimed_until = now() + make_interval(secs => $2) \
                 WHERE id = ANY(ARRAY( \
                     SELECT id FROM outbox \
                     WHERE claimed_until IS NULL OR claimed_until < now() \
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED \
                 )) RETURNING id, topic, routing_key, body",
                &[&limit, &lease.as_secs_f64()],
                |row| {
                    let message = OutboxMessage::from_stored(
                        row.get(1),
                        row.get(2),
                        Bytes::from(row.get::<_, Vec<u8>>(3)),
                    )?;
                    Some(ClaimedMessage {
                        id: row.get(0),
                        message,
                    })
                },
            )
            .await?;
        let mut claimed: Vec<ClaimedMessage> = rows.into_iter().flatten().collect();
        // RETURNING does not keep the subquery's order; publish oldest first.
        claimed.sort_unstable_by_key(|m| m.id);
        Ok(claimed)
    }

    pub async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(())
    }

    /// Lets other relays (and this one) claim `ids` again right away.
    pub async fn release_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.execute(
            "UPDATE outbox SET claimed_until = NULL WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
        Ok(())
    }

    /// Frees every claim: for a relay that has just taken the lock, whose
    /// predecessor died or stepped down holding claims it will never settle.
    pub async fn release_all_outbox_claims(&self) -> Result<(), StoreError> {
        self.execute(
            "UPDATE outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL",
            &[],
        )
        .await?;
        Ok(())
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
