//! Footers of immutable objects, kept by a view for its loads, its searches and its shard's
//! checkpoints: checkpoint parts and filter runs (named by their writer and digest, so a footer
//! read once serves every later read of it), and history objects larger than a whole read.
//!
//! Invariant: the footers of parts and runs kept never hold more than their bound
//! ([`Footers::bounded`]; a view's is its share of `LogConfig::part_footer_bytes`): past it,
//! the least recently used go, and a read that finds none reads it from the store again. A
//! footer costs ~57 bytes a user of its part, so without a bound the views' indexes grew with
//! the users of the store (`docs/BENCHMARKS.md`, "Scale"); with it they are a fixed overhead.
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
    parts: std::sync::Mutex<PartsKept>,
    history: std::sync::Mutex<std::collections::HashMap<(u64, u64), Arc<HistoryFooter>>>,
    /// Reads of a part or run that found its footer here.
    pub part_hits: std::sync::atomic::AtomicU64,
    /// Reads of a part or run that did not, and read it from the store.
    pub part_misses: std::sync::atomic::AtomicU64,
    /// Footers of parts and runs let go to stay within the bound.
    pub part_evictions: std::sync::atomic::AtomicU64,
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

/// The footers of parts and runs kept, by (writer, digest), within `bound` bytes.
#[derive(Debug)]
struct PartsKept {
    kept: std::collections::HashMap<(u64, u128), KeptPart>,
    /// Sum of the kept footers' bytes.
    bytes: usize,
    bound: usize,
    /// Uses so far: a footer's `used` is the use that last found or put it.
    uses: u64,
}

impl Default for PartsKept {
    fn default() -> Self {
        Self {
            kept: Default::default(),
            bytes: 0,
            bound: usize::MAX,
            uses: 0,
        }
    }
}

#[derive(Debug)]
struct KeptPart {
    meta: Arc<ObjectMeta>,
    bytes: usize,
    used: u64,
}

impl PartsKept {
    /// Lets the least recently used footers go until the kept fit the bound; returns how many.
    fn trim(&mut self) -> u64 {
        let mut gone = 0;
        while self.bytes > self.bound {
            let Some(oldest) = self
                .kept
                .iter()
                .min_by_key(|(_, k)| k.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(k) = self.kept.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(k.bytes);
                gone += 1;
            }
        }
        gone
    }
}

impl Footers {
    /// Footers whose parts' and runs' footers kept hold at most `bytes` (history objects' are
    /// bounded by number: [`HISTORY_FOOTERS_KEPT`]).
    pub fn bounded(bytes: usize) -> Self {
        let f = Self::default();
        f.set_bound(bytes);
        f
    }

    /// Sets the bound on the parts' and runs' footers kept, letting go of what is past it.
    pub fn set_bound(&self, bytes: usize) {
        if let Ok(mut p) = self.parts.lock() {
            p.bound = bytes;
            let gone = p.trim();
            self.part_evictions
                .fetch_add(gone, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(super) fn get(&self, key: (u64, u128)) -> Option<Arc<ObjectMeta>> {
        use std::sync::atomic::Ordering::Relaxed;
        let found = self.parts.lock().ok().and_then(|mut p| {
            p.uses += 1;
            let now = p.uses;
            p.kept.get_mut(&key).map(|k| {
                k.used = now;
                k.meta.clone()
            })
        });
        match found {
            Some(_) => self.part_hits.fetch_add(1, Relaxed),
            None => self.part_misses.fetch_add(1, Relaxed),
        };
        found
    }

    /// Keeps `meta`, read from the store, letting the least recently used go past the bound;
    /// a footer larger than the bound alone is not kept.
    pub(super) fn put(&self, key: (u64, u128), meta: Arc<ObjectMeta>) {
        let bytes = meta.bytes();
        if let Ok(mut p) = self.parts.lock() {
            if bytes > p.bound {
                return;
            }
            p.uses += 1;
            let used = p.uses;
            if let Some(old) = p.kept.insert(key, KeptPart { meta, bytes, used }) {
                p.bytes = p.bytes.saturating_sub(old.bytes);
            }
            p.bytes = p.bytes.saturating_add(bytes);
            let gone = p.trim();
            self.part_evictions
                .fetch_add(gone, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Keeps only the footers of parts `m` names (a new manifest was adopted).
    pub fn retain_named(&self, m: &Manifest) {
        if let Ok(mut p) = self.parts.lock() {
            p.kept
                .retain(|(w, d), _| m.parts().any(|x| x.written_by == *w && x.digest == *d));
            p.bytes = p.kept.values().map(|k| k.bytes).sum();
        }
    }

    /// Parts' and runs' footers kept, and their bytes.
    pub fn parts_kept(&self) -> (usize, usize) {
        self.parts
            .lock()
            .map_or((0, 0), |p| (p.kept.len(), p.bytes))
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
        let parts = self.parts_kept().1;
        let history = self
            .history
            .lock()
            .map(|m| m.values().map(|f| f.loaded.metadata().memory_size()).sum())
            .unwrap_or(0);
        parts + history
    }
}

/// The parts' and runs' footers of a log's views, summed ([`crate::Log::part_footers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartFooters {
    /// Footers kept.
    pub kept: usize,
    /// Their approximate bytes.
    pub bytes: usize,
    /// Reads that found the footer kept.
    pub hits: u64,
    /// Reads that read it from the store.
    pub misses: u64,
    /// Footers let go to stay within the bound.
    pub evictions: u64,
}

/// An object's size and loaded footer (and a filter run's users' filter, read from it once).
#[derive(Debug)]
pub struct ObjectMeta {
    pub(super) size: u64,
    pub(super) loaded: ArrowReaderMetadata,
    pub(super) users: Option<keepsake_segment::UsersBloom>,
}

impl ObjectMeta {
    /// Approximate bytes held: the decoded footer and page index, and the users' filter.
    pub fn bytes(&self) -> usize {
        self.loaded.metadata().memory_size()
            + self
                .users
                .as_ref()
                .map_or(0, keepsake_segment::UsersBloom::bytes)
    }
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

    /// A part's footer, as kept for its loads.
    fn part() -> Arc<ObjectMeta> {
        let f = footer(1);
        Arc::new(ObjectMeta {
            size: f.size,
            loaded: f.loaded.clone(),
            users: None,
        })
    }

    #[test]
    fn parts_footers_stay_within_their_bound_the_least_recently_used_going_first() {
        use std::sync::atomic::Ordering::Relaxed;
        let one = part().bytes();
        assert!(one > 0);
        let f = Footers::bounded(2 * one + one / 2);
        f.put((1, 1), part());
        f.put((2, 2), part());
        assert_eq!(f.parts_kept(), (2, 2 * one));
        // 1 is used after 2: 2 goes first when 3 comes.
        assert!(f.get((1, 1)).is_some());
        f.put((3, 3), part());
        assert_eq!(f.parts_kept(), (2, 2 * one));
        assert!(f.get((2, 2)).is_none());
        assert!(f.get((1, 1)).is_some());
        assert!(f.get((3, 3)).is_some());
        assert_eq!(
            (
                f.part_hits.load(Relaxed),
                f.part_misses.load(Relaxed),
                f.part_evictions.load(Relaxed)
            ),
            (3, 1, 1)
        );
        // Put again (two reads of one part at once): counted once.
        f.put((3, 3), part());
        assert_eq!(f.parts_kept(), (2, 2 * one));
        assert_eq!(f.bytes(), 2 * one);
        // A lower bound lets go at once; a footer larger than the bound alone is not kept.
        f.set_bound(one / 2);
        assert_eq!(f.parts_kept(), (0, 0));
        assert_eq!(f.part_evictions.load(Relaxed), 3);
        f.put((4, 4), part());
        assert_eq!(f.parts_kept(), (0, 0));
        assert!(f.get((4, 4)).is_none());
        // Unbounded by default.
        let all = Footers::default();
        for i in 0..100 {
            all.put((i, 0), part());
        }
        assert_eq!(all.parts_kept(), (100, 100 * one));
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
