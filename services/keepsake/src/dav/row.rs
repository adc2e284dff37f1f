//! One item as the DAV side sees it: a snapshot taken from the user's state (the view), with
//! its ETag, its href and the name its client chose; and the text and media type it is
//! served as.

use chrono::{DateTime, Utc};
use keepsake_formats::RESOURCE_PROPERTY;
use keepsake_model::{Document, Holds, ItemId, Kind, UserId};

use super::paths::Collection;

/// One item as the DAV side sees it, taken from the user's state.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub item_id: ItemId,
    pub kind: Kind,
    pub version: u64,
    pub deleted: bool,
    pub changed_at: DateTime<Utc>,
    /// The resource name a client chose, when it is kept.
    pub name: Option<String>,
    pub document: Option<Document>,
}

impl Row {
    pub(crate) fn of(item: &keepsake_model::ItemState) -> Row {
        Row {
            item_id: item.item_id,
            kind: item.kind,
            version: item.version,
            deleted: item.deleted,
            changed_at: item.changed_at,
            name: item.document.as_ref().and_then(resource_name),
            document: item.document.clone(),
        }
    }

    /// The strong ETag: the item's version.
    pub(crate) fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    pub(crate) fn href(&self, user: UserId, c: &Collection) -> String {
        c.href_of(user, self.item_id, self.name.as_deref())
    }
}

/// The `Content-Type` of an item's text.
pub(crate) fn content_type(c: &Collection, kind: Kind) -> &'static str {
    match (c.holds, kind) {
        (Holds::Contacts, _) => "text/vcard; charset=utf-8",
        (Holds::Calendar, Kind::Task) => "text/calendar; charset=utf-8; component=vtodo",
        (Holds::Calendar, Kind::Note) => "text/calendar; charset=utf-8; component=vjournal",
        (Holds::Calendar, _) => "text/calendar; charset=utf-8; component=vevent",
    }
}

/// The item's text in its collection's format; `None` when its document cannot be written.
pub(crate) fn text(c: &Collection, kind: Kind, document: &Document) -> Option<String> {
    crate::api::item_text(kind, document, c.format())
}

/// The resource name a client chose for the item, kept in its document.
pub(crate) fn resource_name(document: &Document) -> Option<String> {
    // Most documents have none: look before parsing.
    if !document.as_str().contains(RESOURCE_PROPERTY) {
        return None;
    }
    let object = document.to_object().ok()?;
    object
        .get(RESOURCE_PROPERTY)?
        .get("name")?
        .as_str()
        .map(str::to_string)
}
