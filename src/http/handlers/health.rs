use hyper::Response;
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
