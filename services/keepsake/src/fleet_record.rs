//! The stored records of a fleet restore job, under `restores/<job>/` (`keys::fleet`), format
//! version 1: the spec, the plan, batches of finished users, and `done.json` or `failed.json`.
//! Each is a typed value; `fleet.rs` writes and reads nothing else. Records written before the
//! format carried a version have no `format_version` field: they are version 1 (the same
//! fields). A record of a version this build does not know, or one missing a field or carrying
//! an unknown one, is refused with a message naming what is wrong — never read as zeros
//! (`done.json` was once read field by field with `unwrap_or(0)`).
//!
//! Goldens: `schemas/golden/fleet-*-v1.json`, as the build before versions wrote them.

use chrono::{DateTime, Utc};
use keepsake_model::{Kind, RestoreId, UserId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::restore::Done;

/// The record format version this build writes.
pub const FLEET_RECORD_VERSION: u32 = 1;
/// Every record format version this build reads.
pub const KNOWN_VERSIONS: &[u32] = &[1];

fn version_1() -> u32 {
    1
}

/// `spec.json`: what an operator asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The format version (absent in the oldest records: 1).
    #[serde(default = "version_1")]
    pub format_version: u32,
    /// The job.
    pub restore_id: RestoreId,
    /// `fleet`.
    pub scope: String,
    /// The moment.
    pub as_of: DateTime<Utc>,
    /// `None`: every user.
    pub users: Option<Vec<UserId>>,
    /// Only these kinds, if given.
    pub kinds: Option<Vec<Kind>>,
    /// Why.
    pub reason: String,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
}

/// `plan.json`: the users, fixed when the job first ran, so a resumed job restores the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The format version.
    #[serde(default = "version_1")]
    pub format_version: u32,
    /// Every user to restore.
    pub users: Vec<UserId>,
}

/// One finished user in a batch: its id and what its restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResult {
    /// The user.
    pub user_id: UserId,
    /// What was written (restore id = UUIDv5(job, user)).
    #[serde(flatten)]
    pub result: Done,
}

/// `batches/<n>.json`: users finished since the previous batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The format version.
    #[serde(default = "version_1")]
    pub format_version: u32,
    /// The users.
    pub users: Vec<UserResult>,
}

/// `done.json`: the job ended; only this ends a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finished {
    /// The format version.
    #[serde(default = "version_1")]
    pub format_version: u32,
    /// When.
    pub finished_at: DateTime<Utc>,
    /// Users in the plan.
    pub users_total: u64,
    /// Users restored.
    pub users_done: u64,
    /// Changes written over every user.
    pub changes_written: u64,
}

/// `failed.json`: faults outlasted the job's retries (it resumes when a server starts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failed {
    /// The format version.
    #[serde(default = "version_1")]
    pub format_version: u32,
    /// What stopped it.
    pub error: String,
    /// When.
    pub finished_at: DateTime<Utc>,
}

/// A record kind: what error messages call it.
pub trait Record: Serialize + DeserializeOwned {
    /// Its file, for messages.
    const WHAT: &'static str;
}

impl Record for JobSpec {
    const WHAT: &'static str = "fleet restore spec.json";
}
impl Record for Plan {
    const WHAT: &'static str = "fleet restore plan.json";
}
impl Record for Batch {
    const WHAT: &'static str = "fleet restore batch";
}
impl Record for Finished {
    const WHAT: &'static str = "fleet restore done.json";
}
impl Record for Failed {
    const WHAT: &'static str = "fleet restore failed.json";
}
/// Per-user records of older versions (`users/<user_id>.json`): a [`Done`].
impl Record for Done {
    const WHAT: &'static str = "fleet restore user record";
}

#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default = "version_1")]
    format_version: u32,
}

/// Reads a stored record; the error says what is wrong (no user data).
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, String> {
    let VersionOnly { format_version } = serde_json::from_slice(bytes)
        .map_err(|e| format!("{} is not a JSON object: {e}", T::WHAT))?;
    if !KNOWN_VERSIONS.contains(&format_version) {
        return Err(format!(
            "{} format version {format_version} is not one this build reads ({KNOWN_VERSIONS:?})",
            T::WHAT
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("{}: {e}", T::WHAT))
}

/// The stored bytes.
pub fn encode<T: Record>(record: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(record).map_err(|e| format!("{}: {e}", T::WHAT))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;

    fn golden(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../schemas/golden/fleet-{name}-v1.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).expect(&path)
    }

    /// Decodes a golden file, and checks it encodes back to the same record with its version.
    fn round_trip<T: Record + PartialEq + std::fmt::Debug>(name: &str) -> T {
        let r: T = decode(&golden(name)).expect(name);
        let bytes = encode(&r).expect("encode");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        if name != "user" {
            assert_eq!(v["format_version"], 1, "{name}");
        }
        assert_eq!(decode::<T>(&bytes).expect("again"), r, "{name}");
        r
    }

    #[test]
    fn the_golden_v1_records_still_decode() {
        let spec: JobSpec = round_trip("spec");
        assert_eq!((spec.format_version, spec.scope.as_str()), (1, "fleet"));
        assert_eq!(spec.users, None);
        assert_eq!(spec.kinds, Some(vec![Kind::Contact, Kind::Event]));
        assert_eq!(spec.as_of.to_rfc3339(), "2026-11-30T08:15:00+00:00");
        let plan: Plan = round_trip("plan");
        assert_eq!(plan.users.len(), 2);
        let batch: Batch = round_trip("batch");
        assert_eq!(batch.users.len(), 2);
        let d = &batch.users[1].result;
        assert_eq!((d.restored, d.reverted, d.removed, d.seq), (4, 1, 0, 31));
        assert_eq!(batch.users[1].user_id, plan.users[1]);
        let done: Finished = round_trip("done");
        assert_eq!(
            (done.users_total, done.users_done, done.changes_written),
            (2, 2, 9)
        );
        let failed: Failed = round_trip("failed");
        assert!(failed.error.contains("store"), "{}", failed.error);
        let user: Done = round_trip("user");
        assert_eq!(user.restored, 5);
    }

    #[test]
    fn unknown_versions_and_damaged_records_are_refused_by_name() {
        let mut v: serde_json::Value = serde_json::from_slice(&golden("done")).expect("json");
        v["format_version"] = 2.into();
        let e = decode::<Finished>(v.to_string().as_bytes()).expect_err("refused");
        assert!(e.contains("done.json format version 2"), "{e}");
        let mut v: serde_json::Value = serde_json::from_slice(&golden("done")).expect("json");
        v.as_object_mut().expect("object").remove("users_done");
        let e = decode::<Finished>(v.to_string().as_bytes()).expect_err("refused");
        assert!(e.contains("users_done"), "{e}");
        let mut v: serde_json::Value = serde_json::from_slice(&golden("spec")).expect("json");
        v["surprise"] = true.into();
        let e = decode::<JobSpec>(v.to_string().as_bytes()).expect_err("refused");
        assert!(e.contains("surprise"), "{e}");
        assert!(decode::<Plan>(b"[1]").is_err());
        assert!(decode::<Batch>(b"{\"users\": [{\"user_id\": 3}]}").is_err());
    }
}
