//! Routes this instance's broker deliveries to its sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::burst::{self, Burst};
use super::catch_up::{self, CatchUps};
use super::codec::{FollowChange, PostFrame, decode_follow, decode_post};
use super::recovery::{Delivered, Horizon, recover};
use super::registry::Registry;
use super::socket::{Push, Socket};
use super::time_written;
use super::uring;
use crate::broker::{Incoming, Topic};
use crate::metrics::Metrics;
use crate::store::Store;

/// From this many subscribers on, a post is written by every worker thread
/// at once: below it, handing out the work costs more than it saves.
const PARALLEL_FROM: usize = 1024;
/// Pieces per worker a large subscriber list is cut into, so that a worker
/// the machine slows down does not hold the post up alone.
const PIECES_PER_WORKER: usize = 2;

pub(super) async fn run(
    mut incoming: mpsc::Receiver<Incoming>,
    registry: Arc<Registry>,
    catch_ups: Arc<CatchUps>,
    horizon: Arc<Horizon>,
    store: Store,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut delivered = Delivered::default();
    // What was taken off the queue while gathering a burst, but is not
    // part of it.
    let mut next = None;
    loop {
        let item = match next.take() {
            Some(item) => item,
            None => match incoming.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        let delivery = match item {
            Incoming::Message(delivery) => delivery,
            Incoming::Gap(gap) => {
                recover(
                    gap,
                    &registry,
                    &catch_ups,
                    &store,
                    &metrics,
                    &mut delivered,
                    &stop,
                )
                .await;
                continue;
            }
        };
        match delivery.topic {
            Topic::Posts => match decode_post(delivery.body) {
                Ok(frame) => {
                    delivered.forget_old(Instant::now());
                    let author = frame.author;
                    let mut live = Live {
                        frames: Vec::new(),
                        delivered: &mut delivered,
                        horizon: &horizon,
                        metrics: &metrics,
                    };
                    live.take(frame);
                    // The author's posts already waiting behind it go out
                    // with it, up to a burst's worth.
                    while live.frames.len() < burst::MOST_POSTS {
                        match incoming.try_recv() {
                            Ok(Incoming::Message(delivery)) if delivery.topic == Topic::Posts => {
                                match decode_post(delivery.body.clone()) {
                                    Ok(frame) if frame.author == author => live.take(frame),
                                    _ => {
                                        next = Some(Incoming::Message(delivery));
                                        break;
                                    }
                                }
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Some(joined) = live.frames.len().checked_sub(1) {
                        metrics
                            .joined_posts
                            .fetch_add(joined as u64, Ordering::Relaxed);
                        broadcast(&registry, &metrics, Arc::new(Burst::new(live.frames))).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "dropping an undecodable post event"),
            },
            Topic::Control => match decode_follow(&delivery.body) {
                Ok(change) => apply_follow_change(&registry, &catch_ups, &change),
                Err(e) => tracing::warn!(error = %e, "dropping an undecodable follow change"),
            },
            // Work messages go to the feed worker, never here.
            Topic::Materialize => {}
        }
    }
}

/// The live posts taken off the queue for one burst.
struct Live<'a> {
    frames: Vec<Arc<PostFrame>>,
    delivered: &'a mut Delivered,
    horizon: &'a Horizon,
    metrics: &'a Metrics,
}

impl Live<'_> {
    fn take(&mut self, frame: PostFrame) {
        self.metrics.broker_posts.fetch_add(1, Ordering::Relaxed);
        self.horizon.advance(SystemTime::now());
        // A post recovered after a gap, or published twice by a relay that
        // failed over, goes out once.
        if self.delivered.first_time(frame.post, Instant::now()) {
            self.frames.push(Arc::new(frame));
        }
    }
}

/// Writes `burst` to every local subscriber of its author. A long list is
/// cut into pieces written by all worker threads at once; the next burst
/// waits until every piece is done, so each socket gets posts in order.
async fn broadcast(registry: &Registry, metrics: &Arc<Metrics>, burst: Arc<Burst>) {
    let Some(subscribers) = registry.subscribers(burst.author()) else {
        metrics
            .unwanted_posts
            .fetch_add(burst.frames().len() as u64, Ordering::Relaxed);
        return;
    };
    let sockets = subscribers.to_vec();
    drop(subscribers);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    if workers < 2 || sockets.len() < PARALLEL_FROM {
        deliver(&sockets, &burst, metrics);
        return;
    }
    let sockets: Arc<[Arc<Socket>]> = sockets.into();
    let piece = sockets.len().div_ceil(workers * PIECES_PER_WORKER);
    let mut pieces = JoinSet::new();
    // All pieces are spawned, none run here: tokio keeps the last task a
    // worker spawns in a slot no other worker can steal from, and the
    // hub's own worker would write its piece before yielding to it.
    for start in (0..sockets.len()).step_by(piece) {
        let (sockets, burst, metrics) = (sockets.clone(), burst.clone(), metrics.clone());
        pieces.spawn(async move {
            let end = (start + piece).min(sockets.len());
            deliver(&sockets[start..end], &burst, &metrics);
        });
    }
    while pieces.join_next().await.is_some() {}
}

/// Writes `frame` to every local subscriber of its author, on this thread.
pub fn fan_out(registry: &Registry, metrics: &Metrics, frame: Arc<PostFrame>) {
    // With bucket routing, posts of authors nobody here follows arrive too.
    let Some(subscribers) = registry.subscribers(frame.author) else {
        metrics.unwanted_posts.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let sockets = subscribers.to_vec();
    deliver(&sockets, &Burst::one(frame), metrics);
}

fn deliver(sockets: &[Arc<Socket>], burst: &Burst, metrics: &Metrics) {
    // Frames written, per post of the burst.
    let mut written = vec![0; burst.frames().len()];
    let mut queued = 0;
    uring::deliver(sockets, burst, |place, push| match push {
        Push::Written => written[place] += 1,
        Push::Queued => queued += 1,
        Push::Overflowed => {
            metrics.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
        }
        Push::Dropped => {}
    });
    let written_total: u64 = written.iter().sum();
    metrics
        .deliveries
        .fetch_add(written_total + queued, Ordering::Relaxed);
    if queued > 0 {
        metrics
            .queued_deliveries
            .fetch_add(queued, Ordering::Relaxed);
    }
    // One clock read per post for the piece: its frames were written
    // within it.
    for (frame, &frames) in burst.frames().iter().zip(&written) {
        if frames > 0 {
            time_written(metrics, frame.published_at_micros, frames);
        }
    }
}

fn apply_follow_change(registry: &Arc<Registry>, catch_ups: &Arc<CatchUps>, change: &FollowChange) {
    for socket in registry.sockets_of(change.follower) {
        if let Some(binding) =
            registry.change(&socket, change.author, change.follows, change.at_unix_ms)
        {
            catch_up::after_binding(binding, registry, catch_ups, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;
    use crate::broker::{Broker, BrokerKind, Delivery, MemoryBus};
    use crate::domain::{Post, PostId, UserId};
    use crate::realtime::codec::encode_post;
    use crate::realtime::registry::Start;
    use crate::store::CommitMark;
    use crate::store::StoreSettings;

    fn post(author: UserId, text: &str) -> Post {
        Post {
            id: PostId::new_v7(),
            text: text.into(),
            author_user_id: author,
        }
    }

    fn message(post: &Post) -> Incoming {
        Incoming::Message(Delivery {
            topic: Topic::Posts,
            body: encode_post(post, 1),
        })
    }

    /// A subscribed socket of a follower of `author`, and its client end.
    async fn follower(
        registry: &Registry,
        listener: &std::net::TcpListener,
        author: UserId,
    ) -> (Arc<Socket>, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let server = tokio::net::TcpStream::from_std(server).unwrap();
        let socket = Arc::new(Socket::new(UserId::new_v7(), 64, server));
        let start = Start::Mark(Arc::new(CommitMark::new(0, 1, 1, &[])));
        let subscribed = registry.subscribe(&socket, &[author], Some(&start), registry.clock());
        for binding in subscribed.bindings {
            registry.bound(binding).await.unwrap();
        }
        socket.release();
        // Without a session here to write what a socket queues, a post must
        // not find tokio unsure yet whether the fresh socket is writable.
        socket.stream().writable().await.unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (socket, client)
    }

    fn read(client: &mut std::net::TcpStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        client.read_exact(&mut bytes).expect("the frames arrive");
        bytes
    }

    /// Posts already waiting when the hub gets to them: one author's run
    /// goes out together, another author's post between them keeps its
    /// place, a post seen twice goes out once, and nothing is left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_posts_go_out_in_order_and_once() {
        let (sink, _incoming) = mpsc::channel(16);
        let (work, _work) = mpsc::channel(16);
        let broker = Broker::start(BrokerKind::Memory(MemoryBus::new()), sink, work);
        let registry = Arc::new(Registry::new(broker, "bucket:4".parse().unwrap()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (UserId::new_v7(), UserId::new_v7());
        let (_a_socket, mut a_client) = follower(&registry, &listener, a).await;
        let (_b_socket, mut b_client) = follower(&registry, &listener, b).await;

        let [a1, a2, a3, a4] = ["a1", "a2", "a3", "a4"].map(|text| post(a, text));
        let b1 = post(b, "b1");
        let waiting = [&a1, &a2, &a1, &b1, &a3, &a4].map(message);
        let (queue, incoming) = mpsc::channel(waiting.len());
        for item in waiting {
            queue.try_send(item).unwrap();
        }
        drop(queue);
        let store = Store::new(&StoreSettings {
            database_url: "postgres://nobody@127.0.0.1:1/none".into(),
            pool_size: 1,
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
        })
        .unwrap();
        let metrics = Arc::new(Metrics::default());
        let hub = run(
            incoming,
            registry,
            Arc::default(),
            Arc::new(Horizon::new(SystemTime::now())),
            store,
            metrics.clone(),
            CancellationToken::new(),
        );
        tokio::time::timeout(Duration::from_secs(10), hub)
            .await
            .expect("the hub ends with its queue");

        let wire = |post: &Post| decode_post(encode_post(post, 1)).unwrap().wire;
        let a_posts: Vec<u8> = [&a1, &a2, &a3, &a4].into_iter().flat_map(wire).collect();
        assert_eq!(read(&mut a_client, a_posts.len()), a_posts);
        assert_eq!(read(&mut b_client, wire(&b1).len()), wire(&b1));
        assert_eq!(metrics.broker_posts.load(Ordering::Relaxed), 6);
        assert_eq!(metrics.deliveries.load(Ordering::Relaxed), 5);
        // a2 joined a1, and a4 joined a3; b1 stood between a2 and a3.
        assert_eq!(metrics.joined_posts.load(Ordering::Relaxed), 2);
        // Nothing more: the duplicate did not follow.
        a_client.set_nonblocking(true).unwrap();
        let mut more = [0; 1];
        assert!(a_client.read(&mut more).is_err(), "no further bytes");
    }
}
