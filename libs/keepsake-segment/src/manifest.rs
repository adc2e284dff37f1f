//! Checkpoint format 4: a shard's state after segment `n` as a small manifest naming immutable
//! parts, so that a checkpoint rewrites only the users changed since the previous one.
//!
//! A part is a Parquet file in the whole-checkpoint format (1-3, [`crate::encode_checkpoint`]):
//! the full state of some users, stamped with the checkpoint that wrote it. A manifest names:
//! - `base`: parts holding disjoint, contiguous ranges of user ids, ascending; part `i` holds
//!   the users in `[from_i, from_{i+1})`, the first from the nil id;
//! - `deltas`: parts holding the users changed by later checkpoints, newest first, each with the
//!   sorted list of its users (in the manifest, so a reader finds a user's part with no read).
//!
//! - `filter_runs` (format 6): filter runs ([`crate::filter_run`]), newest first, holding the
//!   users' sealed change-id filter blocks that parts of checkpoint format 6 do not.
//!
//! A user's state is its rows in the newest delta that lists it, else in the base part whose
//! range holds it, else empty; its sealed filter blocks are in the runs. This build stamps
//! every manifest it writes format 6 (4 is still read: no runs), so that a build that knows
//! only 4 refuses it rather than reading it without its runs (and deleting them as unnamed)
//! or meeting parts of format 6. Invariants (checked on decode): the base's ranges ascend from the
//! nil id; each delta's users ascend strictly and their count is the part's; no part was written
//! after the manifest's segment. A manifest is derived like any checkpoint: it must equal the
//! fold of segments `1..=n`.

use base64::Engine;
use keepsake_model::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

use crate::error::{SegmentError, invalid};

/// The checkpoint format version of a manifest naming no filter runs (read, no longer written).
pub const MANIFEST_VERSION: u32 = 4;
/// The checkpoint format version of the manifests this build writes (they may name filter runs).
pub const MANIFEST_RUNS_VERSION: u32 = 6;

/// One part as a manifest names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartRef {
    /// The checkpoint (its segment) that wrote the part: the part's key holds it.
    pub written_by: u64,
    /// The first 128 bits of the SHA-256 of the part's bytes: the part's key holds it.
    pub digest: u128,
    /// Users in the part.
    pub users: u64,
    /// The part's size in bytes (a reader needs no HEAD).
    pub bytes: u64,
}

/// A part of the base: the users from `from` up to the next base part's `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BasePart {
    /// The lowest user id the part may hold.
    pub from: UserId,
    /// The part.
    pub part: PartRef,
}

/// A delta: the users a later checkpoint changed, with their full state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaPart {
    /// The part.
    pub part: PartRef,
    /// Its users, ascending.
    pub users: Vec<UserId>,
}

/// A checkpoint of format 4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The shard.
    pub shard: u32,
    /// The last segment it includes.
    pub segment: u64,
    /// Users in the state (each counted once, in whichever part holds it).
    pub users: u64,
    /// Range parts, ascending by `from`.
    pub base: Vec<BasePart>,
    /// Deltas, newest first.
    pub deltas: Vec<DeltaPart>,
    /// Filter runs, newest first (their `users`: rows).
    pub filter_runs: Vec<PartRef>,
}

/// The lowest user id (the first base part's `from`).
pub const NIL_USER: UserId = UserId(uuid::Uuid::nil());

impl Manifest {
    /// The part holding `user`'s state, if any part may: the newest delta listing it, else the
    /// base part whose range holds it.
    pub fn locate(&self, user: &UserId) -> Option<&PartRef> {
        if let Some(d) = self
            .deltas
            .iter()
            .find(|d| d.users.binary_search(user).is_ok())
        {
            return Some(&d.part);
        }
        self.base_index(user).map(|i| &self.base[i].part)
    }

    /// The index of the base part whose range holds `user`.
    pub fn base_index(&self, user: &UserId) -> Option<usize> {
        self.base
            .partition_point(|b| b.from <= *user)
            .checked_sub(1)
    }

    /// Users listed by the deltas (a user in two deltas counts twice).
    pub fn delta_users(&self) -> u64 {
        self.deltas.iter().map(|d| d.users.len() as u64).sum()
    }

    /// Every object named: the base parts, then the deltas newest first, then the filter runs
    /// newest first (what must exist, and what retention keeps).
    pub fn parts(&self) -> impl Iterator<Item = &PartRef> {
        self.base
            .iter()
            .map(|b| &b.part)
            .chain(self.deltas.iter().map(|d| &d.part))
            .chain(self.filter_runs.iter())
    }
}

/// The digest a part is named by: the first 128 bits of the SHA-256 of its bytes.
pub fn part_digest(bytes: &[u8]) -> u128 {
    let d = sha2::Sha256::digest(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_be_bytes(first)
}

#[derive(Serialize, Deserialize)]
struct WirePart {
    written_by: u64,
    digest: String,
    users: u64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct WireBase {
    from: UserId,
    #[serde(flatten)]
    part: WirePart,
}

#[derive(Serialize, Deserialize)]
struct WireDelta {
    #[serde(flatten)]
    part: WirePart,
    /// The users' 16-byte ids, concatenated, ascending, in standard base64.
    user_ids: String,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format: String,
    format_version: u32,
    shard: u32,
    segment: u64,
    users: u64,
    base: Vec<WireBase>,
    deltas: Vec<WireDelta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    filter_runs: Vec<WirePart>,
}

impl From<&PartRef> for WirePart {
    fn from(p: &PartRef) -> Self {
        WirePart {
            written_by: p.written_by,
            digest: format!("{:032x}", p.digest),
            users: p.users,
            bytes: p.bytes,
        }
    }
}

impl WirePart {
    fn parse(&self, segment: u64) -> Result<PartRef, SegmentError> {
        let canonical = self.digest.len() == 32
            && self
                .digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let digest = canonical
            .then(|| u128::from_str_radix(&self.digest, 16).ok())
            .flatten()
            .ok_or_else(|| {
                invalid(format!(
                    "part digest {:?} is not 32 hex digits",
                    self.digest
                ))
            })?;
        if self.written_by == 0 || self.written_by > segment {
            return Err(invalid(format!(
                "a part written by checkpoint {} is named by checkpoint {segment}",
                self.written_by
            )));
        }
        Ok(PartRef {
            written_by: self.written_by,
            digest,
            users: self.users,
            bytes: self.bytes,
        })
    }
}

/// Encodes a manifest as JSON.
pub fn encode_manifest(m: &Manifest) -> Result<Vec<u8>, SegmentError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let wire = Wire {
        format: "keepsake-checkpoint".into(),
        // Always 6, runs or not: its parts are of format 6, which a build that knows only
        // manifests of 4 cannot read either.
        format_version: MANIFEST_RUNS_VERSION,
        shard: m.shard,
        segment: m.segment,
        users: m.users,
        base: m
            .base
            .iter()
            .map(|b| WireBase {
                from: b.from,
                part: (&b.part).into(),
            })
            .collect(),
        deltas: m
            .deltas
            .iter()
            .map(|d| WireDelta {
                part: (&d.part).into(),
                user_ids: b64.encode(
                    d.users
                        .iter()
                        .flat_map(|u| *u.as_bytes())
                        .collect::<Vec<_>>(),
                ),
            })
            .collect(),
        filter_runs: m.filter_runs.iter().map(WirePart::from).collect(),
    };
    // Checked as a reader checks it: a writer never stores what it could not read back.
    let bytes = serde_json::to_vec(&wire).map_err(|e| invalid(format!("manifest: {e}")))?;
    decode_manifest(&bytes)?;
    Ok(bytes)
}

/// Decodes a manifest, refusing one that breaks an invariant of the module docs.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, SegmentError> {
    let wire: Wire =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("manifest: {e}")))?;
    if wire.format != "keepsake-checkpoint" {
        return Err(invalid("not a checkpoint manifest"));
    }
    let runs_allowed = wire.format_version == MANIFEST_RUNS_VERSION;
    if wire.format_version != MANIFEST_VERSION && !runs_allowed {
        return Err(SegmentError::UnknownVersion {
            found: wire.format_version,
            known: &[MANIFEST_VERSION, MANIFEST_RUNS_VERSION],
        });
    }
    if !runs_allowed && !wire.filter_runs.is_empty() {
        return Err(invalid("a manifest of format 4 names filter runs"));
    }
    let segment = wire.segment;
    let mut base = Vec::with_capacity(wire.base.len());
    for b in &wire.base {
        let part = b.part.parse(segment)?;
        match base.last() {
            None if b.from != NIL_USER => {
                return Err(invalid("the first base part does not start at the nil id"));
            }
            Some(BasePart { from, .. }) if *from >= b.from => {
                return Err(invalid("base part ranges do not ascend"));
            }
            _ => {}
        }
        base.push(BasePart { from: b.from, part });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut deltas = Vec::with_capacity(wire.deltas.len());
    for d in &wire.deltas {
        let part = d.part.parse(segment)?;
        let raw = b64
            .decode(&d.user_ids)
            .map_err(|e| invalid(format!("a delta's user ids: {e}")))?;
        if raw.len() % 16 != 0 {
            return Err(invalid("a delta's user ids are not 16 bytes each"));
        }
        let users: Vec<UserId> = raw
            .chunks_exact(16)
            .map(|c| {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                UserId::from_bytes(b)
            })
            .collect();
        if users.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("a delta's user ids do not ascend"));
        }
        if users.len() as u64 != part.users {
            return Err(invalid(format!(
                "a delta lists {} users but its part holds {}",
                users.len(),
                part.users
            )));
        }
        deltas.push(DeltaPart { part, users });
    }
    let filter_runs = wire
        .filter_runs
        .iter()
        .map(|r| r.parse(segment))
        .collect::<Result<Vec<_>, _>>()?;
    if filter_runs
        .windows(2)
        .any(|w| w[0].written_by < w[1].written_by)
    {
        return Err(invalid("filter runs are not newest first"));
    }
    Ok(Manifest {
        shard: wire.shard,
        segment,
        users: wire.users,
        base,
        deltas,
        filter_runs,
    })
}

/// The machine-readable description of checkpoint format 4 (a manifest), as in
/// `schemas/checkpoint-v4.json`.
pub fn manifest_description() -> Value {
    json!({
        "format": "keepsake-checkpoint",
        "format_version": MANIFEST_VERSION,
        "encoding": "json",
        "fields": {
            "format": "\"keepsake-checkpoint\"",
            "format_version": "4",
            "shard": "the shard",
            "segment": "the last segment the state includes",
            "users": "users in the state",
            "base": "range parts, ascending: {from: user id, written_by, digest, users, bytes}; part i holds users in [from_i, from_{i+1}), the first from the nil id",
            "deltas": "parts of users changed later, newest first: {written_by, digest, users, bytes, user_ids}; user_ids = the users' 16-byte ids, ascending, concatenated, standard base64",
        },
        "part_key": "shards/<shard>/parts/<written_by:020>-<digest>.parquet",
        "part_format": "a whole checkpoint (versions 1-3) of the part's users, its keepsake.segment = written_by",
        "digest": "the first 128 bits of the SHA-256 of the part's bytes, 32 lowercase hex digits",
        "lookup": "the newest delta listing the user, else the base part whose range holds it, else the empty state",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn part(n: u64, users: u64) -> PartRef {
        PartRef {
            written_by: n,
            digest: u128::from(n) << 64 | 7,
            users,
            bytes: 100 * users,
        }
    }

    fn user(n: u128) -> UserId {
        UserId(Uuid::from_u128(n))
    }

    fn sample() -> Manifest {
        Manifest {
            shard: 3,
            segment: 9,
            users: 5,
            base: vec![
                BasePart {
                    from: NIL_USER,
                    part: part(4, 2),
                },
                BasePart {
                    from: user(100),
                    part: part(4, 2),
                },
            ],
            deltas: vec![
                DeltaPart {
                    part: part(9, 1),
                    users: vec![user(5)],
                },
                DeltaPart {
                    part: part(6, 2),
                    users: vec![user(5), user(200)],
                },
            ],
            filter_runs: vec![part(9, 1), part(4, 3)],
        }
    }

    #[test]
    fn a_manifest_round_trips_and_locates_each_users_newest_part() {
        let m = sample();
        let back = decode_manifest(&encode_manifest(&m).expect("encode")).expect("decode");
        assert_eq!(back, m);
        assert_eq!(m.locate(&user(5)).map(|p| p.written_by), Some(9));
        assert_eq!(m.locate(&user(200)).map(|p| p.written_by), Some(6));
        assert_eq!(m.locate(&user(6)), Some(&m.base[0].part));
        assert_eq!(m.locate(&user(100)), Some(&m.base[1].part));
        assert_eq!(m.locate(&user(u128::MAX)), Some(&m.base[1].part));
        assert_eq!(m.delta_users(), 3);
        // The runs are named too (they must exist, and retention keeps them).
        assert_eq!(m.parts().count(), 6);
        let empty = Manifest {
            base: vec![],
            deltas: vec![],
            ..m
        };
        assert_eq!(empty.locate(&user(5)), None);
    }

    #[test]
    fn a_manifest_that_breaks_an_invariant_is_refused() {
        let bad = |f: &dyn Fn(&mut Value)| {
            let mut v: Value =
                serde_json::from_slice(&encode_manifest(&sample()).expect("encode")).expect("json");
            f(&mut v);
            decode_manifest(&serde_json::to_vec(&v).expect("json"))
        };
        assert!(bad(&|_| {}).is_ok());
        assert!(matches!(
            bad(&|v| v["format_version"] = 5.into()),
            Err(SegmentError::UnknownVersion { found: 5, .. })
        ));
        let descending = |v: &mut Value| {
            let b64 = base64::engine::general_purpose::STANDARD;
            let ids: Vec<u8> = [user(200), user(5)]
                .iter()
                .flat_map(|u| *u.as_bytes())
                .collect();
            v["deltas"][1]["user_ids"] = b64.encode(ids).into();
        };
        let runs_reversed = |v: &mut Value| {
            let runs = v["filter_runs"].as_array().cloned().unwrap_or_default();
            v["filter_runs"] = runs.into_iter().rev().collect::<Vec<_>>().into();
        };
        let breaks: [&dyn Fn(&mut Value); 11] = [
            &|v| v["format"] = "keepsake-segment".into(),
            &|v| v["base"][0]["from"] = user(1).to_string().into(),
            &|v| v["base"][1]["from"] = NIL_USER.to_string().into(),
            &|v| v["base"][0]["digest"] = "ABC".into(),
            &|v| v["base"][0]["written_by"] = 10.into(),
            &|v| v["deltas"][0]["users"] = 2.into(),
            &|v| v["deltas"][0]["user_ids"] = "not base64!".into(),
            &descending,
            // Runs newest first, written no later than the manifest; only in version 6.
            &runs_reversed,
            &|v| v["filter_runs"][0]["written_by"] = 10.into(),
            &|v| v["format_version"] = 4.into(),
        ];
        for f in breaks {
            assert!(matches!(bad(f), Err(SegmentError::Invalid(_))));
        }
    }

    #[test]
    fn a_parts_digest_is_the_first_half_of_its_sha256() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 96177a9c b410ff61 f20015ad
        assert_eq!(part_digest(b"abc"), 0xba7816bf_8f01cfea_414140de_5dae2223);
    }
}
