//! Conformance: the simulator and the live proxy make the same calls into the core.
//!
//! Each scenario is written once, as data: backends and how they behave over time, the
//! requests, reloads, and the health and ejection changes to wait for. It runs (a) through
//! `balancer-sim` (faults, replayed arrivals, the pool's seed) and (b) through the proxy in
//! front of scripted backends on loopback, one request at a time. Both keep the core's journal
//! of calls and answers; the two journals must be equal, call for call. A difference means one
//! driver speaks the protocol differently from the other, so predictions made with the
//! simulator would not hold for the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use balancer_core::{
    AfterTry, Decision, FailureKind, HealthTransition, JournalEntry, NoRetryReason, OutlierConfig,
    PolicyKind, RetryConfig, StatusSet, TryEnd,
};
use balancer_sim::{
    BackendSpec, CoreOptions, Fault, FaultAction, HealthProbes, Replayed, ServiceDist, SimConfig,
};
use tests::{ConfigFile, Proxy, eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The pool of the proxy's config (and of its journal).
const POOL: &str = "default";
/// Far more entries than a scenario makes: a journal that dropped entries compares nothing.
const JOURNAL_SIZE: usize = 4096;
const MS: u64 = 1_000_000;
/// Service time of a simulated backend that answers; the live ones answer at once.
const FAST_NS: u64 = 100_000;
/// Service time of a simulated `Holding` backend: longer than the steps between the held
/// request and its release, which the live run orders by waiting instead.
const HOLD_NS: u64 = 1_000 * MS;

/// What a backend does with each request (and health probe) from a step on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Behaviour {
    /// 200 at once.
    Healthy,
    /// Nothing listens: connections are refused (the sim's `Crash`, tries fail with Connect).
    Refusing,
    /// 503 at once (the sim's `BlackHole`).
    Unavailable,
    /// Reads the request, never answers (the sim's `Stall`; the try times out).
    Stalling,
    /// Answers 200 only at the scenario's `Release` (the sim: a long service time).
    Holding,
}

impl Behaviour {
    fn from_u8(value: u8) -> Behaviour {
        [
            Behaviour::Healthy,
            Behaviour::Refusing,
            Behaviour::Unavailable,
            Behaviour::Stalling,
            Behaviour::Holding,
        ][value as usize]
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    /// The backend behaves so from now on.
    Set(usize, Behaviour),
    /// One GET; the next step waits for its answer (and its done).
    Get,
    /// One GET that a `Holding` backend keeps in flight until `Release`.
    GetHeld,
    /// The held request is answered (and its done reported).
    Release,
    /// The config is reloaded without this backend.
    ReloadWithout(usize),
    /// Until the health checks have taken the backend down (or up).
    AwaitHealth { backend: usize, up: bool },
    /// Until the (one) current ejection has ended.
    AwaitEjectionEnd,
}

#[derive(Clone, Copy, Debug)]
struct Retry {
    max_retries: u32,
    retry_on_status: &'static [u16],
    backoff_base_ms: u64,
    backoff_max_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Outlier {
    consecutive_failures: u32,
    base_ejection_ms: u64,
    max_ejection_ms: u64,
    max_ejected_percent: u8,
}

#[derive(Clone, Copy, Debug)]
struct Health {
    interval_ms: u64,
    rise: u32,
    fall: u32,
}

struct Scenario {
    name: &'static str,
    backends: usize,
    /// The pool's `seed`: both drivers seed the core's RNG (backoff jitter) with it.
    seed: u64,
    retry: Retry,
    outlier: Option<Outlier>,
    health: Option<Health>,
    response_header_timeout_ms: u64,
    steps: Vec<Step>,
    /// What the scenario is about, checked in the journal so that a scenario that stopped
    /// exercising it (a changed default, say) fails instead of comparing two empty runs.
    shows: (&'static str, fn(&[JournalEntry]) -> bool),
}

/// Backoffs of 1–2 ms keep a retried request far shorter than the gaps between the simulated
/// requests, so that they stay one at a time as on the live side.
const RETRY_503: Retry = Retry {
    max_retries: 2,
    retry_on_status: &[503],
    backoff_base_ms: 1,
    backoff_max_ms: 4,
};

// ---------------------------------------------------------------------------------------------
// The scenarios.

fn refused_then_recovered() -> Scenario {
    use Behaviour::*;
    use Step::*;
    let mut steps = vec![Get, Get, Get, Set(1, Refusing)];
    steps.extend([Get; 6]);
    steps.push(Set(1, Healthy));
    steps.extend([Get; 4]);
    Scenario {
        name: "refused",
        backends: 3,
        seed: 11,
        retry: Retry {
            retry_on_status: &[],
            ..RETRY_503
        },
        outlier: None,
        // Without active health checks the simulator's `Recover` stands for an operator who
        // marks the backend up (a `set_up` call the proxy has no counterpart for); with
        // them it leaves that to the probes. Probes a minute apart never run within the
        // scenario (the live checker's first round, at start, passes and changes nothing).
        health: Some(Health {
            interval_ms: 60_000,
            rise: 2,
            fall: 3,
        }),
        response_header_timeout_ms: 5_000,
        steps,
        shows: (
            "a refused try retried elsewhere, then the backend serving again",
            |j| {
                let tries = tries(j);
                tries.contains(&(1, TryEnd::Failed(FailureKind::Connect), true))
                    && tries.iter().rev().find(|t| t.0 == 1).map(|t| t.1) == Some(OK)
            },
        ),
    }
}

fn unavailable_with_retries() -> Scenario {
    use Behaviour::*;
    use Step::*;
    let mut steps = vec![Set(1, Unavailable)];
    steps.extend([Get; 4]);
    steps.push(Set(2, Unavailable));
    steps.extend([Get; 3]);
    // Every backend answers 503: the retries run out and the last 503 is the answer.
    steps.push(Set(0, Unavailable));
    steps.extend([Get; 2]);
    steps.extend([Set(0, Healthy), Set(1, Healthy), Set(2, Healthy)]);
    steps.extend([Get; 3]);
    Scenario {
        name: "unavailable",
        backends: 3,
        seed: 22,
        retry: RETRY_503,
        outlier: None,
        health: None,
        response_header_timeout_ms: 5_000,
        steps,
        shows: ("503s retried, and retries running out", |j| {
            let tries = tries(j);
            tries.contains(&(1, UNAVAILABLE, true))
                && j.iter().any(|e| {
                    matches!(e, JournalEntry::Done { report, answer: Ok(a), .. }
                        if report.end == UNAVAILABLE
                            && a.next == AfterTry::Finished { no_retry: Some(NoRetryReason::AttemptsExhausted) })
                })
        }),
    }
}

fn stalled_try_times_out() -> Scenario {
    use Behaviour::*;
    use Step::*;
    Scenario {
        name: "stalled",
        backends: 2,
        seed: 33,
        retry: RETRY_503,
        outlier: None,
        health: None,
        // Long enough that no answering backend misses it on a loaded machine, short enough
        // to keep the test quick: each stalled try costs this much.
        response_header_timeout_ms: 600,
        steps: vec![
            Get,
            Set(1, Stalling),
            Get,
            Get,
            Get,
            Set(1, Healthy),
            Get,
            Get,
        ],
        shows: ("a try timing out, retried elsewhere", |j| {
            let tries = tries(j);
            tries.contains(&(1, TryEnd::Failed(FailureKind::Timeout), true))
                && tries.iter().rev().find(|t| t.0 == 1).map(|t| t.1) == Some(OK)
        }),
    }
}

fn reload_removes_a_busy_backend() -> Scenario {
    use Behaviour::*;
    use Step::*;
    Scenario {
        name: "reload",
        backends: 3,
        seed: 44,
        retry: RETRY_503,
        outlier: None,
        health: None,
        response_header_timeout_ms: 30_000,
        steps: vec![
            Set(0, Holding),
            GetHeld,
            ReloadWithout(0),
            Get,
            Get,
            Get,
            Release,
            Get,
            Get,
        ],
        shows: (
            "the backend leaving with a request in flight, removed at its done",
            |j| {
                let leaving = j.iter().position(|e| {
                    matches!(e, JournalEntry::Reconcile { leaving, .. }
                    if leaving.iter().map(|b| b.index()).eq([0]))
                });
                let removed = j.iter().position(
                    |e| matches!(e, JournalEntry::Done { answer: Ok(a), .. } if a.removed),
                );
                matches!((leaving, removed), (Some(l), Some(r)) if l < r)
            },
        ),
    }
}

fn health_flapping() -> Scenario {
    use Behaviour::*;
    use Step::*;
    let mut steps = vec![Get, Get, Get];
    for _ in 0..2 {
        // No request between the change and its transition: the live probes take their own
        // time to notice, and a request in that window could go either way.
        steps.extend([
            Set(1, Unavailable),
            AwaitHealth {
                backend: 1,
                up: false,
            },
        ]);
        steps.extend([Get; 3]);
        steps.extend([
            Set(1, Healthy),
            AwaitHealth {
                backend: 1,
                up: true,
            },
        ]);
        steps.extend([Get; 3]);
    }
    Scenario {
        name: "health",
        backends: 3,
        seed: 55,
        retry: RETRY_503,
        outlier: None,
        health: Some(Health {
            interval_ms: 100,
            rise: 2,
            fall: 2,
        }),
        response_header_timeout_ms: 5_000,
        steps,
        shows: ("backend 1 going down and up twice", |j| {
            let transitions: Vec<HealthTransition> = j
                .iter()
                .filter_map(|e| match e {
                    JournalEntry::Health {
                        backend,
                        transition: Ok(Some(t)),
                        ..
                    } if backend.index() == 1 => Some(*t),
                    _ => None,
                })
                .collect();
            use HealthTransition::{WentDown, WentUp};
            transitions == [WentDown, WentUp, WentDown, WentUp]
        }),
    }
}

fn outlier_ejection_ends() -> Scenario {
    use Behaviour::*;
    use Step::*;
    let mut steps = vec![Set(1, Unavailable)];
    steps.extend([Get; 6]);
    // Healthy again while ejected: it takes work again only once the ejection is over.
    steps.push(Set(1, Healthy));
    steps.extend([Get; 3]);
    steps.push(AwaitEjectionEnd);
    steps.extend([Get; 4]);
    Scenario {
        name: "outlier",
        backends: 3,
        seed: 66,
        retry: RETRY_503,
        outlier: Some(Outlier {
            consecutive_failures: 2,
            // The requests sent during the ejection must all fit in it, even on a loaded
            // machine; the live run then waits for its end rather than for a fixed time.
            base_ejection_ms: 1_500,
            max_ejection_ms: 3_000,
            max_ejected_percent: 50,
        }),
        health: None,
        response_header_timeout_ms: 5_000,
        steps,
        shows: (
            "an ejection, its end, and the backend serving after it",
            |j| {
                let ejected = j.iter().position(
                    |e| matches!(e, JournalEntry::Done { answer: Ok(a), .. } if a.ejected),
                );
                let ended = j
                    .iter()
                    .position(|e| matches!(e, JournalEntry::Timeout { ejections_ended: 1 }));
                let served_after =
                    ended.is_some_and(|end| tries(&j[end..]).contains(&(1, OK, false)));
                matches!((ejected, ended), (Some(e), Some(t)) if e < t) && served_after
            },
        ),
    }
}

/// Every try, as (backend index, how it ended, whether the core answered with a retry).
fn tries(journal: &[JournalEntry]) -> Vec<(usize, TryEnd, bool)> {
    let mut on = std::collections::HashMap::new();
    let mut tries = Vec::new();
    for entry in journal {
        match entry {
            JournalEntry::Work {
                decision: Decision::Dispatch { request, backend },
            }
            | JournalEntry::RetryWork {
                decision: Ok(Decision::Dispatch { request, backend }),
                ..
            } => {
                on.insert(*request, backend.index());
            }
            JournalEntry::Done {
                request,
                report,
                answer: Ok(answer),
            } => {
                if let Some(&backend) = on.get(request) {
                    tries.push((backend, report.end, answer.backoff().is_some()));
                }
            }
            _ => {}
        }
    }
    tries
}

const OK: TryEnd = TryEnd::Response { status: 200 };
const UNAVAILABLE: TryEnd = TryEnd::Response { status: 503 };

// ---------------------------------------------------------------------------------------------
// The comparison.

/// The calls that are decisions. A health-check result that changed nothing is dropped on
/// both sides: each driver probes on its own clock (the proxy every `interval_ms` of real
/// time, from its start; the simulator on its virtual clock, staggered per backend), so how
/// many passing probes fall between two requests differs, and they move nothing. Every
/// health transition, and every other call, stays.
fn decisions(journal: Vec<JournalEntry>) -> Vec<JournalEntry> {
    journal
        .into_iter()
        .filter(|entry| {
            !matches!(
                entry,
                JournalEntry::Health {
                    transition: Ok(None),
                    ..
                }
            )
        })
        .collect()
}

fn assert_same_calls(scenario: &Scenario, simulated: Vec<JournalEntry>, live: Vec<JournalEntry>) {
    let (simulated, live) = (decisions(simulated), decisions(live));
    let (point, shows) = scenario.shows;
    assert!(
        shows(&simulated),
        "scenario {:?} does not show {point} in the simulator: {simulated:#?}",
        scenario.name
    );
    eprintln!(
        "conformance {}: {} calls simulated, {} live",
        scenario.name,
        simulated.len(),
        live.len()
    );
    if simulated == live {
        return;
    }
    let diverges = simulated
        .iter()
        .zip(&live)
        .position(|(s, l)| s != l)
        .unwrap_or(simulated.len().min(live.len()));
    let show = |journal: &[JournalEntry]| {
        journal
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{}{i:3} {e:?}", if i == diverges { ">" } else { " " }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "scenario {:?}: the drivers' calls diverge at entry {diverges}\n--- simulator ({} calls):\n{}\n--- proxy ({} calls):\n{}",
        scenario.name,
        simulated.len(),
        show(&simulated),
        live.len(),
        show(&live)
    );
}

async fn conform(scenario: Scenario) {
    let started = Instant::now();
    let simulated = simulate(&scenario);
    let live = run_live(&scenario).await;
    eprintln!(
        "conformance {}: ran in {:?}",
        scenario.name,
        started.elapsed()
    );
    assert_same_calls(&scenario, simulated, live);
}

#[tokio::test]
async fn conformance_refused_connections_then_recovery() {
    conform(refused_then_recovered()).await;
}

#[tokio::test]
async fn conformance_503_with_retries() {
    conform(unavailable_with_retries()).await;
}

#[tokio::test]
async fn conformance_stalled_try_times_out() {
    conform(stalled_try_times_out()).await;
}

#[tokio::test]
async fn conformance_reload_removes_a_backend_at_its_last_done() {
    conform(reload_removes_a_busy_backend()).await;
}

#[tokio::test]
async fn conformance_health_check_flapping() {
    conform(health_flapping()).await;
}

#[tokio::test]
async fn conformance_outlier_ejection_and_its_end() {
    conform(outlier_ejection_ends()).await;
}

// ---------------------------------------------------------------------------------------------
// (a) The simulator.

fn retry_config(retry: &Retry) -> RetryConfig {
    RetryConfig {
        max_retries: retry.max_retries,
        retry_on_status: StatusSet::from_codes(retry.retry_on_status).expect("valid statuses"),
        backoff_base: Duration::from_millis(retry.backoff_base_ms),
        backoff_max: Duration::from_millis(retry.backoff_max_ms),
        // The rest as the proxy's defaults are: the core's.
        ..RetryConfig::default()
    }
}

/// The scenario on a virtual timeline: requests far enough apart that each ends before the
/// next arrives (as the live client waits for each answer), and waits long enough for what
/// they wait for.
fn simulate(scenario: &Scenario) -> Vec<JournalEntry> {
    let retry = &scenario.retry;
    let try_timeout_ns = scenario.response_header_timeout_ms * MS;
    let stalls = scenario
        .steps
        .iter()
        .any(|s| matches!(s, Step::Set(_, Behaviour::Stalling)));
    let longest_try = if stalls { try_timeout_ns } else { FAST_NS };
    let request_gap = u64::from(retry.max_retries + 1) * longest_try
        + u64::from(retry.max_retries) * retry.backoff_max_ms * MS
        + MS;
    let n = scenario.backends;
    let mut behaviour = vec![(Behaviour::Healthy, 0u64); n];
    let mut windows = Vec::new();
    let mut faults = Vec::new();
    let mut arrivals = Vec::new();
    let mut holding = vec![false; n];
    let mut held_at = None;
    let mut t = MS;
    for step in &scenario.steps {
        match *step {
            Step::Set(backend, to) => {
                let (from, since) = behaviour[backend];
                windows.push((backend, from, since, t));
                behaviour[backend] = (to, t);
                if to == Behaviour::Holding {
                    holding[backend] = true;
                }
                t += MS;
            }
            Step::Get => {
                arrivals.push(t);
                t += request_gap;
            }
            Step::GetHeld => {
                arrivals.push(t);
                held_at = Some(t);
                t += request_gap;
            }
            Step::Release => {
                let at = held_at.take().expect("a held request to release");
                t = t.max(at + HOLD_NS) + request_gap;
            }
            Step::ReloadWithout(backend) => {
                faults.push(Fault {
                    at_ns: t,
                    action: FaultAction::Leave {
                        backend: backend as u32,
                    },
                });
                t += MS;
            }
            Step::AwaitHealth { up, .. } => {
                let h = scenario.health.expect("health checks in this scenario");
                let probes = u64::from(if up { h.rise } else { h.fall }) + 1;
                t += probes * h.interval_ms * MS + request_gap;
            }
            Step::AwaitEjectionEnd => {
                let o = scenario
                    .outlier
                    .expect("outlier detection in this scenario");
                t += o.max_ejection_ms * MS + request_gap;
            }
        }
    }
    for (backend, (from, since)) in behaviour.into_iter().enumerate() {
        windows.push((backend, from, since, u64::MAX));
    }
    for (backend, what, from, to) in windows {
        let backend = backend as u32;
        let until_ns = (to != u64::MAX).then_some(to);
        match what {
            Behaviour::Healthy | Behaviour::Holding => {}
            Behaviour::Refusing => {
                faults.push(Fault {
                    at_ns: from,
                    action: FaultAction::Crash {
                        backend,
                        detect_after_ns: None,
                    },
                });
                if let Some(at_ns) = until_ns {
                    faults.push(Fault {
                        at_ns,
                        action: FaultAction::Recover { backend },
                    });
                }
            }
            Behaviour::Unavailable => faults.push(Fault {
                at_ns: from,
                action: FaultAction::BlackHole { backend, until_ns },
            }),
            Behaviour::Stalling => faults.push(Fault {
                at_ns: from,
                action: FaultAction::Stall { backend, until_ns },
            }),
        }
    }
    faults.sort_by_key(|f| f.at_ns);
    let service = ServiceDist::Constant {
        mean_ns: FAST_NS as f64,
    };
    let mut config = SimConfig::new(PolicyKind::RoundRobin, n, BackendSpec::new(service, 64));
    config.requests = arrivals.len() as u64;
    config.replay = Some(Replayed {
        arrivals_ns: arrivals.into(),
        service_ns: holding
            .iter()
            .map(|&h| vec![if h { HOLD_NS } else { FAST_NS }])
            .collect::<Vec<_>>()
            .into(),
    });
    config.faults = faults;
    config.check_invariants = true;
    config.journal_capacity = JOURNAL_SIZE;
    config.policy_seed = Some(scenario.seed);
    config.core = CoreOptions {
        outlier: scenario.outlier.map(|o| OutlierConfig {
            consecutive_failures: o.consecutive_failures,
            base_ejection: Duration::from_millis(o.base_ejection_ms),
            max_ejection: Duration::from_millis(o.max_ejection_ms),
            max_ejected_percent: o.max_ejected_percent,
        }),
        retry: Some(retry_config(retry)),
        health: scenario.health.map(|h| HealthProbes {
            interval_ns: h.interval_ms * MS,
            rise: h.rise,
            fall: h.fall,
        }),
        try_timeout_ns: Some(try_timeout_ns),
        ..CoreOptions::default()
    };
    let stats = balancer_sim::run(&config)
        .unwrap_or_else(|e| panic!("scenario {:?} in the simulator: {e}", scenario.name));
    assert!(
        stats.journal.len() < JOURNAL_SIZE,
        "the simulator's journal is full"
    );
    stats.journal
}

// ---------------------------------------------------------------------------------------------
// (b) The live proxy.

fn proxy_toml(scenario: &Scenario, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let r = &scenario.retry;
    let mut toml = format!(
        "journal_size = {JOURNAL_SIZE}\naccess_log = \"off\"\nlisten = \"127.0.0.1:0\"\n\
         [pools.{POOL}]\npolicy = \"round-robin\"\nseed = {}\nbackends = [{}]\n\
         response_header_timeout_ms = {}\n\
         retry = {{ max_retries = {}, retry_on_status = {:?}, backoff_base_ms = {}, backoff_max_ms = {} }}\n",
        scenario.seed,
        list.join(", "),
        scenario.response_header_timeout_ms,
        r.max_retries,
        r.retry_on_status,
        r.backoff_base_ms,
        r.backoff_max_ms,
    );
    if let Some(o) = scenario.outlier {
        toml.push_str(&format!(
            "outlier = {{ consecutive_failures = {}, base_ejection_ms = {}, max_ejection_ms = {}, max_ejected_percent = {} }}\n",
            o.consecutive_failures, o.base_ejection_ms, o.max_ejection_ms, o.max_ejected_percent
        ));
    }
    if let Some(h) = scenario.health {
        // A generous probe timeout: a probe that fails for want of CPU would be a transition
        // of its own once `fall` of them come in a row.
        toml.push_str(&format!(
            "health_check = {{ path = \"/health\", interval_ms = {}, timeout_ms = 2000, rise = {}, fall = {} }}\n",
            h.interval_ms, h.rise, h.fall
        ));
    }
    toml
}

async fn run_live(scenario: &Scenario) -> Vec<JournalEntry> {
    let mut backends = Vec::new();
    for _ in 0..scenario.backends {
        backends.push(Scripted::start().await);
    }
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let file = ConfigFile::new(
        &format!("conformance-{}", scenario.name),
        proxy_toml(scenario, &addresses),
    );
    let proxy = Proxy::start_file(&file).await;
    let journal = || proxy.running().journal(POOL);
    let mut listed = addresses.clone();
    let mut held: Option<JoinHandle<tests::Reply>> = None;
    for step in &scenario.steps {
        match *step {
            Step::Set(backend, to) => backends[backend].set(to).await,
            Step::Get => {
                proxy.get("/").await;
                // The done is reported as the body's last frame goes out, which can be just
                // after the client has read it: the next request waits for it.
                proxy.wait_for_in_flight(u32::from(held.is_some())).await;
            }
            Step::GetHeld => {
                let address = proxy.addr();
                held = Some(tokio::spawn(tests::send_http1(
                    address,
                    tests::get("/", "conformance.test"),
                )));
                eventually("the held request to reach its backend", || async {
                    backends.iter().any(|b| b.held.load(Ordering::SeqCst) > 0)
                })
                .await;
                proxy.wait_for_in_flight(1).await;
            }
            Step::Release => {
                // Only a `Holding` backend ever takes a permit.
                for backend in &backends {
                    backend.release.add_permits(1);
                }
                let held = held.take().expect("a held request to release");
                within("the held request", held).await.expect("client task");
                proxy.wait_for_in_flight(0).await;
            }
            Step::ReloadWithout(backend) => {
                listed.retain(|a| *a != addresses[backend]);
                file.write(proxy_toml(scenario, &listed));
                let reply = proxy.admin_post("/reload").await;
                assert_eq!(reply.status, 200, "reload: {}", reply.body);
            }
            Step::AwaitHealth { backend, up } => {
                let wanted = if up {
                    HealthTransition::WentUp
                } else {
                    HealthTransition::WentDown
                };
                let count = |journal: &[JournalEntry]| {
                    journal
                        .iter()
                        .filter(|e| {
                            matches!(e, JournalEntry::Health { backend: id, transition: Ok(Some(t)), .. }
                                if id.index() == backend && *t == wanted)
                        })
                        .count()
                };
                let before = count(&journal());
                eventually("the health transition", || async {
                    count(&journal()) > before
                })
                .await;
            }
            Step::AwaitEjectionEnd => {
                let ended = |journal: &[JournalEntry]| {
                    journal
                        .iter()
                        .filter(|e| matches!(e, JournalEntry::Timeout { .. }))
                        .count()
                };
                let before = ended(&journal());
                eventually("the ejection to end", || async {
                    ended(&journal()) > before
                })
                .await;
            }
        }
    }
    let journal = journal();
    proxy.stop().await;
    assert!(journal.len() < JOURNAL_SIZE, "the proxy's journal is full");
    journal
}

/// A backend on a fixed loopback port whose behaviour the scenario switches. Every answer
/// closes its connection, so the proxy keeps no idle connection that would outlive a switch
/// (to refusing, say) and each try connects afresh, as each simulated try is fresh.
struct Scripted {
    address: SocketAddr,
    behaviour: Arc<AtomicU8>,
    accepting: Option<JoinHandle<()>>,
    /// Requests a `Holding` backend has received (and holds).
    held: Arc<AtomicUsize>,
    /// One permit answers one held request.
    release: Arc<Semaphore>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = listen("127.0.0.1:0".parse().expect("loopback address"));
        let mut backend = Scripted {
            address: listener.local_addr().expect("bound"),
            behaviour: Arc::new(AtomicU8::new(Behaviour::Healthy as u8)),
            accepting: None,
            held: Arc::new(AtomicUsize::new(0)),
            release: Arc::new(Semaphore::new(0)),
        };
        backend.accept(listener);
        backend
    }

    fn accept(&mut self, listener: TcpListener) {
        let (behaviour, held, release) = (
            self.behaviour.clone(),
            self.held.clone(),
            self.release.clone(),
        );
        self.accepting = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(
                    stream,
                    behaviour.clone(),
                    held.clone(),
                    release.clone(),
                ));
            }
        }));
    }

    async fn set(&mut self, to: Behaviour) {
        let was = Behaviour::from_u8(self.behaviour.swap(to as u8, Ordering::SeqCst));
        if was != Behaviour::Refusing && to == Behaviour::Refusing {
            if let Some(accepting) = self.accepting.take() {
                accepting.abort();
                // Awaited, so the listener is closed (and connecting refused) when this returns.
                let _ = accepting.await;
            }
        } else if was == Behaviour::Refusing && to != Behaviour::Refusing {
            self.accept(listen(self.address));
        }
    }
}

/// Listens on `address`, reusable so that a backend can listen again on its own port while
/// its earlier connections linger in TIME_WAIT.
fn listen(address: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(address).expect("bind the backend's port");
    socket.listen(128).expect("listen")
}

async fn serve(
    mut stream: TcpStream,
    behaviour: Arc<AtomicU8>,
    held: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
) {
    let _ = stream.set_nodelay(true);
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    // Requests and probes here have no body: the head is the request.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&chunk[..read]),
        }
    }
    let status = match Behaviour::from_u8(behaviour.load(Ordering::SeqCst)) {
        Behaviour::Healthy => "200 OK",
        Behaviour::Unavailable => "503 Service Unavailable",
        Behaviour::Stalling => {
            // Until the proxy gives up on it and closes.
            let _ = stream.read_to_end(&mut Vec::new()).await;
            return;
        }
        Behaviour::Holding => {
            held.fetch_add(1, Ordering::SeqCst);
            let Ok(permit) = release.acquire().await else {
                return;
            };
            permit.forget();
            "200 OK"
        }
        // Accepted just before the listener closed: refused as far as the client can tell.
        Behaviour::Refusing => return,
    };
    let response =
        format!("HTTP/1.1 {status}\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
