//! Configuration from flags and environment variables, checked at start-up
//! so a mistake is reported once, clearly, before anything runs.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use crate::auth::ThrottleSettings;
use crate::broker::{AmqpSettings, BrokerKind, MemoryBus};
use crate::cache::CacheSettings;
use crate::http::IpNet;
use crate::realtime::{RealtimeSettings, Routing};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/livefeed";

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, value_parser = parse_database_url)]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct CacheConfig {
    /// Redis holding the materialised feeds.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = parse_redis_url)]
    pub redis_url: String,

    /// Prefix of every Redis key, so several deployments can share a Redis.
    #[arg(long, env = "LIVEFEED_REDIS_PREFIX", default_value = "lf:")]
    pub redis_prefix: String,

    /// Authors with more followers than this are celebrities: their posts
    /// are merged into feeds at read time instead of copied into each.
    #[arg(long, env = "LIVEFEED_CELEBRITY_THRESHOLD", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub celebrity_threshold: i64,

    /// How far back `/post/feed` reaches: `offset + limit` is cut at this
    /// many posts (fewer, or none, come back beyond it). Each page read from
    /// PostgreSQL takes up to this many posts per followed author.
    #[arg(long, env = "LIVEFEED_FEED_DEPTH", default_value_t = 2_000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub feed_depth: u32,
}

impl CacheConfig {
    pub fn settings(&self) -> CacheSettings {
        CacheSettings {
            redis_url: self.redis_url.clone(),
            key_prefix: self.redis_prefix.clone(),
            celebrity_threshold: self.celebrity_threshold,
            feed_depth: self.feed_depth,
        }
    }
}

/// `livefeed warm-cache`.
#[derive(Debug, Clone, Args)]
pub struct WarmCacheArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub cache: CacheConfig,

    /// Only the N users who follow the most others; all users when unset.
    #[arg(long, env = "LIVEFEED_WARM_USERS", value_parser = clap::value_parser!(i64).range(1..))]
    pub users: Option<i64>,

    /// Chunks of 500 feeds built at once (each holds a database connection
    /// for its two statements).
    #[arg(long, env = "LIVEFEED_WARM_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LIVEFEED_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Most PostgreSQL connections this instance holds.
    #[arg(long, env = "LIVEFEED_DB_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub db_pool_size: u16,

    /// How long a request waits for a database connection before answering 503.
    #[arg(long, env = "LIVEFEED_DB_TIMEOUT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub db_timeout_ms: u64,

    /// Longest a single SQL statement may run.
    #[arg(long, env = "LIVEFEED_STATEMENT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub statement_timeout_ms: u64,

    /// Secret that signs login tokens (HS256), at least 32 bytes; every
    /// instance must share it. When unset, a random one is made per process
    /// and tokens die with it.
    #[arg(long, env = "LIVEFEED_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: Option<Secret>,

    /// A file holding the token secret (one line, at least 32 bytes), so it
    /// need not sit in the environment: compose generates one at first start
    /// on a volume the instances share.
    #[arg(long, env = "LIVEFEED_JWT_SECRET_FILE", conflicts_with = "jwt_secret")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Lifetime of a login token, in seconds.
    #[arg(long, env = "LIVEFEED_TOKEN_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl_secs: u64,

    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, env = "LIVEFEED_MAX_BODY_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(64..=16_777_216))]
    pub max_body_bytes: u64,

    /// Longest a request may take before answering 503.
    #[arg(long, env = "LIVEFEED_REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Most client connections held at once; further ones wait to be accepted.
    #[arg(long, env = "LIVEFEED_MAX_CONNECTIONS", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// On SIGTERM, how long in-flight requests get to finish.
    #[arg(long, env = "LIVEFEED_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,

    /// RabbitMQ URL (amqp://user:password@host:port/vhost), or several
    /// separated by commas, tried in turn. Unset: an in-process broker, for
    /// a single instance without RabbitMQ.
    #[arg(long, env = "AMQP_URL", value_parser = parse_amqp_url)]
    pub amqp_url: Option<String>,

    /// Seconds this instance's RabbitMQ queue outlives a lost connection
    /// before RabbitMQ deletes it.
    #[arg(long, env = "LIVEFEED_AMQP_QUEUE_EXPIRY_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    pub amqp_queue_expiry_secs: u64,

    /// Names this instance's broker queue; unique per running instance.
    #[arg(long, env = "LIVEFEED_INSTANCE_ID", default_value_t = default_instance_id())]
    pub instance_id: String,

    /// Routing key of an author's posts: `id` (one key per author) or
    /// `bucket:N` (authors hashed into N keys).
    ///
    /// `bucket:1024` by default because `id` binds one key per distinct
    /// followed author and makes a new socket wait for those binds: in
    /// `loadtest social` (5,000 users following 25, two instances, RabbitMQ,
    /// load 5-10 on 2 cores) `id` bound 5,000 keys per instance queue with
    /// ready p99 683 / 635 ms, `bucket:1024` bound 1,020 with ready p99
    /// 381 / 331 ms, at the same server CPU per delivery (52 vs 49-52 us);
    /// 5,000 more users joining warm instances: `id` 466 / 552 ms,
    /// `bucket:1024` 69 / 53 ms (their buckets were already bound).
    /// 1,024 keeps the binds of a restarting instance to a thousand while
    /// still filtering at small scale; at 1,000,000 users on 50 instances
    /// every instance binds every bucket either way (BENCHMARKS.md §11).
    #[arg(long, env = "LIVEFEED_ROUTING", default_value = "bucket:1024")]
    pub routing: Routing,

    /// With `bucket:N` routing, bind all N keys when the instance starts
    /// and keep them, instead of binding each on its first follower here.
    ///
    /// On demand, an instance that starts (or restarts) empty binds a
    /// thousand keys during the connect storm that follows, and its first
    /// sockets get the posts of that moment from PostgreSQL: in `loadtest
    /// social` (5,000 users following 25, two fresh instances) those binds
    /// and catch-ups were 144 + 186 of 528 us of CPU per connect
    /// (BENCHMARKS.md §21). Bound up front, the instance receives every
    /// post from the start: what every instance receives anyway once its
    /// users follow a thousand authors (§11). Off by default, so that a small
    /// instance receives only the posts its users want.
    #[arg(long, env = "LIVEFEED_BIND_EVERY_BUCKET", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub bind_every_bucket: bool,

    /// Most websockets this instance holds (503 beyond).
    #[arg(long, env = "LIVEFEED_MAX_SOCKETS", default_value_t = 19_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sockets: u64,

    /// Most websockets one user holds on an instance (429 beyond).
    #[arg(long, env = "LIVEFEED_MAX_SOCKETS_PER_USER", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets_per_user: u32,

    /// Posts a websocket may fall behind before it is closed as a slow consumer.
    #[arg(long, env = "LIVEFEED_SOCKET_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub socket_queue: u32,

    /// Seconds between server pings; a socket that misses a pong is closed.
    #[arg(long, env = "LIVEFEED_PING_INTERVAL_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_secs: u64,

    /// Longest a websocket write may take; a socket whose peer does not take
    /// it in time (stopped reading, or vanished) is closed.
    #[arg(long, env = "LIVEFEED_WS_WRITE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_write_timeout_ms: u64,

    #[command(flatten)]
    pub cache: CacheConfig,

    /// Peers whose `X-Real-IP` / `X-Forwarded-For` name the client (the
    /// proxies in front of the instances): addresses or CIDR blocks,
    /// comma-separated. Any other peer is the client itself.
    #[arg(
        long,
        env = "LIVEFEED_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1"
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Login attempts a minute per client address (429 beyond).
    #[arg(long, env = "LIVEFEED_LOGIN_PER_MINUTE", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_per_minute: u32,

    /// Login attempts a minute per user id, from any address (429 beyond).
    #[arg(long, env = "LIVEFEED_LOGIN_PER_USER_PER_MINUTE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_per_user_per_minute: u32,

    /// Registrations a minute per client address (429 beyond).
    #[arg(long, env = "LIVEFEED_REGISTER_PER_MINUTE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub register_per_minute: u32,

    /// Kernel send buffer of each websocket, in bytes (0: the OS default).
    #[arg(long, env = "LIVEFEED_WS_SEND_BUFFER", default_value_t = 65_536)]
    pub ws_send_buffer: u32,
}

impl Config {
    /// Parses flags as `livefeed serve` would (environment variables apply to
    /// what the flags leave unset); used by tests to build a real config.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Standalone {
            #[command(flatten)]
            config: Config,
        }
        let argv = std::iter::once("livefeed".into()).chain(args.into_iter().map(Into::into));
        Standalone::try_parse_from(argv).map(|s| s.config)
    }

    /// The token secret, from the flag or read from the file; `None` when
    /// neither is given.
    pub fn token_secret(&self) -> Result<Option<Secret>, String> {
        let Some(path) = &self.jwt_secret_file else {
            return Ok(self.jwt_secret.clone());
        };
        let raw = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token secret file {}: {e}", path.display()))?;
        parse_secret(raw.trim_end_matches(['\r', '\n']))
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms)
    }

    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// RabbitMQ when a URL is configured, else a broker inside this process.
    pub fn broker(&self) -> BrokerKind {
        match &self.amqp_url {
            Some(url) => BrokerKind::Amqp(AmqpSettings {
                url: url.clone(),
                instance_id: self.instance_id.clone(),
                queue_expiry: Duration::from_secs(self.amqp_queue_expiry_secs),
            }),
            None => BrokerKind::Memory(MemoryBus::new()),
        }
    }

    pub fn throttles(&self) -> ThrottleSettings {
        ThrottleSettings {
            login_per_address: self.login_per_minute,
            login_per_user: self.login_per_user_per_minute,
            register_per_address: self.register_per_minute,
        }
    }

    pub fn realtime(&self) -> Result<RealtimeSettings, String> {
        if self.bind_every_bucket && self.routing.every_key().is_none() {
            return Err(
                "LIVEFEED_BIND_EVERY_BUCKET needs bucket routing (LIVEFEED_ROUTING=bucket:N)"
                    .into(),
            );
        }
        Ok(RealtimeSettings {
            queue_capacity: self.socket_queue as usize,
            ping_interval: Duration::from_secs(self.ping_interval_secs),
            write_timeout: Duration::from_millis(self.ws_write_timeout_ms),
            max_sockets: self.max_sockets,
            max_sockets_per_user: self.max_sockets_per_user,
            routing: self.routing,
            bind_every_bucket: self.bind_every_bucket,
        })
    }
}

fn default_instance_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn parse_redis_url(raw: &str) -> Result<String, String> {
    redis::Client::open(raw)
        .map(|_| raw.to_owned())
        .map_err(|_| {
            "not a Redis URL; expected redis://host:port[/db] (rediss:// for TLS)".to_owned()
        })
}

fn parse_amqp_url(raw: &str) -> Result<String, String> {
    AmqpSettings::validate_url(raw)?;
    Ok(raw.to_owned())
}

/// A secret that never shows up in logs or `--help`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

const MIN_SECRET_BYTES: usize = 32;

fn parse_secret(raw: &str) -> Result<Secret, String> {
    if raw.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the token secret must be at least {MIN_SECRET_BYTES} bytes, got {}",
            raw.len()
        ));
    }
    Ok(Secret(raw.to_owned()))
}

fn parse_database_url(raw: &str) -> Result<String, String> {
    let config = crate::store::parse_url(raw).map_err(|e| {
        format!("not a PostgreSQL URL ({e}); expected postgres://user@host:port/database")
    })?;
    if config.get_dbname().is_none() {
        return Err(
            "the PostgreSQL URL must name a database, e.g. postgres://user@host:5432/livefeed"
                .into(),
        );
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally() {
        let config = Config::from_args(["--database-url", DEFAULT_DATABASE_URL]).unwrap();
        assert_eq!(config.database.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(config.max_body_bytes, 65_536);
        assert_eq!(config.routing, "bucket:1024".parse().unwrap());
    }

    #[test]
    fn every_bucket_is_bound_only_when_asked_and_only_with_buckets() {
        let on_demand = Config::from_args::<[&str; 0], &str>([]).unwrap();
        assert!(!on_demand.realtime().unwrap().bind_every_bucket);
        let eager = Config::from_args(["--bind-every-bucket", "true"]).unwrap();
        assert!(eager.realtime().unwrap().bind_every_bucket);
        let by_id = Config::from_args(["--bind-every-bucket", "true", "--routing", "id"]).unwrap();
        let refused = by_id.realtime().unwrap_err();
        assert!(refused.contains("needs bucket routing"), "{refused}");
    }

    #[test]
    fn rejects_bad_values_with_a_clear_message() {
        let short = Config::from_args(["--jwt-secret", "short"]).unwrap_err();
        assert!(short.to_string().contains("at least 32 bytes"), "{short}");
        let no_db = Config::from_args(["--database-url", "postgres://localhost:5432"]).unwrap_err();
        assert!(
            no_db.to_string().contains("must name a database"),
            "{no_db}"
        );
        assert!(Config::from_args(["--listen", "nowhere"]).is_err());
        assert!(Config::from_args(["--db-pool-size", "0"]).is_err());
        let amqp = Config::from_args(["--amqp-url", "http://rabbit"]).unwrap_err();
        assert!(amqp.to_string().contains("starts with amqp://"), "{amqp}");
        assert!(Config::from_args(["--amqp-url", "amqps://u:p@rabbit.example/v"]).is_ok());
        assert!(Config::from_args(["--redis-url", "rediss://cache.example:6380"]).is_ok());
        let pg = "postgres://u@db.example/app?sslmode=verify-full";
        assert!(Config::from_args(["--database-url", pg]).is_ok());
        assert!(Config::from_args(["--routing", "bucket:0"]).is_err());
        assert!(Config::from_args(["--max-sockets-per-user", "0"]).is_err());
        assert!(Config::from_args(["--amqp-queue-expiry-secs", "0"]).is_err());
        assert!(Config::from_args(["--redis-url", "localhost:6379"]).is_err());
        assert!(Config::from_args(["--trusted-proxies", "nginx"]).is_err());
        assert!(Config::from_args(["--login-per-minute", "0"]).is_err());
    }

    #[test]
    fn trusts_loopback_proxies_by_default() {
        let config = Config::from_args(Vec::<String>::new()).unwrap();
        assert!(
            config
                .trusted_proxies
                .iter()
                .any(|net| net.contains("127.0.0.1".parse().unwrap()))
        );
        assert!(
            config
                .trusted_proxies
                .iter()
                .any(|net| net.contains("::1".parse().unwrap()))
        );
        assert!(
            !config
                .trusted_proxies
                .iter()
                .any(|net| net.contains("10.0.0.1".parse().unwrap()))
        );
        let listed = Config::from_args(["--trusted-proxies", "10.0.0.0/8,192.0.2.1"]).unwrap();
        assert_eq!(listed.trusted_proxies.len(), 2);
    }

    #[test]
    fn reads_the_token_secret_from_a_file() {
        let dir = std::env::temp_dir().join(format!("livefeed-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("jwt");
        let path = file.to_str().unwrap();
        let config = Config::from_args(["--jwt-secret-file", path]).unwrap();
        let missing = config.token_secret().unwrap_err();
        assert!(
            missing.contains("cannot read the token secret file"),
            "{missing}"
        );

        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let secret = config.token_secret().unwrap().unwrap();
        assert_eq!(secret.expose(), b"0123456789abcdef0123456789abcdef");

        std::fs::write(&file, "short\n").unwrap();
        let short = config.token_secret().unwrap_err();
        assert!(short.contains("at least 32 bytes"), "{short}");
        std::fs::remove_dir_all(&dir).unwrap();

        let both = ["--jwt-secret-file", path, "--jwt-secret", &"s".repeat(32)];
        assert!(Config::from_args(both).is_err());
        assert!(
            Config::from_args(Vec::<String>::new())
                .unwrap()
                .token_secret()
                .unwrap()
                .is_none()
        );
    }
}
