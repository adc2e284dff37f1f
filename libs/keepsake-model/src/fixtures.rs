//! Deterministic, realistic test data for tests and benchmarks (feature `fixtures`).
//!
//! Documents look like what handsets send: JSContact cards, JSCalendar events and tasks, notes,
//! 300 to 700 bytes of compact JSON each.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{ChangeId, DeviceId, Document, Event, EventId, ItemId, Kind, Op, Origin, UserId};

/// A small deterministic generator (SplitMix64), so fixtures need no `rand`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A random UUID (version 4 bits set).
    pub fn uuid(&mut self) -> Uuid {
        let v = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        uuid::Builder::from_random_bytes(v.to_be_bytes()).into_uuid()
    }
}

const WORDS: &[&str] = &[
    "alpha",
    "harbour",
    "meeting",
    "quarterly",
    "review",
    "garden",
    "lisbon",
    "dentist",
    "project",
    "birthday",
    "invoice",
    "travel",
    "concert",
    "library",
    "market",
    "weekly",
    "planning",
    "call",
];

fn words(rng: &mut Rng, n: u64) -> String {
    (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A realistic document of `kind`, 300 to 700 bytes of compact JSON.
pub fn document(kind: Kind, rng: &mut Rng) -> Map<String, Value> {
    let target = 300 + rng.below(400) as usize;
    document_sized(kind, rng, target)
}

/// A realistic document of `kind` padded (with a `description`) to about `target` bytes of
/// compact JSON; never smaller than the kind's fixed fields.
pub fn document_sized(kind: Kind, rng: &mut Rng, target: usize) -> Map<String, Value> {
    let mut doc = match kind {
        Kind::Contact => json!({
            "@type": "Card", "version": "1.0", "uid": format!("urn:uuid:{}", rng.uuid()),
            "name": {"components": [{"kind": "given", "value": words(rng, 1)}, {"kind": "surname", "value": words(rng, 1)}]},
            "emails": {"e1": {"address": format!("{}@example.com", words(rng, 1))}},
            "phones": {"p1": {"number": format!("+1-555-{:04}", rng.below(10_000)), "features": {"mobile": true}}},
        }),
        Kind::Event => json!({
            "@type": "Event", "uid": rng.uuid().to_string(), "title": words(rng, 3),
            "start": format!("2026-{:02}-{:02}T{:02}:00:00", 1 + rng.below(12), 1 + rng.below(28), rng.below(24)),
            "duration": "PT1H", "timeZone": "Europe/Lisbon",
            "locations": {"l1": {"name": words(rng, 2)}},
        }),
        Kind::Task => json!({
            "@type": "Task", "uid": rng.uuid().to_string(), "title": words(rng, 4),
            "due": format!("2026-{:02}-{:02}T17:00:00", 1 + rng.below(12), 1 + rng.below(28)),
            "progress": "needs-action", "priority": rng.below(9),
        }),
        Kind::Note => json!({"@type": "Note", "title": words(rng, 3)}),
        Kind::Collection => {
            json!({"@type": "Collection", "holds": "calendar", "name": words(rng, 2)})
        }
        Kind::Device => json!({"@type": "Device", "name": words(rng, 2)}),
    };
    let len = serde_json::to_string(&doc).map_or(0, |s| s.len());
    if let Value::Object(map) = &mut doc {
        let pad = target.saturating_sub(len + 12);
        let mut text = words(rng, (pad / 7) as u64 + 1);
        text.truncate(pad);
        map.insert("description".into(), Value::String(text));
    }
    match doc {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A valid history: `users` users with `per_user` events each over a few items per user, mostly
/// puts with some patches and deletes, one `recorded_at` per `batch` events.
pub fn history(seed: u64, users: usize, per_user: usize, start: DateTime<Utc>) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    let user_ids: Vec<UserId> = (0..users).map(|_| UserId(rng.uuid())).collect();
    let device = DeviceId(rng.uuid());
    let mut out = Vec::with_capacity(users * per_user);
    for (u, user_id) in user_ids.iter().enumerate() {
        let items: Vec<(ItemId, Kind)> = (0..(per_user / 4).max(1))
            .map(|i| (ItemId(rng.uuid()), Kind::ITEMS[i % Kind::ITEMS.len()]))
            .collect();
        let mut versions: HashMap<ItemId, (u64, bool)> = HashMap::new();
        for seq in 1..=per_user as u64 {
            let (item_id, kind) = items[rng.below(items.len() as u64) as usize];
            let (version, deleted) = versions.get(&item_id).copied().unwrap_or((0, true));
            let op = if deleted || rng.below(10) < 7 {
                Op::Put
            } else if rng.below(3) == 0 {
                Op::Delete
            } else {
                Op::Patch
            };
            versions.insert(item_id, (version + 1, op == Op::Delete));
            let recorded_at = start + Duration::milliseconds((seq as i64) * 10 + u as i64);
            out.push(Event {
                user_id: *user_id,
                seq,
                event_id: EventId(rng.uuid()),
                change_id: ChangeId(rng.uuid()),
                device_id: Some(device),
                origin: Origin::Device,
                request_id: None,
                restore_id: None,
                kind,
                item_id,
                op,
                version: version + 1,
                recorded_at,
                document: (op != Op::Delete)
                    .then(|| Document::from_object(&document(kind, &mut rng))),
            });
        }
    }
    out
}
