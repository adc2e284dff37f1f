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

/// The items a pull answered, in its order.
fn item_ids(pulled: &serde_json::Value) -> Vec<&str> {
    pulled["changes"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["item_id"].as_str()).collect())
        .unwrap_or_default()
}

/// A pull with nothing new, of a user the views do not hold, is answered from the view's index:
/// no load of the user (the store is billed per request, and this is a device checking in).
/// Anything new for the user is still answered, and a long poll wakes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_with_nothing_new_of_a_user_out_of_memory_does_not_load_the_user() {
    let env = Env::new(Backend::File).await;
    // A one-byte view budget: every user leaves memory after each commit.
    let s = Server::start(&env, &[("KEEPSAKE_VIEW_MEMORY_BYTES", "1")]).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let laptop = s.register(&user, "laptop").await;
    let first = uuid();
    s.push(&phone, json!([put(&first, "note", json!({"t": 1}))]))
        .await;
    let all = s.pull(&phone, "").await;
    let token = all["token"].as_str().expect("token").to_string();
    // Another user's push: this user is out of memory now.
    let other = s.register(&uuid(), "other").await;
    s.push(&other, json!([put(&uuid(), "note", json!({"t": 0}))]))
        .await;

    let misses = s.metric("keepsake_view_misses_total").await;
    let from_index = s.metric("keepsake_pulls_from_index_total").await;
    let (st, v) = pull_since(&s, &phone, &token).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["changes"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["has_more"], false, "{v}");
    assert_eq!(
        s.metric("keepsake_view_misses_total").await,
        misses,
        "the user was loaded for a pull with nothing new"
    );
    assert_eq!(
        s.metric("keepsake_pulls_from_index_total").await,
        from_index + 1
    );
    let token = v["token"].as_str().expect("token").to_string();

    // The user's other device changes something: the next pull reads the user and answers it.
    let second = uuid();
    s.push(&laptop, json!([put(&second, "note", json!({"t": 2}))]))
        .await;
    let (st, v) = pull_since(&s, &phone, &token).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(item_ids(&v), vec![second.as_str()], "{v}");
    let token = v["token"].as_str().expect("token").to_string();

    // A long poll with nothing new waits (looking at the index, not the user), and wakes for
    // the laptop's next change.
    let third = uuid();
    let polled = format!("/v1/changes?since={token}&wait=20");
    let poll = s.call(Method::GET, &polled, Some(&phone), None);
    let change = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        s.push(&other, json!([put(&uuid(), "note", json!({"t": 0}))]))
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        s.push(&laptop, json!([put(&third, "note", json!({"t": 3}))]))
            .await;
    };
    let ((st, v), ()) = tokio::join!(poll, change);
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(item_ids(&v), vec![third.as_str()], "{v}");
    assert!(s.stop().success());
}

/// A token's mark is checked against the segment the server holds under that number: a store
/// put back from an older copy, whose numbers were then written again by other users' pushes,
/// answers `server_behind` to the device whose changes it lost, never "nothing new".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_token_from_before_a_store_went_back_is_still_server_behind() {
    let env = Env::new(Backend::File).await;
    let data = std::path::PathBuf::from(&env.url);
    // One shard: the other user's segments take the numbers the lost ones had.
    let one = [("KEEPSAKE_SHARDS", "1")];
    let s = Server::start(&env, &one).await;
    let user = uuid();
    let phone = s.register(&user, "phone").await;
    let other = s.register(&uuid(), "other").await;
    s.push(&phone, json!([put(&uuid(), "note", json!({"t": "kept"}))]))
        .await;
    assert!(s.stop().success());
    let backup = tempfile::tempdir().expect("tempdir");
    copy_dir(&data, backup.path());

    let s = Server::start(&env, &one).await;
    s.push(&phone, json!([put(&uuid(), "note", json!({"t": "lost"}))]))
        .await;
    let segments = s.segments().await;
    let all = s.pull(&phone, "").await;
    let token = all["token"].as_str().expect("token").to_string();
    assert!(s.stop().success());

    std::fs::remove_dir_all(&data).expect("remove");
    copy_dir(backup.path(), &data);
    let s = Server::start(&env, &one).await;
    // Other users' pushes write the lost segments' numbers again, and past them.
    for _ in 0..=segments {
        s.push(&other, json!([put(&uuid(), "note", json!({"t": 0}))]))
            .await;
    }
    let (st, v) = pull_since(&s, &phone, &token).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("server_behind")),
        "{v}"
    );
    assert!(s.stop().success());
}
