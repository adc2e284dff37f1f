//! Reading the log: a shard's segments, or one user's events.
//!
//! Segment `n` is read from its own object while that exists, else from the narrowest history
//! object holding it ([`Layout`]; compaction keeps both readings equal). Readers never read past
//! a gap: segment `n + 1` counts only when every segment up to `n` is somewhere. A listing that
//! shows a missing number followed by later ones is reported as [`LogError::Gap`] rather than
//! silently returning a partial history; a source that vanishes during a read (compacted) is
//! located again and the read run again.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use keepsake_model::{Event, IdMap, ItemId, UserId};
use keepsake_segment::{
    EventKey, HistoryMeta, KEY_COLUMNS, ReadPlan, Segment, SegmentMeta, decode, decode_batch,
    decode_keys, decode_rows, decode_segment_numbers, plan_user_read, rows_of_user,
    split_selection,
};
use keepsake_store::keys::{self, Key};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

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
}

/// Lists the numbered objects of a shard under `prefix` (segments or checkpoints), ascending by
/// number, with their sizes; anything else found there is ignored.
async fn list_numbered(
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
    /// Its own object, of this size.
    Segment(u64),
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
    fn label(&self) -> u64 {
        *self.numbers().start()
    }

    fn size(&self) -> u64 {
        match self {
            Source::Segment { size, .. } => *size,
            Source::History { object, .. } => object.size,
        }
    }

    fn is_history(&self) -> bool {
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
fn collect_sources(
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
            Some(Place::Segment(size)) => out.push(Source::Segment { n, size }),
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
            Ok(i) => Some(Place::Segment(self.segments[i].size)),
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
    const LISTINGS: u32 = 6;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listed = list_layout_once(store, shard).await;
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

async fn list_layout_once(store: &dyn ObjectStore, shard: u32) -> Result<Layout, LogError> {
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
    let layout = Layout {
        segments,
        history,
        verified,
    };
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

/// Segments up to this size are decoded on the calling task (a fraction of a millisecond).
const INLINE_DECODE_BYTES: usize = 32 << 10;

/// Reads and decodes segment `n`; `None` if it does not exist.
pub async fn read_segment(
    store: &dyn ObjectStore,
    shard: u32,
    n: u64,
) -> Result<Option<Segment>, LogError> {
    Ok(read_segment_sized(store, shard, n)
        .await?
        .map(|(seg, _)| seg))
}

/// [`read_segment`], with the object's size.
pub async fn read_segment_sized(
    store: &dyn ObjectStore,
    shard: u32,
    n: u64,
) -> Result<Option<(Segment, u64)>, LogError> {
    let bytes = match store.get(&keys::segment(shard, n)).await {
        Ok(got) => got
            .bytes()
            .await
            .map_err(store_err(format!("read segment {n} of shard {shard}")))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(format!("read segment {n} of shard {shard}"))(e)),
    };
    let size = bytes.len() as u64;
    // Decoding a large segment is milliseconds of CPU (the documents' pages): on a blocking
    // thread, so that scans (checkpoints, rebuilds) do not hold the runtime's workers from
    // pushes and pulls. A small one decodes in less than the hand-off to a thread costs.
    if bytes.len() <= INLINE_DECODE_BYTES {
        return decode_checked(shard, n, bytes).map(|seg| Some((seg, size)));
    }
    tokio::task::spawn_blocking(move || decode_checked(shard, n, bytes))
        .await
        .map_err(|e| LogError::Unavailable {
            shard,
            reason: format!("decoding segment {n}: {e}"),
        })?
        .map(|seg| Some((seg, size)))
}

/// Decodes segment bytes and checks that the file is the segment its key says it is.
pub(crate) fn decode_checked(shard: u32, n: u64, bytes: Bytes) -> Result<Segment, LogError> {
    let seg = decode(bytes).map_err(|e| LogError::segment(shard, n, e))?;
    if seg.meta.shard != shard || seg.meta.segment != n {
        return Err(LogError::corrupt(
            shard,
            n,
            format!(
                "the file says it is segment {} of shard {}",
                seg.meta.segment, seg.meta.shard
            ),
        ));
    }
    Ok(seg)
}

/// Reads the metadata of segment bytes without decoding rows.
pub(crate) fn read_meta(shard: u32, n: u64, bytes: &Bytes) -> Result<SegmentMeta, LogError> {
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(bytes)
        .map_err(|e| LogError::corrupt(shard, n, e))?;
    SegmentMeta::from_key_values(meta.file_metadata().key_value_metadata())
        .map_err(|e| LogError::corrupt(shard, n, e))
}

/// Every segment of a shard from `from` on, in order, read `concurrency` sources at a time
/// (a history object is one source: it is fetched once and gives back each segment it holds).
pub async fn scan_shard(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    from: u64,
    concurrency: usize,
) -> Result<impl futures::Stream<Item = Result<Segment, LogError>>, LogError> {
    let layout = list_layout(store.as_ref(), shard).await?;
    let sources = layout.sources(shard, from.max(1)..=layout.head())?;
    Ok(futures::stream::iter(sources)
        .map(move |src| read_source_segments(store.clone(), shard, src))
        .buffered(concurrency.max(1))
        .map_ok(|segs| futures::stream::iter(segs.into_iter().map(Ok)))
        .try_flatten())
}

/// The whole segments a source stands for, in order. A source compacted away since it was
/// listed (a segment into a history object, or a history object into a wider one) is read
/// from where a new listing says it is.
pub async fn read_source_segments(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    src: Source,
) -> Result<Vec<Segment>, LogError> {
    if let Some(segs) = read_source_segments_once(&store, shard, src).await? {
        return Ok(segs);
    }
    'relist: for _ in 0..RELISTS {
        let layout = list_layout(store.as_ref(), shard).await?;
        let mut out = Vec::new();
        for again in layout.sources(shard, src.numbers())? {
            match read_source_segments_once(&store, shard, again).await? {
                Some(segs) => out.extend(segs),
                None => continue 'relist,
            }
        }
        return Ok(out);
    }
    Err(LogError::Gap {
        shard,
        missing: src.label(),
    })
}

async fn read_source_segments_once(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    src: Source,
) -> Result<Option<Vec<Segment>>, LogError> {
    match src {
        Source::Segment { n, .. } => Ok(read_segment(store.as_ref(), shard, n)
            .await?
            .map(|seg| vec![seg])),
        Source::History { object, lo, hi } => {
            Ok(read_history(store, shard, object).await?.map(|h| {
                h.segments
                    .into_iter()
                    .filter(|s| (lo..=hi).contains(&s.meta.segment))
                    .collect()
            }))
        }
    }
}

/// Reads and decodes a whole history object (on a blocking thread), checking that it is the
/// object its key says; `None` if it does not exist.
pub async fn read_history(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    object: HistoryListed,
) -> Result<Option<keepsake_segment::History>, LogError> {
    let (first, last) = (object.first, object.last);
    let context = || format!("read history {first}-{last} of shard {shard}");
    let bytes = match store.get(&keys::history(shard, first, last)).await {
        Ok(got) => got.bytes().await.map_err(store_err(context()))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(context())(e)),
    };
    let h = tokio::task::spawn_blocking(move || keepsake_segment::decode_history(bytes))
        .await
        .map_err(|e| LogError::Unavailable {
            shard,
            reason: format!("decoding history {first}-{last} failed: {e}"),
        })?
        .map_err(|e| LogError::corrupt(shard, first, format!("history {first}-{last}: {e}")))?;
    if (h.meta.shard, h.meta.first, h.meta.last) != (shard, first, last) {
        return Err(LogError::corrupt(
            shard,
            first,
            format!(
                "the history object {first}-{last} says it holds {}-{} of shard {}",
                h.meta.first, h.meta.last, h.meta.shard
            ),
        ));
    }
    Ok(Some(h))
}

/// Range reads of one segment object, for the async Parquet reader. The size comes from the
/// listing, so the footer (and page index) is fetched with one suffix-sized range read. When the
/// object was fetched whole (`whole`), the same reads are served from memory.
#[derive(Clone, Debug)]
struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
    whole: Option<Bytes>,
}

/// A slice of a fetched object, or an error for a range beyond it.
fn slice_of(whole: &Bytes, range: Range<u64>) -> parquet::errors::Result<Bytes> {
    let (start, end) = (
        usize::try_from(range.start).unwrap_or(usize::MAX),
        usize::try_from(range.end).unwrap_or(usize::MAX),
    );
    if start > end || end > whole.len() {
        return Err(parquet::errors::ParquetError::EOF(format!(
            "range {start}..{end} beyond an object of {} bytes",
            whole.len()
        )));
    }
    Ok(whole.slice(start..end))
}

/// Bytes fetched with the footer: enough for the metadata and page index of large segments.
const FOOTER_PREFETCH: usize = 64 * 1024;

fn external(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for SegmentReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        if let Some(whole) = &self.whole {
            return futures::future::ready(slice_of(whole, range)).boxed();
        }
        self.store
            .get_range(&self.path, range)
            .map_err(external)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            if let Some(whole) = &self.whole {
                return ranges.into_iter().map(|r| slice_of(whole, r)).collect();
            }
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}

/// Reads one user's state from a checkpoint: only the pages that may hold the user's rows.
/// A user with no rows in it has the empty state.
pub async fn read_checkpoint_user(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    checkpoint: u64,
    user: UserId,
) -> Result<keepsake_model::UserState, LogError> {
    checkpoint_user(store, shard, checkpoint, user, true).await
}

/// [`read_checkpoint_user`] without the user's change ids: items, tombstones and last seq only.
/// The pages holding nothing but change ids (most of a long history's rows) are not read.
pub async fn read_checkpoint_user_items(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    checkpoint: u64,
    user: UserId,
) -> Result<keepsake_model::UserState, LogError> {
    checkpoint_user(store, shard, checkpoint, user, false).await
}

async fn checkpoint_user(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    checkpoint: u64,
    user: UserId,
    with_changes: bool,
) -> Result<keepsake_model::UserState, LogError> {
    let path = keys::checkpoint(shard, checkpoint);
    let size = store
        .head(&path)
        .await
        .map_err(store_err(format!(
            "read checkpoint {checkpoint} of shard {shard}"
        )))?
        .size;
    let reader = SegmentReader {
        store: store.clone(),
        path,
        size,
        whole: None,
    };
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let corrupt = |e: parquet::errors::ParquetError| match e {
        parquet::errors::ParquetError::External(_) => LogError::Unavailable {
            shard,
            reason: format!("read checkpoint {checkpoint}: {e}"),
        },
        other => LogError::corrupt(shard, checkpoint, format!("checkpoint: {other}")),
    };
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
        .await
        .map_err(corrupt)?;
    let meta =
        keepsake_segment::checkpoint_meta(builder.metadata().file_metadata().key_value_metadata())
            .map_err(|e| LogError::corrupt(shard, checkpoint, format!("checkpoint: {e}")))?;
    if meta.shard != shard || meta.segment != checkpoint {
        return Err(LogError::corrupt(
            shard,
            checkpoint,
            "the checkpoint names another shard or segment",
        ));
    }
    let plan = if with_changes {
        plan_user_read(builder.metadata(), &user)
    } else {
        keepsake_segment::plan_user_read_skipping(
            builder.metadata(),
            &user,
            keepsake_segment::ENTRY_COLUMN,
            keepsake_segment::ENTRY_CHANGE.as_bytes(),
        )
    };
    let Some(plan) = plan else {
        return Ok(keepsake_model::UserState::default());
    };
    let batches: Vec<_> = builder
        .with_row_groups(plan.row_groups)
        .with_row_selection(plan.selection)
        .build()
        .map_err(corrupt)?
        .try_collect()
        .await
        .map_err(corrupt)?;
    let mut users = keepsake_segment::decode_checkpoint_batches(batches, Some(&user))
        .map_err(|e| LogError::corrupt(shard, checkpoint, format!("checkpoint: {e}")))?;
    Ok(users.remove(&user).unwrap_or_default())
}

/// Lists a shard's checkpoints (segment number, size, write time), ascending.
pub async fn list_checkpoint_objects(
    store: &dyn ObjectStore,
    shard: u32,
) -> Result<Vec<Listed>, LogError> {
    list_numbered(
        store,
        keys::checkpoints_prefix(shard),
        "checkpoints",
        shard,
        |k| match k {
            Key::Checkpoint { shard: s, n } if s == shard => Some(n),
            _ => None,
        },
    )
    .await
}

/// Reads only the footer of segment `n` (its metadata), not its rows; `None` if it does not exist.
pub async fn read_segment_meta(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    n: u64,
) -> Result<Option<SegmentMeta>, LogError> {
    let path = keys::segment(shard, n);
    let size = match store.head(&path).await {
        Ok(m) => m.size,
        Err(object_store::Error::NotFound { .. }) => {
            return history_segment_meta(store, shard, n).await;
        }
        Err(e) => return Err(store_err(format!("read segment {n} of shard {shard}"))(e)),
    };
    let mut reader = SegmentReader {
        store: store.clone(),
        path,
        size,
        whole: None,
    };
    let meta = match reader.get_metadata(None).await {
        Ok(meta) => meta,
        // Compacted between the HEAD and the read: its metadata is in the history object now.
        Err(e) if not_found(&e) => return history_segment_meta(store, shard, n).await,
        Err(e) => return Err(LogError::segment(shard, n, e.into())),
    };
    SegmentMeta::from_key_values(meta.file_metadata().key_value_metadata())
        .map(Some)
        .map_err(|e| LogError::corrupt(shard, n, e))
}

/// The metadata of compacted segment `n`, from the footer of the history object holding it;
/// `None` when no history object holds it.
async fn history_segment_meta(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    n: u64,
) -> Result<Option<SegmentMeta>, LogError> {
    let Some(object) = narrowest(&list_history(store.as_ref(), shard).await?, n) else {
        return Ok(None);
    };
    let mut reader = SegmentReader {
        store,
        path: keys::history(shard, object.first, object.last),
        size: object.size,
        whole: None,
    };
    let meta = reader
        .get_metadata(None)
        .await
        .map_err(|e| LogError::segment(shard, n, e.into()))?;
    let history = HistoryMeta::from_key_values(meta.file_metadata().key_value_metadata())
        .map_err(|e| LogError::corrupt(shard, n, e))?;
    let sources = history
        .sources()
        .map_err(|e| LogError::corrupt(shard, n, e))?;
    Ok(sources.into_iter().find(|m| m.segment == n))
}

/// Lists a shard's checkpoints (segment numbers), ascending.
pub async fn list_checkpoints(store: &dyn ObjectStore, shard: u32) -> Result<Vec<u64>, LogError> {
    Ok(list_checkpoint_objects(store, shard)
        .await?
        .into_iter()
        .map(|l| l.n)
        .collect())
}

/// Reads and decodes a whole checkpoint.
pub async fn read_checkpoint(
    store: &dyn ObjectStore,
    shard: u32,
    checkpoint: u64,
) -> Result<keepsake_model::IdMap<UserId, keepsake_model::UserState>, LogError> {
    let bytes = store
        .get(&keys::checkpoint(shard, checkpoint))
        .await
        .map_err(store_err(format!(
            "read checkpoint {checkpoint} of shard {shard}"
        )))?
        .bytes()
        .await
        .map_err(store_err(format!(
            "read checkpoint {checkpoint} of shard {shard}"
        )))?;
    let (meta, users) =
        tokio::task::spawn_blocking(move || keepsake_segment::decode_checkpoint(bytes))
            .await
            .map_err(|e| LogError::corrupt(shard, checkpoint, e))?
            .map_err(|e| LogError::corrupt(shard, checkpoint, format!("checkpoint: {e}")))?;
    if meta.shard != shard || meta.segment != checkpoint {
        return Err(LogError::corrupt(
            shard,
            checkpoint,
            "the checkpoint names another shard or segment",
        ));
    }
    Ok(users.into_iter().collect())
}

/// Where a read of one user's history stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpTo {
    /// Everything.
    End,
    /// Events with `seq <= n`.
    Seq(u64),
    /// Events with `recorded_at <= t`.
    Time(DateTime<Utc>),
}

impl UpTo {
    fn includes(&self, e: &Event) -> bool {
        self.includes_at(e.seq, e.recorded_at)
    }

    fn includes_at(&self, seq: u64, recorded_at: DateTime<Utc>) -> bool {
        match *self {
            UpTo::End => true,
            UpTo::Seq(n) => seq <= n,
            UpTo::Time(t) => recorded_at <= t,
        }
    }
}

/// What reading one user's events cost: for tests and benchmarks of pruning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Segments whose footer was read.
    pub segments_opened: u64,
    /// Segments skipped by their statistics.
    pub segments_pruned: u64,
    /// Rows decoded (the user's and neighbours' on the same pages); for a read of items, their
    /// key columns only.
    pub rows_decoded: u64,
    /// For a read of items: rows then read whole, documents included (one per item kept).
    pub rows_read_whole: u64,
}

/// Reads one user's events, oldest first, stopping at `up_to`.
///
/// Per segment, only the footer and the pages that may hold the user are fetched (row-group
/// statistics and the page index; rows are sorted by user). Reading stops at the first segment
/// recorded after `up_to`.
pub async fn read_user(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    up_to: UpTo,
) -> Result<(Vec<Event>, ReadStats), LogError> {
    read_user_in(store, shard, user, |_| true, up_to).await
}

/// Segments of one user's read opened at once. A read is mostly waiting on range GETs (footer,
/// page index, pages), so several in flight hide the latency; results are still taken in
/// segment order, and reading stops at the first segment past `up_to` (at most this many
/// segments are opened beyond it).
const USER_READ_AHEAD: usize = 8;

/// A spawned task that is aborted when its handle is dropped.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Aborting<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The sources of the shard's segments that `segments` accepts, from a listing that reaches
/// segment `reach` ([`list_layout_reaching`]).
pub(crate) async fn listed_sources(
    store: &dyn ObjectStore,
    shard: u32,
    reach: u64,
    segments: impl Fn(u64) -> bool,
) -> Result<Vec<Source>, LogError> {
    let layout = list_layout_reaching(store, shard, reach).await?;
    layout.sources(shard, (1..=layout.head()).filter(|n| segments(*n)))
}

/// How many times a read is run again on a new listing when a source vanished under it. Each
/// time, compaction has moved on (it only ever moves segments forward into history objects), so
/// a read fails this way only under a store that loses objects.
const RELISTS: usize = 8;

/// Where segments are now: asked again when a read finds a source gone. The log's readers ask
/// its view (compaction tells the view before it deletes anything); others list the store.
pub type Relocate =
    Arc<dyn Fn(Vec<u64>) -> BoxFuture<'static, Result<Vec<Source>, LogError>> + Send + Sync>;

/// A [`Relocate`] that lists the store.
pub fn by_listing(store: Arc<dyn ObjectStore>, shard: u32) -> Relocate {
    Arc::new(move |numbers| {
        let store = store.clone();
        async move {
            let reach = numbers.iter().copied().max().unwrap_or(0);
            list_layout_reaching(store.as_ref(), shard, reach)
                .await?
                .sources(shard, numbers)
        }
        .boxed()
    })
}

/// Runs a read of `sources`; when one of them is gone (compacted since the caller learned
/// where it was), asks `relocate` where those segments are now and runs the read again.
async fn with_relisting<T, F, Fut>(
    shard: u32,
    sources: Vec<Source>,
    relocate: &Relocate,
    read: F,
) -> Result<T, LogError>
where
    F: Fn(Vec<Source>) -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let numbers: Vec<u64> = sources.iter().flat_map(|s| s.numbers()).collect();
    let mut result = read(sources).await;
    for _ in 0..RELISTS {
        match result {
            Err(LogError::Gap { missing, .. }) => {
                tracing::debug!(
                    shard,
                    missing,
                    "a segment moved during a read; locating again"
                );
                result = read(relocate(numbers.clone()).await?).await;
            }
            other => return other,
        }
    }
    // Still moving after every relisting (another process compacting this shard as fast as we
    // locate): nothing is lost — the segments were listed — so the caller may retry.
    match result {
        Err(LogError::Gap { missing, .. }) => Err(LogError::Unavailable {
            shard,
            reason: format!("segment {missing} kept moving while it was read; retry"),
        }),
        other => other,
    }
}

/// True when a Parquet read failed because the object is not there.
fn not_found(e: &parquet::errors::ParquetError) -> bool {
    match e {
        parquet::errors::ParquetError::External(inner) => inner
            .downcast_ref::<object_store::Error>()
            .is_some_and(|e| matches!(e, object_store::Error::NotFound { .. })),
        _ => false,
    }
}

/// Runs `read` over `items` (segments) each on its own task, so that decoding uses every core,
/// [`USER_READ_AHEAD`] at a time; results come in order, and reads still ahead when the caller
/// stops are aborted.
fn read_ahead<I, T, F, Fut>(
    shard: u32,
    items: I,
    mut read: F,
) -> impl futures::Stream<Item = Result<T, LogError>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>> + Send + 'static,
    T: Send + 'static,
{
    futures::stream::iter(items)
        .map(move |item| Aborting(tokio::spawn(read(item))))
        .buffered(USER_READ_AHEAD)
        .map(move |joined| {
            joined.map_err(|e| LogError::Unavailable {
                shard,
                reason: format!("reading a segment failed: {e}"),
            })?
        })
}

/// What one segment holds for one user's read.
enum UserSegment {
    /// Recorded after the moment read up to: this and every later segment are skipped.
    After,
    /// No rows of the user, by the statistics.
    Pruned,
    /// The user's rows up to the moment; `past_end` when some were after it.
    Rows {
        events: Vec<Event>,
        decoded: u64,
        past_end: bool,
    },
}

/// [`read_user`] over the segments whose numbers `segments` accepts only (for example, those
/// after a checkpoint up to the head a reader has seen, or those an index says hold the user).
pub async fn read_user_in(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    segments: impl Fn(u64) -> bool,
    up_to: UpTo,
) -> Result<(Vec<Event>, ReadStats), LogError> {
    let wanted = listed_sources(store.as_ref(), shard, 0, segments).await?;
    read_user_sized(store, shard, user, wanted, up_to).await
}

/// [`read_user_in`] over sources (ascending) the caller knows, as the log's view does: no
/// listing of the store, unless one of them has moved.
pub async fn read_user_sized(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
) -> Result<(Vec<Event>, ReadStats), LogError> {
    let relocate = by_listing(store.clone(), shard);
    read_user_relocating(store, shard, user, sources, up_to, &relocate).await
}

/// [`read_user_sized`], asking `relocate` where a source that vanished has gone.
pub async fn read_user_relocating(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    relocate: &Relocate,
) -> Result<(Vec<Event>, ReadStats), LogError> {
    with_relisting(shard, sources, relocate, |sources| {
        read_user_sources(store.clone(), shard, user, sources, up_to)
    })
    .await
}

async fn read_user_sources(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
) -> Result<(Vec<Event>, ReadStats), LogError> {
    let reads = read_ahead(shard, sources, |l| {
        read_user_segment(store.clone(), shard, user, l, up_to)
    });
    futures::pin_mut!(reads);
    let mut events = Vec::new();
    let mut stats = ReadStats::default();
    while let Some(read) = reads.next().await {
        stats.segments_opened += 1;
        match read? {
            UserSegment::After => break,
            UserSegment::Pruned => stats.segments_pruned += 1,
            UserSegment::Rows {
                events: mine,
                decoded,
                past_end,
            } => {
                stats.rows_decoded += decoded;
                events.extend(mine);
                if past_end {
                    break;
                }
            }
        }
    }
    Ok((events, stats))
}

/// Segments up to this size are fetched whole, with one GET, rather than as a footer, a page
/// index and pages (three or more range reads, each a round trip to the store).
const WHOLE_READ_BYTES: u64 = 1024 * 1024;

/// A segment opened for one user's read.
enum Opened {
    /// Recorded after the moment read up to.
    After,
    /// No rows of the user, by the statistics.
    Pruned,
    /// The pages that may hold the user, and a reader for a second read of the same object.
    Plan {
        builder: Box<ParquetRecordBatchStreamBuilder<SegmentReader>>,
        plan: ReadPlan,
        again: SegmentReader,
    },
}

/// Opens a segment (or a history object) for one user's read: fetches it whole when small,
/// else its footer and page index, and plans which pages may hold the user.
async fn open_for_user(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    src: Source,
    up_to: UpTo,
) -> Result<Opened, LogError> {
    let (n, size) = (src.label(), src.size());
    let context = || format!("read segment {n} of shard {shard}");
    let path = src.key(shard);
    // Listed but gone: a gap, like a missing number (the caller lists again: it may have been
    // compacted).
    let gone = LogError::Gap { shard, missing: n };
    let whole = if size <= WHOLE_READ_BYTES {
        match store.get(&path).await {
            Ok(got) => Some(got.bytes().await.map_err(store_err(context()))?),
            Err(object_store::Error::NotFound { .. }) => return Err(gone),
            Err(e) => return Err(store_err(context())(e)),
        }
    } else {
        None
    };
    let reader = SegmentReader {
        store,
        path,
        size: whole.as_ref().map_or(size, |b| b.len() as u64),
        whole,
    };
    let again = reader.clone();
    let builder =
        match ParquetRecordBatchStreamBuilder::new_with_options(reader, read_options()).await {
            Ok(b) => b,
            Err(e) if not_found(&e) => return Err(gone),
            Err(e) => return Err(LogError::user_read(shard, n, e.into())),
        };
    let kvs = builder.metadata().file_metadata().key_value_metadata();
    let first_recorded_at = if src.is_history() {
        HistoryMeta::from_key_values(kvs).map(|m| m.first_recorded_at)
    } else {
        SegmentMeta::from_key_values(kvs).map(|m| m.first_recorded_at)
    }
    .map_err(|e| LogError::corrupt(shard, n, e))?;
    if let UpTo::Time(t) = up_to
        && first_recorded_at > t
    {
        return Ok(Opened::After);
    }
    Ok(match plan_user_read(builder.metadata(), &user) {
        None => Opened::Pruned,
        Some(plan) => Opened::Plan {
            builder: Box::new(builder),
            plan,
            again,
        },
    })
}

fn read_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional)
}

/// A failed read of segment pages: a vanished object is a gap (listed again), the store's
/// failure is retryable, anything else is damage.
fn pages_err(shard: u32, n: u64) -> impl Fn(parquet::errors::ParquetError) -> LogError {
    move |e| match e {
        e if not_found(&e) => LogError::Gap { shard, missing: n },
        parquet::errors::ParquetError::External(_) => LogError::Unavailable {
            shard,
            reason: format!("read segment {n} of shard {shard}: {e}"),
        },
        other => LogError::corrupt(shard, n, other),
    }
}

/// One segment's part of a user's read: only the footer and the pages that may hold the user
/// (from memory, for a segment small enough to fetch whole).
async fn read_user_segment(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    src: Source,
    up_to: UpTo,
) -> Result<UserSegment, LogError> {
    let n = src.label();
    let filter = RowFilter {
        user,
        wanted: src.numbers(),
        up_to,
        shard,
        n,
    };
    let (builder, plan, again) = match open_for_user(store, shard, user, src, up_to).await? {
        Opened::After => return Ok(UserSegment::After),
        Opened::Pruned => return Ok(UserSegment::Pruned),
        Opened::Plan {
            builder,
            plan,
            again,
        } => (*builder, plan, again),
    };
    let parts = (plan.rows_selected / PART_ROWS).clamp(1, parallelism());
    if parts == 1 {
        let stream = builder
            .with_row_groups(plan.row_groups)
            .with_row_selection(plan.selection)
            .build()
            .map_err(|e| LogError::user_read(shard, n, e.into()))?;
        return filter.read(stream).await;
    }
    // A long run of the user's rows (a history object's): decoded in parts, one per core.
    let metadata = ArrowReaderMetadata::try_new(builder.metadata().clone(), read_options())
        .map_err(|e| LogError::user_read(shard, n, e.into()))?;
    let reads = split_selection(&plan.selection, parts)
        .into_iter()
        .map(|selection| {
            let stream =
                ParquetRecordBatchStreamBuilder::new_with_metadata(again.clone(), metadata.clone())
                    .with_row_groups(plan.row_groups.clone())
                    .with_row_selection(selection)
                    .build()
                    .map_err(|e| LogError::user_read(shard, n, e.into()));
            let filter = filter.clone();
            Aborting(tokio::spawn(async move { filter.read(stream?).await }))
        })
        .collect::<Vec<_>>();
    let mut events = Vec::new();
    let (mut decoded, mut past_end) = (0, false);
    for read in futures::future::join_all(reads).await {
        let part = read.map_err(|e| LogError::Unavailable {
            shard,
            reason: format!("reading a segment failed: {e}"),
        })??;
        if let UserSegment::Rows {
            events: mine,
            decoded: d,
            past_end: p,
        } = part
        {
            decoded += d;
            // Parts are in row order: rows after the first part past the end are past it too.
            if !past_end {
                events.extend(mine);
            }
            past_end |= p;
        }
    }
    Ok(UserSegment::Rows {
        events,
        decoded,
        past_end,
    })
}

/// Selected rows per part when one object's read is split over cores.
const PART_ROWS: usize = 4096;

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Which decoded rows belong to one user's read of one source.
#[derive(Clone, Debug)]
struct RowFilter {
    user: UserId,
    /// The segments asked for (a history object's rows of other segments are not).
    wanted: std::ops::RangeInclusive<u64>,
    up_to: UpTo,
    shard: u32,
    n: u64,
}

impl RowFilter {
    /// Decodes a stream of pages and keeps the user's rows up to the moment.
    async fn read(
        &self,
        mut stream: parquet::arrow::async_reader::ParquetRecordBatchStream<SegmentReader>,
    ) -> Result<UserSegment, LogError> {
        let (shard, n) = (self.shard, self.n);
        let mut events = Vec::new();
        let mut decoded = 0;
        let mut past_end = false;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(pages_err(shard, n))?;
            decoded += batch.num_rows() as u64;
            let numbers =
                decode_segment_numbers(&batch).map_err(|e| LogError::corrupt(shard, n, e))?;
            // Pages are shared: the batch may hold neighbours' rows, which are not decoded; a
            // history object's rows of segments not asked for are not part of this read.
            let mine = rows_of_user(&batch, &self.user)
                .map_err(|e| LogError::corrupt(shard, n, e))?
                .into_iter()
                .filter(|i| {
                    numbers
                        .as_ref()
                        .is_none_or(|s| s.get(*i).is_some_and(|k| self.wanted.contains(k)))
                });
            for e in decode_rows(&batch, mine).map_err(|e| LogError::corrupt(shard, n, e))? {
                if self.up_to.includes(&e) {
                    if !past_end {
                        events.push(e);
                    }
                } else {
                    past_end = true;
                }
            }
        }
        Ok(UserSegment::Rows {
            events,
            decoded,
            past_end,
        })
    }
}

/// One user's newest event of each item up to a moment: what a read of items at that moment
/// needs (see [`keepsake_model::UserState::advance_items`]).
#[derive(Debug, Default)]
pub struct LatestItems {
    /// The newest event of each item changed in the segments read, ascending by seq.
    pub events: Vec<Event>,
    /// The user's last seq up to the moment; the `after` asked for when no event was read.
    pub last_seq: u64,
    /// What the read cost.
    pub stats: ReadStats,
}

/// One segment's part of a read of items: the key columns of the user's rows up to the moment,
/// and what a second read of chosen rows of the same object needs.
struct KeyedSegment {
    n: u64,
    again: SegmentReader,
    metadata: Arc<ParquetMetaData>,
    row_groups: Vec<usize>,
    /// Rows in those row groups; positions count from their first row.
    rows_in_groups: usize,
    /// The user's rows up to the moment, each with its position.
    rows: Vec<(EventKey, usize)>,
    decoded: u64,
    past_end: bool,
}

enum KeyedRead {
    After,
    Pruned,
    Rows(KeyedSegment),
}

/// Reads the key columns ([`KEY_COLUMNS`]) of the pages that may hold the user: no documents.
async fn read_user_keys(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    src: Source,
    up_to: UpTo,
) -> Result<KeyedRead, LogError> {
    let (n, wanted) = (src.label(), src.numbers());
    let (builder, plan, again) = match open_for_user(store, shard, user, src, up_to).await? {
        Opened::After => return Ok(KeyedRead::After),
        Opened::Pruned => return Ok(KeyedRead::Pruned),
        Opened::Plan {
            builder,
            plan,
            again,
        } => (*builder, plan, again),
    };
    let metadata = builder.metadata().clone();
    let rows_in_groups = plan
        .row_groups
        .iter()
        .map(|rg| usize::try_from(metadata.row_group(*rg).num_rows()).unwrap_or(0))
        .sum();
    // Rows come back in selection order: the positions of the selected rows, in order.
    let mut positions = Vec::with_capacity(plan.rows_selected);
    let mut at = 0;
    for s in plan.selection.iter() {
        if !s.skip {
            positions.extend(at..at + s.row_count);
        }
        at += s.row_count;
    }
    let mut columns = KEY_COLUMNS.to_vec();
    if src.is_history() {
        columns.push(keepsake_segment::arrow_schema().fields().len());
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), columns);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(keepsake_segment::DECODE_BATCH_ROWS)
        .with_row_groups(plan.row_groups.clone())
        .with_row_selection(plan.selection)
        .build()
        .map_err(|e| LogError::user_read(shard, n, e.into()))?;
    let mut rows = Vec::new();
    let mut decoded = 0;
    let mut past_end = false;
    let mut next = positions.into_iter();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(pages_err(shard, n))?;
        decoded += batch.num_rows() as u64;
        let numbers = decode_segment_numbers(&batch).map_err(|e| LogError::corrupt(shard, n, e))?;
        let keys = decode_keys(&batch).map_err(|e| LogError::corrupt(shard, n, e))?;
        for (i, k) in keys.into_iter().enumerate() {
            let pos = next
                .next()
                .ok_or_else(|| LogError::corrupt(shard, n, "more rows than were selected"))?;
            if k.user_id != user || numbers.as_ref().is_some_and(|s| !wanted.contains(&s[i])) {
                continue;
            }
            if up_to.includes_at(k.seq, k.recorded_at) {
                rows.push((k, pos));
            } else {
                past_end = true;
            }
        }
    }
    Ok(KeyedRead::Rows(KeyedSegment {
        n,
        again,
        metadata,
        row_groups: plan.row_groups,
        rows_in_groups,
        rows,
        decoded,
        past_end,
    }))
}

/// Reads the rows at `positions` (ascending, each with the seq its key read found) of a segment
/// whole: only the pages that hold them.
async fn read_rows_whole(
    seg: KeyedSegment,
    shard: u32,
    user: UserId,
    positions: Vec<(usize, u64)>,
) -> Result<Vec<Event>, LogError> {
    let n = seg.n;
    let mut selectors = Vec::with_capacity(positions.len() * 2 + 1);
    let mut at = 0;
    for (pos, _) in &positions {
        selectors.push(RowSelector::skip(pos - at));
        selectors.push(RowSelector::select(1));
        at = pos + 1;
    }
    selectors.push(RowSelector::skip(seg.rows_in_groups.saturating_sub(at)));
    let metadata = ArrowReaderMetadata::try_new(seg.metadata, read_options())
        .map_err(|e| LogError::user_read(shard, n, e.into()))?;
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(seg.again, metadata)
        .with_row_groups(seg.row_groups)
        .with_row_selection(RowSelection::from(selectors))
        .build()
        .map_err(|e| LogError::user_read(shard, n, e.into()))?;
    let mut events = Vec::with_capacity(positions.len());
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(pages_err(shard, n))?;
        events.extend(decode_batch(&batch).map_err(|e| LogError::corrupt(shard, n, e))?);
    }
    let expected = positions.iter().map(|(_, seq)| *seq);
    if events.len() != positions.len()
        || !events
            .iter()
            .zip(expected)
            .all(|(e, seq)| e.user_id == user && e.seq == seq)
    {
        return Err(LogError::corrupt(
            shard,
            n,
            "a second read of the same rows found other rows",
        ));
    }
    Ok(events)
}

/// One user's newest event of each item up to `up_to`, in the segments `segments` accepts, whose
/// first event of the user comes right after seq `after` (the state the caller starts from).
///
/// Two passes: the key columns of the user's rows in every segment (no documents), then whole
/// rows only for each item's newest event, from only the segments and pages that hold them. A
/// history that rewrites its items reads one document per item instead of one per event. The
/// user's seqs are checked to run densely from `after + 1`, as [`keepsake_model::apply`] would.
pub async fn read_user_latest_in(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    segments: impl Fn(u64) -> bool,
    up_to: UpTo,
    after: u64,
) -> Result<LatestItems, LogError> {
    let wanted = listed_sources(store.as_ref(), shard, 0, segments).await?;
    read_user_latest_sized(store, shard, user, wanted, up_to, after).await
}

/// [`read_user_latest_in`] over sources (ascending) the caller knows.
pub async fn read_user_latest_sized(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    after: u64,
) -> Result<LatestItems, LogError> {
    let relocate = by_listing(store.clone(), shard);
    read_user_latest_relocating(store, shard, user, sources, up_to, after, &relocate).await
}

/// [`read_user_latest_sized`], asking `relocate` where a source that vanished has gone.
pub async fn read_user_latest_relocating(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    after: u64,
    relocate: &Relocate,
) -> Result<LatestItems, LogError> {
    with_relisting(shard, sources, relocate, |sources| {
        read_user_latest_sources(store.clone(), shard, user, sources, up_to, after)
    })
    .await
}

async fn read_user_latest_sources(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    after: u64,
) -> Result<LatestItems, LogError> {
    let reads = read_ahead(shard, sources, |l| {
        read_user_keys(store.clone(), shard, user, l, up_to)
    });
    futures::pin_mut!(reads);
    let mut stats = ReadStats::default();
    let mut keyed = Vec::new();
    let mut last_seq = after;
    // Each item's newest row: (index into `keyed`, position, seq).
    let mut newest: IdMap<ItemId, (usize, usize, u64)> = IdMap::default();
    while let Some(read) = reads.next().await {
        stats.segments_opened += 1;
        let seg = match read? {
            KeyedRead::After => break,
            KeyedRead::Pruned => {
                stats.segments_pruned += 1;
                continue;
            }
            KeyedRead::Rows(seg) => seg,
        };
        stats.rows_decoded += seg.decoded;
        for (k, pos) in &seg.rows {
            if k.seq != last_seq + 1 {
                return Err(LogError::corrupt(
                    shard,
                    seg.n,
                    keepsake_model::ApplyError::SeqGap {
                        last: last_seq,
                        got: k.seq,
                    },
                ));
            }
            last_seq = k.seq;
            newest.insert(k.item_id, (keyed.len(), *pos, k.seq));
        }
        let past_end = seg.past_end;
        keyed.push(seg);
        if past_end {
            break;
        }
    }
    let mut chosen: Vec<Vec<(usize, u64)>> = vec![Vec::new(); keyed.len()];
    for (i, pos, seq) in newest.into_values() {
        chosen[i].push((pos, seq));
    }
    let with_rows = keyed
        .into_iter()
        .zip(chosen)
        .filter(|(_, rows)| !rows.is_empty());
    let fetches = read_ahead(shard, with_rows, |(seg, mut rows)| {
        rows.sort_unstable();
        read_rows_whole(seg, shard, user, rows)
    });
    futures::pin_mut!(fetches);
    let mut events = Vec::new();
    while let Some(read) = fetches.next().await {
        events.extend(read?);
    }
    stats.rows_read_whole = events.len() as u64;
    events.sort_unstable_by_key(|e| e.seq);
    Ok(LatestItems {
        events,
        last_seq,
        stats,
    })
}

/// One user's events with the given seqs, from `sources` (ascending): the key columns of the
/// user's rows first (no documents), then whole rows only for the wanted seqs, from only the
/// pages that hold them. How a stale patch's base version from long ago is found: its seq is
/// known (the user's change ids say it), its segment is not.
pub async fn read_user_seqs(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    seqs: Vec<u64>,
    relocate: &Relocate,
) -> Result<Vec<Event>, LogError> {
    let seqs: std::collections::HashSet<u64> = seqs.into_iter().collect();
    with_relisting(shard, sources, relocate, |sources| {
        let (store, seqs) = (store.clone(), seqs.clone());
        async move {
            let keys = read_ahead(shard, sources, |src| {
                read_user_keys(store.clone(), shard, user, src, UpTo::End)
            });
            futures::pin_mut!(keys);
            let mut chosen = Vec::new();
            while let Some(read) = keys.next().await {
                if let KeyedRead::Rows(seg) = read? {
                    let rows: Vec<(usize, u64)> = seg
                        .rows
                        .iter()
                        .filter(|(k, _)| seqs.contains(&k.seq))
                        .map(|(k, pos)| (*pos, k.seq))
                        .collect();
                    if !rows.is_empty() {
                        chosen.push((seg, rows));
                    }
                }
            }
            let fetches = read_ahead(shard, chosen, |(seg, rows)| {
                read_rows_whole(seg, shard, user, rows)
            });
            futures::pin_mut!(fetches);
            let mut events = Vec::new();
            while let Some(read) = fetches.next().await {
                events.extend(read?);
            }
            events.sort_unstable_by_key(|e| e.seq);
            Ok(events)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> Listed {
        Listed {
            n,
            size: 100 + n,
            modified: DateTime::UNIX_EPOCH,
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
                Source::Segment { n: 5, size: 105 },
                Source::Segment { n: 6, size: 106 },
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
        assert_eq!(unverified.place(2), Some(Place::Segment(102)));
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
        assert_eq!(merging.place(3), Some(Place::Segment(103)));
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
