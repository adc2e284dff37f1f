//! The Sidekick scenario: a buggy device wipes a user's data; the operator brings it back to the
//! moment before, as new events, and can undo and redo that.

use std::collections::HashMap;
use std::time::Duration;

use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidekick_scenario_on_file() {
    sidekick(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidekick_scenario_on_s3() {
    sidekick(Backend::S3).await;
}

async fn restore(s: &Server, user: &str, body: Value) -> (StatusCode, Value) {
    s.call(
        Method::POST,
        &format!("/admin/v1/users/{user}/restore"),
        Some(ADMIN),
        Some(body),
    )
    .await
}

fn live(pull: &Value) -> HashMap<String, Value> {
    pull["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["item_id"].as_str().expect("id").to_string(),
                c["document"].clone(),
            )
        })
        .collect()
}

async fn sidekick(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let (phone, tablet) = (
        s.register(&user, "phone").await,
        s.register(&user, "tablet").await,
    );
    // contacts, events, tasks, notes, from both devices
    let types = [
        ("contact", "Card"),
        ("event", "Event"),
        ("task", "Task"),
        ("note", "Note"),
    ];
    let mut originals = HashMap::new();
    for (n, (kind, ty)) in types.iter().cycle().take(32).enumerate() {
        let item = uuid();
        let doc = json!({"@type": ty, "title": format!("{kind} {n}")});
        let device = if n % 2 == 0 { &phone } else { &tablet };
        s.push(device, json!([put(&item, kind, doc.clone())])).await;
        originals.insert(item, doc);
    }
    let before_pull = live(&s.pull(&phone, "?limit=1000").await);
    assert_eq!(before_pull, originals);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(20)).await;

    // At T the buggy phone pushes garbage edits, then a confirmed delete of everything.
    let items: Vec<&String> = originals.keys().collect();
    let kind_of = |item: &str| {
        let ty = originals[item]["@type"].as_str().expect("type");
        types
            .iter()
            .find(|(_, t)| *t == ty)
            .map(|(k, _)| *k)
            .expect("kind")
    };
    let garbage: Vec<Value> = items.iter().take(5).map(|i| json!({"change_id": uuid(), "kind": kind_of(i), "item_id": i, "op": "patch", "document": {"title": "\u{fffd}\u{fffd}"}})).collect();
    s.push(&phone, Value::Array(garbage)).await;
    let wipe: Vec<Value> = items
        .iter()
        .map(|i| json!({"change_id": uuid(), "kind": kind_of(i), "item_id": i, "op": "delete"}))
        .collect();
    let (st, v) = s
        .call(
            Method::POST,
            "/v1/changes",
            Some(&phone),
            Some(json!({"changes": wipe, "confirm_mass_delete": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        live(&s.pull(&tablet, "?limit=1000").await).is_empty(),
        "the wipe reached the other device"
    );

    // Dry run: the counts, nothing written.
    let segments = s.segments().await;
    let (st, dry) = restore(
        &s,
        &user,
        json!({"as_of": t, "dry_run": true, "reason": "buggy phone wiped the account"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{dry}");
    assert_eq!(
        (
            dry["restored"].as_u64(),
            dry["reverted"].as_u64(),
            dry["removed"].as_u64()
        ),
        (Some(32), Some(0), Some(0))
    );
    assert_eq!(s.segments().await, segments, "a dry run writes nothing");

    // Restore to just before T: both devices get every item back with the right document.
    let key = uuid();
    let (st, done) = restore(
        &s,
        &user,
        json!({"as_of": t, "reason": "buggy phone wiped the account", "restore_id": key}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{done}");
    assert_eq!(done["restored"], 32);
    assert_eq!(live(&s.pull(&phone, "?limit=1000").await), originals);
    assert_eq!(live(&s.pull(&tablet, "?limit=1000").await), originals);
    assert_eq!(done["restore_id"], json!(key));
    // A retried restore is a duplicate, not a second restore: with its id it answers the original
    // result; without one it finds nothing left to change. Either way nothing is written twice.
    let (_, again) = restore(
        &s,
        &user,
        json!({"as_of": t, "reason": "buggy phone wiped the account", "restore_id": key}),
    )
    .await;
    assert_eq!(
        (
            again["duplicate"].as_bool(),
            again["restored"].as_u64(),
            again["seq"].clone()
        ),
        (Some(true), Some(32), done["seq"].clone())
    );
    let (_, blind) = restore(
        &s,
        &user,
        json!({"as_of": t, "reason": "buggy phone wiped the account"}),
    )
    .await;
    assert_eq!(
        (blind["restored"].as_u64(), blind["seq"].clone()),
        (Some(0), done["seq"].clone())
    );

    // The restore shows in the item's history and in the audit.
    let item = items[0];
    let (_, history) = s
        .call(
            Method::GET,
            &format!("/v1/items/{item}/history"),
            Some(&tablet),
            None,
        )
        .await;
    let last = history["versions"]
        .as_array()
        .and_then(|v| v.last())
        .cloned()
        .expect("versions");
    assert_eq!(last["origin"], "restore");
    let (_, audit) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/events?after_seq=0&limit=1000"),
            Some(ADMIN),
            None,
        )
        .await;
    let restore_events = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["restore_id"] == done["restore_id"])
        .count();
    assert_eq!(restore_events, 32);

    // Undo the restore (restore to the moment before it), then redo it.
    let restore_seq = done["seq"].as_u64().expect("seq") - 32;
    let (_, undo) = restore(
        &s,
        &user,
        json!({"as_of_seq": restore_seq, "reason": "undo the restore"}),
    )
    .await;
    assert_eq!(undo["removed"], 32);
    assert!(
        live(&s.pull(&phone, "?limit=1000").await).is_empty(),
        "the broken state is back"
    );
    let (_, redo) = restore(&s, &user, json!({"as_of": t, "reason": "repair again"})).await;
    assert_eq!(redo["restored"], 32);
    assert_eq!(live(&s.pull(&tablet, "?limit=1000").await), originals);

    // As-of read and diff agree with what happened.
    let (_, at_t) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/items?as_of={t}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(at_t["items"].as_array().map(Vec::len), Some(32));
    let now = keepsake_model::Clock::now(&keepsake_model::SystemClock)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (_, d) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/diff?from={t}&to={now}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (
            d["added"].as_array().map(Vec::len),
            d["removed"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        d["changed"].as_array().map(Vec::len),
        Some(32),
        "same documents, newer versions"
    );

    // Bad requests: both moments, neither, no reason; a device token.
    for body in [
        json!({"as_of": t, "as_of_seq": 1, "reason": "x"}),
        json!({"reason": "x"}),
        json!({"as_of": t, "reason": " "}),
        json!({"as_of": "yesterday", "reason": "x"}),
    ] {
        let (st, v) = restore(&s, &user, body.clone()).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("malformed_request")),
            "{body}"
        );
    }
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/admin/v1/users/{user}/restore"),
            Some(&phone),
            Some(json!({"as_of": t, "reason": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_restore_resumes_after_a_crash_and_restores_everyone_once() {
    let env = Env::new(Backend::File).await;
    let slow = [
        ("KEEPSAKE_FLEET_RESTORE_USERS_PER_SEC", "15"),
        ("KEEPSAKE_FLEET_RESTORE_CONCURRENCY", "2"),
    ];
    let s = Server::start(&env, &slow).await;
    let users: Vec<String> = (0..24).map(|_| uuid()).collect();
    let mut phones = Vec::new();
    let mut items: HashMap<String, Vec<String>> = HashMap::new();
    for u in &users {
        let phone = s.register(u, "phone").await;
        let its: Vec<String> = (0..3).map(|_| uuid()).collect();
        s.push(
            &phone,
            Value::Array(
                its.iter()
                    .map(|i| put(i, "note", json!({"owner": u})))
                    .collect(),
            ),
        )
        .await;
        items.insert(u.clone(), its);
        phones.push(phone);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A bad deploy wipes every user.
    for (u, phone) in users.iter().zip(&phones) {
        let wipe: Vec<Value> = items[u]
            .iter()
            .map(|i| json!({"change_id": uuid(), "kind": "note", "item_id": i, "op": "delete"}))
            .collect();
        s.push(phone, Value::Array(wipe)).await;
    }
    let (st, started) = s
        .call(
            Method::POST,
            "/admin/v1/restores",
            Some(ADMIN),
            Some(json!({"as_of": t, "users": "all", "reason": "bad deploy at 09:59"})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{started}");
    let job = started["restore_id"]
        .as_str()
        .expect("restore id")
        .to_string();
    // Kill the server (SIGKILL) partway through.
    let mut progress = Value::Null;
    for _ in 0..200 {
        let (_, p) = s
            .call(
                Method::GET,
                &format!("/admin/v1/restores/{job}"),
                Some(ADMIN),
                None,
            )
            .await;
        progress = p;
        if progress["users_done"].as_u64().unwrap_or(0) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done_before_crash = progress["users_done"].as_u64().unwrap_or(0);
    assert!(
        (4..24).contains(&done_before_crash),
        "the crash must land midway: {progress}"
    );
    drop(s);

    // The restarted server resumes the job and finishes it.
    let s = Server::start(&env, &[]).await;
    let mut last = Value::Null;
    for _ in 0..300 {
        let (_, p) = s
            .call(
                Method::GET,
                &format!("/admin/v1/restores/{job}"),
                Some(ADMIN),
                None,
            )
            .await;
        last = p;
        if last["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(
        (last["users_total"].as_u64(), last["users_done"].as_u64()),
        (Some(24), Some(24)),
        "{last}"
    );
    assert_eq!(
        last["changes_written"], 72,
        "every item of every user, once: {last}"
    );
    for (u, phone) in users.iter().zip(&phones) {
        let back = live(&s.pull(phone, "?limit=1000").await);
        assert_eq!(back.len(), 3, "user {u} has every item back");
        let (_, audit) = s
            .call(
                Method::GET,
                &format!("/admin/v1/users/{u}/events?limit=1000"),
                Some(ADMIN),
                None,
            )
            .await;
        let restore_events = audit["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["origin"] == "restore")
            .count();
        assert_eq!(restore_events, 3, "user {u} restored exactly once");
    }
    // After another restart the finished job is not run again (nothing is committed by the new
    // process) and its progress comes from the store; an unknown job is 404.
    drop(s);
    let s = Server::start(&env, &[]).await;
    let (_, p) = s
        .call(
            Method::GET,
            &format!("/admin/v1/restores/{job}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (
            p["state"].as_str(),
            p["users_done"].as_u64(),
            p["changes_written"].as_u64()
        ),
        (Some("done"), Some(24), Some(72)),
        "{p}"
    );
    // The server has looked for unfinished jobs (and found none) before this is read.
    let looked = s.until_logged(&["resumed unfinished fleet restores"]).await;
    assert!(
        looked.contains("jobs=0") || looked.contains("\"jobs\":0"),
        "{looked}"
    );
    assert_eq!(s.segments().await, 0, "a finished job is not run again");
    let (st, p) = s
        .call(
            Method::GET,
            &format!("/admin/v1/restores/{}", uuid()),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (st, p["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // A moment still to come has no state to restore to.
    let (st, p) = s
        .call(
            Method::POST,
            "/admin/v1/restores",
            Some(ADMIN),
            Some(json!({"as_of": "2999-01-01T00:00:00Z", "users": "all", "reason": "typo"})),
        )
        .await;
    assert_eq!(
        (st, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_request")),
        "{p}"
    );
}

/// The operator CLI against a running server: tables by default, the server's JSON with --json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cli_drives_the_admin_api() {
    let env = Env::new(Backend::File).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let item = uuid();
    s.push(&phone, json!([put(&item, "note", json!({"t": "keep"}))]))
        .await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.push(
        &phone,
        json!([{"change_id": uuid(), "kind": "note", "item_id": item, "op": "delete"}]),
    )
    .await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keepsake"))
            .args(args)
            .env("KEEPSAKE_URL", &s.base)
            .env("KEEPSAKE_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("run keepsake");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let json_of =
        |args: &[&str]| -> Value { serde_json::from_str(&cli(args)).expect("--json prints JSON") };
    let state = json_of(&["state", "--user", &user, "--as-of", &t, "--json"]);
    assert_eq!(state["items"][0]["document"], json!({"t": "keep"}));
    // seq 1 is the phone's registration, 2 the put, 3 the delete
    let table = cli(&["state", "--user", &user, "--as-of-seq", "2"]);
    assert!(
        table.starts_with("ITEM") && table.contains(&item),
        "{table}"
    );
    let events = json_of(&["events", "--user", &user, "--json"]);
    assert_eq!(events["events"].as_array().map(Vec::len), Some(3));
    assert!(
        cli(&["events", "--user", &user]).lines().count() == 4,
        "header and three events"
    );
    let dry = json_of(&[
        "restore",
        "--user",
        &user,
        "--as-of",
        &t,
        "--reason",
        "cli",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["restored"].as_u64()),
        (Some(true), Some(1))
    );
    let all = json_of(&[
        "restore-all",
        "--as-of",
        &t,
        "--reason",
        "cli fleet",
        "--json",
    ]);
    assert_eq!(
        (all["state"].as_str(), all["users_done"].as_u64()),
        (Some("done"), Some(1)),
        "{all}"
    );
    assert_eq!(
        s.pull(&phone, "").await["changes"][0]["document"],
        json!({"t": "keep"})
    );
    let diff = cli(&[
        "diff",
        "--user",
        &user,
        "--from",
        &t,
        "--to",
        &keepsake_model::Clock::now(&keepsake_model::SystemClock).to_rfc3339(),
    ]);
    assert!(diff.contains(&item), "{diff}");
    let rebuild = json_of(&["rebuild", "--json"]);
    assert_eq!(rebuild["equal"], true, "{rebuild}");
    let verify = json_of(&["verify", "--store", &env.url, "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    // A wrong token is reported with the server's code, and a non-zero exit.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .args(["rebuild"])
        .env("KEEPSAKE_URL", &s.base)
        .env("KEEPSAKE_ADMIN_TOKEN", "not-the-operator-token")
        .output()
        .expect("run keepsake");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
}
