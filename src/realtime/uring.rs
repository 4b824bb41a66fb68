//! Writes a burst of posts into many sockets with io_uring: a send per
//! socket, hundreds submitted and reaped with one `io_uring_enter`, instead
//! of one `sendto` syscall each.
//!
//! Each thread that delivers posts gets a ring of its own on first use.
//! Every send is non-blocking (`MSG_DONTWAIT`, and the sockets are
//! `O_NONBLOCK`), so the kernel runs them inline during the submit and the
//! completions are there when it returns; a send the kernel cannot take
//! whole settles exactly as [`Socket::push`]'s `try_write` would (the rest
//! goes to the socket's outbox, in order). A socket's outbox stays locked
//! from the check that it is empty until its send is settled, so no frame
//! can overtake the burst. A socket that cannot take a burst of several
//! posts straight away (subscribing, behind, gone) gets them pushed one
//! by one.
//!
//! Never waits for an outbox lock while holding others (a socket someone
//! else holds is pushed after the batch, alone), and never blocks on the
//! network. Where io_uring is unavailable (an old kernel, a seccomp
//! policy), every socket is pushed with `try_write`.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};

use super::burst::Burst;
use super::socket::{Admit, Direct, Push, Socket};

/// Sends submitted with one `io_uring_enter`; the outboxes of this many
/// sockets are held at once, for the length of that call.
const BATCH: usize = 256;

thread_local! {
    /// This thread's ring; `None` once creating one failed.
    static RING: RefCell<Option<Option<IoUring>>> = const { RefCell::new(None) };
}

/// Delivers `burst` to every socket of `sockets`, calling `settled` with
/// what became of each post (by its place in the burst) on each socket.
pub(super) fn deliver(
    sockets: &[Arc<Socket>],
    burst: &Burst,
    mut settled: impl FnMut(usize, Push),
) {
    RING.with(|ring| {
        let mut ring = ring.borrow_mut();
        match ring.get_or_insert_with(new_ring) {
            Some(ring) => deliver_on(ring, sockets, burst, settled),
            None => sockets
                .iter()
                .for_each(|socket| push_one_by_one(socket, burst, &mut settled)),
        }
    });
}

fn push_one_by_one(socket: &Socket, burst: &Burst, settled: &mut impl FnMut(usize, Push)) {
    for (place, frame) in burst.frames().iter().enumerate() {
        settled(place, socket.push(frame));
    }
}

fn new_ring() -> Option<IoUring> {
    match IoUring::builder()
        // One thread submits and reaps; a failed send must not stop the
        // submission of the sends queued after it.
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_submit_all()
        .build(BATCH as u32)
    {
        Ok(ring) => Some(ring),
        Err(error) => {
            tracing::warn!(%error, "io_uring unavailable; posts are written with one send each");
            None
        }
    }
}

fn deliver_on(
    ring: &mut IoUring,
    sockets: &[Arc<Socket>],
    burst: &Burst,
    mut settled: impl FnMut(usize, Push),
) {
    let mut busy = Vec::new();
    let mut batch: Vec<Direct<'_>> = Vec::with_capacity(BATCH);
    for socket in sockets {
        match socket.try_admit(burst) {
            Some(Admit::Direct(direct)) => {
                batch.push(direct);
                if batch.len() == BATCH {
                    send_all(ring, &mut batch, burst, &mut settled);
                }
            }
            // Only a burst of one post is settled at once.
            Some(Admit::Settled(push)) => settled(0, push),
            None => busy.push(socket),
        }
    }
    send_all(ring, &mut batch, burst, &mut settled);
    // Their outboxes were held by a session or another writer, or need
    // each post's own decision: now that this thread holds none, waiting
    // for one is safe.
    for socket in busy {
        push_one_by_one(socket, burst, &mut settled);
    }
}

/// Sends `burst` to every socket of `batch` with one submit, settles each
/// and empties `batch` (releasing the outboxes).
fn send_all(
    ring: &mut IoUring,
    batch: &mut Vec<Direct<'_>>,
    burst: &Burst,
    settled: &mut impl FnMut(usize, Push),
) {
    if batch.is_empty() {
        return;
    }
    let wire = burst.wire().as_ptr();
    let len = u32::try_from(burst.wire().len()).expect("a burst is far below 4 GiB");
    let mut results = [None; BATCH];
    {
        let mut submission = ring.submission();
        for (i, direct) in batch.iter().enumerate() {
            let send = send(direct.fd(), wire, len).user_data(i as u64);
            // SAFETY: `wire` is `burst`'s, alive until this function
            // returns, and every send completes before it does (below).
            unsafe { submission.push(&send) }.expect("the batch fits the ring");
        }
    }
    let mut done = 0;
    while done < batch.len() {
        if let Err(error) = ring.submit_and_wait(batch.len() - done) {
            // Interrupted, or short of memory for a moment: what was not
            // submitted stays queued for the next call.
            if matches!(
                error.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            ) {
                continue;
            }
            // Nothing was submitted that is not reaped below, and the
            // kernel keeps the buffer only while a send is in flight.
            panic!("io_uring_enter failed: {error}");
        }
        for completion in ring.completion() {
            results[completion.user_data() as usize] = Some(completion.result());
            done += 1;
        }
    }
    for (direct, result) in batch.drain(..).zip(results) {
        let result = result.expect("every send completed");
        let written = usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result));
        direct.settle(written, burst, &mut *settled);
    }
}

fn send(fd: RawFd, wire: *const u8, len: u32) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), wire, len)
        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        .build()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use socket2::SockRef;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::domain::{PostId, UserId};
    use crate::realtime::codec::PostFrame;
    use crate::realtime::socket::Flushed;
    use crate::realtime::socket::tests::read_exactly;
    use crate::realtime::wire;

    /// Released sockets (live posts go straight to the kernel) and their
    /// clients, which read nothing until told.
    async fn sockets(count: usize, send_buffer: usize) -> Vec<(Arc<Socket>, TcpStream)> {
        let pairs = subscribing(count, send_buffer).await;
        for (socket, _) in &pairs {
            socket.release();
        }
        pairs
    }

    /// Sockets still subscribing: live posts are held.
    async fn subscribing(count: usize, send_buffer: usize) -> Vec<(Arc<Socket>, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut pairs = Vec::new();
        for _ in 0..count {
            let client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            SockRef::from(&server)
                .set_send_buffer_size(send_buffer)
                .unwrap();
            let socket = Arc::new(Socket::new(UserId::new_v7(), 8, server));
            pairs.push((socket, client));
        }
        pairs
    }

    fn frame(text: &[u8]) -> Arc<PostFrame> {
        Arc::new(PostFrame {
            // One author for every frame, so that any of them make a burst.
            author: UserId::from_uuid(uuid::Uuid::from_u128(7)),
            post: PostId::new_v7(),
            published_at_micros: 1,
            wire: wire::text(text),
        })
    }

    fn pushes(sockets: &[Arc<Socket>], frame: &Arc<PostFrame>) -> Vec<Push> {
        burst_pushes(sockets, &Burst::one(frame.clone()))
            .into_iter()
            .map(|(_, push)| push)
            .collect()
    }

    /// Each post's fate on each socket, by its place in the burst.
    fn burst_pushes(sockets: &[Arc<Socket>], burst: &Burst) -> Vec<(usize, Push)> {
        let mut pushes = Vec::new();
        deliver(sockets, burst, |place, push| pushes.push((place, push)));
        pushes
    }

    /// Writes the outbox out while `client` reads `expected`; true if it
    /// read exactly that.
    async fn drain(socket: &Socket, mut client: TcpStream, expected: Vec<u8>) -> bool {
        let reading =
            tokio::spawn(
                async move { read_exactly(&mut client, expected.len()).await == expected },
            );
        while socket.flush(|_| {}) != Flushed::Done {
            tokio::time::timeout(Duration::from_secs(10), socket.stream().writable())
                .await
                .expect("the client reads")
                .unwrap();
        }
        reading.await.unwrap()
    }

    #[tokio::test]
    async fn one_batch_writes_the_frame_into_every_socket() {
        // Otherwise these tests would pass on the fallback alone.
        assert!(new_ring().is_some(), "io_uring works here");
        // More sockets than one submission holds.
        let mut pairs = sockets(BATCH + 3, 0).await;
        let list: Vec<_> = pairs.iter().map(|(s, _)| s.clone()).collect();
        let post = frame(b"to everyone");
        assert!(pushes(&list, &post).iter().all(|p| *p == Push::Written));
        for (_, client) in &mut pairs {
            assert_eq!(read_exactly(client, post.wire.len()).await, post.wire);
        }
    }

    #[tokio::test]
    async fn what_the_kernel_does_not_take_waits_in_the_outbox_in_order() {
        let mut pairs = sockets(1, 4096).await;
        let (socket, client) = pairs.pop().unwrap();
        // Far more than the kernel's buffers hold: the send takes a part.
        let big = frame(&vec![b'x'; 4 * 1024 * 1024]);
        let small = frame(b"after the big one");
        assert_eq!(pushes(std::slice::from_ref(&socket), &big), [Push::Queued]);
        // Its rest waits, so the next post queues behind it, not in the kernel.
        assert_eq!(
            pushes(std::slice::from_ref(&socket), &small),
            [Push::Queued]
        );
        // A full kernel buffer and an empty outbox: the send would block.
        assert!(drain(&socket, client, [&big.wire[..], &small.wire[..]].concat()).await);
        let mut pairs = sockets(1, 4096).await;
        let (socket, client) = pairs.pop().unwrap();
        let filler = vec![b'f'; 4 * 1024 * 1024];
        let mut filled = 0;
        while let Ok(n) = socket.stream().try_write(&filler) {
            filled += n;
        }
        assert_eq!(
            pushes(std::slice::from_ref(&socket), &small),
            [Push::Queued],
            "EAGAIN"
        );
        assert!(
            drain(
                &socket,
                client,
                [&filler[..filled], &small.wire[..]].concat()
            )
            .await
        );
    }

    #[tokio::test]
    async fn a_socket_reset_mid_batch_is_dropped_and_the_others_get_the_post() {
        let mut pairs = sockets(3, 0).await;
        let list: Vec<_> = pairs.iter().map(|(s, _)| s.clone()).collect();
        let (_, gone) = pairs.remove(1);
        // The middle socket's peer resets the connection.
        SockRef::from(&gone)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(gone);
        tokio::time::timeout(Duration::from_secs(10), list[1].stream().readable())
            .await
            .expect("the reset arrives")
            .unwrap();
        let post = frame(b"after the reset");
        assert_eq!(
            pushes(&list, &post),
            [Push::Written, Push::Dropped, Push::Written]
        );
        assert_eq!(list[1].flush(|_| {}), Flushed::Gone, "its session is told");
        assert_eq!(pushes(&list[1..2], &post), [Push::Dropped]);
        for (_, client) in &mut pairs {
            assert_eq!(read_exactly(client, post.wire.len()).await, post.wire);
        }
    }

    #[tokio::test]
    async fn a_burst_is_one_send_per_socket_and_each_post_is_counted() {
        let mut pairs = sockets(3, 0).await;
        let list: Vec<_> = pairs.iter().map(|(s, _)| s.clone()).collect();
        let burst = Burst::new(vec![frame(b"one"), frame(b"two"), frame(b"three")]);
        let per_socket = [(0, Push::Written), (1, Push::Written), (2, Push::Written)];
        assert_eq!(burst_pushes(&list, &burst), per_socket.repeat(3));
        for (_, client) in &mut pairs {
            assert_eq!(
                read_exactly(client, burst.wire().len()).await,
                &burst.wire()[..]
            );
        }
    }

    #[tokio::test]
    async fn the_posts_of_a_burst_the_kernel_takes_in_part_wait_in_order() {
        let mut pairs = sockets(1, 4096).await;
        let (socket, client) = pairs.pop().unwrap();
        let (small, big) = (frame(b"small"), frame(&vec![b'x'; 4 * 1024 * 1024]));
        let last = frame(b"last");
        let burst = Burst::new(vec![small, big, last.clone()]);
        let list = std::slice::from_ref(&socket);
        assert_eq!(
            burst_pushes(list, &burst),
            [(0, Push::Written), (1, Push::Queued), (2, Push::Queued)]
        );
        // The rest waits: the next post queues behind it.
        let after = frame(b"after");
        assert_eq!(pushes(list, &after), [Push::Queued]);
        let expected = [&burst.wire()[..], &after.wire[..]].concat();
        assert!(drain(&socket, client, expected).await);
    }

    #[tokio::test]
    async fn a_socket_still_subscribing_holds_each_post_of_a_burst() {
        let mut pairs = subscribing(1, 0).await;
        let (socket, client) = pairs.pop().unwrap();
        let burst = Burst::new(vec![frame(b"held one"), frame(b"held two")]);
        let list = std::slice::from_ref(&socket);
        assert_eq!(
            burst_pushes(list, &burst),
            [(0, Push::Queued), (1, Push::Queued)]
        );
        socket.release();
        assert!(drain(&socket, client, burst.wire().to_vec()).await);
    }
}
