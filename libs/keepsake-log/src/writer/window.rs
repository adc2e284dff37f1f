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
