//! Writing a checkpoint (format 4, [`keepsake_segment::Manifest`]): the state of a shard after
//! segment `n` as a manifest over immutable parts, so that its cost follows the new work, not
//! everything the shard holds.
//!
//! - From a manifest: only the users in segments `prev + 1..=n` are read (each from the part the
//!   previous manifest places it in, one user's pages), folded with `apply`, and written as one
//!   new delta part; every other part is named again, never copied. Parts are read
//!   `concurrency` at a time, not one after another (at a million users a checkpoint meets a
//!   few users in each of ~61 parts a shard), through the view's footers when the upkeep
//!   writes it ([`write_checkpoint_sharing`]), which are then trimmed to the new manifest's.
//! - Deltas are merged in the same pass, size-tiered like a binary counter: the newest deltas
//!   join the new one while each is no larger than what is merged so far (and as many more as
//!   keep them within `max_deltas`), so their sizes double from newest to oldest and a changed
//!   user is rewritten about log2 times.
//! - When the deltas list more users than `1 / merge_ratio` of the base (and more than
//!   `merge_min_users`), they are folded into the base, rewriting only the base parts whose
//!   ranges hold a delta user (with users spread over the ids, most of them), split at
//!   `part_users` users. A base merge comes once per `base / merge_ratio` changed users:
//!   amortized, about `merge_ratio` rewrites of each changed user's state.
//! - From a whole checkpoint (formats 1-3) or from nothing: the full fold, as before, written as
//!   base parts. So a store written by an older version moves to parts at its next checkpoint.
//!
//! Parts are named by the checkpoint that wrote them and their content's digest, and written
//! create-only; the manifest is written create-only last, so a crash leaves only unnamed parts,
//! which retention deletes. After its manifest lands, a checkpoint checks every part it names
//! is there, and takes the manifest back if not. A previous checkpoint that is there but
//! unusable (a missing part) is passed over: the fold starts from the first segment. A
//! checkpoint is written only if its fold reached `n` one segment after another.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use keepsake_model::{ChangeFilter, IdMap, StateRead, UserId, UserState};
use keepsake_segment::{BasePart, DeltaPart, Manifest, NIL_USER, PartRef};
use keepsake_store::keys;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::{info, warn};

use crate::reader::{
    Checkpoint, Footers, WholeParts, checkpoint_exists, open_checkpoint, read_base_part,
    read_delta_part, read_filter_run,
};
use crate::{LogError, list_checkpoints, scan_shard_upto};

/// How a checkpoint's parts are sized and when its deltas are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartsPolicy {
    /// Users per base part, at most (a merge splits a larger one).
    pub part_users: usize,
    /// More deltas than this are merged into one.
    pub max_deltas: usize,
    /// Deltas listing more users than the base's `1 / merge_ratio`...
    pub merge_ratio: u64,
    /// ...and more than this many are folded into the base.
    pub merge_min_users: u64,
    /// Events folded per hand-off to a blocking thread (the users first met in a run are read
    /// from the previous checkpoint together).
    pub fold_run_events: usize,
    /// A user's sealed change-id filter blocks go to a filter run in whole multiples of this
    /// many (64: a bit-sliced group of 2,048 seqs). Its part row keeps the rest, at most
    /// `run_blocks` blocks of 128 bytes; the user is written to a run, and each cold load of
    /// it reads a run's page, once per `32 * run_blocks` events rather than once per
    /// checkpoint that sealed a block (with 1, every run of `make sustained`'s steady load held
    /// every user: ~2.5 more GETs a cold load, billed per request). The cost: a changed user's
    /// part row rewrites up to `run_blocks` blocks (8 KiB at 64) with its state.
    pub run_blocks: usize,
}

impl Default for PartsPolicy {
    fn default() -> Self {
        Self {
            part_users: 4096,
            max_deltas: 16,
            merge_ratio: 8,
            merge_min_users: 1024,
            fold_run_events: 4096,
            run_blocks: 64,
        }
    }
}

/// What writing one checkpoint did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Users in the state.
    pub users: u64,
    /// Users whose state was read and written again (those in the segments since the previous
    /// checkpoint; all of them when it was not a manifest).
    pub changed_users: u64,
    /// Parts written (the delta, and any a merge wrote).
    pub parts_written: u64,
    /// Bytes of parts and manifest written.
    pub bytes_written: u64,
    /// Parts the manifest names without writing them.
    pub parts_kept: u64,
    /// What was merged: `"deltas"`, `"base"`, or nothing.
    pub merged: Option<&'static str>,
    /// Bytes of the filter run written (the sealed change-id blocks; in `bytes_written` too).
    pub filter_run_bytes: u64,
    /// Filter runs merged into the one written.
    pub filter_runs_merged: u64,
}

/// Builds and writes (create-only) the checkpoint of `shard` after segment `n` with the default
/// [`PartsPolicy`]. Returns its user count. Another writer having written the same checkpoint
/// is success: both are folds of the same log.
pub async fn write_checkpoint(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    prev: Option<u64>,
    n: u64,
    concurrency: usize,
) -> Result<u64, LogError> {
    let policy = PartsPolicy::default();
    Ok(
        write_checkpoint_with(store, shard, prev, n, concurrency, &policy)
            .await?
            .users,
    )
}

/// [`write_checkpoint`] with a policy, saying what it did.
pub async fn write_checkpoint_with(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    prev: Option<u64>,
    n: u64,
    concurrency: usize,
    policy: &PartsPolicy,
) -> Result<CheckpointReport, LogError> {
    write_checkpoint_sharing(store, shard, prev, n, concurrency, policy, None).await
}

/// [`write_checkpoint_with`] reading parts' pages through `footers` (a view's, so that the
/// footers its loads read serve the checkpoint, and the other way round).
pub async fn write_checkpoint_sharing(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    prev: Option<u64>,
    n: u64,
    concurrency: usize,
    policy: &PartsPolicy,
    footers: Option<Arc<Footers>>,
) -> Result<CheckpointReport, LogError> {
    // The previous checkpoint may be gone (another process's retention deleted it): then the
    // newest one left at or below `n`, or the log from its start.
    let prev = match prev {
        Some(c) if !checkpoint_exists(store.as_ref(), shard, c).await? => {
            let left = list_checkpoints(store.as_ref(), shard)
                .await?
                .into_iter()
                .rfind(|x| *x <= n);
            warn!(shard, checkpoint = c, instead = ?left, "the previous checkpoint is gone; folding from another");
            left
        }
        other => other,
    };
    let from = |prev| write_from(store, shard, prev, n, concurrency, policy, footers.clone());
    match from(prev).await {
        // The previous checkpoint is there but unusable (a part it names is missing, or does
        // not decode): it is derived, so this one is folded from the log's start instead.
        Err(LogError::Corrupt {
            segment, detail, ..
        }) if Some(segment) == prev => {
            warn!(shard, checkpoint = segment, %detail, "the previous checkpoint is unusable; folding from the first segment");
            from(None).await
        }
        other => other,
    }
}

/// Writes checkpoint `n` from checkpoint `prev` (`None`: from the first segment).
async fn write_from(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    prev: Option<u64>,
    n: u64,
    concurrency: usize,
    policy: &PartsPolicy,
    footers: Option<Arc<Footers>>,
) -> Result<CheckpointReport, LogError> {
    let base = match prev {
        Some(c) => Some(open_checkpoint(store.as_ref(), shard, c).await?),
        None => None,
    };
    let mut w = Writer {
        store: store.clone(),
        shard,
        n,
        report: CheckpointReport::default(),
        policy: *policy,
        footers,
        concurrency,
        sealed: Vec::new(),
        prev,
    };
    let mut manifest = match base {
        Some(Checkpoint::Parts(m)) => {
            // The new manifest names the previous one's parts again: each must be there.
            w.parts_of_previous_are_there(&m).await?;
            let (changed, new_users, whole) = w.fold_changed(&m, concurrency).await?;
            w.delta(&m, changed, new_users, whole).await?
        }
        whole => {
            let users = match &whole {
                Some(ck) => ck.all(store.as_ref()).await?,
                None => IdMap::default(),
            };
            let users = w
                .fold(users, whole.map(|c| c.segment()), concurrency)
                .await?;
            w.report.changed_users = users.len() as u64;
            w.all_as_base(users).await?
        }
    };
    w.put_sealed(&mut manifest).await?;
    w.report.users = manifest.users;
    w.report.parts_kept = manifest.parts().filter(|p| p.written_by != n).count() as u64;
    let bytes = keepsake_segment::encode_manifest(&manifest)
        .map_err(|e| LogError::corrupt(shard, n, format!("encode checkpoint manifest: {e}")))?;
    w.report.bytes_written += bytes.len() as u64;
    match store
        .put_opts(
            &keys::manifest(shard, n),
            object_store::PutPayload::from(bytes),
            keepsake_store::create_only(),
        )
        .await
    {
        Ok(_) => {
            w.check_parts_remain(&manifest, true).await?;
            if let Some(f) = &w.footers {
                // The parts the new manifest no longer names (merged deltas, rewritten base
                // parts) are read by nobody after it: their footers go.
                f.retain_named(&manifest);
            }
        }
        // Another writer's fold of the same log, over its own parts: used only if they are
        // all there (a writer that could not take back a manifest naming a lost part leaves it).
        Err(object_store::Error::AlreadyExists { .. }) => {
            if let Checkpoint::Parts(theirs) = open_checkpoint(store.as_ref(), shard, n).await? {
                w.check_parts_remain(&theirs, false).await?;
            }
        }
        Err(e) => {
            return Err(LogError::Store {
                context: format!("write checkpoint {n} of shard {shard}"),
                source: e,
            });
        }
    }
    info!(
        shard,
        segment = n,
        users = w.report.users,
        changed = w.report.changed_users,
        parts_written = w.report.parts_written,
        parts_kept = w.report.parts_kept,
        bytes = w.report.bytes_written,
        merged = w.report.merged,
        "checkpoint manifest written"
    );
    Ok(w.report)
}

struct Writer {
    store: Arc<dyn ObjectStore>,
    shard: u32,
    n: u64,
    report: CheckpointReport,
    policy: PartsPolicy,
    footers: Option<Arc<Footers>>,
    /// Reads (and HEADs) at once.
    concurrency: usize,
    /// The sealed filter blocks split off the states written to parts, for the filter run.
    sealed: Vec<(UserId, ChangeFilter)>,
    /// The checkpoint folded from, whose runs a merge of runs reads.
    prev: Option<u64>,
}

impl Writer {
    /// Folds segments `from + 1..=n` into `users` (on blocking threads, in runs), checking it
    /// reaches `n` one segment after another. With `prior`, each user met for the first time is
    /// read first (`prior` gives its state before the run; it is told how many of the fold's
    /// segments are read, and of how many).
    async fn fold_runs<F, Fut>(
        &self,
        mut users: IdMap<UserId, UserState>,
        from: Option<u64>,
        concurrency: usize,
        mut prior: F,
    ) -> Result<IdMap<UserId, UserState>, LogError>
    where
        F: FnMut(Vec<UserId>, (u64, u64)) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(UserId, UserState)>, LogError>>,
    {
        let (shard, n) = (self.shard, self.n);
        let mut segments = scan_shard_upto(
            self.store.clone(),
            shard,
            from.map_or(1, |c| c + 1),
            n,
            concurrency,
        )
        .await?;
        let mut run: Vec<keepsake_segment::Segment> = Vec::new();
        let mut run_events = 0;
        // The last segment folded: the checkpoint is written only if the fold reached `n`, one
        // segment after another. A listing that missed the newest segments would otherwise give
        // a checkpoint "after n" without them, and recovery from it would drop acknowledged
        // events.
        let mut folded = from.unwrap_or(0);
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
            if run_events >= self.policy.fold_run_events.max(1) || (done && !run.is_empty()) {
                let folding = std::mem::take(&mut run);
                run_events = 0;
                let mut unseen: Vec<UserId> = folding
                    .iter()
                    .flat_map(|s| s.events.iter().map(|e| e.user_id))
                    .filter(|u| !users.contains_key(u))
                    .collect();
                unseen.sort_unstable();
                unseen.dedup();
                if !unseen.is_empty() {
                    let start = from.unwrap_or(0);
                    let progress = (folded - start, n.saturating_sub(start));
                    users.extend(prior(unseen, progress).await?);
                }
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
        Ok(users)
    }

    /// The whole state after `n`: `users` (the state after `from`) and the segments since.
    async fn fold(
        &self,
        users: IdMap<UserId, UserState>,
        from: Option<u64>,
        concurrency: usize,
    ) -> Result<IdMap<UserId, UserState>, LogError> {
        // Every user is in `users` already or new.
        let none = |_, _| async { Ok(Vec::new()) };
        self.fold_runs(users, from, concurrency, none).await
    }

    /// The state after `n` of the users in the segments after manifest `m`, and how many of
    /// them `m` did not hold.
    async fn fold_changed(
        &self,
        m: &Arc<Manifest>,
        concurrency: usize,
    ) -> Result<(IdMap<UserId, UserState>, u64, WholeParts), LogError> {
        let ck = Checkpoint::Parts(m.clone());
        let new_users = std::sync::atomic::AtomicU64::new(0);
        let whole = tokio::sync::Mutex::new(WholeParts::sharing(self.footers.clone()));
        let prior = |unseen: Vec<UserId>, (done, total): (u64, u64)| {
            let (ck, store, new_users, whole) = (&ck, &self.store, &new_users, &whole);
            async move {
                let mut whole = whole.lock().await;
                whole.progress(done, total);
                let states = ck
                    .users(store.clone(), unseen, concurrency, &mut whole)
                    .await?;
                let new = states.iter().filter(|(_, s)| s.last_seq() == 0).count();
                new_users.fetch_add(new as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(states)
            }
        };
        let changed = self
            .fold_runs(IdMap::default(), Some(m.segment), concurrency, prior)
            .await?;
        Ok((changed, new_users.into_inner(), whole.into_inner()))
    }

    /// Manifest `m` with `changed` (`new_users` of them new to the shard) in it: as one more
    /// delta, or merged with the deltas when the policy says so (module docs). A merge writes
    /// the changed users only in its result, never first as a delta of their own.
    async fn delta(
        &mut self,
        m: &Manifest,
        changed: IdMap<UserId, UserState>,
        new_users: u64,
        mut whole: WholeParts,
    ) -> Result<Manifest, LogError> {
        self.report.changed_users = changed.len() as u64;
        let mut next = Manifest {
            shard: self.shard,
            segment: self.n,
            users: m.users + new_users,
            base: m.base.clone(),
            deltas: m.deltas.clone(),
            filter_runs: m.filter_runs.clone(),
        };
        if changed.is_empty() {
            return Ok(next);
        }
        let base_users: u64 = m.base.iter().map(|b| b.part.users).sum();
        let p = self.policy;
        let listed = m.delta_users() + changed.len() as u64;
        if listed > p.merge_min_users && listed > base_users / p.merge_ratio.max(1) {
            self.report.merged = Some("base");
            let mut overlay = self.deltas_state(m, m.deltas.len()).await?;
            overlay.extend(changed);
            next.base = self.merge_base(m, overlay, &mut whole).await?;
            next.deltas.clear();
            return Ok(next);
        }
        // Size-tiered, like a binary counter: the newest deltas join the new one while each is
        // no larger than what is merged so far, so deltas double in size from newest to oldest
        // and a user's state is rewritten about log2(deltas' users / changed users) times
        // before the base merge; and as many more as keep the deltas within `max_deltas`.
        let mut k = 0;
        let mut merged = changed.len();
        while k < m.deltas.len()
            && (m.deltas[k].users.len() <= merged || m.deltas.len() - k + 1 > p.max_deltas)
        {
            merged += m.deltas[k].users.len();
            k += 1;
        }
        let users = if k > 0 {
            self.report.merged = Some("deltas");
            next.deltas.drain(..k);
            let mut overlay = self.deltas_state(m, k).await?;
            overlay.extend(changed);
            overlay
        } else {
            changed
        };
        let users = sorted_users(users);
        let ids: Vec<UserId> = users.iter().map(|(u, _)| *u).collect();
        let part = self.put_part(users).await?;
        next.deltas.insert(0, DeltaPart { part, users: ids });
        Ok(next)
    }

    /// A manifest of base parts only, holding `users`.
    async fn all_as_base(&mut self, users: IdMap<UserId, UserState>) -> Result<Manifest, LogError> {
        let count = users.len() as u64;
        let base = self.base_parts(NIL_USER, sorted_users(users)).await?;
        Ok(Manifest {
            shard: self.shard,
            segment: self.n,
            users: count,
            base,
            deltas: Vec::new(),
            filter_runs: Vec::new(),
        })
    }

    /// Base parts holding `sorted` (ascending), the first from `from`, split at `part_users`.
    /// The states are moved into the parts' encoders, never copied: a checkpoint where every
    /// user changed holds each state once.
    async fn base_parts(
        &mut self,
        from: UserId,
        sorted: Vec<(UserId, UserState)>,
    ) -> Result<Vec<BasePart>, LogError> {
        let size = self.policy.part_users.max(1);
        let mut out = Vec::new();
        let mut rest = sorted;
        while !rest.is_empty() {
            let after = rest.split_off(size.min(rest.len()));
            let chunk = std::mem::replace(&mut rest, after);
            let from = if out.is_empty() { from } else { chunk[0].0 };
            let part = self.put_part(chunk).await?;
            out.push(BasePart { from, part });
        }
        Ok(out)
    }

    /// Writes one part (create-only, named by its digest) of `users` (ascending).
    /// Each state's sealed filter blocks not yet in a run are split off for this checkpoint's
    /// run ([`Writer::put_sealed`]), `run_blocks` at a time: the part holds the blocks after.
    async fn put_part(&mut self, users: Vec<(UserId, UserState)>) -> Result<PartRef, LogError> {
        let (shard, n) = (self.shard, self.n);
        let count = users.len() as u64;
        let unit = self.policy.run_blocks;
        let (bytes, sealed) = tokio::task::spawn_blocking(move || {
            let mut users = users;
            let sealed: Vec<(UserId, ChangeFilter)> = users
                .iter_mut()
                .filter_map(|(u, s)| s.split_sealed(unit).map(|f| (*u, f)))
                .collect();
            let meta = keepsake_segment::CheckpointMeta {
                // Version 6: change ids as a filter, its sealed blocks in runs, written once.
                format_version: keepsake_segment::CHECKPOINT_VERSION,
                shard,
                segment: n,
                user_count: users.len() as u64,
            };
            keepsake_segment::encode_checkpoint(users.iter().map(|(u, s)| (u, s)), &meta)
                .map(|bytes| (bytes, sealed))
        })
        .await
        .map_err(|e| LogError::corrupt(shard, n, e))?
        .map_err(|e| LogError::corrupt(shard, n, format!("encode checkpoint part: {e}")))?;
        self.sealed.extend(sealed);
        self.put_named(bytes, count, "a part").await
    }

    /// Writes `bytes` (a part or a filter run of `rows` users), create-only, at the part key
    /// of this checkpoint and their digest, and counts it.
    async fn put_named(
        &mut self,
        bytes: bytes::Bytes,
        rows: u64,
        what: &str,
    ) -> Result<PartRef, LogError> {
        let (shard, n) = (self.shard, self.n);
        let part = PartRef {
            written_by: n,
            digest: keepsake_segment::part_digest(&bytes),
            users: rows,
            bytes: bytes.len() as u64,
        };
        match self
            .store
            .put_opts(
                &keys::part(shard, n, part.digest),
                object_store::PutPayload::from(bytes),
                keepsake_store::create_only(),
            )
            .await
        {
            // The same name is the same bytes.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => {
                return Err(LogError::Store {
                    context: format!("write {what} of checkpoint {n} of shard {shard}"),
                    source: e,
                });
            }
        }
        self.report.parts_written += 1;
        self.report.bytes_written += part.bytes;
        Ok(part)
    }

    /// Writes the sealed blocks split off the parts' states as one run, named first in
    /// `manifest`'s runs. Runs are merged size-tiered, like deltas: the newest runs join the
    /// new one while each has no more rows than what is merged so far (and as many more as keep
    /// them within `max_deltas`), so a block is rewritten about log2 times in the log's life.
    async fn put_sealed(&mut self, manifest: &mut Manifest) -> Result<(), LogError> {
        let (shard, n) = (self.shard, self.n);
        let rows = std::mem::take(&mut self.sealed);
        if rows.is_empty() {
            return Ok(());
        }
        let runs = &manifest.filter_runs;
        let mut k = 0;
        let mut merged = rows.len() as u64;
        while k < runs.len()
            && (runs[k].users <= merged || runs.len() - k + 1 > self.policy.max_deltas)
        {
            merged += runs[k].users;
            k += 1;
        }
        let mut by_user: std::collections::BTreeMap<UserId, Vec<ChangeFilter>> =
            std::collections::BTreeMap::new();
        for (u, f) in rows {
            by_user.entry(u).or_default().push(f);
        }
        // The runs merged are the previous checkpoint's: one that is broken makes that
        // checkpoint unusable (so this one is folded from the log's start instead, as for a
        // broken part), not every checkpoint after it fail.
        // (A reader of a run looks at its manifest's shard and segment only.)
        let prev = Manifest {
            shard,
            segment: self.prev.unwrap_or(manifest.segment),
            users: 0,
            base: Vec::new(),
            deltas: Vec::new(),
            filter_runs: Vec::new(),
        };
        for run in &runs[..k] {
            for (u, f) in read_filter_run(self.store.as_ref(), &prev, run).await? {
                by_user.entry(u).or_default().push(f);
            }
        }
        let mut joined = Vec::with_capacity(by_user.len());
        for (u, rows) in by_user {
            let f = ChangeFilter::join(rows).ok_or_else(|| {
                LogError::corrupt(
                    shard,
                    prev.segment,
                    format!("the filter runs of user {u} do not join end to start"),
                )
            })?;
            joined.push((u, f));
        }
        let count = joined.len() as u64;
        let bytes = tokio::task::spawn_blocking(move || {
            keepsake_segment::encode_filter_run(&joined, shard, n)
        })
        .await
        .map_err(|e| LogError::corrupt(shard, n, e))?
        .map_err(|e| LogError::corrupt(shard, n, format!("encode filter run: {e}")))?;
        let run = self.put_named(bytes, count, "the filter run").await?;
        self.report.filter_run_bytes += run.bytes;
        self.report.filter_runs_merged += k as u64;
        manifest.filter_runs.drain(..k);
        manifest.filter_runs.insert(0, run);
        Ok(())
    }

    /// The first part `m` names that is not in the store, if any.
    async fn first_missing(&self, m: &Manifest) -> Result<Option<PartRef>, LogError> {
        // HEADs `concurrency` at a time, in order: a shard of a million users names ~61 parts,
        // and one after another they cost a round trip each (on S3, tens of milliseconds).
        let heads = m.parts().map(|p| {
            let (store, p, path) = (
                self.store.clone(),
                *p,
                keys::part(self.shard, p.written_by, p.digest),
            );
            async move { (p, store.head(&path).await) }
        });
        let mut heads =
            futures::stream::iter(heads.collect::<Vec<_>>()).buffered(self.concurrency.max(1));
        while let Some((p, head)) = heads.next().await {
            match head {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(Some(p)),
                Err(e) => {
                    return Err(LogError::Store {
                        context: format!("check the parts of checkpoint {}", m.segment),
                        source: e,
                    });
                }
            }
        }
        Ok(None)
    }

    /// Every part of the previous manifest `m` is in the store; one missing makes it unusable
    /// ([`LogError::Corrupt`] of it: the caller folds from the first segment instead).
    async fn parts_of_previous_are_there(&self, m: &Manifest) -> Result<(), LogError> {
        match self.first_missing(m).await? {
            None => Ok(()),
            Some(p) => Err(LogError::corrupt(
                self.shard,
                m.segment,
                format!("part {:032x} it names is missing", p.digest),
            )),
        }
    }

    /// After the manifest is written: every part it names is still there (those written now,
    /// and those named again). Retention deletes a part only after seeing it unnamed by every
    /// kept manifest twice, `orphan_grace` apart; a checkpoint that ran longer than that from
    /// opening its previous manifest may name one it deleted, and then its manifest is taken
    /// back (`ours`: it is derived) rather than left naming a missing part.
    async fn check_parts_remain(&self, m: &Manifest, ours: bool) -> Result<(), LogError> {
        let Some(p) = self.first_missing(m).await? else {
            return Ok(());
        };
        let taken_back = if !ours {
            "written by another process"
        } else {
            match self.store.delete(&keys::manifest(self.shard, self.n)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => "taken back",
                Err(e) => {
                    warn!(shard = self.shard, checkpoint = self.n, error = %e, "taking back a manifest that names a missing part failed; loads fall back to the log");
                    "not taken back"
                }
            }
        };
        Err(LogError::Unavailable {
            shard: self.shard,
            reason: format!(
                "checkpoint {}: part {:032x} it names is missing ({taken_back})",
                self.n, p.digest
            ),
        })
    }

    /// The users the `newest` deltas of `m` hold, each in its newest state.
    async fn deltas_state(
        &self,
        m: &Manifest,
        newest: usize,
    ) -> Result<IdMap<UserId, UserState>, LogError> {
        let mut users: IdMap<UserId, UserState> = IdMap::default();
        for d in m.deltas[..newest.min(m.deltas.len())].iter().rev() {
            users.extend(read_delta_part(self.store.as_ref(), m, d).await?);
        }
        Ok(users)
    }

    /// `m`'s base with `overlay` (the deltas' users and the changed ones, newest state) folded
    /// in: each base part whose range holds one of them is read, overlaid and written again
    /// (split if it grew past `part_users`); the others are named again.
    async fn merge_base(
        &mut self,
        m: &Manifest,
        mut overlay: IdMap<UserId, UserState>,
        whole: &mut WholeParts,
    ) -> Result<Vec<BasePart>, LogError> {
        let mut changed: Vec<UserId> = overlay.keys().copied().collect();
        changed.sort_unstable();
        if m.base.is_empty() {
            return self.base_parts(NIL_USER, sorted_users(overlay)).await;
        }
        let mut base = Vec::new();
        for (i, b) in m.base.iter().enumerate() {
            let to = m.base.get(i + 1).map(|next| next.from);
            let lo = changed.partition_point(|u| *u < b.from);
            let hi = to.map_or(changed.len(), |t| changed.partition_point(|u| *u < t));
            if lo == hi {
                base.push(*b);
                continue;
            }
            // Read whole for the fold already: its users left are the unchanged ones, and the
            // changed ones are all in the overlay.
            let mut users = match whole.take(&b.part) {
                Some(left) => left,
                None => read_base_part(self.store.as_ref(), m, i).await?,
            };
            for u in &changed[lo..hi] {
                if let Some(s) = overlay.remove(u) {
                    users.insert(*u, s);
                }
            }
            base.extend(self.base_parts(b.from, sorted_users(users)).await?);
        }
        Ok(base)
    }
}

/// `users` in ascending order of id, moved out of the map.
fn sorted_users(users: impl IntoIterator<Item = (UserId, UserState)>) -> Vec<(UserId, UserState)> {
    let mut sorted: Vec<(UserId, UserState)> = users.into_iter().collect();
    sorted.sort_unstable_by_key(|(u, _)| *u);
    sorted
}
