//! Sync tokens: the store id and a seq, opaque to devices. They never expire.
//!
//! `base64url(version 1 || store id (16 bytes) || seq (8 bytes, big-endian))`. The store id lets
//! the server tell "a token from another store" (start over) from "a token ahead of this store"
//! (the server lost data: `server_behind`), so an empty server never wipes a device.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keepsake_model::StoreId;

/// A decoded sync token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    /// The store that issued it.
    pub store_id: StoreId,
    /// The user's seq it stands for.
    pub seq: u64,
}

impl SyncToken {
    /// Encodes the token.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 25];
        bytes[0] = 1;
        bytes[1..17].copy_from_slice(self.store_id.as_bytes());
        bytes[17..].copy_from_slice(&self.seq.to_be_bytes());
        B64.encode(bytes)
    }

    /// Decodes a token; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let bytes = B64.decode(s).ok()?;
        let bytes: [u8; 25] = bytes.try_into().ok()?;
        if bytes[0] != 1 {
            return None;
        }
        let store: [u8; 16] = bytes[1..17].try_into().ok()?;
        let seq: [u8; 8] = bytes[17..].try_into().ok()?;
        Some(Self {
            store_id: StoreId::from_bytes(store),
            seq: u64::from_be_bytes(seq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn round_trip_and_garbage() {
        let t = SyncToken {
            store_id: StoreId(Uuid::from_u128(5)),
            seq: 42,
        };
        assert_eq!(SyncToken::decode(&t.encode()), Some(t));
        assert_eq!(SyncToken::decode("nope"), None);
        assert_eq!(SyncToken::decode(""), None);
        let mut wrong_version = B64.decode(t.encode()).expect("b64");
        wrong_version[0] = 2;
        assert_eq!(SyncToken::decode(&B64.encode(wrong_version)), None);
    }
}
