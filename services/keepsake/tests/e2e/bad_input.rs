//! Bad input gets its documented 4xx code and changes nothing.

use base64::Engine as _;
use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

fn code(v: &Value) -> Option<&str> {
    v["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_code_and_writes_nothing() {
    let env = Env::new(Backend::File).await;
    let s = Server::start(
        &env,
        &[
            ("KEEPSAKE_MAX_CHANGES_PER_PUSH", "5"),
            ("KEEPSAKE_MAX_DOCUMENT_BYTES", "1024"),
            ("KEEPSAKE_MAX_REQUEST_BYTES", "65536"),
        ],
    )
    .await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let item = uuid();
    let r = s
        .push(&phone, json!([put(&item, "note", json!({"t": 1}))]))
        .await;
    let tok = r["token"].as_str().expect("token").to_string();
    // Registering is recorded in the log: the other user's device is registered before the log
    // is measured, so that "nothing below wrote anything" holds every bad input to it.
    let other = s.register(&uuid(), "someone else").await;
    let segments = s.segments().await;

    let post = |body: String| s.raw(Method::POST, "/v1/changes", Some(phone.as_str()), body);
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("malformed JSON", "{\"changes\": [}".into(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("truncated JSON", "{\"changes\": [{\"change_id\": \"".into(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("wrong type", json!({"changes": "all of them"}).to_string(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("unknown field", json!({"changes": [], "force": true}).to_string(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("unknown op", json!({"changes": [{"change_id": uuid(), "kind": "note", "item_id": item, "op": "move"}]}).to_string(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("bad uuid", json!({"changes": [{"change_id": "not-a-uuid", "kind": "note", "item_id": item, "op": "delete"}]}).to_string(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("unknown kind", json!({"changes": [{"change_id": uuid(), "kind": "email", "item_id": item, "op": "delete"}]}).to_string(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("put without document", json!({"changes": [{"change_id": uuid(), "kind": "note", "item_id": item, "op": "put"}]}).to_string(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("too many changes", json!({"changes": (0..6).map(|_| put(&uuid(), "note", json!({}))).collect::<Vec<_>>()}).to_string(), StatusCode::BAD_REQUEST, "malformed_request"),
        ("oversize body", json!({"changes": [put(&uuid(), "note", json!({"x": "y".repeat(70_000)}))]}).to_string(), StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
    ];
    for (what, body, status, want) in cases {
        let (got, v) = post(body).await;
        assert_eq!((got, code(&v)), (status, Some(want)), "{what}: {v}");
        assert_eq!(
            v["status"],
            status.as_u16(),
            "{what}: problem+json carries the status"
        );
    }

    // Per-change rejections: answered 200 with a per-change error, nothing written.
    let rejected = s
        .push(
            &phone,
            json!([
                put(&uuid(), "note", json!(["an", "array"])),
                put(&uuid(), "note", json!({"x": "y".repeat(2000)})),
                put(&uuid(), "contact", json!({"@type": "Event"})),
                put(&item, "task", json!({})),
                {"change_id": uuid(), "kind": "note", "item_id": uuid(), "op": "delete"},
            ]),
        )
        .await;
    let codes: Vec<&str> = rejected["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_document",
            "document_too_large",
            "invalid_document",
            "kind_mismatch",
            "not_found"
        ]
    );

    // Tokens: missing, forged, tampered, revoked, wrong API.
    let (st, v) = s.call(Method::GET, "/v1/session", None, None).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let forged = "ks1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (st, v) = s.call(Method::GET, "/v1/session", Some(forged), None).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let mut tampered = phone.clone().into_bytes();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let (st, _) = s
        .call(Method::GET, "/v1/session", Some(&tampered), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/devices"),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "device token on an admin route"
    );
    let (st, v) = s.call(Method::GET, "/v1/session", Some(ADMIN), None).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "operator token on the device API"
    );

    // Another user's device cannot see this user's item.
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/items/{item}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, Some("not_found")));
    let (st, _) = s
        .call(
            Method::GET,
            &format!("/v1/items/{item}/history"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = s
        .call(Method::GET, "/v1/items/not-a-uuid", Some(&phone), None)
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, Some("malformed_request"))
    );

    // Sync tokens: garbage, another store's, ahead of the server.
    let (st, v) = s
        .call(Method::GET, "/v1/changes?since=garbage", Some(&phone), None)
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, Some("invalid_token"))
    );
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&tok)
        .expect("token bytes");
    let mut foreign = raw.clone();
    foreign[5] ^= 0xff;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/changes?since={}", b64(&foreign)),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::GONE, Some("token_from_other_store"))
    );
    let mut ahead = raw.clone();
    ahead[24] = 99;
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/changes?since={}", b64(&ahead)),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, Some("server_behind")),
        "never 'here is your empty account'"
    );
    for q in ["?limit=0", "?limit=5000", "?wait=61", "?limit=x"] {
        let (st, v) = s
            .call(Method::GET, &format!("/v1/changes{q}"), Some(&phone), None)
            .await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, Some("malformed_request")),
            "{q}"
        );
    }

    // Nothing of the above wrote anything.
    assert_eq!(s.segments().await, segments, "the log is unchanged");
    assert_eq!(
        s.pull(&phone, &format!("?since={tok}")).await["changes"],
        json!([])
    );

    // Revocation stops the token at once.
    let (_, devices) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/devices"),
            Some(ADMIN),
            None,
        )
        .await;
    let device_id = devices["devices"][0]["device_id"]
        .as_str()
        .expect("device id")
        .to_string();
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/admin/v1/users/{user}/devices/{device_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = s.call(Method::GET, "/v1/session", Some(&phone), None).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "revoked"
    );
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/admin/v1/users/{user}/devices/{}", uuid()),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // ... and stays revoked after a restart.
    drop(s);
    let s = Server::start(&env, &[]).await;
    let (st, _) = s.call(Method::GET, "/v1/session", Some(&phone), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (_, devices) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/devices"),
            Some(ADMIN),
            None,
        )
        .await;
    assert!(devices["devices"][0]["revoked_at"].is_string(), "{devices}");
    assert!(
        devices.to_string().find("ks1.").is_none(),
        "the device list never shows tokens"
    );
}

/// Documents that strict JSON parsers refuse, as a device writes them, with what the rejection
/// must say. JavaScript clients produce the first by cutting a string inside an emoji.
fn refused_documents() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "lone surrogate in a value",
            r#"{"@type": "Card", "name": "Ada \ud83d"}"#.into(),
            "lone surrogate",
        ),
        (
            "lone surrogate in a key",
            r#"{"@type": "Card", "x": {"\ud83d": 1}}"#.into(),
            "lone surrogate",
        ),
        (
            "1e400",
            r#"{"@type": "Card", "n": 1e400}"#.into(),
            "number out of range",
        ),
        (
            "-1e400",
            r#"{"@type": "Card", "n": -1e400}"#.into(),
            "number out of range",
        ),
        (
            "200 levels of nesting",
            format!(
                r#"{{"@type": "Card", "x": {}{}}}"#,
                "[".repeat(199),
                "]".repeat(199)
            ),
            "nested deeper than 127 levels",
        ),
    ]
}

/// A GET that reports a dropped connection instead of panicking.
async fn get(s: &Server, path: &str, token: &str) -> Result<(StatusCode, String), String> {
    let resp = s
        .client
        .get(format!("{}{path}", s.base))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("GET {path}: no answer ({e})"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("GET {path}: {e}"))?;
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_strict_parsers_refuse_are_rejected_per_change_and_write_nothing() {
    let env = Env::new(Backend::File).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let patched = uuid();
    let r = s
        .push(
            &phone,
            json!([put(
                &patched,
                "contact",
                json!({"@type": "Card", "name": "Ada"})
            )]),
        )
        .await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    let segments = s.segments().await;

    let mut wrong = Vec::new();
    for (what, document, says) in refused_documents() {
        let item = uuid();
        for (op, target) in [("put", item.as_str()), ("patch", patched.as_str())] {
            // Raw text: a serde_json `Value` could not even hold these documents.
            let body = format!(
                r#"{{"changes": [{{"change_id": "{}", "kind": "contact", "item_id": "{target}", "op": "{op}", "document": {document}}}]}}"#,
                uuid()
            );
            let (status, v) = s.raw(Method::POST, "/v1/changes", Some(&phone), body).await;
            let result = &v["results"][0];
            let detail = result["error"]["detail"].as_str().unwrap_or("");
            if status != StatusCode::OK
                || result["status"] != "rejected"
                || result["error"]["code"] != "invalid_document"
                || !detail.contains(says)
            {
                wrong.push(format!(
                    "{op} of {what}: {status} {result}, want rejected invalid_document saying {says:?}"
                ));
            }
        }
        // The refused put wrote nothing: the item does not exist, and has no history.
        for path in [
            format!("/v1/items/{item}"),
            format!("/v1/items/{item}/history"),
        ] {
            match get(&s, &path, &phone).await {
                Ok((StatusCode::NOT_FOUND, _)) => {}
                Ok((st, text)) => wrong.push(format!("{what}: GET {path}: {st} {text}")),
                Err(e) => wrong.push(format!("{what}: {e}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The patched item is untouched, and nothing was written at all.
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/items/{patched}"),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["document"], json!({"@type": "Card", "name": "Ada"}));
    assert_eq!(s.segments().await, segments, "the log is unchanged");
}

/// Appends to a stopped server's file store one segment holding a put of `item` with `text` as
/// its document, continuing the user's log, bypassing staging: what a log written before
/// documents were validated, or damaged, holds.
async fn plant_document(env: &Env, user: &str, item: &str, text: &str) {
    use futures::TryStreamExt as _;
    use keepsake_model::{ChangeId, Document, EventId, IdGenerator as _, RandomIds, UserId};
    use keepsake_store::keys;

    let store = keepsake_store::open_store(&env.url)
        .expect("open store")
        .inner;
    let shards = keepsake_store::read_descriptor(store.as_ref())
        .await
        .expect("read descriptor")
        .expect("descriptor")
        .shard_count;
    let user: UserId = user.parse().expect("user id");
    let shard = keys::shard_for(&user, shards);
    let segments: Vec<keepsake_segment::Segment> =
        keepsake_log::scan_shard(store.clone(), shard, 1, 0, 4)
            .await
            .expect("scan")
            .try_collect()
            .await
            .expect("segments");
    let last = segments.last().expect("the user's shard has segments");
    let events = segments
        .iter()
        .flat_map(|s| &s.events)
        .filter(|e| e.user_id == user);
    let last_seq = events
        .clone()
        .map(|e| e.seq)
        .max()
        .expect("the user has events");
    let item_last = events
        .filter(|e| e.item_id.to_string() == item)
        .max_by_key(|e| e.version)
        .expect("the item has events");
    let ids = RandomIds;
    let event = keepsake_model::Event {
        seq: last_seq + 1,
        event_id: EventId(ids.random()),
        change_id: ChangeId(ids.random()),
        request_id: None,
        op: keepsake_model::Op::Put,
        version: item_last.version + 1,
        // Later than everything before it, so a diff from before it shows it.
        recorded_at: last.meta.last_recorded_at + chrono::Duration::milliseconds(1),
        document: Some(Document::from_stored(text)),
        ..item_last.clone()
    };
    let number = last.meta.segment + 1;
    let meta = keepsake_segment::SegmentMeta {
        segment: number,
        writer_epoch: number,
        batch_id: keepsake_model::BatchId(ids.random()),
        event_count: 1,
        first_recorded_at: event.recorded_at,
        last_recorded_at: event.recorded_at,
        ..last.meta.clone()
    };
    let bytes = keepsake_segment::encode(&[event], &meta).expect("encode");
    store
        .put_opts(
            &keys::segment(shard, number),
            bytes.into(),
            keepsake_store::create_only(),
        )
        .await
        .expect("put segment");
}

/// Every answer is whole JSON: 200, or a 500 problem+json naming `item`; never a dropped
/// connection or text strict parsers refuse.
async fn answer(
    s: &Server,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), String> {
    let mut req = s
        .client
        .request(method.clone(), format!("{}{path}", s.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{method} {path}: no answer ({e})"))?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{method} {path}: {status} {content_type}: not JSON ({e}): {text}"))?;
    let want = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    if content_type != want {
        return Err(format!("{method} {path}: {status} {content_type}: {text}"));
    }
    Ok((status, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_document_strict_parsers_refuse_is_answered_without_dropping_the_connection() {
    let env = Env::new(Backend::File).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let (bad, good) = (uuid(), uuid());
    let card = |name: &str| json!({"@type": "Card", "name": name});
    s.push(
        &phone,
        json!([
            put(&bad, "contact", card("Ada")),
            put(&good, "contact", card("Bob"))
        ]),
    )
    .await;
    let (_, from) = s
        .call(
            Method::GET,
            &format!("/v1/items/{good}/history"),
            Some(&phone),
            None,
        )
        .await;
    let from = from["versions"][0]["recorded_at"]
        .as_str()
        .expect("recorded_at")
        .to_string();
    assert_eq!(s.stop().code(), Some(0));
    // Version 2 of `bad`, as a device could push it before documents were validated.
    plant_document(
        &env,
        &user,
        &bad,
        r#"{"@type": "Card", "name": "Ada \ud83d"}"#,
    )
    .await;
    let s = Server::start(&env, &[]).await;

    // The user's log: seq 1 the phone's registration, 2 and 3 the two puts, 4 the bad version.
    let to = "2999-01-01T00:00:00Z";
    let stale_put = json!({"changes": [{"change_id": uuid(), "kind": "contact", "item_id": bad, "op": "put", "base_version": 1, "document": card("Eve")}]});
    let admin = |p: &str| format!("/admin/v1/users/{user}/{p}");
    let names_bad: Vec<(Method, String, &str, Option<Value>)> = vec![
        (
            Method::GET,
            format!("/v1/items/{bad}"),
            phone.as_str(),
            None,
        ),
        (
            Method::GET,
            format!("/v1/items/{bad}/history"),
            &phone,
            None,
        ),
        (Method::GET, "/v1/changes".into(), &phone, None),
        (Method::POST, "/v1/changes".into(), &phone, Some(stale_put)),
        (Method::GET, admin("items?as_of_seq=4"), ADMIN, None),
        (Method::GET, admin("events"), ADMIN, None),
        (
            Method::GET,
            admin(&format!("diff?from={from}&to={to}")),
            ADMIN,
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, token, body) in names_bad {
        match answer(&s, method.clone(), &path, token, body).await {
            Ok((StatusCode::INTERNAL_SERVER_ERROR, v))
                if v["code"] == "internal"
                    && v["detail"].as_str().is_some_and(|d| {
                        d.contains(&format!("item {bad} version 2")) && d.contains("lone surrogate")
                    }) => {}
            Ok((st, v)) => wrong.push(format!(
                "{method} {path}: {st} {v}, want a 500 naming {bad} version 2 and what is wrong"
            )),
            Err(e) => wrong.push(e),
        }
    }
    // Answers that do not hold the bad document are unaffected.
    let fine: Vec<(String, &str)> = vec![
        (format!("/v1/items/{good}"), phone.as_str()),
        (format!("/v1/items/{good}/history"), &phone),
        (admin("items?as_of_seq=3"), ADMIN),
        (admin("events?limit=3"), ADMIN),
    ];
    for (path, token) in fine {
        match answer(&s, Method::GET, &path, token, None).await {
            Ok((StatusCode::OK, _)) => {}
            Ok((st, v)) => wrong.push(format!("GET {path}: {st} {v}")),
            Err(e) => wrong.push(e),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The device can put the item right; then it shows again.
    let r = s
        .push(&phone, json!([put(&bad, "contact", card("Ada"))]))
        .await;
    assert_eq!(r["results"][0]["version"], 3, "{r}");
    let (st, v) = s
        .call(Method::GET, &format!("/v1/items/{bad}"), Some(&phone), None)
        .await;
    assert_eq!((st, &v["document"]), (StatusCode::OK, &card("Ada")), "{v}");
    assert!(
        !s.logged().iter().any(|l| l.contains("panicked")),
        "no handler panicked"
    );
}
