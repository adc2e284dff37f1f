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
    change(Kind::Note, item_id, None, ChangeBody::Put { document: doc })
}

pub fn push_of(user_id: UserId, changes: Vec<Change>) -> PushRequest {
    PushRequest {
        user_id,
        meta: meta(),
        changes,
        confirm_mass_delete: false,
    }
}

pub fn fast_config() -> LogConfig {
    LogConfig {
        commit_window: std::time::Duration::from_millis(2),
        retry_backoff: std::time::Duration::from_millis(5),
        ..LogConfig::default()
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
