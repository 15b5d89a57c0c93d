//! HTTP helpers shared by every layer that speaks HTTP: header rewriting, the proxy's own
//! error answers, and the client's request body as it arrives.

pub mod body;
pub mod errors;
pub mod headers;
