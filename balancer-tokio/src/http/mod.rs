//! HTTP helpers shared by every layer that speaks HTTP: header rewriting, the proxy's own
//! error answers, the client's request body as it arrives, and consistent-hash keys.

pub mod affinity;
pub mod body;
pub mod errors;
pub mod headers;
