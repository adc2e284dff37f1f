//! Events: what the log stores, one per applied change.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::document::Document;
use crate::ids::{ChangeId, DeviceId, EventId, ItemId, RequestId, RestoreId, UserId};
use crate::kind::{Kind, Op, Origin};

/// One applied change and its metadata. Immutable once written.
///
/// `document` is the item's whole document *after* the change (for a patch, the merged result),
/// and `None` for a delete. Storing the result rather than the patch means any version can be read
/// from one row, and replaying the log never depends on merge-patch code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Whose data this is.
    pub user_id: UserId,
    /// Position in the user's log: dense from 1.
    pub seq: u64,
    /// The server's id for this event (UUIDv7).
    pub event_id: EventId,
    /// The device's idempotency key; unique per user for the life of the log.
    pub change_id: ChangeId,
    /// The device that pushed it; `None` for restores.
    pub device_id: Option<DeviceId>,
    /// Who caused it.
    pub origin: Origin,
    /// The HTTP request that carried it.
    pub request_id: Option<RequestId>,
    /// The restore that wrote it, for origin `restore`.
    pub restore_id: Option<RestoreId>,
    /// The item's kind.
    pub kind: Kind,
    /// The item.
    pub item_id: ItemId,
    /// What the change did.
    pub op: Op,
    /// The item's version after this event: 1 for the first event of an item, +1 for each next.
    pub version: u64,
    /// Commit time: one per segment, never going backwards within a shard.
    pub recorded_at: DateTime<Utc>,
    /// The document after the change; `None` for a delete.
    pub document: Option<Document>,
}

impl Event {
    /// What the allocator gave this event decoded: the struct and its document's text behind
    /// its `Arc` (the other ids are inline). What upkeep counts of the segments it holds
    /// (a compaction), so that the views give way to them.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + crate::memory::document_bytes(self.document.as_ref())
    }
}
