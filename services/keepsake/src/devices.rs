//! The device registry, kept in the store: registrations and revocations are create-only
//! objects, so they survive restarts and are never rewritten.
//!
//! Verifying a token never reads the store: revocations are held in memory, loaded at start and
//! refreshed periodically (so a revocation made through another server takes effect here within
//! the refresh interval; through this server, at once).
//!
//! A refresh reads only what is new: each revocation also writes an empty entry in the
//! time-ordered revocation log (`revocation-log/<ms>-<device>`), and a refresh lists that log
//! from [`WINDOW`] before its previous run (one LIST request while fewer than 1,000 devices are
//! revoked in that span), not every revocation ever made. The window covers clocks that differ
//! between servers and PUTs still in flight. Every [`FULL_EVERY`] a refresh lists every
//! revocation again: a backstop for a clock further off than the window, and for revocations
//! written by versions that kept no log.
//!
//! Registering and revoking are also recorded in the user's log ([`crate::device_events`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use keepsake_model::{DeviceId, UserId};
use keepsake_store::{create_only, keys};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// A registered device as stored (never its token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device.
    pub device_id: DeviceId,
    /// Its user.
    pub user_id: UserId,
    /// A name the operator gave it.
    pub name: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was (filled in when listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
struct Revocation {
    device_id: DeviceId,
    user_id: UserId,
    revoked_at: DateTime<Utc>,
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such device for this user.
    #[error("no such device")]
    NotFound,
    /// The store failed.
    #[error("{0}")]
    Store(#[from] object_store::Error),
    /// A stored record does not parse.
    #[error("device record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// How far back before its previous run a refresh lists the revocation log.
pub const WINDOW: chrono::Duration = chrono::Duration::minutes(5);

/// How often a refresh lists every revocation instead.
pub const FULL_EVERY: chrono::Duration = chrono::Duration::hours(1);

/// What a refresh read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refreshed {
    /// Every revocation was listed (at open, and every [`FULL_EVERY`]).
    pub full: bool,
    /// Objects listed.
    pub listed: usize,
}

/// When the last refreshes ran.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The previous refresh (the next lists the log from [`WINDOW`] before it).
    last: DateTime<Utc>,
    /// The previous full listing.
    full: DateTime<Utc>,
}

/// Devices and revocations.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    revoked: Arc<RwLock<HashSet<DeviceId>>>,
    cursor: Arc<Mutex<Option<Cursor>>>,
}

impl Registry {
    /// Loads every revocation.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        now: DateTime<Utc>,
    ) -> Result<Self, RegistryError> {
        let r = Self {
            store,
            revoked: Arc::default(),
            cursor: Arc::default(),
        };
        r.refresh(now).await?;
        Ok(r)
    }

    /// Re-reads the revocations made since the previous refresh (picks up those made through
    /// other servers); every [`FULL_EVERY`], and the first time, all of them.
    pub async fn refresh(&self, now: DateTime<Utc>) -> Result<Refreshed, RegistryError> {
        let cursor = self.cursor.lock().ok().and_then(|c| *c);
        let full = cursor.is_none_or(|c| now - c.full >= FULL_EVERY);
        let listed: Vec<_> = match cursor {
            Some(c) if !full => {
                let from = (c.last - WINDOW).timestamp_millis().max(0) as u64;
                self.store
                    .list_with_offset(
                        Some(&keys::revocation_log_prefix()),
                        &keys::revocation_log_from(from),
                    )
                    .try_collect()
                    .await?
            }
            _ => {
                self.store
                    .list(Some(&keys::revocations_prefix()))
                    .try_collect()
                    .await?
            }
        };
        let ids: HashSet<DeviceId> = listed
            .iter()
            .filter_map(|m| match keys::parse(&m.location) {
                Some(keys::Key::Revocation(d) | keys::Key::RevocationLog { device: d, .. }) => {
                    Some(d)
                }
                _ => None,
            })
            .collect();
        if let Ok(mut set) = self.revoked.write() {
            set.extend(ids);
        }
        if let Ok(mut c) = self.cursor.lock() {
            *c = Some(Cursor {
                last: now,
                full: if full {
                    now
                } else {
                    cursor.map_or(now, |c| c.full)
                },
            });
        }
        Ok(Refreshed {
            full,
            listed: listed.len(),
        })
    }

    /// True when the device was revoked.
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revoked.read().map_or(true, |s| s.contains(device))
    }

    /// Registers a device.
    pub async fn register(&self, record: &DeviceRecord) -> Result<(), RegistryError> {
        let body = serde_json::to_vec_pretty(record)?;
        self.store
            .put_opts(
                &keys::device(record.user_id, record.device_id),
                PutPayload::from(body),
                create_only(),
            )
            .await?;
        Ok(())
    }

    /// The user's devices, oldest first, with revocation times.
    pub async fn list(&self, user: UserId) -> Result<Vec<DeviceRecord>, RegistryError> {
        let listed: Vec<_> = self
            .store
            .list(Some(&keys::devices_prefix(user)))
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for m in listed {
            let Some(keys::Key::Device { .. }) = keys::parse(&m.location) else {
                continue;
            };
            let bytes = self.store.get(&m.location).await?.bytes().await?;
            let mut rec: DeviceRecord = serde_json::from_slice(&bytes)?;
            if self.is_revoked(&rec.device_id) {
                rec.revoked_at = self.revocation_time(rec.device_id).await?;
            }
            out.push(rec);
        }
        out.sort_by_key(|r| (r.created_at, r.device_id));
        Ok(out)
    }

    async fn revocation_time(
        &self,
        device: DeviceId,
    ) -> Result<Option<DateTime<Utc>>, RegistryError> {
        match self.store.get(&keys::revocation(device)).await {
            Ok(got) => {
                let r: Revocation = serde_json::from_slice(&got.bytes().await?)?;
                Ok(Some(r.revoked_at))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes a device: its token stops working here at once. Revoking twice is not an error.
    /// Returns the device's record.
    pub async fn revoke(
        &self,
        user: UserId,
        device: DeviceId,
        at: DateTime<Utc>,
    ) -> Result<DeviceRecord, RegistryError> {
        let record: DeviceRecord = match self.store.get(&keys::device(user, device)).await {
            Ok(got) => serde_json::from_slice(&got.bytes().await?)?,
            Err(object_store::Error::NotFound { .. }) => return Err(RegistryError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let body = serde_json::to_vec_pretty(&Revocation {
            device_id: device,
            user_id: user,
            revoked_at: at,
        })?;
        match self
            .store
            .put_opts(
                &keys::revocation(device),
                PutPayload::from(body),
                create_only(),
            )
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // Then its entry in the log other servers refresh from (written again by a revoke that
        // is retried after this failed: an entry is only a pointer to the device).
        let at_ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        match self
            .store
            .put_opts(
                &keys::revocation_log(at_ms, device),
                PutPayload::default(),
                create_only(),
            )
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(mut set) = self.revoked.write() {
            set.insert(device);
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use keepsake_store::{InstrumentedStore, StoreOp, StoreStats};
    use object_store::memory::InMemory;
    use uuid::Uuid;

    use super::*;

    /// Ids for the test: distinct, and the same on every run.
    fn next_id() -> Uuid {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Uuid::from_u128(u128::from(
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ))
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_547_200 + secs, 0).expect("a time")
    }

    async fn revoke_new(r: &Registry, when: DateTime<Utc>) -> DeviceId {
        let (user, device) = (UserId(next_id()), DeviceId(next_id()));
        r.register(&DeviceRecord {
            device_id: device,
            user_id: user,
            name: "phone".into(),
            created_at: when,
            revoked_at: None,
        })
        .await
        .expect("register");
        r.revoke(user, device, when).await.expect("revoke");
        device
    }

    #[tokio::test]
    async fn a_refresh_lists_only_revocations_made_since_the_previous_one() {
        let stats = Arc::new(StoreStats::default());
        let store: Arc<dyn ObjectStore> = Arc::new(InstrumentedStore::new(
            Arc::new(InMemory::new()),
            stats.clone(),
        ));
        let a = Registry::open(store.clone(), at(0)).await.expect("a");
        let old: Vec<DeviceId> =
            futures::future::join_all((0..50).map(|_| revoke_new(&a, at(-86_400)))).await;
        let b = Registry::open(store.clone(), at(0)).await.expect("b");
        assert!(
            old.iter().all(|d| b.is_revoked(d)),
            "the first load lists every revocation"
        );

        let new = revoke_new(&a, at(60)).await;
        assert!(!b.is_revoked(&new));
        let lists = stats.requests_of(StoreOp::List);
        let r = b.refresh(at(65)).await.expect("refresh");
        assert_eq!(
            r,
            Refreshed {
                full: false,
                listed: 1
            },
            "only the new revocation is listed"
        );
        assert_eq!(stats.requests_of(StoreOp::List), lists + 1);
        assert!(b.is_revoked(&new));

        // Revoked through a server whose clock is two minutes behind, just after B's refresh:
        // within the window, so the next refresh sees it.
        let late = revoke_new(&a, at(65 - 120)).await;
        let r = b.refresh(at(130)).await.expect("refresh");
        assert!(!r.full && b.is_revoked(&late), "{r:?}");

        // A revocation an older version wrote (no log entry) is found by the hourly full listing.
        let (user, device) = (UserId(next_id()), DeviceId(next_id()));
        let body = serde_json::to_vec(&Revocation {
            device_id: device,
            user_id: user,
            revoked_at: at(140),
        })
        .expect("json");
        store
            .put(&keys::revocation(device), PutPayload::from(body))
            .await
            .expect("put");
        assert!(!b.refresh(at(200)).await.expect("refresh").full);
        assert!(!b.is_revoked(&device));
        let r = b.refresh(at(1) + FULL_EVERY).await.expect("refresh");
        assert!(r.full && r.listed >= 53, "{r:?}");
        assert!(b.is_revoked(&device));
    }
}
