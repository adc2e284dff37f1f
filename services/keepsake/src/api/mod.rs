//! The HTTP API: the device API (`/v1`), the operator API (`/admin/v1`) and service endpoints.
//!
//! Every REST route is registered through [`Routes`], which also records it, so a test can prove
//! that those routes and `schemas/openapi.yaml` are the same. The CardDAV/CalDAV routes the
//! server passes to [`router`] are not in it (OpenAPI has no PROPFIND or REPORT): docs/DAV.md
//! describes them.

mod admin;
mod device;
mod export_body;
mod formats;
pub mod forward;
mod negotiate;
mod ops;
pub mod problem;
pub mod wire;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use keepsake_log::Log;
use keepsake_model::{Clock, DeviceId, IdGenerator, RequestId, UserId};
use serde::Serialize;
use tracing::{Instrument, field};

use crate::auth::{TokenKeys, operator_token_matches};
use crate::devices::Registry;
use crate::metrics::Metrics;
pub(crate) use device::push_as_device;
pub(crate) use negotiate::item_text;
pub use problem::ApiError;

/// Limits a device can read from `/v1/session`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Limits {
    /// Changes in one push.
    pub max_changes_per_push: usize,
    /// Bytes of one document (JSON text).
    pub max_document_bytes: usize,
    /// Bytes of one request body.
    pub max_request_bytes: usize,
    /// Largest `limit` of a pull.
    pub max_page_size: usize,
    /// Page size when a pull gives no `limit`.
    pub default_page_size: usize,
    /// Longest long poll, in seconds.
    pub max_wait_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_changes_per_push: 1000,
            max_document_bytes: 256 * 1024,
            max_request_bytes: 16 * 1024 * 1024,
            max_page_size: 1000,
            default_page_size: 500,
            max_wait_seconds: 60,
        }
    }
}

/// What handlers need once the log is open.
#[derive(Debug)]
pub struct Ready {
    /// The event log.
    pub log: Arc<Log>,
    /// Devices and revocations.
    pub registry: Registry,
    /// Fleet restore jobs.
    pub fleet: Arc<crate::fleet::Fleet>,
}

/// Shared state of the HTTP server.
#[derive(Debug)]
pub struct AppState {
    /// Set once recovery finished; until then every data route answers 503.
    pub ready: OnceLock<Ready>,
    /// Signs and verifies device tokens.
    pub keys: TokenKeys,
    /// The operator token.
    pub operator_token: String,
    /// Request limits.
    pub limits: Limits,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Ids.
    pub ids: Arc<dyn IdGenerator>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Tells long polls to return early.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The mass-delete guard's bounds (the staging policy's).
    pub mass_delete: keepsake_model::MassDeleteGuard,
    /// Deletes made one per request (CardDAV/CalDAV), counted against those bounds.
    pub delete_guard: crate::delete_guard::DeleteGuard,
    /// This server's place in a cluster (`None`: alone, serving every shard).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Handle to shared state.
pub type Shared = Arc<AppState>;

impl AppState {
    /// The open log, or 503 while the server is still recovering.
    pub fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready
            .get()
            .ok_or_else(|| ApiError::unavailable("the server is starting: recovering the log"))
    }
}

/// A route table that also remembers what it registered.
pub struct Routes {
    router: Router<Shared>,
    listed: Vec<(Method, &'static str)>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.listed.iter()).finish()
    }
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            listed: Vec::new(),
        }
    }

    fn add(
        mut self,
        path: &'static str,
        methods: &[Method],
        handler: MethodRouter<Shared>,
    ) -> Self {
        self.listed
            .extend(methods.iter().map(|m| (m.clone(), path)));
        self.router = self.router.route(path, handler);
        self
    }
}

/// Every route, with the router serving them.
pub fn routes() -> Routes {
    use axum::routing::{delete, post};
    Routes::new()
        .add("/healthz", &[Method::GET], get(ops::healthz))
        .add("/readyz", &[Method::GET], get(ops::readyz))
        .add("/metrics", &[Method::GET], get(ops::metrics))
        .add("/v1/session", &[Method::GET], get(device::session))
        .add(
            "/v1/changes",
            &[Method::GET, Method::POST],
            get(device::pull).post(device::push),
        )
        .add("/v1/import", &[Method::POST], post(formats::import))
        .add(
            "/v1/mass-delete-confirmation",
            &[Method::POST],
            post(device::confirm_mass_delete),
        )
        .add("/v1/export", &[Method::GET], get(formats::export))
        .add("/v1/items/{item_id}", &[Method::GET], get(device::item))
        .add(
            "/v1/items/{item_id}/history",
            &[Method::GET],
            get(device::history),
        )
        .add(
            "/v1/items/{item_id}/restore",
            &[Method::POST],
            post(device::restore_item),
        )
        .add(
            "/admin/v1/users/{user_id}/devices",
            &[Method::GET, Method::POST],
            get(admin::list_devices).post(admin::register_device),
        )
        .add(
            "/admin/v1/users/{user_id}/devices/{device_id}",
            &[Method::DELETE],
            delete(admin::revoke_device),
        )
        .add(
            "/admin/v1/users/{user_id}/items",
            &[Method::GET],
            get(admin::items_as_of),
        )
        .add(
            "/admin/v1/users/{user_id}/export",
            &[Method::GET],
            get(formats::admin_export),
        )
        .add(
            "/admin/v1/users/{user_id}/import",
            &[Method::POST],
            post(formats::admin_import),
        )
        .add(
            "/admin/v1/users/{user_id}/events",
            &[Method::GET],
            get(admin::events),
        )
        .add(
            "/admin/v1/users/{user_id}/diff",
            &[Method::GET],
            get(admin::diff),
        )
        .add(
            "/admin/v1/users/{user_id}/restore",
            &[Method::POST],
            post(admin::restore_user),
        )
        .add(
            "/admin/v1/restores",
            &[Method::POST],
            post(admin::start_fleet_restore),
        )
        .add(
            "/admin/v1/restores/{restore_id}",
            &[Method::GET],
            get(admin::fleet_restore_progress),
        )
        .add("/admin/v1/rebuild", &[Method::POST], post(admin::rebuild))
        .add("/admin/v1/compact", &[Method::POST], post(admin::compact))
        .add("/admin/v1/verify", &[Method::GET], get(admin::verify))
}

/// The routes as (method, path) pairs, for the OpenAPI comparison.
pub fn route_list() -> Vec<(Method, &'static str)> {
    routes().listed
}

/// The router with its middleware, over the REST routes and `beside` (the CardDAV/CalDAV
/// routes the server adds; passed in so that this module does not depend on them).
pub fn router(state: Shared, beside: Router<Shared>) -> Router {
    routes()
        .router
        .merge(beside)
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// Gives every request an id (the client's `x-request-id` if it is a UUID, else a new one), a
/// tracing span that handlers add the user to, metrics, and the id on the response.
async fn request_context(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<uuid::Uuid>().ok())
        .map_or_else(|| RequestId(state.ids.random()), RequestId);
    req.extensions_mut().insert(request_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        %method,
        route = %route,
        request_id = %request_id,
        user_id = field::Empty,
        device_id = field::Empty,
        shard = field::Empty,
    );
    let started = Instant::now();
    let cause = cause_of(&route);
    let mut resp = keepsake_store::with_cause(cause, next.run(req).instrument(span.clone())).await;
    let elapsed = started.elapsed();
    let status = resp.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                ms = elapsed.as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                ms = elapsed.as_millis() as u64,
                "request"
            );
        }
    });
    state
        .metrics
        .observe_request(method.as_str(), &route, status.as_u16(), elapsed);
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// What the store requests a route makes are counted under. (A push's segment PUT is made by
/// the shard writer, under `push`; a streamed export body is read after its handler returned,
/// under `other`.)
fn cause_of(route: &str) -> keepsake_store::Cause {
    use keepsake_store::Cause;
    if route.contains("/restore") {
        Cause::Restore
    } else if route.contains("/devices") {
        Cause::Devices
    } else if route.starts_with("/admin") {
        Cause::Operator
    } else {
        Cause::Read
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// A device, authenticated by its token; it may touch only its own user's data.
#[derive(Clone, Copy, Debug)]
pub struct DeviceAuth {
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
}

impl FromRequestParts<Shared> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        device_of_token(state, token)
    }
}

/// The device a token belongs to, if it is a device token of a device not revoked; records
/// the user and device in the request's span. (The REST API reads the token from `Bearer`;
/// CardDAV/CalDAV also from HTTP Basic's password.)
pub(crate) fn device_of_token(state: &Shared, token: &str) -> Result<DeviceAuth, ApiError> {
    if operator_token_matches(token, &state.operator_token) {
        return Err(ApiError::forbidden(
            "the operator token does not open the device API",
        ));
    }
    let (user, device) = state
        .keys
        .verify(token)
        .map_err(|_| ApiError::unauthorized())?;
    let ready = state.ready()?;
    if ready.registry.is_revoked(&device) {
        return Err(ApiError::unauthorized());
    }
    let span = tracing::Span::current();
    span.record("user_id", field::display(user));
    span.record("device_id", field::display(device));
    span.record("shard", ready.log.shard_of(&user));
    Ok(DeviceAuth { user, device })
}

/// The operator, authenticated by the operator token.
#[derive(Clone, Copy, Debug)]
pub struct OperatorAuth;

impl FromRequestParts<Shared> for OperatorAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if operator_token_matches(token, &state.operator_token) {
            return Ok(Self);
        }
        if state.keys.verify(token).is_ok() {
            return Err(ApiError::forbidden(
                "a device token does not open the operator API",
            ));
        }
        Err(ApiError::unauthorized())
    }
}

/// Reads a request body up to the limit: 413 `request_too_large` beyond it.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    })
}

/// Parses a JSON body: 400 `malformed_request` with serde's precise message otherwise.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::malformed(format!("request body: {e}")))
}

/// Parses an id from a path segment: 400 `malformed_request` if it is not a UUID.
pub fn parse_id<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, ApiError> {
    s.parse()
        .map_err(|_| ApiError::malformed(format!("{what} {s:?} is not a UUID")))
}

/// A JSON answer; a 500 problem if the body cannot be written (a stored document strict parsers
/// refuse: the problem names the item).
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::unwritable(&e).into_response(),
    }
}
