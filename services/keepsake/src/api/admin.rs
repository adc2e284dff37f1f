//! The operator API, `/admin/v1` (operator token). Devices for now; point in time comes later.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keepsake_model::{DeviceId, UserId};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, OperatorAuth, Shared, json, parse_id, parse_json, read_body};
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

pub(super) async fn register_device(
    State(state): State<Shared>,
    _op: OperatorAuth,
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
    ready
        .registry
        .register(&record)
        .await
        .map_err(registry_error)?;
    tracing::info!(user_id = %user, device_id = %record.device_id, "device registered");
    let token = state.keys.sign(user, record.device_id);
    Ok(json(
        StatusCode::CREATED,
        &json!({"device_id": record.device_id, "token": token}),
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
        &json!({"user_id": user, "devices": devices}),
    ))
}

pub(super) async fn revoke_device(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let device: DeviceId = parse_id("device_id", &device_id)?;
    state
        .ready()?
        .registry
        .revoke(user, device, state.clock.now())
        .await
        .map_err(registry_error)?;
    tracing::info!(user_id = %user, device_id = %device, "device revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}
