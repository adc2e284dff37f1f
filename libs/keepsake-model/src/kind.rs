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
    }
);

impl Kind {
    /// The `@type` a document of this kind may carry (JSContact / JSCalendar names).
    pub fn json_type(&self) -> &'static str {
        match self {
            Kind::Contact => "Card",
            Kind::Event => "Event",
            Kind::Task => "Task",
            Kind::Note => "Note",
        }
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
        assert_eq!(
            serde_json::to_string(&Kind::Contact).ok().as_deref(),
            Some("\"contact\"")
        );
    }
}
