//! The admin listener: backends as JSON, drain and undrain, health, the effective config, and
//! metrics in strict Prometheus text format.

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
