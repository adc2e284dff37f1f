//! The errors of splitting, converting and exporting.
//!
//! [`EntryError`] is one entry's failure while splitting a text: it names the 1-based line
//! where the entry (or the stray text) starts, the UID when one was read, and the reason. The
//! entries before and after it are unaffected. [`ConvertError`] is one entry's or one
//! document's failure to convert. Messages name places and sizes, never content beyond a UID
//! or a property name (contact data is user data and may end up in logs).

use keepsake_model::Kind;

/// Why one entry of a text could not be taken out of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct EntryError {
    /// 1-based line where the failing entry (or the stray text) starts.
    pub line: usize,
    /// The entry's UID, when one was read before the failure.
    pub uid: Option<String>,
    /// What is wrong.
    pub reason: EntryErrorReason,
}

/// What is wrong with one entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryErrorReason {
    /// A physical line longer than the limit.
    #[error("line {line} is longer than {limit} bytes")]
    LineTooLong {
        /// The long line.
        line: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// An entry longer than the limit.
    #[error("the entry is longer than {limit} bytes")]
    EntryTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The text ended inside the entry.
    #[error("the text ends before END:{expected}")]
    Unterminated {
        /// The component that is still open (`VCARD`, `VEVENT`, `VCALENDAR`, ...).
        expected: String,
    },
    /// A BEGIN of a new entry, or an END of another component, inside the entry.
    #[error("line {line} has {found} where END:{expected} was expected")]
    Misnested {
        /// The line with the unexpected BEGIN/END.
        line: usize,
        /// The component that is still open.
        expected: String,
        /// What the line holds (`BEGIN:VCARD`, `END:VTODO`, ...).
        found: String,
    },
    /// Lines outside any entry that are neither blank nor an entry's start.
    #[error("{count} line(s) outside any BEGIN:{expected} ... END:{expected}")]
    Stray {
        /// How many lines in this run.
        count: usize,
        /// The entry the format expects (`VCARD` or `VCALENDAR`).
        expected: &'static str,
    },
    /// A calendar component that maps to no kind (VFREEBUSY, VAVAILABILITY, X- components).
    #[error("the component {component} is not imported (only VEVENT, VTODO and VJOURNAL are)")]
    UnsupportedComponent {
        /// The component's name.
        component: String,
    },
    /// A component of a UID that already had its own entry earlier in the same calendar, with
    /// other components between them (an event's exceptions must follow it).
    #[error(
        "UID already seen in an entry at line {first_line}: the components of one UID must be next to each other"
    )]
    SplitUid {
        /// Where the earlier entry of this UID starts.
        first_line: usize,
    },
}

/// Why an entry or a document could not be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The text is not a vCard / iCalendar object that calcard parses.
    #[error("not a valid {format}: {reason}")]
    Parse {
        /// `vCard` or `iCalendar`.
        format: &'static str,
        /// calcard's description (line text is not included).
        reason: String,
    },
    /// The calendar entry holds no VEVENT, VTODO or VJOURNAL, or more than one item.
    #[error(
        "the calendar entry holds {found} items; exactly one VEVENT, VTODO or VJOURNAL (with its exceptions) is imported per entry"
    )]
    NotOneItem {
        /// How many items the conversion gave.
        found: usize,
    },
    /// The document is not a JSON object, or not one calcard can read as JSContact/JSCalendar.
    #[error("the {kind} document cannot be converted: {reason}")]
    Document {
        /// The item's kind.
        kind: Kind,
        /// What calcard or this crate refused.
        reason: String,
    },
    /// Kind `device` has no text format; or a kind asked for in the other format.
    #[error("kind {kind} is not written as {format}")]
    WrongFormat {
        /// The item's kind.
        kind: Kind,
        /// The format asked for.
        format: crate::Format,
    },
    /// calcard panicked on this input. Caught so that one entry cannot take the server down;
    /// reported as the entry's error (a bug to report upstream with the input).
    #[error("the converter failed on this {0} (an internal error of calcard)")]
    ConverterPanicked(&'static str),
}
