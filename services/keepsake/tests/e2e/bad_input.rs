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
    let other = s.register(&uuid(), "someone else").await;
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
