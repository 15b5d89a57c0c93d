//! Replay of recorded traces: record → replay → report, determinism, the service model,
//! malformed traces, and `replay --compare`'s report, through the library and the binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use balancer_core::PolicyKind;
use balancer_core::trace::{TRACE_HEADER, TraceOutcome, TraceRecord, parse_trace};
use balancer_sim::replay::{ReplayConfig, observed, replay};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ADDRESSES: [&str; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];

/// A synthetic recording: Poisson arrivals at 2 000/s, round-robin over three backends whose
/// service times are exponential with means 1, 1 and 3 ms; one request in 100 rejected, one
/// in 100 failed.
fn synthetic(records: usize, seed: u64) -> Vec<TraceRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut now_ns = 0f64;
    let mut next = 0;
    (0..records)
        .map(|_| {
            now_ns += -(1.0 - rng.random::<f64>()).ln() * 500_000.0;
            let roll = rng.random::<f64>();
            let (backend, service_ns, status, outcome) = if roll < 0.01 {
                (None, 0, 503, TraceOutcome::Rejected)
            } else {
                let b = next % 3;
                next += 1;
                let mean_ns = if b == 2 { 3e6 } else { 1e6 };
                let service = (-(1.0 - rng.random::<f64>()).ln() * mean_ns).max(1.0) as u64;
                let (status, outcome) = if roll < 0.02 {
                    (502, TraceOutcome::Failed)
                } else {
                    (200, TraceOutcome::Ok)
                };
                (Some(ADDRESSES[b].to_owned()), service, status, outcome)
            };
            TraceRecord {
                arrival_ns: now_ns as u64,
                pool: "web".into(),
                route: "/".into(),
                method: "GET".into(),
                request_bytes: 0,
                response_bytes: 100,
                backend,
                service_ns,
                status,
                outcome,
            }
        })
        .collect()
}

fn trace_text(records: &[TraceRecord]) -> String {
    let mut text = format!("{TRACE_HEADER}\n");
    for r in records {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    text
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("balancer-sim-replay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_balancer-sim"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn record_replay_report_through_the_library() {
    let records = synthetic(4_000, 7);
    // Written and read back, as the proxy's file would be.
    let parsed = parse_trace(&trace_text(&records)).unwrap();
    assert_eq!(parsed, records);
    let seen = observed(&parsed);
    assert_eq!(seen.requests, 4_000);
    assert_eq!(seen.backends, ADDRESSES);
    assert!(seen.rejected > 0 && seen.failed > 0);

    // Many servers per backend: no queueing, so each request's sojourn is one draw from its
    // backend's recorded service times, and round-robin (the recording's policy) spreads
    // them as recorded: the replayed mean is the recorded one within sampling noise
    // (σ of a mean of 4 000 exp draws ≈ 1.6% here; 6% is ~4σ).
    let mut config = ReplayConfig::new(PolicyKind::RoundRobin);
    config.concurrency = 64;
    let summary = replay(&parsed, &config).unwrap();
    assert_eq!(summary.submitted, 4_000, "rejected records still arrive");
    assert_eq!(summary.completed, 4_000);
    assert_eq!(summary.service, "trace:per-backend");
    assert_eq!(summary.arrivals, "trace");
    let ratio = summary.latency_ms.mean / seen.latency_ms.mean;
    assert!((0.94..1.06).contains(&ratio), "{ratio}: {summary:?}");
    // Twice as fast: half the latency (same draws, each divided by 2, rounded up to 1 ns).
    config.speed_factor = 2.0;
    let fast = replay(&parsed, &config).unwrap();
    let halved = fast.latency_ms.mean / summary.latency_ms.mean;
    assert!((0.499..0.501).contains(&halved), "{halved}");
    // Load = recorded arrival rate ÷ capacity: 2 000/s over 3 × 64 servers at ~1.67 ms.
    assert!(
        summary.load > 0.0 && summary.load < 0.05,
        "{}",
        summary.load
    );
    assert!((fast.load / summary.load - 0.5).abs() < 1e-9);

    // One server each: least-pending keeps work off the slow backend, round-robin cannot.
    let mut single = ReplayConfig::new(PolicyKind::RoundRobin);
    single.concurrency = 1;
    let rr = replay(&parsed, &single).unwrap();
    single.policy = PolicyKind::LeastPending;
    let lp = replay(&parsed, &single).unwrap();
    assert!(lp.latency_ms.p99 < rr.latency_ms.p99, "{lp:?}\n{rr:?}");

    // Two backends for three addresses: the pooled distribution.
    let mut pooled = ReplayConfig::new(PolicyKind::P2c);
    pooled.backends = Some(2);
    pooled.concurrency = 4;
    let summary = replay(&parsed, &pooled).unwrap();
    assert_eq!(summary.service, "trace:pooled");
    assert_eq!(summary.per_backend.len(), 2);
}

#[test]
fn same_trace_and_seed_same_output() {
    let records = synthetic(2_000, 3);
    let mut config = ReplayConfig::new(PolicyKind::P2c);
    config.check_invariants = true;
    let a = replay(&records, &config).unwrap();
    let b = replay(&records, &config).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    config.seed = 2;
    let c = replay(&records, &config).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash, "the seed drives the draws");
    // Order of lines does not matter: readers sort.
    let mut shuffled = records.clone();
    shuffled.reverse();
    config.seed = 1;
    assert_eq!(replay(&shuffled, &config).unwrap().to_json(), a.to_json());
}

#[test]
fn unusable_traces_are_clear_errors() {
    let mut config = ReplayConfig::new(PolicyKind::P2c);
    assert!(
        replay(&[], &config)
            .unwrap_err()
            .to_string()
            .contains("no records")
    );
    let rejected_only: Vec<_> = synthetic(200, 1)
        .into_iter()
        .filter(|r| r.outcome == TraceOutcome::Rejected)
        .collect();
    assert!(!rejected_only.is_empty());
    let error = replay(&rejected_only, &config).unwrap_err().to_string();
    assert!(error.contains("service_ns"), "{error}");
    config.speed_factor = 0.0;
    let error = replay(&synthetic(10, 1), &config).unwrap_err().to_string();
    assert!(error.contains("speed factor"), "{error}");
}

#[test]
fn the_binary_replays_like_run_and_names_bad_lines() {
    let dir = temp_dir("cli");
    let trace = dir.join("recorded.trace");
    std::fs::write(&trace, trace_text(&synthetic(3_000, 11))).unwrap();
    let trace_arg = trace.display().to_string();
    let args = [
        "replay",
        "--trace",
        &trace_arg,
        "--policy",
        "peak-ewma",
        "--concurrency",
        "2",
        "--format",
        "json",
        "--zero-wall",
        "--check-invariants",
    ];
    let first = sim(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        first.stdout,
        sim(&args).stdout,
        "same trace and seed, same bytes"
    );
    // The same keys as `run`.
    let replayed: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let ran = sim(&[
        "run",
        "--requests",
        "100",
        "--format",
        "json",
        "--zero-wall",
    ]);
    let ran: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&replayed), keys(&ran));
    assert_eq!(replayed["submitted"], 3_000);
    assert_eq!(replayed["backends"], 3);

    // A bad line: the error names the file and the line.
    let bad = dir.join("bad.trace");
    let mut text = trace_text(&synthetic(5, 1));
    text.push_str("12\tweb\t/\tGET\t0\t0\t-\tlots\t200\tok\n");
    std::fs::write(&bad, text).unwrap();
    let out = sim(&["replay", "--trace", &bad.display().to_string()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.trace") && err.contains("line 7") && err.contains("service_ns"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let headless = dir.join("headless.trace");
    std::fs::write(&headless, "0\tweb\n").unwrap();
    let out = sim(&["replay", "--trace", &headless.display().to_string()]);
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
    let out = sim(&["replay", "--trace", "/nonexistent/x.trace"]);
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_writes_a_report_with_the_recorded_figures() {
    let dir = temp_dir("compare");
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("traces/example.trace");
    let out = sim(&[
        "replay",
        "--trace",
        &example.display().to_string(),
        "--compare",
        "least-pending,p2c,round-robin,peak-ewma",
        "--speed-factors",
        "1,2",
        "--concurrency",
        "4",
        "--out",
        &dir.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("| recorded |"), "{report}");
    assert!(
        report.contains("p2c would have given p99") && report.contains("recorded"),
        "{report}"
    );
    for svg in ["p99_vs_speed.svg", "mean_vs_speed.svg"] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("peak-ewma"),
            "{svg}"
        );
        assert!(
            text.contains("speed factor") && text.contains("(ms"),
            "{svg}"
        );
        assert!(text.contains("recorded"), "{svg}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fleet_file_sets_the_simulated_backends_and_defences() {
    let dir = temp_dir("fleet");
    let trace = dir.join("recorded.trace");
    std::fs::write(&trace, trace_text(&synthetic(1_000, 5))).unwrap();
    let fleet = dir.join("fleet.toml");
    std::fs::write(
        &fleet,
        "[core.outlier]\nconsecutive_failures = 3\n\n[[backend]]\ncount = 2\nconcurrency = 3\nspeed = 2.0\n",
    )
    .unwrap();
    let out = sim(&[
        "replay",
        "--trace",
        &trace.display().to_string(),
        "--fleet",
        &fleet.display().to_string(),
        "--format",
        "json",
        "--check-invariants",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["backends"], 2);
    assert_eq!(
        json["service"], "trace:pooled",
        "2 backends for 3 addresses"
    );
    assert_eq!(json["per_backend_detail"][0]["concurrency"], 3);
    assert_eq!(json["per_backend_detail"][0]["speed"], 2.0);
    // Faults have no place in a replay fleet.
    std::fs::write(
        &fleet,
        "[[backend]]\ncount = 2\n\n[[fault]]\nkind = \"crash\"\nat = \"1ms\"\nbackend = 0\n",
    )
    .unwrap();
    let out = sim(&[
        "replay",
        "--trace",
        &trace.display().to_string(),
        "--fleet",
        &fleet.display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fault"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trace_of_two_pools_is_replayed_one_pool_at_a_time() {
    let dir = temp_dir("pools");
    let mut records = synthetic(2_000, 5);
    for record in records.iter_mut().skip(1).step_by(2) {
        record.pool = "api".into();
    }
    let trace = dir.join("two-pools.trace");
    std::fs::write(&trace, trace_text(&records)).unwrap();
    let trace_arg = trace.display().to_string();

    let mixed = sim(&["replay", "--trace", &trace_arg]);
    assert!(!mixed.status.success());
    let err = stderr(&mixed);
    assert!(
        err.contains("holds 2 pools: api (1000 requests), web (1000 requests)")
            && err.contains("--pool NAME"),
        "{err}"
    );

    let one = sim(&[
        "replay", "--trace", &trace_arg, "--pool", "api", "--format", "json",
    ]);
    assert!(one.status.success(), "{}", stderr(&one));
    let summary: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    let requests = &summary["requests"];
    assert_eq!(requests, 1000, "only pool api's arrivals: {summary}");

    let unknown = sim(&["replay", "--trace", &trace_arg, "--pool", "admin"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no request of pool `admin`; its pools are: api"),
        "{}",
        stderr(&unknown)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
