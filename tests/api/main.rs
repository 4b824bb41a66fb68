//! Integration tests: the real server on port 0, real PostgreSQL, one fresh
//! database per test. One binary so the suite links once.

mod auth;
mod cache_faults;
mod connect_storm;
mod contract;
mod dialogs;
mod errors;
mod feed;
mod feed_cache;
mod feed_worker;
mod follow_race;
mod gap;
mod idempotency;
mod lifecycle;
mod limits;
mod live;
mod outage;
mod posts;
mod promises;
mod relay;
mod routing;
mod since;
mod sockets;
mod support;
mod users;
