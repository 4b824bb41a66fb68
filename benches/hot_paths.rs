//! The hot paths of live delivery, measured without a broker: `cargo
//! bench`. Figures and what they mean are in BENCHMARKS.md. The hub writes
//! into sockets itself, so its fan-out is measured over loopback TCP.

use std::hint::black_box;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use livefeed::auth::Tokens;
use livefeed::broker::{Broker, BrokerKind, MemoryBus};
use livefeed::domain::{Post, PostId, UserId};
use livefeed::metrics::Metrics;
use livefeed::realtime::codec::{decode_post, encode_post};
use livefeed::realtime::{Registry, Routing, Socket, fan_out};
use tokio::sync::mpsc;

/// Two descriptors each: within the default limit of open files.
const SUBSCRIBERS: usize = 400;

/// The in-process broker hands out work on a task of its own, so it starts
/// inside a runtime, which lives as long as the benchmarks.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
});

fn registry() -> Registry {
    let _inside = RUNTIME.enter();
    let (deliveries, _) = mpsc::channel(1);
    let (work, _) = mpsc::channel(1);
    let broker = Broker::start(BrokerKind::Memory(MemoryBus::new()), deliveries, work);
    Registry::new(broker, Routing::ById)
}

/// A socket as a session makes it (released: the hub writes to it), and
/// the client's end of its connection, non-blocking.
fn socket(listener: &TcpListener) -> (Arc<Socket>, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_nonblocking(true).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let _inside = RUNTIME.enter();
    let server = tokio::net::TcpStream::from_std(server).unwrap();
    let socket = Arc::new(Socket::new(UserId::new_v7(), 1024, server));
    socket.release();
    (socket, client)
}

/// Reads what is there, outside the measurement.
fn drain(client: &mut TcpStream) {
    let mut buffer = [0; 4096];
    while client.read(&mut buffer).is_ok_and(|n| n > 0) {}
}

fn post(author: UserId) -> Post {
    Post {
        id: PostId::new_v7(),
        text: "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor"
            .into(),
        author_user_id: author,
    }
}

/// One delivery to the subscribers of one author, each a write into a
/// loopback socket: the per-subscriber cost is the time divided by their
/// number (Criterion's "elements").
fn hub_fan_out(c: &mut Criterion) {
    let registry = registry();
    let metrics = Metrics::default();
    let author = UserId::new_v7();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (sockets, mut clients): (Vec<_>, Vec<_>) =
        (0..SUBSCRIBERS).map(|_| socket(&listener)).unzip();
    for socket in &sockets {
        drop(registry.subscribe(socket, &[author], None, 0).bindings);
    }
    let frame = Arc::new(decode_post(encode_post(&post(author), 0)).unwrap());
    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("fan_out_400_loopback_subscribers", |b| {
        b.iter_custom(|iterations| {
            let mut measured = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                fan_out(&registry, &metrics, frame.clone());
                measured += started.elapsed();
                clients.iter_mut().for_each(drain);
            }
            measured
        });
    });
    group.finish();
}

/// Subscribe and unsubscribe from two threads at once, on overlapping
/// authors: the registry's shard locks under contention.
fn registry_churn(c: &mut Criterion) {
    let registry = Arc::new(registry());
    let authors: Arc<Vec<UserId>> = Arc::new((0..64).map(|_| UserId::new_v7()).collect());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    c.bench_function("registry/follow_unfollow_2_threads", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (registry, authors) = (registry.clone(), authors.clone());
                    let (socket, client) = socket(&listener);
                    std::thread::spawn(move || {
                        let _client = client;
                        drop(registry.subscribe(&socket, &[], None, 0).bindings);
                        for i in 0..iterations as usize {
                            let author = authors[i % authors.len()];
                            drop(registry.change(&socket, author, true, 0));
                            drop(registry.change(&socket, author, false, 0));
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
            started.elapsed()
        });
    });
}

fn message_decode(c: &mut Criterion) {
    let body = encode_post(&post(UserId::new_v7()), 0);
    c.bench_function("codec/decode_post", |b| {
        b.iter(|| decode_post(black_box(body.clone())).unwrap());
    });
}

fn token_verification(c: &mut Criterion) {
    let tokens = Tokens::new(
        b"benchmark-secret-benchmark-secret",
        Duration::from_secs(3600),
    )
    .unwrap();
    let token = tokens.issue(UserId::new_v7());
    c.bench_function("auth/verify_token", |b| {
        b.iter(|| tokens.verify(black_box(&token)).unwrap());
    });
}

criterion_group!(
    benches,
    hub_fan_out,
    registry_churn,
    message_decode,
    token_verification
);
criterion_main!(benches);
