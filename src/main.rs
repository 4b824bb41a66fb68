use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use livefeed::app::App;
use livefeed::cache::{self, Feeds, WarmOptions};
use livefeed::config::{Config, DatabaseConfig, WarmCacheArgs};
use livefeed::store::{Store, StoreSettings};
use livefeed::{server, store};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long start-up keeps retrying while PostgreSQL is not reachable yet
/// (a compose stack starting, a database restarting).
const STARTUP_DATABASE_WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    version,
    about = "livefeed: a social-network backend whose feed updates live"
)]
struct Cli {
    /// Log filter, in tracing's EnvFilter syntax (e.g.
    /// `info,livefeed::access=off`); `RUST_LOG` when this is unset, else `info`.
    #[arg(long, env = "LIVEFEED_LOG", global = true)]
    log: Option<String>,

    /// `text` for people, `json` (one object a line) for log collectors.
    #[arg(long, env = "LIVEFEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// PEM file of the CA(s) that sign the stores' TLS certificates
    /// (`sslmode=require` PostgreSQL, `rediss://`, `amqps://`), trusted
    /// instead of the system's CA store: a provider's private CA or a
    /// self-signed one.
    #[arg(long, env = "LIVEFEED_TLS_CA_FILE", global = true)]
    tls_ca_file: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve the API.
    Serve(Box<Config>),
    /// Apply pending migrations and exit.
    Migrate(DatabaseConfig),
    /// Fill the database with a deterministic data set (users, follows,
    /// posts) for load tests; see db/generate_data.sh.
    Seed(livefeed::seed::SeedArgs),
    /// Build the Redis feeds from PostgreSQL ahead of their first read
    /// (safe while the service runs); see cache/generate_data.sh.
    WarmCache(WarmCacheArgs),
}

fn main() -> ExitCode {
    let small_pages = livefeed::memory::small_pages_only();
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log, cli.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Err(error) = small_pages {
        tracing::warn!(%error, "the heap may grow in huge pages");
    }
    if let Err(e) = livefeed::tls::set_ca_file(cli.tls_ca_file.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(livefeed::memory::on_worker_park)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: Option<String>, format: LogFormat) -> Result<(), String> {
    let (filter, source) = match filter {
        Some(filter) => (filter, "LIVEFEED_LOG"),
        None => match std::env::var("RUST_LOG") {
            Ok(filter) => (filter, "RUST_LOG"),
            Err(_) => ("info".to_owned(), "the default"),
        },
    };
    let filter = EnvFilter::try_new(&filter)
        .map_err(|e| format!("invalid log filter {filter:?} (from {source}): {e}"))?;
    // Colours only for a terminal: escape codes in a log file or a
    // collector's input are noise, and writing them cost measurable CPU
    // per access line.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        // Fields at the top level, and the request span (its request id)
        // beside them, so a collector can index both without unnesting.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(database) => store::migrate(&database.database_url).await,
        Command::Serve(config) => serve(*config).await,
        Command::Seed(args) => livefeed::seed::run(&args).await.map(drop),
        Command::WarmCache(args) => warm_cache(args).await,
    }
}

async fn warm_cache(args: WarmCacheArgs) -> anyhow::Result<()> {
    let concurrency = usize::from(args.concurrency);
    let store = Store::new(&StoreSettings {
        database_url: args.database.database_url.clone(),
        pool_size: concurrency + 1,
        acquire_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(60),
    })
    .context("configuring the database pool")?;
    let feeds = Feeds::new(store.clone(), &args.cache.settings()).context("configuring Redis")?;
    let options = WarmOptions {
        users: args.users,
        concurrency,
    };
    let report = cache::warm(&store, &feeds, &options).await?;
    eprintln!(
        "built {} feeds in {:.1} s ({:.0}/s), {} failed",
        report.built,
        report.elapsed.as_secs_f64(),
        report.built as f64 / report.elapsed.as_secs_f64().max(0.001),
        report.failed
    );
    anyhow::ensure!(
        report.failed == 0,
        "{} feeds could not be built",
        report.failed
    );
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    migrate_when_reachable(&config.database.database_url).await?;
    let app = App::start(&config, config.broker()).context("building the application")?;
    let listener =
        server::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    server::run(listener, Arc::new(app), shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Every websocket is a file descriptor: take all the kernel allows.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = rlimit::Resource::NOFILE
                .get()
                .map_or(soft, |(_, hard)| hard);
            tracing::info!(soft, hard, "file descriptor limit");
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

async fn migrate_when_reachable(database_url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_DATABASE_WAIT;
    loop {
        match store::migrate(database_url).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!("database not ready, retrying: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context("applying migrations at start-up")),
        }
    }
}

/// Completes on SIGTERM (how orchestrators stop a container) or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
