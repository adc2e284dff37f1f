//! The commit window's arithmetic: when a batch stops filling, and the moving estimate of how
//! long preparing a batch takes (invariant 1 of [`super`]).

use tokio::time::Instant;

/// When a batch stops filling. Its PUT may start one commit window after the previous one, and
/// preparing it (load, stage, encode) takes about `prepare_estimate`, so filling stops that long
/// before the window ends. But devices answered by the previous batch get a quarter window to
/// send their next push: closing right after the answers (after a slow batch) would send them
/// all to the batch after, a whole cycle later. With no previous PUT, a batch closes at once.
pub(super) fn fill_deadline(
    first_enqueued: Instant,
    last_put: Option<Instant>,
    prepare_estimate: std::time::Duration,
    answered_at: Option<Instant>,
    window: std::time::Duration,
) -> Instant {
    let by_window = last_put.map_or(first_enqueued, |t| {
        t + window - prepare_estimate.min(window)
    });
    answered_at.map_or(by_window, |a| by_window.max(a + window / 4))
}

/// When a batch that has not reached enough changes stops filling: `by_window` (from
/// [`fill_deadline`]) or, with a latency budget, as late as the budget allows its first push to
/// wait before its PUT starts (the preparation estimate comes out of the budget). Never
/// earlier than the window.
pub(super) fn budget_deadline(
    first_enqueued: Instant,
    by_window: Instant,
    prepare_estimate: std::time::Duration,
    budget: std::time::Duration,
) -> Instant {
    by_window.max(first_enqueued + budget.saturating_sub(prepare_estimate))
}

/// How long after its user's previous answer a push still counts as one of a sequence (beyond
/// the latency budget): a device sending its pushes one after another sends the next after a
/// round trip (a mobile network's is 100-600 ms), its own turn, and the server's reads before
/// queueing (a cold load). Devices under the bill's model push a few times an hour at most.
pub(crate) const SEQUENCE_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// How soon after an answer a push counts as a client's reaction to it, not as company: a
/// client on the server's network (a load tool, an importer, a sync gateway keeping a few
/// users' pushes in flight) sends its next push within a few milliseconds of its answer, to
/// whichever shard that user's push goes. A process whose pushes all come that way gains
/// nothing by waiting: nobody else is pushing, and its clients send nothing more until they
/// are answered (a bounded-concurrency client's whole round is in the batches). Devices over
/// a mobile network react after a round trip; the same device's next push is
/// [`SEQUENCE_GAP`]'s.
pub(crate) const REACTION: std::time::Duration = std::time::Duration::from_millis(25);

/// Whether a push at `at` reacted to an answer given at `last`.
fn reacted(last: Instant, at: Instant) -> bool {
    last <= at && at.duration_since(last) <= REACTION
}

/// When the process last answered a batch, on any shard: a push that enters the log within
/// [`REACTION`] of it reacted to an answer ([`Reactions::arrival_now`]); and how much time so
/// far has been outside a reaction of any answer ([`Reactions::uncovered`]), the time company
/// is counted in. Shared by the log and its shard writers; written once per answered batch,
/// read once per push and once per batch.
#[derive(Debug)]
pub(crate) struct Reactions {
    /// Where the process's time outside reactions starts.
    base: Instant,
    inner: std::sync::Mutex<ReactionClock>,
}

impl Default for Reactions {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            inner: Default::default(),
        }
    }
}

#[derive(Debug, Default)]
struct ReactionClock {
    /// The last answer.
    last: Option<Instant>,
    /// Time within a reaction of some answer, up to `last + REACTION`.
    covered: std::time::Duration,
}

impl Reactions {
    fn clock(&self) -> std::sync::MutexGuard<'_, ReactionClock> {
        // The clock is two plain values, consistent after any panic: take it back.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an answer given at `at` (taken before answering, so that a reaction cannot
    /// enter the log before its answer is recorded).
    pub(crate) fn answered(&self, at: Instant) {
        let mut c = self.clock();
        let end = at + REACTION;
        match c.last {
            Some(last) if last >= at => {}
            Some(last) => {
                let from = at.max(last + REACTION);
                c.covered += end.saturating_duration_since(from);
                c.last = Some(at);
            }
            None => {
                c.covered = REACTION;
                c.last = Some(at);
            }
        }
    }

    /// A push entering the log now: whether it came within [`REACTION`] after the last answer,
    /// and the time outside reactions it came at ([`Reactions::uncovered`]), in one look. The
    /// moment is taken under the lock, so that no answer recorded in between can be later than
    /// it (an answer's moment is taken before it is recorded).
    pub(crate) fn arrival_now(&self) -> (bool, std::time::Duration) {
        let c = self.clock();
        let at = Instant::now();
        let reacted = c.last.is_some_and(|last| reacted(last, at));
        (reacted, self.uncovered_in(&c, at))
    }

    /// Time since the process began counting, less the time within a reaction of some
    /// answer, up to `at`: the clock that [`Company`] counts arrivals by.
    pub(crate) fn uncovered(&self, at: Instant) -> std::time::Duration {
        let c = self.clock();
        self.uncovered_in(&c, at)
    }

    /// [`Reactions::uncovered`] on a clock already read.
    fn uncovered_in(&self, c: &ReactionClock, at: Instant) -> std::time::Duration {
        at.saturating_duration_since(self.base)
            .saturating_sub(covered_in(c, at))
    }

    #[cfg(test)]
    fn covered(&self, at: Instant) -> std::time::Duration {
        covered_in(&self.clock(), at)
    }
}

/// Time within a reaction of some answer, up to `at` (a moment not before the last answer's
/// recording; one a few microseconds before it is off by as much).
fn covered_in(c: &ReactionClock, at: Instant) -> std::time::Duration {
    let ahead = c
        .last
        .map_or(std::time::Duration::ZERO, |last| {
            (last + REACTION).saturating_duration_since(at)
        })
        .min(REACTION);
    c.covered.saturating_sub(ahead)
}

/// Other pushes expected within one latency budget at which a small batch waits the budget out:
/// below it a wait mostly ends with the batch it began with, one PUT for one push all the same.
pub(super) const COMPANY_WORTH_WAITING: f64 = 1.0;
/// The arrival rate's memory, in latency budgets (of time outside reactions): long enough to
/// hold about ten arrivals at the rate worth waiting for, short enough that a change of load
/// shows within a few seconds of such time at the budgets one would choose.
const COMPANY_MEMORY_BUDGETS: f64 = 10.0;

/// How many other pushes a shard's small batch may expect to gather within the latency budget:
/// the shard's rate of devices' pushes that did not react to an answer of the process
/// ([`REACTION`]), times the budget. A budget is a price for company: a device pushing alone,
/// one push after another (a phone importing its address book, a CardDAV client's PUTs), or a
/// client that keeps a few users' pushes in flight and sends the next when one is answered (its
/// whole round is in the batches) brings none, and waiting would add the budget to each of its
/// rounds and save no PUT.
///
/// The rate is counted in time outside reactions ([`Reactions::uncovered`]): the reactions
/// left out of the count are left out of the time too, so independent arrivals are counted at
/// their true rate however often the process answers. An exponentially decaying count with a
/// memory of [`COMPANY_MEMORY_BUDGETS`] budgets; a shard's record starts at its first push, at
/// the rate worth waiting for (what the budget promises), which fades if nobody comes. A batch
/// decides before its first push is counted (at an arrival the count is one more than the
/// rate's mean). While the process answers every few milliseconds there is little time
/// outside reactions, and the rate holds about where it was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Company {
    /// Arrivals, decayed to `at`.
    count: f64,
    /// Time outside reactions when `count` was last decayed; `None` until the shard's first
    /// push (the record starts there, at the rate worth waiting for).
    at: Option<std::time::Duration>,
}

impl Default for Company {
    fn default() -> Self {
        Self {
            count: COMPANY_WORTH_WAITING * COMPANY_MEMORY_BUDGETS,
            at: None,
        }
    }
}

impl Company {
    fn decay_to(&mut self, at: std::time::Duration, budget: std::time::Duration) {
        match self.at {
            Some(last) if at > last => {
                let memory = budget.as_secs_f64() * COMPANY_MEMORY_BUDGETS;
                if memory > 0.0 {
                    self.count *= (-(at - last).as_secs_f64() / memory).exp();
                }
                self.at = Some(at);
            }
            Some(_) => {}
            None => self.at = Some(at),
        }
    }

    /// Counts a device's push that did not react to an answer, queued at `at` (time outside
    /// reactions).
    pub(super) fn arrived(&mut self, at: std::time::Duration, budget: std::time::Duration) {
        self.decay_to(at, budget);
        self.count += 1.0;
    }

    /// Others expected within one budget, at `at` (time outside reactions).
    pub(super) fn expected(&mut self, at: std::time::Duration, budget: std::time::Duration) -> f64 {
        self.decay_to(at, budget);
        self.count / COMPANY_MEMORY_BUDGETS
    }

    /// Whether a small batch opening at `at` should wait out the budget.
    pub(super) fn worth_waiting(
        &mut self,
        at: std::time::Duration,
        budget: std::time::Duration,
    ) -> bool {
        self.expected(at, budget) >= COMPANY_WORTH_WAITING
    }
}

/// The preparation time estimate after a batch that took `sample`: a moving average, so that
/// one slow batch does not close the next fill early.
pub(super) fn next_estimate(
    estimate: std::time::Duration,
    sample: std::time::Duration,
) -> std::time::Duration {
    if estimate.is_zero() {
        sample
    } else {
        (estimate * 3 + sample) / 4
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn company_is_the_rate_of_arrivals_that_did_not_react_times_the_budget() {
        let ms = Duration::from_millis;
        let budget = ms(100);
        // A shard with no record waits, however long after the process began; with nobody
        // coming the rate fades, in about a memory's time (10 budgets: 1 s here) to e^-1.
        let mut c = Company::default();
        assert!(c.worth_waiting(ms(5_000), budget));
        assert!(!c.worth_waiting(ms(5_010), budget));
        let e = c.expected(ms(6_000), budget);
        assert!((e - (-1.0f64).exp()).abs() < 0.01, "{e}");
        // A device pushing alone every 1.25 s: its first push waits (no record), then 0.08
        // per budget, never worth waiting.
        // (As the writer does: decide, then count the push.)
        let mut c = Company::default();
        let mut at = ms(1_250);
        assert!(c.worth_waiting(at, budget));
        c.arrived(at, budget);
        for _ in 0..40 {
            at += ms(1_250);
            assert!(!c.worth_waiting(at, budget), "{c:?}");
            c.arrived(at, budget);
        }
        let e = c.expected(at, budget);
        assert!((0.05..0.15).contains(&e), "{e}");
        // Pushes every 20 ms (five per budget) come to about five expected, and waiting.
        for _ in 0..500 {
            at += ms(20);
            c.arrived(at, budget);
        }
        let e = c.expected(at, budget);
        assert!((4.5..5.6).contains(&e), "{e}");
        // They stop: within about two memories (2 s of time outside reactions) it is not
        // worth waiting any more.
        assert!(c.worth_waiting(at + ms(1_000), budget));
        assert!(!c.worth_waiting(at + ms(2_000), budget));
        // Arrivals stamped out of order (queued by different tasks) count without decaying.
        let mut c = Company::default();
        c.arrived(ms(400), budget);
        c.arrived(ms(500), budget);
        let before = c.count;
        c.arrived(ms(400), budget);
        assert_eq!(c.count, before + 1.0);
    }

    #[test]
    fn a_push_soon_after_any_answer_reacted_to_it_and_that_time_is_counted() {
        let ms = Duration::from_millis;
        let r = Reactions::default();
        let t0 = Instant::now();
        // No answer yet: nothing reacted, nothing covered.
        assert!(!r.arrival_now().0);
        assert_eq!(r.covered(t0 + ms(1_000)), Duration::ZERO);
        let a = t0 + ms(100);
        assert!(reacted(a, a));
        assert!(reacted(a, a + REACTION));
        assert!(!reacted(a, a + ms(1) + REACTION));
        assert!(
            !reacted(a, t0 + ms(99)),
            "before the answer: not a reaction to it"
        );
        r.answered(a);
        assert_eq!(r.covered(t0 + ms(100)), Duration::ZERO);
        assert_eq!(r.covered(t0 + ms(110)), ms(10));
        assert_eq!(r.covered(t0 + ms(500)), REACTION);
        // An answer within the reaction of the last extends it (no time counted twice).
        r.answered(t0 + ms(110));
        assert_eq!(r.covered(t0 + ms(500)), REACTION + ms(10));
        // An earlier answer (another shard's, recorded late) changes nothing.
        r.answered(t0 + ms(50));
        assert_eq!(r.clock().last, Some(t0 + ms(110)));
        assert_eq!(r.covered(t0 + ms(500)), REACTION + ms(10));
        // A push now, just after an answer now (a clock whose answers are not in the future).
        let now = Reactions::default();
        now.answered(Instant::now());
        assert!(now.arrival_now().0);
        // A later answer after a gap: its whole reaction is counted.
        r.answered(t0 + ms(1_000));
        assert_eq!(r.covered(t0 + ms(2_000)), REACTION * 2 + ms(10));
        // Time outside reactions: since the clock began, less the covered time.
        let since = (t0 + ms(2_000)).saturating_duration_since(r.base);
        assert_eq!(r.uncovered(t0 + ms(2_000)), since - (REACTION * 2 + ms(10)));
    }

    #[test]
    fn a_fill_closes_before_the_window_by_the_preparation_time_but_not_right_after_answers() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let w = ms(10);
        // No previous PUT: close at once.
        assert_eq!(fill_deadline(t0 + ms(3), None, ms(4), None, w), t0 + ms(3));
        // Previous PUT at t0, preparing takes 4 ms: stop filling at 6 ms.
        assert_eq!(
            fill_deadline(t0 + ms(3), Some(t0), ms(4), Some(t0 + ms(2)), w),
            t0 + ms(6)
        );
        // A slow preparation estimate (9 ms) would close at 1 ms, before the answers of the
        // previous batch went out at 2 ms: those devices get until 2 + 2.5 ms.
        assert_eq!(
            fill_deadline(t0 + ms(3), Some(t0), ms(9), Some(t0 + ms(2)), w),
            t0 + ms(2) + w / 4
        );
        // An estimate beyond the window is capped at it.
        assert_eq!(fill_deadline(t0 + ms(3), Some(t0), ms(50), None, w), t0);
    }

    #[test]
    fn a_budget_holds_a_small_batch_open_after_its_first_push_but_never_below_the_window() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        // No budget: the window's deadline.
        assert_eq!(budget_deadline(t0, t0 + ms(6), ms(4), ms(0)), t0 + ms(6));
        // 200 ms budget, 4 ms to prepare: filling may go on until 196 ms after the first push.
        assert_eq!(
            budget_deadline(t0, t0 + ms(6), ms(4), ms(200)),
            t0 + ms(196)
        );
        // Preparing takes longer than the budget: the window's deadline.
        assert_eq!(
            budget_deadline(t0, t0 + ms(6), ms(300), ms(200)),
            t0 + ms(6)
        );
    }

    #[test]
    fn one_slow_batch_moves_the_estimate_a_quarter_of_the_way() {
        let ms = Duration::from_millis;
        assert_eq!(next_estimate(Duration::ZERO, ms(5)), ms(5));
        assert_eq!(next_estimate(ms(4), ms(8)), ms(5));
        assert_eq!(next_estimate(ms(8), ms(4)), ms(7));
    }
}
