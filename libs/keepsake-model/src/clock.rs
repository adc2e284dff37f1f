//! Time and id generation, behind traits so that tests are deterministic.
//!
//! Library code never calls `SystemTime::now` or `Uuid::new_v4` directly (clippy.toml bans them);
//! it asks a [`Clock`] or an [`IdGenerator`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

/// Wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// Source of fresh UUIDs.
pub trait IdGenerator: Send + Sync + std::fmt::Debug {
    /// A random (v4) UUID.
    fn random(&self) -> Uuid;
    /// A time-ordered (v7) UUID for the given moment.
    fn time_ordered(&self, at: DateTime<Utc>) -> Uuid;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the system clock
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Real random ids.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdGenerator for RandomIds {
    #[allow(clippy::disallowed_methods)] // the one place that draws random ids
    fn random(&self) -> Uuid {
        Uuid::new_v4()
    }

    #[allow(clippy::disallowed_methods)]
    fn time_ordered(&self, at: DateTime<Utc>) -> Uuid {
        let secs = u64::try_from(at.timestamp()).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, at.timestamp_subsec_nanos());
        Uuid::new_v7(ts)
    }
}

/// A clock that tests move by hand.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// A clock standing at 2026-01-01T00:00:00Z.
    pub fn at_epoch_2026() -> Self {
        Self::new(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or_default(),
        )
    }

    /// Sets the time (it may go backwards: the log must cope).
    pub fn set(&self, t: DateTime<Utc>) {
        if let Ok(mut now) = self.now.lock() {
            *now = t;
        }
    }

    /// Moves the time forward.
    pub fn advance(&self, d: chrono::Duration) {
        if let Ok(mut now) = self.now.lock() {
            *now += d;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.now.lock().map(|t| *t).unwrap_or_default()
    }
}

/// Deterministic ids: a counter, so that tests can predict and compare them.
#[derive(Debug, Default)]
pub struct SequentialIds {
    next: AtomicU64,
}

impl SequentialIds {
    /// Starts counting at `seed << 32`, so that generators with different seeds never collide.
    pub fn new(seed: u64) -> Self {
        Self {
            next: AtomicU64::new(seed.wrapping_shl(32)),
        }
    }
}

impl IdGenerator for SequentialIds {
    fn random(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        uuid::Builder::from_random_bytes(u128::from(n).to_be_bytes()).into_uuid()
    }

    fn time_ordered(&self, at: DateTime<Utc>) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        let mut tail = [0u8; 10];
        tail[2..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_are_distinct_and_versioned() {
        let ids = SequentialIds::new(1);
        let clock = ManualClock::at_epoch_2026();
        let a = ids.time_ordered(clock.now());
        let b = ids.time_ordered(clock.now());
        assert_ne!(a, b);
        assert!(a < b, "v7 ids from one generator sort by creation");
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(ids.random().get_version_num(), 4);
    }

    #[test]
    fn manual_clock_moves_both_ways() {
        let clock = ManualClock::at_epoch_2026();
        let t0 = clock.now();
        clock.advance(chrono::Duration::seconds(5));
        assert_eq!(clock.now() - t0, chrono::Duration::seconds(5));
        clock.set(t0);
        assert_eq!(clock.now(), t0);
    }
}
