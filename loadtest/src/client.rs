//! One websocket subscriber: connect (from a chosen source address), ping
//! until the server answers (it does so only once the socket is
//! subscribed), then hand every frame to an [`Observer`] until told to
//! close. Every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::opts::Target;

/// Posts are at most 10,000 characters; JSON and UTF-8 stay under this.
const MAX_MESSAGE: usize = 1 << 20;

/// What a worker learns from its clients. All calls for one client come
/// from that client's task, in order.
pub trait Observer {
    /// The upgrade was answered with 101.
    fn connected(&self, client: usize, handshake: Duration);
    /// The ping was answered: the socket is subscribed.
    fn ready(&self, client: usize, since_start: Duration);
    /// The client never became ready.
    fn failed(&self, client: usize, reason: String);
    /// A text frame, borrowed for the call.
    fn frame(&self, client: usize, text: &[u8]);
    /// A ready socket ended before it was told to close.
    fn disconnected(&self, client: usize, reason: String);
    /// The socket was closed on request: `Ok` if the server answered our
    /// close frame with its own, else what happened instead.
    fn closed(&self, client: usize, outcome: Result<(), String>);
}

/// How clients reach the instances; one per worker.
pub struct Dialer {
    pub targets: Vec<Target>,
    pub source_ip: Option<IpAddr>,
    pub timeout: Duration,
    /// Bounds the connections being opened at once.
    pub opening: Semaphore,
}

/// Runs one client until it fails, the server drops it, or `stop` carries
/// a close timeout.
pub async fn session<O: Observer>(
    dialer: Rc<Dialer>,
    observer: Rc<O>,
    client: usize,
    target: usize,
    token: String,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let Ok(opening) = dialer.opening.acquire().await else {
        return observer.failed(client, "dialer closed".into());
    };
    let started = Instant::now();
    let target = &dialer.targets[target];
    let mut ws =
        match tokio::time::timeout(dialer.timeout, connect(target, dialer.source_ip, &token)).await
        {
            Ok(Ok(ws)) => ws,
            Ok(Err(reason)) => return observer.failed(client, reason),
            Err(_) => return observer.failed(client, "timeout: handshake".into()),
        };
    observer.connected(client, started.elapsed());
    if let Err(e) = ws.send(Message::Ping(Bytes::from_static(b"lt"))).await {
        return observer.failed(client, classify(&e));
    }
    let mut opening = Some(opening);
    let ready_by = tokio::time::sleep(dialer.timeout);
    tokio::pin!(ready_by);
    let end = |reason: String, ready: bool| {
        if ready {
            observer.disconnected(client, reason);
        } else {
            observer.failed(client, reason);
        }
    };
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => observer.frame(client, text.as_bytes()),
                Some(Ok(Message::Pong(_))) if opening.is_some() => {
                    opening = None;
                    observer.ready(client, started.elapsed());
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = match frame {
                        Some(frame) => format!("closed by server: {} {}", u16::from(frame.code), frame.reason),
                        None => "closed by server".to_owned(),
                    };
                    return end(reason, opening.is_none());
                }
                // Pings are answered by tungstenite on the next read.
                Some(Ok(_)) => {}
                Some(Err(e)) => return end(classify(&e), opening.is_none()),
                None => return end("eof".into(), opening.is_none()),
            },
            () = &mut ready_by, if opening.is_some() => {
                return observer.failed(client, "timeout: ready".into());
            }
            changed = stop.changed() => {
                let timeout = match changed {
                    Ok(()) => match *stop.borrow_and_update() {
                        Some(timeout) => timeout,
                        None => continue,
                    },
                    Err(_) => Duration::ZERO,
                };
                let outcome = close(&mut ws, timeout).await;
                return observer.closed(client, outcome);
            }
        }
    }
}

async fn connect(
    target: &Target,
    source_ip: Option<IpAddr>,
    token: &str,
) -> Result<WebSocketStream<TcpStream>, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {:?}", e.kind());
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| io("socket", e))?;
    if let Some(ip) = source_ip {
        // Port 0: the kernel picks one from this address's own range.
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| io("bind", e))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| io("connect", e))?;
    let _ = stream.set_nodelay(true);
    let mut request = target
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| classify(&e))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "token is not a header value".to_owned())?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| classify(&e))?;
    Ok(ws)
}

/// Sends a close frame and waits for the server's close frame (RFC 6455
/// 5.5.1: an endpoint answers a close with a close).
async fn close(ws: &mut WebSocketStream<TcpStream>, timeout: Duration) -> Result<(), String> {
    let handshake = async {
        ws.close(None).await.map_err(|e| classify(&e))?;
        loop {
            match ws.next().await {
                // tungstenite ends the stream once the server's close arrived.
                None | Some(Err(WsError::ConnectionClosed)) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(classify(&e)),
            }
        }
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .unwrap_or_else(|_| Err("timeout: close".into()))
}

/// A short, stable name for an error, to count failures by kind.
pub fn classify(error: &WsError) -> String {
    match error {
        WsError::Http(response) => format!("http {}", response.status().as_u16()),
        WsError::Io(e) => format!("io: {:?}", e.kind()),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(e) => format!("protocol: {e}"),
        WsError::Capacity(e) => format!("capacity: {e}"),
        other => format!("websocket: {other}"),
    }
}
