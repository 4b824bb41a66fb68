use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A TCP forwarder the test can cut and restore, to take a dependency away
/// from the server under test (and bring it back) without stopping the
/// shared service other tests use.
pub struct TcpProxy {
    address: SocketAddr,
    target: SocketAddr,
    forwarding: Option<JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        Self {
            address,
            target,
            forwarding: Some(tokio::spawn(forward(listener, target))),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes the listening port and every forwarded connection, as a
    /// stopped server would.
    pub fn cut(&mut self) {
        if let Some(forwarding) = self.forwarding.take() {
            forwarding.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.forwarding = Some(tokio::spawn(forward(listener, self.target)));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Dropping this future (abort) drops the JoinSet, which aborts every
/// connection it forwards.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
