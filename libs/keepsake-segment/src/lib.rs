//! Keepsake's segment format: one group commit of one shard, as a Parquet file.
//!
//! Invariants (checked by [`encode`] and [`decode`], documented in `schemas/segment.md`, compared
//! with `schemas/segment-v1.json` by a test):
//! - rows are sorted by `(user_id, seq)`, so one user's events are contiguous and the Parquet
//!   statistics and page index let a reader skip every other user's pages;
//! - the key-value metadata carries the format version, shard, segment number, writer epoch,
//!   batch id, event count and first/last `recorded_at`; a file whose metadata is missing, of an
//!   unknown version, or disagrees with its rows is refused;
//! - old format versions stay readable: `schemas/golden/` holds one file per version.

mod checkpoint;
mod codec;
mod error;
mod filter_run;
mod history;
mod manifest;
mod prune;
mod schema;

pub use checkpoint::{
    CHECKPOINT_VERSION, CheckpointEncoder, CheckpointMeta, ENTRY_CHANGE, ENTRY_COLUMN,
    ENTRY_FILTER, checkpoint_description, checkpoint_meta, checkpoint_schema, checkpoint_schema_of,
    checkpoint_version, decode_checkpoint, decode_checkpoint_batches, encode_checkpoint,
};
pub use codec::{
    DECODE_BATCH_ROWS, DOCUMENT_PAGE_BYTES, EventKey, KEY_COLUMNS, Segment, decode, decode_batch,
    decode_keys, decode_rows, encode, rows_of_user, writer_properties,
};
pub use error::SegmentError;
pub use filter_run::{
    FILTER_RUN_VERSION, FilterRunMeta, UsersBloom, decode_filter_run, decode_filter_run_batches,
    encode_filter_run, filter_run_description, filter_run_meta, filter_run_schema,
    filter_run_users,
};
pub use history::{
    HISTORY_VERSION, HISTORY_VERSIONS, History, HistoryMeta, decode_history,
    decode_segment_numbers, encode_history, history_description,
};
pub use manifest::{
    BasePart, DeltaPart, MANIFEST_RUNS_VERSION, MANIFEST_VERSION, Manifest, NIL_USER, PartRef,
    decode_manifest, encode_manifest, manifest_description, part_digest,
};
pub use prune::{
    ReadPlan, plan_user_read, plan_user_read_skipping, split_selection, user_row_filter,
};
pub use schema::{
    FORMAT_VERSION, KNOWN_VERSIONS, META_PREFIX, SEGMENT_COLUMN, SegmentMeta, arrow_schema,
    history_schema, schema_description, segment_version,
};
