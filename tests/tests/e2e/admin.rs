//! The admin listener: backends as JSON, drain and undrain, health, the effective config, and
//! metrics in strict Prometheus text format.

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use tests::{ConfigBuilder, Proxy, start_backends};

#[tokio::test]
async fn drain_via_admin_stops_traffic_to_a_backend_and_undrain_restores_it() {
    let backends = start_backends(&[0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let second = backends[1].local_addr();

    let reply = proxy
        .admin_post(&format!("/backends/default/{second}/drain"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let before = backends[1].served();
    for _ in 0..20 {
        let reply = proxy.get("/").await;
        assert_eq!(reply.body, "Hello from #1\n");
    }
    assert_eq!(backends[1].served(), before, "a drained backend got work");

    let listed = proxy.admin_get("/backends").await.json();
    let entry = &listed["pools"][0]["backends"][1];
    assert_eq!(entry["address"], second.to_string());
    assert_eq!(entry["state"], "drained");
    assert_eq!(entry["pending"], 0);
    assert_eq!(listed["pools"][0]["backends"][0]["state"], "up");
    assert!(listed["pools"][0]["backends"][0]["ewma_ms"].is_number());

    let reply = proxy
        .admin_post(&format!("/backends/default/{second}/undrain"))
        .await;
    assert_eq!(reply.status, 200);
    for _ in 0..4 {
        proxy.get("/").await;
    }
    assert!(
        backends[1].served() > before,
        "undrained backend got no work"
    );

    // Mistakes are named, not guessed.
    let reply = proxy
        .admin_post("/backends/default/127.0.0.1:1/drain")
        .await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.body.contains("has no backend 127.0.0.1:1"),
        "{}",
        reply.body
    );
    assert_eq!(
        proxy.admin_post("/backends/nope/x:1/drain").await.status,
        404
    );
    assert_eq!(
        proxy
            .admin_get(&format!("/backends/default/{second}/drain"))
            .await
            .status,
        405
    );
    proxy.stop().await;
}

#[tokio::test]
async fn healthz_and_the_effective_config() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let reply = proxy.admin_get("/healthz").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok\n"));
    let config = proxy.admin_get("/config").await.json();
    let pool = &config["pools"][0];
    assert_eq!(pool["name"], "default");
    assert_eq!(
        pool["backends"][0]["address"],
        backends[0].local_addr().to_string()
    );
    // Defaults are filled in.
    assert_eq!(pool["request_timeout_ms"], 60000);
    assert_eq!(pool["retry"]["max_retries"], 2);
    assert_eq!(config["rate_limit"]["max_tracked_clients"], 100000);
    assert_eq!(proxy.admin_get("/nothing").await.status, 404);
    proxy.stop().await;
}

/// Checks every line against the text exposition format: `# HELP`/`# TYPE`/`# UNIT` lines,
/// samples `name{label="value",...} number`, and `# EOF` last. Returns the samples.
fn parse_prometheus_text(text: &str) -> Vec<(String, f64)> {
    fn is_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "the text must end with # EOF");
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let kind = words.next().unwrap_or("");
            let name = words.next().unwrap_or("");
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT"),
                "bad comment line {line:?}"
            );
            assert!(is_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let kind = words.next().unwrap_or("");
                assert!(
                    matches!(
                        kind,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "unknown"
                            | "info"
                            | "stateset"
                            | "gaugehistogram"
                    ),
                    "bad type in {line:?}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (key, value) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(is_name(key), "bad label name in {line:?}");
                    assert!(
                        !value.trim_end_matches('"').contains('"'),
                        "unescaped quote in {line:?}"
                    );
                }
                name
            }
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        samples.push((series.to_owned(), value));
    }
    samples
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_requests_latency_and_backend_state() {
    let backends = start_backends(&[0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    for _ in 0..6 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    assert_eq!(proxy.get("/status/404").await.status, 404);
    let reply = proxy.admin_get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.header("content-type").contains("text"),
        "{:?}",
        reply.headers
    );
    let samples = parse_prometheus_text(&reply.body);
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in\n{}", reply.body))
    };
    let first = backends[0].local_addr();
    let second = backends[1].local_addr();
    let ok = value(&format!(
        "balancer_requests_total{{route=\"default\",backend=\"{first}\",status=\"200\"}}"
    )) + value(&format!(
        "balancer_requests_total{{route=\"default\",backend=\"{second}\",status=\"200\"}}"
    ));
    assert_eq!(ok, 6.0);
    assert_eq!(
        value("balancer_request_duration_seconds_count{route=\"default\"}"),
        7.0
    );
    assert_eq!(
        value(&format!(
            "balancer_backend_pending{{pool=\"default\",backend=\"{first}\"}}"
        )),
        0.0
    );
    assert_eq!(
        value(&format!(
            "balancer_backend_health{{pool=\"default\",backend=\"{first}\",state=\"up\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "balancer_backend_health{{pool=\"default\",backend=\"{first}\",state=\"down\"}}"
        )),
        0.0
    );
    assert_eq!(
        value(&format!(
            "balancer_backend_weight{{pool=\"default\",backend=\"{second}\"}}"
        )),
        1.0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn with_a_token_file_the_admin_api_asks_for_the_bearer_token() {
    let dir = tests::TempDir::new("admin-token");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .admin_token_file(&token_file.display().to_string())
            .backends(&backends),
    )
    .await;
    let request = |path: &str, token: Option<&str>| {
        let mut request = Request::get(path).header(http::header::HOST, proxy.admin().to_string());
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(Empty::<Bytes>::new()).unwrap()
    };
    let without = proxy.send(proxy.admin(), request("/backends", None)).await;
    assert_eq!(without.status, 401, "{}", without.body);
    let wrong = proxy
        .send(
            proxy.admin(),
            request("/backends", Some("0123456789abcdef0123456789abcdee")),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let with = proxy
        .send(
            proxy.admin(),
            request("/backends", Some("0123456789abcdef0123456789abcdef")),
        )
        .await;
    assert_eq!(with.status, 200, "{}", with.body);
    // Liveness probes need no token.
    let health = proxy.send(proxy.admin(), request("/healthz", None)).await;
    assert_eq!(health.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn a_page_of_another_site_cannot_drive_the_admin_api() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let admin = proxy.admin().to_string();
    let post = |host: &str, extra: Option<(&'static str, &'static str)>| {
        let mut request = Request::post("/reload").header(http::header::HOST, host);
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        request.body(Empty::<Bytes>::new()).unwrap()
    };
    for (what, request) in [
        (
            "cross-site POST",
            post(&admin, Some(("origin", "http://evil.example"))),
        ),
        (
            "fetch metadata",
            post(&admin, Some(("sec-fetch-site", "cross-site"))),
        ),
        ("DNS rebinding", post("evil.example:9901", None)),
    ] {
        let reply = proxy.send(proxy.admin(), request).await;
        assert_eq!(reply.status, 403, "{what}: {}", reply.body);
    }
    // The operator's own tools: no Origin, or this very origin.
    let same = proxy
        .send(
            proxy.admin(),
            post(&admin, Some(("sec-fetch-site", "same-origin"))),
        )
        .await;
    assert_ne!(same.status, 403, "{}", same.body);
    proxy.stop().await;
}
