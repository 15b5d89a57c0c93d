//! The live dashboard on the admin listener: one page (`GET /dashboard`) showing each pool's
//! backends as the core sees them, the pool's request rate and p50/p99 over the last minutes,
//! the latest decisions with their explanations and, while a trace records, the simulator's
//! prediction for the last minute; updated by a bounded stream of server-sent events.
//!
//! The page, its script and its style are compiled in (no build step, nothing fetched from
//! elsewhere) and served without the bearer token, as they hold no data (and so is
//! `/dashboard/auth`, which says whether a token is wanted); everything with data
//! (`/dashboard/state`, `/dashboard/events`, `/dashboard/decisions`) and the drain buttons
//! (the API's own POST endpoints) need it, sent by the page's `fetch` from what the operator
//! typed once (kept in the tab's `sessionStorage`). The admin listener's Host, Origin and
//! `Sec-Fetch-Site` checks apply to every request, and the page may not be framed.

mod predict;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admin::{AdminBody, Pages, backend_json, json_response, text, whole};
use crate::observe::window::WINDOW_SECONDS;
use crate::runtime::shutdown::{Phase, PhaseWatcher};
use crate::serve::Shared;

pub use predict::{PREDICTION_FIRST, PREDICTION_INTERVAL, PREDICTION_SPAN, Prediction};

/// Dashboard event streams open at once. Each holds one of the admin listener's
/// `MAX_ADMIN_CONNECTIONS` (32) for as long as a tab is open: a few operators' tabs fit, and the
/// rest of the connections stay free for scrapers and the API. A page refused a stream polls
/// `/dashboard/state` instead.
pub const MAX_DASHBOARD_STREAMS: usize = 4;
/// How often a stream sends the state: the page's refresh rate.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// A stream ends after this long, and the page opens a new one: a tab left open for days does
/// not hold a stream slot (nor a view of an old config) for ever.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Decisions `/dashboard/decisions` lists at most (its `limit` defaults to 20).
pub const MAX_LISTED_DECISIONS: usize = 100;
/// Seconds of per-second history in each state: the window less its slot in reuse.
const SERIES_SECONDS: usize = WINDOW_SECONDS - 1;

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// Says whether the admin listener wants the token: served without it.
const AUTH_PATH: &str = "/dashboard/auth";
/// The static files, by path: served without the token.
const STATIC_FILES: [(&str, &str, &str); 3] = [
    ("/dashboard", "text/html; charset=utf-8", PAGE_HTML),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        PAGE_JS,
    ),
    ("/dashboard/app.css", "text/css; charset=utf-8", PAGE_CSS),
];

/// The pages, with the streams they have open and the latest predictions.
pub struct Dashboard {
    streams: Arc<Semaphore>,
    watcher: PhaseWatcher,
    predictions: Arc<Mutex<Vec<Prediction>>>,
}

impl Dashboard {
    /// The dashboard of `shared`, and its prediction task (which runs the simulator while a
    /// trace records) until shutdown begins.
    pub fn start(shared: Arc<Shared>, watcher: PhaseWatcher) -> Arc<Dashboard> {
        let predictions = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(predict::run(shared, predictions.clone(), watcher.clone()));
        Arc::new(Dashboard {
            streams: Arc::new(Semaphore::new(MAX_DASHBOARD_STREAMS)),
            watcher,
            predictions,
        })
    }
}

impl Pages for Dashboard {
    fn is_public(&self, path: &str) -> bool {
        let path = normal(path);
        path == "/" || path == AUTH_PATH || STATIC_FILES.iter().any(|(p, _, _)| *p == path)
    }

    fn answer(
        &self,
        shared: &Arc<Shared>,
        request: &Request<Incoming>,
    ) -> Option<Response<AdminBody>> {
        let path = normal(request.uri().path());
        if path != "/" && path != "/dashboard" && !path.starts_with("/dashboard/") {
            return None;
        }
        if request.method() != Method::GET {
            return Some(whole(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: the dashboard's paths answer GET; drain and undrain are POST /backends/POOL/ADDRESS/drain|undrain\n".into(),
            )));
        }
        if path == "/" {
            let mut response = text(StatusCode::FOUND, "the dashboard is at /dashboard\n".into());
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
            return Some(whole(response));
        }
        if let Some((_, content_type, body)) = STATIC_FILES.iter().find(|(p, _, _)| *p == path) {
            return Some(whole(page_file(content_type, body)));
        }
        if path == AUTH_PATH {
            // Whether to ask for the token before the first request (a 401 would be a console
            // error); any 401 tells as much, so this tells nothing new.
            let required = shared.current().config().admin_token.is_some();
            return Some(whole(no_store(json_response(
                StatusCode::OK,
                &json!({ "token_required": required }),
            ))));
        }
        let answer = match path {
            "/dashboard/state" => {
                whole(no_store(json_response(StatusCode::OK, &self.state(shared))))
            }
            "/dashboard/events" => self.events(shared),
            "/dashboard/decisions" => whole(no_store(decisions(shared, request.uri().query()))),
            _ => whole(text(
                StatusCode::NOT_FOUND,
                "not found; the dashboard is GET /dashboard, with /dashboard/state, /dashboard/events and /dashboard/decisions?limit=N\n".into(),
            )),
        };
        Some(answer)
    }
}

impl Dashboard {
    /// Everything the page shows but the decisions, as one JSON value.
    fn state(&self, shared: &Shared) -> Value {
        state(shared, &self.predictions, &self.streams)
    }

    /// `GET /dashboard/events`: the state now and every `EVENT_INTERVAL`, as server-sent
    /// events, until `STREAM_LIFETIME` is over or shutdown begins; 503 when
    /// `MAX_DASHBOARD_STREAMS` are open.
    fn events(&self, shared: &Arc<Shared>) -> Response<AdminBody> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many dashboard streams: {MAX_DASHBOARD_STREAMS} are open (MAX_DASHBOARD_STREAMS); close a dashboard tab, or poll GET /dashboard/state\n"
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            return whole(response);
        };
        let stream = EventStream {
            shared: shared.clone(),
            streams: self.streams.clone(),
            predictions: self.predictions.clone(),
            watcher: self.watcher.clone(),
            ticks: None,
            ends: tokio::time::Instant::now() + STREAM_LIFETIME,
            _permit: permit,
        };
        let events = futures_util::stream::unfold(stream, |mut stream| async move {
            let frame = stream.next_event().await?;
            Some((Ok::<_, Infallible>(Frame::data(frame)), stream))
        });
        let mut response = Response::new(StreamBody::new(events.boxed()).boxed_unsync());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// One open event stream; its permit is given back when the body is dropped (the page left,
/// the stream ended, or the connection closed).
struct EventStream {
    shared: Arc<Shared>,
    streams: Arc<Semaphore>,
    predictions: Arc<Mutex<Vec<Prediction>>>,
    watcher: PhaseWatcher,
    ticks: Option<tokio::time::Interval>,
    ends: tokio::time::Instant,
    _permit: OwnedSemaphorePermit,
}

impl EventStream {
    /// The next event's bytes; `None` ends the stream.
    async fn next_event(&mut self) -> Option<Bytes> {
        if self.watcher.is_at(Phase::Draining) {
            return None;
        }
        let prefix = match &mut self.ticks {
            // The first event goes at once, with how long to wait before reconnecting.
            None => {
                let mut ticks = tokio::time::interval(EVENT_INTERVAL);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                self.ticks = Some(ticks);
                "retry: 2000\n"
            }
            Some(ticks) => {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = self.watcher.reached(Phase::Draining) => return None,
                    _ = tokio::time::sleep_until(self.ends) => return None,
                }
                ""
            }
        };
        let state = state(&self.shared, &self.predictions, &self.streams);
        // One line of JSON: a `data:` field ends at a newline.
        let data = serde_json::to_string(&state).unwrap_or_default();
        Some(Bytes::from(format!(
            "{prefix}event: state\ndata: {data}\n\n"
        )))
    }
}

/// The path without a trailing slash (but `/` itself).
fn normal(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

/// A static file of the page: never framed (a framing page could trick a click on drain), its
/// script only from this origin.
fn page_file(
    content_type: &'static str,
    body: &'static str,
) -> Response<http_body_util::Full<Bytes>> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(
        body.as_bytes(),
    )));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn no_store(
    mut response: Response<http_body_util::Full<Bytes>>,
) -> Response<http_body_util::Full<Bytes>> {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The state: the pools, and how many of the streams are open.
fn state(shared: &Shared, predictions: &Mutex<Vec<Prediction>>, streams: &Semaphore) -> Value {
    let predictions = predictions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut state = pools_state(shared, &predictions);
    state["streams"] = json!({
        "open": MAX_DASHBOARD_STREAMS - streams.available_permits(),
        "max": MAX_DASHBOARD_STREAMS,
    });
    state
}

/// Rounds to the microsecond, for milliseconds shown to people.
fn ms(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

/// Each pool: its backends as the core sees them, its last seconds and the prediction.
fn pools_state(shared: &Shared, predictions: &[Prediction]) -> Value {
    let proxy = shared.current();
    let config = proxy.config().clone();
    let pools: Vec<Value> = proxy
        .pools()
        .iter()
        .map(|pool| {
            let now = pool.clock.now();
            let pool_config = config.pools.iter().find(|p| p.name == pool.name);
            let backends: Vec<Value> = pool
                .views()
                .iter()
                .map(|view| {
                    let mut backend = backend_json(view, now);
                    backend["ewma_ms"] = json!(ms(view.snapshot.ewma_ns / 1e6));
                    backend["ejections"] = json!(pool.ejections(&view.backend.label));
                    backend["warming"] = json!(view.snapshot.warming_since.is_some());
                    backend
                })
                .collect();
            let window = pool.window();
            let seconds = window.seconds(now, SERIES_SECONDS);
            let span = |seconds: usize| {
                let s = window.span(now, seconds);
                json!({
                    "seconds": s.seconds,
                    "requests": s.requests,
                    "errors": s.errors,
                    "rate_per_s": if s.seconds == 0 { 0.0 } else { (s.requests as f64 / s.seconds as f64 * 10.0).round() / 10.0 },
                    "p50_ms": s.p50_ms.map(ms),
                    "p99_ms": s.p99_ms.map(ms),
                })
            };
            let prediction = predictions.iter().find(|p| p.pool == pool.name);
            json!({
                "pool": pool.name,
                "policy": pool_config.map(|p| p.policy.name()),
                "health_checks": pool.health_check.is_some(),
                "in_flight": pool.in_flight(),
                "backends": backends,
                "last_minute": span(60),
                "last_5_minutes": span(SERIES_SECONDS),
                "series": {
                    "end_s": now.as_nanos() / 1_000_000_000,
                    "requests": seconds.iter().map(|s| s.requests).collect::<Vec<_>>(),
                    "errors": seconds.iter().map(|s| s.errors).collect::<Vec<_>>(),
                    "p50_ms": seconds.iter().map(|s| s.p50_ms.map(ms)).collect::<Vec<_>>(),
                    "p99_ms": seconds.iter().map(|s| s.p99_ms.map(ms)).collect::<Vec<_>>(),
                },
                "prediction": prediction.map(Prediction::to_json),
            })
        })
        .collect();
    let trace = config.trace.as_ref();
    json!({
        "pools": pools,
        "explain_ring_size": config.explain_ring_size,
        "auth": config.admin_token.is_some(),
        "trace": trace.map(|t| t.path.display().to_string()),
        "prediction_every_s": PREDICTION_INTERVAL.as_secs(),
        "time": crate::observe::access_log::rfc3339(std::time::SystemTime::now()),
    })
}

/// `GET /dashboard/decisions?limit=N`: the latest decisions, newest first, each as
/// `/explain/{id}` shows a try, with its request id.
fn decisions(shared: &Shared, query: Option<&str>) -> Response<http_body_util::Full<Bytes>> {
    let limit = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("limit="))
        .map_or(Ok(20), str::parse::<usize>);
    let Ok(limit) = limit else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("limit must be a number of decisions, 1 to {MAX_LISTED_DECISIONS}\n"),
        );
    };
    let limit = limit.clamp(1, MAX_LISTED_DECISIONS);
    let proxy = shared.current();
    let Some(ring) = proxy.explain() else {
        return json_response(
            StatusCode::OK,
            &json!({ "ring_size": 0, "decisions": [], "note": "explanations are off (explain_ring_size = 0)" }),
        );
    };
    let decisions: Vec<Value> = ring
        .latest(limit)
        .iter()
        .map(|entry| {
            let mut value = crate::admin::explain_try(&proxy, 0, entry);
            if let Some(object) = value.as_object_mut() {
                // Its place among its request's tries is not known without a search; `retry`
                // says whether it was the first.
                object.remove("try");
                object.insert(
                    "request_id".into(),
                    String::from_utf8_lossy(entry.request_id()).into(),
                );
            }
            value
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "ring_size": ring.size(), "decisions": decisions }),
    )
}
