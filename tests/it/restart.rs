//! Crash and restart: writers stopped mid-stream without answering; after reopening, every
//! acknowledged change is there, seq continues densely, and retries are duplicates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keepsake_log::UpTo;
use keepsake_model::{ChangeId, ChangeRef, Outcome, UserState};
use keepsake_tests::{Backend, store};
use serde_json::json;

use crate::common::*;

async fn crash_and_restart(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = Arc::new(
        open(ts.store.clone(), 2, fast_config())
            .await
            .expect("open"),
    );
    let users: Vec<_> = (0..8).map(|_| user()).collect();
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let log = log.clone();
        let u = *u;
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for n in 0..200 {
                let c = put(item(), json!({"n": n, "writer": i}));
                let r = push(&log, u, vec![c.clone()]).await;
                let stop = r.is_err();
                results.push((u, c, r));
                if stop {
                    break;
                }
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    log.abort_writers();
    let mut acked: HashMap<ChangeId, ChangeRef> = HashMap::new();
    let mut unacked = Vec::new();
    for t in tasks {
        for (u, c, r) in t.await.expect("join") {
            match r {
                Ok(r) => match r.outcomes[0] {
                    Outcome::Applied(x) => {
                        acked.insert(c.change_id, x);
                    }
                    ref other => panic!("unexpected {other:?}"),
                },
                Err(e) => {
                    assert!(e.is_retryable(), "{e:?}");
                    unacked.push((u, c));
                }
            }
        }
    }
    assert!(
        !acked.is_empty(),
        "some pushes were acknowledged before the crash"
    );
    drop(log);

    let log = open(ts.reopen().expect("reopen"), 2, fast_config())
        .await
        .expect("restart");
    for u in &users {
        let (events, _) = keepsake_log::read_user(ts.store.clone(), log.shard_of(u), *u, UpTo::End)
            .await
            .expect("read");
        assert!(
            UserState::replay(&events).is_ok(),
            "dense seq after the crash"
        );
        for e in &events {
            if let Some(r) = acked.get(&e.change_id) {
                assert_eq!((r.seq, r.version), (e.seq, e.version));
            }
        }
    }
    let total_in_log: usize = {
        let mut n = 0;
        for u in &users {
            let (events, _) =
                keepsake_log::read_user(ts.store.clone(), log.shard_of(u), *u, UpTo::End)
                    .await
                    .expect("read");
            n += events
                .iter()
                .filter(|e| acked.contains_key(&e.change_id))
                .count();
        }
        n
    };
    assert_eq!(
        total_in_log,
        acked.len(),
        "every acknowledged change survived the crash"
    );

    // Retries after the restart: acknowledged ones are duplicates with their original result;
    // unacknowledged ones are applied now, or duplicates if they had landed.
    for (id, r) in acked.iter().take(20) {
        let mut owner = None;
        for u in &users {
            let has = log
                .user(u, |s| keepsake_model::StateRead::change(s, id).is_some())
                .await
                .expect("user state");
            if has {
                owner = Some(*u);
            }
        }
        let u = owner.expect("owner");
        let c = keepsake_model::Change {
            change_id: *id,
            ..put(r.item_id, json!({"n": -1}))
        };
        let (again, _) = push_as_device(&log, u, vec![c]).await;
        assert_eq!(again.outcomes[0], Outcome::Duplicate(*r));
    }
    // A PUT of the crashed writer may still land after the restart (the file store writes on a
    // blocking thread that an abort does not stop): the new writer is then fenced once, and the
    // device resends, as it would after any retryable error.
    for (u, c) in unacked {
        let (again, before) = push_as_device(&log, u, vec![c]).await;
        match again.outcomes[0] {
            Outcome::Applied(x) => assert_eq!(x.seq, before + 1, "seq continues densely"),
            Outcome::Duplicate(x) => assert!(x.seq <= before),
            ref other => panic!("unexpected {other:?}"),
        }
    }
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_on_memory() {
    crash_and_restart(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_on_file() {
    crash_and_restart(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_on_s3() {
    crash_and_restart(Backend::S3).await;
}

/// Restart loads no user (issue 15): the shard's state comes from the layout, the newest
/// checkpoint's number and the tail, and every user loads on first use with the same state,
/// whether it lives in the checkpoint, in the tail, or in both; a resend of a change id from
/// before the restart is still a duplicate.
async fn a_restart_loads_no_user_and_answers_the_same(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let log = open(ts.store.clone(), 2, fast_config())
        .await
        .expect("open");
    let users: Vec<_> = (0..40).map(|_| user()).collect();
    let mut first = HashMap::new();
    for (i, u) in users.iter().enumerate() {
        let c = put(item(), json!({"n": i}));
        first.insert(*u, c.clone());
        push(&log, *u, vec![c]).await.expect("push");
    }
    log.compact_now().await.expect("checkpoint and compact");
    // After the checkpoint: half the users change again, and a few new ones arrive.
    let mut all = users.clone();
    for u in users.iter().step_by(2) {
        push(&log, *u, vec![put(item(), json!({"again": true}))])
            .await
            .expect("push after");
    }
    for _ in 0..5 {
        let u = user();
        push(&log, u, vec![put(item(), json!({"new": true}))])
            .await
            .expect("new user");
        all.push(u);
    }
    let mut before = HashMap::new();
    for u in &all {
        before.insert(*u, log.user(u, UserState::clone).await.expect("state"));
    }
    log.shutdown().await;

    let log = open(ts.store.clone(), 2, fast_config())
        .await
        .expect("reopen");
    assert_eq!(log.resident_users(), 0, "a restart loads no user");
    for u in &all {
        let after = log.user(u, UserState::clone).await.expect("state");
        assert_eq!(Some(&after), before.get(u), "user {u}");
    }
    let (u, c) = first.iter().next().expect("a user");
    let r = push(&log, *u, vec![c.clone()]).await.expect("resend");
    assert!(matches!(r.outcomes[0], Outcome::Duplicate(_)), "{r:?}");
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_no_user_memory() {
    a_restart_loads_no_user_and_answers_the_same(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_no_user_file() {
    a_restart_loads_no_user_and_answers_the_same(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_no_user_s3() {
    a_restart_loads_no_user_and_answers_the_same(Backend::S3).await;
}
