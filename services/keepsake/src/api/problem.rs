//! Errors as `application/problem+json` (RFC 9457) with the stable codes of API.md.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keepsake_log::LogError;

use super::wire;

/// An error answer: status, stable code, and a detail for humans (never secrets or documents).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code clients switch on.
    pub code: &'static str,
    /// Explanation.
    pub detail: String,
    /// Seconds for `Retry-After` (429/503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400 `malformed_request`.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_request", detail)
    }

    /// 404 with a code.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 503 `unavailable` with `Retry-After`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    /// 500 `internal`; the detail stays in the log, not the answer.
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// 500 `internal` for an answer that could not be written: what the serialiser said, which
    /// for a stored document strict parsers refuse names the item, its version and what is
    /// wrong (never content), so the operator can find it.
    pub fn unwritable(e: &serde_json::Error) -> Self {
        tracing::error!(error = %e, "an answer could not be written");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the answer could not be written: {e}"),
        )
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Overloaded { .. } => Self {
                retry_after: Some(1),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
            },
            LogError::MassDelete(r) => Self::new(
                StatusCode::CONFLICT,
                "mass_delete_guard",
                format!(
                    "{r}; send the push again with \"confirm_mass_delete\": true if this is intended"
                ),
            ),
            LogError::Incomplete { .. } => Self::new(
                StatusCode::CONFLICT,
                "restore_conflict",
                format!("{e}: the user's items kept changing while the restore ran; run it again"),
            ),
            LogError::Unavailable { .. }
            | LogError::Fenced { .. }
            | LogError::NotOwner { .. }
            | LogError::ShuttingDown
            | LogError::Store { .. } => {
                tracing::warn!(error = %e, "answering unavailable");
                Self::unavailable(
                    "the store is unavailable or the shard changed hands; nothing was written that was not acknowledged; retry",
                )
            }
            LogError::Gap { .. } | LogError::Corrupt { .. } | LogError::Open(_) => {
                Self::internal("log error", e)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&wire::Problem {
            type_uri: format!("https://keepsake.dev/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        })
        // Strings and a number always serialise; this is never taken.
        .unwrap_or_else(|_| String::from(r#"{"status":500,"code":"internal"}"#));
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_model::{Kind, MassDeleteRefused};

    /// Every log error answers with the status and code of API.md, and the retryable ones say
    /// when to retry.
    #[test]
    fn every_log_error_answers_its_contract_code() {
        let store = || object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        let cases: Vec<(LogError, StatusCode, &str, Option<u32>)> = vec![
            (
                LogError::Overloaded { shard: 0 },
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                Some(1),
            ),
            (
                LogError::Unavailable {
                    shard: 0,
                    reason: "down".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(1),
            ),
            (
                LogError::Fenced {
                    shard: 0,
                    segment: 3,
                },
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(1),
            ),
            (
                LogError::NotOwner { shard: 2 },
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(1),
            ),
            (
                LogError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(1),
            ),
            (
                LogError::Store {
                    context: "read".into(),
                    source: store(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(1),
            ),
            (
                LogError::MassDelete(MassDeleteRefused {
                    kind: Kind::Note,
                    deletes: 30,
                    live: 40,
                }),
                StatusCode::CONFLICT,
                "mass_delete_guard",
                None,
            ),
            (
                LogError::Incomplete {
                    shard: 0,
                    refused: 1,
                    first: "conflict".into(),
                },
                StatusCode::CONFLICT,
                "restore_conflict",
                None,
            ),
            (
                LogError::Gap {
                    shard: 0,
                    missing: 2,
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                None,
            ),
            (
                LogError::Corrupt {
                    shard: 0,
                    segment: 2,
                    detail: "bad".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                None,
            ),
        ];
        for (e, status, code, retry) in cases {
            let what = e.to_string();
            let a = ApiError::from(e);
            assert_eq!(
                (a.status, a.code, a.retry_after),
                (status, code, retry),
                "{what}"
            );
        }
    }
}
