//! Compaction: history objects replace checkpointed segments, and no read changes; interrupted
//! anywhere, every read is still right and the next compaction finishes the job.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use futures::{StreamExt, TryStreamExt};
use keepsake_log::{
    CompactionPolicy, Log, LogConfig, UpTo, list_layout, read_user, verify::verify_store,
};
use keepsake_model::{ChangeBody, Event, Kind, StateRead, UserId, UserState};
use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
use keepsake_store::keys;
use keepsake_tests::{Backend, store};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;

use crate::common::*;

on_every_backend!(compaction_changes_no_read);

/// Compaction only when asked (`compact_now`), into small history objects so that a few rounds
/// write several and merge some.
fn cfg() -> LogConfig {
    LogConfig {
        compaction: CompactionPolicy {
            enabled: false,
            min_segments: 1,
            max_events: 60,
        },
        ..fast_config()
    }
}

/// Every user pushes once per round, concurrently (segments hold several users): a new item,
/// a patch of their first item, and every third round a delete of the previous round's item, so
/// history objects, reads through them and verify hold tombstones. Every change must apply.
async fn rounds(log: &Log, users: &[UserId], from: u64, to: u64) {
    // Rounds continue where the previous call stopped, so round r - 1's item exists.
    let round_item = |u: &UserId, round: u64| {
        keepsake_model::ItemId(uuid::Uuid::new_v5(
            &u.0,
            format!("round {round}").as_bytes(),
        ))
    };
    for round in from..to {
        let pushes = users.iter().map(|u| async move {
            let first = keepsake_model::ItemId(uuid::Uuid::from_u128(u.0.as_u128() ^ 1));
            let mut changes = vec![
                put(first, json!({"title": format!("round {round}")})),
                change(
                    Kind::Note,
                    first,
                    None,
                    ChangeBody::patch(json!({"round": round})),
                ),
                put(
                    round_item(u, round),
                    json!({"n": round, "user": u.to_string()}),
                ),
            ];
            if round % 3 == 2 {
                changes.push(change(
                    Kind::Note,
                    round_item(u, round - 1),
                    None,
                    ChangeBody::Delete,
                ));
            }
            let r = push(log, *u, changes).await.expect("push");
            for o in &r.outcomes {
                assert!(
                    matches!(o, keepsake_model::Outcome::Applied(_)),
                    "round {round}: {o:?}"
                );
            }
        });
        join_all(pushes).await;
    }
}

/// The items of a state, by id, and its last seq.
type Items = (u64, Vec<keepsake_model::ItemState>);

fn items_of(s: &UserState) -> Items {
    let mut items: Vec<_> = s.items().cloned().collect();
    items.sort_by_key(|i| i.item_id);
    (s.last_seq(), items)
}

/// Everything a reader can ask of the log about these users.
#[derive(Debug, PartialEq)]
struct Reads {
    events: HashMap<UserId, Vec<Event>>,
    listed: HashMap<UserId, Vec<Event>>,
    at_seq: HashMap<UserId, UserState>,
    /// Items reads: the items and last seq (what `items_at` promises; which checkpoint it
    /// started from may change the rest).
    items_at_time: HashMap<UserId, Items>,
    state_at_time: HashMap<UserId, UserState>,
    fleet_at_time: HashMap<UserId, UserState>,
    live: HashMap<UserId, UserState>,
}

async fn reads(
    log: &Log,
    store: &Arc<dyn ObjectStore>,
    users: &[UserId],
    t: DateTime<Utc>,
) -> Reads {
    let mut r = Reads {
        events: HashMap::new(),
        listed: HashMap::new(),
        at_seq: HashMap::new(),
        items_at_time: HashMap::new(),
        state_at_time: HashMap::new(),
        fleet_at_time: HashMap::new(),
        live: HashMap::new(),
    };
    for u in users {
        let shard = log.shard_of(u);
        r.events
            .insert(*u, log.user_events(u, UpTo::End).await.expect("events"));
        let (listed, _) = read_user(store.clone(), shard, *u, UpTo::End)
            .await
            .expect("read by listing");
        r.listed.insert(*u, listed);
        r.at_seq
            .insert(*u, log.user_at(u, UpTo::Seq(17)).await.expect("at seq"));
        let items = log.items_at(u, UpTo::Time(t)).await.expect("items at");
        r.items_at_time.insert(*u, items_of(&items));
        r.state_at_time
            .insert(*u, log.user_at(u, UpTo::Time(t)).await.expect("user at"));
        r.live
            .insert(*u, log.user(u, UserState::clone).await.expect("live"));
        let one: std::collections::HashSet<UserId> = [*u].into();
        let mut fleet = log.users_at(shard, &one, t).await.expect("users at");
        r.fleet_at_time
            .insert(*u, fleet.remove(u).unwrap_or_default());
    }
    r
}

async fn compaction_changes_no_read(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 2, cfg()).await.expect("open");
    let users: Vec<UserId> = (0..6).map(|_| user()).collect();
    rounds(&log, &users, 0, 12).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    rounds(&log, &users, 12, 20).await;
    let (before_hash, _, _) = log.rebuild().await.expect("rebuild");
    let before = reads(&log, &ts.store, &users, t).await;
    assert!(before.events.values().all(|e| e.len() > 50));

    let report = log.compact_now().await.expect("compact");
    assert!(report.written >= 2, "{report:?}");
    assert!(report.deleted >= report.segments, "{report:?}");
    for shard in 0..2 {
        let layout = list_layout(ts.store.as_ref(), shard).await.expect("layout");
        assert!(
            layout.segments.is_empty(),
            "every segment moved: {layout:?}"
        );
        // Random users may all hash to one shard (~3% of runs): an empty shard has no history.
        assert_eq!(
            layout.history.is_empty(),
            log.head(shard) == 0,
            "{layout:?}"
        );
        // History objects cover 1..=head without overlapping.
        let mut next = 1;
        for h in &layout.history {
            assert_eq!(h.first, next, "{layout:?}");
            next = h.last + 1;
        }
        assert_eq!(next, log.head(shard) + 1);
    }
    let after = reads(&log, &ts.store, &users, t).await;
    assert_eq!(after, before);
    // Read through history objects, every user's log holds tombstones.
    for events in after.events.values() {
        assert!(events.iter().any(|e| e.op == keepsake_model::Op::Delete));
    }
    let (report, _) = verify_store(&ts.store, 2).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
    assert!(report.history_objects >= 2);
    assert_eq!(report.state_hash, before_hash);

    // More history, compacted again: merged into the last history object where it fits.
    rounds(&log, &users, 20, 26).await;
    let before = reads(&log, &ts.store, &users, t).await;
    log.compact_now().await.expect("compact again");
    assert_eq!(reads(&log, &ts.store, &users, t).await, before);
    log.shutdown().await;

    // A restart reads the same from the history objects.
    let reopened = open(ts.reopen().expect("reopen"), 2, cfg())
        .await
        .expect("reopen log");
    assert_eq!(reads(&reopened, &ts.store, &users, t).await, before);
    reopened.shutdown().await;
}

/// A log on a fault-injecting file store, with some history written.
async fn faulty() -> (
    keepsake_tests::TestStore,
    Arc<FaultyStore>,
    Log,
    Vec<UserId>,
    DateTime<Utc>,
) {
    let ts = store(Backend::File).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let log = open(as_store, 1, cfg()).await.expect("open");
    let users: Vec<UserId> = (0..4).map(|_| user()).collect();
    rounds(&log, &users, 0, 8).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    rounds(&log, &users, 8, 14).await;
    (ts, faulty, log, users, t)
}

async fn settled(log: &Log, store: &Arc<dyn ObjectStore>) {
    log.compact_now()
        .await
        .expect("the next compaction finishes the job");
    let layout = list_layout(store.as_ref(), 0).await.expect("layout");
    assert!(layout.segments.is_empty(), "{layout:?}");
    let mut next = 1;
    for h in &layout.history {
        assert_eq!(h.first, next, "no leftover history object: {layout:?}");
        next = h.last + 1;
    }
    let (report, _) = verify_store(store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// Opens the log again on the store: it reads what it read before; a compaction finishes
/// whatever was left unfinished, and it still reads the same.
async fn reopen_and_settle(
    ts: &keepsake_tests::TestStore,
    users: &[UserId],
    t: DateTime<Utc>,
    before: &Reads,
) {
    let log = open(ts.reopen().expect("reopen"), 1, cfg())
        .await
        .expect("reopen");
    assert_eq!(&reads(&log, &ts.store, users, t).await, before);
    settled(&log, &ts.store).await;
    assert_eq!(&reads(&log, &ts.store, users, t).await, before);
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_that_fail_leave_every_read_right_and_are_finished_later() {
    let (ts, faulty, log, users, t) = faulty().await;
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let before = reads(&log, &store, &users, t).await;
    faulty.inject(FaultOp::Delete, "/segments/", Fault::Fail, 5);
    assert!(
        log.compact_now().await.is_err(),
        "a failed delete is reported"
    );
    assert!(faulty.injected() >= 1);
    // Segments and the history object holding them are both there.
    let layout = list_layout(store.as_ref(), 0).await.expect("layout");
    assert!(!layout.segments.is_empty() && !layout.history.is_empty());
    assert_eq!(reads(&log, &store, &users, t).await, before);
    faulty.clear();
    settled(&log, &store).await;
    assert_eq!(reads(&log, &store, &users, t).await, before);
    log.shutdown().await;
    reopen_and_settle(&ts, &users, t, &before).await;
}

/// Compacting again merges new segments into the last history object and deletes the narrower
/// one it replaces; when that delete fails, both objects stay (the narrower one is never
/// preferred), every read is right, and the next compaction deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_delete_that_fails_leaves_every_read_right_and_is_finished_later() {
    // History objects large enough that the new segments fit into the last one.
    let ts = store(Backend::File).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let roomy = LogConfig {
        compaction: CompactionPolicy {
            max_events: 100_000,
            ..cfg().compaction
        },
        ..cfg()
    };
    let log = open(store.clone(), 1, roomy).await.expect("open");
    let users: Vec<UserId> = (0..4).map(|_| user()).collect();
    rounds(&log, &users, 0, 6).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    rounds(&log, &users, 6, 10).await;
    settled(&log, &store).await;
    rounds(&log, &users, 10, 14).await;
    let before = reads(&log, &store, &users, t).await;
    faulty.inject(FaultOp::Delete, "/history/", Fault::Fail, 5);
    let _reported = log.compact_now().await;
    assert!(
        faulty.injected() >= 1,
        "the merge deleted the object it replaced"
    );
    let layout = list_layout(store.as_ref(), 0).await.expect("layout");
    assert!(
        layout.history.len() >= 2,
        "the narrower object is left: {layout:?}"
    );
    assert_eq!(reads(&log, &store, &users, t).await, before);
    faulty.clear();
    settled(&log, &store).await;
    assert_eq!(reads(&log, &store, &users, t).await, before);
    log.shutdown().await;
    reopen_and_settle(&ts, &users, t, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_write_that_fails_after_landing_is_verified_before_use() {
    let (ts, faulty, log, users, t) = faulty().await;
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let before = reads(&log, &store, &users, t).await;
    faulty.inject(FaultOp::Put, "/history/", Fault::FailAfter, 1);
    assert!(log.compact_now().await.is_err());
    let layout = list_layout(store.as_ref(), 0).await.expect("layout");
    assert_eq!(layout.history.len(), 1, "the object landed: {layout:?}");
    assert!(!layout.segments.is_empty(), "its sources were not deleted");
    assert_eq!(reads(&log, &store, &users, t).await, before);
    log.shutdown().await;
    // A restart finds it unverified: the segments are still read.
    reopen_and_settle(&ts, &users, t, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_history_object_is_never_read_while_its_sources_are_there() {
    let (ts, _faulty, log, users, t) = faulty().await;
    let before = reads(&log, &ts.store, &users, t).await;
    log.shutdown().await;
    // Garbage where compaction would put segments 1..=3.
    ts.store
        .put(
            &keys::history(0, 1, 3),
            PutPayload::from_static(b"not parquet"),
        )
        .await
        .expect("put garbage");
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == "unreadable" && p.key.contains("history")),
        "{:?}",
        report.problems
    );
    reopen_and_settle(&ts, &users, t, &before).await;
}

/// Plants a well-formed history object of segments `1..=head` whose first event's document
/// was changed: what a compaction that wrote wrong bytes, and was interrupted before comparing
/// them with the sources, would leave.
async fn plant_tampered(store: &Arc<dyn ObjectStore>, head: u64) {
    let mut segs: Vec<keepsake_segment::Segment> =
        keepsake_log::scan_shard(store.clone(), 0, 1, 0, 4)
            .await
            .expect("scan")
            .try_collect()
            .await
            .expect("segments");
    assert_eq!(segs.len() as u64, head);
    segs[0].events[0].document = Some(keepsake_model::Document::from_stored("{\"tampered\":true}"));
    let bytes = keepsake_segment::encode_history(0, &segs).expect("encode");
    store
        .put(&keys::history(0, 1, head), PutPayload::from(bytes))
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_object_that_differs_from_its_sources_is_not_trusted() {
    let (ts, _faulty, log, users, t) = faulty().await;
    let head = log.head(0);
    let before = reads(&log, &ts.store, &users, t).await;
    log.shutdown().await;
    plant_tampered(&ts.store, head).await;
    reopen_and_settle(&ts, &users, t, &before).await;
}

/// An unfinished merge: verified history objects (their segments deleted), and a wider one
/// over them not yet compared. Reads take the narrower ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_merge_reads_the_narrower_verified_objects() {
    let (ts, _faulty, log, users, t) = faulty().await;
    log.compact_now().await.expect("compact");
    rounds(&log, &users, 14, 17).await;
    let head = log.head(0);
    let before = reads(&log, &ts.store, &users, t).await;
    log.shutdown().await;
    plant_tampered(&ts.store, head).await;
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert!(
        layout.history.len() >= 2 && !layout.segments.is_empty(),
        "{layout:?}"
    );
    reopen_and_settle(&ts, &users, t, &before).await;
}

/// A correct history object of segments in the middle of the log (as a compaction with other
/// settings could leave): it is adopted, and the segments on both sides are compacted around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_object_in_the_middle_is_adopted() {
    let (ts, _faulty, log, users, t) = faulty().await;
    let before = reads(&log, &ts.store, &users, t).await;
    log.shutdown().await;
    let segs: Vec<keepsake_segment::Segment> =
        keepsake_log::scan_shard(ts.store.clone(), 0, 4, 0, 4)
            .await
            .expect("scan")
            .take(4)
            .try_collect()
            .await
            .expect("segments 4..=7");
    let bytes = keepsake_segment::encode_history(0, &segs).expect("encode");
    ts.store
        .put(&keys::history(0, 4, 7), PutPayload::from(bytes))
        .await
        .expect("put");
    reopen_and_settle(&ts, &users, t, &before).await;
}

/// The read-back of a new history object fails: nothing is deleted (neither its sources nor,
/// since a failed read says nothing about it, the object), and the object is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_object_that_cannot_be_read_back_is_not_relied_on() {
    let (_ts, faulty, log, users, t) = faulty().await;
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let before = reads(&log, &store, &users, t).await;
    let listed = list_layout(store.as_ref(), 0).await.expect("layout");
    faulty.inject(FaultOp::Get, "/history/", Fault::Fail, STORE_ATTEMPTS);
    assert!(
        log.compact_now().await.is_err(),
        "an unverified object is an error"
    );
    let layout = list_layout(store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.segments, listed.segments,
        "no source is deleted: {layout:?}"
    );
    assert_eq!(layout.history.len(), 1, "the object stays: {layout:?}");
    assert!(
        !layout.relied_on(&layout.history[0]),
        "and is not relied on: {layout:?}"
    );
    assert_eq!(reads(&log, &store, &users, t).await, before);
    settled(&log, &store).await;
    assert_eq!(reads(&log, &store, &users, t).await, before);
    log.shutdown().await;
}

/// As-of reads that start from a checkpoint in the middle of a history object read only the
/// object's rows after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_reads_from_a_checkpoint_inside_a_history_object() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        compaction: CompactionPolicy {
            enabled: false,
            min_segments: 1,
            max_events: 100_000,
        },
        ..fast_config()
    };
    let log = open(ts.store.clone(), 1, cfg).await.expect("open");
    let users: Vec<UserId> = (0..3).map(|_| user()).collect();
    rounds(&log, &users, 0, 6).await;
    log.compact_now().await.expect("compact");
    let middle = log.checkpoint(0).expect("a checkpoint");
    let seq_at_middle: HashMap<UserId, u64> = {
        let mut m = HashMap::new();
        for u in &users {
            m.insert(*u, log.last_seq(u).await.expect("seq"));
        }
        m
    };
    rounds(&log, &users, 6, 12).await;
    // Replays from the first event, before the second compaction.
    let mut expected = Vec::new();
    for u in &users {
        for n in [seq_at_middle[u], seq_at_middle[u] + 1, seq_at_middle[u] + 7] {
            expected.push((
                log.user_at(u, UpTo::Seq(n)).await.expect("at"),
                log.items_at(u, UpTo::Seq(n)).await.expect("items at"),
            ));
        }
    }
    log.compact_now().await.expect("compact again");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.history.len(),
        1,
        "merged into one object: {layout:?}"
    );
    assert!(layout.history[0].first <= middle && middle < layout.history[0].last);
    let mut got = Vec::new();
    for u in &users {
        for n in [seq_at_middle[u], seq_at_middle[u] + 1, seq_at_middle[u] + 7] {
            got.push((
                log.user_at(u, UpTo::Seq(n)).await.expect("at"),
                log.items_at(u, UpTo::Seq(n)).await.expect("items at"),
            ));
        }
    }
    assert_eq!(got, expected);
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_compaction_see_every_event() {
    let ts = store(Backend::File).await.expect("store");
    let log = Arc::new(open(ts.store.clone(), 1, cfg()).await.expect("open"));
    let users: Vec<UserId> = (0..4).map(|_| user()).collect();
    rounds(&log, &users, 0, 10).await;
    let expected: HashMap<UserId, Vec<Event>> = {
        let mut m = HashMap::new();
        for u in &users {
            m.insert(*u, log.user_events(u, UpTo::End).await.expect("events"));
        }
        m
    };
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    let all: std::collections::HashSet<UserId> = users.iter().copied().collect();
    let fleet = log.users_at(0, &all, t).await.expect("users at");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = users
        .iter()
        .map(|u| {
            let (log, stop, store, u, want) = (
                log.clone(),
                stop.clone(),
                ts.store.clone(),
                *u,
                expected[u].clone(),
            );
            let (all, fleet) = (all.clone(), fleet.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n == 0 {
                    // A scan of the shard, as a fleet restore reads it.
                    assert_eq!(log.users_at(0, &all, t).await.expect("scan"), fleet);
                    assert_eq!(log.user_events(&u, UpTo::End).await.expect("read"), want);
                    let (listed, _) = read_user(store.clone(), 0, u, UpTo::End)
                        .await
                        .expect("read");
                    assert_eq!(listed, want);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for _ in 0..3 {
        log.compact_now().await.expect("compact");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.expect("reader") > 0);
    }
    log.shutdown().await;
}

/// With the default wiring, the checkpointer compacts after each checkpoint it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_compacts_in_the_background() {
    let ts = store(Backend::File).await.expect("store");
    let cfg = LogConfig {
        checkpoint_every_events: 40,
        compaction: CompactionPolicy {
            enabled: true,
            min_segments: 4,
            max_events: 1_000,
        },
        ..fast_config()
    };
    let log = open(ts.store.clone(), 1, cfg).await.expect("open");
    let users: Vec<UserId> = (0..4).map(|_| user()).collect();
    rounds(&log, &users, 0, 12).await;
    let expected: Vec<Vec<Event>> = {
        let mut v = Vec::new();
        for u in &users {
            v.push(log.user_events(u, UpTo::End).await.expect("events"));
        }
        v
    };
    let mut waited = 0;
    while keepsake_log::LogStats::get(&log.stats().compactions) == 0 {
        assert!(
            waited < 200,
            "no compaction within 10 s of checkpoints being due"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert!(!layout.history.is_empty(), "{layout:?}");
    let mut got = Vec::new();
    for u in &users {
        got.push(log.user_events(u, UpTo::End).await.expect("events"));
    }
    assert_eq!(got, expected);
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// A stale patch whose base lies before the checkpoint before the newest, inside a history
/// object: found by its seq, and merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_patch_finds_its_base_in_a_history_object() {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    let u = user();
    let it = keepsake_model::ItemId(uuid::Uuid::from_u128(7));
    let patch = |base, doc| change(Kind::Note, it, Some(base), ChangeBody::patch(doc));
    push(&log, u, vec![put(it, json!({"a": 1, "b": 1}))])
        .await
        .expect("v1");
    push(&log, u, vec![patch(1, json!({"a": 2}))])
        .await
        .expect("v2");
    let others: Vec<UserId> = (0..3).map(|_| user()).collect();
    rounds(&log, &others, 0, 3).await;
    log.compact_now().await.expect("compact");
    rounds(&log, &others, 3, 6).await;
    log.compact_now().await.expect("compact again");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert!(layout.segments.is_empty() && !layout.history.is_empty());
    let merged = push(&log, u, vec![patch(1, json!({"b": 2}))])
        .await
        .expect("v3");
    assert!(
        matches!(merged.outcomes[0], keepsake_model::Outcome::Applied(c) if c.version == 3),
        "{merged:?}"
    );
    assert_eq!(
        document_of(&log, u, it).await.as_deref(),
        Some(r#"{"a":2,"b":2}"#)
    );
    assert_eq!(
        keepsake_log::LogStats::get(&log.stats().writer_ancestor_reads),
        0
    );
    log.shutdown().await;
}

/// Two processes on one store: one compacts; the other, whose view still knows the segments,
/// reads the same by finding them in the history objects; then it compacts too, and both agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_reads_what_another_process_compacted() {
    let ts = store(Backend::File).await.expect("store");
    let a = open(ts.store.clone(), 1, cfg()).await.expect("open a");
    let users: Vec<UserId> = (0..4).map(|_| user()).collect();
    rounds(&a, &users, 0, 10).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    let b = open(ts.reopen().expect("reopen"), 1, cfg())
        .await
        .expect("open b");
    let before = reads(&b, &ts.store, &users, t).await;
    a.compact_now().await.expect("a compacts");
    assert_eq!(reads(&b, &ts.store, &users, t).await, before);
    b.compact_now().await.expect("b compacts");
    assert_eq!(reads(&a, &ts.store, &users, t).await, before);
    assert_eq!(reads(&b, &ts.store, &users, t).await, before);
    a.shutdown().await;
    b.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// A read of a user's old log meets two steps of compaction: the segments it located move into
/// a history object, then that object is merged into a larger one and deleted. Both times the
/// view knows where they went (compaction tells it before deleting), so the read asks the view
/// again and never lists the store. It used to list the store from the second move on: in a
/// compaction round that merges step after step, long reads listed a shard of tens of thousands
/// of segments 40 times a second and took the file store's time from pushes (`make
/// sustained`, 2026-12-02).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_meets_two_compaction_steps_asks_the_view_not_the_store() {
    use keepsake_store::{InstrumentedStore, StoreOp, StoreStats};
    let ts = store(Backend::File).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let stats = Arc::new(StoreStats::default());
    let counted: Arc<dyn ObjectStore> =
        Arc::new(InstrumentedStore::new(faulty.clone(), stats.clone()));
    let log = Arc::new(open(counted, 1, cfg()).await.expect("open"));
    let u = user();
    rounds(&log, &[u], 0, 4).await;
    let expected = log.user_events(&u, UpTo::End).await.expect("events");

    // The read's GET of segment 1 waits while compaction moves the segments (held by its
    // name: the read first asks for the segment after the head, which is not there).
    let segment_get = faulty.hold(FaultOp::Get, keys::segment(0, 1).as_ref());
    let reading = tokio::spawn({
        let log = log.clone();
        async move { log.user_events(&u, UpTo::End).await }
    });
    let reach = |gate: keepsake_store::faults::Gate| async move {
        tokio::time::timeout(std::time::Duration::from_secs(20), gate.reached())
            .await
            .expect("the read reached the held GET");
    };
    reach(segment_get.clone()).await;
    log.compact_now().await.expect("compact");
    assert_eq!(
        list_layout(ts.store.as_ref(), 0)
            .await
            .expect("layout")
            .segments
            .len(),
        0
    );
    // Located again in the history object, its GET waits while a second step merges that
    // object into a larger one and deletes it.
    let history_get = faulty.hold(FaultOp::Get, "/history/");
    segment_get.release();
    reach(history_get.clone()).await;
    rounds(&log, &[u], 4, 6).await;
    log.compact_now().await.expect("compact again");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.history.len(),
        1,
        "merged into one object: {layout:?}"
    );
    // Nothing else lists the store from here on (no background checkpoint is due), and the
    // read's tasks are not all counted under its cause: every LIST counts.
    let lists = stats.requests_of(StoreOp::List);
    history_get.release();

    let read = reading.await.expect("task").expect("the read");
    assert_eq!(read[..expected.len()], expected[..]);
    assert_eq!(
        stats.requests_of(StoreOp::List) - lists,
        0,
        "the read listed the store instead of asking the view"
    );
    log.shutdown().await;
}

/// A file store whose GETs can be counted, and a log config whose compaction runs only when
/// asked and writes history objects of at most 16 events (many small objects to search).
async fn counted_file_store() -> (keepsake_tests::TestStore, Arc<FaultyStore>, LogConfig) {
    let ts = store(Backend::File).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let small = LogConfig {
        compaction: CompactionPolicy {
            enabled: false,
            min_segments: 1,
            max_events: 16,
        },
        ..fast_config()
    };
    (ts, faulty, small)
}

/// A stale patch whose base is recent but before the checkpoint before the newest: its base is
/// sought in the newest history object first, then in the 8 before it..., and the search stops
/// once found. It used to read the user's rows in every history object of the shard, and every
/// one holds rows of every user: in `make sustained` each such push cost more as the log aged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_patch_reads_the_newest_history_objects_first() {
    let (ts, faulty, small) = counted_file_store().await;
    let log = open(faulty.clone(), 1, small).await.expect("open");
    let others: Vec<UserId> = (0..8).map(|_| user()).collect();
    rounds(&log, &others, 0, 20).await;
    let u = user();
    let it = keepsake_model::ItemId(uuid::Uuid::from_u128(7));
    let patch = |base, doc| change(Kind::Note, it, Some(base), ChangeBody::patch(doc));
    push(&log, u, vec![put(it, json!({"a": 1, "b": 1}))])
        .await
        .expect("v1");
    push(&log, u, vec![patch(1, json!({"a": 2}))])
        .await
        .expect("v2");
    log.compact_now().await.expect("compact");
    rounds(&log, &others, 20, 22).await;
    log.compact_now().await.expect("compact again");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert!(layout.segments.is_empty(), "{layout:?}");
    let objects = layout.history.len();
    assert!(objects >= 20, "{objects} history objects");
    let read: Vec<_> = layout
        .history
        .iter()
        .map(|h| faulty.count_gets(keys::history(0, h.first, h.last).as_ref()))
        .collect();

    let merged = push(&log, u, vec![patch(1, json!({"b": 2}))])
        .await
        .expect("v3");
    assert!(
        matches!(merged.outcomes[0], keepsake_model::Outcome::Applied(c) if c.version == 3),
        "{merged:?}"
    );
    assert_eq!(
        document_of(&log, u, it).await.as_deref(),
        Some(r#"{"a":2,"b":2}"#)
    );
    let touched = read
        .iter()
        .filter(|c| c.load(std::sync::atomic::Ordering::Relaxed) > 0)
        .count();
    assert!(
        (1..=9).contains(&touched),
        "the base was sought in {touched} of {objects} history objects"
    );
    log.shutdown().await;
}

/// A resent change whose id the user holds only in its filter of older ids (loaded from a
/// checkpoint) is sought in the newest history object first, then in the 8 before it..., and
/// the search stops once found. It used to read the user's rows in every history object of the
/// shard to answer one resend (each holds rows of every user): in `make sustained` the resends
/// of pushes that timed out during a round of upkeep each read the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_old_change_reads_the_newest_history_objects_first() {
    let (ts, faulty, small) = counted_file_store().await;
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let log = open(as_store.clone(), 1, small.clone())
        .await
        .expect("open");
    let others: Vec<UserId> = (0..8).map(|_| user()).collect();
    rounds(&log, &others, 0, 20).await;
    let u = user();
    let c = put(
        keepsake_model::ItemId(uuid::Uuid::from_u128(7)),
        json!({"a": 1}),
    );
    let first = push(&log, u, vec![c.clone()]).await.expect("push");
    let keepsake_model::Outcome::Applied(original) = first.outcomes[0] else {
        panic!("{:?}", first.outcomes)
    };
    rounds(&log, &others, 20, 21).await;
    log.compact_now().await.expect("compact");
    log.shutdown().await;
    // Loaded from the checkpoint: the id is in the user's filter, not held exactly.
    let log = open(as_store, 1, small).await.expect("reopen");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    let objects = layout.history.len();
    assert!(objects >= 20, "{objects} history objects");
    let read: Vec<_> = layout
        .history
        .iter()
        .map(|h| faulty.count_gets(keys::history(0, h.first, h.last).as_ref()))
        .collect();
    let head = log.head(0);
    let again = push(&log, u, vec![c]).await.expect("push again");
    assert_eq!(
        again.outcomes,
        vec![keepsake_model::Outcome::Duplicate(original)]
    );
    assert_eq!(log.head(0), head, "nothing written");
    assert_eq!(
        keepsake_log::LogStats::get(&log.stats().old_change_reads),
        1,
        "the resend was resolved from the log"
    );
    let touched = read
        .iter()
        .filter(|c| c.load(std::sync::atomic::Ordering::Relaxed) > 0)
        .count();
    assert!(
        (1..=9).contains(&touched),
        "the resent change was sought in {touched} of {objects} history objects"
    );
    log.shutdown().await;
}

/// An as-of read of a user changed since the moment starts from an older checkpoint, picked by
/// the time of its segment; once that segment is compacted, the time is in a history object's
/// footer, whose sources (tens of thousands of small segments after a burst of registrations)
/// took most of such a read at a million users (`make scale`, 2026-12-02: p50 17.8 ms, ~40% of
/// it parsing them, twice per read). The view keeps the time: a second read of that moment
/// does not read the history object (here it fails if it does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_as_of_read_from_an_older_checkpoint_reads_its_time_once() {
    let (ts, faulty, small) = counted_file_store().await;
    let small = LogConfig {
        checkpoint_every_events: 10,
        ..small
    };
    let log = open(faulty.clone(), 1, small).await.expect("open");
    let others: Vec<UserId> = (0..4).map(|_| user()).collect();
    let u = user();
    let it = keepsake_model::ItemId(uuid::Uuid::from_u128(7));
    push(&log, u, vec![put(it, json!({"v": 1}))])
        .await
        .expect("v1");
    rounds(&log, &others, 0, 2).await;
    log.compact_now().await.expect("compact");
    let c1 = log.checkpoint(0).expect("a checkpoint");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    let holding = layout
        .history
        .iter()
        .find(|h| h.first <= c1 && c1 <= h.last)
        .expect("the checkpoint's segment is compacted");
    let held = keys::history(0, holding.first, holding.last);
    let moment = keepsake_log::read_segment_meta(ts.store.clone(), 0, c1)
        .await
        .expect("read")
        .expect("its time")
        .last_recorded_at;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    push(&log, u, vec![put(it, json!({"v": 2}))])
        .await
        .expect("v2");
    // Not compacted: what follows the older checkpoint stays in segments.
    rounds(&log, &others, 2, 6).await;
    let c2 = until_checkpointed(&log, 0, Some(c1)).await;
    assert!(c2 > c1);

    let first = log.user_at(&u, UpTo::Time(moment)).await.expect("as of");
    assert_eq!(first.last_seq(), 1, "as it was at the moment: v1");
    faulty.inject(FaultOp::Get, held.as_ref(), Fault::Fail, 10_000);
    let second = log
        .user_at(&u, UpTo::Time(moment))
        .await
        .expect("the same read again, without the history object");
    assert_eq!(second, first);
    log.shutdown().await;
}

/// A round that cannot merge into the history object before it (already full) learns so from
/// its footer: it never fetches and decodes the whole object only to drop it (up to
/// `max_events` events more in memory, beside a full view).
#[tokio::test]
async fn a_full_history_object_is_not_read_whole_to_learn_it_is_full() {
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let log = open(store, 1, cfg()).await.expect("open");
    let users: Vec<UserId> = (0..20).map(|_| user()).collect();
    // 20 segments of 3 events each: one history object of 60, full.
    for u in &users {
        let changes = (0..3).map(|i| put(item(), json!({ "i": i }))).collect();
        push(&log, *u, changes).await.expect("push");
    }
    let first = log.compact_now().await.expect("compact");
    assert_eq!((first.written, first.segments), (1, 20));
    let full = keys::history(0, 1, 20).to_string();
    let whole_reads = faulty.count_whole_gets(&full);
    for u in &users {
        push(&log, *u, vec![put(item(), json!({ "i": 3 }))])
            .await
            .expect("push");
    }
    let second = log.compact_now().await.expect("compact");
    assert_eq!((second.written, second.segments), (1, 20));
    assert_eq!(
        whole_reads.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "{full} was read whole"
    );
    for u in &users {
        let items = log
            .user(u, |s: &UserState| s.item_count())
            .await
            .expect("read");
        assert_eq!(items, 4);
    }
    log.shutdown().await;
}

/// One user's read of a large history object (1,500 users' events, as compaction merges them)
/// fetches about its own rows: under `make sustained`, the stale patches' reads of their bases
/// in history objects fetched ~0.9 GB a second by minute 9, growing as the objects grew (the
/// dictionary pages of `user_id`, `device_id`, `request_id` and `recorded_at`, whole, pages of
/// 2,048 rows, and everything less than 1 MiB between the pages wanted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_read_of_a_large_history_object_fetches_about_its_own_rows() {
    let ts = store(Backend::Memory).await.expect("store");
    let (counted, stats) = counted_store(&ts);
    let whole = LogConfig {
        compaction: CompactionPolicy {
            enabled: false,
            min_segments: 1,
            max_events: 1_000_000,
        },
        ..fast_config()
    };
    let log = open(counted, 1, whole).await.expect("open");
    let users: Vec<UserId> = (0..1_500).map(|_| user()).collect();
    for u in &users {
        // ~500 bytes of ids as text, as the load generator's documents.
        push(&log, *u, puts_of_text(20, 15)).await.expect("push");
    }
    log.compact_now().await.expect("compact");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.history.len(),
        1,
        "one history object of every segment"
    );
    // The first read keeps the object's footer in the view, as every read after it finds it.
    log.user_events(&users[0], UpTo::End).await.expect("read");
    let mut most = 0;
    for u in [users[300], users[750], users[1_200]] {
        let before = stats.bytes_read();
        let events = log.user_events(&u, UpTo::End).await.expect("read");
        assert_eq!(events.len(), 20);
        most = most.max(stats.bytes_read() - before);
    }
    log.shutdown().await;
    // ~6 KB of its own rows, in a page or two of each column, and what lies between pages
    // fetched together. Before: ~2.4 MB (1.6 MB with pages of 256 rows and no dictionaries
    // alone, 280 KB with ranges fetched together only 16 KiB apart alone).
    let bound = 4 * keepsake_segment::DOCUMENT_PAGE_BYTES as u64;
    assert!(
        most <= bound,
        "one user's read of a history object fetched {most} bytes (bound {bound})"
    );
}
