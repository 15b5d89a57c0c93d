//! The dashboard in a real browser: demo mode's balancer and four backends, Debian's Chromium
//! (headless) driven through chromedriver. The page must list the four backends, a click on
//! drain must take one out of rotation (checked through the admin JSON API and the traffic) and
//! show it draining, a search by request id must find its decision, the console must stay free
//! of errors, and a screenshot goes to target/dashboard.png.
//!
//! Without Chromium this prints how to install it and passes, unless
//! `BALANCER_REQUIRE_BROWSER=1` (CI's `.ci/dashboard`), when it fails.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use balancer_tokio::{Demo, DemoPorts};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tests::{Proxy, eventually, free_port, within};

/// What to run to get the browser and its driver on Debian.
const INSTALL: &str = "apt-get install -y chromium chromium-driver";
/// The pace of the traffic sent while the page is open.
const STEADY_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for something to show on the page.
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// The first of `names` on PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromedriver in a process group of its own, with the browsers it starts: the whole group
/// is killed when dropped, so a test that fails before closing its session leaves no Chromium
/// behind.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(binary: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let driver = Driver { child, port };
        eventually("chromedriver listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        driver
    }
}

/// `POST /session/{id}/se/log {"type": "browser"}`: the browser's console and errors since the
/// last call (chromedriver's extension; WebDriver has no standard command for it).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// The workspace's target directory (where cargo put this test).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element at `css` has a text that `wanted` accepts; returns it.
async fn wait_for_text(
    client: &Client,
    css: &str,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        let text = text_of(client, css).await;
        if wanted(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {css} shows {text:?} after {PAGE_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many states the page has drawn.
async fn updates(client: &Client) -> u64 {
    client
        .execute("return Number(document.body.dataset.updates || 0);", vec![])
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// Chromium and chromedriver, or `None` after printing how to install them (a failure instead
/// with `BALANCER_REQUIRE_BROWSER=1`).
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var("BALANCER_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let found = on_path(&["chromium", "chromium-browser"]).zip(on_path(&["chromedriver"]));
    if found.is_none() {
        assert!(
            !required,
            "BALANCER_REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH; install them: {INSTALL}"
        );
        println!(
            "skipped: the dashboard browser test needs Chromium and chromedriver; install them with `{INSTALL}`"
        );
    }
    found
}

/// A headless Chromium session through a chromedriver of its own, the console log on.
async fn open_browser(chromium: &Path, chromedriver: &Path) -> (Driver, Client) {
    let driver = Driver::start(chromedriver).await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium.display().to_string(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let client = within("chromedriver opens a session", async {
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session")
    })
    .await;
    (driver, client)
}

/// Asserts that the browser's console has no error (a `console.warn` marker proves the log
/// is read at all).
async fn assert_console_clean(client: &Client) {
    client
        .execute("console.warn('dashboard-test-marker');", vec![])
        .await
        .unwrap();
    let log = client.issue_cmd(BrowserLog).await.expect("the browser log");
    let entries = log.as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("dashboard-test-marker"))),
        "the console log was not read: {log}"
    );
    let errors: Vec<&Value> = entries.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_lists_drains_and_explains() {
    let Some((chromium, chromedriver)) = browser_or_skip() else {
        return;
    };

    let demo = Demo::start(DemoPorts {
        balancer: 0,
        first_backend: 0,
        admin: 0,
    })
    .await
    .expect("demo starts");
    let addresses: Vec<SocketAddr> = demo.backends.iter().map(|b| b.local_addr()).collect();
    let Demo { backends, balancer } = demo;
    let proxy = Proxy::from_running(balancer);
    let admin = proxy.admin();
    // Some traffic, so that rates, latencies and decisions have something to show.
    let mut last_id = String::new();
    for _ in 0..40 {
        let reply = proxy.get("/").await;
        assert_eq!(reply.status, 200);
        last_id = reply.header("x-request-id").to_owned();
    }

    // And a steady 50 requests a second while the page is open, so that it has lines to draw.
    let address = proxy.addr();
    let steady = tokio::spawn(async move {
        let mut tick = tokio::time::interval(STEADY_EVERY);
        loop {
            tick.tick().await;
            let _ = tests::send_http1(address, tests::get("/", &address.to_string())).await;
        }
    });

    let (driver, client) = open_browser(&chromium, &chromedriver).await;

    client
        .goto(&format!("http://{admin}/"))
        .await
        .expect("the page loads");
    assert_eq!(
        client.current_url().await.unwrap().path(),
        "/dashboard",
        "/ redirects to the dashboard"
    );
    // The four backends of demo mode, in order.
    client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css("tr[data-backend]"))
        .await
        .expect("the backends table shows");
    let rows = client
        .find_all(Locator::Css("tr[data-backend]"))
        .await
        .unwrap();
    let mut shown = Vec::new();
    for row in &rows {
        shown.push(row.attr("data-backend").await.unwrap().unwrap_or_default());
    }
    let expected: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    assert_eq!(shown, expected, "the page lists demo mode's four backends");
    for address in &expected {
        let state = text_of(&client, &format!("tr[data-backend=\"{address}\"] td.state")).await;
        assert_eq!(state, "up", "{address}");
    }
    wait_for_text(&client, "#connection", "the event stream is live", |t| {
        t == "live"
    })
    .await;
    // Live: the stream redraws the page by itself.
    let before = updates(&client).await;
    eventually("the page redraws from the stream", || async {
        updates(&client).await >= before + 2
    })
    .await;
    let rate = text_of(&client, "article[data-pool=\"demo\"] .rate").await;
    assert!(
        rate.ends_with("/s") && rate != "0.0/s",
        "the pool's rate shows: {rate:?}"
    );

    // Drain backend #2 with its button.
    let second = &expected[1];
    client
        .find(Locator::Css(&format!(
            "tr[data-backend=\"{second}\"] button.drain"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Out of rotation, as the admin API says and the traffic shows.
    eventually("the admin API shows #2 drained", || async {
        let listed = proxy.admin_get("/backends").await.json();
        listed["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["address"] == second.as_str() && b["state"] == "drained")
    })
    .await;
    let served_before = backends[1].served();
    for _ in 0..12 {
        let reply = proxy.get("/").await;
        assert_ne!(reply.body, "Hello from #2\n", "a drained backend got work");
    }
    assert_eq!(backends[1].served(), served_before);
    let state = wait_for_text(
        &client,
        &format!("tr[data-backend=\"{second}\"] td.state"),
        "the page shows #2 draining",
        |t| t == "draining" || t == "drained",
    )
    .await;
    let button = text_of(
        &client,
        &format!("tr[data-backend=\"{second}\"] button.drain"),
    )
    .await;
    assert_eq!(button, "undrain", "state {state}");
    let message = text_of(&client, "#message").await;
    assert!(
        message.contains("draining"),
        "the admin API's answer shows: {message:?}"
    );

    // A decision found by its request id, with its sentence.
    let search = client.find(Locator::Css("#request-id")).await.unwrap();
    search.send_keys(&last_id).await.unwrap();
    client
        .find(Locator::Css("#search-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let rule = wait_for_text(
        &client,
        &format!("#decisions li[data-request-id=\"{last_id}\"] .rule"),
        "the searched decision shows",
        |t| !t.is_empty(),
    )
    .await;
    assert!(rule.starts_with("least-pending chose "), "{rule}");

    // Wait for one more redraw after the search, then the picture.
    let drawn = updates(&client).await;
    eventually("two more redraws", || async {
        updates(&client).await > drawn + 1
    })
    .await;
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let shot = target_dir().join("dashboard.png");
    std::fs::write(&shot, &png).unwrap_or_else(|err| panic!("{}: {err}", shot.display()));
    println!("screenshot: {}", shot.display());

    assert_console_clean(&client).await;

    // Undrain from the page puts it back.
    client
        .find(Locator::Css(&format!(
            "tr[data-backend=\"{second}\"] button.drain"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(
        &client,
        &format!("tr[data-backend=\"{second}\"] td.state"),
        "the page shows #2 back up",
        |t| t == "up",
    )
    .await;

    steady.abort();
    let _ = steady.await;
    client.close().await.expect("the session closes");
    drop(driver);
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
    tests::stop_backends(backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_once_and_drains_with_it() {
    let Some((chromium, chromedriver)) = browser_or_skip() else {
        return;
    };
    let dir = tests::TempDir::new("dashboard-browser-token");
    let token_file = dir.path().join("admin.token");
    let token = "0f1e2d3c4b5a69780f1e2d3c4b5a6978";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let backends = tests::start_backends(&[0, 0]).await;
    let proxy = Proxy::start(
        tests::ConfigBuilder::new()
            .listen_any()
            .admin_token_file(&token_file.display().to_string())
            .backends(&backends),
    )
    .await;
    let (driver, client) = open_browser(&chromium, &chromedriver).await;
    client
        .goto(&format!("http://{}/dashboard", proxy.admin()))
        .await
        .expect("the page loads");
    wait_for_text(&client, "#connection", "the page asks for the token", |t| {
        t == "token needed"
    })
    .await;
    let field = client.find(Locator::Css("#token")).await.unwrap();
    assert!(field.is_displayed().await.unwrap(), "the token field shows");
    assert!(
        client
            .find_all(Locator::Css("tr[data-backend]"))
            .await
            .unwrap()
            .is_empty(),
        "nothing shows before the token"
    );
    field.send_keys(token).await.unwrap();
    client
        .find(Locator::Css("#token-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(
        &client,
        "#connection",
        "the stream is live with the token",
        |t| t == "live",
    )
    .await;
    let kept = client
        .execute(
            "return sessionStorage.getItem('balancer-admin-token');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, token, "the token is kept for the tab");
    let first = backends[0].local_addr().to_string();
    client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(&format!(
            "tr[data-backend=\"{first}\"] button.drain"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the drain sent with the token took", || async {
        proxy.backend_state(backends[0].local_addr()) == "drained"
    })
    .await;
    wait_for_text(
        &client,
        &format!("tr[data-backend=\"{first}\"] td.state"),
        "the page shows the drain",
        |t| t == "drained" || t == "draining",
    )
    .await;
    // A reload of the tab keeps the token: straight to live, no form.
    client.refresh().await.unwrap();
    wait_for_text(&client, "#connection", "live again after a reload", |t| {
        t == "live"
    })
    .await;
    assert!(
        !client
            .find(Locator::Css("#token"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    assert_console_clean(&client).await;
    client.close().await.expect("the session closes");
    drop(driver);
    proxy.stop().await;
    tests::stop_backends(backends).await;
}
