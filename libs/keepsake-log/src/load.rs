//! Loading a user into the view, and reading one user's events through it: where segments
//! are comes from the view (it knows every committed segment and the history objects), and
//! from a listing when a source moved (another process compacted it).
//!
//! Invariant: a user is inserted into the view only with every committed event up to the
//! view's head folded in; a commit or a new checkpoint that lands during the load sends the
//! load round again.

use std::sync::{Arc, RwLock};

use futures::FutureExt;
use keepsake_model::{Event, StateRead, UserId, UserState};
use object_store::ObjectStore;
use tracing::warn;

use crate::view::ReadPlan;
use crate::{
    Log, LogError, Mark, ShardState, Source, UpTo, checkpoint_exists, list_checkpoints,
    open_checkpoint, poisoned, reader,
};

impl Log {
    /// One user's events in segments `numbers` (ascending) of `shard`: see [`read_segments`].
    pub(crate) async fn read_segments(
        &self,
        shard: u32,
        user: &UserId,
        numbers: Vec<u64>,
        up_to: UpTo,
    ) -> Result<Vec<Event>, LogError> {
        let state = &self.shards[shard as usize].state;
        read_segments(&self.store, shard, state, *user, numbers, up_to).await
    }

    /// [`Log::read_segments`] for a search of the user's history, the objects it reads counted
    /// ([`crate::LogStats::record_search_sources`]: those after `indexed_after` as read
    /// through the view's index).
    pub(crate) async fn search_indexed_segments(
        &self,
        shard: u32,
        user: &UserId,
        numbers: Vec<u64>,
        indexed_after: u64,
    ) -> Result<Vec<Event>, LogError> {
        let state = &self.shards[shard as usize].state;
        let sources = segment_sources(&self.store, shard, state, numbers).await?;
        self.stats.record_search_sources(&sources, indexed_after);
        read_sources(&self.store, shard, state, *user, sources, UpTo::End).await
    }

    /// Reads a user's committed state, loading it from the log if it is not in memory. `f` runs
    /// on the state as committed when it was taken, outside the shard lock.
    pub async fn user<R>(
        &self,
        user: &UserId,
        f: impl FnOnce(&UserState) -> R,
    ) -> Result<R, LogError> {
        Ok(self.user_marked(user, f).await?.0)
    }

    /// [`Log::user`], with the [`Mark`] of the log the state stood at (taken under the same
    /// lock: the state is the fold of the shard's log up to it), if the view has one: what
    /// [`Log::unchanged_since`] is asked later.
    pub async fn user_marked<R>(
        &self,
        user: &UserId,
        f: impl FnOnce(&UserState) -> R,
    ) -> Result<(R, Option<Mark>), LogError> {
        let shard = self.shard_of(user);
        let state = &self.shards[shard as usize].state;
        let mut f = Some(f);
        loop {
            load_user(&self.store, shard, state, *user).await?;
            // The state is taken out of the lock before `f` runs: no caller code under it.
            let (shared, mark) = {
                let s = state.read().map_err(|_| poisoned(shard))?;
                (s.get_shared(user), s.head_mark())
            };
            // An eviction between the load and the lock sends us round again. (Taking `f` before
            // looking the user up answered such a race "state lock poisoned".)
            if let Some(s) = shared
                && let Some(f) = f.take()
            {
                return Ok((f(&s), mark));
            }
        }
    }

    /// The mark of the log now if the user's committed state is the one it had at `since` (no
    /// segment after it holds the user's events), told from the view's index without loading
    /// the user: `None` when the index cannot tell ([`ShardState::unchanged_since`]).
    pub fn unchanged_since(&self, user: &UserId, since: Mark) -> Result<Option<Mark>, LogError> {
        let shard = self.shard_of(user);
        let state = self.shards[shard as usize]
            .state
            .read()
            .map_err(|_| poisoned(shard))?;
        Ok(state.unchanged_since(user, since))
    }

    /// One user's events, oldest first, up to a moment: the segments before the view's index
    /// (pruned by their statistics), then only those the index says hold the user
    /// ([`ReadPlan::numbers`]).
    /// What the audit and item history read. Holds everything any process committed up to the
    /// moment before the call ([`Log::settle`]).
    pub async fn user_events(&self, user: &UserId, up_to: UpTo) -> Result<Vec<Event>, LogError> {
        self.settle(user, up_to).await?;
        let events = self.user_events_in_view(user, up_to).await?;
        let last = events.last().map_or(0, |e| e.seq);
        if Self::settled_by_seq(up_to, last) {
            return Ok(events);
        }
        self.sync(user).await?;
        self.user_events_in_view(user, up_to).await
    }

    /// [`Log::user_events`] from this process's view of the shard, as far as its head.
    async fn user_events_in_view(
        &self,
        user: &UserId,
        up_to: UpTo,
    ) -> Result<Vec<Event>, LogError> {
        let shard = self.shard_of(user);
        let numbers = self.user_segments_in_view(shard, user, up_to)?;
        self.read_segments(shard, user, numbers, up_to).await
    }

    /// The segments that may hold the user's events up to `up_to`, by this process's view:
    /// every segment before its index, then those its index says hold the user
    /// ([`ReadPlan::numbers`]).
    fn user_segments_in_view(
        &self,
        shard: u32,
        user: &UserId,
        up_to: UpTo,
    ) -> Result<Vec<u64>, LogError> {
        let v = self.shards[shard as usize]
            .state
            .read()
            .map_err(|_| poisoned(shard))?;
        Ok(v.read_plan(user, up_to).numbers())
    }

    /// One user's events up to a moment that `pick` keeps, oldest first: what
    /// [`Log::user_events`] holds, filtered, but read in two passes
    /// ([`reader::read_user_picked`]) so that only the picked events' documents are fetched
    /// and decoded — a page of the audit (`Pick::After`) or one item's history (`Pick::Item`)
    /// costs its own events, not the user's whole log.
    pub async fn user_events_picked(
        &self,
        user: &UserId,
        up_to: UpTo,
        pick: reader::Pick,
    ) -> Result<Vec<Event>, LogError> {
        self.settle(user, up_to).await?;
        let picked = self.picked_in_view(user, up_to, &pick).await?;
        if Self::settled_by_seq(up_to, picked.last_seq) {
            return Ok(picked.events);
        }
        self.sync(user).await?;
        Ok(self.picked_in_view(user, up_to, &pick).await?.events)
    }

    /// [`Log::user_events_picked`] from this process's view of the shard, as far as its head.
    async fn picked_in_view(
        &self,
        user: &UserId,
        up_to: UpTo,
        pick: &reader::Pick,
    ) -> Result<reader::Picked, LogError> {
        let shard = self.shard_of(user);
        let numbers = self.user_segments_in_view(shard, user, up_to)?;
        let view = &self.shards[shard as usize].state;
        let sources = segment_sources(&self.store, shard, view, numbers).await?;
        let relocate = by_view(self.store.clone(), shard, view.clone())?;
        reader::read_user_picked(
            self.store.clone(),
            shard,
            *user,
            sources,
            up_to,
            pick,
            &relocate,
        )
        .await
    }

    /// The user's last committed seq (0 for a user with no events).
    pub async fn last_seq(&self, user: &UserId) -> Result<u64, LogError> {
        self.user(user, StateRead::last_seq).await
    }
}

/// Where segments `numbers` (ascending) of `shard` are read from: from the view, which knows
/// every committed segment's size and the history objects, so that the store is not listed;
/// from a listing when it does not.
pub(crate) async fn segment_sources(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &RwLock<ShardState>,
    numbers: Vec<u64>,
) -> Result<Vec<Source>, LogError> {
    let known = state
        .read()
        .map_err(|_| poisoned(shard))?
        .sources(numbers.iter().copied());
    match known {
        Some(sources) => Ok(sources),
        None => {
            let wanted = |n| numbers.binary_search(&n).is_ok();
            let reach = numbers.last().copied().unwrap_or(0);
            reader::listed_sources(store.as_ref(), shard, reach, wanted).await
        }
    }
}

/// A [`reader::Relocate`] that asks the view (compaction in this process updates it before
/// deleting anything), and lists the store only when the view answers what it answered the last
/// time (the segments moved without its knowing: another process on the same store compacted
/// them). A long read of a user's old log meets each step of a compaction round, which merges
/// into the newest history object and deletes the one before: it used to list the store from
/// its second move on, and a listing of a shard's tens of thousands of segments took the file
/// store's time from pushes (`make sustained`, 2026-12-02: 40 LISTs a second while compaction
/// ran). The reads keep the footers of the history objects they open in the view's
/// [`reader::Footers`]: a search of a user's older history (a stale patch's base, a resent
/// change id) opens each of the newest objects again and again, and read their footers and
/// page indexes each time (`make sustained`, 2026-12-03, run 20: ~28 read GETs per search).
pub(crate) fn by_view(
    store: Arc<dyn ObjectStore>,
    shard: u32,
    state: Arc<RwLock<ShardState>>,
) -> Result<reader::Relocate, LogError> {
    let footers = state.read().map_err(|_| poisoned(shard))?.footers.clone();
    let told: Arc<std::sync::Mutex<Option<Vec<reader::Source>>>> = Arc::default();
    let listing = reader::by_listing(store.clone(), shard);
    let relocate = reader::Relocate::new(move |numbers| {
        let (store, state, listing, told) =
            (store.clone(), state.clone(), listing.clone(), told.clone());
        async move {
            let sources = segment_sources(&store, shard, &state, numbers.clone()).await?;
            let again = {
                let mut told = told.lock().map_err(|_| poisoned(shard))?;
                let again = told.as_ref() == Some(&sources);
                *told = Some(sources.clone());
                again
            };
            if again {
                return listing.locate(numbers).await;
            }
            Ok(sources)
        }
        .boxed()
    });
    Ok(relocate.keeping_footers(footers))
}

/// One user's events in segments `numbers` (ascending) of `shard` ([`segment_sources`]).
async fn read_segments(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    user: UserId,
    numbers: Vec<u64>,
    up_to: UpTo,
) -> Result<Vec<Event>, LogError> {
    let segs = segment_sources(store, shard, state, numbers).await?;
    read_sources(store, shard, state, user, segs, up_to).await
}

/// One user's events in `sources` (ascending), relocated through the view when one moved.
async fn read_sources(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    user: UserId,
    sources: Vec<Source>,
    up_to: UpTo,
) -> Result<Vec<Event>, LogError> {
    let relocate = by_view(store.clone(), shard, state.clone())?;
    let (events, _) =
        reader::read_user_relocating(store.clone(), shard, user, sources, up_to, &relocate).await?;
    Ok(events)
}

/// The result of change id `id` in a user's events (`None`: the log does not have it), counted
/// in `keepsake_old_changes_found` when found.
pub(crate) fn find_change(
    events: &[Event],
    id: &keepsake_model::ChangeId,
    stats: &crate::LogStats,
) -> Option<keepsake_model::ChangeRef> {
    let found = events
        .iter()
        .find(|e| e.change_id == *id)
        .map(|e| keepsake_model::ChangeRef {
            item_id: e.item_id,
            version: e.version,
            seq: e.seq,
        })?;
    stats
        .old_changes_found
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(found)
}

/// Items handed out newest (last) first, in groups of `first`, then 8 times as many each time
/// (1, 8, 64... or 4, 32, 256...): a search of a user's history for something most often
/// recent, which stops once found, reads a few sources when it is recent and about 8/7 of
/// them at worst.
pub(crate) struct NewestFirst<T> {
    rest: Vec<T>,
    group: usize,
}

impl<T> NewestFirst<T> {
    /// `items` ascending (oldest first).
    pub(crate) fn new(items: Vec<T>, first: usize) -> Self {
        Self {
            rest: items,
            group: first.max(1),
        }
    }
}

impl<T> Iterator for NewestFirst<T> {
    type Item = Vec<T>;

    fn next(&mut self) -> Option<Vec<T>> {
        if self.rest.is_empty() {
            return None;
        }
        let newest = self
            .rest
            .split_off(self.rest.len() - self.group.min(self.rest.len()));
        self.group = self.group.saturating_mul(8);
        Some(newest)
    }
}

/// The results of change ids `ids` (ones the user's filter of older ids may hold) in the
/// user's log as this process's view knows it, and the last seq of the user the reads saw.
/// Sought newest source first, in groups of 1, 8, 64... sources, stopping once every id is
/// found: a resend is most often of a recent change, and reading the user's whole log (every
/// history object holds rows of every user) made each resend cost more as the log aged. Of
/// the segments the view's index covers, only the user's are read ([`ReadPlan::numbers`]):
/// the generation a checkpoint has just covered is not compacted yet, and after a round of
/// upkeep the resends of pushes that timed out searched its thousands of segments. An id
/// still not found is answered absent only from the whole log ([`user_log_in_view`], checked
/// dense and reaching `at_least`), read again: a false positive of the filter is rare.
pub(crate) async fn find_changes_in_view(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    user: UserId,
    ids: &[keepsake_model::ChangeId],
    at_least: u64,
    stats: &crate::LogStats,
) -> Result<(keepsake_model::OldChanges, u64), LogError> {
    let plan = state
        .read()
        .map_err(|_| poisoned(shard))?
        .read_plan(&user, UpTo::End);
    let sources = segment_sources(store, shard, state, plan.numbers()).await?;
    let relocate = by_view(store.clone(), shard, state.clone())?;
    let wanted = ids.iter().collect::<std::collections::HashSet<_>>().len();
    let mut found = keepsake_model::OldChanges::new();
    let mut last_seq = 0;
    let mut past_index = false;
    for newest in NewestFirst::new(sources, 1) {
        if found.len() == wanted {
            break;
        }
        stats.record_search_sources(&newest, plan.indexed_after);
        // Past the index once a source holds only segments before it (a history object
        // that compaction has just filled with some of the index's is still the index's).
        if !past_index
            && newest
                .first()
                .is_some_and(|s| *s.numbers().end() <= plan.indexed_after)
        {
            past_index = true;
            stats
                .searches_past_index
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (events, _) =
            reader::read_user_relocating(store.clone(), shard, user, newest, UpTo::End, &relocate)
                .await?;
        last_seq = last_seq.max(events.last().map_or(0, |e| e.seq));
        for id in ids {
            if !found.contains_key(id)
                && let Some(r) = find_change(&events, id, stats)
            {
                found.insert(*id, Some(r));
            }
        }
    }
    if found.len() == wanted {
        return Ok((found, last_seq));
    }
    let events = user_log_in_view(store, shard, state, user, at_least).await?;
    for id in ids {
        if !found.contains_key(id) {
            found.insert(*id, find_change(&events, id, stats));
        }
    }
    Ok((found, events.last().map_or(0, |e| e.seq)))
}

/// A user's committed events as this process's view knows them: every segment before its
/// index, then the segments its index names ([`ReadPlan::numbers`]), through the view's
/// sources (never a listing that may end early). Checked to run densely from seq 1 and to reach `at_least`:
/// resolving a change id that a filter of older ids may hold must see every one of them, or
/// an applied change could be staged again. Otherwise unavailable (retryable).
pub(crate) async fn user_log_in_view(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    user: UserId,
    at_least: u64,
) -> Result<Vec<Event>, LogError> {
    let numbers = state
        .read()
        .map_err(|_| poisoned(shard))?
        .read_plan(&user, UpTo::End)
        .numbers();
    let events = read_segments(store, shard, state, user, numbers, UpTo::End).await?;
    let dense = events.iter().zip(1..).all(|(e, seq)| e.seq == seq);
    let last = events.last().map_or(0, |e| e.seq);
    if !dense || last < at_least {
        return Err(LogError::Unavailable {
            shard,
            reason: format!(
                "the user's log read {} events up to seq {last}, not every one up to {at_least}",
                events.len()
            ),
        });
    }
    Ok(events)
}

/// Makes a user resident: the newest checkpoint's rows for the user, then the segments after
/// it up to the head. A commit that lands meanwhile is folded in before the user is inserted.
pub(crate) async fn load_user(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    user: UserId,
) -> Result<(), LogError> {
    'start: loop {
        // One snapshot: the head, the newest checkpoint, and the segments after it that the
        // index says hold the user.
        let ReadPlan {
            head: mut read_to,
            checkpoint,
            tail: mut segments,
            ..
        } = {
            let s = state.read().map_err(|_| poisoned(shard))?;
            if s.is_resident(&user) {
                return Ok(());
            }
            s.read_plan(&user, UpTo::End)
        };
        let mut loaded = match checkpoint {
            Some(c) => match user_in_checkpoint(store, shard, state, c, user, true).await {
                Ok(s) => s,
                Err(e) => match replace_checkpoint(store, shard, state, c).await? {
                    // A checkpoint that is there but unusable (a part it names is missing, or
                    // does not decode) is derived: the user's rows from the first segment.
                    Replaced::Present if matches!(e, LogError::Corrupt { segment, .. } if segment == c) =>
                    {
                        warn!(shard, checkpoint = c, error = %e, "the view's checkpoint is unusable; reading the user from the log");
                        // Opened again by the next load (it may have been written again).
                        if let Ok(mut s) = state.write()
                            && s.opened.as_ref().is_some_and(|o| o.segment() == c)
                        {
                            s.opened = None;
                        }
                        segments = (1..=read_to).collect();
                        UserState::default()
                    }
                    Replaced::Present => return Err(e),
                    Replaced::Adopted => continue 'start,
                    // No checkpoint at or below the head is left: the user's rows from the
                    // first segment (pruned by each source's statistics).
                    Replaced::None => {
                        segments = (1..=read_to).collect();
                        UserState::default()
                    }
                },
            },
            None => UserState::default(),
        };
        // Before the tail is applied: its versions are the ones stale patches name most.
        loaded.enable_version_links();
        loop {
            if !segments.is_empty() {
                let wanted = std::mem::take(&mut segments);
                let events = read_segments(store, shard, state, user, wanted, UpTo::End).await?;
                for e in &events {
                    keepsake_model::apply(&mut loaded, e)
                        .map_err(|err| LogError::corrupt(shard, read_to, err))?;
                }
            }
            let mut s = state.write().map_err(|_| poisoned(shard))?;
            if s.is_resident(&user) {
                return Ok(());
            }
            if s.checkpoint != checkpoint {
                // A new checkpoint pruned the index under us: start over from it.
                continue 'start;
            }
            if s.head == read_to {
                s.misses += 1;
                s.insert(user, loaded);
                return Ok(());
            }
            segments = s.segments_of(&user, read_to + 1, s.head);
            read_to = s.head;
        }
    }
}

/// A user's state in checkpoint `c` (with `with_changes`, its change ids too). The view's
/// checkpoint is opened once and kept in the view (a manifest says which part holds each user,
/// so a load or an as-of read reads one part's pages and no manifest); part footers are kept
/// in the view for every read.
pub(crate) async fn user_in_checkpoint(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    c: u64,
    user: UserId,
    with_changes: bool,
) -> Result<UserState, LogError> {
    let (cached, footers) = {
        let s = state.read().map_err(|_| poisoned(shard))?;
        (
            s.opened.clone().filter(|o| o.segment() == c),
            s.footers.clone(),
        )
    };
    let opened = match cached {
        Some(o) => o,
        None => {
            let o = open_checkpoint(store.as_ref(), shard, c).await?;
            let mut s = state.write().map_err(|_| poisoned(shard))?;
            if s.checkpoint == Some(c) {
                if let crate::reader::Checkpoint::Parts(m) = &o {
                    s.footers.retain_named(m);
                }
                s.opened = Some(o.clone());
            }
            o
        }
    };
    opened
        .user_with(store.clone(), user, with_changes, Some(&footers))
        .await
}

/// What [`replace_checkpoint`] did.
enum Replaced {
    /// The checkpoint is there: the read failed for another reason.
    Present,
    /// Gone; the view now starts from a newer one at or below its head.
    Adopted,
    /// Gone, and no other checkpoint at or below the view's head is left.
    None,
}

/// The view's checkpoint `c` could not be read. If it is gone — another process's retention
/// deleted it (that process is ahead and wrote newer ones) — the view adopts the newest
/// checkpoint at or below its head that is left; without one, loads read from the first
/// segment. Before this, a process answered 503 for every cold user until it was restarted.
async fn replace_checkpoint(
    store: &Arc<dyn ObjectStore>,
    shard: u32,
    state: &Arc<RwLock<ShardState>>,
    c: u64,
) -> Result<Replaced, LogError> {
    match checkpoint_exists(store.as_ref(), shard, c).await {
        Ok(false) => {}
        _ => return Ok(Replaced::Present),
    }
    let head = state.read().map_err(|_| poisoned(shard))?.head;
    let newer = list_checkpoints(store.as_ref(), shard)
        .await?
        .into_iter()
        .rfind(|x| *x <= head && *x > c);
    warn!(shard, checkpoint = c, adopted = ?newer, "the view's checkpoint was deleted by another process");
    match newer {
        Some(n) => {
            let mut s = state.write().map_err(|_| poisoned(shard))?;
            if s.checkpoint == Some(c) {
                s.checkpointed(n);
            }
            Ok(Replaced::Adopted)
        }
        None => Ok(Replaced::None),
    }
}

#[cfg(test)]
mod tests {
    use super::NewestFirst;

    #[test]
    fn newest_first_hands_out_growing_groups_from_the_end() {
        let groups: Vec<Vec<u64>> = NewestFirst::new((1..=80).collect(), 1).collect();
        assert_eq!(groups[0], vec![80]);
        assert_eq!(groups[1], (72..=79).collect::<Vec<_>>());
        assert_eq!(groups[2], (8..=71).collect::<Vec<_>>());
        assert_eq!(groups[3], (1..=7).collect::<Vec<_>>());
        assert_eq!(groups.len(), 4);
        let by_four: Vec<usize> = NewestFirst::new(vec![0u8; 40], 4)
            .map(|g| g.len())
            .collect();
        assert_eq!(by_four, vec![4, 32, 4]);
        assert_eq!(NewestFirst::new(Vec::<u8>::new(), 1).count(), 0);
    }
}
