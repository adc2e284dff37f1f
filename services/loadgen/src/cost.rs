//! The bill: a load model run against a server, priced from the server's own count of store
//! requests (by the work they were for) and, given the store, the bytes it keeps.
//!
//! The load model is a number of active users, each with so many pushes and pulls a day; its
//! request rate is what the run sends (open loop), so the requests the server counted in the
//! run are those users' requests. A month is 30 days. Prices are per 1,000 requests in two
//! tiers, as S3 bills them (PUT, COPY, POST and LIST; GET, HEAD and the rest), DELETE free, and
//! per GB-month stored (GB = 2^30 bytes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use keepsake_store::keys::Key;

use crate::stats::ServerSummary;

/// Seconds in a billing month (30 days).
pub const MONTH_SECS: f64 = 30.0 * 86_400.0;

const GB: f64 = (1u64 << 30) as f64;

/// Who uses the service, and how much.
#[derive(Clone, Debug, Serialize)]
pub struct LoadModel {
    /// Active users.
    pub users: f64,
    /// Pushes per user per day.
    pub pushes_per_day: f64,
    /// Pulls per user per day.
    pub pulls_per_day: f64,
    /// Changes per push.
    pub changes_per_push: usize,
}

impl LoadModel {
    /// Requests per second, pushes and pulls together.
    pub fn rate(&self) -> f64 {
        self.users * (self.pushes_per_day + self.pulls_per_day) / 86_400.0
    }

    /// The share of requests that are pushes.
    pub fn push_share(&self) -> f64 {
        let all = self.pushes_per_day + self.pulls_per_day;
        if all > 0.0 {
            self.pushes_per_day / all
        } else {
            0.0
        }
    }
}

/// A price table (`--prices FILE`, JSON with these fields).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Its name in the report.
    pub name: String,
    /// Dollars per 1,000 PUT, COPY, POST and LIST requests.
    pub tier1_per_1000: f64,
    /// Dollars per 1,000 GET and HEAD requests.
    pub tier2_per_1000: f64,
    /// Dollars per GB-month stored.
    pub storage_gb_month: f64,
}

impl Default for Prices {
    /// S3 Standard list prices (us-east-1).
    fn default() -> Self {
        Self {
            name: "S3 Standard, us-east-1 list prices".into(),
            tier1_per_1000: 0.005,
            tier2_per_1000: 0.0004,
            storage_gb_month: 0.023,
        }
    }
}

impl Prices {
    /// Dollars per request of kind `op` (the store's labels: put, get, head, list, delete,
    /// copy, multipart).
    pub fn per_request(&self, op: &str) -> f64 {
        match op {
            "put" | "copy" | "list" | "multipart" => self.tier1_per_1000 / 1000.0,
            "delete" => 0.0,
            _ => self.tier2_per_1000 / 1000.0,
        }
    }

    /// Refuses negative or non-finite prices.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("tier1_per_1000", self.tier1_per_1000),
            ("tier2_per_1000", self.tier2_per_1000),
            ("storage_gb_month", self.storage_gb_month),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be a price of 0 or more, not {v}"));
            }
        }
        Ok(())
    }
}

/// The bytes a store keeps, by what they are.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Kept {
    /// Segment objects: the log not yet compacted.
    pub segments: u64,
    /// History objects (and their marks): the log after compaction.
    pub history: u64,
    /// Checkpoints: derived state, bounded by retention (not growth of the log).
    pub checkpoints: u64,
    /// Everything else (devices, revocations, restores, frontiers, the descriptor).
    pub other: u64,
}

impl Kept {
    /// Counts one object.
    pub fn add(&mut self, key: Option<Key>, size: u64) {
        let into = match key {
            Some(Key::Segment { .. }) => &mut self.segments,
            Some(Key::History { .. } | Key::HistoryVerified { .. }) => &mut self.history,
            Some(Key::Checkpoint { .. } | Key::Manifest { .. } | Key::Part { .. }) => {
                &mut self.checkpoints
            }
            _ => &mut self.other,
        };
        *into += size;
    }

    /// What grows with the load: the log and the small records, not the checkpoints.
    pub fn growing(&self) -> u64 {
        self.segments + self.history + self.other
    }
}

/// The bytes a store keeps, by what they are (one listing of the whole store).
pub async fn kept(store: &keepsake_store::Store) -> anyhow::Result<Kept> {
    use anyhow::Context;
    use futures::TryStreamExt;
    use object_store::ObjectStore as _;
    let mut listing = store.inner.list(None);
    let mut kept = Kept::default();
    while let Some(meta) = listing
        .try_next()
        .await
        .with_context(|| format!("listing {}", store.description))?
    {
        kept.add(keepsake_store::keys::parse(&meta.location), meta.size);
    }
    Ok(kept)
}

/// What the run added to the store, before and after the log was compacted.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KeptReport {
    /// Events the server committed during the run (warm-up included).
    pub events: f64,
    /// Bytes added by the run, when the load stopped.
    pub added: Kept,
    /// Bytes added by the run, after a checkpoint and compaction (`--compact`).
    pub added_after_compaction: Option<Kept>,
}

impl KeptReport {
    /// Log bytes (segments and history objects) per event: at the end of the run, and after
    /// compaction.
    pub fn log_bytes_per_event(&self) -> (f64, Option<f64>) {
        let per = |k: &Kept| (k.segments + k.history) as f64 / self.events.max(1.0);
        (
            per(&self.added),
            self.added_after_compaction.as_ref().map(per),
        )
    }

    /// The table's lines.
    pub fn table(&self) -> String {
        let (now, compacted) = self.log_bytes_per_event();
        let mut t = format!(
            "kept: {:.0} events; {:.0} log bytes per event as segments",
            self.events, now
        );
        match (compacted, &self.added_after_compaction) {
            (Some(c), Some(k)) => t.push_str(&format!(
                ", {c:.0} after compaction (history objects); checkpoints {} bytes (state, replaced, not growth)\n",
                k.checkpoints
            )),
            _ => t.push_str(" (not compacted)\n"),
        }
        t
    }
}

/// Subtracts `b` from `a` field by field (a store that shrank counts 0).
pub fn kept_since(a: Kept, b: Kept) -> Kept {
    Kept {
        segments: a.segments.saturating_sub(b.segments),
        history: a.history.saturating_sub(b.history),
        checkpoints: a.checkpoints.saturating_sub(b.checkpoints),
        other: a.other.saturating_sub(b.other),
    }
}

/// One cause's share of the bill.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CauseBill {
    /// Requests a month, by kind.
    pub requests_per_month: BTreeMap<String, f64>,
    /// Dollars a month.
    pub usd_per_month: f64,
}

/// Storage: what the run's load adds to the store.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StorageBill {
    /// Bytes the store held more at the end of the run than at its start, per second.
    pub kept_bytes_per_s: f64,
    /// GB a month of the load adds.
    pub gb_added_per_month: f64,
    /// Dollars a month to keep one month's data (the log keeps everything: each month of load
    /// adds this much to every later month's bill).
    pub usd_per_month_per_month_of_data: f64,
}

/// The bill of a load model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bill {
    /// The prices used.
    pub prices: Prices,
    /// By cause (the work the requests were for).
    pub by_cause: BTreeMap<String, CauseBill>,
    /// Dollars a month in requests.
    pub requests_usd_per_month: f64,
    /// Storage, when the store was listed.
    pub storage: Option<StorageBill>,
    /// Requests and one month's data kept, dollars a month.
    pub total_usd_per_month: f64,
    /// The same, per million active users.
    pub per_million_users_usd: f64,
}

/// Prices the server's figures over a run of `model`. `kept_bytes_per_s`: growth of the bytes
/// the store holds, when it was listed.
pub fn bill(
    model: &LoadModel,
    prices: &Prices,
    server: &ServerSummary,
    kept_bytes_per_s: Option<f64>,
) -> Bill {
    let by_cause: BTreeMap<String, CauseBill> = server
        .store_requests_per_s
        .iter()
        .map(|(cause, ops)| {
            let requests_per_month: BTreeMap<String, f64> = ops
                .iter()
                .map(|(op, per_s)| (op.clone(), per_s * MONTH_SECS))
                .collect();
            let usd_per_month = requests_per_month
                .iter()
                .map(|(op, n)| n * prices.per_request(op))
                .sum();
            (
                cause.clone(),
                CauseBill {
                    requests_per_month,
                    usd_per_month,
                },
            )
        })
        .collect();
    let requests_usd_per_month: f64 = by_cause.values().map(|c| c.usd_per_month).sum();
    let storage = kept_bytes_per_s.map(|per_s| {
        let gb = per_s.max(0.0) * MONTH_SECS / GB;
        StorageBill {
            kept_bytes_per_s: per_s,
            gb_added_per_month: gb,
            usd_per_month_per_month_of_data: gb * prices.storage_gb_month,
        }
    });
    let total = requests_usd_per_month
        + storage
            .as_ref()
            .map_or(0.0, |s| s.usd_per_month_per_month_of_data);
    Bill {
        prices: prices.clone(),
        by_cause,
        requests_usd_per_month,
        storage,
        total_usd_per_month: total,
        per_million_users_usd: if model.users > 0.0 {
            total * 1e6 / model.users
        } else {
            0.0
        },
    }
}

impl Bill {
    /// The human-readable table.
    pub fn table(&self, model: &LoadModel, achieved_rate: f64) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "bill: {:.0} active users x ({} pushes of {} changes + {} pulls) a day = {:.0} requests/s (sent {:.0}/s); {}",
            model.users,
            model.pushes_per_day,
            model.changes_per_push,
            model.pulls_per_day,
            model.rate(),
            achieved_rate,
            self.prices.name
        );
        let _ = writeln!(
            t,
            "  {:<11} {:>14} {:>14} {:>14} {:>14} {:>12}",
            "cause", "PUT/month", "GET+HEAD", "LIST/month", "DELETE", "$/month"
        );
        for (cause, c) in &self.by_cause {
            let n = |ops: &[&str]| -> f64 {
                ops.iter()
                    .filter_map(|o| c.requests_per_month.get(*o))
                    .fold(0.0, |a, b| a + b)
            };
            let _ = writeln!(
                t,
                "  {cause:<11} {:>14.0} {:>14.0} {:>14.0} {:>14.0} {:>12.2}",
                n(&["put", "copy", "multipart"]),
                n(&["get", "head"]),
                n(&["list"]),
                n(&["delete"]),
                c.usd_per_month
            );
        }
        let _ = writeln!(t, "  requests: ${:.2} a month", self.requests_usd_per_month);
        match &self.storage {
            Some(s) => {
                let _ = writeln!(
                    t,
                    "  storage: {:.1} GB added a month; ${:.2} a month to keep each month's data",
                    s.gb_added_per_month, s.usd_per_month_per_month_of_data
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "  storage: not measured (give --store to list the store)"
                );
            }
        }
        let _ = writeln!(
            t,
            "  total: ${:.2} a month; ${:.2} per million active users",
            self.total_usd_per_month, self.per_million_users_usd
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(pairs: &[(&str, &str, f64)]) -> ServerSummary {
        let mut store: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for (c, o, v) in pairs {
            store
                .entry((*c).into())
                .or_default()
                .insert((*o).into(), *v);
        }
        ServerSummary {
            segment_puts_per_s: 0.0,
            events_committed: 0.0,
            events_per_segment: 0.0,
            bytes_per_event: 0.0,
            store_requests_per_s: store,
            store_written_per_s: 0.0,
            users_loaded_per_s: 0.0,
            pulls_from_index_per_s: 0.0,
        }
    }

    #[test]
    fn the_model_gives_the_rate_and_mix() {
        let m = LoadModel {
            users: 1e6,
            pushes_per_day: 10.0,
            pulls_per_day: 50.0,
            changes_per_push: 3,
        };
        assert!((m.rate() - 694.44).abs() < 0.01, "{}", m.rate());
        assert!((m.push_share() - 1.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn requests_are_priced_by_tier_and_scaled_to_a_month_and_a_million_users() {
        let m = LoadModel {
            users: 500_000.0,
            pushes_per_day: 10.0,
            pulls_per_day: 50.0,
            changes_per_push: 3,
        };
        // 100 PUTs/s and 100 LISTs/s of pushes, 10 GETs/s of reads, 5 DELETEs/s of compaction.
        let s = summary(&[
            ("push", "put", 100.0),
            ("push", "list", 100.0),
            ("read", "get", 10.0),
            ("compaction", "delete", 5.0),
        ]);
        let b = bill(&m, &Prices::default(), &s, Some(1000.0));
        let push = &b.by_cause["push"];
        assert_eq!(push.requests_per_month["put"], 100.0 * MONTH_SECS);
        // 200 tier-1 requests/s: 518.4 M a month at $0.005 per 1,000.
        assert!(
            (push.usd_per_month - 2592.0).abs() < 1e-6,
            "{}",
            push.usd_per_month
        );
        assert!((b.by_cause["read"].usd_per_month - 10.368).abs() < 1e-6);
        assert_eq!(b.by_cause["compaction"].usd_per_month, 0.0);
        let storage = b.storage.as_ref().expect("storage");
        // 1,000 bytes/s: 2.592 GB (decimal) a month is 2.414 GiB.
        assert!(
            (storage.gb_added_per_month - 2.414).abs() < 0.001,
            "{storage:?}"
        );
        let total = 2592.0 + 10.368 + storage.usd_per_month_per_month_of_data;
        assert!((b.total_usd_per_month - total).abs() < 1e-6);
        assert!((b.per_million_users_usd - 2.0 * total).abs() < 1e-6);
        assert!(b.table(&m, 347.0).contains("per million active users"));
    }

    #[test]
    fn kept_bytes_are_split_by_what_they_are() {
        use keepsake_store::keys;
        let mut k = Kept::default();
        for (path, size) in [
            (keys::segment(0, 1), 100),
            (keys::segment(1, 7), 50),
            (keys::history(0, 1, 9), 400),
            (keys::history_verified(0, 1, 9), 0),
            (keys::checkpoint(0, 9), 1000),
            (keys::frontier(0, 1), 60),
            (keys::descriptor(), 90),
        ] {
            k.add(keys::parse(&path), size);
        }
        assert_eq!(
            k,
            Kept {
                segments: 150,
                history: 400,
                checkpoints: 1000,
                other: 150
            }
        );
        assert_eq!(k.growing(), 700);
        let before = Kept {
            segments: 100,
            ..Kept::default()
        };
        let report = KeptReport {
            events: 10.0,
            added: kept_since(k, before),
            added_after_compaction: Some(Kept {
                segments: 0,
                history: 300,
                checkpoints: 1000,
                other: 150,
            }),
        };
        assert_eq!(report.log_bytes_per_event(), (45.0, Some(30.0)));
        assert!(
            report.table().contains("30 after compaction"),
            "{}",
            report.table()
        );
    }

    #[test]
    fn a_price_file_is_checked() {
        let p: Prices = serde_json::from_str(
            r#"{"name": "MinIO on our disks", "tier1_per_1000": 0, "tier2_per_1000": 0, "storage_gb_month": 0.01}"#,
        )
        .expect("parses");
        assert!(p.check().is_ok());
        assert!(serde_json::from_str::<Prices>(r#"{"name": "x", "tier1": 1}"#).is_err());
        let negative = Prices {
            tier1_per_1000: -1.0,
            ..Prices::default()
        };
        assert!(negative.check().is_err());
    }
}
