//! The real nginx (Debian's package) running the committed
//! `deploy/nginx.conf` in front of instances on local ports: the test writes
//! the two include files (upstream servers, listen address) next to a
//! symlink of the committed file. Shared by tests/nginx.rs and the fault
//! suite; it never touches a system nginx or port 80.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::support::free_local_port;

/// The binary of Debian's `nginx` package.
pub const NGINX: &str = "/usr/sbin/nginx";

/// Bound on nginx starting to accept connections, and on it stopping.
const NGINX_TIMEOUT: Duration = Duration::from_secs(10);

/// nginx running `deploy/nginx.conf` in a directory of its own (its prefix:
/// temp files, pid file, include files, error log). Stopped on drop.
pub struct Nginx {
    pub address: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// Starts nginx in front of `upstreams`, on a free local port, and waits
    /// until it accepts connections.
    pub async fn start(upstreams: &[SocketAddr]) -> Self {
        let dir = std::env::temp_dir().join(format!("livefeed-nginx-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).expect("creating nginx's directory");
        // The committed file itself: nginx finds the includes next to the
        // path it is given, so a symlink here makes it read ours.
        let conf = dir.join("nginx.conf");
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf");
        std::os::unix::fs::symlink(&committed, &conf).expect("linking deploy/nginx.conf");
        let servers: String = upstreams
            .iter()
            .map(|address| format!("server {address};\n"))
            .collect();
        std::fs::write(dir.join("nginx-upstreams.conf"), servers).unwrap();
        let address = free_local_port();
        std::fs::write(
            dir.join("nginx-listen.conf"),
            format!("listen {address};\n"),
        )
        .unwrap();

        let log = File::create(dir.join("error.log")).unwrap();
        let globals = format!("daemon off; pid {};", dir.join("nginx.pid").display());
        let child = Command::new(NGINX)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(globals)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("access.log")).unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nginx");
        let mut nginx = Self {
            address,
            dir,
            child,
        };
        nginx.wait_until_accepting().await;
        nginx
    }

    async fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + NGINX_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited ({status}) at start:\n{}", self.error_log());
            }
            if TcpStream::connect(self.address).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not accept connections on {} within {NGINX_TIMEOUT:?}:\n{}",
                self.address,
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What nginx logged of the requests it served (deploy/nginx.conf sends
    /// its access log to stdout).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers too; SIGKILL if it lingers.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + NGINX_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
