//! A first load measurement over HTTP: the release `keepsake` binary on a fresh file store
//! (fsync on), closed-loop clients on the same machine. Pushes of 100 changes (~500-byte
//! documents), then warm pulls: polls with nothing new, and pages of 100 changed items.
//! The full load generator is its own piece of work (services/loadgen, later).
//!
//! `KEEPSAKE_LOAD_SECS` (default 5) and `KEEPSAKE_LOAD_CLIENTS` (default 32) change the run.
#![allow(clippy::expect_used, clippy::print_stdout)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_model::fixtures::{Rng, document};
use keepsake_model::{IdGenerator, Kind, RandomIds};
use serde_json::{Value, json};

const ADMIN: &str = "load-operator-token-0123456789";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn report(name: &str, per_op: u64, secs: f64, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "  {name:<22} {:>9.0}/s {:>10.0} items/s   p50 {:>6.2}  p90 {:>6.2}  p99 {:>6.2}  p99.9 {:>6.2} ms",
        lat.len() as f64 / secs,
        (lat.len() as u64 * per_op) as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
}

async fn closed_loop<F, Fut>(clients: usize, secs: u64, op: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(c).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    (started.elapsed().as_secs_f64(), all)
}

fn main() {
    let secs = env("KEEPSAKE_LOAD_SECS", 5);
    let clients = env("KEEPSAKE_LOAD_CLIENTS", 32) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("data").display().to_string();
    let (mut child, base) =
        support::serve(&[("KEEPSAKE_STORE", &store), ("KEEPSAKE_ADMIN_TOKEN", ADMIN)]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let http = reqwest::Client::new();
        while http.get(format!("{base}/readyz")).send().await.map(|r| !r.status().is_success()).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut rng = Rng::new(7);
        let docs: Arc<Vec<Value>> = Arc::new((0..500).map(|i| Value::Object(document(Kind::DATA[i % 4], &mut rng))).collect());
        let mut tokens = Vec::new();
        for _ in 0..clients {
            let user = RandomIds.random();
            let v: Value = http
                .post(format!("{base}/admin/v1/users/{user}/devices"))
                .bearer_auth(ADMIN)
                .body(json!({"name": "load"}).to_string())
                .send().await.expect("register").json().await.expect("json");
            tokens.push(v["token"].as_str().expect("token").to_string());
        }
        let tokens = Arc::new(tokens);
        let sync: Arc<Vec<std::sync::Mutex<(String, String)>>> =
            Arc::new((0..clients).map(|_| std::sync::Mutex::new((String::new(), String::new()))).collect());

        let applied = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (h, t, d, s, a) = (http.clone(), tokens.clone(), docs.clone(), sync.clone(), applied.clone());
        let b = base.clone();
        let (elapsed, push_lat) = closed_loop(clients, secs, move |c| {
            let (h, t, d, s, b, a) = (h.clone(), t.clone(), d.clone(), s.clone(), b.clone(), a.clone());
            async move {
                // Document j was made for kind j % 4: pick one of the change's kind.
                let changes: Vec<Value> = (0..100).map(|i| json!({
                    "change_id": RandomIds.random(), "kind": Kind::DATA[i % 4], "item_id": RandomIds.random(),
                    "op": "put", "document": d[((i * 7 + c) % (d.len() / 4)) * 4 + i % 4],
                })).collect();
                let r: Value = h.post(format!("{b}/v1/changes")).bearer_auth(&t[c])
                    .body(json!({"changes": changes}).to_string())
                    .send().await.expect("push").json().await.expect("json");
                let token = r["token"].as_str().expect("token").to_string();
                let applied = r["results"].as_array().map_or(0, |a| a.iter().filter(|x| x["status"] == "applied").count());
                a.fetch_add(applied as u64, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut g) = s[c].lock() {
                    g.0 = std::mem::replace(&mut g.1, token);
                }
            }
        }).await;
        let (h, t, s, b) = (http.clone(), tokens.clone(), sync.clone(), base.clone());
        let (elapsed_poll, poll_lat) = closed_loop(clients, secs, move |c| {
            let (h, t, s, b) = (h.clone(), t.clone(), s.clone(), b.clone());
            async move {
                let since = s[c].lock().map(|g| g.1.clone()).unwrap_or_default();
                let r = h.get(format!("{b}/v1/changes?since={since}")).bearer_auth(&t[c]).send().await.expect("pull");
                assert!(r.status().is_success());
                let _ = r.bytes().await;
            }
        }).await;
        let (h, t, s, b) = (http.clone(), tokens.clone(), sync.clone(), base.clone());
        let (elapsed_page, page_lat) = closed_loop(clients, secs, move |c| {
            let (h, t, s, b) = (h.clone(), t.clone(), s.clone(), b.clone());
            async move {
                let since = s[c].lock().map(|g| g.0.clone()).unwrap_or_default();
                let r = h.get(format!("{b}/v1/changes?since={since}&limit=100")).bearer_auth(&t[c]).send().await.expect("pull");
                assert!(r.status().is_success());
                let _ = r.bytes().await;
            }
        }).await;
        let metrics = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        let metric = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0);
        println!("http load: release server, file store (fsync on), 4 shards, 10 ms window, {clients} closed-loop clients, {secs} s per phase");
        let push_count = push_lat.len();
        report("push (100 changes)", 100, elapsed, push_lat);
        report("pull, nothing new", 0, elapsed_poll, poll_lat);
        report("pull, 100 items", 100, elapsed_page, page_lat);
        let segments = metric("keepsake_segments_total ");
        let acked = applied.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "  changes sent {}; acknowledged as applied {acked}; events committed by the server {:.0}",
            push_count * 100,
            metric("keepsake_segment_events_total ")
        );
        println!(
            "  server: {segments:.0} segments, {:.0} events/segment, {:.1} bytes/event",
            metric("keepsake_segment_events_total ") / segments.max(1.0),
            metric("keepsake_segment_bytes_total ") / metric("keepsake_segment_events_total ").max(1.0)
        );
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
