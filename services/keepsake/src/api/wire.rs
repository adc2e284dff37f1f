//! The JSON shapes the API answers with, as typed structs (those not already typed where they
//! are made: restore results, fleet progress and the verify report). Handlers build these, never
//! `serde_json::json!`.
//!
//! Documents are written as their stored text through [`Doc`], which first checks that strict
//! parsers read it ([`Document::to_raw`]). A stored document that fails (one written before
//! documents were validated at the door, or damaged) makes the answer's serialisation fail with
//! an error naming the item and version, which [`super::json`] turns into a 500 problem: never a
//! panic, a dropped connection, or JSON that clients cannot parse. (`serde_json::json!` around a
//! document builds a `Value`, which such text cannot become, and the macro panics.)

use chrono::{DateTime, SecondsFormat, Utc};
use keepsake_model::{
    ChangeId, DeviceId, Document, Event, EventId, ItemId, ItemState, Kind, Op, Origin, RequestId,
    RestoreId, StoreId, UserId,
};
use serde::{Deserialize, Serialize, Serializer};

use super::Limits;

/// RFC 3339 in UTC with microseconds, as every time in the API is written.
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn serialize_time<S: Serializer>(t: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time(t))
}

/// A stored document, written as it is when strict parsers accept it; otherwise an error that
/// names its item and version (and what is wrong, never the content).
#[derive(Debug, Clone, Copy)]
pub struct Doc<'a> {
    item_id: ItemId,
    version: u64,
    document: &'a Document,
}

impl<'a> Doc<'a> {
    /// The document of `version` of `item_id`, if there is one (a deletion has none).
    pub fn of(item_id: ItemId, version: u64, document: Option<&'a Document>) -> Option<Self> {
        document.map(|document| Self {
            item_id,
            version,
            document,
        })
    }
}

impl Serialize for Doc<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.document.to_raw() {
            Ok(raw) => raw.serialize(serializer),
            Err(e) => Err(serde::ser::Error::custom(format_args!(
                "the stored document of item {} version {} cannot be shown: {e}",
                self.item_id, self.version
            ))),
        }
    }
}

/// `GET /v1/session`.
#[derive(Debug, Serialize)]
pub struct Session {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub store_id: StoreId,
    pub kinds: &'static [Kind],
    pub limits: Limits,
}

/// An item as `GET /v1/items/{id}` and a conflict's `current` show it.
#[derive(Debug, Serialize)]
pub struct ItemView<'a> {
    pub item_id: ItemId,
    pub kind: Kind,
    pub version: u64,
    pub seq: u64,
    pub deleted: bool,
    pub document: Option<Doc<'a>>,
}

impl<'a> ItemView<'a> {
    pub fn of(i: &'a ItemState) -> Self {
        Self {
            item_id: i.item_id,
            kind: i.kind,
            version: i.version,
            seq: i.seq,
            deleted: i.deleted,
            document: Doc::of(i.item_id, i.version, i.document.as_ref()),
        }
    }
}

/// A per-change rejection.
#[derive(Debug, Serialize)]
pub struct ChangeError<'a> {
    pub code: &'static str,
    pub detail: &'a str,
}

/// The result of one change of a push, in request order.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChangeResult<'a> {
    Applied {
        change_id: ChangeId,
        item_id: ItemId,
        version: u64,
        seq: u64,
    },
    Duplicate {
        change_id: ChangeId,
        item_id: ItemId,
        version: u64,
        seq: u64,
    },
    Conflict {
        change_id: ChangeId,
        item_id: ItemId,
        current: ItemView<'a>,
    },
    Rejected {
        change_id: ChangeId,
        item_id: ItemId,
        error: ChangeError<'a>,
    },
}

/// `POST /v1/changes` and `POST /v1/items/{id}/restore`.
#[derive(Debug, Serialize)]
pub struct PushAnswer<'a> {
    pub results: Vec<ChangeResult<'a>>,
    pub token: String,
}

/// One item of a pull page.
#[derive(Debug, Serialize)]
pub struct Pulled<'a> {
    pub item_id: ItemId,
    pub kind: Kind,
    pub op: &'static str,
    pub version: u64,
    pub seq: u64,
    #[serde(serialize_with = "serialize_time")]
    pub changed_at: DateTime<Utc>,
    pub document: Option<Doc<'a>>,
}

impl<'a> Pulled<'a> {
    pub fn of(i: &'a ItemState) -> Self {
        Self {
            item_id: i.item_id,
            kind: i.kind,
            op: if i.deleted { "delete" } else { "put" },
            version: i.version,
            seq: i.seq,
            changed_at: i.changed_at,
            document: Doc::of(i.item_id, i.version, i.document.as_ref()),
        }
    }
}

/// One version of `GET /v1/items/{id}/history`.
#[derive(Debug, Serialize)]
pub struct HistoryVersion<'a> {
    pub version: u64,
    pub seq: u64,
    pub op: Op,
    #[serde(serialize_with = "serialize_time")]
    pub recorded_at: DateTime<Utc>,
    pub device_id: Option<DeviceId>,
    pub origin: Origin,
    pub document: Option<Doc<'a>>,
}

impl<'a> HistoryVersion<'a> {
    pub fn of(e: &'a Event) -> Self {
        Self {
            version: e.version,
            seq: e.seq,
            op: e.op,
            recorded_at: e.recorded_at,
            device_id: e.device_id,
            origin: e.origin,
            document: Doc::of(e.item_id, e.version, e.document.as_ref()),
        }
    }
}

/// `GET /v1/items/{id}/history`.
#[derive(Debug, Serialize)]
pub struct History<'a> {
    pub item_id: ItemId,
    pub versions: Vec<HistoryVersion<'a>>,
}

/// An item as the operator's items and diff answers show it.
#[derive(Debug, Serialize)]
pub struct ItemAt<'a> {
    pub item_id: ItemId,
    pub kind: Kind,
    pub version: u64,
    pub seq: u64,
    #[serde(serialize_with = "serialize_time")]
    pub changed_at: DateTime<Utc>,
    pub document: Option<Doc<'a>>,
}

impl<'a> ItemAt<'a> {
    pub fn of(i: &'a ItemState) -> Self {
        Self {
            item_id: i.item_id,
            kind: i.kind,
            version: i.version,
            seq: i.seq,
            changed_at: i.changed_at,
            document: Doc::of(i.item_id, i.version, i.document.as_ref()),
        }
    }
}

/// `GET /admin/v1/users/{id}/items`.
#[derive(Debug, Serialize)]
pub struct ItemsAt<'a> {
    pub user_id: UserId,
    /// The moment asked for, when it was a time (`null` for `as_of_seq`).
    pub as_of: Option<String>,
    pub seq: u64,
    pub items: Vec<ItemAt<'a>>,
}

/// An item changed between the two moments of a diff.
#[derive(Debug, Serialize)]
pub struct ItemChange<'a> {
    pub before: ItemAt<'a>,
    pub after: ItemAt<'a>,
}

/// `GET /admin/v1/users/{id}/diff`.
#[derive(Debug, Serialize)]
pub struct Diff<'a> {
    pub user_id: UserId,
    pub added: Vec<ItemAt<'a>>,
    pub removed: Vec<ItemAt<'a>>,
    pub changed: Vec<ItemChange<'a>>,
}

/// One event of `GET /admin/v1/users/{id}/events`.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    pub seq: u64,
    pub event_id: EventId,
    pub change_id: ChangeId,
    pub device_id: Option<DeviceId>,
    pub origin: Origin,
    pub request_id: Option<RequestId>,
    pub restore_id: Option<RestoreId>,
    pub kind: Kind,
    pub item_id: ItemId,
    pub op: Op,
    pub version: u64,
    #[serde(serialize_with = "serialize_time")]
    pub recorded_at: DateTime<Utc>,
    pub document: Option<Doc<'a>>,
}

impl<'a> EventView<'a> {
    pub fn of(e: &'a Event) -> Self {
        Self {
            seq: e.seq,
            event_id: e.event_id,
            change_id: e.change_id,
            device_id: e.device_id,
            origin: e.origin,
            request_id: e.request_id,
            restore_id: e.restore_id,
            kind: e.kind,
            item_id: e.item_id,
            op: e.op,
            version: e.version,
            recorded_at: e.recorded_at,
            document: Doc::of(e.item_id, e.version, e.document.as_ref()),
        }
    }
}

/// `GET /admin/v1/users/{id}/events`.
#[derive(Debug, Serialize)]
pub struct Events<'a> {
    pub user_id: UserId,
    pub events: Vec<EventView<'a>>,
    pub has_more: bool,
}

/// `POST /admin/v1/users/{id}/devices`.
#[derive(Debug, Serialize)]
pub struct Registered {
    pub device_id: DeviceId,
    pub token: String,
}

/// `GET /admin/v1/users/{id}/devices`.
#[derive(Debug, Serialize)]
pub struct Devices {
    pub user_id: UserId,
    pub devices: Vec<crate::devices::DeviceRecord>,
}

/// `POST /admin/v1/rebuild` (read back too: a cluster server adds the others' answers).
#[derive(Debug, Serialize, Deserialize)]
pub struct Rebuilt {
    pub state_hash_before: String,
    pub state_hash_after: String,
    pub equal: bool,
    pub users: u64,
    pub events: u64,
    /// `keepsake_log::verify::Problem`s.
    pub problems: Vec<serde_json::Value>,
}

/// `POST /admin/v1/compact` (read back too: a cluster server adds the others' counts).
#[derive(Debug, Serialize, Deserialize)]
pub struct Compacted {
    pub history_objects_written: u64,
    pub segments_compacted: u64,
    pub events_compacted: u64,
    pub bytes_written: u64,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
}

/// `POST /admin/v1/restores`.
#[derive(Debug, Serialize)]
pub struct FleetStarted {
    pub restore_id: RestoreId,
}

/// Every error answer (RFC 9457 `application/problem+json`).
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'a str,
    pub status: u16,
    pub detail: &'a str,
    pub code: &'a str,
}

/// What became of one entry of `POST /v1/import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    Applied,
    Duplicate,
    Rejected,
}

/// Why an entry of an import was rejected.
#[derive(Debug, Serialize)]
pub struct ImportError {
    pub code: &'static str,
    pub detail: String,
}

/// One entry of `POST /v1/import`, in file order.
#[derive(Debug, Serialize)]
pub struct ImportResult {
    /// 1-based line where the entry starts.
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub status: ImportStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<ItemId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ImportError>,
}

/// `POST /v1/import`.
#[derive(Debug, Serialize)]
pub struct ImportAnswer {
    pub results: Vec<ImportResult>,
    pub token: String,
}

/// `POST /v1/mass-delete-confirmation`: until when the user's DAV clients may delete past the
/// mass-delete guard.
#[derive(Debug, Serialize)]
pub struct MassDeleteConfirmation {
    /// The end of the confirmation.
    pub confirmed_until: chrono::DateTime<chrono::Utc>,
    /// Its length in minutes.
    pub minutes: u64,
}
