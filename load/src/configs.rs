//! The generated configs: nginx backends and the three proxies, set up to do comparable work
//! (keep-alive both legs, least-connections, no access log, X-Forwarded-*, Via, request id).

use std::fmt::Write as _;
use std::path::Path;

/// Backend response body: small and fixed, so backends are never the bottleneck.
pub const BACKEND_BODY: &str = "hello from a load-test backend, 64 bytes of fixed body.........\n";

/// Client connections each proxy must accept: the 10k idle connections plus headroom.
pub const MAX_CLIENT_CONNECTIONS: usize = 15_000;

/// Idle keep-alive connections each proxy keeps to the backends (the balancer's default
/// max_idle_per_backend is 256; nginx's `keepalive` is per worker and upstream).
pub const UPSTREAM_KEEPALIVE: usize = 256;

/// Client idle/header timeout for all proxies: long enough that the 10k idle connections survive
/// the memory measurement (nginx's default client_header_timeout is 60 s).
pub const CLIENT_IDLE_TIMEOUT_S: u64 = 60;

/// nginx's `worker_connections` that fits `nofile` open files (nginx only warns when it does
/// not, then fails at run time), at most `wanted`.
fn nginx_worker_connections(wanted: usize, nofile: u64) -> usize {
    wanted
        .min(usize::try_from(nofile).unwrap_or(usize::MAX))
        .max(1024)
}

/// One nginx backend: one worker serving [`BACKEND_BODY`] on `port`.
pub fn nginx_backend(prefix: &Path, port: u16, nofile: u64) -> String {
    let p = prefix.display();
    let wc = nginx_worker_connections(16_384, nofile);
    format!(
        r#"# Load-test backend on 127.0.0.1:{port}: a fixed small body, no logs.
worker_processes 1;
daemon off;
master_process on;
pid {p}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {wc}; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"#,
        body = BACKEND_BODY.replace('\n', "\\n"),
    )
}

/// The balancer's TOML config.
pub fn balancer(port: u16, backends: &[u16]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        r#"# compare-proxies: the balancer under test.
listen = "127.0.0.1:{port}"
workers = 1
policy = "least-pending"
backends = [{list}]
access_log = "off"
admin = "off"
max_connections = {MAX_CLIENT_CONNECTIONS}
header_read_timeout_ms = {timeout_ms}
shutdown_grace_ms = 1000
"#,
        list = list.join(", "),
        timeout_ms = CLIENT_IDLE_TIMEOUT_S * 1000,
    )
}

/// HAProxy's maxconn that fits `nofile` open files: it reserves two descriptors per connection
/// (client and server side) plus a few, and refuses to start if they do not fit the hard limit.
pub fn haproxy_maxconn(nofile: u64) -> usize {
    let fits = (nofile.saturating_sub(64) / 2) as usize;
    MAX_CLIENT_CONNECTIONS.min(fits).max(1)
}

/// HAProxy: one thread, leastconn, keep-alive to backends with `http-reuse always`.
pub fn haproxy(port: u16, backends: &[u16], maxconn: usize) -> String {
    let mut servers = String::new();
    for (i, p) in backends.iter().enumerate() {
        let _ = writeln!(servers, "    server b{} 127.0.0.1:{p}", i + 1);
    }
    let t = CLIENT_IDLE_TIMEOUT_S;
    format!(
        r#"# compare-proxies: HAProxy with the same work as the balancer. No `log` line: no logging.
global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    maxconn {maxconn}
    timeout connect 1s
    timeout client {t}s
    timeout http-request {t}s
    timeout http-keep-alive {t}s
    timeout server 30s
    option http-keep-alive

frontend fe
    bind 127.0.0.1:{port}
    unique-id-format %{{+X}}o\ %ci:%cp_%Ts_%rt
    http-request set-header X-Request-ID %[unique-id]
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Via "1.1 haproxy"
    http-response set-header X-Request-ID %[unique-id]
    http-response add-header Via "1.1 haproxy"
    default_backend be

backend be
    balance leastconn
    http-reuse always
{servers}"#
    )
}

/// nginx: one worker, least_conn, upstream keep-alive.
pub fn nginx_proxy(prefix: &Path, port: u16, backends: &[u16], nofile: u64) -> String {
    let p = prefix.display();
    let mut servers = String::new();
    for b in backends {
        let _ = writeln!(servers, "        server 127.0.0.1:{b};");
    }
    let t = CLIENT_IDLE_TIMEOUT_S;
    format!(
        r#"# compare-proxies: nginx with the same work as the balancer.
worker_processes 1;
daemon off;
master_process on;
pid {p}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {wc}; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout {t}s;
    client_header_timeout {t}s;
    upstream be {{
        least_conn;
{servers}        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Via "1.1 nginx";
            proxy_set_header X-Request-ID $request_id;
            add_header X-Request-ID $request_id;
            add_header Via "1.1 nginx";
        }}
    }}
}}
"#,
        // Each client connection may hold a second, upstream, connection.
        wc = nginx_worker_connections(MAX_CLIENT_CONNECTIONS * 2 + 1000, nofile),
    )
}
