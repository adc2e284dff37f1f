//! Registering and revoking devices, recorded in the user's log (DESIGN.md promise 7): events of
//! kind `device`, origin `operator`, item id = the device id — a put when the device is
//! registered, a delete when it is revoked. The log then says who could reach the user's data and
//! when, and the state at any moment lists the devices live then.
//!
//! Invariants:
//! - A registration's event is durable before the registry record is written and the token
//!   handed out (`api/admin.rs`); a revocation is in force (its object written) before its event.
//! - Change ids are random. Derived ones could be pushed first by a device (change ids are the
//!   device's idempotency keys, and a device can read device ids), which would make the
//!   operator's event a "duplicate" of the device's change and keep it out of the log.
//! - What a revocation writes is decided from the user's current state (after syncing with the
//!   store): nothing if the device item is already deleted (a retry, or another server did it),
//!   a delete naming the live item's version, or — for a device registered before registrations
//!   were logged — its registration and its delete. A delete that conflicts because a concurrent
//!   revoke recorded it first is success.

use keepsake_log::{Log, LogError, PushRequest};
use keepsake_model::{
    Change, ChangeBody, ChangeId, DeviceId, Document, EventMeta, IdGenerator, ItemId, ItemState,
    Kind, Origin, Outcome, RequestId, UserId,
};
use serde::Serialize;

use crate::devices::DeviceRecord;

/// Why a device event was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum DeviceEventError {
    /// The log refused or failed (retryable ones are answered 429/503).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The event does not fit the user's log (for example the device id is another item's).
    #[error("the device event was refused: {0}")]
    Refused(String),
}

/// The document of a `device` item: what the registry holds about it, never its token.
#[derive(Serialize)]
struct DeviceDocument<'a> {
    #[serde(rename = "@type")]
    ty: &'static str,
    name: &'a str,
    #[serde(rename = "registeredAt")]
    registered_at: String,
}

fn item_of(device: DeviceId) -> ItemId {
    ItemId(device.0)
}

fn registration(record: &DeviceRecord, ids: &dyn IdGenerator) -> Result<Change, DeviceEventError> {
    let document = serde_json::to_value(DeviceDocument {
        ty: Kind::Device.json_type(),
        name: &record.name,
        registered_at: record
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .map_err(|e| DeviceEventError::Refused(e.to_string()))?;
    Ok(Change {
        change_id: ChangeId(ids.random()),
        kind: Kind::Device,
        item_id: item_of(record.device_id),
        base_version: None,
        body: ChangeBody::Put {
            document: Document::from_value(&document),
        },
    })
}

fn revocation(device: DeviceId, base: Option<u64>, ids: &dyn IdGenerator) -> Change {
    Change {
        change_id: ChangeId(ids.random()),
        kind: Kind::Device,
        item_id: item_of(device),
        base_version: base,
        body: ChangeBody::Delete,
    }
}

async fn push(
    log: &Log,
    user: UserId,
    request_id: Option<RequestId>,
    changes: Vec<Change>,
) -> Result<Vec<Outcome>, DeviceEventError> {
    let result = log
        .push(PushRequest {
            user_id: user,
            meta: EventMeta {
                device_id: None,
                origin: Origin::Operator,
                request_id,
                restore_id: None,
            },
            changes,
            confirm_mass_delete: false,
        })
        .await?;
    Ok(result.outcomes)
}

fn refused(outcome: &Outcome) -> DeviceEventError {
    DeviceEventError::Refused(match outcome {
        Outcome::Rejected { code, detail } => format!("{}: {detail}", code.as_str()),
        Outcome::Conflict(item) => format!("item {} changed meanwhile", item.item_id),
        other => format!("{other:?}"),
    })
}

/// Records a new device's registration. Its id is new, so the put must apply.
pub async fn record_registration(
    log: &Log,
    ids: &dyn IdGenerator,
    record: &DeviceRecord,
    request_id: Option<RequestId>,
) -> Result<(), DeviceEventError> {
    let outcomes = push(
        log,
        record.user_id,
        request_id,
        vec![registration(record, ids)?],
    )
    .await?;
    match outcomes.first() {
        Some(Outcome::Applied(_)) => Ok(()),
        Some(other) => Err(refused(other)),
        None => Err(DeviceEventError::Refused("no outcome".into())),
    }
}

/// The device item as the user's log has it now (after syncing with the store).
async fn device_item(
    log: &Log,
    user: UserId,
    device: DeviceId,
) -> Result<Option<ItemState>, DeviceEventError> {
    log.sync(&user).await?;
    Ok(log
        .user(&user, |s| {
            keepsake_model::StateRead::item(s, &item_of(device)).cloned()
        })
        .await?)
}

/// Records a revocation that is already in force. Safe to call again: it writes what the log
/// lacks and nothing twice.
pub async fn record_revocation(
    log: &Log,
    ids: &dyn IdGenerator,
    record: &DeviceRecord,
    request_id: Option<RequestId>,
) -> Result<(), DeviceEventError> {
    let (user, device) = (record.user_id, record.device_id);
    let changes = match device_item(log, user, device).await? {
        Some(item) if item.kind != Kind::Device => {
            return Err(DeviceEventError::Refused(format!(
                "the device's id names a {} item",
                item.kind
            )));
        }
        Some(item) if item.deleted => return Ok(()),
        Some(item) => vec![revocation(device, Some(item.version), ids)],
        None => vec![registration(record, ids)?, revocation(device, Some(1), ids)],
    };
    let outcomes = push(log, user, request_id, changes).await?;
    for outcome in &outcomes {
        match outcome {
            Outcome::Applied(_) => {}
            // Another revoke recorded it first.
            Outcome::Conflict(item) if item.deleted => {}
            other => return Err(refused(other)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use keepsake_log::{LogConfig, UpTo};
    use keepsake_model::{RandomIds, SystemClock};
    use object_store::memory::InMemory;
    use std::sync::Arc;

    async fn log() -> Log {
        Log::open(
            Arc::new(InMemory::new()),
            Some(1),
            LogConfig::default(),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
        )
        .await
        .expect("open")
    }

    fn record(user: UserId) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId(RandomIds.random()),
            user_id: user,
            name: "phone".into(),
            created_at: keepsake_model::Clock::now(&SystemClock),
            revoked_at: None,
        }
    }

    async fn device_ops(log: &Log, user: UserId) -> Vec<keepsake_model::Op> {
        log.user_events(&user, UpTo::End)
            .await
            .expect("events")
            .iter()
            .filter(|e| e.kind == Kind::Device)
            .map(|e| e.op)
            .collect()
    }

    #[tokio::test]
    async fn a_revocation_is_recorded_once_however_often_it_is_sent() {
        let log = log().await;
        let user = UserId(RandomIds.random());
        let r = record(user);
        record_registration(&log, &RandomIds, &r, None)
            .await
            .expect("registered");
        for _ in 0..3 {
            record_revocation(&log, &RandomIds, &r, None)
                .await
                .expect("revoked");
        }
        use keepsake_model::Op;
        assert_eq!(device_ops(&log, user).await, vec![Op::Put, Op::Delete]);
        // A device registered before registrations were logged: both, once.
        let old = record(user);
        for _ in 0..2 {
            record_revocation(&log, &RandomIds, &old, None)
                .await
                .expect("revoked");
        }
        assert_eq!(
            device_ops(&log, user).await,
            vec![Op::Put, Op::Delete, Op::Put, Op::Delete]
        );
        log.shutdown().await;
    }
}
