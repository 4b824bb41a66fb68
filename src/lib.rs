//! livefeed: a social-network backend whose feed updates live.
//!
//! # Layout
//!
//! A request enters at [`server`] (accept loop, connection cap, graceful
//! shutdown), is routed and parsed into [`domain`] types by [`http`], and is
//! answered from the parts in [`app::App`]:
//!
//! - [`config`]: flags and environment variables, checked at start-up.
//! - [`http`]: routing, extraction, the websocket upgrade, and the one place
//!   where errors become status codes (`http::error`).
//! - [`domain`]: validated types (ids, names, post text, paging).
//! - [`auth`]: password hashing, signed tokens, login/registration limits.
//! - [`store`]: PostgreSQL, the source of truth; the only module with SQL.
//! - [`outbox`]: the events a write announces, stored in the write's
//!   transaction and published by the relay afterwards.
//! - [`broker`]: carries those events between instances (RabbitMQ, or an
//!   in-process bus for a single instance).
//! - [`realtime`]: the live feed: sockets, their subscriptions, fan-out,
//!   recovery of missed posts (`?since=`), pings, admission limits.
//! - [`cache`]: the feed in Redis, materialised by the feed worker, with
//!   PostgreSQL behind it whenever Redis cannot answer; `warm-cache`.
//! - [`metrics`]: the `/metrics` counters; [`memory`]: returning freed
//!   socket memory to the OS.
//! - [`seed`]: `livefeed seed`, the deterministic load-test data set.
//! - [`tls`]: trust for TLS to the stores (`sslmode=require`, `rediss://`,
//!   `amqps://`).
//!
//! `server::run` serves an [`app::App`] on a listener until a shutdown future
//! completes; `main.rs` wires it to flags, signals and migrations.
//! ARCHITECTURE.md describes the data flow and guarantees.

pub mod app;
pub mod auth;
pub mod broker;
pub mod cache;
pub mod config;
pub mod domain;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod realtime;
pub mod seed;
pub mod server;
pub mod store;
pub mod tls;
