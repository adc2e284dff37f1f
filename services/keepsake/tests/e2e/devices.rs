//! Registering and revoking devices are recorded in the user's log (DESIGN.md promise 7): the
//! audit trail says who could reach a user's data and when. On the file store and on S3.

use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

mod file {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registrations_and_revocations_are_events_in_the_users_log() {
        super::registrations_and_revocations_are_events_in_the_users_log(
            keepsake_tests::Backend::File,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_device_is_refused_everywhere_even_mid_long_poll() {
        super::a_revoked_device_is_refused_everywhere_even_mid_long_poll(
            keepsake_tests::Backend::File,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_cannot_keep_its_revocation_out_of_the_log() {
        super::a_device_cannot_keep_its_revocation_out_of_the_log(keepsake_tests::Backend::File)
            .await
    }
}
mod s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registrations_and_revocations_are_events_in_the_users_log() {
        super::registrations_and_revocations_are_events_in_the_users_log(
            keepsake_tests::Backend::S3,
        )
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_device_is_refused_everywhere_even_mid_long_poll() {
        super::a_revoked_device_is_refused_everywhere_even_mid_long_poll(
            keepsake_tests::Backend::S3,
        )
        .await
    }
}

async fn register(s: &Server, user: &str, name: &str) -> (String, String, String) {
    let resp = s
        .client
        .post(format!("{}/admin/v1/users/{user}/devices", s.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(json!({"name": name}).to_string())
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_string();
    let v: Value = resp.json().await.expect("json");
    let device = v["device_id"].as_str().expect("device_id").to_string();
    let token = v["token"].as_str().expect("token").to_string();
    (device, token, request_id)
}

async fn events(s: &Server, user: &str) -> Vec<Value> {
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/events?after_seq=0&limit=100"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["events"].as_array().expect("events").clone()
}

/// The device ids live (registered, not revoked) in the user's state at `query`.
async fn devices_at(s: &Server, user: &str, query: &str) -> Vec<String> {
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/items?{query}&kind=device"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut ids: Vec<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["item_id"].as_str().expect("item_id").to_string())
        .collect();
    ids.sort();
    ids
}

async fn revoke(s: &Server, user: &str, device: &str) {
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("/admin/v1/users/{user}/devices/{device}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
}

async fn registrations_and_revocations_are_events_in_the_users_log(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();

    // Registering records a put of kind device, origin operator, carrying the request id.
    let (phone, phone_token, register_request) = register(&s, &user, "Ada's phone").await;
    let log = events(&s, &user).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let e = &log[0];
    assert_eq!(
        (
            &e["kind"],
            &e["op"],
            &e["origin"],
            &e["item_id"],
            &e["version"]
        ),
        (
            &json!("device"),
            &json!("put"),
            &json!("operator"),
            &json!(phone),
            &json!(1)
        ),
        "{e}"
    );
    assert_eq!(e["device_id"], Value::Null, "{e}");
    assert_eq!(e["request_id"], json!(register_request), "{e}");
    assert_eq!(e["document"]["name"], "Ada's phone", "{e}");
    assert!(
        !e.to_string().contains("ks1."),
        "the log never holds a token"
    );

    // The phone's own data lands after it; a second device joins.
    let contact = uuid();
    s.push(
        &phone_token,
        json!([put(
            &contact,
            "contact",
            json!({"@type": "Card", "name": {"full": "A"}})
        )]),
    )
    .await;
    let (laptop, laptop_token, _) = register(&s, &user, "Ada's laptop").await;
    assert_eq!(events(&s, &user).await.len(), 3);

    // Revoking records a delete; revoking again (a retry) writes nothing more.
    revoke(&s, &user, &phone).await;
    revoke(&s, &user, &phone).await;
    let log = events(&s, &user).await;
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(
        (
            &log[3]["kind"],
            &log[3]["op"],
            &log[3]["item_id"],
            &log[3]["version"]
        ),
        (&json!("device"), &json!("delete"), &json!(phone), &json!(2))
    );

    // Who could reach the data, at any moment: the state at each seq lists the live devices.
    let mut both = vec![phone.clone(), laptop.clone()];
    both.sort();
    assert_eq!(
        devices_at(&s, &user, "as_of_seq=0").await,
        Vec::<String>::new()
    );
    assert_eq!(
        devices_at(&s, &user, "as_of_seq=2").await,
        vec![phone.clone()]
    );
    assert_eq!(devices_at(&s, &user, "as_of_seq=3").await, both);
    assert_eq!(
        devices_at(&s, &user, "as_of_seq=4").await,
        vec![laptop.clone()]
    );

    // Devices are not the user's data: never pulled, fetched or pushed by a device, and not
    // in the state an operator reads unless asked for by kind.
    let pulled = s.pull(&laptop_token, "").await;
    let kinds: Vec<&str> = pulled["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["contact"], "{pulled}");
    let (st, _) = s
        .call(
            Method::GET,
            &format!("/v1/items/{laptop}"),
            Some(&laptop_token),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .call(
            Method::GET,
            &format!("/v1/items/{laptop}/history"),
            Some(&laptop_token),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let forged = s
        .push(
            &laptop_token,
            json!([{"change_id": uuid(), "kind": "device", "item_id": phone, "op": "put",
                    "document": {"@type": "Device", "name": "not revoked"}}]),
        )
        .await;
    assert_eq!(
        forged["results"][0]["error"]["code"], "invalid_change",
        "{forged}"
    );
    let (_, items) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/items?as_of_seq=4"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(items["items"].as_array().map(Vec::len), Some(1), "{items}");

    // A restore brings back data, never devices: to a moment before any device existed it
    // removes the contact and leaves the laptop registered (and its token working).
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/admin/v1/users/{user}/restore"),
            Some(ADMIN),
            Some(json!({"as_of_seq": 0, "reason": "test", "kinds": ["device"]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/admin/v1/users/{user}/restore"),
            Some(ADMIN),
            Some(json!({"as_of_seq": 0, "reason": "test"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["removed"], 1, "{v}");
    assert_eq!(
        devices_at(&s, &user, "as_of_seq=5").await,
        vec![laptop.clone()]
    );
    let (st, _) = s
        .call(Method::GET, "/v1/session", Some(&laptop_token), None)
        .await;
    assert_eq!(st, StatusCode::OK);

    // The trail survives a restart.
    drop(s);
    let s = Server::start(&env, &[]).await;
    assert_eq!(events(&s, &user).await.len(), 5);
    assert_eq!(devices_at(&s, &user, "as_of_seq=5").await, vec![laptop]);
}

async fn a_revoked_device_is_refused_everywhere_even_mid_long_poll(backend: Backend) {
    let env = Env::new(backend).await;
    let s = std::sync::Arc::new(Server::start(&env, &[]).await);
    let user = uuid();
    let (phone, phone_token, _) = register(&s, &user, "phone").await;
    let (_, tablet_token, _) = register(&s, &user, "tablet").await;
    let since = s.pull(&phone_token, "").await["token"]
        .as_str()
        .expect("token")
        .to_string();

    // The phone's long poll is waiting (the server says so) when the phone is revoked ...
    let waiter = {
        let (s, phone_token) = (s.clone(), phone_token.clone());
        tokio::spawn(async move {
            s.call(
                Method::GET,
                &format!("/v1/changes?since={since}&wait=30"),
                Some(&phone_token),
                None,
            )
            .await
        })
    };
    s.until_metric("keepsake_long_polls_waiting", 1).await;
    revoke(&s, &user, &phone).await;
    // ... and the tablet then pushes: the poll wakes, and must not hand the new data over.
    let secret = uuid();
    s.push(
        &tablet_token,
        json!([put(
            &secret,
            "note",
            json!({"@type": "Note", "title": "after revocation"})
        )]),
    )
    .await;
    let (st, v) = tokio::time::timeout(std::time::Duration::from_secs(20), waiter)
        .await
        .expect("the poll answers before its wait runs out")
        .expect("join");
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "{v}"
    );
    assert!(!v.to_string().contains(&secret), "{v}");

    // Every other route refuses the token too.
    let refused = [
        (Method::GET, "/v1/changes".to_string(), None),
        (
            Method::POST,
            "/v1/changes".to_string(),
            Some(json!({"changes": [put(&uuid(), "note", json!({}))]})),
        ),
        (Method::GET, format!("/v1/items/{secret}"), None),
        (Method::GET, "/v1/session".to_string(), None),
    ];
    for (method, path, body) in refused {
        let (st, v) = s
            .call(method.clone(), &path, Some(&phone_token), body)
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
    }
    assert_eq!(s.metric("keepsake_long_polls_waiting").await, 0);
}

/// Change ids are the device's idempotency keys: a device that guessed the change id of the
/// operator's event could push it first, and the operator's event would be answered
/// "duplicate" and never written. (Derived ids were guessable: UUIDv5 of the device id.)
async fn a_device_cannot_keep_its_revocation_out_of_the_log(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let (phone, phone_token, _) = register(&s, &user, "phone").await;
    let device: uuid::Uuid = phone.parse().expect("uuid");
    let guesses: Vec<Value> = ["device-revoked", "device-registered", "revoke", "revoked"]
        .iter()
        .map(|what| {
            let id = uuid::Uuid::new_v5(&device, what.as_bytes());
            put(&uuid(), "note", json!({"guess": what}))
                .as_object()
                .map_or(json!({}), |o| {
                    let mut o = o.clone();
                    o.insert("change_id".into(), json!(id));
                    Value::Object(o)
                })
        })
        .collect();
    s.push(&phone_token, Value::Array(guesses)).await;
    revoke(&s, &user, &phone).await;
    let log = events(&s, &user).await;
    let device_events: Vec<(&Value, &Value)> = log
        .iter()
        .filter(|e| e["kind"] == "device")
        .map(|e| (&e["op"], &e["item_id"]))
        .collect();
    assert_eq!(
        device_events,
        vec![
            (&json!("put"), &json!(phone)),
            (&json!("delete"), &json!(phone))
        ],
        "{log:?}"
    );
    assert_eq!(
        devices_at(&s, &user, "as_of_seq=6").await,
        Vec::<String>::new()
    );
}
