use std::sync::atomic::{AtomicU64, Ordering};

pub use keepsake_store::AtomicHistogram;
use std::time::Duration;

/// Counters of what the log did; read by metrics and by tests.
#[derive(Debug)]
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
    /// Batches written but not acknowledged because another server took the shard (a cluster).
    pub deposed: AtomicU64,
    /// Of those, PUTs that landed in a number used before and compacted (a writer behind).
    pub reused_numbers: AtomicU64,
    /// Shard writers holding a segment PUT that may have landed and is not settled yet (gauge):
    /// settled at the writer's next re-read of its shard. A process that stops meanwhile may
    /// leave a stray segment (never acknowledged), which compaction removes.
    pub unconfirmed_puts: AtomicU64,
    /// Strays compaction removed: segment objects in numbers a verified history object holds,
    /// of another batch (written by a writer that was behind, never acknowledged).
    pub strays_removed: AtomicU64,
    /// Batches that wrote nothing and found their view stale before answering (re-staged).
    pub stale_answers_avoided: AtomicU64,
    /// Pushes refused by the mass-delete guard.
    pub mass_delete_refusals: AtomicU64,
    /// Batches of fewer than `commit_enough_changes` changes held open for company, up to the
    /// latency budget (closed sooner by enough changes or a push of a sequence).
    pub budget_waits: AtomicU64,
    /// Such batches committed by the window instead: the shard's devices push at less than one
    /// other push per budget (not counting reactions to answers), or the batch holds a push
    /// that followed its user's previous answer within the budget plus a second (a device
    /// pushing in sequence), or a push that is not a device's (registrations, restores, imports).
    pub budget_skips: AtomicU64,
    /// Reads of a user's history for earlier documents that stale patches need: by the
    /// pushing task before queueing (`ancestor_reads`), and by the shard writer itself when a
    /// version became stale while queued (`writer_ancestor_reads`, which holds up the batch).
    pub ancestor_reads: AtomicU64,
    /// See `ancestor_reads`.
    pub writer_ancestor_reads: AtomicU64,
    /// Reads of a user's log to resolve a pushed change id that the user's filter of older ids
    /// may hold (a resend from before the checkpoint the state was loaded from, or the filter's
    /// false positive): by the pushing task (`old_change_reads`) or by the writer itself
    /// (`writer_old_change_reads`, when the state was loaded again while the push waited).
    pub old_change_reads: AtomicU64,
    /// See `old_change_reads`.
    pub writer_old_change_reads: AtomicU64,
    /// Of those ids, how many the log had (resends answered `duplicate`); the rest were the
    /// filter's false positives.
    pub old_changes_found: AtomicU64,
    /// What searches of a user's history (a stale patch's base, a resent change id) read, in
    /// objects (a segment or a history object), each counted once per read of the user's rows
    /// in it: those read because the view's index names them as holding the user
    /// (`search_indexed`; a history object that compaction has just filled with some of them
    /// counts here), then, before the index, segment objects (`search_segments`) and history
    /// objects (`search_history_objects`). Divided by the searches (`ancestor_reads` +
    /// `old_change_reads`), what one costs. Not counted: the whole-log reads, the writer's
    /// (`writer_ancestor_reads`, `writer_old_change_reads`) and the one that answers a change
    /// id absent once every source was searched (the filter's false positives).
    pub search_indexed: AtomicU64,
    /// See `search_indexed`.
    pub search_segments: AtomicU64,
    /// See `search_indexed`.
    pub search_history_objects: AtomicU64,
    /// Searches that read before the view's index: what they sought was older than the
    /// generations the index covers.
    pub searches_past_index: AtomicU64,
    /// History objects written by compaction.
    pub compactions: AtomicU64,
    /// Segments compaction moved into history objects.
    pub compacted_segments: AtomicU64,
    /// Objects compaction deleted once their history object was verified.
    pub compaction_deleted: AtomicU64,
    /// Bytes of history objects written, and of the objects deleted after them.
    pub compaction_bytes_written: AtomicU64,
    /// See `compaction_bytes_written`.
    pub compaction_bytes_deleted: AtomicU64,
    /// Compactions that failed (retried after the next checkpoint).
    pub compaction_errors: AtomicU64,
    /// Checkpoints written by this process.
    pub checkpoints: AtomicU64,
    /// Users whose state checkpoints read and wrote again (those changed since the previous).
    pub checkpoint_users_written: AtomicU64,
    /// Checkpoint parts written, and parts named again without being written.
    pub checkpoint_parts_written: AtomicU64,
    /// See `checkpoint_parts_written`.
    pub checkpoint_parts_kept: AtomicU64,
    /// Bytes of checkpoint parts and manifests written.
    pub checkpoint_bytes_written: AtomicU64,
    /// Of those, bytes of filter runs (sealed change-id blocks, written once, and merges).
    pub checkpoint_filter_run_bytes: AtomicU64,
    /// Checkpoints that merged their deltas (into one, or into the base).
    pub checkpoint_merges: AtomicU64,
    /// Passes of checkpoints' folds over their segments (one a checkpoint, more when its
    /// states passed the fold budget, `PartsPolicy::fold_bytes`).
    pub checkpoint_fold_passes: AtomicU64,
    /// Times a checkpoint's fold kept fewer users than its budget allows because the views
    /// were at their floors and still asked to give way (`budget::ViewBudget::past_the_floors`).
    pub checkpoint_fold_gave_way: AtomicU64,
    /// The states (and parts read whole) the last checkpoint's fold held at its peak,
    /// approximate bytes.
    pub checkpoint_fold_peak_bytes: AtomicU64,
    /// Time spent writing checkpoints (reading, folding, writing parts and manifest), in
    /// microseconds.
    pub checkpoint_micros: AtomicU64,
    /// Time shards spent waiting for a turn at upkeep ([`LogConfig::upkeep_parallelism`]), in
    /// microseconds: a long wait means a shard's tail grew while others checkpointed.
    ///
    /// [`LogConfig::upkeep_parallelism`]: crate::LogConfig::upkeep_parallelism
    pub upkeep_turn_wait_micros: AtomicU64,
    /// Time upkeep rested after its turns ([`LogConfig::upkeep_duty_percent`]), in
    /// microseconds.
    ///
    /// [`LogConfig::upkeep_duty_percent`]: crate::LogConfig::upkeep_duty_percent
    pub upkeep_rest_micros: AtomicU64,
    /// Latency of committed segment PUTs, in milliseconds.
    pub put_latency_ms: AtomicHistogram,
    /// Events per committed segment.
    pub batch_events: AtomicHistogram,
}

const MS_BOUNDS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];
const EVENT_BOUNDS: &[u64] = &[1, 10, 100, 1_000, 10_000, 100_000];

impl Default for LogStats {
    fn default() -> Self {
        Self {
            segments: AtomicU64::new(0),
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            put_micros: AtomicU64::new(0),
            put_errors: AtomicU64::new(0),
            put_retries: AtomicU64::new(0),
            ambiguous_resolved: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            deposed: AtomicU64::new(0),
            reused_numbers: AtomicU64::new(0),
            unconfirmed_puts: AtomicU64::new(0),
            strays_removed: AtomicU64::new(0),
            stale_answers_avoided: AtomicU64::new(0),
            mass_delete_refusals: AtomicU64::new(0),
            budget_waits: AtomicU64::new(0),
            budget_skips: AtomicU64::new(0),
            ancestor_reads: AtomicU64::new(0),
            writer_ancestor_reads: AtomicU64::new(0),
            old_change_reads: AtomicU64::new(0),
            writer_old_change_reads: AtomicU64::new(0),
            old_changes_found: AtomicU64::new(0),
            search_indexed: AtomicU64::new(0),
            search_segments: AtomicU64::new(0),
            search_history_objects: AtomicU64::new(0),
            searches_past_index: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            compacted_segments: AtomicU64::new(0),
            compaction_deleted: AtomicU64::new(0),
            compaction_bytes_written: AtomicU64::new(0),
            compaction_bytes_deleted: AtomicU64::new(0),
            compaction_errors: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            checkpoint_users_written: AtomicU64::new(0),
            checkpoint_parts_written: AtomicU64::new(0),
            checkpoint_parts_kept: AtomicU64::new(0),
            checkpoint_bytes_written: AtomicU64::new(0),
            checkpoint_filter_run_bytes: AtomicU64::new(0),
            checkpoint_merges: AtomicU64::new(0),
            checkpoint_fold_passes: AtomicU64::new(0),
            checkpoint_fold_gave_way: AtomicU64::new(0),
            checkpoint_fold_peak_bytes: AtomicU64::new(0),
            checkpoint_micros: AtomicU64::new(0),
            upkeep_turn_wait_micros: AtomicU64::new(0),
            upkeep_rest_micros: AtomicU64::new(0),
            put_latency_ms: AtomicHistogram::new(MS_BOUNDS),
            batch_events: AtomicHistogram::new(EVENT_BOUNDS),
        }
    }
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
        self.put_latency_ms
            .observe(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        self.batch_events.observe(events);
    }

    pub(crate) fn record_compaction(&self, r: &crate::compact::CompactionReport) {
        self.compactions.fetch_add(r.written, Ordering::Relaxed);
        self.compacted_segments
            .fetch_add(r.segments, Ordering::Relaxed);
        self.compaction_deleted
            .fetch_add(r.deleted, Ordering::Relaxed);
        self.compaction_bytes_written
            .fetch_add(r.bytes_written, Ordering::Relaxed);
        self.compaction_bytes_deleted
            .fetch_add(r.bytes_deleted, Ordering::Relaxed);
        self.strays_removed.fetch_add(r.strays, Ordering::Relaxed);
    }

    pub(crate) fn record_checkpoint(
        &self,
        r: &crate::checkpoint::CheckpointReport,
        took: Duration,
    ) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.checkpoint_users_written
            .fetch_add(r.changed_users, Ordering::Relaxed);
        self.checkpoint_parts_written
            .fetch_add(r.parts_written, Ordering::Relaxed);
        self.checkpoint_parts_kept
            .fetch_add(r.parts_kept, Ordering::Relaxed);
        self.checkpoint_bytes_written
            .fetch_add(r.bytes_written, Ordering::Relaxed);
        self.checkpoint_filter_run_bytes
            .fetch_add(r.filter_run_bytes, Ordering::Relaxed);
        if r.merged.is_some() {
            self.checkpoint_merges.fetch_add(1, Ordering::Relaxed);
        }
        self.checkpoint_fold_passes
            .fetch_add(r.fold_passes, Ordering::Relaxed);
        self.checkpoint_fold_gave_way
            .fetch_add(r.fold_gave_way, Ordering::Relaxed);
        self.checkpoint_fold_peak_bytes
            .store(r.fold_peak_bytes, Ordering::Relaxed);
    }

    /// A search read the user's rows of `sources`: those holding a segment after
    /// `indexed_after` count as read through the view's index; the others by their kind
    /// (`u64::MAX`: the search is past the index, every source by its kind).
    pub(crate) fn record_search_sources(
        &self,
        sources: &[crate::reader::Source],
        indexed_after: u64,
    ) {
        for s in sources {
            let counter = match s {
                _ if *s.numbers().end() > indexed_after => &self.search_indexed,
                crate::reader::Source::Segment { .. } => &self.search_segments,
                crate::reader::Source::History { .. } => &self.search_history_objects,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_upkeep_rest(&self, rested: Duration) {
        self.upkeep_rest_micros.fetch_add(
            u64::try_from(rested.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn record_turn_wait(&self, waited: Duration) {
        self.upkeep_turn_wait_micros.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_segment_is_counted_everywhere() {
        let s = LogStats::default();
        s.record_segment(250, 9000, Duration::from_millis(3));
        s.record_segment(10, 400, Duration::from_millis(30));
        assert_eq!(
            (LogStats::get(&s.segments), LogStats::get(&s.events)),
            (2, 260)
        );
        let (buckets, sum, count) = s.batch_events.snapshot();
        assert_eq!((sum, count), (260, 2));
        assert_eq!(
            buckets
                .iter()
                .find(|(le, _)| *le == Some(1000))
                .map(|b| b.1),
            Some(1)
        );
        let (_, ms_sum, ms_count) = s.put_latency_ms.snapshot();
        assert_eq!((ms_sum, ms_count), (33, 2));
    }

    /// A history object that compaction has filled with segments the index covers (it does,
    /// before the index moves past them) is read for them: it counts as the index's, not as
    /// a read of history before the index; past the index, every source by its kind.
    #[test]
    fn a_search_counts_what_it_read_by_why_it_read_it() {
        use crate::reader::{HistoryListed, Source, Tag};
        let segment = |n| Source::Segment {
            n,
            size: 1,
            tag: Tag::ANY,
        };
        let history = |lo, hi| Source::History {
            object: HistoryListed {
                first: 1,
                last: 12,
                size: 1,
            },
            lo,
            hi,
        };
        let counts = |s: &LogStats| {
            [
                &s.search_indexed,
                &s.search_segments,
                &s.search_history_objects,
            ]
            .map(LogStats::get)
        };
        let s = LogStats::default();
        s.record_search_sources(&[history(1, 12), segment(13), segment(14)], 10);
        assert_eq!(counts(&s), [3, 0, 0]);
        s.record_search_sources(&[history(1, 10), segment(13)], 10);
        assert_eq!(counts(&s), [4, 0, 1]);
        s.record_search_sources(&[history(1, 12), segment(13)], u64::MAX);
        assert_eq!(counts(&s), [4, 1, 2]);
    }
}
