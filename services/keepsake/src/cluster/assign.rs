//! Which server should serve each shard: balanced over the live servers, moving as few shards
//! as possible when servers come and go. Pure: every server computes the same answer from the
//! same inputs, and the coordinator stores one answer at a time (a compare-and-swap in etcd).
//!
//! Rules, in order:
//! 1. A shard stays with its server while that server is live and not above its share.
//! 2. Shards of servers that left, and shards beyond a server's share (`ceil(shards / live)`),
//!    go to the live server with the fewest shards (ties: the highest rendezvous score of
//!    server and shard, so the choice does not depend on the order servers are listed in).
//! 3. While one server holds two or more shards more than another, one shard moves from the
//!    fullest to the emptiest.
//!
//! A shard's generation grows by one each time its server changes, and never otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One shard's assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// The server that should serve it.
    pub node: String,
    /// Grows by one each time `node` changes (from 1).
    pub generation: u64,
    /// The server it was taken from (`None` for a first assignment): the new server waits
    /// until that one released it or left before it takes the shard.
    pub from: Option<String>,
}

/// Rendezvous score of a server for a shard (FNV-1a over both: stable across builds).
fn score(node: &str, shard: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(&(shard as u64).to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The next assignment of `shards` shards from `current` (one entry per shard, `None` when
/// never assigned) over the `live` servers. With no live server, `current` stays.
pub fn rebalance(
    current: &[Option<Assigned>],
    live: &[String],
    shards: usize,
) -> Vec<Option<Assigned>> {
    let mut live: Vec<&String> = live.iter().collect();
    live.sort();
    live.dedup();
    if live.is_empty() {
        let mut out = current.to_vec();
        out.resize(shards, None);
        return out;
    }
    let share = shards.div_ceil(live.len());
    let mut owner: Vec<Option<&String>> = (0..shards)
        .map(|s| {
            let node = current.get(s).and_then(|a| a.as_ref()).map(|a| &a.node)?;
            live.iter().copied().find(|l| *l == node)
        })
        .collect();
    let mut count: BTreeMap<&String, usize> = live.iter().map(|n| (*n, 0)).collect();
    for n in owner.iter().flatten() {
        *count.entry(n).or_default() += 1;
    }
    // Rule 2: above its share, a server keeps the shards it scores highest.
    for node in &live {
        let mut held: Vec<usize> = (0..shards).filter(|s| owner[*s] == Some(*node)).collect();
        if held.len() > share {
            held.sort_by_key(|s| std::cmp::Reverse(score(node, *s)));
            for s in held.split_off(share) {
                owner[s] = None;
                *count.entry(node).or_default() -= 1;
            }
        }
    }
    let emptiest = |count: &BTreeMap<&String, usize>, shard: usize| {
        live.iter().copied().min_by_key(|n| {
            (
                count.get(n).copied().unwrap_or(0),
                std::cmp::Reverse(score(n, shard)),
            )
        })
    };
    for (s, slot) in owner.iter_mut().enumerate() {
        if slot.is_none()
            && let Some(n) = emptiest(&count, s)
        {
            *slot = Some(n);
            *count.entry(n).or_default() += 1;
        }
    }
    // Rule 3.
    while let (Some((&full, &hi)), Some((&empty, &lo))) = (
        count
            .iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse(*n))),
        count.iter().min_by_key(|(n, c)| (**c, *n)),
    ) {
        if hi <= lo + 1 {
            break;
        }
        let Some(s) = (0..shards)
            .filter(|s| owner[*s] == Some(full))
            .max_by_key(|s| score(empty, *s))
        else {
            break;
        };
        owner[s] = Some(empty);
        *count.entry(full).or_default() -= 1;
        *count.entry(empty).or_default() += 1;
    }
    (0..shards)
        .map(|s| {
            let before = current.get(s).and_then(|a| a.as_ref());
            let node = owner[s]?;
            Some(match before {
                Some(b) if &b.node == node => b.clone(),
                _ => Assigned {
                    node: node.clone(),
                    generation: before.map_or(1, |b| b.generation + 1),
                    from: before.map(|b| b.node.clone()),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn counts(a: &[Option<Assigned>]) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for x in a.iter().flatten() {
            *c.entry(x.node.clone()).or_default() += 1;
        }
        c
    }

    #[test]
    fn a_first_assignment_is_balanced_and_a_second_changes_nothing() {
        let live = nodes(&["a", "b", "c"]);
        let first = rebalance(&[], &live, 16);
        let c = counts(&first);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|n| (5..=6).contains(n)), "{c:?}");
        assert!(
            first
                .iter()
                .flatten()
                .all(|a| a.generation == 1 && a.from.is_none())
        );
        assert_eq!(rebalance(&first, &live, 16), first);
    }

    #[test]
    fn a_server_leaving_moves_only_its_shards() {
        let first = rebalance(&[], &nodes(&["a", "b", "c"]), 16);
        let next = rebalance(&first, &nodes(&["a", "b"]), 16);
        for (before, after) in first.iter().zip(&next) {
            let (before, after) = (
                before.as_ref().expect("assigned"),
                after.as_ref().expect("assigned"),
            );
            if before.node == "c" {
                assert_ne!(after.node, "c");
                assert_eq!(after.generation, before.generation + 1);
                assert_eq!(after.from.as_deref(), Some("c"));
            } else {
                assert_eq!(
                    after, before,
                    "a shard of a server that stayed does not move"
                );
            }
        }
        let c = counts(&next);
        assert!(c.values().all(|n| *n == 8), "{c:?}");
    }

    #[test]
    fn no_server_keeps_what_there_is() {
        let first = rebalance(&[], &nodes(&["a"]), 4);
        assert_eq!(rebalance(&first, &[], 4), first);
    }

    proptest! {
        /// Whatever came before and whoever is live: every shard assigned to a live server,
        /// loads within one of each other, a shard moves only if its server left or was above
        /// the balanced share, generations grow only on a move, and the answer is a fixed point.
        #[test]
        fn balanced_minimal_and_stable(
            shards in 1usize..40,
            before in proptest::collection::vec(proptest::option::of(0u8..6), 0..40),
            live in proptest::collection::btree_set(0u8..6, 0..6),
        ) {
            let name = |n: u8| format!("n{n}");
            let current: Vec<Option<Assigned>> = before.iter().map(|b| b.map(|n| Assigned {
                node: name(n), generation: u64::from(n) + 3, from: None,
            })).collect();
            let live: Vec<String> = live.into_iter().map(name).collect();
            let next = rebalance(&current, &live, shards);
            prop_assert_eq!(next.len(), shards);
            if live.is_empty() {
                return Ok(());
            }
            let c = counts(&next);
            prop_assert!(next.iter().all(|a| a.as_ref().is_some_and(|a| live.contains(&a.node))));
            let (lo, hi) = (
                live.iter().map(|n| c.get(n).copied().unwrap_or(0)).min().unwrap_or(0),
                live.iter().map(|n| c.get(n).copied().unwrap_or(0)).max().unwrap_or(0),
            );
            prop_assert!(hi <= lo + 1, "{:?}", c);
            let share = shards.div_ceil(live.len());
            let kept: BTreeMap<&String, usize> = live.iter().map(|n| {
                (n, current.iter().take(shards).flatten().filter(|a| &a.node == n).count())
            }).collect();
            for (s, a) in next.iter().enumerate() {
                let a = a.as_ref().expect("assigned");
                match current.get(s).and_then(|x| x.as_ref()) {
                    Some(b) if b.node == a.node => prop_assert_eq!(a.generation, b.generation),
                    Some(b) => {
                        prop_assert_eq!(a.generation, b.generation + 1);
                        // Moved: its server left, was above its share, or rule 3 evened loads.
                        let left = !live.contains(&b.node);
                        let over = kept.get(&b.node).is_some_and(|k| *k > share.saturating_sub(1));
                        prop_assert!(left || over, "shard {} moved from {} needlessly", s, b.node);
                    }
                    None => prop_assert_eq!(a.generation, 1),
                }
            }
            prop_assert_eq!(rebalance(&next, &live, shards), next);
        }
    }
}
