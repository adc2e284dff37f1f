//! The operator API, `/admin/v1` (operator token), one file per job: devices (`devices.rs`),
//! reading the past (`history.rs`: items at a moment, the audit of events, diffs), restores of
//! one user and of the fleet (`restores.rs`), and whole-log maintenance (`maintenance.rs`:
//! verify, rebuild, compact). What they share — reading a moment, a kind filter — is here.

mod devices;
mod history;
mod maintenance;
mod restores;

pub(super) use devices::{list_devices, register_device, revoke_device};
pub(super) use history::{diff, events, items_as_of};
pub(super) use maintenance::{compact, rebuild, verify};
pub(super) use restores::{fleet_restore_progress, restore_user, start_fleet_restore};

use chrono::{DateTime, Utc};
use keepsake_log::UpTo;
use keepsake_model::Kind;

use super::ApiError;

pub(in crate::api) fn parse_time(what: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::malformed(format!("{what} {s:?} is not an RFC 3339 time")))
}

/// `as_of=T` or `as_of_seq=N`, exactly one.
pub(super) fn moment(as_of: Option<&str>, as_of_seq: Option<&str>) -> Result<UpTo, ApiError> {
    match (as_of, as_of_seq) {
        (Some(t), None) => Ok(UpTo::Time(parse_time("as_of", t)?)),
        (None, Some(n)) => n
            .parse()
            .map(UpTo::Seq)
            .map_err(|_| ApiError::malformed(format!("as_of_seq {n:?} is not a whole number"))),
        _ => Err(ApiError::malformed(
            "give exactly one of as_of (RFC 3339) and as_of_seq",
        )),
    }
}

/// Restores bring back the user's data; devices are registered and revoked, not restored.
pub(super) fn data_kinds_only(kinds: &Option<Vec<Kind>>) -> Result<(), ApiError> {
    match kinds.iter().flatten().find(|k| !k.is_data()) {
        Some(k) => Err(ApiError::malformed(format!(
            "kind {k} is not restored: devices are registered and revoked"
        ))),
        None => Ok(()),
    }
}

pub(super) fn kind_filter(kinds: Option<&str>) -> Result<Option<Vec<Kind>>, ApiError> {
    kinds
        .map(|k| {
            k.split(',')
                .map(|k| {
                    Kind::parse(k.trim())
                        .ok_or_else(|| ApiError::malformed(format!("unknown kind {k:?}")))
                })
                .collect()
        })
        .transpose()
}
