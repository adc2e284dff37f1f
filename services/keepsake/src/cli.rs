//! Command-line interface. Every flag also reads an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use keepsake_model::MassDeleteGuard;
use tracing_subscriber::EnvFilter;

use crate::api::Limits;
use crate::server::{ServerConfig, run};

#[derive(Parser, Debug)]
#[command(
    name = "keepsake",
    version,
    about = "Keepsake: contacts, calendars, tasks and notes that are never lost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    conn: crate::operator::Conn,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (with no configuration: ./data on the local file system, 127.0.0.1:8080).
    Serve(Box<ServeArgs>),
    /// Read every segment and checkpoint of a store directly (no server) and report problems;
    /// exits 1 if there are any.
    Verify(VerifyArgs),
    /// Write a lost store descriptor (keepsake.json) back, on a store that holds data: the shard
    /// count from the shards present (or --shards), the store id given (directly, no server).
    RecoverDescriptor(crate::recover::RecoverArgs),
    /// Operator commands against a running server (state, events, diff, restore, restore-all,
    /// rebuild, compact).
    #[command(flatten)]
    Operator(crate::operator::Op),
}

/// `keepsake verify` flags.
#[derive(Args, Debug)]
struct VerifyArgs {
    /// Store URL (as for serve).
    #[arg(long, env = "KEEPSAKE_STORE", default_value = "./data")]
    store: String,
    /// The store's shard count: checked against keepsake.json; on a store that lost it, the
    /// count to verify with (default: the highest shard holding data, plus one, when every shard
    /// below it holds data). Every user must hash to the shard holding it.
    #[arg(long, env = "KEEPSAKE_SHARDS")]
    shards: Option<u32>,
}

/// The shard count to verify with: the descriptor's, or on a store that lost it, the operator's
/// or the one the listing tells.
async fn shard_count_to_verify(store: &keepsake_store::Store, asked: Option<u32>) -> Result<u32> {
    let retried = store.retrying(keepsake_store::RetryPolicy::default());
    let inner = retried.as_ref();
    match (keepsake_store::read_descriptor(inner).await?, asked) {
        (Some(d), Some(n)) if n != d.shard_count => anyhow::bail!(
            "{} has {} shards (keepsake.json), not {n}",
            store.description,
            d.shard_count
        ),
        (Some(d), _) => Ok(d.shard_count),
        (None, asked) => {
            if keepsake_store::find_data(inner).await?.is_none() {
                anyhow::bail!(
                    "{} has no keepsake.json and no Keepsake data: not a Keepsake store",
                    store.description
                );
            }
            let survey = keepsake_store::recover::survey_shards(inner).await?;
            let (n, from) = keepsake_store::recover::recovered_shard_count(&survey, asked)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{} has data but no keepsake.json (the descriptor was lost), and {e}",
                        store.description
                    )
                })?;
            let mut err = std::io::stderr().lock();
            use std::io::Write as _;
            writeln!(
                err,
                "{} has data but no keepsake.json (the descriptor was lost): verifying as a \
                 store of {n} shards ({}); shards holding data: {:?}",
                store.description,
                match from {
                    keepsake_store::recover::CountFrom::Listing =>
                        "the highest shard holding data, plus one",
                    keepsake_store::recover::CountFrom::Operator => "--shards",
                },
                survey.present
            )?;
            Ok(n)
        }
    }
}

fn verify(a: VerifyArgs, as_json: bool) -> Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let store = keepsake_store::open_store(&a.store)?;
        let shard_count = shard_count_to_verify(&store, a.shards).await?;
        let (report, _) = keepsake_log::verify::verify_store(
            &store.retrying(keepsake_store::RetryPolicy::default()),
            shard_count,
        )
        .await?;
        anyhow::Ok(report)
    })?;
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "{}: {} shards, {} segments ({} history objects), {} events, {} checkpoints, {} users; state hash {}",
            if report.ok { "ok" } else { "PROBLEMS" },
            report.shards,
            report.segments,
            report.history_objects,
            report.events,
            report.checkpoints,
            report.users,
            report.state_hash
        )?;
        for p in &report.problems {
            writeln!(out, "  {:<22} {}  {}", p.kind, p.key, p.detail)?;
        }
    }
    Ok(if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `keepsake serve` flags.
#[derive(Args, Debug)]
struct ServeArgs {
    /// Store URL: a path or file:///dir, memory://, or s3://bucket/prefix (S3 settings from AWS_*).
    #[arg(long, env = "KEEPSAKE_STORE", default_value = "./data")]
    store: String,
    /// Requests per store call at most when the store fails transiently (5xx, timeouts);
    /// create-only writes are sent once and resolved by reading back.
    #[arg(long, env = "KEEPSAKE_STORE_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    store_attempts: u32,
    /// A store PUT that takes longer than this many milliseconds is dropped (and resolved).
    #[arg(long, env = "KEEPSAKE_STORE_PUT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    store_put_timeout_ms: u64,
    /// A store GET, HEAD or listing page that takes longer than this many milliseconds is
    /// dropped (and tried again).
    #[arg(long, env = "KEEPSAKE_STORE_READ_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    store_read_timeout_ms: u64,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "KEEPSAKE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Device-token keys, `id:base64url-secret` separated by commas; the first signs.
    /// A local file store generates one if unset.
    #[arg(
        long,
        env = "KEEPSAKE_TOKEN_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    token_keys: Vec<String>,
    /// Shards of a new store (default 4); an existing store keeps its own.
    #[arg(long, env = "KEEPSAKE_SHARDS")]
    shards: Option<u32>,
    /// Least milliseconds between two segment PUTs of a shard.
    #[arg(long, env = "KEEPSAKE_COMMIT_WINDOW_MS", default_value_t = 10)]
    commit_window_ms: u64,
    /// Pushes that may wait per shard before pushes are refused with 429.
    #[arg(long, env = "KEEPSAKE_QUEUE_DEPTH", default_value_t = 4096)]
    queue_depth: usize,
    /// Changes in one push.
    #[arg(long, env = "KEEPSAKE_MAX_CHANGES_PER_PUSH", default_value_t = 1000)]
    max_changes_per_push: usize,
    /// Bytes of one document.
    #[arg(long, env = "KEEPSAKE_MAX_DOCUMENT_BYTES", default_value_t = 256 * 1024)]
    max_document_bytes: usize,
    /// Bytes of one request body.
    #[arg(long, env = "KEEPSAKE_MAX_REQUEST_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_request_bytes: usize,
    /// Largest page of a pull.
    #[arg(long, env = "KEEPSAKE_MAX_PAGE_SIZE", default_value_t = 1000)]
    max_page_size: usize,
    /// Page of a pull without `limit`.
    #[arg(long, env = "KEEPSAKE_DEFAULT_PAGE_SIZE", default_value_t = 500)]
    default_page_size: usize,
    /// Mass-delete guard: deletes of one kind at or below this are always allowed.
    #[arg(long, env = "KEEPSAKE_MASS_DELETE_MIN_ITEMS", default_value_t = 20)]
    mass_delete_min_items: usize,
    /// Mass-delete guard: share of a kind's live items one push may delete unconfirmed.
    #[arg(long, env = "KEEPSAKE_MASS_DELETE_MAX_SHARE", default_value_t = 0.5)]
    mass_delete_max_share: f64,
    /// Seconds between re-reads of revocations made through other servers.
    #[arg(long, env = "KEEPSAKE_REVOCATION_REFRESH_SECS", default_value_t = 5)]
    revocation_refresh_secs: u64,
    /// Memory for user state in the views, in MiB (least recently used users are evicted).
    #[arg(long, env = "KEEPSAKE_VIEW_MEMORY_MB", default_value_t = 1024)]
    view_memory_mb: usize,
    /// Bytes instead of MiB, for tests that force eviction.
    #[arg(long, env = "KEEPSAKE_VIEW_MEMORY_BYTES", hide = true)]
    view_memory_bytes: Option<usize>,
    /// Write a checkpoint of a shard every this many events...
    #[arg(
        long,
        env = "KEEPSAKE_CHECKPOINT_EVERY_EVENTS",
        default_value_t = 1_000_000
    )]
    checkpoint_every_events: u64,
    /// ...or every this many seconds when anything was committed.
    #[arg(long, env = "KEEPSAKE_CHECKPOINT_INTERVAL_SECS", default_value_t = 300)]
    checkpoint_interval_secs: u64,
    /// Keep every checkpoint younger than this many hours...
    #[arg(long, env = "KEEPSAKE_CHECKPOINT_KEEP_ALL_HOURS", default_value_t = 24)]
    checkpoint_keep_all_hours: i64,
    /// ...and beyond that one per day for this many days (events are never deleted).
    #[arg(
        long,
        env = "KEEPSAKE_CHECKPOINT_KEEP_DAILY_DAYS",
        default_value_t = 365
    )]
    checkpoint_keep_daily_days: i64,
    /// Move checkpointed segments into per-shard history objects after each checkpoint (one
    /// user's history then reads as a few objects instead of every segment holding it).
    #[arg(long, env = "KEEPSAKE_COMPACTION", default_value_t = true, action = clap::ArgAction::Set)]
    compaction: bool,
    /// Leave fewer checkpointed segments than this for a later compaction.
    #[arg(long, env = "KEEPSAKE_COMPACTION_MIN_SEGMENTS", default_value_t = 64)]
    compaction_min_segments: u64,
    /// Events per history object at most (what a compaction holds in memory: ~1 KB an event).
    #[arg(
        long,
        env = "KEEPSAKE_COMPACTION_MAX_EVENTS",
        default_value_t = 131_072
    )]
    compaction_max_events: u64,
    /// Users a fleet restore restores at once.
    #[arg(long, env = "KEEPSAKE_FLEET_RESTORE_CONCURRENCY", default_value_t = 32)]
    fleet_restore_concurrency: usize,
    /// Users a fleet restore starts per second at most, to spare device traffic (0: no limit).
    #[arg(
        long,
        env = "KEEPSAKE_FLEET_RESTORE_USERS_PER_SEC",
        default_value_t = 0
    )]
    fleet_restore_users_per_sec: u32,
    /// Log filter (tracing EnvFilter syntax), e.g. info or keepsake_log=debug.
    #[arg(long, env = "KEEPSAKE_LOG", default_value = "info")]
    log: String,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

/// Entry point of the `keepsake` binary.
pub fn main() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify(a) => verify(a, cli.conn.json),
        Command::RecoverDescriptor(a) => crate::recover::main(a),
        Command::Operator(op) => {
            crate::operator::run(&cli.conn, op)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Serve(a) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_new(&a.log).unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init();
            if !(0.0..=1.0).contains(&a.mass_delete_max_share) {
                anyhow::bail!("--mass-delete-max-share must be between 0 and 1");
            }
            if a.default_page_size == 0 || a.default_page_size > a.max_page_size {
                anyhow::bail!("--default-page-size must be between 1 and --max-page-size");
            }
            let cfg = ServerConfig {
                store: a.store,
                store_retry: keepsake_store::RetryPolicy {
                    attempts: a.store_attempts,
                    put_timeout: Duration::from_millis(a.store_put_timeout_ms),
                    read_timeout: Duration::from_millis(a.store_read_timeout_ms),
                    list_timeout: Duration::from_millis(a.store_read_timeout_ms),
                    ..keepsake_store::RetryPolicy::default()
                },
                listen: a.listen,
                admin_token: cli.conn.admin_token.clone(),
                token_keys: a.token_keys,
                shards: a.shards,
                commit_window: Duration::from_millis(a.commit_window_ms),
                queue_depth: a.queue_depth,
                limits: Limits {
                    max_changes_per_push: a.max_changes_per_push,
                    max_document_bytes: a.max_document_bytes,
                    max_request_bytes: a.max_request_bytes,
                    max_page_size: a.max_page_size,
                    default_page_size: a.default_page_size,
                    ..Limits::default()
                },
                mass_delete: MassDeleteGuard {
                    min_items: a.mass_delete_min_items,
                    max_share: a.mass_delete_max_share,
                },
                revocation_refresh: Duration::from_secs(a.revocation_refresh_secs.max(1)),
                view_memory_bytes: a
                    .view_memory_bytes
                    .unwrap_or(a.view_memory_mb.saturating_mul(1024 * 1024)),
                checkpoint_every_events: a.checkpoint_every_events.max(1),
                checkpoint_interval: Duration::from_secs(a.checkpoint_interval_secs.max(1)),
                checkpoint_retention: keepsake_log::retention::RetentionPolicy {
                    keep_all_for: chrono::Duration::hours(a.checkpoint_keep_all_hours.max(0)),
                    keep_daily_for_days: a.checkpoint_keep_daily_days.max(0),
                },
                compaction: keepsake_log::CompactionPolicy {
                    enabled: a.compaction,
                    min_segments: a.compaction_min_segments.max(1),
                    max_events: a.compaction_max_events.max(1),
                },
                fleet_concurrency: a.fleet_restore_concurrency.max(1),
                fleet_users_per_second: a.fleet_restore_users_per_sec,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(cfg, shutdown_signal()))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
