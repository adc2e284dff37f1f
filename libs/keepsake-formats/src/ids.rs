//! The change id and the item id of an imported entry: pure functions of the user and the
//! entry, so importing the same file twice writes nothing the second time (the second push
//! meets its change ids again and is answered `duplicate`).
//!
//! Both are UUIDv5 in the user's id as namespace (so two users importing the same file share
//! no ids), of a name that says what it is:
//!
//! ```text
//! keepsake-import/v1/change/<kind>/uid/<UID>          the entry has a UID
//! keepsake-import/v1/change/<kind>/sha256/<hex>       it has none: SHA-256 of its original text
//! keepsake-import/v1/item/<kind>/...                  the same, for the item id
//! ```
//!
//! Invariants: the same (user, kind, UID) gives the same ids whatever else the entry holds;
//! an entry without a UID is identified by its exact text. Consequence, by design (issue 16):
//! an entry whose UID was imported before is a `duplicate` even if its content changed since;
//! a changed entry reaches the item through a device, or a put by the importer with a new
//! change id. The `v1` names the scheme: changing it would make old imports look new.

use keepsake_model::{ChangeId, ItemId, UserId};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Entry;

/// The change id of importing `entry` for `user`.
pub fn import_change_id(user: UserId, entry: &Entry<'_>) -> ChangeId {
    ChangeId(Uuid::new_v5(&user.0, name("change", entry).as_bytes()))
}

/// The item id an imported `entry` is written to for `user` (same rule, another name).
pub fn import_item_id(user: UserId, entry: &Entry<'_>) -> ItemId {
    ItemId(Uuid::new_v5(&user.0, name("item", entry).as_bytes()))
}

fn name(what: &str, entry: &Entry<'_>) -> String {
    let kind = entry.kind.as_str();
    match &entry.uid {
        Some(uid) => format!("keepsake-import/v1/{what}/{kind}/uid/{uid}"),
        None => {
            let hash = Sha256::digest(entry.text.as_bytes());
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            format!("keepsake-import/v1/{what}/{kind}/sha256/{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;
    use keepsake_model::Kind;
    use std::borrow::Cow;

    fn entry(uid: Option<&str>, text: &str) -> Entry<'static> {
        Entry {
            format: Format::VCard,
            kind: Kind::Contact,
            line: 1,
            uid: uid.map(str::to_string),
            text: Cow::Owned(text.to_string()),
        }
    }

    #[test]
    fn ids_follow_the_uid_or_else_the_text() {
        let u1 = UserId(Uuid::from_u128(1));
        let u2 = UserId(Uuid::from_u128(2));
        let a = entry(Some("uid-a"), "one");
        let a_changed = entry(Some("uid-a"), "two");
        let b = entry(Some("uid-b"), "one");
        assert_eq!(import_change_id(u1, &a), import_change_id(u1, &a_changed));
        assert_ne!(import_change_id(u1, &a), import_change_id(u1, &b));
        assert_ne!(import_change_id(u1, &a), import_change_id(u2, &a));
        assert_ne!(import_change_id(u1, &a).0, import_item_id(u1, &a).0);
        assert_eq!(import_change_id(u1, &a).0.get_version_num(), 5);
        let n1 = entry(None, "one");
        let n2 = entry(None, "two");
        assert_eq!(
            import_change_id(u1, &n1),
            import_change_id(u1, &entry(None, "one"))
        );
        assert_ne!(import_change_id(u1, &n1), import_change_id(u1, &n2));
        let mut task = a.clone();
        task.kind = Kind::Task;
        assert_ne!(import_change_id(u1, &a), import_change_id(u1, &task));
        // Pinned: a change of the scheme would make every earlier import look new.
        assert_eq!(
            import_change_id(u1, &a).to_string(),
            Uuid::new_v5(
                &Uuid::from_u128(1),
                b"keepsake-import/v1/change/contact/uid/uid-a"
            )
            .hyphenated()
            .to_string()
        );
    }
}
