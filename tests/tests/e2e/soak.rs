//! Soak: ten minutes at half of the measured capacity; the process's resident memory
//! must grow by at most 10 % from the end of the warm-up to the end, and no file descriptor
//! may leak (the count after the load stops and idle backend connections expire is back where
//! it was before the load).
//!
//! The balancer runs in-process (`tests::Proxy`), and the test reruns itself alone in a fresh
//! process of the test binary (`tests::rerun_alone`), so `/proc/self/status` `VmRSS` and the
//! entries of `/proc/self/fd` are those of this test only: balancer, four demo backends and the
//! load clients together. Every part of it is steady-state by design, so a
//! leak anywhere shows; the clients reconnect every 100 requests so that connection setup and
//! teardown are exercised, not only keep-alive.
//!
//! An ignored test, run on demand (Linux only: it reads `/proc`); `BALANCER_SOAK_SECS` shortens it:
//!
//! ```sh
//! cargo test --release -p tests --test e2e soak:: -- --ignored --nocapture
//! BALANCER_SOAK_SECS=60 cargo test --release -p tests --test e2e soak:: -- --ignored --nocapture
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tests::{ConfigBuilder, Proxy, get, start_backends};

/// Closed-loop clients that measure capacity.
const CAPACITY_CLIENTS: usize = 8;
const CAPACITY_MEASURE: Duration = Duration::from_secs(5);
/// Paced clients of the soak: enough that each has slack between its requests (8 fell behind
/// the pace, reaching 37 % of capacity instead of 50 %).
const SOAK_CLIENTS: usize = 32;
/// Requests on one connection before the client opens a new one.
const REQUESTS_PER_CONNECTION: u64 = 100;
/// Default soak length.
const SOAK_SECS: u64 = 600;
/// Idle backend connections are closed after this, so the fd count can settle after the load.
const IDLE_TIMEOUT_MS: u64 = 2000;
/// Allowed RSS growth from the end of the warm-up to the end.
const MAX_RSS_GROWTH_PERCENT: f64 = 10.0;
/// Descriptors that may differ before and after (e.g. the runtime's own, a log file).
const FD_SLACK: usize = 4;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Sends GETs until `stop`, one every `interval` (0: as fast as answers come), reconnecting
/// every `REQUESTS_PER_CONNECTION`; counts 200s in `ok` and anything else in `failed`.
async fn client(
    address: SocketAddr,
    interval: Duration,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender = None;
    let mut on_this_connection = 0;
    // Bounded by count as well as by `stop`: 100 million is far beyond ten minutes.
    for n in 0u64..100_000_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if !interval.is_zero() {
            ticker.tick().await;
        }
        if sender.is_none() || on_this_connection >= REQUESTS_PER_CONNECTION {
            match tests::connect(address).await {
                Ok(s) => {
                    sender = Some(s);
                    on_this_connection = 0;
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        // A mix: small answers, and now and then a streamed 64 KiB one.
        let path = if n % 50 == 0 {
            "/stream?bytes=65536"
        } else {
            "/"
        };
        let exchange = async {
            s.ready().await?;
            let response = s.send_request(get(path, "soak.test")).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        on_this_connection += 1;
        match tokio::time::timeout(tests::EXCHANGE_TIMEOUT, exchange).await {
            Ok(Ok(status)) if status == 200 => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
        }
    }
}

struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(address: SocketAddr, count: usize, interval: Duration) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..count)
            .map(|_| {
                tokio::spawn(client(
                    address,
                    interval,
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                ))
            })
            .collect();
        Clients {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        tests::within("the clients to stop", async {
            for task in self.tasks {
                task.await.expect("soak client");
            }
        })
        .await;
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: cargo test --release -p tests --test e2e soak:: -- --ignored --nocapture"]
async fn ten_minutes_at_half_capacity_leak_neither_memory_nor_descriptors() {
    // Memory and descriptors are counted for the whole process.
    if tests::rerun_alone(
        module_path!(),
        "ten_minutes_at_half_capacity_leak_neither_memory_nor_descriptors",
    ) {
        return;
    }
    let _turn = tests::serial().await;
    let soak = Duration::from_secs(
        std::env::var("BALANCER_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(SOAK_SECS),
    );
    let warm_up = soak / 10;
    let backends = start_backends(&[0, 0, 0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends).idle_timeout_ms(IDLE_TIMEOUT_MS)
    }))
    .await;
    let address = proxy.addr();
    let fds_before = open_fds();

    let capacity_clients = Clients::start(address, CAPACITY_CLIENTS, Duration::ZERO);
    tokio::time::sleep(CAPACITY_MEASURE).await;
    let (capacity_ok, capacity_failed) = capacity_clients.finish().await;
    let capacity_per_s = capacity_ok as f64 / CAPACITY_MEASURE.as_secs_f64();
    let target_per_s = capacity_per_s / 2.0;
    let interval = Duration::from_secs_f64(SOAK_CLIENTS as f64 / target_per_s);
    eprintln!(
        "soak: capacity {capacity_per_s:.0} req/s ({capacity_failed} failed); soaking {soak:?} at \
         {target_per_s:.0} req/s ({SOAK_CLIENTS} clients, one request each per {interval:.2?})"
    );
    assert_eq!(capacity_failed, 0);

    let started = Instant::now();
    let clients = Clients::start(address, SOAK_CLIENTS, interval);
    tokio::time::sleep(warm_up).await;
    let (rss_warm, fds_warm) = (rss_kib(), open_fds());
    let mut rss_peak = rss_warm;
    let sample_every = (soak / 20).max(Duration::from_secs(1));
    // Bounded: 100 samples at most.
    for _ in 0..100 {
        if started.elapsed() >= soak {
            break;
        }
        tokio::time::sleep(sample_every.min(soak.saturating_sub(started.elapsed()))).await;
        let rss = rss_kib();
        rss_peak = rss_peak.max(rss);
        eprintln!(
            "soak: {:>4.0} s  {} ok  {} failed  VmRSS {rss} KiB  {} fds",
            started.elapsed().as_secs_f64(),
            clients.ok.load(Ordering::Relaxed),
            clients.failed.load(Ordering::Relaxed),
            open_fds()
        );
    }
    let (rss_end, fds_end) = (rss_kib(), open_fds());
    let elapsed = started.elapsed();
    let (ok, failed) = clients.finish().await;
    // Idle backend connections expire, client connections are closed.
    let mut fds_after = open_fds();
    for _ in 0..50 {
        if fds_after <= fds_before + FD_SLACK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        fds_after = open_fds();
    }
    let growth = (rss_end as f64 - rss_warm as f64) * 100.0 / rss_warm as f64;
    eprintln!(
        "soak: {ok} requests ok, {failed} failed in {elapsed:.0?} ({:.0} req/s); VmRSS {rss_warm} KiB \
         after warm-up, {rss_end} KiB at the end ({growth:+.1} %), peak {rss_peak} KiB; fds {fds_before} \
         before the load, {fds_warm} after warm-up, {fds_end} at the end, {fds_after} after it",
        ok as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(failed, 0, "failed requests during the soak");
    assert!(
        growth <= MAX_RSS_GROWTH_PERCENT,
        "RSS grew {growth:.1} % ({rss_warm} -> {rss_end} KiB)"
    );
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "descriptors leaked: {fds_before} before the load, {fds_after} after"
    );
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
    tests::stop_backends(backends).await;
}
