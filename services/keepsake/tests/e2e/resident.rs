//! The process's resident memory held within the view budget plus `--memory-overhead-mb`,
//! seen from outside: past it, the server says by how much (`keepsake_resident_excess_bytes`)
//! and its views' budget gives way by as much, to their floor of a quarter.

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overhead_past_the_range_is_refused() {
    let env = Env::new(Backend::File).await;
    let (status, err) = serve_expecting_exit(&env, &[("KEEPSAKE_MEMORY_OVERHEAD_MB", "-1")]);
    assert!(!status.success(), "{err}");
    assert!(err.contains("--memory-overhead-mb"), "{err}");
}
