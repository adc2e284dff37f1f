//! The store descriptor, `keepsake.json`: written once, with a create-only put, by whichever
//! server opens an empty store first; read by everyone after.
//!
//! It fixes what must never change for the life of a store: the format version, the store id
//! (sync tokens carry it, so a device can tell a different store from an empty one) and the shard
//! count (users are routed by hash modulo it). A server configured with another shard count, or
//! a descriptor of a format version this build does not know, refuses to start.

use chrono::{DateTime, Utc};
use keepsake_model::{Clock, IdGenerator, StoreId};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::{create_only, keys};

/// The descriptor format version this build writes.
pub const DESCRIPTOR_VERSION: u32 = 1;
const KNOWN_VERSIONS: &[u32] = &[1];
/// Most shards a store may have.
pub const MAX_SHARDS: u32 = 4096;

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

/// Opens a store's descriptor, creating it if the store is empty.
///
/// `shard_count` is what this server is configured with; `None` accepts whatever the store has
/// (and creates with 1 shard). A descriptor with another count is refused: changing it would move
/// users to other shards.
pub async fn open_or_create_descriptor(
    store: &dyn ObjectStore,
    shard_count: Option<u32>,
    clock: &dyn Clock,
    ids: &dyn IdGenerator,
) -> Result<Descriptor, StoreError> {
    let existing = match read_descriptor(store).await? {
        Some(d) => d,
        None => {
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
            let body =
                serde_json::to_vec_pretty(&d).map_err(|e| StoreError::Descriptor(e.to_string()))?;
            match store
                .put_opts(&keys::descriptor(), PutPayload::from(body), create_only())
                .await
            {
                Ok(_) => return Ok(d),
                // Another server created it first: theirs is the store's descriptor.
                Err(object_store::Error::AlreadyExists { .. }) => read_descriptor(store)
                    .await?
                    .ok_or_else(|| StoreError::Descriptor("vanished after creation".into()))?,
                Err(e) => return Err(StoreError::os("create store descriptor")(e)),
            }
        }
    };
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
