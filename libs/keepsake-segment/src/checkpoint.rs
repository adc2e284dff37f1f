//! Checkpoint format v1: the full state of every user of a shard after segment `n`.
//!
//! One Parquet file, rows sorted by `(user_id, entry, key)`, three kinds of row:
//! - `entry = "user"`: the user's last seq (`seq`);
//! - `entry = "item"`: one item (`key` = item id, kind, version, seq, deleted, changed_at,
//!   document);
//! - `entry = "change"`: one applied change id (`key` = change id; item_id, version, seq), kept
//!   because idempotency is promised for the life of the log.
//!
//! Version 5 has one more column, `filter` (binary), and writes no `change` rows: each user has
//! one `entry = "filter"` row holding the [`ChangeFilter`] of every change id of its log (32 bits
//! an id instead of a row of ~50 bytes). A resend of an older id is resolved from the log
//! itself, which has every id already. Versions 1-3 still decode (their ids held exactly).
//!
//! Version 6 has one more column again, `filter_from` (int64, on filter rows): the filter row
//! holds the user's filter blocks from that index on. The sealed blocks before it (all 32 of
//! their seqs exist, so they never change) were written once to the checkpoint's filter runs
//! (`crate::filter_run`), which the manifest names; a reader attaches them for a state that
//! takes pushes. So a checkpoint writes a changed user's blocks since its last run (the open
//! one and at most a writer's unit of sealed ones), not every id it ever had.
//!
//! A checkpoint is derived: it must equal the fold of segments `1..=n` (tested), and deleting it
//! loses nothing.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, FixedSizeBinaryArray,
    FixedSizeBinaryBuilder, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit, TimestampMicrosecondType};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use keepsake_model::{
    ChangeFilter, ChangeId, ChangeRef, Document, ItemId, ItemState, Kind, StateRead, UserId,
    UserState,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use serde_json::{Value, json};

use crate::codec::{ENCODE_CHUNK_ROWS, one_user_read_properties_builder};
use crate::error::{SegmentError, invalid};

/// The newest checkpoint format version this build writes. Version 2 has the columns of
/// version 1 and one more `kind`: `device`; version 3 one more again: `collection`; version 4
/// is the manifest over parts (`crate::manifest`); version 5 holds change ids as a filter
/// (`filter` column, module docs); version 6 holds a filter from a block on (`filter_from`),
/// its sealed blocks in filter runs. This build writes version 6; encoding with an older
/// version (1-3) is for tests and needs states that hold their ids exactly, with 5 states
/// that hold their whole filter.
pub const CHECKPOINT_VERSION: u32 = 6;
const KNOWN: &[u32] = &[1, 2, 3, 5, 6];

/// The `entry` of a user's change-id filter row (version 5).
pub const ENTRY_FILTER: &str = "filter";

/// The lowest checkpoint format version of 1-3 whose kinds can hold these users' items (the
/// version a writer of exact change ids would stamp).
pub fn checkpoint_version<'a>(users: impl IntoIterator<Item = &'a UserState>) -> u32 {
    let needed = |s: &UserState| {
        s.items()
            .map(|i| match i.kind {
                keepsake_model::Kind::Collection => 3,
                keepsake_model::Kind::Device => 2,
                _ => 1,
            })
            .max()
            .unwrap_or(1)
    };
    users.into_iter().map(needed).max().unwrap_or(1)
}

/// The Arrow schema of a checkpoint of the newest version.
pub fn checkpoint_schema() -> Arc<Schema> {
    checkpoint_schema_of(CHECKPOINT_VERSION)
}

/// The Arrow schema of a checkpoint of `version`: versions 1-3 share one; 5 adds `filter`,
/// 6 `filter_from`.
pub fn checkpoint_schema_of(version: u32) -> Arc<Schema> {
    let mut fields = checkpoint_fields_v1();
    if version >= 5 {
        fields.push(Field::new("filter", DataType::Binary, true));
    }
    if version >= 6 {
        fields.push(Field::new("filter_from", DataType::Int64, true));
    }
    Arc::new(Schema::new(fields))
}

fn checkpoint_fields_v1() -> Vec<Field> {
    let uuid = DataType::FixedSizeBinary(16);
    vec![
        Field::new("user_id", uuid.clone(), false),
        Field::new("entry", DataType::Utf8, false),
        Field::new("key", uuid.clone(), true),
        Field::new("seq", DataType::Int64, false),
        Field::new("item_id", uuid, true),
        Field::new("version", DataType::Int64, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("deleted", DataType::Boolean, true),
        Field::new(
            "changed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("document", DataType::Utf8, true),
    ]
}

/// What a checkpoint says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Format version.
    pub format_version: u32,
    /// Shard.
    pub shard: u32,
    /// The last segment it includes.
    pub segment: u64,
    /// Users in it.
    pub user_count: u64,
}

/// The column of a checkpoint that says what a row is (`change`, `item` or `user`).
pub const ENTRY_COLUMN: usize = 1;

/// The `entry` of a change-id row. A user's change rows sort first and are most of the user's
/// rows in a long history; readers of items skip their pages.
pub const ENTRY_CHANGE: &str = "change";

/// The machine-readable description of checkpoint format `version` (4: the manifest), as in
/// `schemas/checkpoint-v<version>.json`; `None` for a version this build does not know.
/// Version 2 adds `kinds`: the spellings of the `kind` column (version 1 had all but `device`);
/// version 3 adds the kind `collection`.
pub fn checkpoint_description(version: u32) -> Option<Value> {
    let mut d = checkpoint_description_v1();
    match version {
        1 => {}
        2 | 3 => {
            // Each version's kinds spelled out: a kind added later must not change the
            // description (and so the checked-in file) of an older version.
            let kinds: &[&str] = if version == 2 {
                &["contact", "event", "task", "note", "device"]
            } else {
                &["contact", "event", "task", "note", "collection", "device"]
            };
            d["format_version"] = version.into();
            d["kinds"] = Value::from(kinds.to_vec());
        }
        // A manifest over parts of the versions above (`crate::manifest`).
        4 => return Some(crate::manifest::manifest_description()),
        5 | 6 => {
            d = checkpoint_description_of(version);
            d["kinds"] =
                Value::from(["contact", "event", "task", "note", "collection", "device"].to_vec());
            d["entries"] = Value::from(["filter", "item", "user"].to_vec());
            d["filter"] = Value::from(
                "one row per user, entry \"filter\": the ChangeFilter of every change id of \
                 the user's log, blocks of 32 seqs (block b: seqs 32b+1..=32b+32), each 16 \
                 little-endian u64 words (1024 bits); an id sets 22 bits: h = mix(lo ^ \
                 mix(hi ^ 0x6b65657073616b65)), (hi, lo) the id's 128 bits big-endian, mix = \
                 SplitMix64's finalizer; for j in 1..=4, w = mix(h ^ j * 0x9e3779b97f4a7c15) \
                 (wrapping), its 10-bit pieces (w >> 10k) mod 1024 for k in 0..6; the first \
                 22 of those 24; blocks = ceil(last seq / 32)",
            );
            if version == 6 {
                d["filter"] = Value::from(format!(
                    "{} (version 6: the blocks from filter_from on)",
                    d["filter"].as_str().unwrap_or_default()
                ));
                d["filter_from"] = Value::from(
                    "on filter rows: the index of the first block the row holds; the blocks \
                     before it are sealed (all 32 of their seqs exist) and held by the filter \
                     runs the manifest names (keepsake-filter-run)",
                );
                d["manifest"] = Value::from(
                    "a manifest of format 4 with one more field, filter_runs (absent when \
                     empty): the filter runs, newest first, {written_by, digest, users (rows), \
                     bytes}, at the part key; stamped format_version 6 (runs or not: it names \
                     parts of format 6)",
                );
            }
        }
        _ => return None,
    }
    Some(d)
}

fn checkpoint_description_v1() -> Value {
    checkpoint_description_of(1)
}

fn checkpoint_description_of(version: u32) -> Value {
    let columns: Vec<Value> = checkpoint_schema_of(version)
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": format!("{:?}", f.data_type()), "nullable": f.is_nullable()}))
        .collect();
    json!({
        "format": "keepsake-checkpoint",
        "format_version": version,
        "sort_order": ["user_id", "entry", "key"],
        "entries": ["change", "item", "user"],
        "columns": columns,
        "metadata_keys": ["keepsake.format", "keepsake.format_version", "keepsake.shard", "keepsake.segment", "keepsake.user_count"],
    })
}

#[derive(Default)]
struct Rows {
    user: Vec<[u8; 16]>,
    entry: Vec<&'static str>,
    key: Vec<Option<[u8; 16]>>,
    seq: Vec<i64>,
    item_id: Vec<Option<[u8; 16]>>,
    version: Vec<Option<i64>>,
    kind: Vec<Option<&'static str>>,
    deleted: Vec<Option<bool>>,
    changed_at: Vec<Option<i64>>,
    document: Vec<Option<Document>>,
    filter: Vec<Option<Vec<u8>>>,
    filter_from: Vec<Option<i64>>,
}

impl Rows {
    /// The Arrow columns of rows `range`; with `filters` (format 5 on) the filter column, with
    /// `from` (6 on) `filter_from` too.
    fn columns(&self, range: std::ops::Range<usize>, filters: bool, from: bool) -> Vec<ArrayRef> {
        let user: Vec<Option<[u8; 16]>> =
            self.user[range.clone()].iter().map(|u| Some(*u)).collect();
        let mut columns: Vec<ArrayRef> = vec![
            uuids(&user),
            Arc::new(StringArray::from(self.entry[range.clone()].to_vec())),
            uuids(&self.key[range.clone()]),
            Arc::new(Int64Array::from(self.seq[range.clone()].to_vec())),
            uuids(&self.item_id[range.clone()]),
            Arc::new(Int64Array::from(self.version[range.clone()].to_vec())),
            Arc::new(StringArray::from(self.kind[range.clone()].to_vec())),
            Arc::new(BooleanArray::from(self.deleted[range.clone()].to_vec())),
            Arc::new(
                TimestampMicrosecondArray::from(self.changed_at[range.clone()].to_vec())
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter(
                self.document[range.clone()]
                    .iter()
                    .map(|d| d.as_ref().map(Document::as_str)),
            )),
        ];
        if filters {
            columns.push(Arc::new(BinaryArray::from_iter(
                self.filter[range.clone()].iter().map(Option::as_deref),
            )));
        }
        if from {
            columns.push(Arc::new(Int64Array::from(self.filter_from[range].to_vec())));
        }
        columns
    }

    /// A row of the user's that holds only what its entry needs.
    fn bare(&mut self, user: [u8; 16], entry: &'static str, seq: u64) -> Result<(), SegmentError> {
        self.user.push(user);
        self.entry.push(entry);
        self.key.push(None);
        self.seq.push(i64_of(seq)?);
        self.item_id.push(None);
        self.version.push(None);
        self.kind.push(None);
        self.deleted.push(None);
        self.changed_at.push(None);
        self.document.push(None);
        self.filter.push(None);
        self.filter_from.push(None);
        Ok(())
    }
}

fn i64_of(v: u64) -> Result<i64, SegmentError> {
    i64::try_from(v).map_err(|_| invalid(format!("{v} does not fit int64")))
}

fn uuids(values: &[Option<[u8; 16]>]) -> ArrayRef {
    let mut b = FixedSizeBinaryBuilder::with_capacity(values.len(), 16);
    for v in values {
        match v {
            Some(bytes) => {
                let _ = b.append_value(bytes);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

/// Encodes the state of a shard's users after segment `meta.segment`.
pub fn encode_checkpoint<'a>(
    users: impl IntoIterator<Item = (&'a UserId, &'a UserState)>,
    meta: &CheckpointMeta,
) -> Result<Bytes, SegmentError> {
    let mut e = CheckpointEncoder::new(meta)?;
    e.push(users)?;
    e.finish()
}

/// A checkpoint (part) written in pieces: users are pushed in ascending order of id, a batch at
/// a time, and only the encoded bytes stay, so that a writer can fold a large part's users a
/// range at a time and never hold them all. The bytes are those of [`encode_checkpoint`] of all
/// the users pushed.
pub struct CheckpointEncoder {
    meta: CheckpointMeta,
    schema: arrow::datatypes::SchemaRef,
    writer: ArrowWriter<Vec<u8>>,
    /// Users pushed so far, and the last of them.
    users: u64,
    last: Option<UserId>,
}

impl std::fmt::Debug for CheckpointEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointEncoder")
            .field("meta", &self.meta)
            .field("users", &self.users)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl CheckpointEncoder {
    /// An encoder of a checkpoint with `meta` (its `user_count` is the users pushed), its
    /// pages cut for cold loads of one user (`one_user_read_properties_builder`).
    pub fn new(meta: &CheckpointMeta) -> Result<Self, SegmentError> {
        use parquet::basic::Encoding;
        use parquet::schema::types::ColumnPath;
        // An item's id on its row, random: a dictionary would hold nearly every value, and a
        // one-user read fetches the dictionary page whole (~1 MB a cold load from a part of
        // 4,096 users, for ~10 KB of the user's rows).
        let mut props = one_user_read_properties_builder(
            &[("changed_at", Encoding::DELTA_BINARY_PACKED)],
            &["user_id", "entry"],
        )?
        .set_column_dictionary_enabled(ColumnPath::from("key"), false);
        if meta.format_version >= 5 {
            // Random bits: no dictionary, no statistics, nothing to compress.
            let filter = ColumnPath::from("filter");
            props = props
                .set_column_dictionary_enabled(filter.clone(), false)
                .set_column_statistics_enabled(
                    filter,
                    parquet::file::properties::EnabledStatistics::None,
                );
        }
        let schema = checkpoint_schema_of(meta.format_version);
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.build()))?;
        Ok(Self {
            meta: meta.clone(),
            schema,
            writer,
            users: 0,
            last: None,
        })
    }

    /// Adds `users` (in any order among themselves; every one after those pushed before).
    pub fn push<'a>(
        &mut self,
        users: impl IntoIterator<Item = (&'a UserId, &'a UserState)>,
    ) -> Result<(), SegmentError> {
        let meta = &self.meta;
        let mut users: Vec<_> = users.into_iter().collect();
        users.sort_by_key(|(u, _)| **u);
        if let (Some(last), Some((first, _))) = (self.last, users.first())
            && **first <= last
        {
            return Err(invalid(format!(
                "user {first} pushed to a checkpoint after user {last}: users go in ascending order"
            )));
        }
        let needed = checkpoint_version(users.iter().map(|(_, s)| *s));
        if meta.format_version < needed {
            return Err(invalid(format!(
                "checkpoint format version {} cannot hold these users (version {needed} is needed)",
                meta.format_version
            )));
        }
        let filters = meta.format_version >= 5;
        let from = meta.format_version >= 6;
        if !from && users.iter().any(|(_, s)| s.sealed_missing() > 0) {
            return Err(invalid(format!(
                "checkpoint format version {} holds whole filters, and these states lack sealed \
                 blocks (version 6 is needed)",
                meta.format_version
            )));
        }
        if !filters && users.iter().any(|(_, s)| s.filter_through() > 0) {
            return Err(invalid(format!(
                "checkpoint format version {} holds change ids exactly, and these states hold some \
                 as a filter (version 5 is needed)",
                meta.format_version
            )));
        }
        let mut r = Rows::default();
        for (user, state) in &users {
            let u = *user.as_bytes();
            if filters {
                r.bare(u, ENTRY_FILTER, state.last_seq())?;
                let filter = state.change_filter();
                if let Some(f) = r.filter.last_mut() {
                    *f = Some(filter.to_bytes());
                }
                if let Some(f) = r.filter_from.last_mut().filter(|_| from) {
                    *f = Some(i64_of(filter.offset() as u64)?);
                }
            } else {
                let mut changes: Vec<_> = state.changes().collect();
                changes.sort_by_key(|(c, _)| **c);
                for (c, cref) in changes {
                    r.bare(u, ENTRY_CHANGE, cref.seq)?;
                    let last = r.key.len() - 1;
                    r.key[last] = Some(*c.as_bytes());
                    r.item_id[last] = Some(*cref.item_id.as_bytes());
                    r.version[last] = Some(i64_of(cref.version)?);
                }
            }
            let mut items: Vec<_> = state.items().collect();
            items.sort_by_key(|i| i.item_id);
            for i in items {
                r.user.push(u);
                r.entry.push("item");
                r.key.push(Some(*i.item_id.as_bytes()));
                r.seq.push(i64_of(i.seq)?);
                r.item_id.push(Some(*i.item_id.as_bytes()));
                r.version.push(Some(i64_of(i.version)?));
                r.kind.push(Some(i.kind.as_str()));
                r.deleted.push(Some(i.deleted));
                r.changed_at.push(Some(i.changed_at.timestamp_micros()));
                r.document.push(i.document.clone());
                r.filter.push(None);
                r.filter_from.push(None);
            }
            r.bare(u, "user", state.last_seq())?;
        }
        // The rows go to the writer `ENCODE_CHUNK_ROWS` at a time: the Arrow copy of the
        // documents is one chunk's, not the whole part's.
        let mut at = 0;
        while at < r.user.len() {
            let to = (at + ENCODE_CHUNK_ROWS).min(r.user.len());
            let batch =
                RecordBatch::try_new(self.schema.clone(), r.columns(at..to, filters, from))?;
            self.writer.write(&batch)?;
            at = to;
        }
        self.users += users.len() as u64;
        if let Some((u, _)) = users.last() {
            self.last = Some(**u);
        }
        Ok(())
    }

    /// Users pushed so far.
    pub fn users(&self) -> u64 {
        self.users
    }

    /// The checkpoint's bytes.
    pub fn finish(mut self) -> Result<Bytes, SegmentError> {
        let meta = &self.meta;
        for (k, v) in [
            ("keepsake.format", "checkpoint".to_string()),
            ("keepsake.format_version", meta.format_version.to_string()),
            ("keepsake.shard", meta.shard.to_string()),
            ("keepsake.segment", meta.segment.to_string()),
            ("keepsake.user_count", self.users.to_string()),
        ] {
            self.writer
                .append_key_value_metadata(KeyValue::new(k.into(), v));
        }
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

/// Reads a checkpoint's metadata from its footer key-value pairs.
pub fn checkpoint_meta(kvs: Option<&Vec<KeyValue>>) -> Result<CheckpointMeta, SegmentError> {
    let get = |k: &str| {
        kvs.and_then(|v| v.iter().find(|kv| kv.key == k))
            .and_then(|kv| kv.value.clone())
            .ok_or_else(|| invalid(format!("checkpoint metadata {k} is missing")))
    };
    let num = |k: &str| -> Result<u64, SegmentError> {
        get(k)?
            .parse()
            .map_err(|_| invalid(format!("checkpoint metadata {k} is not a number")))
    };
    if get("keepsake.format")? != "checkpoint" {
        return Err(invalid("not a checkpoint"));
    }
    let version = u32::try_from(num("keepsake.format_version")?).unwrap_or(u32::MAX);
    if !KNOWN.contains(&version) {
        return Err(SegmentError::UnknownVersion {
            found: version,
            known: KNOWN,
        });
    }
    Ok(CheckpointMeta {
        format_version: version,
        shard: u32::try_from(num("keepsake.shard")?).map_err(|_| invalid("shard out of range"))?,
        segment: num("keepsake.segment")?,
        user_count: num("keepsake.user_count")?,
    })
}

#[derive(Default)]
struct Partial {
    last_seq: u64,
    items: Vec<ItemState>,
    changes: Vec<(ChangeId, ChangeRef)>,
    /// The filter row's: the seq it was written at, and the filter (from its first block held).
    filter: Option<(u64, ChangeFilter)>,
}

fn col(batch: &RecordBatch, i: usize) -> Result<&FixedSizeBinaryArray, SegmentError> {
    batch
        .column(i)
        .as_fixed_size_binary_opt()
        .ok_or_else(|| invalid(format!("checkpoint column {i} is not a uuid column")))
}

fn id_at(a: &FixedSizeBinaryArray, i: usize) -> Option<[u8; 16]> {
    (!a.is_null(i))
        .then(|| a.value(i).try_into().ok())
        .flatten()
}

/// Folds checkpoint record batches into user states (rows of any subset of users).
pub fn decode_checkpoint_batches(
    batches: impl IntoIterator<Item = RecordBatch>,
    only: Option<&UserId>,
) -> Result<HashMap<UserId, UserState>, SegmentError> {
    let mut partial: HashMap<UserId, Partial> = HashMap::new();
    // Version 5 (the `filter` column) gives every user a filter row; a user without one would
    // lose its change ids, so it is refused.
    let mut filters = false;
    for batch in batches {
        let fields = batch.schema().fields().clone();
        let v6 = fields == checkpoint_schema_of(6).fields().clone();
        let filter = if v6 || fields == checkpoint_schema_of(5).fields().clone() {
            filters = true;
            Some(
                batch
                    .column(10)
                    .as_binary_opt::<i32>()
                    .ok_or_else(|| invalid("filter"))?,
            )
        } else if fields == checkpoint_schema_of(1).fields().clone() {
            None
        } else {
            return Err(invalid("the file's columns are not the checkpoint schema"));
        };
        let filter_from = if v6 {
            Some(
                batch
                    .column(11)
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(|| invalid("filter_from"))?,
            )
        } else {
            None
        };
        let user = col(&batch, 0)?;
        let entry = batch
            .column(ENTRY_COLUMN)
            .as_string_opt::<i32>()
            .ok_or_else(|| invalid("entry"))?;
        let key = col(&batch, 2)?;
        let seq = batch
            .column(3)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| invalid("seq"))?;
        let item_id = col(&batch, 4)?;
        let version = batch
            .column(5)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| invalid("version"))?;
        let kind = batch
            .column(6)
            .as_string_opt::<i32>()
            .ok_or_else(|| invalid("kind"))?;
        let deleted = batch
            .column(7)
            .as_boolean_opt()
            .ok_or_else(|| invalid("deleted"))?;
        let changed_at = batch
            .column(8)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| invalid("changed_at"))?;
        let document = batch
            .column(9)
            .as_string_opt::<i32>()
            .ok_or_else(|| invalid("document"))?;
        for i in 0..batch.num_rows() {
            let bad = |what: &str| invalid(format!("checkpoint row {i}: {what}"));
            let u = UserId::from_bytes(id_at(user, i).ok_or_else(|| bad("user_id"))?);
            if only.is_some_and(|o| *o != u) {
                continue;
            }
            let p = partial.entry(u).or_default();
            let seq_v = u64::try_from(seq.value(i)).map_err(|_| bad("seq"))?;
            let version_v = || -> Result<u64, SegmentError> {
                if version.is_null(i) {
                    return Err(bad("version"));
                }
                u64::try_from(version.value(i)).map_err(|_| bad("version"))
            };
            match entry.value(i) {
                "user" => p.last_seq = seq_v,
                ENTRY_FILTER => {
                    let bytes = filter
                        .filter(|f| !f.is_null(i))
                        .map(|f| f.value(i))
                        .ok_or_else(|| bad("filter"))?;
                    // Version 5 holds the whole filter; 6 says where the row's blocks begin.
                    let from = match filter_from {
                        None => 0,
                        Some(c) if c.is_null(i) => return Err(bad("filter_from")),
                        Some(c) => usize::try_from(c.value(i)).map_err(|_| bad("filter_from"))?,
                    };
                    // Only sealed blocks are held elsewhere: one still open, held there, would
                    // miss the ids of the seqs still to come.
                    if from as u64 > seq_v / keepsake_model::SEQS_PER_BLOCK {
                        return Err(bad("filter_from is past the user's sealed blocks"));
                    }
                    let f = ChangeFilter::from_bytes_at(from, bytes)
                        .ok_or_else(|| bad("filter is not a whole number of blocks"))?;
                    if f.blocks() as u64 != ChangeFilter::blocks_for(seq_v) {
                        return Err(bad("filter blocks do not match the user's last seq"));
                    }
                    p.filter = Some((seq_v, f));
                }
                "change" => p.changes.push((
                    ChangeId::from_bytes(id_at(key, i).ok_or_else(|| bad("key"))?),
                    ChangeRef {
                        item_id: ItemId::from_bytes(
                            id_at(item_id, i).ok_or_else(|| bad("item_id"))?,
                        ),
                        version: version_v()?,
                        seq: seq_v,
                    },
                )),
                "item" => p.items.push(ItemState {
                    item_id: ItemId::from_bytes(id_at(key, i).ok_or_else(|| bad("key"))?),
                    kind: (!kind.is_null(i))
                        .then(|| Kind::parse(kind.value(i)))
                        .flatten()
                        .ok_or_else(|| bad("kind"))?,
                    version: version_v()?,
                    seq: seq_v,
                    deleted: !deleted.is_null(i) && deleted.value(i),
                    changed_at: (!changed_at.is_null(i))
                        .then(|| DateTime::<Utc>::from_timestamp_micros(changed_at.value(i)))
                        .flatten()
                        .ok_or_else(|| bad("changed_at"))?,
                    document: (!document.is_null(i))
                        .then(|| Document::from_stored(document.value(i))),
                }),
                other => return Err(bad(&format!("unknown entry {other:?}"))),
            }
        }
    }
    partial
        .into_iter()
        .map(|(u, p)| {
            let state = UserState::from_parts(p.last_seq, p.items, p.changes);
            match p.filter {
                Some(_) if state.exact_changes() > 0 => Err(invalid(format!(
                    "user {u}: both change rows and a change-id filter"
                ))),
                Some((seq, f)) if seq == state.last_seq() => Ok((u, state.with_change_filter(f))),
                Some(_) => Err(invalid(format!("user {u}: filter and last seq disagree"))),
                None if filters => Err(invalid(format!("user {u}: no change-id filter row"))),
                None => Ok((u, state)),
            }
        })
        .collect()
}

/// Decodes a whole checkpoint.
pub fn decode_checkpoint(
    bytes: Bytes,
) -> Result<(CheckpointMeta, HashMap<UserId, UserState>), SegmentError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let meta = checkpoint_meta(builder.metadata().file_metadata().key_value_metadata())?;
    let mut failed = None;
    // Batches are folded as they are decoded, so that their buffers are reused.
    let batches = builder
        .with_batch_size(crate::codec::DECODE_BATCH_ROWS)
        .build()?
        .map_while(|b| b.map_err(|e| failed = Some(e)).ok());
    let users = decode_checkpoint_batches(batches, None);
    // A batch that failed to decode is the cause of whatever the partial fold then says.
    if let Some(e) = failed {
        return Err(e.into());
    }
    let users = users?;
    if users.len() as u64 != meta.user_count {
        return Err(invalid(format!(
            "metadata says {} users, the file holds {}",
            meta.user_count,
            users.len()
        )));
    }
    if meta.format_version < checkpoint_version(users.values()) {
        return Err(invalid(format!(
            "a checkpoint of version {} holds an item of a kind its version cannot (device \
             needs version 2, collection version 3)",
            meta.format_version
        )));
    }
    Ok((meta, users))
}
