//! Bad clients: one that stops reading its websocket, one that vanishes
//! (its machine gone: no close frame, no FIN, nothing acknowledged past
//! what the buffers hold). Each is an extra follower beside the judged
//! ones; what the server does about it is observed through `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::scenario::{Broker, Setup, Stage};
use crate::support::{ApiClient, FeedClient, TestUser};

const SLOW_CLOSES: &str = "livefeed_slow_consumer_closes_total";
const OPEN_SOCKETS: &str = "livefeed_open_sockets";

/// Kernel receive buffer of a bad client's socket: small, so the server's
/// writes back up soon.
pub const SMALL_BUFFER: u32 = 4096;
const POLL: Duration = Duration::from_millis(50);

/// A forwarder between a client and an instance that can go silent: it
/// stops reading and writing on both sides but keeps every connection open,
/// as a peer whose machine vanished. Its listening socket has a small
/// receive buffer, so the instance's writes stall soon.
pub struct Blackhole {
    pub address: SocketAddr,
    silent: watch::Sender<bool>,
    forwarding: JoinHandle<()>,
}

impl Blackhole {
    pub async fn start(target: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SMALL_BUFFER).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let address = listener.local_addr().unwrap();
        let (silent, watching) = watch::channel(false);
        let forwarding = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    tokio::join!(
                        pump(from_client, to_server, watching.clone()),
                        pump(from_server, to_client, watching),
                    );
                });
            }
        });
        Self {
            address,
            silent,
            forwarding,
        }
    }

    /// From now on nothing passes either way; the connections stay open.
    pub fn vanish(&self) {
        self.silent.send_replace(true);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.forwarding.abort();
    }
}

/// Copies until the end, or until silenced: then it holds both halves
/// without touching them until the test ends.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut silent: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(n @ 1..) => n,
                _ => return,
            },
            _ = silent.wait_for(|silent| *silent) => break,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
    // Holds the connection until the forwarder is aborted (the test ends).
    std::future::pending::<()>().await;
    drop((from, to));
}

/// Polls gauge or counter `name` of `api` until `done` holds; returns how
/// long that took, `None` if not within `within`.
pub async fn metric_reaches(
    api: &ApiClient,
    name: &str,
    within: Duration,
    done: impl Fn(u64) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if done(api.metric(name).await) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// A short socket queue and a small send buffer: a client that stops
/// reading overflows within seconds at the suite's post rate.
pub fn slow_setup() -> Setup {
    Setup {
        env: vec![
            ("LIVEFEED_SOCKET_QUEUE", "64".into()),
            ("LIVEFEED_WS_SEND_BUFFER", SMALL_BUFFER.to_string()),
        ],
        ..Setup::on(Broker::RabbitMq)
    }
}

/// Bound on the server closing a client that stopped reading.
const SLOW_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// An extra follower of every author on instance B that never reads after
/// subscribing: B must close it as a slow consumer (1008, counted in
/// `livefeed_slow_consumer_closes_total`) while the others get everything.
pub async fn stop_reading(stage: &mut Stage) -> String {
    let b = &stage.b().api;
    let closes_before = b.metric(SLOW_CLOSES).await;
    let reader = extra_follower(stage).await;
    let b = &stage.b().api;
    let (mut slow, _) = FeedClient::open(b, Some(&reader.token), "", Some(SMALL_BUFFER))
        .await
        .expect("the slow client connects");
    let closed = metric_reaches(b, SLOW_CLOSES, SLOW_CLOSE_TIMEOUT, |closes| {
        closes > closes_before
    })
    .await;
    let Some(after) = closed else {
        stage.failures.push(format!(
            "the client that stopped reading was not closed within {SLOW_CLOSE_TIMEOUT:?}"
        ));
        return "not closed".into();
    };
    // What the client finds once it reads again: the posts its buffers
    // held, then (if the server got it through) the close frame.
    let mut seen = "no close frame".to_owned();
    while let Ok(Some(event)) = slow.event_within(Duration::from_secs(2)).await {
        if let Message::Close(frame) = event {
            seen = frame.map_or("close without a code".into(), |frame| {
                format!("close {}", u16::from(frame.code))
            });
            break;
        }
    }
    format!(
        "closed as slow after {} ms, counted; client saw {seen}",
        after.as_millis()
    )
}

/// Pings every second (a vanished peer never answers), the default socket
/// queue (so only the missing pong, not an overflow, ends it soon), a
/// small send buffer (so the pings' writes stall).
pub fn vanish_setup() -> Setup {
    Setup {
        env: vec![
            ("LIVEFEED_PING_INTERVAL_SECS", "1".into()),
            ("LIVEFEED_WS_SEND_BUFFER", SMALL_BUFFER.to_string()),
        ],
        ..Setup::on(Broker::RabbitMq)
    }
}

/// Bound on instance B letting go of a vanished client.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

/// Posts (of the longest text allowed) a loud author sends the vanished
/// client right after it vanishes: enough to fill every buffer on the way,
/// so the server's next writes (its pings) stall.
const FILLING_POSTS: usize = 16;
const LONGEST_TEXT: usize = 10_000;

/// An extra follower on instance B behind a `Blackhole` that goes silent,
/// its buffers then filled by a loud author only it follows: B must release
/// the socket (its open-socket gauge back down) within a few ping
/// intervals, although every write to it blocks.
pub async fn vanish(stage: &mut Stage) -> String {
    let reader = extra_follower(stage).await;
    let loud = stage.a.api.register("Громкий", "Автор").await;
    stage.a.api.follow(&reader, &loud).await;
    let b = &stage.b().api;
    let sockets_before = b.metric(OPEN_SOCKETS).await;
    let blackhole = Blackhole::start(stage.b().address()).await;
    let through = ApiClient::new(format!("http://{}", blackhole.address));
    let (client, _) = FeedClient::open(&through, Some(&reader.token), "", None)
        .await
        .expect("the vanishing client connects");
    let b = &stage.b().api;
    let connected = metric_reaches(b, OPEN_SOCKETS, RELEASE_TIMEOUT, |open| {
        open > sockets_before
    })
    .await;
    assert!(
        connected.is_some(),
        "the vanishing client's socket never showed"
    );
    blackhole.vanish();
    let text = "ы".repeat(LONGEST_TEXT);
    for _ in 0..FILLING_POSTS {
        b.create_post(&loud, &text).await;
    }
    let released = metric_reaches(b, OPEN_SOCKETS, RELEASE_TIMEOUT, |open| {
        open <= sockets_before
    })
    .await;
    drop(client);
    match released {
        Some(after) => format!("released after {} ms", after.as_millis()),
        None => {
            stage.failures.push(format!(
                "instance B still held the vanished client's socket after {RELEASE_TIMEOUT:?}"
            ));
            "never released".into()
        }
    }
}

/// A new user who follows every author of the scenario.
async fn extra_follower(stage: &Stage) -> TestUser {
    let api = &stage.a.api;
    let reader = api.register("Плохой", "Клиент").await;
    for author in &stage.authors {
        api.follow(&reader, author).await;
    }
    reader
}
