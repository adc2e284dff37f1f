//! Footers of immutable objects, kept by a view for its loads, its searches and its shard's
//! checkpoints: checkpoint parts and filter runs (named by their writer and digest, so a footer
//! read once serves every later read of it), and history objects larger than a whole read.
//!
//! Invariant: a history object's footer is used only for the write of the object it was read
//! from: it is kept with the object's e-tag (asked with a HEAD before the footer is read, and
//! checked on every range read after), never for a store that gives none; a read that finds
//! the object gone or another one in its name forgets it ([`Footers::forget_history_holding`]).
//! A read that a kept footer alone answers (the user's rows are not there by its statistics,
//! or the object was recorded after the moment read up to) checks nothing: it need not, since
//! what a history object's name holds is fixed by the committed segments it names (written
//! create-only, each an exact copy of its segments), whichever write of it is there.

use std::sync::Arc;

use keepsake_segment::Manifest;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use super::{HistoryListed, Tag};

/// Footers kept by a view: of parts and filter runs, for its loads and its shard's checkpoints
/// (those the newest manifest names, trimmed by [`Footers::retain_named`], and of the one a
/// checkpoint read); and of history objects, for reads of one user's older history (those of
/// the view's history objects, trimmed by [`Footers::retain_history`]).
#[derive(Debug, Default)]
pub struct Footers {
    parts: std::sync::Mutex<std::collections::HashMap<(u64, u128), Arc<ObjectMeta>>>,
    history: std::sync::Mutex<std::collections::HashMap<(u64, u64), Arc<HistoryFooter>>>,
    /// Reads of a history object that found its footer here, and that read it from the store.
    pub history_hits: std::sync::atomic::AtomicU64,
    /// See `history_hits`.
    pub history_misses: std::sync::atomic::AtomicU64,
    /// The store gave a history object without an e-tag: none is kept, and no HEAD is sent
    /// again to find out.
    no_etags: std::sync::atomic::AtomicBool,
}

/// History objects whose footers a shard's view keeps at most; past it, the footer of the
/// object of the oldest segments goes first. Searches read newest first, in groups of 1 and 8
/// (then 64...): 16 cover what most of them read. A footer of 131,072 events (the default
/// `KEEPSAKE_COMPACTION_MAX_EVENTS`) is ~370 KB decoded (`make sustained`, 2026-12-03: 47
/// kept, 17 MB), so the number is held small rather than every object's kept: the shard's
/// history objects grow with its log.
pub const HISTORY_FOOTERS_KEPT: usize = 16;

/// A history object's footer and page index, with the write of the object it was read from.
#[derive(Debug)]
pub struct HistoryFooter {
    pub(super) size: u64,
    pub(super) tag: Tag,
    pub(super) loaded: ArrowReaderMetadata,
    /// When its first event was recorded (from its footer's key-value metadata, parsed once).
    pub(super) first_recorded_at: chrono::DateTime<chrono::Utc>,
}

impl Footers {
    pub(super) fn get(&self, key: (u64, u128)) -> Option<Arc<ObjectMeta>> {
        self.parts.lock().ok().and_then(|m| m.get(&key).cloned())
    }

    pub(super) fn put(&self, key: (u64, u128), meta: Arc<ObjectMeta>) {
        if let Ok(mut m) = self.parts.lock() {
            m.insert(key, meta);
        }
    }

    /// Keeps only the footers of parts `m` names (a new manifest was adopted).
    pub fn retain_named(&self, m: &Manifest) {
        if let Ok(mut kept) = self.parts.lock() {
            kept.retain(|(w, d), _| m.parts().any(|p| p.written_by == *w && p.digest == *d));
        }
    }

    /// The footer of history object `h`, if kept and of an object of its size.
    pub(super) fn history(&self, h: &HistoryListed) -> Option<Arc<HistoryFooter>> {
        use std::sync::atomic::Ordering::Relaxed;
        let kept = self
            .history
            .lock()
            .ok()
            .and_then(|m| m.get(&(h.first, h.last)).cloned())
            .filter(|f| f.size == h.size);
        match kept {
            Some(_) => self.history_hits.fetch_add(1, Relaxed),
            None => self.history_misses.fetch_add(1, Relaxed),
        };
        kept
    }

    pub(super) fn put_history(&self, h: &HistoryListed, footer: Arc<HistoryFooter>) {
        if let Ok(mut m) = self.history.lock() {
            let key = (h.first, h.last);
            if !m.contains_key(&key)
                && m.len() >= HISTORY_FOOTERS_KEPT
                && let Some(oldest) = m.keys().min().copied()
            {
                m.remove(&oldest);
            }
            m.insert(key, footer);
        }
    }

    /// False once the store gave a history object without an e-tag ([`Footers::no_etags`]).
    pub(super) fn keeps_history(&self) -> bool {
        !self.no_etags.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store gives no e-tags: history footers are read as if not kept from now on.
    pub(super) fn no_etags(&self) {
        self.no_etags
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets the footers of history objects holding segment `n`: a read found the object
    /// gone, or another in its name.
    pub fn forget_history_holding(&self, n: u64) {
        if let Ok(mut m) = self.history.lock() {
            m.retain(|(first, last), _| !(*first..=*last).contains(&n));
        }
    }

    /// Keeps only the footers of `history` (the view's history objects changed).
    pub fn retain_history(&self, history: &[HistoryListed]) {
        if let Ok(mut m) = self.history.lock() {
            m.retain(|k, f| {
                history
                    .iter()
                    .any(|h| (h.first, h.last) == *k && h.size == f.size)
            });
        }
    }

    /// History objects whose footers are kept.
    pub fn history_kept(&self) -> usize {
        self.history.lock().map_or(0, |m| m.len())
    }

    /// Approximate bytes held (the decoded footers and page indexes).
    pub fn bytes(&self) -> usize {
        let parts = self
            .parts
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
            .unwrap_or(0);
        let history = self
            .history
            .lock()
            .map(|m| m.values().map(|f| f.loaded.metadata().memory_size()).sum())
            .unwrap_or(0);
        parts + history
    }
}

/// An object's size and loaded footer (and a filter run's users' filter, read from it once).
#[derive(Debug)]
pub struct ObjectMeta {
    pub(super) size: u64,
    pub(super) loaded: ArrowReaderMetadata,
    pub(super) users: Option<keepsake_segment::UsersBloom>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The footer of a small segment, as kept for a history object of `size` bytes.
    fn footer(size: u64) -> Arc<HistoryFooter> {
        let start = chrono::DateTime::UNIX_EPOCH;
        let events = keepsake_model::fixtures::history(1, 1, 3, start);
        let meta = keepsake_segment::SegmentMeta {
            format_version: keepsake_segment::FORMAT_VERSION,
            shard: 0,
            segment: 1,
            writer_epoch: 1,
            batch_id: keepsake_model::BatchId(uuid::Uuid::nil()),
            event_count: events.len() as u64,
            first_recorded_at: start,
            last_recorded_at: start,
        };
        let bytes = keepsake_segment::encode(&events, &meta).expect("segment");
        let loaded = ArrowReaderMetadata::load(
            &bytes,
            parquet::arrow::arrow_reader::ArrowReaderOptions::new(),
        )
        .expect("footer");
        Arc::new(HistoryFooter {
            size,
            tag: Tag::of(Some("etag")),
            loaded,
            first_recorded_at: chrono::DateTime::UNIX_EPOCH,
        })
    }

    fn object(first: u64, last: u64, size: u64) -> HistoryListed {
        HistoryListed { first, last, size }
    }

    #[test]
    fn a_history_footer_is_kept_for_its_object_until_a_read_or_compaction_says_it_moved() {
        use std::sync::atomic::Ordering::Relaxed;
        let f = Footers::default();
        let (a, b, c) = (object(1, 10, 100), object(11, 20, 200), object(21, 30, 300));
        for h in [a, b, c] {
            assert!(f.history(&h).is_none());
            f.put_history(&h, footer(h.size));
        }
        assert!(f.history(&b).is_some());
        // Another object of the same segments (another size) is not read through it.
        assert!(f.history(&object(11, 20, 201)).is_none());
        assert_eq!(
            (f.history_hits.load(Relaxed), f.history_misses.load(Relaxed)),
            (1, 4)
        );
        assert!(f.bytes() > 0);
        // A read found segment 15's object gone, or another write in its name.
        f.forget_history_holding(15);
        assert!(f.history(&b).is_none());
        assert_eq!(f.history_kept(), 2);
        // Compaction merged 1..=10 and 11..=20 into one: only the view's objects are kept.
        f.retain_history(&[object(1, 20, 250), c]);
        assert_eq!(f.history_kept(), 1);
        assert!(f.history(&c).is_some());
        // Kept for c's size only: a listed object of another size is another write.
        f.retain_history(&[object(21, 30, 301)]);
        assert_eq!(f.history_kept(), 0);
        // A store without e-tags: nothing kept, and nothing asked again.
        assert!(f.keeps_history());
        f.no_etags();
        assert!(!f.keeps_history());
    }

    #[test]
    fn at_most_so_many_history_footers_are_kept_the_oldest_segments_first_out() {
        let f = Footers::default();
        let n = HISTORY_FOOTERS_KEPT as u64;
        for i in 0..n {
            f.put_history(&object(i * 10 + 1, i * 10 + 10, 1), footer(1));
        }
        assert_eq!(f.history_kept(), HISTORY_FOOTERS_KEPT);
        // Put again: nothing else goes.
        f.put_history(&object(1, 10, 1), footer(1));
        assert_eq!(f.history_kept(), HISTORY_FOOTERS_KEPT);
        assert!(f.history(&object(1, 10, 1)).is_some());
        // One more: the object of the oldest segments goes.
        f.put_history(&object(n * 10 + 1, n * 10 + 10, 1), footer(1));
        assert_eq!(f.history_kept(), HISTORY_FOOTERS_KEPT);
        assert!(f.history(&object(1, 10, 1)).is_none());
        assert!(f.history(&object(11, 20, 1)).is_some());
    }
}
