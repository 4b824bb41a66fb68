//! The page at `GET /`: an HTML file, one script and one stylesheet, built
//! into the binary, that uses the public REST API and the live feed
//! websocket like any other client. It owns the bytes and their caching
//! headers; it must never call the store or know more of the API than a
//! browser does.

use std::sync::LazyLock;

use bytes::Bytes;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue,
    IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Response, StatusCode};

use super::Body;

/// A file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Html,
    Script,
    Style,
}

struct File {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

impl File {
    fn new(bytes: &'static [u8], content_type: &'static str) -> Self {
        Self {
            bytes,
            content_type,
            etag: HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(bytes)))
                .expect("hex is a valid header value"),
        }
    }
}

static HTML: LazyLock<File> =
    LazyLock::new(|| File::new(include_bytes!("index.html"), "text/html; charset=utf-8"));
static SCRIPT: LazyLock<File> =
    LazyLock::new(|| File::new(include_bytes!("page.js"), "text/javascript; charset=utf-8"));
static STYLE: LazyLock<File> =
    LazyLock::new(|| File::new(include_bytes!("page.css"), "text/css; charset=utf-8"));

/// Everything the page loads comes from this origin; the script talks to
/// the API and the websocket of the same host, and nothing may frame it.
const POLICY: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self' ws: wss:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
);

/// `asset`, or 304 when the request names its current ETag. The files
/// change only with the binary: browsers revalidate on every load
/// (`no-cache`), which costs a 304 and keeps a new release visible at once.
pub fn serve(asset: Asset, request: &HeaderMap) -> Response<Body> {
    let file: &File = match asset {
        Asset::Html => &HTML,
        Asset::Script => &SCRIPT,
        Asset::Style => &STYLE,
    };
    let fresh = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == file.etag || tag.trim() == "*");
    let mut response = if fresh {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Body::from(Bytes::from_static(file.bytes)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(file.content_type));
        response
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, file.etag.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset == Asset::Html {
        headers.insert(CONTENT_SECURITY_POLICY, POLICY);
    }
    response
}

/// 64-bit FNV-1a: a stable fingerprint of a file for its ETag, computed
/// once per process.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_304_to_the_current_etag_only() {
        let first = serve(Asset::Script, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[ETAG].clone();

        let mut revalidate = HeaderMap::new();
        revalidate.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"old\", {}", etag.to_str().unwrap())).unwrap(),
        );
        let second = serve(Asset::Script, &revalidate);
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(second.headers()[ETAG], etag);

        revalidate.insert(IF_NONE_MATCH, HeaderValue::from_static("\"old\""));
        assert_eq!(serve(Asset::Script, &revalidate).status(), StatusCode::OK);
    }

    #[test]
    fn each_file_has_its_own_type_and_tag() {
        let types: Vec<_> = [Asset::Html, Asset::Script, Asset::Style]
            .map(|asset| serve(asset, &HeaderMap::new()))
            .iter()
            .map(|r| (r.headers()[CONTENT_TYPE].clone(), r.headers()[ETAG].clone()))
            .collect();
        assert_eq!(types[0].0, "text/html; charset=utf-8");
        assert_eq!(types[1].0, "text/javascript; charset=utf-8");
        assert_eq!(types[2].0, "text/css; charset=utf-8");
        assert_ne!(types[0].1, types[1].1);
        assert_ne!(types[1].1, types[2].1);
    }
}
