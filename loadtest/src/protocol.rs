//! What the parent and its worker processes say to each other, one JSON
//! object per line: a [`Job`] then [`Command`]s on the worker's stdin,
//! [`Event`]s on its stdout. Closing the worker's stdin ends it.
//!
//! ```text
//! parent                          worker
//!   Job ─────────────────────────▶ connect every client, ping each
//!       ◀───────────────────────── Progress (every second, throughout)
//!       ◀───────────────────────── Ready   (every client subscribed or failed)
//!   (publish posts)                 count deliveries per client
//!   Finish{posts} ───────────────▶ wait for the missing ones (bounded)
//!       ◀───────────────────────── Drained (lost, duplicates, latency)
//!   Close ───────────────────────▶ close every socket
//!       ◀───────────────────────── Closed
//!   (stdin closed) ──────────────▶ exit
//! ```

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::opts::Target;
use crate::stats::{Latency, Tally};

#[derive(Serialize, Deserialize)]
pub struct Job {
    pub run: String,
    pub jwt_secret: String,
    /// Bind every socket to this address before connecting.
    pub source_ip: Option<std::net::IpAddr>,
    pub targets: Vec<Target>,
    pub clients: Vec<ClientSpec>,
    /// Sequence numbers run `0..post_count`.
    pub post_count: u32,
    /// Connections this worker opens at once.
    pub connect_concurrency: u32,
    pub connect_timeout_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub struct ClientSpec {
    pub user: Uuid,
    /// Index into [`Job::targets`].
    pub target: u16,
    /// Authors (user indices of the run) this client's user follows, sorted.
    pub follows: Vec<u32>,
}

/// A post that was created: which deliveries to expect.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Posted {
    pub seq: u32,
    pub author: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Publishing is over: wait up to `drain_ms` for the deliveries of
    /// `posts` still missing, then report.
    Finish { posts: Vec<Posted>, drain_ms: u64 },
    /// Close every socket (close frame, then wait for the server's).
    Close { timeout_ms: u64 },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Progress(Progress),
    Ready(ReadyReport),
    Drained(DrainReport),
    Closed(CloseReport),
}

/// Running totals of one worker.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub clients: u64,
    /// Handshake answered 101.
    pub connected: u64,
    /// Ping answered: subscribed.
    pub ready: u64,
    pub failed: u64,
    /// Unique deliveries so far.
    pub received: u64,
    pub duplicates: u64,
    /// Ready sockets the server closed or broke.
    pub disconnected: u64,
}

impl Progress {
    pub fn add(&mut self, other: &Progress) {
        self.clients += other.clients;
        self.connected += other.connected;
        self.ready += other.ready;
        self.failed += other.failed;
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.disconnected += other.disconnected;
    }
}

#[derive(Default, Serialize, Deserialize)]
pub struct ReadyReport {
    pub clients: u64,
    pub ready: u64,
    /// Ready clients per target.
    pub ready_per_target: Vec<u64>,
    pub failures: Tally,
    /// TCP connect plus the HTTP upgrade, until 101.
    pub handshake: Latency,
    /// From starting to connect until the ping is answered (subscribed).
    pub ready_time: Latency,
    /// When the first connect started and the last client became ready.
    pub first_attempt_micros: u64,
    pub last_ready_micros: u64,
}

#[derive(Default, Serialize, Deserialize)]
pub struct DrainReport {
    /// Publish to receive, from the timestamp in the post.
    pub latency: Latency,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Posts of an author the client does not follow, or whose create the
    /// parent saw fail.
    pub unexpected: u64,
    /// Posts of another run or another writer.
    pub foreign: u64,
    pub malformed: u64,
    /// Ready sockets that ended before the parent closed them, by reason.
    pub disconnects: Tally,
    pub clients_with_loss: u64,
    pub first_delivery_micros: u64,
    pub last_delivery_micros: u64,
    /// Whether every expected delivery came before the drain timeout.
    pub complete: bool,
}

#[derive(Default, Serialize, Deserialize)]
pub struct CloseReport {
    /// The server answered our close frame with its own.
    pub clean: u64,
    /// What happened instead, by kind.
    pub unclean: Tally,
    pub micros: u64,
}
