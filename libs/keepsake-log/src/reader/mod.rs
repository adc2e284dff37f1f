//! Reading the log: a shard's segments, or one user's events.
//!
//! Segment `n` is read from its own object while that exists, else from the narrowest history
//! object holding it ([`Layout`]; compaction keeps both readings equal). Readers never read past
//! a gap: segment `n + 1` counts only when every segment up to `n` is somewhere. A listing that
//! shows a missing number followed by later ones is reported as [`LogError::Gap`] rather than
//! silently returning a partial history; a source that vanishes during a read (compacted) is
//! located again and the read run again. A segment object read is the one listed (or written):
//! one put under the name since — a stray in a number compacted after the listing — counts as
//! vanished ([`Tag`]).
//!
//! The files, by job: [`catalog`] (listing and layout), [`checkpoint`] (checkpoints, whole or
//! as a manifest over parts), [`filter_runs`] (the sealed change-id filter blocks parts of
//! format 6 leave out), [`footers`] (footers of immutable objects, kept for later reads), [`objects`] (whole-object reads of segments and history),
//! [`user`] (one user's rows in one pass), [`keyed`] (one user's rows by key columns first),
//! [`tag`] (which write of an object was seen).

mod catalog;
mod checkpoint;
mod filter_runs;
mod footers;
mod keyed;
mod objects;
mod tag;
mod user;

pub use catalog::*;
pub use checkpoint::*;
pub use filter_runs::{join_sealed, read_filter_run, read_sealed};
pub use footers::{Footers, ObjectMeta, PartFooters};
pub use keyed::*;
pub use objects::*;
pub use tag::Tag;
pub use user::*;
