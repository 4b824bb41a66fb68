//! Keeps every live socket answering: one task per instance pings each
//! socket once per ping interval and ends those that did not answer the
//! previous ping, so no socket holds a timer of its own while idle.
//!
//! The sockets are visited in slices by user, one slice per tick, so the
//! pings of a connect storm's sockets spread over the interval instead of
//! going out in one burst. Never writes anything but a ping, and never
//! waits on a socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::recovery::Horizon;
use super::registry::Registry;
use crate::domain::UserId;

/// Ticks per ping interval; each visits the sockets of one slice of users.
const SLICES: u32 = 16;

pub(super) async fn run(registry: Arc<Registry>, horizon: Arc<Horizon>, ping_interval: Duration) {
    let period = ping_interval / SLICES;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for slice in (0..SLICES).cycle() {
        tick.tick().await;
        let (now, oldest) = (Instant::now(), horizon.oldest());
        for socket in registry.sockets_where(|user| slice_of(user) == slice) {
            socket.heartbeat(now, oldest);
        }
    }
}

fn slice_of(user: UserId) -> u32 {
    (user.as_uuid().as_u128() % u128::from(SLICES)) as u32
}
