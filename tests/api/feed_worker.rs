//! The feed worker applies the messages waiting for it as one batch: a post
//! deleted before its batch is applied stays out of every cached feed, and a
//! batch applied again (its instance died after the Redis work, before the
//! ack) leaves the feeds as they were.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use livefeed::broker::{Settled, Work};
use livefeed::cache::{CacheSettings, FeedEvent, Feeds, run_worker};
use livefeed::domain::{PostId, UserId};
use livefeed::metrics::Metrics;
use livefeed::store::{Store, StoreSettings};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::feed_cache::{cached_feed, cached_feed_len, prefix, redis, redis_url};
use crate::support::{TestApp, TestUser, sql, texts};

const WAIT: Duration = Duration::from_secs(10);

/// A feed worker of its own on the app's database and Redis keys, fed by
/// hand: whatever is queued before it starts is one batch.
struct Worker {
    work: mpsc::Sender<Work>,
    queue: Option<mpsc::Receiver<Work>>,
    feeds: Arc<Feeds>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Worker {
    fn new(app: &TestApp) -> Self {
        let store = Store::new(&StoreSettings {
            database_url: app.database_url.clone(),
            pool_size: 2,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(10),
        })
        .expect("store settings");
        let feeds = Feeds::new(
            store,
            &CacheSettings {
                redis_url: redis_url(),
                key_prefix: prefix(app),
                celebrity_threshold: 10_000,
                feed_depth: 2_000,
            },
        )
        .expect("cache settings");
        let (work, queue) = mpsc::channel(64);
        Self {
            work,
            queue: Some(queue),
            feeds,
            metrics: Arc::new(Metrics::default()),
            stop: CancellationToken::new(),
        }
    }

    /// Queues one `PostCreated` per post; their settlements, in order.
    async fn queue(&self, posts: &[PostId]) -> Vec<oneshot::Receiver<Settled>> {
        let created = posts.iter().map(|&post| FeedEvent::PostCreated { post });
        self.send(created).await
    }

    /// Queues `events`; their settlements, in order.
    async fn send(
        &self,
        events: impl IntoIterator<Item = FeedEvent>,
    ) -> Vec<oneshot::Receiver<Settled>> {
        let mut settled = Vec::new();
        for event in events {
            let (done, receiver) = oneshot::channel();
            let body: Bytes = event.encode();
            self.work.send(Work { body, done }).await.expect("queued");
            settled.push(receiver);
        }
        settled
    }

    /// Starts the worker on what is queued so far (once).
    fn start(&mut self) {
        let queue = self.queue.take().expect("started once");
        tokio::spawn(run_worker(
            self.feeds.clone(),
            queue,
            self.metrics.clone(),
            self.stop.clone(),
        ));
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn all_applied(settled: Vec<oneshot::Receiver<Settled>>) {
    for receiver in settled {
        let settled = tokio::time::timeout(WAIT, receiver)
            .await
            .expect("settled in time")
            .expect("settled, not handed back");
        assert_eq!(settled, Settled::Applied);
    }
}

async fn body_cached(app: &TestApp, post: PostId) -> bool {
    redis::cmd("EXISTS")
        .arg(format!("{}post:{post}", prefix(app)))
        .query_async(&mut redis().await)
        .await
        .unwrap()
}

/// A reader whose cached feed holds one post of an author ("первый"),
/// and posts of that author written behind the app's back (no outbox rows:
/// only a test's own worker hears of them).
struct Unannounced {
    reader: TestUser,
    author: UserId,
    first: String,
    posts: Vec<PostId>,
    db: tokio_postgres::Client,
}

async fn unannounced_posts(app: &TestApp, texts: &[&str]) -> Unannounced {
    let author = app.register("Автор", "Пакетный").await;
    let reader = app.register("Читатель", "Пакетный").await;
    app.follow(&reader, &author).await;
    let first = app.create_post(&author, "первый").await;
    app.feed_settles_to(&reader, "", &["первый"]).await;
    assert_eq!(cached_feed_len(app, &reader).await, 1, "cached");

    let posts: Vec<PostId> = texts.iter().map(|_| PostId::new_v7()).collect();
    let db = sql(&app.database_url).await;
    let author: Uuid = author.id.parse().unwrap();
    for (post, text) in posts.iter().zip(texts) {
        db.execute(
            "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, $3)",
            &[post.as_uuid(), &author, text],
        )
        .await
        .unwrap();
    }
    Unannounced {
        reader,
        author: UserId::from_uuid(author),
        first,
        posts,
        db,
    }
}

#[tokio::test]
async fn a_batch_skips_a_post_deleted_before_it_and_a_replay_changes_nothing() {
    let app = TestApp::spawn().await;
    // The worker hears of them in one batch, after the middle one is gone.
    let Unannounced {
        reader,
        first,
        posts,
        db,
        ..
    } = unannounced_posts(&app, &["второй", "удалённый", "третий"]).await;
    db.execute("DELETE FROM posts WHERE id = $1", &[posts[1].as_uuid()])
        .await
        .unwrap();

    let mut worker = Worker::new(&app);
    let settled = worker.queue(&posts).await;
    worker.start();
    all_applied(settled).await;
    let expected = vec![first, posts[0].to_string(), posts[2].to_string()];
    assert_eq!(cached_feed(&app, &reader).await, Some(expected.clone()));
    assert!(body_cached(&app, posts[2]).await);
    assert!(!body_cached(&app, posts[1]).await, "a deleted post's body");
    app.feed_settles_to(&reader, "", &["третий", "второй", "первый"])
        .await;

    // RabbitMQ hands the batch out again when the instance that applied it
    // died before its ack: applying it twice changes nothing.
    all_applied(worker.queue(&posts).await).await;
    assert_eq!(cached_feed(&app, &reader).await, Some(expected.clone()));
    let feed = app.feed(&reader, "").await;
    assert_eq!(texts(&feed), ["третий", "второй", "первый"]);
    assert_eq!(
        worker
            .metrics
            .feed_settled
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

/// Group commit can commit a later id first, so the relay may announce
/// posts out of id order: the cached feed holds them in id order all the
/// same, a replay adds nothing, and a delete takes out its id alone.
#[tokio::test]
async fn posts_announced_out_of_order_are_cached_in_order_and_a_delete_takes_out_only_its_id() {
    let app = TestApp::spawn().await;
    let Unannounced {
        reader,
        author,
        first,
        posts,
        db,
    } = unannounced_posts(&app, &["a", "b", "c", "d"]).await;
    let mut worker = Worker::new(&app);
    worker.start();
    // One batch each: a batch is applied in id order.
    for post in [posts[2], posts[0], posts[3], posts[1], posts[0]] {
        all_applied(worker.queue(&[post]).await).await;
    }
    let mut expected = vec![first];
    expected.extend(posts.iter().map(PostId::to_string));
    assert_eq!(cached_feed(&app, &reader).await, Some(expected.clone()));
    app.feed_settles_to(&reader, "", &["d", "c", "b", "a", "первый"])
        .await;

    // A removal overwrites the id's slot with a neighbour: a middle id, then
    // the one now in two slots, then the oldest (its three slots take the
    // newer neighbour).
    let first_id: PostId = expected[0].parse().unwrap();
    for (gone, left) in [
        (posts[1], vec!["d", "c", "a", "первый"]),
        (posts[0], vec!["d", "c", "первый"]),
        (first_id, vec!["d", "c"]),
    ] {
        db.execute("DELETE FROM posts WHERE id = $1", &[gone.as_uuid()])
            .await
            .unwrap();
        let deleted = FeedEvent::PostDeleted { post: gone, author };
        all_applied(worker.send([deleted]).await).await;
        expected.retain(|id| *id != gone.to_string());
        assert_eq!(cached_feed(&app, &reader).await, Some(expected.clone()));
        app.feed_settles_to(&reader, "", &left).await;
    }
}
