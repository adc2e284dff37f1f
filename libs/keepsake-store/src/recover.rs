//! Writing a lost descriptor back: what `keepsake recover-descriptor` is built on.
//!
//! A store whose `keepsake.json` is gone still holds its log under `shards/<s>/`. The shard
//! count can be read off the listing only when it is unambiguous: shards `0..=highest` all hold
//! data, and the count is `highest + 1`. With a shard in between holding nothing, the shards past
//! the highest one seen may hold nothing as well, and the count must come from the operator
//! ([`recovered_shard_count`]). The store id cannot be read off the data at all (segments do
//! not carry it): the operator gives the old one, so that devices' sync tokens keep working, or
//! asks for a new one. The descriptor is written create-only ([`recover_descriptor`]).

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use keepsake_model::{Clock, StoreId};
use object_store::ObjectStore;
use serde::Serialize;

use crate::descriptor::{
    DESCRIPTOR_VERSION, Descriptor, MAX_SHARDS, create_descriptor, find_data, read_descriptor,
};
use crate::error::{RecoverError, StoreError};
use crate::keys::{self, Key};

/// What a store's `shards/` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShardSurvey {
    /// Shards holding at least one of their objects (segment, checkpoint or history object).
    pub present: BTreeSet<u32>,
    /// Names under `shards/` that are no shard of Keepsake's (not counted).
    pub foreign: Vec<String>,
}

impl ShardSurvey {
    /// The highest shard holding data.
    pub fn highest(&self) -> Option<u32> {
        self.present.last().copied()
    }

    /// The shards below the highest one that hold nothing.
    pub fn missing(&self) -> Vec<u32> {
        self.highest()
            .map(|h| (0..h).filter(|s| !self.present.contains(s)).collect())
            .unwrap_or_default()
    }
}

/// Shards listed at once by [`survey_shards`].
const SURVEY_CONCURRENCY: usize = 16;

/// Lists which shards hold data: one delimiter LIST of `shards/`, then, per shard directory, one
/// LIST of which only the first entries are read (a shard counts once one object under it parses
/// as a key of that shard; an empty directory of a file store does not count).
pub async fn survey_shards(store: &dyn ObjectStore) -> Result<ShardSurvey, StoreError> {
    let listed = store
        .list_with_delimiter(Some(&keys::shards_prefix()))
        .await
        .map_err(StoreError::os("list the shards"))?;
    let mut survey = ShardSurvey {
        foreign: listed
            .objects
            .iter()
            .map(|o| o.location.to_string())
            .collect(),
        ..ShardSurvey::default()
    };
    let mut candidates = Vec::new();
    for p in listed.common_prefixes {
        match keys::parse_shard_prefix(&p) {
            Some(s) => candidates.push(s),
            None => survey.foreign.push(format!("{p}/")),
        }
    }
    let mut held = futures::stream::iter(candidates)
        .map(|s| async move { holds_shard_data(store, s).await.map(|h| (s, h)) })
        .buffer_unordered(SURVEY_CONCURRENCY);
    while let Some(r) = held.next().await {
        let (s, holds) = r?;
        if holds {
            survey.present.insert(s);
        }
    }
    survey.foreign.sort();
    Ok(survey)
}

/// True once an object under `shards/<s>/` parses as one of shard `s`'s keys.
async fn holds_shard_data(store: &dyn ObjectStore, s: u32) -> Result<bool, StoreError> {
    let mut objects = store.list(Some(&keys::shard_prefix(s)));
    while let Some(o) = objects
        .try_next()
        .await
        .map_err(StoreError::os("list a shard"))?
    {
        if let Some(
            Key::Segment { shard, .. }
            | Key::Checkpoint { shard, .. }
            | Key::Manifest { shard, .. }
            | Key::Part { shard, .. }
            | Key::History { shard, .. }
            | Key::HistoryVerified { shard, .. }
            | Key::Frontier { shard, .. }
            | Key::Owner { shard, .. },
        ) = keys::parse(&o.location)
            && shard == s
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where a recovered descriptor's shard count came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CountFrom {
    /// The highest shard holding data, plus one (every shard below it holds data too).
    Listing,
    /// The operator (`--shards`), checked against the listing.
    Operator,
}

/// The shard count to recover: `asked` (the operator's) if given, which must cover every shard
/// holding data; otherwise the highest shard holding data plus one, but only when every shard
/// below it holds data too (else the shards past it may be empty, and the count cannot be told).
pub fn recovered_shard_count(
    survey: &ShardSurvey,
    asked: Option<u32>,
) -> Result<(u32, CountFrom), RecoverError> {
    if let Some(h) = survey.highest()
        && h >= MAX_SHARDS
    {
        return Err(RecoverError::ShardBeyondMax { shard: h });
    }
    match (asked, survey.highest()) {
        (Some(n), _) if n == 0 || n > MAX_SHARDS => Err(RecoverError::ShardCountOutOfRange(n)),
        (Some(n), Some(h)) if n <= h => Err(RecoverError::TooFewShards {
            asked: n,
            highest: h,
        }),
        (Some(n), _) => Ok((n, CountFrom::Operator)),
        (None, None) => Err(RecoverError::NoShards),
        (None, Some(h)) => {
            let missing = survey.missing();
            if missing.is_empty() {
                Ok((h + 1, CountFrom::Listing))
            } else {
                Err(RecoverError::ShardsMissing {
                    highest: h,
                    missing,
                })
            }
        }
    }
}

/// What [`recover_descriptor`] did (or, on a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct Recovered {
    /// The descriptor written.
    pub descriptor: Descriptor,
    /// Where its shard count came from.
    pub shard_count_from: CountFrom,
    /// What the shards hold.
    pub survey: ShardSurvey,
    /// False on a dry run.
    pub written: bool,
}

/// What to recover with.
#[derive(Clone, Copy, Debug)]
pub struct RecoverOptions {
    /// The store id to write: the old one (devices' sync tokens keep working) or a new one.
    pub store_id: StoreId,
    /// The operator's shard count, if given.
    pub shards: Option<u32>,
    /// Work out the descriptor without writing it.
    pub dry_run: bool,
}

/// Works out the lost descriptor of a store with data and writes it create-only. Refuses when
/// the store has a descriptor (or gets one meanwhile), holds no data, or its shard count cannot
/// be told ([`recovered_shard_count`]). `check` runs between working the descriptor out and
/// writing it (the caller's own checks of it against the data, whose findings are returned
/// alongside); an error there writes nothing.
pub async fn recover_descriptor<F, Fut, T, E>(
    store: &dyn ObjectStore,
    opts: RecoverOptions,
    clock: &dyn Clock,
    check: F,
) -> Result<(Recovered, T), E>
where
    F: FnOnce(Descriptor, ShardSurvey) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: From<RecoverError>,
{
    if let Some(d) = read_descriptor(store).await.map_err(RecoverError::from)? {
        return Err(RecoverError::DescriptorExists {
            store_id: d.store_id,
            shard_count: d.shard_count,
        }
        .into());
    }
    if find_data(store)
        .await
        .map_err(RecoverError::from)?
        .is_none()
    {
        return Err(RecoverError::Empty.into());
    }
    let survey = survey_shards(store).await.map_err(RecoverError::from)?;
    let (shard_count, shard_count_from) = recovered_shard_count(&survey, opts.shards)?;
    let descriptor = Descriptor {
        format_version: DESCRIPTOR_VERSION,
        store_id: opts.store_id,
        shard_count,
        created_at: clock.now(),
    };
    let checked = check(descriptor.clone(), survey.clone()).await?;
    if !opts.dry_run
        && !create_descriptor(store, &descriptor)
            .await
            .map_err(RecoverError::from)?
    {
        let (store_id, shard_count) = read_descriptor(store)
            .await
            .map_err(RecoverError::from)?
            .map_or((descriptor.store_id, 0), |d| (d.store_id, d.shard_count));
        return Err(RecoverError::DescriptorExists {
            store_id,
            shard_count,
        }
        .into());
    }
    let recovered = Recovered {
        descriptor,
        shard_count_from,
        survey,
        written: !opts.dry_run,
    };
    Ok((recovered, checked))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keepsake_model::ManualClock;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};
    use uuid::Uuid;

    use super::*;

    fn survey(present: &[u32]) -> ShardSurvey {
        ShardSurvey {
            present: present.iter().copied().collect(),
            foreign: Vec::new(),
        }
    }

    #[test]
    fn the_shard_count_is_read_off_the_listing_only_when_unambiguous() {
        assert_eq!(
            recovered_shard_count(&survey(&[0, 1, 2, 3]), None).ok(),
            Some((4, CountFrom::Listing))
        );
        assert_eq!(
            recovered_shard_count(&survey(&[0]), None).ok(),
            Some((1, CountFrom::Listing))
        );
        match recovered_shard_count(&survey(&[0, 2, 5]), None) {
            Err(RecoverError::ShardsMissing { highest, missing }) => {
                assert_eq!((highest, missing), (5, vec![1, 3, 4]));
            }
            other => panic!("{other:?}"),
        }
        match recovered_shard_count(&survey(&[]), None) {
            Err(RecoverError::NoShards) => {}
            other => panic!("{other:?}"),
        }
        // The operator's count, when it covers every shard holding data.
        assert_eq!(
            recovered_shard_count(&survey(&[0, 2, 5]), Some(8)).ok(),
            Some((8, CountFrom::Operator))
        );
        assert_eq!(
            recovered_shard_count(&survey(&[0, 1]), Some(4)).ok(),
            Some((4, CountFrom::Operator))
        );
        assert_eq!(
            recovered_shard_count(&survey(&[]), Some(4)).ok(),
            Some((4, CountFrom::Operator))
        );
        match recovered_shard_count(&survey(&[0, 1, 2]), Some(2)) {
            Err(RecoverError::TooFewShards { asked, highest }) => {
                assert_eq!((asked, highest), (2, 2))
            }
            other => panic!("{other:?}"),
        }
        for bad in [0, MAX_SHARDS + 1] {
            assert!(matches!(
                recovered_shard_count(&survey(&[0]), Some(bad)),
                Err(RecoverError::ShardCountOutOfRange(_))
            ));
        }
        assert!(matches!(
            recovered_shard_count(&survey(&[0, MAX_SHARDS]), Some(MAX_SHARDS)),
            Err(RecoverError::ShardBeyondMax { .. })
        ));
    }

    async fn put(store: &InMemory, key: &str) {
        store
            .put(&Path::from(key), PutPayload::from_static(b"x"))
            .await
            .expect("put");
    }

    #[tokio::test]
    async fn the_survey_counts_shards_holding_their_own_objects() {
        let store = InMemory::new();
        put(&store, "shards/0/segments/00000000000000000001.parquet").await;
        put(&store, "shards/1/checkpoints/00000000000000000004.parquet").await;
        put(
            &store,
            "shards/3/history/00000000000000000001-00000000000000000009.parquet",
        )
        .await;
        // Not shards of Keepsake's, or nothing Keepsake writes: not counted, reported.
        put(&store, "shards/4/notes.txt").await;
        put(&store, "shards/05/segments/00000000000000000001.parquet").await;
        put(&store, "shards/backup/x").await;
        put(&store, "shards/README").await;
        let s = survey_shards(&store).await.expect("survey");
        assert_eq!(s.present, BTreeSet::from([0, 1, 3]));
        assert_eq!(s.missing(), vec![2]);
        assert_eq!(
            s.foreign,
            vec!["shards/05/", "shards/README", "shards/backup/"]
        );
    }

    #[tokio::test]
    async fn recovery_refuses_a_store_with_a_descriptor_or_without_data() {
        let store = Arc::new(InMemory::new());
        let clock = ManualClock::at_epoch_2026();
        let opts = RecoverOptions {
            store_id: StoreId(Uuid::from_u128(7)),
            shards: None,
            dry_run: false,
        };
        let ok = |_, _| async { Ok::<(), RecoverError>(()) };
        match recover_descriptor(store.as_ref(), opts, &clock, ok).await {
            Err(RecoverError::Empty) => {}
            other => panic!("an empty store has nothing to recover: {other:?}"),
        }
        // Devices but no shard data: only with the operator's count.
        put(
            &store,
            "devices/00000000-0000-0000-0000-000000000001/00000000-0000-0000-0000-000000000002.json",
        )
        .await;
        match recover_descriptor(store.as_ref(), opts, &clock, ok).await {
            Err(RecoverError::NoShards) => {}
            other => panic!("{other:?}"),
        }
        let dry = RecoverOptions {
            shards: Some(3),
            dry_run: true,
            ..opts
        };
        let (r, ()) = recover_descriptor(store.as_ref(), dry, &clock, ok)
            .await
            .expect("a dry run");
        assert!(!r.written && r.descriptor.shard_count == 3);
        assert_eq!(read_descriptor(store.as_ref()).await.expect("read"), None);
        // A failed check writes nothing.
        let refuse = |_, _| async { Err::<(), _>(RecoverError::NoShards) };
        assert!(
            recover_descriptor(
                store.as_ref(),
                RecoverOptions {
                    dry_run: false,
                    ..dry
                },
                &clock,
                refuse
            )
            .await
            .is_err()
        );
        assert_eq!(read_descriptor(store.as_ref()).await.expect("read"), None);
        let (r, ()) = recover_descriptor(
            store.as_ref(),
            RecoverOptions {
                dry_run: false,
                ..dry
            },
            &clock,
            ok,
        )
        .await
        .expect("recovered");
        assert!(r.written);
        assert_eq!(
            read_descriptor(store.as_ref()).await.expect("read"),
            Some(r.descriptor.clone())
        );
        match recover_descriptor(store.as_ref(), dry, &clock, ok).await {
            Err(RecoverError::DescriptorExists {
                store_id,
                shard_count: 3,
            }) => assert_eq!(store_id, opts.store_id),
            other => panic!("a descriptor is never replaced: {other:?}"),
        }
    }
}
