//! The results: per-run samples, medians, ratios, and the three outputs (report.md,
//! results.json, SVG charts).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

/// What is measured: no proxy, or one of the proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Straight to one backend: the ceiling of this machine's load generator and backends.
    Direct,
    /// The balancer of this workspace.
    Balancer,
    /// A second balancer binary (`--baseline`, e.g. built from an older commit), measured under
    /// the same rules so that before and after share one run's noise.
    #[value(name = "balancer-baseline")]
    #[serde(rename = "balancer-baseline")]
    Baseline,
    /// HAProxy from Debian.
    Haproxy,
    /// nginx from Debian.
    Nginx,
}

impl Target {
    /// The default targets, in the interleaving order (the baseline joins with `--baseline`).
    pub const ALL: [Target; 4] = [
        Target::Direct,
        Target::Balancer,
        Target::Haproxy,
        Target::Nginx,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Balancer => "balancer",
            Target::Baseline => "balancer-baseline",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            Target::Direct => RGBColor(150, 150, 150),
            Target::Balancer => RGBColor(214, 96, 33),
            Target::Baseline => RGBColor(240, 170, 120),
            Target::Haproxy => RGBColor(31, 119, 180),
            Target::Nginx => RGBColor(44, 160, 44),
        }
    }
}

/// One closed-loop (wrk) run.
#[derive(Clone, Debug, Serialize)]
pub struct ClosedSample {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Requests completed in the window.
    pub requests: u64,
    /// Non-2xx/3xx plus socket errors.
    pub errors: u64,
    /// The proxy's user+system CPU over the window (None for direct).
    pub cpu_s: Option<f64>,
    /// Busy time of the proxy's CPU(s) not spent in the proxy (other processes), percent.
    pub other_on_proxy_cpu_pct: Option<f64>,
    /// Busy time of the load generator's CPU(s), percent.
    pub load_cpu_busy_pct: Option<f64>,
}

/// One open-loop (oha) run.
#[derive(Clone, Debug, Serialize)]
pub struct OpenSample {
    /// Achieved requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Requests completed (achieved rate × window).
    pub requests: u64,
    /// Fraction of successful requests.
    pub success_rate: f64,
    /// The proxy's CPU over the window (None for direct).
    pub cpu_s: Option<f64>,
    /// Busy time of the proxy's CPU(s) not spent in the proxy (other processes), percent.
    pub other_on_proxy_cpu_pct: Option<f64>,
    /// Busy time of the load generator's CPU(s), percent.
    pub load_cpu_busy_pct: Option<f64>,
}

/// Everything measured for one target.
#[derive(Clone, Debug)]
pub struct TargetResults {
    /// Which.
    pub target: Target,
    /// Why it could not be measured (e.g. it failed to start), if so.
    pub failure: Option<String>,
    /// Closed-loop samples, one per repeat.
    pub closed: Vec<ClosedSample>,
    /// Open-loop samples, one per repeat.
    pub open: Vec<OpenSample>,
    /// Problems in individual runs (kept going).
    pub notes: Vec<String>,
    /// RSS right after start and one request, KiB.
    pub rss_idle_kib: Option<u64>,
    /// RSS with the idle client connections open, KiB.
    pub rss_idle_conns_kib: Option<u64>,
    /// Idle connections: (opened by the client, accepted by the proxy = its new descriptors).
    pub idle_conns: Option<(usize, usize)>,
    /// In-flight phase: (connections, RSS with them idle, RSS with a request in flight on each).
    pub in_flight: Option<(usize, u64, u64)>,
}

impl TargetResults {
    /// Empty results for `target`.
    pub fn new(target: Target) -> TargetResults {
        TargetResults {
            target,
            failure: None,
            closed: Vec::new(),
            open: Vec::new(),
            notes: Vec::new(),
            rss_idle_kib: None,
            rss_idle_conns_kib: None,
            idle_conns: None,
            in_flight: None,
        }
    }
}

/// Median of the values (mean of the middle two for an even count); None if empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Requests per proxy CPU-second of one closed-loop run; None without a CPU reading.
fn per_cpu_s(s: &ClosedSample) -> Option<f64> {
    Some(s.requests as f64 / s.cpu_s.filter(|&c| c > 0.0)?)
}

/// One line of results.json: medians over the repeats.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// direct | balancer | balancer-baseline | haproxy | nginx.
    pub proxy: String,
    /// "ok", or why it was not (fully) measured.
    pub status: String,
    /// Interleaved repeats the medians are taken over (closed loop).
    pub repeats: usize,
    /// Closed loop: requests per second.
    pub rps: Option<f64>,
    /// Closed loop: median latency.
    pub p50_ms: Option<f64>,
    /// Closed loop: 99th percentile latency.
    pub p99_ms: Option<f64>,
    /// Closed loop: proxy CPU seconds over the measured window.
    pub cpu_s: Option<f64>,
    /// Closed loop: requests per proxy CPU-second.
    pub req_per_cpu_s: Option<f64>,
    /// Closed loop: errors (non-2xx/3xx and socket errors) summed over repeats.
    pub errors: u64,
    /// Closed loop: busy time of the proxy's CPU spent in other processes, percent (noise).
    pub other_on_proxy_cpu_pct: Option<f64>,
    /// Closed loop: busy time of the load generator's CPU, percent (near 100: it is the limit).
    pub load_cpu_busy_pct: Option<f64>,
    /// Open loop: achieved requests per second.
    pub rps_open: Option<f64>,
    /// Open loop: median latency (corrected for coordinated omission when oha can).
    pub p50_ms_open: Option<f64>,
    /// Open loop: 99th percentile.
    pub p99_ms_open: Option<f64>,
    /// Open loop: 99.9th percentile.
    pub p999_ms_open: Option<f64>,
    /// Open loop: success rate.
    pub success_rate_open: Option<f64>,
    /// Open loop: proxy CPU seconds.
    pub cpu_s_open: Option<f64>,
    /// Open loop: requests per proxy CPU-second at the fixed rate.
    pub req_per_cpu_s_open: Option<f64>,
    /// Open-loop repeats.
    pub repeats_open: usize,
    /// RSS idle (after start and one request).
    pub rss_idle_kib: Option<u64>,
    /// RSS with the idle connections open.
    pub rss_10k_conns_kib: Option<u64>,
    /// Idle connections the client opened and still held open when RSS was read.
    pub idle_conns: Option<usize>,
    /// Idle connections the proxy had accepted (its new file descriptors) when RSS was read.
    pub idle_conns_accepted: Option<usize>,
    /// (rss_10k_conns − rss_idle) / connections accepted.
    pub rss_per_idle_conn_kib: Option<f64>,
    /// Connections with one request each in flight to a slow backend.
    pub in_flight: Option<usize>,
    /// RSS growth per in-flight request over the same connections idle.
    pub rss_per_inflight_kib: Option<f64>,
    /// Every sample, for inspection.
    pub samples_closed: Vec<ClosedSample>,
    /// Every open-loop sample.
    pub samples_open: Vec<OpenSample>,
}

impl Row {
    /// Medians of `r`.
    pub fn from_results(r: &TargetResults) -> Row {
        let closed = &r.closed;
        let open = &r.open;
        let mut status = match &r.failure {
            Some(why) => why.clone(),
            None => "ok".into(),
        };
        if r.failure.is_none() && !r.notes.is_empty() {
            status = format!("ok with problems: {}", r.notes.join("; "));
        }
        let held = r.idle_conns.map(|(_, held)| held);
        Row {
            proxy: r.target.name().into(),
            status,
            repeats: closed.len(),
            rps: median(closed.iter().map(|s| s.rps)),
            p50_ms: median(closed.iter().map(|s| s.p50_ms)),
            p99_ms: median(closed.iter().map(|s| s.p99_ms)),
            cpu_s: median(closed.iter().filter_map(|s| s.cpu_s)),
            req_per_cpu_s: median(closed.iter().filter_map(per_cpu_s)),
            errors: closed.iter().map(|s| s.errors).sum(),
            other_on_proxy_cpu_pct: median(closed.iter().filter_map(|s| s.other_on_proxy_cpu_pct)),
            load_cpu_busy_pct: median(closed.iter().filter_map(|s| s.load_cpu_busy_pct)),
            rps_open: median(open.iter().map(|s| s.rps)),
            p50_ms_open: median(open.iter().map(|s| s.p50_ms)),
            p99_ms_open: median(open.iter().map(|s| s.p99_ms)),
            p999_ms_open: median(open.iter().map(|s| s.p999_ms)),
            success_rate_open: median(open.iter().map(|s| s.success_rate)),
            cpu_s_open: median(open.iter().filter_map(|s| s.cpu_s)),
            req_per_cpu_s_open: median(
                open.iter()
                    .filter_map(|s| Some(s.requests as f64 / s.cpu_s.filter(|&c| c > 0.0)?)),
            ),
            repeats_open: open.len(),
            rss_idle_kib: r.rss_idle_kib,
            rss_10k_conns_kib: r.rss_idle_conns_kib,
            idle_conns: r.idle_conns.map(|(n, _)| n),
            idle_conns_accepted: held,
            rss_per_idle_conn_kib: match (r.rss_idle_kib, r.rss_idle_conns_kib, held) {
                (Some(a), Some(b), Some(n)) if n > 0 => Some((b as f64 - a as f64) / n as f64),
                _ => None,
            },
            in_flight: r.in_flight.map(|(n, _, _)| n),
            rss_per_inflight_kib: r
                .in_flight
                .filter(|(n, _, _)| *n > 0)
                .map(|(n, idle, busy)| (busy as f64 - idle as f64) / n as f64),
            samples_closed: closed.clone(),
            samples_open: open.clone(),
        }
    }
}

/// The run's settings and environment, printed at the top of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// The command line.
    pub command: String,
    /// Start and end times (UTC).
    pub started_utc: String,
    /// End time.
    pub finished_utc: String,
    /// `uptime` before the load phase.
    pub uptime_before: String,
    /// `uptime` after the load phase.
    pub uptime_after: String,
    /// Git revision of the workspace.
    pub git_rev: String,
    /// Tool versions.
    pub versions: Vec<(String, String)>,
    /// Settings, as (name, value).
    pub settings: Vec<(String, String)>,
    /// Warnings (e.g. open loop missing).
    pub warnings: Vec<String>,
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn find<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.proxy == name)
}

/// report.md.
pub fn markdown(meta: &Meta, rows: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Load comparison: balancer vs HAProxy vs nginx\n");
    let _ = writeln!(md, "- command: `{}`", meta.command);
    let _ = writeln!(
        md,
        "- run: {} → {} (UTC), git {}",
        meta.started_utc, meta.finished_utc, meta.git_rev
    );
    let _ = writeln!(md, "- load before: `{}`", meta.uptime_before);
    let _ = writeln!(md, "- load after: `{}`", meta.uptime_after);
    for (name, value) in &meta.settings {
        let _ = writeln!(md, "- {name}: {value}");
    }
    let _ = writeln!(md, "\nVersions:\n");
    for (name, version) in &meta.versions {
        let _ = writeln!(md, "- {name}: `{version}`");
    }
    if !meta.warnings.is_empty() {
        let _ = writeln!(md, "\n**Warnings**\n");
        for w in &meta.warnings {
            let _ = writeln!(md, "- {w}");
        }
    }

    let _ = writeln!(
        md,
        "\n## Closed loop (wrk), medians of interleaved repeats\n\n\
         | proxy | repeats | req/s | p50 ms | p99 ms | proxy CPU s | req per proxy CPU-s | errors \
         | other load on proxy CPU % | load-generator CPU busy % |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.proxy,
            r.repeats,
            fmt_opt(r.rps, 0),
            fmt_opt(r.p50_ms, 3),
            fmt_opt(r.p99_ms, 3),
            fmt_opt(r.cpu_s, 2),
            fmt_opt(r.req_per_cpu_s, 0),
            r.errors,
            fmt_opt(r.other_on_proxy_cpu_pct, 0),
            fmt_opt(r.load_cpu_busy_pct, 0),
        );
    }
    let _ = writeln!(
        md,
        "\n## Open loop (oha, fixed rate), medians\n\n\
         | proxy | repeats | achieved req/s | success | p50 ms | p99 ms | p99.9 ms | proxy CPU s | req per proxy CPU-s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.proxy,
            r.repeats_open,
            fmt_opt(r.rps_open, 0),
            fmt_opt(r.success_rate_open.map(|s| s * 100.0), 2) + "%",
            fmt_opt(r.p50_ms_open, 3),
            fmt_opt(r.p99_ms_open, 3),
            fmt_opt(r.p999_ms_open, 3),
            fmt_opt(r.cpu_s_open, 2),
            fmt_opt(r.req_per_cpu_s_open, 0),
        );
    }

    let b = find(rows, "balancer");
    let old = find(rows, Target::Baseline.name());
    let h = find(rows, "haproxy");
    let n = find(rows, "nginx");
    if old.is_some() {
        let _ = writeln!(
            md,
            "\n## Ratios (balancer ÷ other; the baseline's own ratios beside them)\n\n\
             | metric | better when | ÷ HAProxy | ÷ nginx | ÷ balancer-baseline \
             | baseline ÷ HAProxy | baseline ÷ nginx | goal |\n\
             |---|---|---:|---:|---:|---:|---:|---|"
        );
    } else {
        let _ = writeln!(
            md,
            "\n## Ratios (balancer ÷ other)\n\n\
             | metric | better when | ÷ HAProxy | ÷ nginx | goal |\n|---|---|---:|---:|---|"
        );
    }
    type Pick = fn(&Row) -> Option<f64>;
    let metrics: [(&str, &str, Pick, &str); 7] = [
        (
            "req per proxy CPU-s (closed)",
            "higher",
            |r| r.req_per_cpu_s,
            "≥ 1.10 vs HAProxy, ≥ 1.0 vs nginx",
        ),
        ("req/s (closed)", "higher", |r| r.rps, ""),
        ("p50 ms (closed)", "lower", |r| r.p50_ms, ""),
        ("p99 ms (closed)", "lower", |r| r.p99_ms, ""),
        (
            "p99 ms (open)",
            "lower",
            |r| r.p99_ms_open,
            "≤ 1.0 vs HAProxy",
        ),
        ("p99.9 ms (open)", "lower", |r| r.p999_ms_open, ""),
        (
            "req per proxy CPU-s (open)",
            "higher",
            |r| r.req_per_cpu_s_open,
            "",
        ),
    ];
    for (name, better, pick, goal) in metrics {
        let vs = |of: Option<&Row>, other: Option<&Row>| {
            fmt_opt(ratio(of.and_then(pick), other.and_then(pick)), 3)
        };
        if old.is_some() {
            let _ = writeln!(
                md,
                "| {name} | {better} | {} | {} | {} | {} | {} | {goal} |",
                vs(b, h),
                vs(b, n),
                vs(b, old),
                vs(old, h),
                vs(old, n)
            );
        } else {
            let _ = writeln!(
                md,
                "| {name} | {better} | {} | {} | {goal} |",
                vs(b, h),
                vs(b, n)
            );
        }
    }
    if let (Some(b), Some(old)) = (b, old) {
        // Repeats are interleaved, so repeat i of both saw nearly the same machine: the spread
        // of these paired ratios is the noise a difference in the medians has to exceed.
        let paired: Vec<String> = b
            .samples_closed
            .iter()
            .zip(&old.samples_closed)
            .map(|(new, old)| fmt_opt(ratio(per_cpu_s(new), per_cpu_s(old)), 3))
            .collect();
        let _ = writeln!(
            md,
            "\nbalancer ÷ balancer-baseline in req per proxy CPU-s (closed), repeat by repeat: {}",
            if paired.is_empty() {
                "–".to_owned()
            } else {
                paired.join(", ")
            }
        );
    }

    let _ = writeln!(md, "\n## The team's goals\n");
    let goals: [(&str, Option<&Row>, Pick, f64, bool); 3] = [
        (
            "requests per proxy CPU-second ≥ 1.10 × HAProxy",
            h,
            |r| r.req_per_cpu_s,
            1.10,
            true,
        ),
        (
            "requests per proxy CPU-second ≥ 1.0 × nginx",
            n,
            |r| r.req_per_cpu_s,
            1.0,
            true,
        ),
        (
            "open-loop p99 ≤ HAProxy's",
            h,
            |r| r.p99_ms_open,
            1.0,
            false,
        ),
    ];
    for (name, other, pick, bound, higher_is_better) in goals {
        let verdict = match ratio(b.and_then(pick), other.and_then(pick)) {
            Some(q) if (higher_is_better && q >= bound) || (!higher_is_better && q <= bound) => {
                format!("met ({q:.3})")
            }
            Some(q) => format!("NOT met ({q:.3})"),
            None => "not measured".into(),
        };
        let _ = writeln!(md, "- {name}: {verdict}");
    }

    let _ = writeln!(
        md,
        "\n## Memory (RSS of the proxy's processes, KiB)\n\n\
         | proxy | idle | with idle conns | conns accepted / opened | KiB per idle conn | in flight | KiB per in-flight request |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.proxy != "direct") {
        let held = match (r.idle_conns_accepted, r.idle_conns) {
            (Some(h), Some(n)) => format!("{h} / {n}"),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {held} | {} | {} | {} |",
            r.proxy,
            r.rss_idle_kib.map_or("–".into(), |v| v.to_string()),
            r.rss_10k_conns_kib.map_or("–".into(), |v| v.to_string()),
            fmt_opt(r.rss_per_idle_conn_kib, 2),
            r.in_flight.map_or("–".into(), |v| v.to_string()),
            fmt_opt(r.rss_per_inflight_kib, 2),
        );
    }

    let _ = writeln!(md, "\n## Status\n");
    for r in rows {
        let _ = writeln!(md, "- {}: {}", r.proxy, r.status);
    }

    let _ = writeln!(
        md,
        "\n## Every run\n\n\
         | proxy | repeat | req/s | p99 ms | CPU s | other load on proxy CPU % | load CPU % \
         | open p99 ms | open: other load on proxy CPU % |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let count = r.samples_closed.len().max(r.samples_open.len());
        for i in 0..count {
            let c = r.samples_closed.get(i);
            let o = r.samples_open.get(i);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.proxy,
                i + 1,
                fmt_opt(c.map(|s| s.rps), 0),
                fmt_opt(c.map(|s| s.p99_ms), 3),
                fmt_opt(c.and_then(|s| s.cpu_s), 2),
                fmt_opt(c.and_then(|s| s.other_on_proxy_cpu_pct), 0),
                fmt_opt(c.and_then(|s| s.load_cpu_busy_pct), 0),
                fmt_opt(o.map(|s| s.p99_ms), 3),
                fmt_opt(o.and_then(|s| s.other_on_proxy_cpu_pct), 0),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nCharts: throughput.svg, latency.svg, memory.svg beside this file. Configs in configs/, \
         raw wrk/oha outputs in raw/, proxy logs in logs/."
    );
    md
}

/// Writes results.json.
pub fn write_json(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

type Metric = (&'static str, &'static str, fn(&Row) -> Option<f64>);

/// One panel: one bar per proxy for one metric.
fn bar_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[Row],
    (title, unit, pick): Metric,
) -> anyhow::Result<()> {
    let values: Vec<(Target, Option<f64>)> = rows
        .iter()
        .filter_map(|r| {
            let target = <Target as clap::ValueEnum>::value_variants()
                .iter()
                .copied()
                .find(|t| t.name() == r.proxy)?;
            Some((target, pick(r)))
        })
        .collect();
    let top = values
        .iter()
        .filter_map(|(_, v)| *v)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let names: Vec<&'static str> = values.iter().map(|(t, _)| t.name()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        // Integer ranges include their end in plotters: 0..n-1 gives exactly n segments.
        .build_cartesian_2d(
            (0..values.len().saturating_sub(1)).into_segmented(),
            0.0..top,
        )
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .y_label_formatter(&|v| {
            if top >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i).copied().unwrap_or("").to_owned()
            }
            SegmentValue::Last => String::new(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .draw_series(values.iter().enumerate().filter_map(|(i, (t, v))| {
            let v = (*v)?;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                t.colour().filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            Some(bar)
        }))
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .draw_series(values.iter().enumerate().filter_map(|(i, (_, v))| {
            let v = (*v)?;
            let label = if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            };
            Some(Text::new(
                label,
                (SegmentValue::CenterOf(i), v + top * 0.03),
                TextStyle::from(("sans-serif", 13).into_font()).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Bottom,
                    ),
                ),
            ))
        }))
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}

fn chart_file(path: &Path, title: &str, rows: &[Row], metrics: &[Metric]) -> anyhow::Result<()> {
    let width = 420 * metrics.len() as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let root = root
        .titled(title, ("sans-serif", 24))
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    for (panel, metric) in root.split_evenly((1, metrics.len())).iter().zip(metrics) {
        bar_panel(panel, rows, *metric)?;
    }
    root.present()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Writes throughput.svg, latency.svg and memory.svg into `dir`.
pub fn write_charts(dir: &Path, rows: &[Row]) -> anyhow::Result<()> {
    chart_file(
        &dir.join("throughput.svg"),
        "Throughput (closed loop, medians)",
        rows,
        &[
            ("requests/s", "req/s", |r| r.rps),
            ("requests per proxy CPU-second", "req / CPU-s", |r| {
                r.req_per_cpu_s
            }),
        ],
    )?;
    chart_file(
        &dir.join("latency.svg"),
        "Latency (medians of repeats; lower is better)",
        rows,
        &[
            ("closed loop p50", "ms", |r| r.p50_ms),
            ("closed loop p99", "ms", |r| r.p99_ms),
            ("open loop p99", "ms", |r| r.p99_ms_open),
            ("open loop p99.9", "ms", |r| r.p999_ms_open),
        ],
    )?;
    let proxies: Vec<Row> = rows
        .iter()
        .filter(|r| r.proxy != "direct")
        .cloned()
        .collect();
    chart_file(
        &dir.join("memory.svg"),
        "Memory (RSS, KiB)",
        &proxies,
        &[
            ("idle", "KiB", |r| r.rss_idle_kib.map(|v| v as f64)),
            ("with idle connections", "KiB", |r| {
                r.rss_10k_conns_kib.map(|v| v as f64)
            }),
            ("per in-flight request", "KiB", |r| r.rss_per_inflight_kib),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    fn measured(target: Target, requests: &[u64]) -> Row {
        let mut r = TargetResults::new(target);
        for &n in requests {
            r.closed.push(ClosedSample {
                rps: n as f64,
                p50_ms: 1.0,
                p99_ms: 2.0,
                requests: n,
                errors: 0,
                cpu_s: Some(1.0),
                other_on_proxy_cpu_pct: None,
                load_cpu_busy_pct: None,
            });
        }
        Row::from_results(&r)
    }

    fn meta() -> Meta {
        Meta {
            command: String::new(),
            started_utc: String::new(),
            finished_utc: String::new(),
            uptime_before: String::new(),
            uptime_after: String::new(),
            git_rev: String::new(),
            versions: Vec::new(),
            settings: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn line<'a>(md: &'a str, start: &str) -> &'a str {
        md.lines().find(|l| l.starts_with(start)).unwrap()
    }

    #[test]
    fn baseline_ratios_sit_beside_the_others() {
        let rows = [
            measured(Target::Balancer, &[110, 120]),
            measured(Target::Baseline, &[100, 100]),
            measured(Target::Haproxy, &[100, 100]),
            measured(Target::Nginx, &[50, 50]),
        ];
        let md = markdown(&meta(), &rows);
        assert!(md.contains("| ÷ balancer-baseline | baseline ÷ HAProxy | baseline ÷ nginx |"));
        assert_eq!(
            line(&md, "| req per proxy CPU-s (closed) |"),
            "| req per proxy CPU-s (closed) | higher | 1.150 | 2.300 | 1.150 | 1.000 | 2.000 \
             | ≥ 1.10 vs HAProxy, ≥ 1.0 vs nginx |"
        );
        assert!(md.contains("repeat by repeat: 1.100, 1.200\n"));
        assert!(md.contains("| balancer-baseline | 2 | 100 |"));
    }

    #[test]
    fn without_a_baseline_the_ratios_table_is_unchanged() {
        let rows = [
            measured(Target::Balancer, &[110]),
            measured(Target::Haproxy, &[100]),
            measured(Target::Nginx, &[100]),
        ];
        let md = markdown(&meta(), &rows);
        assert!(md.contains("| metric | better when | ÷ HAProxy | ÷ nginx | goal |\n"));
        assert!(!md.contains("baseline"));
    }
}
