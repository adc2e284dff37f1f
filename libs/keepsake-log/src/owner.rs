//! A shard's ownership fence: which server may write the shard, decided in the store.
//!
//! In a cluster (etcd decides who *should* serve each shard) the store decides who *can*
//! write: a server that takes a shard first writes the next generation of the shard's owner
//! chain, `shards/<s>/owners/<g / 1000>/<g>.json`, create-only, and only then reads the shard
//! and serves it. A writer holding generation `g` acknowledges a batch only after its segment
//! PUT was confirmed **and** a GET of generation `g + 1` then answered not found.
//!
//! Invariants:
//! - Generations are dense from 1 and each is written once (create-only, by a process that
//!   read the one before): the newest generation names the one server that may acknowledge.
//! - A deposed writer never acknowledges a batch: if its PUT landed before the taker wrote
//!   `g + 1`, the taker's read of the shard (which starts after that write completed) sees the
//!   segment; if the GET of `g + 1` found it, the batch is failed as `not_owner` (retryable;
//!   a resend to the new owner answers `duplicate` if the segment was in fact written). A GET
//!   that answered not found linearises before the taker's write, and so after the PUT: the
//!   taker's read includes the segment. So the new owner's view holds every acknowledged
//!   change from the moment it serves.
//! - Without a cluster there is no chain and no extra request: every shard is owned.
//! - Owner objects are never deleted, and nothing in the log depends on them: `verify` and
//!   `rebuild` read the log as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use keepsake_store::create_only;
use keepsake_store::keys::{self, Chain};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::{LogError, store_err};

/// The owner record's format version (`schemas/owner-v1.json`).
pub const OWNER_VERSION: u32 = 1;

/// Times [`take`] tries to write the next generation before it gives up (each loss is another
/// server's newer generation).
const TAKE_ATTEMPTS: u32 = 8;

/// One generation of a shard's owner chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The record's format version.
    pub format_version: u32,
    /// The shard.
    pub shard: u32,
    /// The generation, from 1.
    pub generation: u64,
    /// The server (its `--node-id`).
    pub node: String,
    /// The coordinator's generation of the assignment that gave the shard to the server (etcd's;
    /// 0 when assigned statically): for operators reading the chain.
    pub assignment: u64,
}

/// Decodes generation `generation` of `shard`'s owner chain: another version, shard or
/// generation than its key is damage.
pub fn decode(shard: u32, generation: u64, bytes: &[u8]) -> Result<Owner, String> {
    crate::chain::decode_record(
        bytes,
        "owner",
        OWNER_VERSION,
        (shard, generation),
        |o: &Owner| (o.shard, o.generation),
    )
}

fn damaged(shard: u32, generation: u64, why: impl std::fmt::Display) -> LogError {
    LogError::Unavailable {
        shard,
        reason: format!("owner generation {generation} is unreadable: {why}"),
    }
}

/// Generation `generation` of `shard`'s owner chain, `None` if it does not exist.
pub async fn read(
    store: &dyn ObjectStore,
    shard: u32,
    generation: u64,
) -> Result<Option<Owner>, LogError> {
    let Some(bytes) = crate::chain::read_link(store, shard, Chain::Owners, generation).await?
    else {
        return Ok(None);
    };
    decode(shard, generation, &bytes)
        .map(Some)
        .map_err(|e| damaged(shard, generation, e))
}

/// True when a generation after `generation` exists: another server took the shard since.
pub async fn superseded(
    store: &dyn ObjectStore,
    shard: u32,
    generation: u64,
) -> Result<bool, LogError> {
    let path = keys::owner(shard, generation + 1);
    match store.head(&path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_err(format!("look for {path}"))(e)),
    }
}

/// The newest generation of `shard`'s owner chain (`None`: no server ever took it): two
/// listings, then followed with GETs so that one written since is found.
pub async fn newest(store: &dyn ObjectStore, shard: u32) -> Result<Option<Owner>, LogError> {
    let Some(listed) = crate::chain::newest_listed(store, shard, Chain::Owners).await? else {
        return follow(store, shard, None).await;
    };
    let known = read(store, shard, listed).await?.ok_or_else(|| {
        damaged(
            shard,
            listed,
            "listed, then not found (owners are never deleted)",
        )
    })?;
    follow(store, shard, Some(known)).await
}

async fn follow(
    store: &dyn ObjectStore,
    shard: u32,
    mut known: Option<Owner>,
) -> Result<Option<Owner>, LogError> {
    loop {
        let next = known.as_ref().map_or(1, |o| o.generation + 1);
        match read(store, shard, next).await? {
            Some(o) => known = Some(o),
            None => return Ok(known),
        }
    }
}

/// Takes `shard` for `node`: writes the generation after the newest, create-only, and returns
/// it. From then on no writer holding an older generation acknowledges a batch of the shard.
/// The caller reads the shard (catches up) after this returns and before it serves.
pub async fn take(
    store: &dyn ObjectStore,
    shard: u32,
    node: &str,
    assignment: u64,
) -> Result<Owner, LogError> {
    let mut known = newest(store, shard).await?;
    for _ in 0..TAKE_ATTEMPTS {
        let mine = Owner {
            format_version: OWNER_VERSION,
            shard,
            generation: known.as_ref().map_or(1, |o| o.generation + 1),
            node: node.to_string(),
            assignment,
        };
        let body = serde_json::to_vec(&mine).map_err(|e| LogError::Unavailable {
            shard,
            reason: format!("encode the owner record: {e}"),
        })?;
        let path = keys::owner(shard, mine.generation);
        match store
            .put_opts(&path, PutPayload::from(Bytes::from(body)), create_only())
            .await
        {
            Ok(_) => {
                info!(
                    shard,
                    generation = mine.generation,
                    node,
                    assignment,
                    "took the shard"
                );
                return Ok(mine);
            }
            // Ours if an earlier answer was lost (same node and assignment), else another
            // server's: read and go on from it.
            Err(_) => match read(store, shard, mine.generation).await? {
                Some(o) if o == mine => return Ok(mine),
                Some(o) => known = Some(o),
                None => known = follow(store, shard, known).await?,
            },
        }
    }
    Err(LogError::Unavailable {
        shard,
        reason: format!("the shard could not be taken in {TAKE_ATTEMPTS} tries"),
    })
}

/// Whether this process may write a shard now: shared by the shard's writer, its upkeep and
/// the [`crate::Log`] calls that take and release it.
#[derive(Debug)]
pub(crate) struct Gate {
    /// A cluster member (`LogConfig::cluster_node`): shards are written only once taken.
    fenced: bool,
    /// The owner generation held (0: not owned; always 0 without a cluster).
    generation: AtomicU64,
    /// New batches are staged (false while the shard is handed over: batches in flight finish
    /// under the generation still held, later ones are refused).
    open: AtomicBool,
}

impl Gate {
    pub(crate) fn new(fenced: bool) -> Self {
        Self {
            fenced,
            generation: AtomicU64::new(0),
            open: AtomicBool::new(!fenced),
        }
    }

    /// `None` when the shard is not this process's now; else the generation whose successor a
    /// PUT must be confirmed against (`Some(0)`: no cluster, nothing to confirm).
    pub(crate) fn held(&self) -> Option<u64> {
        match (self.fenced, self.generation.load(Ordering::Acquire)) {
            (false, _) => Some(0),
            (true, 0) => None,
            (true, g) => Some(g),
        }
    }

    /// True when a new batch may be staged.
    pub(crate) fn accepts(&self) -> bool {
        self.held().is_some() && self.open.load(Ordering::Acquire)
    }

    /// Holds `generation` and takes batches.
    pub(crate) fn hold(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        self.open.store(true, Ordering::Release);
    }

    /// Refuses new batches; the generation stays held for the batch in flight.
    pub(crate) fn close(&self) {
        if self.fenced {
            self.open.store(false, Ordering::Release);
        }
    }

    /// Lets go of `generation` (and only it: a newer one taken meanwhile stays).
    pub(crate) fn drop_generation(&self, generation: u64) {
        if self
            .generation
            .compare_exchange(generation, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.open.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn golden_v1_decodes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/golden/owner-v1.json"
        );
        let bytes = std::fs::read(path).expect("schemas/golden/owner-v1.json");
        let o = decode(2, 7, &bytes).expect("golden owner decodes");
        assert_eq!(o.node, "keepsake-1");
        assert_eq!(o.assignment, 41);
        assert!(decode(2, 6, &bytes).is_err(), "another generation's key");
        assert!(decode(3, 7, &bytes).is_err(), "another shard's key");
        let future = br#"{"format_version":2,"shard":0,"generation":1,"node":"a","assignment":0}"#;
        assert!(
            decode(0, 1, future)
                .expect_err("v2")
                .contains("format version 2")
        );
        let extra =
            br#"{"format_version":1,"shard":0,"generation":1,"node":"a","assignment":0,"x":1}"#;
        assert!(decode(0, 1, extra).is_err());
    }

    #[tokio::test]
    async fn generations_are_dense_and_each_supersedes_the_one_before() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        assert_eq!(newest(store.as_ref(), 1).await.expect("read"), None);
        let a = take(store.as_ref(), 1, "a", 5).await.expect("a takes");
        assert_eq!(a.generation, 1);
        assert!(!superseded(store.as_ref(), 1, 1).await.expect("read"));
        let b = take(store.as_ref(), 1, "b", 6).await.expect("b takes");
        assert_eq!(b.generation, 2);
        assert!(superseded(store.as_ref(), 1, 1).await.expect("read"));
        assert!(!superseded(store.as_ref(), 1, 2).await.expect("read"));
        assert_eq!(newest(store.as_ref(), 1).await.expect("read"), Some(b));
        // Another shard's chain is its own.
        assert_eq!(
            take(store.as_ref(), 0, "a", 5)
                .await
                .expect("take")
                .generation,
            1
        );
    }

    #[tokio::test]
    async fn concurrent_takes_get_distinct_generations() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let takes = (0..6).map(|i| {
            let store = store.clone();
            async move { take(store.as_ref(), 3, &format!("n{i}"), i).await }
        });
        let mut got: Vec<u64> = futures::future::try_join_all(takes)
            .await
            .expect("every take succeeds")
            .into_iter()
            .map(|o| o.generation)
            .collect();
        got.sort_unstable();
        assert_eq!(got, (1..=6).collect::<Vec<_>>());
    }
}
