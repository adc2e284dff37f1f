//! Fleet restore: every user (or a list), as of one moment, as a background job.
//!
//! The job's objects are create-only (`keepsake_store::keys::fleet`): the spec, the plan (the user
//! list, fixed when the job starts, so a resumed job restores the same users), one marker per
//! finished user, and `done.json` or `failed.json`. A user's restore id is UUIDv5(job, user), so
//! after a crash a user whose events landed but whose marker did not is answered from its restore
//! record: nobody is restored twice and no event is written twice. Jobs without an end marker are
//! resumed when the server starts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use keepsake_log::{Log, UpTo};
use keepsake_model::{Clock, Kind, RestoreId, UserId};
use keepsake_store::keys::{self, FleetPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::restore::{Spec, restore_user};

/// What an operator asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job.
    pub restore_id: RestoreId,
    /// `fleet`.
    pub scope: String,
    /// The moment.
    pub as_of: DateTime<Utc>,
    /// `None`: every user.
    pub users: Option<Vec<UserId>>,
    /// Only these kinds, if given.
    pub kinds: Option<Vec<Kind>>,
    /// Why.
    pub reason: String,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
}

/// Progress of a job, as `GET /admin/v1/restores/{id}` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Users in the plan (0 while planning).
    pub users_total: u64,
    /// Users finished.
    pub users_done: u64,
    /// Changes written (restored + reverted + removed) over finished users.
    pub changes_written: u64,
    /// When the job was created.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs fleet jobs and remembers their progress in this process.
#[derive(Debug)]
pub struct Fleet {
    log: Arc<Log>,
    clock: Arc<dyn Clock>,
    /// Users restored at once.
    pub concurrency: usize,
    /// Users started per second at most (0: no limit).
    pub users_per_second: u32,
    progress: Mutex<HashMap<RestoreId, Progress>>,
}

#[derive(Serialize, Deserialize)]
struct Plan {
    users: Vec<UserId>,
}

async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
) -> Result<Option<T>, String> {
    match store.get(path).await {
        Ok(g) => {
            let bytes = g.bytes().await.map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{path}: {e}"))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn put_once(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    value: &impl Serialize,
) -> Result<(), String> {
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    match store
        .put_opts(path, PutPayload::from(body), keepsake_store::create_only())
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

impl Fleet {
    /// A runner over a log.
    pub fn new(
        log: Arc<Log>,
        clock: Arc<dyn Clock>,
        concurrency: usize,
        users_per_second: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            log,
            clock,
            concurrency: concurrency.max(1),
            users_per_second,
            progress: Mutex::default(),
        })
    }

    fn set(&self, job: RestoreId, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(p.entry(job).or_default());
        }
    }

    /// Records a new job and starts it.
    pub async fn start(self: &Arc<Self>, spec: JobSpec) -> Result<(), String> {
        put_once(
            self.log.store().as_ref(),
            &keys::fleet(spec.restore_id, FleetPart::Spec),
            &spec,
        )
        .await?;
        let me = self.clone();
        tokio::spawn(async move { me.run(spec).await });
        Ok(())
    }

    /// Resumes every job that has no end marker.
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, String> {
        let store = self.log.store();
        let listed = store
            .list_with_delimiter(Some(&keys::restores_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        let mut resumed = 0;
        for dir in listed.common_prefixes {
            let Some(job) = dir.filename().and_then(|j| j.parse::<RestoreId>().ok()) else {
                continue;
            };
            let ended =
                get_json::<serde_json::Value>(store.as_ref(), &keys::fleet(job, FleetPart::Done))
                    .await?
                    .is_some()
                    || get_json::<serde_json::Value>(
                        store.as_ref(),
                        &keys::fleet(job, FleetPart::Failed),
                    )
                    .await?
                    .is_some();
            if ended {
                continue;
            }
            if let Some(spec) =
                get_json::<JobSpec>(store.as_ref(), &keys::fleet(job, FleetPart::Spec)).await?
            {
                info!(restore_id = %job, "resuming a fleet restore");
                let me = self.clone();
                tokio::spawn(async move { me.run(spec).await });
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    async fn run(self: Arc<Self>, spec: JobSpec) {
        let job = spec.restore_id;
        self.set(job, |p| {
            p.state = "running".into();
            p.started_at = Some(spec.created_at);
        });
        if let Err(e) = self.run_inner(&spec).await {
            error!(restore_id = %job, error = %e, "fleet restore failed");
            let now = self.clock.now();
            let _ = put_once(
                self.log.store().as_ref(),
                &keys::fleet(job, FleetPart::Failed),
                &serde_json::json!({"error": e, "finished_at": now}),
            )
            .await;
            self.set(job, |p| {
                p.state = "failed".into();
                p.error = Some(e);
                p.finished_at = Some(now);
            });
        }
    }

    async fn run_inner(&self, spec: &JobSpec) -> Result<(), String> {
        let job = spec.restore_id;
        let store = self.log.store().clone();
        let plan_path = keys::fleet(job, FleetPart::Plan);
        let plan = match get_json::<Plan>(store.as_ref(), &plan_path).await? {
            Some(p) => p,
            None => {
                let users = match &spec.users {
                    Some(u) => u.clone(),
                    None => self.log.all_users().await.map_err(|e| e.to_string())?,
                };
                put_once(store.as_ref(), &plan_path, &Plan { users }).await?;
                get_json::<Plan>(store.as_ref(), &plan_path)
                    .await?
                    .ok_or("the plan vanished")?
            }
        };
        let done: HashSet<UserId> = store
            .list(Some(&keys::fleet_users_prefix(job)))
            .try_filter_map(|m| async move {
                Ok(match keys::parse(&m.location) {
                    Some(keys::Key::Fleet {
                        part: FleetPart::UserDone(u),
                        ..
                    }) => Some(u),
                    _ => None,
                })
            })
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut written = 0;
        for u in &done {
            if let Some(d) = get_json::<crate::restore::Done>(
                store.as_ref(),
                &keys::fleet(job, FleetPart::UserDone(*u)),
            )
            .await?
            {
                written += d.restored + d.reverted + d.removed;
            }
        }
        let total = plan.users.len() as u64;
        self.set(job, |p| {
            p.users_total = total;
            p.users_done = done.len() as u64;
            p.changes_written = written;
        });
        info!(restore_id = %job, users = total, already_done = done.len(), "fleet restore running");
        let restore_spec = Spec {
            at: UpTo::Time(spec.as_of),
            as_of: Some(spec.as_of.to_rfc3339()),
            as_of_seq: None,
            kinds: spec.kinds.clone(),
            reason: spec.reason.clone(),
        };
        let pause = (self.users_per_second > 0)
            .then(|| Duration::from_secs_f64(1.0 / f64::from(self.users_per_second)));
        let todo: Vec<UserId> = plan
            .users
            .iter()
            .copied()
            .filter(|u| !done.contains(u))
            .collect();
        // One shard at a time: fold the shard once up to the moment for all of its users in
        // the plan (not once per user), then restore those users concurrently. Memory holds
        // one shard's wanted users' target states.
        let mut by_shard: std::collections::BTreeMap<u32, Vec<UserId>> = Default::default();
        for u in todo {
            by_shard.entry(self.log.shard_of(&u)).or_default().push(u);
        }
        for (shard, users) in by_shard {
            let wanted: HashSet<UserId> = users.iter().copied().collect();
            let mut targets = self
                .log
                .users_at(shard, &wanted, spec.as_of)
                .await
                .map_err(|e| format!("shard {shard} as of {}: {e}", spec.as_of))?;
            info!(restore_id = %job, shard, users = users.len(), "fleet restore: shard folded to the moment");
            // A user with no event by the moment had nothing: the empty state.
            let work: Vec<_> = users
                .into_iter()
                .map(|u| {
                    let target = targets.remove(&u).unwrap_or_default();
                    (u, target)
                })
                .collect();
            let results = futures::stream::iter(work)
                .then(|w| async move {
                    if let Some(p) = pause {
                        tokio::time::sleep(p).await;
                    }
                    w
                })
                .map(|(u, target)| {
                    let spec = &restore_spec;
                    let store = store.clone();
                    async move {
                        let id = RestoreId(uuid::Uuid::new_v5(&job.0, u.as_bytes()));
                        let mut last = String::new();
                        for attempt in 1..=5u32 {
                            match restore_user(&self.log, self.clock.as_ref(), u, spec, Some(id), false, None, Some(target.clone())).await {
                                Ok(d) => {
                                    put_once(store.as_ref(), &keys::fleet(job, FleetPart::UserDone(u)), &d).await?;
                                    self.set(job, |p| {
                                        p.users_done += 1;
                                        p.changes_written += d.restored + d.reverted + d.removed;
                                    });
                                    return Ok(());
                                }
                                Err(e) => {
                                    last = e.to_string();
                                    warn!(restore_id = %job, user_id = %u, attempt, error = %e, "restoring a user failed; retrying");
                                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                                }
                            }
                        }
                        Err(format!("user {u}: {last}"))
                    }
                })
                .buffer_unordered(self.concurrency)
                .collect::<Vec<Result<(), String>>>()
                .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(e);
            }
        }
        let now = self.clock.now();
        let (users_done, changes_written) = self
            .progress
            .lock()
            .ok()
            .and_then(|p| p.get(&job).map(|p| (p.users_done, p.changes_written)))
            .unwrap_or((total, 0));
        put_once(store.as_ref(), &keys::fleet(job, FleetPart::Done), &serde_json::json!({"finished_at": now, "users_total": total, "users_done": users_done, "changes_written": changes_written})).await?;
        self.set(job, |p| {
            p.state = "done".into();
            p.finished_at = Some(now);
        });
        info!(restore_id = %job, users = total, changes_written, "fleet restore done");
        Ok(())
    }

    /// Progress of a job: from memory while this process runs it, else from the store.
    pub async fn progress(&self, job: RestoreId) -> Result<Option<Progress>, String> {
        let store = self.log.store();
        let Some(spec) =
            get_json::<JobSpec>(store.as_ref(), &keys::fleet(job, FleetPart::Spec)).await?
        else {
            return Ok(None);
        };
        if let Some(p) = self.progress.lock().ok().and_then(|p| p.get(&job).cloned()) {
            return Ok(Some(p));
        }
        let mut p = Progress {
            state: "running".into(),
            started_at: Some(spec.created_at),
            ..Progress::default()
        };
        if let Some(done) =
            get_json::<serde_json::Value>(store.as_ref(), &keys::fleet(job, FleetPart::Done))
                .await?
        {
            p.state = "done".into();
            p.users_total = done["users_total"].as_u64().unwrap_or(0);
            p.users_done = done["users_done"].as_u64().unwrap_or(0);
            p.changes_written = done["changes_written"].as_u64().unwrap_or(0);
            p.finished_at = serde_json::from_value(done["finished_at"].clone()).ok();
        } else if let Some(failed) =
            get_json::<serde_json::Value>(store.as_ref(), &keys::fleet(job, FleetPart::Failed))
                .await?
        {
            p.state = "failed".into();
            p.error = failed["error"].as_str().map(String::from);
        }
        Ok(Some(p))
    }
}
