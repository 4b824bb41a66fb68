//! One websocket's life: subscribe, catch up, then relay live posts until
//! the client leaves, falls behind, stops answering pings, or the server
//! shuts down.
//!
//! Every write here runs under the write deadline ([`within`]): a peer that
//! stops taking data, because it stopped reading or vanished with full
//! buffers, costs a session task for that long at most, never for as long as
//! the kernel retransmits.
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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::codec::post_payload;
use super::hub::catch_up_after_binding;
use super::socket::Socket;
use super::{Realtime, unix_micros};
use crate::domain::{PostId, UserId};

/// Most posts sent on a `?since=` catch-up.
const CATCH_UP_LIMIT: i64 = 1000;
/// Most posts of one author that can have been in flight (inserted, not yet
/// committed) at once: the posts before `since` a catch-up looks back over.
const CONCURRENT_PER_AUTHOR: i64 = 16;
/// A close frame to a client that is not reading must not hold the task
/// (nor shutdown) for a whole write deadline.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many of the last sent post ids a socket remembers.
const RECENT_POSTS: usize = 64;

/// Ids of the last posts sent on a socket. Around a seam (a `?since=`
/// catch-up, or the catch-up after a follow, meeting the live stream) a post
/// can reach a socket twice; the copies arrive close together, so a short
/// memory is enough to send each once.
#[derive(Default)]
struct RecentPosts(VecDeque<PostId>);

impl RecentPosts {
    /// Records `id`; false if it was sent already.
    fn first_time(&mut self, id: PostId) -> bool {
        if self.0.contains(&id) {
            return false;
        }
        if self.0.len() == RECENT_POSTS {
            self.0.pop_front();
        }
        self.0.push_back(id);
        true
    }
}

/// Why a session ended, and what (if anything) to tell the client.
#[derive(Debug)]
enum End {
    /// The client sent a close frame; tungstenite has queued the reply.
    ClientClosed,
    ClientLeft,
    SlowConsumer,
    PingTimeout,
    /// A write did not complete within the deadline: the peer stopped
    /// reading or vanished with full buffers.
    WriteTimeout,
    Shutdown,
    MessageTooBig,
    Failed(String),
}

impl End {
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            // A socket that did not take the last write will not take a
            // close frame either.
            Self::ClientClosed | Self::ClientLeft | Self::PingTimeout | Self::WriteTimeout => {
                return None;
            }
            Self::SlowConsumer => (
                CloseCode::Policy,
                "slow consumer: too many undelivered posts",
            ),
            Self::Shutdown => (CloseCode::Away, "server shutting down"),
            Self::MessageTooBig => (CloseCode::Size, "message too big"),
            Self::Failed(_) => (CloseCode::Error, "internal error, reconnect later"),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

impl From<WsError> for End {
    fn from(e: WsError) -> Self {
        match e {
            WsError::Capacity(_) => Self::MessageTooBig,
            WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => Self::ClientLeft,
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Runs the websocket `upgrade` completes with, if it does.
pub(super) async fn run<S>(
    realtime: Arc<Realtime>,
    upgrade: impl Future<Output = Option<WebSocketStream<S>>>,
    user: UserId,
    since: Option<PostId>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut ws) = upgrade.await else {
        return;
    };
    let socket = Arc::new(Socket::new(user, realtime.settings.queue_capacity));
    realtime.registry.attach(&socket);
    let end = serve(&realtime, &mut ws, &socket, since).await;
    realtime.registry.detach(&socket);
    if matches!(end, End::WriteTimeout) {
        realtime
            .metrics
            .socket_write_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }
    match &end {
        End::Failed(error) => tracing::warn!(%user, %error, "websocket session failed"),
        other => tracing::debug!(%user, end = ?other, "websocket closed"),
    }
    let close_wait = CLOSE_TIMEOUT.min(realtime.settings.write_timeout);
    if let Some(frame) = end.close_frame() {
        let _ = tokio::time::timeout(close_wait, ws.close(Some(frame))).await;
    } else if matches!(end, End::ClientClosed) {
        // Completes the closing handshake: sends the queued reply.
        let _ = tokio::time::timeout(close_wait, ws.flush()).await;
    }
}

async fn serve<S>(
    realtime: &Realtime,
    ws: &mut WebSocketStream<S>,
    socket: &Arc<Socket>,
    since: Option<PostId>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Subscribing and catching up hold database futures of kilobytes; boxed,
    // they are freed once done instead of sizing the task of every idle
    // socket for as long as it is open.
    let catch_ups = match Box::pin(subscribe(realtime, socket, since.is_some())).await {
        Ok(catch_ups) => catch_ups,
        Err(end) => return end,
    };
    let mut recent = RecentPosts::default();
    if let Some(since) = since {
        // A reconnecting client gets what it missed in order: its read
        // comes after the bindings it asked for are in place, and replaces
        // their catch-ups, which could send posts from before `since`.
        futures_util::future::join_all(catch_ups).await;
        if let Err(end) = Box::pin(catch_up(realtime, ws, socket.user, since, &mut recent)).await {
            return end;
        }
    }
    relay_live(realtime, ws, socket, recent).await
}

/// Subscribes to everyone the user follows, without waiting for the
/// broker: the socket has every post written from now on, live where this
/// instance's bindings are in place, and through the hub's catch-up after
/// each binding still on its way (returned, for a caller that must wait).
/// A post written while its binding was pending may thus come after a
/// newer one of the same author that came live. `reads_itself`: the caller
/// reads what it missed once the bindings are in place.
async fn subscribe(
    realtime: &Realtime,
    socket: &Arc<Socket>,
    reads_itself: bool,
) -> Result<Vec<tokio::task::JoinHandle<()>>, End> {
    let since_ms = (!reads_itself).then(|| unix_micros() / 1000);
    let authors = realtime
        .store
        .followed_authors(socket.user)
        .await
        .map_err(|e| End::Failed(e.to_string()))?;
    Ok(realtime
        .registry
        .subscribe(socket, &authors, since_ms)
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
/// doc), in sequence order. The newest of them may also be waiting in the
/// live queue; `recent` skips them there.
async fn catch_up<S>(
    realtime: &Realtime,
    ws: &mut WebSocketStream<S>,
    user: UserId,
    since: PostId,
    recent: &mut RecentPosts,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let posts = realtime
        .store
        .posts_since(user, since, CATCH_UP_LIMIT, CONCURRENT_PER_AUTHOR)
        .await
        .map_err(|e| End::Failed(e.to_string()))?;
    let deadline = realtime.settings.write_timeout;
    for post in &posts {
        recent.first_time(post.id);
        within(deadline, ws.feed(Message::Text(post_payload(post)))).await?;
    }
    within(deadline, ws.flush()).await
}

async fn relay_live<S>(
    realtime: &Realtime,
    ws: &mut WebSocketStream<S>,
    socket: &Socket,
    mut recent: RecentPosts,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shutdown = realtime.shutdown.clone();
    let deadline = realtime.settings.write_timeout;
    let mut ping = tokio::time::interval(realtime.settings.ping_interval);
    ping.reset();
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            () = socket.pushed() => {
                if socket.is_slow() {
                    return End::SlowConsumer;
                }
                // The write blocks on a client that stopped reading: the
                // overflow it causes, or shutdown, must still end the session.
                // Boxed for the same reason: an idle socket does not write.
                let written = tokio::select! {
                    written = Box::pin(write_queued(realtime, ws, socket, &mut recent)) => written,
                    () = socket.overflowed() => return End::SlowConsumer,
                    () = shutdown.cancelled() => return End::Shutdown,
                };
                if let Err(end) = written {
                    return end;
                }
            }
            message = ws.next() => match message {
                None => return End::ClientLeft,
                Some(Ok(Message::Close(_))) => return End::ClientClosed,
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                // tungstenite queues the pong; flush sends it now.
                Some(Ok(Message::Ping(_))) => {
                    if let Err(end) = within(deadline, ws.flush()).await {
                        return end;
                    }
                }
                // The channel is one-way: anything else a client sends is ignored.
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.into(),
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    return End::PingTimeout;
                }
                awaiting_pong = true;
                if let Err(end) = within(deadline, ws.send(Message::Ping(Default::default()))).await {
                    return end;
                }
            }
            () = shutdown.cancelled() => return End::Shutdown,
        }
    }
}

/// Writes every queued frame, then flushes once: a burst becomes a few
/// large writes rather than one per post.
async fn write_queued<S>(
    realtime: &Realtime,
    ws: &mut WebSocketStream<S>,
    socket: &Socket,
    recent: &mut RecentPosts,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = realtime.settings.write_timeout;
    while let Some(frame) = socket.pop() {
        if socket.is_slow() {
            return Err(End::SlowConsumer);
        }
        if !recent.first_time(frame.post) {
            continue;
        }
        within(deadline, ws.feed(Message::Text(frame.text.clone()))).await?;
        realtime
            .metrics
            .observe_latency_micros(unix_micros().saturating_sub(frame.published_at_micros));
    }
    within(deadline, ws.flush()).await
}

/// Runs one websocket write, which fails with [`End::WriteTimeout`] when it
/// does not complete within `deadline`: without one, a write to a peer that
/// vanished with full buffers waits as long as the kernel retransmits.
async fn within(
    deadline: Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), End> {
    match tokio::time::timeout(deadline, write).await {
        Ok(written) => written.map_err(End::from),
        Err(_) => Err(End::WriteTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_posts_skip_repeats_within_the_window() {
        let mut recent = RecentPosts::default();
        let first = PostId::new_v7();
        assert!(recent.first_time(first));
        assert!(!recent.first_time(first));
        for _ in 0..RECENT_POSTS {
            assert!(recent.first_time(PostId::new_v7()));
        }
        assert!(recent.first_time(first), "forgotten after the window");
    }
}

/// A socket's duplicate window against a plain model of it.
#[cfg(test)]
mod properties {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_post_is_skipped_exactly_while_among_the_last_sent(
            sends in proptest::collection::vec(0u8..100, 1..400),
        ) {
            let mut recent = RecentPosts::default();
            let mut model: VecDeque<u8> = VecDeque::new();
            for n in sends {
                let fresh = !model.contains(&n);
                let id = PostId::from_uuid(uuid::Uuid::from_u128(u128::from(n)));
                prop_assert_eq!(recent.first_time(id), fresh);
                if fresh {
                    model.push_back(n);
                    if model.len() > RECENT_POSTS {
                        model.pop_front();
                    }
                }
            }
        }
    }
}
