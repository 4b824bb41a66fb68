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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::codec::stored_post_frame;
use super::hub::catch_up_after_binding;
use super::socket::{CATCH_UP_LIMIT, Flushed, Socket};
use super::wire::{self, ClientFrame, ReadError, Reader};
use super::{Realtime, unix_micros};
use crate::domain::{PostId, UserId};

/// Most posts of one author that can have been in flight (inserted, not yet
/// committed) at once: the posts before `since` a catch-up looks back over.
const CONCURRENT_PER_AUTHOR: i64 = 16;
/// A close frame to a client that is not reading must not hold the task
/// (nor shutdown) for a whole write deadline.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a catch-up a live copy of one of its posts may still
/// arrive (the broker delivers a post some time after it is committed).
pub(super) const SEAM_WINDOW: Duration = Duration::from_secs(30);
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

impl From<ReadError> for End {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooBig => Self::MessageTooBig,
            ReadError::Protocol(why) => Self::Protocol(why),
        }
    }
}

/// Runs the websocket `upgrade` completes with, if it does.
pub(super) async fn run(
    realtime: Arc<Realtime>,
    upgrade: impl Future<Output = Option<Upgraded>>,
    user: UserId,
    since: Option<PostId>,
) {
    let Some(Upgraded { stream, early }) = upgrade.await else {
        return;
    };
    let socket = Arc::new(Socket::new(user, realtime.settings.queue_capacity, stream));
    realtime.registry.attach(&socket);
    let end = serve(&realtime, &socket, since, early).await;
    realtime.registry.detach(&socket);
    match &end {
        End::WriteTimeout => {
            realtime
                .metrics
                .socket_write_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        End::Failed(error) => tracing::warn!(%user, %error, "websocket session failed"),
        other => tracing::debug!(%user, end = ?other, "websocket closed"),
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
        let _ = drain(&realtime, &socket, close_wait).await;
    }
    socket.shut();
}

async fn serve(
    realtime: &Realtime,
    socket: &Arc<Socket>,
    since: Option<PostId>,
    early: Vec<u8>,
) -> End {
    // Subscribing and catching up hold database futures of kilobytes; boxed,
    // they are freed once done instead of sizing the task of every idle
    // socket for as long as it is open.
    let bindings = match Box::pin(subscribe(realtime, socket)).await {
        Ok(bindings) => bindings,
        Err(end) => return end,
    };
    // Subscribed once the broker routes the authors' posts here: from then
    // on the live stream (and a catch-up read after this) misses nothing.
    // Not answering before that keeps a fresh socket exact: a post is sent
    // iff it was written after the socket subscribed, which a read-back
    // keyed by the writers' clocks cannot promise.
    futures_util::future::join_all(bindings).await;
    if let Some(since) = since {
        socket.open_seam(Instant::now() + SEAM_WINDOW);
        if let Err(end) = Box::pin(catch_up(realtime, socket, since)).await {
            return end;
        }
    }
    socket.release();
    relay_live(realtime, socket, early).await
}

/// Subscribes to everyone the user follows; returns, for the caller to
/// await, each new broker binding that subscription asked for.
async fn subscribe(
    realtime: &Realtime,
    socket: &Arc<Socket>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, End> {
    let authors = realtime
        .store
        .followed_authors(socket.user)
        .await
        .map_err(|e| End::Failed(e.to_string()))?;
    Ok(realtime
        .registry
        .subscribe(socket, &authors)
        .into_iter()
        .map(|binding| {
            catch_up_after_binding(
                binding,
                &realtime.registry,
                &realtime.store,
                &realtime.metrics,
                None,
            )
        })
        .collect())
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
            CONCURRENT_PER_AUTHOR,
        )
        .await
        .map_err(|e| End::Failed(e.to_string()))?;
    for post in &posts {
        socket.send_post(&stored_post_frame(post));
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
        metrics.observe_latency_micros(unix_micros().saturating_sub(published_at), 1);
    })
}

async fn relay_live(realtime: &Realtime, socket: &Socket, early: Vec<u8>) -> End {
    let shutdown = realtime.shutdown.clone();
    let deadline = realtime.settings.write_timeout;
    let mut ping = tokio::time::interval(realtime.settings.ping_interval);
    ping.reset();
    let mut awaiting_pong = false;
    let mut reader = Reader::new(MAX_CLIENT_MESSAGE);
    let answer = |frame: ClientFrame, awaiting_pong: &mut bool| match frame {
        // Answered through the outbox: after the posts before it.
        ClientFrame::Ping(payload) => {
            socket.send(wire::pong(&payload));
            None
        }
        ClientFrame::Pong => {
            *awaiting_pong = false;
            None
        }
        ClientFrame::Close(code) => Some(End::ClientClosed(code)),
    };
    if let Err(end) = read_frames(&mut reader, &early, |f| answer(f, &mut awaiting_pong)) {
        return end;
    }
    drop(early);
    // Set while the kernel's buffer is full: since when nothing was taken.
    let mut blocked_since: Option<tokio::time::Instant> = None;
    loop {
        match flush(realtime, socket) {
            Flushed::Done => blocked_since = None,
            Flushed::Gone => return End::ClientLeft,
            Flushed::Blocked => {
                blocked_since.get_or_insert_with(tokio::time::Instant::now);
            }
        }
        if socket.is_slow() {
            return End::SlowConsumer;
        }
        let write_deadline = blocked_since.map(|since| since + deadline);
        tokio::select! {
            () = socket.needs_writing() => {}
            writable = socket.stream().writable(), if blocked_since.is_some() => {
                if writable.is_err() {
                    return End::ClientLeft;
                }
                // Progress restarts the deadline; none keeps it running.
                blocked_since = None;
            }
            () = sleep_until(write_deadline), if write_deadline.is_some() => {
                return End::WriteTimeout;
            }
            readable = socket.stream().readable() => {
                if readable.is_err() {
                    return End::ClientLeft;
                }
                if let Err(end) = read_available(socket, &mut reader, |f| answer(f, &mut awaiting_pong)) {
                    return end;
                }
            }
            _ = ping.tick() => {
                if awaiting_pong {
                    return End::PingTimeout;
                }
                awaiting_pong = true;
                socket.send(wire::ping());
                socket.close_expired_seam(Instant::now());
            }
            () = shutdown.cancelled() => return End::Shutdown,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Reads what the client sent until the socket has nothing more.
fn read_available(
    socket: &Socket,
    reader: &mut Reader,
    mut on_frame: impl FnMut(ClientFrame) -> Option<End>,
) -> Result<(), End> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match socket.stream().try_read(&mut chunk) {
            Ok(0) => return Err(End::ClientLeft),
            Ok(n) => read_frames(reader, &chunk[..n], &mut on_frame)?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err(End::ClientLeft),
        }
    }
}

/// Runs `on_frame` on each control frame in `input`; the first that ends
/// the session ends it.
fn read_frames(
    reader: &mut Reader,
    input: &[u8],
    mut on_frame: impl FnMut(ClientFrame) -> Option<End>,
) -> Result<(), End> {
    let mut end = None;
    reader.feed(input, |frame| {
        if end.is_none() {
            end = on_frame(frame);
        }
    })?;
    end.map_or(Ok(()), Err)
}
