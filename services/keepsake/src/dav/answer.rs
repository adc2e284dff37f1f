//! The answers every DAV handler gives: errors (with `WWW-Authenticate` on a 401),
//! `DAV:error` preconditions, and `207 Multi-Status` bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::xml;
use crate::api::ApiError;

/// An error answer for a DAV client: the API's problem body, with `WWW-Authenticate` on a 401
/// (clients ask for the password only when they see it).
pub(crate) fn error(e: ApiError) -> Response {
    let unauthorized = e.status == StatusCode::UNAUTHORIZED;
    let mut resp = e.into_response();
    if unauthorized {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Keepsake\", charset=\"UTF-8\""),
        );
    }
    resp
}

/// A `DAV:error` answer naming a precondition.
pub(crate) fn precondition(status: StatusCode, ns: &str, name: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )],
        xml::error_body(ns, name),
    )
        .into_response()
}

/// A `207 Multi-Status` answer.
pub(crate) fn multistatus(body: String) -> Response {
    (
        StatusCode::MULTI_STATUS,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// A `DAV:error` answer naming a precondition with the href it is about
/// (`no-uid-conflict` names the resource that holds the UID).
pub(crate) fn precondition_with_href(
    status: StatusCode,
    ns: &str,
    name: &str,
    href: &str,
) -> Response {
    let body = xml::error_body(ns, name).replacen(
        &xml::open_tag(ns, name, true),
        &format!(
            "{}<d:href>{}</d:href>{}",
            xml::open_tag(ns, name, false),
            xml::escape(href),
            xml::close_tag(ns, name)
        ),
        1,
    );
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
