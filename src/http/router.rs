//! Maps a method and path to a route. Pure, so the contract test can check
//! every path of the OpenAPI spec against it.

use hyper::Method;

use super::page::Asset;

/// An endpoint, with its path parameters still raw: they are parsed into
/// domain ids after authentication, so a bad token is a 401 even when the
/// id is malformed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Login,
    Register,
    GetUser(&'a str),
    SearchUsers,
    SetFriend(&'a str),
    DeleteFriend(&'a str),
    CreatePost,
    UpdatePost,
    DeletePost(&'a str),
    GetPost(&'a str),
    Feed,
    FeedSocket,
    SendMessage(&'a str),
    ListDialog(&'a str),
    Health,
    Ready,
    Metrics,
    /// The page at `/` and its files: not part of the spec.
    Page(Asset),
}

impl Route<'_> {
    /// The path with its parameters named, as the OpenAPI spec writes it:
    /// what logs and metrics show, so one endpoint is one series.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Login => "/login",
            Route::Register => "/user/register",
            Route::GetUser(_) => "/user/get/{id}",
            Route::SearchUsers => "/user/search",
            Route::SetFriend(_) => "/friend/set/{user_id}",
            Route::DeleteFriend(_) => "/friend/delete/{user_id}",
            Route::CreatePost => "/post/create",
            Route::UpdatePost => "/post/update",
            Route::DeletePost(_) => "/post/delete/{id}",
            Route::GetPost(_) => "/post/get/{id}",
            Route::Feed => "/post/feed",
            Route::FeedSocket => "/post/feed/posted",
            Route::SendMessage(_) => "/dialog/{user_id}/send",
            Route::ListDialog(_) => "/dialog/{user_id}/list",
            Route::Health => "/healthz",
            Route::Ready => "/readyz",
            Route::Metrics => "/metrics",
            Route::Page(Asset::Html) => "/",
            Route::Page(Asset::Script) => "/page.js",
            Route::Page(Asset::Style) => "/page.css",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists with another method, named here for the `Allow` header.
    MethodNotAllowed(Method),
}

pub fn resolve<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, RouteError> {
    let mut segments = [""; 4];
    let mut count = 0;
    for segment in path.strip_prefix('/').unwrap_or(path).split('/') {
        *segments.get_mut(count).ok_or(RouteError::NotFound)? = segment;
        count += 1;
    }
    let (route, allowed) = match &segments[..count] {
        ["login"] => (Route::Login, Method::POST),
        ["user", "register"] => (Route::Register, Method::POST),
        ["user", "get", id] => (Route::GetUser(id), Method::GET),
        ["user", "search"] => (Route::SearchUsers, Method::GET),
        ["friend", "set", id] => (Route::SetFriend(id), Method::PUT),
        ["friend", "delete", id] => (Route::DeleteFriend(id), Method::PUT),
        ["post", "create"] => (Route::CreatePost, Method::POST),
        ["post", "update"] => (Route::UpdatePost, Method::PUT),
        ["post", "delete", id] => (Route::DeletePost(id), Method::PUT),
        ["post", "get", id] => (Route::GetPost(id), Method::GET),
        ["post", "feed"] => (Route::Feed, Method::GET),
        ["post", "feed", "posted"] => (Route::FeedSocket, Method::GET),
        ["dialog", id, "send"] => (Route::SendMessage(id), Method::POST),
        ["dialog", id, "list"] => (Route::ListDialog(id), Method::GET),
        ["healthz"] => (Route::Health, Method::GET),
        ["readyz"] => (Route::Ready, Method::GET),
        ["metrics"] => (Route::Metrics, Method::GET),
        [""] => (Route::Page(Asset::Html), Method::GET),
        ["page.js"] => (Route::Page(Asset::Script), Method::GET),
        ["page.css"] => (Route::Page(Asset::Style), Method::GET),
        _ => return Err(RouteError::NotFound),
    };
    if *method == allowed {
        Ok(route)
    } else {
        Err(RouteError::MethodNotAllowed(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_path_parameters() {
        assert_eq!(
            resolve(&Method::POST, "/dialog/abc/send"),
            Ok(Route::SendMessage("abc"))
        );
        assert_eq!(
            resolve(&Method::GET, "/user/get/x"),
            Ok(Route::GetUser("x"))
        );
    }

    #[test]
    fn serves_the_page_at_the_root() {
        assert_eq!(resolve(&Method::GET, "/"), Ok(Route::Page(Asset::Html)));
        assert_eq!(
            resolve(&Method::GET, "/page.js"),
            Ok(Route::Page(Asset::Script))
        );
        assert_eq!(
            resolve(&Method::POST, "/"),
            Err(RouteError::MethodNotAllowed(Method::GET))
        );
    }

    #[test]
    fn templates_are_the_spec_paths() {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../../spec/openapi.json")).unwrap();
        let paths = spec["paths"].as_object().unwrap();
        assert!(paths.len() > 10);
        for (template, operations) in paths {
            for method in operations.as_object().unwrap().keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let path = template.replace("{id}", "x").replace("{user_id}", "x");
                let route = resolve(&method, &path).unwrap();
                assert_eq!(route.template(), template, "{method} {path}");
            }
        }
    }

    #[test]
    fn distinguishes_unknown_paths_from_wrong_methods() {
        assert_eq!(
            resolve(&Method::GET, "/post/create"),
            Err(RouteError::MethodNotAllowed(Method::POST))
        );
        for path in [
            "//",
            "/nope",
            "/page.js/",
            "/user/get/a/b",
            "/a/b/c/d/e/f",
            "/post/feed/",
        ] {
            assert_eq!(
                resolve(&Method::GET, path),
                Err(RouteError::NotFound),
                "{path}"
            );
        }
    }
}
