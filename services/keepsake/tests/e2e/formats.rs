//! vCard and iCalendar over HTTP (issue 16), on the file store and on S3: import, a second
//! import that writes nothing, export live and as of a moment, `Accept`-based item reads, and
//! bad input refused with its line while the good entries still import.

use std::time::Duration;

use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

macro_rules! file_and_s3 {
    ($($name:ident),* $(,)?) => {
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

file_and_s3!(
    a_vcf_imports_once_and_a_second_import_writes_nothing,
    an_export_as_of_before_a_json_change_gives_back_the_original_text,
    an_ics_imports_and_exports_by_kind,
    items_are_read_as_vcard_or_icalendar_with_the_same_etag,
    bad_files_are_refused_with_their_line_and_the_good_entries_still_import,
    an_operator_imports_large_files_in_batches_with_origin_import,
);

const ADA: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ada-1815\r\nFN:Ada Lovelace\r\nN:Lovelace;Ada;;;\r\nEMAIL;TYPE=INTERNET:ada@example.org\r\nX-CUSTOM-THING:kept as it is\r\nEND:VCARD\r\n";
const GRACE: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:urn:uuid:5d0c1c9e-9a53-4a1e-8d7e-2a4f7b1e3c11\r\nFN:Grace Hopper\r\nTEL;TYPE=cell:+1-555-0100\r\nEND:VCARD\r\n";
// No UID: its ids come from its content.
const ALAN: &str =
    "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Alan Turing\r\nN:Turing;Alan;;;\r\nEND:VCARD\r\n";

const CALENDAR: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake e2e//EN\r\n\
BEGIN:VEVENT\r\nUID:standup-1@example.org\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261102T090000Z\r\nDURATION:PT15M\r\nSUMMARY:Standup\r\nRRULE:FREQ=WEEKLY;BYDAY=MO\r\nEND:VEVENT\r\n\
BEGIN:VTODO\r\nUID:passport-1@example.org\r\nDTSTAMP:20261101T090000Z\r\nSUMMARY:Renew passport\r\nPRIORITY:1\r\nEND:VTODO\r\n\
BEGIN:VJOURNAL\r\nUID:minutes-1@example.org\r\nDTSTAMP:20261101T090000Z\r\nDTSTART;VALUE=DATE:20261101\r\nSUMMARY:Minutes\r\nDESCRIPTION:Plain text body.\r\nEND:VJOURNAL\r\n\
END:VCALENDAR\r\n";

fn code(v: &Value) -> Option<&str> {
    v["code"].as_str()
}

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results")
}

fn statuses(v: &Value) -> Vec<&str> {
    results(v)
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect()
}

/// `keepsake export ARGS` against the server: (exit success, stdout, stderr).
fn cli_export(s: &Server, args: &[&str]) -> (bool, Vec<u8>, String) {
    cli(s, "export", args)
}

/// `keepsake COMMAND ARGS` against the server: (exit success, stdout, stderr).
fn cli(s: &Server, command: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .arg(command)
        .args(args)
        .env("KEEPSAKE_URL", &s.base)
        .env("KEEPSAKE_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run keepsake");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `POST /v1/import` with a content type and a body.
async fn import(
    s: &Server,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let resp = s
        .client
        .post(format!("{}/v1/import", s.base))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("import");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A GET that answers text: status, content type, `x-keepsake-skipped`, ETag and body.
struct TextAnswer {
    status: StatusCode,
    content_type: String,
    skipped: Option<String>,
    etag: Option<String>,
    body: String,
}

async fn get_text(s: &Server, path: &str, token: &str, accept: Option<&str>) -> TextAnswer {
    let mut req = s.client.get(format!("{}{path}", s.base)).bearer_auth(token);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("get");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (status, content_type, skipped, etag) = (
        resp.status(),
        header("content-type").unwrap_or_default(),
        header("x-keepsake-skipped"),
        header("etag"),
    );
    TextAnswer {
        status,
        content_type,
        skipped,
        etag,
        body: resp.text().await.expect("body"),
    }
}

async fn a_vcf_imports_once_and_a_second_import_writes_nothing(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let file = format!("{ADA}{GRACE}{ALAN}");

    let (st, first) = import(&s, &phone, "text/vcard", file.clone()).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert_eq!(statuses(&first), ["applied"; 3], "{first}");
    let lines: Vec<u64> = results(&first)
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, [1, 9, 15], "{first}");
    assert_eq!(results(&first)[0]["uid"], "ada-1815");
    assert!(results(&first)[2].get("uid").is_none(), "{first}");
    for r in results(&first) {
        assert_eq!(r["kind"], "contact");
        assert_eq!(r["version"], 1);
    }
    // One push: every entry in the same batch, the token at its last seq.
    let seqs: Vec<u64> = results(&first)
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The items are ordinary items: pulled, with the original text inside.
    let pulled = s.pull(&phone, "").await;
    let changes = pulled["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 3, "{pulled}");
    let ada = changes
        .iter()
        .find(|c| c["item_id"] == results(&first)[0]["item_id"])
        .expect("ada pulled");
    assert_eq!(ada["document"]["@type"], "Card");
    assert_eq!(ada["document"]["keepsake.app:original"]["text"], ADA);
    // ...and device-attributed in history.
    let item = ada["item_id"].as_str().expect("item id");
    let (st, history) = s
        .call(
            Method::GET,
            &format!("/v1/items/{item}/history"),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{history}");
    assert_eq!(history["versions"][0]["origin"], "device");
    assert!(history["versions"][0]["device_id"].is_string(), "{history}");

    // The same file again: all duplicate, the same items and versions, nothing written.
    let segments = s.segments().await;
    let (st, second) = import(&s, &phone, "text/vcard; charset=utf-8", file).await;
    assert_eq!(st, StatusCode::OK, "{second}");
    assert_eq!(statuses(&second), ["duplicate"; 3], "{second}");
    for (a, b) in results(&first).iter().zip(results(&second)) {
        assert_eq!(
            (&a["item_id"], &a["version"], &a["seq"]),
            (&b["item_id"], &b["version"], &b["seq"])
        );
    }
    assert_eq!(
        s.segments().await,
        segments,
        "a duplicate import writes nothing"
    );
    let (st, events) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/events?after_seq={}", seqs[2]),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{events}");
    assert_eq!(events["events"], json!([]), "nothing new in the log");
}

async fn an_export_as_of_before_a_json_change_gives_back_the_original_text(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let (st, imported) = import(&s, &phone, "text/vcard", format!("{ADA}{GRACE}")).await;
    assert_eq!(st, StatusCode::OK, "{imported}");
    assert_eq!(statuses(&imported), ["applied"; 2], "{imported}");
    let ada = results(&imported)[0]["item_id"]
        .as_str()
        .expect("item id")
        .to_string();

    // Unchanged since the import: the export is the original text, byte for byte.
    let live = get_text(&s, "/v1/export?format=vcard", &phone, None).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.body);
    assert!(
        live.content_type.starts_with("text/vcard"),
        "{}",
        live.content_type
    );
    assert_eq!(live.skipped.as_deref(), Some("0"));
    assert_eq!(live.body.len(), ADA.len() + GRACE.len());
    assert!(
        live.body.contains(ADA) && live.body.contains(GRACE),
        "{}",
        live.body
    );

    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = keepsake_model::Clock::now(&keepsake_model::SystemClock)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A device changes Ada through the JSON API.
    let r = s
        .push(
            &phone,
            json!([{"change_id": uuid(), "kind": "contact", "item_id": ada, "op": "patch",
                    "base_version": 1, "document": {"name": {"full": "Augusta Ada King"}}}]),
        )
        .await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");

    // Now: Ada is converted from her document (her new name, her X- property kept); Grace is
    // still her original text.
    let now = get_text(&s, "/v1/export?format=vcard", &phone, None).await;
    assert_eq!(now.status, StatusCode::OK, "{}", now.body);
    assert!(!now.body.contains(ADA), "{}", now.body);
    assert!(now.body.contains("FN:Augusta Ada King"), "{}", now.body);
    assert!(now.body.contains("X-CUSTOM-THING"), "{}", now.body);
    assert!(now.body.contains(GRACE), "{}", now.body);

    // As of before the change: the original text again, for the device and the operator.
    let q = format!("format=vcard&as_of={before}");
    let then = get_text(&s, &format!("/v1/export?{q}"), &phone, None).await;
    assert_eq!(then.status, StatusCode::OK, "{}", then.body);
    assert_eq!(then.body.len(), ADA.len() + GRACE.len(), "{}", then.body);
    assert!(
        then.body.contains(ADA) && then.body.contains(GRACE),
        "{}",
        then.body
    );
    let admin = get_text(
        &s,
        &format!("/admin/v1/users/{user}/export?{q}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    assert_eq!(admin.body, then.body);
    // The operator's `keepsake export`: the same text, to a file or to stdout.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("contacts.vcf");
    let path = file.to_str().expect("utf-8 path");
    let (ok, _, err) = cli_export(
        &s,
        &[
            "--user", &user, "--format", "vcard", "--as-of", &before, "--output", path,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("the file"), then.body);
    assert!(!dir.path().join("contacts.vcf.partial").exists());
    // The operator's export of now equals the device's.
    let admin_now = get_text(
        &s,
        &format!("/admin/v1/users/{user}/export?format=vcard"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(admin_now.body, now.body);
    let (ok, out, err) = cli_export(&s, &["--user", &user, "--format", "vcard"]);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), now.body);
    // A refused export says why, exits non-zero, and leaves no file.
    let refused = dir.path().join("refused.vcf");
    let (ok, out, err) = cli_export(
        &s,
        &[
            "--user",
            &user,
            "--format",
            "pdf",
            "--output",
            refused.to_str().expect("utf-8 path"),
        ],
    );
    assert!(!ok && out.is_empty(), "{err}");
    assert!(
        err.contains("malformed_request") && err.contains("pdf"),
        "{err}"
    );
    assert!(!refused.exists());
    assert!(!dir.path().join("refused.vcf.partial").exists());

    // Bad queries are 400 malformed_request; tokens on the wrong API are refused.
    for q in [
        "",
        "?format=pdf",
        "?format=vcard&kind=event",
        "?format=icalendar&kind=contact",
        "?format=icalendar&kind=email",
        "?format=vcard&as_of=yesterday",
    ] {
        let (st, v) = s
            .call(Method::GET, &format!("/v1/export{q}"), Some(&phone), None)
            .await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, Some("malformed_request")),
            "{q}: {v}"
        );
    }
    let (st, v) = s
        .call(Method::GET, "/v1/export?format=vcard", Some(ADMIN), None)
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/export?format=vcard"),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
}

async fn an_ics_imports_and_exports_by_kind(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let (st, imported) = import(&s, &phone, "text/calendar", CALENDAR).await;
    assert_eq!(st, StatusCode::OK, "{imported}");
    assert_eq!(statuses(&imported), ["applied"; 3], "{imported}");
    let kinds: Vec<&str> = results(&imported)
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["event", "task", "note"]);
    let (st, again) = import(&s, &phone, "text/calendar", CALENDAR).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(statuses(&again), ["duplicate"; 3], "{again}");

    // Every calendar item: one VCALENDAR each, one after another.
    let all = get_text(&s, "/v1/export?format=icalendar", &phone, None).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert!(
        all.content_type.starts_with("text/calendar"),
        "{}",
        all.content_type
    );
    assert_eq!(
        all.body.matches("BEGIN:VCALENDAR").count(),
        3,
        "{}",
        all.body
    );
    for component in ["BEGIN:VEVENT", "BEGIN:VTODO", "BEGIN:VJOURNAL"] {
        assert_eq!(
            all.body.matches(component).count(),
            1,
            "{component}: {}",
            all.body
        );
    }
    assert!(
        all.body.contains("SUMMARY:Standup") && all.body.contains("RRULE:FREQ=WEEKLY;BYDAY=MO")
    );
    assert!(
        all.body.contains("DESCRIPTION:Plain text body."),
        "{}",
        all.body
    );

    // One kind only.
    let tasks = get_text(&s, "/v1/export?format=icalendar&kind=task", &phone, None).await;
    assert_eq!(tasks.status, StatusCode::OK, "{}", tasks.body);
    assert_eq!(
        tasks.body.matches("BEGIN:VCALENDAR").count(),
        1,
        "{}",
        tasks.body
    );
    assert!(tasks.body.contains("SUMMARY:Renew passport") && !tasks.body.contains("VEVENT"));

    // No contacts: an empty vCard export, not an error.
    let none = get_text(&s, "/v1/export?format=vcard", &phone, None).await;
    assert_eq!((none.status, none.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(none.skipped.as_deref(), Some("0"));
}

async fn items_are_read_as_vcard_or_icalendar_with_the_same_etag(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let phone = s.register(&uuid(), "phone").await;
    let (_, cards) = import(&s, &phone, "text/vcard", ADA).await;
    let (_, events) = import(&s, &phone, "text/calendar", CALENDAR).await;
    let ada = results(&cards)[0]["item_id"]
        .as_str()
        .expect("id")
        .to_string();
    let event = results(&events)[0]["item_id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = |id: &str| format!("/v1/items/{id}");

    let as_json = get_text(&s, &path(&ada), &phone, None).await;
    assert_eq!(as_json.status, StatusCode::OK);
    assert!(as_json.content_type.starts_with("application/json"));
    let as_vcard = get_text(&s, &path(&ada), &phone, Some("text/vcard")).await;
    assert_eq!(as_vcard.status, StatusCode::OK, "{}", as_vcard.body);
    assert!(
        as_vcard.content_type.starts_with("text/vcard"),
        "{}",
        as_vcard.content_type
    );
    assert_eq!(as_vcard.body, ADA);
    assert_eq!(as_vcard.etag, as_json.etag);
    assert_eq!(as_vcard.etag.as_deref(), Some("\"1\""));

    // If-None-Match still answers 304.
    let resp = s
        .client
        .get(format!("{}{}", s.base, path(&ada)))
        .bearer_auth(&phone)
        .header("accept", "text/vcard")
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    let as_ics = get_text(
        &s,
        &path(&event),
        &phone,
        Some("text/calendar; charset=utf-8"),
    )
    .await;
    assert_eq!(as_ics.status, StatusCode::OK, "{}", as_ics.body);
    assert!(as_ics.content_type.starts_with("text/calendar"));
    assert!(as_ics.body.starts_with("BEGIN:VCALENDAR") && as_ics.body.contains("SUMMARY:Standup"));

    // A contact has no iCalendar form and an event no vCard one: 406, unless JSON will do.
    for (id, accept) in [(&ada, "text/calendar"), (&event, "text/vcard")] {
        let (st, v) = {
            let a = get_text(&s, &path(id), &phone, Some(accept)).await;
            (
                a.status,
                serde_json::from_str::<Value>(&a.body).unwrap_or(Value::Null),
            )
        };
        assert_eq!(
            (st, code(&v)),
            (StatusCode::NOT_ACCEPTABLE, Some("not_acceptable")),
            "{accept}: {v}"
        );
    }
    let fallback = get_text(
        &s,
        &path(&ada),
        &phone,
        Some("text/calendar, application/json;q=0.5"),
    )
    .await;
    assert_eq!(fallback.status, StatusCode::OK);
    assert!(fallback.content_type.starts_with("application/json"));
}

async fn bad_files_are_refused_with_their_line_and_the_good_entries_still_import(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[("KEEPSAKE_MAX_CHANGES_PER_PUSH", "5")]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let segments = s.segments().await;

    // Whole-request refusals write nothing.
    let (st, v) = import(&s, &phone, "application/json", ADA).await;
    assert_eq!(
        (st, code(&v)),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        ),
        "{v}"
    );
    let resp = s
        .client
        .post(format!("{}/v1/import", s.base))
        .bearer_auth(&phone)
        .body(ADA)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut latin1 = format!("{ADA}BEGIN:VCARD\r\nVERSION:3.0\r\n").into_bytes();
    latin1.extend_from_slice(b"FN:Fran\xe7oise\r\nEND:VCARD\r\n");
    let (st, v) = import(&s, &phone, "text/vcard", latin1).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, Some("malformed_request")),
        "{v}"
    );
    assert!(
        v["detail"].as_str().unwrap_or("").contains("line 11"),
        "{v}"
    );
    let six: String = (0..6)
        .map(|i| {
            format!("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:many-{i}\r\nFN:Person {i}\r\nEND:VCARD\r\n")
        })
        .collect();
    let (st, v) = import(&s, &phone, "text/vcard", six).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, Some("malformed_request")),
        "{v}"
    );
    // The server stops reading an oversize body and closes the connection: a client of its
    // own, so no later request meets that connection in the pool.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/import", s.base))
        .bearer_auth(&phone)
        .header("content-type", "text/vcard")
        .body(vec![b'A'; 17 * 1024 * 1024])
        .send()
        .await;
    let resp = resp.expect("oversize import answered");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = resp.json().await.expect("problem");
    assert_eq!(code(&v), Some("request_too_large"), "{v}");
    assert_eq!(
        s.segments().await,
        segments,
        "whole-request refusals write nothing"
    );

    // A card without END:VCARD (cut off by the next card), a card that does not convert, and a
    // file cut short: each rejected alone with its line; the good cards are imported.
    let unterminated = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:no-end\r\nFN:No End\r\n";
    let truncated = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:cut\r\nFN:Cut Sh";
    let file = format!("{unterminated}{ADA}{GRACE}{truncated}");
    let (st, v) = import(&s, &phone, "text/vcard", file).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        statuses(&v),
        ["rejected", "applied", "applied", "rejected"],
        "{v}"
    );
    let r = results(&v);
    assert_eq!(
        (r[0]["line"].as_u64(), r[0]["uid"].as_str()),
        (Some(1), Some("no-end")),
        "{v}"
    );
    assert_eq!(r[0]["error"]["code"], "invalid_entry");
    assert!(
        r[0]["error"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("END:VCARD"),
        "{v}"
    );
    assert_eq!(r[1]["line"], 5);
    assert_eq!(r[3]["line"], 19, "{v}");
    assert_eq!(r[3]["error"]["code"], "invalid_entry");

    // A 10 MB line: that card is rejected naming the line; the card after it imports.
    let photo = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:huge\r\nFN:Huge Photo\r\nPHOTO;ENCODING=b;TYPE=JPEG:{}\r\nEND:VCARD\r\n",
        "A".repeat(10 * 1024 * 1024)
    );
    let alan_at = 1 + photo.matches('\n').count();
    let (st, v) = import(&s, &phone, "text/vcard", format!("{photo}{ALAN}")).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "{}",
        v.to_string().chars().take(2000).collect::<String>()
    );
    assert_eq!(statuses(&v), ["rejected", "applied"], "{v}");
    let r = results(&v);
    assert_eq!(r[0]["line"], 1);
    assert!(
        r[0]["error"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("line 5"),
        "{v}"
    );
    assert_eq!(r[1]["line"].as_u64(), Some(alan_at as u64), "{v}");

    // A calendar with a component that is cut short: rejected, the next one imported.
    let broken = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//e2e//EN\r\n\
BEGIN:VTODO\r\nUID:cut-todo\r\nSUMMARY:Cut\r\n\
BEGIN:VEVENT\r\nUID:ok-event\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261102T090000Z\r\nSUMMARY:Fine\r\nEND:VEVENT\r\n\
END:VCALENDAR\r\n";
    let (st, v) = import(&s, &phone, "text/calendar", broken).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r = results(&v);
    assert!(
        r.iter()
            .any(|r| r["status"] == "rejected" && r["line"] == 4),
        "{v}"
    );
    assert!(
        r.iter()
            .any(|r| r["status"] == "applied" && r["uid"] == "ok-event"),
        "{v}"
    );

    // Random text: rejected lines, never a 5xx.
    let (st, v) = import(&s, &phone, "text/calendar", "hello\r\nworld\r\n").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(statuses(&v), ["rejected"], "{v}");
    let (st, v) = import(&s, &phone, "text/vcard", "").await;
    assert_eq!((st, &v["results"]), (StatusCode::OK, &json!([])), "{v}");

    // What was imported is exactly the good entries.
    let pulled = s.pull(&phone, "").await;
    let mut names: Vec<String> = pulled["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| {
            c["document"]["name"]["full"]
                .as_str()
                .or(c["document"]["title"].as_str())
                .map(String::from)
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["Ada Lovelace", "Alan Turing", "Fine", "Grace Hopper"],
        "{pulled}"
    );
}

/// `keepsake import` of a file larger than one push may hold: split here into requests of
/// `--batch` entries, each entry answered with its line in the file; recorded with origin
/// `import` and no device; running it again writes nothing; a card without END is reported with
/// its line and the rest still import. The entries a device imported before (a card without a
/// UID, identified by its text, and a calendar) are duplicates: cutting a file into batches
/// keeps every entry's derived id.
async fn an_operator_imports_large_files_in_batches_with_origin_import(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let (st, v) = import(&s, &phone, "text/vcard", ALAN).await;
    assert_eq!((st, statuses(&v)), (StatusCode::OK, vec!["applied"]), "{v}");
    let (st, v) = import(&s, &phone, "text/calendar", CALENDAR).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(statuses(&v), ["applied"; 3], "{v}");

    let card = |i: usize| {
        format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:bulk-{i}\r\nFN:Person {i}\r\nEND:VCARD\r\n")
    };
    let mut vcf: String = (0..1100).map(card).collect();
    // Line 5501: a card without END (cut off by the next card).
    vcf.push_str("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:cut-short\r\nFN:Cut Short\r\n");
    vcf.push_str(ALAN);
    let dir = tempfile::tempdir().expect("tempdir");
    let vcf_path = dir.path().join("bulk.vcf");
    std::fs::write(&vcf_path, &vcf).expect("write");
    let ics_path = dir.path().join("calendar.ics");
    std::fs::write(&ics_path, CALENDAR).expect("write");
    let (vcf_arg, ics_arg) = (
        vcf_path.to_str().expect("utf-8"),
        ics_path.to_str().expect("utf-8"),
    );

    let (ok, out, err) = cli(
        &s,
        "import",
        &[
            "--user", &user, "--batch", "400", "--json", vcf_arg, ics_arg,
        ],
    );
    assert!(!ok, "a rejected entry makes the exit status 1: {err}");
    let answer: Value = serde_json::from_slice(&out).expect("--json prints JSON");
    let rows = results(&answer);
    let by_status = |st: &str| rows.iter().filter(|r| r["status"] == st).count();
    assert_eq!(
        (
            by_status("applied"),
            by_status("duplicate"),
            by_status("rejected")
        ),
        (1100, 4, 1),
        "{err}"
    );
    assert!(err.contains("400 of 1101 entries sent"), "progress: {err}");
    let cut = rows
        .iter()
        .find(|r| r["status"] == "rejected")
        .expect("the cut card");
    assert_eq!(
        (cut["line"].as_u64(), cut["file"].as_str()),
        (Some(5501), Some(vcf_arg)),
        "{cut}"
    );
    let alan = rows
        .iter()
        .find(|r| r["line"] == 5505)
        .expect("Alan, the last card");
    assert_eq!(alan["status"], "duplicate", "{alan}");
    let last_bulk = rows
        .iter()
        .find(|r| r["line"] == 5496)
        .expect("the last bulk card");
    assert_eq!(
        (last_bulk["status"].as_str(), last_bulk["uid"].as_str()),
        (Some("applied"), Some("bulk-1099")),
        "{last_bulk}"
    );

    // Recorded as the operator's import: origin import, no device.
    let (st, events) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/events?after_seq=5&limit=3"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{events}");
    for e in events["events"].as_array().expect("events") {
        assert_eq!(
            (e["origin"].as_str(), &e["device_id"]),
            (Some("import"), &Value::Null),
            "{e}"
        );
    }
    let all = get_text(&s, "/v1/export?format=vcard", &phone, None).await;
    assert_eq!(all.body.matches("BEGIN:VCARD").count(), 1101);

    // Again: nothing new is written; the table names the rejected card's file and line.
    let (ok, out, err) = cli(&s, "import", &["--user", &user, "--batch", "400", vcf_arg]);
    assert!(!ok);
    let table = String::from_utf8_lossy(&out);
    assert!(
        table.contains("5501") && table.contains("cut-short"),
        "{table}"
    );
    assert!(
        err.contains("1102 entries: 0 applied, 1101 duplicate, 1 rejected"),
        "{err}"
    );
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/events?after_seq=1105&limit=10"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (st, v["events"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{v}"
    );

    // A file without a known extension needs --format; a user id that is not one is refused.
    let odd = dir.path().join("contacts.txt");
    std::fs::write(&odd, ALAN).expect("write");
    let (ok, _, err) = cli(
        &s,
        "import",
        &["--user", &user, odd.to_str().expect("utf-8")],
    );
    assert!(!ok && err.contains("--format"), "{err}");
    let (ok, _, err) = cli(
        &s,
        "import",
        &[
            "--user",
            &user,
            "--format",
            "vcard",
            odd.to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&s, "import", &["--user", "nobody", vcf_arg]);
    assert!(!ok && err.contains("malformed_request"), "{err}");

    // Over HTTP: the operator's token only, the same content types.
    let path = format!("/admin/v1/users/{user}/import");
    let with = |token: &str, content_type: &str| {
        s.client
            .post(format!("{}{path}", s.base))
            .bearer_auth(token.to_string())
            .header("content-type", content_type)
            .body(ALAN)
            .send()
    };
    let r = with(ADMIN, "application/json").await.expect("send");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = with(&phone, "text/vcard").await.expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = with(ADMIN, "text/vcard").await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(statuses(&v), ["duplicate"], "{v}");
}
