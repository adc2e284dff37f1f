//! The same scenarios on every backend: memory, file (fsync), S3 (moto).

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use keepsake_log::{LogConfig, LogStats, UpTo, list_segments, read_user};
use keepsake_model::{ChangeBody, Kind, Outcome, StateRead, UserState};
use keepsake_tests::{Backend, store};
use serde_json::json;

use crate::common::*;

on_every_backend!(
    pushes_are_durable_and_recovered,
    descriptor_mismatch_refuses_to_open,
    gap_in_segments_refuses_to_open,
    a_lost_descriptor_refuses_to_open,
);

/// Concurrent pushes of several users across two shards: acks carry dense seqs; a second log
/// opened on the same store recovers identical state; reads by user agree with it; a retried
/// change is a duplicate with its original result.
async fn pushes_are_durable_and_recovered(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 2, fast_config())
        .await
        .expect("open");
    let users: Vec<_> = (0..6).map(|_| user()).collect();
    let mut items = HashMap::new();
    let mut first_change = HashMap::new();
    for round in 0..3u64 {
        let pushes = users.iter().map(|u| {
            let it = *items.entry(*u).or_insert_with(item);
            let mut changes = vec![
                put(it, json!({"title": format!("round {round}"), "n": round})),
                change(
                    Kind::Note,
                    it,
                    None,
                    ChangeBody::patch(json!({"extra": round})),
                ),
            ];
            changes.extend((0..3).map(|i| put(item(), json!({"i": i}))));
            first_change.entry(*u).or_insert_with(|| changes[0].clone());
            let log = &log;
            let u = *u;
            async move { (u, push(log, u, changes).await) }
        });
        for (u, result) in join_all(pushes).await {
            let r = result.expect("push acknowledged");
            assert_eq!(r.outcomes.len(), 5);
            for (i, o) in r.outcomes.iter().enumerate() {
                match o {
                    Outcome::Applied(c) => {
                        assert_eq!(c.seq, round * 5 + i as u64 + 1, "dense seq for {u}")
                    }
                    other => panic!("expected applied, got {other:?}"),
                }
            }
            assert_eq!(r.last_seq, (round + 1) * 5);
            assert!(r.segment.is_some());
        }
    }
    let mut states: HashMap<_, UserState> = HashMap::new();
    for u in &users {
        states.insert(*u, log.user(u, UserState::clone).await.expect("user state"));
    }
    log.shutdown().await;

    let reopened = open(ts.reopen().expect("reopen"), 2, fast_config())
        .await
        .expect("reopen log");
    for u in &users {
        let recovered = reopened
            .user(u, UserState::clone)
            .await
            .expect("recovered user");
        assert_eq!(&recovered, &states[u], "recovered state of {u}");
        let shard = reopened.shard_of(u);
        let (events, _) = read_user(ts.store.clone(), shard, *u, UpTo::End)
            .await
            .expect("read user");
        assert_eq!(UserState::replay(&events).as_ref(), Ok(&states[u]));
        let (upto, _) = read_user(ts.store.clone(), shard, *u, UpTo::Seq(7))
            .await
            .expect("read user");
        assert_eq!(
            upto.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        let t = events[4].recorded_at;
        let (by_time, _) = read_user(ts.store.clone(), shard, *u, UpTo::Time(t))
            .await
            .expect("read user");
        assert_eq!(
            by_time,
            events
                .iter()
                .filter(|e| e.recorded_at <= t)
                .cloned()
                .collect::<Vec<_>>()
        );
    }
    let heads: u64 = (0..2).map(|s| reopened.head(s)).sum();
    let listed: usize =
        futures::future::join_all((0..2).map(|s| list_segments(ts.store.as_ref(), s)))
            .await
            .into_iter()
            .map(|l| l.expect("list").len())
            .sum();
    assert_eq!(heads as usize, listed);

    // Idempotency survives the restart.
    let u = users[0];
    let retried = push(&reopened, u, vec![first_change[&u].clone()])
        .await
        .expect("retry");
    match &retried.outcomes[0] {
        Outcome::Duplicate(c) => assert_eq!((c.seq, c.version), (1, 1)),
        other => panic!("expected duplicate, got {other:?}"),
    }
    assert_eq!(retried.segment, None, "a duplicate writes nothing");
    assert_eq!(reopened.last_seq(&u).await.expect("seq"), 15);
    reopened.shutdown().await;
}

async fn descriptor_mismatch_refuses_to_open(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 2, fast_config())
        .await
        .expect("open");
    log.shutdown().await;
    let err = open(ts.reopen().expect("reopen"), 3, fast_config())
        .await
        .expect_err("mismatch");
    let msg = err.to_string();
    assert!(
        msg.contains("has 2 shards") && msg.contains("configured with 3"),
        "{msg}"
    );
}

/// `keepsake.json` lost while the shards still hold the log: opening must not start a new store
/// on top of the old one (a new store id sends every device into an initial sync; another shard
/// count looks users up in shards that do not hold their data). The open is refused whatever
/// shard count is asked for, says how to recover, and writes nothing.
async fn a_lost_descriptor_refuses_to_open(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 2, fast_config())
        .await
        .expect("open");
    let original = log.descriptor().clone();
    push(&log, user(), vec![put(item(), json!({"keep": "me"}))])
        .await
        .expect("push");
    log.shutdown().await;
    ts.store
        .delete(&keepsake_store::keys::descriptor())
        .await
        .expect("delete keepsake.json");
    for shards in [Some(2), Some(3), None] {
        let opened = keepsake_log::Log::open(
            ts.reopen().expect("reopen"),
            shards,
            fast_config(),
            Arc::new(keepsake_model::SystemClock),
            Arc::new(keepsake_model::RandomIds),
        )
        .await;
        match opened {
            Err(keepsake_log::LogError::Open(
                e @ keepsake_store::StoreError::DescriptorMissing { .. },
            )) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("keepsake verify") && msg.contains("keepsake recover-descriptor"),
                    "the refusal says how to recover: {msg}"
                );
            }
            Ok(log) => panic!(
                "with {shards:?} shards: opened a new store {} with {} shards on top of store {} \
                 ({} shards)",
                log.descriptor().store_id,
                log.descriptor().shard_count,
                original.store_id,
                original.shard_count
            ),
            Err(other) => panic!("with {shards:?} shards: refused for another reason: {other}"),
        }
        assert_eq!(
            keepsake_store::read_descriptor(ts.store.as_ref())
                .await
                .expect("read descriptor"),
            None,
            "a refused open writes no descriptor"
        );
    }
}

/// A server that found no descriptor and then finds data: another server created the store
/// meanwhile (servers write data only once the descriptor exists). It reads the descriptor again
/// and opens that store rather than refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_created_while_another_server_looks_for_data_opens() {
    use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
    let ts = store(Backend::Memory).await.expect("store");
    let slow = FaultyStore::new(ts.store.clone());
    let delay = std::time::Duration::from_secs(3);
    slow.inject(FaultOp::List, "shards", Fault::Delay(delay), 1);
    let started = std::time::Instant::now();
    let late = tokio::spawn({
        let slow: Arc<dyn object_store::ObjectStore> = slow.clone();
        async move { open(slow, 2, fast_config()).await }
    });
    // The late server has read no descriptor and is listing the store.
    while slow.injected() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let first = open(ts.store.clone(), 2, fast_config())
        .await
        .expect("open");
    push(&first, user(), vec![put(item(), json!({"first": true}))])
        .await
        .expect("push");
    assert!(
        started.elapsed() < delay,
        "the first server wrote its data while the late one was listing"
    );
    let late = late.await.expect("join").expect("the late server opens");
    assert_eq!(late.descriptor(), first.descriptor());
    late.shutdown().await;
    first.shutdown().await;
}

async fn gap_in_segments_refuses_to_open(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("open");
    let u = user();
    for i in 0..3 {
        push(&log, u, vec![put(item(), json!({"i": i}))])
            .await
            .expect("push");
    }
    log.shutdown().await;
    ts.store
        .delete(&keepsake_store::keys::segment(0, 2))
        .await
        .expect("delete segment 2");
    match open(ts.reopen().expect("reopen"), 1, fast_config()).await {
        Err(keepsake_log::LogError::Gap {
            shard: 0,
            missing: 2,
        }) => {}
        other => panic!("expected a gap at segment 2, got {other:?}"),
    }
    match read_user(ts.store.clone(), 0, u, UpTo::End).await {
        Err(keepsake_log::LogError::Gap { missing: 2, .. }) => {}
        other => panic!("expected a gap at segment 2, got {other:?}"),
    }
}

use object_store::ObjectStoreExt as _;

/// Segments up to 1 MiB are read whole with one GET, larger ones by range reads of the footer,
/// page index and pages: both prune the same way.
#[tokio::test]
async fn reading_one_user_skips_other_users_pages_in_a_small_segment() {
    reading_one_user_skips_other_users_pages(0, false).await;
}

#[tokio::test]
async fn reading_one_user_skips_other_users_pages_in_a_large_segment() {
    reading_one_user_skips_other_users_pages(8, true).await;
}

/// `pad` random UUIDs in every document make segment 1 larger than 1 MiB (`large`) or not.
async fn reading_one_user_skips_other_users_pages(pad: usize, large: bool) {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("open");
    let mut users: Vec<_> = (0..200).map(|_| user()).collect();
    users.sort();
    let doc = |i: usize| {
        let pad: Vec<String> = (0..pad).map(|_| item().0.to_string()).collect();
        json!({"i": i, "pad": pad})
    };
    // Segment 1: 50 events of every user (10,000 rows, several pages); later segments: every
    // user but the first, whose id sorts below all of theirs, so statistics rule them out.
    let all = users
        .iter()
        .map(|u| push(&log, *u, (0..50).map(|i| put(item(), doc(i))).collect()));
    for r in join_all(all).await {
        r.expect("push");
    }
    let others = users[1..]
        .iter()
        .map(|u| push(&log, *u, vec![put(item(), json!({}))]));
    for r in join_all(others).await {
        r.expect("push");
    }
    let listed = keepsake_log::list_segments(ts.store.as_ref(), 0)
        .await
        .expect("list");
    assert_eq!(
        listed[0].size > 1024 * 1024,
        large,
        "segment 1 is {} bytes",
        listed[0].size
    );
    let target = users[0];
    let (events, stats) = read_user(ts.store.clone(), 0, target, UpTo::End)
        .await
        .expect("read");
    assert_eq!(events.len(), 50);
    assert!(log.head(0) >= 2, "the test needs at least two segments");
    assert_eq!(stats.segments_pruned, log.head(0) - 1, "{stats:?}");
    assert!(
        stats.rows_decoded <= 4096,
        "page index should limit the read; decoded {} rows",
        stats.rows_decoded
    );
    log.shutdown().await;
}

/// A read of items at a moment reads the key columns of every event but only each item's newest
/// event whole, and gives the items and last seq a replay of every event gives: in a segment
/// read whole and in one read by ranges, at moments inside pages, at segment ends and past them.
#[tokio::test]
async fn items_at_a_moment_read_one_whole_row_per_item_in_a_small_segment() {
    items_at_a_moment_read_one_whole_row_per_item(0, false).await;
}

#[tokio::test]
async fn items_at_a_moment_read_one_whole_row_per_item_in_a_large_segment() {
    items_at_a_moment_read_one_whole_row_per_item(8, true).await;
}

async fn items_at_a_moment_read_one_whole_row_per_item(pad: usize, large: bool) {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("open");
    let users: Vec<_> = (0..200).map(|_| user()).collect();
    let items: Vec<Vec<_>> = users
        .iter()
        .map(|_| (0..7).map(|_| item()).collect())
        .collect();
    let doc = |i: usize| {
        let pad: Vec<String> = (0..pad).map(|_| item().0.to_string()).collect();
        json!({"i": i, "pad": pad})
    };
    // 50 events per user in segment 1 (10,000 rows, several pages), rewriting 7 items; then
    // two more rounds with deletes among the puts.
    let round = |from: usize, n: usize| {
        join_all(users.iter().zip(&items).map(|(u, its)| {
            let changes = (from..from + n)
                .map(|i| {
                    let it = its[i % its.len()];
                    if i % 11 == 10 {
                        change(Kind::Note, it, None, ChangeBody::Delete)
                    } else {
                        put(it, doc(i))
                    }
                })
                .collect();
            push(&log, *u, changes)
        }))
    };
    for (from, n) in [(0, 50), (50, 9), (59, 12)] {
        for r in round(from, n).await {
            r.expect("push");
        }
    }
    let listed = list_segments(ts.store.as_ref(), 0).await.expect("list");
    assert_eq!(
        listed[0].size > 1024 * 1024,
        large,
        "{} bytes",
        listed[0].size
    );
    for u in [users[0], users[117], users[199]] {
        let (events, _) = read_user(ts.store.clone(), 0, u, UpTo::End)
            .await
            .expect("read");
        assert_eq!(events.len(), 71);
        for at in [1, 6, 7, 8, 33, 50, 51, 59, 64, 71, 90] {
            let upto = &events[..at.min(events.len())];
            let want = UserState::replay(upto).expect("replay");
            let latest = keepsake_log::read_user_latest_in(
                ts.store.clone(),
                0,
                u,
                |_| true,
                UpTo::Seq(at as u64),
                0,
            )
            .await
            .expect("read items");
            let mut got = UserState::default();
            got.advance_items(&latest.events, latest.last_seq)
                .expect("advance");
            let sorted = |s: &UserState| {
                let mut v: Vec<_> = s.items().cloned().collect();
                v.sort_by_key(|i| i.item_id);
                (s.last_seq(), v)
            };
            assert_eq!(sorted(&got), sorted(&want), "items at seq {at}");
            let distinct: std::collections::HashSet<_> = upto.iter().map(|e| e.item_id).collect();
            assert_eq!(
                latest.stats.rows_read_whole,
                distinct.len() as u64,
                "one whole row per item at seq {at}: {:?}",
                latest.stats
            );
            assert!(latest.stats.rows_decoded >= upto.len() as u64);
        }
    }
    log.shutdown().await;
}

#[tokio::test]
async fn stale_patch_merges_using_the_ancestor_from_the_log() {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("open");
    let u = user();
    let it = item();
    let patch = |base, doc| change(Kind::Note, it, Some(base), ChangeBody::patch(doc));
    push(&log, u, vec![put(it, json!({"a": 1, "b": 1}))])
        .await
        .expect("v1");
    push(&log, u, vec![patch(1, json!({"a": 2}))])
        .await
        .expect("v2");
    let stale = patch(1, json!({"b": 2}));
    let merged = push(&log, u, vec![stale.clone()]).await.expect("v3");
    assert!(
        matches!(merged.outcomes[0], Outcome::Applied(c) if c.version == 3),
        "{merged:?}"
    );
    let refused = push(&log, u, vec![patch(1, json!({"a": 3}))])
        .await
        .expect("conflict");
    assert!(matches!(&refused.outcomes[0], Outcome::Conflict(cur) if cur.version == 3));
    assert_eq!(
        document_of(&log, u, it).await.as_deref(),
        Some(r#"{"a":2,"b":2}"#)
    );
    // A retry of the merged patch is a duplicate, and needs no ancestor.
    let retried = push(&log, u, vec![stale]).await.expect("retry");
    assert!(
        matches!(retried.outcomes[0], Outcome::Duplicate(c) if c.version == 3),
        "{retried:?}"
    );
    // Both stale patches found their ancestor before queueing; the writer never read history.
    let stats = log.stats();
    assert_eq!(LogStats::get(&stats.ancestor_reads), 2);
    assert_eq!(LogStats::get(&stats.writer_ancestor_reads), 0);
    log.shutdown().await;
}

/// The ancestor of a stale patch lies before the newest checkpoints (the index of recent
/// segments may not know it), and many segments of other users lie between: still found, still
/// merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_patch_finds_an_ancestor_from_before_the_newest_checkpoint() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        checkpoint_every_events: 10,
        checkpoint_interval: std::time::Duration::from_millis(50),
        ..fast_config()
    };
    let log = open(ts.store.clone(), 1, cfg).await.expect("open");
    let u = user();
    let it = item();
    let patch = |base, doc| change(Kind::Note, it, Some(base), ChangeBody::patch(doc));
    push(&log, u, vec![put(it, json!({"a": 1, "b": 1}))])
        .await
        .expect("v1");
    for _ in 0..30 {
        push(&log, user(), vec![put(item(), json!({}))])
            .await
            .expect("others");
    }
    push(&log, u, vec![patch(1, json!({"a": 2}))])
        .await
        .expect("v2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.checkpoint(0).is_none_or(|c| c < 3) {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint was written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stale_patch_merges(&log, u, it).await;
    assert_eq!(LogStats::get(&log.stats().writer_ancestor_reads), 0);
    log.shutdown().await;
}

/// A user loaded from a checkpoint knows its items' newest versions but not the links to
/// earlier ones: a patch naming a version from before the checkpoint still merges against that
/// version, and one naming a version applied since the load too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_patches_merge_after_the_user_is_loaded_from_a_checkpoint() {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("open");
    let u = user();
    let it = item();
    let patch = |base, doc| change(Kind::Note, it, Some(base), ChangeBody::patch(doc));
    push(&log, u, vec![put(it, json!({"a": 1, "b": 1, "c": 1}))])
        .await
        .expect("v1");
    push(&log, u, vec![patch(1, json!({"a": 2}))])
        .await
        .expect("v2");
    push(&log, u, vec![patch(2, json!({"a": 3}))])
        .await
        .expect("v3");
    log.compact_now().await.expect("checkpoint");
    log.shutdown().await;

    let log = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("reopen");
    // Each stale patch merges against its base and gives the version and document expected.
    let merges = async |base, patch_doc, version, want: &str| {
        let r = push(&log, u, vec![patch(base, patch_doc)])
            .await
            .expect("patch");
        assert!(
            matches!(r.outcomes[0], Outcome::Applied(c) if c.version == version),
            "{r:?}"
        );
        let doc = log
            .user(&u, |s| s.item(&it).and_then(|i| i.document.clone()))
            .await
            .expect("user")
            .map(|d| d.as_str().to_string());
        assert_eq!(doc.as_deref(), Some(want));
    };
    // Version 1 is older than the checkpoint the user was loaded from.
    merges(1, json!({"b": 2}), 4, r#"{"a":3,"b":2,"c":1}"#).await;
    // Version 4 was applied since the load: found by the link from version 5.
    push(&log, u, vec![patch(4, json!({"a": 5}))])
        .await
        .expect("v5");
    merges(4, json!({"c": 6}), 6, r#"{"a":5,"b":2,"c":6}"#).await;
    log.shutdown().await;
}

#[tokio::test]
async fn mass_delete_guard_refuses_then_accepts_when_confirmed() {
    let ts = store(Backend::Memory).await.expect("store");
    let log = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("open");
    let u = user();
    let items: Vec<_> = (0..30).map(|_| item()).collect();
    push(&log, u, items.iter().map(|i| put(*i, json!({}))).collect())
        .await
        .expect("puts");
    let deletes: Vec<_> = items
        .iter()
        .map(|i| change(Kind::Note, *i, None, ChangeBody::Delete))
        .collect();
    let head = log.head(0);
    match push(&log, u, deletes.clone()).await {
        Err(keepsake_log::LogError::MassDelete(r)) => assert_eq!((r.deletes, r.live), (30, 30)),
        other => panic!("expected the guard, got {other:?}"),
    }
    assert_eq!(log.head(0), head, "a refused push writes nothing");
    let mut confirmed = push_of(u, deletes);
    confirmed.confirm_mass_delete = true;
    let r = log.push(confirmed).await.expect("confirmed");
    assert_eq!(r.last_seq, 60);
    log.shutdown().await;
}

/// Two handsets of one user in one batch: the first rewrites ten items, the second patches the
/// same items naming the versions it saw, which become stale only inside the batch. Every patch
/// merges, no push is failed, and the writer never reads history (the base documents were
/// taken from memory before queueing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_made_stale_inside_one_batch_merge_without_failing_the_batch() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        commit_window: std::time::Duration::from_millis(300),
        ..fast_config()
    };
    let log = Arc::new(open(ts.store.clone(), 1, cfg).await.expect("open"));
    let u = user();
    let items: Vec<_> = (0..10).map(|_| item()).collect();
    push(
        &log,
        u,
        items
            .iter()
            .map(|i| put(*i, json!({"a": 1, "b": 1})))
            .collect(),
    )
    .await
    .expect("v1");
    // The previous commit opened a window: both pushes below wait in the same batch.
    let first = {
        let log = log.clone();
        let items = items.clone();
        tokio::spawn(async move {
            push(
                &log,
                u,
                items
                    .iter()
                    .map(|i| put(*i, json!({"a": 2, "b": 1})))
                    .collect(),
            )
            .await
        })
    };
    // Orders the two pushes inside the 300 ms window (the writer takes the first into its
    // batch at once, so no queue shows it); the assertion below fails if they split.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let patches = items
        .iter()
        .map(|i| change(Kind::Note, *i, Some(1), ChangeBody::patch(json!({"b": 2}))))
        .collect();
    let second = push(&log, u, patches).await.expect("patches");
    let first = first.await.expect("task").expect("puts");
    assert_eq!(
        first.segment, second.segment,
        "the test needs both in one batch"
    );
    for o in &second.outcomes {
        assert!(matches!(o, Outcome::Applied(c) if c.version == 3), "{o:?}");
    }
    for i in &items {
        let doc = log
            .user(&u, |s| s.item(i).and_then(|x| x.document.clone()))
            .await
            .expect("user");
        assert_eq!(
            doc.map(|d| d.as_str().to_string()).as_deref(),
            Some(r#"{"a":2,"b":2}"#)
        );
    }
    assert_eq!(LogStats::get(&log.stats().writer_ancestor_reads), 0);
    log.shutdown().await;
}

/// Segment PUTs of a shard start at least a commit window apart however hard it is pushed:
/// eight pushers in a loop for a while, and the shard's segments number at most one per window
/// of the elapsed time (plus the first). A slower machine only makes fewer segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_puts_stay_bounded_by_the_commit_window_under_load() {
    let ts = store(Backend::Memory).await.expect("store");
    let window = std::time::Duration::from_millis(40);
    let cfg = LogConfig {
        commit_window: window,
        ..fast_config()
    };
    let log = Arc::new(open(ts.store.clone(), 1, cfg).await.expect("open"));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let u = user();
            let mut acked = 0u64;
            while started.elapsed() < std::time::Duration::from_millis(600) {
                let changes = (0..20).map(|i| put(item(), json!({"n": i}))).collect();
                push(&log, u, changes).await.expect("push");
                acked += 20;
            }
            acked
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("task");
    }
    let elapsed = started.elapsed();
    let segments = log.head(0);
    let bound = (elapsed.as_secs_f64() / window.as_secs_f64()).floor() as u64 + 1;
    assert!(
        segments <= bound,
        "{segments} segments in {elapsed:?} with a {window:?} window (at most {bound})"
    );
    assert!(segments >= 2, "the test needs several batches: {segments}");
    assert_eq!(
        LogStats::get(&log.stats().events),
        acked,
        "every acknowledged change is in the log"
    );
    log.shutdown().await;
}

/// With a latency budget, a quiet shard holds a batch open for company: three single-change
/// pushes from three devices, 50 ms apart, share one segment. The batch closes as soon as it
/// holds enough changes (3 here), not when the (30 s) budget runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_budget_gathers_a_quiet_shards_pushes_into_one_segment() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        commit_latency_budget: std::time::Duration::from_secs(30),
        commit_enough_changes: 3,
        ..fast_config()
    };
    let log = Arc::new(open(ts.store.clone(), 1, cfg).await.expect("open"));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..3u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50 * i)).await;
            push(&log, user(), vec![put(item(), json!({ "i": i }))]).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task").expect("push");
        assert!(matches!(r.outcomes[0], Outcome::Applied(_)), "{r:?}");
    }
    assert_eq!(log.head(0), 1, "one segment for the three pushes");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "closed by its changes, not by the budget"
    );
    log.shutdown().await;
}

/// A lone push on a quiet shard waits out the budget (it cannot close sooner: it never has
/// enough changes), then is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_push_waits_the_latency_budget_then_commits() {
    let ts = store(Backend::Memory).await.expect("store");
    let budget = std::time::Duration::from_millis(200);
    let cfg = LogConfig {
        commit_latency_budget: budget,
        ..fast_config()
    };
    let log = open(ts.store.clone(), 1, cfg).await.expect("open");
    let started = std::time::Instant::now();
    let r = push(&log, user(), vec![put(item(), json!({}))])
        .await
        .expect("push");
    assert!(matches!(r.outcomes[0], Outcome::Applied(_)), "{r:?}");
    assert!(started.elapsed() >= budget, "{:?}", started.elapsed());
    assert_eq!(log.head(0), 1);
    log.shutdown().await;
}

/// A device pushing alone now and then, on a shard no one else pushes to, waits the budget
/// once (a shard with no record waits): its pushes come at well under one per budget, and the
/// later ones are committed by the window (each would have waited the budget and still taken
/// its own PUT). When devices then push together, their rate brings company, and small
/// batches wait again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_pushing_alone_waits_the_budget_once_and_company_brings_it_back() {
    let ts = store(Backend::Memory).await.expect("store");
    let budget = std::time::Duration::from_millis(100);
    let cfg = LogConfig {
        commit_latency_budget: budget,
        ..fast_config()
    };
    let log = Arc::new(open(ts.store.clone(), 1, cfg).await.expect("open"));
    let u = user();
    for i in 0..3u64 {
        // Longer after its answer than the budget and the writer's SEQUENCE_GAP (1 s): not a
        // push of a sequence, so only the company rule keeps it from waiting.
        tokio::time::sleep(budget + std::time::Duration::from_millis(1_150)).await;
        push(&log, u, vec![put(item(), json!({ "i": i }))])
            .await
            .expect("push");
    }
    let stats = log.stats();
    assert_eq!(
        LogStats::get(&stats.budget_waits),
        1,
        "only the first push waited"
    );
    assert_eq!(LogStats::get(&stats.budget_skips), 2);
    assert_eq!(log.head(0), 3, "one segment a push, as with no budget");
    // Rounds of eight devices pushing at once, each once: their rate (eight per 100 ms round,
    // eight per budget) shows company, so later small batches wait again. Each round starts
    // well after the last answer: independent devices, not a client's reaction to its answer
    // (the writer's REACTION, 25 ms), which is not company.
    let before = log.head(0);
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move { push(&log, user(), vec![put(item(), json!({}))]).await })
            })
            .collect();
        for t in join_all(tasks).await {
            t.expect("task").expect("push");
        }
    }
    assert!(
        LogStats::get(&stats.budget_waits) > 1,
        "waiting resumed: {} waits, {} skips",
        LogStats::get(&stats.budget_waits),
        LogStats::get(&stats.budget_skips)
    );
    assert!(
        log.head(0) - before < 32,
        "32 pushes shared segments: {}",
        log.head(0) - before
    );
    log.shutdown().await;
}

/// Devices that push again as soon as they are answered (a CardDAV client's PUTs, a phone's
/// first sync) wait the budget once, not on every push: a push that comes within a budget (and
/// a second) of its user's previous answer is one of a sequence, and its batch closes by the
/// window. Two such devices, five pushes each, a 2 s budget: about one budget in all, not five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_pushing_in_sequence_wait_the_budget_once() {
    let ts = store(Backend::Memory).await.expect("store");
    let budget = std::time::Duration::from_secs(2);
    let cfg = LogConfig {
        commit_latency_budget: budget,
        ..fast_config()
    };
    let log = Arc::new(open(ts.store.clone(), 1, cfg).await.expect("open"));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                let u = user();
                for i in 0..5u64 {
                    push(&log, u, vec![put(item(), json!({ "i": i }))]).await?;
                }
                Ok::<_, keepsake_log::LogError>(())
            })
        })
        .collect();
    for t in join_all(tasks).await {
        t.expect("task").expect("pushes");
    }
    let stats = log.stats();
    assert_eq!(
        LogStats::get(&stats.budget_waits),
        1,
        "only the first batch waited ({} skips)",
        LogStats::get(&stats.budget_skips)
    );
    assert!(
        started.elapsed() < budget * 2,
        "one budget, not five: {:?}",
        started.elapsed()
    );
    log.shutdown().await;
}

/// A client that keeps a few users' pushes in flight and sends the next as soon as one is
/// answered (a load tool, a sync gateway) has its whole round in the batches: nobody else is
/// pushing, and waiting out the budget would only make each round a budget long. Its pushes
/// react to the process's answers (they come within the writer's REACTION of an answer, on any
/// shard: a user's next push goes to whichever shard holds that user), so they are not company,
/// and the shards stop waiting after their first batches. Eight such pushes in flight, each
/// for a user of its own, twelve rounds over four shards, a 1 s budget: without the rule every
/// batch waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeping_a_few_users_pushes_in_flight_stops_waiting_the_budget() {
    let ts = store(Backend::Memory).await.expect("store");
    let budget = std::time::Duration::from_secs(1);
    let cfg = LogConfig {
        commit_latency_budget: budget,
        ..fast_config()
    };
    let shards = 4;
    let log = Arc::new(open(ts.store.clone(), shards, cfg).await.expect("open"));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                // A user per push: no push is one of its user's sequence.
                for i in 0..12u64 {
                    push(&log, user(), vec![put(item(), json!({ "i": i }))]).await?;
                }
                Ok::<_, keepsake_log::LogError>(())
            })
        })
        .collect();
    for t in join_all(tasks).await {
        t.expect("task").expect("pushes");
    }
    let stats = log.stats();
    let (waits, skips) = (
        LogStats::get(&stats.budget_waits),
        LogStats::get(&stats.budget_skips),
    );
    // Each shard's first batches wait (a shard with no record waits, and the first round's
    // pushes came before any answer); a stalled task's push that reacts late counts as
    // company once.
    assert!(
        waits <= 4 * u64::from(shards),
        "{waits} batches waited the budget, {skips} did not"
    );
    assert!(
        skips >= 2 * waits,
        "{waits} batches waited the budget, {skips} did not"
    );
    let segments: u64 = (0..shards).map(|s| log.head(s)).sum();
    assert_eq!(segments, waits + skips, "one segment a batch");
    log.shutdown().await;
}

/// Pushes that are not a device's (an operator's device registrations and revocations, restores,
/// imports) close their batch by the window: they come from bulk jobs that go through users a
/// bounded number at a time, each waiting for its answer. Five imports, one after another, a
/// 30 s budget: none waits (without the rule the first would, a shard with no record waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_that_are_not_a_devices_do_not_wait_the_budget() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        commit_latency_budget: std::time::Duration::from_secs(30),
        ..fast_config()
    };
    let log = open(ts.store.clone(), 1, cfg).await.expect("open");
    for i in 0..5u64 {
        let mut req = push_of(user(), vec![put(item(), json!({ "i": i }))]);
        req.meta.origin = keepsake_model::Origin::Import;
        req.meta.device_id = None;
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), log.push(req))
            .await
            .expect("answered by the window, not the 30 s budget")
            .expect("push");
        assert!(matches!(r.outcomes[0], Outcome::Applied(_)), "{r:?}");
    }
    let stats = log.stats();
    assert_eq!(LogStats::get(&stats.budget_waits), 0);
    assert_eq!(LogStats::get(&stats.budget_skips), 5);
    log.shutdown().await;
}

/// A sync (the empty push a read sends to wait out the batches before it) writes nothing, so it
/// does not wait for the commit window after the shard's last PUT: with a 30 s window it is
/// answered at once. (It used to wait out the window: a restore, which syncs before reading the
/// current state, paid up to a window after the previous restore's PUT.) A push after it still
/// waits the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_does_not_wait_for_the_commit_window() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        commit_window: std::time::Duration::from_secs(30),
        ..fast_config()
    };
    let log = open(ts.store.clone(), 1, cfg).await.expect("open");
    let u = user();
    push(&log, u, vec![put(item(), json!({}))])
        .await
        .expect("the first push of an idle shard commits at once");
    tokio::time::timeout(std::time::Duration::from_secs(10), log.sync(&u))
        .await
        .expect("the sync is answered before the window ends")
        .expect("sync");
    log.shutdown().await;
}

/// A sync that joins a batch waiting out its latency budget closes it: the read behind the
/// sync does not wait the budget (30 s here), and neither does the push it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_joining_a_budgeted_batch_closes_it() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        commit_latency_budget: std::time::Duration::from_secs(30),
        ..fast_config()
    };
    let log = Arc::new(open(ts.store.clone(), 1, cfg).await.expect("open"));
    let u = user();
    let pushed = {
        let log = log.clone();
        tokio::spawn(async move { push(&log, u, vec![put(item(), json!({}))]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), log.sync(&u))
        .await
        .expect("the sync closes the batch")
        .expect("sync");
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), pushed)
        .await
        .expect("the push went with it")
        .expect("task")
        .expect("push");
    assert!(matches!(r.outcomes[0], Outcome::Applied(_)), "{r:?}");
    log.shutdown().await;
}

/// Shutting down does not wait out a batch's latency budget: the waiting push is committed
/// and answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_out_a_latency_budget() {
    let ts = store(Backend::Memory).await.expect("store");
    let cfg = LogConfig {
        commit_latency_budget: std::time::Duration::from_secs(30),
        ..fast_config()
    };
    let log = Arc::new(open(ts.store.clone(), 1, cfg).await.expect("open"));
    let pushed = {
        let log = log.clone();
        tokio::spawn(async move { push(&log, user(), vec![put(item(), json!({}))]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), log.shutdown())
        .await
        .expect("shutdown does not wait the budget");
    let r = pushed.await.expect("task").expect("push");
    assert!(matches!(r.outcomes[0], Outcome::Applied(_)), "{r:?}");
}
