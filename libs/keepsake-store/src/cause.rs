//! Why a store request was sent: the work it was for, so that `/metrics` (and the bill) can
//! split the store's requests by cause — pushes, reads, checkpoints, compaction, the device
//! registry's refresh — and show which periodic task grows with the store.
//!
//! The cause is a tokio task-local, set around a task's work with [`with_cause`]; a task spawned
//! from inside it carries it on only when wrapped with [`inherit`]. A request made outside any
//! cause counts as [`Cause::Other`].

use std::future::Future;

/// The work a store request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Opening the log: recovering every shard, the registry's first load.
    Startup,
    /// Shard writers: segment PUTs, their confirmation and read-backs, catching up.
    Push,
    /// Answering devices and reads: loading users, pulls, point-in-time reads, exports.
    Read,
    /// Writing checkpoints.
    Checkpoint,
    /// Compaction: history objects, their verification, deleting their sources.
    Compaction,
    /// Checkpoint retention.
    Retention,
    /// The device registry: registrations, revocations and their periodic refresh.
    Devices,
    /// Restores, of one user or of the fleet.
    Restore,
    /// Other operator calls: verify, rebuild, compact now, listings.
    Operator,
    /// Anything not attributed.
    Other,
}

impl Cause {
    /// Every cause, in the order metrics show them.
    pub const ALL: [Cause; 10] = [
        Cause::Startup,
        Cause::Push,
        Cause::Read,
        Cause::Checkpoint,
        Cause::Compaction,
        Cause::Retention,
        Cause::Devices,
        Cause::Restore,
        Cause::Operator,
        Cause::Other,
    ];

    /// The label metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Startup => "startup",
            Cause::Push => "push",
            Cause::Read => "read",
            Cause::Checkpoint => "checkpoint",
            Cause::Compaction => "compaction",
            Cause::Retention => "retention",
            Cause::Devices => "devices",
            Cause::Restore => "restore",
            Cause::Operator => "operator",
            Cause::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        Cause::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

tokio::task_local! {
    static CAUSE: Cause;
}

/// Runs `f` with its store requests counted under `cause`.
pub async fn with_cause<F: Future>(cause: Cause, f: F) -> F::Output {
    CAUSE.scope(cause, f).await
}

/// `f`, counted under the cause of the task that calls this (for a task about to be spawned).
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    CAUSE.scope(current(), f)
}

/// The cause requests made now are counted under.
pub fn current() -> Cause {
    CAUSE.try_with(|c| *c).unwrap_or(Cause::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cause_holds_in_its_scope_and_in_tasks_that_inherit_it() {
        assert_eq!(current(), Cause::Other);
        with_cause(Cause::Checkpoint, async {
            assert_eq!(current(), Cause::Checkpoint);
            let inherited = tokio::spawn(inherit(async { current() }));
            let plain = tokio::spawn(async { current() });
            assert_eq!(inherited.await.ok(), Some(Cause::Checkpoint));
            assert_eq!(plain.await.ok(), Some(Cause::Other));
            with_cause(Cause::Compaction, async {
                assert_eq!(current(), Cause::Compaction);
            })
            .await;
            assert_eq!(current(), Cause::Checkpoint);
        })
        .await;
    }
}
