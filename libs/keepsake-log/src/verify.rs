//! Verify and rebuild: check a store against everything the log promises, and fold every user's
//! state from the first segment.
//!
//! Verification reads every object: segments must be dense from 1 (each in its own object or in
//! a history object, see [`crate::reader::Layout`]), decode, name the shard and number of their
//! key, and continue each user's log (seq dense from 1, no change id twice, see
//! `apply`); each checkpoint must decode and equal the fold of the segments up to it; and every
//! object must be one the key layout knows; and every user of a shard must hash to that shard
//! with the shard count given (with another count, most would not: this is how a shard count is
//! checked when a lost descriptor is recovered, see [`check_placement`] for a cheap sample).
//! Problems are reported, never repaired: repair is an operator's decision.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use keepsake_model::{IdMap, StateRead, UserId, UserState, apply};
use keepsake_store::keys::{self, Key};
use object_store::ObjectStore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::error::{LogError, store_err};
use crate::reader::{
    CheckpointForm, HistoryListed, Layout, Listed, Place, Source, open_checkpoint_as, read_history,
    read_seen_segment, read_source_segments,
};

/// One thing wrong with a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `gap`, `unreadable`, `log`, `checkpoint_mismatch`, `unreadable_checkpoint`, `foreign_object`,
    /// `stray_segment`, `wrong_shard`.
    pub kind: &'static str,
    /// The object concerned.
    pub key: String,
    /// What is wrong.
    pub detail: String,
}

/// What verification found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// True when no problem was found.
    pub ok: bool,
    /// Shards checked.
    pub shards: u32,
    /// Segments read.
    pub segments: u64,
    /// Events read.
    pub events: u64,
    /// Checkpoints read.
    pub checkpoints: u64,
    /// History objects read (compacted segments).
    pub history_objects: u64,
    /// Users seen.
    pub users: u64,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
    /// Hash of every user's state folded from the log (see [`state_hash`]).
    pub state_hash: String,
}

/// A hash of users' states that does not depend on map order: users and items are hashed
/// sorted, with every field of each, and each user's change ids as the filter of all of them
/// ([`keepsake_model::ChangeFilter`]: a function of the log, the same whether a state holds its
/// ids exactly or was loaded from a checkpoint that holds them as a filter).
pub fn state_hash<'a>(users: impl IntoIterator<Item = (&'a UserId, &'a UserState)>) -> String {
    let mut sorted: Vec<_> = users.into_iter().collect();
    sorted.sort_by_key(|(u, _)| **u);
    let mut h = Sha256::new();
    for (user, s) in sorted {
        h.update(user.as_bytes());
        h.update(s.last_seq().to_be_bytes());
        let mut items: Vec<_> = s.items().collect();
        items.sort_by_key(|i| i.item_id);
        for i in items {
            h.update(i.item_id.as_bytes());
            h.update(i.kind.as_str());
            h.update(i.version.to_be_bytes());
            h.update(i.seq.to_be_bytes());
            h.update([u8::from(i.deleted)]);
            h.update(i.changed_at.timestamp_micros().to_be_bytes());
            h.update(i.document.as_ref().map_or("", |d| d.as_str()));
            h.update([0xff]);
        }
        let filter = s.change_filter();
        // A filter lacking its sealed blocks hashes apart from the whole one, never alike
        // (only whole states are hashed; a whole filter's hash is as before format 6).
        if !filter.is_whole() {
            h.update((filter.offset() as u64).to_le_bytes());
        }
        h.update(filter.to_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn problem(kind: &'static str, key: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem {
        kind,
        key: key.into(),
        detail: detail.into(),
    }
}

/// What a fold of the whole store does besides folding the segments.
#[derive(Clone, Copy, Debug)]
pub struct FoldOptions {
    /// Read every checkpoint and compare it with the fold at its segment (verify does; rebuild,
    /// which only needs the log, does not).
    pub checkpoints: bool,
    /// Segments read and decoded ahead of the fold, per shard (decoding runs on blocking threads,
    /// so this is also how many segments decode at once).
    pub read_ahead: usize,
    /// Shards folded at once.
    pub shards_at_once: usize,
    /// Compute the report's `state_hash` (a rebuild hashes itself, alongside the views' hash).
    pub hash: bool,
}

impl Default for FoldOptions {
    fn default() -> Self {
        Self {
            checkpoints: true,
            read_ahead: 4,
            shards_at_once: std::thread::available_parallelism().map_or(2, |n| n.get()),
            hash: true,
        }
    }
}

/// Reads every object of a store with `shard_count` shards and reports what is wrong. Also returns
/// every user's state folded from the first segment (the rebuild).
pub async fn verify_store(
    store: &Arc<dyn ObjectStore>,
    shard_count: u32,
) -> Result<(VerifyReport, IdMap<UserId, UserState>), LogError> {
    fold_store(store, shard_count, FoldOptions::default()).await
}

/// Folds every user of every shard from the first segment, checking the log as it goes (and the
/// checkpoints, if asked). Shards are independent and folded concurrently; within a shard,
/// segments are fetched and decoded ahead and applied strictly in order.
pub async fn fold_store(
    store: &Arc<dyn ObjectStore>,
    shard_count: u32,
    opts: FoldOptions,
) -> Result<(VerifyReport, IdMap<UserId, UserState>), LogError> {
    let mut report = VerifyReport {
        shards: shard_count,
        ..VerifyReport::default()
    };
    let objects: Vec<_> = store
        .list(None)
        .try_collect()
        .await
        .map_err(store_err("list the store"))?;
    let mut layouts: BTreeMap<u32, Layout> = BTreeMap::new();
    let mut checkpoints: BTreeMap<u32, Vec<(u64, CheckpointForm)>> = BTreeMap::new();
    for o in &objects {
        match keys::parse(&o.location) {
            Some(Key::Segment { shard, n }) if shard < shard_count => {
                layouts.entry(shard).or_default().segments.push(Listed {
                    n,
                    size: o.size,
                    modified: o.last_modified,
                    tag: crate::reader::Tag::of_meta(o),
                })
            }
            Some(Key::History { shard, first, last }) if shard < shard_count => layouts
                .entry(shard)
                .or_default()
                .history
                .push(HistoryListed {
                    first,
                    last,
                    size: o.size,
                }),
            Some(Key::HistoryVerified { shard, first, last }) if shard < shard_count => layouts
                .entry(shard)
                .or_default()
                .verified
                .push((first, last)),
            Some(Key::Checkpoint { shard, n }) if shard < shard_count => checkpoints
                .entry(shard)
                .or_default()
                .push((n, CheckpointForm::Whole)),
            Some(Key::Manifest { shard, n }) if shard < shard_count => checkpoints
                .entry(shard)
                .or_default()
                .push((n, CheckpointForm::Manifest)),
            // Read through the manifests that name them ([`check_checkpoint`]); one no manifest
            // names is left by a checkpoint that did not finish, and deleted by retention.
            Some(Key::Part { shard, .. }) if shard < shard_count => {}
            // Read after the shard's listing ([`check_frontier`]).
            Some(Key::Frontier { shard, .. }) if shard < shard_count => {}
            // Which server took the shard: read by servers in a cluster, not part of the log.
            Some(Key::Owner { shard, .. }) if shard < shard_count => {}
            Some(
                Key::Segment { .. }
                | Key::Checkpoint { .. }
                | Key::Manifest { .. }
                | Key::Part { .. }
                | Key::History { .. }
                | Key::HistoryVerified { .. }
                | Key::Frontier { .. }
                | Key::Owner { .. },
            ) => report.problems.push(problem(
                "foreign_object",
                o.location.as_ref(),
                "a shard beyond the store's shard count",
            )),
            Some(_) => {}
            None if o.location.as_ref().starts_with(".secrets/") => {}
            None => report.problems.push(problem(
                "foreign_object",
                o.location.as_ref(),
                "not a key Keepsake writes",
            )),
        }
    }
    let mut folds = futures::stream::iter(0..shard_count)
        .map(|shard| {
            let mut layout = layouts.remove(&shard).unwrap_or_default();
            layout.segments.sort_by_key(|l| l.n);
            layout.history.sort_by_key(|h| (h.first, h.last));
            let mut cks = if opts.checkpoints {
                checkpoints.remove(&shard).unwrap_or_default()
            } else {
                Vec::new()
            };
            // A number written in both forms (versions side by side): each is checked.
            cks.sort_unstable();
            let store = store.clone();
            tokio::spawn(keepsake_store::inherit(fold_shard(
                store,
                shard,
                shard_count,
                layout,
                cks,
                opts,
            )))
        })
        .buffered(opts.shards_at_once.max(1));
    let mut all_users: IdMap<UserId, UserState> = IdMap::default();
    while let Some(joined) = folds.next().await {
        let fold = joined.map_err(|e| LogError::Unavailable {
            shard: 0,
            reason: format!("a shard's fold failed: {e}"),
        })??;
        report.segments += fold.segments;
        report.events += fold.events;
        report.checkpoints += fold.checkpoints;
        report.history_objects += fold.history_objects;
        report.problems.extend(fold.problems);
        all_users.extend(fold.users);
    }
    report.users = all_users.len() as u64;
    if opts.hash {
        let (hash, users) = hash_off_workers(all_users).await?;
        report.state_hash = hash;
        all_users = users;
    }
    report.ok = report.problems.is_empty();
    Ok((report, all_users))
}

/// [`state_hash`] on a blocking thread: hashing every document takes a while.
pub async fn hash_off_workers(
    users: IdMap<UserId, UserState>,
) -> Result<(String, IdMap<UserId, UserState>), LogError> {
    tokio::task::spawn_blocking(move || (state_hash(users.iter()), users))
        .await
        .map_err(|e| LogError::Unavailable {
            shard: 0,
            reason: format!("hashing the state failed: {e}"),
        })
}

/// One shard's part of a fold.
struct ShardFold {
    segments: u64,
    events: u64,
    checkpoints: u64,
    history_objects: u64,
    problems: Vec<Problem>,
    users: IdMap<UserId, UserState>,
}

/// Folds one shard's segments (from their objects or history objects, as `layout` says) and
/// compares the checkpoints `cks` (sorted) with the fold at their segments. History objects no
/// segment is read from (written by a compaction that has not finished) are decoded too.
async fn fold_shard(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    shard_count: u32,
    layout: Layout,
    cks: Vec<(u64, CheckpointForm)>,
    opts: FoldOptions,
) -> Result<ShardFold, LogError> {
    let started = std::time::Instant::now();
    // The whole-store listing passed this shard's history keys before its segment keys: a
    // compaction in between (history object written after the one, sources deleted before the
    // other) hid a range from it — in the middle (a gap that is not there) or up to the head
    // (a log that looks shorter than its checkpoints). So the shard is listed again, segments
    // first, then history objects (`list_layout`, which lists again on a gap itself); only a
    // gap that is there every time is reported, from the first listing. Checkpoints come from
    // the first listing: the head only grows, so none is beyond the second.
    let layout = match crate::reader::list_layout(store.as_ref(), shard).await {
        Ok(relisted) => relisted,
        Err(LogError::Gap { .. }) => layout,
        Err(e) => return Err(e),
    };
    let mut out = ShardFold {
        segments: 0,
        events: 0,
        checkpoints: cks.len() as u64,
        history_objects: layout.history.len() as u64,
        problems: Vec::new(),
        users: IdMap::default(),
    };
    let head = layout.head();
    let (sources, missing) = layout.all_sources();
    if let Some(missing) = missing {
        out.problems.push(problem(
            "gap",
            keys::segment(shard, missing).to_string(),
            format!("missing while segment {head} exists"),
        ));
    }
    let used: Vec<HistoryListed> = sources
        .iter()
        .filter_map(|s| match s {
            Source::History { object, .. } => Some(*object),
            Source::Segment { .. } => None,
        })
        .collect();
    for h in layout.history.iter().filter(|h| !used.contains(h)) {
        if let Err(e) = read_history(&store, shard, *h).await {
            out.problems.push(problem(
                "unreadable",
                keys::history(shard, h.first, h.last).to_string(),
                e.to_string(),
            ));
        }
    }
    check_shadowed(&store, shard, &layout, &mut out.problems).await;
    check_frontier(&store, shard, &layout, &mut out.problems).await;
    let mut folded_to = 0;
    let mut next_ck = cks.iter().peekable();
    let mut broken = false;
    let mut expected = 1;
    let mut decoded = futures::stream::iter(sources)
        .map(|src| {
            let store = store.clone();
            async move {
                let segs = match src {
                    Source::Segment { n, tag, .. } => {
                        match read_seen_segment(store.as_ref(), shard, n, tag).await {
                            Ok(Some((seg, _))) => Ok(vec![seg]),
                            // Compacted since the listing (or replaced there by a stray put
                            // into the freed number): read where a new listing says.
                            Ok(None) => read_source_segments(store.clone(), shard, src).await,
                            // The store failing is not damage: verify stops with the error.
                            Err(e @ (LogError::Store { .. } | LogError::Unavailable { .. })) => {
                                return Err(e);
                            }
                            // Bytes that are not the segment their key names: reported.
                            Err(e) => Err(e),
                        }
                    }
                    Source::History { object, lo, hi } => {
                        match read_history(&store, shard, object).await {
                            Ok(Some(h)) => Ok(h
                                .segments
                                .into_iter()
                                .filter(|s| (lo..=hi).contains(&s.meta.segment))
                                .collect()),
                            // Merged into a wider object since the listing.
                            Ok(None) => read_source_segments(store.clone(), shard, src).await,
                            Err(e) => Err(e),
                        }
                    }
                };
                Ok::<_, LogError>((src, segs))
            }
        })
        .buffered(opts.read_ahead.max(1));
    while let Some(read) = decoded.next().await {
        let (src, segs) = read?;
        let key = src.key(shard).to_string();
        let segs = match segs {
            Ok(s) => s,
            Err(e) => {
                out.problems.push(problem("unreadable", key, e.to_string()));
                broken = true;
                continue;
            }
        };
        for seg in segs {
            let n = seg.meta.segment;
            out.segments += 1;
            if n != expected {
                broken = true;
            }
            expected = n + 1;
            out.events += seg.events.len() as u64;
            for e in &seg.events {
                if let Err(err) = apply(out.users.entry(e.user_id).or_default(), e) {
                    out.problems.push(problem(
                        "log",
                        key.clone(),
                        format!("segment {n}, user {}: {err}", e.user_id),
                    ));
                    broken = true;
                }
            }
            if !broken {
                folded_to = n;
            }
            // Compare each checkpoint with the fold at its segment.
            while let Some((c, form)) = next_ck.peek().copied().copied() {
                if c > folded_to || broken {
                    break;
                }
                next_ck.next();
                if c == folded_to {
                    check_checkpoint(&store, shard, c, form, &out.users, &mut out.problems).await;
                }
            }
        }
    }
    for (c, form) in next_ck {
        if broken || *c > folded_to {
            let key = match form {
                CheckpointForm::Whole => keys::checkpoint(shard, *c),
                CheckpointForm::Manifest => keys::manifest(shard, *c),
            };
            out.problems.push(problem(
                "checkpoint_mismatch",
                key.to_string(),
                "beyond the readable log",
            ));
        }
    }
    // Every user of the shard hashes to it; with another shard count, most would not.
    let mut misplaced = out
        .users
        .keys()
        .filter(|u| keys::shard_for(u, shard_count) != shard);
    if let Some(first) = misplaced.next() {
        let n = 1 + misplaced.count();
        out.problems.push(problem(
            "wrong_shard",
            format!("{}/", keys::shard_prefix(shard)),
            format!(
                "{n} of the shard's {} users hash to other shards with {shard_count} shards \
                 (user {first} to shard {}): the store was not written with {shard_count} shards",
                out.users.len(),
                keys::shard_for(first, shard_count)
            ),
        ));
    }
    info!(
        shard,
        segments = out.segments,
        events = out.events,
        checkpoints = out.checkpoints,
        history_objects = out.history_objects,
        users = out.users.len(),
        ms = started.elapsed().as_millis() as u64,
        "shard folded"
    );
    Ok(out)
}

/// Checks the shard's compaction frontier ([`crate::frontier`]), read after `layout` was
/// listed: its generations read back, and it holds every number whose segment object is gone
/// (compaction advances it before deleting one, so a number missing from the listing was
/// already held when the frontier was read). A store compacted only by versions before the
/// frontier has none, which is no damage.
async fn check_frontier(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    layout: &Layout,
    problems: &mut Vec<Problem>,
) {
    let frontier = match crate::frontier::find_written(store.as_ref(), shard).await {
        Ok(f) => f,
        Err(e) => {
            problems.push(problem(
                "unreadable",
                keys::frontier_prefix(shard).to_string(),
                e.to_string(),
            ));
            return;
        }
    };
    if frontier.generation == 0 {
        return;
    }
    let present: std::collections::HashSet<u64> = layout.segments.iter().map(|l| l.n).collect();
    let compacted = layout
        .history
        .iter()
        .flat_map(|h| h.first..=h.last)
        .filter(|n| !present.contains(n))
        .max();
    if let Some(n) = compacted.filter(|n| !frontier.holds(*n)) {
        problems.push(problem(
            "frontier_behind",
            keys::frontier(shard, frontier.generation).to_string(),
            format!(
                "segment {n} was compacted away but the frontier holds only up to {}: a writer behind could take the number for new",
                frontier.through
            ),
        ));
    }
}

/// Segment objects that readers do not read, because a history object they rely on holds the
/// same number: each is either a source compaction has not deleted yet (the same events) or a
/// write into a number used before, by a writer that was behind (see `writer.rs`, invariant 8), which
/// that writer removes at once unless it stopped first. The second kind is reported.
async fn check_shadowed(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    layout: &Layout,
    problems: &mut Vec<Problem>,
) {
    let mut copies: BTreeMap<(u64, u64), BTreeMap<u64, keepsake_segment::Segment>> =
        BTreeMap::new();
    for l in &layout.segments {
        let Some(Place::History(h)) = layout.place(l.n) else {
            continue;
        };
        let key = keys::segment(shard, l.n).to_string();
        let own = match crate::reader::read_segment(store.as_ref(), shard, l.n).await {
            Ok(Some(seg)) => seg,
            // Deleted since the listing: compaction finished.
            Ok(None) => continue,
            Err(e) => {
                problems.push(problem("unreadable", key, e.to_string()));
                continue;
            }
        };
        let copy = match copies.entry((h.first, h.last)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                match read_history(store, shard, h).await {
                    Ok(Some(held)) => e.insert(
                        held.segments
                            .into_iter()
                            .map(|s| (s.meta.segment, s))
                            .collect(),
                    ),
                    // Reported where the history object is read as a source.
                    Ok(None) | Err(_) => continue,
                }
            }
        };
        if copy.get(&l.n) != Some(&own) {
            problems.push(problem(
                "stray_segment",
                key,
                format!(
                    "differs from segment {} in history {}-{}, which readers use: written into a \
                     number already used, by a writer that was behind; never acknowledged",
                    l.n, h.first, h.last
                ),
            ));
        }
    }
}

/// What [`check_placement`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Shards whose sample was read.
    pub shards_checked: u32,
    /// Shards with neither a segment nor a history object to read (checkpoints only).
    pub shards_unchecked: Vec<u32>,
    /// Users read.
    pub users_checked: u64,
    /// Users in a shard they do not hash to: (shard, user, the shard they hash to).
    pub misplaced: Vec<(u32, UserId, u32)>,
}

/// Shards [`check_placement`] reads at once.
const PLACEMENT_CONCURRENCY: usize = 8;

/// A cheap check that a store was written with `shard_count` shards: reads one segment of each
/// of `shards` (one LIST, one GET), or where the shard has none its first history object, and
/// checks that every user in it hashes to that shard. A wrong count sends most users elsewhere,
/// so a few users per shard tell; [`verify_store`] checks every user.
pub async fn check_placement(
    store: &Arc<dyn ObjectStore>,
    shard_count: u32,
    shards: impl IntoIterator<Item = u32>,
) -> Result<Placement, LogError> {
    let mut sampled = futures::stream::iter(shards)
        .map(|shard| {
            let store = store.clone();
            async move { sample_users(&store, shard).await.map(|u| (shard, u)) }
        })
        .buffered(PLACEMENT_CONCURRENCY);
    let mut out = Placement::default();
    while let Some(sample) = sampled.next().await {
        let (shard, users) = sample?;
        let Some(users) = users else {
            out.shards_unchecked.push(shard);
            continue;
        };
        out.shards_checked += 1;
        out.users_checked += users.len() as u64;
        for u in users {
            let to = keys::shard_for(&u, shard_count);
            if to != shard {
                out.misplaced.push((shard, u, to));
            }
        }
    }
    Ok(out)
}

/// The users of one segment of `shard`, else of its first history object; `None` if it has
/// neither.
async fn sample_users(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
) -> Result<Option<Vec<UserId>>, LogError> {
    let users = |events: &[keepsake_model::Event]| {
        let mut u: Vec<UserId> = events.iter().map(|e| e.user_id).collect();
        u.dedup();
        u
    };
    let first = |prefix| {
        let store = store.clone();
        async move {
            store
                .list(Some(&prefix))
                .try_next()
                .await
                .map_err(store_err(format!("list {prefix}")))
        }
    };
    if let Some(o) = first(keys::segments_prefix(shard)).await?
        && let Some(Key::Segment { n, .. }) = keys::parse(&o.location)
        && let Some(seg) = crate::reader::read_segment(store.as_ref(), shard, n).await?
    {
        return Ok(Some(users(&seg.events)));
    }
    if let Some(o) = first(keys::history_prefix(shard)).await?
        && let Some(Key::History { first, last, .. }) = keys::parse(&o.location)
    {
        let object = HistoryListed {
            first,
            last,
            size: o.size,
        };
        if let Some(h) = read_history(store, shard, object).await? {
            return Ok(Some(
                h.segments.iter().flat_map(|s| users(&s.events)).collect(),
            ));
        }
    }
    Ok(None)
}

async fn check_checkpoint(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    c: u64,
    form: CheckpointForm,
    folded: &IdMap<UserId, UserState>,
    problems: &mut Vec<Problem>,
) {
    let opened = match open_checkpoint_as(store.as_ref(), shard, c, form).await {
        Ok(o) => o,
        // Deleted since the listing: retention (the only deleter of checkpoints, which are
        // derived) removed it; there is nothing left to check.
        Err(LogError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return,
        Err(e) => {
            let key = keys::manifest(shard, c).to_string();
            problems.push(problem("unreadable_checkpoint", key, e.to_string()));
            return;
        }
    };
    let key = opened.path().to_string();
    match opened.all(store.as_ref()).await {
        Ok(saved) => {
            // Field-by-field equality of every user (what the hash covers, and more), without
            // sorting and hashing the whole state once per checkpoint.
            let same =
                saved.len() == folded.len() && saved.iter().all(|(u, s)| folded.get(u) == Some(s));
            if !same {
                problems.push(problem(
                    "checkpoint_mismatch",
                    key,
                    "differs from the fold of the segments up to it",
                ));
            }
        }
        // A part is missing: retention deleted the manifest and then its parts since it was
        // opened, or the manifest names a part that is not there (a problem).
        Err(e) => {
            let gone = matches!(
                object_store::ObjectStoreExt::head(store.as_ref(), &opened.path()).await,
                Err(object_store::Error::NotFound { .. })
            );
            if !gone {
                problems.push(problem("unreadable_checkpoint", key, e.to_string()));
            }
        }
    }
}
