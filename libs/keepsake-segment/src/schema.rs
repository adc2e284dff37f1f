//! The segment schema (format versions 1 to 4: the same columns) and its key-value
//! metadata.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use keepsake_model::{BatchId, Event, Kind, Origin};
use parquet::file::metadata::KeyValue;
use serde_json::{Value, json};

use crate::error::{SegmentError, invalid};

/// The newest format version this build writes. A segment is stamped with the lowest version
/// that holds its rows ([`segment_version`]), so that a build that reads only older versions (one
/// being rolled back to, or still running beside this one during a deploy) refuses only the
/// segments it cannot read, and refuses them by version rather than by a value it does not know.
pub const FORMAT_VERSION: u32 = 4;
/// Every format version this build reads.
pub const KNOWN_VERSIONS: &[u32] = &[1, 2, 3, 4];

/// The lowest segment format version that can hold `events`. Every version has the columns of
/// version 1; version 2 adds two values, kind `device` and origin `operator` (device
/// registrations and revocations recorded in the user's log); version 3 adds origin `import`
/// (an operator's import of a vCard or iCalendar file); version 4 adds kind `collection` (an
/// address book or calendar, `keepsake_model::collection`).
pub fn segment_version(events: &[Event]) -> u32 {
    let needed = |e: &Event| match e.origin {
        _ if e.kind == Kind::Collection => 4,
        Origin::Import => 3,
        Origin::Operator => 2,
        Origin::Device | Origin::Restore if !e.kind.is_data() => 2,
        Origin::Device | Origin::Restore => 1,
    };
    events.iter().map(needed).max().unwrap_or(1)
}

/// Refuses a segment stamped with a version too old to hold its rows. (Decoding refuses a
/// version this build does not know before it reads a row.)
pub(crate) fn check_version(format_version: u32, events: &[Event]) -> Result<(), SegmentError> {
    let needed = segment_version(events);
    if format_version < needed {
        return Err(invalid(format!(
            "format version {format_version} cannot hold these rows (kind device or origin \
             operator need version 2, origin import version 3, kind collection version 4: these need \
             version {needed})"
        )));
    }
    Ok(())
}
/// Prefix of every key-value metadata key Keepsake writes.
pub const META_PREFIX: &str = "keepsake.";

pub(crate) const UUID: DataType = DataType::FixedSizeBinary(16);

/// Column positions, in schema order.
pub(crate) mod col {
    pub const USER_ID: usize = 0;
    pub const SEQ: usize = 1;
    pub const EVENT_ID: usize = 2;
    pub const CHANGE_ID: usize = 3;
    pub const DEVICE_ID: usize = 4;
    pub const ORIGIN: usize = 5;
    pub const REQUEST_ID: usize = 6;
    pub const RESTORE_ID: usize = 7;
    pub const KIND: usize = 8;
    pub const ITEM_ID: usize = 9;
    pub const OP: usize = 10;
    pub const VERSION: usize = 11;
    pub const RECORDED_AT: usize = 12;
    pub const DOCUMENT: usize = 13;
}

/// Columns written without a dictionary: their values are unique to a row, so a dictionary
/// costs a hash and an insert per value and saves nothing.
pub(crate) const PLAIN_COLUMNS: [&str; 4] = ["event_id", "change_id", "item_id", "document"];

/// Columns written without min/max statistics: nothing prunes by them.
pub(crate) const NO_STATISTICS_COLUMNS: [&str; 1] = ["document"];

/// The only columns compressed (zstd level 1); the rest are written uncompressed. The parquet
/// reader and writer create a zstd compressor and decompressor for every compressed column chunk
/// they touch: with every column compressed, creating them was ~27% of a profile of one user's
/// reads, for columns that are random ids, dictionary indices or small integers zstd barely
/// shrinks. Documents are ~90% of a segment's bytes. (Delta encoding for seq and version was
/// measured too: 5% slower encodes of 1k-event segments for under 1 byte an event.)
pub(crate) const ZSTD_COLUMNS: [&str; 1] = ["document"];

/// The Arrow schema of a segment.
pub fn arrow_schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("user_id", UUID, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("event_id", UUID, false),
        Field::new("change_id", UUID, false),
        Field::new("device_id", UUID, true),
        Field::new("origin", DataType::Utf8, false),
        Field::new("request_id", UUID, true),
        Field::new("restore_id", UUID, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("item_id", UUID, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("recorded_at", ts, false),
        Field::new("document", DataType::Utf8, true),
    ]))
}

/// The column of a history object that says which segment a row came from.
pub const SEGMENT_COLUMN: &str = "segment";

/// The Arrow schema of a history object: the segment schema plus [`SEGMENT_COLUMN`]. (Here,
/// beside the segment schema it extends, so that the codec, which decodes both, does not import
/// the history module that imports it.)
pub fn history_schema() -> Arc<Schema> {
    let mut fields: Vec<Field> = arrow_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SEGMENT_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// What a segment says about itself, in its Parquet key-value metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// The segment format version.
    pub format_version: u32,
    /// The shard whose log this segment belongs to.
    pub shard: u32,
    /// Its number in the shard's log (dense from 1).
    pub segment: u64,
    /// The writer incarnation that wrote it (the first segment number it tried to write).
    pub writer_epoch: u64,
    /// Unique per group commit: how a writer recognises its own segment after an ambiguous PUT.
    pub batch_id: BatchId,
    /// Number of rows.
    pub event_count: u64,
    /// Smallest `recorded_at` of its events.
    pub first_recorded_at: DateTime<Utc>,
    /// Largest `recorded_at` of its events.
    pub last_recorded_at: DateTime<Utc>,
}

const K_VERSION: &str = "keepsake.format_version";
const K_SHARD: &str = "keepsake.shard";
const K_SEGMENT: &str = "keepsake.segment";
const K_EPOCH: &str = "keepsake.writer_epoch";
const K_BATCH: &str = "keepsake.batch_id";
const K_COUNT: &str = "keepsake.event_count";
const K_FIRST: &str = "keepsake.first_recorded_at";
const K_LAST: &str = "keepsake.last_recorded_at";

impl SegmentMeta {
    pub(crate) fn to_key_values(&self) -> Vec<KeyValue> {
        let t = |d: &DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        vec![
            KeyValue::new(K_VERSION.into(), self.format_version.to_string()),
            KeyValue::new(K_SHARD.into(), self.shard.to_string()),
            KeyValue::new(K_SEGMENT.into(), self.segment.to_string()),
            KeyValue::new(K_EPOCH.into(), self.writer_epoch.to_string()),
            KeyValue::new(K_BATCH.into(), self.batch_id.to_string()),
            KeyValue::new(K_COUNT.into(), self.event_count.to_string()),
            KeyValue::new(K_FIRST.into(), t(&self.first_recorded_at)),
            KeyValue::new(K_LAST.into(), t(&self.last_recorded_at)),
        ]
    }

    /// Reads the metadata from a Parquet footer's key-value pairs.
    pub fn from_key_values(kvs: Option<&Vec<KeyValue>>) -> Result<Self, SegmentError> {
        let kv = Kv::new(kvs);
        let format_version: u32 = kv.num(K_VERSION)?;
        if !KNOWN_VERSIONS.contains(&format_version) {
            return Err(SegmentError::UnknownVersion {
                found: format_version,
                known: KNOWN_VERSIONS,
            });
        }
        Ok(Self {
            format_version,
            shard: kv.num(K_SHARD)?,
            segment: kv.num(K_SEGMENT)?,
            writer_epoch: kv.num(K_EPOCH)?,
            batch_id: kv
                .get(K_BATCH)?
                .parse()
                .map_err(|_| invalid("metadata key keepsake.batch_id is not a UUID"))?,
            event_count: kv.num(K_COUNT)?,
            first_recorded_at: kv.time(K_FIRST)?,
            last_recorded_at: kv.time(K_LAST)?,
        })
    }
}

/// A Parquet footer's key-value metadata, read by key.
pub(crate) struct Kv<'a>(HashMap<&'a str, &'a str>);

impl<'a> Kv<'a> {
    pub(crate) fn new(kvs: Option<&'a Vec<KeyValue>>) -> Self {
        Self(
            kvs.map(|v| {
                v.iter()
                    .filter_map(|kv| Some((kv.key.as_str(), kv.value.as_deref()?)))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    pub(crate) fn get(&self, k: &str) -> Result<&'a str, SegmentError> {
        self.0
            .get(k)
            .copied()
            .ok_or_else(|| invalid(format!("metadata key {k} is missing")))
    }

    pub(crate) fn num<T: std::str::FromStr>(&self, k: &str) -> Result<T, SegmentError> {
        let v = self.get(k)?;
        v.parse()
            .map_err(|_| invalid(format!("metadata key {k} is not a number: {v:?}")))
    }

    pub(crate) fn time(&self, k: &str) -> Result<DateTime<Utc>, SegmentError> {
        let v = self.get(k)?;
        DateTime::parse_from_rfc3339(v)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| invalid(format!("metadata key {k} is not an RFC 3339 time: {v:?}")))
    }
}

fn type_name(t: &DataType) -> String {
    match t {
        DataType::FixedSizeBinary(16) => "uuid (fixed_size_binary[16])".into(),
        DataType::Int64 => "int64".into(),
        DataType::Utf8 => "utf8".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) => {
            format!("timestamp[us, tz={tz}]")
        }
        other => format!("{other:?}"),
    }
}

/// The machine-readable description of segment format `version`, as in
/// `schemas/segment-v<version>.json`; `None` for a version this build does not know. Version 2
/// adds `values`: the spellings of `kind`, `origin` and `op` (version 1 had every value but kind
/// `device` and origin `operator`).
pub fn schema_description(version: u32) -> Option<Value> {
    let mut d = schema_description_v1();
    match version {
        1 => {}
        2..=4 => {
            let spell = |all: &[&str]| Value::from(all.to_vec());
            // Each version's values spelled out: a value added later must not change the
            // description (and so the checked-in file) of an older version.
            let origins: &[&str] = if version == 2 {
                &["device", "restore", "operator"]
            } else {
                &["device", "restore", "operator", "import"]
            };
            let kinds: &[&str] = if version < 4 {
                &["contact", "event", "task", "note", "device"]
            } else {
                &["contact", "event", "task", "note", "collection", "device"]
            };
            d["format_version"] = version.into();
            d["values"] = json!({
                "kind": spell(kinds),
                "origin": spell(origins),
                "op": spell(&keepsake_model::Op::ALL.iter().map(|o| o.as_str()).collect::<Vec<_>>()),
            });
        }
        _ => return None,
    }
    Some(d)
}

fn schema_description_v1() -> Value {
    let columns: Vec<Value> = arrow_schema()
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": type_name(f.data_type()), "nullable": f.is_nullable()}))
        .collect();
    json!({
        "format": "keepsake-segment",
        "format_version": 1,
        "encoding": {
            "container": "parquet", "compression": "none", "statistics": "page", "page_index": true,
            "zstd(1)_columns": ZSTD_COLUMNS,
            "plain_columns": PLAIN_COLUMNS, "no_statistics": NO_STATISTICS_COLUMNS,
        },
        "sort_order": ["user_id", "seq"],
        "columns": columns,
        "metadata_keys": [K_VERSION, K_SHARD, K_SEGMENT, K_EPOCH, K_BATCH, K_COUNT, K_FIRST, K_LAST],
    })
}
