//! The operator API, `/admin/v1` (operator token). Devices for now; point in time comes later.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keepsake_model::{DeviceId, UserId};
use serde::Deserialize;

use super::{ApiError, OperatorAuth, Shared, json, parse_id, parse_json, read_body};
use crate::device_events::{DeviceEventError, record_registration, record_revocation};
use crate::devices::{DeviceRecord, RegistryError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    name: String,
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotFound => ApiError::not_found("not_found", "no such device for this user"),
        RegistryError::Store(e) => {
            tracing::warn!(error = %e, "device registry store error");
            ApiError::unavailable("the store is unavailable; retry")
        }
        RegistryError::Corrupt(e) => ApiError::internal("device registry", e),
    }
}

fn device_event_error(e: DeviceEventError) -> ApiError {
    match e {
        DeviceEventError::Log(e) => e.into(),
        DeviceEventError::Refused(why) => ApiError::internal("device event", why),
    }
}

pub(super) async fn register_device(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Extension(request_id): Extension<keepsake_model::RequestId>,
    Path(user_id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let bytes = read_body(body, 64 * 1024).await?;
    let RegisterBody { name } = parse_json(&bytes)?;
    let name = name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::malformed("name must be 1 to 200 characters"));
    }
    let ready = state.ready()?;
    let record = DeviceRecord {
        device_id: DeviceId(state.ids.random()),
        user_id: user,
        name,
        created_at: state.clock.now(),
        revoked_at: None,
    };
    // The event first: a token is handed out only once the log says the device could reach
    // the user's data.
    record_registration(&ready.log, state.ids.as_ref(), &record, Some(request_id))
        .await
        .map_err(device_event_error)?;
    if let Err(e) = ready.registry.register(&record).await {
        // No token was handed out: record the device as revoked at once, so the log does not
        // keep a device live that nobody can revoke (best effort; the registration failed).
        if let Err(again) =
            record_revocation(&ready.log, state.ids.as_ref(), &record, Some(request_id)).await
        {
            tracing::error!(user_id = %user, device_id = %record.device_id, error = %again, "a registration that failed stays live in the log");
        }
        return Err(registry_error(e));
    }
    tracing::info!(user_id = %user, device_id = %record.device_id, "device registered");
    let token = state.keys.sign(user, record.device_id);
    Ok(json(
        StatusCode::CREATED,
        &wire::Registered {
            device_id: record.device_id,
            token,
        },
    ))
}

pub(super) async fn list_devices(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let devices = state
        .ready()?
        .registry
        .list(user)
        .await
        .map_err(registry_error)?;
    Ok(json(
        StatusCode::OK,
        &wire::Devices {
            user_id: user,
            devices,
        },
    ))
}

pub(super) async fn revoke_device(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Extension(request_id): Extension<keepsake_model::RequestId>,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let device: DeviceId = parse_id("device_id", &device_id)?;
    let ready = state.ready()?;
    // The revocation takes effect first (the token stops working), then it is recorded.
    let record = ready
        .registry
        .revoke(user, device, state.clock.now())
        .await
        .map_err(registry_error)?;
    record_revocation(&ready.log, state.ids.as_ref(), &record, Some(request_id))
        .await
        .map_err(device_event_error)?;
    tracing::info!(user_id = %user, device_id = %device, "device revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- point in time ----

use std::collections::HashMap;

use axum::extract::Query;
use chrono::{DateTime, Utc};
use keepsake_log::UpTo;
use keepsake_model::{Kind, RestoreId, StateRead};
use serde_json::Value;

pub(super) fn parse_time(what: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::malformed(format!("{what} {s:?} is not an RFC 3339 time")))
}

/// `as_of=T` or `as_of_seq=N`, exactly one.
fn moment(as_of: Option<&str>, as_of_seq: Option<&str>) -> Result<UpTo, ApiError> {
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
fn data_kinds_only(kinds: &Option<Vec<Kind>>) -> Result<(), ApiError> {
    match kinds.iter().flatten().find(|k| !k.is_data()) {
        Some(k) => Err(ApiError::malformed(format!(
            "kind {k} is not restored: devices are registered and revoked"
        ))),
        None => Ok(()),
    }
}

fn kind_filter(kinds: Option<&str>) -> Result<Option<Vec<Kind>>, ApiError> {
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

use super::wire::{self, ItemAt};
use crate::restore::live_items;

pub(super) async fn items_as_of(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let at = moment(
        q.get("as_of").map(String::as_str),
        q.get("as_of_seq").map(String::as_str),
    )?;
    let kinds = kind_filter(q.get("kind").map(String::as_str))?;
    let s = state.ready()?.log.items_at(&user, at).await?;
    let live = live_items(&s, &kinds);
    let answer = wire::ItemsAt {
        user_id: user,
        as_of: match at {
            UpTo::Time(t) => Some(wire::time(&t)),
            _ => None,
        },
        seq: s.last_seq(),
        items: live.values().map(|i| ItemAt::of(i)).collect(),
    };
    Ok(json(StatusCode::OK, &answer))
}

pub(super) async fn events(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| ApiError::malformed(format!("{name} must be a whole number")))
        })
    };
    let after = number("after_seq", 0)?;
    let limit = number("limit", 500)?;
    if !(1..=state.limits.max_page_size as u64).contains(&limit) {
        return Err(ApiError::malformed(format!(
            "limit must be within 1..={}",
            state.limits.max_page_size
        )));
    }
    let log = &state.ready()?.log;
    let upto = after.saturating_add(limit);
    let events = log.user_events(&user, UpTo::Seq(upto)).await?;
    let last = log.last_seq(&user).await?;
    let answer = wire::Events {
        user_id: user,
        events: events
            .iter()
            .filter(|e| e.seq > after)
            .map(wire::EventView::of)
            .collect(),
        has_more: upto < last,
    };
    Ok(json(StatusCode::OK, &answer))
}

pub(super) async fn diff(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let from = parse_time(
        "from",
        q.get("from")
            .ok_or_else(|| ApiError::malformed("from is required"))?,
    )?;
    let to = parse_time(
        "to",
        q.get("to")
            .ok_or_else(|| ApiError::malformed("to is required"))?,
    )?;
    let log = &state.ready()?.log;
    let (a, b) = (
        log.items_at(&user, UpTo::Time(from)).await?,
        log.items_at(&user, UpTo::Time(to)).await?,
    );
    let (a, b) = (live_items(&a, &None), live_items(&b, &None));
    let answer = wire::Diff {
        user_id: user,
        added: b
            .iter()
            .filter(|(id, _)| !a.contains_key(id))
            .map(|(_, i)| ItemAt::of(i))
            .collect(),
        removed: a
            .iter()
            .filter(|(id, _)| !b.contains_key(id))
            .map(|(_, i)| ItemAt::of(i))
            .collect(),
        changed: b
            .iter()
            .filter_map(|(id, new)| {
                a.get(id)
                    .filter(|old| old.version != new.version)
                    .map(|old| wire::ItemChange {
                        before: ItemAt::of(old),
                        after: ItemAt::of(new),
                    })
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    as_of: Option<String>,
    as_of_seq: Option<u64>,
    #[serde(default)]
    dry_run: bool,
    reason: String,
    kinds: Option<Vec<Kind>>,
    /// The operator's idempotency key: a restore with an id already recorded answers with its
    /// recorded result and writes nothing.
    restore_id: Option<RestoreId>,
}

pub(super) async fn restore_user(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Extension(request_id): Extension<keepsake_model::RequestId>,
    Path(user_id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let bytes = read_body(body, 64 * 1024).await?;
    let b: RestoreBody = parse_json(&bytes)?;
    if b.reason.trim().is_empty() {
        return Err(ApiError::malformed("a restore needs a reason"));
    }
    data_kinds_only(&b.kinds)?;
    let at = moment(
        b.as_of.as_deref(),
        b.as_of_seq.map(|n| n.to_string()).as_deref(),
    )?;
    let spec = crate::restore::Spec {
        at,
        as_of: b.as_of,
        as_of_seq: b.as_of_seq,
        kinds: b.kinds,
        reason: b.reason,
    };
    let log = &state.ready()?.log;
    let r = crate::restore::restore_user(
        log,
        state.clock.as_ref(),
        user,
        &spec,
        b.restore_id,
        b.dry_run,
        Some(request_id),
        None,
    )
    .await
    .map_err(restore_error)?;
    Ok(json(StatusCode::OK, &r))
}

fn restore_error(e: crate::restore::RestoreError) -> ApiError {
    match e {
        crate::restore::RestoreError::Log(e) => e.into(),
        crate::restore::RestoreError::OtherUser => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_change",
            "this restore_id belongs to another user",
        ),
        crate::restore::RestoreError::Record(e) => {
            ApiError::unavailable(format!("restore record: {e}"))
        }
    }
}

// ---- rebuild and verify ----

pub(super) async fn verify(
    State(state): State<Shared>,
    _op: OperatorAuth,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let (report, _) =
        keepsake_log::verify::verify_store(log.store(), log.descriptor().shard_count).await?;
    if !report.ok {
        tracing::warn!(problems = report.problems.len(), "verify found problems");
    }
    Ok(json(StatusCode::OK, &report))
}

pub(super) async fn rebuild(
    State(state): State<Shared>,
    _op: OperatorAuth,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let (before, after, report) = log.rebuild().await?;
    Ok(json(
        StatusCode::OK,
        &wire::Rebuilt {
            equal: before == after,
            state_hash_before: before,
            state_hash_after: after,
            users: report.users,
            events: report.events,
            problems: report.problems,
        },
    ))
}

pub(super) async fn compact(
    State(state): State<Shared>,
    _op: OperatorAuth,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let started = std::time::Instant::now();
    let r = log.compact_now().await?;
    tracing::info!(
        history_objects = r.written,
        segments = r.segments,
        deleted = r.deleted,
        ms = started.elapsed().as_millis() as u64,
        "compaction run by an operator"
    );
    Ok(json(
        StatusCode::OK,
        &wire::Compacted {
            history_objects_written: r.written,
            segments_compacted: r.segments,
            events_compacted: r.events,
            bytes_written: r.bytes_written,
            objects_deleted: r.deleted,
            bytes_deleted: r.bytes_deleted,
        },
    ))
}

// ---- fleet restore ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetBody {
    as_of: String,
    users: Value,
    reason: String,
    kinds: Option<Vec<Kind>>,
}

pub(super) async fn start_fleet_restore(
    State(state): State<Shared>,
    _op: OperatorAuth,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, 16 * 1024 * 1024).await?;
    let b: FleetBody = parse_json(&bytes)?;
    if b.reason.trim().is_empty() {
        return Err(ApiError::malformed("a restore needs a reason"));
    }
    data_kinds_only(&b.kinds)?;
    let as_of = parse_time("as_of", &b.as_of)?;
    // The job folds each shard up to the moment once; a moment still to come has no state yet.
    if as_of > state.clock.now() {
        return Err(ApiError::malformed(format!(
            "as_of {} is in the future",
            b.as_of
        )));
    }
    let users = match &b.users {
        Value::String(s) if s == "all" => None,
        Value::Array(ids) => Some(
            ids.iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| s.parse::<UserId>().ok())
                        .ok_or_else(|| {
                            ApiError::malformed("users must be \"all\" or a list of user ids")
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => {
            return Err(ApiError::malformed(
                "users must be \"all\" or a list of user ids",
            ));
        }
    };
    let ready = state.ready()?;
    let spec = crate::fleet::JobSpec {
        restore_id: RestoreId(state.ids.random()),
        scope: "fleet".into(),
        as_of,
        users,
        kinds: b.kinds,
        reason: b.reason,
        created_at: state.clock.now(),
    };
    let id = spec.restore_id;
    ready
        .fleet
        .start(spec)
        .await
        .map_err(ApiError::unavailable)?;
    tracing::info!(restore_id = %id, "fleet restore started");
    Ok(json(
        StatusCode::ACCEPTED,
        &wire::FleetStarted { restore_id: id },
    ))
}

pub(super) async fn fleet_restore_progress(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(restore_id): Path<String>,
) -> Result<Response, ApiError> {
    let id: RestoreId = parse_id("restore_id", &restore_id)?;
    match state
        .ready()?
        .fleet
        .progress(id)
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(p) => Ok(json(StatusCode::OK, &p)),
        None => Err(ApiError::not_found("not_found", "no such fleet restore")),
    }
}
