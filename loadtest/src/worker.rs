//! A worker process (`loadtest worker`): holds a slice of the websocket
//! clients on one thread, counts what each receives, and answers the
//! parent as described in [`crate::protocol`].
//!
//! Per delivery: parse the frame in place, flip one bit in the client's
//! bitmap of sequence numbers, record one histogram value. No allocation,
//! no lock (one thread, a `RefCell`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, watch};
use tokio::task::LocalSet;
use tokio::time::Instant;

use crate::client::{self, Dialer, Observer};
use crate::marker::{self, Frame, Mark};
use crate::opts::{self, unix_micros};
use crate::protocol::{
    ClientSpec, CloseReport, Command, DrainReport, Event, Job, Posted, Progress, ReadyReport,
};
use crate::token::Minter;

const POLL: Duration = Duration::from_millis(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub fn main() -> anyhow::Result<()> {
    opts::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the worker runtime")?;
    LocalSet::new().block_on(&runtime, run())
}

async fn run() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .context("no job on stdin: this subcommand is for loadtest itself")?;
    let job: Job = serde_json::from_str(&line).context("reading the job")?;
    let minter = Minter::new(&job.jwt_secret)?;
    let worker = Rc::new(Worker::new(&job));
    let dialer = Rc::new(Dialer {
        targets: job.targets,
        source_ip: job.source_ip,
        timeout: Duration::from_millis(job.connect_timeout_ms),
        opening: Semaphore::new(job.connect_concurrency as usize),
    });
    let (stop, stopped) = watch::channel(None);
    worker.state.borrow_mut().ready.first_attempt_micros = unix_micros();
    for (index, spec) in job.clients.iter().enumerate() {
        let session = client::session(
            dialer.clone(),
            worker.clone(),
            index,
            usize::from(spec.target),
            minter.mint(spec.user),
            stopped.clone(),
        );
        let worker = worker.clone();
        tokio::task::spawn_local(async move {
            session.await;
            worker.state.borrow_mut().open -= 1;
        });
    }
    let ticker = tokio::task::spawn_local({
        let worker = worker.clone();
        async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                emit(&Event::Progress(worker.state.borrow().progress));
            }
        }
    });

    while worker.state.borrow().pending > 0 {
        tokio::time::sleep(POLL).await;
    }
    let ready = std::mem::take(&mut worker.state.borrow_mut().ready);
    emit(&Event::Ready(ready));

    while let Some(line) = stdin.next_line().await? {
        match serde_json::from_str::<Command>(&line).context("reading a command")? {
            Command::Finish { posts, drain_ms } => {
                let report = worker.drain(&posts, Duration::from_millis(drain_ms)).await;
                emit(&Event::Drained(report));
            }
            Command::Close { timeout_ms } => {
                let timeout = Duration::from_millis(timeout_ms);
                let started = Instant::now();
                let _ = stop.send(Some(timeout));
                // Sessions give up at `timeout`; a margin for the scheduler.
                let deadline = started + timeout + Duration::from_secs(1);
                while worker.state.borrow().open > 0 && Instant::now() < deadline {
                    tokio::time::sleep(POLL).await;
                }
                let mut report = std::mem::take(&mut worker.state.borrow_mut().close);
                report.micros = started.elapsed().as_micros() as u64;
                emit(&Event::Closed(report));
            }
        }
    }
    // The parent closed our stdin: done (or gone).
    emit(&Event::Progress(worker.state.borrow().progress));
    ticker.abort();
    Ok(())
}

/// One JSON line on stdout. A parent that stopped reading has died: the
/// write fails and so does the worker.
fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, event)
        .map_err(std::io::Error::other)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        eprintln!("loadtest worker: parent gone ({e}), exiting");
        std::process::exit(3);
    }
}

struct Worker {
    run: String,
    state: RefCell<State>,
}

struct State {
    clients: Vec<Client>,
    progress: Progress,
    /// Clients neither ready nor failed yet.
    pending: u64,
    /// Session tasks still running.
    open: u64,
    ready: ReadyReport,
    drain: DrainReport,
    close: CloseReport,
}

struct Client {
    follows: Vec<u32>,
    /// Bit `seq` is set once post `seq` has arrived.
    seen: Vec<u64>,
    target: u16,
    ready: bool,
}

impl Worker {
    fn new(job: &Job) -> Self {
        let words = (job.post_count as usize).div_ceil(64);
        let clients: Vec<Client> = job
            .clients
            .iter()
            .map(
                |ClientSpec {
                     target, follows, ..
                 }| {
                    let mut follows = follows.clone();
                    follows.sort_unstable();
                    Client {
                        follows,
                        seen: vec![0; words],
                        target: *target,
                        ready: false,
                    }
                },
            )
            .collect();
        let count = clients.len() as u64;
        Self {
            run: job.run.clone(),
            state: RefCell::new(State {
                clients,
                progress: Progress {
                    clients: count,
                    ..Progress::default()
                },
                pending: count,
                open: count,
                ready: ReadyReport {
                    clients: count,
                    ready_per_target: vec![0; job.targets.len()],
                    ..ReadyReport::default()
                },
                drain: DrainReport::default(),
                close: CloseReport::default(),
            }),
        }
    }

    /// Waits (at most `limit`) until every ready client has every post of
    /// `posts` it follows, then accounts for what is missing.
    async fn drain(&self, posts: &[Posted], limit: Duration) -> DrainReport {
        let deadline = Instant::now() + limit;
        let expected = self.state.borrow().expected(posts);
        let mut complete = false;
        loop {
            if self.state.borrow().progress.received >= expected {
                complete = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let mut state = self.state.borrow_mut();
        let account = state.account(posts);
        let received = state.progress.received;
        let mut report = std::mem::take(&mut state.drain);
        report.expected = account.expected;
        report.lost = account.lost;
        report.received = account.expected - account.lost;
        report.clients_with_loss = account.clients_with_loss;
        // Bits set for posts outside the list: the parent saw their create fail.
        report.unexpected += received.saturating_sub(report.received);
        report.duplicates = state.progress.duplicates;
        report.complete = complete && account.lost == 0;
        report
    }
}

/// What a worker's clients should have had, and what they miss.
#[derive(Debug, PartialEq, Eq)]
struct Account {
    expected: u64,
    lost: u64,
    clients_with_loss: u64,
}

impl State {
    fn by_author(posts: &[Posted]) -> HashMap<u32, Vec<u32>> {
        let mut by_author: HashMap<u32, Vec<u32>> = HashMap::new();
        for post in posts {
            by_author.entry(post.author).or_default().push(post.seq);
        }
        by_author
    }

    fn expected(&self, posts: &[Posted]) -> u64 {
        let by_author = Self::by_author(posts);
        self.clients
            .iter()
            .filter(|client| client.ready)
            .flat_map(|client| &client.follows)
            .map(|author| by_author.get(author).map_or(0, Vec::len) as u64)
            .sum()
    }

    fn account(&self, posts: &[Posted]) -> Account {
        let by_author = Self::by_author(posts);
        let mut account = Account {
            expected: 0,
            lost: 0,
            clients_with_loss: 0,
        };
        for client in self.clients.iter().filter(|client| client.ready) {
            let mut lost = 0;
            for seq in client
                .follows
                .iter()
                .filter_map(|author| by_author.get(author))
                .flatten()
            {
                account.expected += 1;
                if !client.has(*seq) {
                    lost += 1;
                }
            }
            account.lost += lost;
            account.clients_with_loss += u64::from(lost > 0);
        }
        account
    }

    fn deliver(&mut self, index: usize, mark: Mark, now_micros: u64) {
        let client = &mut self.clients[index];
        let word = (mark.seq / 64) as usize;
        let bit = 1u64 << (mark.seq % 64);
        if word >= client.seen.len() || client.follows.binary_search(&mark.author).is_err() {
            self.drain.unexpected += 1;
            return;
        }
        if client.seen[word] & bit != 0 {
            self.progress.duplicates += 1;
            return;
        }
        client.seen[word] |= bit;
        self.progress.received += 1;
        self.drain
            .latency
            .record_micros(now_micros.saturating_sub(mark.due_micros));
        if self.drain.first_delivery_micros == 0 {
            self.drain.first_delivery_micros = now_micros;
        }
        self.drain.last_delivery_micros = now_micros;
    }
}

impl Client {
    fn has(&self, seq: u32) -> bool {
        self.seen
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }
}

impl Observer for Worker {
    fn connected(&self, _client: usize, handshake: Duration) {
        let mut state = self.state.borrow_mut();
        state.progress.connected += 1;
        state.ready.handshake.record(handshake);
    }

    fn ready(&self, client: usize, since_start: Duration) {
        let mut state = self.state.borrow_mut();
        state.clients[client].ready = true;
        let target = usize::from(state.clients[client].target);
        state.ready.ready_per_target[target] += 1;
        state.progress.ready += 1;
        state.pending -= 1;
        state.ready.ready += 1;
        state.ready.ready_time.record(since_start);
        state.ready.last_ready_micros = unix_micros();
    }

    fn failed(&self, _client: usize, reason: String) {
        let mut state = self.state.borrow_mut();
        state.progress.failed += 1;
        state.pending -= 1;
        *state.ready.failures.entry(reason).or_default() += 1;
    }

    fn frame(&self, client: usize, text: &[u8]) {
        let now = unix_micros();
        let parsed = marker::parse_frame(text, &self.run);
        let mut state = self.state.borrow_mut();
        match parsed {
            Frame::Ours(mark) => state.deliver(client, mark, now),
            Frame::Foreign => state.drain.foreign += 1,
            Frame::Malformed => state.drain.malformed += 1,
        }
    }

    fn disconnected(&self, _client: usize, reason: String) {
        let mut state = self.state.borrow_mut();
        state.progress.disconnected += 1;
        *state.drain.disconnects.entry(reason).or_default() += 1;
    }

    fn closed(&self, _client: usize, outcome: Result<(), String>) {
        let mut state = self.state.borrow_mut();
        match outcome {
            Ok(()) => state.close.clean += 1,
            Err(reason) => *state.close.unclean.entry(reason).or_default() += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn worker(follows: &[&[u32]], post_count: u32) -> Worker {
        let job = Job {
            run: "t".into(),
            jwt_secret: String::new(),
            source_ip: None,
            targets: Vec::new(),
            clients: follows
                .iter()
                .map(|follows| ClientSpec {
                    user: Uuid::nil(),
                    target: 0,
                    follows: follows.to_vec(),
                })
                .collect(),
            post_count,
            connect_concurrency: 1,
            connect_timeout_ms: 1,
        };
        let worker = Worker::new(&job);
        for client in &mut worker.state.borrow_mut().clients {
            client.ready = true;
        }
        worker
    }

    fn mark(seq: u32, author: u32) -> Mark {
        Mark {
            seq,
            author,
            due_micros: 1,
        }
    }

    #[test]
    fn counts_lost_duplicate_and_unexpected_deliveries() {
        let worker = worker(&[&[0], &[0, 2], &[1]], 100);
        let posts: Vec<Posted> = [(0, 0), (1, 2), (2, 1), (70, 0)]
            .map(|(seq, author)| Posted { seq, author })
            .to_vec();
        let mut state = worker.state.borrow_mut();
        assert_eq!(state.expected(&posts), 2 + 3 + 1);
        for (client, seq, author) in [(0, 0, 0), (0, 70, 0), (1, 0, 0), (1, 1, 2), (2, 2, 1)] {
            state.deliver(client, mark(seq, author), 2);
        }
        state.deliver(1, mark(1, 2), 3); // duplicate
        state.deliver(2, mark(0, 0), 3); // client 2 does not follow author 0
        state.deliver(2, mark(500, 1), 3); // beyond the run's posts
        assert_eq!(
            state.account(&posts),
            Account {
                expected: 6,
                lost: 1, // client 1 never got post 70
                clients_with_loss: 1
            }
        );
        assert_eq!(state.progress.received, 5);
        assert_eq!(state.progress.duplicates, 1);
        assert_eq!(state.drain.unexpected, 2);
        assert_eq!(state.drain.latency.count(), 5);
    }

    #[test]
    fn clients_that_never_became_ready_expect_nothing() {
        let worker = worker(&[&[0], &[0]], 8);
        worker.state.borrow_mut().clients[1].ready = false;
        let posts = [Posted { seq: 3, author: 0 }];
        assert_eq!(worker.state.borrow().expected(&posts), 1);
    }
}
