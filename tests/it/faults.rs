//! Fault injection at the log's durability boundary: the segment PUT and the reads around it.
//! For each fault: no acknowledged event lost, none duplicated, seq stays dense, and the caller
//! sees a retryable error where nothing was acknowledged.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use keepsake_log::{LogConfig, LogError, LogStats, UpTo, read_user};
use keepsake_model::{ChangeBody, Outcome, StateRead, UserState};
use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
use keepsake_store::keys;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde_json::json;

use crate::common::*;

const SEGMENTS: &str = "/segments/";

fn faulty() -> (Arc<FaultyStore>, Arc<dyn ObjectStore>) {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    (faulty, store)
}

/// Reads the user's whole log and checks it: dense seq, every change id once.
async fn log_of(
    store: &Arc<dyn ObjectStore>,
    user: keepsake_model::UserId,
) -> Vec<keepsake_model::Event> {
    let (events, _) = read_user(store.clone(), 0, user, UpTo::End)
        .await
        .expect("read log");
    assert!(
        UserState::replay(&events).is_ok(),
        "the log folds: dense seq, unique change ids"
    );
    events
}

#[tokio::test]
async fn put_that_fails_before_landing_is_retried_under_the_same_number() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, fast_config()).await.expect("open");
    let u = user();
    faulty.inject(FaultOp::Put, SEGMENTS, Fault::Fail, 1);
    let r = push(&log, u, vec![put(item(), json!({}))])
        .await
        .expect("acknowledged after a retry");
    assert_eq!(r.segment, Some(1));
    assert_eq!(LogStats::get(&log.stats().put_retries), 1);
    assert_eq!(log_of(&store, u).await.len(), 1);
    log.shutdown().await;
}

#[tokio::test]
async fn put_that_never_lands_is_a_retryable_error_and_writes_nothing() {
    let (faulty, store) = faulty();
    let cfg = LogConfig {
        put_attempts: 3,
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg).await.expect("open");
    let u = user();
    faulty.inject(FaultOp::Put, SEGMENTS, Fault::Fail, 3);
    let c = put(item(), json!({"x": 1}));
    let err = push(&log, u, vec![c.clone()])
        .await
        .expect_err("not acknowledged");
    assert!(
        matches!(err, LogError::Unavailable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    assert_eq!(log.head(0), 0);
    assert_eq!(log.last_seq(&u).await.expect("seq"), 0);
    // The device retries the same change: applied once, at seq 1.
    let r = push(&log, u, vec![c]).await.expect("retry acknowledged");
    assert!(matches!(r.outcomes[0], Outcome::Applied(c) if c.seq == 1));
    assert_eq!(log_of(&store, u).await.len(), 1);
    log.shutdown().await;
}

#[tokio::test]
async fn put_that_landed_but_errored_is_recognised_by_its_batch_id() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, fast_config()).await.expect("open");
    let u = user();
    faulty.inject(FaultOp::Put, SEGMENTS, Fault::FailAfter, 1);
    let r = push(&log, u, vec![put(item(), json!({}))])
        .await
        .expect("acknowledged");
    assert_eq!(r.segment, Some(1));
    assert_eq!(LogStats::get(&log.stats().ambiguous_resolved), 1);
    // Never written under a second number.
    let r2 = push(&log, u, vec![put(item(), json!({}))])
        .await
        .expect("next push");
    assert_eq!(r2.segment, Some(2));
    assert_eq!(log_of(&store, u).await.len(), 2);
    log.shutdown().await;
}

#[tokio::test]
async fn landed_put_whose_read_back_fails_is_not_acked_then_found_on_retry() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, fast_config()).await.expect("open");
    let u = user();
    faulty.inject(FaultOp::Put, SEGMENTS, Fault::FailAfter, 1);
    faulty.inject(FaultOp::Get, SEGMENTS, Fault::Fail, 3);
    let c = put(item(), json!({"v": 1}));
    let err = push(&log, u, vec![c.clone()])
        .await
        .expect_err("cannot be confirmed");
    assert!(err.is_retryable(), "{err:?}");
    // The retry finds the change in the log: duplicate, with its original result.
    let r = push(&log, u, vec![c]).await.expect("retry");
    assert!(
        matches!(r.outcomes[0], Outcome::Duplicate(c) if c.seq == 1 && c.version == 1),
        "{r:?}"
    );
    assert_eq!(log.head(0), 1);
    assert_eq!(log_of(&store, u).await.len(), 1);
    log.shutdown().await;
}

#[tokio::test]
async fn put_that_times_out_is_resolved_and_retried() {
    let (faulty, store) = faulty();
    let cfg = LogConfig {
        store: keepsake_store::RetryPolicy {
            put_timeout: Duration::from_millis(50),
            ..Default::default()
        },
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg).await.expect("open");
    let u = user();
    faulty.inject(
        FaultOp::Put,
        SEGMENTS,
        Fault::Delay(Duration::from_secs(5)),
        1,
    );
    let r = push(&log, u, vec![put(item(), json!({}))])
        .await
        .expect("acknowledged");
    assert_eq!(r.segment, Some(1));
    assert!(LogStats::get(&log.stats().put_errors) >= 1);
    assert_eq!(log_of(&store, u).await.len(), 1);
    log.shutdown().await;
}

#[tokio::test]
async fn a_slow_put_lets_the_next_batch_fill() {
    let (faulty, store) = faulty();
    let log = Arc::new(open(store.clone(), 1, fast_config()).await.expect("open"));
    let u = user();
    // The first push's PUT is held until the other 50 wait in the writer's queue.
    let gate = faulty.hold(FaultOp::Put, SEGMENTS);
    let first = {
        let log = log.clone();
        tokio::spawn(async move { push(&log, u, vec![put(item(), json!({}))]).await })
    };
    gate.reached().await;
    let others = {
        let log = log.clone();
        tokio::spawn(async move {
            join_all((0..50).map(|_| {
                let log = log.clone();
                let v = user();
                async move { push(&log, v, vec![put(item(), json!({}))]).await }
            }))
            .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.queued() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pushes never queued"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gate.release();
    let others = others.await.expect("join");
    assert!(first.await.expect("join").is_ok());
    for r in others {
        r.expect("acknowledged");
    }
    assert!(
        log.head(0) <= 3,
        "50 pushes that queued behind one slow PUT should share few segments, got {}",
        log.head(0)
    );
    log.shutdown().await;
}

/// A resend queued while its original was being committed, whose ids the original's commit
/// retired into the user's filter of older ids (issue 15, item 2): the pushing task found
/// nothing to resolve (they were not applied yet), so the writer asks the log itself, for all
/// of them at once, and answers every one `duplicate` with the original result.
#[tokio::test]
async fn a_resend_whose_ids_retired_while_it_waited_is_resolved_by_the_writer() {
    let (faulty, store) = faulty();
    let log = Arc::new(open(store.clone(), 1, fast_config()).await.expect("open"));
    let u = user();
    let before: Vec<_> = (0..50).map(|i| put(item(), json!({ "i": i }))).collect();
    push(&log, u, before).await.expect("push");
    let changes: Vec<_> = (0..100).map(|j| put(item(), json!({ "j": j }))).collect();
    let gate = faulty.hold(FaultOp::Put, SEGMENTS);
    let first = {
        let (log, changes) = (log.clone(), changes.clone());
        tokio::spawn(async move { push(&log, u, changes).await })
    };
    gate.reached().await;
    let again = {
        let (log, changes) = (log.clone(), changes.clone());
        tokio::spawn(async move { push(&log, u, changes).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.queued() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the resend never queued"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gate.release();
    let first = first.await.expect("join").expect("acknowledged");
    let again = again.await.expect("join").expect("acknowledged");
    let want: Vec<Outcome> = first
        .outcomes
        .iter()
        .map(|o| match o {
            Outcome::Applied(r) => Outcome::Duplicate(*r),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(again.outcomes, want);
    assert_eq!(again.segment, None, "nothing written");
    assert_eq!(LogStats::get(&log.stats().writer_old_change_reads), 1);
    assert_eq!(log_of(&store, u).await.len(), 150);
    log.shutdown().await;
}

#[tokio::test]
async fn failing_reads_during_recovery_refuse_to_open() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, fast_config()).await.expect("open");
    push(&log, user(), vec![put(item(), json!({}))])
        .await
        .expect("push");
    log.shutdown().await;
    // One failed read is tried again by the store layer; a read that keeps failing refuses.
    faulty.inject(FaultOp::Get, SEGMENTS, Fault::Fail, 1);
    open(store.clone(), 1, fast_config())
        .await
        .expect("a blip is retried")
        .shutdown()
        .await;
    faulty.inject(FaultOp::Get, SEGMENTS, Fault::Fail, STORE_ATTEMPTS);
    let err = open(store.clone(), 1, fast_config())
        .await
        .expect_err("recovery fails");
    assert!(err.is_retryable(), "{err:?}");
    faulty.inject(FaultOp::List, "shards", Fault::Fail, STORE_ATTEMPTS);
    assert!(open(store.clone(), 1, fast_config()).await.is_err());
    let log = open(store, 1, fast_config())
        .await
        .expect("opens once the store answers");
    assert_eq!(log.head(0), 1);
    log.shutdown().await;
}

#[tokio::test]
async fn corrupt_segment_refuses_to_open() {
    let (_faulty, store) = faulty();
    let log = open(store.clone(), 1, fast_config()).await.expect("open");
    push(&log, user(), vec![put(item(), json!({}))])
        .await
        .expect("push");
    log.shutdown().await;
    let path = keepsake_store::keys::segment(0, 1);
    use object_store::ObjectStoreExt;
    let bytes = object_bytes(store.as_ref(), &path).await;
    let truncated = bytes.slice(..bytes.len() - 10);
    store
        .put(&path, truncated.into())
        .await
        .expect("overwrite (the test plays a damaged disk)");
    match open(store, 1, fast_config()).await {
        Err(LogError::Corrupt {
            shard: 0,
            segment: 1,
            ..
        }) => {}
        other => panic!("expected a corrupt segment, got {other:?}"),
    }
}

/// Reads of one user take the segments' sizes from the view, which records every committed
/// segment's, instead of listing the store (on a local store a listing reads every file's
/// metadata): with every listing of segments failing, after the writer committed them and
/// after a reopen (whose recovery lists once), a user's events, state and items at a moment,
/// and a stale patch's ancestor are all read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_one_user_do_not_list_the_segments() {
    let (faulty, store) = faulty();
    let u = user();
    let it = item();
    let patch = |base, doc| {
        change(
            keepsake_model::Kind::Note,
            it,
            Some(base),
            ChangeBody::patch(doc),
        )
    };
    for reopened in [false, true] {
        let log = open(store.clone(), 1, fast_config()).await.expect("open");
        if !reopened {
            push(&log, u, vec![put(it, json!({"a": 1, "b": 1}))])
                .await
                .expect("v1");
            push(&log, u, vec![patch(1, json!({"a": 2}))])
                .await
                .expect("v2");
            for i in 0..5 {
                push(&log, u, vec![put(item(), json!({ "i": i }))])
                    .await
                    .expect("more");
            }
        }
        faulty.inject(FaultOp::List, "segments", Fault::Fail, 1000);
        let events = log.user_events(&u, UpTo::End).await.expect("events");
        let n = events.len() as u64;
        assert!(n >= 7);
        let state = log.user_at(&u, UpTo::Seq(2)).await.expect("user at");
        assert_eq!(state.last_seq(), 2);
        let items = log.items_at(&u, UpTo::Seq(n - 1)).await.expect("items at");
        assert_eq!(items.last_seq(), n - 1);
        let at = events[3].recorded_at;
        let by_time = log
            .items_at(&u, UpTo::Time(at))
            .await
            .expect("items at a time");
        assert!(by_time.last_seq() >= 4);
        // A stale patch (base 1, the item is at 2 or later) merges with its ancestor from the log.
        let version = log
            .user(&u, |s| s.item(&it).map(|i| i.version))
            .await
            .expect("user")
            .expect("item");
        // Each round patches a field nobody changed since version 1.
        let field = if reopened { "c" } else { "b" };
        let merged = push(&log, u, vec![patch(1, json!({ field: n }))])
            .await
            .expect("stale patch");
        assert!(
            matches!(merged.outcomes[0], Outcome::Applied(c) if c.version == version + 1),
            "{merged:?}"
        );
        assert!(LogStats::get(&log.stats().ancestor_reads) >= 1);
        assert_eq!(faulty.injected(), 0, "no listing of segments was tried");
        faulty.clear();
        log.shutdown().await;
    }
}

/// A PUT that lands after the writer gave up on it (the request outlives its timeout, as one on
/// a slow network does): every attempt of the batch times out and the push is refused, retryable,
/// with nothing acknowledged. Then the PUTs land: the first one, the others refused (the name is
/// taken). The device sends the change again: it is in the log once, and answered with that
/// event's seq; a fresh open and verify agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_lands_after_the_writer_gave_up_is_in_the_log_once() {
    let (faulty, store) = faulty();
    let cfg = LogConfig {
        store: keepsake_store::RetryPolicy {
            put_timeout: Duration::from_millis(50),
            ..Default::default()
        },
        put_attempts: 2,
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg.clone()).await.expect("open");
    let u = user();
    faulty.inject(
        FaultOp::Put,
        SEGMENTS,
        Fault::LandLate(Duration::from_millis(300)),
        2,
    );
    let c = put(item(), json!({"late": true}));
    let refused = push(&log, u, vec![c.clone()])
        .await
        .expect_err("nothing acknowledged");
    assert!(refused.is_retryable(), "{refused:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.head(&keys::segment(0, 1)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the PUT never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Sent again with a new change: the batch may not claim the late segment as its own.
    let d = put(item(), json!({"after": true}));
    let (answer, _) = push_as_device(&log, u, vec![c.clone(), d.clone()]).await;
    let events = log_of(&store, u).await;
    for (change, outcome) in [&c, &d].iter().zip(&answer.outcomes) {
        let seq = match outcome {
            Outcome::Applied(r) | Outcome::Duplicate(r) => r.seq,
            other => panic!("{other:?}"),
        };
        let copies: Vec<_> = events
            .iter()
            .filter(|e| e.change_id == change.change_id)
            .collect();
        assert_eq!(copies.len(), 1, "{events:?}");
        assert_eq!(copies[0].seq, seq);
    }
    let seq = events
        .iter()
        .find(|e| e.change_id == c.change_id)
        .map_or(0, |e| e.seq);
    log.shutdown().await;
    let reopened = open(store.clone(), 1, cfg).await.expect("reopen");
    let again = push(&reopened, u, vec![c.clone()]).await.expect("push");
    assert!(
        matches!(again.outcomes[0], Outcome::Duplicate(r) if r.seq == seq),
        "{:?}",
        again.outcomes
    );
    let (report, _) = keepsake_log::verify::verify_store(&store, 1)
        .await
        .expect("verify");
    assert!(report.ok, "{:?}", report.problems);
    reopened.shutdown().await;
}

fn checkpointing() -> LogConfig {
    LogConfig {
        checkpoint_every_events: 3,
        compaction: keepsake_log::compact::CompactionPolicy {
            enabled: false,
            ..Default::default()
        },
        ..fast_config()
    }
}

/// Four changes of one user in one push: a checkpoint is due after it.
async fn four_changes(log: &keepsake_log::Log, u: keepsake_model::UserId) {
    push(
        log,
        u,
        (0..4).map(|i| put(item(), json!({"i": i}))).collect(),
    )
    .await
    .expect("push");
}

/// Checkpoint PUTs that fail before landing are retried on the next tick; one that landed but
/// answered an error is found on the next try (create-only: it exists, and it is the same fold).
/// The checkpoints equal the fold of the log and verify finds nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_puts_that_fail_or_land_ambiguously_are_retried_to_the_same_checkpoint() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, checkpointing()).await.expect("open");
    let u = user();
    faulty.inject(FaultOp::Put, "/checkpoints/", Fault::Fail, 2);
    four_changes(&log, u).await;
    let first = until_checkpointed(&log, 0, None).await;
    faulty.inject(FaultOp::Put, "/checkpoints/", Fault::FailAfter, 1);
    four_changes(&log, u).await;
    let second = until_checkpointed(&log, 0, Some(first)).await;
    assert!(faulty.injected() >= 3, "every fault was met");
    let (events, _) = read_user(store.clone(), 0, u, UpTo::End)
        .await
        .expect("read");
    let saved = keepsake_log::read_checkpoint(store.as_ref(), 0, second)
        .await
        .expect("read checkpoint");
    assert_eq!(
        saved.get(&u),
        Some(&UserState::replay(&events).expect("fold"))
    );
    let (report, _) = keepsake_log::verify::verify_store(&store, 1)
        .await
        .expect("verify");
    assert!(report.ok, "{:?}", report.problems);
    log.shutdown().await;
}

/// A retention delete that fails leaves that checkpoint (derived: keeping it is harmless) for
/// the next round, which deletes it; the newest checkpoint and every segment stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_retention_delete_is_finished_by_the_next_round() {
    let (faulty, store) = faulty();
    let cfg = LogConfig {
        retention: keepsake_log::retention::RetentionPolicy {
            keep_all_for: chrono::Duration::zero(),
            keep_daily_for_days: 0,
            ..Default::default()
        },
        ..checkpointing()
    };
    let log = open(store.clone(), 1, cfg).await.expect("open");
    let u = user();
    four_changes(&log, u).await;
    let first = until_checkpointed(&log, 0, None).await;
    faulty.inject(FaultOp::Delete, "/checkpoints/", Fault::Fail, 1);
    four_changes(&log, u).await;
    let second = until_checkpointed(&log, 0, Some(first)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while faulty.injected() < 1 {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = keepsake_log::list_checkpoints(store.as_ref(), 0)
        .await
        .expect("list");
    assert_eq!(
        listed,
        vec![first, second],
        "the failed delete left the first"
    );
    four_changes(&log, u).await;
    let third = until_checkpointed(&log, 0, Some(second)).await;
    // Retention runs right after the checkpoint is recorded: wait for its deletes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = keepsake_log::list_checkpoints(store.as_ref(), 0)
            .await
            .expect("list");
        if listed == vec![third] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left: {listed:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let segments = keepsake_log::list_segments(store.as_ref(), 0)
        .await
        .expect("segments");
    assert_eq!(segments.len() as u64, log.head(0), "no segment deleted");
    log.shutdown().await;
}

/// A slow checkpoint PUT (held until the test lets it go) holds up nothing: pushes are
/// acknowledged while it hangs, and the checkpoint is recorded once it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_checkpoint_put_holds_up_no_push() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, checkpointing()).await.expect("open");
    let u = user();
    let gate = faulty.hold(FaultOp::Put, "/checkpoints/");
    four_changes(&log, u).await;
    gate.reached().await;
    tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..5 {
            four_changes(&log, u).await;
        }
    })
    .await
    .expect("pushes are acknowledged while the checkpoint PUT hangs");
    assert_eq!(log.checkpoint(0), None, "still held");
    gate.release();
    let c = until_checkpointed(&log, 0, None).await;
    assert!(c >= 1);
    assert_eq!(log.last_seq(&u).await.expect("seq"), 24);
    log.shutdown().await;
}

/// A user of shard 0 and one of shard 1.
fn a_user_of_each_of_two_shards(log: &keepsake_log::Log) -> [keepsake_model::UserId; 2] {
    let mut users = [None, None];
    while users.iter().any(Option::is_none) {
        let u = user();
        if let Some(slot) = users.get_mut(log.shard_of(&u) as usize) {
            slot.get_or_insert(u);
        }
    }
    users.map(|u| u.expect("both found"))
}

/// The shards of a process take turns at upkeep: while one shard's checkpoint hangs (its
/// manifest PUT held), the other does not checkpoint with `upkeep_parallelism` 1 (each holds
/// its changed users in memory and takes CPU from pushes), and does with 2. Once the hung one
/// lands, the other takes its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_take_turns_at_upkeep() {
    for parallelism in [1, 2] {
        let (faulty, store) = faulty();
        let cfg = LogConfig {
            upkeep_parallelism: parallelism,
            ..checkpointing()
        };
        let log = open(store.clone(), 2, cfg).await.expect("open");
        let users = a_user_of_each_of_two_shards(&log);
        let gate = faulty.hold(FaultOp::Put, "/checkpoints/");
        for u in &users {
            four_changes(&log, *u).await;
        }
        gate.reached().await;
        let checkpointed = || (0..2).filter(|s| log.checkpoint(*s).is_some()).count();
        if parallelism == 1 {
            // Fifty upkeep ticks: with a turn free, the other shard checkpoints in one.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(checkpointed(), 0, "the other shard waits for its turn");
        } else {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while checkpointed() == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the other shard has a turn"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(checkpointed(), 1, "the held one is still held");
        }
        gate.release();
        until_checkpointed(&log, 0, None).await;
        until_checkpointed(&log, 1, None).await;
        log.shutdown().await;
    }
}

/// Upkeep works at most its duty of the wall time: after a turn that took t it rests
/// t * (100 - d) / d with the process's turn held. At a duty of 10%, a checkpoint held 300 ms
/// is followed by at least 2.7 s of rest when no shard has fallen behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upkeep_rests_after_a_turn_for_its_duty() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, paced()).await.expect("open");
    let gate = faulty.hold(FaultOp::Put, "/checkpoints/");
    four_changes(&log, user()).await;
    gate.reached().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.release();
    until_checkpointed(&log, 0, None).await;
    let rested =
        || Duration::from_micros(keepsake_log::LogStats::get(&log.stats().upkeep_rest_micros));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rested() < Duration::from_millis(2700) {
        assert!(
            std::time::Instant::now() < deadline,
            "rested only {:?} after a turn of 300 ms or more",
            rested()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.shutdown().await;
}

/// A rest ends once any shard of the process has fallen behind (a checkpoint's worth of events
/// since its own): the second shard, due by events while the first one's checkpoint was held,
/// checkpoints right after it instead of waiting out the first one's rest (2.7 s or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upkeep_stops_resting_for_a_shard_that_fell_behind() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 2, paced()).await.expect("open");
    let [first, second] = a_user_of_each_of_two_shards(&log);
    let gate = faulty.hold(FaultOp::Put, "/checkpoints/");
    four_changes(&log, first).await;
    gate.reached().await;
    // Four events against a checkpoint every three: behind, waiting for the turn.
    four_changes(&log, second).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.release();
    until_checkpointed(&log, 0, None).await;
    let landed = std::time::Instant::now();
    until_checkpointed(&log, 1, None).await;
    let waited = landed.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "the shard behind waited {waited:?} for the other's rest"
    );
    log.shutdown().await;
}

/// A duty of 10%, with rests capped at a tenth of a 60 s checkpoint interval (6 s).
fn paced() -> LogConfig {
    LogConfig {
        upkeep_parallelism: 1,
        upkeep_duty_percent: 10,
        checkpoint_interval: Duration::from_secs(60),
        ..checkpointing()
    }
}

/// A checkpoint and the compaction after it take separate turns, and a due checkpoint goes
/// first: while one shard's compaction would hang (its history PUT held), the other shard,
/// due since before the first one's checkpoint landed, still checkpoints (its tail would
/// otherwise grow under every cold load of its users).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_checkpoint_goes_before_another_shards_compaction() {
    let (faulty, store) = faulty();
    let cfg = LogConfig {
        upkeep_parallelism: 1,
        compaction: keepsake_log::compact::CompactionPolicy {
            enabled: true,
            min_segments: 1,
            ..Default::default()
        },
        ..checkpointing()
    };
    let log = open(store.clone(), 2, cfg).await.expect("open");
    let [first, second] = a_user_of_each_of_two_shards(&log);
    let checkpoint = faulty.hold(FaultOp::Put, "/checkpoints/");
    four_changes(&log, first).await;
    checkpoint.reached().await;
    // The second shard is due, and waits for the turn the first holds (twenty upkeep ticks).
    four_changes(&log, second).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let history = faulty.hold(FaultOp::Put, "/history/");
    checkpoint.release();
    // The first compaction to reach the store finds the second shard checkpointed: its
    // checkpoint went before (with one turn, they cannot overlap).
    history.reached().await;
    assert!(
        log.checkpoint(1).is_some(),
        "the second shard's due checkpoint went before the first shard's compaction"
    );
    assert!(log.checkpoint(0).is_some());
    history.release();
    log.shutdown().await;
}

/// Upkeep has a thread of its own: a checkpoint is written while the runtime the log was opened
/// on is busy and never yields (here, its one thread blocked; in a server, hundreds of push
/// tasks decoding cold loads, among which a checkpoint got ~2% of the CPU and pushes
/// collapsed). On the caller's runtime this checkpoint would never be written.
#[tokio::test(flavor = "current_thread")]
async fn a_checkpoint_is_written_while_the_logs_runtime_is_busy() {
    let (faulty, store) = faulty();
    let log = open(store.clone(), 1, checkpointing()).await.expect("open");
    // Held until this runtime is blocked, so the checkpoint cannot land before.
    let gate = faulty.hold(FaultOp::Put, "/checkpoints/");
    four_changes(&log, user()).await;
    assert!(log.checkpoint(0).is_none());
    // Blocks this runtime's only thread: no task of it runs until the loop ends.
    gate.release();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.checkpoint(0).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint while the log's runtime was busy"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    log.shutdown().await;
}

/// A listing that lags behind the store (misses the newest object) is not where the log ends.
/// A read whose segments were compacted under it lists again to find them; when that listing
/// does not reach a segment the reader knows was committed, it lists again, and if the store
/// keeps lagging the answer is retryable, never a gap (a gap refuses the push for good). Found
/// by the simulation: seed 37, 400 steps, where a push was refused with `Gap` after such a
/// listing.
#[tokio::test]
async fn a_listing_that_lags_behind_the_head_is_listed_again_not_a_gap() {
    let (faulty, store) = faulty();
    let cfg = LogConfig {
        compaction: keepsake_log::compact::CompactionPolicy {
            enabled: false,
            min_segments: 1,
            max_events: 100,
        },
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg).await.expect("open");
    let u = user();
    let push_one = |i: u32| push(&log, u, vec![put(item(), json!({ "i": i }))]);
    push_one(1).await.expect("push");
    push_one(2).await.expect("push");
    let listed = || keepsake_log::list_layout(store.as_ref(), 0);
    let mut sources = listed()
        .await
        .expect("layout")
        .sources(0, 1..=2)
        .expect("1, 2");
    let report = log.compact_now().await.expect("compact");
    assert_eq!(
        report.deleted, 2,
        "segments 1 and 2 now live in a history object"
    );
    push_one(3).await.expect("push");
    sources.extend(listed().await.expect("layout").sources(0, [3]).expect("3"));
    assert!(
        sources
            .iter()
            .all(|s| matches!(s, keepsake_log::Source::Segment { .. })),
        "{sources:?}"
    );

    // Segments 1 and 2 are gone from where the reader knew them; the listing that locates them
    // again misses segment 3, the newest.
    faulty.inject(FaultOp::List, "/segments", Fault::OmitLast, 1);
    let (events, _) =
        keepsake_log::read_user_sized(store.clone(), 0, u, sources.clone(), UpTo::End)
            .await
            .expect("read after listing again");
    assert_eq!(events.len(), 3);
    assert_eq!(faulty.injected(), 1, "the listing did lag once");

    // A store whose listings keep lagging: retryable, and says so.
    faulty.inject(FaultOp::List, "/segments", Fault::OmitLast, 1_000);
    let e = keepsake_log::read_user_sized(store.clone(), 0, u, sources, UpTo::End)
        .await
        .expect_err("segment 3 never shows in a listing");
    assert!(matches!(e, LogError::Unavailable { .. }), "{e:?}");
    faulty.clear();
    log.shutdown().await;
}
