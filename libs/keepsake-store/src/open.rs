//! Building an object store from a URL.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;

use crate::error::StoreError;
use crate::instrumented::{InstrumentedStore, Ranges, StoreStats};

/// An opened store and a description of it that is safe to log (no credentials).
#[derive(Debug, Clone)]
pub struct Store {
    /// The object store (the backend under an [`InstrumentedStore`]).
    pub inner: Arc<dyn ObjectStore>,
    /// What was sent to it: requests by kind and outcome, latency, bytes.
    pub stats: Arc<StoreStats>,
    /// For logs and `/v1/session`-style reports: scheme and location, never secrets.
    pub description: String,
    /// The directory, for a local file-system store.
    pub local_dir: Option<PathBuf>,
    /// How `get_ranges` reaches the backend (one GET per range over S3), for a second counting
    /// layer that must count as this one does.
    pub ranges: Ranges,
}

impl Store {
    /// The store with the retrying layer over it ([`crate::retrying`]): what every user of the
    /// store but the log (which puts its own on, `Log::open`) sends its requests through.
    pub fn retrying(&self, policy: crate::RetryPolicy) -> Arc<dyn ObjectStore> {
        crate::RetryingStore::wrap(self.inner.clone(), policy)
    }
}

fn bad(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Opens the store a URL names.
///
/// - `file:///abs/dir` or a plain path (`./data`): the local file system, created if missing,
///   with fsync on, so a put returns only once the bytes and the directory entry are on disk;
/// - `memory://`: in memory, gone with the process (tests, demos);
/// - `s3://bucket/optional/prefix`: S3 or an S3-compatible server, configured from the standard
///   `AWS_*` environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
///   `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a local server). Create-only puts use
///   `If-None-Match: *`.
pub fn open_store(url: &str) -> Result<Store, StoreError> {
    open_store_opts(url, OpenOptions::default())
}

/// How a store is opened, beyond what its URL says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// File stores: reads the page cache holds are answered on the caller's thread, not handed
    /// to the blocking pool ([`crate::cached_reads`]). `--store-inline-file-reads`.
    pub inline_file_reads: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            inline_file_reads: true,
        }
    }
}

/// [`open_store`] with `opts`.
pub fn open_store_opts(url: &str, opts: OpenOptions) -> Result<Store, StoreError> {
    open_with(url, std::env::vars(), opts)
}

/// [`open_store`] with the `AWS_*` settings taken from `env` rather than the process
/// environment (so tests can point at a local S3 server without changing global state).
pub fn open_store_with_env(
    url: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Store, StoreError> {
    open_with(url, env, OpenOptions::default())
}

fn open_with(
    url: &str,
    env: impl IntoIterator<Item = (String, String)>,
    opts: OpenOptions,
) -> Result<Store, StoreError> {
    let stats = Arc::new(StoreStats::default());
    let (inner, description, local_dir, ranges) = open_backend(url, env, opts, &stats)?;
    Ok(Store {
        inner: Arc::new(InstrumentedStore::with_ranges(inner, stats.clone(), ranges)),
        stats,
        description,
        local_dir,
        ranges,
    })
}

/// The backend a URL names, its description, its directory (file stores), and how its
/// `get_ranges` is sent.
type Backend = (Arc<dyn ObjectStore>, String, Option<PathBuf>, Ranges);

fn open_backend(
    url: &str,
    env: impl IntoIterator<Item = (String, String)>,
    opts: OpenOptions,
    stats: &Arc<StoreStats>,
) -> Result<Backend, StoreError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return open_dir(url, PathBuf::from(url), opts, stats);
    };
    match scheme {
        "file" => {
            let parsed = url::Url::parse(url).map_err(|e| bad(url, e.to_string()))?;
            let path = parsed.to_file_path().map_err(|()| {
                bad(
                    url,
                    "a file URL needs an absolute path: file:///var/lib/keepsake",
                )
            })?;
            open_dir(url, path, opts, stats)
        }
        "memory" => {
            if !rest.is_empty() {
                return Err(bad(url, "memory:// takes no location"));
            }
            Ok((
                Arc::new(InMemory::new()),
                "memory://".into(),
                None,
                Ranges::OneCall,
            ))
        }
        "s3" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad(url, "s3:// needs a bucket: s3://bucket/prefix"));
            }
            // One retry policy for every request: the retrying layer's, above the counting
            // layer (so `/metrics` counts each attempt). The client's own retries are off.
            let mut builder = AmazonS3Builder::new().with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            });
            for (key, value) in env {
                if key.starts_with("AWS_")
                    && let Ok(config) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
                {
                    builder = builder.with_config(config, value);
                }
            }
            let s3 = builder
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| bad(url, e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            };
            // An HTTP store: each range a GET, counted (`InstrumentedStore::http`).
            Ok((
                inner,
                format!("s3://{bucket}/{prefix}"),
                None,
                Ranges::EachRange,
            ))
        }
        other => Err(bad(
            url,
            format!("unknown scheme {other:?}: use file://, memory:// or s3://"),
        )),
    }
}

fn open_dir(
    url: &str,
    path: PathBuf,
    opts: OpenOptions,
    stats: &Arc<StoreStats>,
) -> Result<Backend, StoreError> {
    std::fs::create_dir_all(&path).map_err(|e| {
        bad(
            url,
            format!("cannot create directory {}: {e}", path.display()),
        )
    })?;
    let fs = LocalFileSystem::new_with_prefix(&path)
        .map_err(|e| bad(url, e.to_string()))?
        .with_fsync(true);
    let shown = std::fs::canonicalize(&path).unwrap_or(path);
    Ok((
        file_backend(fs, opts, stats),
        format!("file://{}", shown.display()),
        Some(shown),
        Ranges::OneCall,
    ))
}

/// The file store under [`crate::cached_reads::CachedReads`], which answers reads the page
/// cache holds unless `opts` say not to, and counts them either way.
#[cfg(target_os = "linux")]
fn file_backend(
    fs: LocalFileSystem,
    opts: OpenOptions,
    stats: &Arc<StoreStats>,
) -> Arc<dyn ObjectStore> {
    Arc::new(crate::cached_reads::CachedReads::new(
        fs,
        stats.clone(),
        opts.inline_file_reads,
    ))
}

/// The file store (reads that wait for nothing need Linux's `RWF_NOWAIT`).
#[cfg(not(target_os = "linux"))]
fn file_backend(
    fs: LocalFileSystem,
    _opts: OpenOptions,
    _stats: &Arc<StoreStats>,
) -> Arc<dyn ObjectStore> {
    Arc::new(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over S3 the counting layer sends a `get_ranges` as one GET per range (so each is
    /// counted); the file system and memory take it in one call.
    #[test]
    fn s3_stores_send_each_range_as_a_get() {
        let env = [
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID".to_string(), "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "test".to_string()),
            (
                "AWS_ENDPOINT_URL".to_string(),
                "http://127.0.0.1:9".to_string(),
            ),
            ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ];
        let s3 = open_store_with_env("s3://bucket/prefix", env.clone()).expect("s3");
        assert_eq!(s3.ranges, Ranges::EachRange);
        let bare = open_store_with_env("s3://bucket", env).expect("s3 without a prefix");
        assert_eq!(bare.ranges, Ranges::EachRange);
        assert_eq!(
            open_store_with_env("memory://", []).expect("memory").ranges,
            Ranges::OneCall
        );
        let dir = tempfile::tempdir().expect("dir");
        let file = open_store_with_env(&dir.path().display().to_string(), []).expect("file");
        assert_eq!(file.ranges, Ranges::OneCall);
    }

    #[test]
    fn urls_are_checked() {
        assert!(open_store("memory://").is_ok());
        assert!(matches!(
            open_store("memory://x"),
            Err(StoreError::BadUrl { .. })
        ));
        assert!(matches!(
            open_store("ftp://x"),
            Err(StoreError::BadUrl { .. })
        ));
        assert!(matches!(
            open_store("s3://"),
            Err(StoreError::BadUrl { .. })
        ));
        assert!(matches!(
            open_store("file://relative"),
            Err(StoreError::BadUrl { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b");
        let url = format!("file://{}", nested.display());
        let store = open_store(&url).expect("file store");
        assert!(nested.is_dir());
        assert!(store.description.starts_with("file://"));
        let plain = open_store(&dir.path().join("c").display().to_string()).expect("plain path");
        assert!(plain.description.ends_with("/c"));
    }
}
