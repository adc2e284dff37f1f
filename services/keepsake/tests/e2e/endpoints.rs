//! Endpoints and headers of the contract that no other scenario exercises: the session body,
//! ETag / If-None-Match, x-request-id (answered and recorded), restoring one item to a version,
//! events paging, the operator's kind filter, a restore limited to some kinds, and verify over
//! HTTP.

use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_less_travelled_endpoints_answer_as_the_contract_says() {
    let env = Env::new(Backend::File).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;

    // The session says who the token is and what the limits are.
    let (st, session) = s.call(Method::GET, "/v1/session", Some(&phone), None).await;
    assert_eq!(st, StatusCode::OK, "{session}");
    assert_eq!(session["user_id"], json!(user));
    assert!(session["device_id"].as_str().is_some(), "{session}");
    assert!(session["store_id"].as_str().is_some(), "{session}");
    assert_eq!(
        session["kinds"],
        json!(["contact", "event", "task", "note", "collection"])
    );
    for limit in [
        "max_changes_per_push",
        "max_document_bytes",
        "max_page_size",
    ] {
        assert!(session["limits"][limit].as_u64() > Some(0), "{session}");
    }

    // x-request-id: a client's UUID is answered back and recorded in the event.
    let note = uuid();
    let request_id = uuid();
    let resp = s
        .client
        .post(format!("{}/v1/changes", s.base))
        .bearer_auth(&phone)
        .header("x-request-id", &request_id)
        .body(json!({"changes": [put(&note, "note", json!({"title": "v1"}))]}).to_string())
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id.as_str())
    );
    // Without one, the server makes one up and says which.
    let resp = s
        .client
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .expect("healthz");
    assert!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.parse::<uuid::Uuid>().is_ok())
    );
    for v in 2..=3 {
        s.push(
            &phone,
            json!([put(&note, "note", json!({"title": format!("v{v}")}))]),
        )
        .await;
    }
    let contact = uuid();
    s.push(
        &phone,
        json!([put(
            &contact,
            "contact",
            json!({"@type": "Card", "name": {"full": "Ada"}})
        )]),
    )
    .await;

    // ETag is the version; If-None-Match with it is 304 without a body, with another 200.
    let get = |etag: Option<&str>| {
        let mut req = s
            .client
            .get(format!("{}/v1/items/{note}", s.base))
            .bearer_auth(&phone);
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.send()
    };
    let resp = get(None).await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some("\"3\"")
    );
    let resp = get(Some("\"3\"")).await.expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(resp.bytes().await.expect("body").is_empty());
    assert_eq!(
        get(Some("\"2\"")).await.expect("get").status(),
        StatusCode::OK
    );

    // Restoring an item to a version appends a put of that version's document.
    let (st, r) = s
        .call(
            Method::POST,
            &format!("/v1/items/{note}/restore"),
            Some(&phone),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(
        (&r["results"][0]["status"], &r["results"][0]["version"]),
        (&json!("applied"), &json!(4)),
        "{r}"
    );
    let (_, item) = s
        .call(
            Method::GET,
            &format!("/v1/items/{note}"),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(
        (&item["version"], &item["document"]),
        (&json!(4), &json!({"title": "v1"}))
    );
    let (st, r) = s
        .call(
            Method::POST,
            &format!("/v1/items/{note}/restore"),
            Some(&phone),
            Some(json!({"version": 9})),
        )
        .await;
    assert_eq!(
        (st, r["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // Events page by after_seq: seq 1 is the registration, then 3 puts, the contact, the restore.
    let page = |after: u64, limit: u64| {
        let s = &s;
        let user = user.clone();
        async move {
            let (st, v) = s
                .call(
                    Method::GET,
                    &format!("/admin/v1/users/{user}/events?after_seq={after}&limit={limit}"),
                    Some(ADMIN),
                    None,
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            v
        }
    };
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let v = page(after, 2).await;
        let events = v["events"].as_array().expect("events").clone();
        assert!(events.len() <= 2);
        seqs.extend(events.iter().filter_map(|e| e["seq"].as_u64()));
        after = seqs.last().copied().unwrap_or(after);
        if v["has_more"] != true {
            break;
        }
    }
    assert_eq!(seqs, (1..=6).collect::<Vec<u64>>());
    let first_put = page(1, 1).await;
    assert_eq!(first_put["events"][0]["request_id"], json!(request_id));

    // The operator's kind filter.
    let kinds_at = |query: String| {
        let s = &s;
        let user = user.clone();
        async move {
            let (st, v) = s
                .call(
                    Method::GET,
                    &format!("/admin/v1/users/{user}/items?{query}"),
                    Some(ADMIN),
                    None,
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            let mut kinds: Vec<String> = v["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|i| i["kind"].as_str().map(String::from))
                .collect();
            kinds.sort();
            kinds
        }
    };
    assert_eq!(
        kinds_at("as_of_seq=6".into()).await,
        vec!["contact", "note"]
    );
    assert_eq!(
        kinds_at("as_of_seq=6&kind=contact".into()).await,
        vec!["contact"]
    );
    assert_eq!(
        kinds_at("as_of_seq=6&kind=note,contact".into()).await,
        vec!["contact", "note"]
    );
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/items?as_of_seq=6&kind=card"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_request"))
    );

    // A restore limited to notes, to before anything was pushed: the note goes, the contact stays.
    let (st, r) = s
        .call(
            Method::POST,
            &format!("/admin/v1/users/{user}/restore"),
            Some(ADMIN),
            Some(json!({"as_of_seq": 1, "reason": "notes only", "kinds": ["note"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(
        (&r["removed"], &r["restored"], &r["reverted"]),
        (&json!(1), &json!(0), &json!(0))
    );
    let pulled = s.pull(&phone, "").await;
    let live: Vec<&Value> = pulled["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| &c["kind"])
        .collect();
    assert_eq!(live, vec![&json!("contact")], "{pulled}");

    // Verify over HTTP.
    let (st, v) = s
        .call(Method::GET, "/admin/v1/verify", Some(ADMIN), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["segments"].as_u64() >= Some(7), "{v}");
}
