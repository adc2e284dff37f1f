//! Sync tokens: the store id and a seq, opaque to devices. They never expire.
//!
//! - Version 1: `base64url(1 || store id (16 bytes) || seq (8 bytes, big-endian))`.
//! - Version 2: version 1's fields after a 2, then the [`Mark`] of the log the answer was read
//!   at: its segment (8 bytes) and that segment's stamp (8 bytes: its batch id, random for
//!   every segment written, folded to 64 bits), big-endian.
//!   Only a pull that answered everything up to the user's last seq gives one: the seq is then
//!   the user's state at that mark, and a pull with it whose user no segment since holds is
//!   answered from the view's index without loading the user (`api::device::pull`). Push
//!   answers stay version 1: a push's seq is not the user's state at its segment (another push
//!   of the user can share the segment).
//!
//! Both versions are read for ever. The store id lets the server tell "a token from another
//! store" (start over) from "a token ahead of this store" (the server lost data:
//! `server_behind`), so an empty server never wipes a device. A mark proves nothing on its own:
//! the server uses it only if it holds that segment with that stamp, so a store gone back to an
//! older copy of itself, whose numbers were written again, reads the user and says
//! `server_behind`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keepsake_log::Mark;
use keepsake_model::StoreId;

/// A decoded sync token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    /// The store that issued it.
    pub store_id: StoreId,
    /// The user's seq it stands for.
    pub seq: u64,
    /// Where in the user's shard's log `seq` was the user's last (version 2).
    pub at: Option<Mark>,
}

impl SyncToken {
    /// A token of the user's `seq`, without a mark (version 1).
    pub fn at_seq(store_id: StoreId, seq: u64) -> Self {
        Self {
            store_id,
            seq,
            at: None,
        }
    }

    /// Encodes the token: version 2 with a mark, 1 without.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(41);
        bytes.push(if self.at.is_some() { 2 } else { 1 });
        bytes.extend_from_slice(self.store_id.as_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        if let Some(m) = self.at {
            bytes.extend_from_slice(&m.segment.to_be_bytes());
            bytes.extend_from_slice(&m.stamp.to_be_bytes());
        }
        B64.encode(bytes)
    }

    /// Decodes a token of either version; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let bytes = B64.decode(s).ok()?;
        let (&version, rest) = bytes.split_first()?;
        let (fixed, mark) = match (version, rest.len()) {
            (1, 24) => (rest, None),
            (2, 40) => (&rest[..24], Some(&rest[24..])),
            _ => return None,
        };
        let store: [u8; 16] = fixed[..16].try_into().ok()?;
        let seq: [u8; 8] = fixed[16..].try_into().ok()?;
        let at = match mark {
            None => None,
            Some(m) => Some(Mark {
                segment: u64::from_be_bytes(m[..8].try_into().ok()?),
                stamp: u64::from_be_bytes(m[8..].try_into().ok()?),
            }),
        };
        Some(Self {
            store_id: StoreId::from_bytes(store),
            seq: u64::from_be_bytes(seq),
            at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn round_trip_and_garbage() {
        let t = SyncToken::at_seq(StoreId(Uuid::from_u128(5)), 42);
        assert_eq!(SyncToken::decode(&t.encode()), Some(t));
        assert_eq!(SyncToken::decode("nope"), None);
        assert_eq!(SyncToken::decode(""), None);
        let mut wrong_version = B64.decode(t.encode()).expect("b64");
        wrong_version[0] = 2;
        assert_eq!(SyncToken::decode(&B64.encode(wrong_version)), None);
    }

    #[test]
    fn version_two_carries_a_mark_and_version_one_still_reads() {
        let store = StoreId(Uuid::from_u128(7));
        let marked = SyncToken {
            store_id: store,
            seq: 9,
            at: Some(Mark {
                segment: 1234,
                stamp: 1_764_000_000_000_001,
            }),
        };
        assert_eq!(SyncToken::decode(&marked.encode()), Some(marked));
        assert_eq!(B64.decode(marked.encode()).expect("b64")[0], 2);
        // Tokens devices hold from before version 2, as they were written.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(store.as_bytes());
        v1.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            SyncToken::decode(&B64.encode(&v1)),
            Some(SyncToken::at_seq(store, 9))
        );
        assert_eq!(SyncToken::at_seq(store, 9).encode(), B64.encode(&v1));
        // A version and a length that do not belong together.
        let mut short = B64.decode(marked.encode()).expect("b64");
        short.truncate(25);
        assert_eq!(SyncToken::decode(&B64.encode(&short)), None);
        v1[0] = 2;
        assert_eq!(SyncToken::decode(&B64.encode(&v1)), None);
    }

    /// The golden tokens of both versions (`schemas/golden/sync-token-v{1,2}.txt`) decode to
    /// what they were written from, and encode back to the same text: devices hold them for
    /// ever.
    #[test]
    fn golden_tokens_of_both_versions() {
        let store = StoreId(Uuid::from_u128(0x6f96_19ff_8b86_d011_b42d_00c0_4fc9_64ff));
        let read = |v: u8| {
            let path = format!(
                "{}/../../schemas/golden/sync-token-v{v}.txt",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read_to_string(&path).expect("golden token")
        };
        let v1 = SyncToken::at_seq(store, 41);
        let v2 = SyncToken {
            at: Some(Mark {
                segment: 1234,
                stamp: 1_764_590_400_123_456,
            }),
            ..v1
        };
        for (v, want) in [(1, v1), (2, v2)] {
            let text = read(v);
            assert_eq!(SyncToken::decode(text.trim()), Some(want), "version {v}");
            assert_eq!(want.encode(), text.trim(), "version {v}");
        }
    }
}
