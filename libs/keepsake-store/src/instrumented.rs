//! Counting every request sent to the store, by operation and outcome, with latency and bytes:
//! what `/metrics` shows of the store, and what an object-storage bill is made of.
//!
//! [`open_store`](crate::open_store) puts this layer directly over the backend, so it sees
//! each call the rest of the stack makes (retries included, each counted). Counts are per call
//! of the `ObjectStore` API, which is one HTTP request on S3 except:
//! - a listing is counted once, though S3 pages it (one LIST per 1,000 keys);
//! - a delete is counted per object, though object_store's S3 client sends up to 1,000 keys
//!   per `DeleteObjects` request;
//! - `get_ranges` on a store without HTTP requests (the local file system reads every range
//!   in one blocking task; memory) is counted once per call. Over an HTTP store
//!   ([`InstrumentedStore::http`], what `open_store` puts over S3) this layer sends the ranges
//!   itself, one GET per range (ranges that overlap or touch are fetched as one), each counted
//!   with its bytes: object_store's S3 client would merge ranges up to 1 MiB apart and fetch
//!   the bytes between them, which a count of the ranges asked for did not see. The caller
//!   decides what to merge (the log's reader merges a one-user read's pages within 16 KiB).
//!
//! A listing is counted when its stream ends or is dropped (one dropped after its first page
//! made the request; one dropped before it was read is counted too, though a lazy backend never
//! sent it); its latency is until then. Deletes have no latency (they are streamed).
//!
//! Each request is also counted under its [`Cause`] (the work it was for), taken when the
//! call is made.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::cause::{Cause, current};
use crate::histogram::AtomicHistogram;
use crate::keys::{ObjectKind, object_kind};

/// A kind of store request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// An object written (`put_opts`).
    Put,
    /// An object or a range of it read (`get_opts`, `get_ranges`).
    Get,
    /// An object's metadata read (`get_opts` with `head`).
    Head,
    /// A listing (`list`, `list_with_offset`, `list_with_delimiter`).
    List,
    /// An object deleted.
    Delete,
    /// An object copied.
    Copy,
    /// A multipart upload started.
    Multipart,
}

impl StoreOp {
    /// Every kind, in the order metrics show them.
    pub const ALL: [StoreOp; 7] = [
        StoreOp::Put,
        StoreOp::Get,
        StoreOp::Head,
        StoreOp::List,
        StoreOp::Delete,
        StoreOp::Copy,
        StoreOp::Multipart,
    ];

    /// The label metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Put => "put",
            StoreOp::Get => "get",
            StoreOp::Head => "head",
            StoreOp::List => "list",
            StoreOp::Delete => "delete",
            StoreOp::Copy => "copy",
            StoreOp::Multipart => "multipart",
        }
    }
}

/// How a store request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOutcome {
    /// It succeeded.
    Ok,
    /// The object was not there.
    NotFound,
    /// A create-only PUT found the name taken.
    AlreadyExists,
    /// A conditional request's condition did not hold.
    Precondition,
    /// Any other error (network, server, permissions).
    Error,
    /// The caller stopped waiting before an answer (the retrying layer's timeout): the request
    /// was probably sent, and billed.
    Abandoned,
}

impl StoreOutcome {
    /// Every outcome, in the order metrics show them.
    pub const ALL: [StoreOutcome; 6] = [
        StoreOutcome::Ok,
        StoreOutcome::NotFound,
        StoreOutcome::AlreadyExists,
        StoreOutcome::Precondition,
        StoreOutcome::Error,
        StoreOutcome::Abandoned,
    ];

    /// The label metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOutcome::Ok => "ok",
            StoreOutcome::NotFound => "not_found",
            StoreOutcome::AlreadyExists => "already_exists",
            StoreOutcome::Precondition => "precondition",
            StoreOutcome::Error => "error",
            StoreOutcome::Abandoned => "abandoned",
        }
    }

    fn of<T>(result: &Result<T>) -> StoreOutcome {
        match result {
            Ok(_) => StoreOutcome::Ok,
            Err(object_store::Error::NotFound { .. }) => StoreOutcome::NotFound,
            Err(object_store::Error::AlreadyExists { .. }) => StoreOutcome::AlreadyExists,
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. },
            ) => StoreOutcome::Precondition,
            Err(_) => StoreOutcome::Error,
        }
    }
}

/// Latency buckets, in microseconds: 250 µs to 10 s.
const MICROS_BOUNDS: &[u64] = &[
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// What the store was sent: requests by cause, kind and outcome, latency by kind, bytes each
/// way.
#[derive(Debug)]
pub struct StoreStats {
    /// Indexed by cause, then kind, then outcome.
    requests: Vec<AtomicU64>,
    latency_micros: Vec<AtomicHistogram>,
    bytes_written: AtomicU64,
    /// Bytes read, indexed by cause, then the kind of object read.
    bytes_read_by: Vec<AtomicU64>,
    /// GETs answered, indexed as `bytes_read_by`: which objects the read requests go to.
    gets_by: Vec<AtomicU64>,
    /// Reads of the file store answered from the page cache on the caller's thread, and those
    /// handed to its blocking pool ([`crate::cached_reads`]).
    file_reads: [AtomicU64; 2],
}

impl Default for StoreStats {
    fn default() -> Self {
        let n = Cause::ALL.len() * StoreOp::ALL.len() * StoreOutcome::ALL.len();
        Self {
            requests: (0..n).map(|_| AtomicU64::new(0)).collect(),
            latency_micros: StoreOp::ALL
                .iter()
                .map(|_| AtomicHistogram::new(MICROS_BOUNDS))
                .collect(),
            bytes_written: AtomicU64::new(0),
            bytes_read_by: (0..Cause::ALL.len() * ObjectKind::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            gets_by: (0..Cause::ALL.len() * ObjectKind::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            file_reads: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

fn slot(cause: Cause, op: StoreOp, outcome: StoreOutcome) -> usize {
    (cause.index() * StoreOp::ALL.len() + op_index(op)) * StoreOutcome::ALL.len()
        + outcome_index(outcome)
}

fn op_index(op: StoreOp) -> usize {
    StoreOp::ALL.iter().position(|o| *o == op).unwrap_or(0)
}

fn outcome_index(outcome: StoreOutcome) -> usize {
    StoreOutcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(0)
}

impl StoreStats {
    /// Requests of kind `op` that ended with `outcome`, for any cause.
    pub fn requests(&self, op: StoreOp, outcome: StoreOutcome) -> u64 {
        Cause::ALL.iter().map(|c| self.load(*c, op, outcome)).sum()
    }

    /// Requests of kind `op` made for `cause`, whatever their outcome.
    pub fn requests_for(&self, cause: Cause, op: StoreOp) -> u64 {
        StoreOutcome::ALL
            .iter()
            .map(|o| self.load(cause, op, *o))
            .sum()
    }

    fn load(&self, cause: Cause, op: StoreOp, outcome: StoreOutcome) -> u64 {
        self.requests
            .get(slot(cause, op, outcome))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Requests of kind `op`, whatever their outcome.
    pub fn requests_of(&self, op: StoreOp) -> u64 {
        StoreOutcome::ALL
            .iter()
            .map(|o| self.requests(op, *o))
            .sum()
    }

    /// The latency of requests of kind `op`, in microseconds.
    pub fn latency_micros(&self, op: StoreOp) -> Option<&AtomicHistogram> {
        self.latency_micros.get(op_index(op))
    }

    /// Counts a read of the file store: answered from the page cache on the caller's thread
    /// (`cached`), or handed to the file store's blocking pool.
    pub fn count_file_read(&self, cached: bool) {
        self.file_reads[usize::from(!cached)].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads of the file store answered on the caller's thread: the page cache held their
    /// bytes, or the object is not there.
    pub fn file_reads_cached(&self) -> u64 {
        self.file_reads[0].load(Ordering::Relaxed)
    }

    /// Reads of the file store handed to its blocking pool (not all in the page cache, too
    /// large, or off: `--store-inline-file-reads false`).
    pub fn file_reads_handed_off(&self) -> u64 {
        self.file_reads[1].load(Ordering::Relaxed)
    }

    /// Bytes sent in PUTs that succeeded.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes received in GETs (the ranges answered).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read_by
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Bytes received in GETs made for `cause`.
    pub fn bytes_read_for(&self, cause: Cause) -> u64 {
        ObjectKind::ALL
            .iter()
            .map(|k| self.bytes_read_at(cause, *k))
            .sum()
    }

    /// Bytes received in GETs of objects of kind `kind`.
    pub fn bytes_read_of(&self, kind: ObjectKind) -> u64 {
        Cause::ALL
            .iter()
            .map(|c| self.bytes_read_at(*c, kind))
            .sum()
    }

    /// GETs answered for objects of kind `kind` (a `get_ranges` in one call counts once).
    pub fn gets_of(&self, kind: ObjectKind) -> u64 {
        Cause::ALL
            .iter()
            .filter_map(|c| {
                self.gets_by
                    .get(c.index() * ObjectKind::ALL.len() + kind.index())
            })
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn bytes_read_at(&self, cause: Cause, kind: ObjectKind) -> u64 {
        self.bytes_read_by
            .get(cause.index() * ObjectKind::ALL.len() + kind.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// One GET answered with `len` bytes of the object at `location`.
    fn add_read(&self, cause: Cause, location: &Path, len: u64) {
        let at = cause.index() * ObjectKind::ALL.len() + object_kind(location).index();
        if let Some(c) = self.bytes_read_by.get(at) {
            c.fetch_add(len, Ordering::Relaxed);
        }
        if let Some(c) = self.gets_by.get(at) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self, cause: Cause, op: StoreOp, outcome: StoreOutcome) {
        if let Some(c) = self.requests.get(slot(cause, op, outcome)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record<T>(&self, cause: Cause, op: StoreOp, result: &Result<T>, started: Instant) {
        self.count(cause, op, StoreOutcome::of(result));
        if let Some(h) = self.latency_micros(op) {
            h.observe(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
}

/// How a store's `get_ranges` reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// In one call (the local file system, memory): counted as one request.
    OneCall,
    /// As one GET per range (an HTTP store), sent and counted by this layer.
    EachRange,
}

/// A store that counts what it is sent into a [`StoreStats`].
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    stats: Arc<StoreStats>,
    ranges: Ranges,
}

impl InstrumentedStore {
    /// Wraps `inner`, counting into `stats`; `get_ranges` goes to `inner` in one call.
    pub fn new(inner: Arc<dyn ObjectStore>, stats: Arc<StoreStats>) -> Self {
        Self::with_ranges(inner, stats, Ranges::OneCall)
    }

    /// Wraps an HTTP store (S3 and its kind): `get_ranges` is sent as one counted GET per
    /// range ([`Ranges::EachRange`]).
    pub fn http(inner: Arc<dyn ObjectStore>, stats: Arc<StoreStats>) -> Self {
        Self::with_ranges(inner, stats, Ranges::EachRange)
    }

    /// Wraps `inner`, sending its `get_ranges` as `ranges` says.
    pub fn with_ranges(
        inner: Arc<dyn ObjectStore>,
        stats: Arc<StoreStats>,
        ranges: Ranges,
    ) -> Self {
        Self {
            inner,
            stats,
            ranges,
        }
    }
}

impl fmt::Debug for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstrumentedStore({})", self.inner)
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The backend's own description: logs and errors name the store, not the layer.
        fmt::Display::fmt(&self.inner, f)
    }
}

/// Counts one listing when dropped: at the end of its stream, or when its reader stops early.
struct ListCount {
    stats: Arc<StoreStats>,
    cause: Cause,
    started: Instant,
    outcome: StoreOutcome,
}

impl Drop for ListCount {
    fn drop(&mut self) {
        self.stats.count(self.cause, StoreOp::List, self.outcome);
        if let Some(h) = self.stats.latency_micros(StoreOp::List) {
            h.observe(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
}

/// One request on its way: recorded with its outcome when it ends, or as abandoned if the
/// caller drops it first.
struct Pending {
    stats: Arc<StoreStats>,
    cause: Cause,
    op: StoreOp,
    started: Instant,
    done: bool,
}

impl Pending {
    fn start(stats: &Arc<StoreStats>, op: StoreOp) -> Self {
        Self {
            stats: stats.clone(),
            cause: current(),
            op,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish<T>(mut self, result: &Result<T>) {
        self.done = true;
        self.stats.record(self.cause, self.op, result, self.started);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.stats
                .count(self.cause, self.op, StoreOutcome::Abandoned);
        }
    }
}

impl InstrumentedStore {
    fn counted_listing(
        &self,
        listing: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let mut count = ListCount {
            stats: self.stats.clone(),
            cause: current(),
            started: Instant::now(),
            outcome: StoreOutcome::Ok,
        };
        listing
            .map(move |item| {
                if item.is_err() && count.outcome == StoreOutcome::Ok {
                    count.outcome = StoreOutcome::of(&item);
                }
                item
            })
            .boxed()
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let (pending, len) = (
            Pending::start(&self.stats, StoreOp::Put),
            payload.content_length() as u64,
        );
        let result = self.inner.put_opts(location, payload, opts).await;
        pending.finish(&result);
        if result.is_ok() {
            self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let pending = Pending::start(&self.stats, StoreOp::Multipart);
        let result = self.inner.put_multipart_opts(location, opts).await;
        pending.finish(&result);
        result
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head {
            StoreOp::Head
        } else {
            StoreOp::Get
        };
        let pending = Pending::start(&self.stats, op);
        let result = self.inner.get_opts(location, options).await;
        pending.finish(&result);
        if op == StoreOp::Get
            && let Ok(got) = &result
        {
            let len = got.range.end.saturating_sub(got.range.start);
            self.stats.add_read(current(), location, len);
        }
        result
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if self.ranges == Ranges::EachRange {
            // Each range a GET of this layer's own (`get_opts`, counted with its bytes);
            // ranges that overlap or touch go as one.
            return object_store::coalesce_ranges(
                ranges,
                |r| object_store::ObjectStoreExt::get_range(self, location, r),
                0,
            )
            .await;
        }
        let pending = Pending::start(&self.stats, StoreOp::Get);
        let result = self.inner.get_ranges(location, ranges).await;
        pending.finish(&result);
        if let Ok(parts) = &result {
            let len: usize = parts.iter().map(Bytes::len).sum();
            self.stats.add_read(current(), location, len as u64);
        }
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (stats, cause) = (self.stats.clone(), current());
        self.inner
            .delete_stream(locations)
            .map(move |deleted| {
                stats.count(cause, StoreOp::Delete, StoreOutcome::of(&deleted));
                deleted
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counted_listing(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counted_listing(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let pending = Pending::start(&self.stats, StoreOp::List);
        let result = self.inner.list_with_delimiter(prefix).await;
        pending.finish(&result);
        result
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let pending = Pending::start(&self.stats, StoreOp::Copy);
        let result = self.inner.copy_opts(from, to, options).await;
        pending.finish(&result);
        result
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutMode};

    use super::*;

    fn store() -> (Arc<dyn ObjectStore>, Arc<StoreStats>) {
        let stats = Arc::new(StoreStats::default());
        let store = InstrumentedStore::new(Arc::new(InMemory::new()), stats.clone());
        (Arc::new(store), stats)
    }

    #[tokio::test]
    async fn every_request_is_counted_by_kind_and_outcome() {
        use futures::TryStreamExt;
        let (store, stats) = store();
        let a = Path::from("a/1");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store
            .put_opts(&a, PutPayload::from("hello"), create.clone())
            .await
            .expect("put");
        let taken = store.put_opts(&a, PutPayload::from("again"), create).await;
        assert!(matches!(
            taken,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        assert_eq!(stats.requests(StoreOp::Put, StoreOutcome::Ok), 1);
        assert_eq!(stats.requests(StoreOp::Put, StoreOutcome::AlreadyExists), 1);
        assert_eq!(stats.bytes_written(), 5, "only the PUT that landed");

        let got = store
            .get(&a)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(got.as_ref(), b"hello");
        store.get_range(&a, 1..3).await.expect("range");
        store.get_ranges(&a, &[0..1, 2..4]).await.expect("ranges");
        assert!(store.get(&Path::from("a/none")).await.is_err());
        store.head(&a).await.expect("head");
        assert_eq!(stats.requests(StoreOp::Get, StoreOutcome::Ok), 3);
        assert_eq!(stats.requests(StoreOp::Get, StoreOutcome::NotFound), 1);
        assert_eq!(stats.requests(StoreOp::Head, StoreOutcome::Ok), 1);
        assert_eq!(stats.bytes_read(), 5 + 2 + 3);

        let listed: Vec<_> = store
            .list(Some(&Path::from("a")))
            .try_collect()
            .await
            .expect("list");
        assert_eq!(listed.len(), 1);
        // A listing dropped before its end was still sent.
        drop(store.list(None));
        store.list_with_delimiter(None).await.expect("list");
        assert_eq!(stats.requests(StoreOp::List, StoreOutcome::Ok), 3);

        store.delete(&a).await.expect("delete");
        assert_eq!(stats.requests_of(StoreOp::Delete), 1);
        let latency = stats.latency_micros(StoreOp::Get).expect("histogram");
        assert_eq!(latency.snapshot().2, 4, "one latency per GET");
        assert_eq!(stats.requests_of(StoreOp::Copy), 0);
        assert_eq!(stats.requests_for(Cause::Other, StoreOp::Get), 4);
    }

    #[tokio::test]
    async fn requests_are_counted_under_their_cause() {
        use crate::cause::{inherit, with_cause};
        use futures::TryStreamExt;
        let (store, stats) = store();
        let a = Path::from("a/1");
        with_cause(Cause::Checkpoint, async {
            store.put(&a, PutPayload::from("x")).await.expect("put");
            // A listing made here and read in a spawned task is still the checkpoint's.
            let listing = store.list(None);
            let spawned = tokio::spawn(inherit(
                async move { listing.try_collect::<Vec<_>>().await },
            ));
            assert!(spawned.await.is_ok());
        })
        .await;
        with_cause(Cause::Devices, async {
            store.get(&a).await.expect("get");
        })
        .await;
        let segment = crate::keys::segment(0, 1);
        store
            .put(&segment, PutPayload::from("segment"))
            .await
            .expect("put");
        with_cause(Cause::Read, async {
            store.get_range(&segment, 0..3).await.expect("range");
            store
                .get_ranges(&segment, &[0..1, 4..7])
                .await
                .expect("ranges");
        })
        .await;
        assert_eq!(stats.requests_for(Cause::Checkpoint, StoreOp::Put), 1);
        assert_eq!(stats.requests_for(Cause::Checkpoint, StoreOp::List), 1);
        assert_eq!(stats.requests_for(Cause::Devices, StoreOp::Get), 1);
        assert_eq!(stats.requests_for(Cause::Other, StoreOp::Get), 0);
        assert_eq!(stats.requests_of(StoreOp::Put), 2);
        // Bytes read by cause and by the kind of object: the 1 byte of `a/1` (another kind),
        // the 3 + 4 of the segment.
        assert_eq!(stats.bytes_read_for(Cause::Devices), 1);
        assert_eq!(stats.bytes_read_for(Cause::Read), 7);
        assert_eq!(stats.bytes_read_of(ObjectKind::Segment), 7);
        assert_eq!(stats.bytes_read_of(ObjectKind::Other), 1);
        assert_eq!(stats.bytes_read_of(ObjectKind::Part), 0);
        assert_eq!(stats.bytes_read(), 8);
        // GETs by the kind of object: the segment's range and its ranges in one call.
        assert_eq!(stats.gets_of(ObjectKind::Segment), 2);
        assert_eq!(stats.gets_of(ObjectKind::Part), 0);
    }

    /// Over an HTTP store each range of a `get_ranges` is a GET of its own, counted with its
    /// bytes: the count is what the store was sent (checked against a counting layer under
    /// it), where object_store's S3 client merged ranges up to 1 MiB apart, uncounted.
    #[tokio::test]
    async fn each_range_over_an_http_store_is_a_counted_get() {
        let under_stats = Arc::new(StoreStats::default());
        let under: Arc<dyn ObjectStore> = Arc::new(InstrumentedStore::new(
            Arc::new(InMemory::new()),
            under_stats.clone(),
        ));
        let stats = Arc::new(StoreStats::default());
        let store = InstrumentedStore::http(under.clone(), stats.clone());
        let big = Path::from("shards/0/parts/00000000000000000001-0.parquet");
        let bytes: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        under.put(&big, bytes.clone().into()).await.expect("put");
        let puts = under_stats.requests_of(StoreOp::Put);
        assert_eq!(puts, 1);

        // Two ranges 10 bytes apart, one 2 MiB further, and one touching the first.
        let mib = 1u64 << 20;
        let asked = [0..10, 20..30, 2 * mib..2 * mib + 10, 10..15];
        let got = store.get_ranges(&big, &asked).await.expect("ranges");
        for (r, b) in asked.iter().zip(&got) {
            assert_eq!(&b[..], &bytes[r.start as usize..r.end as usize]);
        }
        // 0..15 (two touching ranges as one), 20..30, and the far one: three GETs, 35 bytes.
        assert_eq!(stats.requests_of(StoreOp::Get), 3);
        assert_eq!(
            under_stats.requests_of(StoreOp::Get),
            3,
            "what the store was sent"
        );
        assert_eq!(stats.bytes_read(), 35);
        assert_eq!(under_stats.bytes_read(), stats.bytes_read());
        assert_eq!(stats.bytes_read_of(ObjectKind::Part), 35);
        assert_eq!(
            stats.gets_of(ObjectKind::Part),
            3,
            "each GET sent, by its object"
        );

        // Without HTTP requests (the file system, memory): one call, counted once.
        let one = InstrumentedStore::new(under.clone(), stats.clone());
        let before = stats.requests_of(StoreOp::Get);
        one.get_ranges(&big, &asked).await.expect("ranges");
        assert_eq!(stats.requests_of(StoreOp::Get), before + 1);
    }
}
