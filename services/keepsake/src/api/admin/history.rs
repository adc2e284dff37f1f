//! Reading a user's past: items at a moment, the audit of raw events (paged from `after_seq`,
//! reading only the page's documents), and what changed between two moments.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keepsake_log::{Pick, UpTo};
use keepsake_model::{StateRead, UserId};

use super::{kind_filter, moment, parse_time};
use crate::api::wire::{self, ItemAt};
use crate::api::{ApiError, OperatorAuth, Shared, json, parse_id};
use crate::restore::live_items;

pub(in crate::api) async fn items_as_of(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let at = moment(
        q.get("as_of").map(String::as_str),
        q.get("as_of_seq").map(String::as_str),
    )?;
    let kinds = kind_filter(q.get("kind").map(String::as_str))?;
    let s = state.ready()?.log.items_at(&user, at).await?;
    let live = live_items(&s, &kinds);
    let answer = wire::ItemsAt {
        user_id: user,
        as_of: match at {
            UpTo::Time(t) => Some(wire::time(&t)),
            _ => None,
        },
        seq: s.last_seq(),
        items: live.values().map(|i| ItemAt::of(i)).collect(),
    };
    Ok(json(StatusCode::OK, &answer))
}

pub(in crate::api) async fn events(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| ApiError::malformed(format!("{name} must be a whole number")))
        })
    };
    let after = number("after_seq", 0)?;
    let limit = number("limit", 500)?;
    if !(1..=state.limits.max_page_size as u64).contains(&limit) {
        return Err(ApiError::malformed(format!(
            "limit must be within 1..={}",
            state.limits.max_page_size
        )));
    }
    let log = &state.ready()?.log;
    let upto = after.saturating_add(limit);
    // Only this page's events are read whole (key columns pick them), not seqs 1..=after.
    let events = log
        .user_events_picked(&user, UpTo::Seq(upto), Pick::After(after))
        .await?;
    let last = log.last_seq(&user).await?;
    let answer = wire::Events {
        user_id: user,
        events: events.iter().map(wire::EventView::of).collect(),
        has_more: upto < last,
    };
    Ok(json(StatusCode::OK, &answer))
}

pub(in crate::api) async fn diff(
    State(state): State<Shared>,
    _op: OperatorAuth,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user: UserId = parse_id("user_id", &user_id)?;
    let from = parse_time(
        "from",
        q.get("from")
            .ok_or_else(|| ApiError::malformed("from is required"))?,
    )?;
    let to = parse_time(
        "to",
        q.get("to")
            .ok_or_else(|| ApiError::malformed("to is required"))?,
    )?;
    let log = &state.ready()?.log;
    let (a, b) = (
        log.items_at(&user, UpTo::Time(from)).await?,
        log.items_at(&user, UpTo::Time(to)).await?,
    );
    let (a, b) = (live_items(&a, &None), live_items(&b, &None));
    let answer = wire::Diff {
        user_id: user,
        added: b
            .iter()
            .filter(|(id, _)| !a.contains_key(id))
            .map(|(_, i)| ItemAt::of(i))
            .collect(),
        removed: a
            .iter()
            .filter(|(id, _)| !b.contains_key(id))
            .map(|(_, i)| ItemAt::of(i))
            .collect(),
        changed: b
            .iter()
            .filter_map(|(id, new)| {
                a.get(id)
                    .filter(|old| old.version != new.version)
                    .map(|old| wire::ItemChange {
                        before: ItemAt::of(old),
                        after: ItemAt::of(new),
                    })
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &answer))
}
