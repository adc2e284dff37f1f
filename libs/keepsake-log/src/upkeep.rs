//! The background upkeep of a shard: a checkpoint every `checkpoint_every_events` events or
//! `checkpoint_interval` (the previous checkpoint plus the segments since, folded with
//! `apply`, never the view), then retention of old checkpoints, then compaction of the
//! segments the checkpoint covers. One at a time per shard (the shard's maintenance lock).

use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use keepsake_model::Clock;
use keepsake_store::{Cause, keys, with_cause};
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    LogConfig, LogError, LogStats, ShardState, compact, compact_shard, list_checkpoint_objects,
    list_checkpoints, poisoned, read_checkpoint, retention, scan_shard_upto,
};

/// What the background upkeep of one shard (checkpoints, retention, compaction) works with.
#[derive(Clone)]
pub(crate) struct Upkeep {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) shard: u32,
    pub(crate) state: Arc<RwLock<ShardState>>,
    pub(crate) cfg: Arc<LogConfig>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) stats: Arc<LogStats>,
    pub(crate) maintenance: Arc<tokio::sync::Mutex<()>>,
    /// Upkeep runs only on a shard this process may write (in a cluster, the owner's job).
    pub(crate) gate: Arc<crate::owner::Gate>,
}

impl Upkeep {
    /// Writes a checkpoint at the head unless the newest is there already, then applies the
    /// retention policy. Returns the newest checkpoint (`None`: the log is empty).
    pub(crate) async fn checkpoint(&self) -> Result<Option<u64>, LogError> {
        let shard = self.shard;
        let (head, prev, since) = self
            .state
            .read()
            .map(|s| (s.head, s.checkpoint, s.events_since_checkpoint))
            .map_err(|_| poisoned(shard))?;
        if head == 0 || prev == Some(head) {
            return Ok(prev);
        }
        let users = with_cause(
            Cause::Checkpoint,
            write_checkpoint(&self.store, shard, prev, head, self.cfg.read_concurrency),
        )
        .await?;
        if let Ok(mut s) = self.state.write() {
            s.checkpointed(head);
            s.events_since_checkpoint = s.events_since_checkpoint.saturating_sub(since);
        }
        info!(shard, segment = head, users, "checkpoint written");
        let retention = apply_retention(&self.store, shard, &self.cfg.retention, self.clock.now());
        if let Err(e) = with_cause(Cause::Retention, retention).await {
            warn!(shard, error = %e, "applying checkpoint retention failed; will retry after the next checkpoint");
        }
        Ok(Some(head))
    }

    /// Compacts the segments up to `upto` (a checkpoint's), counting what was done.
    pub(crate) async fn compact(
        &self,
        upto: u64,
        policy: &compact::CompactionPolicy,
    ) -> Result<compact::CompactionReport, LogError> {
        let done = with_cause(
            Cause::Compaction,
            compact_shard(&self.store, self.shard, upto, Some(&self.state), policy),
        )
        .await;
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
pub(crate) async fn checkpointer(upkeep: Upkeep, mut stop: watch::Receiver<bool>) {
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
        if !due || prev == Some(head) || upkeep.gate.held().is_none() {
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
    let mut segments = scan_shard_upto(
        store.clone(),
        shard,
        prev.map_or(1, |c| c + 1),
        n,
        concurrency,
    )
    .await?;
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
