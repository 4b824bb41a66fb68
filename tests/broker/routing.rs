//! Routing: posts reach the instances bound to their key, binding changes
//! apply in call order (many at once, repeated, interleaved), control
//! messages reach every instance.

use super::*;

#[tokio::test]
async fn posts_reach_only_instances_bound_to_their_key() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    let unbound = unique("author");

    b.bind(&key).await;
    a.publish(Topic::Posts, &unbound, b"not for b").await;
    a.publish(Topic::Posts, &key, b"\x00for b\xff").await;
    assert_eq!(b.next_post().await, &b"\x00for b\xff"[..]);

    b.unbind(&key).await;
    let marker = unique("author");
    b.bind(&marker).await;
    a.publish(Topic::Posts, &key, b"after unbind").await;
    a.publish(Topic::Posts, &marker, b"marker").await;
    assert_eq!(b.next_post().await, &b"marker"[..]);
}

#[tokio::test]
async fn binding_changes_apply_in_call_order() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let dropped = unique("author");
    let kept = unique("author");

    // Requested in this order, awaited in another: call order decides.
    let bind_dropped = b.broker.bind(&dropped);
    let bind_dropped_again = b.broker.bind(&dropped);
    let unbind_dropped = b.broker.unbind(&dropped);
    let unbind_kept = b.broker.unbind(&kept);
    let bind_kept = b.broker.bind(&kept);
    timeout(WAIT, async {
        bind_kept.await;
        unbind_kept.await;
        unbind_dropped.await;
        bind_dropped_again.await;
        bind_dropped.await;
    })
    .await
    .expect("binding changes applied in time");

    a.publish(Topic::Posts, &dropped, b"dropped").await;
    a.publish(Topic::Posts, &kept, b"kept").await;
    assert_eq!(b.next_post().await, &b"kept"[..]);
}

#[tokio::test]
async fn many_bindings_requested_at_once_all_apply_in_bounded_time() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let keys = keys(&unique("author"), MANY_KEYS);

    let started = Instant::now();
    let applied: Vec<_> = keys.iter().map(|key| b.broker.bind(key)).collect();
    timeout(MANY_KEYS_WAIT, join_all(applied))
        .await
        .expect("every bind applied in time");
    eprintln!("{MANY_KEYS} binds applied in {:?}", started.elapsed());

    // A sample of the keys, then the last one, which is the marker.
    let (last, rest) = keys.split_last().expect("keys");
    let sample: Vec<String> = rest.iter().step_by(97).cloned().collect();
    publish_keys_then(&a, &sample, last).await;
    assert_eq!(posts_until(&mut b, last).await, owned(&sample));
    // Deletes the queue and its bindings.
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_repeat_completes_only_once_the_change_it_repeats_is_applied() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let marker = unique("marker");
    b.bind(&marker).await;
    let key = unique("author");

    for bound in [true, false] {
        // A backlog on every binding channel, so that the change is applied
        // well after it is requested. Not awaited: still applied.
        let backlog = keys(&unique("backlog"), MANY_KEYS / 4);
        for other in &backlog {
            drop(b.broker.bind(other));
        }
        let change = |broker: &Broker| match bound {
            true => broker.bind(&key),
            false => broker.unbind(&key),
        };
        drop(change(&b.broker));
        // The repeat is a no-op, but completes in turn.
        timeout(MANY_KEYS_WAIT, change(&b.broker))
            .await
            .expect("the repeat completes in time");
        publish_keys_then(&a, std::slice::from_ref(&key), &marker).await;
        let expected = match bound {
            true => HashSet::from([key.clone()]),
            false => HashSet::new(),
        };
        assert_eq!(
            posts_until(&mut b, &marker).await,
            expected,
            "bound: {bound}"
        );
    }
    b.shutdown().await;
    a.shutdown().await;
}

/// What one key is asked in one round, in call order (`true`: bind):
/// bind/unbind alternating, with repeats of the state just asked for.
fn round_calls(round: usize, key: usize) -> &'static [bool] {
    match (round + key) % 4 {
        0 => &[true, false, true],
        1 => &[false, true, false],
        2 => &[true, true],
        _ => &[false, true, false, false],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_changes_of_a_key_end_in_the_state_of_its_last_call() {
    const TASKS: usize = 8;
    const KEYS_PER_TASK: usize = 25;
    const ROUNDS: usize = 12;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let marker = unique("marker");
    b.bind(&marker).await;
    let prefix = unique("author");

    // Each task owns its keys, so that it knows their last call; the
    // tasks' calls interleave.
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let broker = b.broker.clone();
        let keys = keys(&format!("{prefix}.{task}"), KEYS_PER_TASK);
        tasks.spawn(async move {
            let mut last = HashMap::new();
            for round in 0..ROUNDS {
                let mut this_round = Vec::new();
                for (n, key) in keys.iter().enumerate() {
                    for &bound in round_calls(round, n) {
                        let applied = match bound {
                            true => broker.bind(key),
                            false => broker.unbind(key),
                        };
                        // Dropping the others does not withdraw them.
                        if let Some((_, previous)) = last.insert(key.clone(), (bound, applied)) {
                            this_round.push(previous);
                        }
                    }
                }
                // Now and then, wait for the round's changes (all but each
                // key's last so far) to be applied.
                if round % 3 == 0 {
                    join_all(this_round).await;
                }
                tokio::task::yield_now().await;
            }
            // Only each key's last call is awaited: a repeat completes in
            // turn, after the change it repeats.
            let mut bound = Vec::new();
            for (key, (wanted, applied)) in last {
                applied.await;
                if wanted {
                    bound.push(key);
                }
            }
            (keys, bound)
        });
    }
    let results = timeout(MANY_KEYS_WAIT, tasks.join_all())
        .await
        .expect("binding changes applied in time");

    let all: Vec<String> = results.iter().flat_map(|(keys, _)| keys.clone()).collect();
    let expected = owned(results.iter().flat_map(|(_, bound)| bound));
    assert!(!expected.is_empty() && expected.len() < all.len());
    publish_keys_then(&a, &all, &marker).await;
    assert_eq!(posts_until(&mut b, &marker).await, expected);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn control_reaches_every_instance() {
    let mut a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let body = unique("follow");

    a.publish(Topic::Control, "", &body).await;
    a.expect_control(body.as_bytes()).await;
    b.expect_control(body.as_bytes()).await;
}
