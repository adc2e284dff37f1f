//! Where a shard's segments are: listing segment, history and checkpoint objects, and the
//! [`Layout`] that says which object each segment number is read from.
//!
//! Invariants: segment `n` is read from its own object while that exists, else from the
//! narrowest history object holding it (a relied-on history object wins: compaction keeps both
//! readings equal). A listing that shows a missing number followed by later ones is a
//! [`LogError::Gap`], never a silently shorter log; a listing that ends before a segment the
//! caller knows was committed is listed again ([`list_layout_reaching`]).

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use keepsake_store::keys::{self, Key};
use object_store::ObjectStore;

use super::Tag;
use crate::error::{LogError, store_err};

/// A segment as listed: its number and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Segment number.
    pub n: u64,
    /// Object size.
    pub size: u64,
    /// When the object was written.
    pub modified: DateTime<Utc>,
    /// Which write of the object was listed.
    pub tag: Tag,
}

/// Lists the numbered objects of a shard under `prefix` (segments or checkpoints), ascending by
/// number, with their sizes; anything else found there is ignored.
pub(super) async fn list_numbered(
    store: &dyn ObjectStore,
    prefix: object_store::path::Path,
    what: &str,
    shard: u32,
    number: impl Fn(Key) -> Option<u64>,
) -> Result<Vec<Listed>, LogError> {
    let metas: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(store_err(format!("list {what} of shard {shard}")))?;
    let mut listed: Vec<Listed> = metas
        .iter()
        .filter_map(|m| {
            let n = number(keys::parse(&m.location)?)?;
            Some(Listed {
                n,
                size: m.size,
                modified: m.last_modified,
                tag: Tag::of_meta(m),
            })
        })
        .collect();
    listed.sort_by_key(|l| l.n);
    Ok(listed)
}

/// A history object as listed: the segments it holds and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryListed {
    /// The first segment it holds.
    pub first: u64,
    /// The last segment it holds.
    pub last: u64,
    /// Object size.
    pub size: u64,
}

impl HistoryListed {
    /// True when it holds segment `n`.
    pub fn holds(&self, n: u64) -> bool {
        (self.first..=self.last).contains(&n)
    }
}

/// Where one segment's events are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Its own object, of this size, as seen (listed or written).
    Segment(u64, Tag),
    /// A history object.
    History(HistoryListed),
}

/// Part of a read: a segment object, or the rows of segments `lo..=hi` in a history object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Segment `n`, of `size` bytes.
    Segment {
        /// Its number.
        n: u64,
        /// Its size.
        size: u64,
        /// Which write of the object was seen: a read that finds another (the number was
        /// compacted and a writer that was behind put a stray there since) reads the number
        /// from where a new listing says it is.
        tag: Tag,
    },
    /// The rows of segments `lo..=hi` of a history object.
    History {
        /// The object.
        object: HistoryListed,
        /// The first segment wanted.
        lo: u64,
        /// The last segment wanted.
        hi: u64,
    },
}

impl Source {
    /// The object's key.
    pub fn key(&self, shard: u32) -> object_store::path::Path {
        match self {
            Source::Segment { n, .. } => keys::segment(shard, *n),
            Source::History { object, .. } => keys::history(shard, object.first, object.last),
        }
    }

    /// The segment numbers it stands for.
    pub fn numbers(&self) -> std::ops::RangeInclusive<u64> {
        match *self {
            Source::Segment { n, .. } => n..=n,
            Source::History { lo, hi, .. } => lo..=hi,
        }
    }

    /// The number errors name: the segment, or the first wanted from a history object.
    pub(super) fn label(&self) -> u64 {
        *self.numbers().start()
    }

    pub(super) fn size(&self) -> u64 {
        match self {
            Source::Segment { size, .. } => *size,
            Source::History { object, .. } => object.size,
        }
    }

    pub(super) fn is_history(&self) -> bool {
        matches!(self, Source::History { .. })
    }
}

/// The sources of segments `numbers` (ascending), given where each one is: the wanted numbers
/// up to the end of a history object make one source. `Err(n)`: segment `n` is nowhere.
pub fn sources_of(
    numbers: impl IntoIterator<Item = u64>,
    place: impl Fn(u64) -> Option<Place>,
) -> Result<Vec<Source>, u64> {
    let mut first_missing = None;
    let out = collect_sources(numbers, place, |n| {
        first_missing.get_or_insert(n);
    });
    match first_missing {
        Some(n) => Err(n),
        None => Ok(out),
    }
}

/// [`sources_of`], calling `missing` for each number that is nowhere (and leaving it out).
///
/// Once a number is read from a history object, the wanted numbers up to that object's end are
/// too, without asking `place` again: the object was chosen because no segment object or
/// narrower history object holds the number, so it is verified (an unverified one's sources are
/// all still there) and holds exact copies of all its segments. This keeps resolving a long
/// compacted range one lookup per object, not one per segment.
pub(super) fn collect_sources(
    numbers: impl IntoIterator<Item = u64>,
    place: impl Fn(u64) -> Option<Place>,
    mut missing: impl FnMut(u64),
) -> Vec<Source> {
    let mut out: Vec<Source> = Vec::new();
    for n in numbers {
        if let Some(Source::History { object, hi, .. }) = out.last_mut()
            && n <= object.last
        {
            *hi = n;
            continue;
        }
        match place(n) {
            Some(Place::Segment(size, tag)) => out.push(Source::Segment { n, size, tag }),
            Some(Place::History(object)) => out.push(Source::History {
                object,
                lo: n,
                hi: n,
            }),
            None => missing(n),
        }
    }
    out
}

/// The narrowest history object holding segment `n`. While a compaction that merges history
/// objects is unfinished, a wider object and the narrower ones it was made from are both
/// there; the narrower was verified before it was relied on, the wider maybe not yet.
pub fn narrowest(history: &[HistoryListed], n: u64) -> Option<HistoryListed> {
    history
        .iter()
        .filter(|h| h.holds(n))
        .min_by_key(|h| h.last - h.first)
        .copied()
}

/// Where a shard's segments are: segment objects, and history objects holding ranges of them.
///
/// Segment `n` is read from its own object when that exists, else from the narrowest history
/// object holding it: a segment object is deleted only once a history object holding it has
/// been written, read back and compared with it, so whichever is read, the events are the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Segment objects, ascending.
    pub segments: Vec<Listed>,
    /// History objects, ascending by first segment.
    pub history: Vec<HistoryListed>,
    /// `(first, last)` of the history objects marked verified (`keys::history_verified`).
    pub verified: Vec<(u64, u64)>,
}

impl Layout {
    /// The last segment (0 for an empty log).
    pub fn head(&self) -> u64 {
        let s = self.segments.last().map_or(0, |l| l.n);
        let h = self.history.iter().map(|h| h.last).max().unwrap_or(0);
        s.max(h)
    }

    /// Where segment `n` is read from: the narrowest history object holding it that readers
    /// already rely on; else its own object; else the narrowest history object holding it.
    ///
    /// A relied-on history object wins over a segment object of the same number because a
    /// segment object there is either a source not yet deleted (the same events) or a late
    /// write by a writer that was behind, into a number compaction had freed: such a writer
    /// sees the history object after its PUT, never acknowledges, and deletes its object, but
    /// until it does, only the history object holds what was acknowledged under that number.
    pub fn place(&self, n: u64) -> Option<Place> {
        let relied = self
            .history
            .iter()
            .filter(|h| h.holds(n) && self.relied_on(h))
            .min_by_key(|h| h.last - h.first);
        if let Some(h) = relied {
            return Some(Place::History(*h));
        }
        match self.segments.binary_search_by_key(&n, |l| l.n) {
            Ok(i) => Some(Place::Segment(self.segments[i].size, self.segments[i].tag)),
            Err(_) => narrowest(&self.history, n).map(Place::History),
        }
    }

    /// True when some segment of `h` is in no segment object and no narrower history object:
    /// compaction deletes the sources of a history object only after reading it back and
    /// comparing it with them, so such an object was verified and readers depend on it.
    pub fn relied_on(&self, h: &HistoryListed) -> bool {
        // Marked verified: a stray in each of its numbers (a writer behind whose confirmation
        // failed) must not make it look unverified.
        if self.verified.contains(&(h.first, h.last)) {
            return true;
        }
        let inner: Vec<&HistoryListed> = self
            .history
            .iter()
            .filter(|x| *x != h && h.first <= x.first && x.last <= h.last)
            .collect();
        let (mut next, mut i) = (h.first, 0);
        while next <= h.last {
            if let Some(x) = inner.get(i)
                && x.first <= next
            {
                next = next.max(x.last + 1);
                i += 1;
                continue;
            }
            match self.segments.binary_search_by_key(&next, |l| l.n) {
                Ok(mut j) => {
                    // Over the run of segment objects from here.
                    while self.segments.get(j).is_some_and(|l| l.n == next) && next <= h.last {
                        next += 1;
                        j += 1;
                    }
                }
                Err(_) => return true,
            }
        }
        false
    }

    /// The sources of segments `numbers` (ascending).
    pub fn sources(
        &self,
        shard: u32,
        numbers: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<Source>, LogError> {
        sources_of(numbers, |n| self.place(n)).map_err(|missing| LogError::Gap { shard, missing })
    }

    /// The sources of every segment from 1 to the head that is somewhere, and the first number
    /// that is nowhere (what verify reads and reports).
    pub fn all_sources(&self) -> (Vec<Source>, Option<u64>) {
        let mut first_missing = None;
        let sources = collect_sources(
            1..=self.head(),
            |n| self.place(n),
            |n| {
                first_missing.get_or_insert(n);
            },
        );
        (sources, first_missing)
    }

    /// The first number in `1..=head` that is nowhere.
    fn gap(&self) -> Option<u64> {
        let mut covered: Vec<(u64, u64)> = self
            .segments
            .iter()
            .map(|l| (l.n, l.n))
            .chain(self.history.iter().map(|h| (h.first, h.last)))
            .collect();
        covered.sort_unstable();
        let mut next = 1;
        for (a, b) in covered {
            if a > next {
                return Some(next);
            }
            next = next.max(b + 1);
        }
        None
    }
}

/// Lists a shard's segment objects and history objects, checking that every segment from 1 to
/// the last is in one or the other.
///
/// A listing taken while segments are being written can, on some stores (seen on the local
/// file system under heavy writes), omit an object that exists; and a compaction may delete
/// segments between the two listings. So a gap is listed again before it is reported. A real
/// gap (a lost segment) is there every time.
pub async fn list_layout(store: &dyn ObjectStore, shard: u32) -> Result<Layout, LogError> {
    list_layout_reaching(store, shard, 0).await
}

/// [`list_layout`] by a caller that knows segment `reach` was committed: a listing that ends
/// before it shows the log as it was, not where it ends (a store whose listings lag behind its
/// writes, or one that missed the newest object), so the store is listed again. Still short
/// after every listing: `Unavailable`, which the caller may retry; never a gap, which would
/// refuse for good a push or a read of segments that exist.
pub async fn list_layout_reaching(
    store: &dyn ObjectStore,
    shard: u32,
    reach: u64,
) -> Result<Layout, LogError> {
    list_layout_within(store, shard, reach, None).await
}

/// [`list_layout_reaching`] `upto` by a reader that needs segments up to `upto` and none after
/// (a checkpoint after `upto`): only numbers up to `upto` must be there, and the layout holds
/// nothing past them. A busy shard adds segments while the store is listed, and a listing of a
/// directory being written to (the local file system's) can show a later file and miss an
/// earlier one: past `upto` that is no gap to this reader, and failing on it stopped every
/// checkpoint of a busy shard.
pub async fn list_layout_upto(
    store: &dyn ObjectStore,
    shard: u32,
    upto: u64,
) -> Result<Layout, LogError> {
    list_layout_within(store, shard, upto, Some(upto)).await
}

async fn list_layout_within(
    store: &dyn ObjectStore,
    shard: u32,
    reach: u64,
    bound: Option<u64>,
) -> Result<Layout, LogError> {
    const LISTINGS: u32 = 6;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listed = list_layout_once_within(store, shard, bound).await;
        let short = match &listed {
            Err(LogError::Gap { missing, .. }) => Some(*missing),
            Ok(layout) if layout.head() < reach => Some(layout.head() + 1),
            _ => None,
        };
        match short {
            // 20, 40, ... 320 ms: a directory that compaction is emptying lists unreliably for
            // a while on the local file system.
            Some(missing) if attempt < LISTINGS => {
                tracing::warn!(
                    shard,
                    missing,
                    reach,
                    attempt,
                    "a listing showed a gap or ended early; listing again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
            }
            Some(missing) if listed.is_ok() => {
                return Err(LogError::Unavailable {
                    shard,
                    reason: format!(
                        "the store's listings end before segment {missing}, and segment {reach} was committed; retry"
                    ),
                });
            }
            _ => return listed,
        }
    }
}

/// One listing of a shard's segments and history objects, keeping only what holds numbers up
/// to `bound` when there is one; a gap among what it keeps is `Gap`.
async fn list_layout_once_within(
    store: &dyn ObjectStore,
    shard: u32,
    bound: Option<u64>,
) -> Result<Layout, LogError> {
    // Segments first: a segment missing from this listing was deleted before it, so the history
    // object holding it was written before it too, and the history listing that follows shows
    // it (or the wider object that replaced it, written before it was deleted).
    let segments = list_numbered(
        store,
        keys::segments_prefix(shard),
        "segments",
        shard,
        |k| match k {
            Key::Segment { shard: s, n } if s == shard => Some(n),
            _ => None,
        },
    )
    .await?;
    let (history, verified) = list_history_marked(store, shard).await?;
    let mut layout = Layout {
        segments,
        history,
        verified,
    };
    if let Some(bound) = bound {
        layout.segments.retain(|l| l.n <= bound);
        layout.history.retain(|h| h.first <= bound);
    }
    match layout.gap() {
        Some(missing) => Err(LogError::Gap { shard, missing }),
        None => Ok(layout),
    }
}

/// A shard's history objects, ascending by first segment, and the `(first, last)` of those
/// marked verified (one listing: the marks live beside the objects).
pub async fn list_history_marked(
    store: &dyn ObjectStore,
    shard: u32,
) -> Result<(Vec<HistoryListed>, Vec<(u64, u64)>), LogError> {
    let metas: Vec<_> = store
        .list(Some(&keys::history_prefix(shard)))
        .try_collect()
        .await
        .map_err(store_err(format!("list history of shard {shard}")))?;
    let mut objects = Vec::new();
    let mut verified = Vec::new();
    for m in &metas {
        match keys::parse(&m.location) {
            Some(Key::History {
                shard: s,
                first,
                last,
            }) if s == shard => objects.push(HistoryListed {
                first,
                last,
                size: m.size,
            }),
            Some(Key::HistoryVerified {
                shard: s,
                first,
                last,
            }) if s == shard => verified.push((first, last)),
            _ => {}
        }
    }
    objects.sort_by_key(|h| (h.first, h.last));
    Ok((objects, verified))
}

/// A shard's history objects, ascending by first segment.
pub async fn list_history(
    store: &dyn ObjectStore,
    shard: u32,
) -> Result<Vec<HistoryListed>, LogError> {
    let metas: Vec<_> = store
        .list(Some(&keys::history_prefix(shard)))
        .try_collect()
        .await
        .map_err(store_err(format!("list history of shard {shard}")))?;
    let mut out: Vec<HistoryListed> = metas
        .iter()
        .filter_map(|m| match keys::parse(&m.location)? {
            Key::History {
                shard: s,
                first,
                last,
            } if s == shard => Some(HistoryListed {
                first,
                last,
                size: m.size,
            }),
            _ => None,
        })
        .collect();
    out.sort_by_key(|h| (h.first, h.last));
    Ok(out)
}

/// Lists a shard's segment objects in order (see [`list_layout`]: the segments missing from
/// it are held by history objects).
pub async fn list_segments(store: &dyn ObjectStore, shard: u32) -> Result<Vec<Listed>, LogError> {
    Ok(list_layout(store, shard).await?.segments)
}

/// Which form a listed checkpoint is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckpointForm {
    /// One object (formats 1-3).
    Whole,
    /// A manifest over parts (format 4).
    Manifest,
}

/// A checkpoint as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointListed {
    /// The last segment it includes.
    pub n: u64,
    /// Its object's size (the manifest's, for format 4).
    pub size: u64,
    /// When it was written.
    pub modified: DateTime<Utc>,
    /// Its form.
    pub form: CheckpointForm,
}

/// Lists a shard's checkpoints in both forms, ascending by number (a number written in both
/// forms, by two versions side by side, is listed twice).
pub async fn list_checkpoint_objects(
    store: &dyn ObjectStore,
    shard: u32,
) -> Result<Vec<CheckpointListed>, LogError> {
    let metas: Vec<_> = store
        .list(Some(&keys::checkpoints_prefix(shard)))
        .try_collect()
        .await
        .map_err(store_err(format!("list checkpoints of shard {shard}")))?;
    let mut listed: Vec<CheckpointListed> = metas
        .iter()
        .filter_map(|m| {
            let (n, form) = match keys::parse(&m.location)? {
                Key::Checkpoint { shard: s, n } if s == shard => (n, CheckpointForm::Whole),
                Key::Manifest { shard: s, n } if s == shard => (n, CheckpointForm::Manifest),
                _ => return None,
            };
            Some(CheckpointListed {
                n,
                size: m.size,
                modified: m.last_modified,
                form,
            })
        })
        .collect();
    listed.sort_by_key(|l| (l.n, l.form));
    Ok(listed)
}

/// Lists a shard's checkpoints (segment numbers), ascending, each once.
pub async fn list_checkpoints(store: &dyn ObjectStore, shard: u32) -> Result<Vec<u64>, LogError> {
    let mut ns: Vec<u64> = list_checkpoint_objects(store, shard)
        .await?
        .into_iter()
        .map(|l| l.n)
        .collect();
    ns.dedup();
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> Listed {
        Listed {
            n,
            size: 100 + n,
            modified: DateTime::UNIX_EPOCH,
            tag: Tag::ANY,
        }
    }

    fn hist(first: u64, last: u64) -> HistoryListed {
        HistoryListed {
            first,
            last,
            size: 1000 * first + last,
        }
    }

    #[test]
    fn a_segment_is_read_from_a_relied_on_history_object_else_its_own_else_the_narrowest() {
        // 1..=4 compacted twice over (an unfinished merge), 3 still also a segment, 5..=6 plain.
        let layout = Layout {
            segments: vec![seg(3), seg(5), seg(6)],
            history: vec![hist(1, 4), hist(1, 2), hist(3, 4)],
            ..Layout::default()
        };
        assert_eq!(layout.head(), 6);
        assert_eq!(layout.gap(), None);
        assert_eq!(layout.place(1), Some(Place::History(hist(1, 2))));
        // 4 is only in 3-4: readers rely on it, so 3 is read from it too (the segment object
        // is a source not deleted yet, or a late write into a freed number).
        assert!(layout.relied_on(&hist(3, 4)));
        assert!(
            !layout.relied_on(&hist(1, 4)),
            "its narrower objects hold all of it"
        );
        assert_eq!(layout.place(3), Some(Place::History(hist(3, 4))));
        assert_eq!(layout.place(4), Some(Place::History(hist(3, 4))));
        assert_eq!(layout.place(7), None);
        let sources = layout.sources(0, 1..=6).expect("sources");
        assert_eq!(
            sources,
            vec![
                Source::History {
                    object: hist(1, 2),
                    lo: 1,
                    hi: 2
                },
                Source::History {
                    object: hist(3, 4),
                    lo: 3,
                    hi: 4
                },
                Source::Segment {
                    n: 5,
                    size: 105,
                    tag: Tag::ANY
                },
                Source::Segment {
                    n: 6,
                    size: 106,
                    tag: Tag::ANY
                },
            ]
        );
        assert_eq!(
            sources.iter().flat_map(Source::numbers).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        // A history object whose sources are all still there is not relied on (maybe not yet
        // verified): its segments are read from their own objects.
        let unverified = Layout {
            segments: vec![seg(1), seg(2), seg(3)],
            history: vec![hist(1, 3)],
            ..Layout::default()
        };
        assert!(!unverified.relied_on(&hist(1, 3)));
        assert_eq!(unverified.place(2), Some(Place::Segment(102, Tag::ANY)));
        // Unless it is marked verified: then segment objects in every one of its numbers (strays
        // written by writers that were behind) do not hide it.
        let marked = Layout {
            verified: vec![(1, 3)],
            ..unverified.clone()
        };
        assert!(marked.relied_on(&hist(1, 3)));
        assert_eq!(marked.place(2), Some(Place::History(hist(1, 3))));
        // A merge not yet verified: 1-2 is relied on, 1-4 is not; 3 from its own object.
        let merging = Layout {
            segments: vec![seg(3), seg(4)],
            history: vec![hist(1, 2), hist(1, 4)],
            ..Layout::default()
        };
        assert!(merging.relied_on(&hist(1, 2)));
        assert!(!merging.relied_on(&hist(1, 4)));
        assert_eq!(merging.place(1), Some(Place::History(hist(1, 2))));
        assert_eq!(merging.place(3), Some(Place::Segment(103, Tag::ANY)));
    }

    #[test]
    fn a_compacted_range_costs_one_lookup_per_history_object() {
        let object = hist(1, 1000);
        let asked = std::cell::Cell::new(0);
        let place = |n: u64| {
            asked.set(asked.get() + 1);
            (n <= 1000).then_some(Place::History(object))
        };
        let sources = sources_of(1..=1000, place).expect("sources");
        assert_eq!(
            sources,
            vec![Source::History {
                object,
                lo: 1,
                hi: 1000
            }]
        );
        assert_eq!(asked.get(), 1);
        // Verify's walk: everything that is somewhere, and the first number that is not.
        let layout = Layout {
            segments: vec![seg(5), seg(7)],
            history: vec![hist(1, 4)],
            ..Layout::default()
        };
        let (sources, missing) = layout.all_sources();
        assert_eq!(missing, Some(6));
        assert_eq!(
            sources.iter().flat_map(Source::numbers).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 7]
        );
    }

    #[test]
    fn a_number_in_no_object_is_a_gap() {
        let layout = Layout {
            segments: vec![seg(1), seg(6)],
            history: vec![hist(2, 4)],
            ..Layout::default()
        };
        assert_eq!(layout.gap(), Some(5));
        assert!(matches!(
            layout.sources(3, 1..=6),
            Err(LogError::Gap {
                shard: 3,
                missing: 5
            })
        ));
        let empty = Layout::default();
        assert_eq!((empty.head(), empty.gap()), (0, None));
        let starts_late = Layout {
            segments: vec![seg(2)],
            history: vec![],
            ..Layout::default()
        };
        assert_eq!(starts_late.gap(), Some(1));
    }
}
