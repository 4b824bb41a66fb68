//! The page at `GET /` in a real headless browser (Debian's chromium, through
//! chromedriver): two users in two browser sessions, one through the
//! committed `deploy/nginx.conf`, one straight to the instance. One follows
//! the other through the page, sees the other's posts arrive live, loses its
//! socket when the server side goes away, and catches up after reconnecting.
//! Screenshots go to `target/browser-artifacts/`.

#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

#[allow(dead_code, reason = "the access log is read by tests/nginx.rs only")]
#[path = "support/nginx.rs"]
mod nginx;

#[path = "support/webdriver.rs"]
mod webdriver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{Value, json};

use nginx::Nginx;
use support::free_local_port;
use support::{Brokers, PASSWORD, TcpProxy, TestApp, TestUser};
use webdriver::{Browser, Chromedriver};

/// The gauge of websockets an instance holds.
const OPEN_SOCKETS: &str = "livefeed_open_sockets";

/// The Enter key, as WebDriver types it.
const ENTER: char = '\u{E007}';

/// Bound on a live post reaching the other page, and on a reconnect after
/// the server came back (the page's backoff tops out at 10 s).
const LIVE_TIMEOUT: Duration = Duration::from_secs(30);

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A proxy to `app` that the test can cut.
async fn tap(app: &TestApp) -> TcpProxy {
    let address: SocketAddr = app
        .address
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    TcpProxy::start(address).await
}

/// An instance, and nginx in front of it through a proxy the test can cut.
async fn stack() -> (TestApp, TcpProxy, Nginx) {
    let app = TestApp::spawn().await;
    let tap = tap(&app).await;
    let nginx = Nginx::start(&[tap.address()]).await;
    (app, tap, nginx)
}

/// Opens the page through `nginx` in a new browser and logs in as `user`.
async fn logged_in(driver: &Chromedriver, nginx: &Nginx, user: &TestUser) -> Browser {
    let page = driver.open().await;
    page.goto(&format!("http://{}/", nginx.address)).await;
    accessible(&page).await;
    page.type_into("#login-id", &user.id).await;
    // Enter submits, as everything on the page works from the keyboard.
    page.type_into("#login-password", &format!("{PASSWORD}{ENTER}"))
        .await;
    assert_eq!(page.text("#me-id").await, user.id);
    page
}

#[tokio::test]
async fn the_page_and_its_files_come_through_nginx_with_their_types_and_etags() {
    let (_app, _tap, nginx) = stack().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let base = format!("http://{}", nginx.address);
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/page.js", "text/javascript; charset=utf-8"),
        ("/page.css", "text/css; charset=utf-8"),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[CONTENT_TYPE], content_type, "{path}");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-cache", "{path}");
        let etag = response.headers()[ETAG].clone();
        let body = response.text().await.unwrap();
        // Nothing is loaded from another host.
        assert!(
            !body.contains("//cdn") && !body.contains("https://"),
            "{path}"
        );

        let again = http
            .get(format!("{base}{path}"))
            .header(IF_NONE_MATCH, etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()[ETAG], etag, "{path}");
    }
    let page = http.get(&base).send().await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"src="/page.js""#) && html.contains(r#"href="/page.css""#));

    let post = http.post(&base).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()["allow"], "GET");
}

/// The `data-state` of the page's connection indicator, once it is `state`.
async fn connection_becomes(page: &Browser, state: &str) {
    page.wait_for_within(
        LIVE_TIMEOUT,
        &format!("the connection state {state}"),
        "return document.getElementById('conn').dataset.state === arguments[0]",
        json!([state]),
    )
    .await;
}

/// What a screen reader or a keyboard needs of the page's structure: the
/// landmarks, a label on every field, a name on every button, and the live
/// list announced as it grows.
async fn accessible(page: &Browser) {
    let found = page
        .script(
            "return {
               landmarks: ['header', 'main', 'nav'].filter(t => !document.querySelector(t)),
               unlabelled: [...document.querySelectorAll('input, textarea, select')]
                 .filter(e => e.labels.length === 0).map(e => e.id),
               unnamed: [...document.querySelectorAll('button')]
                 .filter(b => !(b.textContent.trim() || b.getAttribute('aria-label'))).map(b => b.id),
               live: document.getElementById('live-list').getAttribute('aria-live'),
               status: document.getElementById('conn').getAttribute('role'),
               lang: document.documentElement.lang,
             }",
            json!([]),
        )
        .await;
    assert_eq!(
        found,
        json!({ "landmarks": [], "unlabelled": [], "unnamed": [],
                "live": "polite", "status": "status", "lang": "en" })
    );
}

/// When the live list first shows a post with `text`: its `data-received-at`.
async fn arrives_live(page: &Browser, text: &str) -> u64 {
    page.wait_for_within(
        LIVE_TIMEOUT,
        &format!("the live post {text:?}"),
        "for (const li of document.querySelectorAll('#live-list li')) {
           if (li.querySelector('.text').textContent === arguments[0]) return li.dataset.receivedAt;
         }
         return null;",
        json!([text]),
    )
    .await
    .as_str()
    .unwrap()
    .parse()
    .unwrap()
}

/// The texts of the posts in the list `css`, top to bottom.
async fn texts_in(page: &Browser, css: &str) -> Vec<String> {
    let texts = page
        .script(
            "return [...document.querySelectorAll(arguments[0] + ' li .text')].map(p => p.textContent)",
            json!([css]),
        )
        .await;
    serde_json::from_value(texts).unwrap()
}

/// Posts `text` through the page and waits for the page to confirm it;
/// returns when the click was made.
async fn post_through(page: &Browser, text: &str) -> u64 {
    page.type_into("#post-text", text).await;
    let clicked = now_ms();
    page.click("#post-submit").await;
    page.wait_for(
        "the post to be confirmed",
        "return document.getElementById('post-status').textContent.startsWith('Posted')
             && document.getElementById('post-text').value === ''",
        json!([]),
    )
    .await;
    // The next confirmation must be told from this one.
    page.script(
        "document.getElementById('post-status').textContent = ''",
        json!([]),
    )
    .await;
    clicked
}

#[tokio::test]
async fn two_users_follow_post_and_watch_live_through_a_server_side_close() {
    let (app, mut tap, nginx) = stack().await;
    let artifacts = artifacts();
    let driver = Chromedriver::start(
        free_local_port().port(),
        &artifacts.join("chromedriver.log"),
    )
    .await;
    // The reader exists already and logs in, through nginx.
    let reader = app.register("Grace", "Hopper").await;
    let reader_page = logged_in(&driver, &nginx, &reader).await;
    connection_becomes(&reader_page, "live").await;
    let author_page = driver.open().await;

    // The author registers through the page, straight to the instance.
    author_page.goto(&format!("{}/", app.address)).await;
    for (field, value) in [
        ("#reg-first", "Ada"),
        ("#reg-second", "Lovelace"),
        ("#reg-city", "London"),
        ("#reg-biography", "Notes on the Analytical Engine"),
        ("#reg-password", PASSWORD),
    ] {
        author_page.type_into(field, value).await;
    }
    // A date field's keyboard entry follows the locale: set it as a picker would.
    author_page
        .script(
            "document.getElementById('reg-birthdate').value = '1990-12-10'",
            json!([]),
        )
        .await;
    author_page.click("#register-submit").await;
    assert_eq!(author_page.text("#me-name").await, "Ada Lovelace");
    let id = author_page.text("#me-id").await;
    let author = TestUser {
        token: app.login(&id).await,
        id,
    };

    // The reader finds the author and follows her.
    reader_page.type_into("#search-first", "Ad").await;
    reader_page
        .type_into("#search-last", &format!("Love{ENTER}"))
        .await;
    let result = format!("#search-results li[data-user-id='{}']", author.id);
    reader_page.click(&format!("{result} button.follow")).await;
    reader_page
        .wait_for(
            "the follow to be confirmed",
            "const li = document.querySelector(arguments[0]); return li.dataset.following === 'true'",
            json!([result]),
        )
        .await;

    // A post made in the author's page shows in the reader's live list.
    let clicked = post_through(&author_page, "First live post").await;
    let received = arrives_live(&reader_page, "First live post").await;
    let latency = received.saturating_sub(clicked);
    println!("click in one page to the post in the other's live list: {latency} ms");
    std::fs::write(
        artifacts.join("live-latency-ms.txt"),
        format!("{latency}\n"),
    )
    .unwrap();

    // The server side goes away: every connection between nginx and the
    // instance closes, so nginx closes the reader's websocket.
    tap.cut();
    connection_becomes(&reader_page, "reconnecting").await;
    // Meanwhile the author, who reaches the instance directly, posts.
    post_through(&author_page, "Written while you were away").await;
    reader_page
        .screenshot(&artifacts.join("reader-disconnected.png"))
        .await;
    assert_eq!(
        texts_in(&reader_page, "#live-list").await,
        ["First live post"],
        "nothing can arrive while the socket is down"
    );

    // The server is back: the page reconnects with ?since= and catches up.
    tap.restore().await;
    arrives_live(&reader_page, "Written while you were away").await;
    connection_becomes(&reader_page, "live").await;
    let shown = reader_page.text("#conn-text").await;
    assert_eq!(shown, "live (resumed after the last post)");
    assert_eq!(
        texts_in(&reader_page, "#live-list").await,
        ["Written while you were away", "First live post"],
        "each post once, newest first"
    );

    // The feed, a page of ten at a time.
    let mut expected: Vec<String> = (1..=10).rev().map(|n| format!("Post {n}")).collect();
    for text in expected.iter().rev() {
        app.create_post(&author, text).await;
    }
    expected.extend(["Written while you were away", "First live post"].map(String::from));
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    app.feed_settles_to(&reader, "?offset=0&limit=20", &expected)
        .await;
    arrives_live(&reader_page, "Post 10").await;
    reader_page.click("#feed-refresh").await;
    feed_page_is(&reader_page, "Posts 1–10", &expected[..10]).await;
    reader_page.click("#feed-older").await;
    feed_page_is(&reader_page, "Posts 11–12", &expected[10..]).await;
    let disabled = reader_page
        .script(
            "return ['feed-newer', 'feed-older'].map(id => document.getElementById(id).disabled)",
            json!([]),
        )
        .await;
    assert_eq!(disabled, json!([false, true]));
    reader_page.click("#feed-newer").await;
    feed_page_is(&reader_page, "Posts 1–10", &expected[..10]).await;

    reader_page.screenshot(&artifacts.join("reader.png")).await;
    author_page.screenshot(&artifacts.join("author.png")).await;

    // Unfollowing from the page empties the reader's feed.
    reader_page
        .click(&format!("{result} button.unfollow"))
        .await;
    reader_page
        .wait_for(
            "the unfollow to be confirmed",
            "const li = document.querySelector(arguments[0]); return li.dataset.following === 'false'",
            json!([result]),
        )
        .await;
    app.feed_settles_to(&reader, "?offset=0&limit=20", &[])
        .await;
    reader_page.click("#feed-refresh").await;
    feed_page_is(&reader_page, "No posts yet", &[]).await;

    // Signing out closes the socket and forgets the token.
    reader_page.click("#sign-out").await;
    connection_becomes(&reader_page, "signed-out").await;
    let stored = reader_page
        .script(
            "return [sessionStorage.length, document.getElementById('login-form').offsetParent !== null]",
            json!([]),
        )
        .await;
    assert_eq!(stored, json!([0, true]));
    reader_page.quit().await;
    author_page.quit().await;
}

/// Waits until the feed shows `label` and then checks its posts.
async fn feed_page_is(page: &Browser, label: &str, texts: &[&str]) {
    page.wait_for(
        &format!("the feed page {label}"),
        "return document.getElementById('feed-page').textContent === arguments[0]",
        json!([label]),
    )
    .await;
    let shown: Value = texts_in(page, "#feed-list").await.into();
    assert_eq!(shown, json!(texts));
}

/// The instance holding the page's websocket shuts down (closing it with
/// 1001): the page says so, and once another instance is reachable through
/// nginx it reconnects there and catches up on what was written meanwhile.
#[tokio::test]
async fn the_page_moves_to_another_instance_when_its_own_shuts_down() {
    let (a, b) = Brokers::Memory.spawn_pair(&[]).await;
    let tap_a = tap(&a).await;
    let mut tap_b = tap(&b).await;
    let nginx = Nginx::start(&[tap_a.address(), tap_b.address()]).await;
    // Only `a` is reachable through nginx: the page's socket opens there.
    tap_b.cut();
    let reader = b.register("Grace", "Hopper").await;
    let author = b.register("Ada", "Lovelace").await;
    b.follow(&reader, &author).await;

    let artifacts = artifacts();
    let driver = Chromedriver::start(
        free_local_port().port(),
        &artifacts.join("chromedriver-shutdown.log"),
    )
    .await;
    let page = logged_in(&driver, &nginx, &reader).await;
    connection_becomes(&page, "live").await;
    assert_eq!(a.metric(OPEN_SOCKETS).await, 1);
    b.create_post(&author, "Before the shutdown").await;
    arrives_live(&page, "Before the shutdown").await;

    a.stop().await.expect("instance a stops cleanly");
    page.wait_for_within(
        LIVE_TIMEOUT,
        "the page to show the server's close",
        "const conn = document.getElementById('conn');
         return conn.dataset.state !== 'live'
             && conn.textContent.includes('closed 1001: server shutting down')",
        json!([]),
    )
    .await;
    b.create_post(&author, "Written while no instance was reachable")
        .await;
    page.screenshot(&artifacts.join("reader-shutdown.png"))
        .await;

    tap_b.restore().await;
    arrives_live(&page, "Written while no instance was reachable").await;
    connection_becomes(&page, "live").await;
    assert_eq!(b.metric(OPEN_SOCKETS).await, 1, "the socket moved to b");
    assert_eq!(
        texts_in(&page, "#live-list").await,
        [
            "Written while no instance was reachable",
            "Before the shutdown"
        ]
    );
    b.create_post(&author, "Live again").await;
    arrives_live(&page, "Live again").await;
    page.quit().await;
}
