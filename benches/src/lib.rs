//! Criterion benchmarks of the core and the simulator; see `benches/`.
