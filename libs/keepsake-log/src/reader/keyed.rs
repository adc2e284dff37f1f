//! One user's events in two passes: the key columns of the user's rows first (no documents),
//! then whole rows only where they are needed: each item's newest event (point-in-time items),
//! or the events a [`Pick`] keeps (ancestors of stale patches by seq, a page of the audit, one
//! item's history).
//!
//! Invariant: the user's seqs are checked to run densely, as [`keepsake_model::apply`] would.

use std::sync::Arc;

use futures::StreamExt;
use keepsake_model::{Event, IdMap, ItemId, UserId};
use keepsake_segment::{
    EventKey, KEY_COLUMNS, decode_batch, decode_keys, decode_rows, decode_segment_numbers,
    rows_of_user,
};
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection, RowSelector};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::ParquetMetaData;

use crate::error::LogError;

use super::*;

/// Selected rows per part when one object's read is split over cores.
pub(super) const PART_ROWS: usize = 4096;

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup's
/// files on every call (2% of a loaded server's samples, called on every one-user read).
pub(super) fn parallelism() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Which decoded rows belong to one user's read of one source.
#[derive(Clone, Debug)]
pub(super) struct RowFilter {
    pub(super) user: UserId,
    /// The segments asked for (a history object's rows of other segments are not).
    pub(super) wanted: std::ops::RangeInclusive<u64>,
    pub(super) up_to: UpTo,
    pub(super) shard: u32,
    pub(super) n: u64,
}

impl RowFilter {
    /// Decodes a stream of pages and keeps the user's rows up to the moment.
    pub(super) async fn read(
        &self,
        mut stream: parquet::arrow::async_reader::ParquetRecordBatchStream<SegmentReader>,
    ) -> Result<UserSegment, LogError> {
        let (shard, n) = (self.shard, self.n);
        let mut events = Vec::new();
        let mut decoded = 0;
        let mut past_end = false;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(pages_err(shard, n))?;
            decoded += batch.num_rows() as u64;
            let numbers =
                decode_segment_numbers(&batch).map_err(|e| LogError::corrupt(shard, n, e))?;
            // Pages are shared: the batch may hold neighbours' rows, which are not decoded; a
            // history object's rows of segments not asked for are not part of this read.
            let mine = rows_of_user(&batch, &self.user)
                .map_err(|e| LogError::corrupt(shard, n, e))?
                .into_iter()
                .filter(|i| {
                    numbers
                        .as_ref()
                        .is_none_or(|s| s.get(*i).is_some_and(|k| self.wanted.contains(k)))
                });
            for e in decode_rows(&batch, mine).map_err(|e| LogError::corrupt(shard, n, e))? {
                if self.up_to.includes(&e) {
                    if !past_end {
                        events.push(e);
                    }
                } else {
                    past_end = true;
                }
            }
        }
        Ok(UserSegment::Rows {
            events,
            decoded,
            past_end,
        })
    }
}

/// One user's newest event of each item up to a moment: what a read of items at that moment
/// needs (see [`keepsake_model::UserState::advance_items`]).
#[derive(Debug, Default)]
pub struct LatestItems {
    /// The newest event of each item changed in the segments read, ascending by seq.
    pub events: Vec<Event>,
    /// The user's last seq up to the moment; the `after` asked for when no event was read.
    pub last_seq: u64,
    /// What the read cost.
    pub stats: ReadStats,
}

/// One segment's part of a read of items: the key columns of the user's rows up to the moment,
/// and what a second read of chosen rows of the same object needs.
pub(super) struct KeyedSegment {
    n: u64,
    again: SegmentReader,
    metadata: Arc<ParquetMetaData>,
    row_groups: Vec<usize>,
    /// Rows in those row groups; positions count from their first row.
    rows_in_groups: usize,
    /// The user's rows up to the moment, each with its position.
    rows: Vec<(EventKey, usize)>,
    decoded: u64,
    past_end: bool,
}

pub(super) enum KeyedRead {
    After,
    Pruned,
    Rows(KeyedSegment),
}

/// Reads the key columns ([`KEY_COLUMNS`]) of the pages that may hold the user: no documents
/// (a history object's footer from `footers` when kept there).
pub(super) async fn read_user_keys(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    src: Source,
    up_to: UpTo,
    footers: Option<Arc<Footers>>,
) -> Result<KeyedRead, LogError> {
    let (n, wanted) = (src.label(), src.numbers());
    let (builder, plan, again) =
        match open_for_user(store, shard, user, src, up_to, footers).await? {
            Opened::After => return Ok(KeyedRead::After),
            Opened::Pruned => return Ok(KeyedRead::Pruned),
            Opened::Plan {
                builder,
                plan,
                again,
            } => (*builder, plan, again),
        };
    let metadata = builder.metadata().clone();
    let rows_in_groups = plan
        .row_groups
        .iter()
        .map(|rg| usize::try_from(metadata.row_group(*rg).num_rows()).unwrap_or(0))
        .sum();
    // Rows come back in selection order: the positions of the selected rows, in order.
    let mut positions = Vec::with_capacity(plan.rows_selected);
    let mut at = 0;
    for s in plan.selection.iter() {
        if !s.skip {
            positions.extend(at..at + s.row_count);
        }
        at += s.row_count;
    }
    let mut columns = KEY_COLUMNS.to_vec();
    if src.is_history() {
        columns.push(keepsake_segment::arrow_schema().fields().len());
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), columns);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(keepsake_segment::DECODE_BATCH_ROWS)
        .with_row_groups(plan.row_groups.clone())
        .with_row_selection(plan.selection)
        .build()
        .map_err(|e| LogError::user_read(shard, n, e.into()))?;
    let mut rows = Vec::new();
    let mut decoded = 0;
    let mut past_end = false;
    let mut next = positions.into_iter();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(pages_err(shard, n))?;
        decoded += batch.num_rows() as u64;
        let numbers = decode_segment_numbers(&batch).map_err(|e| LogError::corrupt(shard, n, e))?;
        let keys = decode_keys(&batch).map_err(|e| LogError::corrupt(shard, n, e))?;
        for (i, k) in keys.into_iter().enumerate() {
            let pos = next
                .next()
                .ok_or_else(|| LogError::corrupt(shard, n, "more rows than were selected"))?;
            if k.user_id != user || numbers.as_ref().is_some_and(|s| !wanted.contains(&s[i])) {
                continue;
            }
            if up_to.includes_at(k.seq, k.recorded_at) {
                rows.push((k, pos));
            } else {
                past_end = true;
            }
        }
    }
    Ok(KeyedRead::Rows(KeyedSegment {
        n,
        again,
        metadata,
        row_groups: plan.row_groups,
        rows_in_groups,
        rows,
        decoded,
        past_end,
    }))
}

/// Reads the rows at `positions` (ascending, each with the seq its key read found) of a segment
/// whole: only the pages that hold them.
pub(super) async fn read_rows_whole(
    seg: KeyedSegment,
    shard: u32,
    user: UserId,
    positions: Vec<(usize, u64)>,
) -> Result<Vec<Event>, LogError> {
    let n = seg.n;
    let mut selectors = Vec::with_capacity(positions.len() * 2 + 1);
    let mut at = 0;
    for (pos, _) in &positions {
        selectors.push(RowSelector::skip(pos - at));
        selectors.push(RowSelector::select(1));
        at = pos + 1;
    }
    selectors.push(RowSelector::skip(seg.rows_in_groups.saturating_sub(at)));
    let metadata = ArrowReaderMetadata::try_new(seg.metadata, read_options())
        .map_err(|e| LogError::user_read(shard, n, e.into()))?;
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(seg.again, metadata)
        .with_row_groups(seg.row_groups)
        .with_row_selection(RowSelection::from(selectors))
        .build()
        .map_err(|e| LogError::user_read(shard, n, e.into()))?;
    let mut events = Vec::with_capacity(positions.len());
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(pages_err(shard, n))?;
        events.extend(decode_batch(&batch).map_err(|e| LogError::corrupt(shard, n, e))?);
    }
    let expected = positions.iter().map(|(_, seq)| *seq);
    if events.len() != positions.len()
        || !events
            .iter()
            .zip(expected)
            .all(|(e, seq)| e.user_id == user && e.seq == seq)
    {
        return Err(LogError::corrupt(
            shard,
            n,
            "a second read of the same rows found other rows",
        ));
    }
    Ok(events)
}

/// One user's newest event of each item up to `up_to`, in the segments `segments` accepts, whose
/// first event of the user comes right after seq `after` (the state the caller starts from).
///
/// Two passes: the key columns of the user's rows in every segment (no documents), then whole
/// rows only for each item's newest event, from only the segments and pages that hold them. A
/// history that rewrites its items reads one document per item instead of one per event. The
/// user's seqs are checked to run densely from `after + 1`, as [`keepsake_model::apply`] would.
pub async fn read_user_latest_in(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    segments: impl Fn(u64) -> bool,
    up_to: UpTo,
    after: u64,
) -> Result<LatestItems, LogError> {
    let wanted = listed_sources(store.as_ref(), shard, 0, segments).await?;
    read_user_latest_sized(store, shard, user, wanted, up_to, after).await
}

/// [`read_user_latest_in`] over sources (ascending) the caller knows.
pub async fn read_user_latest_sized(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    after: u64,
) -> Result<LatestItems, LogError> {
    let relocate = by_listing(store.clone(), shard);
    read_user_latest_relocating(store, shard, user, sources, up_to, after, &relocate).await
}

/// [`read_user_latest_sized`], asking `relocate` where a source that vanished has gone.
pub async fn read_user_latest_relocating(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    after: u64,
    relocate: &Relocate,
) -> Result<LatestItems, LogError> {
    with_relisting(shard, sources, relocate, |sources| {
        read_user_latest_sources(
            store.clone(),
            shard,
            user,
            sources,
            up_to,
            after,
            relocate.footers(),
        )
    })
    .await
}

pub(super) async fn read_user_latest_sources(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    after: u64,
    footers: Option<Arc<Footers>>,
) -> Result<LatestItems, LogError> {
    let reads = read_ahead(shard, sources, |l| {
        read_user_keys(store.clone(), shard, user, l, up_to, footers.clone())
    });
    futures::pin_mut!(reads);
    let mut stats = ReadStats::default();
    let mut keyed = Vec::new();
    let mut last_seq = after;
    // Each item's newest row: (index into `keyed`, position, seq).
    let mut newest: IdMap<ItemId, (usize, usize, u64)> = IdMap::default();
    while let Some(read) = reads.next().await {
        stats.segments_opened += 1;
        let seg = match read? {
            KeyedRead::After => break,
            KeyedRead::Pruned => {
                stats.segments_pruned += 1;
                continue;
            }
            KeyedRead::Rows(seg) => seg,
        };
        stats.rows_decoded += seg.decoded;
        for (k, pos) in &seg.rows {
            if k.seq != last_seq + 1 {
                return Err(LogError::corrupt(
                    shard,
                    seg.n,
                    keepsake_model::ApplyError::SeqGap {
                        last: last_seq,
                        got: k.seq,
                    },
                ));
            }
            last_seq = k.seq;
            newest.insert(k.item_id, (keyed.len(), *pos, k.seq));
        }
        let past_end = seg.past_end;
        keyed.push(seg);
        if past_end {
            break;
        }
    }
    let mut chosen: Vec<Vec<(usize, u64)>> = vec![Vec::new(); keyed.len()];
    for (i, pos, seq) in newest.into_values() {
        chosen[i].push((pos, seq));
    }
    let with_rows = keyed
        .into_iter()
        .zip(chosen)
        .filter(|(_, rows)| !rows.is_empty());
    let fetches = read_ahead(shard, with_rows, |(seg, mut rows)| {
        rows.sort_unstable();
        read_rows_whole(seg, shard, user, rows)
    });
    futures::pin_mut!(fetches);
    let mut events = Vec::new();
    while let Some(read) = fetches.next().await {
        events.extend(read?);
    }
    stats.rows_read_whole = events.len() as u64;
    events.sort_unstable_by_key(|e| e.seq);
    Ok(LatestItems {
        events,
        last_seq,
        stats,
    })
}

/// Which of a user's events a two-pass read keeps ([`read_user_picked`]), told from the key
/// columns alone.
#[derive(Clone, Debug)]
pub enum Pick {
    /// The events with these seqs.
    Seqs(std::collections::HashSet<u64>),
    /// The events after this seq (a page of the audit).
    After(u64),
    /// The events of one item (its history).
    Item(ItemId),
}

impl Pick {
    fn keeps(&self, k: &EventKey) -> bool {
        match self {
            Pick::Seqs(seqs) => seqs.contains(&k.seq),
            Pick::After(n) => k.seq > *n,
            Pick::Item(item) => k.item_id == *item,
        }
    }
}

/// What a [`read_user_picked`] found.
#[derive(Debug, Default)]
pub struct Picked {
    /// The events picked, ascending by seq.
    pub events: Vec<Event>,
    /// The user's last seq up to the moment in the sources read (picked or not); 0 if none.
    pub last_seq: u64,
}

/// One user's events with the given seqs, from `sources` (ascending): [`read_user_picked`]
/// with [`Pick::Seqs`]. How a stale patch's base version from long ago is found: its seq is
/// known (the user's change ids say it), its segment is not.
pub async fn read_user_seqs(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    seqs: Vec<u64>,
    relocate: &Relocate,
) -> Result<Vec<Event>, LogError> {
    let pick = Pick::Seqs(seqs.into_iter().collect());
    let picked = read_user_picked(store, shard, user, sources, UpTo::End, &pick, relocate).await?;
    Ok(picked.events)
}

/// One user's events up to a moment that `pick` keeps, from `sources` (ascending): the key
/// columns of the user's rows first (pruned by statistics and page index; no documents), then
/// whole rows only for the events picked, from only the pages that hold them. A page of the
/// audit or one item's history decodes the documents it answers with, not the user's whole log.
pub async fn read_user_picked(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
    pick: &Pick,
    relocate: &Relocate,
) -> Result<Picked, LogError> {
    with_relisting(shard, sources, relocate, |sources| {
        let (store, footers) = (store.clone(), relocate.footers());
        async move {
            let keys = read_ahead(shard, sources, |src| {
                read_user_keys(store.clone(), shard, user, src, up_to, footers.clone())
            });
            futures::pin_mut!(keys);
            let mut chosen = Vec::new();
            let mut last_seq = 0;
            while let Some(read) = keys.next().await {
                if let KeyedRead::Rows(seg) = read? {
                    last_seq = seg.rows.iter().map(|(k, _)| k.seq).fold(last_seq, u64::max);
                    let rows: Vec<(usize, u64)> = seg
                        .rows
                        .iter()
                        .filter(|(k, _)| pick.keeps(k))
                        .map(|(k, pos)| (*pos, k.seq))
                        .collect();
                    if !rows.is_empty() {
                        chosen.push((seg, rows));
                    }
                }
            }
            let fetches = read_ahead(shard, chosen, |(seg, rows)| {
                read_rows_whole(seg, shard, user, rows)
            });
            futures::pin_mut!(fetches);
            let mut events = Vec::new();
            while let Some(read) = fetches.next().await {
                events.extend(read?);
            }
            events.sort_unstable_by_key(|e| e.seq);
            Ok(Picked { events, last_seq })
        }
    })
    .await
}
