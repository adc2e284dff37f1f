//! Keepsake's event log: every device change, as immutable events in per-shard logs of Parquet
//! segments on object storage.
//!
//! Users are hashed onto shards ([`keepsake_store::keys::shard_for`]); each shard is one ordered
//! log with exactly one writer task in this process ([`writer`] states its invariants). A push is
//! answered only after the segment holding its events was confirmed by the store. Two processes
//! pointed at one store are safe: segment numbers are claimed with create-only PUTs, so at most
//! one commits each number, and the loser answers with a retryable error, never an ack.
//!
//! On open, each shard lists its segments (refusing to open past a gap), loads its newest
//! checkpoint and folds every segment after it with [`keepsake_model::apply`]. Users whose state
//! is evicted from memory ([`view`]) are loaded again the same way, one user at a time. A
//! checkpointer per shard writes a new checkpoint (previous checkpoint + segments since) every
//! `checkpoint_every_events` events or `checkpoint_interval`, then moves the segments up to it
//! into history objects ([`compact`]). A process reading segments that another process on the
//! same store compacted finds them again by listing.

mod as_of;
pub mod budget;
mod chain;
pub mod checkpoint;
pub mod compact;
mod config;
mod error;
pub mod frontier;
mod load;
mod ops;
pub mod owner;
mod push;
pub mod reader;
pub mod retention;
mod shard;
mod stats;
mod turns;
mod upkeep;
pub mod verify;
pub mod view;
pub mod writer;

use std::sync::{Arc, RwLock};

use keepsake_model::{Clock, IdGenerator, UserId};
use keepsake_store::{Descriptor, keys, open_or_create_descriptor};
use object_store::ObjectStore;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span};

pub use checkpoint::{
    CheckpointReport, PartsPolicy, Sharing, write_checkpoint, write_checkpoint_sharing,
    write_checkpoint_with,
};
pub use compact::{CompactionPolicy, CompactionReport, compact_shard};
pub use config::LogConfig;
pub use error::LogError;
pub use push::{PushRequest, PushResult};
pub use reader::{
    Checkpoint, CheckpointForm, CheckpointListed, Footers, HistoryListed, LatestItems, Layout,
    PartFooters, Pick, Place, ReadStats, Source, UpTo, checkpoint_exists, list_checkpoint_objects,
    list_checkpoints, list_history, list_layout, list_layout_reaching, list_layout_upto,
    list_segments, open_checkpoint, open_checkpoint_as, read_checkpoint, read_checkpoint_user,
    read_checkpoint_user_items, read_history, read_segment, read_segment_meta, read_segment_sized,
    read_source_segments, read_user, read_user_in, read_user_latest_in, read_user_latest_sized,
    read_user_sized, scan_shard, scan_shard_upto,
};
pub use shard::recover_shard;
pub use stats::{AtomicHistogram, LogStats};
pub use upkeep::apply_retention;
pub use view::{EXACT_CHANGE_IDS, Mark, ReadPlan, ShardState};

pub(crate) use load::load_user;
use shard::Shard;
pub(crate) use shard::poisoned;
use upkeep::{Upkeep, checkpointer};
use writer::Writer;

/// The log of a store: one writer per shard, and read access to committed state.
pub struct Log {
    store: Arc<dyn ObjectStore>,
    descriptor: Descriptor,
    shards: Vec<Shard>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    /// Where the checkpointers run (declared after `tasks`: stopped once they are).
    _upkeep_thread: upkeep::UpkeepThread,
    stats: Arc<LogStats>,
    /// What the shards' checkpoint folds and compactions hold now; the views give way to it.
    upkeep_memory: budget::UpkeepMemory,
    /// What the process is resident beyond its bound, as its owner last measured; the views
    /// give way to it too.
    resident_excess: budget::ResidentExcess,
    cfg: Arc<LogConfig>,
    clock: Arc<dyn Clock>,
    /// When the process last answered a push (latency budget, [`writer::Reactions`]).
    reactions: Arc<writer::Reactions>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("store", &self.store.to_string())
            .field("descriptor", &self.descriptor)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (or creates) the store's descriptor, recovers every shard from its segments, and
    /// starts one writer per shard. Every request the log sends goes through the retrying layer
    /// ([`keepsake_store::retrying`], with `cfg.store`) put over `store` here.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        shard_count: Option<u32>,
        cfg: LogConfig,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
    ) -> Result<Self, LogError> {
        let store = keepsake_store::RetryingStore::wrap(store, cfg.store.clone());
        let descriptor =
            open_or_create_descriptor(store.as_ref(), shard_count, clock.as_ref(), ids.as_ref())
                .await?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(LogStats::default());
        let reactions = Arc::new(writer::Reactions::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let recovered = futures::future::try_join_all(
            (0..descriptor.shard_count).map(|s| recover_shard(store.clone(), s, &cfg)),
        )
        .await?;
        let mut shards = Vec::new();
        let mut tasks = Vec::new();
        let turns = turns::Turns::new(cfg.upkeep_parallelism, cfg.upkeep_tick);
        let upkeep_thread = upkeep::UpkeepThread::start(cfg.upkeep_nice, cfg.upkeep_thread_start)?;
        let upkeep_memory = budget::UpkeepMemory::default();
        let resident_excess = budget::ResidentExcess::default();
        for (shard, mut state) in (0..descriptor.shard_count).zip(recovered) {
            let view_budget = budget::ViewBudget::new(
                cfg.view_memory_bytes,
                descriptor.shard_count as usize,
                upkeep_memory.clone(),
            )
            .giving_way_to(resident_excess.clone());
            state.set_budget(view_budget.clone());
            state.footers.set_bound(cfg.footer_memory_bytes);
            let epoch = state.head + 1;
            let (head_tx, head) = watch::channel(state.head);
            let state = Arc::new(RwLock::new(state));
            let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
            let gate = Arc::new(owner::Gate::new(cfg.cluster_node.is_some()));
            let writer = Writer {
                gate: gate.clone(),
                shard,
                store: store.clone(),
                state: state.clone(),
                rx,
                shutdown: shutdown_rx.clone(),
                cfg: cfg.clone(),
                clock: clock.clone(),
                ids: ids.clone(),
                stats: stats.clone(),
                epoch,
                // Recovery just read the shard; anything that lands after it is caught by the
                // create-only PUT of the next segment (AlreadyExists -> read back -> catch up).
                needs_resync: false,
                last_put: None,
                prepare_estimate: std::time::Duration::ZERO,
                answered_at: None,
                head_tx,
                unconfirmed: None,
                frontier: None,
                company: Default::default(),
                answered_users: Default::default(),
                answered_prune_at: 1024,
                reactions: reactions.clone(),
            };
            tasks.push(tokio::spawn(keepsake_store::with_cause(
                keepsake_store::Cause::Push,
                writer.run().instrument(info_span!("shard_writer", shard)),
            )));
            let maintenance = Arc::new(tokio::sync::Mutex::new(upkeep::NamedParts::default()));
            let upkeep = Upkeep {
                store: store.clone(),
                shard,
                state: state.clone(),
                cfg: cfg.clone(),
                clock: clock.clone(),
                stats: stats.clone(),
                maintenance: maintenance.clone(),
                gate: gate.clone(),
                budget: view_budget,
            };
            tasks.push(
                upkeep_thread.spawn(
                    checkpointer(upkeep, turns.clone(), shutdown_rx.clone())
                        .instrument(info_span!("checkpointer", shard)),
                ),
            );
            shards.push(Shard {
                tx,
                state,
                head,
                maintenance,
                gate,
            });
        }
        info!(store_id = %descriptor.store_id, shards = descriptor.shard_count, "log open");
        Ok(Self {
            store,
            descriptor,
            shards,
            tasks: std::sync::Mutex::new(tasks),
            shutdown,
            _upkeep_thread: upkeep_thread,
            stats,
            upkeep_memory,
            resident_excess,
            cfg,
            clock,
            reactions,
        })
    }

    /// The store descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The shard that holds a user's log.
    pub fn shard_of(&self, user: &UserId) -> u32 {
        keys::shard_for(user, self.descriptor.shard_count)
    }

    /// A receiver that changes whenever the shard commits (or folds in) a segment: long polls
    /// wait on it.
    pub fn watch_head(&self, shard: u32) -> Option<watch::Receiver<u64>> {
        self.shards.get(shard as usize).map(|s| s.head.clone())
    }

    /// Users whose state is in memory, over all shards.
    pub fn resident_users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.state.read().map_or(0, |s| s.resident_users()))
            .sum()
    }

    /// Approximate bytes the checkpoint folds and compactions running now hold (the views give
    /// way to them, [`budget`]).
    pub fn upkeep_held_bytes(&self) -> usize {
        self.upkeep_memory.bytes()
    }

    /// Tells the views that the process is resident `bytes` beyond its bound (0: within it):
    /// each shard's view gives way by its share ([`budget::ResidentExcess`]). When the excess
    /// grows, every view evicts down to its new budget at once, not only at its next commit.
    pub fn set_resident_excess(&self, bytes: usize) {
        let was = self.resident_excess.bytes();
        self.resident_excess.set(bytes);
        if bytes > was {
            for s in &self.shards {
                if let Ok(mut state) = s.state.write() {
                    let budget = state.budget_bytes();
                    state.evict_over(budget);
                }
            }
        }
    }

    /// The excess the views give way to now ([`Self::set_resident_excess`]).
    pub fn resident_excess_bytes(&self) -> usize {
        self.resident_excess.bytes()
    }

    /// What the views' users may hold now, over all shards: their budget less what upkeep
    /// holds, the indexes beside them and the process's resident excess
    /// ([`budget::ViewBudget::now_beside`]).
    pub fn view_budget_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.state.read().map_or(0, |s| s.budget_bytes()))
            .fold(0, usize::saturating_add)
    }

    /// The indexes beside the views' users as their budgets last counted them (measured every
    /// [`view::INDEX_MEASURE_EVERY`] commits), over all shards.
    pub fn view_index_counted_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.state.read().map_or(0, |s| s.index_counted_bytes()))
            .fold(0, usize::saturating_add)
    }

    /// Approximate bytes of the user state in memory, over all shards.
    pub fn resident_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.state.read().map_or(0, |s| s.resident_bytes()))
            .sum()
    }

    /// The indexes kept beside the users over all shards: (users in the tail indexes,
    /// approximate bytes of the indexes) ([`ShardState::index_footprint`]).
    pub fn index_footprint(&self) -> (usize, usize) {
        self.shards
            .iter()
            .map(|s| s.state.read().map_or((0, 0), |s| s.index_footprint()))
            .fold((0, 0), |(u, b), (su, sb)| (u + su, b + sb))
    }

    /// History objects' footers over all shards: (kept, reads that found one kept, reads that
    /// read one from the store).
    pub fn history_footers(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards.iter().fold((0, 0, 0), |(k, h, m), s| {
            match s.state.read().map(|s| s.footers.clone()) {
                Ok(f) => (
                    k + f.history_kept() as u64,
                    h + f.history_hits.load(Relaxed),
                    m + f.history_misses.load(Relaxed),
                ),
                Err(_) => (k, h, m),
            }
        })
    }

    /// Parts' and runs' footers over all shards: (kept, their bytes, reads that found one
    /// kept, reads that read one from the store, footers let go to stay within their bound,
    /// `LogConfig::footer_memory_bytes` a shard).
    pub fn part_footers(&self) -> PartFooters {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards
            .iter()
            .filter_map(|s| s.state.read().ok().map(|s| s.footers.clone()))
            .fold(PartFooters::default(), |t, f| {
                let (kept, bytes) = f.parts_kept();
                PartFooters {
                    kept: t.kept + kept,
                    bytes: t.bytes + bytes,
                    hits: t.hits + f.part_hits.load(Relaxed),
                    misses: t.misses + f.part_misses.load(Relaxed),
                    evictions: t.evictions + f.part_evictions.load(Relaxed),
                }
            })
    }

    /// View counters over all shards: (hits, misses that loaded a user, evictions).
    pub fn view_counters(&self) -> (u64, u64, u64) {
        self.shards
            .iter()
            .fold((0, 0, 0), |(h, m, e), s| match s.state.read() {
                Ok(s) => (
                    h + s.hits.load(std::sync::atomic::Ordering::Relaxed),
                    m + s.misses,
                    e + s.evictions,
                ),
                Err(_) => (h, m, e),
            })
    }

    /// The newest checkpoint of a shard (the segment it includes up to).
    pub fn checkpoint(&self, shard: u32) -> Option<u64> {
        self.shards
            .get(shard as usize)
            .and_then(|s| s.state.read().ok().and_then(|s| s.checkpoint))
    }

    /// The last committed segment of a shard.
    pub fn head(&self, shard: u32) -> u64 {
        self.shards
            .get(shard as usize)
            .and_then(|s| s.state.read().ok().map(|s| s.head))
            .unwrap_or(0)
    }

    /// Pushes waiting in the writer queues of every shard now (how close the log is to
    /// answering `overloaded`).
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.tx.max_capacity() - s.tx.capacity())
            .sum()
    }

    /// The owner generation this process holds for `shard`: `Some(0)` without a cluster
    /// (every shard is this process's), `None` when it does not own the shard now.
    pub fn owned(&self, shard: u32) -> Option<u64> {
        self.shards.get(shard as usize).and_then(|s| s.gate.held())
    }

    /// Takes `shard` for this server (a cluster: [`LogConfig::cluster_node`]): writes the next
    /// generation of its ownership fence ([`owner`]), then brings the shard's view up to
    /// everything any server committed before that, and only then takes batches. Returns the
    /// generation. From the moment it returns, a previous owner acknowledges no more batches of
    /// the shard. Without a cluster, nothing to do (`0`).
    pub async fn acquire(&self, shard: u32, assignment: u64) -> Result<u64, LogError> {
        let Some(node) = self.cfg.cluster_node.as_deref() else {
            return Ok(0);
        };
        let s = self
            .shards
            .get(shard as usize)
            .ok_or(LogError::NotOwner { shard })?;
        let taken = owner::take(self.store.as_ref(), shard, node, assignment).await?;
        s.gate.hold(taken.generation);
        // An empty push through the writer: it checks the store's head and re-reads the shard
        // if another server moved it on (writer invariant 10), so the view is current before
        // anything is answered from it.
        if let Err(e) = self.sync_shard(shard).await {
            s.gate.drop_generation(taken.generation);
            return Err(e);
        }
        info!(shard, generation = taken.generation, "shard acquired");
        Ok(taken.generation)
    }

    /// Hands `shard` over: new batches are refused (`NotOwner`), the batch in flight and those
    /// queued before are answered, then the generation is let go. The next owner's
    /// [`Log::acquire`] fences the store whether or not this ran (a crash); running it first
    /// means no client sees a batch fail for the hand-over.
    pub async fn release(&self, shard: u32) {
        let Some(s) = self.shards.get(shard as usize) else {
            return;
        };
        let Some(generation) = s.gate.held() else {
            return;
        };
        s.gate.close();
        // Queued after every push before it: answered (refused) only once those were.
        let _ = self.sync_shard(shard).await;
        s.gate.drop_generation(generation);
        info!(shard, generation, "shard released");
    }

    /// Stops every writer at once, without answering queued pushes: what a crash does.
    #[cfg(feature = "testing")]
    pub fn abort_writers(&self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }

    /// Stops taking pushes, commits and answers every push already queued, and waits for the
    /// writers to finish.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }
}
