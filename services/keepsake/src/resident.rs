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
//! Invariants: the excess published is 0 whenever the last reading was within the limit (the
//! views get their whole budget back at once); a reading that fails publishes nothing new.

use std::sync::Arc;
use std::time::Duration;

use keepsake_log::Log;
use tokio::sync::watch;

/// How often the process's resident memory is read (a read of `/proc/self/status`, a few µs).
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What is over `limit` in `resident` (0 when within it).
pub fn excess(resident: u64, limit: u64) -> u64 {
    resident.saturating_sub(limit)
}

/// The process's resident memory now, in bytes: the kernel's `VmRSS` (what `ps` shows and
/// what the bound is about), or, where `/proc` is not there, what the allocator has resident.
pub fn resident_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss(&s))
        .or_else(|| crate::memory::allocator().map(|a| a.resident))
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

/// Reads the process's resident memory every [`CHECK_EVERY`] and publishes its excess over
/// `limit` bytes to `log`'s views, until `stop` turns true.
pub async fn run(log: Arc<Log>, limit: u64, mut stop: watch::Receiver<bool>) {
    let mut last = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let Some(resident) = resident_bytes() else {
            continue;
        };
        let bytes = usize::try_from(excess(resident, limit)).unwrap_or(usize::MAX);
        if (bytes > 0) != (last > 0) {
            let over = bytes > 0;
            tracing::info!(
                resident_mib = resident >> 20,
                limit_mib = limit >> 20,
                "resident memory {} its limit: the views {}",
                if over { "over" } else { "back within" },
                if over {
                    "give way"
                } else {
                    "get their budget back"
                }
            );
        }
        if bytes > last {
            // A rise evicts at once, under each shard's state lock: off the runtime's threads.
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || log.set_resident_excess(bytes)).await;
        } else {
            log.set_resident_excess(bytes);
        }
        last = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // This process's own, as the server reads it.
        assert!(resident_bytes().is_some_and(|b| b > 1 << 20));
    }
}
