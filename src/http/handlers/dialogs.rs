use hyper::Response;

use super::Keyed;
use crate::app::App;
use crate::domain::{IdempotencyKey, NewMessage, UserId};
use crate::http::response::ok;
use crate::http::{ApiError, Body};
use crate::store::Endpoint;

/// With an idempotency key, a retry is answered without a second message.
pub async fn send(
    app: &App,
    me: UserId,
    to: UserId,
    message: NewMessage,
    key: Option<IdempotencyKey>,
) -> Result<Response<Body>, ApiError> {
    if me == to {
        return Err(ApiError::BadRequest(
            "cannot send a message to yourself".into(),
        ));
    }
    // The same key to another recipient is another request.
    let mut request = to.as_uuid().as_bytes().to_vec();
    request.extend_from_slice(message.text.as_str().as_bytes());
    let keyed = Keyed::new(key.as_ref(), me, Endpoint::SendMessage, request, Vec::new());
    let outcome = app
        .store
        .send_message(me, to, &message.text, keyed.once())
        .await?;
    Ok(keyed.answer(outcome))
}

pub async fn list(app: &App, me: UserId, other: UserId) -> Result<Response<Body>, ApiError> {
    Ok(ok(&app.store.dialog(me, other).await?))
}
