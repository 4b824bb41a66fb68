use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use tracing::Instrument;

use super::extract::{caller, client, idempotency_key, json_body, query};
use super::handlers::{dialogs, friends, health, posts, users};
use super::page;
use super::router::{self, Route};
use super::websocket;
use super::{ApiError, Body};
use crate::app::App;

const X_REQUEST_ID: &str = "x-request-id";

/// Longest `X-Request-Id` taken from a client or proxy (nginx's
/// `$request_id` is 32 hex digits; a UUID is 36 characters).
const MAX_REQUEST_ID: usize = 64;
/// The route of requests no route matched, so a scan of random paths adds
/// one series to the metrics, not one per path.
const UNMATCHED: &str = "unmatched";

/// Serves one request. Never fails: every error becomes a JSON response
/// here. Every request ends with one access line (target `livefeed::access`)
/// and is counted in the per-route metrics.
pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(request.headers().get(X_REQUEST_ID));
    let method = method_label(request.method());
    let route = router::resolve(request.method(), request.uri().path())
        .map_or(UNMATCHED, |route| route.template());
    let span = tracing::info_span!("request", request_id = %request_id);
    async move {
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
            response.headers_mut().insert(X_REQUEST_ID, value);
        }
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        app.realtime
            .metrics()
            .observe_request(route, method, status, elapsed);
        tracing::info!(
            target: "livefeed::access",
            method,
            route,
            status,
            micros = elapsed.as_micros() as u64,
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

/// The caller's request id when it is a sane one (the balancer's, so one
/// request can be followed through nginx and the instance), else a new one.
/// Sane: at most [`MAX_REQUEST_ID`] characters of `[A-Za-z0-9._:-]`, so
/// it cannot forge log lines or bloat them.
fn request_id(incoming: Option<&HeaderValue>) -> String {
    let valid = |id: &[u8]| {
        (1..=MAX_REQUEST_ID).contains(&id.len())
            && id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
    };
    match incoming.map(HeaderValue::as_bytes) {
        // Only ASCII passed the check.
        Some(id) if valid(id) => String::from_utf8_lossy(id).into_owned(),
        _ => next_request_id(),
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

/// The method as a metric label: the standard ones, else `OTHER`, so
/// invented methods cannot add series.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("OTHER")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_incoming_request_id() {
        let nginx = HeaderValue::from_static("0f3a9c2e8b7d4e1fa2b3c4d5e6f70812");
        assert_eq!(request_id(Some(&nginx)), "0f3a9c2e8b7d4e1fa2b3c4d5e6f70812");
        let uuid = HeaderValue::from_static("e4d2e6b0-cde2-42c5-aac3-0b8316f21e58");
        assert_eq!(request_id(Some(&uuid)), uuid.to_str().unwrap());
    }

    #[test]
    fn replaces_an_unsafe_or_oversized_request_id() {
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        let bad = [
            HeaderValue::from_static(""),
            HeaderValue::from_static("a b"),
            HeaderValue::from_static("x\" level=\"ERROR"),
            HeaderValue::from_str(&long).unwrap(),
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        ];
        for value in bad.iter().map(Some).chain([None]) {
            let id = request_id(value);
            assert_ne!(Some(id.as_bytes()), value.map(HeaderValue::as_bytes));
            assert!(id.len() <= MAX_REQUEST_ID && !id.is_empty(), "{id}");
        }
        let exact = "a".repeat(MAX_REQUEST_ID);
        let exact_value = HeaderValue::from_str(&exact).unwrap();
        assert_eq!(request_id(Some(&exact_value)), exact);
    }

    #[test]
    fn labels_unknown_methods_as_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
