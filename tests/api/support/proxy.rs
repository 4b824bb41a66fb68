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
    forwarding: JoinHandle<()>,
    /// While cut: the port, bound but not listening, so that connecting
    /// is refused as by a stopped server and nothing else on the machine
    /// (a browser's outgoing connection, another test's listener) can take
    /// the port before [`TcpProxy::restore`] listens on it again.
    reserved: Option<TcpSocket>,
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
        let socket = port("127.0.0.1:0".parse().unwrap());
        let address = socket.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let forwarding = tokio::spawn(forward(
            socket.listen(1024).unwrap(),
            target,
            receive_buffer,
            frozen.subscribe(),
        ));
        Self {
            address,
            target,
            receive_buffer,
            forwarding,
            reserved: None,
            frozen,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes the listening port and every forwarded connection, as a
    /// stopped server would, keeping the port reserved for
    /// [`TcpProxy::restore`].
    pub fn cut(&mut self) {
        if self.reserved.is_none() {
            // SO_REUSEPORT lets the reservation bind while the aborted
            // listener may still be open (an abort completes later).
            self.reserved = Some(port(self.address));
        }
        self.forwarding.abort();
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) {
        let socket = self
            .reserved
            .take()
            .expect("a proxy is cut before it is restored");
        // The old listener must be closed first, or it would share the
        // port's connections with the new one.
        drop((&mut self.forwarding).await);
        self.forwarding = tokio::spawn(forward(
            socket.listen(1024).unwrap(),
            self.target,
            self.receive_buffer,
            self.frozen.subscribe(),
        ));
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
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.forwarding.abort();
    }
}

/// A socket bound to `address` that may share it with the proxy's other
/// sockets on that port (the listener, the reservation made while cut, the
/// forwarded connections an abort has not closed yet) through SO_REUSEPORT.
/// Not SO_REUSEADDR: with it, any other socket asking for SO_REUSEADDR
/// (std's and tokio's listeners do) could bind the reserved port.
fn port(address: SocketAddr) -> TcpSocket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket.bind(address).unwrap();
    socket
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
