use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER};
use std::time::Duration;

use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use super::response::{Body, json};
use super::router::RouteError;
use crate::auth::{PasswordError, TokenError};
use crate::domain::ValidationError;
use crate::store::StoreError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("2");

/// Every way a request can fail. This is the only place errors become
/// status codes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(#[from] TokenError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed, use {0}")]
    MethodNotAllowed(Method),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("database unavailable, retry later")]
    Unavailable(#[source] StoreError),
    #[error("request timed out, retry later")]
    Timeout,
    #[error("this Idempotency-Key was used for a different request")]
    KeyReused,
    #[error("too many attempts, retry in {} s", retry_after_secs(*.0))]
    TooManyRequests(Duration),
    #[error("too many open websockets on this instance, retry later")]
    TooManySockets,
    #[error("this user already holds {0} open websockets, the most allowed; close one first")]
    TooManyUserSockets(u32),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The spec's error body; every error answers with it.
#[derive(Serialize)]
struct ErrorBody<'a> {
    message: String,
    request_id: &'a str,
    code: u16,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::TooManyUserSockets(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Timeout | Self::TooManySockets => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable number per kind of failure, for clients to classify errors.
    pub fn code(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 1000,
            Self::PayloadTooLarge(_) => 1001,
            Self::Unauthorized(_) => 1100,
            Self::Forbidden(_) => 1103,
            Self::NotFound(_) => 1104,
            Self::NoRoute => 1105,
            Self::MethodNotAllowed(_) => 1106,
            Self::KeyReused => 1122,
            Self::TooManyRequests(_) => 1129,
            Self::TooManyUserSockets(_) => 1130,
            Self::Internal(_) => 2000,
            Self::Unavailable(_) => 2001,
            Self::Timeout => 2002,
            Self::TooManySockets => 2003,
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let body = ErrorBody {
            message: self.to_string(),
            request_id,
            code: self.code(),
        };
        let mut response = json(self.status(), &body);
        let headers = response.headers_mut();
        match &self {
            Self::Unavailable(_) | Self::Timeout | Self::TooManySockets => {
                headers.insert(RETRY_AFTER, RETRY_AFTER_SECS);
            }
            Self::TooManyRequests(wait) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(*wait)));
            }
            Self::MethodNotAllowed(allowed) => {
                headers.insert(
                    ALLOW,
                    HeaderValue::from_str(allowed.as_str()).expect("method names are valid"),
                );
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds, rounded up: retrying after them is allowed.
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::BadRequest(e.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::NotAuthor => Self::Forbidden(e.to_string()),
            StoreError::UnknownCaller => Self::Unauthorized(TokenError::UnknownUser),
            StoreError::KeyReused => Self::KeyReused,
            StoreError::Unavailable(_) => Self::Unavailable(e),
            StoreError::Config(_) | StoreError::Query(_) => Self::Internal(Box::new(e)),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        Self::Internal(Box::new(e))
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound => Self::NoRoute,
            RouteError::MethodNotAllowed(allowed) => Self::MethodNotAllowed(allowed),
        }
    }
}
