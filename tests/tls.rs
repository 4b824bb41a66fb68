//! TLS to the stores, over real TLS endpoints on private ports with a CA of
//! the test's own (openssl): Redis (`redis-server --tls-port`), PostgreSQL
//! (a private cluster with `ssl=on`), and the AMQP handshake (a TLS listener
//! here that checks what amqprs sends once the handshake is done; a private
//! RabbitMQ node with a TLS listener is too heavy for this machine).
//!
//! The process trusts the test CA through `livefeed::tls::set_ca_file`, as
//! `LIVEFEED_TLS_CA_FILE` does for the binary.

#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use livefeed::config::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use support::{TestApp, free_local_port, fresh_database};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A CA and a certificate it signed for `localhost` and `127.0.0.1`.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

/// The test CA, made once per test process and trusted by it.
fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("livefeed-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=livefeed test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        let certs = Certs { dir };
        livefeed::tls::set_ca_file(Some(&certs.ca())).expect("trusting the test CA");
        certs
    })
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Kills the child it owns when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `redis-cli` against the TLS port; `tls: false` speaks plain text to it.
fn redis_cli(port: u16, tls: bool, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if tls {
        command.arg("--tls").arg("--cacert").arg(certs().ca());
    }
    let output = command.args(args).output().expect("running redis-cli");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match output.status.success() && !text.starts_with("ERR") {
        true => Ok(text),
        false => Err(format!(
            "{text} {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

#[tokio::test]
async fn feeds_are_cached_in_redis_over_tls() {
    let certs = certs();
    let port = free_local_port().port();
    let _redis = Server(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(certs.cert())
            .arg("--tls-key-file")
            .arg(certs.key())
            .arg("--tls-ca-cert-file")
            .arg(certs.ca())
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server (Debian's is built with TLS)"),
    );
    until("the private Redis answers over TLS", || {
        redis_cli(port, true, &["PING"]).is_ok_and(|reply| reply == "PONG")
    })
    .await;
    assert!(
        redis_cli(port, false, &["PING"]).is_err(),
        "the port must refuse plain text, or this test proves nothing"
    );

    let database = fresh_database().await;
    let url = format!("rediss://localhost:{port}");
    let app = TestApp::spawn_with(&database, &["--redis-url", &url]).await;
    let author = app.register("Ada", "Lovelace").await;
    let reader = app.register("Grace", "Hopper").await;
    app.follow(&reader, &author).await;
    app.create_post(&author, "over TLS").await;
    app.feed_settles_to(&reader, "", &["over TLS"]).await;

    let prefix = database.rsplit('/').next().unwrap().to_owned();
    let feed_key = format!("{prefix}:feed:{}", reader.id);
    until("the reader's feed is built in the TLS Redis", || {
        redis_cli(port, true, &["EXISTS", &feed_key]).is_ok_and(|reply| reply == "1")
    })
    .await;
    assert_eq!(app.metric("livefeed_redis_outages_total").await, 0);
}

/// A PostgreSQL cluster of its own with `ssl=on`, run as the `postgres`
/// user (PostgreSQL refuses root).
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start(certs: &Certs) -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|version| version.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())?;
        let dir = std::env::temp_dir().join(format!("livefeed-pg-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        for (from, to) in [(certs.cert(), "server.pem"), (certs.key(), "server.key")] {
            std::fs::copy(from, dir.join(to)).unwrap();
        }
        as_postgres(
            &["chown", "-R", "postgres", &dir.display().to_string()],
            true,
        );
        let data = dir.join("data").display().to_string();
        let port = free_local_port().port();
        let run = |args: &[&str]| as_postgres(args, false);
        run(&[
            "chmod",
            "600",
            &dir.join("server.key").display().to_string(),
        ]);
        run(&[
            &bin.join("initdb").display().to_string(),
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]);
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} \
             -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key \
             -c fsync=off",
            dir = dir.display()
        );
        run(&[
            &bin.join("pg_ctl").display().to_string(),
            "-D",
            &data,
            "-o",
            &options,
            "-w",
            "-t",
            "60",
            "-l",
            &dir.join("log").display().to_string(),
            "start",
        ]);
        Some(Self { dir, port })
    }

    fn url(&self, database: &str, mode: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?sslmode={mode}",
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        if let Ok(bin) = std::fs::read_dir("/usr/lib/postgresql") {
            for version in bin.filter_map(Result::ok) {
                let pg_ctl = version.path().join("bin/pg_ctl");
                if pg_ctl.exists() {
                    let _ = Command::new("runuser")
                        .args(["-u", "postgres", "--"])
                        .arg(pg_ctl)
                        .args(["-D", &data, "-m", "immediate", "-w", "stop"])
                        .output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `args` as `postgres` (or as this user with `as_me`).
fn as_postgres(args: &[&str], as_me: bool) {
    let mut command = match as_me {
        true => Command::new(args[0]),
        false => {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", args[0]]);
            command
        }
    };
    let output = command
        .args(&args[1..])
        .output()
        .expect("running a command");
    assert!(
        output.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether a session opened as livefeed opens them to `url` is encrypted.
async fn encrypted(url: &str) -> bool {
    let (config, tls) = livefeed::store::connection(url).unwrap();
    let (client, connection) = config.connect(tls).await.unwrap();
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn postgres_urls_with_sslmode_require_or_verify_full_use_verified_tls() {
    let certs = certs();
    let Some(postgres) = PrivatePostgres::start(certs) else {
        eprintln!("skipped: no PostgreSQL server binaries under /usr/lib/postgresql");
        return;
    };
    for mode in ["require", "verify-full"] {
        let url = postgres.url(&format!("livefeed_tls_{}", mode.replace('-', "_")), mode);
        livefeed::store::migrate(&url)
            .await
            .unwrap_or_else(|e| panic!("migrating over TLS ({mode}): {e:#}"));
        assert!(
            encrypted(&url).await,
            "{mode}: the session is not encrypted"
        );
    }

    // Plain when asked: the same server, no sslmode.
    let plain = format!("postgres://postgres@localhost:{}/postgres", postgres.port);
    assert!(!encrypted(&plain).await);

    // The binary: without the CA file the certificate is not trusted (the
    // system store does not hold the test CA); with it, it is.
    let url = postgres.url("livefeed_tls_cli", "require");
    let migrate = |ca: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_livefeed"));
        command.args(["migrate", "--database-url", &url]);
        command.env_remove("LIVEFEED_TLS_CA_FILE");
        if let Some(ca) = ca {
            command.env("LIVEFEED_TLS_CA_FILE", ca);
        }
        command.output().expect("running livefeed migrate")
    };
    let untrusted = migrate(None);
    // The failure is logged, and logs go to stdout.
    let said = String::from_utf8_lossy(&[untrusted.stdout, untrusted.stderr].concat()).into_owned();
    assert!(!untrusted.status.success(), "{said}");
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    let trusted = migrate(Some(&certs.ca()));
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
}

#[test]
fn a_bad_ca_file_stops_start_up_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("livefeed-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (file, expected) in [
        (dir.join("missing.pem"), "cannot read the TLS CA file"),
        (garbage, "holds no PEM certificate"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_livefeed"))
            .args([
                "migrate",
                "--database-url",
                "postgres://nobody@127.0.0.1:1/none",
            ])
            .env("LIVEFEED_TLS_CA_FILE", &file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A TLS listener with the test certificate: what a client sends after the
/// handshake comes out of `received`.
async fn tls_listener(certs: &Certs) -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certs.cert())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.key()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sent, received) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(socket).await else {
                    return;
                };
                let mut header = [0u8; 8];
                if stream.read_exact(&mut header).await.is_ok() {
                    let _ = sent.send(header.to_vec()).await;
                }
            });
        }
    });
    (address, received)
}

#[tokio::test]
async fn amqps_urls_connect_over_verified_tls() {
    let certs = certs();
    let (address, mut received) = tls_listener(certs).await;
    let url = format!("amqps://guest:guest@localhost:{}/", address.port());
    let config = Config::from_args(["--amqp-url", &url]).unwrap();
    let database = fresh_database().await;
    let _app = TestApp::spawn_on_broker(&database, &[], config.broker()).await;
    let header = tokio::time::timeout(TIMEOUT, received.recv())
        .await
        .expect("the instance opens a TLS connection to the amqps:// URL")
        .unwrap();
    assert_eq!(
        header, b"AMQP\x00\x00\x09\x01",
        "AMQP 0-9-1 over the TLS session"
    );
}
