//! One user's events from a list of sources, in one pass: each source pruned by its statistics
//! and page index to the user's rows, read ahead on every core, in order.
//!
//! Invariant: a source that vanishes under a read (compacted since the caller located it) is
//! located again and the read run again ([`with_relisting`]); a read never answers with a
//! partial history.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use keepsake_model::{Event, UserId};
use keepsake_segment::{HistoryMeta, ReadPlan, SegmentMeta, plan_user_read, split_selection};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::PageIndexPolicy;

use crate::error::{LogError, store_err};

use super::footers::HistoryFooter;
use super::*;

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
    pub(super) fn includes(&self, e: &Event) -> bool {
        self.includes_at(e.seq, e.recorded_at)
    }

    pub(super) fn includes_at(&self, seq: u64, recorded_at: DateTime<Utc>) -> bool {
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
    /// Rows decoded whole (the user's, filtered on user_id first; a long run split over cores
    /// also its neighbours' on the same pages); for a read of items, their key columns only.
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
pub(super) const USER_READ_AHEAD: usize = 8;

/// A spawned task that is aborted when its handle is dropped.
pub(super) struct Aborting<T>(tokio::task::JoinHandle<T>);

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
pub(super) const RELISTS: usize = 8;

/// Where segments are now: asked again when a read finds a source gone. The log's readers ask
/// its view (compaction tells the view before it deletes anything), and keep the footers of
/// the history objects they read in the view's [`Footers`]; others list the store, and keep
/// nothing.
#[derive(Clone)]
pub struct Relocate {
    locate: Locate,
    footers: Option<Arc<Footers>>,
}

type Locate =
    Arc<dyn Fn(Vec<u64>) -> BoxFuture<'static, Result<Vec<Source>, LogError>> + Send + Sync>;

impl std::fmt::Debug for Relocate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relocate")
            .field("keeps_footers", &self.footers.is_some())
            .finish()
    }
}

impl Relocate {
    /// Asks `locate` where segments are now; keeps no footers.
    pub fn new(
        locate: impl Fn(Vec<u64>) -> BoxFuture<'static, Result<Vec<Source>, LogError>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            locate: Arc::new(locate),
            footers: None,
        }
    }

    /// Keeps the footers of the history objects read in `footers`.
    pub fn keeping_footers(mut self, footers: Arc<Footers>) -> Self {
        self.footers = Some(footers);
        self
    }

    /// Where segments `numbers` are now.
    pub fn locate(&self, numbers: Vec<u64>) -> BoxFuture<'static, Result<Vec<Source>, LogError>> {
        (self.locate)(numbers)
    }

    pub(super) fn footers(&self) -> Option<Arc<Footers>> {
        self.footers.clone()
    }
}

/// A [`Relocate`] that lists the store.
pub fn by_listing(store: Arc<dyn ObjectStore>, shard: u32) -> Relocate {
    Relocate::new(move |numbers| {
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
pub(super) async fn with_relisting<T, F, Fut>(
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
                if let Some(f) = &relocate.footers {
                    f.forget_history_holding(missing);
                }
                result = read(relocate.locate(numbers.clone()).await?).await;
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
pub(super) fn not_found(e: &parquet::errors::ParquetError) -> bool {
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
pub(super) fn read_ahead<I, T, F, Fut>(
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
        .map(move |item| Aborting(tokio::spawn(keepsake_store::inherit(read(item)))))
        .buffered(USER_READ_AHEAD)
        .map(move |joined| {
            joined.map_err(|e| LogError::Unavailable {
                shard,
                reason: format!("reading a segment failed: {e}"),
            })?
        })
}

/// What one segment holds for one user's read.
pub(super) enum UserSegment {
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
        read_user_sources(
            store.clone(),
            shard,
            user,
            sources,
            up_to,
            relocate.footers(),
        )
    })
    .await
}

pub(super) async fn read_user_sources(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    footers: Option<Arc<Footers>>,
) -> Result<(Vec<Event>, ReadStats), LogError> {
    let reads = read_ahead(shard, sources, |l| {
        read_user_segment(store.clone(), shard, user, l, up_to, footers.clone())
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
pub(super) const WHOLE_READ_BYTES: u64 = 1024 * 1024;

/// A segment opened for one user's read.
pub(super) enum Opened {
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
/// else its footer and page index (a history object's from `footers` when kept there, else
/// read and kept), and plans which pages may hold the user.
pub(super) async fn open_for_user(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    src: Source,
    up_to: UpTo,
    footers: Option<Arc<Footers>>,
) -> Result<Opened, LogError> {
    let (n, size) = (src.label(), src.size());
    let context = || format!("read segment {n} of shard {shard}");
    let path = src.key(shard);
    // Listed but gone: a gap, like a missing number (the caller lists again: it may have been
    // compacted).
    let gone = LogError::Gap { shard, missing: n };
    // The object seen in the listing or view (a segment put in a freed number since, a stray,
    // is another object: read as gone, the caller lists again).
    let tag = match src {
        Source::Segment { tag, .. } => tag,
        Source::History { .. } => Tag::ANY,
    };
    if let (Source::History { object, .. }, Some(footers)) = (src, &footers)
        && size > WHOLE_READ_BYTES
        && footers.keeps_history()
    {
        let kept = match footers.history(&object) {
            Some(f) => Some(f),
            None => {
                let read = read_history_footer(&store, shard, src, object).await?;
                match &read {
                    Some(f) => footers.put_history(&object, f.clone()),
                    None => footers.no_etags(),
                }
                read
            }
        };
        // None: the store gives no e-tag, so nothing would tell a later read that a kept
        // footer is of the object it reads; read as if not kept (and from now on, without
        // asking again).
        if let Some(footer) = kept {
            let reader = SegmentReader {
                store,
                path,
                size: footer.size,
                whole: None,
                tag: footer.tag,
            };
            let again = reader.clone();
            let builder =
                ParquetRecordBatchStreamBuilder::new_with_metadata(reader, footer.loaded.clone());
            return plan_opened(builder, again, footer.first_recorded_at, user, up_to);
        }
    }
    let whole = if size <= WHOLE_READ_BYTES {
        match store.get(&path).await {
            Ok(got) if !tag.admits(Tag::of_meta(&got.meta)) => return Err(gone),
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
        tag,
    };
    let again = reader.clone();
    let builder =
        match ParquetRecordBatchStreamBuilder::new_with_options(reader, read_options()).await {
            Ok(b) => b,
            Err(e) if not_found(&e) => return Err(gone),
            Err(e) => return Err(LogError::user_read(shard, n, e.into())),
        };
    let first_recorded_at = first_recorded_at(builder.metadata(), &src, shard)?;
    plan_opened(builder, again, first_recorded_at, user, up_to)
}

/// When the first event of a segment or history object was recorded, by its footer.
fn first_recorded_at(
    metadata: &parquet::file::metadata::ParquetMetaData,
    src: &Source,
    shard: u32,
) -> Result<DateTime<Utc>, LogError> {
    let kvs = metadata.file_metadata().key_value_metadata();
    if src.is_history() {
        HistoryMeta::from_key_values(kvs).map(|m| m.first_recorded_at)
    } else {
        SegmentMeta::from_key_values(kvs).map(|m| m.first_recorded_at)
    }
    .map_err(|e| LogError::corrupt(shard, src.label(), e))
}

/// A history object's footer and page index, with the write they were read from (its e-tag,
/// asked first and checked on each range read); `None` when the store gives no e-tag.
async fn read_history_footer(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    src: Source,
    object: HistoryListed,
) -> Result<Option<Arc<HistoryFooter>>, LogError> {
    let n = src.label();
    let path = src.key(shard);
    let gone = LogError::Gap { shard, missing: n };
    let meta = match store.head(&path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => return Err(gone),
        Err(e) => return Err(store_err(format!("read segment {n} of shard {shard}"))(e)),
    };
    // Another object than the one located (its sources merged into a wider one since, and
    // the name written again): located again, like one gone.
    if meta.size != object.size {
        return Err(gone);
    }
    let tag = Tag::of_meta(&meta);
    if tag == Tag::ANY {
        return Ok(None);
    }
    let mut reader = SegmentReader {
        store: store.clone(),
        path,
        size: meta.size,
        whole: None,
        tag,
    };
    let loaded = match ArrowReaderMetadata::load_async(&mut reader, read_options()).await {
        Ok(m) => m,
        Err(e) if not_found(&e) => return Err(gone),
        Err(e) => return Err(LogError::user_read(shard, n, e.into())),
    };
    let first_recorded_at = first_recorded_at(loaded.metadata(), &src, shard)?;
    Ok(Some(Arc::new(HistoryFooter {
        size: meta.size,
        tag,
        loaded,
        first_recorded_at,
    })))
}

/// Plans one user's read of an opened object: after the moment, pruned, or the pages to read.
fn plan_opened(
    builder: ParquetRecordBatchStreamBuilder<SegmentReader>,
    again: SegmentReader,
    first_recorded_at: DateTime<Utc>,
    user: UserId,
    up_to: UpTo,
) -> Result<Opened, LogError> {
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

pub(super) fn read_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional)
}

/// A failed read of segment pages: a vanished object is a gap (listed again), the store's
/// failure is retryable, anything else is damage.
pub(super) fn pages_err(shard: u32, n: u64) -> impl Fn(parquet::errors::ParquetError) -> LogError {
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
/// (from memory, for a segment small enough to fetch whole; a history object's footer from
/// `footers` when kept there).
pub(super) async fn read_user_segment(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    src: Source,
    up_to: UpTo,
    footers: Option<Arc<Footers>>,
) -> Result<UserSegment, LogError> {
    let n = src.label();
    let filter = RowFilter {
        user,
        wanted: src.numbers(),
        up_to,
        shard,
        n,
    };
    let (builder, plan, again) =
        match open_for_user(store, shard, user, src, up_to, footers).await? {
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
        // The filter on user_id first: a tail segment holds a few users' rows on one page, and
        // a cold load reads every tail segment holding the user; only the user's own rows are
        // decoded into arrays (perf, make sustained run 7: decoding neighbours' documents was
        // most of a cold load's tail reads).
        let only_user = keepsake_segment::user_row_filter(builder.metadata(), &user);
        let stream = builder
            .with_row_groups(plan.row_groups)
            .with_row_selection(plan.selection)
            .with_row_filter(only_user)
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
            Aborting(tokio::spawn(keepsake_store::inherit(async move {
                filter.read(stream?).await
            })))
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
