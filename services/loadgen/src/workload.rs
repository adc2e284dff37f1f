//! What a simulated handset sends: pure and deterministic for a seed, so a run can be repeated
//! and the generator tested without a server.
//!
//! A handset knows the items it has seen (from its own push results and from pulls) with their
//! versions, and builds pushes from them: new items (`put`), merge patches and deletes naming the
//! version it knows, a share of those with a stale `base_version` (the server answers `conflict`
//! or merges a patch), and now and then the previous push again unchanged (a retry after a lost
//! answer: the server must answer every change as `duplicate`).

use std::collections::HashMap;

use keepsake_model::Kind;
use keepsake_model::fixtures::{Rng, document_sized};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The mix of work, as shares in `0.0..=1.0`.
#[derive(Clone, Debug, Serialize)]
pub struct Mix {
    /// Share of requests that are pushes; the rest are pulls.
    pub push_share: f64,
    /// Share of pulls that long-poll (`wait`).
    pub long_poll_share: f64,
    /// Seconds a long poll may be held.
    pub long_poll_wait: u32,
    /// Changes per push.
    pub changes_per_push: usize,
    /// Kinds the pushes use.
    pub kinds: Vec<Kind>,
    /// Share of changes that are merge patches of known items.
    pub patch_share: f64,
    /// Share of changes that are deletes of known items.
    pub delete_share: f64,
    /// Share of patches and deletes that name an older version than the handset knows.
    pub stale_share: f64,
    /// Share of pushes that re-send the previous push unchanged.
    pub retry_share: f64,
    /// Document sizes, bytes of compact JSON, drawn uniformly from this range.
    pub doc_bytes: (usize, usize),
    /// `limit` of each pull.
    pub pull_limit: usize,
    /// Items a handset creates at most: once it knows this many, a change that would create an
    /// item replaces a known one instead (a put naming its version), as a handset that has
    /// synced its address book edits it. `None`: every such change creates an item, and users'
    /// states grow without bound.
    pub items_per_handset: Option<usize>,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            push_share: 0.2,
            long_poll_share: 0.1,
            long_poll_wait: 2,
            changes_per_push: 100,
            kinds: Kind::ITEMS.to_vec(),
            patch_share: 0.15,
            delete_share: 0.03,
            stale_share: 0.1,
            retry_share: 0.02,
            doc_bytes: (300, 700),
            pull_limit: 100,
            items_per_handset: None,
        }
    }
}

/// Pre-serialised documents per kind, so that building a push costs the client little of the
/// CPU it shares with the server.
#[derive(Debug)]
pub struct Documents {
    by_kind: HashMap<Kind, Vec<String>>,
}

impl Documents {
    /// `per_kind` documents of each kind with sizes from `bytes`.
    pub fn new(seed: u64, per_kind: usize, bytes: (usize, usize)) -> Self {
        let mut rng = Rng::new(seed);
        let (lo, hi) = (bytes.0.min(bytes.1), bytes.0.max(bytes.1));
        let by_kind = Kind::ITEMS
            .iter()
            .map(|&k| {
                let docs = (0..per_kind.max(1))
                    .map(|_| {
                        let target = lo + rng.below((hi - lo + 1) as u64) as usize;
                        serde_json::Value::Object(document_sized(k, &mut rng, target)).to_string()
                    })
                    .collect();
                (k, docs)
            })
            .collect();
        Self { by_kind }
    }

    /// Every document of `kind`.
    pub fn all(&self, kind: Kind) -> &[String] {
        self.by_kind.get(&kind).map_or(&[], Vec::as_slice)
    }

    fn pick(&self, kind: Kind, rng: &mut Rng) -> &str {
        match self.by_kind.get(&kind) {
            Some(v) if !v.is_empty() => &v[rng.below(v.len() as u64) as usize],
            _ => "{}",
        }
    }
}

/// An item a handset has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// The item.
    pub item_id: Uuid,
    /// Its kind.
    pub kind: Kind,
    /// The newest version the handset has seen.
    pub version: u64,
}

/// Known items, with O(1) random choice and removal. Bounded: beyond `cap` new items are not
/// remembered, which keeps a long run's memory flat.
#[derive(Debug)]
pub struct KnownItems {
    items: Vec<Known>,
    index: HashMap<Uuid, usize>,
    cap: usize,
}

impl KnownItems {
    /// An empty set remembering at most `cap` items.
    pub fn new(cap: usize) -> Self {
        Self {
            items: Vec::new(),
            index: HashMap::new(),
            cap,
        }
    }

    /// How many items are known.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The item, if known.
    pub fn get(&self, item_id: &Uuid) -> Option<Known> {
        self.index.get(item_id).map(|&i| self.items[i])
    }

    /// Records that `item_id` is at `version` (never lowers a known version).
    pub fn saw(&mut self, item_id: Uuid, kind: Kind, version: u64) {
        match self.index.get(&item_id) {
            Some(&i) => {
                let k = &mut self.items[i];
                k.version = k.version.max(version);
            }
            None if self.items.len() < self.cap => {
                self.index.insert(item_id, self.items.len());
                self.items.push(Known {
                    item_id,
                    kind,
                    version,
                });
            }
            None => {}
        }
    }

    /// Forgets a deleted item.
    pub fn deleted(&mut self, item_id: &Uuid) {
        if let Some(i) = self.index.remove(item_id) {
            self.items.swap_remove(i);
            if let Some(moved) = self.items.get(i) {
                self.index.insert(moved.item_id, i);
            }
        }
    }

    fn random(&self, rng: &mut Rng) -> Option<Known> {
        if self.items.is_empty() {
            None
        } else {
            Some(self.items[rng.below(self.items.len() as u64) as usize])
        }
    }
}

/// A push to send: the JSON body and how many changes are in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The request body.
    pub body: String,
    /// Changes in it.
    pub changes: usize,
    /// Whether this is a re-send of the previous push.
    pub retry: bool,
}

/// What a handset does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Push these changes.
    Push(Push),
    /// Pull; `wait` seconds of long poll, or 0.
    Pull {
        /// Long-poll seconds.
        wait: u32,
        /// Page size.
        limit: usize,
    },
}

/// One change of a push answer (only what the generator learns from).
#[derive(Debug, Deserialize)]
pub struct PushOutcome {
    /// `applied`, `duplicate`, `conflict` or `rejected`.
    pub status: String,
    /// The item.
    pub item_id: Uuid,
    /// Version after an applied or duplicate change.
    #[serde(default)]
    pub version: Option<u64>,
}

/// One change of a pull answer (the document is skipped).
#[derive(Debug, Deserialize)]
pub struct Pulled {
    /// The item.
    pub item_id: Uuid,
    /// Its kind.
    pub kind: Kind,
    /// `put`, `patch` or `delete`.
    pub op: String,
    /// Its version.
    pub version: u64,
}

/// The generator state of one handset.
#[derive(Debug)]
pub struct Generator {
    rng: Rng,
    /// Items this handset has seen.
    pub known: KnownItems,
    last_push: Option<String>,
    /// The items of the last fresh push: kind, and whether the change was a delete.
    pending: HashMap<Uuid, (Kind, bool)>,
    /// Whether each change of the last fresh push was applied (or already a duplicate).
    last_applied: Vec<bool>,
    /// Whether the last fresh push's answer arrived.
    last_answered: bool,
}

impl Generator {
    /// A generator for one handset.
    pub fn new(seed: u64, known_cap: usize) -> Self {
        Self {
            rng: Rng::new(seed),
            known: KnownItems::new(known_cap),
            last_push: None,
            pending: HashMap::new(),
            last_applied: Vec::new(),
            last_answered: true,
        }
    }

    /// The next action under `mix`.
    pub fn next(&mut self, mix: &Mix, docs: &Documents) -> Action {
        if self.chance(mix.push_share) {
            Action::Push(self.push(mix, docs))
        } else {
            let wait = if self.chance(mix.long_poll_share) {
                mix.long_poll_wait
            } else {
                0
            };
            Action::Pull {
                wait,
                limit: mix.pull_limit,
            }
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        // 1e6 steps are plenty for a share.
        (self.rng.below(1_000_000) as f64) < p * 1_000_000.0
    }

    /// A push under `mix`: a retry of the previous one, or fresh changes.
    pub fn push(&mut self, mix: &Mix, docs: &Documents) -> Push {
        let retry = self.last_push.is_some() && self.chance(mix.retry_share);
        if let Some(prev) = self.last_push.as_ref().filter(|_| retry) {
            return Push {
                body: prev.clone(),
                changes: prev.matches("\"change_id\"").count(),
                retry: true,
            };
        }
        let n = mix.changes_per_push.max(1);
        let mut body = String::with_capacity(n * (mix.doc_bytes.1 + 200) + 32);
        body.push_str("{\"changes\":[");
        let mut used = std::collections::HashSet::new();
        let mut creating = 0;
        self.pending.clear();
        for i in 0..n {
            if i > 0 {
                body.push(',');
            }
            let change_id = self.rng.uuid();
            let r = self.rng.below(1_000_000) as f64 / 1_000_000.0;
            // Each change touches a distinct item, so the versions it names are the ones known.
            let mut target = self
                .known
                .random(&mut self.rng)
                .filter(|k| used.insert(k.item_id));
            // A full handset (counting the items this push creates) looks a little harder for
            // an item not yet in this push, so that it does not create one instead.
            let full = mix
                .items_per_handset
                .is_some_and(|cap| self.known.len() + creating >= cap);
            for _ in 0..8 {
                if target.is_some() || !full {
                    break;
                }
                target = self
                    .known
                    .random(&mut self.rng)
                    .filter(|k| used.insert(k.item_id));
            }
            let stale = self.chance(mix.stale_share);
            match target {
                Some(k) if r < mix.patch_share + mix.delete_share => {
                    let base = if stale && k.version > 1 {
                        k.version - 1
                    } else {
                        k.version
                    };
                    self.pending
                        .insert(k.item_id, (k.kind, r >= mix.patch_share));
                    if r < mix.patch_share {
                        let patch = format!(
                            "{{\"x-loadgen-note\":\"patched {}\",\"x-loadgen-old\":null}}",
                            self.rng.below(1_000_000)
                        );
                        push_change(
                            &mut body,
                            change_id,
                            k.kind,
                            k.item_id,
                            "patch",
                            Some(base),
                            Some(&patch),
                        );
                    } else {
                        push_change(
                            &mut body,
                            change_id,
                            k.kind,
                            k.item_id,
                            "delete",
                            Some(base),
                            None,
                        );
                    }
                }
                Some(k) if full => {
                    self.pending.insert(k.item_id, (k.kind, false));
                    let doc = docs.pick(k.kind, &mut self.rng);
                    push_change(
                        &mut body,
                        change_id,
                        k.kind,
                        k.item_id,
                        "put",
                        Some(k.version),
                        Some(doc),
                    );
                }
                _ => {
                    let kind = match mix.kinds.len() {
                        0 => Kind::Note,
                        n => mix.kinds[self.rng.below(n as u64) as usize],
                    };
                    let item_id = self.rng.uuid();
                    creating += 1;
                    self.pending.insert(item_id, (kind, false));
                    let doc = docs.pick(kind, &mut self.rng);
                    push_change(&mut body, change_id, kind, item_id, "put", None, Some(doc));
                }
            }
        }
        body.push_str("]}");
        self.last_push = Some(body.clone());
        Push {
            body,
            changes: n,
            retry: false,
        }
    }

    /// Whether a retry's answer keeps the promise: every change that the original push applied
    /// comes back `duplicate` (a change that was refused may be decided anew). `None` when the
    /// original's answer never arrived ([`Generator::lost`]): nothing is known to judge by.
    pub fn retry_answer_ok(&self, outcomes: &[PushOutcome]) -> Option<bool> {
        if !self.last_answered {
            return None;
        }
        Some(
            outcomes.len() == self.last_applied.len()
                && outcomes
                    .iter()
                    .zip(&self.last_applied)
                    .all(|(o, &applied)| !applied || o.status == "duplicate"),
        )
    }

    /// The answer to the last push was lost (an error or a timeout): a retry of it is not judged,
    /// since whether it was applied is not known (it was judged against the push before it, and
    /// a timed-out push the server never committed counted as a broken promise).
    pub fn lost(&mut self, retry: bool) {
        if !retry {
            self.last_answered = false;
        }
    }

    /// Learns from the answer to the last push (a retry's answer is the original's).
    pub fn pushed(&mut self, outcomes: &[PushOutcome], retry: bool) {
        if !retry {
            self.last_answered = true;
            self.last_applied = outcomes
                .iter()
                .map(|o| o.status == "applied" || o.status == "duplicate")
                .collect();
        }
        for o in outcomes {
            let Some(&(kind, delete)) = self.pending.get(&o.item_id) else {
                continue;
            };
            match (o.status.as_str(), o.version) {
                ("applied" | "duplicate", Some(_)) if delete => self.known.deleted(&o.item_id),
                ("applied" | "duplicate", Some(v)) => self.known.saw(o.item_id, kind, v),
                // A conflict or rejection: what the handset knew is out of date; a pull will
                // bring the item's current version.
                _ => {}
            }
        }
    }

    /// Learns from a pull's answer.
    pub fn pulled(&mut self, changes: &[Pulled]) {
        for c in changes {
            if c.op == "delete" {
                self.known.deleted(&c.item_id);
            } else {
                self.known.saw(c.item_id, c.kind, c.version);
            }
        }
    }
}

fn push_change(
    body: &mut String,
    change_id: Uuid,
    kind: Kind,
    item_id: Uuid,
    op: &str,
    base_version: Option<u64>,
    document: Option<&str>,
) {
    use std::fmt::Write;
    let _ = write!(
        body,
        "{{\"change_id\":\"{change_id}\",\"kind\":\"{kind}\",\"item_id\":\"{item_id}\",\"op\":\"{op}\""
    );
    if let Some(b) = base_version {
        let _ = write!(body, ",\"base_version\":{b}");
    }
    if let Some(d) = document {
        body.push_str(",\"document\":");
        body.push_str(d);
    }
    body.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(body: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(body).expect("valid JSON");
        v["changes"].as_array().expect("changes").clone()
    }

    #[test]
    fn pushes_are_valid_json_with_the_configured_count_and_sizes() {
        let mix = Mix::default();
        let docs = Documents::new(1, 16, (400, 500));
        let mut g = Generator::new(2, 1000);
        let p = g.push(&mix, &docs);
        let changes = parse(&p.body);
        assert_eq!(changes.len(), 100);
        assert_eq!(p.changes, 100);
        // Nothing known yet: every change is a put of a new item, with a document in range.
        for c in &changes {
            assert_eq!(c["op"], "put");
            let len = c["document"].to_string().len();
            assert!((380..=520).contains(&len), "document of {len} bytes");
            let kind = Kind::parse(c["kind"].as_str().expect("kind")).expect("known kind");
            let ty = c["document"]["@type"].as_str().expect("@type");
            assert_eq!(
                ty,
                match kind {
                    Kind::Contact => "Card",
                    Kind::Event => "Event",
                    Kind::Task => "Task",
                    Kind::Note => "Note",
                    Kind::Collection => "Collection",
                    Kind::Device => panic!("loadgen pushed kind device"),
                }
            );
        }
    }

    #[test]
    fn known_items_get_patches_deletes_and_stale_versions_in_the_configured_shares() {
        let mix = Mix {
            patch_share: 0.5,
            delete_share: 0.2,
            stale_share: 0.5,
            retry_share: 0.0,
            ..Mix::default()
        };
        let docs = Documents::new(1, 4, (300, 700));
        let mut g = Generator::new(3, 100_000);
        for i in 0..5000u32 {
            g.known
                .saw(Uuid::from_u128(u128::from(i) + 1), Kind::Note, 3);
        }
        let (mut patches, mut deletes, mut stale, mut total) = (0, 0, 0, 0);
        for _ in 0..20 {
            let p = g.push(&mix, &docs);
            let mut items = std::collections::HashSet::new();
            for c in parse(&p.body) {
                total += 1;
                assert!(
                    items.insert(c["item_id"].as_str().expect("id").to_string()),
                    "one change per item per push"
                );
                match c["op"].as_str() {
                    Some("patch") => patches += 1,
                    Some("delete") => deletes += 1,
                    _ => continue,
                }
                if c["base_version"] == 2 {
                    stale += 1;
                } else {
                    assert_eq!(c["base_version"], 3);
                }
            }
        }
        let share = |n: i32| f64::from(n) / f64::from(total);
        assert!(
            (0.4..0.6).contains(&share(patches)),
            "patches {}",
            share(patches)
        );
        assert!(
            (0.12..0.28).contains(&share(deletes)),
            "deletes {}",
            share(deletes)
        );
        let stale_share = f64::from(stale) / f64::from(patches + deletes);
        assert!((0.4..0.6).contains(&stale_share), "stale {stale_share}");
    }

    #[test]
    fn a_full_handset_replaces_known_items_instead_of_creating_more() {
        let mix = Mix {
            retry_share: 0.0,
            items_per_handset: Some(300),
            ..Mix::default()
        };
        let docs = Documents::new(1, 4, (300, 700));
        let mut g = Generator::new(7, 1000);
        let mut created = std::collections::HashSet::new();
        let (mut replaced, mut deleted) = (0, 0);
        for _ in 0..40 {
            let p = g.push(&mix, &docs);
            let changes = parse(&p.body);
            let mut outcomes = Vec::new();
            for c in &changes {
                let item_id: Uuid = c["item_id"].as_str().expect("id").parse().expect("uuid");
                let known = g.known.get(&item_id).map(|k| k.version);
                let version = match (c["op"].as_str(), known) {
                    (Some("put"), None) => {
                        assert!(
                            c.get("base_version").is_none(),
                            "a new item names no version"
                        );
                        created.insert(item_id);
                        1
                    }
                    (Some("put"), Some(v)) => {
                        assert_eq!(
                            c["base_version"], v,
                            "a replacement names the known version"
                        );
                        assert!(c["document"].is_object());
                        replaced += 1;
                        v + 1
                    }
                    (op, v) => {
                        deleted += usize::from(op == Some("delete"));
                        v.unwrap_or(1) + 1
                    }
                };
                outcomes.push(PushOutcome {
                    status: "applied".into(),
                    item_id,
                    version: Some(version),
                });
            }
            g.pushed(&outcomes, false);
            assert!(g.known.len() <= 300, "{}", g.known.len());
        }
        // 4,000 changes: 300 creations, then one per item deleted; the rest edit what exists.
        assert!(
            created.len() <= 300 + deleted,
            "{} items created, {deleted} deleted",
            created.len()
        );
        assert!(replaced > 2_000, "{replaced} replacements");
        // Without the bound, every change that is not a patch or a delete creates an item.
        let mut g = Generator::new(7, 100_000);
        let mut created = 0;
        for _ in 0..40 {
            let p = g.push(
                &Mix {
                    items_per_handset: None,
                    ..mix.clone()
                },
                &docs,
            );
            let changes = parse(&p.body);
            let mut outcomes = Vec::new();
            for c in &changes {
                let item_id: Uuid = c["item_id"].as_str().expect("id").parse().expect("uuid");
                if c["op"] == "put" {
                    created += 1;
                }
                outcomes.push(PushOutcome {
                    status: "applied".into(),
                    item_id,
                    version: Some(g.known.get(&item_id).map_or(1, |k| k.version + 1)),
                });
            }
            g.pushed(&outcomes, false);
        }
        assert!(created > 3_000, "{created}");
    }

    #[test]
    fn a_retry_resends_the_previous_push_byte_for_byte() {
        let mix = Mix {
            retry_share: 1.0,
            ..Mix::default()
        };
        let docs = Documents::new(1, 4, (300, 700));
        let mut g = Generator::new(4, 10);
        let first = g.push(&mix, &docs);
        assert!(!first.retry);
        let again = g.push(&mix, &docs);
        assert!(again.retry);
        assert_eq!(again.body, first.body);
        assert_eq!(again.changes, first.changes);
        // The original applied change 0 and refused change 1: the retry must answer change 0
        // duplicate; change 1 may be decided anew.
        let o = |status: &str| PushOutcome {
            status: status.into(),
            item_id: Uuid::from_u128(9),
            version: None,
        };
        let mut outcomes = vec![o("applied"), o("conflict")];
        outcomes.extend((2..first.changes).map(|_| o("applied")));
        g.pushed(&outcomes, false);
        let mut retried = vec![o("duplicate"), o("applied")];
        retried.extend((2..first.changes).map(|_| o("duplicate")));
        assert_eq!(g.retry_answer_ok(&retried), Some(true));
        retried[0] = o("applied");
        assert_eq!(
            g.retry_answer_ok(&retried),
            Some(false),
            "an applied change applied twice"
        );
        assert_eq!(
            g.retry_answer_ok(&retried[..1]),
            Some(false),
            "an answer of the wrong length"
        );
        // The next fresh push's answer is lost (a timeout): its retry is not judged against the
        // push before it (it used to be, and counted a push the server never committed as a
        // broken promise).
        g.lost(false);
        assert_eq!(g.retry_answer_ok(&retried), None);
        g.pushed(&outcomes, false);
        assert_eq!(g.retry_answer_ok(&retried), Some(false));
    }

    #[test]
    fn answers_teach_the_handset_versions_and_deletions() {
        let mut g = Generator::new(5, 10);
        let a = Uuid::from_u128(1);
        g.pulled(&[Pulled {
            item_id: a,
            kind: Kind::Task,
            op: "put".into(),
            version: 4,
        }]);
        assert_eq!(g.known.get(&a).map(|k| k.version), Some(4));
        // An older version never lowers what is known.
        g.pulled(&[Pulled {
            item_id: a,
            kind: Kind::Task,
            op: "patch".into(),
            version: 2,
        }]);
        assert_eq!(g.known.get(&a).map(|k| k.version), Some(4));
        // A push of a patch then a delete of it: the answers move the version, then forget it.
        let mix = Mix {
            patch_share: 1.0,
            delete_share: 0.0,
            stale_share: 0.0,
            changes_per_push: 1,
            ..Mix::default()
        };
        let docs = Documents::new(1, 2, (300, 700));
        let p = g.push(&mix, &docs);
        assert!(
            p.body.contains("\"op\":\"patch\"") && p.body.contains("\"base_version\":4"),
            "{}",
            p.body
        );
        g.pushed(
            &[PushOutcome {
                status: "applied".into(),
                item_id: a,
                version: Some(5),
            }],
            false,
        );
        assert_eq!(g.known.get(&a).map(|k| k.version), Some(5));
        let mix = Mix {
            patch_share: 0.0,
            delete_share: 1.0,
            ..mix
        };
        let p = g.push(&mix, &docs);
        assert!(p.body.contains("\"op\":\"delete\""), "{}", p.body);
        g.pushed(
            &[PushOutcome {
                status: "applied".into(),
                item_id: a,
                version: Some(6),
            }],
            false,
        );
        assert!(g.known.get(&a).is_none());
        g.pulled(&[Pulled {
            item_id: a,
            kind: Kind::Task,
            op: "put".into(),
            version: 7,
        }]);
        assert_eq!(g.known.get(&a).map(|k| k.version), Some(7));
        g.pulled(&[Pulled {
            item_id: a,
            kind: Kind::Task,
            op: "delete".into(),
            version: 6,
        }]);
        assert!(g.known.get(&a).is_none());
        assert!(g.known.is_empty());
    }

    #[test]
    fn known_items_stay_bounded_and_consistent_under_removal() {
        let mut k = KnownItems::new(3);
        for i in 1..=5u128 {
            k.saw(Uuid::from_u128(i), Kind::Note, 1);
        }
        assert_eq!(k.len(), 3);
        k.deleted(&Uuid::from_u128(1));
        assert_eq!(k.len(), 2);
        for i in [2u128, 3] {
            assert_eq!(
                k.get(&Uuid::from_u128(i)).map(|x| x.item_id),
                Some(Uuid::from_u128(i))
            );
        }
    }

    #[test]
    fn the_action_mix_follows_the_push_and_long_poll_shares() {
        let mix = Mix {
            push_share: 0.25,
            long_poll_share: 0.5,
            changes_per_push: 1,
            ..Mix::default()
        };
        let docs = Documents::new(1, 2, (300, 700));
        let mut g = Generator::new(6, 10);
        let (mut pushes, mut polls, mut long) = (0, 0, 0);
        for _ in 0..4000 {
            match g.next(&mix, &docs) {
                Action::Push(_) => pushes += 1,
                Action::Pull { wait: 0, .. } => polls += 1,
                Action::Pull { .. } => long += 1,
            }
        }
        assert!((800..1200).contains(&pushes), "pushes {pushes}");
        assert!(
            (1250..1750).contains(&polls) && (1250..1750).contains(&long),
            "{polls} {long}"
        );
    }
}
