//! The fill of a scale run: users with items of realistic 300-700-byte documents, pushed
//! through the log library while the server is stopped (the bulk path the issue allows; every
//! measurement goes through the server), then checkpointed and compacted, as the server's
//! upkeep would have done during a fill that took days.
//!
//! Users and items are numbered: user `i` and its item `j` are the same ids in every run and at
//! every step, so the measurements can name users already filled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use keepsake_log::{Log, LogConfig, PushRequest};
use keepsake_model::{
    Change, ChangeBody, ChangeId, Document, EventMeta, ItemId, Kind, Origin, RandomIds,
    SystemClock, UserId, fixtures::Rng,
};
use object_store::ObjectStore;
use uuid::Uuid;

use crate::workload::Documents;

/// User number `i`: spread over the id space (and so over shards and checkpoint parts) as
/// random ids are.
pub fn user(i: u64) -> UserId {
    UserId(Uuid::from_u128(
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1,
    ))
}

/// Item `j` of user number `u`.
pub fn item(u: u64, j: u64) -> ItemId {
    ItemId(Uuid::from_u128(
        (u128::from(u) << 32 | u128::from(j))
            .wrapping_mul(0xd6e8_feb8_6659_fd93_a5a5_0f0f_3c3c_9696)
            | 1,
    ))
}

/// What one fill step did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Filled {
    /// Events appended.
    pub events: u64,
    /// Seconds pushing them.
    pub push_secs: f64,
    /// Seconds of the checkpoint and compaction after.
    pub settle_secs: f64,
}

/// Users pushed at once.
const LANES: u64 = 64;

/// Pushes users `from..to`, `items` contacts each (one push per user), through the log on
/// `store`, then checkpoints and compacts every shard. Progress on stderr every 10 s.
pub async fn fill(
    store: Arc<dyn ObjectStore>,
    from: u64,
    to: u64,
    items: u64,
    docs: Arc<Documents>,
) -> anyhow::Result<Filled> {
    let cfg = LogConfig {
        // The fill writes users once: a small view is enough, and leaves the machine's memory
        // to the fill's own checkpoints.
        view_memory_bytes: 64 << 20,
        ..LogConfig::default()
    };
    let log = Arc::new(
        Log::open(store, None, cfg, Arc::new(SystemClock), Arc::new(RandomIds))
            .await
            .context("opening the log for the fill (is a server still running on the store?)")?,
    );
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "fill: {} of {} users ({:.0} users/s over the last 10 s)",
                    now,
                    to - from,
                    (now - last) as f64 / 10.0
                );
                last = now;
            }
        })
    };
    // Parsed once; a document is shared, not copied, by every item that holds it.
    let docs: Arc<Vec<Document>> = Arc::new(
        docs.all(Kind::Contact)
            .iter()
            .map(|d| Document::from_stored(d.as_str()))
            .collect(),
    );
    let contacts = docs.len().max(1) as u64;
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let (log, docs, done) = (log.clone(), docs.clone(), done.clone());
        lanes.push(tokio::spawn(async move {
            let mut rng = Rng::new(from ^ (lane << 40) ^ 0x5ca1e);
            let mut u = from + lane;
            while u < to {
                let changes = (0..items)
                    .map(|j| Change {
                        change_id: ChangeId(rng.uuid()),
                        kind: Kind::Contact,
                        item_id: item(u, j),
                        base_version: None,
                        body: ChangeBody::Put {
                            document: docs
                                .get(rng.below(contacts) as usize)
                                .cloned()
                                .unwrap_or_else(|| Document::from_stored("{}")),
                        },
                    })
                    .collect();
                log.push(PushRequest {
                    user_id: user(u),
                    meta: EventMeta {
                        device_id: None,
                        origin: Origin::Device,
                        request_id: None,
                        restore_id: None,
                    },
                    changes,
                    confirm_mass_delete: false,
                })
                .await
                .with_context(|| format!("filling user {u}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                u += LANES;
            }
            anyhow::Ok(())
        }));
    }
    let mut outcome = Ok(());
    for lane in lanes {
        let r = lane.await.context("a fill lane panicked").and_then(|r| r);
        if outcome.is_ok() {
            outcome = r;
        }
    }
    progress.abort();
    let push_secs = started.elapsed().as_secs_f64();
    let settled = Instant::now();
    let outcome = match outcome {
        Ok(()) => log
            .compact_now()
            .await
            .map(|_| ())
            .context("checkpointing and compacting the fill"),
        Err(e) => Err(e),
    };
    log.shutdown().await;
    outcome?;
    Ok(Filled {
        events: (to - from) * items,
        push_secs,
        settle_secs: settled.elapsed().as_secs_f64(),
    })
}
