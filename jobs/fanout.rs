//! File-level fan-out (the only use of rayon in cspbill): input files pre-scanned and loaded, invoice exports and
//! per-invoice FOCUS files written, one file per task, over the cores.
//!
//! The tasks run on a pool of their own with 64 MiB stacks. Rayon's default 2 MiB stacks overflowed when a task
//! parsed a JSON export with Polars or serde in a debug build (the v2 export and legacy licence-line tests aborted
//! with "has overflowed its stack"); the main thread, which did this work before, has 8 MiB. Results come back in
//! the items' order whatever the scheduling.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Stack of each fan-out thread.
const STACK_BYTES: usize = 64 << 20;

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .stack_size(STACK_BYTES)
            .thread_name(|i| format!("cspbill-fanout-{i}"))
            .build()
            .map_err(|e| tracing::warn!("no fan-out thread pool ({e}); files are processed one at a time"))
            .ok()
    })
    .as_ref()
}

/// `f` over `items`, in parallel on the fan-out pool (sequentially if it could not be built), results in order.
/// The caller's tracing span is carried into the tasks.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    let span = tracing::Span::current();
    match pool() {
        Some(p) => p.install(|| items.par_iter().map(|x| span.in_scope(|| f(x))).collect()),
        None => items.iter().map(|x| f(x)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_and_deep_recursion_fits_the_stack() {
        fn depth(n: u64) -> u64 {
            // About 1 KiB of stack a level: 16,384 levels need ~16 MiB, more than rayon's default 2 MiB.
            let pad = std::hint::black_box([0u8; 1024]);
            if n == 0 { pad[0] as u64 } else { 1 + depth(n - 1) + pad[(n % 1024) as usize] as u64 }
        }
        let items: Vec<u64> = (0..64).collect();
        let out = map(&items, |&x| (x, depth(16_384)));
        assert_eq!(out, items.iter().map(|&x| (x, 16_384)).collect::<Vec<_>>());
    }
}
