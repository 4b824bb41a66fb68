//! The floor: the cheapest program that does the irreducible work of a
//! delivery, one `write()` of a pre-built websocket text frame per
//! subscriber per post, so that `broadcast --floor` can say how far above
//! it livefeed's delivery cost is, measured the same way in the same run.
//!
//! [`server`] is the program itself (`loadtest floor`); [`feed`] is the
//! parent's side: it starts the program and hands it the run's posts. The
//! floor must never do more per delivery than that one write: no task, no
//! poll, no copy, no per-socket state besides the socket.

pub mod feed;
pub mod server;
