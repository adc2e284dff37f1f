//! Closed vocabularies stored as text in segments: kinds, operations, origins.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire spelling.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses the stored and wire spelling; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// What an item is.
    Kind {
        /// A JSContact card.
        Contact => "contact",
        /// A JSCalendar event (calendar entry).
        Event => "event",
        /// A JSCalendar task.
        Task => "task",
        /// A note.
        Note => "note",
        /// An address book or a calendar: a named collection the user's items are kept in
        /// (`crate::collection`). Segment format 4 and checkpoint format 3.
        Collection => "collection",
        /// One of the user's devices, as the operator registered it: written only by the
        /// operator (origin `operator`), a put when it is registered and a delete when it is
        /// revoked, so the log records who could reach the user's data and when. Never served
        /// to devices, never restored. Segment format 2 and checkpoint format 2.
        Device => "device",
    }
);

text_enum!(
    /// What a change did to its item.
    Op {
        /// The whole document was replaced (or the item created or re-created).
        Put => "put",
        /// An RFC 7396 merge patch was applied.
        Patch => "patch",
        /// The item was deleted; a tombstone remains.
        Delete => "delete",
    }
);

text_enum!(
    /// Who caused an event.
    Origin {
        /// A handset pushed it.
        Device => "device",
        /// An operator's restore wrote it as a compensating change.
        Restore => "restore",
        /// An operator registered or revoked a device (kind `device`). Segment format 2.
        Operator => "operator",
        /// An operator imported it from a vCard or iCalendar file (`keepsake import`). Segment
        /// format 3.
        Import => "import",
    }
);

impl Kind {
    /// The kinds of the user's data: what devices push, pull and restore (every kind but
    /// `device`).
    pub const DATA: &'static [Kind] = &[
        Kind::Contact,
        Kind::Event,
        Kind::Task,
        Kind::Note,
        Kind::Collection,
    ];

    /// The kinds of items a collection holds: the data kinds but `collection` itself.
    pub const ITEMS: &'static [Kind] = &[Kind::Contact, Kind::Event, Kind::Task, Kind::Note];

    /// True for the kinds of the user's data; false for `device`, which only the operator
    /// writes.
    pub fn is_data(&self) -> bool {
        !matches!(self, Kind::Device)
    }

    /// The `@type` a document of this kind may carry (JSContact / JSCalendar names).
    pub fn json_type(&self) -> &'static str {
        match self {
            Kind::Contact => "Card",
            Kind::Event => "Event",
            Kind::Task => "Task",
            Kind::Note => "Note",
            Kind::Collection => "Collection",
            Kind::Device => "Device",
        }
    }
}

impl Origin {
    /// The one rule on who writes what: the operator writes `device` items and nothing else;
    /// devices and restores write the user's data and never `device` items (so a device cannot
    /// forge the audit trail of devices). Staging and `apply` both ask this.
    pub fn may_write(&self, kind: Kind) -> bool {
        (*self == Origin::Operator) != kind.is_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(*k));
        }
        for o in Op::ALL {
            assert_eq!(Op::parse(o.as_str()), Some(*o));
        }
        for o in Origin::ALL {
            assert_eq!(Origin::parse(o.as_str()), Some(*o));
        }
        assert_eq!(Kind::parse("Contact"), None);
        assert!(Kind::DATA.iter().all(Kind::is_data));
        assert_eq!(Kind::DATA.len() + 1, Kind::ALL.len());
        assert!(!Kind::Device.is_data());
        assert_eq!(
            serde_json::to_string(&Kind::Contact).ok().as_deref(),
            Some("\"contact\"")
        );
    }
}
