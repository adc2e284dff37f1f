//! Many servers on one store, measured against the release `keepsake` binary on a fresh file
//! store (fsync on) and an etcd the bench starts on loopback (as the tests do):
//!
//! - **forwarding cost**: pushes and pulls of one device sent straight to its shard's server
//!   and through another server (forwarded), interleaved; p50/p99 of each and the difference;
//! - **failover**: kill -9 of one of three servers, `KEEPSAKE_CLUSTER_KILLS` times (default 20):
//!   the time from the kill until the two others serve every shard (the lease is 3 s), then the
//!   server is started again; min / median / max;
//! - **throughput**: 32 devices pushing for `KEEPSAKE_CLUSTER_SECS` (default 10) through one
//!   server alone, then spread over three servers of a cluster (same machine: two cores).
#![allow(clippy::expect_used, clippy::print_stdout)]

mod support;

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keepsake_model::{IdGenerator, RandomIds};
use keepsake_tests::etcd::Etcd;
use serde_json::{Value, json};

const ADMIN: &str = "cluster-bench-operator-token-0123";
const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const SHARDS: u64 = 6;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn uuid() -> String {
    RandomIds.random().to_string()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Server {
    base: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(store: &str, extra: &[(&str, &str)]) -> Server {
    let shards = SHARDS.to_string();
    let mut envs = vec![
        ("KEEPSAKE_STORE", store),
        ("KEEPSAKE_ADMIN_TOKEN", ADMIN),
        ("KEEPSAKE_TOKEN_KEYS", KEYS),
        ("KEEPSAKE_SHARDS", shards.as_str()),
    ];
    envs.extend_from_slice(extra);
    let (child, base) = support::serve(&envs);
    Server { base, child }
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let Ok(resp) = http.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn served(http: &reqwest::Client, bases: &[&str]) -> u64 {
    let mut n = 0;
    for b in bases {
        n += metric(http, b, "keepsake_cluster_owned_shards").await;
    }
    n
}

async fn until_served(http: &reqwest::Client, bases: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while served(http, bases).await != SHARDS {
        assert!(Instant::now() < deadline, "shards not served within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(http: &reqwest::Client, base: &str) {
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never ready");
}

async fn register(http: &reqwest::Client, base: &str, user: &str) -> String {
    loop {
        let resp = http
            .post(format!("{base}/admin/v1/users/{user}/devices"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "phone"}))
            .send()
            .await
            .expect("register");
        if resp.status().as_u16() == 201 {
            let v: Value = resp.json().await.expect("json");
            return v["token"].as_str().expect("token").to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One push; retried on 503/429. Returns the time of the answered attempt.
async fn push(http: &reqwest::Client, base: &str, token: &str) -> Duration {
    let body = json!({"changes": [{"change_id": uuid(), "kind": "note", "item_id": uuid(), "op": "put",
        "document": {"@type": "Note", "title": "a note of a realistic few hundred bytes, more or less"}}]});
    loop {
        let started = Instant::now();
        let resp = http
            .post(format!("{base}/v1/changes"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("push");
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        match status {
            200 => return started.elapsed(),
            503 | 429 => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("push answered {other}"),
        }
    }
}

async fn pull(http: &reqwest::Client, base: &str, token: &str) -> Duration {
    let started = Instant::now();
    let resp = http
        .get(format!("{base}/v1/changes?limit=50"))
        .bearer_auth(token)
        .send()
        .await
        .expect("pull");
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.bytes().await;
    started.elapsed()
}

fn report(name: &str, mut lat: Vec<Duration>) -> (Duration, Duration) {
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!(
        "  {name:<34} n={:<4} p50 {:>6.2} ms  p99 {:>6.2} ms",
        lat.len(),
        ms(p50),
        ms(p99)
    );
    (p50, p99)
}

fn main() {
    let kills = env("KEEPSAKE_CLUSTER_KILLS", 20);
    let secs = env("KEEPSAKE_CLUSTER_SECS", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let etcd = Etcd::start().expect("etcd (make etcd)");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("data").display().to_string();
        let member = |id: &'static str| {
            let url = etcd.url.clone();
            let store = store.clone();
            move || {
                spawn(
                    &store,
                    &[
                        ("KEEPSAKE_CLUSTER", url.as_str()),
                        ("KEEPSAKE_NODE_ID", id),
                        ("KEEPSAKE_CLUSTER_LEASE_SECS", "3"),
                    ],
                )
            }
        };
        let starts = [member("a"), member("b"), member("c")];
        let mut servers: Vec<Server> = Vec::new();
        for s in &starts {
            let server = s();
            ready(&http, &server.base).await;
            servers.push(server);
        }
        until_served(&http, &bases(&servers).iter().map(String::as_str).collect::<Vec<_>>()).await;

        // Forwarding cost: find a user served by servers[0]; direct = servers[0], forwarded via servers[1].
        println!("forwarding cost (one device, interleaved, 400 each)");
        let (token, direct, via) = loop {
            let user = uuid();
            let token = register(&http, &servers[0].base, &user).await;
            let before = metric(&http, &servers[0].base, "keepsake_cluster_forwards_total").await;
            push(&http, &servers[0].base, &token).await;
            if metric(&http, &servers[0].base, "keepsake_cluster_forwards_total").await == before {
                break (token, servers[0].base.clone(), servers[1].base.clone());
            }
        };
        let (mut pd, mut pf, mut ld, mut lf) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..400 {
            pd.push(push(&http, &direct, &token).await);
            pf.push(push(&http, &via, &token).await);
            ld.push(pull(&http, &direct, &token).await);
            lf.push(pull(&http, &via, &token).await);
        }
        let (a50, a99) = report("push, straight to the owner", pd);
        let (b50, b99) = report("push, forwarded", pf);
        let (c50, c99) = report("pull, straight to the owner", ld);
        let (d50, d99) = report("pull, forwarded", lf);
        println!(
            "  added by forwarding: push p50 {:+.2} ms p99 {:+.2} ms; pull p50 {:+.2} ms p99 {:+.2} ms",
            ms(b50) - ms(a50),
            ms(b99) - ms(a99),
            ms(d50) - ms(c50),
            ms(d99) - ms(c99)
        );

        // Failover.
        println!("failover: kill -9 of one of three servers, {kills} times (lease 3 s)");
        let mut took = Vec::new();
        for round in 0..kills as usize {
            let victim = round % 3;
            let _ = servers[victim].child.kill();
            let _ = servers[victim].child.wait();
            let killed = Instant::now();
            let rest: Vec<String> = servers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .map(|(_, s)| s.base.clone())
                .collect();
            until_served(&http, &rest.iter().map(String::as_str).collect::<Vec<_>>()).await;
            took.push(killed.elapsed());
            servers[victim] = starts[victim]();
            ready(&http, &servers[victim].base).await;
            // Back to three servers each serving some shards before the next kill.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut each = Vec::new();
                for b in bases(&servers) {
                    each.push(metric(&http, &b, "keepsake_cluster_owned_shards").await);
                }
                if each.iter().sum::<u64>() == SHARDS && each.iter().all(|n| *n > 0) {
                    break;
                }
                assert!(Instant::now() < deadline, "never rebalanced: {each:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        took.sort();
        println!(
            "  served again after: min {:.2} s, median {:.2} s, max {:.2} s",
            took[0].as_secs_f64(),
            pct(&took, 0.5).as_secs_f64(),
            took[took.len() - 1].as_secs_f64()
        );

        // Throughput: three servers of the cluster, then one server alone on a new store.
        println!("throughput: 32 devices pushing for {secs} s");
        let three = throughput(&http, &bases(&servers), secs).await;
        drop(servers);
        let alone_dir = tempfile::tempdir().expect("tempdir");
        let alone = spawn(&alone_dir.path().join("data").display().to_string(), &[]);
        ready(&http, &alone.base).await;
        let one = throughput(&http, std::slice::from_ref(&alone.base), secs).await;
        println!("  one server alone: {one:.0} pushes/s; three servers (forwarding 2/3 of requests): {three:.0} pushes/s ({:.2}x)", three / one);
    });
}

fn bases(servers: &[Server]) -> Vec<String> {
    servers.iter().map(|s| s.base.clone()).collect()
}

/// 32 devices (one user each) pushing as fast as answered for `secs`, spread over `bases`.
async fn throughput(http: &reqwest::Client, bases: &[String], secs: u64) -> f64 {
    let mut tokens = Vec::new();
    for i in 0..32 {
        let base = &bases[i % bases.len()];
        tokens.push((base.clone(), register(http, base, &uuid()).await));
    }
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|(base, token)| {
            let (http, done) = (http.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    push(&http, &base, &token).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}
