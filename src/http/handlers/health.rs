use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::json;

use crate::app::App;
use crate::http::response::ok;
use crate::http::{ApiError, Body};

/// The process is up and serving.
pub fn live() -> Response<Body> {
    ok(&json!({ "status": "ok" }))
}

/// The process can do its job: PostgreSQL answers.
pub async fn ready(app: &App) -> Result<Response<Body>, ApiError> {
    app.store.ping().await?;
    Ok(ok(&json!({ "status": "ready" })))
}

/// Prometheus text exposition.
pub async fn metrics(app: &App) -> Response<Body> {
    let gauges = app.realtime.gauges().await;
    let mut response = Response::new(Body::from(app.realtime.metrics().render(&gauges)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
