//! Local times that a daylight-saving change makes ambiguous (the repeated hour in autumn) or
//! nonexistent (the skipped hour in spring).
//!
//! calcard 0.3.14 resolves every local date-time against its zone with `single()` and drops
//! what does not resolve. Left alone, an event at 01:30 on the night the clocks go back lost
//! its DTSTART on export (its `start` gone from every CalDAV client), lost its `start` on
//! import, and an exception at that time was dropped on export or refused on import.
//! RFC 5545 3.3.5 gives these times a meaning: a repeated time is its first occurrence, a
//! skipped time is read with the offset in force before the gap. So they are kept.
//!
//! The way round calcard: a zone without changes (a fixed offset, one of [`STAND_INS`]) stands
//! in for the real zone while calcard converts, so every local time resolves and is carried
//! over unchanged; then the stand-in's name is given back the real zone's name. The values
//! calcard computes through the zone's offset are recomputed with the real zone: RRULE's
//! UNTIL (UTC in iCalendar, local in JSCalendar) both ways, and on import an end given as
//! DTEND, which is turned into the DURATION between the two real instants first.
//!
//! Invariants: only an item holding such a time takes this path (every other item converts
//! exactly as calcard converts it); a stand-in name is used only when it appears nowhere in
//! the item, so every occurrence of it after the conversion is ours to rename; an export
//! where calcard still dropped the start or the due time fails ([`dropped`]) rather than
//! serving an item without it.

use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarDuration, ICalendarEntry,
    ICalendarParameter, ICalendarParameterName, ICalendarParameterValue, ICalendarProperty,
    ICalendarValue,
};
use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use serde_json::{Map, Value};

/// Fixed-offset zones that stand in for a real one, with their offsets in hours. The first
/// that appears nowhere in the item is used; one per real zone that needs one.
const STAND_INS: [(&str, i64); 4] = [
    ("Etc/GMT-14", 14),
    ("Etc/GMT-13", 13),
    ("Etc/GMT+12", -12),
    ("Etc/GMT-12", 12),
];

/// The JSCalendar properties that name the zone of the item's local times (`endTimeZone` is
/// left out on purpose: see [`StandIns::for_document`]).
const ZONE_PROPERTIES: [&str; 2] = ["timeZone", "recurrenceIdTimeZone"];

const LOCAL_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// One real zone and the fixed-offset zone standing in for it.
#[derive(Debug)]
struct StandIn {
    real: String,
    zone: chrono_tz::Tz,
    name: &'static str,
    offset_seconds: i64,
}

/// The stand-ins one item's conversion uses (empty for nearly every item).
#[derive(Debug, Default)]
pub(crate) struct StandIns(Vec<StandIn>);

/// The instant a local time names in `zone`, as RFC 5545 3.3.5 reads it: the first of a
/// repeated time; a skipped time with the offset in force a day before (no zone changes its
/// offset twice in a day).
fn instant(zone: chrono_tz::Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.to_utc()),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).to_utc()),
        LocalResult::None => {
            let before = zone
                .from_local_datetime(&local.checked_sub_signed(TimeDelta::days(1))?)
                .earliest()?;
            let offset = i64::from(before.offset().fix().local_minus_utc());
            Some(
                local
                    .checked_sub_signed(TimeDelta::seconds(offset))?
                    .and_utc(),
            )
        }
    }
}

/// True when `local` does not name exactly one instant in `zone`.
fn unresolved(zone: chrono_tz::Tz, local: NaiveDateTime) -> bool {
    zone.from_local_datetime(&local).single().is_none()
}

fn parse_zone(name: &str) -> Option<chrono_tz::Tz> {
    name.parse().ok()
}

impl StandIns {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Picks a stand-in for `real` that is not `taken` and not used by another stand-in.
    fn add(&mut self, real: &str, zone: chrono_tz::Tz, taken: impl Fn(&str) -> bool) -> bool {
        if self.0.iter().any(|s| s.real == real) {
            return true;
        }
        let free = STAND_INS
            .iter()
            .find(|(name, _)| !taken(name) && !self.0.iter().any(|s| s.name == *name));
        let Some((name, hours)) = free else {
            return false;
        };
        self.0.push(StandIn {
            real: real.to_string(),
            zone,
            name,
            offset_seconds: hours * 3600,
        });
        true
    }

    fn by_real(&self, real: &str) -> Option<&StandIn> {
        self.0.iter().find(|s| s.real == real)
    }

    fn by_name(&self, name: &str) -> Option<&StandIn> {
        self.0.iter().find(|s| s.name == name)
    }

    // ---- export: JSCalendar document -> iCalendar ----

    /// Before export: when the item's `timeZone` (or `recurrenceIdTimeZone`) makes one of its
    /// local date-times ambiguous or nonexistent, that zone's name is replaced by a stand-in's
    /// in `item`. An item with an `endTimeZone` is left as it is: calcard computes its DTEND
    /// through the start's instant, which a stand-in would shift ([`dropped`] then refuses
    /// the export if the start was lost).
    pub(crate) fn for_document(item: &mut Map<String, Value>) -> StandIns {
        let mut stand_ins = StandIns::default();
        if item.contains_key("endTimeZone") {
            return stand_ins;
        }
        let mut locals = Vec::new();
        local_times(&Value::Object(item.clone()), &mut locals);
        for key in ZONE_PROPERTIES {
            let Some(real) = item.get(key).and_then(Value::as_str) else {
                continue;
            };
            let Some(zone) = parse_zone(real) else {
                continue;
            };
            if locals.iter().any(|local| unresolved(zone, *local)) {
                let real = real.to_string();
                stand_ins.add(&real, zone, |name| mentions(item, name));
            }
        }
        if stand_ins.is_empty() {
            return stand_ins;
        }
        // calcard keeps the TZID of a date-time it converted (a DUE in the start's zone, an
        // EXDATE) among the item's converted properties and writes the value through it from
        // the instant it resolved in the item's zone: those TZIDs must name the stand-in too,
        // and one naming any other zone would be written from a shifted instant.
        let mut kept = Vec::new();
        kept_tzids(&Value::Object(item.clone()), &mut kept);
        if kept.iter().any(|z| stand_ins.by_real(z).is_none()) {
            return StandIns::default();
        }
        for key in ZONE_PROPERTIES {
            let stand_in = item
                .get(key)
                .and_then(Value::as_str)
                .and_then(|real| stand_ins.by_real(real));
            if let Some(stand_in) = stand_in {
                item.insert(key.into(), Value::from(stand_in.name));
            }
        }
        for value in item.values_mut() {
            stand_ins.rename_tzids(value);
        }
        stand_ins
    }

    /// Renames every `tzid` naming a real zone to its stand-in, anywhere in `value`.
    fn rename_tzids(&self, value: &mut Value) {
        match value {
            Value::Array(values) => values.iter_mut().for_each(|v| self.rename_tzids(v)),
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if key.eq_ignore_ascii_case("tzid")
                        && let Some(stand_in) = v.as_str().and_then(|z| self.by_real(z))
                    {
                        *v = Value::from(stand_in.name);
                    } else {
                        self.rename_tzids(v);
                    }
                }
            }
            _ => {}
        }
    }

    /// After export: TZID parameters naming a stand-in name the real zone again, and an UNTIL
    /// calcard computed through a stand-in's offset is recomputed through the real zone.
    pub(crate) fn restore_icalendar(&self, ical: &mut ICalendar) {
        if self.is_empty() {
            return;
        }
        for component in &mut ical.components {
            let zone = component_zone(component).and_then(|name| self.by_name(&name));
            for entry in &mut component.entries {
                for param in &mut entry.params {
                    if param.name != ICalendarParameterName::Tzid {
                        continue;
                    }
                    let real = match &param.value {
                        ICalendarParameterValue::Text(name) => self.by_name(name),
                        _ => None,
                    };
                    if let Some(stand_in) = real {
                        param.value = ICalendarParameterValue::Text(stand_in.real.clone());
                    }
                }
                if let Some(stand_in) = zone {
                    fix_until(entry, |until| {
                        // calcard wrote UTC = local - stand-in offset.
                        let local = until
                            .checked_add_signed(TimeDelta::seconds(stand_in.offset_seconds))?;
                        instant(stand_in.zone, local).map(|t| t.naive_utc())
                    });
                }
            }
        }
    }

    // ---- import: iCalendar -> JSCalendar document ----

    /// Before import: for each zone (a TZID naming an IANA zone) in which a date-time of the
    /// calendar's items is ambiguous or nonexistent, its TZID parameters are renamed to a
    /// stand-in's; an UNTIL in UTC is moved so calcard's conversion through the stand-in gives
    /// the real local time; an item's DTEND becomes the DURATION between the real instants.
    /// When an end cannot be turned into a duration, nothing is changed (calcard's own
    /// reading then keeps the property as an unconverted iCalendar property).
    pub(crate) fn for_icalendar(ical: &mut ICalendar) -> StandIns {
        let mut stand_ins = StandIns::default();
        let mut names = Vec::new();
        for component in items(ical) {
            for entry in &component.entries {
                let Some(real) = entry_tzid(entry) else {
                    continue;
                };
                let Some(zone) = parse_zone(real) else {
                    continue;
                };
                let needs = entry.values.iter().any(|value| {
                    floating_local(value).is_some_and(|local| unresolved(zone, local))
                });
                if needs && !names.iter().any(|(n, _)| n == real) {
                    names.push((real.to_string(), zone));
                }
            }
        }
        for (real, zone) in names {
            if !stand_ins.add(&real, zone, |name| icalendar_mentions(ical, name)) {
                return StandIns::default();
            }
        }
        if stand_ins.is_empty() {
            return stand_ins;
        }
        // calcard converts an item's other date-times through its start's zone: a component
        // that uses a stood-in zone must start in it (or not start at all: an exception with
        // only a RECURRENCE-ID), or the stand-in would shift them.
        for component in items(ical) {
            let uses = component
                .entries
                .iter()
                .any(|e| entry_tzid(e).is_some_and(|n| stand_ins.by_real(n).is_some()));
            let has_start = component
                .entries
                .iter()
                .any(|e| e.name == ICalendarProperty::Dtstart);
            let starts_in =
                component_zone(component).is_some_and(|name| stand_ins.by_real(&name).is_some());
            if uses && has_start && !starts_in {
                return StandIns::default();
            }
        }
        let mut durations = Vec::new();
        for (index, component) in ical.components.iter().enumerate() {
            if !is_item(component) {
                continue;
            }
            let touched = component.entries.iter().any(|entry| {
                entry_tzid(entry).is_some_and(|name| stand_ins.by_real(name).is_some())
            });
            let end = component
                .entries
                .iter()
                .position(|e| e.name == ICalendarProperty::Dtend);
            let (true, Some(end)) = (touched, end) else {
                continue;
            };
            let start = component
                .entries
                .iter()
                .find(|e| e.name == ICalendarProperty::Dtstart)
                .and_then(entry_instant);
            let finish = component.entries.get(end).and_then(entry_instant);
            match (start, finish) {
                (Some(start), Some(finish)) if finish >= start => {
                    durations.push((index, end, finish - start));
                }
                _ => return StandIns::default(),
            }
        }
        // A DUE, RECURRENCE-ID, EXDATE or RDATE given in UTC or in another zone is read by
        // calcard into the start's zone (the stand-in's +14): it is written in the real zone's
        // local time first, the same instant.
        for component in &mut ical.components {
            if !is_item(component) {
                continue;
            }
            let Some(stand_in) = component_zone(component).and_then(|n| stand_ins.by_real(&n))
            else {
                continue;
            };
            for entry in &mut component.entries {
                if RETIMED.contains(&entry.name) {
                    retime(entry, stand_in);
                }
            }
        }
        for (index, end, length) in durations {
            if let Some(entry) = ical
                .components
                .get_mut(index)
                .and_then(|c| c.entries.get_mut(end))
            {
                *entry = duration_entry(length);
            }
        }
        for component in &mut ical.components {
            if !is_item(component) {
                continue;
            }
            let zone = component_zone(component).and_then(|name| stand_ins.by_real(&name));
            for entry in &mut component.entries {
                for param in &mut entry.params {
                    if param.name != ICalendarParameterName::Tzid {
                        continue;
                    }
                    let stand_in = match &param.value {
                        ICalendarParameterValue::Text(name) => stand_ins.by_real(name),
                        _ => None,
                    };
                    if let Some(stand_in) = stand_in {
                        param.value = ICalendarParameterValue::Text(stand_in.name.to_string());
                    }
                }
                if let Some(stand_in) = zone {
                    fix_until(entry, |until| {
                        // calcard will read local = UTC + stand-in offset; it must read the
                        // real local time of this instant.
                        let local = stand_in
                            .zone
                            .from_utc_datetime(&until)
                            .naive_local()
                            .checked_sub_signed(TimeDelta::seconds(stand_in.offset_seconds))?;
                        Some(local)
                    });
                }
            }
        }
        stand_ins
    }

    /// After import: every string naming a stand-in names the real zone again.
    pub(crate) fn restore_document(&self, document: &mut Value) {
        if self.is_empty() {
            return;
        }
        match document {
            Value::String(text) => {
                if let Some(stand_in) = self.by_name(text) {
                    *text = stand_in.real.clone();
                }
            }
            Value::Array(values) => values.iter_mut().for_each(|v| self.restore_document(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.restore_document(v)),
            _ => {}
        }
    }
}

/// The properties whose values calcard converts through the start's zone on import.
const RETIMED: [ICalendarProperty; 4] = [
    ICalendarProperty::Due,
    ICalendarProperty::RecurrenceId,
    ICalendarProperty::Exdate,
    ICalendarProperty::Rdate,
];

/// Writes an entry's date-times that are in UTC, at an offset, or in another IANA zone as the
/// same instants in `stand_in`'s real zone, with that zone's TZID. Floating times and dates are
/// left alone (calcard reads them in the start's zone, which they already are).
fn retime(entry: &mut ICalendarEntry, stand_in: &StandIn) {
    if entry_tzid(entry) == Some(stand_in.real.as_str()) {
        return;
    }
    let from_zone = entry_tzid(entry).and_then(parse_zone);
    let mut changed = false;
    for value in &mut entry.values {
        let ICalendarValue::PartialDateTime(dt) = value else {
            continue;
        };
        if dt.hour.is_none() {
            continue;
        }
        let Some(result) = dt.to_date_time() else {
            continue;
        };
        let at = match (result.offset, from_zone) {
            (Some(offset), _) => result
                .date_time
                .checked_sub_signed(TimeDelta::seconds(offset.local_minus_utc().into()))
                .map(|t| t.and_utc()),
            (None, Some(zone)) => instant(zone, result.date_time),
            (None, None) => None,
        };
        let Some(at) = at else { continue };
        let local = stand_in
            .zone
            .from_utc_datetime(&at.naive_utc())
            .naive_local();
        **dt = PartialDateTime::from_naive_timestamp(local.and_utc().timestamp());
        changed = true;
    }
    if changed {
        entry
            .params
            .retain(|p| p.name != ICalendarParameterName::Tzid);
        entry
            .params
            .push(ICalendarParameter::tzid(stand_in.real.clone()));
    }
}

/// Every string under a `tzid` key in a JSCalendar value (calcard's converted properties).
fn kept_tzids(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Array(values) => values.iter().for_each(|v| kept_tzids(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                match v.as_str() {
                    Some(zone) if key.eq_ignore_ascii_case("tzid") => out.push(zone.to_string()),
                    _ => kept_tzids(v, out),
                }
            }
        }
        _ => {}
    }
}

/// Why an export must fail rather than serve the item: the item has a `start` (or a task's
/// `due`) and the iCalendar calcard wrote has no DTSTART (DUE) for it. `None` when nothing
/// was dropped.
pub(crate) fn dropped(item: &Map<String, Value>, ical: &ICalendar) -> Option<String> {
    let main = items(ical).find(|c| {
        !c.entries
            .iter()
            .any(|e| e.name == ICalendarProperty::RecurrenceId)
    })?;
    let has = |property: ICalendarProperty| main.entries.iter().any(|e| e.name == property);
    let zone = item
        .get("timeZone")
        .and_then(Value::as_str)
        .unwrap_or("no time zone");
    if item.get("start").is_some_and(Value::is_string) && !has(ICalendarProperty::Dtstart) {
        return Some(format!(
            "its start cannot be written in iCalendar in {zone} (calcard dropped it: a \
             daylight-saving change makes it ambiguous or nonexistent, or it is not a date-time)"
        ));
    }
    let is_task = main.component_type == ICalendarComponentType::VTodo;
    if is_task && item.get("due").is_some_and(Value::is_string) && !has(ICalendarProperty::Due) {
        return Some(format!(
            "its due time cannot be written in iCalendar in {zone} (calcard dropped it: a \
             daylight-saving change makes it ambiguous or nonexistent, or it is not a date-time)"
        ));
    }
    None
}

/// Every local date-time (`YYYY-MM-DDTHH:MM:SS`, no offset) in a JSCalendar value, in strings
/// and in object keys (recurrenceOverrides are keyed by one).
fn local_times(value: &Value, out: &mut Vec<NaiveDateTime>) {
    fn local(text: &str) -> Option<NaiveDateTime> {
        if text.len() != 19 {
            return None;
        }
        NaiveDateTime::parse_from_str(text, LOCAL_FORMAT).ok()
    }
    match value {
        Value::String(text) => out.extend(local(text)),
        Value::Array(values) => values.iter().for_each(|v| local_times(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                out.extend(local(key));
                local_times(v, out);
            }
        }
        _ => {}
    }
}

/// True when `name` appears as any string or key anywhere in the item.
fn mentions(item: &Map<String, Value>, name: &str) -> bool {
    fn walk(value: &Value, name: &str) -> bool {
        match value {
            Value::String(text) => text == name,
            Value::Array(values) => values.iter().any(|v| walk(v, name)),
            Value::Object(map) => map.iter().any(|(k, v)| k == name || walk(v, name)),
            _ => false,
        }
    }
    item.iter().any(|(k, v)| k == name || walk(v, name))
}

/// True when `name` appears in a parameter or a text value anywhere in the calendar (as a
/// part of it too: calcard keeps JSCalendar values it has no property for as JSON text, e.g.
/// `JSPROP;JSPTR=locations/l/timeZone:"Etc/GMT-14"`).
fn icalendar_mentions(ical: &ICalendar, name: &str) -> bool {
    ical.components.iter().any(|component| {
        component.entries.iter().any(|entry| {
            entry
                .params
                .iter()
                .any(|p| matches!(&p.value, ICalendarParameterValue::Text(t) if t.contains(name)))
                || entry
                    .values
                    .iter()
                    .any(|v| matches!(v, ICalendarValue::Text(t) if t.contains(name)))
        })
    })
}

fn is_item(component: &ICalendarComponent) -> bool {
    matches!(
        component.component_type,
        ICalendarComponentType::VEvent
            | ICalendarComponentType::VTodo
            | ICalendarComponentType::VJournal
    )
}

fn items(ical: &ICalendar) -> impl Iterator<Item = &ICalendarComponent> {
    ical.components.iter().filter(|c| is_item(c))
}

fn entry_tzid(entry: &ICalendarEntry) -> Option<&str> {
    entry.params.iter().find_map(|p| match (&p.name, &p.value) {
        (ICalendarParameterName::Tzid, ICalendarParameterValue::Text(name)) => Some(name.as_str()),
        _ => None,
    })
}

/// The zone of a component's DTSTART (the zone its RRULE's UNTIL is converted through).
fn component_zone(component: &ICalendarComponent) -> Option<String> {
    component
        .entries
        .iter()
        .find(|e| e.name == ICalendarProperty::Dtstart)
        .and_then(entry_tzid)
        .map(str::to_string)
}

/// A date-time value without an offset: the local time it holds.
fn floating_local(value: &ICalendarValue) -> Option<NaiveDateTime> {
    let ICalendarValue::PartialDateTime(dt) = value else {
        return None;
    };
    dt.hour?;
    let result = dt.to_date_time()?;
    result.offset.is_none().then_some(result.date_time)
}

/// The instant a DTSTART / DTEND names: UTC or an offset as written, else its TZID's IANA zone
/// read as RFC 5545 does. `None` for a floating time, a date, or an unknown zone.
pub(crate) fn entry_instant(entry: &ICalendarEntry) -> Option<DateTime<Utc>> {
    let ICalendarValue::PartialDateTime(dt) = entry.values.first()? else {
        return None;
    };
    dt.hour?;
    let result = dt.to_date_time()?;
    match result.offset {
        Some(offset) => Some(
            result
                .date_time
                .checked_sub_signed(TimeDelta::seconds(offset.local_minus_utc().into()))?
                .and_utc(),
        ),
        None => instant(parse_zone(entry_tzid(entry)?)?, result.date_time),
    }
}

fn duration_entry(length: TimeDelta) -> ICalendarEntry {
    let total = length.num_seconds().max(0);
    let whole = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    let mut entry = ICalendarEntry::new(ICalendarProperty::Duration);
    entry
        .values
        .push(ICalendarValue::Duration(ICalendarDuration {
            neg: false,
            weeks: 0,
            days: whole(total / 86_400),
            hours: whole(total % 86_400 / 3600),
            minutes: whole(total % 3600 / 60),
            seconds: whole(total % 60),
        }));
    entry
}

/// Rewrites an RRULE's UNTIL given in UTC: `convert` maps the UTC time calcard writes or reads
/// to the UTC time it must be. An UNTIL that is a date or a floating time is left alone.
fn fix_until(entry: &mut ICalendarEntry, convert: impl Fn(NaiveDateTime) -> Option<NaiveDateTime>) {
    if entry.name != ICalendarProperty::Rrule {
        return;
    }
    for value in &mut entry.values {
        let ICalendarValue::RecurrenceRule(rule) = value else {
            continue;
        };
        let Some(until) = &rule.until else {
            continue;
        };
        if until.hour.is_none() {
            continue;
        }
        let Some(result) = until.to_date_time() else {
            continue;
        };
        if result.offset.map(|o| o.local_minus_utc()) != Some(0) {
            continue;
        }
        if let Some(fixed) = convert(result.date_time) {
            rule.until = Some(PartialDateTime::from_utc_timestamp(
                fixed.and_utc().timestamp(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_stand_in_the_item_names_is_not_taken() {
        let mut doc = item(
            json!({"start": "2026-10-25T01:00:00", "timeZone": "Europe/Lisbon",
            "locations": {"l": {"timeZone": "Etc/GMT-14"}}}),
        );
        let stand_ins = StandIns::for_document(&mut doc);
        assert_eq!(doc.get("timeZone"), Some(&json!("Etc/GMT-13")));
        assert_eq!(stand_ins.0.len(), 1);
    }

    #[test]
    fn only_an_item_with_an_unresolved_time_takes_a_stand_in() {
        let mut doc = item(
            json!({"start": "2026-10-25T03:00:00", "timeZone": "Europe/Lisbon",
            "recurrenceOverrides": {"2026-10-26T01:00:00": {}}}),
        );
        assert!(StandIns::for_document(&mut doc).is_empty());
        assert_eq!(doc.get("timeZone"), Some(&json!("Europe/Lisbon")));
        // An override's key counts.
        let mut doc = item(
            json!({"start": "2026-10-24T01:00:00", "timeZone": "Europe/Lisbon",
            "recurrenceOverrides": {"2026-10-25T01:00:00": {}}}),
        );
        assert!(!StandIns::for_document(&mut doc).is_empty());
    }

    #[test]
    fn instants_follow_rfc_5545() {
        let local = |s: &str| NaiveDateTime::parse_from_str(s, LOCAL_FORMAT).ok();
        let utc = |s: &str| local(s).map(|t| t.and_utc());
        let lisbon = chrono_tz::Europe::Lisbon;
        // Repeated: the first occurrence (WEST, +01:00).
        let repeated = local("2026-10-25T01:30:00").and_then(|t| instant(lisbon, t));
        assert_eq!(repeated, utc("2026-10-25T00:30:00"));
        // Skipped: the offset before the gap (WET, +00:00).
        let skipped = local("2026-03-29T01:30:00").and_then(|t| instant(lisbon, t));
        assert_eq!(skipped, utc("2026-03-29T01:30:00"));
        let plain = local("2026-06-01T12:00:00").and_then(|t| instant(lisbon, t));
        assert_eq!(plain, utc("2026-06-01T11:00:00"));
    }
}
