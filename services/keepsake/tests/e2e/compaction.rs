//! Compaction seen from outside: an operator compacts a running server's store, and every answer
//! a device or an operator gets stays the same, before and after a restart.

use std::time::Duration;

use keepsake_tests::Backend;
use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_changes_no_answer_on_file() {
    compaction_changes_no_answer(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_changes_no_answer_on_s3() {
    compaction_changes_no_answer(Backend::S3).await;
}

async fn compaction_changes_no_answer(backend: Backend) {
    let env = Env::new(backend).await;
    // Background compaction off: the operator's command is what moves the segments.
    let s = Server::start(&env, &[("KEEPSAKE_COMPACTION", "false")]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let note = uuid();
    s.push(&phone, json!([put(&note, "note", json!({"t": "v1"}))]))
        .await;
    let mut t = String::new();
    let contacts: Vec<String> = (0..12).map(|_| uuid()).collect();
    for i in 0..12 {
        let mut changes = vec![
            put(&contacts[i], "contact", json!({"name": format!("c{i}")})),
            json!({"change_id": uuid(), "kind": "note", "item_id": note, "op": "patch",
                   "document": {"round": i}}),
        ];
        // Deletes of real items: the history objects hold tombstones.
        if i % 4 == 3 {
            changes.push(json!({"change_id": uuid(), "kind": "contact",
                                "item_id": contacts[i - 1], "op": "delete"}));
        }
        let r = s.push(&phone, Value::Array(changes)).await;
        for result in r["results"].as_array().expect("results") {
            assert_eq!(result["status"], "applied", "{r}");
        }
        if i == 5 {
            t = keepsake_model::Clock::now(&keepsake_model::SystemClock)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let segments = s.segments().await;
    assert!(segments >= 13, "{segments}");
    let before = answers(&s, &env, &phone, &user, &t).await;

    let done = cli(&s.base, &env, &["compact", "--json"]);
    assert_eq!(
        done["segments_compacted"].as_u64(),
        Some(segments),
        "{done}"
    );
    assert!(
        done["history_objects_written"].as_u64() >= Some(1),
        "{done}"
    );
    assert!(done["objects_deleted"].as_u64() >= Some(segments), "{done}");
    let after = answers(&s, &env, &phone, &user, &t).await;
    assert_eq!(after, before);
    let deletes = after.1["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["op"] == "delete")
        .count();
    assert_eq!(deletes, 3, "tombstones read back from history objects");
    assert!(s.metric("keepsake_compaction_history_objects_total").await >= 1);
    // The checkpoint before the compaction was written as a manifest over parts.
    assert!(s.metric("keepsake_checkpoints_total").await >= 1);
    assert!(s.metric("keepsake_checkpoint_parts_written_total").await >= 1);
    assert!(s.metric("keepsake_checkpoint_written_bytes_total").await > 0);
    assert_eq!(
        s.metric("keepsake_compaction_segments_total").await,
        segments
    );
    let verify = cli(&s.base, &env, &["verify", "--store", &env.url, "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(verify["history_objects"].as_u64() >= Some(1), "{verify}");
    assert_eq!(verify["segments"].as_u64(), Some(segments), "{verify}");

    // A restart reads history objects; the device keeps syncing on top of them.
    s.stop();
    let s = Server::start(&env, &[("KEEPSAKE_COMPACTION", "false")]).await;
    assert_eq!(answers(&s, &env, &phone, &user, &t).await, before);
    s.push(&phone, json!([put(&uuid(), "note", json!({"t": "after"}))]))
        .await;
    let events = cli(&s.base, &env, &["events", "--user", &user, "--json"]);
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        before.1["events"].as_array().map(|e| e.len() + 1)
    );
    let rebuild = cli(&s.base, &env, &["rebuild", "--json"]);
    assert_eq!(rebuild["equal"], true, "{rebuild}");
}

/// Runs the `keepsake` CLI against the server at `base` and parses its `--json` output.
fn cli(base: &str, env: &Env, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .args(args)
        .env("KEEPSAKE_URL", base)
        .env("KEEPSAKE_ADMIN_TOKEN", ADMIN)
        .envs(env.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run keepsake");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// What a device and an operator are told about the user: the device's full pull, the
/// user's events, its state at time `t` and at seq 9.
async fn answers(
    s: &Server,
    env: &Env,
    phone: &str,
    user: &str,
    t: &str,
) -> (Value, Value, Value, Value) {
    (
        s.pull(phone, "").await["changes"].clone(),
        cli(&s.base, env, &["events", "--user", user, "--json"]),
        cli(
            &s.base,
            env,
            &["state", "--user", user, "--as-of", t, "--json"],
        ),
        cli(
            &s.base,
            env,
            &["state", "--user", user, "--as-of-seq", "9", "--json"],
        ),
    )
}

/// SIGKILL in the middle of an operator's compaction: a restarted server gives every answer it
/// gave before, verify finds nothing wrong, and the next compaction finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_killed_midway_loses_nothing() {
    let env = Env::new(Backend::File).await;
    // Tiny history objects: a compaction of 200 segments is ~100 rounds, each a write, a
    // read-back and deletes, so a kill after the first one lands midway.
    let settings = [
        ("KEEPSAKE_COMPACTION", "false"),
        ("KEEPSAKE_COMPACTION_MAX_EVENTS", "10"),
        ("KEEPSAKE_SHARDS", "1"),
    ];
    let s = Server::start(&env, &settings).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let note = uuid();
    s.push(&phone, json!([put(&note, "note", json!({"v": 0}))]))
        .await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for i in 1..200 {
        let changes = json!([
            {"change_id": uuid(), "kind": "note", "item_id": note, "op": "patch", "document": {"v": i}},
            put(&uuid(), "contact", json!({"name": format!("c{i}")})),
        ]);
        s.push(&phone, changes).await;
    }
    let before = answers(&s, &env, &phone, &user, &t).await;
    let base = s.base.clone();
    let compacting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/admin/v1/compact"))
            .bearer_auth(ADMIN)
            .send()
            .await
    });
    let mut written = false;
    for _ in 0..2000 {
        if s.logged()
            .iter()
            .any(|l| l.contains("history object written"))
        {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(written, "the compaction started");
    drop(s); // SIGKILL
    let _ = compacting.await;
    let data = std::path::Path::new(&env.url).join("shards/0");
    let count = |dir: &str| std::fs::read_dir(data.join(dir)).map_or(0, |d| d.count());
    let (segments_left, history) = (count("segments"), count("history"));
    assert!(history >= 1, "some history objects were written");
    assert!(
        segments_left > 0,
        "the kill landed midway: {segments_left} segments left"
    );

    let s = Server::start(&env, &settings).await;
    assert_eq!(answers(&s, &env, &phone, &user, &t).await, before);
    let verify = cli(&s.base, &env, &["verify", "--store", &env.url, "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    let done = cli(&s.base, &env, &["compact", "--json"]);
    assert!(done["segments_compacted"].as_u64() >= Some(1), "{done}");
    assert_eq!(count("segments"), 0, "every segment compacted");
    assert_eq!(answers(&s, &env, &phone, &user, &t).await, before);
    let verify = cli(&s.base, &env, &["verify", "--store", &env.url, "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
}
