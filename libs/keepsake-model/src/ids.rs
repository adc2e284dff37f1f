//! UUID newtypes, so that a user id can never be passed where an item id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The id as 16 big-endian bytes, the form stored in segments.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Rebuilds an id from the 16 bytes stored in a segment.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// The owner of PIM data.
    UserId
);
uuid_id!(
    /// A handset of a user.
    DeviceId
);
uuid_id!(
    /// One contact, calendar entry, task or note; chosen by the device.
    ItemId
);
uuid_id!(
    /// The device's idempotency key for one change.
    ChangeId
);
uuid_id!(
    /// The server's id for one event: a UUIDv7, so ids sort by creation time.
    EventId
);
uuid_id!(
    /// The HTTP request that carried a change (the `x-request-id`).
    RequestId
);
uuid_id!(
    /// One restore operation; restore change ids are UUIDv5 of it.
    RestoreId
);
uuid_id!(
    /// One group commit; stored in the segment so an ambiguous PUT can be recognised.
    BatchId
);
uuid_id!(
    /// The identity of a store, fixed at creation; sync tokens carry it.
    StoreId
);

impl RestoreId {
    /// The change id a restore uses for one item: the same restore of the same item always
    /// yields the same change id, so a retried restore is a duplicate, never a second restore.
    pub fn change_id_for(&self, item: ItemId) -> ChangeId {
        ChangeId(Uuid::new_v5(&self.0, item.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = UserId(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef));
        let text = id.to_string();
        assert_eq!(text, "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(text.parse::<UserId>().ok(), Some(id));
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }

    #[test]
    fn restore_change_ids_are_stable_and_distinct() {
        let r = RestoreId(Uuid::from_u128(7));
        let a = ItemId(Uuid::from_u128(1));
        let b = ItemId(Uuid::from_u128(2));
        assert_eq!(r.change_id_for(a), r.change_id_for(a));
        assert_ne!(r.change_id_for(a), r.change_id_for(b));
        assert_eq!(r.change_id_for(a).0.get_version_num(), 5);
    }
}
