//! The process's own routes: liveness, readiness and metrics. They need no token (they say
//! nothing about any user).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, Shared};

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the log is open (503 `unavailable` while it recovers).
pub(super) async fn readyz(State(state): State<Shared>) -> Result<&'static str, ApiError> {
    state.ready().map(|_| "ready\n")
}

/// `GET /metrics`: OpenMetrics text.
pub(super) async fn metrics(State(state): State<Shared>) -> Response {
    let log = state.ready.get().map(|r| r.log.as_ref());
    let mut resp =
        crate::metrics::text(&state.metrics, log, state.cluster.as_deref()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
