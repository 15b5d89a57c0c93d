//! The TOML configuration: its file format (serde, unknown keys rejected) and semantic validation.
//!
//! Two layers: `RawConfig` is exactly what the file says (with source spans so errors can point
//! at a line and column), [`Config`] is the validated form the server runs from.
//!
//! Split by stage: `raw` is the file format, `validate` turns it into the plain data of
//! `types`, which is all the rest of the crate reads. This is the lowest layer but one
//! (only `runtime` is below): it names no other module of the crate.

use std::path::Path;

pub mod defaults;
mod describe;
mod hints;
mod host;
mod raw;
mod types;
mod validate;

pub use host::HostPattern;
pub use types::{
    AccessLogFormat, BackendConfig, Config, HashConfig, HashKeySource, HealthCheck, Limits,
    ListenerConfig, PathNormalization, PoolConfig, Rate, RateLimitConfig, RouteConfig, SlowStart,
    TraceConfig,
};

pub use describe::{changed_keys, config_json};
use raw::RawConfig;
use validate::{Errors, validate};

/// Why a configuration was refused. Every message names the file and, when it can, the line and
/// column, and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why (the OS error, in words; kept as text so it is printed once).
        reason: String,
    },
    /// The file is not valid, at a known place.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what to change.
        message: String,
    },
    /// The file is not valid as a whole (e.g. nothing to listen on).
    #[error("{path}: {message}")]
    Whole {
        /// The file.
        path: String,
        /// What is wrong and what to change.
        message: String,
    },
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: shown.clone(),
            reason: err.to_string(),
        })?;
        Config::from_toml_str(&text, &shown)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn from_toml_str(text: &str, path: &str) -> Result<Config, ConfigError> {
        let errors = Errors { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|err| {
            let message = hints::rewrite(err.message().trim_end(), text, err.span());
            match err.span() {
                Some(span) => errors.at(span, message),
                None => ConfigError::Whole {
                    path: path.to_owned(),
                    message,
                },
            }
        })?;
        validate(raw, &errors)
    }

    /// Threads serving traffic: `workers`, or one per CPU this process may run on (its
    /// affinity mask and cgroup quota count, so `taskset -c 0` gives 1).
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(defaults::MAX_WORKERS)
        })
    }

    /// A one-line summary for `balancer check`.
    pub fn summary(&self) -> String {
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| l.address.to_string())
            .collect();
        format!(
            "{} listener(s) [{}], {} pool(s) with {} backend(s), {} route(s)",
            self.listeners.len(),
            listeners.join(", "),
            self.pools.len(),
            backends,
            self.routes.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use balancer_core::PolicyKind;

    use super::validate::line_column;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    #[test]
    fn consistent_hash_takes_a_key_and_a_load_factor() {
        let base =
            "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\npolicy = \"consistent-hash\"\n";
        let config = parse(&format!("{base}hash = {{ key = \"cookie:sid\" }}")).unwrap();
        let hash = config.pools[0].hash.clone().expect("the short form's hash");
        assert_eq!(hash.key, HashKeySource::Cookie("sid".into()));
        assert_eq!(
            hash.load_factor,
            Some(balancer_core::DEFAULT_HASH_LOAD_FACTOR)
        );
        let unbounded = parse(&format!(
            "{base}hash = {{ key = \"header:X-User\", load_factor = \"unbounded\" }}"
        ))
        .unwrap();
        let hash = unbounded.pools[0].hash.clone().unwrap();
        assert_eq!(hash.key.as_config(), "header:x-user");
        assert_eq!(hash.load_factor, None);
        for (text, needle) in [
            (base.to_owned(), "consistent-hash needs the key to hash"),
            (
                format!("{base}hash = {{ key = \"colour\" }}"),
                "unknown hash key \"colour\"; write one of",
            ),
            (
                format!("{base}hash = {{ key = \"path\", load_factor = 0.5 }}"),
                "load_factor must be 1.0 to 100",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\nhash = { key = \"path\" }"
                    .to_owned(),
                "`hash` is for policy = \"consistent-hash\"",
            ),
        ] {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn path_normalization_steps_are_switched_one_by_one() {
        let base = "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\n";
        assert_eq!(
            parse(base).unwrap().path_normalization,
            PathNormalization::default()
        );
        let config = parse(&format!(
            "{base}path_normalization = {{ merge_slashes = false }}"
        ))
        .unwrap();
        assert_eq!(
            config.path_normalization,
            PathNormalization {
                merge_slashes: false,
                ..PathNormalization::default()
            }
        );
        let err = parse(&format!(
            "{base}path_normalization = {{ merge_slash = false }}"
        ))
        .expect_err("unknown step")
        .to_string();
        assert!(err.contains("did you mean `merge_slashes`?"), "{err}");
    }

    #[test]
    fn an_endless_admin_token_file_is_refused_not_read_forever() {
        let err = parse(
            "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\nadmin_token_file = \"/dev/zero\"",
        )
        .expect_err("/dev/zero is no token")
        .to_string();
        assert!(err.contains("longer than 4096 bytes"), "{err}");
    }

    #[test]
    fn a_log_or_trace_in_a_missing_directory_is_refused_with_the_fix() {
        for text in [
            "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\n[trace]\npath = \"/no/such/dir/t\"",
            "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\naccess_log_path = \"/no/such/dir/a\"",
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(
                err.contains("the directory /no/such/dir does not exist")
                    && err.contains("mkdir -p /no/such/dir"),
                "{text:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn minimal_file_makes_one_pool_and_a_catch_all_route() {
        let config = parse(
            "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n",
        )
        .unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.pools[0].backends.len(), 2);
        assert_eq!(config.pools[0].policy, PolicyKind::LeastPending);
        assert_eq!(config.routes.len(), 1);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err = parse(
            "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9001\"]\nlisten_port = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.toml:3:1: unknown key `listen_port`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_pool_in_route_is_an_error_at_its_place() {
        let err = parse(
            "listen = \"127.0.0.1:8080\"\n[pools.a]\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\npool = \"b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.toml:5:8: route refers to unknown pool \"b\""),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_are_reported() {
        let cases = [
            (
                "listen = \"localhost:80\"\nbackends = [\"a:1\"]",
                "bad listen address",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = []",
                "has no backends",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"nope\"]",
                "missing :PORT",
            ),
            (
                "[[listeners]]\naddress = \"127.0.0.1:80\"\n[[listeners]]\naddress = \"127.0.0.1:80\"\n[pools.p]\nbackends = [\"a:1\"]",
                "duplicate listener address",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\npolicy = \"fastest\"",
                "unknown policy",
            ),
            (
                "listen = \"127.0.0.1:80\"\n[pools.a]\nbackends = [\"a:1\"]\n[pools.b]\nbackends = [\"b:1\"]",
                "no [[routes]]",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\n[[routes]]\npool = \"default\"\nport = 81",
                "matches no listener",
            ),
            ("backends = [\"a:1\"]", "nothing to listen on"),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [{ address = \"a:1\", weight = 0 }]",
                "weight",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [{ adress = \"a:1\" }]",
                "unknown key `adress`; did you mean `address`?",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [3]",
                "expected \"host:port\"",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\nmax_header_bytes = 100",
                "at least 8192",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{text:?} gave {err:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn issue_6_keys_parse_with_their_defaults() {
        let config = parse(
            r#"
listen = "127.0.0.1:8080"
admin = "127.0.0.1:9999"
[rate_limit]
global = { rate_per_s = 1000 }
per_client = { rate_per_s = 10, burst = 20 }
max_tracked_clients = 500
[pools.web]
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
max_pending_per_backend = 100
request_timeout_ms = 5000
panic_threshold_percent = 50
health_check = { path = "/healthz", expected_status = "200" }
outlier = { consecutive_failures = 3 }
retry = { retry_on_503 = true }
slow_start = { window_ms = 30000 }
[[routes]]
pool = "web"
rate_limit = { rate_per_s = 5 }
"#,
        )
        .unwrap();
        assert_eq!(config.admin, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(
            config.rate_limit.global,
            Some(Rate {
                rate_per_s: 1000,
                burst: 1000
            })
        );
        assert_eq!(config.rate_limit.max_tracked_clients, 500);
        let pool = &config.pools[0];
        assert_eq!(pool.max_pending_per_backend, Some(100));
        assert_eq!(pool.request_timeout_ms, 5000);
        assert_eq!(pool.panic_threshold_percent, Some(50));
        let check = pool.health_check.as_ref().unwrap();
        assert_eq!(check.path, "/healthz");
        assert_eq!(
            (check.expected_status_min, check.expected_status_max),
            (200, 200)
        );
        assert_eq!((check.interval_ms, check.rise, check.fall), (2000, 2, 3));
        assert_eq!(pool.outlier.unwrap().consecutive_failures, 3);
        assert_eq!(pool.outlier.unwrap().max_ejected_percent, 50);
        let retry = pool.retry.unwrap();
        assert!(retry.retry_on_status.contains(503) && !retry.retry_non_idempotent);
        assert_eq!(retry.max_retries, 2);
        assert_eq!(pool.slow_start.unwrap().min_weight_percent, 10);
        assert_eq!(config.routes[0].rate_limit.unwrap().burst, 5);

        let defaults = parse("listen = \"127.0.0.1:8080\"\nbackends = [\"a:1\"]\n").unwrap();
        assert_eq!(defaults.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert!(
            defaults.pools[0].retry.is_some(),
            "retries are on by default"
        );
        assert!(defaults.pools[0].outlier.is_none() && defaults.pools[0].health_check.is_none());
        let off = parse(
            "listen = \"127.0.0.1:8080\"\nadmin = \"off\"\n[pools.p]\nbackends = [\"a:1\"]\nretry = { max_retries = 0 }\n",
        )
        .unwrap();
        assert_eq!(off.admin, None);
        assert!(off.pools[0].retry.is_none());
    }

    #[test]
    fn issue_6_keys_are_validated() {
        let pool = "listen = \"127.0.0.1:80\"\n[pools.p]\nbackends = [\"a:1\"]\n";
        let cases = [
            (
                "health_check = { expected_status = \"600\" }",
                "bad expected_status",
            ),
            (
                "health_check = { path = \"healthz\" }",
                "must start with '/'",
            ),
            (
                "health_check = { interval_ms = 0 }",
                "interval_ms must be at least 1",
            ),
            ("health_check = { rise = 0 }", "rise must be at least 1"),
            ("outlier = { max_ejected_percent = 101 }", "0-100"),
            ("outlier = { consecutive_failures = 0 }", "at least 1"),
            ("retry = { max_retries = 11 }", "at most 10"),
            ("retry = { budget_ratio = -1.0 }", "budget_ratio"),
            ("retry = { tries = 3 }", "unknown key `tries`"),
            ("max_pending_per_backend = 0", "at least 1"),
            ("request_timeout_ms = 0", "at least 1"),
            ("panic_threshold_percent = 101", "0-100"),
            ("slow_start = { window_ms = 0 }", "window_ms"),
            (
                "slow_start = { window_ms = 10, min_weight_percent = 0 }",
                "1-100",
            ),
        ];
        for (line, expected) in cases {
            let text = format!("{pool}{line}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{line:?} gave {err:?}, expected {expected:?}"
            );
            assert!(
                err.starts_with("test.toml:4:"),
                "{line:?} gave {err:?}: no line 4"
            );
        }
        let top = [
            ("admin = \"localhost:1\"", "bad admin address"),
            ("admin = \"127.0.0.1:80\"", "also a listener's"),
            (
                "rate_limit = { per_client = { rate_per_s = 0 } }",
                "rate_per_s must be at least 1",
            ),
            ("rate_limit = { max_tracked_clients = 0 }", "at least 1"),
            (
                "explain_ring_size = 2000000",
                "explain_ring_size must be at most",
            ),
            (
                "trace = { path = \"t\", max_bytes = 10 }",
                "max_bytes must be at least 1024",
            ),
            (
                "trace = { path = \"t\", max_files = 0 }",
                "max_files must be 1 to 100",
            ),
            ("trace = { path = \"\" }", "trace.path must name a file"),
            ("workers = 0", "workers must be 1 to 256"),
            ("workers = 257", "workers must be 1 to 256"),
            ("trace = { max_files = 2 }", "missing field `path`"),
        ];
        for (line, expected) in top {
            let text = format!("listen = \"127.0.0.1:80\"\n{line}\nbackends = [\"a:1\"]\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{line:?} gave {err:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn explain_and_trace_defaults_and_values() {
        let plain = parse("listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\n").unwrap();
        assert_eq!(plain.explain_ring_size, 4096);
        assert_eq!(plain.workers, None);
        assert!((1..=defaults::MAX_WORKERS).contains(&plain.worker_count()));
        assert_eq!(plain.trace, None);
        let set = parse(
            "listen = \"127.0.0.1:80\"\nexplain_ring_size = 0\nbackends = [\"a:1\"]\n\
             [trace]\npath = \"/tmp/t\"\n",
        )
        .unwrap();
        assert_eq!(set.explain_ring_size, 0);
        let four = parse("listen = \"127.0.0.1:80\"\nworkers = 4\nbackends = [\"a:1\"]\n").unwrap();
        assert_eq!((four.workers, four.worker_count()), (Some(4), 4));
        assert_eq!(
            set.trace,
            Some(TraceConfig {
                path: "/tmp/t".into(),
                max_bytes: 100 * 1024 * 1024,
                max_files: 3,
            })
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn an_admin_api_beyond_loopback_needs_a_token_or_an_explicit_word() {
        let text = |extra: &str| {
            format!(
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\nadmin = \"0.0.0.0:9901\"\n{extra}"
            )
        };
        let err = Config::from_toml_str(&text(""), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin_token_file") && err.contains("admin_unauthenticated"),
            "{err}"
        );
        assert!(Config::from_toml_str(&text("admin_unauthenticated = true\n"), "t.toml").is_ok());
        let dir = std::env::temp_dir().join(format!("admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short.token");
        std::fs::write(&short, "abc\n").unwrap();
        let err = Config::from_toml_str(
            &text(&format!(
                "admin_token_file = {:?}\n",
                short.display().to_string()
            )),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least 16"), "{err}");
        let good = dir.join("good.token");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let config = Config::from_toml_str(
            &text(&format!(
                "admin_token_file = {:?}\n",
                good.display().to_string()
            )),
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef0123"));
        let missing = Config::from_toml_str(
            &text("admin_token_file = \"/nonexistent/admin.token\"\n"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("cannot read it"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
