//! Several traffic workers: every worker's socket accepts and serves, a graceful shutdown drains
//! the requests in flight on all of them, and the worker threads are gone afterwards.

use std::time::Duration;

use balancer_tokio::ShutdownReport;
use tests::{ConfigBuilder, Proxy, get, start_backends};

const WORKERS: usize = 3;

/// Waits (at most 5 s) until this test process has `count` threads named like the balancer's
/// worker threads (a new thread names itself once it runs), and returns how many it has.
async fn worker_threads_become(count: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = worker_threads();
        if now == count || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task is readable on Linux")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("balancer-worke"))
        .count()
}

#[tokio::test]
async fn every_worker_serves_and_all_drain_on_shutdown() {
    // Threads are counted for the whole process, where other tests start workers of their own.
    if tests::rerun_alone(
        module_path!(),
        "every_worker_serves_and_all_drain_on_shutdown",
    ) {
        return;
    }
    let backends = start_backends(&[0, 0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .shutdown_grace_ms(5000)
            .workers(WORKERS)
            .backends(&backends),
    )
    .await;
    // Worker 0 is the test's runtime; workers 1 and 2 are threads of their own.
    assert_eq!(worker_threads_become(WORKERS - 1).await, WORKERS - 1);

    // A second balancer on the same port fails to start, as with one worker, instead of
    // joining the first one's SO_REUSEPORT group and taking part of its traffic.
    let address = proxy.addr();
    let second = balancer_tokio::Config::from_toml_str(
        &ConfigBuilder::new()
            .listen(address)
            .admin("off")
            .workers(WORKERS)
            .backends(&backends)
            .to_string(),
        "second.toml",
    )
    .unwrap();
    match balancer_tokio::start(second).await {
        Ok(_) => panic!("a second balancer started on {address}, which the first one serves"),
        Err(err) => assert!(
            err.to_string().contains("already in use"),
            "unexpected error: {err}"
        ),
    }
    assert_eq!(worker_threads(), WORKERS - 1);

    // Each request on a fresh connection: the kernel spreads connections over the workers'
    // sockets by hash, so a worker that did not accept would leave some of these hanging
    // (all 90 avoiding one of 3 sockets has probability (2/3)^90, about 1e-16).
    let replies: Vec<_> = (0..90)
        .map(|i| tokio::spawn(tests::send_http1(address, get("/", &format!("c{i}")))))
        .collect();
    for reply in replies {
        let reply = tokio::time::timeout(Duration::from_secs(10), reply)
            .await
            .expect("every connection is accepted and answered")
            .unwrap();
        assert_eq!(reply.status, 200);
    }

    // Requests in flight on (very likely) every worker when the shutdown starts.
    let in_flight: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(tests::send_http1(
                address,
                get("/sleep/600", &format!("s{i}")),
            ))
        })
        .collect();
    proxy.wait_for_in_flight(12).await;
    let report = proxy.stop().await;
    for reply in in_flight {
        assert_eq!(
            reply.await.unwrap().status,
            200,
            "an in-flight request was cut"
        );
    }
    assert_eq!(report, ShutdownReport::Drained);
    assert_eq!(
        worker_threads_become(0).await,
        0,
        "worker threads outlived the shutdown"
    );
}
