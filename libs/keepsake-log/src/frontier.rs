//! A shard's compaction frontier: how far compaction may have deleted segment objects, so that
//! a writer learns with one GET, not a LIST, whether the number its create-only PUT just took
//! had been used before (writer invariant 8).
//!
//! Invariants:
//! - Generation `g` is the object `shards/<s>/frontier/<g / 1000>/<g>.json` holding `through`,
//!   written create-only, and only by a process that read generation `g - 1` (none, for
//!   `g = 1`): the generations are dense from 1, and `through` never decreases from one to the
//!   next. The newest is found by listing the buckets, then the newest bucket.
//! - No segment object is deleted unless a generation with `through` at least its number exists
//!   ([`advance`] returns only then; compaction calls it before every delete of segments, with
//!   the highest number a verified history object holds). So a verified history object
//!   reaching a generation's `through` exists, and a listing of history objects that does not
//!   reach it is missing one (the writer's catch-up refuses such a listing).
//! - So a writer whose create-only PUT of segment `n` succeeded, whose known frontier is below
//!   `n`, and who then finds no generation after the newest it knows (a GET that answers not
//!   found), knows `n` was never used: had it been, its object was deleted after a generation
//!   of at least `n` was written, before the PUT landed, and so before the GET.
//! - Frontier objects are never deleted: a process following the chain from an old generation
//!   must find every one after it. One is written per compaction that deletes segments.
//! - Versions before the frontier compacted without one. A shard with no generation is
//!   confirmed as they did, with a listing of history objects after each PUT, until a
//!   compaction of this version writes generation 1; a shard that nothing ever compacted gets
//!   generation 1 (holding nothing) from its writer ([`start`]). A writer also takes the
//!   highest number a listed history object holds as a floor (every number one holds was used).
//!   Compaction never takes a floor for a frontier written. What is left: a process of an
//!   older version compacting a shard after this version started its chain (a deploy that
//!   mixes versions for longer than a checkpoint interval): see `docs/ARCHITECTURE.md`.

use bytes::Bytes;
use keepsake_store::create_only;
use keepsake_store::keys;
use object_store::{ObjectStore, PutPayload};
use serde::Deserialize;
use tracing::info;

use crate::error::LogError;

/// The frontier record's format version.
pub const FRONTIER_VERSION: u32 = 1;

/// Times [`advance`] writes a generation before it gives up (each loss is another process's
/// newer generation, read before the next try).
const ADVANCE_ATTEMPTS: u32 = 8;

/// What a process knows of a shard's frontier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    /// The newest generation read (0: none).
    pub generation: u64,
    /// Segment numbers up to this may have been used and their objects deleted: the chain's
    /// value, raised by floors from history objects listed (see [`find`]).
    pub through: u64,
    /// The chain's own value: a verified history object holding every number up to it exists
    /// (compaction wrote it before advancing), so a listing of history objects that does not
    /// reach it is missing some.
    pub written: u64,
}

impl Frontier {
    /// True when segment `n` may have been used and compacted away.
    pub fn holds(&self, n: u64) -> bool {
        n <= self.through
    }
}

/// The persisted record (`schemas/README.md`, "Compaction frontier").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// Checked before the record is read (an unknown version may have other fields).
    #[serde(rename = "format_version")]
    _format_version: u32,
    shard: u32,
    generation: u64,
    through: u64,
}

/// Encodes generation `f` of `shard`'s frontier. Written out by hand: every field is an
/// integer, so there is no failure to handle (an empty object written create-only would block
/// the shard for good).
pub fn encode(shard: u32, f: Frontier) -> Bytes {
    Bytes::from(format!(
        "{{\"format_version\":{FRONTIER_VERSION},\"shard\":{shard},\"generation\":{},\"through\":{}}}",
        f.generation, f.through
    ))
}

/// Decodes the frontier object of `shard` at `generation`: a record of another version, shard
/// or generation than its key is damage.
pub fn decode(shard: u32, generation: u64, bytes: &[u8]) -> Result<Frontier, String> {
    let r: Record = crate::chain::decode_record(
        bytes,
        "frontier",
        FRONTIER_VERSION,
        (shard, generation),
        |r: &Record| (r.shard, r.generation),
    )?;
    Ok(Frontier {
        generation,
        through: r.through,
        written: r.through,
    })
}

fn damaged(shard: u32, generation: u64, why: impl std::fmt::Display) -> LogError {
    LogError::Unavailable {
        shard,
        reason: format!("compaction frontier generation {generation} is unreadable: {why}"),
    }
}

/// Generation `generation` of the frontier, `None` if it does not exist.
async fn read(
    store: &dyn ObjectStore,
    shard: u32,
    generation: u64,
) -> Result<Option<Frontier>, LogError> {
    let Some(bytes) =
        crate::chain::read_link(store, shard, keys::Chain::Frontier, generation).await?
    else {
        return Ok(None);
    };
    decode(shard, generation, &bytes)
        .map(Some)
        .map_err(|e| damaged(shard, generation, e))
}

/// `known` brought up to date: reads the generations after it until one is missing (one GET
/// when nothing changed).
pub async fn follow(
    store: &dyn ObjectStore,
    shard: u32,
    mut known: Frontier,
) -> Result<Frontier, LogError> {
    while let Some(next) = read(store, shard, known.generation + 1).await? {
        known = Frontier {
            generation: next.generation,
            through: next.through.max(known.through),
            written: next.written.max(known.written),
        };
    }
    Ok(known)
}

/// The newest generation, from two listings (the buckets, then the newest bucket: however long
/// the chain), then followed, so one written since is found.
pub async fn find_written(store: &dyn ObjectStore, shard: u32) -> Result<Frontier, LogError> {
    let newest = crate::chain::newest_listed(store, shard, keys::Chain::Frontier).await?;
    let known = match newest {
        None => Frontier::default(),
        Some(g) => read(store, shard, g).await?.ok_or_else(|| {
            damaged(
                shard,
                g,
                "listed, then not found (frontiers are never deleted)",
            )
        })?,
    };
    follow(store, shard, known).await
}

/// What a writer starts from: [`find_written`], raised to the highest number a history object
/// holds (a store compacted by a version before the frontier; those numbers were used).
pub async fn find(store: &dyn ObjectStore, shard: u32) -> Result<Frontier, LogError> {
    let written = find_written(store, shard).await?;
    let history = crate::reader::list_history(store, shard).await?;
    let floor = history.iter().map(|h| h.last).max().unwrap_or(0);
    Ok(Frontier {
        through: written.through.max(floor),
        ..written
    })
}

/// Starts the chain of a shard that nothing ever compacted (no generation, no history object):
/// generation 1, holding nothing. Until a shard has a generation, its writers confirm each PUT
/// with a listing of history objects as versions before the frontier did (they cannot know
/// whether such a version still compacts the store); a shard that nothing compacted needs no
/// such listing from then on.
pub async fn start(store: &dyn ObjectStore, shard: u32) -> Result<Frontier, LogError> {
    let first = Frontier {
        generation: 1,
        through: 0,
        written: 0,
    };
    match store
        .put_opts(
            &keys::frontier(shard, 1),
            PutPayload::from(encode(shard, first)),
            create_only(),
        )
        .await
    {
        Ok(_) => Ok(first),
        // Another process's first generation, or ours if the answer was lost.
        Err(_) => follow(store, shard, Frontier::default()).await,
    }
}

/// Makes the frontier hold every number up to `through` before the caller deletes segment
/// objects up to it: writes the next generation create-only unless one already holds it. A
/// write that fails or loses to another process is resolved by reading the chain again.
pub async fn advance(
    store: &dyn ObjectStore,
    shard: u32,
    through: u64,
) -> Result<Frontier, LogError> {
    let mut known = find_written(store, shard).await?;
    for _ in 0..ADVANCE_ATTEMPTS {
        if known.holds(through) {
            return Ok(known);
        }
        let next = Frontier {
            generation: known.generation + 1,
            through,
            written: through,
        };
        let path = keys::frontier(shard, next.generation);
        match store
            .put_opts(&path, PutPayload::from(encode(shard, next)), create_only())
            .await
        {
            Ok(_) => {
                info!(
                    shard,
                    generation = next.generation,
                    through,
                    "compaction frontier advanced"
                );
                return Ok(next);
            }
            // Another process's generation, or ours if the answer was lost: read and decide.
            Err(_) => known = follow(store, shard, known).await?,
        }
    }
    Err(LogError::Unavailable {
        shard,
        reason: format!(
            "the compaction frontier could not be advanced to {through} in {ADVANCE_ATTEMPTS} tries"
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn golden_v1_decodes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/golden/frontier-v1.json"
        );
        let bytes = std::fs::read(path).expect("schemas/golden/frontier-v1.json");
        assert_eq!(
            decode(3, 2, &bytes),
            Ok(Frontier {
                generation: 2,
                through: 4096,
                written: 4096,
            })
        );
        assert!(decode(3, 1, &bytes).is_err(), "another generation's key");
        assert!(decode(2, 2, &bytes).is_err(), "another shard's key");
        let f = Frontier {
            generation: 2,
            through: 4096,
            written: 4096,
        };
        assert_eq!(decode(3, 2, &encode(3, f)), Ok(f));
    }

    #[test]
    fn unknown_versions_and_fields_are_refused() {
        let future = br#"{"format_version":2,"shard":0,"generation":1,"through":5}"#;
        let err = decode(0, 1, future).expect_err("v2 refused");
        assert!(err.contains("format version 2"), "{err}");
        let extra = br#"{"format_version":1,"shard":0,"generation":1,"through":5,"x":1}"#;
        assert!(decode(0, 1, extra).is_err());
        assert!(decode(0, 1, b"[]").is_err());
    }

    #[tokio::test]
    async fn advance_writes_dense_generations_and_never_lowers_through() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let s = store.as_ref();
        assert_eq!(find_written(s, 0).await.expect("none"), Frontier::default());
        let first = advance(s, 0, 10).await.expect("advance to 10");
        assert_eq!(
            first,
            Frontier {
                generation: 1,
                through: 10,
                written: 10,
            }
        );
        // Already held: nothing written.
        assert_eq!(advance(s, 0, 7).await.expect("held"), first);
        let second = advance(s, 0, 20).await.expect("advance to 20");
        assert_eq!(second.generation, 2);
        // Another shard's chain is its own.
        assert_eq!(advance(s, 1, 3).await.expect("shard 1").generation, 1);
        // A stale cache finds both generations after it by following.
        assert_eq!(
            follow(s, 0, Frontier::default()).await.expect("follow"),
            second
        );
        assert_eq!(follow(s, 0, first).await.expect("follow"), second);
        assert_eq!(find_written(s, 0).await.expect("find"), second);
    }

    #[tokio::test]
    async fn racing_advances_both_end_held_and_the_chain_stays_dense() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (a, b) = tokio::join!(advance(store.as_ref(), 0, 5), advance(store.as_ref(), 0, 9));
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert!(a.holds(5) && b.holds(9), "{a:?} {b:?}");
        let newest = find_written(store.as_ref(), 0).await.expect("find");
        assert!(newest.holds(9), "{newest:?}");
        for g in 1..=newest.generation {
            assert!(read(store.as_ref(), 0, g).await.expect("read").is_some());
        }
        // A generation written by a process that lost the race with a lower `through` is never
        // taken below what an earlier generation said.
        store
            .put_opts(
                &keys::frontier(0, newest.generation + 1),
                PutPayload::from(encode(
                    0,
                    Frontier {
                        generation: newest.generation + 1,
                        through: 1,
                        written: 1,
                    },
                )),
                create_only(),
            )
            .await
            .expect("a low generation");
        assert!(
            follow(store.as_ref(), 0, Frontier::default())
                .await
                .expect("follow")
                .holds(9)
        );
    }

    #[tokio::test]
    async fn a_store_compacted_before_the_frontier_has_its_history_for_a_floor() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for key in [keys::history(0, 1, 12), keys::history_verified(0, 1, 12)] {
            store
                .put(&key, PutPayload::default())
                .await
                .expect("history");
        }
        assert_eq!(
            find_written(store.as_ref(), 0)
                .await
                .expect("written")
                .through,
            0
        );
        let f = find(store.as_ref(), 0).await.expect("find");
        assert!(f.holds(12) && !f.holds(13), "{f:?}");
        // Compaction does not take the floor for a frontier written.
        assert_eq!(
            advance(store.as_ref(), 0, 12)
                .await
                .expect("advance")
                .generation,
            1
        );
    }

    #[tokio::test]
    async fn the_newest_generation_is_found_across_buckets_with_two_listings() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let s = store.as_ref();
        // A long chain: generations 1..=2500 span buckets 0, 1 and 2.
        for g in 1..=2500u64 {
            let f = Frontier {
                generation: g,
                through: g * 10,
                written: g * 10,
            };
            store
                .put_opts(
                    &keys::frontier(0, g),
                    PutPayload::from(encode(0, f)),
                    create_only(),
                )
                .await
                .expect("generation");
        }
        let newest = find_written(s, 0).await.expect("find");
        assert_eq!((newest.generation, newest.written), (2500, 25_000));
        assert_eq!(
            advance(s, 0, 25_001).await.expect("advance").generation,
            2501
        );
    }

    #[tokio::test]
    async fn a_shard_nothing_compacted_starts_its_chain_once() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let s = store.as_ref();
        let (a, b) = tokio::join!(start(s, 0), start(s, 0));
        assert_eq!(a.expect("a").generation, 1);
        assert_eq!(b.expect("b").generation, 1);
        let f = find_written(s, 0).await.expect("find");
        assert_eq!((f.generation, f.through), (1, 0));
        assert!(!f.holds(1));
    }

    #[tokio::test]
    async fn a_damaged_generation_is_unavailable_not_skipped() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&keys::frontier(0, 1), PutPayload::from_static(b"{"))
            .await
            .expect("damaged");
        let err = follow(store.as_ref(), 0, Frontier::default())
            .await
            .expect_err("damaged");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("generation 1"), "{err}");
    }
}
