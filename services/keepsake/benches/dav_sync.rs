//! CardDAV / CalDAV sync as a client does it, against the release `keepsake` binary on a fresh
//! file store (fsync on): a 10,000-contact address book and a 10,000-event calendar (filled
//! through `POST /v1/import`), then
//!
//! - the initial sync: `sync-collection` with ETags only, then multigets of the data in pages
//!   of 500 (what DAVx5 and vdirsyncer do), timed whole;
//! - `PROPFIND` Depth 1 of the collection with ETags (what older clients do instead);
//! - a delta sync after 10 changes pushed by another device: `sync-collection` from the last
//!   token plus a multiget of the changed items, timed per round.
//!
//! `KEEPSAKE_DAV_ITEMS` (default 10000) and `KEEPSAKE_DAV_ROUNDS` (default 30) change the run.
#![allow(clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use keepsake_model::{IdGenerator, RandomIds};
use serde_json::{Value, json};

const ADMIN: &str = "dav-bench-operator-token-0123456789";
const PAGE: usize = 500;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn line(name: &str, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "  {name:<44} n={:<3} p50 {:>8.1} ms  p99 {:>8.1} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
}

fn between<'a>(body: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    body.split(open)
        .skip(1)
        .filter_map(|rest| rest.split(close).next())
        .collect()
}

struct Client {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Client {
    async fn dav(&self, method: &str, path: &str, depth: Option<&str>, body: String) -> String {
        let mut req = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{}{path}", self.base),
            )
            .header("authorization", &self.auth)
            .header("content-type", "application/xml")
            .body(body);
        if let Some(d) = depth {
            req = req.header("depth", d);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 207, "{method} {path}");
        resp.text().await.expect("body")
    }

    /// A sync-collection with ETags only: the hrefs it lists and the new token.
    async fn sync(&self, collection: &str, token: &str) -> (Vec<String>, String) {
        let body = format!(
            r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#
        );
        let text = self.dav("REPORT", collection, None, body).await;
        let hrefs = between(&text, "<d:href>", "</d:href>")
            .into_iter()
            .map(str::to_string)
            .collect();
        let token = between(&text, "<d:sync-token>", "</d:sync-token>")
            .first()
            .map(|t| t.to_string())
            .expect("a token");
        (hrefs, token)
    }

    /// Multigets of `hrefs` in pages of 500; the number of items with data.
    async fn multiget(&self, collection: &str, calendar: bool, hrefs: &[String]) -> usize {
        let mut got = 0;
        for page in hrefs.chunks(PAGE) {
            let hrefs: String = page
                .iter()
                .map(|h| format!("<d:href>{h}</d:href>"))
                .collect();
            let body = if calendar {
                format!(
                    r#"<cal:calendar-multiget xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><cal:calendar-data/></d:prop>{hrefs}</cal:calendar-multiget>"#
                )
            } else {
                format!(
                    r#"<card:addressbook-multiget xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><card:address-data/></d:prop>{hrefs}</card:addressbook-multiget>"#
                )
            };
            let text = self.dav("REPORT", collection, None, body).await;
            got += text
                .matches(if calendar {
                    "<cal:calendar-data>"
                } else {
                    "<card:address-data>"
                })
                .count();
        }
        got
    }
}

fn vcard(i: usize) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bench-contact-{i}\r\nFN:Person Number {i}\r\nN:Number;Person;{i};;\r\n\
         EMAIL;TYPE=INTERNET,WORK:person.{i}@example.org\r\nTEL;TYPE=CELL:+1-555-{:04}\r\n\
         ADR;TYPE=HOME:;;{i} Main Street;Springfield;;12345;USA\r\nNOTE:Met at the conference in {}.\r\nEND:VCARD\r\n",
        i % 10_000,
        2000 + i % 26
    )
}

fn vevent(i: usize) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake bench//EN\r\nBEGIN:VEVENT\r\nUID:bench-event-{i}\r\n\
         DTSTAMP:20261101T090000Z\r\nDTSTART:2026{:02}{:02}T{:02}0000Z\r\nDURATION:PT45M\r\n\
         SUMMARY:Meeting {i}\r\nLOCATION:Room {}\r\nDESCRIPTION:Agenda item {i}: review and plan.\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        1 + i % 12,
        1 + i % 28,
        8 + i % 10,
        i % 40
    )
}

fn main() {
    let items = env("KEEPSAKE_DAV_ITEMS", 10_000) as usize;
    let rounds = env("KEEPSAKE_DAV_ROUNDS", 30) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("data").display().to_string();
    let (mut child, base) =
        support::serve(&[("KEEPSAKE_STORE", &store), ("KEEPSAKE_ADMIN_TOKEN", ADMIN)]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
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
        let user = RandomIds.random();
        let register = |name: &'static str| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let v: Value = http
                    .post(format!("{base}/admin/v1/users/{user}/devices"))
                    .bearer_auth(ADMIN)
                    .body(json!({"name": name}).to_string())
                    .send()
                    .await
                    .expect("register")
                    .json()
                    .await
                    .expect("json");
                v["token"].as_str().expect("token").to_string()
            }
        };
        let phone = register("dav phone").await;
        let tablet = register("rest tablet").await;
        println!("dav sync: release server, file store (fsync), one user, {items} contacts and {items} events");

        let filled = Instant::now();
        for (media, make) in [
            ("text/vcard", vcard as fn(usize) -> String),
            ("text/calendar", vevent),
        ] {
            for chunk in (0..items).collect::<Vec<_>>().chunks(1000) {
                let text: String = chunk.iter().map(|i| make(*i)).collect();
                let r = http
                    .post(format!("{base}/v1/import"))
                    .bearer_auth(&tablet)
                    .header("content-type", media)
                    .body(text)
                    .send()
                    .await
                    .expect("import");
                assert!(r.status().is_success(), "import: {}", r.status());
            }
        }
        println!("  fill through POST /v1/import: {:.1} s", filled.elapsed().as_secs_f64());

        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("phone:{phone}"))
        );
        let client = Client { http: http.clone(), base: base.clone(), auth };
        let contacts = format!("/dav/users/{user}/contacts/");
        let calendar = format!("/dav/users/{user}/calendar/");

        for (name, collection, is_calendar) in [
            ("contacts", &contacts, false),
            ("events", &calendar, true),
        ] {
            let mut lat = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let (hrefs, _) = client.sync(collection, "").await;
                let got = client.multiget(collection, is_calendar, &hrefs).await;
                lat.push(t.elapsed());
                assert_eq!(got, items, "every {name} arrives");
            }
            line(&format!("initial sync, {items} {name} (sync + multiget/500)"), lat);
            let mut lat = Vec::new();
            for _ in 0..10 {
                let t = Instant::now();
                let text = client
                    .dav(
                        "PROPFIND",
                        collection,
                        Some("1"),
                        r#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#.into(),
                    )
                    .await;
                lat.push(t.elapsed());
                assert_eq!(text.matches("<d:getetag>").count(), items, "{name}");
            }
            line(&format!("PROPFIND depth 1, {items} {name} (ETags)"), lat);
        }

        // Delta syncs: another device changes 10 contacts, the DAV client syncs them.
        let (_, mut token) = client.sync(&contacts, "").await;
        let pulled: Value = http
            .get(format!("{base}/v1/changes?limit=1000"))
            .bearer_auth(&tablet)
            .send()
            .await
            .expect("pull")
            .json()
            .await
            .expect("json");
        let known: Vec<(String, u64)> = pulled["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["kind"] == "contact")
            .map(|c| {
                (
                    c["item_id"].as_str().expect("id").to_string(),
                    c["version"].as_u64().expect("version"),
                )
            })
            .collect();
        let mut versions = known.clone();
        let mut lat = Vec::new();
        for round in 0..rounds {
            let changes: Vec<Value> = (0..10)
                .map(|k| {
                    let slot = (round * 10 + k) % versions.len();
                    let (id, version) = &versions[slot];
                    json!({"change_id": RandomIds.random(), "kind": "contact", "item_id": id,
                           "op": "patch", "base_version": version,
                           "document": {"notes": {"n1": {"note": format!("round {round}")}}}})
                })
                .collect();
            let r: Value = http
                .post(format!("{base}/v1/changes"))
                .bearer_auth(&tablet)
                .body(json!({"changes": changes}).to_string())
                .send()
                .await
                .expect("push")
                .json()
                .await
                .expect("json");
            for (k, result) in r["results"].as_array().expect("results").iter().enumerate() {
                let slot = (round * 10 + k) % versions.len();
                versions[slot].1 = result["version"].as_u64().expect("applied");
            }
            let t = Instant::now();
            let (hrefs, next) = client.sync(&contacts, &token).await;
            let got = client.multiget(&contacts, false, &hrefs).await;
            lat.push(t.elapsed());
            assert_eq!(got, 10, "round {round}: {hrefs:?}");
            token = next;
        }
        line("delta sync after 10 changes (sync + multiget)", lat);
    });
    let _ = child.kill();
    let _ = child.wait();
}
