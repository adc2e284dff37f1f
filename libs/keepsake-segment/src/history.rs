//! History objects: segments `first..=last` of one shard compacted into one Parquet file.
//!
//! Invariants (checked by [`encode_history`] and [`decode_history`], documented in
//! `schemas/history-v1.json`, which a test compares with [`history_description`]):
//! - the columns are the segment schema's plus `segment` (the number of the segment each row
//!   came from), rows sorted by `(user_id, seq)`: one user's events of the whole range are
//!   contiguous, so a user's history is one footer and a few pages instead of a read per segment;
//! - the key-value metadata carries every source segment's own metadata, so [`decode_history`]
//!   gives back each source [`Segment`] exactly (its rows in `(user_id, seq)` order, as the
//!   segment held them): a history object is a container of segments, never a rewrite of events.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use keepsake_model::Event;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use serde_json::{Value, json};

use crate::codec::{
    DECODE_BATCH_ROWS, ENCODE_CHUNK_ROWS, Segment, decode_batch, event_columns,
    one_user_read_properties_builder,
};
use crate::error::{SegmentError, invalid};
use crate::schema::{KNOWN_VERSIONS, Kv, SEGMENT_COLUMN, SegmentMeta, history_schema};

/// The newest history format version this build writes. A history object is stamped with the
/// newest format version among its source segments: version 2 holds at least one segment of
/// format 2 (kind `device`, origin `operator`), version 3 at least one of format 3 (origin
/// `import`), version 4 at least one of format 4 (kind `collection`); the layout is version 1's
/// throughout. So a build that reads only older versions
/// refuses the object by version — also on its one-user reads, which do not read the sources'
/// versions — rather than by a value it does not know.
pub const HISTORY_VERSION: u32 = 4;

/// What a history object says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryMeta {
    /// The history format version.
    pub format_version: u32,
    /// The shard.
    pub shard: u32,
    /// The first segment held.
    pub first: u64,
    /// The last segment held.
    pub last: u64,
    /// Rows.
    pub event_count: u64,
    /// Smallest `recorded_at` of its events.
    pub first_recorded_at: DateTime<Utc>,
    /// Largest `recorded_at` of its events.
    pub last_recorded_at: DateTime<Utc>,
    /// The source segments' metadata, as stored (parsed by [`HistoryMeta::sources`] only when
    /// needed: a user's read wants the times, not a thousand segments' metadata).
    sources: String,
}

const K_VERSION: &str = "keepsake.history_format_version";
const K_SHARD: &str = "keepsake.shard";
const K_FIRST: &str = "keepsake.first_segment";
const K_LAST: &str = "keepsake.last_segment";
const K_COUNT: &str = "keepsake.event_count";
const K_FIRST_AT: &str = "keepsake.first_recorded_at";
const K_LAST_AT: &str = "keepsake.last_recorded_at";
/// `[[format_version, segment, writer_epoch, batch_id, event_count, first_us, last_us], ...]`
const K_SOURCES: &str = "keepsake.sources";

fn rfc3339(d: &DateTime<Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl HistoryMeta {
    fn new(shard: u32, segments: &[Segment]) -> Result<Self, SegmentError> {
        let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
            return Err(invalid("a history object holds at least one segment"));
        };
        let sources: Vec<Value> = segments
            .iter()
            .map(|s| {
                let m = &s.meta;
                json!([
                    m.format_version,
                    m.segment,
                    m.writer_epoch,
                    m.batch_id.to_string(),
                    m.event_count,
                    m.first_recorded_at.timestamp_micros(),
                    m.last_recorded_at.timestamp_micros(),
                ])
            })
            .collect();
        Ok(Self {
            format_version: segments
                .iter()
                .map(|s| s.meta.format_version)
                .max()
                .unwrap_or(1),
            shard,
            first: first.meta.segment,
            last: last.meta.segment,
            event_count: segments.iter().map(|s| s.meta.event_count).sum(),
            first_recorded_at: segments
                .iter()
                .map(|s| s.meta.first_recorded_at)
                .min()
                .unwrap_or_default(),
            last_recorded_at: segments
                .iter()
                .map(|s| s.meta.last_recorded_at)
                .max()
                .unwrap_or_default(),
            sources: Value::Array(sources).to_string(),
        })
    }

    fn to_key_values(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new(K_VERSION.into(), self.format_version.to_string()),
            KeyValue::new(K_SHARD.into(), self.shard.to_string()),
            KeyValue::new(K_FIRST.into(), self.first.to_string()),
            KeyValue::new(K_LAST.into(), self.last.to_string()),
            KeyValue::new(K_COUNT.into(), self.event_count.to_string()),
            KeyValue::new(K_FIRST_AT.into(), rfc3339(&self.first_recorded_at)),
            KeyValue::new(K_LAST_AT.into(), rfc3339(&self.last_recorded_at)),
            KeyValue::new(K_SOURCES.into(), self.sources.clone()),
        ]
    }

    /// Reads the metadata from a Parquet footer's key-value pairs (the sources unparsed).
    pub fn from_key_values(kvs: Option<&Vec<KeyValue>>) -> Result<Self, SegmentError> {
        let kv = Kv::new(kvs);
        let format_version: u32 = kv.num(K_VERSION)?;
        if !HISTORY_VERSIONS.contains(&format_version) {
            return Err(SegmentError::UnknownVersion {
                found: format_version,
                known: HISTORY_VERSIONS,
            });
        }
        let meta = Self {
            format_version,
            shard: kv.num(K_SHARD)?,
            first: kv.num(K_FIRST)?,
            last: kv.num(K_LAST)?,
            event_count: kv.num(K_COUNT)?,
            first_recorded_at: kv.time(K_FIRST_AT)?,
            last_recorded_at: kv.time(K_LAST_AT)?,
            sources: kv.get(K_SOURCES)?.to_owned(),
        };
        if meta.first == 0 || meta.first > meta.last {
            return Err(invalid(format!(
                "history of segments {}..={} is not a range",
                meta.first, meta.last
            )));
        }
        Ok(meta)
    }

    /// The metadata of every source segment, ascending and dense from `first` to `last`.
    pub fn sources(&self) -> Result<Vec<SegmentMeta>, SegmentError> {
        let bad = |what: &str| invalid(format!("history sources: {what}"));
        let rows: Vec<Vec<Value>> =
            serde_json::from_str(&self.sources).map_err(|e| bad(&e.to_string()))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let [fv, n, epoch, batch, count, first, last] = r.as_slice() else {
                return Err(bad("an entry is not seven fields"));
            };
            let u = |v: &Value| v.as_u64().ok_or_else(|| bad("a number is malformed"));
            let at = |v: &Value| {
                v.as_i64()
                    .and_then(DateTime::from_timestamp_micros)
                    .ok_or_else(|| bad("a time is malformed"))
            };
            let format_version = u32::try_from(u(fv)?).map_err(|_| bad("format version"))?;
            if !KNOWN_VERSIONS.contains(&format_version) {
                return Err(SegmentError::UnknownVersion {
                    found: format_version,
                    known: KNOWN_VERSIONS,
                });
            }
            out.push(SegmentMeta {
                format_version,
                shard: self.shard,
                segment: u(n)?,
                writer_epoch: u(epoch)?,
                batch_id: batch
                    .as_str()
                    .and_then(|b| b.parse().ok())
                    .ok_or_else(|| bad("a batch id is malformed"))?,
                event_count: u(count)?,
                first_recorded_at: at(first)?,
                last_recorded_at: at(last)?,
            });
        }
        let dense = out
            .iter()
            .zip(self.first..=self.last)
            .all(|(m, n)| m.segment == n);
        if !dense || out.len() as u64 != self.last - self.first + 1 {
            return Err(bad("not the segments first..=last in order"));
        }
        if out.iter().map(|m| m.event_count).sum::<u64>() != self.event_count {
            return Err(bad("their event counts do not add up to the object's"));
        }
        Ok(out)
    }
}

/// Every history format version this build reads.
pub const HISTORY_VERSIONS: &[u32] = &[1, 2, 3, 4];

/// Encodes segments `first..=last` of `shard` (ascending, dense) as one history object.
pub fn encode_history(shard: u32, segments: &[Segment]) -> Result<Bytes, SegmentError> {
    let meta = HistoryMeta::new(shard, segments)?;
    for (s, n) in segments.iter().zip(meta.first..) {
        if s.meta.segment != n || s.meta.shard != shard {
            return Err(invalid(format!(
                "segment {} of shard {} given where segment {n} of shard {shard} belongs",
                s.meta.segment, s.meta.shard
            )));
        }
        if s.meta.event_count != s.events.len() as u64 {
            return Err(invalid(format!(
                "segment {n}'s event count is not its rows'"
            )));
        }
    }
    let mut rows: Vec<(&Event, u64)> = segments
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (e, s.meta.segment)))
        .collect();
    rows.sort_unstable_by_key(|(e, _)| (e.user_id, e.seq));
    if rows
        .windows(2)
        .any(|w| (w[0].0.user_id, w[0].0.seq) == (w[1].0.user_id, w[1].0.seq))
    {
        return Err(invalid("two events of one user share a seq"));
    }
    let order: Vec<&Event> = rows.iter().map(|(e, _)| *e).collect();
    let numbers: Result<Vec<i64>, _> = rows.iter().map(|(_, n)| i64::try_from(*n)).collect();
    let numbers = numbers.map_err(|_| invalid("a segment number does not fit int64"))?;
    let schema = history_schema();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(history_properties()?))?;
    // `ENCODE_CHUNK_ROWS` rows at a time: the Arrow copy of the documents is a chunk's.
    for (events, numbers) in order
        .chunks(ENCODE_CHUNK_ROWS)
        .zip(numbers.chunks(ENCODE_CHUNK_ROWS))
    {
        let mut columns = event_columns(events)?;
        columns.push(Arc::new(Int64Array::from(numbers.to_vec())) as ArrayRef);
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    for kv in meta.to_key_values() {
        writer.append_key_value_metadata(kv);
    }
    Ok(Bytes::from(writer.into_inner()?))
}

/// The Parquet settings of a history object: read for one user far more often than whole (a
/// stale patch's base, a resent change id, an as-of read, an audit), so cut for that
/// (`one_user_read_properties_builder`): its ids sorted by user and repeated are
/// delta-encoded, its numbers that rise within a user delta-packed, none with a dictionary.
/// With a segment's settings the dictionary pages of `user_id`, `device_id`, `request_id` and
/// `recorded_at` (up to 1 MB each) were most of what such a read fetched.
fn history_properties() -> Result<parquet::file::properties::WriterProperties, SegmentError> {
    use parquet::basic::Encoding;
    Ok(one_user_read_properties_builder(
        &[
            ("device_id", Encoding::DELTA_BYTE_ARRAY),
            ("request_id", Encoding::DELTA_BYTE_ARRAY),
            ("restore_id", Encoding::DELTA_BYTE_ARRAY),
            ("seq", Encoding::DELTA_BINARY_PACKED),
            ("recorded_at", Encoding::DELTA_BINARY_PACKED),
            (SEGMENT_COLUMN, Encoding::DELTA_BINARY_PACKED),
        ],
        &["user_id"],
    )?
    .build())
}

/// The `segment` column of a batch read from a history object; `None` for a segment's batch.
pub fn decode_segment_numbers(batch: &RecordBatch) -> Result<Option<Vec<u64>>, SegmentError> {
    let Some(c) = batch.column_by_name(SEGMENT_COLUMN) else {
        return Ok(None);
    };
    let c = c
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| invalid("segment is not int64"))?;
    if c.null_count() > 0 {
        return Err(invalid("a row has no segment"));
    }
    c.values()
        .iter()
        .map(|v| {
            u64::try_from(*v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid(format!("segment {v} is not a segment number")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A decoded history object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// What the file says about itself.
    pub meta: HistoryMeta,
    /// Its source segments, exactly, ascending.
    pub segments: Vec<Segment>,
}

/// Decodes a whole history object back into its source segments, checking the rows against
/// the metadata (every row in a listed segment, each segment's count, strict `(user_id, seq)`
/// order).
pub fn decode_history(bytes: Bytes) -> Result<History, SegmentError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let meta =
        HistoryMeta::from_key_values(builder.metadata().file_metadata().key_value_metadata())?;
    let sources = meta.sources()?;
    let reader = builder.with_batch_size(DECODE_BATCH_ROWS).build()?;
    let mut by_segment: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    let mut previous = None;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch?;
        if batch.schema().fields() != history_schema().fields() {
            return Err(invalid("the file's columns are not the history schema"));
        }
        let numbers = decode_segment_numbers(&batch)?
            .ok_or_else(|| invalid("the file has no segment column"))?;
        for (e, n) in decode_batch(&batch)?.into_iter().zip(numbers) {
            let key = (e.user_id, e.seq);
            if previous.is_some_and(|p| p >= key) {
                return Err(invalid("rows are not strictly sorted by (user_id, seq)"));
            }
            previous = Some(key);
            if !(meta.first..=meta.last).contains(&n) {
                return Err(invalid(format!(
                    "a row of segment {n} in a history of {}..={}",
                    meta.first, meta.last
                )));
            }
            rows += 1;
            by_segment.entry(n).or_default().push(e);
        }
    }
    if rows != meta.event_count {
        return Err(invalid(format!(
            "metadata says {} events, the file holds {rows}",
            meta.event_count
        )));
    }
    let segments = sources
        .into_iter()
        .map(|m| {
            let events = by_segment.remove(&m.segment).unwrap_or_default();
            if events.len() as u64 != m.event_count {
                return Err(invalid(format!(
                    "segment {} holds {} rows, its metadata says {}",
                    m.segment,
                    events.len(),
                    m.event_count
                )));
            }
            crate::schema::check_version(m.format_version, &events)?;
            Ok(Segment { meta: m, events })
        })
        .collect::<Result<Vec<_>, SegmentError>>()?;
    let newest_source = segments.iter().map(|s| s.meta.format_version).max();
    if let Some(newest) = newest_source
        && newest > meta.format_version
    {
        return Err(invalid(format!(
            "a history object of version {} holds a segment of format {newest}",
            meta.format_version
        )));
    }
    Ok(History { meta, segments })
}

/// The machine-readable description of history format `version`, as in
/// `schemas/history-v<version>.json`; `None` for a version this build does not know.
pub fn history_description(version: u32) -> Option<Value> {
    let mut d = history_description_v1();
    match version {
        1 => {}
        2 => {
            d["format_version"] = 2.into();
            d["segment_format_versions"] = json!([1, 2]);
            d["stamped"] = "2 when at least one source segment is format 2, else 1".into();
        }
        3 => {
            d["format_version"] = 3.into();
            d["segment_format_versions"] = json!([1, 2, 3]);
            d["stamped"] = "the newest format version among its source segments (1, 2 or 3)".into();
        }
        4 => {
            d["format_version"] = 4.into();
            d["segment_format_versions"] = json!([1, 2, 3, 4]);
            d["stamped"] =
                "the newest format version among its source segments (1, 2, 3 or 4)".into();
        }
        _ => return None,
    }
    Some(d)
}

fn history_description_v1() -> Value {
    let columns: Vec<Value> = history_schema()
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "nullable": f.is_nullable()}))
        .collect();
    json!({
        "format": "keepsake-history",
        "format_version": 1,
        "columns": "the segment schema (schemas/segment-v1.json), same types and encodings, then `segment`",
        "column_names": columns,
        "segment_column": {"name": SEGMENT_COLUMN, "type": "int64", "meaning": "the number of the segment the row came from"},
        "sort_order": ["user_id", "seq"],
        "key": "shards/<s>/history/<first:020>-<last:020>.parquet",
        "metadata_keys": [K_VERSION, K_SHARD, K_FIRST, K_LAST, K_COUNT, K_FIRST_AT, K_LAST_AT, K_SOURCES],
        "sources": "JSON array, one entry per segment first..=last: [format_version, segment, writer_epoch, batch_id, event_count, first_recorded_at_us, last_recorded_at_us]",
    })
}
