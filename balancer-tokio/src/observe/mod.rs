//! What the proxy tells about its traffic: metrics, the access log, the traffic trace and the
//! core's decision records. Everything here is written to, never asked for a decision.

pub mod access_log;
pub mod explain;
pub mod metrics;
pub mod trace;
