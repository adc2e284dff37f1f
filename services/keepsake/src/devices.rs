//! The device registry, kept in the store: registrations and revocations are create-only
//! objects, so they survive restarts and are never rewritten.
//!
//! Verifying a token never reads the store: revocations are held in memory, loaded at start and
//! refreshed periodically (so a revocation made through another server takes effect here within
//! the refresh interval; through this server, at once).
//!
//! Registering and revoking are also recorded in the user's log ([`crate::device_events`]).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

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

/// Devices and revocations.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    revoked: Arc<RwLock<HashSet<DeviceId>>>,
}

impl Registry {
    /// Loads every revocation.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self, RegistryError> {
        let r = Self {
            store,
            revoked: Arc::default(),
        };
        r.refresh().await?;
        Ok(r)
    }

    /// Re-reads the revocations (picks up those made through other servers).
    pub async fn refresh(&self) -> Result<(), RegistryError> {
        let listed: Vec<_> = self
            .store
            .list(Some(&keys::revocations_prefix()))
            .try_collect()
            .await?;
        let ids: HashSet<DeviceId> = listed
            .iter()
            .filter_map(|m| match keys::parse(&m.location) {
                Some(keys::Key::Revocation(d)) => Some(d),
                _ => None,
            })
            .collect();
        if let Ok(mut set) = self.revoked.write() {
            set.extend(ids);
        }
        Ok(())
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
        if let Ok(mut set) = self.revoked.write() {
            set.insert(device);
        }
        Ok(record)
    }
}
