//! The policy comparison: a grid of runs over policies × loads, in parallel, with a report and plots.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use balancer_core::PolicyKind;
use plotters::prelude::*;

use crate::engine::{SimConfig, SimError, run};
use crate::report::Summary;

/// Most runs in one grid: each keeps a ~600 KB histogram until summarised.
pub const MAX_GRID_RUNS: usize = 10_000;

/// Policies × loads over one base configuration.
#[derive(Clone, Debug)]
pub struct Grid {
    /// Policies, in report order.
    pub policies: Vec<PolicyKind>,
    /// Loads, in report order.
    pub loads: Vec<f64>,
    /// Everything else (its policy and load are overridden per cell).
    pub base: SimConfig,
}

impl Grid {
    /// The cells' configs, policy-major: index = policy_index × loads + load_index.
    pub fn configs(&self) -> Vec<SimConfig> {
        let mut configs = Vec::with_capacity(self.policies.len() * self.loads.len());
        for &policy in &self.policies {
            for &load in &self.loads {
                let mut config = self.base.clone();
                config.policy = policy;
                config.load = load;
                configs.push(config);
            }
        }
        configs
    }
}

/// Runs every cell on up to `threads` threads; `on_done` is called after each cell.
///
/// Cells are independent and each result lands in its own slot, so the output does not
/// depend on the thread count or on scheduling. Wall time is left out (zero) of the summaries.
pub fn run_grid(
    grid: &Grid,
    threads: usize,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Summary>, SimError> {
    run_all(&grid.configs(), threads, on_done)
}

/// Runs every config on up to `threads` threads, results in config order; `on_done` is
/// called after each. Each result lands in its own slot: the output does not depend on the
/// thread count or on scheduling. Wall time is left out (zero) of the summaries.
pub fn run_all(
    configs: &[SimConfig],
    threads: usize,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Summary>, SimError> {
    if configs.is_empty() || configs.len() > MAX_GRID_RUNS {
        return Err(SimError::Config(format!(
            "the grid must have 1..={MAX_GRID_RUNS} cells, got {}",
            configs.len()
        )));
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Summary, SimError>>>> =
        Mutex::new((0..configs.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, configs.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(config) = configs.get(i) else { break };
                    let result = run(config).map(|stats| Summary::new(config, &stats, 0.0));
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(result);
                    }
                    on_done();
                }
            });
        }
    });
    let slots = results
        .into_inner()
        .map_err(|_| SimError::Config("a worker thread panicked".into()))?;
    slots
        .into_iter()
        .map(|slot| slot.unwrap_or_else(|| Err(SimError::Config("a cell did not run".into()))))
        .collect()
}

/// The grid's results as Markdown: one table per load, then p99 and mean by policy × load.
pub fn markdown(grid: &Grid, results: &[Summary], command: &str) -> String {
    let mut out = String::new();
    let base = &grid.base;
    let first = &results[0];
    let _ = writeln!(out, "# Policy comparison\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Fleet: {} backends, service {}, arrivals {}, {} requests per run, seed {}. \
         Latencies are sojourn times (arrival → done) of successful requests, in ms of virtual time.\n",
        base.fleet.len(),
        first.service,
        first.arrivals,
        base.requests,
        base.seed
    );
    let cell = |p: usize, l: usize| &results[p * grid.loads.len() + l];
    for (l, load) in grid.loads.iter().enumerate() {
        let _ = writeln!(out, "## ρ = {load}\n");
        let _ = writeln!(out, "{}", crate::report::MARKDOWN_HEADER);
        for (p, policy) in grid.policies.iter().enumerate() {
            let _ = writeln!(out, "{}", cell(p, l).markdown_row(&policy.to_string()));
        }
        let _ = writeln!(out);
    }
    for (title, metric) in [
        (
            "p99 sojourn (ms)",
            (|s: &Summary| s.latency_ms.p99) as fn(&Summary) -> f64,
        ),
        ("mean sojourn (ms)", |s: &Summary| s.latency_ms.mean),
    ] {
        let _ = writeln!(out, "## {title} by policy and load\n");
        let mut header = String::from("| policy |");
        let mut rule = String::from("|---|");
        for load in &grid.loads {
            let _ = write!(header, " ρ={load} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for (p, policy) in grid.policies.iter().enumerate() {
            let _ = write!(out, "| {policy} |");
            for l in 0..grid.loads.len() {
                let _ = write!(out, " {:.3} |", metric(cell(p, l)));
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Plots: [p99_vs_load.svg](p99_vs_load.svg), [mean_vs_load.svg](mean_vs_load.svg)."
    );
    out
}

/// Writes `report.md`, `p99_vs_load.svg` and `mean_vs_load.svg` into `dir`.
pub fn write_report(
    dir: &Path,
    grid: &Grid,
    results: &[Summary],
    command: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let report = dir.join("report.md");
    std::fs::write(&report, markdown(grid, results, command))
        .with_context(|| format!("writing {}", report.display()))?;
    plot(
        &dir.join("p99_vs_load.svg"),
        grid,
        results,
        "p99 sojourn time vs load",
        "p99 sojourn time (ms, log scale)",
        |s| s.latency_ms.p99,
    )?;
    plot(
        &dir.join("mean_vs_load.svg"),
        grid,
        results,
        "mean sojourn time vs load",
        "mean sojourn time (ms, log scale)",
        |s| s.latency_ms.mean,
    )?;
    Ok(())
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// One line per policy of `metric` against load, log-scaled y.
fn plot(
    path: &Path,
    grid: &Grid,
    results: &[Summary],
    title: &str,
    y_label: &str,
    metric: fn(&Summary) -> f64,
) -> anyhow::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = grid
        .policies
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            let points = grid
                .loads
                .iter()
                .enumerate()
                .map(|(l, &load)| (load, metric(&results[p * grid.loads.len() + l])))
                .collect();
            (policy.name().to_owned(), points)
        })
        .collect();
    plot_lines(
        path,
        title,
        "offered load ρ (arrival rate ÷ fleet capacity)",
        y_label,
        &series,
        None,
    )
}

/// Labelled ticks for a log axis from `lo` to `hi`: 1, 2 and 5 of every decade, so that a
/// range inside one decade (most latencies sit between 1 and 10 ms) still has labels.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return ticks;
    }
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for step in [1.0, 2.0, 5.0] {
            let tick = decade * step;
            if tick >= lo && tick <= hi {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// One line (with points) per named series, log-scaled y; `reference` adds a dashed
/// horizontal line with its label (e.g. a recorded figure).
pub fn plot_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    reference: Option<(&str, f64)>,
) -> anyhow::Result<()> {
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {}: {e}", path.display());
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .chain(reference.map(|r| r.1))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if values.is_empty() {
        (0.1, 1.0)
    } else {
        (lo / 1.5, hi * 1.5)
    };
    let xs = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0));
    let x_lo = xs.clone().fold(f64::INFINITY, f64::min);
    let x_hi = xs.fold(f64::NEG_INFINITY, f64::max);
    let (x_lo, x_hi) = if x_lo.is_finite() {
        (x_lo, x_hi)
    } else {
        (0.0, 1.0)
    };
    let pad = ((x_hi - x_lo) * 0.05).max(0.01 * x_hi.abs().max(1.0));
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (x_lo - pad)..(x_hi + pad),
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&|v| {
            // Log-scale labels span decades: keep about three significant digits.
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                // 0.5, 0.2, 0.05, ...: as many decimals as the tick needs.
                let decimals = (-v.log10()).ceil().max(1.0) as usize;
                format!("{v:.decimals$}")
            }
        })
        .max_light_lines(1)
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()
        .map_err(|e| fail(&e))?;
    // Policies often coincide (at low load every one is near the service time): earlier
    // series are drawn wider, and each has its own marker, so a line on top of another leaves
    // the one below visible at its edges.
    let count = series.len();
    for (p, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[p % COLOURS.len()];
        let width = 2 + 2 * u32::try_from(count - 1 - p).unwrap_or(0).min(4);
        let points: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, y.max(lo))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(width)))
            .map_err(|e| fail(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(width))
            });
        let marker_size = 4 + 2 * i32::try_from(count - 1 - p).unwrap_or(0).min(3);
        match p % 3 {
            0 => chart.draw_series(
                points
                    .into_iter()
                    .map(|pt| Circle::new(pt, marker_size, colour.filled())),
            ),
            1 => chart.draw_series(
                points
                    .into_iter()
                    .map(|pt| TriangleMarker::new(pt, marker_size + 2, colour.filled())),
            ),
            _ => chart.draw_series(
                points
                    .into_iter()
                    .map(|pt| Cross::new(pt, marker_size, colour.stroke_width(2))),
            ),
        }
        .map_err(|e| fail(&e))?;
    }
    if let Some((label, value)) = reference.filter(|r| r.1 > 0.0) {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_lo - pad, value), (x_hi + pad, value)],
                8,
                6,
                BLACK.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        // Latency grows with load (upper left is empty) and falls with speed (upper right is).
        .position(if reference.is_some() {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_every_decade_at_1_2_and_5() {
        assert_eq!(log_ticks(1.5, 9.0), [2.0, 5.0]);
        let ticks = log_ticks(0.3, 30.0);
        let expected = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0];
        assert_eq!(ticks.len(), expected.len(), "{ticks:?}");
        for (tick, want) in ticks.iter().zip(expected) {
            assert!((tick - want).abs() < 1e-9, "{ticks:?}");
        }
        assert!(log_ticks(0.0, 1.0).is_empty());
    }
}
