//! The file format: exactly what a TOML file says, with source spans so that errors can point
//! at a line and column.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::types::AccessLogFormat;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) listeners: Vec<RawListener>,
    pub(super) backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub(super) policy: Option<Spanned<String>>,
    pub(super) hash: Option<Spanned<RawHash>>,
    #[serde(default)]
    pub(super) pools: BTreeMap<Spanned<String>, RawPool>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    pub(super) access_log: Option<AccessLogFormat>,
    pub(super) access_log_path: Option<Spanned<PathBuf>>,
    pub(super) trusted_proxies: Option<Spanned<Vec<String>>>,
    pub(super) admin_token_file: Option<Spanned<PathBuf>>,
    pub(super) admin_unauthenticated: Option<bool>,
    pub(super) shutdown_grace_ms: Option<u64>,
    pub(super) header_read_timeout_ms: Option<Spanned<u64>>,
    pub(super) body_read_timeout_ms: Option<Spanned<u64>>,
    pub(super) max_header_bytes: Option<Spanned<usize>>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) admin: Option<Spanned<String>>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) explain_ring_size: Option<Spanned<usize>>,
    pub(super) journal_size: Option<Spanned<usize>>,
    pub(super) trace: Option<Spanned<RawTrace>>,
    pub(super) workers: Option<Spanned<usize>>,
    pub(super) path_normalization: Option<RawPathNormalization>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPathNormalization {
    pub(super) decode_unreserved: Option<bool>,
    pub(super) merge_slashes: Option<bool>,
    pub(super) remove_dot_segments: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrace {
    pub(super) path: Spanned<PathBuf>,
    pub(super) max_bytes: Option<u64>,
    pub(super) max_files: Option<u32>,
}

/// `hash = { key = "header:NAME", load_factor = 1.25 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHash {
    pub(super) key: Spanned<String>,
    /// A number (at least 1.0) or the word "unbounded".
    pub(super) load_factor: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) global: Option<Spanned<RawRate>>,
    pub(super) per_client: Option<Spanned<RawRate>>,
    pub(super) max_tracked_clients: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    pub(super) rate_per_s: u32,
    pub(super) burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) path: Option<Spanned<String>>,
    pub(super) interval_ms: Option<Spanned<u64>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) expected_status: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub(super) consecutive_failures: Option<Spanned<u32>>,
    pub(super) base_ejection_ms: Option<u64>,
    pub(super) max_ejection_ms: Option<u64>,
    pub(super) max_ejected_percent: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) max_retries: Option<Spanned<u32>>,
    pub(super) retry_non_idempotent: Option<bool>,
    pub(super) retry_on_503: Option<bool>,
    pub(super) retry_on_status: Option<Spanned<Vec<u16>>>,
    pub(super) budget_ratio: Option<Spanned<f64>>,
    pub(super) budget_min_per_s: Option<u32>,
    pub(super) budget_window_ms: Option<Spanned<u64>>,
    pub(super) backoff_base_ms: Option<u64>,
    pub(super) backoff_max_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlowStart {
    pub(super) window_ms: Spanned<u64>,
    pub(super) min_weight_percent: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<String>,
    pub(super) address: Spanned<String>,
    pub(super) max_connections: Option<Spanned<usize>>,
}

/// A backend is `"host:port"` or `{ address = "host:port", weight = N }`.
pub(super) enum RawBackend {
    Address(String),
    Weighted(RawWeightedBackend),
}

// Written by hand rather than `#[serde(untagged)]` so that a mistake inside the table form
// (e.g. a misspelt key) is reported as such instead of "did not match any variant".
impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawBackend;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Address(value.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawBackend, A::Error> {
                RawWeightedBackend::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawBackend::Weighted)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeightedBackend {
    pub(super) address: String,
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) policy: Option<Spanned<String>>,
    pub(super) hash: Option<Spanned<RawHash>>,
    pub(super) seed: Option<u64>,
    pub(super) backends: Spanned<Vec<Spanned<RawBackend>>>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) response_header_timeout_ms: Option<u64>,
    pub(super) response_body_idle_timeout_ms: Option<u64>,
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) max_idle_per_backend: Option<usize>,
    pub(super) max_in_flight: Option<u32>,
    pub(super) max_pending_per_backend: Option<Spanned<u32>>,
    pub(super) request_timeout_ms: Option<Spanned<u64>>,
    pub(super) health_check: Option<RawHealthCheck>,
    pub(super) outlier: Option<RawOutlier>,
    pub(super) retry: Option<RawRetry>,
    pub(super) slow_start: Option<RawSlowStart>,
    pub(super) panic_threshold_percent: Option<Spanned<u8>>,
    pub(super) failure_status: Option<Spanned<Vec<u16>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) path_prefix: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<u16>>,
    pub(super) pool: Spanned<String>,
    pub(super) rate_limit: Option<Spanned<RawRate>>,
}
