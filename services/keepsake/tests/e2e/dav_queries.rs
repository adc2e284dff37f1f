//! The finer parts of CalDAV and CardDAV queries through the real server: `param-filter`s, a
//! property's own `time-range`, a `comp-filter` on `VALARM`, and `calendar-data` shaped by
//! `limit-recurrence-set` and by `expand` (alarms kept).

use keepsake_tests::Backend;
use reqwest::StatusCode;

use crate::dav::{all, dav};
use crate::harness::*;

macro_rules! file_and_s3 {
    ($($name:ident),* $(,)?) => {
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

file_and_s3!(queries_filter_by_parameters_times_and_alarms);

const ACCEPTED: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//e2e//EN\r\nBEGIN:VEVENT\r\nUID:a\r\n\
    DTSTAMP:20261101T120000Z\r\nDTSTART:20261102T090000Z\r\nDURATION:PT1H\r\nSUMMARY:Accepted\r\n\
    ATTENDEE;PARTSTAT=ACCEPTED:mailto:ada@example.org\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\n\
    DESCRIPTION:soon\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
const DECLINED: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//e2e//EN\r\nBEGIN:VEVENT\r\nUID:d\r\n\
    DTSTAMP:20261105T120000Z\r\nDTSTART:20261102T090000Z\r\nDURATION:PT1H\r\nSUMMARY:Declined\r\n\
    ATTENDEE;PARTSTAT=DECLINED:mailto:ada@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
const WEEKLY: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//e2e//EN\r\nBEGIN:VEVENT\r\nUID:w\r\n\
    DTSTAMP:20261101T000000Z\r\nDTSTART:20261102T100000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\n\
    SUMMARY:Weekly\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:w\r\nTRIGGER:-PT5M\r\nEND:VALARM\r\n\
    END:VEVENT\r\nBEGIN:VEVENT\r\nUID:w\r\nDTSTAMP:20261101T000000Z\r\nRECURRENCE-ID:20261109T100000Z\r\n\
    DTSTART:20261109T160000Z\r\nDURATION:PT1H\r\nSUMMARY:Early moved\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\n\
    UID:w\r\nDTSTAMP:20261101T000000Z\r\nRECURRENCE-ID:20261123T100000Z\r\nDTSTART:20261123T160000Z\r\n\
    DURATION:PT1H\r\nSUMMARY:Late moved\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
const WORK_PHONE: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c1\r\nFN:Ada\r\nTEL;TYPE=work,voice:+1-555-0100\r\nEND:VCARD\r\n";
const HOME_PHONE: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c2\r\nFN:Grace\r\nTEL;TYPE=home:+1-555-0101\r\nEND:VCARD\r\n";

fn query(vevent: &str) -> String {
    format!(
        r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/></d:prop><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT">{vevent}</c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#
    )
}

async fn queries_filter_by_parameters_times_and_alarms(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let cal = format!("/dav/users/{user}/calendar/");
    let book = format!("/dav/users/{user}/contacts/");
    for (name, text) in [("a.ics", ACCEPTED), ("d.ics", DECLINED), ("w.ics", WEEKLY)] {
        let (st, _, body) = dav(&s, "PUT", &format!("{cal}{name}"), Some(&phone), &[], text).await;
        assert_eq!(st, StatusCode::CREATED, "{name}: {body}");
    }
    for (name, text) in [("c1.vcf", WORK_PHONE), ("c2.vcf", HOME_PHONE)] {
        let (st, _, body) = dav(&s, "PUT", &format!("{book}{name}"), Some(&phone), &[], text).await;
        assert_eq!(st, StatusCode::CREATED, "{name}: {body}");
    }
    let found = |body: String| -> Vec<String> {
        let mut names: Vec<String> = all(&body, "d:href")
            .iter()
            .filter_map(|h| h.rsplit('/').next().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let ask = |path: String, body: String| {
        let s = &s;
        let phone = &phone;
        async move {
            let (st, _, out) = dav(s, "REPORT", &path, Some(phone), &[("depth", "1")], &body).await;
            assert_eq!(st, StatusCode::MULTI_STATUS, "{out}");
            out
        }
    };

    // A param-filter on ATTENDEE's PARTSTAT.
    let partstat = |v: &str| {
        query(&format!(
            r#"<c:prop-filter name="ATTENDEE"><c:param-filter name="PARTSTAT"><c:text-match collation="i;ascii-casemap">{v}</c:text-match></c:param-filter></c:prop-filter>"#
        ))
    };
    assert_eq!(
        found(ask(cal.clone(), partstat("ACCEPTED")).await),
        ["a.ics"]
    );
    assert_eq!(
        found(ask(cal.clone(), partstat("DECLINED")).await),
        ["d.ics"]
    );
    let no_partstat = query(
        r#"<c:prop-filter name="ATTENDEE"><c:param-filter name="PARTSTAT"><c:is-not-defined/></c:param-filter></c:prop-filter>"#,
    );
    assert!(found(ask(cal.clone(), no_partstat).await).is_empty());

    // A property's own time range: DTSTAMP.
    let stamped = query(
        r#"<c:prop-filter name="DTSTAMP"><c:time-range start="20261104T000000Z" end="20261106T000000Z"/></c:prop-filter>"#,
    );
    assert_eq!(found(ask(cal.clone(), stamped).await), ["d.ics"]);

    // A VALARM comp-filter: the accepted event's alarm fires at 08:45 on Nov 2, the weekly
    // one's at 09:55 on each Monday (and 15:55 on the moved Nov 9).
    let alarm = |start: &str, end: &str| {
        query(&format!(
            r#"<c:comp-filter name="VALARM"><c:time-range start="{start}" end="{end}"/></c:comp-filter>"#
        ))
    };
    assert_eq!(
        found(ask(cal.clone(), alarm("20261102T084000Z", "20261102T085000Z")).await),
        ["a.ics"]
    );
    assert_eq!(
        found(ask(cal.clone(), alarm("20261116T095000Z", "20261116T100000Z")).await),
        ["w.ics"]
    );
    assert!(
        found(ask(cal.clone(), alarm("20261102T120000Z", "20261102T130000Z")).await).is_empty()
    );
    let no_alarm = query(r#"<c:comp-filter name="VALARM"><c:is-not-defined/></c:comp-filter>"#);
    assert_eq!(found(ask(cal.clone(), no_alarm).await), ["d.ics"]);

    // calendar-data shaped: the master and only the exceptions in range; the instances with
    // their alarms.
    let multiget = |data: &str| {
        format!(
            r#"<c:calendar-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><c:calendar-data>{data}</c:calendar-data></d:prop><d:href>{cal}w.ics</d:href></c:calendar-multiget>"#
        )
    };
    let limited = ask(
        cal.clone(),
        multiget(r#"<c:limit-recurrence-set start="20261120T000000Z" end="20261201T000000Z"/>"#),
    )
    .await;
    assert!(limited.contains("RRULE:FREQ=WEEKLY"), "{limited}");
    assert!(limited.contains("SUMMARY:Late moved"), "{limited}");
    assert!(!limited.contains("SUMMARY:Early moved"), "{limited}");
    let expanded = ask(
        cal.clone(),
        multiget(r#"<c:expand start="20261101T000000Z" end="20261110T000000Z"/>"#),
    )
    .await;
    assert_eq!(expanded.matches("BEGIN:VEVENT").count(), 2, "{expanded}");
    assert!(expanded.contains("SUMMARY:Early moved"), "{expanded}");
    assert_eq!(
        expanded.matches("TRIGGER:-PT5M").count(),
        1,
        "the master's instance keeps its alarm (the moved one had none): {expanded}"
    );
    let (st, _, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &multiget(r#"<c:limit-recurrence-set start="20261201T000000Z" end="20261101T000000Z"/>"#),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("valid-filter"), "{body}");

    // An address book param-filter: TYPE among several values.
    let card_query = |t: &str| {
        format!(
            r#"<card:addressbook-query xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><card:filter><card:prop-filter name="TEL"><card:param-filter name="TYPE"><card:text-match match-type="equals">{t}</card:text-match></card:param-filter></card:prop-filter></card:filter></card:addressbook-query>"#
        )
    };
    assert_eq!(
        found(ask(book.clone(), card_query("work")).await),
        ["c1.vcf"]
    );
    assert_eq!(
        found(ask(book.clone(), card_query("home")).await),
        ["c2.vcf"]
    );
    assert!(found(ask(book.clone(), card_query("fax")).await).is_empty());
}
