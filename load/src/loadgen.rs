//! The load generators: wrk (closed loop) and oha (open loop, fixed rate), and their output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::procs;

/// What one wrk run measured.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// What one oha run measured.
#[derive(Clone, Debug, Default)]
pub struct OhaResult {
    /// Achieved requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Fraction of requests that succeeded (0..=1).
    pub success_rate: f64,
}

/// wrk's latency cell ("790.00us", "1.04ms", "2.00s", "1.00m") in milliseconds.
pub fn parse_wrk_duration_ms(cell: &str) -> Option<f64> {
    let cell = cell.trim();
    let (number, factor) = if let Some(n) = cell.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = cell.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = cell.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = cell.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = cell.strip_suffix('h') {
        (n, 3600e3)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|v| v * factor)
}

/// Parses the text wrk prints with `--latency`.
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult::default();
    let (mut rps, mut p50, mut p99) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse::<f64>().ok(),
            (Some("50%"), Some(v)) => p50 = parse_wrk_duration_ms(v),
            (Some("99%"), Some(v)) => p99 = parse_wrk_duration_ms(v),
            (Some(n), Some("requests")) => result.requests = n.parse().unwrap_or(0),
            _ => {}
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += n.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            result.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    result.rps = rps.ok_or_else(|| anyhow!("no Requests/sec line in wrk's output"))?;
    result.p50_ms = p50.ok_or_else(|| anyhow!("no 50% line in wrk's output"))?;
    result.p99_ms = p99.ok_or_else(|| anyhow!("no 99% line in wrk's output"))?;
    Ok(result)
}

/// Parses oha's JSON output (latencies in seconds).
pub fn parse_oha(text: &str) -> anyhow::Result<OhaResult> {
    let json: serde_json::Value = serde_json::from_str(text).context("oha's output is not JSON")?;
    let success_rate = json
        .pointer("/summary/successRate")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    if success_rate == 0.0 {
        let errors = json
            .get("errorDistribution")
            .map_or_else(|| "none reported".to_owned(), |e| e.to_string());
        bail!("oha: no request succeeded; errors: {errors}");
    }
    let number = |pointer: &str| {
        json.pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| anyhow!("oha's JSON has no {pointer}"))
    };
    Ok(OhaResult {
        rps: number("/summary/requestsPerSec")?,
        p50_ms: number("/latencyPercentiles/p50")? * 1e3,
        p99_ms: number("/latencyPercentiles/p99")? * 1e3,
        p999_ms: number("/latencyPercentiles/p99.9")? * 1e3,
        success_rate,
    })
}

/// Where the load generators run and with what settings.
#[derive(Clone, Debug)]
pub struct LoadGen {
    /// `taskset` binary.
    pub taskset: PathBuf,
    /// CPU list for the load generator (`taskset -c`).
    pub cpus: String,
    /// wrk binary.
    pub wrk: PathBuf,
    /// oha binary and its output flags, if open loop is available.
    pub oha: Option<Oha>,
    /// Concurrent connections.
    pub connections: usize,
    /// Where raw outputs and logs go.
    pub raw_dir: PathBuf,
}

/// How to call oha.
#[derive(Clone, Debug)]
pub struct Oha {
    /// The binary.
    pub path: PathBuf,
    /// Flags that make it print JSON without its TUI.
    pub output_flags: Vec<String>,
    /// Whether `--latency-correction` exists (it does in oha ≥ 0.6).
    pub latency_correction: bool,
}

impl Oha {
    /// Reads `oha --help` to pick the JSON and latency-correction flags of this version.
    pub fn detect(path: PathBuf) -> anyhow::Result<Oha> {
        let output = Command::new(&path)
            .arg("--help")
            .output()
            .with_context(|| format!("cannot run {} --help", path.display()))?;
        let help = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let mut output_flags = vec!["--no-tui".to_owned()];
        if help.contains("--output-format") {
            output_flags.extend(["--output-format".to_owned(), "json".to_owned()]);
        } else if help.contains("--json") {
            output_flags.push("--json".to_owned());
        } else {
            bail!("this oha has neither --output-format nor --json; cannot read its results");
        }
        Ok(Oha {
            path,
            output_flags,
            latency_correction: help.contains("--latency-correction"),
        })
    }
}

impl LoadGen {
    fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}/")
    }

    /// One closed-loop wrk run of `duration` against `port`; `label` names the raw output file.
    pub fn wrk(&self, port: u16, duration: Duration, label: &str) -> anyhow::Result<WrkResult> {
        let out = self.raw_dir.join(format!("{label}.wrk.txt"));
        let text = procs::run_bounded(
            &format!("{label}.wrk"),
            Command::new(&self.taskset)
                .args(["-c", &self.cpus])
                .arg(&self.wrk)
                .args(["-t1", &format!("-c{}", self.connections)])
                .arg(format!("-d{}s", duration.as_secs().max(1)))
                .args(["--latency", "--timeout", "5s"])
                .arg(Self::url(port)),
            &self.raw_dir,
            &out,
            duration + Duration::from_secs(30),
        )?;
        parse_wrk(&text).with_context(|| format!("in {}", out.display()))
    }

    /// One open-loop oha run at `rate` requests/s.
    pub fn oha(
        &self,
        port: u16,
        rate: u64,
        duration: Duration,
        label: &str,
    ) -> anyhow::Result<OhaResult> {
        let oha = self
            .oha
            .as_ref()
            .ok_or_else(|| anyhow!("oha is not available"))?;
        let out = self.raw_dir.join(format!("{label}.oha.json"));
        let mut command = Command::new(&self.taskset);
        command
            .args(["-c", &self.cpus])
            .arg(&oha.path)
            .args(["-z", &format!("{}s", duration.as_secs().max(1))])
            .args(["-q", &rate.to_string()])
            .args(["-c", &self.connections.to_string()])
            .args(&oha.output_flags);
        if oha.latency_correction {
            command.arg("--latency-correction");
        }
        command.arg(Self::url(port));
        let text = procs::run_bounded(
            &format!("{label}.oha"),
            &mut command,
            &self.raw_dir,
            &out,
            duration + Duration::from_secs(30),
        )?;
        parse_oha(&text).with_context(|| format!("in {}", out.display()))
    }
}

/// Checks that `port` answers `GET /` with 200 (a proxy that starts but cannot reach its
/// backends must not be measured).
pub fn smoke_get(port: u16) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response);
    let status = head.lines().next().unwrap_or("").to_owned();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET http://127.0.0.1:{port}/ answered {status:?}, expected 200");
    }
    Ok(())
}

/// A file name safe label.
pub fn label(parts: &[&str]) -> String {
    parts.join("-")
}

/// The raw output directory under `out`.
pub fn raw_dir(out: &Path) -> PathBuf {
    out.join("raw")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let text = "Running 3s test @ http://127.0.0.1:18101/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms    0.50ms  10.00ms   90.00%
  Latency Distribution
     50%  790.00us
     75%    1.04ms
     90%    1.53ms
     99%    4.59ms
  123456 requests in 3.00s, 20.12MB read
  Non-2xx or 3xx responses: 12
  Socket errors: connect 0, read 3, write 0, timeout 1
Requests/sec:  41131.43
Transfer/sec:      6.70MB
";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.rps, 41131.43);
        assert!((r.p50_ms - 0.79).abs() < 1e-9);
        assert_eq!(r.p99_ms, 4.59);
        assert_eq!(r.requests, 123456);
        assert_eq!(r.errors, 16);
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(parse_wrk_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_wrk_duration_ms("1.00m"), Some(60000.0));
        assert_eq!(parse_wrk_duration_ms("12"), None);
    }

    #[test]
    fn oha_json_parses() {
        let text = r#"{"summary":{"successRate":1.0,"requestsPerSec":19999.5},
            "latencyPercentiles":{"p50":0.0005,"p99":0.002,"p99.9":0.004}}"#;
        let r = parse_oha(text).unwrap();
        assert_eq!(r.rps, 19999.5);
        assert!((r.p99_ms - 2.0).abs() < 1e-9);
        assert!((r.p999_ms - 4.0).abs() < 1e-9);
    }
}
