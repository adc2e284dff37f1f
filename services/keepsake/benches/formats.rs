//! vCard and iCalendar import and export at the size of a real address book or calendar
//! (issue 16): a 10,000-contact `.vcf` and a 10,000-event `.ics`, imported with
//! `keepsake import` into the release server on a fresh file store (fsync on) and exported with
//! `GET /admin/v1/users/{id}/export`. Prints entries per second each way, the server's peak
//! resident memory (VmHWM) after each step, and the in-process cost of splitting and converting
//! alone (no HTTP, no log), so that the server's share shows.
//!
//! `KEEPSAKE_FORMATS_ENTRIES` (default 10000) changes the size.
#![allow(clippy::expect_used, clippy::print_stdout)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use keepsake_formats::Format;
use keepsake_model::{IdGenerator, RandomIds, UserId};
use serde_json::Value;

const ADMIN: &str = "formats-operator-token-0123456789";

/// A contact in the shape phones write: name parts, two emails, phones, an address, a note.
fn card(i: usize) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//iPhone OS 17.0//EN\r\n\
         UID:{i:08x}-5d0c-4a1e-8d7e-2a4f7b1e3c11\r\nN:Person{i};Given{i};Middle;;\r\n\
         FN:Given{i} Middle Person{i}\r\nORG:Example Corp {m};\r\nTITLE:Engineer\r\n\
         EMAIL;type=INTERNET;type=HOME;type=pref:given{i}@example.org\r\n\
         EMAIL;type=INTERNET;type=WORK:g.person{i}@work.example.com\r\n\
         TEL;type=CELL;type=VOICE;type=pref:+1 555 {a:04}\r\nTEL;type=WORK;type=VOICE:+1 555 {b:04}\r\n\
         ADR;type=HOME;type=pref:;;{i} Main Street;Springfield;IL;62701;USA\r\n\
         NOTE:Met at the conference in {y}.\r\nBDAY:19{bd:02}-0{mo}-1{d}\r\nX-ABUID:{i}:ABPerson\r\n\
         END:VCARD\r\n",
        m = i % 97,
        a = i % 10_000,
        b = (i * 7) % 10_000,
        y = 2000 + i % 25,
        bd = 50 + i % 50,
        mo = 1 + i % 9,
        d = i % 10,
    )
}

/// An event in the shape calendar apps write: times with a time zone, a location, a
/// description, an alarm; every tenth one weekly.
fn event(i: usize) -> String {
    let rrule = if i % 10 == 0 {
        "RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=10\r\n"
    } else {
        ""
    };
    format!(
        "BEGIN:VEVENT\r\nUID:event-{i}@example.org\r\nDTSTAMP:20261101T090000Z\r\n\
         DTSTART;TZID=Europe/Berlin:2026{mo:02}{d:02}T{h:02}0000\r\n\
         DTEND;TZID=Europe/Berlin:2026{mo:02}{d:02}T{h2:02}0000\r\n{rrule}\
         SUMMARY:Meeting {i}\r\nLOCATION:Room {r}\r\nDESCRIPTION:Agenda for meeting {i}: \
         plans\\, numbers and next steps.\r\nCATEGORIES:Work\r\n\
         BEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:Reminder\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\n\
         END:VEVENT\r\n",
        mo = 1 + i % 12,
        d = 1 + i % 28,
        h = 8 + i % 9,
        h2 = 9 + i % 9,
        r = i % 40,
    )
}

const VTIMEZONE: &str = "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nBEGIN:STANDARD\r\n\
DTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nTZOFFSETFROM:+0200\r\n\
TZOFFSETTO:+0100\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\n\
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\n\
END:DAYLIGHT\r\nEND:VTIMEZONE\r\n";

fn calendar(n: usize) -> String {
    let mut s = String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake bench//EN\r\n");
    s.push_str(VTIMEZONE);
    for i in 0..n {
        s.push_str(&event(i));
    }
    s.push_str("END:VCALENDAR\r\n");
    s
}

/// The server's peak resident memory so far, in MiB.
fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Splitting and converting alone, then writing the converted documents back: entries/s.
fn in_process(name: &str, text: &str, format: Format, n: usize) {
    let started = Instant::now();
    let mut docs = Vec::with_capacity(n);
    for entry in keepsake_formats::entries(text, format) {
        let entry = entry.expect("entry splits");
        docs.push(keepsake_formats::to_document(&entry).expect("converts"));
    }
    let split = started.elapsed();
    assert_eq!(docs.len(), n);
    let started = Instant::now();
    let mut bytes = 0;
    for (kind, doc) in &docs {
        bytes += keepsake_formats::export(*kind, doc, format)
            .expect("exports")
            .len();
    }
    let export = started.elapsed();
    println!(
        "  {name:<26} split+convert {:>8.0} entries/s   export {:>8.0} entries/s   ({} KiB out)",
        n as f64 / split.as_secs_f64(),
        n as f64 / export.as_secs_f64(),
        bytes / 1024
    );
}

fn main() {
    let n = std::env::var("KEEPSAKE_FORMATS_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000usize);
    let vcf: String = (0..n).map(card).collect();
    let ics = calendar(n);
    println!(
        "formats: {n} contacts ({} KiB .vcf), {n} events ({} KiB .ics)",
        vcf.len() / 1024,
        ics.len() / 1024
    );
    println!("in process (keepsake-formats only):");
    in_process("contacts", &vcf, Format::VCard, n);
    in_process("events", &ics, Format::ICalendar, n);

    let dir = tempfile::tempdir().expect("tempdir");
    let vcf_path = dir.path().join("contacts.vcf");
    let ics_path = dir.path().join("events.ics");
    std::fs::write(&vcf_path, &vcf).expect("write");
    std::fs::write(&ics_path, &ics).expect("write");
    let store = dir.path().join("data").display().to_string();
    let (mut child, base) =
        support::serve(&[("KEEPSAKE_STORE", &store), ("KEEPSAKE_ADMIN_TOKEN", ADMIN)]);
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        while http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    println!("over HTTP (release server, file store, fsync on; server peak RSS after each step):");
    println!("  {:<26} {:>9.1} MiB", "server started", peak_mib(pid));
    let user: UserId = UserId(RandomIds.random());
    let user = user.0.to_string();
    for (name, path, format, kind) in [
        ("import contacts", &vcf_path, "vcard", "contact"),
        ("import events", &ics_path, "icalendar", "event"),
    ] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_keepsake"))
            .args(["import", "--user", &user, "--json"])
            .arg(path)
            .env("KEEPSAKE_URL", &base)
            .env("KEEPSAKE_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("keepsake import");
        let secs = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        let applied = v["results"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|x| x["status"] == "applied").count());
        assert_eq!(applied, n, "{name}: every entry applied");
        println!(
            "  {name:<26} {:>9.1} MiB   {:>8.0} entries/s ({secs:.2} s)",
            peak_mib(pid),
            n as f64 / secs
        );
        let out_path = dir.path().join(format!("export-{kind}"));
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_keepsake"))
            .args([
                "export", "--user", &user, "--format", format, "--kind", kind, "--output",
            ])
            .arg(&out_path)
            .env("KEEPSAKE_URL", &base)
            .env("KEEPSAKE_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("keepsake export");
        let secs = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = std::fs::read_to_string(&out_path).expect("the export");
        let begin = if format == "vcard" {
            "BEGIN:VCARD"
        } else {
            "BEGIN:VEVENT"
        };
        assert_eq!(
            body.matches(begin).count(),
            n,
            "{name}: every entry exported"
        );
        println!(
            "  {:<26} {:>9.1} MiB   {:>8.0} entries/s ({secs:.2} s, {} KiB)",
            format!("export {kind}s"),
            peak_mib(pid),
            n as f64 / secs,
            body.len() / 1024
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
