//! Reads of the file store answered on the calling thread when the page cache holds their bytes.
//!
//! object_store's file store runs every request on tokio's blocking pool: a GET is two tasks
//! there (open and stat the file; then read it), a `get_ranges` one. Under `make sustained` a
//! user loaded into a view costs ~7 GETs, the server makes thousands a second, and handing them
//! to the pool's threads and back, each woken and put to sleep, was the largest share of the
//! server's samples (`finish_task_switch` and the futex waits and wakes around it:
//! docs/BENCHMARKS.md, "Reads answered from the page cache"). A read of a few KiB that the page
//! cache holds is a copy of a few microseconds: less than the hand-off.
//!
//! So [`CachedReads`], over the file store, first tries a read of at most [`INLINE_MAX`] bytes
//! itself: it opens the file, stats it, and reads with `preadv2(RWF_NOWAIT)`, which copies what
//! the page cache holds and never waits for the disk (it answers `EAGAIN`, or fewer bytes than
//! asked). Whatever that does not answer in full (bytes not all cached, a larger read, a HEAD,
//! preconditions, anything unusual) goes to the file store as before, which opens the file again
//! and answers it its own way, errors included. Writes, listings and deletes go to it unchanged.
//! A file system that does not take the flag turns the first try off for the process.
//!
//! Invariants:
//! - An answer given here is the one the file store would give: the metadata (its e-tag
//!   object_store's `"inode-mtime-size"`, which its listings and its own GETs give; checked
//!   against them in the tests) is the stat of the open file the bytes are read from, so the
//!   bytes and the e-tag are of one write, even when another write replaces the name meanwhile.
//! - What waits for the disk never runs on the caller's thread. Opening and stat-ing a file do:
//!   they read its directory entry and inode, which the kernel keeps cached for files recently
//!   listed, written or read — how the log reaches the objects it reads.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};

use crate::instrumented::StoreStats;

/// The most bytes one request reads on the caller's thread (a copy of ~20 µs); larger reads go
/// to the blocking pool, where their copy does not hold up other requests.
pub const INLINE_MAX: u64 = 256 * 1024;

/// The file store, with reads the page cache holds answered on the calling thread.
#[derive(Debug)]
pub struct CachedReads {
    inner: LocalFileSystem,
    stats: Arc<StoreStats>,
    /// Off when told (`--store-inline-file-reads false`), or once the file system refused
    /// `RWF_NOWAIT`: every read then goes to the file store.
    nowait: AtomicBool,
}

impl CachedReads {
    /// `inner`, its reads counted in `stats` ([`StoreStats::file_reads_cached`] and
    /// [`StoreStats::file_reads_handed_off`]); with `inline` false, every read is handed to
    /// `inner` (and counted so).
    pub fn new(inner: LocalFileSystem, stats: Arc<StoreStats>, inline: bool) -> Self {
        Self {
            inner,
            stats,
            nowait: AtomicBool::new(inline),
        }
    }

    /// The open file behind `location`; `Err` for one that is not there (the file store's
    /// answer too), `None` for anything the file store should answer itself.
    fn open(&self, location: &Path) -> Option<Result<File>> {
        if !self.nowait.load(Relaxed) {
            return None;
        }
        let path = self.inner.path_to_filesystem(location).ok()?;
        match File::open(&path) {
            Ok(file) => Some(Ok(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Some(Err(object_store::Error::NotFound {
                    path: path.to_string_lossy().to_string(),
                    source: Box::new(e),
                }))
            }
            Err(_) => None,
        }
    }

    /// `range` of `file` if the page cache holds all of it; `None` otherwise (or at the file's
    /// end before the range's, which the file store reports its way).
    fn read_cached(&self, file: &File, range: Range<u64>) -> Option<Bytes> {
        use rustix::io::{Errno, ReadWriteFlags};
        let len = usize::try_from(range.end.checked_sub(range.start)?).ok()?;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let mut bufs = [io::IoSliceMut::new(&mut buf[filled..])];
            let at = range.start + filled as u64;
            match rustix::io::preadv2(file, &mut bufs, at, ReadWriteFlags::NOWAIT) {
                Ok(0) => return None,
                // What the cache held; the next call answers EAGAIN if the rest is not there.
                Ok(n) => filled += n,
                Err(Errno::INTR) => {}
                Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                    if self.nowait.swap(false, Relaxed) {
                        tracing::info!(
                            "the file system does not read with RWF_NOWAIT: every store read goes to the blocking pool"
                        );
                    }
                    return None;
                }
                Err(_) => return None,
            }
        }
        Some(Bytes::from(buf))
    }

    /// A GET answered here, or `None` to send it to the file store.
    fn try_get(&self, location: &Path, options: &GetOptions) -> Option<Result<GetResult>> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        if !plain {
            return None;
        }
        let file = match self.open(location)? {
            Ok(file) => file,
            Err(e) => return Some(Err(e)),
        };
        let stat = file.metadata().ok()?;
        if !stat.is_file() {
            return None;
        }
        let meta = object_meta(&stat, location.clone())?;
        let range = match &options.range {
            Some(r) => r.as_range(meta.size).ok()?,
            None => 0..meta.size,
        };
        if range.end.saturating_sub(range.start) > INLINE_MAX {
            return None;
        }
        let bytes = self.read_cached(&file, range.clone())?;
        Some(Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes: Attributes::default(),
            extensions: Default::default(),
        }))
    }

    /// A `get_ranges` answered here, or `None` to send it to the file store.
    fn try_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Option<Result<Vec<Bytes>>> {
        let total = ranges
            .iter()
            .try_fold(0u64, |n, r| n.checked_add(r.end.checked_sub(r.start)?))?;
        if total > INLINE_MAX {
            return None;
        }
        let file = match self.open(location)? {
            Ok(file) => file,
            Err(e) => return Some(Err(e)),
        };
        ranges
            .iter()
            .map(|r| self.read_cached(&file, r.clone()))
            .collect::<Option<Vec<_>>>()
            .map(Ok)
    }

    fn answered_here(&self, here: bool) {
        self.stats.count_file_read(here);
    }
}

/// What the file store says of a file (object_store's `convert_metadata`): its size, its
/// modification time, and an e-tag of its inode, modification time (µs) and size.
fn object_meta(stat: &std::fs::Metadata, location: Path) -> Option<ObjectMeta> {
    let modified = stat.modified().ok()?;
    let micros = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    Some(ObjectMeta {
        location,
        last_modified: modified.into(),
        size: stat.len(),
        e_tag: Some(format!("\"{:x}-{micros:x}-{:x}\"", stat.ino(), stat.len())),
        version: None,
    })
}

impl fmt::Display for CachedReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedReads({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CachedReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if let Some(answer) = self.try_get(location, &options) {
            self.answered_here(true);
            return answer;
        }
        self.answered_here(false);
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if let Some(answer) = self.try_ranges(location, ranges) {
            self.answered_here(true);
            return answer;
        }
        self.answered_here(false);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::{GetRange, ObjectStoreExt, PutMode};

    use super::*;

    fn stores(dir: &std::path::Path) -> (CachedReads, LocalFileSystem, Arc<StoreStats>) {
        let fs = || LocalFileSystem::new_with_prefix(dir).expect("file store");
        let stats = Arc::new(StoreStats::default());
        (CachedReads::new(fs(), stats.clone(), true), fs(), stats)
    }

    fn body(n: usize) -> Bytes {
        (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
    }

    async fn get(
        store: &dyn ObjectStore,
        at: &Path,
        range: Option<GetRange>,
    ) -> (ObjectMeta, Range<u64>, Bytes) {
        let got = store
            .get_opts(
                at,
                GetOptions {
                    range,
                    ..Default::default()
                },
            )
            .await
            .expect("get");
        let (meta, range) = (got.meta.clone(), got.range.clone());
        (meta, range, got.bytes().await.expect("bytes"))
    }

    /// Every read answers what the file store answers (bytes, range, metadata with its e-tag),
    /// and those the page cache holds (a file just written) are answered without it.
    #[tokio::test]
    async fn reads_answer_what_the_file_store_answers() {
        let dir = tempfile::tempdir().expect("dir");
        let (cached, plain, stats) = stores(dir.path());
        let at = Path::from("shards/0/segments/1.parquet");
        plain.put(&at, body(70_000).into()).await.expect("put");

        let ranges = [
            None,
            Some(GetRange::Bounded(10..20_000)),
            Some(GetRange::Offset(65_000)),
            Some(GetRange::Suffix(4_096)),
            Some(GetRange::Bounded(69_000..80_000)),
        ];
        for r in ranges {
            assert_eq!(
                get(&cached, &at, r.clone()).await,
                get(&plain, &at, r).await
            );
        }
        let wanted = [0..5, 3..9, 60_000..70_000];
        assert_eq!(
            cached.get_ranges(&at, &wanted).await.expect("ranges"),
            plain.get_ranges(&at, &wanted).await.expect("ranges")
        );
        // The e-tag a listing and a HEAD give for the write is the one read here.
        let listed: Vec<ObjectMeta> = plain.list(None).try_collect().await.expect("list");
        let (meta, ..) = get(&cached, &at, None).await;
        assert_eq!(listed, vec![meta.clone()]);
        assert_eq!(plain.head(&at).await.expect("head"), meta);

        let here = stats.file_reads_cached();
        assert_eq!(here + stats.file_reads_handed_off(), 7);
        assert!(here >= 1, "a file just written is in the page cache");
    }

    /// A read of another write put in the name since gives that write's bytes with that
    /// write's e-tag: one open file is stat-ed and read.
    #[tokio::test]
    async fn a_name_written_again_reads_as_the_new_write() {
        let dir = tempfile::tempdir().expect("dir");
        let (cached, plain, _) = stores(dir.path());
        let at = Path::from("a/1");
        plain
            .put(&at, Bytes::from_static(b"first").into())
            .await
            .expect("put");
        let (first, ..) = get(&cached, &at, None).await;
        plain.delete(&at).await.expect("delete");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        plain
            .put_opts(&at, Bytes::from_static(b"second, longer").into(), create)
            .await
            .expect("put again");
        let (second, _, bytes) = get(&cached, &at, None).await;
        assert_eq!(bytes.as_ref(), b"second, longer");
        assert_ne!(first.e_tag, second.e_tag);
        assert_eq!(plain.head(&at).await.expect("head").e_tag, second.e_tag);
    }

    /// Bytes the page cache does not hold are read by the file store on its blocking pool,
    /// never waited for here.
    #[tokio::test]
    async fn bytes_not_in_the_page_cache_go_to_the_blocking_pool() {
        let dir = tempfile::tempdir().expect("dir");
        let (cached, plain, stats) = stores(dir.path());
        let at = Path::from("a/cold");
        plain.put(&at, body(64 * 1024).into()).await.expect("put");
        // Once synced its pages are clean, and the kernel drops them when told.
        let file = File::open(dir.path().join("a/cold")).expect("open");
        file.sync_all().expect("sync");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        let before = (stats.file_reads_cached(), stats.file_reads_handed_off());
        assert_eq!(get(&cached, &at, None).await, get(&plain, &at, None).await);
        assert_eq!(
            (stats.file_reads_cached(), stats.file_reads_handed_off()),
            (before.0, before.1 + 1)
        );
        // The blocking read brought them back into the cache: now they are read here.
        get(&cached, &at, None).await;
        assert_eq!(stats.file_reads_cached(), before.0 + 1);
    }

    /// Told not to (`--store-inline-file-reads false`), it hands every read to the file store,
    /// and counts it so.
    #[tokio::test]
    async fn told_not_to_it_hands_every_read_over() {
        let dir = tempfile::tempdir().expect("dir");
        let stats = Arc::new(StoreStats::default());
        let fs = LocalFileSystem::new_with_prefix(dir.path()).expect("file store");
        let off = CachedReads::new(fs, stats.clone(), false);
        let at = Path::from("a/1");
        off.put(&at, body(10).into()).await.expect("put");
        assert_eq!(get(&off, &at, None).await.2, body(10));
        off.get_ranges(&at, &[0..1, 2..3]).await.expect("ranges");
        assert_eq!(
            (stats.file_reads_cached(), stats.file_reads_handed_off()),
            (0, 2)
        );
    }

    /// What is not there, what is not a file and what is asked beyond an object's end are
    /// answered as the file store answers them; reads too large to take here go to it.
    #[tokio::test]
    async fn errors_and_large_reads_are_the_file_stores() {
        let dir = tempfile::tempdir().expect("dir");
        let (cached, plain, stats) = stores(dir.path());
        let missing = cached.get(&Path::from("a/none")).await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );
        let missing = cached
            .get_ranges(&Path::from("a/none"), &[0..1, 2..3])
            .await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );

        let at = Path::from("a/1");
        plain.put(&at, body(100).into()).await.expect("put");
        let dir_read = cached.get(&Path::from("a")).await;
        assert!(
            matches!(dir_read, Err(object_store::Error::NotFound { .. })),
            "{dir_read:?}"
        );
        let said = |r: Result<Vec<Bytes>>| r.map_err(|e| e.to_string());
        for r in [50..200, 100..120, 150..200] {
            assert_eq!(
                said(cached.get_range(&at, r.clone()).await.map(|b| vec![b])),
                said(plain.get_range(&at, r.clone()).await.map(|b| vec![b])),
                "{r:?}"
            );
            assert_eq!(
                said(cached.get_ranges(&at, &[0..1, r.clone()]).await),
                said(plain.get_ranges(&at, &[0..1, r.clone()]).await),
                "{r:?}"
            );
        }

        let large = Path::from("a/large");
        let n = usize::try_from(INLINE_MAX).expect("small") + 1;
        plain.put(&large, body(n).into()).await.expect("put");
        let before = stats.file_reads_handed_off();
        assert_eq!(
            get(&cached, &large, None).await,
            get(&plain, &large, None).await
        );
        assert_eq!(stats.file_reads_handed_off(), before + 1);
    }
}
