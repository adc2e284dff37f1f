//! The record of a single-user restore, `restores/<restore_id>.json`, format version 1: what
//! was asked (moment, kinds, reason) and what was written. A restore sent again under the same
//! id answers from it (`restore.rs`). Records written before the format carried a version have
//! no `format_version` field; they are version 1 (the same fields). A record of a version this
//! build does not know, or one missing a field, is refused with a message saying which — never
//! read as zeros.

use chrono::{DateTime, Utc};
use keepsake_model::{Kind, RestoreId, UserId};
use serde::{Deserialize, Serialize};

/// The record format version this build writes.
pub const RECORD_VERSION: u32 = 1;
/// Every record format version this build reads.
pub const KNOWN_VERSIONS: &[u32] = &[1];

fn version_1() -> u32 {
    1
}

/// A single-user restore, as recorded after its changes were committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRecord {
    /// The format version (absent in the oldest records: 1).
    #[serde(default = "version_1")]
    pub format_version: u32,
    /// The restore (its events carry it).
    pub restore_id: RestoreId,
    /// Always `user` (fleet jobs keep their own records).
    pub scope: String,
    /// The user restored.
    pub user_id: UserId,
    /// The moment as the operator gave it, if by time.
    pub as_of: Option<String>,
    /// The moment as the operator gave it, if by seq.
    pub as_of_seq: Option<u64>,
    /// Only these kinds, if given.
    pub kinds: Option<Vec<Kind>>,
    /// Why.
    pub reason: String,
    /// Items brought back from deletion.
    pub restored: u64,
    /// Items whose document changed back.
    pub reverted: u64,
    /// Items created after the moment, deleted.
    pub removed: u64,
    /// The user's seq after the restore.
    pub seq: u64,
    /// When the record was written.
    pub recorded_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default = "version_1")]
    format_version: u32,
}

impl RestoreRecord {
    /// Reads a stored record; the error says what is wrong (no user data).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let VersionOnly { format_version } = serde_json::from_slice(bytes)
            .map_err(|e| format!("restore record is not a JSON object: {e}"))?;
        if !KNOWN_VERSIONS.contains(&format_version) {
            return Err(format!(
                "restore record format version {format_version} is not one this build reads \
                 ({KNOWN_VERSIONS:?})"
            ));
        }
        let record: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("restore record: {e}"))?;
        if record.scope != "user" {
            return Err(format!(
                "restore record scope {:?} is not \"user\"",
                record.scope
            ));
        }
        Ok(record)
    }

    /// The stored bytes.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;

    fn golden() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/golden/restore-record-v1.json"
        );
        std::fs::read(path).expect("schemas/golden/restore-record-v1.json")
    }

    /// The golden file is a record as the build before format versions wrote it.
    #[test]
    fn the_golden_v1_record_still_decodes() {
        let r = RestoreRecord::decode(&golden()).expect("decodes");
        assert_eq!(r.format_version, 1);
        assert_eq!(
            r.restore_id.to_string(),
            "0190f6a4-8d2c-7e55-a3b1-5c2f0e9d4a10"
        );
        assert_eq!(
            r.user_id.to_string(),
            "6b1d7e9a-2f3c-4d5e-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(r.as_of.as_deref(), Some("2026-11-30T08:15:00Z"));
        assert_eq!(r.as_of_seq, None);
        assert_eq!(r.kinds, Some(vec![Kind::Contact, Kind::Note]));
        assert_eq!(r.reason, "the phone wiped itself");
        assert_eq!((r.restored, r.reverted, r.removed, r.seq), (7, 3, 2, 58));
        assert_eq!(
            r.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "2026-11-30T09:00:01.250000Z"
        );
    }

    #[test]
    fn a_record_round_trips_with_its_version() {
        let r = RestoreRecord::decode(&golden()).expect("decodes");
        let bytes = r.encode().expect("encode");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["format_version"], 1);
        assert_eq!(RestoreRecord::decode(&bytes).expect("decodes"), r);
    }

    #[test]
    fn unknown_versions_and_damaged_records_are_refused_by_name() {
        let mut v: serde_json::Value = serde_json::from_slice(&golden()).expect("json");
        v["format_version"] = 2.into();
        let e = RestoreRecord::decode(v.to_string().as_bytes()).expect_err("refused");
        assert!(e.contains("format version 2"), "{e}");
        let mut v: serde_json::Value = serde_json::from_slice(&golden()).expect("json");
        v.as_object_mut().expect("object").remove("restored");
        let e = RestoreRecord::decode(v.to_string().as_bytes()).expect_err("refused");
        assert!(e.contains("restored"), "{e}");
        let mut v: serde_json::Value = serde_json::from_slice(&golden()).expect("json");
        v["seq"] = "many".into();
        assert!(RestoreRecord::decode(v.to_string().as_bytes()).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&golden()).expect("json");
        v["scope"] = "fleet".into();
        assert!(RestoreRecord::decode(v.to_string().as_bytes()).is_err());
        assert!(RestoreRecord::decode(b"[1, 2]").is_err());
    }
}
