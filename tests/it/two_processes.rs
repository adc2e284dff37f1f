//! Two processes on one store, with compaction between them (the audit's holes 1, 2 and 9):
//! a segment number, once used, is never usable again; compaction never deletes on a failed
//! read, nor on a count of sources that holds some numbers twice.

use std::collections::HashMap;
use std::sync::Arc;

use keepsake_log::{
    CompactionPolicy, LogConfig, LogError, UpTo, compact_shard, list_layout, scan_shard,
    verify::verify_store, write_checkpoint,
};
use keepsake_model::{ChangeBody, ChangeId, ChangeRef, Outcome, StateRead, UserId, UserState};
use keepsake_segment::Segment;
use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
use keepsake_store::keys;
use keepsake_tests::{Backend, store};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;

use futures::TryStreamExt;

use crate::common::*;

on_every_backend!(
    a_checkpoint_is_not_stopped_by_a_gap_after_its_segment,
    a_compaction_is_not_stopped_by_a_gap_after_its_segment,
    a_writer_behind_never_writes_into_a_compacted_number,
    a_failed_read_back_never_deletes_the_only_copy,
    overlapping_history_objects_are_not_counted_as_every_source,
    a_checkpoint_is_written_only_when_its_fold_reached_its_segment,
    an_answer_that_writes_nothing_is_not_decided_on_a_stale_view,
    a_checkpoint_deleted_by_another_process_is_replaced_not_an_outage,
    a_view_never_goes_back_to_an_older_checkpoint,
    every_user_another_process_wrote_is_listed,
    a_short_listing_never_gives_a_target_without_committed_events,
    a_read_by_seq_sees_what_another_process_committed,
    verify_reports_no_gap_for_a_compaction_during_its_listing,
    a_fold_never_reads_a_stray_put_after_its_listing,
    a_catch_up_never_applies_a_stray_put_after_its_listing,
    a_tag_names_one_write_of_an_object,
    a_load_from_the_view_never_reads_a_stray,
    a_load_by_ranges_from_the_view_never_reads_a_stray,
    segment_metadata_is_never_a_strays,
    a_settle_never_deletes_a_history_object_for_a_stray,
    verify_never_folds_a_stray_put_after_its_listing,
);

/// No background checkpoints or compaction: the tests run them.
fn cfg() -> LogConfig {
    LogConfig {
        checkpoint_every_events: u64::MAX,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        compaction: CompactionPolicy {
            enabled: false,
            min_segments: 1,
            max_events: 1000,
        },
        ..fast_config()
    }
}

fn acked(outcome: &Outcome) -> ChangeRef {
    match outcome {
        Outcome::Applied(x) | Outcome::Duplicate(x) => *x,
        other => panic!("not acknowledged: {other:?}"),
    }
}

/// Every acknowledged change is in the log exactly once, with the seq and version it was
/// acknowledged with, read by a process that opens the store afresh.
async fn assert_log_holds(
    store: Arc<dyn ObjectStore>,
    user: UserId,
    acks: &HashMap<ChangeId, ChangeRef>,
) {
    let fresh = open(store.clone(), 1, cfg()).await.expect("fresh open");
    let events = fresh.user_events(&user, UpTo::End).await.expect("events");
    assert!(UserState::replay(&events).is_ok(), "seq dense: {events:?}");
    let mut seen: HashMap<ChangeId, (u64, u64)> = HashMap::new();
    for e in &events {
        assert!(
            seen.insert(e.change_id, (e.seq, e.version)).is_none(),
            "change {:?} in the log twice",
            e.change_id
        );
    }
    for (id, r) in acks {
        assert_eq!(
            seen.get(id),
            Some(&(r.seq, r.version)),
            "acknowledged change {id:?} is in the log as acknowledged: {events:?}"
        );
    }
    let live = fresh
        .user(&user, |s| s.last_seq())
        .await
        .expect("live state");
    assert_eq!(live, events.len() as u64);
    fresh.shutdown().await;
    let (report, _) = verify_store(&store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// A pushes (segment 1); B pushes, is fenced, catches up, writes segment 2; B compacts 1-2
/// (their objects deleted); A, still at head 1, pushes: its create-only PUT of segment 2 used
/// to succeed, and A acknowledged seq 2 a second time. Now the number counts as taken: A's
/// push is refused as fenced, A catches up through the history object, and the device's
/// resend lands as segment 3.
async fn a_writer_behind_never_writes_into_a_compacted_number(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let a = open(ts.store.clone(), 1, cfg()).await.expect("a");
    let b = open(ts.reopen().expect("second handle"), 1, cfg())
        .await
        .expect("b");
    let u = user();
    let mut acks = HashMap::new();

    let c1 = put(item(), json!({"by": "a", "n": 1}));
    let r1 = push(&a, u, vec![c1.clone()]).await.expect("a pushes");
    acks.insert(c1.change_id, acked(&r1.outcomes[0]));
    let c2 = put(item(), json!({"by": "b", "n": 2}));
    let (r2, _) = push_as_device(&b, u, vec![c2.clone()]).await;
    acks.insert(c2.change_id, acked(&r2.outcomes[0]));
    assert_eq!(acked(&r2.outcomes[0]).seq, 2);
    let report = b.compact_now().await.expect("b compacts");
    assert_eq!(report.segments, 2, "{report:?}");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert!(layout.segments.is_empty(), "{layout:?}");

    let c3 = put(item(), json!({"by": "a", "n": 3}));
    let first = push(&a, u, vec![c3.clone()]).await;
    assert!(
        matches!(first, Err(LogError::Fenced { .. })),
        "a writer behind is fenced by the compacted number, not acknowledged: {first:?}"
    );
    assert_eq!(reused_numbers(&a), 1);
    let (r3, _) = push_as_device(&a, u, vec![c3.clone()]).await;
    let r3 = acked(&r3.outcomes[0]);
    assert_eq!(r3.seq, 3, "seq 2 was B's");
    acks.insert(c3.change_id, r3);
    // B sees A's segment 3 on its next push (fenced, caught up).
    let c4 = put(item(), json!({"by": "b", "n": 4}));
    let (r4, _) = push_as_device(&b, u, vec![c4.clone()]).await;
    acks.insert(c4.change_id, acked(&r4.outcomes[0]));
    a.shutdown().await;
    b.shutdown().await;

    // No object is left in a used number: 1-2 in history, 3 and 4 as segments.
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.segments.iter().map(|l| l.n).collect::<Vec<_>>(),
        vec![3, 4],
        "{layout:?}"
    );
    assert_log_holds(ts.store.clone(), u, &acks).await;

    // A writer that stopped between such a PUT and its removal leaves its object behind:
    // readers read the history object's copy of the number, and verify reports the stray.
    let mut rogue: Segment = scan_shard(ts.store.clone(), 0, 2, 0, 1)
        .await
        .expect("scan")
        .try_next()
        .await
        .expect("read")
        .expect("segment 2");
    rogue.meta.batch_id = keepsake_model::BatchId(uuid());
    rogue.events[0].change_id = ChangeId(uuid());
    let bytes = keepsake_segment::encode(&rogue.events, &rogue.meta).expect("encode");
    ts.store
        .put_opts(
            &keys::segment(0, 2),
            PutPayload::from(bytes),
            keepsake_store::create_only(),
        )
        .await
        .expect("plant a stray segment 2");
    let fresh = open(ts.reopen().expect("handle"), 1, cfg())
        .await
        .expect("fresh open");
    let events = fresh.user_events(&u, UpTo::End).await.expect("events");
    assert!(
        events.iter().any(|e| e.change_id == c2.change_id),
        "B's acknowledged change is read from the history object: {events:?}"
    );
    fresh.shutdown().await;
    assert_only_stray(&ts.store, 2).await;
}

/// Verify finds exactly one problem: a stray segment object `n` in shard 0.
async fn assert_only_stray(store: &Arc<dyn ObjectStore>, n: u64) {
    let (report, _) = verify_store(store, 1).await.expect("verify");
    assert_eq!(
        report
            .problems
            .iter()
            .map(|p| (p.kind, p.key.as_str()))
            .collect::<Vec<_>>(),
        vec![("stray_segment", keys::segment(0, n).as_ref())],
        "{:?}",
        report.problems
    );
}

fn reused_numbers(log: &keepsake_log::Log) -> u64 {
    keepsake_log::LogStats::get(&log.stats().reused_numbers)
}

/// Pushes `n` single-change segments for `u`, and returns what was acknowledged.
/// One user's three pushes, segments 1..=3, by a process that has stopped since.
async fn three_segments_of_one_user(
    ts: &keepsake_tests::TestStore,
) -> (UserId, HashMap<ChangeId, ChangeRef>) {
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    let u = user();
    let acks = fill(&log, u, 3).await;
    log.shutdown().await;
    (u, acks)
}

async fn fill(log: &keepsake_log::Log, u: UserId, n: usize) -> HashMap<ChangeId, ChangeRef> {
    let mut acks = HashMap::new();
    for i in 0..n {
        let c = put(item(), json!({"i": i}));
        let r = push(log, u, vec![c.clone()]).await.expect("push");
        acks.insert(c.change_id, acked(&r.outcomes[0]));
    }
    acks
}

/// Segment 5 as a listing could show it before 4: a copy of segment 3's object under 5.
async fn gap_at_4(store: &Arc<dyn ObjectStore>) {
    let three = store
        .get(&keys::segment(0, 3))
        .await
        .expect("segment 3")
        .bytes()
        .await
        .expect("bytes");
    store
        .put(&keys::segment(0, 5), PutPayload::from_bytes(three))
        .await
        .expect("put 5");
}

/// The same for compaction after that checkpoint: it moves segments 1..=3 only. (Under
/// `make sustained` every compaction failed with "segment N is missing but later segments
/// exist", N past its checkpoint, so none ran in 17 minutes.)
async fn a_compaction_is_not_stopped_by_a_gap_after_its_segment(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let (u, acks) = three_segments_of_one_user(&ts).await;
    write_checkpoint(&ts.store, 0, None, 3, 2)
        .await
        .expect("the checkpoint after 3");
    gap_at_4(&ts.store).await;
    let policy = CompactionPolicy {
        enabled: true,
        min_segments: 1,
        max_events: 1000,
    };
    let report = compact_shard(&ts.store, 0, 3, None, &policy)
        .await
        .expect("compaction up to 3 is not stopped by 4 missing");
    assert_eq!(report.segments, 3, "{report:?}");
    let layout = list_layout(ts.store.as_ref(), 0)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        layout.is_some_and(|e| e.contains("missing")),
        "the gap at 4 is still there for a reader of the whole log"
    );
    ts.store
        .delete(&keys::segment(0, 5))
        .await
        .expect("the test's copy goes");
    assert_log_holds(ts.store.clone(), u, &acks).await;
}

/// A busy shard writes segments while a checkpoint lists them, and a listing of a directory
/// being written to (the file system's) can show a later segment and miss an earlier one. A
/// checkpoint after segment 3 needs segments 1..=3 only: segment 5 listed without 4 is no gap
/// to it. (It failed with "segment 4 is missing but later segments exist" on every try: under
/// `make sustained` at 300 segments a second no checkpoint was written in 20 minutes.)
async fn a_checkpoint_is_not_stopped_by_a_gap_after_its_segment(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let (u, acks) = three_segments_of_one_user(&ts).await;
    gap_at_4(&ts.store).await;
    let users = write_checkpoint(&ts.store, 0, None, 3, 2)
        .await
        .expect("the checkpoint after 3 is written");
    assert_eq!(users, 1);
    // It holds exactly what was acknowledged up to 3.
    let state = keepsake_log::read_checkpoint(ts.store.as_ref(), 0, 3)
        .await
        .expect("checkpoint 3 reads");
    let mine = state.get(&u).expect("the user");
    // Format 5 holds the change ids as a filter: exactly the acknowledged ids, each at its seq,
    // and each item at the version its last acknowledged change gave it.
    let mut want = keepsake_model::ChangeFilter::default();
    for (change, r) in &acks {
        assert!(
            mine.change_may_be_older(change),
            "{change} is in the filter"
        );
        want.insert(r.seq, change);
        let item = mine.item(&r.item_id).expect("the item");
        assert!(item.version >= r.version);
    }
    assert_eq!(mine.change_filter(), want);
    assert_eq!(mine.last_seq(), 3);
}

/// Two processes compact the same range. B read the segments and is about to write the history
/// object when A writes it, verifies it and deletes the segments. B's PUT then finds the object
/// there, and reading it back fails: B used to count that as "differs" and delete it — the only
/// copy. Now a failed read is an error and nothing is deleted.
async fn a_failed_read_back_never_deletes_the_only_copy(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let (u, acks) = three_segments_of_one_user(&ts).await;
    write_checkpoint(&ts.store, 0, None, 3, 2)
        .await
        .expect("checkpoint");

    let faulty = FaultyStore::new(ts.reopen().expect("b's handle"));
    let b_store: Arc<dyn ObjectStore> = faulty.clone();
    let history_put = faulty.hold(FaultOp::Put, "/history/");
    let policy = CompactionPolicy {
        enabled: true,
        min_segments: 1,
        max_events: 1000,
    };
    let b = tokio::spawn({
        let b_store = b_store.clone();
        async move { compact_shard(&b_store, 0, 3, None, &policy).await }
    });
    history_put.reached().await;
    // A compacts the same range to the end: the segments are gone, the history object holds
    // the only copy.
    let a = compact_shard(&ts.store, 0, 3, None, &policy)
        .await
        .expect("a compacts");
    assert_eq!(a.segments, 3);
    // B's HEAD of the object it found there goes through; every read after it fails.
    faulty.inject(
        FaultOp::Get,
        "/history/",
        Fault::Delay(std::time::Duration::ZERO),
        1,
    );
    faulty.inject(FaultOp::Get, "/history/", Fault::Fail, 100);
    history_put.release();
    let b = b.await.expect("b's task");
    assert!(b.is_err(), "a read that failed is an error: {b:?}");
    faulty.clear();

    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.history.len(),
        1,
        "the history object is kept: {layout:?}"
    );
    assert_log_holds(ts.store.clone(), u, &acks).await;
}

/// History objects 1-2 and 2-3 (overlapping, as failed deletes can leave them) and 1-4 that
/// differs from them; no segment objects. Settling 1-4 read four segments from its narrower
/// objects (2 twice) and took that for "every source is still there", then deleted 1-4 — the
/// only holder of segment 4. Now the numbers are counted once each, and 1-4 stays.
async fn overlapping_history_objects_are_not_counted_as_every_source(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    let u = user();
    fill(&log, u, 4).await;
    log.shutdown().await;
    let segs: Vec<Segment> = scan_shard(ts.store.clone(), 0, 1, 0, 2)
        .await
        .expect("scan")
        .try_collect()
        .await
        .expect("segments");
    assert_eq!(segs.len(), 4);
    let history = |first: usize, last: usize, segments: Vec<Segment>| {
        let store = ts.store.clone();
        async move {
            let bytes = keepsake_segment::encode_history(0, &segments).expect("encode");
            store
                .put_opts(
                    &keys::history(0, first as u64, last as u64),
                    PutPayload::from(bytes),
                    keepsake_store::create_only(),
                )
                .await
                .expect("put history");
        }
    };
    history(1, 2, segs[0..2].to_vec()).await;
    history(2, 3, segs[1..3].to_vec()).await;
    // 1-4 with a different copy of segment 1 (another batch id): it differs from 1-2.
    let mut other = segs.clone();
    other[0].meta.batch_id = keepsake_model::BatchId(uuid());
    history(1, 4, other).await;
    for n in 1..=4 {
        ts.store
            .delete(&keys::segment(0, n))
            .await
            .expect("delete segment");
    }
    let policy = CompactionPolicy {
        enabled: true,
        min_segments: 1,
        max_events: 1000,
    };
    let settled = compact_shard(&ts.store, 0, 4, None, &policy).await;
    assert!(
        matches!(settled, Err(LogError::Corrupt { .. })),
        "reported, not deleted: {settled:?}"
    );
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert!(
        layout.history.iter().any(|h| h.first == 1 && h.last == 4),
        "the only holder of segment 4 is kept: {layout:?}"
    );
}

/// A listing that misses the newest segment must not give a checkpoint "after n" that stops
/// before it: recovery from it would drop acknowledged events and reuse their seqs. A listing
/// that ends before `n` is taken again; one that keeps ending there refuses the checkpoint.
async fn a_checkpoint_is_written_only_when_its_fold_reached_its_segment(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let (u, acks) = three_segments_of_one_user(&ts).await;

    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    faulty.inject(FaultOp::List, "/segments", Fault::OmitLast, 100);
    let written = write_checkpoint(&as_store, 0, None, 3, 2).await;
    assert!(
        written.is_err(),
        "every listing stopped at segment 2, so no checkpoint after 3: {written:?}"
    );
    assert!(
        faulty.injected() >= 2,
        "the listings did miss the last segment"
    );
    let checkpoints = keepsake_log::list_checkpoints(ts.store.as_ref(), 0)
        .await
        .expect("checkpoints");
    assert!(checkpoints.is_empty(), "{checkpoints:?}");
    // One short listing: listed again, and the checkpoint holds segment 3.
    faulty.clear();
    faulty.inject(FaultOp::List, "/segments", Fault::OmitLast, 1);
    let before = faulty.injected();
    write_checkpoint(&as_store, 0, None, 3, 2)
        .await
        .expect("checkpoint");
    assert_eq!(faulty.injected(), before + 1, "the first listing was short");
    assert_eq!(
        keepsake_log::list_checkpoints(ts.store.as_ref(), 0)
            .await
            .expect("checkpoints"),
        vec![3]
    );
    // A restart from it holds everything.
    assert_log_holds(ts.store.clone(), u, &acks).await;
}

/// B's view of a user is behind A's commits. A delete through B of an item created through A
/// used to be answered `rejected not_found` from B's view — final: the device drops its user's
/// delete. And the mass-delete guard counted the user's items in B's stale view. Now a batch
/// that writes nothing checks the store's head first, and B re-reads the shard and stages again.
async fn an_answer_that_writes_nothing_is_not_decided_on_a_stale_view(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let a = open(ts.store.clone(), 1, cfg()).await.expect("a");
    let b = open(ts.reopen().expect("second handle"), 1, cfg())
        .await
        .expect("b");
    let u = user();
    let x = item();
    push(&a, u, vec![put(x, json!({"n": 1}))])
        .await
        .expect("a creates the item");
    let del = change(keepsake_model::Kind::Note, x, None, ChangeBody::Delete);
    let r = push(&b, u, vec![del]).await.expect("b answers");
    match r.outcomes[0] {
        Outcome::Applied(c) => assert_eq!((c.seq, c.version), (2, 2)),
        ref other => panic!("the delete is decided on the current log: {other:?}"),
    }
    assert!(keepsake_log::LogStats::get(&b.stats().stale_answers_avoided) >= 1);

    // 30 items through A; B, behind again, is asked to delete 25 of them without confirming.
    let items: Vec<_> = (0..30).map(|_| item()).collect();
    push_as_device(
        &a,
        u,
        items.iter().map(|i| put(*i, json!({"k": 1}))).collect(),
    )
    .await;
    let deletes = items[..25]
        .iter()
        .map(|i| change(keepsake_model::Kind::Note, *i, None, ChangeBody::Delete))
        .collect();
    let guarded = push(&b, u, deletes).await;
    assert!(
        matches!(guarded, Err(LogError::MassDelete(_))),
        "the guard counts the user's items in the current log: {guarded:?}"
    );
    // Sync: once it returns, B's view holds everything committed before it.
    let y = item();
    push_as_device(&a, u, vec![put(y, json!({"n": 2}))]).await;
    b.sync(&u).await.expect("sync");
    assert!(b.user(&u, |s| s.item(&y).is_some()).await.expect("view"));
    a.shutdown().await;
    b.shutdown().await;
}

/// A batch takes its `recorded_at` before its PUT. While one is in flight, the state at "now"
/// used to be read without it, and then the batch was acknowledged with a `recorded_at` before
/// that moment: the state at the moment changed after it was read (a restore to it would have
/// overwritten the change). Now a read at such a moment waits for the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moment_is_read_only_once_its_state_is_final() {
    let ts = store(Backend::Memory).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let log = Arc::new(open(as_store, 1, cfg()).await.expect("open"));
    let u = user();
    push(&log, u, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("first push");
    let put_held = faulty.hold(FaultOp::Put, "/segments/");
    let x = item();
    let pushing = tokio::spawn({
        let log = log.clone();
        async move { push(&log, u, vec![put(x, json!({"n": 2}))]).await }
    });
    put_held.reached().await;
    // Staged and recorded, not yet durable: the moment is after its recorded_at.
    let moment = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    let reading = tokio::spawn({
        let log = log.clone();
        async move { log.items_at(&u, UpTo::Time(moment)).await }
    });
    // Give an unsynchronised read every chance to finish first.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    put_held.release();
    pushing.await.expect("task").expect("second push");
    let at = reading.await.expect("task").expect("items at");
    assert!(
        at.item(&x).is_some(),
        "the state at a moment after an acknowledged change's recorded_at holds it"
    );
    log.shutdown().await;
}

/// A's retention deletes the checkpoint B's view starts user loads from. B used to answer
/// 503 for every cold user until restarted, and its own checkpoints failed. Now B adopts a
/// newer checkpoint (or reads from the first segment), and checkpoints from what is left.
async fn a_checkpoint_deleted_by_another_process_is_replaced_not_an_outage(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let keep_newest_only = keepsake_log::retention::RetentionPolicy {
        keep_all_for: chrono::Duration::zero(),
        keep_daily_for_days: 0,
        ..Default::default()
    };
    let a = open(
        ts.store.clone(),
        1,
        LogConfig {
            retention: keep_newest_only,
            ..cfg()
        },
    )
    .await
    .expect("a");
    let (u, v, w) = (user(), user(), user());
    for x in [u, v, w] {
        push(&a, x, vec![put(item(), json!({"n": 1}))])
            .await
            .expect("push");
    }
    a.compact_now().await.expect("checkpoint 3");
    // B starts from checkpoint 3, with no room for users in memory: every user is cold.
    let b = open(
        ts.reopen().expect("handle"),
        1,
        LogConfig {
            view_memory_bytes: 0,
            ..cfg()
        },
    )
    .await
    .expect("b");
    assert_eq!(b.checkpoint(0), Some(3));
    push_as_device(&a, u, vec![put(item(), json!({"n": 2}))]).await;
    a.compact_now()
        .await
        .expect("checkpoint 4, and checkpoint 3 deleted");
    assert_eq!(
        keepsake_log::list_checkpoints(ts.store.as_ref(), 0)
            .await
            .expect("list"),
        vec![4]
    );
    // A checkpoint folded from a previous one that is gone folds from what is left.
    write_checkpoint(&ts.store, 0, Some(3), 4, 2)
        .await
        .expect("a checkpoint after a deleted one");
    // B, behind: no checkpoint at or below its head is left; v is read from the first segment.
    let seq = b.last_seq(&v).await.expect("a cold user is served");
    assert_eq!(seq, 1);
    // B catches up; a user it has not loaded since is read from checkpoint 4, which it adopts.
    b.sync(&u).await.expect("sync");
    assert_eq!(b.last_seq(&u).await.expect("user after sync"), 2);
    assert_eq!(b.last_seq(&w).await.expect("cold user after sync"), 1);
    assert_eq!(b.checkpoint(0), Some(4));
    push_as_device(&b, v, vec![put(item(), json!({"n": 3}))]).await;
    b.compact_now()
        .await
        .expect("b checkpoints from what is left");
    a.shutdown().await;
    b.shutdown().await;
}

/// B writes checkpoint 2 slowly; meanwhile A checkpoints at 3 and its retention deletes
/// checkpoint 1, which B's view starts from, so a cold load in B adopts checkpoint 3. When B's
/// checkpoint 2 lands, B's view used to go back to it, with its index already pruned up to 3:
/// a user loaded after that missed their events in segment 3 (the view served a state older
/// than its head; found by the simulation, seed 51). A view's checkpoint only moves forward.
async fn a_view_never_goes_back_to_an_older_checkpoint(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let keep_newest_only = keepsake_log::retention::RetentionPolicy {
        keep_all_for: chrono::Duration::zero(),
        keep_daily_for_days: 0,
        ..Default::default()
    };
    let a = open(
        ts.store.clone(),
        1,
        LogConfig {
            retention: keep_newest_only,
            ..cfg()
        },
    )
    .await
    .expect("a");
    let (u, v) = (user(), user());
    push(&a, u, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("push");
    a.compact_now().await.expect("checkpoint 1");
    // B starts from checkpoint 1 with no room for users in memory: every user is cold.
    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let b_store: Arc<dyn ObjectStore> = faulty.clone();
    let b = Arc::new(
        open(
            b_store,
            1,
            LogConfig {
                view_memory_bytes: 0,
                ..cfg()
            },
        )
        .await
        .expect("b"),
    );
    push(&a, v, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("push");
    b.sync(&v).await.expect("b at segment 2");
    let held = faulty.hold(FaultOp::Put, "/checkpoints/");
    let checkpointing = tokio::spawn({
        let b = b.clone();
        async move { b.compact_now().await }
    });
    held.reached().await;
    // A goes on: u's second change in segment 3, checkpoint 3; checkpoint 1 is deleted.
    push_as_device(&a, u, vec![put(item(), json!({"n": 2}))]).await;
    a.compact_now().await.expect("checkpoint 3");
    b.sync(&v).await.expect("b at segment 3");
    // The writer answers the sync before it evicts v (it loaded v for the sync's batch): wait
    // for that, or v is still resident and nothing makes B look for its checkpoint.
    all_cold(&b).await;
    // A cold user (one with events: an empty one takes no memory and stays). Checkpoint 1's
    // manifest is gone; B either still reads the parts it named (kept for retention's grace,
    // and named again by checkpoint 3) or adopts checkpoint 3.
    assert_eq!(b.last_seq(&v).await.expect("cold user"), 1);
    let before = b.checkpoint(0);
    assert!(matches!(before, Some(1 | 3)), "{before:?}");
    held.release();
    checkpointing
        .await
        .expect("task")
        .expect("b's checkpoint 2 and compaction");
    assert_eq!(
        b.last_seq(&u).await.expect("u, cold"),
        2,
        "u's change in segment 3 is in B's view"
    );
    assert!(
        b.checkpoint(0) >= before.max(Some(2)),
        "the view's checkpoint went back: {:?} after {before:?}",
        b.checkpoint(0)
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Waits until no user is resident in `log`'s view (a view of zero bytes evicts every user
/// after each batch, just after answering it).
async fn all_cold(log: &keepsake_log::Log) {
    for _ in 0..500 {
        if log.resident_users() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{} users still resident after 5 s", log.resident_users());
}

/// A writer behind writes into a compacted number and cannot confirm it (every read of the
/// compaction frontier fails), and stops before it settles it: its object stays, as a stray. The
/// history object was marked verified when it was written, so readers keep reading it (the
/// stray fills every number it holds, which once made it look unverified). Compaction then
/// removes the stray: an object of another batch in a number a verified history object holds
/// was never acknowledged (it used to stay for good, reported by verify after every such crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_never_hides_a_verified_history_object_and_compaction_removes_it() {
    let ts = store(Backend::Memory).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let a = open(as_store, 1, cfg()).await.expect("a");
    let b = open(ts.reopen().expect("handle"), 1, cfg())
        .await
        .expect("b");
    let u = user();
    let c1 = put(item(), json!({"by": "b"}));
    let r1 = push(&b, u, vec![c1.clone()]).await.expect("b pushes");
    let mut acks = HashMap::new();
    acks.insert(c1.change_id, acked(&r1.outcomes[0]));
    b.compact_now()
        .await
        .expect("b compacts segment 1 into 1-1");
    faulty.inject(FaultOp::Get, "/frontier/", Fault::Fail, 100);
    let stray = push(&a, u, vec![put(item(), json!({"by": "a"}))]).await;
    assert!(
        matches!(&stray, Err(e) if e.is_retryable()),
        "not acknowledged: {stray:?}"
    );
    assert_eq!(
        keepsake_log::LogStats::get(&a.stats().unconfirmed_puts),
        1,
        "A holds a PUT it could not confirm"
    );
    // A stops before it settles it.
    a.abort_writers();
    a.shutdown().await;
    faulty.clear();
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.segments.iter().map(|l| l.n).collect::<Vec<_>>(),
        vec![1],
        "the stray is there: {layout:?}"
    );
    let fresh = open(ts.reopen().expect("handle"), 1, cfg())
        .await
        .expect("fresh");
    let events = fresh.user_events(&u, UpTo::End).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.change_id).collect::<Vec<_>>(),
        vec![c1.change_id],
        "readers read the history object, not the stray"
    );
    fresh.shutdown().await;
    assert_only_stray(&ts.store, 1).await;
    b.compact_now()
        .await
        .expect("settling keeps the verified object and removes the stray");
    assert_eq!(keepsake_log::LogStats::get(&b.stats().strays_removed), 1);
    b.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
    assert_log_holds(ts.store.clone(), u, &acks).await;
}

/// Retention in another process deletes a checkpoint after verify listed it: that is no damage
/// (checkpoints are derived, and only retention deletes them), so verify reports nothing. It
/// used to report the checkpoint unreadable (found by the simulation with retention on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_not_fooled_by_retention_deleting_a_checkpoint_it_listed() {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    fill(&log, user(), 2).await;
    log.shutdown().await;
    write_checkpoint(&ts.store, 0, None, 2, 2)
        .await
        .expect("checkpoint");
    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    // Held once verify read the manifest and reaches for a part: retention deletes the
    // manifest, then the parts only it named.
    let read = faulty.hold(FaultOp::Get, "/parts/");
    let verifying = tokio::spawn(async move { verify_store(&as_store, 1).await });
    read.reached().await;
    let keepsake_log::Checkpoint::Parts(m) = keepsake_log::open_checkpoint(ts.store.as_ref(), 0, 2)
        .await
        .expect("open")
    else {
        panic!("checkpoint 2 is a manifest");
    };
    ts.store
        .delete(&keys::manifest(0, 2))
        .await
        .expect("retention deletes it");
    for p in m.parts() {
        ts.store
            .delete(&keys::part(0, p.written_by, p.digest))
            .await
            .expect("and its parts");
    }
    read.release();
    let (report, _) = verifying.await.expect("task").expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// A fleet restore plans its users with `all_users`. It used to list only up to this process's
/// own head, so a user whose every event another process wrote was left out of the plan (and
/// never restored). Now every shard is made current first.
async fn every_user_another_process_wrote_is_listed(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let a = open(ts.store.clone(), 1, cfg()).await.expect("a");
    let b = open(ts.reopen().expect("second handle"), 1, cfg())
        .await
        .expect("b");
    let (u, x) = (user(), user());
    push(&a, u, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("a writes u");
    // B is behind A: its first PUT is fenced, and it writes segment 2 on the retry.
    push_as_device(&b, x, vec![put(item(), json!({"n": 1}))]).await;
    let listed = a.all_users().await.expect("all users");
    assert!(listed.contains(&u), "{listed:?}");
    assert!(
        listed.contains(&x),
        "x, written only by B before the call, is listed by A: {listed:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// `users_at` (a fleet restore's targets) and `all_users` (its plan) folded whatever one
/// listing of the segments showed. A listing that missed the newest segment gave a target
/// without the user's last change (a restore to "now" would have reverted it) and a plan
/// without a user whose only event was there. Now a listing that ends before the head is
/// taken again.
async fn a_short_listing_never_gives_a_target_without_committed_events(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let log = open(as_store, 1, cfg()).await.expect("open");
    let u = user();
    push(&log, u, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("seq 1");
    push(&log, u, vec![put(item(), json!({"n": 2}))])
        .await
        .expect("seq 2");
    let now = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    faulty.inject(FaultOp::List, "/segments", Fault::OmitLast, 1);
    let wanted = std::collections::HashSet::from([u]);
    let states = log.users_at(0, &wanted, now).await.expect("users at");
    assert_eq!(
        states.get(&u).map(StateRead::last_seq),
        Some(2),
        "the target holds every event committed by the moment"
    );
    let w = user();
    push(&log, w, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("w's only event, in the newest segment");
    faulty.inject(FaultOp::List, "/segments", Fault::OmitLast, 1);
    let listed = log.all_users().await.expect("all users");
    assert!(listed.contains(&w), "{listed:?}");
    log.shutdown().await;
}

/// A read by seq (an as-of read, a diff, a restore by seq, an audit) in a process behind
/// another used to answer from its own head: B's seq 2 was not there, and A answered the state
/// at seq 1 as the state at seq 2, silently. Now such a read first makes the shard current.
async fn a_read_by_seq_sees_what_another_process_committed(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let a = open(ts.store.clone(), 1, cfg()).await.expect("a");
    let b = open(ts.reopen().expect("second handle"), 1, cfg())
        .await
        .expect("b");
    let u = user();
    let (x, y) = (item(), item());
    push(&a, u, vec![put(x, json!({"n": 1}))])
        .await
        .expect("a: seq 1");
    assert_eq!(a.last_seq(&u).await.expect("a has u"), 1);
    push_as_device(&b, u, vec![put(y, json!({"n": 2}))]).await;
    let at = a.items_at(&u, UpTo::Seq(2)).await.expect("items at 2");
    assert_eq!(at.last_seq(), 2, "A's read by seq holds B's seq 2");
    assert!(at.item(&y).is_some());
    let events = a.user_events(&u, UpTo::Seq(2)).await.expect("events");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    // And to the end: B's seq 3.
    push_as_device(&b, u, vec![put(x, json!({"n": 3}))]).await;
    let end = a.user_at(&u, UpTo::End).await.expect("user at end");
    assert_eq!(end.last_seq(), 3, "A's read to the end holds B's seq 3");
    let events = a.user_events(&u, UpTo::End).await.expect("events");
    assert_eq!(events.len(), 3);
    a.shutdown().await;
    b.shutdown().await;
}

/// Verify listed the whole store in one pass, and history keys sort before segment keys: a
/// compaction by another process between the two (its history object written after the
/// listing passed the history keys, its sources deleted before the listing reached theirs)
/// showed neither, and verify reported a gap that is not there, or (the range running up to
/// the head) a checkpoint beyond the readable log — alarms an operator would act on. Each shard
/// is now listed again (segments first, then history objects) and only a gap that is there
/// every time is reported (verify_finds_a_deleted_segment).
async fn verify_reports_no_gap_for_a_compaction_during_its_listing(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    let u = user();
    let mut acks = fill(&log, u, 3).await;
    let compacted = log.compact_now().await.expect("checkpoint 3, compact 1-3");
    assert_eq!(compacted.segments, 3);
    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    // The range hidden runs up to the head: the log looked shorter than checkpoint 3.
    faulty.inject(FaultOp::List, "", Fault::OmitHistory, 1);
    let (report, _) = verify_store(&as_store, 1).await.expect("verify");
    assert_eq!(
        faulty.injected(),
        1,
        "the listing did miss the history object"
    );
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.events, 3);
    // The range hidden is in the middle: a gap that is not there.
    acks.extend(fill(&log, u, 1).await);
    log.shutdown().await;
    faulty.inject(FaultOp::List, "", Fault::OmitHistory, 1);
    let (report, _) = verify_store(&as_store, 1).await.expect("verify");
    assert_eq!(faulty.injected(), 2);
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.events, 4);
    assert_log_holds(ts.store.clone(), u, &acks).await;
}

/// A copy of segment `n` as a writer that was behind would have written it: another batch,
/// other changes to other items, with the same number and seqs. Read before `n` is compacted.
async fn stray_of(store: &Arc<dyn ObjectStore>, n: u64) -> PutPayload {
    let mut stray = keepsake_log::read_segment(store.as_ref(), 0, n)
        .await
        .expect("read")
        .expect("segment");
    stray.meta.batch_id = keepsake_model::BatchId(uuid());
    for e in &mut stray.events {
        e.change_id = ChangeId(uuid());
        e.item_id = item();
    }
    PutPayload::from(keepsake_segment::encode(&stray.events, &stray.meta).expect("encode"))
}

/// Another process compacts `1..=n` (a verified history object; the segments are deleted),
/// then a writer that was behind puts `stray` into the freed number `n` (it removes it once it
/// sees the history object; here it has not yet).
async fn compact_then_stray(store: &Arc<dyn ObjectStore>, n: u64, stray: PutPayload) {
    let policy = CompactionPolicy {
        enabled: true,
        min_segments: 1,
        max_events: 1000,
    };
    let report = compact_shard(store, 0, n, None, &policy)
        .await
        .expect("compacts");
    assert_eq!(report.segments, n, "{report:?}");
    store
        .put_opts(&keys::segment(0, n), stray, keepsake_store::create_only())
        .await
        .expect("the stray lands in the freed number");
}

/// What a process that opens the store afresh reads for `u` (the history object's copies).
async fn state_in_log(store: &Arc<dyn ObjectStore>, u: UserId) -> UserState {
    let fresh = open(store.clone(), 1, cfg()).await.expect("fresh open");
    let events = fresh.user_events(&u, UpTo::End).await.expect("events");
    fresh.shutdown().await;
    UserState::replay(&events).expect("replay")
}

/// A checkpoint's fold lists segment 2 and, before its GET, another process compacts 1-2 and
/// deletes the segments, and a writer that was behind puts its batch into the freed number 2.
/// The fold used to read that stray: checkpoint 2 held a change never acknowledged in place of
/// the acknowledged one, and every restart from it lost it. Now an object that is not the one
/// listed (its e-tag differs) is read from where a new listing says the number is.
async fn a_fold_never_reads_a_stray_put_after_its_listing(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    let u = user();
    fill(&log, u, 2).await;
    log.shutdown().await;
    let stray = stray_of(&ts.store, 2).await;
    let expected = state_in_log(&ts.store, u).await;
    assert_eq!(expected.last_seq(), 2);

    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let get = faulty.hold(FaultOp::Get, keys::segment(0, 2).as_ref());
    let folding = tokio::spawn(async move { write_checkpoint(&as_store, 0, None, 2, 1).await });
    get.reached().await;
    compact_then_stray(&ts.store, 2, stray).await;
    get.release();
    let users = folding.await.expect("task").expect("checkpoint 2");
    assert_eq!(users, 1);

    let checkpointed = keepsake_log::read_checkpoint_user(ts.store.clone(), 0, 2, u)
        .await
        .expect("checkpoint 2");
    assert_eq!(
        checkpointed, expected,
        "checkpoint 2 holds the acknowledged changes, not the stray's"
    );
    assert_eq!(
        state_in_log(&ts.store, u).await,
        expected,
        "a restart reads them"
    );
}

/// The same race in a writer's catch-up: A, behind, lists segments 2 and 3 that B wrote; before
/// A's GET of 3, B's range is compacted and a stray lands in 3. A used to apply the stray to its
/// view and answer from it (and checkpoint it). Now A reads the history object's copy.
async fn a_catch_up_never_applies_a_stray_put_after_its_listing(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let a = open(as_store, 1, cfg()).await.expect("a");
    let b = open(ts.store.clone(), 1, cfg()).await.expect("b");
    let u = user();
    push(&a, u, vec![put(item(), json!({"by": "a"}))])
        .await
        .expect("a pushes segment 1");
    b.sync(&u).await.expect("b at segment 1");
    fill(&b, u, 2).await;
    b.shutdown().await;
    let stray = stray_of(&ts.store, 3).await;

    let get = faulty.hold(FaultOp::Get, keys::segment(0, 3).as_ref());
    let pushing = tokio::spawn({
        let c = put(item(), json!({"by": "a", "n": 2}));
        async move {
            let r = push_as_device(&a, u, vec![c]).await;
            (a, r)
        }
    });
    get.reached().await;
    compact_then_stray(&ts.store, 3, stray).await;
    get.release();
    let (a, (r, _)) = pushing.await.expect("task");
    assert_eq!(acked(&r.outcomes[0]).seq, 4);
    let in_view = a.user(&u, Clone::clone).await.expect("a's view");
    a.shutdown().await;
    assert_eq!(
        in_view,
        state_in_log(&ts.store, u).await,
        "A's view holds what the log holds, not the stray"
    );
}

/// The check above rests on the store naming one write of an object the same way in a PUT's
/// answer, a listing and a GET, and another write under the same name differently. If a store
/// did not, every read would list again (correct, but a LIST per read on the bill).
async fn a_tag_names_one_write_of_an_object(backend: Backend) {
    use keepsake_log::reader::Tag;
    let ts = store(backend).await.expect("store");
    let path = keys::segment(0, 1);
    let write = |body: &'static str| {
        let store = ts.store.clone();
        let path = path.clone();
        async move {
            let put = store
                .put_opts(&path, PutPayload::from(body), keepsake_store::create_only())
                .await
                .expect("put");
            Tag::of(put.e_tag.as_deref())
        }
    };
    let seen = |store: Arc<dyn ObjectStore>| async move {
        let listed = list_layout(store.as_ref(), 0)
            .await
            .expect("layout")
            .segments[0]
            .tag;
        let got = store.get(&keys::segment(0, 1)).await.expect("get");
        (listed, Tag::of_meta(&got.meta))
    };
    let first = write("a segment").await;
    assert_ne!(first, Tag::ANY, "the store names its objects' writes");
    assert_eq!(seen(ts.store.clone()).await, (first, first));
    ts.store.delete(&path).await.expect("delete");
    let second = write("a stray, put in the freed name").await;
    assert_eq!(seen(ts.store.clone()).await, (second, second));
    assert!(!first.admits(second), "another write is another object");
}

/// The same race in a load from the view: A wrote segments 1 and 2 and knows them as its own
/// objects; its view holds no user (a view of zero bytes), and u's change is in segment 2.
/// Another process compacts 1-2 and a
/// stray lands in 2. A's load of the user used to read the stray; now it finds another object
/// than the one it wrote, lists the store, and reads the history object.
async fn a_load_from_the_view_never_reads_a_stray(backend: Backend) {
    load_from_the_view_past_a_stray(backend, false).await;
}

/// [`a_load_from_the_view_never_reads_a_stray`] with a segment read by ranges.
async fn a_load_by_ranges_from_the_view_never_reads_a_stray(backend: Backend) {
    load_from_the_view_past_a_stray(backend, true).await;
}

async fn load_from_the_view_past_a_stray(backend: Backend, by_ranges: bool) {
    let ts = store(backend).await.expect("store");
    let a = open(
        ts.store.clone(),
        1,
        LogConfig {
            view_memory_bytes: 0,
            ..cfg()
        },
    )
    .await
    .expect("a");
    let u = user();
    // u's change is in segment 2 only, so the load reads no other object (one compacted away
    // would send it to list the store before it meets the stray).
    fill(&a, user(), 1).await;
    if by_ranges {
        // Over the 1 MiB read whole: the footer, page index and pages are range reads.
        let noise = |_| {
            (0..1200)
                .map(|_| uuid().simple().to_string())
                .collect::<String>()
        };
        let big = (0..80).map(|i| put(item(), json!({"i": i, "noise": noise(i)})));
        push(&a, u, big.collect()).await.expect("a large segment 2");
    } else {
        fill(&a, u, 1).await;
    }
    all_cold(&a).await;
    let expected = state_in_log(&ts.store, u).await;
    let stray = stray_of(&ts.store, 2).await;
    if by_ranges {
        let size = list_layout(ts.store.as_ref(), 0)
            .await
            .expect("layout")
            .segments[1]
            .size;
        assert!(size > 1 << 20, "segment 2 is read by ranges: {size} bytes");
    }
    compact_then_stray(&ts.store, 2, stray).await;
    let loaded = a.user(&u, Clone::clone).await.expect("load");
    a.shutdown().await;
    assert_eq!(
        loaded, expected,
        "A loads what was acknowledged, not the stray"
    );
}

/// A stray left in a compacted number (its writer stopped before removing it) is not what the
/// number's metadata is read from: the moment a checkpoint covers, for reads as of a time, and
/// the recovered head's time come from the history object's copy.
async fn segment_metadata_is_never_a_strays(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    fill(&log, user(), 2).await;
    log.shutdown().await;
    let committed = keepsake_log::read_segment_meta(ts.store.clone(), 0, 2)
        .await
        .expect("meta")
        .expect("segment 2");
    let stray = stray_of(&ts.store, 2).await;
    compact_then_stray(&ts.store, 2, stray).await;
    let read = keepsake_log::read_segment_meta(ts.store.clone(), 0, 2)
        .await
        .expect("meta")
        .expect("segment 2");
    assert_eq!(read.batch_id, committed.batch_id, "{read:?}");
}

/// Review of the read checks (helper 9, finding 1). B's settle lists segment 1 and history
/// object 1-1, not yet marked verified (its round stopped before the mark). Before B reads
/// segment 1, A settles 1-1 (marks it, deletes segment 1) and a writer that was behind puts a
/// stray into 1. B read the stray, found 1-1 "differs from sources all still there" and
/// deleted it with its mark: the only copy of segment 1. Now B sees that the object it read
/// is not the one it listed, and leaves 1-1 for a later pass.
async fn a_settle_never_deletes_a_history_object_for_a_stray(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    let u = user();
    fill(&log, u, 1).await;
    log.shutdown().await;
    let expected = state_in_log(&ts.store, u).await;
    let stray = stray_of(&ts.store, 1).await;
    let policy = CompactionPolicy {
        enabled: true,
        min_segments: 1,
        max_events: 1000,
    };
    // A round that wrote 1-1 and stopped before marking it.
    let stopped = FaultyStore::new(ts.reopen().expect("handle"));
    let stopped_store: Arc<dyn ObjectStore> = stopped.clone();
    stopped.inject(
        FaultOp::Put,
        keys::history_verified(0, 1, 1).as_ref(),
        Fault::Fail,
        1,
    );
    assert!(
        compact_shard(&stopped_store, 0, 1, None, &policy)
            .await
            .is_err()
    );
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        (layout.segments.len(), layout.history.len()),
        (1, 1),
        "{layout:?}"
    );
    assert!(layout.verified.is_empty(), "{layout:?}");

    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let b_store: Arc<dyn ObjectStore> = faulty.clone();
    let get = faulty.hold(FaultOp::Get, keys::segment(0, 1).as_ref());
    let b = tokio::spawn(async move { compact_shard(&b_store, 0, 1, None, &policy).await });
    get.reached().await;
    let a = compact_shard(&ts.store, 0, 1, None, &policy)
        .await
        .expect("a settles 1-1");
    assert_eq!(a.deleted, 1, "{a:?}");
    ts.store
        .put_opts(&keys::segment(0, 1), stray, keepsake_store::create_only())
        .await
        .expect("the stray lands in the freed number");
    get.release();
    let _ = b.await.expect("task");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    assert_eq!(
        layout.verified,
        vec![(1, 1)],
        "1-1 is kept, and relied on: {layout:?}"
    );
    assert_eq!(state_in_log(&ts.store, u).await, expected);
}

/// Review of the read checks (helper 9, finding 2): verify lists segment 2; before its GET the
/// number is compacted and a stray lands there. Verify used to fold the stray and report the
/// good checkpoint 2 as not matching the log. Now it reads the history object's copy, and
/// reports the one real problem: the stray.
async fn verify_never_folds_a_stray_put_after_its_listing(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    fill(&log, user(), 2).await;
    log.shutdown().await;
    write_checkpoint(&ts.store, 0, None, 2, 1)
        .await
        .expect("checkpoint 2");
    let stray = stray_of(&ts.store, 2).await;
    let faulty = FaultyStore::new(ts.reopen().expect("handle"));
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let get = faulty.hold(FaultOp::Get, keys::segment(0, 2).as_ref());
    let verifying = tokio::spawn(async move { verify_store(&as_store, 1).await });
    get.reached().await;
    compact_then_stray(&ts.store, 2, stray).await;
    get.release();
    let (report, _) = verifying.await.expect("task").expect("verify");
    let problems: Vec<_> = report.problems.iter().map(|p| p.kind).collect();
    assert!(
        !problems.iter().any(|k| *k != "stray_segment"),
        "{:?}",
        report.problems
    );
}

/// Review of the compaction frontier (helper 10, finding 1; the listing it replaced had the same
/// hole). A is behind and writes into number 1, which B compacted into a verified history
/// object; A cannot confirm it (every read of the frontier fails) and holds it unconfirmed.
/// A's next re-read lists the shard, and the listing leaves out every history object (a file
/// store's listing can while compaction empties a directory). A used to settle from it: no
/// history object holds 1, so its stray was taken for the log's segment 1, and the device's
/// resend was answered `duplicate` — an acknowledgement of a change no reader reads (they read
/// B's, from the history object). Now the frontier, read before the listing, says a history
/// object reaches 1: the listing is refused (retryable), and the next complete one settles the
/// stray (removed) and commits the resend for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_leaves_out_history_objects_never_settles_a_stray_as_committed() {
    let ts = store(Backend::Memory).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let a = open(as_store, 1, cfg()).await.expect("a");
    let b = open(ts.reopen().expect("handle"), 1, cfg())
        .await
        .expect("b");
    let u = user();
    let mut acks = HashMap::new();
    let c1 = put(item(), json!({"by": "b"}));
    let r1 = push(&b, u, vec![c1.clone()]).await.expect("b pushes");
    acks.insert(c1.change_id, acked(&r1.outcomes[0]));
    b.compact_now().await.expect("b compacts segment 1");
    faulty.inject(FaultOp::Get, "/frontier/", Fault::Fail, 100);
    let c2 = put(item(), json!({"by": "a"}));
    let first = push(&a, u, vec![c2.clone()]).await;
    assert!(
        matches!(&first, Err(e) if e.is_retryable()),
        "not acknowledged: {first:?}"
    );
    faulty.clear();
    faulty.inject(FaultOp::List, "/history", Fault::OmitHistory, 1000);
    for _ in 0..3 {
        match push(&a, u, vec![c2.clone()]).await {
            Err(e) if e.is_retryable() => {}
            Ok(r) => {
                acks.insert(c2.change_id, acked(&r.outcomes[0]));
                a.shutdown().await;
                b.shutdown().await;
                assert_log_holds(ts.store.clone(), u, &acks).await;
                panic!("answered from a listing without its history objects: {r:?}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    faulty.clear();
    let (r2, _) = push_as_device(&a, u, vec![c2.clone()]).await;
    let r2 = acked(&r2.outcomes[0]);
    assert_eq!(r2.seq, 2, "seq 1 is B's");
    acks.insert(c2.change_id, r2);
    a.shutdown().await;
    b.shutdown().await;
    assert_log_holds(ts.store.clone(), u, &acks).await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}
