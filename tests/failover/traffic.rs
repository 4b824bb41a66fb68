//! The load a fault is measured under: authors posting at a steady rate,
//! each through its home address, and followers' websockets recording every
//! post they receive and when. With `reconnect`, a socket behaves as a real
//! client: when it is closed it connects again (to the same address, which
//! may be a balancer) with `?since=<last post id received>`. What was sent
//! and what arrived is kept in a `Ledger` and a `Reception` per socket, for
//! `report` to judge; nothing here asserts delivery. Shared by the broker
//! suite (tests/failover.rs) and the fault suite (tests/faults.rs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::report::Verdict;
use crate::support::{ApiClient, FeedClient, TestUser};

/// Posts per second, all authors together.
pub const POSTS_PER_SECOND: u32 = 20;
const AUTHORS: usize = 4;
const FOLLOWERS: usize = 3;
/// Bound on the load reaching every socket before the fault.
const FLOWING_TIMEOUT: Duration = Duration::from_secs(20);
/// Load kept on after the fault is repaired: the catching-up is measured too.
const SETTLE: Duration = Duration::from_secs(4);
/// How long a reader waits for a message before looking at its stop signal.
const READ_SLICE: Duration = Duration::from_millis(200);

/// What became of one post's `/post/create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent, no answer yet.
    Pending,
    /// Answered 200: committed, so every follower must get it.
    Created,
    /// Failed or timed out: it may or may not have been committed, so a
    /// follower may get it (once) or not.
    Uncertain,
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub author: usize,
    pub seq: u64,
    pub at: Instant,
    pub outcome: Outcome,
}

/// Every post sent, by text (`<author>/<seq>`, unique within a scenario).
#[derive(Default, Clone)]
pub struct Ledger(Arc<Mutex<HashMap<String, Sent>>>);

impl Ledger {
    pub fn snapshot(&self) -> HashMap<String, Sent> {
        self.0.lock().unwrap().clone()
    }

    fn record(&self, text: &str, sent: Sent) {
        self.0.lock().unwrap().insert(text.to_owned(), sent);
    }

    fn settle(&self, text: &str, outcome: Outcome) {
        if let Some(sent) = self.0.lock().unwrap().get_mut(text) {
            sent.outcome = outcome;
        }
    }
}

/// What one websocket received, in order.
#[derive(Default)]
pub struct Reception {
    pub posts: Vec<(String, Instant)>,
    /// The `postId` of the last post received: the `?since=` of a reconnect.
    last_id: Option<String>,
    /// Why the socket ended for good before the test stopped reading, if it did.
    pub ended: Option<String>,
    /// How each connection but the last ended, when the socket reconnected.
    pub reconnects: Vec<String>,
    /// Posts a `?since=` catch-up sent that this socket already had: the
    /// README allows them (a post committed in the same instant as `since`)
    /// and tells clients to drop them by `postId`, as this one does.
    pub resent: usize,
}

/// Where a follower's socket connects (and reconnects).
pub struct Dial {
    /// `A`, `B`, `nginx`: names the socket in the report.
    pub label: String,
    pub address: String,
}

pub struct Socket {
    /// `follower N on instance X`
    pub name: String,
    pub reception: Arc<Mutex<Reception>>,
}

/// The users of a scenario: authors (even ones at home on the first
/// instance, odd ones on the second) and followers who follow all of them.
pub struct Cast {
    pub authors: Vec<TestUser>,
    pub followers: Vec<TestUser>,
}

impl Cast {
    pub async fn register(api: &ApiClient) -> Self {
        let mut cast = Self {
            authors: Vec::new(),
            followers: Vec::new(),
        };
        for n in 0..AUTHORS {
            cast.authors
                .push(api.register("Автор", &format!("Отказов{n}")).await);
        }
        for n in 0..FOLLOWERS {
            let follower = api.register("Читатель", &format!("Стойкий{n}")).await;
            for author in &cast.authors {
                api.follow(&follower, author).await;
            }
            cast.followers.push(follower);
        }
        cast
    }
}

/// The running load: stopped (posters first, then readers) by `stop_*`.
pub struct Traffic {
    pub ledger: Ledger,
    pub sockets: Vec<Socket>,
    posting: CancellationToken,
    reading: CancellationToken,
    posters: JoinSet<()>,
    readers: JoinSet<()>,
}

impl Traffic {
    /// Connects every follower once to each of `dials` (each socket is
    /// subscribed when this returns), then starts the authors, author `n`
    /// posting through `homes[n % homes.len()]`.
    pub async fn start(cast: &Cast, homes: &[String], dials: &[Dial], reconnect: bool) -> Self {
        let mut traffic = Self {
            ledger: Ledger::default(),
            sockets: Vec::new(),
            posting: CancellationToken::new(),
            reading: CancellationToken::new(),
            posters: JoinSet::new(),
            readers: JoinSet::new(),
        };
        for (n, follower) in cast.followers.iter().enumerate() {
            for dial in dials {
                let api = ApiClient::new(dial.address.clone());
                let client = FeedClient::connect(&api, &follower.token).await;
                let reception = Arc::new(Mutex::new(Reception::default()));
                let reader = Reader {
                    api,
                    token: follower.token.clone(),
                    reception: reception.clone(),
                    stop: traffic.reading.clone(),
                    reconnect,
                };
                traffic.readers.spawn(reader.run(client));
                traffic.sockets.push(Socket {
                    name: format!("follower {n} on {}", dial.label),
                    reception,
                });
            }
        }
        let interval = Duration::from_secs(1) * cast.authors.len() as u32 / POSTS_PER_SECOND;
        for (n, author) in cast.authors.iter().enumerate() {
            let home = ApiClient::new(homes[n % homes.len()].clone());
            traffic.posters.spawn(post(
                home,
                author.clone(),
                n,
                interval,
                traffic.ledger.clone(),
                traffic.posting.clone(),
            ));
        }
        traffic
    }

    /// Waits until every socket has received at least one post of each
    /// author: the load is flowing end to end.
    async fn flowing(&self, authors: usize, within: Duration) {
        self.await_condition(within, "every socket gets posts of every author", || {
            self.sockets.iter().all(|socket| {
                let reception = socket.reception.lock().unwrap();
                (0..authors).all(|author| {
                    let prefix = format!("{author}/");
                    reception
                        .posts
                        .iter()
                        .any(|(text, _)| text.starts_with(&prefix))
                })
            })
        })
        .await;
    }

    /// Stops the authors; returns once no create is in flight.
    async fn stop_posting(&mut self) {
        self.posting.cancel();
        while self.posters.join_next().await.is_some() {}
    }

    /// Waits (at most `within`) until every socket has every created post or
    /// has ended, then stops the readers. Returns whether it all arrived.
    async fn drain(&mut self, within: Duration) -> bool {
        let ledger = self.ledger.snapshot();
        let created: Vec<&String> = ledger
            .iter()
            .filter(|(_, sent)| sent.outcome == Outcome::Created)
            .map(|(text, _)| text)
            .collect();
        let complete = tokio::time::timeout(within, async {
            loop {
                let done = self.sockets.iter().all(|socket| {
                    let reception = socket.reception.lock().unwrap();
                    if reception.ended.is_some() {
                        return true;
                    }
                    let got: std::collections::HashSet<&String> =
                        reception.posts.iter().map(|(text, _)| text).collect();
                    created.iter().all(|text| got.contains(text))
                });
                if done {
                    return;
                }
                tokio::time::sleep(READ_SLICE).await;
            }
        })
        .await
        .is_ok();
        self.reading.cancel();
        while self.readers.join_next().await.is_some() {}
        complete
    }

    async fn await_condition(&self, within: Duration, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "not within {within:?}: {what}");
            tokio::time::sleep(READ_SLICE).await;
        }
    }
}

/// The load of a scenario: who posts and follows, where (see
/// `Traffic::start`), and how long the drain may take.
pub struct Load<'a> {
    pub cast: &'a Cast,
    pub homes: &'a [String],
    pub dials: &'a [Dial],
    pub reconnect: bool,
    pub drain_within: Duration,
}

/// A fault under load: starts the traffic, waits until it flows, runs
/// `fault` on `stage` (it returns what it hit), keeps the load on for a
/// while after it, stops posting, waits for the posts to arrive, and judges
/// what every socket received. The delays are measured over the posts sent
/// while the fault ran.
pub async fn measure<S>(
    suite: &str,
    name: &str,
    load: Load<'_>,
    stage: &mut S,
    fault: impl AsyncFnOnce(&mut S) -> String,
) -> Verdict {
    let mut traffic = Traffic::start(load.cast, load.homes, load.dials, load.reconnect).await;
    traffic
        .flowing(load.cast.authors.len(), FLOWING_TIMEOUT)
        .await;
    eprintln!("{suite}: {name}: fault");
    let started = Instant::now();
    let target = fault(stage).await;
    let repaired = Instant::now();
    eprintln!(
        "{suite}: {name}: {target}, repaired after {:?}",
        repaired - started
    );
    tokio::time::sleep(SETTLE).await;
    traffic.stop_posting().await;
    traffic.drain(load.drain_within).await;
    Verdict::judge(
        format!("{name} ({target})"),
        &traffic.ledger.snapshot(),
        &traffic.sockets,
        (started, repaired),
    )
}

/// One author posting `<author>/<seq>` every `interval`, one create at a
/// time (so its posts have one order), until `stop`.
async fn post(
    home: ApiClient,
    author: TestUser,
    index: usize,
    interval: Duration,
    ledger: Ledger,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for seq in 1.. {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let text = format!("{index}/{seq}");
        ledger.record(
            &text,
            Sent {
                author: index,
                seq,
                at: Instant::now(),
                outcome: Outcome::Pending,
            },
        );
        let created = home
            .request(
                Method::POST,
                "/post/create",
                Some(&author.token),
                Some(json!({ "text": text })),
            )
            .send()
            .await;
        let outcome = match created {
            Ok(response) if response.status() == StatusCode::OK => Outcome::Created,
            _ => Outcome::Uncertain,
        };
        ledger.settle(&text, outcome);
    }
}

/// Pause between two attempts of a socket to reconnect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// One follower's socket, as a client program would run it.
struct Reader {
    api: ApiClient,
    token: String,
    reception: Arc<Mutex<Reception>>,
    stop: CancellationToken,
    reconnect: bool,
}

impl Reader {
    /// Reads until `stop`; when the connection ends, reconnects with
    /// `?since=` (if `reconnect`) or records the end.
    async fn run(self, mut client: FeedClient) {
        loop {
            let Some(why) = self.read(&mut client).await else {
                return;
            };
            if !self.reconnect {
                self.reception.lock().unwrap().ended = Some(why);
                return;
            }
            match self.connect_again().await {
                Ok(again) => {
                    self.reception.lock().unwrap().reconnects.push(why);
                    client = again;
                }
                Err(error) => {
                    self.reception.lock().unwrap().ended =
                        Some(format!("{why}; no reconnect before the end: {error}"));
                    return;
                }
            }
        }
    }

    /// Retries until connected (the catch-up recorded) or `stop`.
    async fn connect_again(&self) -> Result<FeedClient, String> {
        let mut last_error = String::new();
        while !self.stop.is_cancelled() {
            let since = self.reception.lock().unwrap().last_id.clone();
            let query = since.map_or_else(String::new, |id| format!("?since={id}"));
            match FeedClient::open(&self.api, Some(&self.token), &query, None).await {
                Ok((client, caught_up)) => {
                    let at = Instant::now();
                    let mut reception = self.reception.lock().unwrap();
                    for post in &caught_up {
                        reception.record_caught_up(post, at);
                    }
                    return Ok(client);
                }
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        Err(last_error)
    }

    /// Records every post `client` receives; `None` at `stop`, else why
    /// the connection ended.
    async fn read(&self, client: &mut FeedClient) -> Option<String> {
        while !self.stop.is_cancelled() {
            let Ok(event) = client.event_within(READ_SLICE).await else {
                continue;
            };
            let at = Instant::now();
            match event {
                Some(Message::Text(text)) => {
                    let post: Value = serde_json::from_str(&text).expect("a post is JSON");
                    self.reception.lock().unwrap().record(&post, at);
                }
                Some(Message::Close(frame)) => {
                    return Some(match frame {
                        Some(frame) => {
                            format!("closed {} {:?}", u16::from(frame.code), frame.reason)
                        }
                        None => "closed without a code".to_owned(),
                    });
                }
                Some(_) => {}
                None => return Some("connection ended".into()),
            }
        }
        None
    }
}

impl Reception {
    fn record_caught_up(&mut self, post: &Value, at: Instant) {
        let text = post["postText"].as_str().unwrap_or_default();
        if self.posts.iter().any(|(received, _)| received == text) {
            self.resent += 1;
        } else {
            self.record(post, at);
        }
    }

    fn record(&mut self, post: &Value, at: Instant) {
        let text = post["postText"].as_str().unwrap_or_default().to_owned();
        self.posts.push((text, at));
        if let Some(id) = post["postId"].as_str() {
            self.last_id = Some(id.to_owned());
        }
    }
}
