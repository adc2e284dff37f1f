//! Address books and calendars a user makes (issue 17): MKCALENDAR and extended MKCOL, their
//! properties, which items each holds (over DAV and over REST), moves between them as sync
//! sees them, and deleting one as ordinary, restorable delete events.

use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::dav::{ADA, all, dav, sync_body, sync_parts};
use crate::harness::*;

macro_rules! file_and_s3 {
    ($($name:ident),* $(,)?) => {
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

file_and_s3!(collections_are_made_renamed_synced_and_deleted_restorably);

const TODO: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake e2e//EN\r\nBEGIN:VTODO\r\nUID:todo-1@example.org\r\nDTSTAMP:20261201T090000Z\r\nSUMMARY:File the report\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";
const EVENT: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake e2e//EN\r\nBEGIN:VEVENT\r\nUID:event-1@example.org\r\nDTSTAMP:20261201T090000Z\r\nDTSTART:20261202T100000Z\r\nDURATION:PT1H\r\nSUMMARY:Review\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

/// The hrefs, displaynames and colours a Depth 1 PROPFIND of the home lists.
async fn listed(s: &Server, home: &str, token: &str) -> String {
    let ask = r#"<d:propfind xmlns:d="DAV:" xmlns:ical="http://apple.com/ns/ical/" xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:prop><d:resourcetype/><d:displayname/><ical:calendar-color/><cal:supported-calendar-component-set/></d:prop></d:propfind>"#;
    let (st, _, body) = dav(s, "PROPFIND", home, Some(token), &[("depth", "1")], ask).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    body
}

async fn collections_are_made_renamed_synced_and_deleted_restorably(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "dav phone").await;
    let rest = s.register(&user, "rest tablet").await;
    let home = format!("/dav/users/{user}/");
    let cal = format!("{home}calendar/");
    let work = format!("{home}work/");

    // MKCALENDAR with a name, a colour and the components it takes.
    let mkcalendar = r##"<?xml version="1.0" encoding="utf-8"?><c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav" xmlns:ical="http://apple.com/ns/ical/"><d:set><d:prop><d:displayname>Work ä</d:displayname><ical:calendar-color>#ff0000</ical:calendar-color><c:supported-calendar-component-set><c:comp name="VTODO"/></c:supported-calendar-component-set><c:schedule-calendar-transp><c:opaque/></c:schedule-calendar-transp></d:prop></d:set></c:mkcalendar>"##;
    let (st, _, body) = dav(&s, "MKCALENDAR", &work, Some(&phone), &[], mkcalendar).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let (st, _, _) = dav(&s, "MKCALENDAR", &work, Some(&phone), &[], mkcalendar).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "a name that exists");
    let (st, _, _) = dav(&s, "MKCALENDAR", &cal, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "the default exists");
    // Extended MKCOL (RFC 5689) of an address book whose name needs escaping, sent as
    // vdirsyncer sends it: no trailing slash.
    let friends = format!("{home}Friends%20@%20home/");
    let mkcol = r#"<d:mkcol xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/><card:addressbook/></d:resourcetype><d:displayname>Friends</d:displayname></d:prop></d:set></d:mkcol>"#;
    let (st, _, body) = dav(
        &s,
        "MKCOL",
        &format!("{home}Friends%20%40%20home"),
        Some(&phone),
        &[],
        mkcol,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    // A plain collection is not something this server holds.
    let (st, _, body) = dav(&s, "MKCOL", &format!("{home}plain/"), Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("valid-resourcetype"), "{body}");
    // Another device of another user reaches none of it.
    let other = s.register(&uuid(), "stranger").await;
    let (st, _, _) = dav(&s, "PROPFIND", &work, Some(&other), &[], "").await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let body = listed(&s, &home, &phone).await;
    let hrefs = all(&body, "d:href");
    for want in [&home, &format!("{home}contacts/"), &cal, &work, &friends] {
        assert!(hrefs.contains(&want.as_str()), "{want} in {body}");
    }
    assert!(
        body.contains("<d:displayname>Work ä</d:displayname>"),
        "{body}"
    );
    assert!(
        body.contains("<ical:calendar-color>#ff0000</ical:calendar-color>"),
        "{body}"
    );
    assert!(
        body.contains("<d:displayname>Friends</d:displayname>"),
        "{body}"
    );

    // Items go where they are put, and a calendar takes only its components.
    let (st, _, body) = dav(&s, "PUT", &format!("{work}e.ics"), Some(&phone), &[], EVENT).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("supported-calendar-component"), "{body}");
    let todo = format!("{work}todo.ics");
    let (st, _, _) = dav(&s, "PUT", &todo, Some(&phone), &[], TODO).await;
    assert_eq!(st, StatusCode::CREATED);
    let event = format!("{cal}event.ics");
    let (st, _, _) = dav(&s, "PUT", &event, Some(&phone), &[], EVENT).await;
    assert_eq!(st, StatusCode::CREATED);
    let ada = format!("{friends}ada.vcf");
    let (st, _, _) = dav(&s, "PUT", &ada, Some(&phone), &[], ADA).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _, _) = dav(
        &s,
        "PUT",
        &format!("{home}nowhere/x.ics"),
        Some(&phone),
        &[],
        TODO,
    )
    .await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "a PUT into a collection that does not exist"
    );
    // The same UID may be in two collections (it is unique per collection).
    let (st, _, _) = dav(
        &s,
        "PUT",
        &format!("{cal}todo-copy.ics"),
        Some(&phone),
        &[],
        TODO,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _, _) = dav(
        &s,
        "DELETE",
        &format!("{cal}todo-copy.ics"),
        Some(&phone),
        &[],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let sync = |c: String, token: String| {
        let s = &s;
        let phone = &phone;
        async move {
            let (st, _, body) = dav(
                s,
                "REPORT",
                &c,
                Some(phone),
                &[],
                &sync_body(&token, None, false),
            )
            .await;
            assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
            sync_parts(&body)
        }
    };
    let (live, _, work_token) = sync(work.clone(), String::new()).await;
    assert_eq!(live, std::slice::from_ref(&todo));
    let (live, _, cal_token) = sync(cal.clone(), String::new()).await;
    assert_eq!(live, std::slice::from_ref(&event));
    let (live, _, _) = sync(friends.clone(), String::new()).await;
    assert_eq!(live, std::slice::from_ref(&ada));
    let (live, _, _) = sync(format!("{home}contacts/"), String::new()).await;
    assert!(
        live.is_empty(),
        "the default address book holds none of them"
    );
    let (st, _, _) = dav(&s, "GET", &format!("{cal}todo.ics"), Some(&phone), &[], "").await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "an item is read in its own collection only"
    );

    // Over REST: the collections are items of kind collection, and each item names its own.
    let pulled = s.pull(&rest, "").await;
    let changes = pulled["changes"].as_array().cloned().unwrap_or_default();
    let of_kind = |k: &str| {
        changes
            .iter()
            .filter(|c| c["kind"] == k)
            .cloned()
            .collect::<Vec<Value>>()
    };
    let collections = of_kind("collection");
    assert_eq!(collections.len(), 2, "{pulled}");
    let work_doc = collections
        .iter()
        .find(|c| c["document"]["name"] == "Work ä")
        .expect("the work calendar over REST");
    let work_id = work_doc["item_id"].as_str().expect("id").to_string();
    assert_eq!(work_doc["document"]["holds"], "calendar");
    assert_eq!(work_doc["document"]["color"], "#ff0000");
    let task = of_kind("task")
        .into_iter()
        .next()
        .expect("the task over REST");
    assert_eq!(
        task["document"]["keepsake.app:collection"],
        work_id.as_str()
    );
    let task_id = task["item_id"].as_str().expect("id").to_string();
    // A REST edit that leaves the collection out keeps the task where it is.
    let mut edited = task["document"].clone();
    if let Some(o) = edited.as_object_mut() {
        o.remove("keepsake.app:collection");
        o.insert("title".into(), json!("File the report today"));
    }
    let out = s.push(&rest, json!([put(&task_id, "task", edited)])).await;
    assert_eq!(out["results"][0]["status"], "applied", "{out}");
    let (live, gone, next) = sync(work.clone(), work_token.clone()).await;
    assert_eq!((live, gone), (vec![todo.clone()], vec![]));
    // A REST move to the default calendar: the work calendar's next sync says it left, the
    // default's lists it (under its item id: the name it was given was the work calendar's).
    let out = s
        .push(&rest, json!([{"change_id": uuid(), "kind": "task", "item_id": task_id, "op": "patch", "document": {"keepsake.app:collection": null}}]))
        .await;
    assert_eq!(out["results"][0]["status"], "applied", "{out}");
    let (live, gone, work_token) = sync(work.clone(), next).await;
    assert_eq!((live, gone), (vec![], vec![todo.clone()]));
    let (live, _, _) = sync(cal.clone(), cal_token.clone()).await;
    assert_eq!(live, vec![format!("{cal}{task_id}.ics")]);
    // Naming a collection that does not exist, or one that holds contacts, is refused.
    let friends_id = collections
        .iter()
        .find(|c| c["document"]["holds"] == "contacts")
        .and_then(|c| c["item_id"].as_str())
        .expect("friends id")
        .to_string();
    for wrong in [uuid(), friends_id.clone()] {
        let out = s
            .push(&rest, json!([{"change_id": uuid(), "kind": "task", "item_id": task_id, "op": "patch", "document": {"keepsake.app:collection": wrong}}]))
            .await;
        assert_eq!(
            out["results"][0]["error"]["code"], "invalid_document",
            "{out}"
        );
    }
    // Back into the work calendar.
    let out = s
        .push(&rest, json!([{"change_id": uuid(), "kind": "task", "item_id": task_id, "op": "patch", "document": {"keepsake.app:collection": work_id}}]))
        .await;
    assert_eq!(out["results"][0]["status"], "applied", "{out}");
    // Back under the name it was given there, which its document kept.
    let (live, _, _) = sync(work.clone(), work_token).await;
    assert_eq!(live, std::slice::from_ref(&todo));
    // A REST push may not delete a collection that still holds items.
    let out = s
        .push(&rest, json!([{"change_id": uuid(), "kind": "collection", "item_id": friends_id, "op": "delete"}]))
        .await;
    assert_eq!(
        out["results"][0]["error"]["code"], "invalid_change",
        "{out}"
    );

    // A client that names events by their UID (Thunderbird, the caldav library) moves one to
    // another calendar by a PUT under the same `<uuid>.ics` name there, then a DELETE here:
    // the PUT makes a new item, never overwrites or moves the first.
    let other = format!("{home}other/");
    let (st, _, _) = dav(&s, "MKCALENDAR", &other, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::CREATED);
    let uid = "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b";
    let named_event = EVENT.replace("UID:event-1@example.org", &format!("UID:{uid}"));
    let here = format!("{cal}{uid}.ics");
    let there = format!("{other}{uid}.ics");
    let (st, _, _) = dav(&s, "PUT", &here, Some(&phone), &[], &named_event).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _, body) = dav(
        &s,
        "PUT",
        &there,
        Some(&phone),
        &[("if-none-match", "*")],
        &named_event.replace("SUMMARY:Review", "SUMMARY:Review, moved"),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let (st, _, text) = dav(&s, "GET", &here, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        text.contains("SUMMARY:Review\r\n"),
        "the first is untouched: {text}"
    );
    let (live, _, _) = sync(other.clone(), String::new()).await;
    assert_eq!(
        live,
        std::slice::from_ref(&there),
        "listed under the name it was put"
    );
    let (st, _, _) = dav(&s, "DELETE", &here, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, text) = dav(&s, "GET", &there, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::OK);
    assert!(text.contains("SUMMARY:Review, moved"), "{text}");
    let (st, _, _) = dav(&s, "DELETE", &there, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = dav(&s, "DELETE", &other, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // A default's id is not a name for a new collection.
    let contacts_id = keepsake_model::Holds::Contacts
        .default_id(keepsake_model::UserId(user.parse().expect("uuid")));
    let (st, _, _) = dav(
        &s,
        "MKCALENDAR",
        &format!("{home}{contacts_id}/"),
        Some(&phone),
        &[],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);

    // PROPPATCH: a new colour and name; removing a colour that is not set succeeds.
    let patch = r##"<d:propertyupdate xmlns:d="DAV:" xmlns:ical="http://apple.com/ns/ical/"><d:remove><d:prop><ical:calendar-order/></d:prop></d:remove><d:set><d:prop><ical:calendar-color>#00ff00</ical:calendar-color><d:displayname>Office</d:displayname></d:prop></d:set></d:propertyupdate>"##;
    let (st, _, body) = dav(&s, "PROPPATCH", &work, Some(&phone), &[], patch).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    // Every property's status, not a substring of the body: the href holds a random uuid,
    // which may contain "403".
    let statuses = all(&body, "d:status");
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == "HTTP/1.1 200 OK"),
        "{body}"
    );
    let body = listed(&s, &home, &phone).await;
    assert!(
        body.contains("<d:displayname>Office</d:displayname>"),
        "{body}"
    );
    assert!(
        body.contains("<ical:calendar-color>#00ff00</ical:calendar-color>"),
        "{body}"
    );

    // Deleting the calendar deletes its task, then it: one request, ordinary delete events.
    let before = s.pull(&rest, "").await["token"].clone();
    let (st, _, body) = dav(&s, "DELETE", &work, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let (st, _, _) = dav(&s, "PROPFIND", &work, Some(&phone), &[("depth", "0")], "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let body = listed(&s, &home, &phone).await;
    assert!(!all(&body, "d:href").contains(&work.as_str()), "{body}");
    let since = before.as_str().expect("token");
    let pulled = s.pull(&rest, &format!("?since={since}")).await;
    let deleted: Vec<(String, String)> = pulled["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or("").to_string(),
                c["op"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        deleted,
        [
            ("task".to_string(), "delete".to_string()),
            ("collection".to_string(), "delete".to_string())
        ],
        "{pulled}"
    );
    // The default calendar is not deleted.
    let (st, _, _) = dav(&s, "DELETE", &cal, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // The operator restores the user to before the delete: the calendar and its task are back.
    let seq_before = pulled["changes"][0]["seq"].as_u64().expect("seq") - 1;
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/admin/v1/users/{user}/restore"),
            Some(ADMIN),
            Some(json!({"as_of_seq": seq_before, "reason": "calendar deleted by mistake"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let body = listed(&s, &home, &phone).await;
    assert!(
        body.contains("<d:displayname>Office</d:displayname>"),
        "{body}"
    );
    let (live, _, _) = sync(work.clone(), String::new()).await;
    assert_eq!(live, std::slice::from_ref(&todo));
    let (st, _, text) = dav(&s, "GET", &todo, Some(&phone), &[], "").await;
    assert_eq!(st, StatusCode::OK);
    assert!(text.contains("SUMMARY:File the report today"), "{text}");
    assert!(!text.contains("keepsake.app"), "{text}");

    // A user has at most 100 collections, the defaults included (each is a pass over the
    // user's items in every listing of the home).
    let body = listed(&s, &home, &phone).await;
    let have = all(&body, "d:href").len() - 1;
    for n in have..100 {
        let (st, _, body) = dav(
            &s,
            "MKCALENDAR",
            &format!("{home}c{n}/"),
            Some(&phone),
            &[],
            "",
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{n}: {body}");
    }
    let (st, _, body) = dav(
        &s,
        "MKCALENDAR",
        &format!("{home}one-more/"),
        Some(&phone),
        &[],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body.contains("too_many_collections"), "{body}");
}
