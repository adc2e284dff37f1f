//! Local times a daylight-saving change makes ambiguous (the repeated hour) or nonexistent
//! (the skipped hour) survive export and import (calcard alone drops them; see `zones.rs`).
//! Found by `props::event_fields_survive_icalendar` with a start of 2026-10-25T01:00:00 in
//! Europe/Lisbon.

use keepsake_formats::{ConvertError, Format, ORIGINAL_PROPERTY, entries, export, to_document};
use keepsake_model::Kind;
use serde_json::{Value, json};

/// (zone, local time, the local time an UNTIL at that time reads back as): repeated and
/// skipped hours of 2026 in Lisbon and New York. UNTIL travels as UTC in iCalendar: a skipped
/// time is read with the offset before the gap (RFC 5545 3.3.5), the same instant as the
/// clock time one hour later, and comes back as that.
const TIMES: [(&str, &str, &str); 4] = [
    (
        "Europe/Lisbon",
        "2026-10-25T01:00:00",
        "2026-10-25T01:00:00",
    ),
    (
        "Europe/Lisbon",
        "2026-03-29T01:30:00",
        "2026-03-29T02:30:00",
    ),
    (
        "America/New_York",
        "2026-11-01T01:30:00",
        "2026-11-01T01:30:00",
    ),
    (
        "America/New_York",
        "2026-03-08T02:30:00",
        "2026-03-08T03:30:00",
    ),
];

fn compact(local: &str) -> String {
    local.replace(['-', ':'], "")
}

fn import(text: &str) -> Value {
    let all: Vec<_> = entries(text, Format::ICalendar).collect();
    let [Ok(entry)] = all.as_slice() else {
        panic!("{text}\nsplit as {all:?}");
    };
    let (_, mut doc) = match to_document(entry) {
        Ok(converted) => converted,
        Err(e) => panic!("{text}\n{e}"),
    };
    if let Some(o) = doc.as_object_mut() {
        o.remove(ORIGINAL_PROPERTY);
    }
    doc
}

fn export_text(kind: Kind, doc: &Value) -> String {
    match export(kind, doc, Format::ICalendar) {
        Ok(text) => text,
        Err(e) => panic!("{doc}\n{e}"),
    }
}

/// The lines of `text` that start with `name` (`DTSTART`, `RRULE`, ...).
fn line<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(name)).collect()
}

#[test]
fn the_failing_proptest_input_round_trips() {
    let doc = json!({"@type": "Event", "uid": "a", "title": "0A", "start": "2026-10-25T01:00:00",
        "timeZone": "Europe/Lisbon", "duration": "PT1M"});
    let text = export_text(Kind::Event, &doc);
    assert_eq!(
        line(&text, "DTSTART"),
        ["DTSTART;TZID=Europe/Lisbon:20261025T010000"],
        "{text}"
    );
    let back = import(&text);
    for key in ["start", "timeZone", "duration"] {
        assert_eq!(back.get(key), doc.get(key), "{key}: {back}");
    }
}

#[test]
fn start_due_until_and_exceptions_survive_export_and_import() {
    for (zone, local, until) in TIMES {
        let day_before = format!("{}{}", &local[..8], "01T09:00:00");
        let event = json!({"@type": "Event", "uid": "e", "title": "t", "start": day_before,
            "timeZone": zone, "duration": "PT1H",
            "recurrenceRule": {"frequency": "daily", "until": local},
            "recurrenceOverrides": {local: {"title": "moved"}}});
        let text = export_text(Kind::Event, &event);
        assert_eq!(
            line(&text, "RECURRENCE-ID"),
            [format!("RECURRENCE-ID;TZID={zone}:{}", compact(local))],
            "{text}"
        );
        assert!(
            !text.contains("Etc/GMT"),
            "a stand-in zone leaked out: {text}"
        );
        let back = import(&text);
        for key in ["start", "timeZone"] {
            assert_eq!(
                back.get(key),
                event.get(key),
                "{zone} {key}: {back}\n{text}"
            );
        }
        assert_eq!(
            back.get("recurrenceRule"),
            Some(&json!({"frequency": "daily", "until": until})),
            "{back}\n{text}"
        );
        assert_eq!(
            back.pointer(&format!("/recurrenceOverrides/{local}/title")),
            Some(&json!("moved")),
            "{back}"
        );

        let task =
            json!({"@type": "Task", "uid": "t", "title": "t", "due": local, "timeZone": zone});
        let text = export_text(Kind::Task, &task);
        assert_eq!(
            line(&text, "DUE"),
            [format!("DUE;TZID={zone}:{}", compact(local))],
            "{text}"
        );
        let back = import(&text);
        assert_eq!(back.get("due"), task.get("due"), "{back}");
    }
}

#[test]
fn until_in_utc_is_the_first_of_a_repeated_time_and_skipped_times_read_before_the_gap() {
    // RFC 5545 3.3.5: 01:00 on 2026-10-25 in Lisbon is first 01:00 WEST (+01:00) = 00:00Z;
    // 02:30 on 2026-03-08 in New York is read with EST (-05:00) = 07:30Z.
    for (zone, local, utc) in [
        ("Europe/Lisbon", "2026-10-25T01:00:00", "20261025T000000Z"),
        (
            "America/New_York",
            "2026-03-08T02:30:00",
            "20260308T073000Z",
        ),
    ] {
        let start = format!("{}01T09:00:00", &local[..8]);
        let event = json!({"@type": "Event", "uid": "e", "title": "t", "start": start,
            "timeZone": zone, "duration": "PT1H",
            "recurrenceRule": {"frequency": "daily", "until": local}});
        let text = export_text(Kind::Event, &event);
        let rule = line(&text, "RRULE");
        assert!(
            rule.len() == 1 && rule[0].contains(&format!("UNTIL={utc}")),
            "{text}"
        );
    }
    // And on import, an UNTIL in UTC becomes the real local time in the start's zone.
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:u\r\n\
        DTSTART;TZID=Europe/Lisbon:20261025T010000\r\nDURATION:PT1H\r\n\
        RRULE:FREQ=DAILY;UNTIL=20261027T120000Z\r\nSUMMARY:s\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let back = import(text);
    assert_eq!(
        back.get("start"),
        Some(&json!("2026-10-25T01:00:00")),
        "{back}"
    );
    assert_eq!(
        back.pointer("/recurrenceRule/until"),
        Some(&json!("2026-10-27T12:00:00")),
        "{back}"
    );
}

#[test]
fn an_end_across_the_change_keeps_its_real_length() {
    // The clock reads one hour from 01:30 to 02:30 on 2026-10-25 in Lisbon, but 01:30 is
    // read as its first occurrence (WEST, +01:00 = 00:30Z) and 02:30 is WET (+00:00 = 02:30Z).
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:u\r\n\
        DTSTART;TZID=Europe/Lisbon:20261025T013000\r\n\
        DTEND;TZID=Europe/Lisbon:20261025T023000\r\nSUMMARY:s\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let back = import(text);
    assert_eq!(
        back.get("start"),
        Some(&json!("2026-10-25T01:30:00")),
        "{back}"
    );
    assert_eq!(
        back.get("timeZone"),
        Some(&json!("Europe/Lisbon")),
        "{back}"
    );
    assert_eq!(back.get("duration"), Some(&json!("PT2H")), "{back}");
}

#[test]
fn an_export_that_would_lose_the_start_fails_instead() {
    // With an endTimeZone no stand-in is used (calcard computes the end through the start's
    // instant); the export must refuse rather than serve the event without its start.
    let doc = json!({"@type": "Event", "uid": "a", "title": "t", "start": "2026-10-25T01:00:00",
        "timeZone": "Europe/Lisbon", "endTimeZone": "Asia/Tokyo", "duration": "PT1H"});
    match export(Kind::Event, &doc, Format::ICalendar) {
        Err(ConvertError::Document { reason, .. }) => {
            assert!(reason.contains("start"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stand_in_name_used_by_the_item_is_not_borrowed() {
    // The item itself uses Etc/GMT-14 (a location's zone): another stand-in is taken,
    // so the item's own Etc/GMT-14 is not renamed to Europe/Lisbon.
    let doc = json!({"@type": "Event", "uid": "a", "title": "t", "start": "2026-10-25T01:00:00",
        "timeZone": "Europe/Lisbon", "duration": "PT1H", "locations": {"l": {"name": "x", "timeZone": "Etc/GMT-14"}}});
    let text = export_text(Kind::Event, &doc);
    assert_eq!(
        line(&text, "DTSTART"),
        ["DTSTART;TZID=Europe/Lisbon:20261025T010000"],
        "{text}"
    );
    let back = import(&text);
    assert_eq!(back.get("start"), doc.get("start"), "{back}");
    assert_eq!(
        back.pointer("/timeZone"),
        Some(&json!("Europe/Lisbon")),
        "{back}"
    );
    assert_eq!(
        back.pointer("/locations/l/timeZone"),
        Some(&json!("Etc/GMT-14")),
        "{back}"
    );
}

#[test]
fn every_early_hour_of_the_year_round_trips() {
    // The zones' changes all fall between 00:00 and 04:00 local time.
    let mut checked = 0;
    for zone in [
        "Europe/Lisbon",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Tokyo",
    ] {
        for month in 1..=12u32 {
            for day in 1..=31u32 {
                for hour in 0..4u32 {
                    for minute in [0u32, 30] {
                        let start = format!("2026-{month:02}-{day:02}T{hour:02}:{minute:02}:00");
                        if chrono::NaiveDateTime::parse_from_str(&start, "%Y-%m-%dT%H:%M:%S")
                            .is_err()
                        {
                            continue;
                        }
                        let doc = json!({"@type": "Event", "uid": "a", "title": "t",
                            "start": start, "timeZone": zone, "duration": "PT30M"});
                        let back = import(&export_text(Kind::Event, &doc));
                        assert_eq!(back.get("start"), doc.get("start"), "{zone} {back}");
                        assert_eq!(back.get("timeZone"), doc.get("timeZone"), "{zone} {back}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 4 * 365 * 8);
}

#[test]
fn other_times_of_an_item_with_a_stand_in_keep_their_instants() {
    // A task starting in the repeated hour, due at a UTC time: the due time is that instant
    // in the task's zone (12:00Z on 2026-10-26 is 12:00 WET in Lisbon), not shifted by the
    // stand-in's offset.
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VTODO\r\nUID:t\r\n\
        DTSTART;TZID=Europe/Lisbon:20261025T013000\r\nDUE:20261026T120000Z\r\n\
        SUMMARY:s\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";
    let back = import(text);
    assert_eq!(
        back.get("due"),
        Some(&json!("2026-10-26T12:00:00")),
        "{back}"
    );
    assert_eq!(
        back.get("timeZone"),
        Some(&json!("Europe/Lisbon")),
        "{back}"
    );

    // A daily 01:30 series from the repeated hour, one occurrence excluded by a UTC EXDATE
    // (01:30 in Lisbon on 2026-10-27 is 01:30Z): the exclusion stays on that occurrence.
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:e\r\n\
        DTSTART;TZID=Europe/Lisbon:20261025T013000\r\nDURATION:PT30M\r\n\
        RRULE:FREQ=DAILY;COUNT=5\r\nEXDATE:20261027T013000Z\r\nSUMMARY:s\r\n\
        END:VEVENT\r\nEND:VCALENDAR\r\n";
    let back = import(text);
    let overrides = back
        .get("recurrenceOverrides")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        overrides.pointer("/2026-10-27T01:30:00/excluded"),
        Some(&json!(true)),
        "{back}"
    );
}

#[test]
fn a_due_time_calcard_keeps_with_its_zone_is_written_back_in_that_zone() {
    // Imported with DTSTART and DUE in the same zone, calcard keeps DUE's TZID among its
    // converted properties; after a JSON change the export must write the same local due time.
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VTODO\r\nUID:t\r\n\
        DTSTART;TZID=Europe/Lisbon:20261025T013000\r\n\
        DUE;TZID=Europe/Lisbon:20261025T030000\r\nSUMMARY:s\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";
    let mut doc = import(text);
    assert_eq!(doc.get("due"), Some(&json!("2026-10-25T03:00:00")), "{doc}");
    if let Some(o) = doc.as_object_mut() {
        o.insert("title".into(), json!("changed"));
    }
    let out = export_text(Kind::Task, &doc);
    assert_eq!(
        line(&out, "DUE"),
        ["DUE;TZID=Europe/Lisbon:20261025T030000"],
        "{out}"
    );
    assert_eq!(
        line(&out, "DTSTART"),
        ["DTSTART;TZID=Europe/Lisbon:20261025T013000"],
        "{out}"
    );
}
