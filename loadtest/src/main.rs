//! `loadtest`: drives one or more livefeed instances with websocket
//! subscribers and REST traffic, and checks that every subscriber gets
//! exactly the posts it should, measuring latency and the servers' cost.
//!
//! The parent process seeds users straight into PostgreSQL, mints their
//! tokens, publishes posts and merges results; websocket clients live in
//! worker processes (this same binary, `loadtest worker`) so that no process
//! needs more file descriptors than the machine allows. See README.md.

mod broadcast;
mod client;
mod cost;
mod fanout;
mod fleet;
mod floor;
mod http;
mod marker;
mod nchan;
mod opts;
mod pace;
mod population;
mod procfs;
mod protocol;
mod publish;
mod report;
mod rest;
mod rng;
mod social;
mod stats;
mod storm;
mod token;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for livefeed: websocket fan-out, connect storms and REST"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One author, N subscribers: M posts at rate R, each must reach everyone.
    Broadcast(broadcast::Args),
    /// U users following each other; random authors post at rate R, each
    /// subscriber must get exactly the posts of the users it follows.
    Social(social::Args),
    /// Open C websockets as fast as the server accepts them, then close them.
    ConnectStorm(storm::Args),
    /// A mix of REST calls at a target rate (or as fast as possible).
    Rest(rest::Args),
    /// The floor: accept websocket subscribers, then write each post named
    /// on stdin (JSON lines) to every one of them, one write() each.
    Floor(floor::server::Args),
    /// Internal: a worker process holding a slice of the websocket clients.
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker = cli.command {
        return match worker::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest worker: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    opts::raise_fd_limit();
    if let Command::Floor(args) = &cli.command {
        return match floor::server::main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest floor: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Broadcast(args) => broadcast::run(args).await,
            Command::Social(args) => social::run(args).await,
            Command::ConnectStorm(args) => storm::run(args).await,
            Command::Rest(args) => rest::run(args).await,
            Command::Worker | Command::Floor(_) => unreachable!("handled above"),
        }
    });
    // Dropping the runtime must not wait for stuck tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(report::Verdict::Pass) => ExitCode::SUCCESS,
        Ok(report::Verdict::Fail) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
