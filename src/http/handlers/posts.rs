use hyper::Response;

use crate::app::App;
use crate::domain::{FeedPage, NewPost, PostEdit, PostId, UserId};
use crate::http::response::{ok, ok_empty};
use crate::http::{ApiError, Body};

/// Answers the new post's id as a bare JSON string, as the spec says.
pub async fn create(app: &App, me: UserId, post: NewPost) -> Result<Response<Body>, ApiError> {
    let id = app.store.create_post(me, &post.text).await?;
    Ok(ok(&id))
}

pub async fn update(app: &App, me: UserId, edit: PostEdit) -> Result<Response<Body>, ApiError> {
    app.store.update_post(me, edit.id, &edit.text).await?;
    Ok(ok_empty())
}

pub async fn delete(app: &App, me: UserId, id: PostId) -> Result<Response<Body>, ApiError> {
    app.store.delete_post(me, id).await?;
    Ok(ok_empty())
}

pub async fn get(app: &App, id: PostId) -> Result<Response<Body>, ApiError> {
    Ok(ok(&app.store.post(id).await?))
}

pub async fn feed(app: &App, me: UserId, page: FeedPage) -> Result<Response<Body>, ApiError> {
    Ok(ok(&app.store.feed(me, page).await?))
}
