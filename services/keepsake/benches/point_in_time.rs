//! Point-in-time benchmarks on the file store (fsync on), in process: as-of reads of one user with
//! 10k and 100k events of history at random moments, single-user restore latency, a fleet restore
//! of many users, and a full rebuild. `KEEPSAKE_PIT_USERS` (default 10000) and
//! `KEEPSAKE_PIT_ITEMS` (default 100) size the fleet; `KEEPSAKE_BENCH_LOG` (a tracing filter,
//! e.g. `keepsake_log=info`) prints the log's own lines, the rebuild's phases among them.
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_log::{Log, LogConfig, PushRequest, UpTo};
use keepsake_model::fixtures::{Rng, document};
use keepsake_model::{
    Change, ChangeBody, ChangeId, Clock, Document, EventMeta, ItemId, Kind, Origin, RandomIds,
    StagePolicy, SystemClock, UserId,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn meta() -> EventMeta {
    EventMeta {
        device_id: None,
        origin: Origin::Device,
        request_id: None,
        restore_id: None,
    }
}

async fn push(log: &Log, user: UserId, changes: Vec<Change>) {
    let n = changes.len();
    let r = log
        .push(PushRequest {
            user_id: user,
            meta: meta(),
            changes,
            confirm_mass_delete: true,
        })
        .await
        .expect("push");
    let applied = r
        .outcomes
        .iter()
        .filter(|o| matches!(o, keepsake_model::Outcome::Applied(_)))
        .count();
    assert_eq!(
        applied,
        n,
        "every change of the setup applies: {:?}",
        r.outcomes
            .iter()
            .find(|o| !matches!(o, keepsake_model::Outcome::Applied(_)))
    );
}

/// A put of a random document of the item's kind (`docs[j]` was made for kind `j % 4`).
fn put(rng: &mut Rng, docs: &[Document], item: ItemId, kind_index: usize) -> Change {
    let i = rng.below((docs.len() / 4) as u64) as usize * 4 + kind_index % 4;
    Change {
        change_id: ChangeId(rng.uuid()),
        kind: Kind::DATA[kind_index % 4],
        item_id: item,
        base_version: None,
        body: ChangeBody::Put {
            document: docs[i].clone(),
        },
    }
}

fn main() {
    // KEEPSAKE_BENCH_LOG=keepsake_log=info shows, among others, the rebuild's phases.
    if let Ok(filter) = std::env::var("KEEPSAKE_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let users_n = env("KEEPSAKE_PIT_USERS", 10_000) as usize;
    let items_n = env("KEEPSAKE_PIT_ITEMS", 100) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = keepsake_store::open_store(&dir.path().display().to_string()).expect("store").inner;
        let cfg = LogConfig {
            checkpoint_every_events: env("KEEPSAKE_PIT_CHECKPOINT_EVENTS", 50_000),
            view_memory_bytes: 2 << 30,
            policy: StagePolicy { max_document_bytes: 1 << 20, ..StagePolicy::default() },
            ..LogConfig::default()
        };
        let log = Arc::new(Log::open(store.clone(), Some(2), cfg, Arc::new(SystemClock), Arc::new(RandomIds)).await.expect("log"));
        let mut rng = Rng::new(11);
        let docs: Vec<Document> = (0..400).map(|i| Document::from_object(&document(Kind::DATA[i % 4], &mut rng))).collect();
        println!("point in time: file store (fsync), 2 shards, release build");

        // As-of reads: one user with 10k and one with 100k events (200 items rewritten over and over).
        for history in [10_000usize, 100_000] {
            let user = UserId(rng.uuid());
            let items: Vec<ItemId> = (0..200).map(|_| ItemId(rng.uuid())).collect();
            for chunk in 0..history / 1000 {
                let changes = (0..1000).map(|k| { let idx = (chunk * 1000 + k) % items.len(); put(&mut rng, &docs, items[idx], idx) }).collect();
                push(&log, user, changes).await;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await; // let the checkpointer run
            let mut lat = Vec::new();
            for _ in 0..40 {
                let at = 1 + rng.below(history as u64);
                let t = Instant::now();
                let s = log.items_at(&user, UpTo::Seq(at)).await.expect("as of");
                lat.push(t.elapsed());
                assert_eq!(keepsake_model::StateRead::last_seq(&s), at);
            }
            println!("  as-of read, {history:>6} events of history, random seq:  p50 {:>7.1} ms  p99 {:>7.1} ms", pct(lat.clone(), 0.5), pct(lat, 0.99));
        }

        // A fleet: users_n users with items_n items each, then wiped.
        let started = Instant::now();
        let users: Vec<UserId> = (0..users_n).map(|_| UserId(rng.uuid())).collect();
        let mut all_items = Vec::new();
        for chunk in users.chunks(64) {
            let mut tasks = Vec::new();
            for u in chunk {
                let items: Vec<ItemId> = (0..items_n).map(|_| ItemId(rng.uuid())).collect();
                let changes: Vec<Change> = items.iter().enumerate().map(|(k, it)| put(&mut rng, &docs, *it, k)).collect();
                all_items.push(items);
                let (log, u) = (log.clone(), *u);
                tasks.push(tokio::spawn(async move { push(&log, u, changes).await }));
            }
            for t in tasks {
                t.await.expect("join");
            }
        }
        let filled = started.elapsed();
        let t = SystemClock.now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (chunk_u, chunk_i) in users.chunks(64).zip(all_items.chunks(64)) {
            let mut tasks = Vec::new();
            for (u, items) in chunk_u.iter().zip(chunk_i) {
                let changes: Vec<Change> = items
                    .iter()
                    .enumerate()
                    .map(|(k, it)| Change { change_id: ChangeId(rng.uuid()), kind: Kind::DATA[k % 4], item_id: *it, base_version: None, body: ChangeBody::Delete })
                    .collect();
                let (log, u) = (log.clone(), *u);
                tasks.push(tokio::spawn(async move { push(&log, u, changes).await }));
            }
            for t in tasks {
                t.await.expect("join");
            }
        }
        println!("  setup: {users_n} users x {items_n} items written in {:.1} s, then wiped", filled.as_secs_f64());

        // Single-user restores.
        let spec = keepsake::restore::Spec { at: UpTo::Time(t), as_of: None, as_of_seq: None, kinds: None, reason: "bench".into() };
        let mut lat = Vec::new();
        for u in users.iter().take(30) {
            let s = Instant::now();
            let d = keepsake::restore::restore_user(&log, &SystemClock, *u, &spec, None, false, None, None).await.expect("restore");
            lat.push(s.elapsed());
            assert_eq!(d.restored, items_n as u64);
        }
        println!("  single-user restore ({items_n} items):               p50 {:>7.1} ms  p99 {:>7.1} ms", pct(lat.clone(), 0.5), pct(lat, 0.99));

        // Fleet restore of the rest.
        let fleet = keepsake::fleet::Fleet::new(log.clone(), Arc::new(SystemClock), 64, 0);
        let rest: Vec<UserId> = users.iter().skip(30).copied().collect();
        let job = keepsake_model::RestoreId(rng.uuid());
        let spec = keepsake::fleet::JobSpec { format_version: keepsake::fleet_record::FLEET_RECORD_VERSION, restore_id: job, scope: "fleet".into(), as_of: t, users: Some(rest.clone()), kinds: None, reason: "bench".into(), created_at: SystemClock.now() };
        let s = Instant::now();
        fleet.start(spec).await.expect("start");
        loop {
            let p = fleet.progress(job).await.expect("progress").expect("job");
            if p.state != "running" {
                assert_eq!((p.state.as_str(), p.users_done), ("done", rest.len() as u64));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = s.elapsed().as_secs_f64();
        println!("  fleet restore: {} users x {items_n} items in {took:.1} s = {:.0} users/s ({:.0} changes/s)", rest.len(), rest.len() as f64 / took, (rest.len() * items_n) as f64 / took);

        // Full rebuild, once the checkpoints the fleet restore's writes triggered are written
        // (otherwise the rebuild shares the two cores with them).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = Instant::now();
        let (before, after, report) = log.rebuild().await.expect("rebuild");
        let took = s.elapsed().as_secs_f64();
        assert_eq!(before, after);
        println!("  rebuild: {} events, {} users in {took:.1} s = {:.0} events/s (verify + fold + compare)", report.events, report.users, report.events as f64 / took);
        log.shutdown().await;
    });
}
