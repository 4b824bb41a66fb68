//! `loadtest floor`: accepts websocket subscribers on loopback TCP, then,
//! for each post named on stdin, builds the frame once and writes it to
//! every subscriber with one blocking `write()` each, on one thread.
//!
//! Stdin carries one JSON [`Order`] per line; the first line on stdout is
//! the address it listens on. Closing stdin ends it. A subscriber is kept
//! once its upgrade is answered and its first ping (the loadtest client's
//! readiness probe) is answered with a pong; after that the floor never
//! reads from it until [`Order::Close`].

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use uuid::Uuid;

/// For a client to send its upgrade request and its ping.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8192;
/// Opcode 0x8, status 1000 (normal closure).
const CLOSE_FRAME: [u8; 4] = [0x88, 0x02, 0x03, 0xE8];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// What the parent tells the floor, one per line on its stdin.
#[derive(Serialize, Deserialize)]
#[serde(tag = "order", rename_all = "snake_case")]
pub enum Order {
    /// Deliver one post to every subscriber.
    Post { author: Uuid, text: String },
    /// Answer each subscriber's close frame (waiting at most `timeout_ms`
    /// in all) and drop every socket.
    Close { timeout_ms: u64 },
}

/// The livefeed payload's shape and field order.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "postId")]
    post_id: Uuid,
    #[serde(rename = "postText")]
    post_text: &'a str,
    author_user_id: Uuid,
}

type Subscribers = Arc<Mutex<Vec<TcpStream>>>;

pub fn main(args: &Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).context("binding the floor's listener")?;
    let addr = listener.local_addr()?;
    let subscribers = Subscribers::default();
    std::thread::spawn({
        let subscribers = subscribers.clone();
        move || accept(&listener, &subscribers)
    });
    let mut out = io::stdout().lock();
    writeln!(out, "{addr}")?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        match serde_json::from_str::<Order>(&line?).context("reading an order")? {
            Order::Post { author, text } => {
                let frame = frame(author, &text);
                let mut sockets = subscribers.lock().expect("subscribers lock");
                // A socket whose write fails is gone: dropping it is all.
                sockets.retain(|mut socket| socket.write_all(&frame).is_ok());
            }
            Order::Close { timeout_ms } => {
                let sockets = std::mem::take(&mut *subscribers.lock().expect("subscribers lock"));
                close(sockets, Duration::from_millis(timeout_ms));
            }
        }
    }
    Ok(())
}

/// Upgrades connections one after the other; one that misbehaves is dropped.
fn accept(listener: &TcpListener, subscribers: &Subscribers) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if upgrade(&mut stream).is_ok() {
            subscribers.lock().expect("subscribers lock").push(stream);
        }
    }
}

/// Answers the upgrade request and the first ping.
fn upgrade(stream: &mut TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let request = read_request(stream)?;
    let Some(key) = websocket_key(&request) else {
        stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")?;
        return Err(bad("not a websocket upgrade"));
    };
    let accept = derive_accept_key(key.as_bytes());
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )?;
    let ping = read_small_frame(stream, 0x9)?;
    let mut pong = vec![0x8A, ping.len() as u8];
    pong.extend_from_slice(&ping);
    stream.write_all(&pong)?;
    stream.set_read_timeout(None)
}

fn read_request(stream: &mut TcpStream) -> io::Result<String> {
    let mut buffer = vec![0; MAX_REQUEST];
    let mut len = 0;
    while !buffer[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buffer.len() {
            return Err(bad("request too large"));
        }
        match stream.read(&mut buffer[len..])? {
            0 => return Err(bad("closed during the request")),
            n => len += n,
        }
    }
    buffer.truncate(len);
    String::from_utf8(buffer).map_err(|_| bad("request is not UTF-8"))
}

fn websocket_key(request: &str) -> Option<&str> {
    request.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })
}

/// One client frame of `opcode` with a payload under 126 bytes, unmasked.
fn read_small_frame(stream: &mut TcpStream, opcode: u8) -> io::Result<Vec<u8>> {
    let mut head = [0; 2];
    stream.read_exact(&mut head)?;
    let len = usize::from(head[1] & 0x7F);
    if head[0] & 0x0F != opcode || len > 125 {
        return Err(bad("unexpected frame"));
    }
    let mut mask = [0; 4];
    if head[1] & 0x80 != 0 {
        stream.read_exact(&mut mask)?;
    }
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload)?;
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(payload)
}

/// A text frame holding the post's JSON: header and payload, built once.
/// The payload livefeed sends for a post of `author` with `text`, under a
/// fresh post id.
pub fn payload(author: Uuid, text: &str) -> String {
    serde_json::to_string(&Payload {
        post_id: Uuid::now_v7(),
        post_text: text,
        author_user_id: author,
    })
    .expect("plain data serialises")
}

pub fn frame(author: Uuid, text: &str) -> Vec<u8> {
    let payload = payload(author, text);
    let len = payload.len();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81);
    match len {
        0..=125 => frame.push(len as u8),
        126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// Waits for each socket's close frame (any bytes will do: the client
/// sends nothing else) and answers it, all within `timeout`.
fn close(sockets: Vec<TcpStream>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buffer = [0; 256];
    for mut socket in sockets {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if socket.set_read_timeout(Some(left)).is_ok()
            && matches!(socket.read(&mut buffer), Ok(n) if n > 0)
        {
            let _ = socket.write_all(&CLOSE_FRAME);
        }
    }
}

fn bad(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_livefeed_payload() {
        let author = Uuid::now_v7();
        let text = "x".repeat(200);
        let frame = frame(author, &text);
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1], 126);
        let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
        assert_eq!(frame.len(), len + 4);
        let payload: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
        assert_eq!(payload["postText"], text.as_str());
        assert_eq!(payload["author_user_id"], author.to_string());
        let short = super::frame(author, "hi");
        assert_eq!(usize::from(short[1]), short.len() - 2);
    }

    #[test]
    fn finds_the_key_whatever_its_case() {
        let request = "GET / HTTP/1.1\r\nHost: x\r\nsec-WebSocket-KEY:  abc== \r\n\r\n";
        assert_eq!(websocket_key(request), Some("abc=="));
        assert_eq!(websocket_key("GET / HTTP/1.1\r\n\r\n"), None);
    }
}
