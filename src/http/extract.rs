//! Turning the raw request into domain values, or a 4xx.

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH};
use hyper::http::request::Parts;
use serde::de::DeserializeOwned;

use std::net::IpAddr;

use super::ApiError;
use super::client::client_address;
use crate::app::App;
use crate::domain::{IdempotencyKey, UserId};

/// The body parsed as JSON into `T`, whose own `Deserialize` enforces the
/// domain rules. Bodies over the configured limit are refused with 413
/// without being read in full.
pub async fn json_body<T: DeserializeOwned>(
    app: &App,
    parts: &Parts,
    body: Incoming,
) -> Result<T, ApiError> {
    let limit = app.limits.max_body_bytes;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

/// The query string parsed into `T`.
pub fn query<T: DeserializeOwned>(parts: &Parts) -> Result<T, ApiError> {
    query_str(parts.uri.query())
}

pub fn query_str<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
}

/// The user named by the request's bearer token.
pub fn caller(app: &App, parts: &Parts) -> Result<UserId, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
    Ok(app.tokens.verify_header(header)?)
}

/// The request's `Idempotency-Key`, if it sent one (400 when malformed or
/// sent twice).
pub fn idempotency_key(parts: &Parts) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = parts.headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "send one Idempotency-Key header, not several".into(),
        ));
    }
    Ok(Some(IdempotencyKey::parse(value.as_bytes())?))
}

/// The client's address, for rate limits (see [`super::client`]).
pub fn client(app: &App, parts: &Parts) -> IpAddr {
    client_address(parts, &app.limits.trusted_proxies)
        .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
}
