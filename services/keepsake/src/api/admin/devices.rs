//! `/admin/v1/users/{user_id}/devices`: registering, listing and revoking a user's devices.
//! A registration or revocation is also an event in the user's log (`device_events.rs`).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keepsake_model::{DeviceId, UserId};
use serde::Deserialize;

use crate::api::{ApiError, OperatorAuth, Shared, json, parse_id, parse_json, read_body, wire};
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

pub(in crate::api) async fn register_device(
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

pub(in crate::api) async fn list_devices(
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

pub(in crate::api) async fn revoke_device(
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
