//! Fleet restore: every user (or a list), as of one moment, as a background job.
//!
//! The job's objects are create-only (`keepsake_store::keys::fleet`): the spec, the plan (the user
//! list, fixed when the job starts, so a resumed job restores the same users), batches of
//! finished users with their results (one object per [`BATCH_USERS`] users or per second, not
//! one per user: on a file store per-user files cost more than the restore itself), and
//! `done.json` or `failed.json`. A user's restore id is UUIDv5(job, user) and each change id
//! UUIDv5(restore id, item), so after a crash a user whose events landed but whose batch did not
//! writes nothing again (the changes answer `duplicate`), and its result is counted from the
//! restore's events in the log (never computed again): nobody is restored twice, no event is
//! written twice, and the job reports what was written once. A job stopped by a fault resumes in
//! the same process ([`JOB_ATTEMPTS`] times); `failed.json` records that the faults outlasted
//! that, but only `done.json` ends a job: every job without it resumes when a server starts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use keepsake_log::{Log, UpTo};
use keepsake_model::{Clock, RestoreId, UserId};
use keepsake_store::keys::{self, FleetPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

pub use crate::fleet_record::JobSpec;
use crate::fleet_record::{
    Batch, FLEET_RECORD_VERSION, Failed, Finished, Plan, Record, UserResult, decode, encode,
};
use crate::restore::{Done, Spec, restore_fleet_user};

/// Finished users recorded per batch object, at most.
pub const BATCH_USERS: usize = 256;
/// A batch is recorded at least this often while users finish.
const BATCH_EVERY: Duration = Duration::from_secs(1);
/// Times a job stopped by a fault is resumed in the same process (waits of 0.2 s doubling to
/// 51 s, about 100 s in all) before it is reported failed; a failed job resumes when a server
/// starts.
const JOB_ATTEMPTS: u32 = 9;

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
    /// In a cluster: restores users of shards other servers serve there.
    remote: std::sync::OnceLock<crate::fleet_remote::Remote>,
}

/// Writes the finished users not yet recorded as batch `next` (the next free number, if another
/// run took it), and empties `pending`.
async fn record_batch(
    store: &dyn ObjectStore,
    job: RestoreId,
    next: &mut u64,
    pending: &mut Vec<UserResult>,
) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    let batch = Batch {
        format_version: FLEET_RECORD_VERSION,
        users: std::mem::take(pending),
    };
    let body = encode(&batch)?;
    loop {
        let path = keys::fleet(job, FleetPart::Batch(*next));
        *next += 1;
        match store
            .put_opts(
                &path,
                PutPayload::from(body.clone()),
                keepsake_store::create_only(),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => continue,
            Err(e) => return Err(format!("{path}: {e}")),
        }
    }
}

/// A job record, `None` if it is not there ([`decode`]: typed and version-checked).
async fn get_record<T: Record>(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
) -> Result<Option<T>, String> {
    match store.get(path).await {
        Ok(g) => {
            let bytes = g.bytes().await.map_err(|e| e.to_string())?;
            decode(&bytes).map(Some).map_err(|e| format!("{path}: {e}"))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn put_once(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    value: &impl Record,
) -> Result<(), String> {
    let body = encode(value)?;
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
            remote: std::sync::OnceLock::new(),
        })
    }

    /// In a cluster: users of shards other servers serve are restored there.
    pub fn restore_elsewhere(&self, remote: crate::fleet_remote::Remote) {
        let _ = self.remote.set(remote);
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
        tokio::spawn(keepsake_store::with_cause(
            keepsake_store::Cause::Restore,
            async move { me.run(spec).await },
        ));
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
            // Only `done.json` ends a job. One that failed (its faults outlasted the retries) is
            // resumed too: it is idempotent, and a fleet left half-restored is what to avoid.
            let ended = get_record::<Finished>(store.as_ref(), &keys::fleet(job, FleetPart::Done))
                .await?
                .is_some();
            if ended {
                continue;
            }
            if let Some(spec) =
                get_record::<JobSpec>(store.as_ref(), &keys::fleet(job, FleetPart::Spec)).await?
            {
                info!(restore_id = %job, "resuming a fleet restore");
                let me = self.clone();
                tokio::spawn(keepsake_store::with_cause(
                    keepsake_store::Cause::Restore,
                    async move { me.run(spec).await },
                ));
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
        // A job stopped by a fault (a batch record or a user's restore that failed) resumes:
        // it is idempotent by construction, so running it again finishes each user once.
        let mut result = self.run_inner(&spec).await;
        for attempt in 1..=JOB_ATTEMPTS {
            let Err(e) = &result else {
                break;
            };
            let wait = Duration::from_millis(100u64 << attempt.min(9));
            warn!(restore_id = %job, attempt, error = %e, ?wait, "fleet restore stopped; resuming it");
            self.set(job, |p| p.error = Some(format!("resuming after: {e}")));
            tokio::time::sleep(wait).await;
            result = self.run_inner(&spec).await;
        }
        if let Err(e) = result {
            error!(restore_id = %job, error = %e, "fleet restore failed; it resumes when a server starts");
            let now = self.clock.now();
            let _ = put_once(
                self.log.store().as_ref(),
                &keys::fleet(job, FleetPart::Failed),
                &Failed {
                    format_version: FLEET_RECORD_VERSION,
                    error: e.clone(),
                    finished_at: now,
                },
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
        self.set(spec.restore_id, |p| p.state = "running".into());
        let job = spec.restore_id;
        let store = self.log.store().clone();
        let plan_path = keys::fleet(job, FleetPart::Plan);
        // A job whose plan exists ran before, and may have committed users it did not record.
        let mut again = true;
        let plan = match get_record::<Plan>(store.as_ref(), &plan_path).await? {
            Some(p) => p,
            None => {
                again = false;
                let users = match &spec.users {
                    Some(u) => u.clone(),
                    None => self.log.all_users().await.map_err(|e| e.to_string())?,
                };
                put_once(
                    store.as_ref(),
                    &plan_path,
                    &Plan {
                        format_version: FLEET_RECORD_VERSION,
                        users,
                    },
                )
                .await?;
                get_record::<Plan>(store.as_ref(), &plan_path)
                    .await?
                    .ok_or("the plan vanished")?
            }
        };
        let parts: Vec<FleetPart> = store
            .list(Some(&keys::fleet_prefix(job)))
            .try_filter_map(|m| async move {
                Ok(match keys::parse(&m.location) {
                    Some(keys::Key::Fleet { part, .. }) => Some(part),
                    _ => None,
                })
            })
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut done: HashSet<UserId> = HashSet::new();
        let mut written = 0;
        let mut next_batch = 1;
        for part in parts {
            let results = match part {
                FleetPart::Batch(n) => {
                    next_batch = next_batch.max(n + 1);
                    get_record::<Batch>(store.as_ref(), &keys::fleet(job, part))
                        .await?
                        .map(|b| b.users)
                        .unwrap_or_default()
                }
                FleetPart::UserDone(u) => {
                    get_record::<Done>(store.as_ref(), &keys::fleet(job, part))
                        .await?
                        .map(|result| UserResult { user_id: u, result })
                        .into_iter()
                        .collect()
                }
                _ => continue,
            };
            for r in results {
                if done.insert(r.user_id) {
                    written += r.result.restored + r.result.reverted + r.result.removed;
                }
            }
        }
        let total = plan.users.len() as u64;
        self.set(job, |p| {
            p.users_total = total;
            p.users_done = done.len() as u64;
            p.changes_written = written;
        });
        info!(restore_id = %job, users = total, already_done = done.len(), resumed = again, "fleet restore running");
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
        let mut pending: Vec<UserResult> = Vec::new();
        let mut last_batch = tokio::time::Instant::now();
        let remote_job = crate::fleet_remote::Job {
            as_of: restore_spec.as_of.as_deref().unwrap_or_default(),
            reason: &restore_spec.reason,
            kinds: restore_spec.kinds.as_deref(),
        };
        for (shard, users) in by_shard {
            // In a cluster, a shard another server serves: its users are restored there, each
            // folded by that server (`fleet_remote`).
            let remote = self.remote.get().filter(|r| r.elsewhere(shard));
            let wanted: HashSet<UserId> = users.iter().copied().collect();
            // Another process may have committed to this shard what this one has not read:
            // the targets are folded from the current log, not from this process's head.
            if remote.is_none()
                && let Some(u) = users.first()
                && let Err(e) = self.log.sync(u).await
            {
                record_batch(store.as_ref(), job, &mut next_batch, &mut pending).await?;
                return Err(format!("shard {shard}: {e}"));
            }
            let targets = match remote {
                Some(_) => Ok(Default::default()),
                None => self.log.users_at(shard, &wanted, spec.as_of).await,
            };
            let mut targets = match targets {
                Ok(t) => t,
                Err(e) => {
                    record_batch(store.as_ref(), job, &mut next_batch, &mut pending).await?;
                    return Err(format!("shard {shard} as of {}: {e}", spec.as_of));
                }
            };
            info!(restore_id = %job, shard, users = users.len(), "fleet restore: shard folded to the moment");
            // A user with no event by the moment had nothing: the empty state.
            let work: Vec<_> = users
                .into_iter()
                .map(|u| {
                    let target = targets.remove(&u).unwrap_or_default();
                    (u, remote.is_none().then_some(target))
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
                    let (spec, remote_job) = (&restore_spec, &remote_job);
                    async move {
                        let id = RestoreId(uuid::Uuid::new_v5(&job.0, u.as_bytes()));
                        let mut last = String::new();
                        for attempt in 1..=5u32 {
                            let attempted = match (remote, &target) {
                                (Some(r), _) => match r.restore(shard, u, remote_job, id).await {
                                    Ok(Some(done)) => Ok(done),
                                    // Served here now (a hand-over during the job): folded here.
                                    Ok(None) => crate::restore::restore_user(
                                        &self.log, self.clock.as_ref(), u, spec, Some(id), false, None, None,
                                    )
                                    .await
                                    .map_err(|e| e.to_string()),
                                    Err(e) => Err(e),
                                },
                                (None, Some(t)) => restore_fleet_user(&self.log, u, spec, id, t.clone(), again)
                                    .await
                                    .map_err(|e| e.to_string()),
                                (None, None) => Err("no target state".to_string()),
                            };
                            match attempted {
                                Ok(result) => return Ok(UserResult { user_id: u, result }),
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
                .buffer_unordered(self.concurrency);
            futures::pin_mut!(results);
            while let Some(r) = results.next().await {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        // Record who finished, so that a rerun starts after them.
                        record_batch(store.as_ref(), job, &mut next_batch, &mut pending).await?;
                        return Err(e);
                    }
                };
                let d = &r.result;
                let changes = d.restored + d.reverted + d.removed;
                self.set(job, |p| {
                    p.users_done += 1;
                    p.changes_written += changes;
                });
                pending.push(r);
                if pending.len() >= BATCH_USERS || last_batch.elapsed() >= BATCH_EVERY {
                    record_batch(store.as_ref(), job, &mut next_batch, &mut pending).await?;
                    last_batch = tokio::time::Instant::now();
                }
            }
        }
        record_batch(store.as_ref(), job, &mut next_batch, &mut pending).await?;
        let now = self.clock.now();
        let (users_done, changes_written) = self
            .progress
            .lock()
            .ok()
            .and_then(|p| p.get(&job).map(|p| (p.users_done, p.changes_written)))
            .unwrap_or((total, 0));
        let finished = Finished {
            format_version: FLEET_RECORD_VERSION,
            finished_at: now,
            users_total: total,
            users_done,
            changes_written,
        };
        put_once(
            store.as_ref(),
            &keys::fleet(job, FleetPart::Done),
            &finished,
        )
        .await?;
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
            get_record::<JobSpec>(store.as_ref(), &keys::fleet(job, FleetPart::Spec)).await?
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
            get_record::<Finished>(store.as_ref(), &keys::fleet(job, FleetPart::Done)).await?
        {
            p.state = "done".into();
            p.users_total = done.users_total;
            p.users_done = done.users_done;
            p.changes_written = done.changes_written;
            p.finished_at = Some(done.finished_at);
        } else if let Some(failed) =
            get_record::<Failed>(store.as_ref(), &keys::fleet(job, FleetPart::Failed)).await?
        {
            p.state = "failed".into();
            p.error = Some(failed.error);
            p.finished_at = Some(failed.finished_at);
        }
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use keepsake_log::{LogConfig, PushRequest};
    use keepsake_model::{
        Change, ChangeBody, ChangeId, Document, EventMeta, ItemId, Kind, Origin, RandomIds,
        SystemClock, UserState,
    };

    fn id() -> uuid::Uuid {
        keepsake_model::IdGenerator::random(&RandomIds)
    }

    async fn open_log(store: Arc<dyn object_store::ObjectStore>) -> Arc<Log> {
        Arc::new(
            Log::open(
                store,
                Some(1),
                LogConfig::default(),
                Arc::new(SystemClock),
                Arc::new(RandomIds),
            )
            .await
            .expect("log"),
        )
    }

    async fn push(log: &Log, user: UserId, changes: Vec<Change>) {
        log.push(PushRequest {
            user_id: user,
            meta: EventMeta {
                device_id: None,
                origin: Origin::Device,
                request_id: None,
                restore_id: None,
            },
            changes,
            confirm_mass_delete: true,
        })
        .await
        .expect("push");
    }

    /// A job that ran before: some users recorded in a batch, some restored but not recorded
    /// (the crash came between their push and their batch), the rest not started. Resumed, it
    /// restores each user once, writes nothing twice, counts every change once, and numbers its
    /// batches after the old one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resumed_job_counts_unrecorded_users_from_the_log_and_writes_nothing_twice() {
        let store = keepsake_store::open_store("memory://")
            .expect("store")
            .inner;
        let log = open_log(store.clone()).await;
        let users: Vec<UserId> = (0..10).map(|_| UserId(id())).collect();
        let items: Vec<Vec<ItemId>> = users
            .iter()
            .map(|_| (0..3).map(|_| ItemId(id())).collect())
            .collect();
        let change = |item: ItemId, body: ChangeBody| Change {
            change_id: ChangeId(id()),
            kind: Kind::Note,
            item_id: item,
            base_version: None,
            body,
        };
        for (u, its) in users.iter().zip(&items) {
            let doc = || ChangeBody::Put {
                document: Document::from_object(&serde_json::Map::new()),
            };
            push(&log, *u, its.iter().map(|i| change(*i, doc())).collect()).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = SystemClock.now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        for (u, its) in users.iter().zip(&items) {
            // Two items deleted, one edited: 2 restored + 1 reverted per user.
            let mut wipe: Vec<Change> = its[..2]
                .iter()
                .map(|i| change(*i, ChangeBody::Delete))
                .collect();
            let mut edited = serde_json::Map::new();
            edited.insert("broken".into(), true.into());
            wipe.push(change(
                its[2],
                ChangeBody::Put {
                    document: Document::from_object(&edited),
                },
            ));
            push(&log, *u, wipe).await;
        }
        let job = RestoreId(id());
        let spec = JobSpec {
            format_version: FLEET_RECORD_VERSION,
            restore_id: job,
            scope: "fleet".into(),
            as_of: t,
            users: Some(users.clone()),
            kinds: None,
            reason: "test".into(),
            created_at: t,
        };
        // The earlier run: its plan, users 0-2 restored and recorded in batch 1, users 3-4
        // restored without a record.
        put_once(
            store.as_ref(),
            &keys::fleet(job, FleetPart::Plan),
            &Plan {
                format_version: FLEET_RECORD_VERSION,
                users: users.clone(),
            },
        )
        .await
        .expect("plan");
        let restore_spec = Spec {
            at: UpTo::Time(t),
            as_of: None,
            as_of_seq: None,
            kinds: None,
            reason: "test".into(),
        };
        let mut earlier = Vec::new();
        for u in &users[..5] {
            let target = log.items_at(u, UpTo::Time(t)).await.expect("target");
            let uid = RestoreId(uuid::Uuid::new_v5(&job.0, u.as_bytes()));
            let result = restore_fleet_user(&log, *u, &restore_spec, uid, target, false)
                .await
                .expect("restore");
            assert_eq!((result.restored, result.reverted), (2, 1));
            earlier.push(UserResult {
                user_id: *u,
                result,
            });
        }
        earlier.truncate(3);
        let mut next = 1;
        record_batch(store.as_ref(), job, &mut next, &mut earlier)
            .await
            .expect("batch");

        let fleet = Fleet::new(log.clone(), Arc::new(SystemClock), 4, 0);
        fleet.start(spec).await.expect("start");
        let mut p = Progress::default();
        for _ in 0..500 {
            p = fleet.progress(job).await.expect("progress").expect("job");
            if p.state != "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            (p.state.as_str(), p.users_done, p.changes_written),
            ("done", 10, 30),
            "{p:?}"
        );
        for u in &users {
            let events = log.user_events(u, UpTo::End).await.expect("events");
            let restores = events
                .iter()
                .filter(|e| e.origin == Origin::Restore)
                .count();
            assert_eq!(restores, 3, "user {u} restored once");
            let now = log.user(u, UserState::clone).await.expect("user");
            let live = now.items().filter(|i| !i.deleted).count();
            assert_eq!(live, 3);
        }
        // The resumed run's batches come after the earlier run's, and hold the other 7 users.
        let batches: Vec<_> = store
            .list(Some(&keys::fleet_prefix(job)))
            .try_filter_map(|m| async move {
                Ok(match keys::parse(&m.location) {
                    Some(keys::Key::Fleet {
                        part: FleetPart::Batch(n),
                        ..
                    }) => Some(n),
                    _ => None,
                })
            })
            .try_collect()
            .await
            .expect("list");
        let mut recorded = 0;
        for n in &batches {
            let b: Batch = get_record(store.as_ref(), &keys::fleet(job, FleetPart::Batch(*n)))
                .await
                .expect("read")
                .expect("batch");
            if *n > 1 {
                recorded += b.users.len();
            }
        }
        assert!(batches.contains(&1) && batches.len() >= 2, "{batches:?}");
        assert_eq!(recorded, 7);
        log.shutdown().await;
    }

    /// A job whose batch record fails to write used to be marked failed for good (and resume
    /// skipped failed jobs), leaving the fleet half-restored. Now it resumes, and finishes with
    /// each user restored once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_stopped_by_a_store_fault_resumes_and_restores_each_user_once() {
        use keepsake_store::faults::{Fault, FaultOp, FaultyStore};
        let faulty = FaultyStore::new(
            keepsake_store::open_store("memory://")
                .expect("store")
                .inner,
        );
        let store: Arc<dyn object_store::ObjectStore> = faulty.clone();
        let log = open_log(store.clone()).await;
        let users: Vec<UserId> = (0..6).map(|_| UserId(id())).collect();
        let change = |item: ItemId, body: ChangeBody| Change {
            change_id: ChangeId(id()),
            kind: Kind::Note,
            item_id: item,
            base_version: None,
            body,
        };
        let items: Vec<ItemId> = users.iter().map(|_| ItemId(id())).collect();
        for (u, i) in users.iter().zip(&items) {
            let doc = ChangeBody::Put {
                document: Document::from_object(&serde_json::Map::new()),
            };
            push(&log, *u, vec![change(*i, doc)]).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = SystemClock.now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        for (u, i) in users.iter().zip(&items) {
            push(&log, *u, vec![change(*i, ChangeBody::Delete)]).await;
        }
        // The first three batch records fail to write.
        faulty.inject(FaultOp::Put, "/batches/", Fault::Fail, 3);
        let job = RestoreId(id());
        let spec = JobSpec {
            format_version: FLEET_RECORD_VERSION,
            restore_id: job,
            scope: "fleet".into(),
            as_of: t,
            users: Some(users.clone()),
            kinds: None,
            reason: "test".into(),
            created_at: t,
        };
        let fleet = Fleet::new(log.clone(), Arc::new(SystemClock), 2, 0);
        fleet.start(spec).await.expect("start");
        let mut p = Progress::default();
        for _ in 0..1500 {
            p = fleet.progress(job).await.expect("progress").expect("job");
            if p.state == "done" || p.state == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(faulty.injected(), 3, "the faults were met");
        assert_eq!(
            (p.state.as_str(), p.users_done, p.changes_written),
            ("done", 6, 6),
            "{p:?}"
        );
        for u in &users {
            let events = log.user_events(u, UpTo::End).await.expect("events");
            let restores = events
                .iter()
                .filter(|e| e.origin == Origin::Restore)
                .count();
            assert_eq!(restores, 1, "user {u} restored once");
        }
        log.shutdown().await;
    }
}
