//! What the log benches that fill a store share: users, items and contact-like documents made
//! the same way, pushed through the log.
#![allow(clippy::expect_used, dead_code)]

use std::sync::Arc;

use keepsake_log::{Log, LogConfig, PushRequest};
use keepsake_model::{
    Change, ChangeBody, ChangeId, Document, EventMeta, ItemId, Kind, Origin, RandomIds,
    SystemClock, UserId, fixtures::Rng,
};
use serde_json::json;

/// The benches' runtime: two workers, as many as this machine has cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A file store in `KEEPSAKE_BENCH_DIR`, or in a temporary directory (given back: the store is
/// deleted when it drops).
pub fn file_store() -> (Arc<dyn object_store::ObjectStore>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var("KEEPSAKE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let url = format!("file://{}", dir.display());
    let store = keepsake_store::open_store(&url).expect("file store").inner;
    (store, tmp)
}

/// The log of `shards` shards over `store`, with the system's clock and random ids.
pub async fn open_log(
    store: Arc<dyn object_store::ObjectStore>,
    shards: u32,
    cfg: LogConfig,
) -> Arc<Log> {
    Arc::new(
        Log::open(
            store,
            Some(shards),
            cfg,
            Arc::new(SystemClock),
            Arc::new(RandomIds),
        )
        .await
        .expect("open log"),
    )
}

pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn user(i: u64) -> UserId {
    UserId(uuid::Uuid::from_u128(
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1,
    ))
}

pub fn item(u: u64, j: u64) -> ItemId {
    ItemId(uuid::Uuid::from_u128(
        (u128::from(u) << 32 | u128::from(j))
            .wrapping_mul(0xd6e8_feb8_6659_fd93_a5a5_0f0f_3c3c_9696),
    ))
}

/// A contact-like document of 300-700 bytes.
pub fn document(rng: &mut Rng) -> Document {
    let len = 250 + rng.below(400) as usize;
    let note: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    Document::from_value(&json!({
        "fn": format!("Person {}", rng.below(1_000_000)),
        "email": format!("p{}@example.com", rng.below(1_000_000)),
        "note": note,
    }))
}

pub fn meta() -> EventMeta {
    EventMeta {
        device_id: None,
        origin: Origin::Device,
        request_id: None,
        restore_id: None,
    }
}

pub async fn push(log: &Log, u: UserId, changes: Vec<Change>) {
    log.push(PushRequest {
        user_id: u,
        meta: meta(),
        changes,
        confirm_mass_delete: false,
    })
    .await
    .expect("push");
}

/// Users `from..to`, each with `items` new items and then `history` patches of them, 64 users
/// at a time.
pub async fn fill(log: &Arc<Log>, from: u64, to: u64, items: u64, history: u64) {
    let mut tasks = Vec::new();
    for lane in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(lane);
            let mut u = from + lane;
            while u < to {
                let changes = (0..items)
                    .map(|j| Change {
                        change_id: ChangeId(rng.uuid()),
                        kind: Kind::Contact,
                        item_id: item(u, j),
                        base_version: None,
                        body: ChangeBody::Put {
                            document: document(&mut rng),
                        },
                    })
                    .collect();
                push(&log, user(u), changes).await;
                let mut done = 0;
                while done < history {
                    let n = (history - done).min(100);
                    let changes = (done..done + n)
                        .map(|h| Change {
                            change_id: ChangeId(rng.uuid()),
                            kind: Kind::Contact,
                            item_id: item(u, h % items),
                            base_version: None,
                            body: ChangeBody::Patch {
                                document: Document::from_value(&json!({ "h": h })),
                            },
                        })
                        .collect();
                    push(&log, user(u), changes).await;
                    done += n;
                }
                u += 64;
            }
        }));
    }
    for t in tasks {
        t.await.expect("fill");
    }
}

/// The same new work at every step: `users` users spread over the fill, `patches` patches each.
pub async fn work(log: &Arc<Log>, filled: u64, users: u64, patches: u64, items: u64, round: u64) {
    let mut tasks = Vec::new();
    for lane in 0..16u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(1000 + round * 16 + lane);
            for k in (lane..users).step_by(16) {
                let u = (k * filled / users + round) % filled;
                let changes = (0..patches)
                    .map(|p| Change {
                        change_id: ChangeId(rng.uuid()),
                        kind: Kind::Contact,
                        item_id: item(u, p % items),
                        base_version: None,
                        body: ChangeBody::Patch {
                            document: Document::from_value(
                                &json!({"note": format!("r{round} p{p}")}),
                            ),
                        },
                    })
                    .collect();
                push(&log, user(u), changes).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("work");
    }
}
