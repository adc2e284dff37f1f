//! Claiming a segment number in the store for a batch (invariants 4 to 9 of [`super`]): the
//! create-only PUT, resolving an ambiguous answer by reading the number back, refusing a
//! number that compaction had freed (the compaction frontier, [`crate::frontier`]), and
//! catching up with segments another writer committed.

use bytes::Bytes;
use keepsake_model::BatchId;
use keepsake_store::{create_only, keys};
use object_store::{ObjectStoreExt, PutPayload};
use tracing::{error, info, warn};

use super::Writer;
use crate::error::LogError;
use crate::frontier::{self, Frontier};
use crate::reader::{
    Layout, Source, Tag, history_segment_meta, list_history, list_layout, read_meta,
    read_source_located,
};

/// What happened to a segment PUT.
pub(super) enum Put {
    /// Committed; the tag of the object written.
    Committed(Tag),
    Fenced,
    /// The number had been used before and compacted away: the PUT landed in a freed name.
    Reused,
    /// Written and confirmed, but another server took the shard after the generation this
    /// writer holds (writer invariant 12): never acknowledged.
    Deposed(u64),
    NotCommitted(String),
}

impl Writer {
    /// Writes segment `n` create-only ([`Self::write_segment`]), then makes sure the number was
    /// not used before (invariant 8).
    pub(super) async fn put_segment(&mut self, n: u64, batch_id: BatchId, bytes: Bytes) -> Put {
        let tag = match self.write_segment(n, batch_id, bytes).await {
            Put::Committed(tag) => tag,
            other => return other,
        };
        // An object left in a used number is a stray that only this confirmation can tell from
        // a committed segment (and so remove); the store layer retries the read.
        match self.used_before(n).await {
            Ok(false) => return self.still_owner(n, tag).await,
            Ok(true) => {}
            // Not known to be committed: failed (retryable) and re-read before the next batch,
            // which folds the segment in if it is the log's, so a resend answers `duplicate`.
            // If it is a stray, readers do not read it (the history object holding its number
            // is marked verified) and verify reports it.
            Err(e) => {
                return Put::NotCommitted(format!(
                    "segment {n} written, but confirming its number was new failed: {e}"
                ));
            }
        }
        error!(
            shard = self.shard,
            segment = n,
            "segment number was used before and compacted: this writer was behind; removing its object"
        );
        // Ours (our create-only PUT made it; anything there since is another stray), never
        // acknowledged: removed at once, without a read-back that could fail and leave it.
        self.remove_own_object(n).await;
        Put::Reused
    }

    /// A confirmed PUT of segment `n`, acknowledged only if no server took the shard after the
    /// generation this writer holds ([`crate::owner`]: the taker reads the shard only after
    /// writing its generation, so a GET that finds none proves the taker will see `n`).
    async fn still_owner(&self, n: u64, tag: Tag) -> Put {
        let generation = match self.gate.held() {
            Some(0) => return Put::Committed(tag),
            Some(g) => g,
            // Let go while the PUT was in flight (the chain showed a newer owner to another
            // batch's check): the caller may not be answered.
            None => return Put::Deposed(0),
        };
        match crate::owner::superseded(self.store.as_ref(), self.shard, generation).await {
            Ok(false) => Put::Committed(tag),
            Ok(true) => Put::Deposed(generation),
            Err(e) => Put::NotCommitted(format!(
                "segment {n} written, but confirming this server still owns the shard failed: {e}"
            )),
        }
    }

    /// True when segment number `n` may have been used before and its object compacted away:
    /// the compaction frontier holds it; or, on a shard whose chain no compaction has started
    /// (compacted only by versions before the frontier), a history object holds it, from a
    /// listing as those versions confirmed a PUT.
    async fn used_before(&mut self, n: u64) -> Result<bool, LogError> {
        let f = self.frontier().await?;
        if f.holds(n) || f.generation > 0 {
            return Ok(f.holds(n));
        }
        let history = list_history(self.store.as_ref(), self.shard).await?;
        self.raise_floor(history.iter().map(|h| h.last).max());
        Ok(history.iter().any(|h| h.holds(n)))
    }

    /// The shard's compaction frontier as it is now: the one this writer knows, followed (one
    /// GET when it has not moved), or found from listings the first time (and started, on a
    /// shard nothing ever compacted).
    async fn frontier(&mut self) -> Result<Frontier, LogError> {
        let (store, shard) = (self.store.as_ref(), self.shard);
        let now = match self.frontier {
            Some(known) => frontier::follow(store, shard, known).await?,
            None => match frontier::find(store, shard).await? {
                f if f.generation == 0 && f.through == 0 => frontier::start(store, shard).await?,
                f => f,
            },
        };
        self.frontier = Some(now);
        Ok(now)
    }

    /// Raises the known frontier to the highest number a listed history object holds: every
    /// number one holds was used, whatever compacted it.
    fn raise_floor(&mut self, last: Option<u64>) {
        if let (Some(f), Some(last)) = (self.frontier.as_mut(), last) {
            f.through = f.through.max(last);
        }
    }

    /// Removes this writer's object in segment number `n`, which a history object holds with
    /// another batch: never acknowledged, and read by no one (the history object is relied on).
    async fn remove_own_object(&self, n: u64) {
        let path = keys::segment(self.shard, n);
        if let Err(e) = self.store.delete(&path).await {
            error!(shard = self.shard, segment = n, error = %e, "removing a segment written into a used number failed; verify reports it as a stray");
        }
    }

    /// Settles a PUT that may have landed but was never confirmed (its answer or read-back, or
    /// the listing of invariant 8, failed), from a listing taken after it. No history object
    /// holding its number: the number was new when the PUT landed, so an object there is the
    /// log's segment, folded in by the re-read like any other. A history object holding it with
    /// another batch: this writer was behind and wrote into a freed number; its object, never
    /// acknowledged, is removed (before, it stayed for good and verify reported it). While that
    /// cannot be told (a read fails), it stays to settle at the next re-read.
    async fn settle_unconfirmed(&mut self, layout: &Layout) -> Result<(), LogError> {
        let Some((n, ours)) = self.unconfirmed else {
            return Ok(());
        };
        if layout.history.iter().any(|h| h.holds(n)) {
            let kept = history_segment_meta(self.store.clone(), self.shard, n).await?;
            if kept.is_some_and(|m| m.batch_id != ours)
                && self.read_back(n).await?.map(|(id, _)| id) == Some(ours)
            {
                error!(
                    shard = self.shard,
                    segment = n,
                    "an unconfirmed segment PUT had landed in a number used before and compacted: this writer was behind; removing its object"
                );
                self.stats
                    .reused_numbers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.remove_own_object(n).await;
            }
        }
        self.set_unconfirmed(None);
        Ok(())
    }

    /// Writes segment `n` create-only and resolves every ambiguous answer by reading it back:
    /// the store layer sends a create-only PUT once (under its put timeout), so this is where a
    /// PUT that did not land is sent again.
    async fn write_segment(&self, n: u64, batch_id: BatchId, bytes: Bytes) -> Put {
        let path = keys::segment(self.shard, n);
        let mut last_error = String::new();
        for attempt in 1..=self.cfg.put_attempts.max(1) {
            let put = self
                .store
                .put_opts(&path, PutPayload::from(bytes.clone()), create_only())
                .await;
            match put {
                Ok(put) => return Put::Committed(Tag::of(put.e_tag.as_deref())),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    last_error = "segment already exists".into();
                }
                Err(e) => {
                    last_error = e.to_string();
                    self.stats
                        .put_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    warn!(shard = self.shard, segment = n, attempt, error = %e, "segment PUT failed or timed out; reading back");
                }
            }
            match self.read_back(n).await {
                Ok(Some((found, tag))) if found == batch_id => {
                    self.stats
                        .ambiguous_resolved
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(
                        shard = self.shard,
                        segment = n,
                        "the PUT had landed: batch committed"
                    );
                    return Put::Committed(tag);
                }
                Ok(Some(_)) => return Put::Fenced,
                Ok(None) => {
                    // Not there: not committed. Trying the same number again is safe.
                    self.stats
                        .put_retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(self.cfg.retry_backoff * attempt).await;
                }
                Err(e) => {
                    return Put::NotCommitted(format!(
                        "{last_error}; and reading it back failed: {e}"
                    ));
                }
            }
        }
        Put::NotCommitted(last_error)
    }

    /// The batch id of segment `n` and the object's tag, `None` if it does not exist (the
    /// store layer retries the read).
    async fn read_back(&self, n: u64) -> Result<Option<(BatchId, Tag)>, LogError> {
        let path = keys::segment(self.shard, n);
        let unavailable = |e: object_store::Error| LogError::Unavailable {
            shard: self.shard,
            reason: format!("read back segment {n}: {e}"),
        };
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let tag = Tag::of_meta(&got.meta);
        let bytes = got.bytes().await.map_err(unavailable)?;
        read_meta(self.shard, n, &bytes).map(|m| Some((m.batch_id, tag)))
    }

    /// True when no other process has committed past this writer's head: segment `head + 1`
    /// is neither an object nor within the compaction frontier (compaction advances it before
    /// deleting a segment, so a used number always shows in one or the other).
    pub(super) async fn is_current(&mut self) -> Result<bool, LogError> {
        let n = self
            .state
            .read()
            .map_err(|_| crate::poisoned(self.shard))?
            .head
            + 1;
        let path = keys::segment(self.shard, n);
        match self.store.head(&path).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(LogError::Store {
                    context: format!("look for {path}"),
                    source: e,
                });
            }
        }
        Ok(!self.used_before(n).await?)
    }

    /// Applies every segment after `head` that the store holds, in order, from a listing: a
    /// range that compaction moved into a history object is read from there (it is taken, not
    /// the end of the log).
    pub(super) async fn catch_up(&mut self) -> Result<(), LogError> {
        let shard = self.shard;
        let from = self.state.read().map_or(0, |s| s.head) + 1;
        // Read before the listing: a verified history object reaching the chain's value was
        // written before it was, so a listing that does not reach it left objects out (a file
        // store's listing can, while compaction empties a directory), and a stray in a number
        // it holds would pass for the log's segment — or settle an unconfirmed PUT as
        // committed. Such a listing is refused (retryable), never used.
        let written = self.frontier().await?.written;
        let layout = list_layout(self.store.as_ref(), shard).await?;
        let held = layout.history.iter().map(|h| h.last).max();
        if written > held.unwrap_or(0) {
            return Err(LogError::Unavailable {
                shard,
                reason: format!(
                    "a listing of the shard's history objects ends before segment {written}, which the compaction frontier says a history object holds; retry"
                ),
            });
        }
        self.raise_floor(held);
        self.settle_unconfirmed(&layout).await?;
        let sources = if layout.head() >= from {
            layout.sources(shard, from..=layout.head())?
        } else {
            Vec::new()
        };
        for src in sources {
            let (segs, read_from) = read_source_located(self.store.clone(), shard, src).await?;
            let mut state = self.state.write().map_err(|_| crate::poisoned(shard))?;
            for seg in &segs {
                let n = seg.meta.segment;
                // Placed below, from where it was read.
                state
                    .commit_segment(
                        n,
                        &seg.events,
                        seg.meta.last_recorded_at,
                        seg.meta.batch_id,
                        None,
                    )
                    .map_err(|e| LogError::corrupt(shard, n, e))?;
                info!(
                    shard,
                    segment = n,
                    events = seg.events.len(),
                    "applied a segment written elsewhere"
                );
            }
            // Where they were read from: a segment found replaced since the listing (a stray in
            // a number compacted meanwhile) is recorded as its history object, not the stray.
            for from in read_from {
                match from {
                    Source::Segment { n, size, tag } => state.record_segment_size(n, size, tag),
                    Source::History { object, .. } => state.compacted(object),
                }
            }
            let head = state.head;
            drop(state);
            self.head_tx.send_replace(head);
        }
        self.needs_resync = false;
        Ok(())
    }
}
