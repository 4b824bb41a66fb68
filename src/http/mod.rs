//! The HTTP edge: routing, request parsing into domain types, and the one
//! place where errors become status codes.

mod client;
mod error;
mod extract;
mod handlers;
mod page;
mod response;
pub mod router;
mod service;
mod websocket;

pub use client::{IpNet, Peer};
pub use error::ApiError;
pub use response::Body;
pub use service::handle;
