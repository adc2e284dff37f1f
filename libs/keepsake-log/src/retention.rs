//! Checkpoint retention: which checkpoints to keep. Checkpoints are derived (the log has
//! everything), so deleting one only makes some as-of reads start further back; segments are
//! never deleted by anything.
//!
//! Kept: the newest checkpoint always; every checkpoint written within `keep_all_for`; beyond
//! that, the newest checkpoint of each UTC day for `keep_daily_for_days` days. Everything else
//! is deleted.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};

/// How long checkpoints are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep every checkpoint younger than this.
    pub keep_all_for: Duration,
    /// Beyond that, keep one per day for this many days.
    pub keep_daily_for_days: i64,
    /// A checkpoint part that no kept manifest names is deleted once it is this much older
    /// than the newest manifest (both times as the store gives them): younger, it may belong to
    /// a checkpoint another process is still writing.
    pub orphan_grace: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            keep_all_for: Duration::days(1),
            keep_daily_for_days: 365,
            orphan_grace: Duration::minutes(10),
        }
    }
}

/// The checkpoints (segment numbers) to delete, given each one's write time.
pub fn to_delete(
    checkpoints: &[(u64, DateTime<Utc>)],
    now: DateTime<Utc>,
    policy: &RetentionPolicy,
) -> Vec<u64> {
    let mut sorted = checkpoints.to_vec();
    sorted.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut keep: HashSet<u64> = HashSet::new();
    let mut days_kept: HashSet<chrono::NaiveDate> = HashSet::new();
    for (i, (n, at)) in sorted.iter().enumerate() {
        let age = now - *at;
        let recent = i == 0 || age < policy.keep_all_for;
        let in_daily_window =
            age < policy.keep_all_for + Duration::days(policy.keep_daily_for_days);
        // Sorted newest first, so the first checkpoint seen of a day is that day's newest.
        let newest_of_day = days_kept.insert(at.date_naive());
        if recent || (in_daily_window && newest_of_day) {
            keep.insert(*n);
        }
    }
    let mut out: Vec<u64> = sorted
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !keep.contains(n))
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn keeps_recent_daily_and_newest() {
        let now = at(24, 12);
        let policy = RetentionPolicy {
            keep_all_for: Duration::hours(6),
            keep_daily_for_days: 3,
            ..Default::default()
        };
        let cps = [
            (1, at(1, 1)),   // far too old
            (2, at(21, 1)), // day 21: kept (newest of its day within 3 days)? 3 days + 6h before now = 21 06:00 -> too old
            (3, at(22, 1)), // day 22, older of two
            (4, at(22, 20)), // day 22, newest: kept
            (5, at(23, 3)), // day 23: kept
            (6, at(24, 7)), // 5h old: kept
            (7, at(24, 11)), // newest: kept
        ];
        assert_eq!(to_delete(&cps, now, &policy), vec![1, 2, 3]);
    }

    #[test]
    fn the_newest_is_kept_whatever_its_age() {
        let now = at(24, 12);
        let none = RetentionPolicy {
            keep_all_for: Duration::zero(),
            keep_daily_for_days: 0,
            ..Default::default()
        };
        assert_eq!(
            to_delete(&[(1, at(1, 1)), (2, at(2, 1))], now, &none),
            vec![1]
        );
        assert!(to_delete(&[], now, &none).is_empty());
    }
}
