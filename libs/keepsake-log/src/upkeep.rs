//! The background upkeep of a shard: a checkpoint every `checkpoint_every_events` events or
//! `checkpoint_interval` (the previous checkpoint plus the segments since, folded with
//! `apply`, never the view), then retention of old checkpoints, then compaction of the
//! segments the checkpoint covers. One at a time per shard (the shard's maintenance lock), and
//! `upkeep_parallelism` shards at a time per process ([`crate::turns`]): a due shard waits
//! for a turn, so the memory and CPU upkeep takes from pushes is one shard's, not every shard's;
//! a checkpoint and the compaction after it take separate turns, and checkpoints go first.

use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use keepsake_model::Clock;
use keepsake_store::{Cause, keys, with_cause};
use object_store::ObjectStore;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::turns::{Need, Turns};
use crate::{
    Checkpoint, LogConfig, LogError, LogStats, ShardState, Sharing, compact, compact_shard,
    list_checkpoint_objects, poisoned, retention, write_checkpoint_sharing,
};

/// The thread a process's upkeep runs on: a runtime of its own, so that the operating system
/// gives upkeep its share of the CPU however many push tasks the server's runtime holds. On the
/// server's runtime a checkpoint was one task among hundreds of cold loads: under an open-loop
/// load it got ~2% of the CPU (`perf`, make sustained run 7), took 290 s instead of 30, the
/// tails it would have ended grew, every cold load read more of them, and pushes fell from 9.8k
/// to 1.3k events/s. The runtime stops when this is dropped (with the log), cancelling what is
/// left on it: a checkpoint or compaction cut short is a crash it already survives.
pub(crate) struct UpkeepThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl UpkeepThread {
    /// Starts the thread, its threads `nice` steps below the caller's priority
    /// ([`lower_priority`]), each running `on_start` (if any) first.
    pub(crate) fn start(nice: u8, on_start: Option<fn()>) -> Result<Self, LogError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let unavailable = |reason: String| LogError::Unavailable { shard: 0, reason };
        std::thread::Builder::new()
            .name("keepsake-upkeep".into())
            .spawn(move || {
                if let Some(f) = on_start {
                    f();
                }
                let lowered = lower_priority(nice);
                // Its blocking threads (decodes, folds, encodes) carry the name too, so a
                // profile or `top -H` tells upkeep's CPU from the pushes', and the priority.
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .thread_name("keepsake-upkeep")
                    .on_thread_start(move || {
                        if let Some(f) = on_start {
                            f();
                        }
                        if let Some(n) = lowered {
                            run_at(n);
                        }
                    })
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| unavailable(format!("start the upkeep thread: {e}")))?;
        let handle = handle_rx
            .recv()
            .map_err(|e| unavailable(format!("start the upkeep thread: {e}")))?
            .map_err(|e| unavailable(format!("start the upkeep runtime: {e}")))?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Runs `task` on the upkeep thread.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(task)
    }
}

/// Lowers the calling thread's scheduling priority by `by` nice steps (to 19 at most; 0 leaves
/// it as it is; relative, so that a server started at a lower priority keeps upkeep below its
/// pushes, and never raised), and returns the nice value it then runs at. Under an open-loop
/// load a round of checkpoints and compaction took a core and more from pushes that needed
/// both, and every round was a deep dip (`make sustained`, runs 8-10); a lower priority lets
/// pushes go first while upkeep still gets a share, where starving it (run 7) let the tails
/// grow. A failure (a system that refuses) is logged and upkeep runs as before.
fn lower_priority(by: u8) -> Option<i32> {
    if by == 0 {
        return None;
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux a thread id names one thread: the others keep their priority.
        let me = rustix::thread::gettid();
        match rustix::process::getpriority_process(Some(me)) {
            Ok(now) => {
                let lower = now.saturating_add(i32::from(by)).min(19);
                run_at(lower);
                Some(lower)
            }
            Err(e) => {
                warn!(by, error = %e, "the upkeep thread's priority could not be read");
                None
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        warn!(by, "an upkeep priority is only set on Linux");
        None
    }
}

/// Puts the calling thread at nice value `nice` unless it runs at a lower priority already (a
/// thread starts at its creator's: the upkeep thread's blocking threads are there already).
fn run_at(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = rustix::thread::gettid();
        let set = getpriority_process(Some(me)).and_then(|now| {
            if now < nice {
                setpriority_process(Some(me), nice)
            } else {
                Ok(())
            }
        });
        if let Err(e) = set {
            warn!(nice, error = %e, "the upkeep thread's priority could not be lowered");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// What the background upkeep of one shard (checkpoints, retention, compaction) works with.
#[derive(Clone)]
pub(crate) struct Upkeep {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) shard: u32,
    pub(crate) state: Arc<RwLock<ShardState>>,
    pub(crate) cfg: Arc<LogConfig>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) stats: Arc<LogStats>,
    pub(crate) maintenance: Arc<tokio::sync::Mutex<NamedParts>>,
    /// Upkeep runs only on a shard this process may write (in a cluster, the owner's job).
    pub(crate) gate: Arc<crate::owner::Gate>,
    /// The shard view's budget: the fold publishes what it holds to its upkeep memory, and
    /// gives way past the views' floors.
    pub(crate) budget: crate::budget::ViewBudget,
}

impl Upkeep {
    /// Writes a checkpoint at the head unless the newest is there already, then applies the
    /// retention policy. Returns the newest checkpoint (`None`: the log is empty).
    pub(crate) async fn checkpoint(&self, named: &mut NamedParts) -> Result<Option<u64>, LogError> {
        let shard = self.shard;
        let (head, prev, since, footers) = self
            .state
            .read()
            .map(|s| {
                let f = s.footers.clone();
                (s.head, s.checkpoint, s.events_since_checkpoint, f)
            })
            .map_err(|_| poisoned(shard))?;
        if head == 0 || prev == Some(head) {
            return Ok(prev);
        }
        let started = tokio::time::Instant::now();
        let report = with_cause(
            Cause::Checkpoint,
            write_checkpoint_sharing(
                &self.store,
                shard,
                prev,
                head,
                self.cfg.read_concurrency,
                &self.cfg.checkpoint_parts,
                Sharing {
                    footers: Some(footers),
                    budget: Some(self.budget.clone()),
                },
            ),
        )
        .await?;
        self.stats.record_checkpoint(&report, started.elapsed());
        let users = report.users;
        if let Ok(mut s) = self.state.write() {
            s.checkpointed(head);
            s.events_since_checkpoint = s.events_since_checkpoint.saturating_sub(since);
        }
        info!(shard, segment = head, users, "checkpoint written");
        let retention = retain(
            &self.store,
            shard,
            &self.cfg.retention,
            self.clock.now(),
            named,
        );
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
/// `turns` are shared by the process's shards ([`LogConfig::upkeep_parallelism`]): the
/// checkpoint and the compaction after it each wait for a turn of their own, so another shard's
/// due checkpoint goes between them ([`crate::turns`]). An operator's `compact_now` does not
/// wait for one.
pub(crate) async fn checkpointer(
    upkeep: Upkeep,
    turns: Arc<Turns>,
    mut stop: watch::Receiver<bool>,
) {
    let (shard, cfg) = (upkeep.shard, upkeep.cfg.clone());
    let mut last = tokio::time::Instant::now();
    // The checkpoint whose segments are still to compact.
    let mut to_compact: Option<u64> = None;
    let need = |last: tokio::time::Instant, to_compact: Option<u64>| -> Option<Need> {
        let (head, prev, since) = upkeep
            .state
            .read()
            .map(|s| (s.head, s.checkpoint, s.events_since_checkpoint))
            .ok()?;
        let due = since >= cfg.checkpoint_every_events
            || (since > 0 && last.elapsed() >= cfg.checkpoint_interval);
        if upkeep.gate.held().is_none() {
            None
        } else if due && prev != Some(head) {
            Some(Need::Checkpoint { events: since })
        } else {
            to_compact.map(|_| Need::Compaction)
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.upkeep_tick) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if need(last, to_compact).is_none() {
            continue;
        }
        // Its turn: other shards' upkeep may hold the process's turns for a while.
        let asked = tokio::time::Instant::now();
        let _turn = tokio::select! {
            turn = turns.take(|| need(last, to_compact).unwrap_or(Need::Compaction)) => turn,
            _ = stop.wait_for(|s| *s) => break,
        };
        upkeep.stats.record_turn_wait(asked.elapsed());
        let mut held = upkeep.maintenance.lock().await;
        let began = tokio::time::Instant::now();
        // Asked again: the wait may have been long, and a shard handed to another server
        // meanwhile is its job.
        match need(last, to_compact) {
            None => continue,
            Some(Need::Checkpoint { .. }) => match upkeep.checkpoint(&mut held).await {
                Ok(Some(c)) => {
                    last = tokio::time::Instant::now();
                    if cfg.compaction.enabled {
                        to_compact = Some(c);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(shard, error = %e, "writing a checkpoint failed; will retry")
                }
            },
            Some(Need::Compaction) => {
                if let Some(c) = to_compact.take()
                    && let Err(e) = upkeep.compact(c, &cfg.compaction).await
                {
                    warn!(shard, error = %e, "compaction failed; will retry after the next checkpoint");
                }
            }
        }
        // Rests with the turn held (the process's upkeep pauses), not the maintenance lock
        // (an operator's compaction does not wait for it). Looked at again every tick: the
        // rest ends early once any shard of the process has fallen behind (a checkpoint's worth
        // of events since its own, this one or one waiting for the turn), or once this shard
        // is another server's.
        drop(held);
        let behind = || {
            upkeep
                .state
                .read()
                .is_ok_and(|s| s.events_since_checkpoint >= cfg.checkpoint_every_events)
                || turns.most_events_waiting() >= cfg.checkpoint_every_events
                || upkeep.gate.held().is_none()
        };
        let rest = rest_after(
            began.elapsed(),
            cfg.upkeep_duty_percent,
            cfg.checkpoint_interval / 10,
            behind(),
        );
        let resting = tokio::time::Instant::now();
        let until = resting + rest;
        let mut stopped = false;
        while !rest.is_zero() && !behind() {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(left.min(cfg.upkeep_tick)) => {}
                _ = stop.wait_for(|s| *s) => {
                    stopped = true;
                    break;
                }
            }
        }
        upkeep.stats.record_upkeep_rest(resting.elapsed());
        if stopped {
            break;
        }
    }
}

/// How long upkeep rests after a turn that worked `worked`, so that it works `duty_percent`
/// of the wall time: `worked * (100 - d) / d`, at most `cap`; none when `behind` (a checkpoint
/// is due by events: catching up comes first), or at a duty of 0 or 100 (no pacing). Under an
/// open-loop load each round of checkpoints and compaction took ~0.75 of a core from pushes for a minute or two and was
/// the slowest minute of the run (`make sustained`, 2026-12-02, run 14: 0.68 of the median);
/// resting spreads the same work over more time, as RocksDB's rate limiter paces compaction.
pub(crate) fn rest_after(
    worked: std::time::Duration,
    duty_percent: u8,
    cap: std::time::Duration,
    behind: bool,
) -> std::time::Duration {
    let d = u32::from(duty_percent);
    if behind || d == 0 || d >= 100 {
        return std::time::Duration::ZERO;
    }
    worked
        .checked_mul(100 - d)
        .map_or(cap, |w| (w / d).min(cap))
}

/// Deletes the checkpoints of a shard that the retention policy no longer keeps (by the time
/// each was written). Only checkpoints: they are derived; segments are never deleted. Parts no
/// kept manifest names are deleted by a process's upkeep, which remembers since when each was
/// unnamed ([`NamedParts`]); this call, remembering nothing, deletes none.
pub async fn apply_retention(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    policy: &retention::RetentionPolicy,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<u64>, LogError> {
    retain(store, shard, policy, now, &mut NamedParts::default()).await
}

/// A part as a manifest names it: the checkpoint that wrote it, and its digest.
type PartName = (u64, u128);

/// What retention remembers of a shard's parts between runs (held with the shard's maintenance
/// lock): the parts each manifest names, by its number (manifests are immutable: each is read
/// once per process, not every kept one at every run), and when each unnamed part was first
/// seen unnamed (the newest manifest's write time then).
#[derive(Debug, Default)]
pub(crate) struct NamedParts {
    /// By number and write time: a manifest taken back and written again under its number
    /// (by another fold) is another manifest.
    named: std::collections::HashMap<(u64, chrono::DateTime<chrono::Utc>), Arc<[PartName]>>,
    unnamed_since: std::collections::HashMap<PartName, chrono::DateTime<chrono::Utc>>,
}

/// [`apply_retention`] with the manifests already read.
async fn retain(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    policy: &retention::RetentionPolicy,
    now: chrono::DateTime<chrono::Utc>,
    named: &mut NamedParts,
) -> Result<Vec<u64>, LogError> {
    let listed = list_checkpoint_objects(store.as_ref(), shard).await?;
    // A number written in both forms (versions side by side) is one checkpoint.
    let mut written: Vec<(u64, chrono::DateTime<chrono::Utc>)> =
        listed.iter().map(|l| (l.n, l.modified)).collect();
    written.sort_by_key(|(n, at)| (*n, *at));
    written.dedup_by_key(|(n, _)| *n);
    let doomed = retention::to_delete(&written, now, policy);
    for n in &doomed {
        // The manifest first: a part is deleted only once no manifest names it.
        for path in [keys::manifest(shard, *n), keys::checkpoint(shard, *n)] {
            match object_store::ObjectStoreExt::delete(store.as_ref(), &path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(LogError::Store {
                        context: format!("delete checkpoint {n} of shard {shard}"),
                        source: e,
                    });
                }
            }
        }
    }
    if !doomed.is_empty() {
        info!(shard, deleted = ?doomed, "checkpoints past retention deleted");
    }
    let kept: Vec<_> = listed
        .iter()
        .filter(|l| l.form == crate::reader::CheckpointForm::Manifest && !doomed.contains(&l.n))
        .collect();
    let parts = delete_orphan_parts(store, shard, &kept, policy.orphan_grace, named).await?;
    if parts > 0 {
        info!(
            shard,
            parts, "checkpoint parts no kept manifest names deleted"
        );
    }
    Ok(doomed)
}

/// Deletes the parts of `shard` that none of the `kept` manifests names, written by a checkpoint
/// before the newest, and seen unnamed by an earlier run at least `grace` before the newest
/// manifest was written (both times the store's): a checkpoint another process is writing
/// names parts of a manifest retention may just have deleted, and has that long to land its
/// own manifest (which it then checks). Returns how many.
async fn delete_orphan_parts(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    kept: &[&crate::reader::CheckpointListed],
    grace: chrono::Duration,
    cache: &mut NamedParts,
) -> Result<u64, LogError> {
    let Some(newest) = kept.iter().max_by_key(|l| l.n) else {
        return Ok(0);
    };
    cache
        .named
        .retain(|key, _| kept.iter().any(|l| (l.n, l.modified) == *key));
    let mut named = std::collections::HashSet::new();
    for l in kept {
        if let Some(parts) = cache.named.get(&(l.n, l.modified)) {
            named.extend(parts.iter().copied());
            continue;
        }
        match crate::reader::open_checkpoint_as(
            store.as_ref(),
            shard,
            l.n,
            crate::reader::CheckpointForm::Manifest,
        )
        .await
        {
            Ok(Checkpoint::Parts(m)) => {
                let parts: Arc<[PartName]> = m.parts().map(|p| (p.written_by, p.digest)).collect();
                named.extend(parts.iter().copied());
                cache.named.insert((l.n, l.modified), parts);
            }
            Ok(Checkpoint::Whole { .. }) => {}
            // Deleted since the listing (another process's retention): it names nothing now.
            Err(LogError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    let parts: Vec<_> = store
        .list(Some(&keys::parts_prefix(shard)))
        .try_collect()
        .await
        .map_err(|e| LogError::Store {
            context: format!("list the checkpoint parts of shard {shard}"),
            source: e,
        })?;
    let mut deleted = 0;
    let mut unnamed_now = std::collections::HashMap::new();
    for o in parts {
        let Some(keys::Key::Part {
            shard: s,
            n,
            digest,
        }) = keys::parse(&o.location)
        else {
            continue;
        };
        if s != shard || n >= newest.n || named.contains(&(n, digest)) {
            continue;
        }
        match cache.unnamed_since.get(&(n, digest)).copied() {
            Some(since) if since + grace <= newest.modified => {}
            // First seen unnamed now, or not long enough ago: remembered, deleted later.
            since => {
                unnamed_now.insert((n, digest), since.unwrap_or(newest.modified));
                continue;
            }
        }
        match object_store::ObjectStoreExt::delete(store.as_ref(), &o.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => {
                return Err(LogError::Store {
                    context: format!("delete checkpoint part {}", o.location),
                    source: e,
                });
            }
        }
    }
    cache.unnamed_since = unnamed_now;
    Ok(deleted)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::{UpkeepThread, rest_after};

    #[test]
    fn upkeep_rests_for_its_duty_within_the_cap_and_not_when_behind() {
        let s = Duration::from_secs;
        let cap = s(30);
        assert_eq!(rest_after(s(10), 50, cap, false), s(10));
        assert_eq!(rest_after(s(10), 25, cap, false), s(30));
        assert_eq!(rest_after(s(4), 80, cap, false), s(1));
        assert_eq!(rest_after(s(20), 25, cap, false), cap, "capped");
        assert_eq!(rest_after(s(10), 100, cap, false), Duration::ZERO);
        assert_eq!(rest_after(s(10), 50, cap, true), Duration::ZERO, "behind");
        assert_eq!(
            rest_after(s(1), 0, cap, false),
            Duration::ZERO,
            "0: no pacing"
        );
        assert_eq!(rest_after(s(1), 1, s(1000), false), s(99));
        assert_eq!(
            rest_after(Duration::MAX, 50, cap, false),
            cap,
            "no overflow"
        );
    }

    fn nice_here() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(-100)
    }

    #[tokio::test]
    async fn upkeep_threads_run_at_their_priority_and_no_other_does() {
        let before = nice_here();
        let upkeep = UpkeepThread::start(4, None).expect("start");
        let lowered = (before + 4).min(19);
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(upkeep.spawn(async move {
            let on_runtime = nice_here();
            let blocking = tokio::task::spawn_blocking(nice_here).await.unwrap_or(-100);
            let _ = tx.send((on_runtime, blocking));
        }));
        let (on_runtime, blocking) = rx.await.expect("the upkeep task ran");
        assert_eq!(on_runtime, lowered, "the upkeep runtime's thread");
        assert_eq!(blocking, lowered, "its blocking threads");
        assert_eq!(
            nice_here(),
            before,
            "the caller's thread keeps its priority"
        );
    }

    thread_local! {
        static STARTED_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn mark() {
        STARTED_HERE.with(|m| m.set(true));
    }

    #[tokio::test]
    async fn every_upkeep_thread_runs_the_start_hook_and_no_other_does() {
        let upkeep = UpkeepThread::start(0, Some(mark)).expect("start");
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(upkeep.spawn(async move {
            let on_runtime = STARTED_HERE.with(|m| m.get());
            let blocking = tokio::task::spawn_blocking(|| STARTED_HERE.with(|m| m.get()))
                .await
                .unwrap_or(false);
            let _ = tx.send((on_runtime, blocking));
        }));
        let (on_runtime, blocking) = rx.await.expect("the upkeep task ran");
        assert!(on_runtime, "the upkeep runtime's thread ran the hook");
        assert!(blocking, "its blocking threads ran the hook");
        assert!(
            !STARTED_HERE.with(|m| m.get()),
            "the caller's thread did not"
        );
    }
}
