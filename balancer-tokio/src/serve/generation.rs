//! The config generation in force: what every connection reads at each request, and the
//! reload that checks a new config and swaps it in atomically.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use super::settings::connection_builder;
use crate::balance::pool::PoolError;
use crate::config::{Config, ConfigError};
use crate::forward::proxy::Proxy;
use crate::observe::metrics::ReloadLabels;

/// Why a reload was refused (the config in force keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The balancer was not started from a file.
    #[error("nothing to reload: the balancer was not started from a config file")]
    NoFile,
    /// The file is not a valid config: the same message `balancer check` prints.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new config changes what only a restart can change.
    #[error(
        "{path}: {what} changed; a reload cannot rebind sockets, restart the balancer to apply it"
    )]
    NeedsRestart {
        /// The file.
        path: String,
        /// What changed.
        what: &'static str,
    },
    /// A pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// One config generation as connections see it: the proxy, and the client connection
/// settings made from its limits.
pub(super) struct Generation {
    pub(super) proxy: Arc<Proxy>,
    pub(super) builder: auto::Builder<TokioExecutor>,
}

impl Generation {
    fn new(proxy: Arc<Proxy>) -> Arc<Generation> {
        let builder = connection_builder(proxy.limits());
        Arc::new(Generation { proxy, builder })
    }
}

/// What every connection shares: the config generation in force (swapped atomically by a
/// reload) and what a reload needs.
pub struct Shared {
    generation: ArcSwap<Generation>,
    config_path: Option<PathBuf>,
    /// One reload at a time: two concurrent ones would both diff against the same generation.
    reload_lock: Mutex<()>,
}

impl Shared {
    /// Serves `proxy` until a reload, which re-reads `config_path` (none: reloads are refused).
    pub fn new(proxy: Arc<Proxy>, config_path: Option<PathBuf>) -> Shared {
        Shared {
            generation: ArcSwap::new(Generation::new(proxy)),
            config_path,
            reload_lock: Mutex::new(()),
        }
    }

    /// The config generation in force.
    pub fn current(&self) -> Arc<Proxy> {
        self.generation.load().proxy.clone()
    }

    /// The generation in force with its connection settings, for a connection to start with.
    pub(super) fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Re-reads the config file, validates it and swaps it in; on any error the config in
    /// force keeps serving. Returns the new config's summary.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.reload_locked();
        let metrics = self.current().metrics().clone();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics
            .reloads
            .get_or_create(&ReloadLabels { result: outcome })
            .inc();
        match &result {
            Ok(summary) => tracing::info!(%summary, "config reloaded"),
            Err(err) => {
                tracing::error!(%err, "config reload refused; the previous config keeps serving")
            }
        }
        result
    }

    fn reload_locked(&self) -> Result<String, ReloadError> {
        let path = self.config_path.as_deref().ok_or(ReloadError::NoFile)?;
        let config = Config::load(path)?;
        let old = self.current();
        let shown = path.display().to_string();
        let old_config = old.config();
        let same_listeners = old_config.listeners.len() == config.listeners.len()
            && old_config
                .listeners
                .iter()
                .zip(&config.listeners)
                .all(|(a, b)| {
                    a.name == b.name
                        && a.address == b.address
                        && a.max_connections == b.max_connections
                });
        if !same_listeners {
            return Err(ReloadError::NeedsRestart {
                path: shown,
                what: "the listeners",
            });
        }
        if old_config.worker_count() != config.worker_count() {
            return Err(ReloadError::NeedsRestart {
                path: shown,
                what: "the worker count",
            });
        }
        if old_config.admin != config.admin {
            return Err(ReloadError::NeedsRestart {
                path: shown,
                what: "the admin address",
            });
        }
        let changed = crate::config::changed_keys(
            &crate::config::config_json(old_config),
            &crate::config::config_json(&config),
        );
        let new = Arc::new(Proxy::reload(&config, &old)?);
        new.start_tasks();
        self.generation.store(Generation::new(new));
        // Requests in flight keep the old generation alive until they finish; its background
        // work stops now (the new generation probes the same backends).
        old.retire();
        let changed = if changed.is_empty() {
            "nothing".to_owned()
        } else {
            changed.join(", ")
        };
        Ok(format!("{}; changed: {changed}", config.summary()))
    }
}
