//! As-of reads against a model: a property over random histories (several users, many items,
//! puts, merge patches, deletes, fresh and stale base versions, pushes of several changes),
//! checkpoints (background and explicit, at random points), compaction, eviction (a tiny view
//! budget) and restarts. The expected answers come from a model built from what the pushes
//! were told — never from the log's own reads: each push's outcomes must be the ones the model
//! predicts, and every read at every sampled moment (by seq and by time) must equal the model's
//! state then.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keepsake_log::{Log, LogConfig, Pick, UpTo, list_checkpoints, write_checkpoint};
use keepsake_model::{
    ChangeBody, ChangeId, ItemId, Kind, ManualClock, Op, Outcome, RandomIds, RejectCode, StateRead,
    UserId, UserState,
};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::common::*;

const ITEMS: usize = 6;

/// Which base version a change names.
#[derive(Clone, Copy, Debug)]
enum Base {
    /// None: last writer wins.
    None,
    /// The item's current version.
    Fresh,
    /// One before it (stale), or one past it for a new item.
    Stale,
}

#[derive(Clone, Debug)]
enum ChangeOp {
    Put { f0: u8, f1: u8 },
    Patch { field: u8, value: Option<u8> },
    Delete,
}

#[derive(Clone, Debug)]
enum Upkeep {
    Nothing,
    /// Write a checkpoint of everything committed so far.
    Checkpoint,
    /// Move checkpointed segments into history objects.
    Compact,
    /// Shut the log down and open it again.
    Restart,
}

#[derive(Clone, Debug)]
struct Step {
    user: usize,
    changes: Vec<(usize, ChangeOp, Base)>,
    /// Move the clock first (otherwise this push shares the previous one's time).
    advance: bool,
    upkeep: Upkeep,
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        5 => (0..3u8, 0..3u8).prop_map(|(f0, f1)| ChangeOp::Put { f0, f1 }),
        3 => (0..2u8, prop::option::weighted(0.8, 0..3u8))
            .prop_map(|(field, value)| ChangeOp::Patch { field, value }),
        1 => Just(ChangeOp::Delete),
    ];
    let base = prop_oneof![2 => Just(Base::None), 1 => Just(Base::Fresh), 2 => Just(Base::Stale)];
    let upkeep = prop_oneof![
        12 => Just(Upkeep::Nothing),
        2 => Just(Upkeep::Checkpoint),
        1 => Just(Upkeep::Compact),
        1 => Just(Upkeep::Restart),
    ];
    (
        0..3usize,
        prop::collection::vec((0..ITEMS, op, base), 1..4),
        prop::bool::weighted(0.7),
        upkeep,
    )
        .prop_map(|(user, changes, advance, upkeep)| Step {
            user,
            changes,
            advance,
            upkeep,
        })
}

/// One version of a model item: its document (`None`: deleted).
#[derive(Clone, Debug)]
struct Version {
    doc: Option<Map<String, Value>>,
}

/// A model event: what the log must hold.
#[derive(Clone, Debug, PartialEq)]
struct ModelEvent {
    seq: u64,
    change_id: ChangeId,
    item: ItemId,
    op: Op,
    version: u64,
    doc: Option<Value>,
    at: DateTime<Utc>,
}

#[derive(Default)]
struct ModelUser {
    items: BTreeMap<ItemId, Vec<Version>>,
    events: Vec<ModelEvent>,
}

/// What the model says a change does.
#[derive(Debug, PartialEq)]
enum Predicted {
    Applied { version: u64, seq: u64 },
    Conflict,
    Rejected(RejectCode),
}

impl ModelUser {
    fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.seq)
    }

    /// Decides a change as DESIGN.md section 6 says, and applies it when it applies.
    fn decide(
        &mut self,
        change_id: ChangeId,
        item: ItemId,
        op: &ChangeOp,
        base: Option<u64>,
        at: DateTime<Utc>,
    ) -> Predicted {
        let versions = self.items.get(&item);
        let current = versions.and_then(|v| v.last());
        let version = versions.map_or(0, |v| v.len() as u64);
        let live = current.and_then(|c| c.doc.clone());
        let (op, doc) = match op {
            ChangeOp::Put { f0, f1 } => {
                match (base, current) {
                    (Some(b), Some(_)) if b != version => return Predicted::Conflict,
                    (Some(_), None) => return Predicted::Rejected(RejectCode::NotFound),
                    _ => {}
                }
                let doc = json!({"f0": f0, "f1": f1});
                (Op::Put, doc.as_object().cloned())
            }
            ChangeOp::Delete => {
                if live.is_none() {
                    return Predicted::Rejected(RejectCode::NotFound);
                }
                if base.is_some_and(|b| b != version) {
                    return Predicted::Conflict;
                }
                (Op::Delete, None)
            }
            ChangeOp::Patch { field, value } => {
                let Some(mut doc) = live else {
                    return Predicted::Rejected(RejectCode::NotFound);
                };
                let key = format!("f{field}");
                if let Some(b) = base
                    && b != version
                {
                    if b > version {
                        return Predicted::Conflict;
                    }
                    let ancestor = versions
                        .and_then(|v| v.get(usize::try_from(b).ok()? - 1))
                        .and_then(|v| v.doc.clone());
                    let Some(ancestor) = ancestor else {
                        return Predicted::Conflict;
                    };
                    if ancestor.get(&key) != doc.get(&key) {
                        return Predicted::Conflict;
                    }
                }
                match value {
                    Some(v) => doc.insert(key, json!(v)),
                    None => doc.remove(&key),
                };
                (Op::Patch, Some(doc))
            }
        };
        let seq = self.last_seq() + 1;
        let new_version = version + 1;
        self.items
            .entry(item)
            .or_default()
            .push(Version { doc: doc.clone() });
        self.events.push(ModelEvent {
            seq,
            change_id,
            item,
            op,
            version: new_version,
            doc: doc.map(Value::Object),
            at,
        });
        Predicted::Applied {
            version: new_version,
            seq,
        }
    }

    /// The items (every field, tombstones included) and last seq after the events `keep` keeps.
    fn state(&self, keep: impl Fn(&ModelEvent) -> bool) -> (u64, Vec<ItemView>) {
        let mut items: BTreeMap<ItemId, ItemView> = BTreeMap::new();
        let mut last = 0;
        for e in self.events.iter().filter(|e| keep(e)) {
            last = e.seq;
            items.insert(
                e.item,
                ItemView {
                    item_id: e.item,
                    version: e.version,
                    seq: e.seq,
                    deleted: e.doc.is_none(),
                    changed_at: e.at,
                    doc: e.doc.clone(),
                },
            );
        }
        (last, items.into_values().collect())
    }
}

/// An item as compared: documents as JSON values (the log keeps the text it was sent).
#[derive(Clone, Debug, PartialEq)]
struct ItemView {
    item_id: ItemId,
    version: u64,
    seq: u64,
    deleted: bool,
    changed_at: DateTime<Utc>,
    doc: Option<Value>,
}

fn view_of(s: &UserState) -> (u64, Vec<ItemView>) {
    let mut items: Vec<ItemView> = s
        .items()
        .map(|i| {
            assert_eq!(i.kind, Kind::Note);
            ItemView {
                item_id: i.item_id,
                version: i.version,
                seq: i.seq,
                deleted: i.deleted,
                changed_at: i.changed_at,
                doc: i
                    .document
                    .as_ref()
                    .map(|d| serde_json::from_str(d.as_str()).expect("stored JSON")),
            }
        })
        .collect();
    items.sort_by_key(|i| i.item_id);
    (s.last_seq(), items)
}

fn events_view(events: &[keepsake_model::Event]) -> Vec<ModelEvent> {
    events
        .iter()
        .map(|e| ModelEvent {
            seq: e.seq,
            change_id: e.change_id,
            item: e.item_id,
            op: e.op,
            version: e.version,
            doc: e
                .document
                .as_ref()
                .map(|d| serde_json::from_str(d.as_str()).expect("stored JSON")),
            at: e.recorded_at,
        })
        .collect()
}

fn predicted(o: &Outcome) -> Predicted {
    match o {
        Outcome::Applied(r) => Predicted::Applied {
            version: r.version,
            seq: r.seq,
        },
        Outcome::Conflict(_) => Predicted::Conflict,
        Outcome::Rejected { code, .. } => Predicted::Rejected(*code),
        Outcome::Duplicate(r) => panic!("no change id is sent twice: {r:?}"),
    }
}

async fn open_at(store: &Arc<dyn ObjectStore>, cfg: &LogConfig, clock: &Arc<ManualClock>) -> Log {
    Log::open(
        store.clone(),
        Some(1),
        cfg.clone(),
        clock.clone(),
        Arc::new(RandomIds),
    )
    .await
    .expect("open")
}

async fn check(steps: Vec<Step>, background: bool, evict: bool, moments: Vec<prop::sample::Index>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let cfg = LogConfig {
        checkpoint_every_events: if background { 4 } else { u64::MAX },
        view_memory_bytes: if evict { 1 } else { 256 << 20 },
        // Background compaction racing the reads found two reads that answered 503 (both
        // fixed); others may remain, so `make test` compacts only in explicit steps and a
        // longer run turns the race on with KEEPSAKE_PROP_BACKGROUND_COMPACTION=1.
        compaction: keepsake_log::compact::CompactionPolicy {
            enabled: background
                && std::env::var_os("KEEPSAKE_PROP_BACKGROUND_COMPACTION").is_some(),
            min_segments: 2,
            max_events: 64,
        },
        ..fast_config()
    };
    let clock = Arc::new(ManualClock::at_epoch_2026());
    let mut log = open_at(&store, &cfg, &clock).await;
    let users: Vec<UserId> = (0..3).map(|_| user()).collect();
    let items: Vec<ItemId> = (0..ITEMS).map(|_| item()).collect();
    let mut model: Vec<ModelUser> = (0..3).map(|_| ModelUser::default()).collect();
    for (i, s) in steps.iter().enumerate() {
        if s.advance || i == 0 {
            clock.advance(chrono::Duration::milliseconds(3));
        }
        let at = keepsake_model::Clock::now(clock.as_ref());
        let m = &mut model[s.user];
        let mut expect = Vec::new();
        let mut changes = Vec::new();
        for (it, op, base) in &s.changes {
            let id = items[*it];
            let version = m.items.get(&id).map_or(0, |v| v.len() as u64);
            let base = match base {
                Base::None => None,
                Base::Fresh => (version > 0).then_some(version),
                Base::Stale => Some(if version >= 2 {
                    version - 1
                } else {
                    version + 1
                }),
            };
            let c = match op {
                ChangeOp::Put { f0, f1 } => change(
                    Kind::Note,
                    id,
                    base,
                    ChangeBody::put(json!({"f0": f0, "f1": f1})),
                ),
                ChangeOp::Patch { field, value } => change(
                    Kind::Note,
                    id,
                    base,
                    ChangeBody::patch(json!({format!("f{field}"): value})),
                ),
                ChangeOp::Delete => change(Kind::Note, id, base, ChangeBody::Delete),
            };
            expect.push(m.decide(c.change_id, id, op, base, at));
            changes.push(c);
        }
        let r = log
            .push(push_of(users[s.user], changes))
            .await
            .expect("push");
        let got: Vec<Predicted> = r.outcomes.iter().map(predicted).collect();
        assert_eq!(got, expect, "step {i}: {s:?}");
        match s.upkeep {
            Upkeep::Nothing => {}
            Upkeep::Checkpoint => {
                let head = log.head(0);
                let prev = list_checkpoints(store.as_ref(), 0)
                    .await
                    .expect("list")
                    .into_iter()
                    .filter(|c| *c <= head)
                    .max();
                if prev != Some(head) {
                    write_checkpoint(&store, 0, prev, head, 2)
                        .await
                        .expect("checkpoint");
                }
            }
            Upkeep::Compact => {
                log.compact_now().await.expect("compact");
            }
            Upkeep::Restart => {
                log.shutdown().await;
                log = open_at(&store, &cfg, &clock).await;
            }
        }
    }
    let wanted: HashSet<UserId> = users.iter().copied().collect();
    for (u, m) in users.iter().zip(&model) {
        let last = m.last_seq();
        for index in &moments {
            let k = index.index(last as usize + 1) as u64;
            let want = m.state(|e| e.seq <= k);
            let got = log.user_at(u, UpTo::Seq(k)).await.expect("as of seq");
            assert_eq!(view_of(&got), want, "user_at seq {k}");
            let items = log.items_at(u, UpTo::Seq(k)).await.expect("items at seq");
            assert_eq!(view_of(&items), want, "items_at seq {k}");
            let read = log.user_events(u, UpTo::Seq(k)).await.expect("events");
            let want_events: Vec<ModelEvent> =
                m.events.iter().filter(|e| e.seq <= k).cloned().collect();
            assert_eq!(events_view(&read), want_events, "user_events seq {k}");
            // Picked reads (a page of the audit, one item's history) are the same events,
            // filtered.
            let after = k / 2;
            let page = log
                .user_events_picked(u, UpTo::Seq(k), Pick::After(after))
                .await
                .expect("page");
            let want_page: Vec<ModelEvent> = want_events
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect();
            assert_eq!(events_view(&page), want_page, "page after {after} to {k}");
            if let Some(item) = want_events.last().map(|e| e.item) {
                let history = log
                    .user_events_picked(u, UpTo::Seq(k), Pick::Item(item))
                    .await
                    .expect("item history");
                let want_item: Vec<ModelEvent> = want_events
                    .iter()
                    .filter(|e| e.item == item)
                    .cloned()
                    .collect();
                assert_eq!(events_view(&history), want_item, "item {item} to {k}");
            }
            // By time: at an event's time, and just before it.
            let Some(e) = m.events.get(k.saturating_sub(1) as usize) else {
                continue;
            };
            for t in [e.at, e.at - chrono::Duration::microseconds(1)] {
                let want = m.state(|x| x.at <= t);
                let got = log.user_at(u, UpTo::Time(t)).await.expect("as of time");
                assert_eq!(view_of(&got), want, "user_at {t}");
                let items = log.items_at(u, UpTo::Time(t)).await.expect("items at");
                assert_eq!(view_of(&items), want, "items_at {t}");
                let read = log.user_events(u, UpTo::Time(t)).await.expect("events");
                let want_events: Vec<ModelEvent> =
                    m.events.iter().filter(|x| x.at <= t).cloned().collect();
                assert_eq!(events_view(&read), want_events, "user_events {t}");
                let all = log.users_at(0, &wanted, t).await.expect("users at");
                assert_eq!(
                    view_of(&all.get(u).cloned().unwrap_or_default()),
                    want,
                    "users_at {t}"
                );
            }
        }
        // The live state is the model's end state.
        let live = log.user(u, UserState::clone).await.expect("live");
        assert_eq!(view_of(&live), m.state(|_| true), "live state");
    }
    log.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn as_of_reads_equal_a_model_of_the_acknowledged_pushes(
        steps in prop::collection::vec(step(), 1..40),
        background in any::<bool>(),
        evict in any::<bool>(),
        moments in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(check(steps, background, evict, moments));
    }
}
