//! `keepsake-loadgen`: simulated handsets against a running Keepsake server over HTTP
//! ([`http`]), and the storage path of the same events side by side with PostgreSQL
//! ([`baseline`]).
//!
//! Measurements are reported, never asserted: these machines are noisy, and a number means
//! something only next to another measured in the same run.

pub mod baseline;
pub mod cli;
pub mod http;
pub mod stats;
pub mod workload;
