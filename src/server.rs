//! The accept loop: one task per connection, a cap on open connections, and
//! a graceful shutdown that lets in-flight requests finish, within its grace
//! period and never longer.
//!
//! Every accepted socket gets TCP keepalive and `TCP_USER_TIMEOUT`, so the
//! kernel gives up on a peer that vanished (its host died, its network went)
//! within about a minute instead of retransmitting for a quarter of an hour.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::http;

/// Time a client gets to send its request headers before it is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before the first keepalive probe, the time between probes, and
/// how many unanswered probes end the connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
/// Longest sent data may stay unacknowledged before the kernel closes the
/// connection.
const USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the kernel queues before `accept`: a storm of websocket
/// clients overflows the usual 128 (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

/// A listener for [`run`], with a backlog sized for connection storms.
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Small JSON responses must not wait for Nagle's algorithm, and a dead
/// peer must be found out (see the module doc). Failing to set an option
/// costs only that option.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| socket.set_tcp_user_timeout(Some(USER_TIMEOUT)))
    {
        tracing::debug!(error = %e, "cannot set TCP keepalive options");
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, waits up to the configured grace period for open requests to
/// finish, and returns.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(app.limits.max_connections));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);

    loop {
        // Waiting for a free slot before accepting leaves excess clients in
        // the kernel's backlog rather than failing them (mini-redis does the same).
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tune(&stream);
        let app = app.clone();
        let service = service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(http::Peer(peer));
            let app = app.clone();
            async move { Ok::<_, Infallible>(http::handle(app, request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            // On shutdown, hyper finishes the request in flight (if any),
            // then closes the connection instead of waiting for another.
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: no longer accepting, finishing open requests");
    stop.cancel();
    connections.close();
    let requests_done = async {
        match tokio::time::timeout(app.limits.shutdown_grace, connections.wait()).await {
            Ok(()) => tracing::info!("all HTTP connections closed"),
            Err(_) => tracing::warn!("grace period over, dropping the remaining connections"),
        }
    };
    // Websockets left hyper at their upgrade: they are closed (1001) by the
    // realtime side, at the same time as HTTP requests finish.
    tokio::join!(requests_done, app.shutdown(app.limits.shutdown_grace));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_find_out_about_dead_peers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        tune(&accepted);
        let socket = SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        assert!(accepted.nodelay().unwrap());
    }
}
