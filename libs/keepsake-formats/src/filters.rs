//! The property filters of CardDAV `addressbook-query` (RFC 6352 10.5) and CalDAV
//! `calendar-query` (RFC 4791 9.7), evaluated on an item's text as calcard parses it.
//!
//! A property filter names a property and asks whether it is defined, not defined, or has a
//! value that matches a text (contains, equals, starts or ends with; caseless unless the
//! collation is `i;octet`; negated on request). Invariants: a text that does not parse
//! matches every filter (a superset, which clients filter again, never a dropped item); a
//! calendar item matches when one of its components of the asked type (the item or one of
//! its exceptions) passes every filter.

use calcard::vcard::VCard;

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
    /// What it asks.
    pub test: PropTest,
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
    /// Whether the values of the property (`None`: not there) pass.
    fn holds(&self, values: Option<&[String]>) -> bool {
        match (&self.test, values) {
            (PropTest::Defined, found) => found.is_some(),
            (PropTest::NotDefined, found) => found.is_none(),
            (PropTest::Text { .. }, None) => false,
            (PropTest::Text { matches, all }, Some(values)) => {
                let one = |m: &TextMatch| values.iter().any(|v| m.holds(v));
                if *all {
                    matches.iter().all(one)
                } else {
                    matches.iter().any(one)
                }
            }
        }
    }
}

/// The text values of the properties named `name` among `entries` (`None` when there is none).
fn values<'a>(
    entries: impl Iterator<Item = (&'a str, Vec<&'a str>)>,
    name: &str,
) -> Option<Vec<String>> {
    let mut found: Option<Vec<String>> = None;
    for (property, texts) in entries {
        if property.eq_ignore_ascii_case(name) {
            found
                .get_or_insert_with(Vec::new)
                .extend(texts.into_iter().map(str::to_string));
        }
    }
    found
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
            let entries = c.entries.iter().map(|e| {
                (
                    e.name.as_str(),
                    e.values.iter().filter_map(|v| v.as_text()).collect(),
                )
            });
            f.holds(values(entries, &f.name).as_deref())
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
        let entries = card.entries.iter().map(|e| {
            (
                e.name.as_str(),
                e.values.iter().filter_map(|v| v.as_text()).collect(),
            )
        });
        f.holds(values(entries, &f.name).as_deref())
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
            test: text(s, MatchType::Contains),
        };
        assert!(calendar_matches(EVENTS, "VEVENT", &[uid("review-1")]));
        assert!(!calendar_matches(EVENTS, "VEVENT", &[uid("lunch")]));
        assert!(!calendar_matches(EVENTS, "VTODO", &[uid("review-1")]));
        let summary = PropFilter {
            name: "SUMMARY".into(),
            test: text("design", MatchType::Contains),
        };
        assert!(calendar_matches(
            EVENTS,
            "VEVENT",
            &[uid("review"), summary.clone()]
        ));
        let octet = PropFilter {
            name: "SUMMARY".into(),
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
            test: PropTest::NotDefined,
        };
        assert!(calendar_matches(EVENTS, "VEVENT", &[no_location]));
        let has_categories = PropFilter {
            name: "CATEGORIES".into(),
            test: PropTest::Defined,
        };
        assert!(calendar_matches(EVENTS, "VEVENT", &[has_categories]));
        let negated = PropFilter {
            name: "UID".into(),
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
    fn card_property_filters() {
        let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:ada\r\nFN:Ada Lovelace\r\nEMAIL:ada@example.org\r\nEND:VCARD\r\n";
        let f = |name: &str, s: &str, t: MatchType| PropFilter {
            name: name.into(),
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
