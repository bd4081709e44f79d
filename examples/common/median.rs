//! The timing both micro-benchmarks use (append_bench and tree_bench). Not an example itself:
//! each program includes it with `#[path]`.

use std::time::Instant;

/// The median, over 25 batches of `n` calls of `f`, of the time per call in nanoseconds: the
/// median rather than the mean, so that a batch the shared machine interrupted does not count.
pub fn median_ns<T>(mut f: impl FnMut() -> T, n: usize) -> f64 {
    let mut batches = Vec::new();
    for _ in 0..25 {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(f());
        }
        batches.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    batches.sort_by(|a, b| a.partial_cmp(b).unwrap());
    batches[batches.len() / 2]
}
