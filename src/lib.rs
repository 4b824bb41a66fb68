//! livefeed: a social-network backend whose feed updates live.
//!
//! `server::run` serves an [`app::App`] on a listener until a shutdown future
//! completes; `main.rs` wires it to flags, signals and migrations.

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
