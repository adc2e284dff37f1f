//! Verify reports a clean store as clean and finds each kind of damage; rebuild from the log
//! gives the same state hash as the live views.

use std::sync::Arc;
use std::time::Duration;

use keepsake_log::LogConfig;
use keepsake_log::verify::verify_store;
use keepsake_store::keys;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;

use crate::common::*;

async fn populated() -> (Arc<dyn ObjectStore>, u64) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    // Users fall into shards at random, so one shard may see fewer than 20 events: the interval
    // makes sure each shard is checkpointed anyway.
    let cfg = LogConfig {
        checkpoint_every_events: 20,
        checkpoint_interval: Duration::from_millis(300),
        view_memory_bytes: 2000,
        ..fast_config()
    };
    let log = open(store.clone(), 2, cfg).await.expect("open");
    for round in 0..6 {
        for _ in 0..4 {
            push(
                &log,
                user(),
                (0..3)
                    .map(|i| put(item(), json!({"r": round, "i": i})))
                    .collect(),
            )
            .await
            .expect("push");
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    // The checkpointer runs every 500 ms; a loaded CI machine can take a while.
    for _ in 0..100 {
        if log.checkpoint(0).is_some() && log.checkpoint(1).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.checkpoint(0).is_some() && log.checkpoint(1).is_some(),
        "the fixture needs a checkpoint in each shard"
    );
    let (before, after, report) = log.rebuild().await.expect("rebuild");
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(
        before, after,
        "rebuilt from the log = the live views (some users were evicted and reloaded)"
    );
    let (again, _, _) = log.rebuild().await.expect("rebuild twice");
    assert_eq!(
        again, after,
        "and the same after the views were emptied and reloaded"
    );
    let head = log.head(0);
    log.shutdown().await;
    (store, head)
}

async fn kinds(store: &Arc<dyn ObjectStore>) -> Vec<&'static str> {
    let (report, _) = verify_store(store, 2).await.expect("verify");
    assert_eq!(report.ok, report.problems.is_empty());
    report.problems.iter().map(|p| p.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_store_verifies() {
    let (store, _) = populated().await;
    let (report, _) = verify_store(&store, 2).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
    assert!(
        report.checkpoints >= 2 && report.segments >= 2 && report.events == 72,
        "{report:?}"
    );
}

/// Verified with another shard count than the store was written with (as after a lost
/// descriptor), users are found in shards they do not hash to: one problem per shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_wrong_shard_count() {
    let (store, _) = populated().await;
    for wrong in [3, 4] {
        let (report, _) = verify_store(&store, wrong).await.expect("verify");
        let wrong_shard: Vec<_> = report
            .problems
            .iter()
            .filter(|p| p.kind == "wrong_shard")
            .collect();
        assert!(!wrong_shard.is_empty(), "{wrong}: {:?}", report.problems);
        assert!(wrong_shard.len() <= 2, "one per shard: {wrong_shard:?}");
        assert!(
            wrong_shard[0]
                .detail
                .contains(&format!("not written with {wrong} shards")),
            "{wrong_shard:?}"
        );
    }
    // Fewer shards: the shards past the count are foreign, and users hash elsewhere.
    let (report, _) = verify_store(&store, 1).await.expect("verify");
    assert!(
        report.problems.iter().any(|p| p.kind == "foreign_object"),
        "{:?}",
        report.problems
    );
    let (report, _) = verify_store(&store, 2).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_deleted_segment() {
    let (store, head) = populated().await;
    assert!(head >= 3);
    store.delete(&keys::segment(0, 2)).await.expect("delete");
    assert!(kinds(&store).await.contains(&"gap"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_flipped_bytes() {
    let (store, _) = populated().await;
    let path = keys::segment(1, 1);
    let mut bytes = object_bytes(store.as_ref(), &path).await.to_vec();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    store
        .put(&path, bytes.into())
        .await
        .expect("overwrite (the test plays a failing disk)");
    assert!(kinds(&store).await.contains(&"unreadable"));
}

/// The parts the first manifest of shard 0 names, and its number.
async fn first_manifest(store: &Arc<dyn ObjectStore>) -> (u64, keepsake_segment::Manifest) {
    let listed = keepsake_log::list_checkpoints(store.as_ref(), 0)
        .await
        .expect("list");
    let c = *listed.first().expect("a checkpoint");
    match keepsake_log::open_checkpoint(store.as_ref(), 0, c)
        .await
        .expect("open")
    {
        keepsake_log::Checkpoint::Parts(m) => (c, (*m).clone()),
        other => panic!("checkpoints are written as manifests: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_truncated_checkpoint_part() {
    let (store, _) = populated().await;
    let (_, m) = first_manifest(&store).await;
    let p = m.parts().next().expect("a part");
    let path = keys::part(0, p.written_by, p.digest);
    let bytes = object_bytes(store.as_ref(), &path).await;
    store
        .put(&path, bytes.slice(..bytes.len() / 2).into())
        .await
        .expect("overwrite (the test plays a failing disk)");
    assert!(kinds(&store).await.contains(&"unreadable_checkpoint"));
}

/// A part a manifest names that is not in the store (retention deletes a manifest before its
/// parts, so this is damage) makes the checkpoint unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_missing_checkpoint_part() {
    let (store, _) = populated().await;
    let (_, m) = first_manifest(&store).await;
    let p = m.parts().next().expect("a part");
    store
        .delete(&keys::part(0, p.written_by, p.digest))
        .await
        .expect("delete");
    let found = kinds(&store).await;
    assert!(found.contains(&"unreadable_checkpoint"), "{found:?}");
}

/// A whole checkpoint (format 3, as versions before manifests wrote it) is still read and
/// checked: one cut in half is unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_truncated_whole_checkpoint() {
    let (store, _) = populated().await;
    let (c, _) = first_manifest(&store).await;
    let users = keepsake_log::read_checkpoint(store.as_ref(), 0, c)
        .await
        .expect("read");
    let meta = keepsake_segment::CheckpointMeta {
        format_version: keepsake_segment::CHECKPOINT_VERSION,
        shard: 0,
        segment: c,
        user_count: users.len() as u64,
    };
    let bytes = keepsake_segment::encode_checkpoint(users.iter(), &meta).expect("encode");
    store
        .put(&keys::checkpoint(0, c), bytes.clone().into())
        .await
        .expect("a whole checkpoint beside the manifest");
    assert_eq!(kinds(&store).await, Vec::<&str>::new(), "it agrees");
    store
        .put(
            &keys::checkpoint(0, c),
            bytes.slice(..bytes.len() / 2).into(),
        )
        .await
        .expect("overwrite");
    assert!(kinds(&store).await.contains(&"unreadable_checkpoint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_foreign_object() {
    let (store, _) = populated().await;
    store
        .put(&"shards/0/segments/notes.txt".into(), "hello".into())
        .await
        .expect("put");
    assert_eq!(kinds(&store).await, vec!["foreign_object"]);
}

/// A checkpoint that decodes but does not say what the log says (here: one user left out, as a
/// buggy checkpointer might) is a mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_checkpoint_that_disagrees_with_the_log() {
    let (store, _) = populated().await;
    let listed = keepsake_log::list_checkpoints(store.as_ref(), 0)
        .await
        .expect("list");
    let c = *listed.last().expect("a checkpoint");
    let mut users = keepsake_log::read_checkpoint(store.as_ref(), 0, c)
        .await
        .expect("read");
    assert!(
        users.len() >= 2,
        "the test needs two users in the checkpoint"
    );
    let dropped = *users.keys().next().expect("a user");
    users.remove(&dropped);
    let meta = keepsake_segment::CheckpointMeta {
        format_version: keepsake_segment::CHECKPOINT_VERSION,
        shard: 0,
        segment: c,
        user_count: users.len() as u64,
    };
    let bytes = keepsake_segment::encode_checkpoint(users.iter(), &meta).expect("encode");
    store
        .put(&keys::checkpoint(0, c), bytes.into())
        .await
        .expect("overwrite (the test plays a buggy checkpointer)");
    let found = kinds(&store).await;
    assert_eq!(found, vec!["checkpoint_mismatch"], "{found:?}");
}

/// The same in format 4: a manifest whose parts leave a user out (a buggy checkpointer wrote a
/// part without it and a manifest naming that part, each consistent on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_manifest_that_disagrees_with_the_log() {
    let (store, _) = populated().await;
    let (c, mut m) = first_manifest(&store).await;
    let first = m.base[0].part;
    let mut users = keepsake_log::read_checkpoint(store.as_ref(), 0, c)
        .await
        .expect("read");
    assert!(users.len() >= 2, "the test needs two users");
    let dropped = *users.keys().min().expect("a user");
    users.remove(&dropped);
    // One base part holding every user but one.
    let meta = keepsake_segment::CheckpointMeta {
        format_version: keepsake_segment::CHECKPOINT_VERSION,
        shard: 0,
        segment: first.written_by,
        user_count: users.len() as u64,
    };
    let bytes = keepsake_segment::encode_checkpoint(users.iter(), &meta).expect("encode");
    let part = keepsake_segment::PartRef {
        written_by: first.written_by,
        digest: keepsake_segment::part_digest(&bytes),
        users: users.len() as u64,
        bytes: bytes.len() as u64,
    };
    store
        .put(&keys::part(0, part.written_by, part.digest), bytes.into())
        .await
        .expect("put the part");
    m.base = vec![keepsake_segment::BasePart {
        from: keepsake_segment::NIL_USER,
        part,
    }];
    m.deltas.clear();
    m.users = users.len() as u64;
    store
        .put(
            &keys::manifest(0, c),
            keepsake_segment::encode_manifest(&m)
                .expect("encode")
                .into(),
        )
        .await
        .expect("overwrite (the test plays a buggy checkpointer)");
    let found = kinds(&store).await;
    assert_eq!(found, vec!["checkpoint_mismatch"], "{found:?}");
}

/// Rewrites segment `n` of shard 0 with `damage` done to its events (the test plays a buggy
/// writer: the file stays readable, its metadata consistent).
async fn rewrite_segment(
    store: &Arc<dyn ObjectStore>,
    n: u64,
    damage: impl FnOnce(&mut Vec<keepsake_model::Event>),
) {
    let mut seg = keepsake_log::read_segment(store.as_ref(), 0, n)
        .await
        .expect("read")
        .expect("the segment exists");
    damage(&mut seg.events);
    let bytes = keepsake_segment::encode(&seg.events, &seg.meta).expect("encode");
    store
        .put(&keys::segment(0, n), bytes.into())
        .await
        .expect("overwrite (the test plays a buggy writer)");
}

/// Every push of the fixture is one user's three events in one segment: damage inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_seq_hole_inside_a_readable_segment() {
    let (store, head) = populated().await;
    rewrite_segment(&store, head, |events| {
        let last = events.len() - 1;
        events[last].seq += 1;
    })
    .await;
    let found = kinds(&store).await;
    assert!(found.contains(&"log"), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_change_id_used_twice() {
    let (store, head) = populated().await;
    rewrite_segment(&store, head, |events| {
        let (first, second) = (&events[0], &events[1]);
        assert_eq!(first.user_id, second.user_id, "one user's push");
        events[1].change_id = events[0].change_id;
    })
    .await;
    let found = kinds(&store).await;
    assert!(found.contains(&"log"), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_checkpoint_beyond_the_readable_log() {
    let (store, head) = populated().await;
    let c = *keepsake_log::list_checkpoints(store.as_ref(), 0)
        .await
        .expect("list")
        .last()
        .expect("a checkpoint");
    let bytes = store
        .get(&keys::manifest(0, c))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    store
        .put(&keys::manifest(0, head + 5), bytes.into())
        .await
        .expect("put");
    let (report, _) = verify_store(&store, 2).await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == "checkpoint_mismatch"
                && p.key == keys::manifest(0, head + 5).to_string()
                && p.detail.contains("beyond")),
        "{:?}",
        report.problems
    );
}

/// Compaction advances the shard's frontier before deleting segments; verify reads it after
/// its listing and reports one that does not hold a number whose segment object is gone (a
/// writer behind would take that number for new) or that does not read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_frontier_behind_its_compaction_or_unreadable() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let cfg = LogConfig {
        compaction: keepsake_log::CompactionPolicy {
            enabled: true,
            min_segments: 1,
            max_events: 1000,
        },
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg).await.expect("open");
    let u = user();
    for i in 0..3 {
        push(&log, u, vec![put(item(), json!({ "i": i }))])
            .await
            .expect("push");
    }
    let report = log.compact_now().await.expect("compact");
    assert_eq!(report.segments, 3, "{report:?}");
    log.shutdown().await;
    let written = keepsake_log::frontier::find_written(store.as_ref(), 0)
        .await
        .expect("frontier");
    assert!(written.holds(3), "{written:?}");
    let (report, _) = verify_store(&store, 1).await.expect("verify");
    assert!(report.ok, "{:?}", report.problems);

    let behind = keepsake_log::frontier::Frontier {
        generation: written.generation,
        through: 2,
        written: 2,
    };
    let path = keys::frontier(0, written.generation);
    store
        .put(&path, keepsake_log::frontier::encode(0, behind).into())
        .await
        .expect("overwrite");
    let (report, _) = verify_store(&store, 1).await.expect("verify");
    assert_eq!(
        report
            .problems
            .iter()
            .map(|p| (p.kind, p.key.as_str()))
            .collect::<Vec<_>>(),
        vec![("frontier_behind", path.as_ref())],
        "{:?}",
        report.problems
    );
    store
        .put(&path, object_store::PutPayload::from_static(b"not json"))
        .await
        .expect("damage");
    let (report, _) = verify_store(&store, 1).await.expect("verify");
    assert!(
        report.problems.iter().any(|p| p.kind == "unreadable"
            && p.detail
                .contains(&format!("generation {}", written.generation))),
        "{:?}",
        report.problems
    );
}
