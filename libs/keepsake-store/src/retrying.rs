//! Retrying store requests: one policy for every call, bounded, with jittered backoff, and a
//! timeout on every operation.
//!
//! The rules ([`RetryPolicy`]):
//! - Only a failure that may be transient is tried again: a generic store error (a 5xx, a reset
//!   connection, throttling) or a timeout. An answer about the object — `NotFound`,
//!   `AlreadyExists`, `Precondition`, `NotModified` — and a refusal (`PermissionDenied`,
//!   `Unauthenticated`, `InvalidPath`, `NotSupported`, `NotImplemented`) are returned at once.
//! - At most [`RetryPolicy::attempts`] requests per call; between two, a wait drawn from the upper
//!   half of `backoff · 2^(attempt−1)` (capped at `max_backoff`), so processes that failed
//!   together do not retry together.
//! - Every request has a timeout; a request that outlives it is dropped and counts as a
//!   transient failure. A dropped write may still land (the request can be on its way).
//! - A conditional write (a create-only or update-if-version PUT, a create-only copy) is sent
//!   once, under its timeout. After a failure it may have landed, so a retry refused as
//!   `AlreadyExists` could be refused by its own first attempt: only the caller can tell, by
//!   reading the object back (the log's ambiguous-PUT resolution does, above this layer, and
//!   sends again only when the object is not there). Invariant: this layer never turns a write
//!   that may have landed into a clean "someone else wrote it".
//! - A listing is tried again only while it has yielded nothing: resuming after the last key
//!   would skip objects on backends that do not list in key order (the local file system), and
//!   restarting would yield objects twice. A later failure ends the listing with the error.
//! - Deletes are not tried again (each is re-done by the pass that wanted it: retention,
//!   compaction and settling re-run from a listing); each has a timeout.
//!
//! It sits above [`InstrumentedStore`](crate::InstrumentedStore), so `/metrics` counts every
//! attempt; a request this layer stopped waiting for is counted as `abandoned`.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tracing::warn;

/// How store requests are retried and timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests per call at most (1: no retry).
    pub attempts: u32,
    /// The first wait between attempts; it doubles each attempt (jittered, up to `max_backoff`).
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// A PUT (or copy, or multipart start) that takes longer is dropped and tried again.
    pub put_timeout: Duration,
    /// A GET or HEAD that has not answered (headers) in this time, or a ranged read that has not
    /// finished, is dropped and tried again.
    pub read_timeout: Duration,
    /// A listing page, or a delete, that takes longer fails.
    pub list_timeout: Duration,
}

/// Requests per call at most, by default.
pub const DEFAULT_ATTEMPTS: u32 = 3;

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_ATTEMPTS,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            put_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            list_timeout: Duration::from_secs(30),
        }
    }
}

/// A [`RetryPolicy`] that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadRetryPolicy(pub String);

impl RetryPolicy {
    /// Refuses a policy with no attempt, a zero timeout or a backoff cap below the first wait.
    pub fn validate(&self) -> std::result::Result<(), BadRetryPolicy> {
        if self.attempts == 0 {
            return Err(BadRetryPolicy("store attempts must be at least 1".into()));
        }
        for (name, t) in [
            ("put timeout", self.put_timeout),
            ("read timeout", self.read_timeout),
            ("list timeout", self.list_timeout),
        ] {
            if t.is_zero() {
                return Err(BadRetryPolicy(format!("the store {name} must be above 0")));
            }
        }
        if self.max_backoff < self.backoff {
            return Err(BadRetryPolicy(
                "the store's longest backoff must be at least its first".into(),
            ));
        }
        Ok(())
    }

    /// The wait before attempt `next` (2, 3, ...): in the upper half of the doubled backoff.
    fn wait_before(&self, next: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << next.saturating_sub(2).min(16))
            .min(self.max_backoff);
        let half = doubled / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// True for a failure that may pass if the same request is sent again.
pub fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// A request this layer stopped waiting for.
#[derive(Debug)]
struct TimedOut {
    op: &'static str,
    after: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timed out after {:?}", self.op, self.after)
    }
}

impl std::error::Error for TimedOut {}

fn timed_out(op: &'static str, after: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "keepsake",
        source: Box::new(TimedOut { op, after }),
    }
}

/// The retrying layer (the rules are in the [module docs](self)).
#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    /// `inner` with `policy` over it, as a store.
    pub fn wrap(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Arc<dyn ObjectStore> {
        Arc::new(Self { inner, policy })
    }

    /// Runs `call` up to `attempts` times (once when `once`), each under `timeout`.
    async fn retried<T, F, Fut>(
        &self,
        op: &'static str,
        location: &Path,
        timeout: Duration,
        once: bool,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempts = if once { 1 } else { self.policy.attempts };
        let mut attempt = 1;
        loop {
            let e = match tokio::time::timeout(timeout, call()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => timed_out(op, timeout),
            };
            if !is_transient(&e) || attempt >= attempts {
                return Err(e);
            }
            attempt += 1;
            let wait = self.policy.wait_before(attempt);
            warn!(op, path = %location, attempt, error = %e, ?wait, "store request failed; trying again");
            tokio::time::sleep(wait).await;
        }
    }

    /// A listing tried again while it has yielded nothing, each page under the list timeout.
    fn retried_listing(
        &self,
        open: impl Fn() -> BoxStream<'static, Result<ObjectMeta>> + Send + 'static,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        struct Listing<O> {
            open: O,
            current: BoxStream<'static, Result<ObjectMeta>>,
            policy: RetryPolicy,
            attempt: u32,
            yielded: bool,
            done: bool,
        }
        let first = open();
        let state = Listing {
            open,
            current: first,
            policy: self.policy.clone(),
            attempt: 1,
            yielded: false,
            done: false,
        };
        stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            loop {
                let next = match tokio::time::timeout(s.policy.list_timeout, s.current.next()).await
                {
                    Ok(next) => next,
                    Err(_) => Some(Err(timed_out("list", s.policy.list_timeout))),
                };
                match next {
                    None => return None,
                    Some(Ok(meta)) => {
                        s.yielded = true;
                        return Some((Ok(meta), s));
                    }
                    Some(Err(e)) => {
                        if s.yielded || !is_transient(&e) || s.attempt >= s.policy.attempts {
                            s.done = true;
                            return Some((Err(e), s));
                        }
                        s.attempt += 1;
                        let wait = s.policy.wait_before(s.attempt);
                        warn!(op = "list", attempt = s.attempt, error = %e, ?wait, "store listing failed; trying again");
                        tokio::time::sleep(wait).await;
                        s.current = (s.open)();
                    }
                }
            }
        })
        .boxed()
    }
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let once = !matches!(opts.mode, PutMode::Overwrite);
        self.retried("put", location, self.policy.put_timeout, once, || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.retried(
            "multipart",
            location,
            self.policy.put_timeout,
            false,
            || self.inner.put_multipart_opts(location, opts.clone()),
        )
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        self.retried(op, location, self.policy.read_timeout, false, || {
            self.inner.get_opts(location, options.clone())
        })
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.retried(
            "get_ranges",
            location,
            self.policy.read_timeout,
            false,
            || self.inner.get_ranges(location, ranges),
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let timeout = self.policy.list_timeout;
        // After a timeout the stream ends: what it would still have said is unknown.
        let deleted = Some(self.inner.delete_stream(locations));
        stream::unfold(deleted, move |deleted| async move {
            let mut deleted = deleted?;
            match tokio::time::timeout(timeout, deleted.next()).await {
                Ok(Some(d)) => Some((d, Some(deleted))),
                Ok(None) => None,
                Err(_) => Some((Err(timed_out("delete", timeout)), None)),
            }
        })
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (inner, prefix) = (self.inner.clone(), prefix.cloned());
        self.retried_listing(move || inner.list(prefix.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (inner, prefix, offset) = (self.inner.clone(), prefix.cloned(), offset.clone());
        self.retried_listing(move || inner.list_with_offset(prefix.as_ref(), &offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.retried("list", &at, self.policy.list_timeout, false, || {
            self.inner.list_with_delimiter(prefix)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let once = matches!(options.mode, CopyMode::Create);
        self.retried("copy", to, self.policy.put_timeout, once, || {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    /// What the next request does.
    #[derive(Clone, Copy, Debug)]
    enum Next {
        /// Fails before reaching the store.
        Fail,
        /// Reaches the store, then fails (a write that landed, answered with an error).
        LandThenFail,
        /// Answers nothing for a minute.
        Hang,
        /// Fails as not found.
        Missing,
    }

    /// An in-memory store whose next requests follow a script; counts the requests it got.
    #[derive(Debug, Default)]
    struct Scripted {
        inner: InMemory,
        script: Mutex<VecDeque<Next>>,
        requests: AtomicU32,
    }

    impl fmt::Display for Scripted {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Scripted")
        }
    }

    fn generic() -> object_store::Error {
        object_store::Error::Generic {
            store: "scripted",
            source: "503 Slow Down".into(),
        }
    }

    impl Scripted {
        fn next(&self) -> Option<Next> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.script.lock().ok()?.pop_front()
        }
    }

    #[async_trait]
    impl ObjectStore for Scripted {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> Result<PutResult> {
            match self.next() {
                None => self.inner.put_opts(location, payload, opts).await,
                Some(Next::Fail) => Err(generic()),
                Some(Next::LandThenFail) => {
                    self.inner.put_opts(location, payload, opts).await?;
                    Err(generic())
                }
                Some(Next::Hang) => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Err(generic())
                }
                Some(Next::Missing) => Err(object_store::Error::NotFound {
                    path: location.to_string(),
                    source: "no".into(),
                }),
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
            match self.next() {
                None => self.inner.get_opts(location, options).await,
                Some(Next::Hang) => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Err(generic())
                }
                Some(Next::Missing) => Err(object_store::Error::NotFound {
                    path: location.to_string(),
                    source: "no".into(),
                }),
                Some(_) => Err(generic()),
            }
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            match self.next() {
                None => self.inner.list(prefix),
                Some(Next::Hang) => stream::once(async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Err(generic())
                })
                .boxed(),
                Some(_) => stream::iter([Err(generic())]).boxed(),
            }
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            put_timeout: Duration::from_millis(200),
            read_timeout: Duration::from_millis(200),
            list_timeout: Duration::from_millis(200),
        }
    }

    fn scripted(script: &[Next]) -> (Arc<Scripted>, Arc<dyn ObjectStore>) {
        let s = Arc::new(Scripted {
            script: Mutex::new(script.iter().copied().collect()),
            ..Scripted::default()
        });
        (s.clone(), RetryingStore::wrap(s, policy()))
    }

    fn create() -> PutOptions {
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_transient_failure_is_tried_again_up_to_the_bound() {
        let (s, store) = scripted(&[Next::Fail, Next::Fail]);
        store
            .put(&Path::from("a"), "x".into())
            .await
            .expect("third attempt");
        assert_eq!(s.requests.load(Ordering::SeqCst), 3);

        let (s, store) = scripted(&[Next::Fail, Next::Fail, Next::Fail, Next::Fail]);
        let failed = store.put(&Path::from("a"), "x".into()).await;
        assert!(matches!(failed, Err(object_store::Error::Generic { .. })));
        assert_eq!(s.requests.load(Ordering::SeqCst), 3, "bounded");
    }

    #[tokio::test]
    async fn answers_about_the_object_are_never_tried_again() {
        let (s, store) = scripted(&[Next::Missing]);
        let got = store.get(&Path::from("a")).await;
        assert!(matches!(got, Err(object_store::Error::NotFound { .. })));
        assert_eq!(s.requests.load(Ordering::SeqCst), 1);

        let (s, store) = scripted(&[]);
        let path = Path::from("a");
        store
            .put_opts(&path, "x".into(), create())
            .await
            .expect("first");
        let taken = store.put_opts(&path, "y".into(), create()).await;
        assert!(matches!(
            taken,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        assert_eq!(s.requests.load(Ordering::SeqCst), 2, "one request each");

        let stale = PutOptions {
            mode: PutMode::Update(object_store::UpdateVersion {
                e_tag: Some("stale".into()),
                version: None,
            }),
            ..Default::default()
        };
        let refused = store.put_opts(&path, "z".into(), stale).await;
        assert!(matches!(
            refused,
            Err(object_store::Error::Precondition { .. })
        ));
        assert_eq!(s.requests.load(Ordering::SeqCst), 3);
    }

    /// The rule the log's ambiguous-PUT resolution relies on: a create-only PUT that may have
    /// landed is never sent again here (a retry refused as `AlreadyExists` would read as another
    /// writer's object); its failure goes to the caller, which reads the object back.
    #[tokio::test]
    async fn a_conditional_write_is_sent_once_and_its_failure_left_to_the_caller() {
        let (s, store) = scripted(&[Next::LandThenFail]);
        let path = Path::from("seg");
        let put = store.put_opts(&path, "ours".into(), create()).await;
        assert!(
            matches!(put, Err(object_store::Error::Generic { .. })),
            "{put:?}"
        );
        assert_eq!(s.requests.load(Ordering::SeqCst), 1);
        let (s, store) = scripted(&[Next::Hang]);
        let put = store.put_opts(&path, "ours".into(), create()).await;
        assert!(put.is_err_and(|e| e.to_string().contains("timed out after")));
        assert_eq!(
            s.requests.load(Ordering::SeqCst),
            1,
            "timed out, not sent again"
        );
        // An overwrite that landed and failed is simply sent again.
        let (s, store) = scripted(&[Next::LandThenFail]);
        store
            .put(&path, "x".into())
            .await
            .expect("overwrite retried");
        assert_eq!(s.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_that_hangs_is_dropped_at_its_timeout_and_tried_again() {
        let (s, store) = scripted(&[Next::Hang]);
        let path = Path::from("a");
        store.put(&path, "x".into()).await.expect("second attempt");
        assert_eq!(s.requests.load(Ordering::SeqCst), 2);

        let (s, store) = scripted(&[Next::Hang, Next::Hang, Next::Hang]);
        let got = store.get(&path).await;
        let Err(e) = got else {
            panic!("a read that never answers fails");
        };
        assert!(e.to_string().contains("timed out after"), "{e}");
        assert_eq!(s.requests.load(Ordering::SeqCst), 3);
    }

    /// Below this layer, the counting layer sees each attempt; one it stopped waiting for is
    /// counted as abandoned (it was sent, and is billed).
    #[tokio::test]
    async fn each_attempt_is_counted_below_and_a_dropped_one_as_abandoned() {
        use crate::{InstrumentedStore, StoreOp, StoreOutcome, StoreStats};
        let s = Arc::new(Scripted {
            script: Mutex::new([Next::Hang, Next::Fail].into_iter().collect()),
            ..Scripted::default()
        });
        let stats = Arc::new(StoreStats::default());
        let counted = Arc::new(InstrumentedStore::new(s, stats.clone()));
        let store = RetryingStore::wrap(counted, policy());
        let got = store.get(&Path::from("none")).await;
        assert!(matches!(got, Err(object_store::Error::NotFound { .. })));
        assert_eq!(stats.requests(StoreOp::Get, StoreOutcome::Abandoned), 1);
        assert_eq!(stats.requests(StoreOp::Get, StoreOutcome::Error), 1);
        assert_eq!(stats.requests(StoreOp::Get, StoreOutcome::NotFound), 1);
    }

    #[tokio::test]
    async fn a_listing_is_tried_again_only_before_it_yielded() {
        let (s, store) = scripted(&[]);
        for k in ["p/1", "p/2"] {
            s.inner.put(&Path::from(k), "x".into()).await.expect("put");
        }
        s.script
            .lock()
            .expect("script")
            .extend([Next::Fail, Next::Hang]);
        let listed: Vec<_> = store
            .list(Some(&Path::from("p")))
            .try_collect()
            .await
            .expect("third");
        assert_eq!(listed.len(), 2);
        assert_eq!(s.requests.load(Ordering::SeqCst), 3);

        s.script.lock().expect("script").extend([Next::Fail; 3]);
        let failed: Result<Vec<_>> = store.list(None).try_collect().await;
        assert!(failed.is_err(), "bounded");
    }

    #[test]
    fn waits_grow_with_jitter_up_to_the_cap_and_bad_policies_are_refused() {
        let p = RetryPolicy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let w2 = p.wait_before(2);
            assert!(w2 >= Duration::from_millis(50) && w2 <= Duration::from_millis(100));
            let w3 = p.wait_before(3);
            assert!(w3 >= Duration::from_millis(100) && w3 <= Duration::from_millis(200));
            let w9 = p.wait_before(9);
            assert!(w9 >= Duration::from_millis(150) && w9 <= Duration::from_millis(300));
        }
        assert!(p.validate().is_ok());
        for bad in [
            RetryPolicy {
                attempts: 0,
                ..p.clone()
            },
            RetryPolicy {
                put_timeout: Duration::ZERO,
                ..p.clone()
            },
            RetryPolicy {
                max_backoff: Duration::from_millis(10),
                ..p.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
