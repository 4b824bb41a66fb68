//! Websocket clients of `/post/feed/posted`, and instance pairs on either broker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livefeed::broker::{AmqpSettings, BrokerKind, MemoryBus};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::proxy::TcpProxy;
use super::vhost::{Rabbitmqctl, Vhost};
use super::{ApiClient, TestApp, fresh_database};

/// Bound on waiting for any one websocket event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which broker the instances of a test share.
#[derive(Debug, Clone, Copy)]
pub enum Brokers {
    Memory,
    RabbitMq,
}

impl Brokers {
    /// Two instances on one database and one broker (with RabbitMQ, in a
    /// virtual host of the test's own).
    pub async fn spawn_pair(self, extra_args: &[&str]) -> (TestApp, TestApp) {
        let database = fresh_database().await;
        match self {
            Self::Memory => {
                let bus = MemoryBus::new();
                (
                    TestApp::spawn_on_broker(
                        &database,
                        extra_args,
                        BrokerKind::Memory(bus.clone()),
                    )
                    .await,
                    TestApp::spawn_on_broker(&database, extra_args, BrokerKind::Memory(bus)).await,
                )
            }
            Self::RabbitMq => {
                let vhost = Arc::new(Vhost::create().await);
                let mut a =
                    TestApp::spawn_on_broker(&database, extra_args, rabbit_broker(vhost.url()))
                        .await;
                let mut b =
                    TestApp::spawn_on_broker(&database, extra_args, rabbit_broker(vhost.url()))
                        .await;
                a.keep(vhost.clone());
                b.keep(vhost);
                (a, b)
            }
        }
    }
}

pub fn rabbit_broker(url: &str) -> BrokerKind {
    BrokerKind::Amqp(AmqpSettings {
        url: url.to_owned(),
        instance_id: format!("test-{}", uuid::Uuid::new_v4().simple()),
        queue_expiry: std::time::Duration::from_secs(60),
    })
}

/// A proxy in front of the RabbitMQ of `vhost`, and the vhost's URL through
/// it: cutting the proxy takes RabbitMQ away from the instances given that
/// URL only.
pub async fn proxied_rabbit(vhost: &Vhost) -> (TcpProxy, String) {
    let rabbit: url::Url = vhost.url().parse().unwrap();
    let target = format!(
        "{}:{}",
        rabbit.host_str().unwrap(),
        rabbit.port().unwrap_or(5672)
    )
    .parse()
    .unwrap();
    let proxy = TcpProxy::start(target).await;
    let mut through_proxy = rabbit;
    through_proxy
        .set_port(Some(proxy.address().port()))
        .unwrap();
    (proxy, through_proxy.into())
}

/// Waits until `count` instances are connected to the RabbitMQ of `vhost`
/// (each instance queue has its consumer): posts published for a socket
/// that subscribed before its instance connected are routed nowhere.
pub async fn instances_connected(vhost: &Vhost, count: usize) {
    let name = vhost.name();
    let mut last = String::new();
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            last = Rabbitmqctl::local()
                .run(&["list_queues", "-p", name, "name", "consumers"])
                .await;
            let consumed = last
                .lines()
                .filter_map(|line| line.split_once('\t'))
                .filter(|(queue, consumers)| {
                    queue.starts_with("livefeed.instance.") && *consumers != "0"
                })
                .count();
            if consumed == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        connected.is_ok(),
        "{count} instances never connected; queues:\n{last}"
    );
}

pub struct FeedClient {
    ws: WebSocketStream<TcpStream>,
}

impl FeedClient {
    /// Connects with a bearer token and waits until the socket is subscribed.
    pub async fn connect(app: &ApiClient, token: &str) -> Self {
        Self::open(app, Some(token), "", None)
            .await
            .expect("websocket connects")
            .0
    }

    /// Connects with `query` appended to the URL (e.g. `?since=...`), the
    /// token in the Authorization header when given, and a kernel receive
    /// buffer of `receive_buffer` bytes when given. Returns once the socket
    /// is subscribed, with the catch-up posts received until then: the
    /// server answers a client ping only after subscribing and catching up,
    /// so the pong means every post created from now on is delivered.
    /// Every failure (no server, refused handshake, closed or silent before
    /// the pong) is an `Err`, for clients that retry.
    pub async fn open(
        app: &ApiClient,
        token: Option<&str>,
        query: &str,
        receive_buffer: Option<u32>,
    ) -> Result<(Self, Vec<Value>), tokio_tungstenite::tungstenite::Error> {
        let address: std::net::SocketAddr =
            app.address.trim_start_matches("http://").parse().unwrap();
        let mut request = format!("ws://{address}/post/feed/posted{query}")
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream = socket.connect(address).await?;
        let (ws, _) = tokio::time::timeout(
            EVENT_TIMEOUT,
            tokio_tungstenite::client_async(request, stream),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let mut client = Self { ws };
        client
            .ws
            .send(Message::Ping(Bytes::from_static(b"ready?")))
            .await?;
        let mut caught_up = Vec::new();
        loop {
            let event = client
                .event_within(EVENT_TIMEOUT)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
            match event {
                Some(Message::Pong(payload)) if payload.as_ref() == b"ready?" => {
                    return Ok((client, caught_up));
                }
                Some(Message::Text(text)) => caught_up.push(serde_json::from_str(&text).unwrap()),
                Some(_) => {}
                None => return Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed),
            }
        }
    }

    /// The next post, as JSON; panics after a bounded wait.
    pub async fn next_post(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(Message::Text(text)) => {
                    return serde_json::from_str(&text).expect("post is JSON");
                }
                Some(Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("expected a post, got {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns its close frame, if it sent one.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next_message().await {
                Some(Message::Close(frame)) => return frame,
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// The next message of any kind; `None` once the connection has ended.
    pub async fn next_event(&mut self) -> Option<Message> {
        self.next_message().await
    }

    /// Closes the connection the polite way and waits for the server's reply.
    pub async fn close(mut self) {
        self.ws.close(None).await.unwrap();
        while self.next_message().await.is_some() {}
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// The next message of any kind within `wait`: `Err` when none came,
    /// `Ok(None)` once the connection has ended.
    pub async fn event_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Message>, tokio::time::error::Elapsed> {
        let next = tokio::time::timeout(wait, self.ws.next()).await?;
        Ok(next.and_then(Result::ok))
    }

    async fn next_message(&mut self) -> Option<Message> {
        self.event_within(EVENT_TIMEOUT)
            .await
            .unwrap_or_else(|_| panic!("no websocket event within {EVENT_TIMEOUT:?}"))
    }
}
