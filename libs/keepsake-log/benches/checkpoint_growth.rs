//! Does a checkpoint cost the new work or the whole shard? (issue 15, item 1.) Fills a file
//! store in steps (default 10%, 50% and 100% of 100,000 users × 20 items of 300-700 bytes), and
//! after each step does the same new work — 1,000 users × 20 patches — and times the checkpoint
//! that follows, with the bytes and parts it wrote. Each step is measured twice in one run:
//! `parts` (the default policy: the changed users as a delta) and `whole` (a policy that merges
//! into the base at every checkpoint, rewriting every base part a changed user falls in: about
//! what one object per checkpoint cost before format 4).
//!
//! `KEEPSAKE_BENCH_USERS` (100000), `KEEPSAKE_BENCH_ITEMS` (20), `KEEPSAKE_BENCH_STEPS`
//! (`10,50,100`, percent), `KEEPSAKE_BENCH_WORK_USERS` (1000), `KEEPSAKE_BENCH_PATCHES` (20),
//! `KEEPSAKE_BENCH_SHARDS` (4), `KEEPSAKE_BENCH_DIR` (a temporary directory),
//! `KEEPSAKE_BENCH_HISTORY` (0): small patches each filled user gets after its items, in
//! pushes of 100, so that users have long histories (many change ids) over few items.
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fill::{env, file_store, fill, open_log, runtime, work};
use keepsake_log::{Log, LogConfig, LogStats, PartsPolicy};

mod fill;

struct Took {
    secs: f64,
    bytes: u64,
    parts: u64,
    users: u64,
}

async fn timed_checkpoint(log: &Log) -> Took {
    let s = log.stats();
    let (b, p, u, m) = (
        LogStats::get(&s.checkpoint_bytes_written),
        LogStats::get(&s.checkpoint_parts_written),
        LogStats::get(&s.checkpoint_users_written),
        LogStats::get(&s.checkpoint_micros),
    );
    log.compact_now().await.expect("checkpoint");
    Took {
        // The checkpoints' own time (every shard's, one after another), not retention's.
        secs: (LogStats::get(&s.checkpoint_micros) - m) as f64 / 1e6,
        bytes: LogStats::get(&s.checkpoint_bytes_written) - b,
        parts: LogStats::get(&s.checkpoint_parts_written) - p,
        users: LogStats::get(&s.checkpoint_users_written) - u,
    }
}

async fn open(
    store: Arc<dyn object_store::ObjectStore>,
    shards: u32,
    parts: PartsPolicy,
) -> Arc<Log> {
    let cfg = LogConfig {
        checkpoint_every_events: u64::MAX,
        checkpoint_interval: Duration::from_secs(1 << 30),
        checkpoint_parts: parts,
        view_memory_bytes: 64 << 20,
        // compact_now then writes the checkpoint alone (compaction is measured elsewhere).
        compaction: keepsake_log::CompactionPolicy {
            enabled: false,
            ..Default::default()
        },
        ..LogConfig::default()
    };
    open_log(store, shards, cfg).await
}

fn main() {
    let users = env("KEEPSAKE_BENCH_USERS", 100_000);
    let items = env("KEEPSAKE_BENCH_ITEMS", 20);
    let work_users = env("KEEPSAKE_BENCH_WORK_USERS", 1000);
    let patches = env("KEEPSAKE_BENCH_PATCHES", 20);
    let shards = env("KEEPSAKE_BENCH_SHARDS", 4) as u32;
    let history = env("KEEPSAKE_BENCH_HISTORY", 0);
    let steps: Vec<u64> = std::env::var("KEEPSAKE_BENCH_STEPS")
        .unwrap_or_else(|_| "10,50,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    runtime().block_on(async move {
        let (store, _tmp) = file_store();
        let whole = PartsPolicy {
            merge_ratio: u64::MAX,
            merge_min_users: 0,
            ..PartsPolicy::default()
        };
        println!(
            "checkpoint growth: file store, {shards} shards, {items} items of 300-700 bytes and {history} patches of them per user; new work {work_users} users x {patches} patches"
        );
        println!(
            "{:>9} {:>7} {:>9} {:>11} {:>7} {:>7} {:>9} {:>11} {:>7}",
            "users", "policy", "ckpt s", "MB written", "parts", "users", "fill s", "ev/s fill", "ratio"
        );
        let mut filled = 0;
        let mut round = 0;
        for pct in steps {
            let to = users * pct / 100;
            let t = Instant::now();
            let log = open(store.clone(), shards, PartsPolicy::default()).await;
            fill(&log, filled, to, items, history).await;
            let fill_secs = t.elapsed().as_secs_f64();
            let fill_rate = ((to - filled) * (items + history)) as f64 / fill_secs;
            filled = to;
            // The fill's own checkpoint (a large delta, merged into the base): not measured.
            log.compact_now().await.expect("checkpoint the fill");
            log.shutdown().await;
            let mut secs = Vec::new();
            for (name, policy) in [("parts", PartsPolicy::default()), ("whole", whole)] {
                let log = open(store.clone(), shards, policy).await;
                round += 1;
                work(&log, filled, work_users, patches, items, round).await;
                let took = timed_checkpoint(&log).await;
                secs.push(took.secs);
                let ratio = if name == "whole" { secs[1] / secs[0] } else { 1.0 };
                println!(
                    "{filled:>9} {name:>7} {:>9.2} {:>11.1} {:>7} {:>7} {fill_secs:>9.1} {fill_rate:>11.0} {ratio:>7.2}",
                    took.secs,
                    took.bytes as f64 / 1e6,
                    took.parts,
                    took.users,
                );
                log.shutdown().await;
            }
        }
    });
}
