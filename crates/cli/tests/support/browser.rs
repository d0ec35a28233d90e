//! A headless Chromium driven over W3C WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `scripts/setup-browser.sh` installs): the few
//! commands the dashboard's tests need, plus ChromeDriver's log endpoint
//! for the page's console. W3C WebDriver is a handful of JSON routes, and
//! the log route is ChromeDriver's own, which typed clients leave out.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference in answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

/// An element of the page, by its WebDriver reference.
#[derive(Clone)]
pub struct Element(String);

impl Browser {
    /// Starts ChromeDriver and a headless Chromium at `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: run scripts/setup-browser.sh (Debian chromium and chromium-driver)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            rt,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.call("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        let session = b
            .call(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        // Root in a container: no sandbox; small /dev/shm.
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
                    },
                    "goog:loggingPrefs": {"browser": "ALL"},
                }}})),
            )
            .expect("a Chromium session starts");
        let id = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.rt.block_on(async {
            let mut req = self.http.request(method, &url);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let ok = resp.status().is_success();
            let v: Value = resp.json().await.map_err(|e| e.to_string())?;
            if ok {
                Ok(v["value"].clone())
            } else {
                Err(v["value"]["message"].as_str().unwrap_or("?").to_owned())
            }
        })
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({"url": url})));
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.must(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    pub fn find(&self, css: &str) -> Option<Element> {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .ok()?;
        v[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// Waits for an element matching `css` for which `ok(browser, element)`.
    pub fn wait_for(
        &self,
        css: &str,
        within: Duration,
        ok: impl Fn(&Browser, &Element) -> bool,
    ) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.find(css)
                && ok(self, &e)
            {
                return e;
            }
            if Instant::now() >= deadline {
                let page = self.eval(
                    "return document.getElementById('main').innerText",
                    json!([]),
                );
                panic!("no `{css}` as wanted within {within:?}; the page reads:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    pub fn click(&self, e: &Element) {
        self.must("POST", &format!("/element/{}/click", e.0), Some(json!({})));
    }

    /// Clicks the element matching `css`, found again when the page
    /// replaced it between finding and clicking.
    pub fn click_on(&self, css: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let clicked = self
                .find(css)
                .map(|e| self.call("POST", &format!("/element/{}/click", e.0), Some(json!({}))));
            match clicked {
                Some(Ok(_)) => return,
                Some(Err(e)) if Instant::now() >= deadline => panic!("cannot click `{css}`: {e}"),
                None if Instant::now() >= deadline => {
                    let page = self.eval(
                        "return document.getElementById('main').innerText",
                        json!([]),
                    );
                    panic!("no `{css}` to click within {within:?}; the page reads:\n{page}");
                }
                _ => std::thread::sleep(Duration::from_millis(150)),
            }
        }
    }

    /// Replaces an input's value by typing `text`.
    pub fn type_into(&self, e: &Element, text: &str) {
        self.must("POST", &format!("/element/{}/clear", e.0), Some(json!({})));
        self.must(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        );
    }

    /// The element's text; empty once the page replaced it (a stale
    /// reference: the dashboard rebuilds a section when its data changes),
    /// so that a wait reads it again.
    pub fn text(&self, e: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", e.0), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn attr(&self, e: &Element, name: &str) -> Option<String> {
        self.call("GET", &format!("/element/{}/attribute/{name}", e.0), None)
            .ok()?
            .as_str()
            .map(str::to_owned)
    }

    /// The console's entries since the last call (ChromeDriver drains them).
    pub fn console(&self) -> Vec<Value> {
        self.must("POST", "/se/log", Some(json!({"type": "browser"})))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let b64 = self.must("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
