//! A lost store descriptor: the server refuses to start a new store on top of the old one's data,
//! and `keepsake recover-descriptor` writes the old descriptor back, after which devices carry on
//! with their old tokens. On the file store and on S3 (the library-level checks also in memory).

use std::sync::Arc;

use keepsake::recover::{IdFrom, RecoverArgs, recover};
use keepsake_log::{Log, LogConfig, PushRequest};
use keepsake_model::{
    Change, ChangeBody, ChangeId, EventMeta, ItemId, Kind, Origin, RandomIds, SystemClock, UserId,
};
use keepsake_store::keys;
use keepsake_tests::Backend;
use object_store::{ObjectStore, ObjectStoreExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::*;

macro_rules! file_and_s3 {
    ($($name:ident),* $(,)?) => {
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory_lib { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::Memory).await } )* }
        mod file_lib { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3_lib { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

file_and_s3!(a_lost_descriptor_is_refused_then_recovered_and_old_tokens_work);
on_every_backend!(the_shard_count_is_taken_only_when_the_store_tells_it);

fn random() -> Uuid {
    keepsake_model::IdGenerator::random(&RandomIds)
}

fn store_of(env: &Env) -> Arc<dyn ObjectStore> {
    keepsake_store::open_store_with_env(&env.url, env.env.clone())
        .expect("open the store")
        .inner
}

/// A user id that hashes to shard `shard` of `of`.
fn user_in_shard(shard: u32, of: u32) -> String {
    loop {
        let u = UserId(random());
        if keys::shard_for(&u, of) == shard {
            return u.to_string();
        }
    }
}

fn stdout_json(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

async fn a_lost_descriptor_is_refused_then_recovered_and_old_tokens_work(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    // One user in each of the 2 shards, so the listing tells the shard count.
    let mut devices = Vec::new();
    for shard in 0..2 {
        let user = user_in_shard(shard, 2);
        let phone = s.register(&user, "phone").await;
        let r = s
            .push(
                &phone,
                json!([put(&uuid(), "note", json!({"t": "keep me"}))]),
            )
            .await;
        let token = r["token"].as_str().expect("token").to_string();
        let pulled = s.pull(&phone, "").await;
        devices.push((phone, token, pulled));
    }
    let (_, session) = s
        .call(Method::GET, "/v1/session", Some(&devices[0].0), None)
        .await;
    let store_id = session["store_id"].as_str().expect("store_id").to_string();
    assert!(s.stop().success());

    let store = store_of(&env);
    store
        .delete(&keys::descriptor())
        .await
        .expect("lose keepsake.json");

    // The server refuses to start, with its own shard count or another one, and says what to run.
    for extra in [&[][..], &[("KEEPSAKE_SHARDS", "3")][..]] {
        let (status, stderr) = serve_expecting_exit(&env, extra);
        assert!(!status.success(), "{extra:?}: {stderr}");
        for needed in [
            "keepsake.json is missing",
            "Nothing was written",
            &format!("keepsake verify --store {}", env.url),
            &format!("keepsake recover-descriptor --store {}", env.url),
        ] {
            assert!(stderr.contains(needed), "{needed:?} in {stderr}");
        }
        assert_eq!(
            keepsake_store::read_descriptor(store.as_ref())
                .await
                .expect("read"),
            None,
            "a refused start writes no descriptor"
        );
    }

    // verify works on the store without its descriptor (it tells the shard count from the
    // listing, and checks every user against it).
    let verified = stdout_json(
        &keepsake(&env, &["verify", "--store", &env.url, "--json"]),
        "verify",
    );
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["shards"], 2);

    // No store id chosen: refused, with the ways to choose one.
    let out = keepsake(&env, &["recover-descriptor", "--store", &env.url]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--store-id") && stderr.contains("--new-store-id"),
        "{stderr}"
    );

    // A dry run writes nothing.
    let dry = stdout_json(
        &keepsake(
            &env,
            &[
                "recover-descriptor",
                "--store",
                &env.url,
                "--from-sync-token",
                &devices[0].1,
                "--dry-run",
            ],
        ),
        "dry run",
    );
    assert_eq!(dry["written"], false);
    assert_eq!(
        keepsake_store::read_descriptor(store.as_ref())
            .await
            .expect("read"),
        None
    );

    // The old store id, from a device's sync token; the shard count from the listing.
    let recovered = stdout_json(
        &keepsake(
            &env,
            &[
                "recover-descriptor",
                "--store",
                &env.url,
                "--from-sync-token",
                &devices[0].1,
            ],
        ),
        "recover-descriptor",
    );
    assert_eq!(recovered["written"], true, "{recovered}");
    assert_eq!(recovered["descriptor"]["store_id"], store_id.as_str());
    assert_eq!(recovered["descriptor"]["shard_count"], 2);
    assert_eq!(recovered["shard_count_from"], "listing");
    assert_eq!(recovered["store_id_from"], "sync_token");
    assert_eq!(recovered["placement"]["shards_checked"], 2);
    assert_eq!(recovered["placement"]["misplaced"], json!([]));

    // Once written, never replaced.
    let out = keepsake(
        &env,
        &["recover-descriptor", "--store", &env.url, "--new-store-id"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing to recover"), "{stderr}");

    // The server starts on the old store: devices' tokens work, their data is there.
    let s = Server::start(&env, &[]).await;
    for (phone, token, pulled) in &devices {
        assert_eq!(&s.pull(phone, "").await, pulled);
        let since = s.pull(phone, &format!("?since={token}")).await;
        assert_eq!(
            since["changes"],
            json!([]),
            "the old sync token still works"
        );
        let r = s
            .push(phone, json!([put(&uuid(), "note", json!({"t": 2}))]))
            .await;
        // seq 1 is the device's registration, 2 its first push
        assert_eq!(r["results"][0]["seq"], 3, "seq continues");
    }
    let (status, _) = s
        .call(Method::GET, "/v1/session", Some(&devices[1].0), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

fn meta() -> EventMeta {
    EventMeta {
        device_id: None,
        origin: Origin::Device,
        request_id: None,
        restore_id: None,
    }
}

fn args(url: &str) -> RecoverArgs {
    RecoverArgs {
        store: keepsake::config::StoreArgs::with_url(url),
        store_id: None,
        from_sync_token: None,
        new_store_id: false,
        shards: None,
        dry_run: false,
    }
}

/// A store of 4 shards with one user, in shard 1: shard 0 holds nothing, so the listing cannot
/// tell the count (shards 2 and 3 may hold nothing as well). Without `--shards` the recovery is
/// refused; with too few, or with a count the user does not hash to shard 1 with, too; with the
/// right one it writes the old store id.
async fn the_shard_count_is_taken_only_when_the_store_tells_it(backend: Backend) {
    let ts = keepsake_tests::store(backend).await.expect("store");
    let log = Log::open(
        ts.store.clone(),
        Some(4),
        LogConfig::default(),
        Arc::new(SystemClock),
        Arc::new(RandomIds),
    )
    .await
    .expect("open");
    let original = log.descriptor().clone();
    // In shard 1 of 4, but not of 3 (a wrong count the placement check must catch).
    let user = loop {
        let u = UserId(random());
        if keys::shard_for(&u, 4) == 1 && keys::shard_for(&u, 3) != 1 {
            break u;
        }
    };
    log.push(PushRequest {
        user_id: user,
        meta: meta(),
        changes: vec![Change {
            change_id: ChangeId(random()),
            kind: Kind::Note,
            item_id: ItemId(random()),
            base_version: None,
            body: ChangeBody::put(json!({"t": "keep me"})),
        }],
        confirm_mass_delete: false,
    })
    .await
    .expect("push");
    log.shutdown().await;
    let store = ts.reopen().expect("reopen");
    store
        .delete(&keys::descriptor())
        .await
        .expect("lose keepsake.json");

    let run = |a: RecoverArgs| {
        let store = store.clone();
        async move { recover(&store, &a, &SystemClock, &RandomIds).await }
    };
    let old_id = original.store_id.to_string();
    let with_id = RecoverArgs {
        store_id: Some(old_id.clone()),
        ..args(&ts.url)
    };
    for (shards, expected) in [
        (None, "shard 1 holds data but shard 0 holds nothing"),
        (Some(1), "at least 2 shards, not 1"),
        (Some(3), "not written with 3 shards"),
    ] {
        let err = run(RecoverArgs {
            shards,
            ..with_id.clone()
        })
        .await
        .expect_err("refused");
        let msg = format!("{err:#}");
        assert!(msg.contains(expected), "{shards:?}: {expected:?} in {msg}");
        assert_eq!(
            keepsake_store::read_descriptor(store.as_ref())
                .await
                .expect("read"),
            None,
            "a refusal writes nothing"
        );
    }
    // Two ways of naming the store id at once: refused.
    let both = RecoverArgs {
        new_store_id: true,
        shards: Some(4),
        ..with_id.clone()
    };
    assert!(run(both).await.is_err());

    let report = run(RecoverArgs {
        shards: Some(4),
        ..with_id.clone()
    })
    .await
    .expect("recovered");
    assert_eq!(report.store_id_from, IdFrom::StoreId);
    assert!(report.recovered.written);
    assert_eq!(report.placement.users_checked, 1);
    let d = keepsake_store::read_descriptor(store.as_ref())
        .await
        .expect("read")
        .expect("written");
    assert_eq!((d.store_id, d.shard_count), (original.store_id, 4));

    // The log opens as the old store, and the user's data is where it was.
    let log = Log::open(
        store.clone(),
        None,
        LogConfig::default(),
        Arc::new(SystemClock),
        Arc::new(RandomIds),
    )
    .await
    .expect("opens after the recovery");
    assert_eq!(log.descriptor().store_id, original.store_id);
    assert_eq!(log.last_seq(&user).await.expect("seq"), 1);
    log.shutdown().await;
}
