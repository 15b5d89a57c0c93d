//! The `balancer-sim` binary as a user runs it: output formats, replay, errors, scenarios, compare.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_balancer-sim"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn scenario(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
        .display()
        .to_string()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balancer-sim-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn json_has_the_documented_keys_and_replays_byte_for_byte() {
    let args = [
        "run",
        "--policy",
        "p2c",
        "--backends",
        "5",
        "--load",
        "0.8",
        "--requests",
        "5000",
        "--seed",
        "42",
        "--service",
        "lognormal:1ms:0.5",
        "--format",
        "json",
        "--zero-wall",
    ];
    let first = sim(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = sim(&args);
    assert_eq!(first.stdout, second.stdout, "same seed, same bytes");
    let json: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    for key in [
        "policy",
        "backends",
        "load",
        "requests",
        "seed",
        "completed",
        "failed",
        "rejected",
        "latency_ms",
        "per_backend",
        "sim_requests_per_s",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    for key in ["mean", "p50", "p99", "p999", "max"] {
        assert!(
            json["latency_ms"][key].as_f64().unwrap() > 0.0,
            "latency_ms.{key}"
        );
    }
    assert_eq!(json["policy"], "p2c");
    assert_eq!(json["completed"], 5000);
    assert_eq!(json["per_backend"].as_array().unwrap().len(), 5);
    assert_eq!(json["sim_requests_per_s"], 0.0);
    let other_seed = sim(&[
        "run",
        "--policy",
        "p2c",
        "--backends",
        "5",
        "--load",
        "0.8",
        "--requests",
        "5000",
        "--seed",
        "43",
        "--service",
        "lognormal:1ms:0.5",
        "--format",
        "json",
        "--zero-wall",
    ]);
    assert_ne!(first.stdout, other_seed.stdout);
}

#[test]
fn defaults_give_a_table() {
    let out = sim(&["run", "--requests", "2000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("policy least-pending") && text.contains("backends 10"),
        "{text}"
    );
    assert!(text.contains("p99"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = temp_dir("bad");
    let unknown_key = dir.join("unknown-key.toml");
    std::fs::write(
        &unknown_key,
        "[[fault]]\nkind = \"crash\"\nat = \"1ms\"\nbackend = 0\noops = 1\n",
    )
    .unwrap();
    let missing_backend = dir.join("missing-backend.toml");
    std::fs::write(
        &missing_backend,
        "[[fault]]\nkind = \"drain\"\nat = \"1ms\"\nbackend = 99\n",
    )
    .unwrap();
    let not_toml = dir.join("not-toml.toml");
    std::fs::write(&not_toml, "this is [not toml").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--faults".into(), unknown_key.display().to_string()],
            "unknown-key.toml",
        ),
        (
            vec!["--faults".into(), missing_backend.display().to_string()],
            "missing-backend.toml",
        ),
        (
            vec!["--faults".into(), not_toml.display().to_string()],
            "not-toml.toml",
        ),
        (
            vec!["--faults".into(), "/nonexistent/x.toml".into()],
            "/nonexistent/x.toml",
        ),
        (
            vec!["--service".into(), "exp:fast".into()],
            "bad service-time distribution",
        ),
        (vec!["--service".into(), "pareto:1ms:0.5".into()], "ALPHA"),
        (vec!["--policy".into(), "fastest".into()], "unknown policy"),
        (vec!["--arrivals".into(), "closed:0".into()], "closed"),
        (vec!["--load".into(), "0".into()], "load"),
        (vec!["--backends".into(), "0".into()], "--backends"),
        (vec!["--concurrency".into(), "0".into()], "concurrency"),
        (vec!["--requests".into(), "0".into()], "requests"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["run".to_owned(), "--requests".into(), "100".into()];
        args.extend(extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sim(&refs);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_scenarios_run_with_invariant_checks() {
    for name in [
        "black-hole.toml",
        "rolling-restart.toml",
        "heterogeneous.toml",
        "crash-undetected.toml",
        "spike-and-scale.toml",
        "flaky.toml",
        "black-hole-ejected.toml",
        "total-outage.toml",
        "flapping.toml",
        "slow-backend.toml",
        "crash-recover.toml",
    ] {
        // 20 000 requests ≈ 2.2 s of virtual time at ρ = 0.9 over 10 backends: the faults
        // at 1–2 s fire; later ones are past the end, which is allowed.
        let out = sim(&[
            "run",
            "--faults",
            &scenario(name),
            "--requests",
            "20000",
            "--check-invariants",
            "--format",
            "json",
        ]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let total = json["completed"].as_u64().unwrap()
            + json["failed"].as_u64().unwrap()
            + json["rejected"].as_u64().unwrap();
        assert_eq!(total, 20_000, "{name}");
    }
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = sim(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each fault scenario with its own invariant beyond conservation.
#[test]
fn fault_scenarios_keep_their_promises() {
    let run = |name: &str, policy: &str| {
        run_json(&[
            "run",
            "--faults",
            &scenario(name),
            "--policy",
            policy,
            "--requests",
            "20000",
            "--check-invariants",
            "--format",
            "json",
        ])
    };
    let u = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap();
    // Total outage, 0.5 s of 2.2: the budget (20% of requests + 100 per 10 s) caps retries
    // far below the 2 per failed request they would be without it.
    let outage = run("total-outage.toml", "least-pending");
    assert!(u(&outage, "failed") > 3_000, "{outage}");
    assert!(
        (u(&outage, "retries") as f64) <= 0.2 * 20_000.0 + 100.0,
        "{outage}"
    );
    // Flapping: ejection and probes keep the failures to a small fraction of the 8 flaps ×
    // 100 ms × its ~900 requests/s share (≈ 720 if it were never taken out).
    let flapping = run("flapping.toml", "round-robin");
    assert!(u(&flapping, "failed") < 200, "{flapping}");
    // Slow backend: load-aware policies route around it; round-robin queues behind it.
    let slow_lp = run("slow-backend.toml", "least-pending");
    let slow_rr = run("slow-backend.toml", "round-robin");
    let p99 = |v: &serde_json::Value| v["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p99(&slow_lp) * 5.0 < p99(&slow_rr), "{slow_lp}\n{slow_rr}");
    assert_eq!(u(&slow_lp, "failed"), 0);
    // Crash found by probes and ejection: a few failures, then back and serving.
    let crash = run("crash-recover.toml", "p2c");
    assert!(u(&crash, "failed") < 50, "{crash}");
    assert!(crash["per_backend"][7].as_u64().unwrap() > 500, "{crash}");
}

#[test]
fn compare_writes_report_and_plots_independent_of_threads() {
    let mut reports = Vec::new();
    for threads in ["1", "2"] {
        let dir = temp_dir(&format!("compare{threads}"));
        let out = sim(&[
            "compare",
            "--policies",
            "least-pending,random",
            "--loads",
            "0.5,0.9",
            "--backends",
            "4",
            "--requests",
            "3000",
            "--threads",
            threads,
            "--out",
            &dir.display().to_string(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(
            report.contains("| least-pending |") && report.contains("ρ = 0.9"),
            "{report}"
        );
        for svg in ["p99_vs_load.svg", "mean_vs_load.svg"] {
            let text = std::fs::read_to_string(dir.join(svg)).unwrap();
            assert!(
                text.starts_with("<svg") && text.contains("least-pending"),
                "{svg}"
            );
            assert!(text.contains("offered load"), "{svg} has an x axis label");
        }
        // The command line differs (--threads, --out); compare the tables only.
        reports.push(report.lines().skip(3).collect::<Vec<_>>().join("\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(reports[0], reports[1]);
}
