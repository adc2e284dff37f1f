//! Faults at the device registry's durability boundaries: registering (the log event, then the
//! registry record) and revoking (the revocation object, then the log event). Whatever fails, no
//! token is handed out unrecorded, a revocation is never reported done when it is not in force,
//! and a retry finishes the job with each event written once.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{OPERATOR, serve};
use keepsake_log::LogConfig;
use keepsake_model::{IdGenerator, RandomIds, UserId};
use keepsake_store::faults::{Fault, FaultOp};
use serde_json::{Value, json};

fn cfg() -> LogConfig {
    LogConfig {
        put_attempts: 2,
        retry_backoff: Duration::from_millis(5),
        ..LogConfig::default()
    }
}

async fn call(
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn register(base: &str, user: UserId) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        format!("{base}/admin/v1/users/{user}/devices"),
        OPERATOR,
        Some(json!({"name": "phone"})),
    )
    .await
}

async fn revoke(base: &str, user: UserId, device: &str) -> (u16, Value) {
    call(
        reqwest::Method::DELETE,
        format!("{base}/admin/v1/users/{user}/devices/{device}"),
        OPERATOR,
        None,
    )
    .await
}

/// The user's device events: (op, device id).
async fn device_events(base: &str, user: UserId) -> Vec<(String, String)> {
    let (st, v) = call(
        reqwest::Method::GET,
        format!("{base}/admin/v1/users/{user}/events?after_seq=0&limit=100"),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "device")
        .map(|e| {
            (
                e["op"].as_str().expect("op").to_string(),
                e["item_id"].as_str().expect("item").to_string(),
            )
        })
        .collect()
}

async fn listed(base: &str, user: UserId) -> Vec<Value> {
    let (st, v) = call(
        reqwest::Method::GET,
        format!("{base}/admin/v1/users/{user}/devices"),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["devices"].as_array().expect("devices").clone()
}

async fn session(base: &str, token: &str) -> u16 {
    call(
        reqwest::Method::GET,
        format!("{base}/v1/session"),
        token,
        None,
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_event_fails_hands_out_no_token_and_leaves_no_record() {
    let (base, faulty, _log, _, _) = serve(cfg()).await;
    let user = UserId(RandomIds.random());
    faulty.inject(FaultOp::Put, "/segments/", Fault::Fail, 2);
    let (st, v) = register(&base, user).await;
    assert_eq!((st, v["code"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(v.get("token").is_none(), "{v}");
    assert!(
        listed(&base, user).await.is_empty(),
        "no record without its event"
    );
    assert!(device_events(&base, user).await.is_empty());
    // The store is back: a new registration is recorded once.
    let (st, v) = register(&base, user).await;
    assert_eq!(st, 201, "{v}");
    let device = v["device_id"].as_str().expect("device").to_string();
    assert_eq!(
        device_events(&base, user).await,
        vec![("put".into(), device)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_record_fails_hands_out_no_token() {
    let (base, faulty, _log, _, _) = serve(cfg()).await;
    let user = UserId(RandomIds.random());
    for fault in [Fault::Fail, Fault::FailAfter] {
        faulty.inject(FaultOp::Put, "devices/", fault, 1);
        let (st, v) = register(&base, user).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (503, Some("unavailable")),
            "{fault:?}: {v}"
        );
        assert!(v.get("token").is_none(), "{v}");
    }
    // Each failed registration is recorded registered and then revoked at once: the log never
    // keeps a device live that nobody can revoke.
    let ops: Vec<String> = device_events(&base, user)
        .await
        .into_iter()
        .map(|(op, _)| op)
        .collect();
    assert_eq!(ops, vec!["put", "delete", "put", "delete"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_in_force_before_it_is_reported_and_recorded_once_on_retry() {
    let (base, faulty, _log, _, _) = serve(cfg()).await;
    let user = UserId(RandomIds.random());
    let (st, v) = register(&base, user).await;
    assert_eq!(st, 201, "{v}");
    let device = v["device_id"].as_str().expect("device").to_string();
    let token = v["token"].as_str().expect("token").to_string();

    // The revocation object fails before landing: not revoked, not recorded, 503.
    faulty.inject(FaultOp::Put, "revocations/", Fault::Fail, 1);
    let (st, v) = revoke(&base, user, &device).await;
    assert_eq!((st, v["code"].as_str()), (503, Some("unavailable")), "{v}");
    assert_eq!(
        session(&base, &token).await,
        200,
        "a failed revocation is not in force"
    );
    assert_eq!(device_events(&base, user).await.len(), 1);

    // The revocation object lands, then the store answers an error: 503, and sent again it
    // finds the object (create-only) and finishes: in force, recorded once.
    let (st, v) = register(&base, user).await;
    assert_eq!(st, 201, "{v}");
    let (tablet, tablet_token) = (
        v["device_id"].as_str().expect("device").to_string(),
        v["token"].as_str().expect("token").to_string(),
    );
    faulty.inject(FaultOp::Put, "revocations/", Fault::FailAfter, 1);
    let (st, v) = revoke(&base, user, &tablet).await;
    assert_eq!((st, v["code"].as_str()), (503, Some("unavailable")), "{v}");
    let (st, v) = revoke(&base, user, &tablet).await;
    assert_eq!(st, 204, "{v}");
    assert_eq!(session(&base, &tablet_token).await, 401);
    let tablet_events: Vec<String> = device_events(&base, user)
        .await
        .into_iter()
        .filter(|(_, d)| *d == tablet)
        .map(|(op, _)| op)
        .collect();
    assert_eq!(tablet_events, vec!["put", "delete"]);

    // The revocation lands, then its event fails: in force at once, answered 503, unrecorded.
    faulty.inject(FaultOp::Put, "/segments/", Fault::Fail, 2);
    let (st, v) = revoke(&base, user, &device).await;
    assert_eq!((st, v["code"].as_str()), (503, Some("unavailable")), "{v}");
    assert_eq!(
        session(&base, &token).await,
        401,
        "the revocation is in force"
    );
    let phone_events = |events: Vec<(String, String)>| -> Vec<String> {
        events
            .into_iter()
            .filter(|(_, d)| *d == device)
            .map(|(op, _)| op)
            .collect()
    };
    assert_eq!(phone_events(device_events(&base, user).await), vec!["put"]);

    // Sent again, it is recorded; sent a third time, nothing more is written.
    for _ in 0..2 {
        let (st, v) = revoke(&base, user, &device).await;
        assert_eq!(st, 204, "{v}");
    }
    assert_eq!(
        phone_events(device_events(&base, user).await),
        vec!["put", "delete"]
    );
}
