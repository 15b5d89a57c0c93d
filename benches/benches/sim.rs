//! Criterion benchmark of the simulator (being built: see issue 4).
fn main() {}
