//! Reading a checkpoint in either of its forms: whole, one Parquet object (formats 1-3, still
//! read, no longer written), or a manifest naming parts (format 4,
//! [`keepsake_segment::Manifest`]). Every reader of a checkpoint opens it here, so the two
//! forms answer alike: a user's state, or every user's.
//!
//! Each part read is checked against the manifest that names it: a whole read, its shard, the
//! checkpoint that wrote it, its user count, its digest, and that its users are the ones the
//! manifest places in it (a delta's listed users; a base part's range); a one-user read, its
//! shard and writer, and that a delta listing the user holds it. A part that is missing while
//! its manifest is there makes the checkpoint unusable ([`LogError::Corrupt`]), never an empty
//! state: readers then use an older checkpoint or the log.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use keepsake_model::{IdMap, StateRead, UserId, UserState};
use keepsake_segment::{Manifest, PartRef};
use keepsake_store::keys;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::PageIndexPolicy;

use super::footers::{Footers, ObjectMeta};
use super::objects::SegmentReader;
use super::{CheckpointForm, Tag};
use crate::error::{LogError, store_err};
use keepsake_segment::plan_user_read;

/// Parts of one checkpoint read at once by a whole read.
const PART_READS_AT_ONCE: usize = 4;

/// [`Checkpoint::users`] reads a part whole when asked for at least 1/this of its users, over
/// the asking fold ([`WholeParts::progress`]).
const WHOLE_PART_SHARE: u64 = 16;

/// A fold's count of users asked for, projected over the whole fold, is at most this many
/// times the count so far: a fold whose writers are a few busy users meets them all in its
/// first runs, and a projection by the fold's progress alone would read every part they touch
/// whole (for a thousand busy users, a shard's whole state, held until the checkpoint ends).
const MAX_PROJECTION: u128 = 4;

/// A checkpoint opened for reading.
#[derive(Clone, Debug)]
pub enum Checkpoint {
    /// Formats 1-3: one object.
    Whole {
        /// The shard.
        shard: u32,
        /// The last segment it includes.
        n: u64,
    },
    /// Format 4: a manifest naming parts.
    Parts(Arc<Manifest>),
}

/// Opens checkpoint `n` of `shard`: its manifest if there is one, else the whole object. A
/// checkpoint in neither form is [`LogError::Store`] with `NotFound` (retention deleted it).
pub async fn open_checkpoint(
    store: &dyn ObjectStore,
    shard: u32,
    n: u64,
) -> Result<Checkpoint, LogError> {
    match open_checkpoint_as(store, shard, n, CheckpointForm::Manifest).await {
        Err(LogError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }) => {
            store
                .head(&keys::checkpoint(shard, n))
                .await
                .map_err(store_err(format!("read checkpoint {n} of shard {shard}")))?;
            Ok(Checkpoint::Whole { shard, n })
        }
        other => other,
    }
}

/// Opens checkpoint `n` of `shard` in the form given (verify reads each form listed; a whole
/// one is not looked at until it is read).
pub async fn open_checkpoint_as(
    store: &dyn ObjectStore,
    shard: u32,
    n: u64,
    form: CheckpointForm,
) -> Result<Checkpoint, LogError> {
    if form == CheckpointForm::Whole {
        return Ok(Checkpoint::Whole { shard, n });
    }
    let context = || format!("read checkpoint {n} of shard {shard}");
    let got = store
        .get(&keys::manifest(shard, n))
        .await
        .map_err(store_err(context()))?;
    let bytes = got.bytes().await.map_err(store_err(context()))?;
    let m = keepsake_segment::decode_manifest(&bytes)
        .map_err(|e| LogError::corrupt(shard, n, format!("checkpoint manifest: {e}")))?;
    if m.shard != shard || m.segment != n {
        return Err(LogError::corrupt(
            shard,
            n,
            "the checkpoint manifest names another shard or segment",
        ));
    }
    Ok(Checkpoint::Parts(Arc::new(m)))
}

/// Whether checkpoint `n` of `shard` is in the store, in either form.
pub async fn checkpoint_exists(
    store: &dyn ObjectStore,
    shard: u32,
    n: u64,
) -> Result<bool, LogError> {
    for path in [keys::manifest(shard, n), keys::checkpoint(shard, n)] {
        match store.head(&path).await {
            Ok(_) => return Ok(true),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(store_err(format!(
                    "look for checkpoint {n} of shard {shard}"
                ))(e));
            }
        }
    }
    Ok(false)
}

impl Checkpoint {
    /// The last segment it includes.
    pub fn segment(&self) -> u64 {
        match self {
            Checkpoint::Whole { n, .. } => *n,
            Checkpoint::Parts(m) => m.segment,
        }
    }

    /// The object that says what it is (the manifest, or the whole checkpoint).
    pub fn path(&self) -> Path {
        match self {
            Checkpoint::Whole { shard, n } => keys::checkpoint(*shard, *n),
            Checkpoint::Parts(m) => keys::manifest(m.shard, m.segment),
        }
    }

    /// One user's state: only the pages of one object that may hold the user's rows (with
    /// `with_changes` false, not the pages holding nothing but change ids). A user the
    /// checkpoint does not hold has the empty state.
    pub async fn user(
        &self,
        store: Arc<dyn ObjectStore>,
        user: UserId,
        with_changes: bool,
    ) -> Result<UserState, LogError> {
        self.user_with(store, user, with_changes, None).await
    }

    /// [`Checkpoint::user`], keeping each part's footer in `footers` for the next user's read
    /// (parts are immutable: a footer read once serves every later load from that part).
    pub async fn user_with(
        &self,
        store: Arc<dyn ObjectStore>,
        user: UserId,
        with_changes: bool,
        footers: Option<&Footers>,
    ) -> Result<UserState, LogError> {
        match self {
            Checkpoint::Whole { shard, n } => {
                let read = ObjectRead {
                    shard: *shard,
                    checkpoint: *n,
                    path: keys::checkpoint(*shard, *n),
                    size: None,
                    written_by: *n,
                    digest: None,
                };
                read.user(store, user, with_changes).await
            }
            Checkpoint::Parts(m) => {
                let Some(part) = m.locate(&user) else {
                    return Ok(UserState::default());
                };
                let read = ObjectRead::part(m, part);
                let state = match footers {
                    None => read.user(store.clone(), user, with_changes).await?,
                    Some(f) => {
                        let meta = read.footer(&store, Some(f), part).await?;
                        let got = read
                            .user_rows(store.clone(), &meta, user, with_changes)
                            .await;
                        read.told_apart(store.as_ref(), got).await?
                    }
                };
                if state.last_seq() == 0 && m.deltas.iter().any(|d| d.part == *part) {
                    return Err(LogError::corrupt(
                        m.shard,
                        m.segment,
                        format!("a delta part lists user {user} but holds no rows of it"),
                    ));
                }
                // A state that may take pushes holds every change id: its sealed filter
                // blocks come from the runs (a read of items does not need them).
                let mut state = state;
                let missing = state.sealed_missing();
                if with_changes && missing > 0 {
                    let sealed = super::read_sealed(store, m, user, missing, footers).await?;
                    if !state.attach_sealed(sealed) {
                        return Err(LogError::corrupt(
                            m.shard,
                            m.segment,
                            format!("the sealed filter blocks of user {user} do not fit"),
                        ));
                    }
                }
                Ok(state)
            }
        }
    }

    /// Several users' states (each user once), with their changes: each part's footer is read
    /// once for all of its users, then each user's pages.
    pub async fn users(
        &self,
        store: Arc<dyn ObjectStore>,
        users: Vec<UserId>,
        concurrency: usize,
        read_whole: &mut WholeParts,
    ) -> Result<Vec<(UserId, UserState)>, LogError> {
        let Checkpoint::Parts(m) = self else {
            return futures::stream::iter(users)
                .map(|u| {
                    let store = store.clone();
                    async move { Ok::<_, LogError>((u, self.user(store, u, true).await?)) }
                })
                .buffer_unordered(concurrency.max(1))
                .try_collect()
                .await;
        };
        let mut by_part: std::collections::BTreeMap<(u64, u128), (PartRef, Vec<UserId>)> =
            std::collections::BTreeMap::new();
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            match m.locate(&u) {
                Some(p) => by_part
                    .entry((p.written_by, p.digest))
                    .or_insert_with(|| (*p, Vec::new()))
                    .1
                    .push(u),
                None => out.push((u, UserState::default())),
            }
        }
        // Parts read whole go one at a time (each holds a part's users until they are given
        // out); the others are read `concurrency` parts at a time: a checkpoint at a million
        // users meets a few changed users in each of dozens of parts (~61 a shard), and a
        // footer and a few pages each, one part after another, made its time grow with them.
        let mut by_pages = Vec::new();
        // In order of their first user asked: a fold that stops before the users of a part it
        // cannot hold ([`WholeParts::capped`]) has read the parts below them.
        let mut parts: Vec<(PartRef, Vec<UserId>)> = by_part.into_values().collect();
        parts.sort_by_key(|(_, us)| us.iter().min().copied());
        for (part, us) in parts {
            let delta = m.deltas.iter().find(|d| d.part == part);
            let key = (part.written_by, part.digest);
            // Many of a part's users, now or over the asking fold: one read of the whole part
            // (each user's pages would decode pages shared by dozens of users again and again,
            // a few GETs each), kept for the users of it asked for later.
            if !read_whole.read.contains_key(&key)
                && read_whole.worth_reading_whole(key, us.len() as u64, part.users)
            {
                if read_whole
                    .cap
                    .is_some_and(|cap| read_whole.held_bytes() >= cap)
                {
                    read_whole.deferred.extend(us);
                    continue;
                }
                let whole = match (delta, m.base.iter().position(|b| b.part == part)) {
                    (Some(d), _) => read_delta_part(store.as_ref(), m, d).await?,
                    (None, Some(i)) => read_base_part(store.as_ref(), m, i).await?,
                    (None, None) => read_part(store.as_ref(), m, &part).await?,
                };
                read_whole.read.insert(key, whole);
                // Counted as it comes: the views give way to it before the next part is read.
                read_whole.publish();
            }
            if let Some(whole) = read_whole.read.get_mut(&key) {
                for u in us {
                    let state = whole.remove(&u).unwrap_or_default();
                    out.push((u, state));
                }
                if read_whole.once {
                    read_whole.read.remove(&key);
                }
                continue;
            }
            by_pages.push((part, us, delta.is_some()));
        }
        let footers = read_whole.footers.clone();
        let read_parts = by_pages.into_iter().map(|(part, us, delta)| {
            let (store, footers) = (store.clone(), footers.clone());
            async move {
                let read = ObjectRead::part(m, &part);
                let meta = read.footer(&store, footers.as_deref(), &part).await?;
                futures::stream::iter(us)
                    .map(|u| {
                        let (store, read, meta) = (store.clone(), &read, &meta);
                        async move {
                            let got = read.user_rows(store.clone(), meta, u, true).await;
                            let state = read.told_apart(store.as_ref(), got).await?;
                            if delta && state.last_seq() == 0 {
                                return Err(LogError::corrupt(
                                    m.shard,
                                    m.segment,
                                    format!("a delta part lists user {u} but holds no rows of it"),
                                ));
                            }
                            Ok((u, state))
                        }
                    })
                    .buffer_unordered(concurrency.max(1))
                    .try_collect::<Vec<(UserId, UserState)>>()
                    .await
            }
        });
        let mut parts = futures::stream::iter(read_parts).buffer_unordered(concurrency.max(1));
        while let Some(states) = parts.try_next().await? {
            out.extend(states);
        }
        if read_whole.sealed {
            // The runs' footers once for all these users (the view's, or read here).
            let local = Footers::default();
            let footers = footers.as_deref().unwrap_or(&local);
            super::filter_runs::attach_sealed_many(
                store.clone(),
                m,
                &mut out,
                footers,
                concurrency,
            )
            .await?;
        }
        Ok(out)
    }

    /// Every user's state, whole (its sealed filter blocks attached from the runs).
    pub async fn all(&self, store: &dyn ObjectStore) -> Result<IdMap<UserId, UserState>, LogError> {
        let mut users = self.all_partial(store).await?;
        if let Checkpoint::Parts(m) = self {
            attach_all_sealed(store, m, &mut users).await?;
        }
        Ok(users)
    }

    /// Every user's state as its part holds it: lacking its sealed filter blocks (format 6),
    /// for its items and id, never for staging changes against.
    pub async fn all_partial(
        &self,
        store: &dyn ObjectStore,
    ) -> Result<IdMap<UserId, UserState>, LogError> {
        match self {
            Checkpoint::Whole { shard, n } => {
                let read = ObjectRead {
                    shard: *shard,
                    checkpoint: *n,
                    path: keys::checkpoint(*shard, *n),
                    size: None,
                    written_by: *n,
                    digest: None,
                };
                Ok(read.all(store).await?.into_iter().collect())
            }
            Checkpoint::Parts(m) => {
                // The base parts hold disjoint ranges; the deltas then overlay it, oldest first.
                let base: Vec<_> = m
                    .base
                    .iter()
                    .enumerate()
                    .map(|(i, _)| read_base_part(store, m, i))
                    .collect();
                let base: Vec<_> = futures::stream::iter(base)
                    .buffered(PART_READS_AT_ONCE)
                    .try_collect()
                    .await?;
                let mut users: IdMap<UserId, UserState> = base.into_iter().flatten().collect();
                let deltas: Vec<_> = m
                    .deltas
                    .iter()
                    .rev()
                    .map(|d| read_delta_part(store, m, d))
                    .collect();
                let deltas: Vec<_> = futures::stream::iter(deltas)
                    .buffered(PART_READS_AT_ONCE)
                    .try_collect()
                    .await?;
                for d in deltas {
                    users.extend(d);
                }
                if users.len() as u64 != m.users {
                    return Err(LogError::corrupt(
                        m.shard,
                        m.segment,
                        format!(
                            "the manifest counts {} users but its parts hold {}",
                            m.users,
                            users.len()
                        ),
                    ));
                }
                Ok(users)
            }
        }
    }
}

/// Attaches to each of `users` (every user of `m`) its sealed filter blocks from `m`'s runs,
/// each run read whole; a run's row of a user that lacks none, or rows that do not join up to
/// the user's part row, make the checkpoint unusable.
async fn attach_all_sealed(
    store: &dyn ObjectStore,
    m: &Manifest,
    users: &mut IdMap<UserId, UserState>,
) -> Result<(), LogError> {
    let mut rows: std::collections::HashMap<UserId, Vec<keepsake_model::ChangeFilter>> =
        std::collections::HashMap::new();
    let runs: Vec<_> = m
        .filter_runs
        .iter()
        .map(|run| super::read_filter_run(store, m, run))
        .collect();
    let runs: Vec<_> = futures::stream::iter(runs)
        .buffered(PART_READS_AT_ONCE)
        .try_collect()
        .await?;
    for (u, f) in runs.into_iter().flatten() {
        rows.entry(u).or_default().push(f);
    }
    for (u, state) in users.iter_mut() {
        let missing = state.sealed_missing();
        let held = rows.remove(u).unwrap_or_default();
        let fits = super::join_sealed(held, missing).is_some_and(|f| state.attach_sealed(f));
        if !fits {
            return Err(LogError::corrupt(
                m.shard,
                m.segment,
                format!("the filter runs of user {u} do not hold its sealed blocks 0..{missing}"),
            ));
        }
    }
    if let Some(u) = rows.keys().next() {
        return Err(LogError::corrupt(
            m.shard,
            m.segment,
            format!("a filter run holds blocks of user {u}, whom no part holds"),
        ));
    }
    Ok(())
}

/// Base part `i` of `m`, checked to hold only users of its range.
pub async fn read_base_part(
    store: &dyn ObjectStore,
    m: &Manifest,
    i: usize,
) -> Result<std::collections::HashMap<UserId, UserState>, LogError> {
    let b = &m.base[i];
    let users = read_part(store, m, &b.part).await?;
    let to = m.base.get(i + 1).map(|next| next.from);
    if let Some(u) = users
        .keys()
        .find(|u| **u < b.from || to.is_some_and(|t| **u >= t))
    {
        return Err(LogError::corrupt(
            m.shard,
            m.segment,
            format!("base part {i} holds user {u}, outside its range"),
        ));
    }
    Ok(users)
}

/// A delta part of `m`, checked to hold exactly the users the manifest lists for it.
pub async fn read_delta_part(
    store: &dyn ObjectStore,
    m: &Manifest,
    d: &keepsake_segment::DeltaPart,
) -> Result<std::collections::HashMap<UserId, UserState>, LogError> {
    let users = read_part(store, m, &d.part).await?;
    let mut held: Vec<_> = users.keys().copied().collect();
    held.sort_unstable();
    if held != d.users {
        return Err(LogError::corrupt(
            m.shard,
            m.segment,
            "a delta part's users are not the ones its manifest lists",
        ));
    }
    Ok(users)
}

/// Every user's state in one part of `m`, checked against what the manifest says of it.
pub async fn read_part(
    store: &dyn ObjectStore,
    m: &Manifest,
    part: &PartRef,
) -> Result<std::collections::HashMap<UserId, UserState>, LogError> {
    let users = ObjectRead::part(m, part).all(store).await?;
    if users.len() as u64 != part.users {
        return Err(LogError::corrupt(
            m.shard,
            m.segment,
            format!(
                "part {:032x} holds {} users, its manifest says {}",
                part.digest,
                users.len(),
                part.users
            ),
        ));
    }
    Ok(users)
}

/// One object holding users' states in the whole-checkpoint format: a whole checkpoint, or a
/// part written by checkpoint `written_by`.
struct ObjectRead {
    shard: u32,
    /// The checkpoint being read (for errors).
    checkpoint: u64,
    path: Path,
    /// Known from the manifest; else a HEAD finds it.
    size: Option<u64>,
    /// The segment the object's own metadata must name.
    written_by: u64,
    /// A part's digest (its name): a whole read checks its bytes against it.
    digest: Option<u128>,
}

impl ObjectRead {
    fn part(m: &Manifest, part: &PartRef) -> Self {
        ObjectRead {
            shard: m.shard,
            checkpoint: m.segment,
            path: keys::part(m.shard, part.written_by, part.digest),
            size: Some(part.bytes),
            written_by: part.written_by,
            digest: Some(part.digest),
        }
    }

    fn context(&self) -> String {
        format!(
            "read checkpoint {} of shard {} ({})",
            self.checkpoint, self.shard, self.path
        )
    }

    /// A part named by a manifest must be there: its absence makes the checkpoint unusable
    /// ([`LogError::Corrupt`] of the checkpoint, which loads answer by reading the log), never
    /// an empty state. (Retention deletes a manifest before the parts only it names, so a
    /// reader that held a deleted manifest finds it gone when it looks, and moves to a newer.)
    fn missing(&self, e: object_store::Error) -> LogError {
        match (&e, self.digest.is_some()) {
            (object_store::Error::NotFound { .. }, true) => LogError::corrupt(
                self.shard,
                self.checkpoint,
                format!("{} is named by the checkpoint but missing", self.path),
            ),
            _ => store_err(self.context())(e),
        }
    }

    fn check_meta(&self, meta: &keepsake_segment::CheckpointMeta) -> Result<(), LogError> {
        if meta.shard != self.shard || meta.segment != self.written_by {
            return Err(LogError::corrupt(
                self.shard,
                self.checkpoint,
                format!("{} names another shard or segment", self.path),
            ));
        }
        Ok(())
    }

    async fn all(
        &self,
        store: &dyn ObjectStore,
    ) -> Result<std::collections::HashMap<UserId, UserState>, LogError> {
        let got = store.get(&self.path).await.map_err(|e| self.missing(e))?;
        let bytes = got.bytes().await.map_err(store_err(self.context()))?;
        let (shard, checkpoint) = (self.shard, self.checkpoint);
        if let Some(d) = self.digest
            && keepsake_segment::part_digest(&bytes) != d
        {
            return Err(LogError::corrupt(
                shard,
                checkpoint,
                format!(
                    "{}: its bytes do not have the digest it is named by",
                    self.path
                ),
            ));
        }
        let (meta, users) =
            tokio::task::spawn_blocking(move || keepsake_segment::decode_checkpoint(bytes))
                .await
                .map_err(|e| LogError::corrupt(shard, checkpoint, e))?
                .map_err(|e| LogError::corrupt(shard, checkpoint, format!("checkpoint: {e}")))?;
        self.check_meta(&meta)?;
        Ok(users)
    }

    async fn user(
        &self,
        store: Arc<dyn ObjectStore>,
        user: UserId,
        with_changes: bool,
    ) -> Result<UserState, LogError> {
        let read = async {
            let meta = self.metadata(store.clone()).await?;
            self.user_rows(store.clone(), &meta, user, with_changes)
                .await
        };
        self.told_apart(store.as_ref(), read.await).await
    }

    /// A part's size comes from its manifest, so its reads are range reads, which fail as the
    /// store's errors (unavailable): one that is gone is told apart by a HEAD.
    async fn told_apart<T>(
        &self,
        store: &dyn ObjectStore,
        read: Result<T, LogError>,
    ) -> Result<T, LogError> {
        if let (Err(LogError::Unavailable { .. }), Some(_)) = (&read, self.digest)
            && let Err(e @ object_store::Error::NotFound { .. }) = store.head(&self.path).await
        {
            return Err(self.missing(e));
        }
        read
    }

    fn reader(&self, store: Arc<dyn ObjectStore>, size: u64) -> SegmentReader {
        SegmentReader {
            store,
            path: self.path.clone(),
            size,
            whole: None,
            tag: Tag::ANY,
        }
    }

    fn parquet_error(&self, e: parquet::errors::ParquetError) -> LogError {
        match e {
            parquet::errors::ParquetError::External(_) => LogError::Unavailable {
                shard: self.shard,
                reason: format!("{}: {e}", self.context()),
            },
            other => LogError::corrupt(self.shard, self.checkpoint, format!("checkpoint: {other}")),
        }
    }

    /// Part `part`'s footer: from `footers` if it holds it, else read (and kept there).
    async fn footer(
        &self,
        store: &Arc<dyn ObjectStore>,
        footers: Option<&Footers>,
        part: &PartRef,
    ) -> Result<Arc<ObjectMeta>, LogError> {
        let key = (part.written_by, part.digest);
        if let Some(meta) = footers.and_then(|f| f.get(key)) {
            return Ok(meta);
        }
        let got = self.metadata(store.clone()).await;
        let meta = Arc::new(self.told_apart(store.as_ref(), got).await?);
        if let Some(f) = footers {
            f.put(key, meta.clone());
        }
        Ok(meta)
    }

    /// The object's footer and page index, checked against what it must be; shared by the
    /// reads of several users of one part.
    async fn metadata(&self, store: Arc<dyn ObjectStore>) -> Result<ObjectMeta, LogError> {
        let size = match self.size {
            Some(s) => s,
            None => {
                store
                    .head(&self.path)
                    .await
                    .map_err(|e| self.missing(e))?
                    .size
            }
        };
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let mut reader = self.reader(store, size);
        let loaded = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .map_err(|e| self.parquet_error(e))?;
        let meta = keepsake_segment::checkpoint_meta(
            loaded.metadata().file_metadata().key_value_metadata(),
        )
        .map_err(|e| LogError::corrupt(self.shard, self.checkpoint, format!("checkpoint: {e}")))?;
        self.check_meta(&meta)?;
        Ok(ObjectMeta {
            size,
            loaded,
            users: None,
        })
    }

    /// One user's rows, read with the object's metadata: only the pages that may hold them.
    async fn user_rows(
        &self,
        store: Arc<dyn ObjectStore>,
        meta: &ObjectMeta,
        user: UserId,
        with_changes: bool,
    ) -> Result<UserState, LogError> {
        let md = meta.loaded.metadata();
        let plan = if with_changes {
            plan_user_read(md, &user)
        } else {
            keepsake_segment::plan_user_read_skipping(
                md,
                &user,
                keepsake_segment::ENTRY_COLUMN,
                keepsake_segment::ENTRY_CHANGE.as_bytes(),
            )
        };
        let Some(plan) = plan else {
            return Ok(UserState::default());
        };
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.reader(store, meta.size),
            meta.loaded.clone(),
        );
        // The filter on user_id first: only the document pages holding the user's own rows are
        // fetched and decompressed, not those of its neighbours on the same page of ids.
        let filter = keepsake_segment::user_row_filter(md, &user);
        let batches: Vec<_> = builder
            .with_row_groups(plan.row_groups)
            .with_row_selection(plan.selection)
            .with_row_filter(filter)
            .build()
            .map_err(|e| self.parquet_error(e))?
            .try_collect()
            .await
            .map_err(|e| self.parquet_error(e))?;
        let mut users =
            keepsake_segment::decode_checkpoint_batches(batches, Some(&user)).map_err(|e| {
                LogError::corrupt(self.shard, self.checkpoint, format!("checkpoint: {e}"))
            })?;
        Ok(users.remove(&user).unwrap_or_default())
    }
}

/// Parts [`Checkpoint::users`] read whole, less the users it gave out: a checkpoint's later
/// runs of segments take their users from here instead of reading the part again, and a merge
/// into the base takes the users left (the unchanged ones) instead of reading the part again.
///
/// It also remembers how many users of each part were asked for so far and how far the fold
/// that asks has come ([`WholeParts::progress`]), so that a part is read whole when the fold
/// is on course to ask for many of its users, not only when one run of segments does: a
/// checkpoint after a round in which every user changed asked each run for a few dozen users
/// of each part, read each user's pages on its own (three or four GETs a user, 84,000 for a
/// shard of 25,000 users), and under a file store took the GETs pushes needed
/// (`make sustained`, 2026-12-02).
#[derive(Debug, Default)]
pub struct WholeParts {
    /// Parts read whole, less the users given out.
    read: std::collections::HashMap<(u64, u128), std::collections::HashMap<UserId, UserState>>,
    /// Users of each part asked for so far.
    asked: std::collections::HashMap<(u64, u128), u64>,
    /// Segments the asking fold has read, of how many.
    progress: (u64, u64),
    /// The users are asked for once: a part read whole is dropped as soon as its asked users
    /// are given out, so a read of a few users of every part holds one part at a time, not
    /// the shard.
    once: bool,
    /// Footers of parts read by pages: a view's, shared with its loads (parts are immutable,
    /// so a footer read once serves every later read of the part).
    footers: Option<Arc<Footers>>,
    /// Attach each state's sealed filter blocks from the filter runs (a state given out is
    /// then whole); a checkpoint's fold does not (it writes only the blocks sealed since).
    sealed: bool,
    /// Once the parts kept hold this many bytes of states, a part to be read whole is not
    /// read: its users asked for go to `deferred` instead ([`WholeParts::capped`]).
    cap: Option<usize>,
    /// Users asked for and not given out, for the cap.
    deferred: Vec<UserId>,
    /// Where the states of the parts read whole are published as each part is read
    /// ([`WholeParts::publishing`]).
    holding: Option<crate::budget::Holding>,
}

impl WholeParts {
    /// For a fold that reads parts' pages through `footers` (and leaves there the ones it read).
    /// The states it gives out lack their sealed filter blocks (a checkpoint's fold writes only
    /// the blocks sealed since; such a state sends every pushed id to the log, never misses one).
    pub fn sharing(footers: Option<Arc<Footers>>) -> Self {
        Self {
            footers,
            ..Self::default()
        }
    }

    /// For one call of [`Checkpoint::users`]: nothing is kept for later asks, and each state
    /// is given out whole (its sealed filter blocks attached from the runs).
    pub fn once() -> Self {
        Self {
            once: true,
            sealed: true,
            ..Self::default()
        }
    }

    /// With `cap`: once the parts kept hold `cap` bytes of states, the users of a part that
    /// would be read whole are not given out (a checkpoint's fold within its budget stops
    /// before them, [`WholeParts::take_deferred`], rather than read every part whole at once).
    pub fn capped(mut self, cap: usize) -> Self {
        self.cap = Some(cap);
        self
    }

    /// Publishing to `holding` the states of the parts read whole ([`WholeParts::held_bytes`])
    /// as each is read, and when [`WholeParts::publish`] is called. A fold's first run of
    /// segments may read parts whole up to its budget before it has folded anything; counted
    /// only then, they were memory no holder counted at the start of every checkpoint
    /// (docs/BENCHMARKS.md, run 72). States given out stay counted here until the asker
    /// has counted them and calls [`WholeParts::publish`] (never counted by neither).
    pub fn publishing(mut self, holding: crate::budget::Holding) -> Self {
        self.holding = Some(holding);
        self
    }

    /// Publishes what the parts read whole hold now (nothing without [`WholeParts::publishing`]).
    pub fn publish(&self) {
        if let Some(h) = &self.holding {
            h.set(self.held_bytes());
        }
    }

    /// The users asked for and not given out for the cap, since the last call.
    pub fn take_deferred(&mut self) -> Vec<UserId> {
        std::mem::take(&mut self.deferred)
    }

    /// The asking fold has read `done` of its `total` segments: a part whose users asked for so
    /// far, scaled to the whole fold (at most [`MAX_PROJECTION`] times), reach the share that
    /// makes a whole read pay is read whole.
    pub fn progress(&mut self, done: u64, total: u64) {
        self.progress = (done, total);
    }

    /// Counts `asked` more users of `key` asked for, and says whether, projected over the whole
    /// fold, they reach 1/[`WHOLE_PART_SHARE`] of the part's `users`.
    fn worth_reading_whole(&mut self, key: (u64, u128), asked: u64, users: u64) -> bool {
        let so_far = self.asked.entry(key).or_default();
        *so_far += asked;
        let so_far = u128::from(*so_far);
        let (done, total) = self.progress;
        let projected = if done > 0 && total > done {
            (so_far * u128::from(total) / u128::from(done)).min(so_far * MAX_PROJECTION)
        } else {
            so_far
        };
        projected * u128::from(WHOLE_PART_SHARE) >= u128::from(users)
    }

    /// Keeps, of the parts read whole, only the users from `lo` (inclusive) up to `hi`
    /// (exclusive): a fold pass that takes only those users never asks for the others (a later
    /// pass asks with a `WholeParts` of its own), and they no longer take memory.
    pub fn retain_range(&mut self, lo: Option<UserId>, hi: Option<UserId>) {
        for users in self.read.values_mut() {
            users.retain(|u, _| lo.is_none_or(|lo| *u >= lo) && hi.is_none_or(|hi| *u < hi));
        }
    }

    /// The memory the states kept for later asks take ([`UserState::approx_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.read
            .values()
            .flat_map(|users| users.values())
            .map(UserState::approx_bytes)
            .sum()
    }

    /// The users left of part `part` if it was read whole (each user given out is gone).
    pub fn take(&mut self, part: &PartRef) -> Option<std::collections::HashMap<UserId, UserState>> {
        self.read.remove(&(part.written_by, part.digest))
    }
}

/// Reads one user's state from a checkpoint: only the pages that may hold the user's rows.
/// A user with no rows in it has the empty state.
pub async fn read_checkpoint_user(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    checkpoint: u64,
    user: UserId,
) -> Result<UserState, LogError> {
    open_checkpoint(store.as_ref(), shard, checkpoint)
        .await?
        .user(store, user, true)
        .await
}

/// [`read_checkpoint_user`] without the user's change ids: items, tombstones and last seq only.
/// The pages holding nothing but change ids (most of a long history's rows) are not read.
pub async fn read_checkpoint_user_items(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    checkpoint: u64,
    user: UserId,
) -> Result<UserState, LogError> {
    open_checkpoint(store.as_ref(), shard, checkpoint)
        .await?
        .user(store, user, false)
        .await
}

/// Reads every user's state in a checkpoint.
pub async fn read_checkpoint(
    store: &dyn ObjectStore,
    shard: u32,
    checkpoint: u64,
) -> Result<IdMap<UserId, UserState>, LogError> {
    open_checkpoint(store, shard, checkpoint)
        .await?
        .all(store)
        .await
}

#[cfg(test)]
mod tests {
    use super::WholeParts;

    #[test]
    fn a_part_is_read_whole_when_the_fold_is_on_course_to_ask_for_a_sixteenth() {
        let key = (1, 7);
        // Told nothing of the fold: only what was asked so far counts.
        let mut w = WholeParts::default();
        assert!(!w.worth_reading_whole(key, 2, 64));
        assert!(w.worth_reading_whole(key, 2, 64), "4 of 64 asked in all");
        // 2 users of 64 in the first 8 of 256 segments: 8 projected (64 by progress alone,
        // capped at 4 times what was asked).
        let mut w = WholeParts::default();
        w.progress(8, 256);
        assert!(w.worth_reading_whole(key, 2, 64));
        let mut w = WholeParts::default();
        w.progress(8, 256);
        assert!(!w.worth_reading_whole(key, 2, 256), "8 projected of 256");
        // The same 2 near the end of the fold: about 2 in all.
        let mut w = WholeParts::default();
        w.progress(250, 256);
        assert!(!w.worth_reading_whole(key, 2, 64));
        // A few users of a large part early in a small fold.
        let mut w = WholeParts::default();
        w.progress(4, 5);
        assert!(!w.worth_reading_whole(key, 30, 4096));
    }
}
