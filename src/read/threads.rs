//! Work cut into runs in file order, one run per thread, and run on scoped threads: the one
//! pattern behind the parallel reads (`pread.rs`), the converting reads (`load/convert.rs`)
//! and the CRC checks (`crc.rs`). Each thread then reads its part of the file sequentially.

use std::panic::{self, AssertUnwindSafe};
use std::thread;

/// Below this many bytes in all, work runs on one thread: splitting it across threads costs
/// more than it gains. The one threshold of the parallel reads, the converting reads and the
/// CRC checks.
pub(crate) const PARALLEL_BYTES: usize = 8 << 20;

/// `items`, in order, cut into consecutive runs: a run is closed once it holds `share` or
/// more units (each item's `len`), and an item is never split. No run is empty.
pub(crate) fn runs<T>(
    items: impl IntoIterator<Item = T>,
    share: u64,
    len: impl Fn(&T) -> u64,
) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = vec![Vec::new()];
    let mut filled = 0;
    for item in items {
        if filled >= share {
            runs.push(Vec::new());
            filled = 0;
        }
        filled += len(&item);
        runs.last_mut().expect("one run").push(item);
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// `work` of each run, in the runs' order: the first on the calling thread, each other on a
/// scoped thread of its own. Of several runs, one that panicked gives its payload, as
/// `JoinHandle::join` does, and the others still run to their end; a single run's panic
/// goes on up, as any call's does.
///
/// The calling thread takes a run rather than waiting for the others: on this project's 2
/// vCPUs the second of two spawned threads started up to 0.34 ms after the call (0.06–0.08
/// ms for the first), a tenth of resnet18's converting load, while the caller was still
/// spawning it.
pub(crate) fn on_threads<T: Send, R: Send>(
    runs: Vec<Vec<T>>,
    work: impl Fn(Vec<T>) -> R + Sync,
) -> Vec<thread::Result<R>> {
    let single = runs.len() == 1;
    let mut runs = runs.into_iter();
    let Some(first) = runs.next() else {
        return Vec::new();
    };
    if single {
        return vec![Ok(work(first))];
    }
    let work = &work;
    thread::scope(|scope| {
        let handles: Vec<_> = runs.map(|run| scope.spawn(move || work(run))).collect();
        let here = panic::catch_unwind(AssertUnwindSafe(|| work(first)));
        std::iter::once(here)
            .chain(handles.into_iter().map(|h| h.join()))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_close_at_the_share_and_never_split_an_item() {
        let cut = runs([3u64, 1, 4, 1, 5, 9, 2], 5, |&n| n);
        assert_eq!(cut, vec![vec![3, 1, 4], vec![1, 5], vec![9], vec![2]]);
        assert!(runs(Vec::<u64>::new(), 5, |&n| n).is_empty());
        assert_eq!(runs([7u64], 0, |&n| n), vec![vec![7]]);
    }

    #[test]
    fn results_come_in_the_runs_order_and_a_panic_is_its_runs_own() {
        let out = on_threads(vec![vec![1, 2], vec![3], vec![4, 5]], |run: Vec<i32>| {
            assert!(run != [3], "run three");
            run.iter().sum::<i32>()
        });
        assert_eq!(out.len(), 3);
        assert_eq!(*out[0].as_ref().unwrap(), 3);
        assert!(out[1].is_err());
        assert_eq!(*out[2].as_ref().unwrap(), 9);
        let here = thread::current().id();
        let one = on_threads(vec![vec![here]], |run| run[0] == thread::current().id());
        assert!(matches!(one[..], [Ok(true)]), "one run runs here");
        let alone = panic::catch_unwind(|| on_threads(vec![vec![0]], |_| panic!("alone")));
        assert!(alone.is_err(), "a single run's panic goes on up");
        // The first of several runs runs here too, the others elsewhere; its panic is its
        // own, and the others still run.
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let out = on_threads(vec![vec![1], vec![2], vec![3]], |run: Vec<i32>| {
            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(run != [1], "run one");
            thread::current().id() == here
        });
        assert!(out[0].is_err(), "the first run's panic is caught");
        assert!(
            matches!(out[1..], [Ok(false), Ok(false)]),
            "the others on threads"
        );
        assert_eq!(ran.into_inner(), 3);
        let first_here = on_threads(vec![vec![0], vec![1]], |_| thread::current().id() == here);
        assert!(matches!(first_here[..], [Ok(true), Ok(false)]));
        assert!(on_threads(Vec::<Vec<i32>>::new(), |_| 0).is_empty());
    }
}
