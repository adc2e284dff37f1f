//! Steers the process's resident memory toward the view budget plus a fixed overhead.
//!
//! The views, the upkeep and the indexes beside the views count what they hold, and together
//! stay within the view budget (`keepsake_log::budget`). What no holder counts is what the
//! allocator keeps resident beyond what the program holds (pages part-filled by the small
//! objects of users the views evicted, which new allocations of other sizes cannot use) and
//! the requests in flight. Over 30 minutes of `make sustained` the first averaged ~170 MiB in
//! the first five minutes and ~320 in the last ten, the second grew from ~6 to ~130 MiB as the
//! server neared its cores, and the process peaked at 1,667 MiB, 387 over the 256 MiB it may
//! hold beyond its views (docs/BENCHMARKS.md, "The views give way to the process's excess").
//!
//! So the server measures itself: every [`CHECK_EVERY`] it reads its resident memory from the
//! kernel and tells the log how far it is over `view budget + --memory-overhead-mb`
//! ([`keepsake_log::Log::set_resident_excess`]); the views give way by that much. What they
//! free refills the part-filled pages before the allocator maps new ones of those sizes, and
//! the allocator returns pages left empty after its decay time. Under `make sustained` that
//! took the highest 5-s reading from 1,667 to 1,495 MiB (run 61): fewer peaks, not a bound,
//! since what a checkpoint's fold allocates meanwhile is large buffers the freed small
//! objects' pages cannot hold.
//!
//! A byte the views free is not a byte of resident memory returned: only pages left wholly
//! free are (a view's users' small objects share pages with users still held). So the views
//! give way by the excesses of every reading since the process was last within its limit,
//! added up ([`give_way`]), not by the last reading's alone: with the last alone they settled
//! over the limit by what their evictions did not return (a proportional control's offset),
//! and grew back into it as soon as a reading found less over.
//!
//! Over the limit, a reading first returns the allocator's dirty pages (freed whole, kept for
//! the decay time) to the system and reads the status again (`--allocator-purge-over-limit`):
//! what the views freed by giving way at the last reading would otherwise stay resident for
//! the decay time. At `make sustained`'s peaks those were 20-143 MiB, and the peak came 23 MiB
//! lower with the purge; the free room in part-used pages (186-412 MiB there) no purge
//! returns (docs/BENCHMARKS.md, runs 75-78).
//!
//! Invariants: what the views give way by is 0 whenever the last reading was within the limit
//! (the views get their whole budget back at once), and grows with each reading over it until
//! one is within; a reading that fails publishes nothing new.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use keepsake_log::Log;
use tokio::sync::watch;

/// How often the process's resident memory is read (a read of `/proc/self/status`, a few µs).
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What is over `limit` in `resident` (0 when within it).
pub fn excess(resident: u64, limit: u64) -> u64 {
    resident.saturating_sub(limit)
}

/// What the views give way by after a reading `over` bytes over the limit, having given way by
/// `last` after the reading before: `last + over` while the process stays over its limit, so
/// that they keep giving way until their evictions have returned enough whole pages; 0 once a
/// reading is within it (the views get their whole budget back at once). Never more than
/// `ceiling` (the limit itself: beyond it the views are at their floor whatever is asked).
pub fn give_way(last: u64, over: u64, ceiling: u64) -> u64 {
    if over == 0 {
        0
    } else {
        last.saturating_add(over).min(ceiling.max(over))
    }
}

/// The excess of the last reading, for `/metrics` (what the views give way by is the log's,
/// [`keepsake_log::Log::resident_excess_bytes`]).
static LAST_EXCESS: AtomicU64 = AtomicU64::new(0);

/// Bytes the process was resident beyond its limit at the last reading (0 when within it, and
/// before the first).
pub fn last_excess() -> u64 {
    LAST_EXCESS.load(Relaxed)
}

/// The process's resident memory now, in bytes: the kernel's `VmRSS` (what `ps` shows and
/// what the bound is about), or, where `/proc` is not there, what the allocator has resident.
pub fn resident_bytes() -> Option<u64> {
    resident_in(own_status().as_deref())
}

/// This process's `/proc/self/status` text, where there is one.
fn own_status() -> Option<String> {
    std::fs::read_to_string("/proc/self/status").ok()
}

/// [`resident_bytes`] from a status text already read (the allocator's figure without one).
fn resident_in(status: Option<&str>) -> Option<u64> {
    status
        .and_then(vm_rss)
        .or_else(|| crate::memory::allocator().map(|a| a.resident))
}

/// The process's peak resident memory since it started, in bytes: the kernel's `VmHWM`, which
/// sees the peaks between two readings of [`resident_bytes`].
pub fn peak_bytes() -> Option<u64> {
    own_status().and_then(|s| kib_field(&s, "VmHWM:"))
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

/// A field of a `/proc/<pid>/status` text given in kB, in bytes.
fn kib_field(status: &str, name: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

/// How far a new peak must pass the last one told before it is told again.
const PEAK_STEP: u64 = 8 << 20;

/// Tells, at a warning, a new peak of the process's resident memory over `limit` with what
/// held memory then: the views, upkeep, the indexes and the allocator. The peak is the
/// kernel's (`VmHWM`), so one between two readings is seen at the next, ~100 ms after it.
/// Returns the peak now told (or `told` if none).
fn tell_peak(log: &Log, status: &str, limit: u64, told: u64) -> u64 {
    let Some(peak) = kib_field(status, "VmHWM:") else {
        return told;
    };
    if peak <= limit || peak < told.saturating_add(PEAK_STEP) {
        return told;
    }
    let allocator = crate::memory::allocator();
    tracing::warn!(
        peak_mib = peak >> 20,
        over_mib = (peak - limit) >> 20,
        resident_mib = vm_rss(status).unwrap_or(0) >> 20,
        views_mib = log.resident_bytes() >> 20,
        upkeep_mib = log.upkeep_held_bytes() >> 20,
        indexes_mib = log.index_footprint().1 >> 20,
        allocated_mib = allocator.as_ref().map_or(0, |a| a.allocated >> 20),
        allocator_resident_mib = allocator.as_ref().map_or(0, |a| a.resident >> 20),
        allocator_active_mib = allocator.as_ref().map_or(0, |a| a.active >> 20),
        allocator_dirty_mib = allocator.as_ref().map_or(0, |a| a.dirty >> 20),
        queued_pushes = log.queued(),
        "resident memory reached a new peak over its limit (view budget + --memory-overhead-mb)"
    );
    peak
}

/// Dirty pages worth a purge when the process is over its limit.
const PURGE_AT: u64 = 8 << 20;

/// Over its limit, the process's dirty pages (freed whole, kept until the decay time) are
/// returned to the system before the views are asked to give way: they are resident memory
/// nothing holds, and what the views free by giving way becomes such pages too. Returns the
/// status read again after a purge (the one given otherwise) and the bytes purged.
fn purged_over(status: Option<String>, limit: u64) -> (Option<String>, u64) {
    let over = resident_in(status.as_deref()).is_some_and(|r| r > limit);
    let dirty = crate::memory::allocator().map_or(0, |a| a.dirty);
    if !over || dirty < PURGE_AT {
        return (status, 0);
    }
    match crate::memory::purge_dirty() {
        Ok(bytes) => (own_status().or(status), bytes),
        Err(e) => {
            tracing::warn!(error = %e, "the allocator's dirty pages could not be purged");
            (status, 0)
        }
    }
}

/// Reads the process's resident memory every [`CHECK_EVERY`] and has `log`'s views give way
/// by its excess over `limit` bytes ([`give_way`] with `added_up`; by the last reading's alone
/// without), until `stop` turns true. With `purge`, first returns the allocator's dirty pages
/// to the system whenever the process is over its limit (`--allocator-purge-over-limit`),
/// counted in [`PURGES`].
pub async fn run(
    log: Arc<Log>,
    limit: u64,
    purge: bool,
    added_up: bool,
    mut stop: watch::Receiver<bool>,
) {
    // What the views were last told to give way by.
    let mut last = 0u64;
    let mut told = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // One read of the status for both the peak and the resident memory now.
        let mut status = own_status();
        if let Some(s) = &status {
            told = tell_peak(&log, s, limit, told);
        }
        if purge && resident_in(status.as_deref()).is_some_and(|r| r > limit) {
            // A purge is a system call over every run of dirty pages (tens of MiB): off the
            // runtime's threads, as the eviction below.
            let (after, bytes) = tokio::task::spawn_blocking(move || purged_over(status, limit))
                .await
                .unwrap_or_else(|_| (own_status(), 0));
            status = after;
            if bytes > 0 {
                PURGES.record(bytes);
            }
        }
        let Some(resident) = resident_in(status.as_deref()) else {
            continue;
        };
        let over = excess(resident, limit);
        LAST_EXCESS.store(over, Relaxed);
        let given = give_way(if added_up { last } else { 0 }, over, limit);
        if (given > 0) != (last > 0) {
            tracing::info!(
                resident_mib = resident >> 20,
                limit_mib = limit >> 20,
                "resident memory {} its limit: the views {}",
                if given > 0 { "over" } else { "back within" },
                if given > 0 {
                    "give way"
                } else {
                    "get their budget back"
                }
            );
        }
        let bytes = usize::try_from(given).unwrap_or(usize::MAX);
        if given > last {
            // A rise evicts at once, under each shard's state lock: off the runtime's threads.
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || log.set_resident_excess(bytes)).await;
        } else {
            log.set_resident_excess(bytes);
        }
        last = given;
    }
}

/// Purges of the allocator's dirty pages made over the limit, and their bytes
/// (`keepsake_allocator_purges_total`, `keepsake_allocator_purged_bytes_total`): the
/// allocator is the process's, and so are these.
pub static PURGES: Purges = Purges {
    count: std::sync::atomic::AtomicU64::new(0),
    bytes: std::sync::atomic::AtomicU64::new(0),
};

/// See [`PURGES`].
#[derive(Debug, Default)]
pub struct Purges {
    pub count: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

impl Purges {
    fn record(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.count.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_its_limit_the_process_returns_its_dirty_pages() {
        let _one = crate::memory::DECAY_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // 64 MiB touched in pieces of 1 MiB (jemalloc purges what was allocated in pieces of
        // 8 MiB or more at once), then freed whole: dirty pages until the decay time (1 s or
        // more in every test here) has passed.
        let held: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1 << 20]).collect();
        drop(held);
        let dirty = |what: &str| {
            crate::memory::allocator()
                .map(|a| a.dirty)
                .unwrap_or_else(|| panic!("jemalloc's statistics are not readable {what}"))
        };
        let before = dirty("before");
        assert!(before >= 32 << 20, "{before} bytes dirty");
        // Within the limit: nothing is purged.
        let (_, bytes) = purged_over(own_status(), u64::MAX);
        assert_eq!(bytes, 0);
        assert!(dirty("within") >= 32 << 20);
        // Over it: purged, and the status read again.
        let (status, bytes) = purged_over(own_status(), 0);
        assert!(bytes >= 32 << 20, "{bytes} bytes purged");
        assert!(status.is_some_and(|s| vm_rss(&s).is_some()));
        let after = dirty("after");
        assert!(after < 32 << 20, "{after} bytes still dirty after a purge");
    }

    #[test]
    fn the_views_keep_giving_way_while_the_process_stays_over_its_limit() {
        let limit = 1_248;
        // Within the limit: nothing, whatever was given way before.
        assert_eq!(give_way(0, 0, limit), 0);
        assert_eq!(give_way(300, 0, limit), 0);
        // Over it: the excess, then each reading's added while the process stays over (the
        // evictions of the last returned less than they freed).
        assert_eq!(give_way(0, 40, limit), 40);
        assert_eq!(give_way(40, 25, limit), 65);
        assert_eq!(give_way(65, 1, limit), 66);
        // Never more than the limit, unless one reading alone is over by more.
        assert_eq!(give_way(1_240, 30, limit), limit);
        assert_eq!(give_way(limit, 2_000, limit), 2_000);
        assert_eq!(give_way(u64::MAX, 5, u64::MAX), u64::MAX);
    }

    #[test]
    fn the_excess_is_what_is_over_the_limit() {
        assert_eq!(excess(1_300, 1_280), 20);
        assert_eq!(excess(1_280, 1_280), 0);
        assert_eq!(excess(900, 1_280), 0);
    }

    #[test]
    fn resident_memory_is_read_from_the_kernels_status() {
        let status = "Name:\tkeepsake\nVmHWM:\t 1320000 kB\nVmRSS:\t 1234567 kB\nThreads:\t12\n";
        assert_eq!(vm_rss(status), Some(1_234_567 * 1024));
        assert_eq!(vm_rss("Name:\tkeepsake\n"), None);
        assert_eq!(vm_rss("VmRSS:\t lots kB\n"), None);
        assert_eq!(vm_rss("VmRSS:\t 12 MB\n"), None);
        assert_eq!(kib_field(status, "VmHWM:"), Some(1_320_000 * 1024));
        // This process's own, as the server reads it.
        assert!(resident_bytes().is_some_and(|b| b > 1 << 20));
        let now = resident_bytes().expect("resident");
        assert!(
            peak_bytes().is_some_and(|p| p >= now),
            "the peak is at least what was resident before"
        );
    }

    #[tokio::test]
    async fn a_new_peak_over_the_limit_is_told_once_it_passes_the_last_by_a_step() {
        let log = Log::open(
            Arc::new(object_store::memory::InMemory::new()),
            Some(1),
            keepsake_log::LogConfig::default(),
            Arc::new(keepsake_model::SystemClock),
            Arc::new(keepsake_model::RandomIds),
        )
        .await
        .expect("log");
        let status = |hwm_mib: u64| format!("VmHWM:\t {} kB\nVmRSS:\t 1024 kB\n", hwm_mib * 1024);
        let mib = |m: u64| m << 20;
        // Within the limit: nothing told.
        assert_eq!(tell_peak(&log, &status(1_000), mib(1_248), 0), 0);
        // Over it: told, and the peak kept.
        assert_eq!(tell_peak(&log, &status(1_300), mib(1_248), 0), mib(1_300));
        // Less than a step above the last told: not again.
        assert_eq!(
            tell_peak(&log, &status(1_305), mib(1_248), mib(1_300)),
            mib(1_300)
        );
        // A step above it: told.
        assert_eq!(
            tell_peak(&log, &status(1_308), mib(1_248), mib(1_300)),
            mib(1_308)
        );
        // No VmHWM in the text: nothing told.
        assert_eq!(tell_peak(&log, "VmRSS:\t 1 kB\n", mib(1), 7), 7);
        log.shutdown().await;
    }
}
