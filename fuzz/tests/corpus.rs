//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every input that once failed a target
//! (`fuzz/regressions/<target>/`) through the targets, so `cargo test` keeps them fixed without a fuzzer.

#![allow(clippy::unwrap_used)]

use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_returns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, target) in ferroserve_fuzz::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} holds no seeds");
        for (path, data) in corpus.iter().chain(&inputs(&root.join("regressions").join(name))) {
            // A panic names the file that caused it.
            let outcome = std::panic::catch_unwind(|| target(data));
            assert!(outcome.is_ok(), "{path} made the `{name}` target panic");
        }
    }
}
