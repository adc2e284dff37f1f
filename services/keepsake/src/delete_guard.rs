//! The mass-delete guard for DAV clients. A REST push that deletes more than the guard allows
//! of one kind is refused unless it says `confirm_mass_delete`; a DAV client deletes one
//! resource per request, which that per-push check never stops. So deletes made over DAV are
//! counted per user and kind over a window ([`WINDOW`]): once a window's deletes pass the
//! same bounds (more than `min_items`, and more than `max_share` of the live items when the
//! window began), further DAV deletes of that kind are refused with a `403` and the
//! `keepsake:mass-delete-confirmation` precondition, until the user confirms from a REST
//! device (`POST /v1/mass-delete-confirmation`, valid for [`CONFIRMED_FOR`]) or the window
//! ends.
//!
//! Invariants: the guard only refuses (it never deletes); a refused delete writes nothing;
//! every delete it lets through is an ordinary, restorable event. A delete it admits counts
//! even if the push then refuses it (a stale `If-Match`): the count errs towards asking. Its
//! counts are this process's: with several servers, each counts the deletes it serves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keepsake_model::{Kind, MassDeleteGuard, UserId};

/// How long deletes are counted together.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long a confirmation lets a user's DAV clients delete past the guard.
pub const CONFIRMED_FOR: Duration = Duration::from_secs(10 * 60);

#[derive(Debug)]
struct Window {
    began: Instant,
    live_at_start: usize,
    deletes: usize,
}

/// The deletes counted and the confirmations given, per user (and kind).
#[derive(Debug, Default)]
pub struct DeleteGuard {
    windows: Mutex<HashMap<(UserId, Kind), Window>>,
    confirmed: Mutex<HashMap<UserId, Instant>>,
}

/// A delete the guard refuses: how many this window already deleted, of how many live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub deletes: usize,
    pub live: usize,
}

impl DeleteGuard {
    /// Whether one more delete of `kind` by `user` may go ahead, with `live` live items of the
    /// kind now; counts it when it may.
    pub fn admit(
        &self,
        user: UserId,
        kind: Kind,
        live: usize,
        bounds: &MassDeleteGuard,
        now: Instant,
    ) -> Result<(), Refused> {
        self.admit_many(user, kind, 1, live, bounds, now)
    }

    /// Whether `count` more deletes of `kind` by `user` may go ahead together (a collection's
    /// items); counts them when they may.
    pub fn admit_many(
        &self,
        user: UserId,
        kind: Kind,
        count: usize,
        live: usize,
        bounds: &MassDeleteGuard,
        now: Instant,
    ) -> Result<(), Refused> {
        let confirmed = self
            .confirmed
            .lock()
            .map(|c| c.get(&user).is_some_and(|until| now < *until))
            .unwrap_or(false);
        let Ok(mut windows) = self.windows.lock() else {
            // A poisoned count refuses nothing: the guard is a brake, not the only copy.
            return Ok(());
        };
        windows.retain(|_, w| now.duration_since(w.began) < WINDOW);
        let window = windows.entry((user, kind)).or_insert(Window {
            began: now,
            live_at_start: live,
            deletes: 0,
        });
        let after = window.deletes + count;
        let too_many = after > bounds.min_items
            && (after as f64) > bounds.max_share * (window.live_at_start as f64);
        if too_many && !confirmed {
            return Err(Refused {
                deletes: window.deletes,
                live: window.live_at_start,
            });
        }
        window.deletes = after;
        Ok(())
    }

    /// The user confirms mass deletes by their DAV clients until `now + CONFIRMED_FOR`.
    pub fn confirm(&self, user: UserId, now: Instant) -> Instant {
        let until = now + CONFIRMED_FOR;
        if let Ok(mut confirmed) = self.confirmed.lock() {
            confirmed.retain(|_, u| now < *u);
            confirmed.insert(user, until);
        }
        until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn deletes_past_the_bounds_are_refused_until_confirmed_or_the_window_ends() {
        let guard = DeleteGuard::default();
        let bounds = MassDeleteGuard {
            min_items: 3,
            max_share: 0.5,
        };
        let user = UserId(Uuid::from_u128(1));
        let t = Instant::now();
        // 10 live contacts: 5 deletes pass (min 3, half of 10), the 6th is refused.
        for i in 0..5 {
            assert_eq!(guard.admit(user, Kind::Contact, 10 - i, &bounds, t), Ok(()));
        }
        assert_eq!(
            guard.admit(user, Kind::Contact, 5, &bounds, t),
            Err(Refused {
                deletes: 5,
                live: 10
            })
        );
        // Another kind and another user have their own counts.
        assert_eq!(guard.admit(user, Kind::Event, 10, &bounds, t), Ok(()));
        let other = UserId(Uuid::from_u128(2));
        assert_eq!(guard.admit(other, Kind::Contact, 10, &bounds, t), Ok(()));
        // Confirmed: it passes, until the confirmation runs out.
        guard.confirm(user, t);
        assert_eq!(guard.admit(user, Kind::Contact, 5, &bounds, t), Ok(()));
        let later = t + CONFIRMED_FOR + Duration::from_secs(1);
        // The window has ended too by then: a new window starts from the live count.
        assert_eq!(guard.admit(user, Kind::Contact, 4, &bounds, later), Ok(()));
        // Small sets never trip it: 3 of 4 is within min_items.
        let small = UserId(Uuid::from_u128(3));
        for _ in 0..3 {
            assert_eq!(guard.admit(small, Kind::Note, 4, &bounds, t), Ok(()));
        }
    }
}
