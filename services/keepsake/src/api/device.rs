//! The device API, `/v1`: a device sees and changes only its own user's data.

use std::collections::HashMap;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keepsake_log::{Log, Mark, PushRequest, UpTo};
use keepsake_model::{
    Change, ChangeBody, ChangeId, Event, EventMeta, ItemId, ItemState, Kind, Origin, Outcome,
    RequestId, StateRead, UserId,
};
use serde::Deserialize;
use serde_json::Value;

use super::wire::{self, ChangeResult, ItemView};
use super::{ApiError, DeviceAuth, Shared, json, parse_id, parse_json, read_body};
use crate::sync_token::SyncToken;

pub(super) async fn session(
    State(state): State<Shared>,
    auth: DeviceAuth,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    Ok(json(
        StatusCode::OK,
        &wire::Session {
            user_id: auth.user,
            device_id: auth.device,
            store_id: ready.log.descriptor().store_id,
            kinds: Kind::DATA,
            limits: state.limits,
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    changes: Vec<Change>,
    #[serde(default)]
    confirm_mass_delete: bool,
}

fn change_result<'a>(change: &Change, outcome: &'a Outcome) -> ChangeResult<'a> {
    let (change_id, item_id) = (change.change_id, change.item_id);
    match outcome {
        Outcome::Applied(r) => ChangeResult::Applied {
            change_id,
            item_id,
            version: r.version,
            seq: r.seq,
        },
        Outcome::Duplicate(r) => ChangeResult::Duplicate {
            change_id,
            item_id: r.item_id,
            version: r.version,
            seq: r.seq,
        },
        Outcome::Conflict(current) => ChangeResult::Conflict {
            change_id,
            item_id,
            current: ItemView::of(current),
        },
        Outcome::Rejected { code, detail } => ChangeResult::Rejected {
            change_id,
            item_id,
            error: wire::ChangeError {
                code: code.as_str(),
                detail,
            },
        },
    }
}

/// Pushes `changes` as one device-attributed push through the log (durable before it returns),
/// with the push metrics; returns the outcomes and the sync token after the push. Every write a
/// device makes goes through here: pushes, item restores and imports.
pub(crate) async fn push_as_device(
    state: &Shared,
    auth: DeviceAuth,
    request_id: RequestId,
    changes: Vec<Change>,
    confirm_mass_delete: bool,
) -> Result<(keepsake_log::PushResult, String), ApiError> {
    let meta = EventMeta {
        device_id: Some(auth.device),
        origin: Origin::Device,
        request_id: Some(request_id),
        restore_id: None,
    };
    push_with(state, auth.user, meta, changes, confirm_mass_delete).await
}

/// One push for `user` with `meta` (who is writing), counted in the push metrics; the result
/// and the sync token after it.
pub(super) async fn push_with(
    state: &Shared,
    user: UserId,
    meta: EventMeta,
    changes: Vec<Change>,
    confirm_mass_delete: bool,
) -> Result<(keepsake_log::PushResult, String), ApiError> {
    let ready = state.ready()?;
    let started = std::time::Instant::now();
    let _in_flight = state.metrics.push_in_flight();
    let count = changes.len();
    let result = ready
        .log
        .push(PushRequest {
            user_id: user,
            meta,
            changes,
            confirm_mass_delete,
        })
        .await?;
    state.metrics.observe_push(count, started.elapsed());
    let token = SyncToken::at_seq(ready.log.descriptor().store_id, result.last_seq);
    Ok((result, token.encode()))
}

async fn commit(
    state: &Shared,
    auth: DeviceAuth,
    request_id: RequestId,
    changes: Vec<Change>,
    confirm_mass_delete: bool,
) -> Result<Response, ApiError> {
    let (result, token) = push_as_device(
        state,
        auth,
        request_id,
        changes.clone(),
        confirm_mass_delete,
    )
    .await?;
    let answer = wire::PushAnswer {
        results: changes
            .iter()
            .zip(&result.outcomes)
            .map(|(c, o)| change_result(c, o))
            .collect(),
        token,
    };
    Ok(json(StatusCode::OK, &answer))
}

pub(super) async fn push(
    State(state): State<Shared>,
    auth: DeviceAuth,
    Extension(request_id): Extension<RequestId>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.limits.max_request_bytes).await?;
    let body: PushBody = parse_json(&bytes)?;
    if body.changes.len() > state.limits.max_changes_per_push {
        return Err(ApiError::malformed(format!(
            "{} changes in one push; the limit is {}",
            body.changes.len(),
            state.limits.max_changes_per_push
        )));
    }
    commit(
        &state,
        auth,
        request_id,
        body.changes,
        body.confirm_mass_delete,
    )
    .await
}

fn query_number(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::malformed(format!("{name} must be a whole number, not {v:?}"))
            })
        })
        .transpose()
}

/// Which page of a user's items a pull answers.
struct Page {
    /// The page's changes, already serialised as a JSON array: built while the user's state is
    /// borrowed, with each stored document written as it is (no `Value` trees). An error means
    /// a stored document is not JSON strict parsers accept (written before documents were
    /// validated, or damaged), which the answer must not hide; it names the item.
    changes: Result<String, serde_json::Error>,
    count: usize,
    token_seq: u64,
    has_more: bool,
    /// Where in the log `token_seq` was the user's last: for a page that answered everything
    /// (`has_more` false) read where the view had a mark.
    at: Option<Mark>,
}

fn page(user: &keepsake_model::UserState, since: Option<u64>, limit: usize) -> Page {
    let after = since.unwrap_or(0);
    // The index yields items in seq order: take one more than the page to know if there is more.
    let mut items: Vec<&ItemState> = user
        .items_changed_after(after)
        // Devices (kind `device`, the operator's record of who could reach the data) are not
        // the user's data: never served to a device.
        .filter(|i| i.kind.is_data() && (since.is_some() || !i.deleted))
        .take(limit + 1)
        .collect();
    let has_more = items.len() > limit;
    items.truncate(limit);
    let token_seq = if has_more {
        items.last().map_or(after, |i| i.seq)
    } else {
        user.last_seq()
    };
    let pulled: Vec<wire::Pulled<'_>> = items.iter().map(|i| wire::Pulled::of(i)).collect();
    let changes = serde_json::to_string(&pulled);
    Page {
        changes,
        count: pulled.len(),
        token_seq,
        has_more,
        at: None,
    }
}

/// The page of the user's changes after `since` (a seq, and the mark it was the user's last
/// at). When the view's index tells that no segment since the mark holds the user's events,
/// the answer is "nothing new" at the head's mark, and the user is not loaded: a user out of
/// memory costs a pull with nothing new no store request (the most common pull: a device
/// checking in). Otherwise the user is read, and the page is marked if it answered everything.
/// `vouched`: the head's mark the index already vouched for since `since`'s (the pull's check
/// at the door), so that the index is not asked twice.
async fn read_page(
    log: &Log,
    metrics: &crate::metrics::Metrics,
    user: &UserId,
    since: Option<(u64, Option<Mark>)>,
    vouched: Option<Mark>,
    limit: usize,
) -> Result<Page, ApiError> {
    let unchanged = match (since, vouched) {
        (Some((seq, _)), Some(now)) => Some((seq, now)),
        (Some((seq, Some(mark))), None) => log.unchanged_since(user, mark)?.map(|now| (seq, now)),
        _ => None,
    };
    if let Some((seq, now)) = unchanged {
        metrics.observe_pull_from_index();
        return Ok(Page {
            changes: Ok("[]".into()),
            count: 0,
            token_seq: seq,
            has_more: false,
            at: Some(now),
        });
    }
    let after = since.map(|(seq, _)| seq);
    let (mut p, mark) = log.user_marked(user, |u| page(u, after, limit)).await?;
    if !p.has_more {
        p.at = mark;
    }
    Ok(p)
}

pub(super) async fn pull(
    State(state): State<Shared>,
    auth: DeviceAuth,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let limits = state.limits;
    let limit = match query_number(&q, "limit")? {
        None => limits.default_page_size,
        Some(n) if n >= 1 && n as usize <= limits.max_page_size => n as usize,
        Some(n) => {
            return Err(ApiError::malformed(format!(
                "limit {n} is outside 1..={}",
                limits.max_page_size
            )));
        }
    };
    let wait = match query_number(&q, "wait")? {
        None => 0,
        Some(n) if n <= limits.max_wait_seconds => n,
        Some(n) => {
            return Err(ApiError::malformed(format!(
                "wait {n} is outside 0..={}",
                limits.max_wait_seconds
            )));
        }
    };
    let log = &ready.log;
    let store_id = log.descriptor().store_id;
    // The head's mark the index vouched for at the door: a pull that does not wait answers
    // with it, without a second look at the index. A long poll looks again once it watches the
    // head, so that a commit between the door and the watch is not slept through.
    let mut vouched: Option<Mark> = None;
    let since = match q.get("since") {
        None => None,
        Some(t) => {
            let token = SyncToken::decode(t).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_token",
                    "the sync token cannot be read",
                )
            })?;
            if token.store_id != store_id {
                return Err(ApiError::new(
                    StatusCode::GONE,
                    "token_from_other_store",
                    "the token is from another store: start an initial sync (no since)",
                ));
            }
            // A mark the index vouches for needs no look at the user: its seq is the user's
            // last. Otherwise (no mark, an old one, another copy of the store) the user is read.
            vouched = match token.at {
                Some(mark) => log.unchanged_since(&auth.user, mark)?,
                None => None,
            };
            let have = if vouched.is_some() {
                token.seq
            } else {
                log.last_seq(&auth.user).await?
            };
            if token.seq > have {
                tracing::warn!(
                    token_seq = token.seq,
                    server_seq = have,
                    "a device is ahead of the server"
                );
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "server_behind",
                    format!(
                        "the token is at seq {} but the server has {have} for this user: keep your data and push it again",
                        token.seq
                    ),
                ));
            }
            Some((token.seq, token.at))
        }
    };
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut head = log.watch_head(log.shard_of(&auth.user));
    let mut shutdown = state.shutdown.clone();
    // A long poll outlives its token's check at the door: a device revoked while its poll waits
    // is refused when the poll wakes, never answered with changes pushed after the revocation.
    let revoked = || ready.registry.is_revoked(&auth.device);
    let result = loop {
        if let Some(h) = head.as_mut() {
            h.mark_unchanged();
        }
        if revoked() {
            return Err(ApiError::unauthorized());
        }
        let at_door = vouched.take().filter(|_| wait == 0);
        let p = read_page(log, &state.metrics, &auth.user, since, at_door, limit).await?;
        if p.count > 0 || wait == 0 || since.is_none() || *shutdown.borrow() {
            break p;
        }
        let Some(h) = head.as_mut() else { break p };
        let _waiting = state.metrics.waiting();
        tokio::select! {
            changed = h.changed() => { if changed.is_err() { break p; } }
            _ = tokio::time::sleep_until(deadline) => { break read_page(log, &state.metrics, &auth.user, since, None, limit).await?; }
            _ = shutdown.changed() => { break p; }
        }
    };
    if revoked() {
        return Err(ApiError::unauthorized());
    }
    state.metrics.observe_pull(result.count, started.elapsed());
    let token = SyncToken {
        store_id,
        seq: result.token_seq,
        at: result.at,
    };
    let changes = result.changes.map_err(|e| ApiError::unwritable(&e))?;
    let body = format!(
        r#"{{"changes":{},"token":{},"has_more":{}}}"#,
        changes,
        Value::String(token.encode()),
        result.has_more
    );
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

pub(super) async fn item(
    State(state): State<Shared>,
    auth: DeviceAuth,
    Path(item_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let item_id: ItemId = parse_id("item_id", &item_id)?;
    let found = ready
        .log
        .user(&auth.user, |u| u.item(&item_id).cloned())
        .await?;
    let Some(item) = found.filter(|i| i.kind.is_data()) else {
        return Err(ApiError::not_found("not_found", "no such item"));
    };
    if item.deleted {
        return Err(ApiError::not_found(
            "deleted",
            format!("the item was deleted at version {}", item.version),
        ));
    }
    let etag = format!("\"{}\"", item.version);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    // `Accept: text/vcard` / `text/calendar`: the item in that format, with the same ETag.
    let text = super::negotiate::negotiated(&item, &headers).transpose()?;
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else if let Some((media_type, text)) = text {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(media_type))],
            text,
        )
            .into_response()
    } else {
        json(StatusCode::OK, &ItemView::of(&item))
    };
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn item_history(
    state: &Shared,
    auth: DeviceAuth,
    item_id: ItemId,
) -> Result<Vec<Event>, ApiError> {
    let ready = state.ready()?;
    let log = &ready.log;
    let up_to = UpTo::Seq(log.last_seq(&auth.user).await?);
    // Only this item's events are read whole (key columns pick them), not the user's log.
    let events = log
        .user_events_picked(&auth.user, up_to, keepsake_log::Pick::Item(item_id))
        .await?;
    let versions: Vec<Event> = events.into_iter().filter(|e| e.kind.is_data()).collect();
    if versions.is_empty() {
        return Err(ApiError::not_found("not_found", "no such item"));
    }
    Ok(versions)
}

pub(super) async fn history(
    State(state): State<Shared>,
    auth: DeviceAuth,
    Path(item_id): Path<String>,
) -> Result<Response, ApiError> {
    let item_id: ItemId = parse_id("item_id", &item_id)?;
    let versions = item_history(&state, auth, item_id).await?;
    let answer = wire::History {
        item_id,
        versions: versions.iter().map(wire::HistoryVersion::of).collect(),
    };
    Ok(json(StatusCode::OK, &answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    version: u64,
}

pub(super) async fn restore_item(
    State(state): State<Shared>,
    auth: DeviceAuth,
    Extension(request_id): Extension<RequestId>,
    Path(item_id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let item_id: ItemId = parse_id("item_id", &item_id)?;
    let bytes = read_body(body, state.limits.max_request_bytes).await?;
    let RestoreBody { version } = parse_json(&bytes)?;
    let versions = item_history(&state, auth, item_id).await?;
    let Some(wanted) = versions.iter().find(|e| e.version == version) else {
        return Err(ApiError::not_found(
            "not_found",
            format!("the item has no version {version}"),
        ));
    };
    let Some(document) = wanted.document.clone() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_change",
            format!("version {version} is a deletion; restore a version with a document"),
        ));
    };
    let current = versions.last().map_or(0, |e| e.version);
    // The same restore of the same current version is the same change: a retry is a duplicate.
    let change_id = ChangeId(uuid::Uuid::new_v5(
        &item_id.0,
        format!("restore-item:{version}:{current}").as_bytes(),
    ));
    let change = Change {
        change_id,
        kind: wanted.kind,
        item_id,
        base_version: Some(current),
        body: ChangeBody::Put { document },
    };
    commit(&state, auth, request_id, vec![change], false).await
}

/// `POST /v1/mass-delete-confirmation`: the user confirms that their CardDAV/CalDAV clients may
/// delete past the mass-delete guard for the next minutes (`crate::delete_guard`); a REST push
/// says `confirm_mass_delete` instead.
pub(super) async fn confirm_mass_delete(
    State(state): State<Shared>,
    auth: DeviceAuth,
) -> Result<Response, ApiError> {
    state.ready()?;
    state
        .delete_guard
        .confirm(auth.user, std::time::Instant::now());
    let minutes = crate::delete_guard::CONFIRMED_FOR.as_secs() / 60;
    let until = state.clock.now() + chrono::Duration::minutes(minutes as i64);
    tracing::info!(user = %auth.user, device = %auth.device, "mass deletes over DAV confirmed");
    Ok(json(
        StatusCode::OK,
        &wire::MassDeleteConfirmation {
            confirmed_until: until,
            minutes,
        },
    ))
}
