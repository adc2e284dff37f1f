//! Sync tokens refused for their real causes, not forged bytes: a store put back from an older
//! copy (same store id, fewer events) answers `server_behind`, and another store answers
//! `token_from_other_store`. Neither ever answers "your account is empty".

use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn pull_since(s: &Server, device: &str, token: &str) -> (StatusCode, serde_json::Value) {
    s.call(
        Method::GET,
        &format!("/v1/changes?since={token}"),
        Some(device),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_tokens_are_refused_for_their_real_causes() {
    let env = Env::new(Backend::File).await;
    let data = std::path::PathBuf::from(&env.url);
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let kept = uuid();
    s.push(&phone, json!([put(&kept, "note", json!({"t": "kept"}))]))
        .await;
    assert!(s.stop().success());
    // An operator's copy of the store, taken now ...
    let backup = tempfile::tempdir().expect("tempdir");
    copy_dir(&data, backup.path());

    // ... after which the device keeps syncing.
    let s = Server::start(&env, &[]).await;
    let lost = uuid();
    let r = s
        .push(
            &phone,
            json!([put(&lost, "note", json!({"t": "after the copy"}))]),
        )
        .await;
    let token = r["token"].as_str().expect("token").to_string();
    assert!(s.stop().success());

    // The store is put back from the copy: same store id, the device's last push missing.
    std::fs::remove_dir_all(&data).expect("remove");
    copy_dir(backup.path(), &data);
    let s = Server::start(&env, &[]).await;
    let (st, v) = pull_since(&s, &phone, &token).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("server_behind")),
        "{v}"
    );
    // The device does what the answer says: keeps its data and pushes it again.
    s.push(
        &phone,
        json!([put(&lost, "note", json!({"t": "after the copy"}))]),
    )
    .await;
    let all = s.pull(&phone, "").await;
    let mut items: Vec<&str> = all["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["item_id"].as_str())
        .collect();
    items.sort();
    let mut want = vec![kept.as_str(), lost.as_str()];
    want.sort();
    assert_eq!(items, want);
    assert!(s.stop().success());

    // Another store (same signing keys, so the device token itself is accepted).
    let other = Env::new(Backend::File).await;
    let s = Server::start(&other, &[]).await;
    let (st, v) = pull_since(&s, &phone, &token).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::GONE, Some("token_from_other_store")),
        "{v}"
    );
}
