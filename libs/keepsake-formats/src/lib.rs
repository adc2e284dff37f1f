//! vCard and iCalendar at Keepsake's edge: what a client's `.vcf` / `.ics` becomes in the log,
//! and what the log gives back as a `.vcf` / `.ics`.
//!
//! The stored form of every item stays a JSON document (JSContact RFC 9553 for kind `contact`,
//! JSCalendar RFC 8984 for `event` and `task`, a JSCalendar-shaped object for `note`); this
//! crate only converts at the edge, with the `calcard` crate doing the parsing, writing and
//! the RFC 9555 / RFC 9553 conversions. `docs/FORMATS.md` holds the rules and their limits.
//!
//! - [`split`]: a multi-entry text -> entries, lazily, line by line ([`entries`]): each entry
//!   with its 1-based starting line, its UID and its original text; a malformed entry is an
//!   error for that entry alone.
//! - [`convert`]: one entry -> `(Kind, document)` ([`to_document`]); one document -> text
//!   ([`export`]), which gives back the original text while the document is unchanged.
//! - [`original`]: how the original text travels inside the document, and its digest.
//! - [`filters`]: CardDAV/CalDAV query property filters evaluated on an item's text.
//! - [`instances`]: whether a calendar item has an instance in a time range (CalDAV queries).
//! - [`ids`]: the change id and item id of an imported entry (UUIDv5, pure).
//! - `zones`: local times a daylight-saving change makes ambiguous or nonexistent, carried
//!   through calcard (which would drop them) by a fixed-offset stand-in zone.
//! - [`error`]: the errors of all of the above.
//!
//! Invariants: no input makes any function here panic (proptests feed arbitrary text); nothing
//! reads a clock or a random source, so the same input always gives the same output.

pub mod convert;
pub mod error;
pub mod filters;
pub mod ids;
pub mod instances;
pub mod original;
pub mod split;
mod zones;

pub use convert::{export, to_document};
pub use error::{ConvertError, EntryError, EntryErrorReason};
pub use ids::{import_change_id, import_item_id};
pub use original::{CALENDAR_PROPERTY, ORIGINAL_PROPERTY, RESOURCE_PROPERTY, document_digest};
pub use split::{Entries, Entry, Limits, entries, entries_with_limits, utf8_text};

use std::fmt;

/// The two text formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// vCard 2.1, 3.0 or 4.0 (`text/vcard`, `.vcf`); kind `contact`.
    VCard,
    /// iCalendar (`text/calendar`, `.ics`); kinds `event` (VEVENT), `task` (VTODO) and
    /// `note` (VJOURNAL).
    ICalendar,
}

impl Format {
    /// The media type written with this format.
    pub fn media_type(&self) -> &'static str {
        match self {
            Format::VCard => "text/vcard",
            Format::ICalendar => "text/calendar",
        }
    }

    /// The format of a media type (parameters such as `; charset=utf-8` are ignored; the old
    /// `text/x-vcard` and `text/directory` name vCard too); `None` for anything else.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type_essence(media_type).as_str() {
            "text/vcard" | "text/x-vcard" | "text/directory" => Some(Format::VCard),
            "text/calendar" => Some(Format::ICalendar),
            _ => None,
        }
    }

    /// The format a kind is exported in; `None` for `device` and `collection`, which have none.
    pub fn of_kind(kind: keepsake_model::Kind) -> Option<Self> {
        use keepsake_model::Kind;
        match kind {
            Kind::Contact => Some(Format::VCard),
            Kind::Event | Kind::Task | Kind::Note => Some(Format::ICalendar),
            Kind::Collection | Kind::Device => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::VCard => "vcard",
            Format::ICalendar => "icalendar",
        })
    }
}

/// A media type without its parameters, trimmed and lowercase: `Text/VCard; charset=utf-8`
/// is `text/vcard`.
pub fn media_type_essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}
