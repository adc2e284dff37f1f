//! The view of one shard: committed state of the users it holds in memory, within a budget.
//!
//! Invariants:
//! - A resident user's state is exactly the fold of the shard's log up to `head` for that user.
//!   Committed events are applied to resident users; a user who is not resident is simply
//!   absent, and loading reads the newest checkpoint and the segments after it up to `head`.
//! - Users of a batch being committed are pinned: never evicted until their callers are answered,
//!   so staging and applying see the same state.
//! - The tail index lists, per user, the segments that hold their events, for every segment
//!   after `indexed_after` (the checkpoint before the newest, or the one recovery started
//!   from; where compaction runs, the one before that until compaction has moved the older
//!   generation) up to `head`: loads read only those after the newest checkpoint, and every read of a
//!   user's history (a stale patch's base, a resent change id, an as-of read) reads, of the
//!   segments the index covers, only the user's: the segments a checkpoint has just covered
//!   are not yet compacted, and a newest-first search read each of them.
//! - Beside the index, the view keeps each indexed segment's stamp (a digest of its batch id,
//!   random for every segment written): a [`Mark`] (a segment and its stamp) taken with a
//!   user's state says where in the log that state stood, and [`ShardState::unchanged_since`]
//!   tells from the index alone, without loading the user, that no segment since holds the
//!   user's events. A mark whose segment the view holds with another stamp (the store went
//!   back to an older copy, and the number was written again) proves nothing.
//! - When resident bytes exceed the budget, unpinned users drawn at random are evicted down to
//!   80% of it ([`ShardState::evict_over`]: not the least recently used, whom a fleet syncing
//!   in turn asks for next): after every commit, and before a user is loaded in, so that
//!   reads alone keep within it too. The budget gives way to what a checkpoint's fold or a
//!   compaction holds, and covers the indexes beside the users, measured every
//!   [`INDEX_MEASURE_EVERY`] commits ([`crate::budget`]). Evicting loses nothing: the log has
//!   everything.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use keepsake_model::{ApplyError, BatchId, Event, IdMap, UserId, UserState, apply};

use crate::budget::ViewBudget;
use crate::reader::{HistoryListed, Place, Source, Tag, UpTo, narrowest, sources_of};

/// Commits between two measures of the indexes beside the users, which the view's budget
/// covers: at 250 commits a second a shard, about every quarter second. A measure walks the
/// tail index (~25,000 users a shard under `make sustained`): too much for every commit.
pub const INDEX_MEASURE_EVERY: u32 = 64;

/// Change ids a resident user keeps exactly: those of its newest this-many events (up to twice
/// as many between retirements, [`UserState::retire_changes`]). 48: twice that fits a table of
/// 128 buckets (6 KiB a user), where 64 doubled it to 256.
pub const EXACT_CHANGE_IDS: u64 = 48;

#[derive(Debug)]
struct Resident {
    /// Shared so that a reader takes it out of the lock ([`ShardState::get_shared`]); a commit
    /// applies copy-on-write (`Arc::make_mut`), copying only while a reader still holds it.
    state: Arc<UserState>,
    bytes: usize,
}

/// What a read of one user up to a moment needs from the view, taken in one snapshot (one
/// lock): the head it reads to, the checkpoint it starts from, and the segments the index says
/// hold the user: those after that checkpoint, and those of the generations before it that the
/// index still covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// The last segment the view holds.
    pub head: u64,
    /// The newest checkpoint the view knows.
    pub checkpoint: Option<u64>,
    /// The segments after the checkpoint, up to the head, that may hold the user's events up to
    /// the moment (ascending).
    pub tail: Vec<u64>,
    /// The index covers every segment after this one (0: all of them).
    pub indexed_after: u64,
    /// The segments after `indexed_after` up to the checkpoint that may hold the user's events
    /// up to the moment (ascending): the generation the checkpoint has just covered (and the
    /// one before it while compaction lags).
    pub earlier: Vec<u64>,
}

impl ReadPlan {
    /// Every segment number that may hold the user's events up to the moment: all of those
    /// before the index (a reader prunes them by their statistics), then the ones the index
    /// says hold the user.
    pub fn numbers(&self) -> Vec<u64> {
        (1..=self.indexed_after).chain(self.indexed()).collect()
    }

    /// The segments after `indexed_after` that hold the user (ascending): `earlier`, then the
    /// tail.
    pub fn indexed(&self) -> impl Iterator<Item = u64> + '_ {
        self.earlier.iter().chain(&self.tail).copied()
    }
}

/// Where in a shard's log a state stood: the last segment folded into it, and that segment's
/// stamp, which tells that segment from another written under the same number after the store
/// went back to an older copy of itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mark {
    /// The segment.
    pub segment: u64,
    /// The segment's batch id folded to 64 bits ([`Mark::stamp_of`]).
    pub stamp: u64,
}

impl Mark {
    /// The stamp of a segment written by batch `batch`: its id's two halves xor'ed. A batch
    /// id is random for every segment a writer makes (and stored in the segment, so every
    /// process reading it finds the same), unlike its time, which a clock set ahead repeats
    /// for every segment until real time catches up (the writer never lets time go back).
    pub fn stamp_of(batch: BatchId) -> u64 {
        let (hi, lo) = batch.0.as_u64_pair();
        hi ^ lo
    }
}

/// Committed state of one shard.
#[derive(Debug, Default)]
pub struct ShardState {
    /// The last segment committed (0 for an empty log).
    pub head: u64,
    /// `recorded_at` of the last segment.
    pub last_recorded_at: Option<DateTime<Utc>>,
    /// The newest checkpoint (the segment it includes up to), if any.
    pub checkpoint: Option<u64>,
    /// The tail index covers every segment after this one up to the head: the checkpoint
    /// before the newest, or the one recovery started from (0: every segment); with
    /// [`Self::index_until_compacted`], lower while compaction lags (at most the second
    /// checkpoint before the newest).
    indexed_after: u64,
    /// The two checkpoints before the newest this view adopted (older first): the bounds of
    /// `indexed_after`.
    before: [Option<u64>; 2],
    /// Keep indexing a generation a newer checkpoint covered until compaction has moved its
    /// segments (set when compaction runs in the background).
    until_compacted: bool,
    /// Events committed since the newest checkpoint (drives the checkpointer).
    pub events_since_checkpoint: u64,
    /// The newest checkpoint as opened for loads (a manifest: where each user's part is), once
    /// a load opened it; dropped when a newer checkpoint is adopted.
    pub opened: Option<crate::reader::Checkpoint>,
    /// The footers of the parts loads and this shard's checkpoints read from (parts are
    /// immutable; trimmed to the parts a manifest names whenever a load opens a newer one or a
    /// checkpoint is written, ~61 a shard at 1M users; and to `LogConfig::footer_memory_bytes`,
    /// the least recently used going first).
    pub footers: Arc<crate::reader::Footers>,
    users: IdMap<UserId, Resident>,
    pinned: HashSet<UserId>,
    bytes: usize,
    /// What the resident users may take ([`ViewBudget::now`]: less while upkeep holds memory).
    budget: ViewBudget,
    /// Rounds of eviction so far: each draws its own order of the users.
    eviction_rounds: u64,
    /// The indexes beside the users ([`Self::index_footprint`]) as last measured, which the
    /// users' budget makes room for ([`ViewBudget::now_beside`]).
    index_counted: usize,
    /// Commits since the indexes were last measured.
    commits_unmeasured: u32,
    /// Reads that found the user in memory.
    pub hits: AtomicU64,
    /// Loads of users who were not resident.
    pub misses: u64,
    /// Users evicted.
    pub evictions: u64,
    /// For each user, the segments that hold their events, with the user's first seq in each
    /// (ascending in both), for every segment after `indexed_after` (the previous checkpoint:
    /// one generation back, so that a version from just before the newest checkpoint is still
    /// found by its seq in one segment, or two while the older generation is not compacted;
    /// after a restart, the checkpoint recovery started from): loading a user reads only those
    /// after the newest checkpoint, not every segment of the tail, and reads of a user's
    /// history only the user's of the generations before.
    tail_index: IdMap<UserId, Vec<(u64, u64)>>,
    /// The stamp of every segment the tail index covers, ascending: what a [`Mark`] is checked
    /// against.
    stamps: std::collections::VecDeque<(u64, u64)>,
    /// The size in bytes of every committed segment (index `n - 1`; 0: not known, or
    /// compacted): reads of one user take sizes from here instead of listing the store, which
    /// on a local store reads every file's metadata (a fifth of the server's time under pushes
    /// with stale patches). With each, which write of the object was seen (its tag): a read
    /// that finds another object in the name lists the store instead.
    segment_sizes: Vec<(u64, Tag)>,
    /// The shard's history objects that reads may use (verified by this process's compactor,
    /// or found at recovery), ascending by first segment.
    history: Vec<HistoryListed>,
    /// `last_recorded_at` of checkpoints' segments, as as-of reads found them: a committed
    /// segment never changes, and once compacted its time is in a history object's footer
    /// whose sources (tens of thousands after a burst of small pushes) cost more to parse than
    /// the rest of the read. At most [`CHECKPOINT_TIMES_KEPT`], the newest.
    checkpoint_times: std::collections::BTreeMap<u64, DateTime<Utc>>,
}

/// Checkpoints whose segment's time a view keeps (retention keeps one a day for a year, and
/// more of the last day: the reads of recent moments need the newest).
pub const CHECKPOINT_TIMES_KEPT: usize = 512;

impl ShardState {
    /// `last_recorded_at` of checkpoint `c`'s segment, if a read found it before.
    pub fn checkpoint_recorded_at(&self, c: u64) -> Option<DateTime<Utc>> {
        self.checkpoint_times.get(&c).copied()
    }

    /// Keeps `last_recorded_at` of checkpoint `c`'s segment (committed: it never changes).
    pub fn remember_checkpoint_time(&mut self, c: u64, t: DateTime<Utc>) {
        self.checkpoint_times.insert(c, t);
        while self.checkpoint_times.len() > CHECKPOINT_TIMES_KEPT {
            self.checkpoint_times.pop_first();
        }
    }

    /// The user's state, if resident.
    pub fn get(&self, user: &UserId) -> Option<&UserState> {
        self.touch(user).map(|r| r.state.as_ref())
    }

    /// The user's state, if resident, as a handle the caller keeps after releasing the lock:
    /// caller code (serialising a page, say) never runs under the shard lock, so it never
    /// holds up the writer's commit. The handle is the state as of this call.
    pub fn get_shared(&self, user: &UserId) -> Option<Arc<UserState>> {
        self.touch(user).map(|r| r.state.clone())
    }

    /// A resident user, counted as a hit.
    fn touch(&self, user: &UserId) -> Option<&Resident> {
        let r = self.users.get(user)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(r)
    }

    /// True when the user is in memory.
    pub fn is_resident(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    /// Users in memory.
    pub fn resident_users(&self) -> usize {
        self.users.len()
    }

    /// Approximate bytes in memory.
    pub fn resident_bytes(&self) -> usize {
        self.bytes
    }

    /// Records the size of committed segment `n` (numbers start at 1), and the object's tag.
    pub fn record_segment_size(&mut self, n: u64, size: u64, tag: Tag) {
        let Some(i) = n.checked_sub(1).and_then(|i| usize::try_from(i).ok()) else {
            return;
        };
        if self.segment_sizes.len() <= i {
            self.segment_sizes.resize(i + 1, (0, Tag::ANY));
        }
        self.segment_sizes[i] = (size, tag);
    }

    /// Records a history object (found at recovery, or written and verified by compaction).
    pub fn record_history(&mut self, h: HistoryListed) {
        if let Err(i) = self
            .history
            .binary_search_by_key(&(h.first, h.last), |x| (x.first, x.last))
        {
            self.history.insert(i, h);
        }
    }

    /// Segments `h.first..=h.last` are now read from `h` (written, read back and verified):
    /// forget their own objects and the narrower history objects `h` was made from, which
    /// compaction deletes next.
    pub fn compacted(&mut self, h: HistoryListed) {
        for n in h.first..=h.last {
            if let Some(size) = usize::try_from(n - 1)
                .ok()
                .and_then(|i| self.segment_sizes.get_mut(i))
            {
                *size = (0, Tag::ANY);
            }
        }
        self.history
            .retain(|x| !(h.first <= x.first && x.last <= h.last));
        self.record_history(h);
        self.footers.retain_history(&self.history);
        self.advance_index();
    }

    /// The history objects this view reads from.
    pub fn history(&self) -> &[HistoryListed] {
        &self.history
    }

    /// Where committed segments `numbers` (ascending, at most `head`) are read from: their own
    /// objects, or history objects; `None` when one is past the head or not known here (the
    /// caller lists the store instead).
    pub fn sources(&self, numbers: impl IntoIterator<Item = u64>) -> Option<Vec<Source>> {
        sources_of(numbers, |n| {
            if n == 0 || n > self.head {
                return None;
            }
            let (size, tag) = usize::try_from(n - 1)
                .ok()
                .and_then(|i| self.segment_sizes.get(i))
                .copied()
                .unwrap_or((0, Tag::ANY));
            if size > 0 {
                Some(Place::Segment(size, tag))
            } else {
                narrowest(&self.history, n).map(Place::History)
            }
        })
        .ok()
    }

    /// The indexes kept beside the users, which stay in memory whoever is resident: (users in
    /// the tail index, approximate bytes of the tail index, the segment sizes and the history
    /// objects). The tail index holds the users written since the checkpoint before the
    /// newest (the one before that while compaction lags), so it grows with recent writers,
    /// not with every user the shard has.
    pub fn index_footprint(&self) -> (usize, usize) {
        use std::mem::size_of;
        // Key, value and a hash table's control byte and slack per entry.
        const PER_USER: usize = size_of::<UserId>() + size_of::<Vec<(u64, u64)>>() + 8;
        let tail: usize = self
            .tail_index
            .values()
            .map(|segs| PER_USER + segs.capacity() * size_of::<(u64, u64)>())
            .sum();
        let sizes = self.segment_sizes.capacity() * size_of::<(u64, Tag)>()
            + self.stamps.capacity() * size_of::<(u64, u64)>();
        let history = self.history.capacity() * size_of::<HistoryListed>();
        // The opened manifest: the deltas' user lists, and the base ranges.
        let manifest = match &self.opened {
            Some(crate::reader::Checkpoint::Parts(m)) => {
                m.deltas
                    .iter()
                    .map(|d| d.users.capacity() * size_of::<UserId>())
                    .sum::<usize>()
                    + m.base.capacity() * size_of::<keepsake_segment::BasePart>()
            }
            _ => 0,
        };
        let footers = self.footers.bytes();
        (
            self.tail_index.len(),
            tail + sizes + history + manifest + footers,
        )
    }

    /// Records which users segment `n` holds (call for every segment after the checkpoint).
    pub fn index_segment(&mut self, n: u64, events: &[Event]) {
        for e in events {
            let segs = self.tail_index.entry(e.user_id).or_default();
            if segs.last().map(|(s, _)| *s) != Some(n) {
                segs.push((n, e.seq));
            }
        }
    }

    /// The segments in `from..=to` that hold the user's events (`from` after `indexed_after`:
    /// the index covers nothing before).
    pub fn segments_of(&self, user: &UserId, from: u64, to: u64) -> Vec<u64> {
        self.tail_index
            .get(user)
            .map(|s| {
                s.iter()
                    .map(|(n, _)| *n)
                    .filter(|n| (from..=to).contains(n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// [`Self::segments_of`] without the segments whose first event of the user is after seq
    /// `until`: they hold nothing a read up to `until` needs.
    pub fn segments_until(&self, user: &UserId, from: u64, to: u64, until: u64) -> Vec<u64> {
        self.tail_index
            .get(user)
            .map(|s| {
                s.iter()
                    .filter(|(n, first)| (from..=to).contains(n) && *first <= until)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The segment that holds the user's event `seq`, if the index covers it (the event is
    /// after `indexed_after`).
    pub fn segment_holding(&self, user: &UserId, seq: u64) -> Option<u64> {
        let segs = self.tail_index.get(user)?;
        // The last segment whose first seq of the user is at most `seq`.
        let i = segs.partition_point(|(_, first)| *first <= seq);
        // i == 0: the event is older than every indexed segment of the user.
        i.checked_sub(1).map(|i| segs[i].0)
    }

    /// The head as a [`Mark`], if the view has its stamp (it has for every segment the index
    /// covers; not for the checkpoint recovery started from, nor for an empty log).
    pub fn head_mark(&self) -> Option<Mark> {
        self.stamps
            .back()
            .filter(|(n, _)| *n == self.head)
            .map(|&(segment, stamp)| Mark { segment, stamp })
    }

    /// The head's [`Mark`] if no segment after `since` holds the user's events: then the user's
    /// state is the one it had at `since`. Answered from the tail index alone, so a user who is
    /// not in memory is not loaded. `None` when the index cannot tell: `since` is before the
    /// segments it covers or past the head, or the view holds that segment with another stamp
    /// (another copy of the store); the caller then reads the user.
    pub fn unchanged_since(&self, user: &UserId, since: Mark) -> Option<Mark> {
        if since.segment <= self.indexed_after || since.segment > self.head {
            return None;
        }
        let i = self
            .stamps
            .binary_search_by_key(&since.segment, |(n, _)| *n)
            .ok()?;
        if self.stamps[i].1 != since.stamp {
            return None;
        }
        let changed = self
            .tail_index
            .get(user)
            .and_then(|segs| segs.last())
            .is_some_and(|(n, _)| *n > since.segment);
        if changed {
            return None;
        }
        self.head_mark()
    }

    /// Where recovery starts: at checkpoint `c` (or the log's start), nothing after it read
    /// yet. The segments after it are then committed one by one ([`Self::commit_segment`]),
    /// and the index covers them all.
    pub fn recover_from(&mut self, c: Option<u64>) {
        self.checkpoint = c;
        self.head = c.unwrap_or(0);
        self.indexed_after = self.head;
        self.before = [None, None];
        self.tail_index.clear();
        self.stamps.clear();
    }

    /// Keep the index of a generation that a newer checkpoint covered until compaction has
    /// moved its segments into history objects, not only until the next checkpoint (at most
    /// two generations before the newest checkpoint). Without it, a checkpoint that came
    /// before the previous round's compaction left thousands of small segments outside the
    /// index, searched segment by segment by every stale patch and resend (`make sustained`,
    /// 2026-12-02, run 16: 130,000-180,000 GETs per 10 s, pushes at a tenth). Only where
    /// compaction runs: without it nothing would ever let the older generation go.
    pub fn index_until_compacted(&mut self, on: bool) {
        self.until_compacted = on;
    }

    /// The tail index covers every segment after this one up to the head.
    pub fn indexed_after(&self) -> u64 {
        self.indexed_after
    }

    /// A checkpoint now covers segments up to `upto`: the index forgets the segments the
    /// previous checkpoint covered, keeping one generation for lookups by seq (two while
    /// compaction lags: [`Self::index_until_compacted`]).
    ///
    /// Only forward: a checkpoint written slowly can land after the view adopted a newer one
    /// (another process's retention deleted the view's), and going back to it, with the index
    /// pruned for the newer one, would load users without the segments between the two.
    pub fn checkpointed(&mut self, upto: u64) {
        if self.checkpoint.is_some_and(|c| c >= upto) {
            return;
        }
        self.opened = None;
        if let Some(previous) = self.checkpoint.replace(upto) {
            self.before = [self.before[1], Some(previous)];
        }
        self.advance_index();
    }

    /// The segments before which the index may now forget: the checkpoint before the newest;
    /// while compaction lags ([`Self::index_until_compacted`]), the end of the segments moved
    /// into history objects if lower, but never below the second checkpoint before the newest.
    /// Only forward.
    fn advance_index(&mut self) {
        let [older, Some(previous)] = self.before else {
            return;
        };
        let to = if self.until_compacted {
            previous
                .min(self.compacted_through())
                .max(older.unwrap_or(0))
        } else {
            previous
        };
        if to <= self.indexed_after {
            return;
        }
        self.tail_index.retain(|_, segs| {
            segs.retain(|(n, _)| *n > to);
            !segs.is_empty()
        });
        while self.stamps.front().is_some_and(|(n, _)| *n <= to) {
            self.stamps.pop_front();
        }
        self.indexed_after = to;
    }

    /// Every segment up to this one is in the view's history objects (0: none).
    fn compacted_through(&self) -> u64 {
        let mut through = 0;
        for h in &self.history {
            if h.first > through + 1 {
                break;
            }
            through = through.max(h.last);
        }
        through
    }

    /// Puts a loaded user in memory (unless another load got there first).
    pub fn insert(&mut self, user: UserId, mut state: UserState) {
        if self.users.contains_key(&user) {
            return;
        }
        // Stale patches find their bases' seqs by these links (see `Log::push`).
        state.enable_version_links();
        let bytes = state.approx_bytes();
        // Room first, so that the newcomer is not the one drawn: users loaded for reads alone
        // (no commit to evict after) keep within the budget too.
        self.evict_over(self.budget_bytes().saturating_sub(bytes));
        self.bytes += bytes;
        self.users.insert(
            user,
            Resident {
                state: Arc::new(state),
                bytes,
            },
        );
    }

    /// Keeps users in memory until unpinned.
    pub fn pin(&mut self, users: impl IntoIterator<Item = UserId>) {
        self.pinned.extend(users);
    }

    /// Releases pinned users.
    pub fn unpin_all(&mut self) {
        self.pinned.clear();
    }

    /// The [`ReadPlan`] of `user` up to `up_to`: by seq, tail segments whose first event of the
    /// user is past the seq are left out.
    pub fn read_plan(&self, user: &UserId, up_to: UpTo) -> ReadPlan {
        let c = self.checkpoint.unwrap_or(0);
        let of = |from, to| match up_to {
            UpTo::Seq(n) => self.segments_until(user, from, to, n),
            UpTo::End | UpTo::Time(_) => self.segments_of(user, from, to),
        };
        ReadPlan {
            head: self.head,
            checkpoint: self.checkpoint,
            tail: of(c + 1, self.head),
            indexed_after: self.indexed_after,
            earlier: if c > self.indexed_after {
                of(self.indexed_after + 1, c)
            } else {
                Vec::new()
            },
        }
    }

    /// Moves the view to segment `n`, the next one, committed with `events` by batch `batch`
    /// (by this writer, by another process, or found at recovery): folds them into resident
    /// users, indexes which users it holds and its stamp ([`Mark`]), records where it is read
    /// from (`placed`: its size and tag, when it is an
    /// object of its own), and advances the head and `last_recorded_at` (never backwards). The
    /// one way the head moves. A fold error (which staging rules out) is returned after the view
    /// has moved, and every user the segment touches leaves the view: the segment is durable,
    /// so those users load again from the log, which refuses them if it does not fold — the view
    /// never keeps a state that missed part of a committed segment.
    pub fn commit_segment(
        &mut self,
        n: u64,
        events: &[Event],
        last_recorded_at: DateTime<Utc>,
        batch: BatchId,
        placed: Option<(u64, Tag)>,
    ) -> Result<(), ApplyError> {
        let folded = self.apply_events(events);
        if folded.is_err() {
            for e in events {
                if let Some(r) = self.users.remove(&e.user_id) {
                    self.bytes = self.bytes.saturating_sub(r.bytes);
                }
            }
        }
        self.index_segment(n, events);
        self.stamps.push_back((n, Mark::stamp_of(batch)));
        if let Some((size, tag)) = placed {
            self.record_segment_size(n, size, tag);
        }
        self.head = n;
        self.last_recorded_at = Some(
            self.last_recorded_at
                .map_or(last_recorded_at, |t| t.max(last_recorded_at)),
        );
        folded
    }

    /// Folds committed events into the resident users they belong to; others are skipped (they
    /// will be loaded from the log). Every event advances `last_recorded_at`.
    pub fn apply_events(&mut self, events: &[Event]) -> Result<(), ApplyError> {
        let mut touched: HashSet<UserId> = HashSet::new();
        let mut result = Ok(());
        for e in events {
            if self.last_recorded_at.is_none_or(|t| t < e.recorded_at) {
                self.last_recorded_at = Some(e.recorded_at);
            }
            if let Some(r) = self.users.get_mut(&e.user_id) {
                if let Err(err) = apply(Arc::make_mut(&mut r.state), e) {
                    result = Err(err);
                    break;
                }
                touched.insert(e.user_id);
            }
        }
        for u in touched {
            if let Some(r) = self.users.get_mut(&u) {
                // A resident user keeps its recent change ids exactly and the rest as a filter
                // (pushes resolve those from the log): its memory does not grow with its age.
                if r.state.changes_to_retire(EXACT_CHANGE_IDS) {
                    Arc::make_mut(&mut r.state).retire_changes(EXACT_CHANGE_IDS);
                }
                let now = r.state.approx_bytes();
                self.bytes = (self.bytes + now).saturating_sub(r.bytes);
                r.bytes = now;
            }
        }
        self.events_since_checkpoint += events.len() as u64;
        result
    }

    /// Sets what the resident users may take.
    pub fn set_budget(&mut self, budget: ViewBudget) {
        self.budget = budget;
    }

    /// The budget this view keeps within (its upkeep's fold gives way past its floors).
    pub fn budget(&self) -> ViewBudget {
        self.budget.clone()
    }

    /// What the process's upkeep holds, which this view gives way to.
    pub fn upkeep_memory(&self) -> crate::budget::UpkeepMemory {
        self.budget.upkeep().clone()
    }

    /// What the resident users may take now: the budget less what upkeep holds and the
    /// indexes beside the users ([`ViewBudget::now_beside`]).
    pub fn budget_bytes(&self) -> usize {
        self.budget.now_beside(self.index_counted)
    }

    /// The indexes beside the users as the budget last counted them.
    pub fn index_counted_bytes(&self) -> usize {
        self.index_counted
    }

    /// Measures the indexes beside the users again ([`Self::index_footprint`]: a walk of the
    /// tail index, too much for every commit), for the budget to make room for.
    pub fn measure_index(&mut self) {
        self.index_counted = self.index_footprint().1;
        self.commits_unmeasured = 0;
    }

    /// After a commit: measures the indexes every [`INDEX_MEASURE_EVERY`] commits, then evicts
    /// as [`Self::evict_over`] does, over the budget as it is now ([`Self::budget_bytes`]).
    pub fn evict_over_budget(&mut self) {
        self.commits_unmeasured += 1;
        if self.commits_unmeasured >= INDEX_MEASURE_EVERY {
            self.measure_index();
        }
        self.evict_over(self.budget_bytes());
    }

    /// Evicts unpinned users in an order drawn afresh each round while over `budget` bytes
    /// (down to 80%).
    ///
    /// Drawn, not the least recently used: devices sync in turn, each about as often as the
    /// next, and when the users they sync outnumber what the budget holds, the least recently
    /// used are the very users asked for next. Every read then missed (`make sustained`, run
    /// 27: view misses as many as pushes, each a load from the checkpoint and the tail, which
    /// took ~30% of the server's profile samples at minute 8), where a drawn order keeps about
    /// as many of them resident and answers a share of reads from memory (run 28: ~43%). The
    /// price: a user asked for far more often than the rest is evicted as often as any other
    /// (each round evicts about one resident user in five) and read from the log again on its
    /// next request, where the least recently used order would have kept it; in a simulation
    /// of skewed (Zipf) requests the two orders' hit rates were close (0.82 drawn, 0.83 least
    /// recently used). The order is a hash of the user and the round: deterministic, so tests
    /// see the same evictions.
    pub fn evict_over(&mut self, budget: usize) {
        if self.bytes <= budget {
            return;
        }
        let target = budget / 5 * 4;
        self.eviction_rounds += 1;
        let round = self.eviction_rounds;
        let mut candidates: Vec<(u64, UserId, usize)> = self
            .users
            .iter()
            .filter(|(u, _)| !self.pinned.contains(*u))
            .map(|(u, r)| (eviction_draw(u, round), *u, r.bytes))
            .collect();
        candidates.sort_unstable_by_key(|(d, _, _)| *d);
        for (_, user, bytes) in candidates {
            if self.bytes <= target {
                break;
            }
            self.users.remove(&user);
            self.bytes = self.bytes.saturating_sub(bytes);
            self.evictions += 1;
        }
    }
}

/// Where `user` falls in eviction round `round`'s order: a mix of both (splitmix64's
/// finaliser), so each round's order is unrelated to the last's and to the ids' own order.
fn eviction_draw(user: &UserId, round: u64) -> u64 {
    let id = user.0.as_u128();
    let mut x = (id as u64) ^ ((id >> 64) as u64) ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_model::fixtures::history;

    /// The batch id of test segment `n`.
    fn batch(n: u64) -> BatchId {
        BatchId(uuid::Uuid::from_u64_pair(
            n,
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ))
    }

    /// Users synced in turn, more of them than the budget holds: with the least recently used
    /// evicted, every read missed (each user evicted just before its turn); with a drawn order
    /// a share of them stays resident, and reads of them hit. The budget holds, and pinned users
    /// are never evicted.
    #[test]
    fn users_synced_in_turn_beyond_the_budget_are_still_found_in_memory() {
        let mut view = ShardState::default();
        let users: Vec<UserId> = (1..=1_000u128)
            .map(|i| UserId(uuid::Uuid::from_u128(i)))
            .collect();
        let mut sample = UserState::default();
        for e in history(1, 1, 8, chrono::DateTime::UNIX_EPOCH) {
            apply(&mut sample, &e).expect("apply");
        }
        let one = sample.approx_bytes();
        assert!(one > 0);
        // A budget of ~780 users, as in `make sustained` (100,000 users, ~78,000 resident).
        let budget = one * 780;
        let pinned = users[0];
        view.insert(pinned, sample.clone());
        view.pin([pinned]);
        let (mut hits, mut reads) = (0, 0);
        for round in 0..6 {
            for u in &users[1..] {
                let hit = view.get(u).is_some();
                if round > 0 {
                    reads += 1;
                    hits += usize::from(hit);
                }
                if !hit {
                    view.insert(*u, sample.clone());
                }
                view.evict_over(budget);
                assert!(view.resident_bytes() <= budget, "over the budget");
                assert!(view.is_resident(&pinned), "a pinned user was evicted");
            }
        }
        let share = hits as f64 / reads as f64;
        assert!(share > 0.3, "{hits} of {reads} reads hit");
    }

    /// A view gives way while a fold holds memory (its share of it), by evicting at the next
    /// commit and before each load; a user loaded in is never the one evicted for it, nor is a
    /// pinned user. When the fold ends, the budget is whole again.
    #[test]
    fn a_view_gives_way_to_a_fold_and_loads_keep_within_it() {
        use crate::budget::{UpkeepMemory, ViewBudget};
        let mut sample = UserState::default();
        for e in history(1, 1, 8, chrono::DateTime::UNIX_EPOCH) {
            apply(&mut sample, &e).expect("apply");
        }
        sample.enable_version_links();
        let one = sample.approx_bytes();
        let upkeep = UpkeepMemory::default();
        let mut view = ShardState::default();
        // Two shards share the upkeep's memory: each gives way by half of it.
        view.set_budget(ViewBudget::new(one * 100, 2, upkeep.clone()));
        let users: Vec<UserId> = (1..=300u128)
            .map(|i| UserId(uuid::Uuid::from_u128(i)))
            .collect();
        view.pin([users[0]]);
        for u in &users {
            view.insert(*u, sample.clone());
            assert!(view.is_resident(u), "the user loaded in was evicted");
            assert!(view.resident_bytes() <= one * 100, "over the budget");
        }
        let fold = upkeep.hold();
        fold.set(one * 120);
        assert_eq!(view.budget_bytes(), one * 40);
        view.evict_over_budget();
        assert!(
            view.resident_bytes() <= one * 40,
            "the view did not give way"
        );
        for u in &users {
            view.insert(*u, sample.clone());
            assert!(
                view.resident_bytes() <= one * 40,
                "a load passed the lowered budget"
            );
        }
        assert!(view.is_resident(&users[0]), "a pinned user was evicted");
        drop(fold);
        assert_eq!(view.budget_bytes(), one * 100);
    }

    /// The times of checkpoints' segments are kept for the newest [`CHECKPOINT_TIMES_KEPT`]
    /// checkpoints; an older one is read again.
    #[test]
    fn checkpoint_times_are_kept_for_the_newest_checkpoints() {
        let mut view = ShardState::default();
        let at = |c: u64| chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(c as i64);
        let kept = CHECKPOINT_TIMES_KEPT as u64;
        for c in 1..=kept + 10 {
            view.remember_checkpoint_time(c * 100, at(c));
        }
        assert_eq!(view.checkpoint_recorded_at(100), None);
        assert_eq!(view.checkpoint_recorded_at(1000), None);
        assert_eq!(view.checkpoint_recorded_at(1100), Some(at(11)));
        assert_eq!(
            view.checkpoint_recorded_at((kept + 10) * 100),
            Some(at(kept + 10))
        );
        assert_eq!(view.checkpoint_recorded_at(150), None);
    }

    /// Segments of 10 events of one user each, then a checkpoint: the index answers which
    /// segment holds a seq, and nothing for a seq the checkpoint covers.
    #[test]
    fn the_tail_index_finds_the_segment_of_a_seq_and_forgets_checkpointed_ones() {
        let start = chrono::DateTime::UNIX_EPOCH;
        let events = history(1, 1, 50, start);
        let user = events[0].user_id;
        let mut view = ShardState::default();
        for (i, chunk) in events.chunks(10).enumerate() {
            view.index_segment(i as u64 + 1, chunk);
        }
        assert_eq!(view.segments_of(&user, 1, 5), vec![1, 2, 3, 4, 5]);
        assert_eq!(view.segments_until(&user, 1, 5, 25), vec![1, 2, 3]);
        assert_eq!(view.segments_until(&user, 1, 5, 10), vec![1]);
        assert_eq!(view.segments_until(&user, 2, 5, 50), vec![2, 3, 4, 5]);
        for seq in 1..=50u64 {
            assert_eq!(
                view.segment_holding(&user, seq),
                Some((seq - 1) / 10 + 1),
                "seq {seq}"
            );
        }
        view.checkpointed(2);
        // One generation is kept: versions just before the checkpoint are still found.
        assert_eq!(view.segment_holding(&user, 20), Some(2));
        assert_eq!(view.segments_of(&user, 3, 5), vec![3, 4, 5]);
        view.checkpointed(4);
        assert_eq!(view.segments_of(&user, 1, 5), vec![3, 4, 5]);
        assert_eq!(
            view.segment_holding(&user, 20),
            None,
            "covered by the checkpoint before the newest"
        );
        assert_eq!(view.segment_holding(&user, 21), Some(3));
        // A checkpoint older than the view's changes nothing.
        view.checkpointed(3);
        assert_eq!(view.checkpoint, Some(4));
        assert_eq!(view.segments_of(&user, 1, 5), vec![3, 4, 5]);
        assert_eq!(view.segment_holding(&UserId(uuid::Uuid::nil()), 1), None);
    }

    /// The index footprint counts the tail's users and falls when checkpoints let them go.
    #[test]
    fn the_index_footprint_follows_the_tail() {
        let start = chrono::DateTime::UNIX_EPOCH;
        let events = history(3, 1, 20, start);
        let mut view = ShardState::default();
        assert_eq!(view.index_footprint(), (0, 0));
        for (i, chunk) in events.chunks(10).enumerate() {
            view.index_segment(i as u64 + 1, chunk);
        }
        let users = events
            .iter()
            .map(|e| e.user_id)
            .collect::<std::collections::HashSet<_>>()
            .len();
        let (indexed, bytes) = view.index_footprint();
        assert_eq!(indexed, users);
        assert!(
            bytes >= users * (16 + 24 + 16),
            "{bytes} bytes for {users} users"
        );
        let last = events.chunks(10).count() as u64;
        view.checkpointed(last);
        view.checkpointed(last + 1);
        assert_eq!(
            view.index_footprint(),
            (0, 0),
            "both generations checkpointed"
        );
    }

    /// Where compaction runs, a generation a newer checkpoint covered stays indexed until its
    /// segments are in history objects, two generations back at most; without it, one.
    #[test]
    fn the_index_keeps_a_generation_until_it_is_compacted() {
        let start = chrono::DateTime::UNIX_EPOCH;
        let events = history(1, 1, 80, start);
        let user = events[0].user_id;
        let mut lagging = ShardState::default();
        lagging.index_until_compacted(true);
        let mut plain = ShardState::default();
        for (i, chunk) in events.chunks(10).enumerate() {
            for view in [&mut lagging, &mut plain] {
                view.commit_segment(i as u64 + 1, chunk, start, batch(i as u64 + 1), None)
                    .expect("folds");
            }
        }
        for view in [&mut lagging, &mut plain] {
            view.checkpointed(2);
            view.checkpointed(4);
        }
        assert_eq!(plain.indexed_after(), 2, "one generation back");
        assert_eq!(lagging.indexed_after(), 0, "nothing compacted yet");
        assert_eq!(
            lagging.read_plan(&user, UpTo::End).earlier,
            vec![1, 2, 3, 4]
        );
        assert_eq!(lagging.segment_holding(&user, 5), Some(1));
        let object = |first, last| HistoryListed {
            first,
            last,
            size: 1,
        };
        // Compacted, but not up to the checkpoint before the newest: still indexed after it.
        lagging.compacted(object(1, 1));
        assert_eq!(lagging.indexed_after(), 1);
        assert_eq!(lagging.segment_holding(&user, 5), None, "forgotten");
        // A third checkpoint: two generations back at most, whatever compaction did.
        lagging.checkpointed(6);
        assert_eq!(lagging.indexed_after(), 2);
        lagging.compacted(object(1, 4));
        assert_eq!(
            lagging.indexed_after(),
            4,
            "compacted through the previous checkpoint"
        );
        assert_eq!(lagging.read_plan(&user, UpTo::End).earlier, vec![5, 6]);
        // A gap in the history objects: compacted only as far as they run from segment 1.
        lagging.compacted(object(7, 7));
        lagging.checkpointed(8);
        assert_eq!(
            lagging.indexed_after(),
            4,
            "segments 5 and 6 are not compacted"
        );
        lagging.compacted(object(5, 6));
        assert_eq!(lagging.indexed_after(), 6);
        // Only forward.
        lagging.recover_from(Some(8));
        lagging.index_until_compacted(true);
        lagging.checkpointed(9);
        assert_eq!(lagging.indexed_after(), 8);
    }

    /// A mark taken at a segment says a user is unchanged exactly while no later segment holds
    /// the user's events; it proves nothing before the index, past the head, with another stamp
    /// under its number, or once recovery started the index again.
    #[test]
    fn a_mark_tells_an_unchanged_user_from_the_index_alone() {
        let start = chrono::DateTime::UNIX_EPOCH;
        let a = history(1, 1, 20, start);
        let b = history(2, 1, 20, start);
        let (ua, ub) = (a[0].user_id, b[0].user_id);
        assert_ne!(ua, ub);
        // One time for every segment: a clock set ahead, which the writer holds at its last
        // time until real time catches up. Marks must not rely on it.
        let at = |_: u64| start;
        let mark = |n: u64| Mark {
            segment: n,
            stamp: Mark::stamp_of(batch(n)),
        };
        let mut view = ShardState::default();
        assert_eq!(view.head_mark(), None, "an empty log has no mark");
        // Segments 1-2 hold user a, 3-4 user b.
        let chunks = [&a[..10], &a[10..], &b[..10], &b[10..]];
        let mut taken = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let n = i as u64 + 1;
            view.commit_segment(n, chunk, at(n), batch(n), None)
                .expect("folds");
            taken.push(view.head_mark().expect("a mark"));
        }
        assert_eq!(taken, (1..=4).map(mark).collect::<Vec<_>>());
        assert_eq!(view.head_mark(), Some(mark(4)));
        assert_eq!(view.unchanged_since(&ua, mark(2)), Some(mark(4)));
        assert_eq!(view.unchanged_since(&ua, mark(1)), None, "a is in 2");
        assert_eq!(view.unchanged_since(&ub, mark(3)), None, "b is in 4");
        assert_eq!(view.unchanged_since(&ub, mark(4)), Some(mark(4)));
        let stranger = UserId(uuid::Uuid::from_u128(77));
        assert_eq!(view.unchanged_since(&stranger, mark(1)), Some(mark(4)));
        // The store went back to segment 1 and other writes took the numbers again, at the
        // same time: the mark taken at the lost segment 2 vouches for nothing there.
        let mut gone_back = ShardState::default();
        gone_back
            .commit_segment(1, &a[..10], at(1), batch(1), None)
            .expect("folds");
        for (n, chunk) in [(2, &b[..10]), (3, &b[10..])] {
            gone_back
                .commit_segment(n, chunk, at(n), batch(100 + n), None)
                .expect("folds");
        }
        assert_eq!(gone_back.unchanged_since(&ua, taken[1]), None);
        assert_eq!(
            gone_back.unchanged_since(&ua, taken[0]),
            gone_back.head_mark()
        );
        assert_eq!(view.unchanged_since(&ua, mark(5)), None, "past the head");
        assert_eq!(view.unchanged_since(&ua, mark(0)), None, "before the index");
        // Checkpoints at 2 then 3: the index covers only segments after 2.
        view.checkpointed(2);
        view.checkpointed(3);
        assert_eq!(view.indexed_after(), 2);
        assert_eq!(
            view.unchanged_since(&ua, mark(2)),
            None,
            "no longer covered"
        );
        assert_eq!(view.unchanged_since(&ua, mark(3)), Some(mark(4)));
        // Recovery from checkpoint 4: nothing after it read yet, so nothing vouched for.
        view.recover_from(Some(4));
        assert_eq!(view.head_mark(), None);
        assert_eq!(view.unchanged_since(&ua, mark(4)), None);
        view.commit_segment(5, &b[..0], at(5), batch(5), None)
            .expect("folds");
        assert_eq!(view.unchanged_since(&ua, mark(5)), Some(mark(5)));
        assert_eq!(view.unchanged_since(&ua, mark(4)), None);
    }

    /// The one way the head moves: folded into resident users, indexed, placed, and
    /// `last_recorded_at` never backwards; a fold error still moves the view.
    #[test]
    fn commit_segment_advances_the_view_once() {
        let start = chrono::DateTime::UNIX_EPOCH;
        let events = history(1, 1, 30, start);
        let user = events[0].user_id;
        let mut view = ShardState::default();
        view.insert(user, UserState::default());
        let late = start + chrono::Duration::days(1);
        for (i, chunk) in events.chunks(10).enumerate() {
            let n = i as u64 + 1;
            let at = if n == 2 { late } else { start };
            view.commit_segment(n, chunk, at, batch(n), Some((100 * n, Tag::ANY)))
                .expect("folds");
            assert_eq!(view.head, n);
        }
        assert_eq!(view.last_recorded_at, Some(late), "never backwards");
        assert_eq!(view.segments_of(&user, 1, 3), vec![1, 2, 3]);
        use keepsake_model::StateRead;
        assert_eq!(view.get(&user).map(|s| s.last_seq()), Some(30));
        // Events that do not fold (seq 11 again) are reported, the view still moves on, and the
        // user leaves the view (to load again from the log) rather than keep a partial fold.
        let again = &events[10..20];
        assert!(
            view.commit_segment(4, again, start, batch(4), None)
                .is_err()
        );
        assert_eq!(view.head, 4);
        assert!(!view.is_resident(&user));
    }

    /// A read plan is one snapshot: head, checkpoint and the user's tail, cut at a seq.
    #[test]
    fn read_plan_takes_head_checkpoint_and_tail_together() {
        let start = chrono::DateTime::UNIX_EPOCH;
        let events = history(1, 1, 50, start);
        let user = events[0].user_id;
        let mut view = ShardState::default();
        for (i, chunk) in events.chunks(10).enumerate() {
            view.commit_segment(i as u64 + 1, chunk, start, batch(i as u64 + 1), None)
                .expect("folds");
        }
        let plan = view.read_plan(&user, UpTo::End);
        assert_eq!(
            plan,
            ReadPlan {
                head: 5,
                checkpoint: None,
                tail: vec![1, 2, 3, 4, 5],
                indexed_after: 0,
                earlier: Vec::new(),
            }
        );
        assert_eq!(view.read_plan(&user, UpTo::Seq(25)).tail, vec![1, 2, 3]);
        view.checkpointed(2);
        let plan = view.read_plan(&user, UpTo::End);
        assert_eq!((plan.head, plan.checkpoint), (5, Some(2)));
        assert_eq!(plan.tail, vec![3, 4, 5]);
        // The index still covers the segments the checkpoint has just covered.
        assert_eq!(plan.earlier, vec![1, 2]);
        assert_eq!(plan.numbers(), vec![1, 2, 3, 4, 5]);
        let nobody = UserId(uuid::Uuid::nil());
        assert_eq!(
            view.read_plan(&nobody, UpTo::End).numbers(),
            Vec::<u64>::new(),
            "the index covers every segment, and none holds the user"
        );
        view.checkpointed(4);
        let plan = view.read_plan(&user, UpTo::Seq(35));
        assert_eq!(
            (plan.indexed_after, plan.earlier.clone(), plan.tail.clone()),
            (2, vec![3, 4], Vec::new())
        );
        assert_eq!(plan.numbers(), vec![1, 2, 3, 4]);
        assert_eq!(view.read_plan(&nobody, UpTo::End).numbers(), vec![1, 2]);
        // Recovery indexes only what it reads after its checkpoint.
        let mut recovered = ShardState::default();
        recovered.recover_from(Some(4));
        recovered
            .commit_segment(5, &events[40..], start, batch(5), None)
            .expect("folds");
        let plan = recovered.read_plan(&user, UpTo::End);
        assert_eq!(
            (plan.indexed_after, plan.numbers()),
            (4, vec![1, 2, 3, 4, 5])
        );
        assert_eq!(
            recovered.read_plan(&nobody, UpTo::End).numbers(),
            vec![1, 2, 3, 4]
        );
    }

    /// Users the view holds link their items' versions, so that stale patches find a base's
    /// seq without scanning change ids; a state folded elsewhere does not pay for the links.
    #[test]
    fn resident_users_link_versions() {
        use keepsake_model::StateRead;
        let events = history(1, 1, 200, chrono::DateTime::UNIX_EPOCH);
        let user = events[0].user_id;
        let mut view = ShardState::default();
        view.insert(user, UserState::default());
        view.apply_events(&events).expect("apply");
        let mut plain = UserState::default();
        for e in &events {
            keepsake_model::apply(&mut plain, e).expect("apply");
        }
        let state = view.get(&user).expect("resident");
        assert_eq!(state, &plain);
        let older: Vec<_> = events
            .iter()
            .filter(|e| {
                plain
                    .item(&e.item_id)
                    .is_some_and(|i| i.version > e.version)
            })
            .collect();
        assert!(!older.is_empty());
        // Retiring change ids keeps the links: every older version is found in memory.
        assert_eq!(state.filter_through(), 200 - EXACT_CHANGE_IDS);
        for e in older {
            assert_eq!(state.seq_of_version(&e.item_id, e.version), Some(e.seq));
            assert_eq!(plain.seq_of_version(&e.item_id, e.version), None);
        }
    }
}
