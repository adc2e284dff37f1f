//! Idempotency is promised for the life of the log, not while the events sit in segments: a
//! change id sent again after a checkpoint (the user reloaded from it), after compaction (its
//! event in a history object), and after a restart with the user evicted is answered `duplicate`
//! with its original seq and version, and writes nothing.

use keepsake_log::{Log, LogConfig, LogStats};
use keepsake_model::{Change, ChangeRef, Outcome, UserId};
use serde_json::json;

use crate::common::*;

on_every_backend!(
    a_change_sent_again_is_a_duplicate_after_checkpoint_compaction_and_restart,
    a_resident_user_keeps_its_recent_change_ids_and_still_answers_old_resends,
);

fn cfg() -> LogConfig {
    LogConfig {
        checkpoint_every_events: 5,
        // One byte: every user but the one being committed is evicted, so the next read of the
        // user loads it from the newest checkpoint and the log after it.
        view_memory_bytes: 1,
        compaction: keepsake_log::compact::CompactionPolicy {
            enabled: false,
            ..Default::default()
        },
        ..fast_config()
    }
}

/// Sends `c` again and checks it is answered with `original`, writing nothing, by a user state
/// loaded again (a view miss: the user was evicted).
async fn sent_again(log: &Log, u: UserId, c: &Change, original: ChangeRef, when: &str) {
    let head = log.head(0);
    let (_, misses, _) = log.view_counters();
    let r = push(log, u, vec![c.clone()]).await.expect("push");
    assert!(
        log.view_counters().1 > misses,
        "{when}: the user was loaded again"
    );
    assert_eq!(
        r.outcomes,
        vec![Outcome::Duplicate(original)],
        "{when}: the original answer"
    );
    assert_eq!(log.head(0), head, "{when}: nothing written");
}

/// Other users' pushes: they move the log on and evict `u`.
async fn others(log: &Log, n: usize) {
    for _ in 0..n {
        push(log, user(), vec![put(item(), json!({}))])
            .await
            .expect("push");
    }
}

async fn a_change_sent_again_is_a_duplicate_after_checkpoint_compaction_and_restart(
    backend: keepsake_tests::Backend,
) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg()).await.expect("open");
    let u = user();
    let c = put(item(), json!({"title": "once"}));
    let first = push(&log, u, vec![c.clone()]).await.expect("push");
    let Outcome::Applied(original) = first.outcomes[0] else {
        panic!("{:?}", first.outcomes)
    };
    others(&log, 6).await;
    until_checkpointed(&log, 0, None).await;
    sent_again(&log, u, &c, original, "after a checkpoint").await;

    others(&log, 2).await;
    let report = log.compact_now().await.expect("compact");
    assert!(report.segments >= 1, "{report:?}");
    let layout = keepsake_log::list_layout(ts.store.as_ref(), 0)
        .await
        .expect("layout");
    assert!(
        layout.history.iter().any(|h| h.first == 1),
        "segment 1 is in a history object: {layout:?}"
    );
    sent_again(&log, u, &c, original, "after compaction").await;
    log.shutdown().await;

    let log = open(ts.store.clone(), 1, cfg()).await.expect("reopen");
    others(&log, 1).await;
    sent_again(&log, u, &c, original, "after a restart").await;
    log.shutdown().await;
}

/// A user that stays resident (no checkpoint, no eviction) holds its newest change ids exactly
/// and the rest as a filter (issue 15, item 2): its memory does not grow with its age. A retry
/// of its last push is answered from memory; a resend of its first change from its log.
async fn a_resident_user_keeps_its_recent_change_ids_and_still_answers_old_resends(
    backend: keepsake_tests::Backend,
) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let cfg = LogConfig {
        checkpoint_every_events: u64::MAX,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..fast_config()
    };
    let log = open(ts.store.clone(), 1, cfg).await.expect("open");
    let u = user();
    let mut sent = Vec::new();
    for round in 0..60 {
        let changes: Vec<Change> = (0..5)
            .map(|i| put(item(), json!({ "round": round, "i": i })))
            .collect();
        let r = push(&log, u, changes.clone()).await.expect("push");
        sent.extend(changes.into_iter().zip(r.outcomes));
    }
    let (exact, through) = log
        .user(&u, |s| (s.exact_changes(), s.filter_through()))
        .await
        .expect("user");
    let keep = keepsake_log::view::EXACT_CHANGE_IDS as usize;
    assert!(exact <= 2 * keep, "{exact} change ids held exactly");
    assert!(through >= 300 - 2 * keep as u64, "filter through {through}");
    let head = log.head(0);
    let reads = LogStats::get(&log.stats().old_change_reads);
    let (last, last_outcome) = sent[299].clone();
    let again = push(&log, u, vec![last]).await.expect("push");
    let Outcome::Applied(last_ref) = last_outcome else {
        panic!("{last_outcome:?}")
    };
    assert_eq!(again.outcomes, vec![Outcome::Duplicate(last_ref)]);
    assert_eq!(
        LogStats::get(&log.stats().old_change_reads),
        reads,
        "a recent id is answered from memory"
    );
    let (first, first_outcome) = sent[0].clone();
    let Outcome::Applied(first_ref) = first_outcome else {
        panic!("{first_outcome:?}")
    };
    let again = push(&log, u, vec![first]).await.expect("push");
    assert_eq!(again.outcomes, vec![Outcome::Duplicate(first_ref)]);
    assert_eq!(LogStats::get(&log.stats().old_change_reads), reads + 1);
    assert_eq!(log.head(0), head, "nothing written");
    log.shutdown().await;
}
