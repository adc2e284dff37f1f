//! The object-key layout: the only module that knows where things live in a store.
//!
//! ```text
//! keepsake.json                                   store descriptor (create-only)
//! shards/<s>/segments/<n:020>.parquet             the log: dense n from 1 per shard, create-only
//! shards/<s>/checkpoints/<n:020>.parquet          state of shard s after segment n, whole (formats 1-3;
//!                                                 read, no longer written), create-only
//! shards/<s>/checkpoints/<n:020>.json             state of shard s after segment n: a manifest naming
//!                                                 parts (format 4), create-only
//! shards/<s>/parts/<n:020>-<d:032x>.parquet       a checkpoint part written by checkpoint n; d = the first
//!                                                 128 bits of its bytes' SHA-256 (one name, one content),
//!                                                 create-only
//! shards/<s>/history/<a:020>-<b:020>.parquet      segments a..=b compacted, sorted by (user_id, seq)
//! shards/<s>/history/<a:020>-<b:020>.verified     empty: that object was read back and matched its sources
//! shards/<s>/frontier/<b:020>/<g:020>.json        generation g of the compaction frontier (create-only),
//!                                                 in bucket b = g / 1000 (the newest: two listings)
//! shards/<s>/owners/<b:020>/<g:020>.json          generation g of the shard's ownership fence (create-only,
//!                                                 by the server taking the shard), bucketed the same way
//! restores/<restore_id>.json                      a single-user restore's record (create-only)
//! restores/<job>/spec.json                        a fleet restore: what was asked (create-only)
//! restores/<job>/plan.json                        its users, fixed when it starts (create-only)
//! restores/<job>/batches/<n:020>.json             users done, with their results (create-only)
//! restores/<job>/users/<user_id>.json             one user done (written by older versions; read)
//! restores/<job>/done.json, failed.json           how it ended (create-only)
//! devices/<user_id>/<device_id>.json              a registered device (create-only; no token)
//! revocations/<device_id>.json                    a device's revocation (create-only)
//! revocation-log/<ms:020>-<device_id>             empty: that device revoked at ms since the epoch,
//!                                                 in time order, so servers list only new ones
//! ```
//!
//! A file-system store may also hold `.secrets/` (the embedded default's generated operator
//! token and token-signing key, owner-readable only): local secrets, not store objects.
//!
//! `<s>` is the shard number in decimal without leading zeros; `<n:020>` is zero-padded to 20
//! digits so that keys sort in log order. Every `format_*` has a `parse` counterpart, and
//! [`parse`] accepts exactly what the formatters produce (round-trip tested), so anything else
//! found in a store is reported as foreign.
//!
//! Users are routed to shards by [`shard_for`], FNV-1a over the user id's bytes: part of the
//! persisted format, since a user's events must always be found in the same shard.

use keepsake_model::{DeviceId, RestoreId, UserId};
use object_store::path::Path;

/// The store descriptor's key.
pub const DESCRIPTOR: &str = "keepsake.json";

/// A key Keepsake writes, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `keepsake.json`.
    Descriptor,
    /// A log segment.
    Segment {
        /// Shard.
        shard: u32,
        /// Segment number, from 1.
        n: u64,
    },
    /// Segments `first..=last` of a shard compacted into one object.
    History {
        /// Shard.
        shard: u32,
        /// The first segment it holds.
        first: u64,
        /// The last segment it holds.
        last: u64,
    },
    /// The mark that history object `first..=last` was read back and compared equal with its
    /// sources (written by compaction before it deletes any of them, create-only, empty).
    HistoryVerified {
        /// Shard.
        shard: u32,
        /// The first segment the object holds.
        first: u64,
        /// The last segment the object holds.
        last: u64,
    },
    /// Generation `generation` of a shard's compaction frontier: how far compaction may have
    /// deleted segment objects (written create-only, generations dense from 1).
    Frontier {
        /// Shard.
        shard: u32,
        /// The generation, from 1.
        generation: u64,
    },
    /// Generation `generation` of a shard's ownership fence: the server that took the shard
    /// then (written create-only by it, generations dense from 1).
    Owner {
        /// Shard.
        shard: u32,
        /// The generation, from 1.
        generation: u64,
    },
    /// A checkpoint of a shard after segment `n`, whole in one object (formats 1-3).
    Checkpoint {
        /// Shard.
        shard: u32,
        /// The last segment it includes.
        n: u64,
    },
    /// A checkpoint of a shard after segment `n` as a manifest naming its parts (format 4).
    Manifest {
        /// Shard.
        shard: u32,
        /// The last segment it includes.
        n: u64,
    },
    /// A part of checkpoints: the state of some users, written by the checkpoint after
    /// segment `n` and named by manifests from then on while they keep it.
    Part {
        /// Shard.
        shard: u32,
        /// The checkpoint that wrote it.
        n: u64,
        /// The first 128 bits of the SHA-256 of its bytes.
        digest: u128,
    },
    /// A restore's record (a single-user restore's result, or a fleet job's progress).
    RestoreJob(RestoreId),
    /// A fleet restore's objects.
    Fleet {
        /// The job.
        job: RestoreId,
        /// Which object.
        part: FleetPart,
    },
    /// A registered device.
    Device {
        /// Its user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A device's revocation.
    Revocation(DeviceId),
    /// A revocation's entry in the time-ordered revocation log.
    RevocationLog {
        /// When it was revoked, in milliseconds since the Unix epoch.
        at_ms: u64,
        /// The device.
        device: DeviceId,
    },
}

/// The objects of a fleet restore job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetPart {
    /// `spec.json`.
    Spec,
    /// `plan.json`.
    Plan,
    /// `users/<user_id>.json`: one user done, as versions before batches wrote it.
    UserDone(UserId),
    /// `batches/<n:020>.json`: the users done since the previous batch, with their results.
    Batch(u64),
    /// `done.json`.
    Done,
    /// `failed.json`.
    Failed,
}

/// The prefix of every restore object.
pub fn restores_prefix() -> Path {
    Path::from("restores")
}

/// The path of a fleet restore job's object.
pub fn fleet(job: RestoreId, part: FleetPart) -> Path {
    match part {
        FleetPart::Spec => Path::from(format!("restores/{job}/spec.json")),
        FleetPart::Plan => Path::from(format!("restores/{job}/plan.json")),
        FleetPart::UserDone(u) => Path::from(format!("restores/{job}/users/{u}.json")),
        FleetPart::Batch(n) => Path::from(format!("restores/{job}/batches/{n:020}.json")),
        FleetPart::Done => Path::from(format!("restores/{job}/done.json")),
        FleetPart::Failed => Path::from(format!("restores/{job}/failed.json")),
    }
}

/// The prefix of every object of a fleet job.
pub fn fleet_prefix(job: RestoreId) -> Path {
    Path::from(format!("restores/{job}"))
}

/// The descriptor's path.
pub fn descriptor() -> Path {
    Path::from(DESCRIPTOR)
}

/// The prefix under which every shard's objects live.
pub fn shards_prefix() -> Path {
    Path::from("shards")
}

/// The prefix under which one shard's objects (segments, checkpoints, history) live.
pub fn shard_prefix(shard: u32) -> Path {
    Path::from(format!("shards/{shard}"))
}

/// The shard a [`shard_prefix`] names (as a delimiter listing of [`shards_prefix`] returns it);
/// `None` for anything else.
pub fn parse_shard_prefix(path: &Path) -> Option<u32> {
    match path.as_ref().split('/').collect::<Vec<_>>().as_slice() {
        ["shards", s] => parse_shard(s),
        _ => None,
    }
}

/// The prefix of every registered device.
pub fn all_devices_prefix() -> Path {
    Path::from("devices")
}

/// The prefixes under which every object Keepsake writes lives, but the descriptor: a store with
/// nothing under any of them holds no Keepsake data.
pub fn data_prefixes() -> [Path; 5] {
    [
        shards_prefix(),
        all_devices_prefix(),
        revocations_prefix(),
        revocation_log_prefix(),
        restores_prefix(),
    ]
}

/// The prefix under which a shard's segments live.
pub fn segments_prefix(shard: u32) -> Path {
    Path::from(format!("shards/{shard}/segments"))
}

/// The path of segment `n` of `shard`.
pub fn segment(shard: u32, n: u64) -> Path {
    Path::from(format!("shards/{shard}/segments/{n:020}.parquet"))
}

/// The prefix under which a shard's compacted history lives.
pub fn history_prefix(shard: u32) -> Path {
    Path::from(format!("shards/{shard}/history"))
}

/// The path of the object holding segments `first..=last` of `shard`.
pub fn history(shard: u32, first: u64, last: u64) -> Path {
    Path::from(format!(
        "shards/{shard}/history/{first:020}-{last:020}.parquet"
    ))
}

/// The path of the mark that history object `first..=last` of `shard` was verified.
pub fn history_verified(shard: u32, first: u64, last: u64) -> Path {
    Path::from(format!(
        "shards/{shard}/history/{first:020}-{last:020}.verified"
    ))
}

/// A chain of numbered create-only records per shard: generation `g` is written only by a
/// process that read `g - 1`, so generations are dense from 1, and the newest is found by listing
/// the buckets and then the newest bucket, never the whole chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chain {
    /// The compaction frontier: how far compaction may have deleted segment objects.
    Frontier,
    /// The ownership fence: which server took the shard, generation by generation.
    Owners,
}

impl Chain {
    fn dir(self) -> &'static str {
        match self {
            Chain::Frontier => "frontier",
            Chain::Owners => "owners",
        }
    }

    fn from_dir(dir: &str) -> Option<Self> {
        match dir {
            "frontier" => Some(Chain::Frontier),
            "owners" => Some(Chain::Owners),
            _ => None,
        }
    }

    fn key(self, shard: u32, generation: u64) -> Key {
        match self {
            Chain::Frontier => Key::Frontier { shard, generation },
            Chain::Owners => Key::Owner { shard, generation },
        }
    }
}

/// Generations per bucket of a shard's chain: the compaction frontier grows by one per
/// compaction for the store's life.
pub const FRONTIER_BUCKET: u64 = 1000;

/// The prefix under which a shard's chain lives (its buckets).
pub fn chain_prefix(shard: u32, chain: Chain) -> Path {
    Path::from(format!("shards/{shard}/{}", chain.dir()))
}

/// The prefix of bucket `bucket` of a shard's chain.
pub fn chain_bucket(shard: u32, chain: Chain, bucket: u64) -> Path {
    Path::from(format!("shards/{shard}/{}/{bucket:020}", chain.dir()))
}

/// The shard and bucket a [`chain_bucket`] prefix of `chain` names (as a delimiter listing of
/// [`chain_prefix`] returns it); `None` for anything else.
pub fn parse_chain_bucket(path: &Path, chain: Chain) -> Option<(u32, u64)> {
    match path.as_ref().split('/').collect::<Vec<_>>().as_slice() {
        ["shards", s, dir, bucket] if *dir == chain.dir() => {
            Some((parse_shard(s)?, parse_n(bucket, "")?))
        }
        _ => None,
    }
}

/// The path of generation `generation` of `shard`'s chain.
pub fn chain_link(shard: u32, chain: Chain, generation: u64) -> Path {
    let bucket = generation / FRONTIER_BUCKET;
    Path::from(format!(
        "shards/{shard}/{}/{bucket:020}/{generation:020}.json",
        chain.dir()
    ))
}

/// The prefix under which a shard's compaction frontier lives (its buckets).
pub fn frontier_prefix(shard: u32) -> Path {
    chain_prefix(shard, Chain::Frontier)
}

/// The prefix of bucket `bucket` of a shard's compaction frontier.
pub fn frontier_bucket(shard: u32, bucket: u64) -> Path {
    chain_bucket(shard, Chain::Frontier, bucket)
}

/// The bucket a [`frontier_bucket`] prefix names (as a delimiter listing of
/// [`frontier_prefix`] returns it); `None` for anything else.
pub fn parse_frontier_bucket(path: &Path) -> Option<(u32, u64)> {
    parse_chain_bucket(path, Chain::Frontier)
}

/// The path of generation `generation` of `shard`'s compaction frontier.
pub fn frontier(shard: u32, generation: u64) -> Path {
    chain_link(shard, Chain::Frontier, generation)
}

/// The path of generation `generation` of `shard`'s ownership fence.
pub fn owner(shard: u32, generation: u64) -> Path {
    chain_link(shard, Chain::Owners, generation)
}

/// The prefix under which a shard's checkpoints live.
pub fn checkpoints_prefix(shard: u32) -> Path {
    Path::from(format!("shards/{shard}/checkpoints"))
}

/// The path of the checkpoint of `shard` after segment `n`.
pub fn checkpoint(shard: u32, n: u64) -> Path {
    Path::from(format!("shards/{shard}/checkpoints/{n:020}.parquet"))
}

/// The path of the manifest of `shard`'s checkpoint after segment `n` (checkpoint format 4).
pub fn manifest(shard: u32, n: u64) -> Path {
    Path::from(format!("shards/{shard}/checkpoints/{n:020}.json"))
}

/// The prefix under which a shard's checkpoint parts live.
pub fn parts_prefix(shard: u32) -> Path {
    Path::from(format!("shards/{shard}/parts"))
}

/// The path of a checkpoint part of `shard` written by checkpoint `n`, with content digest
/// `digest`.
pub fn part(shard: u32, n: u64, digest: u128) -> Path {
    Path::from(format!(
        "shards/{shard}/parts/{n:020}-{digest:032x}.parquet"
    ))
}

/// The prefix under which a user's devices are registered.
pub fn devices_prefix(user: UserId) -> Path {
    Path::from(format!("devices/{user}"))
}

/// The path of a registered device.
pub fn device(user: UserId, device: DeviceId) -> Path {
    Path::from(format!("devices/{user}/{device}.json"))
}

/// The prefix of every revocation.
pub fn revocations_prefix() -> Path {
    Path::from("revocations")
}

/// The path of a device's revocation.
pub fn revocation(device: DeviceId) -> Path {
    Path::from(format!("revocations/{device}.json"))
}

/// The prefix of the time-ordered revocation log.
pub fn revocation_log_prefix() -> Path {
    Path::from("revocation-log")
}

/// The revocation log's entry for `device`, revoked at `at_ms` (milliseconds since the epoch).
pub fn revocation_log(at_ms: u64, device: DeviceId) -> Path {
    Path::from(format!("revocation-log/{at_ms:020}-{device}"))
}

/// The key a listing of the revocation log starts after to see every entry from `at_ms` on.
pub fn revocation_log_from(at_ms: u64) -> Path {
    Path::from(format!("revocation-log/{at_ms:020}"))
}

/// The path of a fleet restore job record.
pub fn restore_job(id: RestoreId) -> Path {
    Path::from(format!("restores/{id}.json"))
}

fn parse_shard(s: &str) -> Option<u32> {
    let canonical = !s.is_empty() && (s == "0" || !s.starts_with('0'));
    if canonical && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn parse_n(file: &str, ext: &str) -> Option<u64> {
    let digits = file.strip_suffix(ext)?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Parses an id in its canonical (lowercase, hyphenated) form only, so keys round-trip.
fn parse_id<T: std::str::FromStr + std::fmt::Display>(s: &str) -> Option<T> {
    let parsed: T = s.parse().ok()?;
    (parsed.to_string() == s).then_some(parsed)
}

/// The kinds of object a store request may be for, as `/metrics` splits the bytes read
/// ([`object_kind`]): cheap to tell from the path's directory, without parsing the file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `shards/<s>/segments/…`
    Segment,
    /// `shards/<s>/history/…`, verified markers included.
    History,
    /// `shards/<s>/parts/…`: checkpoint parts and filter runs.
    Part,
    /// `shards/<s>/checkpoints/…`: manifests and whole checkpoints.
    Checkpoint,
    /// Anything else: chains, devices, revocations, restores, the descriptor.
    Other,
}

impl ObjectKind {
    /// Every kind, in the order metrics show them.
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Segment,
        ObjectKind::History,
        ObjectKind::Part,
        ObjectKind::Checkpoint,
        ObjectKind::Other,
    ];

    /// The label metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Segment => "segment",
            ObjectKind::History => "history",
            ObjectKind::Part => "part",
            ObjectKind::Checkpoint => "checkpoint",
            ObjectKind::Other => "other",
        }
    }

    /// Its place in [`ObjectKind::ALL`].
    pub fn index(self) -> usize {
        ObjectKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(ObjectKind::ALL.len() - 1)
    }
}

/// What kind of object `path` names, by its directory under `shards/<s>/`.
pub fn object_kind(path: &Path) -> ObjectKind {
    let mut parts = path.as_ref().split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("shards"), Some(_), Some("segments")) => ObjectKind::Segment,
        (Some("shards"), Some(_), Some("history")) => ObjectKind::History,
        (Some("shards"), Some(_), Some("parts")) => ObjectKind::Part,
        (Some("shards"), Some(_), Some("checkpoints")) => ObjectKind::Checkpoint,
        _ => ObjectKind::Other,
    }
}

/// Parses a path written by this module; `None` for anything else.
pub fn parse(path: &Path) -> Option<Key> {
    let parts: Vec<&str> = path.as_ref().split('/').collect();
    match parts.as_slice() {
        [DESCRIPTOR] => Some(Key::Descriptor),
        ["shards", s, "segments", file] => Some(Key::Segment {
            shard: parse_shard(s)?,
            n: parse_n(file, ".parquet")?,
        }),
        ["shards", s, "history", file] => {
            let (range, verified) = match file.strip_suffix(".parquet") {
                Some(r) => (r, false),
                None => (file.strip_suffix(".verified")?, true),
            };
            let (first, last) = range.split_once('-')?;
            let (first, last) = (parse_n(first, "")?, parse_n(last, "")?);
            let shard = parse_shard(s)?;
            (first >= 1 && first <= last).then_some(if verified {
                Key::HistoryVerified { shard, first, last }
            } else {
                Key::History { shard, first, last }
            })
        }
        ["shards", s, dir, bucket, file] => {
            let chain = Chain::from_dir(dir)?;
            let generation = parse_n(file, ".json")?;
            let in_its_bucket = parse_n(bucket, "")? == generation / FRONTIER_BUCKET;
            (generation >= 1 && in_its_bucket).then_some(chain.key(parse_shard(s)?, generation))
        }
        ["shards", s, "checkpoints", file] => {
            let shard = parse_shard(s)?;
            Some(match parse_n(file, ".parquet") {
                Some(n) => Key::Checkpoint { shard, n },
                None => Key::Manifest {
                    shard,
                    n: parse_n(file, ".json")?,
                },
            })
        }
        ["shards", s, "parts", file] => {
            let (n, digest) = file.strip_suffix(".parquet")?.split_once('-')?;
            let canonical = digest.len() == 32
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            Some(Key::Part {
                shard: parse_shard(s)?,
                n: parse_n(n, "")?,
                digest: canonical
                    .then(|| u128::from_str_radix(digest, 16).ok())
                    .flatten()?,
            })
        }
        ["restores", file] => Some(Key::RestoreJob(parse_id(file.strip_suffix(".json")?)?)),
        ["restores", job, file] => {
            let part = match *file {
                "spec.json" => FleetPart::Spec,
                "plan.json" => FleetPart::Plan,
                "done.json" => FleetPart::Done,
                "failed.json" => FleetPart::Failed,
                _ => return None,
            };
            Some(Key::Fleet {
                job: parse_id(job)?,
                part,
            })
        }
        ["restores", job, "users", file] => Some(Key::Fleet {
            job: parse_id(job)?,
            part: FleetPart::UserDone(parse_id(file.strip_suffix(".json")?)?),
        }),
        ["restores", job, "batches", file] => Some(Key::Fleet {
            job: parse_id(job)?,
            part: FleetPart::Batch(parse_n(file, ".json")?),
        }),
        ["devices", user, file] => Some(Key::Device {
            user: parse_id(user)?,
            device: parse_id(file.strip_suffix(".json")?)?,
        }),
        ["revocations", file] => Some(Key::Revocation(parse_id(file.strip_suffix(".json")?)?)),
        ["revocation-log", file] => {
            let (at, device) = file.split_at_checked(20)?;
            let device = device.strip_prefix('-')?;
            Some(Key::RevocationLog {
                at_ms: parse_n(at, "")?,
                device: parse_id(device)?,
            })
        }
        _ => None,
    }
}

/// Formats a parsed key back into its path.
pub fn format(key: &Key) -> Path {
    match *key {
        Key::Descriptor => descriptor(),
        Key::Segment { shard, n } => segment(shard, n),
        Key::Checkpoint { shard, n } => checkpoint(shard, n),
        Key::Manifest { shard, n } => manifest(shard, n),
        Key::Part { shard, n, digest } => part(shard, n, digest),
        Key::History { shard, first, last } => history(shard, first, last),
        Key::HistoryVerified { shard, first, last } => history_verified(shard, first, last),
        Key::Frontier { shard, generation } => frontier(shard, generation),
        Key::Owner { shard, generation } => owner(shard, generation),
        Key::RestoreJob(id) => restore_job(id),
        Key::Fleet { job, part } => fleet(job, part),
        Key::Device { user, device: d } => device(user, d),
        Key::Revocation(d) => revocation(d),
        Key::RevocationLog { at_ms, device } => revocation_log(at_ms, device),
    }
}

/// Most shards a store may have (shard numbers are below it).
pub const MAX_SHARDS: u32 = 4096;

/// The shard that holds a user's log: FNV-1a (64-bit) of the id's 16 bytes, modulo the count.
pub fn shard_for(user: &UserId, shard_count: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = user
        .as_bytes()
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    (hash % u64::from(shard_count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn every_key_round_trips() {
        let keys = [
            Key::Descriptor,
            Key::Segment { shard: 0, n: 1 },
            Key::Segment {
                shard: 17,
                n: u64::MAX,
            },
            Key::Checkpoint { shard: 3, n: 42 },
            Key::Manifest { shard: 3, n: 42 },
            Key::Part {
                shard: 3,
                n: 42,
                digest: 0x0123_4567_89ab_cdef_0000_0000_0000_00ff,
            },
            Key::Part {
                shard: 0,
                n: 1,
                digest: 0,
            },
            Key::Frontier {
                shard: 2,
                generation: 1,
            },
            Key::Frontier {
                shard: 0,
                generation: u64::MAX,
            },
            Key::Owner {
                shard: 5,
                generation: 1,
            },
            Key::Owner {
                shard: 0,
                generation: 1_234_567,
            },
            Key::History {
                shard: 3,
                first: 1,
                last: 42,
            },
            Key::History {
                shard: 0,
                first: 9,
                last: 9,
            },
            Key::HistoryVerified {
                shard: 3,
                first: 1,
                last: 42,
            },
            Key::RestoreJob(RestoreId(Uuid::from_u128(0xabc))),
            Key::Device {
                user: UserId(Uuid::from_u128(1)),
                device: DeviceId(Uuid::from_u128(2)),
            },
            Key::Revocation(DeviceId(Uuid::from_u128(3))),
            Key::RevocationLog {
                at_ms: 1_764_547_200_000,
                device: DeviceId(Uuid::from_u128(3)),
            },
            Key::Fleet {
                job: RestoreId(Uuid::from_u128(4)),
                part: FleetPart::Spec,
            },
            Key::Fleet {
                job: RestoreId(Uuid::from_u128(4)),
                part: FleetPart::Plan,
            },
            Key::Fleet {
                job: RestoreId(Uuid::from_u128(4)),
                part: FleetPart::Done,
            },
            Key::Fleet {
                job: RestoreId(Uuid::from_u128(4)),
                part: FleetPart::Failed,
            },
            Key::Fleet {
                job: RestoreId(Uuid::from_u128(4)),
                part: FleetPart::UserDone(UserId(Uuid::from_u128(5))),
            },
            Key::Fleet {
                job: RestoreId(Uuid::from_u128(4)),
                part: FleetPart::Batch(17),
            },
        ];
        for k in keys {
            assert_eq!(parse(&format(&k)), Some(k), "{}", format(&k));
            // Every key but the descriptor lies under one of the data prefixes, and a shard's
            // keys under its shard prefix: an emptiness check or a shard survey sees them all.
            let path = format(&k);
            let under = data_prefixes()
                .iter()
                .filter(|p| path.prefix_matches(p))
                .count();
            assert_eq!(under, usize::from(k != Key::Descriptor), "{path}");
            if let Key::Segment { shard, .. }
            | Key::Checkpoint { shard, .. }
            | Key::Manifest { shard, .. }
            | Key::Part { shard, .. }
            | Key::History { shard, .. }
            | Key::HistoryVerified { shard, .. }
            | Key::Frontier { shard, .. }
            | Key::Owner { shard, .. } = k
            {
                assert!(path.prefix_matches(&shard_prefix(shard)), "{path}");
                assert!(path.prefix_matches(&shards_prefix()), "{path}");
            }
        }
        for shard in [0, 1, 17, MAX_SHARD_FOR_TEST] {
            assert_eq!(parse_shard_prefix(&shard_prefix(shard)), Some(shard));
        }
        for g in [1, 999, 1000, 123_456] {
            let path = frontier(3, g);
            assert!(
                path.prefix_matches(&frontier_bucket(3, g / FRONTIER_BUCKET)),
                "{path}"
            );
            assert_eq!(
                parse_frontier_bucket(&frontier_bucket(3, g / FRONTIER_BUCKET)),
                Some((3, g / FRONTIER_BUCKET))
            );
        }
        assert_eq!(parse_frontier_bucket(&frontier_prefix(3)), None);
        for g in [1, 999, 1000, 123_456] {
            let path = owner(3, g);
            let bucket = chain_bucket(3, Chain::Owners, g / FRONTIER_BUCKET);
            assert!(path.prefix_matches(&bucket), "{path}");
            assert!(
                path.prefix_matches(&chain_prefix(3, Chain::Owners)),
                "{path}"
            );
            assert_eq!(
                parse_chain_bucket(&bucket, Chain::Owners),
                Some((3, g / FRONTIER_BUCKET))
            );
            assert_eq!(parse_chain_bucket(&bucket, Chain::Frontier), None);
        }
        for p in [
            "shards",
            "shards/01",
            "shards/x",
            "shards/1/segments",
            "devices/1",
        ] {
            assert_eq!(parse_shard_prefix(&Path::from(p)), None, "{p}");
        }
        assert_eq!(
            segment(2, 7).as_ref(),
            "shards/2/segments/00000000000000000007.parquet"
        );
    }

    #[test]
    fn foreign_and_non_canonical_keys_do_not_parse() {
        for p in [
            "keepsake.json.tmp",
            "shards/02/segments/00000000000000000007.parquet",
            "shards/2/segments/7.parquet",
            "shards/2/segments/0000000000000000000x.parquet",
            "shards/2/segments/00000000000000000007.json",
            "shards/x/segments/00000000000000000007.parquet",
            "shards/2/other/00000000000000000007.parquet",
            "shards/2/history/00000000000000000007.parquet",
            "shards/2/history/00000000000000000007-00000000000000000005.parquet",
            "shards/2/history/00000000000000000000-00000000000000000005.parquet",
            "shards/2/history/7-9.parquet",
            "shards/2/checkpoints/00000000000000000007.txt",
            "shards/2/parts/00000000000000000007.parquet",
            "shards/2/parts/00000000000000000007-0123.parquet",
            "shards/2/parts/00000000000000000007-0123456789ABCDEF0123456789ABCDEF.parquet",
            "shards/2/parts/00000000000000000007-0123456789abcdef0123456789abcdef.json",
            "shards/2/frontier/00000000000000000000/00000000000000000000.json",
            "shards/2/frontier/00000000000000000000/00000000000000000001.parquet",
            "shards/2/frontier/00000000000000000001/00000000000000000001.json",
            "shards/2/frontier/00000000000000000001.json",
            "restores/ABC.json",
            "restores/00000000-0000-0000-0000-000000000ABC.json",
            "devices/00000000-0000-0000-0000-000000000001/x.json",
            "revocations/00000000-0000-0000-0000-00000000000A.json",
            ".secrets/admin-token",
            "notes.txt",
        ] {
            assert_eq!(parse(&Path::from(p)), None, "{p}");
        }
    }

    #[test]
    fn shard_routing_is_stable_and_spreads_users() {
        // Pinned values: changing the hash would strand every user's log in the wrong shard.
        let u = UserId(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef));
        assert_eq!(shard_for(&u, 1), 0);
        assert_eq!(shard_for(&u, 16), shard_for(&u, 16));
        let pinned: Vec<u32> = (0..4u128)
            .map(|n| shard_for(&UserId(Uuid::from_u128(n)), 8))
            .collect();
        assert_eq!(pinned, PINNED);
        let mut counts = [0u32; 8];
        for n in 0..8000u128 {
            counts[shard_for(&UserId(Uuid::from_u128(n * 7919)), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    const MAX_SHARD_FOR_TEST: u32 = u32::MAX;

    // FNV-1a of the 16 big-endian bytes of 0..4, modulo 8, computed independently (Python).
    const PINNED: [u32; 4] = [5, 2, 7, 4];
}
