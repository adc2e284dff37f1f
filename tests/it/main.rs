//! Integration tests of the log on every backend, under faults, races and restarts.
//! One binary (one link step); modules by theme.

// Tests panic on purpose, with a message saying what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod as_of_prop;
mod common;
mod compaction;
mod faults;
mod fsync;
mod log_backends;
mod race;
mod restart;
mod sim;
mod two_processes;
mod verify;
mod view;
