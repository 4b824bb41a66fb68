use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A TCP forwarder the test can cut and restore, to take a dependency away
/// from the server under test (and bring it back) without stopping the
/// shared service other tests use; or freeze, to make a peer vanish
/// without closing anything.
pub struct TcpProxy {
    address: SocketAddr,
    target: SocketAddr,
    receive_buffer: Option<u32>,
    forwarding: Option<JoinHandle<()>>,
    frozen: watch::Sender<bool>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_with(target, None).await
    }

    /// A proxy whose connections to `target` have a kernel receive buffer
    /// of `receive_buffer` bytes when given: frozen, it then stops taking
    /// the target's writes after a few kilobytes.
    pub async fn start_with(target: SocketAddr, receive_buffer: Option<u32>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let mut proxy = Self {
            address,
            target,
            receive_buffer,
            forwarding: None,
            frozen,
        };
        proxy.listen(listener);
        proxy
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
        self.listen(listener);
    }

    /// Stops forwarding in both directions but keeps every connection open,
    /// as a peer whose host or network died would: nothing is read, nothing
    /// is acknowledged beyond what the kernel buffers hold, nothing closes.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again what a [`TcpProxy::freeze`] held, as a network that
    /// came back before either end gave up.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    fn listen(&mut self, listener: TcpListener) {
        self.forwarding = Some(tokio::spawn(forward(
            listener,
            self.target,
            self.receive_buffer,
            self.frozen.subscribe(),
        )));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Dropping this future (abort) drops the JoinSet, which aborts every
/// connection it forwards.
async fn forward(
    listener: TcpListener,
    target: SocketAddr,
    receive_buffer: Option<u32>,
    frozen: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let frozen = frozen.clone();
        connections.spawn(async move {
            let socket = TcpSocket::new_v4().unwrap();
            if let Some(size) = receive_buffer {
                socket.set_recv_buffer_size(size).unwrap();
            }
            if let Ok(outbound) = socket.connect(target).await {
                let (from_client, to_client) = inbound.into_split();
                let (from_target, to_target) = outbound.into_split();
                tokio::join!(
                    pump(from_client, to_target, frozen.clone()),
                    pump(from_target, to_client, frozen),
                );
            }
        });
    }
}

/// Copies `from` to `to` until either ends; while frozen, stops reading
/// (keeping both open).
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = async { drop(frozen.wait_for(|frozen| *frozen).await) } => {
                if frozen.wait_for(|frozen| !*frozen).await.is_err() {
                    return;
                }
                continue;
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
