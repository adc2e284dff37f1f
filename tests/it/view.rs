//! Views and checkpoints are derived: evicting users, or starting from a checkpoint, never
//! changes an answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keepsake_log::{LogConfig, UpTo, list_checkpoints, read_checkpoint, read_user};
use keepsake_model::{ChangeBody, Kind, Outcome, StateRead, UserState};
use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_users_reload_with_identical_state() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    // a budget of one byte: every user not in the batch being committed is evicted
    let cfg = LogConfig {
        view_memory_bytes: 1,
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg).await.expect("open");
    let users: Vec<_> = (0..5).map(|_| user()).collect();
    let mut first = HashMap::new();
    for round in 0..4 {
        for u in &users {
            let it = item();
            let c = put(it, json!({"round": round}));
            first.entry(*u).or_insert_with(|| c.clone());
            push(&log, *u, vec![c]).await.expect("push");
            push(&log, *u, vec![put(it, json!({"round": round, "v": 2}))])
                .await
                .expect("second version");
            // A stale patch (base 1, the item is at 2) of a field no version touched: it merges,
            // with version 1 read from the log, written before the user was evicted.
            let p = change(
                Kind::Note,
                it,
                Some(1),
                ChangeBody::patch(json!({"x": round})),
            );
            let r = push(&log, *u, vec![p]).await.expect("patch");
            assert!(
                matches!(r.outcomes[0], Outcome::Applied(a) if a.version == 3),
                "{:?}",
                r.outcomes
            );
        }
    }
    assert!(
        log.resident_users() <= 1,
        "the budget evicts: {} resident",
        log.resident_users()
    );
    let (_, misses, evictions) = log.view_counters();
    assert!(misses > 0 && evictions > 0);
    for u in &users {
        let (events, _) = read_user(store.clone(), 0, *u, UpTo::End)
            .await
            .expect("read");
        let replayed = UserState::replay(&events).expect("replay");
        let loaded = log.user(u, UserState::clone).await.expect("load");
        assert_eq!(
            loaded, replayed,
            "an evicted user reloads to the fold of its log"
        );
        let again = push(&log, *u, vec![first[u].clone()]).await.expect("retry");
        assert!(
            matches!(again.outcomes[0], Outcome::Duplicate(r) if r.seq == 1),
            "idempotency survives eviction"
        );
    }
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_equal_the_log_and_start_up_uses_them() {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let cfg = LogConfig {
        checkpoint_every_events: 40,
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg.clone()).await.expect("open");
    let users: Vec<_> = (0..4).map(|_| user()).collect();
    for round in 0..10 {
        for u in &users {
            push(
                &log,
                *u,
                (0..3)
                    .map(|i| put(item(), json!({"r": round, "i": i})))
                    .collect(),
            )
            .await
            .expect("push");
        }
    }
    let mut checkpoint = None;
    for _ in 0..100 {
        checkpoint = log.checkpoint(0);
        if checkpoint.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = checkpoint.expect("a checkpoint is written after 40 events");
    assert!(
        list_checkpoints(store.as_ref(), 0)
            .await
            .expect("list")
            .contains(&c)
    );
    // the checkpoint equals the fold of the segments up to it
    let saved = read_checkpoint(store.as_ref(), 0, c)
        .await
        .expect("read checkpoint");
    for u in &users {
        let (events, _) = read_user(store.clone(), 0, *u, UpTo::End)
            .await
            .expect("read");
        let upto: Vec<_> = {
            let mut in_segments = Vec::new();
            for n in 1..=c {
                let seg = keepsake_log::read_segment(store.as_ref(), 0, n)
                    .await
                    .expect("segment")
                    .expect("exists");
                in_segments.extend(seg.events.into_iter().filter(|e| e.user_id == *u));
            }
            in_segments
        };
        assert!(events.len() >= upto.len());
        assert_eq!(
            saved.get(u).cloned().unwrap_or_default(),
            UserState::replay(&upto).expect("fold")
        );
    }
    let before: Vec<UserState> = {
        let mut v = Vec::new();
        for u in &users {
            v.push(log.user(u, UserState::clone).await.expect("state"));
        }
        v
    };
    log.shutdown().await;
    // The background checkpointer may have written a newer one since `c` was seen.
    let newest = list_checkpoints(store.as_ref(), 0)
        .await
        .expect("list")
        .into_iter()
        .max();
    assert!(newest >= Some(c));
    // Start-up reads the newest checkpoint and the segments after it: segment 1 is never read.
    faulty.inject(
        FaultOp::Get,
        "segments/00000000000000000001.parquet",
        Fault::Fail,
        1000,
    );
    let reopened = open(store.clone(), 1, cfg)
        .await
        .expect("start-up from the checkpoint");
    assert_eq!(reopened.checkpoint(0), newest);
    for (u, b) in users.iter().zip(&before) {
        assert_eq!(&reopened.user(u, UserState::clone).await.expect("state"), b);
    }
    reopened.shutdown().await;
}

/// As-of reads equal a replay from the first event, at every seq and at every recorded time,
/// with checkpoints (across their boundaries) and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_reads_equal_a_replay_at_every_moment() {
    for checkpoint_every in [u64::MAX, 7] {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = LogConfig {
            checkpoint_every_events: checkpoint_every,
            ..fast_config()
        };
        let log = open(store.clone(), 1, cfg).await.expect("open");
        let u = user();
        let items: Vec<_> = (0..4).map(|_| item()).collect();
        for round in 0..12u64 {
            let it = items[(round % 4) as usize];
            let c = if round % 5 == 4 {
                change(Kind::Note, it, None, ChangeBody::Delete)
            } else {
                put(it, json!({"round": round}))
            };
            // other users too, so checkpoints hold more than one user
            push(&log, user(), vec![put(item(), json!({}))])
                .await
                .expect("other");
            let r = push(&log, u, vec![c]).await.expect("push");
            assert!(
                matches!(r.outcomes[0], Outcome::Applied(_)),
                "{:?}",
                r.outcomes
            );
            // Two events, one segment each: checkpoints fall inside and between this user's
            // events.
            if checkpoint_every != u64::MAX {
                until_due_checkpoint(&log, 1, checkpoint_every).await;
            }
        }
        if checkpoint_every == 7 {
            assert!(
                list_checkpoints(store.as_ref(), 0)
                    .await
                    .expect("list")
                    .len()
                    >= 2,
                "several checkpoints"
            );
        }
        let (events, _) = read_user(store.clone(), 0, u, UpTo::End)
            .await
            .expect("read");
        for k in 0..=events.len() {
            let want = UserState::replay(&events[..k]).expect("replay");
            let got = log
                .user_at(&u, UpTo::Seq(k as u64))
                .await
                .expect("as of seq");
            assert_eq!(
                got, want,
                "as_of_seq {k} (checkpoints every {checkpoint_every})"
            );
        }
        for e in &events {
            let t = e.recorded_at;
            let upto: Vec<_> = events
                .iter()
                .filter(|x| x.recorded_at <= t)
                .cloned()
                .collect();
            let got = log.user_at(&u, UpTo::Time(t)).await.expect("as of time");
            assert_eq!(got, UserState::replay(&upto).expect("replay"), "as_of {t}");
        }
        log.shutdown().await;
    }
}

/// When a checkpoint of shard 0 is due — its segments after the newest checkpoint hold
/// `every` events or more, at `per_segment` events each — waits for it and returns it.
async fn until_due_checkpoint(
    log: &keepsake_log::Log,
    per_segment: u64,
    every: u64,
) -> Option<u64> {
    let newest = log.checkpoint(0).unwrap_or(0);
    let segments = every.div_ceil(per_segment);
    if log.head(0) < newest + segments {
        return None;
    }
    Some(until_checkpointed(log, 0, Some(newest + segments - 1)).await)
}

/// Retention deletes old checkpoints (derived), never segments, and keeps the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_checkpoint_and_every_segment() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let keep_little = keepsake_log::retention::RetentionPolicy {
        keep_all_for: chrono::Duration::zero(),
        keep_daily_for_days: 0,
        ..Default::default()
    };
    let cfg = LogConfig {
        checkpoint_every_events: 5,
        retention: keep_little,
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg.clone()).await.expect("open");
    let u = user();
    let mut written = std::collections::HashSet::new();
    for round in 0..8 {
        push(
            &log,
            u,
            (0..3)
                .map(|i| put(item(), json!({"r": round, "i": i})))
                .collect(),
        )
        .await
        .expect("push");
        if let Some(c) = until_due_checkpoint(&log, 3, 5).await {
            written.insert(c);
        }
    }
    assert!(
        written.len() >= 3,
        "several checkpoints were written: {written:?}"
    );
    // The view records a checkpoint before retention (which follows it in the same upkeep
    // pass) deletes the older ones: wait for that pass, at most 10 s.
    let newest = vec![log.checkpoint(0).expect("newest")];
    let mut left = list_checkpoints(store.as_ref(), 0).await.expect("list");
    for _ in 0..1000 {
        if left == newest {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        left = list_checkpoints(store.as_ref(), 0).await.expect("list");
    }
    assert_eq!(left, newest, "only the newest is kept");
    let segments = keepsake_log::list_segments(store.as_ref(), 0)
        .await
        .expect("segments");
    assert_eq!(segments.len() as u64, log.head(0), "no segment deleted");
    let before = log.user(&u, UserState::clone).await.expect("state");
    log.shutdown().await;
    let reopened = open(store, 1, cfg).await.expect("reopen");
    assert_eq!(
        reopened.user(&u, UserState::clone).await.expect("state"),
        before
    );
    reopened.shutdown().await;
}

/// A user evicted between being loaded and being read is loaded again: the read answers, it is
/// never refused (it was answered "state lock poisoned", 503, in a 400 s load run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_evictions_always_answer() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let cfg = LogConfig {
        view_memory_bytes: 1,
        ..fast_config()
    };
    let log = Arc::new(open(store, 1, cfg).await.expect("open"));
    let users: Vec<_> = (0..6).map(|_| user()).collect();
    for u in &users {
        push(&log, *u, vec![put(item(), json!({"n": 1}))])
            .await
            .expect("push");
    }
    // Every commit evicts every user but its own.
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for _ in 0..2000 {
                push(&log, user(), vec![put(item(), json!({}))])
                    .await
                    .expect("push");
            }
        })
    };
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let (log, users) = (log.clone(), users.clone());
            tokio::spawn(async move {
                for i in 0..2000 {
                    let u = users[(i + r) % users.len()];
                    let seq = log
                        .user(&u, keepsake_model::StateRead::last_seq)
                        .await
                        .expect("a read answers");
                    assert_eq!(seq, 1);
                }
            })
        })
        .collect();
    writer.await.expect("writer");
    for r in readers {
        r.await.expect("reader");
    }
    log.shutdown().await;
}

/// A reader's code never runs under the shard lock: while a `Log::user` closure is still
/// running (a pull serialising a large page, say), the shard writer commits another push to
/// the same user, and the reader sees the state as it was when it took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_never_holds_up_a_commit() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let log = Arc::new(open(store, 1, fast_config()).await.expect("open"));
    let u = user();
    push(&log, u, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("first push");
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.user(&u, move |s| {
                let seen = s.last_seq();
                let _ = started_tx.send(());
                // Held until the test has committed another push.
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
                (seen, s.last_seq())
            })
            .await
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("the reader's closure started");
    let committed = tokio::time::timeout(
        Duration::from_secs(10),
        push(&log, u, vec![put(item(), json!({"n": 2}))]),
    )
    .await;
    let _ = release_tx.send(());
    let committed = committed.expect("the commit was not held up by the reader");
    assert_eq!(committed.expect("second push").last_seq, 2);
    let (seen, still) = reader.await.expect("join").expect("read");
    assert_eq!((seen, still), (1, 1), "the reader keeps the state it took");
    assert_eq!(log.last_seq(&u).await.expect("seq"), 2);
}

/// Reads alone keep the view within its budget: users loaded for reads (a fleet syncing a
/// shard nobody pushes to, after a restart) give way to one another. Only a commit evicted
/// before, so reads without pushes grew the view past its budget without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_alone_keep_the_view_within_its_budget() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let log = open(store.clone(), 1, fast_config()).await.expect("open");
    let users = users_with_items(&log, 60, 4).await;
    let one = log
        .user(&users[0], |s| s.approx_bytes())
        .await
        .expect("read");
    log.shutdown().await;
    // About ten users' worth; nobody pushes to the reopened log.
    let budget = one * 10;
    let cfg = LogConfig {
        view_memory_bytes: budget,
        ..fast_config()
    };
    let reopened = open(store, 1, cfg).await.expect("reopen");
    for u in &users {
        let seq = reopened
            .user(u, keepsake_model::StateRead::last_seq)
            .await
            .expect("read");
        assert_eq!(seq, 4);
        assert!(
            reopened.resident_bytes() <= budget,
            "{} resident bytes over a budget of {budget}",
            reopened.resident_bytes()
        );
    }
    reopened.shutdown().await;
}

/// While a checkpoint's fold holds users' states, the view gives way to them: the next commit
/// evicts down to the lowered budget (a quarter of it at least), and once the checkpoint is
/// written the budget is whole again and nothing is counted as held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_gives_way_while_a_checkpoint_folds() {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let budget = 1 << 20;
    let cfg = LogConfig {
        view_memory_bytes: budget,
        checkpoint_every_events: 900,
        ..fast_config()
    };
    // The fold has built its states by its manifest's PUT, and still holds them there.
    let gate = faulty.hold(FaultOp::Put, "/checkpoints/");
    let log = open(store, 1, cfg).await.expect("open");
    let users = users_with_items(&log, 300, 3).await;
    assert_eq!(log.upkeep_held_bytes(), 0);
    let full = log.resident_bytes();
    assert!(
        full > budget / 2,
        "the view is not full enough to see it give way: {full}"
    );
    gate.reached().await;
    let held = log.upkeep_held_bytes();
    assert!(held > 0, "the fold published nothing");
    let lowered = given_way(&log, budget, held);
    assert_eq!(log.view_budget_bytes(), lowered);
    assert!(
        lowered < full,
        "held {held}: the budget {lowered} leaves the view as it was"
    );
    // A commit evicts down to the lowered budget.
    push(&log, user(), vec![put(item(), json!({"n": 0}))])
        .await
        .expect("push");
    assert!(
        log.resident_bytes() <= lowered,
        "{} resident over the lowered budget {lowered}",
        log.resident_bytes()
    );
    gate.release();
    until_checkpointed(&log, 0, None).await;
    assert_eq!(
        log.upkeep_held_bytes(),
        0,
        "a written checkpoint holds nothing"
    );
    assert_eq!(log.view_budget_bytes(), given_way(&log, budget, 0));
    for u in &users {
        let seq = log
            .user(u, keepsake_model::StateRead::last_seq)
            .await
            .expect("read");
        assert_eq!(seq, 3);
    }
    log.shutdown().await;
}

/// While a compaction holds its segments' events, the view gives way to them too, and gets
/// its budget back once the history object is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_gives_way_while_a_compaction_holds_events() {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let budget = 1 << 20;
    let cfg = compacting(budget);
    // The compaction has read its segments by the history object's PUT.
    let gate = faulty.hold(FaultOp::Put, "/history/");
    let log = open(store, 1, cfg).await.expect("open");
    users_with_items(&log, 100, 3).await;
    tokio::time::timeout(Duration::from_secs(20), gate.reached())
        .await
        .expect("a compaction began");
    let held = log.upkeep_held_bytes();
    // 300 events of ~200-byte documents, each at least its struct and its text.
    assert!(held > 300 * 200, "the compaction published {held} bytes");
    assert_eq!(log.view_budget_bytes(), given_way(&log, budget, held));
    gate.release();
    until_a_compaction_ended(&log).await;
    assert_eq!(
        log.upkeep_held_bytes(),
        0,
        "an ended compaction holds nothing"
    );
    assert_eq!(log.view_budget_bytes(), given_way(&log, budget, 0));
    log.shutdown().await;
}

/// A compaction publishes what it holds as it reads its segments, not once it has read them
/// all: the views give way while a round fills (before, up to `max_events` events read sat
/// beside a full view until the last segment was in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_gives_way_while_a_compaction_reads_its_segments() {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let budget = 1 << 20;
    let cfg = compacting(budget);
    // By the checkpoint's first PUT its fold has read the segments; every read of a segment
    // after it is the compaction's.
    let checkpointed = faulty.hold(FaultOp::Put, "/checkpoints/");
    let log = open(store, 1, cfg).await.expect("open");
    users_with_items(&log, 100, 3).await;
    tokio::time::timeout(Duration::from_secs(20), checkpointed.reached())
        .await
        .expect("a checkpoint began");
    let reading = faulty.hold_read(keepsake_store::keys::segment(0, 60).as_ref());
    checkpointed.release();
    tokio::time::timeout(Duration::from_secs(20), reading.reached())
        .await
        .expect("a compaction reached segment 60");
    // Segments 1 to 55 at least are taken (4 are read at once): 165 events of ~200-byte
    // documents, each at least its struct and its text.
    let held = log.upkeep_held_bytes();
    assert!(
        held > 55 * 3 * 200,
        "{held} bytes published with 55 segments read"
    );
    assert_eq!(log.view_budget_bytes(), given_way(&log, budget, held));
    reading.release();
    until_a_compaction_ended(&log).await;
    assert_eq!(log.upkeep_held_bytes(), 0);
    log.shutdown().await;
}

/// A view budget of `budget` bytes, a checkpoint every 300 events, and compaction after it
/// once 4 segments wait.
fn compacting(budget: usize) -> LogConfig {
    LogConfig {
        view_memory_bytes: budget,
        checkpoint_every_events: 300,
        compaction: keepsake_log::compact::CompactionPolicy {
            enabled: true,
            min_segments: 4,
            ..Default::default()
        },
        ..fast_config()
    }
}

/// Waits (at most 20 s) until a compaction has ended.
async fn until_a_compaction_ended(log: &keepsake_log::Log) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log
        .stats()
        .compactions
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "no compaction ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a one-shard view's users may hold with a budget of `budget` bytes while upkeep holds
/// `held`: the budget less that and the indexes beside the users, at least a quarter of it.
fn given_way(log: &keepsake_log::Log, budget: usize, held: usize) -> usize {
    budget
        .saturating_sub(held + log.view_index_counted_bytes())
        .max(budget / 4)
}

/// The budget covers the indexes beside the users too: once measured (every so many commits),
/// they are counted against it, and the users resident stay within what is left.
#[tokio::test]
async fn the_indexes_beside_the_users_count_against_the_view_budget() {
    let budget = 1 << 20;
    let log = one_shard_of(budget).await;
    users_with_items(
        &log,
        keepsake_log::view::INDEX_MEASURE_EVERY as usize * 10,
        3,
    )
    .await;
    let (_, index) = log.index_footprint();
    let counted = log.view_index_counted_bytes();
    // Measured within the last so many commits: the users since then add to the tail index.
    assert!(
        counted > 0 && counted <= index,
        "counted {counted}, the indexes {index}"
    );
    assert_eq!(log.view_budget_bytes(), budget - counted);
    assert!(
        log.resident_bytes() + counted <= budget,
        "{} resident beside {counted} of indexes",
        log.resident_bytes()
    );
    log.shutdown().await;
}

/// The process's excess over its resident bound (measured by the server) takes the views'
/// budget down by as much, and a rise evicts at once, with no commit to trigger it; back
/// within the bound, the views get their budget back.
#[tokio::test]
async fn the_views_give_way_to_the_processs_resident_excess() {
    let budget = 1 << 20;
    let log = one_shard_of(budget).await;
    users_with_items(&log, 400, 3).await;
    let before = log.resident_bytes();
    let counted = log.view_index_counted_bytes();
    assert!(before > budget / 4, "the users fill the view: {before}");
    log.set_resident_excess(budget / 2);
    assert_eq!(log.resident_excess_bytes(), budget / 2);
    assert_eq!(log.view_budget_bytes(), budget / 2 - counted);
    assert!(
        log.resident_bytes() <= budget / 2 - counted,
        "evicted at once: {} resident, was {before}",
        log.resident_bytes()
    );
    log.set_resident_excess(0);
    assert_eq!(log.view_budget_bytes(), budget - counted);
    log.shutdown().await;
}

/// A log of one shard in memory whose view may hold `budget` bytes, checkpointing only when
/// asked (so that nothing but the test moves the budget).
async fn one_shard_of(budget: usize) -> keepsake_log::Log {
    let cfg = LogConfig {
        view_memory_bytes: budget,
        checkpoint_every_events: 1_000_000,
        ..fast_config()
    };
    open(Arc::new(InMemory::new()), 1, cfg).await.expect("open")
}

/// `users` new users, each given `items` items of ~200-byte documents in one push.
async fn users_with_items(
    log: &keepsake_log::Log,
    users: usize,
    items: usize,
) -> Vec<keepsake_model::UserId> {
    let users: Vec<_> = (0..users).map(|_| user()).collect();
    for u in &users {
        let changes = (0..items)
            .map(|i| put(item(), json!({"n": i, "text": "x".repeat(200)})))
            .collect();
        push(log, *u, changes).await.expect("push");
    }
    users
}
