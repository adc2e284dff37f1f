//! Whole-log maintenance an operator runs: verify the store, rebuild the views, compact now.

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use sha2::Digest as _;

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

/// In a cluster each server rebuilds the views of the shards it serves; the one asked adds the
/// others' answers: `equal` when every server's is, counts summed, problems together, and each
/// hash the SHA-256 of the servers' hashes (`node=hash` lines, sorted by node).
pub(in crate::api) async fn rebuild(
    State(state): State<Shared>,
    _op: OperatorAuth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let others =
        crate::api::forward::fan_out(&state, Method::POST, "/admin/v1/rebuild", &headers).await?;
    let (before, after, report) = log.rebuild().await?;
    let problems = report
        .problems
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal("rebuild problems", e))?;
    let mut out = wire::Rebuilt {
        equal: before == after,
        state_hash_before: before,
        state_hash_after: after,
        users: report.users,
        events: report.events,
        problems,
    };
    if let Some(cluster) = state.cluster.as_ref().filter(|_| !others.is_empty()) {
        let mut hashes = vec![(
            cluster.node.clone(),
            out.state_hash_before.clone(),
            out.state_hash_after.clone(),
        )];
        for (node, other) in others {
            let r: wire::Rebuilt = serde_json::from_value(other)
                .map_err(|e| ApiError::internal("another server's rebuild answer", e))?;
            out.equal &= r.equal;
            out.users += r.users;
            out.events += r.events;
            out.problems.extend(r.problems);
            hashes.push((node, r.state_hash_before, r.state_hash_after));
        }
        hashes.sort();
        let combine = |pick: fn(&(String, String, String)) -> &String| {
            let lines: String = hashes
                .iter()
                .map(|h| format!("{}={}\n", h.0, pick(h)))
                .collect();
            sha2::Sha256::digest(lines.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        out.state_hash_before = combine(|h| &h.1);
        out.state_hash_after = combine(|h| &h.2);
    }
    Ok(json(StatusCode::OK, &out))
}

/// In a cluster each server compacts the shards it serves; the one asked adds the others'
/// counts to its own.
pub(in crate::api) async fn compact(
    State(state): State<Shared>,
    _op: OperatorAuth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let log = &state.ready()?.log;
    let started = std::time::Instant::now();
    let others =
        crate::api::forward::fan_out(&state, Method::POST, "/admin/v1/compact", &headers).await?;
    let mut r = log.compact_now().await?;
    for (_, other) in others {
        let o: wire::Compacted = serde_json::from_value(other)
            .map_err(|e| ApiError::internal("another server's compaction answer", e))?;
        r.written += o.history_objects_written;
        r.segments += o.segments_compacted;
        r.events += o.events_compacted;
        r.bytes_written += o.bytes_written;
        r.deleted += o.objects_deleted;
        r.bytes_deleted += o.bytes_deleted;
    }
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
