//! End to end: the real `keepsake` binary on 127.0.0.1:0, driven over HTTP, on the file store
//! and on S3 (moto).

// Tests panic on purpose, with a message saying what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod allocator;
mod auth;
mod bad_input;
mod cluster;
mod compaction;
mod contract;
mod dav;
mod dav_clients;
mod dav_collections;
mod dav_queries;
mod devices;
mod endpoints;
mod formats;
mod harness;
mod recover;
mod resident;
mod restore;
mod sync;
mod tokens;
