//! One `.vcf` / `.ics` resource: GET, HEAD, PUT, DELETE.
//!
//! - GET gives the item's text as `keepsake_formats` exports it: the client's own text while
//!   the document is unchanged since it was written, else the document converted.
//! - PUT is one `put` through the device push: the text is split (exactly one entry: a
//!   VCARD, or one VCALENDAR holding one item with its exceptions) and converted; the
//!   resource name is kept in the document when it is not `<item id>.<ext>`.
//! - DELETE is one `delete` through the device push: a tombstone, restorable.
//!
//! Concurrency as the REST API's `base_version`: `If-Match: "<version>"` is the base version
//! (a stale one is 412, and so is one on a missing item); `If-None-Match: *` refuses (412) a
//! resource that exists. Without either, the last writer wins.
//!
//! Change ids: a DAV client sends none, so the id is derived from the request:
//! UUIDv5(user, "keepsake-dav/v1/<op>/<item>/<version seen>/<sha256 of the body>"). Two
//! identical requests made against the same version are one change (the second answers as
//! the first, `duplicate`); a retry that arrives after its own change applied writes the same
//! content again as a new version (harmless: no data changes, the version moves on).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keepsake_formats::{Format, RESOURCE_PROPERTY};
use keepsake_model::{
    COLLECTION_PROPERTY, Change, ChangeBody, Document, Holds, Kind, Outcome, RejectCode, RequestId,
    UserState,
};
use serde_json::Value;

use super::answer::{error, precondition, precondition_with_href};
use super::collections::{contains, item_at};
use super::paths::{self, Collection};
use super::row::{Row, content_type, text};
use super::vocab::change_id;
use super::xml::{CALDAV, CARDDAV, KEEPSAKE_NS};
use crate::api::{ApiError, DeviceAuth, Shared};

/// One resource a request names.
pub(crate) struct Resource {
    pub auth: DeviceAuth,
    pub collection: Collection,
    pub name: String,
    pub request_id: RequestId,
}

/// The item a resource names, as it is now (a tombstone included); `None` if it never existed,
/// or if it is listed under another name now (a REST put left the kept name out): a name a
/// client holds from before reads and deletes nothing then, rather than the item it no longer
/// lists under that name.
pub(crate) async fn current(state: &Shared, r: &Resource) -> Result<Option<Row>, ApiError> {
    Ok(read(state, r)
        .await?
        .1
        .filter(|row| listed_as_named(r, row)))
}

/// Whether `row` is listed under the name the request uses.
fn listed_as_named(r: &Resource, row: &Row) -> bool {
    paths::listed_name(r.auth.user, &r.collection, row.item_id, row.name.as_deref()) == r.name
}

/// The item a resource's name resolves to (`collections::item_at`: never an item kept in
/// another collection), that item as it is now when it is in the resource's collection (a
/// tombstone included), and how many live items of its kind the user has (what the
/// mass-delete guard measures): one read of the view. A PUT writes to that item whatever name
/// it is listed under, taking the name back.
async fn read(
    state: &Shared,
    r: &Resource,
) -> Result<(keepsake_model::ItemId, Option<Row>, usize), ApiError> {
    let c = &r.collection;
    let user = r.auth.user;
    let log = &state.ready()?.log;
    Ok(log
        .user(&r.auth.user, |u: &UserState| {
            use keepsake_model::StateRead as _;
            let item_id = item_at(u, user, c, &r.name);
            let row = u
                .item(&item_id)
                .filter(|i| c.holds(i.kind) && (i.deleted || contains(user, c, i)))
                .map(Row::of);
            let live = row.as_ref().map_or(0, |row| u.live_count(row.kind));
            (item_id, row, live)
        })
        .await?)
}

pub(crate) async fn get(state: &Shared, r: &Resource, with_body: bool) -> Response {
    let row = match current(state, r).await {
        Ok(Some(row)) if !row.deleted => row,
        Ok(_) => return error(ApiError::not_found("not_found", "no such resource")),
        Err(e) => return error(e),
    };
    let Some(text) = row
        .document
        .as_ref()
        .and_then(|d| text(&r.collection, row.kind, d))
    else {
        return error(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unwritable",
            format!(
                "item {} cannot be written as {}",
                row.item_id,
                r.collection.format().media_type()
            ),
        ));
    };
    let mut resp = if with_body {
        (StatusCode::OK, text).into_response()
    } else {
        let mut resp = StatusCode::OK.into_response();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        resp
    };
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&r.collection, row.kind)),
    );
    if let Ok(etag) = HeaderValue::from_str(&row.etag()) {
        headers.insert(header::ETAG, etag);
    }
    resp
}

/// The version an `If-Match` names: `Some(None)` when absent or `*`; `Err` when it names no
/// version of ours (answered 412: it cannot match).
fn if_match(headers: &HeaderMap) -> Result<Option<Option<u64>>, ()> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?.trim();
    if value == "*" {
        return Ok(Some(None));
    }
    let tag = value.trim_start_matches("W/").trim_matches('"');
    tag.parse::<u64>().map(|v| Some(Some(v))).map_err(|_| ())
}

fn if_none_match_any(headers: &HeaderMap) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*")
}

fn precondition_failed(detail: &str) -> Response {
    error(ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        detail.to_string(),
    ))
}

/// The `DAV:error` precondition for text that is not one valid item of the collection.
fn invalid_data(c: &Collection) -> Response {
    match c.holds {
        Holds::Contacts => precondition(StatusCode::FORBIDDEN, CARDDAV, "valid-address-data"),
        Holds::Calendar => precondition(StatusCode::FORBIDDEN, CALDAV, "valid-calendar-data"),
    }
}

/// The one item a PUT's text holds, as a document carrying the resource name when it must
/// be kept and the collection it is kept in; or the answer refusing it.
fn document_of(
    r: &Resource,
    item: keepsake_model::ItemId,
    text: &str,
) -> Result<(Kind, Document, Option<String>), Box<Response>> {
    let format = r.collection.format();
    let mut entries = keepsake_formats::entries(text, format);
    let entry = match (entries.next(), entries.next()) {
        (Some(Ok(entry)), None) => entry,
        (Some(Err(e)), _) => {
            tracing::debug!(error = %e, "DAV PUT: the text does not split");
            return Err(Box::new(invalid_data(&r.collection)));
        }
        _ => return Err(Box::new(invalid_data(&r.collection))),
    };
    let taken = r.collection.holds(entry.kind)
        && (r.collection.holds == Holds::Contacts
            || super::vocab::components(r.collection.document.as_ref())
                .iter()
                .any(|c| c == super::vocab::component_of(entry.kind)));
    if !taken {
        return Err(Box::new(match r.collection.holds {
            Holds::Calendar => precondition(
                StatusCode::FORBIDDEN,
                CALDAV,
                "supported-calendar-component",
            ),
            Holds::Contacts => invalid_data(&r.collection),
        }));
    }
    let (kind, mut document) = keepsake_formats::to_document(&entry).map_err(|e| {
        tracing::debug!(error = %e, "DAV PUT: the text does not convert");
        Box::new(invalid_data(&r.collection))
    })?;
    if let Some(object) = document.as_object_mut() {
        if paths::is_chosen_name(&r.collection, item, &r.name) {
            let mut resource = serde_json::Map::new();
            resource.insert("name".into(), Value::String(r.name.clone()));
            object.insert(RESOURCE_PROPERTY.into(), Value::Object(resource));
        }
        // Named always, the default's id included: a put that left it out would keep the
        // item in the collection it was in (`keepsake_model::collection`).
        object.insert(
            COLLECTION_PROPERTY.into(),
            Value::String(r.collection.id.to_string()),
        );
    }
    Ok((kind, Document::from_value(&document), entry.uid.clone()))
}

/// Another live item of the collection with the same UID, if any (RFC 4791 5.3.2.1 and
/// RFC 6352 6.3.2.1: a UID names one resource per collection). The documents are searched as
/// stored text first (compact JSON), and only those holding the UID are parsed.
async fn uid_holder(
    state: &Shared,
    r: &Resource,
    item: keepsake_model::ItemId,
    uid: &str,
) -> Result<Option<Row>, ApiError> {
    let Ok(quoted) = serde_json::to_string(uid) else {
        return Ok(None);
    };
    let needle = format!("\"uid\":{quoted}");
    let c = &r.collection;
    let user = r.auth.user;
    let log = &state.ready()?.log;
    Ok(log
        .user(&r.auth.user, |u: &UserState| {
            u.items()
                .filter(|i| !i.deleted && i.item_id != item && contains(user, c, i))
                .find(|i| {
                    i.document.as_ref().is_some_and(|d| {
                        d.as_str().contains(&needle)
                            && d.to_object()
                                .is_ok_and(|o| o.get("uid").and_then(Value::as_str) == Some(uid))
                    })
                })
                .map(Row::of)
        })
        .await?)
}

fn etag_header(resp: &mut Response, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
}

/// The answer to a pushed change.
fn answer(outcome: &Outcome, created: bool) -> Response {
    match outcome {
        Outcome::Applied(c) | Outcome::Duplicate(c) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::NO_CONTENT
            };
            let mut resp = status.into_response();
            etag_header(&mut resp, c.version);
            resp
        }
        Outcome::Conflict(_) => {
            precondition_failed("the resource changed since the version the request names")
        }
        Outcome::Rejected { code, detail } => {
            let status = match code {
                RejectCode::DocumentTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                RejectCode::KindMismatch => StatusCode::CONFLICT,
                RejectCode::NotFound => StatusCode::NOT_FOUND,
                RejectCode::InvalidDocument | RejectCode::InvalidChange => StatusCode::FORBIDDEN,
            };
            error(ApiError::new(status, code.as_str(), detail.clone()))
        }
    }
}

pub(crate) async fn put(state: &Shared, r: &Resource, headers: &HeaderMap, body: Body) -> Response {
    let bytes = match crate::api::read_body(body, state.limits.max_request_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    if let Some(media) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        && Format::from_media_type(media) != Some(r.collection.format())
    {
        return error(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "this collection takes {}, not {media:?}",
                r.collection.format().media_type()
            ),
        ));
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return invalid_data(&r.collection);
    };
    let (item_id, now) = match read(state, r).await {
        Ok((item_id, now, _)) => (item_id, now),
        Err(e) => return error(e),
    };
    let live = now.as_ref().filter(|row| !row.deleted);
    let base_version = match if_match(headers) {
        Err(()) => return precondition_failed("If-Match names no version of this resource"),
        Ok(Some(named)) => match (live, named) {
            (None, _) => return precondition_failed("If-Match on a resource that does not exist"),
            (Some(row), None) => Some(row.version),
            (Some(_), Some(v)) => Some(v),
        },
        Ok(None) => None,
    };
    if if_none_match_any(headers) && live.is_some() {
        return precondition_failed("If-None-Match: * on a resource that exists");
    }
    let (kind, document, uid) = match document_of(r, item_id, text) {
        Ok(d) => d,
        Err(resp) => return *resp,
    };
    if let Some(uid) = &uid {
        match uid_holder(state, r, item_id, uid).await {
            Ok(Some(other)) => {
                let (ns, name) = match r.collection.holds {
                    Holds::Contacts => (CARDDAV, "no-uid-conflict"),
                    Holds::Calendar => (CALDAV, "no-uid-conflict"),
                };
                return precondition_with_href(
                    StatusCode::FORBIDDEN,
                    ns,
                    name,
                    &other.href(r.auth.user, &r.collection),
                );
            }
            Ok(None) => {}
            Err(e) => return error(e),
        }
    }
    if let Some(row) = &now
        && row.kind != kind
    {
        return error(ApiError::new(
            StatusCode::CONFLICT,
            "kind_mismatch",
            format!("the resource is a {}, not a {kind}", row.kind),
        ));
    }
    // `If-None-Match: *` is decided in staging, against committed state and the batch (a
    // create): two creates of one name at once make one resource, the other is refused 412.
    // A tombstone counts as absent.
    let create = if_none_match_any(headers);
    let seen = base_version.or(now.as_ref().map(|row| row.version));
    let change = Change {
        // "put" for creates too: ids derived before creates were their own body stay the same,
        // so a create resent across an upgrade answers as it was answered.
        change_id: change_id(r.auth.user, item_id, "put", seen, &bytes),
        kind,
        item_id,
        base_version: base_version.filter(|_| !create),
        body: if create {
            ChangeBody::Create { document }
        } else {
            ChangeBody::Put { document }
        },
    };
    match crate::api::push_as_device(state, r.auth, r.request_id, vec![change], false).await {
        Ok((result, _)) => match result.outcomes.first() {
            Some(outcome) => answer(outcome, live.is_none()),
            None => error(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the push gave no outcome",
            )),
        },
        Err(e) => error(e),
    }
}

pub(crate) async fn delete(state: &Shared, r: &Resource, headers: &HeaderMap) -> Response {
    let (now, live) = match read(state, r).await {
        Ok((_, Some(row), live)) if !row.deleted && listed_as_named(r, &row) => (row, live),
        Ok(_) => return error(ApiError::not_found("not_found", "no such resource")),
        Err(e) => return error(e),
    };
    let base_version = match if_match(headers) {
        Err(()) => return precondition_failed("If-Match names no version of this resource"),
        Ok(Some(Some(v))) => v,
        Ok(_) => now.version,
    };
    // One delete per request never meets the per-push guard: count them over a window.
    if let Err(refused) = state.delete_guard.admit(
        r.auth.user,
        now.kind,
        live,
        &state.mass_delete,
        std::time::Instant::now(),
    ) {
        tracing::warn!(
            user = %r.auth.user,
            device = %r.auth.device,
            deletes = refused.deletes,
            live = refused.live,
            "DAV mass delete refused"
        );
        return precondition(
            StatusCode::FORBIDDEN,
            KEEPSAKE_NS,
            "mass-delete-confirmation",
        );
    }
    let change = Change {
        change_id: change_id(r.auth.user, now.item_id, "delete", Some(base_version), b""),
        kind: now.kind,
        item_id: now.item_id,
        base_version: Some(base_version),
        body: ChangeBody::Delete,
    };
    match crate::api::push_as_device(state, r.auth, r.request_id, vec![change], false).await {
        Ok((result, _)) => match result.outcomes.first() {
            Some(Outcome::Applied(_) | Outcome::Duplicate(_)) => {
                StatusCode::NO_CONTENT.into_response()
            }
            Some(outcome) => answer(outcome, false),
            None => error(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the push gave no outcome",
            )),
        },
        Err(e) => error(e),
    }
}
