//! Golden tests: every fixture under `tests/fixtures/` (written for this crate in the shapes
//! that iOS/macOS, Android, Google, Outlook and Thunderbird write, and from RFC 6350 / 5545
//! examples) is split, converted and exported; the results are compared with the files under
//! `tests/fixtures/golden/`. `KEEPSAKE_BLESS=1 cargo test -p keepsake-formats --test it golden`
//! rewrites them (review the diff!).
//!
//! Per fixture `F` and entry `n` (1-based, errors counted too):
//! - `F.n.json`: the document without its original text (`keepsake.app:original` is checked
//!   separately: its text must be the entry's text and export must give it back);
//! - `F.n.export.vcf|ics`: the converted export of that document (what a client gets after a
//!   device changed the item);
//! - `F.errors.txt`: one line per entry error.

use std::fs;
use std::path::{Path, PathBuf};

use keepsake_formats::{Format, ORIGINAL_PROPERTY, entries, export, to_document};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn bless() -> bool {
    std::env::var_os("KEEPSAKE_BLESS").is_some()
}

fn check_text(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if bless() {
        if let Err(e) = fs::write(path, actual) {
            failures.push(format!("{}: {e}", path.display()));
        }
        return;
    }
    match fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs:\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(e) => failures.push(format!(
            "{}: {e} (run with KEEPSAKE_BLESS=1)",
            path.display()
        )),
    }
}

fn check_json(path: &Path, actual: &Value, failures: &mut Vec<String>) {
    let pretty = serde_json::to_string_pretty(actual).unwrap_or_default() + "\n";
    if bless() {
        check_text(path, &pretty, failures);
        return;
    }
    let expected: Option<Value> = fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if expected.as_ref() != Some(actual) {
        failures.push(format!("{} differs; actual:\n{pretty}", path.display()));
    }
}

/// Runs one fixture; returns (entries converted, entry errors).
fn run(name: &str, failures: &mut Vec<String>) -> (usize, usize) {
    let path = fixtures().join(name);
    let Ok(text) = fs::read_to_string(&path) else {
        failures.push(format!("cannot read {}", path.display()));
        return (0, 0);
    };
    let format = if name.ends_with(".vcf") {
        Format::VCard
    } else {
        Format::ICalendar
    };
    let ext = if format == Format::VCard {
        "vcf"
    } else {
        "ics"
    };
    let golden = fixtures().join("golden");
    let mut errors = String::new();
    let mut ok = 0;
    for (i, entry) in entries(&text, format).enumerate() {
        let n = i + 1;
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push_str(&format!("{n}: {e} (uid {:?})\n", e.uid));
                continue;
            }
        };
        let (kind, mut doc) = match to_document(&entry) {
            Ok(converted) => converted,
            Err(e) => {
                errors.push_str(&format!("{n}: line {}: {e}\n", entry.line));
                continue;
            }
        };
        ok += 1;
        // The original text is the entry's, and comes back unchanged.
        let original = doc
            .get(ORIGINAL_PROPERTY)
            .and_then(|o| o.get("text"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if original.as_deref() != Some(entry.text.as_ref()) {
            failures.push(format!("{name} entry {n}: original text not kept"));
        }
        match export(kind, &doc, format) {
            Ok(t) if t == entry.text => {}
            other => failures.push(format!(
                "{name} entry {n}: export is not the original: {other:?}"
            )),
        }
        if let Some(o) = doc.as_object_mut() {
            o.remove(ORIGINAL_PROPERTY);
        }
        check_json(&golden.join(format!("{name}.{n}.json")), &doc, failures);
        match export(kind, &doc, format) {
            Ok(converted) => {
                check_text(
                    &golden.join(format!("{name}.{n}.export.{ext}")),
                    &converted,
                    failures,
                );
                // The converted export reads back as one entry of the same kind and UID.
                let back: Vec<_> = entries(&converted, format).collect();
                match back.as_slice() {
                    [Ok(again)] if again.kind == kind && again.uid == entry.uid => {
                        if let Err(e) = to_document(again) {
                            failures.push(format!(
                                "{name} entry {n}: export does not convert back: {e}"
                            ));
                        }
                    }
                    other => failures.push(format!("{name} entry {n}: export splits as {other:?}")),
                }
            }
            Err(e) => failures.push(format!("{name} entry {n}: converted export failed: {e}")),
        }
    }
    let errors_path = golden.join(format!("{name}.errors.txt"));
    if !errors.is_empty() || errors_path.exists() {
        check_text(&errors_path, &errors, failures);
    }
    (ok, errors.lines().count())
}

fn golden(name: &str, expect_ok: usize, expect_errors: usize) {
    let mut failures = Vec::new();
    let (ok, errors) = run(name, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        (ok, errors),
        (expect_ok, expect_errors),
        "{name}: entries converted, errors"
    );
}

#[test]
fn ios_vcard_3_0() {
    golden("ios_3.0.vcf", 1, 0);
}

#[test]
fn android_vcard_2_1() {
    golden("android_2.1.vcf", 1, 0);
}

#[test]
fn google_vcard_3_0() {
    golden("google_3.0.vcf", 1, 0);
}

#[test]
fn thunderbird_vcard_4_0() {
    golden("thunderbird_4.0.vcf", 1, 0);
}

#[test]
fn rfc6350_vcard_4_0() {
    golden("rfc6350_4.0.vcf", 1, 0);
}

#[test]
fn several_vcards_with_errors() {
    golden("multi_with_errors.vcf", 3, 2);
}

#[test]
fn google_recurring_event_with_exception_and_vtimezone() {
    golden("google_recurring.ics", 1, 0);
}

#[test]
fn outlook_events_with_windows_time_zones() {
    golden("outlook_two_events.ics", 2, 0);
}

#[test]
fn ios_all_day_event_with_lf_line_ends() {
    golden("ios_allday_lf.ics", 1, 0);
}

#[test]
fn thunderbird_task_and_rfc5545_journal() {
    golden("thunderbird_todo_journal.ics", 2, 0);
}

#[test]
fn several_calendar_items_with_errors() {
    golden("multi_with_errors.ics", 3, 3);
}
