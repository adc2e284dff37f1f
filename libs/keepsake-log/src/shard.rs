//! A shard as this process holds it: its writer's queue, its view, its head, and the lock
//! that keeps its checkpoints and compactions one at a time; recovering its state on open; and
//! the one answer to a poisoned view lock (the shard is unavailable, never a panic).

use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use keepsake_model::UserState;
use object_store::ObjectStore;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::push::Queued;
use crate::{
    LogConfig, LogError, ShardState, list_checkpoints, read_checkpoint, read_segment_meta, reader,
    scan_shard,
};

pub(crate) struct Shard {
    pub(crate) tx: mpsc::Sender<Queued>,
    pub(crate) state: Arc<RwLock<ShardState>>,
    pub(crate) head: watch::Receiver<u64>,
    /// Held while a checkpoint or a compaction of the shard runs: one at a time.
    pub(crate) maintenance: Arc<tokio::sync::Mutex<()>>,
}

pub(crate) fn poisoned(shard: u32) -> LogError {
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
        if layout.place(l.n) == Some(reader::Place::Segment(l.size, l.tag)) {
            state.record_segment_size(l.n, l.size, l.tag);
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
    let mut segments = scan_shard(
        store.clone(),
        shard,
        state.head + 1,
        head,
        cfg.read_concurrency,
    )
    .await?;
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
