use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::store::StoredResponse;
use serde::Serialize;

pub type Body = Full<Bytes>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    // Serialising our own plain data types into memory cannot fail.
    let body = serde_json::to_vec(value).expect("response types serialise");
    let mut response = ok_json_bytes(Bytes::from(body));
    *response.status_mut() = status;
    response
}

pub fn ok<T: Serialize + ?Sized>(value: &T) -> Response<Body> {
    json(StatusCode::OK, value)
}

/// 200 with a body that is JSON already.
pub fn ok_json_bytes(body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

/// 200 with no body: what the spec documents for writes with nothing to return.
pub fn ok_empty() -> Response<Body> {
    Response::new(Full::new(Bytes::new()))
}

/// A write's response as stored with its idempotency key; `replayed` marks
/// one answered again to a retry, which did not write.
pub fn stored(response: StoredResponse, replayed: bool) -> Response<Body> {
    let mut answer = if response.body.is_empty() {
        ok_empty()
    } else {
        ok_json_bytes(Bytes::from(response.body))
    };
    *answer.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    if replayed {
        answer
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    answer
}
