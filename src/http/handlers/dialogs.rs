use hyper::Response;

use crate::app::App;
use crate::domain::{NewMessage, UserId};
use crate::http::response::{ok, ok_empty};
use crate::http::{ApiError, Body};

pub async fn send(
    app: &App,
    me: UserId,
    to: UserId,
    message: NewMessage,
) -> Result<Response<Body>, ApiError> {
    if me == to {
        return Err(ApiError::BadRequest(
            "cannot send a message to yourself".into(),
        ));
    }
    app.store.send_message(me, to, &message.text).await?;
    Ok(ok_empty())
}

pub async fn list(app: &App, me: UserId, other: UserId) -> Result<Response<Body>, ApiError> {
    Ok(ok(&app.store.dialog(me, other).await?))
}
