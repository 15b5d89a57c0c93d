//! The admin listener (default 127.0.0.1:9901): metrics, backend states, drain/undrain,
//! health, the effective config, and reload.
//!
//! Guarded three ways: it binds to loopback by default; with `admin_token_file` every request
//! but `/healthz` must carry `Authorization: Bearer TOKEN` (and an address beyond loopback
//! needs one, or an explicit `admin_unauthenticated = true`); and a request whose Host is not
//! the admin address, or whose Origin or `Sec-Fetch-Site` says another site sent it, is refused,
//! so that a web page cannot drain or reload through the operator's browser (cross-site POST,
//! DNS rebinding).
//!
//! Pages a higher layer serves on the same listener (the dashboard) come in through [`Pages`],
//! behind the same checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::config_json;
use crate::observe::metrics::{BackendLabels, HealthLabels};
use crate::runtime::shutdown::{Phase, PhaseWatcher};
use crate::serve::Shared;

/// Concurrent admin connections: a scraper and an operator or two; more is a mistake or abuse.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// An admin request head must arrive within this.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of an admin answer: whole, or a stream (the dashboard's events).
pub type AdminBody = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Pages served on the admin listener by a layer above it (the dashboard), after the same
/// Host, Origin and `Sec-Fetch-Site` checks as the API.
pub trait Pages: Send + Sync + 'static {
    /// Whether `path` is served without the bearer token: static files that hold no data, so
    /// that a browser can load the page into which the operator types the token.
    fn is_public(&self, path: &str) -> bool;

    /// The answer to an admitted request, or `None` if `request` is not for these pages.
    fn answer(
        &self,
        shared: &Arc<Shared>,
        request: &Request<Incoming>,
    ) -> Option<Response<AdminBody>>;
}

/// A whole body as an [`AdminBody`].
pub fn whole(response: Response<Full<Bytes>>) -> Response<AdminBody> {
    response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

/// Serves the admin API (and `pages`, if any) on `socket` until shutdown begins.
pub async fn serve(
    socket: TcpListener,
    shared: Arc<Shared>,
    mut watcher: PhaseWatcher,
    pages: Option<Arc<dyn Pages>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Some((permit, accepted)) =
            crate::serve::listen::accept_within_limit(&socket, &permits, &mut watcher).await
        else {
            break;
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let shared = shared.clone();
        let pages = pages.clone();
        let mut watcher = watcher.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                let pages = pages.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handle(
                        &shared,
                        pages.as_deref(),
                        local,
                        request,
                    ))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = watcher.reached(Phase::Stopped) => {}
            }
            drop(permit);
        });
    }
}

fn handle(
    shared: &Arc<Shared>,
    pages: Option<&dyn Pages>,
    local: SocketAddr,
    request: Request<Incoming>,
) -> Response<AdminBody> {
    let public = |path: &str| pages.is_some_and(|p| p.is_public(path));
    if let Err(refusal) = admit(shared, local, &request, public) {
        return whole(refusal.response());
    }
    if let Some(answer) = pages.and_then(|p| p.answer(shared, &request)) {
        return answer;
    }
    whole(api(shared, &request))
}

fn api(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = request.method();
    match (method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, ["metrics"]) => metrics(shared),
        (&Method::GET, ["backends"]) => json_response(StatusCode::OK, &backends(shared)),
        (&Method::GET, ["explain", id]) => explain(shared, id),
        (&Method::GET, ["config"]) => json_response(
            StatusCode::OK,
            &config_json(shared.current().config().as_ref()),
        ),
        (&Method::POST, ["reload"]) => match shared.reload() {
            Ok(summary) => text(StatusCode::OK, format!("reloaded: {summary}\n")),
            Err(err) => text(StatusCode::BAD_REQUEST, format!("reload refused: {err}\n")),
        },
        (&Method::POST, ["backends", pool, address, action @ ("drain" | "undrain")]) => {
            drain(shared, pool, address, *action == "drain")
        }
        (_, ["healthz" | "metrics" | "backends" | "config" | "reload"] | ["explain", _])
        | (_, ["backends", _, _, "drain" | "undrain"]) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try GET /dashboard, /metrics, /backends, /config, /healthz, /explain/REQUEST_ID, POST /reload, POST /backends/POOL/ADDRESS/drain|undrain\n".into(),
        ),
    }
}

/// Whether the request may be served: from this site (Host, Origin, `Sec-Fetch-Site`) and,
/// when a token is configured, carrying it. `/healthz` needs no token (liveness probes), but
/// is still refused from another site.
fn admit(
    shared: &Shared,
    local: SocketAddr,
    request: &Request<Incoming>,
    public: impl Fn(&str) -> bool,
) -> Result<(), Refusal> {
    let headers = request.headers();
    let forbidden = |why: &str| Err(Refusal::Forbidden(format!("forbidden: {why}\n")));
    // A name that resolves to this address (DNS rebinding) reaches it with a foreign Host.
    // Bound to a specific address, the Host must be that address or `localhost`.
    if !local.ip().is_unspecified() {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let port = local.port();
        let allowed = host.is_some_and(|host| {
            host == format!("{local}")
                || host == format!("localhost:{port}")
                || (local.ip().is_loopback()
                    && (host == format!("127.0.0.1:{port}") || host == format!("[::1]:{port}")))
        });
        if !allowed {
            return forbidden(&format!(
                "Host {:?} is not this admin address ({local}); use http://{local}/",
                host.unwrap_or("")
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if origin != format!("http://{host}") {
            return forbidden("a request sent by another site's page (Origin)");
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return forbidden("a request sent by another site's page (Sec-Fetch-Site)");
    }
    let config = shared.current().config().clone();
    let Some(token) = &config.admin_token else {
        return Ok(());
    };
    let path = request.uri().path();
    if path.trim_end_matches('/') == "/healthz" || public(path) {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|a| a.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "));
    match presented {
        Some(presented) if same_token(presented.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(Refusal::Unauthorized),
    }
}

/// Why `admit` refused a request.
enum Refusal {
    /// From another site (403), with the reason.
    Forbidden(String),
    /// Without the bearer token (401).
    Unauthorized,
}

impl Refusal {
    fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::Forbidden(message) => text(StatusCode::FORBIDDEN, message),
            Refusal::Unauthorized => {
                let mut response = text(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: send Authorization: Bearer TOKEN (the token of admin_token_file)\n"
                        .into(),
                );
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
        }
    }
}

/// Compares in time that does not depend on where the two differ, so the token cannot be
/// found a byte at a time by timing the answers.
fn same_token(presented: &[u8], token: &[u8]) -> bool {
    presented.len() == token.len()
        && presented
            .iter()
            .zip(token)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// `GET /explain/{request-id}`: the decision records of every try of that request.
fn explain(shared: &Shared, segment: &str) -> Response<Full<Bytes>> {
    let Some(id) = crate::observe::explain::percent_decode(segment) else {
        return text(
            StatusCode::BAD_REQUEST,
            "malformed request id: a bad %-escape in the path\n".into(),
        );
    };
    if let Err(reason) = crate::observe::explain::validate_id(&id) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("malformed request id: {reason}\n"),
        );
    }
    let shown = String::from_utf8_lossy(&id).into_owned();
    let proxy = shared.current();
    let Some(ring) = proxy.explain() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no record of request {shown}: explanations are off (explain_ring_size = 0)\n"),
        );
    };
    let tries = ring.find(&id);
    if tries.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no record of request {shown}: unknown, or evicted (the ring keeps the last {} tries; explain_ring_size = {})\n",
                ring.size(),
                ring.size()
            ),
        );
    }
    let tries: Vec<Value> = tries
        .iter()
        .enumerate()
        .map(|(index, entry)| explain_try(&proxy, index, entry))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "request_id": shown, "ring_size": ring.size(), "tries": tries }),
    )
}

/// One try's decision record as JSON: candidates and skipped backends by address, the rule as
/// a sentence. `index` is its place among its request's tries (0 for the first).
pub fn explain_try(
    proxy: &crate::forward::proxy::Proxy,
    index: usize,
    entry: &crate::observe::explain::Explained,
) -> Value {
    use balancer_core::{BackendId, Decision, SkipReason};
    let record = &entry.record;
    let pool = proxy
        .pools()
        .iter()
        .find(|p| p.explain_key == entry.pool_key);
    // The core names backends by id; the address is what an operator knows them by. A
    // backend removed since (its id no longer resolves) keeps its core name.
    let address = |id: BackendId| -> String {
        pool.and_then(|p| p.backend_by_id(id))
            .map_or_else(|| format!("{id} (since removed)"), |b| b.address.clone())
    };
    let state = if record.panic {
        "considered in panic mode"
    } else {
        "eligible"
    };
    let candidate = |role: &str, c: &balancer_core::Candidate| {
        json!({
            "role": role,
            "address": address(c.backend),
            "backend_id": c.backend.to_string(),
            "pending": c.pending,
            "weight": c.weight,
            "ewma_ms": (c.ewma_ns() / 1e3).round() / 1e3,
            "ewma_last_sample_ms_ago": c.ewma_sample_age().as_millis() as u64,
            "state": state,
        })
    };
    let mut candidates = Vec::new();
    if let Some(c) = &record.chosen {
        candidates.push(candidate("chosen", c));
    }
    if let Some(c) = &record.rival {
        candidates.push(candidate("rival", c));
    }
    let skipped: Vec<Value> = record
        .skipped()
        .map(|s| {
            let (reason, ejected_for_ms) = match s.reason {
                SkipReason::Down => ("down", None),
                SkipReason::Draining => ("draining", None),
                SkipReason::Ejected { until } => (
                    "ejected",
                    Some(until.saturating_since(record.at).as_millis() as u64),
                ),
                SkipReason::Full => ("at its in-flight cap", None),
                SkipReason::AlreadyTried => ("already tried", None),
            };
            json!({
                "address": address(s.backend),
                "backend_id": s.backend.to_string(),
                "reason": reason,
                "ejected_for_ms": ejected_for_ms,
            })
        })
        .collect();
    let mut names: Vec<(String, String)> = record
        .chosen
        .iter()
        .chain(record.rival.iter())
        .map(|c| c.backend)
        .chain(record.skipped().map(|s| s.backend))
        .map(|id| (id.to_string(), address(id)))
        .collect();
    // Longer names first, so that `b1.2` is not read as `b1`.
    names.sort_by_key(|(id, _)| std::cmp::Reverse(id.len()));
    let rule = crate::observe::explain::name_backends(&record.to_string(), &names);
    let (decision, reject_reason, chosen) = match record.decision {
        Decision::Dispatch { backend, .. } => ("dispatch", None, Some(address(backend))),
        Decision::Reject { reason } => ("reject", Some(reason.to_string()), None),
    };
    let time = pool.map(|p| crate::observe::access_log::rfc3339(p.clock.wall_time(record.at)));
    json!({
        "try": index + 1,
        "retry": record.retry,
        "time": time,
        "at_ns": record.at.as_nanos(),
        "pool": pool.map_or("(a pool since removed by a reload)", |p| p.name.as_str()),
        "policy": record.policy.name(),
        "decision": decision,
        "reject_reason": reject_reason,
        "chosen": chosen,
        "rule": rule,
        "candidates": candidates,
        "ties": record.ties,
        "eligible": record.eligible,
        "backends": record.backends,
        "panic": record.panic,
        "skipped": skipped,
    })
}

fn drain(shared: &Shared, pool: &str, address: &str, drain: bool) -> Response<Full<Bytes>> {
    // A page builds these paths with encodeURIComponent (pool names may hold any character).
    let decode = |segment: &str| {
        crate::observe::explain::percent_decode(segment).and_then(|b| String::from_utf8(b).ok())
    };
    let (Some(pool), Some(address)) = (decode(pool), decode(address)) else {
        return text(
            StatusCode::BAD_REQUEST,
            "malformed pool or backend in the path: a bad %-escape, or not UTF-8\n".into(),
        );
    };
    let (pool, address) = (pool.as_str(), address.as_str());
    let proxy = shared.current();
    let Some(found) = proxy.pools().iter().find(|p| p.name == pool) else {
        return text(StatusCode::NOT_FOUND, format!("no pool {pool:?}\n"));
    };
    match found.set_drained(address, drain) {
        Ok(()) => {
            let verb = if drain { "draining" } else { "undrained" };
            tracing::info!(pool, backend = address, "admin: backend {verb}");
            text(StatusCode::OK, format!("{pool}/{address}: {verb}\n"))
        }
        Err(err) => text(StatusCode::NOT_FOUND, format!("{err}\n")),
    }
}

fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let proxy = shared.current();
    let metrics = proxy.metrics();
    // Gauges of backend state are rebuilt from the core at each scrape, so backends removed
    // by a reload disappear from them.
    metrics.pending.clear();
    metrics.weight.clear();
    metrics.ewma_seconds.clear();
    metrics.health.clear();
    for pool in proxy.pools() {
        let now = pool.clock.now();
        for view in pool.views() {
            let labels = BackendLabels {
                pool: pool.label().clone(),
                backend: view.backend.label.clone(),
            };
            metrics
                .pending
                .get_or_create(&labels)
                .set(i64::from(view.snapshot.pending));
            metrics
                .weight
                .get_or_create(&labels)
                .set(i64::from(view.snapshot.weight));
            metrics
                .ewma_seconds
                .get_or_create(&labels)
                .set(view.snapshot.ewma_ns / 1e9);
            let current = view.state_name(now);
            for state in ["up", "down", "draining", "drained", "ejected"] {
                metrics
                    .health
                    .get_or_create(&HealthLabels {
                        pool: labels.pool.clone(),
                        backend: labels.backend.clone(),
                        state,
                    })
                    .set(i64::from(state == current));
            }
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn backends(shared: &Shared) -> Value {
    let proxy = shared.current();
    let pools: Vec<Value> = proxy
        .pools()
        .iter()
        .map(|pool| {
            let now = pool.clock.now();
            let backends: Vec<Value> = pool
                .views()
                .iter()
                .map(|view| backend_json(view, now))
                .collect();
            json!({ "pool": pool.name, "in_flight": pool.in_flight(), "backends": backends })
        })
        .collect();
    json!({ "pools": pools })
}

/// One backend as `GET /backends` shows it (the dashboard adds to it).
pub fn backend_json(
    view: &crate::balance::pool::BackendView,
    now: balancer_core::Timestamp,
) -> Value {
    let s = &view.snapshot;
    json!({
        "address": view.backend.address,
        "state": view.state_name(now),
        "pending": s.pending,
        "weight": s.weight,
        "ewma_ms": (s.ewma_ns / 1e3).round() / 1e3,
        "ewma_last_sample_ms_ago": now.saturating_since(s.ewma_updated_at).as_millis() as u64,
        "dispatched": s.dispatched,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "consecutive_failures": s.consecutive_failures,
        "ejected_for_ms": s.ejected_until.filter(|t| *t > now).map(|t| t.saturating_since(now).as_millis() as u64),
        "eligible": s.eligible,
        "removing": view.removing,
    })
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON answer.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
