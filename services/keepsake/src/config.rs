//! The server's configuration, one type per concern, each read once from clap (a flag, or its
//! `KEEPSAKE_*` variable) and turned into what the code it configures takes: [`StoreArgs`] →
//! the store and its [`RetryPolicy`], [`AuthArgs`] → tokens, [`LogArgs`] and [`ApiArgs`] →
//! [`LogConfig`] and [`Limits`], [`FleetArgs`] → fleet restores.
//!
//! Invariant: a value that cannot work is refused at start with a message naming the flag
//! (clap's range checks, or [`ApiArgs::limits`] for values that depend on each other); nothing
//! is clamped silently. [`ServeArgs`] gathers them for `keepsake serve`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use keepsake_log::LogConfig;
use keepsake_model::{MassDeleteGuard, StagePolicy};
use keepsake_store::RetryPolicy;
use tracing_subscriber::EnvFilter;

use crate::api::Limits;

/// Where the log lives, and how requests to it are retried. `serve`, `verify` and
/// `recover-descriptor` take these flags.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store URL: a path or file:///dir, memory://, or s3://bucket/prefix (S3 settings from AWS_*).
    #[arg(long = "store", env = "KEEPSAKE_STORE", default_value = "./data")]
    pub url: String,
    /// Requests per store call at most when the store fails transiently (5xx, timeouts);
    /// create-only writes are sent once and resolved by reading back.
    #[arg(long, env = "KEEPSAKE_STORE_ATTEMPTS", default_value_t = keepsake_store::retrying::DEFAULT_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub store_attempts: u32,
    /// A store PUT that takes longer than this many milliseconds is dropped (and resolved).
    #[arg(long, env = "KEEPSAKE_STORE_PUT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub store_put_timeout_ms: u64,
    /// A store GET, HEAD or listing page that takes longer than this many milliseconds is
    /// dropped (and tried again).
    #[arg(long, env = "KEEPSAKE_STORE_READ_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub store_read_timeout_ms: u64,
    /// File stores: a read the page cache holds is answered on the thread that asked, not handed
    /// to the blocking pool (Linux, `preadv2` with `RWF_NOWAIT`; reads that would wait for the
    /// disk still go to the pool).
    #[arg(long, env = "KEEPSAKE_STORE_INLINE_FILE_READS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub store_inline_file_reads: bool,
}

impl StoreArgs {
    /// The store at `url` with the default retry policy (what the flags' defaults give).
    pub fn with_url(url: &str) -> Self {
        let d = RetryPolicy::default();
        let millis = |t: Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        Self {
            url: url.to_string(),
            store_attempts: d.attempts,
            store_put_timeout_ms: millis(d.put_timeout),
            store_read_timeout_ms: millis(d.read_timeout),
            store_inline_file_reads: true,
        }
    }

    /// How the store is opened beyond its URL.
    pub fn open_options(&self) -> keepsake_store::OpenOptions {
        keepsake_store::OpenOptions {
            inline_file_reads: self.store_inline_file_reads,
        }
    }

    /// The retry policy these flags give.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.store_attempts,
            put_timeout: Duration::from_millis(self.store_put_timeout_ms),
            read_timeout: Duration::from_millis(self.store_read_timeout_ms),
            list_timeout: Duration::from_millis(self.store_read_timeout_ms),
            ..RetryPolicy::default()
        }
    }
}

/// Who may call: the operator token, the keys device tokens are signed with, and how soon a
/// revocation made through another server takes effect here.
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// The operator token (at least 16 characters). A local file store generates one if unset
    /// (`<store>/.secrets/admin-token`).
    #[arg(long, env = "KEEPSAKE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Device-token keys, `id:base64url-secret` separated by commas; the first signs.
    /// A local file store generates one if unset.
    #[arg(
        long,
        env = "KEEPSAKE_TOKEN_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub token_keys: Vec<String>,
    /// Seconds between re-reads of revocations made through other servers.
    #[arg(long, env = "KEEPSAKE_REVOCATION_REFRESH_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub revocation_refresh_secs: u64,
}

impl AuthArgs {
    /// How often revocations made elsewhere are read.
    pub fn revocation_refresh(&self) -> Duration {
        Duration::from_secs(self.revocation_refresh_secs)
    }
}

/// How the log commits, keeps views, checkpoints and compacts.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Shards of a new store (default 4); an existing store keeps its own.
    #[arg(long, env = "KEEPSAKE_SHARDS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: Option<u32>,
    /// Least milliseconds between two segment PUTs of a shard.
    #[arg(long, env = "KEEPSAKE_COMMIT_WINDOW_MS", default_value_t = 10)]
    pub commit_window_ms: u64,
    /// Milliseconds a push may wait for other pushes on a quiet shard, so that one segment PUT
    /// carries several (object storage bills per PUT; docs/BENCHMARKS.md, "The bill", has the
    /// trade: at the default 200 ms a million users' ordinary load costs ~$246 a month in S3
    /// requests instead of ~$1,567 at 0, pushes answered in ~205 ms at p99 instead of ~15). A
    /// push waits only while the shard's devices push, independently of the server's answers,
    /// at a rate that brings at least one other within the budget; never when it follows its
    /// user's previous answer within the budget plus a second (a device sending pushes one
    /// after another), nor when it is not a device's (registrations, restores, imports). 0: each
    /// push on a quiet shard is committed at once.
    #[arg(long, env = "KEEPSAKE_COMMIT_LATENCY_BUDGET_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub commit_latency_budget_ms: u64,
    /// Changes that make a batch worth its PUT: it stops waiting out the latency budget and
    /// commits by the window (a busy shard is not slowed by the budget).
    #[arg(long, env = "KEEPSAKE_COMMIT_ENOUGH_CHANGES", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub commit_enough_changes: u64,
    /// Pushes that may wait per shard before pushes are refused with 429.
    #[arg(long, env = "KEEPSAKE_QUEUE_DEPTH", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub queue_depth: u64,
    /// Memory for user state in the views, in MiB (beyond it, users drawn at random are evicted).
    #[arg(long, env = "KEEPSAKE_VIEW_MEMORY_MB", default_value_t = 1024)]
    pub view_memory_mb: usize,
    /// Bytes instead of MiB, for tests that force eviction.
    #[arg(long, env = "KEEPSAKE_VIEW_MEMORY_BYTES", hide = true)]
    pub view_memory_bytes: Option<usize>,
    /// Memory for the footers of checkpoint parts that loads read, in MiB (~57 bytes a user
    /// of the store; 64 keeps those of about a million users): past it, the least recently
    /// used go and a load of one of their users reads it again (one more GET). Counted with
    /// the indexes the views make room for (`keepsake_view_index_bytes`).
    #[arg(long, env = "KEEPSAKE_FOOTER_MEMORY_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub footer_memory_mb: u64,
    /// Bytes instead of MiB, for tests that let footers go.
    #[arg(long, env = "KEEPSAKE_FOOTER_MEMORY_BYTES", hide = true)]
    pub footer_memory_bytes: Option<usize>,
    /// Write a checkpoint of a shard every this many events...
    #[arg(long, env = "KEEPSAKE_CHECKPOINT_EVERY_EVENTS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every_events: u64,
    /// ...or every this many seconds when anything was committed.
    #[arg(long, env = "KEEPSAKE_CHECKPOINT_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_interval_secs: u64,
    /// User states a checkpoint's fold holds at once, in MiB: past it, the fold keeps a lower
    /// range of users and folds the others in further passes over the same segments (memory
    /// bounded, for more reads). The views give way to what a fold holds, down to a quarter
    /// of their budget; past that (upkeep and the process's resident excess asking more
    /// than the views can give), the fold gives way too, down to a quarter of this.
    #[arg(long, env = "KEEPSAKE_CHECKPOINT_FOLD_MIB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub checkpoint_fold_mib: u64,
    /// Keep every checkpoint younger than this many hours...
    #[arg(long, env = "KEEPSAKE_CHECKPOINT_KEEP_ALL_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(i64).range(0..=24 * 365 * 100))]
    pub checkpoint_keep_all_hours: i64,
    /// ...and beyond that one per day for this many days (events are never deleted).
    #[arg(long, env = "KEEPSAKE_CHECKPOINT_KEEP_DAILY_DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(i64).range(0..=365 * 100))]
    pub checkpoint_keep_daily_days: i64,
    /// Move checkpointed segments into per-shard history objects after each checkpoint (one
    /// user's history then reads as a few objects instead of every segment holding it).
    #[arg(long, env = "KEEPSAKE_COMPACTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub compaction: bool,
    /// Leave fewer checkpointed segments than this for a later compaction.
    #[arg(long, env = "KEEPSAKE_COMPACTION_MIN_SEGMENTS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub compaction_min_segments: u64,
    /// Events per history object at most (what a compaction holds in memory: ~1 KB an event).
    #[arg(long, env = "KEEPSAKE_COMPACTION_MAX_EVENTS", default_value_t = 131_072,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub compaction_max_events: u64,
    /// How many Linux nice steps below the server the checkpoints' and compaction's threads run:
    /// above 0, pushes come first when the cores are busy and upkeep still gets a share (4: a
    /// weight of 423 against a push thread's 1,024); 0 treats them alike.
    #[arg(long, env = "KEEPSAKE_UPKEEP_NICE", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(0..=19))]
    pub upkeep_nice: u8,
    /// The share of wall time, in percent, that checkpoints and compaction work: after each
    /// turn that took t, upkeep rests t * (100 - d) / d (at most a tenth of the checkpoint
    /// interval; ended early once any shard has a checkpoint's worth of events since its own). Lower: shallower dips in pushes
    /// during a round of upkeep, and longer rounds. 100: no rest.
    #[arg(long, env = "KEEPSAKE_UPKEEP_DUTY_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub upkeep_duty_percent: u8,
}

impl LogArgs {
    /// The log's configuration, with `policy` (from [`ApiArgs`]) and the store's retry policy.
    /// `view_memory_bytes` and `footer_memory_bytes` are the whole server's: the server divides
    /// them among the shards once it knows their count.
    pub fn log_config(&self, policy: StagePolicy, store: RetryPolicy) -> LogConfig {
        LogConfig {
            commit_window: Duration::from_millis(self.commit_window_ms),
            commit_latency_budget: Duration::from_millis(self.commit_latency_budget_ms),
            commit_enough_changes: usize::try_from(self.commit_enough_changes)
                .unwrap_or(usize::MAX),
            queue_depth: usize::try_from(self.queue_depth).unwrap_or(usize::MAX),
            policy,
            view_memory_bytes: self
                .view_memory_bytes
                .unwrap_or(self.view_memory_mb.saturating_mul(1024 * 1024)),
            footer_memory_bytes: self.footer_memory_bytes.unwrap_or(
                usize::try_from(self.footer_memory_mb.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
            ),
            checkpoint_every_events: self.checkpoint_every_events,
            checkpoint_interval: Duration::from_secs(self.checkpoint_interval_secs),
            checkpoint_parts: keepsake_log::PartsPolicy {
                fold_bytes: usize::try_from(self.checkpoint_fold_mib.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
                ..keepsake_log::PartsPolicy::default()
            },
            retention: keepsake_log::retention::RetentionPolicy {
                keep_all_for: chrono::Duration::hours(self.checkpoint_keep_all_hours),
                keep_daily_for_days: self.checkpoint_keep_daily_days,
                ..Default::default()
            },
            compaction: keepsake_log::CompactionPolicy {
                enabled: self.compaction,
                min_segments: self.compaction_min_segments,
                max_events: self.compaction_max_events,
            },
            store,
            upkeep_nice: self.upkeep_nice,
            upkeep_duty_percent: self.upkeep_duty_percent,
            ..LogConfig::default()
        }
    }
}

/// What one request may carry, and the mass-delete guard.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Changes in one push.
    #[arg(long, env = "KEEPSAKE_MAX_CHANGES_PER_PUSH", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_changes_per_push: u64,
    /// Bytes of one document.
    #[arg(long, env = "KEEPSAKE_MAX_DOCUMENT_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub max_document_bytes: u64,
    /// Bytes of one request body.
    #[arg(long, env = "KEEPSAKE_MAX_REQUEST_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1024 * 1024 * 1024))]
    pub max_request_bytes: u64,
    /// Largest page of a pull.
    #[arg(long, env = "KEEPSAKE_MAX_PAGE_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_page_size: u64,
    /// Page of a pull without `limit` (at most --max-page-size).
    #[arg(long, env = "KEEPSAKE_DEFAULT_PAGE_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub default_page_size: u64,
    /// Mass-delete guard: deletes of one kind at or below this are always allowed.
    #[arg(long, env = "KEEPSAKE_MASS_DELETE_MIN_ITEMS", default_value_t = 20)]
    pub mass_delete_min_items: usize,
    /// Mass-delete guard: share of a kind's live items one push may delete unconfirmed (0 to 1).
    #[arg(long, env = "KEEPSAKE_MASS_DELETE_MAX_SHARE", default_value_t = 0.5,
          value_parser = share)]
    pub mass_delete_max_share: f64,
}

/// A share: a number from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 0 and 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl ApiArgs {
    /// The request limits and the staging policy, or what is wrong with them together.
    pub fn limits(&self) -> anyhow::Result<(Limits, StagePolicy)> {
        if self.default_page_size > self.max_page_size {
            anyhow::bail!(
                "--default-page-size ({}) must be at most --max-page-size ({})",
                self.default_page_size,
                self.max_page_size
            );
        }
        if self.max_document_bytes > self.max_request_bytes {
            anyhow::bail!(
                "--max-document-bytes ({}) must be at most --max-request-bytes ({}): a push must be able to carry a document",
                self.max_document_bytes,
                self.max_request_bytes
            );
        }
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let limits = Limits {
            max_changes_per_push: size(self.max_changes_per_push),
            max_document_bytes: size(self.max_document_bytes),
            max_request_bytes: size(self.max_request_bytes),
            max_page_size: size(self.max_page_size),
            default_page_size: size(self.default_page_size),
            ..Limits::default()
        };
        let policy = StagePolicy {
            max_document_bytes: limits.max_document_bytes,
            mass_delete: MassDeleteGuard {
                min_items: self.mass_delete_min_items,
                max_share: self.mass_delete_max_share,
            },
        };
        Ok((limits, policy))
    }
}

/// Fleet restores: how many users at once, and how fast.
#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Users a fleet restore restores at once.
    #[arg(long = "fleet-restore-concurrency", env = "KEEPSAKE_FLEET_RESTORE_CONCURRENCY",
          default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Users a fleet restore starts per second at most, to spare device traffic (0: no limit).
    #[arg(
        long = "fleet-restore-users-per-sec",
        env = "KEEPSAKE_FLEET_RESTORE_USERS_PER_SEC",
        default_value_t = 0
    )]
    pub users_per_second: u32,
}

/// Many servers on one store (`docs/ARCHITECTURE.md`, "Many servers, one store").
#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Coordinate shard ownership with other servers through etcd: etcd://host:port[,host:port].
    #[arg(long = "cluster", env = "KEEPSAKE_CLUSTER")]
    pub cluster: Option<String>,
    /// This server's id in the cluster (letters, digits, '.', '_' and '-'; at most 64).
    #[arg(long = "node-id", env = "KEEPSAKE_NODE_ID")]
    pub node_id: Option<String>,
    /// The base URL other servers forward requests to (default: http:// and the listening
    /// address, when that is not a wildcard).
    #[arg(long, env = "KEEPSAKE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Serve only these shards (e.g. 0-3,7), assigned by the deployment rather than etcd.
    #[arg(
        long = "own-shards",
        env = "KEEPSAKE_OWN_SHARDS",
        conflicts_with = "cluster"
    )]
    pub own_shards: Option<String>,
    /// The etcd lease's time to live: a server that stops answering loses its shards this long
    /// after its last keep-alive.
    #[arg(long = "cluster-lease-secs", env = "KEEPSAKE_CLUSTER_LEASE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(2..=60))]
    pub lease_secs: u64,
}

/// How this server shares the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Alone: every shard (the default).
    Alone,
    /// The listed shards, assigned by the deployment.
    Static {
        /// `--node-id`.
        node: String,
        /// `--own-shards`.
        shards: Vec<u32>,
    },
    /// Shards assigned through etcd.
    Etcd {
        /// `--node-id`.
        node: String,
        /// etcd's endpoints.
        endpoints: Vec<String>,
        /// `--advertise`, if given.
        advertise: Option<String>,
        /// The lease's TTL.
        lease: Duration,
    },
}

impl Membership {
    /// The server's node id, when it is a member.
    pub fn node(&self) -> Option<&str> {
        match self {
            Membership::Alone => None,
            Membership::Static { node, .. } | Membership::Etcd { node, .. } => Some(node),
        }
    }
}

/// Parses `--own-shards`: `0-3,7,9-10`.
fn parse_shard_list(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("{part:?}: shards are numbers or ranges like 0-3"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("{part:?}: a range goes up"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("no shard given".into());
    }
    Ok(out)
}

/// Parses `etcd://host:port[,host:port...]` into etcd endpoints.
pub fn parse_endpoints(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| format!("{url:?}: the cluster is given as etcd://host:port"))?;
    let hosts: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{}", h.trim_end_matches('/')))
        .collect();
    if hosts.is_empty() {
        return Err(format!("{url:?}: no etcd host"));
    }
    Ok(hosts)
}

fn node_id(id: Option<&String>, why: &str) -> Result<String, String> {
    let id = id.ok_or_else(|| format!("{why} needs --node-id (KEEPSAKE_NODE_ID)"))?;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(format!(
            "--node-id {id:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(id.clone())
}

impl ClusterArgs {
    /// Checks the flags together.
    pub fn membership(&self) -> Result<Membership, String> {
        if let Some(url) = &self.cluster {
            let endpoints = parse_endpoints(url)?;
            if let Some(a) = &self.advertise
                && !(a.starts_with("http://") || a.starts_with("https://"))
            {
                return Err(format!("--advertise {a:?}: a base URL (http://host:port)"));
            }
            return Ok(Membership::Etcd {
                node: node_id(self.node_id.as_ref(), "--cluster")?,
                endpoints,
                advertise: self.advertise.clone(),
                lease: Duration::from_secs(self.lease_secs),
            });
        }
        if let Some(list) = &self.own_shards {
            return Ok(Membership::Static {
                node: node_id(self.node_id.as_ref(), "--own-shards")?,
                shards: parse_shard_list(list).map_err(|e| format!("--own-shards: {e}"))?,
            });
        }
        Ok(Membership::Alone)
    }
}

/// `keepsake serve` flags: one group per concern, and the two the server alone takes.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "KEEPSAKE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Log filter (tracing EnvFilter syntax), e.g. info or keepsake_log=debug.
    #[arg(long = "log", env = "KEEPSAKE_LOG", default_value = "info", value_parser = log_filter)]
    pub log_filter: String,
    /// Let the allocator's background threads return freed memory to the system after its decay
    /// time (`--allocator-dirty-decay-ms`), also while the server is idle (without them, what a
    /// burst of reads freed stays resident until later allocations).
    #[arg(long, env = "KEEPSAKE_ALLOCATOR_BACKGROUND_THREADS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub allocator_background_threads: bool,
    /// Milliseconds the allocator keeps freed pages before returning them to the system (0: at
    /// once). Shorter keeps what a checkpoint or compaction freed from staying resident while
    /// the next one allocates; longer saves the system calls and page faults of giving pages
    /// back and taking them again. 1 s, not jemalloc's 10 s: under `make sustained` it kept
    /// 200-400 MiB less resident at the same cores, in two pairs of runs (docs/BENCHMARKS.md).
    #[arg(long, env = "KEEPSAKE_ALLOCATOR_DIRTY_DECAY_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub allocator_dirty_decay_ms: u64,
    /// When the process is over its limit (view budget + `--memory-overhead-mb`), return the
    /// allocator's dirty pages (freed whole, kept for the decay time) to the system at once,
    /// before the views give way: what the views free by giving way otherwise stays resident
    /// for the decay time, and the process's peak with it.
    #[arg(long, env = "KEEPSAKE_ALLOCATOR_PURGE_OVER_LIMIT", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub allocator_purge_over_limit: bool,
    /// How many allocator arenas the server's threads share (0: jemalloc's own, four per core).
    /// Memory one thread frees is reused by the threads of its arena only: one arena lets what
    /// the views free as they give way to a checkpoint's fold be what the fold takes, where
    /// separate arenas kept both resident (docs/BENCHMARKS.md, "One arena").
    #[arg(long, env = "KEEPSAKE_ALLOCATOR_ARENAS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub allocator_arenas: u32,
    /// The largest freed allocation, in bytes, a thread keeps in its own cache for its next
    /// allocations (jemalloc's `tcache_max`; its own default is 32768). What sits in a thread's
    /// cache is out of reach of the other threads: 4 KiB, not 32, lets what the views free as
    /// they give way to a checkpoint's fold go back to the arena the fold allocates from
    /// (docs/BENCHMARKS.md, "Thread caches").
    #[arg(long, env = "KEEPSAKE_ALLOCATOR_THREAD_CACHE_MAX_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(8..=8_388_608))]
    pub allocator_thread_cache_max_bytes: u64,
    /// Resident memory the server may hold beyond its view budget (`--view-memory-mb`), in
    /// MiB: the allocator's overhead, buffers, code and stacks. Past it, the views give way by
    /// the excess, read from the kernel every 100 ms. 224 keeps 32 MiB of the 256 the design
    /// allows for what grows between two readings (docs/BENCHMARKS.md).
    #[arg(long, env = "KEEPSAKE_MEMORY_OVERHEAD_MB", default_value_t = 224,
          value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub memory_overhead_mb: u64,
    /// While the process stays over its limit, the views give way by the excesses of every
    /// reading since it was last within it, added up (false: by the last reading's alone).
    /// Evicted users free bytes in pages other users still share, so the last reading's alone
    /// left the process over its limit by what the evictions did not return.
    #[arg(long, env = "KEEPSAKE_MEMORY_GIVE_WAY_ADDED_UP", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub memory_give_way_added_up: bool,
}

/// A tracing filter that parses.
fn log_filter(s: &str) -> std::result::Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn shard_lists_and_etcd_urls_parse() {
        assert_eq!(parse_shard_list("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_shard_list("7, 1-2,2"), Ok(vec![1, 2, 7]));
        assert!(parse_shard_list("3-1").is_err());
        assert!(parse_shard_list("a").is_err());
        assert!(parse_shard_list("").is_err());
        assert_eq!(
            parse_endpoints("etcd://127.0.0.1:2379,10.0.0.2:2379/"),
            Ok(vec![
                "http://127.0.0.1:2379".to_string(),
                "http://10.0.0.2:2379".to_string()
            ])
        );
        assert!(parse_endpoints("http://x:1").is_err());
        assert!(parse_endpoints("etcd://").is_err());
    }

    /// `keepsake serve`'s flags, as the binary parses them.
    #[derive(Parser, Debug)]
    struct All {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, String> {
        All::try_parse_from(std::iter::once("keepsake").chain(args.iter().copied()))
            .map(|a| a.serve)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn values_that_cannot_work_are_refused_naming_the_flag() {
        for (args, flag) in [
            (&["--store-attempts", "0"][..], "--store-attempts"),
            (&["--store-put-timeout-ms", "0"], "--store-put-timeout-ms"),
            (&["--queue-depth", "0"], "--queue-depth"),
            (
                &["--checkpoint-every-events", "0"],
                "--checkpoint-every-events",
            ),
            (
                &["--checkpoint-interval-secs", "0"],
                "--checkpoint-interval-secs",
            ),
            (
                &["--checkpoint-keep-all-hours=-1"],
                "--checkpoint-keep-all-hours",
            ),
            (
                &["--compaction-min-segments", "0"],
                "--compaction-min-segments",
            ),
            (&["--compaction-max-events", "0"], "--compaction-max-events"),
            (&["--checkpoint-fold-mib", "0"], "--checkpoint-fold-mib"),
            (&["--footer-memory-mb", "0"], "--footer-memory-mb"),
            (
                &["--allocator-dirty-decay-ms", "600001"],
                "--allocator-dirty-decay-ms",
            ),
            (&["--allocator-arenas", "1025"], "--allocator-arenas"),
            (&["--allocator-arenas=-1"], "--allocator-arenas"),
            (
                &["--allocator-thread-cache-max-bytes", "7"],
                "--allocator-thread-cache-max-bytes",
            ),
            (
                &["--allocator-thread-cache-max-bytes", "8388609"],
                "--allocator-thread-cache-max-bytes",
            ),
            (&["--memory-overhead-mb", "1048577"], "--memory-overhead-mb"),
            (&["--memory-overhead-mb=-1"], "--memory-overhead-mb"),
            (&["--upkeep-nice", "20"], "--upkeep-nice"),
            (&["--upkeep-nice=-1"], "--upkeep-nice"),
            (&["--upkeep-duty-percent", "0"], "--upkeep-duty-percent"),
            (&["--upkeep-duty-percent", "101"], "--upkeep-duty-percent"),
            (
                &["--revocation-refresh-secs", "0"],
                "--revocation-refresh-secs",
            ),
            (
                &["--fleet-restore-concurrency", "0"],
                "--fleet-restore-concurrency",
            ),
            (
                &["--mass-delete-max-share", "1.5"],
                "--mass-delete-max-share",
            ),
            (&["--max-page-size", "0"], "--max-page-size"),
            (
                &["--commit-latency-budget-ms", "60001"],
                "--commit-latency-budget-ms",
            ),
            (&["--commit-enough-changes", "0"], "--commit-enough-changes"),
            (&["--shards", "0"], "--shards"),
            (&["--log", "nonsense["], "--log"),
        ] {
            let e = parse(args).expect_err("refused");
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        let together = parse(&["--default-page-size", "600", "--max-page-size", "500"])
            .expect("each alone is fine")
            .api
            .limits()
            .expect_err("refused together")
            .to_string();
        assert!(together.contains("--default-page-size"), "{together}");
    }

    #[test]
    fn the_defaults_give_the_documented_configuration() {
        let all = parse(&[]).expect("defaults");
        let (limits, policy) = all.api.limits().expect("limits");
        assert_eq!(limits.max_changes_per_push, 1000);
        assert_eq!(limits.default_page_size, 500);
        let log = all.log.log_config(policy, all.store.retry());
        assert_eq!(log.commit_window, Duration::from_millis(10));
        assert_eq!(log.commit_latency_budget, Duration::from_millis(200));
        assert_eq!(log.commit_enough_changes, 64);
        let budget = parse(&["--commit-latency-budget-ms", "250"]).expect("budget");
        assert_eq!(
            budget
                .log
                .log_config(policy, all.store.retry())
                .commit_latency_budget,
            Duration::from_millis(250)
        );
        assert_eq!(log.view_memory_bytes, 1024 * 1024 * 1024);
        assert_eq!(log.footer_memory_bytes, 64 * 1024 * 1024);
        assert_eq!(all.memory_overhead_mb, 224);
        assert!(all.allocator_purge_over_limit);
        assert!(all.memory_give_way_added_up);
        assert!(all.store.store_inline_file_reads);
        assert_eq!(log.store, RetryPolicy::default());
        assert_eq!(log.policy.max_document_bytes, 256 * 1024);
        assert_eq!(all.auth.revocation_refresh(), Duration::from_secs(5));
        assert_eq!(all.fleet.concurrency, 32);
        assert_eq!(all.store.url, "./data");
        assert_eq!(
            StoreArgs::with_url("./data").retry(),
            RetryPolicy::default()
        );
    }
}
