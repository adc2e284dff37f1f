//! A read of one user's history (a stale patch's base, a change id sent again) reads the
//! segments that hold the user, not every segment of the shard: those a checkpoint has just
//! covered are not compacted yet, and the view's index still names the user's among them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use keepsake_log::{CompactionPolicy, LogConfig, LogStats, list_layout};
use keepsake_model::{ItemId, Outcome};
use keepsake_store::faults::FaultyStore;
use keepsake_store::keys;
use object_store::ObjectStore;
use serde_json::json;

use crate::common::*;

/// The user's item the tests put, patch and patch again from a stale base.
const ITEM: ItemId = ItemId(uuid::Uuid::from_u128(7));

on_every_backend!(
    a_resend_and_a_stale_base_from_just_before_a_checkpoint_read_only_the_users_segments,
    a_resend_and_a_stale_base_from_a_generation_not_yet_compacted_read_only_the_users_segments,
    searches_of_older_history_read_a_history_objects_footer_once
);

/// The user's two pushes, then 40 other users' (a segment each) and a checkpoint over them;
/// then the user, loaded from that checkpoint (it holds its change ids only in its filter and
/// no seq of its versions), resends its first change and pushes a patch based on version 1.
/// Both are answered from the user's two segments. They were sought newest segment first,
/// through the other users' segments: in `make sustained`, the resends and stale patches
/// after each round of upkeep searched thousands of them, and pushes fell to a few hundred
/// events a second (2026-12-02, run 13).
async fn a_resend_and_a_stale_base_from_just_before_a_checkpoint_read_only_the_users_segments(
    backend: keepsake_tests::Backend,
) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let cfg = LogConfig {
        checkpoint_every_events: 40,
        // One byte: the user is evicted by the others' pushes and loaded from the checkpoint.
        view_memory_bytes: 1,
        compaction: CompactionPolicy {
            enabled: false,
            ..Default::default()
        },
        ..fast_config()
    };
    let log = open(as_store, 1, cfg).await.expect("open");
    let u = user();
    let (first_change, first, second) = put_then_patch(&log, u, ITEM).await;
    let Outcome::Applied(original) = first.outcomes[0] else {
        panic!("{:?}", first.outcomes)
    };
    let users_segments = [first.segment, second.segment];
    assert_eq!(users_segments, [Some(1), Some(2)]);
    for _ in 0..40 {
        push(&log, user(), vec![put(item(), json!({}))])
            .await
            .expect("another user's push");
    }
    let c = until_checkpointed(&log, 0, None).await;
    assert!(c > 10, "checkpoint at {c}");
    answered_from_the_users_segments(&log, &faulty, u, first_change, original, c).await;
    assert_eq!(
        LogStats::get(&log.stats().old_change_reads),
        1,
        "the resend was resolved from the log"
    );
    assert!(
        LogStats::get(&log.stats().ancestor_reads) >= 1,
        "the base was read from the log"
    );
    // What the searches read, as `/metrics` shows it: the index covers every segment (one
    // checkpoint), and named the user's.
    let stats = log.stats();
    assert!(LogStats::get(&stats.search_indexed) >= 2);
    assert_eq!(LogStats::get(&stats.searches_past_index), 0);
    assert_eq!(
        LogStats::get(&stats.search_segments) + LogStats::get(&stats.search_history_objects),
        0
    );
    log.shutdown().await;
}

/// As above, but two checkpoints after the user's pushes, and compaction (on, as in a server)
/// not yet run: the generation before the newest checkpoint's previous one is still thousands
/// of small segments in a server, and stays indexed until compaction has moved them. When a
/// round of upkeep outlasted the checkpoint interval, the next checkpoint dropped it from the
/// index and every stale patch and resend searched it segment by segment (`make sustained`,
/// 2026-12-02, run 16: pushes at a tenth).
async fn a_resend_and_a_stale_base_from_a_generation_not_yet_compacted_read_only_the_users_segments(
    backend: keepsake_tests::Backend,
) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let cfg = LogConfig {
        checkpoint_every_events: 20,
        view_memory_bytes: 1,
        // On, but behind: it never finds enough to do.
        compaction: CompactionPolicy {
            enabled: true,
            min_segments: u64::MAX,
            max_events: u64::MAX,
        },
        ..fast_config()
    };
    let log = open(as_store, 1, cfg).await.expect("open");
    let u = user();
    let (first_change, first, second) = put_then_patch(&log, u, ITEM).await;
    let Outcome::Applied(original) = first.outcomes[0] else {
        panic!("{:?}", first.outcomes)
    };
    assert_eq!([first.segment, second.segment], [Some(1), Some(2)]);
    let others = || async {
        for _ in 0..20 {
            push(&log, user(), vec![put(item(), json!({}))])
                .await
                .expect("another user's push");
        }
    };
    others().await;
    let c1 = until_checkpointed(&log, 0, None).await;
    others().await;
    let c2 = until_checkpointed(&log, 0, Some(c1)).await;
    // No third checkpoint follows (the test's own pushes are 1 event; the interval is 5
    // minutes): with a third, the index would keep only from c1 on, as designed.
    assert!(c1 > 10 && c2 > c1, "checkpoints at {c1} and {c2}");
    assert!(
        list_layout(ts.store.as_ref(), 0)
            .await
            .expect("layout")
            .history
            .is_empty(),
        "nothing compacted"
    );
    answered_from_the_users_segments(&log, &faulty, u, first_change, original, c2).await;
    log.shutdown().await;
}

/// The user (segments 1 and 2: item 7 put as {"a":1,"b":1}, then patched to {"a":2}) resends
/// its first change and pushes a patch based on version 1: a duplicate with the original
/// result and nothing written, then version 3 merged; and no segment from 3 to `through` (the
/// other users') is read for either.
async fn answered_from_the_users_segments(
    log: &keepsake_log::Log,
    faulty: &FaultyStore,
    u: keepsake_model::UserId,
    first_change: keepsake_model::Change,
    original: keepsake_model::ChangeRef,
    through: u64,
) {
    let watched: Vec<_> = (3..=through)
        .map(|n| faulty.count_gets(keys::segment(0, n).as_ref()))
        .collect();
    let head = log.head(0);
    let again = push(log, u, vec![first_change]).await.expect("push again");
    assert_eq!(again.outcomes, vec![Outcome::Duplicate(original)]);
    assert_eq!(log.head(0), head, "nothing written");
    stale_patch_merges(log, u, ITEM).await;
    let read: Vec<u64> = (3..=through)
        .zip(&watched)
        .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
        .map(|(s, _)| s)
        .collect();
    assert!(
        read.is_empty(),
        "other users' segments read: {read:?} of 3..={through}"
    );
}

/// A resend and a stale patch's base from before the tail index are sought in the history
/// objects, newest first; a large one (over 1 MiB: footer, page index and pages by range
/// reads) has its footer kept by the view, so the second search reads its pages only. In
/// `make sustained` (2026-12-03, run 20) every search read each object's footer and page index
/// again: ~28 read GETs a search, and the read GETs per cold load rose from 2 to 8 as history
/// objects accumulated. An object put in the same name since (another write: here the same
/// bytes put again, a new e-tag on memory and file) is not read through the kept footer: the
/// read finds the other write, forgets the footer and reads the object's own.
async fn searches_of_older_history_read_a_history_objects_footer_once(
    backend: keepsake_tests::Backend,
) {
    use object_store::ObjectStoreExt as _;
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let as_store: Arc<dyn ObjectStore> = faulty.clone();
    let cfg = LogConfig {
        // Checkpoints only when asked (`compact_now`), compaction into one object.
        checkpoint_every_events: u64::MAX,
        view_memory_bytes: 1,
        compaction: CompactionPolicy {
            enabled: false,
            min_segments: 1,
            max_events: 1_000_000,
        },
        ..fast_config()
    };
    let log = open(as_store, 1, cfg).await.expect("open");
    let u = user();
    let (first_change, first, _) = put_then_patch(&log, u, ITEM).await;
    let Outcome::Applied(original) = first.outcomes[0] else {
        panic!("{:?}", first.outcomes)
    };
    // Other users' documents of 16 random ids each: the history object is over 1 MiB.
    let big = || {
        let pad: Vec<String> = (0..16).map(|_| item().0.to_string()).collect();
        put(item(), json!({ "pad": pad }))
    };
    for _ in 0..50 {
        push(&log, user(), (0..100).map(|_| big()).collect())
            .await
            .expect("another user's push");
    }
    log.compact_now().await.expect("checkpoint and compact");
    // A second checkpoint: the index starts after the first, so u's segments are before it.
    push(&log, user(), vec![put(item(), json!({}))])
        .await
        .expect("another user's push");
    log.compact_now().await.expect("checkpoint again");
    let layout = list_layout(ts.store.as_ref(), 0).await.expect("layout");
    let object = *layout
        .history
        .iter()
        .find(|h| h.holds(1))
        .expect("u's segments compacted");
    assert!(
        object.size > 1024 * 1024,
        "the history object is {} bytes",
        object.size
    );
    let path = keys::history(0, object.first, object.last);
    let gets = faulty.count_gets(path.as_ref());
    let footers = || {
        let (_, hits, misses) = log.history_footers();
        (hits, misses)
    };
    assert_eq!(footers(), (0, 0));

    // The resend: a duplicate with the original result, the footer read from the store once.
    let resend = || async {
        let searches = LogStats::get(&log.stats().old_change_reads);
        let again = push(&log, u, vec![first_change.clone()])
            .await
            .expect("push again");
        assert_eq!(again.outcomes, vec![Outcome::Duplicate(original)]);
        assert_eq!(
            LogStats::get(&log.stats().old_change_reads),
            searches + 1,
            "the resend was sought in the log"
        );
        gets.swap(0, Ordering::Relaxed)
    };
    let first_search = resend().await;
    assert_eq!(footers(), (0, 1), "one footer read");
    assert!(first_search > 0, "the history object was read");
    // `/metrics` tells what the search read: past the index, the one history object.
    let stats = log.stats();
    assert_eq!(LogStats::get(&stats.searches_past_index), 1);
    assert_eq!(LogStats::get(&stats.search_history_objects), 1);
    assert_eq!(LogStats::get(&stats.search_segments), 0);
    // The same search again reads the same pages, and not the HEAD and footer.
    let second_search = resend().await;
    assert_eq!(footers(), (1, 1), "the footer kept");
    assert!(
        second_search < first_search,
        "the second search read {second_search} ranges, the first {first_search}"
    );

    // The stale patch: its base found in the same object, through the kept footer.
    stale_patch_merges(&log, u, ITEM).await;
    let (hits, misses) = footers();
    assert_eq!(misses, 1, "the footer was not read again");
    assert!(hits >= 2, "the search used the kept footer");

    // The same bytes put again in the object's name: another write of it.
    let before = ts.store.head(&path).await.expect("head");
    let bytes = object_bytes(ts.store.as_ref(), &path).await;
    ts.store.put(&path, bytes.into()).await.expect("put again");
    let after = ts.store.head(&path).await.expect("head");
    let rewritten = before.e_tag != after.e_tag;
    resend().await;
    let (_, misses_after) = footers();
    assert_eq!(
        misses_after,
        if rewritten { 2 } else { 1 },
        "a new write of the object (e-tag {:?} -> {:?}) is read through its own footer",
        before.e_tag,
        after.e_tag
    );
    log.shutdown().await;
}
