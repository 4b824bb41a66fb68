use hyper::Response;
use serde_json::json;

use crate::app::App;
use crate::domain::{Credentials, NewUser, UserId, UserSearch};
use crate::http::response::ok;
use crate::http::{ApiError, Body};

pub async fn register(app: &App, user: NewUser) -> Result<Response<Body>, ApiError> {
    let hash = app.passwords.hash(&user.password).await?;
    let id = app.store.create_user(&user, &hash).await?;
    Ok(ok(&json!({ "user_id": id })))
}

/// The spec answers 404 for an unknown user and 400 for other invalid
/// credentials, so a wrong password is a 400.
pub async fn login(app: &App, credentials: Credentials) -> Result<Response<Body>, ApiError> {
    let hash = app.store.password_hash(credentials.id).await?;
    if !app.passwords.verify(&credentials.password, hash).await? {
        return Err(ApiError::BadRequest("wrong password".into()));
    }
    Ok(ok(&json!({ "token": app.tokens.issue(credentials.id) })))
}

pub async fn get(app: &App, id: UserId) -> Result<Response<Body>, ApiError> {
    Ok(ok(&app.store.user(id).await?))
}

pub async fn search(app: &App, search: UserSearch) -> Result<Response<Body>, ApiError> {
    Ok(ok(&app.store.search_users(&search).await?))
}
