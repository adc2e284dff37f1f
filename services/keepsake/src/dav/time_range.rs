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

/// The range of a `calendar-data`'s `expand` (RFC 4791 9.6.5) in a report's `prop`, if any;
/// `Err` when it lacks a bound or a bound is not a UTC date-time.
pub(crate) fn expand_of(request: &Element) -> Result<Option<Span>, String> {
    let Some(expand) = request
        .child(super::xml::DAV, "prop")
        .and_then(|p| p.child(CALDAV, "calendar-data"))
        .and_then(|d| d.child(CALDAV, "expand"))
    else {
        return Ok(None);
    };
    let bound = |name: &str| {
        expand
            .attr(name)
            .and_then(|v| v.trim().strip_suffix('Z').map(str::to_string))
            .and_then(|v| NaiveDateTime::parse_from_str(&v, "%Y%m%dT%H%M%S").ok())
            .map(|t| t.and_utc())
            .ok_or_else(|| format!("expand needs {name} as a UTC date-time"))
    };
    let (start, end) = (bound("start")?, bound("end")?);
    if start >= end {
        return Err("expand's start is not before its end".into());
    }
    Ok(Some((start, end)))
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
