use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tracing::Instrument;

use super::extract::{caller, client, idempotency_key, json_body, query};
use super::handlers::{dialogs, friends, health, posts, users};
use super::page;
use super::router::{self, Route};
use super::websocket;
use super::{ApiError, Body};
use crate::app::App;

/// Serves one request. Never fails: every error becomes a JSON response here.
pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let request_id = next_request_id();
    let span = tracing::info_span!(
        "request",
        id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    async move {
        let started = Instant::now();
        let outcome = tokio::time::timeout(app.limits.request_timeout, dispatch(&app, request))
            .await
            .unwrap_or(Err(ApiError::Timeout));
        let mut response = outcome.unwrap_or_else(|error| {
            if error.status().is_server_error() {
                tracing::error!(error = %error_chain(&error), "request failed");
            }
            error.into_response(&request_id)
        });
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        tracing::debug!(
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "served"
        );
        response
    }
    .instrument(span)
    .await
}

async fn dispatch(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    match router::resolve(&parts.method, parts.uri.path())? {
        Route::Login => {
            let from = client(app, &parts);
            users::login(app, from, json_body(app, &parts, body).await?).await
        }
        Route::Register => {
            let from = client(app, &parts);
            users::register(app, from, json_body(app, &parts, body).await?).await
        }
        Route::GetUser(id) => users::get(app, id.parse()?).await,
        Route::SearchUsers => users::search(app, query(&parts)?).await,
        Route::SetFriend(id) => friends::follow(app, caller(app, &parts)?, id.parse()?).await,
        Route::DeleteFriend(id) => friends::unfollow(app, caller(app, &parts)?, id.parse()?).await,
        Route::CreatePost => {
            let me = caller(app, &parts)?;
            let key = idempotency_key(&parts)?;
            posts::create(app, me, json_body(app, &parts, body).await?, key).await
        }
        Route::UpdatePost => {
            let me = caller(app, &parts)?;
            posts::update(app, me, json_body(app, &parts, body).await?).await
        }
        Route::DeletePost(id) => posts::delete(app, caller(app, &parts)?, id.parse()?).await,
        Route::GetPost(id) => {
            caller(app, &parts)?;
            posts::get(app, id.parse()?).await
        }
        Route::Feed => posts::feed(app, caller(app, &parts)?, query(&parts)?).await,
        Route::SendMessage(id) => {
            let me = caller(app, &parts)?;
            let to = id.parse()?;
            let key = idempotency_key(&parts)?;
            dialogs::send(app, me, to, json_body(app, &parts, body).await?, key).await
        }
        Route::ListDialog(id) => dialogs::list(app, caller(app, &parts)?, id.parse()?).await,
        Route::Health => Ok(health::live()),
        Route::Ready => health::ready(app).await,
        Route::Metrics => Ok(health::metrics(app).await),
        Route::Page(asset) => Ok(page::serve(asset, &parts.headers)),
        Route::FeedSocket => websocket::upgrade(app, Request::from_parts(parts, body)).await,
    }
}

/// A process-unique request id: a random per-process prefix (so ids from two
/// instances behind one balancer do not collide) and a counter.
fn next_request_id() -> String {
    static PREFIX: LazyLock<u32> = LazyLock::new(|| uuid::Uuid::new_v4().as_u128() as u32);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:08x}-{:x}",
        *PREFIX,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
