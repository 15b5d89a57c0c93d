//! Balancing: each pool's core scheduler behind its lock, the backend table beside it, active
//! health checks, and the guard that reports every try's done exactly once. It knows
//! backends and their connections, never the server or the client's connection.

pub mod done;
pub mod health;
pub mod pool;
