//! Latency histograms, counts and the server's own figures, merged across clients.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microseconds, 1 µs to 10 minutes, 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram documents as valid
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid constant bounds")
}

/// One client's (or the merged) measurements.
#[derive(Debug, Default)]
pub struct Stats {
    ops: BTreeMap<&'static str, Histogram<u64>>,
    /// Errors by `"<status> <code>"`, or `"io"` for transport failures.
    pub errors: BTreeMap<String, u64>,
    /// Change outcomes by status (`applied`, `duplicate`, `conflict`, `rejected`).
    pub outcomes: BTreeMap<String, u64>,
    /// Changes carried by acknowledged pushes.
    pub changes_acked: u64,
    /// Items received by pulls.
    pub items_pulled: u64,
    /// Retried pushes whose originally applied changes all came back `duplicate`.
    pub retries_ok: u64,
    /// Retried pushes where one did not (a defect if non-zero).
    pub retries_broken: u64,
    /// Retried pushes whose original's answer was lost (a timeout): not judged.
    pub retries_unjudged: u64,
    /// Open loop: requests not sent because the client fell behind by more than its queue.
    pub dropped: u64,
}

impl Stats {
    /// Records one request's latency under `op`.
    pub fn record(&mut self, op: &'static str, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.ops
            .entry(op)
            .or_insert_with(histogram)
            .saturating_record(us);
    }

    /// Counts an error.
    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_default() += 1;
    }

    /// Adds another client's measurements.
    pub fn merge(&mut self, other: Stats) {
        for (op, h) in other.ops {
            let mine = self.ops.entry(op).or_insert_with(histogram);
            // Same bounds everywhere: adding cannot fail.
            let _ = mine.add(&h);
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.changes_acked += other.changes_acked;
        self.items_pulled += other.items_pulled;
        self.retries_ok += other.retries_ok;
        self.retries_broken += other.retries_broken;
        self.retries_unjudged += other.retries_unjudged;
        self.dropped += other.dropped;
    }

    /// Summaries per op over `secs` seconds.
    pub fn summaries(&self, secs: f64) -> BTreeMap<String, OpSummary> {
        self.ops
            .iter()
            .map(|(op, h)| ((*op).to_string(), OpSummary::of(h, secs)))
            .collect()
    }

    /// Requests completed (every op).
    pub fn requests(&self) -> u64 {
        self.ops.values().map(Histogram::len).sum()
    }
}

/// Count, rate and latency percentiles of one kind of request, in milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OpSummary {
    /// Requests completed.
    pub count: u64,
    /// Per second.
    pub per_s: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl OpSummary {
    fn of(h: &Histogram<u64>, secs: f64) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            per_s: h.len() as f64 / secs.max(1e-9),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Reads one un-labelled sample (`name value`) from Prometheus / OpenMetrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// The server's counters that the report turns into rates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerCounters {
    /// Segment PUTs (one per committed segment).
    pub segments: f64,
    /// Events committed.
    pub events: f64,
    /// Bytes of committed segments.
    pub bytes: f64,
    /// Store requests by cause, then kind (`keepsake_store_requests_by_cause_total`).
    pub store: BTreeMap<String, BTreeMap<String, f64>>,
    /// Bytes of store PUTs that succeeded.
    pub store_written: f64,
    /// Users loaded from the store into the views (`keepsake_view_misses_total`).
    pub users_loaded: f64,
    /// Pulls answered from the views' index without a load (`keepsake_pulls_from_index_total`).
    pub pulls_from_index: f64,
}

/// The prefix of the store's requests by cause in `/metrics`.
const BY_CAUSE: &str = "keepsake_store_requests_by_cause_total{";

impl ServerCounters {
    /// Parses `/metrics`.
    pub fn parse(text: &str) -> Self {
        let mut store: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(BY_CAUSE) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let (mut cause, mut op) = (None, None);
            for pair in labels.split(',') {
                match pair.split_once('=') {
                    Some(("cause", v)) => cause = Some(v.trim_matches('"')),
                    Some(("op", v)) => op = Some(v.trim_matches('"')),
                    _ => {}
                }
            }
            if let (Some(cause), Some(op), Ok(v)) = (cause, op, value.trim().parse::<f64>()) {
                store
                    .entry(cause.to_string())
                    .or_default()
                    .insert(op.to_string(), v);
            }
        }
        Self {
            segments: metric(text, "keepsake_segments_total").unwrap_or(0.0),
            events: metric(text, "keepsake_segment_events_total").unwrap_or(0.0),
            bytes: metric(text, "keepsake_segment_bytes_total").unwrap_or(0.0),
            store,
            store_written: metric(text, "keepsake_store_written_bytes_total").unwrap_or(0.0),
            users_loaded: metric(text, "keepsake_view_misses_total").unwrap_or(0.0),
            pulls_from_index: metric(text, "keepsake_pulls_from_index_total").unwrap_or(0.0),
        }
    }
}

/// The server's figures over the measured interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServerSummary {
    /// Segment PUTs per second (bounded by shards / commit window).
    pub segment_puts_per_s: f64,
    /// Events committed in the interval.
    pub events_committed: f64,
    /// Events per segment.
    pub events_per_segment: f64,
    /// Segment bytes per event.
    pub bytes_per_event: f64,
    /// Store requests per second, by cause, then kind.
    pub store_requests_per_s: BTreeMap<String, BTreeMap<String, f64>>,
    /// Bytes of store PUTs per second.
    pub store_written_per_s: f64,
    /// Users loaded from the store per second (each a read of its part and tail).
    pub users_loaded_per_s: f64,
    /// Pulls answered from the views' index per second, without a load.
    pub pulls_from_index_per_s: f64,
}

impl ServerSummary {
    /// Store GETs for devices' requests (cause `read`) per user loaded: what a load costs,
    /// since nearly all of that cause's GETs are loads. `None` when no user was loaded.
    pub fn read_gets_per_load(&self) -> Option<f64> {
        let gets = self
            .store_requests_per_s
            .get("read")
            .and_then(|ops| ops.get("get"))
            .copied()
            .unwrap_or(0.0);
        (self.users_loaded_per_s > 0.0).then(|| gets / self.users_loaded_per_s)
    }
}

impl ServerSummary {
    /// From counters read at the start and the end of `secs` seconds.
    pub fn between(start: ServerCounters, end: ServerCounters, secs: f64) -> Self {
        let segments = end.segments - start.segments;
        let events = end.events - start.events;
        let secs = secs.max(1e-9);
        let store_requests_per_s = end
            .store
            .iter()
            .map(|(cause, ops)| {
                let before = start.store.get(cause);
                let rates = ops
                    .iter()
                    .map(|(op, n)| {
                        let was = before.and_then(|b| b.get(op)).copied().unwrap_or(0.0);
                        (op.clone(), (n - was).max(0.0) / secs)
                    })
                    .filter(|(_, r)| *r > 0.0)
                    .collect::<BTreeMap<_, _>>();
                (cause.clone(), rates)
            })
            .filter(|(_, rates)| !rates.is_empty())
            .collect();
        Self {
            store_requests_per_s,
            store_written_per_s: (end.store_written - start.store_written).max(0.0) / secs,
            users_loaded_per_s: (end.users_loaded - start.users_loaded).max(0.0) / secs,
            pulls_from_index_per_s: (end.pulls_from_index - start.pulls_from_index).max(0.0) / secs,
            segment_puts_per_s: segments / secs.max(1e-9),
            events_committed: events,
            events_per_segment: if segments > 0.0 {
                events / segments
            } else {
                0.0
            },
            bytes_per_event: if events > 0.0 {
                (end.bytes - start.bytes) / events
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies_and_merge_across_clients() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for i in 1..=500u64 {
            a.record("push", Duration::from_millis(i));
            b.record("push", Duration::from_millis(500 + i));
        }
        b.error("503 unavailable");
        a.merge(b);
        let s = &a.summaries(10.0)["push"];
        assert_eq!(s.count, 1000);
        assert!((s.per_s - 100.0).abs() < 1e-9);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{}", s.p50_ms);
        assert!((s.p99_ms - 990.0).abs() < 1.5, "{}", s.p99_ms);
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{}", s.max_ms);
        assert_eq!(a.errors["503 unavailable"], 1);
        assert_eq!(a.requests(), 1000);
    }

    #[test]
    fn server_figures_are_deltas_of_the_exposition() {
        let text = "# HELP keepsake_segments Segments\n# TYPE keepsake_segments counter\nkeepsake_segments_total 10\nkeepsake_segment_events_total 1000\nkeepsake_segment_bytes_total 150000\nkeepsake_segments_created 1.0\nkeepsake_store_requests_by_cause_total{cause=\"push\",op=\"put\"} 10\nkeepsake_store_requests_by_cause_total{cause=\"push\",op=\"list\"} 12\nkeepsake_store_requests_by_cause_total{cause=\"devices\",op=\"list\"} 4\nkeepsake_store_written_bytes_total 160000\nkeepsake_store_requests_by_cause_total{cause=\"read\",op=\"get\"} 70\nkeepsake_view_misses_total 30\nkeepsake_pulls_from_index_total 40\n# EOF\n";
        let end = ServerCounters::parse(text);
        let by_cause = |pairs: &[(&str, &str, f64)]| {
            let mut m: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
            for (c, o, v) in pairs {
                m.entry((*c).into()).or_default().insert((*o).into(), *v);
            }
            m
        };
        assert_eq!(
            end,
            ServerCounters {
                segments: 10.0,
                events: 1000.0,
                bytes: 150000.0,
                store: by_cause(&[
                    ("push", "put", 10.0),
                    ("push", "list", 12.0),
                    ("devices", "list", 4.0),
                    ("read", "get", 70.0)
                ]),
                store_written: 160000.0,
                users_loaded: 30.0,
                pulls_from_index: 40.0,
            }
        );
        let start = ServerCounters {
            segments: 5.0,
            events: 500.0,
            bytes: 50000.0,
            store: by_cause(&[
                ("push", "put", 5.0),
                ("push", "list", 6.0),
                ("devices", "list", 4.0),
            ]),
            store_written: 60000.0,
            users_loaded: 20.0,
            pulls_from_index: 10.0,
        };
        let s = ServerSummary::between(start, end, 2.0);
        assert_eq!(s.segment_puts_per_s, 2.5);
        assert_eq!(s.events_per_segment, 100.0);
        assert_eq!(s.bytes_per_event, 200.0);
        assert_eq!(
            s.store_requests_per_s,
            by_cause(&[
                ("push", "put", 2.5),
                ("push", "list", 3.0),
                ("read", "get", 35.0)
            ]),
            "causes with no request in the interval are left out"
        );
        assert_eq!(s.store_written_per_s, 50000.0);
        assert_eq!(s.users_loaded_per_s, 5.0);
        assert_eq!(s.pulls_from_index_per_s, 15.0);
        // 70 GETs of reads over 2 s (none before) against 10 loads: 7 a load.
        assert_eq!(s.read_gets_per_load(), Some(7.0));
        assert_eq!(metric(text, "missing_total"), None);
    }
}
