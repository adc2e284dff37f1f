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
//! - The fold holds at most about `fold_bytes` of states (and parts read whole for later
//!   asks), plus one run of segments' users: past it, a pass keeps the users below a cut (the
//!   start of a base part: each base part is met by exactly one pass, whole) and a later pass
//!   from the cut reads the segments again for the others. Every pass writes its users before
//!   the next starts: base parts as merged, a delta into one part's encoder (only its encoded
//!   bytes stay). The plan (delta, merge of deltas, merge into the base) is made once, from
//!   the users the first pass met in all the segments, so it is the one a single pass makes.
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

use crate::budget::{Holding, UpkeepMemory, ViewBudget};
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
    /// The states a checkpoint's fold holds at once, in bytes ([`UserState::approx_bytes`]),
    /// with the parts it read whole for later asks. Past it, a pass keeps the users below a
    /// cut (the start of a base part) and folds the rest in later passes, each reading the
    /// segments since the previous checkpoint again: memory for reads. 512 MiB: a checkpoint
    /// after a round in which every user of a 25,000-user shard changed (`make sustained`'s
    /// shards) counts ~300 MiB and is folded in one pass; at 128 MiB it took 5 passes and
    /// twice the time (`upkeep_memory` bench), and under `make sustained` 2.5-4 times the
    /// checkpoint time (run 31). What it bounds is a shard whose changed users' states are
    /// larger still: at a million users, or a first checkpoint of a large import.
    pub fold_bytes: usize,
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
            fold_bytes: 512 << 20,
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
    /// Passes of the fold over the segments since the previous checkpoint (more than one when
    /// the states passed [`PartsPolicy::fold_bytes`]).
    pub fold_passes: u64,
    /// The states (and parts read whole for later asks) the fold held at its peak, approximate
    /// bytes: at most about `fold_bytes` and one run of segments' users.
    pub fold_peak_bytes: u64,
    /// Times the fold kept fewer users than its budget allows because the views were at
    /// their floors and still asked to give way ([`ViewBudget::past_the_floors`]).
    pub fold_gave_way: u64,
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
    write_checkpoint_sharing(
        store,
        shard,
        prev,
        n,
        concurrency,
        policy,
        Sharing::default(),
    )
    .await
}

/// What a checkpoint shares with the views of a running log (nothing: a checkpoint written
/// alone).
#[derive(Clone, Debug, Default)]
pub struct Sharing {
    /// The shard view's part footers: the footers its loads read serve the checkpoint, and the
    /// other way round.
    pub footers: Option<Arc<Footers>>,
    /// The views' budget: the fold publishes the states it holds to its upkeep memory, so
    /// that the views give way to them, and gives way itself past the views' floors
    /// ([`crate::budget`]).
    pub budget: Option<ViewBudget>,
}

/// [`write_checkpoint_with`] sharing footers and memory with a running log's views.
pub async fn write_checkpoint_sharing(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    prev: Option<u64>,
    n: u64,
    concurrency: usize,
    policy: &PartsPolicy,
    sharing: Sharing,
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
    let from = |prev| write_from(store, shard, prev, n, concurrency, policy, sharing.clone());
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
    sharing: Sharing,
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
        footers: sharing.footers,
        holding: sharing
            .budget
            .as_ref()
            .map_or_else(UpkeepMemory::default, |b| b.upkeep().clone())
            .hold(),
        room: sharing.budget.unwrap_or_default(),
        concurrency,
        sealed: Vec::new(),
        prev,
    };
    let mut manifest = match base {
        Some(Checkpoint::Parts(m)) => {
            // The new manifest names the previous one's parts again: each must be there.
            w.parts_of_previous_are_there(&m).await?;
            w.over_manifest(&m).await?
        }
        whole => {
            let users = match &whole {
                Some(ck) => ck.all(store.as_ref()).await?,
                None => IdMap::default(),
            };
            w.all_as_base(users, whole.map(|c| c.segment())).await?
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
        passes = w.report.fold_passes,
        gave_way = w.report.fold_gave_way,
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
    /// What the fold holds, published for the views ([`crate::budget`]).
    holding: Holding,
    /// The views' budget, past whose floors the fold gives way.
    room: ViewBudget,
    /// Reads (and HEADs) at once.
    concurrency: usize,
    /// The sealed filter blocks split off the states written to parts, for the filter run.
    sealed: Vec<(UserId, ChangeFilter)>,
    /// The checkpoint folded from, whose runs a merge of runs reads.
    prev: Option<u64>,
}

impl Writer {
    /// One pass of the fold: segments `from + 1..=n` folded into `users` (on blocking threads,
    /// in runs of `fold_run_events`), checking it reaches `n` one segment after another; only
    /// the users from `lo` on are folded. With `prior`, each user met for the first time is
    /// read from that checkpoint first. When the states held (and the parts read whole for
    /// later asks) pass `budget` bytes, the pass stops taking the upper users: it keeps those
    /// below a cut (the start of one of `cuts`, ascending, when given; else the middle user),
    /// and a later pass from the cut folds the others. With `count_met`, the users of every
    /// segment are counted, in and out of the range.
    #[allow(clippy::too_many_arguments)]
    async fn fold_pass(
        &self,
        mut users: IdMap<UserId, UserState>,
        from: Option<u64>,
        prior: Option<&Checkpoint>,
        lo: Option<UserId>,
        cuts: &[UserId],
        budget: usize,
        count_met: bool,
    ) -> Result<Pass, LogError> {
        let (shard, n) = (self.shard, self.n);
        let mut range = Range { lo, hi: None };
        let mut whole =
            WholeParts::sharing(self.footers.clone()).publishing(self.holding.another());
        if budget < usize::MAX {
            whole = whole.capped(budget);
        }
        let mut met: std::collections::HashSet<UserId> = std::collections::HashSet::new();
        let mut new: Vec<UserId> = Vec::new();
        let mut held: usize = users.values().map(UserState::approx_bytes).sum();
        let mut peak = 0u64;
        let mut gave_way = 0u64;
        let mut segments = scan_shard_upto(
            self.store.clone(),
            shard,
            from.map_or(1, |c| c + 1),
            n,
            self.concurrency,
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
                let events = || folding.iter().flat_map(|s| s.events.iter());
                if count_met {
                    met.extend(events().map(|e| e.user_id));
                }
                let mut unseen: Vec<UserId> = events()
                    .map(|e| e.user_id)
                    .filter(|u| range.holds(u) && !users.contains_key(u))
                    .collect();
                unseen.sort_unstable();
                unseen.dedup();
                if let Some(ck) = prior.filter(|_| !unseen.is_empty()) {
                    let start = from.unwrap_or(0);
                    whole.progress(folded - start, n.saturating_sub(start));
                    let states = ck
                        .users(self.store.clone(), unseen, self.concurrency, &mut whole)
                        .await?;
                    held += take_in(states, &mut users, &mut new);
                    // The states given out are the fold's now, no longer the parts'.
                    self.holding.set(held);
                    whole.publish();
                    // Users of parts not read for the budget: the pass stops before them, at
                    // the start of the base part holding the first; in the first base part of
                    // the range (no cut above its start) they are read all the same.
                    let deferred = whole.take_deferred();
                    if let Some(first) = deferred.iter().min().copied() {
                        match cut_at_or_below(first, range, cuts) {
                            Some(c) => held = stop_at(c, &mut users, &mut range),
                            None => {
                                let mut uncapped = WholeParts::sharing(self.footers.clone())
                                    .publishing(self.holding.another());
                                let first_part = cuts.iter().find(|c| range.inside(c)).copied();
                                let (now, later): (Vec<UserId>, Vec<UserId>) = deferred
                                    .into_iter()
                                    .partition(|u| first_part.is_none_or(|c| *u < c));
                                let states = ck
                                    .users(self.store.clone(), now, self.concurrency, &mut uncapped)
                                    .await?;
                                held += take_in(states, &mut users, &mut new);
                                self.holding.set(held);
                                uncapped.publish();
                                if let (Some(c), false) = (first_part, later.is_empty()) {
                                    held = stop_at(c, &mut users, &mut range);
                                }
                            }
                        }
                    }
                    // A part read whole holds users of other passes' ranges too.
                    if range != Range::default() {
                        whole.retain_range(range.lo, range.hi);
                    }
                }
                let (folded_users, grown) = tokio::task::spawn_blocking(move || {
                    let mut grown: isize = 0;
                    for seg in &folding {
                        for e in seg.events.iter().filter(|e| range.holds(&e.user_id)) {
                            let state = users.entry(e.user_id).or_default();
                            let before = state.approx_bytes();
                            keepsake_model::apply(state, e)
                                .map_err(|err| LogError::corrupt(shard, seg.meta.segment, err))?;
                            grown += state.approx_bytes() as isize - before as isize;
                        }
                    }
                    Ok::<_, LogError>((users, grown))
                })
                .await
                .map_err(|e| LogError::Unavailable {
                    shard,
                    reason: format!("folding segments into checkpoint {n} failed: {e}"),
                })??;
                users = folded_users;
                held = held.saturating_add_signed(grown);
                let mut holding = held.saturating_add(whole.held_bytes());
                peak = peak.max(holding as u64);
                // Past the budget: the lower users stay, the others wait for a later pass.
                while holding > budget {
                    let Some(c) = cut(&users, range, cuts) else {
                        break;
                    };
                    held = stop_at(c, &mut users, &mut range);
                    whole.retain_range(range.lo, range.hi);
                    holding = held.saturating_add(whole.held_bytes());
                }
                // The fold's states here, the parts read whole by `whole`'s own holder.
                self.holding.set(held);
                whole.publish();
                // The views at their floors and more still asked of them (by upkeep and the
                // process's resident excess): the fold gives way too, down to a quarter of its
                // budget; the upper users wait for a later pass, as past the budget.
                while self.room.past_the_floors() > 0 && holding > budget / 4 {
                    let Some(c) = cut(&users, range, cuts) else {
                        break;
                    };
                    let had = users.len();
                    held = stop_at(c, &mut users, &mut range);
                    whole.retain_range(range.lo, range.hi);
                    holding = held.saturating_add(whole.held_bytes());
                    self.holding.set(held);
                    whole.publish();
                    gave_way += u64::from(users.len() < had);
                }
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
        let new_users = new.iter().filter(|u| range.holds(u)).count() as u64;
        Ok(Pass {
            peak,
            gave_way,
            states: users,
            range,
            met: met.len() as u64,
            new_users,
            whole,
        })
    }

    /// The checkpoint after manifest `m`: the users in the segments since (read from `m`,
    /// folded) as one more delta, or merged with the deltas or into the base when the policy
    /// says so (module docs), a range of users at a time when their states pass the policy's
    /// `fold_bytes`. A merge writes the changed users only in its result, never first as a
    /// delta of their own.
    async fn over_manifest(&mut self, m: &Arc<Manifest>) -> Result<Manifest, LogError> {
        let ck = Checkpoint::Parts(m.clone());
        // A pass ends at the start of a base part, so that each base part a merge rewrites is
        // met by one pass, whole.
        let cuts: Vec<UserId> = m.base.iter().skip(1).map(|b| b.from).collect();
        let mut next = Manifest {
            shard: self.shard,
            segment: self.n,
            users: m.users,
            base: Vec::new(),
            deltas: m.deltas.clone(),
            filter_runs: m.filter_runs.clone(),
        };
        let mut plan = None;
        let mut delta: Option<(keepsake_segment::CheckpointEncoder, Vec<UserId>)> = None;
        let mut lo = None;
        loop {
            let pass = self
                .fold_pass(
                    IdMap::default(),
                    Some(m.segment),
                    Some(&ck),
                    lo,
                    &cuts,
                    self.policy.fold_bytes,
                    plan.is_none(),
                )
                .await?;
            self.report.fold_passes += 1;
            self.report.fold_peak_bytes = self.report.fold_peak_bytes.max(pass.peak);
            self.report.fold_gave_way += pass.gave_way;
            next.users += pass.new_users;
            let plan = match plan {
                Some(p) => p,
                None => {
                    self.report.changed_users = pass.met;
                    if pass.met == 0 {
                        next.base = m.base.clone();
                        return Ok(next);
                    }
                    *plan.insert(self.plan(m, pass.met))
                }
            };
            let range = pass.range;
            let mut whole = pass.whole;
            let k = match plan {
                Plan::Base => m.deltas.len(),
                Plan::Deltas(k) => k,
            };
            let mut users = self.deltas_state(m, k, range).await?;
            users.extend(pass.states);
            match plan {
                Plan::Base => {
                    let parts = self.merge_base(m, users, &mut whole, range).await?;
                    next.base.extend(parts);
                }
                Plan::Deltas(_) => {
                    let (encoder, ids) = match delta.take() {
                        Some(d) => d,
                        None => (self.encoder()?, Vec::new()),
                    };
                    delta = Some(self.encode(encoder, ids, sorted_users(users)).await?);
                }
            }
            match range.hi {
                Some(hi) => lo = Some(hi),
                None => break,
            }
        }
        match plan {
            Some(Plan::Base) => next.deltas.clear(),
            Some(Plan::Deltas(k)) => {
                next.base = m.base.clone();
                next.deltas.drain(..k);
                if let Some((encoder, ids)) = delta {
                    let bytes = encoder.finish().map_err(|e| {
                        LogError::corrupt(
                            self.shard,
                            self.n,
                            format!("encode checkpoint part: {e}"),
                        )
                    })?;
                    let part = self.put_named(bytes, ids.len() as u64, "a part").await?;
                    next.deltas.insert(0, DeltaPart { part, users: ids });
                }
            }
            None => {}
        }
        Ok(next)
    }

    /// How the checkpoint after `m` writes its `changed` users: into the base when the deltas
    /// would list more than `1 / merge_ratio` of it; else as a delta, merged with the newest
    /// deltas size-tiered, like a binary counter: they join while each is no larger than what
    /// is merged so far, so deltas double in size from newest to oldest and a user's state is
    /// rewritten about log2(deltas' users / changed users) times before the base merge; and as
    /// many more as keep the deltas within `max_deltas`.
    fn plan(&mut self, m: &Manifest, changed: u64) -> Plan {
        let base_users: u64 = m.base.iter().map(|b| b.part.users).sum();
        let p = self.policy;
        let listed = m.delta_users() + changed;
        if listed > p.merge_min_users && listed > base_users / p.merge_ratio.max(1) {
            self.report.merged = Some("base");
            return Plan::Base;
        }
        let mut k = 0;
        let mut merged = changed as usize;
        while k < m.deltas.len()
            && (m.deltas[k].users.len() <= merged || m.deltas.len() - k + 1 > p.max_deltas)
        {
            merged += m.deltas[k].users.len();
            k += 1;
        }
        if k > 0 {
            self.report.merged = Some("deltas");
        }
        Plan::Deltas(k)
    }

    /// A manifest of base parts only: `users` (the state after `from`: a whole checkpoint's,
    /// or nothing) and the segments since, folded a range of users at a time when their states
    /// pass `fold_bytes` (not when `users` is given: it holds every user already).
    async fn all_as_base(
        &mut self,
        users: IdMap<UserId, UserState>,
        from: Option<u64>,
    ) -> Result<Manifest, LogError> {
        let budget = if users.is_empty() {
            self.policy.fold_bytes
        } else {
            usize::MAX
        };
        let mut users = Some(users);
        let (mut base, mut count, mut lo) = (Vec::new(), 0u64, None);
        // The users of a pass past its last whole part, and where their part starts: they go
        // with the next pass's, so that passes do not leave a small part each.
        let (mut carry, mut carry_from) = (Vec::new(), NIL_USER);
        loop {
            let pass = self
                .fold_pass(
                    users.take().unwrap_or_default(),
                    from,
                    None,
                    lo,
                    &[],
                    budget,
                    false,
                )
                .await?;
            self.report.fold_passes += 1;
            self.report.fold_peak_bytes = self.report.fold_peak_bytes.max(pass.peak);
            self.report.fold_gave_way += pass.gave_way;
            count += pass.states.len() as u64;
            let start = if carry.is_empty() {
                lo.unwrap_or(NIL_USER)
            } else {
                carry_from
            };
            let mut sorted = std::mem::take(&mut carry);
            sorted.extend(sorted_users(pass.states));
            if pass.range.hi.is_some() {
                let size = self.policy.part_users.max(1);
                carry = sorted.split_off(sorted.len() / size * size);
            }
            carry_from = match carry.first() {
                Some((u, _)) if !sorted.is_empty() => *u,
                _ => start,
            };
            if !sorted.is_empty() {
                base.extend(self.base_parts(start, sorted).await?);
            }
            match pass.range.hi {
                Some(hi) => lo = Some(hi),
                None => break,
            }
        }
        self.report.changed_users = count;
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
    async fn put_part(&mut self, users: Vec<(UserId, UserState)>) -> Result<PartRef, LogError> {
        let count = users.len() as u64;
        let encoder = self.encoder()?;
        let (encoder, _) = self.encode(encoder, Vec::new(), users).await?;
        let bytes = encoder.finish().map_err(|e| {
            LogError::corrupt(self.shard, self.n, format!("encode checkpoint part: {e}"))
        })?;
        self.put_named(bytes, count, "a part").await
    }

    /// An encoder of a part of this checkpoint.
    fn encoder(&self) -> Result<keepsake_segment::CheckpointEncoder, LogError> {
        let meta = keepsake_segment::CheckpointMeta {
            // Version 6: change ids as a filter, its sealed blocks in runs, written once.
            format_version: keepsake_segment::CHECKPOINT_VERSION,
            shard: self.shard,
            segment: self.n,
            user_count: 0,
        };
        keepsake_segment::CheckpointEncoder::new(&meta).map_err(|e| {
            LogError::corrupt(self.shard, self.n, format!("encode checkpoint part: {e}"))
        })
    }

    /// Adds `users` (ascending, after those added before) to a part being encoded, on a
    /// blocking thread, and their ids to `ids`; the states are dropped once encoded. Each
    /// state's sealed filter blocks not yet in a run are split off for this checkpoint's run
    /// ([`Writer::put_sealed`]), `run_blocks` at a time: the part holds the blocks after.
    async fn encode(
        &mut self,
        encoder: keepsake_segment::CheckpointEncoder,
        mut ids: Vec<UserId>,
        users: Vec<(UserId, UserState)>,
    ) -> Result<(keepsake_segment::CheckpointEncoder, Vec<UserId>), LogError> {
        let (shard, n) = (self.shard, self.n);
        let unit = self.policy.run_blocks;
        let (encoder, sealed, pushed) = tokio::task::spawn_blocking(move || {
            let (mut encoder, mut users) = (encoder, users);
            let sealed: Vec<(UserId, ChangeFilter)> = users
                .iter_mut()
                .filter_map(|(u, s)| s.split_sealed(unit).map(|f| (*u, f)))
                .collect();
            encoder.push(users.iter().map(|(u, s)| (u, s)))?;
            let pushed: Vec<UserId> = users.into_iter().map(|(u, _)| u).collect();
            Ok::<_, keepsake_segment::SegmentError>((encoder, sealed, pushed))
        })
        .await
        .map_err(|e| LogError::corrupt(shard, n, e))?
        .map_err(|e| LogError::corrupt(shard, n, format!("encode checkpoint part: {e}")))?;
        self.sealed.extend(sealed);
        ids.extend(pushed);
        Ok((encoder, ids))
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

    /// The users in `range` the `newest` deltas of `m` hold, each in its newest state. A delta
    /// is read whole, one at a time, and only its users in `range` kept.
    async fn deltas_state(
        &self,
        m: &Manifest,
        newest: usize,
        range: Range,
    ) -> Result<IdMap<UserId, UserState>, LogError> {
        let mut users: IdMap<UserId, UserState> = IdMap::default();
        for d in m.deltas[..newest.min(m.deltas.len())].iter().rev() {
            if !d.users.iter().any(|u| range.holds(u)) {
                continue;
            }
            let mut read = read_delta_part(self.store.as_ref(), m, d).await?;
            read.retain(|u, _| range.holds(u));
            users.extend(read);
        }
        Ok(users)
    }

    /// `m`'s base parts in `range` with `overlay` (the deltas' users and the changed ones in
    /// it, newest state) folded in: each base part whose range holds one of them is read,
    /// overlaid and written again (split if it grew past `part_users`); the others are named
    /// again. A pass's range starts and ends at the starts of base parts (its cuts) when the
    /// base has more than one, so each base part is in exactly one pass's range; a base of one
    /// part has no start to cut at, and each pass writes that part's users of its own range
    /// (before, only the pass holding the part's start did, and the users above its cut were
    /// left out of the new base: test `…a_base_merge_past_the_fold_budget_over_one_base_part_keeps_every_user`).
    async fn merge_base(
        &mut self,
        m: &Manifest,
        mut overlay: IdMap<UserId, UserState>,
        whole: &mut WholeParts,
        range: Range,
    ) -> Result<Vec<BasePart>, LogError> {
        let mut changed: Vec<UserId> = overlay.keys().copied().collect();
        changed.sort_unstable();
        if m.base.is_empty() {
            let from = range.lo.unwrap_or(NIL_USER);
            return self.base_parts(from, sorted_users(overlay)).await;
        }
        let mut base = Vec::new();
        for (i, b) in m.base.iter().enumerate() {
            let to = m.base.get(i + 1).map(|next| next.from);
            // Where the part's users (from `b.from` up to `to`) and the range's meet. A pass
            // ends at a part's start when the base has one to cut at; with one part only, it
            // ends inside it, and each pass writes the part's users of its own range.
            let from = match range.lo {
                Some(lo) if lo > b.from => lo,
                _ => b.from,
            };
            if !range.holds(&from) || to.is_some_and(|t| t <= from) {
                continue;
            }
            let inside = from == b.from && range.hi.is_none_or(|h| to.is_some_and(|t| t <= h));
            let lo = changed.partition_point(|u| *u < from);
            let hi = to.map_or(changed.len(), |t| changed.partition_point(|u| *u < t));
            if lo == hi && inside {
                base.push(*b);
                continue;
            }
            // Read whole for the fold already: its users left are the unchanged ones, and the
            // changed ones are all in the overlay.
            let mut users = match whole.take(&b.part) {
                Some(left) => left,
                None => read_base_part(self.store.as_ref(), m, i).await?,
            };
            if !inside {
                users.retain(|u, _| range.holds(u));
            }
            for u in &changed[lo..hi] {
                if let Some(s) = overlay.remove(u) {
                    users.insert(*u, s);
                }
            }
            base.extend(self.base_parts(from, sorted_users(users)).await?);
        }
        Ok(base)
    }
}

/// Users from `lo` (inclusive; `None`: the first) up to `hi` (exclusive; `None`: the last).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Range {
    lo: Option<UserId>,
    hi: Option<UserId>,
}

impl Range {
    fn holds(&self, u: &UserId) -> bool {
        self.lo.is_none_or(|lo| *u >= lo) && self.hi.is_none_or(|hi| *u < hi)
    }

    /// Whether a pass could stop at `c`: strictly after the start, before the end.
    fn inside(&self, c: &UserId) -> bool {
        self.lo.is_none_or(|lo| *c > lo) && self.hi.is_none_or(|hi| *c < hi)
    }
}

/// What one pass of a checkpoint's fold gives.
struct Pass {
    /// The state after the checkpoint's segment of each user in `range` the segments hold.
    states: IdMap<UserId, UserState>,
    /// The users the pass took: from where it started to where it stopped taking them.
    range: Range,
    /// Users of the segments, in and out of `range` (when asked to count them).
    met: u64,
    /// Of `states`, those the previous checkpoint did not hold.
    new_users: u64,
    /// Parts the pass read whole, less the users given out (a merge into the base takes the
    /// unchanged users of a part from here).
    whole: WholeParts,
    /// The states (and parts read whole) it held at its peak, approximate bytes.
    peak: u64,
    /// Times it gave way past the views' floors ([`CheckpointReport::fold_gave_way`]).
    gave_way: u64,
}

/// How a checkpoint over a manifest writes its changed users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Merged into the base: every delta's users with them.
    Base,
    /// As one delta part, with this many of the newest deltas merged into it.
    Deltas(usize),
}

/// Adds `states` read from the previous checkpoint to `users`, the ones it did not hold to
/// `new`; gives the bytes they take.
fn take_in(
    states: Vec<(UserId, UserState)>,
    users: &mut IdMap<UserId, UserState>,
    new: &mut Vec<UserId>,
) -> usize {
    let mut bytes = 0;
    for (u, state) in states {
        if state.last_seq() == 0 {
            new.push(u);
        }
        bytes += state.approx_bytes();
        users.insert(u, state);
    }
    bytes
}

/// Ends `range` at `c`: the users from `c` on are dropped (a later pass folds them); gives the
/// bytes the users kept take.
fn stop_at(c: UserId, users: &mut IdMap<UserId, UserState>, range: &mut Range) -> usize {
    users.retain(|u, _| *u < c);
    range.hi = Some(c);
    users.values().map(UserState::approx_bytes).sum()
}

/// Where a pass that holds `users` (all in `range`) stops taking users to hold about half of
/// them: the greatest of `cuts` at or below the middle user, else the least above it; the
/// middle user when there are no cuts. `None` when no cut lies strictly inside `range` and
/// above its start (a pass always takes something, so the next one starts further on).
fn cut(users: &IdMap<UserId, UserState>, range: Range, cuts: &[UserId]) -> Option<UserId> {
    if users.len() < 2 {
        return None;
    }
    let mut ids: Vec<UserId> = users.keys().copied().collect();
    let half = ids.len() / 2;
    let (_, mid, _) = ids.select_nth_unstable(half);
    let mid = *mid;
    if cuts.is_empty() {
        return range.inside(&mid).then_some(mid);
    }
    cut_at_or_below(mid, range, cuts).or_else(|| {
        let at = cuts.partition_point(|c| *c <= mid);
        cuts[at..].iter().find(|c| range.inside(c)).copied()
    })
}

/// The greatest of `cuts` (ascending) at or below `x` that lies strictly inside `range`.
fn cut_at_or_below(x: UserId, range: Range, cuts: &[UserId]) -> Option<UserId> {
    let at = cuts.partition_point(|c| *c <= x);
    cuts[..at].iter().rev().find(|c| range.inside(c)).copied()
}

/// `users` in ascending order of id, moved out of the map.
fn sorted_users(users: impl IntoIterator<Item = (UserId, UserState)>) -> Vec<(UserId, UserState)> {
    let mut sorted: Vec<(UserId, UserState)> = users.into_iter().collect();
    sorted.sort_unstable_by_key(|(u, _)| *u);
    sorted
}
