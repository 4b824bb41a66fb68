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
    let events = app.announcer.follow_changed(me, friend, true);
    app.store.follow(me, friend, &events).await?;
    Ok(ok_empty())
}

pub async fn unfollow(app: &App, me: UserId, friend: UserId) -> Result<Response<Body>, ApiError> {
    let events = app.announcer.follow_changed(me, friend, false);
    app.store.unfollow(me, friend, &events).await?;
    Ok(ok_empty())
}
