use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of what the log did; read by metrics and by tests.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Segments committed.
    pub segments: AtomicU64,
    /// Events committed.
    pub events: AtomicU64,
    /// Bytes of segments committed.
    pub bytes: AtomicU64,
    /// Total time of committed segment PUTs, in microseconds.
    pub put_micros: AtomicU64,
    /// Segment PUTs that failed or timed out.
    pub put_errors: AtomicU64,
    /// PUTs tried again under the same number after a read-back found nothing.
    pub put_retries: AtomicU64,
    /// Failed or timed-out PUTs that a read-back showed had landed.
    pub ambiguous_resolved: AtomicU64,
    /// Batches lost to another writer.
    pub fenced: AtomicU64,
    /// Pushes refused by the mass-delete guard.
    pub mass_delete_refusals: AtomicU64,
}

impl LogStats {
    pub(crate) fn record_segment(&self, events: u64, bytes: u64, took: Duration) {
        self.segments.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.put_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
