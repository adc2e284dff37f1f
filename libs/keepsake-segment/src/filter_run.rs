//! Filter runs (format 1): users' sealed change-id filter blocks, written once.
//!
//! A block of a user's [`ChangeFilter`] is sealed once all 32 of its seqs exist; it never
//! changes again. A checkpoint of format 6 writes each changed user's newly sealed blocks to
//! one run and keeps only the open ones in the user's part row (`filter_from`), so a checkpoint
//! writes a user's new ids, not every id of its log. Runs are merged size-tiered (the log's
//! `checkpoint` module): a block is rewritten about log2 times over the life of the log, never
//! with its user's state.
//!
//! One Parquet file, one row per user, sorted by `user_id`: `from_block` (the index of the
//! row's first block) and `blocks` (the blocks `from_block..`, each 16 little-endian u64 words,
//! as [`ChangeFilter::to_bytes`]). A user's sealed blocks are the rows of the runs a manifest
//! names, which must join end to start from block 0 (checked by whoever joins them).
//! Key-value metadata: `keepsake.format` = `filter-run`, `keepsake.format_version`,
//! `keepsake.shard`, `keepsake.segment` (the checkpoint that wrote it), `keepsake.rows`.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, FixedSizeBinaryBuilder, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use bytes::Bytes;
use keepsake_model::{ChangeFilter, UserId};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde_json::{Value, json};

use crate::error::{SegmentError, invalid};

/// The filter run format version this build writes and reads.
pub const FILTER_RUN_VERSION: u32 = 1;

/// Rows a page of `user_id` holds at most: a one-user read fetches one such page of ids and
/// the `blocks` page holding the user's row.
const PAGE_ROWS: usize = 256;

/// Bytes a page of `blocks` holds (about): a one-user read fetches one.
const BLOCKS_PAGE_BYTES: usize = 16 * 1024;

/// What a filter run says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterRunMeta {
    /// Format version.
    pub format_version: u32,
    /// The shard.
    pub shard: u32,
    /// The checkpoint (its segment) that wrote it.
    pub segment: u64,
    /// Rows (users).
    pub rows: u64,
}

/// The Arrow schema of a filter run.
pub fn filter_run_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::FixedSizeBinary(16), false),
        Field::new("from_block", DataType::Int64, false),
        Field::new("blocks", DataType::Binary, false),
    ]))
}

/// Encodes a run: `rows` ascending by user, each user once, each with at least one block.
pub fn encode_filter_run(
    rows: &[(UserId, ChangeFilter)],
    shard: u32,
    segment: u64,
) -> Result<Bytes, SegmentError> {
    if rows.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(invalid("a filter run's users must ascend, each once"));
    }
    if rows.iter().any(|(_, f)| f.blocks() == f.offset()) {
        return Err(invalid("a filter run's row holds no block"));
    }
    let mut users = FixedSizeBinaryBuilder::with_capacity(rows.len(), 16);
    let mut from = Vec::with_capacity(rows.len());
    let mut blocks = Vec::with_capacity(rows.len());
    for (u, f) in rows {
        users.append_value(u.as_bytes())?;
        from.push(i64::try_from(f.offset()).map_err(|_| invalid("from_block out of range"))?);
        blocks.push(f.to_bytes());
    }
    let schema = filter_run_schema();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(users.finish()),
        Arc::new(Int64Array::from(from)),
        Arc::new(BinaryArray::from_iter_values(blocks.iter())),
    ];
    // Random bits: nothing to compress, no dictionary, no statistics but the users'.
    let blocks_col = ColumnPath::from("blocks");
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_statistics_enabled(blocks_col.clone(), EnabledStatistics::None)
        .set_column_data_page_size_limit(blocks_col, BLOCKS_PAGE_BYTES)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_write_batch_size(PAGE_ROWS)
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?;
    if !rows.is_empty() {
        writer.write(&RecordBatch::try_new(schema, columns)?)?;
    }
    for (k, v) in [
        ("keepsake.format", "filter-run".to_string()),
        ("keepsake.format_version", FILTER_RUN_VERSION.to_string()),
        ("keepsake.shard", shard.to_string()),
        ("keepsake.segment", segment.to_string()),
        ("keepsake.rows", rows.len().to_string()),
    ] {
        writer.append_key_value_metadata(KeyValue::new(k.into(), v));
    }
    Ok(Bytes::from(writer.into_inner()?))
}

/// Reads a run's metadata from its footer key-value pairs.
pub fn filter_run_meta(kvs: Option<&Vec<KeyValue>>) -> Result<FilterRunMeta, SegmentError> {
    let get = |k: &str| {
        kvs.and_then(|v| v.iter().find(|kv| kv.key == k))
            .and_then(|kv| kv.value.clone())
            .ok_or_else(|| invalid(format!("filter run metadata {k} is missing")))
    };
    let num = |k: &str| -> Result<u64, SegmentError> {
        get(k)?
            .parse()
            .map_err(|_| invalid(format!("filter run metadata {k} is not a number")))
    };
    if get("keepsake.format")? != "filter-run" {
        return Err(invalid("not a filter run"));
    }
    let version = u32::try_from(num("keepsake.format_version")?).unwrap_or(u32::MAX);
    if version != FILTER_RUN_VERSION {
        return Err(SegmentError::UnknownVersion {
            found: version,
            known: &[FILTER_RUN_VERSION],
        });
    }
    Ok(FilterRunMeta {
        format_version: version,
        shard: u32::try_from(num("keepsake.shard")?).map_err(|_| invalid("shard out of range"))?,
        segment: num("keepsake.segment")?,
        rows: num("keepsake.rows")?,
    })
}

/// The rows of record batches of a run (of any subset of its rows; only `only`'s if given),
/// in the order read.
pub fn decode_filter_run_batches(
    batches: impl IntoIterator<Item = RecordBatch>,
    only: Option<&UserId>,
) -> Result<Vec<(UserId, ChangeFilter)>, SegmentError> {
    let mut out = Vec::new();
    for batch in batches {
        if batch.schema().fields() != filter_run_schema().fields() {
            return Err(invalid("the file's columns are not the filter run schema"));
        }
        let users = batch
            .column(0)
            .as_fixed_size_binary_opt()
            .ok_or_else(|| invalid("user_id"))?;
        let from = batch
            .column(1)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| invalid("from_block"))?;
        let blocks = batch
            .column(2)
            .as_binary_opt::<i32>()
            .ok_or_else(|| invalid("blocks"))?;
        for i in 0..batch.num_rows() {
            let bad = |what: &str| invalid(format!("filter run row {i}: {what}"));
            if users.is_null(i) || from.is_null(i) || blocks.is_null(i) {
                return Err(bad("a null"));
            }
            let id: [u8; 16] = users.value(i).try_into().map_err(|_| bad("user_id"))?;
            let u = UserId::from_bytes(id);
            if only.is_some_and(|o| *o != u) {
                continue;
            }
            let at = usize::try_from(from.value(i)).map_err(|_| bad("from_block"))?;
            let f = ChangeFilter::from_bytes_at(at, blocks.value(i))
                .filter(|f| f.blocks() > f.offset())
                .ok_or_else(|| bad("blocks are not a whole, non-zero number of blocks"))?;
            out.push((u, f));
        }
    }
    Ok(out)
}

/// Decodes a whole run, checking its users ascend and its row count.
pub fn decode_filter_run(
    bytes: Bytes,
) -> Result<(FilterRunMeta, Vec<(UserId, ChangeFilter)>), SegmentError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let meta = filter_run_meta(builder.metadata().file_metadata().key_value_metadata())?;
    let batches = builder
        .build()?
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    let rows = decode_filter_run_batches(batches, None)?;
    if rows.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(invalid("a filter run's users do not ascend"));
    }
    if rows.len() as u64 != meta.rows {
        return Err(invalid(format!(
            "metadata says {} rows, the file holds {}",
            meta.rows,
            rows.len()
        )));
    }
    Ok((meta, rows))
}

/// The machine-readable description of filter run format `version`, as in
/// `schemas/filter-run-v<version>.json`; `None` for a version this build does not know.
pub fn filter_run_description(version: u32) -> Option<Value> {
    if version != FILTER_RUN_VERSION {
        return None;
    }
    let columns: Vec<Value> = filter_run_schema()
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": format!("{:?}", f.data_type()), "nullable": f.is_nullable()}))
        .collect();
    Some(json!({
        "format": "keepsake-filter-run",
        "format_version": version,
        "sort_order": ["user_id"],
        "columns": columns,
        "rows": "one per user: its sealed change-id filter blocks from_block.. (a block is sealed once all 32 of its seqs exist), each 16 little-endian u64 words, as the checkpoint format's filter column",
        "join": "a user's sealed blocks are the rows of the runs its manifest names, joined end to start from block 0 up to its part row's filter_from",
        "key": "shards/<shard>/parts/<written_by:020>-<digest>.parquet (the part key: named by the manifest's filter_runs)",
        "metadata_keys": ["keepsake.format", "keepsake.format_version", "keepsake.shard", "keepsake.segment", "keepsake.rows"],
    }))
}
