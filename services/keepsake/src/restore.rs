//! Restores: make a user's current state equal their state at a moment, by appending ordinary
//! changes (origin `restore`) — never by rewriting history.
//!
//! - The changes are the diff of current and target live items: a put for each item brought back
//!   (restored) or changed back (reverted), a delete for each item created since (removed); all in
//!   one push, which the writer commits all or nothing. The mass-delete guard does not apply.
//! - The current state is read after the log has synced with the store (another process may have
//!   committed this user's changes), and every change names the version it was computed from: an
//!   edit that lands in between makes the push refuse whole, and the restore is computed again
//!   (a few times, then `restore_conflict`). A device's edit is never overwritten unseen.
//! - The answer counts what was written (changes answered `applied`), not what was planned.
//! - Every change of a restore carries its `restore_id`, and its change id is
//!   UUIDv5(restore_id, item_id): sending the same restore again is answered `duplicate`.
//! - After the events are committed, `restores/<restore_id>.json` records the request (with the
//!   operator's reason) and the result; a restore sent again under the same id answers from it,
//!   or, when the record is missing (its write failed), from the restore's events in the log.
//!   Either way it is not computed again: a second run would delete items created since.
//!   A fleet job's users are recorded by the job, in batches ([`crate::fleet`]), not one by one;
//!   a resumed job counts a user whose restore committed from the log in the same way.

use std::collections::BTreeMap;

use keepsake_log::{Log, LogError, PushRequest, UpTo};
use keepsake_model::{
    Change, ChangeBody, Clock, EventMeta, ItemId, ItemState, Kind, Origin, Outcome, RequestId,
    RestoreId, StateRead, UserId, UserState,
};
use object_store::ObjectStoreExt as _;
use serde::Serialize;

use crate::restore_record::{RECORD_VERSION, RestoreRecord};

/// What to restore to.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The moment.
    pub at: UpTo,
    /// The moment as the operator gave it (recorded).
    pub as_of: Option<String>,
    /// The seq as the operator gave it (recorded).
    pub as_of_seq: Option<u64>,
    /// Only these kinds, if given.
    pub kinds: Option<Vec<Kind>>,
    /// Why (recorded).
    pub reason: String,
}

/// What a restore did (or would do).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Done {
    /// The restore.
    pub restore_id: RestoreId,
    /// Nothing was written.
    pub dry_run: bool,
    /// Answered from the record of an earlier identical restore.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Items brought back from deletion.
    pub restored: u64,
    /// Items whose document changed back.
    pub reverted: u64,
    /// Items created after the moment, now deleted.
    pub removed: u64,
    /// The user's seq afterwards.
    pub seq: u64,
}

/// Why a restore could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The restore id is recorded for another user.
    #[error("this restore_id belongs to another user")]
    OtherUser,
    /// The restore record could not be read or written.
    #[error("{0}")]
    Record(String),
}

/// The user's live items of the chosen kinds, by id; without a choice, of every data kind
/// (devices, kind `device`, only when asked for by name: they are never restored).
pub(crate) fn live_items<'a>(
    s: &'a UserState,
    kinds: &Option<Vec<Kind>>,
) -> BTreeMap<ItemId, &'a ItemState> {
    s.items()
        .filter(|i| {
            !i.deleted
                && kinds
                    .as_ref()
                    .map_or(i.kind.is_data(), |k| k.contains(&i.kind))
        })
        .map(|i| (i.item_id, i))
        .collect()
}

/// What one change of a restore does to its item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Brought back from deletion (or from before it existed).
    Restored,
    /// Its document changed back.
    Reverted,
    /// Created after the moment: deleted.
    Removed,
}

/// The changes that make `current` equal `target`, each with what it does. Every change names
/// the version of its item in `current` (`base_version`), so that an edit that lands after
/// `current` was read makes the restore's push conflict instead of being overwritten unseen.
fn compensating(
    current: &UserState,
    target: &UserState,
    kinds: &Option<Vec<Kind>>,
    restore_id: RestoreId,
) -> Vec<(Change, Effect)> {
    let (mut cur, mut tgt) = (live_items(current, kinds), live_items(target, kinds));
    // Devices are registered and revoked, never restored (the handlers refuse kind `device`;
    // this keeps a job that names it from writing one).
    cur.retain(|_, i| i.kind.is_data());
    tgt.retain(|_, i| i.kind.is_data());
    let mut changes = Vec::new();
    for (id, t) in &tgt {
        let Some(document) = t.document.clone() else {
            continue;
        };
        let put = |document| Change {
            change_id: restore_id.change_id_for(*id),
            kind: t.kind,
            item_id: *id,
            // A deleted item's tombstone version; none for an item the user never had.
            base_version: current.item(id).map(|i| i.version),
            body: ChangeBody::Put { document },
        };
        match cur.get(id) {
            None => changes.push((put(document), Effect::Restored)),
            Some(c) if c.document.as_ref() != Some(&document) => {
                changes.push((put(document), Effect::Reverted));
            }
            Some(_) => {}
        }
    }
    for (id, c) in &cur {
        if !tgt.contains_key(id) {
            changes.push((
                Change {
                    change_id: restore_id.change_id_for(*id),
                    kind: c.kind,
                    item_id: *id,
                    base_version: Some(c.version),
                    body: ChangeBody::Delete,
                },
                Effect::Removed,
            ));
        }
    }
    changes
}

/// Counts (restored, reverted, removed) of the changes whose outcome says they were written now.
fn count<'a>(effects: impl IntoIterator<Item = (Effect, Option<&'a Outcome>)>) -> (u64, u64, u64) {
    let (mut restored, mut reverted, mut removed) = (0, 0, 0);
    for (effect, outcome) in effects {
        // A dry run counts what it would write; a push counts what it wrote.
        if outcome.is_some_and(|o| !matches!(o, Outcome::Applied(_))) {
            continue;
        }
        match effect {
            Effect::Restored => restored += 1,
            Effect::Reverted => reverted += 1,
            Effect::Removed => removed += 1,
        }
    }
    (restored, reverted, removed)
}

/// Reads a restore's record, if there is one.
pub(crate) async fn read_record(
    log: &Log,
    id: RestoreId,
) -> Result<Option<RestoreRecord>, RestoreError> {
    match log
        .store()
        .get(&keepsake_store::keys::restore_job(id))
        .await
    {
        Ok(got) => {
            let bytes = got
                .bytes()
                .await
                .map_err(|e| RestoreError::Record(e.to_string()))?;
            RestoreRecord::decode(&bytes)
                .map(Some)
                .map_err(RestoreError::Record)
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(RestoreError::Record(e.to_string())),
    }
}

/// Restores one user. With `restore_id` absent, the id is derived from the user, the moment, the
/// kinds and the current seq: a retry after success then finds nothing left to change.
/// `target` is the user's state at the moment when the caller has it already; otherwise it is
/// read with [`Log::items_at`]. After the changes are committed the restore is recorded (see
/// the module docs), and a restore sent again under a recorded id answers from the record.
#[allow(clippy::too_many_arguments)]
pub async fn restore_user(
    log: &Log,
    clock: &dyn Clock,
    user: UserId,
    spec: &Spec,
    restore_id: Option<RestoreId>,
    dry_run: bool,
    request_id: Option<RequestId>,
    target: Option<UserState>,
) -> Result<Done, RestoreError> {
    if let Some(id) = restore_id
        && !dry_run
        && let Some(rec) = read_record(log, id).await?
    {
        if rec.user_id != user {
            return Err(RestoreError::OtherUser);
        }
        return Ok(Done {
            restore_id: id,
            dry_run: false,
            duplicate: true,
            restored: rec.restored,
            reverted: rec.reverted,
            removed: rec.removed,
            seq: rec.seq,
        });
    }
    // The record may be missing (its write failed, or a crash came first) while the restore's
    // events are in the log: the answer is then the original one, from the log, and nothing is
    // computed again (a second run would delete items created since the first).
    if let Some(id) = restore_id
        && !dry_run
        && let Some(done) = counted_from_log(log, user, id).await?
    {
        write_record(log, clock, user, spec, &done).await;
        return Ok(done);
    }
    let (done, pushed) =
        restore_changes(log, user, spec, restore_id, dry_run, request_id, target).await?;
    if pushed.is_some() {
        write_record(log, clock, user, spec, &done).await;
    }
    Ok(done)
}

/// Records a single-user restore (create-only; an existing record is kept). A failed write is
/// logged: the events are committed, and a retry under the same id answers from the log.
async fn write_record(log: &Log, clock: &dyn Clock, user: UserId, spec: &Spec, done: &Done) {
    {
        let record = RestoreRecord {
            format_version: RECORD_VERSION,
            restore_id: done.restore_id,
            scope: "user".into(),
            user_id: user,
            as_of: spec.as_of.clone(),
            as_of_seq: spec.as_of_seq,
            kinds: spec.kinds.clone(),
            reason: spec.reason.clone(),
            restored: done.restored,
            reverted: done.reverted,
            removed: done.removed,
            seq: done.seq,
            recorded_at: clock.now(),
        };
        let bytes = match record.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(restore_id = %done.restore_id, error = %e, "encoding the restore record failed; a retry answers from the events");
                return;
            }
        };
        let put = log
            .store()
            .put_opts(
                &keepsake_store::keys::restore_job(done.restore_id),
                object_store::PutPayload::from(bytes),
                keepsake_store::create_only(),
            )
            .await;
        if let Err(e) = put
            && !matches!(e, object_store::Error::AlreadyExists { .. })
        {
            tracing::warn!(user_id = %user, restore_id = %done.restore_id, error = %e, "recording the restore failed; its events are committed, and a retry answers from them");
        }
    }
}

/// Restores one user of a fleet job under `restore_id` without a record of its own: the job
/// records its users' results in batches. `again` says the job ran before and may have
/// committed this user's restore without recording it; the result is then counted from the
/// restore's events in the log, so a resumed job reports what was written, once.
pub(crate) async fn restore_fleet_user(
    log: &Log,
    user: UserId,
    spec: &Spec,
    restore_id: RestoreId,
    target: UserState,
    again: bool,
) -> Result<Done, RestoreError> {
    // A resumed job: a user whose restore committed before the crash is counted from its
    // events, never computed again (that would delete items created since).
    if again && let Some(done) = counted_from_log(log, user, restore_id).await? {
        return Ok(done);
    }
    let (done, _) =
        restore_changes(log, user, spec, Some(restore_id), false, None, Some(target)).await?;
    Ok(done)
}

/// The result of restore `id` of `user` as its events in the log show it; `None` if it wrote
/// none. Restored and reverted are told apart by the items just before the restore's first event.
async fn counted_from_log(
    log: &Log,
    user: UserId,
    id: RestoreId,
) -> Result<Option<Done>, RestoreError> {
    let events = log.user_events(&user, UpTo::End).await?;
    let mine: Vec<_> = events.iter().filter(|e| e.restore_id == Some(id)).collect();
    let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
        return Ok(None);
    };
    let before = log.items_at(&user, UpTo::Seq(first.seq - 1)).await?;
    let (mut restored, mut reverted, mut removed) = (0, 0, 0);
    for e in &mine {
        match (e.op, before.item(&e.item_id)) {
            (keepsake_model::Op::Delete, _) => removed += 1,
            (_, Some(i)) if !i.deleted => reverted += 1,
            _ => restored += 1,
        }
    }
    Ok(Some(Done {
        restore_id: id,
        dry_run: false,
        duplicate: true,
        restored,
        reverted,
        removed,
        seq: last.seq,
    }))
}

/// How often a restore is computed again when the user's items moved on between reading them
/// and pushing the changes (the push is all or nothing, so a refused one wrote nothing).
const RESTORE_ATTEMPTS: usize = 4;

/// Computes and (unless `dry_run`) pushes one user's restore. Answers the result and, when it
/// pushed changes, whether any event was committed (`Some(false)`: every change was answered as
/// a duplicate of one committed before). The counts are of what was written, not of what was
/// planned; the push is all or nothing.
async fn restore_changes(
    log: &Log,
    user: UserId,
    spec: &Spec,
    restore_id: Option<RestoreId>,
    dry_run: bool,
    request_id: Option<RequestId>,
    target: Option<UserState>,
) -> Result<(Done, Option<bool>), RestoreError> {
    // Another process may have committed changes of this user that this one has not read yet:
    // the restore is computed from the current log, not from a stale view.
    log.sync(&user).await?;
    let target = match target {
        Some(t) => t,
        None => log.items_at(&user, spec.at).await?,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = log.user(&user, UserState::clone).await?;
        let kinds_key = spec
            .kinds
            .as_ref()
            .map(|k| k.iter().map(Kind::as_str).collect::<Vec<_>>().join(","));
        let key = format!(
            "{:?}|{}|{}",
            spec.at,
            current.last_seq(),
            kinds_key.unwrap_or_default()
        );
        let restore_id =
            restore_id.unwrap_or_else(|| RestoreId(uuid::Uuid::new_v5(&user.0, key.as_bytes())));
        let planned = compensating(&current, &target, &spec.kinds, restore_id);
        let effects: Vec<Effect> = planned.iter().map(|(_, e)| *e).collect();
        let changes: Vec<Change> = planned.into_iter().map(|(c, _)| c).collect();
        let done = |(restored, reverted, removed): (u64, u64, u64), seq| Done {
            restore_id,
            dry_run,
            duplicate: false,
            restored,
            reverted,
            removed,
            seq,
        };
        if dry_run || changes.is_empty() {
            let counts = count(effects.iter().map(|e| (*e, None)));
            tracing::info!(user_id = %user, %restore_id, dry_run, restored = counts.0, reverted = counts.1, removed = counts.2, "restore");
            return Ok((done(counts, current.last_seq()), None));
        }
        let pushed = log
            .push(PushRequest {
                user_id: user,
                meta: EventMeta {
                    device_id: None,
                    origin: Origin::Restore,
                    request_id,
                    restore_id: Some(restore_id),
                },
                changes,
                confirm_mass_delete: true,
            })
            .await;
        match pushed {
            Ok(result) => {
                let counts = count(
                    effects
                        .iter()
                        .zip(&result.outcomes)
                        .map(|(e, o)| (*e, Some(o))),
                );
                tracing::info!(user_id = %user, %restore_id, restored = counts.0, reverted = counts.1, removed = counts.2, "restore");
                return Ok((
                    done(counts, result.last_seq),
                    Some(result.segment.is_some()),
                ));
            }
            // An item moved on since `current` was read: nothing was written; compute again.
            Err(e @ LogError::Incomplete { .. }) if attempt < RESTORE_ATTEMPTS => {
                tracing::info!(user_id = %user, %restore_id, attempt, error = %e, "restore met newer versions; computing it again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use std::sync::Arc;

    use keepsake_log::LogConfig;
    use keepsake_model::{ChangeId, Document, RandomIds, SystemClock};

    use super::*;

    fn id() -> uuid::Uuid {
        keepsake_model::IdGenerator::random(&RandomIds)
    }

    async fn open() -> Log {
        let store = keepsake_store::open_store("memory://")
            .expect("store")
            .inner;
        Log::open(
            store,
            Some(1),
            LogConfig::default(),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
        )
        .await
        .expect("log")
    }

    fn doc(n: u64) -> ChangeBody {
        let mut m = serde_json::Map::new();
        m.insert("n".into(), n.into());
        ChangeBody::Put {
            document: Document::from_object(&m),
        }
    }

    fn change(item: ItemId, body: ChangeBody) -> Change {
        Change {
            change_id: ChangeId(id()),
            kind: Kind::Note,
            item_id: item,
            base_version: None,
            body,
        }
    }

    async fn push(log: &Log, user: UserId, changes: Vec<Change>, origin: Origin) -> u64 {
        log.push(PushRequest {
            user_id: user,
            meta: EventMeta {
                device_id: None,
                origin,
                request_id: None,
                restore_id: None,
            },
            changes,
            confirm_mass_delete: true,
        })
        .await
        .expect("push")
        .last_seq
    }

    fn spec(seq: u64) -> Spec {
        Spec {
            at: UpTo::Seq(seq),
            as_of: None,
            as_of_seq: Some(seq),
            kinds: None,
            reason: "test".into(),
        }
    }

    async fn live(log: &Log, user: UserId) -> Vec<(ItemId, u64)> {
        log.user(&user, |s| {
            let mut v: Vec<_> = s
                .items()
                .filter(|i| !i.deleted)
                .map(|i| (i.item_id, i.version))
                .collect();
            v.sort();
            v
        })
        .await
        .expect("state")
    }

    /// A restore sent again under its id after its record was lost (the write failed, or a
    /// crash came first) answers the original result and writes nothing: it used to compute the
    /// restore again and delete the items created since the first run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_sent_again_without_its_record_answers_the_original_and_deletes_nothing() {
        let log = open().await;
        let u = UserId(id());
        let (x1, x2, x3) = (ItemId(id()), ItemId(id()), ItemId(id()));
        push(&log, u, vec![change(x1, doc(1))], Origin::Device).await;
        push(
            &log,
            u,
            vec![change(x2, doc(2)), change(x1, doc(11))],
            Origin::Device,
        )
        .await;
        let rid = RestoreId(id());
        let first = restore_user(
            &log,
            &SystemClock,
            u,
            &spec(1),
            Some(rid),
            false,
            None,
            None,
        )
        .await
        .expect("restore");
        assert_eq!(
            (first.restored, first.reverted, first.removed),
            (0, 1, 1),
            "{first:?}"
        );
        log.store()
            .delete(&keepsake_store::keys::restore_job(rid))
            .await
            .expect("lose the record");
        push(&log, u, vec![change(x3, doc(3))], Origin::Device).await;
        let before = live(&log, u).await;
        let again = restore_user(
            &log,
            &SystemClock,
            u,
            &spec(1),
            Some(rid),
            false,
            None,
            None,
        )
        .await
        .expect("restore again");
        assert_eq!(
            (again.restored, again.reverted, again.removed, again.seq),
            (first.restored, first.reverted, first.removed, first.seq),
            "the original answer: {again:?} vs {first:?}"
        );
        assert_eq!(live(&log, u).await, before, "nothing written: x3 stays");
        assert!(before.iter().any(|(i, _)| *i == x3));
        // The record is written again, and answers next time.
        assert!(read_record(&log, rid).await.expect("read").is_some());
    }

    /// A restore computed from a state that a device then edits must not overwrite the edit
    /// unseen: its changes name the versions they were computed from, and its push is all or
    /// nothing. The restore then computes again from the newer state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_never_overwrites_an_edit_made_while_it_ran() {
        let log = open().await;
        let u = UserId(id());
        let (x1, x2) = (ItemId(id()), ItemId(id()));
        push(&log, u, vec![change(x1, doc(1))], Origin::Device).await;
        push(
            &log,
            u,
            vec![change(x1, doc(2)), change(x2, doc(20))],
            Origin::Device,
        )
        .await;
        let current = log.user(&u, UserState::clone).await.expect("current");
        let target = log.items_at(&u, UpTo::Seq(1)).await.expect("target");
        let rid = RestoreId(id());
        let planned = compensating(&current, &target, &None, rid);
        assert_eq!(planned.len(), 2, "revert x1, remove x2");
        // A device edits x1 after the restore read the state.
        let seq = push(&log, u, vec![change(x1, doc(3))], Origin::Device).await;
        let pushed = log
            .push(PushRequest {
                user_id: u,
                meta: EventMeta {
                    device_id: None,
                    origin: Origin::Restore,
                    request_id: None,
                    restore_id: Some(rid),
                },
                changes: planned.into_iter().map(|(c, _)| c).collect(),
                confirm_mass_delete: true,
            })
            .await;
        assert!(
            matches!(pushed, Err(LogError::Incomplete { refused: 1, .. })),
            "{pushed:?}"
        );
        assert_eq!(
            log.last_seq(&u).await.expect("seq"),
            seq,
            "nothing of the restore was written, not even x2's delete"
        );
        // Run whole, the restore computes from the edited state and says what it wrote.
        let done = restore_user(&log, &SystemClock, u, &spec(1), None, false, None, None)
            .await
            .expect("restore");
        assert_eq!((done.restored, done.reverted, done.removed), (0, 1, 1));
        let x1_now = log
            .user(&u, |s| s.item(&x1).and_then(|i| i.document.clone()))
            .await
            .expect("state");
        let target_x1 = target.item(&x1).and_then(|i| i.document.clone());
        assert_eq!(x1_now, target_x1);
    }
}
