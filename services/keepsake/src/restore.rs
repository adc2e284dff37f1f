//! Restores: make a user's current state equal their state at a moment, by appending ordinary
//! changes (origin `restore`) — never by rewriting history.
//!
//! - The changes are the diff of current and target live items: a put for each item brought back
//!   (restored) or changed back (reverted), a delete for each item created since (removed); all in
//!   one push, so one segment: all or nothing. The mass-delete guard does not apply.
//! - Every change of a restore carries its `restore_id`, and its change id is
//!   UUIDv5(restore_id, item_id): sending the same restore again is answered `duplicate`.
//! - After the events are committed, `restores/<restore_id>.json` records the request (with the
//!   operator's reason) and the result; a restore sent again under the same id answers from it.
//!   A fleet job's users are recorded by the job, in batches ([`crate::fleet`]), not one by one.

use std::collections::BTreeMap;

use keepsake_log::{Log, LogError, PushRequest, UpTo};
use keepsake_model::{
    Change, ChangeBody, Clock, EventMeta, ItemId, ItemState, Kind, Origin, Outcome, RequestId,
    RestoreId, StateRead, UserId, UserState,
};
use object_store::ObjectStoreExt as _;
use serde::Serialize;
use serde_json::{Value, json};

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

/// The user's live items of the chosen kinds, by id.
pub(crate) fn live_items<'a>(
    s: &'a UserState,
    kinds: &Option<Vec<Kind>>,
) -> BTreeMap<ItemId, &'a ItemState> {
    s.items()
        .filter(|i| !i.deleted && kinds.as_ref().is_none_or(|k| k.contains(&i.kind)))
        .map(|i| (i.item_id, i))
        .collect()
}

/// The changes that make `current` equal `target`, with the counts (restored, reverted, removed).
fn compensating(
    current: &UserState,
    target: &UserState,
    kinds: &Option<Vec<Kind>>,
    restore_id: RestoreId,
) -> (Vec<Change>, u64, u64, u64) {
    let (cur, tgt) = (live_items(current, kinds), live_items(target, kinds));
    let (mut restored, mut reverted, mut removed) = (0, 0, 0);
    let mut changes = Vec::new();
    for (id, t) in &tgt {
        let Some(document) = t.document.clone() else {
            continue;
        };
        let put = |document| Change {
            change_id: restore_id.change_id_for(*id),
            kind: t.kind,
            item_id: *id,
            base_version: None,
            body: ChangeBody::Put { document },
        };
        match cur.get(id) {
            None => {
                restored += 1;
                changes.push(put(document));
            }
            Some(c) if c.document.as_ref() != Some(&document) => {
                reverted += 1;
                changes.push(put(document));
            }
            Some(_) => {}
        }
    }
    for (id, c) in &cur {
        if !tgt.contains_key(id) {
            removed += 1;
            changes.push(Change {
                change_id: restore_id.change_id_for(*id),
                kind: c.kind,
                item_id: *id,
                base_version: None,
                body: ChangeBody::Delete,
            });
        }
    }
    (changes, restored, reverted, removed)
}

/// Reads a restore's record, if there is one.
pub(crate) async fn read_record(log: &Log, id: RestoreId) -> Result<Option<Value>, RestoreError> {
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
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RestoreError::Record(e.to_string()))
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
        if rec["user_id"] != json!(user) {
            return Err(RestoreError::OtherUser);
        }
        let n = |k: &str| rec[k].as_u64().unwrap_or(0);
        return Ok(Done {
            restore_id: id,
            dry_run: false,
            duplicate: true,
            restored: n("restored"),
            reverted: n("reverted"),
            removed: n("removed"),
            seq: n("seq"),
        });
    }
    let (done, pushed) =
        restore_changes(log, user, spec, restore_id, dry_run, request_id, target).await?;
    if pushed.is_some() {
        let record = json!({
            "restore_id": done.restore_id, "scope": "user", "user_id": user, "as_of": spec.as_of, "as_of_seq": spec.as_of_seq,
            "kinds": spec.kinds, "reason": spec.reason, "restored": done.restored, "reverted": done.reverted, "removed": done.removed,
            "seq": done.seq, "recorded_at": clock.now(),
        });
        let put = log
            .store()
            .put_opts(
                &keepsake_store::keys::restore_job(done.restore_id),
                object_store::PutPayload::from(record.to_string().into_bytes()),
                keepsake_store::create_only(),
            )
            .await;
        if let Err(e) = put
            && !matches!(e, object_store::Error::AlreadyExists { .. })
        {
            tracing::warn!(user_id = %user, restore_id = %done.restore_id, error = %e, "recording the restore failed; its events are committed");
        }
    }
    Ok(done)
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
    let (done, pushed) =
        restore_changes(log, user, spec, Some(restore_id), false, None, Some(target)).await?;
    if again && pushed != Some(true) {
        return Ok(counted_from_log(log, user, restore_id)
            .await?
            .unwrap_or(done));
    }
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

/// Computes and (unless `dry_run`) pushes one user's restore. Answers the result and, when it
/// pushed changes, whether any event was committed (`Some(false)`: every change was answered as
/// a duplicate of one committed before).
async fn restore_changes(
    log: &Log,
    user: UserId,
    spec: &Spec,
    restore_id: Option<RestoreId>,
    dry_run: bool,
    request_id: Option<RequestId>,
    target: Option<UserState>,
) -> Result<(Done, Option<bool>), RestoreError> {
    let current = log.user(&user, UserState::clone).await?;
    let target = match target {
        Some(t) => t,
        None => log.items_at(&user, spec.at).await?,
    };
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
    let (changes, restored, reverted, removed) =
        compensating(&current, &target, &spec.kinds, restore_id);
    let mut seq = current.last_seq();
    let mut pushed = None;
    if !dry_run && !changes.is_empty() {
        let result = log
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
            .await?;
        if let Some(bad) = result
            .outcomes
            .iter()
            .find(|o| matches!(o, Outcome::Rejected { .. } | Outcome::Conflict(_)))
        {
            tracing::warn!(user_id = %user, %restore_id, outcome = ?bad, "a restore change was not applied");
        }
        pushed = Some(result.segment.is_some());
        seq = result.last_seq;
    }
    tracing::info!(user_id = %user, %restore_id, dry_run, restored, reverted, removed, "restore");
    Ok((
        Done {
            restore_id,
            dry_run,
            duplicate: false,
            restored,
            reverted,
            removed,
            seq,
        },
        pushed,
    ))
}
