//! Encoding events into a segment and decoding them back.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, Int64Array,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use bytes::Bytes;
use chrono::DateTime;
use keepsake_model::{
    ChangeId, DeviceId, Document, Event, EventId, ItemId, Kind, Op, Origin, RequestId, RestoreId,
    UserId,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{SegmentError, invalid};
use crate::schema::{
    NO_STATISTICS_COLUMNS, PLAIN_COLUMNS, SegmentMeta, UUID, ZSTD_COLUMNS, arrow_schema,
    check_version, col,
};

/// Rows per data page: small enough that the page index narrows one user's read to a few pages.
const PAGE_ROWS: usize = 2048;
/// Rows per row group.
const ROW_GROUP_ROWS: usize = 64 * 1024;
/// Bytes of one data page of documents (before compression). A read of one user decompresses
/// every page holding its documents, whole: at parquet's default (1 MiB, or `PAGE_ROWS` rows) a
/// cold load of one user from a checkpoint part decompressed the documents of ~20 users, and
/// that was 28% of the server's CPU in a sustained run where every push met an evicted user
/// (docs/BENCHMARKS.md, "Sustained"). At 32 KiB a page holds ~3 users' documents of a checkpoint,
/// and a segment of small pushes is one page as before.
pub const DOCUMENT_PAGE_BYTES: usize = 32 * 1024;
/// Rows written between two checks of the page limits (parquet checks them per batch of this
/// many rows): a page of documents outgrows `DOCUMENT_PAGE_BYTES` by at most this many documents.
const WRITE_BATCH_ROWS: usize = 32;
/// Rows an encoder of a large object (a checkpoint part, a history object) turns into Arrow
/// arrays and hands the writer at once, so that the Arrow copy of its documents is a chunk's,
/// not the object's (a part of 4,096 users of 20 contacts: ~40 MB). A multiple of
/// `WRITE_BATCH_ROWS` and of `PAGE_ROWS` that divides `ROW_GROUP_ROWS`: the writer sees the
/// same batches of rows, so the bytes written are the same as from one batch.
pub(crate) const ENCODE_CHUNK_ROWS: usize = 8192;
const _: () = assert!(
    ENCODE_CHUNK_ROWS % WRITE_BATCH_ROWS == 0
        && ENCODE_CHUNK_ROWS % PAGE_ROWS == 0
        && ROW_GROUP_ROWS % ENCODE_CHUNK_ROWS == 0
);

/// A decoded segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// What the file says about itself.
    pub meta: SegmentMeta,
    /// Its events, sorted by `(user_id, seq)`.
    pub events: Vec<Event>,
}

/// The Parquet settings every segment is written with.
pub fn writer_properties() -> Result<WriterProperties, SegmentError> {
    Ok(writer_properties_builder()?.build())
}

/// [`writer_properties`] before it is built, for a format with columns of its own.
pub fn writer_properties_builder()
-> Result<parquet::file::properties::WriterPropertiesBuilder, SegmentError> {
    let sort = |column_idx: usize| SortingColumn {
        column_idx: column_idx as i32,
        descending: false,
        nulls_first: false,
    };
    let mut b = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_write_batch_size(WRITE_BATCH_ROWS)
        .set_column_data_page_size_limit(ColumnPath::from("document"), DOCUMENT_PAGE_BYTES)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(vec![sort(col::USER_ID), sort(col::SEQ)]));
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1)?);
    for name in ZSTD_COLUMNS {
        b = b.set_column_compression(ColumnPath::from(name), zstd);
    }
    for name in PLAIN_COLUMNS {
        b = b.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    for name in NO_STATISTICS_COLUMNS {
        b = b.set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::None);
    }
    Ok(b)
}

/// Rows per data page of an object read mostly one user at a time (a checkpoint part, a
/// history object): a read of one user fetches, of every column, each page that may hold one
/// of its rows, whole.
const ONE_USER_PAGE_ROWS: usize = 256;
/// Bytes of such an object's data page of documents (before compression); rows are added
/// `ONE_USER_WRITE_BATCH_ROWS` at a time, so a page outgrows it by at most that many.
const ONE_USER_DOCUMENT_PAGE_BYTES: usize = 16 * 1024;
const ONE_USER_WRITE_BATCH_ROWS: usize = 16;
const _: () = assert!(
    ONE_USER_PAGE_ROWS % ONE_USER_WRITE_BATCH_ROWS == 0
        && ENCODE_CHUNK_ROWS % ONE_USER_PAGE_ROWS == 0
);

/// [`writer_properties_builder`] for an object read mostly one user at a time (checkpoint
/// parts, history objects), with `dense`: its columns of many values, each with the encoding
/// it takes instead of a dictionary.
///
/// A read of one user fetches every column's pages that may hold its rows and every column's
/// dictionary page, whole. With a segment's settings (pages of 2,048 rows, dictionaries) a
/// cold load of a user of 20 items of ~500 bytes from a part of 1,500 such users asked for
/// 135-171 KB for ~6 KB of its own rows, and a read of one user's events from a history object
/// of theirs ~1.6 MB (2.4 MB with the ranges up to 1 MiB apart that the reader then fetched
/// together); under `make sustained` stale patches' reads of their bases from ever larger
/// history objects reached ~0.9 GB a second by minute 9 (docs/BENCHMARKS.md, runs 62-66).
/// Pages of 256 rows, documents' of 16 KiB, `user_id` delta-encoded (sorted and repeated) and
/// no dictionary on the columns in `dense`: tens of KB, for parts ~1% larger (history
/// objects' size not measured) and longer page indexes (kept in the view's footers, counted
/// against its budget). Encodings are the writer's choice,
/// which Parquet records per column chunk: every reader reads them, the format is unchanged.
///
/// `planned_by`: the columns whose page-level min/max a one-user read plans by (`prune.rs`);
/// every other column keeps its row-group statistics and offset index, not a column index.
/// The view keeps each footer it reads with its page index, and the column indexes of the
/// other columns were ~35% of a part's (~89 bytes a user of 20 items, ~90 MB of a million
/// users' parts; docs/BENCHMARKS.md, "What the indexes are: the parts' footers").
pub(crate) fn one_user_read_properties_builder(
    dense: &[(&str, Encoding)],
    planned_by: &[&str],
) -> Result<parquet::file::properties::WriterPropertiesBuilder, SegmentError> {
    let mut b = writer_properties_builder()?
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_data_page_row_count_limit(ONE_USER_PAGE_ROWS)
        .set_write_batch_size(ONE_USER_WRITE_BATCH_ROWS)
        .set_column_data_page_size_limit(
            ColumnPath::from("document"),
            ONE_USER_DOCUMENT_PAGE_BYTES,
        );
    for (column, encoding) in [("user_id", Encoding::DELTA_BYTE_ARRAY)]
        .iter()
        .chain(dense)
    {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(*column), false)
            .set_column_encoding(ColumnPath::from(*column), *encoding);
    }
    for column in planned_by {
        b = b.set_column_statistics_enabled(ColumnPath::from(*column), EnabledStatistics::Page);
    }
    Ok(b)
}

fn uuid_column<'a>(n: usize, ids: impl Iterator<Item = Option<&'a [u8; 16]>>) -> ArrayRef {
    let mut b = FixedSizeBinaryBuilder::with_capacity(n, 16);
    for id in ids {
        match id {
            // The builder only refuses values of the wrong width; these are 16 bytes by type.
            Some(bytes) => {
                let _ = b.append_value(bytes);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

fn i64_of(v: u64, what: &str) -> Result<i64, SegmentError> {
    i64::try_from(v).map_err(|_| invalid(format!("{what} {v} does not fit the segment's int64")))
}

/// Encodes events as a segment. Rows are written sorted by `(user_id, seq)` whatever the input
/// order; `meta.event_count` must equal the number of events.
pub fn encode(events: &[Event], meta: &SegmentMeta) -> Result<Bytes, SegmentError> {
    if events.is_empty() {
        return Err(invalid("a segment holds at least one event"));
    }
    if meta.event_count != events.len() as u64 {
        return Err(invalid(format!(
            "metadata says {} events, {} given",
            meta.event_count,
            events.len()
        )));
    }
    check_version(meta.format_version, events)?;
    let mut order: Vec<&Event> = events.iter().collect();
    if !order.is_sorted_by_key(|e| (e.user_id, e.seq)) {
        order.sort_by_key(|e| (e.user_id, e.seq));
    }
    let schema = arrow_schema();
    let batch = RecordBatch::try_new(schema.clone(), event_columns(&order)?)?;
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(writer_properties()?))?;
    writer.write(&batch)?;
    for kv in meta.to_key_values() {
        writer.append_key_value_metadata(kv);
    }
    Ok(Bytes::from(writer.into_inner()?))
}

/// The segment schema's columns for `order` (already sorted): shared by segments and history.
pub(crate) fn event_columns(order: &[&Event]) -> Result<Vec<ArrayRef>, SegmentError> {
    let n = order.len();
    let mut documents = StringBuilder::with_capacity(
        n,
        order
            .iter()
            .map(|e| e.document.as_ref().map_or(0, Document::len))
            .sum(),
    );
    for e in order {
        documents.append_option(e.document.as_ref().map(Document::as_str));
    }
    let columns: Vec<ArrayRef> = vec![
        uuid_column(n, order.iter().map(|e| Some(e.user_id.as_bytes()))),
        Arc::new(Int64Array::from(
            order
                .iter()
                .map(|e| i64_of(e.seq, "seq"))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        uuid_column(n, order.iter().map(|e| Some(e.event_id.as_bytes()))),
        uuid_column(n, order.iter().map(|e| Some(e.change_id.as_bytes()))),
        uuid_column(
            n,
            order
                .iter()
                .map(|e| e.device_id.as_ref().map(DeviceId::as_bytes)),
        ),
        Arc::new(StringArray::from_iter_values(
            order.iter().map(|e| e.origin.as_str()),
        )),
        uuid_column(
            n,
            order
                .iter()
                .map(|e| e.request_id.as_ref().map(RequestId::as_bytes)),
        ),
        uuid_column(
            n,
            order
                .iter()
                .map(|e| e.restore_id.as_ref().map(RestoreId::as_bytes)),
        ),
        Arc::new(StringArray::from_iter_values(
            order.iter().map(|e| e.kind.as_str()),
        )),
        uuid_column(n, order.iter().map(|e| Some(e.item_id.as_bytes()))),
        Arc::new(StringArray::from_iter_values(
            order.iter().map(|e| e.op.as_str()),
        )),
        Arc::new(Int64Array::from(
            order
                .iter()
                .map(|e| i64_of(e.version, "version"))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                order
                    .iter()
                    .map(|e| e.recorded_at.timestamp_micros())
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(documents.finish()),
    ];
    Ok(columns)
}

/// Rows per decoded Arrow batch. Small enough that a batch's column buffers (about 4 MB of
/// documents) are reused by the allocator and stay in cache: with 64k-row batches every batch
/// took ~30 MB of fresh pages, and decode + apply of 100k events ran at 0.84M events/s instead
/// of 1.24M (`cargo bench -p keepsake-segment --bench codec`, same run).
pub const DECODE_BATCH_ROWS: usize = 8 * 1024;

/// Decodes a whole segment, checking its metadata against its rows.
pub fn decode(bytes: Bytes) -> Result<Segment, SegmentError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let meta =
        SegmentMeta::from_key_values(builder.metadata().file_metadata().key_value_metadata())?;
    let reader = builder.with_batch_size(DECODE_BATCH_ROWS).build()?;
    let mut events = Vec::with_capacity(usize::try_from(meta.event_count).unwrap_or(0));
    for batch in reader {
        events.extend(decode_batch(&batch?)?);
    }
    if events.len() as u64 != meta.event_count {
        return Err(invalid(format!(
            "metadata says {} events, the file holds {}",
            meta.event_count,
            events.len()
        )));
    }
    if !events.is_sorted_by_key(|e| (e.user_id, e.seq)) {
        return Err(invalid("rows are not sorted by (user_id, seq)"));
    }
    check_version(meta.format_version, &events)?;
    Ok(Segment { meta, events })
}

fn uuids(batch: &RecordBatch, idx: usize) -> Result<&FixedSizeBinaryArray, SegmentError> {
    let c = batch.column(idx);
    if c.data_type() != &UUID {
        return Err(invalid(format!(
            "column {idx} is not a 16-byte uuid column"
        )));
    }
    Ok(c.as_fixed_size_binary())
}

fn strings(batch: &RecordBatch, idx: usize) -> Result<&StringArray, SegmentError> {
    batch
        .column(idx)
        .as_string_opt::<i32>()
        .ok_or_else(|| invalid(format!("column {idx} is not utf8")))
}

fn uuid_at(a: &FixedSizeBinaryArray, i: usize) -> Option<[u8; 16]> {
    if a.is_null(i) {
        return None;
    }
    a.value(i).try_into().ok()
}

fn required<T>(v: Option<T>, what: &str, row: usize) -> Result<T, SegmentError> {
    v.ok_or_else(|| invalid(format!("row {row}: {what} is missing or malformed")))
}

/// The columns that say which of a user's events is an item's newest up to a moment: user, seq,
/// item and time, by position. A reader of items at a moment reads these for every row and the
/// rest (documents above all) only for the rows it keeps.
pub const KEY_COLUMNS: [usize; 4] = [col::USER_ID, col::SEQ, col::ITEM_ID, col::RECORDED_AT];

/// One row of a [`KEY_COLUMNS`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventKey {
    /// Whose event.
    pub user_id: UserId,
    /// Its seq.
    pub seq: u64,
    /// Its item.
    pub item_id: ItemId,
    /// Its commit time.
    pub recorded_at: DateTime<chrono::Utc>,
}

/// Decodes one record batch of a read projected to [`KEY_COLUMNS`].
pub fn decode_keys(batch: &RecordBatch) -> Result<Vec<EventKey>, SegmentError> {
    let schema = arrow_schema();
    let column = |idx: usize| {
        let name = schema.field(idx).name();
        batch
            .column_by_name(name)
            .ok_or_else(|| invalid(format!("the read has no column {name}")))
    };
    let user = column(col::USER_ID)?;
    let item = column(col::ITEM_ID)?;
    if user.data_type() != &UUID || item.data_type() != &UUID {
        return Err(invalid("user_id and item_id are not 16-byte uuid columns"));
    }
    let (user, item) = (user.as_fixed_size_binary(), item.as_fixed_size_binary());
    let seq = column(col::SEQ)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| invalid("seq is not int64"))?;
    let recorded_at = column(col::RECORDED_AT)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| invalid("recorded_at is not a microsecond timestamp"))?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(EventKey {
                user_id: UserId::from_bytes(required(uuid_at(user, i), "user_id", i)?),
                seq: required(
                    u64::try_from(seq.value(i)).ok().filter(|v| *v > 0),
                    "seq",
                    i,
                )?,
                item_id: ItemId::from_bytes(required(uuid_at(item, i), "item_id", i)?),
                recorded_at: required(
                    DateTime::from_timestamp_micros(recorded_at.value(i)),
                    "recorded_at",
                    i,
                )?,
            })
        })
        .collect()
}

/// Decodes one record batch of a segment or a history object (or of a projection-free read of
/// one); a history object's extra `segment` column is read by [`crate::decode_segment_numbers`].
pub fn decode_batch(batch: &RecordBatch) -> Result<Vec<Event>, SegmentError> {
    decode_rows(batch, 0..batch.num_rows())
}

/// The rows of `user` in a batch (by position): what a reader of one user's events keeps of a
/// page it shares with other users, found before any of those rows is decoded.
pub fn rows_of_user(batch: &RecordBatch, user: &UserId) -> Result<Vec<usize>, SegmentError> {
    let users = uuids(batch, col::USER_ID)?;
    Ok((0..batch.num_rows())
        .filter(|i| uuid_at(users, *i).is_some_and(|u| u == *user.as_bytes()))
        .collect())
}

/// [`decode_batch`] of only the rows at `rows` (positions in the batch, ascending): a reader of
/// one user's events builds events (and copies documents) for that user's rows only.
pub fn decode_rows(
    batch: &RecordBatch,
    rows: impl IntoIterator<Item = usize>,
) -> Result<Vec<Event>, SegmentError> {
    let fields = batch.schema().fields().clone();
    if fields != *arrow_schema().fields() && fields != *crate::schema::history_schema().fields() {
        return Err(invalid("the file's columns are not the segment schema"));
    }
    let user = uuids(batch, col::USER_ID)?;
    let seq = batch
        .column(col::SEQ)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| invalid("seq is not int64"))?;
    let event_id = uuids(batch, col::EVENT_ID)?;
    let change_id = uuids(batch, col::CHANGE_ID)?;
    let device_id = uuids(batch, col::DEVICE_ID)?;
    let origin = strings(batch, col::ORIGIN)?;
    let request_id = uuids(batch, col::REQUEST_ID)?;
    let restore_id = uuids(batch, col::RESTORE_ID)?;
    let kind = strings(batch, col::KIND)?;
    let item_id = uuids(batch, col::ITEM_ID)?;
    let op = strings(batch, col::OP)?;
    let version = batch
        .column(col::VERSION)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| invalid("version is not int64"))?;
    let recorded_at = batch
        .column(col::RECORDED_AT)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| invalid("recorded_at is not a microsecond timestamp"))?;
    let document = strings(batch, col::DOCUMENT)?;

    let rows = rows.into_iter();
    let mut out = Vec::with_capacity(rows.size_hint().0);
    for i in rows {
        if i >= batch.num_rows() {
            return Err(invalid(format!("row {i} is beyond the batch")));
        }
        let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
        out.push(Event {
            user_id: UserId::from_bytes(required(uuid_at(user, i), "user_id", i)?),
            seq: required(positive(seq.value(i)), "seq", i)?,
            event_id: EventId::from_bytes(required(uuid_at(event_id, i), "event_id", i)?),
            change_id: ChangeId::from_bytes(required(uuid_at(change_id, i), "change_id", i)?),
            device_id: uuid_at(device_id, i).map(DeviceId::from_bytes),
            origin: required(Origin::parse(origin.value(i)), "origin", i)?,
            request_id: uuid_at(request_id, i).map(RequestId::from_bytes),
            restore_id: uuid_at(restore_id, i).map(RestoreId::from_bytes),
            kind: required(Kind::parse(kind.value(i)), "kind", i)?,
            item_id: ItemId::from_bytes(required(uuid_at(item_id, i), "item_id", i)?),
            op: required(Op::parse(op.value(i)), "op", i)?,
            version: required(positive(version.value(i)), "version", i)?,
            recorded_at: required(
                DateTime::from_timestamp_micros(recorded_at.value(i)),
                "recorded_at",
                i,
            )?,
            document: (!document.is_null(i)).then(|| Document::from_stored(document.value(i))),
        });
    }
    Ok(out)
}
