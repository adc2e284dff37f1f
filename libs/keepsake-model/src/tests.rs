//! Unit and property tests of staging and apply.

use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::*;

fn user() -> UserId {
    UserId(Uuid::from_u128(1))
}

fn item(n: u128) -> ItemId {
    ItemId(Uuid::from_u128(0x1000 + n))
}

struct Harness {
    state: UserState,
    ids: SequentialIds,
    clock: ManualClock,
    policy: StagePolicy,
    log: Vec<Event>,
    next_change: u128,
    origin: Origin,
    /// After every push, hold the change ids as a filter (as a state loaded from a checkpoint
    /// of format 5 does): resends of older ids are then resolved from the log.
    reload: bool,
    /// Older change ids resolved from the log.
    old_reads: usize,
}

impl Harness {
    fn new() -> Self {
        Self {
            state: UserState::default(),
            ids: SequentialIds::new(9),
            clock: ManualClock::at_epoch_2026(),
            policy: StagePolicy::default(),
            log: Vec::new(),
            next_change: 0,
            origin: Origin::Device,
            reload: false,
            old_reads: 0,
        }
    }

    /// Notes `t` of `ts`, a push each, each applied: a history of `ts.len()` events over 7 items.
    fn notes(&mut self, ts: std::ops::Range<u128>) {
        for t in ts {
            let c = self.change(Kind::Note, item(t % 7), None, put(json!({ "t": t })));
            applied(&self.one(c));
        }
    }

    fn change(&mut self, kind: Kind, item: ItemId, base: Option<u64>, body: ChangeBody) -> Change {
        self.next_change += 1;
        Change {
            change_id: ChangeId(Uuid::from_u128(0xC000 + self.next_change)),
            kind,
            item_id: item,
            base_version: base,
            body,
        }
    }

    /// Stages a push, resolving ancestors from the log as a writer would, then commits it.
    fn push(&mut self, changes: &[Change]) -> Vec<Outcome> {
        let mut ancestors = Ancestors::new();
        let mut old_changes = OldChanges::new();
        loop {
            let cx = StageContext {
                meta: EventMeta {
                    device_id: (self.origin == Origin::Device)
                        .then(|| DeviceId(Uuid::from_u128(5))),
                    origin: self.origin,
                    request_id: None,
                    restore_id: None,
                },
                recorded_at: self.clock.now(),
                ids: &self.ids,
                policy: &self.policy,
                ancestors: &ancestors,
                old_changes: &old_changes,
            };
            let mut staged = Staged::new(&self.state);
            let mut outcomes = Vec::new();
            let mut need = None;
            for c in changes {
                match staged.stage(user(), c, &cx) {
                    Ok(o) => outcomes.push(o),
                    Err(n) => {
                        need = Some(n);
                        break;
                    }
                }
            }
            if let Some(Need::Change(id)) = need {
                self.old_reads += 1;
                let found = self
                    .log
                    .iter()
                    .find(|e| e.change_id == id)
                    .map(|e| ChangeRef {
                        item_id: e.item_id,
                        version: e.version,
                        seq: e.seq,
                    });
                old_changes.insert(id, found);
                continue;
            }
            if let Some(Need::Ancestor(n)) = need {
                let doc = self
                    .log
                    .iter()
                    .find(|e| e.item_id == n.item_id && e.version == n.version)
                    .map(|e| e.document.clone())
                    .expect("the log has every committed version");
                ancestors.insert((n.item_id, n.version), doc);
                continue;
            }
            let events = staged.into_events();
            for e in &events {
                apply(&mut self.state, e).expect("staged events apply");
            }
            self.log.extend(events);
            self.clock.advance(chrono::Duration::milliseconds(10));
            if self.reload {
                let s = &self.state;
                let mut loaded = UserState::from_parts(s.last_seq(), s.items().cloned(), [])
                    .with_change_filter(s.change_filter());
                loaded.enable_version_links();
                self.state = loaded;
            }
            return outcomes;
        }
    }

    fn one(&mut self, c: Change) -> Outcome {
        self.push(std::slice::from_ref(&c)).remove(0)
    }

    fn doc(&self, id: ItemId) -> Option<Value> {
        self.state
            .item(&id)
            .and_then(|i| i.document.as_ref())
            .and_then(|d| d.to_object().ok())
            .map(Value::Object)
    }
}

fn put(doc: Value) -> ChangeBody {
    ChangeBody::put(doc)
}

fn patch(doc: Value) -> ChangeBody {
    ChangeBody::patch(doc)
}

fn applied(o: &Outcome) -> ChangeRef {
    match o {
        Outcome::Applied(r) => *r,
        other => panic!("expected applied, got {other:?}"),
    }
}

fn rejected(o: &Outcome) -> RejectCode {
    match o {
        Outcome::Rejected { code, .. } => *code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn put_patch_delete_and_recreate() {
    let mut h = Harness::new();
    let c = h.change(
        Kind::Contact,
        item(1),
        None,
        put(json!({"@type": "Card", "name": "Ada"})),
    );
    assert_eq!(applied(&h.one(c)).version, 1);
    let c = h.change(
        Kind::Contact,
        item(1),
        Some(1),
        patch(json!({"nick": "A", "name": null})),
    );
    let r = applied(&h.one(c));
    assert_eq!((r.version, r.seq), (2, 2));
    assert_eq!(h.doc(item(1)), Some(json!({"@type": "Card", "nick": "A"})));
    let c = h.change(Kind::Contact, item(1), Some(2), ChangeBody::Delete);
    assert_eq!(applied(&h.one(c)).version, 3);
    assert!(
        h.state
            .item(&item(1))
            .is_some_and(|i| i.deleted && i.document.is_none())
    );
    // patch and delete of a tombstone: not_found; put re-creates with the next version
    let c = h.change(Kind::Contact, item(1), None, patch(json!({"x": 1})));
    assert_eq!(rejected(&h.one(c)), RejectCode::NotFound);
    let c = h.change(Kind::Contact, item(1), None, ChangeBody::Delete);
    assert_eq!(rejected(&h.one(c)), RejectCode::NotFound);
    let c = h.change(Kind::Contact, item(1), None, put(json!({"name": "Ada"})));
    assert_eq!(applied(&h.one(c)).version, 4);
    assert_eq!(UserState::replay(&h.log), Ok(h.state.clone()));
}

#[test]
fn duplicate_change_returns_original_result_and_writes_nothing() {
    let mut h = Harness::new();
    let c = h.change(Kind::Note, item(1), None, put(json!({"t": 1})));
    let first = applied(&h.one(c.clone()));
    let c2 = h.change(Kind::Note, item(1), None, put(json!({"t": 2})));
    h.one(c2);
    let len = h.log.len();
    assert_eq!(h.one(c.clone()), Outcome::Duplicate(first));
    assert_eq!(h.log.len(), len);
    // the same change twice in one push: the second is a duplicate of the first
    let c3 = h.change(Kind::Note, item(2), None, put(json!({"t": 3})));
    let out = h.push(&[c3.clone(), c3]);
    assert_eq!(out[1], Outcome::Duplicate(applied(&out[0])));
}

#[test]
fn retired_change_ids_are_resolved_from_the_log_and_recent_ones_answered_from_memory() {
    let mut h = Harness::new();
    h.state.enable_version_links();
    let mut sent = Vec::new();
    for t in 0..300 {
        let c = h.change(Kind::Note, item(t % 7), None, put(json!({ "t": t })));
        let r = applied(&h.one(c.clone()));
        sent.push((c, r));
        h.state.retire_changes(16);
        assert!(
            h.state.changes().count() <= 32,
            "{}",
            h.state.changes().count()
        );
    }
    // Retired once more than 32 are held, down to the newest 16.
    let through = h.state.filter_through();
    assert!((300 - 32..=300 - 16).contains(&through), "{through}");
    // The links to earlier versions stay: every version is found in memory.
    let newest = h.state.item(&item(0)).map(|i| (i.version, i.seq));
    let Some((version, seq)) = newest else {
        panic!("item 0 is held");
    };
    assert!(version > 40, "{version}");
    assert!(
        h.state
            .seq_of_version(&item(0), version - 1)
            .is_some_and(|s| s < seq)
    );
    assert_eq!(h.state.seq_of_version(&item(0), 1), Some(1));
    assert_eq!(Ok(&h.state), UserState::replay(&h.log).as_ref());
    let reads = h.old_reads;
    let (last, last_r) = sent[299].clone();
    assert_eq!(h.one(last), Outcome::Duplicate(last_r));
    assert_eq!(h.old_reads, reads, "a recent id is answered from memory");
    let (first, first_r) = sent[0].clone();
    assert_eq!(h.one(first), Outcome::Duplicate(first_r));
    assert_eq!(h.old_reads, reads + 1, "an old one from the log");
    assert_eq!(h.log.len(), 300, "nothing written");
}

#[test]
fn a_state_holding_its_change_ids_as_a_filter_still_answers_resends_with_their_results() {
    let mut h = Harness::new();
    h.reload = true;
    let c = h.change(Kind::Note, item(1), None, put(json!({"t": 1})));
    let first = applied(&h.one(c.clone()));
    for t in 2..=40 {
        let next = h.change(Kind::Note, item(1), None, put(json!({ "t": t })));
        applied(&h.one(next));
    }
    // No change id is held exactly: each push reloaded the state from its filter.
    assert_eq!(h.state.changes().count(), 0);
    assert!(
        h.state.approx_bytes() < 40 * 48,
        "{}",
        h.state.approx_bytes()
    );
    let reads = h.old_reads;
    let len = h.log.len();
    assert_eq!(h.one(c), Outcome::Duplicate(first));
    assert_eq!(h.log.len(), len);
    assert_eq!(
        h.old_reads,
        reads + 1,
        "the resend was resolved from the log"
    );
}

/// Split in units of 64 blocks (a checkpoint's default), a state with fewer than 64 sealed
/// blocks keeps them all, and one with more splits off the first 64 and keeps the rest: a
/// user goes to a filter run once per 2,048 events.
#[test]
fn a_state_splits_its_sealed_filter_blocks_only_in_whole_units() {
    let mut h = Harness::new();
    h.notes(0..100);
    let mut short = h.state.clone();
    assert_eq!(
        short.split_sealed(64),
        None,
        "3 sealed blocks, less than a unit"
    );
    assert_eq!((short.sealed_missing(), short.exact_changes()), (0, 0));
    assert_eq!(short.change_filter(), h.state.change_filter());
    h.notes(100..2100);
    // 2,100 seqs: blocks 0..65 sealed, 65 open; the unit cut is at 64.
    let whole = h.state.clone();
    let mut split = whole.clone();
    let head = split.split_sealed(64).expect("a unit of 64 sealed blocks");
    assert_eq!((head.offset(), head.blocks()), (0, 64));
    assert_eq!(
        (split.sealed_missing(), split.change_filter().blocks()),
        (64, 66)
    );
    assert_eq!(
        split.clone().split_sealed(64),
        None,
        "block 64 alone is not a unit"
    );
    assert!(split.attach_sealed(head));
    assert_eq!(split.change_filter(), whole.change_filter());
    // A unit of 0 is taken for 1.
    let mut any = whole.clone();
    let head = any.split_sealed(0).expect("sealed blocks");
    assert_eq!((head.offset(), head.blocks()), (0, 65));
    // Split one block at a time before (its part row from block 65), then in units of 64:
    // nothing to split (the cut, 64, is before what it holds), and the state is as it was.
    let before = any.clone();
    assert_eq!(any.split_sealed(64), None);
    assert_eq!(any, before);
    assert_eq!(any.sealed_missing(), 65);
}

/// A state split for a checkpoint of format 6 keeps only its open filter blocks; until the
/// sealed ones are attached again it takes every id for a possibly older one (the log
/// decides), and with them it is the state it was.
#[test]
fn a_state_without_its_sealed_filter_blocks_asks_the_log_and_with_them_is_whole() {
    let mut h = Harness::new();
    h.notes(0..100);
    let whole = h.state.clone();
    let mut split = whole.clone();
    let sealed = split.split_sealed(1).expect("3 of the 4 blocks are sealed");
    assert_eq!((sealed.offset(), sealed.blocks()), (0, 3));
    assert_eq!(split.sealed_missing(), 3);
    assert_eq!(split.exact_changes(), 0);
    assert_ne!(split, whole);
    let stranger = ChangeId(uuid::Uuid::from_u128(0xfeed));
    assert!(!whole.change_may_be_older(&stranger));
    assert!(split.change_may_be_older(&stranger), "it cannot tell");
    // Nothing more to split off: the open block is not sealed.
    assert_eq!(split.clone().split_sealed(1), None);
    let mut short = sealed.clone();
    let too_short = short.split_before(2).expect("two blocks");
    let mut refused = split.clone();
    assert!(!refused.attach_sealed(too_short));
    assert_eq!(refused, split);
    assert!(split.attach_sealed(sealed));
    assert_eq!(split, whole);
    assert_eq!(split.sealed_missing(), 0);
    assert!(!split.change_may_be_older(&stranger));
}

#[test]
fn stale_put_and_delete_conflict_with_current_item() {
    let mut h = Harness::new();
    let c = h.change(Kind::Task, item(1), None, put(json!({"title": "a"})));
    h.one(c);
    let c = h.change(Kind::Task, item(1), Some(1), put(json!({"title": "b"})));
    h.one(c);
    let c = h.change(Kind::Task, item(1), Some(1), put(json!({"title": "c"})));
    match h.one(c) {
        Outcome::Conflict(cur) => assert_eq!((cur.version, cur.deleted), (2, false)),
        other => panic!("expected conflict, got {other:?}"),
    }
    let c = h.change(Kind::Task, item(1), Some(1), ChangeBody::Delete);
    assert!(matches!(h.one(c), Outcome::Conflict(_)));
    let c = h.change(Kind::Task, item(1), Some(9), ChangeBody::Delete);
    assert!(matches!(h.one(c), Outcome::Conflict(_)));
    // without base_version: last writer wins, and the overwritten version stays in the log
    let c = h.change(Kind::Task, item(1), None, put(json!({"title": "d"})));
    assert_eq!(applied(&h.one(c)).version, 3);
    assert!(h.log.iter().any(|e| e.version == 2));
}

#[test]
fn stale_patch_merges_only_when_its_fields_are_unchanged() {
    let mut h = Harness::new();
    let c = h.change(
        Kind::Contact,
        item(1),
        None,
        put(json!({"name": "Ada", "phone": "1", "mail": "a@x"})),
    );
    h.one(c);
    // another device changes the phone (v2)
    let c = h.change(
        Kind::Contact,
        item(1),
        Some(1),
        patch(json!({"phone": "2"})),
    );
    h.one(c);
    // a device that saw v1 patches the mail: untouched since v1, so it merges
    let c = h.change(
        Kind::Contact,
        item(1),
        Some(1),
        patch(json!({"mail": "b@x"})),
    );
    assert_eq!(applied(&h.one(c)).version, 3);
    assert_eq!(
        h.doc(item(1)),
        Some(json!({"name": "Ada", "phone": "2", "mail": "b@x"}))
    );
    // a device that saw v1 patches the phone: changed since v1, so it conflicts
    let c = h.change(
        Kind::Contact,
        item(1),
        Some(1),
        patch(json!({"phone": "3"})),
    );
    assert!(matches!(h.one(c), Outcome::Conflict(_)));
    // a field changed and changed back counts as unchanged
    let c = h.change(Kind::Contact, item(1), None, patch(json!({"name": "Bob"})));
    h.one(c);
    let c = h.change(Kind::Contact, item(1), None, patch(json!({"name": "Ada"})));
    h.one(c);
    let c = h.change(
        Kind::Contact,
        item(1),
        Some(3),
        patch(json!({"name": "Eve"})),
    );
    assert_eq!(applied(&h.one(c)).version, 6);
}

#[test]
fn stale_patch_against_a_version_staged_in_the_same_push() {
    let mut h = Harness::new();
    let a = h.change(Kind::Note, item(1), None, put(json!({"a": 1, "b": 1})));
    let b = h.change(Kind::Note, item(1), Some(1), patch(json!({"a": 2})));
    let c = h.change(Kind::Note, item(1), Some(1), patch(json!({"b": 2})));
    let d = h.change(Kind::Note, item(1), Some(1), patch(json!({"a": 3})));
    let out = h.push(&[a, b, c, d]);
    assert_eq!(applied(&out[2]).version, 3);
    assert!(matches!(out[3], Outcome::Conflict(_)));
    assert_eq!(h.doc(item(1)), Some(json!({"a": 2, "b": 2})));
}

#[test]
fn rejections_write_nothing() {
    let mut h = Harness::new();
    let c = h.change(
        Kind::Contact,
        item(1),
        None,
        put(json!(["not", "an", "object"])),
    );
    assert_eq!(rejected(&h.one(c)), RejectCode::InvalidDocument);
    let c = h.change(Kind::Contact, item(1), None, put(json!({"@type": "Event"})));
    assert_eq!(rejected(&h.one(c)), RejectCode::InvalidDocument);
    let c = h.change(Kind::Contact, item(1), Some(0), put(json!({})));
    assert_eq!(rejected(&h.one(c)), RejectCode::InvalidChange);
    let c = h.change(Kind::Contact, item(1), Some(1), put(json!({})));
    assert_eq!(rejected(&h.one(c)), RejectCode::NotFound);
    h.policy.max_document_bytes = 32;
    let c = h.change(
        Kind::Contact,
        item(1),
        None,
        put(json!({"note": "x".repeat(40)})),
    );
    assert_eq!(rejected(&h.one(c)), RejectCode::DocumentTooLarge);
    assert!(h.log.is_empty());
    let c = h.change(Kind::Contact, item(1), None, put(json!({"@type": "Card"})));
    h.one(c);
    let c = h.change(Kind::Note, item(1), None, put(json!({})));
    assert_eq!(rejected(&h.one(c)), RejectCode::KindMismatch);
    let c = h.change(Kind::Contact, item(1), None, patch(json!("x")));
    assert_eq!(rejected(&h.one(c)), RejectCode::InvalidDocument);
    let c = h.change(
        Kind::Contact,
        item(1),
        None,
        patch(json!({"note": "y".repeat(40)})),
    );
    assert_eq!(rejected(&h.one(c)), RejectCode::DocumentTooLarge);
    assert_eq!(h.log.len(), 1);
}

#[test]
fn mass_delete_guard_counts_live_items_of_one_kind() {
    let mut h = Harness::new();
    let puts: Vec<_> = (0..40)
        .map(|n| h.change(Kind::Contact, item(n), None, put(json!({"n": n as u64}))))
        .collect();
    h.push(&puts);
    let deletes: Vec<_> = (0..21)
        .map(|n| h.change(Kind::Contact, item(n), None, ChangeBody::Delete))
        .collect();
    let staged = Staged::new(&h.state);
    let guard = MassDeleteGuard::default();
    assert_eq!(
        staged.check_mass_delete(&deletes, &guard, &OldChanges::new()),
        Err(MassDeleteRefused {
            kind: Kind::Contact,
            deletes: 21,
            live: 40
        })
    );
    // 20 deletes are always allowed; so are 21 of 50
    assert_eq!(
        staged.check_mass_delete(&deletes[..20], &guard, &OldChanges::new()),
        Ok(())
    );
    drop(staged);
    let more: Vec<_> = (40..50)
        .map(|n| h.change(Kind::Contact, item(n), None, put(json!({}))))
        .collect();
    h.push(&more);
    assert_eq!(
        Staged::new(&h.state).check_mass_delete(&deletes, &guard, &OldChanges::new()),
        Ok(())
    );
}

#[test]
fn apply_reports_a_damaged_log() {
    let mut h = Harness::new();
    let a = h.change(Kind::Note, item(1), None, put(json!({})));
    let b = h.change(Kind::Note, item(1), None, put(json!({})));
    h.push(&[a, b]);
    let mut log = h.log.clone();
    log.remove(0);
    assert!(matches!(
        UserState::replay(&log),
        Err(ApplyError::SeqGap { last: 0, got: 2 })
    ));
    let mut log = h.log.clone();
    log[1].version = 5;
    assert!(matches!(
        UserState::replay(&log),
        Err(ApplyError::VersionGap { .. })
    ));
    let mut log = h.log.clone();
    log[1].kind = Kind::Task;
    assert!(matches!(
        UserState::replay(&log),
        Err(ApplyError::KindChanged { .. })
    ));
    let mut log = h.log.clone();
    log[1].change_id = log[0].change_id;
    assert!(matches!(
        UserState::replay(&log),
        Err(ApplyError::DuplicateChange(_))
    ));
    let mut log = h.log.clone();
    log[1].document = None;
    assert!(matches!(
        UserState::replay(&log),
        Err(ApplyError::DocumentMismatch { .. })
    ));
}

#[test]
fn device_items_are_written_by_the_operator_alone() {
    let mut h = Harness::new();
    let doc = json!({"@type": "Device", "name": "Ada's phone"});
    let forged = h.change(Kind::Device, item(7), None, put(doc.clone()));
    assert_eq!(rejected(&h.one(forged)), RejectCode::InvalidChange);
    assert!(
        h.log.is_empty(),
        "a device cannot write the audit trail of devices"
    );
    h.origin = Origin::Operator;
    let note = h.change(Kind::Note, item(1), None, put(json!({})));
    assert_eq!(rejected(&h.one(note)), RejectCode::InvalidChange);
    let card = h.change(Kind::Device, item(7), None, put(json!({"@type": "Card"})));
    assert_eq!(rejected(&h.one(card)), RejectCode::InvalidDocument);
    let registered = h.change(Kind::Device, item(7), None, put(doc));
    assert_eq!(applied(&h.one(registered)).version, 1);
    let revoked = h.change(Kind::Device, item(7), Some(1), ChangeBody::Delete);
    assert_eq!(applied(&h.one(revoked)).version, 2);
    assert!(h.state.item(&item(7)).is_some_and(|i| i.deleted));
    // A log in which a device wrote a device item, or the operator a note, is damaged.
    let mut log = h.log.clone();
    log[0].origin = Origin::Device;
    assert!(matches!(
        UserState::replay(&log),
        Err(ApplyError::OriginMismatch { .. })
    ));
    let mut log = h.log.clone();
    log[0].kind = Kind::Note;
    log[1].kind = Kind::Note;
    assert!(matches!(
        UserState::replay(&log),
        Err(ApplyError::OriginMismatch { .. })
    ));
}

// ---- properties over random change sequences ----

#[derive(Clone, Debug)]
enum Step {
    Put {
        item: u8,
        kind: u8,
        base: Option<u8>,
        field: u8,
        value: u8,
    },
    Patch {
        item: u8,
        base: Option<u8>,
        field: u8,
        value: Option<u8>,
    },
    Delete {
        item: u8,
        base: Option<u8>,
    },
    Retry {
        back: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            0..6u8,
            0..4u8,
            proptest::option::of(0..6u8),
            0..4u8,
            any::<u8>()
        )
            .prop_map(|(item, kind, base, field, value)| Step::Put {
                item,
                kind,
                base,
                field,
                value
            }),
        (
            0..6u8,
            proptest::option::of(0..6u8),
            0..4u8,
            proptest::option::of(any::<u8>())
        )
            .prop_map(|(item, base, field, value)| Step::Patch {
                item,
                base,
                field,
                value
            }),
        (0..6u8, proptest::option::of(0..6u8)).prop_map(|(item, base)| Step::Delete { item, base }),
        (0..8u8).prop_map(|back| Step::Retry { back }),
    ]
}

fn to_change(h: &mut Harness, s: &Step, sent: &[Change]) -> Option<Change> {
    let kinds = Kind::ITEMS;
    let field = |f: u8| format!("f{f}");
    Some(match *s {
        Step::Put {
            item: i,
            kind,
            base,
            field: f,
            value,
        } => {
            let kind = kinds[usize::from(kind) % kinds.len()];
            h.change(
                kind,
                item(u128::from(i)),
                base.map(u64::from),
                put(json!({ field(f): value })),
            )
        }
        Step::Patch {
            item: i,
            base,
            field: f,
            value,
        } => {
            let kind = h
                .state
                .item(&item(u128::from(i)))
                .map_or(Kind::Note, |it| it.kind);
            h.change(
                kind,
                item(u128::from(i)),
                base.map(u64::from),
                patch(json!({ field(f): value })),
            )
        }
        Step::Delete { item: i, base } => {
            let kind = h
                .state
                .item(&item(u128::from(i)))
                .map_or(Kind::Note, |it| it.kind);
            h.change(
                kind,
                item(u128::from(i)),
                base.map(u64::from),
                ChangeBody::Delete,
            )
        }
        Step::Retry { back } => {
            let n = sent.len();
            if n == 0 {
                return None;
            }
            sent[n - 1 - usize::from(back) % n].clone()
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever devices send, in pushes of any size: seq is dense, versions are dense per item,
    /// the state equals a replay of the log, every change id is in the log at most once, and a
    /// retried change answers with its original result.
    #[test]
    fn log_and_state_agree(pushes in proptest::collection::vec(proptest::collection::vec(step(), 1..6), 1..12)) {
        let mut h = Harness::new();
        // The same pushes against a state that holds its change ids as a filter from one push
        // to the next: the same answers, the same log, an equal state.
        let mut r = Harness::new();
        r.reload = true;
        let mut sent: Vec<Change> = Vec::new();
        let mut first_result: std::collections::HashMap<ChangeId, ChangeRef> = Default::default();
        for push in &pushes {
            let changes: Vec<Change> = push.iter().filter_map(|s| to_change(&mut h, s, &sent)).collect();
            let outcomes = h.push(&changes);
            prop_assert_eq!(&r.push(&changes), &outcomes);
            prop_assert_eq!(outcomes.len(), changes.len());
            for (c, o) in changes.iter().zip(&outcomes) {
                match o {
                    Outcome::Applied(r) => {
                        prop_assert!(first_result.insert(c.change_id, *r).is_none());
                    }
                    Outcome::Duplicate(r) => {
                        prop_assert_eq!(first_result.get(&c.change_id), Some(r));
                    }
                    Outcome::Conflict(_) | Outcome::Rejected { .. } => {
                        prop_assert!(!first_result.contains_key(&c.change_id));
                    }
                }
            }
            sent.extend(changes);
        }
        for (i, e) in h.log.iter().enumerate() {
            prop_assert_eq!(e.seq, i as u64 + 1);
        }
        let mut ids = std::collections::HashSet::new();
        prop_assert!(h.log.iter().all(|e| ids.insert(e.change_id)));
        let replayed = UserState::replay(&h.log);
        prop_assert_eq!(replayed.as_ref(), Ok(&h.state));
        // Event ids aside: staging again after a read of the log draws new ones.
        let same = |l: &[Event]| l.iter().map(|e| (e.seq, e.change_id, e.item_id, e.version, e.op, e.document.clone())).collect::<Vec<_>>();
        prop_assert_eq!(same(&r.log), same(&h.log));
        prop_assert_eq!(&r.state, &h.state);
        prop_assert_eq!(r.state.changes().count(), 0);
        prop_assert_eq!(r.state.change_filter(), h.state.change_filter());
        prop_assert_eq!(h.state.last_seq(), h.log.len() as u64);
        // With links on, every version's seq is found by walking back from the item's newest
        // event; without them only the newest, and never a wrong seq.
        let mut linked = UserState::default();
        linked.enable_version_links();
        for e in &h.log {
            crate::apply(&mut linked, e).expect("apply");
        }
        prop_assert_eq!(&linked, &h.state);
        for e in &h.log {
            prop_assert_eq!(linked.seq_of_version(&e.item_id, e.version), Some(e.seq));
            prop_assert_eq!(linked.seq_of_version(&e.item_id, 0), None);
            let plain = h.state.seq_of_version(&e.item_id, e.version);
            prop_assert!(plain.is_none() || plain == Some(e.seq));
        }
        // What a reader with the log up to s knew of each item: its newest event at or before
        // s, found by walking the links (never a wrong seq without them).
        for e in &h.log {
            for s in 0..=h.log.len() as u64 {
                let want = h
                    .log
                    .iter()
                    .filter(|x| x.item_id == e.item_id && x.seq <= s)
                    .map(|x| x.seq)
                    .max();
                prop_assert_eq!(linked.seq_seen_at(&e.item_id, s), Some(want));
                let plain = h.state.seq_seen_at(&e.item_id, s);
                prop_assert!(plain.is_none() || plain == Some(want));
            }
        }
        // A state loaded from a checkpoint at j links only the versions applied after j: it
        // finds those, and never gives a wrong seq for older ones.
        let j = h.log.len() / 2;
        let at_j = UserState::replay(&h.log[..j]).expect("replay");
        let mut loaded = UserState::from_parts(
            at_j.last_seq(),
            at_j.items().cloned(),
            at_j.changes().map(|(c, r)| (*c, *r)),
        );
        loaded.enable_version_links();
        for e in &h.log[j..] {
            crate::apply(&mut loaded, e).expect("apply");
        }
        prop_assert_eq!(&loaded, &h.state);
        for e in &h.log {
            let got = loaded.seq_of_version(&e.item_id, e.version);
            let newest = h.state.item(&e.item_id).map_or(0, |i| i.version);
            if e.seq > j as u64 || e.version == newest {
                prop_assert_eq!(got, Some(e.seq), "linked after the load, or the newest");
            } else {
                prop_assert!(got.is_none() || got == Some(e.seq));
            }
        }
        // Items at any moment k from a state at j ≤ k and only each item's newest event in
        // between, as reads of items at a moment build them, equal a replay to k.
        let items = |s: &UserState| {
            let mut v: Vec<ItemState> = s.items().cloned().collect();
            v.sort_by_key(|i| i.item_id);
            (s.last_seq(), v)
        };
        for k in 0..=h.log.len() {
            let j = k / 2;
            let mut newest: std::collections::BTreeMap<ItemId, &Event> = Default::default();
            for e in &h.log[j..k] {
                newest.insert(e.item_id, e);
            }
            let mut newest: Vec<&Event> = newest.into_values().collect();
            newest.sort_by_key(|e| e.seq);
            let mut got = UserState::replay(&h.log[..j]).expect("replay");
            got.enable_version_links();
            got.advance_items(newest, k as u64).expect("advance");
            let want = UserState::replay(&h.log[..k]).expect("replay");
            prop_assert_eq!(items(&got), items(&want), "from {} to {}", j, k);
            // Skipped versions are not linked: a walk back never lands on a wrong seq.
            for e in &h.log[..k] {
                let found = got.seq_of_version(&e.item_id, e.version);
                prop_assert!(found.is_none() || found == Some(e.seq));
            }
        }
    }
}

#[test]
fn advance_items_refuses_what_no_log_could_hold() {
    let mut h = Harness::new();
    let a = h.change(Kind::Note, item(1), None, put(json!({})));
    let b = h.change(Kind::Note, item(1), None, put(json!({"a": 1})));
    let c = h.change(Kind::Note, item(2), None, put(json!({})));
    h.push(&[a, b, c]);
    let log = h.log.clone();
    let base = || UserState::replay(&log[..1]).expect("replay");
    // Fine: the newest events of items 1 and 2 after seq 1.
    let mut ok = base();
    ok.advance_items([&log[1], &log[2]], 3).expect("advance");
    assert_eq!(ok.item(&item(1)).map(|i| i.version), Some(2));
    // An event past the moment, out of order, or not after the base.
    assert!(matches!(
        base().advance_items([&log[1], &log[2]], 2),
        Err(ApplyError::SeqGap { .. })
    ));
    assert!(matches!(
        base().advance_items([&log[2], &log[1]], 3),
        Err(ApplyError::SeqGap { .. })
    ));
    assert!(matches!(
        base().advance_items([&log[0]], 3),
        Err(ApplyError::SeqGap { .. })
    ));
    assert!(matches!(
        base().advance_items([], 0),
        Err(ApplyError::SeqGap { .. })
    ));
    // A version that does not rise, a kind that changes, a put without a document.
    let mut stale = log[1].clone();
    stale.version = 1;
    assert!(matches!(
        base().advance_items([&stale], 3),
        Err(ApplyError::VersionGap { .. })
    ));
    let mut kind = log[1].clone();
    kind.kind = Kind::Task;
    assert!(matches!(
        base().advance_items([&kind], 3),
        Err(ApplyError::KindChanged { .. })
    ));
    let mut bare = log[1].clone();
    bare.document = None;
    assert!(matches!(
        base().advance_items([&bare], 3),
        Err(ApplyError::DocumentMismatch { .. })
    ));
}

#[test]
fn fixture_histories_replay_and_have_realistic_documents() {
    let start = ManualClock::at_epoch_2026().now();
    let events = fixtures::history(3, 4, 200, start);
    assert_eq!(events.len(), 800);
    for user in events.chunk_by(|a, b| a.user_id == b.user_id) {
        assert!(UserState::replay(user).is_ok());
    }
    let sizes: Vec<usize> = events
        .iter()
        .filter_map(|e| e.document.as_ref().map(Document::len))
        .collect();
    assert!(
        sizes.iter().all(|s| (250..=720).contains(s)),
        "sizes {:?}",
        (sizes.iter().min(), sizes.iter().max())
    );
}

#[test]
fn documents_are_probed_without_being_built() {
    let probe = |s: &str| Document::from_stored(s).probe();
    assert_eq!(
        probe(r#" {"@type": "Card", "x": [1, {"y": 2}]}"#),
        Probe::Object {
            json_type: Some("Card".into())
        }
    );
    assert_eq!(probe(r#"{"x": 1}"#), Probe::Object { json_type: None });
    assert_eq!(probe(r#"{"@type": 7}"#), Probe::BadType);
    assert_eq!(probe("[1, 2]"), Probe::NotAnObject);
    assert_eq!(probe("\"text\""), Probe::NotAnObject);
    // Text sent by a device is kept as sent: no re-serialization.
    let sent: Change = serde_json::from_str(
        r#"{"change_id": "00000000-0000-0000-0000-000000000001", "kind": "note",
            "item_id": "00000000-0000-0000-0000-000000000002", "op": "put",
            "document": {"title" : "milk"}}"#,
    )
    .expect("a change parses");
    let ChangeBody::Put { document } = &sent.body else {
        panic!("a put")
    };
    assert_eq!(document.as_str(), r#"{"title" : "milk"}"#);
    let mut h = Harness::new();
    let c = h.change(Kind::Note, item(1), None, put(json!({"@type": 3})));
    assert_eq!(rejected(&h.one(c)), RejectCode::InvalidDocument);
}

#[test]
fn wire_changes_are_checked() {
    let parse = |s: &str| serde_json::from_str::<Change>(s).map_err(|e| e.to_string());
    let ids = r#""change_id": "00000000-0000-0000-0000-000000000001", "kind": "note", "item_id": "00000000-0000-0000-0000-000000000002""#;
    assert!(
        parse(&format!(
            "{{{ids}, \"op\": \"delete\", \"base_version\": 3}}"
        ))
        .is_ok()
    );
    assert!(
        parse(&format!("{{{ids}, \"op\": \"put\"}}"))
            .is_err_and(|e| e.contains("needs a document"))
    );
    assert!(
        parse(&format!(
            "{{{ids}, \"op\": \"delete\", \"document\": {{}}}}"
        ))
        .is_err_and(|e| e.contains("no document"))
    );
    assert!(parse(&format!("{{{ids}, \"op\": \"move\", \"document\": {{}}}}")).is_err());
    assert!(
        parse(&format!(
            "{{{ids}, \"op\": \"put\", \"document\": {{}}, \"extra\": 1}}"
        ))
        .is_err()
    );
    assert!(
        parse(&format!(
            "{{{ids}, \"op\": \"put\", \"document\": {{}}, \"base_version\": -1}}"
        ))
        .is_err()
    );
    let c = parse(&format!(
        "{{{ids}, \"op\": \"patch\", \"document\": {{\"a\": null}}}}"
    ))
    .expect("patch");
    let back = serde_json::to_value(&c).expect("serializes");
    assert_eq!(back["op"], "patch");
    assert_eq!(back["document"], json!({"a": null}));
}

#[test]
fn items_changed_after_follows_the_log() {
    let mut h = Harness::new();
    let a = h.change(Kind::Note, item(1), None, put(json!({"v": 1})));
    let b = h.change(Kind::Note, item(2), None, put(json!({"v": 1})));
    let c = h.change(Kind::Note, item(1), None, put(json!({"v": 2})));
    let d = h.change(Kind::Note, item(2), None, ChangeBody::Delete);
    h.push(&[a, b, c, d]);
    let after = |n| {
        h.state
            .items_changed_after(n)
            .map(|i| (i.item_id, i.seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(after(0), vec![(item(1), 3), (item(2), 4)]);
    assert_eq!(after(3), vec![(item(2), 4)]);
    assert!(after(4).is_empty());
    assert_eq!(
        UserState::replay(&h.log).as_ref(),
        Ok(&h.state),
        "the index is part of the fold"
    );
}

// ---- documents strict JSON parsers refuse (audit item 3) ----

/// A put of `document` as a device sends it: the change's JSON text, parsed as the push route
/// parses it, so the document is the raw text the device wrote.
fn wire_change(h: &mut Harness, kind: Kind, item: ItemId, op: &str, document: &str) -> Change {
    h.next_change += 1;
    let text = format!(
        r#"{{"change_id": "{}", "kind": "{kind}", "item_id": "{item}", "op": "{op}", "document": {document}}}"#,
        ChangeId(Uuid::from_u128(0xC000 + h.next_change)),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the push route parses {text}: {e}"))
}

/// `{"@type": "Card", "x": [[...]]}` with `depth` levels counting the outer object.
fn nested(depth: usize) -> String {
    let inner = depth - 1;
    format!(
        r#"{{"@type": "Card", "x": {}{}}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    )
}

/// Each refused document, with what its rejection's detail must say.
fn refused_documents() -> Vec<(&'static str, String, &'static str)> {
    let big_integer = format!(r#"{{"@type": "Card", "n": 1{}}}"#, "0".repeat(400));
    vec![
        (
            "lone high surrogate in a value",
            r#"{"@type": "Card", "name": "Ada \ud83d"}"#.into(),
            "lone surrogate",
        ),
        (
            "lone low surrogate in a value",
            r#"{"@type": "Card", "name": "\ude00 Ada"}"#.into(),
            "lone surrogate",
        ),
        (
            "high surrogate before another escape",
            r#"{"@type": "Card", "name": "\ud83d\u0041"}"#.into(),
            "lone surrogate",
        ),
        (
            "lone surrogate deep in an array",
            r#"{"@type": "Card", "a": [1, ["\ud83d"]]}"#.into(),
            "lone surrogate",
        ),
        (
            "lone surrogate in a top-level key",
            r#"{"@type": "Card", "\ud83d": 1}"#.into(),
            "lone surrogate",
        ),
        (
            "lone surrogate in a nested key",
            r#"{"@type": "Card", "x": {"\ud83dkey": 1}}"#.into(),
            "lone surrogate",
        ),
        (
            "lone surrogate in @type",
            r#"{"@type": "\ud83d"}"#.into(),
            "lone surrogate",
        ),
        (
            "1e400",
            r#"{"@type": "Card", "n": 1e400}"#.into(),
            "number out of range",
        ),
        (
            "-1e400",
            r#"{"@type": "Card", "n": -1e400}"#.into(),
            "number out of range",
        ),
        (
            "1.5E+999 in an array",
            r#"{"@type": "Card", "n": [0, 1.5E+999]}"#.into(),
            "number out of range",
        ),
        ("a 401-digit integer", big_integer, "number out of range"),
        (
            "200 levels of arrays",
            nested(200),
            "nested deeper than 127 levels",
        ),
        (
            "128 levels of arrays",
            nested(128),
            "nested deeper than 127 levels",
        ),
        (
            "200 levels of objects",
            format!(
                r#"{{"@type": "Card", "x": {}1{}}}"#,
                r#"{"a":"#.repeat(199),
                "}".repeat(199)
            ),
            "nested deeper than 127 levels",
        ),
    ]
}

/// What is wrong with an outcome that should be an `invalid_document` rejection saying `says`.
fn not_refused(what: &str, o: &Outcome, says: &str) -> Option<String> {
    match o {
        Outcome::Rejected {
            code: RejectCode::InvalidDocument,
            detail,
        } if detail.contains(says) => None,
        other => Some(format!(
            "{what}: got {other:?}, want invalid_document saying {says:?}"
        )),
    }
}

#[test]
fn puts_of_documents_strict_parsers_refuse_are_rejected_with_what_is_wrong() {
    let mut wrong = Vec::new();
    for (what, document, says) in refused_documents() {
        let mut h = Harness::new();
        let c = wire_change(&mut h, Kind::Contact, item(1), "put", &document);
        let outcome = h.one(c);
        wrong.extend(not_refused(what, &outcome, says));
        if !h.log.is_empty() || h.state.item(&item(1)).is_some() {
            wrong.push(format!("{what}: written"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn patches_whose_document_strict_parsers_refuse_are_rejected_with_what_is_wrong() {
    let mut wrong = Vec::new();
    for (what, document, says) in refused_documents() {
        let mut h = Harness::new();
        let c = h.change(
            Kind::Contact,
            item(1),
            None,
            put(json!({"@type": "Card", "name": "Ada"})),
        );
        applied(&h.one(c));
        let p = wire_change(&mut h, Kind::Contact, item(1), "patch", &document);
        let outcome = h.one(p);
        wrong.extend(not_refused(what, &outcome, says));
        if h.log.len() != 1 || h.doc(item(1)) != Some(json!({"@type": "Card", "name": "Ada"})) {
            wrong.push(format!("{what}: written"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn documents_at_the_edges_of_what_is_refused_are_kept_as_sent() {
    let accepted = [
        r#"{"@type": "Card", "name": "Ada \ud83d\ude00", "k\u00e9y": "\u0041"}"#.to_string(),
        r#"{"@type": "Card", "n": [1.7976931348623157e308, -1e308, 1e-400, -0, 18446744073709551616]}"#.into(),
        nested(127),
    ];
    for document in accepted {
        let mut h = Harness::new();
        let c = wire_change(&mut h, Kind::Contact, item(1), "put", &document);
        applied(&h.one(c));
        let stored = h.state.item(&item(1)).and_then(|i| i.document.clone());
        assert_eq!(
            stored.as_ref().map(Document::as_str),
            Some(document.as_str())
        );
        assert!(
            stored.is_some_and(|d| d.to_object().is_ok()),
            "what is accepted parses back, so a later patch can merge it"
        );
    }
}

/// A create puts only while the item is absent (never written, or deleted), decided against
/// committed state and the batch: two creates of one item in one batch make one item.
#[test]
fn a_create_applies_only_while_the_item_is_absent() {
    let create = |v: i64| ChangeBody::Create {
        document: Document::from_value(&json!({"v": v})),
    };
    let mut h = Harness::new();
    let first = h.change(Kind::Note, item(1), None, create(1));
    let second = h.change(Kind::Note, item(1), None, create(2));
    let out = h.push(&[first, second]);
    assert_eq!(applied(&out[0]).version, 1);
    match &out[1] {
        Outcome::Conflict(cur) => assert_eq!((cur.version, cur.deleted), (1, false)),
        other => panic!("the second create of one item conflicts, got {other:?}"),
    }
    assert_eq!(h.doc(item(1)), Some(json!({"v": 1})));
    // Deleted: absent again, so a create writes over the tombstone, as a put.
    let del = h.change(Kind::Note, item(1), None, ChangeBody::Delete);
    h.one(del);
    let again = h.change(Kind::Note, item(1), None, create(3));
    assert_eq!(applied(&h.one(again)).version, 3);
    assert_eq!(
        h.log.last().map(|e| e.op),
        Some(Op::Put),
        "written as a put event"
    );
    // Its document is checked as a put's.
    let bad = h.change(
        Kind::Note,
        item(2),
        None,
        ChangeBody::Create {
            document: Document::from_value(&json!([1])),
        },
    );
    assert!(matches!(h.one(bad), Outcome::Rejected { .. }));
}

#[test]
fn collections_and_the_collection_an_item_is_kept_in() {
    use crate::COLLECTION_PROPERTY as C;
    let mut h = Harness::new();
    let work = item(50);
    // A collection says what it holds.
    let bad = h.change(Kind::Collection, work, None, put(json!({"name": "Work"})));
    assert_eq!(rejected(&h.one(bad)), RejectCode::InvalidDocument);
    let ok = h.change(
        Kind::Collection,
        work,
        None,
        put(json!({"@type": "Collection", "holds": "calendar", "name": "Work"})),
    );
    applied(&h.one(ok));
    // An item names its collection by id, or null.
    let bad = h.change(Kind::Event, item(1), None, put(json!({C: "work"})));
    assert_eq!(rejected(&h.one(bad)), RejectCode::InvalidDocument);
    let first = h.change(
        Kind::Event,
        item(1),
        None,
        put(json!({"title": "a", C: work.to_string()})),
    );
    applied(&h.one(first));
    // A device's put that leaves it out keeps the item where it is...
    let edit = h.change(Kind::Event, item(1), None, put(json!({"title": "b"})));
    applied(&h.one(edit));
    assert_eq!(
        h.doc(item(1)),
        Some(json!({"title": "b", C: work.to_string()}))
    );
    // ...a patch keeps it as patches keep every field, and null moves it to the default.
    let moved = h.change(Kind::Event, item(1), None, patch(json!({C: null})));
    applied(&h.one(moved));
    assert_eq!(h.doc(item(1)), Some(json!({"title": "b"})));
    let back = h.change(
        Kind::Event,
        item(1),
        None,
        put(json!({"title": "c", C: work.to_string()})),
    );
    applied(&h.one(back));
    let to_default = h.change(
        Kind::Event,
        item(1),
        None,
        put(json!({"title": "d", C: null})),
    );
    applied(&h.one(to_default));
    assert_eq!(h.doc(item(1)), Some(json!({"title": "d", C: null})));
    // A re-created item starts where its put says.
    let again = h.change(
        Kind::Event,
        item(1),
        None,
        put(json!({"title": "e", C: work.to_string()})),
    );
    applied(&h.one(again));
    let del = h.change(Kind::Event, item(1), None, ChangeBody::Delete);
    applied(&h.one(del));
    let recreated = h.change(Kind::Event, item(1), None, put(json!({"title": "f"})));
    applied(&h.one(recreated));
    assert_eq!(h.doc(item(1)), Some(json!({"title": "f"})));
    // Only a live collection that holds the kind, or the default.
    let nowhere = h.change(
        Kind::Event,
        item(3),
        None,
        put(json!({C: item(77).to_string()})),
    );
    assert_eq!(rejected(&h.one(nowhere)), RejectCode::InvalidDocument);
    let contact = h.change(
        Kind::Contact,
        item(3),
        None,
        put(json!({C: work.to_string()})),
    );
    assert_eq!(rejected(&h.one(contact)), RejectCode::InvalidDocument);
    let default = crate::Holds::Contacts.default_id(user());
    let contact = h.change(
        Kind::Contact,
        item(3),
        None,
        put(json!({C: default.to_string()})),
    );
    applied(&h.one(contact));
    // A collection holding live items is not deleted; with them, in one push, it is.
    let into_work = h.change(
        Kind::Event,
        item(1),
        None,
        patch(json!({C: work.to_string()})),
    );
    applied(&h.one(into_work));
    let drop_work = h.change(Kind::Collection, work, None, ChangeBody::Delete);
    assert_eq!(rejected(&h.one(drop_work)), RejectCode::InvalidChange);
    let drop_item = h.change(Kind::Event, item(1), None, ChangeBody::Delete);
    let drop_work = h.change(Kind::Collection, work, None, ChangeBody::Delete);
    let out = h.push(&[drop_item, drop_work]);
    applied(&out[0]);
    applied(&out[1]);
    let undo = h.change(
        Kind::Collection,
        work,
        None,
        put(json!({"holds": "calendar", "name": "Work"})),
    );
    applied(&h.one(undo));
    // What a collection holds does not change.
    let flip = h.change(
        Kind::Collection,
        work,
        None,
        patch(json!({"holds": "contacts"})),
    );
    assert_eq!(rejected(&h.one(flip)), RejectCode::InvalidDocument);
    // A written default's item may be deleted while items are in the default: that only
    // resets its name. It holds what its default holds.
    let cal_default = crate::Holds::Calendar.default_id(user());
    let wrong = h.change(
        Kind::Collection,
        cal_default,
        None,
        put(json!({"holds": "contacts"})),
    );
    assert_eq!(rejected(&h.one(wrong)), RejectCode::InvalidDocument);
    let named_default = h.change(
        Kind::Collection,
        cal_default,
        None,
        put(json!({"holds": "calendar", "name": "Mine"})),
    );
    applied(&h.one(named_default));
    let in_default = h.change(
        Kind::Event,
        item(4),
        None,
        put(json!({C: cal_default.to_string()})),
    );
    applied(&h.one(in_default));
    let reset = h.change(Kind::Collection, cal_default, None, ChangeBody::Delete);
    applied(&h.one(reset));
    // An item left naming a collection deleted alone (by a restore of some kinds) can still
    // be edited by an app that leaves the property out, or patches something else.
    let orphan_home = item(60);
    let made = h.change(
        Kind::Collection,
        orphan_home,
        None,
        put(json!({"holds": "calendar"})),
    );
    applied(&h.one(made));
    let orphan = h.change(
        Kind::Event,
        item(5),
        None,
        put(json!({"t": 1, C: orphan_home.to_string()})),
    );
    applied(&h.one(orphan));
    h.origin = Origin::Restore;
    let gone = h.change(Kind::Collection, orphan_home, None, ChangeBody::Delete);
    applied(&h.one(gone));
    h.origin = Origin::Device;
    let edit = h.change(Kind::Event, item(5), None, put(json!({"t": 2})));
    applied(&h.one(edit));
    let edit = h.change(Kind::Event, item(5), None, patch(json!({"t": 3})));
    applied(&h.one(edit));
    assert_eq!(
        h.doc(item(5)),
        Some(json!({"t": 3, C: orphan_home.to_string()}))
    );
    // A restore writes the document it was given, as it was.
    let kept = h.change(
        Kind::Event,
        item(2),
        None,
        put(json!({"title": "g", C: work.to_string()})),
    );
    applied(&h.one(kept));
    h.origin = Origin::Restore;
    let restored = h.change(Kind::Event, item(2), None, put(json!({"title": "old"})));
    applied(&h.one(restored));
    assert_eq!(h.doc(item(2)), Some(json!({"title": "old"})));
}

#[test]
fn a_state_is_recorded_by_a_moment_when_its_newest_event_is() {
    let mut h = Harness::new();
    assert!(UserState::default().recorded_by(h.clock.now()));
    let a = h.change(Kind::Note, item(1), None, put(json!({})));
    let b = h.change(Kind::Note, item(2), None, put(json!({})));
    h.push(&[a]);
    h.push(&[b]);
    let (first, second) = (h.log[0].recorded_at, h.log[1].recorded_at);
    assert!(first < second);
    let state = UserState::replay(&h.log).expect("replay");
    assert!(state.recorded_by(second));
    assert!(!state.recorded_by(first));
    // A rewrite of the older item is the newest event: its time counts, not the item's first.
    let c = h.change(Kind::Note, item(1), Some(1), put(json!({"a": 1})));
    h.push(&[c]);
    let third = h.log[2].recorded_at;
    let state = UserState::replay(&h.log).expect("replay");
    assert!(!state.recorded_by(second));
    assert!(state.recorded_by(third));
}

#[test]
fn allocation_sizes_follow_jemallocs_classes() {
    use crate::memory::alloc_size;
    let classes = [
        (0, 0),
        (1, 8),
        (9, 16),
        (100, 112),
        (128, 128),
        (129, 160),
        (516, 640),
        (700, 768),
        (4097, 5120),
        (20_000, 20_480),
        // Past the largest class: saturates rather than overflowing.
        (usize::MAX, usize::MAX),
    ];
    for (n, class) in classes {
        assert_eq!(alloc_size(n), class, "{n}");
    }
}
