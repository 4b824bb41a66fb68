use hyper::Response;

use crate::app::App;
use crate::domain::UserId;
use crate::http::response::ok_empty;
use crate::http::{ApiError, Body};

pub async fn follow(app: &App, me: UserId, friend: UserId) -> Result<Response<Body>, ApiError> {
    if me == friend {
        return Err(ApiError::BadRequest(
            "a user cannot follow themselves".into(),
        ));
    }
    app.store.follow(me, friend).await?;
    Ok(ok_empty())
}

pub async fn unfollow(app: &App, me: UserId, friend: UserId) -> Result<Response<Body>, ApiError> {
    app.store.unfollow(me, friend).await?;
    Ok(ok_empty())
}
