use std::sync::Arc;

use keepsake_log::{Log, LogConfig, LogError, PushRequest, PushResult};
use keepsake_model::{
    Change, ChangeBody, ChangeId, DeviceId, EventMeta, ItemId, Kind, Origin, RandomIds,
    SystemClock, UserId,
};
use object_store::ObjectStore;
use serde_json::Value;
use uuid::Uuid;

pub fn uuid() -> Uuid {
    keepsake_model::IdGenerator::random(&RandomIds)
}

pub fn user() -> UserId {
    UserId(uuid())
}

pub fn item() -> ItemId {
    ItemId(uuid())
}

pub fn meta() -> EventMeta {
    EventMeta {
        device_id: Some(DeviceId(Uuid::from_u128(0xD))),
        origin: Origin::Device,
        request_id: None,
        restore_id: None,
    }
}

pub fn change(kind: Kind, item_id: ItemId, base: Option<u64>, body: ChangeBody) -> Change {
    Change {
        change_id: ChangeId(uuid()),
        kind,
        item_id,
        base_version: base,
        body,
    }
}

pub fn put(item_id: ItemId, doc: Value) -> Change {
    change(Kind::Note, item_id, None, ChangeBody::put(doc))
}

/// Puts of `n` new items, each a document of `ids` ids as text (~33 bytes each: zstd cannot
/// shrink them much; 15 make the ~500 bytes of the load generator's documents).
pub fn puts_of_text(n: usize, ids: usize) -> Vec<Change> {
    (0..n)
        .map(|_| {
            let text: String = (0..ids).map(|_| uuid().simple().to_string()).collect();
            put(item(), serde_json::json!({ "text": text }))
        })
        .collect()
}

/// A test store with what it is sent counted as the server counts it (over S3, each range of
/// a `get_ranges` a GET with its bytes).
pub fn counted_store(
    ts: &keepsake_tests::TestStore,
) -> (Arc<dyn ObjectStore>, Arc<keepsake_store::StoreStats>) {
    let stats = Arc::new(keepsake_store::StoreStats::default());
    let counted: Arc<dyn ObjectStore> = Arc::new(keepsake_store::InstrumentedStore::with_ranges(
        ts.store.clone(),
        stats.clone(),
        ts.ranges,
    ));
    (counted, stats)
}

pub fn push_of(user_id: UserId, changes: Vec<Change>) -> PushRequest {
    PushRequest {
        user_id,
        meta: meta(),
        changes,
        confirm_mass_delete: false,
    }
}

/// Requests the store layer sends per call at most (a fault injected this many times is one
/// that retrying does not get past).
pub const STORE_ATTEMPTS: usize = keepsake_store::retrying::DEFAULT_ATTEMPTS as usize;

pub fn fast_config() -> LogConfig {
    LogConfig {
        commit_window: std::time::Duration::from_millis(2),
        retry_backoff: std::time::Duration::from_millis(5),
        store: keepsake_store::RetryPolicy {
            backoff: std::time::Duration::from_millis(5),
            max_backoff: std::time::Duration::from_millis(20),
            ..Default::default()
        },
        upkeep_tick: std::time::Duration::from_millis(10),
        ..LogConfig::default()
    }
}

/// Waits (at most 20 s) until the background checkpointer has written a checkpoint of shard
/// `shard` newer than `after`, and returns its segment number. Call it only once one is due.
/// (It may fall before the head: the checkpointer runs on its own tick while pushes go on.)
pub async fn until_checkpointed(log: &Log, shard: u32, after: Option<u64>) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(c) = log.checkpoint(shard)
            && Some(c) > after
        {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shard {shard} was never checkpointed after {after:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub async fn open(
    store: Arc<dyn ObjectStore>,
    shards: u32,
    cfg: LogConfig,
) -> Result<Log, LogError> {
    Log::open(
        store,
        Some(shards),
        cfg,
        Arc::new(SystemClock),
        Arc::new(RandomIds),
    )
    .await
}

pub async fn push(
    log: &Log,
    user_id: UserId,
    changes: Vec<Change>,
) -> Result<PushResult, LogError> {
    log.push(push_of(user_id, changes)).await
}

/// The document of the user's item as the log's view holds it now (`None`: no such item, or
/// a tombstone).
pub async fn document_of(log: &Log, user: UserId, item: ItemId) -> Option<String> {
    log.user(&user, |s| {
        keepsake_model::StateRead::item(s, &item)
            .and_then(|i| i.document.as_ref().map(|d| d.as_str().to_string()))
    })
    .await
    .expect("user")
}

/// Pushes the way a device does: a retryable error (fenced, unavailable, overloaded) is sent
/// again, a bounded number of times. Returns the answer and the user's last seq just before the
/// attempt that was answered.
pub async fn push_as_device(log: &Log, user_id: UserId, changes: Vec<Change>) -> (PushResult, u64) {
    let mut last = None;
    for _ in 0..20 {
        let before = log.last_seq(&user_id).await.expect("seq");
        match push(log, user_id, changes.clone()).await {
            Ok(r) => return (r, before),
            Err(e) if e.is_retryable() => {
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("push refused: {e:?}"),
        }
    }
    panic!("push not answered after 20 tries: {last:?}")
}

/// The user's item `it` put as {"a":1,"b":1}, then patched to {"a":2}: versions 1 and 2. The put
/// (to send again) and both answers.
pub async fn put_then_patch(log: &Log, u: UserId, it: ItemId) -> (Change, PushResult, PushResult) {
    let first_change = put(it, serde_json::json!({"a": 1, "b": 1}));
    let first = push(log, u, vec![first_change.clone()]).await.expect("v1");
    let patch = change(
        Kind::Note,
        it,
        Some(1),
        ChangeBody::patch(serde_json::json!({"a": 2})),
    );
    let second = push(log, u, vec![patch]).await.expect("v2");
    (first_change, first, second)
}

/// After [`put_then_patch`], a patch based on version 1 that sets "b": merged with version 2
/// into version 3, {"a":2,"b":2} (the base read from wherever the log holds it).
pub async fn stale_patch_merges(log: &Log, u: UserId, it: ItemId) {
    let patch = change(
        Kind::Note,
        it,
        Some(1),
        ChangeBody::patch(serde_json::json!({"b": 2})),
    );
    let merged = push(log, u, vec![patch]).await.expect("v3");
    assert!(
        matches!(merged.outcomes[0], keepsake_model::Outcome::Applied(c) if c.version == 3),
        "{merged:?}"
    );
    assert_eq!(
        document_of(log, u, it).await.as_deref(),
        Some(r#"{"a":2,"b":2}"#)
    );
}

/// The bytes of the object at `path`.
pub async fn object_bytes(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
) -> bytes::Bytes {
    use object_store::ObjectStoreExt as _;
    store
        .get(path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes")
}
