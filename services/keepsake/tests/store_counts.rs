//! The store requests `/metrics` reports (what `keepsake-loadgen cost` prices) are exactly the
//! requests the store received, counted by an independent wrapper beneath the server's own
//! counter: the fault-injecting store counts every PUT and every GET (HEADs included).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{OPERATOR, serve};
use keepsake_log::{CompactionPolicy, LogConfig};
use keepsake_model::{IdGenerator, RandomIds, UserId};
use serde_json::json;

/// The sum of `keepsake_store_requests_by_cause_total` samples whose `op` is one of `ops`.
fn by_cause(text: &str, ops: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("keepsake_store_requests_by_cause_total{"))
        .filter_map(|l| l.split_once("} "))
        .filter(|(labels, _)| {
            ops.iter()
                .any(|op| labels.contains(&format!("op=\"{op}\"")))
        })
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_requests_the_store_received() {
    let cfg = LogConfig {
        checkpoint_every_events: 4,
        upkeep_tick: Duration::from_millis(10),
        compaction: CompactionPolicy {
            enabled: true,
            min_segments: 1,
            max_events: 1000,
        },
        ..LogConfig::default()
    };
    let (base, faulty, log, token, user) = serve(cfg).await;
    let http = reqwest::Client::new();
    // Pushes (segment PUTs and their confirmations), pulls, a device registered and revoked,
    // and the checkpoints and compaction they make due.
    for i in 0..12 {
        let item = RandomIds.random();
        let change = RandomIds.random();
        let body = json!({"changes": [{"change_id": change.to_string(), "kind": "note",
            "item_id": item.to_string(), "op": "put", "document": {"i": i}}]});
        let r = http
            .post(format!("{base}/v1/changes"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("push");
        assert_eq!(r.status(), 200);
        let r = http
            .get(format!("{base}/v1/changes"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("pull");
        assert_eq!(r.status(), 200);
    }
    let other = UserId(RandomIds.random());
    let r = http
        .post(format!("{base}/admin/v1/users/{other}/devices"))
        .bearer_auth(OPERATOR)
        .json(&json!({"name": "phone"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    let _ = user;
    log.compact_now().await.expect("checkpoint and compaction");

    // Once the store is quiet (background checkpoints done), the counts agree exactly.
    let mut last = None;
    for _ in 0..200 {
        let (puts, gets) = (faulty.puts(), faulty.gets());
        // A request counted below as it starts is counted above when it returns: any in
        // flight now (microseconds on the memory store) has returned by the scrape.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let quiet = (puts, gets) == (faulty.puts(), faulty.gets());
        last = Some((
            puts,
            gets,
            by_cause(&text, &["put"]),
            by_cause(&text, &["get", "head"]),
        ));
        if quiet {
            let (puts, gets, reported_puts, reported_gets) = last.unwrap();
            assert!(puts >= 12 && gets > 0, "the run did reach the store");
            assert_eq!(reported_puts, puts as f64, "PUTs");
            assert_eq!(reported_gets, gets as f64, "GETs and HEADs");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the store never went quiet: {last:?}");
}
