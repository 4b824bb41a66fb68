//! Private Redis and PostgreSQL servers a fault scenario owns: started on a
//! free local port in a temporary directory, stopped, flushed or restarted
//! by the scenario, and removed when dropped. The shared servers (6379,
//! 5432) are never touched: other tests run against them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::support::free_local_port;

/// Bound on a server starting (initdb excluded) or stopping.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// initdb of a new PostgreSQL cluster: about 3 s here.
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("livefeed-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).expect("creating a temporary directory");
    dir
}

// ------------------------------------------------------------------ Redis ---

/// A `redis-server` without persistence: a restart comes back empty, as a
/// cache without a volume does.
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_local_port().port(),
            dir: temp_dir("redis"),
            child: None,
        };
        redis.start_again().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it on its port again; returns once it answers PING.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis is running already");
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.command("PING").await.as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "private redis on {} did not answer within {START_TIMEOUT:?}",
                self.port
            );
            sleep(POLL).await;
        }
    }

    /// Stops it (SIGKILL: nothing to save); returns once it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("stopping redis");
            child.wait().await.expect("waiting for redis to stop");
        }
    }

    /// FLUSHALL: every key gone, the server up.
    pub async fn flush(&self) {
        let answer = self.command("FLUSHALL").await;
        assert_eq!(answer.as_deref(), Some("+OK"), "FLUSHALL");
    }

    /// One inline command; its first reply line, `None` when unreachable.
    async fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .ok()?;
        let mut reply = [0; 64];
        let n = tokio::time::timeout(START_TIMEOUT, stream.read(&mut reply))
            .await
            .ok()?
            .ok()?;
        let reply = String::from_utf8_lossy(&reply[..n]);
        Some(reply.lines().next().unwrap_or_default().to_owned())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------- PostgreSQL ---

/// A PostgreSQL cluster of its own (initdb, trust authentication, fsync
/// off), run with `pg_ctl` as user postgres when the test runs as root
/// (PostgreSQL refuses to run as root).
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let bin = postgres_bin();
        let dir = temp_dir("postgres");
        let postgres = Self {
            bin,
            dir,
            port: free_local_port().port(),
        };
        if running_as_root() {
            let status = std::process::Command::new("chown")
                .arg("postgres")
                .arg(&postgres.dir)
                .status()
                .expect("running chown");
            assert!(
                status.success(),
                "chown postgres {}",
                postgres.dir.display()
            );
        }
        let data = postgres.data().display().to_string();
        postgres
            .pg(
                "initdb",
                &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
                INITDB_TIMEOUT,
            )
            .await;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            postgres.port,
            postgres.dir.display()
        );
        let log = postgres.log();
        postgres
            .pg(
                "pg_ctl",
                &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
                START_TIMEOUT,
            )
            .await;
        postgres
    }

    /// The URL of database `name` on it.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// `pg_ctl restart -m fast`: every connection is closed, the server is
    /// back (and accepting) when this returns.
    pub async fn restart(&self) {
        let data = self.data().display().to_string();
        // The log again: else the new server writes to (and holds open)
        // pg_ctl's output pipe, which is then never done.
        let log = self.log();
        self.pg(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-m", "fast", "-w", "restart"],
            START_TIMEOUT,
        )
        .await;
    }

    fn log(&self) -> String {
        self.dir.join("postgres.log").display().to_string()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    async fn pg(&self, program: &str, arguments: &[&str], within: Duration) {
        let program = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let run = command
            .args(arguments)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(within, run)
            .await
            .unwrap_or_else(|_| panic!("{} {arguments:?} took over {within:?}", program.display()))
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()));
        assert!(
            output.status.success(),
            "{} {arguments:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let arguments = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if running_as_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--", &pg_ctl])
                .args(arguments)
                .output()
        } else {
            std::process::Command::new(&pg_ctl).args(arguments).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (`LIVEFEED_PG_BIN` wins).
fn postgres_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LIVEFEED_PG_BIN") {
        return bin.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/*/bin/initdb: set LIVEFEED_PG_BIN")
}

fn running_as_root() -> bool {
    Path::new("/proc/self")
        .metadata()
        .is_ok_and(|meta| meta.uid() == 0)
}
