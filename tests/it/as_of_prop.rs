//! As-of reads equal a from-scratch replay: a property over random histories (several users,
//! puts, merge patches, deletes, pushes of several changes), random moments (by seq and by
//! time, on and between recorded times), and random checkpoints (written by the background
//! checkpointer, and placed explicitly at random points, so that as-of reads start from the
//! newest checkpoint, from older ones, or from none, across their boundaries).

use std::sync::Arc;
use std::time::Duration;

use keepsake_log::{LogConfig, UpTo, list_checkpoints, read_user, write_checkpoint};
use keepsake_model::{ChangeBody, Kind, StateRead, UserState};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use proptest::prelude::*;
use serde_json::json;

use crate::common::*;

#[derive(Clone, Debug)]
struct Step {
    user: usize,
    /// (item, op: 0-1 put, 2 patch, 3 delete) per change of the push.
    changes: Vec<(usize, u8)>,
    /// Write a checkpoint of everything committed so far after this push.
    checkpoint: bool,
    /// Pause first, so that recorded times differ (otherwise pushes may share one).
    pause: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..3usize,
        prop::collection::vec((0..5usize, 0..4u8), 1..4),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(user, changes, checkpoint, pause)| Step {
            user,
            changes,
            checkpoint,
            pause,
        })
}

/// What `items_at` promises: the last seq and every item, every field, tombstones included.
fn items_of(s: &UserState) -> (u64, Vec<keepsake_model::ItemState>) {
    let mut items: Vec<_> = s.items().cloned().collect();
    items.sort_by_key(|i| i.item_id);
    (s.last_seq(), items)
}

async fn check(steps: Vec<Step>, background: bool, moments: Vec<prop::sample::Index>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let cfg = LogConfig {
        checkpoint_every_events: if background { 4 } else { u64::MAX },
        checkpoint_interval: Duration::from_millis(if background { 5 } else { 3_600_000 }),
        ..fast_config()
    };
    let log = open(store.clone(), 1, cfg).await.expect("open");
    let users: Vec<_> = (0..3).map(|_| user()).collect();
    let items: Vec<_> = (0..5).map(|_| item()).collect();
    for (i, s) in steps.iter().enumerate() {
        if s.pause {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let changes = s
            .changes
            .iter()
            .map(|&(it, op)| match op {
                0 | 1 => put(items[it], json!({"step": i, "op": op})),
                2 => change(
                    Kind::Note,
                    items[it],
                    None,
                    ChangeBody::patch(json!({"p": i})),
                ),
                _ => change(Kind::Note, items[it], None, ChangeBody::Delete),
            })
            .collect();
        log.push(push_of(users[s.user], changes))
            .await
            .expect("push");
        if s.checkpoint {
            let prev = list_checkpoints(store.as_ref(), 0)
                .await
                .expect("list")
                .into_iter()
                .filter(|c| *c <= log.head(0))
                .max();
            let head = log.head(0);
            if prev != Some(head) {
                write_checkpoint(&store, 0, prev, head, 2)
                    .await
                    .expect("checkpoint");
            }
        }
    }
    let wanted: std::collections::HashSet<_> = users.iter().copied().collect();
    for u in &users {
        let (events, _) = read_user(store.clone(), 0, *u, UpTo::End)
            .await
            .expect("read");
        if events.is_empty() {
            continue;
        }
        for m in &moments {
            let k = m.index(events.len() + 1);
            // By seq: after the first k events.
            let want = UserState::replay(&events[..k]).expect("replay");
            let got = log
                .user_at(u, UpTo::Seq(k as u64))
                .await
                .expect("as of seq");
            assert_eq!(got, want, "as_of_seq {k}");
            let items = log
                .items_at(u, UpTo::Seq(k as u64))
                .await
                .expect("items as of seq");
            assert_eq!(items_of(&items), items_of(&want), "items_at seq {k}");
            // The audit's read (checkpointed segments by statistics, the tail by the index).
            let read = log
                .user_events(u, UpTo::Seq(k as u64))
                .await
                .expect("user events");
            assert_eq!(read, events[..k].to_vec(), "user_events up to seq {k}");
            // By time: at an event's recorded time, and just before it.
            let e = &events[k.min(events.len() - 1)];
            for t in [
                e.recorded_at,
                e.recorded_at - chrono::Duration::microseconds(1),
            ] {
                let upto: Vec<_> = events
                    .iter()
                    .filter(|x| x.recorded_at <= t)
                    .cloned()
                    .collect();
                let want = UserState::replay(&upto).expect("replay");
                let got = log.user_at(u, UpTo::Time(t)).await.expect("as of time");
                assert_eq!(got, want, "as_of {t}");
                let items = log.items_at(u, UpTo::Time(t)).await.expect("items");
                assert_eq!(items_of(&items), items_of(&want), "items_at {t}");
                let read = log.user_events(u, UpTo::Time(t)).await.expect("events");
                assert_eq!(read, upto, "user_events up to {t}");
                // The one-fold-per-shard read of fleet restores agrees, for every user at once.
                let all = log.users_at(0, &wanted, t).await.expect("users at");
                assert_eq!(
                    all.get(u).cloned().unwrap_or_default(),
                    want,
                    "users_at {t}"
                );
            }
        }
    }
    log.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn as_of_equals_a_replay_over_random_histories_and_checkpoints(
        steps in prop::collection::vec(step(), 1..40),
        background in any::<bool>(),
        moments in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(check(steps, background, moments));
    }
}
