//! Getting a request to the server that serves its user's shard: served here, forwarded once
//! to the owner, or answered 503 `unavailable` (with `Retry-After`) while the shard moves.
//!
//! The user comes from the path (`/admin/v1/users/{user}/...`, `/dav/users/{user}/...`) or
//! from the device token (Bearer, or the password of HTTP Basic); requests with neither (health,
//! metrics, store-wide operator calls) are served here. A token is verified before its user is
//! trusted for routing; the owner checks it again with revocations. A forwarded request carries
//! `x-keepsake-forwarded-by`, and is never forwarded again: two servers that disagree for a
//! moment about a shard answer 503, not a loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keepsake_model::UserId;
use tracing::warn;

use crate::api::{ApiError, Shared};
use crate::cluster::{Cluster, Route};

pub use crate::cluster::FORWARDED_BY;

/// What the routing layer works with.
#[derive(Clone, Debug)]
pub struct Forwarding {
    /// The server's state (the log, once ready; the token keys).
    pub state: Shared,
    /// The routes.
    cluster: Arc<Cluster>,
    /// Connections to the other servers (no overall timeout: long polls are forwarded too).
    pub client: reqwest::Client,
}

impl Forwarding {
    /// A routing layer for the state's cluster (a server alone gets one that routes nothing).
    pub fn new(state: Shared) -> Result<Self, reqwest::Error> {
        let cluster = state
            .cluster
            .clone()
            .unwrap_or_else(|| Cluster::new(String::new()));
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            // Longer than the longest long poll (60 s); a peer that goes silent is given up.
            .read_timeout(std::time::Duration::from_secs(90))
            .tcp_keepalive(std::time::Duration::from_secs(15))
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            // The owner's redirects (the DAV well-known ones) go back to the client as they are.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            state,
            cluster,
            client,
        })
    }
}

/// The user a request is for, if routing needs one.
fn user_of(state: &Shared, req: &Request) -> Option<UserId> {
    let mut parts = req.uri().path().split('/').skip(1);
    let by_path = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("admin"), Some("v1"), Some("users"), Some(u)) => Some(u),
        (Some("dav"), Some("users"), Some(u), _) => Some(u),
        _ => None,
    };
    if let Some(u) = by_path {
        // Decoded as the router decodes it: `%30...` names the same user as `0...`.
        return percent_encoding::percent_decode_str(u)
            .decode_utf8()
            .ok()?
            .parse()
            .ok();
    }
    token_user(state, req.headers())
}

fn token_user(state: &Shared, headers: &HeaderMap) -> Option<UserId> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let token = if let Some(t) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        t.trim().to_string()
    } else {
        let basic = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))?;
        let pair = String::from_utf8(B64.decode(basic.trim()).ok()?).ok()?;
        pair.split_once(':')?.1.to_string()
    };
    state.keys.verify(&token).ok().map(|(user, _)| user)
}

fn moving(f: &Forwarding, shard: u32) -> Response {
    f.cluster.stats.moving.fetch_add(1, Ordering::Relaxed);
    ApiError::unavailable(format!(
        "shard {shard} is moving between servers; nothing was done; retry"
    ))
    .into_response()
}

/// The routing middleware.
pub async fn route(State(f): State<Forwarding>, req: Request, next: Next) -> Response {
    let Ok(ready) = f.state.ready() else {
        return next.run(req).await;
    };
    let Some(user) = user_of(&f.state, &req) else {
        return next.run(req).await;
    };
    let shard = ready.log.shard_of(&user);
    match f.cluster.route(shard) {
        // Served here only while the log still holds the generation: a writer that found
        // itself deposed let it go before the coordinator noticed.
        Route::Local(g) if ready.log.owned(shard) == Some(g) => next.run(req).await,
        Route::Remote { node, url } if !req.headers().contains_key(FORWARDED_BY) => {
            forward(&f, shard, &node, &url, req).await
        }
        _ => moving(&f, shard),
    }
}

/// Sends an operator request that spans shards (`POST /admin/v1/compact`, `/rebuild`) to every
/// other server that serves shards now, and returns their JSON answers by node (empty: alone, or the
/// request was itself forwarded). While any shard is moving it answers 503: a sum over the
/// servers would leave that shard out.
pub async fn fan_out(
    state: &Shared,
    method: axum::http::Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Vec<(String, serde_json::Value)>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(Vec::new());
    };
    if headers.contains_key(FORWARDED_BY) {
        return Ok(Vec::new());
    }
    let routes = cluster.routes();
    if routes.contains(&Route::Unavailable) {
        return Err(ApiError::unavailable(
            "a shard is moving between servers; run it again in a moment",
        ));
    }
    let mut others: Vec<(String, String)> = routes
        .into_iter()
        .filter_map(|r| match r {
            Route::Remote { node, url } => Some((node, url)),
            _ => None,
        })
        .collect();
    others.sort();
    others.dedup();
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        // A compaction or rebuild of a server's shards can take minutes; a silent peer not for ever.
        .timeout(std::time::Duration::from_secs(30 * 60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ApiError::internal("the client for the other servers", e))?;
    let mut answers = Vec::new();
    for (node, url) in others {
        let mut req = client
            .request(
                method.clone(),
                format!("{}{path}", url.trim_end_matches('/')),
            )
            .header(FORWARDED_BY, cluster.node.as_str());
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let failed = |why: String| {
            ApiError::unavailable(format!(
                "server {node} did not complete {path}: {why}; run it again"
            ))
        };
        let resp = req.send().await.map_err(|e| failed(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(failed(format!("it answered {}", resp.status())));
        }
        let answer = resp.json().await.map_err(|e| failed(e.to_string()))?;
        answers.push((node, answer));
    }
    Ok(answers)
}

/// Hop-by-hop headers, which describe one connection and are not forwarded (a request's length
/// is the streamed body's; an answer's is kept, a HEAD's included).
fn hop_by_hop(name: &HeaderName) -> bool {
    hop(name) || name == header::CONTENT_LENGTH
}

fn hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

async fn forward(f: &Forwarding, shard: u32, node: &str, url: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let target = format!(
        "{}{}",
        url.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut out = f
        .client
        .request(parts.method.clone(), &target)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    out = out.header(FORWARDED_BY, f.cluster.node.as_str());
    f.cluster.stats.forwards.fetch_add(1, Ordering::Relaxed);
    match out.send().await {
        Ok(resp) => {
            let mut answer = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if !hop(name) {
                    answer = answer.header(name, value);
                }
            }
            answer
                .body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|_| moving(f, shard))
        }
        Err(e) => {
            f.cluster
                .stats
                .forward_errors
                .fetch_add(1, Ordering::Relaxed);
            warn!(shard, node, error = %e, "forwarding to the shard's server failed; answering unavailable");
            ApiError::unavailable(format!(
                "shard {shard}'s server did not answer; nothing was done here; retry"
            ))
            .into_response()
        }
    }
}
