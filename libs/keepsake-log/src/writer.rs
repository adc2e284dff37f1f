//! The shard writer: one task per shard, the only code that writes the shard's log.
//!
//! Ordering and durability invariants, in the order a batch goes through them:
//! 1. Segment PUTs of a shard start at least `commit_window` apart, and at most one is in flight.
//!    A batch takes every push that arrives until it is time to prepare the next PUT (at once, if
//!    the shard has been idle a window) or until it holds `max_batch_changes`; pushes that
//!    arrive while a PUT is in flight wait in the queue and form the next batch. Preparing a
//!    batch (loading, staging, encoding) takes time, so filling stops that long (as the previous
//!    batch took) before the window ends, and the PUT then waits for the window if it is early.
//!    So at low load a push costs one PUT and no waiting, and at high load one PUT carries
//!    thousands of events every window rather than every window plus the preparation, while
//!    PUTs per second stay bounded by the window. With a latency budget, a batch holding fewer
//!    than `commit_enough_changes` changes stays open until the budget after its first push
//!    (never closing before the window): at low load one PUT then carries every push of the
//!    budget, not one each; a batch with enough changes closes by the window as without one.
//!    A small batch waits only while the shard's devices push at a rate that brings at least
//!    one other push per budget ([`Company`]), not counting pushes that came within
//!    [`REACTION`](window::REACTION) of an answer of the process (a client keeping a few users'
//!    pushes in flight sends nothing more until it is answered, so its whole round is already
//!    in the batches), and only while it holds no push that came within a budget plus
//!    [`SEQUENCE_GAP`] of its user's previous answer (a device sending its pushes one after
//!    another, as CardDAV clients and first syncs do) and no push that is not a device's (an
//!    operator's registration, a restore, an import: bulk jobs that wait for each answer).
//!    Such clients are not made to wait the budget on every push, which would slow them to a
//!    round per budget for PUTs they would barely save.
//! 2. Staging decides every change against committed state plus the batch's own earlier changes
//!    (an overlay); committed state is not touched until the segment is durable.
//! 3. `recorded_at` is taken once per batch, truncated to the microsecond the segment stores,
//!    and never goes backwards within the shard.
//! 4. The segment is written as `head + 1` with a create-only PUT, and only with that number:
//!    a batch is never written under a second number.
//! 5. An error or timeout from the PUT is ambiguous: the writer reads `head + 1` back. Its own
//!    batch id there means committed; another batch id means another writer won (fenced);
//!    nothing there means not committed, and the PUT is tried again under the same number.
//! 6. `AlreadyExists` is read back the same way (an earlier attempt of ours may have landed).
//! 7. Only after the PUT is confirmed are the events applied to committed state and the callers
//!    answered. Every failure answers with a retryable error and never an acknowledgement.
//! 8. A create-only PUT also succeeds on a number that was used and then freed by compaction
//!    (its segment moved into a history object and deleted) — which is what a writer that is
//!    behind another process targets. So a PUT counts as committed only once the shard's
//!    compaction frontier, read after it, is below its number: compaction advances the frontier
//!    past a segment before it deletes it, so if the number had been used, the frontier shows
//!    it ([`crate::frontier`]: one GET per PUT, where a listing of history objects cost a LIST).
//!    Otherwise the writer deletes its own object (never acknowledged), fails the batch as
//!    fenced, and re-reads the shard. A segment number, once used, is never usable again.
//! 9. After a fence or an unresolved failure the writer re-reads the shard from `head + 1` before
//!    its next batch (from a listing, so that a compacted range counts as taken, not as the end
//!    of the log), so its state includes whatever landed, and retried change ids answer
//!    `duplicate`.
//! 10. A batch that writes nothing (every change a duplicate, a conflict or a rejection, or a
//!     push refused by the mass-delete guard) has no PUT to prove its view current, so before
//!     it is answered the writer checks the store: segment `head + 1` exists or the compaction
//!     frontier holds it means another process moved the shard on; the writer re-reads the shard
//!     and stages the batch again. An answer that writes nothing is never decided on a stale
//!     view (a `not_found` would make a device drop its user's delete for good).
//! 12. In a cluster ([`crate::owner`]) a batch is staged only while the shard is held, and a
//!     confirmed PUT is acknowledged only when the owner chain, read after it, shows no newer
//!     generation than the one held; otherwise the batch fails as `not_owner` (retryable), the
//!     shard is let go, and the writer re-reads it before any later batch.
//! 11. A push of origin `restore` is all or nothing: if any of its changes would conflict or be
//!     rejected, none of it is staged and it is refused (`LogError::Incomplete`). Its changes
//!     name the versions the restore computed them from, so an edit that lands in between is
//!     never silently overwritten: the restore recomputes or reports it.

mod claim;
mod window;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use keepsake_model::{
    Ancestors, BatchId, Clock, Event, IdGenerator, ItemId, Need, OldChanges, Origin, Outcome,
    StageContext, Staged, StateRead, UserId,
};
use keepsake_segment::{SegmentMeta, encode, segment_version};
use object_store::ObjectStore;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use claim::Put;
pub(crate) use window::{Company, Reactions, SEQUENCE_GAP};
use window::{budget_deadline, fill_deadline, next_estimate};

use crate::PushResult;
use crate::config::LogConfig;
use crate::error::LogError;
use crate::push::Queued;
use crate::reader::{UpTo, read_user};
use crate::stats::LogStats;
use crate::view::ShardState;

pub(crate) struct Writer {
    pub shard: u32,
    pub store: Arc<dyn ObjectStore>,
    pub state: Arc<RwLock<ShardState>>,
    pub rx: mpsc::Receiver<Queued>,
    pub shutdown: watch::Receiver<bool>,
    pub cfg: Arc<LogConfig>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdGenerator>,
    pub stats: Arc<LogStats>,
    pub epoch: u64,
    pub needs_resync: bool,
    /// When the last segment PUT began; the next may begin `commit_window` later.
    pub last_put: Option<Instant>,
    /// How long a batch takes from the end of filling to its PUT (load, stage, encode): a
    /// moving average, so that one slow batch does not close the next fill early.
    pub prepare_estimate: std::time::Duration,
    /// When the last committed batch was answered.
    pub answered_at: Option<Instant>,
    /// Publishes the head after every commit or catch-up, for long polls.
    pub head_tx: watch::Sender<u64>,
    /// The segment number and batch of a PUT that may have landed but was not confirmed:
    /// settled at the next re-read of the shard.
    pub unconfirmed: Option<(u64, BatchId)>,
    /// The shard's compaction frontier as last read (`None` until the first PUT).
    pub frontier: Option<crate::frontier::Frontier>,
    /// Whether this process may write the shard (invariant 12).
    pub gate: Arc<crate::owner::Gate>,
    /// Whether a small batch may expect company within the latency budget (invariant 1).
    pub company: Company,
    /// When each user's last push was answered, kept a latency budget plus [`SEQUENCE_GAP`]: a
    /// push that comes sooner after its user's answer is one of a sequence, and its batch does
    /// not wait out the budget (invariant 1).
    pub answered_users: HashMap<UserId, Instant>,
    /// The size of `answered_users` at which it is next pruned (twice what the last pruning
    /// left, so pruning costs a constant per answer).
    pub answered_prune_at: usize,
    /// When the process last answered a batch, on any shard: pushes that react to it are not
    /// company (invariant 1, [`window::REACTION`]).
    pub reactions: Arc<Reactions>,
}

/// A staged batch: per request its outcomes (or refusal), and the events to write.
struct Staging {
    results: Vec<Result<Vec<Outcome>, LogError>>,
    events: Vec<Event>,
}

fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

impl Writer {
    pub async fn run(mut self) {
        info!(
            shard = self.shard,
            epoch = self.epoch,
            "shard writer started"
        );
        loop {
            let first = tokio::select! {
                biased;
                q = self.rx.recv() => q,
                _ = self.shutdown.changed() => {
                    // Stop taking pushes; the loop drains what is already queued.
                    self.rx.close();
                    continue;
                }
                // Idle with a PUT that may have landed unsettled: settle it now, not at the
                // next push, so that a stray it left does not wait for traffic.
                _ = tokio::time::sleep(self.cfg.retry_backoff * 4), if self.unconfirmed.is_some() => {
                    if let Err(e) = self.catch_up().await {
                        warn!(shard = self.shard, error = %e, "re-reading the shard to settle an unconfirmed PUT failed; will retry");
                    }
                    continue;
                }
            };
            let Some(first) = first else { break };
            let batch = self.fill(first).await;
            let filled = Instant::now();
            self.commit(batch, filled).await;
        }
        info!(shard = self.shard, "shard writer stopped");
    }

    async fn fill(&mut self, first: Queued) -> Vec<Queued> {
        let deadline = fill_deadline(
            first.enqueued,
            self.last_put,
            self.prepare_estimate,
            self.answered_at,
            self.cfg.commit_window,
        );
        let budgeted = budget_deadline(
            first.enqueued,
            deadline,
            self.prepare_estimate,
            self.cfg.commit_latency_budget,
        );
        // A sync (an empty push: a read waiting out the batches before it) writes nothing, so
        // a batch holding one waits for neither the window nor the budget, which bound PUTs:
        // it closes with what is queued (a push in it still sleeps out the window before its
        // PUT). Nor does a batch wait when the writer is stopping.
        let mut sync_in = first.req.changes.is_empty();
        let mut shutdown = self.shutdown.clone();
        let mut stopping = *shutdown.borrow();
        let mut changes = first.req.changes.len();
        let budget = self.cfg.commit_latency_budget;
        // A small batch waits for company up to the latency budget while the shard's devices
        // push, independently of the answers, at a rate that brings some within a budget, and
        // while it holds no push of a sequence (a device that pushes again as soon as it is
        // answered waits for its answer: no one else's push is worth making it wait the budget
        // each time) and no push that is not a device's; one with enough changes closes by
        // the window (invariant 1).
        // Decided before the first push is counted: at an arrival the count is one more than
        // the rate's mean.
        let waits = !budget.is_zero()
            && self
                .company
                .worth_waiting(self.reactions.uncovered(Instant::now()), budget);
        self.count_arrival(&first);
        let mut prompt = waits && self.prompt(&first);
        let mut waited = false;
        let mut batch = vec![first];
        while changes < self.cfg.max_batch_changes {
            let deadline = if sync_in || stopping {
                Instant::now()
            } else if changes < self.cfg.commit_enough_changes && waits && !prompt {
                waited = true;
                budgeted
            } else {
                deadline
            };
            // `timeout_at` polls the queue before the deadline, so pushes already queued (during
            // the previous PUT) join this batch even when the deadline has passed.
            tokio::select! {
                biased;
                next = tokio::time::timeout_at(deadline, self.rx.recv()) => match next {
                    Ok(Some(q)) => {
                        self.count_arrival(&q);
                        sync_in |= q.req.changes.is_empty();
                        changes += q.req.changes.len();
                        prompt = prompt || (waits && self.prompt(&q));
                        batch.push(q);
                    }
                    Ok(None) | Err(_) => break,
                },
                // Changed, or its sender gone: either way the writer is stopping.
                _ = shutdown.changed() => stopping = true,
            }
        }
        if !budget.is_zero() && !sync_in && !stopping {
            use std::sync::atomic::Ordering::Relaxed;
            if waited {
                self.stats.budget_waits.fetch_add(1, Relaxed);
            } else if changes < self.cfg.commit_enough_changes {
                self.stats.budget_skips.fetch_add(1, Relaxed);
            }
        }
        batch
    }

    /// Counts `q` into the shard's rate of company (with a latency budget): a device's push
    /// with changes that did not react to an answer of the process.
    fn count_arrival(&mut self, q: &Queued) {
        let budget = self.cfg.commit_latency_budget;
        if !budget.is_zero()
            && !q.reacted
            && !q.req.changes.is_empty()
            && q.req.meta.origin == Origin::Device
        {
            self.company.arrived(q.uncovered, budget);
        }
    }

    /// Whether `q`'s batch should be answered without waiting out the budget: `q` is one of a
    /// device's sequence ([`Writer::in_sequence`]), or not a device's push at all (an
    /// operator's registration or revocation, a restore, an import: bulk jobs that go through
    /// users a bounded number at a time, each waiting for its answer, and are not the load the
    /// budget prices).
    fn prompt(&self, q: &Queued) -> bool {
        q.req.meta.origin != Origin::Device || self.in_sequence(q)
    }

    /// How long after its user's answer a push is one of a sequence.
    fn sequence_horizon(&self) -> std::time::Duration {
        self.cfg.commit_latency_budget + SEQUENCE_GAP
    }

    /// Whether `q` came within [`Writer::sequence_horizon`] of its user's last answer (see
    /// `answered_users`; a push queued before that answer, from a device with two in flight,
    /// counts too).
    fn in_sequence(&self, q: &Queued) -> bool {
        self.answered_users
            .get(&q.req.user_id)
            .is_some_and(|&at| q.enqueued.saturating_duration_since(at) <= self.sequence_horizon())
    }

    /// The users of `batch`'s pushes with changes (a sync is a read, not a device's push),
    /// whose answers [`Writer::note_answered`] records; none without a latency budget (nothing
    /// to allocate on the path of every batch).
    fn sequence_users(&self, batch: &[Queued]) -> Vec<UserId> {
        if self.cfg.commit_latency_budget.is_zero() {
            return Vec::new();
        }
        batch
            .iter()
            .filter(|q| !q.req.changes.is_empty())
            .map(|q| q.req.user_id)
            .collect()
    }

    /// The moment of the answers about to be given, recorded (with a latency budget) as the
    /// process's last answer before they go out: a client's reaction may enter the log before
    /// `answer` returns.
    fn answering(&self) -> Instant {
        let now = Instant::now();
        if !self.cfg.commit_latency_budget.is_zero() {
            self.reactions.answered(now);
        }
        now
    }

    /// Records that `users` were just answered; those answered longer ago than the sequence
    /// horizon are forgotten when the map has doubled since it was last pruned.
    fn note_answered(&mut self, users: Vec<UserId>, now: Instant) {
        if self.cfg.commit_latency_budget.is_zero() {
            return;
        }
        for u in users {
            self.answered_users.insert(u, now);
        }
        if self.answered_users.len() >= self.answered_prune_at {
            let horizon = self.sequence_horizon();
            self.answered_users
                .retain(|_, at| now.saturating_duration_since(*at) <= horizon);
            self.answered_prune_at = (self.answered_users.len() * 2).max(1024);
        }
    }

    /// Records the PUT this writer could not confirm (or that it settled it), keeping the
    /// `unconfirmed_puts` gauge in step.
    fn set_unconfirmed(&mut self, now: Option<(u64, BatchId)>) {
        use std::sync::atomic::Ordering::Relaxed;
        match (self.unconfirmed.is_some(), now.is_some()) {
            (false, true) => {
                self.stats.unconfirmed_puts.fetch_add(1, Relaxed);
            }
            (true, false) => {
                self.stats.unconfirmed_puts.fetch_sub(1, Relaxed);
            }
            _ => {}
        }
        self.unconfirmed = now;
    }

    fn fail_all(batch: Vec<Queued>, err: impl Fn() -> LogError) {
        for q in batch {
            let _ = q.reply.send(Err(err()));
        }
    }

    async fn commit(&mut self, batch: Vec<Queued>, filled: Instant) {
        self.commit_batch(batch, filled).await;
        if let Ok(mut s) = self.state.write() {
            s.unpin_all();
            s.evict_over_budget();
        }
    }

    /// Loads every user of the batch that is not in memory, and pins them all until the batch
    /// is answered, so staging and applying see the same state.
    async fn ensure_resident(&self, batch: &[Queued]) -> Result<(), LogError> {
        let mut users: Vec<UserId> = batch.iter().map(|q| q.req.user_id).collect();
        users.sort_unstable();
        users.dedup();
        if let Ok(mut s) = self.state.write() {
            s.pin(users.iter().copied());
        }
        // Cold users load concurrently: each reads the newest checkpoint and the segments after it.
        futures::future::try_join_all(
            users
                .into_iter()
                .map(|u| crate::load_user(&self.store, self.shard, &self.state, u)),
        )
        .await?;
        Ok(())
    }

    async fn commit_batch(&mut self, batch: Vec<Queued>, filled: Instant) {
        let shard = self.shard;
        let mut resyncs = 0;
        let (staging, recorded_at) = loop {
            if !self.gate.accepts() {
                Self::fail_all(batch, || LogError::NotOwner { shard });
                return;
            }
            if self.needs_resync
                && let Err(e) = self.catch_up().await
            {
                warn!(shard, error = %e, "re-reading the shard failed; refusing the batch");
                let reason = e.to_string();
                Self::fail_all(batch, || LogError::Unavailable {
                    shard,
                    reason: reason.clone(),
                });
                return;
            }
            if let Err(e) = self.ensure_resident(&batch).await {
                warn!(shard, error = %e, "loading the batch's users failed; refusing the batch");
                let reason = e.to_string();
                Self::fail_all(batch, || LogError::Unavailable {
                    shard,
                    reason: reason.clone(),
                });
                return;
            }
            let recorded_at = {
                let now = truncate_to_micros(self.clock.now());
                let last = self.state.read().ok().and_then(|s| s.last_recorded_at);
                last.map_or(now, |l| l.max(now))
            };
            let staging = match self.stage_with_ancestors(&batch, recorded_at).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(shard, error = %e, "staging failed");
                    let reason = e.to_string();
                    Self::fail_all(batch, || LogError::Unavailable {
                        shard,
                        reason: reason.clone(),
                    });
                    return;
                }
            };
            if !staging.events.is_empty() {
                // The create-only PUT of `head + 1` proves the view current (invariants 4-8).
                break (staging, recorded_at);
            }
            // Nothing to write, so no PUT will tell whether another process moved the shard
            // on: answers that write nothing (not_found, conflict, duplicate, the mass-delete
            // guard) are given only from a view the store shows is current (invariant 10).
            match self.is_current().await {
                Ok(true) => {
                    let users = self.sequence_users(&batch);
                    let now = self.answering();
                    self.answer(batch, staging.results, None);
                    self.note_answered(users, now);
                    return;
                }
                Ok(false) if resyncs < 3 => {
                    resyncs += 1;
                    self.stats
                        .stale_answers_avoided
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    debug!(
                        shard,
                        "the shard moved on elsewhere; re-reading before answering"
                    );
                    self.needs_resync = true;
                }
                Ok(false) => {
                    Self::fail_all(batch, || LogError::Unavailable {
                        shard,
                        reason: "the shard kept moving on in another process; retry".into(),
                    });
                    return;
                }
                Err(e) => {
                    let reason = format!("checking the shard's head before answering: {e}");
                    Self::fail_all(batch, || LogError::Unavailable {
                        shard,
                        reason: reason.clone(),
                    });
                    return;
                }
            }
        };
        let n = self.state.read().map_or(0, |s| s.head) + 1;
        let batch_id = BatchId(self.ids.random());
        let meta = SegmentMeta {
            format_version: segment_version(&staging.events),
            shard,
            segment: n,
            writer_epoch: self.epoch,
            batch_id,
            event_count: staging.events.len() as u64,
            first_recorded_at: recorded_at,
            last_recorded_at: recorded_at,
        };
        let events = staging.events;
        let encoded = tokio::task::spawn_blocking(move || {
            let bytes = encode(&events, &meta);
            (events, bytes)
        })
        .await;
        let (events, bytes) = match encoded {
            Ok((events, Ok(bytes))) => (events, bytes),
            Ok((_, Err(e))) => {
                error!(shard, segment = n, error = %e, "encoding a segment failed");
                let reason = format!("encode segment: {e}");
                Self::fail_all(batch, || LogError::Unavailable {
                    shard,
                    reason: reason.clone(),
                });
                return;
            }
            Err(e) => {
                error!(shard, segment = n, error = %e, "the encoding task failed");
                Self::fail_all(batch, || LogError::Unavailable {
                    shard,
                    reason: "encode segment".into(),
                });
                return;
            }
        };
        self.prepare_estimate = next_estimate(self.prepare_estimate, filled.elapsed());
        if let Some(t) = self.last_put {
            // Prepared early (the previous batch took longer): the window still bounds PUTs.
            tokio::time::sleep_until(t + self.cfg.commit_window).await;
        }
        let started = Instant::now();
        self.last_put = Some(started);
        match self.put_segment(n, batch_id, bytes.clone()).await {
            Put::Committed(tag) => {
                self.stats.record_segment(
                    events.len() as u64,
                    bytes.len() as u64,
                    started.elapsed(),
                );
                let applied = matches!(
                    self.state.write().map(|mut s| {
                        s.commit_segment(
                            n,
                            &events,
                            recorded_at,
                            batch_id,
                            Some((bytes.len() as u64, tag)),
                        )
                    }),
                    Ok(Ok(()))
                );
                if !applied {
                    // Cannot happen: staging produced these events against this state. If it
                    // does, the segment is durable, so the state is rebuilt from the log.
                    error!(
                        shard,
                        segment = n,
                        "committed events did not apply; re-reading the shard"
                    );
                    self.needs_resync = true;
                }
                self.head_tx.send_replace(n);
                debug!(
                    shard,
                    segment = n,
                    events = events.len(),
                    bytes = bytes.len(),
                    "committed"
                );
                let users = self.sequence_users(&batch);
                let now = self.answering();
                self.answer(batch, staging.results, Some(n));
                self.answered_at = Some(now);
                self.note_answered(users, now);
            }
            Put::Deposed(generation) => {
                warn!(
                    shard,
                    segment = n,
                    generation,
                    "another server took the shard: the batch is not acknowledged, the shard let go"
                );
                self.gate.drop_generation(generation);
                self.stats
                    .deposed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // The segment is in the log (its PUT was confirmed): read back in, never
                // applied here without the re-read, so a resend answers `duplicate`.
                self.needs_resync = true;
                Self::fail_all(batch, || LogError::NotOwner { shard });
            }
            fenced @ (Put::Fenced | Put::Reused) => {
                self.stats
                    .fenced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if matches!(fenced, Put::Reused) {
                    self.stats
                        .reused_numbers
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                warn!(
                    shard,
                    segment = n,
                    "another writer committed this segment first; failing the batch and re-reading the shard"
                );
                Self::fail_all(batch, || LogError::Fenced { shard, segment: n });
                self.needs_resync = true;
                if let Err(e) = self.catch_up().await {
                    warn!(shard, error = %e, "re-reading the shard after a fence failed; will retry before the next batch");
                }
            }
            Put::NotCommitted(reason) => {
                warn!(shard, segment = n, %reason, "segment not committed; failing the batch");
                // A timed-out PUT may still land later: re-read before the next batch, and
                // settle what it left then.
                self.needs_resync = true;
                self.set_unconfirmed(Some((n, batch_id)));
                Self::fail_all(batch, || LogError::Unavailable {
                    shard,
                    reason: reason.clone(),
                });
            }
        }
    }

    fn answer(
        &self,
        batch: Vec<Queued>,
        results: Vec<Result<Vec<Outcome>, LogError>>,
        segment: Option<u64>,
    ) {
        let state = self.state.read();
        for (q, result) in batch.into_iter().zip(results) {
            let reply = result.map(|outcomes| {
                let wrote = outcomes.iter().any(|o| matches!(o, Outcome::Applied(_)));
                let last_seq = state
                    .as_ref()
                    .ok()
                    .and_then(|s| s.get(&q.req.user_id))
                    .map_or(0, |u| u.last_seq());
                PushResult {
                    outcomes,
                    last_seq,
                    segment: if wrote { segment } else { None },
                }
            });
            let _ = q.reply.send(reply);
        }
    }

    /// Stages the batch; when stale patches need earlier documents, or a change id may be one
    /// of the user's older ids, reads them from the log and stages again (staging is pure, so
    /// the second pass is the first pass plus what was read). The pushing tasks read most of
    /// them before queueing; these are the few that changed while the push waited.
    async fn stage_with_ancestors(
        &self,
        batch: &[Queued],
        recorded_at: DateTime<Utc>,
    ) -> Result<Staging, LogError> {
        let mut ancestors: HashMap<UserId, Ancestors> = HashMap::new();
        // Resolved here, from the log as committed: trusted whatever state stages them. (Those
        // resolved before queueing are each push's own, with the seq they were read to.)
        let mut old: HashMap<UserId, OldChanges> = HashMap::new();
        for q in batch {
            if !q.ancestors.is_empty() {
                ancestors
                    .entry(q.req.user_id)
                    .or_default()
                    .extend(q.ancestors.iter().map(|(k, v)| (*k, v.clone())));
            }
        }
        // Each round learns at least one missing version (and every version of its item) or
        // change id, so this ends; the bound only guards against a bug.
        for _ in 0..16 {
            let needs = match self.stage(batch, recorded_at, &ancestors, &old) {
                Ok(s) => return Ok(s),
                Err(needs) => needs,
            };
            let mut by_user: HashMap<UserId, Vec<Need>> = HashMap::new();
            for (user, need) in needs {
                by_user.entry(user).or_default().push(need);
            }
            for (user, needs) in by_user {
                let events = if needs.iter().any(|n| matches!(n, Need::Change(_))) {
                    self.stats
                        .writer_old_change_reads
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Through the view, checked to reach every id the user's filter holds: a
                    // listing that ended early would let an applied change be staged again.
                    let through = self
                        .state
                        .read()
                        .map_err(|_| crate::poisoned(self.shard))?
                        .get(&user)
                        .map_or(0, keepsake_model::UserState::filter_through);
                    crate::load::user_log_in_view(
                        &self.store,
                        self.shard,
                        &self.state,
                        user,
                        through,
                    )
                    .await?
                } else {
                    self.stats
                        .writer_ancestor_reads
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    read_user(self.store.clone(), self.shard, user, UpTo::End)
                        .await?
                        .0
                };
                let found = ancestors.entry(user).or_default();
                // Every version of each needed item: a later push of the batch may need another.
                let items: HashSet<ItemId> = needs
                    .iter()
                    .filter_map(|n| match n {
                        Need::Ancestor(a) => Some(a.item_id),
                        Need::Change(_) => None,
                    })
                    .collect();
                for e in events.iter().filter(|e| items.contains(&e.item_id)) {
                    found.insert((e.item_id, e.version), e.document.clone());
                }
                let resolved = old.entry(user).or_default();
                for need in needs {
                    match need {
                        // A version the log does not have stays answered (as absent), not
                        // asked again.
                        Need::Ancestor(n) => {
                            found.entry((n.item_id, n.version)).or_insert(None);
                        }
                        Need::Change(id) => {
                            resolved
                                .insert(id, crate::load::find_change(&events, &id, &self.stats));
                        }
                    }
                }
            }
        }
        Err(LogError::Unavailable {
            shard: self.shard,
            reason: "stale patches kept needing earlier versions, or change ids their answers"
                .into(),
        })
    }

    fn stage(
        &self,
        batch: &[Queued],
        recorded_at: DateTime<Utc>,
        ancestors: &HashMap<UserId, Ancestors>,
        old: &HashMap<UserId, OldChanges>,
    ) -> Result<Staging, Vec<(UserId, Need)>> {
        let Ok(guard) = self.state.read() else {
            return Ok(Staging {
                results: batch
                    .iter()
                    .map(|_| {
                        Err(LogError::Unavailable {
                            shard: self.shard,
                            reason: "state lock poisoned".into(),
                        })
                    })
                    .collect(),
                events: Vec::new(),
            });
        };
        let none = Ancestors::new();
        let no_old = OldChanges::new();
        let mut merged: OldChanges;
        // A push's ids resolved before queueing hold for a state whose filter of older ids
        // ends at or before the seq that read reached.
        let fresh = |q: &Queued| {
            guard
                .get(&q.req.user_id)
                .is_some_and(|s| s.filter_through() <= q.old_through)
        };
        let mut overlays: HashMap<UserId, Staged<'_>> = HashMap::new();
        let mut order: Vec<UserId> = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        let mut needs = Vec::new();
        for q in batch {
            let user = q.req.user_id;
            let staged = match overlays.entry(user) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match guard.get(&user) {
                    Some(base) => {
                        order.push(user);
                        v.insert(Staged::new(base))
                    }
                    // Never stage against a state that is not the user's: batch users are loaded
                    // and pinned first, so this only guards against a bug.
                    None => {
                        results.push(Err(LogError::Unavailable {
                            shard: self.shard,
                            reason: "the user's state is not loaded".into(),
                        }));
                        continue;
                    }
                },
            };
            // The push's own answers: an id found in the log holds whatever state stages it
            // (the log does not change); one not found only for a state whose filter of older
            // ids ends at or before the seq that read reached.
            let old_changes: &OldChanges = if q.old_changes.is_empty() {
                old.get(&user).unwrap_or(&no_old)
            } else {
                let trust_absent = fresh(q);
                merged = q
                    .old_changes
                    .iter()
                    .filter(|(_, found)| found.is_some() || trust_absent)
                    .map(|(k, v)| (*k, *v))
                    .collect();
                if let Some(here) = old.get(&user) {
                    merged.extend(here.iter().map(|(k, v)| (*k, *v)));
                }
                &merged
            };
            // Every id of the push that the state's filter may hold and nothing answers is
            // asked for at once (one read of the log), before the guard or staging look at it.
            let unresolved: Vec<Need> = q
                .req
                .changes
                .iter()
                .filter(|c| staged.maybe_older_unresolved(&c.change_id, old_changes))
                .map(|c| Need::Change(c.change_id))
                .collect();
            if !unresolved.is_empty() {
                needs.extend(unresolved.into_iter().map(|n| (user, n)));
                results.push(Ok(Vec::new()));
                continue;
            }
            if !q.req.confirm_mass_delete
                && let Err(refused) = staged.check_mass_delete(
                    &q.req.changes,
                    &self.cfg.policy.mass_delete,
                    old_changes,
                )
            {
                info!(shard = self.shard, user_id = %user, kind = %refused.kind, deletes = refused.deletes, live = refused.live, "mass-delete guard refused a push");
                self.stats
                    .mass_delete_refusals
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                results.push(Err(LogError::MassDelete(refused)));
                continue;
            }
            let cx = StageContext {
                meta: q.req.meta,
                recorded_at,
                ids: self.ids.as_ref(),
                policy: &self.cfg.policy,
                ancestors: ancestors.get(&user).unwrap_or(&none),
                old_changes,
            };
            // A restore is all or nothing (invariant 11): staged on a copy kept aside.
            let before = (q.req.meta.origin == Origin::Restore).then(|| staged.clone());
            let mut outcomes = Vec::with_capacity(q.req.changes.len());
            for c in &q.req.changes {
                match staged.stage(user, c, &cx) {
                    Ok(o) => outcomes.push(o),
                    Err(need) => {
                        needs.push((user, need));
                        break;
                    }
                }
            }
            let refused: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Conflict(_) | Outcome::Rejected { .. }))
                .collect();
            if let (Some(before), Some(first)) = (before, refused.first()) {
                let first = format!("{first:?}");
                let refused = refused.len();
                *staged = before;
                results.push(Err(LogError::Incomplete {
                    shard: self.shard,
                    refused,
                    first,
                }));
                continue;
            }
            results.push(Ok(outcomes));
        }
        if !needs.is_empty() {
            return Err(needs);
        }
        let mut events = Vec::new();
        for user in order {
            if let Some(staged) = overlays.remove(&user) {
                events.extend(staged.into_events());
            }
        }
        Ok(Staging { results, events })
    }
}
