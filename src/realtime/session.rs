//! One websocket's life: subscribe, catch up, then relay live posts until
//! the client leaves, falls behind, stops answering pings, or the server
//! shuts down.
//!
//! Live posts do not pass through here: the hub writes them into the socket
//! itself ([`super::socket`]). The session writes only what the kernel did
//! not take at once, reads the client's control frames, pings, and closes.
//! Every wait for the kernel to take data runs under the write deadline: a
//! peer that stops taking data, because it stopped reading or vanished with
//! full buffers, costs a session task for that long at most, never for as
//! long as the kernel retransmits.
//!
//! A `?since=` catch-up reads PostgreSQL, never the Redis feed: the feed
//! worker fills that later, so a post published before this socket was
//! subscribed but not yet materialised would reach the client by neither
//! path. It orders by `posts.seq`, which one PostgreSQL sequence assigns at
//! insert, not by post id: ids carry the clock of the instance that wrote
//! them, and a post written after `since` on an instance whose clock is
//! behind has a smaller id. A sequence value is taken at insert, not at
//! commit, so the catch-up also sends the few posts inserted before `since`
//! that were not yet committed when `since` was written (each post records
//! its transaction and snapshot): they may have been published after it.
//! Choosing to send rather than skip them means a post that committed in
//! the same instant as `since` may come twice, never that one is lost.
//! (Numbering posts at commit would need one lock every post commit waits
//! on; numbering them as the relay publishes would tie the outbox to posts.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::catch_up;
use super::codec::stored_post_frame;
use super::registry::Start;
use super::socket::{CATCH_UP_LIMIT, Ending, Flushed, Socket};
use super::wire::{self, ClientFrame, ReadError, Reader};
use super::{Realtime, SocketSlot, time_written};
use crate::domain::PostId;

/// A close frame to a client that is not reading must not hold the task
/// (nor shutdown) for a whole write deadline.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients only answer pings and close; anything bigger is refused with 1009.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// Bytes read from the client at once; on the stack, never held while idle.
const READ_CHUNK: usize = 512;

/// A websocket whose handshake is done: the stream, and what the client
/// sent after its upgrade request that the server has read already.
pub struct Upgraded {
    pub stream: TcpStream,
    /// A copy: a slice would keep hyper's whole read buffer (8 KiB) alive
    /// for as long as the socket is open.
    pub early: Vec<u8>,
}

/// Why a session ended, and what (if anything) to tell the client.
#[derive(Debug)]
enum End {
    /// The client sent a close frame; it gets its code back.
    ClientClosed(Option<u16>),
    ClientLeft,
    SlowConsumer,
    PingTimeout,
    /// A write did not complete within the deadline: the peer stopped
    /// reading or vanished with full buffers.
    WriteTimeout,
    Shutdown,
    MessageTooBig,
    Protocol(&'static str),
    Failed(String),
}

impl End {
    fn close_frame(&self) -> Option<Bytes> {
        let (code, reason) = match self {
            // A socket that did not take the last write will not take a
            // close frame either.
            Self::ClientLeft | Self::PingTimeout | Self::WriteTimeout => return None,
            Self::ClientClosed(code) => (code.unwrap_or(wire::CLOSE_NORMAL), ""),
            Self::SlowConsumer => (
                wire::CLOSE_POLICY,
                "slow consumer: too many undelivered posts",
            ),
            Self::Shutdown => (wire::CLOSE_AWAY, "server shutting down"),
            Self::MessageTooBig => (wire::CLOSE_TOO_BIG, "message too big"),
            Self::Protocol(why) => (wire::CLOSE_PROTOCOL, *why),
            Self::Failed(_) => (wire::CLOSE_ERROR, "internal error, reconnect later"),
        };
        Some(wire::close(code, reason))
    }
}

impl From<Ending> for End {
    fn from(ending: Ending) -> Self {
        match ending {
            Ending::Slow => Self::SlowConsumer,
            Ending::Silent => Self::PingTimeout,
            Ending::Shutdown => Self::Shutdown,
        }
    }
}

impl From<ReadError> for End {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooBig => Self::MessageTooBig,
            ReadError::Protocol(why) => Self::Protocol(why),
        }
    }
}

/// Runs the websocket `upgrade` completes with, if it does, and gives
/// back its place (`slot`) when it ends.
///
/// This is the socket task's whole future, and an open socket's task is
/// sized by its largest wait: what is held for the socket's whole life
/// (the arguments here and the idle wait's state) is kept to a few words,
/// and every wait that holds more (the upgrade, subscribing, a catch-up,
/// closing) is boxed, freed once it completes.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of its arguments"
)]
pub(super) fn run(
    realtime: Arc<Realtime>,
    slot: SocketSlot,
    upgrade: Pin<Box<dyn Future<Output = Option<Upgraded>> + Send>>,
    since: Option<PostId>,
) -> impl Future<Output = ()> + Send + use<> {
    // Not an `async fn`: that would keep a second copy of every argument
    // in the future, for the socket's whole life.
    async move {
        let mut reader = Reader::new(MAX_CLIENT_MESSAGE);
        // Scoped, so that what opening needs is not kept beside the idle wait.
        let (socket, opened) = {
            let Some(Upgraded { stream, early }) = upgrade.await else {
                return;
            };
            let socket = Arc::new(Socket::new(
                slot.user(),
                realtime.settings.queue_capacity,
                stream,
            ));
            realtime.registry.attach(&socket);
            // Shutdown ends the sockets it finds attached; this one may have
            // come after it looked.
            if realtime.shutdown.is_cancelled() {
                socket.end(Ending::Shutdown);
            }
            let opened = Box::pin(open(&realtime, &socket, &mut reader, since, early)).await;
            (socket, opened.err())
        };
        let end = match opened {
            None => relay_live(&realtime, &socket, &mut reader).await,
            Some(end) => end,
        };
        realtime.registry.detach(&socket);
        match &end {
            End::WriteTimeout => {
                realtime
                    .metrics
                    .socket_write_timeouts
                    .fetch_add(1, Ordering::Relaxed);
            }
            End::Failed(error) => {
                tracing::warn!(user = %socket.user, %error, "websocket session failed")
            }
            other => tracing::debug!(user = %socket.user, end = ?other, "websocket closed"),
        }
        if let Some(frame) = end.close_frame() {
            socket.send(frame);
            // A slow consumer gets the write deadline to take its backlog, which
            // ends with the close frame saying why; anyone else gets a moment.
            let write_timeout = realtime.settings.write_timeout;
            let close_wait = match end {
                End::SlowConsumer => write_timeout,
                _ => CLOSE_TIMEOUT.min(write_timeout),
            };
            let _ = Box::pin(drain(&realtime, &socket, close_wait)).await;
        }
        socket.shut();
        drop(slot);
        crate::memory::session_ended();
    }
}

/// Everything before the socket goes live: the subscriptions, for a
/// `?since=` reconnect its catch-up, then the frames the client sent with
/// its upgrade (`early`). A ping among them is answered only now: a pong
/// tells the client it is subscribed.
async fn open(
    realtime: &Realtime,
    socket: &Arc<Socket>,
    reader: &mut Reader,
    since: Option<PostId>,
    early: Vec<u8>,
) -> Result<(), End> {
    let bindings = subscribe(realtime, socket, since.is_none()).await?;
    if let Some(since) = since {
        socket.client_has(since, realtime.horizon.oldest());
        // The ordered `?since=` read must come after the broker routes the
        // authors' posts here: from then on the live stream misses nothing.
        futures_util::future::join_all(bindings).await;
        catch_up(realtime, socket, since).await?;
    }
    socket.release();
    read_frames(socket, reader, &early)
}

/// Subscribes to everyone the user follows. A fresh socket (`fresh`) is
/// ready at once: what its pending bindings, or the moment before it was
/// registered, kept from it is read back by the catch-ups this starts, by
/// commit order from its follows' snapshot. Otherwise returns the catch-ups
/// of the new bindings, for the caller to await before its own read.
async fn subscribe(
    realtime: &Realtime,
    socket: &Arc<Socket>,
    fresh: bool,
) -> Result<Vec<tokio::task::JoinHandle<()>>, End> {
    let registry = &realtime.registry;
    let clock = registry.clock();
    let (authors, mark) = realtime
        .follow_reads
        .read(socket.user)
        .await
        .map_err(|e| End::Failed(e.to_string()))?;
    let start = fresh.then(|| Start::Mark(mark.clone()));
    let subscribed = registry.subscribe(socket, &authors, start.as_ref(), clock);
    let catch_ups = subscribed
        .bindings
        .into_iter()
        .map(|binding| catch_up::after_binding(binding, registry, &realtime.catch_ups, None))
        .collect();
    if !subscribed.uncovered.is_empty() {
        drop(catch_up::for_socket(
            socket.clone(),
            mark,
            subscribed.uncovered,
            &realtime.catch_ups,
        ));
    }
    Ok(if fresh { Vec::new() } else { catch_ups })
}

/// Sends what the client may have missed since `since` (see the module
/// doc), in sequence order, ahead of the live posts held meanwhile; the
/// seam skips those of them the catch-up sent.
async fn catch_up(realtime: &Realtime, socket: &Socket, since: PostId) -> Result<(), End> {
    let posts = realtime
        .store
        .posts_since(
            socket.user,
            since,
            CATCH_UP_LIMIT as i64,
            catch_up::CONCURRENT_PER_AUTHOR,
        )
        .await
        .map_err(|e| End::Failed(e.to_string()))?;
    let horizon = realtime.horizon.oldest();
    for post in &posts {
        socket.send_post(&stored_post_frame(post), horizon);
    }
    drain(realtime, socket, realtime.settings.write_timeout).await
}

/// Writes the outbox until it is empty, failing if the kernel takes
/// nothing for `deadline`.
async fn drain(realtime: &Realtime, socket: &Socket, deadline: Duration) -> Result<(), End> {
    loop {
        match flush(realtime, socket) {
            Flushed::Done => return Ok(()),
            Flushed::Gone => return Err(End::ClientLeft),
            Flushed::Blocked => {
                tokio::time::timeout(deadline, socket.stream().writable())
                    .await
                    .map_err(|_| End::WriteTimeout)?
                    .map_err(|_| End::ClientLeft)?;
            }
        }
    }
}

fn flush(realtime: &Realtime, socket: &Socket) -> Flushed {
    let metrics = &realtime.metrics;
    socket.flush(|published_at| {
        time_written(metrics, published_at, 1);
    })
}

/// The live socket's loop: the session's idle wait. Not an `async fn`, for
/// the same reason as [`run`].
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of its arguments"
)]
fn relay_live<'a>(
    realtime: &'a Realtime,
    socket: &'a Socket,
    reader: &'a mut Reader,
) -> impl Future<Output = End> + 'a {
    async move {
        // Armed while the kernel's buffer is full, from when nothing was taken;
        // boxed, so an idle socket holds no timer.
        let mut write_deadline: Option<Pin<Box<Sleep>>> = None;
        loop {
            match flush(realtime, socket) {
                Flushed::Done => write_deadline = None,
                Flushed::Gone => return End::ClientLeft,
                Flushed::Blocked => {
                    write_deadline.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep(realtime.settings.write_timeout))
                    });
                }
            }
            if let Some(ending) = socket.ending() {
                return ending.into();
            }
            match next_event(socket, write_deadline.as_mut()).await {
                Event::NeedsWriting => {}
                // Progress restarts the deadline; none keeps it running.
                Event::Writable => write_deadline = None,
                Event::WriteDeadline => return End::WriteTimeout,
                Event::Readable => {
                    if let Err(end) = read_available(socket, reader) {
                        return end;
                    }
                }
                Event::Failed => return End::ClientLeft,
            }
        }
    }
}

/// What woke an idle session.
enum Event {
    NeedsWriting,
    Readable,
    Writable,
    WriteDeadline,
    Failed,
}

/// Waits for the next thing the session must act on: the outbox, the
/// client's bytes, and while the kernel's buffer is full (`write_deadline`
/// armed), room in it or the deadline. Polls readiness in place instead of
/// holding a future per source, so a parked session is a few words.
fn next_event<'a>(
    socket: &'a Socket,
    mut write_deadline: Option<&'a mut Pin<Box<Sleep>>>,
) -> impl Future<Output = Event> + 'a {
    let ready = |ready: std::io::Result<()>, event| match ready {
        Ok(()) => Poll::Ready(event),
        Err(_) => Poll::Ready(Event::Failed),
    };
    std::future::poll_fn(move |cx| {
        if socket.poll_needs_writing(cx).is_ready() {
            return Poll::Ready(Event::NeedsWriting);
        }
        if let Poll::Ready(readable) = socket.stream().poll_read_ready(cx) {
            return ready(readable, Event::Readable);
        }
        if let Some(deadline) = write_deadline.as_mut() {
            if let Poll::Ready(writable) = socket.stream().poll_write_ready(cx) {
                return ready(writable, Event::Writable);
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::WriteDeadline);
            }
        }
        Poll::Pending
    })
}

/// Reads what the client sent until the socket has nothing more.
fn read_available(socket: &Socket, reader: &mut Reader) -> Result<(), End> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match socket.stream().try_read(&mut chunk) {
            Ok(0) => return Err(End::ClientLeft),
            Ok(n) => read_frames(socket, reader, &chunk[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err(End::ClientLeft),
        }
    }
}

/// Answers each control frame in `input`; the first that ends the session
/// ends it.
fn read_frames(socket: &Socket, reader: &mut Reader, input: &[u8]) -> Result<(), End> {
    let mut end = None;
    reader.feed(input, |frame| {
        if end.is_none() {
            end = answer(socket, frame);
        }
    })?;
    end.map_or(Ok(()), Err)
}

fn answer(socket: &Socket, frame: ClientFrame) -> Option<End> {
    match frame {
        // Answered through the outbox: after the posts before it.
        ClientFrame::Ping(payload) => {
            socket.send(wire::pong(&payload));
            None
        }
        ClientFrame::Pong => {
            socket.ponged();
            None
        }
        ClientFrame::Close(code) => Some(End::ClientClosed(code)),
    }
}

/// What one idle socket holds in memory, by part: printed with
/// `cargo test --lib memory_per_idle_socket -- --nocapture`, and bounded so
/// that growth is a decision, not an accident.
#[cfg(test)]
mod memory {
    use std::mem::size_of;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::broker::{Broker, BrokerKind, MemoryBus};
    use crate::domain::UserId;
    use crate::metrics::Metrics;
    use crate::realtime::{RealtimeSettings, Routing};
    use crate::store::{Store, StoreSettings};

    #[tokio::test]
    async fn memory_per_idle_socket() {
        let store = Store::new(&StoreSettings {
            database_url: "postgres://nobody@127.0.0.1:1/none".into(),
            pool_size: 1,
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
        })
        .unwrap();
        let (sink, _incoming) = mpsc::channel(1);
        let (work, _work) = mpsc::channel(1);
        let broker = Broker::start(BrokerKind::Memory(MemoryBus::new()), sink, work);
        let settings = RealtimeSettings {
            queue_capacity: 16,
            ping_interval: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_sockets: 10,
            max_sockets_per_user: 10,
            routing: "bucket:1024".parse::<Routing>().unwrap(),
            bind_every_bucket: false,
        };
        let realtime = Realtime::new(
            store,
            broker,
            settings,
            Arc::new(Metrics::default()),
            CancellationToken::new(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let socket = Arc::new(Socket::new(
            UserId::new_v7(),
            16,
            TcpStream::from_std(server).unwrap(),
        ));
        let slot = realtime.admit(UserId::new_v7()).unwrap();
        let session = crate::realtime::session_task(
            realtime.clone(),
            slot,
            std::future::ready(None::<Upgraded>),
            None,
        );
        let mut reader = Reader::new(MAX_CLIENT_MESSAGE);
        let relay = relay_live(&realtime, &socket, &mut reader);
        let parts = [
            ("Socket", size_of::<Socket>()),
            ("session task future", size_of_val(&session)),
            ("relay_live future", size_of_val(&relay)),
            ("Reader", size_of::<Reader>()),
        ];
        for (part, bytes) in parts {
            println!("{part:<24} {bytes:>6} bytes");
        }
        assert!(size_of::<Socket>() <= 512, "{parts:?}");
        // tokio allocates a task as its future plus about 100 bytes of
        // header and trailer, aligned to 128: up to 400 bytes of future
        // keep an idle socket's task in 512.
        assert!(size_of_val(&session) <= 400, "{parts:?}");
    }
}
