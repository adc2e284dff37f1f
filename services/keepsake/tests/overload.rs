//! 429 `overloaded` and 503 `unavailable`, with Retry-After and nothing written: the real router
//! on 127.0.0.1:0, over a store that fails or stalls on demand.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

mod common;

use common::serve;
use keepsake_log::LogConfig;
use keepsake_model::{IdGenerator, RandomIds};
use keepsake_store::faults::{Fault, FaultOp};
use serde_json::{Value, json};

fn change() -> Value {
    json!({"change_id": RandomIds.random(), "kind": "note", "item_id": RandomIds.random(), "op": "put", "document": {"t": 1}})
}

/// One client for the whole test: building a client loads TLS roots, which takes long enough to
/// distort the timing these tests arrange.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

async fn push(base: &str, token: &str) -> (u16, Option<String>, Value) {
    let resp = client()
        .post(format!("{base}/v1/changes"))
        .bearer_auth(token)
        .body(json!({"changes": [change()]}).to_string())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, retry, resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_503_with_retry_after_and_writes_nothing() {
    let cfg = LogConfig {
        put_attempts: 2,
        retry_backoff: Duration::from_millis(5),
        ..LogConfig::default()
    };
    let (base, faulty, log, token, _) = serve(cfg).await;
    faulty.inject(FaultOp::Put, "/segments/", Fault::Fail, 2);
    let (status, retry, body) = push(&base, &token).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(log.head(0), 0, "nothing written");
    let (status, _, _) = push(&base, &token).await;
    assert_eq!(status, 200, "the store is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_answers_429_with_retry_after() {
    let cfg = LogConfig {
        queue_depth: 1,
        ..LogConfig::default()
    };
    let (base, faulty, log, token, user) = serve(cfg).await;
    let _ = client().get(format!("{base}/healthz")).send().await;
    // The first push's PUT stalls; once it is in flight, pushes pile up behind it beyond the
    // queue's one slot.
    faulty.inject(
        FaultOp::Put,
        "/segments/",
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let spawn = || {
        let (base, token) = (base.clone(), token.clone());
        tokio::spawn(async move { push(&base, &token).await })
    };
    let mut pushes = vec![spawn()];
    while faulty.injected() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pushes.extend((0..7).map(|_| spawn()));
    let mut overloaded = 0;
    let mut ok = 0;
    for p in pushes {
        let (status, retry, body) = p.await.expect("join");
        match status {
            429 => {
                assert_eq!(body["code"], "overloaded");
                assert_eq!(retry.as_deref(), Some("1"));
                overloaded += 1;
            }
            200 => ok += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // One push in flight, one in the queue's slot: the other six are refused.
    assert_eq!((ok, overloaded), (2, 6));
    assert_eq!(
        log.last_seq(&user).await.expect("seq"),
        ok,
        "refused pushes wrote nothing"
    );
}
