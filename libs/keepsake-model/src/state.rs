//! A user's materialized state, and [`apply`]: the one function that gives events their meaning.
//!
//! The live view, checkpoints, replay and restore all fold events with [`apply`]; nothing else
//! mutates state. `apply` is pure and checks the log's invariants as it folds, so a damaged or
//! mis-ordered log is reported instead of silently producing a wrong state:
//! - seq is dense: each event's seq is the user's last seq + 1;
//! - versions are dense per item: 1 for a new item, previous + 1 after that;
//! - an item never changes kind;
//! - a change id appears at most once per user (checked against the ids a state holds
//!   exactly; see [`UserState`] for the ids a state loaded from a checkpoint holds as a filter);
//! - put and patch carry a document, delete does not;
//! - `device` items are written by origin `operator`, and `operator` writes nothing else.

/// Maps keyed by ids: ahash is keyed per process (ids are chosen by devices, so the hasher
/// must resist crafted collisions) and several times faster than SipHash on 16-byte keys.
pub type IdMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// [`IdMap`] for maps that grow with a user's history (items, change ids). A plain hash map
/// doubles by rehashing every entry at once: a user's million change ids, or many users growing
/// in step, stalled the shard writer for tens of milliseconds in one batch. griddle moves the
/// entries to the grown table a few per insert instead.
pub type GrowingMap<K, V> = griddle::HashMap<K, V, ahash::RandomState>;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::change_filter::ChangeFilter;
use crate::document::Document;
use crate::event::Event;
use crate::ids::{ChangeId, ItemId};
use crate::kind::{Kind, Op, Origin};
use crate::memory::{btree_bytes, document_bytes, growing_table_bytes};

/// The current state of one item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ItemState {
    /// The item's id.
    pub item_id: ItemId,
    /// Its kind, fixed by its first event.
    pub kind: Kind,
    /// Its version: the number of events applied to it.
    pub version: u64,
    /// The user seq of its last event.
    pub seq: u64,
    /// Whether its last event was a delete (a tombstone).
    pub deleted: bool,
    /// When its last event was recorded.
    pub changed_at: DateTime<Utc>,
    /// Its document; `None` for a tombstone.
    pub document: Option<Document>,
}

/// What a change id resolved to, kept so that a retried change gets its original answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ChangeRef {
    /// The item the change applied to.
    pub item_id: ItemId,
    /// The version it produced.
    pub version: u64,
    /// The seq of its event.
    pub seq: u64,
}

/// Read access to a user's state, shared by committed state and a batch's staged overlay.
pub trait StateRead {
    /// The seq of the user's last event (0 for a user with none).
    fn last_seq(&self) -> u64;
    /// The item, deleted or not.
    fn item(&self, id: &ItemId) -> Option<&ItemState>;
    /// The original result of a change id, if it was applied.
    fn change(&self, id: &ChangeId) -> Option<ChangeRef>;
}

/// Write access used by [`apply`] and nothing else.
pub trait StateWrite: StateRead {
    /// Records the user's new last seq.
    fn set_last_seq(&mut self, seq: u64);
    /// Stores the item's new state.
    fn put_item(&mut self, item: ItemState);
    /// Records a change id's result.
    fn put_change(&mut self, id: ChangeId, result: ChangeRef);
}

/// The full state of one user: every item (tombstones included), and its change ids.
///
/// Change ids are honoured for the life of the log: idempotency is promised forever, not for a
/// window. But a state need not hold them all: one loaded from a checkpoint of format 5 holds
/// the ids up to the checkpoint as a [`ChangeFilter`] (32 bits each, not ~50 bytes), and only
/// the ids it applied since exactly. An id the filter may hold is resolved by whoever stages a
/// change against the state (reading the user's log: [`UserState::change_may_be_older`]);
/// [`apply`] checks uniqueness against the exact ids, and a replay from the log's start (verify,
/// rebuild) holds every id exactly, so it checks them all.
///
/// Equality compares what the log determines (items, last seq, and the change ids as the
/// filter of all of them, which does not depend on how many a copy holds exactly), not `prev`,
/// an index of what this copy has applied, kept only by states that serve pushes.
#[derive(Clone, Debug, Default)]
pub struct UserState {
    last_seq: u64,
    /// Bytes of the documents held, kept up to date by `put_item`.
    doc_bytes: usize,
    /// What the allocator gave the documents held ([`document_bytes`] of each one's text and
    /// reference counts), kept up to date by `put_item`: what [`UserState::approx_bytes`]
    /// counts for them.
    doc_alloc: usize,
    /// Items by the seq of their last change: pulls read "changed after seq n" in order without
    /// scanning every item. Kept up to date by `put_item`.
    by_seq: std::collections::BTreeMap<u64, ItemId>,
    items: GrowingMap<ItemId, ItemState>,
    changes: GrowingMap<ChangeId, ChangeRef>,
    /// The change ids of seqs `1..=filter_through`, which `changes` does not hold.
    filter: ChangeFilter,
    filter_through: u64,
    /// For each event this state applied to an existing item, the seq of the item's event
    /// before it: walking back from an item's newest seq gives the seqs of its earlier versions
    /// (what a stale patch's base is found by) without scanning every change id. Links older
    /// than a checkpoint the state was loaded from are not here; callers fall back to a scan.
    /// They are kept while the state is resident (a push of many patches needs the links of
    /// the versions before it; pruning them at the retired change ids made every such patch
    /// read the item's history: `make ab` pushes fell to 0.28x), and counted by
    /// [`UserState::approx_bytes`], so the view's budget bounds them.
    /// Recorded only once [`UserState::enable_version_links`] was called: folds that never take
    /// a stale patch (checkpoints, replays, restores) do not pay for them.
    prev: GrowingMap<u64, u64>,
    links: bool,
    /// Moved on by [`UserState::advance_items`]: the change ids of the events skipped are held
    /// nowhere, so nothing may be staged against it.
    items_only: bool,
}

impl PartialEq for UserState {
    fn eq(&self, other: &Self) -> bool {
        self.last_seq == other.last_seq
            && self.doc_bytes == other.doc_bytes
            && self.by_seq == other.by_seq
            && self.items == other.items
            && self.change_filter() == other.change_filter()
            // Ids both hold exactly: the same result (the filter holds no results).
            && self
                .changes
                .iter()
                .all(|(id, r)| other.changes.get(id).is_none_or(|o| o == r))
    }
}

impl Eq for UserState {}

impl UserState {
    /// Iterates over every item, tombstones included, in no particular order.
    pub fn items(&self) -> impl Iterator<Item = &ItemState> {
        self.items.values()
    }

    /// Approximate memory held, as the allocator hands it out: the state itself, each
    /// document's text with its reference counts, each hash table's buckets (not its entries:
    /// a table holds up to twice the buckets it needs), the index of items by seq, and the
    /// filter of older change ids. The view's budget is spent by this count, so it must not
    /// count less than the state takes: a test (`keepsake-log/tests/state_memory.rs`) holds it
    /// within a tenth of jemalloc's own count for users shaped as the view holds them.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.doc_alloc
            + growing_table_bytes(
                self.items.len(),
                self.items.capacity(),
                std::mem::size_of::<(ItemId, ItemState)>(),
            )
            + growing_table_bytes(
                self.changes.len(),
                self.changes.capacity(),
                std::mem::size_of::<(ChangeId, ChangeRef)>(),
            )
            + growing_table_bytes(
                self.prev.len(),
                self.prev.capacity(),
                std::mem::size_of::<(u64, u64)>(),
            )
            + btree_bytes(self.by_seq.len())
            + self.filter.alloc_bytes()
    }

    /// Whether `id` may be the change id of an event older than the exact ids this state
    /// holds (seq at most [`UserState::filter_through`]): `false` is certain; `true` is to be
    /// resolved from the user's log. [`StateRead::change`] answers only from the exact ids.
    ///
    /// A state whose filter lacks its sealed blocks (read from a part of format 6 without the
    /// user's filter runs: [`UserState::sealed_missing`]) answers `true` for every id: it
    /// cannot tell, and the log can.
    pub fn change_may_be_older(&self, id: &ChangeId) -> bool {
        self.filter_through > 0 && (!self.filter.is_whole() || self.filter.may_contain(id))
    }

    /// The sealed filter blocks this state lacks (`0..n`, held by filter runs): 0 for a state
    /// that holds all of its change ids, exactly or in its filter.
    pub fn sealed_missing(&self) -> usize {
        self.filter.offset()
    }

    /// Moves every change id into the filter and splits off its sealed blocks (those of the
    /// filter before block `last seq / 32`, all of whose seqs exist) up to the last multiple
    /// of `unit` blocks: what a checkpoint of format 6 writes to a filter run, once, while the
    /// state keeps the blocks after for its part. `None` when there is no such block it
    /// holds. A state split so is for writing, not for staging changes against.
    ///
    /// A `unit` of 64 (a group) writes a user to a run once per 2,048 events, not once per
    /// checkpoint that sealed a block of it: in a steady load every user seals a block about
    /// every round, and runs of every user made each cold load read a page of each run.
    pub fn split_sealed(&mut self, unit: usize) -> Option<ChangeFilter> {
        let unit = unit.max(1);
        // Before anything moves: a return here leaves the state as it was.
        let sealed = usize::try_from(self.last_seq / crate::change_filter::SEQS_PER_BLOCK).ok()?;
        let sealed = sealed / unit * unit;
        let mut filter = self.change_filter();
        self.changes = GrowingMap::default();
        self.filter_through = self.last_seq;
        let head = if sealed > filter.offset() {
            filter.split_before(sealed)
        } else {
            None
        };
        self.filter = filter;
        head
    }

    /// Puts the sealed blocks `prefix` in front of this state's filter (read from the user's
    /// filter runs); `false`, and nothing changed, unless they end where its filter begins.
    pub fn attach_sealed(&mut self, prefix: ChangeFilter) -> bool {
        self.filter.attach_prefix(prefix)
    }

    /// Whether [`UserState::advance_items`] moved this state on (its change ids are not all
    /// held: a state for reads of items, never for staging).
    pub fn is_items_only(&self) -> bool {
        self.items_only
    }

    /// Number of change ids held exactly.
    pub fn exact_changes(&self) -> usize {
        self.changes.len()
    }

    /// The last seq whose change id is held only by the filter (0: every id is held exactly).
    pub fn filter_through(&self) -> u64 {
        self.filter_through
    }

    /// The filter of every change id of the user's log up to its last seq: the stored filter
    /// with the exact ids added at their seqs. A function of the log alone (see
    /// [`ChangeFilter`]); what checkpoints store and equality and state hashes compare.
    pub fn change_filter(&self) -> ChangeFilter {
        let mut f = self.filter.clone();
        for (id, r) in &self.changes {
            f.insert(r.seq, id);
        }
        f
    }

    /// Whether [`UserState::retire_changes`] with `keep` has work: more than twice `keep`
    /// exact change ids held.
    pub fn changes_to_retire(&self, keep: u64) -> bool {
        self.changes.len() as u64 > keep.saturating_mul(2)
    }

    /// Moves the exact change ids of all but the newest `keep` seqs into the filter, once
    /// [`UserState::changes_to_retire`]: a resident user's ids then cost 32 bits each however
    /// long it stays resident, while a retry of a recent push (the usual resend) is still
    /// answered from memory. Those moved are resolved from the log like a loaded state's. The
    /// table is made anew for twice `keep`: a table emptied in place keeps its buckets and its
    /// deleted entries, and doubles again sooner. Amortized O(1) per event. Equality and the
    /// filter of all ids do not change.
    pub fn retire_changes(&mut self, keep: u64) {
        if !self.changes_to_retire(keep) {
            return;
        }
        let through = self.last_seq.saturating_sub(keep);
        if through <= self.filter_through {
            return;
        }
        let room = usize::try_from(keep.saturating_mul(2)).unwrap_or(usize::MAX);
        let mut changes = GrowingMap::with_capacity_and_hasher(room, self.changes.hasher().clone());
        for (id, r) in self.changes.drain() {
            if r.seq <= through {
                self.filter.insert(r.seq, &id);
            } else {
                changes.insert(id, r);
            }
        }
        self.changes = changes;
        self.filter_through = through;
    }

    /// Holds the change ids up to the state's last seq as `filter` rather than exactly: how a
    /// checkpoint of format 5 is loaded. Exact ids already held stay (a state is loaded with
    /// either, never both).
    pub fn with_change_filter(mut self, filter: ChangeFilter) -> Self {
        self.filter = filter;
        self.filter_through = self.last_seq;
        self
    }

    /// From now on, record each applied event's link to its item's previous event (what
    /// [`UserState::seq_of_version`] walks). The live view enables it for the users it holds.
    pub fn enable_version_links(&mut self) {
        self.links = true;
    }

    /// The seq of version `version` of an item, found by walking back from its newest event
    /// over the links this state recorded; `None` if the item has no such version, or a link
    /// is missing (the version is older than the checkpoint this state was loaded from).
    pub fn seq_of_version(&self, item: &ItemId, version: u64) -> Option<u64> {
        let current = self.items.get(item)?;
        if version == 0 || version > current.version {
            return None;
        }
        let mut seq = current.seq;
        for _ in version..current.version {
            seq = *self.prev.get(&seq)?;
        }
        Some(seq)
    }

    /// The seq of the item's newest event at or before `seq`: what a reader that had the log
    /// up to `seq` knew of it. `Some(None)` when the item had no event yet (or does not exist);
    /// `None` when a link the walk needs is older than what this state applied (read the
    /// item's history instead).
    pub fn seq_seen_at(&self, item: &ItemId, seq: u64) -> Option<Option<u64>> {
        let Some(current) = self.items.get(item) else {
            return Some(None);
        };
        let mut at = current.seq;
        let mut version = current.version;
        while at > seq {
            if version <= 1 {
                return Some(None);
            }
            at = *self.prev.get(&at)?;
            version -= 1;
        }
        Some(Some(at))
    }

    /// Items whose last change is after `seq`, in seq order (each item once, at its latest).
    pub fn items_changed_after(&self, seq: u64) -> impl Iterator<Item = &ItemState> {
        self.by_seq
            .range(seq.saturating_add(1)..)
            .filter_map(|(_, id)| self.items.get(id))
    }

    /// Whether every event folded into this state was recorded at or before `t`: its newest
    /// event (the one of its last seq, which left the item of that seq) was. A
    /// state whose newest item does not carry its last seq answers `false`: unknown is not
    /// "before". A point-in-time read may start from any checkpoint whose state of the user
    /// passes this, however late the checkpoint itself was written.
    pub fn recorded_by(&self, t: DateTime<Utc>) -> bool {
        if self.last_seq == 0 {
            return true;
        }
        self.by_seq
            .last_key_value()
            .filter(|(seq, _)| **seq == self.last_seq)
            .and_then(|(_, id)| self.items.get(id))
            .is_some_and(|item| item.seq == self.last_seq && item.changed_at <= t)
    }

    /// Number of items, tombstones included.
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Number of live (not deleted) items of a kind.
    pub fn live_count(&self, kind: Kind) -> usize {
        self.items
            .values()
            .filter(|i| i.kind == kind && !i.deleted)
            .count()
    }

    /// The change ids held exactly (every one, unless the state was loaded with a filter:
    /// then those after [`UserState::filter_through`]), with their results, in no particular
    /// order.
    pub fn changes(&self) -> impl Iterator<Item = (&ChangeId, &ChangeRef)> {
        self.changes.iter()
    }

    /// Rebuilds a state saved by a checkpoint. Checkpoints are themselves folds of the log (a
    /// test checks the two agree); this is how they are loaded, not a second way to change state.
    pub fn from_parts(
        last_seq: u64,
        items: impl IntoIterator<Item = ItemState>,
        changes: impl IntoIterator<Item = (ChangeId, ChangeRef)>,
    ) -> Self {
        let mut state = Self {
            last_seq,
            ..Self::default()
        };
        for item in items {
            state.put_item(item);
        }
        state.changes.extend(changes);
        state
    }

    /// Moves the items forward to `last_seq` given only the newest event of each item changed
    /// after the state's last seq, in seq order: the items that [`apply`] of every event in
    /// between would leave (see [`item_after`]), without the documents later events overwrite.
    /// Change ids are not recorded (the events in between are not all given), so this is for
    /// reads of items at a moment, never for state that takes pushes. The checks that do not
    /// need the events in between still run: seqs inside the range and rising, versions rising,
    /// kinds fixed, documents where the op says. A property test compares it with replays.
    pub fn advance_items<'a>(
        &mut self,
        newest: impl IntoIterator<Item = &'a Event>,
        last_seq: u64,
    ) -> Result<(), ApplyError> {
        if last_seq < self.last_seq {
            return Err(ApplyError::SeqGap {
                last: self.last_seq,
                got: last_seq,
            });
        }
        let mut prev = self.last_seq;
        for event in newest {
            if event.seq <= prev || event.seq > last_seq {
                return Err(ApplyError::SeqGap {
                    last: prev,
                    got: event.seq,
                });
            }
            let current = self.items.get(&event.item_id);
            let current_version = current.map_or(0, |i| i.version);
            if event.version <= current_version {
                return Err(ApplyError::VersionGap {
                    item_id: event.item_id,
                    current: current_version,
                    got: event.version,
                });
            }
            check_item(current, event)?;
            self.put_item(item_after(event));
            prev = event.seq;
        }
        self.items_only |= last_seq > self.last_seq;
        self.last_seq = last_seq;
        Ok(())
    }

    /// Folds every event in order; the first invariant violation stops the fold.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Self, ApplyError> {
        let mut state = Self::default();
        for e in events {
            apply(&mut state, e)?;
        }
        Ok(state)
    }
}

impl StateRead for UserState {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }
    fn item(&self, id: &ItemId) -> Option<&ItemState> {
        self.items.get(id)
    }
    fn change(&self, id: &ChangeId) -> Option<ChangeRef> {
        self.changes.get(id).copied()
    }
}

impl StateWrite for UserState {
    fn set_last_seq(&mut self, seq: u64) {
        self.last_seq = seq;
    }
    fn put_item(&mut self, item: ItemState) {
        self.doc_bytes += item.document.as_ref().map_or(0, Document::len);
        self.doc_alloc += document_bytes(item.document.as_ref());
        self.by_seq.insert(item.seq, item.item_id);
        let (id, seq, version) = (item.item_id, item.seq, item.version);
        if let Some(old) = self.items.insert(id, item) {
            self.doc_bytes -= old.document.as_ref().map_or(0, Document::len);
            self.doc_alloc -= document_bytes(old.document.as_ref());
            if old.seq != seq {
                self.by_seq.remove(&old.seq);
            }
            // Only a next version links back: `advance_items` may skip versions.
            if self.links && version == old.version + 1 && seq > old.seq {
                self.prev.insert(seq, old.seq);
            }
        }
    }
    fn put_change(&mut self, id: ChangeId, result: ChangeRef) {
        self.changes.insert(id, result);
    }
}

/// An event that does not fit the state it is applied to: the log is damaged or mis-ordered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The event's seq is not the user's last seq + 1.
    #[error("seq {got} does not follow {last}")]
    SeqGap {
        /// The user's last seq.
        last: u64,
        /// The event's seq.
        got: u64,
    },
    /// The event's version is not the item's version + 1.
    #[error("item {item_id}: version {got} does not follow {current}")]
    VersionGap {
        /// The item.
        item_id: ItemId,
        /// The item's version before the event (0 for a new item).
        current: u64,
        /// The event's version.
        got: u64,
    },
    /// The event names another kind than the item has.
    #[error("item {item_id}: kind {got} but the item is a {current}")]
    KindChanged {
        /// The item.
        item_id: ItemId,
        /// The item's kind.
        current: Kind,
        /// The event's kind.
        got: Kind,
    },
    /// The change id was already applied.
    #[error("change {0} applied twice")]
    DuplicateChange(ChangeId),
    /// A put or patch without a document, or a delete with one.
    #[error("item {item_id}: {op} event with a document: {has_document}")]
    DocumentMismatch {
        /// The item.
        item_id: ItemId,
        /// The event's op.
        op: Op,
        /// Whether it carried a document.
        has_document: bool,
    },
    /// A `device` event not written by the operator, or an operator event of a data kind.
    #[error("item {item_id}: a {kind} event with origin {origin}")]
    OriginMismatch {
        /// The item.
        item_id: ItemId,
        /// The event's kind.
        kind: Kind,
        /// The event's origin.
        origin: Origin,
    },
}

/// Folds one event into a user's state. The only code that gives events their meaning.
pub fn apply<S: StateWrite + ?Sized>(state: &mut S, event: &Event) -> Result<(), ApplyError> {
    let last = state.last_seq();
    if event.seq != last + 1 {
        return Err(ApplyError::SeqGap {
            last,
            got: event.seq,
        });
    }
    if state.change(&event.change_id).is_some() {
        return Err(ApplyError::DuplicateChange(event.change_id));
    }
    let current = state.item(&event.item_id);
    let current_version = current.map_or(0, |i| i.version);
    if event.version != current_version + 1 {
        return Err(ApplyError::VersionGap {
            item_id: event.item_id,
            current: current_version,
            got: event.version,
        });
    }
    check_item(current, event)?;
    state.put_item(item_after(event));
    state.put_change(
        event.change_id,
        ChangeRef {
            item_id: event.item_id,
            version: event.version,
            seq: event.seq,
        },
    );
    state.set_last_seq(event.seq);
    Ok(())
}

/// The checks an item's event must pass whatever came between it and the item's current state:
/// the kind never changes, put and patch carry a document where delete does not, and `device`
/// items are written by the operator alone (a device cannot forge the audit trail of devices).
fn check_item(current: Option<&ItemState>, event: &Event) -> Result<(), ApplyError> {
    if !event.origin.may_write(event.kind) {
        return Err(ApplyError::OriginMismatch {
            item_id: event.item_id,
            kind: event.kind,
            origin: event.origin,
        });
    }
    if let Some(item) = current
        && item.kind != event.kind
    {
        return Err(ApplyError::KindChanged {
            item_id: event.item_id,
            current: item.kind,
            got: event.kind,
        });
    }
    if (event.op == Op::Delete) == event.document.is_some() {
        return Err(ApplyError::DocumentMismatch {
            item_id: event.item_id,
            op: event.op,
            has_document: event.document.is_some(),
        });
    }
    Ok(())
}

/// The state of an item after `event`, whatever came before it: an event carries the item's
/// whole resulting document and its version, so an item is what its newest event says.
/// [`apply`] stores exactly this, and [`UserState::advance_items`] relies on it.
pub fn item_after(event: &Event) -> ItemState {
    ItemState {
        item_id: event.item_id,
        kind: event.kind,
        version: event.version,
        seq: event.seq,
        deleted: event.op == Op::Delete,
        changed_at: event.recorded_at,
        document: event.document.clone(),
    }
}
