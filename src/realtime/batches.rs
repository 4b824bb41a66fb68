//! A queue that one task of the instance reads in batches: whatever queued
//! up while the reader was busy is taken together. Knows nothing of what
//! the batches are for.

use std::sync::Mutex;

use tokio::sync::mpsc;

pub(super) struct Batched<T> {
    sender: mpsc::UnboundedSender<T>,
    /// Taken by the reader when it starts.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<T>>>,
}

impl<T> Default for Batched<T> {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl<T> Batched<T> {
    /// Queues `item`; false when the reader is gone.
    pub(super) fn push(&self, item: T) -> bool {
        self.sender.send(item).is_ok()
    }

    /// The reading end, for the one reader; `None` once taken.
    pub(super) fn reader(&self) -> Option<Reader<T>> {
        self.receiver
            .lock()
            .expect("batched queue lock")
            .take()
            .map(Reader)
    }
}

pub(super) struct Reader<T>(mpsc::UnboundedReceiver<T>);

impl<T> Reader<T> {
    /// Waits for an item, then adds what else is queued while the batch
    /// weighs less than `limit`. `None` once the queue is dropped.
    pub(super) async fn next_batch(
        &mut self,
        weight: impl Fn(&T) -> usize,
        limit: usize,
    ) -> Option<Vec<T>> {
        let first = self.0.recv().await?;
        let mut total = weight(&first);
        let mut batch = vec![first];
        while total < limit {
            let Ok(item) = self.0.try_recv() else { break };
            total += weight(&item);
            batch.push(item);
        }
        Some(batch)
    }

    /// Everything queued right now, without waiting.
    pub(super) fn queued(&mut self) -> Vec<T> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_queued_up_until_it_weighs_the_limit() {
        let queue = Batched::default();
        let mut reader = queue.reader().expect("the first reader gets it");
        assert!(queue.reader().is_none(), "one reader");
        for n in [3, 3, 3, 1] {
            assert!(queue.push(n));
        }
        let weight = |n: &usize| *n;
        assert_eq!(reader.next_batch(weight, 5).await, Some(vec![3, 3]));
        assert_eq!(reader.next_batch(weight, 5).await, Some(vec![3, 1]));
        assert_eq!(reader.queued(), Vec::<usize>::new());
        for n in [7, 8] {
            assert!(queue.push(n));
        }
        assert_eq!(reader.queued(), vec![7, 8], "whatever its weight");
        drop(queue);
        assert_eq!(reader.next_batch(weight, 5).await, None);
    }
}
