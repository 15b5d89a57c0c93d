//! The real `balancer` binary: `check`, default demo mode, SIGTERM with a request in flight,
//! and bounded memory while a 50 MB body streams through it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_balancer");
const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn balancer(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .output()
        .expect("run the balancer binary")
}

fn example(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "examples", name]
        .iter()
        .collect();
    path.display().to_string()
}

#[test]
fn check_accepts_the_examples_and_the_compose_config() {
    let compose: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "config", "compose.toml"]
        .iter()
        .collect();
    for file in [
        example("minimal.toml"),
        example("full.toml"),
        compose.display().to_string(),
    ] {
        let output = balancer(&["check", &file]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{file}: {output:?}");
        assert!(stdout.starts_with(&format!("ok: {file}: ")), "{stdout}");
    }
}

#[test]
fn check_rejects_a_bad_config_naming_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("balancer-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9001\"]\n[[routes]]\npool = \"missing\"\n",
    )
    .unwrap();
    let output = balancer(&["check", &file.display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "{}:4:8: route refers to unknown pool \"missing\"; known pools: default",
            file.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_names_the_key_of_a_wrong_type_and_guesses_a_misspelt_one() {
    let dir = std::env::temp_dir().join(format!("balancer-hints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9001\"]\npolcy = \"p2c\"\n",
            "3:1: unknown key `polcy`; did you mean `policy`?",
        ),
        (
            "listen = \"127.0.0.1:8080\"\n[pools.a]\nbackends = [\"127.0.0.1:9001\"]\n\
             health_check = { path = \"/\", interval_ms = \"500ms\" }\n",
            "4:44: `interval_ms` takes whole milliseconds, not string \"500ms\"; write e.g. `interval_ms = 500`",
        ),
    ];
    for (index, (text, expected)) in cases.iter().enumerate() {
        let file = dir.join(format!("case{index}.toml"));
        std::fs::write(&file, text).unwrap();
        let output = balancer(&["check", &file.display().to_string()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text}");
        assert!(
            stderr.contains(&format!("{}:{expected}", file.display())),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_port_names_the_setting_or_flag_that_chose_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("balancer-clash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("clash.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:{port}\"\nbackends = [\"127.0.0.1:9001\"]\n"
        ),
    )
    .unwrap();
    let output = balancer(&["--config", &file.display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("port {port} is already in use"))
            && stderr.contains("the admin API's address (`admin`")
            && stderr.contains("`admin = \"off\"`"),
        "{stderr}"
    );

    let port_text = port.to_string();
    let output = balancer(&[
        "demo",
        "--port",
        "0",
        "--backend-port",
        "0",
        "--admin-port",
        &port_text,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`balancer demo --admin-port PORT`"),
        "{stderr}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child process that is killed if the test fails before stopping it.
struct Running(Child);

impl Running {
    fn spawn(args: &[&str]) -> Running {
        Running(
            Command::new(BINARY)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn the balancer binary"),
        )
    }

    /// As `spawn`, with stderr piped too.
    fn spawn_with_stderr(args: &[&str]) -> Running {
        Running(
            Command::new(BINARY)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the balancer binary"),
        )
    }

    fn signal(&self, name: &str) {
        // `kill` from procps: the crate forbids unsafe code, so no libc::kill.
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the balancer did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every address accepts connections: true, or false if the process exited
    /// first (a port it wanted was taken).
    fn listens_on(&mut self, addresses: &[SocketAddr]) -> bool {
        let deadline = Instant::now() + IO_TIMEOUT;
        for &address in addresses {
            while TcpStream::connect(address).is_err() {
                if self.0.try_wait().unwrap().is_some() {
                    return false;
                }
                assert!(Instant::now() < deadline, "nothing listens on {address}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        true
    }

    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until_listening(address: SocketAddr) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` with `Connection: close`; returns the whole response as text.
fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Starts demo backend #1 on a free port and waits until it listens.
fn demo_backend() -> (Running, SocketAddr) {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backend = Running::spawn(&[
        "demo-backend",
        "--listen",
        &address.to_string(),
        "--id",
        "1",
    ]);
    wait_until_listening(address);
    (backend, address)
}

/// Starts a demo backend and the balancer in front of it (from a config file) on free ports.
fn backend_and_balancer(tag: &str) -> (Running, Running, SocketAddr, PathBuf) {
    let backend_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let balancer_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backend = Running::spawn(&[
        "demo-backend",
        "--listen",
        &backend_address.to_string(),
        "--id",
        "1",
    ]);
    wait_until_listening(backend_address);
    let config = std::env::temp_dir().join(format!("balancer-{tag}-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "listen = \"{balancer_address}\"\nadmin = \"127.0.0.1:0\"\naccess_log = \"off\"\nmax_body_bytes = 104857600\nbackends = [\"{backend_address}\"]\n"
        ),
    )
    .unwrap();
    let balancer = Running::spawn(&["--config", &config.display().to_string()]);
    wait_until_listening(balancer_address);
    (backend, balancer, balancer_address, config)
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let (_backend, mut balancer, address, config) = backend_and_balancer("sigterm");
    let in_flight = std::thread::spawn(move || http_get(address, "/sleep/1500"));
    // The request must have reached the balancer before the signal; on a loaded machine
    // connecting can take a while, so leave a wide margin inside the backend's 1.5 s.
    std::thread::sleep(Duration::from_millis(500));
    balancer.signal("TERM");
    let response = in_flight.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("Hello from #1\n"), "{response}");
    assert!(balancer.wait_for_exit().success());
    let _ = std::fs::remove_file(config);
}

#[test]
fn a_50_mb_body_streams_through_with_bounded_memory() {
    const BODY_BYTES: u64 = 50 * 1024 * 1024;
    let (_backend, balancer, address, config) = backend_and_balancer("rss");
    let before_kib = balancer.peak_rss_kib();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /stream?bytes={BODY_BYTES} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Read slowly at first (the proxy must not race ahead into memory), then drain.
    let mut chunk = vec![0u8; 64 * 1024];
    let mut received: u64 = 0;
    for _ in 0..16 {
        received += reader.read(&mut chunk).unwrap() as u64;
        std::thread::sleep(Duration::from_millis(20));
    }
    received += std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
    // Chunked framing adds a few bytes per chunk; the payload is at least the body.
    assert!(received >= BODY_BYTES, "received {received}");
    let growth_kib = balancer.peak_rss_kib().saturating_sub(before_kib);
    eprintln!("peak RSS before {before_kib} KiB, growth {growth_kib} KiB");
    assert!(
        growth_kib < 24 * 1024,
        "peak RSS grew by {growth_kib} KiB while streaming 50 MiB"
    );
    let _ = std::fs::remove_file(config);
}

/// The binary with no arguments: demo mode on 8080 and 9001-9004, admin on 9901. Skipped (with a note) when
/// any of those ports is taken on this machine, e.g. by a developer's own demo.
#[test]
fn default_run_is_the_demo_on_the_documented_ports() {
    let ports = [8080, 9001, 9002, 9003, 9004, 9901];
    if ports
        .iter()
        .any(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
    {
        eprintln!("skipped: one of ports {ports:?} is in use");
        return;
    }
    let mut demo = Running::spawn_with_stderr(&[]);
    // The banner is on stderr (stdout is the access log's), among log lines.
    let mut stderr = BufReader::new(demo.0.stderr.take().unwrap());
    let mut banner = Vec::new();
    while banner
        .last()
        .is_none_or(|l: &String| !l.starts_with("try: "))
    {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "banner ended early: {banner:?}"
        );
        if !line.contains(" INFO ") && !line.contains(" WARN ") {
            banner.push(line.trim_end().to_owned());
        }
    }
    assert_eq!(banner.len(), 8, "{banner:?}");
    assert_eq!(
        banner[5],
        "balancer listening on http://127.0.0.1:8080/ (listener demo)"
    );
    assert!(
        banner[6].starts_with("admin listening on http://127.0.0.1:9901/"),
        "{banner:?}"
    );
    assert_eq!(banner[7], "try: curl http://127.0.0.1:8080/");
    // Keep draining both outputs (access-log and log lines) so the child never blocks on a
    // full pipe.
    let mut stdout = demo.0.stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let address: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut answers: Vec<String> = (0..8)
        .map(|_| http_get(address, "/"))
        .map(|r| r.rsplit("\r\n\r\n").next().unwrap_or("").to_owned())
        .collect();
    answers.sort();
    answers.dedup();
    assert_eq!(
        answers,
        [
            "Hello from #1\n",
            "Hello from #2\n",
            "Hello from #3\n",
            "Hello from #4\n"
        ]
    );
    demo.signal("INT");
    assert!(demo.wait_for_exit().success());
}

/// SIGHUP re-reads the config file: a good file takes effect, a bad one is refused and the
/// config in force keeps serving.
#[test]
fn sighup_reloads_the_config_file_and_a_bad_file_keeps_the_old_config() {
    let backend_address =
        |_: ()| -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let (first, second) = (backend_address(()), backend_address(()));
    let _backends = [(first, "1"), (second, "2")].map(|(address, id)| {
        let backend =
            Running::spawn(&["demo-backend", "--listen", &address.to_string(), "--id", id]);
        wait_until_listening(address);
        backend
    });
    let balancer_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = std::env::temp_dir().join(format!("balancer-hup-{}.toml", std::process::id()));
    let write = |backend: SocketAddr| {
        std::fs::write(
            &config,
            format!(
                "listen = \"{balancer_address}\"\nadmin = \"off\"\naccess_log = \"off\"\nbackends = [\"{backend}\"]\n"
            ),
        )
        .unwrap();
    };
    write(first);
    let balancer = Running::spawn(&["--config", &config.display().to_string()]);
    wait_until_listening(balancer_address);
    assert!(http_get(balancer_address, "/").ends_with("Hello from #1\n"));

    write(second);
    balancer.signal("HUP");
    let deadline = Instant::now() + IO_TIMEOUT;
    while !http_get(balancer_address, "/").ends_with("Hello from #2\n") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the config"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::write(&config, "listen = \"not an address\"\n").unwrap();
    balancer.signal("HUP");
    // The refusal is only logged; give the signal time to be handled, then check nothing changed.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert!(http_get(balancer_address, "/").ends_with("Hello from #2\n"));
    }
    let mut balancer = balancer;
    balancer.signal("TERM");
    assert!(balancer.wait_for_exit().success());
    let _ = std::fs::remove_file(config);
}

/// Starts a demo backend and a balancer whose admin API is on a known free port.
fn with_admin(tag: &str) -> (Running, Running, SocketAddr, SocketAddr, PathBuf) {
    with_admin_and_log(tag, "off")
}

/// As [`with_admin`], with the access log in `format` (to stdout, which `Running` pipes and
/// never reads).
fn with_admin_and_log(
    tag: &str,
    format: &str,
) -> (Running, Running, SocketAddr, SocketAddr, PathBuf) {
    let (backend, backend_address) = demo_backend();
    let config = std::env::temp_dir().join(format!("balancer-{tag}-{}.toml", std::process::id()));
    // Free ports are found before they are bound, and the other tests of this binary look for
    // them at the same time: a balancer that lost a port to one of them exits, and is started
    // again on new ones.
    for _ in 0..START_ATTEMPTS {
        let balancer_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::write(
            &config,
            format!(
                "listen = \"{balancer_address}\"\nadmin = \"{admin_address}\"\naccess_log = \"{format}\"\nbackends = [\"{backend_address}\"]\n"
            ),
        )
        .unwrap();
        let mut balancer = Running::spawn(&["run", &config.display().to_string()]);
        if balancer.listens_on(&[balancer_address, admin_address]) {
            return (backend, balancer, balancer_address, admin_address, config);
        }
    }
    panic!("the balancer did not start in {START_ATTEMPTS} attempts");
}

/// Tries at starting a balancer on free ports before a test gives up.
const START_ATTEMPTS: usize = 5;

#[test]
fn explain_prints_a_request_s_decision_and_fails_clearly_on_unknown_ids_and_no_balancer() {
    let (_backend, _balancer, address, admin, config) = with_admin("explain");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: test\r\nx-request-id: cli-42\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.contains("x-request-id: cli-42"), "{response}");

    let admin_arg = admin.to_string();
    let out = balancer(&["explain", "cli-42", "--admin", &admin_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("request cli-42: 1 try\n"), "{stdout}");
    assert!(
        stdout.contains("pool default, least-pending, sent to 127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("why: least-pending chose 127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 1 backends eligible"), "{stdout}");

    let out = balancer(&["explain", "no-such-id", "--admin", &admin_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no record of request no-such-id"),
        "{stderr}"
    );
    assert!(stderr.contains("explain_ring_size = 4096"), "{stderr}");

    let out = balancer(&[
        "explain",
        "x",
        "--admin",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    let _ = std::fs::remove_file(config);
}

/// The simulator binary next to this one, if the workspace build made it.
fn simulator() -> Option<PathBuf> {
    let path =
        Path::new(BINARY).with_file_name(format!("balancer-sim{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

#[test]
fn check_simulate_compares_the_changed_pool_side_by_side() {
    let dir = std::env::temp_dir().join(format!("balancer-simulate-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A recorded pool of two backends, one 1 ms and one 9 ms, a request every 2 ms.
    let mut trace = String::from(balancer_core::trace::TRACE_HEADER);
    trace.push('\n');
    for i in 0..400u64 {
        let (backend, service_ns) = if i % 2 == 0 {
            ("10.0.0.1:80", 1_000_000)
        } else {
            ("10.0.0.2:80", 9_000_000)
        };
        trace.push_str(&format!(
            "{}\tweb\tdefault\tGET\t0\t14\t{backend}\t{service_ns}\t200\tok\n",
            i * 2_000_000
        ));
        // Another pool's request, which must not count for `web`.
        trace.push_str(&format!(
            "{}\tother\tdefault\tGET\t0\t14\t10.0.0.9:80\t5000000\t200\tok\n",
            i * 2_000_000 + 1
        ));
    }
    let trace_path = dir.join("t.trace");
    std::fs::write(&trace_path, trace).unwrap();
    let config = |policy: &str, web_extra: &str, tables: &str| {
        format!(
            "listen = \"127.0.0.1:8080\"\n\
             [pools.web]\npolicy = \"{policy}\"\nbackends = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n{web_extra}\
             [pools.other]\nbackends = [\"10.0.0.9:80\"]\n\
             [[routes]]\npool = \"web\"\n{tables}"
        )
    };
    let old = dir.join("old.toml");
    let new = dir.join("new.toml");
    std::fs::write(&old, config("round-robin", "", "")).unwrap();
    // Besides the policy, two changes a replay cannot model: they must be named, not ignored.
    std::fs::write(
        &new,
        config(
            "least-pending",
            "health_check = { path = \"/healthz\" }\n",
            "[rate_limit]\nglobal = { rate_per_s = 100 }\n",
        ),
    )
    .unwrap();
    let args = [
        "check",
        new.to_str().unwrap(),
        "--simulate",
        trace_path.to_str().unwrap(),
        "--current",
        old.to_str().unwrap(),
    ];
    let Some(sim) = simulator() else {
        // Not built by this `cargo test -p balancer-tokio`: the error must say how to get it.
        let out = Command::new(BINARY)
            .args(args)
            .env("PATH", "")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("cargo build --release -p balancer-sim"),
            "{stderr}"
        );
        eprintln!("balancer-sim is not built: only the error was checked");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let out = Command::new(BINARY)
        .args(args)
        .env("BALANCER_SIM", &sim)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        stdout.contains("pool web (changed: health_check, policy): 400 requests in the trace"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  not simulated: health_check (the replay models policy, backends,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not simulated (outside the pools): rate_limit.global;"),
        "{stdout}"
    );
    assert!(stdout.contains("pool other: unchanged"), "{stdout}");
    assert!(
        stdout.contains("current: round-robin over 2 backends"),
        "{stdout}"
    );
    assert!(
        stdout.contains("new: least-pending over 2 backends"),
        "{stdout}"
    );
    let mean = |line: &str| -> Vec<f64> {
        line.split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect()
    };
    let means = mean(stdout.lines().find(|l| l.contains("mean latency")).unwrap());
    assert_eq!(means.len(), 2, "{stdout}");
    // Round-robin sends half the requests to the 9 ms backend: mean about 5 ms at least;
    // least-pending moves work off it, so it predicts a lower mean.
    assert!(means[0] >= 4.5, "{stdout}");
    assert!(means[1] < means[0], "{stdout}");

    // A per-backend cap is passed to the simulator (its fleet file's `[core]`).
    let capped = dir.join("capped.toml");
    std::fs::write(
        &capped,
        config("round-robin", "", "").replace(
            "[pools.other]",
            "max_pending_per_backend = 1\n[pools.other]",
        ),
    )
    .unwrap();
    let out = Command::new(BINARY)
        .args([
            "check",
            capped.to_str().unwrap(),
            "--simulate",
            trace_path.to_str().unwrap(),
            "--current",
            old.to_str().unwrap(),
        ])
        .env("BALANCER_SIM", &sim)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        stdout.contains("(changed: max_pending_per_backend)"),
        "{stdout}"
    );
    // Same policy, so only the cap can change the prediction: with at most one request on
    // the 9 ms backend, round-robin's next request goes to the idle 1 ms one instead of
    // queueing (the cap never rejects here: the fast backend is always free in time).
    let means = mean(stdout.lines().find(|l| l.contains("mean latency")).unwrap());
    assert!(means[1] * 10.0 < means[0], "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stalled_stdout_never_stops_serving_nor_shutdown() {
    // `Running` pipes stdout and nobody reads it: a pipe holds 64 KiB, about 400 text lines.
    // Before the access log had a writer thread, the worker blocked in that write: requests
    // stopped after a few hundred, `/healthz` timed out and SIGTERM did nothing.
    let (_backend, mut balancer, address, admin, config) = with_admin_and_log("stalled", "text");
    for i in 0..2_000 {
        let response = http_get(address, "/");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "request {i}: {response}"
        );
    }
    let health = http_get(admin, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(admin, "/metrics");
    // 2,000 lines are past the pipe's 64 KiB but within the writer's queue: kept, not dropped
    // (the unit tests drop and count with a full queue).
    assert!(
        metrics.contains("balancer_access_log_dropped_records_total 0"),
        "{metrics}"
    );
    balancer.signal("TERM");
    assert!(balancer.wait_for_exit().success());
    let _ = std::fs::remove_file(config);
}

/// The soft and hard "Max open files" of a process, from /proc.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = std::env::temp_dir().join(format!("balancer-nofile-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("listen = \"{address}\"\nadmin = \"off\"\naccess_log = \"off\"\nbackends = [\"127.0.0.1:1\"]\n"),
    )
    .unwrap();
    // A shell lowers the soft limit the way a default login does, then becomes the balancer.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {BINARY} --config {}",
            config.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the balancer through sh");
    let mut balancer = Running(child);
    wait_until_listening(address);
    let (soft, hard) = open_files_limits(balancer.0.id());
    assert_eq!(soft, hard, "soft {soft}, hard {hard}");
    assert_ne!(soft, "256");
    balancer.signal("TERM");
    assert!(balancer.wait_for_exit().success());
    let _ = std::fs::remove_file(config);
}

/// Reads one sd_notify datagram within `IO_TIMEOUT`.
fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let n = socket
        .recv(&mut buffer)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn a_service_manager_hears_ready_reloading_and_stopping() {
    let dir = std::env::temp_dir().join(format!("balancer-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The service manager's end of the sd_notify protocol: a datagram socket named by
    // $NOTIFY_SOCKET, as systemd creates for a Type=notify unit.
    let socket_path = dir.join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    manager.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.join("notify.toml");
    let write_config = |backend: &str| {
        std::fs::write(
            &config,
            format!(
                "listen = \"{address}\"\nadmin = \"off\"\naccess_log = \"off\"\nbackends = [\"{backend}\"]\n"
            ),
        )
        .unwrap();
    };
    write_config("127.0.0.1:9");
    let mut balancer = Running(
        Command::new(BINARY)
            .args(["--config", &config.display().to_string()])
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let ready = notification(&manager);
    assert!(
        ready.lines().any(|l| l == "READY=1") && ready.contains("STATUS=serving: 1 listener(s)"),
        "{ready:?}"
    );
    // Ready means bound: the listener accepts at once.
    TcpStream::connect(address).expect("ready only once listening");

    write_config("127.0.0.1:10");
    balancer.signal("HUP");
    let reloading = notification(&manager);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1")
            && reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let reloaded = notification(&manager);
    assert!(
        reloaded.lines().any(|l| l == "READY=1")
            && reloaded.contains("STATUS=serving (reloaded):")
            && reloaded.contains("changed: pools.default.backends[127.0.0.1:10] (new)"),
        "{reloaded:?}"
    );

    balancer.signal("TERM");
    assert_eq!(notification(&manager).trim_end(), "STOPPING=1");
    assert!(balancer.wait_for_exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn under_a_low_open_files_limit_an_accepted_client_still_reaches_a_backend() {
    let (_backend, backend_address) = demo_backend();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = std::env::temp_dir().join(format!("balancer-fdcap-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "listen = \"{address}\"\nadmin = \"off\"\naccess_log = \"off\"\nworkers = 1\nmax_connections = 1000\nbackends = [\"{backend_address}\"]\n"
        ),
    )
    .unwrap();
    // 256 descriptors, soft and hard: room for (256 - 64) / 2 = 96 clients with a backend each.
    let mut balancer = Running(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 256 && exec {BINARY} --config {}",
                config.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the balancer through sh"),
    );
    wait_until_listening(address);
    // 300 clients connect (the kernel queues those beyond the cap); the first one's request
    // still finds a descriptor for its backend connection. Uncapped, the proxy would have
    // accepted until descriptors ran out, and that request would fail with 502.
    let mut clients: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(address).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let first = &mut clients[0];
    first.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(clients);
    balancer.signal("TERM");
    assert!(balancer.wait_for_exit().success());
    let mut stderr = String::new();
    balancer
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("capped_to=96"), "{stderr}");
    let _ = std::fs::remove_file(config);
}
