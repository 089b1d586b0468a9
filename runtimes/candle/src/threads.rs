//! Intra-op threads of one instance: a rayon pool of its own.
//!
//! candle's CPU kernels (the `gemm` matmuls, softmax, reductions) and the tokenizer's batch encoding split
//! their work on rayon's *current* pool. Left alone that is rayon's global pool, one per process: every
//! instance of every model would share it, and `intra_op_thread_count` would mean nothing. So each instance
//! runs its work inside a pool of exactly the configured size, and N instances of T threads use N × T
//! threads, as with the ONNX runtime's intra-op threads.

use ferroserve_runtime::RuntimeError;

/// Where an instance's parallel work runs.
#[derive(Debug)]
pub(crate) struct IntraOp {
    /// `None`: no count configured (0), so rayon's global pool, sized by `RAYON_NUM_THREADS` or the cores.
    pool: Option<rayon::ThreadPool>,
}

impl IntraOp {
    /// A pool of `threads` threads named after the calling (instance) thread; 0 means the global pool.
    pub(crate) fn new(threads: usize) -> Result<Self, RuntimeError> {
        if threads == 0 {
            return Ok(IntraOp { pool: None });
        }
        let owner = std::thread::current().name().unwrap_or("candle").to_string();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("{owner}-op{i}"))
            .build()
            .map_err(|e| RuntimeError::Execution(format!("cannot start {threads} intra-op threads: {e}")))?;
        Ok(IntraOp { pool: Some(pool) })
    }

    /// Runs `op` in this instance's pool (blocking the caller until it returns).
    pub(crate) fn run<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(op),
            None => op(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_exactly_the_configured_threads() {
        for threads in [1, 3] {
            let intra = IntraOp::new(threads).unwrap();
            assert_eq!(intra.run(rayon::current_num_threads), threads);
            // Parallel work started inside stays inside: every item runs on one of the pool's threads.
            let names: std::collections::BTreeSet<String> = intra.run(|| {
                use rayon::prelude::*;
                (0..64).into_par_iter().map(|_| std::thread::current().name().unwrap_or("").to_string()).collect()
            });
            assert!(!names.is_empty() && names.len() <= threads, "{names:?}");
            assert!(names.iter().all(|n| n.contains("-op")), "{names:?}");
        }
        assert_eq!(IntraOp::new(0).unwrap().run(rayon::current_num_threads), rayon::current_num_threads());
    }
}
