//! Keepsake's event model.
//!
//! - [`ids`]: UUID newtypes. [`kind`]: kinds, ops, origins.
//! - [`change`]: what devices send, and staging — the conflict, merge and idempotency rules.
//! - [`event`]: what the log stores. [`state`]: materialized state and [`state::apply`], the one
//!   pure function that folds events into state.
//! - [`collection`]: address books and calendars, and which one an item is kept in.
//! - [`clock`]: time and id generation behind traits, for deterministic tests.

pub mod change;
pub mod change_filter;
pub mod clock;
pub mod collection;
pub mod document;
pub mod event;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod ids;
pub mod kind;
pub mod memory;
pub mod state;

pub use change::{
    Ancestors, Change, ChangeBody, EventMeta, MassDeleteGuard, MassDeleteRefused, Need,
    NeedAncestor, OldChanges, Outcome, RejectCode, StageContext, StagePolicy, Staged,
};
pub use change_filter::{ChangeFilter, SEQS_PER_BLOCK};
pub use clock::{Clock, IdGenerator, ManualClock, RandomIds, SequentialIds, SystemClock};
pub use collection::{COLLECTION_PROPERTY, Holds};
pub use document::{Document, DocumentError, MAX_DEPTH, Probe};
pub use event::Event;
pub use ids::{
    BatchId, ChangeId, DeviceId, EventId, ItemId, RequestId, RestoreId, StoreId, UserId,
};
pub use kind::{Kind, Op, Origin};
pub use state::{
    ApplyError, ChangeRef, IdMap, ItemState, StateRead, StateWrite, UserState, apply, item_after,
};

#[cfg(test)]
mod tests;
