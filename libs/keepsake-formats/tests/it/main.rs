//! The crate's integration tests, one binary (one link step): golden files of the common
//! clients' shapes, the splitter's behaviour on whole files, and property tests.

mod daylight;
mod golden;
mod props;
mod splitting;
