//! CardDAV (RFC 6352) and CalDAV (RFC 4791) on the same log as the REST API (issue 17):
//! phones and computers sync their address book and calendar with the clients they already
//! have, and every change they make is an ordinary event (history, as-of reads, restores).
//!
//! - [`paths`]: the tree (`/dav/users/<user>/contacts/`, `.../calendar/`, and the
//!   collections a user makes) and which item a resource name is; [`collections`]: which
//!   collections a user has and what each holds, read from the view; [`collection_writes`]:
//!   MKCOL, MKCALENDAR, PROPPATCH and DELETE of a collection; [`vocab`]: what DAV names mean
//!   in the model (a collection's properties, components, derived change ids).
//! - [`xml`]: request bodies read with quick-xml; multistatus answers written.
//! - [`props`]: PROPFIND, and the properties of the root, a home, a collection and an item;
//!   [`row`]: one item's snapshot, text and media type; [`answer`]: errors and multistatus.
//! - [`items`]: GET / HEAD / PUT / DELETE of one `.vcf` / `.ics` resource.
//! - [`report`]: REPORT: `sync-collection` (RFC 6578), the multigets, and the queries;
//!   [`time_range`]: which items a query's time range holds.
//!
//! Invariants:
//! - Authentication is the device's: HTTP Basic with the device token as the password (any
//!   user name), or Bearer; a revoked device is refused; a device reaches only its own
//!   user's paths (403 otherwise). 401 answers carry `WWW-Authenticate: Basic realm="Keepsake"`.
//! - Every write is one device push through [`crate::api`]'s push path: durable before the
//!   answer, device-attributed, in history, restorable. Reads come from the live view.
//! - A sync token is a position in the user's log (the REST API's token in a URI): it never
//!   expires; one from another store, or ahead of the user's log, is refused with the
//!   `DAV:valid-sync-token` precondition, never answered as an empty collection.

mod answer;
mod collection_writes;
mod collections;
mod items;
pub(crate) mod paths;
mod props;
mod report;
mod row;
mod time_range;
mod vocab;
pub(crate) mod xml;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keepsake_model::UserId;

use crate::api::{ApiError, DeviceAuth, Shared};
use answer::{error, precondition};

/// The `DAV` header: WebDAV class 1 and 3, CardDAV, CalDAV, and RFC 6578's report.
const DAV_HEADER: &str = "1, 3, addressbook, calendar-access";
/// The methods every DAV resource answers.
const ALLOW: &str =
    "OPTIONS, GET, HEAD, PUT, DELETE, PROPFIND, PROPPATCH, REPORT, MKCOL, MKCALENDAR";
/// Largest XML request body (PROPFIND, REPORT): a multiget of a few thousand hrefs.
const MAX_XML_BYTES: usize = 4 * 1024 * 1024;

/// The DAV routes (the server adds them beside the REST routes; not in
/// `schemas/openapi.yaml`, which describes the JSON API).
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/.well-known/carddav", any(well_known))
        .route("/.well-known/caldav", any(well_known))
        // Clients given the bare server URL ask its root for the principal.
        .route("/", any(root))
        .route("/dav", any(root))
        .route("/dav/", any(root))
        .route("/dav/users/{user}", any(home))
        .route("/dav/users/{user}/", any(home))
        .route("/dav/users/{user}/{collection}", any(collection))
        .route("/dav/users/{user}/{collection}/", any(collection))
        .route("/dav/users/{user}/{collection}/{name}", any(item))
}

/// The device a request is made by: the password of HTTP Basic, or a Bearer token.
async fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<DeviceAuth, Response> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim();
    let token = if let Some(basic) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    {
        let decoded = B64
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        decoded.and_then(|pair| {
            pair.split_once(':')
                .map(|(_, password)| password.to_string())
        })
    } else {
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(|t| t.trim().to_string())
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(error(ApiError::unauthorized()));
    };
    crate::api::device_of_token(state, &token).map_err(error)
}

/// The authenticated device, if it belongs to the user of the path.
async fn owner(state: &Shared, headers: &HeaderMap, user: &str) -> Result<DeviceAuth, Response> {
    let auth = authenticate(state, headers).await?;
    let user: UserId = user
        .parse()
        .map_err(|_| error(ApiError::not_found("not_found", "no such principal")))?;
    if user != auth.user {
        return Err(error(ApiError::forbidden(
            "a device reaches only its own user's address book and calendar",
        )));
    }
    Ok(auth)
}

/// Most of a refused request's body read before answering.
const DRAIN_BYTES: usize = 64 * 1024;

/// Answers `resp` to a request refused before its body was read, reading a small body first
/// (the REST API's extractors refuse before the body too; its clients have not needed this):
/// a body left unread makes the server close the connection, and clients that send the
/// request again on it right after a 401 (the caldav library does) see it closed without an
/// answer. A body larger than [`DRAIN_BYTES`] is not read for an unauthenticated client.
async fn refused(resp: Response, body: Body) -> Response {
    let _ = axum::body::to_bytes(body, DRAIN_BYTES).await;
    resp
}

fn options() -> Response {
    (
        StatusCode::OK,
        [
            (header::ALLOW, HeaderValue::from_static(ALLOW)),
            (
                header::HeaderName::from_static("dav"),
                HeaderValue::from_static(DAV_HEADER),
            ),
        ],
    )
        .into_response()
}

pub(crate) fn not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static(ALLOW))],
    )
        .into_response()
}

/// Reads an XML request body: empty is `None`; too large is 413; not UTF-8 or not XML is 400.
async fn xml_body(body: Body) -> Result<Option<xml::Element>, Response> {
    let bytes = crate::api::read_body(body, MAX_XML_BYTES)
        .await
        .map_err(error)?;
    xml_of(&bytes).map_err(error)
}

/// Parses a request body already read: empty is `None`; not UTF-8 or not XML is 400.
fn xml_of(bytes: &[u8]) -> Result<Option<xml::Element>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::malformed("the XML body is not UTF-8"))?;
    xml::parse(text)
        .map(Some)
        .map_err(|e| ApiError::malformed(e.to_string()))
}

/// `Depth`: 0 or 1 (default 1 for PROPFIND as RFC 4918 says infinity; infinity is answered as 1).
fn depth(headers: &HeaderMap) -> u8 {
    match headers
        .get("depth")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some("0") => 0,
        _ => 1,
    }
}

/// A REPORT on the root or a home: only a principal search is answered there.
async fn principal_report(auth: DeviceAuth, body: Body) -> Response {
    match xml_body(body).await {
        Ok(Some(request)) if request.is(xml::DAV, "principal-property-search") => {
            props::principal_search(auth, &request)
        }
        Ok(_) => precondition(StatusCode::FORBIDDEN, xml::DAV, "supported-report"),
        Err(resp) => resp,
    }
}

async fn well_known() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, HeaderValue::from_static(paths::ROOT))],
    )
        .into_response()
}

async fn root(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return options();
    }
    let auth = match authenticate(&state, &headers).await {
        Ok(auth) => auth,
        Err(resp) => return refused(resp, body).await,
    };
    match method.as_str() {
        "PROPFIND" => match xml_body(body).await {
            Ok(request) => props::propfind_root(auth, request.as_ref(), depth(&headers)),
            Err(resp) => resp,
        },
        "REPORT" => principal_report(auth, body).await,
        "GET" | "HEAD" => (StatusCode::OK, "Keepsake CardDAV/CalDAV\n").into_response(),
        _ => not_allowed(),
    }
}

async fn home(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return options();
    }
    let auth = match owner(&state, &headers, &user).await {
        Ok(auth) => auth,
        Err(resp) => return refused(resp, body).await,
    };
    match method.as_str() {
        "PROPFIND" => match xml_body(body).await {
            Ok(request) => {
                props::propfind_home(&state, auth, request.as_ref(), depth(&headers)).await
            }
            Err(resp) => resp,
        },
        "PROPPATCH" => match xml_body(body).await {
            Ok(request) => props::proppatch(&paths::home(auth.user), request.as_ref()),
            Err(resp) => resp,
        },
        "REPORT" => principal_report(auth, body).await,
        _ => not_allowed(),
    }
}

async fn collection(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    Path((user, segment)): Path<(String, String)>,
    request_id: Option<axum::Extension<keepsake_model::RequestId>>,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return options();
    }
    let auth = match owner(&state, &headers, &user).await {
        Ok(auth) => auth,
        Err(resp) => return refused(resp, body).await,
    };
    // The router has percent-decoded the segment already.
    let Some(segment) = paths::valid_name(&segment) else {
        return refused(
            error(ApiError::not_found("not_found", "no such collection")),
            body,
        )
        .await;
    };
    let request_id = request_id_of(&state, request_id);
    let found = match collections::find(&state, auth.user, &segment).await {
        Ok(found) => found,
        Err(e) => return refused(error(e), body).await,
    };
    if matches!(method.as_str(), "MKCOL" | "MKCALENDAR") {
        let bytes = match crate::api::read_body(body, MAX_XML_BYTES).await {
            Ok(b) => b,
            Err(e) => return error(e),
        };
        return match xml_of(&bytes) {
            Ok(request) => {
                collection_writes::make(
                    &state,
                    auth,
                    &segment,
                    method.as_str(),
                    request.as_ref(),
                    &bytes,
                    request_id,
                )
                .await
            }
            Err(e) => error(e),
        };
    }
    let Some(collection) = found else {
        let resp = error(ApiError::not_found(
            "not_found",
            "no such collection (MKCOL or MKCALENDAR makes one)",
        ));
        return refused(resp, body).await;
    };
    match method.as_str() {
        "PROPFIND" => match xml_body(body).await {
            Ok(request) => {
                props::propfind_collection(
                    &state,
                    auth,
                    &collection,
                    request.as_ref(),
                    depth(&headers),
                )
                .await
            }
            Err(resp) => resp,
        },
        "PROPPATCH" => {
            let bytes = match crate::api::read_body(body, MAX_XML_BYTES).await {
                Ok(b) => b,
                Err(e) => return error(e),
            };
            match xml_of(&bytes) {
                Ok(request) => {
                    collection_writes::proppatch(
                        &state,
                        auth,
                        &collection,
                        request.as_ref(),
                        &bytes,
                        request_id,
                    )
                    .await
                }
                Err(e) => error(e),
            }
        }
        "REPORT" => match xml_body(body).await {
            Ok(Some(request)) => report::report(&state, auth, &collection, &request).await,
            Ok(None) => error(ApiError::malformed("a REPORT needs a body")),
            Err(resp) => resp,
        },
        "DELETE" => collection_writes::delete(&state, auth, &collection, request_id).await,
        "GET" | "HEAD" => {
            (StatusCode::OK, format!("Keepsake {}\n", collection.segment)).into_response()
        }
        _ => not_allowed(),
    }
}

fn request_id_of(
    state: &Shared,
    request_id: Option<axum::Extension<keepsake_model::RequestId>>,
) -> keepsake_model::RequestId {
    match request_id {
        Some(axum::Extension(id)) => id,
        None => keepsake_model::RequestId(state.ids.random()),
    }
}

async fn item(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    Path((user, collection, name)): Path<(String, String, String)>,
    request_id: Option<axum::Extension<keepsake_model::RequestId>>,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return options();
    }
    let auth = match owner(&state, &headers, &user).await {
        Ok(auth) => auth,
        Err(resp) => return refused(resp, body).await,
    };
    // The router has percent-decoded the names already (decoding again would read `%25` as
    // a second escape).
    let (Some(segment), Some(name)) = (paths::valid_name(&collection), paths::valid_name(&name))
    else {
        let resp = error(ApiError::not_found("not_found", "no such resource"));
        return refused(resp, body).await;
    };
    let collection = match collections::find(&state, auth.user, &segment).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            // RFC 4918 9.7.1: a PUT into a collection that does not exist is a conflict.
            let status = if method == Method::PUT {
                StatusCode::CONFLICT
            } else {
                StatusCode::NOT_FOUND
            };
            let resp = error(ApiError::new(status, "not_found", "no such collection"));
            return refused(resp, body).await;
        }
        Err(e) => return refused(error(e), body).await,
    };
    let request_id = request_id_of(&state, request_id);
    let resource = items::Resource {
        auth,
        collection,
        name,
        request_id,
    };
    match method.as_str() {
        "GET" => items::get(&state, &resource, true).await,
        "HEAD" => items::get(&state, &resource, false).await,
        "PUT" => items::put(&state, &resource, &headers, body).await,
        "DELETE" => items::delete(&state, &resource, &headers).await,
        "PROPFIND" => match xml_body(body).await {
            Ok(request) => props::propfind_item(&state, &resource, request.as_ref()).await,
            Err(resp) => resp,
        },
        _ => not_allowed(),
    }
}
