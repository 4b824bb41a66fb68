//! The socket's delivery rules against real loopback TCP peers.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::*;

async fn pair(capacity: usize) -> (Socket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (Socket::new(UserId::new_v7(), capacity, server), client)
}

fn frame(text: &str) -> Arc<PostFrame> {
    Arc::new(PostFrame {
        author: UserId::new_v7(),
        post: PostId::new_v7(),
        published_at_micros: 1,
        wire: wire::text(text.as_bytes()),
    })
}

pub(in crate::realtime) async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut bytes))
        .await
        .expect("the bytes arrive")
        .unwrap();
    bytes
}

#[tokio::test]
async fn held_posts_go_out_on_release_then_posts_are_written_directly() {
    let (socket, mut client) = pair(8).await;
    let (a, b) = (frame("a"), frame("b"));
    assert_eq!(socket.push(&a), Push::Queued, "held while subscribing");
    socket.release();
    assert_eq!(socket.flush(|_| {}), Flushed::Done);
    assert_eq!(socket.push(&b), Push::Written);
    let expected = [&a.wire[..], &b.wire[..]].concat();
    assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
}

#[tokio::test]
async fn a_socket_that_stops_reading_queues_in_order_then_overflows() {
    let (socket, mut client) = pair(4).await;
    socket.release();
    let big = "x".repeat(64 * 1024);
    let mut sent = Vec::new();
    let overflowed = loop {
        let post = frame(&big);
        match socket.push(&post) {
            Push::Written | Push::Queued => sent.push(post),
            other => break other,
        }
        assert!(sent.len() < 10_000, "the kernel's buffers are not endless");
    };
    assert_eq!(overflowed, Push::Overflowed);
    assert_eq!(socket.ending(), Some(Ending::Slow));
    assert_eq!(socket.push(&frame("late")), Push::Dropped);
    let expected: Vec<u8> = sent.iter().flat_map(|f| f.wire.to_vec()).collect();
    let reading =
        tokio::spawn(async move { read_exactly(&mut client, expected.len()).await == expected });
    while socket.flush(|_| {}) != Flushed::Done {
        socket.stream().writable().await.unwrap();
    }
    assert!(reading.await.unwrap(), "every accepted post, in order");
}

#[tokio::test]
async fn a_held_post_to_a_reset_peer_ends_the_socket() {
    let (socket, client) = pair(8).await;
    assert_eq!(socket.push(&frame("held")), Push::Queued);
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), socket.stream().readable())
        .await
        .expect("the reset arrives")
        .unwrap();
    socket.release();
    assert_eq!(socket.flush(|_| {}), Flushed::Gone, "not waiting to write");
    assert_eq!(socket.push(&frame("later")), Push::Dropped);
}

#[tokio::test]
async fn a_socket_that_misses_a_ping_is_ended_as_silent_and_one_that_answers_is_kept() {
    let (socket, mut client) = pair(8).await;
    let now = Instant::now();
    socket.heartbeat(now, PostId::first_at(0));
    socket.release();
    let ping = wire::ping();
    for _ in 0..2 {
        socket.heartbeat(now, PostId::first_at(0));
        assert_eq!(read_exactly(&mut client, ping.len()).await, &ping[..]);
        assert_eq!(socket.ending(), None);
        socket.ponged();
    }
    socket.heartbeat(now, PostId::first_at(0));
    assert_eq!(read_exactly(&mut client, ping.len()).await, &ping[..]);
    socket.heartbeat(now, PostId::first_at(0));
    assert_eq!(
        socket.ending(),
        Some(Ending::Silent),
        "the third ping went unanswered"
    );
    assert_eq!(
        client.try_read(&mut [0; 16]).map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock),
        "no ping while subscribing, none to a silent socket"
    );
    assert_eq!(socket.push(&frame("late")), Push::Dropped);
}

#[test]
fn a_seam_forgets_only_its_oldest_ids_beyond_its_bound() {
    let mut seam = Seam {
        written: VecDeque::new(),
        until: Instant::now(),
    };
    let ids: Vec<PostId> = (0..=SEAM_POSTS).map(|_| PostId::new_v7()).collect();
    assert!(ids.iter().all(|id| seam.first_time(*id)));
    assert!(!seam.first_time(ids[1]), "the second is still remembered");
    assert!(!seam.first_time(ids[SEAM_POSTS]));
    assert!(seam.first_time(ids[0]), "the first was forgotten");
}

#[tokio::test]
async fn a_seam_sends_each_post_once() {
    let (socket, mut client) = pair(8).await;
    socket.open_seam(Instant::now() + Duration::from_secs(60));
    let post = frame("once");
    socket.push(&post);
    socket.send_post(&post, PostId::first_at(0));
    socket.release();
    assert_eq!(socket.push(&post), Push::Dropped);
    assert_eq!(socket.flush(|_| {}), Flushed::Done);
    socket.send(wire::ping());
    let expected = [&post.wire[..], &wire::ping()[..]].concat();
    assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
}

#[tokio::test]
async fn a_reconnecting_clients_last_post_is_not_sent_again() {
    let (socket, mut client) = pair(8).await;
    socket.open_seam(Instant::now() + Duration::from_secs(60));
    let last = frame("the client's last");
    socket.client_has(last.post, PostId::first_at(0));
    socket.release();
    assert_eq!(socket.push(&last), Push::Dropped);
    socket.send_post(&last, PostId::first_at(0));
    socket.send(wire::ping());
    assert_eq!(socket.flush(|_| {}), Flushed::Done);
    let ping = wire::ping();
    assert_eq!(read_exactly(&mut client, ping.len()).await, &ping[..]);
}

/// A recovery after a long broker outage comes when the seam is closed: a
/// post the socket got read back must still not go out twice, until no
/// recovery would read it back any more.
#[tokio::test]
async fn a_post_read_back_is_not_sent_again_after_the_seam_closed_until_the_horizon_passes_it() {
    let (socket, mut client) = pair(8).await;
    socket.release();
    let horizon = PostId::first_at(0);
    let read_back = frame("read back");
    let sent_before = frame("sent before the client reconnected");
    assert_eq!(socket.push_read_back(&read_back, horizon), Push::Written);
    socket.client_has(sent_before.post, horizon);
    socket.close_seam();
    assert_eq!(socket.push(&read_back), Push::Dropped);
    assert_eq!(socket.push(&sent_before), Push::Dropped);

    let past_both = PostId::first_at(sent_before.post.unix_ms().unwrap() + 1);
    socket.heartbeat(Instant::now(), past_both);
    socket.ponged();
    let ping = wire::ping();
    assert_eq!(socket.push(&read_back), Push::Written, "forgotten");
    let expected = [&read_back.wire[..], &ping[..], &read_back.wire[..]].concat();
    assert_eq!(read_exactly(&mut client, expected.len()).await, expected);

    let old = frame("older than the horizon");
    let newer = PostId::first_at(old.post.unix_ms().unwrap() + 1);
    socket.send_post(&old, newer);
    assert_eq!(socket.push(&old), Push::Written, "never remembered");
}
