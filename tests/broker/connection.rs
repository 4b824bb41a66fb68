//! The connection: publishing while RabbitMQ is unreachable, several URLs,
//! cuts and reconnects, gaps ahead of a new session's messages, queues
//! deleted or starved, bindings restored, shutdown; and concurrent publishes
//! each confirmed once.

use super::*;

#[tokio::test]
async fn publish_fails_promptly_while_rabbitmq_is_unreachable() {
    let broker = Instance::start(&url_via(dead_address())).broker;

    // Spread over connection attempts and backoff; none waits for the
    // confirm timeout.
    for _ in 0..3 {
        let published = timeout(PROMPTLY, broker.publish(Topic::Posts, "k", Bytes::new()))
            .await
            .expect("publish returns promptly");
        assert!(
            matches!(published, Err(BrokerError::Unavailable(_))),
            "{published:?}"
        );
        sleep(Duration::from_millis(150)).await;
    }
    bind_while_down_then_shut_down(&broker, Topic::Posts).await;
}

#[tokio::test]
async fn with_several_urls_a_dead_node_is_skipped() {
    let urls = format!(
        "{}, {}",
        url_via(dead_address()),
        url_via(rabbitmq_address().await)
    );
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&urls).await;
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"to b").await;
    assert_eq!(b.next_post().await, &b"to b"[..]);
    b.publish(Topic::Posts, &key, b"from b").await;
    assert_eq!(b.next_post().await, &b"from b"[..]);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn an_invalid_url_leaves_the_broker_unavailable() {
    let broker = Instance::start("amqp://guest:guest@127.0.0.1:notaport/%2f").broker;

    let published = broker.publish(Topic::Control, "", Bytes::new()).await;
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    bind_while_down_then_shut_down(&broker, Topic::Control).await;
}

/// A broker that never connected: a binding change completes once
/// recorded, shutdown ends it in time, and publishing after that is
/// refused as closed.
async fn bind_while_down_then_shut_down(broker: &Broker, topic: Topic) {
    timeout(WAIT, broker.bind("k"))
        .await
        .expect("bind recorded in time");
    timeout(WAIT, broker.shutdown())
        .await
        .expect("shutdown in time");
    let published = broker.publish(topic, "k", Bytes::new()).await;
    assert!(
        matches!(published, Err(BrokerError::Closed)),
        "{published:?}"
    );
}

#[tokio::test]
async fn reconnects_after_the_connection_is_cut() {
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&url_via(proxy.address())).await;
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"before").await;
    assert_eq!(b.next_post().await, &b"before"[..]);

    proxy.cut();
    // Probes on a key nobody binds: one that slips through before the cut
    // must not show up among b's posts.
    let probe = unique("probe");
    until("b notices the loss", || async {
        let published = b.broker.publish(Topic::Posts, &probe, Bytes::new()).await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    // The queue and its binding outlive the connection.
    a.publish(Topic::Posts, &key, b"while cut").await;
    proxy.restore().await;

    until("b reconnects", || async { b.broker.reconnects() >= 1 }).await;
    // Delivery is at least once: "before" comes again if its ack was lost
    // with the link (the hub skips such repeats).
    let mut next = b.next_post().await;
    while next == b"before"[..] {
        next = b.next_post().await;
    }
    assert_eq!(next, &b"while cut"[..]);
    a.publish(Topic::Posts, &key, b"after").await;
    assert_eq!(b.next_post().await, &b"after"[..]);
    assert_eq!(b.broker.reconnects(), 1);
}

#[tokio::test]
async fn a_gap_comes_ahead_of_every_session_s_messages() {
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let a = Instance::connected(&amqp_url()).await;
    let before_start = SystemTime::now();
    let mut b = Instance::start(&url_via(proxy.address()));
    timeout(WAIT, b.broker.connected())
        .await
        .expect("connected in time");
    assert!(b.broker.is_connected());
    // Nothing is in the sink before it: not even other tests' `Control`.
    let Incoming::Gap(first) = b.next_incoming().await else {
        panic!("the first thing in the sink is not a gap");
    };
    assert!(before_start <= first.since && first.since <= SystemTime::now());
    assert_eq!(b.broker.gaps(), 1);
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"before").await;
    assert_eq!(b.next_post().await, &b"before"[..]);

    let cut = SystemTime::now();
    proxy.cut();
    let probe = unique("probe");
    until("b notices the loss", || async {
        let published = b.broker.publish(Topic::Posts, &probe, Bytes::new()).await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    assert!(!b.broker.is_connected());
    a.publish(Topic::Posts, &key, b"while cut").await;
    proxy.restore().await;
    timeout(WAIT, b.broker.connected())
        .await
        .expect("reconnected in time");

    let second = b.next_gap(&[b"while cut"]).await;
    assert!(second.since <= cut, "{second:?} is later than the cut");
    assert!(first.since <= second.since);
    assert_eq!(b.next_post().await, &b"while cut"[..]);
    assert_eq!(b.broker.gaps(), 2);
    assert_eq!(b.broker.reconnects(), 1);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn an_instance_queue_deleted_from_outside_is_declared_anew_after_a_gap() {
    let raw = raw_connection().await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"before").await;
    assert_eq!(b.next_post().await, &b"before"[..]);
    assert_eq!(b.gaps.len(), 1);

    // As when the queue's node dies while b is connected to another one.
    let channel = timeout(WAIT, raw.open_channel(None))
        .await
        .expect("raw channel in time")
        .expect("raw channel opens");
    let deleted = SystemTime::now();
    timeout(
        WAIT,
        channel.queue_delete(QueueDeleteArguments::new(&b.queue)),
    )
    .await
    .expect("delete answered in time")
    .expect("the queue is deleted");

    let gap = b.next_gap(&[]).await;
    assert!(gap.since <= deleted, "{gap:?} is later than the deletion");
    assert!(queue_exists(&raw, &b.queue).await);
    // Its bindings were restored before the gap.
    a.publish(Topic::Posts, &key, b"after").await;
    assert_eq!(b.next_post().await, &b"after"[..]);
    assert_eq!(b.broker.reconnects(), 1);
    assert_eq!(b.broker.gaps(), 2);
    b.shutdown().await;
    a.shutdown().await;
}

/// On the single-threaded test runtime, blocking the thread starves every
/// task of the broker, as a frozen process would.
#[tokio::test]
async fn a_session_that_was_starved_verifies_its_queue_and_carries_on() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;

    // At least 4 s past a tick's schedule (beyond the 3 s after which a
    // late tick checks the queue), well within the heartbeat timeout.
    std::thread::sleep(Duration::from_secs(5));
    a.publish(Topic::Posts, &key, b"after the pause").await;
    assert_eq!(b.next_post().await, &b"after the pause"[..]);
    // No event tells that the check is done: a second tick is due by
    // then, behind it.
    sleep(Duration::from_millis(1_500)).await;
    a.publish(Topic::Posts, &key, b"later").await;
    assert_eq!(b.next_post().await, &b"later"[..]);
    assert_eq!(b.broker.reconnects(), 0);
    assert_eq!(b.broker.gaps(), 1);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn bindings_changed_while_cut_are_restored_on_reconnect() {
    const KEYS: usize = 300;
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&url_via(proxy.address())).await;
    let marker = unique("marker");
    b.bind(&marker).await;
    let prefix = unique("author");
    let before = keys(&format!("{prefix}.before"), KEYS);
    let applied: Vec<_> = before.iter().map(|key| b.broker.bind(key)).collect();
    timeout(WAIT, join_all(applied))
        .await
        .expect("binds applied in time");

    // Cut while these are still on their way: those the lost session had
    // not applied complete as recorded, and the next session applies them.
    let in_flight = keys(&format!("{prefix}.in-flight"), MANY_KEYS / 2);
    let applied: Vec<_> = in_flight.iter().map(|key| b.broker.bind(key)).collect();
    proxy.cut();
    timeout(WAIT, join_all(applied))
        .await
        .expect("binds applied or recorded in time");
    let probe = unique("probe");
    until("b notices the loss", || async {
        let published = b.broker.publish(Topic::Posts, &probe, Bytes::new()).await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    // Recorded while cut: the queue keeps its old bindings meanwhile.
    let (dropped, kept) = before.split_at(KEYS / 2);
    let added = keys(&format!("{prefix}.added"), KEYS);
    for key in dropped {
        b.unbind(key).await;
    }
    for key in &added {
        b.bind(key).await;
    }
    proxy.restore().await;
    until("b reconnects", || async { b.broker.reconnects() >= 1 }).await;

    // Bindings are restored before the reconnect counts.
    let all: Vec<String> = before
        .iter()
        .chain(&added)
        .chain(&in_flight)
        .cloned()
        .collect();
    publish_keys_then(&a, &all, &marker).await;
    let expected = owned(kept.iter().chain(&added).chain(&in_flight));
    assert_eq!(posts_until(&mut b, &marker).await, expected);
    assert_eq!(b.broker.reconnects(), 1);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn shutdown_with_binding_changes_on_their_way_completes_them() {
    let raw = raw_connection().await;
    let b = Instance::connected(&amqp_url()).await;
    let keys = keys(&unique("author"), MANY_KEYS);
    let mut applied: Vec<_> = keys.iter().map(|key| b.broker.bind(key)).collect();
    // Once the first change is applied the lanes are going: shut down with
    // requests in hand and queued.
    timeout(WAIT, applied.remove(0))
        .await
        .expect("the first change is applied");

    timeout(WAIT, b.broker.shutdown())
        .await
        .expect("shutdown in time");
    // Applied, or dropped with the session: either way complete.
    timeout(WAIT, join_all(applied))
        .await
        .expect("every change completes");
    assert!(!queue_exists(&raw, &b.queue).await);
}

#[tokio::test]
async fn shutdown_deletes_the_queue_and_stops_the_broker() {
    let raw = raw_connection().await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;
    assert!(queue_exists(&raw, &b.queue).await);

    timeout(WAIT, b.broker.shutdown())
        .await
        .expect("shutdown in time");

    assert!(!queue_exists(&raw, &b.queue).await);
    let published = b.broker.publish(Topic::Posts, &key, Bytes::new()).await;
    assert!(
        matches!(published, Err(BrokerError::Closed)),
        "{published:?}"
    );
    a.publish(Topic::Posts, &key, b"too late").await;
    // The broker lets go of the sink; what is left in it was delivered
    // before the shutdown (other tests' `Control` messages).
    timeout(WAIT, async {
        while let Some(incoming) = b.deliveries.recv().await {
            if let Incoming::Message(delivery) = incoming {
                assert_ne!(delivery.body, &b"too late"[..]);
            }
        }
    })
    .await
    .expect("sink released in time");
    timeout(WAIT, raw.close())
        .await
        .expect("close in time")
        .expect("raw connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_each_confirmed_and_delivered_once() {
    const TASKS: usize = 50;
    const PER_TASK: usize = 40;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;

    let mut publishers = JoinSet::new();
    for task in 0..TASKS {
        let (broker, key) = (a.broker.clone(), key.clone());
        publishers.spawn(async move {
            for message in 0..PER_TASK {
                let body = Bytes::from(format!("{task}:{message}"));
                broker.publish(Topic::Posts, &key, body).await?;
            }
            Ok::<_, BrokerError>(())
        });
    }
    let received = timeout(Duration::from_secs(60), async {
        let mut received = HashSet::new();
        while received.len() < TASKS * PER_TASK {
            let body = b.next_post().await;
            assert!(received.insert(body.clone()), "delivered twice: {body:?}");
        }
        received
    })
    .await
    .expect("every message delivered in time");
    let expected: HashSet<Bytes> = (0..TASKS)
        .flat_map(|task| (0..PER_TASK).map(move |message| Bytes::from(format!("{task}:{message}"))))
        .collect();
    assert_eq!(received, expected);
    let published = timeout(WAIT, publishers.join_all())
        .await
        .expect("publishers end in time");
    for result in published {
        result.expect("publish confirmed");
    }

    // Nothing more is queued behind them.
    a.publish(Topic::Posts, &key, b"end").await;
    assert_eq!(b.next_post().await, &b"end"[..]);
}
