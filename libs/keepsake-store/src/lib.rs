//! Keepsake's object storage: where the log lives.
//!
//! - [`open_store`] builds an object store from a URL: `file://` (fsync on: a put returns only
//!   after the file and its directory are synced), `memory://`, `s3://bucket/prefix`.
//! - [`keys`] is the one module that knows the object-key layout.
//! - [`descriptor`] is `keepsake.json`, created once with a create-only put; it fixes the store id,
//!   the format version and the shard count.
//! - [`recover`] writes a lost descriptor back, on an operator's word (`keepsake recover-descriptor`);
//!   a store with data and no descriptor is never given a new one implicitly.
//! - [`instrumented`] counts every request sent to the store (by kind and outcome, with latency
//!   and bytes); [`open_store`] puts it over every backend, and `/metrics` shows it.
//! - `cached_reads` (Linux) answers the file store's reads that the page cache holds on the
//!   calling thread, not on tokio's blocking pool; [`open_store`] puts it under file stores.
//! - [`retrying`] is the one retry policy for store requests (bounded, jittered, a timeout on
//!   every operation, never retrying an answer about the object); it sits above the counting
//!   layer, and each user of the store puts it on top (`Log::open` for the log).
//! - [`cause`] says what work a request was for (set around each task), so the counts split by
//!   cause: pushes, reads, checkpoints, compaction, the device registry's refresh.
//! - `faults` (feature `testing`) wraps a store to inject failures at every durability boundary.

#[cfg(target_os = "linux")]
pub mod cached_reads;
pub mod cause;
pub mod descriptor;
mod error;
#[cfg(feature = "testing")]
pub mod faults;
mod histogram;
pub mod instrumented;
pub mod keys;
mod open;
pub mod recover;
pub mod retrying;

pub use cause::{Cause, inherit, with_cause};
pub use descriptor::{
    DESCRIPTOR_VERSION, Descriptor, create_descriptor, find_data, open_or_create_descriptor,
    read_descriptor,
};
pub use error::{RecoverError, StoreError};
pub use histogram::AtomicHistogram;
pub use instrumented::{InstrumentedStore, Ranges, StoreOp, StoreOutcome, StoreStats};
pub use open::{OpenOptions, Store, open_store, open_store_opts, open_store_with_env};
pub use retrying::{RetryPolicy, RetryingStore};

/// Puts that must never replace an object: segments, checkpoints, descriptors, job records.
pub fn create_only() -> object_store::PutOptions {
    object_store::PutOptions {
        mode: object_store::PutMode::Create,
        ..Default::default()
    }
}
