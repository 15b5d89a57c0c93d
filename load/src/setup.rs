//! Finding or installing the tools (Debian packages, oha via cargo) and building the balancer.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::procs;

/// Where the workspace is and where cargo puts its builds.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// The workspace root (reports go to `ROOT/target/load-report`).
    pub root: PathBuf,
    /// cargo's target directory (honours CARGO_TARGET_DIR).
    pub target_dir: PathBuf,
}

/// Asks `cargo metadata` for the workspace root and target directory.
pub fn workspace() -> anyhow::Result<Workspace> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(manifest_dir)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `cargo metadata` (is cargo on PATH?)")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed ({})", output.status);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")?;
    let field = |name: &str| {
        meta.get(name)
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("`cargo metadata` has no {name}"))
    };
    Ok(Workspace {
        root: field("workspace_root")?,
        target_dir: field("target_directory")?,
    })
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds `balancer` in release and returns its path.
pub fn build_balancer(ws: &Workspace) -> anyhow::Result<PathBuf> {
    eprintln!("building the balancer: cargo build --release -p balancer-tokio");
    let status = Command::new(cargo())
        .args([
            "build",
            "--release",
            "-p",
            "balancer-tokio",
            "--bin",
            "balancer",
        ])
        .current_dir(&ws.root)
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("`cargo build --release -p balancer-tokio` failed ({status})");
    }
    let bin = ws.target_dir.join("release").join("balancer");
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// `name` on PATH, or in the sbin directories (haproxy and nginx live in /usr/sbin, which a
/// non-root PATH may lack), or in ~/.cargo/bin (oha).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run apt-get {}", args.join(" ")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
    bail!(
        "apt-get {} exited with {}: {}",
        args.join(" "),
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )
}

/// The Debian tools the harness needs: (binary, package).
pub const DEBIAN_TOOLS: [(&str, &str); 4] = [
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("taskset", "util-linux"),
];

/// Finds each Debian tool, installing the missing ones with apt-get (update first on failure).
/// Returns the tools found; a tool that stays missing is an error that names it.
pub fn ensure_debian_tools(allow_install: bool) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let missing: Vec<(&str, &str)> = DEBIAN_TOOLS
        .iter()
        .copied()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(b, _)| *b).collect();
        if !allow_install {
            bail!(
                "{} not found and --no-install was given; install with: apt-get install -y {}",
                names.join(", "),
                missing
                    .iter()
                    .map(|(_, p)| *p)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(missing.iter().map(|(_, p)| *p));
        eprintln!(
            "installing {}: apt-get {}",
            names.join(", "),
            args.join(" ")
        );
        if let Err(first) = apt_get(&args) {
            eprintln!("apt-get install failed ({first:#}); running apt-get update and retrying");
            apt_get(&["update"])
                .and_then(|()| apt_get(&args))
                .map_err(|err| {
                    anyhow!("{} not found and apt-get failed: {err:#}", names.join(", "))
                })?;
        }
    }
    DEBIAN_TOOLS
        .iter()
        .map(|(bin, package)| {
            find_tool(bin)
                .map(|path| ((*bin).to_owned(), path))
                .ok_or_else(|| anyhow!("{bin} still not found after installing package {package}"))
        })
        .collect()
}

/// oha on PATH, or installed with `cargo install oha --locked` (bounded by `timeout`). `Err`
/// says why open-loop runs are not possible.
pub fn ensure_oha(allow_install: bool, timeout: Duration, logs: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = find_tool("oha") {
        return Ok(path);
    }
    if !allow_install {
        bail!(
            "oha not found and --no-install was given (install with `cargo install oha --locked`)"
        );
    }
    eprintln!(
        "oha not found: running `cargo install oha --locked` (at most {} s; log in {})",
        timeout.as_secs(),
        logs.join("cargo-install-oha.err").display()
    );
    let out = logs.join("cargo-install-oha.out");
    procs::run_bounded(
        "cargo-install-oha",
        Command::new(cargo()).args(["install", "oha", "--locked"]),
        logs,
        &out,
        timeout,
    )
    .map_err(|err| anyhow!("oha not found and `cargo install oha --locked` failed: {err:#}"))?;
    find_tool("oha").ok_or_else(|| anyhow!("`cargo install oha` succeeded but oha is not found"))
}

/// First line of `program args` (stdout or stderr), for the report.
pub fn version_line(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_else(|| "?".into())
}
