//! A push, from the request to the writer's queue: the request and its answer, and what it
//! needs from the user's log, read on the pushing task so that a slow read of history never
//! holds up the shard's writer and the other pushes of its batch: the earlier documents its
//! stale patches merge against, and the results of change ids that the user's filter of older
//! ids may hold (a resend from before the checkpoint the state was loaded from answers
//! `duplicate` with its original result, found in the log).
//!
//! Invariant: a change id the state's filter may hold is staged only once the log has said
//! whether it was applied (here, or by the writer when the state was loaded again meanwhile).

use std::collections::{HashMap, HashSet};

use keepsake_model::{
    Ancestors, Change, ChangeBody, ChangeId, EventMeta, ItemId, OldChanges, Origin, Outcome,
    StateRead, UserId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::load::{NewestFirst, by_view, segment_sources};
use crate::{Log, LogError, UpTo, poisoned, reader};

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

/// A push waiting in its shard writer's queue.
pub(crate) struct Queued {
    pub req: PushRequest,
    /// Earlier documents its stale patches need, read before it was queued.
    pub ancestors: Ancestors,
    /// Its change ids that the user's filter of older ids may hold, resolved from the log...
    pub old_changes: OldChanges,
    /// ...as far as this seq of the user: trusted only by a state whose filter ends there or
    /// before (one loaded again from a newer checkpoint may hold ids the read did not see).
    pub old_through: u64,
    pub enqueued: Instant,
    /// Whether it entered the log within a reaction of the process's last answer (a client's
    /// next push once answered: not company for a latency budget's wait).
    pub reacted: bool,
    /// The process's time outside reactions when it entered the log (the clock a latency
    /// budget's arrival rate is counted by).
    pub uncovered: std::time::Duration,
    pub reply: oneshot::Sender<Result<PushResult, LogError>>,
}

impl Log {
    /// Commits a push; answers once its events are durable.
    pub async fn push(&self, req: PushRequest) -> Result<PushResult, LogError> {
        let shard = self.shard_of(&req.user_id);
        // On entry, before any read: a reaction is timed from its answer, not from the end of
        // a cold load. Only a latency budget asks (nothing on the path without one).
        let (reacted, uncovered) = if self.cfg.commit_latency_budget.is_zero() {
            (false, std::time::Duration::ZERO)
        } else {
            self.reactions.arrival_now()
        };
        // Read here, by this push's own task, so that a slow read of history never holds up
        // the shard's writer and every other push of its batch.
        let ancestors = self.prefetch_ancestors(&req).await?;
        let (old_changes, old_through) = self.resolve_old_changes(&req).await?;
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            req,
            ancestors,
            old_changes,
            old_through,
            enqueued: Instant::now(),
            uncovered,
            reacted,
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

    /// [`Log::sync`] for a whole shard: once it returns, everything any process committed to
    /// `shard` before the call is in this process's view, and [`Log::head`] is at least the
    /// store's head then. For reads of a whole shard outside the writer (the users of a fleet
    /// restore's plan).
    pub async fn sync_shard(&self, shard: u32) -> Result<(), LogError> {
        // An empty push for a user of the shard; the first of the ids 0, 1, 2, ... that falls
        // in it (about `shard_count` tries: the shard hash spreads them evenly). Loading it
        // costs one ranged read of the checkpoint; a real user with that id is synced too.
        let probe = (0..u128::from(self.descriptor.shard_count.max(1)) << 16)
            .map(|i| UserId(uuid::Uuid::from_u128(i)))
            .find(|u| self.shard_of(u) == shard)
            .ok_or_else(|| LogError::Unavailable {
                shard,
                reason: "no user id falls in this shard".into(),
            })?;
        self.sync(&probe).await
    }

    /// The push's change ids that the user's state holds only in its filter of older ids,
    /// each with its original result from the user's log, or `None` when the log does not have
    /// it (the filter's false positive), and the user's last seq the read saw. Usually none:
    /// one lookup per id in memory.
    async fn resolve_old_changes(&self, req: &PushRequest) -> Result<(OldChanges, u64), LogError> {
        let ids: Vec<ChangeId> = req.changes.iter().map(|c| c.change_id).collect();
        let (maybe, through): (Vec<ChangeId>, u64) = self
            .user(&req.user_id, |s| {
                let maybe = ids
                    .into_iter()
                    .filter(|id| s.change(id).is_none() && s.change_may_be_older(id))
                    .collect();
                (maybe, s.filter_through())
            })
            .await?;
        if maybe.is_empty() {
            return Ok((OldChanges::new(), 0));
        }
        self.stats
            .old_change_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Newest first; an id not found only from the whole log, checked to reach every id
        // the filter holds.
        let shard = self.shard_of(&req.user_id);
        let state = &self.shards[shard as usize].state;
        crate::load::find_changes_in_view(
            &self.store,
            shard,
            state,
            req.user_id,
            &maybe,
            through,
            &self.stats,
        )
        .await
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
                // seq of a recent version in a few lookups. Older ones may be among the change
                // ids the state holds exactly (item, version, seq): one scan of those. Those
                // only in its filter of older ids have no seq here: `find_versions` searches.
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
    /// A version whose seq the view's index covers (after the checkpoint before the newest, or
    /// the one before it while compaction lags, or the one recovery started from:
    /// [`crate::ShardState::indexed_after`]) is
    /// read from the one segment that holds it. An older one, whose seq is known, is found by
    /// its seq in the segments before the index (key columns first, then that one row:
    /// [`reader::read_user_seqs`]). A version whose seq is not known (older than the change
    /// ids the state holds exactly: the rest are only in its filter) is searched newest segment
    /// first: the user's segments that the index names (those after the newest checkpoint and
    /// the generations before it the index covers) in groups of 4, 32, 256..., then the segments before the
    /// index. Those are searched newest source first too, in groups of 1, 8, 64... segments or
    /// history objects, and the search stops once every version is found.
    async fn find_versions(
        &self,
        user: &UserId,
        needs: Vec<(ItemId, u64, Option<u64>)>,
    ) -> Result<Ancestors, LogError> {
        let shard = self.shard_of(user);
        let head = self.head(shard);
        let state = &self.shards[shard as usize].state;
        let (indexed_after, indexed, exact, by_seq) = {
            let view = state.read().map_err(|_| poisoned(shard))?;
            let plan = view.read_plan(user, UpTo::End);
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
            let indexed: Vec<u64> = plan.indexed().filter(|n| *n <= head).collect();
            (plan.indexed_after, indexed, exact, by_seq)
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
            let events = self
                .search_indexed_segments(shard, user, numbers, indexed_after)
                .await?;
            take(&events, &mut wanted);
        }
        // Versions still to find by their seq, before the view's index; the others are sought
        // by reading the user's events: first in the segments the index says hold the user
        // (the generation the newest checkpoint has just covered included: those segments are
        // not compacted yet, and a search of every one of them, during each round of upkeep,
        // was what held pushes back: `make sustained`, 2026-12-02, run 13).
        let mut by_seq: HashSet<u64> = by_seq.into_iter().collect();
        let seq_of: HashMap<(ItemId, u64), u64> = needs
            .iter()
            .filter_map(|(i, v, seq)| seq.filter(|s| by_seq.contains(s)).map(|s| ((*i, *v), s)))
            .collect();
        let unsought = |wanted: &HashSet<(ItemId, u64)>, by_seq: &HashSet<u64>| {
            wanted
                .iter()
                .any(|k| !seq_of.get(k).is_some_and(|s| by_seq.contains(s)))
        };
        let rest: Vec<u64> = indexed.into_iter().filter(|n| !exact.contains(n)).collect();
        for newest in NewestFirst::new(rest, 4) {
            if !unsought(&wanted, &by_seq) {
                break;
            }
            let events = self
                .search_indexed_segments(shard, user, newest, indexed_after)
                .await?;
            take(&events, &mut wanted);
        }
        // Before the index, newest first, in groups of 1, 8, 64... sources, stopping once
        // every version is found: a stale patch's base is most often recent, and every history
        // object holds rows of every user, so reading all of them made each such push cost more
        // as the log aged (`make sustained`, 2026-12-02). A version whose seq is known is read
        // by its seq; the others by reading the group's events of the user.
        if indexed_after > 0 && !wanted.is_empty() {
            self.stats
                .searches_past_index
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sources =
                segment_sources(&self.store, shard, state, (1..=indexed_after).collect()).await?;
            let relocate = by_view(self.store.clone(), shard, state.clone())?;
            for newest in NewestFirst::new(sources, 1) {
                if wanted.is_empty() {
                    break;
                }
                // Every source by its kind: read for what the index does not cover.
                self.stats.record_search_sources(&newest, u64::MAX);
                // The user's events of the group when a version without a known seq is still
                // wanted (they hold the ones sought by seq too); else only the rows of the seqs.
                let events = if unsought(&wanted, &by_seq) {
                    reader::read_user_relocating(
                        self.store.clone(),
                        shard,
                        *user,
                        newest,
                        UpTo::End,
                        &relocate,
                    )
                    .await?
                    .0
                } else {
                    reader::read_user_seqs(
                        self.store.clone(),
                        shard,
                        *user,
                        newest,
                        by_seq.iter().copied().collect(),
                        &relocate,
                    )
                    .await?
                };
                for e in &events {
                    by_seq.remove(&e.seq);
                }
                take(&events, &mut wanted);
            }
        }
        Ok(found)
    }
}
