//! `[trace]` records one line per request in `balancer_core::trace`'s format, and
//! rotation keeps the files within `max_files` × `max_bytes`.

use std::time::Duration;

use balancer_core::trace::{TraceOutcome, parse_trace};
use tests::{ConfigBuilder, Proxy, TempDir, start_backends};

#[tokio::test]
async fn requests_are_recorded_with_pool_route_backend_service_time_and_outcome() {
    let dir = TempDir::new("trace-fields");
    let path = dir.path().join("traffic.trace");
    let backends = start_backends(&[20]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .trace(&path, |t| t)
            .pool("web", |p| p.backends(&backends))
            .route(|r| r.name("api").path_prefix("/api").pool("web"))
            .route(|r| r.name("status").path_prefix("/status").pool("web")),
    )
    .await;
    assert_eq!(proxy.get("/api/x").await.status, 200);
    assert_eq!(proxy.get("/status/500").await.status, 500);
    assert_eq!(proxy.get("/nowhere").await.status, 404);
    let sink = proxy.running().proxy().trace().cloned().unwrap();
    assert!(sink.flush(Duration::from_secs(5)));
    let text = std::fs::read_to_string(&path).unwrap();
    eprintln!("{text}");
    let records = parse_trace(&text).unwrap();
    assert_eq!(records.len(), 3, "{text}");
    let ok = &records[0];
    assert_eq!(
        (ok.pool.as_str(), ok.route.as_str(), ok.method.as_str()),
        ("web", "api", "GET")
    );
    assert_eq!(
        ok.backend.as_deref(),
        Some(backends[0].local_addr().to_string().as_str())
    );
    assert_eq!((ok.status, ok.outcome), (200, TraceOutcome::Ok));
    assert_eq!(ok.response_bytes, "Hello from #1\n".len() as u64);
    // The backend waits 20 ms before answering; dispatch → headers includes it.
    assert!(ok.service_ns >= 20_000_000, "{}", ok.service_ns);
    assert!(ok.service_ns < 5_000_000_000, "{}", ok.service_ns);
    let failed = &records[1];
    assert_eq!((failed.status, failed.outcome), (500, TraceOutcome::Failed));
    assert_eq!(failed.route, "status");
    assert!(failed.arrival_ns > ok.arrival_ns);
    let rejected = &records[2];
    assert_eq!(
        (rejected.pool.as_str(), rejected.route.as_str()),
        ("-", "-")
    );
    assert_eq!(rejected.backend, None);
    assert_eq!(
        (rejected.status, rejected.outcome, rejected.service_ns),
        (404, TraceOutcome::Rejected, 0)
    );
    assert_eq!(sink.dropped(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn rotation_bounds_the_files_and_each_parses() {
    let dir = TempDir::new("trace-rotation");
    let path = dir.path().join("t.trace");
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .backends(&backends)
            .trace(&path, |t| t.max_bytes(1024).max_files(2)),
    )
    .await;
    for _ in 0..60 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    let sink = proxy.running().proxy().trace().cloned().unwrap();
    assert!(sink.flush(Duration::from_secs(5)));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["t.trace", "t.trace.1"]);
    let mut total = 0;
    for name in &names {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.len() <= 1024, "{name} has {} bytes", text.len());
        total += parse_trace(&text).unwrap().len();
    }
    // 60 lines of ~70 bytes do not fit in two 1 KiB files: the oldest were rotated away.
    assert!(total > 0 && total < 60, "{total}");
    proxy.stop().await;
}
