//! Command line: `keepsake-loadgen http …`, `keepsake-loadgen baseline …`,
//! `keepsake-loadgen cost …` and `keepsake-loadgen scale …`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use keepsake_model::Kind;

use crate::baseline::{self, BaselineConfig};
use crate::cost::{self, LoadModel, Prices};
use crate::http::{self, RunConfig};
use crate::scale::{self, ScaleConfig};
use crate::workload::Mix;

/// Load for Keepsake: simulated handsets over HTTP, and a storage baseline against PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "keepsake-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate handsets against a running server; print a table and write it as JSON.
    Http(HttpArgs),
    /// Append, read and rebuild the same events in Keepsake's log and in PostgreSQL.
    Baseline(BaselineArgs),
    /// Run a load model against a running server and price its store requests (and, with
    /// --store, the bytes it keeps): the monthly bill per million active users, by cause.
    Cost(CostArgs),
    /// Fill a store in steps (10%, 50%, 100% of a million users) and measure, through a server
    /// this command starts and restarts, what the same new work costs at each size.
    Scale(ScaleArgs),
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// The `keepsake` binary to start (default: the one next to this program).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the store and the server's log go; it must not hold a store already.
    #[arg(long)]
    dir: PathBuf,
    /// Users at 100% of the fill.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Contacts per user.
    #[arg(long, default_value_t = 20)]
    items: u64,
    /// The fill's steps, in percent.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    steps: Vec<u32>,
    /// Users of the new work after each step.
    #[arg(long, default_value_t = 1_000)]
    work_users: u64,
    /// Patches per user of the new work.
    #[arg(long, default_value_t = 20)]
    patches: u64,
    /// Rounds of the new work and its checkpoint in each step (the median round is reported).
    #[arg(long, default_value_t = 3)]
    checkpoint_rounds: u32,
    /// Users whose cold first pull is timed (and as many whose as-of read is).
    #[arg(long, default_value_t = 500)]
    cold_samples: u64,
    /// Users of each step's fleet restore.
    #[arg(long, default_value_t = 10_000)]
    restore_users: u64,
    /// Register a device for every filled user through the server (`false`: only for the
    /// users the measurements use).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    register_all: bool,
    /// The server's view budget, MiB (the memory target is this plus 256 MiB).
    #[arg(long, default_value_t = 1024)]
    view_memory_mb: u64,
    /// Document sizes, bytes (`300-700`).
    #[arg(long, default_value = "300-700", value_parser = parse_range)]
    doc_bytes: (usize, usize),
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "scale-report.json")]
    report: PathBuf,
}

/// The server a run drives, and the operator token that registers its handsets.
#[derive(Debug, Args)]
struct ServerArgs {
    /// The server.
    #[arg(long, env = "KEEPSAKE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Operator token, to register one device per handset.
    #[arg(long, env = "KEEPSAKE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

#[derive(Debug, Args)]
struct CostArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Active users the load stands for (it sets the request rate).
    #[arg(long, default_value_t = 1_000_000.0)]
    model_users: f64,
    /// Pushes per user per day.
    #[arg(long, default_value_t = 10.0)]
    pushes_per_day: f64,
    /// Pulls per user per day.
    #[arg(long, default_value_t = 50.0)]
    pulls_per_day: f64,
    /// Changes per push.
    #[arg(long, default_value_t = 3)]
    changes_per_push: usize,
    /// Simulated handsets sending that load.
    #[arg(long, default_value_t = 64)]
    handsets: usize,
    /// Users those handsets belong to.
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// A price table (JSON: name, tier1_per_1000, tier2_per_1000, storage_gb_month); S3
    /// Standard list prices if absent.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// After the run, ask the server to checkpoint and compact (`POST /admin/v1/compact`) and
    /// measure the bytes kept after it, as they are within a day of the load (`false`: the
    /// run's segments as they are).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    compact: bool,
    /// The server's store URL, listed before and after the run to measure the bytes it keeps
    /// (S3 settings from the AWS_* environment, as the server's).
    #[arg(long)]
    store: Option<String>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "cost-report.json")]
    report: PathBuf,
}

/// Asks the server for a checkpoint and compaction of every shard now (what a day of the load
/// would have run many times).
async fn compact(url: &str, admin_token: &str) -> anyhow::Result<()> {
    let answer = reqwest::Client::new()
        .post(format!("{url}/admin/v1/compact"))
        .bearer_auth(admin_token)
        .timeout(std::time::Duration::from_secs(3600))
        .send()
        .await
        .context("POST /admin/v1/compact")?;
    if !answer.status().is_success() {
        let status = answer.status();
        bail!(
            "POST /admin/v1/compact answered {status}: {}",
            answer.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn cost_run(a: CostArgs) -> anyhow::Result<()> {
    let prices = match &a.prices {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<Prices>(&text)
                .with_context(|| format!("{}: a price table", path.display()))?
        }
        None => Prices::default(),
    };
    prices.check().map_err(anyhow::Error::msg)?;
    if !(a.model_users > 0.0 && a.model_users.is_finite()) {
        bail!("--model-users must be positive");
    }
    if !(a.pushes_per_day >= 0.0
        && a.pulls_per_day >= 0.0
        && a.pushes_per_day + a.pulls_per_day > 0.0)
    {
        bail!("--pushes-per-day and --pulls-per-day must not be negative, and not both 0");
    }
    if a.duration <= 0.0 || a.changes_per_push == 0 {
        bail!("--duration must be positive and --changes-per-push at least 1");
    }
    let model = LoadModel {
        users: a.model_users,
        pushes_per_day: a.pushes_per_day,
        pulls_per_day: a.pulls_per_day,
        changes_per_push: a.changes_per_push,
    };
    let store = match &a.store {
        Some(url) => Some(
            keepsake_store::open_store(url).with_context(|| format!("opening the store {url}"))?,
        ),
        None => None,
    };
    let cfg = RunConfig {
        url: a.server.url.trim_end_matches('/').to_string(),
        admin_token: a.server.admin_token,
        handsets: a.handsets,
        devices_per_handset: 1,
        users: a.users,
        duration: seconds("duration", a.duration)?,
        warmup: seconds("warmup", a.warmup)?,
        rate: Some(model.rate()),
        // The default mix (patches, deletes, stale versions, retries), with the model's shares
        // and no long polls (the model's pulls are plain ones).
        mix: Mix {
            push_share: model.push_share(),
            long_poll_share: 0.0,
            long_poll_wait: 0,
            changes_per_push: model.changes_per_push,
            ..Mix::default()
        },
        seed: a.seed,
        label: "cost".into(),
        timeout: seconds("timeout", 70.0)?,
        sample_every: None,
    };
    let (url, admin_token) = (cfg.url.clone(), cfg.admin_token.clone());
    let started = std::time::Instant::now();
    let events_before = http::server_counters(&url).await.events;
    let kept_before = match &store {
        Some(s) => Some(cost::kept(s).await?),
        None => None,
    };
    let run = http::run(cfg).await?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let kept = match (&store, kept_before) {
        (Some(s), Some(before)) => {
            let events = http::server_counters(&url).await.events - events_before;
            let added = cost::kept_since(cost::kept(s).await?, before);
            let added_after_compaction = if a.compact {
                compact(&url, &admin_token).await?;
                Some(cost::kept_since(cost::kept(s).await?, before))
            } else {
                None
            };
            Some(cost::KeptReport {
                events,
                added,
                added_after_compaction,
            })
        }
        _ => None,
    };
    // The month's growth is what the log keeps once compacted (as it is within a day of the
    // load), not the run's small segments; checkpoints are replaced, not accumulated.
    let kept_per_s = kept
        .as_ref()
        .map(|k| k.added_after_compaction.unwrap_or(k.added).growing() as f64 / elapsed);
    let bill = cost::bill(&model, &prices, &run.server, kept_per_s);
    let table = format!(
        "{}{}{}",
        run.table(),
        kept.as_ref()
            .map(cost::KeptReport::table)
            .unwrap_or_default(),
        bill.table(&model, run.requests_per_s)
    );
    #[derive(serde::Serialize)]
    struct CostReport<'a> {
        model: &'a LoadModel,
        run: &'a http::RunReport,
        kept: Option<&'a cost::KeptReport>,
        bill: &'a cost::Bill,
    }
    write_report(
        &a.report,
        &table,
        &CostReport {
            model: &model,
            run: &run,
            kept: kept.as_ref(),
            bill: &bill,
        },
    )
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a share between 0 and 1"))
    }
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: usize = a.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    let b: usize = b.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    if a == 0 || a > b || b > 1 << 20 {
        return Err(format!(
            "{s}: want MIN-MAX bytes with 0 < MIN <= MAX <= 1 MiB"
        ));
    }
    Ok((a, b))
}

fn parse_kind(k: &str) -> Result<Kind, String> {
    // `device` is the operator's record of a device, never pushed by one.
    Kind::parse(k.trim())
        .filter(Kind::is_data)
        .ok_or_else(|| format!("unknown kind {k:?} (contact, event, task, note)"))
}

#[derive(Debug, Args)]
struct HttpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Simulated handsets (concurrent clients).
    #[arg(long, default_value_t = 64)]
    handsets: usize,
    /// Users the handsets belong to (handset h is a device of user h % users).
    #[arg(long, default_value_t = 32)]
    users: usize,
    /// Devices each handset stands for, one request each in turn (device d of all
    /// handsets x this belongs to user d % users): many users over few connections.
    #[arg(long, default_value_t = 1)]
    devices_per_handset: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop at this many requests per second (all handsets together); closed loop if absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of requests that are pushes; the rest are pulls.
    #[arg(long, default_value_t = 0.2, value_parser = parse_share)]
    push_share: f64,
    /// Share of pulls that long-poll.
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    long_poll_share: f64,
    /// Seconds a long poll waits for news.
    #[arg(long, default_value_t = 2)]
    long_poll_wait: u32,
    /// Changes per push.
    #[arg(long, default_value_t = 100)]
    changes_per_push: usize,
    /// Kinds pushed, comma separated.
    #[arg(long, default_value = "contact,event,task,note", value_delimiter = ',', value_parser = parse_kind)]
    kinds: Vec<Kind>,
    /// Share of changes that patch a known item.
    #[arg(long, default_value_t = 0.15, value_parser = parse_share)]
    patch_share: f64,
    /// Share of changes that delete a known item.
    #[arg(long, default_value_t = 0.03, value_parser = parse_share)]
    delete_share: f64,
    /// Share of patches and deletes naming an older version than the handset knows.
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    stale_share: f64,
    /// Share of pushes that re-send the previous push (answered all duplicate).
    #[arg(long, default_value_t = 0.02, value_parser = parse_share)]
    retry_share: f64,
    /// Document sizes in bytes, MIN-MAX.
    #[arg(long, default_value = "300-700", value_parser = parse_range)]
    doc_bytes: (usize, usize),
    /// Items per pull.
    #[arg(long, default_value_t = 100)]
    pull_limit: usize,
    /// Items each handset creates at most; past that, changes that would create items replace
    /// known ones (puts naming their version), so users' states stop growing. Unbounded if absent.
    #[arg(long)]
    items_per_handset: Option<usize>,
    /// Seed: the same seed gives the same users and requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Name of the run in the report.
    #[arg(long, default_value = "http")]
    label: String,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 70.0)]
    timeout: f64,
    /// Read the server's committed events every this many seconds (at least 1) of the measured
    /// time and report each interval's rate, and the slowest against the median (`make
    /// sustained`).
    #[arg(long)]
    sample_every: Option<f64>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "loadgen-report.json")]
    report: PathBuf,
}

#[derive(Debug, Args)]
struct BaselineArgs {
    /// PostgreSQL connection string (libpq style, e.g. "host=127.0.0.1 port=5432 user=postgres");
    /// without it only Keepsake is measured.
    #[arg(long, env = "KEEPSAKE_PG")]
    pg: Option<String>,
    /// Directory for Keepsake's file store (a fresh subdirectory, removed afterwards); the
    /// system's temporary directory if absent. Put it on the disk Postgres uses.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events in all.
    #[arg(long, default_value_t = 500_000)]
    events: usize,
    /// Users.
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Events per push (one transaction in Postgres).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// More numbers of writers at which both sides append the same number of events again
    /// (spread evenly over the users), to find each one's best rate; comma-separated, or the
    /// flag alone for none. Postgres needs max_connections above the largest.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "8,16,128,256,512")]
    sweep_clients: Vec<usize>,
    /// Events of the user whose reads are measured.
    #[arg(long, default_value_t = 10_000)]
    reader_events: usize,
    /// Repetitions of each read.
    #[arg(long, default_value_t = 20)]
    reads: usize,
    /// Document sizes in bytes, MIN-MAX.
    #[arg(long, default_value = "300-700", value_parser = parse_range)]
    doc_bytes: (usize, usize),
    /// Keepsake's commit window, ms.
    #[arg(long, default_value_t = 10)]
    commit_window_ms: u64,
    /// Keepsake's shards (as the server's default).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "baseline-report.json")]
    report: PathBuf,
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    if !(0.0..=86_400.0).contains(&s) {
        bail!("--{name} must be between 0 and 86400 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn write_report(path: &PathBuf, table: &str, json: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(table.as_bytes())?;
    let text = serde_json::to_string_pretty(json)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    writeln!(out, "  report: {}", path.display())?;
    Ok(())
}

/// Parses the command line and runs.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Command::Http(a) => {
            if a.duration <= 0.0 {
                bail!("--duration must be positive");
            }
            if a.changes_per_push == 0 || a.pull_limit == 0 || a.devices_per_handset == 0 {
                bail!(
                    "--changes-per-push, --pull-limit and --devices-per-handset must be at least 1"
                );
            }
            let cfg = RunConfig {
                url: a.server.url.trim_end_matches('/').to_string(),
                admin_token: a.server.admin_token,
                handsets: a.handsets,
                devices_per_handset: a.devices_per_handset,
                users: a.users,
                duration: seconds("duration", a.duration)?,
                warmup: seconds("warmup", a.warmup)?,
                rate: a.rate,
                mix: Mix {
                    push_share: a.push_share,
                    long_poll_share: a.long_poll_share,
                    long_poll_wait: a.long_poll_wait.min(60),
                    changes_per_push: a.changes_per_push,
                    kinds: a.kinds,
                    patch_share: a.patch_share,
                    delete_share: a.delete_share,
                    stale_share: a.stale_share,
                    retry_share: a.retry_share,
                    doc_bytes: a.doc_bytes,
                    pull_limit: a.pull_limit,
                    items_per_handset: a.items_per_handset,
                },
                seed: a.seed,
                label: a.label,
                timeout: seconds("timeout", a.timeout)?,
                sample_every: a
                    .sample_every
                    .map(|s| seconds("sample-every", s))
                    .transpose()?,
            };
            if cfg.sample_every.is_some_and(|d| d < Duration::from_secs(1)) {
                bail!("--sample-every must be at least 1 second");
            }
            if cfg.mix.patch_share + cfg.mix.delete_share > 1.0 {
                bail!("--patch-share plus --delete-share exceeds 1");
            }
            let report = rt.block_on(http::run(cfg))?;
            write_report(&a.report, &report.table(), &report)
        }
        Command::Baseline(a) => {
            let cfg = BaselineConfig {
                pg: a.pg,
                dir: a.dir.unwrap_or_else(std::env::temp_dir),
                events: a.events,
                users: a.users,
                batch: a.batch,
                clients: a.clients,
                sweep_clients: a.sweep_clients,
                reader_events: a.reader_events,
                reads: a.reads,
                doc_bytes: a.doc_bytes,
                commit_window: Duration::from_millis(a.commit_window_ms),
                shards: a.shards,
                seed: a.seed,
            };
            let report = rt.block_on(baseline::run(cfg))?;
            write_report(&a.report, &report.table(), &report)
        }
        Command::Cost(a) => rt.block_on(cost_run(a)),
        Command::Scale(a) => {
            let bin = match a.server_bin {
                Some(b) => b,
                None => std::env::current_exe()
                    .context("finding this program")?
                    .with_file_name("keepsake"),
            };
            if a.dir.join("data").exists() {
                bail!(
                    "{} holds a store already: a scale run fills a new one",
                    a.dir.join("data").display()
                );
            }
            let cfg = ScaleConfig {
                bin,
                dir: a.dir,
                users: a.users,
                items: a.items,
                steps: a.steps,
                work_users: a.work_users,
                patches: a.patches,
                checkpoint_rounds: a.checkpoint_rounds,
                cold_samples: a.cold_samples,
                restore_users: a.restore_users,
                register_all: a.register_all,
                view_memory_mb: a.view_memory_mb,
                doc_bytes: a.doc_bytes,
                seed: a.seed,
            };
            let report = rt.block_on(scale::run(cfg))?;
            write_report(&a.report, &report.table(), &report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed_and_parses_its_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "keepsake-loadgen",
            "http",
            "--admin-token",
            "t",
            "--kinds",
            "note,task",
        ])
        .expect("parses");
        let Command::Http(a) = cli.command else {
            panic!("http")
        };
        assert_eq!(a.kinds, vec![Kind::Note, Kind::Task]);
        assert_eq!(a.doc_bytes, (300, 700));
        assert!(
            Cli::try_parse_from([
                "keepsake-loadgen",
                "http",
                "--admin-token",
                "t",
                "--kinds",
                "pony"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "keepsake-loadgen",
                "http",
                "--admin-token",
                "t",
                "--kinds",
                "device"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "keepsake-loadgen",
                "http",
                "--admin-token",
                "t",
                "--push-share",
                "1.5"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["keepsake-loadgen", "baseline", "--doc-bytes", "700-300"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["keepsake-loadgen", "baseline"]).is_ok());
        let cli = Cli::try_parse_from(["keepsake-loadgen", "cost", "--admin-token", "t"])
            .expect("cost parses with its defaults");
        let Command::Cost(a) = cli.command else {
            panic!("cost")
        };
        assert_eq!(
            (
                a.model_users,
                a.pushes_per_day,
                a.pulls_per_day,
                a.changes_per_push
            ),
            (1_000_000.0, 10.0, 50.0, 3)
        );
        let cli = Cli::try_parse_from(["keepsake-loadgen", "scale", "--dir", "/tmp/x"])
            .expect("scale parses with its defaults");
        let Command::Scale(a) = cli.command else {
            panic!("scale")
        };
        assert_eq!(
            (
                a.users,
                a.items,
                a.steps,
                a.work_users,
                a.patches,
                a.restore_users
            ),
            (1_000_000, 20, vec![10, 50, 100], 1_000, 20, 10_000)
        );
    }
}
