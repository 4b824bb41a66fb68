//! One function per endpoint. Each takes domain values already parsed and
//! authenticated by the dispatcher, so none of them touches the raw request.

pub mod dialogs;
pub mod friends;
pub mod health;
pub mod posts;
pub mod users;

use hyper::Response;

use super::Body;
use super::response::stored;
use crate::domain::{IdempotencyKey, UserId};
use crate::store::{Endpoint, Once, Outcome, StoredResponse};

/// A write's idempotency: its key (if the client sent one), what it is asked
/// to do, and the 200 it answers when it succeeds.
pub struct Keyed<'a> {
    once: Option<Once<'a>>,
    response: StoredResponse,
}

impl<'a> Keyed<'a> {
    pub fn new(
        key: Option<&'a IdempotencyKey>,
        user: UserId,
        endpoint: Endpoint,
        request: Vec<u8>,
        body: Vec<u8>,
    ) -> Self {
        let response = StoredResponse { status: 200, body };
        Self {
            once: key.map(|key| Once {
                user,
                endpoint,
                key,
                request,
                response: response.clone(),
            }),
            response,
        }
    }

    pub fn once(&self) -> Option<&Once<'a>> {
        self.once.as_ref()
    }

    /// The response of the write that did `outcome`.
    pub fn answer(self, outcome: Outcome) -> Response<Body> {
        match outcome {
            Outcome::Written => stored(self.response, false),
            Outcome::Replayed(earlier) => stored(earlier, true),
        }
    }
}
