//! `apply` throughput: folding a realistic history into fresh user states.
#![allow(clippy::expect_used)]

use std::collections::HashMap;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keepsake_model::{Clock, ManualClock, UserId, UserState, apply, fixtures};

fn bench_apply(c: &mut Criterion) {
    let start = ManualClock::at_epoch_2026().now();
    let events = fixtures::history(7, 100, 1000, start);
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("fold_100k_events_100_users", |b| {
        b.iter(|| {
            let mut users: HashMap<UserId, UserState> = HashMap::new();
            for e in &events {
                apply(users.entry(e.user_id).or_default(), e).expect("valid history");
            }
            users.len()
        });
    });
    g.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
