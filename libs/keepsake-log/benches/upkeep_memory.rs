//! How much memory does upkeep take beyond the view? (issue 15, item 3.) Under `make sustained`
//! the server held 0.35-0.97 GiB of live allocations beyond its view and indexes while
//! checkpoints and compaction ran (run 30). This bench measures each kind of upkeep alone, on one
//! shard of a file store, with the server's allocator (jemalloc) read every millisecond: the highest
//! count of bytes allocated while the step runs, less the count before it, is what the step held at
//! its peak.
//!
//! Steps, each through the library's own functions with no view: the first checkpoint of
//! `KEEPSAKE_BENCH_USERS` (25,000: a shard of `make sustained`'s 100,000 users) ×
//! `KEEPSAKE_BENCH_ITEMS` (20) items of 300-700 bytes (every user folded and written as base
//! parts) and the compaction of its segments; then every user `KEEPSAKE_BENCH_PATCHES` (10)
//! patches, the checkpoint after them (every user's state read, folded and written, as under
//! sustained pushes) and their compaction. `KEEPSAKE_BENCH_FOLD_MIB` (the default, 512) is the checkpoints'
//! fold budget (`PartsPolicy::fold_bytes`); before each checkpoint's row a `(fold)` row gives
//! what its fold counted at its peak and its passes. `KEEPSAKE_BENCH_DIR` keeps the store
//! somewhere (a temporary directory by default).
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fill::{env, file_store, fill, open_log, runtime, work};
use keepsake_log::{
    CompactionPolicy, Log, LogConfig, PartsPolicy, compact_shard, write_checkpoint_with,
};
use object_store::ObjectStore;

mod fill;

// The server's allocator; its statistics are read by a thread every millisecond while a step
// runs (the highest read is the step's peak, within what one millisecond allocates).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes the program holds allocated, as of the call.
fn allocated() -> usize {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().expect("jemalloc epoch");
    stats::allocated::read().expect("jemalloc statistics")
}

/// Reads [`allocated`] every millisecond until `stop` is set; gives the highest read.
fn sample_peak(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut peak = allocated();
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(allocated());
            std::thread::sleep(Duration::from_millis(1));
        }
        peak.max(allocated())
    })
}

const MIB: f64 = 1024.0 * 1024.0;

async fn open(store: Arc<dyn object_store::ObjectStore>) -> Arc<Log> {
    let cfg = LogConfig {
        checkpoint_every_events: u64::MAX,
        checkpoint_interval: Duration::from_secs(1 << 30),
        view_memory_bytes: 16 << 20,
        ..LogConfig::default()
    };
    open_log(store, 1, cfg).await
}

/// Runs `step` and prints how long it took, what it held at its peak and what it wrote.
async fn measure<F, Fut>(name: &str, step: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (u64, u64)>,
{
    let before = allocated();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak(stop.clone());
    let t = Instant::now();
    let (units, bytes) = step().await;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler").saturating_sub(before);
    println!(
        "{name:>18} {secs:>7.2} {:>13.0} {units:>18} {:>11.1}",
        peak as f64 / MIB,
        bytes as f64 / 1e6,
    );
}

/// Writes the checkpoint after `head` from `prev` (the log's upkeep would, without the view).
async fn checkpoint(store: &Arc<dyn ObjectStore>, prev: Option<u64>, head: u64) -> (u64, u64) {
    let r = write_checkpoint_with(
        store,
        0,
        prev,
        head,
        LogConfig::default().read_concurrency,
        &PartsPolicy {
            fold_bytes: match env("KEEPSAKE_BENCH_FOLD_MIB", 0) {
                0 => PartsPolicy::default().fold_bytes,
                mib => mib as usize * (1 << 20),
            },
            ..PartsPolicy::default()
        },
    )
    .await
    .expect("checkpoint");
    println!(
        "{:>18} {:>7} {:>13.0} {:>18}",
        "(fold)",
        "",
        r.fold_peak_bytes as f64 / MIB,
        format!("{} passes", r.fold_passes),
    );
    (r.changed_users, r.bytes_written)
}

/// Moves the segments up to `upto` into history objects, as the upkeep would after a checkpoint.
async fn compact(store: &Arc<dyn ObjectStore>, upto: u64) -> (u64, u64) {
    let policy = CompactionPolicy {
        min_segments: 1,
        ..CompactionPolicy::default()
    };
    let r = compact_shard(store, 0, upto, None, &policy)
        .await
        .expect("compaction");
    (r.segments, r.bytes_written)
}

fn main() {
    let users = env("KEEPSAKE_BENCH_USERS", 25_000);
    let items = env("KEEPSAKE_BENCH_ITEMS", 20);
    let patches = env("KEEPSAKE_BENCH_PATCHES", 10);
    runtime().block_on(async move {
        let (store, _tmp) = file_store();
        println!(
            "upkeep memory: file store, 1 shard, {users} users x {items} items of 300-700 bytes, then {patches} patches each"
        );
        println!(
            "{:>18} {:>7} {:>13} {:>18} {:>11}",
            "step", "secs", "peak MiB held", "users / segments", "MB written"
        );
        let log = open(store.clone()).await;
        fill(&log, 0, users, items, 0).await;
        let filled = log.head(0);
        log.shutdown().await;
        measure("fill checkpoint", || checkpoint(&store, None, filled)).await;
        measure("fill compaction", || compact(&store, filled)).await;
        let log = open(store.clone()).await;
        work(&log, users, users, patches, items, 1).await;
        let head = log.head(0);
        log.shutdown().await;
        measure("changed checkpoint", || checkpoint(&store, Some(filled), head)).await;
        measure("changed compaction", || compact(&store, head)).await;
    });
}
