use std::time::Duration;

use keepsake_model::StagePolicy;

/// How the log commits.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Least time between the starts of two segment PUTs of a shard: the bound on PUTs per
    /// second (what object storage bills). Pushes arriving within it share one segment; an idle
    /// shard commits a push at once.
    pub commit_window: Duration,
    /// How long a push may wait for company on a quiet shard (object storage bills per PUT): a
    /// batch holding fewer than `commit_enough_changes` changes stays open until this long after
    /// its first push arrived, so that one PUT carries several devices' pushes. A batch with
    /// enough changes closes by the window as before, so a busy shard is not slowed. Zero (the
    /// default): a quiet shard commits each push at once.
    pub commit_latency_budget: Duration,
    /// Changes that make a batch worth its PUT: it then stops waiting out the latency budget.
    pub commit_enough_changes: usize,
    /// A batch closes early once it holds this many changes.
    pub max_batch_changes: usize,
    /// Pushes that may wait per shard; beyond it pushes are refused as overloaded.
    pub queue_depth: usize,
    /// How each store request is retried and timed out (the layer `Log::open` puts over the
    /// store). A segment PUT is create-only, so it is sent once per attempt below, under
    /// `store.put_timeout`; a failed or timed-out one is resolved by reading it back.
    pub store: keepsake_store::RetryPolicy,
    /// Segment PUT attempts per batch: after a failed one whose read-back finds nothing there
    /// (it did not land), the same number is tried again.
    pub put_attempts: u32,
    /// Wait between those attempts (multiplied by the attempt number).
    pub retry_backoff: Duration,
    /// Segments read at once during recovery and scans; parts a checkpoint reads at once (and
    /// users of each), and HEADs of the parts it names.
    pub read_concurrency: usize,
    /// Document limit and mass-delete guard.
    pub policy: StagePolicy,
    /// Memory for user state, per shard; beyond it, users drawn at random are evicted
    /// ([`crate::ShardState::evict_over`]).
    pub view_memory_bytes: usize,
    /// Memory for the footers of checkpoint parts and filter runs that loads and checkpoints
    /// read (~57 bytes a user of each part), per shard: past it, the least recently used go
    /// and are read again when next needed. Without a bound they grew with the store's users;
    /// counted with the indexes the views make room for.
    pub footer_memory_bytes: usize,
    /// A checkpoint is written once this many events were committed since the last one...
    pub checkpoint_every_events: u64,
    /// ...or once this much time passed with any events committed.
    pub checkpoint_interval: Duration,
    /// How often the shard's upkeep task looks whether a checkpoint is due (a checkpoint is
    /// written at most this long after it became due).
    pub upkeep_tick: Duration,
    /// Shards whose background upkeep (a checkpoint, then retention and compaction) runs at
    /// once in this process; the others wait their turn. Each holds its shard's changed users
    /// in memory and takes CPU from pushes: four shards checkpointing together held four
    /// shards' worth of states and halved pushes (docs/BENCHMARKS.md, "Sustained").
    pub upkeep_parallelism: usize,
    /// How many Linux nice steps below the process the upkeep thread and its blocking threads
    /// run (at most to 19): above 0 pushes come first when the cores are busy, and upkeep still
    /// gets a share (nice 4 weighs 423 against a push thread's 1,024), as RocksDB lowers its
    /// compaction threads. 0 leaves them as every other thread.
    pub upkeep_nice: u8,
    /// The share of wall time, in percent (1-100), that the process's upkeep works: after each
    /// turn (a checkpoint, or a compaction) that took `t`, upkeep rests `t * (100 - d) / d`
    /// with the turn held (at most a tenth of `checkpoint_interval`). A round of upkeep
    /// then takes longer and takes a smaller share of the cores from pushes at any moment, as
    /// RocksDB's rate limiter paces compaction. The rest ends early once any shard of the
    /// process has `checkpoint_every_events` or more since its checkpoint. 100 (or 0): no rest.
    pub upkeep_duty_percent: u8,
    /// Run by each of the upkeep's threads as it starts: the server binds them to its allocator
    /// arenas there, as it does its own runtime's threads. `None`: nothing.
    pub upkeep_thread_start: Option<fn()>,
    /// How a checkpoint's parts are sized and when its deltas are merged.
    pub checkpoint_parts: crate::checkpoint::PartsPolicy,
    /// Which older checkpoints to keep after writing a new one.
    pub retention: crate::retention::RetentionPolicy,
    /// Moving checkpointed segments into history objects (after each checkpoint).
    pub compaction: crate::compact::CompactionPolicy,
    /// This server's id in a cluster. When set, no shard is written (and no upkeep runs on it)
    /// until [`crate::Log::acquire`] took it in the store's ownership fence ([`crate::owner`]);
    /// `None` (one server, the default): every shard is this process's.
    pub cluster_node: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            commit_window: Duration::from_millis(10),
            commit_latency_budget: Duration::ZERO,
            commit_enough_changes: 64,
            max_batch_changes: 20_000,
            queue_depth: 4096,
            store: keepsake_store::RetryPolicy::default(),
            put_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            read_concurrency: 4,
            policy: StagePolicy::default(),
            view_memory_bytes: 256 * 1024 * 1024,
            footer_memory_bytes: 16 * 1024 * 1024,
            checkpoint_every_events: 1_000_000,
            checkpoint_interval: Duration::from_secs(300),
            upkeep_tick: Duration::from_millis(500),
            upkeep_parallelism: 1,
            upkeep_nice: 0,
            upkeep_duty_percent: 100,
            upkeep_thread_start: None,
            checkpoint_parts: crate::checkpoint::PartsPolicy::default(),
            retention: crate::retention::RetentionPolicy::default(),
            compaction: crate::compact::CompactionPolicy::default(),
            cluster_node: None,
        }
    }
}
