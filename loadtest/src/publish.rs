//! Writes the run's posts through `POST /post/create`, open-loop at a rate,
//! spread over the instances; each post carries its sequence number, author
//! and send time in its text.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::floor::feed::Floor;
use crate::marker;
use crate::nchan::Nchan;
use crate::opts::{Target, unix_micros};
use crate::pace::Pacer;
use crate::protocol::Posted;
use crate::stats::{Latency, Tally};
use crate::token::Minter;

/// Requests in flight at once; beyond, the schedule waits (and the wait
/// shows in the create latency).
const MAX_IN_FLIGHT: usize = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Publisher {
    http: reqwest::Client,
    bases: Vec<String>,
    run: String,
    /// Pad each text to this length (0: the marker alone).
    text_bytes: usize,
    /// Token of each author (user index).
    tokens: HashMap<u32, String>,
    pub sent: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

/// What publishing did.
pub struct Published {
    pub attempted: u64,
    pub posted: Vec<Posted>,
    pub failures: Tally,
    /// From each post's due time to its create answer.
    pub create: Latency,
    pub first_sent_micros: u64,
    pub seconds: f64,
}

impl Published {
    pub fn new(attempted: usize, first_sent_micros: u64) -> Self {
        Self {
            attempted: attempted as u64,
            posted: Vec::with_capacity(attempted),
            failures: Tally::new(),
            create: Latency::default(),
            first_sent_micros,
            seconds: 0.0,
        }
    }
}

/// What a server that is not livefeed (the floor, nchan) is published to
/// with: the run's users and texts, and the counters the progress line reads.
pub struct Peer {
    run: String,
    /// Each user's id, by user index.
    users: Vec<Uuid>,
    /// Pad each text to this length, as the REST publisher does.
    text_bytes: usize,
    pub sent: AtomicU64,
    pub failed: AtomicU64,
}

impl Peer {
    pub fn new(run: &str, users: &[Uuid], text_bytes: usize) -> Self {
        Self {
            run: run.to_owned(),
            users: users.to_vec(),
            text_bytes,
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The run's posts one after the other: post `seq`, by user
    /// `schedule[seq]`, is due at `seq / rate` seconds, and its text is the
    /// one `POST /post/create` would have got. `send(author id, text)`
    /// publishes it; an `Err` names the failure.
    pub async fn publish<F, Fut>(&self, schedule: &[u32], rate: f64, mut send: F) -> Published
    where
        F: FnMut(Uuid, String) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let pacer = Pacer::new(started, rate);
        let mut published = Published::new(schedule.len(), unix_micros());
        for (seq, &author) in schedule.iter().enumerate() {
            let due = pacer.due(seq as u64);
            tokio::time::sleep_until(due).await;
            let text = marker::post_text(
                &self.run,
                seq as u32,
                author,
                pacer.due_unix_micros(seq as u64),
                self.text_bytes,
            );
            let seq = seq as u32;
            self.sent.fetch_add(1, Ordering::Relaxed);
            match send(self.users[author as usize], text).await {
                Ok(()) => published.posted.push(Posted { seq, author }),
                Err(why) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    *published.failures.entry(why).or_default() += 1;
                }
            }
            published.create.record(due.elapsed());
        }
        published.seconds = started.elapsed().as_secs_f64();
        published
    }
}

/// Where a fan-out run's posts go: livefeed's REST API, the floor, or the
/// peer (nginx+nchan).
pub enum Poster {
    Rest(Publisher),
    Floor(Box<Floor>),
    Nchan(Box<Nchan>),
}

impl Poster {
    /// Publishes `schedule` at `rate` posts per second.
    pub async fn run(&self, schedule: &[u32], rate: f64) -> Published {
        match self {
            Self::Rest(publisher) => publisher.run(schedule, rate).await,
            Self::Floor(floor) => floor.publish(schedule, rate).await,
            Self::Nchan(nchan) => nchan.publish(schedule, rate).await,
        }
    }

    /// Posts sent and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        let (sent, failed): (&AtomicU64, &AtomicU64) = match self {
            Self::Rest(publisher) => (&publisher.sent, &publisher.failed),
            Self::Floor(floor) => (&floor.peer.sent, &floor.peer.failed),
            Self::Nchan(nchan) => (&nchan.peer.sent, &nchan.peer.failed),
        };
        (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// Stops the server loadtest started for this run (the floor, nginx).
    pub async fn stop(self) {
        match self {
            Self::Rest(_) => {}
            Self::Floor(floor) => floor.stop().await,
            Self::Nchan(nchan) => nchan.stop().await,
        }
    }

    /// Before the clients close their sockets.
    pub async fn closing(&self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            // nginx answers close frames itself.
            Self::Rest(_) | Self::Nchan(_) => Ok(()),
            Self::Floor(floor) => floor.closing(timeout).await,
        }
    }
}

impl Publisher {
    pub fn new(
        targets: &[Target],
        run: &str,
        users: &[Uuid],
        schedule: &[u32],
        minter: &Minter,
        text_bytes: usize,
    ) -> anyhow::Result<Self> {
        let mut tokens = HashMap::new();
        for &author in schedule {
            tokens
                .entry(author)
                .or_insert_with(|| minter.mint(users[author as usize]));
        }
        Ok(Self {
            http: crate::http::client(REQUEST_TIMEOUT, MAX_IN_FLIGHT)?,
            bases: targets.iter().map(|t| t.base.clone()).collect(),
            run: run.to_owned(),
            text_bytes,
            tokens,
            sent: Arc::default(),
            failed: Arc::default(),
        })
    }

    /// Post `seq` is written by `schedule[seq]`, due at `seq / rate` seconds.
    pub async fn run(&self, schedule: &[u32], rate: f64) -> Published {
        let started = Instant::now();
        let pacer = Pacer::new(started, rate);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let first_sent_micros = unix_micros();
        for (seq, &author) in schedule.iter().enumerate() {
            let due = pacer.due(seq as u64);
            tokio::time::sleep_until(due).await;
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let due_micros = pacer.due_unix_micros(seq as u64);
            let seq = seq as u32;
            let url = format!(
                "{}/post/create",
                self.bases[seq as usize % self.bases.len()]
            );
            let request = self.http.post(url).bearer_auth(&self.tokens[&author]);
            let run = self.run.clone();
            let sent = self.sent.clone();
            let text_bytes = self.text_bytes;
            tasks.spawn(async move {
                let text = marker::post_text(&run, seq, author, due_micros, text_bytes);
                sent.fetch_add(1, Ordering::Relaxed);
                let outcome = create(request.json(&json!({ "text": text }))).await;
                drop(permit);
                (Posted { seq, author }, outcome, due.elapsed())
            });
        }
        let mut published = Published::new(schedule.len(), first_sent_micros);
        while let Some(joined) = tasks.join_next().await {
            let (post, outcome, latency) = joined.expect("a create task panicked");
            published.create.record(latency);
            match outcome {
                Ok(()) => published.posted.push(post),
                Err(kind) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    *published.failures.entry(kind).or_default() += 1;
                }
            }
        }
        published.posted.sort_unstable_by_key(|post| post.seq);
        published.seconds = started.elapsed().as_secs_f64();
        published
    }
}

/// Sends one create; the kind of failure if it did not answer a post id.
async fn create(request: reqwest::RequestBuilder) -> Result<(), String> {
    let response = request.send().await.map_err(|e| request_error(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("http {}", status.as_u16()));
    }
    match response.json::<String>().await {
        Ok(id) if Uuid::parse_str(&id).is_ok() => Ok(()),
        Ok(_) => Err("answer is not a post id".into()),
        Err(e) => Err(request_error(&e)),
    }
}

pub fn request_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else if error.is_decode() {
        "bad answer".into()
    } else {
        "request".into()
    }
}
