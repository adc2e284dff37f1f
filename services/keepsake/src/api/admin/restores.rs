//! Restores: one user to a moment (`POST /admin/v1/users/{user_id}/restore`), and every user
//! as a background job with progress (`/admin/v1/restores`). Both append forward events.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keepsake_model::{Kind, RestoreId, UserId};
use serde::Deserialize;
use serde_json::Value;

use super::{data_kinds_only, moment, parse_time};
use crate::api::wire;
use crate::api::{ApiError, OperatorAuth, Shared, json, parse_id, parse_json, read_body};

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

pub(in crate::api) async fn restore_user(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetBody {
    as_of: String,
    users: Value,
    reason: String,
    kinds: Option<Vec<Kind>>,
}

pub(in crate::api) async fn start_fleet_restore(
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
        format_version: crate::fleet_record::FLEET_RECORD_VERSION,
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

pub(in crate::api) async fn fleet_restore_progress(
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
