//! The property filters of CardDAV `addressbook-query` (RFC 6352 10.5) and CalDAV
//! `calendar-query` (RFC 4791 9.7), evaluated on an item's text as calcard parses it.
//!
//! A property filter names a property and asks whether it is defined, not defined, or has a
//! value that matches a text (contains, equals, starts or ends with; caseless unless the
//! collation is `i;octet`; negated on request); it may also ask of the property's parameters
//! (`param-filter`: defined, not defined, or a text match on the value) and, in CalDAV, that
//! its date-time value falls in a `time-range`. One instance of the property must pass the
//! filter's tests: every one in CalDAV; in CardDAV any one, or every one with `test="allof"`
//! (RFC 6352 10.5.1). Invariants: a text that does not parse matches every filter (a superset,
//! which clients filter again, never a dropped item); a calendar item matches when one of its
//! components of the asked type (the item or one of its exceptions) passes every filter.

use calcard::common::IanaString as _;
use calcard::icalendar::{ICalendarEntry, ICalendarParameterValue};
use calcard::vcard::{VCard, VCardEntry, VCardParameterValue};
use chrono::{DateTime, Utc};

/// How a text is compared with a property's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchType {
    /// The value contains the text (CalDAV's only kind).
    Contains,
    /// The value is the text.
    Equals,
    /// The value starts with the text.
    StartsWith,
    /// The value ends with the text.
    EndsWith,
}

/// A `text-match`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextMatch {
    /// The text.
    pub text: String,
    /// `negate-condition="yes"`: matches when the comparison fails.
    pub negate: bool,
    /// The comparison.
    pub match_type: MatchType,
    /// False only for the `i;octet` collation.
    pub caseless: bool,
}

/// What a `prop-filter` asks of its property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropTest {
    /// The property is there (a `prop-filter` with nothing inside).
    Defined,
    /// `is-not-defined`.
    NotDefined,
    /// Its `text-match`es: all of them when `all` (CardDAV `test="allof"`), else any.
    Text {
        /// The matches.
        matches: Vec<TextMatch>,
        /// Whether every one must hold.
        all: bool,
    },
}

/// A `prop-filter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropFilter {
    /// The property's name (`UID`, `SUMMARY`, `FN`, `EMAIL`, ...), any case.
    pub name: String,
    /// What it asks of the property's values.
    pub test: PropTest,
    /// What it asks of the property's parameters.
    pub params: Vec<ParamFilter>,
    /// CalDAV: the property's date-time value must be in `[start, end)` (either bound open).
    pub range: Option<Bounds>,
}

/// A time range's two bounds, either open (`None`).
pub type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

impl PropFilter {
    /// A filter of `test` on the property `name`, asking nothing of its parameters or times.
    pub fn new(name: impl Into<String>, test: PropTest) -> Self {
        Self {
            name: name.into(),
            test,
            params: Vec::new(),
            range: None,
        }
    }
}

/// A `param-filter` (RFC 4791 9.7.3, RFC 6352 10.5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamFilter {
    /// The parameter's name (`TYPE`, `PARTSTAT`, ...), any case.
    pub name: String,
    /// What it asks: `Defined` (nothing inside), `NotDefined`, or a `Text` with one match.
    pub test: PropTest,
}

/// One instance of a property, as the filters read it.
struct Found {
    texts: Vec<String>,
    params: Vec<(String, Option<String>)>,
    at: Option<DateTime<Utc>>,
}

impl ParamFilter {
    fn holds(&self, params: &[(String, Option<String>)]) -> bool {
        let values: Vec<&str> = params
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&self.name))
            .map(|(_, v)| v.as_deref().unwrap_or(""))
            .collect();
        match &self.test {
            PropTest::Defined => !values.is_empty(),
            PropTest::NotDefined => values.is_empty(),
            PropTest::Text { matches, all } => {
                // A parameter's value may list several, comma-separated (TYPE=home,work); a
                // quoted one may hold a comma (CN="Lovelace, Ada"): either matches.
                let one = |m: &TextMatch| {
                    values
                        .iter()
                        .any(|v| m.holds(v) || v.split(',').any(|part| m.holds(part)))
                };
                !values.is_empty()
                    && if *all {
                        matches.iter().all(one)
                    } else {
                        matches.iter().any(one)
                    }
            }
        }
    }
}

impl TextMatch {
    fn holds(&self, value: &str) -> bool {
        let (value, text) = if self.caseless {
            (value.to_lowercase(), self.text.to_lowercase())
        } else {
            (value.to_string(), self.text.clone())
        };
        let found = match self.match_type {
            MatchType::Contains => value.contains(&text),
            MatchType::Equals => value == text,
            MatchType::StartsWith => value.starts_with(&text),
            MatchType::EndsWith => value.ends_with(&text),
        };
        found != self.negate
    }
}

impl PropFilter {
    /// Whether the instances of the property (none: not there) pass.
    fn holds(&self, found: &[Found]) -> bool {
        match &self.test {
            PropTest::NotDefined => found.is_empty(),
            PropTest::Defined if self.params.is_empty() && self.range.is_none() => {
                !found.is_empty()
            }
            _ => found.iter().any(|f| self.instance_holds(f)),
        }
    }

    /// Whether one instance passes: its text matches, parameter filters and time range, all
    /// of them, or any of them for a CardDAV `anyof` (`PropTest::Text { all: false }`).
    fn instance_holds(&self, f: &Found) -> bool {
        let mut tests: Vec<bool> = Vec::new();
        let mut all = true;
        if let PropTest::Text {
            matches,
            all: every,
        } = &self.test
        {
            all = *every;
            tests.extend(matches.iter().map(|m| f.texts.iter().any(|v| m.holds(v))));
        }
        tests.extend(self.params.iter().map(|p| p.holds(&f.params)));
        if let Some((start, end)) = self.range {
            // A value that is no date-time cannot be placed: it passes (a superset).
            tests.push(
                f.at.is_none_or(|at| start.is_none_or(|s| at >= s) && end.is_none_or(|e| at < e)),
            );
        }
        if tests.is_empty() {
            return true;
        }
        if all {
            tests.iter().all(|t| *t)
        } else {
            tests.iter().any(|t| *t)
        }
    }
}

/// A calendar parameter's value as it is written (`None` for one without a value).
fn ical_param_text(value: &ICalendarParameterValue) -> Option<String> {
    use ICalendarParameterValue as V;
    Some(match value {
        V::Text(v) => v.clone(),
        V::Integer(i) => i.to_string(),
        V::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        V::Uri(u) => u.as_str()?.to_string(),
        V::Cutype(v) => v.as_str().to_string(),
        V::Fbtype(v) => v.as_str().to_string(),
        V::Partstat(v) => v.as_str().to_string(),
        V::Related(v) => v.as_str().to_string(),
        V::Reltype(v) => v.as_str().to_string(),
        V::Role(v) => v.as_str().to_string(),
        V::ScheduleAgent(v) => v.as_str().to_string(),
        V::ScheduleForceSend(v) => v.as_str().to_string(),
        V::Value(v) => v.as_str().to_string(),
        V::Display(v) => v.as_str().to_string(),
        V::Feature(v) => v.as_str().to_string(),
        V::Duration(v) => v.to_string(),
        V::Linkrel(v) => v.as_str().to_string(),
        V::Null => return None,
    })
}

/// A vCard parameter's value as it is written (`None` for one without a value, or a JSContact
/// one no filter names).
fn card_param_text(value: &VCardParameterValue) -> Option<String> {
    use VCardParameterValue as V;
    Some(match value {
        V::Text(v) => v.clone(),
        V::Integer(i) => i.to_string(),
        V::Timestamp(t) => t.to_string(),
        V::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        V::ValueType(v) => v.as_str().to_string(),
        V::Type(v) => v.as_str().to_string(),
        V::Calscale(v) => v.as_str().to_string(),
        V::Level(v) => v.as_str().to_string(),
        V::Phonetic(v) => v.as_str().to_string(),
        V::Jscomps(_) | V::Null => return None,
    })
}

impl Found {
    /// An instance from its text values, its parameters (name, written value) and its instant.
    fn new<'a>(
        texts: impl Iterator<Item = &'a str>,
        params: impl Iterator<Item = (String, Option<String>)>,
        at: Option<DateTime<Utc>>,
    ) -> Self {
        Found {
            texts: texts.map(str::to_string).collect(),
            params: params.collect(),
            at,
        }
    }
}

fn ical_found(e: &ICalendarEntry) -> Found {
    Found::new(
        e.values.iter().filter_map(|v| v.as_text()),
        e.params
            .iter()
            .map(|p| (p.name.as_str().to_string(), ical_param_text(&p.value))),
        crate::zones::entry_instant(e),
    )
}

fn card_found(e: &VCardEntry) -> Found {
    Found::new(
        e.values.iter().filter_map(|v| v.as_text()),
        e.params
            .iter()
            .map(|p| (p.name.as_str().to_string(), card_param_text(&p.value))),
        None,
    )
}

/// Whether a calendar item's text has a component of type `component` (`VEVENT`, `VTODO`,
/// `VJOURNAL`) that passes every filter.
pub fn calendar_matches(text: &str, component: &str, filters: &[PropFilter]) -> bool {
    if filters.is_empty() {
        return true;
    }
    let Ok(ical) = crate::convert::guarded_parse(text) else {
        return true;
    };
    let candidates: Vec<_> = ical
        .components
        .iter()
        .filter(|c| c.component_type.as_str().eq_ignore_ascii_case(component))
        .collect();
    candidates.iter().any(|c| {
        filters.iter().all(|f| {
            let found: Vec<Found> = c
                .entries
                .iter()
                .filter(|e| e.name.as_str().eq_ignore_ascii_case(&f.name))
                .map(ical_found)
                .collect();
            f.holds(&found)
        })
    })
}

/// Whether a vCard's text passes the filters: all of them when `all` (`test="allof"`), else any
/// (RFC 6352's default); no filter passes every card.
pub fn card_matches(text: &str, filters: &[PropFilter], all: bool) -> bool {
    if filters.is_empty() {
        return true;
    }
    let Ok(Ok(card)) = crate::convert::guard("vCard", || VCard::parse(text)) else {
        return true;
    };
    let holds = |f: &PropFilter| {
        let found: Vec<Found> = card
            .entries
            .iter()
            .filter(|e| e.name.as_str().eq_ignore_ascii_case(&f.name))
            .map(card_found)
            .collect();
        f.holds(&found)
    };
    if all {
        filters.iter().all(holds)
    } else {
        filters.iter().any(holds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str, match_type: MatchType) -> PropTest {
        PropTest::Text {
            matches: vec![TextMatch {
                text: s.into(),
                negate: false,
                match_type,
                caseless: true,
            }],
            all: false,
        }
    }

    const EVENTS: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:review-1\r\n\
        DTSTART:20261102T090000Z\r\nSUMMARY:Design Review\r\nCATEGORIES:work\r\nEND:VEVENT\r\n\
        END:VCALENDAR\r\n";

    #[test]
    fn calendar_property_filters() {
        let uid = |s: &str| PropFilter {
            name: "uid".into(),
            params: Vec::new(),
            range: None,
            test: text(s, MatchType::Contains),
        };
        assert!(calendar_matches(EVENTS, "VEVENT", &[uid("review-1")]));
        assert!(!calendar_matches(EVENTS, "VEVENT", &[uid("lunch")]));
        assert!(!calendar_matches(EVENTS, "VTODO", &[uid("review-1")]));
        let summary = PropFilter {
            name: "SUMMARY".into(),
            params: Vec::new(),
            range: None,
            test: text("design", MatchType::Contains),
        };
        assert!(calendar_matches(
            EVENTS,
            "VEVENT",
            &[uid("review"), summary.clone()]
        ));
        let octet = PropFilter {
            name: "SUMMARY".into(),
            params: Vec::new(),
            range: None,
            test: PropTest::Text {
                matches: vec![TextMatch {
                    text: "design".into(),
                    negate: false,
                    match_type: MatchType::Contains,
                    caseless: false,
                }],
                all: false,
            },
        };
        assert!(!calendar_matches(EVENTS, "VEVENT", &[octet]));
        let no_location = PropFilter {
            name: "LOCATION".into(),
            params: Vec::new(),
            range: None,
            test: PropTest::NotDefined,
        };
        assert!(calendar_matches(EVENTS, "VEVENT", &[no_location]));
        let has_categories = PropFilter {
            name: "CATEGORIES".into(),
            params: Vec::new(),
            range: None,
            test: PropTest::Defined,
        };
        assert!(calendar_matches(EVENTS, "VEVENT", &[has_categories]));
        let negated = PropFilter {
            name: "UID".into(),
            params: Vec::new(),
            range: None,
            test: PropTest::Text {
                matches: vec![TextMatch {
                    text: "review".into(),
                    negate: true,
                    match_type: MatchType::Contains,
                    caseless: true,
                }],
                all: false,
            },
        };
        assert!(!calendar_matches(EVENTS, "VEVENT", &[negated]));
        assert!(
            calendar_matches("not a calendar", "VEVENT", &[uid("x")]),
            "unreadable: a superset"
        );
    }

    #[test]
    fn parameter_filters_and_property_time_ranges() {
        let cal = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:m\r\n\
            DTSTART:20261102T090000Z\r\nDTSTAMP:20261101T120000Z\r\nSUMMARY:Meeting\r\n\
            ATTENDEE;PARTSTAT=ACCEPTED;CN=Ada:mailto:ada@example.org\r\n\
            ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:grace@example.org\r\nEND:VEVENT\r\n\
            END:VCALENDAR\r\n";
        let matching = |t: &str| PropTest::Text {
            matches: vec![TextMatch {
                text: t.into(),
                negate: false,
                match_type: MatchType::Equals,
                caseless: true,
            }],
            all: true,
        };
        let attendee = |params: Vec<ParamFilter>, test: PropTest| PropFilter {
            params,
            ..PropFilter::new("ATTENDEE", test)
        };
        let partstat = |t: &str| ParamFilter {
            name: "partstat".into(),
            test: matching(t),
        };
        let some = PropTest::Text {
            matches: vec![],
            all: true,
        };
        assert!(calendar_matches(
            cal,
            "VEVENT",
            &[attendee(vec![partstat("accepted")], some.clone())]
        ));
        assert!(!calendar_matches(
            cal,
            "VEVENT",
            &[attendee(vec![partstat("declined")], some.clone())]
        ));
        // One instance must pass every test: Ada accepted, Grace has no CN.
        let cn = ParamFilter {
            name: "CN".into(),
            test: PropTest::Defined,
        };
        let no_cn = ParamFilter {
            name: "CN".into(),
            test: PropTest::NotDefined,
        };
        assert!(calendar_matches(
            cal,
            "VEVENT",
            &[attendee(vec![partstat("ACCEPTED"), cn], some.clone())]
        ));
        assert!(!calendar_matches(
            cal,
            "VEVENT",
            &[attendee(
                vec![partstat("ACCEPTED"), no_cn.clone()],
                some.clone()
            )]
        ));
        assert!(calendar_matches(
            cal,
            "VEVENT",
            &[attendee(
                vec![partstat("NEEDS-ACTION"), no_cn],
                some.clone()
            )]
        ));
        // The value's own text-match and a parameter, on one instance.
        let ada = PropTest::Text {
            matches: vec![TextMatch {
                text: "ada".into(),
                negate: false,
                match_type: MatchType::Contains,
                caseless: true,
            }],
            all: true,
        };
        assert!(calendar_matches(
            cal,
            "VEVENT",
            &[attendee(vec![partstat("ACCEPTED")], ada.clone())]
        ));
        assert!(!calendar_matches(
            cal,
            "VEVENT",
            &[attendee(vec![partstat("NEEDS-ACTION")], ada)]
        ));
        // A property's own time range: DTSTAMP on Nov 1 at noon.
        let at = |s: &str| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S")
                .ok()
                .map(|t| t.and_utc())
        };
        let stamp = |start: &str, end: &str| PropFilter {
            range: Some((at(start), at(end))),
            ..PropFilter::new("DTSTAMP", some.clone())
        };
        assert!(calendar_matches(
            cal,
            "VEVENT",
            &[stamp("20261101T000000", "20261102T000000")]
        ));
        assert!(!calendar_matches(
            cal,
            "VEVENT",
            &[stamp("20261101T130000", "20261102T000000")]
        ));
        // A quoted parameter value holding a comma matches whole.
        let quoted = cal.replace("CN=Ada", "CN=\"Lovelace, Ada\"");
        let cn = |t: &str| ParamFilter {
            name: "CN".into(),
            test: matching(t),
        };
        assert!(calendar_matches(
            &quoted,
            "VEVENT",
            &[attendee(vec![cn("Lovelace, Ada")], some.clone())]
        ));
        assert!(calendar_matches(
            &quoted,
            "VEVENT",
            &[attendee(vec![cn("Lovelace")], some.clone())]
        ));
        // vCard: TYPE among several, anyof and allof.
        let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:ada\r\nFN:Ada\r\n\
            TEL;TYPE=home,voice:+1-555-0100\r\nEND:VCARD\r\n";
        let tel = |t: &str, all: bool| PropFilter {
            params: vec![ParamFilter {
                name: "TYPE".into(),
                test: matching(t),
            }],
            ..PropFilter::new(
                "TEL",
                PropTest::Text {
                    matches: vec![],
                    all,
                },
            )
        };
        assert!(card_matches(card, &[tel("home", true)], false));
        assert!(card_matches(card, &[tel("voice", true)], false));
        assert!(!card_matches(card, &[tel("work", true)], false));
        assert!(!card_matches(card, &[tel("work", false)], false));
    }

    #[test]
    fn card_property_filters() {
        let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:ada\r\nFN:Ada Lovelace\r\nEMAIL:ada@example.org\r\nEND:VCARD\r\n";
        let f = |name: &str, s: &str, t: MatchType| PropFilter {
            name: name.into(),
            params: Vec::new(),
            range: None,
            test: text(s, t),
        };
        assert!(card_matches(
            card,
            &[f("FN", "ada", MatchType::StartsWith)],
            false
        ));
        assert!(!card_matches(
            card,
            &[f("FN", "ada", MatchType::EndsWith)],
            false
        ));
        assert!(card_matches(
            card,
            &[f("FN", "ada lovelace", MatchType::Equals)],
            false
        ));
        assert!(card_matches(
            card,
            &[
                f("FN", "grace", MatchType::Contains),
                f("EMAIL", "example", MatchType::Contains)
            ],
            false
        ));
        assert!(!card_matches(
            card,
            &[
                f("FN", "grace", MatchType::Contains),
                f("EMAIL", "example", MatchType::Contains)
            ],
            true
        ));
        assert!(card_matches(card, &[], true));
    }
}
