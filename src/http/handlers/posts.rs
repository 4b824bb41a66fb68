use hyper::Response;

use super::Keyed;
use crate::app::App;
use crate::domain::{FeedPage, IdempotencyKey, NewPost, Post, PostEdit, PostId, UserId};
use crate::http::response::{ok, ok_empty, ok_json_bytes};
use crate::http::{ApiError, Body};
use crate::store::Endpoint;

/// Answers the new post's id as a bare JSON string, as the spec says. The
/// live and feed events are stored with the post and published after commit.
/// With an idempotency key, a retry answers the first request's id.
pub async fn create(
    app: &App,
    me: UserId,
    new: NewPost,
    key: Option<IdempotencyKey>,
) -> Result<Response<Body>, ApiError> {
    let post = Post {
        id: PostId::new_v7(),
        text: new.text.as_str().to_owned(),
        author_user_id: me,
    };
    let keyed = Keyed::new(
        key.as_ref(),
        me,
        Endpoint::CreatePost,
        post.text.as_bytes().to_vec(),
        serde_json::to_vec(&post.id).expect("ids serialise"),
    );
    let events = app.announcer.post_created(&post);
    let outcome = app.store.create_post(&post, &events, keyed.once()).await?;
    Ok(keyed.answer(outcome))
}

pub async fn update(app: &App, me: UserId, edit: PostEdit) -> Result<Response<Body>, ApiError> {
    let events = app.announcer.post_updated(edit.id);
    app.store
        .update_post(me, edit.id, &edit.text, &events)
        .await?;
    Ok(ok_empty())
}

pub async fn delete(app: &App, me: UserId, id: PostId) -> Result<Response<Body>, ApiError> {
    let events = app.announcer.post_deleted(id, me);
    app.store.delete_post(me, id, &events).await?;
    Ok(ok_empty())
}

pub async fn get(app: &App, id: PostId) -> Result<Response<Body>, ApiError> {
    Ok(ok(&app.store.post(id).await?))
}

pub async fn feed(app: &App, me: UserId, page: FeedPage) -> Result<Response<Body>, ApiError> {
    Ok(ok_json_bytes(app.feeds.page(me, page).await?))
}
