//! Finding the newest generation of a shard's chain of create-only records
//! ([`keepsake_store::keys::Chain`]: the compaction frontier, the ownership fence).
//!
//! Generation `g` is written only by a process that read `g - 1`, so generations are dense from
//! 1; they are grouped in buckets of [`keys::FRONTIER_BUCKET`], so the newest is found with two
//! listings (the buckets, then the newest bucket) however long the chain. A caller follows the
//! chain from there with GETs, so a generation written after the listings is found too.

use bytes::Bytes;
use futures::TryStreamExt;
use keepsake_store::keys::{self, Chain, Key};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{LogError, store_err};

/// Decodes a chain record of format `version` (`what` names it in errors), then checks that it
/// names the shard and generation of its key: another version, shard or generation is damage.
pub(crate) fn decode_record<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    version: u32,
    key: (u32, u64),
    named: impl Fn(&T) -> (u32, u64),
) -> Result<T, String> {
    #[derive(serde::Deserialize)]
    struct Version {
        format_version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.format_version != version {
        return Err(format!(
            "{what} format version {} is not one this build reads ({version})",
            v.format_version
        ));
    }
    let record: T = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let (shard, generation) = named(&record);
    if (shard, generation) != key {
        return Err(format!(
            "the record says shard {shard} generation {generation}, its key shard {} generation {}",
            key.0, key.1
        ));
    }
    Ok(record)
}

/// The bytes of generation `generation` of `shard`'s `chain`, `None` if it does not exist.
pub(crate) async fn read_link(
    store: &dyn ObjectStore,
    shard: u32,
    chain: Chain,
    generation: u64,
) -> Result<Option<Bytes>, LogError> {
    let path = keys::chain_link(shard, chain, generation);
    let got = match store.get(&path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(format!("read {path}"))(e)),
    };
    got.bytes()
        .await
        .map(Some)
        .map_err(store_err(format!("read {path}")))
}

/// The newest generation of `shard`'s `chain` the listings show (`None`: the chain is empty).
pub(crate) async fn newest_listed(
    store: &dyn ObjectStore,
    shard: u32,
    chain: Chain,
) -> Result<Option<u64>, LogError> {
    let what = || format!("list the {chain:?} chain of shard {shard}");
    let buckets = store
        .list_with_delimiter(Some(&keys::chain_prefix(shard, chain)))
        .await
        .map_err(store_err(what()))?;
    let Some(bucket) = buckets
        .common_prefixes
        .iter()
        .filter_map(|p| keys::parse_chain_bucket(p, chain))
        .filter(|(s, _)| *s == shard)
        .map(|(_, b)| b)
        .max()
    else {
        return Ok(None);
    };
    let listed: Vec<_> = store
        .list(Some(&keys::chain_bucket(shard, chain, bucket)))
        .try_collect()
        .await
        .map_err(store_err(what()))?;
    Ok(listed
        .iter()
        .filter_map(|m| match (chain, keys::parse(&m.location)?) {
            (
                Chain::Frontier,
                Key::Frontier {
                    shard: s,
                    generation,
                },
            )
            | (
                Chain::Owners,
                Key::Owner {
                    shard: s,
                    generation,
                },
            ) if s == shard => Some(generation),
            _ => None,
        })
        .max())
}
