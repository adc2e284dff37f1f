//! Collections: the address books and calendars a user's items are kept in.
//!
//! A collection is an item of kind [`Kind::Collection`], so creating, renaming and deleting one
//! are ordinary events, in history and restorable. Its document says what it holds
//! (`"holds": "contacts"` or `"calendar"`) and how it is shown (`name`, `description`,
//! `color`, `sortOrder`, and for a calendar the iCalendar `components` it takes).
//!
//! An item names its collection in its document, [`COLLECTION_PROPERTY`] (the collection item's
//! id), as JMAP's `addressBookIds` / `calendarIds` do: [`kept_in`]. Every user also has one
//! default collection per [`Holds`], which need not exist as an item: an item that names none
//! (or `null`, or the default's id) is in the default collection of its kind.
//!
//! Invariants (staging enforces them for devices' changes, `crate::change`):
//! - a collection's document has `holds`, one of [`Holds::ALL`]'s spellings;
//! - [`COLLECTION_PROPERTY`] is absent, `null` or the id of a live collection that holds the
//!   item's kind (or the default's);
//! - a collection that holds live items is not deleted (its items are deleted, or moved, first:
//!   in the same push, as a DAV `DELETE` of a collection does);
//! - a device's put that leaves [`COLLECTION_PROPERTY`] out keeps the item in the collection it
//!   is in (clients that do not know collections do not move items by editing them); a put or
//!   patch that names one moves the item.
//!
//! Restores write what the log held, as it was, and are not checked: a restore of some kinds
//! only can bring items back into a collection it does not bring back. Such an item stays in
//! the log, in pulls and in as-of reads, and is served over DAV again once its collection is
//! restored.

use serde_json::Value;

use crate::document::Document;
use crate::ids::{ItemId, UserId};
use crate::kind::Kind;

/// The document property naming the collection an item is kept in.
pub const COLLECTION_PROPERTY: &str = "keepsake.app:collection";

/// What a collection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holds {
    /// Contacts: an address book.
    Contacts,
    /// Events, tasks and notes: a calendar.
    Calendar,
}

impl Holds {
    /// Both, in the order listings give them.
    pub const ALL: [Holds; 2] = [Holds::Contacts, Holds::Calendar];

    /// The stored spelling (the `holds` of a collection document), which is also the path
    /// segment of the default collection.
    pub fn as_str(self) -> &'static str {
        match self {
            Holds::Contacts => "contacts",
            Holds::Calendar => "calendar",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }

    /// The collections of items of `kind`; `None` for kinds no collection holds.
    pub fn of(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Contact => Some(Holds::Contacts),
            Kind::Event | Kind::Task | Kind::Note => Some(Holds::Calendar),
            Kind::Collection | Kind::Device => None,
        }
    }

    /// Whether collections of this sort hold items of `kind`.
    pub fn holds(self, kind: Kind) -> bool {
        Self::of(kind) == Some(self)
    }

    /// The id of the user's default collection of this sort. It is an item only once written
    /// (a default calendar renamed, for example); until then it exists all the same.
    pub fn default_id(self, user: UserId) -> ItemId {
        ItemId(uuid::Uuid::new_v5(
            &user.0,
            format!("keepsake/v1/default-collection/{}", self.as_str()).as_bytes(),
        ))
    }
}

/// What a collection's document holds, read from it; `None` if `holds` is missing or not
/// one of [`Holds::ALL`]'s spellings.
pub fn holds_of(document: &Document) -> Option<Holds> {
    // Collection documents are small; parsing them whole is fine.
    let object = document.to_object().ok()?;
    Holds::parse(object.get("holds")?.as_str()?)
}

/// The collection an item's document names: `Ok(None)` when it names none (absent or `null`),
/// `Err` when the property is there but not an item id.
pub fn named_collection(document: &Document) -> Result<Option<ItemId>, String> {
    // Most documents name none: look before parsing. Those that do are read for that one
    // top-level value, skipping the rest unbuilt (a listing asks this of every item).
    if !document.as_str().contains(COLLECTION_PROPERTY) {
        return Ok(None);
    }
    let Ok(Named(value)) = serde_json::from_str::<Named>(document.as_str()) else {
        return Ok(None);
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse::<uuid::Uuid>()
            .map(|id| Some(ItemId(id)))
            .map_err(|_| format!("{COLLECTION_PROPERTY} must be an item id or null, not {s:?}")),
        Some(other) => Err(format!(
            "{COLLECTION_PROPERTY} must be an item id or null, not {other}"
        )),
    }
}

/// A document's top level reduced to its [`COLLECTION_PROPERTY`] value.
struct Named(Option<Value>);

impl<'de> serde::Deserialize<'de> for Named {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> serde::de::Visitor<'de> for Top {
            type Value = Named;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Named, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == COLLECTION_PROPERTY {
                        found = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Named(found))
            }
        }
        deserializer.deserialize_map(Top)
    }
}

/// The collection an item is kept in: the one its document names, or its kind's default
/// (`None` for kinds no collection holds). A document whose property is not an id counts as
/// naming none (staging refuses such documents from devices).
pub fn kept_in(user: UserId, kind: Kind, document: Option<&Document>) -> Option<ItemId> {
    let holds = Holds::of(kind)?;
    let named = document.and_then(|d| named_collection(d).ok().flatten());
    Some(named.unwrap_or_else(|| holds.default_id(user)))
}

/// Checks a collection item's document: `holds` must say what it holds.
pub(crate) fn check_collection(document: &Document) -> Result<(), String> {
    match holds_of(document) {
        Some(_) => Ok(()),
        None => Err(format!(
            "a collection's document needs \"holds\": one of {}",
            Holds::ALL.map(Holds::as_str).join(", ")
        )),
    }
}

/// `document` with `current`'s [`COLLECTION_PROPERTY`] carried over when `document` leaves the
/// property out (not when it names `null`: that moves the item to the default collection).
/// `None` when nothing is to be carried.
pub(crate) fn carry_collection(document: &Document, current: &Document) -> Option<Document> {
    if !current.as_str().contains(COLLECTION_PROPERTY) {
        return None;
    }
    let named = current.to_object().ok()?.get(COLLECTION_PROPERTY)?.clone();
    if named.is_null() {
        return None;
    }
    let mut object = document.to_object().ok()?;
    if object.contains_key(COLLECTION_PROPERTY) {
        return None;
    }
    object.insert(COLLECTION_PROPERTY.into(), named);
    Some(Document::from_object(&object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Document {
        Document::from_value(&v)
    }

    #[test]
    fn holds_spellings_and_kinds() {
        for h in Holds::ALL {
            assert_eq!(Holds::parse(h.as_str()), Some(h));
        }
        assert_eq!(Holds::parse("Contacts"), None);
        assert!(Holds::Contacts.holds(Kind::Contact));
        assert!(Holds::Calendar.holds(Kind::Task));
        assert!(Holds::Calendar.holds(Kind::Note));
        assert!(!Holds::Calendar.holds(Kind::Contact));
        assert_eq!(Holds::of(Kind::Collection), None);
        assert_eq!(Holds::of(Kind::Device), None);
        let u = UserId(uuid::Uuid::from_u128(1));
        assert_ne!(Holds::Contacts.default_id(u), Holds::Calendar.default_id(u));
        assert_ne!(
            Holds::Contacts.default_id(u),
            Holds::Contacts.default_id(UserId(uuid::Uuid::from_u128(2)))
        );
    }

    #[test]
    fn a_collection_document_says_what_it_holds() {
        assert_eq!(
            holds_of(&doc(json!({"holds": "calendar", "name": "Work"}))),
            Some(Holds::Calendar)
        );
        assert!(check_collection(&doc(json!({"name": "Work"}))).is_err());
        assert!(check_collection(&doc(json!({"holds": "notes"}))).is_err());
        assert!(check_collection(&doc(json!({"holds": 1}))).is_err());
    }

    #[test]
    fn the_named_collection_is_an_id_or_none() {
        let id = ItemId(uuid::Uuid::from_u128(9));
        assert_eq!(named_collection(&doc(json!({"a": 1}))), Ok(None));
        assert_eq!(
            named_collection(&doc(json!({COLLECTION_PROPERTY: null}))),
            Ok(None)
        );
        assert_eq!(
            named_collection(&doc(json!({COLLECTION_PROPERTY: id.to_string()}))),
            Ok(Some(id))
        );
        assert!(named_collection(&doc(json!({COLLECTION_PROPERTY: "work"}))).is_err());
        // Only the top level names it.
        assert_eq!(
            named_collection(&doc(json!({"x": {COLLECTION_PROPERTY: id.to_string()}}))),
            Ok(None)
        );
        assert_eq!(
            named_collection(&Document::from_stored(format!(
                "{{ \"a\" : [1, {{\"b\": 2}}], \"keepsake.app:collection\" : \"{id}\" }}"
            ))),
            Ok(Some(id))
        );
        assert!(named_collection(&doc(json!({COLLECTION_PROPERTY: 3}))).is_err());
    }

    #[test]
    fn a_put_that_leaves_the_collection_out_keeps_it() {
        let id = ItemId(uuid::Uuid::from_u128(9)).to_string();
        let current = doc(json!({"a": 1, COLLECTION_PROPERTY: id}));
        let carried = carry_collection(&doc(json!({"a": 2})), &current);
        assert_eq!(
            carried.map(|d| d.to_object().ok()),
            Some(Some(
                json!({"a": 2, COLLECTION_PROPERTY: id})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            ))
        );
        // Naming one, or null, is a move: nothing is carried.
        assert_eq!(
            carry_collection(&doc(json!({"a": 2, COLLECTION_PROPERTY: null})), &current),
            None
        );
        // Nothing to carry.
        assert_eq!(
            carry_collection(&doc(json!({"a": 2})), &doc(json!({}))),
            None
        );
    }
}
