//! The peer: nginx with nchan (Debian's `nginx` and `libnginx-mod-nchan`),
//! started by loadtest with a config of its own in a temporary directory,
//! so `broadcast --nchan` measures it in the same run as livefeed.
//!
//! Subscribers connect to `/sub/<run>` and publishing is `POST /pub/<run>`
//! with the exact payload livefeed would send (the floor's), so the
//! clients, frames and checks are the same as livefeed's. One worker
//! process, as nginx+nchan was run in BENCHMARKS.md §6; its CPU is the
//! master's and the worker's.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Child;
use tokio::time::Instant;
use uuid::Uuid;

use crate::floor::server::payload;
use crate::opts::Target;
use crate::publish::{Peer, Published};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

pub struct Nchan {
    pub peer: Peer,
    dir: PathBuf,
    master: Child,
    http: reqwest::Client,
    publish_url: String,
    /// The master's and the worker's.
    pub pids: Vec<u32>,
    pub target: Target,
}

impl Nchan {
    /// Starts nginx (`nginx` from `$NGINX`, else /usr/sbin/nginx) on a free
    /// loopback port.
    pub async fn start(run: &str, users: &[Uuid], text_bytes: usize) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("loadtest-nchan-{run}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("nchan.conf");
        std::fs::write(&conf, config(&dir, port))?;
        let nginx = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        let master = tokio::process::Command::new(&nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {nginx}"))?;
        let master_pid = master.id().context("nginx exited at once")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if started.elapsed() > START_TIMEOUT {
                bail!("nginx did not listen on {addr}; see {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The master listens before it forks its worker.
        let worker = loop {
            if let Some(worker) = children(master_pid)?.first() {
                break *worker;
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("nginx (pid {master_pid}) started no worker");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let pids = vec![master_pid, worker];
        Ok(Self {
            peer: Peer::new(run, users, text_bytes),
            dir,
            master,
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()?,
            publish_url: format!("http://{addr}/pub/{run}"),
            pids,
            target: Target {
                base: format!("http://{addr}"),
                ws_url: format!("ws://{addr}/sub/{run}"),
                addr,
            },
        })
    }

    /// The run's posts at its rate, as [`Peer::publish`] says, each with
    /// the payload livefeed would send for it.
    pub async fn publish(&self, schedule: &[u32], rate: f64) -> Published {
        self.peer
            .publish(schedule, rate, |author, text| {
                let body = payload(author, &text);
                async move {
                    let response = self
                        .http
                        .post(&self.publish_url)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| format!("publish: {e}"))?;
                    if response.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("http {}", response.status()))
                    }
                }
            })
            .await
    }

    /// Stops nginx (SIGTERM: its fast shutdown) and removes its directory.
    pub async fn stop(mut self) {
        if let Some(pid) = self.master.id() {
            // SAFETY: `kill` has no memory preconditions; the pid is our child's.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.master.wait())
            .await
            .is_err()
        {
            eprintln!("warning: nginx did not stop; killing it");
            let _ = self.master.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The children of `pid` (nginx's worker).
fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let list = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(list
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn config(dir: &std::path::Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "load_module {MODULE};
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber websocket;
            nchan_channel_id $1;
        }}
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 100;
        }}
    }}
}}
"
    )
}
