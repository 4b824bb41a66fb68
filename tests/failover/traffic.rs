//! The load a fault is measured under: authors posting at a steady rate,
//! each through its home instance, and followers' websockets on both
//! instances recording every post they receive and when. What was sent and
//! what arrived is kept in a `Ledger` and a `Reception` per socket, for
//! `report` to judge; nothing here asserts delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;
use crate::support::{ApiClient, FeedClient, TestUser};

/// Posts per second, all authors together.
pub const POSTS_PER_SECOND: u32 = 20;
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
    /// Why the socket ended before the test stopped reading, if it did.
    pub ended: Option<String>,
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
    pub async fn register(api: &ApiClient, authors: usize, followers: usize) -> Self {
        let mut cast = Self {
            authors: Vec::new(),
            followers: Vec::new(),
        };
        for n in 0..authors {
            cast.authors
                .push(api.register("Автор", &format!("Отказов{n}")).await);
        }
        for n in 0..followers {
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
    /// Connects every follower to every instance, then starts the authors.
    pub async fn start(cast: &Cast, instances: &[&Instance]) -> Self {
        let mut traffic = Self {
            ledger: Ledger::default(),
            sockets: Vec::new(),
            posting: CancellationToken::new(),
            reading: CancellationToken::new(),
            posters: JoinSet::new(),
            readers: JoinSet::new(),
        };
        for (n, follower) in cast.followers.iter().enumerate() {
            for instance in instances {
                let client = FeedClient::connect(&instance.api, &follower.token).await;
                let reception = Arc::new(Mutex::new(Reception::default()));
                traffic
                    .readers
                    .spawn(read(client, reception.clone(), traffic.reading.clone()));
                traffic.sockets.push(Socket {
                    name: format!("follower {n} on {}", instance.label),
                    reception,
                });
            }
        }
        let interval = Duration::from_secs(1) * cast.authors.len() as u32 / POSTS_PER_SECOND;
        for (n, author) in cast.authors.iter().enumerate() {
            let home = ApiClient::new(instances[n % instances.len()].api.address.clone());
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
    pub async fn flowing(&self, authors: usize, within: Duration) {
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
    pub async fn stop_posting(&mut self) {
        self.posting.cancel();
        while self.posters.join_next().await.is_some() {}
    }

    /// Waits (at most `within`) until every socket has every created post or
    /// has ended, then stops the readers. Returns whether it all arrived.
    pub async fn drain(&mut self, within: Duration) -> bool {
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

/// Records every post `client` receives until `stop`, or until it ends.
async fn read(mut client: FeedClient, reception: Arc<Mutex<Reception>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(event) = client.event_within(READ_SLICE).await else {
            continue;
        };
        let at = Instant::now();
        let mut reception = reception.lock().unwrap();
        match event {
            Some(Message::Text(text)) => {
                let post: Value = serde_json::from_str(&text).expect("a post is JSON");
                let text = post["postText"].as_str().unwrap_or_default().to_owned();
                reception.posts.push((text, at));
            }
            Some(Message::Close(frame)) => {
                reception.ended = Some(format!("closed by the server: {frame:?}"));
                return;
            }
            Some(_) => {}
            None => {
                reception.ended = Some("connection ended".into());
                return;
            }
        }
    }
}
