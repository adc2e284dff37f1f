//! Writer throughput against the local file store (fsync on): concurrent clients push 100
//! changes each, for several seconds; reports events/s, segments/s and ack latency percentiles.
//! An ack means the segment holding the push is durable.
//!
//! `KEEPSAKE_BENCH_SECS` (default 5), `KEEPSAKE_BENCH_CLIENTS` (default 64),
//! `KEEPSAKE_BENCH_WINDOW_MS` (default 10), `KEEPSAKE_BENCH_VIEW_MB` (default 4096: above the
//! working set; lower it to measure eviction and reloads) and `KEEPSAKE_BENCH_CHECKPOINT_EVENTS`
//! (default: the log's) change the run.
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_log::{Log, LogConfig, LogStats, PushRequest};
use keepsake_model::{
    Change, ChangeBody, ChangeId, DeviceId, Document, EventMeta, ItemId, Kind, Origin, RandomIds,
    SystemClock, UserId,
    fixtures::{Rng, document},
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes --bench; this harness takes no filter.
    let secs = env("KEEPSAKE_BENCH_SECS", 5);
    let clients = env("KEEPSAKE_BENCH_CLIENTS", 64);
    let window = env("KEEPSAKE_BENCH_WINDOW_MS", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        let store = keepsake_store::open_store(&url).expect("file store").inner;
        let cfg = LogConfig {
            commit_window: Duration::from_millis(window),
            // Above the working set by default: this measures the writer, not eviction.
            view_memory_bytes: env("KEEPSAKE_BENCH_VIEW_MB", 4096) as usize * 1024 * 1024,
            checkpoint_every_events: env(
                "KEEPSAKE_BENCH_CHECKPOINT_EVENTS",
                LogConfig::default().checkpoint_every_events,
            ),
            ..LogConfig::default()
        };
        let log = Arc::new(
            Log::open(store, Some(1), cfg, Arc::new(SystemClock), Arc::new(RandomIds))
                .await
                .expect("open log"),
        );
        // Documents are prepared up front so that the run measures the log, not the generator.
        let mut rng = Rng::new(42);
        // Documents arrive from devices as JSON text; the log carries them as text.
        let docs: Vec<Document> = (0..1000)
            .map(|i| Document::from_object(&document(Kind::DATA[i % 4], &mut rng)))
            .collect();
        let docs = Arc::new(docs);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let log = log.clone();
            let docs = docs.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(c);
                let user = UserId(rng.uuid());
                let meta = EventMeta {
                    device_id: Some(DeviceId(rng.uuid())),
                    origin: Origin::Device,
                    request_id: None,
                    restore_id: None,
                };
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let changes: Vec<Change> = (0..100)
                        .map(|_| {
                            let i = rng.below(docs.len() as u64) as usize;
                            Change {
                                change_id: ChangeId(rng.uuid()),
                                kind: Kind::DATA[i % 4],
                                item_id: ItemId(rng.uuid()),
                                base_version: None,
                                body: ChangeBody::Put { document: docs[i].clone() },
                            }
                        })
                        .collect();
                    let t = Instant::now();
                    log.push(PushRequest { user_id: user, meta, changes, confirm_mass_delete: false })
                        .await
                        .expect("push");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.expect("client"));
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort();
        let stats = log.stats();
        let events = LogStats::get(&stats.events);
        let segments = LogStats::get(&stats.segments);
        let bytes = LogStats::get(&stats.bytes);
        let put_ms = LogStats::get(&stats.put_micros) as f64 / 1000.0 / segments.max(1) as f64;
        println!("writer bench: file store, fsync on, {window} ms window, {clients} clients x 100 changes/push, {secs} s");
        println!("  events/s         {:>12.0}", events as f64 / elapsed);
        println!("  pushes/s         {:>12.0}", latencies.len() as f64 / elapsed);
        println!("  segments/s       {:>12.1}", segments as f64 / elapsed);
        println!("  events/segment   {:>12.0}", events as f64 / segments.max(1) as f64);
        println!("  bytes/event      {:>12.1}", bytes as f64 / events.max(1) as f64);
        println!("  mean PUT ms      {:>12.2}", put_ms);
        // Slow PUTs (fsync stalls) show in the ack tail; the buckets say whether they happened.
        let (buckets, _, _) = stats.put_latency_ms.snapshot();
        let slow: Vec<String> = buckets
            .iter()
            .filter(|(bound, n)| *n > 0 && bound.is_none_or(|b| b > 10))
            .map(|(bound, n)| format!("{n} {}", bound.map_or("over 5000 ms".into(), |b| format!("<= {b} ms"))))
            .collect();
        println!("  PUTs over 10 ms  {:>12}", if slow.is_empty() { "none".into() } else { slow.join(", ") });
        println!("  ack p50 ms       {:>12.2}", percentile(&latencies, 0.50).as_secs_f64() * 1e3);
        println!("  ack p90 ms       {:>12.2}", percentile(&latencies, 0.90).as_secs_f64() * 1e3);
        println!("  ack p99 ms       {:>12.2}", percentile(&latencies, 0.99).as_secs_f64() * 1e3);
        println!("  ack p99.9 ms     {:>12.2}", percentile(&latencies, 0.999).as_secs_f64() * 1e3);
        println!("  ack max ms       {:>12.2}", latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3);
        let (hits, misses, evictions) = log.view_counters();
        println!("  view hits/misses/evictions {hits}/{misses}/{evictions}");
        log.shutdown().await;
    });
}
