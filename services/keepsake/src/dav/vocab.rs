//! What the DAV names mean in the model, shared by the modules that read and write items and
//! collections (a leaf: it imports none of them):
//! - a collection's properties and the document fields they are kept in ([`FIELDS`]);
//! - the iCalendar components a calendar takes ([`components`]) and an item kind's component
//!   ([`component_of`]);
//! - the change id a DAV write derives from its request ([`change_id`]): DAV clients send none.

use keepsake_model::{ChangeId, Document, Holds, ItemId, Kind, UserId};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::xml::{APPLE_ICAL, CALDAV, CARDDAV, DAV};

/// The properties a collection keeps: namespace, name, the document field it is kept in,
/// and the sort of collection it belongs to (`None`: both).
pub(crate) const FIELDS: &[(&str, &str, &str, Option<Holds>)] = &[
    (DAV, "displayname", "name", None),
    (
        CALDAV,
        "calendar-description",
        "description",
        Some(Holds::Calendar),
    ),
    (
        CARDDAV,
        "addressbook-description",
        "description",
        Some(Holds::Contacts),
    ),
    (APPLE_ICAL, "calendar-color", "color", Some(Holds::Calendar)),
    (
        APPLE_ICAL,
        "calendar-order",
        "sortOrder",
        Some(Holds::Calendar),
    ),
    (
        CALDAV,
        "calendar-timezone",
        "icalTimezone",
        Some(Holds::Calendar),
    ),
];

/// The components a calendar takes when it is made without saying.
pub(crate) const COMPONENTS: [&str; 3] = ["VEVENT", "VTODO", "VJOURNAL"];

/// The document field a property of a collection of `holds` is kept in.
pub(crate) fn field(ns: &str, name: &str, holds: Holds) -> Option<&'static str> {
    FIELDS
        .iter()
        .find(|(n, m, _, h)| *n == ns && *m == name && h.is_none_or(|h| h == holds))
        .map(|(_, _, f, _)| *f)
}

/// The components a calendar's document takes.
pub(crate) fn components(document: Option<&Document>) -> Vec<String> {
    let listed: Option<Vec<String>> = document
        .and_then(|d| d.to_object().ok())
        .and_then(|o| o.get("components").cloned())
        .and_then(|v| serde_json::from_value(v).ok());
    listed.unwrap_or_else(|| COMPONENTS.iter().map(|c| c.to_string()).collect())
}

/// The component an item of `kind` is in its iCalendar text.
pub(crate) fn component_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Task => "VTODO",
        Kind::Note => "VJOURNAL",
        _ => "VEVENT",
    }
}

/// The change id a DAV write derives from its request (module docs): the same request made
/// against the same version is the same change:
/// `UUIDv5(user, "keepsake-dav/v1/<op>/<item>/<version seen>/<sha256 of the body>")`.
pub(crate) fn change_id(
    user: UserId,
    item: ItemId,
    op: &str,
    seen: Option<u64>,
    body: &[u8],
) -> ChangeId {
    let digest: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let seen = seen.map_or_else(|| "-".to_string(), |v| v.to_string());
    let name = format!("keepsake-dav/v1/{op}/{item}/{seen}/{digest}");
    ChangeId(Uuid::new_v5(&user.0, name.as_bytes()))
}
