//! Changes (what devices send) and staging: deciding what each change does, against the user's
//! state plus whatever earlier changes of the same batch already staged.
//!
//! The rules (DESIGN.md section 6):
//! - a change id seen before answers `duplicate` with its original result and writes nothing;
//! - `put`/`delete` with a stale `base_version` conflict; a stale `patch` merges when every
//!   top-level field it touches has the same value now as at `base_version` (the ancestor, which
//!   the log has), and conflicts otherwise; no `base_version` means last writer wins;
//! - `patch` and `delete` need a live item (`not_found` otherwise); `put` creates or re-creates;
//!   a `create` (internal: CardDAV/CalDAV `If-None-Match: *`) puts only while the item is absent
//!   and conflicts otherwise;
//! - conflicts and rejections write nothing.
//!
//! Staging never touches committed state: it works on a [`Staged`] overlay which the caller
//! discards if the commit fails, or whose events it applies once they are durable.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::IdGenerator;
use crate::document::{Document, Probe};
use crate::event::Event;
use crate::ids::{ChangeId, DeviceId, EventId, ItemId, RequestId, RestoreId};
use crate::kind::{Kind, Op, Origin};
use crate::state::{
    ApplyError, ChangeRef, IdMap, ItemState, StateRead, StateWrite, UserState, apply,
};

/// What a device asks for, in one change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireChange", into = "WireChange")]
pub struct Change {
    /// The device's idempotency key.
    pub change_id: ChangeId,
    /// The item's kind.
    pub kind: Kind,
    /// The item.
    pub item_id: ItemId,
    /// The version the device last saw, for optimistic concurrency; absent: last writer wins.
    pub base_version: Option<u64>,
    /// What to do.
    pub body: ChangeBody,
}

/// A change as it is written in JSON: `op` beside `document`, flat. (Documents are kept as the
/// text the device sent, which serde cannot carry through flattened or tagged enums.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireChange {
    change_id: ChangeId,
    kind: Kind,
    item_id: ItemId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_version: Option<u64>,
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    document: Option<Document>,
}

impl TryFrom<WireChange> for Change {
    type Error = String;
    fn try_from(w: WireChange) -> Result<Self, String> {
        let body = match (w.op, w.document) {
            (Op::Put, Some(document)) => ChangeBody::Put { document },
            (Op::Patch, Some(document)) => ChangeBody::Patch { document },
            (Op::Delete, None) => ChangeBody::Delete,
            (Op::Put | Op::Patch, None) => return Err(format!("a {} needs a document", w.op)),
            (Op::Delete, Some(_)) => return Err("a delete takes no document".into()),
        };
        Ok(Change {
            change_id: w.change_id,
            kind: w.kind,
            item_id: w.item_id,
            base_version: w.base_version,
            body,
        })
    }
}

impl From<Change> for WireChange {
    fn from(c: Change) -> Self {
        let (op, document) = match c.body {
            ChangeBody::Put { document } | ChangeBody::Create { document } => {
                (Op::Put, Some(document))
            }
            ChangeBody::Patch { document } => (Op::Patch, Some(document)),
            ChangeBody::Delete => (Op::Delete, None),
        };
        WireChange {
            change_id: c.change_id,
            kind: c.kind,
            item_id: c.item_id,
            base_version: c.base_version,
            op,
            document,
        }
    }
}

/// The operation of a change and its payload.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeBody {
    /// Replace the whole document.
    Put {
        /// The new document, as sent; must be a JSON object.
        document: Document,
    },
    /// Put the document only if the item does not exist (never did, or is deleted): a
    /// precondition decided in staging, against committed state and the batch, so that two
    /// creates of one item at once make one item (CardDAV/CalDAV `If-None-Match: *`). Written
    /// as a `put` event; not part of the REST wire format (a change written out as JSON is a
    /// put).
    Create {
        /// The new document, as sent; must be a JSON object.
        document: Document,
    },
    /// Apply an RFC 7396 merge patch.
    Patch {
        /// The patch, as sent; must be a JSON object.
        document: Document,
    },
    /// Delete the item, leaving a tombstone.
    Delete,
}

impl ChangeBody {
    /// A put of a JSON value.
    pub fn put(document: Value) -> Self {
        ChangeBody::Put {
            document: Document::from_value(&document),
        }
    }

    /// A merge patch given as a JSON value.
    pub fn patch(document: Value) -> Self {
        ChangeBody::Patch {
            document: Document::from_value(&document),
        }
    }

    /// The op this body performs.
    pub fn op(&self) -> Op {
        match self {
            ChangeBody::Put { .. } | ChangeBody::Create { .. } => Op::Put,
            ChangeBody::Patch { .. } => Op::Patch,
            ChangeBody::Delete => Op::Delete,
        }
    }
}

/// Who is making the changes of a batch entry; copied into every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// The pushing device; `None` for restores and operator events.
    pub device_id: Option<DeviceId>,
    /// Who caused the changes.
    pub origin: Origin,
    /// The HTTP request.
    pub request_id: Option<RequestId>,
    /// The restore, for origin `restore`.
    pub restore_id: Option<RestoreId>,
}

/// Why a single change was refused (per-change rejection codes of API.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// Not a JSON object, not JSON that strict parsers accept (`DocumentError`: a lone surrogate
    /// escape, a number beyond a 64-bit float, nesting deeper than `MAX_DEPTH`), or `@type` does
    /// not fit the kind.
    InvalidDocument,
    /// The resulting document exceeds the document limit.
    DocumentTooLarge,
    /// The item exists with another kind.
    KindMismatch,
    /// Patch or delete of an item that does not exist or is deleted.
    NotFound,
    /// A change that cannot be applied as written (for example `base_version` 0).
    InvalidChange,
}

impl RejectCode {
    /// The stable code clients switch on.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectCode::InvalidDocument => "invalid_document",
            RejectCode::DocumentTooLarge => "document_too_large",
            RejectCode::KindMismatch => "kind_mismatch",
            RejectCode::NotFound => "not_found",
            RejectCode::InvalidChange => "invalid_change",
        }
    }
}

/// The result of one change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Staged as a new event (durable once the batch commits).
    Applied(ChangeRef),
    /// Applied before; the original result, nothing written.
    Duplicate(ChangeRef),
    /// Stale `base_version`; nothing written. Carries the item as it is now.
    Conflict(Box<ItemState>),
    /// Refused; nothing written.
    Rejected {
        /// The stable code.
        code: RejectCode,
        /// A human-readable explanation (never document contents).
        detail: String,
    },
}

/// Settings that staging enforces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StagePolicy {
    /// Largest document, in bytes of compact JSON.
    pub max_document_bytes: usize,
    /// The mass-delete guard.
    pub mass_delete: MassDeleteGuard,
}

impl Default for StagePolicy {
    fn default() -> Self {
        Self {
            max_document_bytes: 256 * 1024,
            mass_delete: MassDeleteGuard::default(),
        }
    }
}

/// Refuses a push that deletes more than `max_share` of a user's live items of one kind *and*
/// more than `min_items` of them, unless the push confirms it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MassDeleteGuard {
    /// Deletes of one kind at or below this count are always allowed.
    pub min_items: usize,
    /// Share of the live items of one kind a push may delete without confirmation.
    pub max_share: f64,
}

impl Default for MassDeleteGuard {
    fn default() -> Self {
        Self {
            min_items: 20,
            max_share: 0.5,
        }
    }
}

/// A push refused by the mass-delete guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the push deletes {deletes} of {live} live {kind} items; confirm_mass_delete is required")]
pub struct MassDeleteRefused {
    /// The kind that would lose too many items.
    pub kind: Kind,
    /// How many of its live items the push deletes.
    pub deletes: usize,
    /// How many live items of the kind there are.
    pub live: usize,
}

/// Staging needs the document of an earlier version that it does not have: the caller reads it
/// from the log (`None` for a tombstone) and stages again with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeedAncestor {
    /// The item.
    pub item_id: ItemId,
    /// The version whose document is needed.
    pub version: u64,
}

/// Documents of earlier versions, read from the log for stale patches.
pub type Ancestors = HashMap<(ItemId, u64), Option<Document>>;

/// Change ids that a state's filter of older ids may hold, resolved from the user's log: the
/// original result, or `None` when the log does not have the id (the filter's false positive).
pub type OldChanges = HashMap<ChangeId, Option<ChangeRef>>;

/// What staging needs from the log before it can decide a change; the caller reads it and
/// stages again (staging is pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// The document of an earlier version, for a stale patch.
    Ancestor(NeedAncestor),
    /// Whether a change id older than the state's exact ids was applied, and its result
    /// ([`UserState::change_may_be_older`]).
    Change(ChangeId),
}

impl From<NeedAncestor> for Need {
    fn from(n: NeedAncestor) -> Self {
        Need::Ancestor(n)
    }
}

/// A user's state as a batch sees it: committed state plus the batch's staged events.
#[derive(Clone, Debug)]
pub struct Staged<'a> {
    base: &'a UserState,
    last_seq: u64,
    items: IdMap<ItemId, ItemState>,
    changes: IdMap<ChangeId, ChangeRef>,
    events: Vec<Event>,
    /// Committed state's items by the collection they name, read on a batch's first
    /// collection delete.
    members: Option<IdMap<ItemId, Vec<ItemId>>>,
}

impl StateRead for Staged<'_> {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }
    fn item(&self, id: &ItemId) -> Option<&ItemState> {
        self.items.get(id).or_else(|| self.base.item(id))
    }
    fn change(&self, id: &ChangeId) -> Option<ChangeRef> {
        self.changes
            .get(id)
            .copied()
            .or_else(|| self.base.change(id))
    }
}

impl StateWrite for Staged<'_> {
    fn set_last_seq(&mut self, seq: u64) {
        self.last_seq = seq;
    }
    fn put_item(&mut self, item: ItemState) {
        self.items.insert(item.item_id, item);
    }
    fn put_change(&mut self, id: ChangeId, result: ChangeRef) {
        self.changes.insert(id, result);
    }
}

/// Everything staging needs besides the state: who, when, how to make ids, what is allowed.
#[derive(Debug, Clone, Copy)]
pub struct StageContext<'a> {
    /// Copied into every event.
    pub meta: EventMeta,
    /// The batch's commit time.
    pub recorded_at: DateTime<Utc>,
    /// Makes event ids.
    pub ids: &'a dyn IdGenerator,
    /// Limits and the guard.
    pub policy: &'a StagePolicy,
    /// Earlier documents read from the log.
    pub ancestors: &'a Ancestors,
    /// Older change ids resolved from the log.
    pub old_changes: &'a OldChanges,
}

impl<'a> Staged<'a> {
    /// An empty overlay over committed state (never a state for reads of items only, whose
    /// change ids are not all held: [`UserState::is_items_only`]).
    pub fn new(base: &'a UserState) -> Self {
        debug_assert!(
            !base.is_items_only(),
            "staging against a state of items only"
        );
        Self {
            base,
            last_seq: base.last_seq(),
            items: IdMap::default(),
            changes: IdMap::default(),
            events: Vec::new(),
            members: None,
        }
    }

    /// The events staged so far, in seq order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Takes the staged events, ending the overlay.
    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    /// Live items of a kind as the batch sees them.
    fn live_count(&self, kind: Kind) -> usize {
        let overlay = self
            .items
            .values()
            .filter(|i| i.kind == kind && !i.deleted)
            .count();
        let base_not_shadowed = self
            .base
            .items()
            .filter(|i| i.kind == kind && !i.deleted && !self.items.contains_key(&i.item_id))
            .count();
        overlay + base_not_shadowed
    }

    /// Whether `id` is one [`Staged::stage`] would ask the log about ([`Need::Change`]): not
    /// held exactly, maybe in the filter of older ids, and not answered in `old`.
    pub fn maybe_older_unresolved(&self, id: &ChangeId, old: &OldChanges) -> bool {
        self.change(id).is_none() && self.base.change_may_be_older(id) && !old.contains_key(id)
    }

    /// Checks the mass-delete guard for a whole push, before any of it is staged. A delete whose
    /// change id was applied before (held exactly, or found in the log: `old`) is a resend, not
    /// a delete.
    pub fn check_mass_delete(
        &self,
        changes: &[Change],
        guard: &MassDeleteGuard,
        old: &OldChanges,
    ) -> Result<(), MassDeleteRefused> {
        let mut deletes: HashMap<Kind, std::collections::HashSet<ItemId>> = HashMap::new();
        for c in changes {
            if matches!(c.body, ChangeBody::Delete)
                && self.change(&c.change_id).is_none()
                && !matches!(old.get(&c.change_id), Some(Some(_)))
                && self
                    .item(&c.item_id)
                    .is_some_and(|i| !i.deleted && i.kind == c.kind)
            {
                deletes.entry(c.kind).or_default().insert(c.item_id);
            }
        }
        let mut kinds: Vec<_> = deletes.into_iter().collect();
        kinds.sort_by_key(|(k, _)| *k);
        for (kind, items) in kinds {
            let n = items.len();
            if n <= guard.min_items {
                continue;
            }
            let live = self.live_count(kind);
            if (n as f64) > guard.max_share * (live as f64) {
                return Err(MassDeleteRefused {
                    kind,
                    deletes: n,
                    live,
                });
            }
        }
        Ok(())
    }

    /// Decides one change and, when it applies, stages its event.
    pub fn stage(
        &mut self,
        user_id: crate::ids::UserId,
        change: &Change,
        cx: &StageContext<'_>,
    ) -> Result<Outcome, Need> {
        if let Some(original) = self.change(&change.change_id) {
            return Ok(Outcome::Duplicate(original));
        }
        // An id the state holds only in its filter of older ids: the log says whether it was
        // applied (a resend answers `duplicate` with the original result however old).
        if self.base.change_may_be_older(&change.change_id) {
            match cx.old_changes.get(&change.change_id) {
                Some(Some(original)) => return Ok(Outcome::Duplicate(*original)),
                Some(None) => {}
                None => return Err(Need::Change(change.change_id)),
            }
        }
        let document = match decide(self, change, cx)? {
            Decision::Write(doc) => doc,
            Decision::Answer(outcome) => return Ok(outcome),
        };
        let document = match (document, cx.meta.origin) {
            (Some(doc), Origin::Device) => {
                match self.collection_rules(user_id, change, doc, cx.policy) {
                    Ok(doc) => Some(doc),
                    Err(outcome) => return Ok(outcome),
                }
            }
            // A default collection always exists: deleting its item only resets what it is
            // called, and its items stay where they are.
            (None, Origin::Device)
                if change.kind == Kind::Collection
                    && crate::collection::Holds::ALL
                        .iter()
                        .all(|h| h.default_id(user_id) != change.item_id) =>
            {
                let members = self.live_members(change.item_id);
                if members > 0 {
                    return Ok(reject(
                        RejectCode::InvalidChange,
                        format!(
                            "the collection holds {members} live items: delete them (or move \
                             them) first, in this push or before"
                        ),
                    ));
                }
                None
            }
            (document, _) => document,
        };
        let version = self.item(&change.item_id).map_or(0, |i| i.version) + 1;
        let event = Event {
            user_id,
            seq: self.last_seq + 1,
            event_id: EventId(cx.ids.time_ordered(cx.recorded_at)),
            change_id: change.change_id,
            device_id: cx.meta.device_id,
            origin: cx.meta.origin,
            request_id: cx.meta.request_id,
            restore_id: cx.meta.restore_id,
            kind: change.kind,
            item_id: change.item_id,
            op: change.body.op(),
            version,
            recorded_at: cx.recorded_at,
            document,
        };
        // `decide` only lets through events that fit the state, so this cannot fail; if it ever
        // did, answering invalid_change is the safe outcome (nothing is written).
        if let Err(e) = apply(self, &event) {
            return Ok(reject(RejectCode::InvalidChange, internal_detail(&e)));
        }
        let result = ChangeRef {
            item_id: event.item_id,
            version: event.version,
            seq: event.seq,
        };
        self.events.push(event);
        Ok(Outcome::Applied(result))
    }

    /// A device's document as the collection rules have it (`crate::collection`): a put that
    /// leaves the item's collection out keeps it in the collection it is in, a collection says
    /// what it holds, and an item names its collection by id. (Restores and imports write
    /// what they were given.)
    fn collection_rules(
        &self,
        user: crate::ids::UserId,
        change: &Change,
        doc: Document,
        policy: &StagePolicy,
    ) -> Result<Document, Outcome> {
        let live = self.item(&change.item_id).filter(|i| !i.deleted);
        let doc = match (&change.body, live.and_then(|i| i.document.as_ref())) {
            (ChangeBody::Put { .. }, Some(current)) => {
                crate::collection::carry_collection(&doc, current).unwrap_or(doc)
            }
            _ => doc,
        };
        let current = live.and_then(|i| i.document.as_ref());
        let checked = if change.kind == Kind::Collection {
            // What a collection holds is fixed while it lives: its items would otherwise fall
            // out of every listing and could no longer be edited.
            // A default's item holds what that default holds.
            let was = current.and_then(crate::collection::holds_of).or_else(|| {
                crate::collection::Holds::ALL
                    .into_iter()
                    .find(|h| h.default_id(user) == change.item_id)
            });
            crate::collection::check_collection(&doc).and_then(|()| {
                match (was, crate::collection::holds_of(&doc)) {
                    (Some(a), Some(b)) if a != b => Err(format!(
                        "a collection holds what it was made to hold ({}), not {}",
                        a.as_str(),
                        b.as_str()
                    )),
                    _ => Ok(()),
                }
            })
        } else {
            crate::collection::named_collection(&doc).and_then(|named| {
                // A collection the item already names (carried over, or kept by a patch) is
                // not checked again: an item left in a collection deleted since (by a restore
                // of some kinds) can still be edited by an app that knows no collections.
                let unchanged = current
                    .and_then(|d| crate::collection::named_collection(d).ok())
                    .is_some_and(|was| was == named);
                if unchanged {
                    Ok(())
                } else {
                    self.check_named(user, change.kind, named)
                }
            })
        };
        if let Err(detail) = checked {
            return Err(reject(RejectCode::InvalidDocument, detail));
        }
        if doc.len() > policy.max_document_bytes {
            return Err(reject(
                RejectCode::DocumentTooLarge,
                format!(
                    "the document is {} bytes; the limit is {}",
                    doc.len(),
                    policy.max_document_bytes
                ),
            ));
        }
        Ok(doc)
    }

    /// A device may keep an item only in a collection that exists and holds its kind (or in
    /// the default one), so that every item a device writes is in a collection DAV clients see.
    fn check_named(
        &self,
        user: crate::ids::UserId,
        kind: Kind,
        named: Option<ItemId>,
    ) -> Result<(), String> {
        let (Some(id), Some(holds)) = (named, crate::collection::Holds::of(kind)) else {
            return Ok(());
        };
        if id == holds.default_id(user) {
            return Ok(());
        }
        let collection = self
            .item(&id)
            .filter(|i| !i.deleted && i.kind == Kind::Collection);
        match collection
            .and_then(|c| c.document.as_ref())
            .map(crate::collection::holds_of)
        {
            Some(Some(h)) if h == holds => Ok(()),
            Some(_) => Err(format!(
                "{} names collection {id}, which holds no {kind} items",
                crate::collection::COLLECTION_PROPERTY
            )),
            None => Err(format!(
                "{} names {id}, which is not a live collection",
                crate::collection::COLLECTION_PROPERTY
            )),
        }
    }

    /// How many live items are kept in collection `id`, as the batch sees them. Committed
    /// state is read once per batch (`members`), however many collections the batch deletes.
    fn live_members(&mut self, id: ItemId) -> usize {
        let named = |i: &ItemState| {
            (!i.deleted && i.kind != Kind::Collection)
                .then(|| {
                    i.document
                        .as_ref()
                        .and_then(|d| crate::collection::named_collection(d).ok().flatten())
                })
                .flatten()
        };
        let base = self.base;
        let members = self.members.get_or_insert_with(|| {
            let mut by: IdMap<ItemId, Vec<ItemId>> = IdMap::default();
            for i in base.items() {
                if let Some(c) = named(i) {
                    by.entry(c).or_default().push(i.item_id);
                }
            }
            by
        });
        let in_base = members.get(&id).map_or(0, |items| {
            items
                .iter()
                .filter(|item| !self.items.contains_key(item))
                .count()
        });
        let in_batch = self.items.values().filter(|i| named(i) == Some(id)).count();
        in_base + in_batch
    }

    /// The document of `version` of an item: from this batch if it staged it, else from the
    /// ancestors read from the log.
    fn document_at(
        &self,
        item_id: ItemId,
        version: u64,
        cx: &StageContext<'_>,
    ) -> Result<Option<Document>, NeedAncestor> {
        if let Some(e) = self
            .events
            .iter()
            .rev()
            .find(|e| e.item_id == item_id && e.version == version)
        {
            return Ok(e.document.clone());
        }
        cx.ancestors
            .get(&(item_id, version))
            .cloned()
            .ok_or(NeedAncestor { item_id, version })
    }
}

fn internal_detail(e: &ApplyError) -> String {
    format!("the change does not fit the item's history: {e}")
}

enum Decision {
    /// Write an event with this document (`None`: a delete).
    Write(Option<Document>),
    /// Answer without writing.
    Answer(Outcome),
}

fn reject(code: RejectCode, detail: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        code,
        detail: detail.into(),
    }
}

fn answer(code: RejectCode, detail: impl Into<String>) -> Result<Decision, NeedAncestor> {
    Ok(Decision::Answer(reject(code, detail)))
}

fn conflict(item: &ItemState) -> Result<Decision, NeedAncestor> {
    Ok(Decision::Answer(Outcome::Conflict(Box::new(item.clone()))))
}

fn decide(
    state: &Staged<'_>,
    change: &Change,
    cx: &StageContext<'_>,
) -> Result<Decision, NeedAncestor> {
    if change.base_version == Some(0) {
        return answer(RejectCode::InvalidChange, "base_version starts at 1");
    }
    if !cx.meta.origin.may_write(change.kind) {
        return answer(
            RejectCode::InvalidChange,
            if !change.kind.is_data() {
                format!(
                    "kind {} is written by the operator alone (device registration and revocation)",
                    change.kind
                )
            } else {
                format!("the operator writes kind device alone, not {}", change.kind)
            },
        );
    }
    let current = state.item(&change.item_id);
    if let Some(item) = current
        && item.kind != change.kind
    {
        return answer(
            RejectCode::KindMismatch,
            format!("the item is a {}, not a {}", item.kind, change.kind),
        );
    }
    let live = current.filter(|i| !i.deleted);
    match &change.body {
        ChangeBody::Put { document } => {
            if let (Some(base), Some(item)) = (change.base_version, current) {
                if base != item.version {
                    return conflict(item);
                }
            } else if change.base_version.is_some() {
                return answer(
                    RejectCode::NotFound,
                    "base_version names an item that does not exist",
                );
            }
            check_document(document.clone(), change.kind, cx.policy)
        }
        ChangeBody::Create { document } => match live {
            Some(item) => conflict(item),
            None => check_document(document.clone(), change.kind, cx.policy),
        },
        ChangeBody::Delete => {
            let Some(item) = live else {
                return answer(
                    RejectCode::NotFound,
                    "no such item, or it is already deleted",
                );
            };
            if change.base_version.is_some_and(|b| b != item.version) {
                return conflict(item);
            }
            Ok(Decision::Write(None))
        }
        ChangeBody::Patch { document: patch } => {
            let Some(item) = live else {
                return answer(RejectCode::NotFound, "no such item, or it is deleted");
            };
            // The same door as a put's document: what strict parsers refuse is refused here,
            // with what is wrong, before it is parsed into a tree.
            match patch.probe() {
                Probe::Invalid(e) => return answer(RejectCode::InvalidDocument, e.to_string()),
                Probe::NotAnObject => {
                    return answer(
                        RejectCode::InvalidDocument,
                        "a merge patch must be a JSON object",
                    );
                }
                Probe::Object { .. } | Probe::BadType => {}
            }
            let Ok(Value::Object(patch_fields)) = serde_json::from_str::<Value>(patch.as_str())
            else {
                return answer(
                    RejectCode::InvalidDocument,
                    "a merge patch must be a JSON object",
                );
            };
            let Some(doc) = item.document.as_ref() else {
                return answer(RejectCode::NotFound, "the item has no document");
            };
            let Ok(current_object) = doc.to_object() else {
                return answer(
                    RejectCode::InvalidChange,
                    "the stored document cannot be read",
                );
            };
            if let Some(base) = change.base_version
                && base != item.version
            {
                if base > item.version {
                    return conflict(item);
                }
                let ancestor = state.document_at(change.item_id, base, cx)?;
                let Some(ancestor) = ancestor.and_then(|d| d.to_object().ok()) else {
                    return conflict(item);
                };
                let touched_changed = patch_fields
                    .keys()
                    .any(|k| ancestor.get(k) != current_object.get(k));
                if touched_changed {
                    return conflict(item);
                }
            }
            let mut merged = Value::Object(current_object);
            json_patch::merge(&mut merged, &Value::Object(patch_fields));
            let Value::Object(merged) = merged else {
                return answer(
                    RejectCode::InvalidDocument,
                    "the patch result is not a JSON object",
                );
            };
            check_document(Document::from_object(&merged), change.kind, cx.policy)
        }
    }
}

/// Checks a resulting document against the kind and the size limit, and that strict JSON
/// parsers accept it ([`Document::probe`]).
fn check_document(
    doc: Document,
    kind: Kind,
    policy: &StagePolicy,
) -> Result<Decision, NeedAncestor> {
    if doc.len() > policy.max_document_bytes {
        return answer(
            RejectCode::DocumentTooLarge,
            format!(
                "the document is {} bytes; the limit is {}",
                doc.len(),
                policy.max_document_bytes
            ),
        );
    }
    match doc.probe() {
        Probe::Invalid(e) => answer(RejectCode::InvalidDocument, e.to_string()),
        Probe::NotAnObject => answer(
            RejectCode::InvalidDocument,
            "the document must be a JSON object",
        ),
        Probe::Object { json_type: None } => Ok(Decision::Write(Some(doc))),
        Probe::Object { json_type: Some(t) } if t == kind.json_type() => {
            Ok(Decision::Write(Some(doc)))
        }
        Probe::Object { .. } | Probe::BadType => answer(
            RejectCode::InvalidDocument,
            format!("@type must be \"{}\" for a {kind}", kind.json_type()),
        ),
    }
}
