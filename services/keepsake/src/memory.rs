//! The process's allocator, and what it holds.
//!
//! jemalloc, not the system's: under sustained pushes with a full view (every push loading a
//! user the view had evicted), glibc malloc spent 37% of the server's CPU in `_int_malloc` and
//! kept four times the view budget resident (docs/BENCHMARKS.md, "Sustained"). Declared in the
//! library, so that the server, its tests and its benches all run on the allocator production
//! runs on.
//!
//! [`allocator`] reads jemalloc's own statistics for `/metrics`: what the program asked for
//! (`allocated`) against what the process holds for it (`resident`), which is how the view
//! budget's overhead (issue 15's bound) is seen without `/proc`.
//!
//! Invariant: every thread the server starts (its runtime's, the upkeep's, blocking ones) runs
//! [`bind_thread`] first, so with `--allocator-arenas 1` all of them allocate from one arena
//! (allocations of 8 MiB and more go to jemalloc's arena for huge ones, whichever the thread),
//! and each keeps in its own cache only what it frees of up to
//! `--allocator-thread-cache-max-bytes` a piece.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Turns jemalloc's background threads on or off. On, they purge pages freed longer than the
/// decay time (10 s by default) also while the process is idle; off, jemalloc purges only as it
/// allocates. Measured (`make scale` at 100,000 users, on then off, one after the other): RSS
/// after 15 s idle 247/373/401 MiB on against 233/390/422 off at 10k/50k/100k users, within the
/// runs' noise: what stays resident there is not pages awaiting a purge. On by default, as
/// long-running jemalloc servers run it; `--allocator-background-threads false` turns it off.
pub fn background_threads(on: bool) -> Result<(), String> {
    tikv_jemalloc_ctl::background_thread::write(on).map_err(|e| e.to_string())
}

/// The decay time last set by [`dirty_decay`] (jemalloc's own, 10 s, until then).
static DECAY_MS: AtomicU64 = AtomicU64::new(10_000);

/// Returns every arena's dirty pages to the system now, and how many bytes of them there were.
/// A decay time of 0 purges an arena's dirty pages as it is set (jemalloc 5.3,
/// `pac_decay_ms_set`; setting any other time only restarts the decay, and with background
/// threads leaves the purge to them), so the time is set to 0 and back to the one in force:
/// meanwhile, a few microseconds, what other threads free is purged at once too. (The
/// `arena.<i>.purge` call takes no value, which the safe bindings cannot send.) A purge costs a
/// system call per run of free pages, and the page faults of mapping them again if they are
/// reused soon: done only when the process is over its limit ([`crate::resident`]), not on
/// every free (a decay time of 0 throughout cost a sixth more CPU under `make sustained`,
/// run 47).
pub fn purge_dirty() -> Result<u64, String> {
    let before = allocator().map_or(0, |a| a.dirty);
    let ms = DECAY_MS.load(Ordering::Relaxed);
    let purged = dirty_decay(0);
    dirty_decay(ms)?;
    purged.map(|()| before)
}

/// Sets how long jemalloc keeps pages freed by the program before it returns them to the system
/// (its "dirty decay" time, in milliseconds; 0 returns them at once), for every arena there is
/// and every arena made later. Upkeep frees hundreds of MiB at the end of a checkpoint or a
/// compaction (`upkeep_memory` bench); at jemalloc's default, 10 s, those pages stay resident
/// while the next step allocates anew (`make sustained` run 30: 140-980 MiB resident beyond what
/// was allocated). `--allocator-dirty-decay-ms`.
pub fn dirty_decay(ms: u64) -> Result<(), String> {
    use tikv_jemalloc_ctl::{Access, AsName};
    DECAY_MS.store(ms, Ordering::Relaxed);
    let ms = isize::try_from(ms).map_err(|e| e.to_string())?;
    b"arenas.dirty_decay_ms\0"
        .name()
        .write(ms)
        .map_err(|e| format!("arenas.dirty_decay_ms: {e}"))?;
    let arenas = tikv_jemalloc_ctl::arenas::narenas::read().map_err(|e| e.to_string())?;
    for i in 0..arenas {
        let name = format!("arena.{i}.dirty_decay_ms\0");
        match name.as_str().name().write(ms) {
            Ok(()) => {}
            // An arena not made yet (jemalloc makes them lazily) answers EFAULT ("an interface
            // with side effects failed"); made later, it takes the `arenas.` default set above.
            Err(e) if e.to_string().contains("side effects") => {}
            Err(e) => return Err(format!("arena.{i}.dirty_decay_ms: {e}")),
        }
    }
    Ok(())
}

/// How many of jemalloc's arenas the server's threads share; 0 leaves each thread where jemalloc
/// puts it (it makes four arenas per core and spreads threads over them).
static ARENAS: AtomicU32 = AtomicU32::new(0);
/// The arena the next thread to start is bound to, counted modulo [`ARENAS`].
static NEXT_ARENA: AtomicU32 = AtomicU32::new(0);

/// Makes the threads of this process share `n` allocator arenas (0: jemalloc's own spread),
/// binding the calling thread; every thread started later is bound by [`bind_thread`], which the
/// server's runtimes run as each thread starts. Memory a thread frees is reused only by threads
/// of its arena: with jemalloc's eight arenas on two cores, what the views freed as they gave way
/// to a checkpoint's fold sat in the push threads' arenas while the fold took new pages in its
/// own, and the process's resident memory peaked ~570 MiB above what it had allocated
/// (`make sustained` run 43; docs/BENCHMARKS.md, "One arena"). `--allocator-arenas`.
pub fn arenas(n: u32) -> Result<(), String> {
    let there = tikv_jemalloc_ctl::arenas::narenas::read().map_err(|e| e.to_string())?;
    if n > there {
        return Err(format!(
            "{n} arenas asked for, jemalloc has {there} (its `narenas`)"
        ));
    }
    ARENAS.store(n, Ordering::Relaxed);
    NEXT_ARENA.store(0, Ordering::Relaxed);
    bind_thread();
    Ok(())
}

/// The largest allocation, in bytes, a thread keeps in its own cache when freed (0: jemalloc's
/// own, 32 KiB); set by [`thread_cache_max`], applied by [`bind_thread`].
static THREAD_CACHE_MAX: AtomicUsize = AtomicUsize::new(0);

/// The most jemalloc takes for a thread's cache of one size (its `TCACHE_MAXCLASS_LIMIT`).
pub const THREAD_CACHE_MAX_LIMIT: usize = 8 << 20;

/// Makes every thread of this process keep freed allocations of up to `bytes` in its own cache
/// (jemalloc's per-thread `tcache.max`), setting the calling thread's now and every later one's
/// in [`bind_thread`]. A thread's cache holds what it freed for its own next allocations, out
/// of reach of the other threads of its arena: with ~40 threads each caching up to 32 KiB
/// objects, the pages a view gives up stay behind in the caches of the threads that freed them.
/// `--allocator-thread-cache-max-bytes`.
pub fn thread_cache_max(bytes: usize) -> Result<(), String> {
    if !(8..=THREAD_CACHE_MAX_LIMIT).contains(&bytes) {
        return Err(format!(
            "{bytes} bytes: a thread's cache takes allocations of 8 to {THREAD_CACHE_MAX_LIMIT} bytes"
        ));
    }
    THREAD_CACHE_MAX.store(bytes, Ordering::Relaxed);
    set_thread_cache_max(bytes);
    Ok(())
}

/// Sets the calling thread's cache limit (jemalloc rounds it up to a size class); a failure is
/// logged: the cache decides reuse, never correctness.
fn set_thread_cache_max(bytes: usize) {
    use tikv_jemalloc_ctl::{Access, AsName};
    if let Err(e) = b"thread.tcache.max\0".name().write(bytes) {
        tracing::warn!(bytes, error = %e, "a thread's allocator cache limit could not be set");
    }
}

/// Binds the calling thread to the next of the arenas [`arenas`] set and applies the thread
/// cache limit [`thread_cache_max`] set (neither set: does nothing). A thread that cannot be
/// bound stays where jemalloc put it: the arena is where memory is reused, never what is
/// correct, so a failure is logged and nothing else.
pub fn bind_thread() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let bytes = THREAD_CACHE_MAX.load(Ordering::Relaxed);
    if bytes != 0 {
        set_thread_cache_max(bytes);
    }
    let n = ARENAS.load(Ordering::Relaxed);
    if n == 0 {
        return;
    }
    let arena = NEXT_ARENA.fetch_add(1, Ordering::Relaxed) % n;
    if let Err(e) = b"thread.arena\0".name().write(arena) {
        tracing::warn!(arena, error = %e, "a thread could not be bound to its allocator arena");
    }
}

/// jemalloc's statistics, in bytes, as of the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes the program holds allocated.
    pub allocated: u64,
    /// Bytes in pages holding allocations (allocated plus fragmentation within them).
    pub active: u64,
    /// Bytes of physical memory the allocator maps and has touched: what it costs the machine.
    pub resident: u64,
    /// Bytes of virtual memory kept for reuse but returned to the system (not resident).
    pub retained: u64,
    /// Bytes of pages freed whole and not yet returned to the system (jemalloc's dirty pages,
    /// over every arena): resident until the decay time (`--allocator-dirty-decay-ms`) has
    /// passed, or until reused. What is resident beyond `active` is these and metadata;
    /// `active` beyond `allocated` is the free room in part-used pages.
    pub dirty: u64,
    /// Arenas that threads are bound to now (jemalloc's `nthreads` of each): 1 when every
    /// thread shares one (`--allocator-arenas 1`).
    pub arenas_in_use: u64,
    /// Bytes freed into the threads' own caches, kept for those threads' next allocations
    /// (`--allocator-thread-cache-max-bytes` bounds the size of what a cache takes).
    pub thread_cached: u64,
}

/// The allocator's statistics now, or `None` when they cannot be read (they are refreshed
/// first: jemalloc caches them until its epoch is advanced).
pub fn allocator() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let read = |r: Result<usize, tikv_jemalloc_ctl::Error>| r.ok().map(|v| v as u64);
    Some(AllocatorStats {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        resident: read(stats::resident::read())?,
        retained: read(stats::retained::read())?,
        arenas_in_use: arenas_in_use()?,
        thread_cached: thread_cached()?,
        dirty: dirty()?,
    })
}

/// Bytes of dirty pages over every arena (`MALLCTL_ARENAS_ALL`), as of the last epoch.
fn dirty() -> Option<u64> {
    use tikv_jemalloc_ctl::{Access, AsName};
    let pages: usize = b"stats.arenas.4096.pdirty\0".name().read().ok()?;
    let page: usize = b"arenas.page\0".name().read().ok()?;
    Some(pages.saturating_mul(page) as u64)
}

/// Bytes in the threads' caches, over every arena (jemalloc's merged statistics, index
/// `MALLCTL_ARENAS_ALL`), as of the last epoch advanced.
fn thread_cached() -> Option<u64> {
    use tikv_jemalloc_ctl::{Access, AsName};
    let bytes: usize = b"stats.arenas.4096.tcache_bytes\0".name().read().ok()?;
    Some(bytes as u64)
}

/// How many arenas have a thread bound to them (statistics as of the last epoch advanced).
fn arenas_in_use() -> Option<u64> {
    use tikv_jemalloc_ctl::{Access, AsName};
    let there = tikv_jemalloc_ctl::arenas::narenas::read().ok()?;
    let mut used = 0;
    for i in 0..there {
        let name = format!("stats.arenas.{i}.nthreads\0");
        // An arena not made yet has no statistics: no thread is bound to it.
        let threads: u32 = name.as_str().name().read().unwrap_or(0);
        used += u64::from(threads > 0);
    }
    Some(used)
}

/// Tests that set or read the allocator's process-wide decay and dirty pages take this first:
/// setting a decay time purges every arena's dirty pages, which another such test counts on.
#[cfg(test)]
pub(crate) static DECAY_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_threads_are_turned_on() {
        let _one = DECAY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(background_threads(true), Ok(()));
        assert!(matches!(
            tikv_jemalloc_ctl::background_thread::read(),
            Ok(true)
        ));
    }

    #[test]
    fn the_dirty_decay_time_is_set_for_every_arena() {
        let _one = DECAY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        use tikv_jemalloc_ctl::{Access, AsName};
        assert_eq!(dirty_decay(1500), Ok(()));
        let default: isize = b"arenas.dirty_decay_ms\0".name().read().unwrap_or_default();
        let first: isize = b"arena.0.dirty_decay_ms\0"
            .name()
            .read()
            .unwrap_or_default();
        assert_eq!((default, first), (1500, 1500));
        assert_eq!(dirty_decay(10_000), Ok(()));
    }

    /// The calling thread's cache limit, in bytes.
    fn thread_cache() -> Option<usize> {
        use tikv_jemalloc_ctl::{Access, AsName};
        b"thread.tcache.max\0".name().read().ok()
    }

    #[test]
    fn every_thread_takes_the_thread_cache_limit_set() {
        let spawned = || {
            std::thread::spawn(|| {
                let before = thread_cache();
                bind_thread();
                (before, thread_cache())
            })
            .join()
            .ok()
        };
        // jemalloc's own, before anything is set.
        assert_eq!(spawned(), Some((Some(32 << 10), Some(32 << 10))));
        assert_eq!(thread_cache_max(4096), Ok(()));
        assert_eq!(thread_cache(), Some(4096));
        assert_eq!(spawned(), Some((Some(32 << 10), Some(4096))));
        // Rounded up to jemalloc's size class.
        assert_eq!(thread_cache_max(5000), Ok(()));
        assert_eq!(spawned(), Some((Some(32 << 10), Some(5120))));
        for refused in [0, 7, THREAD_CACHE_MAX_LIMIT + 1] {
            let Err(e) = thread_cache_max(refused) else {
                panic!("{refused} bytes were taken");
            };
            assert!(e.contains("8 to 8388608 bytes"), "{e}");
        }
        assert_eq!(thread_cache_max(32 << 10), Ok(()));
    }

    /// The arena jemalloc allocates the calling thread's memory from.
    fn thread_arena() -> Option<u32> {
        use tikv_jemalloc_ctl::{Access, AsName};
        b"thread.arena\0".name().read().ok()
    }

    #[test]
    fn threads_are_bound_to_the_arenas_set() {
        let spawned_arena = || {
            std::thread::spawn(|| {
                bind_thread();
                thread_arena()
            })
            .join()
            .ok()
            .flatten()
        };
        assert_eq!(arenas(2), Ok(()));
        assert_eq!(thread_arena(), Some(0));
        assert_eq!((spawned_arena(), spawned_arena()), (Some(1), Some(0)));
        assert_eq!(arenas(1), Ok(()));
        assert_eq!((spawned_arena(), spawned_arena()), (Some(0), Some(0)));
        let Err(e) = arenas(100_000) else {
            panic!("more arenas than jemalloc has were taken");
        };
        assert!(e.contains("100000 arenas asked for"), "{e}");
        assert_eq!(arenas(0), Ok(()));
    }

    #[test]
    fn the_allocator_reports_what_the_program_holds() {
        let _one = DECAY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(before) = allocator() else {
            panic!("jemalloc's statistics are not readable");
        };
        // 64 MiB held and touched, in pieces of 1 MiB (below the 8 MiB past which jemalloc
        // purges at once what is freed): allocated grows by at least that much while it is held.
        let held: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1 << 20]).collect();
        let Some(during) = allocator() else {
            panic!("jemalloc's statistics are not readable");
        };
        assert!(
            during.allocated >= before.allocated + (60 << 20),
            "{before:?} -> {during:?}"
        );
        assert!(during.resident >= during.active && during.active >= during.allocated);
        drop(held);
        // Freed whole, its pages are dirty until the decay time (a second or more in every
        // test here) has passed, or until reused.
        let Some(after) = allocator() else {
            panic!("jemalloc's statistics are not readable");
        };
        assert!(after.dirty >= 32 << 20, "{during:?} -> {after:?}");
        assert!(after.resident >= after.active + after.dirty / 2);
    }
}
