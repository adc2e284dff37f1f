//! The memory a process's views may hold, shared with its upkeep.
//!
//! A checkpoint's fold holds users' states while it runs (up to
//! [`crate::PartsPolicy::fold_bytes`]; ~470 MiB at the peak under `make sustained`), and a
//! compaction its segments' events, twice while it compares (up to
//! [`crate::CompactionPolicy::max_events`]). Counted apart from the views, they sat on top of
//! them: with a 1 GiB view budget the server peaked at 1.46 GiB resident. So both publish what
//! they hold ([`UpkeepMemory`]), and every shard's
//! view gives way by its share of it ([`ViewBudget::now`]): views and upkeep together stay
//! within the view budget, down to a floor of a quarter of each view's own budget, so that a
//! fold set larger than the budget cannot empty the views (then it is the fold's own setting
//! that bounds the rest).
//!
//! Invariants:
//! - [`UpkeepMemory::bytes`] is the sum of what every fold and compaction running now last
//!   published; a [`Holding`] takes its share back when dropped, so work that fails or is
//!   cancelled leaves nothing counted.
//! - [`ViewBudget::now`] never exceeds the shard's own budget, and never falls below a quarter
//!   of it.
//! - The budget covers the indexes a view keeps beside its users too
//!   ([`ViewBudget::now_beside`]; [`crate::ShardState`] measures them every
//!   [`crate::view::INDEX_MEASURE_EVERY`] commits): they grow with the users written since the
//!   checkpoint before the newest, and the process must stay within the budget plus a fixed
//!   overhead at any number of users.
//! - The views give way also by what the process is resident beyond its bound
//!   ([`ResidentExcess`], measured by the server): neither the allocator's overhead over what
//!   the program holds (pages part-filled by evicted users' small objects) nor requests in
//!   flight are counted by any holder, and over 30 minutes of sustained pushes both grew
//!   (docs/BENCHMARKS.md, run 60). Freed bytes refill those pages before the allocator maps
//!   new ones of the same sizes, so the process grows less (run 61); it is not a bound while
//!   a fold's large buffers take fresh pages.
//! - Past the views' floors, a checkpoint's fold gives way ([`ViewBudget::past_the_floors`]):
//!   while upkeep and the excess ask more than every view can give, the fold keeps fewer
//!   users (down to a quarter of its budget) and folds the rest in later passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Bytes held by the process's upkeep (checkpoint folds, compactions) now, shared by every shard.
#[derive(Clone, Debug, Default)]
pub struct UpkeepMemory(Arc<AtomicUsize>);

impl UpkeepMemory {
    /// What every running fold and compaction holds now, approximate bytes.
    pub fn bytes(&self) -> usize {
        self.0.load(Relaxed)
    }

    /// A new holder, holding nothing yet.
    pub fn hold(&self) -> Holding {
        Holding {
            memory: self.clone(),
            bytes: AtomicUsize::new(0),
        }
    }
}

/// One fold's or compaction's share of [`UpkeepMemory`]: set as it grows and shrinks, taken back when dropped.
#[derive(Debug)]
pub struct Holding {
    memory: UpkeepMemory,
    /// What this holder last published (an atomic so that a fold sets it through `&self`).
    bytes: AtomicUsize,
}

impl Holding {
    /// Another holder of the same memory, holding nothing yet: for a part of one work that
    /// publishes what it holds itself, as it comes.
    pub fn another(&self) -> Holding {
        self.memory.hold()
    }

    /// Publishes that this holder now holds `bytes`.
    pub fn set(&self, bytes: usize) {
        let was = self.bytes.swap(bytes, Relaxed);
        if bytes >= was {
            self.memory.0.fetch_add(bytes - was, Relaxed);
        } else {
            self.memory.0.fetch_sub(was - bytes, Relaxed);
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Bytes the process is resident beyond its bound, as last measured (0 when within it): every
/// shard's view gives way by its share. Set by whoever measures the process (the server, from
/// the kernel's count); nothing in the log library measures memory itself.
#[derive(Clone, Debug, Default)]
pub struct ResidentExcess(Arc<AtomicUsize>);

impl ResidentExcess {
    /// The excess last set.
    pub fn bytes(&self) -> usize {
        self.0.load(Relaxed)
    }

    /// Publishes the excess measured now.
    pub fn set(&self, bytes: usize) {
        self.0.store(bytes, Relaxed);
    }
}

/// What one shard's view may hold.
#[derive(Clone, Debug)]
pub struct ViewBudget {
    /// The shard's share of the process's view budget.
    shard_bytes: usize,
    /// Shards sharing the upkeep's memory.
    shards: usize,
    upkeep: UpkeepMemory,
    excess: ResidentExcess,
}

impl Default for ViewBudget {
    /// No bound (a view made by hand, as in tests of the view itself).
    fn default() -> Self {
        Self::new(usize::MAX, 1, UpkeepMemory::default())
    }
}

impl ViewBudget {
    /// `shard_bytes` for one of `shards` shards that give way to `upkeep` together.
    pub fn new(shard_bytes: usize, shards: usize, upkeep: UpkeepMemory) -> Self {
        Self {
            shard_bytes,
            shards: shards.max(1),
            upkeep,
            excess: ResidentExcess::default(),
        }
    }

    /// The same budget, giving way also by its share of `excess`.
    pub fn giving_way_to(self, excess: ResidentExcess) -> Self {
        Self { excess, ..self }
    }

    /// What the process's upkeep holds, which this budget gives way to.
    pub fn upkeep(&self) -> &UpkeepMemory {
        &self.upkeep
    }

    /// The shard's own budget, less its share of what upkeep holds now, at least a quarter of
    /// its own.
    pub fn now(&self) -> usize {
        self.now_beside(0)
    }

    /// [`Self::now`], less `beside`: what the view keeps next to its users (its indexes), which
    /// the same budget covers, and less its share of the process's [`ResidentExcess`]; at
    /// least a quarter of its own.
    pub fn now_beside(&self, beside: usize) -> usize {
        let share = self.upkeep.bytes() / self.shards;
        let excess = self.excess.bytes() / self.shards;
        self.shard_bytes
            .saturating_sub(share)
            .saturating_sub(excess)
            .saturating_sub(beside)
            .max(self.shard_bytes / 4)
    }

    /// What upkeep and the process's resident excess ask of the views beyond what they can
    /// give: the part past every view's floor (0 while the views can still give way). A
    /// checkpoint's fold gives way by it (`checkpoint.rs`), since with the views at their
    /// floor nothing else would. The indexes beside the views are not counted here: they bring
    /// the views to their floor sooner, so this asks the fold later, never sooner.
    pub fn past_the_floors(&self) -> usize {
        let can_give = (self.shard_bytes - self.shard_bytes / 4).saturating_mul(self.shards);
        self.upkeep
            .bytes()
            .saturating_add(self.excess.bytes())
            .saturating_sub(can_give)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The views give way by their share of what folds hold, to a floor, and get it back when
    /// a fold ends, however it ends.
    #[test]
    fn views_give_way_to_upkeep_and_get_it_back() {
        let upkeep = UpkeepMemory::default();
        let budget = ViewBudget::new(1000, 4, upkeep.clone());
        assert_eq!(budget.now(), 1000);
        let a = upkeep.hold();
        a.set(400);
        assert_eq!(budget.now(), 900, "a quarter of 400");
        let b = upkeep.hold();
        b.set(800);
        assert_eq!(upkeep.bytes(), 1200);
        assert_eq!(budget.now(), 700);
        a.set(100);
        assert_eq!(budget.now(), 775);
        assert_eq!(budget.now_beside(75), 700, "the indexes beside the users");
        b.set(4000);
        assert_eq!(budget.now(), 250, "never below a quarter");
        assert_eq!(budget.now_beside(75), 250, "never below a quarter");
        drop(b);
        assert_eq!(upkeep.bytes(), 100);
        drop(a);
        assert_eq!(upkeep.bytes(), 0);
        assert_eq!(budget.now(), 1000);
        assert_eq!(ViewBudget::default().now(), usize::MAX);
    }

    /// The views give way by their share of the process's excess over its bound, on top of
    /// upkeep's, to the same floor, and get it back once the process is within its bound.
    #[test]
    fn views_give_way_to_the_resident_excess() {
        let upkeep = UpkeepMemory::default();
        let excess = ResidentExcess::default();
        let budget = ViewBudget::new(1000, 4, upkeep.clone()).giving_way_to(excess.clone());
        assert_eq!(budget.now(), 1000);
        excess.set(200);
        assert_eq!(budget.now(), 950, "a quarter of 200");
        let fold = upkeep.hold();
        fold.set(400);
        assert_eq!(
            budget.now_beside(50),
            800,
            "upkeep, excess and indexes together"
        );
        excess.set(1 << 40);
        assert_eq!(budget.now(), 250, "never below a quarter");
        excess.set(0);
        drop(fold);
        assert_eq!(budget.now(), 1000);
    }

    /// What is asked of the views past their floors: nothing while they can give way, then
    /// what upkeep and the excess ask beyond the three quarters of every shard's budget.
    #[test]
    fn what_is_asked_past_the_views_floors() {
        let upkeep = UpkeepMemory::default();
        let excess = ResidentExcess::default();
        let budget = ViewBudget::new(1000, 4, upkeep.clone()).giving_way_to(excess.clone());
        assert_eq!(budget.past_the_floors(), 0);
        let fold = upkeep.hold();
        fold.set(3000);
        assert_eq!(budget.past_the_floors(), 0, "the views can give 4 x 750");
        assert_eq!(budget.now(), 250, "at their floor");
        fold.set(2900);
        excess.set(300);
        assert_eq!(budget.past_the_floors(), 200);
        excess.set(0);
        assert_eq!(budget.past_the_floors(), 0);
        drop(fold);
        excess.set(3100);
        assert_eq!(budget.past_the_floors(), 100, "the excess alone");
        assert_eq!(ViewBudget::default().past_the_floors(), 0);
    }
}
