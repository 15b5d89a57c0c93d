//! `balancer`: the command line of the live load balancer (demo mode, run, check, demo-backend).
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use balancer_tokio::runtime::service_manager;
use balancer_tokio::shutdown::os_signal;
use balancer_tokio::{Config, Demo, DemoBackend, DemoBackendConfig, DemoPorts};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

// jemalloc: side by side with glibc malloc and mimalloc in the load harness it served as many
// requests per CPU-second as mimalloc (+5% over glibc) with the least RSS per connection.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An HTTP load balancer. With no arguments: demo mode (4 backends on 127.0.0.1:9001-9004 and
/// the balancer on 127.0.0.1:8080).
#[derive(Parser, Debug)]
#[command(name = "balancer", version)]
struct Cli {
    /// Serve from this TOML config (same as `balancer run FILE`).
    #[arg(long, value_name = "FILE", global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve from a TOML config.
    Run {
        /// The config file.
        file: PathBuf,
    },
    /// Validate a config: exit 0 with a summary, or non-zero naming the file, line and column.
    /// With --simulate: also predict, per changed pool, latency and rejections over a
    /// recorded trace (runs `balancer-sim replay`).
    Check {
        /// The config file.
        file: PathBuf,
        /// A traffic trace recorded by `[trace]`: replay it through each pool's definition.
        #[arg(long, value_name = "TRACE")]
        simulate: Option<PathBuf>,
        /// The config in force: only pools that differ are simulated, old and new side by side.
        #[arg(long, value_name = "OLD_FILE", requires = "simulate")]
        current: Option<PathBuf>,
        /// Seed of the simulator's draws.
        #[arg(long, default_value_t = 1, requires = "simulate")]
        seed: u64,
        /// Requests each simulated backend serves at once (give the backends' parallelism).
        #[arg(long, default_value_t = 1, requires = "simulate")]
        concurrency: u32,
    },
    /// Explain where a request went and why: asks a running balancer's admin API.
    Explain {
        /// The request id (the `x-request-id` response header).
        id: String,
        /// The balancer's admin address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// The admin API's bearer token, when the balancer has `admin_token_file`.
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Demo mode with explicit ports (the default with no arguments).
    Demo {
        /// The balancer's port.
        #[arg(long, default_value_t = balancer_tokio::demo::DEMO_BALANCER_PORT)]
        port: u16,
        /// The first backend's port; the other three follow it.
        #[arg(long, default_value_t = balancer_tokio::demo::DEMO_FIRST_BACKEND_PORT)]
        backend_port: u16,
        /// The admin listener's port (metrics, backends, drain; loopback only).
        #[arg(long, default_value_t = balancer_tokio::demo::DEMO_ADMIN_PORT)]
        admin_port: u16,
    },
    /// Run one demo backend alone (for docker compose and load tests).
    DemoBackend {
        /// Address to listen on, e.g. 127.0.0.1:9001.
        #[arg(long)]
        listen: SocketAddr,
        /// The number in its `Hello from #N` answer.
        #[arg(long)]
        id: u32,
        /// Delay before every response, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Random extra delay in 0..=jitter, in milliseconds.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match (cli.config, cli.command) {
        (Some(_), Some(_)) => Err(anyhow::anyhow!(
            "--config and a subcommand cannot be combined; use `balancer --config FILE` or `balancer run FILE`"
        )),
        (Some(file), None) | (None, Some(Command::Run { file })) => {
            runtime().and_then(|rt| rt.block_on(run(&file)))
        }
        (
            None,
            Some(Command::Check {
                file,
                simulate,
                current,
                seed,
                concurrency,
            }),
        ) => check(&file).and_then(|config| match simulate {
            None => Ok(()),
            Some(trace) => {
                let options = balancer_tokio::ops::SimulateOptions {
                    trace,
                    current,
                    seed,
                    concurrency,
                };
                let report = balancer_tokio::ops::check_simulate(&file, &config, &options)?;
                print!("{report}");
                Ok(())
            }
        }),
        (
            None,
            Some(Command::Explain {
                id,
                admin,
                admin_token_file,
            }),
        ) => admin_token_file
            .map(|file| {
                std::fs::read_to_string(&file)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| format!("cannot read --admin-token-file {}", file.display()))
            })
            .transpose()
            .and_then(|token| balancer_tokio::ops::explain(&id, &admin, token.as_deref()))
            .map(|text| print!("{text}")),
        (None, None) => runtime().and_then(|rt| rt.block_on(demo(DemoPorts::default()))),
        (
            None,
            Some(Command::Demo {
                port,
                backend_port,
                admin_port,
            }),
        ) => runtime().and_then(|rt| {
            rt.block_on(demo(DemoPorts {
                balancer: port,
                first_backend: backend_port,
                admin: admin_port,
            }))
        }),
        (
            None,
            Some(Command::DemoBackend {
                listen,
                id,
                latency_ms,
                jitter_ms,
            }),
        ) => runtime().and_then(|rt| {
            rt.block_on(demo_backend(DemoBackendConfig {
                listen,
                id,
                latency_ms,
                jitter_ms,
            }))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("balancer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Worker 0's event loop: one thread. The traffic workers beside it (`workers`, one per CPU by
/// default) are started by the server, each with a current-thread runtime of its own: no task
/// ever moves between threads, which measured 18% fewer CPU-seconds per request than tokio's
/// work-stealing runtime.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn check(file: &Path) -> anyhow::Result<Config> {
    let config = Config::load(file)?;
    println!("ok: {}: {}", file.display(), config.summary());
    Ok(config)
}

async fn run(file: &Path) -> anyhow::Result<()> {
    // Installed before serving: SIGHUP's default action would end the process.
    let mut hangups = Requests::hangups().context("cannot listen for SIGHUP")?;
    let mut reopens = Requests::reopens().context("cannot listen for SIGUSR1")?;
    raise_open_files_limit();
    let balancer = balancer_tokio::start_file(file).await?;
    // The banner goes to stderr in both modes: stdout carries the access log.
    for line in balancer.banner() {
        eprintln!("{line}");
    }
    let summary = balancer.proxy().config().summary();
    tracing::info!(config = %file.display(), %summary, "serving");
    service_manager::ready(format!("serving: {summary}")).await;
    let signal = loop {
        tokio::select! {
            signal = os_signal() => break signal.context("cannot listen for signals")?,
            () = hangups.next() => {
                service_manager::reloading().await;
                // Refusals are logged by reload itself; the old config keeps serving.
                let status = match balancer.reload() {
                    Ok(summary) => format!("serving (reloaded): {summary}"),
                    Err(err) => format!("serving the previous config; reload refused: {err}"),
                };
                service_manager::ready(status).await;
            }
            () = reopens.next() => balancer.reopen_logs(),
        }
    };
    service_manager::stopping().await;
    tracing::info!(signal, "shutting down: draining in-flight requests");
    let report = balancer.shutdown().await;
    tracing::info!(?report, "stopped");
    Ok(())
}

/// Raises the open-files soft limit to the hard one (a default soft limit of 1,024 would cap
/// the proxy far below `max_connections`). Start then fits the listeners' connection limits to
/// it (`client_connection_permits`).
fn raise_open_files_limit() {
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%err, "cannot read or raise the open-files limit");
    }
}

/// A signal that asks for something other than the end, as a stream: SIGHUP (reload) or
/// SIGUSR1 (reopen the access log's file, for logrotate); never fires where there is none.
struct Requests {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Requests {
    /// SIGHUP: reload the config.
    fn hangups() -> std::io::Result<Requests> {
        Ok(Requests {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// SIGUSR1: reopen the access log's file.
    fn reopens() -> std::io::Result<Requests> {
        Ok(Requests {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?,
        })
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await
    }
}

async fn demo(ports: DemoPorts) -> anyhow::Result<()> {
    raise_open_files_limit();
    let demo = Demo::start(ports).await?;
    for line in demo.banner() {
        eprintln!("{line}");
    }
    let signal = os_signal().await.context("cannot listen for signals")?;
    tracing::info!(signal, "shutting down the demo");
    let report = demo.stop().await;
    tracing::info!(?report, "stopped");
    Ok(())
}

async fn demo_backend(config: DemoBackendConfig) -> anyhow::Result<()> {
    let backend = DemoBackend::start(config).await?;
    println!(
        "demo backend #{} listening on http://{}/",
        config.id,
        backend.local_addr()
    );
    let signal = os_signal().await.context("cannot listen for signals")?;
    tracing::info!(signal, "stopping the demo backend");
    backend.stop().await;
    Ok(())
}
