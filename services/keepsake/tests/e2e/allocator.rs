//! The allocator's arenas and thread caches, seen from outside: the server's threads share the
//! arenas it was told to (`--allocator-arenas`, default 1), the upkeep's included, and cache only
//! allocations up to the size it was told to (`--allocator-thread-cache-max-bytes`); a count it
//! cannot have is refused at start, naming the flag.

use keepsake_tests::Backend;
use reqwest::Method;
use serde_json::json;

use crate::harness::*;

/// Pushes, then a checkpoint and a compaction (the upkeep's threads and blocking threads at
/// work), then how many arenas have threads bound to them.
async fn arenas_in_use_after_work(arenas: &str) -> u64 {
    let (_env, s) = server_after_work(&[("KEEPSAKE_ALLOCATOR_ARENAS", arenas)]).await;
    s.metric("keepsake_allocator_arenas_in_use").await
}

/// A server started with `settings`, after pushes, a checkpoint and a compaction.
async fn server_after_work(settings: &[(&str, &str)]) -> (Env, Server) {
    let env = Env::new(Backend::File).await;
    let s = Server::start(&env, settings).await;
    for u in 0..4 {
        let phone = s.register(&uuid(), "phone").await;
        for i in 0..3 {
            s.push(
                &phone,
                json!([put(&uuid(), "note", json!({"u": u, "i": i}))]),
            )
            .await;
        }
    }
    let (status, compacted) = s
        .call(Method::POST, "/admin/v1/compact", Some(ADMIN), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{compacted}");
    assert!(
        compacted["segments_compacted"].as_u64() > Some(0),
        "the upkeep's threads did work: {compacted}"
    );
    (env, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_threads_share_one_arena() {
    assert_eq!(
        arenas_in_use_after_work("1").await,
        1,
        "every thread of the server, the upkeep's too, in one arena"
    );
    // jemalloc's own spread, for contrast: the same work puts threads in several arenas, so the
    // figure above is the binding's doing.
    assert!(arenas_in_use_after_work("0").await > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arena_count_jemalloc_does_not_have_is_refused() {
    let env = Env::new(Backend::File).await;
    let (status, err) = serve_expecting_exit(&env, &[("KEEPSAKE_ALLOCATOR_ARENAS", "1000")]);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("--allocator-arenas: 1000 arenas asked for, jemalloc has"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_threads_cache_only_allocations_up_to_the_size_set() {
    // Caching only 8-byte allocations, a thread's cache holds at most jemalloc's 200 slots of
    // 8 bytes: a few dozen threads hold well under 256 KiB, whatever they did.
    let (_env, small) =
        server_after_work(&[("KEEPSAKE_ALLOCATOR_THREAD_CACHE_MAX_BYTES", "8")]).await;
    let cached_small = small.metric("keepsake_allocator_thread_cached_bytes").await;
    assert!(cached_small < 256 << 10, "{cached_small} bytes cached");
    // Caching up to 8 MiB, the same work leaves more than that in the caches: the figure above
    // is the setting's doing, in every thread that did the work.
    let (_env, large) =
        server_after_work(&[("KEEPSAKE_ALLOCATOR_THREAD_CACHE_MAX_BYTES", "8388608")]).await;
    let cached_large = large.metric("keepsake_allocator_thread_cached_bytes").await;
    assert!(
        cached_large > 256 << 10,
        "{cached_large} bytes cached with 8 MiB allowed, {cached_small} with 8 bytes"
    );
}
