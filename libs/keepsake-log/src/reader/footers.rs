//! Footers of immutable objects (checkpoint parts, filter runs), kept by a view for its loads
//! and its shard's checkpoints: an object is named by its writer and digest, so a footer read
//! once serves every later read of it.

use std::sync::Arc;

use keepsake_segment::Manifest;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

/// Footers of parts and filter runs, kept by a view for its loads and its shard's checkpoints:
/// those the newest manifest names (trimmed by [`Footers::retain_named`]), and of the one a
/// checkpoint read.
#[derive(Debug, Default)]
pub struct Footers(std::sync::Mutex<std::collections::HashMap<(u64, u128), Arc<ObjectMeta>>>);

impl Footers {
    pub(super) fn get(&self, key: (u64, u128)) -> Option<Arc<ObjectMeta>> {
        self.0.lock().ok().and_then(|m| m.get(&key).cloned())
    }

    pub(super) fn put(&self, key: (u64, u128), meta: Arc<ObjectMeta>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, meta);
        }
    }

    /// Keeps only the footers of parts `m` names (a new manifest was adopted).
    pub fn retain_named(&self, m: &Manifest) {
        if let Ok(mut kept) = self.0.lock() {
            kept.retain(|(w, d), _| m.parts().any(|p| p.written_by == *w && p.digest == *d));
        }
    }

    /// Approximate bytes held (the decoded footers and page indexes).
    pub fn bytes(&self) -> usize {
        self.0
            .lock()
            .map(|m| {
                m.values()
                    .map(|v| {
                        v.loaded.metadata().memory_size()
                            + v.users
                                .as_ref()
                                .map_or(0, keepsake_segment::UsersBloom::bytes)
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// An object's size and loaded footer (and a filter run's users' filter, read from it once).
#[derive(Debug)]
pub struct ObjectMeta {
    pub(super) size: u64,
    pub(super) loaded: ArrowReaderMetadata,
    pub(super) users: Option<keepsake_segment::UsersBloom>,
}
