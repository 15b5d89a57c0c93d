//! The effective config (every default filled in) as JSON, and what changed between two.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::types::{Config, Rate};

/// The effective config (every default filled in) as JSON.
pub fn config_json(config: &Config) -> Value {
    let rate = |r: Option<Rate>| r.map(|r| json!({ "rate_per_s": r.rate_per_s, "burst": r.burst }));
    json!({
        "admin": config.admin.map_or_else(|| "off".to_owned(), |a: SocketAddr| a.to_string()),
        "access_log": format!("{:?}", config.access_log).to_lowercase(),
        "access_log_path": config.access_log_path.as_ref().map(|p| p.display().to_string()),
        "trusted_proxies": config.trusted_proxies.as_ref().map(|nets| nets.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "admin_token_file": if config.admin_token.is_some() { "set" } else { "none" },
        "explain_ring_size": config.explain_ring_size,
        "journal_size": config.journal_size,
        "trace": config.trace.as_ref().map(|t| json!({
            "path": t.path.display().to_string(),
            "max_bytes": t.max_bytes,
            "max_files": t.max_files,
        })),
        "shutdown_grace_ms": config.shutdown_grace_ms,
        "workers": config.worker_count(),
        "header_read_timeout_ms": config.limits.header_read_timeout_ms,
        "body_read_timeout_ms": config.limits.body_read_timeout_ms,
        "path_normalization": {
            "decode_unreserved": config.path_normalization.decode_unreserved,
            "merge_slashes": config.path_normalization.merge_slashes,
            "remove_dot_segments": config.path_normalization.remove_dot_segments,
        },
        "max_header_bytes": config.limits.max_header_bytes,
        "max_body_bytes": config.limits.max_body_bytes,
        "listeners": config.listeners.iter().map(|l| json!({
            "name": l.name,
            "address": l.address.to_string(),
            "max_connections": l.max_connections,
        })).collect::<Vec<_>>(),
        "rate_limit": {
            "global": rate(config.rate_limit.global),
            "per_client": rate(config.rate_limit.per_client),
            "max_tracked_clients": config.rate_limit.max_tracked_clients,
        },
        "pools": config.pools.iter().map(pool_json).collect::<Vec<_>>(),
        "routes": config.routes.iter().map(|r| json!({
            "name": r.name,
            "host": r.host.as_config(),
            "path_prefix": r.path_prefix,
            "port": r.port,
            "pool": config.pools[r.pool].name,
            "rate_limit": rate(r.rate_limit),
        })).collect::<Vec<_>>(),
    })
}

fn pool_json(p: &super::types::PoolConfig) -> Value {
    let ms = |d: Duration| d.as_millis() as u64;
    json!({
            "name": p.name,
            "policy": p.policy.name(),
            "seed": p.seed,
            "backends": p.backends.iter().map(|b| json!({ "address": b.address, "weight": b.weight })).collect::<Vec<_>>(),
            "connect_timeout_ms": p.connect_timeout_ms,
            "response_header_timeout_ms": p.response_header_timeout_ms,
            "response_body_idle_timeout_ms": p.response_body_idle_timeout_ms,
            "request_timeout_ms": p.request_timeout_ms,
            "idle_timeout_ms": p.idle_timeout_ms,
            "max_idle_per_backend": p.max_idle_per_backend,
            "max_in_flight": p.max_in_flight,
            "max_pending_per_backend": p.max_pending_per_backend,
            "health_check": p.health_check.as_ref().map(|h| json!({
                "path": h.path,
                "interval_ms": h.interval_ms,
                "timeout_ms": h.timeout_ms,
                "rise": h.rise,
                "fall": h.fall,
                "expected_status": format!("{}-{}", h.expected_status_min, h.expected_status_max),
            })),
            "outlier": p.outlier.map(|o| json!({
                "consecutive_failures": o.consecutive_failures,
                "base_ejection_ms": ms(o.base_ejection),
                "max_ejection_ms": ms(o.max_ejection),
                "max_ejected_percent": o.max_ejected_percent,
            })),
            "retry": p.retry.map_or_else(|| json!({ "max_retries": 0 }), |r| json!({
                "max_retries": r.max_retries,
                "retry_non_idempotent": r.retry_non_idempotent,
                "retry_on_503": r.retry_on_status.contains(503),
                "retry_on_status": r.retry_on_status.iter().collect::<Vec<_>>(),
                "budget_ratio": r.budget_ratio,
                "budget_min_per_s": r.budget_min_per_s,
                "budget_window_ms": ms(r.budget_window),
                "backoff_base_ms": ms(r.backoff_base),
                "backoff_max_ms": ms(r.backoff_max),
            })),
            "slow_start": p.slow_start.map(|s| json!({
                "window_ms": s.window_ms,
                "min_weight_percent": s.min_weight_percent,
            })),
            "panic_threshold_percent": p.panic_threshold_percent,
            "failure_status": p.failure_status.iter().collect::<Vec<_>>(),
            "hash": p.hash.as_ref().map(|h| json!({
                "key": h.key.as_config(),
                "load_factor": h.load_factor.map_or_else(|| json!("unbounded"), |f| json!(f)),
            })),
    })
}

/// Where `new` differs from `old`, as dotted key paths (`pools.web.retry.max_retries`,
/// `rate_limit.global`), keys in alphabetical order, named tables in `new`'s order. Lists of named tables (pools, routes,
/// listeners) are matched by name, so reordering them is no change, and an added or removed
/// one is named as such.
pub fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let mut changed = Vec::new();
    diff(old, new, &mut String::new(), &mut changed);
    changed
}

fn diff(old: &Value, new: &Value, path: &mut String, changed: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old_map), Value::Object(new_map)) => {
            for (key, new_value) in new_map {
                let mark = path.len();
                push_key(path, key);
                match old_map.get(key) {
                    Some(old_value) => diff(old_value, new_value, path, changed),
                    None => changed.push(format!("{path} (new)")),
                }
                path.truncate(mark);
            }
            for key in old_map.keys().filter(|k| !new_map.contains_key(*k)) {
                let mark = path.len();
                push_key(path, key);
                changed.push(format!("{path} (removed)"));
                path.truncate(mark);
            }
        }
        (Value::Array(old_list), Value::Array(new_list)) => match list_key(old_list, new_list) {
            Some(field) => diff_keyed(old_list, new_list, field, path, changed),
            None if old != new => changed.push(path.clone()),
            None => {}
        },
        (old, new) if old != new => changed.push(path.clone()),
        _ => {}
    }
}

/// The field that names the items of both lists (`name` for pools, routes and listeners,
/// `address` for backends), if every item has it.
fn list_key(old: &[Value], new: &[Value]) -> Option<&'static str> {
    ["name", "address"].into_iter().find(|field| {
        old.iter()
            .chain(new)
            .all(|v| v.get(*field).is_some_and(Value::is_string))
    })
}

/// Lists of items named by `field`, matched by that name.
fn diff_keyed(
    old_list: &[Value],
    new_list: &[Value],
    field: &str,
    path: &mut String,
    changed: &mut Vec<String>,
) {
    let name = |v: &Value| v[field].as_str().unwrap_or_default().to_owned();
    let find = |list: &'_ [Value], wanted: &str| list.iter().position(|v| name(v) == wanted);
    for new_item in new_list {
        let item = name(new_item);
        let mark = path.len();
        push_item(path, field, &item);
        match find(old_list, &item) {
            Some(i) => diff(&old_list[i], new_item, path, changed),
            None => changed.push(format!("{path} (new)")),
        }
        path.truncate(mark);
    }
    for old_item in old_list {
        let item = name(old_item);
        if find(new_list, &item).is_none() {
            let mark = path.len();
            push_item(path, field, &item);
            changed.push(format!("{path} (removed)"));
            path.truncate(mark);
        }
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// `pools.web` for a named table; `backends[10.0.0.1:80]` for an address, whose dots would
/// read as key separators.
fn push_item(path: &mut String, field: &str, item: &str) {
    if field == "address" {
        path.push('[');
        path.push_str(item);
        path.push(']');
    } else {
        push_key(path, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_by_path_and_named_tables_by_name() {
        let old = json!({
            "workers": 2,
            "rate_limit": { "global": null },
            "pools": [
                { "name": "web", "policy": "p2c", "retry": { "max_retries": 1 } },
                { "name": "api", "policy": "p2c", "backends": [
                    { "address": "10.0.0.1:80", "weight": 1 },
                    { "address": "10.0.0.2:80", "weight": 1 },
                ] },
            ],
        });
        let new = json!({
            "workers": 2,
            "rate_limit": { "global": { "rate_per_s": 10, "burst": 10 } },
            "pools": [
                { "name": "api", "policy": "p2c", "backends": [
                    { "address": "10.0.0.2:80", "weight": 3 },
                    { "address": "10.0.0.3:80", "weight": 1 },
                ] },
                { "name": "web", "policy": "p2c", "retry": { "max_retries": 2 } },
                { "name": "img", "policy": "random" },
            ],
        });
        assert_eq!(
            changed_keys(&old, &new),
            [
                "pools.api.backends[10.0.0.2:80].weight",
                "pools.api.backends[10.0.0.3:80] (new)",
                "pools.api.backends[10.0.0.1:80] (removed)",
                "pools.web.retry.max_retries",
                "pools.img (new)",
                "rate_limit.global"
            ]
        );
        assert!(changed_keys(&new, &new).is_empty());
        assert!(changed_keys(&new, &old).contains(&"pools.img (removed)".to_owned()));
    }
}
