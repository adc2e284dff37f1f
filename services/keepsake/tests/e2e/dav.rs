//! CardDAV and CalDAV (issue 17) through the real server, as a DAV client speaks them:
//! discovery, PUT / GET / DELETE with ETags and preconditions, sync-collection with tokens
//! that are log positions (limits, deletes, tokens from elsewhere), multiget and query, and a
//! REST device and a DAV client of one user seeing each other's changes; a delete made from
//! the DAV side restored by the operator comes back in the next sync.

use base64::Engine as _;
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
    a_dav_client_discovers_writes_reads_and_syncs,
    sync_tokens_are_log_positions_and_foreign_ones_are_refused,
    calendars_answer_multiget_and_component_queries,
    names_survive_rest_puts_and_requests_are_bounded,
    a_refused_request_keeps_its_connection_open,
    a_dav_mass_delete_waits_for_the_users_confirmation,
    simultaneous_creates_of_one_name_make_one_resource,
);

pub(crate) const ADA: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ada-1815\r\nFN:Ada Lovelace\r\nN:Lovelace;Ada;;;\r\nX-CUSTOM-THING:kept as it is\r\nEND:VCARD\r\n";
const ADA_2: &str =
    "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ada-1815\r\nFN:Ada King\r\nN:King;Ada;;;\r\nEND:VCARD\r\n";

pub(crate) fn basic(token: &str) -> String {
    let pair = format!("any-name:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A DAV request with Basic auth: status, headers, body text.
pub(crate) async fn dav(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut req = client
        .request(method, format!("{}{path}", s.base))
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", basic(t));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

/// The texts of every `<tag>` in a multistatus body (tag as written, e.g. `d:href`).
pub(crate) fn all<'a>(body: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    body.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .collect()
}

pub(crate) fn sync_body(token: &str, limit: Option<u32>, data: bool) -> String {
    let limit = limit.map_or(String::new(), |n| {
        format!("<d:limit><d:nresults>{n}</d:nresults></d:limit>")
    });
    let data = if data { "<card:address-data/>" } else { "" };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level>{limit}<d:prop><d:getetag/>{data}</d:prop></d:sync-collection>"#
    )
}

/// (hrefs with a 200 propstat, hrefs answered 404, the new token) of a sync-collection body.
pub(crate) fn sync_parts(body: &str) -> (Vec<String>, Vec<String>, String) {
    let mut live = Vec::new();
    let mut gone = Vec::new();
    for response in all(body, "d:response") {
        let href = all(response, "d:href")
            .first()
            .map(|h| h.to_string())
            .unwrap_or_default();
        if response.contains("HTTP/1.1 404 Not Found") && !response.contains("<d:propstat>") {
            gone.push(href);
        } else if response.contains("HTTP/1.1 200 OK") {
            live.push(href);
        }
    }
    let token = all(body, "d:sync-token")
        .first()
        .map(|t| t.to_string())
        .unwrap_or_default();
    (live, gone, token)
}

async fn a_dav_client_discovers_writes_reads_and_syncs(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let rest = s.register(&user, "rest tablet").await;
    let home = format!("/dav/users/{user}/");
    let book = format!("{home}contacts/");

    // Discovery (RFC 6764, RFC 5397, RFC 6352 7.1.1).
    let (st, h, _) = dav(&s, "PROPFIND", "/.well-known/carddav", None, &[], "").await;
    assert_eq!(st, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(h["location"], "/dav/");
    let (st, h, _) = dav(&s, "PROPFIND", "/dav/", None, &[], "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap_or("")
            .starts_with("Basic realm=\"Keepsake\""),
        "{h:?}"
    );
    let (st, _, body) = dav(
        &s,
        "PROPFIND",
        "/dav/",
        Some("not-a-token"),
        &[("depth", "0")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    let principal =
        r#"<d:propfind xmlns:d="DAV:"><d:prop><d:current-user-principal/></d:prop></d:propfind>"#;
    let (st, _, body) = dav(
        &s,
        "PROPFIND",
        "/dav/",
        Some(&phone),
        &[("depth", "0")],
        principal,
    )
    .await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(
        all(&body, "d:current-user-principal"),
        [format!("<d:href>{home}</d:href>")]
    );
    let homes = r#"<d:propfind xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><card:addressbook-home-set/><cal:calendar-home-set/><d:resourcetype/><d:displayname/><d:unknown-thing/></d:prop></d:propfind>"#;
    let (st, _, body) = dav(
        &s,
        "PROPFIND",
        &home,
        Some(&phone),
        &[("depth", "1")],
        homes,
    )
    .await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(
        all(&body, "card:addressbook-home-set"),
        [format!("<d:href>{home}</d:href>")]
    );
    assert!(
        body.contains("<card:addressbook/>") && body.contains("<cal:calendar/>"),
        "{body}"
    );
    assert!(
        body.contains("<d:unknown-thing/></d:prop><d:status>HTTP/1.1 404 Not Found"),
        "{body}"
    );
    // A principal search finds this user's principal, by its name or with no filter, and
    // nothing for another name.
    let search = |text: &str| {
        format!(
            r#"<d:principal-property-search xmlns:d="DAV:"><d:property-search><d:prop><d:displayname/></d:prop><d:match>{text}</d:match></d:property-search><d:prop><d:displayname/></d:prop></d:principal-property-search>"#
        )
    };
    let (st, _, body) = dav(&s, "REPORT", "/", Some(&phone), &[], &search(&user[..8])).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(all(&body, "d:href"), std::slice::from_ref(&home), "{body}");
    let (_, _, body) = dav(
        &s,
        "REPORT",
        "/dav/",
        Some(&phone),
        &[],
        &search("somebody-else"),
    )
    .await;
    assert!(all(&body, "d:href").is_empty(), "{body}");
    // The caldav library writes the properties it wants beside an empty prop: they are
    // answered all the same (its principal search found nothing before).
    let quirky = format!(
        r#"<D:principal-property-search xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:property-search><D:prop><D:displayname/></D:prop><D:match>{user}</D:match></D:property-search><D:prop/><C:calendar-home-set/><D:displayname/></D:principal-property-search>"#
    );
    let (_, _, body) = dav(&s, "REPORT", "/", Some(&phone), &[], &quirky).await;
    assert_eq!(all(&body, "d:displayname"), [user.as_str()], "{body}");
    assert_eq!(
        all(&body, "cal:calendar-home-set"),
        [format!("<d:href>{home}</d:href>")],
        "{body}"
    );
    // Another user's home is not this device's.
    let (st, _, _) = dav(
        &s,
        "PROPFIND",
        &format!("/dav/users/{}/", uuid()),
        Some(&phone),
        &[],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // An initial sync of the empty address book.
    let (st, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body("", None, false),
    )
    .await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    let (live, gone, first_token) = sync_parts(&body);
    assert!(live.is_empty() && gone.is_empty(), "{body}");

    // PUT a new contact under a name the client chose; a second create of it is refused.
    // Written with `@` percent-encoded; listings give the name back with `@` as it is.
    let ada = format!("{book}ada@home.vcf");
    let ada_encoded = format!("{book}ada%40home.vcf");
    let created = [
        ("content-type", "text/vcard; charset=utf-8"),
        ("if-none-match", "*"),
    ];
    let (st, h, body) = dav(&s, "PUT", &ada_encoded, Some(&phone), &created, ADA).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    assert_eq!(h["etag"], "\"1\"");
    let (st, _, _) = dav(&s, "PUT", &ada, Some(&phone), &created, ADA).await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    // GET gives back the client's own text, with the same ETag.
    let (st, h, text) = dav(&s, "GET", &ada, Some(&phone), &[], "").await;
    assert_eq!((st, text.as_str()), (StatusCode::OK, ADA));
    assert_eq!(h["etag"], "\"1\"");
    assert!(
        h["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/vcard")
    );
    // Not a vCard, or two of them: refused with CardDAV's precondition, nothing written.
    let (st, _, body) = dav(
        &s,
        "PUT",
        &format!("{book}x.vcf"),
        Some(&phone),
        &[],
        "hello",
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(body.contains("valid-address-data"), "{body}");
    let two = format!("{ADA}{ADA_2}");
    let (st, _, _) = dav(&s, "PUT", &format!("{book}y.vcf"), Some(&phone), &[], &two).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // The REST tablet sees the contact; what it pushes, the DAV client's next sync sees.
    let pulled = s.pull(&rest, "").await;
    let contacts: Vec<&Value> = pulled["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .collect();
    assert_eq!(contacts.len(), 1, "{pulled}");
    assert_eq!(contacts[0]["kind"], "contact");
    let ada_id = contacts[0]["item_id"].as_str().expect("id").to_string();
    let grace = uuid();
    s.push(&rest, json!([put(&grace, "contact", json!({"@type": "Card", "version": "1.0", "uid": "grace", "name": {"full": "Grace Hopper"}}))])).await;
    let (st, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body(&first_token, None, true),
    )
    .await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    let (live, _, token) = sync_parts(&body);
    assert_eq!(live, [ada.clone(), format!("{book}{grace}.vcf")], "{body}");
    assert!(
        body.contains("FN:Grace Hopper"),
        "the REST contact is served as a vCard: {body}"
    );
    // Depth-1 PROPFIND lists both with their ETags.
    let (_, _, body) = dav(&s, "PROPFIND", &book, Some(&phone), &[("depth", "1")], "").await;
    assert_eq!(all(&body, "d:getetag").len(), 2, "{body}");

    // An update with a stale ETag is refused; with the current one it applies.
    let (st, _, _) = dav(
        &s,
        "PUT",
        &ada,
        Some(&phone),
        &[("if-match", "\"7\"")],
        ADA_2,
    )
    .await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    let (st, h, _) = dav(
        &s,
        "PUT",
        &ada,
        Some(&phone),
        &[("if-match", "\"1\"")],
        ADA_2,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(h["etag"], "\"2\"");
    let (st, _, _) = dav(&s, "PUT", &ada, Some(&phone), &[("if-match", "\"1\"")], ADA).await;
    assert_eq!(
        st,
        StatusCode::PRECONDITION_FAILED,
        "a lost update is refused"
    );
    let (_, _, text) = dav(&s, "GET", &ada, Some(&phone), &[], "").await;
    assert_eq!(text, ADA_2);

    // DELETE: the next sync says 404 for it; the REST tablet sees the tombstone.
    let (st, _, _) = dav(
        &s,
        "DELETE",
        &ada,
        Some(&phone),
        &[("if-match", "\"1\"")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    let before_delete = s.pull(&rest, "").await["token"].clone();
    let (st, _, _) = dav(
        &s,
        "DELETE",
        &ada,
        Some(&phone),
        &[("if-match", "\"2\"")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = dav(&s, "GET", &ada, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body(&token, None, false),
    )
    .await;
    let (live, gone, token) = sync_parts(&body);
    assert!(live.is_empty(), "{body}");
    assert_eq!(gone, std::slice::from_ref(&ada), "{body}");
    let since = before_delete.as_str().expect("token");
    let pulled = s.pull(&rest, &format!("?since={since}")).await;
    assert_eq!(pulled["changes"][0]["op"], "delete", "{pulled}");

    // The operator restores the user to before the delete: the next DAV sync has it back,
    // under the name the client chose, with the text it last wrote.
    let seq_before = pulled["changes"][0]["seq"].as_u64().expect("seq") - 1;
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/admin/v1/users/{user}/restore"),
            Some(ADMIN),
            Some(
                json!({"as_of_seq": seq_before, "reason": "deleted from the DAV side by mistake"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body(&token, None, true),
    )
    .await;
    let (live, _, _) = sync_parts(&body);
    assert_eq!(live, std::slice::from_ref(&ada), "{body}");
    assert!(body.contains("FN:Ada King"), "{body}");
    let (st, _, text) = dav(&s, "GET", &ada, Some(&phone), &[], "").await;
    assert_eq!((st, text.as_str()), (StatusCode::OK, ADA_2));
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/items/{ada_id}/history"),
            Some(&rest),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // A revoked device is refused at once.
    let devices = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/devices"),
            Some(ADMIN),
            None,
        )
        .await
        .1;
    let phone_id = devices["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "dav phone"))
        .and_then(|d| d["device_id"].as_str())
        .expect("the phone is listed")
        .to_string();
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("/admin/v1/users/{user}/devices/{phone_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert!(st.is_success(), "{v}");
    let (st, _, _) = dav(&s, "GET", &ada, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.stop();
}

async fn sync_tokens_are_log_positions_and_foreign_ones_are_refused(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let book = format!("/dav/users/{user}/contacts/");
    for i in 0..5 {
        let card =
            format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c{i}\r\nFN:Contact {i}\r\nEND:VCARD\r\n");
        let (st, _, body) = dav(
            &s,
            "PUT",
            &format!("{book}c{i}.vcf"),
            Some(&phone),
            &[],
            &card,
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    // Pages of 2: each ends with a 507 for the collection and a token at its last item; the
    // pages together hold every contact once.
    let mut token = String::new();
    let mut seen = Vec::new();
    for page in 0..10 {
        let (st, _, body) = dav(
            &s,
            "REPORT",
            &book,
            Some(&phone),
            &[],
            &sync_body(&token, Some(2), false),
        )
        .await;
        assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
        let truncated = body.contains("507 Insufficient Storage");
        let (live, _, next) = sync_parts(&body);
        assert!(live.len() <= 2, "page {page}: {body}");
        seen.extend(live);
        token = next;
        if !truncated {
            break;
        }
    }
    let want: Vec<String> = (0..5).map(|i| format!("{book}c{i}.vcf")).collect();
    assert_eq!(seen, want);
    // Nothing new: an empty answer, the same position.
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body(&token, None, false),
    )
    .await;
    let (live, gone, same) = sync_parts(&body);
    assert!(
        live.is_empty() && gone.is_empty() && same == token,
        "{body}"
    );

    // An address book query: the contact whose FN equals "Contact 3", and those whose FN
    // does not contain "contact" (none).
    let query = |filter: &str| {
        format!(
            r#"<card:addressbook-query xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><card:filter>{filter}</card:filter></card:addressbook-query>"#
        )
    };
    let (st, _, body) = dav(&s, "REPORT", &book, Some(&phone), &[], &query(r#"<card:prop-filter name="FN"><card:text-match match-type="equals">contact 3</card:text-match></card:prop-filter>"#)).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(all(&body, "d:href"), [format!("{book}c3.vcf")], "{body}");
    let (_, _, body) = dav(&s, "REPORT", &book, Some(&phone), &[], &query(r#"<card:prop-filter name="FN"><card:text-match negate-condition="yes">contact</card:text-match></card:prop-filter>"#)).await;
    assert!(all(&body, "d:href").is_empty(), "{body}");

    // A token of another store, one ahead of the user's log, and garbage: valid-sync-token.
    let other = Env::new(Backend::File).await;
    let t = Server::start(&other, &[]).await;
    let other_phone = t.register(&user, "elsewhere").await;
    let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:z\r\nFN:Z\r\nEND:VCARD\r\n";
    for i in 0..9 {
        dav(
            &t,
            "PUT",
            &format!("{book}z{i}.vcf"),
            Some(&other_phone),
            &[],
            card,
        )
        .await;
    }
    let (_, _, body) = dav(
        &t,
        "REPORT",
        &book,
        Some(&other_phone),
        &[],
        &sync_body("", None, false),
    )
    .await;
    let (_, _, foreign) = sync_parts(&body);
    t.stop();
    for bad in [
        foreign.as_str(),
        "https://keepsake.app/ns/sync/garbage",
        "urn:x",
    ] {
        let (st, _, body) = dav(
            &s,
            "REPORT",
            &book,
            Some(&phone),
            &[],
            &sync_body(bad, None, false),
        )
        .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{bad}: {body}");
        assert!(body.contains("<d:valid-sync-token/>"), "{body}");
    }
    s.stop();
}

const STANDUP: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake e2e//EN\r\nBEGIN:VEVENT\r\nUID:standup@example.org\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261102T090000Z\r\nDURATION:PT15M\r\nSUMMARY:Standup\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
const PASSPORT: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake e2e//EN\r\nBEGIN:VTODO\r\nUID:passport@example.org\r\nDTSTAMP:20261101T090000Z\r\nSUMMARY:Renew passport\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";

async fn calendars_answer_multiget_and_component_queries(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav laptop").await;
    let cal = format!("/dav/users/{user}/calendar/");
    let ics = [("content-type", "text/calendar")];
    let (st, _, body) = dav(
        &s,
        "PUT",
        &format!("{cal}standup.ics"),
        Some(&phone),
        &ics,
        STANDUP,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let (st, _, body) = dav(
        &s,
        "PUT",
        &format!("{cal}passport.ics"),
        Some(&phone),
        &ics,
        PASSPORT,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    // The standup's UID under another name is refused, naming the resource that holds it.
    let (st, _, body) = dav(
        &s,
        "PUT",
        &format!("{cal}standup-copy.ics"),
        Some(&phone),
        &ics,
        STANDUP,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains(&format!(
            "<cal:no-uid-conflict><d:href>{cal}standup.ics</d:href>"
        )),
        "{body}"
    );
    // A vCard is not a calendar item.
    let (st, _, _) = dav(&s, "PUT", &format!("{cal}ada.ics"), Some(&phone), &[], ADA).await;
    assert!(
        st == StatusCode::FORBIDDEN || st == StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{st}"
    );

    let multiget = format!(
        r#"<cal:calendar-multiget xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><cal:calendar-data/></d:prop><d:href>{cal}standup.ics</d:href><d:href>{cal}missing.ics</d:href></cal:calendar-multiget>"#
    );
    let (st, _, body) = dav(&s, "REPORT", &cal, Some(&phone), &[], &multiget).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    let data = all(&body, "cal:calendar-data");
    assert_eq!(data.len(), 1, "{body}");
    assert_eq!(data[0], STANDUP, "the client's own text, as it wrote it");
    assert!(
        body.contains(&format!(
            "<d:href>{cal}missing.ics</d:href><d:status>HTTP/1.1 404 Not Found"
        )),
        "{body}"
    );

    let query = r#"<cal:calendar-query xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/></d:prop><cal:filter><cal:comp-filter name="VCALENDAR"><cal:comp-filter name="VTODO"/></cal:comp-filter></cal:filter></cal:calendar-query>"#;
    let (st, _, body) = dav(&s, "REPORT", &cal, Some(&phone), &[], query).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(
        all(&body, "d:href"),
        [format!("{cal}passport.ics")],
        "{body}"
    );
    // A property filter: the event whose UID is the standup's (how clients find by UID).
    let by_uid = |uid: &str| {
        format!(
            r#"<cal:calendar-query xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/></d:prop><cal:filter><cal:comp-filter name="VCALENDAR"><cal:comp-filter name="VEVENT"><cal:prop-filter name="UID"><cal:text-match collation="i;octet">{uid}</cal:text-match></cal:prop-filter></cal:comp-filter></cal:comp-filter></cal:filter></cal:calendar-query>"#
        )
    };
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &by_uid("standup@example.org"),
    )
    .await;
    assert_eq!(
        all(&body, "d:href"),
        [format!("{cal}standup.ics")],
        "{body}"
    );
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &by_uid("nobody@example.org"),
    )
    .await;
    assert!(all(&body, "d:href").is_empty(), "{body}");
    // A time range: the standup (2026-11-02 09:00Z) is in November, not in December; the task
    // has no times and matches any range (RFC 4791 9.9).
    let ranged = |start: &str, end: &str| {
        format!(
            r#"<cal:calendar-query xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/></d:prop><cal:filter><cal:comp-filter name="VCALENDAR"><cal:comp-filter name="VEVENT"><cal:time-range start="{start}" end="{end}"/></cal:comp-filter></cal:comp-filter></cal:filter></cal:calendar-query>"#
        )
    };
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &ranged("20261101T000000Z", "20261201T000000Z"),
    )
    .await;
    assert_eq!(
        all(&body, "d:href"),
        [format!("{cal}standup.ics")],
        "{body}"
    );
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &ranged("20261201T000000Z", "20270101T000000Z"),
    )
    .await;
    assert!(all(&body, "d:href").is_empty(), "{body}");
    let (st, _, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &ranged("soon", "later"),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(body.contains("valid-filter"), "{body}");
    // Free-busy: the standup's 15 minutes, and nothing on another day.
    let fb = |start: &str, end: &str| {
        format!(
            r#"<cal:free-busy-query xmlns:cal="urn:ietf:params:xml:ns:caldav"><cal:time-range start="{start}" end="{end}"/></cal:free-busy-query>"#
        )
    };
    let (st, h, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &fb("20261101T000000Z", "20261103T000000Z"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(
        h["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/calendar")
    );
    assert!(
        body.contains("FREEBUSY;FBTYPE=BUSY:20261102T090000Z/20261102T091500Z"),
        "{body}"
    );
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &cal,
        Some(&phone),
        &[],
        &fb("20261103T000000Z", "20261104T000000Z"),
    )
    .await;
    assert!(
        body.contains("BEGIN:VFREEBUSY") && !body.contains("FREEBUSY;"),
        "{body}"
    );
    // The collection says what it holds.
    let props = r#"<d:propfind xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav" xmlns:cs="http://calendarserver.org/ns/"><d:prop><cal:supported-calendar-component-set/><cs:getctag/><d:sync-token/></d:prop></d:propfind>"#;
    let (st, _, body) = dav(&s, "PROPFIND", &cal, Some(&phone), &[("depth", "0")], props).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert!(body.contains("<cal:comp name=\"VTODO\"/>"), "{body}");
    assert_eq!(all(&body, "cs:getctag"), all(&body, "d:sync-token"));
    // Each collection's token (and ctag) is its own newest change: a contact moves the
    // address book's, not the calendar's.
    let ctags = || async {
        let mut out = Vec::new();
        for c in ["calendar", "contacts"] {
            let (_, _, body) = dav(
                &s,
                "PROPFIND",
                &format!("/dav/users/{user}/{c}/"),
                Some(&phone),
                &[("depth", "0")],
                props,
            )
            .await;
            out.push(
                all(&body, "cs:getctag")
                    .first()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            );
        }
        out
    };
    let before = ctags().await;
    let (st, _, _) = dav(
        &s,
        "PUT",
        &format!("/dav/users/{user}/contacts/ctag.vcf"),
        Some(&phone),
        &[],
        ADA,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let after = ctags().await;
    assert_eq!(
        after[0], before[0],
        "the calendar's ctag moved for a contact"
    );
    assert_ne!(after[1], before[1], "the address book's ctag did not move");
    // A rename is written (the default calendar's first put); a property that cannot be set
    // fails the whole PROPPATCH (403 for it, 424 for the rest) and writes nothing.
    let rename = r#"<d:propertyupdate xmlns:d="DAV:"><d:set><d:prop><d:displayname>Work</d:displayname></d:prop></d:set></d:propertyupdate>"#;
    let (st, _, body) = dav(&s, "PROPPATCH", &cal, Some(&phone), &[], rename).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert!(
        body.contains("<d:displayname/></d:prop><d:status>HTTP/1.1 200 OK"),
        "{body}"
    );
    let mixed = r#"<d:propertyupdate xmlns:d="DAV:"><d:set><d:prop><d:displayname>Other</d:displayname><d:getetag>x</d:getetag></d:prop></d:set></d:propertyupdate>"#;
    let (st, _, body) = dav(&s, "PROPPATCH", &cal, Some(&phone), &[], mixed).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert!(
        body.contains("<d:displayname/></d:prop><d:status>HTTP/1.1 424 Failed Dependency")
            && body.contains("<d:getetag/></d:prop><d:status>HTTP/1.1 403 Forbidden"),
        "{body}"
    );
    let name = r#"<d:propfind xmlns:d="DAV:"><d:prop><d:displayname/></d:prop></d:propfind>"#;
    let (_, _, body) = dav(&s, "PROPFIND", &cal, Some(&phone), &[("depth", "0")], name).await;
    assert_eq!(all(&body, "d:displayname"), ["Work"], "{body}");

    // A recurring event expanded by the server (RFC 4791 9.6.5): the instances in the range,
    // each a VEVENT in UTC with its RECURRENCE-ID, and no RRULE.
    let weekly = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake e2e//EN\r\nBEGIN:VEVENT\r\n\
        UID:weekly@example.org\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20270104T090000Z\r\n\
        DURATION:PT30M\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\nSUMMARY:Weekly\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let (st, _, _) = dav(
        &s,
        "PUT",
        &format!("{cal}weekly.ics"),
        Some(&phone),
        &ics,
        weekly,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let expand = format!(
        r#"<cal:calendar-multiget xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><cal:calendar-data><cal:expand start="20270110T000000Z" end="20270125T000000Z"/></cal:calendar-data></d:prop><d:href>{cal}weekly.ics</d:href></cal:calendar-multiget>"#
    );
    let (st, _, body) = dav(&s, "REPORT", &cal, Some(&phone), &[], &expand).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    let starts: Vec<&str> = body.lines().filter(|l| l.starts_with("DTSTART")).collect();
    assert_eq!(
        starts,
        ["DTSTART:20270111T090000Z", "DTSTART:20270118T090000Z"],
        "{body}"
    );
    assert!(
        body.contains("RECURRENCE-ID:20270111T090000Z") && !body.contains("RRULE"),
        "{body}"
    );
    s.stop();
}

async fn names_survive_rest_puts_and_requests_are_bounded(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let rest = s.register(&user, "rest tablet").await;
    let book = format!("/dav/users/{user}/contacts/");

    // A name with a literal `%`: written, read back, and listed under the same name.
    let odd = format!("{book}a%25b.vcf");
    let (st, _, body) = dav(&s, "PUT", &odd, Some(&phone), &[], ADA).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let (st, _, text) = dav(&s, "GET", &odd, Some(&phone), &[], "").await;
    assert_eq!((st, text.as_str()), (StatusCode::OK, ADA));
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body("", None, false),
    )
    .await;
    let (live, _, _) = sync_parts(&body);
    assert_eq!(live, std::slice::from_ref(&odd), "{body}");

    // A REST put that leaves the DAV name out moves the item to its id's name: the old name
    // no longer reads or deletes it (a client deleting what looks like a stale copy must not
    // delete the item), and the item is listed once.
    let chosen = format!("{book}foo.vcf");
    let chosen_card = ADA_2.replace("UID:ada-1815", "UID:chosen-1");
    let (st, _, _) = dav(&s, "PUT", &chosen, Some(&phone), &[], &chosen_card).await;
    assert_eq!(st, StatusCode::CREATED);
    let pulled = s.pull(&rest, "").await;
    let item = pulled["changes"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["document"]["keepsake.app:resource"]["name"] == "foo.vcf")
        })
        .expect("the item named foo.vcf")
        .clone();
    let id = item["item_id"].as_str().expect("id").to_string();
    let version = item["version"].as_u64().expect("version");
    s.push(&rest, json!([{"change_id": uuid(), "kind": "contact", "item_id": id, "op": "put",
        "base_version": version,
        "document": {"@type": "Card", "version": "1.0", "uid": "ada-1815", "name": {"full": "Ada via REST"}}}])).await;
    let (st, _, _) = dav(&s, "GET", &chosen, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, _) = dav(&s, "DELETE", &chosen, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let by_id = format!("{book}{id}.vcf");
    let (st, _, text) = dav(&s, "GET", &by_id, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::OK, "the item is still there under its id");
    assert!(text.contains("Ada via REST"), "{text}");
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body("", None, false),
    )
    .await;
    let (live, _, token) = sync_parts(&body);
    assert_eq!(live, [odd.clone(), by_id.clone()], "{body}");
    // Deleted under its id, it is reported gone under its id (not under its old name).
    let (st, _, _) = dav(&s, "DELETE", &by_id, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, _, body) = dav(
        &s,
        "REPORT",
        &book,
        Some(&phone),
        &[],
        &sync_body(&token, None, false),
    )
    .await;
    let (_, gone, _) = sync_parts(&body);
    assert_eq!(gone, [by_id], "{body}");

    // Bounded requests: a multiget of more hrefs than the limit, or asking for too many
    // properties, is refused; an addressbook-query's CardDAV limit is honoured.
    let many: String = (0..1001)
        .map(|i| format!("<d:href>{book}{i}.vcf</d:href>"))
        .collect();
    let multiget = format!(
        r#"<card:addressbook-multiget xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop>{many}</card:addressbook-multiget>"#
    );
    let (st, _, _) = dav(&s, "REPORT", &book, Some(&phone), &[], &multiget).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let props: String = (0..200).map(|i| format!("<x{i}/>")).collect();
    let propfind = format!(r#"<d:propfind xmlns:d="DAV:"><d:prop>{props}</d:prop></d:propfind>"#);
    let (st, _, _) = dav(
        &s,
        "PROPFIND",
        &book,
        Some(&phone),
        &[("depth", "1")],
        &propfind,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let another = ADA.replace("UID:ada-1815", "UID:c-1");
    let (st, _, _) = dav(
        &s,
        "PUT",
        &format!("{book}c.vcf"),
        Some(&phone),
        &[],
        &another,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let query = r#"<card:addressbook-query xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><card:limit><card:nresults>1</card:nresults></card:limit></card:addressbook-query>"#;
    let (st, _, body) = dav(&s, "REPORT", &book, Some(&phone), &[], query).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(all(&body, "d:getetag").len(), 1, "{body}");
    assert!(body.contains("507 Insufficient Storage"), "{body}");
    s.stop();
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body) from `stream`; `None` if
/// the connection closes first.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(head);
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn a_refused_request_keeps_its_connection_open(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    // Clients such as the caldav library send a PROPFIND without credentials, read the 401,
    // and send it again with them on the same connection at once.
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let body =
        r#"<d:propfind xmlns:d="DAV:"><d:prop><d:current-user-principal/></d:prop></d:propfind>"#;
    let request = |auth: &str| {
        format!(
            "PROPFIND /dav/ HTTP/1.1\r\nHost: {addr}\r\nDepth: 0\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n{auth}\r\n",
            body.len()
        )
    };
    // The body follows the headers a moment later, as it does from a client under load.
    stream
        .write_all(request("").as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stream.write_all(body.as_bytes()).await.expect("write");
    let first = read_response(&mut stream).await.expect("an answer");
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    let auth = format!("Authorization: {}\r\n", basic(&phone));
    let sent = stream.write_all(request(&auth).as_bytes()).await.is_ok()
        && stream.write_all(body.as_bytes()).await.is_ok();
    let second = if sent {
        read_response(&mut stream).await
    } else {
        None
    };
    assert!(
        second
            .as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 207")),
        "the connection was closed after the 401: {second:?}"
    );
    s.stop();
}

async fn a_dav_mass_delete_waits_for_the_users_confirmation(backend: Backend) {
    // A wiped phone deleting its address book one resource at a time: with the guard at 3
    // items and half of the live ones, 4 of 8 deletes go through and the 5th is refused until
    // the user confirms from a REST device; every refused delete wrote nothing.
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[("KEEPSAKE_MASS_DELETE_MIN_ITEMS", "3")]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let app = s.register(&user, "keepsake app").await;
    let book = format!("/dav/users/{user}/contacts/");
    for i in 0..8 {
        let card = format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:m{i}\r\nFN:M {i}\r\nEND:VCARD\r\n");
        let (st, _, _) = dav(
            &s,
            "PUT",
            &format!("{book}m{i}.vcf"),
            Some(&phone),
            &[],
            &card,
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    for i in 0..4 {
        let (st, _, body) = dav(
            &s,
            "DELETE",
            &format!("{book}m{i}.vcf"),
            Some(&phone),
            &[],
            "",
        )
        .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "delete {i}: {body}");
    }
    let fifth = format!("{book}m4.vcf");
    let (st, _, body) = dav(&s, "DELETE", &fifth, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("<ks:mass-delete-confirmation/>"), "{body}");
    let (st, _, _) = dav(&s, "GET", &fifth, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::OK, "the refused delete wrote nothing");
    // The user confirms from the app; the phone's deletes go through.
    let (st, v) = s
        .call(
            Method::POST,
            "/v1/mass-delete-confirmation",
            Some(&app),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["minutes"], 10, "{v}");
    for i in 4..8 {
        let (st, _, body) = dav(
            &s,
            "DELETE",
            &format!("{book}m{i}.vcf"),
            Some(&phone),
            &[],
            "",
        )
        .await;
        assert_eq!(
            st,
            StatusCode::NO_CONTENT,
            "delete {i} after the confirmation: {body}"
        );
    }
    s.stop();
}

/// `If-None-Match: *` is a precondition on the store, not on a read before it: eight clients
/// creating one new name at once (each with its own card) make one resource; the seven others
/// are refused with 412, and the resource is the one created (RFC 7232 3.2, RFC 4918 9.7).
async fn simultaneous_creates_of_one_name_make_one_resource(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let path = format!("/dav/users/{user}/contacts/race.vcf");
    for round in 0..3 {
        let path = format!("{path}{round}");
        let cards: Vec<String> = (0..8)
            .map(|i| {
                format!("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:race-{round}-{i}\r\nFN:Racer {i}\r\nEND:VCARD\r\n")
            })
            .collect();
        let puts = cards.iter().map(|card| {
            let (s, phone, path) = (&s, &phone, &path);
            async move {
                let headers = [("content-type", "text/vcard"), ("if-none-match", "*")];
                dav(s, "PUT", path, Some(phone), &headers, card).await
            }
        });
        let answers = futures::future::join_all(puts).await;
        let created: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, (st, _, _))| *st == StatusCode::CREATED)
            .map(|(i, _)| i)
            .collect();
        let refused = answers
            .iter()
            .filter(|(st, _, _)| *st == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!(
            (created.len(), refused),
            (1, 7),
            "round {round}: {:?}",
            answers.iter().map(|a| a.0).collect::<Vec<_>>()
        );
        let (st, h, text) = dav(&s, "GET", &path, Some(&phone), &[], "").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h["etag"], "\"1\"", "created once, never overwritten");
        assert_eq!(text, cards[created[0]]);
    }
}
