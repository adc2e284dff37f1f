//! vCard and iCalendar over HTTP (issue 16): `POST /v1/import`,
//! `POST /admin/v1/users/{user_id}/import`, `GET /v1/export`,
//! `GET /admin/v1/users/{user_id}/export` (items' texts and `Accept` on item reads: `negotiate.rs`).
//!
//! The handlers only translate: `keepsake_formats` splits, converts and exports; writes go
//! through the device push ([`super::device::push_as_device`]), reads through the live view or
//! the as-of read of the operator's items endpoint. `docs/FORMATS.md` is the contract.
//!
//! - An import is ONE push (a device's, or with origin `import` the operator's): every entry
//!   that splits and converts becomes a `put` with the change id and item id `keepsake_formats` derives from the user and the entry, so a second
//!   import of the same file is all `duplicate` and writes nothing. An entry that does not
//!   split or convert is `rejected` alone, with its line; the others are pushed. Whole-request
//!   refusals (wrong content type, invalid UTF-8, more entries than a push may hold, too large a
//!   body) write nothing.
//! - An export is the items' texts one after another (iCalendar: one VCALENDAR per item, which
//!   RFC 5545 allows in one stream); an item whose document cannot be exported is skipped and
//!   counted in `x-keepsake-skipped`. The body is streamed with bounded memory
//!   ([`super::export_body`]).

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keepsake_formats::{EntryError, Format};
use keepsake_log::UpTo;
use keepsake_model::{
    Change, ChangeBody, Document, EventMeta, ItemState, Kind, Origin, Outcome, RequestId, UserId,
    UserState,
};

use super::admin::parse_time;
use super::export_body;
use super::negotiate::media_type_utf8;
use super::wire::{ImportAnswer, ImportError, ImportResult, ImportStatus};
use super::{ApiError, DeviceAuth, OperatorAuth, Shared, json, parse_id, read_body};

/// The response header that counts the items an export left out (documents that cannot be
/// written in the format).
pub const SKIPPED_HEADER: &str = "x-keepsake-skipped";

/// The problem code of an entry that does not split or convert.
const INVALID_ENTRY: &str = "invalid_entry";

fn unsupported_media_type(got: Option<&str>) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "an import is text/vcard or text/calendar, not {}",
            got.map_or_else(
                || "a body without Content-Type".to_string(),
                |t| format!("{t:?}")
            )
        ),
    )
}

/// What became of one entry before the push.
enum Slot {
    /// Refused while splitting or converting.
    Refused(ImportResult),
    /// Pushed as the change at this index.
    Pushed {
        index: usize,
        line: usize,
        uid: Option<String>,
        kind: Kind,
    },
}

fn refused(line: usize, uid: Option<String>, detail: String) -> ImportResult {
    ImportResult {
        line,
        uid,
        status: ImportStatus::Rejected,
        item_id: None,
        kind: None,
        version: None,
        seq: None,
        error: Some(ImportError {
            code: INVALID_ENTRY,
            detail,
        }),
    }
}

fn entry_error(e: EntryError) -> Slot {
    Slot::Refused(refused(e.line, e.uid, e.reason.to_string()))
}

/// The answer of one pushed entry from its push outcome.
fn pushed(
    change: &Change,
    outcome: &Outcome,
    line: usize,
    uid: Option<String>,
    kind: Kind,
) -> ImportResult {
    let mut r = ImportResult {
        line,
        uid,
        status: ImportStatus::Rejected,
        item_id: Some(change.item_id),
        kind: Some(kind),
        version: None,
        seq: None,
        error: None,
    };
    match outcome {
        Outcome::Applied(c) | Outcome::Duplicate(c) => {
            r.status = if matches!(outcome, Outcome::Applied(_)) {
                ImportStatus::Applied
            } else {
                ImportStatus::Duplicate
            };
            r.item_id = Some(c.item_id);
            r.version = Some(c.version);
            r.seq = Some(c.seq);
        }
        // An import has no base version, so it never conflicts; said as a rejection if it did.
        Outcome::Conflict(current) => {
            r.error = Some(ImportError {
                code: "conflict",
                detail: format!("the item is at version {}", current.version),
            });
        }
        Outcome::Rejected { code, detail } => {
            r.error = Some(ImportError {
                code: code.as_str(),
                detail: detail.clone(),
            });
        }
    }
    r
}

/// The changes an import pushes, and a slot per entry saying what became of it: refused
/// while splitting or converting, or pushed as the change at an index. Whole-request refusals:
/// invalid UTF-8 (naming the line), and more entries than one push may hold.
fn plan(
    bytes: &[u8],
    format: Format,
    user: UserId,
    limit: usize,
) -> Result<(Vec<Slot>, Vec<Change>), ApiError> {
    let text = keepsake_formats::utf8_text(bytes).map_err(|line| {
        ApiError::malformed(format!(
            "line {line} is not valid UTF-8; the file must be UTF-8"
        ))
    })?;
    let mut slots = Vec::new();
    let mut changes = Vec::new();
    for entry in keepsake_formats::entries(text, format) {
        // Every entry counts, rejected ones too: a file is imported whole or refused whole.
        if slots.len() == limit {
            return Err(ApiError::malformed(format!(
                "the file holds more than {limit} entries, the limit of one push; split it"
            )));
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                slots.push(entry_error(e));
                continue;
            }
        };
        let (kind, document) = match keepsake_formats::to_document(&entry) {
            Ok(converted) => converted,
            Err(e) => {
                slots.push(Slot::Refused(refused(
                    entry.line,
                    entry.uid.clone(),
                    e.to_string(),
                )));
                continue;
            }
        };
        slots.push(Slot::Pushed {
            index: changes.len(),
            line: entry.line,
            uid: entry.uid.clone(),
            kind,
        });
        changes.push(Change {
            change_id: keepsake_formats::import_change_id(user, &entry),
            kind,
            item_id: keepsake_formats::import_item_id(user, &entry),
            base_version: None,
            body: ChangeBody::Put {
                document: Document::from_value(&document),
            },
        });
    }
    Ok((slots, changes))
}

/// `POST /v1/import`: written as the device's push.
pub(super) async fn import(
    State(state): State<Shared>,
    auth: DeviceAuth,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let meta = EventMeta {
        device_id: Some(auth.device),
        origin: Origin::Device,
        request_id: Some(request_id),
        restore_id: None,
    };
    import_as(&state, auth.user, meta, &headers, body).await
}

/// `POST /admin/v1/users/{user_id}/import`: the operator's import, recorded with origin
/// `import` (no device), so that history and audits tell it from a device's writes.
pub(super) async fn admin_import(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let meta = EventMeta {
        device_id: None,
        origin: Origin::Import,
        request_id: Some(request_id),
        restore_id: None,
    };
    import_as(&state, user, meta, &headers, body).await
}

/// An import of the request's body for `user`, written with `meta`: one push.
async fn import_as(
    state: &Shared,
    user: UserId,
    meta: EventMeta,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let format = content_type
        .and_then(Format::from_media_type)
        .ok_or_else(|| unsupported_media_type(content_type))?;
    let bytes = read_body(body, state.limits.max_request_bytes).await?;
    let limit = state.limits.max_changes_per_push;
    // Splitting and converting is CPU work (up to a whole request body): off the async workers.
    let (slots, changes) = tokio::task::spawn_blocking(move || plan(&bytes, format, user, limit))
        .await
        .map_err(|e| ApiError::internal("import: converting the entries", e))??;
    let (result, token) =
        super::device::push_with(state, user, meta, changes.clone(), false).await?;
    let results = slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Refused(r) => r,
            Slot::Pushed {
                index,
                line,
                uid,
                kind,
            } => match (changes.get(index), result.outcomes.get(index)) {
                (Some(change), Some(outcome)) => pushed(change, outcome, line, uid, kind),
                // The log answers one outcome per change; never taken.
                _ => refused(line, uid, "the push gave no outcome for this entry".into()),
            },
        })
        .collect();
    Ok(json(StatusCode::OK, &ImportAnswer { results, token }))
}

/// What an export asks for.
struct ExportQuery {
    format: Format,
    kinds: Vec<Kind>,
    as_of: Option<UpTo>,
}

fn export_query(q: &HashMap<String, String>) -> Result<ExportQuery, ApiError> {
    let format = match q.get("format").map(String::as_str) {
        Some("vcard") => Format::VCard,
        Some("icalendar") => Format::ICalendar,
        Some(other) => {
            return Err(ApiError::malformed(format!(
                "format {other:?} is neither vcard nor icalendar"
            )));
        }
        None => return Err(ApiError::malformed("give format=vcard or format=icalendar")),
    };
    let of_format: Vec<Kind> = Kind::DATA
        .iter()
        .copied()
        .filter(|k| Format::of_kind(*k) == Some(format))
        .collect();
    let kinds = match q.get("kind") {
        None => of_format,
        Some(k) => {
            let kind = Kind::parse(k.trim())
                .ok_or_else(|| ApiError::malformed(format!("unknown kind {k:?}")))?;
            if !of_format.contains(&kind) {
                return Err(ApiError::malformed(format!(
                    "kind {kind} is not written as {format}"
                )));
            }
            vec![kind]
        }
    };
    let as_of = q
        .get("as_of")
        .map(|t| parse_time("as_of", t).map(UpTo::Time))
        .transpose()?;
    Ok(ExportQuery {
        format,
        kinds,
        as_of,
    })
}

/// The live items of `kinds` in `s`, in item id order, with their documents (cheap clones).
fn exportable(s: &UserState, kinds: &[Kind]) -> Vec<(Kind, Document)> {
    let mut items: Vec<&ItemState> = s
        .items()
        .filter(|i| !i.deleted && kinds.contains(&i.kind))
        .collect();
    items.sort_by_key(|i| i.item_id);
    items
        .into_iter()
        .filter_map(|i| Some((i.kind, i.document.clone()?)))
        .collect()
}

async fn export_user(
    state: &Shared,
    user: UserId,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let query = export_query(q)?;
    let log = &state.ready()?.log;
    let items = match query.as_of {
        // The same as-of read as `GET /admin/v1/users/{id}/items`.
        Some(at) => exportable(&log.items_at(&user, at).await?, &query.kinds),
        None => log.user(&user, |u| exportable(u, &query.kinds)).await?,
    };
    let format = query.format;
    // Converting every item is CPU work: off the async workers.
    let pass = tokio::task::spawn_blocking(move || {
        export_body::first_pass(items, format, export_body::BUFFER_BYTES)
    })
    .await
    .map_err(|e| ApiError::internal("export: writing the items", e))?;
    let skipped = pass.skipped;
    if skipped > 0 {
        tracing::warn!(user_id = %user, skipped, format = %query.format, "export skipped items that cannot be written");
    }
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(media_type_utf8(query.format)),
            ),
            (
                header::HeaderName::from_static(SKIPPED_HEADER),
                HeaderValue::from(skipped),
            ),
        ],
        pass.into_body(format),
    )
        .into_response())
}

/// `GET /v1/export`.
pub(super) async fn export(
    State(state): State<Shared>,
    auth: DeviceAuth,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    export_user(&state, auth.user, &q).await
}

/// `GET /admin/v1/users/{user_id}/export`.
pub(super) async fn admin_export(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    export_user(&state, user, &q).await
}
