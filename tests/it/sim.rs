//! A seeded simulation of the log, after slatedb's deterministic simulation.
//!
//! Two `Log` processes share one in-memory store, each through its own [`FaultyStore`], so that
//! faults hit one process at a time. A seeded generator picks every step: pushes (put, patch,
//! delete of any item of a user, whichever process created it; with and without `base_version`;
//! resends of changes still pending and of changes already acknowledged), pushes of both
//! processes at once, checkpoints and compaction (`Log::compact_now`), checkpoint retention,
//! store faults at the durability boundaries (a PUT that fails before landing, one that lands
//! then errors, failing read-backs, GETs, LISTs and deletes), crashes (plain, with a push held
//! before its PUT, with a push whose PUT landed but was not acknowledged, with a compaction held
//! before or after writing its history object) and restarts, restores of a user to a seq or a
//! time (`keepsake::restore::restore_user`), and reads (`user_events`, `items_at`).
//!
//! A model keeps what was acknowledged: every change answered `applied` or `duplicate`, with its
//! seq and version. A retryable error means "maybe landed": the change stays pending and is sent
//! again later, as a device does, until it is answered. Every few steps a third reader (the
//! store read directly: `scan_shard`, `verify_store`) checks:
//! - every acknowledged change is in the log exactly once, with its acknowledged seq and version;
//! - every user's seqs are dense from 1 and no change id appears twice (`UserState::replay`);
//! - every event is one that was sent (or written by a restore that was asked for);
//! - `verify_store` reports nothing once every writer has re-read its shards (an empty push
//!   each; a writer settles a PUT it could not confirm then): a `stray_segment` only after a
//!   crash between a segment PUT that landed and its answer, or while a writer held a PUT it
//!   could not confirm (seed 243 of 0..500), the ways a writer leaves one (compaction then
//!   removes it);
//! - each process's view of every user equals the fold of the log up to that process's head.
//!
//! At the end every pending change is resent until answered, both processes restart, and both
//! must agree with the log. Every check fails the run. (`KEEPSAKE_SIM_LENIENT=1` only counts
//! the answers the audit issue named — a process that is behind answering a resend with a
//! conflict or `not_found` instead of `duplicate`, or restoring from its own stale view — as
//! it did while they were open; they are fixed, and a strict run finds none.)
//!
//! `KEEPSAKE_SIM_SEEDS=a..b` (default `0..8`), `KEEPSAKE_SIM_SEED=n` (one seed: the replay of a
//! failure), `KEEPSAKE_SIM_STEPS` (default 100), `KEEPSAKE_SIM_CHECK_EVERY` (default 10),
//! `KEEPSAKE_SIM_TRACE=1` (print every step of a failing seed, not only the last 40),
//! `KEEPSAKE_SIM_NO_RETENTION=1` (no checkpoint retention; by default it keeps only the newest
//! checkpoint, so one process deletes checkpoints the other still reads from). A failure
//! names its seed and step. Time and task scheduling are real, so a replay takes the same steps
//! but may interleave concurrent ones differently: deterministic-ish.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use keepsake::restore::{RestoreError, Spec, restore_user};
use keepsake_log::retention::RetentionPolicy;
use keepsake_log::{
    CompactionPolicy, Log, LogConfig, LogError, Mark, PushRequest, PushResult, UpTo,
    apply_retention, list_layout, scan_shard, verify::verify_store,
};
use keepsake_model::{
    Change, ChangeBody, ChangeId, ChangeRef, Clock, DeviceId, Document, Event, EventMeta, ItemId,
    ItemState, Kind, Origin, Outcome, RandomIds, RestoreId, StateRead, SystemClock, UserId,
    UserState,
};
use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
use keepsake_tests::{Backend, store};
use object_store::ObjectStore;
use serde_json::json;
use uuid::Uuid;

/// A small seeded generator (splitmix64): the same seed gives the same steps.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn uuid(&mut self) -> Uuid {
        let bytes = (u128::from(self.next()) << 64 | u128::from(self.next())).to_le_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// What the simulation runs, from the environment.
#[derive(Clone, Debug)]
struct Settings {
    seeds: std::ops::Range<u64>,
    steps: usize,
    check_every: usize,
    strict: bool,
    trace_all: bool,
    retention: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Settings {
    fn from_env() -> Self {
        let seeds = if let Some(n) = env_u64("KEEPSAKE_SIM_SEED") {
            n..n + 1
        } else if let Ok(r) = std::env::var("KEEPSAKE_SIM_SEEDS") {
            let (a, b) = r
                .split_once("..")
                .expect("KEEPSAKE_SIM_SEEDS is a range a..b");
            a.trim().parse().expect("seed range start")..b.trim().parse().expect("seed range end")
        } else {
            0..8
        };
        let flag = |name| std::env::var(name).is_ok_and(|v| v == "1");
        Self {
            seeds,
            steps: env_u64("KEEPSAKE_SIM_STEPS").map_or(100, |n| n as usize),
            check_every: env_u64("KEEPSAKE_SIM_CHECK_EVERY").map_or(10, |n| (n as usize).max(1)),
            strict: !flag("KEEPSAKE_SIM_LENIENT"),
            trace_all: flag("KEEPSAKE_SIM_TRACE"),
            retention: !flag("KEEPSAKE_SIM_NO_RETENTION"),
        }
    }
}

/// One process: a `Log` on its own fault-injecting handle of the shared store.
struct Proc {
    faulty: Arc<FaultyStore>,
    log: Arc<Log>,
    cfg: LogConfig,
}

impl Proc {
    async fn open(
        base: &Arc<dyn ObjectStore>,
        shards: u32,
        cfg: LogConfig,
    ) -> Result<Self, String> {
        let faulty = FaultyStore::new(base.clone());
        let store: Arc<dyn ObjectStore> = faulty.clone();
        let log = Log::open(
            store,
            Some(shards),
            cfg.clone(),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
        )
        .await
        .map_err(|e| format!("open failed: {e:?}"))?;
        Ok(Self {
            faulty,
            log: Arc::new(log),
            cfg,
        })
    }
}

/// The log as the store holds it, read directly (the third reader).
struct Truth {
    heads: Vec<u64>,
    /// Per user, its events in log order, each with the segment that holds it.
    events: HashMap<UserId, Vec<(u64, Event)>>,
}

impl Truth {
    fn user_events(&self, u: &UserId, upto_segment: u64) -> Vec<Event> {
        self.events
            .get(u)
            .map(|evs| {
                evs.iter()
                    .filter(|(n, _)| *n <= upto_segment)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn all_events(&self, u: &UserId) -> Vec<Event> {
        self.user_events(u, u64::MAX)
    }
}

/// Things the open issue names, seen by the simulation: counted, not failed (unless strict).
#[derive(Default, Debug, Clone)]
struct Known {
    /// A resend of a change that is in the log, answered conflict or rejected by a process that
    /// was behind (it should be `duplicate`).
    stale_refusals: u64,
    /// A restore computed by a process that was behind, which left the user unlike the target.
    stale_restores: u64,
}

/// Counts of what the run did.
#[derive(Default, Debug, Clone)]
struct Tally {
    pushes: u64,
    acked: u64,
    retryable: u64,
    crashes: u64,
    compactions: u64,
    restores: u64,
    checks: u64,
    faults: u64,
    /// Verify runs that failed because a compaction deleted a segment they had listed.
    verify_races: u64,
    /// Reads where a mark taken earlier (by either process) vouched that its user had not
    /// changed since, and the log agreed.
    marks_vouched: u64,
    known: Known,
}

struct Sim {
    seed: u64,
    rng: Rng,
    base: Arc<dyn ObjectStore>,
    shards: u32,
    procs: Vec<Proc>,
    users: Vec<UserId>,
    items: HashMap<UserId, Vec<(ItemId, Kind)>>,
    /// Every change a device sent, by id: what a resend sends again.
    sent: HashMap<ChangeId, (UserId, Change)>,
    acked: HashMap<ChangeId, (UserId, ChangeRef)>,
    pending: Vec<(UserId, Change)>,
    known_version: HashMap<ItemId, u64>,
    /// Changes answered conflict or rejected: (user, change, was the process current).
    refused: Vec<(UserId, ChangeId, bool)>,
    refused_counted: HashSet<ChangeId>,
    restores: HashSet<RestoreId>,
    /// The newest mark a read took of each user (`Log::user_marked`), with the user's last seq
    /// at it: what a pull's token carries.
    marks: HashMap<UserId, (Mark, u64)>,
    /// A crash came between a segment PUT that landed and its answer (a stray is possible).
    crashed_after_landing: bool,
    strict: bool,
    /// Checkpoint retention that deletes all but the newest checkpoint (a known hole).
    retention: bool,
    step: usize,
    trace: Arc<Mutex<Vec<String>>>,
    tally: Tally,
}

type Step<T> = Result<T, String>;

fn item_summary(s: &UserState) -> Vec<ItemState> {
    let mut items: Vec<ItemState> = s.items().cloned().collect();
    items.sort_by_key(|i| i.item_id);
    items
}

fn live(s: &UserState) -> BTreeMap<ItemId, (Kind, Option<Document>)> {
    s.items()
        .filter(|i| !i.deleted)
        .map(|i| (i.item_id, (i.kind, i.document.clone())))
        .collect()
}

fn replay(events: &[Event]) -> Step<UserState> {
    UserState::replay(events).map_err(|e| format!("the log does not fold: {e}"))
}

fn outcome_short(o: &Outcome) -> String {
    match o {
        Outcome::Applied(r) => format!("A(s{} v{})", r.seq, r.version),
        Outcome::Duplicate(r) => format!("D(s{} v{})", r.seq, r.version),
        Outcome::Conflict(i) => format!("C(v{})", i.version),
        Outcome::Rejected { code, .. } => format!("R({})", code.as_str()),
    }
}

impl Sim {
    async fn new(seed: u64, trace: Arc<Mutex<Vec<String>>>, settings: &Settings) -> Step<Self> {
        let mut rng = Rng::new(seed);
        let ts = store(Backend::Memory).await.map_err(|e| e.to_string())?;
        let base = ts.store.clone();
        let shards = 1 + rng.below(2) as u32;
        let users = (0..3 + rng.below(4)).map(|_| UserId(rng.uuid())).collect();
        let max_events = 4 + rng.below(40);
        let mut procs = Vec::new();
        let mut described = Vec::new();
        for _ in 0..2 {
            let tiny_view = rng.chance(30);
            let background = rng.chance(25);
            let drop_checkpoints = rng.chance(30) && settings.retention;
            // Sealed filter blocks go to runs 1, 2 or 3 at a time, or 64 (the default: the
            // short histories here then make no runs): rows cut at any block, and two
            // processes of different units on one store.
            let run_blocks = [1, 2, 3, 64][rng.below(4) as usize];
            let cfg = LogConfig {
                commit_window: Duration::from_millis(1),
                retry_backoff: Duration::from_millis(1),
                store: keepsake_store::RetryPolicy {
                    backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(4),
                    ..Default::default()
                },
                view_memory_bytes: if tiny_view { 4 * 1024 } else { 64 << 20 },
                checkpoint_every_events: if background { 6 } else { u64::MAX },
                checkpoint_interval: Duration::from_secs(3600),
                retention: if drop_checkpoints {
                    RetentionPolicy {
                        keep_all_for: chrono::Duration::zero(),
                        keep_daily_for_days: 0,
                        ..Default::default()
                    }
                } else {
                    RetentionPolicy::default()
                },
                compaction: CompactionPolicy {
                    enabled: background,
                    min_segments: 1,
                    max_events,
                },
                checkpoint_parts: keepsake_log::PartsPolicy {
                    run_blocks,
                    ..Default::default()
                },
                ..LogConfig::default()
            };
            described.push(format!(
                "tiny_view={tiny_view} background={background} drop_checkpoints={drop_checkpoints} run_blocks={run_blocks}"
            ));
            procs.push(Proc::open(&base, shards, cfg).await?);
        }
        let sim = Self {
            seed,
            rng,
            base,
            shards,
            procs,
            users,
            items: HashMap::new(),
            sent: HashMap::new(),
            acked: HashMap::new(),
            pending: Vec::new(),
            known_version: HashMap::new(),
            refused: Vec::new(),
            refused_counted: HashSet::new(),
            restores: HashSet::new(),
            marks: HashMap::new(),
            crashed_after_landing: false,
            strict: settings.strict,
            retention: settings.retention,
            step: 0,
            trace,
            tally: Tally::default(),
        };
        sim.note(format!(
            "seed {seed}: {shards} shard(s), {} users, history objects of <= {max_events} events; p0 {}; p1 {}",
            sim.users.len(),
            described[0],
            described[1]
        ));
        Ok(sim)
    }

    fn note(&self, line: String) {
        if let Ok(mut t) = self.trace.lock() {
            t.push(line);
        }
    }

    fn shard_of(&self, u: &UserId) -> u32 {
        keepsake_store::keys::shard_for(u, self.shards)
    }

    async fn store_head(&self, shard: u32) -> Step<u64> {
        list_layout(self.base.as_ref(), shard)
            .await
            .map(|l| l.head())
            .map_err(|e| format!("listing the store failed: {e:?}"))
    }

    /// Whether process `p` holds every segment of `u`'s shard that the store holds.
    async fn current(&self, p: usize, u: &UserId) -> Step<bool> {
        let shard = self.shard_of(u);
        Ok(self.procs[p].log.head(shard) == self.store_head(shard).await?)
    }

    fn meta(&self) -> EventMeta {
        EventMeta {
            device_id: Some(DeviceId(Uuid::from_u128(0xD))),
            origin: Origin::Device,
            request_id: None,
            restore_id: None,
        }
    }

    fn new_change(&mut self, u: UserId) -> Change {
        let step = self.step;
        let items = self.items.entry(u).or_default();
        let fresh = items.is_empty() || self.rng.chance(25);
        let (item_id, mut kind) = if fresh {
            let kind = if self.rng.chance(50) {
                Kind::Note
            } else {
                Kind::Task
            };
            let id = ItemId(self.rng.uuid());
            items.push((id, kind));
            (id, kind)
        } else {
            items[self.rng.index(items.len())]
        };
        if !fresh && self.rng.chance(3) {
            kind = if kind == Kind::Note {
                Kind::Task
            } else {
                Kind::Note
            };
        }
        // A create (DAV's If-None-Match: *) now and then, new item or not: it applies only
        // while the item is absent, across batches, processes and faults alike.
        let body = match (fresh, self.rng.below(12)) {
            (_, 10..=11) => ChangeBody::Create {
                document: Document::from_value(&json!({"a": self.rng.below(3), "step": step})),
            },
            (true, _) | (false, 0..=3) => ChangeBody::put(json!({
                "a": self.rng.below(3), "b": self.rng.below(3), "step": step
            })),
            (false, 4..=7) => ChangeBody::patch(match self.rng.below(3) {
                0 => json!({"a": self.rng.below(3)}),
                1 => json!({"b": null}),
                _ => json!({"c": step}),
            }),
            _ => ChangeBody::Delete,
        };
        let base_version = match self.rng.below(4) {
            0 | 1 => None,
            2 => Some(self.known_version.get(&item_id).copied().unwrap_or(1)),
            _ => Some(1 + self.rng.below(4)),
        };
        let c = Change {
            change_id: ChangeId(self.rng.uuid()),
            kind,
            item_id,
            base_version,
            body,
        };
        self.sent.insert(c.change_id, (u, c.clone()));
        c
    }

    fn request(&self, u: UserId, changes: Vec<Change>) -> PushRequest {
        PushRequest {
            user_id: u,
            meta: self.meta(),
            changes,
            confirm_mass_delete: false,
        }
    }

    /// The changes of one push of user `u`: new ones, and sometimes its pending ones.
    fn changes_for(&mut self, u: UserId) -> Vec<Change> {
        let mut changes: Vec<Change> = (0..1 + self.rng.below(3))
            .map(|_| self.new_change(u))
            .collect();
        if self.rng.chance(25) {
            changes.extend(self.take_pending(u));
        }
        changes
    }

    /// Up to three pending changes of `u`, taken off the pending list (a failed push puts
    /// them back).
    fn take_pending(&mut self, u: UserId) -> Vec<Change> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.pending.len() && out.len() < 3 {
            if self.pending[i].0 == u {
                out.push(self.pending.remove(i).1);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Records the answer to a push of `changes` for `u` by process `p`.
    async fn record(
        &mut self,
        p: usize,
        u: UserId,
        changes: &[Change],
        answer: Result<PushResult, LogError>,
    ) -> Step<String> {
        self.tally.pushes += 1;
        let r = match answer {
            Ok(r) => r,
            Err(e) if e.is_retryable() => {
                self.tally.retryable += 1;
                for c in changes {
                    if !self.pending.iter().any(|(_, x)| x.change_id == c.change_id) {
                        self.pending.push((u, c.clone()));
                    }
                }
                return Ok(format!("retryable: {e}"));
            }
            Err(e) => {
                return Err(format!(
                    "p{p}: a push failed with a non-retryable error: {e:?}"
                ));
            }
        };
        if r.outcomes.len() != changes.len() {
            return Err(format!(
                "p{p}: {} outcomes for {} changes",
                r.outcomes.len(),
                changes.len()
            ));
        }
        let current = self.current(p, &u).await?;
        let mut out = Vec::new();
        for (c, o) in changes.iter().zip(&r.outcomes) {
            out.push(outcome_short(o));
            self.pending.retain(|(_, x)| x.change_id != c.change_id);
            match o {
                Outcome::Applied(x) | Outcome::Duplicate(x) => {
                    if x.item_id != c.item_id {
                        return Err(format!("p{p}: {o:?} names another item than {c:?}"));
                    }
                    if let Some((_, before)) = self.acked.get(&c.change_id) {
                        if matches!(o, Outcome::Applied(_)) {
                            return Err(format!(
                                "p{p}: change {:?} applied again after it was acknowledged as {before:?}: {o:?}",
                                c.change_id
                            ));
                        }
                        if before != x {
                            return Err(format!(
                                "p{p}: change {:?} acknowledged as {before:?}, now answered {o:?}",
                                c.change_id
                            ));
                        }
                    } else {
                        self.tally.acked += 1;
                        self.acked.insert(c.change_id, (u, *x));
                    }
                    let v = self.known_version.entry(c.item_id).or_default();
                    *v = (*v).max(x.version);
                }
                Outcome::Conflict(_) | Outcome::Rejected { .. } => {
                    if let Outcome::Conflict(i) = o {
                        self.known_version.insert(i.item_id, i.version);
                    }
                    if self.acked.contains_key(&c.change_id) && current {
                        return Err(format!(
                            "p{p}, current with the store, answered an acknowledged change {:?} with {o:?}",
                            c.change_id
                        ));
                    }
                    self.refused.push((u, c.change_id, current));
                }
            }
        }
        Ok(format!("ok seq {} [{}]", r.last_seq, out.join(" ")))
    }

    fn describe(changes: &[Change]) -> String {
        changes
            .iter()
            .map(|c| {
                let op = match c.body {
                    ChangeBody::Put { .. } => "put",
                    ChangeBody::Create { .. } => "create",
                    ChangeBody::Patch { .. } => "patch",
                    ChangeBody::Delete => "del",
                };
                let base = c.base_version.map_or("-".into(), |b| b.to_string());
                let item = c.item_id.0.as_simple().to_string();
                format!("{op} {}/{} b{base}", &item[..6], c.kind.as_str())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn user_label(&self, u: &UserId) -> String {
        let i = self.users.iter().position(|x| x == u).unwrap_or(usize::MAX);
        format!("u{i}/s{}", self.shard_of(u))
    }

    async fn push_step(&mut self, p: usize, u: UserId, changes: Vec<Change>) -> Step<String> {
        let what = format!(
            "push p{p} {} [{}]",
            self.user_label(&u),
            Self::describe(&changes)
        );
        let answer = self.procs[p]
            .log
            .push(self.request(u, changes.clone()))
            .await;
        let r = self.record(p, u, &changes, answer).await?;
        Ok(format!("{what} -> {r}"))
    }

    fn inject_push_fault(&mut self, p: usize) -> String {
        self.tally.faults += 1;
        let f = &self.procs[p].faulty;
        match self.rng.below(8) {
            0 => {
                let n = 1 + self.rng.below(2) as usize;
                f.inject(FaultOp::Put, "/segments/", Fault::Fail, n);
                format!("segment PUT fails x{n}")
            }
            7 => {
                let n = 1 + self.rng.below(3) as usize;
                f.inject(FaultOp::Get, "/frontier/", Fault::Fail, n);
                format!("frontier GET (the PUT's confirmation) fails x{n}")
            }
            1 => {
                f.inject(FaultOp::Put, "/segments/", Fault::Fail, 3);
                "segment PUT fails x3 (every attempt)".into()
            }
            2 => {
                f.inject(FaultOp::Put, "/segments/", Fault::FailAfter, 1);
                "segment PUT lands then errors".into()
            }
            3 => {
                f.inject(FaultOp::Put, "/segments/", Fault::FailAfter, 1);
                f.inject(FaultOp::Get, "/segments/", Fault::Fail, 3);
                "segment PUT lands then errors, read-backs fail".into()
            }
            4 => {
                let n = 1 + self.rng.below(3) as usize;
                f.inject(FaultOp::Get, "", Fault::Fail, n);
                format!("GET fails x{n}")
            }
            5 => {
                let n = 1 + self.rng.below(2) as usize;
                f.inject(FaultOp::List, "", Fault::Fail, n);
                format!("LIST fails x{n}")
            }
            _ => {
                f.inject(FaultOp::List, "", Fault::OmitLast, 1);
                "LIST omits its last object".into()
            }
        }
    }

    fn inject_compaction_fault(&mut self, p: usize) -> Option<String> {
        let f = &self.procs[p].faulty;
        let what = match self.rng.below(11) {
            0 => {
                f.inject(FaultOp::Put, "/history/", Fault::Fail, 1);
                "history PUT fails"
            }
            1 => {
                f.inject(FaultOp::Put, "/history/", Fault::FailAfter, 1);
                "history PUT lands then errors"
            }
            2 => {
                f.inject(FaultOp::Get, "/history/", Fault::Fail, 2);
                "history GETs fail x2"
            }
            3 => {
                f.inject(FaultOp::Delete, "/segments/", Fault::Fail, 2);
                "segment deletes fail x2"
            }
            4 => {
                f.inject(FaultOp::Delete, "/history/", Fault::Fail, 1);
                "history delete fails"
            }
            5 => {
                f.inject(FaultOp::Put, "/checkpoints/", Fault::Fail, 1);
                "checkpoint PUT fails"
            }
            6 => {
                f.inject(FaultOp::List, "", Fault::OmitLast, 1);
                "LIST omits its last object"
            }
            7 => {
                f.inject(FaultOp::Put, "/frontier/", Fault::Fail, 1);
                "frontier PUT fails"
            }
            8 => {
                f.inject(FaultOp::Put, "/frontier/", Fault::FailAfter, 1);
                "frontier PUT lands then errors"
            }
            _ => return None,
        };
        self.tally.faults += 1;
        Some(what.into())
    }

    fn clear_faults(&self) {
        for p in &self.procs {
            p.faulty.clear();
        }
    }

    fn random_user(&mut self) -> UserId {
        self.users[self.rng.index(self.users.len())]
    }

    /// A user on the same shard as `u` (maybe `u`).
    fn neighbour(&mut self, u: UserId) -> UserId {
        let shard = self.shard_of(&u);
        let same: Vec<UserId> = self
            .users
            .iter()
            .copied()
            .filter(|x| self.shard_of(x) == shard)
            .collect();
        same[self.rng.index(same.len())]
    }

    async fn step(&mut self) -> Step<String> {
        let p = self.rng.index(2);
        let roll = self.rng.below(100);
        match roll {
            0..=33 => {
                let u = self.random_user();
                let changes = self.changes_for(u);
                self.push_step(p, u, changes).await
            }
            34..=43 => {
                let i = self.rng.index(self.pending.len().max(1));
                let Some(&(u, _)) = self.pending.get(i) else {
                    let u = self.random_user();
                    let changes = self.changes_for(u);
                    return self.push_step(p, u, changes).await;
                };
                let changes = self.take_pending(u);
                let r = self.push_step(p, u, changes).await?;
                Ok(format!("resend: {r}"))
            }
            44..=47 => {
                // A device that never got the answer sends an acknowledged change again.
                let mut ids: Vec<ChangeId> = self
                    .acked
                    .keys()
                    .filter(|id| self.sent.contains_key(id))
                    .copied()
                    .collect();
                if ids.is_empty() {
                    return Ok("resend acked: none yet".into());
                }
                ids.sort();
                let id = ids[self.rng.index(ids.len())];
                let (u, change) = self.sent[&id].clone();
                let r = self.push_step(p, u, vec![change]).await?;
                Ok(format!("resend acked: {r}"))
            }
            48..=56 => self.concurrent_step().await,
            57..=69 => {
                let fault = self.inject_push_fault(p);
                let u = self.random_user();
                let changes = self.changes_for(u);
                let r = self.push_step(p, u, changes).await;
                self.clear_faults();
                let r = r.map_err(|e| format!("with a fault on p{p} ({fault}): {e}"))?;
                Ok(format!("fault on p{p}: {fault}; {r}"))
            }
            70..=77 => {
                let fault = self.inject_compaction_fault(p);
                let r = self.procs[p].log.compact_now().await;
                self.clear_faults();
                self.tally.compactions += 1;
                match (r, &fault) {
                    (Ok(r), _) => Ok(format!(
                        "compact p{p} ({}): {} segments into {} objects, {} deleted",
                        fault.as_deref().unwrap_or("no fault"),
                        r.segments,
                        r.written,
                        r.deleted
                    )),
                    (Err(e), Some(f)) => Ok(format!("compact p{p} ({f}): failed: {e}")),
                    (Err(e), None) => Err(format!("compact p{p} without a fault failed: {e:?}")),
                }
            }
            78..=82 => self.crash_step(p).await,
            83..=88 => self.restore_step(p).await,
            89..=91 if self.retention => {
                let shard = self.rng.below(u64::from(self.shards)) as u32;
                let store: Arc<dyn ObjectStore> = self.procs[p].faulty.clone();
                let policy = RetentionPolicy {
                    keep_all_for: chrono::Duration::zero(),
                    keep_daily_for_days: 0,
                    ..Default::default()
                };
                let r = apply_retention(&store, shard, &policy, SystemClock.now()).await;
                Ok(format!(
                    "retention on p{p}, shard {shard}, keeping only the newest checkpoint: {r:?}"
                ))
            }
            _ => self.read_step(p).await,
        }
    }

    /// Both processes at once: two pushes on one shard, or a push and a compaction.
    async fn concurrent_step(&mut self) -> Step<String> {
        let u0 = self.random_user();
        let u1 = self.neighbour(u0);
        let c0 = self.changes_for(u0);
        let (l0, l1) = (self.procs[0].log.clone(), self.procs[1].log.clone());
        if self.rng.chance(70) {
            let c1 = self.changes_for(u1);
            let (r0, r1) = tokio::join!(
                l0.push(self.request(u0, c0.clone())),
                l1.push(self.request(u1, c1.clone()))
            );
            let a = self.record(0, u0, &c0, r0).await?;
            let b = self.record(1, u1, &c1, r1).await?;
            Ok(format!(
                "together: p0 {} [{}] -> {a} | p1 {} [{}] -> {b}",
                self.user_label(&u0),
                Self::describe(&c0),
                self.user_label(&u1),
                Self::describe(&c1)
            ))
        } else {
            let (r0, r1) = tokio::join!(l0.push(self.request(u0, c0.clone())), l1.compact_now());
            self.tally.compactions += 1;
            let a = self.record(0, u0, &c0, r0).await?;
            let r1 = r1.map_err(|e| format!("p1 compaction beside a push failed: {e:?}"))?;
            Ok(format!(
                "together: p0 {} [{}] -> {a} | p1 compacts: {} segments",
                self.user_label(&u0),
                Self::describe(&c0),
                r1.segments
            ))
        }
    }

    /// Process `p` stops without answering (or, once in a while, shuts down cleanly) and opens
    /// again on the same store.
    async fn crash_step(&mut self, p: usize) -> Step<String> {
        self.tally.crashes += 1;
        let variant = self.rng.below(6);
        let log = self.procs[p].log.clone();
        let faulty = self.procs[p].faulty.clone();
        // A writer holding a PUT it could not confirm settles it at its next re-read; stopping
        // it now may leave a stray (never acknowledged), which only a compaction removes.
        if keepsake_log::LogStats::get(&log.stats().unconfirmed_puts) > 0 {
            self.crashed_after_landing = true;
        }
        let what = match variant {
            0 => {
                log.abort_writers();
                "crash".to_string()
            }
            1 | 2 => {
                let u = self.random_user();
                let changes = self.changes_for(u);
                let gate = if variant == 1 {
                    faulty.hold(FaultOp::Put, "/segments/")
                } else {
                    faulty.inject(FaultOp::Put, "/segments/", Fault::FailAfter, 1);
                    faulty.hold(FaultOp::Get, "/segments/")
                };
                let mut task = tokio::spawn({
                    let (log, req) = (log.clone(), self.request(u, changes.clone()));
                    async move { log.push(req).await }
                });
                let early = tokio::select! {
                    _ = gate.reached() => None,
                    answer = &mut task => Some(answer),
                };
                let reached = early.is_none();
                log.abort_writers();
                gate.release();
                let answer = match early {
                    Some(answer) => answer,
                    None => task.await,
                }
                .map_err(|e| format!("push task failed: {e}"))?;
                if variant == 2 && reached {
                    self.crashed_after_landing = true;
                }
                let r = self.record(p, u, &changes, answer).await?;
                format!(
                    "crash with a push {} [{}] held at its {} ({}): {r}",
                    self.user_label(&u),
                    Self::describe(&changes),
                    if variant == 1 {
                        "segment PUT"
                    } else {
                        "read-back after its PUT landed"
                    },
                    if reached {
                        "reached"
                    } else {
                        "answered before"
                    }
                )
            }
            3 | 4 => {
                let gate = if variant == 3 {
                    faulty.hold(FaultOp::Put, "/history/")
                } else {
                    faulty.inject(FaultOp::Put, "/history/", Fault::FailAfter, 1);
                    faulty.hold(FaultOp::Get, "/history/")
                };
                let mut task = tokio::spawn({
                    let log = log.clone();
                    async move { log.compact_now().await }
                });
                let reached = tokio::select! {
                    _ = gate.reached() => true,
                    _ = &mut task => false,
                };
                log.abort_writers();
                gate.release();
                if reached {
                    task.abort();
                    let _ = task.await;
                }
                format!(
                    "crash during a compaction held {} ({})",
                    if variant == 3 {
                        "at its history PUT"
                    } else {
                        "at the read-back of its history object"
                    },
                    if reached {
                        "reached"
                    } else {
                        "it ended before"
                    }
                )
            }
            _ => {
                log.shutdown().await;
                "clean restart".to_string()
            }
        };
        drop(log);
        let cfg = self.procs[p].cfg.clone();
        // The old handle goes first: its tasks are stopped, nothing of it runs on.
        let old = std::mem::replace(
            &mut self.procs[p],
            Proc::open(&self.base, self.shards, cfg).await?,
        );
        old.log.abort_writers();
        Ok(format!("p{p}: {what}; reopened"))
    }

    async fn restore_step(&mut self, p: usize) -> Step<String> {
        self.tally.restores += 1;
        let u = self.random_user();
        let truth = self.read_truth().await?;
        let events = truth.all_events(&u);
        let at = if events.is_empty() || self.rng.chance(50) {
            UpTo::Seq(self.rng.below(events.len() as u64 + 1))
        } else {
            UpTo::Time(events[self.rng.index(events.len())].recorded_at)
        };
        let upto: Vec<Event> = events
            .iter()
            .filter(|e| match at {
                UpTo::Seq(n) => e.seq <= n,
                UpTo::Time(t) => e.recorded_at <= t,
                UpTo::End => true,
            })
            .cloned()
            .collect();
        let target = live(&replay(&upto)?);
        let id = RestoreId(self.rng.uuid());
        self.restores.insert(id);
        let spec = Spec {
            at,
            as_of: None,
            as_of_seq: None,
            kinds: None,
            reason: format!("simulation seed {} step {}", self.seed, self.step),
        };
        let label = format!("restore p{p} {} to {at:?}", self.user_label(&u));
        for attempt in 0..10 {
            // Alternate processes after a few failures, as an operator might.
            let q = if attempt < 5 { p } else { 1 - p };
            let current = self.current(q, &u).await?;
            let log = self.procs[q].log.clone();
            match restore_user(&log, &SystemClock, u, &spec, Some(id), false, None, None).await {
                Ok(done) => {
                    let truth = self.read_truth().await?;
                    let events = truth.all_events(&u);
                    for e in events.iter().filter(|e| e.restore_id == Some(id)) {
                        let r = ChangeRef {
                            item_id: e.item_id,
                            version: e.version,
                            seq: e.seq,
                        };
                        self.acked.entry(e.change_id).or_insert((u, r));
                    }
                    // Steps run one at a time: nothing but the restore wrote since it began.
                    let got = live(&replay(&events)?);
                    if got != target {
                        if current {
                            return Err(format!(
                                "{label}: p{q} was current, yet after the restore (seq {}) the user's items are {got:?}, not the target {target:?}",
                                done.seq
                            ));
                        }
                        self.tally.known.stale_restores += 1;
                        if self.strict {
                            return Err(format!(
                                "{label}: p{q} was behind and restored from its own view: {got:?} != {target:?}"
                            ));
                        }
                    }
                    return Ok(format!(
                        "{label} -> ok on p{q} after {attempt} retries: restored {} reverted {} removed {}, seq {}{}",
                        done.restored,
                        done.reverted,
                        done.removed,
                        done.seq,
                        if got == target {
                            ""
                        } else {
                            " (NOT the target: p was behind)"
                        }
                    ));
                }
                Err(RestoreError::Log(e)) if e.is_retryable() => continue,
                Err(e) => return Err(format!("{label}: failed on p{q}: {e:?}")),
            }
        }
        Ok(format!("{label} -> gave up after 10 retryable failures"))
    }

    /// A process's reads against the log: a user's events and items at a seq.
    async fn read_step(&mut self, p: usize) -> Step<String> {
        let u = self.random_user();
        let log = self.procs[p].log.clone();
        let shard = self.shard_of(&u);
        let events = log
            .user_events(&u, UpTo::End)
            .await
            .map_err(|e| format!("p{p}: user_events failed: {e:?}"))?;
        // A read to the end holds everything committed before it, by any process: the
        // process is now at the store's head (no step writes while this one runs).
        let truth = self.read_truth().await?;
        let head = log.head(shard);
        if head != truth.heads[shard as usize] {
            return Err(format!(
                "p{p}: after a read to the end it is at segment {head} of shard {shard}, the store at {}",
                truth.heads[shard as usize]
            ));
        }
        let expected = truth.user_events(&u, head);
        if events != expected {
            return Err(format!(
                "p{p} (head {head}): user_events of {} differ from the log: {} events, the log has {}",
                self.user_label(&u),
                events.len(),
                expected.len()
            ));
        }
        let k = self.rng.below(expected.len() as u64 + 1);
        let at = log
            .items_at(&u, UpTo::Seq(k))
            .await
            .map_err(|e| format!("p{p}: items_at failed: {e:?}"))?;
        let upto: Vec<Event> = expected.iter().filter(|e| e.seq <= k).cloned().collect();
        let want = replay(&upto)?;
        if at.last_seq() != want.last_seq() || item_summary(&at) != item_summary(&want) {
            return Err(format!(
                "p{p}: items_at({k}) of {} differ from a replay of the log",
                self.user_label(&u)
            ));
        }
        let marked = self.check_marks(p, &u, &expected).await?;
        Ok(format!(
            "read p{p} {}: {} events, items at seq {k} agree{marked}",
            self.user_label(&u),
            events.len()
        ))
    }

    /// At the store's head (after a read to the end): a mark this user was read at earlier, by
    /// either process, that process `p` vouches for (`Log::unchanged_since`, what answers a
    /// pull without loading its user) must stand for the user's last seq in the log; then a
    /// new mark is taken.
    async fn check_marks(&mut self, p: usize, u: &UserId, log_events: &[Event]) -> Step<String> {
        let log = self.procs[p].log.clone();
        let last = log_events.last().map_or(0, |e| e.seq);
        let mut said = String::new();
        if let Some(&(mark, seq)) = self.marks.get(u) {
            let vouched = log
                .unchanged_since(u, mark)
                .map_err(|e| format!("p{p}: unchanged_since failed: {e:?}"))?;
            if let Some(now) = vouched {
                if seq != last {
                    return Err(format!(
                        "p{p}: mark {mark:?} vouched that {} is unchanged at seq {seq}, the log has seq {last}",
                        self.user_label(u)
                    ));
                }
                if now.segment != log.head(self.shard_of(u)) {
                    return Err(format!("p{p}: vouched at {now:?}, not at the head"));
                }
                self.tally.marks_vouched += 1;
                said = format!(", mark at {} vouched", mark.segment);
            }
        }
        let (seq, mark) = log
            .user_marked(u, |s| s.last_seq())
            .await
            .map_err(|e| format!("p{p}: user_marked failed: {e:?}"))?;
        if seq != last {
            return Err(format!(
                "p{p}: the view of {} is at seq {seq}, the log at {last}",
                self.user_label(u)
            ));
        }
        if let Some(mark) = mark {
            self.marks.insert(*u, (mark, seq));
        }
        Ok(said)
    }

    async fn read_truth(&self) -> Step<Truth> {
        let mut heads = Vec::new();
        let mut events: HashMap<UserId, Vec<(u64, Event)>> = HashMap::new();
        for shard in 0..self.shards {
            let segs: Vec<keepsake_segment::Segment> =
                scan_shard(self.base.clone(), shard, 1, 0, 4)
                    .await
                    .map_err(|e| format!("third reader: scan of shard {shard} failed: {e:?}"))?
                    .try_collect()
                    .await
                    .map_err(|e| format!("third reader: scan of shard {shard} failed: {e:?}"))?;
            for (i, seg) in segs.iter().enumerate() {
                if seg.meta.segment != i as u64 + 1 {
                    return Err(format!(
                        "shard {shard}: segment {} where {} belongs",
                        seg.meta.segment,
                        i + 1
                    ));
                }
                for e in &seg.events {
                    events
                        .entry(e.user_id)
                        .or_default()
                        .push((seg.meta.segment, e.clone()));
                }
            }
            heads.push(segs.len() as u64);
        }
        Ok(Truth { heads, events })
    }

    /// Every invariant, read by a third reader straight from the store.
    async fn check(&mut self) -> Step<()> {
        self.tally.checks += 1;
        // A writer settles a segment PUT it could not confirm at its next re-read of the shard
        // (an empty push is one; an idle writer also does it on its own): a stray left after
        // that is a failure.
        for proc in &self.procs {
            for u in &self.users {
                let mut tries = 0;
                while let Err(e) = proc.log.sync(u).await {
                    tries += 1;
                    if !e.is_retryable() || tries == 5 {
                        return Err(format!("an empty push before the check failed: {e:?}"));
                    }
                }
            }
        }
        let truth = self.read_truth().await?;
        let mut in_log: HashMap<ChangeId, (UserId, u64, u64)> = HashMap::new();
        for (u, evs) in &truth.events {
            let events: Vec<Event> = evs.iter().map(|(_, e)| e.clone()).collect();
            replay(&events).map_err(|e| format!("user {u:?}: {e}"))?;
            for e in &events {
                if in_log.insert(e.change_id, (*u, e.seq, e.version)).is_some() {
                    return Err(format!("change {:?} is in the log twice", e.change_id));
                }
                let ours = match e.restore_id {
                    Some(r) => self.restores.contains(&r) && e.origin == Origin::Restore,
                    None => self.sent.get(&e.change_id).is_some_and(|(x, _)| x == u),
                };
                if !ours {
                    return Err(format!("an event nobody sent: {e:?}"));
                }
            }
        }
        for (id, (u, r)) in &self.acked {
            if in_log.get(id) != Some(&(*u, r.seq, r.version)) {
                return Err(format!(
                    "acknowledged change {id:?} of {} as seq {} version {} is in the log as {:?}",
                    self.user_label(u),
                    r.seq,
                    r.version,
                    in_log.get(id)
                ));
            }
        }
        for (u, id, current) in &self.refused {
            if in_log.contains_key(id) && self.refused_counted.insert(*id) {
                if *current {
                    return Err(format!(
                        "change {id:?} of {} is in the log, yet a current process answered it with a conflict or rejection",
                        self.user_label(u)
                    ));
                }
                self.tally.known.stale_refusals += 1;
                if self.strict {
                    return Err(format!(
                        "change {id:?} of {} is in the log, yet a process that was behind answered its resend with a conflict or rejection",
                        self.user_label(u)
                    ));
                }
            }
        }
        let mut raced = 0;
        let (report, folded) = loop {
            match verify_store(&self.base, self.shards).await {
                Ok(r) => break r,
                // A background compaction deleted a segment after verify listed it: verify
                // does not look for it again (`verify_reads_through_a_concurrent_compaction`).
                Err(LogError::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) if raced < 5 && !self.strict => {
                    raced += 1;
                    self.tally.verify_races += 1;
                }
                Err(e) => return Err(format!("verify failed: {e:?}")),
            }
        };
        let bad: Vec<_> = report
            .problems
            .iter()
            .filter(|p| !(p.kind == "stray_segment" && self.crashed_after_landing))
            .collect();
        if !bad.is_empty() {
            return Err(format!("verify: {bad:?}"));
        }
        for u in &self.users {
            let events = truth.all_events(u);
            let want = replay(&events)?;
            let got = folded.get(u).cloned().unwrap_or_default();
            if got != want {
                return Err(format!(
                    "verify's fold of {} differs from the third reader's",
                    self.user_label(u)
                ));
            }
        }
        for p in 0..self.procs.len() {
            self.check_view(p, &truth).await?;
        }
        Ok(())
    }

    /// Process `p`'s view of every user is the fold of the log up to its head.
    async fn check_view(&self, p: usize, truth: &Truth) -> Step<()> {
        let log = &self.procs[p].log;
        for u in &self.users {
            let shard = self.shard_of(u);
            let head = log.head(shard);
            if head > truth.heads[shard as usize] {
                return Err(format!(
                    "p{p} is at segment {head} of shard {shard}, the store ends at {}",
                    truth.heads[shard as usize]
                ));
            }
            let want = replay(&truth.user_events(u, head))?;
            let got = log
                .user(u, UserState::clone)
                .await
                .map_err(|e| format!("p{p}: reading {} failed: {e:?}", self.user_label(u)))?;
            if got != want {
                return Err(format!(
                    "p{p} (head {head}): its view of {} is not the fold of the log up to its head:\n view: seq {} {:?}\n log:  seq {} {:?}",
                    self.user_label(u),
                    got.last_seq(),
                    item_summary(&got),
                    want.last_seq(),
                    item_summary(&want)
                ));
            }
        }
        Ok(())
    }

    /// Resends every pending change until it is answered; both processes restart; both must
    /// agree with the log.
    async fn finish(&mut self) -> Step<()> {
        self.clear_faults();
        for round in 0..200 {
            let Some(&(u, _)) = self.pending.first() else {
                break;
            };
            let p = self.rng.index(2);
            let changes = self.take_pending(u);
            let r = self.push_step(p, u, changes).await?;
            self.note(format!("final resend {round}: {r}"));
        }
        if !self.pending.is_empty() {
            return Err(format!(
                "{} changes still pending after 200 resends",
                self.pending.len()
            ));
        }
        for p in 0..self.procs.len() {
            self.procs[p].log.shutdown().await;
            let cfg = self.procs[p].cfg.clone();
            self.procs[p] = Proc::open(&self.base, self.shards, cfg).await?;
        }
        self.note("both processes restarted".into());
        self.check().await?;
        let truth = self.read_truth().await?;
        for (p, proc) in self.procs.iter().enumerate() {
            for shard in 0..self.shards {
                if proc.log.head(shard) != truth.heads[shard as usize] {
                    return Err(format!(
                        "p{p} reopened at segment {} of shard {shard}, the store ends at {}",
                        proc.log.head(shard),
                        truth.heads[shard as usize]
                    ));
                }
            }
        }
        for p in &self.procs {
            p.log.shutdown().await;
        }
        Ok(())
    }

    async fn run(&mut self, steps: usize, check_every: usize) -> Step<()> {
        for step in 1..=steps {
            self.step = step;
            let line = tokio::time::timeout(Duration::from_secs(60), self.step())
                .await
                .map_err(|_| "the step did not finish within 60 s".to_string())
                .and_then(|r| r);
            match line {
                Ok(line) => self.note(format!("{step}: {line}")),
                Err(e) => {
                    self.note(format!("{step}: VIOLATION"));
                    return Err(e);
                }
            }
            if step % check_every == 0 {
                self.clear_faults();
                self.check().await.map_err(|e| format!("check: {e}"))?;
            }
        }
        self.step = steps + 1;
        self.note("final: resend pending, restart both, check".into());
        self.finish().await.map_err(|e| format!("final check: {e}"))
    }
}

/// Runs one seed on its own runtime. Returns what it did, or the step and what broke.
fn run_seed(seed: u64, settings: &Settings) -> Result<Tally, (usize, String, Vec<String>)> {
    let trace = Arc::new(Mutex::new(Vec::new()));
    let step = Arc::new(Mutex::new(0usize));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut sim = Sim::new(seed, trace.clone(), settings).await?;
            let r = sim.run(settings.steps, settings.check_every).await;
            if let Ok(mut s) = step.lock() {
                *s = sim.step;
            }
            for p in &sim.procs {
                p.log.abort_writers();
            }
            r.map(|()| sim.tally.clone())
        })
    }));
    let lines = trace.lock().map(|t| t.clone()).unwrap_or_default();
    let at = step.lock().map(|s| *s).unwrap_or(0);
    match outcome {
        Ok(Ok(tally)) => Ok(tally),
        Ok(Err(e)) => Err((at, e, lines)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "panic".into());
            // The step that panicked is the one after the last one traced.
            let at = lines
                .iter()
                .rev()
                .find_map(|l| l.split(':').next()?.parse::<usize>().ok())
                .map_or(1, |n| n + 1);
            Err((at, format!("panicked: {msg}"), lines))
        }
    }
}

/// The seeds of `KEEPSAKE_SIM_SEEDS` (default 0..8), `KEEPSAKE_SIM_STEPS` steps each.
#[test]
fn sim_seeds() {
    let settings = Settings::from_env();
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut total = Tally::default();
    for seed in settings.seeds.clone() {
        let began = std::time::Instant::now();
        let result = run_seed(seed, &settings);
        // Progress, for long runs (shown with --nocapture).
        eprintln!(
            "seed {seed}: {} in {:.1} s",
            if result.is_ok() { "clean" } else { "FAILED" },
            began.elapsed().as_secs_f64()
        );
        match result {
            Ok(t) => {
                total.pushes += t.pushes;
                total.acked += t.acked;
                total.retryable += t.retryable;
                total.crashes += t.crashes;
                total.compactions += t.compactions;
                total.restores += t.restores;
                total.checks += t.checks;
                total.faults += t.faults;
                total.verify_races += t.verify_races;
                total.marks_vouched += t.marks_vouched;
                total.known.stale_refusals += t.known.stale_refusals;
                total.known.stale_restores += t.known.stale_restores;
            }
            Err((step, msg, lines)) => {
                let shown = if settings.trace_all {
                    &lines[..]
                } else {
                    &lines[lines.len().saturating_sub(40)..]
                };
                eprintln!(
                    "\nSIMULATION FAILED: seed {seed}, step {step} of {}: {msg}\n\
                     replay: KEEPSAKE_SIM_SEED={seed} KEEPSAKE_SIM_STEPS={} cargo test -p keepsake-tests --test it sim -- --nocapture\n\
                     steps{}:\n  {}\n",
                    settings.steps,
                    settings.steps,
                    if settings.trace_all {
                        ""
                    } else {
                        " (the last 40; KEEPSAKE_SIM_TRACE=1 for all)"
                    },
                    shown.join("\n  ")
                );
                failures.push((seed, step, msg));
            }
        }
    }
    let seeds = settings.seeds.end.saturating_sub(settings.seeds.start);
    eprintln!(
        "simulation: {} of {seeds} seeds x {} steps clean in {:.1} s; {total:?}",
        seeds - failures.len() as u64,
        settings.steps,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "simulation failures (seed, step, what): {failures:#?}"
    );
}

/// Found by the simulation (a seed with background compaction): `verify_store` (behind
/// `GET /admin/v1/verify`, and `fold_store` behind rebuild) lists the store once, then reads
/// each segment; a compaction that moves a listed segment into a history object and deletes it
/// in between makes verify fail with `NotFound`, where every other reader looks again. Here the
/// first segment GET of verify waits while the segments are compacted.
#[tokio::test]
async fn verify_reads_through_a_concurrent_compaction() {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open_quiet(ts.store.clone()).await;
    let u = UserId(Uuid::from_u128(1));
    for i in 0..3 {
        put_note(&log, u, i).await;
    }
    let faulty = FaultyStore::new(ts.store.clone());
    let gate = faulty.hold(FaultOp::Get, "/segments/");
    let verifying: Arc<dyn ObjectStore> = faulty.clone();
    let verify = tokio::spawn(async move { verify_store(&verifying, 1).await });
    gate.reached().await;
    let compacted = log.compact_now().await.expect("compact");
    assert_eq!(compacted.segments, 3);
    gate.release();
    let (report, _) = verify
        .await
        .expect("verify task")
        .expect("verify reads a compacted segment from its history object");
    assert!(report.ok, "{:?}", report.problems);
    log.shutdown().await;
}

/// A log with no background checkpoints or compaction.
async fn open_quiet(store: Arc<dyn ObjectStore>) -> Log {
    let cfg = LogConfig {
        commit_window: Duration::from_millis(1),
        checkpoint_every_events: u64::MAX,
        checkpoint_interval: Duration::from_secs(3600),
        ..LogConfig::default()
    };
    Log::open(
        store,
        Some(1),
        cfg,
        Arc::new(SystemClock),
        Arc::new(RandomIds),
    )
    .await
    .expect("open")
}

/// A push of one put of note `i` for `u` (change id `100 + i`, item `200 + i`).
fn note_push(u: UserId, i: u128) -> PushRequest {
    let c = Change {
        change_id: ChangeId(Uuid::from_u128(100 + i)),
        kind: Kind::Note,
        item_id: ItemId(Uuid::from_u128(200 + i)),
        base_version: None,
        body: ChangeBody::put(json!({"i": i as u64})),
    };
    PushRequest {
        user_id: u,
        meta: EventMeta {
            device_id: None,
            origin: Origin::Device,
            request_id: None,
            restore_id: None,
        },
        changes: vec![c],
        confirm_mass_delete: false,
    }
}

/// Pushes a put of note `i` for `u`; returns its outcome.
async fn put_note(log: &Log, u: UserId, i: u128) -> Outcome {
    let r = log.push(note_push(u, i)).await.expect("push");
    r.outcomes[0].clone()
}

/// Found by the simulation (`KEEPSAKE_SIM_STRICT=1`, seeds 3, 11, 19 of 0..24): a restore of
/// one user run by a process that is behind the store diffs the target against its own view.
/// Here B writes a note the moment after which A has seen nothing; restoring the user on A "to
/// seq 0" finds nothing to change and answers success with seq 0, and the note stays. (In the
/// simulation the same leaves items created elsewhere undeleted, or documents not reverted.)
/// The open issue names this for fleet restores; a single user's restore has it too.
#[tokio::test]
async fn a_restore_by_a_process_that_is_behind_reaches_its_target() {
    let ts = store(Backend::Memory).await.expect("store");
    let a = open_quiet(ts.store.clone()).await;
    let b = open_quiet(ts.reopen().expect("second handle")).await;
    let u = UserId(Uuid::from_u128(1));
    assert!(matches!(put_note(&b, u, 0).await, Outcome::Applied(_)));
    let spec = Spec {
        at: UpTo::Seq(0),
        as_of: None,
        as_of_seq: Some(0),
        kinds: None,
        reason: "to before the note".into(),
    };
    let done = restore_user(&a, &SystemClock, u, &spec, None, false, None, None)
        .await
        .expect("restore");
    let fresh = open_quiet(ts.reopen().expect("third handle")).await;
    let now = fresh.user(&u, UserState::clone).await.expect("state");
    assert!(
        live(&now).is_empty(),
        "restored to seq 0, the user has no live item (restore answered {done:?})"
    );
    for log in [a, b, fresh] {
        log.shutdown().await;
    }
}

/// Found by the simulation (seed 60; also 56 and 57 of 24..64): B writes segment 1 and compacts
/// it into history object 1-1, deleting the segment; A, behind at head 0, writes its batch into
/// the freed number 1, and the listing of history objects that would confirm the number was
/// new fails (a LIST error: no crash; the confirmation is now a read of the compaction
/// frontier, which fails here instead). A answers retryable but leaves its object behind. History
/// 1-1 holds no number that no segment object holds, so it is no longer "relied on", and
/// readers take the stray segment 1 for the log: B's acknowledged change at seq 1 is gone from
/// every read, and B's next push continues the user at seq 2 behind A's unacknowledged one.
/// (With a failing read-back instead of a failing listing, seed 57, the stray stays too, and
/// compaction of the shard then fails for good: "history object differs from the sources".)
#[tokio::test]
async fn an_unconfirmed_write_into_a_compacted_number_never_hides_acknowledged_changes() {
    let ts = store(Backend::Memory).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let a = open_quiet(faulty.clone()).await;
    let b = open_quiet(ts.reopen().expect("second handle")).await;
    let u = UserId(Uuid::from_u128(1));
    let Outcome::Applied(acked) = put_note(&b, u, 0).await else {
        panic!("B's push is applied");
    };
    assert_eq!(acked.seq, 1);
    let compacted = b.compact_now().await.expect("B compacts");
    assert_eq!(compacted.segments, 1);
    faulty.inject(FaultOp::Get, "/frontier/", Fault::Fail, 1);
    let answer = a.push(note_push(u, 50)).await;
    assert!(
        matches!(&answer, Err(e) if e.is_retryable()),
        "A's write into a used number is not acknowledged: {answer:?}"
    );
    faulty.clear();
    let fresh = open_quiet(ts.reopen().expect("third handle")).await;
    let events = fresh.user_events(&u, UpTo::End).await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.change_id == ChangeId(Uuid::from_u128(100)) && e.seq == 1),
        "B's acknowledged change is read at seq 1: {events:?}"
    );
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(
        report.problems.is_empty(),
        "a stray left without a crash: {:?}",
        report.problems
    );
    for log in [a, b, fresh] {
        log.shutdown().await;
    }
}

/// Found by the soak (seeds 154 and 167 of 0..500, 400 steps). As above, A is behind and writes
/// into the freed number 1, but its PUT lands and answers an error, and reading the number back
/// fails too: A cannot tell whose object is there, answers retryable, and leaves its object
/// behind. Readers never took it (the history object is marked verified), but verify reported
/// a stray for good. Now A remembers the number it could not confirm and, when it next re-reads
/// the shard (before its next batch, or on its own when idle), removes its object: a history
/// object holds the number with another batch.
#[tokio::test]
async fn an_unconfirmed_write_into_a_compacted_number_is_removed_by_its_writer() {
    let ts = store(Backend::Memory).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let a = open_quiet(faulty.clone()).await;
    let b = open_quiet(ts.reopen().expect("second handle")).await;
    let u = UserId(Uuid::from_u128(1));
    assert!(matches!(put_note(&b, u, 0).await, Outcome::Applied(_)));
    let compacted = b.compact_now().await.expect("B compacts");
    assert_eq!(compacted.segments, 1);

    faulty.inject(FaultOp::Put, "/segments/", Fault::FailAfter, 1);
    faulty.inject(FaultOp::Get, "/segments/", Fault::Fail, 3);
    let answer = a.push(note_push(u, 50)).await;
    assert!(
        matches!(&answer, Err(e) if e.is_retryable()),
        "A's write into a used number is not acknowledged: {answer:?}"
    );
    faulty.clear();
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(
        report.problems.iter().any(|p| p.kind == "stray_segment"),
        "the fault left A's object in number 1: {:?}",
        report.problems
    );

    // Idle, A re-reads the shard on its own and settles what it left.
    let mut problems = report.problems;
    for _ in 0..200 {
        if problems.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        problems = verify_store(&ts.store, 1).await.expect("verify").0.problems;
    }
    assert!(
        problems.is_empty(),
        "A removed its unconfirmed object: {problems:?}"
    );
    let Outcome::Applied(next) = put_note(&a, u, 51).await else {
        panic!("A's next push is applied");
    };
    assert_eq!(next.seq, 2, "after B's acknowledged change");
    for log in [a, b] {
        log.shutdown().await;
    }
}
