//! Finding the newest generation of a shard's chain of create-only records
//! ([`keepsake_store::keys::Chain`]: the compaction frontier, the ownership fence).
//!
//! Generation `g` is written only by a process that read `g - 1`, so generations are dense from
//! 1; they are grouped in buckets of [`keys::FRONTIER_BUCKET`], so the newest is found with two
//! listings (the buckets, then the newest bucket) however long the chain. A caller follows the
//! chain from there with GETs, so a generation written after the listings is found too.

use futures::TryStreamExt;
use keepsake_store::keys::{self, Chain, Key};
use object_store::ObjectStore;

use crate::error::{LogError, store_err};

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
