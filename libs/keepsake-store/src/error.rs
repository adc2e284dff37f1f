/// Opening or reading a store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL cannot be used.
    #[error("store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object store failed.
    #[error("{context}: {source}")]
    ObjectStore {
        /// What was being done ("read store descriptor").
        context: &'static str,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// The descriptor exists but cannot be used by this server.
    #[error("store descriptor keepsake.json: {0}")]
    Descriptor(String),
    /// The store holds Keepsake data but no descriptor: `keepsake.json` was lost. Creating one
    /// would start a new store on top of the old (a new store id, perhaps another shard count),
    /// so nothing was written.
    #[error(
        "the store's descriptor keepsake.json is missing, but the store holds Keepsake data \
         (found {found}): the descriptor was lost. Refusing to create a new one on top of the \
         data: a new store id would send every device into an initial sync, and another shard \
         count would look users up in shards that do not hold their data. Nothing was written. \
         To recover, check the data with `keepsake verify --store {store}`, then write the \
         descriptor back with `keepsake recover-descriptor --store {store} --store-id <the old \
         store id>` (every server start logged it as store_id; a device's sync token holds it \
         too: `--from-sync-token <token>`), or with `--new-store-id` if it cannot be found \
         (devices then sync again from the data that is there). See the README, \"Recovering a \
         lost store descriptor\""
    )]
    DescriptorMissing {
        /// One Keepsake object the store holds.
        found: String,
        /// How to name the store in the commands shown (`<STORE>` when the store's URL is not
        /// known; see [`StoreError::for_store`]).
        store: String,
    },
}

impl StoreError {
    /// Names the store in the recovery commands a [`StoreError::DescriptorMissing`] shows.
    pub fn for_store(self, url: &str) -> Self {
        match self {
            StoreError::DescriptorMissing { found, .. } => StoreError::DescriptorMissing {
                found,
                store: url.to_string(),
            },
            other => other,
        }
    }

    pub(crate) fn os(context: &'static str) -> impl FnOnce(object_store::Error) -> Self {
        move |source| StoreError::ObjectStore { context, source }
    }
}

/// Why a lost descriptor was not recovered (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store has a descriptor: there is nothing to recover, and it is never replaced.
    #[error(
        "the store has a descriptor keepsake.json (store id {store_id}, {shard_count} shards): \
         there is nothing to recover, and a descriptor is never replaced"
    )]
    DescriptorExists {
        /// Its store id.
        store_id: keepsake_model::StoreId,
        /// Its shard count.
        shard_count: u32,
    },
    /// The store holds no Keepsake data: a server creates its descriptor on its first start.
    #[error(
        "the store holds no Keepsake data: there is nothing to recover (a server creates a new \
         store's descriptor on its first start)"
    )]
    Empty,
    /// Data but no shard holding any: the shard count cannot be told from the store.
    #[error(
        "no shard holds any data, so the shard count cannot be told from the store: pass \
         --shards N, the count the store was created with"
    )]
    NoShards,
    /// A shard below the highest one holding data holds nothing, so the shards past the highest
    /// may hold nothing either: the shard count cannot be told from the store.
    #[error(
        "shard {highest} holds data but {} nothing, so shards past {highest} may hold nothing \
         too and the shard count cannot be told from the store (it is at least {}): pass \
         --shards N, the count the store was created with",
        shards_hold(missing),
        u64::from(*highest) + 1
    )]
    ShardsMissing {
        /// The highest shard holding data.
        highest: u32,
        /// The shards below it holding nothing.
        missing: Vec<u32>,
    },
    /// The operator's shard count leaves out a shard holding data.
    #[error(
        "shard {highest} holds data, so the store has at least {} shards, not {asked}",
        u64::from(*highest) + 1
    )]
    TooFewShards {
        /// The operator's count.
        asked: u32,
        /// The highest shard holding data.
        highest: u32,
    },
    /// The operator's shard count is not one a store may have.
    #[error("a shard count of {0} is outside 1..={max}", max = crate::keys::MAX_SHARDS)]
    ShardCountOutOfRange(u32),
    /// A shard beyond the most a store may have holds data.
    #[error(
        "shard {shard} holds data, beyond the {max} shards a store may have: not a store this \
         build can recover",
        max = crate::keys::MAX_SHARDS
    )]
    ShardBeyondMax {
        /// The shard.
        shard: u32,
    },
}

/// `shard 1 holds`, `shards 1, 3 and 4 hold` (the first ten, then how many more).
fn shards_hold(shards: &[u32]) -> String {
    let shown: Vec<String> = shards.iter().take(10).map(u32::to_string).collect();
    match (shown.split_last(), shards.len()) {
        (None, _) => "no shard holds".into(),
        (Some((last, [])), _) => format!("shard {last} holds"),
        (Some((last, rest)), n) if n == shown.len() => {
            format!("shards {} and {last} hold", rest.join(", "))
        }
        (Some(_), n) => format!(
            "shards {} and {} more hold",
            shown.join(", "),
            n - shown.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_shards_read_as_a_sentence() {
        let said = |m: Vec<u32>| {
            RecoverError::ShardsMissing {
                highest: 20,
                missing: m,
            }
            .to_string()
        };
        assert!(said(vec![0]).contains("but shard 0 holds nothing"));
        assert!(said(vec![0, 3, 4]).contains("but shards 0, 3 and 4 hold nothing"));
        assert!(
            said((0..15).collect())
                .contains("but shards 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 5 more hold nothing"),
            "{}",
            said((0..15).collect())
        );
        assert!(said(vec![0]).contains("it is at least 21"));
    }
}
