//! A fleet restore in a cluster: the users of a shard another server serves are restored by
//! that server, one `POST /admin/v1/users/{user}/restore` each, with the job's per-user restore
//! id as the idempotency key (a resend answers the first result and writes nothing; a user the
//! job restored before a crash is counted from its events there, never computed again).

use std::sync::Arc;
use std::time::Duration;

use keepsake_model::{RestoreId, UserId};
use serde::Serialize;

use crate::cluster::{Cluster, FORWARDED_BY, Route};
use crate::restore::Done;

/// How long a user's restore waits for its shard to be served again (a hand-over).
const MOVING_WAIT: Duration = Duration::from_secs(30);

/// Sends restores to the servers of other shards.
#[derive(Debug)]
pub struct Remote {
    cluster: Arc<Cluster>,
    operator_token: String,
    client: reqwest::Client,
}

#[derive(Serialize)]
struct Body<'a> {
    as_of: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kinds: Option<&'a [keepsake_model::Kind]>,
    restore_id: RestoreId,
}

/// What one user's restore is.
#[derive(Debug)]
pub struct Job<'a> {
    /// RFC 3339.
    pub as_of: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Which kinds (`None`: all).
    pub kinds: Option<&'a [keepsake_model::Kind]>,
}

impl Remote {
    /// A sender through `cluster`'s routes, as the operator.
    pub fn new(cluster: Arc<Cluster>, operator_token: String) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            cluster,
            operator_token,
            client,
        })
    }

    /// True when `shard` is served elsewhere (or moving) rather than here.
    pub fn elsewhere(&self, shard: u32) -> bool {
        !matches!(self.cluster.route(shard), Route::Local(_))
    }

    /// Restores `user` (of `shard`) on the server that serves it. `Ok(None)`: the shard is
    /// served here now; the caller restores the user itself.
    pub async fn restore(
        &self,
        shard: u32,
        user: UserId,
        job: &Job<'_>,
        id: RestoreId,
    ) -> Result<Option<Done>, String> {
        let body = serde_json::to_vec(&Body {
            as_of: job.as_of,
            reason: job.reason,
            kinds: job.kinds,
            restore_id: id,
        })
        .map_err(|e| e.to_string())?;
        let started = tokio::time::Instant::now();
        let mut last = String::from("its shard is moving between servers");
        while started.elapsed() < MOVING_WAIT {
            let url = match self.cluster.route(shard) {
                Route::Local(_) => return Ok(None),
                Route::Remote { url, .. } => url,
                Route::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            let sent = self
                .client
                .post(format!(
                    "{}/admin/v1/users/{user}/restore",
                    url.trim_end_matches('/')
                ))
                .bearer_auth(&self.operator_token)
                .header(FORWARDED_BY, self.cluster.node.as_str())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .json::<Done>()
                        .await
                        .map(Some)
                        .map_err(|e| e.to_string());
                }
                Ok(resp) if matches!(resp.status().as_u16(), 429 | 503) => {
                    last = format!("its server answered {}", resp.status());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    return Err(format!("its server answered {status}: {text}"));
                }
                Err(e) => last = format!("its server did not answer: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("user {user} of shard {shard}: {last}"))
    }
}
