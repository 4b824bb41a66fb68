//! The hot paths of live delivery, measured without network or broker:
//! `cargo bench`. Figures and what they mean are in BENCHMARKS.md.

use std::hint::black_box;
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

const SUBSCRIBERS: usize = 10_000;

/// The in-process broker hands out work on a task of its own, so it starts
/// inside a runtime, which lives as long as the benchmarks.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
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

fn post(author: UserId) -> Post {
    Post {
        id: PostId::new_v7(),
        text: "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor"
            .into(),
        author_user_id: author,
    }
}

/// One delivery to 10,000 subscribers of one author: the per-subscriber
/// cost is the time divided by 10,000 (Criterion's "elements").
fn hub_fan_out(c: &mut Criterion) {
    let registry = registry();
    let metrics = Metrics::default();
    let author = UserId::new_v7();
    let sockets: Vec<Arc<Socket>> = (0..SUBSCRIBERS)
        .map(|_| Arc::new(Socket::new(UserId::new_v7(), 1024)))
        .collect();
    for socket in &sockets {
        drop(registry.subscribe(socket, &[author], None));
    }
    let frame = Arc::new(decode_post(encode_post(&post(author), 0)).unwrap());
    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("fan_out_10k_subscribers", |b| {
        b.iter_custom(|iterations| {
            let mut measured = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                fan_out(&registry, &metrics, frame.clone());
                measured += started.elapsed();
                // The writers' side, outside the measurement.
                for socket in &sockets {
                    black_box(socket.pop());
                }
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
    c.bench_function("registry/follow_unfollow_2_threads", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (registry, authors) = (registry.clone(), authors.clone());
                    std::thread::spawn(move || {
                        let socket = Arc::new(Socket::new(UserId::new_v7(), 16));
                        drop(registry.subscribe(&socket, &[], None));
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
