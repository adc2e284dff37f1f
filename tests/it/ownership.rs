//! Shard ownership in a cluster (`keepsake_log::owner`): a server takes a shard by writing the
//! next generation of its fence in the store, and a writer holding an older generation never
//! acknowledges another batch, whatever it believes. Every acknowledged change is in the log
//! exactly once, as acknowledged, and the new owner's view holds it from the moment it serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::TryStreamExt;
use keepsake_log::{Log, LogConfig, LogError, LogStats, scan_shard};
use keepsake_model::{ChangeId, ChangeRef, Outcome, UserId, UserState};
use keepsake_tests::{Backend, store};
use serde_json::json;

use crate::common::*;

fn member(node: &str) -> LogConfig {
    LogConfig {
        cluster_node: Some(node.into()),
        ..fast_config()
    }
}

fn acked_ref(outcome: &Outcome) -> ChangeRef {
    match outcome {
        Outcome::Applied(x) | Outcome::Duplicate(x) => *x,
        other => panic!("unexpected {other:?}"),
    }
}

/// Reads shard 0 of a one-shard store as a third party and checks it against what was
/// acknowledged: one batch per number, every change once, seqs dense per user, and every
/// acknowledged change with the seq and version it was acknowledged with.
async fn check_log(
    store: Arc<dyn object_store::ObjectStore>,
    acked: &HashMap<ChangeId, ChangeRef>,
) -> usize {
    let segments: Vec<_> = scan_shard(store, 0, 1, 0, 4)
        .await
        .expect("scan")
        .try_collect()
        .await
        .expect("read segments");
    let mut batches = std::collections::HashSet::new();
    let mut by_user: HashMap<UserId, Vec<_>> = HashMap::new();
    let mut seen = HashMap::new();
    for s in &segments {
        assert!(batches.insert(s.meta.batch_id), "one batch per number");
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
    for (id, r) in acked {
        assert_eq!(
            seen.get(id),
            Some(&(r.seq, r.version)),
            "acknowledged, so in the log as acknowledged"
        );
    }
    seen.len()
}

/// Without a cluster every shard is the process's; a member owns none until it takes one.
async fn members_write_only_shards_they_took(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let solo = open(ts.store.clone(), 1, fast_config())
        .await
        .expect("open");
    assert_eq!(solo.owned(0), Some(0));
    assert_eq!(solo.acquire(0, 1).await.expect("no cluster: no-op"), 0);
    solo.shutdown().await;

    let a = open(ts.reopen().expect("handle"), 1, member("a"))
        .await
        .expect("open a");
    assert_eq!(a.owned(0), None);
    let u = user();
    let refused = push(&a, u, vec![put(item(), json!({"n": 0}))]).await;
    assert!(
        matches!(refused, Err(LogError::NotOwner { shard: 0 })),
        "{refused:?}"
    );
    assert!(refused.expect_err("refused").is_retryable());
    let g = a.acquire(0, 7).await.expect("acquire");
    assert_eq!(g, 1);
    assert_eq!(a.owned(0), Some(1));
    push(&a, u, vec![put(item(), json!({"n": 1}))])
        .await
        .expect("owned: written");
    a.release(0).await;
    assert_eq!(a.owned(0), None);
    let after = push(&a, u, vec![put(item(), json!({"n": 2}))]).await;
    assert!(matches!(after, Err(LogError::NotOwner { .. })), "{after:?}");
    let chain = keepsake_log::owner::newest(ts.store.as_ref(), 0)
        .await
        .expect("read the chain")
        .expect("a generation");
    assert_eq!(
        (chain.generation, chain.node.as_str(), chain.assignment),
        (1, "a", 7)
    );
    a.shutdown().await;
}

/// B takes the shard while A still believes it owns it (A paused, partitioned, or slow): A's
/// next batch lands or not, but is never acknowledged, and A lets the shard go. B's view holds
/// everything acknowledged before it took the shard.
async fn a_deposed_owner_acknowledges_nothing_more(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let a = open(ts.store.clone(), 1, member("a"))
        .await
        .expect("open a");
    let b = open(ts.reopen().expect("handle"), 1, member("b"))
        .await
        .expect("open b");
    a.acquire(0, 1).await.expect("a takes");
    let u = user();
    let mut acked = HashMap::new();
    for n in 0..5 {
        let c = put(item(), json!({"n": n}));
        let r = push(&a, u, vec![c.clone()]).await.expect("a owns: acked");
        acked.insert(c.change_id, acked_ref(&r.outcomes[0]));
    }
    // B takes the shard; A was not told.
    assert_eq!(b.acquire(0, 2).await.expect("b takes"), 2);
    assert_eq!(
        b.last_seq(&u).await.expect("read at b"),
        5,
        "the new owner's view holds every change acknowledged before it took the shard"
    );
    let stale = put(item(), json!({"n": "stale"}));
    let refused = push(&a, u, vec![stale.clone()]).await;
    assert!(
        matches!(refused, Err(LogError::NotOwner { .. })),
        "a deposed owner never acknowledges: {refused:?}"
    );
    assert_eq!(LogStats::get(&a.stats().deposed), 1);
    assert_eq!(a.owned(0), None, "the deposed owner let the shard go");
    let again = push(&a, u, vec![put(item(), json!({"n": "later"}))]).await;
    assert!(matches!(again, Err(LogError::NotOwner { .. })), "{again:?}");

    // B goes on; its first batch may meet A's landed segment (fenced, retried).
    let c = put(item(), json!({"n": 6}));
    let (r, _) = push_as_device(&b, u, vec![c.clone()]).await;
    acked.insert(c.change_id, acked_ref(&r.outcomes[0]));
    // The stale change, resent to the owner, answers as the log has it: once.
    let (r, _) = push_as_device(&b, u, vec![stale.clone()]).await;
    acked.insert(stale.change_id, acked_ref(&r.outcomes[0]));
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(check_log(ts.store.clone(), &acked).await, acked.len());
}

/// Ownership moves back and forth while four devices push, each to the server it last found
/// owning the shard (as a router would send it): hand-overs alternate between a graceful
/// release and none (a crash). Every acknowledged change is in the log exactly once, as
/// acknowledged; the refused ones were retried until acknowledged.
async fn hand_overs_under_load_lose_nothing(backend: Backend) {
    let ts = store(backend).await.expect("store");
    let servers = Arc::new([
        open(ts.store.clone(), 1, member("a"))
            .await
            .expect("open a"),
        open(ts.reopen().expect("handle"), 1, member("b"))
            .await
            .expect("open b"),
    ]);
    servers[0].acquire(0, 1).await.expect("a takes");
    let owner = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let devices = (0..4).map(|_| {
        let (servers, owner, stop) = (servers.clone(), owner.clone(), stop.clone());
        tokio::spawn(async move {
            let u = user();
            let mut acked = HashMap::new();
            let mut refused = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 5 {
                let c = put(item(), json!({"n": n}));
                n += 1;
                loop {
                    let server: &Log = &servers[owner.load(Ordering::Acquire)];
                    match push(server, u, vec![c.clone()]).await {
                        Ok(r) => {
                            acked.insert(c.change_id, acked_ref(&r.outcomes[0]));
                            break;
                        }
                        Err(e) => {
                            assert!(e.is_retryable(), "{e:?}");
                            refused += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                        }
                    }
                }
            }
            (acked, refused)
        })
    });
    let devices: Vec<_> = devices.collect();
    let mut generation = 1;
    for round in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let (from, to) = (round % 2, (round + 1) % 2);
        if round % 2 == 0 {
            servers[from].release(0).await;
        }
        generation += 1;
        let g = servers[to].acquire(0, generation).await.expect("take");
        assert_eq!(g, generation);
        owner.store(to, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashMap::new();
    for d in devices {
        let (a, _) = d.await.expect("device");
        acked.extend(a);
    }
    let deposed: u64 = servers
        .iter()
        .map(|s| LogStats::get(&s.stats().deposed))
        .sum();
    for s in servers.iter() {
        s.shutdown().await;
    }
    let in_log = check_log(ts.store.clone(), &acked).await;
    // A deposed server's batch may have landed unacknowledged; its devices sent the change
    // again and got `duplicate`, so it is among the acknowledged ones too.
    assert_eq!(
        in_log,
        acked.len(),
        "nothing in the log that was not acknowledged ({deposed} deposed batches)"
    );
}

on_every_backend!(
    members_write_only_shards_they_took,
    a_deposed_owner_acknowledges_nothing_more,
    hand_overs_under_load_lose_nothing,
);
