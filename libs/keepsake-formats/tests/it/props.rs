//! Property tests: JSON -> vCard/iCalendar -> JSON keeps every field the mapping claims to
//! keep (docs/FORMATS.md, "What is kept"); arbitrary text and arbitrary JSON never panic.

use keepsake_formats::filters::{self, PropFilter, PropTest};
use keepsake_formats::{Format, ORIGINAL_PROPERTY, entries, export, instances, to_document};
use keepsake_model::Kind;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Text as people type it: letters, digits, the characters vCard and iCalendar escape
/// (`,` `;` `\` newline) and non-ASCII, not starting or ending with whitespace.
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9éü中][a-zA-Z0-9 ,;:\\\\\n.!?éü中'-]{0,30}[a-zA-Z0-9.!?éü中]"
}

fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9-]{0,12}"
}

/// Converts `doc` to text and back; the document read back, without its original text.
fn round_trip(kind: Kind, doc: &Value) -> Result<Value, String> {
    let format = Format::of_kind(kind).ok_or("no format")?;
    let text = export(kind, doc, format).map_err(|e| e.to_string())?;
    let all: Vec<_> = entries(&text, format).collect();
    let [Ok(entry)] = all.as_slice() else {
        return Err(format!("{text}\nsplit as {all:?}"));
    };
    let (back_kind, mut back) = to_document(entry).map_err(|e| format!("{text}\n{e}"))?;
    if back_kind != kind {
        return Err(format!("kind {back_kind}"));
    }
    if let Some(o) = back.as_object_mut() {
        o.remove(ORIGINAL_PROPERTY);
    }
    Ok(back)
}

fn field<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, key| v.get(key))
}

/// The values of a JSContact id map (`{"k1": {...}, ...}`), in key order.
fn map_values<'a>(doc: &'a Value, key: &str, inner: &str) -> Vec<&'a Value> {
    let mut out: Vec<(&String, &Value)> = doc
        .get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k, v.get(inner)?)))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn contact_fields_survive_vcard(
        uid in word(), full in text(), given in word(), surname in word(),
        emails in proptest::collection::vec((word(), prop_oneof![Just("work"), Just("private")]), 0..3),
        phones in proptest::collection::vec(("\\+[0-9]{6,12}", any::<bool>()), 0..3),
        note in proptest::option::of(text()), org in proptest::option::of(text()),
        x_value in word(), version in prop_oneof![Just("3.0"), Just("4.0")],
    ) {
        let mut doc = json!({
            "@type": "Card", "version": "1.0", "uid": uid,
            "name": {"full": full, "components": [
                {"kind": "given", "value": given}, {"kind": "surname", "value": surname}]},
            "vCard": {"properties": [["version", {}, "unknown", version], ["x-keepsake-test", {}, "unknown", x_value]]},
        });
        let Some(obj) = doc.as_object_mut() else { unreachable!() };
        let mut m = Map::new();
        for (i, (user, context)) in emails.iter().enumerate() {
            m.insert(format!("e{i}"), json!({"address": format!("{user}@example.com"), "contexts": {*context: true}}));
        }
        if !m.is_empty() { obj.insert("emails".into(), Value::Object(m)); }
        let mut m = Map::new();
        for (i, (number, mobile)) in phones.iter().enumerate() {
            let features = if *mobile { json!({"mobile": true}) } else { json!({"voice": true}) };
            m.insert(format!("p{i}"), json!({"number": number, "features": features}));
        }
        if !m.is_empty() { obj.insert("phones".into(), Value::Object(m)); }
        if let Some(note) = &note { obj.insert("notes".into(), json!({"n1": {"note": note}})); }
        if let Some(org) = &org { obj.insert("organizations".into(), json!({"o1": {"name": org}})); }

        let back = round_trip(Kind::Contact, &doc).map_err(TestCaseError::fail)?;
        prop_assert_eq!(field(&back, &["@type"]), Some(&json!("Card")));
        prop_assert_eq!(field(&back, &["uid"]), Some(&json!(uid)));
        prop_assert_eq!(field(&back, &["name", "full"]), Some(&json!(full)));
        prop_assert_eq!(field(&back, &["name", "components"]).and_then(Value::as_array).map(Vec::len), Some(2));
        prop_assert_eq!(map_values(&back, "emails", "address"), map_values(&doc, "emails", "address"));
        prop_assert_eq!(map_values(&back, "emails", "contexts"), map_values(&doc, "emails", "contexts"));
        prop_assert_eq!(map_values(&back, "phones", "number"), map_values(&doc, "phones", "number"));
        prop_assert_eq!(map_values(&back, "phones", "features"), map_values(&doc, "phones", "features"));
        prop_assert_eq!(map_values(&back, "notes", "note"), map_values(&doc, "notes", "note"));
        prop_assert_eq!(map_values(&back, "organizations", "name"), map_values(&doc, "organizations", "name"));
        // Unknown vCard properties and the version come back.
        let props = field(&back, &["vCard", "properties"]).cloned().unwrap_or(Value::Null);
        prop_assert!(props.as_array().is_some_and(|p| p.contains(&json!(["x-keepsake-test", {}, "unknown", x_value]))), "{}", props);
        prop_assert!(props.as_array().is_some_and(|p| p.contains(&json!(["version", {}, "unknown", version]))), "{}", props);
    }

    #[test]
    fn event_fields_survive_icalendar(
        uid in word(), title in text(), description in proptest::option::of(text()),
        (month, day, hour) in (1u32..13, 1u32..29, 0u32..24), minutes in 1u32..600,
        zone in prop_oneof![Just("Europe/Lisbon"), Just("America/New_York"), Just("Asia/Tokyo")],
        rule in proptest::option::of((prop_oneof![Just("daily"), Just("weekly")], 1u32..20)),
        keyword in proptest::option::of(word()),
    ) {
        let mut doc = json!({
            "@type": "Event", "uid": uid, "title": title,
            "start": format!("2026-{month:02}-{day:02}T{hour:02}:00:00"),
            "timeZone": zone, "duration": format!("PT{minutes}M"),
        });
        let Some(obj) = doc.as_object_mut() else { unreachable!() };
        if let Some(d) = &description { obj.insert("description".into(), json!(d)); }
        if let Some((frequency, count)) = rule {
            obj.insert("recurrenceRule".into(), json!({"frequency": frequency, "count": count}));
        }
        if let Some(k) = &keyword { obj.insert("keywords".into(), json!({k: true})); }
        let back = round_trip(Kind::Event, &doc).map_err(TestCaseError::fail)?;
        for key in ["@type", "uid", "title", "description", "start", "timeZone", "keywords"] {
            prop_assert_eq!(back.get(key), doc.get(key), "{}", key);
        }
        // The duration may be normalised (PT90M -> PT1H30M): compare minutes.
        prop_assert_eq!(back.get("duration").and_then(Value::as_str).map(minutes_of), Some(minutes));
        prop_assert_eq!(
            field(&back, &["recurrenceRule", "frequency"]), field(&doc, &["recurrenceRule", "frequency"]));
        prop_assert_eq!(
            field(&back, &["recurrenceRule", "count"]), field(&doc, &["recurrenceRule", "count"]));
    }

    #[test]
    fn task_and_note_fields_survive_icalendar(
        uid in word(), title in text(), body in text(), priority in 0u32..10,
        percent in 0u32..101, (month, day) in (1u32..13, 1u32..29),
        progress in prop_oneof![Just("needs-action"), Just("in-process"), Just("completed"), Just("cancelled")],
    ) {
        let task = json!({
            "@type": "Task", "uid": uid, "title": title, "description": body,
            "due": format!("2026-{month:02}-{day:02}T17:00:00"), "priority": priority,
            "percentComplete": percent, "progress": progress,
        });
        let back = round_trip(Kind::Task, &task).map_err(TestCaseError::fail)?;
        for key in ["@type", "uid", "title", "description", "due", "priority", "percentComplete", "progress"] {
            prop_assert_eq!(back.get(key), task.get(key), "{}", key);
        }
        let note = json!({"@type": "Note", "uid": uid, "title": title, "description": body});
        let back = round_trip(Kind::Note, &note).map_err(TestCaseError::fail)?;
        for key in ["@type", "uid", "title", "description"] {
            prop_assert_eq!(back.get(key), note.get(key), "{}", key);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), soup in line_soup()) {
        for input in [&text, &soup] {
            for format in [Format::VCard, Format::ICalendar] {
                for entry in entries(input, format).flatten() {
                    if let Ok((kind, doc)) = to_document(&entry) {
                        let _ = export(kind, &doc, format);
                        let mut converted = doc.clone();
                        if let Some(o) = converted.as_object_mut() { o.remove(ORIGINAL_PROPERTY); }
                        let _ = export(kind, &converted, format);
                    }
                }
            }
            // What CalDAV/CardDAV queries run on stored texts: never a panic.
            let (start, end) = (
                chrono::DateTime::from_timestamp(1_700_000_000, 0),
                chrono::DateTime::from_timestamp(1_900_000_000, 0),
            );
            let _ = instances::overlaps(input, start, end);
            if let (Some(s), Some(e)) = (start, end) {
                let _ = instances::busy(input, s, e);
            }
            let filter = PropFilter::new("UID", PropTest::NotDefined);
            let _ = filters::calendar_matches(input, "VEVENT", std::slice::from_ref(&filter));
            let _ = filters::card_matches(input, &[filter], true);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(doc in json_value()) {
        for kind in Kind::DATA {
            if let Some(format) = Format::of_kind(*kind) {
                let _ = export(*kind, &doc, format);
            }
        }
    }
}

fn minutes_of(duration: &str) -> u32 {
    let rest = duration.trim_start_matches("PT");
    let (hours, rest) = rest
        .split_once('H')
        .map_or((0, rest), |(h, r)| (h.parse().unwrap_or(0), r));
    let minutes: u32 = rest.trim_end_matches('M').parse().unwrap_or(0);
    hours * 60 + minutes
}

/// Lines that look like vCard / iCalendar, shuffled: reaches the converters more often than
/// arbitrary text does.
fn line_soup() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("BEGIN:VCARD".to_string()),
        Just("END:VCARD".to_string()),
        Just("VERSION:3.0".to_string()),
        Just("VERSION:4.0".to_string()),
        Just("BEGIN:VCALENDAR".to_string()),
        Just("END:VCALENDAR".to_string()),
        Just("BEGIN:VEVENT".to_string()),
        Just("END:VEVENT".to_string()),
        Just("BEGIN:VTODO".to_string()),
        Just("END:VTODO".to_string()),
        Just("BEGIN:VJOURNAL".to_string()),
        Just("END:VJOURNAL".to_string()),
        Just("BEGIN:VALARM".to_string()),
        Just("END:VALARM".to_string()),
        Just("BEGIN:VTIMEZONE".to_string()),
        Just("END:VTIMEZONE".to_string()),
        Just("RRULE:FREQ=WEEKLY;COUNT=3".to_string()),
        Just("DTSTART;TZID=Europe/Paris:20260101T100000".to_string()),
        Just("TZID:Europe/Paris".to_string()),
        Just("RECURRENCE-ID:20260101T100000Z".to_string()),
        Just(" folded".to_string()),
        "UID:[a-z0-9]{1,5}",
        "[A-Z-]{1,10}(;[A-Z]{1,5}=[a-z\"]{0,5}){0,2}:[ -~]{0,20}",
        "N:[a-z;]{0,10}",
        "DTSTART:[0-9TZ]{0,16}",
        "TRIGGER:-?P[0-9TDHMS]{0,6}",
    ];
    proptest::collection::vec(line, 0..40).prop_map(|lines| lines.join("\r\n"))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("Event"),
            Just("Task"),
            Just("Card"),
            Just("Group"),
            Just("2026-01-01T10:00:00"),
            Just("PT1H")
        ]
        .prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("@type"),
        Just("uid"),
        Just("title"),
        Just("start"),
        Just("duration"),
        Just("entries"),
        Just("recurrenceRule"),
        Just("recurrenceOverrides"),
        Just("name"),
        Just("emails"),
        Just("phones"),
        Just("keepsake.app:calendar"),
        Just("iCalendar"),
        Just("vCard"),
        Just("frequency"),
        Just("k1"),
        Just("components"),
        Just("alerts"),
        Just("trigger"),
        Just("timeZone"),
        Just("due"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}
