//! A filter over a user's change ids, by seq: what a state loaded from a checkpoint keeps in
//! place of every change id the user ever sent.
//!
//! Every event has one change id and seqs are dense from 1, so the user's change ids, in seq
//! order, fill the filter's blocks in turn: block `b` holds the ids of seqs
//! `32 b + 1 ..= 32 b + 32`, each as [`PROBES`] bits of the block's 1,024. The filter is therefore
//! a function of the user's log alone (not of the order in which a state learned its ids): a
//! state loaded from a checkpoint and a replay of the whole log give the same filter, which is
//! how equality, the state hash and verify compare them.
//!
//! Invariants: no false negatives (an id inserted is always found: tested by property); a false
//! positive costs a read of the user's log (the push path resolves every hit there), never a
//! wrong answer. At 32 bits per id a full block answers a stranger yes about once in 5 million;
//! a lookup asks every block, so a user with 3,200 events answers about once in 50,000, one
//! with a million events about once in 150 (each such push reads the user's log once).
//!
//! The bit positions are part of the checkpoint format (version 5): the hash is spelled out
//! here, not taken from a library whose output may change between releases.
//!
//! In memory, every whole run of 64 blocks is held *bit-sliced* (a group: word `p` holds bit
//! `p` of each of its 64 blocks), so a lookup tests 64 blocks with one word a probe and stops
//! at the first probe no block of the group has: a lookup in a user with a long history read
//! every block's words (~29% of the server's CPU in `make ab`'s push-max, where every pushed
//! id is looked up). The blocks after the last group are held as stored. The layout is the
//! memory's only: the stored form is blocks in order, as before.
//!
//! A block is *sealed* once all 32 of its seqs exist: it never changes again. A checkpoint of
//! format 6 writes a user's sealed blocks once, into a filter run, and keeps in the user's
//! part row only the blocks from the first not yet written to a run: a filter may therefore
//! hold blocks `offset..` only ([`ChangeFilter::offset`]), the sealed blocks before being held
//! elsewhere. Such a filter answers for the blocks it holds; a state holding one treats every
//! id as possibly older ([`crate::UserState::change_may_be_older`]) until the prefix is
//! attached ([`ChangeFilter::attach_prefix`]).

use crate::ids::ChangeId;

/// Seqs per block.
pub const SEQS_PER_BLOCK: u64 = 32;
/// 64-bit words per block: 1,024 bits, 32 per id.
const WORDS: usize = 16;
const BITS: u64 = (WORDS * 64) as u64;
/// Bits set per id.
pub const PROBES: u64 = 22;
/// Bytes per block when stored.
pub const BLOCK_BYTES: usize = WORDS * 8;

/// Blocks a group holds bit-sliced: one bit of a word each.
const GROUP: usize = 64;
/// Words of a group: one per bit position of a block.
const SLICES: usize = WORDS * 64;

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    /// The index of the first block held (the blocks before it are held elsewhere).
    offset: usize,
    /// Blocks `offset..offset + 64 * groups.len()`, 64 to a group, bit-sliced: bit `j` of
    /// word `p` is bit `p` of block `64 g + j` of the group.
    groups: Vec<[u64; SLICES]>,
    /// The blocks after the groups (fewer than 64), as stored. Which blocks are grouped
    /// follows from how many are held, so equal filters hold equal fields.
    tail: Vec<[u64; WORDS]>,
}

/// Transposes a 64x64 bit matrix in place (bit `c` of word `r` becomes bit `r` of word `c`):
/// the off-diagonal halves swapped, then the quarters within them, down to single bits.
fn transpose64(a: &mut [u64; 64]) {
    let mut width = 32;
    let mut mask: u64 = 0x0000_0000_ffff_ffff;
    while width != 0 {
        let mut k = 0;
        while k < 64 {
            let mut i = k;
            while i < k + width {
                let t = ((a[i] >> width) ^ a[i + width]) & mask;
                a[i] ^= t << width;
                a[i + width] ^= t;
                i += 1;
            }
            k += 2 * width;
        }
        width /= 2;
        mask ^= mask << width;
    }
}

/// 64 blocks bit-sliced: for each of a block's 16 words, the 64 blocks' words transposed.
fn slice(blocks: &[[u64; WORDS]]) -> [u64; SLICES] {
    let mut slices = [0u64; SLICES];
    for (w, out) in slices.chunks_exact_mut(64).enumerate() {
        let mut m = [0u64; 64];
        for (row, words) in m.iter_mut().zip(blocks) {
            *row = words[w];
        }
        transpose64(&mut m);
        out.copy_from_slice(&m);
    }
    slices
}

/// A group's 64 blocks, as stored (the transposition undone).
fn unslice(slices: &[u64; SLICES]) -> [[u64; WORDS]; GROUP] {
    let mut blocks = [[0u64; WORDS]; GROUP];
    for (w, chunk) in slices.chunks_exact(64).enumerate() {
        let mut m = [0u64; 64];
        m.copy_from_slice(chunk);
        transpose64(&mut m);
        for (words, row) in blocks.iter_mut().zip(m) {
            words[w] = row;
        }
    }
    blocks
}

/// SplitMix64's finalizer: a fixed, well-mixed 64-bit permutation (stored formats use it:
/// never change it).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id's bit positions in a block: 10-bit pieces (lowest first) of four mixes of one hash
/// of its 16 bytes, six a mix, the first 22. (Double hashing, `h1 + i * h2` modulo the block,
/// was tried first: ids sharing `h2` probe shifted copies of one line, and 3.6% of strangers
/// passed for members of 100 full blocks instead of ~0.002%.)
fn positions(id: &ChangeId) -> impl Iterator<Item = usize> {
    let v = id.0.as_u128();
    let (hi, lo) = ((v >> 64) as u64, v as u64);
    let h = mix(lo ^ mix(hi ^ 0x6b65_6570_7361_6b65));
    (1..=4u64)
        .flat_map(move |j| {
            let w = mix(h ^ j.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            (0..6).map(move |k| ((w >> (10 * k)) % BITS) as usize)
        })
        .take(PROBES as usize)
}

impl ChangeFilter {
    /// Adds the change id of the event with this seq (seqs start at 1; 0 is ignored, and so is
    /// a seq of a block before [`ChangeFilter::offset`]: that block is sealed, and its ids are
    /// in it where it is held).
    pub fn insert(&mut self, seq: u64, id: &ChangeId) {
        let Some(block) = seq.checked_sub(1).map(|s| s / SEQS_PER_BLOCK) else {
            return;
        };
        let Some(block) = usize::try_from(block)
            .ok()
            .and_then(|b| b.checked_sub(self.offset))
        else {
            return;
        };
        let grouped = self.groups.len() * GROUP;
        if let Some(slices) = self.groups.get_mut(block / GROUP) {
            let bit = 1u64 << (block % GROUP);
            for p in positions(id) {
                slices[p] |= bit;
            }
            return;
        }
        let t = block - grouped;
        if self.tail.len() <= t {
            self.tail.resize(t + 1, [0; WORDS]);
        }
        let words = &mut self.tail[t];
        for p in positions(id) {
            words[p / 64] |= 1u64 << (p % 64);
        }
        self.group_tail();
    }

    /// Slices the tail's whole runs of 64 blocks into groups (the layout's invariant: fewer
    /// than 64 blocks in the tail).
    fn group_tail(&mut self) {
        if self.tail.len() >= GROUP {
            let whole = self.tail.len() / GROUP * GROUP;
            let rest = self.tail.split_off(whole);
            let full = std::mem::replace(&mut self.tail, rest);
            self.groups.extend(full.chunks_exact(GROUP).map(slice));
        }
    }

    /// Whether the id may have been inserted: `false` is certain, `true` is to be checked.
    pub fn may_contain(&self, id: &ChangeId) -> bool {
        let mut probes = [0usize; PROBES as usize];
        for (slot, p) in probes.iter_mut().zip(positions(id)) {
            *slot = p;
        }
        let in_groups = self.groups.iter().any(|slices| {
            let mut blocks = u64::MAX;
            for &p in &probes {
                blocks &= slices[p];
                if blocks == 0 {
                    return false;
                }
            }
            true
        });
        in_groups
            || self.tail.iter().any(|words| {
                probes
                    .iter()
                    .all(|&p| words[p / 64] & (1u64 << (p % 64)) != 0)
            })
    }

    /// Blocks held (from the offset on).
    fn held(&self) -> usize {
        self.groups.len() * GROUP + self.tail.len()
    }

    /// The blocks held, as stored, in order.
    fn to_blocks(&self) -> Vec<[u64; WORDS]> {
        let mut out = Vec::with_capacity(self.held());
        for slices in &self.groups {
            out.extend_from_slice(&unslice(slices));
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// A filter holding `blocks` from block `offset` on.
    fn from_blocks(offset: usize, blocks: &[[u64; WORDS]]) -> Self {
        let whole = blocks.len() / GROUP * GROUP;
        Self {
            offset,
            groups: blocks[..whole].chunks_exact(GROUP).map(slice).collect(),
            tail: blocks[whole..].to_vec(),
        }
    }

    /// The index after the last block: `ceil(last seq / 32)` for a filter of a user's whole log
    /// (held from [`ChangeFilter::offset`] on).
    pub fn blocks(&self) -> usize {
        self.offset + self.held()
    }

    /// The index of the first block held: 0 for a whole filter.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether every block from the first is held.
    pub fn is_whole(&self) -> bool {
        self.offset == 0
    }

    /// The blocks `from..` of a stored form (as [`ChangeFilter::from_bytes`]).
    pub fn from_bytes_at(from: usize, bytes: &[u8]) -> Option<Self> {
        let mut f = Self::from_bytes(bytes)?;
        f.offset = from;
        Some(f)
    }

    /// Splits off the blocks before `at` (those from the offset on), which this filter then no
    /// longer holds; `None` when `at` is not within `offset..=blocks()`. The groups before `at`
    /// move as they are; only the blocks from the group holding `at` on are unsliced and
    /// sliced again (a checkpoint splits a changed user's filter at a whole group).
    pub fn split_before(&mut self, at: usize) -> Option<ChangeFilter> {
        let n = at.checked_sub(self.offset)?;
        if n > self.held() {
            return None;
        }
        let kept = (n / GROUP).min(self.groups.len());
        let mut rest = self.groups.split_off(kept);
        let mut head = ChangeFilter {
            offset: self.offset,
            groups: std::mem::take(&mut self.groups),
            tail: Vec::new(),
        };
        if n % GROUP == 0 {
            // Aligned: the groups after `at` stay groups.
            let tail = std::mem::take(&mut self.tail);
            *self = ChangeFilter {
                offset: at,
                groups: rest,
                tail,
            };
            return Some(head);
        }
        let mut blocks = Vec::with_capacity(rest.len() * GROUP + self.tail.len());
        for slices in rest.drain(..) {
            blocks.extend_from_slice(&unslice(&slices));
        }
        blocks.append(&mut self.tail);
        let cut = n - kept * GROUP;
        head.tail = blocks[..cut].to_vec();
        *self = ChangeFilter::from_blocks(at, &blocks[cut..]);
        Some(head)
    }

    /// Puts `prefix` (the blocks from its offset up to this filter's offset) in front:
    /// refused (`false`, nothing changed) unless it ends exactly where this filter begins.
    pub fn attach_prefix(&mut self, prefix: ChangeFilter) -> bool {
        if prefix.blocks() != self.offset {
            return false;
        }
        let rest = std::mem::take(self);
        *self = ChangeFilter::join_in_order([prefix, rest]);
        true
    }

    /// Joins filters that each begin where the one before ends (any order): `None` for none, or
    /// unless they meet end to start. Each block is unsliced and sliced at most once, whatever
    /// the number joined (a load joins a user's rows of every filter run).
    pub fn join(mut parts: Vec<ChangeFilter>) -> Option<ChangeFilter> {
        // By where each ends too: an empty piece goes before the one that begins where it is.
        parts.sort_by_key(|p| (p.offset, p.blocks()));
        let first = parts.first()?;
        let mut end = first.offset;
        for p in &parts {
            if p.offset != end {
                return None;
            }
            end = p.blocks();
        }
        Some(ChangeFilter::join_in_order(parts))
    }

    /// [`ChangeFilter::join`] of parts known to meet end to start, in order: whole groups move
    /// as they are while the blocks before them make whole groups; after a part that ends
    /// within a group, the blocks are gathered plainly and sliced 64 at a time.
    fn join_in_order(parts: impl IntoIterator<Item = ChangeFilter>) -> ChangeFilter {
        let mut parts = parts.into_iter();
        let Some(mut out) = parts.next() else {
            return ChangeFilter::default();
        };
        for p in parts {
            if out.tail.is_empty() {
                out.groups.extend(p.groups);
                out.tail = p.tail;
                continue;
            }
            for slices in &p.groups {
                out.tail.extend_from_slice(&unslice(slices));
            }
            out.tail.extend_from_slice(&p.tail);
            out.group_tail();
        }
        out
    }

    /// Bytes held in memory (and stored).
    pub fn bytes(&self) -> usize {
        self.held() * BLOCK_BYTES
    }

    /// What the filter's blocks take in memory, room to grow included.
    pub fn alloc_bytes(&self) -> usize {
        crate::memory::alloc_size(self.groups.capacity() * std::mem::size_of::<[u64; SLICES]>())
            + crate::memory::alloc_size(self.tail.capacity() * std::mem::size_of::<[u64; WORDS]>())
    }

    /// The stored form: each block's words, little-endian, blocks in order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes());
        for words in self.to_blocks() {
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    /// Reads the stored form; `None` when its length is not a whole number of blocks.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() % BLOCK_BYTES != 0 {
            return None;
        }
        let blocks: Vec<[u64; WORDS]> = bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|block| {
                let mut words = [0u64; WORDS];
                for (w, b) in words.iter_mut().zip(block.chunks_exact(8)) {
                    let mut le = [0u8; 8];
                    le.copy_from_slice(b);
                    *w = u64::from_le_bytes(le);
                }
                words
            })
            .collect();
        Some(Self::from_blocks(0, &blocks))
    }

    /// Blocks a filter of a user whose last seq is `last_seq` has.
    pub fn blocks_for(last_seq: u64) -> u64 {
        last_seq.div_ceil(SEQS_PER_BLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn id(n: u128) -> ChangeId {
        ChangeId(Uuid::from_u128(n))
    }

    proptest! {
        /// No false negatives, whatever the ids and seqs.
        #[test]
        fn every_inserted_id_is_found(ids in proptest::collection::vec(any::<u128>(), 1..300)) {
            let mut f = ChangeFilter::default();
            for (i, v) in ids.iter().enumerate() {
                f.insert(i as u64 + 1, &id(*v));
            }
            for v in &ids {
                prop_assert!(f.may_contain(&id(*v)));
            }
            prop_assert_eq!(f.blocks() as u64, ChangeFilter::blocks_for(ids.len() as u64));
            prop_assert_eq!(ChangeFilter::from_bytes(&f.to_bytes()), Some(f));
        }
    }

    /// The answer of the stored blocks, scanned one by one: what the bit-sliced groups must
    /// answer alike.
    fn scan(f: &ChangeFilter, id: &ChangeId) -> bool {
        f.to_bytes()
            .chunks_exact(BLOCK_BYTES)
            .any(|b| positions(id).all(|p| b[p / 8] & (1 << (p % 8)) != 0))
    }

    proptest! {
        /// Filters of many blocks (groups and a tail, ids learned in any order): every id is
        /// found, strangers are answered as the stored blocks answer, the stored form reads
        /// back equal, and a split anywhere (across a group or not) joins back to the filter.
        #[test]
        fn groups_answer_as_their_blocks(
            n in 1u64..5000,
            reverse in any::<bool>(),
            at in 0usize..160,
            salt in any::<u64>(),
        ) {
            let member = |seq: u64| id(u128::from(seq) << 64 | u128::from(salt));
            let mut f = ChangeFilter::default();
            let seqs: Vec<u64> = if reverse { (1..=n).rev().collect() } else { (1..=n).collect() };
            for seq in seqs {
                f.insert(seq, &member(seq));
            }
            prop_assert_eq!(f.blocks() as u64, ChangeFilter::blocks_for(n));
            prop_assert_eq!(f.groups.len(), f.blocks() / GROUP);
            // The stored form is the blocks in order, whatever the memory's layout.
            let mut want = vec![[0u64; WORDS]; f.blocks()];
            for seq in 1..=n {
                for p in positions(&member(seq)) {
                    want[((seq - 1) / SEQS_PER_BLOCK) as usize][p / 64] |= 1u64 << (p % 64);
                }
            }
            let want: Vec<u8> = want.iter().flatten().flat_map(|w| w.to_le_bytes()).collect();
            prop_assert_eq!(f.to_bytes(), want);
            for seq in 1..=n {
                prop_assert!(f.may_contain(&member(seq)));
            }
            for k in 0..200u64 {
                let stranger = id(u128::from(mix(k ^ salt)) | 1 << 127);
                prop_assert_eq!(f.may_contain(&stranger), scan(&f, &stranger));
            }
            let stored = ChangeFilter::from_bytes(&f.to_bytes());
            prop_assert_eq!(stored.as_ref(), Some(&f));
            let mut tail = f.clone();
            let Some(head) = tail.split_before(at) else {
                prop_assert!(at > f.blocks());
                return Ok(());
            };
            prop_assert_eq!(head.blocks(), at);
            prop_assert_eq!(tail.offset(), at);
            for seq in (at as u64 * SEQS_PER_BLOCK + 1)..=n {
                prop_assert!(tail.may_contain(&member(seq)));
            }
            for seq in 1..=(at as u64 * SEQS_PER_BLOCK).min(n) {
                prop_assert!(head.may_contain(&member(seq)));
            }
            prop_assert!(tail.attach_prefix(head));
            prop_assert_eq!(tail, f);
        }
    }

    proptest! {
        /// A filter cut anywhere into pieces (splits across groups or on their edges): each
        /// piece keeps the canonical layout (its whole runs of 64 blocks grouped), the pieces
        /// joined in any order are the filter again, and a hole refuses the join.
        #[test]
        fn pieces_join_back_to_the_filter(
            n in 1u64..9000,
            cuts in proptest::collection::vec(
                prop_oneof![0usize..300, Just(0), Just(64), Just(128)],
                0..6,
            ),
            order in any::<u64>(),
            salt in any::<u64>(),
        ) {
            let mut f = ChangeFilter::default();
            for seq in 1..=n {
                f.insert(seq, &id(u128::from(seq) << 64 | u128::from(salt)));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(f.blocks())).collect();
            cuts.sort_unstable();
            let mut rest = f.clone();
            let mut pieces = Vec::new();
            for at in cuts {
                pieces.push(rest.split_before(at).ok_or_else(|| TestCaseError::fail("cut"))?);
            }
            pieces.push(rest);
            for p in &pieces {
                prop_assert_eq!(p.groups.len(), p.held() / GROUP);
                prop_assert!(p.tail.len() < GROUP);
            }
            let blocks: Vec<usize> = pieces.iter().map(ChangeFilter::held).collect();
            // Any order: the pieces sorted by a hash of their place salted by `order`.
            let len = pieces.len();
            let mut shuffled: Vec<(u64, ChangeFilter)> = pieces
                .iter()
                .enumerate()
                .map(|(i, p)| (mix(i as u64 ^ order), p.clone()))
                .collect();
            shuffled.sort_by_key(|(k, _)| *k);
            let shuffled = shuffled.into_iter().map(|(_, p)| p).collect();
            let joined = ChangeFilter::join(shuffled);
            prop_assert_eq!(joined.as_ref(), Some(&f));
            if let Some(hole) = (1..len.saturating_sub(1)).find(|&i| blocks[i] > 0) {
                let mut holed = pieces;
                holed.remove(hole);
                prop_assert_eq!(ChangeFilter::join(holed), None);
            }
        }
    }

    /// An empty piece given after the piece that begins where it is (a cut at a piece's
    /// start): the join still takes it (it was refused when sorted by offset alone).
    #[test]
    fn an_empty_piece_joins_wherever_it_is_given() {
        let mut f = ChangeFilter::default();
        for seq in 1..=64 {
            f.insert(seq, &id(u128::from(seq) * 7919));
        }
        let mut rest = f.clone();
        let empty = rest.split_before(0).expect("0..0");
        let first = rest.split_before(1).expect("0..1");
        assert_eq!(empty.held(), 0);
        assert_eq!(ChangeFilter::join(vec![rest, first, empty]), Some(f));
    }

    #[test]
    fn the_filter_does_not_depend_on_the_order_ids_are_learned() {
        let mut forward = ChangeFilter::default();
        let mut backward = ChangeFilter::default();
        for seq in 1..=100u64 {
            forward.insert(seq, &id(u128::from(seq) * 7919));
        }
        for seq in (1..=100u64).rev() {
            backward.insert(seq, &id(u128::from(seq) * 7919));
        }
        assert_eq!(forward, backward);
        assert_eq!(forward.blocks(), 4);
    }

    #[test]
    fn strangers_are_rarely_taken_for_members() {
        // 3,200 ids: 100 full blocks. Expected false positives ~1 in 50,000 per lookup.
        let mut f = ChangeFilter::default();
        for seq in 1..=3200u64 {
            f.insert(seq, &id(u128::from(seq) << 64 | 0xabc));
        }
        let hits = (0..100_000u128)
            .filter(|n| f.may_contain(&id(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1 << 100)))
            .count();
        eprintln!("{hits} false positives in 100,000 lookups");
        assert!(hits < 20, "{hits} false positives in 100,000 lookups");
    }

    proptest! {
        /// A filter split anywhere and put back together is the filter it was; the part from
        /// the split on still finds the ids of its blocks, and a prefix that does not end where
        /// the rest begins is refused.
        #[test]
        fn a_filter_split_and_joined_is_the_same(n in 1u64..300, at in 0usize..12) {
            let mut whole = ChangeFilter::default();
            for seq in 1..=n {
                whole.insert(seq, &id(u128::from(seq) * 7919));
            }
            let mut tail = whole.clone();
            let Some(head) = tail.split_before(at) else {
                prop_assert!(at > whole.blocks());
                return Ok(());
            };
            prop_assert_eq!(tail.offset(), at);
            prop_assert_eq!(tail.blocks(), whole.blocks());
            prop_assert_eq!(head.blocks(), at);
            prop_assert!(!tail.is_whole() || at == 0);
            for seq in (at as u64 * SEQS_PER_BLOCK + 1)..=n {
                prop_assert!(tail.may_contain(&id(u128::from(seq) * 7919)));
            }
            // Ids of split-off blocks inserted again are not taken in (they are held there).
            let mut again = tail.clone();
            for seq in 1..=(at as u64 * SEQS_PER_BLOCK).min(n) {
                again.insert(seq, &id(u128::from(seq) * 7919));
            }
            prop_assert_eq!(&again, &tail);
            let stored = ChangeFilter::from_bytes_at(at, &tail.to_bytes());
            prop_assert_eq!(stored.as_ref(), Some(&tail));
            if at > 0 {
                let short = head.clone().split_before(at - 1);
                prop_assert!(short.is_some());
                let mut t = tail.clone();
                prop_assert!(!t.attach_prefix(short.unwrap_or_default()));
                prop_assert_eq!(&t, &tail);
            }
            prop_assert!(tail.attach_prefix(head));
            prop_assert_eq!(tail, whole);
        }
    }

    #[test]
    fn a_stored_filter_of_a_broken_length_is_refused() {
        assert_eq!(ChangeFilter::from_bytes(&[0u8; 127]), None);
        assert_eq!(ChangeFilter::from_bytes(&[]), Some(ChangeFilter::default()));
    }

    #[test]
    fn bit_positions_are_fixed() {
        // The positions are stored in checkpoints: a change to the hash must fail here.
        let p: Vec<usize> = positions(&id(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)).collect();
        assert_eq!(p.len(), 22);
        assert_eq!(p, GOLDEN_POSITIONS.to_vec());
    }

    const GOLDEN_POSITIONS: [usize; 22] = [
        151, 408, 42, 436, 872, 399, 983, 416, 42, 300, 674, 12, 571, 954, 196, 871, 611, 678, 2,
        235, 269, 738,
    ];
}
