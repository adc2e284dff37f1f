//! Many servers on one store, coordinated through etcd (started by the harness on free loopback
//! ports): any server answers any request; a killed, paused or stopped server's shards are
//! served again by the others; no acknowledged change is lost; clients see only retryable
//! 503s meanwhile; a paused owner never acknowledges after losing its shards.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keepsake_tests::Backend;
use keepsake_tests::etcd::Etcd;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

const SHARDS: u32 = 4;

async fn node(env: &Env, etcd: &Etcd, id: &str, lease_secs: u32) -> Server {
    let lease = lease_secs.to_string();
    let shards = SHARDS.to_string();
    Server::start(
        env,
        &[
            ("KEEPSAKE_CLUSTER", etcd.url.as_str()),
            ("KEEPSAKE_NODE_ID", id),
            ("KEEPSAKE_CLUSTER_LEASE_SECS", lease.as_str()),
            ("KEEPSAKE_SHARDS", shards.as_str()),
        ],
    )
    .await
}

/// Starts a server per id and waits (at most 20 s) until they serve every shard between them.
async fn members<const N: usize>(
    env: &Env,
    etcd: &Etcd,
    ids: [&str; N],
    lease_secs: u32,
) -> [Server; N] {
    let mut started = Vec::new();
    for id in ids {
        started.push(node(env, etcd, id, lease_secs).await);
    }
    // Served, and balanced: every server has its share (a server that joined last may still
    // be waiting for its shards when the others already serve all of them).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut each = Vec::new();
        for s in &started {
            each.push(s.metric("keepsake_cluster_owned_shards").await);
        }
        let share = u64::from(SHARDS) / N as u64;
        if each.iter().sum::<u64>() == u64::from(SHARDS) && each.iter().all(|n| *n >= share) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not balanced after 20 s: {each:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match started.try_into() {
        Ok(servers) => servers,
        Err(_) => panic!("one server per id"),
    }
}

/// Waits (at most `within`) until the live servers between them serve every shard, each once.
async fn until_served(servers: &[&Server], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut owned = 0;
        for s in servers {
            owned += s.metric("keepsake_cluster_owned_shards").await;
        }
        if owned == u64::from(SHARDS) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the servers serve {owned} of {SHARDS} shards after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A push the way a device makes it: a retryable answer (503, 429) is sent again; anything else
/// is a failure of the test. Returns the answer and how many retryable answers came first.
async fn push_retrying(s: &Server, token: &str, change: &Value) -> (Value, u32) {
    let mut retried = 0;
    loop {
        let (status, v) = s
            .call(
                Method::POST,
                "/v1/changes",
                Some(token),
                Some(json!({"changes": [change]})),
            )
            .await;
        match status {
            StatusCode::OK => return (v, retried),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                assert!(retried < 400, "still {status} after {retried} tries: {v}");
                retried += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a push answered {other}, not a retryable error: {v}"),
        }
    }
}

async fn pull_retrying(s: &Server, token: &str) -> Value {
    for _ in 0..400 {
        let (status, v) = s.call(Method::GET, "/v1/changes", Some(token), None).await;
        match status {
            StatusCode::OK => return v,
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("a pull answered {other}: {v}"),
        }
    }
    panic!("a pull answered 503 for 20 s")
}

/// Stops every server with SIGTERM, each exiting cleanly.
fn stop_all<const N: usize>(servers: [Server; N]) {
    for s in servers {
        assert!(s.stop().success());
    }
}

/// A pull through `via` shows every one of `acked` (acknowledged, so never lost).
async fn assert_seen(via: &Server, token: &str, acked: &[String]) {
    let seen = items(&pull_retrying(via, token).await);
    for item in acked {
        assert!(seen.contains(item), "acknowledged change {item} lost");
    }
}

fn items(pulled: &Value) -> Vec<String> {
    pulled["changes"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["item_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn register_retrying(s: &Server, user: &str) -> String {
    for _ in 0..400 {
        let (status, v) = s
            .call(
                Method::POST,
                &format!("/admin/v1/users/{user}/devices"),
                Some(ADMIN),
                Some(json!({"name": "phone"})),
            )
            .await;
        match status {
            StatusCode::CREATED => return v["token"].as_str().expect("token").to_string(),
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("registering answered {other}: {v}"),
        }
    }
    panic!("registering answered 503 for 20 s")
}

/// Pushes and pulls spread over three servers: each pull, through another server than the
/// push, sees what was acknowledged before it; some requests were forwarded; a long poll
/// through one server wakes for a push through another.
async fn three_servers_serve_one_store(backend: Backend) {
    let env = Env::new(backend).await;
    let etcd = Etcd::start().expect("etcd");
    let [a, b, c] = members(&env, &etcd, ["a", "b", "c"], 3).await;
    let servers = [&a, &b, &c];
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    let mut tokens = HashMap::new();
    for u in 0..8 {
        let user = uuid();
        let token = register_retrying(servers[u % 3], &user).await;
        for round in 0..3 {
            let item = uuid();
            let via = servers[(u + round) % 3];
            let (r, _) = push_retrying(
                via,
                &token,
                &put(&item, "note", json!({"@type": "Note", "n": round})),
            )
            .await;
            assert_eq!(r["results"][0]["status"], "applied", "{r}");
            acked.entry(user.clone()).or_default().push(item.clone());
            // Read through the next server: it sees the push acknowledged just before.
            let seen = items(&pull_retrying(servers[(u + round + 1) % 3], &token).await);
            for i in &acked[&user] {
                assert!(seen.contains(i), "a pull through another server misses {i}");
            }
        }
        tokens.insert(user, token);
    }
    let mut forwards = 0;
    for s in servers {
        forwards += s.metric("keepsake_cluster_forwards_total").await;
    }
    assert!(
        forwards > 0,
        "requests for other servers' shards are forwarded"
    );

    // A long poll held by one server wakes for a push through another.
    let (user, token) = tokens.iter().next().expect("a user");
    let since = pull_retrying(&a, token).await["token"]
        .as_str()
        .expect("token")
        .to_string();
    let client = reqwest::Client::new();
    let poll = client
        .get(format!("{}/v1/changes?since={since}&wait=20", b.base))
        .bearer_auth(token)
        .send();
    let item = uuid();
    let pusher = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        push_retrying(&c, token, &put(&item, "note", json!({"@type": "Note"}))).await
    };
    let started = Instant::now();
    let (polled, _) = tokio::join!(poll, pusher);
    let polled: Value = polled.expect("long poll").json().await.expect("json");
    assert!(
        items(&polled).contains(&item),
        "the long poll of user {user} through b returned {polled}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it woke for the push, not the timeout"
    );

    // A user id written percent-encoded in the path is routed as the router reads it, and a
    // DAV redirect from the owner goes back to the client as it is.
    let (user, token) = tokens.iter().next().expect("a user");
    let encoded = format!("%{:02X}{}", user.as_bytes()[0], &user[1..]);
    for s in servers {
        let (status, v) = s
            .call(
                Method::GET,
                &format!("/admin/v1/users/{encoded}/events?after_seq=0&limit=1000"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let ids: Vec<&str> = v["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["item_id"].as_str()).collect())
            .unwrap_or_default();
        for item in &acked[user] {
            assert!(
                ids.contains(&item.as_str()),
                "{item} through {}: {v}",
                s.base
            );
        }
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .request(
                Method::from_bytes(b"PROPFIND").expect("method"),
                format!("{}/.well-known/carddav", s.base),
            )
            .basic_auth("phone", Some(token))
            .send()
            .await
            .expect("propfind");
        assert_eq!(
            resp.status(),
            StatusCode::MOVED_PERMANENTLY,
            "through {}",
            s.base
        );
    }

    // Operator calls that span shards, from any server.
    let (status, compacted) = b
        .call(Method::POST, "/admin/v1/compact", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{compacted}");
    assert!(
        compacted["segments_compacted"].as_u64() >= Some(u64::from(SHARDS)),
        "every server compacted its shards, and b added them up: {compacted}"
    );
    let (status, rebuilt) = c
        .call(Method::POST, "/admin/v1/rebuild", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rebuilt}");
    assert_eq!(rebuilt["equal"], true, "{rebuilt}");
    assert!(
        rebuilt["users"].as_u64() >= Some(8),
        "every server's users: {rebuilt}"
    );
    let (status, verified) = a
        .call(Method::GET, "/admin/v1/verify", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["ok"], true, "{verified}");
    // Pulls still see everything after the compaction.
    for (user, token) in &tokens {
        let seen = items(&pull_retrying(&a, token).await);
        for item in &acked[user] {
            assert!(seen.contains(item), "{item} of {user} after the compaction");
        }
    }

    // What an operator sees.
    let out = keepsake(&env, &["cluster", "status", "--cluster", &etcd.url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["a", "b", "c"] {
        assert!(
            text.contains(&format!("    {id}  http://127.0.0.1:")),
            "{text}"
        );
    }
    assert_eq!(
        text.matches("  serving\n").count(),
        SHARDS as usize,
        "{text}"
    );
    assert_eq!(text.matches("last keep-alive ").count(), 3, "{text}");
    stop_all([a, b, c]);
}

/// kill -9 of a server under load: its shards are served again by the others (the lease
/// expires), no acknowledged change is lost, and clients see only retryable answers.
async fn a_killed_server_s_shards_move(backend: Backend) {
    let env = Env::new(backend).await;
    let etcd = Etcd::start().expect("etcd");
    let [a, b, c] = members(&env, &etcd, ["a", "b", "c"], 3).await;
    let owned_by_c = c.metric("keepsake_cluster_owned_shards").await;
    assert!(owned_by_c > 0, "c serves some shards");
    let users: Vec<(String, String)> = {
        let mut v = Vec::new();
        for i in 0..6 {
            let user = uuid();
            let via = if i % 2 == 0 { &a } else { &b };
            v.push((user.clone(), register_retrying(via, &user).await));
        }
        v
    };
    c.kill();
    let killed = Instant::now();
    // Load through the survivors while the shards move; meanwhile, when are they served again?
    let load = async {
        let mut acked: HashMap<String, Vec<String>> = HashMap::new();
        let mut retried = 0;
        while killed.elapsed() < Duration::from_secs(8) {
            for (i, (user, token)) in users.iter().enumerate() {
                let via = if i % 2 == 0 { &a } else { &b };
                let item = uuid();
                let (r, n) =
                    push_retrying(via, token, &put(&item, "note", json!({"@type": "Note"}))).await;
                retried += n;
                assert_eq!(r["results"][0]["status"], "applied", "{r}");
                acked.entry(user.clone()).or_default().push(item);
            }
        }
        (acked, retried)
    };
    let survivors = [&a, &b];
    let ((acked, retried), moved) =
        tokio::join!(load, until_served(&survivors, Duration::from_secs(20)));
    eprintln!(
        "shards of the killed server served again {moved:?} after kill -9 (lease 3 s); {retried} retryable answers meanwhile"
    );
    for (i, (user, token)) in users.iter().enumerate() {
        let via = if i % 2 == 0 { &b } else { &a };
        assert_seen(via, token, &acked[user]).await;
    }
    stop_all([a, b]);
}

/// An owner paused past its lease (SIGSTOP), its shards taken by another, then resumed
/// (SIGCONT): it never acknowledges another batch of a shard it lost, and gives it up.
async fn a_paused_owner_never_acknowledges_after_losing_its_shards(backend: Backend) {
    let env = Env::new(backend).await;
    let etcd = Etcd::start().expect("etcd");
    let [a, b] = members(&env, &etcd, ["a", "b"], 2).await;
    // A user whose shard `a` serves: a push through `a` is not forwarded.
    let mut chosen = None;
    for _ in 0..64 {
        let user = uuid();
        let token = register_retrying(&a, &user).await;
        let before = a.metric("keepsake_cluster_forwards_total").await;
        push_retrying(&a, &token, &put(&uuid(), "note", json!({"@type": "Note"}))).await;
        if a.metric("keepsake_cluster_forwards_total").await == before {
            chosen = Some((user, token));
            break;
        }
    }
    let (_user, token) = chosen.expect("a serves some user's shard");
    a.signal("STOP");
    // `b` takes every shard once a's lease expired.
    until_served(&[&b], Duration::from_secs(15)).await;
    let item = uuid();
    push_retrying(
        &b,
        &token,
        &put(&item, "note", json!({"@type": "Note", "by": "b"})),
    )
    .await;
    a.signal("CONT");
    // Straight to `a`, which still believed it owned the shard when it was paused.
    let stale = put(&uuid(), "note", json!({"@type": "Note", "by": "a"}));
    let (status, v) = a
        .call(
            Method::POST,
            "/v1/changes",
            Some(&token),
            Some(json!({"changes": [&stale]})),
        )
        .await;
    assert_ne!(
        status,
        StatusCode::OK,
        "a server that lost its shard acknowledged a batch: {v}"
    );
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE,
        "it answers a retryable 503, not {status}: {v}"
    );
    // It gave the shard up; the change resent through it reaches the owner.
    let (r, _) = push_retrying(&a, &token, &stale).await;
    assert!(
        matches!(
            r["results"][0]["status"].as_str(),
            Some("applied" | "duplicate")
        ),
        "{r}"
    );
    let seen = items(&pull_retrying(&a, &token).await);
    assert!(
        seen.contains(&item),
        "b's acknowledged change is seen through a"
    );
    stop_all([a, b]);
}

/// SIGTERM hands the shards over at once (the lease is 30 s: waiting for it would fail the
/// bound), and clients meanwhile see only retryable answers.
async fn sigterm_hands_shards_over_without_waiting_for_the_lease(backend: Backend) {
    let env = Env::new(backend).await;
    let etcd = Etcd::start().expect("etcd");
    let [a, b] = members(&env, &etcd, ["a", "b"], 30).await;
    let user = uuid();
    let token = register_retrying(&b, &user).await;
    assert!(a.metric("keepsake_cluster_owned_shards").await > 0);
    let stopping = Instant::now();
    let pushes = async {
        let mut acked = Vec::new();
        while stopping.elapsed() < Duration::from_secs(3) {
            let item = uuid();
            push_retrying(&b, &token, &put(&item, "note", json!({"@type": "Note"}))).await;
            acked.push(item);
        }
        acked
    };
    let stop = async {
        tokio::task::spawn_blocking(move || a.stop())
            .await
            .expect("stop")
    };
    // From the SIGTERM until b serves every shard.
    let only_b = [&b];
    let served = until_served(&only_b, Duration::from_secs(15));
    let (acked, status, moved) = tokio::join!(pushes, stop, served);
    assert!(status.success(), "a clean exit");
    eprintln!("after SIGTERM: every shard served by b {moved:?} after it (lease 30 s)");
    assert_seen(&b, &token, &acked).await;
    stop_all([b]);
}

/// etcd stopped: servers keep serving until their leases would have expired, then refuse
/// with 503; etcd back: service resumes, nothing acknowledged lost.
async fn an_etcd_outage_stops_service_safely_and_it_resumes(backend: Backend) {
    let env = Env::new(backend).await;
    let mut etcd = Etcd::start().expect("etcd");
    let [a, b] = members(&env, &etcd, ["a", "b"], 3).await;
    let user = uuid();
    let token = register_retrying(&a, &user).await;
    let first = uuid();
    push_retrying(&a, &token, &put(&first, "note", json!({"@type": "Note"}))).await;
    etcd.stop();
    let stopped = Instant::now();
    // Within the lease, still served.
    let (status, v) = a
        .call(
            Method::POST,
            "/v1/changes",
            Some(&token),
            Some(json!({"changes": [put(&uuid(), "note", json!({"@type": "Note"}))]})),
        )
        .await;
    assert!(
        status == StatusCode::OK || stopped.elapsed() > Duration::from_secs(1),
        "served while the lease holds: {status} {v}"
    );
    // Past it, refused with 503 by both.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for s in [&a, &b] {
        let (status, v) = s
            .call(
                Method::POST,
                "/v1/changes",
                Some(&token),
                Some(json!({"changes": [put(&uuid(), "note", json!({"@type": "Note"}))]})),
            )
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(s.metric("keepsake_cluster_owned_shards").await, 0);
    }
    etcd.resume().expect("etcd back");
    until_served(&[&a, &b], Duration::from_secs(20)).await;
    let second = uuid();
    push_retrying(&b, &token, &put(&second, "note", json!({"@type": "Note"}))).await;
    let seen = items(&pull_retrying(&a, &token).await);
    assert!(seen.contains(&first) && seen.contains(&second), "{seen:?}");
    stop_all([a, b]);
}

/// A device revoked through one server is refused by every server at once (its requests reach
/// the owner of its user's shard, which made the revocation or refreshed before serving).
async fn a_revoked_device_is_refused_by_every_server(backend: Backend) {
    let env = Env::new(backend).await;
    let etcd = Etcd::start().expect("etcd");
    let [a, b, c] = members(&env, &etcd, ["a", "b", "c"], 3).await;
    let user = uuid();
    let token = register_retrying(&a, &user).await;
    let (s, listed) = b
        .call(
            Method::GET,
            &format!("/admin/v1/users/{user}/devices"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{listed}");
    let device = listed["devices"][0]["device_id"]
        .as_str()
        .expect("device id")
        .to_string();
    let (s, v) = c
        .call(
            Method::DELETE,
            &format!("/admin/v1/users/{user}/devices/{device}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    // At once, through every server.
    for server in [&a, &b, &c] {
        let (s, v) = server
            .call(Method::GET, "/v1/changes", Some(&token), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }
    stop_all([a, b, c]);
}

/// A rolling restart of all three servers (SIGTERM, start again, next) under load: clients see
/// nothing but retryable 503s, and every acknowledged change is there at the end.
async fn a_rolling_restart_under_load_loses_nothing(backend: Backend) {
    let env = Env::new(backend).await;
    let etcd = Etcd::start().expect("etcd");
    let mut servers = vec![
        node(&env, &etcd, "a", 3).await,
        node(&env, &etcd, "b", 3).await,
        node(&env, &etcd, "c", 3).await,
    ];
    until_served(&servers.iter().collect::<Vec<_>>(), Duration::from_secs(20)).await;
    let mut users = Vec::new();
    for _ in 0..6 {
        let user = uuid();
        let token = register_retrying(&servers[0], &user).await;
        users.push((user, token));
    }
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    let mut retried = 0;
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let old = servers.remove(i);
        let stopping = tokio::task::spawn_blocking(move || old.stop());
        // Load through the two others while it stops and comes back.
        let mut round = 0;
        while !stopping.is_finished() || round < 3 {
            for (user, token) in &users {
                let via = &servers[round % servers.len()];
                let item = uuid();
                let (r, n) =
                    push_retrying(via, token, &put(&item, "note", json!({"@type": "Note"}))).await;
                retried += n;
                assert_eq!(r["results"][0]["status"], "applied", "{r}");
                acked.entry(user.clone()).or_default().push(item);
            }
            round += 1;
        }
        assert!(
            stopping.await.expect("stop").success(),
            "{id} exits cleanly"
        );
        servers.insert(i, node(&env, &etcd, id, 3).await);
        until_served(&servers.iter().collect::<Vec<_>>(), Duration::from_secs(20)).await;
    }
    eprintln!(
        "rolling restart: {} changes acknowledged, {retried} retryable answers",
        acked.values().map(Vec::len).sum::<usize>()
    );
    for (i, (user, token)) in users.iter().enumerate() {
        assert_seen(&servers[i % 3], token, &acked[user]).await;
    }
    for s in servers {
        stop_all([s]);
    }
}

/// `--own-shards`: each server takes its listed shards in the store and answers 503 for the
/// others; together they serve every user.
async fn static_ownership_serves_listed_shards(backend: Backend) {
    let env = Env::new(backend).await;
    let shards = SHARDS.to_string();
    let first = Server::start(
        &env,
        &[
            ("KEEPSAKE_NODE_ID", "s0"),
            ("KEEPSAKE_OWN_SHARDS", "0-1"),
            ("KEEPSAKE_SHARDS", shards.as_str()),
        ],
    )
    .await;
    let second = Server::start(
        &env,
        &[
            ("KEEPSAKE_NODE_ID", "s1"),
            ("KEEPSAKE_OWN_SHARDS", "2-3"),
            ("KEEPSAKE_SHARDS", shards.as_str()),
        ],
    )
    .await;
    assert_eq!(first.metric("keepsake_cluster_owned_shards").await, 2);
    assert_eq!(second.metric("keepsake_cluster_owned_shards").await, 2);
    let (mut here, mut elsewhere) = (0, 0);
    for _ in 0..12 {
        let user = uuid();
        // Registered through whichever serves the user's shard.
        let mut token = None;
        for s in [&first, &second] {
            let (status, v) = s
                .call(
                    Method::POST,
                    &format!("/admin/v1/users/{user}/devices"),
                    Some(ADMIN),
                    Some(json!({"name": "phone"})),
                )
                .await;
            match status {
                StatusCode::CREATED => {
                    token = Some((s, v["token"].as_str().expect("token").to_string()))
                }
                StatusCode::SERVICE_UNAVAILABLE => elsewhere += 1,
                other => panic!("{other}: {v}"),
            }
        }
        let (owner, token) = token.expect("one of the two serves every shard");
        here += 1;
        let item = uuid();
        owner
            .push(
                &token,
                json!([put(&item, "note", json!({"@type": "Note"}))]),
            )
            .await;
        assert!(items(&owner.pull(&token, "").await).contains(&item));
    }
    assert_eq!(
        (here, elsewhere),
        (12, 12),
        "each user served by exactly one of the two"
    );
    // A new instance takes the first's shards (a rolling update that starts it first): the
    // first lets them go within a few seconds, reads included, and the new one serves them.
    let replacement = Server::start(
        &env,
        &[
            ("KEEPSAKE_NODE_ID", "s0-new"),
            ("KEEPSAKE_OWN_SHARDS", "0-1"),
            ("KEEPSAKE_SHARDS", shards.as_str()),
        ],
    )
    .await;
    assert_eq!(replacement.metric("keepsake_cluster_owned_shards").await, 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while first.metric("keepsake_cluster_owned_shards").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the replaced instance kept serving its shards"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_all([first, second, replacement]);
}

/// A fleet restore started on one server restores every user, whichever server serves each
/// user's shard (those are restored there, one request each, idempotently).
async fn a_fleet_restore_spans_every_server(backend: Backend) {
    let env = Env::new(backend).await;
    let etcd = Etcd::start().expect("etcd");
    let [a, b, c] = members(&env, &etcd, ["a", "b", "c"], 3).await;
    let servers = [&a, &b, &c];
    let mut users = Vec::new();
    for i in 0..9 {
        let user = uuid();
        let token = register_retrying(servers[i % 3], &user).await;
        let notes = [uuid(), uuid()];
        for n in &notes {
            push_retrying(
                servers[(i + 1) % 3],
                &token,
                &put(n, "note", json!({"@type": "Note"})),
            )
            .await;
        }
        users.push((user, token, notes));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = keepsake_model::Clock::now(&keepsake_model::SystemClock)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A bad deploy deletes every note.
    for (i, (_, token, notes)) in users.iter().enumerate() {
        for n in notes {
            let del = json!({"change_id": uuid(), "kind": "note", "item_id": n, "op": "delete"});
            push_retrying(servers[(i + 2) % 3], token, &del).await;
        }
    }
    let (status, started) = c
        .call(
            Method::POST,
            "/admin/v1/restores",
            Some(ADMIN),
            Some(json!({"as_of": t, "users": "all", "reason": "bad deploy"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let job = started["restore_id"]
        .as_str()
        .expect("restore id")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let (_, p) = c
            .call(
                Method::GET,
                &format!("/admin/v1/restores/{job}"),
                Some(ADMIN),
                None,
            )
            .await;
        if p["state"] == "done" || p["state"] == "failed" {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet restore did not finish: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(progress["state"], "done", "{progress}");
    assert_eq!(
        progress["users_done"], progress["users_total"],
        "{progress}"
    );
    assert!(progress["users_total"].as_u64() >= Some(9), "{progress}");
    let mut forwarded = 0;
    for s in servers {
        forwarded += s.metric("keepsake_cluster_forwards_total").await;
    }
    assert!(forwarded > 0);
    for (i, (user, token, notes)) in users.iter().enumerate() {
        let pulled = pull_retrying(servers[i % 3], token).await;
        let live: Vec<&str> = pulled["changes"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["op"] != "delete" && c["kind"] == "note")
                    .filter_map(|c| c["item_id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        for n in notes {
            assert!(
                live.contains(&n.as_str()),
                "note {n} of {user} restored: {pulled}"
            );
        }
    }
    stop_all([a, b, c]);
}

macro_rules! cluster_tests {
    ($($name:ident),* $(,)?) => {
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

cluster_tests!(
    three_servers_serve_one_store,
    a_killed_server_s_shards_move,
    a_paused_owner_never_acknowledges_after_losing_its_shards,
    sigterm_hands_shards_over_without_waiting_for_the_lease,
    an_etcd_outage_stops_service_safely_and_it_resumes,
    a_revoked_device_is_refused_by_every_server,
    a_rolling_restart_under_load_loses_nothing,
    static_ownership_serves_listed_shards,
    a_fleet_restore_spans_every_server,
);
