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

/// Other pushes expected within one latency budget at which a small batch waits the budget out:
/// below it a wait mostly ends with the batch it began with, one PUT for one push all the same.
pub(super) const COMPANY_WORTH_WAITING: f64 = 1.0;
/// One batch's sample counts at most this many (a burst after an idle spell is not a rate).
const COMPANY_SAMPLE_MAX: f64 = 16.0;

/// How many other pushes a shard's small batch may expect to gather within the latency budget,
/// from what its recent batches gathered (a moving average of each batch's others, scaled from
/// the time it stayed open to the budget). A budget is a price for company: a device pushing
/// alone, one push after another (a phone importing its address book, a CardDAV client's PUTs)
/// gathers none, and waiting would add the budget to each of its pushes and save no PUT. So a
/// small batch waits the budget out only while company is expected; batches that do not wait
/// are still observed (the pushes that queued during the previous PUT), so waiting resumes
/// when others start pushing. A shard with no record waits (what the budget promises).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Company {
    expected: f64,
}

impl Default for Company {
    fn default() -> Self {
        Self {
            expected: COMPANY_WORTH_WAITING,
        }
    }
}

impl Company {
    /// Whether a small batch should wait out the budget.
    pub(super) fn worth_waiting(self) -> bool {
        self.expected >= COMPANY_WORTH_WAITING
    }

    /// Records a batch whose first push was joined by `others` pushes with changes while the
    /// batch stayed `open` (from the first push's arrival to the end of filling; counted as
    /// at least one commit `window`).
    pub(super) fn observe(
        &mut self,
        others: usize,
        open: std::time::Duration,
        budget: std::time::Duration,
        window: std::time::Duration,
    ) {
        let span = open.max(window).max(std::time::Duration::from_micros(1));
        let sample =
            (others as f64 * budget.as_secs_f64() / span.as_secs_f64()).min(COMPANY_SAMPLE_MAX);
        self.expected = (self.expected * 3.0 + sample) / 4.0;
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
    fn company_is_expected_while_batches_gather_it_and_not_after_they_stop() {
        let ms = Duration::from_millis;
        let (budget, window) = (ms(100), ms(10));
        // A shard with no record waits.
        let mut c = Company::default();
        assert!(c.worth_waiting());
        // A device pushing alone: its first wait gathers nobody, and from then on it does
        // not wait (its batches close at once, with nobody else in them).
        c.observe(0, ms(100), budget, window);
        assert!(!c.worth_waiting());
        for _ in 0..10 {
            c.observe(0, ms(0), budget, window);
            assert!(!c.worth_waiting());
        }
        // Others start pushing: one joins a batch that did not wait (it queued during the
        // previous PUT, within a window): one per 10 ms is ten per budget. Waiting resumes.
        c.observe(1, ms(0), budget, window);
        assert!(c.worth_waiting(), "{c:?}");
        // Waits that gather about three pushes per budget keep it waiting...
        for _ in 0..50 {
            c.observe(3, ms(95), budget, window);
            assert!(c.worth_waiting(), "{c:?}");
        }
        // ...and a run of waits that gather nobody ends it.
        let mut waits = 0;
        while c.worth_waiting() {
            c.observe(0, ms(95), budget, window);
            waits += 1;
        }
        assert!((2..=8).contains(&waits), "{waits}");
        // One batch's burst after an idle spell counts as at most COMPANY_SAMPLE_MAX.
        let mut c = Company { expected: 0.0 };
        c.observe(1_000, ms(0), budget, window);
        assert!(c.expected <= COMPANY_SAMPLE_MAX / 4.0 + 1e-9, "{c:?}");
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
