//! `calendar-query` time ranges (RFC 4791 9.9): reading a `time-range` element; whether an
//! item's instances overlap it is `keepsake_formats::instances::overlaps` (recurrences
//! expanded, a superset where it cannot tell).

use chrono::{DateTime, NaiveDateTime, Utc};

use super::xml::{CALDAV, Element};

/// A `time-range`: either bound may be absent (open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

/// The `time-range` child of a `comp-filter`, if any; `Err` when a bound is not a UTC
/// date-time (`YYYYMMDDTHHMMSSZ`) or it has neither.
pub(crate) fn of(filter: &Element) -> Result<Option<Range>, String> {
    let Some(range) = filter.child(CALDAV, "time-range") else {
        return Ok(None);
    };
    let bound = |name: &str| -> Result<Option<DateTime<Utc>>, String> {
        range
            .attr(name)
            .map(|v| {
                let v = v.trim();
                v.strip_suffix('Z')
                    .and_then(|v| NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%S").ok())
                    .map(|t| t.and_utc())
                    .ok_or_else(|| format!("time-range {name}={v:?} is not a UTC date-time"))
            })
            .transpose()
    };
    let (start, end) = (bound("start")?, bound("end")?);
    if start.is_none() && end.is_none() {
        return Err("a time-range needs a start or an end".into());
    }
    Ok(Some(Range { start, end }))
}

/// A half-open range `[start, end)` of instants.
pub(crate) type Span = (DateTime<Utc>, DateTime<Utc>);

/// How a `calendar-data` asks a recurring item to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `expand` (RFC 4791 9.6.5): its instances in the range, one component each, in UTC.
    Expand(Span),
    /// `limit-recurrence-set` (RFC 4791 9.6.6): the master, and only the exceptions that
    /// matter to the range.
    Limit(Span),
}

/// How a report's `prop` asks its `calendar-data` to be written, if it does: `expand` or
/// `limit-recurrence-set` (`limit-freebusy-set` shapes VFREEBUSY components, which no item
/// here holds: it changes nothing). `Err` when one lacks a bound, a bound is not a UTC
/// date-time, or its start is not before its end.
pub(crate) fn shape_of(request: &Element) -> Result<Option<Shape>, String> {
    let Some(data) = request
        .child(super::xml::DAV, "prop")
        .and_then(|p| p.child(CALDAV, "calendar-data"))
    else {
        return Ok(None);
    };
    let (el, shape): (_, fn(Span) -> Shape) = match (
        data.child(CALDAV, "expand"),
        data.child(CALDAV, "limit-recurrence-set"),
    ) {
        (Some(e), _) => (e, Shape::Expand),
        (None, Some(l)) => (l, Shape::Limit),
        (None, None) => return Ok(None),
    };
    let bound = |name: &str| {
        el.attr(name)
            .and_then(|v| v.trim().strip_suffix('Z').map(str::to_string))
            .and_then(|v| NaiveDateTime::parse_from_str(&v, "%Y%m%dT%H%M%S").ok())
            .map(|t| t.and_utc())
            .ok_or_else(|| format!("{} needs {name} as a UTC date-time", el.name))
    };
    let (start, end) = (bound("start")?, bound("end")?);
    if start >= end {
        return Err(format!("{}'s start is not before its end", el.name));
    }
    Ok(Some(shape((start, end))))
}

/// Whether the item whose iCalendar text is `text` has an instance in `range`.
pub(crate) fn overlaps(text: &str, range: Range) -> bool {
    keepsake_formats::instances::overlaps(text, range.start, range.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<DateTime<Utc>> {
        NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S")
            .ok()
            .map(|t| t.and_utc())
    }

    #[test]
    fn bounds_are_read_as_utc_date_times() {
        let el = |attrs: Vec<(&str, &str)>| Element {
            ns: CALDAV.into(),
            name: "comp-filter".into(),
            children: vec![Element {
                ns: CALDAV.into(),
                name: "time-range".into(),
                attrs: attrs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                ..Element::default()
            }],
            ..Element::default()
        };
        assert_eq!(
            of(&el(vec![("start", "20261101T000000Z")])),
            Ok(Some(Range {
                start: at("20261101T000000"),
                end: None
            }))
        );
        assert!(of(&el(vec![("start", "20261101")])).is_err());
        assert!(of(&el(vec![])).is_err());
        assert_eq!(of(&Element::default()), Ok(None));
    }
}
