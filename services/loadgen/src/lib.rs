//! `keepsake-loadgen`: simulated handsets against a running Keepsake server over HTTP
//! ([`http`]), the storage path of the same events side by side with PostgreSQL
//! ([`baseline`]), the object-storage bill of a load model ([`cost`]), and what keeping a log of
//! a million users costs as it fills ([`scale`]).
//!
//! Measurements are reported, never asserted: these machines are noisy, and a number means
//! something only next to another measured in the same run.

pub mod baseline;
pub mod cli;
pub mod cost;
pub mod http;
pub mod intervals;
pub mod scale;
pub mod stats;
pub mod workload;
