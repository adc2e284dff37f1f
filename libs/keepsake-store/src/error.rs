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
