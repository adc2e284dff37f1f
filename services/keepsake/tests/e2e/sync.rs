//! Sync scenarios over HTTP, on the file store and on S3.

use std::time::Duration;

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
    two_devices_converge_with_conflicts_and_merges,
    a_retried_push_is_a_duplicate_with_original_versions,
    tombstones_and_paging,
    a_long_poll_wakes_on_another_devices_push,
    mass_delete_guard_refuses_then_accepts,
    restart_keeps_data_and_tokens,
    evicted_views_reload_with_identical_answers,
    sigterm_answers_in_flight_pushes_and_loses_none,
    every_store_request_is_counted_on_metrics,
);

fn token(v: &Value) -> String {
    v["token"].as_str().expect("token").to_string()
}

async fn two_devices_converge_with_conflicts_and_merges(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let (phone, tablet) = (
        s.register(&user, "phone").await,
        s.register(&user, "tablet").await,
    );
    let item = uuid();
    let r = s
        .push(
            &phone,
            json!([put(
                &item,
                "contact",
                json!({"@type": "Card", "name": "Ada", "phone": "1", "mail": "a@x"})
            )]),
        )
        .await;
    assert_eq!(r["results"][0]["status"], "applied");
    let first = s.pull(&tablet, "").await;
    assert_eq!(first["changes"][0]["document"]["name"], "Ada");
    let tok = token(&first);
    // the phone changes the phone number (v2)
    let patch = |base: u64, doc: Value| json!({"change_id": uuid(), "kind": "contact", "item_id": item, "op": "patch", "base_version": base, "document": doc});
    assert_eq!(
        s.push(&phone, json!([patch(1, json!({"phone": "2"}))]))
            .await["results"][0]["version"],
        2
    );
    // the tablet, still at v1: a patch of another field merges; of the same field conflicts
    let merged = s
        .push(&tablet, json!([patch(1, json!({"mail": "b@x"}))]))
        .await;
    assert_eq!(merged["results"][0]["status"], "applied", "{merged}");
    let conflict = s
        .push(&tablet, json!([patch(1, json!({"phone": "3"}))]))
        .await;
    assert_eq!(conflict["results"][0]["status"], "conflict");
    assert_eq!(conflict["results"][0]["current"]["version"], 3);
    // a stale put conflicts and carries the current item
    let stale = s.push(&tablet, json!([{"change_id": uuid(), "kind": "contact", "item_id": item, "op": "put", "base_version": 1, "document": {"name": "Eve"}}])).await;
    assert_eq!(stale["results"][0]["status"], "conflict");
    assert_eq!(stale["results"][0]["current"]["document"]["phone"], "2");
    // both devices converge on the same state
    let a = s.pull(&phone, "").await;
    let b = s.pull(&tablet, &format!("?since={tok}")).await;
    assert_eq!(
        a["changes"][0]["document"],
        json!({"@type": "Card", "name": "Ada", "phone": "2", "mail": "b@x"})
    );
    assert_eq!(a["changes"][0], b["changes"][0]);
    assert_eq!(a["token"], b["token"]);
}

async fn a_retried_push_is_a_duplicate_with_original_versions(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let changes = json!([
        put(&uuid(), "note", json!({"t": 1})),
        put(&uuid(), "task", json!({"t": 2})),
        put(&uuid(), "note", json!({"t": 3}))
    ]);
    let first = s.push(&phone, changes.clone()).await;
    let segments = s.segments().await;
    let again = s.push(&phone, changes).await;
    for i in 0..3 {
        assert_eq!(again["results"][i]["status"], "duplicate");
        assert_eq!(
            again["results"][i]["version"],
            first["results"][i]["version"]
        );
        assert_eq!(again["results"][i]["seq"], first["results"][i]["seq"]);
    }
    assert_eq!(
        s.segments().await,
        segments,
        "a duplicate push writes nothing"
    );
}

async fn tombstones_and_paging(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let items: Vec<String> = (0..25).map(|_| uuid()).collect();
    s.push(
        &phone,
        Value::Array(
            items
                .iter()
                .map(|i| put(i, "note", json!({"i": i})))
                .collect(),
        ),
    )
    .await;
    // initial sync in pages of 10
    let mut seen = std::collections::HashSet::new();
    let mut query = "?limit=10".to_string();
    let mut pages = 0;
    let tok = loop {
        let p = s.pull(&phone, &query).await;
        pages += 1;
        for c in p["changes"].as_array().expect("changes") {
            assert!(
                seen.insert(c["item_id"].as_str().expect("id").to_string()),
                "an item twice"
            );
        }
        if p["has_more"] == json!(false) {
            break token(&p);
        }
        query = format!("?limit=10&since={}", token(&p));
    };
    assert_eq!((pages, seen.len()), (3, 25));
    // a delete appears as a tombstone after the token, and not in a new initial sync
    let del = json!([{"change_id": uuid(), "kind": "note", "item_id": items[3], "op": "delete"}]);
    s.push(&phone, del).await;
    let since = s.pull(&phone, &format!("?since={tok}")).await;
    assert_eq!(since["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(since["changes"][0]["op"], "delete");
    assert_eq!(since["changes"][0]["document"], Value::Null);
    let initial = s.pull(&phone, "?limit=1000").await;
    assert_eq!(initial["changes"].as_array().map(Vec::len), Some(24));
    let (status, body) = s
        .call(
            Method::GET,
            &format!("/v1/items/{}", items[3]),
            Some(&phone),
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("deleted"))
    );
}

async fn a_long_poll_wakes_on_another_devices_push(backend: Backend) {
    let env = Env::new(backend).await;
    let s = std::sync::Arc::new(Server::start(&env, &[]).await);
    let user = uuid();
    let (phone, tablet) = (
        s.register(&user, "phone").await,
        s.register(&user, "tablet").await,
    );
    let tok = token(&s.pull(&tablet, "").await);
    let waiter = {
        let s = s.clone();
        let tablet = tablet.clone();
        tokio::spawn(async move { s.pull(&tablet, &format!("?since={tok}&wait=30")).await })
    };
    s.until_metric("keepsake_long_polls_waiting", 1).await;
    assert!(!waiter.is_finished(), "with nothing new the pull waits");
    let item = uuid();
    s.push(
        &phone,
        json!([put(
            &item,
            "event",
            json!({"@type": "Event", "title": "standup"})
        )]),
    )
    .await;
    let woke = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("woken before its wait ran out")
        .expect("join");
    assert_eq!(woke["changes"][0]["item_id"], json!(item));
}

async fn mass_delete_guard_refuses_then_accepts(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "buggy phone").await;
    let items: Vec<String> = (0..30).map(|_| uuid()).collect();
    let r = s
        .push(
            &phone,
            Value::Array(
                items
                    .iter()
                    .map(|i| put(i, "contact", json!({"n": i})))
                    .collect(),
            ),
        )
        .await;
    let tok = token(&r);
    let deletes: Vec<Value> = items
        .iter()
        .map(|i| json!({"change_id": uuid(), "kind": "contact", "item_id": i, "op": "delete"}))
        .collect();
    let segments = s.segments().await;
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/changes",
            Some(&phone),
            Some(json!({"changes": deletes})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("mass_delete_guard")),
        "{body}"
    );
    assert_eq!(s.segments().await, segments, "nothing written");
    assert_eq!(
        s.pull(&phone, &format!("?since={tok}")).await["changes"],
        json!([])
    );
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/changes",
            Some(&phone),
            Some(json!({"changes": deletes, "confirm_mass_delete": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.pull(&phone, "").await["changes"], json!([]));
}

async fn restart_keeps_data_and_tokens(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let item = uuid();
    let r = s
        .push(&phone, json!([put(&item, "note", json!({"t": "keep me"}))]))
        .await;
    let tok = token(&r);
    let before = s.pull(&phone, "").await;
    assert!(s.stop().success(), "SIGTERM ends the server cleanly");

    let s = Server::start(&env, &[]).await;
    // the same device token works, the old sync token works, the data is there
    assert_eq!(s.pull(&phone, "").await, before);
    assert_eq!(
        s.pull(&phone, &format!("?since={tok}")).await["changes"],
        json!([])
    );
    let r2 = s
        .push(&phone, json!([put(&uuid(), "note", json!({"t": 2}))]))
        .await;
    // seq 1 is the device's registration, 2 its first push
    assert_eq!(
        r2["results"][0]["seq"], 3,
        "seq continues after the restart"
    );
    let logged = s.logged().join("\n");
    assert!(
        !logged.contains(ADMIN) && !logged.contains(&phone),
        "tokens never appear in logs"
    );
}

async fn evicted_views_reload_with_identical_answers(backend: Backend) {
    let env = Env::new(backend).await;
    // one byte of view memory: every user is evicted as soon as another one commits
    let s = Server::start(
        &env,
        &[
            ("KEEPSAKE_VIEW_MEMORY_BYTES", "1"),
            ("KEEPSAKE_SHARDS", "1"),
        ],
    )
    .await;
    let (a, b) = (uuid(), uuid());
    let (phone_a, phone_b) = (s.register(&a, "a").await, s.register(&b, "b").await);
    let item = uuid();
    let c = put(&item, "contact", json!({"@type": "Card", "name": "Ada"}));
    s.push(&phone_a, json!([c.clone()])).await;
    let pull_before = s.pull(&phone_a, "").await;
    let (_, item_before) = s
        .call(
            Method::GET,
            &format!("/v1/items/{item}"),
            Some(&phone_a),
            None,
        )
        .await;
    for i in 0..5 {
        s.push(&phone_b, json!([put(&uuid(), "note", json!({"i": i}))]))
            .await;
    }
    // The same answer; its token stands for the same store and seq, and its mark (the log's
    // position, version 2) has moved with the other user's segments.
    let mut pull_after = s.pull(&phone_a, "").await;
    let mut pull_before = pull_before;
    let unmarked = |v: &mut serde_json::Value| {
        use base64::Engine as _;
        let token = v["token"].take();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.as_str().expect("token"))
            .expect("base64");
        assert_eq!((bytes[0], bytes.len()), (2, 41), "a marked token");
        bytes[1..25].to_vec()
    };
    assert_eq!(
        unmarked(&mut pull_after),
        unmarked(&mut pull_before),
        "the token's store id and seq after eviction and reload"
    );
    assert_eq!(
        pull_after, pull_before,
        "same pull after eviction and reload"
    );
    let (_, item_after) = s
        .call(
            Method::GET,
            &format!("/v1/items/{item}"),
            Some(&phone_a),
            None,
        )
        .await;
    assert_eq!(item_after, item_before);
    let again = s.push(&phone_a, json!([c])).await;
    assert_eq!(again["results"][0]["status"], "duplicate");
    let evictions = s.metric("keepsake_view_evictions_total").await;
    assert!(evictions > 0, "the test must actually evict");
}

async fn sigterm_answers_in_flight_pushes_and_loses_none(backend: Backend) {
    let env = Env::new(backend).await;
    // A long commit window: the registration's segment starts it, so the pushes below wait in
    // the writer's queue, in flight, when SIGTERM arrives.
    let s =
        std::sync::Arc::new(Server::start(&env, &[("KEEPSAKE_COMMIT_WINDOW_MS", "3000")]).await);
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    const PUSHES: u64 = 40;
    let pushes: Vec<_> = (0..PUSHES)
        .map(|i| {
            let (s, phone) = (s.clone(), phone.clone());
            let item = uuid();
            tokio::spawn(async move {
                let body = json!({"changes": [put(&item, "note", json!({"i": i}))]});
                let sent = s
                    .client
                    .post(format!("{}/v1/changes", s.base))
                    .bearer_auth(&phone)
                    .body(body.to_string())
                    .send()
                    .await;
                let answer = match sent {
                    Ok(r) => {
                        let status = r.status();
                        (status, r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Err(e) => panic!("push {i}: no answer: {e}"),
                };
                (item, answer)
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.metric("keepsake_pushes_in_flight").await < PUSHES {
        assert!(
            std::time::Instant::now() < deadline,
            "the pushes never were all in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.terminate();
    let mut acked = Vec::new();
    for p in pushes {
        let (item, (status, v)) = p.await.expect("join");
        assert_eq!(status, StatusCode::OK, "an in-flight push is answered: {v}");
        assert_eq!(v["results"][0]["status"], "applied", "{v}");
        acked.push(item);
    }
    let s = std::sync::Arc::try_unwrap(s).ok().expect("no other handle");
    assert!(s.wait().success(), "SIGTERM ends the server cleanly");
    let s = Server::start(&env, &[]).await;
    let all = s.pull(&phone, "?limit=1000").await;
    let have: std::collections::HashSet<&str> = all["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["item_id"].as_str())
        .collect();
    for item in &acked {
        assert!(
            have.contains(item.as_str()),
            "an acknowledged push survived the shutdown"
        );
    }
}

/// `/metrics` counts the requests the server sends to its store, by kind and outcome: each
/// push is a segment PUT, confirmed by one GET of the compaction frontier (not found: nothing
/// was compacted since) and no listing, and the bytes written hold the segments'.
async fn every_store_request_is_counted_on_metrics(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let phone = s.register(&uuid(), "phone").await;
    const PUT_OK: &str = "keepsake_store_requests_total{op=\"put\",outcome=\"ok\"}";
    const GET_NOT_FOUND: &str = "keepsake_store_requests_total{op=\"get\",outcome=\"not_found\"}";
    const WRITTEN: &str = "keepsake_store_written_bytes_total";
    let by_cause = |cause: &str, op: &str| {
        format!("keepsake_store_requests_by_cause_total{{cause=\"{cause}\",op=\"{op}\"}}")
    };
    // The registration was a push to the same user's shard: its writer knows the frontier.
    let before = (
        s.segments().await,
        s.metric(PUT_OK).await,
        s.metric(GET_NOT_FOUND).await,
        s.metric(WRITTEN).await,
        s.metric("keepsake_segment_bytes_total").await,
        s.metric(&by_cause("push", "list")).await,
    );
    for i in 0..3 {
        s.push(&phone, json!([put(&uuid(), "note", json!({"i": i}))]))
            .await;
    }
    let segments = s.segments().await - before.0;
    assert_eq!(segments, 3);
    // The user is in its shard's tail index, which /metrics counts with its bytes.
    assert!(s.metric("keepsake_view_index_users").await >= 1);
    assert!(s.metric("keepsake_view_index_bytes").await > 0);
    // No history object read yet: none of their footers kept (counted beside the index).
    assert_eq!(s.metric("keepsake_history_footers").await, 0);
    assert_eq!(s.metric("keepsake_history_footer_hits_total").await, 0);
    assert_eq!(s.metric("keepsake_history_footer_misses_total").await, 0);
    // Nor any search of a user's history.
    for kind in ["indexed", "segment", "history"] {
        let name = format!("keepsake_search_sources_read_total{{kind=\"{kind}\"}}");
        assert_eq!(s.metric(&name).await, 0, "{name}");
    }
    assert_eq!(s.metric("keepsake_searches_past_index_total").await, 0);
    // What the allocator holds for the process, beside what the view counts.
    let allocated = s.metric("keepsake_allocator_allocated_bytes").await;
    assert!(allocated > 0);
    assert!(s.metric("keepsake_allocator_resident_bytes").await >= allocated);
    assert!(s.metric(PUT_OK).await - before.1 >= segments);
    assert!(
        s.metric(GET_NOT_FOUND).await - before.2 >= segments,
        "each segment PUT is confirmed by a read of the compaction frontier"
    );
    assert_eq!(
        s.metric(&by_cause("push", "list")).await - before.5,
        0,
        "and by no listing"
    );
    let segment_bytes = s.metric("keepsake_segment_bytes_total").await - before.4;
    assert!(s.metric(WRITTEN).await - before.3 >= segment_bytes);
    let timed = s
        .metric("keepsake_store_request_seconds_count{op=\"put\"}")
        .await;
    assert!(timed >= s.metric(PUT_OK).await, "every PUT is timed");
    assert_eq!(
        s.metric("keepsake_store_requests_total{op=\"copy\",outcome=\"ok\"}")
            .await,
        0
    );
    // By cause: the segment PUTs and their confirmations are the writers', start-up listed
    // every shard, and the registration went through the device registry.
    assert!(s.metric(&by_cause("push", "put")).await >= segments);
    assert!(s.metric(&by_cause("push", "get")).await >= segments);
    assert!(s.metric(&by_cause("startup", "list")).await > 0);
    assert!(s.metric(&by_cause("devices", "put")).await >= 1);
    // Every GET answered is counted once by the kind of object it read (read between two
    // reads of the total: the server's own upkeep may send one meanwhile). A restart reads
    // the descriptor, and a pull loads the user from its segments.
    s.terminate();
    assert!(s.wait().success(), "SIGTERM ends the server cleanly");
    let s = Server::start(&env, &[]).await;
    let all = s.pull(&phone, "?limit=1000").await;
    assert_eq!(all["changes"].as_array().map(Vec::len), Some(3), "{all}");
    assert!(
        s.metric("keepsake_store_gets_by_object_total{object=\"segment\"}")
            .await
            > 0
    );
    const GET_OK: &str = "keepsake_store_requests_total{op=\"get\",outcome=\"ok\"}";
    let answered_before = s.metric(GET_OK).await;
    let mut by_object = 0;
    for object in ["segment", "history", "part", "checkpoint", "other"] {
        let name = format!("keepsake_store_gets_by_object_total{{object=\"{object}\"}}");
        by_object += s.metric(&name).await;
    }
    let answered_after = s.metric(GET_OK).await;
    assert!(
        (answered_before..=answered_after).contains(&by_object),
        "GETs by object {by_object}, answered {answered_before}..={answered_after}"
    );
    // A file store answers the reads the page cache holds (objects just written and read)
    // on the thread that asked, unless told not to; an S3 store has no file reads.
    const CACHED: &str = "keepsake_store_file_reads_total{served=\"page_cache\"}";
    const HANDED: &str = "keepsake_store_file_reads_total{served=\"blocking_pool\"}";
    let cached = s.metric(CACHED).await;
    if backend == Backend::File {
        assert!(cached > 0, "no read answered from the page cache");
    } else {
        assert_eq!((cached, s.metric(HANDED).await), (0, 0));
    }
    s.terminate();
    assert!(s.wait().success());
    let s = Server::start(&env, &[("KEEPSAKE_STORE_INLINE_FILE_READS", "false")]).await;
    let all = s.pull(&phone, "?limit=1000").await;
    assert_eq!(all["changes"].as_array().map(Vec::len), Some(3), "{all}");
    assert_eq!(s.metric(CACHED).await, 0, "every read to the blocking pool");
    if backend == Backend::File {
        assert!(s.metric(HANDED).await > 0);
    }
}
