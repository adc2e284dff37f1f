//! Command-line interface. Every flag also reads an environment variable.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{ServeArgs, StoreArgs};
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
    /// A cluster's servers and which shard each serves, as etcd holds them.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Operator commands against a running server (state, events, diff, restore, restore-all,
    /// rebuild, compact).
    #[command(flatten)]
    Operator(crate::operator::Op),
}

/// `keepsake cluster ...`.
#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Every store's servers (id, URL, shards) and every shard's server and generation.
    Status {
        /// etcd://host:port[,host:port]
        #[arg(long = "cluster", env = "KEEPSAKE_CLUSTER")]
        cluster: String,
    },
}

/// `keepsake verify` flags.
#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The store's shard count: checked against keepsake.json; on a store that lost it, the
    /// count to verify with (default: the highest shard holding data, plus one, when every shard
    /// below it holds data). Every user must hash to the shard holding it.
    #[arg(long, env = "KEEPSAKE_SHARDS")]
    shards: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The shard count to verify with: the descriptor's, or on a store that lost it, the operator's
/// or the one the listing tells.
async fn shard_count_to_verify(
    store: &keepsake_store::Store,
    retry: keepsake_store::RetryPolicy,
    asked: Option<u32>,
) -> Result<u32> {
    let retried = store.retrying(retry);
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

fn verify(a: VerifyArgs) -> Result<std::process::ExitCode> {
    let as_json = a.json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let store = keepsake_store::open_store_opts(&a.store.url, a.store.open_options())?;
        let shard_count = shard_count_to_verify(&store, a.store.retry(), a.shards).await?;
        let (report, _) =
            keepsake_log::verify::verify_store(&store.retrying(a.store.retry()), shard_count)
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
        Command::Verify(a) => verify(a),
        Command::RecoverDescriptor(a) => crate::recover::main(a),
        Command::Cluster(ClusterCommand::Status { cluster }) => {
            let endpoints =
                crate::config::parse_endpoints(&cluster).map_err(|e| anyhow::anyhow!(e))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let text = rt.block_on(crate::cluster::etcd::status(&endpoints))?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Operator(op) => {
            crate::operator::run(op)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Serve(a) => {
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(&a.log_filter))
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init();
            if let Err(e) = crate::memory::background_threads(a.allocator_background_threads) {
                tracing::warn!(error = %e, "the allocator's background threads could not be set");
            }
            if let Err(e) = crate::memory::dirty_decay(a.allocator_dirty_decay_ms) {
                tracing::warn!(error = %e, "the allocator's decay time could not be set");
            }
            let cache_max = usize::try_from(a.allocator_thread_cache_max_bytes)?;
            crate::memory::thread_cache_max(cache_max)
                .map_err(|e| anyhow::anyhow!("--allocator-thread-cache-max-bytes: {e}"))?;
            crate::memory::arenas(a.allocator_arenas)
                .map_err(|e| anyhow::anyhow!("--allocator-arenas: {e}"))?;
            let (limits, policy) = a.api.limits()?;
            let membership = a.cluster.membership().map_err(|e| anyhow::anyhow!(e))?;
            // Upkeep's threads share the arenas too: the fold is what most needs the memory the
            // views free.
            let mut log = a.log.log_config(policy, a.store.retry());
            log.upkeep_thread_start = Some(crate::memory::bind_thread);
            let cfg = ServerConfig {
                membership,
                log,
                shards: a.log.shards,
                store: a.store,
                listen: a.listen,
                auth: a.auth,
                limits,
                fleet: a.fleet,
                memory_overhead_bytes: a.memory_overhead_mb.saturating_mul(1 << 20),
                purge_over_limit: a.allocator_purge_over_limit,
                give_way_added_up: a.memory_give_way_added_up,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .on_thread_start(crate::memory::bind_thread)
                .enable_all()
                .build()?;
            rt.block_on(run(cfg, shutdown_signal()))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
