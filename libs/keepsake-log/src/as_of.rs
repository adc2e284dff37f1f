//! Point-in-time reads: a user's state, or many users' of one shard, as it was after a seq or
//! at a moment. Each starts from the newest checkpoint whose state of the user lies wholly
//! before the moment ([`Candidates`], [`fits`]) and folds the events after it up to the
//! moment; equal to a replay from the first event (tested).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use keepsake_model::{StateRead, UserId, UserState};
use object_store::ObjectStore;

use crate::load::{by_view, segment_sources};
use crate::{
    Log, LogError, ShardState, UpTo, list_checkpoints, open_checkpoint, poisoned,
    read_segment_meta, reader, scan_shard,
};

impl Log {
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

    /// The user's state as it was at a moment: after every event with `seq <= n`
    /// ([`UpTo::Seq`]) or `recorded_at <= t` ([`UpTo::Time`]).
    ///
    /// Starts from the newest checkpoint whose state of the user lies wholly before the moment
    /// (by seq: the user's seq in it is at most `n`; by time: the user's newest event in it was
    /// recorded at or before `t`, [`fits`]), then folds the user's events after it up to the
    /// moment. Equal to a replay from the first event (tested).
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

    /// Makes a read up to `at` hold everything any process committed up to `at` before the
    /// call, where this process's view may lack it. A moment: [`Log::settle_moment`]. The end:
    /// the shard is synced. A seq: nothing before reading — seqs never change once committed,
    /// so a read that reaches seq `n` is final, and only one that falls short syncs and reads
    /// again ([`Log::settled_by_seq`]).
    pub(crate) async fn settle(&self, user: &UserId, at: UpTo) -> Result<(), LogError> {
        match at {
            UpTo::Time(t) => self.settle_moment(user, t).await,
            UpTo::End => self.sync(user).await,
            UpTo::Seq(_) => Ok(()),
        }
    }

    /// True when a read up to `at` that reached `last_seq` needs no second read: by seq, only
    /// a read that fell short of `n` may be missing what another process committed (or the
    /// user has no seq `n` yet); otherwise [`Log::settle`] already made it current.
    pub(crate) fn settled_by_seq(at: UpTo, last_seq: u64) -> bool {
        !matches!(at, UpTo::Seq(n) if last_seq < n)
    }

    async fn state_at(
        &self,
        user: &UserId,
        at: UpTo,
        with_changes: bool,
    ) -> Result<UserState, LogError> {
        self.settle(user, at).await?;
        let state = self.state_at_in_view(user, at, with_changes).await?;
        if Self::settled_by_seq(at, state.last_seq()) {
            return Ok(state);
        }
        // Seq `n` may be committed by a process this one has not read yet.
        self.sync(user).await?;
        self.state_at_in_view(user, at, with_changes).await
    }

    /// [`Log::state_at`] from this process's view of the shard, as far as its head.
    async fn state_at_in_view(
        &self,
        user: &UserId,
        at: UpTo,
        with_changes: bool,
    ) -> Result<UserState, LogError> {
        let shard = self.shard_of(user);
        let head = self.head(shard);
        let store = &self.store;
        let mut base = None;
        let view = &self.shards[shard as usize].state;
        let mut candidates = Candidates::list(store, view, shard, head, at).await?;
        while let Some(c) = candidates.next().await? {
            // Through the view: its checkpoint's manifest and the parts' footers are read once,
            // not at every as-of read.
            let read =
                crate::load::user_in_checkpoint(store, shard, view, c, *user, with_changes).await;
            let state = match read {
                Ok(state) => state,
                // Unusable (a part it names is missing, or does not decode): checkpoints are
                // derived, so an older one, or the log from its start.
                Err(LogError::Corrupt {
                    segment, detail, ..
                }) if segment == c => {
                    tracing::warn!(shard, checkpoint = c, %detail, "a checkpoint is unusable; reading from an older one");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !fits(&state, at) {
                continue;
            }
            base = Some((c, state));
            break;
        }
        let (from, mut state) = base.map_or((1, UserState::default()), |(c, s)| (c + 1, s));
        if head >= from {
            let indexed = self.shards[shard as usize]
                .state
                .read()
                .ok()
                .filter(|v| v.indexed_after() < from)
                .map(|v| match at {
                    // Segments whose first event of the user is past the seq hold nothing needed.
                    UpTo::Seq(n) => v.segments_until(user, from, head, n),
                    UpTo::End | UpTo::Time(_) => v.segments_of(user, from, head),
                });
            // The index covers every segment after the base (the view's newest checkpoint, or
            // the one before it: a moment before the newest checkpoint, the user changed since)
            // and knows the user's: the others are not read. Else every segment after the base.
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
                let relocate = by_view(store.clone(), shard, view.clone())?;
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

    /// The states of many users of one shard as they were at time `t`, folding the shard once
    /// per starting point: the users whose state in the newest checkpoint was wholly recorded
    /// by `t` start from it (most users of a restore to a recent moment), the others from the
    /// newest checkpoint recorded at or before `t`; each group then folds the segments after
    /// its checkpoint up to `t`. Equal, user by user, to [`Log::user_at`] with [`UpTo::Time`]
    /// (tested); used by fleet restores, where one read per user would read the same
    /// checkpoint and segments again for every user. Reads and holds the wanted users' states
    /// only, never a checkpoint's every user (one shard at a time): at a million users a
    /// shard's whole state is gigabytes.
    pub async fn users_at(
        &self,
        shard: u32,
        users: &HashSet<UserId>,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashMap<UserId, UserState>, LogError> {
        let head = self.head(shard);
        let at = UpTo::Time(t);
        let view = &self.shards[shard as usize].state;
        let mut candidates = Candidates::list(&self.store, view, shard, head, at).await?;
        let mut out = HashMap::with_capacity(users.len());
        let mut rest: Vec<UserId> = users.iter().copied().collect();
        while !rest.is_empty() {
            let base = candidates.next().await?;
            let states = match self.users_in_checkpoint(shard, base, rest.clone()).await {
                Ok(states) => states,
                // Unusable (a part it names is missing, or does not decode): checkpoints are
                // derived, so an older one, or the log from its start, as `user_at` does.
                Err(LogError::Corrupt {
                    segment, detail, ..
                }) if Some(segment) == base => {
                    tracing::warn!(shard, checkpoint = segment, %detail, "a checkpoint is unusable; reading from an older one");
                    continue;
                }
                Err(e) => return Err(e),
            };
            rest = Vec::new();
            let mut group = HashMap::with_capacity(states.len());
            for (u, state) in states {
                // A user whose state there is newer than `t` starts from an older checkpoint.
                match base {
                    Some(_) if !fits(&state, at) => rest.push(u),
                    _ => {
                        group.insert(u, state);
                    }
                }
            }
            out.extend(self.fold_users_to(shard, base, group, head, t).await?);
        }
        Ok(out)
    }

    /// The states of `users` in checkpoint `c` (none: the empty states), with their changes. A
    /// checkpoint of one object (formats 1-3) is read whole once, not user by user.
    async fn users_in_checkpoint(
        &self,
        shard: u32,
        c: Option<u64>,
        users: Vec<UserId>,
    ) -> Result<Vec<(UserId, UserState)>, LogError> {
        let Some(c) = c else {
            return Ok(users
                .into_iter()
                .map(|u| (u, UserState::default()))
                .collect());
        };
        let opened = open_checkpoint(self.store.as_ref(), shard, c).await?;
        if let reader::Checkpoint::Whole { .. } = opened {
            let mut all = opened.all(self.store.as_ref()).await?;
            return Ok(users
                .into_iter()
                .map(|u| (u, all.remove(&u).unwrap_or_default()))
                .collect());
        }
        opened
            .users(
                self.store.clone(),
                users,
                self.cfg.read_concurrency,
                &mut reader::WholeParts::once(),
            )
            .await
    }

    /// Folds into `states` (the users' states in checkpoint `base`) every event of theirs in
    /// the segments after it, up to `head`, recorded at or before `t`.
    async fn fold_users_to(
        &self,
        shard: u32,
        base: Option<u64>,
        mut states: HashMap<UserId, UserState>,
        head: u64,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashMap<UserId, UserState>, LogError> {
        let store = &self.store;
        let from = base.map_or(1, |c| c + 1);
        if states.is_empty() {
            return Ok(states);
        }
        if head >= from {
            let mut segments =
                scan_shard(store.clone(), shard, from, head, self.cfg.read_concurrency).await?;
            while let Some(seg) = segments.try_next().await? {
                let n = seg.meta.segment;
                // recorded_at is one per segment and never goes backwards within a shard.
                if n > head || seg.meta.first_recorded_at > t {
                    break;
                }
                for e in &seg.events {
                    if let Some(state) = states.get_mut(&e.user_id) {
                        keepsake_model::apply(state, e)
                            .map_err(|err| LogError::corrupt(shard, n, err))?;
                    }
                }
            }
        }
        Ok(states)
    }
}

/// Whether a user's state in a checkpoint may start a read of the moment `at`: by seq, the
/// user's seq in it is at most `n`; by time, every event of the user in it was recorded at or
/// before `t` (so a checkpoint written long after the moment serves every user unchanged
/// since: an as-of read of them reads the view's checkpoint, not the history before it).
fn fits(state: &UserState, at: UpTo) -> bool {
    match at {
        UpTo::Seq(n) => state.last_seq() <= n,
        UpTo::Time(t) => state.recorded_by(t),
        UpTo::End => true,
    }
}

/// The checkpoints a read of the moment `at` may start from, newest first: the newest at or
/// below the head the read started at, then, by time, those older ones that lie wholly before
/// the moment (the checkpoint's segment was recorded at or before `t`, read only for the
/// candidates asked for). A caller takes the first whose state of its user [`fits`]; none
/// fitting means reading from segment 1. The one place that picks a checkpoint for a moment.
struct Candidates<'a> {
    store: &'a Arc<dyn ObjectStore>,
    /// Keeps the times of checkpoints' segments across reads.
    view: &'a RwLock<ShardState>,
    shard: u32,
    at: UpTo,
    newest_first: std::vec::IntoIter<u64>,
    /// The newest has not been given out yet.
    newest_untried: bool,
}

impl<'a> Candidates<'a> {
    async fn list(
        store: &'a Arc<dyn ObjectStore>,
        view: &'a RwLock<ShardState>,
        shard: u32,
        head: u64,
        at: UpTo,
    ) -> Result<Self, LogError> {
        let mut listed = list_checkpoints(store.as_ref(), shard).await?;
        listed.retain(|c| *c <= head);
        listed.reverse();
        Ok(Self {
            store,
            view,
            shard,
            at,
            newest_first: listed.into_iter(),
            newest_untried: true,
        })
    }

    async fn next(&mut self) -> Result<Option<u64>, LogError> {
        let newest = std::mem::take(&mut self.newest_untried);
        while let Some(c) = self.newest_first.next() {
            // The newest is tried whatever its time: its users unchanged since `t` fit (the
            // caller checks each); an older one must fit every user.
            if let UpTo::Time(t) = self.at
                && !newest
            {
                let Some(recorded) = self.recorded_at(c).await? else {
                    continue;
                };
                if recorded > t {
                    continue;
                }
            }
            return Ok(Some(c));
        }
        Ok(None)
    }

    /// `last_recorded_at` of checkpoint `c`'s segment (none: the segment is gone), from the
    /// view when a read found it before.
    async fn recorded_at(&self, c: u64) -> Result<Option<DateTime<Utc>>, LogError> {
        let poisoned = || poisoned(self.shard);
        if let Some(t) = self
            .view
            .read()
            .map_err(|_| poisoned())?
            .checkpoint_recorded_at(c)
        {
            return Ok(Some(t));
        }
        let Some(meta) = read_segment_meta(self.store.clone(), self.shard, c).await? else {
            return Ok(None);
        };
        self.view
            .write()
            .map_err(|_| poisoned())?
            .remember_checkpoint_time(c, meta.last_recorded_at);
        Ok(Some(meta.last_recorded_at))
    }
}
