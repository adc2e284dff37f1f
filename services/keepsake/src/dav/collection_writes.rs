//! The writes that make, change and delete a collection: `MKCOL` (extended, RFC 5689) and
//! `MKCALENDAR` (RFC 4791 5.3.1), `PROPPATCH` of its properties, `DELETE`.
//!
//! Each is an ordinary device push, as an item's write is (durable before the answer, in
//! history, restorable), with a change id derived from the request as [`super::items`] does:
//! - making one is a *create* of its `collection` item (two clients making one name at once
//!   make one collection; the other is answered `405`, as for a name that exists);
//! - a PROPPATCH is a merge patch of that item (or, for a default never written, its first
//!   put); it is all or nothing (RFC 4918 9.2): a property that cannot be set fails the
//!   request, the others are answered `424`, and nothing is written;
//! - deleting one deletes its items, then it, in pushes of at most the push limit, the last
//!   of which deletes the collection (staging refuses to delete a collection holding live
//!   items, so a client that added an item meanwhile is answered `409` and the collection
//!   stays). The mass-delete guard counts its items as DAV deletes. A default collection is
//!   never deleted: its items are deleted one by one.
//!
//! Properties kept (in the collection's document, [`FIELDS`]): `displayname`, the calendar or
//! address book description, Apple's `calendar-color` and `calendar-order`, and
//! `calendar-timezone`, as text, exactly as sent; a calendar's
//! `supported-calendar-component-set` is chosen when it is made and fixed after. Other
//! properties in a MKCOL or MKCALENDAR are not kept (clients send many that mean nothing
//! here, and a refusal would leave them without a calendar); in a PROPPATCH they are refused.

use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keepsake_model::{
    Change, ChangeBody, Document, Holds, ItemId, Kind, Outcome, RequestId, UserState,
};
use serde_json::{Map, Value};

use super::answer::{error, multistatus, precondition};
use super::collections::{self, contains};
use super::paths::{self, Collection};
use super::vocab::{COMPONENTS, change_id, field};
use super::xml::{self, CALDAV, CARDDAV, DAV, Element, KEEPSAKE_NS};
use crate::api::{ApiError, DeviceAuth, Shared};

/// Most collections one user has (the defaults included): every listing of the home, and
/// every sync token, is a pass over the user's items per collection.
pub(crate) const MAX_COLLECTIONS: usize = 100;

/// Pushes one change as the device; its outcome.
async fn pushed_one(
    state: &Shared,
    auth: DeviceAuth,
    request_id: RequestId,
    change: Change,
) -> Result<Outcome, ApiError> {
    let (result, _) =
        crate::api::push_as_device(state, auth, request_id, vec![change], false).await?;
    result.outcomes.into_iter().next().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the push gave no outcome",
        )
    })
}

fn rejected(detail: &str) -> Response {
    error(ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_change",
        detail.to_string(),
    ))
}

/// The version of the item `id`, tombstone included (what a derived change id has seen).
async fn version_of(
    state: &Shared,
    user: keepsake_model::UserId,
    id: ItemId,
) -> Result<Option<u64>, ApiError> {
    use keepsake_model::StateRead as _;
    let log = &state.ready()?.log;
    Ok(log
        .user(&user, |u: &UserState| u.item(&id).map(|i| i.version))
        .await?)
}

/// MKCOL or MKCALENDAR of `segment` in the user's home.
pub(crate) async fn make(
    state: &Shared,
    auth: DeviceAuth,
    segment: &str,
    method: &str,
    request: Option<&Element>,
    body: &[u8],
    request_id: RequestId,
) -> Response {
    let exists = match collections::find(state, auth.user, segment).await {
        Ok(found) => found.is_some(),
        Err(e) => return error(e),
    };
    let id = paths::collection_id(auth.user, segment);
    // A default's name, or its id: the defaults always exist.
    if exists || Holds::ALL.iter().any(|h| h.default_id(auth.user) == id) {
        return super::not_allowed();
    }
    match collections::all(state, auth.user).await {
        Ok(all) if all.len() >= MAX_COLLECTIONS => {
            return error(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "too_many_collections",
                format!("a user has at most {MAX_COLLECTIONS} address books and calendars"),
            ));
        }
        Ok(_) => {}
        Err(e) => return error(e),
    }
    let props = request
        .into_iter()
        .flat_map(|r| r.children_named(DAV, "set"))
        .flat_map(|s| s.children_named(DAV, "prop"))
        .flat_map(|p| p.children.iter());
    let props: Vec<&Element> = props.collect();
    let holds = if method == "MKCALENDAR" {
        if request.is_some_and(|r| !r.is(CALDAV, "mkcalendar")) {
            return error(ApiError::malformed(
                "a MKCALENDAR body is a CALDAV:mkcalendar",
            ));
        }
        Holds::Calendar
    } else {
        if request.is_some_and(|r| !r.is(DAV, "mkcol")) {
            return error(ApiError::malformed("an extended MKCOL body is a DAV:mkcol"));
        }
        let kind = props.iter().find(|p| p.is(DAV, "resourcetype"));
        match kind {
            Some(t) if t.child(CALDAV, "calendar").is_some() => Holds::Calendar,
            Some(t) if t.child(CARDDAV, "addressbook").is_some() => Holds::Contacts,
            // RFC 5689 3.3: a resource type the server cannot make.
            _ => return precondition(StatusCode::FORBIDDEN, DAV, "valid-resourcetype"),
        }
    };
    let mut document = Map::new();
    document.insert("@type".into(), "Collection".into());
    document.insert("holds".into(), holds.as_str().into());
    for p in &props {
        if let Some(f) = field(&p.ns, &p.name, holds) {
            document.insert(f.into(), Value::String(p.text.clone()));
        }
    }
    if holds == Holds::Calendar {
        let asked: Vec<String> = props
            .iter()
            .filter(|p| p.is(CALDAV, "supported-calendar-component-set"))
            .flat_map(|p| p.children_named(CALDAV, "comp"))
            .filter_map(|c| c.attr("name"))
            .map(str::to_ascii_uppercase)
            .filter(|c| COMPONENTS.contains(&c.as_str()))
            .collect();
        let set_given = props
            .iter()
            .any(|p| p.is(CALDAV, "supported-calendar-component-set"));
        if set_given && asked.is_empty() {
            return precondition(
                StatusCode::FORBIDDEN,
                CALDAV,
                "supported-calendar-component",
            );
        }
        if set_given {
            document.insert("components".into(), Value::from(asked));
        }
    }
    // A name that is not the collection's id is kept, as an item's chosen name is.
    if id.to_string() != segment {
        let mut resource = Map::new();
        resource.insert("name".into(), Value::String(segment.to_string()));
        document.insert(
            keepsake_formats::RESOURCE_PROPERTY.into(),
            Value::Object(resource),
        );
    }
    let seen = match version_of(state, auth.user, id).await {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let change = Change {
        change_id: change_id(auth.user, id, "mkcol", seen, body),
        kind: Kind::Collection,
        item_id: id,
        base_version: None,
        body: ChangeBody::Create {
            document: Document::from_object(&document),
        },
    };
    match pushed_one(state, auth, request_id, change).await {
        Ok(Outcome::Applied(_) | Outcome::Duplicate(_)) => StatusCode::CREATED.into_response(),
        Ok(Outcome::Conflict(_)) => super::not_allowed(),
        Ok(Outcome::Rejected { code, detail }) => {
            error(ApiError::new(StatusCode::CONFLICT, code.as_str(), detail))
        }
        Err(e) => error(e),
    }
}

/// A PROPPATCH of a collection.
pub(crate) async fn proppatch(
    state: &Shared,
    auth: DeviceAuth,
    c: &Collection,
    request: Option<&Element>,
    body: &[u8],
    request_id: RequestId,
) -> Response {
    let Some(request) = request.filter(|r| r.is(DAV, "propertyupdate")) else {
        return error(ApiError::malformed(
            "a PROPPATCH body is a DAV:propertyupdate",
        ));
    };
    // In document order: a later instruction on one property wins (RFC 4918 9.2).
    let mut patch = Map::new();
    let mut names: Vec<(String, String, bool)> = Vec::new();
    for update in request.children.iter() {
        let set = update.is(DAV, "set");
        if !set && !update.is(DAV, "remove") {
            continue;
        }
        for p in update
            .children_named(DAV, "prop")
            .flat_map(|p| p.children.iter())
        {
            let f = field(&p.ns, &p.name, c.holds);
            if let Some(f) = f {
                let value = if set {
                    Value::String(p.text.clone())
                } else {
                    Value::Null
                };
                patch.insert(f.into(), value);
            }
            names.push((p.ns.clone(), p.name.clone(), f.is_some()));
        }
    }
    let failed = names.iter().any(|(_, _, ok)| !ok);
    let status = |ok: bool| match (failed, ok) {
        (false, _) => "HTTP/1.1 200 OK",
        (true, false) => "HTTP/1.1 403 Forbidden",
        (true, true) => "HTTP/1.1 424 Failed Dependency",
    };
    if !failed && !patch.is_empty() {
        let seen = match version_of(state, auth.user, c.id).await {
            Ok(v) => v,
            Err(e) => return error(e),
        };
        let change_body = match &c.document {
            Some(_) => ChangeBody::Patch {
                document: Document::from_object(&patch),
            },
            None => {
                // A default never written: its first put.
                let mut document = Map::new();
                document.insert("@type".into(), "Collection".into());
                document.insert("holds".into(), c.holds.as_str().into());
                document.extend(patch.into_iter().filter(|(_, v)| !v.is_null()));
                ChangeBody::Put {
                    document: Document::from_object(&document),
                }
            }
        };
        let change = Change {
            change_id: change_id(auth.user, c.id, "proppatch", seen, body),
            kind: Kind::Collection,
            item_id: c.id,
            base_version: None,
            body: change_body,
        };
        match pushed_one(state, auth, request_id, change).await {
            Ok(Outcome::Applied(_) | Outcome::Duplicate(_)) => {}
            Ok(Outcome::Conflict(_)) => {
                return error(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the collection changed meanwhile",
                ));
            }
            Ok(Outcome::Rejected { detail, .. }) => return rejected(&detail),
            Err(e) => return error(e),
        }
    }
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    let _ = write!(
        out,
        "<d:response><d:href>{}</d:href>",
        xml::escape(&c.href(auth.user))
    );
    for ok in [true, false] {
        let props: String = names
            .iter()
            .filter(|(_, _, o)| *o == ok)
            .map(|(ns, name, _)| xml::open_tag(ns, name, true))
            .collect();
        if !props.is_empty() {
            let _ = write!(
                out,
                "<d:propstat><d:prop>{props}</d:prop><d:status>{}</d:status></d:propstat>",
                status(ok)
            );
        }
    }
    out.push_str("</d:response>");
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

/// DELETE of a collection: its items, then it.
pub(crate) async fn delete(
    state: &Shared,
    auth: DeviceAuth,
    c: &Collection,
    request_id: RequestId,
) -> Response {
    if c.default {
        return error(ApiError::forbidden(
            "the default address book and calendar are not deleted: delete their items",
        ));
    }
    let log = match state.ready() {
        Ok(r) => &r.log,
        Err(e) => return error(e),
    };
    let user = auth.user;
    let read = log
        .user(&user, |u: &UserState| {
            use keepsake_model::StateRead as _;
            let members: Vec<(ItemId, Kind, u64)> = u
                .items()
                .filter(|i| !i.deleted && contains(user, c, i))
                .map(|i| (i.item_id, i.kind, i.version))
                .collect();
            let live: Vec<(Kind, usize)> =
                Kind::ITEMS.iter().map(|&k| (k, u.live_count(k))).collect();
            let version = u.item(&c.id).map(|i| i.version);
            (members, live, version)
        })
        .await;
    let (members, live, version) = match read {
        Ok(r) => r,
        Err(e) => return error(e.into()),
    };
    let Some(version) = version else {
        return error(ApiError::not_found("not_found", "no such collection"));
    };
    // Each item of the collection is a delete a DAV client makes: the guard counts them.
    for &(kind, live) in &live {
        let n = members.iter().filter(|m| m.1 == kind).count();
        if n == 0 {
            continue;
        }
        if let Err(refused) = state.delete_guard.admit_many(
            user,
            kind,
            n,
            live,
            &state.mass_delete,
            std::time::Instant::now(),
        ) {
            tracing::warn!(
                user = %user,
                device = %auth.device,
                collection = %c.id,
                deletes = refused.deletes,
                live = refused.live,
                "DAV collection delete refused by the mass-delete guard"
            );
            return precondition(
                StatusCode::FORBIDDEN,
                KEEPSAKE_NS,
                "mass-delete-confirmation",
            );
        }
    }
    let mut changes: Vec<Change> = members
        .iter()
        .map(|&(id, kind, v)| Change {
            change_id: change_id(user, id, "delete", Some(v), b"collection"),
            kind,
            item_id: id,
            // The version read: an item moved out of the collection, or edited, since is a
            // conflict, and is neither deleted nor its edit lost.
            base_version: Some(v),
            body: ChangeBody::Delete,
        })
        .collect();
    changes.push(Change {
        change_id: change_id(user, c.id, "delete", Some(version), b""),
        kind: Kind::Collection,
        item_id: c.id,
        base_version: Some(version),
        body: ChangeBody::Delete,
    });
    let per_push = state.limits.max_changes_per_push.max(1);
    let mut rest = changes;
    while !rest.is_empty() {
        let tail = rest.split_off(per_push.min(rest.len()));
        let chunk = std::mem::replace(&mut rest, tail);
        // The guard above decided for these deletes; the per-push guard would ask again.
        let pushed = crate::api::push_as_device(state, auth, request_id, chunk, true).await;
        let result = match pushed {
            Ok((r, _)) => r,
            Err(e) => return error(e),
        };
        for outcome in &result.outcomes {
            match outcome {
                Outcome::Applied(_) | Outcome::Duplicate(_) => {}
                Outcome::Conflict(_) => {
                    return error(ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        "an item of the collection changed while it was deleted; the items \
                         deleted so far stay deleted (restorable), and a DELETE again deletes \
                         the rest",
                    ));
                }
                Outcome::Rejected { code, detail } => {
                    return error(ApiError::new(
                        StatusCode::CONFLICT,
                        code.as_str(),
                        detail.clone(),
                    ));
                }
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
