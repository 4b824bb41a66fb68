//! The HTTP client every scenario talks to livefeed with.

use std::time::Duration;

/// livefeed closes a connection that sent no request for 10 s (its header
/// read timeout runs while a connection is idle). A pooled connection kept
/// longer can be reused just as the server closes it, and its request then
/// fails before reaching the service (1 create in 120,000 in a 10-minute
/// soak). 5 s, as `deploy/nginx.conf` keeps its upstream connections.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// A client whose requests time out after `timeout`, keeping at most
/// `max_idle` idle connections per instance.
pub fn client(timeout: Duration, max_idle: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(POOL_IDLE)
        .build()
}
