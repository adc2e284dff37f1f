//! The splitter on whole texts: line numbers, UIDs, original text, limits, and that one bad
//! entry leaves the others alone.

use keepsake_formats::{EntryErrorReason, Format, Limits, entries, entries_with_limits, utf8_text};
use keepsake_model::Kind;

#[test]
fn a_single_item_calendar_is_its_own_entry_text() {
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\nBEGIN:VTIMEZONE\r\nTZID:Europe/Paris\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\nBEGIN:VEVENT\r\nUID:u1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;TZID=Europe/Paris:20260101T100000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let all: Vec<_> = entries(text, Format::ICalendar).collect();
    assert_eq!(all.len(), 1);
    let Some(Ok(entry)) = all.first() else {
        panic!("{all:?}")
    };
    assert_eq!(entry.text, text);
    assert_eq!(
        (entry.line, entry.kind, entry.uid.as_deref()),
        (12, Kind::Event, Some("u1"))
    );
}

#[test]
fn each_calendar_entry_gets_only_the_time_zones_it_names() {
    let text = "BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VTIMEZONE\nTZID:A\nEND:VTIMEZONE\nBEGIN:VTIMEZONE\nTZID:B\nEND:VTIMEZONE\nBEGIN:VEVENT\nUID:1\nDTSTART;TZID=A:20260101T100000\nEND:VEVENT\nBEGIN:VEVENT\nUID:2\nDTSTART;TZID=\"B\":20260101T100000\nEND:VEVENT\nBEGIN:VEVENT\nUID:2\nRECURRENCE-ID;TZID=B:20260101T100000\nEND:VEVENT\nEND:VCALENDAR\n";
    let all: Vec<_> = entries(text, Format::ICalendar)
        .filter_map(Result::ok)
        .collect();
    assert_eq!(all.len(), 2, "the exception joins its event");
    assert!(all[0].text.contains("TZID:A") && !all[0].text.contains("TZID:B"));
    assert!(all[1].text.contains("TZID:B") && !all[1].text.contains("TZID:A"));
    assert_eq!(all[1].text.matches("BEGIN:VEVENT").count(), 2);
    assert!(all[1].text.ends_with("END:VEVENT\nEND:VCALENDAR\n"));
}

#[test]
fn folded_uids_are_unfolded_and_line_numbers_count_physical_lines() {
    let text = "\u{feff}BEGIN:VCARD\r\nVERSION:3.0\r\nUID:abc\r\n def\r\nFN:x\r\nEND:VCARD\r\n\r\nBEGIN:VCARD\r\nVERSION:3.0\r\nFN:y\r\nEND:VCARD";
    let all: Vec<_> = entries(text, Format::VCard).collect();
    let lines: Vec<_> = all
        .iter()
        .map(|e| e.as_ref().map(|e| (e.line, e.uid.clone())))
        .collect();
    assert_eq!(
        lines,
        vec![Ok((1, Some("abcdef".to_string()))), Ok((8, None))]
    );
}

#[test]
fn a_card_without_end_is_an_error_and_the_next_card_still_parses() {
    let text = "BEGIN:VCARD\nVERSION:3.0\nFN:a\nBEGIN:VCARD\nVERSION:3.0\nFN:b\nEND:VCARD\nBEGIN:VCARD\nFN:c\n";
    let all: Vec<_> = entries(text, Format::VCard).collect();
    assert_eq!(all.len(), 3);
    assert!(
        matches!(&all[0], Err(e) if e.line == 1 && matches!(e.reason, EntryErrorReason::Misnested { line: 4, .. }))
    );
    assert!(matches!(&all[1], Ok(e) if e.line == 4));
    assert!(
        matches!(&all[2], Err(e) if e.line == 8 && matches!(e.reason, EntryErrorReason::Unterminated { .. }))
    );
}

#[test]
fn over_long_lines_and_entries_are_refused_alone() {
    let limits = Limits {
        max_line_bytes: 40,
        max_entry_bytes: 200,
    };
    let long = "x".repeat(41);
    let big = "NOTE:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".repeat(10);
    let text = format!(
        "BEGIN:VCARD\nNOTE:{long}\nEND:VCARD\nBEGIN:VCARD\nFN:ok\nEND:VCARD\nBEGIN:VCARD\n{big}END:VCARD\n{long}\n"
    );
    let all: Vec<_> = entries_with_limits(&text, Format::VCard, limits).collect();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(
        matches!(&all[0], Err(e) if e.reason == EntryErrorReason::LineTooLong { line: 2, limit: 40 })
    );
    assert!(matches!(&all[1], Ok(e) if e.line == 4));
    assert!(
        matches!(&all[2], Err(e) if e.line == 7 && e.reason == EntryErrorReason::EntryTooLarge { limit: 200 })
    );
    assert!(matches!(&all[3], Err(e) if e.line == 19));
}

#[test]
fn a_ten_megabyte_line_is_refused_with_its_line_number() {
    let text = format!(
        "BEGIN:VCARD\nFN:a\nEND:VCARD\nBEGIN:VCARD\nPHOTO:{}\nEND:VCARD\n",
        "A".repeat(10 << 20)
    );
    let all: Vec<_> = entries(&text, Format::VCard).collect();
    assert_eq!(all.len(), 2);
    assert!(all[0].is_ok());
    assert!(
        matches!(&all[1], Err(e) if e.line == 4 && matches!(e.reason, EntryErrorReason::LineTooLong { line: 5, .. }))
    );
}

#[test]
fn entries_are_read_lazily() {
    // The first entry is ready before the rest of a huge text is looked at: the iterator
    // stops at the first END:VCARD (a text of a million cards would otherwise take long).
    let card = "BEGIN:VCARD\nFN:a\nEND:VCARD\n";
    let text = card.repeat(1_000_000);
    let first = entries(&text, Format::VCard).next();
    assert!(matches!(first, Some(Ok(e)) if e.text == card));
}

#[test]
fn invalid_utf8_names_its_line() {
    assert_eq!(utf8_text(b"a\nb\n\xff"), Err(3));
    assert_eq!(utf8_text(b"a\nb"), Ok("a\nb"));
}

#[test]
fn media_types_name_formats() {
    assert_eq!(
        Format::from_media_type("text/vcard; charset=utf-8"),
        Some(Format::VCard)
    );
    assert_eq!(
        Format::from_media_type("TEXT/CALENDAR"),
        Some(Format::ICalendar)
    );
    assert_eq!(Format::from_media_type("application/json"), None);
}
