#![allow(clippy::expect_used, clippy::unwrap_used)] // tests panic with a message
//! Segment codec tests: round trip, refusals, the schema file, the golden file, pruning.

use std::path::PathBuf;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use keepsake_model::{
    BatchId, ChangeId, DeviceId, Document, Event, EventId, ItemId, Kind, Op, Origin, RequestId,
    RestoreId, UserId, fixtures,
};
use keepsake_segment::{
    FORMAT_VERSION, KNOWN_VERSIONS, SegmentError, SegmentMeta, decode, decode_batch, encode,
    plan_user_read, schema_description, segment_version,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use uuid::Uuid;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000 + s, 0)
        .single()
        .unwrap_or_default()
}

fn meta_for(events: &[Event], segment: u64) -> SegmentMeta {
    let first = events
        .iter()
        .map(|e| e.recorded_at)
        .min()
        .unwrap_or_default();
    let last = events
        .iter()
        .map(|e| e.recorded_at)
        .max()
        .unwrap_or_default();
    SegmentMeta {
        format_version: segment_version(events),
        shard: 3,
        segment,
        writer_epoch: 1,
        batch_id: BatchId(Uuid::from_u128(0xBA7C4)),
        event_count: events.len() as u64,
        first_recorded_at: first,
        last_recorded_at: last,
    }
}

#[test]
fn round_trip_sorts_by_user_then_seq() {
    let mut events = fixtures::history(1, 5, 40, t(0));
    events.reverse();
    let meta = meta_for(&events, 7);
    let bytes = encode(&events, &meta).expect("encode");
    let seg = decode(bytes).expect("decode");
    assert_eq!(seg.meta, meta);
    let mut expected = events.clone();
    expected.sort_by_key(|e| (e.user_id, e.seq));
    assert_eq!(seg.events, expected);
}

/// A read of one user decompresses every page holding its documents, whole: pages of documents
/// stay near `DOCUMENT_PAGE_BYTES`, however many rows a file holds (at parquet's default of
/// 1 MiB one user's cold load decompressed ~20 users' documents).
#[test]
fn pages_of_documents_stay_small_in_large_files() {
    let mut rng = fixtures::Rng::new(11);
    // Hex of random numbers: zstd halves it, no more, so the compressed sizes tell the pages'.
    let mut events = fixtures::history(4, 20, 200, t(0));
    for e in &mut events {
        if e.document.is_some() {
            let text: String = (0..30)
                .map(|_| format!("{:016x}", rng.next_u64()))
                .collect();
            e.document = Some(Document::from_stored(format!("{{\"r\":\"{text}\"}}")));
        }
    }
    let doc_bytes: usize = events
        .iter()
        .filter_map(|e| e.document.as_ref().map(Document::len))
        .sum();
    let bytes = encode(&events, &meta_for(&events, 1)).expect("encode");
    let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options).expect("open");
    let meta = builder.metadata();
    let column = meta
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "document")
        .expect("a document column");
    let pages: Vec<i32> = (0..meta.num_row_groups())
        .flat_map(|rg| {
            let index = meta.page_index_for_row_group(rg);
            let locations = index.offset_index(column).expect("an offset index");
            locations
                .page_locations()
                .iter()
                .map(|p| p.compressed_page_size)
                .collect::<Vec<_>>()
        })
        .collect();
    let bound = keepsake_segment::DOCUMENT_PAGE_BYTES + 32 * 600;
    assert!(
        pages.iter().all(|size| *size as usize <= bound),
        "a page of documents of {} bytes (bound {bound}): {pages:?}",
        pages.iter().max().copied().unwrap_or(0)
    );
    assert!(
        pages.len() >= doc_bytes / (2 * bound),
        "{} pages for {doc_bytes} bytes of documents",
        pages.len()
    );
}

#[test]
fn encode_refuses_empty_and_miscounted_batches() {
    let events = fixtures::history(2, 1, 3, t(0));
    let mut meta = meta_for(&events, 1);
    assert!(matches!(encode(&[], &meta), Err(SegmentError::Invalid(_))));
    meta.event_count = 4;
    assert!(matches!(
        encode(&events, &meta),
        Err(SegmentError::Invalid(_))
    ));
}

#[test]
fn decode_refuses_truncated_foreign_and_future_files() {
    let events = fixtures::history(3, 2, 10, t(0));
    let bytes = encode(&events, &meta_for(&events, 1)).expect("encode");
    let truncated = bytes.slice(..bytes.len() / 2);
    assert!(matches!(decode(truncated), Err(SegmentError::Parquet(_))));
    assert!(decode(Bytes::from_static(b"{\"not\": \"parquet\"}")).is_err());

    let mut future = meta_for(&events, 1);
    future.format_version = 99;
    let bytes = encode(&events, &future).expect("encode");
    match decode(bytes) {
        Err(SegmentError::UnknownVersion { found: 99, .. }) => {}
        other => panic!("expected UnknownVersion, got {other:?}"),
    }
}

/// Reads a checked-in file under `schemas/`. Tests never write them: `make bless` writes the
/// files of a new version once (`bless_missing_schema_files`), and never rewrites one.
fn checked_in(name: &str) -> Vec<u8> {
    std::fs::read(schemas_dir().join(name)).unwrap_or_else(|e| panic!("schemas/{name}: {e}"))
}

fn json_file(name: &str) -> serde_json::Value {
    serde_json::from_slice(&checked_in(name)).unwrap_or_else(|e| panic!("schemas/{name}: {e}"))
}

#[test]
fn schema_files_match_the_code() {
    for &v in KNOWN_VERSIONS {
        let name = format!("segment-v{v}.json");
        assert_eq!(
            Some(json_file(&name)),
            schema_description(v),
            "schemas/{name} and the code disagree; a change to the segment format needs a new \
             format version, a new schema file and a new golden file"
        );
    }
    assert_eq!(schema_description(KNOWN_VERSIONS.len() as u32 + 1), None);
}

#[test]
fn make_test_refuses_to_run_with_keepsake_bless_set() {
    // Goldens are written by `make bless` alone; a test run that could rewrite them would pass
    // whatever the code does.
    assert!(
        std::env::var_os("KEEPSAKE_BLESS").is_none(),
        "KEEPSAKE_BLESS is set: unset it (goldens are written by `make bless`, never by tests)"
    );
}

/// Writes the schema and golden files of the current versions that do not exist yet. Run by
/// `make bless` when a format version is added; a file that exists is never rewritten, so an old
/// version's golden stays what that version wrote.
#[test]
#[ignore = "writes files: run by `make bless`"]
fn bless_missing_schema_files() {
    use keepsake_segment::{
        HISTORY_VERSIONS, checkpoint_description, encode_checkpoint, encode_history,
        history_description,
    };
    let write_new = |name: &str, bytes: &[u8]| {
        let path = schemas_dir().join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                std::io::Write::write_all(&mut f, bytes).expect("write");
                eprintln!("wrote schemas/{name}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("schemas/{name}: {e}"),
        }
    };
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).expect("json") + "\n";
    for &v in KNOWN_VERSIONS {
        write_new(
            &format!("segment-v{v}.json"),
            pretty(schema_description(v).expect("known")).as_bytes(),
        );
    }
    // Checkpoints have versions of their own (segment version 3 added an origin, and a
    // checkpoint holds no origin: it did not change). A history object is stamped with its
    // newest source's version, so it has one version per segment version.
    for v in [1, 2, 3, 4, 5, 6] {
        write_new(
            &format!("checkpoint-v{v}.json"),
            pretty(checkpoint_description(v).expect("known")).as_bytes(),
        );
    }
    write_new(
        "golden/checkpoint-v4.json",
        &keepsake_segment::encode_manifest(&checkpoints::golden_manifest()).expect("encode"),
    );
    write_new(
        "golden/checkpoint-v6.json",
        &keepsake_segment::encode_manifest(&checkpoints::golden_manifest_v6()).expect("encode"),
    );
    write_new(
        "golden/checkpoint-v6.parquet",
        &encode_checkpoint(
            checkpoints::golden_v6_users().iter(),
            &checkpoints::meta(6, checkpoints::golden_v6_users().len()),
        )
        .expect("encode"),
    );
    write_new(
        "filter-run-v1.json",
        pretty(keepsake_segment::filter_run_description(1).expect("known")).as_bytes(),
    );
    write_new(
        "golden/filter-run-v1.parquet",
        &keepsake_segment::encode_filter_run(&checkpoints::golden_run_rows(), 2, 9)
            .expect("encode"),
    );
    for &v in HISTORY_VERSIONS {
        write_new(
            &format!("history-v{v}.json"),
            pretty(history_description(v).expect("known")).as_bytes(),
        );
    }
    for (v, events) in golden_segments() {
        let meta = meta_for(&events, 1);
        assert_eq!(meta.format_version, v);
        write_new(
            &format!("golden/segment-v{v}.parquet"),
            &encode(&events, &meta).expect("encode"),
        );
    }
    for (v, events) in golden_checkpoints() {
        let users = checkpoints::fold(&events);
        write_new(
            &format!("golden/checkpoint-v{v}.parquet"),
            &encode_checkpoint(users.iter(), &checkpoints::meta(v, users.len())).expect("encode"),
        );
    }
    for (v, events) in golden_segments() {
        let seg = keepsake_segment::Segment {
            meta: meta_for(&events, 1),
            events,
        };
        write_new(
            &format!("golden/history-v{v}.parquet"),
            &encode_history(3, std::slice::from_ref(&seg)).expect("encode"),
        );
    }
}

/// Every column chunk of a new segment is written the way the schema file says: compressed only
/// where it names zstd, without a dictionary where it says plain, without statistics where it
/// says so.
#[test]
fn segments_are_written_as_the_schema_file_says() {
    let events = fixtures::history(3, 5, 400, t(0));
    let bytes = encode(&events, &meta_for(&events, 1)).expect("encode");
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
    let description = schema_description(keepsake_segment::FORMAT_VERSION).expect("known");
    let enc = &description["encoding"];
    let named = |key: &str| -> Vec<String> {
        enc[key]
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a name").to_string())
            .collect()
    };
    let (zstd, plain, no_stats) = (
        named("zstd(1)_columns"),
        named("plain_columns"),
        named("no_statistics"),
    );
    assert_eq!(enc["compression"], "none");
    for rg in builder.metadata().row_groups() {
        for c in rg.columns() {
            let name = c.column_path().string();
            let compression = c.compression();
            if zstd.contains(&name) {
                assert!(
                    matches!(compression, parquet::basic::Compression::ZSTD(_)),
                    "{name}: {compression:?}"
                );
            } else {
                assert_eq!(
                    compression,
                    parquet::basic::Compression::UNCOMPRESSED,
                    "{name}"
                );
            }
            if plain.contains(&name) {
                assert!(
                    c.dictionary_page_offset().is_none(),
                    "{name} has a dictionary"
                );
            }
            assert_eq!(
                c.statistics().is_none(),
                no_stats.contains(&name),
                "{name}: statistics"
            );
        }
    }
}

/// The events of the checked-in golden segment, spelled out by hand.
fn golden_events() -> Vec<Event> {
    let user = |n: u128| UserId(Uuid::from_u128(n));
    let id = |n: u128| Uuid::from_u128(0x1000 + n);
    let doc = |s: &str| Some(Document::from_stored(s));
    let device = Some(DeviceId(id(99)));
    let base = Event {
        user_id: user(1),
        seq: 1,
        event_id: EventId(id(1)),
        change_id: ChangeId(id(11)),
        device_id: device,
        origin: Origin::Device,
        request_id: Some(RequestId(id(21))),
        restore_id: None,
        kind: Kind::Contact,
        item_id: ItemId(id(31)),
        op: Op::Put,
        version: 1,
        recorded_at: t(0),
        document: doc(r#"{"@type":"Card","name":{"full":"Ada Lovelace"}}"#),
    };
    vec![
        base.clone(),
        Event {
            seq: 2,
            event_id: EventId(id(2)),
            change_id: ChangeId(id(12)),
            op: Op::Patch,
            version: 2,
            recorded_at: t(1),
            document: doc(r#"{"@type":"Card","name":{"full":"Ada Lovelace"},"nickName":"Ada"}"#),
            ..base.clone()
        },
        Event {
            seq: 3,
            event_id: EventId(id(3)),
            change_id: ChangeId(id(13)),
            op: Op::Delete,
            version: 3,
            recorded_at: t(2),
            document: None,
            ..base.clone()
        },
        Event {
            seq: 4,
            event_id: EventId(id(4)),
            change_id: ChangeId(id(14)),
            device_id: None,
            origin: Origin::Restore,
            request_id: None,
            restore_id: Some(RestoreId(id(41))),
            op: Op::Put,
            version: 4,
            recorded_at: t(3),
            ..base.clone()
        },
        Event {
            user_id: user(2),
            seq: 1,
            event_id: EventId(id(5)),
            change_id: ChangeId(id(15)),
            kind: Kind::Note,
            item_id: ItemId(id(32)),
            recorded_at: t(3),
            document: doc(r#"{"@type":"Note","title":"milk, eggs"}"#),
            ..base
        },
    ]
}

/// The golden events of format 2: those of format 1, and user 1's device registered by the
/// operator and later revoked.
fn golden_events_v2() -> Vec<Event> {
    let mut events = golden_events();
    let id = |n: u128| Uuid::from_u128(0x1000 + n);
    let registered = Event {
        user_id: UserId(Uuid::from_u128(1)),
        seq: 5,
        event_id: EventId(id(6)),
        change_id: ChangeId(id(16)),
        device_id: None,
        origin: Origin::Operator,
        request_id: Some(RequestId(id(22))),
        restore_id: None,
        kind: Kind::Device,
        item_id: ItemId(id(99)),
        op: Op::Put,
        version: 1,
        recorded_at: t(4),
        document: Some(Document::from_stored(
            r#"{"@type":"Device","name":"Ada's phone"}"#,
        )),
    };
    let revoked = Event {
        seq: 6,
        event_id: EventId(id(7)),
        change_id: ChangeId(id(17)),
        request_id: Some(RequestId(id(23))),
        op: Op::Delete,
        version: 2,
        recorded_at: t(5),
        document: None,
        ..registered.clone()
    };
    events.splice(4..4, [registered, revoked]);
    events
}

/// The golden events of format 3: those of format 2, and a contact user 2 had imported by
/// the operator (origin `import`: no device).
fn golden_events_v3() -> Vec<Event> {
    let mut events = golden_events_v2();
    let id = |n: u128| Uuid::from_u128(0x3000 + n);
    let user = UserId(Uuid::from_u128(2));
    let seq = events
        .iter()
        .filter(|e| e.user_id == user)
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
        + 1;
    let last = events.iter().map(|e| e.recorded_at).max().unwrap_or(t(0));
    events.push(Event {
        user_id: user,
        seq,
        event_id: EventId(id(1)),
        change_id: ChangeId(id(2)),
        device_id: None,
        origin: Origin::Import,
        request_id: Some(RequestId(id(3))),
        restore_id: None,
        kind: Kind::Contact,
        item_id: ItemId(id(4)),
        op: Op::Put,
        version: 1,
        recorded_at: last,
        document: Some(Document::from_stored(
            r#"{"@type":"Card","name":{"full":"Grace Hopper"}}"#,
        )),
    });
    events.sort_by_key(|e| (e.user_id, e.seq));
    events
}

/// The golden events of format 4: those of format 3, and user 2's calendar "Work" (kind
/// `collection`) with an event kept in it.
fn golden_events_v4() -> Vec<Event> {
    let mut events = golden_events_v3();
    let id = |n: u128| Uuid::from_u128(0x4000 + n);
    let user = UserId(Uuid::from_u128(2));
    let seq = events
        .iter()
        .filter(|e| e.user_id == user)
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    let last = events.iter().map(|e| e.recorded_at).max().unwrap_or(t(0));
    let event = |n: u128, seq: u64, kind: Kind, item: ItemId, document: &str| Event {
        user_id: user,
        seq,
        event_id: EventId(id(n)),
        change_id: ChangeId(id(n + 1)),
        device_id: Some(DeviceId(id(9))),
        origin: Origin::Device,
        request_id: Some(RequestId(id(n + 2))),
        restore_id: None,
        kind,
        item_id: item,
        op: Op::Put,
        version: 1,
        recorded_at: last,
        document: Some(Document::from_stored(document)),
    };
    let work = ItemId(id(100));
    events.push(event(
        1,
        seq + 1,
        Kind::Collection,
        work,
        r##"{"@type":"Collection","holds":"calendar","name":"Work","color":"#3366FF"}"##,
    ));
    events.push(event(
        4,
        seq + 2,
        Kind::Event,
        ItemId(id(101)),
        &format!(
            r#"{{"@type":"Event","title":"Standup","start":"2026-12-01T09:00:00","keepsake.app:collection":"{work}"}}"#
        ),
    ));
    events.sort_by_key(|e| (e.user_id, e.seq));
    events
}

/// Every segment format version with its golden events.
fn golden_segments() -> [(u32, Vec<Event>); 4] {
    [
        (1, golden_events()),
        (2, golden_events_v2()),
        (3, golden_events_v3()),
        (4, golden_events_v4()),
    ]
}

/// Every checkpoint format version with the golden events it is the fold of.
fn golden_checkpoints() -> [(u32, Vec<Event>); 4] {
    [
        (1, golden_events()),
        (2, golden_events_v2()),
        (3, golden_events_v4()),
        // Change ids as a filter (version 4 is the manifest, a JSON file).
        (5, golden_events_v4()),
    ]
}

#[test]
fn golden_segments_of_every_version_still_decode() {
    for (v, events) in golden_segments() {
        let name = format!("golden/segment-v{v}.parquet");
        let seg = decode(Bytes::from(checked_in(&name)))
            .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
        assert_eq!(seg.meta.format_version, v, "{name}");
        assert_eq!(seg.meta, meta_for(&events, 1), "{name}");
        assert_eq!(seg.events, events, "{name}");
    }
    assert_eq!(
        KNOWN_VERSIONS,
        &[1, 2, 3, 4],
        "a new version needs its golden file here"
    );
    // The newest version names every origin this build writes.
    let newest = schema_description(FORMAT_VERSION).expect("newest");
    let origins: Vec<&str> = keepsake_model::Origin::ALL
        .iter()
        .map(|o| o.as_str())
        .collect();
    assert_eq!(newest["values"]["origin"], serde_json::json!(origins));
    // ...and every kind.
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(newest["values"]["kind"], serde_json::json!(kinds));
}

#[test]
fn a_segment_is_stamped_with_the_lowest_version_that_holds_it() {
    assert_eq!(segment_version(&golden_events()), 1);
    assert_eq!(segment_version(&golden_events_v2()), 2);
    // A device row in a segment stamped 1 would be refused by a build that reads only 1 by
    // a value it does not know: encode refuses to write it.
    let events = golden_events_v2();
    let mut meta = meta_for(&events, 1);
    meta.format_version = 1;
    match encode(&events, &meta) {
        Err(SegmentError::Invalid(m)) => assert!(m.contains("version 2"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    meta.format_version = 2;
    assert!(encode(&events, &meta).is_ok());
    // An imported row needs version 3; stamped 2 it is refused the same way.
    let events = golden_events_v3();
    assert_eq!(segment_version(&events), 3);
    let mut meta = meta_for(&events, 1);
    meta.format_version = 2;
    match encode(&events, &meta) {
        Err(SegmentError::Invalid(m)) => assert!(m.contains("version 3"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A collection needs version 4; stamped 3 it is refused the same way.
    let events = golden_events_v4();
    assert_eq!(segment_version(&events), 4);
    let mut meta = meta_for(&events, 1);
    meta.format_version = 3;
    match encode(&events, &meta) {
        Err(SegmentError::Invalid(m)) => assert!(m.contains("version 4"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn pruning_reads_only_pages_that_may_hold_the_user() {
    // 300 users x 40 events: 12,000 rows over several 2,048-row pages.
    let events = fixtures::history(4, 300, 40, t(0));
    let bytes = encode(&events, &meta_for(&events, 1)).expect("encode");
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
        bytes.clone(),
        parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
    )
    .expect("open");
    let meta = builder.metadata().clone();
    for user in [
        events[0].user_id,
        events[6000].user_id,
        events[11_999].user_id,
    ] {
        let plan = plan_user_read(&meta, &user).expect("the user has rows");
        assert!(
            plan.rows_selected < events.len() / 2,
            "selected {} rows",
            plan.rows_selected
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(
            bytes.clone(),
            parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
        )
        .expect("open")
        .with_row_groups(plan.row_groups.clone())
        .with_row_selection(plan.selection.clone())
        .build()
        .expect("reader");
        let mut got = Vec::new();
        for batch in reader {
            got.extend(decode_batch(&batch.expect("batch")).expect("decode"));
        }
        got.retain(|e| e.user_id == user);
        let mut want: Vec<Event> = events
            .iter()
            .filter(|e| e.user_id == user)
            .cloned()
            .collect();
        want.sort_by_key(|e| e.seq);
        assert_eq!(got, want);
    }
    let absent = UserId(Uuid::from_u128(u128::MAX));
    assert!(plan_user_read(&meta, &absent).is_none());
}

mod checkpoints {
    use std::collections::HashMap;

    use bytes::Bytes;
    use keepsake_model::{StateRead, UserId, UserState, fixtures};
    use keepsake_segment::{
        CheckpointEncoder, CheckpointMeta, SegmentError, checkpoint_description, decode_checkpoint,
        encode_checkpoint,
    };

    use super::{checked_in, golden_events, golden_events_v2, json_file, t};

    pub(super) fn fold(events: &[keepsake_model::Event]) -> HashMap<UserId, UserState> {
        let mut users: HashMap<UserId, UserState> = HashMap::new();
        for e in events {
            keepsake_model::apply(users.entry(e.user_id).or_default(), e).expect("valid history");
        }
        users
    }

    pub(super) fn meta(version: u32, users: usize) -> CheckpointMeta {
        CheckpointMeta {
            format_version: version,
            shard: 2,
            segment: 9,
            user_count: users as u64,
        }
    }

    #[test]
    fn a_checkpoint_round_trips_the_fold_of_the_log() {
        let users = fold(&fixtures::history(11, 30, 60, t(0)));
        let bytes = encode_checkpoint(users.iter(), &meta(1, users.len())).expect("encode");
        let (m, decoded) = decode_checkpoint(bytes).expect("decode");
        assert_eq!(m, meta(1, users.len()));
        assert_eq!(decoded, users);
        // an empty shard has an empty checkpoint
        let empty = encode_checkpoint(std::iter::empty(), &meta(1, 0)).expect("encode");
        assert!(decode_checkpoint(empty).expect("decode").1.is_empty());
        let truncated = encode_checkpoint(users.iter(), &meta(1, users.len())).expect("encode");
        assert!(matches!(
            decode_checkpoint(truncated.slice(..truncated.len() - 8)),
            Err(SegmentError::Parquet(_))
        ));
    }

    /// A part is handed to the Parquet writer a chunk of rows at a time (8,192: the Arrow copy
    /// of its documents is a chunk's, not the part's); a part over several chunks decodes to
    /// the same states and is still one row group of sorted rows.
    #[test]
    fn a_part_over_several_encoding_chunks_round_trips_in_one_row_group() {
        let users = fold(&fixtures::history(13, 1200, 60, t(0)));
        let bytes = encode_checkpoint(users.iter(), &meta(6, users.len())).expect("encode");
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes.clone())
            .expect("parquet");
        let md = parquet::file::reader::FileReader::metadata(&reader);
        let rows = md.file_metadata().num_rows();
        assert!(rows > 2 * 8192, "{rows} rows: not over several chunks");
        assert_eq!(md.num_row_groups(), 1);
        let (m, decoded) = decode_checkpoint(bytes).expect("decode");
        assert_eq!(m, meta(6, users.len()));
        assert_eq!(decoded, users);
    }

    /// A part pushed to the encoder a range of users at a time holds what the part encoded at
    /// once holds (its pages may break elsewhere); a user pushed out of order is refused.
    #[test]
    fn a_part_pushed_in_ranges_is_the_part_encoded_at_once() {
        let users = fold(&fixtures::history(17, 900, 60, t(0)));
        let whole = encode_checkpoint(users.iter(), &meta(6, users.len())).expect("encode");
        let mut sorted: Vec<_> = users.iter().collect();
        sorted.sort_by_key(|(u, _)| **u);
        let mut e = CheckpointEncoder::new(&meta(6, 0)).expect("encoder");
        for range in sorted.chunks(250) {
            e.push(range.iter().copied()).expect("push");
        }
        assert_eq!(e.users(), users.len() as u64);
        let pushed = e.finish().expect("finish");
        let (m, decoded) = decode_checkpoint(pushed).expect("decode");
        assert_eq!(m, meta(6, users.len()));
        assert!(decoded == users, "the states pushed in ranges differ");
        assert!(decode_checkpoint(whole).expect("decode").1 == users);
        let mut e = CheckpointEncoder::new(&meta(6, 0)).expect("encoder");
        e.push(sorted[10..20].iter().copied()).expect("push");
        assert!(e.push(sorted[5..6].iter().copied()).is_err());
    }

    /// The `key` column (an item's id on its row: random, one distinct value a row) has no
    /// dictionary: a one-user read of a part fetches a column's dictionary page whole, and with
    /// one it fetched ~1 MB (the dictionary's size limit) for every cold load of a user from a
    /// part of 4,096 users of 20 items, for ~10 KB of the user's own rows (a scratch run through
    /// `Log::user` over a counting store: 1.08 MB, 106-153 KB without); that was the ~1.4 MB a
    /// cold load read in `make sustained` runs 10-11.
    #[test]
    fn a_checkpoints_key_column_has_no_dictionary() {
        let users = fold(&fixtures::history(5, 512, 80, t(0)));
        let bytes = encode_checkpoint(users.iter(), &meta(5, users.len())).expect("encode");
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(bytes).expect("parquet");
        let md = parquet::file::reader::FileReader::metadata(&reader);
        let mut seen = 0;
        for rg in md.row_groups() {
            for c in rg.columns() {
                if c.column_path().string() == "key" {
                    seen += 1;
                    assert_eq!(
                        c.dictionary_page_offset(),
                        None,
                        "a dictionary page for key"
                    );
                }
            }
        }
        assert!(seen > 0, "no key column");
    }

    #[test]
    fn checkpoint_schema_files_match_the_code() {
        for &v in &[1, 2, 3, 4, 5, 6] {
            let name = format!("checkpoint-v{v}.json");
            assert_eq!(Some(json_file(&name)), checkpoint_description(v), "{name}");
        }
        assert_eq!(checkpoint_description(7), None);
        assert_eq!(
            Some(json_file("filter-run-v1.json")),
            keepsake_segment::filter_run_description(1)
        );
        assert_eq!(keepsake_segment::filter_run_description(2), None);
    }

    /// The users of `golden/checkpoint-v6.parquet`: two of 70 events, their sealed filter
    /// blocks (0..2) split off for a run, so their filter rows hold blocks 2.. (`filter_from`).
    pub(super) fn golden_v6_users() -> HashMap<UserId, UserState> {
        let mut users = fold(&fixtures::history(66, 2, 70, t(0)));
        for s in users.values_mut() {
            assert!(s.split_sealed(1).is_some());
        }
        users
    }

    /// The rows of `golden/filter-run-v1.parquet`: those sealed blocks.
    pub(super) fn golden_run_rows() -> Vec<(UserId, keepsake_model::ChangeFilter)> {
        let users = fold(&fixtures::history(66, 2, 70, t(0)));
        let mut rows: Vec<_> = users
            .into_iter()
            .map(|(u, mut s)| (u, s.split_sealed(1).expect("sealed blocks")))
            .collect();
        rows.sort_by_key(|(u, _)| *u);
        rows
    }

    /// The golden files of version 6 decode to what wrote them: a part whose filter rows hold
    /// blocks from 2 on, a run holding blocks 0..2, and the two join into each user's whole
    /// filter; the manifest naming a run is stamped 6.
    #[test]
    fn the_golden_files_of_version_6_still_decode() {
        let (m, decoded) =
            decode_checkpoint(Bytes::from(checked_in("golden/checkpoint-v6.parquet")))
                .expect("decodes");
        let want = golden_v6_users();
        assert_eq!(m, meta(6, want.len()));
        assert_eq!(decoded, want);
        assert!(decoded.values().all(|s| s.sealed_missing() == 2));
        let (rm, rows) = keepsake_segment::decode_filter_run(Bytes::from(checked_in(
            "golden/filter-run-v1.parquet",
        )))
        .expect("decodes");
        assert_eq!((rm.shard, rm.segment, rm.rows), (2, 9, 2));
        assert_eq!(rows, golden_run_rows());
        // Its footer's filter of its users holds both.
        let run = Bytes::from(checked_in("golden/filter-run-v1.parquet"));
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(run)
            .expect("parquet");
        let users = keepsake_segment::filter_run_users(
            builder.metadata().file_metadata().key_value_metadata(),
        )
        .expect("well formed")
        .expect("there");
        assert!(rows.iter().all(|(u, _)| users.may_hold(u)));
        let whole = fold(&fixtures::history(66, 2, 70, t(0)));
        for (u, sealed) in rows {
            let mut s = decoded[&u].clone();
            assert!(s.attach_sealed(sealed));
            assert_eq!(s, whole[&u]);
        }
        let bytes = checked_in("golden/checkpoint-v6.json");
        assert_eq!(
            keepsake_segment::decode_manifest(&bytes).expect("decodes"),
            golden_manifest_v6()
        );
        assert!(String::from_utf8_lossy(&bytes).contains("\"format_version\":6"));
    }

    /// A part row whose filter starts past its sealed blocks is refused: the open block's
    /// later ids would have nowhere to go.
    #[test]
    fn a_filter_row_starting_past_its_sealed_blocks_is_refused() {
        let users = fold(&fixtures::history(66, 1, 40, t(0)));
        let mut state = users.values().next().expect("one user").clone();
        let mut f = state.change_filter();
        let _sealed = f.split_before(2).expect("blocks 0..2");
        state = UserState::from_parts(state.last_seq(), state.items().cloned(), [])
            .with_change_filter(f);
        let u = *users.keys().next().expect("one user");
        let bytes = encode_checkpoint([(&u, &state)], &meta(6, 1)).expect("encode");
        let err = decode_checkpoint(bytes).expect_err("refused");
        assert!(err.to_string().contains("past"), "{err}");
        // And version 5 cannot hold a filter lacking its sealed blocks at all.
        assert!(encode_checkpoint([(&u, &state)], &meta(5, 1)).is_err());
    }

    /// A manifest naming filter runs is version 6; one of version 4 naming runs is refused.
    pub(super) fn golden_manifest_v6() -> keepsake_segment::Manifest {
        let mut m = golden_manifest();
        m.filter_runs = vec![
            keepsake_segment::PartRef {
                written_by: 9,
                digest: 0x55,
                users: 1,
                bytes: 700,
            },
            keepsake_segment::PartRef {
                written_by: 3,
                digest: 0x66,
                users: 3,
                bytes: 900,
            },
        ];
        m
    }

    #[test]
    fn a_manifest_of_version_4_naming_runs_is_refused() {
        let bytes = keepsake_segment::encode_manifest(&golden_manifest_v6()).expect("encode");
        let v4 = String::from_utf8(bytes)
            .expect("json")
            .replace("\"format_version\":6", "\"format_version\":4");
        assert!(keepsake_segment::decode_manifest(v4.as_bytes()).is_err());
    }

    /// The manifest of `golden/checkpoint-v4.json`: two base parts and two deltas, one user in
    /// both deltas.
    pub(super) fn golden_manifest() -> keepsake_segment::Manifest {
        use keepsake_segment::{BasePart, DeltaPart, Manifest, NIL_USER, PartRef};
        let user = |n: u128| UserId(uuid::Uuid::from_u128(n));
        let part = |written_by: u64, digest: u128, users: u64| PartRef {
            written_by,
            digest,
            users,
            bytes: 1000 + users,
        };
        Manifest {
            shard: 2,
            segment: 9,
            users: 5,
            base: vec![
                BasePart {
                    from: NIL_USER,
                    part: part(3, 0x11, 2),
                },
                BasePart {
                    from: user(0x8000),
                    part: part(3, 0x22, 2),
                },
            ],
            deltas: vec![
                DeltaPart {
                    part: part(9, 0x33, 1),
                    users: vec![user(5)],
                },
                DeltaPart {
                    part: part(6, 0x44, 2),
                    users: vec![user(5), user(0x9000_0000)],
                },
            ],
            filter_runs: Vec::new(),
        }
    }

    #[test]
    fn the_golden_manifest_still_decodes() {
        let bytes = checked_in("golden/checkpoint-v4.json");
        assert_eq!(
            keepsake_segment::decode_manifest(&bytes).expect("decodes"),
            golden_manifest()
        );
    }

    #[test]
    fn golden_checkpoints_of_every_version_still_decode() {
        for (v, events) in super::golden_checkpoints() {
            let name = format!("golden/checkpoint-v{v}.parquet");
            let users = fold(&events);
            let (m, decoded) = decode_checkpoint(Bytes::from(checked_in(&name)))
                .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
            assert_eq!(m, meta(v, users.len()), "{name}");
            assert_eq!(decoded, users, "{name}");
        }
        // Checkpoint versions are their own (segment version 3 added no checkpoint version).
        assert_eq!(
            keepsake_segment::CHECKPOINT_VERSION,
            6,
            "a new checkpoint version needs its golden file here \
             (version 6's: the_golden_files_of_version_6_still_decode)"
        );
    }

    /// Version 5: no change-id rows, a filter per user that holds every id of its log, so a
    /// checkpoint of a long history is a fraction of version 3's size and still equals the fold.
    #[test]
    fn a_version_5_checkpoint_holds_change_ids_as_a_filter() {
        let events = fixtures::history(11, 30, 300, t(0));
        let users = fold(&events);
        let v5 = encode_checkpoint(users.iter(), &meta(5, users.len())).expect("encode");
        let v3 = encode_checkpoint(users.iter(), &meta(3, users.len())).expect("encode");
        let (m, decoded) = decode_checkpoint(v5.clone()).expect("decode");
        assert_eq!(m, meta(5, users.len()));
        assert_eq!(decoded, users);
        assert!(decoded.values().all(|s| s.changes().count() == 0));
        for e in &events {
            assert!(decoded[&e.user_id].change_may_be_older(&e.change_id));
        }
        // A state that holds ids as a filter cannot be written as rows.
        assert!(matches!(
            encode_checkpoint(decoded.iter(), &meta(3, decoded.len())),
            Err(SegmentError::Invalid(_))
        ));
        assert_eq!(
            encode_checkpoint(decoded.iter(), &meta(5, decoded.len())).expect("encode"),
            v5,
            "a state loaded with its filter writes the same bytes"
        );
        eprintln!(
            "version 5: {} bytes, version 3: {} bytes",
            v5.len(),
            v3.len()
        );
        // A change row costs ~48 bytes of ids and numbers before encoding; the filter 3.
        let saved = v3.len().saturating_sub(v5.len()) / events.len();
        assert!(saved >= 25, "{saved} bytes saved per change id");
    }

    #[test]
    fn a_checkpoint_is_stamped_with_the_lowest_version_that_holds_it() {
        use keepsake_segment::checkpoint_version;
        assert_eq!(checkpoint_version(fold(&golden_events()).values()), 1);
        let users = fold(&golden_events_v2());
        assert_eq!(checkpoint_version(users.values()), 2);
        // user 1's revoked device is a tombstone of kind device: still version 2
        assert!(matches!(
            encode_checkpoint(users.iter(), &meta(1, users.len())),
            Err(SegmentError::Invalid(_))
        ));
        assert!(encode_checkpoint(users.iter(), &meta(2, users.len())).is_ok());
        // A collection needs version 3.
        let users = fold(&super::golden_events_v4());
        assert_eq!(checkpoint_version(users.values()), 3);
        assert!(matches!(
            encode_checkpoint(users.iter(), &meta(2, users.len())),
            Err(SegmentError::Invalid(_))
        ));
        assert!(encode_checkpoint(users.iter(), &meta(3, users.len())).is_ok());
    }
}

/// Decodes the rows of `plan` from a checkpoint and returns `user`'s state.
fn checkpoint_rows(
    bytes: &Bytes,
    plan: keepsake_segment::ReadPlan,
    user: &UserId,
) -> keepsake_model::UserState {
    let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
    let batches: Vec<_> =
        ParquetRecordBatchReaderBuilder::try_new_with_options(bytes.clone(), options)
            .expect("open")
            .with_row_groups(plan.row_groups)
            .with_row_selection(plan.selection)
            .build()
            .expect("reader")
            .collect::<Result<_, _>>()
            .expect("rows");
    keepsake_segment::decode_checkpoint_batches(batches, Some(user))
        .expect("decode")
        .remove(user)
        .expect("the user's rows")
}

/// Users with thousands of change ids over a few items: reading a checkpoint for items skips
/// the pages that hold only change ids, and still gives every item and the last seq.
#[test]
fn an_items_read_of_a_checkpoint_skips_change_id_pages_and_keeps_every_item() {
    use keepsake_model::{StateRead, UserState, apply};
    use keepsake_segment::{
        CheckpointMeta, ENTRY_CHANGE, ENTRY_COLUMN, encode_checkpoint, plan_user_read_skipping,
    };
    let events = fixtures::history(7, 3, 20_000, t(0));
    let mut users: std::collections::HashMap<UserId, UserState> = Default::default();
    for e in &events {
        apply(users.entry(e.user_id).or_default(), e).expect("apply");
    }
    // Versions 1-3 hold change ids as rows (5 holds a filter, one row a user).
    let meta = CheckpointMeta {
        format_version: 3,
        shard: 0,
        segment: 1,
        user_count: users.len() as u64,
    };
    let bytes = encode_checkpoint(users.iter(), &meta).expect("encode");
    let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
    let file = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes.clone(), options)
        .expect("open");
    let sorted = |s: &UserState| {
        let mut items: Vec<_> = s.items().cloned().collect();
        items.sort_by_key(|i| i.item_id);
        (s.last_seq(), items)
    };
    for (user, want) in &users {
        let full = plan_user_read(file.metadata(), user).expect("the user's rows");
        let items =
            plan_user_read_skipping(file.metadata(), user, ENTRY_COLUMN, ENTRY_CHANGE.as_bytes())
                .expect("the user's item rows");
        assert!(
            items.rows_selected * 2 < full.rows_selected,
            "change-id pages skipped: {} of {} rows",
            items.rows_selected,
            full.rows_selected
        );
        assert_eq!(&checkpoint_rows(&bytes, full, user), want, "a full read");
        let got = checkpoint_rows(&bytes, items, user);
        assert_eq!(sorted(&got), sorted(want), "every item and the last seq");
        assert!(got.changes().count() < want.changes().count());
    }
}

/// The columns of `bytes` (a Parquet object) that have a column index (page-level min/max).
fn columns_with_page_statistics(bytes: &Bytes) -> Vec<String> {
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required)
        .parse_and_finish(bytes)
        .expect("footer and page index");
    let columns = meta.file_metadata().schema_descr().columns().to_vec();
    columns
        .iter()
        .enumerate()
        .filter(|(c, _)| {
            (0..meta.num_row_groups())
                .any(|rg| meta.page_index_for_row_group(rg).column_index(*c).is_some())
        })
        .map(|(_, d)| d.name().to_string())
        .collect()
}

/// A view keeps the footer and page index of every part its loads read: page-level min/max
/// of a column no read plans by were ~35% of it (~89 bytes a user of 20 items at pages of
/// 256 rows, ~90 MB at a million users). A part keeps them for `user_id` (a user's pages)
/// and `entry` (the change-id pages an items' read skips) alone; every column keeps its
/// row-group statistics and its offset index.
#[test]
fn a_part_keeps_page_statistics_only_of_the_columns_reads_plan_by() {
    use keepsake_model::{UserState, apply};
    use keepsake_segment::{CHECKPOINT_VERSION, CheckpointMeta, encode_checkpoint};
    let events = fixtures::history(7, 50, 400, t(0));
    let mut users: std::collections::HashMap<UserId, UserState> = Default::default();
    for e in &events {
        apply(users.entry(e.user_id).or_default(), e).expect("apply");
    }
    for format_version in [3, CHECKPOINT_VERSION] {
        let meta = CheckpointMeta {
            format_version,
            shard: 0,
            segment: 1,
            user_count: users.len() as u64,
        };
        let bytes = encode_checkpoint(users.iter(), &meta).expect("encode");
        assert_eq!(
            columns_with_page_statistics(&bytes),
            ["user_id", "entry"],
            "format {format_version}"
        );
    }
}

mod history {
    use super::*;
    use keepsake_segment::{
        Segment, decode_history, encode_history, history_description, plan_user_read,
    };

    /// Three segments of shard 3 (9,000 rows, several pages): every user in all of them.
    fn sources() -> Vec<Segment> {
        let all = fixtures::history(9, 300, 30, t(0));
        let mut segs: Vec<Vec<Event>> = vec![Vec::new(); 3];
        for e in all {
            // A user's seqs stay ascending by segment: seq 1-10 in 1, 11-20 in 2, ...
            segs[((e.seq - 1) / 10) as usize].push(e);
        }
        segs.into_iter()
            .enumerate()
            .map(|(i, mut events)| {
                events.sort_by_key(|e| (e.user_id, e.seq));
                let meta = meta_for(&events, i as u64 + 4);
                Segment { meta, events }
            })
            .collect()
    }

    /// A history object is read for one user by its `user_id` pages: no other column keeps
    /// page-level min/max (kept in memory with its footer by the views that read it).
    #[test]
    fn a_history_object_keeps_page_statistics_only_of_user_id() {
        let bytes = encode_history(3, &sources()).expect("encode");
        assert_eq!(super::columns_with_page_statistics(&bytes), ["user_id"]);
    }

    #[test]
    fn a_history_object_gives_back_its_segments_exactly() {
        let segs = sources();
        let bytes = encode_history(3, &segs).expect("encode");
        let h = decode_history(bytes.clone()).expect("decode");
        assert_eq!((h.meta.shard, h.meta.first, h.meta.last), (3, 4, 6));
        assert_eq!(h.meta.event_count, 9000);
        assert_eq!(h.segments, segs);
        // One user's rows are contiguous: a read of one user plans a few rows, not the file.
        let meta = parquet::file::metadata::ParquetMetaDataReader::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional)
            .parse_and_finish(&bytes)
            .expect("footer");
        let user = segs[0].events[0].user_id;
        let plan = plan_user_read(&meta, &user).expect("the user is there");
        assert!(
            plan.rows_selected >= 30 && plan.rows_selected <= 4096,
            "{}",
            plan.rows_selected
        );
    }

    #[test]
    fn encode_history_refuses_gaps_other_shards_and_nothing() {
        let mut segs = sources();
        assert!(encode_history(3, &[]).is_err());
        assert!(
            encode_history(2, &segs).is_err(),
            "another shard's segments"
        );
        segs.remove(1);
        assert!(
            encode_history(3, &segs).is_err(),
            "segments 4 and 6 are not a range"
        );
    }

    #[test]
    fn decode_history_refuses_a_segment_and_damage() {
        let segs = sources();
        let plain = encode(&segs[0].events, &segs[0].meta).expect("encode");
        assert!(
            decode_history(plain).is_err(),
            "a segment is not a history object"
        );
        let bytes = encode_history(3, &segs).expect("encode");
        let cut = bytes.slice(0..bytes.len() - 100);
        assert!(decode_history(cut).is_err());
    }

    #[test]
    fn history_schema_files_match_the_code() {
        for v in [1, 2, 3, 4] {
            let name = format!("history-v{v}.json");
            assert_eq!(Some(json_file(&name)), history_description(v), "{name}");
        }
        assert_eq!(history_description(5), None);
    }

    #[test]
    fn golden_histories_of_every_version_still_decode() {
        for (v, events) in golden_segments() {
            let name = format!("golden/history-v{v}.parquet");
            let seg = Segment {
                meta: meta_for(&events, 1),
                events,
            };
            let h = decode_history(Bytes::from(checked_in(&name)))
                .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
            assert_eq!(h.meta.format_version, v, "{name}");
            assert_eq!(h.segments, vec![seg], "{name}");
        }
        assert_eq!(
            keepsake_segment::HISTORY_VERSIONS,
            &[1, 2, 3, 4],
            "a new history version needs its golden file here"
        );
    }

    /// A history object keeps each source segment's version, and is itself stamped 2 when it
    /// holds a format-2 segment (1 otherwise), so that a build that reads only version 1 refuses
    /// it by version on every read path.
    #[test]
    fn a_history_object_keeps_each_segments_format_version() {
        let v1 = golden_events();
        let v2: Vec<Event> = golden_events_v2()
            .into_iter()
            .filter(|e| e.kind == Kind::Device)
            .collect();
        let segs = vec![
            Segment {
                meta: meta_for(&v1, 1),
                events: v1,
            },
            Segment {
                meta: SegmentMeta {
                    segment: 2,
                    ..meta_for(&v2, 2)
                },
                events: v2,
            },
        ];
        let bytes = encode_history(3, &segs).expect("encode");
        let h = decode_history(bytes).expect("decode");
        assert_eq!(h.segments, segs);
        let versions: Vec<u32> = h.segments.iter().map(|s| s.meta.format_version).collect();
        assert_eq!(versions, vec![1, 2]);
        assert_eq!(
            h.meta.format_version, 2,
            "stamped 2: it holds a format-2 segment"
        );
        let only_v1 = encode_history(3, &segs[..1]).expect("encode");
        assert_eq!(
            decode_history(only_v1).expect("decode").meta.format_version,
            1
        );
    }

    /// A history object holding a segment of format 3 (origin `import`) is stamped 3: a build
    /// that reads history up to version 2 reads one user's rows without the sources' versions,
    /// and must refuse the object by its version rather than meet an origin it does not know.
    #[test]
    fn a_history_object_holding_an_import_is_stamped_3() {
        let v2 = golden_events_v2();
        let v3: Vec<Event> = golden_events_v3()
            .into_iter()
            .filter(|e| e.origin == Origin::Import)
            .collect();
        let segs = vec![
            Segment {
                meta: meta_for(&v2, 1),
                events: v2,
            },
            Segment {
                meta: SegmentMeta {
                    segment: 2,
                    ..meta_for(&v3, 2)
                },
                events: v3,
            },
        ];
        assert_eq!(segs[1].meta.format_version, 3);
        let h = decode_history(encode_history(3, &segs).expect("encode")).expect("decode");
        assert_eq!(h.meta.format_version, 3, "stamped with its newest source");
        assert_eq!(h.segments, segs);
        let only_v2 = encode_history(3, &segs[..1]).expect("encode");
        assert_eq!(
            decode_history(only_v2).expect("decode").meta.format_version,
            2
        );
    }
}

#[test]
fn decoding_one_users_rows_gives_what_filtering_every_row_gives() {
    let events = fixtures::history(12, 30, 20, t(0));
    let bytes = encode(&events, &meta_for(&events, 1)).expect("encode");
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("reader")
        .with_batch_size(100)
        .build()
        .expect("build");
    let user = events[17].user_id;
    let mut all = Vec::new();
    let mut mine = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        all.extend(decode_batch(&batch).expect("decode"));
        let rows = keepsake_segment::rows_of_user(&batch, &user).expect("rows");
        mine.extend(keepsake_segment::decode_rows(&batch, rows).expect("decode rows"));
        assert!(keepsake_segment::decode_rows(&batch, [batch.num_rows()]).is_err());
    }
    let expected: Vec<_> = all.into_iter().filter(|e| e.user_id == user).collect();
    assert_eq!(expected.len(), 20);
    assert_eq!(mine, expected);
}
