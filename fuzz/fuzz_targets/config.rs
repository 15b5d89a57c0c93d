//! Fuzz target: `balancer_tokio::fuzzing::config` (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer_tokio::fuzzing::config(data));
