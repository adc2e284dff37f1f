//! What the allocator gives a structure: the counts behind [`crate::UserState::approx_bytes`]
//! and [`crate::ChangeFilter::alloc_bytes`], which the live view's memory budget is spent by.
//! They follow jemalloc (the server's allocator) and hashbrown's tables (std's and griddle's),
//! and `keepsake-log/tests/state_memory.rs` checks them against jemalloc's own count.

/// What jemalloc (the server's allocator) hands out for a request of `n` bytes: its size
/// classes are 16 bytes apart up to 128, then four to each doubling.
pub fn alloc_size(n: usize) -> usize {
    match n {
        0 => 0,
        1..=8 => 8,
        9..=128 => n.div_ceil(16) * 16,
        _ => {
            // The largest power of two below n, a quarter of it apart.
            let spacing = (1usize << (usize::BITS - 1 - (n - 1).leading_zeros())) / 4;
            n.div_ceil(spacing).saturating_mul(spacing)
        }
    }
}

/// What the allocator gives a document: its text behind the `Arc`'s two reference counts.
/// (A state's documents and a decoded event's are counted alike.)
pub fn document_bytes(doc: Option<&crate::Document>) -> usize {
    doc.map_or(0, |d| alloc_size(d.len() + 16))
}

/// A hash table (hashbrown's layout, which griddle's tables share) that can hold `capacity`
/// entries of `entry` bytes: a power of two of buckets at most 7/8 full, each bucket an entry
/// and a control byte, and a group of control bytes more.
fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    alloc_size(buckets(capacity).saturating_mul(entry + 1) + 16)
}

/// The buckets of a table that can hold `capacity` entries (hashbrown's rule).
fn buckets(capacity: usize) -> usize {
    if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity.saturating_mul(8) / 7).next_power_of_two()
    }
}

/// [`table_bytes`] of a griddle map of `len` entries: a griddle table that doubled keeps the
/// old one (half its buckets, full when it grew) until its entries have moved, eight with
/// each insert; counted while that is likely so.
pub(crate) fn growing_table_bytes(len: usize, capacity: usize, entry: usize) -> usize {
    let now = table_bytes(capacity, entry);
    let half = buckets(capacity) / 2;
    if half < 4 {
        return now;
    }
    let old = if half < 8 { half - 1 } else { half / 8 * 7 };
    if len > old && len <= old + old.div_ceil(8) {
        now + table_bytes(old, entry)
    } else {
        now
    }
}

/// A `BTreeMap<u64, ItemId>` of `len` entries: leaves of up to 11 (320 bytes as allocated)
/// about half full when keys arrive in order and old ones leave, and an inner node (384
/// bytes) for each six leaves past the first.
pub(crate) fn btree_bytes(len: usize) -> usize {
    const LEAF: usize = 320;
    const INNER: usize = 384;
    match len {
        0 => 0,
        1..=11 => LEAF,
        _ => {
            let leaves = len.div_ceil(6);
            leaves * LEAF + leaves.div_ceil(6) * INNER
        }
    }
}
