//! Deterministic discrete-event simulator that drives balancer-core (being built: see issue 4).
#![deny(unsafe_code)]
