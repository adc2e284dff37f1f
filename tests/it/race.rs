//! Two writers on one shard of one store (two processes, or a stale owner): at most one commits
//! each segment number, every acknowledged change is in the log exactly once with the seq and
//! version it was acknowledged with, and the loser never acknowledges.

use std::collections::HashMap;
use std::sync::Arc;

use futures::TryStreamExt;
use futures::future::join_all;
use keepsake_log::{LogError, LogStats, scan_shard};
use keepsake_model::{ChangeId, ChangeRef, Outcome, UserState};
use keepsake_tests::{Backend, store};
use serde_json::json;

use crate::common::*;

async fn race(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let a = Arc::new(
        open(ts.store.clone(), 1, fast_config())
            .await
            .expect("writer a"),
    );
    let b = Arc::new(
        open(ts.reopen().expect("second handle"), 1, fast_config())
            .await
            .expect("writer b"),
    );
    let users: Vec<_> = (0..4).map(|_| user()).collect();
    let mut acked: HashMap<ChangeId, ChangeRef> = HashMap::new();
    let mut pending = Vec::new();
    let mut fenced = 0;
    for round in 0..40 {
        let pushes = users.iter().enumerate().map(|(i, u)| {
            let writer = if (i + round) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let c = put(item(), json!({"round": round}));
            let u = *u;
            async move { (u, c.clone(), push(&writer, u, vec![c]).await) }
        });
        for (u, c, result) in join_all(pushes).await {
            match result {
                Ok(r) => match r.outcomes[0] {
                    Outcome::Applied(x) | Outcome::Duplicate(x) => {
                        acked.insert(c.change_id, x);
                    }
                    ref other => panic!("unexpected {other:?}"),
                },
                Err(e) => {
                    assert!(
                        e.is_retryable(),
                        "the loser answers with a retryable error: {e:?}"
                    );
                    if matches!(e, LogError::Fenced { .. }) {
                        fenced += 1;
                    }
                    pending.push((u, c));
                }
            }
        }
    }
    assert!(
        fenced > 0,
        "two writers racing on one shard must fence each other"
    );
    // Retries can be fenced too; they count alongside the first round's losses below.
    // Devices retry what was not acknowledged until it is.
    for (u, c) in pending {
        let mut tries = 0;
        loop {
            tries += 1;
            let writer = if tries % 2 == 0 { &a } else { &b };
            match push(writer, u, vec![c.clone()]).await {
                Ok(r) => match r.outcomes[0] {
                    Outcome::Applied(x) | Outcome::Duplicate(x) => {
                        acked.insert(c.change_id, x);
                        break;
                    }
                    ref other => panic!("unexpected {other:?}"),
                },
                Err(e) => {
                    assert!(e.is_retryable() && tries < 20, "{e:?}");
                    if matches!(e, LogError::Fenced { .. }) {
                        fenced += 1;
                    }
                }
            }
        }
    }
    // Each fenced batch fails at least one push (in the rounds or in the retries).
    let fenced_batches = LogStats::get(&a.stats().fenced) + LogStats::get(&b.stats().fenced);
    assert!(fenced_batches >= 1 && fenced_batches <= fenced as u64);
    a.shutdown().await;
    b.shutdown().await;

    // The log, read by a third party: segments dense, one batch per number, every change once.
    let segments: Vec<_> = scan_shard(ts.store.clone(), 0, 1, 0, 4)
        .await
        .expect("scan")
        .try_collect()
        .await
        .expect("read segments");
    let mut batches = std::collections::HashSet::new();
    let mut by_user: HashMap<_, Vec<_>> = HashMap::new();
    let mut seen = HashMap::new();
    for s in &segments {
        assert!(
            batches.insert(s.meta.batch_id),
            "one batch per segment number"
        );
        for e in &s.events {
            assert!(
                seen.insert(e.change_id, (e.seq, e.version)).is_none(),
                "change in the log twice"
            );
            by_user.entry(e.user_id).or_default().push(e.clone());
        }
    }
    for events in by_user.values() {
        assert!(UserState::replay(events).is_ok(), "seq dense per user");
    }
    assert_eq!(
        seen.len(),
        acked.len(),
        "every acknowledged change, and nothing else"
    );
    for (id, r) in &acked {
        assert_eq!(
            seen.get(id),
            Some(&(r.seq, r.version)),
            "acknowledged as written"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_race_on_memory() {
    race(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_race_on_file() {
    race(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_race_on_s3() {
    race(Backend::S3).await;
}
