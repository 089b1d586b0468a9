//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every input that once failed a target
//! (`fuzz/regressions/<target>/`) through the targets, so `cargo test` keeps them fixed without a fuzzer. An
//! input that panics or runs past [`LIMIT`] is named; one that aborts the process (a stack overflow) takes the
//! test binary down with it, and is the newest file in `fuzz/regressions/`, where `scripts/fuzz` put it.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Longest one input may take (AFL++'s hang limit in `scripts/fuzz` is 5 s, in a release build).
const LIMIT: Duration = Duration::from_secs(30);

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
    for &(name, target) in ferroserve_fuzz::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} holds no seeds");
        let all: Vec<_> = corpus.into_iter().chain(inputs(&root.join("regressions").join(name))).collect();
        // One thread per target runs its inputs in turn and reports each as it finishes, so a hang is named.
        let (done, finished) = mpsc::channel();
        let paths: Vec<String> = all.iter().map(|(path, _)| path.clone()).collect();
        // AFL++ runs the targets on a main thread's 8 MiB stack: the same here, so depth limits are the same.
        let runner = std::thread::Builder::new().stack_size(8 << 20);
        runner
            .spawn(move || {
                for (path, data) in all {
                    let outcome = std::panic::catch_unwind(|| target(&data));
                    if done.send((path, outcome.is_ok())).is_err() {
                        return;
                    }
                }
            })
            .unwrap();
        for expected in paths {
            match finished.recv_timeout(LIMIT) {
                Ok((path, returned)) => assert!(returned, "{path} made the `{name}` target panic"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{expected} ran the `{name}` target for more than {LIMIT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the `{name}` runner stopped at {expected}"),
            }
        }
    }
}
