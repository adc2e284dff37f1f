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
}

impl StoreError {
    pub(crate) fn os(context: &'static str) -> impl FnOnce(object_store::Error) -> Self {
        move |source| StoreError::ObjectStore { context, source }
    }
}
