//! A real headless browser for the tests: Debian's `chromium`, driven by
//! its `chromedriver` over the W3C WebDriver protocol. The protocol calls
//! the tests need (open a session, load a page, find, click, type, run a
//! script, take a screenshot) are a handful of JSON requests, made here with
//! the tests' own HTTP client rather than a WebDriver crate and its
//! dependency tree. The driver runs in a process group of its own, which
//! takes its browsers down with it when it is dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Bound on the driver starting and on every single protocol call (loading
/// a page, a click): generous, the machine is shared.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(25);

/// `chromedriver` on a local port; killed, with its browsers, on drop.
pub struct Chromedriver {
    url: String,
    child: Child,
    http: reqwest::Client,
}

impl Chromedriver {
    /// Starts the driver on `port`, logging to `log`, and waits until it is
    /// ready for sessions.
    pub async fn start(port: u16, log: &Path) -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} not found: the browser test runs Debian's chromium and \
                 chromium-driver. Run scripts/test, which installs them (or: \
                 apt-get install -y chromium chromium-driver)"
            );
        }
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log.with_extension("stderr")).unwrap())
            .spawn()
            .expect("starting chromedriver");
        let mut driver = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap(),
        };
        driver.wait_until_ready().await;
        driver
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("chromedriver exited ({status}) at start");
            }
            let status = self.http.get(format!("{}/status", self.url)).send().await;
            if let Ok(response) = status {
                let body: Value = response.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver was not ready within {CALL_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new headless browser with a profile of its own (cookies, storage).
    pub async fn open(&self) -> Browser {
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // --no-sandbox: the tests run as root, where Chromium's
                // sandbox refuses to start.
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1100", "--lang=en"],
            },
        }}});
        let mut browser = Browser {
            http: self.http.clone(),
            session: format!("{}/session", self.url),
        };
        let created = browser.call(Method::POST, "", Some(capabilities)).await;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {created}"));
        browser.session = format!("{}/session/{id}", self.url);
        browser
    }
}

impl Drop for Chromedriver {
    /// SIGTERM to the whole group (driver and browsers), SIGKILL if any
    /// lingers.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// One browser session: one window, one user of the page.
pub struct Browser {
    http: reqwest::Client,
    /// `http://driver/session/{id}`
    session: String,
}

impl Browser {
    /// A protocol call; panics with the driver's error when it fails.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: body is not JSON ({e})"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path} answered {status}: {}",
            body["value"]
        );
        body["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The first element matching `css`, waiting for it to exist.
    async fn element(&self, css: &str) -> String {
        self.wait_for(
            &format!("an element {css}"),
            "return document.querySelector(arguments[0]) !== null",
            json!([css]),
        )
        .await;
        let found = self
            .call(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        // The W3C web element reference is an object with one member.
        found
            .as_object()
            .and_then(|reference| reference.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element reference in {found}"))
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Types `text` into the field `css`, key by key, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page
    /// and returns what it returns.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Runs `script` until it returns something other than `null` or
    /// `false`, and returns that; panics after `timeout`, naming `what`.
    pub async fn wait_for_within(
        &self,
        timeout: Duration,
        what: &str,
        script: &str,
        args: Value,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(script, args.clone()).await;
            if !value.is_null() && value != false {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; the page shows:\n{}",
                self.script("return document.body.innerText", json!([]))
                    .await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        self.wait_for_within(CALL_TIMEOUT, what, script, args).await
    }

    /// The text of the element `css`, once it has some.
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(
            &format!("text in {css}"),
            "const e = document.querySelector(arguments[0]); return e && e.textContent || null",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// Saves a PNG of the window at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self.call(Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a screenshot is base64 text"))
            .expect("a screenshot is valid base64");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session, closing its browser.
    pub async fn quit(self) {
        self.call(Method::DELETE, "", None).await;
    }
}
