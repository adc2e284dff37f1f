//! Prometheus metrics (OpenMetrics text; served at `/metrics` by `api/ops.rs`).
//!
//! HTTP requests and latencies by route come from prometheus-client families; the log's own
//! counters (segments, PUTs and their latency, batch sizes, retries, fences) are read from
//! `LogStats` at scrape time, and the store's (every request by kind and outcome, latency,
//! bytes: `keepsake_store_*`) from the store's `StoreStats`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use keepsake_log::LogStats;
use keepsake_store::keys::ObjectKind;
use keepsake_store::{Cause, StoreOp, StoreOutcome, StoreStats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    push_seconds: Histogram,
    push_changes: Counter,
    pull_seconds: Histogram,
    pull_items: Counter,
    pulls_from_index: Counter,
    polls_waiting: Gauge,
    pushes_in_flight: Gauge,
    store: Option<Arc<StoreStats>>,
}

/// Counts one long poll as waiting, or one push as in flight, while it is held.
#[derive(Debug)]
pub struct Waiting(Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let push_seconds = latency_histogram();
        let push_changes = Counter::default();
        let pull_seconds = latency_histogram();
        let pull_items = Counter::default();
        let pulls_from_index = Counter::default();
        let polls_waiting = Gauge::default();
        let pushes_in_flight = Gauge::default();
        registry.register(
            "keepsake_http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "keepsake_http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "keepsake_push_duration_seconds",
            "Push latency: until the changes are durable",
            push_seconds.clone(),
        );
        registry.register(
            "keepsake_push_changes",
            "Changes received in pushes",
            push_changes.clone(),
        );
        registry.register(
            "keepsake_pull_duration_seconds",
            "Pull latency, long polls included",
            pull_seconds.clone(),
        );
        registry.register(
            "keepsake_pull_items",
            "Items sent in pulls",
            pull_items.clone(),
        );
        registry.register(
            "keepsake_pulls_from_index",
            "Pulls with nothing new answered from the view's index, without reading the user",
            pulls_from_index.clone(),
        );
        registry.register(
            "keepsake_long_polls_waiting",
            "Pulls waiting for a change (long polls) right now",
            polls_waiting.clone(),
        );
        registry.register(
            "keepsake_pushes_in_flight",
            "Pushes received and not yet answered (waiting for their commit)",
            pushes_in_flight.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            push_seconds,
            push_changes,
            pull_seconds,
            pull_items,
            pulls_from_index,
            polls_waiting,
            pushes_in_flight,
            store: None,
        }
    }
}

impl Metrics {
    /// The server's metrics, with the store's requests counted in `store`.
    pub fn with_store(store: Arc<StoreStats>) -> Self {
        Self {
            store: Some(store),
            ..Self::default()
        }
    }

    /// Counts a long poll as waiting until the guard is dropped.
    pub fn waiting(&self) -> Waiting {
        self.polls_waiting.inc();
        Waiting(self.polls_waiting.clone())
    }

    /// Counts a push as in flight until the guard is dropped.
    pub fn push_in_flight(&self) -> Waiting {
        self.pushes_in_flight.inc();
        Waiting(self.pushes_in_flight.clone())
    }

    /// Counts one HTTP request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records a committed push.
    pub fn observe_push(&self, changes: usize, took: Duration) {
        self.push_seconds.observe(took.as_secs_f64());
        self.push_changes.inc_by(changes as u64);
    }

    /// Counts a pull (or a long poll's look) with nothing new answered from the view's index.
    pub fn observe_pull_from_index(&self) {
        self.pulls_from_index.inc();
    }

    /// Records a pull.
    pub fn observe_pull(&self, items: usize, took: Duration) {
        self.pull_seconds.observe(took.as_secs_f64());
        self.pull_items.inc_by(items as u64);
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {value}\n"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
    );
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    h: &keepsake_log::AtomicHistogram,
    scale: f64,
) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
    histogram_lines(out, name, "", h, scale);
}

/// The sample lines of one histogram; `labels` (`op="put",`) go before `le`.
fn histogram_lines(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &keepsake_log::AtomicHistogram,
    scale: f64,
) {
    let (buckets, sum, count) = h.snapshot();
    let mut cumulative = 0;
    for (le, n) in buckets {
        cumulative += n;
        let le = le.map_or_else(|| "+Inf".to_string(), |v| format!("{}", v as f64 * scale));
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    let plain = match labels.trim_end_matches(',') {
        "" => String::new(),
        l => format!("{{{l}}}"),
    };
    let _ = write!(
        out,
        "{name}_sum{plain} {}\n{name}_count{plain} {count}\n",
        sum as f64 * scale
    );
}

/// The store's requests by kind and outcome, their latency by kind, and bytes each way.
fn store_metrics(out: &mut String, s: &StoreStats) {
    let name = "keepsake_store_requests";
    let _ = write!(
        out,
        "# HELP {name} Requests sent to the object store, by kind and outcome (a listing counts once however many pages; a delete once per object)\n# TYPE {name} counter\n"
    );
    for op in StoreOp::ALL {
        for outcome in StoreOutcome::ALL {
            let _ = writeln!(
                out,
                "{name}_total{{op=\"{}\",outcome=\"{}\"}} {}",
                op.as_str(),
                outcome.as_str(),
                s.requests(op, outcome)
            );
        }
    }
    // By cause: only the pairs that occurred (ten causes by seven kinds would be mostly zeros).
    let name = "keepsake_store_requests_by_cause";
    let _ = write!(
        out,
        "# HELP {name} Requests sent to the object store, by the work they were for and kind\n# TYPE {name} counter\n"
    );
    for cause in Cause::ALL {
        for op in StoreOp::ALL {
            let n = s.requests_for(cause, op);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{name}_total{{cause=\"{}\",op=\"{}\"}} {n}",
                    cause.as_str(),
                    op.as_str()
                );
            }
        }
    }
    let name = "keepsake_store_request_seconds";
    let _ = write!(
        out,
        "# HELP {name} Store request latency by kind (deletes are not timed)\n# TYPE {name} histogram\n"
    );
    for op in StoreOp::ALL {
        if let Some(h) = s.latency_micros(op) {
            let labels = format!("op=\"{}\",", op.as_str());
            histogram_lines(out, name, &labels, h, 1e-6);
        }
    }
    counter(
        out,
        "keepsake_store_written_bytes",
        "Bytes of the store PUTs that succeeded",
        s.bytes_written(),
    );
    counter(
        out,
        "keepsake_store_read_bytes",
        "Bytes of the store GETs answered",
        s.bytes_read(),
    );
    let name = "keepsake_store_read_bytes_by_cause";
    let _ = write!(
        out,
        "# HELP {name} Bytes of the store GETs answered, by the work they were for\n# TYPE {name} counter\n"
    );
    for cause in Cause::ALL {
        let n = s.bytes_read_for(cause);
        if n > 0 {
            let _ = writeln!(out, "{name}_total{{cause=\"{}\"}} {n}", cause.as_str());
        }
    }
    by_object(
        out,
        "keepsake_store_read_bytes_by_object",
        "Bytes of the store GETs answered",
        |kind| s.bytes_read_of(kind),
    );
    by_object(
        out,
        "keepsake_store_gets_by_object",
        "Store GETs answered",
        |kind| s.gets_of(kind),
    );
    let name = "keepsake_store_file_reads";
    let _ = write!(
        out,
        "# HELP {name} Reads of a file store: answered on the thread that asked (the page cache held their bytes, or the object is not there), or handed to the blocking pool\n# TYPE {name} counter\n"
    );
    let _ = writeln!(
        out,
        "{name}_total{{served=\"page_cache\"}} {}\n{name}_total{{served=\"blocking_pool\"}} {}",
        s.file_reads_cached(),
        s.file_reads_handed_off()
    );
}

/// Counter `name` with one sample for each kind of object (the key's directory).
fn by_object(out: &mut String, name: &str, what: &str, count: impl Fn(ObjectKind) -> u64) {
    let _ = write!(
        out,
        "# HELP {name} {what}, by the kind of object read (segment, history, part, checkpoint, other)\n# TYPE {name} counter\n"
    );
    for kind in ObjectKind::ALL {
        let _ = writeln!(
            out,
            "{name}_total{{object=\"{}\"}} {}",
            kind.as_str(),
            count(kind)
        );
    }
}

/// The OpenMetrics text of `/metrics`: these metrics, then the log's counters (read from
/// `LogStats` now) when the log is open.
pub fn text(
    metrics: &Metrics,
    log: Option<&keepsake_log::Log>,
    cluster: Option<&crate::cluster::Cluster>,
) -> String {
    let mut out = String::new();
    if encode(&mut out, &metrics.registry).is_err() {
        out.clear();
    }
    // prometheus-client ends with "# EOF"; the log's metrics go before it.
    if let Some(stripped) = out.strip_suffix("# EOF\n") {
        out.truncate(stripped.len());
    }
    if let Some(store) = &metrics.store {
        store_metrics(&mut out, store);
    }
    if let Some(log) = log {
        let s = log.stats();
        let g = |c: &std::sync::atomic::AtomicU64| LogStats::get(c);
        counter(
            &mut out,
            "keepsake_segments",
            "Segments committed (one PUT each)",
            g(&s.segments),
        );
        counter(
            &mut out,
            "keepsake_segment_events",
            "Events committed",
            g(&s.events),
        );
        counter(
            &mut out,
            "keepsake_segment_bytes",
            "Bytes of segments committed",
            g(&s.bytes),
        );
        counter(
            &mut out,
            "keepsake_segment_put_errors",
            "Segment PUTs that failed or timed out",
            g(&s.put_errors),
        );
        counter(
            &mut out,
            "keepsake_segment_put_retries",
            "Segment PUTs retried under the same number",
            g(&s.put_retries),
        );
        counter(
            &mut out,
            "keepsake_segment_put_ambiguous_resolved",
            "Failed PUTs that a read-back showed had landed",
            g(&s.ambiguous_resolved),
        );
        counter(
            &mut out,
            "keepsake_fenced_batches",
            "Batches lost to another writer",
            g(&s.fenced),
        );
        counter(
            &mut out,
            "keepsake_segment_numbers_reused_refused",
            "Segment PUTs that landed in a number used before and compacted; removed, never acknowledged",
            g(&s.reused_numbers),
        );
        gauge(
            &mut out,
            "keepsake_segment_puts_unconfirmed",
            "Shard writers holding a segment PUT that may have landed and is not settled yet",
            g(&s.unconfirmed_puts),
        );
        counter(
            &mut out,
            "keepsake_compaction_strays_removed",
            "Segment objects in numbers a verified history object holds, of another batch (never acknowledged), removed by compaction",
            g(&s.strays_removed),
        );
        counter(
            &mut out,
            "keepsake_stale_answers_avoided",
            "Batches that wrote nothing and were staged again after the shard moved on in another process",
            g(&s.stale_answers_avoided),
        );
        counter(
            &mut out,
            "keepsake_mass_delete_refusals",
            "Pushes refused by the mass-delete guard",
            g(&s.mass_delete_refusals),
        );
        counter(
            &mut out,
            "keepsake_commit_budget_waits",
            "Batches of fewer than --commit-enough-changes changes held open for company, up to the commit latency budget",
            g(&s.budget_waits),
        );
        counter(
            &mut out,
            "keepsake_commit_budget_skips",
            "Such batches committed by the window instead: the shard's devices push (not counting pushes within 25 ms of an answer) at less than one other push per budget, or the batch holds a push that followed its user's previous answer within the budget plus a second, or a push that is not a device's",
            g(&s.budget_skips),
        );
        counter(
            &mut out,
            "keepsake_ancestor_reads",
            "History reads for the earlier documents of stale patches, before queueing",
            g(&s.ancestor_reads),
        );
        counter(
            &mut out,
            "keepsake_writer_ancestor_reads",
            "History reads by a shard writer itself (they hold up its batch)",
            g(&s.writer_ancestor_reads),
        );
        counter(
            &mut out,
            "keepsake_old_change_reads",
            "Log reads resolving a pushed change id the user's filter of older ids may hold, before queueing",
            g(&s.old_change_reads),
        );
        counter(
            &mut out,
            "keepsake_writer_old_change_reads",
            "Log reads resolving an older change id by a shard writer itself",
            g(&s.writer_old_change_reads),
        );
        counter(
            &mut out,
            "keepsake_old_changes_found",
            "Older change ids the log had (resends answered duplicate); the rest were filter false positives",
            g(&s.old_changes_found),
        );
        let name = "keepsake_search_sources_read";
        let _ = write!(
            out,
            "# HELP {name} Objects (segments, history objects) whose rows of the user searches of a user's history (stale patches' bases, resent change ids) read: those holding segments the view's index names, then before the index segments and history objects\n# TYPE {name} counter\n"
        );
        for (kind, n) in [
            ("indexed", &s.search_indexed),
            ("segment", &s.search_segments),
            ("history", &s.search_history_objects),
        ] {
            let _ = writeln!(out, "{name}_total{{kind=\"{kind}\"}} {}", g(n));
        }
        counter(
            &mut out,
            "keepsake_searches_past_index",
            "Searches of a user's history that read before the view's index (older than the generations it covers)",
            g(&s.searches_past_index),
        );
        for (name, help, v) in [
            (
                "keepsake_compaction_history_objects",
                "History objects written by compaction (each verified against its segments)",
                &s.compactions,
            ),
            (
                "keepsake_compaction_segments",
                "Segments moved into history objects",
                &s.compacted_segments,
            ),
            (
                "keepsake_compaction_deleted_objects",
                "Objects deleted after their history object was verified",
                &s.compaction_deleted,
            ),
            (
                "keepsake_compaction_written_bytes",
                "Bytes of history objects written",
                &s.compaction_bytes_written,
            ),
            (
                "keepsake_compaction_deleted_bytes",
                "Bytes of the objects compaction deleted",
                &s.compaction_bytes_deleted,
            ),
            (
                "keepsake_compaction_errors",
                "Compactions that failed (retried after the next checkpoint)",
                &s.compaction_errors,
            ),
            (
                "keepsake_checkpoints",
                "Checkpoints written by this process",
                &s.checkpoints,
            ),
            (
                "keepsake_checkpoint_users_written",
                "User states checkpoints read and wrote again (those changed since the previous)",
                &s.checkpoint_users_written,
            ),
            (
                "keepsake_checkpoint_parts_written",
                "Checkpoint parts written (deltas, and parts rewritten by merges)",
                &s.checkpoint_parts_written,
            ),
            (
                "keepsake_checkpoint_parts_kept",
                "Checkpoint parts named again by a new manifest without being written",
                &s.checkpoint_parts_kept,
            ),
            (
                "keepsake_checkpoint_written_bytes",
                "Bytes of checkpoint parts and manifests written",
                &s.checkpoint_bytes_written,
            ),
            (
                "keepsake_checkpoint_filter_run_bytes",
                "Of those, bytes of filter runs: users' sealed change-id filter blocks, written once (and merged size-tiered)",
                &s.checkpoint_filter_run_bytes,
            ),
            (
                "keepsake_checkpoint_microseconds",
                "Time spent writing checkpoints (reading, folding, writing parts and manifest)",
                &s.checkpoint_micros,
            ),
            (
                "keepsake_upkeep_turn_wait_microseconds",
                "Time shards waited for a turn at upkeep (checkpoints go first, then the most events since the last)",
                &s.upkeep_turn_wait_micros,
            ),
            (
                "keepsake_upkeep_rest_microseconds",
                "Time upkeep rested after its turns, so that it works at most its duty of the wall time",
                &s.upkeep_rest_micros,
            ),
            (
                "keepsake_checkpoint_merges",
                "Checkpoints that merged their deltas (into one, or into the base)",
                &s.checkpoint_merges,
            ),
            (
                "keepsake_checkpoint_fold_passes",
                "Passes of checkpoints' folds over their segments: one a checkpoint, more when the states folded passed the fold budget (--checkpoint-fold-mib)",
                &s.checkpoint_fold_passes,
            ),
            (
                "keepsake_checkpoint_fold_gave_way",
                "Times a checkpoint's fold kept fewer users than its budget allows (down to a quarter of it) because upkeep and the process's resident excess asked more than the views can give above their floors; the others are folded in a later pass",
                &s.checkpoint_fold_gave_way,
            ),
        ] {
            counter(&mut out, name, help, g(v));
        }
        histogram(
            &mut out,
            "keepsake_segment_put_seconds",
            "Segment PUT latency",
            &s.put_latency_ms,
            0.001,
        );
        histogram(
            &mut out,
            "keepsake_commit_batch_events",
            "Events per committed segment",
            &s.batch_events,
            1.0,
        );
        let (hits, misses, evictions) = log.view_counters();
        counter(
            &mut out,
            "keepsake_view_hits",
            "User reads served from memory",
            hits,
        );
        counter(
            &mut out,
            "keepsake_view_misses",
            "Users loaded from checkpoint and log",
            misses,
        );
        counter(
            &mut out,
            "keepsake_view_evictions",
            "Users evicted over the memory budget",
            evictions,
        );
        gauge(
            &mut out,
            "keepsake_writer_queued",
            "Pushes waiting in the shard writers' queues",
            log.queued() as u64,
        );
        gauge(
            &mut out,
            "keepsake_view_users",
            "Users whose state is in memory",
            log.resident_users() as u64,
        );
        gauge(
            &mut out,
            "keepsake_view_bytes",
            "Approximate bytes of user state in memory",
            log.resident_bytes() as u64,
        );
        gauge(
            &mut out,
            "keepsake_view_budget_bytes",
            "What the views' users may hold now: the view budget less what upkeep (checkpoint folds, compactions) holds, the indexes beside the users and the process's resident excess, down to a quarter of it",
            log.view_budget_bytes() as u64,
        );
        gauge(
            &mut out,
            "keepsake_upkeep_held_bytes",
            "Approximate bytes upkeep holds now: the states of checkpoint folds and the events of compactions; the views give way to them",
            log.upkeep_held_bytes() as u64,
        );
        gauge(
            &mut out,
            "keepsake_resident_excess_bytes",
            "Bytes the process was resident beyond the view budget plus --memory-overhead-mb at its last reading (every 100 ms)",
            crate::resident::last_excess(),
        );
        gauge(
            &mut out,
            "keepsake_resident_give_way_bytes",
            "What the views give way by for the process's resident memory: the excesses of every reading since it was last within its limit, added up (0 within it)",
            log.resident_excess_bytes() as u64,
        );
        if let Some(resident) = crate::resident::resident_bytes() {
            gauge(
                &mut out,
                "keepsake_resident_bytes",
                "The process's resident memory (the kernel's VmRSS)",
                resident,
            );
        }
        if let Some(peak) = crate::resident::peak_bytes() {
            gauge(
                &mut out,
                "keepsake_resident_peak_bytes",
                "The process's peak resident memory since it started (the kernel's VmHWM); each new peak over the view budget plus --memory-overhead-mb is logged at warn with what held memory then",
                peak,
            );
        }
        let (indexed, index_bytes) = log.index_footprint();
        gauge(
            &mut out,
            "keepsake_view_index_users",
            "Users in the tail indexes (written since the checkpoint before the newest)",
            indexed as u64,
        );
        gauge(
            &mut out,
            "keepsake_checkpoint_fold_peak_bytes",
            "Approximate bytes of user states the last checkpoint's fold held at its peak (bounded by --checkpoint-fold-mib, plus one run of segments)",
            LogStats::get(&s.checkpoint_fold_peak_bytes),
        );
        gauge(
            &mut out,
            "keepsake_view_index_bytes",
            "Approximate bytes of the indexes kept beside the users (tail index, segment sizes, history objects, the opened manifest, part, run and history footers)",
            index_bytes as u64,
        );
        let parts = log.part_footers();
        gauge(
            &mut out,
            "keepsake_part_footers",
            "Checkpoint parts and filter runs whose footers and page indexes the views keep for loads",
            parts.kept as u64,
        );
        gauge(
            &mut out,
            "keepsake_part_footer_bytes",
            "Approximate bytes of those footers (bounded by --footer-memory-mb; part of keepsake_view_index_bytes)",
            parts.bytes as u64,
        );
        counter(
            &mut out,
            "keepsake_part_footer_hits",
            "Reads of a part or filter run that found its footer kept",
            parts.hits,
        );
        counter(
            &mut out,
            "keepsake_part_footer_misses",
            "Reads of a part or filter run that read its footer from the store",
            parts.misses,
        );
        counter(
            &mut out,
            "keepsake_part_footer_evictions",
            "Footers of parts and filter runs let go to stay within --footer-memory-mb",
            parts.evictions,
        );
        let (kept, hits, misses) = log.history_footers();
        gauge(
            &mut out,
            "keepsake_history_footers",
            "History objects whose footers and page indexes the views keep for reads of older history",
            kept,
        );
        counter(
            &mut out,
            "keepsake_history_footer_hits",
            "Reads of a history object that found its footer kept",
            hits,
        );
        counter(
            &mut out,
            "keepsake_history_footer_misses",
            "Reads of a history object that read its footer from the store (a HEAD, then the footer and page index)",
            misses,
        );
    }
    if let Some(a) = crate::memory::allocator() {
        gauge(
            &mut out,
            "keepsake_allocator_allocated_bytes",
            "Bytes the process holds allocated (jemalloc)",
            a.allocated,
        );
        gauge(
            &mut out,
            "keepsake_allocator_resident_bytes",
            "Bytes of physical memory the allocator holds (allocations, fragmentation and its own metadata)",
            a.resident,
        );
        gauge(
            &mut out,
            "keepsake_allocator_active_bytes",
            "Bytes in the allocator's pages that hold allocations (allocated plus the free room in part-used pages)",
            a.active,
        );
        gauge(
            &mut out,
            "keepsake_allocator_dirty_bytes",
            "Bytes of pages freed whole and not yet returned to the system (resident until --allocator-dirty-decay-ms has passed, or reused)",
            a.dirty,
        );
        counter(
            &mut out,
            "keepsake_allocator_purges",
            "Times the allocator's dirty pages were returned to the system because the process was over its limit (--allocator-purge-over-limit)",
            crate::resident::PURGES
                .count
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        counter(
            &mut out,
            "keepsake_allocator_purged_bytes",
            "Bytes of dirty pages those purges returned",
            crate::resident::PURGES
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "keepsake_allocator_arenas_in_use",
            "Allocator arenas with threads bound to them (1: every thread shares one, --allocator-arenas)",
            a.arenas_in_use,
        );
        gauge(
            &mut out,
            "keepsake_allocator_thread_cached_bytes",
            "Bytes freed into threads' own allocator caches, reusable by those threads only (--allocator-thread-cache-max-bytes)",
            a.thread_cached,
        );
        gauge(
            &mut out,
            "keepsake_allocator_retained_bytes",
            "Bytes of address space the allocator keeps for reuse, returned to the system",
            a.retained,
        );
    }
    if let Some(c) = cluster {
        cluster_metrics(&mut out, c, log);
    }
    out.push_str("# EOF\n");
    out
}

/// A cluster member's own figures: what it serves, under which generations, what it forwards.
fn cluster_metrics(out: &mut String, c: &crate::cluster::Cluster, log: Option<&keepsake_log::Log>) {
    use std::sync::atomic::Ordering::Relaxed;
    let routes = c.routes();
    let local: Vec<(u32, u64)> = (0u32..)
        .zip(&routes)
        .filter_map(|(s, r)| match r {
            crate::cluster::Route::Local(g) => Some((s, *g)),
            _ => None,
        })
        .collect();
    gauge(
        out,
        "keepsake_cluster_owned_shards",
        "Shards this server serves now",
        local.len() as u64,
    );
    gauge(
        out,
        "keepsake_cluster_moving_shards",
        "Shards no server serves now from this server's view (moving, or their server gone)",
        routes
            .iter()
            .filter(|r| **r == crate::cluster::Route::Unavailable)
            .count() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP keepsake_cluster_shard_generation The owner generation this server holds, per shard it serves\n# TYPE keepsake_cluster_shard_generation gauge"
    );
    for (s, g) in &local {
        let _ = writeln!(
            out,
            "keepsake_cluster_shard_generation{{shard=\"{s}\"}} {g}"
        );
    }
    counter(
        out,
        "keepsake_cluster_forwards",
        "Requests forwarded to the server of their shard",
        c.stats.forwards.load(Relaxed),
    );
    counter(
        out,
        "keepsake_cluster_forward_errors",
        "Forwards the other server did not answer (answered 503)",
        c.stats.forward_errors.load(Relaxed),
    );
    counter(
        out,
        "keepsake_cluster_moving_answers",
        "Requests answered 503 because their shard was moving",
        c.stats.moving.load(Relaxed),
    );
    counter(
        out,
        "keepsake_cluster_acquired",
        "Shards this server took (fenced in the store)",
        c.stats.acquired.load(Relaxed),
    );
    counter(
        out,
        "keepsake_cluster_released",
        "Shards this server handed over",
        c.stats.released.load(Relaxed),
    );
    if let Some(log) = log {
        counter(
            out,
            "keepsake_cluster_deposed_batches",
            "Batches written but not acknowledged because another server took the shard",
            keepsake_log::LogStats::get(&log.stats().deposed),
        );
    }
}
