//! Ports for the servers a test starts itself (nginx, chromedriver, a
//! private redis-server or PostgreSQL), which bind them after we choose.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Below Linux's ephemeral range (32768–60999 by default), which the kernel
/// draws from for outgoing connections and for binds to port 0, and below
/// RabbitMQ's distribution ports (25672 up): a port chosen here cannot be
/// taken by a connection or a port-0 listener between our choice and the
/// server's bind, nor while a test has that server stopped for a restart.
const PORTS: std::ops::Range<u16> = 20_000..25_000;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A local address nobody listens on and this process has not handed out
/// before, so two servers of one test run never share a port.
pub fn free_local_port() -> SocketAddr {
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    // Test binaries run one after another; starting each at its own offset
    // keeps a port a previous binary's server may still hold out of reach.
    let span = PORTS.end - PORTS.start;
    let offset = (std::process::id() % u32::from(span)) as u16;
    let port = (0..span)
        .map(|step| PORTS.start + (offset + step) % span)
        .find(|port| {
            !handed_out.contains(port)
                && std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], *port))).is_ok()
        })
        .expect("a free port in 20000..25000");
    handed_out.insert(port);
    SocketAddr::from(([127, 0, 0, 1], port))
}
