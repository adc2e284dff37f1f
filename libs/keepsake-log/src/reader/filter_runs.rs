//! Reading filter runs ([`keepsake_segment::encode_filter_run`]): the sealed change-id filter
//! blocks that parts of checkpoint format 6 leave out. A state read to take pushes gets them
//! attached ([`Checkpoint::user_with`](super::Checkpoint::user_with), `Checkpoint::all`);
//! a read of items, or a checkpoint's fold (which writes only the blocks sealed since), does
//! not need them.
//!
//! Invariant: a user's rows in the runs a manifest names join end to start from block 0 up to
//! the first block its part row holds, exactly; anything else makes the checkpoint unusable
//! ([`LogError::Corrupt`]), never a state with a hole in its filter (a hole would answer
//! "not applied" for an id of the log, and a resend would be applied twice).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use keepsake_model::{ChangeFilter, UserId, UserState};
use keepsake_segment::{Manifest, PartRef};
use keepsake_store::keys;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::PageIndexPolicy;

use super::Tag;
use super::footers::{Footers, ObjectMeta};
use super::objects::SegmentReader;
use crate::error::{LogError, store_err};

/// Joins one user's run rows (any order) into its sealed blocks `0..upto`; `None` unless they
/// meet end to start from block 0 and end at `upto`.
pub fn join_sealed(rows: Vec<ChangeFilter>, upto: usize) -> Option<ChangeFilter> {
    if rows.is_empty() {
        return (upto == 0).then(ChangeFilter::default);
    }
    ChangeFilter::join(rows).filter(|j| j.is_whole() && j.blocks() == upto)
}

/// One run of `m`, as read.
struct RunRead<'a> {
    m: &'a Manifest,
    run: &'a PartRef,
}

impl RunRead<'_> {
    fn path(&self) -> object_store::path::Path {
        keys::part(self.m.shard, self.run.written_by, self.run.digest)
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> LogError {
        LogError::corrupt(
            self.m.shard,
            self.m.segment,
            format!("filter run {}: {what}", self.path()),
        )
    }

    /// A run named by the manifest and not there makes the checkpoint unusable.
    fn missing(&self, e: object_store::Error) -> LogError {
        match e {
            object_store::Error::NotFound { .. } => {
                self.corrupt("named by the checkpoint but missing")
            }
            e => store_err(format!(
                "read checkpoint {} of shard {} ({})",
                self.m.segment,
                self.m.shard,
                self.path()
            ))(e),
        }
    }

    fn check(&self, meta: &keepsake_segment::FilterRunMeta) -> Result<(), LogError> {
        if meta.shard != self.m.shard || meta.segment != self.run.written_by {
            return Err(self.corrupt("names another shard or segment"));
        }
        Ok(())
    }

    fn parquet_error(&self, e: parquet::errors::ParquetError) -> LogError {
        match e {
            parquet::errors::ParquetError::External(_) => LogError::Unavailable {
                shard: self.m.shard,
                reason: format!("filter run {}: {e}", self.path()),
            },
            other => self.corrupt(other),
        }
    }

    /// Every row, the bytes checked against the digest the run is named by.
    async fn all(&self, store: &dyn ObjectStore) -> Result<Vec<(UserId, ChangeFilter)>, LogError> {
        let got = store.get(&self.path()).await.map_err(|e| self.missing(e))?;
        let bytes = got
            .bytes()
            .await
            .map_err(store_err(format!("read filter run {}", self.path())))?;
        if keepsake_segment::part_digest(&bytes) != self.run.digest {
            return Err(self.corrupt("its bytes do not have the digest it is named by"));
        }
        let (meta, rows) =
            tokio::task::spawn_blocking(move || keepsake_segment::decode_filter_run(bytes))
                .await
                .map_err(|e| self.corrupt(e))?
                .map_err(|e| self.corrupt(e))?;
        self.check(&meta)?;
        if meta.rows != self.run.users {
            return Err(self.corrupt(format!(
                "holds {} rows, its manifest says {}",
                meta.rows, self.run.users
            )));
        }
        Ok(rows)
    }

    /// The run's footer and page index: from `footers` if there, else read (and kept there).
    async fn footer(
        &self,
        store: &Arc<dyn ObjectStore>,
        footers: Option<&Footers>,
    ) -> Result<Arc<ObjectMeta>, LogError> {
        let key = (self.run.written_by, self.run.digest);
        if let Some(meta) = footers.and_then(|f| f.get(key)) {
            return Ok(meta);
        }
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let mut reader = self.reader(store.clone());
        let loaded = match ArrowReaderMetadata::load_async(&mut reader, options).await {
            Ok(l) => l,
            Err(e) => return Err(self.told_apart(store.as_ref(), self.parquet_error(e)).await),
        };
        let kvs = loaded.metadata().file_metadata().key_value_metadata();
        let meta = keepsake_segment::filter_run_meta(kvs).map_err(|e| self.corrupt(e))?;
        self.check(&meta)?;
        let users = keepsake_segment::filter_run_users(kvs).map_err(|e| self.corrupt(e))?;
        let meta = Arc::new(ObjectMeta {
            size: self.run.bytes,
            loaded,
            users,
        });
        if let Some(f) = footers {
            f.put(key, meta.clone());
        }
        Ok(meta)
    }

    /// A range read fails as the store's errors: one of a run that is gone is told apart.
    async fn told_apart(&self, store: &dyn ObjectStore, e: LogError) -> LogError {
        if let LogError::Unavailable { .. } = e
            && let Err(gone @ object_store::Error::NotFound { .. }) = store.head(&self.path()).await
        {
            return self.missing(gone);
        }
        e
    }

    fn reader(&self, store: Arc<dyn ObjectStore>) -> SegmentReader {
        SegmentReader {
            store,
            path: self.path(),
            size: self.run.bytes,
            whole: None,
            tag: Tag::ANY,
        }
    }

    /// The user's rows: only the pages that may hold them.
    async fn user(
        &self,
        store: Arc<dyn ObjectStore>,
        footers: Option<&Footers>,
        user: UserId,
    ) -> Result<Vec<ChangeFilter>, LogError> {
        let meta = self.footer(&store, footers).await?;
        // Most runs do not hold a given user: their footer says so, and no page is read.
        if meta.users.as_ref().is_some_and(|b| !b.may_hold(&user)) {
            return Ok(Vec::new());
        }
        let md = meta.loaded.metadata();
        let Some(plan) = keepsake_segment::plan_user_read(md, &user) else {
            return Ok(Vec::new());
        };
        let filter = keepsake_segment::user_row_filter(md, &user);
        let read = async {
            ParquetRecordBatchStreamBuilder::new_with_metadata(
                self.reader(store.clone()),
                meta.loaded.clone(),
            )
            .with_row_groups(plan.row_groups)
            .with_row_selection(plan.selection)
            .with_row_filter(filter)
            .build()?
            .try_collect::<Vec<_>>()
            .await
        };
        let batches = match read.await {
            Ok(b) => b,
            Err(e) => return Err(self.told_apart(store.as_ref(), self.parquet_error(e)).await),
        };
        let rows = keepsake_segment::decode_filter_run_batches(batches, Some(&user))
            .map_err(|e| self.corrupt(e))?;
        Ok(rows.into_iter().map(|(_, f)| f).collect())
    }
}

/// Every row of run `run` of `m`, checked against what `m` says of it.
pub async fn read_filter_run(
    store: &dyn ObjectStore,
    m: &Manifest,
    run: &PartRef,
) -> Result<Vec<(UserId, ChangeFilter)>, LogError> {
    RunRead { m, run }.all(store).await
}

/// `user`'s sealed blocks `0..upto` from `m`'s runs: its rows of each run (read at once, by
/// pages, through `footers`), joined.
pub async fn read_sealed(
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    user: UserId,
    upto: usize,
    footers: Option<&Footers>,
) -> Result<ChangeFilter, LogError> {
    let runs: Vec<&PartRef> = m.filter_runs.iter().collect();
    read_sealed_from(store, m, &runs, user, upto, footers, Vec::new()).await
}

/// `user`'s sealed blocks `0..upto`: its rows of `runs` (of `m`, read at once, by pages,
/// through `footers`) and `held` (its rows of `m`'s other runs, read before), joined.
async fn read_sealed_from(
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    runs: &[&PartRef],
    user: UserId,
    upto: usize,
    footers: Option<&Footers>,
    mut held: Vec<ChangeFilter>,
) -> Result<ChangeFilter, LogError> {
    // Every run at once: a cold user's first read waits for one round trip, not one a run.
    let reads: Vec<_> = runs
        .iter()
        .map(|run| {
            let store = store.clone();
            async move { RunRead { m, run }.user(store, footers, user).await }
        })
        .collect();
    let rows = futures::future::try_join_all(reads).await?;
    held.extend(rows.into_iter().flatten());
    join_sealed(held, upto).ok_or_else(|| {
        LogError::corrupt(
            m.shard,
            m.segment,
            format!("the filter runs of user {user} do not hold its sealed blocks 0..{upto}"),
        )
    })
}

/// [`attach_sealed_many`] reads a run whole when the users it wants number at least 1/this of
/// the run's rows: one GET of at most this many rows a wanted user, instead of a GET or more
/// of each wanted user's pages.
const WHOLE_RUN_SHARE: u64 = 16;

/// Attaches to each of `states` (users of `m`) lacking sealed blocks its blocks from the runs.
/// A run with few rows for the users wanted is read whole, once (a fleet restore's fold of a
/// shard wants hundreds of users: a ranged read of each one's pages of each run made its reads
/// of runs grow with its users, and its restores 0.72x those of format 5); the others by each
/// user's pages, `concurrency` users at a time, each run's footer read once through `footers`.
pub(super) async fn attach_sealed_many(
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    states: &mut [(UserId, UserState)],
    footers: &Footers,
    concurrency: usize,
) -> Result<(), LogError> {
    let wanted: std::collections::HashMap<UserId, (usize, usize)> = states
        .iter()
        .enumerate()
        .filter(|(_, (_, s))| s.sealed_missing() > 0)
        .map(|(i, (u, s))| (*u, (i, s.sealed_missing())))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let (whole, by_pages): (Vec<&PartRef>, Vec<&PartRef>) = m
        .filter_runs
        .iter()
        .partition(|run| (wanted.len() as u64).saturating_mul(WHOLE_RUN_SHARE) >= run.users);
    // The wanted users' rows of the runs read whole, the others' rows dropped as each is read.
    let mut rows: std::collections::HashMap<UserId, Vec<ChangeFilter>> =
        std::collections::HashMap::new();
    let reads: Vec<_> = whole
        .into_iter()
        .map(|run| {
            let store = store.clone();
            async move { RunRead { m, run }.all(store.as_ref()).await }
        })
        .collect();
    let mut reads = futures::stream::iter(reads).buffer_unordered(concurrency.max(1));
    while let Some(run) = reads.try_next().await? {
        for (u, f) in run {
            if wanted.contains_key(&u) {
                rows.entry(u).or_default().push(f);
            }
        }
    }
    let joins: Vec<_> = wanted
        .into_iter()
        .map(|(u, (i, missing))| {
            let store = store.clone();
            let held = rows.remove(&u).unwrap_or_default();
            let by_pages = &by_pages;
            async move {
                let sealed =
                    read_sealed_from(store, m, by_pages, u, missing, Some(footers), held).await?;
                Ok::<_, LogError>((i, u, sealed))
            }
        })
        .collect();
    let mut joins = futures::stream::iter(joins).buffer_unordered(concurrency.max(1));
    while let Some((i, u, sealed)) = joins.try_next().await? {
        if let Some((_, state)) = states.get_mut(i)
            && !state.attach_sealed(sealed)
        {
            return Err(LogError::corrupt(
                m.shard,
                m.segment,
                format!("the sealed filter blocks of user {u} do not fit"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_model::ChangeId;

    fn filter(seqs: u64) -> ChangeFilter {
        let mut f = ChangeFilter::default();
        for seq in 1..=seqs {
            f.insert(seq, &ChangeId(uuid::Uuid::from_u128(u128::from(seq) * 31)));
        }
        f
    }

    #[test]
    fn rows_join_only_end_to_start_from_the_first_block() {
        let whole = filter(32 * 5);
        let mut rest = whole.clone();
        let a = rest.split_before(2).expect("0..2");
        let b = rest.split_before(3).expect("2..3");
        let c = rest; // 3..5
        assert_eq!(
            join_sealed(vec![c.clone(), a.clone(), b.clone()], 5),
            Some(whole.clone())
        );
        assert_eq!(join_sealed(Vec::new(), 0), Some(ChangeFilter::default()));
        // A hole, a row twice, or not reaching (or passing) the part's first block: refused.
        assert_eq!(join_sealed(vec![a.clone(), c.clone()], 5), None);
        assert_eq!(
            join_sealed(vec![a.clone(), b.clone(), b.clone(), c.clone()], 5),
            None
        );
        assert_eq!(join_sealed(vec![a.clone(), b.clone()], 5), None);
        assert_eq!(join_sealed(vec![a, b, c], 4), None);
        assert_eq!(join_sealed(Vec::new(), 1), None);
    }
}
