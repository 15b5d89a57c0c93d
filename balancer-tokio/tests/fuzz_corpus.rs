//! The fuzz targets' bodies over their committed corpus (fuzz/corpus/), as ordinary tests:
//! a parser change that breaks an invariant on a seed or a past crash fails here, without
//! the fuzzer (docs/fuzzing.md).

use std::path::PathBuf;

/// Runs `target` on every file of fuzz/corpus/`name`; returns how many there were.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).expect("a corpus file");
        if std::panic::catch_unwind(|| target(&data)).is_err() {
            panic!("{name} failed on {}", file.display());
        }
    }
    files.len()
}

#[test]
fn request_head_corpus() {
    let count = replay("request_head", balancer_tokio::fuzzing::request_head);
    assert!(count >= 20, "{count} request heads");
}

#[test]
fn chunked_body_corpus() {
    let count = replay("chunked_body", balancer_tokio::fuzzing::chunked_body);
    assert!(count >= 5, "{count} chunked bodies");
}

#[test]
fn response_corpus() {
    let count = replay("response", balancer_tokio::fuzzing::response);
    assert!(count >= 10, "{count} responses");
}

#[test]
fn config_corpus() {
    let count = replay("config", balancer_tokio::fuzzing::config);
    assert!(count >= 5, "{count} configs");
}
