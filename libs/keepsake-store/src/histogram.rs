//! A fixed-bucket histogram of whole numbers, lock-free: latencies and sizes counted on hot
//! paths (the store's requests, the log's PUTs and batches) and read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-bucket histogram of whole numbers, lock-free.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (ascending), and +Inf.
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records a value.
    pub fn observe(&self, v: u64) {
        let idx = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Per bucket (upper bound, `None` for +Inf) its own count; then the sum and the count.
    pub fn snapshot(&self) -> (Vec<(Option<u64>, u64)>, u64, u64) {
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| (self.bounds.get(i).copied(), c.load(Ordering::Relaxed)))
            .collect();
        (
            buckets,
            self.sum.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}
