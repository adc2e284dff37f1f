//! Filter runs (format 1): users' sealed change-id filter blocks, written once.
//!
//! A block of a user's [`ChangeFilter`] is sealed once all 32 of its seqs exist; it never
//! changes again. A checkpoint of format 6 writes each changed user's sealed blocks not yet in a
//! run to one run, in whole multiples of the writer's unit (64 blocks by default), and keeps the
//! rest in the user's part row (`filter_from`), so a checkpoint writes a user's recent ids, not
//! every id of its log. A row may start at any block: the unit is the writer's, not the
//! format's. Runs are merged size-tiered (the log's `checkpoint` module): a block is rewritten
//! about log2 times over the life of the log, never with its user's state.
//!
//! One Parquet file, one row per user, sorted by `user_id`: `from_block` (the index of the
//! row's first block) and `blocks` (the blocks `from_block..`, each 16 little-endian u64 words,
//! as [`ChangeFilter::to_bytes`]). A user's sealed blocks are the rows of the runs a manifest
//! names, which must join end to start from block 0 (checked by whoever joins them).
//! Key-value metadata: `keepsake.format` = `filter-run`, `keepsake.format_version`,
//! `keepsake.shard`, `keepsake.segment` (the checkpoint that wrote it), `keepsake.rows`, and
//! `keepsake.users_bloom`: a Bloom filter of the run's users ([`UsersBloom`]), so that a reader
//! holding the footer reads no page of a run that does not hold its user (a cold load of a
//! user asks every run a manifest names; without it, each answered with a ranged GET).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, FixedSizeBinaryBuilder, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use base64::Engine;
use bytes::Bytes;
use keepsake_model::change_filter::mix;
use keepsake_model::{ChangeFilter, UserId};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde_json::{Value, json};

use crate::error::{SegmentError, invalid};
use crate::schema::Kv;

/// The filter run format version this build writes and reads.
pub const FILTER_RUN_VERSION: u32 = 1;

/// Rows a page of `user_id` holds at most: a one-user read fetches one such page of ids and
/// the `blocks` page holding the user's row.
const PAGE_ROWS: usize = 256;

/// Bytes a page of `blocks` holds (about): a one-user read fetches one.
const BLOCKS_PAGE_BYTES: usize = 16 * 1024;

/// The key of the users' Bloom filter in a run's key-value metadata.
const USERS_BLOOM_KEY: &str = "keepsake.users_bloom";

/// Bits of a run's users' Bloom filter a row, and probes a user.
const BLOOM_BITS_PER_ROW: usize = 10;
const BLOOM_PROBES: u64 = 7;
/// Bits at least (a small run's filter is a few words).
const BLOOM_MIN_BITS: usize = 1024;

/// A Bloom filter over a run's users: no false negatives; about 1 in 100 users a run does not
/// hold pass for one it does (10 bits a row, 7 probes). Stored as the base64 of its 64-bit words,
/// little-endian. A user's probes: with `(hi, lo)` its id's 128 bits (big-endian halves) and
/// `h = mix(lo ^ mix(hi ^ 0x75736572735f626c))`, `mix(h ^ i * 0x9e3779b97f4a7c15) mod bits` for
/// `i` in `1..=7` (`mix`: SplitMix64's finalizer, as the change filter's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsersBloom {
    words: Vec<u64>,
}

impl UsersBloom {
    /// The filter of `users` (`rows` of them, which sizes it).
    pub fn of<'a>(users: impl IntoIterator<Item = &'a UserId>, rows: usize) -> Self {
        let bits = (rows.saturating_mul(BLOOM_BITS_PER_ROW)).max(BLOOM_MIN_BITS);
        let mut b = UsersBloom {
            words: vec![0; bits.div_ceil(64)],
        };
        for u in users {
            for p in b.probes(u) {
                b.words[p / 64] |= 1 << (p % 64);
            }
        }
        b
    }

    fn probes(&self, u: &UserId) -> impl Iterator<Item = usize> + use<> {
        let bits = (self.words.len() * 64) as u64;
        let v = u.0.as_u128();
        let (hi, lo) = ((v >> 64) as u64, v as u64);
        let h = mix(lo ^ mix(hi ^ 0x7573_6572_735f_626c));
        (1..=BLOOM_PROBES)
            .map(move |i| (mix(h ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % bits.max(1)) as usize)
    }

    /// Whether the run may hold `u`: `false` is certain.
    pub fn may_hold(&self, u: &UserId) -> bool {
        !self.words.is_empty()
            && self
                .probes(u)
                .all(|p| self.words[p / 64] & (1 << (p % 64)) != 0)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    fn to_base64(&self) -> String {
        let bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn from_base64(s: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        if bytes.is_empty() || bytes.len() % 8 != 0 {
            return None;
        }
        let words = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut le = [0u8; 8];
                le.copy_from_slice(c);
                u64::from_le_bytes(le)
            })
            .collect();
        Some(UsersBloom { words })
    }
}

/// The users' Bloom filter in a run's footer: `None` when the run has none (it is then read),
/// an error when it is there but broken.
pub fn filter_run_users(kvs: Option<&Vec<KeyValue>>) -> Result<Option<UsersBloom>, SegmentError> {
    let Ok(v) = Kv::new(kvs).get(USERS_BLOOM_KEY) else {
        return Ok(None);
    };
    UsersBloom::from_base64(v)
        .map(Some)
        .ok_or_else(|| invalid("filter run metadata keepsake.users_bloom is not whole words"))
}

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
        (
            USERS_BLOOM_KEY,
            UsersBloom::of(rows.iter().map(|(u, _)| u), rows.len()).to_base64(),
        ),
    ] {
        writer.append_key_value_metadata(KeyValue::new(k.into(), v));
    }
    Ok(Bytes::from(writer.into_inner()?))
}

/// Reads a run's metadata from its footer key-value pairs.
pub fn filter_run_meta(kvs: Option<&Vec<KeyValue>>) -> Result<FilterRunMeta, SegmentError> {
    let kv = Kv::new(kvs);
    if kv.get("keepsake.format")? != "filter-run" {
        return Err(invalid("not a filter run"));
    }
    let version = u32::try_from(kv.num::<u64>("keepsake.format_version")?).unwrap_or(u32::MAX);
    if version != FILTER_RUN_VERSION {
        return Err(SegmentError::UnknownVersion {
            found: version,
            known: &[FILTER_RUN_VERSION],
        });
    }
    Ok(FilterRunMeta {
        format_version: version,
        shard: kv.num("keepsake.shard")?,
        segment: kv.num("keepsake.segment")?,
        rows: kv.num("keepsake.rows")?,
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
        "metadata_keys": ["keepsake.format", "keepsake.format_version", "keepsake.shard", "keepsake.segment", "keepsake.rows", "keepsake.users_bloom"],
        "users_bloom": "a Bloom filter of the run's users, base64 of its 64-bit words (little-endian); bits = 64 * words = max(1024, 10 * rows) rounded up to 64; a user's 7 probes: with (hi, lo) its id's 128 bits big-endian and h = mix(lo ^ mix(hi ^ 0x75736572735f626c)), mix(h ^ i * 0x9e3779b97f4a7c15) mod bits for i in 1..=7 (wrapping; mix = SplitMix64's finalizer); a reader that finds a bit clear reads none of the run's pages for the user; absent: the run is read",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u128) -> UserId {
        UserId(uuid::Uuid::from_u128(
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
        ))
    }

    /// Every user put in is found; about 1 in 100 others pass; the stored form reads back.
    #[test]
    fn a_runs_users_bloom_has_no_false_negatives_and_few_false_positives() {
        let users: Vec<UserId> = (0..10_000).map(user).collect();
        let b = UsersBloom::of(users.iter(), users.len());
        assert!(users.iter().all(|u| b.may_hold(u)));
        let strangers = (10_000..110_000).filter(|n| b.may_hold(&user(*n))).count();
        assert!(strangers < 2_000, "{strangers} of 100,000 strangers passed");
        assert_eq!(UsersBloom::from_base64(&b.to_base64()), Some(b.clone()));
        assert_eq!(UsersBloom::from_base64("AAAA"), None, "not whole words");
        // Two users in the smallest filter: a stranger almost never passes.
        let small = UsersBloom::of(users[..2].iter(), 2);
        assert_eq!(small.bytes(), 128);
        assert!((2..1_000).all(|i| !small.may_hold(&users[i])));
    }

    /// The probes are part of the stored format: a change to them must fail here.
    #[test]
    fn the_blooms_probes_are_fixed() {
        let b = UsersBloom { words: vec![0; 16] };
        let p: Vec<usize> = b
            .probes(&UserId(uuid::Uuid::from_u128(
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
            )))
            .collect();
        assert_eq!(p.len(), 7);
        assert_eq!(p, GOLDEN_PROBES.to_vec());
    }

    const GOLDEN_PROBES: [usize; 7] = [668, 285, 581, 202, 979, 327, 362];

    /// A run written now carries its users' filter in its footer.
    #[test]
    fn a_run_carries_its_users_filter() {
        let mut f = ChangeFilter::default();
        f.insert(1, &keepsake_model::ChangeId(uuid::Uuid::from_u128(7)));
        let rows = vec![(user(1), f.clone()), (user(2), f)];
        let mut rows = rows;
        rows.sort_by_key(|(u, _)| *u);
        let bytes = encode_filter_run(&rows, 1, 5).expect("encode");
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
        let kvs = builder.metadata().file_metadata().key_value_metadata();
        let b = filter_run_users(kvs).expect("well formed").expect("there");
        assert!(b.may_hold(&user(1)) && b.may_hold(&user(2)));
        assert!(!b.may_hold(&user(3)));
        assert_eq!(filter_run_users(None).expect("absent is fine"), None);
    }
}
