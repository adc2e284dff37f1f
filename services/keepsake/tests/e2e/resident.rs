//! The process's resident memory held within the view budget plus `--memory-overhead-mb`,
//! seen from outside: past it, the server says by how much (`keepsake_resident_excess_bytes`)
//! and its views' budget gives way, by at least as much while it stays over
//! (`keepsake_resident_give_way_bytes`), to their floor of a quarter.

use std::time::Duration;

use keepsake_tests::Backend;

use crate::harness::*;

const VIEWS: u64 = 4 << 20;

/// The metrics once `done` holds for them (the server reads its memory every 100 ms).
async fn metrics_once(s: &Server, done: impl Fn(u64, u64) -> bool) -> (u64, u64, u64) {
    for _ in 0..100 {
        let excess = s.metric("keepsake_resident_excess_bytes").await;
        let budget = s.metric("keepsake_view_budget_bytes").await;
        if done(excess, budget) {
            return (excess, budget, s.metric("keepsake_resident_bytes").await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the resident excess and the views' budget never got there")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_resident_limit_the_views_give_way() {
    let env = Env::new(Backend::File).await;
    // 4 MiB of views and no overhead allowed: the process's code, stacks and buffers alone are
    // more than that.
    let views = VIEWS.to_string();
    let over = Server::start(
        &env,
        &[
            ("KEEPSAKE_VIEW_MEMORY_BYTES", views.as_str()),
            ("KEEPSAKE_MEMORY_OVERHEAD_MB", "0"),
        ],
    )
    .await;
    let (excess, budget, resident) = metrics_once(&over, |e, _| e > 0).await;
    assert!(
        resident > VIEWS && excess > resident / 2,
        "resident {resident}, excess {excess}"
    );
    assert_eq!(budget, VIEWS / 4, "the views down to their floor");
    let give_way = over.metric("keepsake_resident_give_way_bytes").await;
    assert!(give_way > resident / 2, "gave way by {give_way}");
    // The peak (the kernel's, which sees between readings) is told with what held memory.
    let peak = over.metric("keepsake_resident_peak_bytes").await;
    assert!(peak >= resident, "peak {peak}, resident {resident}");
    let told = over
        .until_logged(&[
            "resident memory reached a new peak over its limit",
            "views_mib",
            "upkeep_mib",
        ])
        .await;
    assert!(told.contains("allocator_resident_mib"), "{told}");
    drop(over);

    // The same views with the default overhead: within the limit, the views keep their budget
    // (less the indexes beside them, nothing yet on a new store).
    let env = Env::new(Backend::File).await;
    let within = Server::start(&env, &[("KEEPSAKE_VIEW_MEMORY_BYTES", views.as_str())]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (excess, budget, resident) = metrics_once(&within, |_, _| true).await;
    assert_eq!(excess, 0, "resident {resident}");
    assert!(budget > VIEWS / 2, "{budget}");
    assert_eq!(within.metric("keepsake_resident_give_way_bytes").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overhead_past_the_range_is_refused() {
    let env = Env::new(Backend::File).await;
    let (status, err) = serve_expecting_exit(&env, &[("KEEPSAKE_MEMORY_OVERHEAD_MB", "-1")]);
    assert!(!status.success(), "{err}");
    assert!(err.contains("--memory-overhead-mb"), "{err}");
}

/// After a restart each user is loaded from its checkpoint part, whose footer the server keeps
/// for the next load of that part, within `--footer-memory-mb` and counted on `/metrics`.
/// With a bound below one part's footer none is kept, every load reads its part's footer, and
/// every pull is still answered in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_footers_are_kept_within_their_bound() {
    let env = Env::new(Backend::File).await;
    let s = Server::start(&env, &[]).await;
    let mut phones = Vec::new();
    for u in 0..6 {
        let phone = s.register(&uuid(), "phone").await;
        for i in 0..3 {
            s.push(
                &phone,
                serde_json::json!([put(&uuid(), "note", serde_json::json!({"u": u, "i": i}))]),
            )
            .await;
        }
        phones.push(phone);
    }
    let (status, compacted) = s
        .call(
            reqwest::Method::POST,
            "/admin/v1/compact",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{compacted}");
    assert!(s.stop().success());
    // Each of the two shards has one part: with room for it, the loads after the first of a
    // shard find its footer kept.
    for (bound, kept) in [(None, true), (Some("1"), false)] {
        let settings: Vec<(&str, &str)> = bound
            .map(|b| ("KEEPSAKE_FOOTER_MEMORY_BYTES", b))
            .into_iter()
            .collect();
        let s = Server::start(&env, &settings).await;
        for phone in &phones {
            let page = s.pull(phone, "?limit=1000").await;
            let items = page["changes"].as_array().map_or(0, Vec::len);
            assert_eq!(items, 3, "every item of the user: {page}");
        }
        let footers = s.metric("keepsake_part_footers").await;
        let bytes = s.metric("keepsake_part_footer_bytes").await;
        let hits = s.metric("keepsake_part_footer_hits_total").await;
        let misses = s.metric("keepsake_part_footer_misses_total").await;
        if kept {
            assert!(
                footers >= 1 && bytes > 0,
                "{footers} footers, {bytes} bytes"
            );
            assert!(hits >= 4, "6 users over 2 parts: {hits} hits");
            assert!(s.metric("keepsake_view_index_bytes").await >= bytes);
        } else {
            assert_eq!((footers, bytes, hits), (0, 0, 0));
            assert!(misses >= 6, "every load read its part's footer: {misses}");
            assert!(s.metric("keepsake_part_footer_evictions_total").await == 0);
        }
        assert!(s.stop().success());
    }
}
