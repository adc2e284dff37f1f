//! Segment encode and decode (and decode + apply) for 1k, 10k and 100k events of 300-700-byte
//! documents. Bytes per event are printed once per size.
#![allow(clippy::expect_used, clippy::print_stderr)]

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keepsake_model::{BatchId, Event, UserId, UserState, apply, fixtures};
use keepsake_segment::{FORMAT_VERSION, SegmentMeta, decode, encode};
use uuid::Uuid;

fn segment(n: usize) -> (Vec<Event>, SegmentMeta) {
    let start = Utc
        .with_ymd_and_hms(2026, 11, 24, 10, 0, 0)
        .single()
        .expect("time");
    let events = fixtures::history(n as u64, (n / 100).max(1), 100.min(n), start);
    let meta = SegmentMeta {
        format_version: FORMAT_VERSION,
        shard: 0,
        segment: 1,
        writer_epoch: 1,
        batch_id: BatchId(Uuid::from_u128(1)),
        event_count: events.len() as u64,
        first_recorded_at: start,
        last_recorded_at: start,
    };
    (events, meta)
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment");
    g.sample_size(10);
    // 64: a segment of a busy shard's commit window (the push path); 100,000: a history object.
    for n in [64usize, 1_000, 10_000, 100_000] {
        let (events, meta) = segment(n);
        let encoded: Bytes = encode(&events, &meta).expect("encode");
        let doc_bytes: usize = events
            .iter()
            .filter_map(|e| e.document.as_ref())
            .map(|d| d.len())
            .sum();
        eprintln!(
            "segment of {n} events: {} bytes, {:.1} bytes/event (documents average {:.0} bytes)",
            encoded.len(),
            encoded.len() as f64 / n as f64,
            doc_bytes as f64 / n as f64
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("encode", n), &events, |b, ev| {
            b.iter(|| encode(ev, &meta).expect("encode"))
        });
        g.bench_with_input(BenchmarkId::new("decode", n), &encoded, |b, bytes| {
            b.iter(|| decode(bytes.clone()).expect("decode"))
        });
        g.bench_with_input(BenchmarkId::new("decode_apply", n), &encoded, |b, bytes| {
            b.iter(|| {
                let seg = decode(bytes.clone()).expect("decode");
                let mut users: HashMap<UserId, UserState> = HashMap::new();
                for e in &seg.events {
                    apply(users.entry(e.user_id).or_default(), e).expect("apply");
                }
                users.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
