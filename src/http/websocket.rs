//! `GET /post/feed/posted`: the websocket handshake, done by us on hyper.

use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::extract::query_str;
use super::{ApiError, Body};
use crate::app::App;
use crate::domain::PostId;
use crate::realtime::{Refusal, Upgraded};

#[derive(Deserialize)]
struct FeedQuery {
    /// For browsers, which cannot set headers on a websocket request.
    token: Option<String>,
    since: Option<PostId>,
}

pub async fn upgrade(
    app: &App,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let accept = accept_key(request.headers())?;
    let query: FeedQuery = query_str(request.uri().query())?;
    let user = match &query.token {
        Some(token) => app.tokens.verify(token)?,
        None => app.tokens.verify_header(
            request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )?,
    };
    let slot = app.realtime.admit(user).map_err(|refusal| match refusal {
        Refusal::InstanceFull => ApiError::TooManySockets,
        Refusal::UserFull(cap) => ApiError::TooManyUserSockets(cap),
    })?;

    let on_upgrade = hyper::upgrade::on(&mut request);
    let send_buffer = app.limits.ws_send_buffer;
    let ws = async move {
        match on_upgrade.await {
            Ok(upgraded) => Some(into_websocket(upgraded, send_buffer)),
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                None
            }
        }
    };
    app.realtime.spawn_session(slot, ws, query.since);

    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// Checks the request is a version-13 websocket handshake (RFC 6455 4.2.1)
/// and answers the `Sec-WebSocket-Accept` value for its key.
fn accept_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let bad = |why: &str| {
        Err(ApiError::BadRequest(format!(
            "not a websocket handshake: {why}"
        )))
    };
    if !has_token(headers, UPGRADE, "websocket") {
        return bad("expected `Upgrade: websocket`");
    }
    if !has_token(headers, CONNECTION, "upgrade") {
        return bad("expected `Connection: Upgrade`");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return bad("expected `Sec-WebSocket-Version: 13`");
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return bad("missing `Sec-WebSocket-Key`");
    };
    if !is_valid_key(key.as_bytes()) {
        return bad("`Sec-WebSocket-Key` must be 16 bytes in base64");
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// Whether a comma-separated header holds `token`, case-insensitively.
fn has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Base64 of 16 bytes: 22 characters of the alphabet and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Takes the TCP stream back from hyper, dropping hyper's per-connection
/// machinery: the session reads and writes the socket itself, holding no
/// buffer while idle.
fn into_websocket(upgraded: hyper::upgrade::Upgraded, send_buffer: usize) -> Upgraded {
    let parts = upgraded
        .downcast::<TokioIo<TcpStream>>()
        .expect("the server only serves TCP streams");
    let stream = parts.io.into_inner();
    if send_buffer > 0 {
        // A small kernel buffer makes a client that stops reading show up as
        // a slow consumer after kilobytes, not megabytes, of backlog.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer);
    }
    Upgraded {
        stream,
        early: parts.read_buf.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    const GOOD: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accepts_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(&handshake(&GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refuses_incomplete_or_wrong_handshakes() {
        for (index, bad_value) in [(0, "h2c"), (1, "close"), (2, "8"), (3, "short")] {
            let mut pairs = GOOD.to_vec();
            pairs[index].1 = bad_value;
            assert!(accept_key(&handshake(&pairs)).is_err(), "{pairs:?}");
        }
        assert!(accept_key(&handshake(&GOOD[..3])).is_err());
    }
}
