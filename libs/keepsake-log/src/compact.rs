//! Compaction: a shard's checkpointed segments move into history objects, so that one user's
//! history is a few footers and pages instead of a read of every segment that holds them.
//!
//! Invariants:
//! - Only segments up to a checkpoint are compacted: recovery, loads of users and the writer
//!   read the checkpoint and the segments after it, which stay as they are.
//! - A history object is a container of segments ([`keepsake_segment::decode_history`] gives
//!   each back exactly), written create-only. A source (a segment object, or a narrower history
//!   object merged into a wider one) is deleted only after the history object holding it was
//!   written, read back and its segments compared equal, one by one, with the source's; the
//!   view reads from a history object only after that comparison.
//! - No segment object is deleted before the shard's compaction frontier holds its number
//!   ([`crate::frontier::advance`]): that is how a writer behind learns the number was used.
//! - A round takes the oldest run of segments still in their own objects, up to the checkpoint
//!   and `max_events`, and merges it with the history object just before it when the result
//!   stays within `max_events` (its event count read from its footer first, so a full one is
//!   never fetched whole); so history objects grow from segment 1 without gaps.
//! - What a round holds decoded is published to the views' budget ([`crate::budget`]) as each
//!   segment is read, so the views give way while it fills.
//! - A round interrupted anywhere leaves a store every reader reads correctly (a segment is read
//!   from its own object while it exists, else from the narrowest history object holding it),
//!   and the next round finishes it: it compares each history object with whatever of its
//!   sources is still there, then deletes them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::{StreamExt, TryStreamExt};
use keepsake_segment::Segment;
use keepsake_store::keys;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tracing::{error, info, warn};

use crate::error::{LogError, store_err};
use crate::reader::{
    HistoryListed, Layout, Listed, Place, Tag, history_event_count, list_layout_upto, read_history,
    read_seen_segment,
};
use crate::view::ShardState;

/// Rounds listed again when a segment moved under them (another process compacting).
const RELISTS_ON_MOVE: u32 = 3;

/// Segments read at once by a compaction.
const READ_AHEAD: usize = 4;

/// When and how much to compact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact at all (after each checkpoint).
    pub enabled: bool,
    /// Leave fewer checkpointed segments than this for later.
    pub min_segments: u64,
    /// Events per history object at most: what one compaction, and a scan of a history object,
    /// holds in memory (about 1 KB per event of ~500-byte documents).
    pub max_events: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_segments: 64,
            max_events: 131_072,
        }
    }
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// History objects written.
    pub written: u64,
    /// Segments moved into them.
    pub segments: u64,
    /// Events moved into them.
    pub events: u64,
    /// Bytes of the history objects written.
    pub bytes_written: u64,
    /// Objects deleted (segments, and history objects merged into wider ones).
    pub deleted: u64,
    /// Bytes of the objects deleted.
    pub bytes_deleted: u64,
    /// Of the objects deleted, strays: segments of another batch in numbers a verified
    /// history object holds (never acknowledged).
    pub strays: u64,
}

impl CompactionReport {
    pub(crate) fn add(&mut self, o: CompactionReport) {
        self.written += o.written;
        self.segments += o.segments;
        self.events += o.events;
        self.bytes_written += o.bytes_written;
        self.deleted += o.deleted;
        self.bytes_deleted += o.bytes_deleted;
        self.strays += o.strays;
    }
}

/// An object compaction may delete.
#[derive(Clone, Copy, Debug)]
enum Doomed {
    /// Segment object `n` as listed (`tag`: which write of it was seen).
    Segment {
        n: u64,
        size: u64,
        tag: Tag,
    },
    History(HistoryListed),
}

impl Doomed {
    fn path(&self, shard: u32) -> object_store::path::Path {
        match *self {
            Doomed::Segment { n, .. } => keys::segment(shard, n),
            Doomed::History(h) => keys::history(shard, h.first, h.last),
        }
    }

    fn size(&self) -> u64 {
        match *self {
            Doomed::Segment { size, .. } => size,
            Doomed::History(h) => h.size,
        }
    }
}

/// Compacts the segments of `shard` up to `upto` (a checkpoint's segment): finishes what an
/// interrupted round left, then writes history objects while at least `min_segments` segments
/// are waiting. `view`, when given, is told of each verified history object before its sources
/// are deleted, so that its reads never reach for a deleted object.
pub async fn compact_shard(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    upto: u64,
    view: Option<&RwLock<ShardState>>,
    policy: &CompactionPolicy,
) -> Result<CompactionReport, LogError> {
    let mut report = CompactionReport::default();
    report.add(settle(store, shard, upto, view).await?);
    let mut moved = 0;
    loop {
        // Only up to `upto`: a busy shard adds segments while it is listed, and a listing of a
        // directory being written to can show a later file and miss an earlier one; past
        // `upto` that is no gap to compaction (it stopped every compaction of a busy shard).
        let layout = list_layout_upto(store.as_ref(), shard, upto).await?;
        let round = match compact_round(store, shard, upto, view, policy, &layout).await {
            Ok(round) => round,
            // A segment it listed was compacted by another process (or replaced by a stray)
            // before it read it: nothing was written; list again, a few times.
            Err(LogError::Gap { missing, .. }) if moved < RELISTS_ON_MOVE => {
                moved += 1;
                info!(
                    shard,
                    segment = missing,
                    "a segment moved while compacting; listing again"
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        if round.written == 0 {
            break;
        }
        report.add(round);
    }
    Ok(report)
}

/// Finishes interrupted rounds: every history object whose sources are still (partly) there is
/// compared with them; then they are deleted. A history object that differs from sources that
/// are all still there was never relied on, and is deleted instead.
async fn settle(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    upto: u64,
    view: Option<&RwLock<ShardState>>,
) -> Result<CompactionReport, LogError> {
    let mut report = CompactionReport::default();
    let layout = list_layout_upto(store.as_ref(), shard, upto).await?;
    // Only objects within the listing's bound: one reaching past `upto` (another process's,
    // from a newer checkpoint) may have sources this listing does not show; that one settles it.
    let mut widest_first: Vec<HistoryListed> = layout
        .history
        .iter()
        .filter(|h| h.last <= upto)
        .copied()
        .collect();
    widest_first.sort_by_key(|h| std::cmp::Reverse(h.last - h.first));
    let mut gone: Vec<HistoryListed> = Vec::new();
    for h in widest_first {
        if gone.contains(&h) {
            continue;
        }
        let inside = |first: u64, last: u64| h.first <= first && last <= h.last;
        let doomed: Vec<Doomed> = layout
            .segments
            .iter()
            .filter(|l| inside(l.n, l.n))
            .map(|l| Doomed::Segment {
                n: l.n,
                size: l.size,
                tag: l.tag,
            })
            .chain(
                layout
                    .history
                    .iter()
                    .filter(|x| **x != h && inside(x.first, x.last) && !gone.contains(x))
                    .map(|x| Doomed::History(*x)),
            )
            .collect();
        if doomed.is_empty() {
            continue;
        }
        // Every object as listed, or this object waits for a later pass: one gone since the
        // listing was settled by another process, and one replaced since (a stray put into a
        // number another process's settle freed) must never be compared as a source — that
        // once deleted a verified object, the only copy of its segment, for "differing".
        let mut per_doomed = Vec::with_capacity(doomed.len());
        for d in &doomed {
            match read_doomed(store, shard, *d).await? {
                Some(segs) => per_doomed.push((*d, segs)),
                None => break,
            }
        }
        if per_doomed.len() < doomed.len() {
            info!(
                shard,
                first = h.first,
                last = h.last,
                "an object inside a history object changed since the listing; settled on a later pass"
            );
            continue;
        }
        let sources: Vec<Segment> = per_doomed
            .iter()
            .flat_map(|(_, segs)| segs.iter().cloned())
            .collect();
        // A read that fails is an error, never "differs": deleting on a failed read once
        // deleted the only copy of segments whose sources another process had removed.
        let written: BTreeMap<u64, Segment> = match read_back(store, shard, h).await? {
            // Gone since the listing: another process merged it into a wider object.
            ReadBack::Gone => continue,
            ReadBack::Bad => BTreeMap::new(),
            ReadBack::Good(held) => held
                .segments
                .into_iter()
                .map(|s| (s.meta.segment, s))
                .collect(),
        };
        let agrees = sources
            .iter()
            .all(|s| written.get(&s.meta.segment) == Some(s));
        let marked = layout.verified.contains(&(h.first, h.last));
        if !agrees && marked {
            // Verified before: readers rely on it, and its copy of each number is the segment
            // that was committed there. A segment object of another batch in one of its numbers
            // was written after that segment was deleted (create-only), into a number this
            // object already held, by a writer that was behind; such a writer lists history
            // objects after its PUT and never acknowledges a number one holds. So it is a
            // stray, read by no one: removed with the matching sources (its writer removes it
            // itself unless it stopped first). Anything else that differs (same batch, other
            // bytes; a narrower history object) is damage: left for the operator.
            let (matching, differing): (Vec<_>, Vec<_>) =
                per_doomed.into_iter().partition(|(_, segs)| {
                    segs.iter().all(|s| written.get(&s.meta.segment) == Some(s))
                });
            let (strays, damaged): (Vec<_>, Vec<_>) =
                differing
                    .into_iter()
                    .partition(|(d, segs)| match (d, segs.as_slice()) {
                        (Doomed::Segment { n, .. }, [seg]) => written
                            .get(n)
                            .is_some_and(|kept| kept.meta.batch_id != seg.meta.batch_id),
                        _ => false,
                    });
            if !strays.is_empty() {
                error!(
                    shard,
                    first = h.first,
                    last = h.last,
                    strays = ?strays.iter().map(|(d, _)| d.path(shard).to_string()).collect::<Vec<_>>(),
                    "segments of another batch in numbers a verified history object holds: written by a writer that was behind, never acknowledged; removing them"
                );
            }
            if !damaged.is_empty() {
                error!(
                    shard,
                    first = h.first,
                    last = h.last,
                    damaged = ?damaged.iter().map(|(d, _)| d.path(shard).to_string()).collect::<Vec<_>>(),
                    "objects inside a verified history object differ from it; left for the operator"
                );
            }
            report.strays += strays.len() as u64;
            let doomed: Vec<Doomed> = matching.into_iter().chain(strays).map(|(d, _)| d).collect();
            if let Some(v) = view {
                v.write().map_err(|_| crate::poisoned(shard))?.compacted(h);
            }
            report.add(delete_all(store, shard, &doomed).await?);
            continue;
        }
        if agrees {
            if !marked {
                mark_verified(store, shard, h).await?;
            }
            if let Some(v) = view {
                v.write().map_err(|_| crate::poisoned(shard))?.compacted(h);
            }
            report.add(delete_all(store, shard, &doomed).await?);
            gone.extend(doomed.iter().filter_map(|d| match d {
                Doomed::History(x) => Some(*x),
                Doomed::Segment { .. } => None,
            }));
            info!(
                shard,
                first = h.first,
                last = h.last,
                deleted = doomed.len(),
                "interrupted compaction finished"
            );
        } else if covers_every_number(&sources, h)
            && still_present(store, shard, h, &doomed).await?
        {
            warn!(
                shard,
                first = h.first,
                last = h.last,
                "a history object differs from its sources, which are all still there; deleting it"
            );
            delete_all(store, shard, &[Doomed::History(h)]).await?;
        } else {
            return Err(LogError::corrupt(
                shard,
                h.first,
                format!(
                    "history object {}-{} differs from the sources of it still in the store",
                    h.first, h.last
                ),
            ));
        }
    }
    Ok(report)
}

/// True when `sources` hold every segment number of `h`, each counted once: overlapping
/// history objects (left by failed deletes) hold some numbers twice, and a count of segments
/// would then match while others are missing.
fn covers_every_number(sources: &[Segment], h: HistoryListed) -> bool {
    let numbers: std::collections::BTreeSet<u64> = sources
        .iter()
        .map(|s| s.meta.segment)
        .filter(|n| h.holds(*n))
        .collect();
    numbers.len() as u64 == h.last - h.first + 1
}

/// True when a fresh listing shows every one of `doomed` still in the store, each the object
/// that was read, and `h` not marked verified: only then is `h`, which differs from them,
/// known to be relied on by no reader, and deletable. (A mark written since — another
/// process verified `h` against the same sources — makes it the copy readers rely on.)
async fn still_present(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    h: HistoryListed,
    doomed: &[Doomed],
) -> Result<bool, LogError> {
    let layout = list_layout_upto(store.as_ref(), shard, h.last).await?;
    if layout.verified.contains(&(h.first, h.last)) {
        return Ok(false);
    }
    Ok(doomed.iter().all(|d| match *d {
        Doomed::Segment { n, tag, .. } => layout
            .segments
            .binary_search_by_key(&n, |l| l.n)
            .is_ok_and(|i| layout.segments[i].tag == tag),
        Doomed::History(x) => layout.history.contains(&x),
    }))
}

/// Marks history object `h` verified (read back and equal to its sources), create-only, before
/// any of its sources is deleted: readers then rely on it even if strays fill its numbers.
async fn mark_verified(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    h: HistoryListed,
) -> Result<(), LogError> {
    let path = keys::history_verified(shard, h.first, h.last);
    match store
        .put_opts(&path, PutPayload::default(), keepsake_store::create_only())
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(store_err(format!("write {path}"))(e)),
    }
}

/// A history object read back for comparison.
enum ReadBack {
    /// Not there (any more).
    Gone,
    /// Fetched, but not a valid history object of its key: known bad, so it differs.
    Bad,
    /// Fetched and decoded.
    Good(keepsake_segment::History),
}

/// Reads a history object back. Only bytes that were fetched and do not decode count as bad; a
/// fetch that fails is an error (the object may be fine, and another process may rely on it).
async fn read_back(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    h: HistoryListed,
) -> Result<ReadBack, LogError> {
    match read_history(store, shard, h).await {
        Ok(None) => Ok(ReadBack::Gone),
        Ok(Some(x)) => Ok(ReadBack::Good(x)),
        Err(LogError::Corrupt { detail, .. }) => {
            warn!(shard, first = h.first, last = h.last, %detail, "a history object does not decode");
            Ok(ReadBack::Bad)
        }
        Err(e) => Err(e),
    }
}

/// The segments a doomed object holds; `None` when it is gone, or (a segment) is not the
/// object listed.
async fn read_doomed(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    d: Doomed,
) -> Result<Option<Vec<Segment>>, LogError> {
    match d {
        Doomed::Segment { n, tag, .. } => Ok(read_seen_segment(store.as_ref(), shard, n, tag)
            .await?
            .map(|(seg, _)| vec![seg])),
        Doomed::History(h) => Ok(read_history(store, shard, h).await?.map(|x| x.segments)),
    }
}

/// One history object: the oldest run of segment objects up to `upto`, as many as fit
/// `max_events`, after the history object just before them when it still has room.
async fn compact_round(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    upto: u64,
    view: Option<&RwLock<ShardState>>,
    policy: &CompactionPolicy,
    layout: &Layout,
) -> Result<CompactionReport, LogError> {
    // The oldest run of segments still in their own objects, and the history object just
    // before it (which a settled store always has, unless the run starts at 1).
    // Segment objects inside a history object readers rely on are not waiting: they are
    // sources settle has not deleted yet, or strays left in used numbers (settle removes them).
    let own: Vec<Listed> = layout
        .segments
        .iter()
        .filter(|l| matches!(layout.place(l.n), Some(Place::Segment(..))))
        .copied()
        .collect();
    let Some(next) = own.first().map(|l| l.n) else {
        return Ok(CompactionReport::default());
    };
    let last = layout.history.iter().find(|h| h.last + 1 == next).copied();
    let waiting: Vec<_> = own
        .iter()
        .zip(next..)
        .take_while(|(l, n)| l.n == *n && l.n <= upto)
        .map(|(l, _)| *l)
        .collect();
    if (waiting.len() as u64) < policy.min_segments.max(1) {
        return Ok(CompactionReport::default());
    }
    let mut taken: Vec<Segment> = Vec::new();
    let mut doomed: Vec<Doomed> = Vec::new();
    let mut events = 0u64;
    // The events held, published as they are read, so that the views give way
    // ([`crate::budget`]) while a round fills, not only once it holds all of it; twice once the
    // object is encoded (a columnar copy) and again once it is read back to compare.
    let holding = view
        .and_then(|v| v.read().ok().map(|s| s.upkeep_memory()))
        .unwrap_or_default()
        .hold();
    let mut held = 0usize;
    let mut reads = futures::stream::iter(waiting)
        .map(|l| async move {
            // The object listed, or a gap: the round stops, and the next one lists again (a
            // stray put in a number compacted since the listing is never taken in).
            let seg = read_seen_segment(store.as_ref(), shard, l.n, l.tag).await?;
            seg.map(|(seg, _)| (l, seg)).ok_or(LogError::Gap {
                shard,
                missing: l.n,
            })
        })
        .buffered(READ_AHEAD);
    while let Some((l, seg)) = reads.try_next().await? {
        if !taken.is_empty() && events + seg.meta.event_count > policy.max_events {
            break;
        }
        events += seg.meta.event_count;
        held += segment_bytes(&seg);
        holding.set(held);
        taken.push(seg);
        doomed.push(Doomed::Segment {
            n: l.n,
            size: l.size,
            tag: l.tag,
        });
    }
    drop(reads);
    if (taken.len() as u64) < policy.min_segments.max(1) && events < policy.max_events {
        return Ok(CompactionReport::default());
    }
    // Merge into the last history object while the result stays within the bound. Its footer
    // says how many events it holds: one already full is not fetched and decoded whole (up to
    // `max_events` more in memory) only to be dropped. A footer that cannot be read leaves the
    // decision to the whole read, as before.
    let fits = match last {
        Some(h) => match history_event_count(store.clone(), shard, h).await {
            Ok(count) => count + events <= policy.max_events,
            Err(_) => true,
        },
        None => false,
    };
    if fits
        && let Some(h) = last
        && let Some(old) = read_history(store, shard, h).await?
        && old.meta.event_count + events <= policy.max_events
    {
        events += old.meta.event_count;
        held += old.segments.iter().map(segment_bytes).sum::<usize>();
        holding.set(held);
        let mut merged = old.segments;
        merged.append(&mut taken);
        taken = merged;
        doomed.push(Doomed::History(h));
    }
    let (first, last_n) = match (taken.first(), taken.last()) {
        (Some(a), Some(b)) => (a.meta.segment, b.meta.segment),
        _ => return Ok(CompactionReport::default()),
    };
    let path = keys::history(shard, first, last_n);
    let moved = taken.len() as u64;
    holding.set(held.saturating_mul(2));
    let (bytes, taken) = tokio::task::spawn_blocking(move || {
        keepsake_segment::encode_history(shard, &taken).map(|b| (b, taken))
    })
    .await
    .map_err(|e| LogError::Unavailable {
        shard,
        reason: format!("encoding history {first}-{last_n} failed: {e}"),
    })?
    .map_err(|e| LogError::corrupt(shard, first, format!("encode history: {e}")))?;
    let written = bytes.len() as u64;
    let size = match store
        .put_opts(
            &path,
            PutPayload::from(bytes),
            keepsake_store::create_only(),
        )
        .await
    {
        Ok(_) => written,
        // Already there: an earlier attempt wrote it, maybe other bytes; it is compared like a
        // new one.
        Err(object_store::Error::AlreadyExists { .. }) => {
            store
                .head(&path)
                .await
                .map_err(store_err(format!("read {path}")))?
                .size
        }
        Err(e) => return Err(store_err(format!("write {path}"))(e)),
    };
    let object = HistoryListed {
        first,
        last: last_n,
        size,
    };
    // Read back and compare, segment by segment, before anything relies on it. A read that
    // fails is an error, never "differs": when another process wrote this object (already
    // there) and deleted its sources, it is the only copy.
    let back = match read_back(store, shard, object).await? {
        ReadBack::Gone => {
            return Err(LogError::Unavailable {
                shard,
                reason: format!("history {first}-{last_n} vanished right after it was written"),
            });
        }
        ReadBack::Bad => None,
        ReadBack::Good(h) => Some(h.segments),
    };
    holding.set(held.saturating_mul(2));
    // Comparing (and dropping) a whole object's events is CPU work: off the runtime's workers.
    let same = tokio::task::spawn_blocking(move || back == Some(taken))
        .await
        .map_err(|e| LogError::Unavailable {
            shard,
            reason: format!("comparing history {first}-{last_n} failed: {e}"),
        })?;
    if !same {
        // Deleted only while a fresh listing shows every source still there: then no reader
        // relies on it. Otherwise it stays, and the corruption is reported.
        let deletable = still_present(store, shard, object, &doomed).await?;
        warn!(
            shard,
            first,
            last = last_n,
            deletable,
            "a history object read back differs from its sources"
        );
        if deletable {
            delete_all(store, shard, &[Doomed::History(object)]).await?;
        }
        return Err(LogError::corrupt(
            shard,
            first,
            format!("history {first}-{last_n} read back differs from its sources"),
        ));
    }
    mark_verified(store, shard, object).await?;
    if let Some(v) = view {
        v.write()
            .map_err(|_| crate::poisoned(shard))?
            .compacted(object);
    }
    let mut report = delete_all(store, shard, &doomed).await?;
    report.written = 1;
    report.segments = moved;
    report.events = events;
    report.bytes_written = object.size;
    info!(
        shard,
        first,
        last = last_n,
        segments = moved,
        events,
        bytes = object.size,
        "history object written; its sources deleted"
    );
    Ok(report)
}

/// What a decoded segment holds in memory, approximately ([`keepsake_model::Event::approx_bytes`]).
fn segment_bytes(seg: &Segment) -> usize {
    seg.events
        .iter()
        .map(keepsake_model::Event::approx_bytes)
        .sum::<usize>()
        + std::mem::size_of::<Segment>()
}

async fn delete_all(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    doomed: &[Doomed],
) -> Result<CompactionReport, LogError> {
    // A writer behind learns that a number was used from the frontier, so it moves past every
    // segment before one is deleted ([`crate::frontier`]).
    let last_segment = doomed
        .iter()
        .filter_map(|d| match d {
            Doomed::Segment { n, .. } => Some(*n),
            Doomed::History(_) => None,
        })
        .max();
    if let Some(n) = last_segment {
        // As far as the verified history objects reach (at least `n`: its holder is verified
        // before any delete): a store an older version compacted gets a frontier that holds
        // what that version deleted too.
        let (_, verified) = crate::reader::list_history_marked(store.as_ref(), shard).await?;
        let reach = verified.iter().map(|(_, last)| *last).max().unwrap_or(0);
        crate::frontier::advance(store.as_ref(), shard, n.max(reach)).await?;
    }
    // One bulk request where the store has one (S3 DeleteObjects), not a round trip per object.
    let mut sizes: std::collections::HashMap<object_store::path::Path, u64> =
        doomed.iter().map(|d| (d.path(shard), d.size())).collect();
    // A history object's verified mark goes with it (not counted as an object deleted).
    let marks: Vec<object_store::path::Path> = doomed
        .iter()
        .filter_map(|d| match d {
            Doomed::History(h) => Some(keys::history_verified(shard, h.first, h.last)),
            Doomed::Segment { .. } => None,
        })
        .collect();
    for m in &marks {
        sizes.insert(m.clone(), 0);
    }
    let paths: Vec<_> = sizes.keys().cloned().map(Ok).collect();
    let mut deleted = store.delete_stream(futures::stream::iter(paths).boxed());
    let mut report = CompactionReport::default();
    let mut failed = None;
    while let Some(result) = deleted.next().await {
        match result {
            Ok(path) if marks.contains(&path) => {}
            Ok(path) => {
                report.deleted += 1;
                report.bytes_deleted += sizes.get(&path).copied().unwrap_or(0);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            // Keep draining: the other deletes may still have gone through.
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(store_err(format!(
            "delete compacted objects of shard {shard}"
        ))(e)),
        None => Ok(report),
    }
}
