//! What an operator asks of the whole log: compact now, rebuild the views from the log, list
//! every user.

use futures::TryStreamExt;
use keepsake_model::{UserId, UserState};
use tracing::info;

use crate::upkeep::Upkeep;
use crate::{CompactionPolicy, CompactionReport, Log, LogError, poisoned, scan_shard, verify};

impl Log {
    /// Checkpoints every shard at its head and compacts everything up to it now, whatever the
    /// policy's `min_segments` (what an operator runs before a backup, and benchmarks before
    /// reading old history). Returns what compaction did, over all shards.
    pub async fn compact_now(&self) -> Result<CompactionReport, LogError> {
        let mut total = CompactionReport::default();
        for (shard, s) in (0u32..).zip(&self.shards) {
            if s.gate.held().is_none() {
                // Another server's (a cluster): its owner keeps it.
                continue;
            }
            let budget = s.state.read().map_err(|_| poisoned(shard))?.budget();
            let upkeep = Upkeep {
                store: self.store.clone(),
                shard,
                state: s.state.clone(),
                cfg: self.cfg.clone(),
                clock: self.clock.clone(),
                stats: self.stats.clone(),
                maintenance: s.maintenance.clone(),
                gate: s.gate.clone(),
                budget,
            };
            let mut held = s.maintenance.lock().await;
            if let Some(c) = upkeep.checkpoint(&mut held).await? {
                let policy = CompactionPolicy {
                    min_segments: 1,
                    ..self.cfg.compaction
                };
                total.add(upkeep.compact(c, &policy).await?);
            }
        }
        Ok(total)
    }

    /// Rebuilds every view this server holds from the log (in a cluster, those of the shards it
    /// holds; alone, all): folds every user from the first segment (checking the
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
        // In a cluster, the users of the shards this server holds (another's views are theirs
        // to compare); alone, every user.
        let mut rebuilt = rebuilt;
        rebuilt.retain(|u, _| self.owned(self.shard_of(u)).is_some());
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

    /// Every user with at least one event committed, by any process, before the call, over all
    /// shards: the newest checkpoint's users plus those in the segments after it. Each shard this
    /// server holds is made current first ([`Log::sync_shard`]): a user whose every event
    /// another process wrote is in no segment this process has read; one it does not hold (a
    /// cluster) is read from a listing of the store.
    pub async fn all_users(&self) -> Result<Vec<UserId>, LogError> {
        let mut out = std::collections::BTreeSet::new();
        for shard in 0..self.descriptor.shard_count {
            let (head, checkpoint) = if self.owned(shard).is_some() {
                self.sync_shard(shard).await?;
                (self.head(shard), self.checkpoint(shard))
            } else {
                // Another server's (a cluster): this view is not kept up, so from a listing of
                // the store, which shows everything committed before it.
                let head = crate::list_layout(self.store.as_ref(), shard).await?.head();
                let checkpoint = crate::list_checkpoints(self.store.as_ref(), shard)
                    .await?
                    .into_iter()
                    .filter(|c| *c <= head)
                    .max();
                (head, checkpoint)
            };
            if let Some(c) = checkpoint {
                out.extend(
                    // Ids only: no runs read.
                    crate::reader::open_checkpoint(self.store.as_ref(), shard, c)
                        .await?
                        .all_partial(self.store.as_ref())
                        .await?
                        .into_keys(),
                );
            }
            let from = checkpoint.map_or(1, |c| c + 1);
            let mut segments = scan_shard(self.store.clone(), shard, from, head, 4).await?;
            while let Some(seg) = segments.try_next().await? {
                if seg.meta.segment > head {
                    break;
                }
                out.extend(seg.events.iter().map(|e| e.user_id));
            }
        }
        Ok(out.into_iter().collect())
    }
}
