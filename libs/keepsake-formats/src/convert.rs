//! One entry -> `(Kind, document)`, and one document -> vCard / iCalendar text.
//!
//! calcard does the conversions: vCard <-> JSContact (its reading of RFC 9553 and the
//! vCard <-> JSContact mapping of RFC 9555), iCalendar <-> JSCalendar (RFC 8984 with the
//! mapping drafts' `iCalendar` property for what has no JSCalendar field). This module owns
//! what calcard leaves to its caller:
//!
//! - **One item per entry.** calcard turns a VCALENDAR into a JSCalendar `Group`; the item is
//!   its one entry (an event's exceptions are that entry's `recurrenceOverrides`); the rest of
//!   the group (calendar properties, VTIMEZONEs) goes under [`CALENDAR_PROPERTY`] and is put
//!   back around the item on export.
//! - **Notes.** calcard does not convert VJOURNAL. A VJOURNAL is converted as the VEVENT with
//!   the same properties would be (both have SUMMARY, DESCRIPTION, DTSTART, CATEGORIES, RRULE,
//!   ...), and the result's `@type` is `Note`; on export the note is written as an event and
//!   its VEVENTs renamed VJOURNAL. So a note's `title` is its SUMMARY and its `description`
//!   the plain-text body (DESCRIPTION).
//! - **The original text** ([`crate::original`]): attached on import, given back by export while
//!   the document is unchanged.
//!
//! - **Daylight-saving changes.** A local time that is ambiguous or nonexistent in its zone is
//!   carried through calcard (which would drop it) by [`crate::zones`].
//!
//! Invariants: no input panics (calcard is called behind [`guard`], which turns a panic into
//! [`ConvertError::ConverterPanicked`]); a document's `@type` is always the kind's
//! (`Kind::json_type`), as staging requires.

use std::panic::{AssertUnwindSafe, catch_unwind};

use calcard::icalendar::{ICalendar, ICalendarComponentType};
use calcard::jscalendar::JSCalendar;
use calcard::jscontact::JSContact;
use calcard::vcard::VCard;
use keepsake_model::Kind;
use serde_json::{Map, Value};

use crate::error::ConvertError;
use crate::original::{
    CALENDAR_PROPERTY, ORIGINAL_PROPERTY, RESOURCE_PROPERTY, attach, unchanged_original,
};
use crate::zones::{self, StandIns};
use crate::{Entry, Format};

/// The item an entry becomes: its kind and its JSON document (a JSON object), with the
/// original text attached under [`ORIGINAL_PROPERTY`].
pub fn to_document(entry: &Entry<'_>) -> Result<(Kind, Value), ConvertError> {
    let mut document = match entry.format {
        Format::VCard => contact_document(&entry.text)?,
        Format::ICalendar => calendar_document(&entry.text, entry.kind)?,
    };
    attach(&mut document, entry.format, &entry.text);
    Ok((entry.kind, Value::Object(document)))
}

/// The text of one item: the original text while the document is unchanged since import
/// (see [`crate::original`]), else the document converted. A contact is written in the vCard
/// version its document records (the one it was imported from), else 4.0; a calendar item
/// as one VCALENDAR.
pub fn export(kind: Kind, document: &Value, format: Format) -> Result<String, ConvertError> {
    if Format::of_kind(kind) != Some(format) {
        return Err(ConvertError::WrongFormat { kind, format });
    }
    let Some(object) = document.as_object() else {
        return Err(ConvertError::Document {
            kind,
            reason: "not a JSON object".into(),
        });
    };
    if let Some(text) = unchanged_original(object, format) {
        return Ok(text.to_string());
    }
    let mut document = object.clone();
    document.remove(ORIGINAL_PROPERTY);
    document.remove(RESOURCE_PROPERTY);
    document.remove(keepsake_model::COLLECTION_PROPERTY);
    match kind {
        Kind::Contact => export_contact(document),
        _ => export_calendar(kind, document),
    }
}

/// Runs calcard, turning a panic into an error.
pub(crate) fn guard<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, ConvertError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| ConvertError::ConverterPanicked(what))
}

/// Parses iCalendar text behind [`guard`]: a panic or a parse error is `Err(())`.
pub(crate) fn guarded_parse(text: &str) -> Result<ICalendar, ()> {
    match guard("iCalendar", || ICalendar::parse(text)) {
        Ok(Ok(ical)) => Ok(ical),
        _ => Err(()),
    }
}

fn parse_reason(entry: &calcard::Entry) -> String {
    match entry {
        calcard::Entry::VCard(_) => "a vCard where an iCalendar object was expected".into(),
        calcard::Entry::ICalendar(_) => "an iCalendar object where a vCard was expected".into(),
        calcard::Entry::InvalidLine(_) => "a line that is not a property".into(),
        calcard::Entry::UnexpectedComponentEnd { expected, found } => {
            format!(
                "END:{} where END:{} was expected",
                found.as_str(),
                expected.as_str()
            )
        }
        calcard::Entry::UnterminatedComponent(name) => format!("{name} is not terminated"),
        calcard::Entry::TooManyComponents => "too many components".into(),
        calcard::Entry::Eof => "no content".into(),
        _ => "unreadable".into(),
    }
}

fn to_object(
    value: Result<Value, serde_json::Error>,
    kind: Kind,
) -> Result<Map<String, Value>, ConvertError> {
    match value {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ConvertError::Document {
            kind,
            reason: "the conversion gave no JSON object".into(),
        }),
        Err(e) => Err(ConvertError::Document {
            kind,
            reason: e.to_string(),
        }),
    }
}

fn contact_document(text: &str) -> Result<Map<String, Value>, ConvertError> {
    let vcard = guard("vCard", || VCard::parse(text))?.map_err(|e| ConvertError::Parse {
        format: "vCard",
        reason: parse_reason(&e),
    })?;
    let value = guard("vCard", || {
        let card: JSContact<'static, String, String> = vcard.into_jscontact();
        serde_json::to_value(&card.0)
    })?;
    let mut document = to_object(value, Kind::Contact)?;
    document.insert("@type".into(), Value::from(Kind::Contact.json_type()));
    Ok(document)
}

fn calendar_document(text: &str, kind: Kind) -> Result<Map<String, Value>, ConvertError> {
    let mut ical =
        guard("iCalendar", || ICalendar::parse(text))?.map_err(|e| ConvertError::Parse {
            format: "iCalendar",
            reason: parse_reason(&e),
        })?;
    if kind == Kind::Note {
        rename(
            &mut ical,
            &ICalendarComponentType::VJournal,
            ICalendarComponentType::VEvent,
        );
    }
    let stand_ins = StandIns::for_icalendar(&mut ical);
    let value = guard("iCalendar", || {
        let calendar: JSCalendar<'static, String, String> = ical.into_jscalendar();
        serde_json::to_value(&calendar.0)
    })?
    .map(|mut value| {
        stand_ins.restore_document(&mut value);
        value
    });
    let mut group = to_object(value, kind)?;
    let items = match group.remove("entries") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let expected = match kind {
        Kind::Task => "Task",
        _ => "Event",
    };
    let found = items.len();
    let mut items = items.into_iter();
    let (Some(Value::Object(mut item)), None) = (items.next(), items.next()) else {
        return Err(ConvertError::NotOneItem { found });
    };
    if item.get("@type").and_then(Value::as_str) != Some(expected) {
        return Err(ConvertError::NotOneItem { found: 0 });
    }
    item.insert("@type".into(), Value::from(kind.json_type()));
    group.remove("@type");
    if !group.is_empty() {
        item.insert(CALENDAR_PROPERTY.into(), Value::Object(group));
    }
    Ok(item)
}

fn rename(ical: &mut ICalendar, from: &ICalendarComponentType, to: ICalendarComponentType) {
    for component in &mut ical.components {
        if component.component_type == *from {
            component.component_type = to.clone();
        }
    }
}

fn export_contact(mut document: Map<String, Value>) -> Result<String, ConvertError> {
    let kind = Kind::Contact;
    document.insert("@type".into(), Value::from(kind.json_type()));
    document
        .entry("version")
        .or_insert_with(|| Value::from("1.0"));
    let json = Value::Object(document).to_string();
    let card = JSContact::<String, String>::parse(&json)
        .map_err(|reason| ConvertError::Document { kind, reason })?;
    let vcard = guard("contact", || card.into_vcard())?.ok_or(ConvertError::Document {
        kind,
        reason: "calcard wrote no vCard".into(),
    })?;
    guard("contact", || vcard.to_string())
}

fn export_calendar(kind: Kind, mut document: Map<String, Value>) -> Result<String, ConvertError> {
    let mut group = match document.remove(CALENDAR_PROPERTY) {
        Some(Value::Object(group)) => group,
        _ => Map::new(),
    };
    let json_type = match kind {
        Kind::Task => "Task",
        _ => "Event",
    };
    document.insert("@type".into(), Value::from(json_type));
    let item = document.clone();
    let stand_ins = StandIns::for_document(&mut document);
    group.insert("@type".into(), Value::from("Group"));
    group.insert(
        "entries".into(),
        Value::Array(vec![Value::Object(document)]),
    );
    let json = Value::Object(group).to_string();
    let calendar = JSCalendar::<String, String>::parse(&json)
        .map_err(|reason| ConvertError::Document { kind, reason })?;
    let mut ical =
        guard("calendar item", || calendar.into_icalendar())?.ok_or(ConvertError::Document {
            kind,
            reason: "calcard wrote no iCalendar".into(),
        })?;
    stand_ins.restore_icalendar(&mut ical);
    if let Some(reason) = zones::dropped(&item, &ical) {
        return Err(ConvertError::Document { kind, reason });
    }
    if kind == Kind::Note {
        rename(
            &mut ical,
            &ICalendarComponentType::VEvent,
            ICalendarComponentType::VJournal,
        );
    }
    guard("calendar item", || ical.to_string())
}
