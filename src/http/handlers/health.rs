use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::json;

use crate::app::App;
use crate::http::response::ok;
use crate::http::{ApiError, Body};
use crate::metrics::{self, Pools};

/// The process is up and serving.
pub fn live() -> Response<Body> {
    ok(&json!({ "status": "ok" }))
}

/// The process can do its job: PostgreSQL answers.
pub async fn ready(app: &App) -> Result<Response<Body>, ApiError> {
    app.store.ping().await?;
    Ok(ok(&json!({ "status": "ready" })))
}

/// Prometheus's OpenMetrics text exposition.
pub async fn metrics(app: &App) -> Response<Body> {
    let gauges = app.realtime.gauges().await;
    let pools = Pools {
        database: app.store.pool_usage(),
        posts_waiting: app.store.posts_waiting(),
        redis_outages: app.feeds.redis_outages(),
    };
    let text = app.realtime.metrics().render(&gauges, &pools);
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}
