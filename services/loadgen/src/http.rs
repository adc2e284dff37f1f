//! Simulated handsets against a running server, over HTTP.
//!
//! Each handset is a device of one of `users` users (handset `h` belongs to user `h % users`),
//! registered through the admin API at start; with `devices_per_handset` K above 1, a handset
//! stands for K devices of K users (device `d` of all `handsets * K` belongs to user
//! `d % users`) and sends each request as the next of them in turn, so a run can touch many
//! more users than it has connections. Closed loop: every handset sends its next request
//! as soon as the previous one is answered. Open loop: requests are scheduled at a fixed total
//! rate, round robin over handsets, and latency counts from the scheduled moment, so a slow
//! server is not hidden by a client that waits for it (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use keepsake_model::fixtures::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::intervals::{self, Interval};
use crate::stats::{OpSummary, ServerCounters, ServerSummary, Stats};
use crate::workload::{Action, Documents, Generator, Mix, Pulled, PushOutcome};

/// One load run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Operator token, to register the handsets' devices.
    pub admin_token: String,
    /// Simulated handsets (one connection-pool slot each).
    pub handsets: usize,
    /// Devices each handset stands for, taking turns (1: a handset is one device).
    pub devices_per_handset: usize,
    /// Users they belong to.
    pub users: usize,
    /// Measured time.
    pub duration: Duration,
    /// Time before it, not measured (views warm, connections open).
    pub warmup: Duration,
    /// Open loop at this many requests per second; closed loop when `None`.
    pub rate: Option<f64>,
    /// What the handsets send.
    pub mix: Mix,
    /// Seed: the same seed gives the same users and the same requests.
    pub seed: u64,
    /// Name of the run in the report.
    pub label: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Read the server's committed events this often during the measured time, for the rate
    /// of each interval ([`crate::intervals`]).
    pub sample_every: Option<Duration>,
}

/// What a run measured; printed as a table and written as JSON.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Name of the run.
    pub label: String,
    /// Server URL.
    pub url: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Open loop: the scheduled requests per second.
    pub target_rate: Option<f64>,
    /// Handsets.
    pub handsets: usize,
    /// Devices each handset stands for.
    pub devices_per_handset: usize,
    /// Users.
    pub users: usize,
    /// Seconds measured.
    pub duration_s: f64,
    /// Seconds of warm-up before.
    pub warmup_s: f64,
    /// The mix.
    pub mix: Mix,
    /// Requests answered (any status).
    pub requests: u64,
    /// Per second.
    pub requests_per_s: f64,
    /// Changes in acknowledged pushes, per second.
    pub changes_per_s: f64,
    /// Changes in acknowledged pushes.
    pub changes_acked: u64,
    /// Per-change outcomes.
    pub outcomes: BTreeMap<String, u64>,
    /// Items received by pulls.
    pub items_pulled: u64,
    /// Retried pushes whose originally applied changes all came back `duplicate`.
    pub retries_ok: u64,
    /// Retried pushes where an originally applied change did not come back `duplicate`
    /// (a broken idempotency promise: must be 0).
    pub retries_broken: u64,
    /// Retried pushes whose original's answer was lost (a timeout): not judged.
    pub retries_unjudged: u64,
    /// Open loop: requests not sent because a handset's queue was full.
    pub dropped: u64,
    /// Latency per kind of request.
    pub ops: BTreeMap<String, OpSummary>,
    /// Errors by status and code.
    pub errors: BTreeMap<String, u64>,
    /// The server's own figures from `/metrics`.
    pub server: ServerSummary,
    /// With `sample_every`: the server's committed events per second in each interval.
    pub intervals: Vec<Interval>,
}

impl RunReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let mode = match self.target_rate {
            Some(r) => format!("open loop at {r:.0} requests/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            t,
            "{}: {} handsets of {} users, {mode}, {:.1} s measured after {:.0} s warm-up",
            self.label, self.handsets, self.users, self.duration_s, self.warmup_s
        );
        let _ = writeln!(
            t,
            "  requests/s {:>10.0}   changes/s {:>10.0}   items pulled/s {:>10.0}",
            self.requests_per_s,
            self.changes_per_s,
            self.items_pulled as f64 / self.duration_s.max(1e-9)
        );
        let _ = writeln!(
            t,
            "  {:<16} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "request", "count", "per s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (op, s) in &self.ops {
            let _ = writeln!(
                t,
                "  {op:<16} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                s.count, s.per_s, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
            );
        }
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(t, "  change outcomes: {}", outcomes.join(", "));
        if self.retries_ok + self.retries_broken + self.retries_unjudged > 0 {
            let _ = writeln!(
                t,
                "  retried pushes: {} answered duplicate for every change applied before, {} not (must be 0); {} not judged (the original's answer was lost)",
                self.retries_ok, self.retries_broken, self.retries_unjudged
            );
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            t,
            "  errors: {}",
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join(", ")
            }
        );
        if self.dropped > 0 {
            let _ = writeln!(t, "  not sent (client behind schedule): {}", self.dropped);
        }
        let s = &self.server;
        let _ = writeln!(
            t,
            "  server: {:.1} segment PUTs/s, {:.0} events/segment, {:.1} bytes/event, {:.0} events committed",
            s.segment_puts_per_s, s.events_per_segment, s.bytes_per_event, s.events_committed
        );
        if s.users_loaded_per_s > 0.0 || s.pulls_from_index_per_s > 0.0 {
            let share = s.users_loaded_per_s / self.requests_per_s.max(1e-9) * 100.0;
            let gets = s.read_gets_per_load().map_or_else(String::new, |g| {
                format!(", {g:.1} store GETs of reads a load")
            });
            let _ = writeln!(
                t,
                "  users loaded from the store: {:.1}/s ({share:.0}% of requests){gets}; pulls answered from the index: {:.1}/s",
                s.users_loaded_per_s, s.pulls_from_index_per_s
            );
        }
        if let Some((slowest, median, ratio)) = intervals::slowest_and_median(&self.intervals) {
            let each: Vec<String> = self
                .intervals
                .iter()
                .map(|i| format!("{:.0}", i.events_per_s))
                .collect();
            let _ = writeln!(
                t,
                "  server events/s per interval: {}\n  intervals {}: slowest {slowest:.0} events/s, median {median:.0}, slowest / median {ratio:.2}",
                each.join(" "),
                self.intervals.len()
            );
        }
        t
    }
}

#[derive(Deserialize)]
struct PushAnswer {
    results: Vec<PushOutcome>,
}

#[derive(Deserialize)]
struct PullAnswer {
    changes: Vec<Pulled>,
    token: String,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    code: String,
}

#[derive(Deserialize)]
struct Registered {
    token: String,
}

/// One device: its token, what it last pulled, and what it sends.
struct Device {
    token: String,
    since: Option<String>,
    generator: Generator,
}

/// A handset: one client connection, standing for its devices in turn.
struct Handset {
    devices: Vec<Device>,
    next: usize,
}

impl Handset {
    /// The device that sends the next request.
    fn device(&mut self) -> Option<&mut Device> {
        let n = self.devices.len();
        if n == 0 {
            return None;
        }
        let d = self.next % n;
        self.next = self.next.wrapping_add(1);
        self.devices.get_mut(d)
    }
}

/// The users of a seed: the same seed names the same users in every run.
pub fn user_ids(seed: u64, users: usize) -> Vec<Uuid> {
    let mut rng = Rng::new(seed ^ 0x005e_ed0f_05e4);
    (0..users).map(|_| rng.uuid()).collect()
}

async fn register(http: &reqwest::Client, cfg: &RunConfig) -> anyhow::Result<Vec<Handset>> {
    let users = user_ids(cfg.seed, cfg.users.max(1));
    let per = cfg.devices_per_handset.max(1);
    let devices = cfg.handsets.max(1).saturating_mul(per);
    let docs_cap = (50_000 / devices + 100).max(cfg.mix.items_per_handset.unwrap_or(0));
    let results: Vec<anyhow::Result<Device>> = futures::stream::iter(0..devices)
        .map(|h| {
            let user = users[h % users.len()];
            let url = format!("{}/admin/v1/users/{user}/devices", cfg.url);
            let http = http.clone();
            let admin = cfg.admin_token.clone();
            let seed = cfg.seed;
            async move {
                let resp = http
                    .post(&url)
                    .bearer_auth(admin)
                    .header("content-type", "application/json")
                    .body(format!("{{\"name\":\"loadgen handset {h}\"}}"))
                    .send()
                    .await
                    .with_context(|| format!("registering a device at {url}"))?;
                let status = resp.status();
                if !status.is_success() {
                    let body = resp.text().await.unwrap_or_default();
                    bail!("registering a device at {url}: {status}: {body}");
                }
                let r: Registered = resp
                    .json()
                    .await
                    .context("the device registration answer")?;
                Ok(Device {
                    token: r.token,
                    since: None,
                    generator: Generator::new(
                        seed.wrapping_mul(1_000_003).wrapping_add(h as u64),
                        docs_cap,
                    ),
                })
            }
        })
        .buffered(16)
        .collect()
        .await;
    let mut all: Vec<Device> = results.into_iter().collect::<anyhow::Result<_>>()?;
    // Handset h stands for devices h, h + handsets, h + 2 * handsets, ...
    let mut handsets: Vec<Handset> = (0..cfg.handsets.max(1))
        .map(|_| Handset {
            devices: Vec::with_capacity(per),
            next: 0,
        })
        .collect();
    for (i, d) in all.drain(..).enumerate() {
        if let Some(h) = handsets.get_mut(i % cfg.handsets.max(1)) {
            h.devices.push(d);
        }
    }
    Ok(handsets)
}

/// The server's counters now (`/metrics`), for a caller outside a run.
pub async fn server_counters(url: &str) -> ServerCounters {
    scrape(&reqwest::Client::new(), url).await
}

async fn scrape(http: &reqwest::Client, url: &str) -> ServerCounters {
    match http.get(format!("{url}/metrics")).send().await {
        Ok(r) => ServerCounters::parse(&r.text().await.unwrap_or_default()),
        Err(_) => ServerCounters::default(),
    }
}

/// What one request did, for the handset loop.
enum Done {
    Ok,
    /// The server asked to back off.
    Backoff,
}

async fn act(
    http: &reqwest::Client,
    url: &str,
    h: &mut Device,
    action: Action,
    stats: &mut Stats,
    started: Instant,
    record: bool,
) -> Done {
    match action {
        Action::Push(p) => {
            let op = if p.retry { "push (retry)" } else { "push" };
            let resp = http
                .post(format!("{url}/v1/changes"))
                .bearer_auth(&h.token)
                .header("content-type", "application/json")
                .body(p.body)
                .send()
                .await;
            let resp = match check(resp, stats, record).await {
                Some(r) => r,
                None => {
                    h.generator.lost(p.retry);
                    return Done::Backoff;
                }
            };
            let answer: Result<PushAnswer, _> = resp.json().await;
            let latency = started.elapsed();
            let Ok(answer) = answer else {
                if record {
                    stats.error("unreadable answer");
                }
                h.generator.lost(p.retry);
                return Done::Ok;
            };
            if record {
                stats.record(op, latency);
                stats.changes_acked += p.changes as u64;
                for o in &answer.results {
                    *stats.outcomes.entry(o.status.clone()).or_default() += 1;
                }
                if p.retry {
                    match h.generator.retry_answer_ok(&answer.results) {
                        Some(true) => stats.retries_ok += 1,
                        Some(false) => stats.retries_broken += 1,
                        // The original's answer was lost: not known whether it was applied.
                        None => stats.retries_unjudged += 1,
                    }
                }
            }
            h.generator.pushed(&answer.results, p.retry);
            Done::Ok
        }
        Action::Pull { wait, limit } => {
            let op = if wait > 0 { "long poll" } else { "pull" };
            let mut q = format!("{url}/v1/changes?limit={limit}");
            if let Some(since) = &h.since {
                q.push_str("&since=");
                q.push_str(since);
            }
            if wait > 0 {
                q.push_str(&format!("&wait={wait}"));
            }
            let resp = http.get(q).bearer_auth(&h.token).send().await;
            let resp = match check(resp, stats, record).await {
                Some(r) => r,
                None => {
                    return Done::Backoff;
                }
            };
            let answer: Result<PullAnswer, _> = resp.json().await;
            let latency = started.elapsed();
            match answer {
                Ok(a) => {
                    if record {
                        stats.record(op, latency);
                        stats.items_pulled += a.changes.len() as u64;
                    }
                    h.generator.pulled(&a.changes);
                    h.since = Some(a.token);
                }
                Err(_) if record => stats.error("unreadable answer"),
                Err(_) => {}
            }
            Done::Ok
        }
    }
}

/// Turns a non-2xx answer into a counted error (`None`).
async fn check(
    resp: Result<reqwest::Response, reqwest::Error>,
    stats: &mut Stats,
    record: bool,
) -> Option<reqwest::Response> {
    match resp {
        Ok(r) if r.status().is_success() => Some(r),
        Ok(r) => {
            let status = r.status().as_u16();
            let code = r
                .json::<Problem>()
                .await
                .map(|p| p.code)
                .unwrap_or_default();
            if record {
                stats.error(format!("{status} {code}"));
            }
            None
        }
        Err(e) => {
            if record {
                let kind = if e.is_timeout() {
                    "io timeout"
                } else if e.is_connect() {
                    "io connect"
                } else {
                    "io other"
                };
                stats.error(kind);
            }
            None
        }
    }
}

/// Runs the load and reports.
pub async fn run(cfg: RunConfig) -> anyhow::Result<RunReport> {
    if cfg.handsets == 0 || cfg.users == 0 {
        bail!("--handsets and --users must be at least 1");
    }
    if cfg.mix.kinds.is_empty() {
        bail!("--kinds names no kind");
    }
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .pool_max_idle_per_host(cfg.handsets)
        .build()
        .context("building the HTTP client")?;
    let ready = http
        .get(format!("{}/readyz", cfg.url))
        .send()
        .await
        .with_context(|| format!("the server at {} does not answer", cfg.url))?;
    if !ready.status().is_success() {
        bail!("the server at {} is not ready: {}", cfg.url, ready.status());
    }
    let registering = Instant::now();
    let handsets = register(&http, &cfg).await?;
    // Registering many devices takes a while: say when the load starts.
    eprintln!(
        "registered {} devices in {:.1} s; load starts",
        handsets.iter().map(|h| h.devices.len()).sum::<usize>(),
        registering.elapsed().as_secs_f64()
    );
    let docs = Arc::new(Documents::new(cfg.seed, 256, cfg.mix.doc_bytes));
    let mix = Arc::new(cfg.mix.clone());
    let begin = Instant::now();
    let measure_from = begin + cfg.warmup;
    let end = measure_from + cfg.duration;

    let mut tasks = Vec::new();
    let mut queues = Vec::new();
    for mut h in handsets {
        let (http, url, docs, mix) = (http.clone(), cfg.url.clone(), docs.clone(), mix.clone());
        let rx = if cfg.rate.is_some() {
            let (tx, rx) = mpsc::channel::<Instant>(64);
            queues.push(tx);
            Some(rx)
        } else {
            None
        };
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            match rx {
                // Closed loop.
                None => {
                    while Instant::now() < end {
                        let started = Instant::now();
                        let Some(d) = h.device() else { break };
                        let action = d.generator.next(&mix, &docs);
                        let record = started >= measure_from;
                        if let Done::Backoff =
                            act(&http, &url, d, action, &mut stats, started, record).await
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                // Open loop: each message is the moment the request was due.
                Some(mut rx) => {
                    while let Some(due) = rx.recv().await {
                        let Some(d) = h.device() else { break };
                        let action = d.generator.next(&mix, &docs);
                        let record = due >= measure_from;
                        let _ = act(&http, &url, d, action, &mut stats, due, record).await;
                    }
                }
            }
            stats
        }));
    }
    // The server's committed events on a schedule from the start of the measured time, with
    // a client of its own (not queued behind the handsets' connections).
    let sampling = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .build()
        .context("building the HTTP client")?;
    let sampler = cfg.sample_every.map(|every| {
        let (url, http) = (cfg.url.clone(), sampling);
        let at = intervals::schedule(cfg.duration, every);
        tokio::spawn(async move {
            let mut reads = Vec::with_capacity(at.len());
            for offset in at {
                tokio::time::sleep_until((measure_from + offset).into()).await;
                let asked = Instant::now();
                let events = match http
                    .get(format!("{url}/metrics"))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                {
                    Ok(r) => r.text().await.ok().and_then(|text| {
                        crate::stats::metric(&text, "keepsake_segment_events_total")
                    }),
                    Err(_) => None,
                };
                // The counter was read somewhere between asking and the answer.
                let when = asked + asked.elapsed() / 2;
                reads.push((when.saturating_duration_since(measure_from), events));
            }
            intervals::rates(&reads)
        })
    });
    // Counters at the start of the measured interval, read while the load runs.
    let start_scrape = {
        let (http, url) = (http.clone(), cfg.url.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            scrape(&http, &url).await
        })
    };
    let mut total = Stats::default();
    if let Some(rate) = cfg.rate {
        if rate <= 0.0 {
            bail!("--rate must be positive");
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut next = begin;
        let mut i = 0usize;
        while next < end {
            tokio::time::sleep_until(next.into()).await;
            // Everything due by now goes out, so a late wake-up does not lower the rate.
            while next <= Instant::now() && next < end {
                if queues[i % queues.len()].try_send(next).is_err() && next >= measure_from {
                    total.dropped += 1;
                }
                i += 1;
                next += interval;
            }
        }
        queues.clear();
    }
    let start_counters = start_scrape.await.unwrap_or_default();
    let intervals = match sampler {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    for t in tasks {
        total.merge(t.await.context("a handset task failed")?);
    }
    // Rates are over the measured interval; requests started in it and answered after it (a
    // long poll's tail) count, without stretching the interval by their wait.
    let secs = cfg.duration.as_secs_f64();
    let end_counters = scrape(&http, &cfg.url).await;
    Ok(RunReport {
        label: cfg.label.clone(),
        url: cfg.url.clone(),
        mode: if cfg.rate.is_some() { "open" } else { "closed" },
        target_rate: cfg.rate,
        handsets: cfg.handsets,
        devices_per_handset: cfg.devices_per_handset,
        users: cfg.users,
        duration_s: secs,
        warmup_s: cfg.warmup.as_secs_f64(),
        mix: cfg.mix.clone(),
        requests: total.requests(),
        requests_per_s: total.requests() as f64 / secs,
        changes_per_s: total.changes_acked as f64 / secs,
        changes_acked: total.changes_acked,
        outcomes: total.outcomes.clone(),
        items_pulled: total.items_pulled,
        retries_ok: total.retries_ok,
        retries_broken: total.retries_broken,
        retries_unjudged: total.retries_unjudged,
        dropped: total.dropped,
        ops: total.summaries(secs),
        errors: total.errors.clone(),
        server: ServerSummary::between(start_counters, end_counters, secs),
        intervals,
    })
}
