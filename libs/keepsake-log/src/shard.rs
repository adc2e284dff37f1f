//! A shard as this process holds it: its writer's queue, its view, its head, and the lock
//! that keeps its checkpoints and compactions one at a time; recovering its state on open; and
//! the one answer to a poisoned view lock (the shard is unavailable, never a panic).

use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use keepsake_model::{IdMap, UserId};
use object_store::ObjectStore;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::push::Queued;
use crate::{
    LogConfig, LogError, ShardState, list_checkpoints, read_segment_meta, reader, scan_shard,
};

pub(crate) struct Shard {
    pub(crate) tx: mpsc::Sender<Queued>,
    pub(crate) state: Arc<RwLock<ShardState>>,
    pub(crate) head: watch::Receiver<u64>,
    /// Held while a checkpoint or a compaction of the shard runs: one at a time. It keeps the
    /// parts each manifest names, for retention.
    pub(crate) maintenance: Arc<tokio::sync::Mutex<crate::upkeep::NamedParts>>,
    /// Whether this process may write the shard now (a cluster: only once taken).
    pub(crate) gate: Arc<crate::owner::Gate>,
}

pub(crate) fn poisoned(shard: u32) -> LogError {
    LogError::Unavailable {
        shard,
        reason: "state lock poisoned".into(),
    }
}

/// Rebuilds a shard's state from the store without loading any user: where each segment is
/// (the layout), the newest checkpoint's number, and the tail after it, read once to index
/// which users each tail segment holds and to check that it decodes and that each user's seqs
/// in it run densely. Users are loaded on first use ([`crate::load_user`]: their checkpoint
/// rows, then their tail segments), so restart time and memory grow with the tail, not with
/// the number of users (issue 15: at 75k users the old recovery read every user of the
/// checkpoint into the view, 2 GB, before evicting down to the budget).
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
    state.recover_from(checkpoint);
    state.index_until_compacted(cfg.compaction.enabled);
    let mut segments = scan_shard(
        store.clone(),
        shard,
        state.head + 1,
        head,
        cfg.read_concurrency,
    )
    .await?;
    // Each tail user's last seq seen: the tail must continue densely (what a fold would check
    // of the tail; the user's first seq in it is checked against the checkpoint on load).
    let mut last_seq: IdMap<UserId, u64> = IdMap::default();
    while let Some(seg) = segments.try_next().await? {
        let n = seg.meta.segment;
        for e in &seg.events {
            if let Some(prev) = last_seq.insert(e.user_id, e.seq)
                && e.seq != prev + 1
            {
                return Err(LogError::corrupt(
                    shard,
                    n,
                    format!(
                        "user {}: seq {} follows seq {prev} in the tail",
                        e.user_id, e.seq
                    ),
                ));
            }
        }
        // No user is resident: this indexes the segment and moves the head and the time. Its
        // place was recorded from the layout above.
        state
            .commit_segment(
                n,
                &seg.events,
                seg.meta.last_recorded_at,
                seg.meta.batch_id,
                None,
            )
            .map_err(|e| LogError::corrupt(shard, n, e))?;
    }
    if state.last_recorded_at.is_none() && head > 0 {
        let last = read_segment_meta(store.clone(), shard, head).await?;
        state.last_recorded_at = last.map(|m| m.last_recorded_at);
    }
    info!(shard, head = state.head, checkpoint = ?checkpoint, users = state.resident_users(), "shard recovered");
    // The indexes recovery rebuilt count against the view's budget from the first load on.
    state.measure_index();
    Ok(state)
}
