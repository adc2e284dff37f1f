//! Keepsake's event log: every device change, as immutable events in per-shard logs of Parquet
//! segments on object storage.
//!
//! Users are hashed onto shards ([`keepsake_store::keys::shard_for`]); each shard is one ordered
//! log with exactly one writer task in this process ([`writer`] states its invariants). A push is
//! answered only after the segment holding its events was confirmed by the store. Two processes
//! pointed at one store are safe: segment numbers are claimed with create-only PUTs, so at most
//! one commits each number, and the loser answers with a retryable error, never an ack.
//!
//! On open, each shard lists its segments, refuses to open past a gap, and folds every segment
//! into state with [`keepsake_model::apply`].

mod config;
mod error;
pub mod reader;
mod stats;
pub mod writer;

use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use keepsake_model::{
    Change, Clock, EventMeta, IdGenerator, Outcome, StateRead, UserId, UserState,
};
use keepsake_store::{Descriptor, keys, open_or_create_descriptor};
use object_store::ObjectStore;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span};

pub use config::LogConfig;
pub use error::LogError;
pub use reader::{ReadStats, UpTo, list_segments, read_segment, read_user, scan_shard};
pub use stats::{AtomicHistogram, LogStats};
pub use writer::ShardState;

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
}

/// The log of a store: one writer per shard, and read access to committed state.
pub struct Log {
    store: Arc<dyn ObjectStore>,
    descriptor: Descriptor,
    shards: Vec<Shard>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    stats: Arc<LogStats>,
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
            (0..descriptor.shard_count)
                .map(|s| recover_shard(store.clone(), s, cfg.read_concurrency)),
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
                head_tx,
            };
            tasks.push(tokio::spawn(
                writer.run().instrument(info_span!("shard_writer", shard)),
            ));
            shards.push(Shard { tx, state, head });
        }
        info!(store_id = %descriptor.store_id, shards = descriptor.shard_count, "log open");
        Ok(Self {
            store,
            descriptor,
            shards,
            tasks: std::sync::Mutex::new(tasks),
            shutdown,
            stats,
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

    /// Commits a push; answers once its events are durable.
    pub async fn push(&self, req: PushRequest) -> Result<PushResult, LogError> {
        let shard = self.shard_of(&req.user_id);
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            req,
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

    /// Reads a user's committed state.
    pub fn with_user<R>(&self, user: &UserId, f: impl FnOnce(Option<&UserState>) -> R) -> R {
        let shard = &self.shards[self.shard_of(user) as usize];
        match shard.state.read() {
            Ok(state) => f(state.users.get(user)),
            Err(_) => f(None),
        }
    }

    /// The user's last committed seq (0 for an unknown user).
    pub fn last_seq(&self, user: &UserId) -> u64 {
        self.with_user(user, |u| u.map_or(0, StateRead::last_seq))
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
            .map(|s| s.state.read().map_or(0, |s| s.users.len()))
            .sum()
    }

    /// Approximate bytes of the user state in memory, over all shards.
    pub fn resident_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.state
                    .read()
                    .map_or(0, |s| s.users.values().map(UserState::approx_bytes).sum())
            })
            .sum()
    }

    /// The last committed segment of a shard.
    pub fn head(&self, shard: u32) -> u64 {
        self.shards
            .get(shard as usize)
            .and_then(|s| s.state.read().ok().map(|s| s.head))
            .unwrap_or(0)
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

/// Rebuilds a shard's state from its segments.
pub async fn recover_shard(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    concurrency: usize,
) -> Result<ShardState, LogError> {
    let mut state = ShardState::default();
    let mut segments = scan_shard(store, shard, 1, concurrency).await?;
    while let Some(seg) = segments.try_next().await? {
        let n = seg.meta.segment;
        state
            .apply_events(&seg.events)
            .map_err(|e| LogError::corrupt(shard, n, e))?;
        state.head = n;
    }
    info!(
        shard,
        head = state.head,
        users = state.users.len(),
        "shard recovered"
    );
    Ok(state)
}
