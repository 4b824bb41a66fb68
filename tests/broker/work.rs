//! The work queue (`Materialize`): one active consumer, in order, fail-over,
//! work handed back or cut off redelivered, queue types.

use super::*;

/// The first work either instance gets, and which of them got it.
async fn first_work(first: &mut Instance, second: &mut Instance) -> (Work, bool) {
    timeout(WAIT, async {
        tokio::select! {
            Some(work) = first.work().recv() => (work, true),
            Some(work) = second.work().recv() => (work, false),
        }
    })
    .await
    .expect("work in time")
}

#[tokio::test]
async fn work_goes_in_order_to_one_active_consumer_then_fails_over() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut first = Instance::worker(vhost.url()).await;
    let mut second = Instance::worker(vhost.url()).await;

    // More than the work sink and the prefetch hold: backpressure, in order.
    let before: Vec<String> = (0..40).map(|n| format!("before {n}")).collect();
    for body in &before {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let (work, first_is_active) = first_work(&mut first, &mut second).await;
    let (mut active, mut standby) = match first_is_active {
        true => (first, second),
        false => (second, first),
    };
    assert_eq!(work.body, before[0].as_bytes());
    work.done
        .send(Settled::Applied)
        .expect("the broker waits for done");
    let (last, before) = before.split_last().expect("work");
    for body in &before[1..] {
        active.do_work(body).await;
    }
    let last_work = active.next_work().await;
    assert_eq!(last_work.body, last.as_bytes());

    // Done while the instance shuts down: still acked, not given back.
    let probe = unique("probe");
    tokio::join!(active.shutdown(), async {
        until("the shutdown starts", || async {
            let published = active.broker.publish(Topic::Posts, &probe, Bytes::new());
            matches!(published.await, Err(BrokerError::Closed))
        })
        .await;
        let done = last_work.done.send(Settled::Applied);
        done.expect("shutdown waits for the work handed out");
    });
    active.expect_work_released().await;
    let after: Vec<String> = (0..10).map(|n| format!("after {n}")).collect();
    for body in &after {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    // First comes the first of these: the standby got none of the others.
    for body in &after {
        standby.do_work(body).await;
    }

    standby.shutdown().await;
    standby.expect_work_released().await;
    // Everything was acked: a shutdown gives back whatever was not.
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn work_handed_back_is_redelivered_and_acked_once_done() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut first = Instance::worker(vhost.url()).await;
    let mut second = Instance::worker(vhost.url()).await;

    for body in ["one", "two", "three"] {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let mut seen = Vec::new();
    let mut done = HashSet::new();
    while done.len() < 3 {
        let (work, _) = first_work(&mut first, &mut second).await;
        let body = String::from_utf8(work.body.to_vec()).expect("UTF-8");
        seen.push(body.clone());
        if body == "two" && seen.len() == 2 {
            // Handed back: dropping `done` requeues it.
            drop(work.done);
        } else {
            work.done
                .send(Settled::Applied)
                .expect("the broker waits for done");
            assert!(done.insert(body), "done twice: {seen:?}");
        }
    }
    // "three" was on its way before "two" went back to the queue.
    assert_eq!(seen, ["one", "two", "three", "two"]);

    first.shutdown().await;
    second.shutdown().await;
    first.expect_work_released().await;
    second.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn work_not_done_before_a_connection_cut_is_redelivered() {
    // More than the broker prefetches: the rest waits in the queue, and an
    // ack that reaches RabbitMQ lets one more out.
    const WORK: usize = 50;
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut worker = Instance::worker(&vhost_via(vhost.url(), proxy.address())).await;
    let bodies: Vec<String> = (0..WORK).map(|n| format!("work {n}")).collect();
    for body in &bodies {
        publisher.publish(Topic::Materialize, "", body).await;
    }

    let waiting = ready_work(&raw).await;
    worker.do_work(&bodies[0]).await;
    until("the ack reaches RabbitMQ", || async {
        ready_work(&raw).await < waiting
    })
    .await;
    // Handed out, not done.
    let one = worker.next_work().await;
    let two = worker.next_work().await;
    assert_eq!(
        (&one.body[..], &two.body[..]),
        (bodies[1].as_bytes(), bodies[2].as_bytes())
    );

    proxy.cut();
    let probe = unique("probe");
    until("the worker notices the loss", || async {
        let published = worker
            .broker
            .publish(Topic::Posts, &probe, Bytes::new())
            .await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    publisher
        .publish(Topic::Materialize, "", "after the cut")
        .await;
    // RabbitMQ took back what the lost connection held.
    until("all unacked work is back in the queue", || async {
        ready_work(&raw).await == WORK as u32
    })
    .await;
    proxy.restore().await;
    until("the worker reconnects", || async {
        worker.broker.reconnects() >= 1
    })
    .await;

    // Done too late. The new channel numbers its deliveries from 1 again:
    // acking these tags there would ack "work 2" and "work 3" unapplied.
    let _ = two.done.send(Settled::Applied);
    let _ = one.done.send(Settled::Applied);
    let mut expected: Vec<String> = bodies[1..].to_vec();
    expected.push("after the cut".into());
    let mut remaining = expected.clone();
    let mut applied = Vec::new();
    let mut handed_back = false;
    while !remaining.is_empty() {
        let work = worker.next_work().await;
        // Handed out by the lost session and left in the sink: nobody
        // waits for it any more, and it comes again.
        if work.done.is_closed() {
            continue;
        }
        let body = String::from_utf8(work.body.to_vec()).expect("UTF-8");
        // Handed back once more, on the new channel: requeued, not acked.
        if body == bodies[2] && !handed_back {
            handed_back = true;
            drop(work.done);
            continue;
        }
        work.done
            .send(Settled::Applied)
            .expect("the broker waits for done");
        let position = remaining
            .iter()
            .position(|left| *left == body)
            .unwrap_or_else(|| panic!("unexpected or repeated work: {body}"));
        remaining.remove(position);
        applied.push(body);
    }
    // In order, but for the one handed back, which came again later.
    let without = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|body| **body != bodies[2])
            .cloned()
            .collect()
    };
    assert_eq!(without(&applied), without(&expected));
    assert_eq!(worker.broker.reconnects(), 1);

    worker.shutdown().await;
    worker.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn materialize_is_confirmed_persistent_and_unavailable_without_rabbitmq() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    // Declares the work queue, and takes no work.
    let publisher = Instance::connected(vhost.url()).await;

    for n in 0..3 {
        publisher
            .publish(Topic::Materialize, "ignored", format!("work {n}"))
            .await;
    }
    // Confirmed means queued.
    assert_eq!(ready_work(&raw).await, 3);
    let channel = timeout(WAIT, raw.open_channel(None))
        .await
        .expect("raw channel in time")
        .expect("raw channel opens");
    // Declared as specified: a different declaration would close the channel.
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type".try_into().unwrap(), "quorum".into());
    arguments.insert(
        "x-single-active-consumer".try_into().unwrap(),
        FieldValue::t(true),
    );
    arguments.insert("x-delivery-limit".try_into().unwrap(), FieldValue::I(20));
    arguments.insert("x-dead-letter-exchange".try_into().unwrap(), "".into());
    arguments.insert(
        "x-dead-letter-routing-key".try_into().unwrap(),
        "feed.materialize.dead".into(),
    );
    let declare = QueueDeclareArguments::durable_client_named(WORK_QUEUE)
        .arguments(arguments)
        .finish();
    timeout(WAIT, channel.queue_declare(declare))
        .await
        .expect("declare answered in time")
        .expect(
            "the work queue is a durable quorum queue with a single active consumer, \
             dead-lettering to feed.materialize.dead",
        );
    // basic.get is refused on a quorum queue with a single active consumer.
    let consume = BasicConsumeArguments::new(WORK_QUEUE, "")
        .manual_ack(false)
        .finish();
    let (_, mut messages) = timeout(WAIT, channel.basic_consume_rx(consume))
        .await
        .expect("consume answered in time")
        .expect("consume succeeds");
    let message = timeout(WAIT, messages.recv())
        .await
        .expect("a message in time")
        .expect("a message");
    let (Some(properties), Some(body)) = (message.basic_properties, message.content) else {
        panic!("a message with properties and a body");
    };
    assert_eq!(body, b"work 0");
    assert_eq!(properties.delivery_mode(), Some(2), "persistent");

    // Without its queue, work is refused rather than dropped.
    let delete = QueueDeleteArguments::new(WORK_QUEUE);
    timeout(WAIT, channel.queue_delete(delete))
        .await
        .expect("delete answered in time")
        .expect("the work queue is deleted");
    let published = timeout(
        WAIT,
        publisher
            .broker
            .publish(Topic::Materialize, "", Bytes::from_static(b"lost")),
    )
    .await
    .expect("publish returns in time");
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    // The return did not break the publish channel.
    publisher.publish(Topic::Posts, &unique("probe"), b"").await;
    assert_eq!(publisher.broker.reconnects(), 0);
    publisher.shutdown().await;

    let unreachable = Instance::start_with(&vhost_via(vhost.url(), dead_address()), true);
    let published = timeout(
        PROMPTLY,
        unreachable
            .broker
            .publish(Topic::Materialize, "", Bytes::from_static(b"nowhere")),
    )
    .await
    .expect("publish returns promptly");
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    unreachable.shutdown().await;
}

/// `rabbitmqctl list_queues` of `vhost`: each queue's type and whether it
/// is durable, by name.
async fn queue_types(vhost: &Vhost) -> HashMap<String, Vec<String>> {
    Rabbitmqctl::local()
        .run(&[
            "list_queues",
            "-p",
            vhost.name(),
            "--no-table-headers",
            "name",
            "type",
            "durable",
        ])
        .await
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, rest)| {
            (
                name.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_work_queue_is_quorum_and_instance_queues_classic_not_durable() {
    let vhost = Vhost::create().await;
    let instance = Instance::connected(vhost.url()).await;
    let types = queue_types(&vhost).await;
    assert_eq!(types[WORK_QUEUE], ["quorum", "true"], "{types:?}");
    assert_eq!(types[&instance.queue], ["classic", "false"], "{types:?}");
    instance.shutdown().await;
}

#[tokio::test]
async fn closing_the_work_sink_settles_what_was_handed_out_and_fails_over() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut first = Instance::worker(vhost.url()).await;
    let mut second = Instance::worker(vhost.url()).await;

    for body in ["one", "two"] {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let (one, first_is_active) = first_work(&mut first, &mut second).await;
    let (mut active, mut standby) = match first_is_active {
        true => (first, second),
        false => (second, first),
    };
    assert_eq!(one.body, &b"one"[..]);

    // "two", if already in the sink, is dropped with it: handed back.
    drop(active.work.take());
    // Still awaited: the instance waits for work it handed out.
    one.done
        .send(Settled::Applied)
        .expect("the broker waits for done");
    publisher.publish(Topic::Materialize, "", "three").await;
    // A quorum queue returns work handed back behind what came since.
    let mut done = HashSet::new();
    for _ in 0..2 {
        let work = standby.next_work().await;
        work.done
            .send(Settled::Applied)
            .expect("the broker waits for done");
        done.insert(work.body);
    }
    assert_eq!(
        done,
        HashSet::from([Bytes::from("two"), Bytes::from("three")])
    );
    // The instance itself carries on.
    active.publish(Topic::Posts, &unique("probe"), b"").await;
    assert_eq!(active.broker.reconnects(), 0);

    active.shutdown().await;
    standby.shutdown().await;
    standby.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

/// The worker settles a batch at once, in any order: the applied runs are
/// acked (one multiple ack each), a dead letter inside the batch goes to
/// the dead-letter queue, and nothing comes back after the worker stops.
#[tokio::test]
async fn a_batch_settled_at_once_is_acked_around_its_dead_letter() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut worker = Instance::worker(vhost.url()).await;
    let bodies = ["one", "two", "three", "four"];
    for body in bodies {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let mut batch = Vec::new();
    for body in bodies {
        let work = worker.next_work().await;
        assert_eq!(work.body, body.as_bytes());
        batch.push(work);
    }
    let [one, two, three, four] = <[Work; 4]>::try_from(batch).expect("four");
    // "two" done ahead of "one" waits for it rather than being acked alone.
    for (work, settled) in [
        (two, Settled::Applied),
        (one, Settled::Applied),
        (three, Settled::DeadLetter),
        (four, Settled::Applied),
    ] {
        work.done.send(settled).expect("the broker waits for done");
    }
    until("the dead letter reaches its queue", || async {
        ready_in(&raw, "feed.materialize.dead").await == 1
    })
    .await;

    // Closing the channel would requeue anything left unacked.
    worker.shutdown().await;
    worker.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    assert_eq!(ready_in(&raw, "feed.materialize.dead").await, 1);
    publisher.shutdown().await;
}
