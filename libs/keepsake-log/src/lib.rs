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

pub mod compact;
mod config;
mod error;
pub mod reader;
pub mod retention;
mod stats;
pub mod verify;
pub mod view;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures::{FutureExt, TryStreamExt};
use keepsake_model::{
    Ancestors, Change, ChangeBody, Clock, Event, EventMeta, IdGenerator, ItemId, Origin, Outcome,
    StateRead, UserId, UserState,
};
use keepsake_store::{Descriptor, keys, open_or_create_descriptor};
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

pub use compact::{CompactionPolicy, CompactionReport, compact_shard};
pub use config::LogConfig;
pub use error::LogError;
pub use reader::{
    HistoryListed, LatestItems, Layout, Place, ReadStats, Source, UpTo, list_checkpoint_objects,
    list_checkpoints, list_history, list_layout, list_layout_reaching, list_segments,
    read_checkpoint, read_checkpoint_user, read_checkpoint_user_items, read_history, read_segment,
    read_segment_meta, read_segment_sized, read_source_segments, read_user, read_user_in,
    read_user_latest_in, read_user_latest_sized, read_user_sized, scan_shard,
};
pub use stats::{AtomicHistogram, LogStats};
pub use view::ShardState;

use writer::{Queued, Writer};

/// One push: a device's changes for one user, applied in order and committed together.
#[derive(Clone, Debug)]
pub struct PushRequest {
    /// Whose data.
    pub user_id: UserId,
    /// Who is pushing; copied into every event.
    pub meta: EventMeta,
    /// The changes, in order.
    pub changes: Vec<Change>,
    /// Lets the push delete more than the mass-delete guard allows.
    pub confirm_mass_delete: bool,
}

/// The answer to a push, sent only once its events are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushResult {
    /// One outcome per change, in request order.
    pub outcomes: Vec<Outcome>,
    /// The user's last seq after the push.
    pub last_seq: u64,
    /// The segment that holds the push's events; `None` if it wrote none.
    pub segment: Option<u64>,
}

struct Shard {
    tx: mpsc::Sender<Queued>,
    state: Arc<RwLock<ShardState>>,
    head: watch::Receiver<u64>,
    /// Held while a checkpoint or a compaction of the shard runs: one at a time.
    maintenance: Arc<tokio::sync::Mutex<()>>,
}

/// The log of a store: one writer per shard, and read access to committed state.
pub struct Log {
    store: Arc<dyn ObjectStore>,
    descriptor: Descriptor,
    shards: Vec<Shard>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    stats: Arc<LogStats>,
    cfg: Arc<LogConfig>,
    clock: Arc<dyn Clock>,
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
    /// starts one writer per shard.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        shard_count: Option<u32>,
        cfg: LogConfig,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
    ) -> Result<Self, LogError> {
        let descriptor =
            open_or_create_descriptor(store.as_ref(), shard_count, clock.as_ref(), ids.as_ref())
                .await?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(LogStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let recovered = futures::future::try_join_all(
            (0..descriptor.shard_count).map(|s| recover_shard(store.clone(), s, &cfg)),
        )
        .await?;
        let mut shards = Vec::new();
        let mut tasks = Vec::new();
        for (shard, state) in (0..descriptor.shard_count).zip(recovered) {
            let epoch = state.head + 1;
            let (head_tx, head) = watch::channel(state.head);
            let state = Arc::new(RwLock::new(state));
            let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
            let writer = Writer {
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
            };
            tasks.push(tokio::spawn(
                writer.run().instrument(info_span!("shard_writer", shard)),
            ));
            let maintenance = Arc::new(tokio::sync::Mutex::new(()));
            let upkeep = Upkeep {
                store: store.clone(),
                shard,
                state: state.clone(),
                cfg: cfg.clone(),
                clock: clock.clone(),
                stats: stats.clone(),
                maintenance: maintenance.clone(),
            };
            tasks.push(tokio::spawn(
                checkpointer(upkeep, shutdown_rx.clone())
                    .instrument(info_span!("checkpointer", shard)),
            ));
            shards.push(Shard {
                tx,
                state,
                head,
                maintenance,
            });
        }
        info!(store_id = %descriptor.store_id, shards = descriptor.shard_count, "log open");
        Ok(Self {
            store,
            descriptor,
            shards,
            tasks: std::sync::Mutex::new(tasks),
            shutdown,
            stats,
            cfg,
            clock,
        })
    }

    /// Checkpoints every shard at its head and compacts everything up to it now, whatever the
    /// policy's `min_segments` (what an operator runs before a backup, and benchmarks before
    /// reading old history). Returns what compaction did, over all shards.
    pub async fn compact_now(&self) -> Result<CompactionReport, LogError> {
        let mut total = CompactionReport::default();
        for (shard, s) in (0u32..).zip(&self.shards) {
            let upkeep = Upkeep {
                store: self.store.clone(),
                shard,
                state: s.state.clone(),
                cfg: self.cfg.clone(),
                clock: self.clock.clone(),
                stats: self.stats.clone(),
                maintenance: s.maintenance.clone(),
            };
            let _held = s.maintenance.lock().await;
            if let Some(c) = upkeep.checkpoint().await? {
                let policy = CompactionPolicy {
                    min_segments: 1,
                    ..self.cfg.compaction
                };
                total.add(upkeep.compact(c, &policy).await?);
            }
        }
        Ok(total)
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

    /// Commits a push; answers once its events are durable.
    pub async fn push(&self, req: PushRequest) -> Result<PushResult, LogError> {
        let shard = self.shard_of(&req.user_id);
        // Read here, by this push's own task, so that a slow read of history never holds up
        // the shard's writer and every other push of its batch.
        let ancestors = self.prefetch_ancestors(&req).await?;
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            req,
            ancestors,
            enqueued: tokio::time::Instant::now(),
            reply,
        };
        self.shards[shard as usize]
            .tx
            .try_send(queued)
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Overloaded { shard },
                mpsc::error::TrySendError::Closed(_) => LogError::ShuttingDown,
            })?;
        answer.await.map_err(|_| LogError::ShuttingDown)?
    }

    /// Makes this process's view of `user`'s shard current: once it returns, everything any
    /// process committed to the shard before the call is in the view (an empty push: the
    /// writer checks the store's head before answering a batch that writes nothing, and
    /// re-reads the shard if another process moved it on). For decisions taken outside the
    /// writer on the view, such as a restore's targets.
    pub async fn sync(&self, user: &UserId) -> Result<(), LogError> {
        self.push(PushRequest {
            user_id: *user,
            meta: EventMeta {
                device_id: None,
                origin: Origin::Restore,
                request_id: None,
                restore_id: None,
            },
            changes: Vec::new(),
            confirm_mass_delete: false,
        })
        .await
        .map(|_| ())
    }

    /// Waits until the state at moment `t` can no longer change in this process. A batch takes
    /// its `recorded_at` before its PUT, so while one is in flight, the state at a moment after
    /// it is not final: a restore to "now" could be computed without a change that is about to
    /// be acknowledged, and overwrite it. A moment before the shard's newest committed
    /// `recorded_at` is final (later batches are recorded no earlier); otherwise an empty push
    /// queued behind every batch staged so far ([`Log::sync`]) waits them out, and batches
    /// staged after it are recorded at the clock's now, later than a moment in the past (a
    /// moment in the future is refused by the API). Across processes this holds as far as
    /// their clocks agree.
    async fn settle_moment(
        &self,
        user: &UserId,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), LogError> {
        let shard = self.shard_of(user);
        let last = self.shards[shard as usize]
            .state
            .read()
            .map_err(|_| poisoned(shard))?
            .last_recorded_at;
        if last.is_some_and(|l| t < l) {
            return Ok(());
        }
        self.sync(user).await
    }

    /// The earlier documents that the stale patches of a push will be merged against: a patch
    /// naming `base_version` b of an item now at a later version needs the document of b.
    ///
    /// Versions a push produces itself, or that become stale only while the push waits, are not
    /// fetched here; the writer reads those (rare) itself.
    async fn prefetch_ancestors(&self, req: &PushRequest) -> Result<Ancestors, LogError> {
        let based_patch =
            |c: &Change| matches!(c.body, ChangeBody::Patch { .. }) && c.base_version.is_some();
        if !req.changes.iter().any(based_patch) {
            return Ok(Ancestors::new());
        }
        let (needs, mut ready): (Vec<(ItemId, u64, Option<u64>)>, Ancestors) = self
            .user(&req.user_id, |s| {
                let mut ready = Ancestors::new();
                let mut wanted = HashSet::new();
                for c in &req.changes {
                    let (ChangeBody::Patch { .. }, Some(b)) = (&c.body, c.base_version) else {
                        continue;
                    };
                    // A retry of an applied change answers `duplicate` and merges nothing.
                    if s.change(&c.change_id).is_some() {
                        continue;
                    }
                    match s.item(&c.item_id) {
                        // Current now, but another push of the same batch may move it on before
                        // this one is staged: its document is in memory, so take it anyway.
                        Some(i) if i.version == b => {
                            ready.insert((c.item_id, b), i.document.clone());
                        }
                        Some(i) if b > 0 && i.version > b => {
                            wanted.insert((c.item_id, b));
                        }
                        _ => {}
                    }
                }
                if wanted.is_empty() {
                    return (Vec::new(), ready);
                }
                // The state links each version it applied to the one before: that gives the
                // seq of a recent version in a few lookups. Versions from before the checkpoint
                // the user was loaded from are found in the change ids, which the state keeps
                // (item, version, seq) for idempotency: one scan of them all.
                let mut seqs = HashMap::new();
                for &(item, version) in &wanted {
                    if let Some(seq) = s.seq_of_version(&item, version) {
                        seqs.insert((item, version), seq);
                    }
                }
                if seqs.len() < wanted.len() {
                    for (_, r) in s.changes() {
                        if wanted.contains(&(r.item_id, r.version)) {
                            seqs.insert((r.item_id, r.version), r.seq);
                        }
                    }
                }
                let needs = wanted
                    .into_iter()
                    .map(|k: (ItemId, u64)| (k.0, k.1, seqs.get(&k).copied()))
                    .collect();
                (needs, ready)
            })
            .await?;
        if needs.is_empty() {
            return Ok(ready);
        }
        self.stats
            .ancestor_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ready.extend(self.find_versions(&req.user_id, needs).await?);
        Ok(ready)
    }

    /// Documents of committed versions of a user's items (`None` for a tombstone). Versions not
    /// found are absent.
    ///
    /// A version whose seq the view's index covers (after the checkpoint before the newest) is
    /// read from the one segment that holds it. An older one, whose seq is known, is found by
    /// its seq in the segments up to the newest checkpoint (key columns first, then that one
    /// row: [`reader::read_user_seqs`]). A version whose seq is not known (none should be: every
    /// event has a change id) is searched newest segment first: the user's tail segments in
    /// groups of 4, 32, 256..., then every segment before the checkpoint.
    async fn find_versions(
        &self,
        user: &UserId,
        needs: Vec<(ItemId, u64, Option<u64>)>,
    ) -> Result<Ancestors, LogError> {
        let shard = self.shard_of(user);
        let head = self.head(shard);
        let state = &self.shards[shard as usize].state;
        let (checkpoint, tail, exact, by_seq) = {
            let view = state.read().map_err(|_| poisoned(shard))?;
            let from = view.checkpoint.map_or(1, |c| c + 1);
            let mut exact = HashSet::new();
            let mut by_seq = Vec::new();
            for seq in needs.iter().filter_map(|(_, _, seq)| *seq) {
                match view.segment_holding(user, seq) {
                    Some(n) => {
                        exact.insert(n);
                    }
                    None => by_seq.push(seq),
                }
            }
            (
                view.checkpoint,
                view.segments_of(user, from, head),
                exact,
                by_seq,
            )
        };
        let mut wanted: HashSet<(ItemId, u64)> = needs.iter().map(|(i, v, _)| (*i, *v)).collect();
        let mut found = Ancestors::new();
        let mut take = |events: &[keepsake_model::Event], wanted: &mut HashSet<(ItemId, u64)>| {
            for e in events {
                if wanted.remove(&(e.item_id, e.version)) {
                    found.insert((e.item_id, e.version), e.document.clone());
                }
            }
        };
        if !exact.is_empty() {
            let mut numbers: Vec<u64> = exact.iter().copied().collect();
            numbers.sort_unstable();
            let events = self.read_segments(shard, user, numbers, UpTo::End).await?;
            take(&events, &mut wanted);
        }
        if let Some(c) = checkpoint
            && !by_seq.is_empty()
            && !wanted.is_empty()
        {
            let numbers: Vec<u64> = (1..=c).collect();
            let sources = segment_sources(&self.store, shard, state, numbers).await?;
            let relocate = by_view(self.store.clone(), shard, state.clone());
            let events = reader::read_user_seqs(
                self.store.clone(),
                shard,
                *user,
                sources,
                by_seq,
                &relocate,
            )
            .await?;
            take(&events, &mut wanted);
        }
        let mut rest: Vec<u64> = tail.into_iter().filter(|n| !exact.contains(n)).collect();
        let mut group = 4;
        while !wanted.is_empty() && !rest.is_empty() {
            let newest = rest.split_off(rest.len() - group.min(rest.len()));
            let events = self.read_segments(shard, user, newest, UpTo::End).await?;
            take(&events, &mut wanted);
            group *= 8;
        }
        if let Some(c) = checkpoint
            && !wanted.is_empty()
        {
            let events = self
                .read_segments(shard, user, (1..=c).collect(), UpTo::End)
                .await?;
            take(&events, &mut wanted);
        }
        Ok(found)
    }

    /// One user's events in segments `numbers` (ascending) of `shard`: see [`read_segments`].
    async fn read_segments(
        &self,
        shard: u32,
        user: &UserId,
        numbers: Vec<u64>,
        up_to: UpTo,
    ) -> Result<Vec<Event>, LogError> {
        let state = &self.shards[shard as usize].state;
        read_segments(&self.store, shard, state, *user, numbers, up_to).await
    }

    /// Reads a user's committed state, loading it from the log if it is not in memory.
    pub async fn user<R>(
        &self,
        user: &UserId,
        f: impl FnOnce(&UserState) -> R,
    ) -> Result<R, LogError> {
        let shard = self.shard_of(user);
        let state = &self.shards[shard as usize].state;
        let mut f = Some(f);
        loop {
            load_user(&self.store, shard, state, *user).await?;
            let guard = state.read().map_err(|_| poisoned(shard))?;
            // An eviction between the load and the lock sends us round again. (Taking `f` before
            // looking the user up answered such a race "state lock poisoned".)
            if let Some(s) = guard.get(user)
                && let Some(f) = f.take()
            {
                return Ok(f(s));
            }
        }
    }

    /// One user's events, oldest first, up to a moment: the segments up to the newest checkpoint
    /// (pruned by their statistics), then only the tail segments the index says hold the user.
    /// What the audit and item history read.
    pub async fn user_events(&self, user: &UserId, up_to: UpTo) -> Result<Vec<Event>, LogError> {
        let shard = self.shard_of(user);
        let (checkpoint, tail) = {
            let v = self.shards[shard as usize]
                .state
                .read()
                .map_err(|_| poisoned(shard))?;
            let from = v.checkpoint.map_or(1, |c| c + 1);
            let tail = match up_to {
                UpTo::Seq(n) => v.segments_until(user, from, v.head, n),
                UpTo::End | UpTo::Time(_) => v.segments_of(user, from, v.head),
            };
            (v.checkpoint.unwrap_or(0), tail)
        };
        let numbers = (1..=checkpoint).chain(tail).collect();
        self.read_segments(shard, user, numbers, up_to).await
    }

    /// The user's state as it was at a moment: after every event with `seq <= n`
    /// ([`UpTo::Seq`]) or `recorded_at <= t` ([`UpTo::Time`]).
    ///
    /// Starts from the newest checkpoint that lies wholly before the moment (by seq: the user's
    /// seq in it is at most `n`; by time: its segment was recorded at or before `t`), then folds
    /// the user's events after it up to the moment. Equal to a replay from the first event
    /// (tested).
    pub async fn user_at(&self, user: &UserId, at: UpTo) -> Result<UserState, LogError> {
        self.state_at(user, at, true).await
    }

    /// [`Log::user_at`] for readers of items (as-of reads, diffs, restores): the same items,
    /// tombstones and last seq, without change ids. Reading a checkpoint skips the pages of
    /// change ids, which in a long history are most of the user's rows; after the checkpoint,
    /// only each item's newest event is read whole ([`read_user_latest_in`]), so a history that
    /// rewrites its items does not fetch every document it ever had. Not for idempotency: that
    /// is the live view's.
    pub async fn items_at(&self, user: &UserId, at: UpTo) -> Result<UserState, LogError> {
        self.state_at(user, at, false).await
    }

    async fn state_at(
        &self,
        user: &UserId,
        at: UpTo,
        with_changes: bool,
    ) -> Result<UserState, LogError> {
        if let UpTo::Time(t) = at {
            self.settle_moment(user, t).await?;
        }
        let shard = self.shard_of(user);
        let head = self.head(shard);
        let store = &self.store;
        let mut base: Option<(u64, UserState)> = None;
        for c in list_checkpoints(store.as_ref(), shard)
            .await?
            .into_iter()
            .rev()
        {
            if c > head {
                continue;
            }
            let fits = match at {
                UpTo::End => true,
                UpTo::Seq(_) => true,
                UpTo::Time(t) => {
                    let meta = read_segment_meta(store.clone(), shard, c).await?;
                    meta.is_some_and(|m| m.last_recorded_at <= t)
                }
            };
            if !fits {
                continue;
            }
            let state = if with_changes {
                read_checkpoint_user(store.clone(), shard, c, *user).await?
            } else {
                reader::read_checkpoint_user_items(store.clone(), shard, c, *user).await?
            };
            if let UpTo::Seq(n) = at
                && state.last_seq() > n
            {
                continue;
            }
            base = Some((c, state));
            break;
        }
        let base_checkpoint = base.as_ref().map(|(c, _)| *c);
        let (from, mut state) = base.map_or((1, UserState::default()), |(c, s)| (c + 1, s));
        if head >= from {
            let indexed = self.shards[shard as usize]
                .state
                .read()
                .ok()
                .filter(|v| v.checkpoint == base_checkpoint)
                .map(|v| match at {
                    // Segments whose first event of the user is past the seq hold nothing needed.
                    UpTo::Seq(n) => v.segments_until(user, from, head, n),
                    UpTo::End | UpTo::Time(_) => v.segments_of(user, from, head),
                });
            // The base is the view's newest checkpoint: the index knows the user's segments.
            let numbers = indexed.unwrap_or_else(|| (from..=head).collect());
            if with_changes {
                let events = self.read_segments(shard, user, numbers, at).await?;
                for e in &events {
                    keepsake_model::apply(&mut state, e)
                        .map_err(|err| LogError::corrupt(shard, head, err))?;
                }
            } else {
                // Items only: each item's newest event, not every document it ever had.
                let after = state.last_seq();
                let view = &self.shards[shard as usize].state;
                let segs = segment_sources(store, shard, view, numbers).await?;
                let relocate = by_view(store.clone(), shard, view.clone());
                let latest = reader::read_user_latest_relocating(
                    store.clone(),
                    shard,
                    *user,
                    segs,
                    at,
                    after,
                    &relocate,
                )
                .await?;
                state
                    .advance_items(&latest.events, latest.last_seq)
                    .map_err(|err| LogError::corrupt(shard, head, err))?;
            }
        }
        Ok(state)
    }

    /// The states of many users of one shard as they were at time `t`, folding the shard once:
    /// the newest checkpoint recorded at or before `t`, then every segment after it up to `t`.
    /// Equal, user by user, to [`Log::user_at`] with [`UpTo::Time`] (tested); used by fleet
    /// restores, where one read per user would read the same checkpoint and segments again
    /// for every user. Holds the wanted users' states only (one shard at a time).
    pub async fn users_at(
        &self,
        shard: u32,
        users: &HashSet<UserId>,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashMap<UserId, UserState>, LogError> {
        let head = self.head(shard);
        let store = &self.store;
        let mut base = None;
        for c in list_checkpoints(store.as_ref(), shard)
            .await?
            .into_iter()
            .rev()
        {
            if c > head {
                continue;
            }
            let meta = read_segment_meta(store.clone(), shard, c).await?;
            if meta.is_some_and(|m| m.last_recorded_at <= t) {
                base = Some(c);
                break;
            }
        }
        let mut states: HashMap<UserId, UserState> = match base {
            Some(c) => read_checkpoint(store.as_ref(), shard, c)
                .await?
                .into_iter()
                .filter(|(u, _)| users.contains(u))
                .collect(),
            None => HashMap::new(),
        };
        let from = base.map_or(1, |c| c + 1);
        if head >= from {
            let mut segments =
                scan_shard(store.clone(), shard, from, self.cfg.read_concurrency).await?;
            while let Some(seg) = segments.try_next().await? {
                let n = seg.meta.segment;
                // recorded_at is one per segment and never goes backwards within a shard.
                if n > head || seg.meta.first_recorded_at > t {
                    break;
                }
                for e in seg.events.iter().filter(|e| users.contains(&e.user_id)) {
                    keepsake_model::apply(states.entry(e.user_id).or_default(), e)
                        .map_err(|err| LogError::corrupt(shard, n, err))?;
                }
            }
        }
        Ok(states)
    }

    /// Rebuilds every view from the log: folds every user from the first segment (checking the
    /// log, but not the checkpoints: that is [`verify::verify_store`]'s job), compares with the
    /// state the server holds (views, loading evicted users through checkpoints), then empties
    /// the views so that every user is loaded again from the log.
    /// Returns (hash before, hash after, report).
    pub async fn rebuild(&self) -> Result<(String, String, verify::VerifyReport), LogError> {
        let started = std::time::Instant::now();
        let opts = verify::FoldOptions {
            checkpoints: false,
            read_ahead: self.cfg.read_concurrency,
            hash: false,
            ..verify::FoldOptions::default()
        };
        let (mut report, rebuilt) =
            verify::fold_store(&self.store, self.descriptor.shard_count, opts).await?;
        let folded = started.elapsed();
        let users: Vec<UserId> = rebuilt.keys().copied().collect();
        // The two hashes run side by side: the rebuilt state's while the views are gathered,
        // then the views'.
        let after = tokio::spawn(verify::hash_off_workers(rebuilt));
        let mut current = keepsake_model::IdMap::default();
        let mut evicted = Vec::new();
        for user in users {
            let shard = self.shard_of(&user);
            let resident = self.shards[shard as usize]
                .state
                .read()
                .map_err(|_| poisoned(shard))?
                .get(&user)
                .cloned();
            match resident {
                Some(s) => {
                    current.insert(user, s);
                }
                None => evicted.push(user),
            }
        }
        for user in &evicted {
            current.insert(*user, self.user(user, UserState::clone).await?);
        }
        let (before, current) = verify::hash_off_workers(current).await?;
        let (after, rebuilt) = after.await.map_err(|e| LogError::Unavailable {
            shard: 0,
            reason: format!("hashing the rebuilt state failed: {e}"),
        })??;
        // Freeing two whole-store states takes a while too.
        drop(tokio::task::spawn_blocking(move || {
            drop((current, rebuilt))
        }));
        report.state_hash = after.clone();
        for shard in &self.shards {
            if let Ok(mut s) = shard.state.write() {
                s.evict_over(0);
            }
        }
        info!(
            %before,
            %after,
            users = report.users,
            events = report.events,
            evicted_loaded = evicted.len(),
            fold_ms = folded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "views rebuilt from the log"
        );
        Ok((before, after, report))
    }

    /// Every user with at least one event, over all shards: the newest checkpoint's users plus
    /// those in the segments after it.
    pub async fn all_users(&self) -> Result<Vec<UserId>, LogError> {
        let mut out = std::collections::BTreeSet::new();
        for shard in 0..self.descriptor.shard_count {
            let head = self.head(shard);
            let checkpoint = self.checkpoint(shard);
            if let Some(c) = checkpoint {
                out.extend(
                    read_checkpoint(self.store.as_ref(), shard, c)
                        .await?
                        .into_keys(),
                );
            }
            let from = checkpoint.map_or(1, |c| c + 1);
            let mut segments = scan_shard(self.store.clone(), shard, from, 4).await?;
            while let Some(seg) = segments.try_next().await? {
                if seg.meta.segment > head {
                    break;
                }
                out.extend(seg.events.iter().map(|e| e.user_id));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The user's last committed seq (0 for a user with no events).
    pub async fn last_seq(&self, user: &UserId) -> Result<u64, LogError> {
        self.user(user, StateRead::last_seq).await
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

    /// Approximate bytes of the user state in memory, over all shards.
    pub fn resident_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.state.read().map_or(0, |s| s.resident_bytes()))
            .sum()
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

fn poisoned(shard: u32) -> LogError {
    LogError::Unavailable {
        shard,
        reason: "state lock poisoned".into(),
    }
}

/// Rebuilds a shard's state: the newest checkpoint, then every segment after it (which checks
/// the log's tail decodes and folds); then evicts down to the memory budget.
pub async fn recover_shard(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    cfg: &LogConfig,
) -> Result<ShardState, LogError> {
    let layout = reader::list_layout(store.as_ref(), shard).await?;
    let head = layout.head();
    let checkpoint = list_checkpoints(store.as_ref(), shard)
        .await?
        .into_iter()
        .rfind(|c| *c <= head);
    let mut state = ShardState::default();
    // Only segment objects that readers read (not ones inside a history object readers rely
    // on: a source not yet deleted, or a late write into a freed number).
    for l in &layout.segments {
        if layout.place(l.n) == Some(reader::Place::Segment(l.size)) {
            state.record_segment_size(l.n, l.size);
        }
    }
    for h in &layout.history {
        state.record_history(*h);
    }
    state.checkpoint = checkpoint;
    if let Some(c) = checkpoint {
        for (user, s) in read_checkpoint(store.as_ref(), shard, c).await? {
            state.insert(user, s);
        }
    }
    state.head = checkpoint.unwrap_or(0);
    let mut segments =
        scan_shard(store.clone(), shard, state.head + 1, cfg.read_concurrency).await?;
    while let Some(seg) = segments.try_next().await? {
        let n = seg.meta.segment;
        // Every user is in memory during recovery: one absent from the checkpoint had no events.
        for e in &seg.events {
            if !state.is_resident(&e.user_id) {
                state.insert(e.user_id, UserState::default());
            }
        }
        state
            .apply_events(&seg.events)
            .map_err(|e| LogError::corrupt(shard, n, e))?;
        state.index_segment(n, &seg.events);
        state.head = n;
    }
    if state.last_recorded_at.is_none() && head > 0 {
        let last = read_segment_meta(store.clone(), shard, head).await?;
        state.last_recorded_at = last.map(|m| m.last_recorded_at);
    }
    state.evict_over(cfg.view_memory_bytes);
    info!(shard, head = state.head, checkpoint = ?checkpoint, users = state.resident_users(), "shard recovered");
    Ok(state)
}

/// Where segments `numbers` (ascending) of `shard` are read from: from the view, which knows
/// every committed segment's size and the history objects, so that the store is not listed;
/// from a listing when it does not.
async fn segment_sources(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &RwLock<ShardState>,
    numbers: Vec<u64>,
) -> Result<Vec<Source>, LogError> {
    let known = state
        .read()
        .map_err(|_| poisoned(shard))?
        .sources(numbers.iter().copied());
    match known {
        Some(sources) => Ok(sources),
        None => {
            let wanted = |n| numbers.binary_search(&n).is_ok();
            let reach = numbers.last().copied().unwrap_or(0);
            reader::listed_sources(store.as_ref(), shard, reach, wanted).await
        }
    }
}

/// A [`reader::Relocate`] that asks the view first (compaction in this process updates it
/// before deleting anything), then, if asked again within the same read, lists the store (the
/// segments may have been compacted by another process on the same store).
fn by_view(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    state: Arc<RwLock<ShardState>>,
) -> reader::Relocate {
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listing = reader::by_listing(store.clone(), shard);
    Arc::new(move |numbers| {
        if asked.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return listing(numbers);
        }
        let (store, state) = (store.clone(), state.clone());
        async move { segment_sources(&store, shard, &state, numbers).await }.boxed()
    })
}

/// One user's events in segments `numbers` (ascending) of `shard` ([`segment_sources`]).
async fn read_segments(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    user: UserId,
    numbers: Vec<u64>,
    up_to: UpTo,
) -> Result<Vec<Event>, LogError> {
    let segs = segment_sources(store, shard, state, numbers).await?;
    let relocate = by_view(store.clone(), shard, state.clone());
    let (events, _) =
        reader::read_user_relocating(store.clone(), shard, user, segs, up_to, &relocate).await?;
    Ok(events)
}

/// Makes a user resident: the newest checkpoint's rows for the user, then the segments after
/// it up to the head. A commit that lands meanwhile is folded in before the user is inserted.
pub(crate) async fn load_user(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    user: UserId,
) -> Result<(), LogError> {
    'start: loop {
        // One snapshot: the head, the newest checkpoint, and the segments after it that the
        // index says hold the user.
        let (mut read_to, checkpoint, mut segments) = {
            let s = state.read().map_err(|_| poisoned(shard))?;
            if s.is_resident(&user) {
                return Ok(());
            }
            let from = s.checkpoint.map_or(1, |c| c + 1);
            (s.head, s.checkpoint, s.segments_of(&user, from, s.head))
        };
        let mut loaded = match checkpoint {
            Some(c) => match read_checkpoint_user(store.clone(), shard, c, user).await {
                Ok(s) => s,
                Err(e) => match replace_checkpoint(store, shard, state, c).await? {
                    Replaced::Present => return Err(e),
                    Replaced::Adopted => continue 'start,
                    // No checkpoint at or below the head is left: the user's rows from the
                    // first segment (pruned by each source's statistics).
                    Replaced::None => {
                        segments = (1..=read_to).collect();
                        UserState::default()
                    }
                },
            },
            None => UserState::default(),
        };
        // Before the tail is applied: its versions are the ones stale patches name most.
        loaded.enable_version_links();
        loop {
            if !segments.is_empty() {
                let wanted = std::mem::take(&mut segments);
                let events = read_segments(store, shard, state, user, wanted, UpTo::End).await?;
                for e in &events {
                    keepsake_model::apply(&mut loaded, e)
                        .map_err(|err| LogError::corrupt(shard, read_to, err))?;
                }
            }
            let mut s = state.write().map_err(|_| poisoned(shard))?;
            if s.is_resident(&user) {
                return Ok(());
            }
            if s.checkpoint != checkpoint {
                // A new checkpoint pruned the index under us: start over from it.
                continue 'start;
            }
            if s.head == read_to {
                s.misses += 1;
                s.insert(user, loaded);
                return Ok(());
            }
            segments = s.segments_of(&user, read_to + 1, s.head);
            read_to = s.head;
        }
    }
}

/// What [`replace_checkpoint`] did.
enum Replaced {
    /// The checkpoint is there: the read failed for another reason.
    Present,
    /// Gone; the view now starts from a newer one at or below its head.
    Adopted,
    /// Gone, and no other checkpoint at or below the view's head is left.
    None,
}

/// The view's checkpoint `c` could not be read. If it is gone — another process's retention
/// deleted it (that process is ahead and wrote newer ones) — the view adopts the newest
/// checkpoint at or below its head that is left; without one, loads read from the first
/// segment. Before this, a process answered 503 for every cold user until it was restarted.
async fn replace_checkpoint(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    c: u64,
) -> Result<Replaced, LogError> {
    match store.head(&keys::checkpoint(shard, c)).await {
        Err(object_store::Error::NotFound { .. }) => {}
        _ => return Ok(Replaced::Present),
    }
    let head = state.read().map_err(|_| poisoned(shard))?.head;
    let newer = list_checkpoints(store.as_ref(), shard)
        .await?
        .into_iter()
        .rfind(|x| *x <= head && *x > c);
    warn!(shard, checkpoint = c, adopted = ?newer, "the view's checkpoint was deleted by another process");
    match newer {
        Some(n) => {
            let mut s = state.write().map_err(|_| poisoned(shard))?;
            if s.checkpoint == Some(c) {
                s.checkpointed(n);
            }
            Ok(Replaced::Adopted)
        }
        None => Ok(Replaced::None),
    }
}

/// What the background upkeep of one shard (checkpoints, retention, compaction) works with.
#[derive(Clone)]
struct Upkeep {
    store: Arc<dyn ObjectStore>,
    shard: u32,
    state: Arc<RwLock<ShardState>>,
    cfg: Arc<LogConfig>,
    clock: Arc<dyn Clock>,
    stats: Arc<LogStats>,
    maintenance: Arc<tokio::sync::Mutex<()>>,
}

impl Upkeep {
    /// Writes a checkpoint at the head unless the newest is there already, then applies the
    /// retention policy. Returns the newest checkpoint (`None`: the log is empty).
    async fn checkpoint(&self) -> Result<Option<u64>, LogError> {
        let shard = self.shard;
        let (head, prev, since) = self
            .state
            .read()
            .map(|s| (s.head, s.checkpoint, s.events_since_checkpoint))
            .map_err(|_| poisoned(shard))?;
        if head == 0 || prev == Some(head) {
            return Ok(prev);
        }
        let users =
            write_checkpoint(&self.store, shard, prev, head, self.cfg.read_concurrency).await?;
        if let Ok(mut s) = self.state.write() {
            s.checkpointed(head);
            s.events_since_checkpoint = s.events_since_checkpoint.saturating_sub(since);
        }
        info!(shard, segment = head, users, "checkpoint written");
        if let Err(e) =
            apply_retention(&self.store, shard, &self.cfg.retention, self.clock.now()).await
        {
            warn!(shard, error = %e, "applying checkpoint retention failed; will retry after the next checkpoint");
        }
        Ok(Some(head))
    }

    /// Compacts the segments up to `upto` (a checkpoint's), counting what was done.
    async fn compact(
        &self,
        upto: u64,
        policy: &compact::CompactionPolicy,
    ) -> Result<compact::CompactionReport, LogError> {
        let done = compact_shard(&self.store, self.shard, upto, Some(&self.state), policy).await;
        match &done {
            Ok(r) => self.stats.record_compaction(r),
            Err(_) => {
                self.stats
                    .compaction_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        done
    }
}

/// Writes checkpoints of one shard in the background: the previous checkpoint plus the segments
/// since, folded with `apply` (never the in-memory view, which may have evicted users); after
/// each, compacts the segments it covers.
async fn checkpointer(upkeep: Upkeep, mut stop: watch::Receiver<bool>) {
    let (shard, cfg) = (upkeep.shard, upkeep.cfg.clone());
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.upkeep_tick) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let Ok((head, prev, since)) = upkeep
            .state
            .read()
            .map(|s| (s.head, s.checkpoint, s.events_since_checkpoint))
        else {
            break;
        };
        let due = since >= cfg.checkpoint_every_events
            || (since > 0 && last.elapsed() >= cfg.checkpoint_interval);
        if !due || prev == Some(head) {
            continue;
        }
        let _held = upkeep.maintenance.lock().await;
        match upkeep.checkpoint().await {
            Ok(Some(c)) => {
                last = tokio::time::Instant::now();
                if cfg.compaction.enabled
                    && let Err(e) = upkeep.compact(c, &cfg.compaction).await
                {
                    warn!(shard, error = %e, "compaction failed; will retry after the next checkpoint");
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!(shard, segment = head, error = %e, "writing a checkpoint failed; will retry")
            }
        }
    }
}

/// Events folded into a checkpoint per hand-off to a blocking thread.
const FOLD_RUN_EVENTS: usize = 4096;

/// Builds and writes (create-only) the checkpoint of `shard` after segment `n`. Returns its user
/// count. Another writer having written the same checkpoint is success: both are folds of the
/// same log.
pub async fn write_checkpoint(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    prev: Option<u64>,
    n: u64,
    concurrency: usize,
) -> Result<u64, LogError> {
    // The previous checkpoint may be gone (another process's retention deleted it): then the
    // newest one left at or below `n`, or the log from its start.
    let prev = match prev {
        Some(c) if store.head(&keys::checkpoint(shard, c)).await.is_err() => {
            let left = list_checkpoints(store.as_ref(), shard)
                .await?
                .into_iter()
                .rfind(|x| *x <= n);
            warn!(shard, checkpoint = c, instead = ?left, "the previous checkpoint is gone; folding from another");
            left
        }
        other => other,
    };
    let mut users = match prev {
        Some(c) => read_checkpoint(store.as_ref(), shard, c).await?,
        None => keepsake_model::IdMap::default(),
    };
    let mut segments =
        scan_shard(store.clone(), shard, prev.map_or(1, |c| c + 1), concurrency).await?;
    // The fold is CPU work: on a blocking thread (the map moves, it is not copied), so that a
    // checkpoint does not hold the runtime's workers from pushes and pulls; in runs of
    // segments, so that small ones do not each pay the hand-off.
    let mut run: Vec<keepsake_segment::Segment> = Vec::new();
    let mut run_events = 0;
    // The last segment folded: the checkpoint is written only if the fold reached `n`, one
    // segment after another. A listing that missed the newest segments would otherwise give a
    // checkpoint "after n" without them, and recovery from it would drop acknowledged events.
    let mut folded = prev.unwrap_or(0);
    loop {
        let next = segments
            .try_next()
            .await?
            .filter(|seg| seg.meta.segment <= n);
        let done = next.is_none();
        if let Some(seg) = next {
            if seg.meta.segment != folded + 1 {
                return Err(LogError::Gap {
                    shard,
                    missing: folded + 1,
                });
            }
            folded = seg.meta.segment;
            run_events += seg.events.len();
            run.push(seg);
        }
        if run_events >= FOLD_RUN_EVENTS || (done && !run.is_empty()) {
            let folding = std::mem::take(&mut run);
            run_events = 0;
            users = tokio::task::spawn_blocking(move || {
                for seg in &folding {
                    for e in &seg.events {
                        keepsake_model::apply(users.entry(e.user_id).or_default(), e)
                            .map_err(|err| LogError::corrupt(shard, seg.meta.segment, err))?;
                    }
                }
                Ok::<_, LogError>(users)
            })
            .await
            .map_err(|e| LogError::Unavailable {
                shard,
                reason: format!("folding segments into checkpoint {n} failed: {e}"),
            })??;
        }
        if done {
            break;
        }
    }
    if folded != n {
        return Err(LogError::Unavailable {
            shard,
            reason: format!(
                "checkpoint {n} not written: the listing of the log reached only segment {folded}"
            ),
        });
    }
    let count = users.len() as u64;
    let meta = keepsake_segment::CheckpointMeta {
        format_version: keepsake_segment::checkpoint_version(users.values()),
        shard,
        segment: n,
        user_count: count,
    };
    let bytes = tokio::task::spawn_blocking(move || {
        keepsake_segment::encode_checkpoint(users.iter(), &meta)
    })
    .await
    .map_err(|e| LogError::corrupt(shard, n, e))?
    .map_err(|e| LogError::corrupt(shard, n, format!("encode checkpoint: {e}")))?;
    match store
        .put_opts(
            &keys::checkpoint(shard, n),
            object_store::PutPayload::from(bytes),
            keepsake_store::create_only(),
        )
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(count),
        Err(e) => Err(LogError::Store {
            context: format!("write checkpoint {n} of shard {shard}"),
            source: e,
        }),
    }
}

/// Deletes the checkpoints of a shard that the retention policy no longer keeps (by the time
/// each was written). Only checkpoints: they are derived; segments are never deleted.
pub async fn apply_retention(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    policy: &retention::RetentionPolicy,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<u64>, LogError> {
    let written: Vec<(u64, chrono::DateTime<chrono::Utc>)> =
        list_checkpoint_objects(store.as_ref(), shard)
            .await?
            .into_iter()
            .map(|l| (l.n, l.modified))
            .collect();
    let doomed = retention::to_delete(&written, now, policy);
    for n in &doomed {
        match object_store::ObjectStoreExt::delete(store.as_ref(), &keys::checkpoint(shard, *n))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(LogError::Store {
                    context: format!("delete checkpoint {n} of shard {shard}"),
                    source: e,
                });
            }
        }
    }
    if !doomed.is_empty() {
        info!(shard, deleted = ?doomed, "checkpoints past retention deleted");
    }
    Ok(doomed)
}
