//! The storage path side by side: Keepsake's log on the local file store (fsync on) and an
//! `events` table in PostgreSQL (`synchronous_commit = on`), fed the same events.
//!
//! Both get the same pushes: `events` put events of new items over `users` users, `batch` per
//! push, from `clients` concurrent writers, with documents of the same sizes; one user gets
//! `reader_events` of them so that a 10,000-event read can be measured. An acknowledgement means
//! durable on both sides: Keepsake answers after the segment's create-only PUT (fsync'd); Postgres
//! after the commit record is flushed. Then each side reads that user's events and rebuilds its
//! state as of a moment in the middle of its history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use keepsake_log::{Log, LogConfig, LogStats, PushRequest, UpTo};
use keepsake_model::fixtures::Rng;
use keepsake_model::{
    Change, ChangeBody, ChangeId, Clock, DeviceId, Document, EventMeta, IdGenerator, ItemId, Kind,
    Origin, RandomIds, SystemClock, UserId,
};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::{Json, ToSql, Type};
use uuid::Uuid;

use crate::workload::Documents;

/// One baseline run.
#[derive(Clone, Debug)]
pub struct BaselineConfig {
    /// libpq-style connection string; `None` measures Keepsake only.
    pub pg: Option<String>,
    /// Where Keepsake's file store goes (a fresh directory inside it).
    pub dir: std::path::PathBuf,
    /// Events in all.
    pub events: usize,
    /// Users.
    pub users: usize,
    /// Events per push (one transaction / one acknowledged push).
    pub batch: usize,
    /// Concurrent writers.
    pub clients: usize,
    /// More numbers of writers at which only the append rate is measured, on both sides (each
    /// system's best is what the append target compares).
    pub sweep_clients: Vec<usize>,
    /// Events of the user whose reads are measured.
    pub reader_events: usize,
    /// Repetitions of each read.
    pub reads: usize,
    /// Document sizes.
    pub doc_bytes: (usize, usize),
    /// Keepsake's commit window.
    pub commit_window: Duration,
    /// Keepsake's shards (the server's default is 4).
    pub shards: u32,
    /// Seed.
    pub seed: u64,
}

/// Appends: rate and acknowledgement latency.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppendFigures {
    /// Events per second, start to last acknowledgement.
    pub events_per_s: f64,
    /// Median acknowledgement of a push, ms.
    pub ack_p50_ms: f64,
    /// 99th percentile, ms.
    pub ack_p99_ms: f64,
}

/// Reads of one user: median and p99 over the repetitions, ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadFigures {
    /// Rows or events returned.
    pub rows: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// One side's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SideReport {
    /// Events appended.
    pub events: u64,
    /// Appends (Keepsake: pushes through the log; Postgres: multi-row INSERT).
    pub append: AppendFigures,
    /// Postgres only: binary COPY, one per push.
    pub copy: Option<AppendFigures>,
    /// Bytes stored per event (Keepsake: every object in the store; Postgres: table + indexes + TOAST).
    pub bytes_per_event: f64,
    /// Keepsake only: segment bytes per event as committed (before compaction).
    pub segment_bytes_per_event: Option<f64>,
    /// Keepsake only: bytes per event of the log as stored (segments and history objects, no
    /// checkpoints): what Postgres's table and index hold.
    pub log_bytes_per_event: Option<f64>,
    /// Every event of the reader user.
    pub read_user: ReadFigures,
    /// The reader user's state as of the middle of its history.
    pub as_of: ReadFigures,
    /// Keepsake only: the same figures right after the appends, before compaction moved the
    /// checkpointed segments into history objects (the figures above are after it).
    pub before_compaction: Option<BeforeCompaction>,
}

/// Keepsake's figures before compaction, and what compaction took.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BeforeCompaction {
    /// Bytes stored per event.
    pub bytes_per_event: f64,
    /// Every event of the reader user.
    pub read_user: ReadFigures,
    /// The reader user's state as of the middle of its history.
    pub as_of: ReadFigures,
    /// Seconds `Log::compact_now` took (a checkpoint per shard, then compaction).
    pub compaction_secs: f64,
}

/// The append rate of both sides at one number of writers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppendAt {
    /// Concurrent writers.
    pub clients: usize,
    /// Keepsake's log.
    pub keepsake: AppendFigures,
    /// Postgres, multi-row INSERT.
    pub pg_insert: Option<AppendFigures>,
    /// Postgres, binary COPY.
    pub pg_copy: Option<AppendFigures>,
}

impl AppendAt {
    /// The faster of Postgres's two ways, if measured.
    fn pg_best(&self) -> Option<f64> {
        let rate = |f: &Option<AppendFigures>| f.as_ref().map(|f| f.events_per_s);
        match (rate(&self.pg_insert), rate(&self.pg_copy)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Both sides and the ratios that the targets are stated in.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineReport {
    /// Events, users, batch, clients, document sizes.
    pub events: usize,
    /// Users.
    pub users: usize,
    /// Events per push.
    pub batch: usize,
    /// Writers.
    pub clients: usize,
    /// Document sizes.
    pub doc_bytes: (usize, usize),
    /// Keepsake's log.
    pub keepsake: SideReport,
    /// PostgreSQL, when a connection string was given.
    pub postgres: Option<SideReport>,
    /// The append rate at each number of writers (`clients`, the run above, and the sweep's),
    /// by number of writers.
    pub append_sweep: Vec<AppendAt>,
    /// Keepsake's best append rate over the sweep / the best of Postgres's INSERT and COPY
    /// over the sweep (target ≥ 3).
    pub append_ratio: Option<f64>,
    /// The same ratio at `clients` writers only.
    pub append_ratio_same_clients: Option<f64>,
    /// Keepsake bytes per event (every object) / Postgres's (target ≤ 0.25).
    pub bytes_ratio: Option<f64>,
    /// Keepsake's log bytes per event (no checkpoints) / Postgres's.
    pub log_bytes_ratio: Option<f64>,
    /// Postgres read time / Keepsake's, median (target ≥ 5).
    pub read_ratio: Option<f64>,
    /// Postgres as-of time / Keepsake's, median.
    pub as_of_ratio: Option<f64>,
}

impl BaselineReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "storage baseline: {} events of {}-{} bytes over {} users, {} per push, {} writers",
            self.events, self.doc_bytes.0, self.doc_bytes.1, self.users, self.batch, self.clients
        );
        let _ = writeln!(
            t,
            "  {:<46} {:>14} {:>14} {:>9}",
            "", "Keepsake", "PostgreSQL", "ratio"
        );
        let k = &self.keepsake;
        let p = self.postgres.as_ref();
        let pg = |f: &dyn Fn(&SideReport) -> String| p.map_or("-".to_string(), f);
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
        let best_k = self
            .append_sweep
            .iter()
            .max_by(|a, b| a.keepsake.events_per_s.total_cmp(&b.keepsake.events_per_s));
        let best_p = self
            .append_sweep
            .iter()
            .filter_map(|a| a.pg_best().map(|r| (a.clients, r)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let _ = writeln!(
            t,
            "  {:<46} {:>14} {:>14} {:>9}",
            "durable appends, events/s, best (writers)",
            best_k.map_or("-".into(), |a| format!(
                "{:.0} ({})",
                a.keepsake.events_per_s, a.clients
            )),
            best_p.map_or("-".into(), |(c, r)| format!("{r:.0} ({c})")),
            ratio(self.append_ratio)
        );
        for a in &self.append_sweep {
            let pg_rate = |f: &Option<AppendFigures>| {
                f.as_ref()
                    .map_or("-".into(), |f| format!("{:.0}", f.events_per_s))
            };
            let _ = writeln!(
                t,
                "  {:<46} {:>14.0} {:>14} {:>9}",
                format!(
                    "  {} writers (Postgres INSERT {} / COPY {})",
                    a.clients,
                    pg_rate(&a.pg_insert),
                    pg_rate(&a.pg_copy)
                ),
                a.keepsake.events_per_s,
                a.pg_best().map_or("-".into(), |b| format!("{b:.0}")),
                ratio(
                    a.pg_best()
                        .and_then(|b| (b > 0.0).then(|| a.keepsake.events_per_s / b))
                )
            );
        }
        let _ = writeln!(
            t,
            "  {:<46} {:>14.1} {:>14}",
            format!("ack p99 at {} writers, ms", self.clients),
            k.append.ack_p99_ms,
            pg(&|p| format!("{:.1}", p.append.ack_p99_ms))
        );
        let _ = writeln!(
            t,
            "  {:<46} {:>14.1} {:>14} {:>9}",
            "bytes stored per event (every object)",
            k.bytes_per_event,
            pg(&|p| format!("{:.1}", p.bytes_per_event)),
            ratio(self.bytes_ratio)
        );
        if let Some(log) = k.log_bytes_per_event {
            let _ = writeln!(
                t,
                "  {:<46} {:>14.1} {:>14} {:>9}",
                "  the log (segments + history, no checkpoint)",
                log,
                pg(&|p| format!("{:.1}", p.bytes_per_event)),
                ratio(self.log_bytes_ratio)
            );
        }
        let _ = writeln!(
            t,
            "  {:<46} {:>14.2} {:>14} {:>9}",
            format!("read one user's {} events, p50 ms", k.read_user.rows),
            k.read_user.p50_ms,
            pg(&|p| format!("{:.2}", p.read_user.p50_ms)),
            ratio(self.read_ratio)
        );
        let _ = writeln!(
            t,
            "  {:<46} {:>14.2} {:>14}",
            "  p99 ms",
            k.read_user.p99_ms,
            pg(&|p| format!("{:.2}", p.read_user.p99_ms))
        );
        let _ = writeln!(
            t,
            "  {:<46} {:>14.2} {:>14} {:>9}",
            format!("state as of mid-history ({} items), p50 ms", k.as_of.rows),
            k.as_of.p50_ms,
            pg(&|p| format!("{:.2}", p.as_of.p50_ms)),
            ratio(self.as_of_ratio)
        );
        if let Some(b) = &k.before_compaction {
            let _ = writeln!(
                t,
                "  Keepsake before compaction (compact_now took {:.1} s): bytes/event {:.1}, \
                 read one user p50 {:.2} ms (p99 {:.2}), as of mid-history p50 {:.2} ms",
                b.compaction_secs,
                b.bytes_per_event,
                b.read_user.p50_ms,
                b.read_user.p99_ms,
                b.as_of.p50_ms
            );
        }
        t
    }
}

/// One push of the dataset.
struct Push {
    user: usize,
    items: Vec<(Kind, Uuid, Uuid, usize)>,
}

/// The dataset as pushes, split over writers: each user belongs to one writer, so that
/// per-user order (and Postgres's client-side seq) needs no coordination. Users go to writers
/// so that every writer has about as many pushes (the reader's alone if it has more than a
/// writer's share): a writer left with more would run on alone at the end, and the rate would
/// measure its latency rather than the store.
fn dataset(cfg: &BaselineConfig) -> Vec<Vec<Push>> {
    let mut rng = Rng::new(cfg.seed);
    let batch = cfg.batch.max(1);
    let pushes = cfg.events / batch;
    let reader_pushes = (cfg.reader_events / batch).min(pushes);
    let mut out: Vec<Vec<Push>> = (0..cfg.clients.max(1)).map(|_| Vec::new()).collect();
    let others = cfg.users.max(2) - 1;
    let user_of = |p: usize| {
        if p < reader_pushes {
            0
        } else {
            1 + (p - reader_pushes) % others
        }
    };
    let writer_of = balance(pushes, others + 1, out.len(), user_of);
    for p in 0..pushes {
        let user = user_of(p);
        let items = (0..batch)
            .map(|i| {
                let kind = Kind::ITEMS[(p + i) % Kind::ITEMS.len()];
                (kind, rng.uuid(), rng.uuid(), rng.below(1 << 20) as usize)
            })
            .collect();
        out[writer_of[user]].push(Push { user, items });
    }
    // The reader's pushes are spread over its writer's run, not all first.
    for w in &mut out {
        let n = w.len();
        for i in 0..n {
            let j = (i * 7919) % n;
            w.swap(i, j);
        }
    }
    // Within a user the order of pushes does not matter: every event is a new item.
    out
}

/// Assigns users to `writers` writers so that push counts are even: the users with the most
/// pushes first, each to the writer with the fewest so far. Returns each user's writer.
fn balance(
    pushes: usize,
    users: usize,
    writers: usize,
    user_of: impl Fn(usize) -> usize,
) -> Vec<usize> {
    let mut count = vec![0usize; users];
    for p in 0..pushes {
        count[user_of(p)] += 1;
    }
    let mut order: Vec<usize> = (0..users).collect();
    order.sort_by_key(|&u| (std::cmp::Reverse(count[u]), u));
    let mut load: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> = (0..writers
        .max(1))
        .map(|w| std::cmp::Reverse((0, w)))
        .collect();
    let mut writer_of = vec![0; users];
    for u in order {
        if let Some(std::cmp::Reverse((n, w))) = load.pop() {
            writer_of[u] = w;
            load.push(std::cmp::Reverse((n + count[u], w)));
        }
    }
    writer_of
}

/// The `p` quantile of sorted durations, in milliseconds (0 for none).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn append_figures(events: usize, secs: f64, mut lat: Vec<Duration>) -> AppendFigures {
    lat.sort();
    AppendFigures {
        events_per_s: events as f64 / secs.max(1e-9),
        ack_p50_ms: percentile(&lat, 0.5),
        ack_p99_ms: percentile(&lat, 0.99),
    }
}

fn read_figures(rows: usize, mut lat: Vec<Duration>) -> ReadFigures {
    lat.sort();
    ReadFigures {
        rows,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    }
}

fn user_uuid(seed: u64, u: usize) -> Uuid {
    let mut rng = Rng::new(seed ^ (u as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xba5e);
    rng.uuid()
}

/// The dataset of a sweep run: the same number of events spread evenly over the users, with no
/// reader user (at many writers its serial pushes would run on alone at the end).
fn sweep_cfg(cfg: &BaselineConfig, clients: usize) -> BaselineConfig {
    BaselineConfig {
        clients,
        reader_events: 0,
        ..cfg.clone()
    }
}

/// Refuses a Postgres that is not as durable as Keepsake's ack, or that cannot take as many
/// connections as the runs have writers, before anything is measured.
async fn check_postgres(cfg: &BaselineConfig, conn: &str) -> anyhow::Result<()> {
    let client = connect(conn).await?;
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .with_context(|| format!("reading {name}"))?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };
    let (sync, fsync) = (show("synchronous_commit").await?, show("fsync").await?);
    if sync != "on" || fsync != "on" {
        bail!(
            "PostgreSQL must run with synchronous_commit = on and fsync = on to be as durable as Keepsake's ack (it has synchronous_commit = {sync}, fsync = {fsync})"
        );
    }
    let max: usize = show("max_connections")
        .await?
        .parse()
        .context("max_connections")?;
    let writers = cfg
        .sweep_clients
        .iter()
        .copied()
        .chain([cfg.clients])
        .max()
        .unwrap_or(1);
    // The writers, the control connection, and the superuser-reserved slots.
    if writers + 1 + 3 > max {
        bail!(
            "PostgreSQL allows {max} connections; {writers} writers need max_connections of at least {} (or lower --clients / --sweep-clients)",
            writers + 4
        );
    }
    Ok(())
}

/// Runs both sides.
pub async fn run(cfg: BaselineConfig) -> anyhow::Result<BaselineReport> {
    if cfg.batch == 0 || cfg.clients == 0 || cfg.users < 2 || cfg.sweep_clients.contains(&0) {
        bail!("--batch and --clients (and --sweep-clients) must be at least 1, --users at least 2");
    }
    if cfg.reader_events > cfg.events {
        bail!(
            "--reader-events ({}) exceeds --events ({})",
            cfg.reader_events,
            cfg.events
        );
    }
    let docs = Arc::new(Documents::new(cfg.seed, 512, cfg.doc_bytes));
    if let Some(conn) = &cfg.pg {
        check_postgres(&cfg, conn).await?;
    }
    eprintln!("Keepsake: appending at {} writers, then reads", cfg.clients);
    let keepsake = keepsake_side(&cfg, &docs)
        .await
        .context("the Keepsake side")?;
    let postgres = match &cfg.pg {
        Some(conn) => {
            eprintln!(
                "PostgreSQL: appending at {} writers, then reads",
                cfg.clients
            );
            Some(
                postgres_side(&cfg, conn, &docs)
                    .await
                    .context("the PostgreSQL side")?,
            )
        }
        None => None,
    };
    let mut append_sweep = vec![AppendAt {
        clients: cfg.clients,
        keepsake: keepsake.append.clone(),
        pg_insert: postgres.as_ref().map(|p| p.append.clone()),
        pg_copy: postgres.as_ref().and_then(|p| p.copy.clone()),
    }];
    for &clients in &cfg.sweep_clients {
        let sweep = sweep_cfg(&cfg, clients);
        eprintln!("Keepsake: appending at {clients} writers");
        let k = keepsake_append(&sweep, &docs)
            .await
            .with_context(|| format!("Keepsake appending at {clients} writers"))?;
        k.log.shutdown().await;
        let (pg_insert, pg_copy) = match &cfg.pg {
            Some(conn) => {
                eprintln!("PostgreSQL: appending at {clients} writers");
                let (insert, copy) = pg_append_both(&sweep, conn, &docs)
                    .await
                    .with_context(|| format!("PostgreSQL appending at {clients} writers"))?;
                (Some(insert), Some(copy))
            }
            None => (None, None),
        };
        append_sweep.push(AppendAt {
            clients,
            keepsake: k.append,
            pg_insert,
            pg_copy,
        });
    }
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let log_bytes_ratio = postgres.as_ref().and_then(|p| {
        keepsake
            .log_bytes_per_event
            .and_then(|k| ratio(k, p.bytes_per_event))
    });
    append_sweep.sort_by_key(|a| a.clients);
    let same = append_sweep
        .iter()
        .find(|a| a.clients == cfg.clients)
        .and_then(AppendAt::pg_best);
    let best_keepsake = append_sweep
        .iter()
        .map(|a| a.keepsake.events_per_s)
        .fold(0.0, f64::max);
    let best_pg = append_sweep
        .iter()
        .filter_map(AppendAt::pg_best)
        .fold(0.0, f64::max);
    let (append_ratio, append_ratio_same_clients) = match same {
        Some(same) => (
            ratio(best_keepsake, best_pg),
            ratio(keepsake.append.events_per_s, same),
        ),
        None => (None, None),
    };
    let (bytes_ratio, read_ratio, as_of_ratio) = match &postgres {
        Some(p) => (
            ratio(keepsake.bytes_per_event, p.bytes_per_event),
            ratio(p.read_user.p50_ms, keepsake.read_user.p50_ms),
            ratio(p.as_of.p50_ms, keepsake.as_of.p50_ms),
        ),
        None => (None, None, None),
    };
    Ok(BaselineReport {
        events: cfg.events / cfg.batch * cfg.batch,
        users: cfg.users,
        batch: cfg.batch,
        clients: cfg.clients,
        doc_bytes: cfg.doc_bytes,
        keepsake,
        postgres,
        append_sweep,
        append_ratio,
        append_ratio_same_clients,
        bytes_ratio,
        log_bytes_ratio,
        read_ratio,
        as_of_ratio,
    })
}

/// A log that the dataset was appended to, in a fresh file store.
struct KeepsakeAppend {
    /// The store's directory, removed when dropped.
    _dir: tempfile::TempDir,
    store: Arc<dyn object_store::ObjectStore>,
    log: Arc<Log>,
    append: AppendFigures,
    /// When the reader user was half written.
    mid: Option<DateTime<Utc>>,
}

/// Opens a log on a fresh file store and appends the dataset to it from `cfg.clients` writers.
async fn keepsake_append(
    cfg: &BaselineConfig,
    docs: &Arc<Documents>,
) -> anyhow::Result<KeepsakeAppend> {
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let dir = tempfile::tempdir_in(&cfg.dir).context("a store directory")?;
    let url = format!("file://{}", dir.path().display());
    let store = keepsake_store::open_store(&url)
        .context("opening the file store")?
        .inner;
    let log_cfg = LogConfig {
        commit_window: cfg.commit_window,
        view_memory_bytes: 4 << 30,
        ..LogConfig::default()
    };
    let log = Arc::new(
        Log::open(
            store.clone(),
            Some(cfg.shards.max(1)),
            log_cfg,
            Arc::new(SystemClock),
            Arc::new(RandomIds),
        )
        .await
        .context("opening the log")?,
    );
    let docs_k: Arc<Vec<Vec<Document>>> = Arc::new(
        Kind::ITEMS
            .iter()
            .map(|&k| {
                docs.all(k)
                    .iter()
                    .map(|d| Document::from_stored(d.as_str()))
                    .collect()
            })
            .collect(),
    );
    let device = DeviceId(Uuid::from_u128(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut mid_time = None;
    for pushes in dataset(cfg) {
        let (log, docs_k, seed) = (log.clone(), docs_k.clone(), cfg.seed);
        let reader_mid = cfg.reader_events / cfg.batch / 2;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(pushes.len());
            let mut reader_pushes = 0;
            let mut mid: Option<DateTime<Utc>> = None;
            for p in pushes {
                let changes = p
                    .items
                    .iter()
                    .map(|&(kind, change_id, item_id, d)| {
                        let pool = &docs_k[kind_index(kind)];
                        Change {
                            change_id: ChangeId(change_id),
                            kind,
                            item_id: ItemId(item_id),
                            base_version: None,
                            body: ChangeBody::Put {
                                document: pool[d % pool.len()].clone(),
                            },
                        }
                    })
                    .collect();
                let t = Instant::now();
                log.push(PushRequest {
                    user_id: UserId(user_uuid(seed, p.user)),
                    meta: EventMeta {
                        device_id: Some(device),
                        origin: Origin::Device,
                        request_id: None,
                        restore_id: None,
                    },
                    changes,
                    confirm_mass_delete: false,
                })
                .await
                .context("a push")?;
                lat.push(t.elapsed());
                if p.user == 0 {
                    reader_pushes += 1;
                    if reader_pushes == reader_mid {
                        mid = Some(SystemClock.now());
                    }
                }
            }
            anyhow::Ok((lat, mid))
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        let (l, mid) = t.await.context("a writer task")??;
        lat.extend(l);
        mid_time = mid_time.or(mid);
    }
    let secs = started.elapsed().as_secs_f64();
    let events = LogStats::get(&log.stats().events);
    Ok(KeepsakeAppend {
        _dir: dir,
        store,
        log,
        append: append_figures(events as usize, secs, lat),
        mid: mid_time,
    })
}

async fn keepsake_side(cfg: &BaselineConfig, docs: &Arc<Documents>) -> anyhow::Result<SideReport> {
    let KeepsakeAppend {
        _dir,
        store,
        log,
        append,
        mid,
    } = keepsake_append(cfg, docs).await?;
    let stats = log.stats();
    let events = LogStats::get(&stats.events);
    let segment_bytes = LogStats::get(&stats.bytes);
    let per_event = |bytes: u64| bytes as f64 / events.max(1) as f64;

    let reader = UserId(user_uuid(cfg.seed, 0));
    let mid = mid.unwrap_or_else(|| SystemClock.now());
    let fresh_bytes = stored_bytes(store.as_ref()).await?;
    let (fresh_read, fresh_as_of) = keepsake_reads(&log, reader, mid, cfg.reads).await?;
    let started = Instant::now();
    log.compact_now().await.context("compacting")?;
    let compaction_secs = started.elapsed().as_secs_f64();
    let stored = stored_bytes(store.as_ref()).await?;
    let log_bytes = log_bytes(store.as_ref()).await?;
    let (read_user, as_of) = keepsake_reads(&log, reader, mid, cfg.reads).await?;
    log.shutdown().await;
    Ok(SideReport {
        events,
        append,
        copy: None,
        bytes_per_event: per_event(stored),
        segment_bytes_per_event: Some(per_event(segment_bytes)),
        log_bytes_per_event: Some(per_event(log_bytes)),
        read_user,
        as_of,
        before_compaction: Some(BeforeCompaction {
            bytes_per_event: per_event(fresh_bytes),
            read_user: fresh_read,
            as_of: fresh_as_of,
            compaction_secs,
        }),
    })
}

/// Every object in the store, checkpoints included.
async fn stored_bytes(store: &dyn object_store::ObjectStore) -> anyhow::Result<u64> {
    let mut stored = 0u64;
    let mut listing = store.list(None);
    while let Some(meta) = listing.next().await {
        stored += meta.context("listing the store")?.size;
    }
    Ok(stored)
}

/// The log's objects: segments and history objects.
async fn log_bytes(store: &dyn object_store::ObjectStore) -> anyhow::Result<u64> {
    use keepsake_store::keys::{self, Key};
    let mut bytes = 0u64;
    let mut listing = store.list(None);
    while let Some(meta) = listing.next().await {
        let meta = meta.context("listing the store")?;
        if let Some(Key::Segment { .. } | Key::History { .. }) = keys::parse(&meta.location) {
            bytes += meta.size;
        }
    }
    Ok(bytes)
}

/// `reads` reads of the reader user's every event, then of its items as of `mid`.
async fn keepsake_reads(
    log: &Log,
    reader: UserId,
    mid: DateTime<Utc>,
    reads: usize,
) -> anyhow::Result<(ReadFigures, ReadFigures)> {
    let mut read_lat = Vec::new();
    let mut rows = 0;
    for _ in 0..reads.max(1) {
        let t = Instant::now();
        let events = log
            .user_events(&reader, UpTo::End)
            .await
            .context("reading the reader user")?;
        read_lat.push(t.elapsed());
        rows = events.len();
    }
    let mut as_of_lat = Vec::new();
    let mut items = 0;
    for _ in 0..reads.max(1) {
        let t = Instant::now();
        let state = log
            .items_at(&reader, UpTo::Time(mid))
            .await
            .context("the reader user as of mid-history")?;
        as_of_lat.push(t.elapsed());
        items = Kind::ITEMS.iter().map(|&k| state.live_count(k)).sum();
    }
    Ok((read_figures(rows, read_lat), read_figures(items, as_of_lat)))
}

fn kind_index(kind: Kind) -> usize {
    Kind::ITEMS.iter().position(|&k| k == kind).unwrap_or(0)
}

const COLUMNS: &str = "user_id, seq, event_id, change_id, device_id, origin, request_id, kind, item_id, op, version, recorded_at, document";
const TYPES: [Type; 13] = [
    Type::UUID,
    Type::INT8,
    Type::UUID,
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::UUID,
    Type::TEXT,
    Type::UUID,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::JSONB,
];

async fn connect(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .with_context(|| "connecting to PostgreSQL (is it running, and does --pg name it?)")?;
    tokio::spawn(connection);
    Ok(client)
}

async fn reset_table(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "DROP TABLE IF EXISTS events;
             CREATE TABLE events (
                 user_id uuid NOT NULL, seq bigint NOT NULL, event_id uuid NOT NULL,
                 change_id uuid NOT NULL, device_id uuid, origin text NOT NULL, request_id uuid,
                 kind text NOT NULL, item_id uuid NOT NULL, op text NOT NULL, version bigint NOT NULL,
                 recorded_at timestamptz NOT NULL, document jsonb,
                 PRIMARY KEY (user_id, seq));",
        )
        .await
        .context("creating the events table")?;
    Ok(())
}

#[derive(Clone, Copy)]
enum PgMode {
    Insert,
    Copy,
}

/// Appends the dataset; returns the figures and the moment the reader user was half written.
async fn pg_append(
    cfg: &BaselineConfig,
    conn: &str,
    docs: &Arc<Documents>,
    mode: PgMode,
) -> anyhow::Result<(AppendFigures, Option<DateTime<Utc>>)> {
    let raw: Arc<Vec<Vec<Box<RawValue>>>> = Arc::new(
        Kind::ITEMS
            .iter()
            .map(|&k| {
                docs.all(k)
                    .iter()
                    .map(|d| RawValue::from_string(d.clone()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
            .context("documents")?,
    );
    let batch = cfg.batch;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for pushes in dataset(cfg) {
        let client = connect(conn).await?;
        let (raw, seed) = (raw.clone(), cfg.seed);
        let reader_mid = cfg.reader_events / batch / 2;
        tasks.push(tokio::spawn(async move {
            let insert = match mode {
                PgMode::Insert => {
                    let values: Vec<String> = (0..batch)
                        .map(|r| {
                            let cols: Vec<String> =
                                (1..=13).map(|c| format!("${}", r * 13 + c)).collect();
                            format!("({})", cols.join(","))
                        })
                        .collect();
                    let sql = format!("INSERT INTO events ({COLUMNS}) VALUES {}", values.join(","));
                    let types: Vec<Type> = (0..batch).flat_map(|_| TYPES.iter().cloned()).collect();
                    Some(
                        client
                            .prepare_typed(&sql, &types)
                            .await
                            .context("preparing the INSERT")?,
                    )
                }
                PgMode::Copy => None,
            };
            let copy_sql = format!("COPY events ({COLUMNS}) FROM STDIN BINARY");
            let mut seqs: std::collections::HashMap<usize, i64> = std::collections::HashMap::new();
            let mut lat = Vec::with_capacity(pushes.len());
            let mut reader_pushes = 0;
            let mut mid = None;
            let device = Uuid::from_u128(1);
            let (origin, op) = ("device", "put");
            let no_request: Option<Uuid> = None;
            for p in pushes {
                let user = user_uuid(seed, p.user);
                let seq0 = *seqs.get(&p.user).unwrap_or(&0);
                let now = SystemClock.now();
                let rows: Vec<PgRow<'_>> = p
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, &(kind, change_id, item_id, d))| {
                        let pool = &raw[kind_index(kind)];
                        (
                            seq0 + 1 + i as i64,
                            RandomIds.random(),
                            change_id,
                            item_id,
                            kind.as_str(),
                            Json(&*pool[d % pool.len()]),
                        )
                    })
                    .collect();
                let version = 1i64;
                let fixed = PgFixed {
                    user,
                    device,
                    origin,
                    request: no_request,
                    op,
                    version,
                    now,
                };
                let t = Instant::now();
                match &insert {
                    Some(stmt) => {
                        let mut params: Vec<&(dyn ToSql + Sync)> =
                            Vec::with_capacity(rows.len() * 13);
                        for r in &rows {
                            params.extend_from_slice(&pg_row(r, &fixed));
                        }
                        client.execute(stmt, &params).await.context("INSERT")?;
                    }
                    None => {
                        let sink = client.copy_in(&copy_sql).await.context("COPY")?;
                        let writer =
                            tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &TYPES);
                        futures::pin_mut!(writer);
                        for r in &rows {
                            writer
                                .as_mut()
                                .write(&pg_row(r, &fixed))
                                .await
                                .context("COPY row")?;
                        }
                        writer.finish().await.context("COPY finish")?;
                    }
                }
                lat.push(t.elapsed());
                seqs.insert(p.user, seq0 + rows.len() as i64);
                if p.user == 0 {
                    reader_pushes += 1;
                    if reader_pushes == reader_mid {
                        mid = Some(now);
                    }
                }
            }
            anyhow::Ok((lat, mid))
        }));
    }
    let mut lat = Vec::new();
    let mut mid_time = None;
    for t in tasks {
        let (l, mid) = t.await.context("a writer task")??;
        lat.extend(l);
        mid_time = mid_time.or(mid);
    }
    let secs = started.elapsed().as_secs_f64();
    let events = cfg.events / batch * batch;
    Ok((append_figures(events, secs, lat), mid_time))
}

/// Appends the dataset with INSERT into an empty table, then with COPY into an empty table,
/// which keeps the events. Returns both figures and when the reader user was half written.
async fn pg_insert_then_copy(
    cfg: &BaselineConfig,
    conn: &str,
    docs: &Arc<Documents>,
    client: &tokio_postgres::Client,
) -> anyhow::Result<(AppendFigures, AppendFigures, Option<DateTime<Utc>>)> {
    reset_table(client).await?;
    let (insert, _) = pg_append(cfg, conn, docs, PgMode::Insert).await?;
    reset_table(client).await?;
    let (copy, mid) = pg_append(cfg, conn, docs, PgMode::Copy).await?;
    Ok((insert, copy, mid))
}

/// The append figures alone, at `cfg.clients` writers; the table is dropped afterwards.
async fn pg_append_both(
    cfg: &BaselineConfig,
    conn: &str,
    docs: &Arc<Documents>,
) -> anyhow::Result<(AppendFigures, AppendFigures)> {
    let client = connect(conn).await?;
    let (insert, copy, _) = pg_insert_then_copy(cfg, conn, docs, &client).await?;
    client
        .batch_execute("DROP TABLE events")
        .await
        .context("dropping the table")?;
    Ok((insert, copy))
}

async fn postgres_side(
    cfg: &BaselineConfig,
    conn: &str,
    docs: &Arc<Documents>,
) -> anyhow::Result<SideReport> {
    let client = connect(conn).await?;
    let (insert, copy, mid) = pg_insert_then_copy(cfg, conn, docs, &client).await?;
    client
        .batch_execute("ANALYZE events")
        .await
        .context("ANALYZE")?;
    let size: i64 = client
        .query_one("SELECT pg_total_relation_size('events')", &[])
        .await
        .context("table size")?
        .get(0);
    let count: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .context("count")?
        .get(0);
    let reader = user_uuid(cfg.seed, 0);
    let read = client
        .prepare(&format!(
            "SELECT {COLUMNS_READ} FROM events WHERE user_id = $1 AND seq > $2 ORDER BY seq"
        ))
        .await
        .context("preparing the read")?;
    let mut read_lat = Vec::new();
    let mut rows = 0;
    for _ in 0..cfg.reads.max(1) {
        let t = Instant::now();
        let r = client
            .query(&read, &[&reader, &0i64])
            .await
            .context("reading the reader user")?;
        // Materialise what Keepsake's reader materialises: every column, the document as text.
        let mut docs_len = 0usize;
        for row in &r {
            let doc: Option<&str> = row.get(12);
            docs_len += doc.map_or(0, str::len);
        }
        read_lat.push(t.elapsed());
        rows = r.len();
        std::hint::black_box(docs_len);
    }
    let as_of = client
        .prepare(
            "SELECT item_id, kind, version, document::text FROM (
                 SELECT DISTINCT ON (item_id) item_id, kind, op, version, document FROM events
                 WHERE user_id = $1 AND recorded_at <= $2 ORDER BY item_id, seq DESC) s
             WHERE op <> 'delete'",
        )
        .await
        .context("preparing the as-of query")?;
    let mid = mid.unwrap_or_else(|| SystemClock.now());
    let mut as_of_lat = Vec::new();
    let mut items = 0;
    for _ in 0..cfg.reads.max(1) {
        let t = Instant::now();
        let r = client
            .query(&as_of, &[&reader, &mid])
            .await
            .context("the as-of query")?;
        as_of_lat.push(t.elapsed());
        items = r.len();
    }
    client
        .batch_execute("DROP TABLE events")
        .await
        .context("dropping the table")?;
    Ok(SideReport {
        events: count as u64,
        append: insert,
        copy: Some(copy),
        bytes_per_event: size as f64 / (count.max(1)) as f64,
        segment_bytes_per_event: None,
        log_bytes_per_event: None,
        read_user: read_figures(rows, read_lat),
        before_compaction: None,
        as_of: read_figures(items, as_of_lat),
    })
}

/// The values every row of one push shares.
struct PgFixed {
    user: Uuid,
    device: Uuid,
    origin: &'static str,
    request: Option<Uuid>,
    op: &'static str,
    version: i64,
    now: DateTime<Utc>,
}

/// One row's values in `COLUMNS` order, for INSERT parameters and COPY alike.
fn pg_row<'a>(r: &'a PgRow<'_>, f: &'a PgFixed) -> [&'a (dyn ToSql + Sync); 13] {
    let (seq, event_id, change_id, item_id, kind, doc) = r;
    [
        &f.user, seq, event_id, change_id, &f.device, &f.origin, &f.request, kind, item_id, &f.op,
        &f.version, &f.now, doc,
    ]
}

/// The per-row values of one push that differ between rows: seq, event id, change id, item
/// id, kind, document.
type PgRow<'a> = (i64, Uuid, Uuid, Uuid, &'a str, Json<&'a RawValue>);

const COLUMNS_READ: &str = "seq, event_id, change_id, device_id, origin, request_id, kind, item_id, op, version, recorded_at, user_id, document::text";

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BaselineConfig {
        BaselineConfig {
            pg: None,
            dir: std::env::temp_dir(),
            events: 2_000,
            users: 5,
            batch: 100,
            clients: 3,
            sweep_clients: vec![5],
            reader_events: 1_000,
            reads: 2,
            doc_bytes: (300, 700),
            commit_window: Duration::from_millis(5),
            shards: 2,
            seed: 9,
        }
    }

    #[test]
    fn the_dataset_gives_the_reader_its_events_and_each_user_one_writer() {
        let cfg = cfg();
        let writers = dataset(&cfg);
        assert_eq!(writers.len(), 3);
        let mut per_user = std::collections::HashMap::new();
        let mut writer_of = std::collections::HashMap::new();
        for (w, pushes) in writers.iter().enumerate() {
            for p in pushes {
                assert_eq!(
                    *writer_of.entry(p.user).or_insert(w),
                    w,
                    "a user is always written by the same writer"
                );
                assert_eq!(p.items.len(), 100);
                *per_user.entry(p.user).or_insert(0) += p.items.len();
            }
        }
        assert_eq!(per_user[&0], 1_000);
        assert_eq!(per_user.values().sum::<usize>(), 2_000);
    }

    #[test]
    fn writers_get_even_shares_of_pushes() {
        // 200 pushes: the reader's 10, then 190 over 19 users (10 each); 8 writers.
        let user_of = |p: usize| if p < 10 { 0 } else { 1 + (p - 10) % 19 };
        let writer_of = balance(200, 20, 8, user_of);
        let mut load = [0usize; 8];
        for p in 0..200 {
            load[writer_of[user_of(p)]] += 1;
        }
        // 20 users of 10 pushes each over 8 writers: four writers get three users, four two.
        let mut sorted = load;
        sorted.sort_unstable();
        assert_eq!(sorted, [20, 20, 20, 20, 30, 30, 30, 30]);
        // The reader alone when it has more than a share: 100 of 200 pushes over 4 writers.
        let user_of = |p: usize| if p < 100 { 0 } else { 1 + (p - 100) % 50 };
        let writer_of = balance(200, 51, 4, user_of);
        let mut load = [0usize; 4];
        for p in 0..200 {
            load[writer_of[user_of(p)]] += 1;
        }
        assert_eq!(
            load[writer_of[0]], 100,
            "the reader's writer has nobody else"
        );
        let mut rest: Vec<_> = (0..4)
            .filter(|&w| w != writer_of[0])
            .map(|w| load[w])
            .collect();
        rest.sort_unstable();
        assert!(rest[2] - rest[0] <= 2, "{rest:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_keepsake_side_reads_back_what_it_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = BaselineConfig {
            dir: dir.path().to_path_buf(),
            ..cfg()
        };
        let docs = Arc::new(Documents::new(cfg.seed, 8, cfg.doc_bytes));
        let r = keepsake_side(&cfg, &docs).await.expect("keepsake side");
        assert_eq!(r.events, 2_000);
        assert_eq!(r.read_user.rows, 1_000);
        // Every put is of a new item: as of the middle, about half of the reader's items exist.
        assert!(r.as_of.rows > 0 && r.as_of.rows < 1_000, "{}", r.as_of.rows);
        assert!(r.bytes_per_event > 50.0, "{}", r.bytes_per_event);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_measures_appends_at_every_number_of_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run(BaselineConfig {
            dir: dir.path().to_path_buf(),
            sweep_clients: vec![8, 5],
            ..cfg()
        })
        .await
        .expect("run");
        let writers: Vec<_> = r.append_sweep.iter().map(|a| a.clients).collect();
        assert_eq!(writers, [3, 5, 8], "by number of writers");
        for a in &r.append_sweep {
            assert!(a.keepsake.events_per_s > 0.0 && a.pg_copy.is_none());
        }
        assert!(r.append_ratio.is_none(), "no Postgres, no ratio");
        assert!(r.table().contains("  8 writers"), "{}", r.table());
        // The sweep's dataset: the same events, evenly spread, no reader user.
        let sweep = dataset(&sweep_cfg(&cfg(), 4));
        let loads: Vec<usize> = sweep.iter().map(Vec::len).collect();
        assert_eq!(loads.iter().sum::<usize>(), 20);
        assert!(loads.iter().all(|&n| n == 5), "{loads:?}");
        assert!(sweep.iter().flatten().all(|p| p.user != 0));
    }
}
