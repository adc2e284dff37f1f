//! Whole-object reads: segments, history objects (by the segments they hold) and checkpoints,
//! decoded and checked against their keys; the Parquet reader over a store object.
//!
//! Invariant: an object is accepted only if its metadata names the shard and segment its key
//! does (a misplaced or corrupt object is an error, never folded).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use keepsake_segment::{HistoryMeta, Segment, SegmentMeta, decode};
use keepsake_store::keys::{self};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::error::{LogError, store_err};
use tracing::warn;

use super::*;

/// Segments up to this size are decoded on the calling task (a fraction of a millisecond).
pub(super) const INLINE_DECODE_BYTES: usize = 32 << 10;

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
    read_seen_segment(store, shard, n, Tag::ANY).await
}

/// [`read_segment_sized`] of the object seen (listed or written) as `tag`; `None` also when
/// the name holds another object now. That happens when the number was compacted since and a
/// writer that was behind put a stray there (never acknowledged): the caller lists again, as
/// for a segment compacted away, and reads the number from the history object.
pub async fn read_seen_segment(
    store: &dyn ObjectStore,
    shard: u32,
    n: u64,
    tag: Tag,
) -> Result<Option<(Segment, u64)>, LogError> {
    let bytes = match store.get(&keys::segment(shard, n)).await {
        Ok(got) if !tag.admits(Tag::of_meta(&got.meta)) => {
            replaced(shard, n);
            return Ok(None);
        }
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

/// Logs a read that found another object than the one seen in segment `n`'s name.
fn replaced(shard: u32, n: u64) {
    warn!(
        shard,
        segment = n,
        "segment object is not the one listed (compacted since, and a writer that was behind put a stray in its number); reading where a new listing says"
    );
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
///
/// `reach` is a segment the caller knows was committed (its view's head; 0 when it knows
/// none): the listing is taken again while it ends before it ([`list_layout_reaching`]), so
/// the stream gives every segment `from..=reach` or fails — a listing that missed the newest
/// objects never passes for the end of the log.
pub async fn scan_shard(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    from: u64,
    reach: u64,
    concurrency: usize,
) -> Result<impl futures::Stream<Item = Result<Segment, LogError>>, LogError> {
    let layout = list_layout_reaching(store.as_ref(), shard, reach).await?;
    let sources = layout.sources(shard, from.max(1)..=layout.head())?;
    Ok(read_sources(store, shard, sources, concurrency))
}

/// [`scan_shard`] of segments `from..=upto` and none after (a checkpoint after `upto`): a
/// listing must hold every number up to `upto` only ([`super::catalog::list_layout_upto`]),
/// and nothing past it is read.
pub async fn scan_shard_upto(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    from: u64,
    upto: u64,
    concurrency: usize,
) -> Result<impl futures::Stream<Item = Result<Segment, LogError>>, LogError> {
    let layout = super::catalog::list_layout_upto(store.as_ref(), shard, upto).await?;
    let sources = layout.sources(shard, from.max(1)..=layout.head().min(upto))?;
    Ok(read_sources(store, shard, sources, concurrency))
}

fn read_sources(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    sources: Vec<Source>,
    concurrency: usize,
) -> impl futures::Stream<Item = Result<Segment, LogError>> {
    futures::stream::iter(sources)
        .map(move |src| read_source_segments(store.clone(), shard, src))
        .buffered(concurrency.max(1))
        .map_ok(|segs| futures::stream::iter(segs.into_iter().map(Ok)))
        .try_flatten()
}

/// The whole segments a source stands for, in order. A source compacted away since it was
/// listed (a segment into a history object, or a history object into a wider one) is read
/// from where a new listing says it is.
pub async fn read_source_segments(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    src: Source,
) -> Result<Vec<Segment>, LogError> {
    Ok(read_source_located(store, shard, src).await?.0)
}

/// [`read_source_segments`], with the sources they were read from (`src`, or where a new
/// listing placed its numbers): a view records those, not the object that was replaced.
pub(crate) async fn read_source_located(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    src: Source,
) -> Result<(Vec<Segment>, Vec<Source>), LogError> {
    if let Some(segs) = read_source_segments_once(&store, shard, src).await? {
        return Ok((segs, vec![src]));
    }
    'relist: for _ in 0..RELISTS {
        let layout = list_layout(store.as_ref(), shard).await?;
        let mut out = Vec::new();
        let located = layout.sources(shard, src.numbers())?;
        for again in &located {
            match read_source_segments_once(&store, shard, *again).await? {
                Some(segs) => out.extend(segs),
                None => continue 'relist,
            }
        }
        return Ok((out, located));
    }
    Err(LogError::Gap {
        shard,
        missing: src.label(),
    })
}

pub(super) async fn read_source_segments_once(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    src: Source,
) -> Result<Option<Vec<Segment>>, LogError> {
    match src {
        Source::Segment { n, tag, .. } => Ok(read_seen_segment(store.as_ref(), shard, n, tag)
            .await?
            .map(|(seg, _)| vec![seg])),
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
pub(super) struct SegmentReader {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) path: object_store::path::Path,
    pub(super) size: u64,
    pub(super) whole: Option<Bytes>,
    /// The object seen: a range read of another one (put in the name since) fails as not
    /// found, like a read of an object compacted away.
    pub(super) tag: Tag,
}

impl SegmentReader {
    async fn fetch(&self, range: Range<u64>) -> object_store::Result<Bytes> {
        if self.tag == Tag::ANY {
            return self.store.get_range(&self.path, range).await;
        }
        let opts = object_store::GetOptions {
            range: Some(range.into()),
            ..Default::default()
        };
        let got = self.store.get_opts(&self.path, opts).await?;
        if !self.tag.admits(Tag::of_meta(&got.meta)) {
            return Err(object_store::Error::NotFound {
                path: self.path.to_string(),
                source: "the object is not the one listed: it was replaced since".into(),
            });
        }
        got.bytes().await
    }
}

/// A slice of a fetched object, or an error for a range beyond it.
pub(super) fn slice_of(whole: &Bytes, range: Range<u64>) -> parquet::errors::Result<Bytes> {
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

/// Ranges of one object closer than this are fetched as one range, the bytes between them
/// included. object_store's default (1 MiB) suits reading much of an object. A read of one
/// user's rows asks for a page or two of each column, and a large object's column chunks lie
/// one after another: at 1 MiB a one-user read of a history object of 1,500 users fetched ~1.5
/// MB between its pages, and under `make sustained` such reads (stale patches' bases) grew to
/// ~0.9 GB a second by minute 9. An object read as it is now (a checkpoint part, a filter run)
/// goes to the store's `get_ranges` in one call, merged this narrowly: the file store reads
/// them in one blocking task; over S3 the store layer sends each as a GET of its own
/// (`keepsake_store::Ranges::EachRange`: object_store's S3 client merged them again, up to 1
/// MiB apart, and fetched the bytes between, uncounted). One read as the object seen (a
/// history object, a segment: its e-tag checked) is fetched a range at a time. Either way what
/// is fetched is what is counted.
pub(super) const READ_COALESCE_BYTES: u64 = 16 * 1024;

/// `ranges` merged where less than `gap` apart, ascending.
fn merge_ranges(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(r.end);
            }
            _ => merged.push(r),
        }
    }
    merged
}

/// Range `r` out of the bytes fetched for `merged` (from [`merge_ranges`], which covers it).
fn slice_merged(
    merged: &[Range<u64>],
    got: &[Bytes],
    r: Range<u64>,
) -> parquet::errors::Result<Bytes> {
    let i = merged
        .partition_point(|m| m.start <= r.start)
        .saturating_sub(1);
    match (merged.get(i), got.get(i)) {
        (Some(m), Some(bytes)) if m.start <= r.start && r.end <= m.end => {
            slice_of(bytes, (r.start - m.start)..(r.end - m.start))
        }
        _ => Err(parquet::errors::ParquetError::EOF(format!(
            "range {}..{} not among those fetched",
            r.start, r.end
        ))),
    }
}

/// Bytes fetched with the footer: enough for the metadata and page index of large segments.
pub(super) const FOOTER_PREFETCH: usize = 64 * 1024;

pub(super) fn external(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for SegmentReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        if let Some(whole) = &self.whole {
            return futures::future::ready(slice_of(whole, range)).boxed();
        }
        async move { self.fetch(range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            if let Some(whole) = &self.whole {
                return ranges.into_iter().map(|r| slice_of(whole, r)).collect();
            }
            if self.tag == Tag::ANY {
                // One call for every range: the file store reads them in one blocking task.
                let merged = merge_ranges(&ranges, READ_COALESCE_BYTES);
                let got = self
                    .store
                    .get_ranges(&self.path, &merged)
                    .await
                    .map_err(external)?;
                return ranges
                    .into_iter()
                    .map(|r| slice_merged(&merged, &got, r))
                    .collect();
            }
            let this = &*self;
            object_store::coalesce_ranges(&ranges, |r| this.fetch(r), READ_COALESCE_BYTES)
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

/// Reads only the footer of segment `n` (its metadata), not its rows; `None` if it does not exist.
///
/// A history object marked verified holds the number's committed copy: an object in the
/// segment's own name then is a source not yet deleted (the same batch) or a stray put into
/// the number by a writer that was behind (another batch, never acknowledged). The history
/// objects are listed after the segment is read, so a stray read — put only after the mark
/// was written — is always replaced by the history object's copy.
pub async fn read_segment_meta(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    n: u64,
) -> Result<Option<SegmentMeta>, LogError> {
    // Its error waits: with a verified copy in a history object, what the name held (a stray
    // replaced mid-read, so a footer that does not parse) does not matter.
    let own = read_own_segment_meta(store.clone(), shard, n).await;
    let (history, verified) = list_history_marked(store.as_ref(), shard).await?;
    let relied = history
        .iter()
        .filter(|h| h.holds(n) && verified.contains(&(h.first, h.last)))
        .min_by_key(|h| h.last - h.first);
    match relied {
        Some(h) => history_meta_of(store, shard, *h, n).await,
        None => own,
    }
}

/// The footer of segment `n`'s own object, else of the history object holding it.
async fn read_own_segment_meta(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    n: u64,
) -> Result<Option<SegmentMeta>, LogError> {
    let path = keys::segment(shard, n);
    let (size, tag) = match store.head(&path).await {
        Ok(m) => (m.size, Tag::of_meta(&m)),
        Err(object_store::Error::NotFound { .. }) => {
            return history_segment_meta(store, shard, n).await;
        }
        Err(e) => return Err(store_err(format!("read segment {n} of shard {shard}"))(e)),
    };
    // The footer of the object the HEAD saw: another one put since reads as gone.
    let mut reader = SegmentReader {
        store: store.clone(),
        path,
        size,
        whole: None,
        tag,
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
pub(crate) async fn history_segment_meta(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    n: u64,
) -> Result<Option<SegmentMeta>, LogError> {
    let Some(object) = narrowest(&list_history(store.as_ref(), shard).await?, n) else {
        return Ok(None);
    };
    history_meta_of(store, shard, object, n).await
}

/// How many events history object `object` holds, from its footer alone (a range read, where
/// [`read_history`] fetches and decodes it whole).
pub async fn history_event_count(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    object: HistoryListed,
) -> Result<u64, LogError> {
    Ok(history_footer_meta(store, shard, object, object.first)
        .await?
        .event_count)
}

/// The metadata in the footer of history object `object` (errors name segment `n`, the one
/// the caller was after).
async fn history_footer_meta(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    object: HistoryListed,
    n: u64,
) -> Result<HistoryMeta, LogError> {
    let mut reader = SegmentReader {
        store,
        path: keys::history(shard, object.first, object.last),
        size: object.size,
        whole: None,
        tag: Tag::ANY,
    };
    let meta = reader
        .get_metadata(None)
        .await
        .map_err(|e| LogError::segment(shard, n, e.into()))?;
    HistoryMeta::from_key_values(meta.file_metadata().key_value_metadata())
        .map_err(|e| LogError::corrupt(shard, n, e))
}

/// The metadata of segment `n` from the footer of history object `object`.
async fn history_meta_of(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    object: HistoryListed,
    n: u64,
) -> Result<Option<SegmentMeta>, LogError> {
    let history = history_footer_meta(store, shard, object, n).await?;
    let sources = history
        .sources()
        .map_err(|e| LogError::corrupt(shard, n, e))?;
    Ok(sources.into_iter().find(|m| m.segment == n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges under the gap apart go together, in any order asked; each comes back sliced
    /// from its merged range, and one outside them is an error, not a panic.
    #[test]
    fn ranges_close_together_are_fetched_as_one_and_sliced_back() {
        let asked = [40..50, 0..10, 12..20, 100..120, 15..18];
        let merged = merge_ranges(&asked, 4);
        assert_eq!(merged, vec![0..20, 40..50, 100..120]);
        let object: Vec<u8> = (0..=255).collect();
        let got: Vec<Bytes> = merged
            .iter()
            .map(|m| Bytes::copy_from_slice(&object[m.start as usize..m.end as usize]))
            .collect();
        for r in asked {
            let bytes = slice_merged(&merged, &got, r.clone()).expect("covered");
            assert_eq!(bytes.as_ref(), &object[r.start as usize..r.end as usize]);
        }
        assert!(slice_merged(&merged, &got, 30..35).is_err());
        assert!(slice_merged(&merged, &got, 110..130).is_err());
        assert_eq!(merge_ranges(&[], 4), Vec::<Range<u64>>::new());
    }
}
