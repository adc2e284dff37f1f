//! `keepsake-loadgen scale` (issue 15, item 5): does keeping the log cost the new work, or
//! everything the log holds? Fills a store in steps (by default 10%, 50% and 100% of
//! 1,000,000 users × 20 contacts of 300-700 bytes) and after each step measures, through a
//! real server it starts and restarts itself, the same new work every time (1,000 users × 20
//! patches):
//!
//! - the checkpoint that new work costs (seconds and bytes, from the server's counters);
//! - restart to ready (SIGTERM, start, `/readyz`), and resident memory after it and at the end;
//! - a cold user's first pull (no `since`), p50 / p99, one request at a time;
//! - an as-of read (`GET /admin/v1/users/{u}/items?as_of=`) to the moment before the new work,
//!   p50 / p99, of users unchanged since, and of users of the new work (changed since: the
//!   checkpoint after the work cannot serve them);
//! - a fleet restore of `restore_users` users to the moment before the new work (users/s);
//! - log bytes per event, from a listing of the store.
//!
//! The fill goes through the log library while the server is stopped (`fill`); every device is
//! registered through the server. Answers are checked, not only timed: a pull or an as-of read
//! that does not hold the user's items fails the run.

pub mod fill;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::baseline::percentile;
use crate::cost::{self, Kept};
use crate::stats;
use crate::workload::Documents;
use server::{ServerProcess, ServerSpec};

/// What a scale run does.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleConfig {
    /// The `keepsake` binary the run starts.
    pub bin: PathBuf,
    /// Where the store (`<dir>/data`) and the server's log (`<dir>/server.log`) go.
    pub dir: PathBuf,
    /// Users at 100% of the fill.
    pub users: u64,
    /// Contacts per user.
    pub items: u64,
    /// The fill's steps, in percent of `users`, ascending.
    pub steps: Vec<u32>,
    /// Users of the new work after each step.
    pub work_users: u64,
    /// Patches per user of the new work (one push).
    pub patches: u64,
    /// Times the new work and its checkpoint are repeated in each step: the step's checkpoint
    /// figures are the median round's (one checkpoint's time varies by 1.5x and more between
    /// runs on a busy machine; the rounds are in the report).
    pub checkpoint_rounds: u32,
    /// Users whose first pull is timed, and as many whose as-of read is.
    pub cold_samples: u64,
    /// Users of the fleet restore after each step.
    pub restore_users: u64,
    /// Register a device for every filled user through the server (else only for the users
    /// the measurements use).
    pub register_all: bool,
    /// The server's view budget (`KEEPSAKE_VIEW_MEMORY_MB`), which the memory target is over.
    pub view_memory_mb: u64,
    /// Document sizes, bytes.
    pub doc_bytes: (usize, usize),
    /// Seed of the documents and change ids.
    pub seed: u64,
}

impl ScaleConfig {
    /// Refuses what cannot be measured.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.users == 0 || self.items == 0 || self.patches == 0 || self.checkpoint_rounds == 0 {
            bail!("--users, --items, --patches and --checkpoint-rounds must be at least 1");
        }
        if self.steps.is_empty()
            || self.steps.windows(2).any(|w| w[0] >= w[1])
            || self.steps.iter().any(|s| *s == 0 || *s > 100)
        {
            bail!("--steps must be ascending percentages in 1..=100, e.g. 10,50,100");
        }
        let first = self.users * u64::from(self.steps[0]) / 100;
        let needed = self.work_users + 2 * self.cold_samples;
        if first < needed.max(self.restore_users) {
            bail!(
                "the first step fills {first} users: fewer than the {needed} the measurements \
                 name apart (work users + 2 × cold samples) or the {} restored",
                self.restore_users
            );
        }
        Ok(())
    }
}

/// The figures of one step.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepReport {
    /// Percent of the fill.
    pub percent: u32,
    /// Users in the store.
    pub users: u64,
    /// Events appended to the log so far (fill, device registrations, new work, restores).
    pub events: u64,
    /// The step's fill through the log library.
    pub fill: fill::Filled,
    /// Devices registered through the server in this step, and the seconds it took.
    pub registered: u64,
    /// See `registered`.
    pub register_secs: f64,
    /// Start to ready after the fill (the checkpoint covers it: a short tail).
    pub ready_after_fill_secs: f64,
    /// Checkpoint seconds and bytes written for the new work (the server's counters, around
    /// the work and a `POST /admin/v1/compact`): the median of the step's rounds.
    pub checkpoint_secs: f64,
    /// See `checkpoint_secs`.
    pub checkpoint_bytes: u64,
    /// The whole `POST /admin/v1/compact` after the new work (checkpoint and compaction),
    /// median of the rounds.
    pub compact_secs: f64,
    /// Each round's checkpoint seconds, bytes written and whole compact seconds, in order.
    pub checkpoint_rounds: Vec<CheckpointRound>,
    /// SIGTERM to exit, then start to ready.
    pub stop_secs: f64,
    /// See `stop_secs`.
    pub restart_secs: f64,
    /// Resident memory once ready after the restart, and after the step's reads and restore.
    pub rss_ready_bytes: u64,
    /// See `rss_ready_bytes`.
    pub rss_end_bytes: u64,
    /// At the end, what the server's allocator says is allocated (live data) and resident
    /// (`keepsake_allocator_*`): resident far above allocated is memory freed but not yet
    /// given back, not memory held.
    pub allocated_end_bytes: u64,
    /// See `allocated_end_bytes`.
    pub allocator_resident_end_bytes: u64,
    /// Resident memory after 15 s idle at the end (the allocator gives freed pages back on a
    /// timer of ~10 s).
    pub rss_idle_bytes: u64,
    /// The view's bytes at the end (`keepsake_view_bytes`).
    pub view_bytes_end: u64,
    /// The bytes of the indexes beside the users at the end (`keepsake_view_index_bytes`: tail
    /// indexes, the opened manifests, part and run footers), outside the view's budget.
    pub view_index_bytes_end: u64,
    /// Of those, the parts' and runs' footers kept (`keepsake_part_footer_bytes`, bounded by
    /// `--footer-memory-mb`).
    pub part_footer_bytes_end: u64,
    /// Loads since the step's server started that read their part's footer from the store
    /// (`keepsake_part_footer_misses_total`): more than the parts once footers are let go.
    pub part_footer_misses_end: u64,
    /// A cold user's first pull, ms.
    pub cold_pull_p50_ms: f64,
    /// See `cold_pull_p50_ms`.
    pub cold_pull_p99_ms: f64,
    /// An as-of read of a user unchanged since the moment, ms.
    pub as_of_p50_ms: f64,
    /// See `as_of_p50_ms`.
    pub as_of_p99_ms: f64,
    /// An as-of read of a user of the new work, changed since the moment: it cannot start
    /// from the checkpoint written after the work, so it reads an older one and the log after
    /// it. ms.
    pub as_of_changed_p50_ms: f64,
    /// See `as_of_changed_p50_ms`.
    pub as_of_changed_p99_ms: f64,
    /// The fleet restore: users, seconds, users per second, changes written.
    pub restore_users: u64,
    /// See `restore_users`.
    pub restore_secs: f64,
    /// See `restore_users`.
    pub restore_users_per_s: f64,
    /// See `restore_users`.
    pub restore_changes: u64,
    /// What the store holds at the end of the step.
    pub kept: Kept,
    /// Log bytes (segments and history objects) per event.
    pub log_bytes_per_event: f64,
}

/// One round of the new work's checkpoint.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckpointRound {
    /// Checkpoint seconds (the server's counter).
    pub secs: f64,
    /// Checkpoint bytes written (the server's counter).
    pub bytes: u64,
    /// The whole `POST /admin/v1/compact`.
    pub compact_secs: f64,
}

/// The median of `values` (the lower middle of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// What was run.
    pub config: ScaleConfig,
    /// One row per step.
    pub steps: Vec<StepReport>,
}

impl ScaleReport {
    /// The table, then each target against its measurement.
    pub fn table(&self) -> String {
        let mut t = String::from(
            "users      events      fill_s  register_s  ready_s  ckpt_s  ckpt_MB  compact_s  \
             restart_s  RSS_ready_MiB  RSS_end_MiB  alloc_end_MiB  RSS_idle_MiB  view_MiB  \
             index_MiB  footers_MiB/misses  pull_p50/p99_ms  as_of_p50/p99_ms  as_of_changed_p50/p99_ms  restore_users/s  \
             log_B/event\n",
        );
        for s in &self.steps {
            t.push_str(&format!(
                "{:<9}  {:>10}  {:>6.0}  {:>10.0}  {:>7.2}  {:>6.2}  {:>7.1}  {:>9.1}  {:>9.2}  \
                 {:>13}  {:>11}  {:>13}  {:>12}  {:>8}  {:>9}  {:>18}  {:>15}  {:>16}  {:>24}  {:>15.0}  \
                 {:>11.0}\n",
                s.users,
                s.events,
                s.fill.push_secs + s.fill.settle_secs,
                s.register_secs,
                s.ready_after_fill_secs,
                s.checkpoint_secs,
                s.checkpoint_bytes as f64 / 1e6,
                s.compact_secs,
                s.restart_secs,
                s.rss_ready_bytes >> 20,
                s.rss_end_bytes >> 20,
                s.allocated_end_bytes >> 20,
                s.rss_idle_bytes >> 20,
                s.view_bytes_end >> 20,
                s.view_index_bytes_end >> 20,
                format!(
                    "{:.1}/{}",
                    s.part_footer_bytes_end as f64 / f64::from(1 << 20),
                    s.part_footer_misses_end
                ),
                format!("{:.1}/{:.1}", s.cold_pull_p50_ms, s.cold_pull_p99_ms),
                format!("{:.1}/{:.1}", s.as_of_p50_ms, s.as_of_p99_ms),
                format!(
                    "{:.1}/{:.1}",
                    s.as_of_changed_p50_ms, s.as_of_changed_p99_ms
                ),
                s.restore_users_per_s,
                s.log_bytes_per_event,
            ));
        }
        for line in self.targets() {
            t.push_str(&line);
            t.push('\n');
        }
        t
    }

    /// The issue's targets, each with the run's figure and whether it was met.
    pub fn targets(&self) -> Vec<String> {
        let (Some(first), Some(last)) = (self.steps.first(), self.steps.last()) else {
            return Vec::new();
        };
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        let ratio = last.checkpoint_secs / first.checkpoint_secs.max(1e-6);
        let budget = (self.config.view_memory_mb << 20) + (256 << 20);
        let rss = self
            .steps
            .iter()
            .map(|s| s.rss_ready_bytes.max(s.rss_end_bytes))
            .max()
            .unwrap_or(0);
        let rounds = |s: &StepReport| {
            s.checkpoint_rounds
                .iter()
                .map(|r| format!("{:.2}", r.secs))
                .collect::<Vec<_>>()
                .join("/")
        };
        vec![
            format!(
                "target: checkpoint of the same new work at {} users / at {} users = {ratio:.2} (<= 1.5; \
                 medians of rounds {} s and {} s): {}",
                last.users,
                first.users,
                rounds(last),
                rounds(first),
                met(ratio <= 1.5)
            ),
            format!(
                "target: restart to ready at {} users {:.2} s (<= 10): {}",
                last.users,
                last.restart_secs,
                met(last.restart_secs <= 10.0)
            ),
            format!(
                "target: resident memory at most {} MiB (view budget {} MiB + 256): {}",
                rss >> 20,
                self.config.view_memory_mb,
                met(rss <= budget)
            ),
            format!(
                "target: cold first pull p99 {:.1} ms, as-of read p99 {:.1} ms (of a user changed \
                 since: {:.1} ms) at {} users (<= 50 each): {}",
                last.cold_pull_p99_ms,
                last.as_of_p99_ms,
                last.as_of_changed_p99_ms,
                last.users,
                met(last.cold_pull_p99_ms <= 50.0
                    && last.as_of_p99_ms <= 50.0
                    && last.as_of_changed_p99_ms <= 50.0)
            ),
        ]
    }
}

/// Users the measurements of a step name, by number, apart from each other.
struct Sampled {
    work: Vec<u64>,
    pulls: Vec<u64>,
    as_of: Vec<u64>,
    restore: Vec<u64>,
}

/// `n` user numbers spread evenly over `0..filled`, shifted by `offset`, skipping `taken`.
fn spread(
    n: u64,
    filled: u64,
    offset: u64,
    taken: &mut std::collections::HashSet<u64>,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(n as usize);
    let mut k = 0u64;
    while (out.len() as u64) < n && k < filled.saturating_mul(2) {
        let u = (k.wrapping_mul(filled) / n.max(1) + offset + k / n.max(1)) % filled.max(1);
        if taken.insert(u) {
            out.push(u);
        }
        k += 1;
    }
    out
}

fn sample(cfg: &ScaleConfig, filled: u64, step: u64) -> Sampled {
    let mut taken = std::collections::HashSet::new();
    // A different set at each step: a user touched by an earlier step is no longer cold.
    let work = spread(cfg.work_users, filled, step * 7 + 1, &mut taken);
    let pulls = spread(cfg.cold_samples, filled, step * 7 + 3, &mut taken);
    let as_of = spread(cfg.cold_samples, filled, step * 7 + 5, &mut taken);
    // The restore includes the work's users (so it writes), and others that need nothing.
    let mut restore: Vec<u64> = work.clone();
    let mut others = taken.clone();
    restore.extend(spread(
        cfg.restore_users.saturating_sub(work.len() as u64),
        filled,
        step * 7 + 6,
        &mut others,
    ));
    Sampled {
        work,
        pulls,
        as_of,
        restore,
    }
}

#[derive(Deserialize)]
struct Registered {
    token: String,
}

#[derive(Deserialize)]
struct Started {
    restore_id: String,
}

#[derive(Deserialize)]
struct Progress {
    state: String,
    #[serde(default)]
    users_done: u64,
    #[serde(default)]
    changes_written: u64,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct PushAnswer {
    results: Vec<PushResult>,
}

#[derive(Deserialize)]
struct PushResult {
    status: String,
}

/// The server of a step and what talks to it.
struct Session {
    http: reqwest::Client,
    url: String,
    admin: String,
}

impl Session {
    /// Sends a request and reads its JSON answer; anything but `expect` is an error that
    /// says what was asked and what came back.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        expect: reqwest::StatusCode,
    ) -> anyhow::Result<T> {
        let resp = req
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .with_context(|| what.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| what.to_string())?;
        if status != expect {
            bail!(
                "{what}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("{what}: the answer"))
    }

    /// Times one read whose answer lists entries under `field`: they must hold all `items`
    /// contacts of the user (a fast answer that lost data is not a measurement).
    async fn timed_read(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        field: &str,
        items: u64,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let answer: serde_json::Value = self.call(req, what, reqwest::StatusCode::OK).await?;
        let took = started.elapsed();
        let held = answer
            .get(field)
            .and_then(serde_json::Value::as_array)
            .map_or(0, |entries| contacts(entries));
        if held != items {
            bail!("{what} holds {held} contacts, not {items}");
        }
        Ok(took)
    }

    /// One as-of read to moment `at` of each of `users`, one at a time, each answer checked to
    /// hold all `items` contacts: the times, sorted.
    async fn as_of_reads(
        &self,
        users: &[u64],
        at: &str,
        which: &str,
        items: u64,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut reads = Vec::with_capacity(users.len());
        for u in users {
            let user = fill::user(*u).0;
            reads.push(
                self.timed_read(
                    self.http
                        .get(format!(
                            "{}/admin/v1/users/{user}/items?as_of={at}",
                            self.url
                        ))
                        .bearer_auth(&self.admin),
                    &format!("an as-of read of user {u}{which}"),
                    "items",
                    items,
                )
                .await?,
            );
        }
        reads.sort();
        Ok(reads)
    }

    async fn register(&self, u: u64) -> anyhow::Result<String> {
        let user = fill::user(u).0;
        let r: Registered = self
            .call(
                self.http
                    .post(format!("{}/admin/v1/users/{user}/devices", self.url))
                    .bearer_auth(&self.admin)
                    .header("content-type", "application/json")
                    .body(r#"{"name":"scale benchmark"}"#),
                &format!("registering a device of user {u}"),
                reqwest::StatusCode::CREATED,
            )
            .await?;
        Ok(r.token)
    }

    /// Registers a device for each user, 32 at a time; their tokens in the same order.
    async fn register_all(&self, users: &[u64]) -> anyhow::Result<Vec<String>> {
        futures::stream::iter(users.iter().map(|u| self.register(*u)))
            .buffered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn compact(&self) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .call(
                self.http
                    .post(format!("{}/admin/v1/compact", self.url))
                    .bearer_auth(&self.admin),
                "POST /admin/v1/compact",
                reqwest::StatusCode::OK,
            )
            .await?;
        Ok(())
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .context("GET /metrics")?;
        resp.text().await.context("GET /metrics")
    }

    /// One push of `patches` patches to user `u`'s items; every change must apply.
    async fn patch(
        &self,
        token: &str,
        u: u64,
        cfg: &ScaleConfig,
        label: &str,
        rng: &mut keepsake_model::fixtures::Rng,
    ) -> anyhow::Result<()> {
        use std::fmt::Write;
        let mut body = String::from(r#"{"changes":["#);
        for p in 0..cfg.patches {
            if p > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                r#"{{"change_id":"{}","kind":"contact","item_id":"{}","op":"patch","document":{{"x-scale-note":"{label} patch {p}"}}}}"#,
                rng.uuid(),
                fill::item(u, p % cfg.items).0
            );
        }
        body.push_str("]}");
        let answer: PushAnswer = self
            .call(
                self.http
                    .post(format!("{}/v1/changes", self.url))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body),
                &format!("pushing the new work of user {u}"),
                reqwest::StatusCode::OK,
            )
            .await?;
        if let Some(r) = answer.results.iter().find(|r| r.status != "applied") {
            bail!("a patch of user {u} was {}, not applied", r.status);
        }
        Ok(())
    }
}

/// Contacts among the entries of an answer (a pull's changes, an as-of read's items).
fn contacts(entries: &[serde_json::Value]) -> u64 {
    entries
        .iter()
        .filter(|c| c.get("kind").and_then(|k| k.as_str()) == Some("contact"))
        .count() as u64
}

fn counter(text: &str, name: &str) -> f64 {
    stats::metric(text, name).unwrap_or(0.0)
}

/// Runs the scale benchmark; progress on stderr.
pub async fn run(cfg: ScaleConfig) -> anyhow::Result<ScaleReport> {
    cfg.check()?;
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let data = cfg.dir.join("data");
    let store_url = data.display().to_string();
    let spec = ServerSpec {
        bin: cfg.bin.clone(),
        store: store_url.clone(),
        admin_token: format!(
            "scale-operator-{}",
            keepsake_model::IdGenerator::random(&keepsake_model::RandomIds)
        ),
        log: cfg.dir.join("server.log"),
        ready_within: Duration::from_secs(600),
        env: vec![(
            "KEEPSAKE_VIEW_MEMORY_MB".into(),
            cfg.view_memory_mb.to_string(),
        )],
    };
    let http = reqwest::Client::new();
    let store = keepsake_store::open_store(&store_url)
        .with_context(|| format!("opening the store {store_url}"))?;
    // The server makes the store (its descriptor, its shard count) before the fill writes in it.
    ServerProcess::start(&spec, &http)
        .await?
        .stop(Duration::from_secs(120))
        .await?;
    let docs = Arc::new(Documents::new(cfg.seed, 4096, cfg.doc_bytes));
    let mut rng = keepsake_model::fixtures::Rng::new(cfg.seed ^ 0x5ca1_e000);
    let mut report = ScaleReport {
        config: cfg.clone(),
        steps: Vec::new(),
    };
    let (mut filled, mut events) = (0u64, 0u64);
    for (round, &percent) in (0u64..).zip(&cfg.steps) {
        let target = cfg.users * u64::from(percent) / 100;
        let mut step = StepReport {
            percent,
            users: target,
            ..StepReport::default()
        };
        eprintln!("step {percent}%: filling users {filled}..{target}");
        step.fill =
            fill::fill(store.inner.clone(), filled, target, cfg.items, docs.clone()).await?;
        events += step.fill.events;

        let server = ServerProcess::start(&spec, &http).await?;
        step.ready_after_fill_secs = server.ready_after.as_secs_f64();
        let s = Session {
            http: http.clone(),
            url: server.url.clone(),
            admin: spec.admin_token.clone(),
        };
        let sampled = sample(&cfg, target, round);
        let registering = Instant::now();
        if cfg.register_all {
            eprintln!("step {percent}%: registering a device for users {filled}..{target}");
            let users: Vec<u64> = (filled..target).collect();
            for chunk in users.chunks(10_000) {
                s.register_all(chunk).await?;
            }
            step.registered += target - filled;
        }
        let work_tokens = s.register_all(&sampled.work).await?;
        let pull_tokens = s.register_all(&sampled.pulls).await?;
        step.registered += (work_tokens.len() + pull_tokens.len()) as u64;
        step.register_secs = registering.elapsed().as_secs_f64();
        events += step.registered;
        filled = target;
        // Settled: what comes next is the new work only.
        s.compact().await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before_work = keepsake_model::Clock::now(&keepsake_model::SystemClock);
        tokio::time::sleep(Duration::from_millis(1100)).await;

        for r in 0..cfg.checkpoint_rounds {
            eprintln!(
                "step {percent}%: new work ({} users × {} patches), round {} of {}",
                cfg.work_users,
                cfg.patches,
                r + 1,
                cfg.checkpoint_rounds
            );
            let m0 = s.metrics().await?;
            let label = format!("step {round} round {r}");
            for (u, token) in sampled.work.iter().zip(&work_tokens) {
                s.patch(token, *u, &cfg, &label, &mut rng).await?;
            }
            events += sampled.work.len() as u64 * cfg.patches;
            let compacting = Instant::now();
            s.compact().await?;
            let compact_secs = compacting.elapsed().as_secs_f64();
            let m1 = s.metrics().await?;
            let delta = |name: &str| counter(&m1, name) - counter(&m0, name);
            step.checkpoint_rounds.push(CheckpointRound {
                secs: delta("keepsake_checkpoint_microseconds_total") / 1e6,
                bytes: delta("keepsake_checkpoint_written_bytes_total") as u64,
                compact_secs,
            });
        }
        let rounds = &step.checkpoint_rounds;
        step.checkpoint_secs = median(rounds.iter().map(|r| r.secs).collect());
        step.checkpoint_bytes = median(rounds.iter().map(|r| r.bytes as f64).collect()) as u64;
        step.compact_secs = median(rounds.iter().map(|r| r.compact_secs).collect());

        eprintln!("step {percent}%: restart");
        step.stop_secs = server.stop(Duration::from_secs(300)).await?.as_secs_f64();
        let server = ServerProcess::start(&spec, &http).await?;
        step.restart_secs = server.ready_after.as_secs_f64();
        step.rss_ready_bytes = server.resident_bytes().unwrap_or(0);
        let s = Session {
            url: server.url.clone(),
            ..s
        };

        eprintln!("step {percent}%: cold pulls and as-of reads");
        let mut pulls = Vec::new();
        for (u, token) in sampled.pulls.iter().zip(&pull_tokens) {
            pulls.push(
                s.timed_read(
                    s.http
                        .get(format!("{}/v1/changes?limit=1000", s.url))
                        .bearer_auth(token),
                    &format!("the first pull of user {u}"),
                    "changes",
                    cfg.items,
                )
                .await?,
            );
        }
        pulls.sort();
        (step.cold_pull_p50_ms, step.cold_pull_p99_ms) =
            (percentile(&pulls, 0.5), percentile(&pulls, 0.99));
        let at = before_work.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let reads = s.as_of_reads(&sampled.as_of, &at, "", cfg.items).await?;
        (step.as_of_p50_ms, step.as_of_p99_ms) =
            (percentile(&reads, 0.5), percentile(&reads, 0.99));
        // The same moment for users of the new work: their newest checkpoint is after it.
        let changed: Vec<u64> = sampled
            .work
            .iter()
            .take(cfg.cold_samples as usize)
            .copied()
            .collect();
        let reads = s
            .as_of_reads(&changed, &at, ", changed since", cfg.items)
            .await?;
        (step.as_of_changed_p50_ms, step.as_of_changed_p99_ms) =
            (percentile(&reads, 0.5), percentile(&reads, 0.99));

        eprintln!(
            "step {percent}%: fleet restore of {} users",
            sampled.restore.len()
        );
        let users: Vec<String> = sampled
            .restore
            .iter()
            .map(|u| fill::user(*u).0.to_string())
            .collect();
        let body = serde_json::to_string(&serde_json::Map::from_iter([
            ("as_of".to_string(), serde_json::Value::from(at.clone())),
            ("users".to_string(), serde_json::Value::from(users)),
            (
                "reason".to_string(),
                serde_json::Value::from("scale benchmark"),
            ),
        ]))?;
        let restoring = Instant::now();
        let started: Started = s
            .call(
                s.http
                    .post(format!("{}/admin/v1/restores", s.url))
                    .bearer_auth(&s.admin)
                    .header("content-type", "application/json")
                    .body(body),
                "starting a fleet restore",
                reqwest::StatusCode::ACCEPTED,
            )
            .await?;
        let progress = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let p: Progress = s
                .call(
                    s.http
                        .get(format!(
                            "{}/admin/v1/restores/{}",
                            s.url, started.restore_id
                        ))
                        .bearer_auth(&s.admin),
                    "the fleet restore's progress",
                    reqwest::StatusCode::OK,
                )
                .await?;
            match p.state.as_str() {
                "done" => break p,
                "failed" => bail!("the fleet restore failed: {}", p.error.unwrap_or_default()),
                _ => {}
            }
        };
        step.restore_secs = restoring.elapsed().as_secs_f64();
        step.restore_users = progress.users_done;
        step.restore_users_per_s = progress.users_done as f64 / step.restore_secs.max(1e-9);
        step.restore_changes = progress.changes_written;
        if progress.changes_written < sampled.work.len() as u64 * cfg.patches.min(cfg.items) {
            bail!(
                "the fleet restore wrote {} changes: fewer than the new work it undoes",
                progress.changes_written
            );
        }
        events += progress.changes_written;
        step.rss_end_bytes = server.resident_bytes().unwrap_or(0);
        let end = s.metrics().await?;
        step.view_bytes_end = counter(&end, "keepsake_view_bytes") as u64;
        step.view_index_bytes_end = counter(&end, "keepsake_view_index_bytes") as u64;
        step.part_footer_bytes_end = counter(&end, "keepsake_part_footer_bytes") as u64;
        step.part_footer_misses_end = counter(&end, "keepsake_part_footer_misses_total") as u64;
        step.allocated_end_bytes = counter(&end, "keepsake_allocator_allocated_bytes") as u64;
        step.allocator_resident_end_bytes =
            counter(&end, "keepsake_allocator_resident_bytes") as u64;
        tokio::time::sleep(Duration::from_secs(15)).await;
        step.rss_idle_bytes = server.resident_bytes().unwrap_or(0);
        server.stop(Duration::from_secs(300)).await?;

        step.events = events;
        step.kept = cost::kept(&store).await?;
        step.log_bytes_per_event =
            (step.kept.segments + step.kept.history) as f64 / events.max(1) as f64;
        eprintln!("step {percent}%: done");
        report.steps.push(step);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ScaleConfig {
        ScaleConfig {
            bin: PathBuf::from("keepsake"),
            dir: PathBuf::from("/tmp"),
            users: 1_000_000,
            items: 20,
            steps: vec![10, 50, 100],
            work_users: 1000,
            patches: 20,
            checkpoint_rounds: 3,
            cold_samples: 200,
            restore_users: 10_000,
            register_all: true,
            view_memory_mb: 1024,
            doc_bytes: (300, 700),
            seed: 1,
        }
    }

    #[test]
    fn the_sampled_users_are_filled_and_apart() {
        for (filled, step) in [(100_000, 0), (500_000, 1), (2_000, 2)] {
            let c = ScaleConfig {
                restore_users: 1_500,
                ..cfg()
            };
            let s = sample(&c, filled, step);
            assert_eq!(s.work.len(), 1000);
            assert_eq!(s.pulls.len(), 200);
            assert_eq!(s.as_of.len(), 200);
            assert_eq!(s.restore.len(), 1_500);
            let mut all = std::collections::HashSet::new();
            for u in s.work.iter().chain(&s.pulls).chain(&s.as_of) {
                assert!(*u < filled);
                assert!(all.insert(*u), "user {u} sampled twice");
            }
            let restore: std::collections::HashSet<_> = s.restore.iter().collect();
            assert_eq!(restore.len(), s.restore.len());
            assert!(s.work.iter().all(|u| restore.contains(u)));
            assert!(s.pulls.iter().chain(&s.as_of).all(|u| !restore.contains(u)));
        }
    }

    #[test]
    fn a_run_that_cannot_be_measured_is_refused() {
        assert!(cfg().check().is_ok());
        for bad in [
            ScaleConfig {
                steps: vec![50, 10],
                ..cfg()
            },
            ScaleConfig {
                steps: vec![],
                ..cfg()
            },
            ScaleConfig {
                steps: vec![10, 101],
                ..cfg()
            },
            ScaleConfig { items: 0, ..cfg() },
            ScaleConfig {
                checkpoint_rounds: 0,
                ..cfg()
            },
            ScaleConfig {
                users: 1_000,
                ..cfg()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(vec![0.9, 0.2, 0.3]), 0.3);
        assert_eq!(median(vec![0.4, 0.1]), 0.1);
        assert_eq!(median(vec![0.5]), 0.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn the_table_says_which_targets_were_met() {
        let step = |users, ckpt, restart, rss| StepReport {
            users,
            checkpoint_secs: ckpt,
            restart_secs: restart,
            rss_ready_bytes: rss,
            cold_pull_p99_ms: 12.0,
            as_of_p99_ms: 40.0,
            as_of_changed_p99_ms: 60.0,
            ..StepReport::default()
        };
        let report = ScaleReport {
            config: cfg(),
            steps: vec![
                step(100_000, 2.0, 1.0, 900 << 20),
                step(1_000_000, 2.9, 11.0, 1200 << 20),
            ],
        };
        let t = report.targets();
        assert!(t[0].contains("1.45") && t[0].ends_with("met"), "{}", t[0]);
        assert!(t[1].ends_with("MISSED"), "{}", t[1]);
        assert!(
            t[2].contains("1200 MiB") && t[2].ends_with("met"),
            "{}",
            t[2]
        );
        assert!(
            t[3].ends_with("MISSED"),
            "as-of p99 of a changed user 60 ms: {}",
            t[3]
        );
        assert!(report.table().lines().count() >= 7);
    }
}
