use std::net::IpAddr;

use hyper::Response;
use serde_json::json;

use crate::app::App;
use crate::domain::{Credentials, NewUser, UserId, UserSearch};
use crate::http::response::ok;
use crate::http::{ApiError, Body};

/// Limited per client address: each costs a password hash.
pub async fn register(app: &App, from: IpAddr, user: NewUser) -> Result<Response<Body>, ApiError> {
    app.throttles
        .register(from)
        .map_err(ApiError::TooManyRequests)?;
    let hash = app.passwords.hash(&user.password).await?;
    let id = app.store.create_user(&user, &hash).await?;
    Ok(ok(&json!({ "user_id": id })))
}

/// The spec answers 404 for an unknown user and 400 for other invalid
/// credentials, so a wrong password is a 400. Limited per client address
/// and per user, before anything is looked up or hashed.
pub async fn login(
    app: &App,
    from: IpAddr,
    credentials: Credentials,
) -> Result<Response<Body>, ApiError> {
    app.throttles
        .login(from, credentials.id)
        .map_err(ApiError::TooManyRequests)?;
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
