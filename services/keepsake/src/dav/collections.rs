//! A user's address books and calendars as the DAV tree shows them, read from the view
//! (`keepsake_model::collection` says what a collection is).
//!
//! - The defaults, `contacts/` and `calendar/`, always exist; a written default (renamed, say)
//!   is an item with the default's id.
//! - Every live `collection` item is a collection at `<its name>/`: the name a client gave it
//!   (kept in its document as an item's is), else its item id.
//! - An item is in the collection its document names ([`keepsake_model::collection::kept_in`]).
//!
//! Invariant: [`resolve`] of a collection's segment gives that collection, so the href a
//! listing gives is the href that reaches it.

use keepsake_model::collection::{holds_of, kept_in};
use keepsake_model::{Document, ItemId, ItemState, Kind, StateRead, UserId, UserState};

use super::paths::{self, Collection};
use super::row::resource_name;
use crate::api::{ApiError, Shared};

/// The collection at a path segment, if there is one.
pub(crate) fn resolve(u: &UserState, user: UserId, segment: &str) -> Option<Collection> {
    if let Some(mut c) = Collection::parse_default(user, segment) {
        c.document = u
            .item(&c.id)
            .filter(|i| !i.deleted && i.kind == Kind::Collection)
            .and_then(|i| i.document.clone());
        return Some(c);
    }
    let id = paths::collection_id(user, segment);
    let c = of_item(user, u.item(&id)?)?;
    (!c.default && c.segment == segment).then_some(c)
}

/// The collection a live `collection` item is; `None` for a tombstone, another kind, or a
/// document that does not say what it holds.
pub(crate) fn of_item(user: UserId, item: &ItemState) -> Option<Collection> {
    if item.deleted || item.kind != Kind::Collection {
        return None;
    }
    let document = item.document.as_ref()?;
    let holds = holds_of(document)?;
    if item.item_id == holds.default_id(user) {
        let mut c = Collection::default_of(user, holds);
        c.document = Some(document.clone());
        return Some(c);
    }
    let segment = resource_name(document)
        .filter(|name| paths::collection_id(user, name) == item.item_id)
        .unwrap_or_else(|| item.item_id.to_string());
    // A segment that names a default, or a written default of the other sort, is not
    // reachable as this item: leave it out rather than list what cannot be read.
    if keepsake_model::Holds::parse(&segment).is_some() {
        return None;
    }
    Some(Collection {
        holds,
        id: item.item_id,
        segment,
        default: false,
        document: Some(document.clone()),
    })
}

/// Every collection of the user: the defaults first, then the others by name.
pub(crate) fn list(u: &UserState, user: UserId) -> Vec<Collection> {
    let mut made: Vec<Collection> = u
        .items()
        .filter(|i| i.kind == Kind::Collection && !i.deleted)
        .filter_map(|i| of_item(user, i))
        .filter(|c| !c.default)
        .collect();
    made.sort_by(|a, b| a.segment.cmp(&b.segment));
    let mut all: Vec<Collection> = keepsake_model::Holds::ALL
        .iter()
        .filter_map(|h| resolve(u, user, h.as_str()))
        .collect();
    all.extend(made);
    all
}

/// The item a resource name in `c` is. A chosen name is its derived item
/// ([`paths::derived_item`]). A `<uuid>.<ext>` name is the item with that id
/// ([`paths::item_of`]), unless that item is live in another collection (or of another sort):
/// then it is the derived item, a copy. So a client that puts a copy of an event into a second
/// calendar, or moves it there (a put, then a delete of the first), under the `<uuid>.ics`
/// name it had, makes a new item and never overwrites or moves the first; and once the first
/// is deleted the copy stays what the name reads.
pub(crate) fn item_at(u: &UserState, user: UserId, c: &Collection, name: &str) -> ItemId {
    let id = paths::item_of(user, c, name);
    let copy = paths::derived_item(user, c, name);
    if id == copy {
        return id;
    }
    let here = |i: &ItemState| !i.deleted && contains(user, c, i);
    match (u.item(&id), u.item(&copy)) {
        // A live copy here is what the name reads.
        (_, Some(d)) if here(d) => copy,
        (Some(i), _) if here(i) => id,
        // The id's item lives elsewhere: the name is the copy's.
        (Some(i), _) if !i.deleted => copy,
        // Both gone: the name's last item was the copy.
        (_, Some(_)) => copy,
        _ => id,
    }
}

/// Whether `item` is in `c`.
pub(crate) fn contains(user: UserId, c: &Collection, item: &ItemState) -> bool {
    c.holds(item.kind) && kept_in(user, item.kind, item.document.as_ref()) == Some(c.id)
}

/// Whether an item of `kind` whose document was `document` was in `c`.
pub(crate) fn held(user: UserId, c: &Collection, kind: Kind, document: &Document) -> bool {
    c.holds(kind) && kept_in(user, kind, Some(document)) == Some(c.id)
}

/// [`resolve`], read from the view.
pub(crate) async fn find(
    state: &Shared,
    user: UserId,
    segment: &str,
) -> Result<Option<Collection>, ApiError> {
    let log = &state.ready()?.log;
    Ok(log
        .user(&user, |u: &UserState| resolve(u, user, segment))
        .await?)
}

/// [`list`], read from the view.
pub(crate) async fn all(state: &Shared, user: UserId) -> Result<Vec<Collection>, ApiError> {
    let log = &state.ready()?.log;
    Ok(log.user(&user, |u: &UserState| list(u, user)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use keepsake_model::{Holds, ItemId, StateWrite};
    use serde_json::json;
    use uuid::Uuid;

    fn user() -> UserId {
        UserId(Uuid::from_u128(7))
    }

    fn put(u: &mut UserState, id: ItemId, kind: Kind, doc: serde_json::Value, seq: u64) {
        u.put_item(ItemState {
            item_id: id,
            kind,
            version: 1,
            seq,
            deleted: false,
            changed_at: DateTime::<Utc>::UNIX_EPOCH,
            document: Some(Document::from_value(&doc)),
        });
    }

    #[test]
    fn collections_resolve_at_the_segments_they_are_listed_at() {
        let mut u = UserState::default();
        let work = paths::collection_id(user(), "Work ä b");
        put(
            &mut u,
            work,
            Kind::Collection,
            json!({"holds": "calendar", "keepsake.app:resource": {"name": "Work ä b"}}),
            1,
        );
        let rest = ItemId(Uuid::from_u128(99));
        put(
            &mut u,
            rest,
            Kind::Collection,
            json!({"holds": "contacts"}),
            2,
        );
        let renamed = Holds::Contacts.default_id(user());
        put(
            &mut u,
            renamed,
            Kind::Collection,
            json!({"holds": "contacts", "name": "People"}),
            3,
        );
        let listed = list(&u, user());
        let segments: Vec<&str> = listed.iter().map(|c| c.segment.as_str()).collect();
        assert_eq!(
            segments,
            vec![
                "contacts",
                "calendar",
                "00000000-0000-0000-0000-000000000063",
                "Work ä b"
            ]
        );
        for c in &listed {
            assert_eq!(resolve(&u, user(), &c.segment).as_ref(), Some(c));
        }
        assert!(listed[0].document.is_some(), "the written default");
        assert!(resolve(&u, user(), "nothing").is_none());
        // An item is in the collection it names, else in its kind's default.
        let event = |doc| ItemState {
            item_id: ItemId(Uuid::from_u128(5)),
            kind: Kind::Event,
            version: 1,
            seq: 4,
            deleted: false,
            changed_at: DateTime::<Utc>::UNIX_EPOCH,
            document: Some(Document::from_value(&doc)),
        };
        let work_c = &listed[3];
        let cal = &listed[1];
        let in_work = event(json!({"keepsake.app:collection": work.to_string()}));
        assert!(contains(user(), work_c, &in_work));
        assert!(!contains(user(), cal, &in_work));
        let plain = event(json!({}));
        assert!(contains(user(), cal, &plain));
        assert!(!contains(user(), work_c, &plain));
        assert!(
            !contains(user(), &listed[0], &plain),
            "an event is in no address book"
        );
    }

    #[test]
    fn a_uuid_name_in_a_second_collection_is_a_copy_never_the_first() {
        let mut u = UserState::default();
        let work = paths::collection_id(user(), "work");
        put(
            &mut u,
            work,
            Kind::Collection,
            json!({"holds": "calendar", "keepsake.app:resource": {"name": "work"}}),
            1,
        );
        let cal = Collection::default_of(user(), Holds::Calendar);
        let work_c = resolve(&u, user(), "work").expect("work");
        let first = ItemId(Uuid::from_u128(0xabc));
        let name = format!("{first}.ics");
        // Nothing there yet: the name is the id's item, in either.
        assert_eq!(item_at(&u, user(), &cal, &name), first);
        put(&mut u, first, Kind::Event, json!({"title": "a"}), 2);
        assert_eq!(item_at(&u, user(), &cal, &name), first);
        // In the second calendar the same name is a copy.
        let copy = paths::derived_item(user(), &work_c, &name);
        assert_eq!(item_at(&u, user(), &work_c, &name), copy);
        put(
            &mut u,
            copy,
            Kind::Event,
            json!({"title": "a", "keepsake.app:collection": work.to_string()}),
            3,
        );
        assert_eq!(item_at(&u, user(), &work_c, &name), copy);
        assert_eq!(item_at(&u, user(), &cal, &name), first);
        // The first deleted (a move): the copy is still what the name reads there.
        u.put_item(ItemState {
            item_id: first,
            kind: Kind::Event,
            version: 2,
            seq: 4,
            deleted: true,
            changed_at: DateTime::<Utc>::UNIX_EPOCH,
            document: None,
        });
        assert_eq!(item_at(&u, user(), &work_c, &name), copy);
        assert_eq!(item_at(&u, user(), &cal, &name), first);
    }
}
