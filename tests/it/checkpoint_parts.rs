//! Checkpoints as manifests over parts (format 4, issue 15): a checkpoint writes only the users
//! changed since the previous one; merges keep the state the fold of the log; a crash before the
//! manifest lands leaves only unnamed parts, which retention deletes; a change id from before
//! several checkpoints is still a duplicate.

use std::collections::HashMap;

use keepsake_log::{
    Checkpoint, CompactionPolicy, Log, LogConfig, LogStats, PartsPolicy, UpTo, open_checkpoint,
    read_checkpoint, read_user, verify::verify_store,
};
use keepsake_model::{Change, Outcome, StateRead, UserId, UserState};
use keepsake_segment::Manifest;
use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
use keepsake_store::keys;
use keepsake_tests::Backend;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::TryStreamExt;

use crate::common::*;

on_every_backend!(
    a_checkpoint_after_one_users_change_writes_one_part,
    merged_deltas_and_base_parts_stay_the_fold_of_the_log,
    a_checkpoint_past_its_fold_budget_folds_a_range_of_users_at_a_time,
    a_change_id_from_three_checkpoints_ago_is_still_a_duplicate,
    a_crash_before_the_manifest_lands_loses_nothing_and_its_parts_are_deleted,
    a_manifest_naming_a_missing_part_is_passed_over_for_the_log,
    few_and_many_changed_users_of_a_part_read_alike,
    a_round_that_changes_every_user_reads_each_part_once,
    a_round_that_changes_every_user_past_the_fold_budget_holds_a_range_of_parts,
    a_few_busy_users_do_not_make_a_checkpoint_read_parts_whole,
    one_users_read_of_a_part_fetches_its_own_documents,
    a_cold_load_of_a_small_user_fetches_about_its_own_rows,
    a_read_of_the_past_starts_from_the_newest_checkpoint_for_users_unchanged_since,
    a_fleet_fold_reads_its_users_of_a_checkpoint_not_every_user,
    a_checkpoint_reads_the_parts_of_its_changed_users_at_once,
    a_second_checkpoint_reads_no_footer_the_first_read,
    a_checkpoint_keeps_no_footer_of_a_part_its_manifest_no_longer_names,
    a_folds_parts_read_whole_are_published_as_each_is_read,
    a_fold_gives_way_past_the_views_floors,
    a_base_merge_past_the_fold_budget_over_one_base_part_keeps_every_user,
    a_views_part_footers_stay_within_their_bound,
    a_checkpoint_writes_a_long_historys_old_change_ids_once,
    a_missing_filter_run_makes_its_checkpoint_pass_for_the_log,
    a_broken_filter_run_is_passed_over_by_the_next_checkpoint,
    a_cold_load_reads_the_pages_of_the_runs_that_hold_its_user_only,
    a_fleet_fold_reads_a_filter_run_whole_when_it_wants_many_of_its_users,
    a_user_goes_to_a_filter_run_once_per_64_sealed_blocks,
    runs_cut_a_block_and_64_blocks_at_a_time_join_in_one_store,
);

/// `n` pushes of one put each for `u`; the change of the first.
async fn pushes(log: &Log, u: UserId, n: usize) -> Change {
    let first = put(item(), json!({"n": 0}));
    push(log, u, vec![first.clone()]).await.expect("push");
    for i in 1..n {
        push(log, u, vec![put(item(), json!({ "n": i }))])
            .await
            .expect("push");
    }
    first
}

/// A resend of `c` (applied before) answers `duplicate` and writes nothing.
async fn assert_resend_is_a_duplicate(log: &Log, u: UserId, c: Change) {
    let head = log.head(0);
    let again = push(log, u, vec![c]).await.expect("resend");
    assert!(
        matches!(again.outcomes[..], [Outcome::Duplicate(_)]),
        "{:?}",
        again.outcomes
    );
    assert_eq!(log.head(0), head, "nothing written");
}

/// The state of `u` in the part of checkpoint `n` that holds it, as stored (no runs attached).
async fn stored_row(store: &Arc<dyn ObjectStore>, n: u64, u: UserId) -> UserState {
    let m = manifest(store, n).await;
    let p = m.locate(&u).expect("a part holds u");
    let bytes = store
        .get(&keys::part(0, p.written_by, p.digest))
        .await
        .expect("part")
        .bytes()
        .await
        .expect("bytes");
    let (_, users) = keepsake_segment::decode_checkpoint(bytes).expect("decode");
    users.get(&u).cloned().expect("u in its part")
}

/// The rows of run `r`.
async fn run_rows(
    store: &Arc<dyn ObjectStore>,
    r: &keepsake_segment::PartRef,
) -> Vec<(UserId, keepsake_model::ChangeFilter)> {
    let bytes = store
        .get(&keys::part(0, r.written_by, r.digest))
        .await
        .expect("run")
        .bytes()
        .await
        .expect("bytes");
    keepsake_segment::decode_filter_run(bytes)
        .expect("decode")
        .1
}

/// Issue 15, item 2: a checkpoint writes a changed user's new change ids, not every id of its
/// log. Its sealed filter blocks (32 seqs each, all there) go once to a filter run; its part
/// row holds the open block only; a later checkpoint writes only the blocks sealed since; a
/// load attaches the runs' blocks, so a resend from the first checkpoint is still a duplicate.
async fn a_checkpoint_writes_a_long_historys_old_change_ids_once(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("open");
    let (u, v) = (user(), user());
    // 20 sealed blocks for u (640 seqs) and 2 for v.
    let first = pushes(&log, u, 640).await;
    pushes(&log, v, 64).await;
    let c1 = checkpoint(&log).await;
    let m1 = manifest(&ts.store, c1).await;
    assert_eq!(m1.filter_runs.len(), 1, "{m1:?}");
    let rows = run_rows(&ts.store, &m1.filter_runs[0]).await;
    let held: HashMap<UserId, (usize, usize)> = rows
        .iter()
        .map(|(w, f)| (*w, (f.offset(), f.blocks())))
        .collect();
    assert_eq!(held[&u], (0, 20));
    assert_eq!(held[&v], (0, 2));
    // Every block is sealed: the part row holds none of them.
    let row = stored_row(&ts.store, c1, u).await;
    assert_eq!(row.sealed_missing(), 20);
    assert_eq!(row.change_filter().to_bytes().len(), 0);
    let run_bytes = LogStats::get(&log.stats().checkpoint_filter_run_bytes);
    assert_eq!(run_bytes, m1.filter_runs[0].bytes, "counted on /metrics");

    // One more event: no block sealed since, no run; the delta's row holds one block.
    touch(&log, &[u], 1).await;
    let c2 = checkpoint(&log).await;
    let m2 = manifest(&ts.store, c2).await;
    assert_eq!(m2.filter_runs, m1.filter_runs, "no run written");
    assert_eq!(
        LogStats::get(&log.stats().checkpoint_filter_run_bytes),
        run_bytes
    );
    let row = stored_row(&ts.store, c2, u).await;
    assert_eq!((row.sealed_missing(), row.last_seq()), (20, 641));
    assert_eq!(row.change_filter().to_bytes().len(), 128, "one block");

    // 31 more seal block 20: the run written holds that block alone (the older run, of more
    // rows, is not merged into it).
    pushes(&log, u, 31).await;
    let c3 = checkpoint(&log).await;
    let m3 = manifest(&ts.store, c3).await;
    assert_eq!(m3.filter_runs.len(), 2, "{m3:?}");
    assert_eq!(m3.filter_runs[1], m1.filter_runs[0]);
    let rows = run_rows(&ts.store, &m3.filter_runs[0]).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0, rows[0].1.offset(), rows[0].1.blocks()),
        (u, 20, 21)
    );
    assert_is_the_fold(&ts.store, c3, &[u, v]).await;

    // A cold load holds every id again: the resend of the first push is a duplicate, and the
    // state is the replay's.
    log.shutdown().await;
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("reopen");
    let (missing, filter) = log
        .user(&u, |s| (s.sealed_missing(), s.change_filter()))
        .await
        .expect("user");
    let (events, _) = read_user(ts.store.clone(), 0, u, UpTo::End)
        .await
        .expect("read u");
    assert_eq!(missing, 0);
    assert_eq!(
        filter,
        UserState::replay(&events).expect("fold").change_filter()
    );
    assert_resend_is_a_duplicate(&log, u, first).await;
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// `n` puts for `u`, 500 to a push; the first change.
async fn many(log: &Log, u: UserId, n: usize) -> Change {
    let mut first = None;
    let mut left = n;
    while left > 0 {
        let k = left.min(500);
        let changes: Vec<Change> = (0..k).map(|i| put(item(), json!({ "n": i }))).collect();
        first.get_or_insert_with(|| changes[0].clone());
        push(log, u, changes).await.expect("push");
        left -= k;
    }
    first.expect("n > 0")
}

/// With the default parts a user's sealed blocks go to a run 64 at a time (2,048 events), not
/// each time a checkpoint finds one more sealed: in a steady load every user seals a block
/// about every round, and runs holding every user made each cold load read a page of each
/// (~2.5 more GETs a cold load in `make sustained`). A user short of 64 sealed
/// blocks keeps them in its part row and its cold load reads no run.
async fn a_user_goes_to_a_filter_run_once_per_64_sealed_blocks(backend: Backend) {
    let (ts, faulty, store, log) = over_faulty(backend, PartsPolicy::default()).await;
    let (u, v) = (user(), user());
    // u: 2,100 events, blocks 0..65 sealed; v: 640, 20 sealed.
    let first_u = many(&log, u, 2100).await;
    let first_v = many(&log, v, 640).await;
    let c1 = checkpoint(&log).await;
    let m1 = manifest(&store, c1).await;
    assert_eq!(m1.filter_runs.len(), 1, "{m1:?}");
    assert_eq!(
        all_run_rows(&store, &m1).await,
        vec![(u, 0, 64)],
        "u's first 64 blocks; v in no run"
    );
    let row = stored_row(&store, c1, u).await;
    assert_eq!(
        (row.sealed_missing(), row.change_filter().blocks()),
        (64, 66)
    );
    let row = stored_row(&store, c1, v).await;
    assert_eq!(
        (row.sealed_missing(), row.change_filter().blocks()),
        (0, 20)
    );

    // 1,000 more for each: v seals 31 more blocks (51, still short of 64), u 96 (not 128): no
    // run written.
    many(&log, u, 1000).await;
    many(&log, v, 1000).await;
    let c2 = checkpoint(&log).await;
    let m2 = manifest(&store, c2).await;
    assert_eq!(m2.filter_runs, m1.filter_runs, "no run written");
    // 1,000 more for u: 4,100 events, blocks 64..128 go to a run, merged with the first (a
    // row each: size-tiered) into u's blocks 0..128.
    many(&log, u, 1000).await;
    let c3 = checkpoint(&log).await;
    let m3 = manifest(&store, c3).await;
    assert_eq!(m3.filter_runs.len(), 1, "{m3:?}");
    assert_eq!(m3.filter_runs[0].written_by, c3);
    assert_eq!(all_run_rows(&store, &m3).await, vec![(u, 0, 128)]);
    let row = stored_row(&store, c3, u).await;
    assert_eq!(
        (row.sealed_missing(), row.change_filter().blocks()),
        (128, 129)
    );
    assert_is_the_fold(&store, c3, &[u, v]).await;
    log.shutdown().await;

    // Cold loads: v reads no run at all (not even a footer); u reads its pages of it.
    let path = |r: &keepsake_segment::PartRef| keys::part(0, r.written_by, r.digest).to_string();
    let gets: Vec<_> = m3
        .filter_runs
        .iter()
        .map(|r| faulty.count_gets(&path(r)))
        .collect();
    let log = open(store.clone(), 1, cfg(PartsPolicy::default()))
        .await
        .expect("reopen");
    let whole = |s: &UserState| s.sealed_missing() == 0;
    assert!(log.user(&v, whole).await.expect("v"));
    assert!(gets.iter().all(|g| g.load(Relaxed) == 0), "v read no run");
    assert_resend_is_a_duplicate(&log, v, first_v).await;
    assert!(log.user(&u, whole).await.expect("u"));
    assert!(gets.iter().all(|g| g.load(Relaxed) > 0), "u read the run");
    assert_resend_is_a_duplicate(&log, u, first_u).await;
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// The rows of every run `m` names, as (user, first block, end), by first block.
async fn all_run_rows(store: &Arc<dyn ObjectStore>, m: &Manifest) -> Vec<(UserId, usize, usize)> {
    let mut rows = Vec::new();
    for r in &m.filter_runs {
        for (w, f) in run_rows(store, r).await {
            rows.push((w, f.offset(), f.blocks()));
        }
    }
    rows.sort_by_key(|r| r.1);
    rows
}

/// A store whose runs were cut a block at a time (every run before `run_blocks`), then 64 at a
/// time, then a block at a time again (a writer of another setting): the rows join end to
/// start, a cold load is whole, and resends of a change held by a run and of one held by the
/// part row's sealed blocks are duplicates.
async fn runs_cut_a_block_and_64_blocks_at_a_time_join_in_one_store(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let reopen = |parts| open(ts.store.clone(), 1, cfg(parts));
    let whole = |s: &UserState| s.sealed_missing() == 0;
    let u = user();
    // A block at a time: 680 events, blocks 0..21 to a run.
    let log = reopen(short_runs()).await.expect("open");
    let first = many(&log, u, 680).await;
    let c1 = checkpoint(&log).await;
    assert_eq!(stored_row(&ts.store, c1, u).await.sealed_missing(), 21);
    log.shutdown().await;

    // 64 at a time: at 2,100 events blocks 21..64 go to a run (merged with the first: a row
    // each); block 64, sealed, stays in the part row with the open block 65.
    let log = reopen(PartsPolicy::default()).await.expect("reopen");
    many(&log, u, 1380).await;
    let mid = many(&log, u, 1).await; // seq 2,061: block 64
    many(&log, u, 39).await;
    let c2 = checkpoint(&log).await;
    let m2 = manifest(&ts.store, c2).await;
    assert_eq!(all_run_rows(&ts.store, &m2).await, vec![(u, 0, 64)]);
    let row = stored_row(&ts.store, c2, u).await;
    assert_eq!(
        (row.sealed_missing(), row.change_filter().blocks()),
        (64, 66)
    );
    assert_is_the_fold(&ts.store, c2, &[u]).await;
    log.shutdown().await;
    let log = reopen(PartsPolicy::default()).await.expect("cold");
    assert!(log.user(&u, whole).await.expect("u"));
    assert_resend_is_a_duplicate(&log, u, first.clone()).await;
    assert_resend_is_a_duplicate(&log, u, mid.clone()).await;
    log.shutdown().await;

    // A block at a time again: at 2,200 events blocks 64..68 go to a run.
    let log = reopen(short_runs()).await.expect("reopen");
    many(&log, u, 100).await;
    let c3 = checkpoint(&log).await;
    let m3 = manifest(&ts.store, c3).await;
    let rows = all_run_rows(&ts.store, &m3).await;
    let ends: Vec<(usize, usize)> = rows.iter().map(|r| (r.1, r.2)).collect();
    assert!(
        ends == [(0, 68)] || ends == [(0, 64), (64, 68)],
        "the rows join to 0..68: {rows:?}"
    );
    assert_eq!(stored_row(&ts.store, c3, u).await.sealed_missing(), 68);
    assert_is_the_fold(&ts.store, c3, &[u]).await;
    log.shutdown().await;
    let log = reopen(PartsPolicy::default()).await.expect("cold");
    assert!(log.user(&u, whole).await.expect("u"));
    assert_resend_is_a_duplicate(&log, u, first).await;
    assert_resend_is_a_duplicate(&log, u, mid).await;
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// A log of one shard with `parts` over a counting store (kept alive by the first).
async fn over_faulty(
    backend: Backend,
    parts: PartsPolicy,
) -> (
    keepsake_tests::TestStore,
    Arc<FaultyStore>,
    Arc<dyn ObjectStore>,
    Log,
) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let log = open(store.clone(), 1, cfg(parts)).await.expect("open");
    (ts, faulty, store, log)
}

/// A cold load of a user with sealed blocks asks every run the manifest names, but reads pages
/// only of those that hold the user: each run's footer (read once, kept) carries a filter of its
/// users. Without it every run cost a ranged GET a cold load, billed per request on S3.
async fn a_cold_load_reads_the_pages_of_the_runs_that_hold_its_user_only(backend: Backend) {
    let (_ts, faulty, store, log) = over_faulty(backend, short_runs()).await;
    // Ids chosen so that each run's range of ids (its page index) takes in the users of the
    // other: only the users' filter tells them apart.
    let id = |hi: u128| UserId(uuid::Uuid::from_u128(hi << 120 | 0x5eed));
    let (u, y, v) = (id(0x1), id(0x7), id(0xd));
    let (w, x) = (id(0x3), id(0xf));
    for a in [u, y, v] {
        pushes(&log, a, 64).await;
    }
    checkpoint(&log).await;
    // w and x's run has fewer rows than the first: not merged into it.
    pushes(&log, w, 40).await;
    pushes(&log, x, 40).await;
    let c = checkpoint(&log).await;
    let m = manifest(&store, c).await;
    assert_eq!(m.filter_runs.len(), 2, "{m:?}");
    log.shutdown().await;
    let path = |r: &keepsake_segment::PartRef| keys::part(0, r.written_by, r.digest).to_string();
    let (holds_w, holds_uv) = (path(&m.filter_runs[0]), path(&m.filter_runs[1]));
    let gets_w = faulty.count_gets(&holds_w);
    let gets_uv = faulty.count_gets(&holds_uv);
    let log = open(store.clone(), 1, cfg(short_runs()))
        .await
        .expect("reopen");
    let whole = |s: &UserState| s.sealed_missing() == 0;
    // The first cold load reads both footers (and u's pages of its run).
    assert!(log.user(&u, whole).await.expect("u"));
    let (w_before, uv_before) = (gets_w.load(Relaxed), gets_uv.load(Relaxed));
    assert!(w_before > 0 && uv_before > 0, "both footers read");
    // v is in the first run only: w's run is not read again.
    assert!(log.user(&v, whole).await.expect("v"));
    assert_eq!(
        gets_w.load(Relaxed),
        w_before,
        "no page of w's run read for v"
    );
    assert!(gets_uv.load(Relaxed) > uv_before, "v's pages read");
    // And w is in the second only.
    let uv_after_v = gets_uv.load(Relaxed);
    assert!(log.user(&w, whole).await.expect("w"));
    assert_eq!(
        gets_uv.load(Relaxed),
        uv_after_v,
        "no page of u and v's run read for w"
    );
    assert!(gets_w.load(Relaxed) > w_before, "w's pages read");
    log.shutdown().await;
}

/// 40 puts for `u` in one push; the first change.
async fn forty(log: &Log, u: UserId) -> Change {
    let changes: Vec<Change> = (0..40).map(|i| put(item(), json!({ "n": i }))).collect();
    let first = changes[0].clone();
    push(log, u, changes).await.expect("push");
    first
}

/// A fleet restore's fold of a shard wants many of a filter run's users (each state whole, its
/// sealed blocks attached): it reads the run whole, once, not each user's pages of it (a ranged
/// GET or more a user: its restores ran at 0.72x those of format 5); a run with more than 16
/// rows a wanted user is still read by their pages, and a user with rows in both kinds of run
/// gets both. The states are the ones a read of each user gives, from the checkpoint (no
/// segment read: a join that failed would send the fold to the log and hide it), and a resend
/// from before the checkpoints is still a duplicate.
async fn a_fleet_fold_reads_a_filter_run_whole_when_it_wants_many_of_its_users(backend: Backend) {
    let (_ts, faulty, store, log) = over_faulty(backend, short_runs()).await;
    // 40 users of one sealed block each (seqs 1-32), in a run of 40 rows; then 2 of them seal
    // their second (seqs 33-64), in a run of 2 rows (not merged into the larger).
    let users: Vec<UserId> = (0..40).map(|_| user()).collect();
    let mut firsts = Vec::new();
    for u in &users {
        firsts.push(forty(&log, *u).await);
    }
    checkpoint(&log).await;
    for u in &users[..2] {
        forty(&log, *u).await;
    }
    let c = checkpoint(&log).await;
    let m = manifest(&store, c).await;
    let rows: Vec<u64> = m.filter_runs.iter().map(|r| r.users).collect();
    assert_eq!(rows, [2, 40], "{m:?}");
    log.shutdown().await;
    let path = |r: &keepsake_segment::PartRef| keys::part(0, r.written_by, r.digest).to_string();
    let (small, large) = (path(&m.filter_runs[0]), path(&m.filter_runs[1]));
    let small_gets = (faulty.count_gets(&small), faulty.count_whole_gets(&small));
    let large_gets = (faulty.count_gets(&large), faulty.count_whole_gets(&large));
    type Counter = Arc<std::sync::atomic::AtomicU64>;
    let counts = |(all, whole): &(Counter, Counter)| (all.load(Relaxed), whole.load(Relaxed));
    let log = open(store.clone(), 1, cfg(short_runs()))
        .await
        .expect("reopen");
    // The log's events: segments, and the history objects compaction moved them to.
    let log_gets = [
        faulty.count_gets("/segments/"),
        faulty.count_gets("/history"),
    ];
    let now = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    let assert_whole = |states: &HashMap<UserId, UserState>, wanted: &[UserId]| {
        assert_eq!(states.len(), wanted.len());
        for u in wanted {
            assert_eq!(states.get(u).map(UserState::sealed_missing), Some(0), "{u}");
        }
    };
    // 2 wanted: the run of 2 rows whole, the run of 40 (more than 16 a wanted user) by pages.
    let two: std::collections::HashSet<UserId> = users[..2].iter().copied().collect();
    let states = log.users_at(0, &two, now).await.expect("users at");
    assert_eq!(counts(&small_gets), (1, 1), "the small run read whole once");
    let (large_paged, large_whole) = counts(&large_gets);
    assert!(
        large_paged > 0 && large_whole == 0,
        "the large run by pages"
    );
    assert_whole(&states, &users[..2]);
    let of_two = states;
    // All 40: both runs whole, once each.
    let all: std::collections::HashSet<UserId> = users.iter().copied().collect();
    let states = log.users_at(0, &all, now).await.expect("users at");
    assert_eq!(counts(&small_gets), (2, 2));
    assert_eq!(
        counts(&large_gets),
        (large_paged + 1, 1),
        "the large run whole once"
    );
    assert_whole(&states, &users);
    assert_eq!(
        log_gets.iter().map(|c| c.load(Relaxed)).sum::<u64>(),
        0,
        "the folds read the checkpoint, not the log"
    );
    for u in &users[..2] {
        assert_eq!(of_two.get(u), states.get(u), "user {u}");
    }
    for u in &users {
        let one = log.user_at(u, UpTo::Time(now)).await.expect("user at");
        assert_eq!(Some(&one), states.get(u), "user {u}");
    }
    for (u, first) in users.iter().zip(firsts).take(4) {
        assert_resend_is_a_duplicate(&log, *u, first).await;
    }
    log.shutdown().await;
}

/// A filter run that is there but broken (its bytes replaced): the next checkpoint, whose
/// merge of runs reads it, folds from the log's start instead of the previous checkpoint, as for
/// a broken part, rather than fail (every checkpoint after it would fail the same way).
async fn a_broken_filter_run_is_passed_over_by_the_next_checkpoint(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    // One run at most: each checkpoint that writes a run merges the one before into it.
    let parts = PartsPolicy {
        max_deltas: 1,
        ..short_runs()
    };
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("open");
    let u = user();
    let first = pushes(&log, u, 40).await;
    let c1 = checkpoint(&log).await;
    let run = manifest(&ts.store, c1).await.filter_runs[0];
    ts.store
        .put(
            &keys::part(0, run.written_by, run.digest),
            object_store::PutPayload::from_static(b"not a filter run"),
        )
        .await
        .expect("the run is overwritten");
    pushes(&log, u, 40).await;
    let c2 = checkpoint(&log).await;
    assert!(c2 > c1);
    let m2 = manifest(&ts.store, c2).await;
    assert_eq!(m2.filter_runs.len(), 1);
    assert_eq!(m2.filter_runs[0].written_by, c2, "folded anew: {m2:?}");
    assert_is_the_fold(&ts.store, c2, &[u]).await;
    log.shutdown().await;
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("reopen");
    assert_resend_is_a_duplicate(&log, u, first).await;
    log.shutdown().await;
}

/// A filter run the manifest names is gone: its checkpoint is unusable (never a filter with a
/// hole, which would take a resend for new), so loads read the log, a resend is still a
/// duplicate, verify says what is wrong, and the next checkpoint folds from the log.
async fn a_missing_filter_run_makes_its_checkpoint_pass_for_the_log(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("open");
    let u = user();
    let first = pushes(&log, u, 70).await;
    let c1 = checkpoint(&log).await;
    log.shutdown().await;
    let m1 = manifest(&ts.store, c1).await;
    let run = m1.filter_runs[0];
    ts.store
        .delete(&keys::part(0, run.written_by, run.digest))
        .await
        .expect("the run goes");
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(!report.ok, "verify finds the run missing");
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("reopen");
    assert_eq!(log.user(&u, |s| s.sealed_missing()).await.expect("user"), 0);
    assert_resend_is_a_duplicate(&log, u, first).await;
    touch(&log, &[u], 1).await;
    let c2 = checkpoint(&log).await;
    assert_is_the_fold(&ts.store, c2, &[u]).await;
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    // The first checkpoint is still there and still broken; the newest is whole.
    assert!(
        report
            .problems
            .iter()
            .all(|p| format!("{p:?}").contains(&format!("{c1}"))),
        "{:?}",
        report.problems
    );
}

/// The default parts, but sealed filter blocks go to a run one at a time (the default waits
/// for 64, 2,048 events of a user): these tests make runs of short histories.
fn short_runs() -> PartsPolicy {
    PartsPolicy {
        run_blocks: 1,
        ..PartsPolicy::default()
    }
}

/// No background checkpoints or compaction: the tests write them.
fn cfg(parts: PartsPolicy) -> LogConfig {
    LogConfig {
        checkpoint_every_events: u64::MAX,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        checkpoint_parts: parts,
        compaction: CompactionPolicy {
            enabled: false,
            ..Default::default()
        },
        retention: keepsake_log::retention::RetentionPolicy {
            keep_all_for: chrono::Duration::zero(),
            keep_daily_for_days: 0,
            orphan_grace: chrono::Duration::zero(),
        },
        ..fast_config()
    }
}

async fn manifest(store: &Arc<dyn ObjectStore>, n: u64) -> Arc<Manifest> {
    match open_checkpoint(store.as_ref(), 0, n).await.expect("open") {
        Checkpoint::Parts(m) => m,
        other => panic!("checkpoint {n} is not a manifest: {other:?}"),
    }
}

/// Checkpoint `n`, written at the head, equals the fold of each user's events in the log.
async fn assert_is_the_fold(store: &Arc<dyn ObjectStore>, n: u64, users: &[UserId]) {
    let saved = read_checkpoint(store.as_ref(), 0, n).await.expect("read");
    assert_eq!(saved.len(), users.len(), "users in checkpoint {n}");
    for u in users {
        let (events, _) = read_user(store.clone(), 0, *u, UpTo::End)
            .await
            .expect("read the user");
        assert_eq!(
            saved.get(u),
            Some(&UserState::replay(&events).expect("fold")),
            "user {u} in checkpoint {n}"
        );
    }
}

/// Pushes one change for each of `users`.
async fn touch(log: &Log, users: &[UserId], round: u64) {
    for u in users {
        push(log, *u, vec![put(item(), json!({"round": round}))])
            .await
            .expect("push");
    }
}

async fn checkpoint(log: &Log) -> u64 {
    log.compact_now().await.expect("checkpoint");
    log.checkpoint(0).expect("a checkpoint")
}

async fn a_checkpoint_after_one_users_change_writes_one_part(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let parts = PartsPolicy {
        part_users: 4,
        ..short_runs()
    };
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("open");
    let users: Vec<UserId> = (0..20).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    let m1 = manifest(&ts.store, first).await;
    assert_eq!(m1.base.len(), 5, "20 users in parts of 4");
    assert!(m1.deltas.is_empty());
    let written = LogStats::get(&log.stats().checkpoint_parts_written);

    touch(&log, &users[7..8], 1).await;
    let second = checkpoint(&log).await;
    let m2 = manifest(&ts.store, second).await;
    assert_eq!(
        LogStats::get(&log.stats().checkpoint_parts_written) - written,
        1,
        "one part written"
    );
    assert_eq!(m2.base, m1.base, "the base is named again, not copied");
    assert_eq!(m2.deltas.len(), 1);
    assert_eq!(m2.deltas[0].users, vec![users[7]]);
    assert_eq!(m2.users, 20);
    assert_is_the_fold(&ts.store, second, &users).await;
    // A new user goes into a delta as well, and is counted.
    let newcomer = user();
    touch(&log, &[newcomer], 2).await;
    let third = checkpoint(&log).await;
    assert_eq!(manifest(&ts.store, third).await.users, 21);
    let mut all = users.clone();
    all.push(newcomer);
    assert_is_the_fold(&ts.store, third, &all).await;
    // A cold load goes through the manifest: restart and read every user.
    log.shutdown().await;
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("reopen");
    for u in &all {
        assert!(log.last_seq(u).await.expect("seq") >= 1);
    }
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

async fn merged_deltas_and_base_parts_stay_the_fold_of_the_log(backend: Backend) {
    let seen = merges_stay_the_fold(backend, PartsPolicy::default().fold_bytes).await;
    assert_eq!(
        seen.checkpoints, seen.passes,
        "one pass a checkpoint: {seen:?}"
    );
}

/// With a fold budget of one byte every checkpoint folds its users a range at a time (a base
/// part's worth, or one user when there is no base yet), reading the segments once a range:
/// the first checkpoint from nothing, merges into the base, merges of deltas and plain deltas
/// all give the fold of the log, part by part, as in one pass.
async fn a_checkpoint_past_its_fold_budget_folds_a_range_of_users_at_a_time(backend: Backend) {
    let seen = merges_stay_the_fold(backend, 1).await;
    // The first: six users, no base yet to cut at, so a user a pass.
    assert_eq!(seen.first, 6, "{seen:?}");
    assert_eq!(
        (seen.base_merge, seen.deltas_merge, seen.delta),
        (2, 2, 2),
        "each kind of checkpoint was seen folded in several passes: {seen:?}"
    );
}

/// Rounds of changes and checkpoints small enough that merges of deltas, merges into the base
/// and splits of base parts all happen; every checkpoint is checked against the fold of the
/// log, and the store verified.
async fn merges_stay_the_fold(backend: Backend, fold_bytes: usize) -> Seen {
    let ts = keepsake_tests::store(backend).await.expect("store");
    // Small enough that both merges and splits happen within a few rounds.
    let parts = PartsPolicy {
        part_users: 3,
        max_deltas: 2,
        merge_ratio: 1,
        merge_min_users: 2,
        fold_bytes,
        ..short_runs()
    };
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("open");
    let mut users: Vec<UserId> = (0..6).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let passes = || LogStats::get(&log.stats().checkpoint_fold_passes);
    checkpoint(&log).await;
    let mut seen = Seen {
        first: passes(),
        ..Seen::default()
    };
    for round in 1..12u64 {
        // Some users changed (one or two, spread over the ids), sometimes a new one.
        let r = round as usize;
        let picked: Vec<UserId> = (0..1 + r % 2)
            .map(|i| users[(r * 7 + i * 3) % users.len()])
            .collect();
        touch(&log, &picked, round).await;
        if round % 3 == 0 {
            let u = user();
            users.push(u);
            touch(&log, &[u], round).await;
        }
        let before = manifest(&ts.store, log.checkpoint(0).expect("c")).await;
        let p = passes();
        let c = checkpoint(&log).await;
        let m = manifest(&ts.store, c).await;
        let many = passes() - p > 1;
        if m.deltas.is_empty() {
            seen.base_merge = seen.base_merge.max(1 + u8::from(many));
        } else if m.deltas.len() <= before.deltas.len() {
            seen.deltas_merge = seen.deltas_merge.max(1 + u8::from(many));
        } else {
            seen.delta = seen.delta.max(1 + u8::from(many));
        }
        assert!(m.deltas.len() <= parts.max_deltas, "{m:?}");
        for b in &m.base {
            assert!(b.part.users as usize <= parts.part_users, "{m:?}");
        }
        assert_is_the_fold(&ts.store, c, &users).await;
    }
    assert!(seen.base_merge > 0, "a merge into the base happened");
    assert!(seen.deltas_merge > 0, "a merge of deltas happened");
    seen.checkpoints = LogStats::get(&log.stats().checkpoints);
    seen.passes = passes();
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
    seen
}

/// What [`merges_stay_the_fold`] saw: per kind of checkpoint, 0 (none), 1 (in one pass of its
/// fold) or 2 (one in several passes).
#[derive(Debug, Default)]
struct Seen {
    /// Passes of the first checkpoint's fold (from nothing).
    first: u64,
    base_merge: u8,
    deltas_merge: u8,
    delta: u8,
    checkpoints: u64,
    passes: u64,
}

async fn a_change_id_from_three_checkpoints_ago_is_still_a_duplicate(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("open");
    let u = user();
    let c: Change = put(item(), json!({"title": "once"}));
    let first = push(&log, u, vec![c.clone()]).await.expect("push");
    let Outcome::Applied(original) = first.outcomes[0] else {
        panic!("{:?}", first.outcomes)
    };
    // Three checkpoints, u changed in each (so u's state is rewritten into three deltas).
    for round in 0..3 {
        touch(&log, &[u, user()], round).await;
        checkpoint(&log).await;
    }
    log.shutdown().await;
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("reopen");
    let head = log.head(0);
    // Loaded from the newest checkpoint (format 5), the user holds its change ids as a filter,
    // not one by one (issue 15, item 2): the resend is resolved from the log.
    let exact = log
        .user(&u, |s| {
            (s.changes().count(), s.filter_through(), s.last_seq())
        })
        .await
        .expect("user");
    assert_eq!(exact.0, 0, "no change id held exactly");
    assert_eq!(exact.1, exact.2, "every id in the filter");
    let again = push(&log, u, vec![c.clone()]).await.expect("push again");
    assert_eq!(again.outcomes, vec![Outcome::Duplicate(original)]);
    assert_eq!(log.head(0), head, "nothing written");
    assert_eq!(LogStats::get(&log.stats().old_change_reads), 1);
    assert_eq!(LogStats::get(&log.stats().old_changes_found), 1);
    // A new change id is applied (whatever the filter answered for it).
    let fresh = push(&log, u, vec![put(item(), json!({"title": "new"}))])
        .await
        .expect("push new");
    assert!(matches!(fresh.outcomes[..], [Outcome::Applied(_)]));
    // And after compaction moved its event into a history object, the resend is still found.
    log.compact_now().await.expect("compact");
    log.shutdown().await;
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("reopen");
    let head = log.head(0);
    let again = push(&log, u, vec![c]).await.expect("push again");
    assert_eq!(again.outcomes, vec![Outcome::Duplicate(original)]);
    assert_eq!(log.head(0), head, "nothing written");
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// The manifest's PUT fails after the checkpoint's parts were written (as a crash there would
/// leave it): the checkpoint is not there, nothing else changes, a restart reads from the one
/// before, the next checkpoint is written, and retention deletes the unnamed parts. The same
/// for a checkpoint that merges.
async fn a_crash_before_the_manifest_lands_loses_nothing_and_its_parts_are_deleted(
    backend: Backend,
) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let parts = PartsPolicy {
        part_users: 2,
        max_deltas: 1,
        // Two changed users of five are enough for a merge into the base: rounds 2 and 3 crash
        // in one.
        merge_ratio: 4,
        merge_min_users: 1,
        ..short_runs()
    };
    let mut log = open(store.clone(), 1, cfg(parts)).await.expect("open");
    let users: Vec<UserId> = (0..5).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    let mut expected: HashMap<UserId, u64> = HashMap::new();
    for round in 1..4u64 {
        touch(&log, &users[..(round as usize)], round).await;
        // And 40 events for the first user: each checkpoint seals filter blocks of it, so the
        // crashed ones leave filter runs (merged ones too: runs are tiered within max_deltas).
        pushes(&log, users[0], 40).await;
        for u in &users {
            expected.insert(*u, log.last_seq(u).await.expect("seq"));
        }
        faulty.inject(FaultOp::Put, "/checkpoints/", Fault::Fail, 100);
        assert!(log.compact_now().await.is_err(), "the manifest PUT fails");
        faulty.clear();
        assert_eq!(
            log.checkpoint(0),
            Some(first),
            "round {round}: not recorded"
        );
        // A restart reads from the checkpoint before, and every acknowledged change is there.
        log.shutdown().await;
        log = open(store.clone(), 1, cfg(parts)).await.expect("reopen");
        for (u, seq) in &expected {
            assert_eq!(log.last_seq(u).await.expect("seq"), *seq, "round {round}");
        }
    }
    let unnamed = list_parts(&store).await;
    // Retention deletes a part seen unnamed by two runs (the grace is zero here): the first
    // checkpoint after the crashes only notes them.
    touch(&log, &users[..1], 9).await;
    checkpoint(&log).await;
    let noted = list_parts(&store).await;
    assert!(
        unnamed.iter().all(|p| noted.contains(p)),
        "no part deleted at its first sighting"
    );
    touch(&log, &users[1..2], 10).await;
    let next = checkpoint(&log).await;
    assert_is_the_fold(&store, next, &users).await;
    let m = manifest(&store, next).await;
    let named: Vec<_> = m
        .parts()
        .map(|p| keys::part(0, p.written_by, p.digest))
        .collect();
    let left = list_parts(&store).await;
    assert!(
        left.iter().all(|p| named.contains(p)),
        "unnamed parts deleted: {left:?} (named {named:?}, after the crashes {unnamed:?})"
    );
    assert!(unnamed.len() > named.len(), "the crashes left parts");
    assert!(!m.filter_runs.is_empty(), "{m:?}");
    // After a restart the first user's state holds every sealed block again (from the runs
    // the newest manifest names, none of them a crashed checkpoint's).
    log.shutdown().await;
    let log = open(store.clone(), 1, cfg(parts)).await.expect("reopen");
    assert_eq!(
        log.user(&users[0], |s| s.sealed_missing())
            .await
            .expect("user"),
        0
    );
    log.shutdown().await;
    let (report, _) = verify_store(&store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

async fn list_parts(store: &Arc<dyn ObjectStore>) -> Vec<object_store::path::Path> {
    let mut out: Vec<_> = store
        .list(Some(&keys::parts_prefix(0)))
        .map_ok(|o| o.location)
        .try_collect()
        .await
        .expect("list");
    out.sort();
    out
}

/// A manifest that is there but names a part that is not (damage, or a writer that could not
/// take its manifest back): checkpoints are derived, so a restart's loads read those users
/// from the log, the next checkpoint folds from the first segment, and nothing is lost.
async fn a_manifest_naming_a_missing_part_is_passed_over_for_the_log(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let parts = PartsPolicy {
        part_users: 2,
        ..short_runs()
    };
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("open");
    let users: Vec<UserId> = (0..6).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    let mut expected = HashMap::new();
    for u in &users {
        expected.insert(*u, log.last_seq(u).await.expect("seq"));
    }
    log.shutdown().await;
    let m = manifest(&ts.store, first).await;
    let lost = m.base[1].part;
    ts.store
        .delete(&keys::part(0, lost.written_by, lost.digest))
        .await
        .expect("the part goes");
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("reopen");
    for (u, seq) in &expected {
        // A point-in-time read passes over the checkpoint too.
        let at = log
            .items_at(u, UpTo::Seq(*seq))
            .await
            .expect("as of, from the log");
        assert_eq!(at.last_seq(), *seq);
        assert_eq!(log.last_seq(u).await.expect("read from the log"), *seq);
    }
    // So does a fleet restore's fold of the shard (it failed the shard's restore before).
    let now = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    let wanted: std::collections::HashSet<UserId> = users.iter().copied().collect();
    let folded = log
        .users_at(0, &wanted, now)
        .await
        .expect("users at, from the log");
    for (u, seq) in &expected {
        assert_eq!(
            folded.get(u).map(StateRead::last_seq),
            Some(*seq),
            "user {u}"
        );
    }
    touch(&log, &users[..2], 1).await;
    let next = checkpoint(&log).await;
    assert_is_the_fold(&ts.store, next, &users).await;
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// A checkpoint reads the prior state of a few changed users of a part by their pages, and of
/// many (a sixteenth of the part or more) by reading the part whole: both give the fold.
async fn few_and_many_changed_users_of_a_part_read_alike(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("open");
    let users: Vec<UserId> = (0..40).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    checkpoint(&log).await;
    // One of 40: its pages.
    touch(&log, &users[5..6], 1).await;
    let c = checkpoint(&log).await;
    assert_is_the_fold(&ts.store, c, &users).await;
    // Ten of 40 (and the one again): the part whole.
    touch(&log, &users[..10], 2).await;
    let c = checkpoint(&log).await;
    assert_is_the_fold(&ts.store, c, &users).await;
    log.shutdown().await;
}

/// A checkpoint after a round in which every user changed, its fold asking in each run of
/// segments for only a few users of each part, reads each part whole once, not each user's
/// pages: it knows how far the fold has come, so a part is read whole when the fold is on course
/// to ask for a sixteenth of it. Before, a checkpoint of a shard of 25,000 users after such a
/// round sent 84,000 GETs, and under a file store took the GETs pushes needed (`make
/// sustained`); here 256 users in runs of 8 segments read the parts with 141 to 182 GETs.
async fn a_round_that_changes_every_user_reads_each_part_once(backend: Backend) {
    let Users256 {
        ts,
        faulty,
        log,
        users,
        base,
        ..
    } = users_256(backend).await;
    touch(&log, &users, 1).await;
    let part_gets = faulty.count_gets(keys::parts_prefix(0).as_ref());
    let second = checkpoint(&log).await;
    let part_gets = part_gets.load(std::sync::atomic::Ordering::Relaxed);
    // One read of each part, and the HEADs (GETs to this store) that check the previous
    // manifest's parts and then the new one's are there: 13.
    assert!(
        part_gets <= 4 * base.base.len() as u64,
        "the checkpoint after every user changed sent {part_gets} GETs to the previous \
         checkpoint's {} parts",
        base.base.len()
    );
    assert_is_the_fold(&ts.store, second, &users).await;
    log.shutdown().await;
}

/// A store (counting GETs) whose first checkpoint holds 256 users in four base parts of 64,
/// and the log that wrote it (runs of 8 segments).
struct Users256 {
    ts: keepsake_tests::TestStore,
    faulty: Arc<FaultyStore>,
    store: Arc<dyn ObjectStore>,
    parts: PartsPolicy,
    log: Log,
    users: Vec<UserId>,
    first: u64,
    base: Arc<Manifest>,
}

async fn users_256(backend: Backend) -> Users256 {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let parts = PartsPolicy {
        part_users: 64,
        fold_run_events: 8,
        ..short_runs()
    };
    let log = open(store.clone(), 1, cfg(parts)).await.expect("open");
    let users: Vec<UserId> = (0..256).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    let base = manifest(&ts.store, first).await;
    assert_eq!(base.base.len(), 4, "256 users in parts of 64");
    Users256 {
        ts,
        faulty,
        store,
        parts,
        log,
        users,
        first,
        base,
    }
}

/// A round that changes every user, with a fold budget of about one and a half base parts'
/// states: the fold does not read every part whole at once (what held a whole shard's states at
/// the first run of segments), but stops before a part it cannot hold and takes it in a later
/// pass; each part is still read whole about once, and the checkpoint is the fold of the log.
async fn a_round_that_changes_every_user_past_the_fold_budget_holds_a_range_of_parts(
    backend: Backend,
) {
    let Users256 {
        ts,
        faulty,
        store,
        parts,
        log,
        users,
        first,
        base,
    } = users_256(backend).await;
    log.shutdown().await;
    let shard: usize = read_checkpoint(ts.store.as_ref(), 0, first)
        .await
        .expect("read")
        .values()
        .map(UserState::approx_bytes)
        .sum();
    let budget = shard * 3 / 8;
    let parts = PartsPolicy {
        fold_bytes: budget,
        ..parts
    };
    let log = open(store.clone(), 1, cfg(parts)).await.expect("reopen");
    touch(&log, &users, 1).await;
    let part_gets = faulty.count_gets(keys::parts_prefix(0).as_ref());
    let s = log.stats();
    let passes = LogStats::get(&s.checkpoint_fold_passes);
    let second = checkpoint(&log).await;
    let part_gets = part_gets.load(std::sync::atomic::Ordering::Relaxed);
    let passes = LogStats::get(&s.checkpoint_fold_passes) - passes;
    let peak = LogStats::get(&s.checkpoint_fold_peak_bytes) as usize;
    assert!(passes >= 2, "{passes} passes");
    // The budget, plus the part read whole that crossed it and the states of one run of
    // segments (8 events) grown since: under three quarters of the shard, not all of it.
    assert!(
        peak < shard * 3 / 4,
        "the fold held {peak} bytes at its peak, of the shard's {shard} (budget {budget})"
    );
    // Each part read whole about once: a pass's first runs read a few users' pages before the
    // projection calls for their parts whole (17-18 GETs seen, against 13 in one pass); read by
    // pages user by user, the 256 users would take ~900.
    assert!(
        part_gets <= 6 * base.base.len() as u64,
        "the checkpoint after every user changed sent {part_gets} GETs to the previous \
         checkpoint's {} parts",
        base.base.len()
    );
    assert_is_the_fold(&ts.store, second, &users).await;
    log.shutdown().await;
    let (report, _) = verify_store(&ts.store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

/// A few busy users, met in the fold's first run and pushing all through it, do not make the
/// checkpoint read their parts whole: the count of users asked for is projected over the fold
/// at most 4 times. Projected by the fold's progress alone, 2 users of a part of 256 met in the
/// first 8 of 160 segments made 40, a whole read: with a thousand busy users, every part of the
/// shard was read and held until the checkpoint ended.
async fn a_few_busy_users_do_not_make_a_checkpoint_read_parts_whole(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let parts = PartsPolicy {
        part_users: 256,
        fold_run_events: 8,
        ..short_runs()
    };
    let log = open(store.clone(), 1, cfg(parts)).await.expect("open");
    let mut users: Vec<UserId> = (0..1024).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    let base = manifest(&ts.store, first).await;
    assert_eq!(base.base.len(), 4, "1,024 users in parts of 256");
    // Two busy users in each part, taking turns for 20 rounds: 160 segments, 8 users.
    users.sort_unstable();
    let busy: Vec<UserId> = (0..4)
        .flat_map(|p| [users[p * 256], users[p * 256 + 128]])
        .collect();
    for round in 1..=20 {
        touch(&log, &busy, round).await;
    }
    let whole_reads = faulty.count_whole_gets(keys::parts_prefix(0).as_ref());
    let second = checkpoint(&log).await;
    assert_eq!(
        whole_reads.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "parts read whole for 2 busy users of 256 each"
    );
    assert_is_the_fold(&ts.store, second, &users).await;
    log.shutdown().await;
}

/// Reads user `u` of checkpoint `ck` through `counted` (with `footers` when given), checks it
/// is the fold of the user's log, and returns the bytes the read fetched.
async fn counted_read_of_one(
    ck: &Checkpoint,
    counted: &Arc<dyn ObjectStore>,
    stats: &keepsake_store::StoreStats,
    store: &Arc<dyn ObjectStore>,
    u: UserId,
    footers: Option<&keepsake_log::reader::Footers>,
) -> u64 {
    let before = stats.bytes_read();
    let state = ck
        .user_with(counted.clone(), u, true, footers)
        .await
        .expect("read one user");
    let read = stats.bytes_read() - before;
    let (events, _) = read_user(store.clone(), 0, u, UpTo::End)
        .await
        .expect("the user's log");
    assert_eq!(state, UserState::replay(&events).expect("fold"));
    read
}

/// A store with `users` users, each of 20 items whose documents are `ids` ids as text
/// ([`puts_of_text`]), checkpointed (one shard); the users and the checkpoint's segment.
async fn users_of_text_checkpointed(
    backend: Backend,
    users: usize,
    ids: usize,
) -> (keepsake_tests::TestStore, Vec<UserId>, u64) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let log = open(ts.store.clone(), 1, cfg(short_runs()))
        .await
        .expect("open");
    let users: Vec<UserId> = (0..users).map(|_| user()).collect();
    for u in &users {
        push(&log, *u, puts_of_text(20, ids)).await.expect("push");
    }
    let n = checkpoint(&log).await;
    log.shutdown().await;
    (ts, users, n)
}

/// What a view keeps of a part once a load read it (its footer and page index, counted in
/// `keepsake_view_index_bytes`) grows with the part's users: 89 bytes a user of 20 items
/// while every column kept page-level min/max, 57 with them on `user_id` and `entry` alone.
/// The same on every store (the part's bytes are), so measured on one.
#[tokio::test]
async fn a_parts_footer_kept_by_a_view_costs_under_64_bytes_a_user() {
    let users_n = 1_500;
    let (ts, users, n) = users_of_text_checkpointed(Backend::Memory, users_n, 15).await;
    let ck = open_checkpoint(ts.store.as_ref(), 0, n)
        .await
        .expect("open");
    let footers = keepsake_log::reader::Footers::default();
    ck.user_with(ts.store.clone(), users[0], true, Some(&footers))
        .await
        .expect("read a user");
    let per_user = footers.bytes() / users_n;
    assert!(
        per_user < 64,
        "a part's footer kept by a view: {} bytes, {per_user} a user",
        footers.bytes()
    );
}

/// A cold load reads one user of a part: it fetches the pages of documents holding that user's
/// rows, not those of every user sharing its pages of ids (~2,048 rows: ~50 users here). Before
/// the row filter on user_id, each load fetched and decompressed ~50 users' documents.
async fn one_users_read_of_a_part_fetches_its_own_documents(backend: Backend) {
    // 20 items of ~3 KB of ids as text.
    let (ts, users, n) = users_of_text_checkpointed(backend, 150, 80).await;
    let (counted, stats) = counted_store(&ts);
    let ck = open_checkpoint(counted.as_ref(), 0, n).await.expect("open");
    let Checkpoint::Parts(m) = &ck else {
        panic!("checkpoint {n} is not a manifest");
    };
    let part_bytes = m.base.iter().map(|b| b.part.bytes).sum::<u64>();
    let u = users[users.len() / 2];
    let read = counted_read_of_one(&ck, &counted, &stats, &ts.store, u, None).await;
    // The user's ~60 KB of documents (a few pages), the pages of its ids and keys, the footer.
    let bound = 16 * keepsake_segment::DOCUMENT_PAGE_BYTES as u64;
    assert!(
        read <= bound,
        "one user's read fetched {read} bytes of a part of {part_bytes} (bound {bound})"
    );
}

/// Two checkpoints around a moment `t`: every user written before it, a few after it. Returns
/// the log, the users, those written after `t`, `t`, and the two checkpoints.
async fn around_a_moment(
    store: Arc<dyn ObjectStore>,
) -> (
    Log,
    Vec<UserId>,
    Vec<UserId>,
    chrono::DateTime<chrono::Utc>,
    [u64; 2],
) {
    let parts = PartsPolicy {
        part_users: 256,
        ..short_runs()
    };
    // Retention keeps both checkpoints (the read of a moment between them may start from
    // the first).
    let keep = LogConfig {
        retention: keepsake_log::retention::RetentionPolicy {
            keep_all_for: chrono::Duration::hours(1),
            ..keepsake_log::retention::RetentionPolicy::default()
        },
        ..cfg(parts)
    };
    let log = open(store, 1, keep).await.expect("open");
    let users: Vec<UserId> = (0..1024).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let later = users[..8].to_vec();
    for round in 1..=10 {
        touch(&log, &later, round).await;
    }
    let newest = checkpoint(&log).await;
    (log, users, later, t, [first, newest])
}

/// A read of the past of a user unchanged since the moment starts from the newest checkpoint,
/// however late it was written: every event of the user in it was recorded by the moment.
/// Before, only a checkpoint written before the moment served, and the read went through
/// every segment after it (at a million users, ~100 ms of history objects for an as-of read).
async fn a_read_of_the_past_starts_from_the_newest_checkpoint_for_users_unchanged_since(
    backend: Backend,
) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let (log, users, later, t, _) = around_a_moment(faulty.clone()).await;
    let unchanged = users[users.len() - 1];
    let live = log.user(&unchanged, UserState::clone).await.expect("live");
    let segment_gets = faulty.count_gets(keys::segments_prefix(0).as_ref());
    let read = log.items_at(&unchanged, UpTo::Time(t)).await.expect("read");
    assert_eq!(
        segment_gets.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the read of a user unchanged since the moment read segments"
    );
    assert_eq!(read.items().count(), live.items().count());
    assert_eq!(read.last_seq(), live.last_seq());
    // A user changed since reads from the older checkpoint: its state then, not now.
    let changed = later[0];
    let then = log.user_at(&changed, UpTo::Time(t)).await.expect("read");
    assert_eq!(then.last_seq(), 1, "one push before the moment");
    let (events, _) = read_user(ts.store.clone(), 0, changed, UpTo::Time(t))
        .await
        .expect("the user's log");
    assert_eq!(then, UserState::replay(&events).expect("fold"));
    log.shutdown().await;
}

/// A fleet restore's fold of a shard reads the users it restores from the checkpoints, not
/// every user of the shard: it read and held a shard's whole state (at a million users, the
/// gigabytes of resident memory `make scale` measured), and now reads a part whole only when
/// a sixteenth of its users are wanted, one part at a time. Each user's state is its own read's.
async fn a_fleet_fold_reads_its_users_of_a_checkpoint_not_every_user(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let (log, users, later, t, checkpoints) = around_a_moment(faulty.clone()).await;
    let wanted: std::collections::HashSet<UserId> = [
        users[users.len() - 1],
        users[users.len() / 2],
        later[0],
        later[1],
    ]
    .into_iter()
    .collect();
    // The base parts of 256 users each of both checkpoints (the 8 users changed after `t` are
    // in a delta part of their own, small enough to read whole for 2 of them).
    let mut whole = Vec::new();
    for c in checkpoints {
        let base = manifest(&ts.store, c).await;
        assert_eq!(base.base.len(), 4, "1,024 users in parts of 256");
        for b in &base.base {
            let path = keys::part(0, b.part.written_by, b.part.digest);
            whole.push(faulty.count_whole_gets(path.as_ref()));
        }
    }
    let states = log.users_at(0, &wanted, t).await.expect("users at");
    let whole: u64 = whole
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(
        whole, 0,
        "base parts of 256 read whole for 4 users of 1,024"
    );
    assert_eq!(states.len(), wanted.len());
    for u in &wanted {
        let one = log.user_at(u, UpTo::Time(t)).await.expect("user at");
        assert_eq!(states.get(u), Some(&one), "user {u}");
    }
    log.shutdown().await;
}

/// A log over a faulty store, whose 1,024 users are in base parts of 256 (`parts`), checkpointed;
/// the users sorted (parts hold ranges of ids).
struct FourParts {
    ts: keepsake_tests::TestStore,
    faulty: Arc<FaultyStore>,
    log: Log,
    parts: PartsPolicy,
    users: Vec<UserId>,
    m: Arc<Manifest>,
}

async fn four_base_parts(backend: Backend) -> FourParts {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let faulty = FaultyStore::new(ts.store.clone());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let parts = PartsPolicy {
        part_users: 256,
        ..short_runs()
    };
    let log = open(store, 1, cfg(parts)).await.expect("open");
    let mut users: Vec<UserId> = (0..1024).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    let m = manifest(&ts.store, first).await;
    assert_eq!(m.base.len(), 4, "1,024 users in parts of 256");
    users.sort_unstable();
    FourParts {
        ts,
        faulty,
        log,
        parts,
        users,
        m,
    }
}

/// A checkpoint reads the prior states of changed users in different parts at once, not one
/// part after another: with its first read of part 0 held, its read of part 2 still comes (and
/// the other way round; the HEADs that check the parts are there come first, also at once). At a
/// million users a checkpoint meets a few changed users in each of ~61 parts a shard, and read
/// one after another (a footer and a few pages each) its time grew with the parts (`make
/// scale`: 0.36 s at 100,000 users, 0.93 s at 1,000,000 for the same new work).
async fn a_checkpoint_reads_the_parts_of_its_changed_users_at_once(backend: Backend) {
    let FourParts {
        ts,
        faulty,
        log,
        users,
        m,
        ..
    } = four_base_parts(backend).await;
    touch(&log, &[users[10], users[600]], 1).await;
    let path = |i: usize| keys::part(0, m.base[i].part.written_by, m.base[i].part.digest);
    assert_eq!(
        m.locate(&users[10]).map(|p| p.digest),
        Some(m.base[0].part.digest)
    );
    assert_eq!(
        m.locate(&users[600]).map(|p| p.digest),
        Some(m.base[2].part.digest)
    );
    let first = faulty.hold_read(path(0).as_ref());
    let other = faulty.hold_read(path(2).as_ref());
    let log = Arc::new(log);
    let writing = tokio::spawn({
        let log = log.clone();
        async move { checkpoint(&log).await }
    });
    let wait = std::time::Duration::from_secs(20);
    // Either part may be read first: both GETs must be waiting together.
    let both = tokio::time::timeout(wait, async {
        futures::join!(first.reached(), other.reached());
    })
    .await;
    first.release();
    other.release();
    assert!(
        both.is_ok(),
        "the checkpoint read one part at a time: the GET of one part waited for the other's"
    );
    let second = writing.await.expect("checkpoint task");
    assert_is_the_fold(&ts.store, second, &users).await;
    log.shutdown().await;
}

/// Parts are immutable: a footer read once by a checkpoint (or by a load of the view: the same
/// cache) serves the shard's later checkpoints. Two checkpoints each read one changed user of
/// base part 1: the second reads only that user's pages (before, every checkpoint read the
/// footer and page index of every part it read from again).
async fn a_second_checkpoint_reads_no_footer_the_first_read(backend: Backend) {
    let FourParts {
        ts,
        faulty,
        log,
        users,
        m,
        ..
    } = four_base_parts(backend).await;
    let part = keys::part(0, m.base[1].part.written_by, m.base[1].part.digest);
    let mut gets = Vec::new();
    for u in [users[300], users[400]] {
        assert_eq!(m.locate(&u).map(|p| p.digest), Some(m.base[1].part.digest));
        touch(&log, &[u], 1).await;
        let count = faulty.count_gets(part.as_ref());
        let c = checkpoint(&log).await;
        gets.push(count.load(std::sync::atomic::Ordering::Relaxed));
        assert_is_the_fold(&ts.store, c, &users).await;
    }
    assert!(gets[0] > 0, "the first checkpoint read part 1");
    assert!(
        gets[1] < gets[0],
        "GETs of part 1 by the second checkpoint ({}) not fewer than by the first ({}): its \
         footer was read again",
        gets[1],
        gets[0]
    );
    log.shutdown().await;
}

/// A view keeps the footers of the parts its loads read within `footer_memory_bytes`: past
/// it, the least recently used go, and a load of one of their users reads its footer again and
/// gets the same state. Unbounded, the footers kept grew with the store's users (~57 bytes a
/// user: ~570 MB at ten million).
async fn a_views_part_footers_stay_within_their_bound(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let parts = PartsPolicy {
        part_users: 256,
        ..short_runs()
    };
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("open");
    let mut users: Vec<UserId> = (0..1024).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let n = checkpoint(&log).await;
    log.shutdown().await;
    users.sort_unstable();
    let m = manifest(&ts.store, n).await;
    assert_eq!(m.base.len(), 4, "1,024 users in parts of 256");
    // One part's footer, as a view keeps it: room for one and a half.
    let one = {
        let ck = open_checkpoint(ts.store.as_ref(), 0, n)
            .await
            .expect("open");
        let f = keepsake_log::Footers::default();
        ck.user_with(ts.store.clone(), users[0], true, Some(&f))
            .await
            .expect("read a user");
        f.bytes()
    };
    assert!(one > 0);
    let bound = one + one / 2;
    let bounded = LogConfig {
        footer_memory_bytes: bound,
        ..cfg(parts)
    };
    // Started again, every user is loaded from the checkpoint: parts 0, 1, 2, 3, then 0 again.
    let faulty = FaultyStore::new(ts.store.clone());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let log = open(store, 1, bounded).await.expect("open");
    let part0 = keys::part(0, m.base[0].part.written_by, m.base[0].part.digest);
    let mut part0_gets = Vec::new();
    for i in [0, 300, 600, 900, 10, 11] {
        let gets = faulty.count_gets(part0.as_ref());
        let u = users[i];
        let loaded = log.user(&u, UserState::clone).await.expect("load");
        let (events, _) = read_user(ts.store.clone(), 0, u, UpTo::End)
            .await
            .expect("read the user");
        assert_eq!(
            loaded,
            UserState::replay(&events).expect("fold"),
            "user {i}"
        );
        let kept = log.part_footers();
        assert!(
            kept.bytes <= bound,
            "after user {i}: {} bytes of footers kept, bound {bound}",
            kept.bytes
        );
        assert!(kept.kept >= 1, "the footer just read is kept");
        if i < 300 {
            part0_gets.push(gets.load(Relaxed));
        }
    }
    let kept = log.part_footers();
    assert!(
        kept.evictions >= 4,
        "each load past the first let a footer go: {kept:?}"
    );
    // Part 0's footer was let go and read again.
    assert!(kept.misses >= 5, "{kept:?}");
    // What a miss costs: user 10's load read part 0's footer again, user 11's (the footer
    // kept) only its pages. One GET: the footer and its page index come in one ranged read
    // (`FOOTER_PREFETCH`), the object's size from the manifest.
    let [first, missed, kept_then] = part0_gets[..] else {
        panic!("three loads of part 0's users: {part0_gets:?}")
    };
    assert_eq!(
        first, missed,
        "a first read and a read after a miss: {part0_gets:?}"
    );
    assert_eq!(
        missed,
        kept_then + 1,
        "a load whose part's footer was let go costs one GET more: {part0_gets:?}"
    );
    let (_, index_bytes) = log.index_footprint();
    assert!(index_bytes >= kept.bytes);
    log.shutdown().await;
}

/// The footers a checkpoint leaves in the view's cache are trimmed to the parts its manifest
/// names: here a base merge rewrites the part the changed user was read from, and its footer
/// goes. Without the trim, a server whose users stay resident (no load opens a newer manifest)
/// kept the footer of every part its checkpoints had ever read from.
async fn a_checkpoint_keeps_no_footer_of_a_part_its_manifest_no_longer_names(backend: Backend) {
    let FourParts {
        ts,
        log,
        parts,
        users,
        m,
        ..
    } = four_base_parts(backend).await;
    let footers = Arc::new(keepsake_log::Footers::default());
    // One changed user, read by its pages (its part's footer cached), then folded into the
    // base at once: its base part is rewritten under a new digest.
    let merge_now = PartsPolicy {
        merge_ratio: u64::MAX,
        merge_min_users: 0,
        ..parts
    };
    touch(&log, &users[10..11], 1).await;
    let head = log.head(0);
    let report = keepsake_log::write_checkpoint_sharing(
        &ts.store,
        0,
        Some(m.segment),
        head,
        4,
        &merge_now,
        keepsake_log::checkpoint::Sharing {
            footers: Some(footers.clone()),
            budget: None,
        },
    )
    .await
    .expect("checkpoint");
    assert_eq!(report.merged, Some("base"));
    let next = manifest(&ts.store, head).await;
    assert!(
        !next.base.iter().any(|b| b.part == m.base[0].part),
        "the part read from was rewritten"
    );
    assert_eq!(
        footers.bytes(),
        0,
        "footers kept of parts the new manifest does not name"
    );
    assert_is_the_fold(&ts.store, head, &users).await;
    log.shutdown().await;
}

/// A fold publishes the parts it reads whole as it reads each (`keepsake_upkeep_held_bytes`),
/// so that the views give way to them at once: its first run of segments may read parts whole
/// up to its budget before it folds anything. Published only once the run was folded, they
/// were 300-500 MiB that no holder counted at the start of every checkpoint under `make
/// sustained` (run 72: the process's new peaks came there, with upkeep at 0). Here a round
/// changes every eighth user of four parts of 256 (enough for each part to be read whole):
/// when the fold's read of part 1 is held, part 0's states, read whole before it, must be
/// counted.
async fn a_folds_parts_read_whole_are_published_as_each_is_read(backend: Backend) {
    let FourParts {
        ts,
        faulty,
        log,
        parts,
        users,
        m,
    } = four_base_parts(backend).await;
    let changed: Vec<UserId> = users.iter().step_by(8).copied().collect();
    touch(&log, &changed, 1).await;
    let head = log.head(0);
    let upkeep = keepsake_log::budget::UpkeepMemory::default();
    let part = |i: usize| keys::part(0, m.base[i].part.written_by, m.base[i].part.digest);
    let second = faulty.hold_read(part(1).as_ref());
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let writing = tokio::spawn({
        let (store, memory) = (store.clone(), upkeep.clone());
        async move {
            keepsake_log::write_checkpoint_sharing(
                &store,
                0,
                Some(m.segment),
                head,
                4,
                &parts,
                keepsake_log::checkpoint::Sharing {
                    footers: None,
                    budget: Some(keepsake_log::budget::ViewBudget::new(usize::MAX, 1, memory)),
                },
            )
            .await
        }
    });
    let reached = tokio::time::timeout(std::time::Duration::from_secs(20), second.reached()).await;
    let held = upkeep.bytes();
    second.release();
    assert!(reached.is_ok(), "the fold never read part 1");
    let report = writing.await.expect("checkpoint task").expect("checkpoint");
    assert_eq!(report.changed_users, 128, "{report:?}");
    // 256 users of a put each: a few hundred bytes of state apiece.
    assert!(
        held >= 256 * 100,
        "the fold held part 0's states read whole while it read part 1, and published {held} bytes"
    );
    assert_eq!(
        upkeep.bytes(),
        0,
        "nothing held once the checkpoint is written"
    );
    // The checkpoint holds every user, and each changed one as the fold of its log (the
    // unchanged ones' parts are kept as they were).
    let saved = read_checkpoint(ts.store.as_ref(), 0, head)
        .await
        .expect("read");
    assert_eq!(saved.len(), users.len());
    for u in &changed {
        let (events, _) = read_user(ts.store.clone(), 0, *u, UpTo::End)
            .await
            .expect("the user's log");
        assert_eq!(
            saved.get(u),
            Some(&UserState::replay(&events).expect("fold"))
        );
    }
    log.shutdown().await;
}

/// With the views at their floors and the process still over its resident limit, a
/// checkpoint's fold gives way too: it keeps fewer users than its budget allows, down to a
/// quarter of it, and folds the others in later passes; the checkpoint is still the fold of
/// the log, and the fold holds nothing once written. With the views able to give way, the same
/// kind of checkpoint folds in one pass.
async fn a_fold_gives_way_past_the_views_floors(backend: Backend) {
    use keepsake_log::budget::{ResidentExcess, UpkeepMemory, ViewBudget};
    let ts = keepsake_tests::store(backend).await.expect("store");
    let parts = PartsPolicy {
        part_users: 32,
        merge_min_users: 128,
        ..short_runs()
    };
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("open");
    let users: Vec<UserId> = (0..128).map(|_| user()).collect();
    // Each round's pushes at once: a few segments, not one a user, for each pass to read.
    let round = |r: u64| {
        let log = &log;
        futures::future::join_all(
            users
                .iter()
                .map(move |u| push(log, *u, vec![put(item(), json!({ "round": r }))])),
        )
    };
    for pushed in round(0).await {
        pushed.expect("push");
    }
    let m = manifest(&ts.store, checkpoint(&log).await).await;
    assert_eq!(m.base.len(), 4, "128 users in parts of 32");
    let upkeep = UpkeepMemory::default();
    let excess = ResidentExcess::default();
    let budget = ViewBudget::new(1 << 30, 1, upkeep.clone()).giving_way_to(excess.clone());
    let write = |prev: u64, n: u64, policy: PartsPolicy| {
        let (store, budget) = (ts.store.clone(), budget.clone());
        async move {
            keepsake_log::write_checkpoint_sharing(
                &store,
                0,
                Some(prev),
                n,
                4,
                &policy,
                keepsake_log::checkpoint::Sharing {
                    footers: None,
                    budget: Some(budget),
                },
            )
            .await
            .expect("checkpoint")
        }
    };
    // Every user changed: a delta of all of them, in one pass.
    for pushed in round(1).await {
        pushed.expect("push");
    }
    let first = log.head(0);
    let calm = write(m.segment, first, parts).await;
    assert_eq!(
        (calm.changed_users, calm.fold_passes, calm.fold_gave_way),
        (128, 1, 0),
        "{calm:?}"
    );
    // A budget twice what that fold held: the next round's states fit it whole, not its quarter.
    let policy = PartsPolicy {
        fold_bytes: usize::try_from(calm.fold_peak_bytes).expect("fits") * 2,
        ..parts
    };
    for pushed in round(2).await {
        pushed.expect("push");
    }
    let second = log.head(0);
    excess.set(2 << 30);
    assert!(budget.past_the_floors() > 0);
    let pressed = write(first, second, policy).await;
    // The delta and every user again: a merge into the base, cut at its parts' starts.
    assert_eq!(
        (pressed.changed_users, pressed.merged),
        (128, Some("base")),
        "{pressed:?}"
    );
    assert!(
        pressed.fold_gave_way >= 1 && pressed.fold_passes > 1,
        "the fold gave way past the views' floors: {pressed:?}"
    );
    assert_eq!(
        upkeep.bytes(),
        0,
        "nothing held once the checkpoint is written"
    );
    assert_is_the_fold(&ts.store, second, &users).await;
    log.shutdown().await;
}

/// A merge into a base of one part, past the fold budget: with no part's start to cut at, the
/// passes cut at users inside the part, and each pass rewrites the part's users of its own
/// range. Before, only the pass holding the part's start merged it: the changed users above its
/// cut were left out of the new base, and so were the unchanged ones when the part was read
/// whole.
async fn a_base_merge_past_the_fold_budget_over_one_base_part_keeps_every_user(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let parts = PartsPolicy {
        merge_min_users: 2,
        fold_bytes: 1,
        ..short_runs()
    };
    let log = open(ts.store.clone(), 1, cfg(parts)).await.expect("open");
    let mut users: Vec<UserId> = (0..8).map(|_| user()).collect();
    touch(&log, &users, 0).await;
    let first = checkpoint(&log).await;
    assert_eq!(manifest(&ts.store, first).await.base.len(), 1, "one part");
    assert_is_the_fold(&ts.store, first, &users).await;
    // Half the users changed, and as many new ones: more than the base's eighth.
    let mut changed: Vec<UserId> = users.iter().step_by(2).copied().collect();
    let new: Vec<UserId> = (0..4).map(|_| user()).collect();
    changed.extend(&new);
    users.extend(&new);
    touch(&log, &changed, 1).await;
    let passes = LogStats::get(&log.stats().checkpoint_fold_passes);
    let second = checkpoint(&log).await;
    let m = manifest(&ts.store, second).await;
    assert!(m.deltas.is_empty(), "merged into the base: {m:?}");
    assert!(
        LogStats::get(&log.stats().checkpoint_fold_passes) - passes > 1,
        "folded a range of users at a time"
    );
    assert_is_the_fold(&ts.store, second, &users).await;
    // And the next, from it.
    touch(&log, &users[..3], 2).await;
    let third = checkpoint(&log).await;
    assert_is_the_fold(&ts.store, third, &users).await;
    log.shutdown().await;
}

/// A cold load of one small user (20 items of ~500 bytes, as under `make sustained`) from a
/// part of many such users fetches about its own rows: not a page of 2,048 rows of every
/// column (~90 users' ids and keys) and the dictionaries of `user_id` and `changed_at`.
async fn a_cold_load_of_a_small_user_fetches_about_its_own_rows(backend: Backend) {
    // ~500 bytes of ids as text, as the load generator's documents.
    let (ts, users, n) = users_of_text_checkpointed(backend, 1_500, 15).await;
    let (counted, stats) = counted_store(&ts);
    let ck = open_checkpoint(counted.as_ref(), 0, n).await.expect("open");
    let footers = keepsake_log::reader::Footers::default();
    // The footer read once (a view keeps it), as every load after the first.
    ck.user_with(counted.clone(), users[0], true, Some(&footers))
        .await
        .expect("read the first user");
    let mut most = 0;
    for u in [users[300], users[750], users[1_200]] {
        let read = counted_read_of_one(&ck, &counted, &stats, &ts.store, u, Some(&footers)).await;
        most = most.max(read);
    }
    // ~6 KB of its own rows, in a page or two of each column, and what lies between pages
    // fetched together: ~90 KB. With a segment's pages (2,048 rows) and dictionaries, ~200 KB.
    let bound = 4 * keepsake_segment::DOCUMENT_PAGE_BYTES as u64;
    assert!(
        most <= bound,
        "one small user's cold load fetched {most} bytes (bound {bound})"
    );
}
