//! The view's memory budget is only as good as its count: `UserState::approx_bytes` must be
//! close to what a state really holds in the allocator, or a view "within" its budget holds
//! more (under `make sustained` the process held ~1.4 GiB of states while the view counted
//! ~0.95). This binary (one test, so nothing else allocates while it measures) builds users as
//! the live view does — items put, then updated with links to earlier versions, change ids
//! retired past the view's limit — and compares the sum of their counts with what jemalloc,
//! the server's allocator, says they took.
#![allow(clippy::expect_used, clippy::print_stdout)]

use chrono::{TimeZone, Utc};
use keepsake_log::EXACT_CHANGE_IDS;
use keepsake_model::fixtures::{Rng, document};
use keepsake_model::{
    ChangeId, DeviceId, Document, Event, EventId, ItemId, Kind, Op, Origin, StateRead, UserId,
    UserState, apply,
};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn allocated() -> usize {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().expect("jemalloc epoch");
    stats::allocated::read().expect("jemalloc statistics")
}

/// One user as the view holds it: `items` contacts put, then `updates` puts over them in turn.
fn user(rng: &mut Rng, items: usize, updates: usize) -> UserState {
    let user_id = UserId(rng.uuid());
    let device = DeviceId(rng.uuid());
    let ids: Vec<ItemId> = (0..items).map(|_| ItemId(rng.uuid())).collect();
    let mut state = UserState::default();
    state.enable_version_links();
    let t = Utc
        .with_ymd_and_hms(2026, 12, 4, 12, 0, 0)
        .single()
        .expect("a time");
    for n in 0..items + updates {
        let item_id = ids[n % items];
        let version = state.item(&item_id).map_or(0, |i| i.version) + 1;
        let event = Event {
            user_id,
            seq: state.last_seq() + 1,
            event_id: EventId(rng.uuid()),
            change_id: ChangeId(rng.uuid()),
            device_id: Some(device),
            origin: Origin::Device,
            request_id: None,
            restore_id: None,
            kind: Kind::Contact,
            item_id,
            op: Op::Put,
            version,
            recorded_at: t,
            document: Some(Document::from_object(&document(Kind::Contact, rng))),
        };
        apply(&mut state, &event).expect("a valid event");
        // What the view does after each commit.
        if state.changes_to_retire(EXACT_CHANGE_IDS) {
            state.retire_changes(EXACT_CHANGE_IDS);
        }
    }
    state
}

#[test]
fn a_states_count_is_within_a_tenth_of_what_the_allocator_gives_it() {
    const USERS: usize = 500;
    // Objects a thread frees sit in its cache, counted as allocated: without the cache the
    // counts are exact.
    {
        use tikv_jemalloc_ctl::{Access, AsName};
        b"thread.tcache.enabled\0"
            .name()
            .write(false)
            .expect("jemalloc thread cache");
    }
    let mut rng = Rng::new(15);
    let mut report = Vec::new();
    for (items, updates) in [(20, 0), (20, 10), (20, 40), (20, 200), (200, 0)] {
        let before = allocated();
        // The states' own bytes are in the vector, which `approx_bytes` counts.
        let mut states = Vec::with_capacity(USERS);
        for _ in 0..USERS {
            states.push(user(&mut rng, items, updates));
        }
        let held = allocated().saturating_sub(before);
        let counted: usize = states.iter().map(UserState::approx_bytes).sum();
        let ratio = counted as f64 / held as f64;
        println!(
            "{items} items, {updates} updates: {:.0} bytes a user held, {:.0} counted ({ratio:.2})",
            held as f64 / USERS as f64,
            counted as f64 / USERS as f64,
        );
        report.push((items, updates, ratio));
        drop(states);
    }
    for (items, updates, ratio) in report {
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{items} items and {updates} updates a user: counted / held = {ratio:.2}"
        );
    }
}
