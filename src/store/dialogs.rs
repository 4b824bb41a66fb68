use uuid::Uuid;

use super::{Once, Outcome, Store, StoreError, missing_user};
use crate::domain::{DialogMessage, MessageText, UserId};

/// The most messages `/dialog/{user_id}/list` answers: the newest ones.
const DIALOG_LIMIT: i64 = 1000;

impl Store {
    /// Stores the message (and its idempotency key, if any).
    pub async fn send_message(
        &self,
        from: UserId,
        to: UserId,
        text: &MessageText,
        once: Option<&Once<'_>>,
    ) -> Result<Outcome, StoreError> {
        self.write_once(
            "INSERT INTO dialog_messages (id, sender_id, recipient_id, text) VALUES ($1, $2, $3, $4)",
            &[
                &Uuid::now_v7(),
                from.as_uuid(),
                to.as_uuid(),
                &text.as_str(),
            ],
            &[],
            once,
        )
        .await
        .map_err(missing_user)
    }

    /// The conversation between `me` and `other`, oldest message first.
    pub async fn dialog(
        &self,
        me: UserId,
        other: UserId,
    ) -> Result<Vec<DialogMessage>, StoreError> {
        let messages = self
            .fetch_all(
                "SELECT sender_id, recipient_id, text FROM ( \
                     SELECT id, sender_id, recipient_id, text FROM dialog_messages \
                     WHERE LEAST(sender_id, recipient_id) = LEAST($1::uuid, $2::uuid) \
                       AND GREATEST(sender_id, recipient_id) = GREATEST($1::uuid, $2::uuid) \
                     ORDER BY id DESC LIMIT $3 \
                 ) newest ORDER BY id",
                &[me.as_uuid(), other.as_uuid(), &DIALOG_LIMIT],
                |row| DialogMessage {
                    from: UserId::from_uuid(row.get(0)),
                    to: UserId::from_uuid(row.get(1)),
                    text: row.get(2),
                },
            )
            .await?;
        if messages.is_empty() {
            self.require_user(other).await?;
        }
        Ok(messages)
    }
}
