//! Committed events per interval of a run (`--sample-every`): the server's events counter read
//! on a fixed schedule from the start of the measured time, each rate over the time that really
//! passed between two reads. What `make sustained` judges (the slowest interval against the
//! median) comes from here.
//!
//! It used to be a shell loop that slept the interval, then read a dozen counters: every pass
//! took the interval plus its reads, so the samples drifted behind the load (~0.5 s a minute),
//! each rate was divided by the nominal interval, and the last interval of a 30-minute run
//! reached ~15 s past the end of the load. That last minute read as the slowest (`make
//! sustained` runs 14 and 15: 0.68 and 0.75 of the median, both "the last minute").

use std::time::Duration;

use serde::Serialize;

/// When to read the counter, from the start of the measured time: every `every` while a whole
/// interval fits in `duration` (the first read at 0, the last at most at `duration`).
pub fn schedule(duration: Duration, every: Duration) -> Vec<Duration> {
    if every.is_zero() {
        return Vec::new();
    }
    let mut at = Vec::new();
    let mut t = Duration::ZERO;
    while t <= duration {
        at.push(t);
        match t.checked_add(every) {
            Some(next) => t = next,
            None => break,
        }
    }
    at
}

/// One interval between two reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// Seconds from the start of the measured time to the first read.
    pub from_s: f64,
    /// ... and to the second.
    pub to_s: f64,
    /// Events committed between them, per second of the time that passed.
    pub events_per_s: f64,
}

/// The rate of each interval between consecutive reads `(when, events committed so far)`. A
/// read that failed (`None`) ends the interval before it and starts none: its neighbours are
/// not merged into a longer interval that would hide a slow one.
pub fn rates(reads: &[(Duration, Option<f64>)]) -> Vec<Interval> {
    reads
        .windows(2)
        .filter_map(|w| {
            let ((t0, Some(e0)), (t1, Some(e1))) = (w[0], w[1]) else {
                return None;
            };
            let secs = t1.checked_sub(t0)?.as_secs_f64();
            (secs > 0.0).then(|| Interval {
                from_s: t0.as_secs_f64(),
                to_s: t1.as_secs_f64(),
                events_per_s: (e1 - e0).max(0.0) / secs,
            })
        })
        .collect()
}

/// The slowest interval's rate, the median rate, and their ratio (`None` without intervals).
pub fn slowest_and_median(intervals: &[Interval]) -> Option<(f64, f64, f64)> {
    let mut r: Vec<f64> = intervals.iter().map(|i| i.events_per_s).collect();
    r.sort_by(f64::total_cmp);
    let slowest = *r.first()?;
    let n = r.len();
    let median = if n % 2 == 1 {
        r[n / 2]
    } else {
        (r[n / 2 - 1] + r[n / 2]) / 2.0
    };
    let ratio = if median > 0.0 { slowest / median } else { 0.0 };
    Some((slowest, median, ratio))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    /// Every read falls within the measured time, one per interval and one at the start.
    #[test]
    fn the_schedule_stays_within_the_measured_time() {
        let at = schedule(s(1800.0), s(60.0));
        assert_eq!(at.len(), 31);
        assert_eq!(at.first(), Some(&Duration::ZERO));
        assert_eq!(at.last(), Some(&s(1800.0)));
        // A partial interval at the end is not read.
        assert_eq!(schedule(s(130.0), s(60.0)), vec![s(0.0), s(60.0), s(120.0)]);
        assert!(schedule(s(10.0), Duration::ZERO).is_empty());
    }

    /// A constant load read late, and later each time (the old loop's drift): every interval
    /// has the load's rate, because each is divided by the time that really passed.
    #[test]
    fn late_reads_still_give_the_true_rate() {
        let rate = 10_000.0;
        let reads: Vec<(Duration, Option<f64>)> = (0..31)
            .map(|i| {
                let t = 60.0 * f64::from(i) + 0.5 * f64::from(i);
                (s(t), Some(rate * t))
            })
            .collect();
        let intervals = rates(&reads);
        assert_eq!(intervals.len(), 30);
        for i in &intervals {
            assert!((i.events_per_s - rate).abs() < 1e-6, "{i:?}");
        }
        let (slowest, median, ratio) = slowest_and_median(&intervals).expect("intervals");
        assert!((slowest - rate).abs() < 1e-6 && (median - rate).abs() < 1e-6);
        assert!((ratio - 1.0).abs() < 1e-9);
    }

    /// A slow interval shows; a failed read drops the two intervals it bounds.
    #[test]
    fn a_slow_interval_shows_and_a_failed_read_drops_its_intervals() {
        let reads = [
            (s(0.0), Some(0.0)),
            (s(60.0), Some(600.0)),
            (s(120.0), Some(900.0)),
            (s(180.0), None),
            (s(240.0), Some(2_100.0)),
            (s(300.0), Some(2_700.0)),
            (s(360.0), Some(3_300.0)),
        ];
        let intervals = rates(&reads);
        let per_s: Vec<f64> = intervals.iter().map(|i| i.events_per_s).collect();
        assert_eq!(per_s, vec![10.0, 5.0, 10.0, 10.0]);
        assert_eq!(intervals[2].from_s, 240.0);
        let (slowest, median, ratio) = slowest_and_median(&intervals).expect("intervals");
        assert_eq!((slowest, median, ratio), (5.0, 10.0, 0.5));
        assert_eq!(slowest_and_median(&[]), None);
    }
}
