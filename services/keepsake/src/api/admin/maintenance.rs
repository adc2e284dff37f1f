//! Whole-log maintenance an operator runs: verify the store, rebuild the views, compact now.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::api::wire;
use crate::api::{ApiError, OperatorAuth, Shared, json};

pub(in crate::api) async fn verify(
    State(state): State<Shared>,
    _op: OperatorAuth,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let (report, _) =
        keepsake_log::verify::verify_store(log.store(), log.descriptor().shard_count).await?;
    if !report.ok {
        tracing::warn!(problems = report.problems.len(), "verify found problems");
    }
    Ok(json(StatusCode::OK, &report))
}

pub(in crate::api) async fn rebuild(
    State(state): State<Shared>,
    _op: OperatorAuth,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let (before, after, report) = log.rebuild().await?;
    Ok(json(
        StatusCode::OK,
        &wire::Rebuilt {
            equal: before == after,
            state_hash_before: before,
            state_hash_after: after,
            users: report.users,
            events: report.events,
            problems: report.problems,
        },
    ))
}

pub(in crate::api) async fn compact(
    State(state): State<Shared>,
    _op: OperatorAuth,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let started = std::time::Instant::now();
    let r = log.compact_now().await?;
    tracing::info!(
        history_objects = r.written,
        segments = r.segments,
        deleted = r.deleted,
        ms = started.elapsed().as_millis() as u64,
        "compaction run by an operator"
    );
    Ok(json(
        StatusCode::OK,
        &wire::Compacted {
            history_objects_written: r.written,
            segments_compacted: r.segments,
            events_compacted: r.events,
            bytes_written: r.bytes_written,
            objects_deleted: r.deleted,
            bytes_deleted: r.bytes_deleted,
        },
    ))
}
