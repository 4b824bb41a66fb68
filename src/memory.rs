//! How the process holds memory: the heap in small pages, and memory freed
//! by closed sockets handed back to the operating system.
//!
//! mimalloc asks the kernel for transparent huge pages on its arenas
//! (`madvise`). Each first touch of a 2 MiB region then grew RSS by 2 MiB
//! at once and cleared all of it: a `social` instance of 2,500 sockets
//! held 40-47 MiB, grew by a fifth in its first half-minute and shrank
//! over the next minutes, where in small pages it holds 28 MiB and grows
//! by under 2 % (BENCHMARKS.md §23). [`small_pages_only`] turns them off for the
//! process.
//!
//! mimalloc keeps the pages a worker thread freed until that thread
//! allocates again or collects, and a block freed on another thread waits in
//! its page's cross-thread list until the owner looks. After a storm of
//! closes the workers go idle, so without a collect the process kept its
//! peak RSS (162 MiB after 19,000 sockets closed, 19 MiB at start:
//! BENCHMARKS.md §3). Sessions count their ends here; a worker about to park
//! collects its own heap once per [`BATCH`] ends it has not collected for.
//! It must never run on a hot path: parking means the worker has nothing to do.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sessions that end between two collects of a worker. A collect walks the
/// worker's whole heap, so a storm of closes must not pay one per socket;
/// what the last (< BATCH) sessions leave is a few KiB each.
const BATCH: u64 = 64;

static ENDED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COLLECTED_AT: Cell<u64> = const { Cell::new(0) };
}

/// Keeps the kernel from backing this process's memory with transparent
/// huge pages, whatever the machine's THP mode; for `main`, before the heap
/// grows (what is already mapped in huge pages stays so).
pub fn small_pages_only() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and changes nothing
    // but the process's THP flag.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Records that a session ended and freed its memory.
pub fn session_ended() {
    ENDED.fetch_add(1, Ordering::Relaxed);
}

/// For the runtime's `on_thread_park`: collects this worker's heap if a
/// batch of sessions ended since it last did.
pub fn on_worker_park() {
    let batch = ENDED.load(Ordering::Relaxed) / BATCH;
    if COLLECTED_AT.get() != batch {
        COLLECTED_AT.set(batch);
        // `force` also purges freed pages at once instead of after
        // mimalloc's purge delay, which no idle thread would wait out.
        // SAFETY: `mi_collect` has no preconditions; it only touches the
        // calling thread's heap and mimalloc's own arenas.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}
