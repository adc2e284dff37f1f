//! What a cold load of one user from a checkpoint's parts costs in CPU when the view keeps the
//! parts' footers: the footer found kept, then the user's pages read and decoded. Fills one
//! shard of an in-memory store (the store's own latency left out), checkpoints it, reads one
//! user of each part to keep its footer, then reads users in turn; prints the time a read and
//! the footers' bytes a user. Run it on two builds, one after the other, to compare them.
//!
//! `KEEPSAKE_BENCH_USERS` (6000: four parts of 1,500), `KEEPSAKE_BENCH_ITEMS` (20),
//! `KEEPSAKE_BENCH_READS` (20000), `KEEPSAKE_BENCH_ROUNDS` (3).
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fill::{env, fill, open_log, runtime, user};
use keepsake_log::reader::{Footers, open_checkpoint};
use keepsake_log::{LogConfig, LogStats};

mod fill;

fn main() {
    let users = env("KEEPSAKE_BENCH_USERS", 6_000);
    let items = env("KEEPSAKE_BENCH_ITEMS", 20);
    let reads = env("KEEPSAKE_BENCH_READS", 20_000);
    let rounds = env("KEEPSAKE_BENCH_ROUNDS", 3);
    runtime().block_on(async move {
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let cfg = LogConfig {
            checkpoint_every_events: u64::MAX,
            checkpoint_interval: Duration::from_secs(1 << 30),
            compaction: keepsake_log::CompactionPolicy {
                enabled: false,
                ..Default::default()
            },
            ..LogConfig::default()
        };
        let log = open_log(store.clone(), 1, cfg).await;
        fill(&log, 0, users, items, 0).await;
        log.compact_now().await.expect("checkpoint");
        let parts = LogStats::get(&log.stats().checkpoint_parts_written);
        let n = log.head(0);
        log.shutdown().await;
        let ck = open_checkpoint(store.as_ref(), 0, n)
            .await
            .expect("open checkpoint");
        let footers = Footers::default();
        for u in 0..users {
            ck.user_with(store.clone(), user(u), true, Some(&footers))
                .await
                .expect("read");
        }
        println!(
            "cold load: {users} users x {items} items in {parts} parts, in memory; footers kept {} bytes, {:.1} a user",
            footers.bytes(),
            footers.bytes() as f64 / users as f64
        );
        for round in 1..=rounds {
            for with_changes in [true, false] {
                let t = Instant::now();
                for k in 0..reads {
                    let u = user(k.wrapping_mul(7_919) % users);
                    ck.user_with(store.clone(), u, with_changes, Some(&footers))
                        .await
                        .expect("read");
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / reads as f64;
                let what = if with_changes { "with change ids" } else { "items only" };
                println!("round {round}: {what:>15}: {us:8.1} us a read");
            }
        }
    });
}
