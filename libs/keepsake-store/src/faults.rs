//! A fault-injecting object store, for tests of every durability boundary.
//!
//! Rules are registered per instance (tests run in parallel, each with its own store) and match
//! an operation on paths containing a substring, for a number of times:
//! - [`Fault::Fail`]: the operation fails before reaching the store (a PUT that never landed);
//! - [`Fault::FailAfter`]: a PUT lands, then the caller sees an error (an ambiguous write);
//! - [`Fault::Delay`]: the operation waits first (a slow PUT, or one that outlives a timeout).
//! - [`Fault::OmitLast`], [`Fault::OmitHistory`]: a listing that misses objects that exist;
//! - [`Fault::LandLate`]: a PUT that lands after its caller gave up: the request goes on without
//!   the caller (as a request on a slow network does), so a writer that timed out on it may see
//!   the object appear later.
//!
//! [`FaultyStore::hold`] stops the next matching operation until the test releases it, and lets
//! the test wait until the operation got there: a rendezvous that orders two processes' steps
//! exactly (no sleeps standing in for synchronisation).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The operation a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// `put_opts`.
    Put,
    /// `get_opts` and `get_ranges`.
    Get,
    /// `list` and `list_with_delimiter`.
    List,
    /// `delete` (`delete_stream`): a failed delete leaves the object in place.
    Delete,
}

/// What happens to a matched operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails before reaching the store.
    Fail,
    /// Reaches the store, then reports failure (PUT only; other operations just fail).
    FailAfter,
    /// Waits, then proceeds.
    Delay(Duration),
    /// PUT: the request goes on in the background and lands after the delay, whether or not the
    /// caller still waits for it (a caller that gave up, for example on a timeout, is not told).
    /// Other operations: as `Delay`.
    LandLate(Duration),
    /// LIST only: the listing leaves out its last object (a listing that missed the newest
    /// write, as eventually consistent listings and busy directories can).
    OmitLast,
    /// LIST only: the listing leaves out every history object — what one listing of a whole
    /// shard shows when another process's compaction writes a history object after the
    /// listing passed the history keys and deletes its sources before it reaches theirs.
    OmitHistory,
}

#[derive(Debug)]
struct Rule {
    op: FaultOp,
    path_contains: String,
    fault: Fault,
    remaining: usize,
}

/// An operation held by [`FaultyStore::hold`]: the test waits for it to arrive, then lets it go.
#[derive(Clone, Debug)]
pub struct Gate {
    reached: Arc<tokio::sync::Semaphore>,
    released: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Self {
            reached: Arc::new(tokio::sync::Semaphore::new(0)),
            released: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    /// Waits until the held operation has arrived (and is waiting).
    pub async fn reached(&self) {
        if let Ok(p) = self.reached.acquire().await {
            p.forget();
        }
    }

    /// Lets the held operation go on.
    pub fn release(&self) {
        self.released.add_permits(1);
    }

    async fn pass(&self) {
        self.reached.add_permits(1);
        if let Ok(p) = self.released.acquire().await {
            p.forget();
        }
    }
}

/// Wraps a store and injects the faults its rules describe.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Arc<Mutex<Vec<Rule>>>,
    /// (operation, a part of the path, whether HEADs pass by, the gate).
    holds: Mutex<Vec<(FaultOp, String, bool, Gate)>>,
    puts: AtomicU64,
    gets: AtomicU64,
    injected: Arc<AtomicU64>,
    /// GETs counted by path: (a part of the path, whole objects only, the count).
    counted_gets: Mutex<Vec<(String, bool, Arc<AtomicU64>)>>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    /// Wraps `inner` with no rules.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rules: Arc::new(Mutex::new(Vec::new())),
            holds: Mutex::new(Vec::new()),
            puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            injected: Arc::new(AtomicU64::new(0)),
            counted_gets: Mutex::new(Vec::new()),
        })
    }

    /// The next `times` matching operations on paths containing `path_contains` get `fault`.
    pub fn inject(&self, op: FaultOp, path_contains: &str, fault: Fault, times: usize) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule {
                op,
                path_contains: path_contains.to_string(),
                fault,
                remaining: times,
            });
        }
    }

    /// Holds the next operation `op` on a path containing `path_contains` (PUT, or GET: a HEAD,
    /// a read or a read of ranges) until the returned gate is released; then it proceeds (and
    /// meets any fault rule) as usual.
    pub fn hold(&self, op: FaultOp, path_contains: &str) -> Gate {
        self.hold_where(op, path_contains, false)
    }

    /// Holds the next read (a GET that is not a HEAD) of a path containing `path_contains`.
    pub fn hold_read(&self, path_contains: &str) -> Gate {
        self.hold_where(FaultOp::Get, path_contains, true)
    }

    fn hold_where(&self, op: FaultOp, path_contains: &str, reads_only: bool) -> Gate {
        let gate = Gate::new();
        if let Ok(mut holds) = self.holds.lock() {
            holds.push((op, path_contains.to_string(), reads_only, gate.clone()));
        }
        gate
    }

    async fn wait_if_held(&self, op: FaultOp, path: &Path, head: bool) {
        let gate = self.holds.lock().ok().and_then(|mut holds| {
            let i = holds.iter().position(|(o, p, reads_only, _)| {
                *o == op && path.as_ref().contains(p.as_str()) && !(head && *reads_only)
            })?;
            Some(holds.remove(i).3)
        });
        if let Some(gate) = gate {
            gate.pass().await;
        }
    }

    /// Removes every rule.
    pub fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
    }

    /// PUTs attempted so far (including failed ones).
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
    }

    /// GETs attempted so far.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    /// From now on, counts the GETs (`get_opts` and `get_ranges` calls) of paths containing
    /// `path_contains`.
    pub fn count_gets(&self, path_contains: &str) -> Arc<AtomicU64> {
        self.counter(path_contains, false)
    }

    /// From now on, counts the GETs of whole objects (no range; HEADs are not counted) of paths
    /// containing `path_contains`.
    pub fn count_whole_gets(&self, path_contains: &str) -> Arc<AtomicU64> {
        self.counter(path_contains, true)
    }

    fn counter(&self, path_contains: &str, whole_only: bool) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        if let Ok(mut counted) = self.counted_gets.lock() {
            counted.push((path_contains.to_string(), whole_only, count.clone()));
        }
        count
    }

    /// Counts a GET of `path`; `whole`: of the whole object.
    fn count_get(&self, path: &Path, whole: bool) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if let Ok(counted) = self.counted_gets.lock() {
            for (part, whole_only, count) in counted.iter() {
                if path.as_ref().contains(part.as_str()) && (whole || !whole_only) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn take(&self, op: FaultOp, path: &Path) -> Option<Fault> {
        take(&self.rules, &self.injected, op, path)
    }
}

fn take(rules: &Mutex<Vec<Rule>>, injected: &AtomicU64, op: FaultOp, path: &Path) -> Option<Fault> {
    let mut rules = rules.lock().ok()?;
    let idx = rules
        .iter()
        .position(|r| r.op == op && r.remaining > 0 && path.as_ref().contains(&r.path_contains))?;
    let rule = &mut rules[idx];
    rule.remaining -= 1;
    let fault = rule.fault;
    if rule.remaining == 0 {
        rules.remove(idx);
    }
    injected.fetch_add(1, Ordering::Relaxed);
    Some(fault)
}

fn injected(op: &str, path: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: Box::new(std::io::Error::other(format!(
            "injected {op} fault at {path}"
        ))),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.wait_if_held(FaultOp::Put, location, false).await;
        match self.take(FaultOp::Put, location) {
            Some(Fault::Fail | Fault::OmitLast | Fault::OmitHistory) => {
                Err(injected("put", location))
            }
            Some(Fault::FailAfter) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected("put (after landing)", location))
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.inner.put_opts(location, payload, opts).await
            }
            Some(Fault::LandLate(d)) => {
                let (inner, at) = (self.inner.clone(), location.clone());
                let landing = tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    inner.put_opts(&at, payload, opts).await
                });
                match landing.await {
                    Ok(result) => result,
                    Err(_) => Err(injected("put (the late landing task failed)", location)),
                }
            }
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.count_get(location, options.range.is_none() && !options.head);
        self.wait_if_held(FaultOp::Get, location, options.head)
            .await;
        match self.take(FaultOp::Get, location) {
            Some(Fault::Fail | Fault::FailAfter | Fault::OmitLast | Fault::OmitHistory) => {
                Err(injected("get", location))
            }
            Some(Fault::Delay(d) | Fault::LandLate(d)) => {
                tokio::time::sleep(d).await;
                self.inner.get_opts(location, options).await
            }
            None => self.inner.get_opts(location, options).await,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.count_get(location, false);
        self.wait_if_held(FaultOp::Get, location, false).await;
        match self.take(FaultOp::Get, location) {
            Some(Fault::Fail | Fault::FailAfter | Fault::OmitLast | Fault::OmitHistory) => {
                Err(injected("get", location))
            }
            Some(Fault::Delay(d) | Fault::LandLate(d)) => {
                tokio::time::sleep(d).await;
                self.inner.get_ranges(location, ranges).await
            }
            None => self.inner.get_ranges(location, ranges).await,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // Locations a rule fails are answered with an error and kept from the inner store.
        let (rules, count) = (self.rules.clone(), self.injected.clone());
        let (failed_tx, failed_rx) = std::sync::mpsc::channel();
        let passed = locations.filter_map(move |loc| {
            let failed = match &loc {
                Ok(p) => take(&rules, &count, FaultOp::Delete, p).map(|_| p.clone()),
                Err(_) => None,
            };
            let out = match failed {
                Some(p) => {
                    let _ = failed_tx.send(p);
                    None
                }
                None => Some(loc),
            };
            futures::future::ready(out)
        });
        let deleted = self.inner.delete_stream(passed.boxed());
        let failures = futures::stream::iter(std::iter::from_fn(move || failed_rx.try_recv().ok()))
            .map(|p| Err(injected("delete", &p)));
        deleted.chain(failures).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        match self.take(FaultOp::List, &at) {
            Some(Fault::OmitLast) => {
                let inner = self.inner.list(prefix);
                futures::stream::once(async move {
                    let mut all: Vec<ObjectMeta> = inner.try_collect().await?;
                    all.sort_by(|a, b| a.location.cmp(&b.location));
                    all.pop();
                    Ok::<_, object_store::Error>(futures::stream::iter(all.into_iter().map(Ok)))
                })
                .try_flatten()
                .boxed()
            }
            Some(Fault::OmitHistory) => self
                .inner
                .list(prefix)
                .try_filter(|m| {
                    futures::future::ready(!matches!(
                        crate::keys::parse(&m.location),
                        Some(crate::keys::Key::History { .. })
                    ))
                })
                .boxed(),
            Some(Fault::Delay(d) | Fault::LandLate(d)) => {
                let inner = self.inner.clone();
                futures::stream::once(async move {
                    tokio::time::sleep(d).await;
                    inner.list(Some(&at))
                })
                .flatten()
                .boxed()
            }
            Some(_) => futures::stream::once(async move { Err(injected("list", &at)) }).boxed(),
            None => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        match self.take(FaultOp::List, &at) {
            Some(Fault::Delay(d) | Fault::LandLate(d)) => {
                tokio::time::sleep(d).await;
                self.inner.list_with_delimiter(prefix).await
            }
            Some(_) => Err(injected("list", &at)),
            None => self.inner.list_with_delimiter(prefix).await,
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
