//! Turns at upkeep: at most [`LogConfig::upkeep_parallelism`](crate::LogConfig) shards of a
//! process run upkeep at once, and a freed turn goes to the shard that needs it most, not the
//! one that asked first:
//!
//! - a due checkpoint before any compaction: a shard waiting to checkpoint has a tail that grows
//!   with every push, and every cold load of one of its users reads that tail; compaction only
//!   tidies segments a checkpoint already covers, so it can wait;
//! - among checkpoints, the shard with the most events since its last;
//! - otherwise the one that asked first.
//!
//! A waiter states its need again every `recheck` (its tail grows while it waits) and whenever
//! a turn is freed. Invariant: a turn is free only while no waiter could take it, up to one
//! recheck of a waiter's stale need.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// What a shard waits for a turn to do. Ordered by urgency: the greater goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Need {
    /// Compact the segments its newest checkpoint covers.
    Compaction,
    /// Write a checkpoint over `events` events since its last.
    Checkpoint { events: u64 },
}

/// The turns of one process, shared by its shards' upkeep.
pub(crate) struct Turns {
    queue: Mutex<Queue>,
    changed: Notify,
    recheck: Duration,
}

#[derive(Default)]
struct Queue {
    free: usize,
    next_ticket: u64,
    /// Waiters by ticket (the order they asked in), with the need each stated last.
    waiting: BTreeMap<u64, Need>,
}

impl Queue {
    /// The waiter a free turn goes to: the greatest need, then the first to ask.
    fn first_in_line(&self) -> Option<u64> {
        self.waiting
            .iter()
            .max_by_key(|(ticket, need)| (**need, std::cmp::Reverse(**ticket)))
            .map(|(ticket, _)| *ticket)
    }
}

/// A turn at upkeep; freed when dropped.
pub(crate) struct Turn {
    turns: Arc<Turns>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.lock().free += 1;
        self.turns.changed.notify_waiters();
    }
}

/// Takes a waiter out of the queue however its wait ends (a turn, or a stop that drops it).
struct Leave<'a> {
    turns: &'a Turns,
    ticket: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if self.turns.lock().waiting.remove(&self.ticket).is_some() {
            // It may have been first in line: the next one looks again.
            self.turns.changed.notify_waiters();
        }
    }
}

impl Turns {
    /// `n` turns (at least one); waiters restate their need every `recheck`.
    pub(crate) fn new(n: usize, recheck: Duration) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue {
                free: n.max(1),
                ..Queue::default()
            }),
            changed: Notify::new(),
            recheck,
        })
    }

    /// The queue is consistent after every statement (no state spans a panic), so a poisoned
    /// lock is taken as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a turn; `need` says what for, asked again while waiting.
    pub(crate) async fn take(self: &Arc<Self>, need: impl Fn() -> Need) -> Turn {
        let first = need();
        let ticket = {
            let mut q = self.lock();
            let ticket = q.next_ticket;
            q.next_ticket += 1;
            q.waiting.insert(ticket, first);
            ticket
        };
        let _leave = Leave {
            turns: self,
            ticket,
        };
        loop {
            let freed = self.changed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a turn freed after the look wakes this waiter.
            freed.as_mut().enable();
            let now = need();
            {
                let mut q = self.lock();
                q.waiting.insert(ticket, now);
                if q.free > 0 && q.first_in_line() == Some(ticket) {
                    q.free -= 1;
                    q.waiting.remove(&ticket);
                    return Turn {
                        turns: self.clone(),
                    };
                }
            }
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep(self.recheck) => {}
            }
        }
    }

    /// Shards waiting for a turn now.
    /// The most events since its checkpoint of any shard waiting for a turn with a checkpoint
    /// due (0: none): a resting upkeep stops resting for a shard that has fallen behind.
    pub(crate) fn most_events_waiting(&self) -> u64 {
        self.lock()
            .waiting
            .values()
            .map(|n| match n {
                Need::Checkpoint { events } => *events,
                Need::Compaction => 0,
            })
            .max()
            .unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const RECHECK: Duration = Duration::from_millis(5);

    /// Starts a waiter that records the order it got its turn in, and holds the turn until
    /// told (a oneshot) so the next one waits.
    fn waiter(
        turns: &Arc<Turns>,
        need: Arc<AtomicU64>,
        compaction: bool,
        order: Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let turns = turns.clone();
        tokio::spawn(async move {
            let _turn = turns
                .take(|| {
                    if compaction {
                        Need::Compaction
                    } else {
                        Need::Checkpoint {
                            events: need.load(Ordering::Relaxed),
                        }
                    }
                })
                .await;
            order
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(name);
        })
    }

    async fn until_waiting(turns: &Turns, n: usize) {
        while turns.waiting() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_freed_turn_goes_to_the_greatest_need_then_the_first_to_ask() {
        let turns = Turns::new(1, RECHECK);
        let held = turns.take(|| Need::Compaction).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let few = Arc::new(AtomicU64::new(10));
        let grows = Arc::new(AtomicU64::new(5));
        let mut tasks = Vec::new();
        tasks.push(waiter(
            &turns,
            Arc::default(),
            true,
            order.clone(),
            "compaction",
        ));
        until_waiting(&turns, 1).await;
        tasks.push(waiter(&turns, few.clone(), false, order.clone(), "few"));
        until_waiting(&turns, 2).await;
        tasks.push(waiter(
            &turns,
            few.clone(),
            false,
            order.clone(),
            "few, later",
        ));
        until_waiting(&turns, 3).await;
        tasks.push(waiter(&turns, grows.clone(), false, order.clone(), "grew"));
        until_waiting(&turns, 4).await;
        // It asked last with the fewest events; its tail grew while it waited.
        grows.store(1_000, Ordering::Relaxed);
        tokio::time::sleep(RECHECK * 4).await;
        drop(held);
        for t in tasks {
            t.await.expect("waiter");
        }
        assert_eq!(
            *order.lock().unwrap_or_else(PoisonError::into_inner),
            ["grew", "few", "few, later", "compaction"]
        );
        assert_eq!(turns.waiting(), 0);
        assert_eq!(turns.lock().free, 1, "every turn was given back");
    }

    #[tokio::test]
    async fn a_waiter_that_stops_waiting_does_not_hold_up_the_line() {
        let turns = Turns::new(1, Duration::from_secs(3600));
        let held = turns.take(|| Need::Compaction).await;
        let urgent = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _turn = turns.take(|| Need::Checkpoint { events: 99 }).await;
            })
        };
        until_waiting(&turns, 1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let next = waiter(&turns, Arc::default(), true, order.clone(), "compaction");
        until_waiting(&turns, 2).await;
        urgent.abort();
        let _ = urgent.await;
        drop(held);
        // Woken by the freed turn, not by a recheck an hour away.
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("the next waiter got the turn")
            .expect("waiter");
        assert_eq!(turns.waiting(), 0);
    }

    #[tokio::test]
    async fn there_are_as_many_turns_as_configured_and_at_least_one() {
        let two = Turns::new(2, RECHECK);
        let a = two.take(|| Need::Compaction).await;
        let b = two.take(|| Need::Compaction).await;
        assert!(
            tokio::time::timeout(RECHECK * 4, two.take(|| Need::Compaction))
                .await
                .is_err()
        );
        drop((a, b));
        let _c = two.take(|| Need::Compaction).await;
        let zero = Turns::new(0, RECHECK);
        let _d = zero.take(|| Need::Compaction).await;
    }
}
