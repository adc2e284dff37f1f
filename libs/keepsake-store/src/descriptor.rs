//! The store descriptor, `keepsake.json`: written once, with a create-only put, by whichever
//! server opens an empty store first; read by everyone after.
//!
//! It fixes what must never change for the life of a store: the format version, the store id
//! (sync tokens carry it, so a device can tell a different store from an empty one) and the shard
//! count (users are routed by hash modulo it). A server configured with another shard count, or
//! a descriptor of a format version this build does not know, refuses to start.
//!
//! A store that holds Keepsake objects but no descriptor lost it: it is never given a new one
//! implicitly (that would be a new store, with a new id and perhaps another shard count, on top
//! of the old one's data). Opening refuses with [`StoreError::DescriptorMissing`], and an
//! operator writes the descriptor back on purpose (`keepsake recover-descriptor`, built on
//! [`crate::recover`]).

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use keepsake_model::{Clock, IdGenerator, StoreId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::{create_only, keys};

/// The descriptor format version this build writes.
pub const DESCRIPTOR_VERSION: u32 = 1;
const KNOWN_VERSIONS: &[u32] = &[1];
pub use crate::keys::MAX_SHARDS;

/// The contents of `keepsake.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The descriptor format version.
    pub format_version: u32,
    /// The store's identity.
    pub store_id: StoreId,
    /// How many shards users are hashed onto; fixed for the life of the store.
    pub shard_count: u32,
    /// When the store was created.
    pub created_at: DateTime<Utc>,
}

impl Descriptor {
    /// Parses descriptor bytes, refusing unknown versions.
    pub fn parse(bytes: &[u8]) -> Result<Self, StoreError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Descriptor(format!("not a descriptor: {e}")))?;
        if !KNOWN_VERSIONS.contains(&v.format_version) {
            return Err(StoreError::Descriptor(format!(
                "format version {} is not one this build reads ({KNOWN_VERSIONS:?}); \
                 upgrade Keepsake before opening this store",
                v.format_version
            )));
        }
        let d: Descriptor = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Descriptor(format!("malformed: {e}")))?;
        if d.shard_count == 0 || d.shard_count > MAX_SHARDS {
            return Err(StoreError::Descriptor(format!(
                "shard_count {} is outside 1..={MAX_SHARDS}",
                d.shard_count
            )));
        }
        Ok(d)
    }
}

/// Reads the descriptor; `None` when the store has none yet.
pub async fn read_descriptor(store: &dyn ObjectStore) -> Result<Option<Descriptor>, StoreError> {
    match store.get(&keys::descriptor()).await {
        Ok(got) => {
            let bytes = got
                .bytes()
                .await
                .map_err(StoreError::os("read store descriptor"))?;
            Descriptor::parse(&bytes).map(Some)
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(StoreError::os("read store descriptor")(e)),
    }
}

/// Writes `d` as the store's descriptor with a create-only PUT: `false` (nothing written) when
/// the store already has one.
pub async fn create_descriptor(
    store: &dyn ObjectStore,
    d: &Descriptor,
) -> Result<bool, StoreError> {
    let body = serde_json::to_vec_pretty(d).map_err(|e| StoreError::Descriptor(e.to_string()))?;
    match store
        .put_opts(&keys::descriptor(), PutPayload::from(body), create_only())
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(StoreError::os("create store descriptor")(e)),
    }
}

/// The first object found under one of the prefixes Keepsake writes to
/// ([`keys::data_prefixes`]: shards, devices, revocations, restores); `None` when the store
/// holds no Keepsake data.
///
/// One LIST per prefix, of which only the first page is read (and only its first entry used):
/// this runs when a store has no descriptor, i.e. on a store's first start. Anything under those
/// prefixes counts, even a name Keepsake would not write: when in doubt, the store is not empty.
/// Empty directories of a file store are not objects and do not count; nor does a file store's
/// `.secrets/` (local secrets, not store objects).
pub async fn find_data(store: &dyn ObjectStore) -> Result<Option<Path>, StoreError> {
    for prefix in keys::data_prefixes() {
        let first = store
            .list(Some(&prefix))
            .try_next()
            .await
            .map_err(StoreError::os(
                "list the store for data without a descriptor",
            ))?;
        if let Some(meta) = first {
            return Ok(Some(meta.location));
        }
    }
    Ok(None)
}

/// Opens a store's descriptor, creating it if the store is empty.
///
/// `shard_count` is what this server is configured with; `None` accepts whatever the store has
/// (and creates with 1 shard). A descriptor with another count is refused: changing it would move
/// users to other shards.
///
/// A descriptor is created only when the store holds nothing else ([`find_data`]); a store with
/// data and no descriptor is refused with [`StoreError::DescriptorMissing`], and nothing is
/// written. Two servers creating a store at once are settled by the create-only PUT (the loser
/// reads the winner's descriptor); a server that finds data written by a server which created the
/// descriptor after this one looked for it reads the descriptor again before refusing (servers
/// write data only once the descriptor exists). A store with a descriptor and nothing else (a
/// server stopped right after creating it) opens as usual.
pub async fn open_or_create_descriptor(
    store: &dyn ObjectStore,
    shard_count: Option<u32>,
    clock: &dyn Clock,
    ids: &dyn IdGenerator,
) -> Result<Descriptor, StoreError> {
    let existing = match read_descriptor(store).await? {
        Some(d) => d,
        None => {
            if let Some(found) = find_data(store).await? {
                // Created (then written to) by another server since the first read?
                match read_descriptor(store).await? {
                    Some(d) => return check_count(d, shard_count),
                    None => {
                        return Err(StoreError::DescriptorMissing {
                            found: found.to_string(),
                            store: "<STORE>".into(),
                        });
                    }
                }
            }
            let wanted = shard_count.unwrap_or(1);
            if wanted == 0 || wanted > MAX_SHARDS {
                return Err(StoreError::Descriptor(format!(
                    "shard count {wanted} is outside 1..={MAX_SHARDS}"
                )));
            }
            let d = Descriptor {
                format_version: DESCRIPTOR_VERSION,
                store_id: StoreId(ids.random()),
                shard_count: wanted,
                created_at: clock.now(),
            };
            if create_descriptor(store, &d).await? {
                return Ok(d);
            }
            // Another server created it first: theirs is the store's descriptor.
            read_descriptor(store)
                .await?
                .ok_or_else(|| StoreError::Descriptor("vanished after creation".into()))?
        }
    };
    check_count(existing, shard_count)
}

/// Refuses a descriptor whose shard count is not the one configured.
fn check_count(existing: Descriptor, shard_count: Option<u32>) -> Result<Descriptor, StoreError> {
    if let Some(wanted) = shard_count
        && wanted != existing.shard_count
    {
        return Err(StoreError::Descriptor(format!(
            "the store has {} shards but this server is configured with {wanted}; \
             the shard count is fixed when a store is created",
            existing.shard_count
        )));
    }
    Ok(existing)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keepsake_model::{ManualClock, SequentialIds};
    use object_store::memory::InMemory;
    use object_store::path::Path;

    use super::*;

    #[test]
    fn golden_v1_descriptor_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/golden/keepsake-v1.json"
        );
        let bytes = std::fs::read(path).expect("golden descriptor");
        let d = Descriptor::parse(&bytes).expect("v1 parses");
        assert_eq!(d.format_version, 1);
        assert_eq!(d.shard_count, 8);
        assert_eq!(
            d.store_id.to_string(),
            "6f1c1f9e-2b0a-4c53-9a43-1d2e3f405162"
        );
    }

    #[test]
    fn unknown_versions_and_bad_counts_are_refused() {
        let future =
            br#"{"format_version": 2, "store_id": "6f1c1f9e-2b0a-4c53-9a43-1d2e3f405162"}"#;
        let err = Descriptor::parse(future)
            .expect_err("v2 refused")
            .to_string();
        assert!(err.contains("format version 2"), "{err}");
        let zero = br#"{"format_version": 1, "store_id": "6f1c1f9e-2b0a-4c53-9a43-1d2e3f405162", "shard_count": 0, "created_at": "2026-11-24T10:00:00Z"}"#;
        assert!(Descriptor::parse(zero).is_err());
        assert!(Descriptor::parse(b"[]").is_err());
    }

    #[tokio::test]
    async fn a_store_with_data_and_no_descriptor_is_not_given_one() {
        let clock = ManualClock::at_epoch_2026();
        let ids = SequentialIds::new(1);
        for key in [
            "shards/0/segments/00000000000000000001.parquet",
            "shards/3/checkpoints/00000000000000000001.parquet",
            "shards/1/history/00000000000000000001-00000000000000000002.parquet",
            "devices/00000000-0000-0000-0000-000000000001/00000000-0000-0000-0000-000000000002.json",
            "revocations/00000000-0000-0000-0000-000000000002.json",
            "restores/00000000-0000-0000-0000-000000000003.json",
            // Not a name Keepsake writes, but under its prefixes: not an empty store either.
            "shards/x",
        ] {
            let store = InMemory::new();
            store
                .put(&Path::from(key), PutPayload::from_static(b"x"))
                .await
                .expect("put");
            for shards in [None, Some(1), Some(4)] {
                match open_or_create_descriptor(&store, shards, &clock, &ids).await {
                    Err(StoreError::DescriptorMissing { found, .. }) => assert_eq!(found, key),
                    other => panic!("{key} with {shards:?} shards: {other:?}"),
                }
            }
            assert_eq!(read_descriptor(&store).await.expect("read"), None, "{key}");
        }
        // Objects elsewhere are not Keepsake's: the store counts as empty.
        let store = InMemory::new();
        store
            .put(&Path::from("elsewhere/x"), PutPayload::from_static(b"x"))
            .await
            .expect("put");
        assert!(
            open_or_create_descriptor(&store, Some(2), &clock, &ids)
                .await
                .is_ok()
        );
    }

    #[test]
    fn the_refusal_says_what_happened_and_how_to_recover() {
        let err = StoreError::DescriptorMissing {
            found: "shards/0/segments/00000000000000000001.parquet".into(),
            store: "<STORE>".into(),
        }
        .for_store("s3://bucket/keepsake");
        let msg = err.to_string();
        for needed in [
            "keepsake.json is missing",
            "found shards/0/segments/00000000000000000001.parquet",
            "Nothing was written",
            "keepsake verify --store s3://bucket/keepsake",
            "keepsake recover-descriptor --store s3://bucket/keepsake --store-id",
            "--new-store-id",
        ] {
            assert!(msg.contains(needed), "{needed:?} in {msg}");
        }
    }

    #[tokio::test]
    async fn a_descriptor_with_nothing_else_opens() {
        // A server that created the descriptor and stopped before writing anything.
        let store = InMemory::new();
        let clock = ManualClock::at_epoch_2026();
        let ids = SequentialIds::new(1);
        let a = open_or_create_descriptor(&store, Some(2), &clock, &ids)
            .await
            .expect("create");
        let b = open_or_create_descriptor(&store, None, &clock, &ids)
            .await
            .expect("reopen an empty store with a descriptor");
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn servers_creating_a_store_at_once_agree_on_one_descriptor() {
        let store = Arc::new(InMemory::new());
        let clock = Arc::new(ManualClock::at_epoch_2026());
        let opened = futures::future::join_all((0..8u64).map(|n| {
            let store = store.clone();
            let clock = clock.clone();
            async move {
                let ids = SequentialIds::new(n + 1);
                open_or_create_descriptor(store.as_ref(), Some(2), clock.as_ref(), &ids).await
            }
        }))
        .await;
        let first = opened[0].as_ref().expect("open").clone();
        for d in &opened {
            assert_eq!(d.as_ref().expect("open"), &first);
        }
    }

    #[tokio::test]
    async fn created_once_then_fixed() {
        let store = Arc::new(InMemory::new());
        let clock = ManualClock::at_epoch_2026();
        let ids = SequentialIds::new(1);
        let a = open_or_create_descriptor(store.as_ref(), Some(4), &clock, &ids)
            .await
            .expect("create");
        assert_eq!(a.shard_count, 4);
        let b = open_or_create_descriptor(store.as_ref(), None, &clock, &ids)
            .await
            .expect("reopen");
        assert_eq!(a, b, "reopening never rewrites the descriptor");
        let err = open_or_create_descriptor(store.as_ref(), Some(8), &clock, &ids)
            .await
            .expect_err("another shard count is refused")
            .to_string();
        assert!(
            err.contains("has 4 shards") && err.contains("configured with 8"),
            "{err}"
        );
    }
}
