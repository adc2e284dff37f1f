//! Which instances a calendar item has: whether one overlaps a time range (a CalDAV
//! `calendar-query` `time-range`, RFC 4791 9.9), its busy periods in a range (a
//! `free-busy-query`, RFC 4791 7.10), and those in a range written out one by one (a
//! `calendar-data` `expand`, RFC 4791 9.6.5); its recurrences and exceptions expanded by calcard.
//!
//! An instance overlaps `[start, end)` when it begins before `end` and ends after `start` (an
//! instance without length: when it begins in the range). Invariants: an item is said not to
//! overlap only when its expansion shows no instance in the range; one whose times cannot be
//! read, that has no times (a task without DTSTART or DUE matches every range, as RFC 4791
//! says), or whose expansion stops at [`MAX_INSTANCES`] before the range ends is said to
//! overlap (a superset, which clients filter again), so a query never silently drops an item.

use calcard::common::PartialDateTime;
use calcard::common::timezone::Tz;
use calcard::icalendar::dates::TimeOrDelta;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarEntry, ICalendarProperty,
    ICalendarStatus, ICalendarTransparency, ICalendarValue,
};
use chrono::{DateTime, Utc};

/// Most instances of one item expanded.
pub const MAX_INSTANCES: usize = 10_000;

/// Most repeats of one alarm followed (RFC 5545 `REPEAT`), so a query's work per item stays
/// bounded: instances x alarms x this.
pub const MAX_REPEATS: i64 = 100;

/// One instance: where it starts and ends, and the component it comes from.
struct Instance {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    comp_id: u32,
}

/// The instances calcard expanded, in time order, without the rule's instances that an
/// exception replaces (calcard gives both when the exception carries a SEQUENCE).
fn instances(
    ical: &ICalendar,
    expanded: &calcard::icalendar::dates::CalendarExpand,
) -> Vec<Instance> {
    let has_rid = |c: &ICalendarComponent| {
        c.entries
            .iter()
            .find(|e| e.name == ICalendarProperty::RecurrenceId)
            .and_then(crate::zones::entry_instant)
    };
    let replaced: Vec<DateTime<Utc>> = ical.components.iter().filter_map(has_rid).collect();
    let is_exception = |comp_id: u32| {
        usize::try_from(comp_id)
            .ok()
            .and_then(|i| ical.components.get(i))
            .is_some_and(|c| {
                c.entries
                    .iter()
                    .any(|e| e.name == ICalendarProperty::RecurrenceId)
            })
    };
    let mut out: Vec<Instance> = expanded
        .events
        .iter()
        .map(|event| {
            let from = event.start.with_timezone(&Utc);
            let to = match &event.end {
                TimeOrDelta::Time(t) => t.with_timezone(&Utc),
                TimeOrDelta::Delta(d) => from.checked_add_signed(*d).unwrap_or(from),
            };
            Instance {
                from,
                to,
                comp_id: event.comp_id,
            }
        })
        .filter(|i| is_exception(i.comp_id) || !replaced.contains(&i.from))
        .collect();
    out.sort_by_key(|i| i.from);
    out
}

/// Whether the item whose iCalendar text is `text` has an instance in `[start, end)` (either
/// bound open when `None`).
pub fn overlaps(text: &str, start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> bool {
    let Ok(ical) = crate::convert::guarded_parse(text) else {
        return true;
    };
    let Ok(expanded) =
        crate::convert::guard("iCalendar", || ical.expand_dates(Tz::UTC, MAX_INSTANCES))
    else {
        return true;
    };
    if !expanded.errors.is_empty() || expanded.events.is_empty() {
        return true;
    }
    let truncated = expanded.events.len() >= MAX_INSTANCES;
    let mut last_start = None;
    for Instance { from, to, .. } in instances(&ical, &expanded) {
        let begins_before_end = end.is_none_or(|e| from < e);
        let ends_after_start = start.is_none_or(|s| if to > from { to > s } else { from >= s });
        if begins_before_end && ends_after_start {
            return true;
        }
        last_start = last_start.max(Some(from));
    }
    // The expansion stopped early: later instances may fall in the range.
    truncated && end.is_none_or(|e| last_start.is_some_and(|l| l < e))
}

/// The busy periods of an event in `[start, end)` (RFC 4791 7.10): each instance that
/// overlaps the range, cut to it, except those of a component marked `TRANSP:TRANSPARENT` or
/// `STATUS:CANCELLED`, and nothing for a text that is not an event with times.
pub fn busy(
    text: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let Ok(ical) = crate::convert::guarded_parse(text) else {
        return Vec::new();
    };
    let Ok(expanded) =
        crate::convert::guard("iCalendar", || ical.expand_dates(Tz::UTC, MAX_INSTANCES))
    else {
        return Vec::new();
    };
    let free = |comp_id: u32| {
        let Some(component) = usize::try_from(comp_id)
            .ok()
            .and_then(|i| ical.components.get(i))
        else {
            return true;
        };
        component.component_type != ICalendarComponentType::VEvent
            || component.entries.iter().any(|e| {
                matches!(
                    (&e.name, e.values.first()),
                    (
                        ICalendarProperty::Transp,
                        Some(ICalendarValue::Transparency(
                            ICalendarTransparency::Transparent
                        ))
                    ) | (
                        ICalendarProperty::Status,
                        Some(ICalendarValue::Status(ICalendarStatus::Cancelled))
                    )
                )
            })
    };
    let mut periods = Vec::new();
    for Instance { from, to, comp_id } in instances(&ical, &expanded) {
        if free(comp_id) {
            continue;
        }
        if from < end && to > start && to > from {
            periods.push((from.max(start), to.min(end)));
        }
    }
    periods
}

/// When an alarm of an instance `[from, to)` fires: its TRIGGER (a duration from the start, or
/// from the end with `RELATED=END`, or a date-time), then `REPEAT` more times `DURATION` apart
/// (at most [`MAX_REPEATS`]). Nothing for an alarm without a trigger it can read.
fn fire_times(
    alarm: &ICalendarComponent,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    use calcard::icalendar::{ICalendarParameterName, ICalendarParameterValue, ICalendarRelated};
    let find = |p: ICalendarProperty| alarm.entries.iter().find(move |e| e.name == p);
    let Some(trigger) = find(ICalendarProperty::Trigger) else {
        return Vec::new();
    };
    let first = match trigger.values.first() {
        Some(ICalendarValue::Duration(d)) => {
            let from_end = trigger.params.iter().any(|p| {
                p.name == ICalendarParameterName::Related
                    && p.value == ICalendarParameterValue::Related(ICalendarRelated::End)
            });
            let base = if from_end { to } else { from };
            d.to_time_delta().and_then(|d| base.checked_add_signed(d))
        }
        Some(ICalendarValue::PartialDateTime(_)) => crate::zones::entry_instant(trigger),
        _ => None,
    };
    let Some(first) = first else {
        return Vec::new();
    };
    let repeat = match find(ICalendarProperty::Repeat).and_then(|e| e.values.first()) {
        Some(ICalendarValue::Integer(n)) => (*n).clamp(0, MAX_REPEATS),
        _ => 0,
    };
    let every = match find(ICalendarProperty::Duration).and_then(|e| e.values.first()) {
        Some(ICalendarValue::Duration(d)) => d.to_time_delta(),
        _ => None,
    };
    let mut out = vec![first];
    if let Some(every) = every {
        let mut at = first;
        for _ in 0..repeat {
            match at.checked_add_signed(every) {
                Some(next) => {
                    at = next;
                    out.push(at);
                }
                None => break,
            }
        }
    }
    out
}

/// Whether an alarm of the item's components of type `component` fires in `[start, end)`
/// (a CalDAV `comp-filter` on `VALARM` with a `time-range`, RFC 4791 9.9), each instance's
/// alarms fired from that instance. An item without alarms never does; one with alarms whose
/// times cannot be read, or whose expansion stops at [`MAX_INSTANCES`], is said to (a
/// superset).
pub fn alarm_fires(
    text: &str,
    component: &str,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> bool {
    let Ok(ical) = crate::convert::guarded_parse(text) else {
        return true;
    };
    if !alarmed(&ical, component) {
        return false;
    }
    let Ok(expanded) =
        crate::convert::guard("iCalendar", || ical.expand_dates(Tz::UTC, MAX_INSTANCES))
    else {
        return true;
    };
    if !expanded.errors.is_empty() || expanded.events.len() >= MAX_INSTANCES {
        return true;
    }
    let of_type = |comp_id: u32| {
        ical.component_by_id(comp_id)
            .is_some_and(|c| c.component_type.as_str().eq_ignore_ascii_case(component))
    };
    instances(&ical, &expanded)
        .into_iter()
        .filter(|i| of_type(i.comp_id))
        .any(|i| {
            ical.alarms_for_id(i.comp_id).any(|alarm| {
                fire_times(alarm, i.from, i.to)
                    .into_iter()
                    .any(|t| start.is_none_or(|s| t >= s) && end.is_none_or(|e| t < e))
            })
        })
}

/// Whether the item has an alarm in a component of type `component` (an unreadable text is
/// said to: a superset).
pub fn has_alarm(text: &str, component: &str) -> bool {
    crate::convert::guarded_parse(text).map_or(true, |ical| alarmed(&ical, component))
}

/// Whether the item has no alarm in a component of type `component` (an unreadable text is
/// said to have none: a superset again, for a VALARM `is-not-defined`).
pub fn lacks_alarm(text: &str, component: &str) -> bool {
    crate::convert::guarded_parse(text).map_or(true, |ical| !alarmed(&ical, component))
}

fn alarmed(ical: &ICalendar, component: &str) -> bool {
    ical.components.iter().enumerate().any(|(i, c)| {
        c.component_type.as_str().eq_ignore_ascii_case(component)
            && u32::try_from(i).is_ok_and(|i| ical.alarms_for_id(i).next().is_some())
    })
}

/// A recurring item cut to the overridden instances that matter to `[start, end)` (a CalDAV
/// `limit-recurrence-set`, RFC 4791 9.6.6): the master component(s) as they are, and only
/// the exceptions whose instance overlaps the range or whose RECURRENCE-ID is in it. `None`
/// for an item without exceptions or whose text cannot be read (answered as it is).
pub fn limit_recurrence_set(
    text: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Option<String> {
    use ICalendarProperty as P;
    let mut ical = crate::convert::guarded_parse(text).ok()?;
    let rid = |c: &ICalendarComponent| {
        c.entries
            .iter()
            .find(|e| e.name == P::RecurrenceId)
            .and_then(crate::zones::entry_instant)
    };
    if !ical.components.iter().any(|c| rid(c).is_some()) {
        return None;
    }
    let expanded =
        crate::convert::guard("iCalendar", || ical.expand_dates(Tz::UTC, MAX_INSTANCES)).ok()?;
    let in_range = |t: DateTime<Utc>| t >= start && t < end;
    let overlapping: Vec<u32> = instances(&ical, &expanded)
        .into_iter()
        .filter(|i| {
            i.from < end
                && if i.to > i.from {
                    i.to > start
                } else {
                    i.from >= start
                }
        })
        .map(|i| i.comp_id)
        .collect();
    let dropped: Vec<u32> = (0u32..)
        .zip(ical.components.iter())
        .filter(|(i, c)| rid(c).is_some_and(|r| !in_range(r)) && !overlapping.contains(i))
        .map(|(i, _)| i)
        .collect();
    if dropped.is_empty() {
        return None;
    }
    // Unlink the dropped exceptions from the calendar; their own children go with them.
    for c in &mut ical.components {
        c.component_ids.retain(|id| !dropped.contains(id));
    }
    crate::convert::guard("iCalendar", || ical.to_string()).ok()
}

/// A recurring item's instances in `[start, end)` as separate components in UTC, the way a
/// CalDAV `expand` asks (RFC 4791 9.6.5): each with the properties of the component it comes
/// from (the item, or the exception that moved it), its own DTSTART and DTEND, and a
/// RECURRENCE-ID, and that component's alarms (relative triggers fire from the instance); no
/// RRULE, RDATE or EXDATE, and no VTIMEZONE. `None` for an item that does not recur or whose
/// times cannot be read (answered as it is).
pub fn expand(text: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> Option<String> {
    use ICalendarProperty as P;
    let ical = crate::convert::guarded_parse(text).ok()?;
    let recurs = ical.components.iter().any(|c| {
        c.entries
            .iter()
            .any(|e| matches!(e.name, P::Rrule | P::Rdate))
    });
    if !recurs {
        return None;
    }
    let expanded =
        crate::convert::guard("iCalendar", || ical.expand_dates(Tz::UTC, MAX_INSTANCES)).ok()?;
    if !expanded.errors.is_empty() {
        return None;
    }
    let root = ical
        .components
        .iter()
        .find(|c| c.component_type == ICalendarComponentType::VCalendar)?;
    let mut calendar = ICalendarComponent::new(ICalendarComponentType::VCalendar);
    calendar.entries = root.entries.clone();
    let mut out = ICalendar {
        components: vec![calendar],
    };
    let utc = |name: ICalendarProperty, at: DateTime<Utc>| {
        let mut entry = ICalendarEntry::new(name);
        entry.values.push(ICalendarValue::PartialDateTime(Box::new(
            PartialDateTime::from_utc_timestamp(at.timestamp()),
        )));
        entry
    };
    for Instance { from, to, comp_id } in instances(&ical, &expanded) {
        let overlaps = from < end && if to > from { to > start } else { from >= start };
        if !overlaps {
            continue;
        }
        let Some(source) = usize::try_from(comp_id)
            .ok()
            .and_then(|i| ical.components.get(i))
        else {
            continue;
        };
        let recurrence_id = source
            .entries
            .iter()
            .find(|e| e.name == P::RecurrenceId)
            .and_then(crate::zones::entry_instant)
            .unwrap_or(from);
        let mut component = ICalendarComponent::new(source.component_type.clone());
        component.entries = source
            .entries
            .iter()
            .filter(|e| {
                !matches!(
                    e.name,
                    P::Dtstart
                        | P::Dtend
                        | P::Due
                        | P::Duration
                        | P::Rrule
                        | P::Rdate
                        | P::Exdate
                        | P::Exrule
                        | P::RecurrenceId
                )
            })
            .cloned()
            .collect();
        component.entries.push(utc(P::Dtstart, from));
        if to > from {
            component.entries.push(utc(P::Dtend, to));
        }
        component.entries.push(utc(P::RecurrenceId, recurrence_id));
        let index = u32::try_from(out.components.len()).ok()?;
        out.components.push(component);
        out.components.first_mut()?.component_ids.push(index);
        for alarm in ical.alarms_for_id(comp_id) {
            let alarm_index = u32::try_from(out.components.len()).ok()?;
            out.components.push(alarm.clone());
            out.components
                .get_mut(usize::try_from(index).ok()?)?
                .component_ids
                .push(alarm_index);
        }
    }
    crate::convert::guard("iCalendar", || out.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;

    fn at(s: &str) -> Option<DateTime<Utc>> {
        NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S")
            .ok()
            .map(|t| t.and_utc())
    }

    fn within(text: &str, start: &str, end: &str) -> bool {
        overlaps(text, at(start), at(end))
    }

    const WEEKLY: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:w\r\n\
        DTSTART:20261102T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\n\
        SUMMARY:s\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

    #[test]
    fn recurrences_are_expanded() {
        // Instances on Nov 2, 9, 16, 23 at 09:00-10:00Z.
        assert!(within(WEEKLY, "20261116T093000", "20261116T094000"));
        assert!(!within(WEEKLY, "20261110T000000", "20261115T000000"));
        assert!(!within(WEEKLY, "20261124T000000", "20261231T000000"));
        // Touching is not overlapping: [10:00, 11:00) after an instance ending at 10:00.
        assert!(!within(WEEKLY, "20261102T100000", "20261102T110000"));
        // Open bounds.
        assert!(overlaps(WEEKLY, at("20261123T000000"), None));
        assert!(!overlaps(WEEKLY, None, at("20261102T090000")));
    }

    #[test]
    fn an_exception_moves_its_instance() {
        let moved = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:w\r\n\
            DTSTART:20261102T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=2\r\n\
            SUMMARY:s\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:w\r\nRECURRENCE-ID:20261109T090000Z\r\n\
            DTSTART:20261120T090000Z\r\nDURATION:PT1H\r\nSUMMARY:moved\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        assert!(!within(moved, "20261109T000000", "20261110T000000"));
        assert!(within(moved, "20261120T000000", "20261121T000000"));
    }

    #[test]
    fn items_without_times_or_unreadable_match_every_range() {
        let todo = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VTODO\r\nUID:t\r\nSUMMARY:s\r\n\
            END:VTODO\r\nEND:VCALENDAR\r\n";
        assert!(within(todo, "20300101T000000", "20300102T000000"));
        assert!(within(
            "not a calendar",
            "20300101T000000",
            "20300102T000000"
        ));
    }

    #[test]
    fn busy_periods_are_the_opaque_instances_in_the_range() {
        let start = at("20261109T000000").unwrap_or_default();
        let end = at("20261117T093000").unwrap_or_default();
        let periods: Vec<String> = busy(WEEKLY, start, end)
            .iter()
            .map(|(a, b)| format!("{}-{}", a.format("%d %H:%M"), b.format("%d %H:%M")))
            .collect();
        // Nov 9 09:00-10:00 whole, Nov 16 cut at the range's end... which is Nov 17 09:30:
        // both whole.
        assert_eq!(periods, ["09 09:00-09 10:00", "16 09:00-16 10:00"]);
        let cut = busy(WEEKLY, start, at("20261116T093000").unwrap_or_default());
        assert_eq!(
            cut.last().map(|(_, b)| b.format("%H:%M").to_string()),
            Some("09:30".into())
        );
        let transparent = WEEKLY.replace("SUMMARY:s", "SUMMARY:s\r\nTRANSP:TRANSPARENT");
        assert!(busy(&transparent, start, end).is_empty());
        let cancelled = WEEKLY.replace("SUMMARY:s", "SUMMARY:s\r\nSTATUS:CANCELLED");
        assert!(busy(&cancelled, start, end).is_empty());
        assert!(busy("not a calendar", start, end).is_empty());
    }

    #[test]
    fn expand_writes_each_instance_in_the_range_in_utc() {
        let out = expand(
            WEEKLY,
            at("20261108T000000").unwrap_or_default(),
            at("20261117T000000").unwrap_or_default(),
        )
        .unwrap_or_default();
        let starts: Vec<&str> = out.lines().filter(|l| l.starts_with("DTSTART")).collect();
        assert_eq!(
            starts,
            ["DTSTART:20261109T090000Z", "DTSTART:20261116T090000Z"],
            "{out}"
        );
        assert!(out.contains("RECURRENCE-ID:20261109T090000Z"), "{out}");
        assert!(!out.contains("RRULE"), "{out}");
        assert_eq!(out.matches("BEGIN:VEVENT").count(), 2, "{out}");
        let single = WEEKLY.replace("RRULE:FREQ=WEEKLY;COUNT=4\r\n", "");
        assert_eq!(
            expand(
                &single,
                at("20261101T000000").unwrap_or_default(),
                at("20261201T000000").unwrap_or_default()
            ),
            None
        );
    }

    #[test]
    fn an_exception_replaces_its_instance_in_an_expansion() {
        let moved = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:w\r\nSEQUENCE:1\r\n\
            DTSTART:20261102T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\n\
            SUMMARY:s\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:w\r\nSEQUENCE:2\r\n\
            RECURRENCE-ID:20261109T090000Z\r\nDTSTART:20261109T150000Z\r\nDURATION:PT1H\r\n\
            SUMMARY:moved\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let out = expand(
            moved,
            at("20261101T000000").unwrap_or_default(),
            at("20261201T000000").unwrap_or_default(),
        )
        .unwrap_or_default();
        let starts: Vec<&str> = out.lines().filter(|l| l.starts_with("DTSTART")).collect();
        assert_eq!(
            starts,
            [
                "DTSTART:20261102T090000Z",
                "DTSTART:20261109T150000Z",
                "DTSTART:20261116T090000Z"
            ],
            "{out}"
        );
    }

    const ALARMED: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:w\r\n\
        DTSTART:20261102T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\n\
        SUMMARY:s\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:soon\r\n\
        TRIGGER:-PT15M\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

    #[test]
    fn alarms_fire_from_each_instance() {
        let fires = |start: &str, end: &str| alarm_fires(ALARMED, "VEVENT", at(start), at(end));
        // Instances on Nov 2, 9 and 16 at 09:00: alarms at 08:45.
        assert!(fires("20261109T084000", "20261109T085000"));
        assert!(!fires("20261109T085000", "20261109T090000"));
        assert!(!fires("20261123T000000", "20261130T000000"));
        assert!(!alarm_fires(ALARMED, "VTODO", None, None));
        // From the end, repeated.
        let after = ALARMED.replace(
            "TRIGGER:-PT15M",
            "TRIGGER;RELATED=END:PT5M\r\nREPEAT:2\r\nDURATION:PT10M",
        );
        let fires = |start: &str, end: &str| alarm_fires(&after, "VEVENT", at(start), at(end));
        assert!(fires("20261102T100400", "20261102T100600"));
        assert!(
            fires("20261102T102400", "20261102T102600"),
            "the second repeat"
        );
        assert!(!fires("20261102T103000", "20261102T110000"));
        // At a date-time.
        let fixed = ALARMED.replace("TRIGGER:-PT15M", "TRIGGER;VALUE=DATE-TIME:20261101T120000Z");
        assert!(alarm_fires(
            &fixed,
            "VEVENT",
            at("20261101T115900"),
            at("20261101T120100")
        ));
        assert!(has_alarm(ALARMED, "VEVENT"));
        assert!(!has_alarm(WEEKLY, "VEVENT"));
        assert!(lacks_alarm(WEEKLY, "VEVENT"));
        assert!(!lacks_alarm(ALARMED, "VEVENT"));
        assert!(has_alarm("not a calendar", "VEVENT") && lacks_alarm("not a calendar", "VEVENT"));
    }

    #[test]
    fn expanded_instances_keep_their_alarms() {
        let out = expand(
            ALARMED,
            at("20261101T000000").unwrap_or_default(),
            at("20261110T000000").unwrap_or_default(),
        )
        .unwrap_or_default();
        assert_eq!(out.matches("BEGIN:VEVENT").count(), 2, "{out}");
        assert_eq!(out.matches("BEGIN:VALARM").count(), 2, "{out}");
        assert_eq!(out.matches("TRIGGER:-PT15M").count(), 2, "{out}");
    }

    #[test]
    fn a_limited_recurrence_set_keeps_the_master_and_the_exceptions_in_range() {
        let two = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:w\r\n\
            DTSTART:20261102T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\n\
            SUMMARY:s\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:w\r\nRECURRENCE-ID:20261109T090000Z\r\n\
            DTSTART:20261109T150000Z\r\nDURATION:PT1H\r\nSUMMARY:first moved\r\nEND:VEVENT\r\n\
            BEGIN:VEVENT\r\nUID:w\r\nRECURRENCE-ID:20261123T090000Z\r\n\
            DTSTART:20261123T150000Z\r\nDURATION:PT1H\r\nSUMMARY:last moved\r\nEND:VEVENT\r\n\
            END:VCALENDAR\r\n";
        let out = limit_recurrence_set(
            two,
            at("20261120T000000").unwrap_or_default(),
            at("20261201T000000").unwrap_or_default(),
        )
        .unwrap_or_default();
        assert!(out.contains("RRULE:FREQ=WEEKLY"), "the master: {out}");
        assert!(out.contains("SUMMARY:last moved"), "{out}");
        assert!(!out.contains("SUMMARY:first moved"), "{out}");
        // Nothing to cut: answered as it is.
        assert_eq!(
            limit_recurrence_set(
                two,
                at("20261101T000000").unwrap_or_default(),
                at("20261201T000000").unwrap_or_default()
            ),
            None
        );
        assert_eq!(
            limit_recurrence_set(
                WEEKLY,
                at("20261101T000000").unwrap_or_default(),
                at("20261102T000000").unwrap_or_default()
            ),
            None
        );
    }

    #[test]
    fn an_endless_rule_past_the_expansion_limit_is_answered() {
        let hourly = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:d\r\n\
            DTSTART:20000101T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=HOURLY\r\nSUMMARY:s\r\n\
            END:VEVENT\r\nEND:VCALENDAR\r\n";
        assert!(within(hourly, "20900101T000000", "20900102T000000"));
    }
}
