//! The dashboard's endpoints without a browser: the page and its headers, the state and
//! decisions as JSON, the server-sent event stream and its limit, the token, and the
//! simulator's prediction while a trace records. (The page itself, in Chromium, is
//! tests/tests/dashboard.)

use std::net::SocketAddr;
use std::time::Duration;

use balancer_tokio::dashboard::MAX_DASHBOARD_STREAMS;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use serde_json::Value;
use tests::{ConfigBuilder, Proxy, eventually, start_backends, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An open `GET /dashboard/events`: the head, and the stream to read events from.
struct Events {
    stream: TcpStream,
    head: String,
    buffered: String,
}

impl Events {
    async fn open(admin: SocketAddr, token: Option<&str>) -> Events {
        let mut stream = TcpStream::connect(admin).await.expect("admin connects");
        let authorization =
            token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        stream
            .write_all(
                format!("GET /dashboard/events HTTP/1.1\r\nHost: {admin}\r\n{authorization}\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut events = Events {
            stream,
            head: String::new(),
            buffered: String::new(),
        };
        let head = events.read_until("\r\n\r\n").await;
        events.head = head;
        events
    }

    fn status(&self) -> u16 {
        tests::raw_status(&self.head)
    }

    /// Reads until `end` and returns what came before it (`end` consumed).
    async fn read_until(&mut self, end: &str) -> String {
        within("reading the event stream", async {
            loop {
                if let Some(at) = self.buffered.find(end) {
                    let before = self.buffered[..at].to_owned();
                    self.buffered.drain(..at + end.len());
                    return before;
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = self.stream.read(&mut chunk).await.expect("stream reads");
                assert!(n > 0, "the stream ended; so far: {}", self.buffered);
                self.buffered
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
        .await
    }

    /// The next `state` event's JSON (the body is chunked: chunk sizes are skipped over, as
    /// each event is one chunk ending in a blank line).
    async fn next_state(&mut self) -> Value {
        let block = self.read_until("\n\n").await;
        let data = block
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("an event without data: {block:?}"));
        assert!(block.contains("event: state"), "{block:?}");
        serde_json::from_str(data).unwrap_or_else(|err| panic!("not JSON ({err}): {data}"))
    }
}

#[tokio::test]
async fn the_page_state_and_decisions_show_the_pool_as_the_core_sees_it() {
    let backends = start_backends(&[0, 0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    for _ in 0..30 {
        assert_eq!(proxy.get("/").await.status, 200);
    }

    let root = proxy.admin_get("/").await;
    assert_eq!(root.status, 302);
    assert_eq!(root.header("location"), "/dashboard");
    let page = proxy.admin_get("/dashboard").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page.body.contains("/dashboard/app.js"), "{}", page.body);
    // Never framed by another page (which could trick a click on drain).
    assert!(
        page.header("content-security-policy")
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(page.header("x-frame-options"), "DENY");
    let script = proxy.admin_get("/dashboard/app.js").await;
    assert_eq!(script.status, 200);
    assert!(script.header("content-type").starts_with("text/javascript"));
    assert!(script.body.contains("/dashboard/events"));
    assert_eq!(proxy.admin_get("/dashboard/app.css").await.status, 200);
    assert_eq!(proxy.admin_get("/dashboard/nope").await.status, 404);
    assert_eq!(proxy.admin_post("/dashboard/state").await.status, 405);

    // The window shows complete seconds only: wait until all 30 are in one.
    eventually("the 30 requests show in the last minute", || async {
        proxy.admin_get("/dashboard/state").await.json()["pools"][0]["last_minute"]["requests"]
            == 30
    })
    .await;
    let state = proxy.admin_get("/dashboard/state").await.json();
    let pool = &state["pools"][0];
    assert_eq!(pool["pool"], "default");
    assert_eq!(pool["policy"], "least-pending");
    let listed: Vec<&str> = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = backends
        .iter()
        .map(|b| b.local_addr().to_string())
        .collect();
    assert_eq!(listed, expected);
    let first = &pool["backends"][0];
    assert_eq!(first["state"], "up");
    assert_eq!(first["dispatched"], 10, "least-pending spreads 30 over 3");
    assert_eq!(first["ejections"], 0);
    for field in [
        "pending",
        "weight",
        "ewma_ms",
        "failed",
        "consecutive_failures",
    ] {
        assert!(first[field].is_number(), "{field}: {first}");
    }
    let minute = &pool["last_minute"];
    assert_eq!(minute["errors"], 0);
    let (p50, p99) = (
        minute["p50_ms"].as_f64().unwrap(),
        minute["p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "p50 {p50}, p99 {p99}");
    let requests = pool["series"]["requests"].as_array().unwrap();
    assert_eq!(
        requests.iter().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        30
    );
    assert!(state["trace"].is_null());
    assert_eq!(
        proxy.admin_get("/dashboard/auth").await.json()["token_required"],
        false
    );
    assert_eq!(state["streams"]["max"], MAX_DASHBOARD_STREAMS);

    let listed = proxy.admin_get("/dashboard/decisions?limit=5").await.json();
    let decisions = listed["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 5);
    let newest = &decisions[0];
    let id = newest["request_id"].as_str().unwrap();
    assert!(
        newest["rule"]
            .as_str()
            .unwrap()
            .starts_with("least-pending chose "),
        "{newest}"
    );
    // The same try as /explain/{id} shows it.
    let explained = proxy.admin_get(&format!("/explain/{id}")).await.json();
    assert_eq!(explained["tries"][0]["rule"], newest["rule"]);
    assert!(
        newest["at_ns"].as_u64() >= decisions[4]["at_ns"].as_u64(),
        "newest first"
    );
    assert_eq!(
        proxy
            .admin_get("/dashboard/decisions?limit=many")
            .await
            .status,
        400
    );
    proxy.stop().await;
    tests::stop_backends(backends).await;
}

#[tokio::test]
async fn the_event_stream_sends_the_state_and_is_limited_to_max_dashboard_streams() {
    let backends = start_backends(&[0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let mut open = Vec::new();
    for n in 1..=MAX_DASHBOARD_STREAMS {
        let mut events = Events::open(proxy.admin(), None).await;
        assert_eq!(events.status(), 200, "{}", events.head);
        assert!(
            events
                .head
                .to_ascii_lowercase()
                .contains("content-type: text/event-stream")
        );
        let state = events.next_state().await;
        assert_eq!(state["pools"][0]["backends"].as_array().unwrap().len(), 2);
        assert_eq!(state["streams"]["open"], n);
        open.push(events);
    }
    // A second event comes by itself, and shows a drain done in between.
    let drained = backends[0].local_addr();
    assert_eq!(
        proxy
            .admin_post(&format!("/backends/default/{drained}/drain"))
            .await
            .status,
        200
    );
    let mut shown = false;
    for _ in 0..3 {
        let state = open[0].next_state().await;
        if state["pools"][0]["backends"][0]["state"] == "drained" {
            shown = true;
            break;
        }
    }
    assert!(shown, "the stream never showed the drain");

    let refused = Events::open(proxy.admin(), None).await;
    assert_eq!(refused.status(), 503, "{}", refused.head);
    assert!(refused.head.contains("retry-after: 10"), "{}", refused.head);
    let body = proxy.admin_get("/dashboard/events").await;
    assert_eq!(body.status, 503);
    assert!(
        body.body.contains("MAX_DASHBOARD_STREAMS"),
        "the refusal names the limit: {}",
        body.body
    );
    // The API is still there for everyone else.
    assert_eq!(proxy.admin_get("/backends").await.status, 200);

    // A page that leaves gives its slot back.
    drop(open.pop());
    eventually("a closed stream's slot is free again", || async {
        let mut events = Events::open(proxy.admin(), None).await;
        events.status() == 200 && events.next_state().await["pools"].is_array()
    })
    .await;
    drop(open);
    proxy.stop().await;
    tests::stop_backends(backends).await;
}

#[tokio::test]
async fn with_a_token_the_page_loads_but_its_data_and_stream_need_the_token() {
    let dir = tests::TempDir::new("dashboard-token");
    let token_file = dir.path().join("admin.token");
    let token = "fedcba9876543210fedcba9876543210";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .admin_token_file(&token_file.display().to_string())
            .backends(&backends),
    )
    .await;
    let request = |path: &str, headers: &[(&str, &str)]| {
        let mut request = Request::get(path).header(http::header::HOST, proxy.admin().to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Empty::<Bytes>::new()).unwrap()
    };
    let bearer = format!("Bearer {token}");
    // The page and its files hold no data: a browser loads them before the token is typed.
    let auth = proxy
        .send(proxy.admin(), request("/dashboard/auth", &[]))
        .await;
    assert_eq!(auth.json()["token_required"], true);
    for path in ["/", "/dashboard", "/dashboard/app.js", "/dashboard/app.css"] {
        let reply = proxy.send(proxy.admin(), request(path, &[])).await;
        assert!(
            reply.status == 200 || reply.status == 302,
            "{path}: {}",
            reply.status
        );
    }
    for path in [
        "/dashboard/state",
        "/dashboard/events",
        "/dashboard/decisions",
    ] {
        let without = proxy.send(proxy.admin(), request(path, &[])).await;
        assert_eq!(without.status, 401, "{path}");
        let wrong = proxy
            .send(
                proxy.admin(),
                request(path, &[("authorization", "Bearer nope")]),
            )
            .await;
        assert_eq!(wrong.status, 401, "{path}");
    }
    let with = proxy
        .send(
            proxy.admin(),
            request("/dashboard/state", &[("authorization", &bearer)]),
        )
        .await;
    assert_eq!(with.status, 200);
    assert_eq!(with.json()["auth"], true);
    let mut events = Events::open(proxy.admin(), Some(token)).await;
    assert_eq!(events.status(), 200, "{}", events.head);
    assert!(events.next_state().await["pools"].is_array());
    // Another site's page gets nothing, not even the static page.
    let cross = proxy
        .send(
            proxy.admin(),
            request("/dashboard", &[("sec-fetch-site", "cross-site")]),
        )
        .await;
    assert_eq!(cross.status, 403);
    let foreign = proxy
        .send(
            proxy.admin(),
            request(
                "/dashboard/state",
                &[
                    ("authorization", &bearer),
                    ("origin", "http://evil.example"),
                ],
            ),
        )
        .await;
    assert_eq!(foreign.status, 403);
    drop(events);
    proxy.stop().await;
    tests::stop_backends(backends).await;
}

#[tokio::test]
async fn while_a_trace_records_the_state_carries_the_simulators_prediction() {
    let _turn = tests::serial().await;
    let dir = tests::TempDir::new("dashboard-prediction");
    let trace = dir.path().join("traffic.trace");
    let backends = start_backends(&[2, 2]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .backends(&backends)
            .trace(&trace, |t| t),
    )
    .await;
    let load = tests::Load::start(proxy.addr(), 2, "/");
    load.wait_for(200).await;
    let mut prediction = Value::Null;
    within("the first prediction", async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let state = proxy.admin_get("/dashboard/state").await.json();
            assert_eq!(state["trace"], trace.display().to_string());
            prediction = state["pools"][0]["prediction"].clone();
            if !prediction.is_null() {
                break;
            }
        }
    })
    .await;
    load.finish().await;
    assert!(prediction["requests"].as_u64().unwrap() > 0, "{prediction}");
    // The balancer finds `balancer-sim` through $BALANCER_SIM, beside its binary or on PATH;
    // this test binary is in target/*/deps, so only a run that sets BALANCER_SIM (as
    // .ci/dashboard does) or has it on PATH gets a number; others check the message.
    let measured = prediction["measured_p99_ms"].as_f64();
    match prediction["predicted"]["p99_ms"].as_f64() {
        Some(predicted) => {
            assert!(
                predicted > 0.0 && measured.is_some_and(|m| m > 0.0),
                "{prediction}"
            );
            eprintln!("prediction: {prediction}");
        }
        None => {
            assert!(
                std::env::var_os("BALANCER_SIM").is_none(),
                "with BALANCER_SIM set the replay must give a p99: {prediction}"
            );
            let error = prediction["error"].as_str().unwrap();
            assert!(error.contains("balancer-sim"), "{error}");
            eprintln!("balancer-sim not found: only the message naming it was checked");
        }
    }
    proxy.stop().await;
    tests::stop_backends(backends).await;
}
