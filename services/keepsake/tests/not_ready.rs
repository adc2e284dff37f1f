//! 503 `unavailable` with Retry-After from the real causes: a server whose log is still opening
//! (recovering), and reads of a user that the store fails.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::serve;
use keepsake_log::LogConfig;
use keepsake_model::{IdGenerator, RandomIds, UserId};
use keepsake_store::faults::{Fault, FaultOp};
use serde_json::{Value, json};

async fn get(url: String, token: &str) -> (u16, Option<String>, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = resp.text().await.expect("body");
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// The router before the log has opened (what a starting server serves while it recovers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_still_recovering_answers_503_on_every_data_route() {
    let (state, token, _) = common::unready_state();
    let base = common::listen(state).await;
    for (path, token) in [
        ("/readyz", token.as_str()),
        ("/v1/changes", token.as_str()),
        ("/v1/session", token.as_str()),
        ("/admin/v1/verify", common::OPERATOR),
    ] {
        let (status, retry, body) = get(format!("{base}{path}"), token).await;
        assert_eq!(
            (status, body["code"].as_str(), retry.as_deref()),
            (503, Some("unavailable"), Some("1")),
            "{path}: {body}"
        );
    }
    let (status, _, _) = get(format!("{base}/healthz"), "").await;
    assert_eq!(status, 200, "alive while not ready");
}

/// A user whose state must be loaded from a store that fails: the pull is refused, retryable,
/// and answers once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_whose_reads_fail_answers_503_then_answers() {
    let cfg = LogConfig {
        view_memory_bytes: 1,
        retry_backoff: Duration::from_millis(5),
        ..LogConfig::default()
    };
    let (base, faulty, log, token, _) = serve(cfg).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/changes"))
        .bearer_auth(&token)
        .body(
            json!({"changes": [{"change_id": RandomIds.random(), "kind": "note",
                "item_id": RandomIds.random(), "op": "put", "document": {}}]})
            .to_string(),
        )
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 200);
    // Another user's push evicts this one (a one-byte view budget).
    let other = UserId(RandomIds.random());
    log.push(keepsake_log::PushRequest {
        user_id: other,
        meta: keepsake_model::EventMeta {
            device_id: None,
            origin: keepsake_model::Origin::Device,
            request_id: None,
            restore_id: None,
        },
        changes: vec![keepsake_model::Change {
            change_id: keepsake_model::ChangeId(RandomIds.random()),
            kind: keepsake_model::Kind::Note,
            item_id: keepsake_model::ItemId(RandomIds.random()),
            base_version: None,
            body: keepsake_model::ChangeBody::put(json!({})),
        }],
        confirm_mass_delete: false,
    })
    .await
    .expect("push");
    faulty.inject(FaultOp::Get, "/segments/", Fault::Fail, 1000);
    let (status, retry, body) = get(format!("{base}/v1/changes"), &token).await;
    assert_eq!(
        (status, body["code"].as_str(), retry.as_deref()),
        (503, Some("unavailable"), Some("1")),
        "{body}"
    );
    faulty.clear();
    let (status, _, body) = get(format!("{base}/v1/changes"), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changes"].as_array().map(Vec::len), Some(1), "{body}");
}
