//! Child processes of the harness: started in their own process group, always stopped (drop,
//! error or Ctrl-C), and measured from /proc (CPU ticks and RSS summed over the group).

use std::collections::BTreeSet;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Process groups still alive, so that a signal handler can stop them all before exiting.
static LIVE_GROUPS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Set (under the `LIVE_GROUPS` lock) once stopping everything has begun: no new child may start,
/// or the main thread could spawn one between the handler's sweep and its exit.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// File that records every child group started (pgid and start time), so that a later run can
/// stop what a run killed with SIGKILL left behind.
static CHILD_RECORD: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Start time of a process (clock ticks since boot), which tells a live pid from a reused one.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn record_child(pgid: u32) {
    let Ok(path) = CHILD_RECORD.lock() else {
        return;
    };
    let (Some(path), Some(start)) = (path.as_ref(), start_time(pgid)) else {
        return;
    };
    use std::io::Write;
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{pgid} {start}");
    }
}

/// Stops the groups that a previous run recorded in `path` and left alive (that run was killed
/// with SIGKILL), then records this run's children there. Returns how many were stopped.
pub fn adopt_child_record(path: &Path) -> usize {
    let mut stopped = 0;
    if let Ok(text) = fs::read_to_string(path) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(Ok(pgid)), Some(Ok(start))) = (
                words.next().map(str::parse::<u32>),
                words.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            // Only the very process that was started (same start time), never a reused pid.
            if start_time(pgid) == Some(start) {
                signal_group(pgid, "TERM");
                thread::sleep(Duration::from_millis(300));
                signal_group(pgid, "KILL");
                stopped += 1;
            }
        }
    }
    let _ = fs::write(path, "");
    if let Ok(mut record) = CHILD_RECORD.lock() {
        *record = Some(path.to_owned());
    }
    stopped
}

/// Whether an interrupt has begun stopping everything (the run's results are then incomplete).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

fn lock_groups_for_spawn(name: &str) -> anyhow::Result<MutexGuard<'static, BTreeSet<u32>>> {
    let groups = LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    if STOPPING.load(Ordering::SeqCst) {
        bail!("not starting {name}: the harness is stopping");
    }
    Ok(groups)
}

/// How long a child gets to exit after SIGTERM before SIGKILL: the balancer drains in-flight
/// requests (its config sets a 1 s grace), nginx and HAProxy exit at once.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How long a proxy or backend gets to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn signal_group(pgid: u32, signal: &str) {
    // `kill` the command rather than libc::kill: the workspace denies unsafe code, and a fork per
    // stop is nothing next to a 10 s measurement.
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops every live group (SIGTERM, short wait, SIGKILL). Used by the signal handler.
pub fn stop_all_groups() {
    let groups: Vec<u32> = {
        let mut set = LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        STOPPING.store(true, Ordering::SeqCst);
        std::mem::take(&mut *set).into_iter().collect()
    };
    for &pgid in &groups {
        signal_group(pgid, "TERM");
    }
    if !groups.is_empty() {
        thread::sleep(Duration::from_millis(500));
    }
    for &pgid in &groups {
        signal_group(pgid, "KILL");
    }
}

/// Installs a handler for SIGINT, SIGTERM and SIGHUP that stops all children and exits with 130.
pub fn install_signal_handler() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal-handling runtime")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    eprintln!("compare-proxies: warning: cannot install signal handlers");
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
                eprintln!("\ncompare-proxies: interrupted: stopping all child processes");
                stop_all_groups();
                std::process::exit(130);
            });
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// A child process in its own process group, stopped when dropped.
pub struct Child {
    name: String,
    child: std::process::Child,
    pgid: u32,
    stderr_path: PathBuf,
    stopped: bool,
}

impl Child {
    /// Starts `command` in a new process group, stdout and stderr to `logs/NAME.{out,err}`.
    pub fn spawn(name: &str, command: &mut Command, logs: &Path) -> anyhow::Result<Child> {
        fs::create_dir_all(logs).with_context(|| format!("cannot create {}", logs.display()))?;
        let stdout_path = logs.join(format!("{name}.out"));
        let stderr_path = logs.join(format!("{name}.err"));
        let stdout = fs::File::create(&stdout_path)
            .with_context(|| format!("cannot create {}", stdout_path.display()))?;
        let stderr = fs::File::create(&stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;
        // Hold the lock across spawn so the signal handler never misses a group that exists.
        let mut groups = lock_groups_for_spawn(name)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Own group: Ctrl-C reaches only the harness, which then stops the whole group
            // (nginx's workers included) instead of leaving orphans.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        let pgid = child.id();
        groups.insert(pgid);
        record_child(pgid);
        Ok(Child {
            name: name.to_owned(),
            child,
            pgid,
            stderr_path,
            stopped: false,
        })
    }

    /// The leader's pid (also the process group id).
    pub fn pid(&self) -> u32 {
        self.pgid
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` once the leader has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(8);
        lines[start..].join("\n")
    }

    /// Waits up to `timeout` for the leader to exit on its own; `None` if it did not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `address` accepts TCP connections; fails early if the child exits.
    pub fn wait_listening(&mut self, address: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before listening on {address}; its stderr ends with:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {address} within {READY_TIMEOUT:?}; its stderr ends with:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the group, SIGKILL after a grace period; idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        signal_group(self.pgid, "TERM");
        if self.wait_timeout(STOP_GRACE).is_none() {
            signal_group(self.pgid, "KILL");
            let _ = self.child.wait();
        }
        // Stragglers (e.g. an nginx worker still closing) go too.
        signal_group(self.pgid, "KILL");
        if let Ok(mut groups) = LIVE_GROUPS.lock() {
            groups.remove(&self.pgid);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a bounded command (wrk, oha) in its own group; kills it after `timeout`. Its stdout goes
/// to `out_path`, which is returned read back.
pub fn run_bounded(
    name: &str,
    command: &mut Command,
    logs: &Path,
    out_path: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    let stdout = fs::File::create(out_path)
        .with_context(|| format!("cannot create {}", out_path.display()))?;
    let mut groups = lock_groups_for_spawn(name)?;
    let stderr_path = logs.join(format!("{name}.err"));
    let stderr = fs::File::create(&stderr_path)
        .with_context(|| format!("cannot create {}", stderr_path.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
    let pgid = child.id();
    groups.insert(pgid);
    record_child(pgid);
    drop(groups);
    let mut child = Child {
        name: name.to_owned(),
        child,
        pgid,
        stderr_path,
        stopped: false,
    };
    let status = child.wait_timeout(timeout);
    let stderr_tail = child.stderr_tail();
    child.stop();
    let Some(status) = status else {
        bail!("{name} did not finish within {timeout:?} and was killed");
    };
    if !status.success() {
        bail!("{name} failed ({status}): {stderr_tail}");
    }
    fs::read_to_string(out_path).with_context(|| format!("cannot read {}", out_path.display()))
}

/// Pids of all processes whose process group is `pgid`.
fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.get(2) == Some(&pgid.to_string())))
        .collect()
}

/// Fields of /proc/PID/stat after the command name: [0] = state, [2] = pgrp, [11] = utime, [12] = stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second of /proc/PID/stat times.
pub fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU ticks of every process in the group.
pub fn group_cpu_ticks(pgid: u32) -> u64 {
    group_pids(pgid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            utime + stime
        })
        .sum()
}

/// VmRSS of every process in the group, summed, in KiB (nginx: master + worker).
pub fn group_rss_kib(pgid: u32) -> u64 {
    group_pids(pgid)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// CPU numbers of a `taskset -c` list such as "0", "1,3" or "0-1".
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

/// (busy, total) clock ticks of these CPUs since boot, from /proc/stat; busy excludes idle and
/// iowait. Same unit as the process times of [`group_cpu_ticks`].
pub fn cpus_ticks(cpus: &[usize]) -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let (mut busy, mut total) = (0, 0);
    for &cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let all: u64 = values.iter().take(8).sum();
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        busy += all - idle;
        total += all;
    }
    Some((busy, total))
}

/// Open file descriptors of the group (a sanity check that connections are really held).
pub fn group_fds(pgid: u32) -> usize {
    group_pids(pgid)
        .into_iter()
        .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(|d| d.count())
        .sum()
}

/// Open descriptors once the proxy has accepted what it will: sampled every 250 ms until they
/// reach `target`, or stay the same for 2 s, or `max_wait` passes.
pub fn settled_fds(pgid: u32, target: usize, max_wait: Duration) -> usize {
    let deadline = Instant::now() + max_wait;
    let mut last = group_fds(pgid);
    let mut stable = 0;
    while last < target && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
        let now = group_fds(pgid);
        if now == last {
            stable += 1;
            if stable >= 8 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    last
}

/// The (soft, hard) limits on open files of this process (inherited by children).
pub fn nofile_limits() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line.split_whitespace().skip(3);
    let parse = |w: Option<&str>| match w? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((parse(words.next())?, parse(words.next())?))
}

/// RSS once it stops moving: sampled every 250 ms until two samples in a row agree within 1 %,
/// at most `max_wait`.
pub fn settled_rss_kib(pgid: u32, max_wait: Duration) -> u64 {
    let deadline = Instant::now() + max_wait;
    let mut last = group_rss_kib(pgid);
    let mut stable = 0;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
        let now = group_rss_kib(pgid);
        if now.abs_diff(last) * 100 <= last.max(1) {
            stable += 1;
            if stable >= 2 {
                return now;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    last
}

/// Fails with a clear message if any of `ports` on 127.0.0.1 is taken.
pub fn check_ports_free(ports: &[u16]) -> anyhow::Result<()> {
    for &port in ports {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port 127.0.0.1:{port} is in use (a previous run still alive, or another program); \
                 choose another range with --base-port"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list("1,3"), vec![1, 3]);
        assert_eq!(parse_cpu_list("0-2"), vec![0, 1, 2]);
    }

    #[test]
    fn cpu_ticks_of_cpu0_grow() {
        let (busy, total) = cpus_ticks(&[0]).expect("/proc/stat has cpu0");
        assert!(busy <= total);
    }
}
