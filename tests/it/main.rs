//! Integration tests of the log on every backend, under faults, races and restarts.
//! One binary (one link step); modules by theme.

// Tests panic on purpose, with a message saying what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

/// Runs each named `async fn(Backend)` as a test on memory, on the file store and on S3 (moto).
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::Memory).await } )* }
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

mod as_of_prop;
mod checkpoint_parts;
mod common;
mod compaction;
mod duplicates;
mod faults;
mod fsync;
mod history_reads;
mod log_backends;
mod ownership;
mod race;
mod restart;
mod sim;
mod two_processes;
mod verify;
mod view;
